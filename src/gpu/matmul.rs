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

use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use wgpu::util::DeviceExt;
use zeroize::Zeroizing;

use super::aes::{self, AesKeyUniform, KEY_UNIFORM_SIZE};
use super::context::GpuContext;
use super::slot::{f32s, read_mapped};
use super::timer::KernelTimer;
use super::{
    buffer_entry, storage_layout, uniform_layout, AES_CTR_WGSL, MATMUL_COMMON_WGSL,
    MATMUL_GEMM_WGSL, MATMUL_GEMV_WGSL,
};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::scheme::TensorCipher;

/// Output columns of one GEMM workgroup (`TILE_N` in `matmul_gemm.wgsl`).
const GEMM_TILE_N: u32 = 64;
/// Outputs per GEMV workgroup (`matmul_gemv.wgsl`).
const GEMV_ROWS: u32 = 4;
/// Batch rows per workgroup of the small-batch GEMV, each W block decoded once for all
/// of them (`GEMV_BATCH` in `matmul_gemv.wgsl`; batch 1 has a GEMV of its own, with the
/// loops over rows compiled away); `Kernel::Auto` takes the GEMV up to this batch.
const GEMV_BATCH: u32 = 8;
/// Invocations per workgroup, both kernels.
const THREADS: u32 = 256;
/// Split-K aims at this many GEMM workgroups: several per compute unit on the largest
/// GPUs (an H100 has 132), so that a skinny product (batch 64 against a 4096 x 4096
/// weight: 64 output tiles) still fills the device.
const TARGET_WORKGROUPS: u32 = 512;
/// Fewest TILE_K slices of K per split: below this the extra partial sums and the
/// per-workgroup setup (tables, bias) cost more than the parallelism brings.
const MIN_SLICES_PER_SPLIT: u32 = 4;
/// Headroom kept below 2^32 for the kernels' u32 byte arithmetic, which runs a few
/// blocks past an operand's last byte before its loop bounds stop it.
const U32_HEADROOM: u64 = 1 << 16;

/// Element type of a weight (or bias) tensor, decoded to f32 in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum WeightDtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the high half of an f32).
    Bf16,
}

impl WeightDtype {
    /// Every supported type.
    pub const ALL: [WeightDtype; 3] = [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16];

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::F16 | WeightDtype::Bf16 => 2,
        }
    }

    /// The safetensors name: `F32`, `F16`, `BF16`.
    pub fn name(self) -> &'static str {
        self.dtype().name()
    }

    /// The element type it is.
    pub fn dtype(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::F16 => Dtype::F16,
            WeightDtype::Bf16 => Dtype::BF16,
        }
    }

    /// The kernels' type for tensors of `dtype`, if they can decode it.
    pub fn of(dtype: Dtype) -> Option<Self> {
        WeightDtype::ALL.into_iter().find(|w| w.dtype() == dtype)
    }

    /// The type of a safetensors tensor, if the kernels can decode it.
    pub fn from_safetensors(dtype: safetensors::Dtype) -> Option<Self> {
        Dtype::from_safetensors(dtype).and_then(Self::of)
    }

    /// `DTYPE_*` in `matmul_common.wgsl`.
    fn code(self) -> u32 {
        match self {
            WeightDtype::F32 => 0,
            WeightDtype::F16 => 1,
            WeightDtype::Bf16 => 2,
        }
    }
}

/// `Y [m, n] = X [m, k] · Wᵀ + b`, W being `[n, k]` (`out_features`, `in_features`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct MatmulShape {
    /// Batch rows (tokens, images).
    pub m: u32,
    /// Output features: rows of W.
    pub n: u32,
    /// Input features: columns of W.
    pub k: u32,
}

impl MatmulShape {
    /// Floating-point operations of the product, `2 m n k` (the bias is not counted).
    pub fn flops(&self) -> f64 {
        2.0 * f64::from(self.m) * f64::from(self.n) * f64::from(self.k)
    }
}

/// Which kernel runs a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Kernel {
    /// GEMV up to 8 batch rows, GEMM above.
    Auto,
    /// Each workgroup row takes up to 8 batch rows and decodes W once for them, straight
    /// into registers: meant for batch 1 (token-by-token inference) and small batches.
    Gemv,
    /// Output tiles of 64 (batch up to 64), 128 (up to 128) or 256 batch rows by 64
    /// columns; W decoded once per tile row.
    Gemm,
}

impl Kernel {
    /// The kernel `Auto` stands for at batch `m`; others are themselves.
    pub fn resolve(self, m: u32) -> Kernel {
        match self {
            Kernel::Auto if m <= GEMV_BATCH => Kernel::Gemv,
            Kernel::Auto => Kernel::Gemm,
            k => k,
        }
    }

    /// `gemv`, `gemm` or `auto`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Auto => "auto",
            Kernel::Gemv => "gemv",
            Kernel::Gemm => "gemm",
        }
    }
}

/// How an operand's bytes are locked: its tensor's cipher and where in the tensor they
/// start (the byte offset fixes the keystream).
#[derive(Clone, Copy, Debug)]
pub struct TensorKey<'a> {
    /// The tensor's cipher (master key and tensor nonce).
    pub cipher: &'a TensorCipher,
    /// Byte offset within the tensor of the operand's first byte: 0 for a whole tensor,
    /// `r * k * size` for rows `r..` of a weight (a tensor-parallel shard). A multiple
    /// of 4.
    pub tensor_offset: u64,
}

/// A weight or bias operand in a GPU buffer.
#[derive(Clone, Copy, Debug)]
pub struct GpuTensor<'a> {
    /// The buffer (needs `STORAGE` usage).
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the operand in `buffer`, a multiple of 4 (any multiple: the kernel
    /// binds an aligned window around it), so a whole locked safetensors data section
    /// can live in one buffer.
    pub offset: u64,
    /// Element type.
    pub dtype: WeightDtype,
    /// `Some` if the bytes are locked, `None` for plaintext.
    pub locked: Option<TensorKey<'a>>,
}

/// A weight or bias operand in host memory, for [`FusedMatmul::run`].
#[derive(Clone, Copy, Debug)]
pub struct HostTensor<'a> {
    /// The operand's bytes, little-endian elements.
    pub bytes: &'a [u8],
    /// Element type.
    pub dtype: WeightDtype,
    /// `Some` if the bytes are locked, `None` for plaintext.
    pub locked: Option<TensorKey<'a>>,
}

/// One application of a `Linear` layer: its operands and shape.
#[derive(Clone, Copy, Debug)]
pub struct Linear<'a> {
    /// `X`, `m * k` f32 from offset 0 (`STORAGE` usage).
    pub x: &'a wgpu::Buffer,
    /// `W`, `n * k` elements, row-major.
    pub w: GpuTensor<'a>,
    /// `b`, `n` elements, if any. If both it and W are locked, they must be under the
    /// same master key (tensors of one file are).
    pub bias: Option<GpuTensor<'a>>,
    /// `Y`, `m * n` f32 written from offset 0 (`STORAGE` usage); not one of the inputs.
    pub y: &'a wgpu::Buffer,
    /// The dimensions.
    pub shape: MatmulShape,
    /// The kernel.
    pub kernel: Kernel,
}

/// The input of a stride-1 2-D convolution, for [`FusedMatmul::encode_conv`]: the
/// convolution is the product of the input's im2col matrix (one row per output position
/// `(b, oy, ox)`, one column per `(channel, ky, kx)`) with the conv weight
/// `[out, in, kh, kw]` read as the `Linear` matrix `[out, in * kh * kw]`, as PyTorch
/// stores it; the kernels gather that matrix's elements from the image as they need them
/// (implicit GEMM), so it is never built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvInput {
    /// Input height, width and channels; the input buffer holds the batch's images NHWC
    /// (channels fastest), f32.
    pub height: u32,
    /// See `height`.
    pub width: u32,
    /// See `height`.
    pub channels: u32,
    /// Kernel height and width.
    pub kernel: [u32; 2],
    /// Zero padding above and below, left and right (`valid`: 0; `same` for odd kernels:
    /// half the kernel).
    pub pad: [u32; 2],
}

impl ConvInput {
    /// Output height and width, `size + 2 pad - kernel + 1`; `None` if the kernel is
    /// empty or larger than the padded input.
    pub fn output(&self) -> Option<(u32, u32)> {
        let side = |size: u32, pad: u32, kernel: u32| {
            (kernel > 0)
                .then(|| (u64::from(size) + 2 * u64::from(pad) + 1).checked_sub(u64::from(kernel)))
                .flatten()
                .filter(|&o| o > 0)
                .and_then(|o| u32::try_from(o).ok())
        };
        Some((
            side(self.height, self.pad[0], self.kernel[0])?,
            side(self.width, self.pad[1], self.kernel[1])?,
        ))
    }
}

/// `ConvView` of `matmul_common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvParams {
    image: u32,
    h: u32,
    w: u32,
    c: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    pad_h: u32,
    pad_w: u32,
    pad: [u32; 2],
}

/// A compiled kernel: the GEMV with `rows` batch rows per workgroup (1 or
/// [`GEMV_BATCH`]), or the GEMM with `tm` batch rows per invocation (`TM`: tiles of
/// 16 * tm rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Gemv { rows: u32 },
    Gemm { tm: u32 },
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::Gemv { rows: 1 },
        Variant::Gemv { rows: GEMV_BATCH },
        Variant::Gemm { tm: 4 },
        Variant::Gemm { tm: 8 },
        Variant::Gemm { tm: 16 },
    ];

    /// Elements of K per slice (`TILE_K` in `matmul_gemm.wgsl`): 32, or 16 for the
    /// 256-row tiles so that their slices fit 32 KiB. 0 for the GEMV, which has none.
    fn tile_k(self) -> u32 {
        match self {
            Variant::Gemv { .. } => 0,
            Variant::Gemm { tm } if tm > 8 => 16,
            Variant::Gemm { .. } => 32,
        }
    }

    /// Workgroup memory the kernel's own tiles take, in bytes (the AES tables come on top).
    fn tile_bytes(self) -> u32 {
        let words = match self {
            Variant::Gemv { .. } => THREADS,
            // x_tile and w_tile (rows padded by a word), bias_tile.
            Variant::Gemm { tm } => self.tile_k() * (16 * tm + 1 + GEMM_TILE_N + 1) + GEMM_TILE_N,
        };
        4 * words
    }

    /// Copies of the AES tables the kernel keeps on a device with `limit` bytes of
    /// workgroup memory: as many as fit beside its tiles when it decodes W, one when it
    /// does not (the plain kernel then loses no occupancy to tables it never reads, and
    /// one copy is enough for a locked bias, decoded once per column).
    fn table_copies(self, locked: bool, limit: u32) -> u32 {
        if locked {
            aes::table_copies(limit.saturating_sub(self.tile_bytes()))
        } else {
            1
        }
    }

    /// Workgroups of a dispatch over `shape` before any split of K: (columns, rows).
    fn grid(self, shape: MatmulShape) -> (u32, u32) {
        match self {
            Variant::Gemv { rows } => (shape.n.div_ceil(GEMV_ROWS), shape.m.div_ceil(rows)),
            Variant::Gemm { .. } => (
                shape.n.div_ceil(GEMM_TILE_N),
                shape.m.div_ceil(self.tile_rows()),
            ),
        }
    }

    /// Batch rows one workgroup covers.
    fn tile_rows(self) -> u32 {
        match self {
            Variant::Gemv { rows } => rows,
            Variant::Gemm { tm } => 16 * tm,
        }
    }

    fn kernel(self) -> Kernel {
        match self {
            Variant::Gemv { .. } => Kernel::Gemv,
            Variant::Gemm { .. } => Kernel::Gemm,
        }
    }
}

/// What one [`FusedMatmul::encode`] recorded, for callers that audit GPU memory.
#[derive(Debug)]
pub struct MatmulPass {
    uniforms: wgpu::Buffer,
    scratch: wgpu::Buffer,
    variant: Variant,
    k_splits: u32,
}

impl MatmulPass {
    /// The one buffer the call created: the uniforms (round keys, dispatch parameters),
    /// cleared to zeros after the pass. It has `COPY_SRC` usage so it can be read back.
    pub fn uniforms(&self) -> &wgpu::Buffer {
        &self.uniforms
    }

    /// The kernel that ran (`Auto` resolved).
    pub fn kernel(&self) -> Kernel {
        self.variant.kernel()
    }

    /// Batch rows one workgroup covered, each decoding W once: 1 or 8 for the GEMV, 64, 128
    /// or 256 for the GEMM (see [`FusedMatmul::tile_rows`]).
    pub fn tile_rows(&self) -> u32 {
        self.variant.tile_rows()
    }

    /// Ranges K was split into (1: not split; always 1 for the GEMV).
    pub fn k_splits(&self) -> u32 {
        self.k_splits
    }

    /// The split-K scratch buffer the pass bound (shared by the passes of one
    /// [`FusedMatmul`]; holds partial sums of products when K was split). `COPY_SRC`, for
    /// audits.
    pub fn scratch(&self) -> &wgpu::Buffer {
        &self.scratch
    }
}

/// `Operand` of `matmul_common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct OperandParams {
    first_block: [u32; 2],
    nonce: [u32; 2],
    word_base: u32,
    word_lo: u32,
    word_hi: u32,
    shift: u32,
    dtype: u32,
    locked: u32,
    pad: [u32; 2],
}

/// `MatmulParams` of `matmul_common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    splits: u32,
    slices_per_split: u32,
    pad: [u32; 2],
    w: OperandParams,
    bias: OperandParams,
    conv: ConvParams,
}

const PARAMS_SIZE: u64 = std::mem::size_of::<MatmulParams>() as u64;

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

/// The kernel parameters of a convolution of `input` as the product `shape`, and the
/// number of input elements it reads; errors if they do not agree.
fn conv_params(input: &ConvInput, shape: MatmulShape) -> Result<(u64, ConvParams)> {
    let ConvInput {
        height,
        width,
        channels,
        kernel: [kh, kw],
        pad: [pad_h, pad_w],
    } = *input;
    let Some((oh, ow)) = input.output().filter(|_| height > 0 && width > 0) else {
        return Err(Error::Invalid(format!(
            "a {kh}x{kw} convolution with padding {pad_h}x{pad_w} has no output on a {height}x{width} input; check the kernel and padding"
        )));
    };
    let taps = u64::from(channels) * u64::from(kh) * u64::from(kw);
    if taps != u64::from(shape.k) {
        return Err(Error::Invalid(format!(
            "a convolution of {channels} channels with a {kh}x{kw} kernel has k = {taps}, not {}; set k = channels * kh * kw",
            shape.k
        )));
    }
    let positions = u64::from(oh) * u64::from(ow);
    if !u64::from(shape.m).is_multiple_of(positions) {
        return Err(Error::Invalid(format!(
            "a convolution with a {oh}x{ow} output has m = batch * {positions}, not {}",
            shape.m
        )));
    }
    let batch = u64::from(shape.m) / positions;
    let elements = batch * u64::from(height) * u64::from(width) * u64::from(channels);
    let params = ConvParams {
        image: 1,
        h: height,
        w: width,
        c: channels,
        oh,
        ow,
        kh,
        kw,
        pad_h,
        pad_w,
        pad: [0; 2],
    };
    Ok((elements, params))
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
///     FusedMatmul, GpuTensor, Kernel, Linear, MatmulShape, TensorKey, WeightDtype,
/// };
/// use deeplock::TensorCipher;
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
///         dtype: WeightDtype::Bf16,
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
    pipeline_layout: wgpu::PipelineLayout,
    gemm_module: wgpu::ShaderModule,
    gemv_module: wgpu::ShaderModule,
    /// Indexed by [`FusedMatmul::pipeline_index`]: variant, dtype, locked.
    pipelines: [OnceLock<wgpu::ComputePipeline>; 30],
    /// Split-K's summing kernel.
    reduce: OnceLock<wgpu::ComputePipeline>,
    /// Split-K's partial sums, grown to the largest pass so far. A pass's bind group
    /// keeps the buffer it bound alive; passes run in submission order, so one buffer
    /// serves them all.
    scratch: Mutex<wgpu::Buffer>,
    /// Forced number of K ranges (tests, benchmarks); `None`: by [`TARGET_WORKGROUPS`].
    k_splits: Option<u32>,
}

impl FusedMatmul {
    /// Parses the kernels and creates the layouts and tables on `ctx`'s device (which may
    /// be the caller's own, see [`GpuContext::from_device`]).
    pub fn new(ctx: &GpuContext) -> Self {
        let device = ctx.device();
        let module = |label, kernel| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(
                    format!("{AES_CTR_WGSL}\n{MATMUL_COMMON_WGSL}\n{kernel}").into(),
                ),
            })
        };
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
            gemm_module: module(
                "deeplock aes_ctr + matmul_common + matmul_gemm.wgsl",
                MATMUL_GEMM_WGSL,
            ),
            gemv_module: module(
                "deeplock aes_ctr + matmul_common + matmul_gemv.wgsl",
                MATMUL_GEMV_WGSL,
            ),
            aes_layout,
            io_layout,
            pipeline_layout,
            pipelines: std::array::from_fn(|_| OnceLock::new()),
            reduce: OnceLock::new(),
            scratch: Mutex::new(scratch_buffer(device, 4)),
            k_splits: None,
        }
    }

    /// Forces the GEMM to split K into `splits` ranges (at most one per TILE_K = 32
    /// slice of K; 1: never split), or with `None` goes back to the default: splitting
    /// skinny products until about [`TARGET_WORKGROUPS`] workgroups run. For tests and
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

    /// How many ranges `variant` splits K into for `shape`, and the TILE_K slices per
    /// range, so that no range is empty and the partial sums fit one storage binding.
    /// The GEMV never splits.
    fn k_split(&self, variant: Variant, shape: MatmulShape) -> (u32, u32) {
        if variant.kernel() == Kernel::Gemv {
            return (1, 0);
        }
        let (columns, rows) = variant.grid(shape);
        let tiles = columns.saturating_mul(rows);
        let slices = shape.k.div_ceil(variant.tile_k());
        let wanted = self.k_splits.unwrap_or_else(|| {
            TARGET_WORKGROUPS
                .div_ceil(tiles)
                .min(slices / MIN_SLICES_PER_SPLIT)
        });
        let outputs = 4 * u64::from(shape.m) * u64::from(shape.n);
        let limits = self.ctx.device().limits();
        let fit = (limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            / outputs)
            .min(u64::from(limits.max_compute_workgroups_per_dimension));
        let splits = u64::from(wanted.clamp(1, slices)).min(fit).max(1) as u32;
        let per = slices.div_ceil(splits);
        (slices.div_ceil(per), per)
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

    fn reduce_pipeline(&self) -> &wgpu::ComputePipeline {
        self.reduce.get_or_init(|| {
            self.ctx
                .device()
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some("deeplock matmul split-K reduce"),
                    layout: Some(&self.pipeline_layout),
                    module: &self.gemm_module,
                    entry_point: Some("gemm_reduce_main"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        // The module's pipeline constants; this entry point reads none.
                        constants: &[
                            ("LOCKED", 0.0),
                            ("DTYPE", 0.0),
                            ("TM", 4.0),
                            aes::copies_constant(1),
                        ],
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
        })
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

    fn pipeline_index(variant: Variant, dtype: WeightDtype, locked: bool) -> usize {
        let v = Variant::ALL
            .iter()
            .position(|&v| v == variant)
            .expect("a variant");
        6 * v + 2 * dtype.code() as usize + usize::from(locked)
    }

    fn pipeline(
        &self,
        variant: Variant,
        dtype: WeightDtype,
        locked: bool,
    ) -> &wgpu::ComputePipeline {
        self.pipelines[Self::pipeline_index(variant, dtype, locked)].get_or_init(|| {
            let (module, entry_point) = match variant {
                Variant::Gemv { .. } => (&self.gemv_module, "gemv_main"),
                Variant::Gemm { .. } => (&self.gemm_module, "gemm_main"),
            };
            let label = format!(
                "deeplock matmul {}{} {} {}",
                variant.kernel().name(),
                variant.tile_rows(),
                dtype.name(),
                if locked { "locked" } else { "plain" }
            );
            let limit = self
                .ctx
                .device()
                .limits()
                .max_compute_workgroup_storage_size;
            let mut constants = vec![
                ("LOCKED", if locked { 1.0 } else { 0.0 }),
                ("DTYPE", f64::from(dtype.code())),
                aes::copies_constant(variant.table_copies(locked, limit)),
            ];
            match variant {
                Variant::Gemv { rows } => constants.push(("GEMV_BATCH", f64::from(rows))),
                Variant::Gemm { tm } => {
                    constants.push(("TM", f64::from(tm)));
                    constants.push(("TILE_K", f64::from(variant.tile_k())));
                }
            }
            self.ctx
                .device()
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: Some(&self.pipeline_layout),
                    module,
                    entry_point: Some(entry_point),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &constants,
                        // No output depends on workgroup memory not written first (the
                        // GEMM's tile rows past N feed only outputs past N, never
                        // stored): zeroing it would be wasted work.
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
        })
    }

    /// The kernel variant for `kernel` at batch `m` that fits the device's workgroup
    /// memory: the GEMM takes 256-row tiles above batch 128 and 128-row ones above batch
    /// 64 where they (20.4 and 24.5 KiB) and one copy of the AES tables fit, else 64-row
    /// ones (16.5 KiB); more table copies take whatever memory is left.
    fn variant(&self, kernel: Kernel, m: u32) -> Result<Variant> {
        let limit = self
            .ctx
            .device()
            .limits()
            .max_compute_workgroup_storage_size;
        let least = |v: Variant| v.tile_bytes() + aes::workgroup_table_bytes(1);
        let fits = |v: Variant| least(v) <= limit;
        let variant = match kernel.resolve(m) {
            Kernel::Gemv if m == 1 => Variant::Gemv { rows: 1 },
            Kernel::Gemv => Variant::Gemv { rows: GEMV_BATCH },
            _ if m > 128 && fits(Variant::Gemm { tm: 16 }) => Variant::Gemm { tm: 16 },
            _ if m > 64 && fits(Variant::Gemm { tm: 8 }) => Variant::Gemm { tm: 8 },
            _ => Variant::Gemm { tm: 4 },
        };
        if !fits(variant) {
            return Err(Error::Gpu(format!(
                "the {} kernel needs {} bytes of workgroup memory; this device was opened with {limit} (open it with the adapter's limits, as GpuContext::new does)",
                variant.kernel().name(),
                least(variant)
            )));
        }
        Ok(variant)
    }

    /// Batch rows one workgroup covers in a product of batch `m` with `kernel`: W is
    /// decoded once per such tile row, so the AES work per multiply-add falls as
    /// 1 / min(m, tile rows). For the GEMV 1 at batch 1, else 8; for the GEMM 64, 128
    /// above batch 64, 256 above batch 128.
    pub fn tile_rows(&self, kernel: Kernel, m: u32) -> Result<u32> {
        self.variant(kernel, m).map(Variant::tile_rows)
    }

    /// Ranges a product of `shape` with `kernel` splits K into (see
    /// [`FusedMatmul::set_k_splits`]): 1 for the GEMV and for products with enough output
    /// tiles to fill a GPU.
    pub fn k_splits(&self, kernel: Kernel, shape: MatmulShape) -> Result<u32> {
        Ok(self.k_split(self.variant(kernel, shape.m)?, shape).0)
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
        let MatmulShape { m, n, k } = op.shape;
        if m == 0 || n == 0 || k == 0 {
            return Err(Error::Invalid(format!(
                "matmul dimensions must be at least 1, not m={m} n={n} k={k}"
            )));
        }
        let kernel = match (conv, op.kernel) {
            (None, kernel) => kernel,
            (Some(_), Kernel::Gemv) => {
                return Err(Error::Invalid(
                    "convolutions run on the GEMM; use Kernel::Gemm or Kernel::Auto".into(),
                ))
            }
            (Some(_), _) => Kernel::Gemm,
        };
        let variant = self.variant(kernel, m)?;
        let workgroups = variant.grid(op.shape);
        let (splits, slices_per_split) = self.k_split(variant, op.shape);
        let device = self.ctx.device();
        let limits = device.limits();
        let max_wg = limits.max_compute_workgroups_per_dimension;
        if workgroups.0 > max_wg || workgroups.1 > max_wg {
            return Err(Error::Invalid(format!(
                "a {} of m={m} n={n} needs {}x{} workgroups; this device allows {max_wg} per dimension",
                variant.kernel().name(),
                workgroups.0,
                workgroups.1
            )));
        }
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
        let key_cipher = match (op.w.locked, op.bias.and_then(|b| b.locked)) {
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
            splits,
            slices_per_split,
            pad: [0; 2],
            w: w.params,
            bias: bias.as_ref().map_or(OperandParams::default(), |b| b.params),
            conv,
        };

        // The uniforms: the key (group 0) at 0, the parameters at the next aligned offset.
        let align = u64::from(limits.min_uniform_buffer_offset_alignment);
        let params_offset = KEY_UNIFORM_SIZE.next_multiple_of(align);
        let mut bytes = Zeroizing::new(vec![0u8; (params_offset + PARAMS_SIZE) as usize]);
        if let Some(cipher) = key_cipher {
            let mut key = AesKeyUniform::new(cipher);
            bytes[..KEY_UNIFORM_SIZE as usize].copy_from_slice(bytemuck::bytes_of(&key));
            key.wipe();
        }
        bytes[params_offset as usize..].copy_from_slice(bytemuck::bytes_of(&params));
        let uniforms = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("deeplock matmul key and params"),
            contents: &bytes,
            usage: wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        });
        let aes_group = aes::bind_group(device, &self.aes_layout, &self.tables, &uniforms);
        let outputs = m64 * n64;
        let scratch_bytes = if splits > 1 {
            4 * outputs * u64::from(splits)
        } else {
            4
        };
        let scratch = self.scratch(scratch_bytes)?;
        let io_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("deeplock matmul group 1"),
            layout: &self.io_layout,
            entries: &[
                buffer_entry(0, op.x, 0, x_bytes),
                w.entry(1),
                // Never read without a bias; something must be bound.
                bias.as_ref().unwrap_or(&w).entry(2),
                buffer_entry(3, op.y, 0, y_bytes),
                buffer_entry(4, &uniforms, params_offset, PARAMS_SIZE),
                buffer_entry(5, &scratch, 0, scratch_bytes),
            ],
        });
        let pipeline = self.pipeline(variant, op.w.dtype, op.w.locked.is_some());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(match (variant, op.w.locked.is_some()) {
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
            pass.dispatch_workgroups(workgroups.0, workgroups.1, splits);
            if splits > 1 {
                let groups = outputs.div_ceil(u64::from(THREADS));
                let x = groups.min(u64::from(max_wg));
                pass.set_pipeline(self.reduce_pipeline());
                pass.dispatch_workgroups(x as u32, groups.div_ceil(x) as u32, 1);
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
            k_splits: splits,
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
        let bytes = elements * t.dtype.size();
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
                dtype: t.dtype.code(),
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
        expect("w", w.bytes.len(), n * k * w.dtype.size() as usize)?;
        if let Some(b) = bias {
            expect("bias", b.bytes.len(), n * b.dtype.size() as usize)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The host structs must match the WGSL uniform layout (Operand: 48 bytes, placed
    /// at 32 and 80, after the dimensions and the split-K fields; ConvView, 48 bytes, last).
    #[test]
    fn params_have_the_wgsl_layout() {
        assert_eq!(std::mem::size_of::<OperandParams>(), 48);
        assert_eq!(std::mem::size_of::<ConvParams>(), 48);
        assert_eq!(PARAMS_SIZE, 176);
        assert_eq!(std::mem::offset_of!(MatmulParams, conv), 128);
        assert_eq!(std::mem::offset_of!(MatmulParams, splits), 16);
        assert_eq!(std::mem::offset_of!(MatmulParams, w), 32);
        assert_eq!(std::mem::offset_of!(MatmulParams, bias), 80);
    }

    #[test]
    fn dtypes_from_safetensors() {
        use safetensors::Dtype;
        assert_eq!(
            WeightDtype::from_safetensors(Dtype::BF16),
            Some(WeightDtype::Bf16)
        );
        assert_eq!(
            WeightDtype::from_safetensors(Dtype::F16),
            Some(WeightDtype::F16)
        );
        assert_eq!(
            WeightDtype::from_safetensors(Dtype::F32),
            Some(WeightDtype::F32)
        );
        assert_eq!(WeightDtype::from_safetensors(Dtype::F64), None);
        assert!(WeightDtype::ALL
            .iter()
            .all(|d| d.size() == 4 || d.name().ends_with("16")));
    }

    #[test]
    fn auto_is_gemv_up_to_one_gemv_workgroup_row() {
        assert_eq!(Kernel::Auto.resolve(1), Kernel::Gemv);
        assert_eq!(Kernel::Auto.resolve(GEMV_BATCH), Kernel::Gemv);
        assert_eq!(Kernel::Auto.resolve(GEMV_BATCH + 1), Kernel::Gemm);
        assert_eq!(Kernel::Gemv.resolve(9), Kernel::Gemv);
        assert_eq!(Kernel::Gemm.resolve(1), Kernel::Gemm);
    }

    #[test]
    fn conv_output_sizes() {
        let conv = |h, w, kernel, pad| ConvInput {
            height: h,
            width: w,
            channels: 3,
            kernel,
            pad,
        };
        assert_eq!(conv(28, 28, [5, 5], [0, 0]).output(), Some((24, 24)));
        assert_eq!(conv(32, 32, [3, 3], [1, 1]).output(), Some((32, 32)));
        assert_eq!(conv(7, 6, [3, 5], [1, 0]).output(), Some((7, 2)));
        assert_eq!(conv(2, 2, [3, 3], [0, 0]).output(), None);
        assert_eq!(conv(2, 2, [0, 3], [0, 0]).output(), None);
        assert_eq!(
            conv(u32::MAX, 1, [1, 1], [1, 0]).output(),
            None,
            "u32 overflow"
        );
    }

    #[test]
    fn pipeline_indices_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for variant in Variant::ALL {
            for dtype in WeightDtype::ALL {
                for locked in [false, true] {
                    assert!(seen.insert(FusedMatmul::pipeline_index(variant, dtype, locked)));
                }
            }
        }
        assert!(seen.iter().all(|&i| i < 30));
    }

    /// The sizes `matmul_gemm.wgsl` and `aes_ctr.wgsl` declare: the tiles (16.5, 24.5 and
    /// 20.4 KiB for the GEMM, 1 KiB for the GEMV), plus 1.25 KiB per copy of the tables,
    /// as many copies as fit in 32 KiB (lavapipe, Apple) or 48 KiB (NVIDIA, AMD) when W is
    /// locked.
    #[test]
    fn workgroup_memory() {
        let gemm4 = Variant::Gemm { tm: 4 };
        let gemm8 = Variant::Gemm { tm: 8 };
        let gemm16 = Variant::Gemm { tm: 16 };
        assert_eq!(Variant::Gemv { rows: 1 }.tile_bytes(), 1024);
        assert_eq!(gemm16.tile_bytes(), 20864);
        assert_eq!(gemm4.tile_bytes(), 16896);
        assert_eq!(gemm8.tile_bytes(), 25088);
        let small = 32 << 10;
        assert_eq!(Variant::Gemv { rows: 1 }.table_copies(true, small), 16);
        assert_eq!(gemm4.table_copies(true, small), 8);
        assert_eq!(gemm8.table_copies(true, small), 4);
        assert_eq!(gemm16.table_copies(true, small), 8);
        assert_eq!(gemm8.table_copies(false, small), 1);
        assert_eq!(gemm8.table_copies(true, 48 << 10), 16);
        for v in Variant::ALL {
            for limit in [small, 48 << 10] {
                for locked in [false, true] {
                    let tables = aes::workgroup_table_bytes(v.table_copies(locked, limit));
                    assert!(v.tile_bytes() + tables <= limit, "{v:?} {limit}");
                }
            }
        }
    }
}
