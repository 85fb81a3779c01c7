//! The paper's security evaluation (Deep-Lock, Figure 2) reproduced, with the baselines
//! it leaves out: what an adversary holding a locked model and 10% of the training data
//! reaches by fine-tuning it, and by other means with the same data.
//!
//! The adversary has the locked Fashion-MNIST fixture (its architecture and locked
//! weights, not the key) and a stratified, seeded 10% of the training set (600 images
//! per class). Every run trains with the same optimiser budget (the same epochs,
//! mini-batches, Adam rate and batch order as the fixture's own training) and is
//! evaluated on the full 10,000-image test set before training and after every epoch:
//!
//! - `fine_tune_as_locked`: the paper's attack, training from the locked weights as they
//!   are. About 1 in 256 locked f32 values is NaN or infinite, so the first step makes
//!   every weight NaN and the network answers class 0 ever after.
//! - `fine_tune_zeroed` / `fine_tune_clipped`: the same after sanitising the locked
//!   tensors, as any adversary would: non-finite values set to zero and the rest either
//!   zeroed when outside the layer's initialisation range (He-uniform, `sqrt(6 / fan_in)`,
//!   known from the architecture) or clipped to it.
//! - `from_scratch`: ignore the locked weights and train a fresh network on the 6,000
//!   images.
//! - `only_conv1_locked_clipped` / `only_fc2_locked_clipped`: the model was locked with
//!   `--only` on the first convolution or on the last dense layer, the rest in the
//!   clear; fine-tuned after clipping. Which layers carry the protection.
//!
//! ```sh
//! apt-get install dataset-fashion-mnist     # the data, in /usr/share/datasets/fashion-mnist
//! cargo run --release --example attacks                 # a table and target/attacks.svg
//! cargo run --release --example attacks -- --json       # original_acc, chance, runs, ...
//! ```
//!
//! The key and the salts are fresh for every run of the program, so the locked values,
//! and the fine-tuning that starts from them, differ between runs; the training data and
//! batch order are fixed by `--seed`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use deeplock::engine::CpuEngine;
use deeplock::files::{self, Options};
use deeplock::infer::Arch;
use deeplock::mnist::{Dataset, Split, CLASSES, FASHION_MNIST_DIR, FASHION_MNIST_HINT};
use deeplock::rng::SplitMix64;
use deeplock::{CpuLocker, Error, MasterKey, Result};
use serde_json::{json, Value};

#[path = "shared/training.rs"]
mod training;
use training::{accuracy, rate, scaled, shuffle, Dims, Net, Trainer, FASHION};

/// HPNN's fine-tuning result on Fashion-MNIST as the Deep-Lock paper quotes it: the
/// accuracy an adversary reached against that earlier locking scheme.
const HPNN_FINE_TUNE_ACC: f64 = 0.8243;

#[derive(Parser)]
#[command(
    about = "Fine-tuning attacks on a locked Fashion-MNIST model (Deep-Lock Figure 2) and their baselines"
)]
struct Args {
    /// Passes over the adversary's training images, for every run.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Images per mini-batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Adam's learning rate (halved for the last third of the epochs).
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Seed of the adversary's training images, the batch order and the fresh network.
    #[arg(long, default_value_t = 2022)]
    seed: u64,
    /// Training images per class the adversary holds (600 = 10% of Fashion-MNIST).
    #[arg(long, default_value_t = 600)]
    per_class: usize,
    /// Test images evaluated after every epoch (the first ones of the test set).
    #[arg(long, default_value_t = 10_000)]
    test_images: usize,
    /// Directory with the Fashion-MNIST IDX files.
    #[arg(long, default_value = FASHION_MNIST_DIR)]
    data: PathBuf,
    /// The trained model the adversary attacks (locked by this program), with its
    /// architecture beside it as `.arch.json`.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fashion_mnist_cnn.safetensors"))]
    model: PathBuf,
    /// Where to write the plot.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/attacks.svg"))]
    plot: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What the adversary does with the locked weights before training.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Start {
    /// Train from them as they are.
    AsLocked,
    /// Non-finite or out-of-range values set to zero.
    Zeroed,
    /// Non-finite values set to zero, the rest clipped to the initialisation range.
    Clipped,
    /// Ignore them: a fresh He-uniform network.
    Scratch,
}

/// One attack: which tensors the model was locked with, and how it starts.
struct Attack {
    name: &'static str,
    /// Tensor globs locked (`--only`); every tensor when empty.
    only: &'static [&'static str],
    start: Start,
}

const ATTACKS: [Attack; 6] = [
    Attack {
        name: "fine_tune_as_locked",
        only: &[],
        start: Start::AsLocked,
    },
    Attack {
        name: "fine_tune_zeroed",
        only: &[],
        start: Start::Zeroed,
    },
    Attack {
        name: "fine_tune_clipped",
        only: &[],
        start: Start::Clipped,
    },
    Attack {
        name: "from_scratch",
        only: &[],
        start: Start::Scratch,
    },
    Attack {
        name: "only_conv1_locked_clipped",
        only: &["conv1.*"],
        start: Start::Clipped,
    },
    Attack {
        name: "only_fc2_locked_clipped",
        only: &["fc2.*"],
        start: Start::Clipped,
    },
];

/// How every attack trains and is measured.
struct Budget {
    epochs: usize,
    batch: usize,
    lr: f32,
    seed: u64,
}

/// The data of the experiment, each image `[side * side]` scaled to [0, 1].
struct Data<'a> {
    train: Vec<&'a [f32]>,
    train_labels: Vec<usize>,
    test: Vec<&'a [f32]>,
    test_labels: Vec<usize>,
}

/// What one attack reached.
struct Outcome {
    name: &'static str,
    /// Locked tensors' non-finite values the adversary started from.
    non_finite_at_start: usize,
    /// Test accuracy before training, then after every epoch.
    accuracy: Vec<f64>,
    seconds: f64,
}

/// `per_class` training images of every class, drawn without replacement with `seed`,
/// in ascending order. Fails when a class has fewer.
fn stratified(labels: &[usize], per_class: usize, seed: u64) -> Result<Vec<usize>> {
    let mut rng = SplitMix64(seed);
    let mut picked = Vec::with_capacity(per_class * CLASSES);
    for class in 0..CLASSES {
        let mut of_class: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        if of_class.len() < per_class {
            return Err(Error::Invalid(format!(
                "class {class} has {} training images, fewer than the {per_class} asked for; ask for fewer per class",
                of_class.len()
            )));
        }
        shuffle(&mut of_class, &mut rng);
        picked.extend_from_slice(&of_class[..per_class]);
    }
    picked.sort_unstable();
    Ok(picked)
}

/// The range a layer's weights are drawn from at initialisation, `sqrt(6 / fan_in)` for
/// the layer of tensor `name` (a weight or its bias): what an adversary who knows only
/// the architecture takes as the layer's typical range.
fn init_bound(dims: &Dims, name: &str) -> f32 {
    let layer = name.split('.').next().unwrap_or(name);
    let fan_in: usize = dims
        .tensors()
        .iter()
        .find(|(n, _)| *n == format!("{layer}.weight"))
        .map_or(1, |(_, shape)| shape[1..].iter().product());
    (6.0 / fan_in as f32).sqrt()
}

/// Sanitises the tensors of `net` flagged in `locked` as `start` says; returns how many
/// of their values were not finite.
fn sanitise(net: &mut Net, locked: &[bool], start: Start) -> usize {
    let mut non_finite = 0;
    let mut at = 0;
    for ((name, shape), &is_locked) in net.dims.tensors().iter().zip(locked) {
        let n: usize = shape.iter().product();
        let values = &mut net.params[at..at + n];
        at += n;
        if !is_locked {
            continue;
        }
        non_finite += values.iter().filter(|v| !v.is_finite()).count();
        let bound = init_bound(&net.dims, name);
        for v in values.iter_mut() {
            *v = match start {
                Start::AsLocked | Start::Scratch => *v,
                _ if !v.is_finite() => 0.0,
                Start::Zeroed if v.abs() > bound => 0.0,
                Start::Zeroed => *v,
                Start::Clipped => v.clamp(-bound, bound),
            };
        }
    }
    non_finite
}

/// The network `model` holds (written by `train_fashion_mnist`), each tensor's bytes read
/// as little-endian f32 whether locked or not, and which of its tensors are locked.
fn read_net(model: &Path) -> Result<(Net, Vec<bool>)> {
    let bytes = std::fs::read(model).map_err(|e| Error::io(model, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Format {
        path: model.to_path_buf(),
        reason: e.to_string(),
    })?;
    let inspection = files::inspect(model)?.remove(0);
    let mut params = Vec::new();
    let mut locked = Vec::new();
    for (name, shape) in FASHION.tensors() {
        let t = st.tensor(name).map_err(|e| Error::Format {
            path: model.to_path_buf(),
            reason: format!("{name}: {e}; the attacks take the fixture of train_fashion_mnist"),
        })?;
        if t.shape() != shape.as_slice() || t.dtype() != safetensors::Dtype::F32 {
            return Err(Error::Format {
                path: model.to_path_buf(),
                reason: format!(
                    "{name} is {:?} {:?}, not F32 {shape:?}; the attacks take the fixture of train_fashion_mnist",
                    t.dtype(),
                    t.shape()
                ),
            });
        }
        params.extend(
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        locked.push(inspection.is_locked(name));
    }
    Ok((
        Net {
            dims: FASHION,
            params,
        },
        locked,
    ))
}

/// Checks that `model`'s architecture file describes the network trained here.
fn check_arch(model: &Path) -> Result<()> {
    let path = model.with_extension("arch.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    if Arch::from_json(&text, &path)? != FASHION.arch() {
        return Err(Error::Invalid(format!(
            "{} is not the paper's Fashion-MNIST network; the attacks take the fixture of train_fashion_mnist",
            path.display()
        )));
    }
    Ok(())
}

/// Locks `model` into `dir` with a fresh key (which the adversary never sees), only the
/// tensors matching `only` when it is not empty, and returns the locked file.
fn lock_fresh(model: &Path, only: &[&str], dir: &Path, name: &str) -> Result<PathBuf> {
    let out = dir.join(format!("{name}.safetensors"));
    let opts = Options {
        only: only.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    };
    let mut engine = CpuEngine::new(CpuLocker::new());
    files::lock(model, &out, &MasterKey::generate()?, &mut engine, &opts)?;
    Ok(out)
}

/// Runs `attack` on `model` within `budget`, its locked copy written in `dir`.
fn run_attack(
    attack: &Attack,
    model: &Path,
    dir: &Path,
    data: &Data,
    budget: &Budget,
) -> Result<Outcome> {
    let started = Instant::now();
    let (mut net, locked) = if attack.start == Start::Scratch {
        (
            Net::init(FASHION, budget.seed),
            vec![false; FASHION.tensors().len()],
        )
    } else {
        read_net(&lock_fresh(model, attack.only, dir, attack.name)?)?
    };
    let non_finite_at_start = sanitise(&mut net, &locked, attack.start);
    let mut trainer = Trainer::new(net, data.train.len(), budget.seed ^ 0x5eed);
    let mut acc = vec![accuracy(&trainer.net, &data.test, &data.test_labels)];
    for epoch in 1..=budget.epochs {
        let lr = rate(budget.lr, epoch, budget.epochs);
        trainer.epoch(&data.train, &data.train_labels, budget.batch, lr);
        acc.push(accuracy(&trainer.net, &data.test, &data.test_labels));
    }
    Ok(Outcome {
        name: attack.name,
        non_finite_at_start,
        accuracy: acc,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The accuracy of the trained model itself on the test images, measured the same way.
fn original_accuracy(model: &Path, data: &Data) -> Result<f64> {
    let (net, locked) = read_net(model)?;
    if locked.iter().any(|&l| l) {
        return Err(Error::Invalid(format!(
            "{} is locked; the attacks start from the plaintext model and lock it themselves",
            model.display()
        )));
    }
    Ok(accuracy(&net, &data.test, &data.test_labels))
}

/// Everything the experiment measured, as `--json` prints it.
fn report(original_acc: f64, data: &Data, budget: &Budget, outcomes: &[Outcome]) -> Value {
    json!({
        "original_acc": original_acc,
        "chance": 1.0 / CLASSES as f64,
        "hpnn_fine_tune_acc": HPNN_FINE_TUNE_ACC,
        "train_images": data.train.len(),
        "test_images": data.test.len(),
        "epochs": budget.epochs,
        "batch": budget.batch,
        // As written on the command line, not the f32's binary expansion.
        "lr": budget.lr.to_string().parse::<f64>().unwrap_or(f64::from(budget.lr)),
        "seed": budget.seed,
        "runs": outcomes.iter().map(|o| json!({
            "name": o.name,
            "accuracy_per_epoch": &o.accuracy[1..],
            "initial_acc": o.accuracy[0],
            "non_finite_at_start": o.non_finite_at_start,
            "seconds": o.seconds,
        })).collect::<Vec<_>>(),
    })
}

/// Accuracy against epoch, one line per attack, with the original model's accuracy,
/// HPNN's fine-tuning result and chance as reference lines; a dependency-free SVG.
fn plot(original_acc: f64, outcomes: &[Outcome], title: &str) -> String {
    use std::fmt::Write;
    const COLOURS: [&str; 6] = [
        "#d62728", "#ff7f0e", "#9467bd", "#2ca02c", "#1f77b4", "#8c564b",
    ];
    let (w, h, left, right, top, bottom) = (780.0, 440.0, 60.0, 250.0, 34.0, 46.0);
    let epochs = outcomes
        .iter()
        .map(|o| o.accuracy.len() - 1)
        .max()
        .unwrap_or(1)
        .max(1);
    let x = |e: f64| left + e / epochs as f64 * (w - left - right);
    let y = |a: f64| top + (1.0 - a) * (h - top - bottom);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="14">{title}</text>"#
    );
    for tenth in 0..=10 {
        let a = f64::from(tenth) / 10.0;
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{:.0}%</text>"##,
            w - right,
            left - 6.0,
            y(a) + 4.0,
            a * 100.0,
            y = y(a)
        );
    }
    for e in 0..=epochs {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{e}</text>"#,
            x(e as f64),
            h - bottom + 16.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">epoch</text>"#,
        (left + w - right) / 2.0,
        h - 8.0
    );
    let mut legend = 0.0;
    let mut key = |s: &mut String, colour: &str, dash: &str, label: String| {
        let ly = top + 10.0 + legend * 20.0;
        let _ = write!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{label}</text>"#,
            w - right + 12.0,
            w - right + 36.0,
            w - right + 42.0,
            ly + 4.0
        );
        legend += 1.0;
    };
    let references = [
        (
            original_acc,
            "#000",
            "6 3",
            format!("original model {:.1}%", original_acc * 100.0),
        ),
        (
            HPNN_FINE_TUNE_ACC,
            "#777",
            "2 3",
            "HPNN fine-tuned (paper) 82.4%".to_string(),
        ),
        (
            1.0 / CLASSES as f64,
            "#bbb",
            "2 3",
            "chance 10%".to_string(),
        ),
    ];
    for (a, colour, dash, label) in references {
        let _ = write!(
            s,
            r#"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="1.5" stroke-dasharray="{dash}"/>"#,
            w - right,
            y = y(a)
        );
        key(&mut s, colour, dash, label);
    }
    for (o, colour) in outcomes.iter().zip(COLOURS.iter().cycle()) {
        let points: Vec<String> = o
            .accuracy
            .iter()
            .enumerate()
            .map(|(e, &a)| format!("{:.1},{:.1}", x(e as f64), y(a)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            points.join(" ")
        );
        let last = o.accuracy.last().copied().unwrap_or(0.0);
        key(
            &mut s,
            colour,
            "none",
            format!("{} {:.1}%", o.name, last * 100.0),
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Writes `text` to `path` through a temporary file beside it.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension("svg.tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.epochs == 0 || args.batch == 0 || args.per_class == 0 || args.test_images == 0 {
        return Err(Error::Invalid(
            "--epochs, --batch, --per-class and --test-images must be at least 1".into(),
        ));
    }
    check_arch(&args.model)?;
    let load = |split| Dataset::read_dir(&args.data, split, FASHION_MNIST_HINT);
    let (train, test) = (load(Split::Train)?, load(Split::Test)?);
    let side = FASHION.side * FASHION.side;
    if (train.rows, train.cols) != (FASHION.side, FASHION.side) {
        return Err(Error::Invalid(format!(
            "{} holds {}x{} images; this network takes 28x28 (Fashion-MNIST)",
            args.data.display(),
            train.rows,
            train.cols
        )));
    }
    let (train_x, test_x) = (scaled(&train), scaled(&test));
    let all_labels: Vec<usize> = train.labels.iter().map(|&l| usize::from(l)).collect();
    let picked = stratified(&all_labels, args.per_class, args.seed)?;
    let train_imgs: Vec<&[f32]> = train_x.chunks_exact(side).collect();
    let n_test = args.test_images.min(test.len());
    let data = Data {
        train: picked.iter().map(|&i| train_imgs[i]).collect(),
        train_labels: picked.iter().map(|&i| all_labels[i]).collect(),
        test: test_x.chunks_exact(side).take(n_test).collect(),
        test_labels: test.labels[..n_test]
            .iter()
            .map(|&l| usize::from(l))
            .collect(),
    };
    let budget = Budget {
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
    };
    let original_acc = original_accuracy(&args.model, &data)?;
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let mut outcomes = Vec::new();
    if !args.json {
        println!(
            "adversary: {} training images ({} per class, seed {}), {} test images; {} epochs, batch {}, Adam lr {}; original model {:.2}%",
            data.train.len(),
            args.per_class,
            args.seed,
            data.test.len(),
            args.epochs,
            args.batch,
            args.lr,
            original_acc * 100.0
        );
        println!(
            "{:28} {:>10} {:>9} {:>9} {:>9} {:>7}",
            "attack", "non-finite", "start", "final", "best", "seconds"
        );
    }
    for attack in &ATTACKS {
        let o = run_attack(attack, &args.model, dir.path(), &data, &budget)?;
        if !args.json {
            let best = o.accuracy.iter().copied().fold(0.0, f64::max);
            println!(
                "{:28} {:>10} {:>8.2}% {:>8.2}% {:>8.2}% {:>7.0}",
                o.name,
                o.non_finite_at_start,
                o.accuracy[0] * 100.0,
                o.accuracy.last().copied().unwrap_or(0.0) * 100.0,
                best * 100.0,
                o.seconds
            );
        }
        outcomes.push(o);
    }
    let title = format!(
        "Fine-tuning a locked Fashion-MNIST CNN with {} training images",
        data.train.len()
    );
    write_atomic(&args.plot, &plot(original_acc, &outcomes, &title))?;
    if args.json {
        println!("{:#}", report(original_acc, &data, &budget, &outcomes));
    } else {
        println!(
            "HPNN fine-tuned (paper): {:.2}%; chance {:.0}%; plot {}",
            HPNN_FINE_TUNE_ACC * 100.0,
            100.0 / CLASSES as f64,
            args.plot.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fashion_mnist_cnn.safetensors")
    }

    #[test]
    fn the_split_is_stratified_distinct_and_seeded() {
        let mut rng = SplitMix64(7);
        let labels: Vec<usize> = (0..9000).map(|_| (rng.next_u64() % 10) as usize).collect();
        let a = stratified(&labels, 600, 2022).unwrap();
        assert_eq!(a.len(), 6000);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        for class in 0..CLASSES {
            assert_eq!(a.iter().filter(|&&i| labels[i] == class).count(), 600);
        }
        assert_eq!(stratified(&labels, 600, 2022).unwrap(), a);
        assert_ne!(stratified(&labels, 600, 2023).unwrap(), a);
        let few = stratified(&labels, 2000, 2022).unwrap_err().to_string();
        assert!(few.contains("fewer than the 2000"), "{few}");
    }

    #[test]
    fn sanitising_touches_only_locked_tensors_and_leaves_them_finite_in_range() {
        let mut rng = SplitMix64(11);
        let mut garbage = Net::init(FASHION, 1);
        for v in &mut garbage.params {
            *v = f32::from_bits(rng.next_u64() as u32);
        }
        let locked = [true, true, false, false, true, false, false, true];
        let bad = garbage.params.iter().filter(|v| !v.is_finite()).count();
        assert!(bad > 0);
        for start in [Start::Zeroed, Start::Clipped, Start::AsLocked] {
            let mut net = garbage.clone();
            let counted = sanitise(&mut net, &locked, start);
            let mut at = 0;
            let mut locked_bad = 0;
            for ((name, shape), &l) in FASHION.tensors().iter().zip(&locked) {
                let n: usize = shape.iter().product();
                let (before, after) = (&garbage.params[at..at + n], &net.params[at..at + n]);
                at += n;
                if !l || start == Start::AsLocked {
                    assert!(before
                        .iter()
                        .zip(after)
                        .all(|(a, b)| a.to_bits() == b.to_bits()));
                    locked_bad += usize::from(l) * before.iter().filter(|v| !v.is_finite()).count();
                    continue;
                }
                locked_bad += before.iter().filter(|v| !v.is_finite()).count();
                let bound = init_bound(&FASHION, name);
                assert!(
                    after.iter().all(|v| v.is_finite() && v.abs() <= bound),
                    "{name}"
                );
                for (b, a) in before.iter().zip(after) {
                    let kept = b.is_finite() && b.abs() <= bound;
                    match start {
                        Start::Zeroed => assert_eq!(*a, if kept { *b } else { 0.0 }),
                        _ if kept => assert_eq!(a, b),
                        _ if b.is_finite() => assert_eq!(a.abs(), bound),
                        _ => assert_eq!(*a, 0.0),
                    }
                }
            }
            assert_eq!(counted, locked_bad, "{start:?}");
        }
        assert_eq!(init_bound(&FASHION, "conv2.bias"), (6.0f32 / 400.0).sqrt());
        assert_eq!(init_bound(&FASHION, "fc1.weight"), (6.0f32 / 512.0).sqrt());
    }

    #[test]
    fn the_fixture_reads_back_as_the_network_and_its_locked_copies_say_what_is_locked() {
        check_arch(&fixture()).unwrap();
        let (plain, locked) = read_net(&fixture()).unwrap();
        assert_eq!(locked, vec![false; 8]);
        let dir = tempfile::tempdir().unwrap();
        let copy = lock_fresh(&fixture(), &["fc2.*"], dir.path(), "fc2").unwrap();
        let (net, locked) = read_net(&copy).unwrap();
        assert_eq!(
            locked,
            [false, false, false, false, false, false, true, true]
        );
        let fc2 = plain.params.len() - 10 - 10 * 128;
        assert_eq!(net.params[..fc2], plain.params[..fc2]);
        assert_ne!(net.params[fc2..], plain.params[fc2..]);
    }

    /// The harness end to end on a small subset of the real data, one short epoch.
    #[test]
    fn the_harness_runs_every_attack_and_reports_every_field() {
        if !Dataset::fashion_mnist_installed() {
            assert!(
                std::env::var_os("DEEPLOCK_REQUIRE_DATA").is_none_or(|v| v != "1"),
                "DEEPLOCK_REQUIRE_DATA=1 but Fashion-MNIST is missing: {FASHION_MNIST_HINT}"
            );
            eprintln!("skipped: Fashion-MNIST is not installed; {FASHION_MNIST_HINT}");
            return;
        }
        let (train, test) = (
            Dataset::fashion_mnist(Split::Train).unwrap(),
            Dataset::fashion_mnist(Split::Test).unwrap(),
        );
        let (train_x, test_x) = (scaled(&train), scaled(&test));
        let side = FASHION.side * FASHION.side;
        let labels: Vec<usize> = train.labels.iter().map(|&l| usize::from(l)).collect();
        let picked = stratified(&labels, 5, 1).unwrap();
        let imgs: Vec<&[f32]> = train_x.chunks_exact(side).collect();
        let data = Data {
            train: picked.iter().map(|&i| imgs[i]).collect(),
            train_labels: picked.iter().map(|&i| labels[i]).collect(),
            test: test_x.chunks_exact(side).take(200).collect(),
            test_labels: test.labels[..200].iter().map(|&l| usize::from(l)).collect(),
        };
        let budget = Budget {
            epochs: 1,
            batch: 16,
            lr: 1e-3,
            seed: 1,
        };
        let dir = tempfile::tempdir().unwrap();
        let original = original_accuracy(&fixture(), &data).unwrap();
        assert!(original > 0.8, "{original}");
        let outcomes: Vec<Outcome> = ATTACKS
            .iter()
            .map(|a| run_attack(a, &fixture(), dir.path(), &data, &budget).unwrap())
            .collect();
        let j = report(original, &data, &budget, &outcomes);
        assert_eq!(j["original_acc"], original);
        assert_eq!(j["chance"], 0.1);
        assert_eq!(j["train_images"], 50);
        assert_eq!(j["test_images"], 200);
        let runs = j["runs"].as_array().unwrap();
        let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, ATTACKS.map(|a| a.name));
        for r in runs {
            let accs = r["accuracy_per_epoch"].as_array().unwrap();
            assert_eq!(accs.len(), 1, "{r}");
            for a in accs.iter().chain([&r["initial_acc"]]) {
                assert!((0.0..=1.0).contains(&a.as_f64().unwrap()), "{r}");
            }
        }
        let non_finite = |name: &str| {
            runs.iter().find(|r| r["name"] == name).unwrap()["non_finite_at_start"]
                .as_u64()
                .unwrap()
        };
        // About 1 in 256 of the 80,202 locked values; none where nothing is locked.
        assert!(non_finite("fine_tune_as_locked") > 100);
        assert_eq!(non_finite("from_scratch"), 0);
        // The paper's adversary: NaNs everywhere after one step, class 0 for every image.
        let class0 = data.test_labels.iter().filter(|&&l| l == 0).count() as f64 / 200.0;
        assert_eq!(runs[0]["accuracy_per_epoch"][0], class0);
        let svg = plot(original, &outcomes, "test");
        assert_eq!(svg.matches("<polyline").count(), ATTACKS.len());
        assert!(svg.contains("HPNN"));
    }
}
