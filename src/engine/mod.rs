//! Engines: what the file streamer hands each chunk of tensor bytes to. The CPU engine
//! transforms a chunk as it arrives (and lends the streamer its locker, so that many
//! chunks are transformed at once, see [`Engine::cpu_locker`]); a GPU engine keeps
//! several in flight so upload, compute and read-back overlap. Either way chunks come
//! back in submission order.

use std::sync::Arc;

use crate::cpu::CpuLocker;
use crate::error::Result;
use crate::gpu::{GpuContext, GpuLocker};

mod gpu;

use crate::scheme::{Direction, TensorCipher};
pub use gpu::GpuEngine;

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

/// Packs consecutive tensors into chunks of at most `chunk_size` bytes (a tensor split
/// across chunks where it does not fit; many small ones sharing one), submits each full
/// chunk to an engine, and hands the chunks it finishes, in order, to a sink, reusing
/// their buffers. The GPU benchmarks feed engines through it (the file streamer cuts
/// its own batches, each at its place in the output file).
pub struct ChunkPacker {
    dir: Direction,
    chunk_size: usize,
    data: Vec<u8>,
    spans: Vec<Span>,
    spare: Vec<Vec<u8>>,
}

impl ChunkPacker {
    /// A packer for `dir` with chunks of `chunk_size` bytes (at least 16).
    pub fn new(dir: Direction, chunk_size: usize) -> Self {
        ChunkPacker {
            dir,
            chunk_size: chunk_size.max(16),
            data: Vec::new(),
            spans: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Switches direction for the next stream, keeping the buffers of the last one (after
    /// [`ChunkPacker::finish`], when nothing is pending).
    pub fn set_direction(&mut self, dir: Direction) {
        debug_assert!(self.data.is_empty() && self.spans.is_empty());
        self.dir = dir;
    }

    /// Adds a tensor of `len` bytes, transformed with `cipher` (or passed through when
    /// `None`); `fill` writes its bytes, piece by piece, in order.
    pub fn add_tensor(
        &mut self,
        engine: &mut dyn Engine,
        cipher: Option<&Arc<TensorCipher>>,
        len: u64,
        mut fill: impl FnMut(&mut [u8]) -> Result<()>,
        sink: &mut dyn FnMut(&Chunk) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0u64;
        while done < len {
            if self.data.capacity() == 0 {
                self.data = self.spare.pop().unwrap_or_default();
                self.data.clear();
                self.data.reserve(self.chunk_size);
            }
            let room = (self.chunk_size - self.data.len()) as u64;
            let take = room.min(len - done) as usize;
            let start = self.data.len();
            self.data.resize(start + take, 0);
            fill(&mut self.data[start..])?;
            self.spans.push(Span {
                cipher: cipher.cloned(),
                tensor_offset: done,
                range: start..start + take,
            });
            done += take as u64;
            if self.data.len() == self.chunk_size {
                self.submit(engine, sink)?;
            }
        }
        Ok(())
    }

    /// Submits what is left and waits for every chunk in flight.
    pub fn finish(
        &mut self,
        engine: &mut dyn Engine,
        sink: &mut dyn FnMut(&Chunk) -> Result<()>,
    ) -> Result<()> {
        if !self.data.is_empty() {
            self.submit(engine, sink)?;
        }
        let done = engine.finish()?;
        self.drain(done, sink)
    }

    fn submit(
        &mut self,
        engine: &mut dyn Engine,
        sink: &mut dyn FnMut(&Chunk) -> Result<()>,
    ) -> Result<()> {
        let chunk = Chunk {
            dir: self.dir,
            data: std::mem::take(&mut self.data),
            spans: std::mem::take(&mut self.spans),
        };
        let done = engine.submit(chunk)?;
        self.drain(done, sink)
    }

    fn drain(
        &mut self,
        done: Vec<Chunk>,
        sink: &mut dyn FnMut(&Chunk) -> Result<()>,
    ) -> Result<()> {
        for c in done {
            sink(&c)?;
            self.spare.push(c.data);
        }
        Ok(())
    }
}

/// Something that locks and unlocks chunks.
pub trait Engine {
    /// Starts work on `chunk`; returns the chunks finished so far, in submission order.
    fn submit(&mut self, chunk: Chunk) -> Result<Vec<Chunk>>;
    /// Waits for every chunk still in flight and returns them, in submission order.
    fn finish(&mut self) -> Result<Vec<Chunk>>;
    /// What runs the work, for `-v` and the demo (backend, adapter, driver).
    fn describe(&self) -> String;
    /// The CPU locker, for an engine whose work is the CPU fast path on the calling
    /// thread: a file streamer may then transform many chunks at once, each on the
    /// thread that read it, in any order, instead of handing them in one at a time.
    /// `None` (the default) for an engine that must see chunks in order, one stream at
    /// a time (a GPU's ring of chunks in flight).
    fn cpu_locker(&self) -> Option<CpuLocker> {
        None
    }
}

/// Spans shorter than this are transformed on one core each, many at once.
const SMALL_SPAN: usize = 64 << 10;

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
        use rayon::prelude::*;
        // Large spans split across all cores; small ones (a model of many biases) are
        // spread over the cores a span each: one parallel call per small span would
        // cost more in waking threads than the span's work.
        let mut rest = &mut chunk.data[..];
        let mut start = 0;
        let mut small = Vec::new();
        for span in &chunk.spans {
            let (_, tail) = rest.split_at_mut(span.range.start - start);
            let (data, tail) = tail.split_at_mut(span.range.len());
            (rest, start) = (tail, span.range.end);
            let Some(c) = &span.cipher else { continue };
            if data.len() >= SMALL_SPAN {
                self.locker
                    .apply_parallel(c, chunk.dir, span.tensor_offset, data);
            } else {
                small.push((c, span.tensor_offset, data));
            }
        }
        let (locker, dir) = (&self.locker, chunk.dir);
        small
            .into_par_iter()
            .with_min_len(64)
            .for_each(|(c, offset, data)| locker.apply(c, dir, offset, data));
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

    fn cpu_locker(&self) -> Option<CpuLocker> {
        Some(self.locker)
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

/// Bytes of tensor data under which `Auto` takes the CPU without looking for a GPU:
/// opening a GPU instance and probing its adapters costs tens of milliseconds (more than
/// the CPU needs to lock a small model on all cores), and uploading a small model cannot
/// win that back.
pub const AUTO_GPU_MIN_BYTES: u64 = 256 << 20;

/// Builds the engine for `choice` to transform `data_bytes` of tensor data: `Auto` takes
/// the CPU for less than [`AUTO_GPU_MIN_BYTES`], else as [`select`] does.
pub fn select_for(choice: DeviceChoice, data_bytes: u64) -> Result<Box<dyn Engine>> {
    match choice {
        DeviceChoice::Auto if data_bytes < AUTO_GPU_MIN_BYTES => select(DeviceChoice::Cpu),
        _ => select(choice),
    }
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
