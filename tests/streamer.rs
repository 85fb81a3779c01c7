//! The pipelined streamer: whatever its chunk size, bound on memory in flight and thread
//! count, on the CPU path, the in-order path (an engine that holds chunks, as a GPU's
//! ring does) and a GPU, a lock is the reference lock with the one-shot tags, and unlock
//! gives back the original bytes; a file or directory fails as a whole, leaving no output
//! and no temporary, when a read or write fails or a tag does not check in the middle
//! of any shard.

mod common;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use common::*;
use deeplock::auth::{FileAuthKey, CHUNK_LEN};
use deeplock::engine::{Chunk, CpuEngine, Engine};
use deeplock::files::{self, Io, Options};
use deeplock::header::Header;
use deeplock::lock_info::LockInfo;
use deeplock::{reference, CpuLocker, Direction, MasterKey, TensorCipher};
use rand::{Rng, RngCore};

const M: usize = CHUNK_LEN;

/// The CPU engine seen as an engine that must get chunks in order and holds up to
/// `depth` of them before giving the oldest back, as a GPU's ring does: the streamer's
/// in-order path, without a GPU.
struct InOrder {
    cpu: CpuEngine,
    depth: usize,
    held: VecDeque<Chunk>,
}

impl InOrder {
    fn new(depth: usize) -> Self {
        InOrder {
            cpu: CpuEngine::new(CpuLocker::new()),
            depth,
            held: VecDeque::new(),
        }
    }
}

impl Engine for InOrder {
    fn submit(&mut self, chunk: Chunk) -> deeplock::Result<Vec<Chunk>> {
        let done = self.cpu.submit(chunk)?;
        self.held.extend(done);
        let over = self.held.len().saturating_sub(self.depth);
        Ok(self.held.drain(..over).collect())
    }

    fn finish(&mut self) -> deeplock::Result<Vec<Chunk>> {
        Ok(self.held.drain(..).collect())
    }

    fn describe(&self) -> String {
        format!("in order, {} held", self.depth)
    }
}

fn header_of<'a>(bytes: &'a [u8], path: &Path) -> (Header, &'a [u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h = Header::parse(&bytes[8..8 + n], path).unwrap();
    let start = h.data_start() as usize;
    (h, &bytes[start..])
}

/// Asserts that `locked` is `original` locked under `key`: the same tensors, each one's
/// bytes the reference lock under the file's salt, each tag the one-shot tag.
fn assert_locked(original: &[u8], locked: &[u8], key: &MasterKey, what: &str) {
    let path = Path::new(what);
    let (ho, data_o) = header_of(original, path);
    let (h, data) = header_of(locked, path);
    assert_eq!(ho.tensors, h.tensors, "{what}: tensors");
    let info = LockInfo::from_header(&h, path).unwrap().unwrap();
    let tags = info.tags.as_ref().expect("lock writes v2");
    let fk = FileAuthKey::derive(key, &info.salt);
    let descs = deeplock::authenticate::descriptors(&h.tensors, &info).unwrap();
    for (t, d) in h.tensors.iter().zip(&descs) {
        let r = t.start as usize..t.end as usize;
        let mut want = data_o[r.clone()].to_vec();
        assert!(info.is_locked(&t.name));
        let cipher = TensorCipher::for_tensor(key, &info.salt, &t.name);
        reference::apply(&cipher, Direction::Lock, 0, &mut want);
        assert!(want == data[r.clone()], "{what}: tensor {}", t.name);
        assert_eq!(
            fk.tensor_tag(d, &data[r]).unwrap(),
            tags.tensors[d.index as usize],
            "{what}: tag of {}",
            t.name
        );
    }
}

/// Tensors of sizes around and across v2's 1 MiB chunks, tiny and empty ones among them,
/// about `mib` MiB in all.
fn model_tensors(rng: &mut impl Rng, mib: usize) -> Vec<(String, &'static str, Vec<usize>)> {
    let mut tensors = Vec::new();
    let mut total = 0;
    while total < mib * M {
        let n = match rng.random_range(0..4) {
            0 => rng.random_range(0..300),
            1 => M + rng.random_range(0..11) - 5,
            2 => rng.random_range(2 * M..4 * M) | 1,
            _ => rng.random_range(1..M),
        };
        tensors.push((format!("t.{}", tensors.len()), "U8", vec![n]));
        total += n;
    }
    tensors
}

/// Random streaming options: chunk sizes below, at and above 1 MiB, odd ones, bounds
/// from less than a chunk to many chunks, one to four threads.
fn random_opts(rng: &mut impl Rng) -> Options<'static> {
    Options {
        chunk_size: rng.random_range(1..6 * M),
        max_in_flight: rng.random_range(1..24 * M) as u64,
        threads: rng.random_range(1..=4),
        ..Options::default()
    }
}

fn engines(rng: &mut impl Rng) -> Vec<Box<dyn Engine>> {
    vec![
        Box::new(CpuEngine::new(CpuLocker::new())),
        Box::new(InOrder::new(rng.random_range(1..=4))),
    ]
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_streamed_file_is_the_reference_lock_whatever_the_chunks_bound_threads_and_engine() {
    let mut rng = seeded_rng("streamer file");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.safetensors");
    let tensors = model_tensors(&mut rng, 12);
    let original = write_random_model(&input, &tensors, &[("format", "pt")], &mut rng);
    let key = MasterKey::generate().unwrap();
    for (e, mut engine) in engines(&mut rng).into_iter().enumerate() {
        for run in 0..4 {
            let opts = random_opts(&mut rng);
            let what = format!(
                "{} with chunks of {}, at most {} in flight, {} threads",
                engine.describe(),
                opts.chunk_size,
                opts.max_in_flight,
                opts.threads
            );
            let locked = dir.path().join(format!("l{e}{run}.safetensors"));
            files::lock(&input, &locked, &key, engine.as_mut(), &opts).unwrap();
            let bytes = std::fs::read(&locked).unwrap();
            assert_locked(&original, &bytes, &key, &what);
            let checked = files::verify(&locked, &key).unwrap();
            assert_eq!(checked.tensors, tensors.len(), "{what}");
            let back = dir.path().join(format!("b{e}{run}.safetensors"));
            files::unlock(&locked, &back, &key, engine.as_mut(), &opts).unwrap();
            assert!(std::fs::read(&back).unwrap() == original, "{what}: unlock");
        }
    }
}

#[test]
fn a_file_large_enough_for_direct_writes_on_a_disk_is_the_reference_lock() {
    // Outputs of 32 MiB and more on a disk are written past the page cache, their
    // batches' aligned middles directly and their edges through the cache: the target
    // directory is on a disk where a temporary directory may be tmpfs.
    let mut rng = seeded_rng("streamer direct");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let input = dir.path().join("m.safetensors");
    let tensors = model_tensors(&mut rng, 40);
    let original = write_random_model(&input, &tensors, &[("format", "pt")], &mut rng);
    let key = MasterKey::generate().unwrap();
    // The CPU path with automatic and set thread counts; the in-order path (a GPU's) with
    // a bound of one buffer (through the page cache) and of several (a placed copy).
    let cases: [(Box<dyn Engine>, usize, u64); 5] = [
        (Box::new(CpuEngine::new(CpuLocker::new())), 0, 256 << 20),
        (Box::new(CpuEngine::new(CpuLocker::new())), 1, 256 << 20),
        (Box::new(CpuEngine::new(CpuLocker::new())), 3, 256 << 20),
        (Box::new(InOrder::new(3)), 0, 256 << 20),
        (Box::new(InOrder::new(2)), 0, 6 << 20),
    ];
    for (run, (mut engine, threads, max_in_flight)) in cases.into_iter().enumerate() {
        let opts = Options {
            chunk_size: rng.random_range(M..6 * M) | 1,
            threads,
            max_in_flight,
            ..Options::default()
        };
        let what = format!(
            "{} with chunks of {}, {threads} threads, {max_in_flight} in flight",
            engine.describe(),
            opts.chunk_size
        );
        let engine = engine.as_mut();
        let locked = dir.path().join(format!("l{run}.safetensors"));
        files::lock(&input, &locked, &key, engine, &opts).unwrap();
        assert_locked(&original, &std::fs::read(&locked).unwrap(), &key, &what);
        let back = dir.path().join(format!("b{run}.safetensors"));
        files::unlock(&locked, &back, &key, engine, &opts).unwrap();
        assert!(std::fs::read(&back).unwrap() == original, "{what}: unlock");
    }
}

/// A checkpoint directory of three shards and two other files (one of several MiB).
fn write_checkpoint(dir: &Path, rng: &mut impl RngCore) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir(dir).unwrap();
    let mut files = Vec::new();
    for i in 0..3 {
        let name = format!("model-0000{i}-of-00003.safetensors");
        let tensors: Vec<_> = model_tensors(rng, 9)
            .into_iter()
            .map(|(n, d, s)| (format!("s{i}.{n}"), d, s))
            .collect();
        let bytes = write_random_model(&dir.join(&name), &tensors, &[], rng);
        files.push((name, bytes));
    }
    let words: Vec<u8> = (0..3 * M + 77)
        .map(|i| {
            if i % 8 == 7 {
                b'\n'
            } else {
                b'a' + (rng.next_u32() % 26) as u8
            }
        })
        .collect();
    std::fs::write(dir.join("vocab.txt"), &words).unwrap();
    files.push(("vocab.txt".into(), words));
    let config = br#"{"model_type": "toy"}"#.to_vec();
    std::fs::write(dir.join("config.json"), &config).unwrap();
    files.push(("config.json".into(), config));
    files
}

#[test]
fn a_streamed_directory_is_every_shard_locked_and_every_other_file_copied() {
    let mut rng = seeded_rng("streamer directory");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ckpt");
    let originals = write_checkpoint(&input, &mut rng);
    let key = MasterKey::generate().unwrap();
    for (e, mut engine) in engines(&mut rng).into_iter().enumerate() {
        for run in 0..2 {
            let shown = std::sync::atomic::AtomicU64::new(0);
            let progress = |n: u64| {
                shown.fetch_add(n, Ordering::Relaxed);
            };
            let opts = Options {
                progress: Some(&progress),
                ..random_opts(&mut rng)
            };
            let what = format!(
                "{} with chunks of {}, at most {} in flight, {} threads",
                engine.describe(),
                opts.chunk_size,
                opts.max_in_flight,
                opts.threads
            );
            let locked = tmp.path().join(format!("l{e}{run}"));
            let r = files::lock(&input, &locked, &key, engine.as_mut(), &opts).unwrap();
            assert_eq!((r.files, r.copied), (3, 2), "{what}");
            // One bar for the directory: the tensor bytes of all its shards.
            assert_eq!(
                shown.swap(0, Ordering::Relaxed),
                r.data_bytes,
                "{what}: progress"
            );
            for (name, original) in &originals {
                let bytes = std::fs::read(locked.join(name)).unwrap();
                if name.ends_with(".safetensors") {
                    assert_locked(original, &bytes, &key, &format!("{what}: {name}"));
                } else {
                    assert!(&bytes == original, "{what}: {name} copied");
                }
            }
            assert!(files::verify(&locked, &key).unwrap().checkpoint, "{what}");
            let back = tmp.path().join(format!("b{e}{run}"));
            let r = files::unlock(&locked, &back, &key, engine.as_mut(), &opts).unwrap();
            assert_eq!(
                shown.swap(0, Ordering::Relaxed),
                r.data_bytes,
                "{what}: progress"
            );
            for (name, original) in &originals {
                let bytes = std::fs::read(back.join(name)).unwrap();
                assert!(&bytes == original, "{what}: {name} after unlock");
            }
        }
    }
}

/// A fault hook that fails the `nth` read or write (`io`) of the files named `names`.
fn fail_nth(
    io: Io,
    names: Vec<String>,
    nth: usize,
    error: fn() -> std::io::Error,
) -> impl Fn(Io, &Path, u64, u64) -> std::io::Result<()> + Sync {
    let seen = AtomicUsize::new(0);
    move |got, path, _, _| {
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let ours = got == io && file.is_some_and(|n| names.contains(&n));
        if ours && seen.fetch_add(1, Ordering::SeqCst) == nth {
            return Err(error());
        }
        Ok(())
    }
}

/// Runs `op` from `input` to `output` and asserts it failed with a message holding
/// `says`, leaving no output, no temporary beside it and the input as it was.
fn assert_fails_cleanly(
    op: impl FnOnce(&Path, &Path) -> deeplock::Result<files::Report>,
    input: &Path,
    output: &Path,
    says: &str,
    what: &str,
) {
    let parent = output.parent().unwrap();
    let before = names(parent);
    let input_before = snapshot(input);
    let err = op(input, output).expect_err(what).to_string();
    assert!(err.contains(says), "{what}: {err:?} should say {says:?}");
    assert!(!err.contains('\n'), "{what}: one line: {err:?}");
    assert!(!output.exists(), "{what}: {} was written", output.display());
    assert_eq!(
        names(parent),
        before,
        "{what}: something was left beside the output"
    );
    assert!(snapshot(input) == input_before, "{what}: the input changed");
}

/// Every file under `path` (or `path` itself) with its bytes.
fn snapshot(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    if path.is_file() {
        return vec![(path.to_path_buf(), std::fs::read(path).unwrap())];
    }
    let mut all: Vec<_> = std::fs::read_dir(path)
        .unwrap()
        .flat_map(|e| snapshot(&e.unwrap().path()))
        .collect();
    all.sort();
    all
}

#[test]
fn a_failure_in_the_middle_of_any_shard_leaves_no_output_and_no_temporary() {
    let mut rng = seeded_rng("streamer failures");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ckpt");
    let originals = write_checkpoint(&input, &mut rng);
    let key = MasterKey::generate().unwrap();
    let mut cpu = CpuEngine::new(CpuLocker::new());
    let locked = tmp.path().join("locked");
    files::lock(&input, &locked, &key, &mut cpu, &Options::default()).unwrap();
    let out = tmp.path().join("out").join("model");
    std::fs::create_dir(out.parent().unwrap()).unwrap();
    let no_space = || std::io::Error::from_raw_os_error(libc::ENOSPC);
    let broken = || std::io::Error::from_raw_os_error(libc::EIO);
    for mut engine in engines(&mut rng) {
        for run in 0..6 {
            // A shard of 9 MiB in chunks of at most 3 MiB (at least three reads and
            // writes, the failing one among the first three), or the large copied
            // file (one copy, read and written at once).
            let (name, _) = &originals[rng.random_range(0..originals.len() - 1)];
            let shard = name.ends_with(".safetensors");
            let (io, error, says) = match run % 3 {
                0 => (Io::Read, broken as fn() -> _, "Input/output error"),
                1 => (Io::Write, no_space as fn() -> _, "No space left on device"),
                _ => (Io::Write, broken as fn() -> _, "Input/output error"),
            };
            let nth = if shard { rng.random_range(0..3) } else { 0 };
            let unlocking = run % 2 == 1;
            let from = if unlocking { &locked } else { &input };
            let chunk_size = rng.random_range(M..3 * M);
            let rest = random_opts(&mut rng);
            let what = format!(
                "{}: {io:?} {nth} of {name} fails ({says}), unlock {unlocking}, chunks of {chunk_size}, {} threads",
                engine.describe(),
                rest.threads
            );
            // The directory, then the file alone when it is a shard.
            let mut targets = vec![(from.clone(), out.clone())];
            if shard {
                targets.push((from.join(name), out.with_extension("safetensors")));
            }
            for (i, o) in targets {
                let shown = o.file_name().unwrap().to_string_lossy().into_owned();
                let fault = fail_nth(io, vec![name.clone(), shown], nth, error);
                let opts = Options {
                    chunk_size,
                    max_in_flight: rest.max_in_flight,
                    threads: rest.threads,
                    fault: Some(&fault),
                    ..Options::default()
                };
                let op = |i: &Path, o: &Path| match unlocking {
                    true => files::unlock(i, o, &key, engine.as_mut(), &opts),
                    false => files::lock(i, o, &key, engine.as_mut(), &opts),
                };
                assert_fails_cleanly(op, &i, &o, says, &format!("{what}: {}", i.display()));
            }
        }
    }
}

#[test]
fn a_tag_that_fails_in_the_middle_of_a_shard_leaves_no_output() {
    let mut rng = seeded_rng("streamer tamper");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ckpt");
    write_checkpoint(&input, &mut rng);
    let key = MasterKey::generate().unwrap();
    let locked = tmp.path().join("locked");
    let mut cpu = CpuEngine::new(CpuLocker::new());
    files::lock(&input, &locked, &key, &mut cpu, &Options::default()).unwrap();
    // One bit of the middle shard's data, anywhere in it.
    let shard = locked.join("model-00001-of-00003.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let (h, _) = header_of(&bytes, &shard);
    let at = rng.random_range(h.data_start() as usize..bytes.len());
    bytes[at] ^= 1 << rng.random_range(0..8);
    std::fs::write(&shard, &bytes).unwrap();
    let out = tmp.path().join("out").join("model");
    std::fs::create_dir(out.parent().unwrap()).unwrap();
    for mut engine in engines(&mut rng) {
        let opts = random_opts(&mut rng);
        let what = format!("{} with chunks of {}", engine.describe(), opts.chunk_size);
        let says = "was modified after locking";
        let op = |i: &Path, o: &Path| files::unlock(i, o, &key, engine.as_mut(), &opts);
        assert_fails_cleanly(op, &shard, &out, says, &what);
        let err = files::verify(&shard, &key).unwrap_err().to_string();
        assert!(err.contains(says), "{what}: verify: {err}");
    }
}

/// The bytes read but not yet written never pass the bound (at least one 1 MiB tag chunk,
/// the smallest batch), on either path, for a file and for a directory's shards together,
/// with more threads than the bound has room for. Writes are slowed so that reads run
/// ahead as far as the streamer lets them.
#[test]
fn bytes_in_flight_stay_within_the_bound() {
    let mut rng = seeded_rng("streamer bound");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ckpt");
    write_checkpoint(&input, &mut rng);
    let file = input.join("model-00001-of-00003.safetensors");
    let key = MasterKey::generate().unwrap();
    for (e, mut engine) in engines(&mut rng).into_iter().enumerate() {
        for (run, (chunk_size, bound)) in [(M, M), (4 * M, 3 * M), (2 * M, 5 * M), (M, M / 2)]
            .into_iter()
            .enumerate()
        {
            let (held, peak) = (AtomicI64::new(0), AtomicI64::new(0));
            // Not the other files' bytes: a copy is read and written at once, in the kernel.
            let copied = |p: &Path| p.extension().is_some_and(|e| e == "txt" || e == "json");
            let count = |io: Io, path: &Path, _at: u64, len: u64| {
                if !copied(path) {
                    match io {
                        Io::Read => {
                            let now = held.fetch_add(len as i64, Ordering::SeqCst) + len as i64;
                            peak.fetch_max(now, Ordering::SeqCst);
                        }
                        Io::Write => {
                            std::thread::sleep(std::time::Duration::from_millis(2));
                            held.fetch_sub(len as i64, Ordering::SeqCst);
                        }
                    }
                }
                Ok(())
            };
            let opts = Options {
                chunk_size,
                max_in_flight: bound as u64,
                threads: 4,
                fault: Some(&count),
                ..Options::default()
            };
            for (i, from) in [&file, &input].into_iter().enumerate() {
                let out = tmp.path().join(format!("out{e}{run}{i}"));
                peak.store(0, Ordering::SeqCst);
                files::lock(from, &out, &key, engine.as_mut(), &opts).unwrap();
                let what = format!(
                    "{}, {}, chunks of {chunk_size}, at most {bound} in flight",
                    engine.describe(),
                    from.display()
                );
                let peak = peak.load(Ordering::SeqCst);
                assert!(peak > 0, "{what}: nothing counted");
                assert!(
                    peak <= bound.max(M) as i64,
                    "{what}: {peak} bytes in flight"
                );
            }
        }
    }
}

/// On a GPU (lavapipe in CI: slow, so a small model): the same bytes as the reference,
/// with fewer buffers than the engine's ring (the streamer drains the ring when the
/// reader waits for a buffer) and with plenty; a write failing mid-file leaves nothing.
#[test]
fn a_file_streamed_on_a_gpu_is_the_reference_lock() {
    let Some(ctx) = gpu_context() else { return };
    let mut rng = seeded_rng("streamer gpu");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.safetensors");
    let tensors = vec![
        ("a".to_string(), "U8", vec![M + 5]),
        ("b".to_string(), "F32", vec![3]),
        ("c".to_string(), "U8", vec![M / 2 + 1]),
        ("d".to_string(), "U8", vec![0]),
        ("e".to_string(), "U8", vec![M - 7]),
    ];
    let original = write_random_model(&input, &tensors, &[], &mut rng);
    let key = MasterKey::generate().unwrap();
    let mut engine = deeplock::engine::GpuEngine::new(deeplock::gpu::GpuLocker::new(&ctx));
    for (i, max_in_flight) in [(2 * M) as u64, 64 * M as u64].into_iter().enumerate() {
        let opts = Options {
            chunk_size: M,
            max_in_flight,
            ..Options::default()
        };
        let what = format!("GPU, at most {max_in_flight} in flight");
        let locked = dir.path().join(format!("l{i}.safetensors"));
        files::lock(&input, &locked, &key, &mut engine, &opts).unwrap();
        assert_locked(&original, &std::fs::read(&locked).unwrap(), &key, &what);
        let back = dir.path().join(format!("b{i}.safetensors"));
        files::unlock(&locked, &back, &key, &mut engine, &opts).unwrap();
        assert!(std::fs::read(&back).unwrap() == original, "{what}: unlock");
    }
    let fault = fail_nth(Io::Write, vec!["out.safetensors".into()], 1, || {
        std::io::Error::from_raw_os_error(libc::ENOSPC)
    });
    let opts = Options {
        chunk_size: M,
        fault: Some(&fault),
        ..Options::default()
    };
    let out = dir.path().join("out.safetensors");
    let op = |i: &Path, o: &Path| files::lock(i, o, &key, &mut engine, &opts);
    assert_fails_cleanly(op, &input, &out, "No space left on device", "GPU");
}
