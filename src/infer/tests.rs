//! Layers checked on tiny hand-computed examples, shape checking, and loading plain and
//! locked files.

use std::path::Path;

use super::*;
use crate::engine::CpuEngine;
use crate::files::{self, Options};
use crate::{CpuLocker, Dtype, MasterKey};

fn t(name: &str, shape: &[usize], values: Vec<f32>) -> Tensor {
    Tensor {
        name: name.into(),
        shape: shape.to_vec(),
        values,
    }
}

fn arch(input: [usize; 3], layers: &str) -> Arch {
    Arch::from_json(
        &format!(r#"{{"input": {input:?}, "layers": {layers}}}"#),
        Path::new("test"),
    )
    .unwrap()
}

fn conv_arch(input: [usize; 3], padding: &str) -> Arch {
    arch(
        input,
        &format!(r#"[{{"conv": {{"weight": "w", "bias": "b", "padding": "{padding}"}}}}]"#),
    )
}

fn run(a: &Arch, tensors: &[Tensor], x: &[f32]) -> (Shape, Vec<f32>) {
    let m = Model::new(a, tensors).unwrap();
    (*m.shapes().last().unwrap(), m.forward(x, 1).unwrap())
}

fn iota(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

#[test]
fn conv_3x3_same_sums_the_in_bounds_neighbourhood() {
    let x = iota(9).into_iter().map(|v| v + 1.0).collect::<Vec<_>>(); // 1..=9
    let (shape, y) = run(
        &conv_arch([1, 3, 3], "same"),
        &[t("w", &[1, 1, 3, 3], vec![1.0; 9]), t("b", &[1], vec![1.0])],
        &x,
    );
    assert_eq!(shape, Shape::Image([1, 3, 3]));
    let expect = [12., 21., 16., 27., 45., 33., 24., 39., 28.].map(|v| v + 1.0);
    assert_eq!(y, expect);
}

#[test]
fn conv_is_cross_correlation_with_zero_padding() {
    // Only the kernel's top-left tap is set: y[i, j] = x[i - 1, j - 1], 0 off the image.
    let mut w = vec![0.0; 9];
    w[0] = 1.0;
    let (_, y) = run(
        &conv_arch([1, 3, 3], "same"),
        &[t("w", &[1, 1, 3, 3], w), t("b", &[1], vec![0.0])],
        &iota(9).into_iter().map(|v| v + 1.0).collect::<Vec<_>>(),
    );
    assert_eq!(y, [0., 0., 0., 0., 1., 2., 0., 4., 5.]);
}

#[test]
fn conv_3x3_valid_mixes_channels_per_output() {
    // Channel 0 is x[r][c] = 4r + c, channel 1 all ones.
    let mut x = iota(16);
    x.extend([1.0; 16]);
    // Output 0 picks channel 0's centre tap; output 1 is 2 * (sum of channel 1) - 1.
    let mut w = vec![0.0; 2 * 2 * 9];
    w[4] = 1.0;
    w[27..36].fill(2.0);
    let (shape, y) = run(
        &conv_arch([2, 4, 4], "valid"),
        &[t("w", &[2, 2, 3, 3], w), t("b", &[2], vec![0.0, -1.0])],
        &x,
    );
    assert_eq!(shape, Shape::Image([2, 2, 2]));
    assert_eq!(y, [5., 6., 9., 10., 17., 17., 17., 17.]);
}

#[test]
fn conv_5x5_same_and_valid() {
    let ones = [
        t("w", &[1, 1, 5, 5], vec![1.0; 25]),
        t("b", &[1], vec![0.0]),
    ];
    let (shape, y) = run(&conv_arch([1, 5, 5], "same"), &ones, &[1.0; 25]);
    assert_eq!(shape, Shape::Image([1, 5, 5]));
    // In-bounds rows (and columns) of a 5x5 window centred on 0..5: 3, 4, 5, 4, 3.
    let n = [3., 4., 5., 4., 3.];
    let expect: Vec<f32> = n
        .iter()
        .flat_map(|r| n.iter().map(move |c| r * c))
        .collect();
    assert_eq!(y, expect);
    let (shape, y) = run(&conv_arch([1, 5, 5], "valid"), &ones, &iota(25));
    assert_eq!(shape, Shape::Image([1, 1, 1]));
    assert_eq!(y, [300.0]);
}

#[test]
fn max_pool_drops_the_remainder_and_keeps_nan() {
    let a = arch([1, 5, 4], r#"[{"maxpool": 2}]"#);
    let m = Model::new(&a, &[]).unwrap();
    assert_eq!(m.outputs(), 4);
    let mut x: Vec<f32> = iota(20).into_iter().map(|v| -v).collect();
    assert_eq!(m.forward(&x, 1).unwrap(), [0., -2., -8., -10.]);
    x[5] = f32::NAN;
    x[11] = f32::INFINITY;
    let y = m.forward(&x, 1).unwrap();
    assert!(y[0].is_nan());
    assert_eq!(&y[1..], [-2., -8., f32::INFINITY]);
}

#[test]
fn relu_flatten_dense_in_pytorch_order() {
    let a = arch(
        [2, 1, 2],
        r#"["relu", "flatten", {"dense": {"weight": "w", "bias": "b"}}]"#,
    );
    let w = t("w", &[2, 4], vec![1., 10., 100., 1000., 0., 0., 0., 1.]);
    let (shape, y) = run(&a, &[w, t("b", &[2], vec![0.5, 0.0])], &[1., -2., 3., 4.]);
    assert_eq!(shape, Shape::Vector(2));
    // Channel 0 is [1, -2] -> [1, 0]; channel 1 is [3, 4]; flattened [1, 0, 3, 4].
    assert_eq!(y, [4301.5, 4.0]);
    let m = Model::new(&arch([1, 1, 2], r#"["relu"]"#), &[]).unwrap();
    let y = m.forward(&[f32::NAN, -0.5], 1).unwrap();
    assert!(y[0].is_nan() && y[1] == 0.0);
}

#[test]
fn batches_run_each_input_alone() {
    let m = Model::new(
        &conv_arch([1, 3, 3], "same"),
        &[t("w", &[1, 1, 3, 3], iota(9)), t("b", &[1], vec![0.25])],
    )
    .unwrap();
    let x: Vec<f32> = (0..27).map(|i| (i * 7 % 11) as f32 - 5.0).collect();
    let all = m.forward(&x, 3).unwrap();
    for i in 0..3 {
        assert_eq!(
            all[i * 9..(i + 1) * 9],
            m.forward(&x[i * 9..(i + 1) * 9], 1).unwrap()
        );
    }
    assert!(m.forward(&x, 2).is_err());
    assert!(m.forward(&[], 0).unwrap().is_empty());
    assert_eq!(m.predict(&x[..9], 1).unwrap(), [argmax(&all[..9])]);
}

#[test]
fn argmax_takes_the_first_maximum_or_the_first_nan() {
    assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    assert_eq!(argmax(&[1.0, f32::NAN, 5.0, f32::NAN]), 1);
    assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
    assert_eq!(argmax(&[]), 0);
    assert_eq!(argmax_nan_lowest(&[f32::NAN, 1.0, 3.0, f32::NAN, 3.0]), 2);
    assert_eq!(argmax_nan_lowest(&[f32::NAN, -5.0]), 1);
    assert_eq!(argmax_nan_lowest(&[f32::NAN, f32::NAN]), 0);
    assert_eq!(argmax_nan_lowest(&[-2.0, -1.0]), 1);
    assert_eq!(argmax_nan_lowest(&[]), 0);
    assert_eq!(accuracy(&[1, 2, 3, 0], &[1, 2, 0, 0]), 0.75);
    assert_eq!(accuracy(&[], &[]), 0.0);
}

#[test]
fn shape_errors_are_caught_when_the_model_is_built() {
    let conv = |shape: &[usize], n| [t("w", shape, vec![0.0; n]), t("b", &[1], vec![0.0])];
    let cases: Vec<(Arch, Vec<Tensor>, &str)> = vec![
        (
            conv_arch([2, 5, 5], "valid"),
            conv(&[1, 1, 3, 3], 9).to_vec(),
            "input channels",
        ),
        (
            conv_arch([1, 5, 5], "same"),
            conv(&[1, 1, 2, 2], 4).to_vec(),
            "odd kernel",
        ),
        (
            conv_arch([1, 2, 5], "valid"),
            conv(&[1, 1, 3, 3], 9).to_vec(),
            "does not fit",
        ),
        (
            conv_arch([1, 5, 5], "valid"),
            conv(&[1, 1, 3], 3).to_vec(),
            "4-D",
        ),
        (
            conv_arch([1, 5, 5], "valid"),
            conv(&[1, 1, 3, 3], 8).to_vec(),
            "4-D",
        ),
        (
            conv_arch([1, 5, 5], "valid"),
            vec![t("w", &[1, 1, 3, 3], vec![0.0; 9])],
            "no tensor \"b\"",
        ),
        (
            conv_arch([1, 5, 5], "valid"),
            vec![
                t("w", &[1, 1, 3, 3], vec![0.0; 9]),
                t("b", &[2], vec![0.0; 2]),
            ],
            "bias",
        ),
        (arch([1, 3, 3], r#"[{"maxpool": 4}]"#), vec![], "max-pool"),
        (arch([1, 3, 3], r#"[{"maxpool": 0}]"#), vec![], "max-pool"),
        (
            arch([1, 3, 3], r#"["flatten", {"maxpool": 2}]"#),
            vec![],
            "vector",
        ),
        (
            arch([1, 2, 2], r#"[{"dense": {"weight": "w", "bias": "b"}}]"#),
            vec![t("w", &[1, 4], vec![0.0; 4]), t("b", &[1], vec![0.0])],
            "add \"flatten\"",
        ),
        (
            arch(
                [1, 2, 2],
                r#"["flatten", {"dense": {"weight": "w", "bias": "b"}}]"#,
            ),
            vec![t("w", &[1, 3], vec![0.0; 3]), t("b", &[1], vec![0.0])],
            "takes 3 inputs",
        ),
        (arch([0, 2, 2], "[]"), vec![], "at least 1"),
        (arch([1 << 40, 1 << 40, 2], "[]"), vec![], "at least 1"),
    ];
    for (a, tensors, what) in cases {
        let e = Model::new(&a, &tensors).unwrap_err().to_string();
        assert!(e.contains(what), "{what}: {e}");
    }
}

/// A tiny conv net of every layer kind, with weights from `seed`.
fn tiny(seed: u64) -> (Arch, Vec<Tensor>) {
    let a = arch(
        [1, 6, 6],
        r#"[{"conv": {"weight": "c.weight", "bias": "c.bias", "padding": "same"}},
            {"maxpool": 2}, "relu", "flatten",
            {"dense": {"weight": "fc.weight", "bias": "fc.bias"}}]"#,
    );
    let mut rng = crate::rng::SplitMix64(seed);
    let mut r = |shape: &[usize]| -> Vec<f32> {
        (0..shape.iter().product())
            .map(|_| rng.next_signed_unit())
            .collect()
    };
    let tensors = vec![
        t("c.weight", &[2, 1, 3, 3], r(&[2, 1, 3, 3])),
        t("c.bias", &[2], r(&[2])),
        t("fc.weight", &[3, 18], r(&[3, 18])),
        t("fc.bias", &[3], r(&[3])),
    ];
    (a, tensors)
}

#[test]
fn loads_plain_and_locked_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, tensors) = tiny(7);
    let plain = dir.path().join("m.safetensors");
    crate::zoo::write_safetensors(&plain, &tensors).unwrap();
    let expect = Model::new(&a, &tensors).unwrap();
    assert_eq!(Model::load(&plain, &a, None).unwrap(), expect);

    let key = MasterKey::from_bytes([3; 16]);
    let locked = dir.path().join("m.locked.safetensors");
    let mut engine = CpuEngine::new(CpuLocker::new());
    files::lock(&plain, &locked, &key, &mut engine, &Options::default()).unwrap();
    assert_eq!(Model::load(&locked, &a, Some(&key)).unwrap(), expect);

    // A wrong key loads (and runs) with other weights; the file check refuses it.
    let wrong = MasterKey::from_bytes([4; 16]);
    assert!(matches!(
        Model::load(&locked, &a, Some(&wrong)),
        Err(crate::Error::WrongKey { .. })
    ));
    let garbage = Model::load_unauthenticated(&locked, &a, Some(&wrong)).unwrap();
    assert_ne!(garbage, expect);
    assert_eq!(garbage.forward(&[0.5; 36], 1).unwrap().len(), 3);
    assert!(files::verify(&locked, &wrong).is_err());

    let e = Model::load(&locked, &a, None).unwrap_err().to_string();
    assert!(e.contains("locked") && e.contains("pass the key"), "{e}");

    // Only the locked tensors are unlocked.
    let partly = dir.path().join("p.locked.safetensors");
    let opts = Options {
        only: vec!["fc.*".into()],
        ..Options::default()
    };
    files::lock(&plain, &partly, &key, &mut engine, &opts).unwrap();
    assert_eq!(Model::load(&partly, &a, Some(&key)).unwrap(), expect);

    // One flipped bit in any tensor the model uses, locked or in the clear, is refused
    // before a weight is unlocked, naming the tensor.
    let bytes = std::fs::read(&partly).unwrap();
    let header = files::read_header(&partly).unwrap();
    let tampered = dir.path().join("t.safetensors");
    for t in &header.tensors {
        let mut b = bytes.clone();
        b[(header.data_start() + t.start) as usize] ^= 0x10;
        std::fs::write(&tampered, &b).unwrap();
        match Model::load(&tampered, &a, Some(&key)) {
            Err(crate::Error::Tampered { what, .. }) => {
                assert_eq!(what, format!("tensor {:?}", t.name))
            }
            other => panic!("{}: {other:?}", t.name),
        }
    }
}

#[test]
fn load_refuses_other_dtypes_and_missing_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let (a, tensors) = tiny(1);
    let path = dir.path().join("m.safetensors");
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| {
            t.values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            let v =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, t.shape.clone(), b);
            (t.name.clone(), v.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let e = Model::load(&path, &a, None).unwrap_err().to_string();
    assert!(e.contains("is F16") && e.contains("F32"), "{e}");

    crate::zoo::write_safetensors(&path, &tensors[1..]).unwrap();
    let e = Model::load(&path, &a, None).unwrap_err().to_string();
    assert!(e.contains("no tensor \"c.weight\""), "{e}");
}

#[test]
fn fast_path_matches_the_reference_on_the_cifar10_cnn() {
    // 3 input channels, `same` and `valid` padding, a chunk and a remainder of inputs.
    let arch = crate::zoo::cifar10_cnn_arch();
    let model = Model::new(&arch, &crate::zoo::cifar10_cnn(5)).unwrap();
    let batch = 19;
    let mut rng = crate::rng::SplitMix64(9);
    let x: Vec<f32> = (0..batch * 3 * 32 * 32)
        .map(|_| rng.next_signed_unit())
        .collect();
    let expect = model.forward(&x, batch).unwrap();
    let got = model.forward_fast(&x, batch).unwrap();
    let scale = expect.iter().map(|v| v.abs()).fold(0.0, f32::max);
    for (a, b) in got.iter().zip(&expect) {
        assert!((a - b).abs() <= 1e-4 * scale, "{a} {b}");
    }
    assert!(model.forward_fast(&x[1..], batch).is_err());
}

/// Header entries of `tensors` (name, shape), all of `dtype`, laid out back to back.
fn entries(tensors: &[(&str, &[usize])], dtype: Dtype) -> Vec<crate::header::TensorEntry> {
    let mut start = 0;
    tensors
        .iter()
        .map(|&(name, shape)| {
            let len = shape.iter().product::<usize>() as u64 * dtype.size().unwrap();
            start += len;
            crate::header::TensorEntry {
                name: name.into(),
                dtype,
                shape: shape.to_vec(),
                start: start - len,
                end: start,
            }
        })
        .collect()
}

/// A product's (rows per image, n, k).
type Dims = (usize, usize, usize);

/// Checks `plan` against the expected (output shape, product) of every step and the
/// (name, bytes) of every tensor.
fn check_plan(
    plan: &Plan,
    input: [usize; 3],
    steps: &[(Shape, Option<Dims>)],
    tensors: &[(&str, u64)],
) {
    assert_eq!(plan.input(), input);
    assert_eq!(plan.shapes()[0], Shape::Image(input));
    assert_eq!(plan.steps().len(), steps.len());
    for (i, &(shape, product)) in steps.iter().enumerate() {
        assert_eq!(plan.shapes()[i + 1], shape, "step {i}");
        assert_eq!(plan.elements(i), shape.len(), "step {i}");
        let got = plan.product(i).map(|p| (p.rows, p.n, p.k));
        assert_eq!(got, product, "step {i}");
    }
    let got: Vec<(&str, u64)> = plan
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.bytes()))
        .collect();
    assert_eq!(got, tensors);
    assert_eq!(plan.outputs(), 10);
}

#[test]
fn plans_every_layer_of_the_fashion_mnist_cnn_from_its_header() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let a = Arch::read(&dir.join("fashion_mnist_cnn.arch.json")).unwrap();
    let header = files::read_header(&dir.join("fashion_mnist_cnn.safetensors")).unwrap();
    let plan = Plan::from_entries(&a, &header.tensors).unwrap();
    use Shape::{Image, Vector};
    check_plan(
        &plan,
        [1, 28, 28],
        &[
            (Image([16, 24, 24]), Some((576, 16, 25))),
            (Image([16, 12, 12]), None),
            (Image([16, 12, 12]), None),
            (Image([32, 8, 8]), Some((64, 32, 400))),
            (Image([32, 4, 4]), None),
            (Image([32, 4, 4]), None),
            (Vector(512), None),
            (Vector(128), Some((1, 128, 512))),
            (Vector(128), None),
            (Vector(10), Some((1, 10, 128))),
        ],
        &[
            ("conv1.weight", 1600),
            ("conv1.bias", 64),
            ("conv2.weight", 51200),
            ("conv2.bias", 128),
            ("fc1.weight", 262144),
            ("fc1.bias", 512),
            ("fc2.weight", 5120),
            ("fc2.bias", 40),
        ],
    );
    assert!(matches!(
        plan.steps()[0],
        Step::Conv {
            weight: 0,
            bias: 1,
            in_channels: 1,
            out_channels: 16,
            kernel: [5, 5],
            pad: [0, 0]
        }
    ));
    assert_eq!(plan.weight_bytes(), 320808);
    // The plan places its tensors end to end, wherever the file has them.
    assert_eq!(plan.tensors()[0].start, 0);
    assert!(plan.tensors().windows(2).all(|w| w[0].end == w[1].start));
    assert_eq!(plan.tensors().last().unwrap().end, plan.weight_bytes());
    // The CPU model runs the same plan.
    let model = Model::load(&dir.join("fashion_mnist_cnn.safetensors"), &a, None).unwrap();
    assert_eq!(model.plan(), &plan);
}

#[test]
fn plans_every_layer_of_the_cifar10_cnn_in_bf16() {
    let a = crate::zoo::cifar10_cnn_arch();
    let plan = Plan::from_entries(&a, &entries(&crate::zoo::CIFAR10_CNN, Dtype::BF16)).unwrap();
    use Shape::{Image, Vector};
    check_plan(
        &plan,
        [3, 32, 32],
        &[
            (Image([32, 32, 32]), Some((1024, 32, 27))),
            (Image([32, 32, 32]), None),
            (Image([32, 30, 30]), Some((900, 32, 288))),
            (Image([32, 30, 30]), None),
            (Image([32, 15, 15]), None),
            (Image([64, 15, 15]), Some((225, 64, 288))),
            (Image([64, 15, 15]), None),
            (Image([64, 13, 13]), Some((169, 64, 576))),
            (Image([64, 13, 13]), None),
            (Image([64, 6, 6]), None),
            (Vector(2304), None),
            (Vector(512), Some((1, 512, 2304))),
            (Vector(512), None),
            (Vector(10), Some((1, 10, 512))),
        ],
        &[
            ("conv1.weight", 1728),
            ("conv1.bias", 64),
            ("conv2.weight", 18432),
            ("conv2.bias", 64),
            ("conv3.weight", 36864),
            ("conv3.bias", 128),
            ("conv4.weight", 73728),
            ("conv4.bias", 128),
            ("fc1.weight", 2359296),
            ("fc1.bias", 1024),
            ("fc2.weight", 10240),
            ("fc2.bias", 20),
        ],
    );
    assert!(matches!(plan.steps()[0], Step::Conv { pad: [1, 1], .. }));
    assert!(plan.tensors().iter().all(|t| t.dtype == Dtype::BF16));
    assert_eq!(
        plan.weight_bytes(),
        2 * crate::zoo::CIFAR10_CNN_PARAMS as u64
    );
    // F32 doubles every size; the shapes are the same plan's.
    let f32_plan = Plan::from_entries(&a, &entries(&crate::zoo::CIFAR10_CNN, Dtype::F32)).unwrap();
    assert_eq!(f32_plan.shapes(), plan.shapes());
    assert_eq!(
        f32_plan.weight_bytes(),
        4 * crate::zoo::CIFAR10_CNN_PARAMS as u64
    );
}

#[test]
fn plans_refuse_what_the_kernels_cannot_decode() {
    let a = crate::zoo::cifar10_cnn_arch();
    let e = Plan::from_entries(&a, &entries(&crate::zoo::CIFAR10_CNN, Dtype::F64))
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 0") && e.contains("is F64"), "{e}");
    let e = Plan::from_entries(&a, &entries(&crate::zoo::CIFAR10_CNN[1..], Dtype::F32))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no tensor \"conv1.weight\""), "{e}");
}
