//! GPU lock and unlock, on the CIFAR-10-sized model (12 tensors) and a 256 MiB buffer:
//! the kernels alone on device-resident buffers (timed by GPU timestamp queries where
//! the adapter has them), end to end from host memory through the streaming engine, and
//! the copy kernel as the memory yardstick. Without an adapter it says so and measures
//! nothing. On a software adapter (lavapipe) the 256 MiB group is skipped unless
//! DEEPLOCK_BENCH_FULL=1: it would take many minutes there.
//!
//! `cargo bench --bench gpu`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use deeplock::bench::{DeviceBench, Workload};
use deeplock::gpu::GpuContext;
use deeplock::Direction;

/// `iters` timed runs of `f`: the kernel's own time when it reports one, else wall clock.
fn timed(iters: u64, mut f: impl FnMut() -> Option<f64>) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = std::time::Instant::now();
        let own = f();
        total += own.map_or_else(|| start.elapsed(), Duration::from_secs_f64);
    }
    total
}

fn gpu(c: &mut Criterion) {
    let ctx = match GpuContext::new() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("gpu benches: no adapter, nothing measured ({e})");
            return;
        }
    };
    eprintln!("gpu benches on {}", ctx.describe());
    let software = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
    let full = std::env::var("DEEPLOCK_BENCH_FULL").as_deref() == Ok("1");
    for w in [Workload::cifar10_cnn(), Workload::buffer(256 << 20)] {
        if software && !full && w.bytes() > 8 << 20 {
            eprintln!(
                "gpu benches: skipping {} on a software adapter (DEEPLOCK_BENCH_FULL=1 to run it)",
                w.label
            );
            continue;
        }
        let mut b = DeviceBench::new(&ctx, &w).expect("set up the GPU bench");
        let mut g = c.benchmark_group(format!("gpu/{}", w.label));
        g.throughput(Throughput::Bytes(w.bytes() as u64));
        g.sample_size(10).measurement_time(Duration::from_secs(5));
        for (name, dir) in [("lock", Direction::Lock), ("unlock", Direction::Unlock)] {
            g.bench_function(BenchmarkId::new("kernel", name), |bencher| {
                bencher.iter_custom(|iters| timed(iters, || b.kernel(dir).expect("GPU kernel")))
            });
        }
        for (name, dir) in [("lock", Direction::Lock), ("unlock", Direction::Unlock)] {
            g.bench_function(BenchmarkId::new("end_to_end", name), |bencher| {
                bencher.iter(|| b.end_to_end(dir).expect("GPU stream"))
            });
        }
        g.bench_function("copy_kernel", |bencher| {
            bencher.iter_custom(|iters| timed(iters, || b.copy().expect("copy kernel")))
        });
        g.finish();
    }
}

criterion_group!(benches, gpu);
criterion_main!(benches);
