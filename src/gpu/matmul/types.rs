//! The matmul's public operand and shape types. [`GpuTensor`] and [`HostTensor`] are not
//! [`crate::format::TensorView`]s: they say where an operand lives (a device buffer and
//! offset, or host bytes) and how it is locked (its cipher and offset in its tensor), not
//! which named tensor of a model it is.

use serde::Serialize;

use super::plan::{Variant, GEMV_BATCH};
use crate::dtype::Dtype;
use crate::scheme::TensorCipher;

/// The element types the kernels decode to f32 (W's and the bias's), in the order of
/// their `DTYPE_*` codes in `matmul_common.wgsl` (F32 = 0, F16 = 1, BF16 = 2): the one
/// list of them, which [`crate::infer`]'s plans take weights of.
pub const MATMUL_DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];

/// `dtype`'s `DTYPE_*` code in `matmul_common.wgsl`, its index in [`MATMUL_DTYPES`] (the
/// shader's constants are checked against it in `gpu::layout_tests`); `None` for a type
/// the kernels do not decode.
pub(crate) fn dtype_code(dtype: Dtype) -> Option<u32> {
    MATMUL_DTYPES
        .iter()
        .position(|&d| d == dtype)
        .map(|i| i as u32)
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
    /// Element type, one of [`MATMUL_DTYPES`] (others are refused when the pass is
    /// planned).
    pub dtype: Dtype,
    /// `Some` if the bytes are locked, `None` for plaintext.
    pub locked: Option<TensorKey<'a>>,
}

/// A weight or bias operand in host memory, for [`FusedMatmul::run`](super::FusedMatmul::run).
#[derive(Clone, Copy, Debug)]
pub struct HostTensor<'a> {
    /// The operand's bytes, little-endian elements.
    pub bytes: &'a [u8],
    /// Element type, one of [`MATMUL_DTYPES`] (others are refused when the pass is
    /// planned).
    pub dtype: Dtype,
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

/// The input of a stride-1 2-D convolution, for [`FusedMatmul::encode_conv`](super::FusedMatmul::encode_conv): the
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

/// What one [`FusedMatmul::encode`](super::FusedMatmul::encode) recorded, for callers that audit GPU memory.
#[derive(Debug)]
pub struct MatmulPass {
    pub(super) uniforms: wgpu::Buffer,
    pub(super) scratch: wgpu::Buffer,
    pub(super) variant: Variant,
    pub(super) k_splits: u32,
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
    /// or 256 for the GEMM (see [`FusedMatmul::tile_rows`](super::FusedMatmul::tile_rows)).
    pub fn tile_rows(&self) -> u32 {
        self.variant.tile_rows()
    }

    /// Ranges K was split into (1: not split; always 1 for the GEMV).
    pub fn k_splits(&self) -> u32 {
        self.k_splits
    }

    /// The split-K scratch buffer the pass bound (shared by the passes of one
    /// [`FusedMatmul`](super::FusedMatmul); holds partial sums of products when K was split). `COPY_SRC`, for
    /// audits.
    pub fn scratch(&self) -> &wgpu::Buffer {
        &self.scratch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_from_safetensors() {
        use safetensors::Dtype as S;
        let code = |s| Dtype::from_safetensors(s).and_then(dtype_code);
        assert_eq!(code(S::BF16), Some(2));
        assert_eq!(code(S::F16), Some(1));
        assert_eq!(code(S::F32), Some(0));
        assert_eq!(code(S::F64), None);
        assert!(MATMUL_DTYPES
            .iter()
            .all(|d| d.size() == Some(4) || d.name().ends_with("16")));
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
}
