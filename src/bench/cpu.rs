//! The CPU side of `deeplock bench`.

use std::time::Instant;

use aes::cipher::{KeyIvInit, StreamCipher};
use rayon::prelude::*;

use super::{median_seconds, Rate, Record, Runs, Seconds, Workload};
use crate::auth::{FileAuthKey, Tag, CHUNK_LEN};
use crate::cpu::CpuLocker;
use crate::key::MasterKey;
use crate::scheme::{Direction, Salt, TensorCipher};

/// The processor's model name (Linux), or the architecture.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Locks every tensor of `w` (laid out back to back in `buf`) with `f`.
fn each_tensor(
    w: &Workload,
    buf: &mut [u8],
    ciphers: &[TensorCipher],
    mut f: impl FnMut(&TensorCipher, &mut [u8]),
) {
    let mut rest = buf;
    for (len, c) in w.tensors.iter().zip(ciphers) {
        let (t, r) = rest.split_at_mut(*len);
        f(c, t);
        rest = r;
    }
}

/// What a v2 lock or unlock does to one tensor, chunk by chunk ([`CHUNK_LEN`] bytes):
/// lock a chunk then tag it while it is in cache (`tags` receives the tags), or check a
/// chunk's tag against `tags` then unlock it. On the current rayon pool if `parallel`
/// (chunks spread over the cores), else on this thread. Panics if a tag does not match:
/// the caller keeps `tags` those of the bytes in `t`.
#[allow(clippy::too_many_arguments)]
fn v2_tensor(
    locker: &CpuLocker,
    cipher: &TensorCipher,
    auth: &FileAuthKey,
    index: u32,
    dir: Direction,
    parallel: bool,
    t: &mut [u8],
    tags: &mut [Tag],
) {
    let one = |(c, (chunk, tag)): (usize, (&mut [u8], &mut Tag))| {
        let offset = (c * CHUNK_LEN) as u64;
        match dir {
            Direction::Lock => {
                locker.apply(cipher, dir, offset, chunk);
                *tag = auth.chunk_tag(index, c as u64, chunk);
            }
            Direction::Unlock => {
                assert!(
                    auth.chunk_tag(index, c as u64, chunk) == *tag,
                    "chunk {c} of tensor {index}: tag mismatch"
                );
                locker.apply(cipher, dir, offset, chunk);
            }
        }
    };
    if parallel {
        t.par_chunks_mut(CHUNK_LEN)
            .zip(tags.par_iter_mut())
            .enumerate()
            .for_each(one);
    } else {
        t.chunks_mut(CHUNK_LEN)
            .zip(tags.iter_mut())
            .enumerate()
            .for_each(one);
    }
}

/// Measures the CPU fast path on `w`: all cores and one core, lock and unlock, v1 and v2
/// (v1 plus a GMAC per 1 MiB chunk, `v2_tensor`), next to memcpy on all cores and
/// plain AES-128-CTR on one core.
pub fn bench_cpu(w: &Workload, runs: Runs) -> Record {
    let locker = CpuLocker::new();
    let key = MasterKey::generate().expect("system RNG");
    let salt = Salt([7; 16]);
    let ciphers: Vec<TensorCipher> = (0..w.tensors.len())
        .map(|i| TensorCipher::for_tensor(&key, &salt, &format!("t{i}")))
        .collect();
    let n = w.bytes();
    let mut buf: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
    let mut dst = vec![0u8; n];
    let time = |dir: Direction, parallel: bool, buf: &mut [u8]| {
        median_seconds(runs, || {
            each_tensor(w, buf, &ciphers, |c, t| {
                if parallel {
                    locker.apply_parallel(c, dir, 0, t)
                } else {
                    locker.apply(c, dir, 0, t)
                }
            });
            None
        })
    };
    let lock = time(Direction::Lock, true, &mut buf);
    let unlock = time(Direction::Unlock, true, &mut buf);
    let lock_1t = time(Direction::Lock, false, &mut buf);
    let unlock_1t = time(Direction::Unlock, false, &mut buf);
    const GRAIN: usize = 1 << 20;
    let copy = median_seconds(runs, || {
        dst.par_chunks_mut(GRAIN)
            .zip(buf.par_chunks(GRAIN))
            .for_each(|(d, s)| d.copy_from_slice(s));
        None
    });
    let aes_ctr = median_seconds(runs, || {
        let mut c = ctr::Ctr64BE::<aes::Aes128>::new(key.as_bytes().into(), &[0u8; 16].into());
        c.apply_keystream(&mut buf);
        None
    });
    // v2: each timed run locks (or checks then unlocks) every chunk, and an untimed v1
    // pass on all cores then puts the bytes back, so that the tags of the last lock
    // stay those of the bytes that each unlock checks.
    let auth = FileAuthKey::derive(&key, &salt);
    let mut tags: Vec<Vec<Tag>> = w
        .tensors
        .iter()
        .map(|len| vec![Tag([0; 16]); len.div_ceil(CHUNK_LEN)])
        .collect();
    let v2 = |dir: Direction, parallel: bool, buf: &mut [u8], tags: &mut [Vec<Tag>]| {
        median_seconds(runs, || {
            let start = Instant::now();
            let mut i = 0;
            each_tensor(w, buf, &ciphers, |c, t| {
                v2_tensor(
                    &locker,
                    c,
                    &auth,
                    i,
                    dir,
                    parallel,
                    t,
                    &mut tags[i as usize],
                );
                i += 1;
            });
            let seconds = start.elapsed().as_secs_f64();
            let back = match dir {
                Direction::Lock => Direction::Unlock,
                Direction::Unlock => Direction::Lock,
            };
            each_tensor(w, buf, &ciphers, |c, t| {
                locker.apply_parallel(c, back, 0, t)
            });
            Some(seconds)
        })
    };
    let v2_lock = v2(Direction::Lock, true, &mut buf, &mut tags);
    let v2_lock_1t = v2(Direction::Lock, false, &mut buf, &mut tags);
    each_tensor(w, &mut buf, &ciphers, |c, t| {
        locker.apply_parallel(c, Direction::Lock, 0, t)
    });
    let v2_unlock = v2(Direction::Unlock, true, &mut buf, &mut tags);
    let v2_unlock_1t = v2(Direction::Unlock, false, &mut buf, &mut tags);
    let r = |s: f64| Rate::new(n, s).gbps;
    Record {
        device: "cpu".into(),
        adapter: cpu_name(),
        vendor: 0,
        backend: locker.backend().name().into(),
        device_type: "Cpu".into(),
        driver: format!("{} threads", rayon::current_num_threads()),
        size_label: w.label.clone(),
        size_bytes: n,
        lock_gbps: r(lock),
        unlock_gbps: r(unlock),
        lock_wall_gbps: r(lock),
        unlock_wall_gbps: r(unlock),
        copy_gbps: r(copy),
        lock_over_copy: copy / lock,
        aes_ctr_gbps: Some(r(aes_ctr)),
        lock_1t_gbps: Some(r(lock_1t)),
        unlock_1t_gbps: Some(r(unlock_1t)),
        v2_lock_gbps: Some(r(v2_lock)),
        v2_unlock_gbps: Some(r(v2_unlock)),
        v2_lock_1t_gbps: Some(r(v2_lock_1t)),
        v2_unlock_1t_gbps: Some(r(v2_unlock_1t)),
        table_copies: None,
        seconds: Seconds {
            lock,
            unlock,
            lock_wall: lock,
            unlock_wall: unlock,
            copy,
            aes_ctr: Some(aes_ctr),
            lock_1t: Some(lock_1t),
            unlock_1t: Some(unlock_1t),
            v2_lock: Some(v2_lock),
            v2_unlock: Some(v2_unlock),
            v2_lock_1t: Some(v2_lock_1t),
            v2_unlock_1t: Some(v2_unlock_1t),
        },
        runs: runs.timed,
    }
}
