//! The fused unlock-then-matmul kernels against a CPU f64 reference of `X · Wᵀ + b` on
//! the unlocked weights, on whatever adapter wgpu finds (lavapipe without a GPU). As in
//! tests/gpu.rs: no adapter prints a skip line and passes, unless
//! `DEEPLOCK_REQUIRE_GPU=1`, where it fails. Random data from a fresh seed every run,
//! printed; `DEEPLOCK_TEST_SEED` replays one.

mod common;

use std::collections::HashSet;
use std::sync::OnceLock;

use deeplock::bench::matmul::{bench_matmul, matmul_table, MatmulCase};
use deeplock::bench::Runs;
use deeplock::gpu::{
    ConvInput, FusedMatmul, GpuContext, GpuLocker, GpuTensor, HostTensor, Kernel, KernelTimer,
    Linear, MatmulShape, Region, TensorKey, MATMUL_DTYPES,
};
use deeplock::{reference, Direction, Dtype, MasterKey, Salt, TensorCipher};
use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use wgpu::util::DeviceExt;

/// A NaN with a payload no kernel computes: output elements still holding it were never
/// written.
const POISON: u32 = 0x7fa5_dead;
/// Poisoned f32 after the output, which must stay untouched.
const GUARD: usize = 67;

fn context() -> Option<GpuContext> {
    common::gpu_context()
}

/// One set of kernels for the whole file: compiling pipelines is slow on lavapipe.
fn shared() -> Option<&'static FusedMatmul> {
    static MATMUL: OnceLock<Option<FusedMatmul>> = OnceLock::new();
    MATMUL
        .get_or_init(|| {
            let ctx = context()?;
            eprintln!("adapter: {}", ctx.describe());
            Some(FusedMatmul::new(&ctx))
        })
        .as_ref()
}

fn rng(test: &str) -> StdRng {
    common::seeded_rng(test)
}

fn random_cipher(rng: &mut StdRng, name: &str) -> TensorCipher {
    let mut key = [0u8; 16];
    rng.fill_bytes(&mut key);
    cipher_under(&MasterKey::from_bytes(key), rng, name)
}

fn cipher_under(key: &MasterKey, rng: &mut StdRng, name: &str) -> TensorCipher {
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    TensorCipher::for_tensor(key, &Salt(salt), name)
}

/// A tensor operand on the host: plaintext bytes, the exact values they decode to, and
/// how it is stored on the GPU.
struct Operand {
    dtype: Dtype,
    plain: Vec<u8>,
    values: Vec<f64>,
    cipher: Option<TensorCipher>,
    tensor_offset: u64,
    /// Where in its GPU buffer the operand starts; random bytes around it.
    buffer_offset: u64,
}

impl Operand {
    /// `len` values uniform in (-1, 1), rounded to `dtype`; locked under `cipher` if any.
    fn random(rng: &mut StdRng, len: usize, dtype: Dtype, cipher: Option<TensorCipher>) -> Self {
        let mut plain = Vec::with_capacity(len * dtype.size().unwrap() as usize);
        let mut values = Vec::with_capacity(len);
        for _ in 0..len {
            let v: f32 = rng.random_range(-1.0..1.0);
            match dtype {
                Dtype::F32 => {
                    plain.extend_from_slice(&v.to_le_bytes());
                    values.push(f64::from(v));
                }
                Dtype::F16 => {
                    let h = half::f16::from_f32(v);
                    plain.extend_from_slice(&h.to_le_bytes());
                    values.push(h.to_f64());
                }
                Dtype::BF16 => {
                    let h = half::bf16::from_f32(v);
                    plain.extend_from_slice(&h.to_le_bytes());
                    values.push(h.to_f64());
                }
                d => unreachable!("the kernels do not decode {d}"),
            }
        }
        let tensor_offset = match rng.random_range(0..4) {
            0 | 1 => 0,
            2 => 4 * rng.random_range(0..64),
            // Keystream blocks across 2^32: the carry into the high word.
            _ => (1 << 36) - 4 * rng.random_range(1..64),
        };
        Operand {
            dtype,
            plain,
            values,
            cipher,
            tensor_offset,
            buffer_offset: 4 * rng.random_range(0..100),
        }
    }

    /// The bytes as stored: locked at `tensor_offset` with the reference, or plaintext.
    fn stored(&self) -> Vec<u8> {
        let mut bytes = self.plain.clone();
        if let Some(c) = &self.cipher {
            reference::apply(c, Direction::Lock, self.tensor_offset, &mut bytes);
        }
        bytes
    }

    /// A STORAGE buffer holding the stored bytes at `buffer_offset`, random bytes around.
    fn upload(&self, ctx: &GpuContext, rng: &mut StdRng) -> wgpu::Buffer {
        let start = self.buffer_offset as usize;
        let mut contents = vec![0u8; start + self.plain.len().next_multiple_of(4) + 64];
        rng.fill_bytes(&mut contents);
        contents[start..start + self.plain.len()].copy_from_slice(&self.stored());
        ctx.device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("test operand"),
                contents: &contents,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    }

    fn gpu<'a>(&'a self, buffer: &'a wgpu::Buffer) -> GpuTensor<'a> {
        GpuTensor {
            buffer,
            offset: self.buffer_offset,
            dtype: self.dtype,
            locked: self.key(),
        }
    }

    fn key(&self) -> Option<TensorKey<'_>> {
        self.cipher.as_ref().map(|cipher| TensorKey {
            cipher,
            tensor_offset: self.tensor_offset,
        })
    }
}

/// X, W and maybe b of one product.
struct Problem {
    /// W's and b's master key (used when they are locked).
    key: MasterKey,
    shape: MatmulShape,
    x: Vec<f32>,
    w: Operand,
    bias: Option<Operand>,
    /// For a convolution: its input geometry and the NHWC images the kernels read; `x`
    /// is then their im2col matrix, which only the reference uses.
    conv: Option<(ConvInput, Vec<f32>)>,
}

/// How W and b are stored in a random problem.
#[derive(Clone, Copy, Debug)]
enum Storage {
    Locked,
    Plain,
}

impl Problem {
    /// Random X, W of `dtype` and, half the time, a bias of a random dtype (locked, under
    /// W's master key, when W is; or sometimes alone).
    fn random(rng: &mut StdRng, shape: MatmulShape, dtype: Dtype, storage: Storage) -> Self {
        let (m, n, k) = (shape.m as usize, shape.n as usize, shape.k as usize);
        let x = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut key = [0u8; 16];
        rng.fill_bytes(&mut key);
        let key = MasterKey::from_bytes(key);
        let w_cipher = match storage {
            Storage::Locked => Some(cipher_under(&key, rng, "fc.weight")),
            Storage::Plain => None,
        };
        let bias = rng.random_bool(0.5).then(|| {
            let dtype = MATMUL_DTYPES[rng.random_range(0..3)];
            let locked = match storage {
                Storage::Locked => rng.random_bool(0.7),
                Storage::Plain => rng.random_bool(0.2),
            };
            let cipher = locked.then(|| cipher_under(&key, rng, "fc.bias"));
            Operand::random(rng, n, dtype, cipher)
        });
        Problem {
            w: Operand::random(rng, n * k, dtype, w_cipher),
            key,
            shape,
            x,
            bias,
            conv: None,
        }
    }

    /// A random convolution of `batch` random images of `input`'s geometry: W is the
    /// conv weight `[out, in, kh, kw]` as a `[out, in * kh * kw]` matrix and `x` the
    /// images' im2col matrix, built here on the CPU (rows `(b, oy, ox)`, columns
    /// `(c, ky, kx)`, zeros for the padding) for the reference alone.
    fn random_conv(
        rng: &mut StdRng,
        input: ConvInput,
        batch: u32,
        out: u32,
        dtype: Dtype,
        storage: Storage,
    ) -> Self {
        let (oh, ow) = input.output().expect("a conv with an output");
        let (h, w, c) = (input.height, input.width, input.channels);
        let [kh, kw] = input.kernel;
        let images: Vec<f32> = (0..batch * h * w * c)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let k = c * kh * kw;
        let mut cols = Vec::with_capacity((batch * oh * ow * k) as usize);
        for b in 0..batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy + ky) as i64 - i64::from(input.pad[0]);
                                let ix = (ox + kx) as i64 - i64::from(input.pad[1]);
                                let inside = (0..i64::from(h)).contains(&iy)
                                    && (0..i64::from(w)).contains(&ix);
                                cols.push(if inside {
                                    let (iy, ix) = (iy as u32, ix as u32);
                                    images[(((b * h + iy) * w + ix) * c + ch) as usize]
                                } else {
                                    0.0
                                });
                            }
                        }
                    }
                }
            }
        }
        let shape = MatmulShape {
            m: batch * oh * ow,
            n: out,
            k,
        };
        let mut p = Problem::random(rng, shape, dtype, storage);
        p.x = cols;
        p.conv = Some((input, images));
        p
    }

    /// The problem with a random F32 bias locked under its master key (in place of any
    /// it had).
    fn with_locked_bias(mut self, rng: &mut StdRng) -> Self {
        let cipher = cipher_under(&self.key, rng, "fc.bias");
        let n = self.shape.n as usize;
        self.bias = Some(Operand::random(rng, n, Dtype::F32, Some(cipher)));
        self
    }

    /// `X · Wᵀ + b` in f64 on the exact decoded values.
    fn reference(&self) -> Vec<f64> {
        let MatmulShape { m, n, k } = self.shape;
        let (m, n, k) = (m as usize, n as usize, k as usize);
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let row = &self.w.values[j * k..(j + 1) * k];
                let x = &self.x[i * k..(i + 1) * k];
                let dot: f64 = row.iter().zip(x).map(|(w, x)| w * f64::from(*x)).sum();
                out[i * n + j] = dot + self.bias.as_ref().map_or(0.0, |b| b.values[j]);
            }
        }
        out
    }

    /// Tolerance on the relative error: f32 weights are exact, 16-bit ones are decoded
    /// exactly too but accumulate in f32 like the rest.
    fn tolerance(&self) -> f64 {
        match self.w.dtype {
            Dtype::F32 => 1e-5,
            _ => 1e-2,
        }
    }

    fn describe(&self) -> String {
        let MatmulShape { m, n, k } = self.shape;
        let conv = self
            .conv
            .as_ref()
            .map_or(String::new(), |(input, _)| format!("conv of {input:?}, "));
        format!(
            "{conv}m={m} n={n} k={k} w={} {} (tensor offset {}, buffer offset {}) bias={}",
            self.w.dtype.name(),
            if self.w.cipher.is_some() {
                "locked"
            } else {
                "plain"
            },
            self.w.tensor_offset,
            self.w.buffer_offset,
            self.bias.as_ref().map_or("none".into(), |b| format!(
                "{} {} (tensor offset {}, buffer offset {})",
                b.dtype.name(),
                if b.cipher.is_some() {
                    "locked"
                } else {
                    "plain"
                },
                b.tensor_offset,
                b.buffer_offset
            )),
        )
    }
}

/// Every buffer one GPU run touched or created, and its output.
struct Run {
    out: Vec<f32>,
    buffers: Vec<(&'static str, Vec<u8>)>,
    /// Ranges the GEMM split K into.
    k_splits: u32,
}

/// Copies the whole of `buffer` (which needs COPY_SRC) to the host.
fn read_back(ctx: &GpuContext, buffer: &wgpu::Buffer) -> Vec<u8> {
    let device = ctx.device();
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("test read-back"),
        size: buffer.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("test read-back"),
    });
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, buffer.size());
    ctx.queue().submit([encoder.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let bytes = staging.get_mapped_range(..).unwrap().to_vec();
    staging.unmap();
    bytes
}

fn poisoned_output(ctx: &GpuContext, elements: usize) -> wgpu::Buffer {
    let poison: Vec<u32> = vec![POISON; elements + GUARD];
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test y (poisoned)"),
            contents: bytemuck::cast_slice(&poison),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
}

/// Runs `p` with `kernel` in fresh buffers and reads back every buffer involved. Checks
/// that every output element was written and nothing past the output was.
fn run(fm: &FusedMatmul, rng: &mut StdRng, p: &Problem, kernel: Kernel) -> Run {
    run_keyed(fm, rng, p, kernel, None)
}

/// [`run`], decoding W with `wrong_key` instead of its own cipher if given.
fn run_keyed(
    fm: &FusedMatmul,
    rng: &mut StdRng,
    p: &Problem,
    kernel: Kernel,
    wrong_key: Option<&TensorCipher>,
) -> Run {
    let ctx = fm.context();
    let MatmulShape { m, n, .. } = p.shape;
    let outputs = (m * n) as usize;
    let x = ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test x"),
            contents: bytemuck::cast_slice(p.conv.as_ref().map_or(&p.x, |(_, images)| images)),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
    let w = p.w.upload(ctx, rng);
    let bias = p.bias.as_ref().map(|b| b.upload(ctx, rng));
    let y = poisoned_output(ctx, outputs);
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("test matmul"),
        });
    let mut w_tensor = p.w.gpu(&w);
    if let (Some(key), Some(cipher)) = (w_tensor.locked.as_mut(), wrong_key) {
        key.cipher = cipher;
    }
    let op = Linear {
        x: &x,
        w: w_tensor,
        bias: p
            .bias
            .as_ref()
            .zip(bias.as_ref())
            .map(|(b, buf)| b.gpu(buf)),
        y: &y,
        shape: p.shape,
        kernel,
    };
    let pass = match &p.conv {
        Some((input, _)) => fm.encode_conv(&mut encoder, &op, input, None).unwrap(),
        None => fm.encode(&mut encoder, &op, None).unwrap(),
    };
    // Convolutions always run on the GEMM.
    let kernel = if p.conv.is_some() {
        Kernel::Gemm
    } else {
        kernel
    };
    assert_eq!(pass.kernel(), kernel.resolve(m));
    assert_eq!(pass.tile_rows(), fm.tile_rows(kernel, m).unwrap());
    assert_eq!(pass.k_splits(), fm.k_splits(kernel, p.shape).unwrap());
    ctx.queue().submit([encoder.finish()]);
    let y_bytes = read_back(ctx, &y);
    let words: &[u32] = bytemuck::cast_slice(&y_bytes);
    if let Some(i) = words[..outputs].iter().position(|&w| w == POISON) {
        panic!("{}: output {i} of {outputs} never written", p.describe());
    }
    if let Some(i) = words[outputs..].iter().position(|&w| w != POISON) {
        panic!("{}: wrote {} elements past the output", p.describe(), i + 1);
    }
    let mut buffers = vec![
        ("x", read_back(ctx, &x)),
        ("w", read_back(ctx, &w)),
        ("uniforms", read_back(ctx, pass.uniforms())),
        ("tables", read_back(ctx, fm.tables())),
        ("scratch", read_back(ctx, pass.scratch())),
    ];
    if let Some(b) = &bias {
        buffers.push(("bias", read_back(ctx, b)));
    }
    let out = words[..outputs]
        .iter()
        .map(|&w| f32::from_bits(w))
        .collect();
    buffers.push(("y", y_bytes));
    Run {
        out,
        buffers,
        k_splits: pass.k_splits(),
    }
}

/// ‖out − ref‖ / ‖ref‖ (NaN if out has NaNs).
fn relative_error(out: &[f32], reference: &[f64]) -> f64 {
    let diff: f64 = out
        .iter()
        .zip(reference)
        .map(|(o, r)| (f64::from(*o) - r).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|r| r * r).sum();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// Runs `p` and checks it against the reference.
fn check(fm: &FusedMatmul, rng: &mut StdRng, p: &Problem, kernel: Kernel) {
    let got = run(fm, rng, p, kernel);
    let err = relative_error(&got.out, &p.reference());
    assert!(
        err < p.tolerance(),
        "{} {}: relative error {err:e}",
        kernel.name(),
        p.describe()
    );
}

/// Convolutions as implicit GEMMs: 3x3 and 5x5 and lopsided kernels, valid and same
/// padding, odd channel counts, several images and a single output position, locked
/// F32/BF16 and plain F16 weights, against the reference on the CPU-built im2col matrix.
#[test]
fn conv_matches_reference() {
    let Some(fm) = shared() else { return };
    let mut rng = rng("conv_matches_reference");
    let cases = [
        // (h, w, c, kernel, pad, batch, out)
        (28, 28, 1, [5, 5], [0, 0], 2, 8),
        (12, 10, 3, [3, 3], [1, 1], 3, 17),
        (9, 11, 5, [5, 5], [2, 2], 1, 64),
        (7, 6, 4, [3, 5], [1, 0], 2, 9),
        (3, 3, 7, [3, 3], [0, 0], 1, 33),
    ];
    for (i, (h, w, c, kernel, pad, batch, out)) in cases.into_iter().enumerate() {
        let input = ConvInput {
            height: h,
            width: w,
            channels: c,
            kernel,
            pad,
        };
        let (dtype, storage) = [
            (Dtype::F32, Storage::Locked),
            (Dtype::BF16, Storage::Locked),
            (Dtype::F16, Storage::Plain),
        ][i % 3];
        let p = Problem::random_conv(&mut rng, input, batch, out, dtype, storage);
        check(fm, &mut rng, &p, Kernel::Auto);
    }
}

/// An uninitialised STORAGE buffer of `size` bytes, for tests of what is refused.
fn storage_buffer(ctx: &GpuContext, size: u64) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test operand"),
        size,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    })
}

/// A convolution whose `Linear` does not match its input is refused, with what to fix.
#[test]
fn conv_shape_errors() {
    let Some(fm) = shared() else { return };
    let ctx = fm.context();
    let buffer = |size| storage_buffer(ctx, size);
    let (x, w, y) = (
        buffer(4 * 8 * 8 * 2),
        buffer(4 * 4 * 18),
        buffer(4 * 36 * 4),
    );
    let input = ConvInput {
        height: 8,
        width: 8,
        channels: 2,
        kernel: [3, 3],
        pad: [0, 0],
    };
    let attempt = |input: ConvInput, shape: MatmulShape| {
        let op = Linear {
            x: &x,
            w: GpuTensor {
                buffer: &w,
                offset: 0,
                dtype: Dtype::F32,
                locked: None,
            },
            bias: None,
            y: &y,
            shape,
            kernel: Kernel::Auto,
        };
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        fm.encode_conv(&mut encoder, &op, &input, None)
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(
        attempt(input, shape(36, 4, 18)),
        None,
        "6x6 output, k = 2 * 3 * 3"
    );
    let e = attempt(input, shape(36, 4, 17)).unwrap();
    assert!(e.contains("k = 18"), "{e}");
    let e = attempt(input, shape(35, 4, 18)).unwrap();
    assert!(e.contains("m = batch * 36"), "{e}");
    let e = attempt(
        ConvInput {
            kernel: [9, 3],
            ..input
        },
        shape(1, 4, 54),
    )
    .unwrap();
    assert!(e.contains("no output"), "{e}");
    let e = attempt(input, shape(72, 4, 18)).unwrap();
    assert!(
        e.contains("matmul x needs"),
        "two images do not fit one: {e}"
    );
    let one_position = ConvInput {
        height: 3,
        width: 3,
        ..input
    };
    assert_eq!(
        attempt(one_position, shape(1, 4, 18)),
        None,
        "m = 1: the GEMM"
    );
}

/// The GEMM with K split into ranges (forced to 2, 3, and one per 32-element slice of K)
/// matches the reference, locked and plain, with a locked bias added exactly once; and by
/// default a skinny product (few output tiles, long K) is split, a square one is not.
#[test]
fn split_k_matches_reference() {
    let Some(shared) = shared() else { return };
    let mut fm = FusedMatmul::new(shared.context());
    let mut rng = rng("split_k_matches_reference");
    for forced in [2, 3, 1000] {
        fm.set_k_splits(Some(forced)).unwrap();
        for (dtype, storage) in [
            (Dtype::F32, Storage::Locked),
            (Dtype::BF16, Storage::Locked),
            (Dtype::F16, Storage::Plain),
        ] {
            let s = shape(
                rng.random_range(2..=150),
                rng.random_range(1..=100),
                rng.random_range(97..=300),
            );
            let p = Problem::random(&mut rng, s, dtype, storage).with_locked_bias(&mut rng);
            let got = run(&fm, &mut rng, &p, Kernel::Gemm);
            let tile_k = if fm.tile_rows(Kernel::Gemm, s.m).unwrap() == 256 {
                16
            } else {
                32
            };
            let slices = s.k.div_ceil(tile_k);
            let per = slices.div_ceil(forced.min(slices));
            assert_eq!(got.k_splits, slices.div_ceil(per), "{}", p.describe());
            let err = relative_error(&got.out, &p.reference());
            assert!(
                err < p.tolerance(),
                "{forced} splits, {}: relative error {err:e}",
                p.describe()
            );
        }
    }
    assert!(fm.set_k_splits(Some(0)).is_err());
    fm.set_k_splits(None).unwrap();
    let skinny = Problem::random(&mut rng, shape(8, 64, 1024), Dtype::BF16, Storage::Locked);
    let got = run(&fm, &mut rng, &skinny, Kernel::Gemm);
    assert_eq!(
        got.k_splits, 8,
        "one output tile, 32 slices of K: 8 ranges of 4"
    );
    let err = relative_error(&got.out, &skinny.reference());
    assert!(
        err < skinny.tolerance(),
        "default split: relative error {err:e}"
    );
    let square = Problem::random(&mut rng, shape(64, 64, 64), Dtype::F32, Storage::Plain);
    assert_eq!(run(&fm, &mut rng, &square, Kernel::Gemm).k_splits, 1);
}

fn shape(m: u32, n: u32, k: u32) -> MatmulShape {
    MatmulShape { m, n, k }
}

fn random_dim(rng: &mut StdRng) -> u32 {
    rng.random_range(1..=300)
}

/// Shapes for the GEMM: edge and prime sizes, tile-size ((64, 64, 32), (256, 64, 16)) multiples and
/// non-multiples, and random ones.
fn gemm_shapes(rng: &mut StdRng) -> Vec<MatmulShape> {
    let mut shapes = vec![
        shape(1, 1, 1),
        shape(7, 127, 257),
        shape(257, 7, 127),
        shape(64, 64, 32),
        shape(65, 63, 33),
        // The 256-row tiles, whose K slices are 16 long.
        shape(256, 64, 16),
        shape(129, 65, 17),
        shape(2, 300, 1),
    ];
    for _ in 0..3 {
        shapes.push(shape(random_dim(rng), random_dim(rng), random_dim(rng)));
    }
    shapes
}

/// Shapes for the GEMV (which decodes W once per 8 batch rows, so few rows).
fn gemv_shapes(rng: &mut StdRng) -> Vec<MatmulShape> {
    vec![
        shape(1, 1, 1),
        shape(1, 257, 127),
        shape(1, 7, 300),
        shape(3, 61, 67),
        // One workgroup row of 8 batch rows, and several (the last one partial).
        shape(8, 33, 100),
        shape(17, 9, 45),
        shape(1, random_dim(rng), random_dim(rng)),
        shape(rng.random_range(1..=24), random_dim(rng), random_dim(rng)),
    ]
}

#[test]
fn fused_gemm_matches_reference() {
    let Some(fm) = shared() else { return };
    let mut rng = rng("fused_gemm_matches_reference");
    for dtype in MATMUL_DTYPES {
        for s in gemm_shapes(&mut rng) {
            let p = Problem::random(&mut rng, s, dtype, Storage::Locked);
            check(fm, &mut rng, &p, Kernel::Gemm);
        }
    }
}

#[test]
fn fused_gemv_matches_reference() {
    let Some(fm) = shared() else { return };
    let mut rng = rng("fused_gemv_matches_reference");
    for dtype in MATMUL_DTYPES {
        for s in gemv_shapes(&mut rng) {
            let p = Problem::random(&mut rng, s, dtype, Storage::Locked);
            check(fm, &mut rng, &p, Kernel::Gemv);
        }
    }
}

#[test]
fn plain_matches_reference() {
    let Some(fm) = shared() else { return };
    let mut rng = rng("plain_matches_reference");
    for dtype in MATMUL_DTYPES {
        for s in [
            shape(1, 1, 1),
            shape(65, 63, 33),
            shape(random_dim(&mut rng), 127, 257),
        ] {
            let p = Problem::random(&mut rng, s, dtype, Storage::Plain);
            check(fm, &mut rng, &p, Kernel::Gemm);
        }
        for s in [shape(1, 257, 7), shape(2, random_dim(&mut rng), 31)] {
            let p = Problem::random(&mut rng, s, dtype, Storage::Plain);
            check(fm, &mut rng, &p, Kernel::Gemv);
        }
    }
}

#[test]
fn wrong_key_gives_garbage() {
    let Some(fm) = shared() else { return };
    let mut rng = rng("wrong_key_gives_garbage");
    for dtype in MATMUL_DTYPES {
        for kernel in [Kernel::Gemm, Kernel::Gemv] {
            let mut p = Problem::random(&mut rng, shape(2, 67, 45), dtype, Storage::Locked);
            // A bias under the right key would be refused: W's wrong key is another master key.
            p.bias = None;
            let wrong = random_cipher(&mut rng, "fc.weight");
            let got = run_keyed(fm, &mut rng, &p, kernel, Some(&wrong));
            let err = relative_error(&got.out, &p.reference());
            // NaN (from weights decoded to NaN or infinity) is garbage too.
            assert!(
                err.is_nan() || err > 0.5,
                "{} {}: relative error {err} with the wrong key",
                kernel.name(),
                p.describe()
            );
        }
    }
}

/// Every 16-byte window of `bytes`, at every offset.
fn windows(bytes: &[u8]) -> HashSet<[u8; 16]> {
    bytes.windows(16).map(|w| w.try_into().unwrap()).collect()
}

/// Offset of the first 16-byte window of `haystack` that is in `needles`.
fn find_any(haystack: &[u8], needles: &HashSet<[u8; 16]>) -> Option<usize> {
    haystack
        .windows(16)
        .position(|w| needles.contains(<&[u8; 16]>::try_from(w).unwrap()))
}

/// The property the fused path exists for: after a fused run, no buffer it created or
/// touched (X, locked W, locked b, Y, its uniforms, the AES tables) holds any 16 bytes
/// of W's (or b's) plaintext, and the uniforms holding the round keys are wiped. As a
/// control that the search works, the unfused path (unlock into a scratch buffer with
/// GpuLocker, then the plain kernel) leaves W's plaintext in its scratch buffer.
#[test]
fn no_plaintext_weights_in_gpu_memory() {
    let Some(fm) = shared() else { return };
    let ctx = fm.context();
    let locker = GpuLocker::new(ctx);
    let mut rng = rng("no_plaintext_weights_in_gpu_memory");
    for (kernel, s, dtype) in [
        (Kernel::Gemm, shape(5, 70, 45), Dtype::F32),
        (Kernel::Gemm, shape(9, 33, 64), Dtype::BF16),
        (Kernel::Gemv, shape(1, 40, 100), Dtype::F16),
    ] {
        let p = Problem::random(&mut rng, s, dtype, Storage::Locked).with_locked_bias(&mut rng);
        let bias = p.bias.as_ref().unwrap();
        let mut secrets = windows(&p.w.plain);
        secrets.extend(windows(&bias.plain));
        // Random values: no two windows of a few kilobytes collide by chance.
        assert!(secrets.len() > p.w.plain.len() - 16);

        let fused = run(fm, &mut rng, &p, kernel);
        let err = relative_error(&fused.out, &p.reference());
        assert!(
            err < p.tolerance(),
            "{}: relative error {err:e}",
            p.describe()
        );
        for (name, bytes) in &fused.buffers {
            if let Some(at) = find_any(bytes, &secrets) {
                panic!(
                    "{}: buffer {name} holds plaintext weights at byte {at}",
                    p.describe()
                );
            }
        }
        let uniforms = &fused
            .buffers
            .iter()
            .find(|(n, _)| *n == "uniforms")
            .unwrap()
            .1;
        assert!(
            uniforms.iter().all(|&b| b == 0),
            "round keys left in GPU memory"
        );

        // The control: unlock a copy of W into a scratch buffer, then the plain kernel.
        let w_locked = p.w.upload(ctx, &mut rng);
        let scratch = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("test unlocked scratch"),
            size: w_locked.size(),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bias_buffer = bias.upload(ctx, &mut rng);
        let x = ctx
            .device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("test x"),
                contents: bytemuck::cast_slice(&p.x),
                usage: wgpu::BufferUsages::STORAGE,
            });
        let y = poisoned_output(ctx, (s.m * s.n) as usize);
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("test unlock then plain"),
            });
        encoder.copy_buffer_to_buffer(&w_locked, 0, &scratch, 0, w_locked.size());
        let start = p.w.buffer_offset;
        let region = Region {
            cipher: p.w.cipher.as_ref().unwrap(),
            tensor_offset: p.w.tensor_offset,
            range: start..start + p.w.plain.len() as u64,
        };
        locker
            .encode(&mut encoder, &scratch, Direction::Unlock, &[region], None)
            .unwrap();
        let op = Linear {
            x: &x,
            w: GpuTensor {
                locked: None,
                ..p.w.gpu(&scratch)
            },
            bias: Some(bias.gpu(&bias_buffer)),
            y: &y,
            shape: s,
            kernel,
        };
        fm.encode(&mut encoder, &op, None).unwrap();
        ctx.queue().submit([encoder.finish()]);
        let unfused: Vec<f32> =
            bytemuck::cast_slice::<u8, f32>(&read_back(ctx, &y))[..(s.m * s.n) as usize].to_vec();
        let err = relative_error(&unfused, &p.reference());
        assert!(
            err < p.tolerance(),
            "unlock then plain: relative error {err:e}"
        );
        assert!(
            find_any(&read_back(ctx, &scratch), &secrets).is_some(),
            "the search missed the plaintext in the unfused path's scratch buffer"
        );
    }
}

#[test]
fn run_on_host_slices() {
    let Some(fm) = shared() else { return };
    let mut rng = rng("run_on_host_slices");
    for s in [shape(1, 19, 23), shape(13, 19, 23)] {
        let p = Problem::random(&mut rng, s, Dtype::BF16, Storage::Locked);
        let w = p.w.stored();
        let bias = p.bias.as_ref().map(|b| (b.stored(), b));
        let bias = bias.as_ref().map(|(bytes, b)| HostTensor {
            bytes,
            dtype: b.dtype,
            locked: b.key(),
        });
        let w = HostTensor {
            bytes: &w,
            dtype: p.w.dtype,
            locked: p.w.key(),
        };
        let out = fm.run(&p.x, &w, bias.as_ref(), s, Kernel::Auto).unwrap();
        let err = relative_error(&out, &p.reference());
        assert!(
            err < p.tolerance(),
            "{}: relative error {err:e}",
            p.describe()
        );
    }
}

#[test]
fn bad_operands_are_errors() {
    let Some(fm) = shared() else { return };
    let ctx = fm.context();
    let mut rng = rng("bad_operands_are_errors");
    let buffer = |size| storage_buffer(ctx, size);
    let (x, w, b, y) = (buffer(4 * 6), buffer(4 * 12), buffer(4 * 4), buffer(4 * 8));
    let key = MasterKey::from_bytes([3; 16]);
    let w_cipher = cipher_under(&key, &mut rng, "w");
    let other = random_cipher(&mut rng, "b");
    let good = Linear {
        x: &x,
        w: GpuTensor {
            buffer: &w,
            offset: 0,
            dtype: Dtype::F32,
            locked: Some(TensorKey {
                cipher: &w_cipher,
                tensor_offset: 0,
            }),
        },
        bias: Some(GpuTensor {
            buffer: &b,
            offset: 0,
            dtype: Dtype::F32,
            locked: None,
        }),
        y: &y,
        shape: shape(2, 4, 3),
        kernel: Kernel::Auto,
    };
    let other_bias = GpuTensor {
        locked: Some(TensorKey {
            cipher: &other,
            tensor_offset: 0,
        }),
        ..good.bias.unwrap()
    };
    let try_encode = |op: &Linear<'_>| {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        fm.encode(&mut encoder, op, None).map(|_| ())
    };
    try_encode(&good).unwrap();
    let cases = [
        (
            Linear {
                shape: shape(0, 4, 3),
                ..good
            },
            "at least 1",
        ),
        (
            Linear {
                w: GpuTensor {
                    offset: 8,
                    ..good.w
                },
                ..good
            },
            "do not fit",
        ),
        (
            Linear {
                shape: shape(3, 4, 3),
                ..good
            },
            "at least 36 bytes",
        ),
        (
            Linear {
                w: GpuTensor {
                    offset: 2,
                    ..good.w
                },
                ..good
            },
            "multiples of 4",
        ),
        (Linear { y: &x, ..good }, "also its x"),
        (
            Linear {
                bias: Some(other_bias),
                ..good
            },
            "different master keys",
        ),
        (
            Linear {
                w: GpuTensor {
                    dtype: Dtype::F64,
                    ..good.w
                },
                ..good
            },
            "matmul w is F64; the kernels decode F32, F16, BF16",
        ),
        (
            Linear {
                bias: Some(GpuTensor {
                    dtype: Dtype::F4,
                    ..good.bias.unwrap()
                }),
                ..good
            },
            "matmul bias is F4",
        ),
    ];
    for (op, message) in cases {
        let err = try_encode(&op).unwrap_err().to_string();
        assert!(err.contains(message), "{message}: {err}");
    }
    // From host memory too, before any length is checked against the type's size.
    let w = HostTensor {
        bytes: &[0; 12],
        dtype: Dtype::I32,
        locked: None,
    };
    let err = fm
        .run(&[0.0], &w, None, shape(1, 3, 1), Kernel::Auto)
        .unwrap_err();
    assert!(matches!(err, deeplock::Error::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("matmul w is I32"), "{err}");
}

#[test]
fn kernel_timer_times_the_pass() {
    let Some(fm) = shared() else { return };
    let ctx = fm.context();
    if !ctx.has_timestamps() {
        eprintln!(
            "SKIPPED: {} has no timestamp queries",
            ctx.adapter_info().name
        );
        return;
    }
    let mut rng = rng("kernel_timer_times_the_pass");
    let p = Problem::random(&mut rng, shape(3, 50, 70), Dtype::F32, Storage::Locked);
    let timer = KernelTimer::new(ctx).unwrap();
    let x = ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test x"),
            contents: bytemuck::cast_slice(&p.x),
            usage: wgpu::BufferUsages::STORAGE,
        });
    let w = p.w.upload(ctx, &mut rng);
    let y = poisoned_output(ctx, 150);
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let op = Linear {
        x: &x,
        w: p.w.gpu(&w),
        bias: None,
        y: &y,
        shape: p.shape,
        kernel: Kernel::Gemm,
    };
    fm.encode(&mut encoder, &op, Some(&timer)).unwrap();
    ctx.queue().submit([encoder.finish()]);
    assert!(timer.elapsed(ctx).unwrap() > std::time::Duration::ZERO);
}

/// `deeplock bench --matmul`'s library side on tiny cases: every figure present and
/// consistent (the function itself checks fused against plain output).
#[test]
fn bench_matmul_reports_consistent_records() {
    let Some(fm) = shared() else { return };
    let cases = [
        MatmulCase::new(1, 40, 72, Dtype::F32),
        MatmulCase::new(9, 33, 64, Dtype::BF16),
        MatmulCase::new(70, 9, 40, Dtype::F16),
        // One output tile, a long K: split.
        MatmulCase::new(9, 64, 1024, Dtype::BF16),
    ];
    let runs = Runs {
        warmup: 0,
        timed: 1,
    };
    let records = bench_matmul(fm.context(), &cases, runs).unwrap();
    assert_eq!(records.len(), cases.len());
    for (r, case) in records.iter().zip(&cases) {
        assert_eq!((r.m, r.n, r.k), (case.shape.m, case.shape.n, case.shape.k));
        assert_eq!(r.dtype, case.dtype.name());
        assert!(r.fused_ms > 0.0 && r.plain_ms > 0.0 && r.unlock_then_plain_ms > 0.0);
        assert!((r.fused_over_plain - r.fused_ms / r.plain_ms).abs() < 1e-9);
        assert!(r.fused_vs_plain_error < 1e-5);
    }
    assert_eq!(records[0].kernel, "gemv");
    assert_eq!(records[1].kernel, "gemm64");
    assert_eq!(records[2].kernel, "gemm128");
    assert_eq!(records[3].kernel, "gemm64");
    let splits: Vec<u32> = records.iter().map(|r| r.k_splits).collect();
    assert_eq!(splits, [1, 1, 1, 8]);
    let json = serde_json::to_value(&records).unwrap();
    assert!(json[0]["gflops_fused"].as_f64().unwrap() > 0.0);
    let table = matmul_table(&records);
    assert!(
        table.contains("9x33x64 BF16") && table.contains("gemm64 k/8"),
        "{table}"
    );
}
