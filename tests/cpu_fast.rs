//! Every CPU backend this processor can run against the scalar reference, bit for bit:
//! lock and unlock, any length, any offset (mid-block, large, and across the 2^32
//! block boundary where a 32-bit counter would wrap), and single-thread against
//! all-cores.

use deeplock::cpu::{Backend, CpuLocker};
use deeplock::{reference, Direction, MasterKey, Nonce, Salt, TensorCipher};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Byte offset of keystream block 0x1_0000_0000: the first block whose counter needs
/// more than the low 32 bits.
const BLOCK_2_32: u64 = (1 << 32) * 16;

fn lockers() -> Vec<CpuLocker> {
    Backend::available()
        .into_iter()
        .map(|b| CpuLocker::with_backend(b).expect("available backends construct"))
        .collect()
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill(&mut v[..]);
    v
}

fn cipher(key: [u8; 16], nonce: [u8; 8]) -> TensorCipher {
    TensorCipher::new(&MasterKey::from_bytes(key), Nonce(nonce))
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Checks `apply` and `apply_parallel` of every backend against the reference, both
/// directions, and that unlock undoes lock.
fn check_all(c: &TensorCipher, offset: u64, data: &[u8]) -> Result<(), String> {
    for dir in [Direction::Lock, Direction::Unlock] {
        let mut want = data.to_vec();
        reference::apply(c, dir, offset, &mut want);
        for locker in lockers() {
            let name = locker.backend().name();
            let mut got = data.to_vec();
            locker.apply(c, dir, offset, &mut got);
            if let Some(i) = first_difference(&got, &want) {
                return Err(format!(
                    "{name} {dir:?} offset {offset} len {}: byte {i} differs",
                    data.len()
                ));
            }
            let mut par = data.to_vec();
            locker.apply_parallel(c, dir, offset, &mut par);
            if let Some(i) = first_difference(&par, &want) {
                return Err(format!(
                    "{name} {dir:?} parallel offset {offset} len {}: byte {i} differs",
                    data.len()
                ));
            }
            if dir == Direction::Lock {
                locker.apply(c, Direction::Unlock, offset, &mut got);
                if let Some(i) = first_difference(&got, data) {
                    return Err(format!(
                        "{name} unlock(lock) offset {offset}: byte {i} differs"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Starting offsets: small, mid-block, around 2^36, around the 2^32-block boundary, and
/// anywhere below 2^62 (so that offset + length never overflows).
fn offsets() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..4096,
        (1u64 << 36) - 4096..(1u64 << 36) + 4096,
        BLOCK_2_32 - 4096..BLOCK_2_32 + 64,
        0u64..1 << 62,
    ]
}

/// Lengths: empty, around one block (1, 15, 16, 17 ...), a few registers, many
/// interleaved iterations of the widest backend plus odd tails, and now and then up to
/// 3 MiB (many parallel tasks; the reference is slow in a debug build, so rarely).
fn lengths() -> impl Strategy<Value = usize> {
    prop_oneof![
        5 => Just(0usize),
        5 => 1usize..=40,
        5 => 0usize..=2048,
        5 => 0usize..=70_000,
        1 => 0usize..=3 << 20,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_backend_matches_reference(
        seed: u64,
        key: [u8; 16],
        nonce: [u8; 8],
        offset in offsets(),
        len in lengths(),
    ) {
        let data = random_bytes(seed, len);
        if let Err(e) = check_all(&cipher(key, nonce), offset, &data) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// Megabyte-sized buffers, odd lengths and mid-block starts, so that the parallel path
/// splits into many tasks and the wide loops run many iterations; placed so that the
/// 64-bit counter carries out of its low 32 bits (and, separately, through 2^32 bytes
/// of 2^36 offset) in the middle of the buffer, inside a wide iteration.
#[test]
fn megabytes_across_counter_carries() {
    let c = cipher([0x5a; 16], [0xff; 8]);
    let cases = [
        (0u64, 3 * 1024 * 1024 + 13),
        (BLOCK_2_32 - 1_500_000 + 5, 3 * 1024 * 1024 + 1),
        ((1 << 36) - 777_777, 1_234_567),
        (BLOCK_2_32 - 16 * 7 - 3, 16 * 40 + 9),
    ];
    for (i, (offset, len)) in cases.into_iter().enumerate() {
        let data = random_bytes(i as u64, len);
        check_all(&c, offset, &data).unwrap();
    }
}

/// The known answer of docs/SPEC.md (one zero block of tensor "w" under key 00..0f and
/// salt 01..01), straight through every backend: independent of the reference.
#[test]
fn spec_known_answer_on_every_backend() {
    let key = MasterKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
    let c = TensorCipher::for_tensor(&key, &Salt([1; 16]), "w");
    for locker in lockers() {
        let mut d = [0u8; 16];
        locker.apply(&c, Direction::Lock, 0, &mut d);
        assert_eq!(
            deeplock::hex::encode(&d),
            "aa6082eecd4e7827618b2d31c904e672",
            "{}",
            locker.backend().name()
        );
        locker.apply(&c, Direction::Unlock, 0, &mut d);
        assert_eq!(d, [0u8; 16], "{}", locker.backend().name());
    }
}

#[test]
fn selection_takes_the_fastest_available() {
    let available = Backend::available();
    assert_eq!(available.first(), Some(&Backend::Portable));
    assert_eq!(Some(&CpuLocker::new().backend()), available.last());
    for &b in Backend::all() {
        assert_eq!(CpuLocker::with_backend(b).is_some(), available.contains(&b));
        assert_eq!(b.is_available(), available.contains(&b));
    }
    assert_eq!(CpuLocker::portable().backend(), Backend::Portable);
}

/// On x86-64 the detection must find the backends the processor's features allow.
#[cfg(target_arch = "x86_64")]
#[test]
fn detection_matches_cpu_features() {
    let aes = is_x86_feature_detected!("aes") && is_x86_feature_detected!("ssse3");
    let vaes = is_x86_feature_detected!("vaes");
    assert_eq!(Backend::AesNi.is_available(), aes);
    assert_eq!(
        Backend::Vaes256.is_available(),
        vaes && is_x86_feature_detected!("aes") && is_x86_feature_detected!("avx2")
    );
    assert_eq!(
        Backend::Vaes512.is_available(),
        vaes && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
    );
}
