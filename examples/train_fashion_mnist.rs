//! Trains the paper's Fashion-MNIST network on the real Fashion-MNIST and writes it as
//! the test fixture `tests/fixtures/fashion_mnist_cnn.safetensors` (PyTorch-layout F32
//! tensors) with its architecture `tests/fixtures/fashion_mnist_cnn.arch.json`.
//!
//! The network (Deep-Lock's "C, MP, C, MP, FC, FC"), 1x28x28 inputs scaled to [0, 1]:
//! conv 5x5 1->16 valid, max-pool 2, ReLU, conv 5x5 16->32 valid, max-pool 2, ReLU,
//! flatten (32*4*4 = 512), dense 512->128, ReLU, dense 128->10; 80,202 parameters
//! (313 KiB as f32).
//!
//! Forward and backward passes are written out by hand (im2col convolutions, so the inner
//! loops are long contiguous rows the compiler vectorises); mini-batches are split into
//! a fixed number of pieces run in parallel with rayon and summed in order, so a run is
//! reproducible from its seed whatever the number of cores. He-uniform initialisation,
//! softmax cross-entropy, Adam. After training, the written model is evaluated again with
//! the library's CPU reference ([`deeplock::infer::Model`]) on the full test set; that
//! accuracy is what the file's metadata records.
//!
//! ```sh
//! apt-get install dataset-fashion-mnist     # the data, in /usr/share/datasets/fashion-mnist
//! cargo run --release --example train_fashion_mnist
//! ```
//!
//! The gradients are checked against finite differences on a tiny network of the same
//! form by this file's tests (`cargo test --example train_fashion_mnist`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use deeplock::infer::{Arch, ConvSpec, DenseSpec, LayerSpec, Model, Padding};
use deeplock::mnist::{
    Dataset, Split, CLASSES, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, FASHION_MNIST_HINT,
};
use deeplock::rng::SplitMix64;
use deeplock::zoo::Tensor;
use rayon::prelude::*;

/// Pieces each mini-batch is split into, run in parallel and summed in order: fixed, so
/// the sums (and the trained weights) do not depend on the number of threads.
const PIECES: usize = 8;

#[derive(Parser)]
#[command(about = "Train the Deep-Lock Fashion-MNIST CNN and write it as a test fixture")]
struct Args {
    /// Passes over the 60,000 training images.
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    /// Images per mini-batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Adam's learning rate (halved for the last third of the epochs).
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Seed of the initial weights and of the shuffling.
    #[arg(long, default_value_t = 2022)]
    seed: u64,
    /// Directory with the Fashion-MNIST IDX files.
    #[arg(long, default_value = FASHION_MNIST_DIR)]
    data: PathBuf,
    /// The model file to write; the architecture goes beside it as `.arch.json`.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fashion_mnist_cnn.safetensors"))]
    out: PathBuf,
}

/// Sizes of a network of the form conv, max-pool 2, ReLU, conv, max-pool 2, ReLU,
/// flatten, dense, ReLU, dense; square inputs of one channel, square kernels.
#[derive(Clone, Copy, Debug)]
struct Dims {
    side: usize,
    k1: usize,
    c1: usize,
    k2: usize,
    c2: usize,
    hidden: usize,
    classes: usize,
}

/// The paper's Fashion-MNIST network.
const FASHION: Dims = Dims {
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
    fn s1(&self) -> usize {
        self.side - self.k1 + 1
    }
    /// Side after the first max-pool.
    fn p1(&self) -> usize {
        self.s1() / 2
    }
    /// Side of conv2's output.
    fn s2(&self) -> usize {
        self.p1() - self.k2 + 1
    }
    /// Side after the second max-pool.
    fn p2(&self) -> usize {
        self.s2() / 2
    }
    /// Length of the flattened features.
    fn flat(&self) -> usize {
        self.c2 * self.p2() * self.p2()
    }

    /// Name and PyTorch-layout shape of every tensor, in the order of the flat
    /// parameter vector.
    fn tensors(&self) -> [(&'static str, Vec<usize>); 8] {
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
    fn arch(&self) -> Arch {
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
struct Net {
    dims: Dims,
    params: Vec<f32>,
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
fn param_count(dims: &Dims) -> usize {
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
struct Trace {
    col1: Vec<f32>,
    a1: Vec<f32>,
    idx1: Vec<usize>,
    col2: Vec<f32>,
    a2: Vec<f32>,
    idx2: Vec<usize>,
    a3: Vec<f32>,
    logits: Vec<f32>,
}

impl Net {
    /// He-uniform weights (Glorot-uniform for the output layer, which has no ReLU),
    /// zero biases, from `seed`.
    fn init(dims: Dims, seed: u64) -> Self {
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
    fn forward(&self, x: &[f32]) -> Trace {
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
    fn backward(&self, x: &[f32], label: usize, grad: &mut [f32]) -> f64 {
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
    fn batch_gradient(
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
    fn predict(&self, images: &[&[f32]]) -> Vec<usize> {
        images
            .par_iter()
            .map(|x| deeplock::infer::argmax(&self.forward(x).logits))
            .collect()
    }

    /// The parameters as named PyTorch-layout tensors.
    fn to_tensors(&self) -> Vec<Tensor> {
        let mut rest = &self.params[..];
        self.dims
            .tensors()
            .into_iter()
            .map(|(name, shape)| {
                let (v, r) = rest.split_at(shape.iter().product());
                rest = r;
                Tensor {
                    name: name.into(),
                    shape,
                    values: v.to_vec(),
                }
            })
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
fn shuffle(v: &mut [usize], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Every image of `data` scaled to [0, 1].
fn scaled(data: &Dataset) -> Vec<f32> {
    data.batch_f32(0..data.len())
}

fn main() -> deeplock::Result<()> {
    let args = Args::parse();
    if args.epochs == 0 || args.batch == 0 {
        return Err(deeplock::Error::Invalid(
            "--epochs and --batch must be at least 1".into(),
        ));
    }
    let load = |split| Dataset::read_dir(&args.data, split, FASHION_MNIST_HINT);
    let (train, test) = (load(Split::Train)?, load(Split::Test)?);
    let dims = FASHION;
    let side = dims.side * dims.side;
    if (train.rows, train.cols) != (dims.side, dims.side)
        || (test.rows, test.cols) != (dims.side, dims.side)
    {
        return Err(deeplock::Error::Invalid(format!(
            "{} holds {}x{} images; this network takes 28x28 (Fashion-MNIST)",
            args.data.display(),
            train.rows,
            train.cols
        )));
    }
    let (train_x, test_x) = (scaled(&train), scaled(&test));
    let train_imgs: Vec<&[f32]> = train_x.chunks_exact(side).collect();
    let test_imgs: Vec<&[f32]> = test_x.chunks_exact(side).collect();
    let test_labels: Vec<usize> = test.labels.iter().map(|&l| usize::from(l)).collect();

    let mut net = Net::init(dims, args.seed);
    let mut adam = Adam::new(net.params.len());
    let mut grads = vec![vec![0.0; net.params.len()]; PIECES];
    let mut rng = SplitMix64(args.seed ^ 0x5eed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    println!(
        "training {} parameters on {} images, testing on {}; {} epochs, batch {}, Adam lr {}, seed {}, {} threads",
        net.params.len(),
        train.len(),
        test.len(),
        args.epochs,
        args.batch,
        args.lr,
        args.seed,
        rayon::current_num_threads()
    );
    let started = Instant::now();
    for epoch in 1..=args.epochs {
        let lr = if 3 * epoch > 2 * args.epochs && args.epochs >= 3 {
            args.lr / 2.0
        } else {
            args.lr
        };
        shuffle(&mut order, &mut rng);
        let mut loss_sum = 0.0;
        for batch in order.chunks(args.batch) {
            let xs: Vec<&[f32]> = batch.iter().map(|&i| train_imgs[i]).collect();
            let ls: Vec<usize> = batch
                .iter()
                .map(|&i| usize::from(train.labels[i]))
                .collect();
            let (mut g, loss) = net.batch_gradient(&xs, &ls, &mut grads);
            let n = batch.len() as f32;
            g.iter_mut().for_each(|v| *v /= n);
            adam.update(&mut net.params, &g, lr);
            loss_sum += loss;
        }
        let predicted = net.predict(&test_imgs);
        let right = predicted
            .iter()
            .zip(&test_labels)
            .filter(|(p, l)| p == l)
            .count();
        println!(
            "epoch {epoch:2}: train loss {:.4}, test accuracy {:.4}, lr {lr}, {:.0} s",
            loss_sum / train.len() as f64,
            right as f64 / test.len() as f64,
            started.elapsed().as_secs_f64()
        );
    }

    // Evaluate what is written with the library's reference forward pass.
    let arch = dims.arch();
    let tensors = net.to_tensors();
    let model = Model::new(&arch, &tensors)?;
    let predicted = model.predict(&test.batch_f32(0..test.len()), test.len())?;
    let accuracy = deeplock::infer::accuracy(&predicted, &test.labels);
    println!("reference CPU forward pass: test accuracy {accuracy:.4}; per class:");
    for (class, name) in FASHION_MNIST_CLASSES.iter().enumerate() {
        let of_class = || (0..test.len()).filter(|&i| usize::from(test.labels[i]) == class);
        let right = of_class().filter(|&i| predicted[i] == class).count();
        println!(
            "  {class} {name:12} {:.3}",
            right as f64 / of_class().count() as f64
        );
    }
    let meta = [
        ("format", "pt".to_string()),
        ("dataset", "fashion-mnist".to_string()),
        ("test_accuracy", format!("{accuracy:.4}")),
        (
            "trained_by",
            format!(
                "cargo run --release --example train_fashion_mnist -- --epochs {} --batch {} --lr {} --seed {}",
                args.epochs, args.batch, args.lr, args.seed
            ),
        ),
    ];
    write_model(&args.out, &arch, &tensors, &meta)?;
    println!(
        "wrote {} and its architecture {} in {:.0} s",
        args.out.display(),
        arch_path(&args.out).display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `model.safetensors` -> `model.arch.json`.
fn arch_path(model: &Path) -> PathBuf {
    model.with_extension("arch.json")
}

/// Writes the model file and its architecture beside it.
fn write_model(
    out: &Path,
    arch: &Arch,
    tensors: &[Tensor],
    meta: &[(&str, String)],
) -> deeplock::Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| deeplock::Error::io(dir, e))?;
    }
    let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (*k, v.as_str())).collect();
    deeplock::zoo::write_safetensors_with_metadata(out, tensors, &meta)?;
    let a = arch_path(out);
    std::fs::write(&a, arch.to_json()).map_err(|e| deeplock::Error::io(&a, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same form at toy size: 1x12x12, conv 3x3 1->2, pool (5x5), conv 2x2 2->3,
    /// pool (2x2), flatten 12, dense 12->5, dense 5->3.
    const TINY: Dims = Dims {
        side: 12,
        k1: 3,
        c1: 2,
        k2: 2,
        c2: 3,
        hidden: 5,
        classes: 3,
    };

    fn tiny_batch(n: usize) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut rng = SplitMix64(99);
        let xs = (0..n)
            .map(|_| {
                (0..TINY.side * TINY.side)
                    .map(|_| (rng.next_signed_unit() + 1.0) / 2.0)
                    .collect()
            })
            .collect();
        (xs, (0..n).map(|i| i % TINY.classes).collect())
    }

    fn mean_loss(net: &Net, xs: &[Vec<f32>], ls: &[usize]) -> f64 {
        let mut scratch = vec![0.0; net.params.len()];
        xs.iter()
            .zip(ls)
            .map(|(x, &l)| net.backward(x, l, &mut scratch))
            .sum::<f64>()
            / xs.len() as f64
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut net = Net::init(TINY, 5);
        // Non-zero biases, so that their gradients are exercised off the initial point.
        for v in net.params.iter_mut() {
            if *v == 0.0 {
                *v = 0.05;
            }
        }
        let (xs, ls) = tiny_batch(4);
        let refs: Vec<&[f32]> = xs.iter().map(|x| &x[..]).collect();
        let mut grads = vec![vec![0.0; net.params.len()]; PIECES];
        let (g, loss) = net.batch_gradient(&refs, &ls, &mut grads);
        assert!((loss / 4.0 - mean_loss(&net, &xs, &ls)).abs() < 1e-9);
        let eps = 1e-3;
        let mut worst = 0.0f64;
        let mut nonzero = 0;
        for (i, &gi) in g.iter().enumerate() {
            let analytic = f64::from(gi) / 4.0;
            let keep = net.params[i];
            net.params[i] = keep + eps;
            let up = mean_loss(&net, &xs, &ls);
            net.params[i] = keep - eps;
            let down = mean_loss(&net, &xs, &ls);
            net.params[i] = keep;
            let numeric = (up - down) / (2.0 * f64::from(eps));
            let err = (analytic - numeric).abs() / (1e-3 + analytic.abs().max(numeric.abs()));
            worst = worst.max(err);
            assert!(
                err < 2e-2,
                "parameter {i}: analytic {analytic}, numeric {numeric}"
            );
            nonzero += usize::from(analytic.abs() > 1e-4);
        }
        // Most parameters get a gradient (not all: some ReLUs are off for every image),
        // so the check is not vacuous.
        assert!(
            nonzero * 3 > net.params.len() * 2,
            "{nonzero} of {}",
            net.params.len()
        );
        println!("worst relative error {worst:.2e}");
    }

    #[test]
    fn forward_matches_the_library_reference_through_the_written_files() {
        let net = Net::init(TINY, 8);
        let (xs, _) = tiny_batch(3);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tiny.safetensors");
        write_model(
            &out,
            &TINY.arch(),
            &net.to_tensors(),
            &[("format", "pt".into())],
        )
        .unwrap();
        let arch = Arch::read(&arch_path(&out)).unwrap();
        let model = Model::load(&out, &arch, None).unwrap();
        let logits = model.forward(&xs.concat(), 3).unwrap();
        for (x, reference) in xs.iter().zip(logits.chunks(TINY.classes)) {
            for (a, b) in net.forward(x).logits.iter().zip(reference) {
                assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn the_fashion_network_has_the_papers_form() {
        assert_eq!(
            (FASHION.s1(), FASHION.p1(), FASHION.s2(), FASHION.p2()),
            (24, 12, 8, 4)
        );
        assert_eq!(FASHION.flat(), 512);
        assert_eq!(param_count(&FASHION), 80_202);
        assert!(Model::new(&FASHION.arch(), &Net::init(FASHION, 1).to_tensors()).is_ok());
    }
}
