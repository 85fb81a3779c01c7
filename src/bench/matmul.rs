//! `deeplock bench --matmul`: what decoding locked weights inside the matmul costs.
//!
//! For each case (shape and weight dtype) three ways to compute `Y = X · Wᵀ` on one GPU:
//! - **fused**: [`FusedMatmul`] on locked W, decoding it tile by tile in the kernel;
//! - **plain**: the same kernel on plaintext W, its decode switched off by a pipeline
//!   constant: the baseline, so `fused / plain` is the price of the decode alone;
//! - **unlock then plain**: [`GpuLocker`] unlocks a copy of W into a scratch buffer,
//!   then the plain kernel runs on it: what an unfused runtime does per query, leaving
//!   plaintext weights in GPU memory. Its time counts both passes, not the copy of the
//!   locked bytes into the scratch buffer (an out-of-place unlock kernel would move the
//!   same bytes as the in-place one does).
//!
//! Times are kernel times from timestamp queries where the device has them (wall clock
//! around submit and wait otherwise), medians over [`Runs`]. No bias: it adds one
//! decode per output column, nothing measurable. Outputs of the fused and the plain
//! kernel are compared, so a figure never comes from a broken kernel.

use serde::Serialize;
use wgpu::util::DeviceExt;

use super::{grouped_table, median_of, Runs};
use crate::cpu::CpuLocker;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::gpu::{
    f32s, read_mapped, FusedMatmul, GpuContext, GpuLocker, GpuTensor, Kernel, KernelTimer, Linear,
    MatmulShape, Region, TensorKey,
};
use crate::key::MasterKey;
use crate::rng::SplitMix64;
use crate::scheme::{Direction, Salt, TensorCipher};

/// One benchmark case: a product and its weights' element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MatmulCase {
    /// `m` (batch), `n` (output features), `k` (input features).
    pub shape: MatmulShape,
    /// Element type of W: F32, F16 or BF16.
    pub dtype: Dtype,
}

impl MatmulCase {
    /// A case of `m` batch rows against an `n x k` weight of `dtype`.
    pub fn new(m: u32, n: u32, k: u32, dtype: Dtype) -> Self {
        MatmulCase {
            shape: MatmulShape { m, n, k },
            dtype,
        }
    }

    /// The reference cases, for real GPUs: batch 1 (GEMV), 64 and 512 against a
    /// 4096 x 4096 weight (an LLM projection), and the CIFAR-10-sized model's dense
    /// layer (2304 -> 512) at batch 1 and 64; each in F32 and BF16.
    pub fn defaults() -> Vec<Self> {
        Self::each_dtype(&[
            (1, 4096, 4096),
            (64, 4096, 4096),
            (512, 4096, 4096),
            (1, 512, 2304),
            (64, 512, 2304),
        ])
    }

    /// The same kinds of case scaled down for software adapters (lavapipe, WARP), which
    /// emulate a GPU on the CPU at a small fraction of its speed: a 1024 x 1024 weight at
    /// batch 1 and 64, a 512 x 512 one at batch 512, and the CIFAR-10 dense layer at
    /// batch 1 and 64. Their ratios describe the emulation, not a GPU.
    pub fn software() -> Vec<Self> {
        Self::each_dtype(&[
            (1, 1024, 1024),
            (64, 1024, 1024),
            (512, 512, 512),
            (1, 512, 2304),
            (64, 512, 2304),
        ])
    }

    fn each_dtype(shapes: &[(u32, u32, u32)]) -> Vec<Self> {
        [Dtype::F32, Dtype::BF16]
            .into_iter()
            .flat_map(|dtype| {
                shapes
                    .iter()
                    .map(move |&(m, n, k)| MatmulCase::new(m, n, k, dtype))
            })
            .collect()
    }

    /// `64x4096x4096 BF16`.
    pub fn label(&self) -> String {
        let MatmulShape { m, n, k } = self.shape;
        format!("{m}x{n}x{k} {}", self.dtype.name())
    }
}

/// The measurements of one case on one device.
#[derive(Clone, Debug, Serialize)]
pub struct MatmulRecord {
    /// GPU adapter name.
    pub adapter: String,
    /// wgpu backend (`vulkan`, `metal`, `dx12`, ...).
    pub backend: String,
    /// wgpu device type (`DiscreteGpu`, `Cpu`, ...).
    pub device_type: String,
    /// Batch rows.
    pub m: u32,
    /// Output features (rows of W).
    pub n: u32,
    /// Input features (columns of W).
    pub k: u32,
    /// Element type of W (`F32`, `BF16`, `F16`).
    pub dtype: String,
    /// The kernel that ran: `gemv` up to batch 8, else `gemm64`, `gemm128` or `gemm256`
    /// (batch rows per tile, each decoding W once).
    pub kernel: String,
    /// Ranges the GEMM split K into, to run enough workgroups (1: not split).
    pub k_splits: u32,
    /// Median milliseconds of the fused kernel on locked W.
    pub fused_ms: f64,
    /// Median milliseconds of the same kernel on plaintext W.
    pub plain_ms: f64,
    /// Median milliseconds of unlocking W into a scratch buffer plus the plain kernel.
    pub unlock_then_plain_ms: f64,
    /// `fused_ms / plain_ms`: the cost of decoding inside the kernel.
    pub fused_over_plain: f64,
    /// `unlock_then_plain_ms / plain_ms`: the cost of the unfused alternative.
    pub unlock_then_plain_over_plain: f64,
    /// `2 m n k / fused time`, in 10^9 floating-point operations per second.
    pub gflops_fused: f64,
    /// `2 m n k / plain time`.
    pub gflops_plain: f64,
    /// Bytes of W over the fused time, GB/s: for the GEMV, which reads each weight once,
    /// the rate at which it decodes weights.
    pub weight_gbps_fused: f64,
    /// Bytes of W over the plain time, GB/s: for the GEMV, how close the plain kernel
    /// runs to the memory bandwidth.
    pub weight_gbps_plain: f64,
    /// `‖fused − plain‖ / ‖plain‖` on the case's data: 0 up to rounding order.
    pub fused_vs_plain_error: f64,
    /// `timestamps` (kernel time from timestamp queries) or `wall` (submit to finish).
    pub timing: String,
    /// Timed runs per figure, after warm-up.
    pub runs: usize,
}

/// Which of the three paths [`MatmulBench::seconds`] times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPath {
    /// Fused decode and matmul on locked W.
    Fused,
    /// The same kernel on plaintext W.
    Plain,
    /// GpuLocker unlock into scratch, then the plain kernel.
    UnlockThenPlain,
}

impl MatmulPath {
    /// Every path.
    pub const ALL: [MatmulPath; 3] = [
        MatmulPath::Fused,
        MatmulPath::Plain,
        MatmulPath::UnlockThenPlain,
    ];

    /// `fused`, `plain`, `unlock_then_plain`.
    pub fn name(self) -> &'static str {
        match self {
            MatmulPath::Fused => "fused",
            MatmulPath::Plain => "plain",
            MatmulPath::UnlockThenPlain => "unlock_then_plain",
        }
    }
}

/// One case set up on a device: its buffers and key, ready to time any path any number
/// of times (the criterion bench and [`bench_matmul`] share it).
pub struct MatmulBench<'a> {
    matmul: &'a FusedMatmul,
    locker: &'a GpuLocker,
    case: MatmulCase,
    cipher: TensorCipher,
    x: wgpu::Buffer,
    w_locked: wgpu::Buffer,
    w_plain: wgpu::Buffer,
    scratch: wgpu::Buffer,
    y: wgpu::Buffer,
    w_bytes: u64,
    /// Two timers (the unlock-then-plain path times two passes), if the device has
    /// timestamp queries.
    timers: Option<[KernelTimer; 2]>,
}

impl<'a> MatmulBench<'a> {
    /// Uploads random X and W (values uniform in [-1, 1), W locked under a fresh key and
    /// in the clear) for `case`, on the device of `matmul` and `locker`.
    pub fn new(matmul: &'a FusedMatmul, locker: &'a GpuLocker, case: MatmulCase) -> Result<Self> {
        let ctx = matmul.context();
        let MatmulShape { m, n, k } = case.shape;
        let (m, n, k) = (m as usize, n as usize, k as usize);
        let mut rng = SplitMix64(0x6d61_746d_756c);
        let x: Vec<f32> = (0..m * k).map(|_| rng.next_signed_unit()).collect();
        let (size, encode): (usize, fn(f32, &mut Vec<u8>)) = match case.dtype {
            Dtype::F32 => (4, |v, w| w.extend_from_slice(&v.to_le_bytes())),
            Dtype::F16 => (2, |v, w| {
                w.extend_from_slice(&half::f16::from_f32(v).to_le_bytes())
            }),
            Dtype::BF16 => (2, |v, w| {
                w.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes())
            }),
            d => {
                return Err(Error::Invalid(format!(
                    "matmul benchmark weights are F32, F16 or BF16, not {d}"
                )))
            }
        };
        let mut w = Vec::with_capacity(n * k * size);
        for _ in 0..n * k {
            encode(rng.next_signed_unit(), &mut w);
        }
        let w_bytes = w.len() as u64;
        w.resize(w.len().next_multiple_of(4), 0);
        let cipher =
            TensorCipher::for_tensor(&MasterKey::generate()?, &Salt::generate()?, "fc.weight");
        let mut locked = w.clone();
        CpuLocker::new().apply_parallel(
            &cipher,
            Direction::Lock,
            0,
            &mut locked[..w_bytes as usize],
        );
        let device = ctx.device();
        let init = |label, contents: &[u8], usage| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            })
        };
        let storage = wgpu::BufferUsages::STORAGE;
        Ok(MatmulBench {
            x: init("deeplock bench matmul x", bytemuck::cast_slice(&x), storage),
            w_locked: init(
                "deeplock bench matmul w (locked)",
                &locked,
                storage | wgpu::BufferUsages::COPY_SRC,
            ),
            w_plain: init("deeplock bench matmul w (plain)", &w, storage),
            scratch: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("deeplock bench matmul w (unlocked scratch)"),
                size: w.len() as u64,
                usage: storage | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            y: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("deeplock bench matmul y"),
                size: (4 * m * n) as u64,
                usage: storage | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            timers: match (KernelTimer::new(ctx), KernelTimer::new(ctx)) {
                (Ok(a), Ok(b)) => Some([a, b]),
                _ => None,
            },
            matmul,
            locker,
            case,
            cipher,
            w_bytes,
        })
    }

    /// Whether times come from timestamp queries (else wall clock).
    pub fn has_timestamps(&self) -> bool {
        self.timers.is_some()
    }

    /// Runs `path` once and returns its seconds: kernel time by timestamps, or wall
    /// clock from submit to completion.
    pub fn seconds(&self, path: MatmulPath) -> Result<f64> {
        let ctx = self.matmul.context();
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("deeplock bench matmul"),
            });
        let timer = |i: usize| self.timers.as_ref().map(|t| &t[i]);
        match path {
            MatmulPath::Fused => {
                self.matmul.encode(
                    &mut encoder,
                    &self.linear_on(&self.w_locked, true),
                    timer(0),
                )?;
            }
            MatmulPath::Plain => {
                self.matmul.encode(
                    &mut encoder,
                    &self.linear_on(&self.w_plain, false),
                    timer(0),
                )?;
            }
            MatmulPath::UnlockThenPlain => {
                encoder.copy_buffer_to_buffer(
                    &self.w_locked,
                    0,
                    &self.scratch,
                    0,
                    self.scratch.size(),
                );
                let region = Region {
                    cipher: &self.cipher,
                    tensor_offset: 0,
                    range: 0..self.w_bytes,
                };
                self.locker.encode(
                    &mut encoder,
                    &self.scratch,
                    Direction::Unlock,
                    &[region],
                    timer(1),
                )?;
                self.matmul.encode(
                    &mut encoder,
                    &self.linear_on(&self.scratch, false),
                    timer(0),
                )?;
            }
        }
        let start = std::time::Instant::now();
        ctx.queue().submit([encoder.finish()]);
        match &self.timers {
            Some([a, b]) => {
                let mut s = a.elapsed(ctx)?.as_secs_f64();
                if path == MatmulPath::UnlockThenPlain {
                    s += b.elapsed(ctx)?.as_secs_f64();
                }
                Ok(s)
            }
            None => {
                ctx.wait(None)?;
                Ok(start.elapsed().as_secs_f64())
            }
        }
    }

    fn linear_on<'b>(&'b self, w: &'b wgpu::Buffer, locked: bool) -> Linear<'b> {
        Linear {
            x: &self.x,
            w: GpuTensor {
                buffer: w,
                offset: 0,
                dtype: self.case.dtype,
                locked: locked.then_some(TensorKey {
                    cipher: &self.cipher,
                    tensor_offset: 0,
                }),
            },
            bias: None,
            y: &self.y,
            shape: self.case.shape,
            kernel: Kernel::Auto,
        }
    }

    /// Runs `path` once and reads Y back.
    pub fn output(&self, path: MatmulPath) -> Result<Vec<f32>> {
        self.seconds(path)?;
        let ctx = self.matmul.context();
        let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("deeplock bench matmul y read-back"),
            size: self.y.size(),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("deeplock bench matmul read-back"),
            });
        encoder.copy_buffer_to_buffer(&self.y, 0, &staging, 0, self.y.size());
        let submission = ctx.queue().submit([encoder.finish()]);
        read_mapped(
            ctx,
            &staging,
            0..self.y.size(),
            Some(submission),
            "matmul",
            f32s,
        )
    }
}

/// Measures each case on `ctx`'s device: fused, plain and unlock-then-plain, the median
/// of `runs` each (after its warm-up runs, which also compile the pipelines).
pub fn bench_matmul(
    ctx: &GpuContext,
    cases: &[MatmulCase],
    runs: Runs,
) -> Result<Vec<MatmulRecord>> {
    let matmul = FusedMatmul::new(ctx);
    let locker = GpuLocker::new(ctx);
    let info = ctx.adapter_info();
    let mut records = Vec::with_capacity(cases.len());
    for &case in cases {
        let bench = MatmulBench::new(&matmul, &locker, case)?;
        let fused_out = bench.output(MatmulPath::Fused)?;
        let plain_out = bench.output(MatmulPath::Plain)?;
        let error = relative_difference(&fused_out, &plain_out);
        // The same decoded values through the same arithmetic: equal up to rounding.
        if error.is_nan() || error > 1e-5 {
            return Err(Error::Gpu(format!(
                "matmul {}: the fused kernel's output differs from the plain kernel's (relative difference {error:e}) on {}",
                case.label(),
                info.name
            )));
        }
        let time = |path| median_of(runs, || bench.seconds(path).map(Some));
        let fused = time(MatmulPath::Fused)?;
        let plain = time(MatmulPath::Plain)?;
        let unlock_then_plain = time(MatmulPath::UnlockThenPlain)?;
        let flops = case.shape.flops();
        let w_bytes = bench.w_bytes as f64;
        records.push(MatmulRecord {
            adapter: info.name.clone(),
            backend: format!("{:?}", info.backend).to_lowercase(),
            device_type: format!("{:?}", info.device_type),
            m: case.shape.m,
            n: case.shape.n,
            k: case.shape.k,
            dtype: case.dtype.name().into(),
            kernel: match Kernel::Auto.resolve(case.shape.m) {
                Kernel::Gemv => "gemv".into(),
                _ => format!("gemm{}", matmul.tile_rows(Kernel::Auto, case.shape.m)?),
            },
            k_splits: matmul.k_splits(Kernel::Auto, case.shape)?,
            fused_ms: fused * 1e3,
            plain_ms: plain * 1e3,
            unlock_then_plain_ms: unlock_then_plain * 1e3,
            fused_over_plain: fused / plain,
            unlock_then_plain_over_plain: unlock_then_plain / plain,
            gflops_fused: flops / fused / 1e9,
            gflops_plain: flops / plain / 1e9,
            weight_gbps_fused: w_bytes / fused / 1e9,
            weight_gbps_plain: w_bytes / plain / 1e9,
            fused_vs_plain_error: error,
            timing: if bench.has_timestamps() {
                "timestamps"
            } else {
                "wall"
            }
            .into(),
            runs: runs.timed,
        });
    }
    Ok(records)
}

/// `‖a − b‖ / ‖b‖`.
fn relative_difference(a: &[f32], b: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        diff += (f64::from(*x) - f64::from(*y)).powi(2);
        norm += f64::from(*y).powi(2);
    }
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// A readable table of `records`.
pub fn matmul_table(records: &[MatmulRecord]) -> String {
    let header = format!(
        "  {:>20} {:>12} {:>10} {:>10} {:>12} {:>7} {:>7} {:>9} {:>9} {:>9}",
        "case",
        "kernel",
        "fused ms",
        "plain ms",
        "unlock+pl ms",
        "f/p",
        "u+p/p",
        "GF fused",
        "GF plain",
        "W GB/s f"
    );
    grouped_table(
        records,
        |r| format!("gpu {} ({}, {})", r.adapter, r.backend, r.device_type),
        &header,
        |r| {
            format!(
                "  {:>20} {:>12} {:>10.3} {:>10.3} {:>12.3} {:>7.2} {:>7.2} {:>9.1} {:>9.1} {:>9.2}",
                format!("{}x{}x{} {}", r.m, r.n, r.k, r.dtype),
                if r.k_splits > 1 {
                    format!("{} k/{}", r.kernel, r.k_splits)
                } else {
                    r.kernel.clone()
                },
                r.fused_ms,
                r.plain_ms,
                r.unlock_then_plain_ms,
                r.fused_over_plain,
                r.unlock_then_plain_over_plain,
                r.gflops_fused,
                r.gflops_plain,
                r.weight_gbps_fused
            )
        },
        "\n  Y = X·Wᵀ, m x n x k; median kernel times (timestamps where available); k/N = K split into N ranges; f/p = fused over plain (the decode's cost), u+p/p = unlock into scratch then plain, over plain; GF = 10^9 flop/s; W GB/s f = weight bytes over fused time\n",
    )
}
