// AES-128-CTR keystream core for deeplock kernels (deeplock v1, "aes128-ctr-sbox").
//
// Compose this file in front of a kernel's own source (see `deeplock::gpu::AES_CTR_WGSL`).
// It owns bind group 0; kernels put their own bindings in group 1 and above:
//
//   @group(0) @binding(0)  aes_table_src  storage, read  320 u32: T0, then the inverse
//                                                       S-box packed 4 bytes a word (built
//                                                       on the CPU by
//                                                       `deeplock::gpu::aes::table_words`)
//   @group(0) @binding(1)  aes_key        uniform        AesKey: round keys + tensor nonce
//                                                       (dynamic offset, one per tensor)
//
// and the pipeline constant AES_TABLE_COPIES (a power of two, 1 to 32; host:
// `deeplock::gpu::aes::table_copies`): how many interleaved copies of the tables each
// workgroup keeps, so that the invocations of a warp read different memory banks.
//
// Use, in every entry point that calls the functions below:
//   1. call `aes_load_tables(local_invocation_index, WORKGROUP_SIZE)` first, in uniform
//      control flow (it contains a workgroup barrier), then
//   2. `aes_keystream(block)` gives keystream block `block` of the bound tensor, and
//      `aes_keystream_at(block, shift)` the 16 keystream bytes starting at byte `shift` of
//      block `block` (for data not aligned to keystream blocks);
//   3. `aes_lock_word` / `aes_unlock_word` apply the scheme's S-box layer to 4 bytes.
//
// Byte order: every u32 here holds 4 consecutive bytes little-endian (byte 0 in the low
// bits), as an `array<u32>` view of a byte buffer does, and as
// `RoundKeys::words_le` packs the round keys. An AES state is 4 such words, one per column.
// 64-bit block indices are vec2<u32>(low, high).

// Table entries (u32 words): T0 at 0..256, the packed inverse S-box at 256..320.
const AES_INV_SBOX: u32 = 256u;
const AES_TABLE_WORDS: u32 = 320u;

override AES_TABLE_COPIES: u32 = 1u;
override AES_WORKGROUP_WORDS: u32 = AES_TABLE_WORDS * AES_TABLE_COPIES;

// The key schedule and nonce of one tensor. `round_keys[r]` is round key r, four columns.
struct AesKey {
    round_keys: array<vec4<u32>, 11>,
    // The tensor's 8-byte nonce as two little-endian words (bytes 0..4, bytes 4..8).
    nonce: vec2<u32>,
}

@group(0) @binding(0) var<storage, read> aes_table_src: array<u32>;
@group(0) @binding(1) var<uniform> aes_key: AesKey;

// The tables in workgroup memory: fast, and loaded once per workgroup. (A WGSL `const`
// array would be copied into each invocation's private memory, which is slow.) Entry e
// of copy c is at e * AES_TABLE_COPIES + c: consecutive copies of one entry fall in
// consecutive banks.
var<workgroup> aes_tables: array<u32, AES_WORKGROUP_WORDS>;
// The copy this invocation reads: its index modulo the number of copies, so neighbours
// in a warp read neighbouring banks.
var<private> aes_copy: u32;

// Copies the tables into workgroup memory, all invocations of the workgroup sharing the
// work, then waits for the whole workgroup. Call once, first, in uniform control flow.
fn aes_load_tables(local_index: u32, workgroup_size: u32) {
    for (var i = local_index; i < AES_WORKGROUP_WORDS; i += workgroup_size) {
        aes_tables[i] = aes_table_src[i / AES_TABLE_COPIES];
    }
    aes_copy = local_index % AES_TABLE_COPIES;
    workgroupBarrier();
}

// T0[x]: (2·S[x], S[x], S[x], 3·S[x]), little-endian.
fn aes_t0(x: u32) -> u32 {
    return aes_tables[x * AES_TABLE_COPIES + aes_copy];
}

// Inverse S-box of the byte x.
fn aes_inv_sbox(x: u32) -> u32 {
    let word = aes_tables[(AES_INV_SBOX + (x >> 2u)) * AES_TABLE_COPIES + aes_copy];
    return (word >> (8u * (x & 3u))) & 0xffu;
}

// `block + n` on 64-bit block indices, with carry into the high word (wraps at 2^64).
fn aes_block_add(block: vec2<u32>, n: u32) -> vec2<u32> {
    let lo = block.x + n;
    return vec2<u32>(lo, block.y + select(0u, 1u, lo < n));
}

fn aes_bswap(x: u32) -> u32 {
    return (x << 24u) | ((x & 0xff00u) << 8u) | ((x >> 8u) & 0xff00u) | (x >> 24u);
}

// The counter block of keystream block `block`: nonce || big-endian 64-bit `block`,
// as four little-endian words (hence the byte swaps).
fn aes_counter_block(block: vec2<u32>) -> vec4<u32> {
    return vec4<u32>(aes_key.nonce.x, aes_key.nonce.y, aes_bswap(block.y), aes_bswap(block.x));
}

// One column of a full round (SubBytes, ShiftRows, MixColumns) by T-table lookups:
// row r of the output column comes from column c + r of the input, through Tr, which is
// T0 rotated left by 8r bits.
fn aes_round_column(a: u32, b: u32, c: u32, d: u32) -> u32 {
    let t1 = aes_t0((b >> 8u) & 0xffu);
    let t2 = aes_t0((c >> 16u) & 0xffu);
    let t3 = aes_t0(d >> 24u);
    return aes_t0(a & 0xffu)
        ^ ((t1 << 8u) | (t1 >> 24u))
        ^ ((t2 << 16u) | (t2 >> 16u))
        ^ ((t3 << 24u) | (t3 >> 8u));
}

// One column of the final round (SubBytes, ShiftRows; no MixColumns): S[x] is byte 1
// (and byte 2) of T0[x], so each output byte is a mask, and a shift for rows 0 and 3.
fn aes_final_column(a: u32, b: u32, c: u32, d: u32) -> u32 {
    return ((aes_t0(a & 0xffu) >> 8u) & 0xffu)
        | (aes_t0((b >> 8u) & 0xffu) & 0xff00u)
        | (aes_t0((c >> 16u) & 0xffu) & 0xff0000u)
        | ((aes_t0(d >> 24u) << 16u) & 0xff000000u);
}

// AES-128 encryption of one block under the bound key.
fn aes_encrypt(input: vec4<u32>) -> vec4<u32> {
    var s = input ^ aes_key.round_keys[0];
    for (var r = 1u; r < 10u; r++) {
        s = vec4<u32>(
            aes_round_column(s.x, s.y, s.z, s.w),
            aes_round_column(s.y, s.z, s.w, s.x),
            aes_round_column(s.z, s.w, s.x, s.y),
            aes_round_column(s.w, s.x, s.y, s.z),
        ) ^ aes_key.round_keys[r];
    }
    return vec4<u32>(
        aes_final_column(s.x, s.y, s.z, s.w),
        aes_final_column(s.y, s.z, s.w, s.x),
        aes_final_column(s.z, s.w, s.x, s.y),
        aes_final_column(s.w, s.x, s.y, s.z),
    ) ^ aes_key.round_keys[10];
}

// Keystream block `block` of the bound tensor: tensor bytes 16 * block .. 16 * block + 16.
fn aes_keystream(block: vec2<u32>) -> vec4<u32> {
    return aes_encrypt(aes_counter_block(block));
}

// Bytes `r` .. `r + 4` of the 8 bytes lo || hi (r in 0..4).
fn aes_funnel(lo: u32, hi: u32, r: u32) -> u32 {
    if (r == 0u) {
        return lo;
    }
    return (lo >> (8u * r)) | (hi << (32u - 8u * r));
}

// The 16 keystream bytes starting at byte `shift` (0..16) of block `block`, i.e. tensor
// bytes 16 * block + shift .. + 16. With shift 0 this is one AES block; otherwise two,
// so keep `shift` uniform across the workgroup (it is per dispatch in lock.wgsl).
fn aes_keystream_at(block: vec2<u32>, shift: u32) -> vec4<u32> {
    let k0 = aes_keystream(block);
    if (shift == 0u) {
        return k0;
    }
    let k1 = aes_keystream(aes_block_add(block, 1u));
    // Words q .. q + 5 of k0 || k1, then a byte funnel shift by r.
    let q = shift / 4u;
    let r = shift % 4u;
    var w: array<u32, 5>;
    switch q {
        case 0u: { w = array<u32, 5>(k0.x, k0.y, k0.z, k0.w, k1.x); }
        case 1u: { w = array<u32, 5>(k0.y, k0.z, k0.w, k1.x, k1.y); }
        case 2u: { w = array<u32, 5>(k0.z, k0.w, k1.x, k1.y, k1.z); }
        default: { w = array<u32, 5>(k0.w, k1.x, k1.y, k1.z, k1.w); }
    }
    return vec4<u32>(
        aes_funnel(w[0], w[1], r),
        aes_funnel(w[1], w[2], r),
        aes_funnel(w[2], w[3], r),
        aes_funnel(w[3], w[4], r),
    );
}

// Locks 4 plaintext bytes with their 4 keystream bytes: SBOX[p ^ ks] per byte.
fn aes_lock_word(p: u32, ks: u32) -> u32 {
    let v = p ^ ks;
    return aes_final_column(v, v, v, v);
}

// Unlocks 4 locked bytes with their 4 keystream bytes: INV_SBOX[l] ^ ks per byte.
fn aes_unlock_word(l: u32, ks: u32) -> u32 {
    let inv = aes_inv_sbox(l & 0xffu)
        | (aes_inv_sbox((l >> 8u) & 0xffu) << 8u)
        | (aes_inv_sbox((l >> 16u) & 0xffu) << 16u)
        | (aes_inv_sbox(l >> 24u) << 24u);
    return inv ^ ks;
}
