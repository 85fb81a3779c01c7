//! A model of three quarters of a million tensors is locked, unlocked (byte for byte), verified and
//! inspected in time linear in its size. Each step used to look every tensor name up in
//! a list (unlock of 40,000 tensors took 15 s; verify of a million never finished).
//! No duration is asserted: quadratic code simply does not finish.

use std::fmt::Write as _;

use deeplock::engine::CpuEngine;
use deeplock::files::{self, Options};
use deeplock::{CpuLocker, MasterKey};

/// As many as fit: with v2 a tensor costs about 108 bytes of header (its entry, its name
/// in `deeplock.locked`, its tag in `deeplock.tags`), and safetensors readers refuse
/// headers over 100 MB.
const TENSORS: usize = 750_000;

/// A safetensors file of `n` one-byte U8 tensors, written as JSON text directly (the
/// serde_json map a generic writer builds would dominate the test's time).
fn many_tensors(n: usize) -> Vec<u8> {
    let mut json = String::with_capacity(64 * n);
    json.push_str(r#"{"__metadata__":{"format":"pt"}"#);
    for i in 0..n {
        write!(
            json,
            r#","t.{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{}]}}"#,
            i + 1
        )
        .unwrap();
    }
    json.push('}');
    while !json.len().is_multiple_of(8) {
        json.push(' ');
    }
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.extend((0..n).map(|i| (i * 7 + 3) as u8));
    bytes
}

#[test]
fn a_million_tensors_lock_unlock_verify_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let (model, locked, back) = (
        dir.path().join("m.safetensors"),
        dir.path().join("l.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let original = many_tensors(TENSORS);
    std::fs::write(&model, &original).unwrap();
    let key = MasterKey::from_bytes([9; 16]);
    let mut engine = CpuEngine::new(CpuLocker::new());
    let opts = Options::default();

    let r = files::lock(&model, &locked, &key, &mut engine, &opts).unwrap();
    assert_eq!((r.tensors, r.transformed), (TENSORS, TENSORS));
    files::verify(&locked, &key).unwrap();

    let found = files::inspect(&locked).unwrap();
    let f = &found[0];
    assert_eq!(f.lock.as_ref().unwrap().locked.len(), TENSORS);
    assert_eq!(f.tensors.len(), TENSORS);
    assert!(f.tensors.iter().all(|t| f.is_locked(&t.name)));
    assert_eq!(f.user_metadata, [("format".to_string(), "pt".to_string())]);

    let r = files::unlock(&locked, &back, &key, &mut engine, &opts).unwrap();
    assert_eq!(r.transformed, TENSORS);
    assert!(
        std::fs::read(&back).unwrap() == original,
        "unlock gives back the original file byte for byte"
    );
}
