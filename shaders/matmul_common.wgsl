// Shared part of the fused matmul kernels (matmul_gemm.wgsl, matmul_gemv.wgsl):
// Y = X · Wᵀ + b, with X [M, K] f32, W [N, K] in PyTorch `Linear` layout (row-major, as
// a safetensors file stores it), b [N], Y [M, N] f32. Composed after aes_ctr.wgsl (which
// owns group 0) and before one kernel; built by `deeplock::gpu::FusedMatmul`.
//
// W may be locked under deeplock v1. Its bytes are then decoded where they are used:
// loaded locked from storage, turned into plaintext in registers (inverse S-box, XOR
// with the keystream block computed on the spot) and consumed from registers or
// workgroup memory. No storage buffer ever holds a plaintext weight.
//
// Coordinates. A tensor operand (W, or b) is a run of bytes of a tensor starting at byte
// `tensor_offset` of that tensor (0 for a whole tensor). Its "aligned" byte a is
// `tensor_offset % 16 + view byte`, so that aligned byte 16 * j starts keystream block
// `tensor_offset / 16 + j`. tensor_offset is a multiple of 4, so aligned words are whole
// words of the operand's storage binding.

// Pipeline constants. Plain and locked kernels are one source: with LOCKED false the
// decode is the identity and the AES tables are never loaded, so plain vs locked timings
// differ by the decode alone.
override LOCKED: bool;
// Element type of W: one of the DTYPE_ constants.
override DTYPE: u32;

const DTYPE_F32: u32 = 0u;
const DTYPE_F16: u32 = 1u;
const DTYPE_BF16: u32 = 2u;

// Where an operand's bytes are and how to decode them (host: `OperandParams`).
struct Operand {
    // Keystream block of aligned byte 0: tensor_offset / 16, as (low, high).
    first_block: vec2<u32>,
    // The tensor's nonce (bytes 0..4, 4..8, little-endian); used for b, whose key
    // uniform is W's (same master key, so the same round keys; another nonce).
    nonce: vec2<u32>,
    // Binding word index of aligned word 0, wrapping: aligned word i is word
    // i + word_base of the binding.
    word_base: u32,
    // Aligned words [word_lo, word_hi) hold the operand's bytes; others are not read.
    word_lo: u32,
    word_hi: u32,
    // tensor_offset % 16: aligned byte of view byte 0.
    shift: u32,
    // Element type (DTYPE_*): b's may differ from W's.
    dtype: u32,
    // 1 if the operand is locked.
    locked: u32,
    pad0: u32,
    pad1: u32,
}

// X as a batch of NHWC images, for a stride-1 convolution computed as an implicit GEMM
// (host: `ConvInput`): row m of X is output position (b, oy, ox), column kk is input
// channel kk / (kh * kw) at tap (ky, kx) = (kk % (kh * kw)) / kw, % kw, the order of a
// PyTorch conv weight [out, in, kh, kw] read as a Linear matrix. Taps outside the image
// read as zero (padding). No im2col matrix is ever built.
struct ConvView {
    // 1 if X is such an image batch; 0 if it is a dense [M, K] matrix.
    image: u32,
    // Input height, width, channels; output height, width; kernel height, width;
    // zero padding above/below and left/right.
    h: u32,
    w: u32,
    c: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    pad_h: u32,
    pad_w: u32,
    pad0: u32,
    pad1: u32,
}

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    // 1 if there is a bias.
    has_bias: u32,
    // GEMM split-K: the number of K ranges (workgroup.z) and the TILE_K slices of each.
    // With splits > 1 each range's partial products go to `k_partials`, and
    // gemm_reduce_main sums them into y.
    splits: u32,
    slices_per_split: u32,
    pad0: u32,
    pad1: u32,
    w: Operand,
    bias: Operand,
    conv: ConvView,
}

@group(1) @binding(0) var<storage, read> x: array<f32>;
@group(1) @binding(1) var<storage, read> w_data: array<u32>;
// Bound to W's window when there is no bias (never read then).
@group(1) @binding(2) var<storage, read> bias_data: array<u32>;
@group(1) @binding(3) var<storage, read_write> y: array<f32>;
@group(1) @binding(4) var<uniform> params: MatmulParams;
// The GEMM's split-K partial sums, [splits][M][N] f32 (a scratch buffer of
// FusedMatmul's; sums of products, never weights). Unused by the GEMV.
@group(1) @binding(5) var<storage, read_write> k_partials: array<f32>;

// Element (m, kk) of X (m < M, kk < K) for the GEMM: read from the dense matrix, or
// gathered from the image batch for a convolution.
fn x_value(m: u32, kk: u32) -> f32 {
    if (params.conv.image == 0u) {
        return x[m * params.k + kk];
    }
    let cv = params.conv;
    let taps = cv.kh * cv.kw;
    let ch = kk / taps;
    let t = kk % taps;
    let ox = m % cv.ow;
    let oy = (m / cv.ow) % cv.oh;
    let b = m / (cv.ow * cv.oh);
    let iy = i32(oy + t / cv.kw) - i32(cv.pad_h);
    let ix = i32(ox + t % cv.kw) - i32(cv.pad_w);
    if (iy < 0 || iy >= i32(cv.h) || ix < 0 || ix >= i32(cv.w)) {
        return 0.0;
    }
    return x[((b * cv.h + u32(iy)) * cv.w + u32(ix)) * cv.c + ch];
}

// Whether this dispatch needs the AES tables: for W, or for a locked bias.
fn needs_aes_tables() -> bool {
    return LOCKED || params.bias.locked != 0u;
}

fn dtype_bytes(dtype: u32) -> u32 {
    return select(2u, 4u, dtype == DTYPE_F32);
}

// Element `half_index` (0: low bytes, 1: high bytes) of a word of 16-bit values, or the
// word itself as an f32.
fn decode_element(word: u32, half_index: u32, dtype: u32) -> f32 {
    switch dtype {
        case DTYPE_F32: {
            return bitcast<f32>(word);
        }
        case DTYPE_F16: {
            let v = unpack2x16float(word);
            return select(v.x, v.y, half_index == 1u);
        }
        default: {
            // BF16 is the high half of an f32.
            return bitcast<f32>(select(word << 16u, word & 0xffff0000u, half_index == 1u));
        }
    }
}

// Aligned word `aw` of W as stored (locked or not), 0 outside the operand.
fn w_load(aw: u32) -> u32 {
    if (aw < params.w.word_lo || aw >= params.w.word_hi) {
        return 0u;
    }
    return w_data[aw + params.w.word_base];
}

// The 16 bytes of aligned block `ab` of W, ready to use: decoded to plaintext (in
// registers) when LOCKED, as stored otherwise. One AES block per call when LOCKED.
// Words outside the operand come back as noise: callers must not use them.
fn w_block(ab: u32) -> vec4<u32> {
    let aw = ab * 4u;
    let raw = vec4<u32>(w_load(aw), w_load(aw + 1u), w_load(aw + 2u), w_load(aw + 3u));
    if (!LOCKED) {
        return raw;
    }
    let ks = aes_keystream(aes_block_add(params.w.first_block, ab));
    return vec4<u32>(
        aes_unlock_word(raw.x, ks.x),
        aes_unlock_word(raw.y, ks.y),
        aes_unlock_word(raw.z, ks.z),
        aes_unlock_word(raw.w, ks.w),
    );
}

// Bias element `col` (col < N), decoded; 0 without a bias. One AES block if the bias is
// locked: call it once per output column and workgroup, not per output.
fn bias_value(col: u32) -> f32 {
    if (params.has_bias == 0u) {
        return 0.0;
    }
    let b = params.bias;
    let a = b.shift + col * dtype_bytes(b.dtype);
    let aw = a / 4u;
    var word = bias_data[aw + b.word_base];
    if (b.locked != 0u) {
        let block = aes_block_add(b.first_block, a / 16u);
        let ks = aes_encrypt(vec4<u32>(b.nonce.x, b.nonce.y, aes_bswap(block.y), aes_bswap(block.x)));
        word = aes_unlock_word(word, ks[aw % 4u]);
    }
    return decode_element(word, (a % 4u) / 2u, b.dtype);
}
