//! The header parser never panics, whatever the bytes: random files, and valid files with
//! random bytes flipped, cut or inserted, either parse into a consistent header (offsets
//! contiguous, covering the data exactly) or give an error. A property-based stand-in for
//! coverage-guided fuzzing that runs with the ordinary test suite.

mod common;

use std::io::Write;

use deeplock::header::Header;
use proptest::prelude::*;
use rand::SeedableRng;

fn valid_model() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let tensors = vec![
        ("a".to_string(), "F32", vec![2, 3]),
        ("b.weight".to_string(), "BF16", vec![5]),
        ("c".to_string(), "U8", vec![0]),
        ("d".to_string(), "I64", vec![1]),
    ];
    common::write_random_model(
        &dir.path().join("m.safetensors"),
        &tensors,
        &[("format", "pt"), ("deeplock.version", "1")],
        &mut rng,
    )
}

fn parse_file(bytes: &[u8]) -> Result<Header, deeplock::Error> {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    Header::read(&mut f, "fuzz.safetensors".as_ref())
}

fn check_consistent(h: &Header, file_len: usize) {
    let mut at = 0;
    for t in &h.tensors {
        assert_eq!(t.start, at, "contiguous");
        assert!(t.end >= t.start);
        at = t.end;
    }
    assert_eq!(
        h.data_start() as usize + h.data_len() as usize,
        file_len,
        "covers the data exactly"
    );
    // Whatever parsed must also survive the lock-info reader and a rewrite.
    let _ = deeplock::lock_info::LockInfo::from_header(h, "fuzz.safetensors".as_ref());
    let again = h.to_bytes();
    assert!(again.len() >= 8 && (again.len() - 8).is_multiple_of(8));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(h) = parse_file(&bytes) {
            check_consistent(&h, bytes.len());
        }
    }

    #[test]
    fn mutated_models_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut bytes = valid_model();
        for (at, value, kind) in edits {
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = value,
                1 => bytes.insert(i, value),
                _ => { bytes.remove(i); }
            }
        }
        if do_cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        if let Ok(h) = parse_file(&bytes) {
            check_consistent(&h, bytes.len());
        }
    }

    #[test]
    fn random_header_json_never_panics(json in "\\{(\"[a-z_]{0,4}\":(\\{\"dtype\":\"(F32|U8|BF16|X)\",\"shape\":\\[[0-9]{0,3}(,[0-9]{1,20})?\\],\"data_offsets\":\\[[0-9]{1,3},[0-9]{1,20}\\]\\}|\"[a-z]*\"|\\{\\}|\\[\\]|[0-9]+),?){0,4}\\}") {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend_from_slice(&[0u8; 64]);
        for len in [bytes.len() - 64, bytes.len() - 40, bytes.len()] {
            if let Ok(h) = parse_file(&bytes[..len]) {
                check_consistent(&h, len);
            }
        }
    }
}
