//! The CPU fast path: one public type, [`CpuLocker`], with private backends picked once
//! at run time (portable everywhere; AES-NI, VAES/AVX2 and VAES/AVX-512 on x86-64) and a
//! public way to pick any available one, so each is tested and benchmarked. Every
//! backend is checked bit for bit against [`crate::reference`].

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;

use crate::scheme::{Direction, TensorCipher};

/// Bytes per task when spreading one buffer over all cores: large enough to amortise
/// scheduling, small enough to balance two to hundreds of cores. A multiple of 16, so
/// every task but the first starts on a keystream block boundary.
const PARALLEL_GRAIN: usize = 256 * 1024;

/// Which implementation a [`CpuLocker`] runs. Every variant exists on every target so
/// that code naming one compiles anywhere; [`Backend::is_available`] says whether this
/// processor can run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Keystream from the `aes` crate, S-box step by table lookups; runs everywhere.
    Portable,
    /// x86-64 AES-NI on 128-bit registers, 8 blocks in flight; the S-box step on the
    /// AES unit too (no tables).
    AesNi,
    /// x86-64 VAES on 256-bit AVX2 registers (2 blocks each), 8 registers in flight:
    /// Intel Ice Lake and later, AMD Zen 3 and later.
    Vaes256,
    /// x86-64 VAES on 512-bit AVX-512 registers (4 blocks each), 8 registers in flight:
    /// Intel Ice Lake and later, AMD Zen 4 and later.
    Vaes512,
}

impl Backend {
    /// Every backend, slowest first: the order [`CpuLocker::new`] prefers from the end.
    pub fn all() -> &'static [Backend] {
        &[
            Backend::Portable,
            Backend::AesNi,
            Backend::Vaes256,
            Backend::Vaes512,
        ]
    }

    /// The backends this processor can run, slowest first; always starts with
    /// [`Backend::Portable`].
    pub fn available() -> Vec<Backend> {
        Self::all()
            .iter()
            .copied()
            .filter(|b| b.is_available())
            .collect()
    }

    /// Whether this processor has the instructions the backend needs (checked at run
    /// time, so one binary runs everywhere and uses what it finds).
    pub fn is_available(self) -> bool {
        match self {
            Backend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi => x86::has_aesni(),
            #[cfg(target_arch = "x86_64")]
            Backend::Vaes256 => x86::has_vaes256(),
            #[cfg(target_arch = "x86_64")]
            Backend::Vaes512 => x86::has_vaes512(),
            #[cfg(not(target_arch = "x86_64"))]
            Backend::AesNi | Backend::Vaes256 | Backend::Vaes512 => false,
        }
    }

    /// A short name for logs and benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Portable => "portable",
            Backend::AesNi => "aes-ni",
            Backend::Vaes256 => "vaes-avx2",
            Backend::Vaes512 => "vaes-avx512",
        }
    }
}

/// Locks and unlocks byte ranges of tensors on the CPU with the fastest backend the
/// processor supports.
#[derive(Clone, Copy, Debug)]
pub struct CpuLocker {
    /// Invariant: `backend.is_available()`; [`CpuLocker::apply`] relies on it to run
    /// instructions the processor has.
    backend: Backend,
}

impl Default for CpuLocker {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuLocker {
    /// The fastest backend this processor supports, detected once here.
    pub fn new() -> Self {
        let backend = Backend::available()
            .pop()
            .expect("the portable backend is always available");
        CpuLocker { backend }
    }

    /// A locker on `backend`, or `None` if this processor lacks its instructions.
    pub fn with_backend(backend: Backend) -> Option<Self> {
        backend.is_available().then_some(CpuLocker { backend })
    }

    /// The portable backend, whatever the processor supports.
    pub fn portable() -> Self {
        CpuLocker {
            backend: Backend::Portable,
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Locks or unlocks `data` (the tensor's bytes from byte `offset`) on this thread.
    pub fn apply(&self, cipher: &TensorCipher, dir: Direction, offset: u64, data: &mut [u8]) {
        match self.backend {
            Backend::Portable => portable::apply(cipher, dir, offset, data),
            // SAFETY (three arms): a CpuLocker only holds a backend whose
            // `is_available()` check of exactly these CPU features passed.
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi => unsafe { x86::apply_aesni(cipher, dir, offset, data) },
            #[cfg(target_arch = "x86_64")]
            Backend::Vaes256 => unsafe { x86::apply_vaes256(cipher, dir, offset, data) },
            #[cfg(target_arch = "x86_64")]
            Backend::Vaes512 => unsafe { x86::apply_vaes512(cipher, dir, offset, data) },
            #[cfg(not(target_arch = "x86_64"))]
            Backend::AesNi | Backend::Vaes256 | Backend::Vaes512 => {
                unreachable!("a CpuLocker only holds an available backend")
            }
        }
    }

    /// Like [`CpuLocker::apply`], spread over all threads of the current rayon pool.
    pub fn apply_parallel(
        &self,
        cipher: &TensorCipher,
        dir: Direction,
        offset: u64,
        data: &mut [u8],
    ) {
        if data.len() <= PARALLEL_GRAIN {
            return self.apply(cipher, dir, offset, data);
        }
        // Split so that every piece after the first starts on a 16-byte block boundary.
        let head = ((16 - (offset % 16) as usize) % 16).min(data.len());
        let (first, rest) = data.split_at_mut(head);
        self.apply(cipher, dir, offset, first);
        let base = offset + head as u64;
        rest.par_chunks_mut(PARALLEL_GRAIN)
            .enumerate()
            .for_each(|(i, chunk)| {
                self.apply(cipher, dir, base + (i * PARALLEL_GRAIN) as u64, chunk)
            });
    }
}
