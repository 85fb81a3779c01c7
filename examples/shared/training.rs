//! The training code shared by `train_fashion_mnist` (which trains the committed fixture)
//! and `attacks` (the paper's fine-tuning adversary and its baselines): the paper's
//! Fashion-MNIST network with forward and backward passes written out by hand, Adam,
//! and one epoch of mini-batch training. Included by both with `#[path]`, so there is
//! one copy; everything here is used by both.
//!
//! im2col convolutions keep the inner loops long contiguous rows the compiler
//! vectorises; mini-batches are split into a fixed number of pieces run in parallel
//! with rayon and summed in order, so a run is reproducible from its seed whatever the
//! number of cores. He-uniform initialisation, softmax cross-entropy, Adam.

use deeplock::infer::{Arch, ConvSpec, DenseSpec, LayerSpec, Padding};
use deeplock::mnist::{Dataset, CLASSES};
use deeplock::rng::SplitMix64;
use rayon::prelude::*;

/// Pieces each mini-batch is split into, run in parallel and summed in order: fixed, so
/// the sums (and the trained weights) do not depend on the number of threads.
pub const PIECES: usize = 8;

/// Sizes of a network of the form conv, max-pool 2, ReLU, conv, max-pool 2, ReLU,
/// flatten, dense, ReLU, dense; square inputs of one channel, square kernels.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub side: usize,
    pub k1: usize,
    pub c1: usize,
    pub k2: usize,
    pub c2: usize,
    pub hidden: usize,
    pub classes: usize,
}

/// The paper's Fashion-MNIST network.
pub const FASHION: Dims = Dims {
    side: 28,
    k1: 5,
    c1: 16,
    k2: 5,
    c2: 32,
    hidden: 128,
    classes: CLASSES,
};

impl Dims {
    /// Side of conv1's output.
    pub fn s1(&self) -> usize {
        self.side - self.k1 + 1
    }
    /// Side after the first max-pool.
    pub fn p1(&self) -> usize {
        self.s1() / 2
    }
    /// Side of conv2's output.
    pub fn s2(&self) -> usize {
        self.p1() - self.k2 + 1
    }
    /// Side after the second max-pool.
    pub fn p2(&self) -> usize {
        self.s2() / 2
    }
    /// Length of the flattened features.
    pub fn flat(&self) -> usize {
        self.c2 * self.p2() * self.p2()
    }

    /// Name and PyTorch-layout shape of every tensor, in the order of the flat
    /// parameter vector.
    pub fn tensors(&self) -> [(&'static str, Vec<usize>); 8] {
        let d = self;
        [
            ("conv1.weight", vec![d.c1, 1, d.k1, d.k1]),
            ("conv1.bias", vec![d.c1]),
            ("conv2.weight", vec![d.c2, d.c1, d.k2, d.k2]),
            ("conv2.bias", vec![d.c2]),
            ("fc1.weight", vec![d.hidden, d.flat()]),
            ("fc1.bias", vec![d.hidden]),
            ("fc2.weight", vec![d.classes, d.hidden]),
            ("fc2.bias", vec![d.classes]),
        ]
    }

    /// The architecture description of this network.
    pub fn arch(&self) -> Arch {
        let conv = |n: &str| {
            LayerSpec::Conv(ConvSpec {
                weight: format!("{n}.weight"),
                bias: format!("{n}.bias"),
                padding: Padding::Valid,
            })
        };
        let dense = |n: &str| {
            LayerSpec::Dense(DenseSpec {
                weight: format!("{n}.weight"),
                bias: format!("{n}.bias"),
            })
        };
        Arch {
            input: [1, self.side, self.side],
            layers: vec![
                conv("conv1"),
                LayerSpec::MaxPool(2),
                LayerSpec::Relu,
                conv("conv2"),
                LayerSpec::MaxPool(2),
                LayerSpec::Relu,
                LayerSpec::Flatten,
                dense("fc1"),
                LayerSpec::Relu,
                dense("fc2"),
            ],
        }
    }
}

/// A network's parameters, all in one vector (so gradients and Adam's moments are
/// vectors of the same layout), with the views of each tensor.
#[derive(Clone)]
pub struct Net {
    pub dims: Dims,
    pub params: Vec<f32>,
}

/// Views of the eight tensors of a parameter (or gradient) vector.
struct Parts<T> {
    w1: T,
    b1: T,
    w2: T,
    b2: T,
    w3: T,
    b3: T,
    w4: T,
    b4: T,
}

/// Splits `v` into the eight tensors of `dims`, in [`Dims::tensors`] order.
fn split<'a>(dims: &Dims, v: &'a [f32]) -> Parts<&'a [f32]> {
    let mut rest = v;
    let mut next = |n: usize| {
        let (a, b) = rest.split_at(n);
        rest = b;
        a
    };
    let t = dims.tensors().map(|(_, s)| s.iter().product::<usize>());
    Parts {
        w1: next(t[0]),
        b1: next(t[1]),
        w2: next(t[2]),
        b2: next(t[3]),
        w3: next(t[4]),
        b3: next(t[5]),
        w4: next(t[6]),
        b4: next(t[7]),
    }
}

/// Like [`split`], mutably.
fn split_mut<'a>(dims: &Dims, v: &'a mut [f32]) -> Parts<&'a mut [f32]> {
    let mut rest = v;
    let mut next = |n: usize| {
        let (a, b) = std::mem::take(&mut rest).split_at_mut(n);
        rest = b;
        a
    };
    let t = dims.tensors().map(|(_, s)| s.iter().product::<usize>());
    Parts {
        w1: next(t[0]),
        b1: next(t[1]),
        w2: next(t[2]),
        b2: next(t[3]),
        w3: next(t[4]),
        b3: next(t[5]),
        w4: next(t[6]),
        b4: next(t[7]),
    }
}

/// Number of parameters of `dims`.
pub fn param_count(dims: &Dims) -> usize {
    dims.tensors()
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

/// `out[m, n] += sum_k a[m, k] * b[k, n]` (`a` is `[M, K]`, `b` is `[K, N]`).
fn mm_acc(out: &mut [f32], a: &[f32], b: &[f32], k: usize, n: usize) {
    for (o_row, a_row) in out.chunks_exact_mut(n).zip(a.chunks_exact(k)) {
        for (&av, b_row) in a_row.iter().zip(b.chunks_exact(n)) {
            for (o, &bv) in o_row.iter_mut().zip(b_row) {
                *o += av * bv;
            }
        }
    }
}

/// `out[k, n] += sum_m a[m, k] * b[m, n]` (`a` is `[M, K]`, `b` is `[M, N]`): `A^T B`.
fn mm_at_b_acc(out: &mut [f32], a: &[f32], b: &[f32], k: usize, n: usize) {
    for (a_row, b_row) in a.chunks_exact(k).zip(b.chunks_exact(n)) {
        for (&av, o_row) in a_row.iter().zip(out.chunks_exact_mut(n)) {
            for (o, &bv) in o_row.iter_mut().zip(b_row) {
                *o += av * bv;
            }
        }
    }
}

/// `out[m, k] += sum_n a[m, n] * b[k, n]` (`a` is `[M, N]`, `b` is `[K, N]`): `A B^T`.
fn mm_a_bt_acc(out: &mut [f32], a: &[f32], b: &[f32], k: usize, n: usize) {
    for (o_row, a_row) in out.chunks_exact_mut(k).zip(a.chunks_exact(n)) {
        for (o, b_row) in o_row.iter_mut().zip(b.chunks_exact(n)) {
            *o += dot(a_row, b_row);
        }
    }
}

/// A dot product in eight independent lanes, which the compiler vectorises (a single
/// running sum would have to stay sequential).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The patches of a `[c, side, side]` image for a `k`x`k` valid convolution:
/// `[c * k * k, out * out]`, row `(ch * k + u) * k + v` holding `x[ch, i + u, j + v]`.
fn im2col(x: &[f32], c: usize, side: usize, k: usize, col: &mut [f32]) {
    let out = side - k + 1;
    for ch in 0..c {
        for u in 0..k {
            for v in 0..k {
                let row = &mut col[((ch * k + u) * k + v) * out * out..][..out * out];
                for i in 0..out {
                    let src = &x[(ch * side + i + u) * side + v..][..out];
                    row[i * out..(i + 1) * out].copy_from_slice(src);
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each patch gradient back onto the image gradient.
fn col2im(col: &[f32], c: usize, side: usize, k: usize, dx: &mut [f32]) {
    let out = side - k + 1;
    for ch in 0..c {
        for u in 0..k {
            for v in 0..k {
                let row = &col[((ch * k + u) * k + v) * out * out..][..out * out];
                for i in 0..out {
                    let dst = &mut dx[(ch * side + i + u) * side + v..][..out];
                    for (d, &g) in dst.iter_mut().zip(&row[i * out..(i + 1) * out]) {
                        *d += g;
                    }
                }
            }
        }
    }
}

/// 2x2 max-pool of `[c, side, side]` (odd remainder dropped), then ReLU. Returns the
/// activations and, for each, the index in `x` of the maximum (the gradient's route).
fn pool_relu(x: &[f32], c: usize, side: usize) -> (Vec<f32>, Vec<usize>) {
    let p = side / 2;
    let mut y = Vec::with_capacity(c * p * p);
    let mut idx = Vec::with_capacity(c * p * p);
    for ch in 0..c {
        for i in 0..p {
            for j in 0..p {
                let mut best = (ch * side + 2 * i) * side + 2 * j;
                for (u, v) in [(0, 1), (1, 0), (1, 1)] {
                    let at = (ch * side + 2 * i + u) * side + 2 * j + v;
                    if x[at] > x[best] {
                        best = at;
                    }
                }
                y.push(x[best].max(0.0));
                idx.push(best);
            }
        }
    }
    (y, idx)
}

/// What the backward pass needs of one image's forward pass.
pub struct Trace {
    col1: Vec<f32>,
    a1: Vec<f32>,
    idx1: Vec<usize>,
    col2: Vec<f32>,
    a2: Vec<f32>,
    idx2: Vec<usize>,
    a3: Vec<f32>,
    pub logits: Vec<f32>,
}

impl Net {
    /// He-uniform weights (Glorot-uniform for the output layer, which has no ReLU),
    /// zero biases, from `seed`.
    pub fn init(dims: Dims, seed: u64) -> Self {
        let mut rng = SplitMix64(seed);
        let mut params = Vec::with_capacity(param_count(&dims));
        for (name, shape) in dims.tensors() {
            let n: usize = shape.iter().product();
            if shape.len() == 1 {
                params.extend(std::iter::repeat_n(0.0, n));
                continue;
            }
            let fan_in: usize = shape[1..].iter().product();
            let limit = if name == "fc2.weight" {
                (6.0 / (fan_in + shape[0]) as f32).sqrt()
            } else {
                (6.0 / fan_in as f32).sqrt()
            };
            params.extend((0..n).map(|_| rng.next_signed_unit() * limit));
        }
        Net { dims, params }
    }

    /// The forward pass of one image `[side, side]`.
    pub fn forward(&self, x: &[f32]) -> Trace {
        let d = &self.dims;
        let p = split(d, &self.params);
        let (s1, s2) = (d.s1(), d.s2());

        let mut col1 = vec![0.0; d.k1 * d.k1 * s1 * s1];
        im2col(x, 1, d.side, d.k1, &mut col1);
        let mut z1: Vec<f32> =
            p.b1.iter()
                .flat_map(|&b| std::iter::repeat_n(b, s1 * s1))
                .collect();
        mm_acc(&mut z1, p.w1, &col1, d.k1 * d.k1, s1 * s1);
        let (a1, idx1) = pool_relu(&z1, d.c1, s1);

        let mut col2 = vec![0.0; d.c1 * d.k2 * d.k2 * s2 * s2];
        im2col(&a1, d.c1, d.p1(), d.k2, &mut col2);
        let mut z2: Vec<f32> =
            p.b2.iter()
                .flat_map(|&b| std::iter::repeat_n(b, s2 * s2))
                .collect();
        mm_acc(&mut z2, p.w2, &col2, d.c1 * d.k2 * d.k2, s2 * s2);
        let (a2, idx2) = pool_relu(&z2, d.c2, s2);

        let a3: Vec<f32> =
            p.w3.chunks_exact(d.flat())
                .zip(p.b3)
                .map(|(row, &b)| (b + dot(row, &a2)).max(0.0))
                .collect();
        let logits =
            p.w4.chunks_exact(d.hidden)
                .zip(p.b4)
                .map(|(row, &b)| b + dot(row, &a3))
                .collect();
        Trace {
            col1,
            a1,
            idx1,
            col2,
            a2,
            idx2,
            a3,
            logits,
        }
    }

    /// Adds the gradient of one image's cross-entropy loss to `grad`; returns the loss.
    pub fn backward(&self, x: &[f32], label: usize, grad: &mut [f32]) -> f64 {
        let d = &self.dims;
        let t = self.forward(x);
        let p = split(d, &self.params);
        let g = split_mut(d, grad);
        let (s1, s2) = (d.s1(), d.s2());

        // Softmax cross-entropy: d loss / d logits = softmax - one-hot.
        let max = t.logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let exp: Vec<f32> = t.logits.iter().map(|&v| (v - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let loss = f64::from(sum.ln() + max - t.logits[label]);
        let mut dlogits: Vec<f32> = exp.iter().map(|e| e / sum).collect();
        dlogits[label] -= 1.0;

        // fc2, then fc1's ReLU.
        let mut da3 = vec![0.0; d.hidden];
        for ((&dl, w_row), (gw_row, gb)) in dlogits
            .iter()
            .zip(p.w4.chunks_exact(d.hidden))
            .zip(g.w4.chunks_exact_mut(d.hidden).zip(g.b4.iter_mut()))
        {
            *gb += dl;
            for ((gw, &a), (da, &w)) in gw_row.iter_mut().zip(&t.a3).zip(da3.iter_mut().zip(w_row))
            {
                *gw += dl * a;
                *da += dl * w;
            }
        }
        // fc1 (its ReLU: no gradient where the output was clamped to 0).
        let mut da2 = vec![0.0; d.flat()];
        for (((&dh, &a), w_row), (gw_row, gb)) in da3
            .iter()
            .zip(&t.a3)
            .zip(p.w3.chunks_exact(d.flat()))
            .zip(g.w3.chunks_exact_mut(d.flat()).zip(g.b3.iter_mut()))
        {
            if a <= 0.0 {
                continue;
            }
            *gb += dh;
            for ((gw, &x), (da, &w)) in gw_row.iter_mut().zip(&t.a2).zip(da2.iter_mut().zip(w_row))
            {
                *gw += dh * x;
                *da += dh * w;
            }
        }
        // Second ReLU and max-pool: route each gradient to its window's maximum.
        let mut dz2 = vec![0.0; d.c2 * s2 * s2];
        for ((&g, &a), &at) in da2.iter().zip(&t.a2).zip(&t.idx2) {
            if a > 0.0 {
                dz2[at] += g;
            }
        }
        // conv2: weights, bias, and the gradient of its input patches.
        mm_a_bt_acc(g.w2, &dz2, &t.col2, d.c1 * d.k2 * d.k2, s2 * s2);
        for (gb, row) in g.b2.iter_mut().zip(dz2.chunks_exact(s2 * s2)) {
            *gb += row.iter().sum::<f32>();
        }
        let mut dcol2 = vec![0.0; t.col2.len()];
        mm_at_b_acc(&mut dcol2, p.w2, &dz2, d.c1 * d.k2 * d.k2, s2 * s2);
        let mut da1 = vec![0.0; d.c1 * d.p1() * d.p1()];
        col2im(&dcol2, d.c1, d.p1(), d.k2, &mut da1);
        // First ReLU and max-pool, then conv1 (the input needs no gradient).
        let mut dz1 = vec![0.0; d.c1 * s1 * s1];
        for ((&g, &a), &at) in da1.iter().zip(&t.a1).zip(&t.idx1) {
            if a > 0.0 {
                dz1[at] += g;
            }
        }
        mm_a_bt_acc(g.w1, &dz1, &t.col1, d.k1 * d.k1, s1 * s1);
        for (gb, row) in g.b1.iter_mut().zip(dz1.chunks_exact(s1 * s1)) {
            *gb += row.iter().sum::<f32>();
        }
        loss
    }

    /// Summed gradient and summed loss of a batch (`images` `[n, side * side]`), in
    /// [`PIECES`] parallel pieces summed in order.
    pub fn batch_gradient(
        &self,
        images: &[&[f32]],
        labels: &[usize],
        grads: &mut [Vec<f32>],
    ) -> (Vec<f32>, f64) {
        let per = images.len().div_ceil(PIECES).max(1);
        let losses: Vec<f64> = grads
            .par_iter_mut()
            .zip(images.par_chunks(per).zip(labels.par_chunks(per)))
            .map(|(g, (xs, ls))| {
                g.fill(0.0);
                xs.iter()
                    .zip(ls)
                    .map(|(x, &l)| self.backward(x, l, g))
                    .sum()
            })
            .collect();
        let pieces = images.len().div_ceil(per);
        let mut total = grads[0].clone();
        for g in &grads[1..pieces] {
            for (t, &v) in total.iter_mut().zip(g) {
                *t += v;
            }
        }
        (total, losses.iter().sum())
    }

    /// Predicted classes of images (each `[side * side]`).
    pub fn predict(&self, images: &[&[f32]]) -> Vec<usize> {
        images
            .par_iter()
            .map(|x| deeplock::infer::argmax(&self.forward(x).logits))
            .collect()
    }
}

/// Adam (Kingma and Ba), with the usual constants.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    step: i32,
}

impl Adam {
    fn new(n: usize) -> Self {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
        }
    }

    /// One step on `params` along the mean gradient `grad`.
    fn update(&mut self, params: &mut [f32], grad: &[f32], lr: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        self.step += 1;
        let c1 = 1.0 - B1.powi(self.step);
        let c2 = 1.0 - B2.powi(self.step);
        for (((p, &g), m), v) in params
            .iter_mut()
            .zip(grad)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            *m = B1 * *m + (1.0 - B1) * g;
            *v = B2 * *v + (1.0 - B2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + EPS);
        }
    }
}

/// Fisher-Yates shuffle of `v` driven by `rng`.
pub fn shuffle(v: &mut [usize], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Every image of `data` scaled to [0, 1].
pub fn scaled(data: &Dataset) -> Vec<f32> {
    data.batch_f32(0..data.len())
}

/// Mini-batch training of a network: its parameters, Adam's moments, the gradient
/// buffers of the parallel pieces and the shuffled order of the training images, which
/// each epoch shuffles again (so a run is one seed's sequence of batches).
pub struct Trainer {
    pub net: Net,
    adam: Adam,
    grads: Vec<Vec<f32>>,
    order: Vec<usize>,
    rng: SplitMix64,
}

impl Trainer {
    /// Training of `net` on `images` training images, batches drawn with `seed`.
    pub fn new(net: Net, images: usize, seed: u64) -> Self {
        let n = net.params.len();
        Trainer {
            net,
            adam: Adam::new(n),
            grads: vec![vec![0.0; n]; PIECES],
            order: (0..images).collect(),
            rng: SplitMix64(seed),
        }
    }

    /// One pass over `images` (each `[side * side]`) and their `labels` in shuffled
    /// mini-batches of `batch`, one Adam step of rate `lr` along each batch's mean
    /// gradient. Returns the mean loss.
    pub fn epoch(&mut self, images: &[&[f32]], labels: &[usize], batch: usize, lr: f32) -> f64 {
        assert_eq!(images.len(), self.order.len(), "the images of Trainer::new");
        shuffle(&mut self.order, &mut self.rng);
        let mut loss_sum = 0.0;
        for chunk in self.order.chunks(batch) {
            let xs: Vec<&[f32]> = chunk.iter().map(|&i| images[i]).collect();
            let ls: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
            let (mut g, loss) = self.net.batch_gradient(&xs, &ls, &mut self.grads);
            let n = chunk.len() as f32;
            g.iter_mut().for_each(|v| *v /= n);
            self.adam.update(&mut self.net.params, &g, lr);
            loss_sum += loss;
        }
        loss_sum / images.len() as f64
    }
}

/// Adam's rate in `epoch` (from 1) of `epochs`: `lr`, halved for the last third of a
/// run of at least three epochs.
pub fn rate(lr: f32, epoch: usize, epochs: usize) -> f32 {
    if 3 * epoch > 2 * epochs && epochs >= 3 {
        lr / 2.0
    } else {
        lr
    }
}

/// Share of `images` that `net` classifies as `labels` says (`argmax` as torch's: a NaN
/// logit wins, so a network of NaNs answers class 0).
pub fn accuracy(net: &Net, images: &[&[f32]], labels: &[usize]) -> f64 {
    let right = net
        .predict(images)
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    right as f64 / images.len().max(1) as f64
}
