//! Engines: what the file streamer hands each chunk of tensor bytes to. The CPU engine
//! transforms a chunk as it arrives; a GPU engine keeps several in flight so upload,
//! compute and read-back overlap. Either way chunks come back in submission order.

use std::sync::Arc;

use crate::cpu::CpuLocker;
use crate::error::Result;
use crate::gpu::{GpuContext, GpuEngine, GpuLocker};
use crate::scheme::{Direction, TensorCipher};

/// A run of one tensor's bytes inside a [`Chunk`].
pub struct Span {
    /// The tensor's cipher, or `None` for bytes that pass through unchanged
    /// (tensors left out by `--only`).
    pub cipher: Option<Arc<TensorCipher>>,
    /// Byte offset within its tensor of the span's first byte: fixes the keystream.
    pub tensor_offset: u64,
    /// Where the span lies in [`Chunk::data`].
    pub range: std::ops::Range<usize>,
}

/// A piece of a file's data section: consecutive runs of one or more tensors, packed
/// into one buffer so that small tensors (biases) cost one transfer, not one each.
pub struct Chunk {
    /// Lock or unlock.
    pub dir: Direction,
    /// The bytes, transformed in place.
    pub data: Vec<u8>,
    /// The tensor runs in `data`, in order, not overlapping.
    pub spans: Vec<Span>,
}

/// Something that locks and unlocks chunks.
pub trait Engine {
    /// Starts work on `chunk`; returns the chunks finished so far, in submission order.
    fn submit(&mut self, chunk: Chunk) -> Result<Vec<Chunk>>;
    /// Waits for every chunk still in flight and returns them, in submission order.
    fn finish(&mut self) -> Result<Vec<Chunk>>;
    /// What runs the work, for `-v` and the demo (backend, adapter, driver).
    fn describe(&self) -> String;
}

/// The CPU fast path over all cores.
pub struct CpuEngine {
    locker: CpuLocker,
}

impl CpuEngine {
    /// An engine on `locker`'s backend.
    pub fn new(locker: CpuLocker) -> Self {
        CpuEngine { locker }
    }
}

impl Engine for CpuEngine {
    fn submit(&mut self, mut chunk: Chunk) -> Result<Vec<Chunk>> {
        for span in &chunk.spans {
            if let Some(c) = &span.cipher {
                let data = &mut chunk.data[span.range.clone()];
                self.locker
                    .apply_parallel(c, chunk.dir, span.tensor_offset, data);
            }
        }
        Ok(vec![chunk])
    }

    fn finish(&mut self) -> Result<Vec<Chunk>> {
        Ok(Vec::new())
    }

    fn describe(&self) -> String {
        format!(
            "CPU ({} backend, {} threads)",
            self.locker.backend().name(),
            rayon::current_num_threads()
        )
    }
}

/// Where the work runs, as the CLI's `--device` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A real (non-software) GPU if there is one, else the CPU fast path.
    #[default]
    Auto,
    /// The CPU fast path.
    Cpu,
    /// A GPU adapter; an error if none.
    Gpu,
}

/// Builds the engine for `choice`. `Auto` takes a hardware GPU when there is one and the
/// CPU otherwise (including when the only adapter is a software one such as lavapipe,
/// which is slower than the CPU path on the same cores, or when the GPU fails to open).
pub fn select(choice: DeviceChoice) -> Result<Box<dyn Engine>> {
    let cpu = || Box::new(CpuEngine::new(CpuLocker::new()));
    let gpu = |ctx: GpuContext| Box::new(GpuEngine::new(GpuLocker::new(&ctx)));
    Ok(match choice {
        DeviceChoice::Cpu => cpu(),
        DeviceChoice::Gpu => gpu(GpuContext::new()?),
        DeviceChoice::Auto => match GpuContext::new_hardware() {
            Ok(Some(ctx)) => gpu(ctx),
            Ok(None) | Err(_) => cpu(),
        },
    })
}
