//! Locking and unlocking whole model files and sharded checkpoint directories, streamed
//! in bounded chunks through an [`Engine`], with safe outputs (see [`crate::output`]).
//!
//! Locking changes only bytes of tensor data and adds `deeplock.*` metadata: tensor
//! names, dtypes, shapes and data offsets stay as they were, so a locked model is a
//! drop-in file. Unlocking removes that metadata and restores the data.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::engine::{Chunk, ChunkPacker, Engine};
use crate::error::{Error, Result};
use crate::header::{Header, TensorEntry};
use crate::key::MasterKey;
use crate::lock_info::{self, LockInfo};
use crate::output;
use crate::scheme::{Direction, Salt, TensorCipher};

/// Default bytes per chunk handed to an engine. Memory in use is a small multiple.
pub const DEFAULT_CHUNK: usize = 16 << 20;

/// How to lock or unlock.
pub struct Options<'a> {
    /// Lock only tensors whose names match one of these globs (all when empty).
    pub only: Vec<String>,
    /// Replace an existing output.
    pub force: bool,
    /// Bytes per chunk handed to the engine.
    pub chunk_size: usize,
    /// Called with the number of data bytes done since the last call.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            only: Vec::new(),
            force: false,
            chunk_size: DEFAULT_CHUNK,
            progress: None,
        }
    }
}

/// What a lock or unlock did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// safetensors files processed.
    pub files: usize,
    /// Other files copied unchanged (directory inputs).
    pub copied: usize,
    /// Tensors seen.
    pub tensors: usize,
    /// Tensors locked or unlocked.
    pub transformed: usize,
    /// Bytes of tensor data seen.
    pub data_bytes: u64,
    /// Bytes of tensor data locked or unlocked.
    pub transformed_bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Whether `path` looks like a safetensors file, by its extension.
pub fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(path, e))
}

/// Reads the header of the safetensors file at `path`.
pub fn read_header(path: &Path) -> Result<Header> {
    Header::read(&mut open(path)?, path)
}

fn globs(patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| {
            Error::Invalid(format!(
                "bad --only pattern {p:?}: {e}; use globs like 'encoder.*.weight'"
            ))
        })?);
    }
    b.build()
        .map(Some)
        .map_err(|e| Error::Invalid(format!("bad --only patterns: {e}")))
}

/// The safetensors files and other files under `dir`, relative to it, sorted.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        for entry in fs::read_dir(&here).map_err(|e| Error::io(&here, e))? {
            let entry = entry.map_err(|e| Error::io(&here, e))?;
            let ty = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
            let r = rel.join(entry.file_name());
            if ty.is_dir() {
                stack.push(r);
            } else {
                out.push(r);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The safetensors files of a model: the file itself, or every shard under a directory.
fn model_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    Ok(list_dir(path)?
        .into_iter()
        .filter(|r| is_safetensors(r))
        .map(|r| path.join(r))
        .collect())
}

/// One safetensors file's plan: its input header, output header and each tensor's
/// cipher (`None` to copy its bytes unchanged).
struct FilePlan {
    input: Header,
    output: Header,
    ciphers: Vec<Option<Arc<TensorCipher>>>,
}

fn plan_lock(path: &Path, key: &MasterKey, only: Option<&GlobSet>) -> Result<FilePlan> {
    let input = read_header(path)?;
    if LockInfo::from_header(&input, path)?.is_some() {
        return Err(Error::AlreadyLocked {
            path: path.to_path_buf(),
        });
    }
    let salt = Salt::generate()?;
    let mut locked = Vec::new();
    let ciphers = input
        .tensors
        .iter()
        .map(|t| {
            let chosen = only.is_none_or(|g| g.is_match(&t.name));
            chosen.then(|| {
                locked.push(t.name.clone());
                Arc::new(TensorCipher::for_tensor(key, &salt, &t.name))
            })
        })
        .collect();
    let mut output = input.clone();
    locked.sort();
    LockInfo {
        salt,
        kcv: key.kcv(),
        locked,
    }
    .write_to(&mut output);
    Ok(FilePlan {
        input,
        output,
        ciphers,
    })
}

fn plan_unlock(path: &Path, key: &MasterKey) -> Result<FilePlan> {
    let input = read_header(path)?;
    let info = LockInfo::from_header(&input, path)?.ok_or_else(|| Error::NotLocked {
        path: path.to_path_buf(),
    })?;
    if !info.key_matches(key) {
        return Err(Error::WrongKey {
            path: path.to_path_buf(),
        });
    }
    let ciphers = input
        .tensors
        .iter()
        .map(|t| {
            info.is_locked(&t.name)
                .then(|| Arc::new(TensorCipher::for_tensor(key, &info.salt, &t.name)))
        })
        .collect();
    let mut output = input.clone();
    LockInfo::remove_from(&mut output);
    Ok(FilePlan {
        input,
        output,
        ciphers,
    })
}

/// Streams the data section of `plan`'s input through `engine` into `out`.
fn stream(
    path: &Path,
    plan: &FilePlan,
    dir: Direction,
    engine: &mut dyn Engine,
    opts: &Options,
    out: &mut File,
) -> Result<()> {
    let mut input = open(path)?;
    // Re-read the header from this handle: it also positions it at the data section,
    // and catches a file changed since planning.
    let again = Header::read(&mut input, path)?;
    if again.tensors != plan.input.tensors {
        return Err(Error::format(
            path,
            "the file changed while being read; try again",
        ));
    }
    let mut w = BufWriter::with_capacity(1 << 20, out);
    w.write_all(&plan.output.to_bytes())
        .map_err(|e| Error::io(path, e))?;
    let mut sink = |c: &Chunk| -> Result<()> {
        w.write_all(&c.data).map_err(|e| Error::io(path, e))?;
        if let Some(p) = opts.progress {
            p(c.data.len() as u64);
        }
        Ok(())
    };
    let mut packer = ChunkPacker::new(dir, opts.chunk_size);
    for (t, cipher) in plan.input.tensors.iter().zip(&plan.ciphers) {
        let fill = |buf: &mut [u8]| {
            input.read_exact(buf).map_err(|e| {
                Error::format(path, format!("read failed inside tensor {:?}: {e}", t.name))
            })
        };
        packer.add_tensor(engine, cipher.as_ref(), t.len(), fill, &mut sink)?;
    }
    packer.finish(engine, &mut sink)?;
    w.flush().map_err(|e| Error::io(path, e))?;
    Ok(())
}

fn run(
    input: &Path,
    output: &Path,
    dir: Direction,
    engine: &mut dyn Engine,
    opts: &Options,
    mut plan: impl FnMut(&Path) -> Result<FilePlan>,
) -> Result<Report> {
    let started = Instant::now();
    output::check(input, output, opts.force)?;
    // A locked model is made to be shipped: as readable as its input. Unlocked weights
    // are the plaintext the lock protected: owner-only.
    let access = match dir {
        Direction::Lock => output::Access::Like(input.to_path_buf()),
        Direction::Unlock => output::Access::Private,
    };
    let mut report = Report::default();
    let mut do_file = |src: &Path, dst_file: &mut File, plan: FilePlan, report: &mut Report| {
        stream(src, &plan, dir, engine, opts, dst_file)?;
        report.files += 1;
        report.tensors += plan.input.tensors.len();
        report.data_bytes += plan.input.data_len();
        for (t, c) in plan.input.tensors.iter().zip(&plan.ciphers) {
            if c.is_some() {
                report.transformed += 1;
                report.transformed_bytes += t.len();
            }
        }
        Ok::<_, Error>(())
    };
    if input.is_dir() {
        let files = list_dir(input)?;
        // Plan every shard before writing anything, so a bad shard fails fast.
        let mut plans = Vec::new();
        for rel in files.iter().filter(|r| is_safetensors(r)) {
            plans.push((rel.clone(), plan(&input.join(rel))?));
        }
        if plans.is_empty() {
            return Err(Error::Invalid(format!(
                "{} holds no .safetensors file; pass a model file or a checkpoint directory",
                input.display()
            )));
        }
        output::write_dir(output, opts.force, &access, |tmp| {
            let mut plans = plans.into_iter();
            for rel in &files {
                let (src, dst) = (input.join(rel), tmp.join(rel));
                if let Some(parent) = dst.parent() {
                    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                }
                if is_safetensors(rel) {
                    let (_, p) = plans.next().expect("one plan per shard");
                    let mut f = File::create(&dst).map_err(|e| Error::io(&dst, e))?;
                    do_file(&src, &mut f, p, &mut report)?;
                } else {
                    fs::copy(&src, &dst).map_err(|e| Error::io(&src, e))?;
                    report.copied += 1;
                }
            }
            Ok(())
        })?;
    } else {
        let p = plan(input)?;
        output::write_file(output, opts.force, &access, |f| {
            do_file(input, f, p, &mut report)
        })?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn check_only_matches(input: &Path, only: Option<&GlobSet>) -> Result<()> {
    let Some(g) = only else { return Ok(()) };
    let paths = model_files(input)?;
    for p in paths {
        if read_header(&p)?.tensors.iter().any(|t| g.is_match(&t.name)) {
            return Ok(());
        }
    }
    Err(Error::Invalid(format!(
        "--only matched no tensor of {}; list the names with `deeplock inspect {}`",
        input.display(),
        input.display()
    )))
}

/// Locks the model at `input` (a safetensors file or a checkpoint directory) into
/// `output` under `key`, with a fresh salt per file.
pub fn lock(
    input: &Path,
    output: &Path,
    key: &MasterKey,
    engine: &mut dyn Engine,
    opts: &Options,
) -> Result<Report> {
    let only = globs(&opts.only)?;
    check_only_matches(input, only.as_ref())?;
    run(input, output, Direction::Lock, engine, opts, |p| {
        plan_lock(p, key, only.as_ref())
    })
}

/// Unlocks the locked model at `input` into `output`; refuses a wrong key by its check
/// value before writing anything.
pub fn unlock(
    input: &Path,
    output: &Path,
    key: &MasterKey,
    engine: &mut dyn Engine,
    opts: &Options,
) -> Result<Report> {
    if !opts.only.is_empty() {
        return Err(Error::Invalid(
            "--only applies to lock; unlock restores every tensor the file lists as locked".into(),
        ));
    }
    run(input, output, Direction::Unlock, engine, opts, |p| {
        plan_unlock(p, key)
    })
}

/// What `deeplock inspect` shows of one safetensors file.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The file.
    pub path: PathBuf,
    /// The lock record, if locked.
    pub lock: Option<LockInfo>,
    /// Metadata other than deeplock's.
    pub user_metadata: Vec<(String, String)>,
    /// The tensors, by data offset.
    pub tensors: Vec<TensorEntry>,
}

impl Inspection {
    /// Whether tensor `name` is locked.
    pub fn is_locked(&self, name: &str) -> bool {
        self.lock.as_ref().is_some_and(|l| l.is_locked(name))
    }
}

/// Inspects a safetensors file, or every shard of a checkpoint directory.
pub fn inspect(path: &Path) -> Result<Vec<Inspection>> {
    let files = model_files(path)?;
    files
        .into_iter()
        .map(|p| {
            let h = read_header(&p)?;
            let lock = LockInfo::from_header(&h, &p)?;
            Ok(Inspection {
                user_metadata: h
                    .metadata()
                    .into_iter()
                    .filter(|(k, _)| !lock_info::is_owned_key(k))
                    .collect(),
                tensors: h.tensors,
                lock,
                path: p,
            })
        })
        .collect()
}

/// Checks `key` against the key check value of every locked file at `path`.
pub fn verify(path: &Path, key: &MasterKey) -> Result<()> {
    let files = inspect(path)?;
    for f in &files {
        let info = f.lock.as_ref().ok_or_else(|| Error::NotLocked {
            path: f.path.clone(),
        })?;
        if !info.key_matches(key) {
            return Err(Error::WrongKey {
                path: f.path.clone(),
            });
        }
    }
    Ok(())
}
