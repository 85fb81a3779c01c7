//! The committed Fashion-MNIST model (trained by examples/train_fashion_mnist.rs) on the
//! real test set: the paper's claim end to end. Unlocked, or locked and loaded with the
//! right key, it classifies as trained, with identical logits; loaded with a wrong key it
//! is no better than chance.

mod common;

use std::path::{Path, PathBuf};

use deeplock::engine::CpuEngine;
use deeplock::files::{self, Options};
use deeplock::infer::{accuracy, Arch, Model};
use deeplock::mnist::Dataset;
use deeplock::rng::SplitMix64;
use deeplock::{CpuLocker, Error, MasterKey};

/// Test images used (the first ones of the test set): enough for a stable accuracy,
/// few enough for a debug build.
const N: usize = 300;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn model_path() -> PathBuf {
    fixture("fashion_mnist_cnn.safetensors")
}

fn arch() -> Arch {
    Arch::read(&fixture("fashion_mnist_cnn.arch.json")).unwrap()
}

fn test_set(test: &str) -> Option<Dataset> {
    common::fashion_test_set(test)
}

#[test]
fn fixture_is_small_and_records_its_training() {
    let size = std::fs::metadata(model_path()).unwrap().len();
    assert!(size < 1 << 20, "{size} bytes");
    let h = files::read_header(&model_path()).unwrap();
    assert_eq!(h.metadata_value("dataset"), Some("fashion-mnist"));
    let acc: f64 = h.metadata_value("test_accuracy").unwrap().parse().unwrap();
    assert!(acc >= 0.88, "recorded test accuracy {acc}");
    let model = Model::load(&model_path(), &arch(), None).unwrap();
    assert_eq!(model.outputs(), 10);
    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    for n in arch().tensor_names() {
        assert!(names.contains(&n), "{n}");
    }
}

#[test]
fn fixture_classifies_real_test_images() {
    let Some(test) = test_set("fixture_classifies_real_test_images") else {
        return;
    };
    let model = Model::load(&model_path(), &arch(), None).unwrap();
    let acc = test.evaluate(&model, 0..N).unwrap();
    println!("accuracy on the first {N} test images: {acc:.4}");
    assert!(acc > 0.85, "{acc}");
}

#[test]
fn locked_model_runs_with_the_right_key_and_is_chance_with_wrong_ones() {
    let Some(test) = test_set("locked_model_runs_with_the_right_key_and_is_chance_with_wrong_ones")
    else {
        return;
    };
    let arch = arch();
    let input = test.batch_f32(0..N);
    let plain = Model::load(&model_path(), &arch, None).unwrap();
    let expect = plain.forward(&input, N).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("fashion_mnist_cnn.locked.safetensors");
    let key = MasterKey::from_bytes(*b"fashion-mnist-k1");
    let mut engine = CpuEngine::new(CpuLocker::new());
    files::lock(
        &model_path(),
        &locked,
        &key,
        &mut engine,
        &Options::default(),
    )
    .unwrap();
    assert!(matches!(
        Model::load(&locked, &arch, None),
        Err(Error::Format { .. })
    ));

    let right = Model::load(&locked, &arch, Some(&key)).unwrap();
    let logits = right.forward(&input, N).unwrap();
    assert!(logits
        .iter()
        .zip(&expect)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let trained = plain.predict(&input, N).unwrap();
    assert_eq!(right.predict(&input, N).unwrap(), trained);

    // Wrong keys: the model loads and runs (the paper's Figure 1a), at chance. Each
    // garbage weight is a random f32: about 1 in 256 is NaN or infinite (exponent all
    // ones), and every output sums hundreds of them, so the logits come out NaN and
    // argmax (like torch.argmax) names class 0: the accuracy is that class's share, and
    // the predictions agree with the trained model's no more than chance.
    let mut rng = SplitMix64(0x00f1_a1a1);
    let mut accs = Vec::new();
    for _ in 0..10 {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
        let wrong = MasterKey::from_bytes(bytes);
        assert!(files::verify(&locked, &wrong).is_err());
        // v2 refuses a wrong key; the paper's experiment runs what it would unlock.
        assert!(matches!(
            Model::load(&locked, &arch, Some(&wrong)),
            Err(deeplock::Error::WrongKey { .. })
        ));
        let garbage = Model::load_unauthenticated(&locked, &arch, Some(&wrong)).unwrap();
        let predicted = garbage.predict(&input, N).unwrap();
        accs.push(accuracy(&predicted, &test.labels[..N]));
        let agree = predicted
            .iter()
            .zip(&trained)
            .filter(|(a, b)| a == b)
            .count();
        assert!(
            agree < N / 4,
            "{agree} of {N} predictions as the trained model's"
        );
    }
    let mean = accs.iter().sum::<f64>() / accs.len() as f64;
    println!("wrong keys: accuracies {accs:.3?}, mean {mean:.3}");
    assert!((0.05..=0.25).contains(&mean), "{accs:?}");
}

#[test]
fn fast_cpu_path_matches_the_reference_on_real_images() {
    let Some(test) = test_set("fast_cpu_path_matches_the_reference_on_real_images") else {
        return;
    };
    let model = Model::load(&model_path(), &arch(), None).unwrap();
    let input = test.batch_f32(0..N);
    let expect = model.forward(&input, N).unwrap();
    let got = model.forward_fast(&input, N).unwrap();
    let diff = got
        .iter()
        .zip(&expect)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let scale = expect.iter().map(|b| b.abs()).fold(0.0, f32::max);
    println!("fast path: relative error {:.2e}", diff / scale);
    assert!(diff / scale < 1e-4, "{diff} of {scale}");
    assert_eq!(
        model.predict_fast(&input, N).unwrap(),
        model.predict(&input, N).unwrap()
    );
}
