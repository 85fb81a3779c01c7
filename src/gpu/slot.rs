//! A slot: the GPU buffers one chunk of host bytes goes through (a storage buffer that the
//! kernels transform in place and a map-readable staging buffer it is copied back to).
//! The host convenience path uses one; the streaming engine keeps a small ring of them.

use std::sync::mpsc;

use super::context::GpuContext;
use crate::error::{Error, Result};

/// How a pending read-back ended, as reported by `map_async`.
pub(crate) type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

pub(crate) struct Slot {
    storage: wgpu::Buffer,
    staging: wgpu::Buffer,
}

/// `len` rounded up to whole words: buffer copies and storage views work in u32s.
pub(crate) fn word_len(len: usize) -> u64 {
    (len as u64).next_multiple_of(4)
}

impl Slot {
    /// A slot for chunks of up to `capacity` bytes; a clear error, not a panic, when the
    /// device is out of memory.
    pub(crate) fn new(ctx: &GpuContext, capacity: u64) -> Result<Self> {
        let capacity = capacity.next_multiple_of(4);
        let max = ctx.device().limits().max_buffer_size;
        if capacity > max {
            return Err(Error::Invalid(format!(
                "a chunk of {capacity} bytes is larger than the GPU's largest buffer ({max} bytes); use smaller chunks"
            )));
        }
        let scope = ctx
            .device()
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let storage = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("deeplock chunk"),
            size: capacity,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("deeplock chunk read-back"),
            size: capacity,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "could not allocate 2 x {capacity} bytes of GPU memory ({e}); use smaller chunks"
            )));
        }
        Ok(Slot { storage, staging })
    }

    /// The most bytes a chunk in this slot may have.
    pub(crate) fn capacity(&self) -> u64 {
        self.storage.size()
    }

    /// The storage buffer the kernels run on.
    pub(crate) fn storage(&self) -> &wgpu::Buffer {
        &self.storage
    }

    /// Queues the upload of `data` (zero-padded to whole words); it runs at the next
    /// submit, before that submit's commands.
    pub(crate) fn upload(&self, ctx: &GpuContext, data: &[u8]) -> Result<()> {
        let Some(size) = wgpu::BufferSize::new(word_len(data.len())) else {
            return Ok(());
        };
        let mut view = ctx
            .queue()
            .write_buffer_with(&self.storage, 0, size)
            .ok_or_else(|| {
                Error::Gpu(format!(
                    "could not stage {} bytes for upload into a {}-byte GPU buffer",
                    data.len(),
                    self.capacity()
                ))
            })?;
        view.slice(..data.len()).copy_from_slice(data);
        view.slice(data.len()..).fill(0);
        Ok(())
    }

    /// Records the copy of the first `len` bytes (in whole words) to the staging buffer.
    pub(crate) fn encode_readback(&self, encoder: &mut wgpu::CommandEncoder, len: usize) {
        encoder.copy_buffer_to_buffer(&self.storage, 0, &self.staging, 0, word_len(len));
    }

    /// Starts mapping the staging buffer for `len` bytes; call after `submission`, the
    /// submit that holds [`Slot::encode_readback`].
    pub(crate) fn map(&self, len: usize, submission: wgpu::SubmissionIndex) -> PendingRead {
        let (tx, rx) = mpsc::channel();
        self.staging
            .map_async(wgpu::MapMode::Read, 0..word_len(len), move |r| {
                // The receiver may be gone (engine dropped mid-flight): nothing to tell.
                drop(tx.send(r))
            });
        PendingRead {
            submission,
            rx,
            outcome: None,
        }
    }

    /// Copies the mapped bytes into `out` and unmaps; call once [`PendingRead::wait`]
    /// succeeded.
    pub(crate) fn read(&self, out: &mut [u8]) -> Result<()> {
        {
            let view = self
                .staging
                .get_mapped_range(0..word_len(out.len()))
                .map_err(|e| Error::Gpu(format!("GPU read-back failed: {e}")))?;
            out.copy_from_slice(&view[..out.len()]);
        }
        self.staging.unmap();
        Ok(())
    }
}

/// A read-back in flight: the map callback reports into `rx` during a device poll.
pub(crate) struct PendingRead {
    submission: wgpu::SubmissionIndex,
    rx: mpsc::Receiver<MapResult>,
    outcome: Option<MapResult>,
}

impl PendingRead {
    /// Whether the mapping has finished (well or not), without waiting. Only meaningful
    /// after a device poll, which is what runs map callbacks.
    pub(crate) fn is_done(&mut self) -> bool {
        if self.outcome.is_none() {
            self.outcome = self.rx.try_recv().ok();
        }
        self.outcome.is_some()
    }

    /// Waits for the submission holding the copy, and with it the mapping.
    pub(crate) fn wait(self, ctx: &GpuContext) -> Result<()> {
        let outcome = match self.outcome {
            Some(outcome) => outcome,
            None => wait_for_map(ctx, Some(self.submission), &self.rx)?,
        };
        outcome.map_err(|e| Error::Gpu(format!("GPU read-back failed: {e}")))
    }
}

/// Polls the device until `submission` (or all work) is done, then takes the outcome of
/// the `map_async` reporting into `rx`. The callback may be run by another thread's poll
/// on the same device, maybe just after ours returns: hence a blocking receive, which
/// cannot hang, as wgpu either calls the callback or drops it (closing the channel).
pub(crate) fn wait_for_map(
    ctx: &GpuContext,
    submission: Option<wgpu::SubmissionIndex>,
    rx: &mpsc::Receiver<MapResult>,
) -> Result<MapResult> {
    ctx.wait(submission)?;
    rx.recv()
        .map_err(|_| Error::Gpu("a GPU read-back was abandoned (device lost?)".into()))
}

/// Reads back `range` of `buffer`, a `MAP_READ` buffer that `submission` (or, if `None`,
/// all submitted work) copies into: maps it, waits, hands the bytes to `read`, unmaps.
/// `what` names the data in errors.
pub(crate) fn read_mapped<T>(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    range: std::ops::Range<u64>,
    submission: Option<wgpu::SubmissionIndex>,
    what: &str,
    read: impl FnOnce(&[u8]) -> T,
) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    buffer.map_async(wgpu::MapMode::Read, range.clone(), move |r| {
        drop(tx.send(r))
    });
    wait_for_map(ctx, submission, &rx)?
        .map_err(|e| Error::Gpu(format!("{what} read-back failed: {e}")))?;
    let value = {
        let view = buffer
            .get_mapped_range(range)
            .map_err(|e| Error::Gpu(format!("{what} read-back failed: {e}")))?;
        read(&view)
    };
    buffer.unmap();
    Ok(value)
}

/// Little-endian f32 values from bytes.
pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
