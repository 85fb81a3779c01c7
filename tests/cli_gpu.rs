//! Files locked on the GPU are what the CPU reference says they should be, and the two
//! devices interoperate: lock on one, unlock on the other. Runs on any adapter
//! (lavapipe in CI); with DEEPLOCK_REQUIRE_GPU=1 a missing adapter is a failure.

mod common;

use common::*;
use deeplock::header::Header;
use deeplock::lock_info::LockInfo;
use deeplock::{reference, Direction, MasterKey, TensorCipher};
use rand::{Rng, SeedableRng};

fn have_gpu() -> bool {
    gpu_context().is_some()
}

fn run_ok(dir: &std::path::Path, args: &[&str]) {
    let o = deeplock(dir, args, None);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn gpu_locked_file_matches_reference_and_devices_interoperate() {
    if !have_gpu() {
        return;
    }
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let tensors = vec![
        ("a.weight".to_string(), "F32", vec![61, 17]),
        ("a.bias".to_string(), "F32", vec![3]),
        ("b.weight".to_string(), "BF16", vec![129, 5]),
        ("c".to_string(), "U8", vec![1]),
        ("d".to_string(), "F64", vec![0]),
    ];
    let original = write_random_model(
        &dir.path().join("m.safetensors"),
        &tensors,
        &[("format", "pt")],
        &mut rng,
    );
    std::fs::write(dir.path().join("key"), KAT_KEY).unwrap();
    let key = MasterKey::from_hex(KAT_KEY).unwrap();

    run_ok(
        dir.path(),
        &[
            "lock",
            "m.safetensors",
            "-o",
            "g.safetensors",
            "--key-file",
            "key",
            "--device",
            "gpu",
            "-v",
        ],
    );
    let locked = std::fs::read(dir.path().join("g.safetensors")).unwrap();
    let n = u64::from_le_bytes(locked[..8].try_into().unwrap()) as usize;
    let h = Header::parse(&locked[8..8 + n], "g.safetensors".as_ref()).unwrap();
    let info = LockInfo::from_header(&h, "g.safetensors".as_ref())
        .unwrap()
        .unwrap();
    let on = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    for t in &h.tensors {
        let (s, e) = (t.start as usize, t.end as usize);
        let mut expect = original[8 + on + s..8 + on + e].to_vec();
        reference::apply(
            &TensorCipher::for_tensor(&key, &info.salt, &t.name),
            Direction::Lock,
            0,
            &mut expect,
        );
        assert_eq!(
            &locked[8 + n + s..8 + n + e],
            &expect[..],
            "tensor {}",
            t.name
        );
    }
    run_ok(
        dir.path(),
        &[
            "unlock",
            "g.safetensors",
            "-o",
            "g-back.safetensors",
            "--key-file",
            "key",
            "--device",
            "cpu",
        ],
    );
    assert_eq!(
        std::fs::read(dir.path().join("g-back.safetensors")).unwrap(),
        original
    );

    run_ok(
        dir.path(),
        &[
            "lock",
            "m.safetensors",
            "-o",
            "c.safetensors",
            "--key-file",
            "key",
            "--device",
            "cpu",
        ],
    );
    run_ok(
        dir.path(),
        &[
            "unlock",
            "c.safetensors",
            "-o",
            "c-back.safetensors",
            "--key-file",
            "key",
            "--device",
            "gpu",
        ],
    );
    assert_eq!(
        std::fs::read(dir.path().join("c-back.safetensors")).unwrap(),
        original
    );
}

/// `--device auto` (the default) takes the CPU for a small model without opening a GPU
/// instance, which costs more than the lock itself. Seen through the Vulkan loader,
/// which reports every instance created when `VK_LOADER_DEBUG` asks it to.
#[test]
fn auto_device_opens_no_gpu_for_a_small_model() {
    if !have_gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    write_random_model(
        &d.join("m.safetensors"),
        &[("w".into(), "F32", vec![64, 64])],
        &[],
        &mut rng,
    );
    write_key_file(&d.join("key"));
    let lock = |out: &str, device: &str| {
        let o = std::process::Command::new(bin())
            .args([
                "lock",
                "m.safetensors",
                "-o",
                out,
                "--key-file",
                "key",
                "--device",
                device,
            ])
            .current_dir(d)
            .env("VK_LOADER_DEBUG", "info")
            .env("WGPU_BACKEND", "vulkan")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // The loader does report an instance here: what the auto run must not show.
    assert!(lock("gpu.safetensors", "gpu").contains("Vulkan Loader"));
    let auto = lock("auto.safetensors", "auto");
    assert!(
        !auto.contains("Vulkan Loader"),
        "auto opened a GPU instance: {auto}"
    );
}
