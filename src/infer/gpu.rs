//! [`GpuModel`]: the same [`Arch`] the CPU reference runs, on the GPU, with the weights
//! of a locked file either left locked in GPU memory and decoded inside the matmul
//! kernels at every query ([`Unlock::PerQuery`], the fused kernels of
//! [`crate::gpu::FusedMatmul`]: no buffer ever holds plaintext weights), or unlocked once
//! at load by [`GpuLocker`] into plain buffers that the same kernels then read as they are
//! ([`Unlock::AtLoad`]). Comparing the two gives the price of never unlocking.
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

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::{
    f32s, read_mapped, storage_layout, uniform_layout, ConvInput, FusedMatmul, GpuContext,
    GpuLocker, GpuTensor, Kernel, Linear, MatmulShape, Region, TensorKey, WeightDtype,
};
use crate::infer::arch::{Arch, LayerSpec};
use crate::infer::cpu::argmax;
use crate::infer::model::{Layer, Model, RawTensor, RawTensors, Shape};
use crate::key::MasterKey;
use crate::scheme::{Direction, TensorCipher};

const COMMON_WGSL: &str = include_str!("../../shaders/infer_common.wgsl");
const MAXPOOL_WGSL: &str = include_str!("../../shaders/infer_maxpool.wgsl");
const RELU_WGSL: &str = include_str!("../../shaders/infer_relu.wgsl");
const FLATTEN_WGSL: &str = include_str!("../../shaders/infer_flatten.wgsl");

/// Invocations per workgroup of the layer kernels (`WORKGROUP` in infer_common.wgsl).
const WORKGROUP: u64 = 256;
/// Workgroups per dispatch row; more rows are used beyond it.
const MAX_GROUPS_X: u64 = 65_535;

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

/// One dispatch of a forward pass.
enum Step {
    /// A layer kernel from activation `src` to activation `dst`; `params.total` is per
    /// image and scaled by the batch at each forward.
    Layer {
        op: Op,
        params: Params,
        uniform: wgpu::Buffer,
        group: wgpu::BindGroup,
    },
    /// `act[y] = act[x] · weights[w]ᵀ + weights[b]`, `rows` matrix rows per image; with
    /// `conv`, `act[x]` is the images the rows are gathered from.
    Matmul {
        x: usize,
        y: usize,
        w: usize,
        b: usize,
        rows: u32,
        n: u32,
        k: u32,
        conv: Option<ConvInput>,
    },
}

/// A step of [`GpuModel::build`]'s plan: a layer kernel from activation to activation,
/// bound once every activation buffer exists, or a finished step.
enum Planned {
    Layer(usize, usize, Op, Params),
    Step(Step),
}

/// A weight or bias on the GPU, with its cipher when it is still locked there.
struct Weight {
    buffer: wgpu::Buffer,
    cipher: Option<TensorCipher>,
}

/// What one forward pass writes: the activations, the layer kernels' uniforms (inside
/// `steps`) and the read-back buffer. One pass at a time owns it (see
/// [`GpuModel::forward`]).
struct Buffers {
    /// Activations: `[0]` the input, the last the logits.
    acts: Vec<wgpu::Buffer>,
    staging: wgpu::Buffer,
    steps: Vec<Step>,
}

/// A model loaded onto the GPU, ready to run batches of up to [`GpuModel::max_batch`]
/// inputs (larger ones run in pieces). `Sync`: threads may share one and call
/// [`GpuModel::forward`] at once; their passes take turns on the model's buffers.
pub struct GpuModel {
    ctx: GpuContext,
    matmul: FusedMatmul,
    pipelines: [wgpu::ComputePipeline; 3],
    weights: Vec<Weight>,
    /// Held from the input's upload to the logits' read-back: the queue runs the writes
    /// of every thread at its next submission, so two passes on one set of buffers
    /// would compute on each other's inputs and map one staging buffer twice.
    buffers: std::sync::Mutex<Buffers>,
    input: [usize; 3],
    outputs: usize,
    max_batch: usize,
    locked: bool,
}

impl GpuModel {
    /// Loads the model described by `arch` from the safetensors file at `path` onto
    /// `ctx`'s device, for batches of up to `max_batch` inputs. A locked file needs `key`
    /// (a wrong one loads, as a useless model, as [`Model::load`]); `unlock` says when its
    /// weights are unlocked. A plain file runs the plain kernels whatever `unlock` says.
    /// Errors where an activation of `max_batch` inputs is larger than the device binds.
    pub fn load(
        ctx: &GpuContext,
        path: &std::path::Path,
        arch: &Arch,
        key: Option<&MasterKey>,
        unlock: Unlock,
        max_batch: usize,
    ) -> Result<Self> {
        let raw = RawTensors::read(path, arch)?;
        let ciphers: Vec<Option<TensorCipher>> = match (&raw.lock, key) {
            (None, _) => vec![None; raw.tensors.len()],
            (Some(info), Some(key)) => raw
                .tensors
                .iter()
                .map(|t| {
                    info.locked
                        .contains(&t.name)
                        .then(|| TensorCipher::for_tensor(key, &info.salt, &t.name))
                })
                .collect(),
            (Some(_), None) => return Err(Error::format(
                path,
                "the model is locked (it has deeplock metadata); pass the key it was locked with",
            )),
        };
        ctx.catch("loading the model onto the GPU", || {
            let device = ctx.device();
            let mut weights: Vec<Weight> = raw
                .tensors
                .iter()
                .zip(ciphers)
                .map(|(t, cipher)| Weight {
                    buffer: device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some(&format!("deeplock infer {}", t.name)),
                        contents: &t.bytes,
                        usage: wgpu::BufferUsages::STORAGE,
                    }),
                    cipher,
                })
                .collect();
            let names: Vec<String> = raw.tensors.iter().map(|t| t.name.clone()).collect();
            let locked = weights.iter().any(|w| w.cipher.is_some());
            // Shapes only: the values of a locked file are noise here and are dropped.
            let model = Model::new(
                arch,
                &raw.tensors
                    .into_iter()
                    .map(RawTensor::into_tensor)
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| Error::format(path, e.to_string()))?;
            if unlock == Unlock::AtLoad && locked {
                let locker = GpuLocker::new(ctx);
                let mut encoder = device.create_command_encoder(&Default::default());
                for w in &mut weights {
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
                wait(ctx, Some(submission))?;
            }
            // Not the file's fault: what the GPU cannot hold or refuses is reported as such.
            Self::build(ctx, arch, &model, &names, weights, max_batch, locked)
        })
    }

    /// Lays out the activations and the steps of `model`, whose tensors are `weights`
    /// (named `names`, in [`Arch::tensor_names`] order).
    fn build(
        ctx: &GpuContext,
        arch: &Arch,
        model: &Model,
        names: &[String],
        weights: Vec<Weight>,
        max_batch: usize,
        locked: bool,
    ) -> Result<Self> {
        if max_batch == 0 {
            return Err(Error::Invalid(
                "the maximum batch must be at least 1".into(),
            ));
        }
        let device = ctx.device();
        let limits = device.limits();
        let max_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let mut acts: Vec<wgpu::Buffer> = Vec::new();
        let mut alloc = |per_image: usize, what: &str| -> Result<usize> {
            let bytes = (4 * per_image as u64).saturating_mul(max_batch as u64);
            if bytes > max_bytes || per_image as u64 * max_batch as u64 > u64::from(u32::MAX) {
                return Err(Error::Invalid(format!(
                    "the {what} of a batch of {max_batch} is {bytes} bytes, more than this GPU binds ({max_bytes}); use a smaller batch"
                )));
            }
            acts.push(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("deeplock infer {what}")),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }));
            Ok(acts.len() - 1)
        };
        let shapes = model.shapes();
        let mut cur = alloc(shapes[0].len(), "input")?;
        // Layer kernels are bound once every activation buffer exists.
        let mut plan: Vec<Planned> = Vec::new();
        let u = |v: usize| v as u32;
        for (i, layer) in model.layers().iter().enumerate() {
            let (input, output) = (shapes[i], shapes[i + 1]);
            let out_len = output.len();
            match (layer, input, output) {
                (Layer::Conv(c), Shape::Image([ci, h, w]), Shape::Image([co, oh, ow])) => {
                    let out = alloc(out_len, &format!("layer {i} conv"))?;
                    let (wi, bi) = layer_tensors(arch, i, names);
                    plan.push(Planned::Step(Step::Matmul {
                        x: cur,
                        y: out,
                        w: wi,
                        b: bi,
                        rows: u(oh * ow),
                        n: u(co),
                        k: u(ci * c.kernel[0] * c.kernel[1]),
                        conv: Some(ConvInput {
                            height: u(h),
                            width: u(w),
                            channels: u(ci),
                            kernel: [u(c.kernel[0]), u(c.kernel[1])],
                            pad: [u(c.pad[0]), u(c.pad[1])],
                        }),
                    }));
                    cur = out;
                }
                (&Layer::MaxPool { size }, Shape::Image([c, h, w]), Shape::Image([_, oh, ow])) => {
                    let out = alloc(out_len, &format!("layer {i} maxpool"))?;
                    let params = Params {
                        total: u(out_len),
                        h: u(h),
                        w: u(w),
                        c: u(c),
                        oh: u(oh),
                        ow: u(ow),
                        size: u(size),
                        ..Params::default()
                    };
                    plan.push(Planned::Layer(cur, out, Op::MaxPool, params));
                    cur = out;
                }
                (Layer::Relu, _, _) => {
                    let out = alloc(out_len, &format!("layer {i} relu"))?;
                    let params = Params {
                        total: u(out_len),
                        ..Params::default()
                    };
                    plan.push(Planned::Layer(cur, out, Op::Relu, params));
                    cur = out;
                }
                (Layer::Flatten, Shape::Image([c, h, w]), _) => {
                    let out = alloc(out_len, &format!("layer {i} flatten"))?;
                    let params = Params {
                        total: u(out_len),
                        h: u(h),
                        w: u(w),
                        c: u(c),
                        ..Params::default()
                    };
                    plan.push(Planned::Layer(cur, out, Op::Flatten, params));
                    cur = out;
                }
                (Layer::Dense(d), _, _) => {
                    let out = alloc(out_len, &format!("layer {i} dense"))?;
                    let (wi, bi) = layer_tensors(arch, i, names);
                    plan.push(Planned::Step(Step::Matmul {
                        x: cur,
                        y: out,
                        w: wi,
                        b: bi,
                        rows: 1,
                        n: u(d.outputs),
                        k: u(d.inputs),
                        conv: None,
                    }));
                    cur = out;
                }
                (l, s, _) => unreachable!("Model::new checked shapes: {l:?} on {s:?}"),
            }
        }
        let kernels = LayerKernels::new(device);
        let steps = plan
            .into_iter()
            .map(|planned| match planned {
                Planned::Layer(src, dst, op, params) => {
                    let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("deeplock infer layer params"),
                        size: std::mem::size_of::<Params>() as u64,
                        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    let group = kernels.bind(device, &acts[src], &acts[dst], &uniform);
                    Step::Layer {
                        op,
                        params,
                        uniform,
                        group,
                    }
                }
                Planned::Step(step) => step,
            })
            .collect();
        let outputs = model.outputs();
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("deeplock infer logits read-back"),
            size: 4 * (outputs * max_batch) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let Shape::Image(input) = shapes[0] else {
            unreachable!("a model's input is an image")
        };
        Ok(GpuModel {
            matmul: FusedMatmul::new(ctx),
            ctx: ctx.clone(),
            pipelines: kernels.pipelines,
            weights,
            buffers: std::sync::Mutex::new(Buffers {
                acts,
                staging,
                steps,
            }),
            input,
            outputs,
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
        self.outputs
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

    /// Runs a batch of `batch` inputs, NCHW as [`Model::forward`] takes them; returns the
    /// logits, `[batch, outputs]` row-major. Batches above [`GpuModel::max_batch`] run
    /// in pieces, one submission each.
    pub fn forward(&self, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        let [c, h, w] = self.input;
        let per = c * h * w;
        if batch.checked_mul(per) != Some(input.len()) {
            return Err(Error::Invalid(format!(
                "a batch of {batch} inputs of shape {:?} has {} values, {} were given",
                self.input,
                batch.saturating_mul(per),
                input.len()
            )));
        }
        let mut logits = Vec::with_capacity(batch * self.outputs);
        for piece in input.chunks(per * self.max_batch) {
            logits.extend(self.forward_piece(piece, piece.len() / per)?);
        }
        Ok(logits)
    }

    /// The predicted class of each input: [`argmax`] of its logits.
    pub fn predict(&self, input: &[f32], batch: usize) -> Result<Vec<usize>> {
        let logits = self.forward(input, batch)?;
        Ok(logits.chunks(self.outputs).map(argmax).collect())
    }

    /// One submission of at most `max_batch` inputs.
    fn forward_piece(&self, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        let [c, h, w] = self.input;
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
            steps,
        } = &*buffers;
        let queue = self.ctx.queue();
        queue.write_buffer(&acts[0], 0, bytemuck::cast_slice(&nhwc));
        let device = self.ctx.device();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("deeplock infer forward"),
        });
        for step in steps {
            match step {
                Step::Layer {
                    op,
                    params,
                    uniform,
                    group,
                } => {
                    let total = u64::from(params.total) * batch as u64;
                    let p = Params {
                        total: total as u32,
                        ..*params
                    };
                    queue.write_buffer(uniform, 0, bytemuck::bytes_of(&p));
                    let groups = total.div_ceil(WORKGROUP);
                    let x = groups.min(MAX_GROUPS_X);
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&self.pipelines[*op as usize]);
                    pass.set_bind_group(0, group, &[]);
                    pass.dispatch_workgroups(x as u32, groups.div_ceil(x) as u32, 1);
                }
                &Step::Matmul {
                    x,
                    y,
                    w,
                    b,
                    rows,
                    n,
                    k,
                    conv,
                } => {
                    let tensor = |i: usize| {
                        let t = &self.weights[i];
                        GpuTensor {
                            buffer: &t.buffer,
                            offset: 0,
                            dtype: WeightDtype::F32,
                            locked: t.cipher.as_ref().map(|cipher| TensorKey {
                                cipher,
                                tensor_offset: 0,
                            }),
                        }
                    };
                    let op = Linear {
                        x: &acts[x],
                        w: tensor(w),
                        bias: Some(tensor(b)),
                        y: &acts[y],
                        shape: MatmulShape {
                            m: rows * batch as u32,
                            n,
                            k,
                        },
                        kernel: Kernel::Auto,
                    };
                    match &conv {
                        Some(input) => self.matmul.encode_conv(&mut encoder, &op, input, None)?,
                        None => self.matmul.encode(&mut encoder, &op, None)?,
                    };
                }
            }
        }
        let bytes = 4 * (batch * self.outputs) as u64;
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

/// The indices in `names` of the weight and bias of conv or dense layer `i` of `arch`.
fn layer_tensors(arch: &Arch, i: usize, names: &[String]) -> (usize, usize) {
    let (w, b) = match &arch.layers[i] {
        LayerSpec::Conv(c) => (&c.weight, &c.bias),
        LayerSpec::Dense(d) => (&d.weight, &d.bias),
        l => unreachable!("layer {i} ({l:?}) has no weights"),
    };
    let index = |name: &String| names.iter().position(|n| n == name).expect("tensor read");
    (index(w), index(b))
}

/// Waits for `submission` (or all work).
fn wait(ctx: &GpuContext, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
    ctx.device()
        .poll(wgpu::PollType::Wait {
            submission_index: submission,
            timeout: None,
        })
        .map(drop)
        .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))
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
                compilation_options: Default::default(),
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
