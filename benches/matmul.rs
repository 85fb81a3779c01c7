//! Criterion benchmark of the fused unlock-then-matmul kernels against the same kernels on
//! plaintext weights and against unlocking into a scratch buffer first. Kernel time by
//! timestamp queries where the device has them (criterion's `iter_custom`), so driver and
//! submission overhead do not blur the ratios. On a software adapter (lavapipe) it runs
//! the reduced cases of `MatmulCase::software`. `cargo bench --bench matmul`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use deeplock::bench::matmul::{MatmulBench, MatmulCase, MatmulPath};
use deeplock::gpu::{FusedMatmul, GpuContext, GpuLocker};

fn matmul(c: &mut Criterion) {
    let ctx = match GpuContext::new() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("SKIPPED: no GPU adapter ({e})");
            return;
        }
    };
    eprintln!("{}", ctx.describe());
    let software = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
    let cases = if software {
        MatmulCase::software()
    } else {
        MatmulCase::defaults()
    };
    let fused = FusedMatmul::new(&ctx);
    let locker = GpuLocker::new(&ctx);
    for case in cases {
        let bench = MatmulBench::new(&fused, &locker, case).expect("set up the case");
        let mut group = c.benchmark_group(format!("matmul {}", case.label()));
        group.throughput(Throughput::Elements(case.shape.flops() as u64));
        group.sample_size(10);
        if software {
            group.warm_up_time(Duration::from_millis(500));
            group.measurement_time(Duration::from_secs(2));
        }
        for path in MatmulPath::ALL {
            group.bench_function(path.name(), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| Duration::from_secs_f64(bench.seconds(path).expect("run")))
                        .sum()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, matmul);
criterion_main!(benches);
