//! CPU throughput of locking, next to what bounds it: plain AES-128-CTR (the `aes`/`ctr`
//! crates) for one core, and a plain copy for all cores on a buffer far larger than the
//! caches. Sizes: 16 KiB (what `openssl speed` times, cache-resident), the CIFAR-10
//! model (1,250,858 f32 = 5,003,432 bytes) and 256 MiB.
//!
//! `cargo bench --bench cpu`; names are `<size>/<path>`.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use ctr::cipher::{KeyIvInit, StreamCipher};
use deeplock::cpu::{Backend, CpuLocker};
use deeplock::{reference, Direction, MasterKey, Nonce, TensorCipher};

const KEY: [u8; 16] = [0x42; 16];
const NONCE: [u8; 8] = [7; 8];

const PAGE: usize = 4096;

/// The `len` bytes of `storage` (`len + PAGE` long) from its first page boundary.
/// Every buffer starts on a page so that results do not hang on where the allocator put
/// them: glibc's `rep movsb` copy on AMD Zen 3 runs at 3 GB/s instead of 90 when the
/// destination lies 16 bytes past the source modulo 4 KiB.
fn page_aligned(storage: &mut [u8], len: usize) -> &mut [u8] {
    let start = storage.as_ptr().align_offset(PAGE);
    &mut storage[start..start + len]
}

/// Which paths a size runs: the scalar reference is too slow for 256 MiB, and
/// splitting over cores does nothing below one parallel grain.
struct Paths {
    reference: bool,
    parallel: bool,
}

fn bench_size(c: &mut Criterion, label: &str, len: usize, samples: usize, paths: Paths) {
    let cipher = TensorCipher::new(&MasterKey::from_bytes(KEY), Nonce(NONCE));
    let mut buf_storage = vec![0x3cu8; len + PAGE];
    let buf = page_aligned(&mut buf_storage, len);
    let mut g = c.benchmark_group(label);
    g.throughput(Throughput::Bytes(len as u64))
        .sample_size(samples)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    if paths.reference {
        g.bench_function("reference", |b| {
            b.iter(|| reference::apply(&cipher, Direction::Lock, 0, buf))
        });
    }
    for backend in Backend::available() {
        let locker = CpuLocker::with_backend(backend).expect("available");
        g.bench_function(format!("lock {}", backend.name()), |b| {
            b.iter(|| locker.apply(&cipher, Direction::Lock, 0, buf))
        });
    }
    let best = CpuLocker::new();
    g.bench_function(format!("unlock {}", best.backend().name()), |b| {
        b.iter(|| best.apply(&cipher, Direction::Unlock, 0, buf))
    });
    if paths.parallel {
        bench_parallel(&mut g, best, &cipher, buf);
    }
    g.bench_function("aes-128-ctr (ctr crate)", |b| {
        let iv = [NONCE, [0; 8]].concat();
        b.iter(|| {
            let mut ctr =
                ctr::Ctr64BE::<aes::Aes128>::new(KEY.as_slice().into(), iv.as_slice().into());
            ctr.apply_keystream(buf)
        })
    });
    let mut dst_storage = vec![0x5au8; len + PAGE];
    let dst = page_aligned(&mut dst_storage, len);
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(buf);
            black_box(&mut *dst);
        })
    });
    g.finish();
}

fn bench_parallel(
    g: &mut BenchmarkGroup<'_, WallTime>,
    locker: CpuLocker,
    cipher: &TensorCipher,
    buf: &mut [u8],
) {
    let name = format!(
        "lock {} parallel x{}",
        locker.backend().name(),
        rayon::current_num_threads()
    );
    g.bench_function(name, |b| {
        b.iter(|| locker.apply_parallel(cipher, Direction::Lock, 0, buf))
    });
}

/// The CIFAR-10-sized model as `deeplock demo` generates it: 12 f32 tensors, each with
/// its own nonce, locked tensor by tensor (reference, fast path on one thread and on
/// all threads).
fn cifar10_model(c: &mut Criterion) {
    let key = MasterKey::from_bytes(KEY);
    let salt = deeplock::Salt([1; 16]);
    let model = deeplock::zoo::cifar10_cnn(42);
    let ciphers: Vec<TensorCipher> = model
        .iter()
        .map(|t| TensorCipher::for_tensor(&key, &salt, &t.name))
        .collect();
    let mut tensors: Vec<Vec<u8>> = model
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let bytes: usize = tensors.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("cifar10_cnn-model");
    g.throughput(Throughput::Bytes(bytes as u64))
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    let fast = CpuLocker::new();
    let mut run = |name: &str, f: &dyn Fn(&TensorCipher, &mut [u8])| {
        g.bench_function(name, |b| {
            b.iter(|| {
                for (c, t) in ciphers.iter().zip(tensors.iter_mut()) {
                    f(c, black_box(t));
                }
            })
        });
    };
    run("lock reference", &|c, t| {
        reference::apply(c, Direction::Lock, 0, t)
    });
    run(&format!("lock {}", fast.backend().name()), &|c, t| {
        fast.apply(c, Direction::Lock, 0, t)
    });
    run(
        &format!(
            "lock {} parallel x{}",
            fast.backend().name(),
            rayon::current_num_threads()
        ),
        &|c, t| fast.apply_parallel(c, Direction::Lock, 0, t),
    );
    g.finish();
}

fn cpu(c: &mut Criterion) {
    let paths = |reference, parallel| Paths {
        reference,
        parallel,
    };
    bench_size(c, "16KiB", 16 * 1024, 50, paths(false, false));
    bench_size(c, "cifar10-5003432B", 5_003_432, 20, paths(true, true));
    bench_size(c, "256MiB", 256 << 20, 10, paths(false, true));
}

criterion_group!(benches, cpu, cifar10_model);
criterion_main!(benches);
