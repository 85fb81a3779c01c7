//! What the CLI prints: progress, summaries and `inspect` output.
//!
//! Names, metadata and paths come from the file (or the file system) and are shown
//! through [`shown`]: printed raw, a tensor name could set the terminal's title, erase
//! lines, or forge a `locked: yes` line with an embedded newline.

use std::borrow::Cow;
use std::io::{self, IsTerminal, Write};
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

/// `text` safe to print to a terminal: control characters (C0, DEL, C1) and the
/// bidirectional-text controls that reorder what is shown (U+202A..U+202E,
/// U+2066..U+2069, marks U+200E, U+200F, U+061C) are written as Rust escapes (`\n`,
/// `\u{1b}`, `\u{202e}`); everything else as it is. `--json` needs none of this: JSON
/// escapes control characters itself.
pub fn shown(text: &str) -> Cow<'_, str> {
    let bidi = |c: char| matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}');
    if !text.chars().any(|c| c.is_control() || bidi(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else if bidi(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A path, [`shown`].
pub fn shown_path(path: &Path) -> String {
    shown(&path.display().to_string()).into_owned()
}

/// The one-line summary of a lock or unlock.
pub fn print_done(
    out: &mut dyn Write,
    verb: &str,
    input: &Path,
    output: &Path,
    r: &Report,
) -> io::Result<()> {
    let copied = if r.copied > 0 {
        format!(", {} other files copied", r.copied)
    } else {
        String::new()
    };
    writeln!(
        out,
        "{verb} {} -> {}: {} of {} tensors ({} of {} bytes) in {} file(s){copied}, {:.3} s ({:.2} GB/s)",
        shown_path(input),
        shown_path(output),
        r.transformed,
        r.tensors,
        r.transformed_bytes,
        r.data_bytes,
        r.files,
        r.seconds,
        gbps(r.data_bytes, r.seconds)
    )
}

/// What `verify` checked, in one line (and one more per v1 file).
pub fn print_verified(out: &mut dyn Write, path: &Path, v: &files::Verification) -> io::Result<()> {
    let v1 = v.unauthenticated.len();
    writeln!(
        out,
        "verified {}: the key matches all {} locked file(s); {} tensor(s) ({} bytes), {} header(s){} authenticated{}",
        shown_path(path),
        v.files,
        v.tensors,
        v.bytes,
        v.files - v1,
        if v.checkpoint { " and the checkpoint record" } else { "" },
        if v1 > 0 {
            format!("; {v1} file(s) locked with scheme v1 carry no tags: only their key check value was checked")
        } else {
            String::new()
        }
    )?;
    for p in &v.unauthenticated {
        writeln!(out, "  not authenticated (scheme v1): {}", shown_path(p))?;
    }
    Ok(())
}

/// `inspect`'s table.
pub fn print_inspection(out: &mut dyn Write, found: &[Inspection]) -> io::Result<()> {
    for f in found {
        writeln!(out, "{}", shown_path(&f.path))?;
        match &f.lock {
            Some(l) => writeln!(
                out,
                "  locked: yes (deeplock v{}, {}), salt {}, key check value {}, {} of {} tensors locked; {}",
                l.version(),
                l.scheme(),
                l.salt.to_hex(),
                deeplock::hex::encode(&l.kcv),
                l.locked.len(),
                f.tensors.len(),
                if l.is_authenticated() {
                    "authenticated (v2: a tag over every tensor and one over the header; `deeplock verify` checks them)"
                } else {
                    "not authenticated (v1 carries no tags; `deeplock upgrade` adds them)"
                }
            )?,
            None => writeln!(out, "  locked: no")?,
        }
        for (k, v) in &f.user_metadata {
            writeln!(out, "  metadata {} = {}", shown(k), shown(v))?;
        }
        let names: Vec<Cow<str>> = f.tensors.iter().map(|t| shown(&t.name)).collect();
        let width = names
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(
            out,
            "  {:width$}  {:6}  {:>20}  {:>12}  locked",
            "name", "dtype", "shape", "bytes"
        )?;
        for ((t, name), stored) in f.tensors.iter().zip(&names).zip(&f.stored) {
            // A block type (GGUF's Q4_K, ...) is shown as the format names it, with
            // its shape in elements, not as the bytes its entry describes.
            let (dtype, shape) = match stored {
                Some(s) => (s.name.to_string(), &s.shape),
                None => (t.dtype.to_string(), &t.shape),
            };
            writeln!(
                out,
                "  {:width$}  {:6}  {:>20}  {:>12}  {}",
                name,
                dtype,
                format!("{shape:?}"),
                t.len(),
                if f.is_locked(&t.name) { "yes" } else { "no" }
            )?;
        }
        for (name, why) in &f.left_clear {
            writeln!(out, "  left in the clear: {} ({})", shown(name), shown(why))?;
        }
    }
    Ok(())
}

/// `inspect --json`: one object per file, with stable field names.
pub fn inspection_json(found: &[Inspection]) -> String {
    let files: Vec<serde_json::Value> = found
        .iter()
        .map(|f| {
            serde_json::json!({
                "path": f.path.display().to_string(),
                "locked": f.lock.is_some(),
                "authenticated": f.lock.as_ref().is_some_and(|l| l.is_authenticated()),
                "version": f.lock.as_ref().map(|l| l.version()),
                "scheme": f.lock.as_ref().map(|l| l.scheme()),
                "salt": f.lock.as_ref().map(|l| l.salt.to_hex()),
                "kcv": f.lock.as_ref().map(|l| deeplock::hex::encode(&l.kcv)),
                "metadata": f.user_metadata.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                "tensors": f.tensors.iter().zip(&f.stored).map(|(t, stored)| serde_json::json!({
                    "name": t.name,
                    "dtype": t.dtype.name(),
                    "shape": t.shape,
                    "stored_type": stored.as_ref().map(|s| s.name),
                    "stored_shape": stored.as_ref().map(|s| &s.shape),
                    "bytes": t.len(),
                    "data_offsets": [t.start, t.end],
                    "locked": f.is_locked(&t.name),
                })).collect::<Vec<_>>(),
                "left_clear": f.left_clear.iter().map(|(name, why)| serde_json::json!({
                    "name": name,
                    "why": why,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "files": files })).expect("JSON serializes")
}
