//! # deeplock
//!
//! Deep-Lock (Alam, Saha, Mukhopadhyay, Kundu) locks every parameter of a trained model
//! as `SBOX[w XOR k]`, with per-parameter keys `k` from one secret master key, so that a
//! model file is useless without the key and exactly the original with it. deeplock v1
//! (`aes128-ctr-sbox`, specified in docs/SPEC.md) draws `k` from AES-128-CTR, so any byte
//! of any tensor can be locked or unlocked independently: in parallel on all CPU cores,
//! or on any GPU through wgpu. deeplock v2 (`aes128-ctr-sbox-gmac`, what lock writes)
//! keeps that transform and adds GMAC tags over the locked bytes and the header, so a
//! file changed after locking is refused before any of its plaintext exists.
//!
//! ## Layers
//!
//! Each layer uses only the ones below it (tests/layers.rs keeps it so):
//!
//! ```text
//!  front ends    infer (CPU reference, fast CPU, GpuModel)   mnist   zoo   bench
//!                                    |
//!  operations    files: lock, unlock, verify, inspect, join, upgrade of files and
//!                checkpoint directories; memory: locked models read into and written
//!                from memory (the loaders); key_file: key files
//!                                    |
//!  directories   checkpoint: a directory of model files listed, classified and bound
//!                by its record
//!                                    |
//!  v2 applied    authenticate (seal on lock, check on read)
//!                                    |
//!  containers    format (the Container trait: safetensors, ONNX, TFLite, GGUF, TF.js; a
//!                model's files read as one run)   lock_info   auth (v2 tags)
//!                header   output
//!                                    |
//!  stream        engine: the Engine protocol, chunk packing, CpuEngine, GpuEngine
//!                                    |
//!  backends      cpu (AES-NI / VAES, all cores)          gpu (WGSL kernels, fused matmul)
//!                                    |
//!  the scheme    key, scheme (salt, nonce, cipher), sbox, key_schedule, reference, dtype,
//!                hex, rng, error
//! ```
//!
//! The pieces:
//! - [`MasterKey`], [`Salt`], [`Nonce`], [`TensorCipher`]: the scheme's values.
//! - [`auth`]: scheme v2's tags (authenticated locking), the same transform plus GMAC;
//!   [`authenticate`] runs them over a container's tensors and header, and
//!   [`checkpoint`] over a directory's model files.
//! - [`mod@format`]: the model formats, each a [`format::Container`]: where a file's tensors
//!   lie (in it, or in the data files it names), where its lock record lives.
//! - [`mod@reference`]: the obviously-correct scalar path every fast path is checked against.
//! - [`CpuLocker`]: the CPU fast path (AES-NI / VAES, all cores); [`gpu`]: the wgpu path.
//! - [`engine`]: what the file streamer hands chunks to, on the CPU or a GPU.
//! - [`files`]: whole model files and checkpoint directories, streamed through an
//!   [`engine::Engine`], written through [`output`]'s safe outputs.
//! - [`mod@bench`]: the vendor-neutral benchmark behind `deeplock bench`.
//! - [`infer`]: running a model, locked or not, on the CPU or a GPU; [`mnist`]: its test
//!   data; [`zoo`]: the models the demo, benchmarks and tests build.

pub mod auth;
pub mod authenticate;
pub mod bench;
pub mod checkpoint;
pub mod cpu;
pub mod dtype;
pub mod engine;
pub mod error;
pub mod files;
pub mod format;
pub mod gpu;
pub mod header;
pub mod hex;
pub mod infer;
pub mod key;
pub mod key_file;
mod key_schedule;
pub mod lock_info;
pub mod memory;
pub mod mnist;
pub mod output;
pub mod reference;
pub mod rng;
mod sbox;
pub mod scheme;
pub mod zoo;

pub use cpu::CpuLocker;
pub use dtype::Dtype;
pub use error::{Error, Result};
pub use key::MasterKey;
pub use key_schedule::RoundKeys;
/// The AES S-box and its inverse, the public bijection of `SBOX[w XOR k]`: for tools
/// and demonstrations outside the crate (examples/key_recovery.rs).
pub use sbox::{INV_SBOX, SBOX};
pub use scheme::{Direction, Nonce, Salt, TensorCipher};

/// The README's library example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// docs/FUSED.md's example (the fused matmul's README section), compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../docs/FUSED.md")]
pub struct FusedDoctests;
