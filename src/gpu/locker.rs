//! [`GpuLocker`]: the lock and unlock kernels, built once, at two levels: recorded into a
//! caller's command encoder on a caller's buffer, or run on host bytes end to end.

use std::ops::Range;

use wgpu::util::DeviceExt;
use zeroize::Zeroizing;

use super::aes::{self, AesKeyUniform, KEY_UNIFORM_SIZE};
use super::context::GpuContext;
use super::plan::{self, LockParams, PARAMS_SIZE};
use super::slot::{word_len, Slot};
use super::timer::KernelTimer;
use super::{buffer_entry, storage_layout, uniform_layout, AES_CTR_WGSL, LOCK_WGSL};
use crate::error::{Error, Result};
use crate::scheme::{Direction, TensorCipher};

/// Upper bound on a storage window: window-relative byte offsets are u32 in the kernel,
/// and one window this large already makes per-window overhead negligible.
const MAX_WINDOW_BYTES: u64 = 1 << 31;

/// Default cap on workgroups per dispatch: enough to fill the largest GPUs (a few thousand
/// resident 256-invocation workgroups), few enough that each workgroup's table load (up to 40 KiB)
/// is amortised over many 16-byte groups by the kernel's grid-stride loop.
const DEFAULT_MAX_WORKGROUPS: u32 = 4096;

/// Bytes per round trip of [`GpuLocker::apply`]: bounds its GPU memory for any input.
const HOST_PIECE_BYTES: u64 = 256 << 20;

/// A byte range of a GPU buffer holding consecutive bytes of one tensor.
#[derive(Clone, Debug)]
pub struct Region<'a> {
    /// The tensor's cipher.
    pub cipher: &'a TensorCipher,
    /// Offset within the tensor of the region's first byte: fixes the keystream.
    pub tensor_offset: u64,
    /// The bytes of the buffer to transform; any start and length.
    pub range: Range<u64>,
}

/// The lock and unlock kernels of one device: pipelines, layouts and the S-box tables,
/// created once and reused for every call.
pub struct GpuLocker {
    ctx: GpuContext,
    tables: wgpu::Buffer,
    aes_layout: wgpu::BindGroupLayout,
    data_layout: wgpu::BindGroupLayout,
    lock: wgpu::ComputePipeline,
    unlock: wgpu::ComputePipeline,
    /// Window starts are multiples of this: the storage offset alignment, and 16 so that
    /// every window cuts the buffer on the same 16-byte groups.
    window_alignment: u64,
    /// The largest window the device can bind (aligned, at most [`MAX_WINDOW_BYTES`]).
    max_window_bytes: u64,
    window_bytes: u64,
    /// Copies of the AES tables in each workgroup's memory.
    table_copies: u32,
    max_workgroups: u32,
}

impl GpuLocker {
    /// Compiles the kernels on `ctx`'s device, with as many copies of the AES tables per
    /// workgroup as its workgroup memory holds (up to one per memory bank; see
    /// [`aes::table_copies`]).
    pub fn new(ctx: &GpuContext) -> Self {
        let limit = ctx.device().limits().max_compute_workgroup_storage_size;
        Self::build(ctx, aes::table_copies(limit))
    }

    /// Like [`GpuLocker::new`] with `copies` copies of the AES tables per workgroup (a
    /// power of two from 1 to 32): for benchmarks that compare layouts, and tests that
    /// check each one. Errors if `copies` is not such a number or does not fit the
    /// device's workgroup memory.
    pub fn with_table_copies(ctx: &GpuContext, copies: u32) -> Result<Self> {
        let limit = ctx.device().limits().max_compute_workgroup_storage_size;
        if !copies.is_power_of_two() || copies > aes::MAX_TABLE_COPIES {
            return Err(Error::Invalid(format!(
                "{copies} copies of the AES tables: use a power of two from 1 to {}",
                aes::MAX_TABLE_COPIES
            )));
        }
        if aes::workgroup_table_bytes(copies) > limit {
            return Err(Error::Gpu(format!(
                "{copies} copies of the AES tables take {} bytes of workgroup memory; this device has {limit}: use at most {}",
                aes::workgroup_table_bytes(copies),
                aes::table_copies(limit)
            )));
        }
        Ok(Self::build(ctx, copies))
    }

    fn build(ctx: &GpuContext, table_copies: u32) -> Self {
        let device = ctx.device();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("deeplock aes_ctr.wgsl + lock.wgsl"),
            source: wgpu::ShaderSource::Wgsl(format!("{AES_CTR_WGSL}\n{LOCK_WGSL}").into()),
        });
        let aes_layout = aes::bind_group_layout(device);
        let data_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("deeplock lock group 1 (data window, params)"),
            entries: &[
                storage_layout(0, false, 4),
                uniform_layout(1, true, PARAMS_SIZE),
            ],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("deeplock lock pipeline layout"),
            bind_group_layouts: &[Some(&aes_layout), Some(&data_layout)],
            immediate_size: 0,
        });
        let pipeline = |label, entry_point| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(entry_point),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[
                        aes::copies_constant(table_copies),
                        ("WORKGROUP_SIZE", f64::from(super::plan::WORKGROUP_SIZE)),
                    ],
                    // Every workgroup overwrites its tables before reading them.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        };
        let limits = device.limits();
        let window_alignment = u64::from(limits.min_storage_buffer_offset_alignment).max(16);
        let max_window_bytes = limits.max_storage_buffer_binding_size.min(MAX_WINDOW_BYTES)
            / window_alignment
            * window_alignment;
        GpuLocker {
            ctx: ctx.clone(),
            tables: aes::create_table_buffer(device),
            lock: pipeline("deeplock lock", "lock_main"),
            unlock: pipeline("deeplock unlock", "unlock_main"),
            aes_layout,
            data_layout,
            window_alignment,
            max_window_bytes,
            window_bytes: max_window_bytes,
            table_copies,
            max_workgroups: DEFAULT_MAX_WORKGROUPS.min(limits.max_compute_workgroups_per_dimension),
        }
    }

    /// The context the kernels run on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Copies of the AES tables each workgroup keeps (see [`aes::table_copies`]).
    pub fn table_copies(&self) -> u32 {
        self.table_copies
    }

    /// Sets the largest byte range bound to one kernel as storage, rounded down to the
    /// window alignment (16 bytes and the device's storage offset alignment). Buffers
    /// larger than this are processed window by window. The default is the device's
    /// largest storage binding (at most 2 GiB); smaller values exist for tests.
    pub fn set_window_bytes(&mut self, bytes: u64) -> Result<()> {
        let aligned = bytes / self.window_alignment * self.window_alignment;
        if aligned == 0 || aligned > self.max_window_bytes {
            return Err(Error::Invalid(format!(
                "a storage window must be between {} and {} bytes, not {bytes}",
                self.window_alignment, self.max_window_bytes
            )));
        }
        self.window_bytes = aligned;
        Ok(())
    }

    /// The largest byte range bound to one kernel (see [`GpuLocker::set_window_bytes`]).
    pub fn window_bytes(&self) -> u64 {
        self.window_bytes
    }

    /// Caps the workgroups of one dispatch (default 4096; at most the device's limit per
    /// dimension); each invocation then loops over several 16-byte groups. Fewer
    /// workgroups amortise the table loads better, more hide latency better: a knob for
    /// benchmarks, and for tests, which set it low to exercise the loop.
    pub fn set_max_workgroups(&mut self, workgroups: u32) -> Result<()> {
        let max = self
            .ctx
            .device()
            .limits()
            .max_compute_workgroups_per_dimension;
        if workgroups == 0 || workgroups > max {
            return Err(Error::Invalid(format!(
                "workgroups per dispatch must be between 1 and {max}, not {workgroups}"
            )));
        }
        self.max_workgroups = workgroups;
        Ok(())
    }

    /// Records the locking or unlocking of `regions` of `buffer` into `encoder`, as one
    /// compute pass, the regions in order. `buffer` needs `STORAGE` usage and a size that
    /// is a multiple of 4; bytes outside the regions are left as they are. With a
    /// `timer`, the pass is timed (see [`KernelTimer`]). Nothing runs until the caller
    /// submits the encoder.
    pub fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        buffer: &wgpu::Buffer,
        dir: Direction,
        regions: &[Region<'_>],
        timer: Option<&KernelTimer>,
    ) -> Result<()> {
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) || !buffer.size().is_multiple_of(4)
        {
            return Err(Error::Invalid(format!(
                "the GPU buffer to lock or unlock needs STORAGE usage and a size that is a multiple of 4 (it has {:?}, {} bytes)",
                buffer.usage(),
                buffer.size()
            )));
        }
        if let Some(r) = regions
            .iter()
            .find(|r| r.range.start > r.range.end || r.range.end > buffer.size())
        {
            return Err(Error::Invalid(format!(
                "region {:?} is not within the {}-byte GPU buffer",
                r.range,
                buffer.size()
            )));
        }
        let plan = plan::plan(
            buffer.size(),
            self.window_bytes,
            self.max_workgroups,
            regions.iter().map(|r| (r.range.clone(), r.tensor_offset)),
        );
        let bound = if plan.pieces.is_empty() {
            None
        } else {
            Some(self.bind(buffer, regions, &plan)?)
        };
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(match dir {
                    Direction::Lock => "deeplock lock pass",
                    Direction::Unlock => "deeplock unlock pass",
                }),
                timestamp_writes: timer.map(KernelTimer::pass_writes),
            });
            if let Some(bound) = &bound {
                pass.set_pipeline(match dir {
                    Direction::Lock => &self.lock,
                    Direction::Unlock => &self.unlock,
                });
                for (i, piece) in plan.pieces.iter().enumerate() {
                    let key = bound.key_stride * piece.region as u32;
                    let params = bound.params_stride * i as u32;
                    pass.set_bind_group(0, &bound.aes_group, &[key]);
                    pass.set_bind_group(1, &bound.windows[piece.window], &[params]);
                    pass.dispatch_workgroups(piece.workgroups, 1, 1);
                }
            }
        }
        if let Some(bound) = &bound {
            // Do not leave the round keys in GPU memory once the pass has run.
            encoder.clear_buffer(&bound.records, 0, None);
        }
        if let Some(timer) = timer {
            timer.resolve(encoder);
        }
        Ok(())
    }

    /// Locks or unlocks `data`, the bytes of a tensor from byte `offset`, on the GPU:
    /// upload, dispatch, read back, in pieces of at most 256 MiB. For many tensors or
    /// a stream of chunks, [`crate::engine::GpuEngine`] overlaps the transfers with the compute.
    pub fn apply(
        &self,
        cipher: &TensorCipher,
        dir: Direction,
        offset: u64,
        data: &mut [u8],
    ) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let limit = self.ctx.device().limits().max_buffer_size / 16 * 16;
        let piece = HOST_PIECE_BYTES.min(limit) as usize;
        let slot = Slot::new(&self.ctx, word_len(data.len().min(piece)))?;
        for (i, part) in data.chunks_mut(piece).enumerate() {
            slot.upload(&self.ctx, part)?;
            let mut encoder =
                self.ctx
                    .device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("deeplock apply"),
                    });
            let region = Region {
                cipher,
                tensor_offset: offset + (i * piece) as u64,
                range: 0..part.len() as u64,
            };
            self.encode(&mut encoder, slot.storage(), dir, &[region], None)?;
            slot.encode_readback(&mut encoder, part.len());
            let submission = self.ctx.queue().submit([encoder.finish()]);
            slot.map(part.len(), submission).wait(&self.ctx)?;
            slot.read(part)?;
        }
        Ok(())
    }

    /// Writes the uniform records of one encode (a key uniform per region, then the
    /// params of each piece, each at an offset aligned for dynamic binding) and creates
    /// the bind groups over them and over `buffer`'s windows.
    fn bind(
        &self,
        buffer: &wgpu::Buffer,
        regions: &[Region<'_>],
        plan: &plan::Plan,
    ) -> Result<Bound> {
        let device = self.ctx.device();
        let align = u64::from(device.limits().min_uniform_buffer_offset_alignment);
        let key_stride = KEY_UNIFORM_SIZE.next_multiple_of(align);
        let params_stride = PARAMS_SIZE.next_multiple_of(align);
        let params_base = key_stride * regions.len() as u64;
        let size = params_base + params_stride * plan.pieces.len() as u64;
        // Dynamic offsets are u32.
        if size > u64::from(u32::MAX) {
            return Err(Error::Invalid(format!(
                "too many regions ({}) for one GPU pass; encode them in several",
                regions.len()
            )));
        }
        let mut bytes = Zeroizing::new(vec![0u8; size as usize]);
        for (i, r) in regions.iter().enumerate() {
            let mut key = AesKeyUniform::new(r.cipher);
            let at = (key_stride * i as u64) as usize;
            bytes[at..at + KEY_UNIFORM_SIZE as usize].copy_from_slice(bytemuck::bytes_of(&key));
            key.wipe();
        }
        for (i, piece) in plan.pieces.iter().enumerate() {
            let at = (params_base + params_stride * i as u64) as usize;
            bytes[at..at + PARAMS_SIZE as usize]
                .copy_from_slice(bytemuck::bytes_of::<LockParams>(&piece.params));
        }
        let records = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("deeplock keys and dispatch params"),
            contents: &bytes,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        });
        let aes_group = aes::bind_group(device, &self.aes_layout, &self.tables, &records);
        let windows = plan
            .windows
            .iter()
            .map(|window| {
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("deeplock lock group 1"),
                    layout: &self.data_layout,
                    entries: &[
                        buffer_entry(0, buffer, window.start, window.end - window.start),
                        buffer_entry(1, &records, params_base, PARAMS_SIZE),
                    ],
                })
            })
            .collect();
        Ok(Bound {
            aes_group,
            windows,
            key_stride: key_stride as u32,
            params_stride: params_stride as u32,
            records,
        })
    }
}

/// What one encode binds: its uniform records buffer, bind group 0 over it, and bind
/// group 1 for each window of the target buffer.
struct Bound {
    records: wgpu::Buffer,
    aes_group: wgpu::BindGroup,
    windows: Vec<wgpu::BindGroup>,
    /// Dynamic-offset strides of the key and params records.
    key_stride: u32,
    params_stride: u32,
}
