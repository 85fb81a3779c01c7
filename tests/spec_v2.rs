//! docs/SPEC.md's v2 section is the definition of authenticated locking: its
//! known-answer vectors (produced by the independent Python implementation docs/kat.py,
//! `python3 docs/kat.py v2`) must hold for `deeplock::auth`.

mod common;

use common::hex_bytes as hex;
use std::collections::BTreeMap;

use aes::cipher::{BlockEncrypt, KeyInit};
use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, KeyInit as _};
use deeplock::auth::{
    checkpoint_encoding, header_encoding, index_digest, CheckpointKey, FileAuthKey, HeaderFields,
    Tag, TensorDescriptor, TensorTagger, AUTH_KEY_BLOCK, CHECKPOINT_KEY_BLOCK, SCHEME, VERSION,
};
use deeplock::header::TensorEntry;
use deeplock::hex::encode;
use deeplock::{MasterKey, Salt};

/// The rows of the v2 block, each split at " | " after its first word (the row kind).
fn rows() -> Vec<(String, Vec<String>)> {
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SPEC.md")).unwrap();
    let begin = spec.find("<!-- kat-v2:begin -->").expect("v2 KAT block");
    let end = spec.find("<!-- kat-v2:end -->").expect("v2 KAT block end");
    spec[begin..end]
        .lines()
        .filter_map(|l| {
            let (kind, rest) = l.split_once(' ')?;
            ["key", "chunk", "tensor", "header", "checkpoint"]
                .contains(&kind)
                .then(|| {
                    (
                        kind.to_owned(),
                        rest.split(" | ").map(str::to_owned).collect(),
                    )
                })
        })
        .collect()
}

fn hex16(s: &str) -> [u8; 16] {
    hex(s).try_into().unwrap()
}

/// Byte j of a v2 vector's tensor is j mod 251.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|j| (j % 251) as u8).collect()
}

fn aes(key: &[u8; 16], block: &[u8; 16]) -> [u8; 16] {
    let mut b = (*block).into();
    aes::Aes128::new(key.into()).encrypt_block(&mut b);
    b.into()
}

/// GMAC straight from `aes-gcm` under a raw key, to check the derived keys of the
/// vectors through what the crate computes with them.
fn gmac(key: &[u8; 16], nonce: [u8; 12], message: &[u8]) -> [u8; 16] {
    Aes128Gcm::new(key.into())
        .encrypt_inout_detached(&nonce.into(), message, (&mut [][..]).into())
        .unwrap()
        .into()
}

/// The first key row's key and salt, which the other rows use.
fn first_key() -> (MasterKey, Salt) {
    (
        MasterKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap(),
        Salt([1; 16]),
    )
}

#[test]
fn v2_vectors_hold() {
    let rows = rows();
    let count = |k: &str| rows.iter().filter(|(kind, _)| kind == k).count();
    assert_eq!(
        [count("key"), count("chunk"), count("tensor")],
        [3, 4, 6],
        "rows"
    );
    assert_eq!([count("header"), count("checkpoint")], [1, 1]);
    let (key, salt) = first_key();
    let fk = FileAuthKey::derive(&key, &salt);
    for (kind, r) in &rows {
        match kind.as_str() {
            "key" => {
                let (k, s) = (MasterKey::from_hex(&r[0]).unwrap(), hex16(&r[1]));
                let (k_auth, k_file) = (hex16(&r[2]), hex16(&r[3]));
                assert_eq!(aes(k.as_bytes(), &AUTH_KEY_BLOCK), k_auth, "K_auth {r:?}");
                assert_eq!(aes(&k_auth, &s), k_file, "K_file {r:?}");
                let derived = FileAuthKey::derive(&k, &Salt(s));
                assert_eq!(encode(&derived.kcv()), r[4], "kcv2 {r:?}");
                assert_eq!(
                    derived.chunk_tag(0, 0, b"probe").0,
                    gmac(&k_file, [0; 12], b"probe"),
                    "the GMAC key is K_file {r:?}"
                );
            }
            "chunk" => {
                let (t, c) = (r[0].parse().unwrap(), r[1].parse().unwrap());
                assert_eq!(fk.chunk_tag(t, c, &hex(&r[2])).to_hex(), r[3], "{r:?}");
            }
            "tensor" => {
                let shape = r[3].split(',').map(|d| d.parse().unwrap()).collect();
                let len: u64 = r[5].parse().unwrap();
                let desc = TensorDescriptor {
                    index: r[0].parse().unwrap(),
                    name: r[1].clone(),
                    dtype: deeplock::Dtype::parse(&r[2]).expect("a safetensors dtype"),
                    shape,
                    len,
                    locked: r[4] == "1",
                };
                let bytes = pattern(len as usize);
                assert_eq!(
                    fk.tensor_tag(&desc, &bytes).unwrap().to_hex(),
                    r[6],
                    "{r:?}"
                );
                // Streamed in pieces of an odd size, the same tag.
                let mut t = TensorTagger::new(desc).unwrap();
                for piece in bytes.chunks(333_333) {
                    t.update(&fk, piece).unwrap();
                }
                assert_eq!(t.finish(&fk).unwrap().to_hex(), r[6], "streamed {r:?}");
            }
            "header" => check_header(&fk, &salt, r),
            "checkpoint" => check_checkpoint(&key, r),
            _ => unreachable!(),
        }
    }
}

/// SPEC.md's example header: its encoding and tag.
fn check_header(fk: &FileAuthKey, salt: &Salt, r: &[String]) {
    let entry = |name: &str, dtype: &str, shape: &[usize], start, end| TensorEntry {
        name: name.into(),
        dtype: deeplock::Dtype::parse(dtype).expect("a safetensors dtype"),
        shape: shape.to_vec(),
        start,
        end,
    };
    let entries = [
        entry("empty", "F32", &[0], 0, 0),
        entry("bias", "F32", &[4], 0, 16),
        entry("w", "F32", &[2, 2], 16, 32),
        entry("mask", "BOOL", &[3], 32, 35),
    ];
    let locked = vec!["bias".to_owned(), "w".to_owned()];
    let tagged: Vec<(&TensorEntry, Tag)> = entries
        .iter()
        .enumerate()
        .map(|(t, e)| {
            let desc = TensorDescriptor::of(t as u32, e, locked.contains(&e.name));
            let tag = fk.tensor_tag(&desc, &pattern(e.len() as usize)).unwrap();
            (e, tag)
        })
        .collect();
    let metadata: BTreeMap<String, String> = [
        ("format".to_owned(), "pt".to_owned()),
        ("deeplock.note".to_owned(), "x".to_owned()),
    ]
    .into();
    let kcv = fk.kcv();
    let h = HeaderFields {
        version: VERSION,
        scheme: SCHEME,
        salt,
        kcv: &kcv,
        locked: &locked,
        tensors: &tagged,
        metadata: &metadata,
    };
    assert_eq!(
        encode(&header_encoding(&h).unwrap()),
        r[0],
        "header encoding"
    );
    assert_eq!(fk.header_tag(&h).unwrap().to_hex(), r[1], "header tag");
}

/// SPEC.md's example checkpoint record: its key, encoding and tag.
fn check_checkpoint(key: &MasterKey, r: &[String]) {
    let ck_salt = [0x0f; 16];
    let k_c = aes(&aes(key.as_bytes(), &CHECKPOINT_KEY_BLOCK), &ck_salt);
    assert_eq!(encode(&k_c), r[0], "K_c");
    let shards: BTreeMap<String, Tag> = [
        (
            "model-00002-of-00002.safetensors".to_owned(),
            Tag([0x11; 16]),
        ),
        (
            "model-00001-of-00002.safetensors".to_owned(),
            Tag([0x22; 16]),
        ),
    ]
    .into();
    let indexes: BTreeMap<String, [u8; 32]> = [(
        "model.safetensors.index.json".to_owned(),
        index_digest(b"{\"weight_map\":{}}\n"),
    )]
    .into();
    assert_eq!(encode(&checkpoint_encoding(&shards, &indexes)), r[1]);
    let tag = CheckpointKey::derive(key, &Salt(ck_salt)).tag(&shards, &indexes);
    assert_eq!(tag.to_hex(), r[2], "checkpoint tag");
    assert_eq!(tag.0, gmac(&k_c, [0xff; 12], &hex(&r[1])), "GMAC under K_c");
}

/// A file locked by the CLI, read by the independent implementation: docs/kat.py checks
/// its key check value, header tag and every tensor tag as SPEC.md defines them, then
/// unlocks it; its data must be the original's. Needs python3 with `cryptography`
/// (scripts/test.sh installs it and sets DEEPLOCK_REQUIRE_PYTHON=1: then a missing one
/// fails this test instead of skipping it).
#[test]
fn a_locked_file_checks_and_unlocks_in_the_independent_implementation() {
    let has = std::process::Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        assert!(
            std::env::var_os("DEEPLOCK_REQUIRE_PYTHON").is_none(),
            "python3 with the cryptography package is required (DEEPLOCK_REQUIRE_PYTHON is set)"
        );
        eprintln!("skipped: no python3 with the cryptography package");
        return;
    }
    use rand::SeedableRng;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    // Locked tensors small (the Python keystream is slow); a clear one over two chunks,
    // an empty one, odd dtypes and sizes.
    let tensors = vec![
        ("w.weight".to_string(), "F32", vec![7, 13]),
        ("w.bias".to_string(), "BF16", vec![7]),
        ("empty".to_string(), "F32", vec![0]),
        ("q".to_string(), "I8", vec![1, 3]),
        ("big.table".to_string(), "U8", vec![(2 << 20) + 3]),
    ];
    let original = common::write_random_model(
        &d.join("m.safetensors"),
        &tensors,
        &[("format", "pt"), ("note", "é")],
        &mut rng,
    );
    common::write_key_file(&d.join("key"));
    let o = common::deeplock(
        d,
        &[
            "lock",
            "m.safetensors",
            "-o",
            "l.safetensors",
            "--key-file",
            "key",
            "--only",
            "w.*",
            "--only",
            "q",
            "--only",
            "empty",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let kat = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/kat.py");
    let o = std::process::Command::new("python3")
        .args([kat, "check", "l.safetensors", common::KAT_KEY, "plain.bin"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    assert!(
        std::fs::read(d.join("plain.bin")).unwrap() == original[8 + n..],
        "docs/kat.py unlocks the data to the original's"
    );
    // And it refuses the file with one bit of the clear tensor flipped.
    let mut bytes = std::fs::read(d.join("l.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(d.join("t.safetensors"), &bytes).unwrap();
    let o = std::process::Command::new("python3")
        .args([kat, "check", "t.safetensors", common::KAT_KEY, "t.bin"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!o.status.success());
}
