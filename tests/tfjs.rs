//! TensorFlow.js models through the CLI: a `model.json` and its weight files, every
//! weight locked in place across files, the record as the JSON's last member, unlock
//! byte for byte, as a directory or through its `model.json`; every tamper refused with
//! nothing written; the parser never panics. The JS tests (js/test/tfjs.test.mjs, and
//! the browser test) load the same files in TF.js itself.

mod common;

use std::path::Path;

use common::*;
use deeplock::format::tfjs::Tfjs;
use deeplock::format::Container;
use rand::Rng;

/// Weights of a model: (name, dtype, quantization dtype, shape).
type Spec = (String, &'static str, Option<&'static str>, Vec<usize>);

fn size(dtype: &str, quant: Option<&str>) -> usize {
    match quant.unwrap_or(dtype) {
        "uint8" | "bool" => 1,
        "uint16" | "float16" => 2,
        "complex64" => 8,
        _ => 4,
    }
}

/// Writes a TF.js model into `dir`: two manifest groups of random weights (every
/// stored type), each group's bytes cut into random shards (one in a subdirectory),
/// and `model.json`; returns the weights' bytes, all groups one after another.
fn write_model(dir: &Path, rng: &mut impl Rng) -> Vec<u8> {
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    let types: [(&str, Option<&str>); 7] = [
        ("float32", None),
        ("int32", None),
        ("bool", None),
        ("complex64", None),
        ("float32", Some("uint8")),
        ("float32", Some("uint16")),
        ("float32", Some("float16")),
    ];
    let mut groups = Vec::new();
    let mut all = Vec::new();
    let mut n = 0;
    for g in 0..2 {
        let specs: Vec<Spec> = (0..rng.random_range(3..7))
            .map(|_| {
                n += 1;
                let (d, q) = types[rng.random_range(0..types.len())];
                let rank = rng.random_range(0..3);
                let shape = (0..rank).map(|_| rng.random_range(1..40)).collect();
                (format!("layer{n}/w"), d, q, shape)
            })
            .collect();
        let mut data = Vec::new();
        for (_, d, q, shape) in &specs {
            let len = size(d, *q) * shape.iter().product::<usize>();
            if *d == "bool" && q.is_none() {
                data.extend((0..len).map(|_| rng.random_range(0..2u8)));
            } else {
                data.extend((0..len).map(|_| rng.random::<u8>()));
            }
        }
        let mut paths = Vec::new();
        let mut at = 0;
        let mut k = 0;
        while at < data.len() || paths.is_empty() {
            k += 1;
            let end = (at + rng.random_range(1..700)).min(data.len());
            let name = if k == 2 {
                format!("shards/group{}-shard{k}.bin", g + 1)
            } else {
                format!("group{}-shard{k}.bin", g + 1)
            };
            std::fs::write(dir.join(&name), &data[at..end]).unwrap();
            paths.push(name);
            at = end;
        }
        let weights: Vec<serde_json::Value> = specs
            .iter()
            .map(|(name, d, q, shape)| {
                let mut w = serde_json::json!({"name": name, "shape": shape, "dtype": d});
                if let Some(q) = q {
                    w["quantization"] = serde_json::json!({"dtype": q, "scale": 0.5, "min": -1.0});
                }
                w
            })
            .collect();
        groups.push(serde_json::json!({"paths": paths, "weights": weights}));
        all.extend(data);
    }
    let model = serde_json::json!({
        "format": "layers-model",
        "generatedBy": "TensorFlow.js tfjs-layers v4.22.0",
        "modelTopology": {"class_name": "Sequential", "config": {"layers": []}},
        "weightsManifest": groups,
    });
    let text = serde_json::to_string_pretty(&model).unwrap() + "\n";
    std::fs::write(dir.join("model.json"), text).unwrap();
    all
}

/// Every file under `dir`, by its path relative to it, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    deeplock(dir, args, None)
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_model_locks_in_place_across_its_files_and_unlocks_byte_for_byte() {
    let mut rng = seeded_rng("tfjs round trip");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_model(&d.join("m"), &mut rng);
    std::fs::write(d.join("m/README.md"), "a model\n").unwrap();
    write_key_file(&d.join("key"));
    let orig = files(&d.join("m"));
    let m = Tfjs::parse(
        &std::fs::read(d.join("m/model.json")).unwrap(),
        "m/model.json".as_ref(),
    )
    .unwrap();
    let devices: &[&str] = if gpu_context().is_some() {
        &["cpu", "gpu"]
    } else {
        &["cpu"]
    };
    for dev in devices {
        let (l, u) = (format!("l-{dev}"), format!("u-{dev}"));
        ok(
            d,
            &["lock", "m", "-o", &l, "--key-file", "key", "--device", dev],
        );
        let locked = files(&d.join(&l));
        // The same files, the same lengths, but the checkpoint record beside them.
        let names: Vec<&str> = locked.iter().map(|(n, _)| n.as_str()).collect();
        let mut want: Vec<&str> = orig.iter().map(|(n, _)| n.as_str()).collect();
        want.push("deeplock.checkpoint");
        want.sort();
        assert_eq!(names, want, "{dev}");
        for ((name, a), (_, b)) in orig
            .iter()
            .zip(locked.iter().filter(|(n, _)| n != "deeplock.checkpoint"))
        {
            if name.ends_with(".bin") {
                assert_eq!(a.len(), b.len(), "{dev} {name}");
            }
            if name == "README.md" {
                assert_eq!(a, b);
            }
        }
        // Every locked weight's bytes changed, BOOL ones (left clear) did not.
        let lm = Tfjs::parse(
            &std::fs::read(d.join(&l).join("model.json")).unwrap(),
            &d.join(&l).join("model.json"),
        )
        .unwrap();
        let (files_l, c) = deeplock::format::open_path(&d.join(&l).join("model.json")).unwrap();
        let info = c.lock_record().unwrap().unwrap();
        for (i, t) in m.tensors().iter().enumerate() {
            let mut buf = vec![0u8; t.len() as usize];
            files_l.read_at(lm.byte_range(i).start, &mut buf).unwrap();
            let plain = &data[t.start as usize..t.end as usize];
            assert_eq!(info.is_locked(&t.name), t.dtype != deeplock::Dtype::BOOL);
            if t.dtype == deeplock::Dtype::BOOL {
                assert_eq!(buf, plain, "{dev} {}", t.name);
            } else if t.len() >= 8 {
                assert_ne!(buf, plain, "{dev} {}", t.name);
            }
        }
        ok(d, &["verify", &l, "--key-file", "key"]);
        ok(
            d,
            &["unlock", &l, "-o", &u, "--key-file", "key", "--device", dev],
        );
        assert!(
            files(&d.join(&u)) == orig,
            "{dev}: unlock is not the original"
        );
    }
    // Through its model.json: the weight files are written beside the output (their
    // subdirectories made, the output's own directory must exist as for any output).
    std::fs::create_dir(d.join("one")).unwrap();
    std::fs::create_dir(d.join("two")).unwrap();
    ok(
        d,
        &[
            "lock",
            "m/model.json",
            "-o",
            "one/model.json",
            "--key-file",
            "key",
        ],
    );
    ok(d, &["verify", "one/model.json", "--key-file", "key"]);
    ok(
        d,
        &[
            "unlock",
            "one/model.json",
            "-o",
            "two/model.json",
            "--key-file",
            "key",
        ],
    );
    let mut back = files(&d.join("two"));
    back.push(("README.md".into(), b"a model\n".to_vec()));
    back.sort();
    assert!(
        back == orig,
        "unlock through model.json is not the original"
    );
    // --only locks the weights it names and no other.
    ok(
        d,
        &[
            "lock",
            "m",
            "-o",
            "only",
            "--key-file",
            "key",
            "--only",
            "layer1/*",
        ],
    );
    let text = ok(d, &["inspect", "only", "--json"]);
    assert!(text.contains("\"layer1/w\""), "{text}");
    let (_, c) = deeplock::format::open_path(&d.join("only/model.json")).unwrap();
    let info = c.lock_record().unwrap().unwrap();
    for t in c.tensors() {
        assert_eq!(
            info.is_locked(&t.name),
            t.name == "layer1/w" && t.dtype != deeplock::Dtype::BOOL
        );
    }
}

/// A directory holding a random model as `m`, a key as `key`, and the model locked as
/// `l`.
fn locked_fixture(rng: &mut impl Rng) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_model(&d.join("m"), rng);
    write_key_file(&d.join("key"));
    ok(d, &["lock", "m", "-o", "l", "--key-file", "key"]);
    dir
}

/// Unlock and verify of the locked model `l` in `d`, changed by `edit`, both refuse
/// with `want` on one line, and write nothing; `l` is restored afterwards.
fn refused(d: &Path, edit: impl FnOnce(&Path), want: &str, what: &str) {
    let l = d.join("l");
    let saved = files(&l);
    edit(&l);
    let before = std::fs::read_dir(d).unwrap().count();
    for args in [
        &["unlock", "l", "-o", "out", "--key-file", "key"][..],
        &[
            "unlock",
            "l/model.json",
            "-o",
            "out.json",
            "--key-file",
            "key",
        ][..],
        &["verify", "l", "--key-file", "key"][..],
        &["verify", "l/model.json", "--key-file", "key"][..],
    ] {
        let o = run(d, args);
        let e = stderr(&o);
        assert!(!o.status.success(), "{what}: {args:?} succeeded");
        assert!(e.contains(want), "{what}: {args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{what}: {e}");
        assert!(!d.join("out").exists(), "{what}: {args:?} wrote an output");
        assert!(
            !d.join("out.json").exists(),
            "{what}: {args:?} wrote an output"
        );
        assert_eq!(std::fs::read_dir(d).unwrap().count(), before, "{what}");
    }
    std::fs::remove_dir_all(&l).unwrap();
    for (name, bytes) in saved {
        let p = l.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

fn edit_json(l: &Path, f: impl FnOnce(String) -> String) {
    let p = l.join("model.json");
    let text = std::fs::read_to_string(&p).unwrap();
    let new = f(text.clone());
    assert_ne!(new, text, "the edit changed nothing");
    std::fs::write(p, new).unwrap();
}

#[test]
fn every_tamper_is_refused_with_nothing_written() {
    let mut rng = seeded_rng("tfjs tampers");
    let dir = locked_fixture(&mut rng);
    let d = dir.path();
    // The checkpoint record binds the directory; without it the files are checked
    // as a model.json input is.
    std::fs::remove_file(d.join("l/deeplock.checkpoint")).unwrap();
    let shards: Vec<String> = files(&d.join("l"))
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.ends_with(".bin"))
        .collect();
    for s in &shards {
        let len = std::fs::metadata(d.join("l").join(s)).unwrap().len();
        if len == 0 {
            continue;
        }
        let at = rng.random_range(0..len) as usize;
        refused(
            d,
            |l| {
                let mut b = std::fs::read(l.join(s)).unwrap();
                b[at] ^= 1 << rng.random_range(0..8);
                std::fs::write(l.join(s), b).unwrap();
            },
            "",
            &format!("a bit of {s}"),
        );
    }
    let s0 = &shards[0];
    refused(
        d,
        |l| std::fs::remove_file(l.join(s0)).unwrap(),
        "is missing",
        "a missing weight file",
    );
    refused(
        d,
        |l| {
            let b = std::fs::read(l.join(s0)).unwrap();
            std::fs::write(l.join(s0), &b[..b.len() - 1]).unwrap();
        },
        "bytes where its weights take",
        "a truncated weight file",
    );
    refused(
        d,
        |l| {
            let mut b = std::fs::read(l.join(s0)).unwrap();
            b.push(0);
            std::fs::write(l.join(s0), b).unwrap();
        },
        "bytes where its weights take",
        "a weight file grown",
    );
    refused(
        d,
        |l| edit_json(l, |t| t.replacen("\"scale\": 0.5", "\"scale\": 0.25", 1)),
        "header",
        "a quantization scale",
    );
    refused(
        d,
        |l| edit_json(l, |t| t.replacen("Sequential", "Sequentiel", 1)),
        "header",
        "the topology",
    );
    refused(
        d,
        |l| {
            edit_json(l, |t| {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                serde_json::to_string_pretty(&v).unwrap()
            })
        },
        "not where lock wrote it",
        "model.json re-saved",
    );
    refused(
        d,
        |l| {
            edit_json(l, |t| {
                let a = t.find(",\"deeplock\":").unwrap();
                let b = t.rfind('}').unwrap();
                format!("{}{}", &t[..a], &t[b..])
            })
        },
        "not locked",
        "the record removed",
    );
    refused(
        d,
        |l| {
            edit_json(l, |t| {
                t.replacen(
                    "\"deeplock.version\":\"2\"",
                    "\"deeplock.version\":\"3\"",
                    1,
                )
            })
        },
        "",
        "the record's version",
    );
    refused(
        d,
        |l| {
            edit_json(l, |t| {
                let a = t.find("\"deeplock.mac\":\"").unwrap() + 16;
                let c = if &t[a..a + 1] == "0" { "1" } else { "0" };
                format!("{}{c}{}", &t[..a], &t[a + 1..])
            })
        },
        "header",
        "the record's mac",
    );
    // A manifest path pointed at another weight file of the same length.
    refused(
        d,
        |l| {
            let (a, b) = (&shards[0], &shards[1]);
            let (x, y) = (
                std::fs::read(l.join(a)).unwrap(),
                std::fs::read(l.join(b)).unwrap(),
            );
            std::fs::write(l.join(a), &y).unwrap();
            std::fs::write(l.join(b), &x).unwrap();
            // Of different lengths, the swap is caught as wrong lengths; else by the tags.
        },
        "",
        "two weight files swapped",
    );
    // A wrong key.
    std::fs::write(d.join("key2"), "ffffffffffffffffffffffffffffffff\n").unwrap();
    let o = run(d, &["unlock", "l", "-o", "out", "--key-file", "key2"]);
    assert!(
        !o.status.success() && stderr(&o).contains("wrong key"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("out").exists());
}

#[test]
fn bad_models_and_existing_outputs_are_refused_at_lock_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_key_file(&d.join("key"));
    let put = |json: &str, shard: &[u8]| {
        let _ = std::fs::remove_dir_all(d.join("m"));
        std::fs::create_dir_all(d.join("m")).unwrap();
        std::fs::write(d.join("m/model.json"), json).unwrap();
        std::fs::write(d.join("m/w.bin"), shard).unwrap();
    };
    let model = |weights: &str, paths: &str| {
        format!("{{\"modelTopology\": {{}}, \"weightsManifest\": [{{\"paths\": {paths}, \"weights\": {weights}}}]}}")
    };
    let w8 = r#"[{"name": "w", "shape": [2], "dtype": "float32"}]"#;
    for (json, shard, want) in [
        (
            model(w8, r#"["w.bin"]"#),
            &[0u8; 7][..],
            "hold 7 bytes where its weights take 8",
        ),
        (
            model(w8, r#"["../w.bin"]"#),
            &[0u8; 8][..],
            "not a plain relative path",
        ),
        (model(w8, r#"["x.bin"]"#), &[0u8; 8][..], "is missing"),
        (
            model(
                r#"[{"name": "s", "shape": [1], "dtype": "string"}]"#,
                r#"["w.bin"]"#,
            ),
            &[0u8; 8][..],
            "string weights",
        ),
        (
            model(
                r#"[{"name": "w", "shape": [2], "dtype": "float64"}]"#,
                r#"["w.bin"]"#,
            ),
            &[0u8; 16][..],
            "unknown dtype",
        ),
        (
            format!("{{\"deeplock\": 1, {}", &model(w8, r#"["w.bin"]"#)[1..]),
            &[0u8; 8][..],
            "corrupt deeplock metadata",
        ),
    ] {
        put(&json, shard);
        for (input, output) in [("m", "out"), ("m/model.json", "out/model.json")] {
            let o = run(d, &["lock", input, "-o", output, "--key-file", "key"]);
            let e = stderr(&o);
            assert!(!o.status.success(), "{want}: {input} locked");
            assert!(e.contains(want), "{want}: {e}");
            assert_eq!(e.trim_end().lines().count(), 1, "{e}");
            assert!(!d.join("out").exists(), "{want}");
        }
    }
    // A weight file already at the output is not replaced without --force, and then
    // not even model.json is written.
    put(&model(w8, r#"["w.bin"]"#), &[1u8; 8]);
    std::fs::create_dir(d.join("out")).unwrap();
    std::fs::write(d.join("out/w.bin"), b"mine").unwrap();
    let o = run(
        d,
        &[
            "lock",
            "m/model.json",
            "-o",
            "out/model.json",
            "--key-file",
            "key",
        ],
    );
    assert!(!o.status.success(), "an existing weight file was replaced");
    assert!(stderr(&o).contains("exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read(d.join("out/w.bin")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(d.join("out")).unwrap().count(), 1);
    ok(
        d,
        &[
            "lock",
            "m/model.json",
            "-o",
            "out/model.json",
            "--key-file",
            "key",
            "--force",
        ],
    );
    assert_ne!(std::fs::read(d.join("out/w.bin")).unwrap(), [1u8; 8]);
    // Locking in place would overwrite the weight files being read.
    let o = run(
        d,
        &[
            "lock",
            "m/model.json",
            "-o",
            "m/model2.json",
            "--key-file",
            "key",
        ],
    );
    assert!(!o.status.success(), "locked over its own weight files");
    assert_eq!(std::fs::read(d.join("m/w.bin")).unwrap(), [1u8; 8]);
}

#[test]
fn parser_never_panics_on_mutated_model_json() {
    let mut rng = seeded_rng("tfjs parser fuzz");
    let dir = locked_fixture(&mut rng);
    let d = dir.path();
    let orig = std::fs::read(d.join("m/model.json")).unwrap();
    let locked = std::fs::read(d.join("l/model.json")).unwrap();
    let path: &Path = "fuzz/model.json".as_ref();
    let mut parsed = 0;
    for case in 0..3000u32 {
        let mut b = if case % 2 == 0 {
            orig.clone()
        } else {
            locked.clone()
        };
        match case % 4 {
            k @ 0..=1 => mutate(&mut b, &mut rng, k, 8),
            2 => {
                let i = rng.random_range(0..b.len());
                let s: &[u8] = [
                    &b"\"x\""[..],
                    b"1",
                    b"-1",
                    b"{",
                    b"]",
                    b",",
                    b"1e999",
                    b"\\u0000",
                ][rng.random_range(0..8)];
                b.splice(i..i, s.iter().copied());
            }
            _ => {
                // A digit of a shape or an offset changed.
                let digits: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ascii_digit()).collect();
                let i = digits[rng.random_range(0..digits.len())];
                b[i] = b'0' + rng.random_range(0..10u8);
            }
        }
        if let Ok(m) = Tfjs::parse(&b, path) {
            parsed += 1;
            // Its ranges run over the weight files, not this file.
            check_parsed(&m, 0..u64::MAX, case);
        }
    }
    eprintln!("{parsed} of 3000 mutated model.json files parsed");
}
