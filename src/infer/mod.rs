//! Inference of locked models: on the CPU, the f64 reference ([`Model::forward`], in
//! `reference.rs`) that everything else is checked against and a fast f32 path
//! ([`Model::forward_fast`], `fast_cpu.rs`); on the GPU, [`GpuModel`], with the weights
//! either kept locked in GPU memory and decoded inside the matmul kernels at every query
//! or unlocked once at load ([`Unlock`]). All three run a [`Plan`]: the architecture
//! checked against its tensors' element types and shapes, with every size worked out
//! once. This is what reproduces the paper's results (`examples/paper.rs`): the right key
//! gives the trained model's accuracy, a wrong key a useless one, at a measured cost per
//! query.
//!
//! A model is a safetensors file in PyTorch layout (conv `[out, in, kh, kw]`, dense
//! `[out, in]`), locked or not, plus an architecture description ([`Arch`], a small JSON
//! file; its format is documented in [`arch`]). Its weights are F32 for the CPU, F32, F16
//! or BF16 for the GPU (decoded in the kernels). Activations are NCHW f32.
//!
//! ```no_run
//! use std::path::Path;
//! use deeplock::infer::{Arch, Model};
//! use deeplock::mnist::{Dataset, Split};
//! use deeplock::MasterKey;
//!
//! # fn main() -> deeplock::Result<()> {
//! let arch = Arch::read(Path::new("tests/fixtures/fashion_mnist_cnn.arch.json"))?;
//! let key = MasterKey::from_hex("000102030405060708090a0b0c0d0e0f")?;
//! let model = Model::load(Path::new("model.locked.safetensors"), &arch, Some(&key))?;
//! let test = Dataset::fashion_mnist(Split::Test)?;
//! println!("accuracy {:.4}", test.evaluate(&model, 0..test.len())?);
//! # Ok(())
//! # }
//! ```

pub mod arch;
mod fast_cpu;
mod file;
mod gpu;
mod model;
pub mod plan;
mod reference;

pub use arch::{Arch, ConvSpec, DenseSpec, LayerSpec, Padding};
pub use gpu::{GpuModel, Unlock};
pub use model::{Conv, Dense, Layer, Model, Tensor};
pub use plan::{Plan, Product, Shape, Step, MAX_VALUES};
pub use reference::{accuracy, argmax, argmax_nan_lowest};

#[cfg(test)]
pub(crate) use gpu::{layouts as gpu_layouts, sources as gpu_sources};
#[cfg(test)]
mod tests;
