//! A model ready to run: its architecture checked against its tensors once, when it is
//! built, so that running it cannot fail on a shape. Built from tensors in memory or
//! loaded from a safetensors file, locked or not.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::cpu::CpuLocker;
use crate::error::{Error, Result};
use crate::header::Header;
use crate::infer::arch::{Arch, LayerSpec, Padding};
use crate::key::MasterKey;
use crate::lock_info::LockInfo;
use crate::scheme::{Direction, TensorCipher};
use crate::zoo::Tensor;

/// The shape of an activation of one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Channels, height, width.
    Image([usize; 3]),
    /// A vector (after `flatten` or a dense layer).
    Vector(usize),
}

impl Shape {
    /// Number of values.
    pub fn len(&self) -> usize {
        match *self {
            Shape::Image([c, h, w]) => c * h * w,
            Shape::Vector(n) => n,
        }
    }

    /// Whether it holds no values (never, in a built [`Model`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

/// A model: layers with their weights, and the shape of the activation each one takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub(crate) layers: Vec<Layer>,
    /// `shapes[i]` is the input of `layers[i]`; the last is the output.
    pub(crate) shapes: Vec<Shape>,
}

impl Model {
    /// Builds `arch` with weights from `tensors` (looked up by name), checking every
    /// shape: tensors against the layers, and each layer's input against the previous
    /// layer's output.
    pub fn new(arch: &Arch, tensors: &[Tensor]) -> Result<Self> {
        let bad = |i: usize, what: String| Error::Invalid(format!("layer {i}: {what}"));
        let find = |i: usize, name: &str, rank: usize| -> Result<&Tensor> {
            let t = tensors.iter().find(|t| t.name == name).ok_or_else(|| {
                bad(i, format!("no tensor {name:?} among the model's tensors; list them with `deeplock inspect MODEL`"))
            })?;
            if t.shape.len() != rank
                || checked_len(&t.shape) != Some(t.values.len())
                || t.values.is_empty()
            {
                return Err(bad(
                    i,
                    format!(
                        "tensor {name:?} has shape {:?} and {} values; this layer needs a non-empty {rank}-D tensor",
                        t.shape,
                        t.values.len()
                    ),
                ));
            }
            Ok(t)
        };
        if arch.input.contains(&0) || checked_len(&arch.input).is_none() {
            return Err(Error::Invalid(format!(
                "input shape {:?}: channels, height and width must be at least 1, and their product at most {MAX_VALUES}",
                arch.input
            )));
        }
        let mut shape = Shape::Image(arch.input);
        let mut shapes = vec![shape];
        let mut layers = Vec::with_capacity(arch.layers.len());
        for (i, spec) in arch.layers.iter().enumerate() {
            let image = |s: Shape, what: &str| match s {
                Shape::Image(d) => Ok(d),
                Shape::Vector(n) => Err(bad(
                    i,
                    format!("{what} takes an image [c, h, w], but its input is a vector of {n}"),
                )),
            };
            let (layer, next) = match spec {
                LayerSpec::Conv(cs) => {
                    let [ci, h, w] = image(shape, "conv")?;
                    let wt = find(i, &cs.weight, 4)?;
                    let &[co, wci, kh, kw] = &wt.shape[..] else {
                        unreachable!("rank checked")
                    };
                    if wci != ci {
                        return Err(bad(
                            i,
                            format!(
                                "conv weight {:?} takes {wci} input channels, its input has {ci}",
                                cs.weight
                            ),
                        ));
                    }
                    let pad = match cs.padding {
                        Padding::Valid => [0, 0],
                        Padding::Same if kh % 2 == 1 && kw % 2 == 1 => [(kh - 1) / 2, (kw - 1) / 2],
                        Padding::Same => {
                            return Err(bad(
                                i,
                                format!(
                                    "\"same\" padding needs an odd kernel, {:?} is {kh}x{kw}",
                                    cs.weight
                                ),
                            ))
                        }
                    };
                    let (oh, ow) = (
                        (h + 2 * pad[0]).checked_sub(kh - 1),
                        (w + 2 * pad[1]).checked_sub(kw - 1),
                    );
                    let (Some(oh @ 1..), Some(ow @ 1..)) = (oh, ow) else {
                        return Err(bad(
                            i,
                            format!(
                                "a {kh}x{kw} kernel does not fit a {h}x{w} input with {:?} padding",
                                cs.padding
                            ),
                        ));
                    };
                    let b = bias(i, find(i, &cs.bias, 1)?, co)?;
                    let conv = Conv {
                        out_channels: co,
                        in_channels: ci,
                        kernel: [kh, kw],
                        pad,
                        weight: wt.values.clone(),
                        bias: b,
                    };
                    (Layer::Conv(conv), Shape::Image([co, oh, ow]))
                }
                &LayerSpec::MaxPool(size) => {
                    let [c, h, w] = image(shape, "maxpool")?;
                    if size == 0 || h / size == 0 || w / size == 0 {
                        return Err(bad(
                            i,
                            format!("a {size}x{size} max-pool does not fit a {h}x{w} input"),
                        ));
                    }
                    (
                        Layer::MaxPool { size },
                        Shape::Image([c, h / size, w / size]),
                    )
                }
                LayerSpec::Relu => (Layer::Relu, shape),
                LayerSpec::Flatten => (Layer::Flatten, Shape::Vector(shape.len())),
                LayerSpec::Dense(ds) => {
                    let Shape::Vector(n) = shape else {
                        return Err(bad(
                            i,
                            format!("dense takes a vector, but its input is an image {shape:?}; add \"flatten\" before it"),
                        ));
                    };
                    let wt = find(i, &ds.weight, 2)?;
                    let (out, inputs) = (wt.shape[0], wt.shape[1]);
                    if inputs != n {
                        return Err(bad(
                            i,
                            format!(
                                "dense weight {:?} takes {inputs} inputs, its input has {n}",
                                ds.weight
                            ),
                        ));
                    }
                    let b = bias(i, find(i, &ds.bias, 1)?, out)?;
                    let dense = Dense {
                        outputs: out,
                        inputs,
                        weight: wt.values.clone(),
                        bias: b,
                    };
                    (Layer::Dense(dense), Shape::Vector(out))
                }
            };
            if let Shape::Image(d) = next {
                if checked_len(&d).is_none() {
                    return Err(bad(
                        i,
                        format!("its output {d:?} has more than {MAX_VALUES} values"),
                    ));
                }
            }
            layers.push(layer);
            shape = next;
            shapes.push(shape);
        }
        Ok(Model { layers, shapes })
    }

    /// Loads the model described by `arch` from the safetensors file at `path`.
    ///
    /// If the file is locked, the tensors it lists as locked are unlocked in memory with
    /// `key`, and the file is never written. The key is deliberately *not* checked
    /// against the file's key check value: a wrong key loads and runs, with garbage
    /// weights (what the scheme promises an attacker gets). Check a key first with
    /// [`crate::files::verify`] where a wrong one should be refused. A `key` given for
    /// a file that is not locked is not used.
    ///
    /// Only the tensors `arch` names are read; they must be F32.
    pub fn load(path: &Path, arch: &Arch, key: Option<&MasterKey>) -> Result<Self> {
        let raw = RawTensors::read(path, arch)?;
        let unlock = match (&raw.lock, key) {
            (None, _) => None,
            (Some(info), Some(key)) => Some((info, key)),
            (Some(_), None) => return Err(Error::format(
                path,
                "the model is locked (it has deeplock metadata); pass the key it was locked with",
            )),
        };
        let tensors: Vec<Tensor> = raw
            .tensors
            .into_iter()
            .map(|mut t| {
                if let Some((info, key)) = unlock {
                    if info.is_locked(&t.name) {
                        let cipher = TensorCipher::for_tensor(key, &info.salt, &t.name);
                        CpuLocker::new().apply_parallel(
                            &cipher,
                            Direction::Unlock,
                            0,
                            &mut t.bytes,
                        );
                    }
                }
                t.into_tensor()
            })
            .collect();
        Self::new(arch, &tensors).map_err(|e| Error::format(path, e.to_string()))
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The shape of one input.
    pub fn input_shape(&self) -> Shape {
        self.shapes[0]
    }

    /// The shape of each layer's input, then of the output: one more than the layers.
    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }

    /// Number of outputs (logits) per input.
    pub fn outputs(&self) -> usize {
        self.shapes[self.shapes.len() - 1].len()
    }
}

/// Most values an activation may hold: the largest `Vec<f32>` that can exist, so that
/// no shape arithmetic can overflow (every dimension and padding is at most this).
pub const MAX_VALUES: usize = isize::MAX as usize / 4;

/// The product of `dims`, if it is at most [`MAX_VALUES`].
fn checked_len(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_VALUES)
}

/// Checks that a bias tensor has one value per output channel or unit.
fn bias(layer: usize, t: &Tensor, outputs: usize) -> Result<Vec<f32>> {
    if t.values.len() != outputs {
        return Err(Error::Invalid(format!(
            "layer {layer}: bias {:?} has {} values for {outputs} outputs",
            t.name,
            t.values.len()
        )));
    }
    Ok(t.values.clone())
}

/// A tensor as stored in the file: its bytes, locked or not.
pub(crate) struct RawTensor {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    /// Little-endian F32 values, or their locked form.
    pub(crate) bytes: Vec<u8>,
}

impl RawTensor {
    /// The bytes read as f32 values: the weights if they are plaintext, noise otherwise
    /// (still good for checking shapes, which is all the GPU runtime builds a [`Model`]
    /// from a locked file for).
    pub(crate) fn into_tensor(self) -> Tensor {
        Tensor {
            values: self
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
            name: self.name,
            shape: self.shape,
        }
    }
}

/// The tensors an architecture uses, read from a safetensors file as they are stored,
/// with the file's lock information: what both runtimes load from (the CPU unlocks in
/// memory, the GPU uploads the bytes as they are).
pub(crate) struct RawTensors {
    /// In the order of [`Arch::tensor_names`].
    pub(crate) tensors: Vec<RawTensor>,
    pub(crate) lock: Option<LockInfo>,
}

impl RawTensors {
    /// Reads only the tensors `arch` names; they must be F32.
    pub(crate) fn read(path: &Path, arch: &Arch) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let header = Header::read(&mut file, path)?;
        let lock = LockInfo::from_header(&header, path)?;
        let mut tensors = Vec::new();
        for name in arch.tensor_names() {
            let entry = header.tensors.iter().find(|t| t.name == name).ok_or_else(|| {
                Error::format(
                    path,
                    format!("no tensor {name:?}, which the architecture uses; list the file's tensors with `deeplock inspect {}`", path.display()),
                )
            })?;
            if entry.dtype != "F32" {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor {name:?} is {}; inference runs F32 weights only for now: convert the model to float32",
                        entry.dtype
                    ),
                ));
            }
            let len = usize::try_from(entry.len()).map_err(|_| {
                Error::format(
                    path,
                    format!("tensor {name:?} is too large for this machine"),
                )
            })?;
            let mut bytes = vec![0u8; len];
            file.seek(SeekFrom::Start(header.data_start() + entry.start))
                .and_then(|_| file.read_exact(&mut bytes))
                .map_err(|e| Error::io(path, e))?;
            tensors.push(RawTensor {
                name: name.to_owned(),
                shape: entry.shape.clone(),
                bytes,
            });
        }
        Ok(RawTensors { tensors, lock })
    }
}
