//! `deeplock demo`: the main job on a built-in model. Generates the CIFAR-10-sized
//! network, locks and unlocks it on each available device, checks the round trip
//! byte for byte, and reports what happened and how fast.

use std::sync::Arc;
use std::time::Instant;

use deeplock::engine::{self, Chunk, DeviceChoice, Engine, Span};
use deeplock::files::{self, Options};
use deeplock::{zoo, Direction, Error, MasterKey, Result, TensorCipher};

use super::out::{outln, CliResult};
use super::report::gbps;

/// Runs the demo.
pub fn run(verbose: bool) -> CliResult<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let model = dir.path().join("cifar10_cnn.safetensors");
    zoo::write_safetensors(&model, &zoo::cifar10_cnn(42))?;
    let original = std::fs::read(&model).map_err(|e| Error::io(&model, e))?;
    outln!(
        "model: CIFAR-10-sized CNN (Keras cifar10_cnn shapes), {} parameters in {} tensors, {} bytes",
        zoo::CIFAR10_CNN_PARAMS,
        zoo::CIFAR10_CNN.len(),
        original.len()
    );
    let key = MasterKey::generate()?;
    outln!(
        "key: fresh random key (key check value {})",
        deeplock::hex::encode(&key.kcv())
    );

    let mut engines: Vec<(&str, Box<dyn Engine>)> =
        vec![("cpu", engine::select(DeviceChoice::Cpu)?)];
    match engine::select(DeviceChoice::Gpu) {
        Ok(e) => engines.push(("gpu", e)),
        Err(e) => outln!("gpu: skipped ({e})"),
    }
    for (name, mut engine) in engines {
        outln!("{name}: {}", engine.describe());
        let locked = dir.path().join(format!("locked-{name}.safetensors"));
        let unlocked = dir.path().join(format!("unlocked-{name}.safetensors"));
        let opts = Options::default();
        let l = files::lock(&model, &locked, &key, engine.as_mut(), &opts)?;
        let u = files::unlock(&locked, &unlocked, &key, engine.as_mut(), &opts)?;
        let locked_bytes = std::fs::read(&locked).map_err(|e| Error::io(&locked, e))?;
        let back = std::fs::read(&unlocked).map_err(|e| Error::io(&unlocked, e))?;
        if back != original {
            return Err(Error::Invalid(format!(
                "demo failed on {name}: the unlocked model differs from the original; please report this bug"
            ))
            .into());
        }
        let same = count_equal_f32(
            &original,
            &locked_bytes,
            original.len() - l.data_bytes as usize,
        );
        outln!(
            "  lock   {} tensors, {} bytes in {:.2} ms ({:.2} GB/s end to end, file I/O included)",
            l.transformed,
            l.transformed_bytes,
            l.seconds * 1e3,
            gbps(l.data_bytes, l.seconds)
        );
        outln!(
            "  unlock {} tensors, {} bytes in {:.2} ms ({:.2} GB/s end to end, file I/O included)",
            u.transformed,
            u.transformed_bytes,
            u.seconds * 1e3,
            gbps(u.data_bytes, u.seconds)
        );
        outln!(
            "  round trip: unlocked file identical to the original; {same} of {} weights unchanged in the locked file",
            zoo::CIFAR10_CNN_PARAMS
        );
        let (lock_s, unlock_s) =
            in_memory_seconds(engine.as_mut(), &key, &original, l.data_bytes as usize)?;
        outln!(
            "  in memory (no file I/O, median of 5): lock {:.2} GB/s, unlock {:.2} GB/s",
            gbps(l.data_bytes, lock_s),
            gbps(l.data_bytes, unlock_s)
        );
        if verbose {
            outln!("  files in {}", dir.path().display());
        }
    }
    gguf_round_trip(dir.path(), &key)
}

/// The same model as a GGUF file, llama.cpp's format: locked in place (still GGUF),
/// then unlocked in memory, as an app hands a model to its runtime without writing
/// plaintext anywhere.
fn gguf_round_trip(dir: &std::path::Path, key: &MasterKey) -> CliResult<()> {
    use deeplock::format;
    let model = dir.join("cifar10_cnn.gguf");
    zoo::write_gguf(
        &model,
        &zoo::cifar10_cnn(42),
        &[("general.name", "cifar10_cnn")],
    )?;
    let original = std::fs::read(&model).map_err(|e| Error::io(&model, e))?;
    let locked = dir.join("cifar10_cnn.locked.gguf");
    let mut cpu = engine::select(DeviceChoice::Cpu)?;
    let l = files::lock(&model, &locked, key, cpu.as_mut(), &Options::default())?;
    let (_, container) = format::open_path(&locked)?;
    let still_gguf = container.tensors().len();
    let back = deeplock::memory::unlock_to_vec(&locked, key)?;
    if back != original {
        return Err(Error::Invalid(
            "demo failed on GGUF: the model unlocked in memory differs from the original; please report this bug".into(),
        )
        .into());
    }
    outln!(
        "gguf: the same model as GGUF, {} of {still_gguf} tensors locked in place (the locked file is still GGUF), verified and unlocked in memory, identical to the original",
        l.transformed
    );
    Ok(())
}

/// Median seconds to lock, then to unlock, the model's data in memory, cut in its 12
/// tensor sizes, through `engine` (one chunk, one span per tensor, as the file streamer
/// sends them).
fn in_memory_seconds(
    engine: &mut dyn Engine,
    key: &MasterKey,
    file: &[u8],
    data_len: usize,
) -> Result<(f64, f64)> {
    let salt = deeplock::Salt::generate()?;
    let mut data = file[file.len() - data_len..].to_vec();
    let mut time = |dir: Direction| -> Result<f64> {
        let mut runs = Vec::new();
        for _ in 0..5 {
            let mut spans = Vec::new();
            let mut at = 0;
            for (name, shape) in zoo::CIFAR10_CNN {
                let len = 4 * shape.iter().product::<usize>();
                spans.push(Span {
                    cipher: Some(Arc::new(TensorCipher::for_tensor(key, &salt, name))),
                    tensor_offset: 0,
                    range: at..at + len,
                });
                at += len;
            }
            let chunk = Chunk {
                dir,
                data: std::mem::take(&mut data),
                spans,
            };
            let start = Instant::now();
            let mut done = engine.submit(chunk)?;
            done.extend(engine.finish()?);
            runs.push(start.elapsed().as_secs_f64());
            data = done.pop().map(|c| c.data).unwrap_or_default();
        }
        runs.sort_by(f64::total_cmp);
        Ok(runs[runs.len() / 2])
    };
    let lock = time(Direction::Lock)?;
    let unlock = time(Direction::Unlock)?;
    Ok((lock, unlock))
}

/// How many f32 values agree between the data sections of two files (the original's
/// data starts at `orig_data_start`; a locked file's header is longer, so its data is
/// aligned from the end).
fn count_equal_f32(original: &[u8], locked: &[u8], orig_data_start: usize) -> usize {
    let a = &original[orig_data_start..];
    let b = &locked[locked.len() - a.len()..];
    a.chunks_exact(4)
        .zip(b.chunks_exact(4))
        .filter(|(x, y)| x == y)
        .count()
}
