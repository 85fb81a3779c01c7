//! The x86-64 backends: AES-NI on 128-bit registers, VAES on 256-bit (AVX2) and on
//! 512-bit (AVX-512) registers. One kernel serves all three: it is written once over
//! [`Lanes`], a register of 1, 2 or 4 AES blocks whose few operations are the only
//! places intrinsics appear, so every width runs the same counter, round and S-box
//! logic and testing one width tests the logic of all.
//!
//! Counters stay in registers. Each 128-bit lane holds its counter block byte-reversed:
//! the block index as a little-endian u64 in the low half, the nonce reversed in the
//! high half. A 64-bit lane add then steps the index with the carry running through
//! all 64 bits (across 2^32 as anywhere), and one byte-reversing shuffle turns the lane
//! into `nonce || big-endian index`. Most batches of blocks differ only in the last
//! byte of that form, so [`first_round`] usually needs one shuffle per batch rather
//! than one per register.
//!
//! The S-box step uses the AES unit instead of table lookups (which cannot be
//! vectorised and would leak the data through cache timing). `AESENCLAST(y, 0)` is
//! `ShiftRows(SubBytes(y))`; SubBytes works byte by byte, so for
//! `y = InvShiftRows(x)` it yields `SubBytes(x)`, the S-box of every byte of `x`. Lock:
//! `L = AESENCLAST(InvShiftRows(P ^ KS), 0)`. `AESDECLAST(y, k)` is
//! `InvSubBytes(InvShiftRows(y)) ^ k`, so unlock is `P = AESDECLAST(ShiftRows(L), KS)`,
//! the keystream XOR included.

use std::arch::x86_64::*;

use zeroize::Zeroize;

use crate::scheme::{Direction, TensorCipher};

/// Registers processed per iteration of the main loop. AES instructions have a
/// latency of 4 to 5 cycles and issue up to two per cycle, so eight independent blocks
/// of work keep the AES units busy while each waits for its previous round.
const INTERLEAVE: usize = 8;

/// The widest register, in bytes: the size of the stack block that partial blocks
/// go through.
const MAX_BYTES: usize = 64;

/// `pshufb` index that reverses the 16 bytes of a lane: counter lane to counter block.
const BYTE_REVERSE: [u8; 16] = [15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0];
/// `pshufb` index for ShiftRows on the column-major AES state: byte `r + 4c` takes
/// byte `r + 4((c + r) mod 4)`.
const SHIFT_ROWS: [u8; 16] = [0, 5, 10, 15, 4, 9, 14, 3, 8, 13, 2, 7, 12, 1, 6, 11];
/// `pshufb` index for InvShiftRows: byte `r + 4c` takes byte `r + 4((c - r) mod 4)`.
const INV_SHIFT_ROWS: [u8; 16] = [0, 13, 10, 7, 4, 1, 14, 11, 8, 5, 2, 15, 12, 9, 6, 3];

/// Whether the CPU has what [`apply_aesni`] needs.
pub(super) fn has_aesni() -> bool {
    is_x86_feature_detected!("aes") && is_x86_feature_detected!("ssse3")
}

/// Whether the CPU has what [`apply_vaes256`] needs.
pub(super) fn has_vaes256() -> bool {
    is_x86_feature_detected!("vaes")
        && is_x86_feature_detected!("aes")
        && is_x86_feature_detected!("avx2")
}

/// Whether the CPU has what [`apply_vaes512`] needs.
pub(super) fn has_vaes512() -> bool {
    is_x86_feature_detected!("vaes")
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
}

/// Locks or unlocks `data` (the tensor's bytes from byte `offset`) with AES-NI.
///
/// # Safety
/// The CPU must support AES-NI and SSSE3 ([`has_aesni`]).
#[target_feature(enable = "aes,ssse3")]
pub(super) unsafe fn apply_aesni(
    cipher: &TensorCipher,
    dir: Direction,
    offset: u64,
    data: &mut [u8],
) {
    // SAFETY: the caller guarantees AES-NI and SSSE3, all that `__m128i`'s `Lanes`
    // operations need.
    unsafe { run::<__m128i>(cipher, dir, offset, data) }
}

/// Locks or unlocks `data` (the tensor's bytes from byte `offset`) with VAES on AVX2.
///
/// # Safety
/// The CPU must support VAES, AES-NI and AVX2 ([`has_vaes256`]).
#[target_feature(enable = "vaes,aes,avx2")]
pub(super) unsafe fn apply_vaes256(
    cipher: &TensorCipher,
    dir: Direction,
    offset: u64,
    data: &mut [u8],
) {
    // SAFETY: the caller guarantees VAES and AVX2, all that `__m256i`'s `Lanes`
    // operations need.
    unsafe { run::<__m256i>(cipher, dir, offset, data) }
}

/// Locks or unlocks `data` (the tensor's bytes from byte `offset`) with VAES on
/// AVX-512.
///
/// # Safety
/// The CPU must support VAES, AVX-512F and AVX-512BW ([`has_vaes512`]).
#[target_feature(enable = "vaes,avx512f,avx512bw")]
pub(super) unsafe fn apply_vaes512(
    cipher: &TensorCipher,
    dir: Direction,
    offset: u64,
    data: &mut [u8],
) {
    // SAFETY: the caller guarantees VAES, AVX-512F and AVX-512BW, all that `__m512i`'s
    // `Lanes` operations need.
    unsafe { run::<__m512i>(cipher, dir, offset, data) }
}

/// A SIMD register of [`Lanes::BLOCKS`] AES blocks, one per 128-bit lane; every
/// operation works on each lane alike.
///
/// The methods are `unsafe` because they are compiled for CPU features (their
/// `#[target_feature]`) that the caller must have checked.
trait Lanes: Copy {
    /// AES blocks per register.
    const BLOCKS: usize;
    /// Bytes per register.
    const BYTES: usize = 16 * Self::BLOCKS;
    /// Reads `BYTES` bytes from `p` (any alignment).
    unsafe fn load(p: *const u8) -> Self;
    /// Writes `BYTES` bytes to `p` (any alignment).
    unsafe fn store(self, p: *mut u8);
    /// The 16 bytes `b` in every lane.
    unsafe fn splat(b: &[u8; 16]) -> Self;
    unsafe fn xor(self, b: Self) -> Self;
    /// Adds `b` as two u64 per lane.
    unsafe fn add64(self, b: Self) -> Self;
    /// `pshufb`: byte `i` of each lane takes byte `idx[i]` of that lane.
    unsafe fn shuffle(self, idx: Self) -> Self;
    unsafe fn aesenc(self, key: Self) -> Self;
    unsafe fn aesenclast(self, key: Self) -> Self;
    unsafe fn aesdeclast(self, key: Self) -> Self;
    /// `self`, unchanged, through an empty `asm!` block that LLVM must keep in program
    /// order. The kernel passes every register through it after each round: with 16
    /// registers too few for 8 states and 11 round keys, LLVM otherwise regroups the
    /// round-major interleaving into a few one-block-at-a-time chains, and the core
    /// no longer finds 8 independent AES instructions per round (about 12% slower
    /// with VAES on Zen 3).
    unsafe fn fence(self) -> Self;
}

/// Implements [`Lanes`] for one register type (`$reg`: its `asm!` register class) with
/// its intrinsics, every method compiled for `$features`.
macro_rules! impl_lanes {
    (
        $v:ty, $reg:ident, blocks: $blocks:literal, features: $features:literal,
        load: $load:ident, store: $store:ident, splat: $splat:ident($load128:ident),
        xor: $xor:ident, add64: $add:ident, shuffle: $shuffle:ident,
        aesenc: $enc:ident, aesenclast: $enclast:ident, aesdeclast: $declast:ident $(,)?
    ) => {
        impl Lanes for $v {
            const BLOCKS: usize = $blocks;
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load(p: *const u8) -> Self {
                // SAFETY: the caller passes `BYTES` readable bytes; loadu takes any alignment.
                unsafe { $load(p.cast()) }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn store(self, p: *mut u8) {
                // SAFETY: the caller passes `BYTES` writable bytes; storeu takes any alignment.
                unsafe { $store(p.cast(), self) }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn splat(b: &[u8; 16]) -> Self {
                // SAFETY: `b` is 16 readable bytes.
                $splat(unsafe { $load128(b.as_ptr().cast()) })
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn xor(self, b: Self) -> Self {
                $xor(self, b)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn add64(self, b: Self) -> Self {
                $add(self, b)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn shuffle(self, idx: Self) -> Self {
                $shuffle(self, idx)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn aesenc(self, key: Self) -> Self {
                $enc(self, key)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn aesenclast(self, key: Self) -> Self {
                $enclast(self, key)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn aesdeclast(self, key: Self) -> Self {
                $declast(self, key)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn fence(self) -> Self {
                let mut x = self;
                // SAFETY: the template is empty (a comment naming the register): it
                // reads and writes nothing but leaves `x` as it was.
                unsafe {
                    std::arch::asm!(
                        "/* {0} */",
                        inout($reg) x,
                        options(nomem, nostack, preserves_flags)
                    )
                };
                x
            }
        }
    };
}

/// The 128-bit lane itself: splatting a lane is loading it.
#[inline]
fn identity(v: __m128i) -> __m128i {
    v
}

impl_lanes!(
    __m128i, xmm_reg, blocks: 1, features: "aes,ssse3",
    load: _mm_loadu_si128, store: _mm_storeu_si128, splat: identity(_mm_loadu_si128),
    xor: _mm_xor_si128, add64: _mm_add_epi64, shuffle: _mm_shuffle_epi8,
    aesenc: _mm_aesenc_si128, aesenclast: _mm_aesenclast_si128,
    aesdeclast: _mm_aesdeclast_si128,
);

impl_lanes!(
    __m256i, ymm_reg, blocks: 2, features: "vaes,aes,avx2",
    load: _mm256_loadu_si256, store: _mm256_storeu_si256,
    splat: _mm256_broadcastsi128_si256(_mm_loadu_si128),
    xor: _mm256_xor_si256, add64: _mm256_add_epi64, shuffle: _mm256_shuffle_epi8,
    aesenc: _mm256_aesenc_epi128, aesenclast: _mm256_aesenclast_epi128,
    aesdeclast: _mm256_aesdeclast_epi128,
);

impl_lanes!(
    __m512i, zmm_reg, blocks: 4, features: "vaes,avx512f,avx512bw",
    load: _mm512_loadu_si512, store: _mm512_storeu_si512,
    splat: _mm512_broadcast_i32x4(_mm_loadu_si128),
    xor: _mm512_xor_si512, add64: _mm512_add_epi64, shuffle: _mm512_shuffle_epi8,
    aesenc: _mm512_aesenc_epi128, aesenclast: _mm512_aesenclast_epi128,
    aesdeclast: _mm512_aesdeclast_epi128,
);

/// Everything the kernel keeps in registers (or reads from L1): the round keys and
/// shuffle indices splatted to every lane. The round keys are the master key in
/// another form, so they are wiped on drop, as `TensorCipher` wipes its own.
struct Consts<V: Lanes> {
    round_keys: [V; 11],
    byte_reverse: V,
    shift_rows: V,
    inv_shift_rows: V,
    /// `BLOCKS` in the low u64 of every counter lane: one register's counter step.
    step: V,
    /// `BLOCKS` in the last byte of every big-endian counter block.
    step_last_byte: V,
    zero: V,
    /// The nonce, reversed: the high half of every counter lane.
    nonce_reversed: [u8; 8],
}

impl<V: Lanes> Consts<V> {
    /// # Safety
    /// The CPU must have `V`'s features.
    #[inline(always)]
    unsafe fn new(cipher: &TensorCipher) -> Self {
        let rk = cipher.round_keys();
        let mut nonce_reversed = cipher.nonce().0;
        nonce_reversed.reverse();
        let mut step_last_byte = [0u8; 16];
        step_last_byte[15] = V::BLOCKS as u8;
        // SAFETY (all blocks below): the caller guarantees `V`'s features.
        Consts {
            round_keys: std::array::from_fn(|r| unsafe { V::splat(rk.round(r)) }),
            byte_reverse: unsafe { V::splat(&BYTE_REVERSE) },
            shift_rows: unsafe { V::splat(&SHIFT_ROWS) },
            inv_shift_rows: unsafe { V::splat(&INV_SHIFT_ROWS) },
            step: unsafe { V::splat(&(V::BLOCKS as u128).to_le_bytes()) },
            step_last_byte: unsafe { V::splat(&step_last_byte) },
            zero: unsafe { V::splat(&[0; 16]) },
            nonce_reversed,
        }
    }

    /// The counter of blocks `first`, `first + 1`, ... `first + BLOCKS - 1`.
    ///
    /// # Safety
    /// The CPU must have `V`'s features.
    #[inline(always)]
    unsafe fn counter(&self, first: u64) -> Counter<V> {
        let mut lanes = [0u8; MAX_BYTES];
        for (k, lane) in lanes.chunks_exact_mut(16).take(V::BLOCKS).enumerate() {
            lane[..8].copy_from_slice(&first.wrapping_add(k as u64).to_le_bytes());
            lane[8..].copy_from_slice(&self.nonce_reversed);
        }
        Counter {
            // SAFETY: `lanes` holds MAX_BYTES >= BYTES bytes; the caller guarantees the
            // features.
            lanes: unsafe { V::load(lanes.as_ptr()) },
            first,
        }
    }
}

impl<V: Lanes> Drop for Consts<V> {
    fn drop(&mut self) {
        let size = std::mem::size_of_val(&self.round_keys);
        // SAFETY: the round keys are plain integer vectors, `size` bytes long, for
        // which every byte pattern (zero included) is valid.
        let bytes: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(self.round_keys.as_mut_ptr().cast(), size) };
        bytes.zeroize();
    }
}

/// The counter blocks of the next register: byte-reversed lanes for the vector adds,
/// and the first block's index.
#[derive(Clone, Copy)]
struct Counter<V> {
    lanes: V,
    first: u64,
}

/// Dispatches on the direction once per call, so the loops have no branch on it.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn run<V: Lanes>(cipher: &TensorCipher, dir: Direction, offset: u64, data: &mut [u8]) {
    // SAFETY: the caller guarantees `V`'s features.
    unsafe {
        let consts = Consts::<V>::new(cipher);
        match dir {
            Direction::Lock => run_dir::<V, true>(&consts, offset, data),
            Direction::Unlock => run_dir::<V, false>(&consts, offset, data),
        }
    }
}

/// The partial first block (when `offset` is mid-block), then [`INTERLEAVE`] registers
/// at a time, then one register at a time, then the partial last register.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn run_dir<V: Lanes, const LOCK: bool>(k: &Consts<V>, offset: u64, data: &mut [u8]) {
    let skip = (offset % 16) as usize;
    let head = if skip == 0 {
        0
    } else {
        (16 - skip).min(data.len())
    };
    let (head_bytes, body) = data.split_at_mut(head);
    // SAFETY (all blocks below): the caller guarantees `V`'s features.
    if head > 0 {
        let mut ctr = unsafe { k.counter(offset / 16) };
        unsafe { partial::<V, LOCK>(k, &mut ctr, skip, head_bytes) };
    }
    let mut ctr = unsafe { k.counter((offset + head as u64) / 16) };
    let mut wide = body.chunks_exact_mut(INTERLEAVE * V::BYTES);
    for chunk in &mut wide {
        unsafe { step::<V, INTERLEAVE, LOCK>(k, &mut ctr, chunk) };
    }
    let mut single = wide.into_remainder().chunks_exact_mut(V::BYTES);
    for chunk in &mut single {
        unsafe { step::<V, 1, LOCK>(k, &mut ctr, chunk) };
    }
    let tail = single.into_remainder();
    if !tail.is_empty() {
        unsafe { partial::<V, LOCK>(k, &mut ctr, 0, tail) };
    }
}

/// Runs less than one register of bytes through [`step`] by way of a stack block,
/// with `data` at byte `skip` of it.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn partial<V: Lanes, const LOCK: bool>(
    k: &Consts<V>,
    ctr: &mut Counter<V>,
    skip: usize,
    data: &mut [u8],
) {
    let mut block = [0u8; MAX_BYTES];
    let window = skip..skip + data.len();
    block[window.clone()].copy_from_slice(data);
    // SAFETY: the caller guarantees the features.
    unsafe { step::<V, 1, LOCK>(k, ctr, &mut block[..V::BYTES]) };
    data.copy_from_slice(&block[window]);
}

/// The first-round states of the next `R` registers of counter blocks (each block XOR
/// round key 0), stepping `ctr` past them. Three ways, cheapest first; the first two
/// rely on the batch's blocks differing only in the last byte of their big-endian
/// form, which holds unless that byte wraps inside the batch (1 batch in 256 / blocks):
/// - the batch starts at a multiple of its power-of-two size: the blocks are the
///   first one with a few low bits set, so one XOR per register forms them from the
///   first block already XORed with round key 0;
/// - otherwise, no wrap: byte-swap once and add to the last byte, an add and an XOR per
///   register;
/// - a wrap: byte-swap every register's lanes after the 64-bit add.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn first_round<V: Lanes, const R: usize>(k: &Consts<V>, ctr: &mut Counter<V>) -> [V; R] {
    let blocks = R * V::BLOCKS;
    let rk0 = k.round_keys[0];
    let mut s = [k.zero; R];
    let low = (ctr.first & 0xff) as usize;
    // SAFETY: the caller guarantees `V`'s features.
    unsafe {
        if low.is_multiple_of(blocks) && blocks.is_power_of_two() && blocks <= 256 {
            let first = ctr.lanes.shuffle(k.byte_reverse).xor(rk0);
            for (i, x) in s.iter_mut().enumerate() {
                let mut offset = [0u8; 16];
                offset[15] = (i * V::BLOCKS) as u8;
                *x = first.xor(V::splat(&offset));
            }
        } else if low + blocks <= 256 {
            let mut be = ctr.lanes.shuffle(k.byte_reverse);
            for x in s.iter_mut() {
                *x = be.xor(rk0);
                be = be.add64(k.step_last_byte);
            }
        } else {
            let mut lanes = ctr.lanes;
            for x in s.iter_mut() {
                *x = lanes.shuffle(k.byte_reverse).xor(rk0);
                lanes = lanes.add64(k.step);
            }
        }
        ctr.lanes = ctr.lanes.add64(V::splat(&(blocks as u128).to_le_bytes()));
    }
    ctr.first = ctr.first.wrapping_add(blocks as u64);
    s
}

/// Locks or unlocks `chunk`, `R` registers of whole blocks, with the keystream of the
/// counters from `ctr` on, and steps `ctr` past them.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn step<V: Lanes, const R: usize, const LOCK: bool>(
    k: &Consts<V>,
    ctr: &mut Counter<V>,
    chunk: &mut [u8],
) {
    assert_eq!(chunk.len(), R * V::BYTES);
    // SAFETY: the caller guarantees `V`'s features; every load and store is of one
    // register at `i * BYTES` inside `chunk`, whose length was just checked.
    unsafe {
        let rk = &k.round_keys;
        let mut s = first_round::<V, R>(k, ctr);
        for key in &rk[1..10] {
            for x in s.iter_mut() {
                *x = x.aesenc(*key).fence();
            }
        }
        for x in s.iter_mut() {
            *x = x.aesenclast(rk[10]);
        }
        let p = chunk.as_mut_ptr();
        for (i, ks) in s.iter().enumerate() {
            let at = p.add(i * V::BYTES);
            let d = V::load(at);
            let out = if LOCK {
                d.xor(*ks).shuffle(k.inv_shift_rows).aesenclast(k.zero)
            } else {
                d.shuffle(k.shift_rows).aesdeclast(*ks)
            };
            out.store(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::MasterKey;
    use crate::reference;
    use crate::scheme::Nonce;

    /// Four AES-NI registers posing as one 512-bit register: runs the kernel in the
    /// shape of the AVX-512 backend (4 blocks per register, 32 per batch, 64-byte
    /// partial blocks) on processors without AVX-512, so that shape is tested here
    /// even where [`apply_vaes512`] cannot run. Only the 512-bit intrinsics themselves
    /// go untested.
    #[derive(Clone, Copy)]
    struct Quad([__m128i; 4]);

    impl Quad {
        /// # Safety
        /// The CPU must have AES-NI and SSSE3.
        #[inline]
        #[target_feature(enable = "aes,ssse3")]
        unsafe fn map(self, b: Self, f: impl Fn(__m128i, __m128i) -> __m128i) -> Self {
            Quad(std::array::from_fn(|i| f(self.0[i], b.0[i])))
        }
    }

    impl Lanes for Quad {
        const BLOCKS: usize = 4;
        #[target_feature(enable = "aes,ssse3")]
        unsafe fn load(p: *const u8) -> Self {
            // SAFETY: the caller passes 64 readable bytes and has the features.
            Quad(std::array::from_fn(|i| unsafe {
                __m128i::load(p.add(16 * i))
            }))
        }
        #[target_feature(enable = "aes,ssse3")]
        unsafe fn store(self, p: *mut u8) {
            for (i, v) in self.0.into_iter().enumerate() {
                // SAFETY: the caller passes 64 writable bytes and has the features.
                unsafe { v.store(p.add(16 * i)) }
            }
        }
        #[target_feature(enable = "aes,ssse3")]
        unsafe fn splat(b: &[u8; 16]) -> Self {
            // SAFETY: the caller has the features.
            Quad([unsafe { __m128i::splat(b) }; 4])
        }
        // SAFETY (each method below): the caller has the features `__m128i` needs.
        #[target_feature(enable = "aes,ssse3")]
        unsafe fn xor(self, b: Self) -> Self {
            unsafe { self.map(b, |x, y| x.xor(y)) }
        }
        #[target_feature(enable = "aes,ssse3")]
        unsafe fn add64(self, b: Self) -> Self {
            unsafe { self.map(b, |x, y| x.add64(y)) }
        }
        #[target_feature(enable = "aes,ssse3")]
        unsafe fn shuffle(self, idx: Self) -> Self {
            unsafe { self.map(idx, |x, y| x.shuffle(y)) }
        }
        #[target_feature(enable = "aes,ssse3")]
        unsafe fn aesenc(self, key: Self) -> Self {
            unsafe { self.map(key, |x, y| x.aesenc(y)) }
        }
        #[target_feature(enable = "aes,ssse3")]
        unsafe fn aesenclast(self, key: Self) -> Self {
            unsafe { self.map(key, |x, y| x.aesenclast(y)) }
        }
        #[target_feature(enable = "aes,ssse3")]
        unsafe fn aesdeclast(self, key: Self) -> Self {
            unsafe { self.map(key, |x, y| x.aesdeclast(y)) }
        }
        #[target_feature(enable = "aes,ssse3")]
        unsafe fn fence(self) -> Self {
            unsafe { self.map(self, |x, _| x.fence()) }
        }
    }

    #[test]
    fn four_blocks_per_register_matches_reference() {
        if !has_aesni() {
            eprintln!("no AES-NI: the 4-block kernel shape cannot be run here");
            return;
        }
        let c = TensorCipher::new(&MasterKey::from_bytes([9; 16]), Nonce([0xfe; 8]));
        let block_2_32 = (1u64 << 32) * 16;
        let offsets = [
            0,
            1,
            15,
            16,
            17,
            63,
            64,
            65,
            255 * 16,
            255 * 16 + 3,
            block_2_32 - 33 * 16 - 5,
            block_2_32 - 32 * 16,
            (1 << 36) + 7,
        ];
        let lengths = [
            0,
            1,
            15,
            16,
            17,
            63,
            64,
            65,
            511,
            512,
            513,
            4096 + 13,
            20_000,
        ];
        for &offset in &offsets {
            for &len in &lengths {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                for dir in [Direction::Lock, Direction::Unlock] {
                    let mut want = data.clone();
                    reference::apply(&c, dir, offset, &mut want);
                    let mut got = data.clone();
                    // SAFETY: AES-NI and SSSE3 were detected above.
                    unsafe { run::<Quad>(&c, dir, offset, &mut got) };
                    assert!(got == want, "{dir:?} offset {offset} len {len}");
                }
            }
        }
    }
}
