//! The fast CPU forward pass: f32 throughout, convolutions as im2col plus a register-
//! blocked matmul (AVX2 where the CPU has it), dense layers over a chunk of inputs at
//! once, chunks in parallel. It is what makes evaluating a model on a whole test set (and
//! the paper's Figure 1a: a hundred wrong keys on 10,000 images) take seconds rather than
//! minutes; the f64 reference in `reference.rs` stays the definition it is tested against.
//!
//! Activations of a chunk are kept per input in NCHW order, as the reference keeps them:
//! the im2col matrix of an input is `[c * kh * kw, oh * ow]` (a row per weight column,
//! a column per output position), so `W [out, c * kh * kw] · cols` is the NCHW output.

use rayon::prelude::*;

use crate::error::Result;
use crate::infer::model::{Conv, Dense, Layer, Model};
use crate::infer::plan::Shape;
use crate::infer::reference::{argmax, check_batch};

/// Inputs per parallel task: enough columns for the dense layers' matmul to use its
/// register blocks, few enough that a 10,000-image run load-balances over the cores.
const CHUNK: usize = 16;
/// Rows (output channels or units) of C per register block.
const MR: usize = 4;
/// Columns of C per register block.
const NR: usize = 16;

impl Model {
    /// Like [`Model::forward`], in f32 and much faster; the logits agree with it to
    /// about 1e-6 relative (f32 against f64 sums).
    pub fn forward_fast(&self, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        let per = check_batch(self.input_shape(), input, batch)?;
        let packed: Vec<Packed> = self.layers.iter().map(Packed::new).collect();
        let out: Vec<Vec<f32>> = input
            .par_chunks(per * CHUNK)
            .map(|chunk| self.forward_chunk(&packed, chunk, chunk.len() / per))
            .collect();
        Ok(out.concat())
    }

    /// The predicted class of each input: [`argmax`] of [`Model::forward_fast`]'s logits.
    pub fn predict_fast(&self, input: &[f32], batch: usize) -> Result<Vec<usize>> {
        let logits = self.forward_fast(input, batch)?;
        Ok(logits.chunks(self.outputs()).map(argmax).collect())
    }

    /// Runs `n` inputs (`x`, concatenated) through every layer.
    fn forward_chunk(&self, packed: &[Packed], x: &[f32], n: usize) -> Vec<f32> {
        let mut x = x.to_vec();
        let mut cols = Vec::new();
        for ((layer, &shape), p) in self.layers.iter().zip(self.plan.shapes()).zip(packed) {
            x = match (layer, shape) {
                (Layer::Conv(c), Shape::Image(dims)) => {
                    let per = dims.iter().product::<usize>();
                    x.chunks_exact(per)
                        .flat_map(|image| conv(c, p, image, dims, &mut cols))
                        .collect()
                }
                (&Layer::MaxPool { size }, Shape::Image([c, h, w])) => {
                    max_pool(size, &x, [n * c, h, w])
                }
                (Layer::Relu, _) => x
                    .into_iter()
                    .map(|v| if v < 0.0 { 0.0 } else { v })
                    .collect(),
                (Layer::Flatten, _) => x,
                (Layer::Dense(d), Shape::Vector(_)) => dense(d, p, &x, n),
                (l, s) => unreachable!("the plan checked shapes: {l:?} on {s:?}"),
            };
        }
        x
    }
}

/// A layer's weight matrix `[rows, k]` with its rows padded with zeros to a multiple of
/// [`MR`], so every register block is whole; empty for layers without weights.
struct Packed {
    weight: Vec<f32>,
}

impl Packed {
    fn new(layer: &Layer) -> Self {
        let (w, rows) = match layer {
            Layer::Conv(c) => (&c.weight, c.out_channels),
            Layer::Dense(d) => (&d.weight, d.outputs),
            _ => return Packed { weight: Vec::new() },
        };
        let k = w.len() / rows;
        let mut weight = w.clone();
        weight.resize(rows.next_multiple_of(MR) * k, 0.0);
        Packed { weight }
    }
}

/// A convolution of one input, NCHW in and out.
fn conv(c: &Conv, p: &Packed, x: &[f32], [ci, h, w]: [usize; 3], cols: &mut Vec<f32>) -> Vec<f32> {
    let [kh, kw] = c.kernel;
    let [ph, pw] = c.pad;
    let (oh, ow) = (h + 2 * ph + 1 - kh, w + 2 * pw + 1 - kw);
    let npos = (oh * ow).next_multiple_of(NR);
    let k = ci * kh * kw;
    cols.clear();
    cols.resize(k * npos, 0.0);
    for ch in 0..ci {
        for u in 0..kh {
            for v in 0..kw {
                let row = &mut cols[((ch * kh + u) * kw + v) * npos..][..npos];
                for i in 0..oh {
                    let Some(y) = (i + u).checked_sub(ph).filter(|&y| y < h) else {
                        continue;
                    };
                    let src = &x[(ch * h + y) * w..][..w];
                    for j in 0..ow {
                        if let Some(xx) = (j + v).checked_sub(pw).filter(|&xx| xx < w) {
                            row[i * ow + j] = src[xx];
                        }
                    }
                }
            }
        }
    }
    let mut y = matmul(&p.weight, c.out_channels, k, cols, npos);
    // Drop the padding columns, add the bias.
    let mut out = Vec::with_capacity(c.out_channels * oh * ow);
    for (o, row) in y.chunks_exact_mut(npos).take(c.out_channels).enumerate() {
        out.extend(row[..oh * ow].iter().map(|v| v + c.bias[o]));
    }
    out
}

/// A dense layer on `n` inputs (`x`: `[n, inputs]`): `W · xᵀ` as one matmul.
fn dense(d: &Dense, p: &Packed, x: &[f32], n: usize) -> Vec<f32> {
    let cols = n.next_multiple_of(NR);
    let mut xt = vec![0f32; d.inputs * cols];
    for (b, xi) in x.chunks_exact(d.inputs).enumerate() {
        for (i, &v) in xi.iter().enumerate() {
            xt[i * cols + b] = v;
        }
    }
    let y = matmul(&p.weight, d.outputs, d.inputs, &xt, cols);
    let mut out = Vec::with_capacity(n * d.outputs);
    for b in 0..n {
        out.extend((0..d.outputs).map(|o| y[o * cols + b] + d.bias[o]));
    }
    out
}

/// Max over `size`x`size` windows of `[c, h, w]` (any number of channels: a chunk's
/// inputs one after another), NaN if a window holds one, as the reference.
fn max_pool(size: usize, x: &[f32], [c, h, w]: [usize; 3]) -> Vec<f32> {
    let (oh, ow) = (h / size, w / size);
    let mut y = Vec::with_capacity(c * oh * ow);
    for ch in 0..c {
        for i in 0..oh {
            for j in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for u in 0..size {
                    for &a in &x[(ch * h + i * size + u) * w + j * size..][..size] {
                        if a > m || a.is_nan() {
                            m = a;
                        }
                    }
                    if m.is_nan() {
                        break;
                    }
                }
                y.push(m);
            }
        }
    }
    y
}

/// `C [rows padded to MR, n] = A [rows padded to MR, k] · B [k, n]`, row-major, `n` a
/// multiple of [`NR`]. Each register block of `MR x NR` accumulates over all of `k`.
fn matmul(a: &[f32], rows: usize, k: usize, b: &[f32], n: usize) -> Vec<f32> {
    debug_assert!(n.is_multiple_of(NR) && a.len() == rows.next_multiple_of(MR) * k);
    let mut c = vec![0f32; rows.next_multiple_of(MR) * n];
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the only feature the function is compiled for.
        unsafe { matmul_avx2(a, k, b, n, &mut c) };
        return c;
    }
    matmul_blocks(a, k, b, n, &mut c);
    c
}

/// [`matmul_blocks`] compiled for AVX2: the same code, 8 lanes wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn matmul_avx2(a: &[f32], k: usize, b: &[f32], n: usize, c: &mut [f32]) {
    matmul_blocks(a, k, b, n, c);
}

#[inline(always)]
fn matmul_blocks(a: &[f32], k: usize, b: &[f32], n: usize, c: &mut [f32]) {
    for (a_rows, c_rows) in a.chunks_exact(MR * k).zip(c.chunks_exact_mut(MR * n)) {
        for j0 in (0..n).step_by(NR) {
            let mut acc = [[0f32; NR]; MR];
            for kk in 0..k {
                let bv: &[f32; NR] = b[kk * n + j0..][..NR].try_into().expect("NR values");
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = a_rows[r * k + kk];
                    for (s, &bj) in acc_r.iter_mut().zip(bv) {
                        *s += av * bj;
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                c_rows[r * n + j0..][..NR].copy_from_slice(acc_r);
            }
        }
    }
}
