//! The MAC choice for scheme v2 (BENCHMARKS.md, "MAC choice"): GMAC as `deeplock::auth`
//! computes it, through `aes-gcm` 0.11 and 0.10, `ring` and `aws-lc-rs` (the candidates
//! for `deeplock::auth`'s backend), against HMAC-SHA-256 and BLAKE3, next to v1 locking and
//! to locking then tagging each 1 MiB chunk while it is in cache (what a v2 lock does),
//! in one run so that their ratios hold on a noisy machine. Sizes: 16 KiB (what
//! `openssl speed` times), one 1 MiB chunk, and 256 MiB (far larger than the caches).
//!
//! `cargo bench --bench auth`; names are `<size>/<path>`.

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, KeyInit as _};
use aes_gcm_0_10::aead::AeadInPlace;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use deeplock::auth::{FileAuthKey, TensorDescriptor, CHUNK_LEN};
use deeplock::{CpuLocker, Direction, MasterKey, Nonce, Salt, TensorCipher};
use hmac::{Hmac, Mac};
use rayon::prelude::*;
use sha2::Sha256;

const KEY: [u8; 16] = [0x42; 16];
const PAGE: usize = 4096;

/// The `len` bytes of `storage` (`len + PAGE` long) from its first page boundary, as in
/// benches/cpu.rs (glibc's memcpy on some CPUs slows down badly on unlucky alignments).
fn page_aligned(storage: &mut [u8], len: usize) -> &mut [u8] {
    let start = storage.as_ptr().align_offset(PAGE);
    &mut storage[start..start + len]
}

fn bench_size(c: &mut Criterion, label: &str, len: usize, samples: usize) {
    let master = MasterKey::from_bytes(KEY);
    let auth = FileAuthKey::derive(&master, &Salt([1; 16]));
    let cipher = TensorCipher::new(&master, Nonce([7; 8]));
    let locker = CpuLocker::new();
    let desc = TensorDescriptor {
        index: 0,
        name: "w".into(),
        dtype: deeplock::Dtype::U8,
        shape: vec![len as u64],
        len: len as u64,
        locked: true,
    };
    let mut storage = vec![0x3cu8; len + PAGE];
    let buf = page_aligned(&mut storage, len);
    let mut g = c.benchmark_group(label);
    g.throughput(Throughput::Bytes(len as u64))
        .sample_size(samples)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    g.bench_function("gmac deeplock::auth", |b| {
        b.iter(|| {
            for (i, chunk) in buf.chunks(CHUNK_LEN).enumerate() {
                black_box(auth.chunk_tag(0, i as u64, chunk));
            }
        })
    });
    // The candidates for `deeplock::auth`'s GMAC, each under its own raw key, one
    // chunk at a time as a v2 file tags (tests/gmac_backends.rs checks their tags).
    let gcm = Aes128Gcm::new(&KEY.into());
    g.bench_function("gmac aes-gcm 0.11", |b| {
        b.iter(|| {
            for chunk in buf.chunks(CHUNK_LEN) {
                black_box(
                    gcm.encrypt_inout_detached(&[0u8; 12].into(), chunk, (&mut [][..]).into())
                        .unwrap(),
                );
            }
        })
    });
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &KEY).unwrap(),
    );
    g.bench_function("gmac ring", |b| {
        b.iter(|| {
            for chunk in buf.chunks(CHUNK_LEN) {
                let nonce = ring::aead::Nonce::assume_unique_for_key([0u8; 12]);
                let _ = black_box(
                    ring_key
                        .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(chunk), &mut [])
                        .unwrap(),
                );
            }
        })
    });
    let aws_key = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_128_GCM, &KEY).unwrap(),
    );
    g.bench_function("gmac aws-lc-rs", |b| {
        b.iter(|| {
            for chunk in buf.chunks(CHUNK_LEN) {
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key([0u8; 12]);
                let _ = black_box(
                    aws_key
                        .seal_in_place_separate_tag(
                            nonce,
                            aws_lc_rs::aead::Aad::from(chunk),
                            &mut [],
                        )
                        .unwrap(),
                );
            }
        })
    });
    // The same GMAC through aes-gcm 0.10, whose GHASH takes one block at a time.
    let old = <aes_gcm_0_10::Aes128Gcm as aes_gcm_0_10::KeyInit>::new(&KEY.into());
    g.bench_function("gmac aes-gcm 0.10", |b| {
        b.iter(|| {
            for chunk in buf.chunks(CHUNK_LEN) {
                black_box(
                    old.encrypt_in_place_detached(&[0u8; 12].into(), chunk, &mut [])
                        .unwrap(),
                );
            }
        })
    });
    g.bench_function("aes-128-gcm encrypt (aes-gcm crate)", |b| {
        b.iter(|| {
            black_box(
                gcm.encrypt_inout_detached(&[0u8; 12].into(), b"", (&mut *buf).into())
                    .unwrap(),
            )
        })
    });
    g.bench_function("hmac-sha256", |b| {
        b.iter(|| {
            let mut m = Hmac::<Sha256>::new_from_slice(&KEY).unwrap();
            m.update(buf);
            black_box(m.finalize().into_bytes())
        })
    });
    g.bench_function("blake3 keyed", |b| {
        b.iter(|| black_box(blake3::keyed_hash(&[0x42; 32], buf)))
    });
    let best = locker.backend().name();
    g.bench_function(format!("v1 lock {best}"), |b| {
        b.iter(|| locker.apply(&cipher, Direction::Lock, 0, buf))
    });
    // What a v2 lock does on one core: lock a chunk, tag it while it is in cache.
    g.bench_function(format!("v2 lock {best} + gmac, per chunk"), |b| {
        b.iter(|| {
            for (i, chunk) in buf.chunks_mut(CHUNK_LEN).enumerate() {
                let offset = (i * CHUNK_LEN) as u64;
                locker.apply(&cipher, Direction::Lock, offset, chunk);
                black_box(auth.chunk_tag(0, i as u64, chunk));
            }
        })
    });
    // The same with `aes-gcm` 0.11's GMAC, what `deeplock::auth` used before AWS-LC.
    g.bench_function(
        format!("v2 lock {best} + gmac aes-gcm 0.11, per chunk"),
        |b| {
            b.iter(|| {
                for (i, chunk) in buf.chunks_mut(CHUNK_LEN).enumerate() {
                    let offset = (i * CHUNK_LEN) as u64;
                    locker.apply(&cipher, Direction::Lock, offset, chunk);
                    black_box(
                        gcm.encrypt_inout_detached(
                            &[0u8; 12].into(),
                            &*chunk,
                            (&mut [][..]).into(),
                        )
                        .unwrap(),
                    );
                }
            })
        },
    );
    if len > CHUNK_LEN {
        let threads = rayon::current_num_threads();
        g.bench_function(format!("tensor_tag parallel x{threads}"), |b| {
            b.iter(|| black_box(auth.tensor_tag(&desc, buf).unwrap()))
        });
        g.bench_function(format!("v1 lock {best} parallel x{threads}"), |b| {
            b.iter(|| locker.apply_parallel(&cipher, Direction::Lock, 0, buf))
        });
        g.bench_function(
            format!("v2 lock {best} + gmac, per chunk, parallel x{threads}"),
            |b| {
                b.iter(|| {
                    let tags: Vec<_> = buf
                        .par_chunks_mut(CHUNK_LEN)
                        .enumerate()
                        .map(|(i, chunk)| {
                            let offset = (i * CHUNK_LEN) as u64;
                            locker.apply(&cipher, Direction::Lock, offset, chunk);
                            auth.chunk_tag(0, i as u64, chunk)
                        })
                        .collect();
                    black_box(tags)
                })
            },
        );
        let mut dst_storage = vec![0x5au8; len + PAGE];
        let dst = page_aligned(&mut dst_storage, len);
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                dst.copy_from_slice(buf);
                black_box(&mut *dst);
            })
        });
    }
    g.finish();
}

fn auth(c: &mut Criterion) {
    bench_size(c, "16KiB", 16 * 1024, 50);
    bench_size(c, "1MiB", CHUNK_LEN, 30);
    bench_size(c, "256MiB", 256 << 20, 10);
}

criterion_group!(benches, auth);
criterion_main!(benches);
