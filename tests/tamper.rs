//! Scheme v2 refuses every change to a locked model, through the CLI as users run it:
//! `unlock` on the CPU and the GPU, and `verify`. Each tampered file is refused with a
//! one-line message naming what changed, a non-zero exit, and no output file (nor a
//! temporary) left behind. v1 files still unlock, with a notice, and `upgrade` makes
//! them v2 without changing their locked bytes.

mod common;

use std::path::Path;

use common::*;
use rand::SeedableRng;
use serde_json::{Map, Value};

/// A locked model to tamper with: `a.weight` and `b.weight` of one size, a zero bias,
/// a BOOL mask and a tensor left in the clear by `--only`, and user metadata.
struct Fixture {
    dir: tempfile::TempDir,
    locked: Vec<u8>,
}

const TENSORS: [(&str, &str, &[usize]); 5] = [
    ("a.weight", "F32", &[8, 33]),
    ("a.bias", "F32", &[8]),
    ("b.weight", "F32", &[8, 33]),
    ("mask", "BOOL", &[5]),
    ("clear.bias", "F32", &[3]),
];

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tensors: Vec<(String, &str, Vec<usize>)> = TENSORS
            .iter()
            .map(|(n, d, s)| {
                (
                    n.to_string(),
                    if *d == "BOOL" { "U8" } else { d },
                    s.to_vec(),
                )
            })
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let path = dir.path().join("m.safetensors");
        write_random_model(&path, &tensors, &[("format", "pt")], &mut rng);
        // The mask as BOOL, valid booleans.
        let (mut h, mut data) = split(&std::fs::read(&path).unwrap());
        h["mask"]["dtype"] = "BOOL".into();
        let [s, e] = offsets(&h, "mask");
        for b in &mut data[s..e] {
            *b &= 1;
        }
        h["a.bias"]["dtype"] = "F32".into();
        let [s, e] = offsets(&h, "a.bias");
        data[s..e].fill(0);
        std::fs::write(&path, join(&h, &data)).unwrap();
        write_key_file(&dir.path().join("key"));
        let o = run(
            dir.path(),
            &[
                "lock",
                "m.safetensors",
                "-o",
                "l.safetensors",
                "--key-file",
                "key",
                "--only",
                "a.*",
                "--only",
                "b.*",
                "--only",
                "mask",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let locked = std::fs::read(dir.path().join("l.safetensors")).unwrap();
        Fixture { dir, locked }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `bytes` as `t.safetensors` and checks that unlock (CPU, and GPU where
    /// asked) and verify all refuse it with a message holding `expect`, exit 1, and
    /// leave nothing behind.
    fn refused(&self, bytes: &[u8], expect: &str, what: &str, on_gpu: bool) {
        std::fs::write(self.path("t.safetensors"), bytes).unwrap();
        let mut runs = vec![
            vec![
                "unlock",
                "t.safetensors",
                "-o",
                "out.safetensors",
                "--key-file",
                "key",
                "--device",
                "cpu",
            ],
            vec!["verify", "t.safetensors", "--key-file", "key"],
        ];
        if on_gpu && gpu_context().is_some() {
            runs.push(vec![
                "unlock",
                "t.safetensors",
                "-o",
                "out.safetensors",
                "--key-file",
                "key",
                "--device",
                "gpu",
            ]);
        }
        for args in runs {
            let o = run(self.dir.path(), &args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{what}: {args:?} succeeded: {err}"
            );
            assert!(err.contains(expect), "{what}: {args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
            assert!(o.stdout.is_empty(), "{what}: {args:?} printed to stdout");
            assert_no_output(self.dir.path(), what);
        }
    }
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    deeplock(dir, args, None)
}

/// No output and no temporary in `dir`.
fn assert_no_output(dir: &Path, what: &str) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with("out") && !name.contains("deeplock-tmp"),
            "{what}: {name} was left behind"
        );
    }
}

/// A safetensors file's header (key order kept) and data section.
fn split(bytes: &[u8]) -> (Map<String, Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (h, bytes[8 + n..].to_vec())
}

/// The file with header `h` and data section `data`.
fn join(h: &Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let mut json = serde_json::to_vec(h).unwrap();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    out
}

fn offsets(h: &Map<String, Value>, name: &str) -> [usize; 2] {
    let o = &h[name]["data_offsets"];
    [
        o[0].as_u64().unwrap() as usize,
        o[1].as_u64().unwrap() as usize,
    ]
}

/// `bytes` with its header edited by `edit`.
fn with_header(bytes: &[u8], edit: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
    let (mut h, data) = split(bytes);
    edit(&mut h);
    join(&h, &data)
}

fn meta(h: &mut Map<String, Value>) -> &mut Map<String, Value> {
    h.get_mut("__metadata__").unwrap().as_object_mut().unwrap()
}

/// A metadata value holding a JSON list, edited as a list.
fn edit_list(h: &mut Map<String, Value>, key: &str, edit: impl FnOnce(&mut Vec<String>)) {
    let m = meta(h);
    let mut list: Vec<String> = serde_json::from_str(m[key].as_str().unwrap()).unwrap();
    edit(&mut list);
    m[key] = serde_json::to_string(&list).unwrap().into();
}

const MODIFIED: &str = "was modified after locking (authentication failed)";

#[test]
fn the_untouched_file_verifies_and_unlocks_to_the_original() {
    let f = Fixture::new();
    let o = run(
        f.dir.path(),
        &["verify", "l.safetensors", "--key-file", "key"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("5 tensor(s)") && said.contains("1 header(s) authenticated"),
        "{said}"
    );
    let o = run(
        f.dir.path(),
        &[
            "unlock",
            "l.safetensors",
            "-o",
            "u.safetensors",
            "--key-file",
            "key",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty() || !String::from_utf8_lossy(&o.stderr).contains("notice"));
    assert_eq!(
        std::fs::read(f.path("u.safetensors")).unwrap(),
        std::fs::read(f.path("m.safetensors")).unwrap()
    );
}

#[test]
fn one_flipped_bit_in_any_tensor_is_refused_naming_it() {
    let f = Fixture::new();
    let (h, data) = split(&f.locked);
    for (name, _, _) in TENSORS {
        let [s, e] = offsets(&h, name);
        for (at, bit) in [(s, 0), (e - 1, 7), ((s + e) / 2, 3)] {
            let mut d = data.clone();
            d[at] ^= 1 << bit;
            let what = format!("bit {bit} of byte {} of {name}", at - s);
            // The GPU streams the data: one position per tensor is enough there.
            f.refused(
                &join(&h, &d),
                &format!("tensor {name:?} in t.safetensors {MODIFIED}"),
                &what,
                at == s,
            );
        }
    }
}

#[test]
fn two_equal_tensors_swapped_are_refused() {
    let f = Fixture::new();
    let (h, mut data) = split(&f.locked);
    let ([a0, a1], [b0, b1]) = (offsets(&h, "a.weight"), offsets(&h, "b.weight"));
    let a = data[a0..a1].to_vec();
    data.copy_within(b0..b1, a0);
    data[b0..b1].copy_from_slice(&a);
    f.refused(&join(&h, &data), MODIFIED, "data swapped", true);
    // Their entries' offsets swapped instead (each name now points at the other's bytes).
    let bytes = with_header(&f.locked, |h| {
        let a = h["a.weight"]["data_offsets"].clone();
        h["a.weight"]["data_offsets"] = h["b.weight"]["data_offsets"].clone();
        h["b.weight"]["data_offsets"] = a;
    });
    f.refused(
        &bytes,
        &format!("the header in t.safetensors {MODIFIED}"),
        "offsets swapped",
        true,
    );
}

#[test]
fn every_header_edit_is_refused() {
    let f = Fixture::new();
    let header = format!("the header in t.safetensors {MODIFIED}");
    type Edit = Box<dyn Fn(&mut Map<String, Value>)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "user metadata edited",
            Box::new(|h| meta(h)["format"] = "np".into()),
        ),
        (
            "user metadata added",
            Box::new(|h| {
                meta(h).insert("note".into(), "x".into());
            }),
        ),
        (
            "user metadata removed",
            Box::new(|h| {
                meta(h).shift_remove("format");
            }),
        ),
        (
            "dtype changed",
            Box::new(|h| h["a.weight"]["dtype"] = "I32".into()),
        ),
        (
            "shape changed",
            Box::new(|h| h["a.weight"]["shape"] = serde_json::json!([33, 8])),
        ),
        (
            "a clear tensor's dtype changed",
            Box::new(|h| h["clear.bias"]["dtype"] = "I32".into()),
        ),
        (
            "tensor renamed",
            Box::new(|h| {
                let v = h.shift_remove("a.bias").unwrap();
                h.insert("a.bias2".into(), v);
                edit_list(h, "deeplock.locked", |l| {
                    l.retain(|n| n != "a.bias");
                    l.push("a.bias2".into());
                    l.sort();
                });
            }),
        ),
        (
            "name dropped from the locked list",
            Box::new(|h| edit_list(h, "deeplock.locked", |l| l.retain(|n| n != "b.weight"))),
        ),
        (
            "name added to the locked list",
            Box::new(|h| {
                edit_list(h, "deeplock.locked", |l| {
                    l.push("clear.bias".into());
                    l.sort();
                })
            }),
        ),
        (
            "a tensor tag changed",
            Box::new(|h| edit_list(h, "deeplock.tags", |l| l[1] = "00".repeat(16))),
        ),
        (
            "two tensor tags swapped",
            Box::new(|h| edit_list(h, "deeplock.tags", |l| l.swap(0, 2))),
        ),
        (
            "the header tag changed",
            Box::new(|h| {
                let m = meta(h);
                let mut t = m["deeplock.mac"].as_str().unwrap().to_owned();
                let last = if t.ends_with('0') { "1" } else { "0" };
                t.replace_range(31.., last);
                m["deeplock.mac"] = t.into();
            }),
        ),
    ];
    for (what, edit) in &edits {
        f.refused(&with_header(&f.locked, edit), &header, what, true);
    }
    // The salt or the key check value: told apart from a wrong key only by the tags,
    // which cannot be checked without them; the message names both causes.
    for key in ["deeplock.salt", "deeplock.kcv"] {
        let bytes = with_header(&f.locked, |h| {
            let m = meta(h);
            let mut v = m[key].as_str().unwrap().to_owned();
            let first = if v.starts_with('0') { "1" } else { "0" };
            v.replace_range(..1, first);
            m[key] = v.into();
        });
        f.refused(&bytes, "salt or key check value was changed", key, true);
    }
    // Downgraded to v1 by stripping the tags: v2's key check value is not v1's.
    let bytes = with_header(&f.locked, |h| {
        let m = meta(h);
        m.shift_remove("deeplock.tags");
        m.shift_remove("deeplock.mac");
        m["deeplock.version"] = "1".into();
        m["deeplock.scheme"] = "aes128-ctr-sbox".into();
    });
    f.refused(&bytes, "wrong key", "downgraded to v1", true);
    // A duplicated key reads two ways: refused before anything else.
    let (h, data) = split(&f.locked);
    let json = serde_json::to_string(&h).unwrap().replacen(
        r#""__metadata__":{"#,
        r#""__metadata__":{"format":"np","#,
        1,
    );
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.extend_from_slice(&data);
    f.refused(&bytes, "appears twice", "duplicated metadata key", true);
}

#[test]
fn truncated_and_extended_files_are_refused() {
    let f = Fixture::new();
    let n = f.locked.len();
    f.refused(
        &f.locked[..n - 1],
        "truncated",
        "truncated by one byte",
        true,
    );
    let mut longer = f.locked.clone();
    longer.push(0);
    f.refused(&longer, "belong to none", "extended by one byte", true);
}

#[test]
fn v1_files_unlock_with_a_notice_and_upgrade_keeps_their_locked_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    for name in ["plain.safetensors", "v1.safetensors"] {
        std::fs::copy(fixtures.join(name), dir.path().join(name)).unwrap();
    }
    write_key_file(&dir.path().join("key"));
    let d = dir.path();
    let plain = std::fs::read(d.join("plain.safetensors")).unwrap();

    let o = run(
        d,
        &[
            "unlock",
            "v1.safetensors",
            "-o",
            "u.safetensors",
            "--key-file",
            "key",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("notice") && err.contains("scheme v1") && err.contains("no authentication"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.join("u.safetensors")).unwrap(), plain);

    let o = run(d, &["verify", "v1.safetensors", "--key-file", "key"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("scheme v1 carry no tags"));

    let o = run(
        d,
        &[
            "upgrade",
            "v1.safetensors",
            "-o",
            "v2.safetensors",
            "--key-file",
            "key",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (h1, data1) = split(&std::fs::read(d.join("v1.safetensors")).unwrap());
    let (h2, data2) = split(&std::fs::read(d.join("v2.safetensors")).unwrap());
    assert_eq!(data1, data2, "upgrade keeps the locked bytes");
    let (m1, m2) = (
        h1["__metadata__"].as_object().unwrap(),
        h2["__metadata__"].as_object().unwrap(),
    );
    assert_eq!(m2["deeplock.version"], "2");
    assert_eq!(m1["deeplock.salt"], m2["deeplock.salt"]);
    assert_eq!(m1["deeplock.locked"], m2["deeplock.locked"]);
    let o = run(d, &["verify", "v2.safetensors", "--key-file", "key"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(
        d,
        &[
            "unlock",
            "v2.safetensors",
            "-o",
            "u2.safetensors",
            "--key-file",
            "key",
        ],
    );
    assert!(o.status.success());
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read(d.join("u2.safetensors")).unwrap(), plain);

    // Refused: a v2 input, a wrong key, a plain file.
    let o = run(
        d,
        &[
            "upgrade",
            "v2.safetensors",
            "-o",
            "v3.safetensors",
            "--key-file",
            "key",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("already authenticated"));
    std::fs::write(d.join("wrong"), "ffffffffffffffffffffffffffffffff").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("wrong"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = run(
        d,
        &[
            "upgrade",
            "v1.safetensors",
            "-o",
            "v3.safetensors",
            "--key-file",
            "wrong",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong key"));
    let o = run(
        d,
        &[
            "upgrade",
            "plain.safetensors",
            "-o",
            "v3.safetensors",
            "--key-file",
            "key",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("not locked"));
    assert!(!d.join("v3.safetensors").exists());
}

/// A checkpoint directory: two shards and the index naming their tensors.
fn checkpoint(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let shards = [
        ("model-00001-of-00002.safetensors", ["x.weight", "x.bias"]),
        ("model-00002-of-00002.safetensors", ["y.weight", "y.bias"]),
    ];
    let mut map = Map::new();
    for (file, names) in shards {
        let tensors: Vec<(String, &str, Vec<usize>)> = names
            .iter()
            .map(|n| (n.to_string(), "F32", vec![4, 5]))
            .collect();
        write_random_model(&dir.join(file), &tensors, &[("format", "pt")], &mut rng);
        for n in names {
            map.insert(n.into(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 320}, "weight_map": map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
}

/// Copies directory `from` to `to` (flat).
fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn checkpoint_shards_removed_added_renamed_or_swapped_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_key_file(&d.join("key"));
    checkpoint(&d.join("ckpt"), 1);
    checkpoint(&d.join("other"), 2);
    for (from, to) in [("ckpt", "locked"), ("other", "other-locked")] {
        let o = run(d, &["lock", from, "-o", to, "--key-file", "key"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(d.join("locked/deeplock.checkpoint").is_file());
    let o = run(d, &["verify", "locked", "--key-file", "key"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(d, &["unlock", "locked", "-o", "back", "--key-file", "key"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !d.join("back/deeplock.checkpoint").exists(),
        "an unlocked directory has no record"
    );
    assert_eq!(
        std::fs::read(d.join("back/model-00002-of-00002.safetensors")).unwrap(),
        std::fs::read(d.join("ckpt/model-00002-of-00002.safetensors")).unwrap()
    );

    let s1 = "model-00001-of-00002.safetensors";
    let s2 = "model-00002-of-00002.safetensors";
    type Change = Box<dyn Fn(&Path, &Path)>;
    let changes: Vec<(&str, &str, Change)> = vec![
        (
            "shard removed",
            "the shard model-00002-of-00002.safetensors is missing",
            Box::new(move |t, _| {
                std::fs::remove_file(t.join(s2)).unwrap();
            }),
        ),
        (
            "shard added",
            "extra.safetensors is not a shard of this checkpoint",
            Box::new(move |t, _| {
                std::fs::copy(t.join(s1), t.join("extra.safetensors")).unwrap();
            }),
        ),
        (
            "shard renamed",
            "is missing",
            Box::new(move |t, _| {
                std::fs::rename(t.join(s2), t.join("model-2.safetensors")).unwrap();
            }),
        ),
        (
            "shard swapped with another checkpoint's",
            "is not the one the checkpoint was locked with",
            Box::new(move |t, other| {
                std::fs::copy(other.join(s1), t.join(s1)).unwrap();
            }),
        ),
        (
            "two shards swapped",
            "is not the one the checkpoint was locked with",
            Box::new(move |t, _| {
                std::fs::rename(t.join(s1), t.join("tmp")).unwrap();
                std::fs::rename(t.join(s2), t.join(s1)).unwrap();
                std::fs::rename(t.join("tmp"), t.join(s2)).unwrap();
            }),
        ),
        (
            "index edited",
            "the index model.safetensors.index.json was modified",
            Box::new(|t, _| {
                let p = t.join("model.safetensors.index.json");
                let text = std::fs::read_to_string(&p).unwrap();
                std::fs::write(&p, text.replace("320", "321")).unwrap();
            }),
        ),
        (
            "record deleted",
            "holds no deeplock.checkpoint",
            Box::new(|t, _| {
                std::fs::remove_file(t.join("deeplock.checkpoint")).unwrap();
            }),
        ),
        (
            "record's tag edited",
            "deeplock.checkpoint was modified",
            Box::new(|t, _| {
                let p = t.join("deeplock.checkpoint");
                let mut r: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                r["mac"] = "00".repeat(16).into();
                std::fs::write(&p, serde_json::to_vec(&r).unwrap()).unwrap();
            }),
        ),
    ];
    for (what, expect, change) in &changes {
        let t = d.join("t");
        copy_dir(&d.join("locked"), &t);
        change(&t, &d.join("other-locked"));
        for args in [
            vec!["unlock", "t", "-o", "out", "--key-file", "key"],
            vec!["verify", "t", "--key-file", "key"],
        ] {
            let o = run(d, &args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{what}: {args:?}: {err}");
            assert!(err.contains(expect), "{what}: {args:?}: {err}");
            assert!(!d.join("out").exists(), "{what}: output written");
            assert_no_output(d, what);
        }
    }
}

#[test]
fn shards_locked_apart_are_joined_from_their_headers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_key_file(&d.join("key"));
    checkpoint(&d.join("ckpt"), 3);
    std::fs::create_dir(d.join("apart")).unwrap();
    // Each shard locked on its own, as on two machines.
    for s in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let (from, to) = (format!("ckpt/{s}"), format!("apart/{s}"));
        let o = run(d, &["lock", &from, "-o", &to, "--key-file", "key"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let index = "model.safetensors.index.json";
    std::fs::copy(d.join("ckpt").join(index), d.join("apart").join(index)).unwrap();
    let o = run(d, &["verify", "apart", "--key-file", "key"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("deeplock join"),
        "not joined yet"
    );
    let o = run(d, &["join", "apart", "--key-file", "key"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("joined 2 shard(s)"));
    let o = run(d, &["verify", "apart", "--key-file", "key"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A second join needs --force; an index that disagrees with the shards is refused.
    let o = run(d, &["join", "apart", "--key-file", "key"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    let p = d.join("apart").join(index);
    let text = std::fs::read_to_string(&p).unwrap();
    let mut index: Value = serde_json::from_str(&text).unwrap();
    index["weight_map"]
        .as_object_mut()
        .unwrap()
        .shift_remove("x.bias");
    let without_x_bias = serde_json::to_string(&index).unwrap();
    for (what, bad, expect) in [
        (
            "a tensor in the wrong shard",
            text.replacen("00001-of", "00002-of", 1),
            "\"x.weight\"",
        ),
        (
            "a missing shard",
            text.replace("00002-of-00002", "00003-of-00003"),
            "not a locked shard",
        ),
        (
            "a tensor renamed",
            text.replacen("\"x.bias\"", "\"x.bias.other\"", 1),
            "holds no such tensor",
        ),
        (
            "a tensor left out",
            without_x_bias,
            "does not map \"x.bias\"",
        ),
    ] {
        std::fs::write(&p, &bad).unwrap();
        let o = run(d, &["join", "apart", "--key-file", "key", "--force"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(expect), "{what}: {err}");
    }
    std::fs::write(&p, &text).unwrap();
    let o = run(d, &["join", "apart", "--key-file", "key", "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
