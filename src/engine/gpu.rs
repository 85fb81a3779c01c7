//! [`GpuEngine`]: the streaming [`Engine`] on a GPU. A small ring of chunks is in flight
//! at once: while the GPU transforms one, the host stages the upload of the next and
//! copies back the result of the previous (and the caller reads and writes files), and
//! the driver may overlap one chunk's transfers with another's kernels. GPU and host
//! memory stay bounded by the ring's depth times the chunk size, whatever the file size.

use std::collections::VecDeque;

use super::{Chunk, Engine};
use crate::error::Result;
use crate::gpu::{GpuContext, GpuLocker, PendingRead, Region, Slot};

/// Chunks in flight: one uploading, one computing, one reading back.
const DEFAULT_DEPTH: usize = 3;

/// Slot sizes are rounded up to this, so chunks of slightly different sizes reuse slots.
const SLOT_GRANULE: u64 = 1 << 20;

/// A chunk on its way through the GPU, or one with nothing to transform that only waits
/// for its turn (chunks come back in submission order).
struct InFlight {
    chunk: Chunk,
    gpu: Option<(Slot, PendingRead)>,
}

/// Locks and unlocks a stream of chunks on a GPU, a few in flight at a time.
pub struct GpuEngine {
    locker: GpuLocker,
    depth: usize,
    idle: Vec<Slot>,
    in_flight: VecDeque<InFlight>,
}

impl GpuEngine {
    /// An engine on `locker`'s device, with three chunks in flight.
    pub fn new(locker: GpuLocker) -> Self {
        Self::with_depth(locker, DEFAULT_DEPTH)
    }

    /// An engine with at most `depth` (at least 1) chunks in flight.
    pub fn with_depth(locker: GpuLocker, depth: usize) -> Self {
        GpuEngine {
            locker,
            depth: depth.max(1),
            idle: Vec::new(),
            in_flight: VecDeque::new(),
        }
    }

    fn ctx(&self) -> &GpuContext {
        self.locker.context()
    }

    /// Uploads `chunk`, records its spans' kernels and its read-back, and submits.
    fn launch(&mut self, chunk: Chunk) -> Result<()> {
        let regions: Vec<Region<'_>> = chunk
            .spans
            .iter()
            .filter_map(|s| {
                s.cipher.as_deref().map(|cipher| Region {
                    cipher,
                    tensor_offset: s.tensor_offset,
                    range: s.range.start as u64..s.range.end as u64,
                })
            })
            .filter(|r| !r.range.is_empty())
            .collect();
        if regions.is_empty() {
            self.in_flight.push_back(InFlight { chunk, gpu: None });
            return Ok(());
        }
        let len = chunk.data.len();
        let slot = match self.idle.iter().position(|s| s.capacity() >= len as u64) {
            Some(i) => self.idle.swap_remove(i),
            None => {
                // Too small for this chunk: free one before allocating its replacement.
                self.idle.pop();
                Slot::new(self.ctx(), (len as u64).next_multiple_of(SLOT_GRANULE))?
            }
        };
        slot.upload(self.ctx(), &chunk.data)?;
        let mut encoder =
            self.ctx()
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("deeplock engine chunk"),
                });
        self.locker
            .encode(&mut encoder, slot.storage(), chunk.dir, &regions, None)?;
        slot.encode_readback(&mut encoder, len);
        let submission = self.ctx().queue().submit([encoder.finish()]);
        let pending = slot.map(len, submission);
        self.in_flight.push_back(InFlight {
            chunk,
            gpu: Some((slot, pending)),
        });
        Ok(())
    }

    /// Waits for the oldest chunk in flight and returns it.
    fn retire_oldest(&mut self) -> Result<Option<Chunk>> {
        let Some(InFlight { mut chunk, gpu }) = self.in_flight.pop_front() else {
            return Ok(None);
        };
        if let Some((slot, pending)) = gpu {
            pending.wait(self.ctx())?;
            slot.read(&mut chunk.data)?;
            self.idle.push(slot);
        }
        Ok(Some(chunk))
    }

    /// Whether the oldest chunk in flight is finished, without waiting.
    fn oldest_is_done(&mut self) -> bool {
        match self.in_flight.front_mut() {
            Some(InFlight { gpu: None, .. }) => true,
            Some(InFlight {
                gpu: Some((_, pending)),
                ..
            }) => pending.is_done(),
            None => false,
        }
    }
}

impl Engine for GpuEngine {
    fn submit(&mut self, chunk: Chunk) -> Result<Vec<Chunk>> {
        // Runs the map callbacks of whatever has finished; never blocks.
        self.ctx()
            .device()
            .poll(wgpu::PollType::Poll)
            .map_err(|e| crate::Error::Gpu(format!("polling the GPU failed: {e}")))?;
        let mut done = Vec::new();
        while self.oldest_is_done() || self.in_flight.len() >= self.depth {
            done.extend(self.retire_oldest()?);
        }
        self.launch(chunk)?;
        Ok(done)
    }

    fn finish(&mut self) -> Result<Vec<Chunk>> {
        let mut done = Vec::with_capacity(self.in_flight.len());
        while let Some(chunk) = self.retire_oldest()? {
            done.push(chunk);
        }
        Ok(done)
    }

    fn describe(&self) -> String {
        self.ctx().describe()
    }
}
