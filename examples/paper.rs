//! The Deep-Lock paper's results, reproduced on real data:
//!
//! - **Figure 1a**: accuracy on the Fashion-MNIST test set of the trained model
//!   (tests/fixtures/fashion_mnist_cnn.safetensors), of the model locked and run with the
//!   right key, and with random wrong keys (mean and max).
//! - **Figure 1b**: average single-input prediction time, unlocked against locked (weights
//!   unlocked at every query), for the Fashion-MNIST network and the CIFAR-10-sized CNN
//!   (`zoo::cifar10_cnn`, random weights: timing does not depend on training), on the GPU
//!   (the fused unlock-in-the-matmul kernels) and on the CPU; batched throughput; overheads.
//!
//! ```sh
//! apt-get install dataset-fashion-mnist       # the data (IDX files in /usr/share/datasets)
//! cargo run --release --example paper           # full run, a table
//! cargo run --release --example paper -- --json --wrong-keys 10 --images 2000   # quick
//! ```
//!
//! Accuracy runs on the CPU fast path (`Model::predict_fast`). On a software GPU adapter
//! (lavapipe) the GPU is timed on a few queries only, and the output says so.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use deeplock::engine::CpuEngine;
use deeplock::files::{self, Options};
use deeplock::gpu::GpuContext;
use deeplock::infer::{accuracy, argmax, argmax_nan_lowest, Arch, GpuModel, Layer, Model, Unlock};
use deeplock::mnist::{Dataset, Split};
use deeplock::rng::SplitMix64;
use deeplock::zoo;
use deeplock::{CpuLocker, MasterKey};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Reproduce the Deep-Lock paper's Figure 1a and 1b on real data")]
struct Args {
    /// Machine-readable output (one JSON object) instead of the table.
    #[arg(long)]
    json: bool,
    /// Random wrong keys tried for Figure 1a.
    #[arg(long, default_value_t = 100)]
    wrong_keys: usize,
    /// Test images used for Figure 1a (the first ones; at most 10,000).
    #[arg(long, default_value_t = 10_000)]
    images: usize,
    /// Single-input queries timed per CPU measurement.
    #[arg(long, default_value_t = 200)]
    cpu_queries: usize,
    /// Single-input queries timed per GPU measurement [default: 100, or 3 on a software
    /// adapter].
    #[arg(long)]
    gpu_queries: Option<usize>,
    /// Seed of the wrong keys and of the CIFAR-10 CNN's weights.
    #[arg(long, default_value_t = 2022)]
    seed: u64,
    /// Directory holding Fashion-MNIST's `t10k-{images-idx3,labels-idx1}-ubyte.gz` (where
    /// Debian's `dataset-fashion-mnist` puts them by default).
    #[arg(long, default_value = deeplock::mnist::FASHION_MNIST_DIR)]
    data: PathBuf,
}

fn main() {
    // SAFETY: first thing in main, before any other thread exists.
    let runtime_dir = unsafe { deeplock::gpu::private_runtime_dir() };
    let result = run(Args::parse());
    drop(runtime_dir);
    if let Err(e) = result {
        eprintln!("paper: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> deeplock::Result<()> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let fashion = fixtures.join("fashion_mnist_cnn.safetensors");
    let fashion_arch = Arch::read(&fixtures.join("fashion_mnist_cnn.arch.json"))?;
    let hint = format!(
        "{}, or pass --data DIR",
        deeplock::mnist::FASHION_MNIST_HINT
    );
    let test = Dataset::read_dir(&args.data, Split::Test, &hint)?;
    let images = args.images.min(test.len());
    let input = test.batch_f32(0..images);
    let labels = &test.labels[..images];
    let dir = tempfile::tempdir().map_err(|e| deeplock::Error::io(Path::new("tmp"), e))?;
    let key = MasterKey::generate()?;
    let fashion_locked = lock(&fashion, dir.path(), &key)?;

    // Figure 1a.
    let show_progress = !args.json && std::io::stderr().is_terminal();
    let progress = |s: String| {
        if show_progress {
            eprint!("\r{s}   ");
        }
    };
    let original = Model::load(&fashion, &fashion_arch, None)?;
    let trained = original.predict_fast(&input, images)?;
    let original_acc = accuracy(&trained, labels);
    let right = Model::load(&fashion_locked, &fashion_arch, Some(&key))?;
    let right_pred = right.predict_fast(&input, images)?;
    assert_eq!(
        right_pred, trained,
        "the right key gives the original model"
    );
    let locked_correct_acc = accuracy(&right_pred, labels);
    let mut rng = SplitMix64(args.seed);
    let started = Instant::now();
    let mut wrong_key_accs = Vec::with_capacity(args.wrong_keys);
    // What a wrong-key model does: with NaN outputs, `argmax` (NaN first, as torch's)
    // makes it a constant classifier; the NaN-aware accuracy judges the numbers it gives.
    let mut wrong_key_nan_aware_accs = Vec::with_capacity(args.wrong_keys);
    let mut wrong_key_nan_share = Vec::with_capacity(args.wrong_keys);
    let mut wrong_key_class_counts = Vec::with_capacity(args.wrong_keys);
    for i in 0..args.wrong_keys {
        progress(format!(
            "Figure 1a: wrong key {}/{}",
            i + 1,
            args.wrong_keys
        ));
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
        let wrong = Model::load_unauthenticated(
            &fashion_locked,
            &fashion_arch,
            Some(&MasterKey::from_bytes(bytes)),
        )?;
        let logits = wrong.forward_fast(&input, images)?;
        let classes = wrong.outputs();
        let predicted: Vec<usize> = logits.chunks(classes).map(argmax).collect();
        let nan_aware: Vec<usize> = logits.chunks(classes).map(argmax_nan_lowest).collect();
        let mut counts = vec![0usize; classes];
        for &p in &predicted {
            counts[p] += 1;
        }
        wrong_key_accs.push(accuracy(&predicted, labels));
        wrong_key_nan_aware_accs.push(accuracy(&nan_aware, labels));
        let nans = logits.iter().filter(|v| v.is_nan()).count();
        wrong_key_nan_share.push(nans as f64 / logits.len().max(1) as f64);
        wrong_key_class_counts.push(counts);
    }
    let fig1a_s = started.elapsed().as_secs_f64();
    let n = wrong_key_accs.len().max(1) as f64;
    let wrong_key_mean = wrong_key_accs.iter().sum::<f64>() / n;
    let wrong_key_max = wrong_key_accs.iter().copied().fold(0.0, f64::max);

    // Figure 1b.
    let gpu = GpuContext::new().ok();
    let software = gpu
        .as_ref()
        .is_some_and(|c| c.adapter_info().device_type == wgpu::DeviceType::Cpu);
    let gpu_queries = args
        .gpu_queries
        .unwrap_or(if software { 3 } else { 100 })
        .max(1);
    let cifar = dir.path().join("cifar10_cnn.safetensors");
    zoo::write_safetensors(&cifar, &zoo::cifar10_cnn(args.seed))?;
    let cifar_locked = lock(&cifar, &dir.path().join("c"), &key)?;
    let cifar_arch = zoo::cifar10_cnn_arch();
    let mut cifar_input = vec![0f32; 64 * 3 * 32 * 32];
    cifar_input
        .iter_mut()
        .for_each(|v| *v = (rng.next_signed_unit() + 1.0) / 2.0);
    let nets = [
        (
            "fashion_mnist_cnn",
            &fashion,
            &fashion_locked,
            &fashion_arch,
            input[..64 * 784].to_vec(),
            256,
        ),
        (
            "cifar10_cnn",
            &cifar,
            &cifar_locked,
            &cifar_arch,
            cifar_input,
            32,
        ),
    ];
    let mut latency = Vec::new();
    for (name, plain, locked, arch, queries, batch) in nets {
        progress(format!("Figure 1b: {name}, CPU"));
        let model = Model::load(plain, arch, None)?;
        let per = model.input_shape().len();
        let one = |i: usize| &queries[(i % 64) * per..][..per];
        let cpu_unlocked = average(args.cpu_queries, |i| {
            model.forward_fast(one(i), 1).map(drop)
        })?;
        // Per query: read the locked weights, unlock them with the key, run the input.
        let cpu_locked = average(args.cpu_queries, |i| {
            Model::load(locked, arch, Some(&key))?
                .forward_fast(one(i), 1)
                .map(drop)
        })?;
        let cpu_batch = time(|| model.forward_fast(&queries, 64).map(drop))?;
        let mut entry = json!({
            "model": name,
            "params": params(&model),
            "cpu": {
                "unlocked_ms": ms(cpu_unlocked),
                "locked_per_query_ms": ms(cpu_locked),
                "overhead": ratio(cpu_locked, cpu_unlocked),
                "queries": args.cpu_queries,
                "batch": 64,
                "unlocked_batch_images_per_s": 64.0 / cpu_batch.as_secs_f64(),
            },
        });
        if let Some(ctx) = &gpu {
            progress(format!("Figure 1b: {name}, GPU"));
            let plain_gpu = GpuModel::load(ctx, plain, arch, None, Unlock::AtLoad, batch)?;
            let fused = GpuModel::load(ctx, locked, arch, Some(&key), Unlock::PerQuery, batch)?;
            let at_load = GpuModel::load(ctx, locked, arch, Some(&key), Unlock::AtLoad, batch)?;
            let single = |m: &GpuModel| {
                m.forward(one(0), 1)?; // warm-up: pipelines, first submission
                average(gpu_queries, |i| m.forward(one(i), 1).map(drop))
            };
            let (g_plain, g_fused, g_at_load) =
                (single(&plain_gpu)?, single(&fused)?, single(&at_load)?);
            let batched = |m: &GpuModel| {
                let b = batch.min(64);
                m.forward(&queries[..b * per], b)?;
                time(|| m.forward(&queries[..b * per], b).map(drop))
                    .map(|d| b as f64 / d.as_secs_f64())
            };
            entry["gpu"] = json!({
                "adapter": ctx.describe(),
                "software_adapter": software,
                "queries": gpu_queries,
                "unlocked_ms": ms(g_plain),
                "locked_per_query_ms": ms(g_fused),
                "locked_unlocked_at_load_ms": ms(g_at_load),
                "overhead": ratio(g_fused, g_plain),
                "batch": batch.min(64),
                "unlocked_batch_images_per_s": batched(&plain_gpu)?,
                "locked_per_query_batch_images_per_s": batched(&fused)?,
            });
        }
        latency.push(entry);
    }
    if show_progress {
        eprintln!();
    }
    let report = json!({
        "dataset": "fashion-mnist",
        "images": images,
        "params": params(&original),
        "original_acc": original_acc,
        "locked_correct_acc": locked_correct_acc,
        "wrong_key_accs": wrong_key_accs,
        "wrong_key_mean": wrong_key_mean,
        "wrong_key_max": wrong_key_max,
        "wrong_key_nan_aware_accs": wrong_key_nan_aware_accs,
        "wrong_key_nan_aware_mean": wrong_key_nan_aware_accs.iter().sum::<f64>() / n,
        "wrong_key_nan_share": wrong_key_nan_share,
        "wrong_key_class_counts": wrong_key_class_counts,
        "figure_1a_seconds": fig1a_s,
        "latency": latency,
        "cpu_threads": rayon::current_num_threads(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    } else {
        print_table(&report, gpu.is_none());
    }
    Ok(())
}

fn lock(src: &Path, dir: &Path, key: &MasterKey) -> deeplock::Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| deeplock::Error::io(dir, e))?;
    let out = dir.join("locked.safetensors");
    let mut engine = CpuEngine::new(CpuLocker::new());
    files::lock(src, &out, key, &mut engine, &Options::default())?;
    Ok(out)
}

/// Parameters of a model: its weights and biases.
fn params(model: &Model) -> usize {
    model
        .layers()
        .iter()
        .map(|l| match l {
            Layer::Conv(c) => c.weight.len() + c.bias.len(),
            Layer::Dense(d) => d.weight.len() + d.bias.len(),
            _ => 0,
        })
        .sum()
}

fn time(f: impl FnOnce() -> deeplock::Result<()>) -> deeplock::Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

/// Mean time of `n` calls of `f(i)`.
fn average(
    n: usize,
    mut f: impl FnMut(usize) -> deeplock::Result<()>,
) -> deeplock::Result<Duration> {
    let t = Instant::now();
    for i in 0..n {
        f(i)?;
    }
    Ok(t.elapsed() / n.max(1) as u32)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn print_table(r: &Value, no_gpu: bool) {
    let pct = |v: &Value| format!("{:6.2}%", v.as_f64().unwrap_or(0.0) * 100.0);
    println!(
        "Figure 1a: Fashion-MNIST test set, {} images, {} parameters",
        r["images"], r["params"]
    );
    println!("  original model               {}", pct(&r["original_acc"]));
    println!(
        "  locked, correct key          {}",
        pct(&r["locked_correct_acc"])
    );
    let keys = r["wrong_key_accs"].as_array().map_or(0, Vec::len);
    println!(
        "  locked, {keys} wrong keys: mean {}, max {}   ({:.1} s on {} CPU threads)",
        pct(&r["wrong_key_mean"]),
        pct(&r["wrong_key_max"]),
        r["figure_1a_seconds"].as_f64().unwrap_or(0.0),
        r["cpu_threads"]
    );
    let shares: Vec<f64> = r["wrong_key_nan_share"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().filter_map(Value::as_f64).collect());
    let constant = r["wrong_key_class_counts"].as_array().map_or(0, |keys| {
        keys.iter()
            .filter(|c| {
                let c = c.as_array().map_or(&[][..], Vec::as_slice);
                c.iter().filter(|n| n.as_u64() != Some(0)).count() == 1
            })
            .count()
    });
    println!(
        "    NaN outputs: {:.1}% on average; {constant} of {keys} wrong keys predict a single class; NaN-aware accuracy mean {}",
        shares.iter().sum::<f64>() / shares.len().max(1) as f64 * 100.0,
        pct(&r["wrong_key_nan_aware_mean"])
    );
    println!();
    println!("Figure 1b: average single-input prediction time (ms)");
    println!(
        "  {:<18} {:>10} {:<5} {:>10} {:>12} {:>12} {:>9} {:>14} {:>14}",
        "model",
        "params",
        "where",
        "unlocked",
        "locked/query",
        "unlock@load",
        "overhead",
        "batch img/s",
        "locked img/s"
    );
    for e in r["latency"].as_array().into_iter().flatten() {
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let c = &e["cpu"];
        println!(
            "  {:<18} {:>10} {:<5} {:>10.3} {:>12.3} {:>12} {:>8.2}x {:>14.0} {:>14}",
            e["model"].as_str().unwrap_or(""),
            e["params"].to_string(),
            "CPU",
            f(&c["unlocked_ms"]),
            f(&c["locked_per_query_ms"]),
            "-",
            f(&c["overhead"]),
            f(&c["unlocked_batch_images_per_s"]),
            "-"
        );
        let g = &e["gpu"];
        if !g.is_null() {
            println!(
                "  {:<18} {:>10} {:<5} {:>10.3} {:>12.3} {:>12.3} {:>8.2}x {:>14.1} {:>14.1}",
                "",
                "",
                "GPU",
                f(&g["unlocked_ms"]),
                f(&g["locked_per_query_ms"]),
                f(&g["locked_unlocked_at_load_ms"]),
                f(&g["overhead"]),
                f(&g["unlocked_batch_images_per_s"]),
                f(&g["locked_per_query_batch_images_per_s"])
            );
        }
    }
    let first_gpu = r["latency"][0]["gpu"].clone();
    if no_gpu {
        println!("  (no GPU adapter: GPU columns skipped)");
    } else {
        println!("  GPU: {}", first_gpu["adapter"].as_str().unwrap_or(""));
        if first_gpu["software_adapter"].as_bool() == Some(true) {
            println!(
                "  NOTE: software adapter (GPU emulated on the CPU): GPU timed on {} queries only; its times say nothing about a real GPU",
                first_gpu["queries"]
            );
        }
    }
    println!("  CPU locked/query: load the locked file, unlock with the key (AES-NI), run; GPU locked/query: weights stay locked in GPU memory, decoded in the matmul kernels at every query");
}
