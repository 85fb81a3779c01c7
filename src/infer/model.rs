//! A model ready to run: its architecture checked against its tensors once, when it is
//! built, so that running it cannot fail on a shape. Built from tensors in memory or
//! loaded from a safetensors file, locked or not.

use std::path::Path;

use crate::cpu::CpuLocker;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::TensorEntry;
use crate::infer::arch::{Arch, LayerSpec};
use crate::infer::file::ModelFile;
use crate::infer::plan::{checked_len, Plan, Shape, Step};
use crate::key::MasterKey;
use crate::scheme::Direction;

/// A named f32 tensor, with its values: what a [`Model`] is built from in memory, and
/// the crate's one owned tensor. Not a [`crate::format::TensorView`] (borrowed bytes of
/// any element type): whatever builds a model in memory holds f32 values, not encoded
/// bytes (the [`crate::zoo`] generates them, training computes them, tests write them),
/// and a model keeps its weights as f32, so a view would mean encoding the values only
/// to decode them again, with an owner for the bytes kept beside it. Writing tensors to
/// a file goes through views ([`crate::zoo::write_safetensors`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The name, PyTorch style (`conv1.weight`).
    pub name: String,
    /// The shape, PyTorch layout: conv `[out, in, kh, kw]`, linear `[out, in]`.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub values: Vec<f32>,
}

/// A convolution with its weights, stride 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    /// Output channels.
    pub out_channels: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Zeros added above and below, and left and right.
    pub pad: [usize; 2],
    /// `[out, in, kh, kw]`, row-major (PyTorch's `Conv2d` layout).
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

/// A dense layer with its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    /// Outputs.
    pub outputs: usize,
    /// Inputs.
    pub inputs: usize,
    /// `[out, in]`, row-major (PyTorch's `Linear` layout).
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

/// A layer of a built [`Model`].
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// A convolution.
    Conv(Conv),
    /// Max over `size`x`size` windows, stride `size`.
    MaxPool {
        /// The window's side.
        size: usize,
    },
    /// `max(x, 0)`.
    Relu,
    /// Image to vector, channel-major.
    Flatten,
    /// A dense layer.
    Dense(Dense),
}

/// A model: its [`Plan`] and its layers with their weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub(crate) plan: Plan,
    /// One per step of the plan.
    pub(crate) layers: Vec<Layer>,
}

impl Model {
    /// Builds `arch` with weights from `tensors` (looked up by name), checking every
    /// shape: tensors against the layers, and each layer's input against the previous
    /// layer's output.
    pub fn new(arch: &Arch, tensors: &[Tensor]) -> Result<Self> {
        let find = |name: &str| tensors.iter().find(|t| t.name == name);
        // What a plan cannot see: values that do not fill their shape.
        for (i, spec) in arch.layers.iter().enumerate() {
            let (w, b, rank) = match spec {
                LayerSpec::Conv(c) => (&c.weight, &c.bias, 4),
                LayerSpec::Dense(d) => (&d.weight, &d.bias, 2),
                LayerSpec::MaxPool(_) | LayerSpec::Relu | LayerSpec::Flatten => continue,
            };
            for (name, rank) in [(w, rank), (b, 1)] {
                let Some(t) = find(name) else { continue };
                if checked_len(&t.shape) != Some(t.values.len()) {
                    return Err(Error::Invalid(format!(
                        "layer {i}: tensor {name:?} has shape {:?} and {} values; this layer needs a non-empty {rank}-D tensor",
                        t.shape,
                        t.values.len()
                    )));
                }
            }
        }
        // The entries a header of them would list: F32, values back to back in the order
        // given.
        let mut end = 0;
        let entries: Vec<TensorEntry> = tensors
            .iter()
            .map(|t| {
                let start = end;
                end += 4 * t.values.len() as u64;
                TensorEntry {
                    name: t.name.clone(),
                    dtype: Dtype::F32,
                    shape: t.shape.clone(),
                    start,
                    end,
                }
            })
            .collect();
        let plan = Plan::from_entries(arch, &entries)?;
        let values = plan
            .tensors()
            .iter()
            .map(|p| find(&p.name).expect("planned").values.clone())
            .collect();
        Ok(Self::from_plan(plan, values))
    }

    /// The model of `plan` with `values[i]` the f32 values of `plan.tensors()[i]`.
    fn from_plan(plan: Plan, mut values: Vec<Vec<f32>>) -> Self {
        let mut take = |i: usize| std::mem::take(&mut values[i]);
        let layers = plan
            .steps()
            .iter()
            .map(|&step| match step {
                Step::Conv {
                    weight,
                    bias,
                    in_channels,
                    out_channels,
                    kernel,
                    pad,
                } => Layer::Conv(Conv {
                    out_channels,
                    in_channels,
                    kernel,
                    pad,
                    weight: take(weight),
                    bias: take(bias),
                }),
                Step::MaxPool { size } => Layer::MaxPool { size },
                Step::Relu => Layer::Relu,
                Step::Flatten => Layer::Flatten,
                Step::Dense {
                    weight,
                    bias,
                    inputs,
                    outputs,
                } => Layer::Dense(Dense {
                    outputs,
                    inputs,
                    weight: take(weight),
                    bias: take(bias),
                }),
            })
            .collect();
        Model { plan, layers }
    }

    /// Loads the model described by `arch` from the safetensors file at `path`.
    ///
    /// If the file is locked, the tensors it lists as locked are unlocked in memory with
    /// `key`, and the file is never written. A v2 file is authenticated first: a wrong
    /// key, an edited header or a tensor whose bytes changed is refused
    /// ([`Error::WrongKey`], [`Error::Tampered`]) before any weight is unlocked. A v1
    /// file carries no tags and its key is not checked: a wrong key loads and runs with
    /// garbage weights (what the scheme promises an attacker gets). A `key` given for a
    /// file that is not locked is not used.
    ///
    /// Only the tensors `arch` names are read; they must be F32.
    pub fn load(path: &Path, arch: &Arch, key: Option<&MasterKey>) -> Result<Self> {
        Self::load_checked(path, arch, key, true)
    }

    /// [`Model::load`] without v2's checks, the key's included: a wrong key loads and
    /// runs with garbage weights, as for v1. What an attacker who guessed a key would
    /// run, for experiments on the scheme (the paper's wrong-key accuracy); never for
    /// serving a model.
    pub fn load_unauthenticated(path: &Path, arch: &Arch, key: Option<&MasterKey>) -> Result<Self> {
        Self::load_checked(path, arch, key, false)
    }

    fn load_checked(
        path: &Path,
        arch: &Arch,
        key: Option<&MasterKey>,
        authenticate: bool,
    ) -> Result<Self> {
        let mut file = ModelFile::open(path, arch, key, authenticate, |name, dtype| {
            if dtype == Dtype::F32 {
                return Ok(());
            }
            Err(Error::format(
                path,
                format!("tensor {name:?} is {dtype}; inference on the CPU runs F32 weights only for now: convert the model to float32"),
            ))
        })?;
        let locker = CpuLocker::new();
        let mut values = Vec::with_capacity(file.plan.tensors().len());
        for i in 0..file.plan.tensors().len() {
            let mut bytes = vec![0u8; file.len(i)?];
            file.read(i, &mut bytes)?;
            if let Some(cipher) = &file.ciphers[i] {
                locker.apply_parallel(cipher, Direction::Unlock, 0, &mut bytes);
            }
            values.push(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect(),
            );
        }
        Ok(Self::from_plan(file.plan, values))
    }

    /// The plan the model runs: shapes, tensor sizes, products.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The shape of one input.
    pub fn input_shape(&self) -> Shape {
        self.plan.shapes()[0]
    }

    /// The shape of each layer's input, then of the output: one more than the layers.
    pub fn shapes(&self) -> &[Shape] {
        self.plan.shapes()
    }

    /// Number of outputs (logits) per input.
    pub fn outputs(&self) -> usize {
        self.plan.outputs()
    }
}
