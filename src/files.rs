//! Locking and unlocking whole model files and sharded checkpoint directories, streamed
//! in bounded chunks through an [`Engine`], with safe outputs (see [`crate::output`]).
//!
//! Locking changes only bytes of tensor data and adds `deeplock.*` metadata: tensor
//! names, dtypes, shapes and data offsets stay as they were, so a locked model is a
//! drop-in file. Unlocking removes that metadata and restores the data.

mod direct;
mod pipeline;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use globset::GlobSet;

use crate::authenticate::{Checker, Sealer};
use crate::checkpoint::{self, directory};
use crate::dtype::Dtype;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::format::{self, Container, Joined, Layout, Part, Piece};
use crate::header::{Header, TensorEntry};
use crate::key::MasterKey;
use crate::lock_info::LockInfo;
use crate::output;
use crate::scheme::{Direction, Salt, TensorCipher};

pub use crate::checkpoint::{Entry, Kind, Listing, Skip};
pub use pipeline::DEFAULT_MAX_IN_FLIGHT;
#[doc(hidden)]
pub use pipeline::{Fault, Io};

/// Default bytes per chunk handed to an engine. Memory in use is a small multiple.
pub const DEFAULT_CHUNK: usize = 16 << 20;

/// How to lock or unlock.
pub struct Options<'a> {
    /// Lock only tensors whose names match one of these globs (all when empty).
    pub only: Vec<String>,
    /// Replace an existing output.
    pub force: bool,
    /// Bytes per chunk handed to the engine (at least v2's 1 MiB tag chunk is used).
    pub chunk_size: usize,
    /// At most this many bytes of file data in memory at once, all the files of a
    /// directory together (at least one chunk): the read-ahead, the chunks being
    /// transformed and the write-behind.
    pub max_in_flight: u64,
    /// Threads that read, transform and write at once on the CPU; 0 for one per core
    /// (rayon's thread count).
    pub threads: usize,
    /// Called with the number of data bytes done since the last call.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// The file the key was read from, if any: never replaced by an output, never
    /// copied into a directory output.
    pub key_file: Option<PathBuf>,
    /// Files of a directory input to leave out of the output: globs over paths
    /// relative to the directory (`onnx/*`, `*.bin`).
    pub exclude: Vec<String>,
    /// Weight files of a directory input in a format deeplock cannot lock (PyTorch
    /// `.bin`, ONNX, ...) that lock may copy as they are, in the clear: globs like
    /// `exclude`. Without a match, lock refuses such a directory.
    pub allow_plaintext: Vec<String>,
    /// Test seam: fails chosen reads and writes of the streamer (see [`Fault`]).
    #[doc(hidden)]
    pub fault: Option<Fault<'a>>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            only: Vec::new(),
            force: false,
            chunk_size: DEFAULT_CHUNK,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            threads: 0,
            progress: None,
            key_file: None,
            exclude: Vec::new(),
            allow_plaintext: Vec::new(),
            fault: None,
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
    /// BOOL tensors left in the clear (locked bytes would not be valid booleans).
    pub clear_bool: usize,
    /// Tensors whose bytes cannot be locked in place, left in the clear: each file, the
    /// tensor and why ([`Container::left_clear`]).
    pub left_clear: Vec<(PathBuf, String, String)>,
    /// Files and directories of a directory input left out of the output, and why.
    pub skipped: Vec<(PathBuf, Skip)>,
    /// Weight files of a directory input copied in the clear, as allowed.
    pub plaintext: Vec<PathBuf>,
    /// Files unlocked that carried no authentication (scheme v1): their tensors could
    /// have been changed without notice.
    pub unauthenticated: Vec<PathBuf>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Whether `path` is named as a safetensors file (its extension, in any case).
pub fn is_safetensors(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

use format::open_regular as open;

/// Reads the header of the safetensors file at `path`.
pub fn read_header(path: &Path) -> Result<Header> {
    Header::read(&mut open(path)?, path)
}

/// One model file's plan: its input, the output's layout, the lock record the output
/// must carry (`None` for an unlocked output), each tensor's cipher (`None` to copy its
/// bytes unchanged), and what authenticates it.
struct FilePlan {
    input: Box<dyn Container>,
    layout: Layout,
    lock: Option<LockInfo>,
    ciphers: Vec<Option<Arc<TensorCipher>>>,
    clear_bool: usize,
    auth: Auth,
}

/// How a file's v2 tags take part in its stream.
enum Auth {
    /// Lock (or upgrade): the output's tensors are tagged as written, and its record
    /// completed before it is renamed into place.
    Seal(Sealer),
    /// Unlock of a v2 file, whose header was checked: each tensor's bytes are checked as
    /// read, and a mismatch fails the file before its output is renamed into place.
    Check(Checker),
    /// Unlock of a v1 file, which carries no tags.
    Unauthenticated,
}

/// The dtype lock leaves in the clear: PyTorch and NumPy read any byte but 0 and 1 of
/// a boolean as undefined, so locked booleans would not load as booleans at all.
const CLEAR_DTYPE: Dtype = Dtype::BOOL;

fn plan_lock(path: &Path, key: &MasterKey, only: Option<&GlobSet>) -> Result<FilePlan> {
    let input = directory::open_container(path)?;
    if input.lock_record()?.is_some() {
        return Err(Error::AlreadyLocked {
            path: path.to_path_buf(),
        });
    }
    let salt = Salt::generate()?;
    let mut locked = Vec::new();
    let mut clear_bool = 0;
    let first = TensorCipher::for_tensor(key, &salt, "");
    let ciphers = input
        .tensors()
        .iter()
        .map(|t| {
            let chosen = only.is_none_or(|g| g.is_match(&t.name));
            if chosen && t.dtype == CLEAR_DTYPE {
                clear_bool += 1;
                return None;
            }
            chosen.then(|| {
                locked.push(t.name.clone());
                Arc::new(first.with_nonce(&salt, &t.name))
            })
        })
        .collect();
    let (lock, sealer) = Sealer::new(key, salt, locked, input.tensors())?;
    let layout = input.layout(Some(&lock))?;
    Ok(FilePlan {
        input,
        layout,
        lock: Some(lock),
        ciphers,
        clear_bool,
        auth: Auth::Seal(sealer),
    })
}

/// The plan of `upgrade`: the v1 file at `path`, locked under `key`, written as v2 with
/// the same salt and locked bytes (every tensor passed through), tagged as it is.
fn plan_upgrade(path: &Path, key: &MasterKey) -> Result<FilePlan> {
    let input = directory::open_container(path)?;
    let info = input.lock_record()?.ok_or_else(|| Error::NotLocked {
        path: path.to_path_buf(),
    })?;
    if info.is_authenticated() {
        return Err(Error::Invalid(format!(
            "{} is already authenticated (scheme v2); nothing to upgrade",
            path.display()
        )));
    }
    info.check_key(key, path)?;
    let (lock, sealer) = Sealer::new(key, info.salt, info.locked, input.tensors())?;
    let layout = input.layout(Some(&lock))?;
    Ok(FilePlan {
        ciphers: vec![None; input.tensors().len()],
        input,
        layout,
        lock: Some(lock),
        clear_bool: 0,
        auth: Auth::Seal(sealer),
    })
}

fn plan_unlock(path: &Path, key: &MasterKey) -> Result<FilePlan> {
    let input = directory::open_container(path)?;
    let info = input.lock_record()?.ok_or_else(|| Error::NotLocked {
        path: path.to_path_buf(),
    })?;
    let auth = match info.is_authenticated() {
        true => Auth::Check(Checker::new(&*input, &info, key, path)?),
        false => {
            info.check_key(key, path)?;
            Auth::Unauthenticated
        }
    };
    let ciphers = info
        .ciphers(key, input.tensors().iter().map(|t| t.name.as_str()))
        .into_iter()
        .map(|c| c.map(Arc::new))
        .collect();
    let layout = input.layout(None)?;
    Ok(FilePlan {
        input,
        layout,
        lock: None,
        ciphers,
        clear_bool: 0,
        auth,
    })
}

/// A model file being written: its plan, its input (opened and parsed again, to catch a
/// file changed since planning) and the temporaries its output is written into.
struct Shard<'o> {
    src: PathBuf,
    /// The output as the user named it, for messages.
    dst: PathBuf,
    input: format::ModelFiles,
    out: &'o mut File,
    /// The output's data files ([`Container::data_files`]), each as the user will see
    /// it and its temporary, in the input's order.
    data_out: Vec<(PathBuf, &'o File)>,
    plan: FilePlan,
}

impl<'o> Shard<'o> {
    fn open(
        src: &Path,
        dst: &Path,
        out: &'o mut File,
        data_out: Vec<(PathBuf, &'o File)>,
        plan: FilePlan,
    ) -> Result<Self> {
        let (input, container) = format::open_path(src)?;
        if container.tensors() != plan.input.tensors() {
            return Err(Error::format(
                src,
                "the file changed while being read; try again",
            ));
        }
        Ok(Shard {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            input,
            out,
            data_out,
            plan,
        })
    }

    /// The output's files as one run, cut as the input's are: the model file, then its
    /// data files, each as long as the input's.
    fn out_run(&self) -> Joined<'_> {
        if self.data_out.is_empty() {
            return Joined::one(self.out, &self.dst);
        }
        let lens = self.input.lens();
        let data: u64 = lens[1..].iter().sum();
        let main = self.plan.layout.len(&*self.plan.input) - data;
        let mut parts = vec![Part {
            file: self.out,
            path: &self.dst,
            len: main,
        }];
        for ((path, file), &len) in self.data_out.iter().zip(&lens[1..]) {
            parts.push(Part { file, path, len });
        }
        Joined::new(parts)
    }

    fn stream(&self) -> pipeline::Stream<'_> {
        let plan = &self.plan;
        pipeline::Stream {
            path: &self.src,
            input: self.input.joined(),
            dst: &self.dst,
            out: Some(self.out_run()),
            container: &*plan.input,
            layout: &plan.layout,
            ciphers: &plan.ciphers,
            tagging: match &plan.auth {
                Auth::Seal(s) => pipeline::Tagging::Written(s),
                Auth::Check(c) => pipeline::Tagging::Read(c),
                Auth::Unauthenticated => pipeline::Tagging::None,
            },
        }
    }

    /// Completes the written file from its chunk tags: a lock's record and header tag
    /// patched in, an unlock's every tensor checked; then reads it back (see
    /// [`check_written`]).
    fn finish(&mut self, tags: Vec<pipeline::ChunkTag>, key: &MasterKey) -> Result<()> {
        let plan = &mut self.plan;
        match std::mem::replace(&mut plan.auth, Auth::Unauthenticated) {
            Auth::Seal(mut sealer) => {
                for (i, chunk, tag) in tags {
                    sealer.insert(i, chunk, tag)?;
                }
                let lock = plan.lock.as_mut().expect("a sealed output is locked");
                sealer.finish(lock, plan.input.tensors(), &plan.layout.metadata)?;
                let done = plan.input.layout(Some(lock))?;
                let plan = &self.plan;
                patch_bytes(
                    &self.out_run(),
                    &self.dst,
                    &plan.layout,
                    &done,
                    &*plan.input,
                )?;
            }
            Auth::Check(checker) => check_tags(&checker, plan.input.tensors().len(), tags)?,
            Auth::Unauthenticated => {}
        }
        // The data files are still temporaries: the model file is read back with the
        // lengths they were written with (those of the input's).
        let lens = self.input.lens();
        let data = self.plan.input.data_files().iter().zip(&lens[1..]);
        let lens = data.map(|(d, &n)| (d.name.clone(), n)).collect();
        check_written(self.out, &self.dst, &self.plan, key, &lens)
    }
}

/// Checks every one of the `count` tensors of a file against `checker` from its chunk
/// tags, taken over its bytes as read in any order.
fn check_tags(checker: &Checker, count: usize, tags: Vec<pipeline::ChunkTag>) -> Result<()> {
    let mut taggers: Vec<_> = (0..count).map(|i| checker.tagger(i)).collect();
    for (i, chunk, tag) in tags {
        taggers[i].insert(chunk, tag)?;
    }
    for (i, t) in taggers.into_iter().enumerate() {
        checker.finish(i, t)?;
    }
    Ok(())
}

/// Streams `shards` and `copies` at once through `engine` (see [`pipeline`]), then
/// completes each shard; each output still has to be synced.
fn stream_all(
    shards: &mut [Shard],
    copies: &[pipeline::Copy],
    dir: Direction,
    key: &MasterKey,
    engine: &mut dyn Engine,
    opts: &Options,
) -> Result<()> {
    let tags = {
        let streams: Vec<_> = shards.iter().map(Shard::stream).collect();
        pipeline::run(&streams, copies, engine, opts, dir)?
    };
    for (shard, tags) in shards.iter_mut().zip(tags) {
        shard.finish(tags, key)?;
    }
    Ok(())
}

/// Writes the new bytes of `done`, the final layout, over those of `written`, the layout
/// the file was streamed with: the same pieces, whose new bytes differ only in the tags
/// (fixed-length hex) that were zero while the tensors streamed.
fn patch_bytes(
    out: &Joined,
    dst: &Path,
    written: &Layout,
    done: &Layout,
    container: &dyn Container,
) -> Result<()> {
    let mut at = 0u64;
    for (w, d) in written.pieces.iter().zip(&done.pieces) {
        if let (Piece::Bytes(old), Piece::Bytes(new)) = (w, d) {
            if old.len() != new.len() {
                return Err(Error::Invalid(format!(
                    "the tags of {} changed the length of its header; nothing was written; please report this as a bug",
                    dst.display()
                )));
            }
            if old != new {
                pipeline::write_joined(out, dst, at, new, &Default::default(), None)?;
            }
        }
        at += w.len(container);
    }
    Ok(())
}

/// Reads back the file just written for `dst` and checks it against the plan: the same
/// tensors, the planned lock record, and for a v2 output its key check value and
/// header tag under `key` (its tensor tags were computed from the bytes as written).
/// Only the header is read back, and that is enough: it is what a bug in the layout or
/// the patching of the record would get wrong (it caught one), and parsing it checks the
/// file's length against its tensors' offsets; the data were tagged from the very
/// buffers that were written, so re-reading them would only cost a second pass.
fn check_written(
    out: &mut File,
    dst: &Path,
    plan: &FilePlan,
    key: &MasterKey,
    data_lens: &std::collections::BTreeMap<String, u64>,
) -> Result<()> {
    let written = format::open_with_data(out, dst, data_lens)?;
    let lock = written.lock_record()?;
    let same_tensors = written.tensors() == plan.input.tensors();
    let header_ok = match &lock {
        Some(l) if l.is_authenticated() => Checker::new(&*written, l, key, dst).is_ok(),
        _ => true,
    };
    if !same_tensors || lock != plan.lock || !header_ok {
        return Err(Error::Invalid(format!(
            "the file written for {} does not read back as planned ({}); nothing was written; please report this as a bug",
            dst.display(),
            match (&lock, &plan.lock) {
                (None, Some(_)) => "it does not read as locked",
                (Some(_), None) => "it still reads as locked",
                _ if !same_tensors => "its tensors differ",
                _ if !header_ok => "its header tag does not check",
                _ => "its lock record differs",
            }
        )));
    }
    Ok(())
}

/// Files of a directory written at once (their shards streamed together): bounds the
/// descriptors held open, two a file.
const FILES_AT_ONCE: usize = 64;

fn run(
    input: &Path,
    output: &Path,
    dir: Direction,
    key: &MasterKey,
    engine: &mut dyn Engine,
    opts: &Options,
    mut plan: impl FnMut(&Path) -> Result<FilePlan>,
) -> Result<Report> {
    let started = Instant::now();
    let protected: Vec<PathBuf> = opts.key_file.iter().cloned().collect();
    let meta = fs::metadata(input).map_err(|e| Error::io(input, e))?;
    if !meta.is_dir() && !meta.is_file() {
        return Err(output::not_regular(input, &meta, None));
    }
    output::check(input, output, opts.force, &protected)?;
    // A locked model is made to be shipped: as readable as its input. Unlocked weights
    // are the plaintext the lock protected: owner-only, and so is everything beside
    // them in an unlocked directory.
    let like = |src: &Path| match dir {
        Direction::Lock => output::Access::Like(src.to_path_buf()),
        Direction::Unlock => output::Access::Private,
    };
    let mut report = Report::default();
    let count = |src: &Path, plan: &FilePlan, report: &mut Report| {
        if let Auth::Unauthenticated = plan.auth {
            report.unauthenticated.push(src.to_path_buf());
        }
        report.files += 1;
        report.tensors += plan.input.tensors().len();
        report.clear_bool += plan.clear_bool;
        for (name, why) in plan.input.left_clear() {
            report.left_clear.push((src.to_path_buf(), name, why));
        }
        for (t, c) in plan.input.tensors().iter().zip(&plan.ciphers) {
            report.data_bytes += t.len();
            if c.is_some() {
                report.transformed += 1;
                report.transformed_bytes += t.len();
            }
        }
    };
    if !meta.is_dir() {
        let p = plan(input)?;
        output::check_space(output, p.layout.len(&*p.input))?;
        // A model of several files (TF.js) is written with its data files beside the
        // output, under the same names, all renamed into place together.
        let mut paths = vec![output.to_path_buf()];
        let out_dir = output.parent().unwrap_or(Path::new(""));
        for d in p.input.data_files() {
            let to = out_dir.join(&d.name);
            output::check(&d.path, &to, opts.force, &protected)?;
            paths.push(to);
        }
        // Subdirectories the data files need below the output's directory, made for
        // them and removed again if the lock or unlock fails.
        let made = output::make_parents(out_dir, &paths[1..])?;
        let written = output::write_files(&paths, opts.force, &like(input), |files| {
            count(input, &p, &mut report);
            let (out, data) = files.split_first_mut().expect("the model file is first");
            let data_out = paths[1..].iter().cloned().zip(data.iter()).collect();
            let mut shards = [Shard::open(input, output, out, data_out, p)?];
            stream_all(&mut shards, &[], dir, key, engine, opts)
        });
        if written.is_err() {
            output::remove_made(&made);
        }
        written?;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let listing = match dir {
        Direction::Lock => lock_listing(input, opts)?,
        Direction::Unlock => {
            let exclude = directory::globs(&opts.exclude, "exclude")?;
            let listing = directory::list(input, &protected, exclude.as_ref())?;
            directory::check(input, &listing.files, key)?;
            listing
        }
    };
    // Plan every shard before writing anything, so a bad shard fails fast.
    let mut plans = Vec::new();
    let mut need = 0;
    for e in &listing.files {
        let src = input.join(&e.rel);
        if matches!(e.kind, Kind::Model(_)) {
            let p = plan(&src)?;
            need += p.layout.len(&*p.input);
            plans.push(p);
        } else {
            need += fs::metadata(&src)
                .map_err(|err| Error::io(&src, err))?
                .len();
        }
    }
    if plans.is_empty() {
        return Err(directory::no_model(input));
    }
    output::check_space(output, need)?;
    output::write_dir(output, opts.force, &like(input), |tmp| {
        let mut plans = plans.into_iter();
        for rel in &listing.dirs {
            output::create_private_dirs(&tmp.join(rel))?;
        }
        for group in listing.files.chunks(FILES_AT_ONCE) {
            let mut outs = group
                .iter()
                .map(|e| output::create_private_file(&tmp.join(&e.rel)))
                .collect::<Result<Vec<File>>>()?;
            let shown: Vec<PathBuf> = group.iter().map(|e| output.join(&e.rel)).collect();
            let srcs: Vec<PathBuf> = group.iter().map(|e| input.join(&e.rel)).collect();
            let group_plans: Vec<Option<FilePlan>> = group
                .iter()
                .map(|e| {
                    matches!(e.kind, Kind::Model(_))
                        .then(|| plans.next().expect("one plan per shard"))
                })
                .collect();
            // The data files of the group's models (a TF.js model's weight files), each
            // as shown and its file, written beside the model file.
            let data_outs = group
                .iter()
                .zip(&group_plans)
                .map(|(e, p)| {
                    let dir_rel = e.rel.parent().unwrap_or(Path::new(""));
                    let data = p.iter().flat_map(|p| p.input.data_files());
                    data.map(|d| {
                        let rel = dir_rel.join(&d.name);
                        let f = output::create_private_file(&tmp.join(&rel))?;
                        Ok((output.join(&rel), tmp.join(&rel), f))
                    })
                    .collect::<Result<Vec<_>>>()
                })
                .collect::<Result<Vec<_>>>()?;
            // The other files: opened with their lengths, copied beside the shards.
            {
                let mut others = Vec::new();
                let mut shards = Vec::new();
                let each = group.iter().zip(&mut outs).zip(&srcs).zip(&shown);
                for ((((e, out), src), dst), (p, data)) in
                    each.zip(group_plans.into_iter().zip(&data_outs))
                {
                    if let Some(p) = p {
                        count(src, &p, &mut report);
                        let data = data.iter().map(|(d, _, f)| (d.clone(), f)).collect();
                        shards.push(Shard::open(src, dst, out, data, p)?);
                    } else {
                        let from = open(src)?;
                        let len = from.metadata().map_err(|err| Error::io(src, err))?.len();
                        others.push((src, from, dst, &*out, len));
                        report.copied += 1;
                        if let Kind::Weights(_) = e.kind {
                            report.plaintext.push(e.rel.clone());
                        }
                    }
                }
                let copies: Vec<pipeline::Copy> = others
                    .iter()
                    .map(|(path, from, dst, to, len)| pipeline::Copy {
                        path,
                        from,
                        dst,
                        to,
                        len: *len,
                    })
                    .collect();
                stream_all(&mut shards, &copies, dir, key, engine, opts)?;
            }
            for ((e, f), (src, dst)) in group.iter().zip(&outs).zip(srcs.iter().zip(&shown)) {
                f.sync_all().map_err(|err| Error::io(dst, err))?;
                like(src).apply(&tmp.join(&e.rel))?;
            }
            for ((shown, at, f), src) in data_outs
                .iter()
                .zip(&srcs)
                .flat_map(|(d, src)| d.iter().map(move |x| (x, src)))
            {
                f.sync_all().map_err(|err| Error::io(shown, err))?;
                like(src).apply(at)?;
            }
        }
        if dir == Direction::Lock {
            // The shards as written, joined by the checkpoint record.
            let record =
                checkpoint::seal(output, &directory::gather(tmp, &listing.files, key)?, key)?;
            let path = tmp.join(checkpoint::RECORD_NAME);
            let mut f = output::create_private_file(&path)?;
            f.write_all(&record)
                .and_then(|()| f.sync_all())
                .map_err(|err| Error::io(output.join(checkpoint::RECORD_NAME), err))?;
            like(input).apply(&path)?;
        }
        // Parents last: a directory made read-only would refuse its own entries.
        for rel in listing.dirs.iter().rev() {
            like(&input.join(rel)).apply(&tmp.join(rel))?;
        }
        Ok(())
    })?;
    report.skipped = listing.skipped;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The model files of the checkpoint directory `dir`, its record checked under `key`
/// first (shards missing, added, renamed or swapped are refused; each shard's own tags
/// are left to whoever reads it), and whether there was a record to check (none
/// without v2 shards): what a loader of a sharded checkpoint starts from.
pub fn checked_shards(dir: &Path, key: &MasterKey) -> Result<(Vec<PathBuf>, bool)> {
    let listing = directory::list(dir, &[], None)?;
    let checked = directory::check(dir, &listing.files, key)?;
    Ok((directory::shards(dir, &listing)?, checked))
}

/// Joins the shards of the checkpoint directory `dir`, each locked with v2 under `key`
/// (apart, on any machine), by writing its record from their headers alone: checks each
/// shard's key and header tag and that every index file agrees with the shards. Replaces
/// an existing record only with `force`. Returns the number of shards joined.
pub fn join(dir: &Path, key: &MasterKey, opts: &Options) -> Result<usize> {
    let protected: Vec<PathBuf> = opts.key_file.iter().cloned().collect();
    if !fs::metadata(dir).map_err(|e| Error::io(dir, e))?.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a directory; join joins the shards of a checkpoint directory",
            dir.display()
        )));
    }
    let exclude = directory::globs(&opts.exclude, "exclude")?;
    let listing = directory::list(dir, &protected, exclude.as_ref())?;
    let contents = directory::gather(dir, &listing.files, key)?;
    let record = checkpoint::seal(dir, &contents, key)?;
    let path = dir.join(checkpoint::RECORD_NAME);
    output::write_file(
        &path,
        opts.force,
        &output::Access::Like(dir.to_path_buf()),
        |f| f.write_all(&record).map_err(|e| Error::io(&path, e)),
    )?;
    Ok(contents.shards.len())
}

/// The files of the checkpoint directory `input` that [`lock`] writes into its output,
/// for locking them apart (each shard with [`lock`] as a file, on whatever machine holds
/// it, every other file copied as it is) and joining the result with [`join`]: listed as
/// lock lists them (`.git`, key files, `opts.key_file`, the checkpoint record and
/// `opts.exclude` left out) and refused as lock refuses them (weights deeplock cannot
/// lock, unless `opts.allow_plaintext` allows them; a directory without a shard).
pub fn lock_listing(input: &Path, opts: &Options) -> Result<Listing> {
    let protected: Vec<PathBuf> = opts.key_file.iter().cloned().collect();
    directory::lock_listing(input, &protected, &opts.exclude, &opts.allow_plaintext)
}

fn check_only_matches(input: &Path, only: Option<&GlobSet>, opts_only: &[String]) -> Result<()> {
    let Some(g) = only else { return Ok(()) };
    let paths = directory::model_files(input)?;
    for p in paths {
        if directory::open_container(&p)?
            .tensors()
            .iter()
            .any(|t| g.is_match(&t.name))
        {
            return Ok(());
        }
    }
    Err(Error::Invalid(format!(
        "the tensor selection {:?} matched no tensor of {}; list the tensor names with `deeplock inspect {}`",
        opts_only, input.display(), input.display()
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
    let only = directory::globs(&opts.only, "tensor selection")?;
    check_only_matches(input, only.as_ref(), &opts.only)?;
    run(input, output, Direction::Lock, key, engine, opts, |p| {
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
            "a tensor selection applies to lock only; unlock restores every tensor the file lists as locked".into(),
        ));
    }
    run(input, output, Direction::Unlock, key, engine, opts, |p| {
        plan_unlock(p, key)
    })
}

/// Re-authenticates the v1-locked model at `input` as v2 into `output`: the same salt
/// and locked bytes, with v2's tags over them. v1 carries no tags, so what is tagged is
/// whatever the file holds now: upgrade only files that were not exposed to tampering.
pub fn upgrade(input: &Path, output: &Path, key: &MasterKey, opts: &Options) -> Result<Report> {
    if !opts.only.is_empty() {
        return Err(Error::Invalid(
            "a tensor selection applies to lock only; upgrade keeps the file's locked tensors"
                .into(),
        ));
    }
    // Every tensor passes through: no engine does any work.
    let mut engine = crate::engine::CpuEngine::new(crate::CpuLocker::new());
    run(
        input,
        output,
        Direction::Lock,
        key,
        &mut engine,
        opts,
        |p| plan_upgrade(p, key),
    )
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
    /// How the format stores each of `tensors`, where its entry describes only its
    /// bytes (a GGUF block type).
    pub stored: Vec<Option<format::StoredType>>,
    /// Tensors left in the clear as their bytes cannot be locked in place, and why.
    pub left_clear: Vec<(String, String)>,
}

impl Inspection {
    /// Whether tensor `name` is locked.
    pub fn is_locked(&self, name: &str) -> bool {
        self.lock.as_ref().is_some_and(|l| l.is_locked(name))
    }
}

/// Inspects a model file, or every shard of a checkpoint directory.
pub fn inspect(path: &Path) -> Result<Vec<Inspection>> {
    directory::model_files(path)?
        .into_iter()
        .map(|p| {
            let c = directory::open_container(&p)?;
            Ok(Inspection {
                lock: c.lock_record()?,
                user_metadata: c.user_metadata(),
                tensors: c.tensors().to_vec(),
                stored: (0..c.tensors().len())
                    .map(|i| c.stored_type(i).cloned())
                    .collect(),
                left_clear: c.left_clear(),
                path: p,
            })
        })
        .collect()
}

/// What [`verify`] checked.
#[derive(Clone, Debug, Default)]
pub struct Verification {
    /// Locked files checked.
    pub files: usize,
    /// Tensors whose tags were checked (v2 files).
    pub tensors: usize,
    /// Bytes of tensor data whose tags were checked.
    pub bytes: u64,
    /// Files locked with scheme v1, which carries no tags: only their key check value
    /// was checked.
    pub unauthenticated: Vec<PathBuf>,
    /// Whether a checkpoint record was checked (a directory of v2 shards).
    pub checkpoint: bool,
}

/// Checks every locked file at `path` (a file, or the shards of a directory) under
/// `key` without writing anything: its key check value, and for a v2 file its header
/// tag, then every tensor's tag over its bytes as stored (chunks on all cores). A
/// directory's checkpoint record is checked first.
pub fn verify(path: &Path, key: &MasterKey) -> Result<Verification> {
    let mut done = Verification::default();
    let files = if path.is_dir() {
        let (files, checked) = checked_shards(path, key)?;
        done.checkpoint = checked;
        files
    } else {
        vec![path.to_path_buf()]
    };
    for group in files.chunks(FILES_AT_ONCE) {
        verify_files(group, key, &mut done)?;
    }
    Ok(done)
}

/// A v2 file opened to be verified: its tensors, in file order, as the layout to read.
struct ToVerify {
    path: PathBuf,
    file: format::ModelFiles,
    container: Box<dyn Container>,
    checker: Checker,
    layout: Layout,
    ciphers: Vec<Option<Arc<TensorCipher>>>,
}

/// Verifies the locked files `paths` (see [`verify`]): their key check values and header
/// tags first, then every tensor of all of them read and tagged at once, on all cores.
fn verify_files(paths: &[PathBuf], key: &MasterKey, done: &mut Verification) -> Result<()> {
    let mut opened = Vec::new();
    for path in paths {
        let (file, container) = format::open_path(path)?;
        let info = container.lock_record()?.ok_or_else(|| Error::NotLocked {
            path: path.to_path_buf(),
        })?;
        done.files += 1;
        if !info.is_authenticated() {
            info.check_key(key, path)?;
            done.unauthenticated.push(path.to_path_buf());
            continue;
        }
        let checker = Checker::new(&*container, &info, key, path)?;
        let mut order: Vec<usize> = (0..container.tensors().len()).collect();
        order.sort_by_key(|&i| container.byte_range(i).start);
        let layout = Layout {
            pieces: order.into_iter().map(Piece::Tensor).collect(),
            metadata: Default::default(),
        };
        opened.push(ToVerify {
            path: path.to_path_buf(),
            ciphers: vec![None; container.tensors().len()],
            file,
            container,
            checker,
            layout,
        });
    }
    let streams: Vec<_> = opened
        .iter()
        .map(|v| pipeline::Stream {
            path: &v.path,
            input: v.file.joined(),
            dst: &v.path,
            out: None,
            container: &*v.container,
            layout: &v.layout,
            ciphers: &v.ciphers,
            tagging: pipeline::Tagging::Read(&v.checker),
        })
        .collect();
    let tags = pipeline::run_parallel(
        &streams,
        &[],
        crate::CpuLocker::new(),
        &Options::default(),
        Direction::Unlock,
    )?;
    for (v, tags) in opened.iter().zip(tags) {
        let tensors = v.container.tensors();
        check_tags(&v.checker, tensors.len(), tags)?;
        done.tensors += tensors.len();
        done.bytes += tensors.iter().map(|t| t.len()).sum::<u64>();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::CpuEngine;
    use crate::CpuLocker;

    /// A format of another shape than safetensors: tensors at arbitrary places, bytes
    /// between them kept or replaced, new bytes in the middle.
    struct Toy {
        tensors: Vec<TensorEntry>,
        ranges: Vec<std::ops::Range<u64>>,
    }

    impl Container for Toy {
        fn tensors(&self) -> &[TensorEntry] {
            &self.tensors
        }
        fn byte_range(&self, i: usize) -> std::ops::Range<u64> {
            self.ranges[i].clone()
        }
        fn lock_record(&self) -> Result<Option<LockInfo>> {
            Ok(None)
        }
        fn user_metadata(&self) -> Vec<(String, String)> {
            Vec::new()
        }
        fn metadata(&self) -> std::collections::BTreeMap<String, String> {
            Default::default()
        }
        fn layout(&self, _: Option<&LockInfo>) -> Result<Layout> {
            Ok(Layout {
                pieces: vec![
                    Piece::Copy(0..3),
                    Piece::Tensor(0),
                    Piece::Bytes(b"new".to_vec()),
                    Piece::Copy(40..45),
                    Piece::Tensor(1),
                    Piece::Copy(10..12),
                ],
                metadata: Default::default(),
            })
        }
    }

    #[test]
    fn any_layout_is_written_in_order_with_tensors_transformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("toy");
        let bytes: Vec<u8> = (0..64u8).collect();
        fs::write(&path, &bytes).unwrap();
        let entry = |name: &str, len: u64| TensorEntry {
            name: name.into(),
            dtype: Dtype::U8,
            shape: vec![len as usize],
            start: 0,
            end: len,
        };
        let toy = Toy {
            tensors: vec![entry("a", 7), entry("b", 19)],
            ranges: vec![20..27, 45..64],
        };
        let key = MasterKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        let salt = Salt::from_hex("01010101010101010101010101010101").unwrap();
        let cipher = |n: &str| Arc::new(TensorCipher::for_tensor(&key, &salt, n));
        let plan = FilePlan {
            layout: toy.layout(None).unwrap(),
            input: Box::new(toy),
            lock: None,
            ciphers: vec![Some(cipher("a")), None],
            clear_bool: 0,
            auth: Auth::Unauthenticated,
        };
        let out = tempfile::tempfile().unwrap();
        let mut engine = CpuEngine::new(CpuLocker::new());
        let input = File::open(&path).unwrap();
        let stream = pipeline::Stream {
            path: &path,
            input: Joined::one(&input, &path),
            dst: &path,
            out: Some(Joined::one(&out, &path)),
            container: &*plan.input,
            layout: &plan.layout,
            ciphers: &plan.ciphers,
            tagging: pipeline::Tagging::None,
        };
        let opts = Options::default();
        pipeline::run(&[stream], &[], &mut engine, &opts, Direction::Lock).unwrap();
        let mut a = bytes[20..27].to_vec();
        crate::reference::apply(&cipher("a"), Direction::Lock, 0, &mut a);
        let mut want = bytes[0..3].to_vec();
        want.extend_from_slice(&a);
        want.extend_from_slice(b"new");
        want.extend_from_slice(&bytes[40..45]);
        want.extend_from_slice(&bytes[45..64]);
        want.extend_from_slice(&bytes[10..12]);
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut &out, &mut got).unwrap();
        assert_eq!(got, want);
    }
}
