// GEMV: Y = X · Wᵀ + b for a few activation rows (batch 1, token-by-token inference,
// up to GEMV_BATCH rows per workgroup row; a larger batch runs more workgroup rows, each
// decoding W again, which is why `Kernel::Auto` takes the GEMM above GEMV_BATCH rows).
// Composed after aes_ctr.wgsl and matmul_common.wgsl. X is a dense matrix here
// (convolutions run on the GEMM).
//
// A workgroup computes GEMV_ROWS outputs for each of its batch rows, GEMV_LANES
// invocations per output. Lanes stride over the 16-byte keystream-aligned blocks of their
// row of W: each block is loaded locked, decoded in registers (one AES block) and
// multiplied by every batch row's x right there, so decoded weights never even reach
// workgroup memory; a tree reduction in workgroup memory then sums the lanes' partial dot
// products, row by row. Each byte of W is decoded once per workgroup row, so at batch 1
// the locked kernel runs one AES block (about 160 table lookups in workgroup memory) per
// 16 bytes of W it reads: AES, not memory bandwidth, bounds it.

// Outputs per workgroup and invocations per output, and invocations per workgroup:
// pipeline constants from the host (`GEMV_ROWS`, `THREADS / GEMV_ROWS`, `THREADS`).
override GEMV_ROWS: u32;
override GEMV_LANES: u32;
// Batch rows per workgroup, 1 or 8 (pipeline constant; host: `GEMV_BATCH`). Registers
// for the most; loops run to the constant GEMV_BATCH, so with 1 they compile away.
override GEMV_BATCH: u32;
// A `const` (it sizes the registers), the host's `GEMV_BATCH`: the layout test checks.
const GEMV_BATCH_MAX: u32 = 8u;
override THREADS: u32;

var<workgroup> partial: array<f32, THREADS>;

// Dot product of the value(s) of the decoded word at aligned byte `a` that fall in the
// row starting at W element `row_first` with the matching elements of row `m` of X.
fn dot_word(word: u32, a: u32, row_first: u32, m: u32) -> f32 {
    if (a < params.w.shift) {
        return 0.0;
    }
    let v = a - params.w.shift;
    if (DTYPE == DTYPE_F32) {
        // Wrapping: elements before the row give huge c.
        let c = v / 4u - row_first;
        if (c < params.k) {
            return bitcast<f32>(word) * x[m * params.k + c];
        }
        return 0.0;
    }
    var sum = 0.0;
    let c0 = v / 2u - row_first;
    if (c0 < params.k) {
        sum = decode_element(word, 0u, DTYPE) * x[m * params.k + c0];
    }
    let c1 = c0 + 1u;
    if (c1 < params.k) {
        sum += decode_element(word, 1u, DTYPE) * x[m * params.k + c1];
    }
    return sum;
}

@compute @workgroup_size(THREADS)
fn gemv_main(
    @builtin(local_invocation_index) local_index: u32,
    @builtin(workgroup_id) workgroup: vec3<u32>,
) {
    if (needs_aes_tables()) {
        aes_load_tables(local_index, THREADS);
    }
    let lane = local_index % GEMV_LANES;
    let n = workgroup.x * GEMV_ROWS + local_index / GEMV_LANES;
    let m0 = workgroup.y * GEMV_BATCH;
    // Uniform across the workgroup. Loops run to the constant GEMV_BATCH and test it, so
    // compilers unroll them and keep `acc` in registers.
    let rows = min(GEMV_BATCH, params.m - m0);
    var acc: array<f32, GEMV_BATCH_MAX>;
    for (var i = 0u; i < GEMV_BATCH; i++) {
        acc[i] = 0.0;
    }
    if (n < params.n) {
        let es = dtype_bytes(DTYPE);
        let row_first = n * params.k;
        let a0 = params.w.shift + row_first * es;
        let a1 = a0 + params.k * es;
        for (var ab = a0 / 16u + lane; ab * 16u < a1; ab += GEMV_LANES) {
            let words = w_block(ab);
            let a = ab * 16u;
            for (var i = 0u; i < GEMV_BATCH; i++) {
                if (i < rows) {
                    let m = m0 + i;
                    acc[i] += dot_word(words.x, a, row_first, m)
                        + dot_word(words.y, a + 4u, row_first, m)
                        + dot_word(words.z, a + 8u, row_first, m)
                        + dot_word(words.w, a + 12u, row_first, m);
                }
            }
        }
    }
    var bias = 0.0;
    if (lane == 0u && n < params.n) {
        bias = bias_value(n);
    }
    for (var i = 0u; i < GEMV_BATCH; i++) {
        if (i < rows) {
            partial[local_index] = acc[i];
            workgroupBarrier();
            for (var stride = GEMV_LANES / 2u; stride > 0u; stride /= 2u) {
                if (lane < stride) {
                    partial[local_index] += partial[local_index + stride];
                }
                workgroupBarrier();
            }
            if (lane == 0u && n < params.n) {
                y[(m0 + i) * params.n + n] = partial[local_index] + bias;
            }
            // The next row's sums overwrite `partial` only once this one is read.
            workgroupBarrier();
        }
    }
}
