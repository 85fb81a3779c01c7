//! ONNX models (protobuf written here field by field, so that every byte is known) locked,
//! verified and unlocked by the CLI: unlock gives the original back byte for byte, every
//! initializer whose bytes lie contiguous is locked (subgraphs' too, named by the SPEC's
//! rule), the varint ones are reported and left in the clear, and every tamper is
//! refused with one line and nothing written. The parser never panics on any bytes:
//! random ones, and valid files flipped, cut or extended (`DEEPLOCK_FUZZ_CASES` to run
//! more than 256 cases). The same models with onnx and ONNX Runtime are in
//! `python/tests/test_onnx.py`.

mod common;

use std::path::Path;

use common::{deeplock, seeded_rng, write_key_file};
use deeplock::engine::CpuEngine;
use deeplock::files::{self, Options};
use deeplock::format::onnx::Onnx;
use deeplock::format::Container;
use deeplock::{CpuLocker, MasterKey};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rand::{Rng, RngCore};

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn int(out: &mut Vec<u8>, number: u64, v: u64) {
    varint(out, number << 3);
    varint(out, v);
}

fn bytes(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    varint(out, (number << 3) | 2);
    varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// The data of a tensor.
enum Data<'a> {
    Raw(&'a [u8]),
    /// `float_data`, packed.
    Floats(&'a [f32]),
    /// `int64_data`, packed varints.
    Int64(&'a [i64]),
}

/// A `TensorProto`: dims, data_type, name, then its data.
fn tensor(name: &str, data_type: u64, dims: &[u64], data: Data) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        int(&mut t, 1, d);
    }
    int(&mut t, 2, data_type);
    bytes(&mut t, 8, name.as_bytes());
    match data {
        Data::Raw(b) => bytes(&mut t, 9, b),
        Data::Floats(f) => {
            let packed: Vec<u8> = f.iter().flat_map(|x| x.to_le_bytes()).collect();
            bytes(&mut t, 4, &packed);
        }
        Data::Int64(v) => {
            let mut packed = Vec::new();
            for &x in v {
                varint(&mut packed, x as u64);
            }
            bytes(&mut t, 7, &packed);
        }
    }
    t
}

fn random(rng: &mut impl RngCore, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rng.fill_bytes(&mut b);
    b
}

/// A graph with `inits` as initializers and `nodes`.
fn graph(name: &str, nodes: &[Vec<u8>], inits: &[Vec<u8>]) -> Vec<u8> {
    let mut g = Vec::new();
    for n in nodes {
        bytes(&mut g, 1, n);
    }
    bytes(&mut g, 2, name.as_bytes());
    for t in inits {
        bytes(&mut g, 5, t);
    }
    g
}

/// The test model: `w1`, `w2` (F32 [4, 8], raw_data), `b1` (F32 [8], float_data),
/// `shape` (INT64, varints: left clear), `mask` (BOOL: left clear), an If node `cond`
/// whose two branches each hold an initializer `w3`, and user metadata.
fn model(rng: &mut impl RngCore) -> Vec<u8> {
    let w1 = random(rng, 128);
    let w2 = random(rng, 128);
    let b1: Vec<f32> = (0..8).map(|i| i as f32 * 0.5 - 1.0).collect();
    let w3a = random(rng, 20);
    let w3b = random(rng, 20);
    let branch = |name: &str, w: &[u8]| {
        let mut a = Vec::new();
        bytes(&mut a, 1, name.as_bytes());
        bytes(
            &mut a,
            6,
            &graph(name, &[], &[tensor("w3", 1, &[5], Data::Raw(w))]),
        );
        int(&mut a, 20, 5);
        a
    };
    let mut node = Vec::new();
    bytes(&mut node, 1, b"c");
    bytes(&mut node, 2, b"y");
    bytes(&mut node, 3, b"cond");
    bytes(&mut node, 4, b"If");
    bytes(&mut node, 5, &branch("then_branch", &w3a));
    bytes(&mut node, 5, &branch("else_branch", &w3b));
    let inits = [
        tensor("w1", 1, &[4, 8], Data::Raw(&w1)),
        tensor("w2", 1, &[4, 8], Data::Raw(&w2)),
        tensor("b1", 1, &[8], Data::Floats(&b1)),
        tensor("shape", 7, &[2], Data::Int64(&[-1, 4])),
        tensor("mask", 9, &[3], Data::Raw(&[1, 0, 1])),
    ];
    let mut m = Vec::new();
    int(&mut m, 1, 8);
    bytes(&mut m, 2, b"deeplock-test");
    bytes(&mut m, 7, &graph("g", &[node], &inits));
    let mut opset = Vec::new();
    int(&mut opset, 2, 17);
    bytes(&mut m, 8, &opset);
    let mut meta = Vec::new();
    bytes(&mut meta, 1, b"author");
    bytes(&mut meta, 2, b"author-value");
    bytes(&mut m, 14, &meta);
    m
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "{needle:?} found {} times", hits.len());
    hits[0]
}

struct Fixture {
    dir: tempfile::TempDir,
    original: Vec<u8>,
    locked: Vec<u8>,
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = deeplock(dir, args, None);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let original = model(&mut seeded_rng("onnx"));
        std::fs::write(dir.path().join("m.onnx"), &original).unwrap();
        write_key_file(&dir.path().join("key"));
        let said = ok(
            dir.path(),
            &["lock", "m.onnx", "-o", "l.onnx", "--key-file", "key"],
        );
        assert!(said.contains("\"shape\" left in the clear"), "{said}");
        let locked = std::fs::read(dir.path().join("l.onnx")).unwrap();
        Fixture {
            dir,
            original,
            locked,
        }
    }

    /// Unlock and verify of `bytes` both refuse it with `expect` in one line, exit 1,
    /// and leave nothing behind.
    fn refused(&self, bytes: &[u8], expect: &str, what: &str) {
        let dir = self.dir.path();
        std::fs::write(dir.join("t.onnx"), bytes).unwrap();
        for args in [
            &["unlock", "t.onnx", "-o", "out.onnx", "--key-file", "key"][..],
            &["verify", "t.onnx", "--key-file", "key"],
        ] {
            let o = deeplock(dir, args, None);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{what}: {args:?} succeeded: {err}"
            );
            assert!(err.contains(expect), "{what}: {args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
            for e in std::fs::read_dir(dir).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    !name.starts_with("out") && !name.contains("deeplock-tmp"),
                    "{what}: {name} left behind"
                );
            }
        }
    }
}

#[test]
fn locked_model_unlocks_byte_for_byte_with_every_contiguous_initializer_locked() {
    let f = Fixture::new();
    let dir = f.dir.path();
    // Same length plus the record, every byte before it kept but the tensors'.
    let parsed = Onnx::parse(&f.locked, "l.onnx".as_ref()).unwrap();
    let names: Vec<&str> = parsed.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "cond/then_branch/w3",
            "cond/else_branch/w3",
            "w1",
            "w2",
            "b1",
            "mask"
        ]
    );
    let record = parsed.lock_record().unwrap().unwrap();
    assert_eq!(
        record.locked,
        [
            "b1",
            "cond/else_branch/w3",
            "cond/then_branch/w3",
            "w1",
            "w2"
        ]
    );
    assert!(f.locked.len() > f.original.len());
    let mut gaps = vec![0u64];
    for (i, name) in names.iter().enumerate() {
        let r = parsed.byte_range(i);
        let (a, b) = (r.start as usize, r.end as usize);
        let changed = f.locked[a..b] != f.original[a..b];
        assert_eq!(changed, *name != "mask", "{name}");
        gaps.extend([r.start, r.end]);
    }
    gaps.push(f.original.len() as u64);
    for g in gaps.chunks(2) {
        let (a, b) = (g[0] as usize, g[1] as usize);
        assert_eq!(f.locked[a..b], f.original[a..b], "bytes {a}..{b} kept");
    }
    let shown = ok(dir, &["inspect", "l.onnx"]);
    assert!(shown.contains("left in the clear: shape"), "{shown}");
    assert!(shown.contains("metadata author = author-value"), "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(dir, &["inspect", "l.onnx", "--json"])).unwrap();
    assert_eq!(json["files"][0]["left_clear"][0]["name"], "shape", "{json}");
    ok(dir, &["verify", "l.onnx", "--key-file", "key"]);
    ok(
        dir,
        &["unlock", "l.onnx", "-o", "u.onnx", "--key-file", "key"],
    );
    assert_eq!(std::fs::read(dir.join("u.onnx")).unwrap(), f.original);
    // In memory: the same bytes.
    let key = MasterKey::from_hex(common::KAT_KEY).unwrap();
    let mem = deeplock::memory::unlock_to_vec(&dir.join("l.onnx"), &key).unwrap();
    assert_eq!(mem, f.original);
    // Detected by content, whatever the name; a locked file is not locked twice.
    std::fs::copy(dir.join("l.onnx"), dir.join("renamed.bin")).unwrap();
    ok(dir, &["verify", "renamed.bin", "--key-file", "key"]);
    let o = deeplock(
        dir,
        &["lock", "l.onnx", "-o", "ll.onnx", "--key-file", "key"],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    // --only: just those.
    ok(
        dir,
        &[
            "lock",
            "m.onnx",
            "-o",
            "o.onnx",
            "--key-file",
            "key",
            "--only",
            "cond/*",
        ],
    );
    let only = Onnx::parse(
        &std::fs::read(dir.join("o.onnx")).unwrap(),
        "o.onnx".as_ref(),
    )
    .unwrap();
    assert_eq!(
        only.lock_record().unwrap().unwrap().locked,
        ["cond/else_branch/w3", "cond/then_branch/w3"]
    );
    ok(
        dir,
        &["unlock", "o.onnx", "-o", "ou.onnx", "--key-file", "key"],
    );
    assert_eq!(std::fs::read(dir.join("ou.onnx")).unwrap(), f.original);
}

#[test]
fn every_tamper_is_refused_with_nothing_written() {
    let f = Fixture::new();
    let parsed = Onnx::parse(&f.locked, "l.onnx".as_ref()).unwrap();
    // A flipped bit in each locked initializer.
    for i in 0..parsed.tensors().len() {
        let r = parsed.byte_range(i);
        let mut b = f.locked.clone();
        b[(r.start + (r.end - r.start) / 2) as usize] ^= 0x10;
        let name = &parsed.tensors()[i].name;
        f.refused(&b, "modified after locking", &format!("a bit of {name}"));
    }
    // Header edits, each the same length.
    let w1 = find(&f.locked, &[0x08, 4, 0x08, 8, 0x10, 1, 0x42, 2, b'w', b'1']);
    let edits: [(&str, &[(usize, u8)]); 4] = [
        ("w1 renamed", &[(w1 + 9, b'9')]),
        ("w1's dims changed to [8, 4]", &[(w1 + 1, 8), (w1 + 3, 4)]),
        ("w1's data_type changed to INT32", &[(w1 + 5, 6)]),
        (
            "the user metadata changed",
            &[(find(&f.locked, b"author-value"), b'A')],
        ),
    ];
    for (what, changes) in edits {
        let mut b = f.locked.clone();
        for &(at, to) in changes {
            b[at] = to;
        }
        // The header tag, or the record that no longer fits the file.
        f.refused(&b, "after locking", what);
    }
    // w1 and w2 (same shape) swap names.
    let mut b = f.locked.clone();
    let w2 = find(&f.locked, &[0x08, 4, 0x08, 8, 0x10, 1, 0x42, 2, b'w', b'2']);
    b[w1 + 9] = b'2';
    b[w2 + 9] = b'1';
    f.refused(&b, "after locking", "w1 and w2 swapped");
    // A graph edit outside any tensor: the If node renamed.
    let mut b = f.locked.clone();
    b[find(&f.original, b"cond")] = b'k';
    f.refused(&b, "after locking", "a node renamed");
    // Any other byte of the model: the producer's name.
    let mut b = f.locked.clone();
    b[find(&f.original, b"deeplock-test")] = b'D';
    f.refused(
        &b,
        "the header in t.onnx was modified after locking",
        "the producer",
    );
    // Truncated: in the record, in a tensor.
    let n = f.locked.len();
    f.refused(
        &f.locked[..n - 1],
        "not a valid ONNX file",
        "the last byte cut",
    );
    f.refused(&f.locked[..w1 + 20], "not a valid ONNX file", "cut in w1");
    f.refused(&f.original, "not locked", "the unlocked model");
    // A wrong key.
    std::fs::write(f.dir.path().join("t.onnx"), &f.locked).unwrap();
    std::fs::write(
        f.dir.path().join("other"),
        "ffffffffffffffffffffffffffffffff\n",
    )
    .unwrap();
    let o = deeplock(
        f.dir.path(),
        &["unlock", "t.onnx", "-o", "out.onnx", "--key-file", "other"],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong key"));
    assert!(!f.dir.path().join("out.onnx").exists());
}

/// Parses `bytes`: an error, or tensors inside the file, in order, not overlapping,
/// and a layout no longer than the file.
fn parse_checked(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(p) = Onnx::parse(bytes, "fuzz.onnx".as_ref()) else {
        return Ok(());
    };
    let mut at = 0;
    for i in 0..p.tensors().len() {
        let r = p.byte_range(i);
        prop_assert!(r.start >= at && r.end >= r.start && r.end <= bytes.len() as u64);
        at = r.end;
    }
    let _ = p.lock_record();
    let layout = p
        .layout(None)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(layout.len(&p) <= bytes.len() as u64);
    Ok(())
}

#[test]
fn the_parser_never_panics_and_what_parses_locks_and_unlocks_back() {
    let cases = std::env::var("DEEPLOCK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let mut rng = seeded_rng("onnx fuzz");
    let seed: [u8; 32] = rng.random();
    let valid = model(&mut rng);
    let f = Fixture::new();
    let inputs = [valid.clone(), f.locked.clone()];
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_hex(common::KAT_KEY).unwrap();
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    );
    let edit = (
        0..2usize,
        0..3u8,
        any::<prop::sample::Index>(),
        any::<u8>(),
        1..4usize,
    );
    runner
        .run(&edit, |(which, op, at, byte, n)| {
            let mut b = inputs[which].clone();
            let i = at.index(b.len());
            match op {
                0 => b[i] ^= byte | 1,
                1 => b.truncate(i),
                _ => b.splice(i..i, std::iter::repeat_n(byte, n)).for_each(drop),
            }
            parse_checked(&b)?;
            // Unlocked files that still parse lock and unlock back byte for byte.
            if let Ok(p) = Onnx::parse(&b, "m.onnx".as_ref()) {
                if p.lock_record().ok().flatten().is_none() && which == 0 {
                    let (m, l, u) = (
                        dir.path().join("m.onnx"),
                        dir.path().join("l.onnx"),
                        dir.path().join("u.onnx"),
                    );
                    std::fs::write(&m, &b).unwrap();
                    let opts = Options {
                        force: true,
                        ..Options::default()
                    };
                    let mut engine = CpuEngine::new(CpuLocker::portable());
                    if files::lock(&m, &l, &key, &mut engine, &opts).is_ok() {
                        files::unlock(&l, &u, &key, &mut engine, &opts)
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(std::fs::read(&u).unwrap(), b);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    // Random bytes, and random bytes behind a plausible first field.
    for _ in 0..cases {
        let n = rng.random_range(0..300);
        let mut b = random(&mut rng, n);
        if rng.random() && b.len() > 2 {
            b[0] = 0x08;
            b[1] = 8;
        }
        parse_checked(&b).unwrap();
    }
}

#[test]
fn a_directory_of_onnx_models_locks_verifies_and_unlocks_on_either_device() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("models");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let mut rng = seeded_rng("onnx directory");
    let (a, b) = (model(&mut rng), model(&mut rng));
    std::fs::write(src.join("a.onnx"), &a).unwrap();
    std::fs::write(src.join("sub/b.onnx"), &b).unwrap();
    std::fs::write(src.join("config.json"), "{}").unwrap();
    write_key_file(&d.join("key"));
    ok(d, &["lock", "models", "-o", "locked", "--key-file", "key"]);
    assert_ne!(std::fs::read(d.join("locked/a.onnx")).unwrap(), a);
    ok(d, &["verify", "locked", "--key-file", "key"]);
    let mut devices = vec!["cpu"];
    if common::gpu_context().is_some() {
        devices.push("gpu");
    }
    for device in devices {
        let out = format!("back-{device}");
        ok(
            d,
            &[
                "unlock",
                "locked",
                "-o",
                &out,
                "--key-file",
                "key",
                "--device",
                device,
            ],
        );
        assert_eq!(
            std::fs::read(d.join(&out).join("a.onnx")).unwrap(),
            a,
            "{device}"
        );
        assert_eq!(
            std::fs::read(d.join(&out).join("sub/b.onnx")).unwrap(),
            b,
            "{device}"
        );
    }
}

/// A `TensorProto` whose data lie in an external file: `external_data` entries
/// (`location`, and `offset` / `length` where given) and `data_location` EXTERNAL.
fn external(name: &str, dims: &[u64], entries: &[(&str, &str)]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        int(&mut t, 1, d);
    }
    int(&mut t, 2, 1);
    bytes(&mut t, 8, name.as_bytes());
    for (k, v) in entries {
        let mut e = Vec::new();
        bytes(&mut e, 1, k.as_bytes());
        bytes(&mut e, 2, v.as_bytes());
        bytes(&mut t, 13, &e);
    }
    int(&mut t, 14, 1);
    t
}

/// A model of three external F32 initializers: `a` and `b` in `w.data` (a gap before
/// `b`, bytes after it), `c` in `sub/c.bin` (no offset given), and `w1` inside.
fn external_model(dir: &Path, rng: &mut impl RngCore, inits: &[Vec<u8>]) -> Vec<u8> {
    let data = random(rng, 16 + 7 + 24 + 5);
    std::fs::write(dir.join("w.data"), &data).unwrap();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/c.bin"), random(rng, 8)).unwrap();
    let mut m = Vec::new();
    int(&mut m, 1, 8);
    bytes(&mut m, 7, &graph("g", &[], inits));
    m
}

#[test]
fn external_data_is_locked_in_place_across_its_files_and_tampers_are_refused() {
    let mut rng = seeded_rng("onnx external data");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("m")).unwrap();
    write_key_file(&d.join("key"));
    let w1 = random(&mut rng, 16);
    let inits = vec![
        tensor("w1", 1, &[4], Data::Raw(&w1)),
        external("a", &[4], &[("location", "w.data"), ("length", "16")]),
        external("b", &[2, 3], &[("location", "w.data"), ("offset", "23")]),
        external("c", &[2], &[("location", "sub/c.bin")]),
    ];
    let model = external_model(&d.join("m"), &mut rng, &inits);
    std::fs::write(d.join("m/model.onnx"), &model).unwrap();
    let read = |p: &str| std::fs::read(d.join(p)).unwrap();
    let originals = ["model.onnx", "w.data", "sub/c.bin"].map(|n| read(&format!("m/{n}")));
    let shown = ok(d, &["inspect", "m/model.onnx"]);
    assert!(!shown.contains("left in the clear"), "{shown}");
    // As a directory (the data files go with their model, not copied on their own),
    // and as a file (the data files written beside the output).
    std::fs::create_dir(d.join("one")).unwrap();
    ok(d, &["lock", "m", "-o", "l", "--key-file", "key"]);
    let lock_one = || {
        ok(
            d,
            &[
                "lock",
                "m/model.onnx",
                "-o",
                "one/model.onnx",
                "--key-file",
                "key",
            ],
        )
    };
    lock_one();
    for out in ["l", "one"] {
        let w = read(&format!("{out}/w.data"));
        let orig = &originals[1];
        assert_eq!(w.len(), orig.len());
        // The gap and the tail are copied; the tensors' bytes are locked.
        assert_eq!(w[16..23], orig[16..23]);
        assert_eq!(w[47..], orig[47..]);
        assert_ne!(w[..16], orig[..16]);
        assert_ne!(w[23..47], orig[23..47]);
        assert_ne!(read(&format!("{out}/sub/c.bin")), originals[2]);
        ok(
            d,
            &["verify", &format!("{out}/model.onnx"), "--key-file", "key"],
        );
    }
    ok(d, &["verify", "l", "--key-file", "key"]);
    ok(d, &["unlock", "l", "-o", "u", "--key-file", "key"]);
    for (n, o) in ["model.onnx", "w.data", "sub/c.bin"].iter().zip(&originals) {
        assert!(&read(&format!("u/{n}")) == o, "{n} differs after unlock");
    }
    // Tampers with the data files: refused by unlock and verify, nothing written.
    let refused = |what: &str, want: &str, edit: &dyn Fn()| {
        edit();
        for args in [
            &[
                "unlock",
                "one/model.onnx",
                "-o",
                "x.onnx",
                "--key-file",
                "key",
            ][..],
            &["verify", "one/model.onnx", "--key-file", "key"][..],
        ] {
            let o = deeplock(d, args, None);
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{what}: {args:?} succeeded");
            assert!(e.contains(want), "{what}: {e}");
            assert_eq!(e.trim_end().lines().count(), 1, "{what}: {e}");
            assert!(
                !d.join("x.onnx").exists() && !d.join("w.data").exists(),
                "{what}"
            );
        }
        std::fs::remove_dir_all(d.join("one")).unwrap();
        std::fs::create_dir(d.join("one")).unwrap();
        lock_one();
    };
    let flip = |at: usize| {
        let mut b = read("one/w.data");
        b[at] ^= 4;
        std::fs::write(d.join("one/w.data"), b).unwrap();
    };
    refused("a bit of a", "\"a\"", &|| flip(3));
    refused("a bit of b", "\"b\"", &|| flip(30));
    refused("the data file cut short", "", &|| {
        std::fs::write(d.join("one/w.data"), &read("one/w.data")[..46]).unwrap()
    });
    refused("the data file grown", "", &|| {
        std::fs::write(
            d.join("one/w.data"),
            [&read("one/w.data")[..], b"x"].concat(),
        )
        .unwrap()
    });
    refused("a data file missing", "is missing", &|| {
        std::fs::remove_file(d.join("one/sub/c.bin")).unwrap()
    });
    // Bad external data at lock: refused with what is wrong, nothing written.
    for (bad, want) in [
        (
            external("z", &[4], &[("location", "../w.data")]),
            "not a plain relative path",
        ),
        (
            external("z", &[4], &[("location", "w.data"), ("length", "12")]),
            "need 16",
        ),
        (
            external("z", &[4], &[("location", "w.data"), ("offset", "40")]),
            "cut short",
        ),
        (
            external("z", &[4], &[("location", "w.data"), ("offset", "8")]),
            "overlaps",
        ),
        (external("z", &[4], &[("offset", "0")]), "names none"),
        (
            external("z", &[4], &[("location", "nope.bin")]),
            "is missing",
        ),
    ] {
        let mut inits = inits.clone();
        inits.push(bad);
        let mut m = Vec::new();
        int(&mut m, 1, 8);
        bytes(&mut m, 7, &graph("g", &[], &inits));
        std::fs::write(d.join("m/bad.onnx"), &m).unwrap();
        let o = deeplock(
            d,
            &["lock", "m/bad.onnx", "-o", "bad.onnx", "--key-file", "key"],
            None,
        );
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(want), "{want}: {e}");
        assert!(!d.join("bad.onnx").exists() && !d.join("w.data").exists());
    }
}

#[test]
fn a_tensor_ending_the_file_stays_clear_of_the_record_appended_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_key_file(&d.join("key"));
    // The initializer's raw_data is the file's last bytes: the record follows it.
    let w = random(&mut seeded_rng("onnx last tensor"), 8);
    let mut m = Vec::new();
    int(&mut m, 1, 8);
    bytes(
        &mut m,
        7,
        &graph("g", &[], &[tensor("w", 1, &[2], Data::Raw(&w))]),
    );
    assert!(m.ends_with(&w));
    std::fs::write(d.join("m.onnx"), &m).unwrap();
    ok(d, &["lock", "m.onnx", "-o", "l.onnx", "--key-file", "key"]);
    ok(d, &["verify", "l.onnx", "--key-file", "key"]);
    ok(
        d,
        &["unlock", "l.onnx", "-o", "u.onnx", "--key-file", "key"],
    );
    assert_eq!(std::fs::read(d.join("u.onnx")).unwrap(), m);
}
