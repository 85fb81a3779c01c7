//! [`FusedMatmul`]: `Y = X · Wᵀ + b` on the GPU with `W` (and `b`) still locked, for
//! inference that never unlocks a model into GPU memory.
//!
//! The kernels (`shaders/matmul_gemm.wgsl`, `shaders/matmul_gemv.wgsl`, after
//! `aes_ctr.wgsl` and `matmul_common.wgsl`) load locked weight bytes from storage,
//! compute the deeplock v1 keystream for each 16-byte block they load, undo the S-box
//! layer in registers and multiply: the GEMM through a decoded tile in workgroup memory
//! shared by up to 64, 128 or 256 batch rows, the GEMV straight from registers.
//!
//! **Property: no storage buffer ever holds plaintext weights.** The only buffers an
//! [`FusedMatmul::encode`] binds are the caller's X, locked W, bias and Y, the shared
//! AES lookup tables (public constants), one uniform buffer per call holding the
//! round keys and the dispatch parameters, which the call clears once the pass has run,
//! and, for a GEMM whose K is split over several workgroups, a scratch buffer of partial
//! sums of products (never weights).
//! Plaintext weights exist only in registers and in workgroup memory, for the duration
//! of a workgroup (the GEMM zeroes its decoded tile before it ends). What it does not
//! cover is in docs/FUSED.md.
//!
//! The same kernels run on plaintext weights (`locked: None`): one WGSL source, a
//! pipeline constant switching the decode off, so plain and fused timings differ by the
//! decode alone.
//!
//! The parts: [`types`] (the public operand and shape types), [`abi`] (the Rust twins
//! of the shaders' uniform structs), [`plan`] (the dispatch policy: variant, grid,
//! split-K, pure and tested without a GPU), [`pipelines`] (the pipeline cache); this
//! file binds operands and records passes.

mod abi;
mod pipelines;
pub(crate) mod plan;
mod types;

use std::sync::Mutex;

use wgpu::util::DeviceExt;
use zeroize::Zeroizing;

use self::abi::{conv_params, ConvParams, MatmulParams, OperandParams, PARAMS_SIZE};
use self::pipelines::Pipelines;
#[cfg(doc)]
use self::plan::TARGET_WORKGROUPS;
use self::plan::{DeviceLimits, Dispatch, Variant, U32_HEADROOM};
pub(crate) use self::types::dtype_code;
pub use self::types::{
    ConvInput, GpuTensor, HostTensor, Kernel, Linear, MatmulPass, MatmulShape, TensorKey,
    MATMUL_DTYPES,
};
use super::aes::{self, AesKeyUniform, KEY_UNIFORM_SIZE};
use super::context::GpuContext;
use super::slot::{f32s, read_mapped};
use super::timer::KernelTimer;
use super::{buffer_entry, storage_layout, uniform_layout};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::scheme::TensorCipher;

#[cfg(test)]
pub(crate) use self::abi::layouts;
#[cfg(test)]
pub(crate) use self::pipelines::shared_constants;

/// The shared constants `variant`'s module takes from the host.
#[cfg(test)]
pub(crate) fn module_constants(variant: Variant) -> Vec<(&'static str, f64)> {
    Pipelines::module_constants(variant)
}

/// An operand checked and placed: what [`FusedMatmul::record`] binds and writes.
struct Bound<'a> {
    x_bytes: u64,
    y_bytes: u64,
    w: BoundOperand<'a>,
    bias: Option<BoundOperand<'a>>,
    /// The cipher whose round keys the pass's key uniform holds.
    key: Option<&'a TensorCipher>,
    params: MatmulParams,
}

/// An operand's storage window and its parameters.
struct BoundOperand<'a> {
    buffer: &'a wgpu::Buffer,
    offset: u64,
    size: u64,
    params: OperandParams,
}

impl BoundOperand<'_> {
    fn entry(&self, binding: u32) -> wgpu::BindGroupEntry<'_> {
        buffer_entry(binding, self.buffer, self.offset, self.size)
    }
}

/// The `DTYPE_*` code and the element size of an operand (`what`) of `dtype`;
/// [`Error::Invalid`] for a type the kernels do not decode (not one of [`MATMUL_DTYPES`]).
fn operand_dtype(what: &str, dtype: Dtype) -> Result<(u32, u64)> {
    let code = dtype_code(dtype).ok_or_else(|| {
        Error::Invalid(format!(
            "matmul {what} is {dtype}; the kernels decode {}: convert it to one of them",
            MATMUL_DTYPES.map(Dtype::name).join(", ")
        ))
    })?;
    Ok((
        code,
        dtype.size().expect("the kernels' types are whole bytes"),
    ))
}

/// A split-K scratch buffer of `bytes` bytes.
fn scratch_buffer(device: &wgpu::Device, bytes: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("deeplock matmul split-K partial sums"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// The fused (and plain) matmul kernels of one device: layouts, the AES tables and the
/// pipelines, each compiled on first use and kept. Create one per device and reuse it.
///
/// A `Linear` layer of an inference loop, on the loop's own device, buffers and encoder:
///
/// ```no_run
/// use deeplock::gpu::{
///     FusedMatmul, GpuTensor, Kernel, Linear, MatmulShape, TensorKey,
/// };
/// use deeplock::{Dtype, TensorCipher};
///
/// /// `fc1` of the CIFAR-10-sized model on one image: y = x · W^T, W still locked.
/// fn fc1(
///     fused: &FusedMatmul, // FusedMatmul::new(&GpuContext::from_device(&device, &queue))
///     encoder: &mut wgpu::CommandEncoder,
///     x: &wgpu::Buffer,        // 2304 f32
///     w_locked: &wgpu::Buffer, // fc1.weight as in the locked file: [512, 2304] BF16
///     y: &wgpu::Buffer,        // 512 f32
///     cipher: &TensorCipher,   // TensorCipher::for_tensor(&key, &salt, "fc1.weight")
/// ) -> deeplock::Result<()> {
///     let w = GpuTensor {
///         buffer: w_locked,
///         offset: 0,
///         dtype: Dtype::BF16,
///         locked: Some(TensorKey { cipher, tensor_offset: 0 }),
///     };
///     let shape = MatmulShape { m: 1, n: 512, k: 2304 };
///     let op = Linear { x, w, bias: None, y, shape, kernel: Kernel::Auto };
///     fused.encode(encoder, &op, None)?;
///     Ok(())
/// }
/// ```
pub struct FusedMatmul {
    ctx: GpuContext,
    tables: wgpu::Buffer,
    aes_layout: wgpu::BindGroupLayout,
    io_layout: wgpu::BindGroupLayout,
    pipelines: Pipelines,
    /// Split-K's partial sums, grown to the largest pass so far. A pass's bind group
    /// keeps the buffer it bound alive; passes run in submission order, so one buffer
    /// serves them all.
    scratch: Mutex<wgpu::Buffer>,
    /// Forced number of K ranges (tests, benchmarks); `None`: by `TARGET_WORKGROUPS`.
    k_splits: Option<u32>,
}

impl FusedMatmul {
    /// Parses the kernels and creates the layouts and tables on `ctx`'s device (which may
    /// be the caller's own, see [`GpuContext::from_device`]).
    pub fn new(ctx: &GpuContext) -> Self {
        let device = ctx.device();
        let storage = |binding, read_only| storage_layout(binding, read_only, 4);
        let io_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("deeplock matmul group 1 (x, w, bias, y, params)"),
            entries: &[
                storage(0, true),
                storage(1, true),
                storage(2, true),
                storage(3, false),
                storage(5, false),
                uniform_layout(4, false, PARAMS_SIZE),
            ],
        });
        let aes_layout = aes::bind_group_layout(device);
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("deeplock matmul pipeline layout"),
            bind_group_layouts: &[Some(&aes_layout), Some(&io_layout)],
            immediate_size: 0,
        });
        FusedMatmul {
            ctx: ctx.clone(),
            tables: aes::create_table_buffer(device),
            pipelines: Pipelines::new(device, pipeline_layout),
            aes_layout,
            io_layout,
            scratch: Mutex::new(scratch_buffer(device, 4)),
            k_splits: None,
        }
    }

    /// Forces the GEMM to split K into `splits` ranges (at most one per TILE_K = 32
    /// slice of K; 1: never split), or with `None` goes back to the default: splitting
    /// skinny products until about `TARGET_WORKGROUPS` workgroups run. For tests and
    /// benchmarks; results agree either way up to float rounding.
    pub fn set_k_splits(&mut self, splits: Option<u32>) -> Result<()> {
        if splits == Some(0) {
            return Err(Error::Invalid(
                "split K into at least 1 range (1: not split)".into(),
            ));
        }
        self.k_splits = splits;
        Ok(())
    }

    /// The scratch buffer, at least `bytes` long; a clear error, not a panic, when the
    /// device is out of memory.
    fn scratch(&self, bytes: u64) -> Result<wgpu::Buffer> {
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if scratch.size() < bytes {
            let device = self.ctx.device();
            // Room to grow, within the device's largest buffer (`k_split` keeps `bytes`
            // within it).
            let size = bytes
                .next_power_of_two()
                .min(device.limits().max_buffer_size);
            let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let grown = scratch_buffer(device, size);
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(Error::Gpu(format!(
                    "could not allocate {size} bytes of GPU memory for split-K partial sums ({e}); use a smaller batch, or FusedMatmul::set_k_splits(Some(1))"
                )));
            }
            *scratch = grown;
        }
        Ok(scratch.clone())
    }

    /// The context the kernels run on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The AES lookup tables every pass binds (see [`aes::table_words`]: public
    /// constants), created once; `COPY_SRC`, for audits.
    pub fn tables(&self) -> &wgpu::Buffer {
        &self.tables
    }

    /// Batch rows one workgroup covers in a product of batch `m` with `kernel`: W is
    /// decoded once per such tile row, so the AES work per multiply-add falls as
    /// 1 / min(m, tile rows). For the GEMV 1 at batch 1, else 8; for the GEMM 64, 128
    /// above batch 64, 256 above batch 128.
    pub fn tile_rows(&self, kernel: Kernel, m: u32) -> Result<u32> {
        plan::variant(kernel, m, self.limits().workgroup_storage).map(Variant::tile_rows)
    }

    /// Ranges a product of `shape` with `kernel` splits K into (see
    /// [`FusedMatmul::set_k_splits`]): 1 for the GEMV and for products with enough output
    /// tiles to fill a GPU.
    pub fn k_splits(&self, kernel: Kernel, shape: MatmulShape) -> Result<u32> {
        let limits = self.limits();
        let variant = plan::variant(kernel, shape.m, limits.workgroup_storage)?;
        Ok(plan::k_split(variant, shape, &limits, self.k_splits).0)
    }

    /// What the planner needs of this device.
    fn limits(&self) -> DeviceLimits {
        DeviceLimits::of(&self.ctx.device().limits())
    }

    /// Records `Y = X · Wᵀ + b` into `encoder` as one compute pass (timed by `timer` if
    /// given), decoding W (and b) on the fly when they are locked. Nothing runs until the
    /// caller submits. Only `y` is written (and this `FusedMatmul`'s scratch buffer of
    /// partial sums, when a skinny GEMM splits K); no buffer ever receives plaintext weights
    /// (see the module documentation). Errors, before anything is recorded, for shapes
    /// the device cannot dispatch and operands that do not fit their buffers.
    pub fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: &Linear<'_>,
        timer: Option<&KernelTimer>,
    ) -> Result<MatmulPass> {
        self.encode_with(encoder, op, None, timer)
    }

    /// Records a stride-1 convolution as [`FusedMatmul::encode`] records a `Linear`, with
    /// `op.x` the batch of `input` images (NHWC f32) instead of a matrix: `op.w` is the
    /// conv weight `[out, in, kh, kw]` (locked or not), `op.shape` is
    /// `m = batch * oh * ow`, `n = out`, `k = in * kh * kw`, and `op.y` receives the
    /// output NHWC (`[batch, oh, ow, out]`). The GEMM reads the image where the im2col
    /// matrix would be read (implicit GEMM); `Kernel::Auto` means the GEMM here, and
    /// `Kernel::Gemv` is refused.
    pub fn encode_conv(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: &Linear<'_>,
        input: &ConvInput,
        timer: Option<&KernelTimer>,
    ) -> Result<MatmulPass> {
        self.encode_with(encoder, op, Some(input), timer)
    }

    fn encode_with(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: &Linear<'_>,
        conv: Option<&ConvInput>,
        timer: Option<&KernelTimer>,
    ) -> Result<MatmulPass> {
        let limits = self.limits();
        let dispatch = plan::plan(op.shape, op.kernel, conv.is_some(), &limits, self.k_splits)?;
        let bound = self.bind(op, conv, &dispatch)?;
        self.record(encoder, op, &dispatch, &bound, timer)
    }

    /// Checks `op`'s operands against their buffers and the device, and fills the
    /// kernel parameters of `dispatch`.
    fn bind<'a>(
        &self,
        op: &Linear<'a>,
        conv: Option<&ConvInput>,
        dispatch: &Dispatch,
    ) -> Result<Bound<'a>> {
        let MatmulShape { m, n, k } = op.shape;
        let (m64, n64, k64) = (u64::from(m), u64::from(n), u64::from(k));
        for (what, buffer) in [("x", op.x), ("w", op.w.buffer)]
            .into_iter()
            .chain(op.bias.map(|b| ("bias", b.buffer)))
        {
            if buffer == op.y {
                return Err(Error::Invalid(format!(
                    "the matmul output buffer is also its {what}; write Y to a buffer of its own"
                )));
            }
        }
        let (x_elements, conv) = match conv {
            None => (m64 * k64, ConvParams::default()),
            Some(c) => conv_params(c, op.shape)?,
        };
        let x_bytes = self.activations("x", op.x, x_elements)?;
        let y_bytes = self.activations("y", op.y, m64 * n64)?;
        let w = self.bind_operand("w", &op.w, n64 * k64)?;
        let bias = op
            .bias
            .as_ref()
            .map(|b| self.bind_operand("bias", b, n64))
            .transpose()?;
        let key = match (op.w.locked, op.bias.and_then(|b| b.locked)) {
            (Some(wk), Some(bk)) => {
                if wk.cipher.round_keys().round(0) != bk.cipher.round_keys().round(0) {
                    return Err(Error::Invalid(
                        "the weight and the bias are locked under different master keys; one pass decodes one model's tensors".into(),
                    ));
                }
                Some(wk.cipher)
            }
            (wk, bk) => wk.or(bk).map(|key| key.cipher),
        };
        let params = MatmulParams {
            m,
            n,
            k,
            has_bias: u32::from(bias.is_some()),
            splits: dispatch.splits(),
            slices_per_split: dispatch.slices_per_split,
            pad: [0; 2],
            w: w.params,
            bias: bias.as_ref().map_or(OperandParams::default(), |b| b.params),
            conv,
        };
        Ok(Bound {
            x_bytes,
            y_bytes,
            w,
            bias,
            key,
            params,
        })
    }

    /// Records one planned and bound pass: writes the uniforms, binds, dispatches, and
    /// clears the uniforms after.
    fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: &Linear<'_>,
        dispatch: &Dispatch,
        bound: &Bound<'_>,
        timer: Option<&KernelTimer>,
    ) -> Result<MatmulPass> {
        let device = self.ctx.device();
        // The uniforms: the key (group 0) at 0, the parameters at the next aligned offset.
        let align = u64::from(device.limits().min_uniform_buffer_offset_alignment);
        let params_offset = KEY_UNIFORM_SIZE.next_multiple_of(align);
        let mut bytes = Zeroizing::new(vec![0u8; (params_offset + PARAMS_SIZE) as usize]);
        if let Some(cipher) = bound.key {
            let mut key = AesKeyUniform::new(cipher);
            bytes[..KEY_UNIFORM_SIZE as usize].copy_from_slice(bytemuck::bytes_of(&key));
            key.wipe();
        }
        bytes[params_offset as usize..].copy_from_slice(bytemuck::bytes_of(&bound.params));
        let uniforms = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("deeplock matmul key and params"),
            contents: &bytes,
            usage: wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        });
        let aes_group = aes::bind_group(device, &self.aes_layout, &self.tables, &uniforms);
        let scratch = self.scratch(dispatch.scratch_bytes)?;
        let io_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("deeplock matmul group 1"),
            layout: &self.io_layout,
            entries: &[
                buffer_entry(0, op.x, 0, bound.x_bytes),
                bound.w.entry(1),
                // Never read without a bias; something must be bound.
                bound.bias.as_ref().unwrap_or(&bound.w).entry(2),
                buffer_entry(3, op.y, 0, bound.y_bytes),
                buffer_entry(4, &uniforms, params_offset, PARAMS_SIZE),
                buffer_entry(5, &scratch, 0, dispatch.scratch_bytes),
            ],
        });
        let variant = dispatch.variant;
        let locked = op.w.locked.is_some();
        let limit = device.limits().max_compute_workgroup_storage_size;
        let pipeline = self.pipelines.get(variant, op.w.dtype, locked, limit);
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(match (variant, locked) {
                    (Variant::Gemv { .. }, true) => "deeplock fused gemv pass",
                    (Variant::Gemv { .. }, false) => "deeplock plain gemv pass",
                    (_, true) => "deeplock fused gemm pass",
                    (_, false) => "deeplock plain gemm pass",
                }),
                timestamp_writes: timer.map(KernelTimer::pass_writes),
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &aes_group, &[0]);
            pass.set_bind_group(1, &io_group, &[]);
            let [x, y, z] = dispatch.workgroups;
            pass.dispatch_workgroups(x, y, z);
            if let Some([x, y]) = dispatch.reduce {
                pass.set_pipeline(self.pipelines.reduce());
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        // Do not leave the round keys in GPU memory once the pass has run.
        encoder.clear_buffer(&uniforms, 0, None);
        if let Some(timer) = timer {
            timer.resolve(encoder);
        }
        Ok(MatmulPass {
            uniforms,
            scratch,
            variant,
            k_splits: dispatch.splits(),
        })
    }

    /// Byte length of an f32 activation operand of `elements` elements, checked against
    /// its buffer and the device's binding limit.
    fn activations(&self, what: &str, buffer: &wgpu::Buffer, elements: u64) -> Result<u64> {
        let bytes = 4 * elements;
        let max = self.ctx.device().limits().max_storage_buffer_binding_size;
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) || buffer.size() < bytes {
            return Err(Error::Invalid(format!(
                "matmul {what} needs a STORAGE buffer of at least {bytes} bytes (it has {:?}, {} bytes)",
                buffer.usage(),
                buffer.size()
            )));
        }
        if bytes > max || elements > u64::from(u32::MAX) {
            return Err(Error::Invalid(format!(
                "matmul {what} is {bytes} bytes, more than this device binds at once ({max}); split the batch"
            )));
        }
        Ok(bytes)
    }

    /// The storage window and kernel parameters of an operand of `elements` elements.
    fn bind_operand<'a>(
        &self,
        what: &str,
        t: &GpuTensor<'a>,
        elements: u64,
    ) -> Result<BoundOperand<'a>> {
        let (dtype, size) = operand_dtype(what, t.dtype)?;
        let bytes = elements * size;
        let tensor_offset = t.locked.map_or(0, |key| key.tensor_offset);
        let invalid = |why: String| Err(Error::Invalid(format!("matmul {what}: {why}")));
        if !t.offset.is_multiple_of(4) || !tensor_offset.is_multiple_of(4) {
            return invalid(format!(
                "its buffer offset ({}) and tensor offset ({tensor_offset}) must be multiples of 4",
                t.offset
            ));
        }
        if !t.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return invalid(format!(
                "its buffer needs STORAGE usage (it has {:?})",
                t.buffer.usage()
            ));
        }
        // The last word may run past the operand's last byte; it must still be in the buffer.
        let end = (t.offset + bytes).next_multiple_of(4);
        if end > t.buffer.size() {
            return invalid(format!(
                "{bytes} bytes at offset {} (rounded up to whole words) do not fit its {}-byte buffer",
                t.offset,
                t.buffer.size()
            ));
        }
        let shift = tensor_offset % 16;
        if tensor_offset.checked_add(bytes).is_none()
            || shift + bytes + U32_HEADROOM > u64::from(u32::MAX)
        {
            return invalid(format!(
                "{bytes} bytes at tensor offset {tensor_offset} are too large for one pass"
            ));
        }
        let limits = self.ctx.device().limits();
        let align = u64::from(limits.min_storage_buffer_offset_alignment);
        let start = t.offset / align * align;
        let size = end - start;
        if size > limits.max_storage_buffer_binding_size {
            return invalid(format!(
                "{size} bytes are more than this device binds at once ({})",
                limits.max_storage_buffer_binding_size
            ));
        }
        let word0 = ((t.offset - start) / 4) as u32;
        let first_block = tensor_offset / 16;
        let nonce = t.locked.map_or([0; 8], |key| key.cipher.nonce().0);
        Ok(BoundOperand {
            buffer: t.buffer,
            offset: start,
            size,
            params: OperandParams {
                first_block: [first_block as u32, (first_block >> 32) as u32],
                nonce: [
                    u32::from_le_bytes([nonce[0], nonce[1], nonce[2], nonce[3]]),
                    u32::from_le_bytes([nonce[4], nonce[5], nonce[6], nonce[7]]),
                ],
                word_base: word0.wrapping_sub((shift / 4) as u32),
                word_lo: (shift / 4) as u32,
                word_hi: (shift + bytes).div_ceil(4) as u32,
                shift: shift as u32,
                dtype,
                locked: u32::from(t.locked.is_some()),
                pad: [0; 2],
            },
        })
    }

    /// `Y = X · Wᵀ + b` from host memory, end to end: upload, one pass, read back. For
    /// tests and one-off use; an inference loop keeps its operands on the GPU and calls
    /// [`FusedMatmul::encode`].
    pub fn run(
        &self,
        x: &[f32],
        w: &HostTensor<'_>,
        bias: Option<&HostTensor<'_>>,
        shape: MatmulShape,
        kernel: Kernel,
    ) -> Result<Vec<f32>> {
        let (m, n, k) = (shape.m as usize, shape.n as usize, shape.k as usize);
        let expect = |what: &str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "matmul {what} has {got} bytes; shape m={m} n={n} k={k} needs {want}"
                )))
            }
        };
        expect("x", 4 * x.len(), 4 * m * k)?;
        let (_, w_size) = operand_dtype("w", w.dtype)?;
        expect("w", w.bytes.len(), n * k * w_size as usize)?;
        if let Some(b) = bias {
            let (_, b_size) = operand_dtype("bias", b.dtype)?;
            expect("bias", b.bytes.len(), n * b_size as usize)?;
        }
        let device = self.ctx.device();
        let upload = |label, bytes: &[u8]| {
            let mut padded = Zeroizing::new(bytes.to_vec());
            padded.resize(bytes.len().next_multiple_of(4).max(4), 0);
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &padded,
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let xb = upload("deeplock matmul run x", bytemuck::cast_slice(x));
        let wb = upload("deeplock matmul run w", w.bytes);
        let bb = bias.map(|b| upload("deeplock matmul run bias", b.bytes));
        let y_bytes = (4 * m * n) as u64;
        let yb = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("deeplock matmul run y"),
            size: y_bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("deeplock matmul run y read-back"),
            size: y_bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("deeplock matmul run"),
        });
        fn tensor<'a>(buffer: &'a wgpu::Buffer, t: &HostTensor<'a>) -> GpuTensor<'a> {
            GpuTensor {
                buffer,
                offset: 0,
                dtype: t.dtype,
                locked: t.locked,
            }
        }
        let op = Linear {
            x: &xb,
            w: tensor(&wb, w),
            bias: bb.as_ref().zip(bias).map(|(buffer, b)| tensor(buffer, b)),
            y: &yb,
            shape,
            kernel,
        };
        self.encode(&mut encoder, &op, None)?;
        encoder.copy_buffer_to_buffer(&yb, 0, &staging, 0, y_bytes);
        let submission = self.ctx.queue().submit([encoder.finish()]);
        read_mapped(
            &self.ctx,
            &staging,
            0..y_bytes,
            Some(submission),
            "matmul",
            f32s,
        )
    }
}
