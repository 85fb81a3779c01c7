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

/// The tags lock writes are the one-shot tags of SPEC.md over the locked bytes,
/// whatever the streamer's chunk size (tensors split across chunks, many in one chunk,
/// chunk boundaries off v2's 1 MiB chunks) and whichever engine locked them.
#[test]
fn tags_equal_the_one_shot_tags_whatever_the_chunking_and_engine() {
    use deeplock::auth::{FileAuthKey, CHUNK_LEN};
    let (_, mut rng) = seeded();
    let dir = tempfile::tempdir().unwrap();
    let m = CHUNK_LEN;
    let tensors = vec![
        ("a".to_string(), "U8", vec![m - 1]),
        ("b".to_string(), "F32", vec![3]),
        ("c".to_string(), "U8", vec![m + 5]),
        ("d".to_string(), "F32", vec![0]),
        ("e".to_string(), "BF16", vec![(5 * m / 4) + 1]),
        ("f".to_string(), "I8", vec![0]),
    ];
    let input = dir.path().join("m.safetensors");
    let original = write_random_model(&input, &tensors, &[], &mut rng);
    let key = MasterKey::generate().unwrap();
    let gpu = gpu_context();
    let mut runs: Vec<(usize, bool)> = [7, 4096, m - 3, m, 3 * m, 16 * m]
        .into_iter()
        .map(|c| (c, false))
        .collect();
    if gpu.is_some() {
        runs.extend([(m + 1, true), (16 * m, true)]);
    }
    for (i, (chunk_size, on_gpu)) in runs.into_iter().enumerate() {
        let locked_path = dir.path().join(format!("l{i}.safetensors"));
        let mut engine: Box<dyn deeplock::engine::Engine> = match (&gpu, on_gpu) {
            (Some(ctx), true) => Box::new(deeplock::engine::GpuEngine::new(
                deeplock::gpu::GpuLocker::new(ctx),
            )),
            _ => Box::new(CpuEngine::new(CpuLocker::new())),
        };
        let opts = Options {
            chunk_size,
            ..Options::default()
        };
        files::lock(&input, &locked_path, &key, engine.as_mut(), &opts).unwrap();
        let locked = std::fs::read(&locked_path).unwrap();
        let (h, data) = data_section(&locked, &locked_path);
        let info = LockInfo::from_header(&h, &locked_path).unwrap().unwrap();
        let tags = info.tags.as_ref().expect("lock writes v2");
        let fk = FileAuthKey::derive(&key, &info.salt);
        let descs = deeplock::authenticate::descriptors(&h.tensors, &info).unwrap();
        for (t, d) in h.tensors.iter().zip(&descs) {
            let bytes = &data[t.start as usize..t.end as usize];
            assert_eq!(
                fk.tensor_tag(d, bytes).unwrap(),
                tags.tensors[d.index as usize],
                "tensor {} with chunks of {chunk_size} bytes (gpu: {on_gpu})",
                t.name
            );
        }
        let back = dir.path().join(format!("b{i}.safetensors"));
        files::unlock(&locked_path, &back, &key, engine.as_mut(), &opts).unwrap();
        assert!(std::fs::read(&back).unwrap() == original);
    }
}
