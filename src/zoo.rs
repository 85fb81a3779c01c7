//! Built-in model shapes for the demo, tests and benchmarks, written as real
//! safetensors files with deterministic pseudo-random weights.

use std::path::Path;

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::format::{safetensors, TensorView};
pub use crate::infer::Tensor;

/// Shapes of the Keras `cifar10_cnn` example network (1,250,858 parameters in 12
/// tensors), in PyTorch layout: four 3x3 convolutions (3→32→32→64→64) and two dense
/// layers (2304→512→10), each with its bias.
pub const CIFAR10_CNN: [(&str, &[usize]); 12] = [
    ("conv1.weight", &[32, 3, 3, 3]),
    ("conv1.bias", &[32]),
    ("conv2.weight", &[32, 32, 3, 3]),
    ("conv2.bias", &[32]),
    ("conv3.weight", &[64, 32, 3, 3]),
    ("conv3.bias", &[64]),
    ("conv4.weight", &[64, 64, 3, 3]),
    ("conv4.bias", &[64]),
    ("fc1.weight", &[512, 2304]),
    ("fc1.bias", &[512]),
    ("fc2.weight", &[10, 512]),
    ("fc2.bias", &[10]),
];

/// The architecture of [`CIFAR10_CNN`] for [`crate::infer`], as Keras' `cifar10_cnn`
/// builds it (its dropout layers do nothing at inference): conv 3x3 `same` 3→32, ReLU,
/// conv 3x3 `valid` 32→32, ReLU, max-pool 2, conv 3x3 `same` 32→64, ReLU, conv 3x3
/// `valid` 64→64, ReLU, max-pool 2, flatten (64 x 6 x 6 = 2304), dense 512, ReLU,
/// dense 10; input 3x32x32.
pub const CIFAR10_CNN_ARCH: &str = r#"{
  "input": [3, 32, 32],
  "layers": [
    {"conv": {"weight": "conv1.weight", "bias": "conv1.bias", "padding": "same"}},
    "relu",
    {"conv": {"weight": "conv2.weight", "bias": "conv2.bias", "padding": "valid"}},
    "relu",
    {"maxpool": 2},
    {"conv": {"weight": "conv3.weight", "bias": "conv3.bias", "padding": "same"}},
    "relu",
    {"conv": {"weight": "conv4.weight", "bias": "conv4.bias", "padding": "valid"}},
    "relu",
    {"maxpool": 2},
    "flatten",
    {"dense": {"weight": "fc1.weight", "bias": "fc1.bias"}},
    "relu",
    {"dense": {"weight": "fc2.weight", "bias": "fc2.bias"}}
  ]
}"#;

/// [`CIFAR10_CNN_ARCH`], parsed.
pub fn cifar10_cnn_arch() -> crate::infer::Arch {
    crate::infer::Arch::from_json(CIFAR10_CNN_ARCH, Path::new("zoo::CIFAR10_CNN_ARCH"))
        .expect("the built-in architecture parses")
}

/// Number of parameters of [`CIFAR10_CNN`].
pub const CIFAR10_CNN_PARAMS: usize = 1_250_858;

/// The CIFAR-10-sized network with Glorot-uniform weights and small biases from `seed`.
pub fn cifar10_cnn(seed: u64) -> Vec<Tensor> {
    let mut rng = crate::rng::SplitMix64(seed);
    CIFAR10_CNN
        .iter()
        .map(|&(name, shape)| {
            let n: usize = shape.iter().product();
            let scale = if shape.len() > 1 {
                let receptive: usize = shape[2..].iter().product();
                (6.0 / ((shape[0] + shape[1]) * receptive) as f32).sqrt()
            } else {
                0.01
            };
            Tensor {
                name: name.into(),
                shape: shape.to_vec(),
                values: (0..n).map(|_| rng.next_signed_unit() * scale).collect(),
            }
        })
        .collect()
}

/// Writes f32 tensors as a safetensors file (with `format: pt` metadata, as PyTorch
/// exports do).
pub fn write_safetensors(path: &Path, tensors: &[Tensor]) -> Result<()> {
    write_safetensors_with_metadata(path, tensors, &[("format", "pt")])
}

/// Writes f32 tensors as a GGUF file (llama.cpp's format) with the given string
/// key-values.
pub fn write_gguf(path: &Path, tensors: &[Tensor], kvs: &[(&str, &str)]) -> Result<()> {
    write_with(path, tensors, |views| {
        crate::format::gguf::serialize(views, kvs, path)
    })
}

/// Writes f32 tensors as a safetensors file with the given string metadata (a trained
/// model records where it came from and how good it is), byte-for-byte reproducibly.
pub fn write_safetensors_with_metadata(
    path: &Path,
    tensors: &[Tensor],
    metadata: &[(&str, &str)],
) -> Result<()> {
    write_with(path, tensors, |views| {
        safetensors::serialize(views, metadata, path)
    })
}

/// Writes f32 `tensors` at `path` as `serialize` lays out their views.
fn write_with(
    path: &Path,
    tensors: &[Tensor],
    serialize: impl FnOnce(&[TensorView<'_>]) -> Result<Vec<u8>>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<TensorView<'_>> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| TensorView {
            name: &t.name,
            dtype: Dtype::F32,
            shape: &t.shape,
            data: b,
        })
        .collect();
    let file = serialize(&views)?;
    std::fs::write(path, file).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar10_has_the_keras_parameter_count() {
        let m = cifar10_cnn(1);
        assert_eq!(m.len(), 12);
        assert_eq!(
            m.iter().map(|t| t.values.len()).sum::<usize>(),
            CIFAR10_CNN_PARAMS
        );
        assert!(m[0].values.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn writes_metadata_in_order_and_the_same_bytes_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let t = [Tensor {
            name: "w".into(),
            shape: vec![2],
            values: vec![1.0, -2.0],
        }];
        // Not sorted: the order given is kept.
        let meta = [("format", "pt"), ("dataset", "x"), ("b", "1"), ("a", "2")];
        let (a, b) = (
            dir.path().join("a.safetensors"),
            dir.path().join("b.safetensors"),
        );
        write_safetensors_with_metadata(&a, &t, &meta).unwrap();
        write_safetensors_with_metadata(&b, &t, &meta).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap());
        let text = String::from_utf8_lossy(&bytes[8..]);
        let head = r#"{"__metadata__":{"format":"pt","dataset":"x","b":"1","a":"2"},"w""#;
        assert!(text.starts_with(head), "{text}");
        let h = crate::files::read_header(&a).unwrap();
        assert_eq!(h.tensors[0].shape, [2]);
    }
}
