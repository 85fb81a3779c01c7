//! `deeplock bench`: prints the vendor-neutral benchmark as a table or JSON.

use std::io::Write;
use std::path::PathBuf;

use deeplock::bench::matmul::{bench_matmul, matmul_table, MatmulCase};
use deeplock::bench::{self, Record, Runs, Workload};
use deeplock::Error;

use super::out::{self, outln, CliResult};

/// Which devices `bench` measures.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchDevice {
    /// The CPU fast path.
    Cpu,
    /// Every GPU adapter wgpu finds (software ones included).
    Gpu,
    /// Both.
    All,
}

/// `deeplock bench` arguments.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value = "all")]
    device: BenchDevice,
    /// Bytes per workload (repeatable); default: the CIFAR-10-sized model, 64 MiB, and
    /// 1 GiB where memory allows.
    #[arg(long, value_name = "BYTES")]
    size: Vec<usize>,
    /// Timed runs per figure (the median is reported), after two warm-up runs.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Measure the fused unlock-then-matmul kernels instead (every GPU adapter): fused
    /// against plain and unlock-then-plain, GEMV and GEMM, F32 and BF16 weights.
    #[arg(long, conflicts_with_all = ["size", "plot"])]
    matmul: bool,
    /// Also draw throughput against size to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// Runs the benchmark.
pub fn run(args: BenchArgs) -> CliResult<()> {
    if args.size.contains(&0) {
        return Err(Error::Invalid("--size must be at least 1 byte".into()).into());
    }
    let workloads = if args.size.is_empty() {
        Workload::defaults(bench::available_memory())
    } else {
        args.size.iter().map(|&b| Workload::buffer(b)).collect()
    };
    let runs = Runs {
        warmup: 2,
        timed: args.runs.max(1),
    };
    if args.matmul {
        return run_matmul(runs, args.json);
    }
    let mut records: Vec<Record> = Vec::new();
    if args.device != BenchDevice::Gpu {
        for w in &workloads {
            records.push(bench::bench_cpu(w, runs));
        }
    }
    if args.device != BenchDevice::Cpu {
        records.extend(bench::bench_gpus(&workloads, runs, !args.size.is_empty())?);
    }
    if let Some(path) = &args.plot {
        let svg = bench::plot(&records, "deeplock bench: lock throughput by size");
        let readable = deeplock::output::Access::Readable;
        deeplock::output::write_file(path, true, &readable, |f| {
            f.write_all(svg.as_bytes()).map_err(|e| Error::io(path, e))
        })?;
    }
    if args.json {
        let doc = serde_json::json!({ "records": records });
        outln!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON serializes")
        );
    } else {
        out::buffered(|w| w.write_all(bench::table(&records).as_bytes()))?;
    }
    Ok(())
}

/// `bench --matmul`: the reference shapes on real GPUs, scaled-down ones on software
/// adapters (which emulate a GPU on the CPU far too slowly for 4096 x 4096 weights).
fn run_matmul(runs: Runs, json: bool) -> CliResult<()> {
    let mut records = Vec::new();
    for ctx in bench::open_adapters()? {
        let cases = if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu {
            out::warn(format_args!(
                "deeplock bench: {} is a software adapter: scaled-down shapes; ratios describe the emulation, not a GPU",
                ctx.adapter_info().name
            ));
            MatmulCase::software()
        } else {
            MatmulCase::defaults()
        };
        records.extend(bench_matmul(&ctx, &cases, runs)?);
    }
    if json {
        let doc = serde_json::json!({ "matmul": records });
        outln!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON serializes")
        );
    } else {
        out::buffered(|w| w.write_all(matmul_table(&records).as_bytes()))?;
    }
    Ok(())
}
