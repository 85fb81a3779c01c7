//! # deeplock
//!
//! Deep-Lock (Alam, Saha, Mukhopadhyay, Kundu) locks every parameter of a trained model
//! as `SBOX[w XOR k]`, with per-parameter keys `k` from one secret master key, so that a
//! model file is useless without the key and exactly the original with it. deeplock v1
//! (`aes128-ctr-sbox`, specified in docs/SPEC.md) draws `k` from AES-128-CTR, so any byte
//! of any tensor can be locked or unlocked independently: in parallel on all CPU cores,
//! or on any GPU through wgpu.
//!
//! The pieces:
//! - [`MasterKey`], [`Salt`], [`Nonce`], [`TensorCipher`]: the scheme's values.
//! - [`auth`]: scheme v2's tags (authenticated locking), the same transform plus GMAC.
//! - [`mod@reference`]: the obviously-correct scalar path every fast path is checked against.
//! - [`CpuLocker`]: the CPU fast path (AES-NI / VAES, all cores); [`gpu`]: the wgpu path.
//! - [`files`]: whole safetensors files and checkpoint directories, streamed through an
//!   [`engine::Engine`] (CPU or GPU).
//! - [`bench`]: the vendor-neutral benchmark behind `deeplock bench`.
//! - [`infer`]: running a model, locked or not, on the CPU; [`mnist`]: its test data.

/// Scheme v2: the tags of authenticated locking (MAC keys, chunk, tensor, header and
/// checkpoint tags), defined in docs/SPEC.md.
pub mod auth;
pub mod bench;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod files;
pub mod gpu;
pub mod header;
pub mod hex;
pub mod infer;
pub mod key;
pub mod key_schedule;
pub mod lock_info;
pub mod mnist;
pub mod output;
pub mod reference;
pub mod sbox;
pub mod scheme;
pub mod zoo;

pub use cpu::CpuLocker;
pub use error::{Error, Result};
pub use key::MasterKey;
pub use key_schedule::RoundKeys;
pub use scheme::{Direction, Nonce, Salt, TensorCipher};

/// The README's library example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// docs/FUSED.md's example (the fused matmul's README section), compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../docs/FUSED.md")]
pub struct FusedDoctests;
