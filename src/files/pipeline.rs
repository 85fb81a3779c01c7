//! The pipelined streamer behind lock, unlock, upgrade and verify: one or more output
//! files (a model file, or a group of a directory's shards), each cut into batches of
//! contiguous output bytes, every batch read with positional reads, tagged and
//! transformed, and written with one positional write at its place in its output.
//!
//! Positional I/O is what lets the steps overlap without a serial loop: no batch waits
//! for the one before it to be written, so reading, transforming and writing run at once
//! on different threads, and a directory's shards share the same workers.
//!
//! - On the CPU ([`Engine::cpu_locker`]) a few workers each take the next batch (of any
//!   file), read it, tag and transform it 1 MiB at a time while it is in cache, and write
//!   it: reading, transforming and writing overlap across workers, on all cores.
//! - On an engine that must see chunks in order (a GPU's ring), a reader thread reads
//!   ahead, the calling thread feeds the engine (whose upload, kernel and read-back
//!   already overlap), and a writer thread writes behind; a copier copies other files.
//!
//! Memory in flight is bounded: each batch holds at most one buffer of at most the
//! batch size, and there are at most `max_in_flight / batch` of them (at least one).
//! v2's tags are taken per 1 MiB chunk of each tensor ([`crate::auth::CHUNK_LEN`]), in
//! any order: a batch never splits a tensor inside one of its chunks, so each chunk's
//! tag is computed where its bytes are, and the caller hands them to the tensor's tagger.

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::direct::{self, BatchBuf};
use super::Options;
use crate::auth::{Tag, CHUNK_LEN};
use crate::authenticate::{Checker, Sealer};
use crate::cpu::CpuLocker;
use crate::engine::{Chunk, Engine, Span};
use crate::error::{Error, Result};
use crate::format::{read_exact_at, write_all_at, Container, Joined, Layout, Piece};
use crate::scheme::{Direction, TensorCipher};

/// Default bound on the bytes of file data held in memory at once by one lock, unlock or
/// verify, all its files together.
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 256 << 20;

/// Buffers of the in-order path: three in the GPU engine's ring, one being read, one
/// being written, one spare. More would only read further ahead of a GPU that is
/// already the slower side.
const ORDERED_BUFFERS: u64 = 6;

/// Largest batch of the CPU path: a worker's batch then stays in cache between its
/// read, its transform and its write (4 MiB measured a little faster than 16 MiB on
/// 2 Zen 3 cores, a 1 GiB file in tmpfs: 0.35 against 0.37 s to lock). A GPU wants
/// larger chunks, so the in-order path takes the chunk size as it is.
const CPU_BATCH: usize = 4 << 20;

/// Bytes per copy job: a large file copied in the clear is split so that several
/// workers copy it at once.
const COPY_PIECE: u64 = 64 << 20;

/// Workers beyond the cores where outputs are written directly (see [`workers`]).
const DIRECT_EXTRA_WORKERS: usize = 2;

/// The I/O a [`Fault`] hook is asked about.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// A read of an input.
    Read,
    /// A write of an output.
    Write,
}

/// A test seam: called before every positional read and write (and copy) of the
/// streamer with the file, offset and length; an error it returns is that I/O's error.
/// Lets the tests fail a read or a write in the middle of any shard, and count the bytes
/// read but not yet written (those the bound on memory in flight holds).
#[doc(hidden)]
pub type Fault<'a> = &'a (dyn Fn(Io, &Path, u64, u64) -> std::io::Result<()> + Sync);

/// How a stream's v2 tags are taken.
pub(super) enum Tagging<'a> {
    /// No tags (unlock of a v1 file).
    None,
    /// Over the bytes as written, the locked ones (lock, upgrade).
    Written(&'a Sealer),
    /// Over the bytes as read, the locked ones, to check (unlock, verify of a v2 file).
    Read(&'a Checker),
}

impl Tagging<'_> {
    fn tag(&self, i: usize, chunk: u64, bytes: &[u8]) -> Tag {
        match self {
            Tagging::Written(s) => s.chunk_tag(i, chunk, bytes),
            Tagging::Read(c) => c.chunk_tag(i, chunk, bytes),
            Tagging::None => unreachable!("tags are taken only with a sealer or a checker"),
        }
    }
}

/// A chunk tag: tensor (in its container's order), chunk, tag.
pub(super) type ChunkTag = (usize, u64, Tag);

/// One output file to stream: its layout over its input, each tensor's cipher.
pub(super) struct Stream<'a> {
    /// The input, for messages.
    pub path: &'a Path,
    /// The input's files as one run ([`Container::byte_range`]'s offsets).
    pub input: Joined<'a>,
    /// The output as the user named it, for messages.
    pub dst: &'a Path,
    /// The output's files as one run, cut as the input is (a TF.js model: `model.json`,
    /// then its weight files); `None` to read and tag only (verify).
    pub out: Option<Joined<'a>>,
    pub container: &'a dyn Container,
    pub layout: &'a Layout,
    /// Each tensor's cipher, `None` to pass its bytes through.
    pub ciphers: &'a [Option<Arc<TensorCipher>>],
    pub tagging: Tagging<'a>,
}

/// A whole file copied as it is (a directory's other files), by the fastest copy the
/// system offers.
pub(super) struct Copy<'a> {
    pub path: &'a Path,
    pub from: &'a File,
    pub dst: &'a Path,
    pub to: &'a File,
    pub len: u64,
}

/// Where a segment's bytes come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Tensor `i` from byte `at` of it (a multiple of [`CHUNK_LEN`]), at `input` in the
    /// input file.
    Tensor { i: usize, at: u64, input: u64 },
    /// The input file from this offset, as it is.
    Input(u64),
    /// New bytes of the layout.
    New(&'a [u8]),
}

impl Source<'_> {
    fn input(&self) -> Option<u64> {
        match *self {
            Source::Tensor { input, .. } | Source::Input(input) => Some(input),
            Source::New(_) => None,
        }
    }
}

/// A run of a batch's bytes from one source; a batch's segments lie in it in order.
struct Segment<'a> {
    source: Source<'a>,
    len: usize,
}

/// Contiguous bytes of an output, at most the batch size.
struct Batch<'a> {
    out_at: u64,
    len: usize,
    /// Bytes of tensor data in it, for the progress bar.
    tensor_bytes: u64,
    segments: Vec<Segment<'a>>,
}

/// Cuts `layout` (of `container`) into batches of at most `cap` bytes (at least
/// [`CHUNK_LEN`]), cutting a tensor only at a multiple of [`CHUNK_LEN`] from its start.
fn batches<'a>(container: &dyn Container, layout: &'a Layout, cap: usize) -> Vec<Batch<'a>> {
    debug_assert!(cap >= CHUNK_LEN);
    let mut out = Vec::new();
    let new = |out_at| Batch {
        out_at,
        len: 0,
        tensor_bytes: 0,
        segments: Vec::new(),
    };
    let mut cur = new(0);
    for piece in &layout.pieces {
        let total = piece.len(container);
        let mut done = 0u64;
        while done < total {
            let mut take = ((cap - cur.len) as u64).min(total - done);
            if matches!(piece, Piece::Tensor(_)) && done + take < total {
                take -= take % CHUNK_LEN as u64;
            }
            if take == 0 {
                // Not room for a whole chunk of this tensor: it starts the next batch.
                let at = cur.out_at + cur.len as u64;
                out.push(std::mem::replace(&mut cur, new(at)));
                continue;
            }
            let source = match piece {
                Piece::Tensor(i) => {
                    cur.tensor_bytes += take;
                    Source::Tensor {
                        i: *i,
                        at: done,
                        input: container.byte_range(*i).start + done,
                    }
                }
                Piece::Copy(r) => Source::Input(r.start + done),
                Piece::Bytes(b) => Source::New(&b[done as usize..(done + take) as usize]),
            };
            cur.segments.push(Segment {
                source,
                len: take as usize,
            });
            cur.len += take as usize;
            done += take;
            if cur.len == cap {
                let at = cur.out_at + cur.len as u64;
                out.push(std::mem::replace(&mut cur, new(at)));
            }
        }
    }
    if cur.len > 0 {
        out.push(cur);
    }
    out
}

/// What to do on one pass over a batch's tensor bytes, chunk by chunk.
#[derive(Clone, Copy)]
struct Steps<'l> {
    /// Take tags over the bytes as read (if the stream's tags are read ones).
    read_tags: bool,
    transform: Option<(&'l CpuLocker, Direction)>,
    /// Take tags over the bytes as written (if the stream's tags are written ones).
    written_tags: bool,
}

impl Stream<'_> {
    /// Asks the kernel to start reading `b`'s input now, for a worker to find it in the
    /// page cache when it takes `b`: workers reading batches at several offsets at once
    /// defeat the kernel's own readahead, which expects one sequential reader (a 1 GiB
    /// lock from a cold cache on a virtio disk: median 1.82 s without, 1.32 s with).
    /// Nothing is asked where the batch's last byte is cached already: asking costs a
    /// walk of the cache, which a warm lock measurably paid.
    fn prefetch(&self, b: &Batch) {
        let inputs = b
            .segments
            .iter()
            .filter_map(|g| Some((g.source.input()?, g.len)));
        let Some((last, len)) = inputs.clone().next_back().filter(|&(_, len)| len > 0) else {
            return;
        };
        let mut warm = false;
        let _ = self.input.each(last + len as u64 - 1, 1, |p, off, _| {
            warm = cached(p.file, off);
            Ok(())
        });
        if warm {
            return;
        }
        for (start, len) in inputs {
            let _ = self.input.each(start, len, |p, off, r| {
                will_need(p.file, off, r.len());
                Ok(())
            });
        }
    }

    /// Reads `b`'s bytes into `buf` (exactly its length): one read per run of segments
    /// contiguous in the input.
    fn read(&self, b: &Batch, buf: &mut [u8], fault: Option<Fault>) -> Result<()> {
        let segs = &b.segments;
        let (mut k, mut pos) = (0, 0);
        while k < segs.len() {
            let Some(start) = segs[k].source.input() else {
                let Source::New(bytes) = segs[k].source else {
                    unreachable!("only new bytes have no input")
                };
                buf[pos..pos + bytes.len()].copy_from_slice(bytes);
                pos += bytes.len();
                k += 1;
                continue;
            };
            let (first, run_at) = (k, pos);
            let mut end = start;
            while k < segs.len() && segs[k].source.input() == Some(end) {
                end += segs[k].len as u64;
                pos += segs[k].len;
                k += 1;
            }
            let run = &mut buf[run_at..pos];
            self.input
                .each(start, run.len(), |p, off, r| {
                    read_at(p.file, p.path, off, &mut run[r], fault)
                })
                .map_err(|e| self.read_error(&segs[first].source, e))?;
        }
        Ok(())
    }

    fn read_error(&self, source: &Source, e: std::io::Error) -> Error {
        let Source::Tensor { i, .. } = source else {
            return Error::io(self.path, e);
        };
        let name = &self.container.tensors()[*i].name;
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::format(
                self.path,
                format!("truncated: the file ended inside tensor {name:?}; it was cut short or changed while being read"),
            ),
            _ => Error::format(
                self.path,
                format!("read failed inside tensor {name:?}: {e}"),
            ),
        }
    }

    /// Runs `steps` over `b`'s tensor bytes in `buf`, 1 MiB (one tag chunk) at a time,
    /// so that a chunk is tagged and transformed while it is in cache; adds the tags
    /// taken to `tags`.
    fn process(&self, b: &Batch, buf: &mut [u8], steps: Steps, tags: &mut Vec<ChunkTag>) {
        let read_tags = steps.read_tags && matches!(self.tagging, Tagging::Read(_));
        let written_tags = steps.written_tags && matches!(self.tagging, Tagging::Written(_));
        let mut pos = 0;
        for seg in &b.segments {
            let data = &mut buf[pos..pos + seg.len];
            pos += seg.len;
            let Source::Tensor { i, at, .. } = seg.source else {
                continue;
            };
            let cipher = self.ciphers[i].as_deref();
            let transform = steps.transform.zip(cipher);
            if !read_tags && !written_tags && transform.is_none() {
                continue;
            }
            for (k, piece) in data.chunks_mut(CHUNK_LEN).enumerate() {
                let offset = at + (k * CHUNK_LEN) as u64;
                let chunk = offset / CHUNK_LEN as u64;
                if read_tags {
                    tags.push((i, chunk, self.tagging.tag(i, chunk, piece)));
                }
                if let Some(((locker, dir), cipher)) = transform {
                    locker.apply(cipher, dir, offset, piece);
                }
                if written_tags {
                    tags.push((i, chunk, self.tagging.tag(i, chunk, piece)));
                }
            }
        }
    }

    /// Writes `b`'s bytes from `buf` at its place in the output (nothing for verify),
    /// directly where `direct` has a descriptor for the file.
    fn write(
        &self,
        b: &Batch,
        buf: &[u8],
        direct: &direct::Outputs,
        fault: Option<Fault>,
    ) -> Result<()> {
        match &self.out {
            Some(out) => write_joined(out, self.dst, b.out_at, buf, direct, fault),
            None => Ok(()),
        }
    }

    /// Direct descriptors for the output's files (none for verify).
    fn direct(&self) -> direct::Outputs<'_> {
        let len = self.layout.len(self.container);
        self.out
            .as_ref()
            .map(|out| direct::Outputs::open(out, len))
            .unwrap_or_default()
    }

    /// The engine's spans of `b`: its tensor segments, each with its cipher.
    fn spans(&self, b: &Batch) -> Vec<Span> {
        let mut pos = 0;
        let mut spans = Vec::new();
        for seg in &b.segments {
            if let Source::Tensor { i, at, .. } = seg.source {
                spans.push(Span {
                    cipher: self.ciphers[i].clone(),
                    tensor_offset: at,
                    range: pos..pos + seg.len,
                });
            }
            pos += seg.len;
        }
        spans
    }
}

/// The first error of any thread, and whether there was one (checked before each job,
/// so that the others stop soon).
#[derive(Default)]
struct Failure {
    failed: AtomicBool,
    first: Mutex<Option<Error>>,
}

impl Failure {
    fn set(&self, e: Error) {
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(e);
        self.failed.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn result(self) -> Result<()> {
        match self.first.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The batch size for `opts`: its chunk size, no more than the in-flight bound, and at
/// least one tag chunk.
fn batch_len(opts: &Options) -> usize {
    let bound = usize::try_from(opts.max_in_flight).unwrap_or(usize::MAX);
    opts.chunk_size.min(bound).max(CHUNK_LEN)
}

/// Every batch of `streams`, as (stream, batch), streams one after another.
fn work<'a>(streams: &[Stream<'a>], cap: usize) -> Vec<(usize, Batch<'a>)> {
    streams
        .iter()
        .enumerate()
        .flat_map(|(s, st)| {
            batches(st.container, st.layout, cap)
                .into_iter()
                .map(move |b| (s, b))
        })
        .collect()
}

/// The copy jobs of `copies`: (copy, offset, length), large files split.
fn copy_jobs(copies: &[Copy]) -> Vec<(usize, u64, u64)> {
    let mut jobs = Vec::new();
    for (c, copy) in copies.iter().enumerate() {
        let mut at = 0;
        while at < copy.len {
            let n = (copy.len - at).min(COPY_PIECE);
            jobs.push((c, at, n));
            at += n;
        }
    }
    jobs
}

/// Streams `streams` and copies `copies` at once, through `engine` in the direction
/// `dir`, within `opts`'s bound of memory in flight; returns each stream's chunk tags
/// (empty where it takes none), for its caller to hand to its sealer or check.
pub(super) fn run(
    streams: &[Stream],
    copies: &[Copy],
    engine: &mut dyn Engine,
    opts: &Options,
    dir: Direction,
) -> Result<Vec<Vec<ChunkTag>>> {
    match engine.cpu_locker() {
        Some(locker) => run_parallel(streams, copies, locker, opts, dir),
        None => run_ordered(streams, copies, engine, opts, dir),
    }
}

/// The worker threads for `opts` with batches of `cap` bytes. With outputs written
/// directly, a worker waits for the disk on each write: two more than the cores keep
/// the cores busy meanwhile (a 1 GiB lock on a virtio disk: 0.70 s with four workers on
/// two cores, 0.79 s with two; BENCHMARKS.md, "Direct writes"). A thread count the
/// caller set is kept as it is.
fn workers(opts: &Options, cap: usize, direct: bool) -> usize {
    let threads = match opts.threads {
        0 => rayon::current_num_threads() + if direct { DIRECT_EXTRA_WORKERS } else { 0 },
        n => n,
    };
    // Positional I/O on a shared handle is a Unix call; elsewhere one worker seeks.
    let threads = if cfg!(unix) { threads } else { 1 };
    let buffers = (opts.max_in_flight / cap as u64).max(1);
    threads
        .min(usize::try_from(buffers).unwrap_or(usize::MAX))
        .max(1)
}

/// The batch length for `streams` on the CPU, at most `cap`: for a small input, short
/// enough that every worker gets about four batches. Each worker's buffer is fresh
/// memory, which the kernel zeroes page by page as it is first touched: for a model of
/// a few MB, 4 MiB buffers cost more than locking it (BENCHMARKS.md, "Small files").
fn small_batches(streams: &[Stream], cap: usize, opts: &Options) -> usize {
    let total: u64 = streams.iter().map(|s| s.layout.len(s.container)).sum();
    batch_for(total, workers(opts, cap, false), cap)
}

/// The batch length of [`small_batches`] for `total` bytes on `workers` workers: about
/// four batches each, whole tag chunks, at least one chunk and at most `cap`.
fn batch_for(total: u64, workers: usize, cap: usize) -> usize {
    let per_batch = total.div_ceil(4 * workers.max(1) as u64);
    let fit = usize::try_from(per_batch.next_multiple_of(CHUNK_LEN as u64)).unwrap_or(cap);
    fit.clamp(CHUNK_LEN, cap.max(CHUNK_LEN))
}

/// The CPU path: workers that each read, tag, transform and write whole batches.
pub(super) fn run_parallel(
    streams: &[Stream],
    copies: &[Copy],
    locker: CpuLocker,
    opts: &Options,
    dir: Direction,
) -> Result<Vec<Vec<ChunkTag>>> {
    let cap = small_batches(streams, batch_len(opts).min(CPU_BATCH), opts);
    let work = work(streams, cap);
    let copy_jobs = copy_jobs(copies);
    let next = AtomicUsize::new(0);
    let failure = Failure::default();
    let tags: Vec<Mutex<Vec<ChunkTag>>> = streams.iter().map(|_| Mutex::default()).collect();
    let steps = Steps {
        read_tags: true,
        transform: Some((&locker, dir)),
        written_tags: true,
    };
    let direct: Vec<direct::Outputs> = streams.iter().map(Stream::direct).collect();
    let any_direct = direct.iter().any(|d| !d.is_empty());
    let workers = workers(opts, cap, any_direct);
    let worker = || {
        let (mut batch, mut copy_buf) = (BatchBuf::default(), Vec::new());
        let mut local: Vec<Vec<ChunkTag>> = streams.iter().map(|_| Vec::new()).collect();
        while !failure.is_set() {
            let j = next.fetch_add(1, Ordering::Relaxed);
            let done = if let Some(&(c, at, len)) = copy_jobs.get(j) {
                copy_range(&copies[c], at, len, &mut copy_buf, opts.fault)
            } else if let Some((s, b)) = work.get(j - copy_jobs.len()) {
                // The batch taken once every worker has taken one more.
                if let Some((s, b)) = work.get(j - copy_jobs.len() + workers) {
                    streams[*s].prefetch(b);
                }
                let st = &streams[*s];
                let buf = batch.get(b.out_at, b.len);
                st.read(b, buf, opts.fault).and_then(|()| {
                    st.process(b, buf, steps, &mut local[*s]);
                    st.write(b, buf, &direct[*s], opts.fault)?;
                    if let Some(p) = opts.progress {
                        p(b.tensor_bytes);
                    }
                    Ok(())
                })
            } else {
                break;
            };
            if let Err(e) = done {
                failure.set(e);
            }
        }
        for (all, mine) in tags.iter().zip(local) {
            all.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(worker);
        }
    });
    failure.result()?;
    Ok(tags
        .into_iter()
        .map(|t| t.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect())
}

/// The in-order path: a reader thread ahead of the engine, this thread feeding it, a
/// writer thread behind it, a copier beside them.
fn run_ordered(
    streams: &[Stream],
    copies: &[Copy],
    engine: &mut dyn Engine,
    opts: &Options,
    dir: Direction,
) -> Result<Vec<Vec<ChunkTag>>> {
    let cap = batch_len(opts);
    let work = work(streams, cap);
    let failed = Failure::default();
    let tags: Vec<Mutex<Vec<ChunkTag>>> = streams.iter().map(|_| Mutex::default()).collect();
    let buffers = (opts.max_in_flight / cap as u64).clamp(1, ORDERED_BUFFERS) as usize;
    // The engine's buffers are vectors wherever they lie: the writer copies a batch into
    // a buffer placed for direct writes (a memory copy, far faster than the disk whose
    // slow writeback it saves), which takes one of the buffers the bound allows. With
    // room for one buffer only, the outputs go through the page cache.
    let direct: Vec<direct::Outputs> = match buffers {
        1 => streams.iter().map(|_| direct::Outputs::default()).collect(),
        _ => streams.iter().map(Stream::direct).collect(),
    };
    let buffers = buffers - usize::from(direct.iter().any(|d| !d.is_empty()));
    let direct = &direct;
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..buffers {
        free_tx.send(Vec::new()).expect("the receiver is here");
    }
    let (read_tx, read_rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(buffers);
    let (done_tx, done_rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(buffers);
    let keep = |s: usize, mine: Vec<ChunkTag>| {
        tags[s]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(mine);
    };
    let (work, failure) = (&work, &failed);
    std::thread::scope(|scope| {
        if !copies.is_empty() {
            scope.spawn(|| {
                let mut buf = Vec::new();
                for (c, at, len) in copy_jobs(copies) {
                    if failure.is_set() {
                        return;
                    }
                    if let Err(e) = copy_range(&copies[c], at, len, &mut buf, opts.fault) {
                        return failure.set(e);
                    }
                }
            });
        }
        // The reader: each batch in order, its read tags taken before the engine.
        scope.spawn(move || {
            let steps = Steps {
                read_tags: true,
                transform: None,
                written_tags: false,
            };
            for (j, (s, b)) in work.iter().enumerate() {
                let Ok(mut buf) = free_rx.recv() else { return };
                if failure.is_set() {
                    return;
                }
                buf.resize(b.len, 0);
                if let Err(e) = streams[*s].read(b, &mut buf, opts.fault) {
                    return failure.set(e);
                }
                let mut mine = Vec::new();
                streams[*s].process(b, &mut buf, steps, &mut mine);
                keep(*s, mine);
                if read_tx.send((j, buf)).is_err() {
                    return;
                }
            }
        });
        // The writer: each batch as the engine gives it back, its written tags taken.
        scope.spawn(move || {
            let steps = Steps {
                read_tags: false,
                transform: None,
                written_tags: true,
            };
            let mut placed = BatchBuf::default();
            for (j, mut buf) in done_rx {
                if failure.is_set() {
                    return;
                }
                let (s, b) = &work[j];
                let mut mine = Vec::new();
                streams[*s].process(b, &mut buf, steps, &mut mine);
                keep(*s, mine);
                let out = &direct[*s];
                let bytes: &[u8] = match out.is_empty() {
                    true => &buf,
                    false => {
                        let p = placed.get(b.out_at, b.len);
                        p.copy_from_slice(&buf);
                        p
                    }
                };
                if let Err(e) = streams[*s].write(b, bytes, out, opts.fault) {
                    return failure.set(e);
                }
                if let Some(p) = opts.progress {
                    p(b.tensor_bytes);
                }
                // The reader may be done already; then it needs no buffer back.
                let _ = free_tx.send(buf);
            }
        });
        if let Err(e) = feed_engine(engine, streams, work, dir, read_rx, done_tx, failure) {
            failure.set(e);
        }
    });
    failed.result()?;
    Ok(tags
        .into_iter()
        .map(|t| t.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect())
}

/// Hands the batches the reader sends to `engine` in order, and the chunks it finishes
/// to the writer. Owns its channel ends, so that returning early (an error here) stops
/// the reader and the writer too. On any failure the engine is drained and what it held
/// dropped: an engine used again (the next file) must not give back this one's chunks.
fn feed_engine(
    engine: &mut dyn Engine,
    streams: &[Stream],
    work: &[(usize, Batch)],
    dir: Direction,
    from_reader: mpsc::Receiver<(usize, Vec<u8>)>,
    to_writer: mpsc::SyncSender<(usize, Vec<u8>)>,
    failure: &Failure,
) -> Result<()> {
    let fed = feed(engine, streams, work, dir, from_reader, to_writer, failure);
    if fed.is_err() || failure.is_set() {
        // Whatever the engine says now, the first failure is what is reported.
        let _ = engine.finish();
    }
    fed
}

fn feed(
    engine: &mut dyn Engine,
    streams: &[Stream],
    work: &[(usize, Batch)],
    dir: Direction,
    from_reader: mpsc::Receiver<(usize, Vec<u8>)>,
    to_writer: mpsc::SyncSender<(usize, Vec<u8>)>,
    failure: &Failure,
) -> Result<()> {
    let stopped = || Error::Invalid("the streamer's writer stopped".into());
    // Batches in the engine, oldest first: it gives chunks back in submission order.
    let mut in_engine = VecDeque::new();
    let pass = |done: Vec<Chunk>, in_engine: &mut VecDeque<usize>| -> Result<()> {
        for c in done {
            let j = in_engine.pop_front().expect("one batch per chunk");
            to_writer.send((j, c.data)).map_err(|_| stopped())?;
        }
        Ok(())
    };
    loop {
        let next = match from_reader.try_recv() {
            Ok(m) => Some(m),
            // Nothing read yet: the reader may be waiting for buffers the engine holds,
            // so let the engine finish what it has before waiting.
            Err(mpsc::TryRecvError::Empty) => {
                pass(engine.finish()?, &mut in_engine)?;
                from_reader.recv().ok()
            }
            Err(mpsc::TryRecvError::Disconnected) => None,
        };
        let Some((j, data)) = next else { break };
        let (s, b) = &work[j];
        let chunk = Chunk {
            dir,
            data,
            spans: streams[*s].spans(b),
        };
        in_engine.push_back(j);
        pass(engine.submit(chunk)?, &mut in_engine)?;
    }
    if failure.is_set() {
        return Ok(());
    }
    pass(engine.finish()?, &mut in_engine)
}

/// Copies `len` bytes from `at` of `c`'s file to the same place in its copy: in the
/// kernel (`copy_file_range`, a reflink where the file system shares extents) where the
/// system can, else through `buf`.
fn copy_range(c: &Copy, at: u64, len: u64, buf: &mut Vec<u8>, fault: Option<Fault>) -> Result<()> {
    if let Some(f) = fault {
        f(Io::Read, c.path, at, len).map_err(|e| Error::io(c.path, e))?;
        f(Io::Write, c.dst, at, len).map_err(|e| Error::io(c.dst, e))?;
    }
    #[cfg(target_os = "linux")]
    if kernel_copy(c, at, len)? {
        return Ok(());
    }
    buf.resize(CHUNK_LEN, 0);
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK_LEN as u64) as usize;
        read_at(c.from, c.path, at + done, &mut buf[..n], None).map_err(|e| copy_error(c, e))?;
        write_at(c.to, c.dst, at + done, &buf[..n], None, None)?;
        done += n as u64;
    }
    Ok(())
}

fn copy_error(c: &Copy, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return Error::format(
            c.path,
            "it was cut short while being copied; try again once nothing writes to it",
        );
    }
    Error::io(c.path, e)
}

/// `copy_file_range` over the whole range; `false`, with nothing copied, where the
/// system or file system does not offer it for these files.
#[cfg(target_os = "linux")]
fn kernel_copy(c: &Copy, at: u64, len: u64) -> Result<bool> {
    use std::os::fd::AsRawFd;
    let (mut off_in, mut off_out) = (at as libc::loff_t, at as libc::loff_t);
    let mut left = len;
    while left > 0 {
        let want = left.min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the call (borrowed `File`s), and the
        // offsets are valid, writable `loff_t`s.
        let n = unsafe {
            libc::copy_file_range(
                c.from.as_raw_fd(),
                &mut off_in,
                c.to.as_raw_fd(),
                &mut off_out,
                want,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            let unsupported = matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::EXDEV | libc::EOPNOTSUPP | libc::EINVAL)
            );
            if unsupported && left == len {
                return Ok(false);
            }
            return Err(Error::io(c.dst, e));
        }
        if n == 0 {
            return Err(copy_error(c, std::io::ErrorKind::UnexpectedEof.into()));
        }
        left -= n as u64;
    }
    Ok(true)
}

/// Reads exactly `buf.len()` bytes of `file` from `at`, without a shared position.
fn read_at(
    file: &File,
    path: &Path,
    at: u64,
    buf: &mut [u8],
    fault: Option<Fault>,
) -> std::io::Result<()> {
    if let Some(f) = fault {
        f(Io::Read, path, at, buf.len() as u64)?;
    }
    read_exact_at(file, at, buf)
}

/// Writes all of `buf` into the run `out` at `at`, each piece into the file it lies in,
/// directly where `direct` has a descriptor for it.
pub(super) fn write_joined(
    out: &Joined,
    dst: &Path,
    at: u64,
    buf: &[u8],
    direct: &direct::Outputs,
    fault: Option<Fault>,
) -> Result<()> {
    let mut failed = None;
    let r = out.each(at, buf.len(), |p, off, r| {
        write_at(p.file, p.path, off, &buf[r], direct.get(p.file), fault).map_err(|e| {
            failed = Some(e);
            std::io::Error::other("write failed")
        })
    });
    match (failed, r) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(Error::io(dst, e)),
        (None, Ok(())) => Ok(()),
    }
}

/// Writes all of `buf` into `file` at `at`, without a shared position: its aligned
/// middle through `direct` where given, the rest through the page cache.
fn write_at(
    file: &File,
    dst: &Path,
    at: u64,
    buf: &[u8],
    direct: Option<&direct::Direct>,
    fault: Option<Fault>,
) -> Result<()> {
    let write = || -> std::io::Result<()> {
        if let Some(f) = fault {
            f(Io::Write, dst, at, buf.len() as u64)?;
        }
        match direct {
            Some(d) => {
                d.write_at(file, at, buf)?;
            }
            None => write_all_at(file, at, buf)?,
        }
        start_writeback(file, at, buf.len());
        Ok(())
    };
    write().map_err(|e| Error::io(dst, e))
}

/// Whether byte `at` of `file` is in the page cache: a one-byte read that may not wait
/// for the disk. `false` where that cannot be told.
fn cached(file: &File, at: u64) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::fd::AsRawFd;
        let mut byte = 0u8;
        let iov = libc::iovec {
            iov_base: (&mut byte as *mut u8).cast(),
            iov_len: 1,
        };
        // SAFETY: the descriptor is open for the call (a borrowed `File`), and `iov`
        // describes one writable byte that outlives it.
        let n = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                &iov,
                1,
                at as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        n == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (file, at);
        false
    }
}

/// Asks the kernel to start reading `len` bytes of `file` at `at` into the page cache,
/// without waiting: a hint, which does nothing where it is not offered.
fn will_need(file: &File, at: u64, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the call (a borrowed `File`); the call
        // only reads its arguments.
        unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                at as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, at, len);
}

/// Asks the kernel to start writing `len` bytes of `file` at `at` back to the disk now,
/// without waiting: the output's one sync before its rename then finds little left to
/// write, and the disk writes overlap the reads and the transform instead of following
/// them (on a disk, a 4 GiB lock otherwise ends with gigabytes of dirty pages flushed in
/// one go). A no-op on tmpfs and where the call is not offered; a failure here is seen
/// by that sync.
fn start_writeback(file: &File, at: u64, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the call (a borrowed `File`); the call
        // only reads its arguments.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                at as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, at, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_cache_probe_tells_a_dropped_page_from_a_read_one() {
        use std::os::fd::AsRawFd;
        // On a disk: the crate's target directory (a temporary one may be tmpfs, which
        // caches everything).
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        let dir = tempfile::tempdir_in(target).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: an open descriptor; the call only reads its arguments.
        let dropped =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(dropped, 0);
        assert!(!cached(&file, 4096), "a dropped page reads as cached");
        let mut page = [0u8; 4096];
        read_exact_at(&file, 4096, &mut page).unwrap();
        assert!(cached(&file, 4096), "a page just read reads as not cached");
    }

    #[test]
    fn small_inputs_get_short_batches_and_large_ones_the_cap() {
        const MIB: u64 = 1 << 20;
        // A 5 MB model on two workers: 1 MiB batches, not 4 MiB buffers per worker.
        assert_eq!(batch_for(5 * MIB, 2, CPU_BATCH), CHUNK_LEN);
        assert_eq!(batch_for(0, 2, CPU_BATCH), CHUNK_LEN);
        assert_eq!(batch_for(20 * MIB, 2, CPU_BATCH), 3 * CHUNK_LEN);
        assert_eq!(batch_for(1 << 30, 2, CPU_BATCH), CPU_BATCH);
        assert_eq!(batch_for(1 << 30, 0, CPU_BATCH), CPU_BATCH);
        assert_eq!(batch_for(u64::MAX, 64, CPU_BATCH), CPU_BATCH);
        // Whole chunks, never past a cap the caller set lower.
        for total in [1, MIB + 1, 7 * MIB + 3, 33 * MIB] {
            for workers in 1..5 {
                let b = batch_for(total, workers, 2 * CHUNK_LEN);
                assert_eq!(b % CHUNK_LEN, 0);
                assert!((CHUNK_LEN..=2 * CHUNK_LEN).contains(&b));
            }
        }
    }
}
