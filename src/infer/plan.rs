//! [`Plan`]: an architecture checked against the element types and shapes of its tensors,
//! before any weight is read: every activation's shape, every tensor's size in bytes and
//! every product's dimensions, worked out once. The CPU reference and the fast CPU path
//! run a [`super::Model`] built from one; [`super::GpuModel`] sizes its buffers and
//! dispatches from one, straight from a file's header, so that it never needs the
//! weights on the host.

use crate::error::{Error, Result};
use crate::gpu::MATMUL_DTYPES;
use crate::header::TensorEntry;
use crate::infer::arch::{Arch, LayerSpec, Padding};

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

    /// Whether it holds no values (never, in a [`Plan`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Most values an activation may hold: the largest `Vec<f32>` that can exist, so that
/// no shape arithmetic can overflow (every dimension and padding is at most this).
pub const MAX_VALUES: usize = isize::MAX as usize / 4;

/// One step of a plan: a layer with its dimensions, and for conv and dense layers the
/// indices of its weight and bias in [`Plan::tensors`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A stride-1 convolution.
    Conv {
        /// Index of the weight, `[out, in, kh, kw]`.
        weight: usize,
        /// Index of the bias, `[out]`.
        bias: usize,
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Kernel height and width.
        kernel: [usize; 2],
        /// Zeros added above and below, and left and right.
        pad: [usize; 2],
    },
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
    Dense {
        /// Index of the weight, `[outputs, inputs]`.
        weight: usize,
        /// Index of the bias, `[outputs]`.
        bias: usize,
        /// Inputs.
        inputs: usize,
        /// Outputs.
        outputs: usize,
    },
}

/// The dimensions of a conv or dense step as one matrix product per image,
/// `Y [rows, n] = X [rows, k] · Wᵀ`: for a convolution, one row per output position
/// (the implicit GEMM of [`crate::gpu::FusedMatmul::encode_conv`]), `k = in * kh * kw`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Product {
    /// Rows per image: output positions, or 1 for a dense layer.
    pub rows: usize,
    /// Output features.
    pub n: usize,
    /// Input features.
    pub k: usize,
}

/// An architecture checked against its tensors: the steps, the shape of every
/// activation and the header entry of every tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// In the order of [`Arch::tensor_names`], each of an element type the GPU kernels
    /// decode ([`MATMUL_DTYPES`]), with offsets into the plan's weights (see
    /// [`Plan::tensors`]). Owned: the models that run a plan outlive the header it was
    /// made from.
    tensors: Vec<TensorEntry>,
    steps: Vec<Step>,
    /// `shapes[i]` is the input of `steps[i]`; the last is the output.
    shapes: Vec<Shape>,
}

impl Plan {
    /// Plans `arch` with the tensors of a header (`entries`, looked up by name; nothing
    /// but their element types and shapes is read), checking every shape: tensors against
    /// the layers (rank, size, element type one of [`MATMUL_DTYPES`]), and each layer's
    /// input against the previous layer's output. Errors are [`Error::Invalid`], naming
    /// the layer.
    pub fn from_entries(arch: &Arch, entries: &[TensorEntry]) -> Result<Self> {
        let bad = |i: usize, what: String| Error::Invalid(format!("layer {i}: {what}"));
        let mut tensors: Vec<TensorEntry> = Vec::new();
        let find = |tensors: &mut Vec<TensorEntry>,
                    i: usize,
                    name: &str,
                    rank: usize|
         -> Result<usize> {
            let at = match tensors.iter().position(|t| t.name == name) {
                Some(at) => at,
                None => {
                    let entry = entries.iter().find(|e| e.name == name).ok_or_else(|| {
                        bad(i, format!("no tensor {name:?} among the model's tensors; list them with `deeplock inspect MODEL`"))
                    })?;
                    if !MATMUL_DTYPES.contains(&entry.dtype) {
                        return Err(bad(
                            i,
                            format!("tensor {name:?} is {}; inference runs F32, F16 and BF16 weights: convert the model to one of them", entry.dtype),
                        ));
                    }
                    tensors.push(entry.clone());
                    tensors.len() - 1
                }
            };
            let shape = &tensors[at].shape;
            if shape.len() != rank || !matches!(checked_len(shape), Some(1..)) {
                return Err(bad(
                    i,
                    format!("tensor {name:?} has shape {shape:?}; this layer needs a non-empty {rank}-D tensor"),
                ));
            }
            Ok(at)
        };
        if arch.input.contains(&0) || checked_len(&arch.input).is_none() {
            return Err(Error::Invalid(format!(
                "input shape {:?}: channels, height and width must be at least 1, and their product at most {MAX_VALUES}",
                arch.input
            )));
        }
        let mut shape = Shape::Image(arch.input);
        let mut shapes = vec![shape];
        let mut steps = Vec::with_capacity(arch.layers.len());
        for (i, spec) in arch.layers.iter().enumerate() {
            let image = |s: Shape, what: &str| match s {
                Shape::Image(d) => Ok(d),
                Shape::Vector(n) => Err(bad(
                    i,
                    format!("{what} takes an image [c, h, w], but its input is a vector of {n}"),
                )),
            };
            let (step, next) = match spec {
                LayerSpec::Conv(cs) => {
                    let [ci, h, w] = image(shape, "conv")?;
                    let weight = find(&mut tensors, i, &cs.weight, 4)?;
                    let &[co, wci, kh, kw] = &tensors[weight].shape[..] else {
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
                    let bias = find(&mut tensors, i, &cs.bias, 1)?;
                    check_bias(i, &tensors[bias], co)?;
                    let step = Step::Conv {
                        weight,
                        bias,
                        in_channels: ci,
                        out_channels: co,
                        kernel: [kh, kw],
                        pad,
                    };
                    (step, Shape::Image([co, oh, ow]))
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
                        Step::MaxPool { size },
                        Shape::Image([c, h / size, w / size]),
                    )
                }
                LayerSpec::Relu => (Step::Relu, shape),
                LayerSpec::Flatten => (Step::Flatten, Shape::Vector(shape.len())),
                LayerSpec::Dense(ds) => {
                    let Shape::Vector(n) = shape else {
                        return Err(bad(
                            i,
                            format!("dense takes a vector, but its input is an image {shape:?}; add \"flatten\" before it"),
                        ));
                    };
                    let weight = find(&mut tensors, i, &ds.weight, 2)?;
                    let (outputs, inputs) = (tensors[weight].shape[0], tensors[weight].shape[1]);
                    if inputs != n {
                        return Err(bad(
                            i,
                            format!(
                                "dense weight {:?} takes {inputs} inputs, its input has {n}",
                                ds.weight
                            ),
                        ));
                    }
                    let bias = find(&mut tensors, i, &ds.bias, 1)?;
                    check_bias(i, &tensors[bias], outputs)?;
                    let step = Step::Dense {
                        weight,
                        bias,
                        inputs,
                        outputs,
                    };
                    (step, Shape::Vector(outputs))
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
            steps.push(step);
            shape = next;
            shapes.push(shape);
        }
        // Places in the plan's weights, not the file's: a plan depends on the tensors,
        // not on where a format put them.
        let mut end = 0;
        for t in &mut tensors {
            t.start = end;
            end += t.bytes();
            t.end = end;
        }
        Ok(Plan {
            tensors,
            steps,
            shapes,
        })
    }

    /// The tensors the steps use, each once, in the order of [`Arch::tensor_names`]: their
    /// header entries with `start` and `end` their places in the weights laid end to end
    /// in that order (where a file keeps them is the file's business), so that the same
    /// tensors give the same plan from any file, or from memory.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// The steps, one per layer of the architecture.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The shape of each step's input, then of the output: one more than the steps.
    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }

    /// The shape of one input, `[channels, height, width]`.
    pub fn input(&self) -> [usize; 3] {
        match self.shapes[0] {
            Shape::Image(d) => d,
            Shape::Vector(_) => unreachable!("a plan's input is an image"),
        }
    }

    /// Number of outputs (logits) per input.
    pub fn outputs(&self) -> usize {
        self.shapes[self.shapes.len() - 1].len()
    }

    /// Values each step writes per image: the length of its output.
    pub fn elements(&self, step: usize) -> usize {
        self.shapes[step + 1].len()
    }

    /// Step `step` as a matrix product, if it is a conv or dense layer.
    pub fn product(&self, step: usize) -> Option<Product> {
        match self.steps[step] {
            Step::Conv {
                out_channels,
                in_channels,
                kernel: [kh, kw],
                ..
            } => {
                let Shape::Image([_, oh, ow]) = self.shapes[step + 1] else {
                    unreachable!("a conv outputs an image")
                };
                Some(Product {
                    rows: oh * ow,
                    n: out_channels,
                    k: in_channels * kh * kw,
                })
            }
            Step::Dense {
                inputs, outputs, ..
            } => Some(Product {
                rows: 1,
                n: outputs,
                k: inputs,
            }),
            Step::MaxPool { .. } | Step::Relu | Step::Flatten => None,
        }
    }

    /// Bytes of the weights, all tensors together, as stored.
    pub fn weight_bytes(&self) -> u64 {
        self.tensors.iter().map(TensorEntry::bytes).sum()
    }
}

/// The product of `dims`, if it is at most [`MAX_VALUES`].
pub(crate) fn checked_len(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_VALUES)
}

/// Checks that a bias tensor has one value per output channel or unit.
fn check_bias(layer: usize, t: &TensorEntry, outputs: usize) -> Result<()> {
    if t.shape[0] != outputs {
        return Err(Error::Invalid(format!(
            "layer {layer}: bias {:?} has {} values for {outputs} outputs",
            t.name, t.shape[0]
        )));
    }
    Ok(())
}
