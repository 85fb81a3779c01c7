//! The CPU reference forward pass ([`Model::forward`]): plain loops that follow each layer's definition, with
//! every sum accumulated in f64 (then rounded to f32, the activations' type), so that a
//! faster path (the GPU kernels) can be checked against it. Inputs of a batch run in
//! parallel; each input's computation is sequential and deterministic.
//!
//! NaN propagates as in PyTorch: through ReLU, and out of any max-pool window that
//! holds one. A wrong key yields weights with NaN and infinite values; keeping them
//! visible (rather than letting `f32::max` drop them) makes a garbage model look like
//! garbage.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::infer::model::{Conv, Dense, Layer, Model};
use crate::infer::plan::Shape;

impl Model {
    /// Runs a batch of `batch` inputs, NCHW (`[batch, c, h, w]` row-major, the shape of
    /// [`Model::input_shape`]); returns the logits, `[batch, outputs]` row-major.
    pub fn forward(&self, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        let per = check_batch(self.input_shape(), input, batch)?;
        if batch == 0 {
            return Ok(Vec::new());
        }
        let out: Vec<Vec<f32>> = input.par_chunks(per).map(|x| self.forward_one(x)).collect();
        Ok(out.concat())
    }

    /// The predicted class of each input of a batch: [`argmax`] of its logits.
    pub fn predict(&self, input: &[f32], batch: usize) -> Result<Vec<usize>> {
        let logits = self.forward(input, batch)?;
        Ok(logits.chunks(self.outputs()).map(argmax).collect())
    }

    /// Runs one input through every layer.
    fn forward_one(&self, input: &[f32]) -> Vec<f32> {
        let mut x = input.to_vec();
        for (layer, &shape) in self.layers.iter().zip(self.plan.shapes()) {
            x = match (layer, shape) {
                (Layer::Conv(c), Shape::Image(dims)) => conv(c, &x, dims),
                (&Layer::MaxPool { size }, Shape::Image(dims)) => max_pool(size, &x, dims),
                (Layer::Relu, _) => x.into_iter().map(relu).collect(),
                (Layer::Flatten, _) => x,
                (Layer::Dense(d), Shape::Vector(_)) => dense(d, &x),
                (l, s) => unreachable!("the plan checked shapes: {l:?} on {s:?}"),
            };
        }
        x
    }
}

/// Checks that `input` holds `batch` inputs of `shape`; returns the values per input.
/// Every forward pass (reference, fast CPU, GPU) takes its batch through it.
pub(crate) fn check_batch(shape: Shape, input: &[f32], batch: usize) -> Result<usize> {
    let per = shape.len();
    if batch.checked_mul(per) != Some(input.len()) {
        return Err(Error::Invalid(format!(
            "a batch of {batch} inputs of shape {shape:?} has {} values, {} were given",
            batch.saturating_mul(per),
            input.len()
        )));
    }
    Ok(per)
}

/// `max(x, 0)`, keeping NaN.
fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

/// `y[o, i, j] = b[o] + sum over c, u, v of w[o, c, u, v] * x[c, i + u - pad, j + v - pad]`,
/// with `x` zero outside the image: the sum runs over the taps that fall inside it.
fn conv(c: &Conv, x: &[f32], [ci, h, w]: [usize; 3]) -> Vec<f32> {
    let [kh, kw] = c.kernel;
    let [ph, pw] = c.pad;
    let (oh, ow) = (h + 2 * ph + 1 - kh, w + 2 * pw + 1 - kw);
    // The taps 0..k of output position i that land on rows (or columns) 0..n.
    let inside =
        |i: usize, k: usize, pad: usize, n: usize| pad.saturating_sub(i)..k.min(n + pad - i);
    let mut y = Vec::with_capacity(c.out_channels * oh * ow);
    for o in 0..c.out_channels {
        for i in 0..oh {
            for j in 0..ow {
                let mut s = f64::from(c.bias[o]);
                let taps = inside(j, kw, pw, w);
                for ch in 0..ci {
                    for u in inside(i, kh, ph, h) {
                        let wrow = &c.weight[((o * ci + ch) * kh + u) * kw..][..kw];
                        let xrow = &x[(ch * h + i + u - ph) * w..][..w];
                        let q0 = j + taps.start - pw;
                        for (&wt, &xv) in wrow[taps.clone()].iter().zip(&xrow[q0..]) {
                            s += f64::from(wt) * f64::from(xv);
                        }
                    }
                }
                y.push(s as f32);
            }
        }
    }
    y
}

/// The maximum of each `size`x`size` window, stride `size`; NaN if the window holds one.
fn max_pool(size: usize, x: &[f32], [c, h, w]: [usize; 3]) -> Vec<f32> {
    let (oh, ow) = (h / size, w / size);
    let mut y = Vec::with_capacity(c * oh * ow);
    for ch in 0..c {
        for i in 0..oh {
            for j in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for u in 0..size {
                    for v in 0..size {
                        let a = x[(ch * h + i * size + u) * w + j * size + v];
                        if a > m || a.is_nan() {
                            m = a;
                        }
                        if m.is_nan() {
                            break;
                        }
                    }
                }
                y.push(m);
            }
        }
    }
    y
}

/// `y = W x + b`, W `[out, in]` row-major.
fn dense(d: &Dense, x: &[f32]) -> Vec<f32> {
    (0..d.outputs)
        .map(|o| {
            let row = &d.weight[o * d.inputs..(o + 1) * d.inputs];
            let s = row.iter().zip(x).fold(f64::from(d.bias[o]), |s, (&w, &a)| {
                s + f64::from(w) * f64::from(a)
            });
            s as f32
        })
        .collect()
}

/// The index of the largest value, the first one on ties; the first NaN if there is one
/// (as `torch.argmax`, which ranks NaN above every number), so the answer never depends
/// on where comparisons with NaN happen to fall. 0 for an empty slice.
pub fn argmax(values: &[f32]) -> usize {
    if let Some(i) = values.iter().position(|v| v.is_nan()) {
        return i;
    }
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// The index of the largest value, the first one on ties, NaN ranking below every
/// number: a model whose outputs are partly NaN is judged on the numbers it does give.
/// 0 when every value is NaN, and for an empty slice.
pub fn argmax_nan_lowest(values: &[f32]) -> usize {
    let mut best: Option<usize> = None;
    for (i, &v) in values.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|b| v > values[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0)
}

/// The fraction of `predictions` equal to their `labels`; 0 when there are none.
///
/// # Panics
/// If the two slices differ in length (a caller's bug, not a data error).
pub fn accuracy(predictions: &[usize], labels: &[u8]) -> f64 {
    assert_eq!(predictions.len(), labels.len(), "one label per prediction");
    if labels.is_empty() {
        return 0.0;
    }
    let right = predictions
        .iter()
        .zip(labels)
        .filter(|(&p, &l)| p == usize::from(l))
        .count();
    right as f64 / labels.len() as f64
}
