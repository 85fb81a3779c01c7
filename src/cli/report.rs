//! What the CLI prints: progress, summaries and `inspect` output.

use std::io::IsTerminal;
use std::path::Path;

use deeplock::files::{self, Inspection, Report};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Bytes of tensor data under `input`, for the progress bar.
pub fn total_data_bytes(input: &Path) -> deeplock::Result<u64> {
    Ok(files::inspect(input)?
        .iter()
        .flat_map(|f| &f.tensors)
        .map(|t| t.len())
        .sum())
}

/// A byte progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Throughput in GB/s (10^9 bytes per second).
pub fn gbps(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds.max(1e-9) / 1e9
}

/// The one-line summary of a lock or unlock.
pub fn print_done(verb: &str, input: &Path, output: &Path, r: &Report) {
    let copied = if r.copied > 0 {
        format!(", {} other files copied", r.copied)
    } else {
        String::new()
    };
    println!(
        "{verb} {} -> {}: {} of {} tensors ({} of {} bytes) in {} file(s){copied}, {:.3} s ({:.2} GB/s)",
        input.display(),
        output.display(),
        r.transformed,
        r.tensors,
        r.transformed_bytes,
        r.data_bytes,
        r.files,
        r.seconds,
        gbps(r.data_bytes, r.seconds)
    );
}

/// `inspect`'s table.
pub fn print_inspection(found: &[Inspection]) {
    for f in found {
        println!("{}", f.path.display());
        match &f.lock {
            Some(l) => println!(
                "  locked: yes (deeplock v{}, {}), salt {}, key check value {}, {} of {} tensors locked",
                deeplock::scheme::VERSION,
                deeplock::scheme::SCHEME,
                l.salt.to_hex(),
                deeplock::hex::encode(&l.kcv),
                l.locked.len(),
                f.tensors.len()
            ),
            None => println!("  locked: no"),
        }
        for (k, v) in &f.user_metadata {
            println!("  metadata {k} = {v}");
        }
        let width = f
            .tensors
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        println!(
            "  {:width$}  {:5}  {:>20}  {:>12}  locked",
            "name", "dtype", "shape", "bytes"
        );
        for t in &f.tensors {
            println!(
                "  {:width$}  {:5}  {:>20}  {:>12}  {}",
                t.name,
                t.dtype,
                format!("{:?}", t.shape),
                t.len(),
                if f.is_locked(&t.name) { "yes" } else { "no" }
            );
        }
    }
}

/// `inspect --json`: one object per file, with stable field names.
pub fn inspection_json(found: &[Inspection]) -> String {
    let files: Vec<serde_json::Value> = found
        .iter()
        .map(|f| {
            serde_json::json!({
                "path": f.path.display().to_string(),
                "locked": f.lock.is_some(),
                "version": f.lock.as_ref().map(|_| deeplock::scheme::VERSION),
                "scheme": f.lock.as_ref().map(|_| deeplock::scheme::SCHEME),
                "salt": f.lock.as_ref().map(|l| l.salt.to_hex()),
                "kcv": f.lock.as_ref().map(|l| deeplock::hex::encode(&l.kcv)),
                "metadata": f.user_metadata.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                "tensors": f.tensors.iter().map(|t| serde_json::json!({
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": t.shape,
                    "bytes": t.len(),
                    "data_offsets": [t.start, t.end],
                    "locked": f.is_locked(&t.name),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "files": files })).expect("JSON serializes")
}
