//! The GPU path against the CPU reference, bit for bit. Runs on whatever adapter wgpu
//! finds (lavapipe on machines without a GPU). Without any adapter the tests print a skip
//! line and pass, unless `DEEPLOCK_REQUIRE_GPU=1` (set in CI), where they fail: CI must
//! never pass without having run them. Random inputs come from a fresh seed, printed; set
//! `DEEPLOCK_TEST_SEED` to replay one.

mod common;

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use deeplock::engine::GpuEngine;
use deeplock::engine::{self, Chunk, CpuEngine, DeviceChoice, Engine, Span};
use deeplock::gpu::{GpuContext, GpuLocker, KernelTimer, Region};
use deeplock::{reference, CpuLocker, Direction, MasterKey, Salt, TensorCipher};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

fn context() -> Option<GpuContext> {
    common::gpu_context()
}

/// One locker for the whole file: compiling the kernels is the slow part on lavapipe.
fn shared() -> Option<&'static GpuLocker> {
    static LOCKER: OnceLock<Option<GpuLocker>> = OnceLock::new();
    LOCKER
        .get_or_init(|| {
            let ctx = context()?;
            eprintln!("adapter: {}", ctx.describe());
            Some(GpuLocker::new(&ctx))
        })
        .as_ref()
}

fn rng(test: &str) -> StdRng {
    common::seeded_rng(test)
}

fn random_cipher(rng: &mut StdRng, name: &str) -> TensorCipher {
    let mut key = [0u8; 16];
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut key);
    rng.fill_bytes(&mut salt);
    TensorCipher::for_tensor(&MasterKey::from_bytes(key), &Salt(salt), name)
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// `apply` on the GPU equals the reference, both ways.
fn check_apply(locker: &GpuLocker, cipher: &TensorCipher, offset: u64, data: &[u8]) {
    for dir in [Direction::Lock, Direction::Unlock] {
        let mut want = data.to_vec();
        reference::apply(cipher, dir, offset, &mut want);
        let mut got = data.to_vec();
        locker.apply(cipher, dir, offset, &mut got).unwrap();
        assert!(
            got == want,
            "{dir:?}: {} bytes at tensor offset {offset}",
            data.len()
        );
    }
}

#[test]
fn a_software_adapter_says_so() {
    let Some(ctx) = context() else { return };
    let software = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
    assert_eq!(
        ctx.describe().contains("a software adapter"),
        software,
        "{}",
        ctx.describe()
    );
}

#[test]
fn spec_known_answer() {
    let Some(locker) = shared() else { return };
    let key = MasterKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
    let cipher = TensorCipher::for_tensor(&key, &Salt([1; 16]), "w");
    let mut d = [0u8; 16];
    locker.apply(&cipher, Direction::Lock, 0, &mut d).unwrap();
    assert_eq!(
        deeplock::hex::encode(&d),
        "aa6082eecd4e7827618b2d31c904e672"
    );
    locker.apply(&cipher, Direction::Unlock, 0, &mut d).unwrap();
    assert_eq!(d, [0u8; 16]);
}

#[test]
fn lengths_and_tensor_offsets() {
    let Some(locker) = shared() else { return };
    let mut rng = rng("lengths_and_tensor_offsets");
    let cipher = random_cipher(&mut rng, "t");
    let offsets = [
        0,
        5,
        16,
        rng.random_range(0..1u64 << 40),
        (1 << 36) + 5,
        // Keystream block index 2^32 - 1 then 2^32: the carry into the high word.
        (1u64 << 36) - 7,
        u64::MAX / 2 + 3,
    ];
    for len in [0, 1, 3, 15, 16, 17, 31, 33, 255, 1001, 4099, 65_537] {
        for &offset in &offsets {
            check_apply(locker, &cipher, offset, &random_bytes(&mut rng, len));
        }
    }
}

#[test]
fn a_few_mib() {
    let Some(locker) = shared() else { return };
    let mut rng = rng("a_few_mib");
    let cipher = random_cipher(&mut rng, "big");
    let data = random_bytes(&mut rng, (3 << 20) + 5);
    check_apply(locker, &cipher, rng.random_range(0..1u64 << 50), &data);
}

/// Every layout of the AES tables the device can hold (1, 2, 4, .. copies per workgroup)
/// gives the reference's bytes; a count that is not a power of two, or too many for the
/// device, is refused.
#[test]
fn every_table_layout() {
    let Some(locker) = shared() else { return };
    let ctx = locker.context();
    let mut rng = rng("every_table_layout");
    let mut copies = 1;
    while copies <= locker.table_copies() {
        let layout = GpuLocker::with_table_copies(ctx, copies).unwrap();
        let cipher = random_cipher(&mut rng, "layout");
        let len = rng.random_range(1..40_000);
        let data = random_bytes(&mut rng, len);
        check_apply(&layout, &cipher, rng.random_range(0..1u64 << 40), &data);
        copies *= 2;
    }
    assert!(GpuLocker::with_table_copies(ctx, 3).is_err());
    assert!(GpuLocker::with_table_copies(ctx, 64).is_err());
    let limit = ctx.device().limits().max_compute_workgroup_storage_size;
    if locker.table_copies() < 32 {
        let err = GpuLocker::with_table_copies(ctx, 32)
            .err()
            .expect("too big");
        assert!(err.to_string().contains(&limit.to_string()), "{err}");
    }
}

/// Uploads `init` into a new storage buffer on `ctx`, runs `record` on it in the caller's
/// own encoder, and reads the whole buffer back.
fn run_on_buffer(
    ctx: &GpuContext,
    init: &[u8],
    record: impl FnOnce(&mut wgpu::CommandEncoder, &wgpu::Buffer),
) -> Vec<u8> {
    use wgpu::util::DeviceExt;
    let device = ctx.device();
    let buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("test caller buffer"),
        contents: init,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    });
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("test readback"),
        size: init.len() as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("test caller encoder"),
    });
    record(&mut encoder, &buffer);
    encoder.copy_buffer_to_buffer(&buffer, 0, &readback, 0, init.len() as u64);
    ctx.queue().submit([encoder.finish()]);
    readback.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let out = readback.get_mapped_range(..).unwrap().to_vec();
    readback.unmap();
    out
}

/// Random regions of a buffer of `size` bytes, in order, with random gaps (often none,
/// so neighbours share words) and tensor offsets.
fn random_regions(rng: &mut StdRng, size: u64, max_len: u64) -> Vec<(Range<u64>, u64)> {
    let mut regions = Vec::new();
    let mut pos = rng.random_range(0..8);
    while pos < size {
        let end = (pos + rng.random_range(0..=max_len)).min(size);
        let offset = match rng.random_range(0..3) {
            0 => 0,
            1 => rng.random_range(0..64),
            _ => rng.random_range(0..1u64 << 40),
        };
        regions.push((pos..end, offset));
        pos = end + [0, 0, 1, 3, 16][rng.random_range(0..5)];
    }
    regions
}

/// Several tensors in one caller buffer, both directions, against the reference on a
/// host copy: the bytes between regions must come back untouched.
fn check_regions(locker: &GpuLocker, rng: &mut StdRng, size: u64, max_len: u64) {
    let regions = random_regions(rng, size, max_len);
    let ciphers: Vec<TensorCipher> = (0..regions.len())
        .map(|i| random_cipher(rng, &format!("t{i}")))
        .collect();
    let init = random_bytes(rng, size as usize);
    for dir in [Direction::Lock, Direction::Unlock] {
        let mut want = init.clone();
        for ((range, offset), c) in regions.iter().zip(&ciphers) {
            let r = range.start as usize..range.end as usize;
            reference::apply(c, dir, *offset, &mut want[r]);
        }
        let ctx = locker.context();
        let got = run_on_buffer(ctx, &init, |encoder, buffer| {
            let regions: Vec<Region<'_>> = regions
                .iter()
                .zip(&ciphers)
                .map(|((range, offset), cipher)| Region {
                    cipher,
                    tensor_offset: *offset,
                    range: range.clone(),
                })
                .collect();
            locker.encode(encoder, buffer, dir, &regions, None).unwrap();
        });
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            panic!("{dir:?}: first difference at byte {i} of {size}; regions {regions:?}");
        }
    }
}

#[test]
fn regions_of_a_caller_buffer() {
    let Some(shared) = shared() else { return };
    // A locker on a device the caller opened, as an inference runtime would.
    let ctx = GpuContext::from_device(shared.context().device(), shared.context().queue());
    let locker = GpuLocker::new(&ctx);
    let mut rng = rng("regions_of_a_caller_buffer");
    check_regions(&locker, &mut rng, 4096 + 52, 700);
}

#[test]
fn buffer_larger_than_a_window() {
    let Some(shared) = shared() else { return };
    let mut locker = GpuLocker::new(shared.context());
    locker.set_window_bytes((64 << 10) + 1000).unwrap();
    assert_eq!(locker.window_bytes() % 16, 0);
    // Two workgroups per dispatch: the grid-stride loop does most of the work.
    locker.set_max_workgroups(2).unwrap();
    let mut rng = rng("buffer_larger_than_a_window");
    check_regions(&locker, &mut rng, 3 * (64 << 10) + 4 * 333, 100_000);
}

#[test]
fn bad_buffers_and_regions_are_errors() {
    let Some(locker) = shared() else { return };
    let device = locker.context().device();
    let cipher = TensorCipher::for_tensor(&MasterKey::from_bytes([0; 16]), &Salt([0; 16]), "x");
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("test small buffer"),
        size: 64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    let region = Region {
        cipher: &cipher,
        tensor_offset: 0,
        range: 60..65,
    };
    let err = locker
        .encode(&mut encoder, &buffer, Direction::Lock, &[region], None)
        .unwrap_err();
    assert!(err.to_string().contains("not within"), "{err}");
}

#[test]
fn kernel_timer_measures_the_pass() {
    let Some(locker) = shared() else { return };
    let ctx = locker.context();
    if !ctx.has_timestamps() {
        eprintln!(
            "SKIPPED: {} has no timestamp queries",
            ctx.adapter_info().name
        );
        return;
    }
    let timer = KernelTimer::new(ctx).unwrap();
    let cipher = TensorCipher::for_tensor(&MasterKey::from_bytes([7; 16]), &Salt([0; 16]), "x");
    let data = vec![0u8; 1 << 20];
    run_on_buffer(ctx, &data, |encoder, buffer| {
        let region = Region {
            cipher: &cipher,
            tensor_offset: 0,
            range: 0..data.len() as u64,
        };
        locker
            .encode(encoder, buffer, Direction::Lock, &[region], Some(&timer))
            .unwrap();
    });
    assert!(timer.elapsed(ctx).unwrap() > std::time::Duration::ZERO);
}

/// Random chunks of random spans: locked tensors (partial ones too), pass-through runs,
/// chunks with nothing to lock, an empty chunk.
fn random_chunks(rng: &mut StdRng, dir: Direction) -> Vec<Chunk> {
    let ciphers: Vec<Arc<TensorCipher>> = (0..4)
        .map(|i| Arc::new(random_cipher(rng, &format!("layer{i}"))))
        .collect();
    (0..9)
        .map(|k| {
            let len = [0, 1, 100, 4096, 70_000][rng.random_range(0..5)] + rng.random_range(0..40);
            let mut spans = Vec::new();
            let mut pos = 0;
            while pos < len {
                let end = (pos + rng.random_range(1..=len)).min(len);
                let cipher = (k % 4 != 3 && rng.random_range(0..4) != 0)
                    .then(|| ciphers[rng.random_range(0..ciphers.len())].clone());
                spans.push(Span {
                    cipher,
                    tensor_offset: rng.random_range(0..1u64 << 33),
                    range: pos..end,
                });
                pos = end;
            }
            Chunk {
                dir,
                data: random_bytes(rng, len),
                spans,
            }
        })
        .collect()
}

fn run_engine(engine: &mut dyn Engine, chunks: Vec<Chunk>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend(engine.submit(chunk).unwrap());
    }
    out.extend(engine.finish().unwrap());
    out.into_iter().map(|c| c.data).collect()
}

#[test]
fn engine_matches_cpu_engine() {
    let Some(shared) = shared() else { return };
    let mut rng = rng("engine_matches_cpu_engine");
    for dir in [Direction::Lock, Direction::Unlock] {
        let chunks = random_chunks(&mut rng, dir);
        let copy = |c: &Chunk| Chunk {
            dir: c.dir,
            data: c.data.clone(),
            spans: c
                .spans
                .iter()
                .map(|s| Span {
                    cipher: s.cipher.clone(),
                    tensor_offset: s.tensor_offset,
                    range: s.range.clone(),
                })
                .collect(),
        };
        let cpu_chunks: Vec<Chunk> = chunks.iter().map(copy).collect();
        let want = run_engine(&mut CpuEngine::new(CpuLocker::new()), cpu_chunks);
        let mut gpu = GpuEngine::with_depth(GpuLocker::new(shared.context()), 2);
        assert!(gpu
            .describe()
            .contains(&shared.context().adapter_info().name));
        let got = run_engine(&mut gpu, chunks);
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g == w, "{dir:?}: chunk {i} differs");
        }
    }
}

#[test]
fn select_takes_a_gpu_only_when_asked_or_real() {
    let Some(shared) = shared() else { return };
    let auto = engine::select(DeviceChoice::Auto).unwrap().describe();
    // `shared` is the best adapter, so a software one means there is no hardware GPU.
    if shared.context().adapter_info().device_type == wgpu::DeviceType::Cpu {
        assert!(auto.starts_with("CPU"), "{auto}");
    } else {
        assert!(auto.starts_with("GPU"), "{auto}");
    }
    let gpu = engine::select(DeviceChoice::Gpu).unwrap().describe();
    assert!(gpu.starts_with("GPU"), "{gpu}");
}

proptest! {
    // Failures print their inputs; no regression file (proptest cannot place one for an
    // integration test without a lib.rs beside it).
    #![proptest_config(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any placement of one tensor's bytes in a buffer, against the reference.
    #[test]
    fn any_region_placement(
        size in 1u64..600,
        start_frac in 0.0f64..1.0,
        len_frac in 0.0f64..1.0,
        offset in prop_oneof![0u64..100, any::<u64>().prop_map(|o| o >> 2)],
        seed in any::<u64>(),
    ) {
        let Some(locker) = shared() else { return Ok(()) };
        let size = size.next_multiple_of(4);
        let start = (start_frac * size as f64) as u64;
        let end = start + (len_frac * (size - start) as f64) as u64;
        let mut rng = StdRng::seed_from_u64(seed);
        let cipher = random_cipher(&mut rng, "p");
        let init = random_bytes(&mut rng, size as usize);
        let mut want = init.clone();
        reference::apply(&cipher, Direction::Lock, offset, &mut want[start as usize..end as usize]);
        let got = run_on_buffer(locker.context(), &init, |encoder, buffer| {
            let region = Region { cipher: &cipher, tensor_offset: offset, range: start..end };
            locker.encode(encoder, buffer, Direction::Lock, &[region], None).unwrap();
        });
        prop_assert_eq!(got, want);
    }
}
