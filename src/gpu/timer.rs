//! Timing the kernels alone with GPU timestamp queries, so benchmarks can tell compute
//! throughput from transfer and driver overhead.

use std::time::Duration;

use super::context::GpuContext;
use super::slot::read_mapped;
use crate::error::{Error, Result};

/// Two timestamps around one compute pass: pass it to
/// [`super::GpuLocker::encode`], submit, then read [`KernelTimer::elapsed`].
/// Reusable: each encode overwrites the previous measurement.
pub struct KernelTimer {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    period_ns: f64,
}

impl KernelTimer {
    /// A timer on `ctx`'s device; an error if the device has no timestamp queries
    /// (see [`GpuContext::has_timestamps`]).
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        if !ctx.has_timestamps() {
            return Err(Error::Gpu(format!(
                "{} does not support timestamp queries; time end to end instead",
                ctx.adapter_info().name
            )));
        }
        let device = ctx.device();
        let size = 2 * std::mem::size_of::<u64>() as u64;
        Ok(KernelTimer {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("deeplock kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolved: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("deeplock kernel timestamps resolved"),
                size,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("deeplock kernel timestamps readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            period_ns: f64::from(ctx.queue().get_timestamp_period()),
        })
    }

    /// Timestamp writes at the start and end of the timed pass, for a compute pass of
    /// the caller's own (the copy kernel of `deeplock bench`, a matmul).
    pub fn pass_writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// Records the copy of the timestamps to where [`KernelTimer::elapsed`] reads them;
    /// call after the timed pass ends, before submitting.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.queries, 0..2, &self.resolved, 0);
        encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.readback, 0, self.resolved.size());
    }

    /// GPU time between the start and the end of the last timed pass. Waits for the GPU.
    pub fn elapsed(&self, ctx: &GpuContext) -> Result<Duration> {
        let ticks: [u64; 2] = read_mapped(ctx, &self.readback, 0..16, None, "timestamp", |b| {
            bytemuck::pod_read_unaligned(b)
        })?;
        let ns = ticks[1].wrapping_sub(ticks[0]) as f64 * self.period_ns;
        Ok(Duration::from_nanos(ns as u64))
    }
}
