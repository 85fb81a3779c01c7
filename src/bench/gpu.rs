//! The GPU side of `deeplock bench`: every adapter wgpu finds, kernel time by timestamp
//! queries, wall clock through the streaming engine, and a copy kernel as the yardstick.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use super::{median_of, Rate, Record, Runs, Seconds, Workload};
use crate::engine::{Chunk, ChunkPacker, GpuEngine};
use crate::error::{Error, Result};
use crate::gpu::{buffer_entry, storage_layout, GpuContext, GpuLocker, KernelTimer, Region};
use crate::key::MasterKey;
use crate::scheme::{Direction, Salt, TensorCipher};

pub(crate) const COPY_WGSL: &str = include_str!("../../shaders/copy.wgsl");
const COPY_WORKGROUPS: u32 = 4096;
const COPY_WORKGROUP_SIZE: u64 = 256;

/// A device on every adapter wgpu finds (restricted by `WGPU_BACKEND` if set), saying
/// on stderr which ones could not be opened and are skipped; an error if there is no
/// adapter, or none opens.
pub fn open_adapters() -> Result<Vec<GpuContext>> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    if adapters.is_empty() {
        return Err(Error::Gpu(
            "no GPU adapter found; install a Vulkan, Metal or DX12 driver (`deeplock bench --device cpu` measures the CPU alone)".into(),
        ));
    }
    let contexts: Vec<GpuContext> = adapters
        .iter()
        .filter_map(|adapter| match GpuContext::from_adapter(adapter) {
            Ok(ctx) => Some(ctx),
            Err(e) => {
                eprintln!(
                    "deeplock bench: skipping adapter {}: {e}",
                    adapter.get_info().name
                );
                None
            }
        })
        .collect();
    if contexts.is_empty() {
        return Err(Error::Gpu(
            "no GPU adapter could be opened; check the driver (`deeplock bench --device cpu` measures the CPU alone)".into(),
        ));
    }
    Ok(contexts)
}

/// Measures each workload on each adapter. On software adapters (device type `Cpu`),
/// where a GPU is emulated on the CPU at a small fraction of its speed, workloads over
/// 8 MiB are skipped unless they are all the caller asked for.
pub fn bench_gpus(workloads: &[Workload], runs: Runs, explicit_sizes: bool) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for ctx in open_adapters()? {
        let software = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
        for w in workloads {
            if software && !explicit_sizes && w.bytes() > 8 << 20 {
                eprintln!(
                    "deeplock bench: skipping {} on {} (software adapter); pass --size to force",
                    w.label,
                    ctx.adapter_info().name
                );
                continue;
            }
            if w.bytes() as u64 > ctx.device().limits().max_buffer_size {
                eprintln!(
                    "deeplock bench: skipping {} on {}: larger than its largest buffer",
                    w.label,
                    ctx.adapter_info().name
                );
                continue;
            }
            out.push(bench_gpu(&ctx, w, runs)?);
        }
    }
    Ok(out)
}

/// One workload resident on one device, ready to time: the lock kernel on a device
/// buffer, the streaming engine from host memory, and the copy kernel. Shared by
/// `deeplock bench` and the criterion benches.
pub struct DeviceBench {
    ctx: GpuContext,
    locker: GpuLocker,
    engine: GpuEngine,
    workload: Workload,
    ciphers: Vec<Arc<TensorCipher>>,
    host: Vec<u8>,
    data: wgpu::Buffer,
    timer: Option<KernelTimer>,
    copy: CopyKernel,
    packer: ChunkPacker,
}

impl DeviceBench {
    /// Uploads `w` (pseudo-random bytes) to `ctx`'s device and builds the kernels.
    pub fn new(ctx: &GpuContext, w: &Workload) -> Result<Self> {
        let padded = w.bytes().next_multiple_of(16);
        let key = MasterKey::generate()?;
        let salt = Salt([9; 16]);
        let ciphers = (0..w.tensors.len())
            .map(|i| Arc::new(TensorCipher::for_tensor(&key, &salt, &format!("t{i}"))))
            .collect();
        let host: Vec<u8> = (0..padded).map(|i| (i * 131 + 1) as u8).collect();
        let data = ctx
            .device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("deeplock bench data"),
                contents: &host,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            });
        let copy = CopyKernel::new(ctx, &data, padded as u64)?;
        Ok(DeviceBench {
            ctx: ctx.clone(),
            locker: GpuLocker::new(ctx),
            engine: GpuEngine::new(GpuLocker::new(ctx)),
            workload: w.clone(),
            ciphers,
            host,
            data,
            timer: KernelTimer::new(ctx).ok(),
            copy,
            packer: ChunkPacker::new(Direction::Lock, crate::files::DEFAULT_CHUNK),
        })
    }

    /// Whether kernel times come from timestamp queries (else callers time by wall
    /// clock around a call, which then includes submission).
    pub fn has_timestamps(&self) -> bool {
        self.timer.is_some()
    }

    /// Runs the lock or unlock kernel over every tensor of the device-resident buffer and
    /// waits; returns the kernel's own time when timestamps are available.
    pub fn kernel(&self, dir: Direction) -> Result<Option<f64>> {
        let mut regions = Vec::new();
        let mut at = 0u64;
        for (len, c) in self.workload.tensors.iter().zip(&self.ciphers) {
            regions.push(Region {
                cipher: c,
                tensor_offset: 0,
                range: at..at + *len as u64,
            });
            at += *len as u64;
        }
        let device = self.ctx.device();
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("deeplock bench lock"),
        });
        self.locker
            .encode(&mut enc, &self.data, dir, &regions, self.timer.as_ref())?;
        self.ctx.queue().submit([enc.finish()]);
        self.finish_timed()
    }

    /// Streams the workload from host memory through the GPU engine and back, in the
    /// file streamer's chunk size, as `deeplock lock --device gpu` does.
    pub fn end_to_end(&mut self, dir: Direction) -> Result<()> {
        let w = &self.workload;
        stream_once(
            &mut self.engine,
            &mut self.packer,
            w,
            &self.ciphers,
            dir,
            &self.host[..w.bytes()],
        )
    }

    /// Runs the copy kernel over the buffer and waits; kernel time when available.
    pub fn copy(&self) -> Result<Option<f64>> {
        self.copy.encode_and_submit(&self.ctx, self.timer.as_ref());
        self.finish_timed()
    }

    fn finish_timed(&self) -> Result<Option<f64>> {
        match &self.timer {
            Some(t) => Ok(Some(t.elapsed(&self.ctx)?.as_secs_f64())),
            None => {
                self.ctx.wait(None)?;
                Ok(None)
            }
        }
    }
}

/// Measures one workload on one device.
pub fn bench_gpu(ctx: &GpuContext, w: &Workload, runs: Runs) -> Result<Record> {
    let n = w.bytes();
    let padded = n.next_multiple_of(16);
    let mut b = DeviceBench::new(ctx, w)?;
    let lock = median_of(runs, || b.kernel(Direction::Lock))?;
    let unlock = median_of(runs, || b.kernel(Direction::Unlock))?;
    let lock_wall = median_of(runs, || b.end_to_end(Direction::Lock).map(|()| None))?;
    let unlock_wall = median_of(runs, || b.end_to_end(Direction::Unlock).map(|()| None))?;
    let copy = median_of(runs, || b.copy())?;
    let r = |s: f64| Rate::new(n, s).gbps;
    let copy_gbps = Rate::new(padded, copy).gbps;
    let info = ctx.adapter_info();
    Ok(Record {
        device: "gpu".into(),
        adapter: info.name.clone(),
        vendor: info.vendor,
        backend: format!("{:?}", info.backend).to_lowercase(),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        size_label: w.label.clone(),
        size_bytes: n,
        lock_gbps: r(lock),
        unlock_gbps: r(unlock),
        lock_wall_gbps: r(lock_wall),
        unlock_wall_gbps: r(unlock_wall),
        copy_gbps,
        lock_over_copy: r(lock) / copy_gbps,
        aes_ctr_gbps: None,
        lock_1t_gbps: None,
        unlock_1t_gbps: None,
        v2_lock_gbps: None,
        v2_unlock_gbps: None,
        v2_lock_1t_gbps: None,
        v2_unlock_1t_gbps: None,
        table_copies: Some(b.locker.table_copies()),
        seconds: Seconds {
            lock,
            unlock,
            lock_wall,
            unlock_wall,
            copy,
            aes_ctr: None,
            lock_1t: None,
            unlock_1t: None,
            v2_lock: None,
            v2_unlock: None,
            v2_lock_1t: None,
            v2_unlock_1t: None,
        },
        runs: runs.timed,
    })
}

/// Streams the workload's bytes from the host through `engine` and back, in chunks of
/// the file streamer's size, as `deeplock lock --device gpu` does.
fn stream_once(
    engine: &mut GpuEngine,
    packer: &mut ChunkPacker,
    w: &Workload,
    ciphers: &[Arc<TensorCipher>],
    dir: Direction,
    host: &[u8],
) -> Result<()> {
    packer.set_direction(dir);
    let mut sink = |_: &Chunk| Ok(());
    let mut at = 0usize;
    for (len, c) in w.tensors.iter().zip(ciphers) {
        let mut src = &host[at..at + len];
        let fill = |buf: &mut [u8]| {
            let (piece, rest) = src.split_at(buf.len());
            buf.copy_from_slice(piece);
            src = rest;
            Ok(())
        };
        packer.add_tensor(engine, Some(c), *len as u64, fill, &mut sink)?;
        at += len;
    }
    packer.finish(engine, &mut sink)
}

/// The copy kernel over `size` bytes of a buffer into a buffer of its own, bound in
/// windows no larger than the device allows, all in one timed pass.
struct CopyKernel {
    pipeline: wgpu::ComputePipeline,
    windows: Vec<(wgpu::BindGroup, u32)>,
}

impl CopyKernel {
    fn new(ctx: &GpuContext, src: &wgpu::Buffer, size: u64) -> Result<Self> {
        let device = ctx.device();
        let dst = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("deeplock bench copy destination"),
            size,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("deeplock copy layout"),
            entries: &[storage_layout(0, true, 0), storage_layout(1, false, 0)],
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("deeplock copy.wgsl"),
            source: wgpu::ShaderSource::Wgsl(COPY_WGSL.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("deeplock copy pipeline"),
            layout: Some(
                &device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some("deeplock copy pipeline layout"),
                    bind_group_layouts: &[Some(&layout)],
                    immediate_size: 0,
                }),
            ),
            module: &module,
            entry_point: Some("copy_main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[("WORKGROUP_SIZE", COPY_WORKGROUP_SIZE as f64)],
                ..Default::default()
            },
            cache: None,
        });
        let limits = device.limits();
        let align = u64::from(limits.min_storage_buffer_offset_alignment).max(16);
        let window = (limits.max_storage_buffer_binding_size / align * align).max(align);
        let mut windows = Vec::new();
        let mut at = 0;
        while at < size {
            let len = window.min(size - at);
            let workgroups = (len / 16)
                .div_ceil(COPY_WORKGROUP_SIZE)
                .clamp(1, u64::from(COPY_WORKGROUPS)) as u32;
            windows.push((
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("deeplock copy window"),
                    layout: &layout,
                    entries: &[
                        buffer_entry(0, src, at, len),
                        buffer_entry(1, &dst, at, len),
                    ],
                }),
                workgroups,
            ));
            at += len;
        }
        Ok(CopyKernel { pipeline, windows })
    }

    fn encode_and_submit(&self, ctx: &GpuContext, timer: Option<&KernelTimer>) {
        let mut enc = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("deeplock bench copy"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("deeplock copy pass"),
                timestamp_writes: timer.map(KernelTimer::pass_writes),
            });
            pass.set_pipeline(&self.pipeline);
            for (g, wg) in &self.windows {
                pass.set_bind_group(0, g, &[]);
                pass.dispatch_workgroups(*wg, 1, 1);
            }
        }
        if let Some(t) = timer {
            t.resolve(&mut enc);
        }
        ctx.queue().submit([enc.finish()]);
    }
}
