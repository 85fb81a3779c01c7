//! docs/SPEC.md is the scheme's definition: its known-answer vectors (produced by the
//! independent Python implementation docs/kat.py) must hold for every path here.

mod common;

use common::hex_bytes as hex;
use deeplock::{reference, CpuLocker, Direction, MasterKey, Salt, TensorCipher};

fn spec_vectors() -> Vec<Vec<String>> {
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SPEC.md")).unwrap();
    let begin = spec
        .find("<!-- kat:begin -->")
        .expect("KAT block in SPEC.md");
    let end = spec.find("<!-- kat:end -->").expect("KAT block end");
    spec[begin..end]
        .lines()
        .filter(|l| l.contains(" | ") && !l.starts_with("key |") || l.starts_with("kcv "))
        .map(|l| {
            if l.starts_with("kcv ") {
                l.split(' ').map(str::to_owned).collect()
            } else {
                l.split(" | ").map(str::to_owned).collect()
            }
        })
        .collect()
}

#[test]
fn known_answer_vectors_hold_on_every_cpu_path() {
    let rows = spec_vectors();
    assert!(rows.len() >= 9, "found {} vectors", rows.len());
    let lockers = [CpuLocker::new(), CpuLocker::portable()];
    for row in rows {
        if row[0] == "kcv" {
            let key = MasterKey::from_hex(&row[1]).unwrap();
            assert_eq!(deeplock::hex::encode(&key.kcv()), row[2]);
            continue;
        }
        let key = MasterKey::from_hex(&row[0]).unwrap();
        let salt = Salt::from_hex(&row[1]).unwrap();
        let cipher = TensorCipher::for_tensor(&key, &salt, &row[2]);
        let offset: u64 = row[3].parse().unwrap();
        let (plain, locked) = (hex(&row[4]), hex(&row[6]));
        assert_eq!(
            deeplock::hex::encode(&cipher.nonce().0),
            row[5],
            "nonce of {}",
            row[2]
        );
        let mut d = plain.clone();
        reference::apply(&cipher, Direction::Lock, offset, &mut d);
        assert_eq!(d, locked, "reference lock of {row:?}");
        reference::apply(&cipher, Direction::Unlock, offset, &mut d);
        assert_eq!(d, plain);
        for l in lockers {
            let mut d = plain.clone();
            l.apply(&cipher, Direction::Lock, offset, &mut d);
            assert_eq!(d, locked, "{:?} lock of {row:?}", l.backend());
            l.apply_parallel(&cipher, Direction::Unlock, offset, &mut d);
            assert_eq!(d, plain, "{:?} unlock", l.backend());
        }
    }
}
