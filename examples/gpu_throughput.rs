//! Lock throughput of the GPU path against the CPU fast path, on the same data:
//! the kernels alone (timestamp queries; lock and unlock for each layout of the AES
//! tables the device holds, and lock for a few caps on the grid: the tuning sweep to run
//! on a new GPU), host bytes end to end with
//! `GpuLocker::apply`, the streaming `GpuEngine`, and `CpuLocker::apply_parallel`.
//! Each figure is the best of a few runs, in GB/s (10^9 bytes per second).
//!
//! `cargo run --release --example gpu_throughput -- [MiB, default 64]`

use std::time::{Duration, Instant};

use deeplock::engine::GpuEngine;
use deeplock::engine::{Chunk, Engine, Span};
use deeplock::gpu::{GpuContext, GpuLocker, KernelTimer, Region};
use deeplock::{CpuLocker, Direction, MasterKey, Salt, TensorCipher};
use wgpu::util::DeviceExt;

const RUNS: usize = 3;
const ENGINE_CHUNK: usize = 16 << 20;

fn best(mut run: impl FnMut() -> deeplock::Result<Duration>) -> deeplock::Result<Duration> {
    run()?; // warm-up: first-use costs (allocation, driver caches) are not throughput
    let mut best = Duration::MAX;
    for _ in 0..RUNS {
        best = best.min(run()?);
    }
    Ok(best)
}

fn timed(f: impl FnOnce() -> deeplock::Result<()>) -> deeplock::Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

fn report(what: &str, bytes: usize, d: Duration) {
    println!(
        "{what:<36} {:>8.3} GB/s  ({:.1} ms)",
        bytes as f64 / d.as_secs_f64() / 1e9,
        d.as_secs_f64() * 1e3
    );
}

fn main() -> deeplock::Result<()> {
    // SAFETY: first thing in main, before any other thread exists.
    let _runtime_dir = unsafe { deeplock::gpu::private_runtime_dir() };
    let mib: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("size in MiB"))
        .unwrap_or(64);
    let len = mib << 20;
    let ctx = GpuContext::new()?;
    println!("{}; {len} bytes", ctx.describe());
    let locker = GpuLocker::new(&ctx);
    let cipher = TensorCipher::for_tensor(&MasterKey::generate()?, &Salt::generate()?, "bench");
    let mut data = vec![0u8; len];
    getrandom::fill(&mut data).map_err(|e| deeplock::Error::Random(e.to_string()))?;

    if ctx.has_timestamps() {
        let buffer = ctx
            .device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("bench data"),
                contents: &data,
                usage: wgpu::BufferUsages::STORAGE,
            });
        let timer = KernelTimer::new(&ctx)?;
        let region = Region {
            cipher: &cipher,
            tensor_offset: 0,
            range: 0..len as u64,
        };
        let kernel_time = |layout: &GpuLocker, dir| {
            best(|| {
                let mut encoder = ctx.device().create_command_encoder(&Default::default());
                layout.encode(
                    &mut encoder,
                    &buffer,
                    dir,
                    std::slice::from_ref(&region),
                    Some(&timer),
                )?;
                ctx.queue().submit([encoder.finish()]);
                timer.elapsed(&ctx)
            })
        };
        // Every layout of the AES tables the device holds: the default (the most copies)
        // should be the fastest on GPUs with banked workgroup memory.
        let mut copies = 1;
        while copies <= locker.table_copies() {
            let layout = GpuLocker::with_table_copies(&ctx, copies)?;
            for dir in [Direction::Lock, Direction::Unlock] {
                let verb = format!("{dir:?}").to_lowercase();
                let what = format!("GPU {verb}, kernel, {copies} table copies");
                report(&what, len, kernel_time(&layout, dir)?);
            }
            copies *= 2;
        }
        // The grid cap at the default layout: fewer workgroups load the tables fewer
        // times, more hide latency better.
        let mut grid = GpuLocker::new(&ctx);
        for workgroups in [256, 1024, 4096, 16384] {
            if grid.set_max_workgroups(workgroups).is_ok() {
                let what = format!("GPU lock, kernel, <= {workgroups} workgroups");
                report(&what, len, kernel_time(&grid, Direction::Lock)?);
            }
        }
    } else {
        println!("GPU lock, kernel only: no timestamp queries on this adapter");
    }

    let mut gpu_out = data.clone();
    let d = best(|| {
        gpu_out.copy_from_slice(&data);
        timed(|| locker.apply(&cipher, Direction::Lock, 0, &mut gpu_out))
    })?;
    report("GPU lock, end to end (apply)", len, d);

    let cipher = std::sync::Arc::new(cipher);
    let mut engine = GpuEngine::new(GpuLocker::new(&ctx));
    let d = best(|| {
        timed(|| {
            for (i, piece) in data.chunks(ENGINE_CHUNK).enumerate() {
                engine.submit(Chunk {
                    dir: Direction::Lock,
                    data: piece.to_vec(),
                    spans: vec![Span {
                        cipher: Some(cipher.clone()),
                        tensor_offset: (i * ENGINE_CHUNK) as u64,
                        range: 0..piece.len(),
                    }],
                })?;
            }
            engine.finish().map(drop)
        })
    })?;
    report("GPU lock, streaming engine", len, d);

    let cpu = CpuLocker::new();
    let mut cpu_out = data.clone();
    let d = best(|| {
        cpu_out.copy_from_slice(&data);
        timed(|| {
            cpu.apply_parallel(&cipher, Direction::Lock, 0, &mut cpu_out);
            Ok(())
        })
    })?;
    report(
        &format!("CPU lock, {} backend", cpu.backend().name()),
        len,
        d,
    );
    assert!(gpu_out == cpu_out, "GPU and CPU disagree");
    Ok(())
}
