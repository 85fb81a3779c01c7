//! [`GpuModel`]: the same [`Arch`] the CPU reference runs, on the GPU, with the weights
//! of a locked file either left locked in GPU memory and decoded inside the matmul
//! kernels at every query ([`Unlock::PerQuery`], the fused kernels of
//! [`crate::gpu::FusedMatmul`]: no buffer ever holds plaintext weights), or unlocked once
//! at load by [`GpuLocker`] into plain buffers that the same kernels then read as they are
//! ([`Unlock::AtLoad`]). Comparing the two gives the price of never unlocking.
//!
//! Loading plans the architecture from the file's header alone ([`Plan`]) and uploads
//! each tensor's bytes as the file stores them, locked or not, F32, F16 or BF16: the
//! kernels decode them. No weight is ever decoded on the host.
//!
//! Activations are NHWC on the GPU. A convolution is the fused GEMM as an implicit GEMM
//! ([`FusedMatmul::encode_conv`]: it reads the input image where an im2col matrix with
//! rows `(b, oy, ox)` and columns `(c, ky, kx)` would be, without building it): a PyTorch
//! conv weight `[out, in, kh, kw]` is, byte for byte, the Linear matrix
//! `[out, in * kh * kw]` the GEMM takes, so locked conv weights are used as stored, and
//! the GEMM's `[rows, out]` result is the NHWC output. Max-pool, ReLU and flatten (back to
//! PyTorch's `(c, y, x)` order, which dense weights were trained on) are small kernels of
//! their own. Every buffer, bind group and pipeline is made at load for a maximum batch;
//! a forward pass is one command encoder and one submission.

use std::sync::Mutex;

use wgpu::util::DeviceExt;

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::gpu::{
    f32s, read_mapped, storage_layout, uniform_layout, ConvInput, FusedMatmul, GpuContext,
    GpuLocker, GpuTensor, Kernel, Linear, MatmulShape, Region, TensorKey,
};
use crate::infer::arch::Arch;
use crate::infer::file::ModelFile;
use crate::infer::plan::{Plan, Shape, Step};
use crate::infer::reference::{argmax, check_batch};
use crate::key::MasterKey;
use crate::scheme::{Direction, TensorCipher};

const COMMON_WGSL: &str = include_str!("../../shaders/infer_common.wgsl");
const MAXPOOL_WGSL: &str = include_str!("../../shaders/infer_maxpool.wgsl");
const RELU_WGSL: &str = include_str!("../../shaders/infer_relu.wgsl");
const FLATTEN_WGSL: &str = include_str!("../../shaders/infer_flatten.wgsl");

/// Invocations per workgroup of the layer kernels: `WORKGROUP` of infer_common.wgsl,
/// a pipeline constant set from this one.
const WORKGROUP: u32 = 256;

/// When the weights of a locked model are unlocked on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unlock {
    /// Never into memory: every query decodes the weights inside the matmul kernels.
    PerQuery,
    /// Once, at load, into plain GPU buffers; queries then run the plain kernels.
    AtLoad,
}

impl Unlock {
    /// `per-query` or `at-load`.
    pub fn name(self) -> &'static str {
        match self {
            Unlock::PerQuery => "per-query",
            Unlock::AtLoad => "at-load",
        }
    }
}

/// `Params` of infer_common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    total: u32,
    h: u32,
    w: u32,
    c: u32,
    oh: u32,
    ow: u32,
    size: u32,
    unused: u32,
}

/// The layer kernels.
#[derive(Clone, Copy, Debug)]
enum Op {
    MaxPool,
    Relu,
    Flatten,
}

/// The dispatch of a step of the plan that is a layer kernel, bound to its activations:
/// `params.total` is per image and scaled by the batch at each forward.
struct LayerPass {
    op: Op,
    params: Params,
    uniform: wgpu::Buffer,
    group: wgpu::BindGroup,
}

/// A weight or bias on the GPU, as the file stores it, with its cipher when it is still
/// locked there.
struct Weight {
    buffer: wgpu::Buffer,
    dtype: Dtype,
    cipher: Option<TensorCipher>,
}

/// What one forward pass writes: the activations (`[0]` the input, `[i + 1]` the output
/// of step `i`), the layer kernels' uniforms and the read-back buffer.
struct Buffers {
    acts: Vec<wgpu::Buffer>,
    staging: wgpu::Buffer,
    /// One per step; `None` for conv and dense steps (the matmul makes its own uniforms).
    layers: Vec<Option<LayerPass>>,
}

/// A model loaded onto the GPU, ready to run batches of up to [`GpuModel::max_batch`]
/// inputs (larger ones run in pieces). `Sync`: threads may share one and call
/// [`GpuModel::forward`] at once; their passes take turns on the model's buffers.
pub struct GpuModel {
    ctx: GpuContext,
    matmul: FusedMatmul,
    pipelines: [wgpu::ComputePipeline; 3],
    plan: Plan,
    /// One per tensor of the plan.
    weights: Vec<Weight>,
    /// Held from the input's upload to the logits' read-back: the queue runs the writes
    /// of every thread at its next submission, so two passes on one set of buffers
    /// would compute on each other's inputs and map one staging buffer twice.
    buffers: Mutex<Buffers>,
    max_batch: usize,
    locked: bool,
}

impl GpuModel {
    /// Loads the model described by `arch` from the safetensors file at `path` onto
    /// `ctx`'s device, for batches of up to `max_batch` inputs. A locked file needs `key`;
    /// a v2 file is authenticated as [`crate::infer::Model::load`] says, each tensor
    /// checked before it is uploaded (a wrong key, an edited header or a changed tensor
    /// is refused; for v1 a wrong key loads, as a useless model); `unlock`
    /// says when its weights are unlocked. A plain file runs the plain kernels whatever
    /// `unlock` says. Weights may be F32, F16 or BF16, as the file stores them.
    ///
    /// Errors: the file's ([`Error::Format`]) where it does not fit `arch`; an
    /// [`Error::Invalid`] where an activation of `max_batch` inputs is larger than the
    /// device binds; an [`Error::Gpu`] where the device refuses the buffers (out of
    /// memory).
    pub fn load(
        ctx: &GpuContext,
        path: &std::path::Path,
        arch: &Arch,
        key: Option<&MasterKey>,
        unlock: Unlock,
        max_batch: usize,
    ) -> Result<Self> {
        let file = ModelFile::open(path, arch, key, true, |_, _| Ok(()))?;
        Self::from_file(ctx, file, unlock, max_batch)
    }

    /// [`GpuModel::load`] without v2's checks, the key's included, as
    /// [`crate::infer::Model::load_unauthenticated`]: for experiments, never for serving.
    pub fn load_unauthenticated(
        ctx: &GpuContext,
        path: &std::path::Path,
        arch: &Arch,
        key: Option<&MasterKey>,
        unlock: Unlock,
        max_batch: usize,
    ) -> Result<Self> {
        let file = ModelFile::open(path, arch, key, false, |_, _| Ok(()))?;
        Self::from_file(ctx, file, unlock, max_batch)
    }

    fn from_file(
        ctx: &GpuContext,
        mut file: ModelFile,
        unlock: Unlock,
        max_batch: usize,
    ) -> Result<Self> {
        if max_batch == 0 {
            return Err(Error::Invalid(
                "the maximum batch must be at least 1".into(),
            ));
        }
        // Whether any tensor the model uses is locked.
        let locked = file.ciphers.iter().any(Option::is_some);
        ctx.catch("loading the model onto the GPU", || {
            let mut weights = upload(ctx, &mut file)?;
            if unlock == Unlock::AtLoad {
                unlock_at_load(ctx, &mut weights)?;
            }
            Self::build(ctx, file.plan, weights, max_batch, locked)
        })
    }

    /// Lays out the activations and the layer kernels' bindings of `plan`.
    fn build(
        ctx: &GpuContext,
        plan: Plan,
        weights: Vec<Weight>,
        max_batch: usize,
        locked: bool,
    ) -> Result<Self> {
        let device = ctx.device();
        let limits = device.limits();
        let max_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let shapes = plan.shapes();
        let acts = shapes
            .iter()
            .enumerate()
            .map(|(i, shape)| {
                let what = match i {
                    0 => "input".to_owned(),
                    _ => format!("output of layer {}", i - 1),
                };
                let per_image = shape.len() as u64;
                let bytes = (4 * per_image).saturating_mul(max_batch as u64);
                if bytes > max_bytes || per_image * max_batch as u64 > u64::from(u32::MAX) {
                    return Err(Error::Invalid(format!(
                        "the {what} of a batch of {max_batch} is {bytes} bytes, more than this GPU binds ({max_bytes}); use a smaller batch"
                    )));
                }
                Ok(device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("deeplock infer {what}")),
                    size: bytes,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let kernels = LayerKernels::new(device);
        let u = |v: usize| v as u32;
        let layers = plan
            .steps()
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let total = u(plan.elements(i));
                let (op, params) = match (*step, shapes[i], shapes[i + 1]) {
                    (Step::Conv { .. } | Step::Dense { .. }, _, _) => return None,
                    (
                        Step::MaxPool { size },
                        Shape::Image([c, h, w]),
                        Shape::Image([_, oh, ow]),
                    ) => {
                        let params = Params {
                            total,
                            h: u(h),
                            w: u(w),
                            c: u(c),
                            oh: u(oh),
                            ow: u(ow),
                            size: u(size),
                            ..Params::default()
                        };
                        (Op::MaxPool, params)
                    }
                    (Step::Relu, _, _) => (
                        Op::Relu,
                        Params {
                            total,
                            ..Params::default()
                        },
                    ),
                    (Step::Flatten, Shape::Image([c, h, w]), _) => {
                        let params = Params {
                            total,
                            h: u(h),
                            w: u(w),
                            c: u(c),
                            ..Params::default()
                        };
                        (Op::Flatten, params)
                    }
                    (s, shape, _) => unreachable!("the plan checked shapes: {s:?} on {shape:?}"),
                };
                let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("deeplock infer layer params"),
                    size: std::mem::size_of::<Params>() as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let group = kernels.bind(device, &acts[i], &acts[i + 1], &uniform);
                Some(LayerPass {
                    op,
                    params,
                    uniform,
                    group,
                })
            })
            .collect();
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("deeplock infer logits read-back"),
            size: 4 * (plan.outputs() * max_batch) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(GpuModel {
            matmul: FusedMatmul::new(ctx),
            ctx: ctx.clone(),
            pipelines: kernels.pipelines,
            plan,
            weights,
            buffers: Mutex::new(Buffers {
                acts,
                staging,
                layers,
            }),
            max_batch,
            locked,
        })
    }

    /// The most inputs one submission runs.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Number of outputs (logits) per input.
    pub fn outputs(&self) -> usize {
        self.plan.outputs()
    }

    /// The plan the model runs: shapes, tensor sizes and types, products.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Whether weights stay locked on the GPU and are decoded at every query.
    pub fn decodes_per_query(&self) -> bool {
        self.weights.iter().any(|w| w.cipher.is_some())
    }

    /// Whether the file was locked (whichever [`Unlock`] mode it was loaded with).
    pub fn file_was_locked(&self) -> bool {
        self.locked
    }

    /// The context the model runs on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Runs a batch of `batch` inputs, NCHW as [`crate::infer::Model::forward`] takes
    /// them; returns the logits, `[batch, outputs]` row-major. Batches above
    /// [`GpuModel::max_batch`] run in pieces, one submission each. Threads may call it
    /// at once on one model: each gets the logits of its own inputs.
    pub fn forward(&self, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        let per = check_batch(Shape::Image(self.plan.input()), input, batch)?;
        let mut logits = Vec::with_capacity(batch * self.outputs());
        for piece in input.chunks(per * self.max_batch) {
            logits.extend(self.forward_piece(piece, piece.len() / per)?);
        }
        Ok(logits)
    }

    /// The predicted class of each input: [`argmax`] of its logits.
    pub fn predict(&self, input: &[f32], batch: usize) -> Result<Vec<usize>> {
        let logits = self.forward(input, batch)?;
        Ok(logits.chunks(self.outputs()).map(argmax).collect())
    }

    /// The weight or bias operand of plan tensor `i`.
    fn tensor(&self, i: usize) -> GpuTensor<'_> {
        let t = &self.weights[i];
        GpuTensor {
            buffer: &t.buffer,
            offset: 0,
            dtype: t.dtype,
            locked: t.cipher.as_ref().map(|cipher| TensorKey {
                cipher,
                tensor_offset: 0,
            }),
        }
    }

    /// One submission of at most `max_batch` inputs.
    fn forward_piece(&self, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        let [c, h, w] = self.plan.input();
        // NCHW to NHWC on the host: a copy of the input, small next to the layers.
        let mut nhwc = vec![0f32; input.len()];
        for (b, image) in input.chunks_exact(c * h * w).enumerate() {
            let out = &mut nhwc[b * c * h * w..][..c * h * w];
            for (ch, plane) in image.chunks_exact(h * w).enumerate() {
                for (p, &v) in plane.iter().enumerate() {
                    out[p * c + ch] = v;
                }
            }
        }
        // A panic elsewhere while holding it leaves nothing half-done that matters: the
        // next pass rewrites every buffer it reads.
        let buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let Buffers {
            acts,
            staging,
            layers,
        } = &*buffers;
        let queue = self.ctx.queue();
        queue.write_buffer(&acts[0], 0, bytemuck::cast_slice(&nhwc));
        let device = self.ctx.device();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("deeplock infer forward"),
        });
        let u = |v: usize| v as u32;
        for (i, step) in self.plan.steps().iter().enumerate() {
            if let Some(LayerPass {
                op,
                params,
                uniform,
                group,
            }) = &layers[i]
            {
                let total = u64::from(params.total) * batch as u64;
                let p = Params {
                    total: total as u32,
                    ..*params
                };
                queue.write_buffer(uniform, 0, bytemuck::bytes_of(&p));
                let groups = total.div_ceil(u64::from(WORKGROUP));
                // Workgroups per dispatch row, as the device allows; rows beyond it.
                let x = groups.min(u64::from(
                    device.limits().max_compute_workgroups_per_dimension,
                ));
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&self.pipelines[*op as usize]);
                pass.set_bind_group(0, group, &[]);
                pass.dispatch_workgroups(x as u32, groups.div_ceil(x) as u32, 1);
                continue;
            }
            let product = self.plan.product(i).expect("a conv or dense step");
            let (weight, bias, conv) = match *step {
                Step::Conv {
                    weight,
                    bias,
                    in_channels,
                    kernel,
                    pad,
                    ..
                } => {
                    let Shape::Image([_, h, w]) = self.plan.shapes()[i] else {
                        unreachable!("a conv takes an image")
                    };
                    let conv = ConvInput {
                        height: u(h),
                        width: u(w),
                        channels: u(in_channels),
                        kernel: kernel.map(u),
                        pad: pad.map(u),
                    };
                    (weight, bias, Some(conv))
                }
                Step::Dense { weight, bias, .. } => (weight, bias, None),
                _ => unreachable!("layer kernels are bound"),
            };
            let op = Linear {
                x: &acts[i],
                w: self.tensor(weight),
                bias: Some(self.tensor(bias)),
                y: &acts[i + 1],
                shape: MatmulShape {
                    m: u(product.rows * batch),
                    n: u(product.n),
                    k: u(product.k),
                },
                kernel: Kernel::Auto,
            };
            match &conv {
                Some(input) => self.matmul.encode_conv(&mut encoder, &op, input, None)?,
                None => self.matmul.encode(&mut encoder, &op, None)?,
            };
        }
        let bytes = 4 * (batch * self.outputs()) as u64;
        let logits = acts.last().expect("an input and an output");
        encoder.copy_buffer_to_buffer(logits, 0, staging, 0, bytes);
        let submission = queue.submit([encoder.finish()]);
        read_mapped(
            &self.ctx,
            staging,
            0..bytes,
            Some(submission),
            "logits",
            f32s,
        )
    }
}

/// Uploads each of the plan's tensors from `file` as stored, one at a time (the host
/// holds one tensor's bytes at once, never decoded).
fn upload(ctx: &GpuContext, file: &mut ModelFile) -> Result<Vec<Weight>> {
    let mut bytes = Vec::new();
    let mut weights = Vec::with_capacity(file.plan.tensors().len());
    for i in 0..file.plan.tensors().len() {
        let t = &file.plan.tensors()[i];
        let dtype = t.dtype;
        let label = format!("deeplock infer {}", t.name);
        bytes.clear();
        // Whole words: storage bindings are arrays of u32.
        bytes.resize(file.len(i)?.next_multiple_of(4).max(4), 0);
        let len = file.len(i)?;
        file.read(i, &mut bytes[..len])?;
        let buffer = ctx
            .device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(&label),
                contents: &bytes,
                usage: wgpu::BufferUsages::STORAGE,
            });
        weights.push(Weight {
            buffer,
            dtype,
            cipher: file.ciphers[i].take(),
        });
    }
    Ok(weights)
}

/// Unlocks the locked `weights` in place on the GPU, in one submission, and forgets
/// their ciphers: the plain kernels then read them.
fn unlock_at_load(ctx: &GpuContext, weights: &mut [Weight]) -> Result<()> {
    if weights.iter().all(|w| w.cipher.is_none()) {
        return Ok(());
    }
    let locker = GpuLocker::new(ctx);
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    for w in weights.iter_mut() {
        if let Some(cipher) = w.cipher.take() {
            let region = Region {
                cipher: &cipher,
                tensor_offset: 0,
                range: 0..w.buffer.size(),
            };
            locker.encode(&mut encoder, &w.buffer, Direction::Unlock, &[region], None)?;
        }
    }
    let submission = ctx.queue().submit([encoder.finish()]);
    ctx.wait(Some(submission))
}

/// The layer kernels' shared bind group layout and their pipelines, in [`Op`] order.
struct LayerKernels {
    layout: wgpu::BindGroupLayout,
    pipelines: [wgpu::ComputePipeline; 3],
}

impl LayerKernels {
    fn new(device: &wgpu::Device) -> Self {
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("deeplock infer layer (src, dst, params)"),
            entries: &[
                storage_layout(0, true, 4),
                storage_layout(1, false, 4),
                uniform_layout(2, false, std::mem::size_of::<Params>() as u64),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("deeplock infer layer pipeline layout"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = |label: &str, source: &str, entry: &str| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(format!("{COMMON_WGSL}\n{source}").into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[("WORKGROUP", f64::from(WORKGROUP))],
                    ..Default::default()
                },
                cache: None,
            })
        };
        LayerKernels {
            pipelines: [
                pipeline("deeplock infer_maxpool.wgsl", MAXPOOL_WGSL, "maxpool_main"),
                pipeline("deeplock infer_relu.wgsl", RELU_WGSL, "relu_main"),
                pipeline("deeplock infer_flatten.wgsl", FLATTEN_WGSL, "flatten_main"),
            ],
            layout,
        }
    }

    fn bind(
        &self,
        device: &wgpu::Device,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        params: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("deeplock infer layer"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: src.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: dst.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: params.as_entire_binding(),
                },
            ],
        })
    }
}

/// The layout of [`Params`], for `gpu::layout_tests`.
#[cfg(test)]
pub(crate) fn layouts() -> Vec<crate::gpu::Layout> {
    use std::mem::offset_of;
    vec![crate::gpu::Layout::new::<Params>(
        "Params",
        &[
            ("total", offset_of!(Params, total)),
            ("h", offset_of!(Params, h)),
            ("w", offset_of!(Params, w)),
            ("c", offset_of!(Params, c)),
            ("oh", offset_of!(Params, oh)),
            ("ow", offset_of!(Params, ow)),
            ("size", offset_of!(Params, size)),
            ("unused", offset_of!(Params, unused)),
        ],
    )]
}

/// The layer kernels' WGSL, each composed after infer_common.wgsl.
#[cfg(test)]
pub(crate) fn sources() -> Vec<String> {
    [MAXPOOL_WGSL, RELU_WGSL, FLATTEN_WGSL]
        .map(|s| format!("{COMMON_WGSL}\n{s}"))
        .to_vec()
}
