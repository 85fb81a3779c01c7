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
//! - [`reference`]: the obviously-correct scalar path every fast path is checked against.
//! - [`infer`]: running a model, locked or not, on the CPU; [`mnist`]: its test data.

pub mod error;
pub mod hex;
pub mod key;
pub mod key_schedule;
pub mod reference;
pub mod sbox;
pub mod scheme;

pub use error::{Error, Result};
pub use key::MasterKey;
pub use key_schedule::RoundKeys;
pub use scheme::{Direction, Nonce, Salt, TensorCipher};
pub mod cpu;
pub use cpu::CpuLocker;
pub mod engine;
pub mod files;
pub mod header;
pub mod infer;
pub mod lock_info;
pub mod mnist;
pub mod output;
pub mod zoo;

/// The README's library example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
