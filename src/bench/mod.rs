//! `deeplock bench`: a vendor-neutral benchmark of locking and unlocking on the CPU and
//! on any GPU wgpu can drive. Each figure is the median of several runs after warm-up;
//! every throughput is reported next to its yardstick on the same device in the same
//! run (memcpy or a copy kernel; plain AES-128-CTR), because absolute numbers on shared
//! machines drift while ratios hold.
//!
//! [`matmul`] (`deeplock bench --matmul`) measures the fused unlock-then-matmul kernels
//! against the same kernels on plaintext weights and against unlocking first.

mod cpu;
pub(crate) mod gpu;
pub mod matmul;
mod svg;

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;

pub use cpu::bench_cpu;
pub use gpu::{bench_gpu, bench_gpus, open_adapters, DeviceBench};
pub use svg::plot;

/// One workload: a set of tensors locked as a model would be.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Its name in tables (`cifar10_cnn`, `64MiB`, ...).
    pub label: String,
    /// Tensor sizes in bytes.
    pub tensors: Vec<usize>,
}

impl Workload {
    /// Total bytes.
    pub fn bytes(&self) -> usize {
        self.tensors.iter().sum()
    }

    /// The CIFAR-10-sized model of the demo: 12 f32 tensors, 1,250,858 parameters.
    pub fn cifar10_cnn() -> Self {
        Workload {
            label: "cifar10_cnn".into(),
            tensors: crate::zoo::CIFAR10_CNN
                .iter()
                .map(|(_, s)| 4 * s.iter().product::<usize>())
                .collect(),
        }
    }

    /// One buffer of `bytes` bytes.
    pub fn buffer(bytes: usize) -> Self {
        Workload {
            label: human_bytes(bytes),
            tensors: vec![bytes],
        }
    }

    /// The default workloads: the CIFAR-10-sized model, 64 MiB and, when the machine has
    /// the memory for it (`available` bytes), 1 GiB.
    pub fn defaults(available: Option<u64>) -> Vec<Self> {
        let mut w = vec![Self::cifar10_cnn(), Self::buffer(64 << 20)];
        if available.is_none_or(|a| a >= 4 << 30) {
            w.push(Self::buffer(1 << 30));
        }
        w
    }
}

/// `1GiB`, `64MiB`, `5003432B`.
pub fn human_bytes(b: usize) -> String {
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

/// Bytes of memory the system says are available, if it says (Linux).
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How many runs to time and to discard first.
#[derive(Clone, Copy, Debug)]
pub struct Runs {
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed runs; the median is reported.
    pub timed: usize,
}

impl Default for Runs {
    fn default() -> Self {
        Runs {
            warmup: 2,
            timed: 7,
        }
    }
}

/// The median of `runs.timed` timings of `f` after `runs.warmup` untimed calls.
/// `f` returns the seconds it measured itself, or `None` to be timed by wall clock.
pub fn median_seconds(runs: Runs, mut f: impl FnMut() -> Option<f64>) -> f64 {
    for _ in 0..runs.warmup {
        f();
    }
    let mut t: Vec<f64> = (0..runs.timed.max(1))
        .map(|_| {
            let start = Instant::now();
            let own = f();
            own.unwrap_or_else(|| start.elapsed().as_secs_f64())
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// The median of `runs` of `f`, as [`median_seconds`], failing on its first error.
pub(crate) fn median_of(runs: Runs, mut f: impl FnMut() -> Result<Option<f64>>) -> Result<f64> {
    let mut err = None;
    let s = median_seconds(runs, || match f() {
        Ok(t) => t,
        Err(e) => {
            err.get_or_insert(e);
            Some(0.0)
        }
    });
    err.map_or(Ok(s), Err)
}

/// A table of `records` grouped by device: a line naming the device (`who`) and the
/// `header` line before each run of records of one device, a `row` per record, then
/// `footer`.
pub(crate) fn grouped_table<R>(
    records: &[R],
    who: impl Fn(&R) -> String,
    header: &str,
    row: impl Fn(&R) -> String,
    footer: &str,
) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mut last = String::new();
    for r in records {
        let who = who(r);
        if who != last {
            let _ = writeln!(s, "\n{who}");
            let _ = writeln!(s, "{header}");
            last = who;
        }
        let _ = writeln!(s, "{}", row(r));
    }
    s.push_str(footer);
    s
}

/// A throughput: bytes over the median seconds, in GB/s (10^9 bytes per second).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Rate {
    /// Median seconds of one run.
    pub seconds: f64,
    /// `size_bytes / seconds / 1e9`.
    pub gbps: f64,
}

impl Rate {
    /// The rate of moving `bytes` in `seconds`.
    pub fn new(bytes: usize, seconds: f64) -> Self {
        Rate {
            seconds,
            gbps: bytes as f64 / seconds.max(1e-12) / 1e9,
        }
    }
}

/// One device at one size.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// `cpu` or `gpu`.
    pub device: String,
    /// CPU model or GPU adapter name.
    pub adapter: String,
    /// PCI vendor id of the adapter (0 for the CPU).
    pub vendor: u32,
    /// CPU backend (`vaes512`, ...) or wgpu backend (`vulkan`, `metal`, `dx12`, ...).
    pub backend: String,
    /// wgpu device type (`DiscreteGpu`, `Cpu`, ...); `Cpu` for the CPU.
    pub device_type: String,
    /// Driver name and version (empty for the CPU).
    pub driver: String,
    /// Workload label.
    pub size_label: String,
    /// Bytes locked per run.
    pub size_bytes: usize,
    /// Lock throughput of the compute alone: GPU kernel time by timestamp queries;
    /// CPU in memory on all cores.
    pub lock_gbps: f64,
    /// Unlock throughput, as `lock_gbps`.
    pub unlock_gbps: f64,
    /// Lock throughput by wall clock, transfers included (GPU: upload, lock, read back;
    /// CPU: as `lock_gbps`, which has no transfers; the table shows `-`).
    pub lock_wall_gbps: f64,
    /// Unlock throughput by wall clock, as `lock_wall_gbps`.
    pub unlock_wall_gbps: f64,
    /// The memory yardstick on the same device in the same run: a copy kernel on the
    /// GPU (timestamps), memcpy on all CPU cores.
    pub copy_gbps: f64,
    /// `lock_gbps / copy_gbps`: how close locking runs to this device's memory limit.
    pub lock_over_copy: f64,
    /// Plain AES-128-CTR of the buffer with the `aes` crate on one core (CPU only).
    pub aes_ctr_gbps: Option<f64>,
    /// Lock on one CPU core (CPU only).
    pub lock_1t_gbps: Option<f64>,
    /// Unlock on one CPU core (CPU only).
    pub unlock_1t_gbps: Option<f64>,
    /// v2 lock on all CPU cores, in memory: lock each 1 MiB chunk, then its GMAC tag
    /// while it is in cache, chunks spread over the cores (CPU only).
    pub v2_lock_gbps: Option<f64>,
    /// v2 unlock on all CPU cores: check each chunk's tag, then unlock it (CPU only).
    pub v2_unlock_gbps: Option<f64>,
    /// v2 lock on one CPU core (CPU only).
    pub v2_lock_1t_gbps: Option<f64>,
    /// v2 unlock on one CPU core (CPU only).
    pub v2_unlock_1t_gbps: Option<f64>,
    /// Copies of the AES tables in each workgroup of the lock kernel (GPU only; see
    /// `gpu::aes::table_copies`).
    pub table_copies: Option<u32>,
    /// The median seconds behind each figure, so GB/s can be checked as bytes/seconds.
    pub seconds: Seconds,
    /// Timed runs per figure (after warm-up).
    pub runs: usize,
}

/// Median seconds of one run of each measurement of a [`Record`].
#[derive(Clone, Debug, Serialize)]
pub struct Seconds {
    /// Behind `lock_gbps`.
    pub lock: f64,
    /// Behind `unlock_gbps`.
    pub unlock: f64,
    /// Behind `lock_wall_gbps`.
    pub lock_wall: f64,
    /// Behind `unlock_wall_gbps`.
    pub unlock_wall: f64,
    /// Behind `copy_gbps`.
    pub copy: f64,
    /// Behind `aes_ctr_gbps`.
    pub aes_ctr: Option<f64>,
    /// Behind `lock_1t_gbps`.
    pub lock_1t: Option<f64>,
    /// Behind `unlock_1t_gbps`.
    pub unlock_1t: Option<f64>,
    /// Behind `v2_lock_gbps`.
    pub v2_lock: Option<f64>,
    /// Behind `v2_unlock_gbps`.
    pub v2_unlock: Option<f64>,
    /// Behind `v2_lock_1t_gbps`.
    pub v2_lock_1t: Option<f64>,
    /// Behind `v2_unlock_1t_gbps`.
    pub v2_unlock_1t: Option<f64>,
}

/// A readable table of `records`.
pub fn table(records: &[Record]) -> String {
    let header = format!(
        "  {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "workload",
        "bytes",
        "lock",
        "unlock",
        "lock+io",
        "unlk+io",
        "copy",
        "l/copy",
        "aes-ctr",
        "lock 1t",
        "unlk 1t",
        "v2 lock",
        "v2 unlk",
        "v2 lk 1t",
        "v2 ul 1t"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    // +io is the wall clock with host-device transfers: the CPU has none, and its
    // figure would only repeat lock's.
    let gpu_only = |r: &Record, v: f64| opt((r.device == "gpu").then_some(v));
    grouped_table(
        records,
        |r| {
            format!(
                "{} {} (vendor {:#06x}, {}, {}, {})",
                r.device, r.adapter, r.vendor, r.backend, r.device_type, r.driver
            )
        },
        &header,
        |r| {
            format!(
                "  {:>12} {:>12} {:>9.2} {:>9.2} {:>9} {:>9} {:>9.2} {:>6.2} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                r.size_label,
                r.size_bytes,
                r.lock_gbps,
                r.unlock_gbps,
                gpu_only(r, r.lock_wall_gbps),
                gpu_only(r, r.unlock_wall_gbps),
                r.copy_gbps,
                r.lock_over_copy,
                opt(r.aes_ctr_gbps),
                opt(r.lock_1t_gbps),
                opt(r.unlock_1t_gbps),
                opt(r.v2_lock_gbps),
                opt(r.v2_unlock_gbps),
                opt(r.v2_lock_1t_gbps),
                opt(r.v2_unlock_1t_gbps)
            )
        },
        "\n  GB/s (10^9 bytes/s), median of the timed runs; lock/unlock = compute only (GPU: kernel by timestamp queries), +io = wall clock with host-device transfers (GPU only), copy = memcpy (CPU) or copy kernel (GPU), 1t = one core, v2 = v1 plus a GMAC tag per 1 MiB chunk (lock: lock then tag each chunk; unlk: check each chunk's tag then unlock it; CPU only)\n",
    )
}
