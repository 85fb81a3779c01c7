// Tiled GEMM: Y = X · Wᵀ + b for a batch of rows. Composed after aes_ctr.wgsl and
// matmul_common.wgsl.
//
// A workgroup (16 x 16 invocations) computes a TILE_M x TILE_N tile of Y, each
// invocation a TM x 4 block of it in registers, stepping through K in slices of TILE_K.
// Per step it stages X's slice (TILE_M x TILE_K) and W's (TILE_N x TILE_K) in workgroup
// memory. W's slice is decoded on the way in: the TILE_N row spans of TILE_K elements
// are covered by 16-byte keystream-aligned blocks, each invocation takes one or more
// blocks, computes their keystream, decodes them in registers and scatters the decoded
// f32 values into `w_tile`. So each workgroup runs one AES block per 16 bytes of W per
// slice (plus one per row span where spans do not start on a 16-byte boundary), and
// every decoded weight then serves TILE_M batch rows: the AES cost per multiply-add
// falls as 1 / min(M, TILE_M), and is paid again by each of the ceil(M / TILE_M) tile
// rows. Hence three tile heights: TM = 4 (TILE_M = 64) for batches up to 64, TM = 8
// (TILE_M = 128) up to 128, and TM = 16 (TILE_M = 256, with TILE_K = 16 so the slices
// still fit 32 KiB of workgroup memory) above, each halving the decode per multiply-add.
//
// Split-K: a skinny product (few tiles of Y, long K) would occupy a few compute units
// of a large GPU. Then workgroup.z picks one of params.splits ranges of K; each range's
// partial tile goes to `k_partials`, and gemm_reduce_main adds the ranges up into y. The
// decode work is the same (each W tile is still decoded once per tile row); the bias is
// added by range 0 only.

// Batch rows per invocation, 4, 8 or 16 (pipeline constant).
override TM: u32;
override TILE_M: u32 = 16u * TM;
// The largest TM (a `const`: it sizes the registers; checked against the host's
// variants by the layout test).
const TM_MAX: u32 = 16u;
// Output columns per workgroup (host: `GEMM_TILE_N`; pipeline constant, like THREADS).
override TILE_N: u32;
// Elements of K per slice (a multiple of 8, so a row span of BF16/F16 is whole blocks).
override TILE_K: u32 = select(32u, 16u, TM > 8u);
// Invocations per workgroup, 16 x 16 (host: `THREADS`).
override THREADS: u32;
// Row strides of the slices, one word more than a row so that the invocations storing
// one column (consecutive kk) hit different banks of workgroup memory.
override X_STRIDE: u32 = TILE_M + 1u;
override W_STRIDE: u32 = TILE_N + 1u;
override X_TILE_LEN: u32 = TILE_K * X_STRIDE;
override W_TILE_LEN: u32 = TILE_K * W_STRIDE;

// Slices, k-major: x_tile[kk * X_STRIDE + mm], w_tile[kk * W_STRIDE + nn].
var<workgroup> x_tile: array<f32, X_TILE_LEN>;
var<workgroup> w_tile: array<f32, W_TILE_LEN>;
var<workgroup> bias_tile: array<f32, TILE_N>;

// X's slice at (m0, k0); zeros outside X, so they add nothing.
fn load_x_tile(local_index: u32, m0: u32, k0: u32) {
    for (var i = local_index; i < TILE_M * TILE_K; i += THREADS) {
        let r = i / TILE_K;
        let c = i % TILE_K;
        let m = m0 + r;
        let kk = k0 + c;
        var v = 0.0;
        if (m < params.m && kk < params.k) {
            v = x_value(m, kk);
        }
        x_tile[c * X_STRIDE + r] = v;
    }
}

// Puts the value(s) of the decoded word at aligned byte `a` that fall in the row span
// starting at W element `span_first` into column `r` of w_tile; those past the span's
// `valid` elements (past K) become 0, as 0 * noise could be NaN.
fn put_word(word: u32, a: u32, span_first: u32, r: u32, valid: u32) {
    if (a < params.w.shift) {
        return;
    }
    let v = a - params.w.shift;
    if (DTYPE == DTYPE_F32) {
        // Wrapping: elements before the span give huge c.
        let c = v / 4u - span_first;
        if (c < TILE_K) {
            w_tile[c * W_STRIDE + r] = select(0.0, bitcast<f32>(word), c < valid);
        }
    } else {
        let c0 = v / 2u - span_first;
        if (c0 < TILE_K) {
            w_tile[c0 * W_STRIDE + r] = select(0.0, decode_element(word, 0u, DTYPE), c0 < valid);
        }
        let c1 = c0 + 1u;
        if (c1 < TILE_K) {
            w_tile[c1 * W_STRIDE + r] = select(0.0, decode_element(word, 1u, DTYPE), c1 < valid);
        }
    }
}

// W's slice at (n0, k0), decoded. Row r's span is W elements (n0 + r) * K + k0 .. + TILE_K;
// `slots` blocks from the one holding its first byte cover it: TILE_K * size / 16 when
// every span starts on a block boundary (so the decode splits evenly over the
// invocations), one more otherwise. A block holding no element below K is not loaded
// or decoded, only zero-filled.
fn load_w_tile(local_index: u32, n0: u32, k0: u32) {
    let es = dtype_bytes(DTYPE);
    let aligned = params.w.shift == 0u && (params.k * es) % 16u == 0u;
    let slots = TILE_K * es / 16u + select(1u, 0u, aligned);
    let valid = min(TILE_K, params.k - k0);
    for (var s = local_index; s < TILE_N * slots; s += THREADS) {
        let r = s / slots;
        let n = n0 + r;
        if (n >= params.n) {
            // Feeds only outputs past N, which are never written.
            continue;
        }
        let span_first = n * params.k + k0;
        let a0 = params.w.shift + span_first * es;
        let ab = a0 / 16u + s % slots;
        var words = vec4<u32>(0u);
        if (ab * 16u < a0 + valid * es) {
            words = w_block(ab);
        }
        let a = ab * 16u;
        put_word(words.x, a, span_first, r, valid);
        put_word(words.y, a + 4u, span_first, r, valid);
        put_word(words.z, a + 8u, span_first, r, valid);
        put_word(words.w, a + 12u, span_first, r, valid);
    }
}

// Writes one row of an invocation's TM x 4 block (columns n0 + 4 tx ..): to y, or to
// K range `split`'s part of `k_partials` when K is split.
fn store_row(m: u32, n0: u32, tx: u32, acc: vec4<f32>, split: u32) {
    if (m >= params.m) {
        return;
    }
    let c0 = tx * 4u;
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + c0 + j;
        if (n < params.n) {
            let v = acc[j] + bias_tile[c0 + j];
            if (params.splits == 1u) {
                y[m * params.n + n] = v;
            } else {
                k_partials[(split * params.m + m) * params.n + n] = v;
            }
        }
    }
}

@compute @workgroup_size(16, 16)
fn gemm_main(
    @builtin(local_invocation_id) local_id: vec3<u32>,
    @builtin(local_invocation_index) local_index: u32,
    @builtin(workgroup_id) workgroup: vec3<u32>,
) {
    if (needs_aes_tables()) {
        aes_load_tables(local_index, THREADS);
    }
    let n0 = workgroup.x * TILE_N;
    let m0 = workgroup.y * TILE_M;
    let split = workgroup.z;
    if (local_index < TILE_N) {
        // Read after the first slice's barrier.
        var b = 0.0;
        if (split == 0u && n0 + local_index < params.n) {
            b = bias_value(n0 + local_index);
        }
        bias_tile[local_index] = b;
    }
    let tx = local_id.x;
    let ty = local_id.y;
    // Row i of the invocation's block; loops over TM have constant bounds once the
    // pipeline constant is set, so compilers unroll them and keep `acc` in registers.
    var acc: array<vec4<f32>, TM_MAX>;
    for (var i = 0u; i < TM; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    let k_begin = split * params.slices_per_split * TILE_K;
    let k_end = min(params.k, k_begin + params.slices_per_split * TILE_K);
    for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        load_x_tile(local_index, m0, k0);
        load_w_tile(local_index, n0, k0);
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let wb = kk * W_STRIDE + tx * 4u;
            let b = vec4<f32>(w_tile[wb], w_tile[wb + 1u], w_tile[wb + 2u], w_tile[wb + 3u]);
            let xb = kk * X_STRIDE + ty * TM;
            for (var i = 0u; i < TM; i++) {
                acc[i] += x_tile[xb + i] * b;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        store_row(m0 + ty * TM + i, n0, tx, acc[i], split);
    }
    if (LOCKED) {
        // Do not leave decoded weights in workgroup memory for whatever runs next on this
        // compute unit (a kernel that reads workgroup memory uninitialised could see
        // them, cf. "LeftoverLocals", CVE-2023-4969). Best effort: registers cannot be
        // cleared from WGSL.
        for (var i = local_index; i < W_TILE_LEN; i += THREADS) {
            w_tile[i] = 0.0;
        }
    }
}

// Split-K's second step: y = the sum over K ranges of `k_partials`, one invocation per
// output, in a 2-D grid of workgroups (x fastest) when there are more than a dimension
// allows.
@compute @workgroup_size(THREADS)
fn gemm_reduce_main(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
) {
    let i = id.y * workgroups.x * THREADS + id.x;
    let outputs = params.m * params.n;
    if (i >= outputs) {
        return;
    }
    var sum = 0.0;
    for (var s = 0u; s < params.splits; s++) {
        sum += k_partials[s * outputs + i];
    }
    y[i] = sum;
}
