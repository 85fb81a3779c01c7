//! GGUF models (llama.cpp's format) through the CLI: every tensor locked in place,
//! quantized block types included, the record as string key-values after the model's
//! own, unlock byte for byte; every tamper refused with nothing written; the parser
//! never panics. The Python tests (python/tests/test_gguf.py) check the same files with
//! the `gguf` package's own reader.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use deeplock::format::gguf::Gguf;
use deeplock::format::Container;
use rand::{Rng, SeedableRng};

/// A GGUF v3 key-value `key` = the string `value`.
fn kv_string(b: &mut Vec<u8>, key: &str, value: &str) {
    put_str(b, key);
    b.extend_from_slice(&8u32.to_le_bytes());
    put_str(b, value);
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// A small GGUF v3 file: three key-values (a string, a u32, an array of strings), and
/// tensors of F32, F16, Q8_0 and Q4_K with random bytes, aligned to 32; and where some
/// of its fields lie (`<name>.type`, `<name>.dim0`, `<name>.offset`, `<name>.data`).
fn model() -> (Vec<u8>, HashMap<String, usize>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // (name, ggml type, dims, bytes)
    let tensors: [(&str, u32, Vec<u64>, usize); 4] = [
        ("token_embd.weight", 0, vec![5, 3], 60),
        ("blk.0.attn_q.weight", 1, vec![7, 2], 28),
        ("blk.0.ffn.weight", 8, vec![64, 3], 34 * 2 * 3),
        ("output.weight", 12, vec![256, 2], 144 * 2),
    ];
    let mut marks = HashMap::new();
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&3u64.to_le_bytes());
    marks.insert("kv.name".to_string(), b.len());
    kv_string(&mut b, "general.name", "tiny");
    put_str(&mut b, "llama.block_count");
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    put_str(&mut b, "tokenizer.ggml.tokens");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    put_str(&mut b, "<s>");
    put_str(&mut b, "hello");
    let mut offset = 0u64;
    for (name, ggml, dims, len) in &tensors {
        marks.insert(format!("{name}.name"), b.len() + 8);
        put_str(&mut b, name);
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        marks.insert(format!("{name}.dim0"), b.len());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        marks.insert(format!("{name}.type"), b.len());
        b.extend_from_slice(&ggml.to_le_bytes());
        marks.insert(format!("{name}.offset"), b.len());
        b.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + *len as u64).next_multiple_of(32);
    }
    b.resize(b.len().next_multiple_of(32), 0);
    let data = b.len();
    let mut at = 0usize;
    for (name, _, _, len) in &tensors {
        b.resize(data + at, 0);
        marks.insert(format!("{name}.data"), b.len());
        b.extend((0..*len).map(|_| rng.random::<u8>()));
        at = (at + len).next_multiple_of(32);
    }
    (b, marks)
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    deeplock(dir, args, None)
}

/// A directory holding the model as `m.gguf`, a key, and it locked as `l.gguf`.
fn locked_fixture() -> (tempfile::TempDir, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (orig, _) = model();
    std::fs::write(dir.path().join("m.gguf"), &orig).unwrap();
    write_key_file(&dir.path().join("key"));
    let o = run(
        dir.path(),
        &["lock", "m.gguf", "-o", "l.gguf", "--key-file", "key"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let locked = std::fs::read(dir.path().join("l.gguf")).unwrap();
    (dir, orig, locked)
}

#[test]
fn tensors_are_named_typed_and_found_by_content() {
    let (bytes, marks) = model();
    let m = Gguf::parse(&bytes, "m".as_ref()).unwrap();
    let got: Vec<(String, String, Vec<usize>, u64)> = (0..m.tensors().len())
        .map(|i| {
            let t = &m.tensors()[i];
            (
                t.name.clone(),
                format!("{:?}", t.dtype),
                t.shape.clone(),
                m.byte_range(i).start,
            )
        })
        .collect();
    let at = |k: &str| marks[k] as u64;
    assert_eq!(
        got,
        vec![
            (
                "token_embd.weight".into(),
                "F32".into(),
                vec![3, 5],
                at("token_embd.weight.data")
            ),
            (
                "blk.0.attn_q.weight".into(),
                "F16".into(),
                vec![2, 7],
                at("blk.0.attn_q.weight.data")
            ),
            (
                "blk.0.ffn.weight".into(),
                "U8".into(),
                vec![204],
                at("blk.0.ffn.weight.data")
            ),
            (
                "output.weight".into(),
                "U8".into(),
                vec![288],
                at("output.weight.data")
            ),
        ]
    );
    assert!(m.lock_record().unwrap().is_none());
    let meta = m.user_metadata();
    assert!(
        meta.contains(&("general.name".into(), "tiny".into())),
        "{meta:?}"
    );
    // Known by content, whatever the name.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weights.bin"), &bytes).unwrap();
    write_key_file(&dir.path().join("key"));
    let o = run(
        dir.path(),
        &["lock", "weights.bin", "-o", "l.bin", "--key-file", "key"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Block types are described as bytes, and named as GGUF names them for inspect.
    let stored: Vec<_> = (0..4)
        .map(|i| m.stored_type(i).map(|s| (s.name, s.shape.clone())))
        .collect();
    assert_eq!(
        stored,
        [
            None,
            None,
            Some(("Q8_0", vec![3, 64])),
            Some(("Q4_K", vec![2, 256]))
        ]
    );
    for file in ["weights.bin", "l.bin"] {
        let o = run(dir.path(), &["inspect", file]);
        let text = String::from_utf8_lossy(&o.stdout);
        let row = text
            .lines()
            .find(|l| l.contains("blk.0.ffn.weight"))
            .unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols[..4],
            ["blk.0.ffn.weight", "Q8_0", "[3,", "64]"],
            "{text}"
        );
        let o = run(dir.path(), &["inspect", file, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let t = &v["files"][0]["tensors"];
        let out = t
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "output.weight")
            .unwrap();
        assert_eq!(out["dtype"], "U8");
        assert_eq!(out["stored_type"], "Q4_K");
        assert_eq!(out["stored_shape"], serde_json::json!([2, 256]));
        assert_eq!(t[0]["stored_type"], serde_json::Value::Null);
    }
}

#[test]
fn lock_verify_unlock_round_trip_byte_for_byte() {
    let (dir, orig, locked) = locked_fixture();
    let d = dir.path();
    let (_, marks) = model();
    // Every tensor's bytes changed, the header only grew by the record.
    let m = Gguf::parse(&locked, "l".as_ref()).unwrap();
    let record = m.lock_record().unwrap().expect("locked");
    assert_eq!(record.locked.len(), 4);
    for (i, t) in m.tensors().iter().enumerate() {
        let r = m.byte_range(i);
        let was = marks[&format!("{}.data", t.name)];
        let len = (r.end - r.start) as usize;
        assert_ne!(
            &locked[r.start as usize..r.end as usize],
            &orig[was..was + len],
            "{} left in the clear",
            t.name
        );
    }
    assert!(locked.starts_with(&orig[..marks["kv.name"]]) || locked[..4] == orig[..4]);
    let o = run(d, &["verify", "l.gguf", "--key-file", "key"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        d,
        &["unlock", "l.gguf", "-o", "u.gguf", "--key-file", "key"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(d.join("u.gguf")).unwrap() == orig);
    // In memory, verified first.
    let key = deeplock::key_file::parse(&std::fs::read(d.join("key")).unwrap(), "key").unwrap();
    let mem = deeplock::memory::unlock_to_vec(&d.join("l.gguf"), &key).unwrap();
    assert!(mem == orig);
    // Locking twice is refused.
    let o = run(d, &["lock", "l.gguf", "-o", "ll.gguf", "--key-file", "key"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already locked"), "{}", stderr(&o));
    // --only leaves the others in the clear, and still unlocks byte for byte.
    let o = run(
        d,
        &[
            "lock",
            "m.gguf",
            "-o",
            "o.gguf",
            "--key-file",
            "key",
            "--only",
            "blk.*",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let only = std::fs::read(d.join("o.gguf")).unwrap();
    let m = Gguf::parse(&only, "o".as_ref()).unwrap();
    assert_eq!(
        m.lock_record().unwrap().unwrap().locked,
        ["blk.0.attn_q.weight", "blk.0.ffn.weight"]
    );
    let o = run(
        d,
        &["unlock", "o.gguf", "-o", "ou.gguf", "--key-file", "key"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(d.join("ou.gguf")).unwrap() == orig);
}

/// Unlock and verify of `bytes` as `t.gguf` in `dir` both refuse, with `want`.
fn refused(dir: &Path, bytes: &[u8], want: &str, what: &str) {
    refused_by_unlock_and_verify(dir, "gguf", bytes, want, what);
}

#[test]
fn every_tamper_is_refused_with_nothing_written() {
    let (dir, orig, locked) = locked_fixture();
    let d = dir.path();
    let (_, marks) = model();
    let m = Gguf::parse(&locked, "l".as_ref()).unwrap();
    // Where a field of the original lies in the locked file: the record's key-values
    // come after the model's, so the tensor infos moved by their length.
    let grown = locked
        .windows(b"deeplock.version".len())
        .position(|w| w == b"deeplock.version")
        .unwrap()
        - 8;
    let info_shift = {
        let infos = marks["token_embd.weight.name"] - 8;
        let record_end = (grown..locked.len())
            .find(|&p| locked[p..].starts_with(&orig[infos..infos + 12]))
            .unwrap();
        record_end - infos
    };
    let field = |k: &str| marks[k] + info_shift;
    let data = |i: usize| m.byte_range(i).start as usize;
    let flip = |at: usize, bit: u8| {
        let mut b = locked.clone();
        b[at] ^= 1 << bit;
        b
    };
    let tag_fail = "modified after locking";
    let header_fail = "header";
    for i in 0..4 {
        refused(d, &flip(data(i) + 1, 3), tag_fail, "a bit in a tensor");
    }
    refused(
        d,
        &flip(marks["kv.name"] + 8 + 12 + 4 + 8, 0),
        header_fail,
        "a key-value's value",
    );
    refused(d, &flip(field("output.weight.dim0") + 1, 0), "", "a dim");
    refused(
        d,
        &flip(field("token_embd.weight.type"), 0),
        "",
        "a tensor's type",
    );
    refused(
        d,
        &flip(field("output.weight.name"), 1),
        "after locking",
        "a tensor's name",
    );
    // Two tensors of the same size swap names: the offsets they point at swap too.
    {
        let mut b = locked.clone();
        let (a, c) = (
            field("token_embd.weight.offset"),
            field("blk.0.attn_q.weight.offset"),
        );
        let (x, y) = (b[a..a + 8].to_vec(), b[c..c + 8].to_vec());
        b[a..a + 8].copy_from_slice(&y);
        b[c..c + 8].copy_from_slice(&x);
        refused(d, &b, "", "two tensors' offsets swapped");
    }
    // The locked file's padding after its header (lock writes zeros).
    let infos_end = field("output.weight.offset") + 8;
    assert!(
        infos_end < data(0),
        "the fixture's locked header has padding"
    );
    refused(d, &flip(infos_end, 0), "padding", "a padding byte");
    refused(d, &locked[..locked.len() - 1], "", "truncated");
    refused(d, &locked[..data(1)], "", "truncated in a tensor");
    // The record edited: its salt.
    {
        let at = locked
            .windows(b"deeplock.salt".len())
            .position(|w| w == b"deeplock.salt")
            .unwrap();
        refused(d, &flip(at + 13 + 4 + 8 + 2, 0), "", "the salt");
    }
    // An offset out of range.
    {
        let mut b = locked.clone();
        let at = field("output.weight.offset");
        b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        refused(d, &b, "past the end of the file", "an offset out of range");
    }
    // Bytes appended.
    {
        let mut b = locked.clone();
        b.extend_from_slice(b"more");
        refused(d, &b, "", "bytes appended");
    }
    // A wrong key.
    std::fs::write(d.join("key"), "ffffffffffffffffffffffffffffffff").unwrap();
    refused(d, &locked, "wrong key", "a wrong key");
}

#[test]
fn bad_models_are_refused_at_lock_with_nothing_written() {
    let (orig, marks) = model();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_key_file(&d.join("key"));
    let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
    let mut b = orig.clone();
    b[marks["output.weight.type"]..][..4].copy_from_slice(&4u32.to_le_bytes());
    cases.push((b, "ggml type 4"));
    let mut b = orig.clone();
    b[marks["output.weight.dim0"]..][..8].copy_from_slice(&100u64.to_le_bytes());
    cases.push((b, "not a multiple"));
    let mut b = orig.clone();
    b[marks["output.weight.offset"]..][..8].copy_from_slice(&0u64.to_le_bytes());
    cases.push((b, "overlap"));
    let mut b = orig.clone();
    b[marks["output.weight.offset"]..][..8].copy_from_slice(&3u64.to_le_bytes());
    cases.push((b, "alignment"));
    let mut b = orig.clone();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    cases.push((b, "big-endian"));
    let mut b = orig.clone();
    b[16..24].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    cases.push((b, "more than"));
    cases.push((
        orig[..marks["output.weight.data"] + 5].to_vec(),
        "past the end",
    ));
    let mut b = orig.clone();
    let name = marks["blk.0.attn_q.weight.name"];
    b[name..name + 19].copy_from_slice(b"token_embd.weight\0\0");
    b[name - 8..name].copy_from_slice(&17u64.to_le_bytes());
    cases.push((b, ""));
    let mut b = orig.clone();
    let pad = marks["token_embd.weight.data"] - 1;
    b[pad] = 1;
    cases.push((b, "padding"));
    for (bytes, want) in cases {
        std::fs::write(d.join("b.gguf"), &bytes).unwrap();
        let o = run(d, &["lock", "b.gguf", "-o", "l.gguf", "--key-file", "key"]);
        let e = stderr(&o);
        assert!(!o.status.success(), "{want}: lock succeeded");
        assert!(e.contains(want), "{want}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{want}: {e}");
        assert!(!d.join("l.gguf").exists(), "{want}");
        assert_eq!(
            std::fs::read_dir(d).unwrap().count(),
            2,
            "{want}: a temporary was left"
        );
    }
}

#[test]
fn parser_never_panics_on_mutated_files() {
    let (_dir, orig, locked) = locked_fixture();
    let mut rng = seeded_rng("gguf parser fuzz");
    let path: &Path = "fuzz.gguf".as_ref();
    let mut parsed = 0;
    for case in 0..3000u32 {
        let base = if case.is_multiple_of(2) {
            &orig
        } else {
            &locked
        };
        let mut b = base.clone();
        match case % 5 {
            k @ 0..=3 => mutate(&mut b, &mut rng, k, 8),
            _ => {
                let n = rng.random_range(24..300);
                b = (0..n).map(|_| rng.random()).collect();
                b[..8].copy_from_slice(b"GGUF\x03\0\0\0");
            }
        }
        if let Ok(m) = Gguf::parse(&b, path) {
            parsed += 1;
            check_parsed(&m, 0..b.len() as u64, case);
        }
    }
    eprintln!("{parsed} of 3000 mutated files parsed");
}

#[test]
fn a_directory_with_gguf_models_locks_verifies_and_unlocks_on_either_device() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (orig, _) = model();
    std::fs::create_dir(d.join("ckpt")).unwrap();
    std::fs::write(d.join("ckpt/model-00001.gguf"), &orig).unwrap();
    std::fs::write(d.join("ckpt/model-00002.gguf"), &orig).unwrap();
    std::fs::write(d.join("ckpt/README.md"), "tiny\n").unwrap();
    write_key_file(&d.join("key"));
    let devices: &[&str] = if gpu_context().is_some() {
        &["cpu", "gpu"]
    } else {
        &["cpu"]
    };
    for dev in devices {
        let (l, p) = (format!("locked-{dev}"), format!("plain-{dev}"));
        let o = run(
            d,
            &[
                "lock",
                "ckpt",
                "-o",
                &l,
                "--key-file",
                "key",
                "--device",
                dev,
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let o = run(d, &["verify", &l, "--key-file", "key"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = run(
            d,
            &["unlock", &l, "-o", &p, "--key-file", "key", "--device", dev],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        for n in ["model-00001.gguf", "model-00002.gguf"] {
            assert!(
                std::fs::read(d.join(&p).join(n)).unwrap() == orig,
                "{dev} {n}"
            );
        }
    }
}
