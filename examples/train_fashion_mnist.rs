//! Trains the paper's Fashion-MNIST network on the real Fashion-MNIST and writes it as
//! the test fixture `tests/fixtures/fashion_mnist_cnn.safetensors` (PyTorch-layout F32
//! tensors) with its architecture `tests/fixtures/fashion_mnist_cnn.arch.json`.
//!
//! The network (Deep-Lock's "C, MP, C, MP, FC, FC"), 1x28x28 inputs scaled to [0, 1]:
//! conv 5x5 1->16 valid, max-pool 2, ReLU, conv 5x5 16->32 valid, max-pool 2, ReLU,
//! flatten (32*4*4 = 512), dense 512->128, ReLU, dense 128->10; 80,202 parameters
//! (313 KiB as f32).
//!
//! The network, its hand-written forward and backward passes and the training loop are
//! `examples/shared/training.rs`, shared with the `attacks` example. After training, the written model is evaluated again with
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
use deeplock::infer::{Arch, Model};
use deeplock::mnist::{
    Dataset, Split, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, FASHION_MNIST_HINT,
};
use deeplock::zoo::Tensor;

#[path = "shared/training.rs"]
mod training;
use training::{accuracy, rate, scaled, Net, Trainer, FASHION};

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
    let train_labels: Vec<usize> = train.labels.iter().map(|&l| usize::from(l)).collect();
    let test_labels: Vec<usize> = test.labels.iter().map(|&l| usize::from(l)).collect();

    let mut trainer = Trainer::new(Net::init(dims, args.seed), train.len(), args.seed ^ 0x5eed);
    println!(
        "training {} parameters on {} images, testing on {}; {} epochs, batch {}, Adam lr {}, seed {}, {} threads",
        trainer.net.params.len(),
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
        let lr = rate(args.lr, epoch, args.epochs);
        let loss = trainer.epoch(&train_imgs, &train_labels, args.batch, lr);
        println!(
            "epoch {epoch:2}: train loss {loss:.4}, test accuracy {:.4}, lr {lr}, {:.0} s",
            accuracy(&trainer.net, &test_imgs, &test_labels),
            started.elapsed().as_secs_f64()
        );
    }

    // Evaluate what is written with the library's reference forward pass.
    let arch = dims.arch();
    let tensors = to_tensors(&trainer.net);
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

/// The parameters of `net` as named PyTorch-layout tensors.
fn to_tensors(net: &Net) -> Vec<Tensor> {
    let mut rest = &net.params[..];
    net.dims
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
    use super::training::{param_count, Dims, PIECES};
    use super::*;
    use deeplock::rng::SplitMix64;

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
            &to_tensors(&net),
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
        assert!(Model::new(&FASHION.arch(), &to_tensors(&Net::init(FASHION, 1))).is_ok());
    }
}
