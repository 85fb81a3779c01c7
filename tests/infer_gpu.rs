//! The GPU inference runtime against the CPU reference, on the real Fashion-MNIST test
//! images with the committed trained model, in both unlock modes, and on the CIFAR-10-sized
//! network (3 input channels, `same` padding). Without an adapter the tests print a skip
//! line and pass, unless `DEEPLOCK_REQUIRE_GPU=1` (CI), where they fail.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use deeplock::engine::CpuEngine;
use deeplock::files::{self, Options};
use deeplock::gpu::GpuContext;
use deeplock::infer::{accuracy, Arch, GpuModel, Model, Unlock};
use deeplock::mnist::Dataset;
use deeplock::rng::SplitMix64;
use deeplock::zoo;
use deeplock::{CpuLocker, MasterKey};

/// Test images (the first of the test set), one batch: a few hundred, quick on lavapipe.
const N: usize = 256;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn arch() -> Arch {
    Arch::read(&fixture("fashion_mnist_cnn.arch.json")).unwrap()
}

/// One context for the file (opening a device is slow on lavapipe), or `None` after a
/// skip line where there is no adapter and none is required.
fn context(test: &str) -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    let ctx = CTX
        .get_or_init(|| {
            let ctx = common::gpu_context()?;
            eprintln!("adapter: {}", ctx.describe());
            Some(ctx)
        })
        .as_ref();
    if ctx.is_none() {
        eprintln!("{test}: SKIPPED: no GPU adapter; set DEEPLOCK_REQUIRE_GPU=1 to make this fail");
    }
    ctx
}

fn test_set(test: &str) -> Option<Dataset> {
    common::fashion_test_set(test)
}

/// The largest difference relative to the largest reference logit.
fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    let scale = want.iter().map(|b| f64::from(b.abs())).fold(0.0, f64::max);
    diff / scale
}

fn lock(src: &Path, dir: &Path, key: &MasterKey) -> PathBuf {
    let out = dir.join("locked.safetensors");
    let mut engine = CpuEngine::new(CpuLocker::new());
    files::lock(src, &out, key, &mut engine, &Options::default()).unwrap();
    out
}

#[test]
fn gpu_matches_the_cpu_reference_on_real_images_in_both_modes() {
    let test_name = "gpu_matches_the_cpu_reference_on_real_images_in_both_modes";
    let (Some(ctx), Some(test)) = (context(test_name), test_set(test_name)) else {
        return;
    };
    let arch = arch();
    let input = test.batch_f32(0..N);
    let plain = Model::load(&fixture("fashion_mnist_cnn.safetensors"), &arch, None).unwrap();
    let expect = plain.forward(&input, N).unwrap();
    let trained = plain.predict(&input, N).unwrap();

    let gpu_plain = GpuModel::load(
        ctx,
        &fixture("fashion_mnist_cnn.safetensors"),
        &arch,
        None,
        Unlock::PerQuery,
        N,
    )
    .unwrap();
    assert!(!gpu_plain.file_was_locked() && !gpu_plain.decodes_per_query());
    let logits = gpu_plain.forward(&input, N).unwrap();
    let err = relative_error(&logits, &expect);
    println!("plain file: relative error {err:.2e}");
    assert!(err < 1e-4, "{err}");
    assert_eq!(gpu_plain.predict(&input, N).unwrap(), trained);

    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_bytes(*b"fashion-mnist-k1");
    let locked = lock(&fixture("fashion_mnist_cnn.safetensors"), dir.path(), &key);
    for mode in [Unlock::PerQuery, Unlock::AtLoad] {
        // A batch limit below N: the forward pass runs in pieces, and must not care.
        let gpu = GpuModel::load(ctx, &locked, &arch, Some(&key), mode, 100).unwrap();
        assert!(gpu.file_was_locked());
        assert_eq!(gpu.decodes_per_query(), mode == Unlock::PerQuery);
        let logits = gpu.forward(&input, N).unwrap();
        let err = relative_error(&logits, &expect);
        println!("locked file, {}: relative error {err:.2e}", mode.name());
        assert!(err < 1e-4, "{}: {err}", mode.name());
        let predicted: Vec<usize> = logits.chunks(10).map(deeplock::infer::argmax).collect();
        assert_eq!(predicted, trained, "{}", mode.name());
    }
    assert!(GpuModel::load(ctx, &locked, &arch, None, Unlock::AtLoad, 1).is_err());

    // A flipped bit in the last tensor's data: refused before the model exists.
    let mut bytes = std::fs::read(&locked).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let tampered = dir.path().join("t.safetensors");
    std::fs::write(&tampered, &bytes).unwrap();
    for mode in [Unlock::PerQuery, Unlock::AtLoad] {
        match GpuModel::load(ctx, &tampered, &arch, Some(&key), mode, 1) {
            Err(deeplock::Error::Tampered { .. }) => {}
            Err(e) => panic!("{}: {e}", mode.name()),
            Ok(_) => panic!("{}: a tampered file loaded", mode.name()),
        }
    }
}

#[test]
fn gpu_with_a_wrong_key_is_at_chance() {
    let test_name = "gpu_with_a_wrong_key_is_at_chance";
    let (Some(ctx), Some(test)) = (context(test_name), test_set(test_name)) else {
        return;
    };
    let arch = arch();
    let input = test.batch_f32(0..N);
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_bytes(*b"fashion-mnist-k1");
    let locked = lock(&fixture("fashion_mnist_cnn.safetensors"), dir.path(), &key);
    let trained = Model::load(&locked, &arch, Some(&key))
        .unwrap()
        .predict(&input, N)
        .unwrap();
    let mut rng = SplitMix64(0x0bad_cafe);
    for mode in [Unlock::PerQuery, Unlock::AtLoad] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
        let wrong = MasterKey::from_bytes(bytes);
        let gpu =
            GpuModel::load_unauthenticated(ctx, &locked, &arch, Some(&wrong), mode, N).unwrap();
        let logits = gpu.forward(&input, N).unwrap();
        // The CPU reference decodes the same garbage: the two agree on it too (NaN where
        // it has NaN), so the garbage is the wrong key's, not the GPU path's.
        let cpu = Model::load_unauthenticated(&locked, &arch, Some(&wrong))
            .unwrap()
            .forward(&input, N)
            .unwrap();
        assert!(logits
            .iter()
            .zip(&cpu)
            .all(|(a, b)| a.is_nan() == b.is_nan()));
        let predicted: Vec<usize> = logits.chunks(10).map(deeplock::infer::argmax).collect();
        let acc = accuracy(&predicted, &test.labels[..N]);
        let agree = predicted
            .iter()
            .zip(&trained)
            .filter(|(a, b)| a == b)
            .count();
        println!(
            "wrong key, {}: accuracy {acc:.3}, {agree} of {N} as trained",
            mode.name()
        );
        assert!(acc < 0.3, "{acc}");
        assert!(agree < N / 4, "{agree}");
    }
}

#[test]
fn gpu_runs_the_cifar10_cnn_as_the_cpu_reference() {
    let Some(ctx) = context("gpu_runs_the_cifar10_cnn_as_the_cpu_reference") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("cifar.safetensors");
    zoo::write_safetensors(&plain, &zoo::cifar10_cnn(7)).unwrap();
    let arch = zoo::cifar10_cnn_arch();
    let key = MasterKey::from_bytes(*b"cifar10-cnn-key1");
    let locked = lock(&plain, dir.path(), &key);
    let batch = 2;
    let mut rng = SplitMix64(3);
    let input: Vec<f32> = (0..batch * 3 * 32 * 32)
        .map(|_| rng.next_signed_unit())
        .collect();
    let expect = Model::load(&plain, &arch, None)
        .unwrap()
        .forward(&input, batch)
        .unwrap();
    for mode in [Unlock::PerQuery, Unlock::AtLoad] {
        let gpu = GpuModel::load(ctx, &locked, &arch, Some(&key), mode, batch).unwrap();
        let err = relative_error(&gpu.forward(&input, batch).unwrap(), &expect);
        println!("cifar10_cnn, {}: relative error {err:.2e}", mode.name());
        assert!(err < 1e-4, "{}: {err}", mode.name());
        // One input: the GEMV kernels.
        let one = gpu.forward(&input[..3 * 32 * 32], 1).unwrap();
        assert!(relative_error(&one, &expect[..10]) < 1e-4);
    }
}

#[test]
fn gpu_forward_from_several_threads_at_once_keeps_each_input_its_own() {
    let Some(ctx) = context("gpu_forward_from_several_threads_at_once_keeps_each_input_its_own")
    else {
        return;
    };
    let arch = arch();
    let path = fixture("fashion_mnist_cnn.safetensors");
    let cpu = Model::load(&path, &arch, None).unwrap();
    let gpu = GpuModel::load(ctx, &path, &arch, None, Unlock::PerQuery, 4).unwrap();
    const THREADS: usize = 4;
    let batch = 4;
    let inputs: Vec<Vec<f32>> = (0..THREADS as u64)
        .map(|t| {
            let mut rng = SplitMix64(100 + t);
            (0..batch * 28 * 28)
                .map(|_| rng.next_signed_unit())
                .collect()
        })
        .collect();
    let barrier = std::sync::Barrier::new(THREADS);
    std::thread::scope(|s| {
        for input in &inputs {
            let (gpu, cpu, barrier) = (&gpu, &cpu, &barrier);
            s.spawn(move || {
                let expect = cpu.forward(input, batch).unwrap();
                for round in 0..3 {
                    barrier.wait();
                    let got = gpu.forward(input, batch).unwrap();
                    let err = relative_error(&got, &expect);
                    assert!(err < 1e-4, "round {round}: relative error {err}");
                }
            });
        }
    });
}

#[test]
fn gpu_limits_are_not_reported_as_a_malformed_file() {
    let Some(ctx) = context("gpu_limits_are_not_reported_as_a_malformed_file") else {
        return;
    };
    let path = fixture("fashion_mnist_cnn.safetensors");
    let e = GpuModel::load(ctx, &path, &arch(), None, Unlock::PerQuery, 1 << 28)
        .err()
        .expect("a batch larger than the device binds");
    assert!(matches!(e, deeplock::Error::Invalid(_)), "{e:?}");
    assert!(e.to_string().contains("smaller batch"), "{e}");
}

/// The fixture's tensors with every value rounded to `dtype` (F16 or BF16): as f32
/// tensors for the CPU reference, and written as a `dtype` safetensors file at `path`.
fn fixture_as(dtype: safetensors::Dtype, path: &Path) -> Vec<deeplock::infer::Tensor> {
    let bytes = std::fs::read(fixture("fashion_mnist_cnn.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = Vec::new();
    let mut encoded = Vec::new();
    for (name, view) in file.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32);
        let mut out = Vec::new();
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| {
                let v = f32::from_le_bytes(b.try_into().unwrap());
                let (rounded, le) = match dtype {
                    safetensors::Dtype::F16 => {
                        let h = half::f16::from_f32(v);
                        (h.to_f32(), h.to_le_bytes())
                    }
                    safetensors::Dtype::BF16 => {
                        let h = half::bf16::from_f32(v);
                        (h.to_f32(), h.to_le_bytes())
                    }
                    d => unreachable!("{d:?}"),
                };
                out.extend_from_slice(&le);
                rounded
            })
            .collect();
        tensors.push(deeplock::infer::Tensor {
            name: name.clone(),
            shape: view.shape().to_vec(),
            values,
        });
        encoded.push((name, view.shape().to_vec(), out));
    }
    let views: Vec<_> = encoded
        .iter()
        .map(|(name, shape, data)| {
            let v = safetensors::tensor::TensorView::new(dtype, shape.clone(), data).unwrap();
            (name.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
    tensors
}

#[test]
fn gpu_runs_f16_and_bf16_weights_as_the_cpu_reference() {
    let Some(ctx) = context("gpu_runs_f16_and_bf16_weights_as_the_cpu_reference") else {
        return;
    };
    let arch = arch();
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_bytes(*b"half-precision-k");
    let batch = 3;
    let mut rng = SplitMix64(11);
    let input: Vec<f32> = (0..batch * 28 * 28)
        .map(|_| rng.next_signed_unit().abs())
        .collect();
    for dtype in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
        let plain = dir.path().join(format!("{dtype:?}.safetensors"));
        let tensors = fixture_as(dtype, &plain);
        let expect = Model::new(&arch, &tensors)
            .unwrap()
            .forward(&input, batch)
            .unwrap();
        let locked = dir.path().join(format!("{dtype:?}.locked.safetensors"));
        let mut engine = CpuEngine::new(CpuLocker::new());
        files::lock(&plain, &locked, &key, &mut engine, &Options::default()).unwrap();
        for mode in [Unlock::PerQuery, Unlock::AtLoad] {
            let gpu = GpuModel::load(ctx, &locked, &arch, Some(&key), mode, batch).unwrap();
            assert!(gpu
                .plan()
                .tensors()
                .iter()
                .all(|t| t.dtype.name() == format!("{dtype:?}")));
            let err = relative_error(&gpu.forward(&input, batch).unwrap(), &expect);
            println!("{dtype:?}, {}: relative error {err:.2e}", mode.name());
            assert!(err < 1e-4, "{dtype:?} {}: {err}", mode.name());
            let one = gpu.forward(&input[..28 * 28], 1).unwrap();
            assert!(relative_error(&one, &expect[..10]) < 1e-4);
        }
        // The CPU runs F32 weights only, and says so.
        let e = Model::load(&plain, &arch, None).unwrap_err().to_string();
        assert!(e.contains(&format!("is {dtype:?}")), "{e}");
    }
}
