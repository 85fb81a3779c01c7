//! The GPU path, on any adapter wgpu supports (Vulkan, Metal, DX12, GL), in WGSL.
//!
//! - [`GpuContext`]: a device and queue, from an adapter of our own or from a caller's.
//! - [`GpuLocker`]: the lock and unlock kernels, recorded into a caller's command encoder
//!   on regions of a caller's buffer ([`GpuLocker::encode`]), or run on host bytes
//!   ([`GpuLocker::apply`]).
//! - [`GpuEngine`]: the streaming [`crate::engine::Engine`], chunks overlapped in flight.
//! - [`KernelTimer`]: kernel time alone, from timestamp queries, for benchmarks.
//! - [`AES_CTR_WGSL`] and [`aes`]: the AES-128-CTR core, for other kernels that need the
//!   keystream (e.g. one that unlocks weights as it multiplies by them).
//!
//! Each kernel invocation derives the keystream for its own 16 bytes: the whole-model
//! keystream never exists anywhere.

pub mod aes;
mod context;
mod engine;
mod locker;
mod plan;
mod slot;
mod timer;

pub use context::GpuContext;
pub use engine::GpuEngine;
pub use locker::{GpuLocker, Region};
pub use timer::KernelTimer;

/// WGSL source of the AES-128-CTR core: tables in workgroup memory, the AES rounds,
/// counter blocks, the S-box layer. Put it in front of a kernel's own source; its header
/// comment documents the interface, [`aes`] the host side.
pub const AES_CTR_WGSL: &str = include_str!("../../shaders/aes_ctr.wgsl");

/// WGSL source of the lock and unlock entry points (after [`AES_CTR_WGSL`]).
const LOCK_WGSL: &str = include_str!("../../shaders/lock.wgsl");
