//! Library-level tests of locking whole files: every locked tensor equals the CPU
//! reference under the salt recorded in the file, untouched bytes stay untouched, and
//! unlock gives back the original file byte for byte.

mod common;

use std::path::Path;

use common::*;
use deeplock::engine::CpuEngine;
use deeplock::files::{self, Options};
use deeplock::header::Header;
use deeplock::lock_info::LockInfo;
use deeplock::{reference, CpuLocker, Direction, MasterKey, TensorCipher};
use rand::{Rng, SeedableRng};

fn seeded() -> (u64, rand::rngs::StdRng) {
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

fn data_section<'a>(bytes: &'a [u8], path: &Path) -> (Header, &'a [u8]) {
    let h = Header::parse(
        &bytes[8..8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize],
        path,
    )
    .unwrap();
    let start = h.data_start() as usize;
    (h, &bytes[start..])
}

#[test]
fn locked_tensors_match_reference_and_round_trip() {
    let (_, mut rng) = seeded();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..12 {
        let key = MasterKey::generate().unwrap();
        let count = rng.random_range(0..8);
        let tensors = random_tensors(&mut rng, count, 5000);
        let input = dir.path().join(format!("m{round}.safetensors"));
        let original = write_random_model(&input, &tensors, &[("format", "pt")], &mut rng);
        // Tiny chunks exercise tensors split across chunks and chunks holding many tensors.
        let chunk_size = [1usize, 7, 16, 100, 4096, 1 << 20][round % 6];
        let only: Vec<String> = if round % 3 == 2 {
            vec!["layer.1*".into()]
        } else {
            vec![]
        };
        let has_match = only.is_empty() || tensors.iter().any(|t| t.0.starts_with("layer.1"));
        let locked_path = dir.path().join(format!("m{round}.locked.safetensors"));
        let opts = Options {
            only: only.clone(),
            chunk_size,
            ..Options::default()
        };
        let mut engine = CpuEngine::new(if round % 2 == 0 {
            CpuLocker::new()
        } else {
            CpuLocker::portable()
        });
        let r = files::lock(&input, &locked_path, &key, &mut engine, &opts);
        if !has_match {
            assert!(r.unwrap_err().to_string().contains("matched no tensor"));
            continue;
        }
        r.unwrap();
        let locked = std::fs::read(&locked_path).unwrap();
        let (h, data) = data_section(&locked, &locked_path);
        let info = LockInfo::from_header(&h, &locked_path).unwrap().unwrap();
        assert_eq!(h.metadata_value("format"), Some("pt"));
        let (oh, odata) = data_section(&original, &input);
        assert_eq!(
            oh.tensors, h.tensors,
            "names, dtypes, shapes and offsets unchanged"
        );
        for t in &h.tensors {
            let range = t.start as usize..t.end as usize;
            let mut expect = odata[range.clone()].to_vec();
            let selected = only.is_empty() || t.name.starts_with("layer.1");
            assert_eq!(info.locked.contains(&t.name), selected);
            if selected {
                reference::apply(
                    &TensorCipher::for_tensor(&key, &info.salt, &t.name),
                    Direction::Lock,
                    0,
                    &mut expect,
                );
            }
            assert_eq!(&data[range], &expect[..], "tensor {}", t.name);
        }
        let back = dir.path().join(format!("m{round}.back.safetensors"));
        files::unlock(
            &locked_path,
            &back,
            &key,
            &mut engine,
            &Options {
                chunk_size,
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&back).unwrap(),
            original,
            "unlock restores the file byte for byte"
        );
    }
}

#[test]
fn two_locks_use_different_salts() {
    let (_, mut rng) = seeded();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.safetensors");
    write_random_model(&input, &random_tensors(&mut rng, 3, 100), &[], &mut rng);
    let key = MasterKey::generate().unwrap();
    let mut engine = CpuEngine::new(CpuLocker::new());
    let mut salts = Vec::new();
    for name in ["a.safetensors", "b.safetensors"] {
        let out = dir.path().join(name);
        files::lock(&input, &out, &key, &mut engine, &Options::default()).unwrap();
        let h = files::read_header(&out).unwrap();
        salts.push(LockInfo::from_header(&h, &out).unwrap().unwrap().salt);
    }
    assert_ne!(salts[0], salts[1]);
}
