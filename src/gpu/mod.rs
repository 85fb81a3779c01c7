//! The GPU path, on any adapter wgpu supports (Vulkan, Metal, DX12, GL), in WGSL.
//!
//! - [`GpuContext`]: a device and queue, from an adapter of our own or from a caller's.
//! - [`GpuLocker`]: the lock and unlock kernels, recorded into a caller's command encoder
//!   on regions of a caller's buffer ([`GpuLocker::encode`]), or run on host bytes
//!   ([`GpuLocker::apply`]).
//! - [`KernelTimer`]: kernel time alone, from timestamp queries, for benchmarks.
//! - [`FusedMatmul`]: `Y = X · Wᵀ + b` with W still locked, decoded inside the matmul
//!   kernels (GEMM and GEMV), so plaintext weights never reach a GPU buffer.
//! - [`AES_CTR_WGSL`] and [`aes`]: the AES-128-CTR core, for kernels that need the
//!   keystream (the lock kernels, the fused matmul).
//!
//! Each kernel invocation derives the keystream for its own 16 bytes: the whole-model
//! keystream never exists anywhere.

pub mod aes;
mod binding;
mod context;
#[cfg(test)]
mod layout_tests;
mod locker;
mod matmul;
mod plan;
mod runtime_dir;
mod slot;
mod timer;

pub(crate) use binding::{buffer_entry, storage_layout, uniform_layout};
pub use context::GpuContext;
pub use locker::{GpuLocker, Region};
pub use matmul::{
    ConvInput, FusedMatmul, GpuTensor, HostTensor, Kernel, Linear, MatmulPass, MatmulShape,
    TensorKey, MATMUL_DTYPES,
};
pub use runtime_dir::private_runtime_dir;
pub(crate) use slot::{f32s, read_mapped, PendingRead, Slot};
pub use timer::KernelTimer;

/// WGSL source of the AES-128-CTR core: tables in workgroup memory, the AES rounds,
/// counter blocks, the S-box layer. Put it in front of a kernel's own source; its header
/// comment documents the interface, [`aes`] the host side.
pub const AES_CTR_WGSL: &str = include_str!("../../shaders/aes_ctr.wgsl");

/// WGSL source of the lock and unlock entry points (after [`AES_CTR_WGSL`]).
const LOCK_WGSL: &str = include_str!("../../shaders/lock.wgsl");

/// WGSL shared by the matmul kernels: operands, bindings, the on-the-fly decode.
const MATMUL_COMMON_WGSL: &str = include_str!("../../shaders/matmul_common.wgsl");

/// WGSL of the tiled GEMM kernel (after [`AES_CTR_WGSL`] and the common part).
const MATMUL_GEMM_WGSL: &str = include_str!("../../shaders/matmul_gemm.wgsl");

/// WGSL of the GEMV kernel (after [`AES_CTR_WGSL`] and the common part).
const MATMUL_GEMV_WGSL: &str = include_str!("../../shaders/matmul_gemv.wgsl");

/// A Rust struct that mirrors a WGSL uniform struct: its size and the offset of the
/// field behind each WGSL member, checked against the compiled WGSL by `layout_tests`.
#[cfg(test)]
pub(crate) struct Layout {
    /// The WGSL struct's name.
    pub wgsl: &'static str,
    /// `size_of` the Rust struct.
    pub size: usize,
    /// Every WGSL member, with the offset of the Rust field (or part of one) behind it.
    pub members: Vec<(&'static str, usize)>,
    /// The Rust struct is padded beyond the WGSL struct's size (bound whole).
    pub padded: bool,
}

#[cfg(test)]
impl Layout {
    pub(crate) fn new<T>(wgsl: &'static str, members: &[(&'static str, usize)]) -> Self {
        Layout {
            wgsl,
            size: std::mem::size_of::<T>(),
            members: members.to_vec(),
            padded: false,
        }
    }
}
