//! Writes that bypass the page cache (`O_DIRECT`) for large outputs on a disk.
//!
//! Every output is synced once before it is renamed into place. Written through the
//! page cache, a large output is then mostly dirty pages when the sync comes, and the
//! kernel's writeback of them runs at a fraction of the disk's speed (on a virtio disk
//! here: buffered writes plus `fsync` 250–650 MB/s, `O_DIRECT` writes 1.3–1.5 GB/s, `dd`
//! of 2 GiB). Written directly, each batch is on the disk when its write returns, the
//! disk writes overlap the reads and the transform of the other batches, and the sync
//! has only the file's metadata and the edges left. BENCHMARKS.md, "Direct writes".
//!
//! A direct write needs its memory address, file offset and length aligned to the
//! device's block. The streamer places each batch's buffer so that the address of every
//! byte is congruent to its output offset modulo [`ALIGN`] ([`BatchBuf`]: the CPU
//! workers' own buffers; the in-order path copies each batch from the engine's into
//! one); a write's
//! aligned middle then goes direct, and the partial blocks at its two ends (shared with
//! the neighbouring batches) go through the page cache. Nothing else changes: the same
//! bytes at the same offsets, whatever path each took.

use std::fs::File;

use crate::format::{write_all_at, Joined};

/// Alignment of direct writes: a multiple of every device block size up to 4 KiB. A
/// device that wants more refuses the write (`EINVAL`), and the file falls back to the
/// page cache.
pub(super) const ALIGN: usize = 4096;

/// Outputs smaller than this are written through the page cache: a direct write waits
/// for the disk, which for a model of a few MB costs more than the one sync at its end.
pub(super) const MIN_LEN: u64 = 32 << 20;

/// A second descriptor on an output file, opened for direct writes.
pub(super) struct Direct {
    #[cfg(target_os = "linux")]
    file: File,
    /// Set once a direct write was refused: the rest of the file goes through the
    /// page cache.
    refused: std::sync::atomic::AtomicBool,
}

impl Direct {
    /// A direct descriptor on `file`, an output of `len` bytes; `None` where direct
    /// writes would not help (a small output, a file system in memory) or are not
    /// offered (not Linux, or a file system that refuses `O_DIRECT`).
    pub(super) fn open(file: &File, len: u64) -> Option<Direct> {
        if len < MIN_LEN {
            return None;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            use std::os::unix::fs::OpenOptionsExt;
            if in_memory(file) {
                return None;
            }
            // The same open file, reopened through its descriptor: no path that could
            // have been replaced meanwhile is looked up again.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .ok()?;
            Some(Direct {
                file,
                refused: false.into(),
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = file;
            None
        }
    }

    /// Writes `buf` at `at` of the file: its aligned middle directly, the rest (and all of
    /// it, where `buf`'s address is not congruent to `at`) through `buffered`, the
    /// page-cache descriptor of the same file. Returns the bytes written directly.
    pub(super) fn write_at(&self, buffered: &File, at: u64, buf: &[u8]) -> std::io::Result<u64> {
        let (head, middle) = split(buf.as_ptr() as usize, at, buf.len());
        if middle == 0 || self.refused.load(std::sync::atomic::Ordering::Relaxed) {
            write_all_at(buffered, at, buf)?;
            return Ok(0);
        }
        write_all_at(buffered, at, &buf[..head])?;
        let direct = self.write_direct(buffered, at + head as u64, &buf[head..head + middle]);
        let (done, rest_at) = match direct {
            Ok(()) => (middle as u64, head + middle),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.refused
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                (0, head)
            }
            Err(e) => return Err(e),
        };
        write_all_at(buffered, at + rest_at as u64, &buf[rest_at..])?;
        Ok(done)
    }

    /// Writes all of `buf` (aligned in address, offset and length) at `at` directly; the
    /// rest of a short write, should it not be aligned, goes through `buffered`, the
    /// page-cache descriptor of the same file, which `O_DIRECT` keeps coherent.
    fn write_direct(&self, buffered: &File, at: u64, buf: &[u8]) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::FileExt;
            let mut done = 0;
            while done < buf.len() {
                let n = match self.file.write_at(&buf[done..], at + done as u64) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                done += n;
                if done < buf.len() && !done.is_multiple_of(ALIGN) {
                    return write_all_at(buffered, at + done as u64, &buf[done..]);
                }
            }
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (buffered, at, buf);
            unreachable!("no direct descriptor is opened off Linux")
        }
    }
}

/// For `len` bytes at address `addr` to be written at file offset `at`: the length of
/// the unaligned head, and of the aligned middle after it (0 where the address and the
/// offset are not congruent modulo [`ALIGN`], or no whole block lies in the range).
fn split(addr: usize, at: u64, len: usize) -> (usize, usize) {
    let align = ALIGN as u64;
    if !(addr as u64).wrapping_sub(at).is_multiple_of(align) {
        return (0, 0);
    }
    let start = at.next_multiple_of(align);
    let end = (at + len as u64) / align * align;
    if end <= start {
        return (0, 0);
    }
    ((start - at) as usize, (end - start) as usize)
}

/// The direct descriptors of one output's files (those that take direct writes).
#[derive(Default)]
pub(super) struct Outputs<'a> {
    files: Vec<(&'a File, Direct)>,
}

impl<'a> Outputs<'a> {
    /// Direct descriptors for the files of `out`, a run of `len` bytes in all.
    pub(super) fn open(out: &Joined<'a>, len: u64) -> Self {
        let files = out
            .parts()
            .iter()
            .filter_map(|p| Some((p.file, Direct::open(p.file, p.len.min(len))?)))
            .collect();
        Outputs { files }
    }

    /// Whether none of the output's files takes direct writes.
    pub(super) fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The direct descriptor of `file`, one of the output's, if it takes direct writes.
    pub(super) fn get(&self, file: &File) -> Option<&Direct> {
        self.files
            .iter()
            .find(|(f, _)| std::ptr::eq(*f, file))
            .map(|(_, d)| d)
    }
}

/// Whether `file` is on a file system held in memory (tmpfs, ramfs), where there is no
/// disk for a direct write to reach.
#[cfg(target_os = "linux")]
fn in_memory(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: the descriptor is open for the call (a borrowed `File`) and `st` is
    // writable memory of the type the call fills.
    let ok = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) } == 0;
    // SAFETY: zeroed is a valid `statfs`, and the call filled it where it succeeded.
    // `f_type`'s width differs between targets: the cast is not always a no-op.
    #[allow(clippy::unnecessary_cast)]
    let kind = unsafe { st.assume_init() }.f_type as i64;
    ok && matches!(kind, TMPFS_MAGIC | RAMFS_MAGIC)
}

/// A worker's buffer for batches, placed so that a batch's bytes lie at addresses
/// congruent to their output offsets modulo [`ALIGN`]: what lets [`Direct::write_at`]
/// write its middle directly without a copy.
#[derive(Default)]
pub(super) struct BatchBuf {
    mem: Vec<u8>,
}

impl BatchBuf {
    /// `len` bytes for a batch written at output offset `at` (their contents are
    /// whatever the last batch left).
    pub(super) fn get(&mut self, at: u64, len: usize) -> &mut [u8] {
        if self.mem.len() < len + ALIGN {
            self.mem.resize(len + ALIGN, 0);
        }
        let addr = self.mem.as_ptr() as usize as u64;
        let shift = (at.wrapping_sub(addr) % ALIGN as u64) as usize;
        &mut self.mem[shift..shift + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_congruent_range_has_an_aligned_middle() {
        const A: usize = ALIGN;
        // Congruent: the head up to the next block, whole blocks, the tail left over.
        assert_eq!(split(A + 100, 100, 3 * A), (A - 100, A * 2));
        assert_eq!(split(2 * A, 0, 3 * A + 5), (0, 3 * A));
        assert_eq!(split(5 * A + 7, 7, A), (0, 0));
        // Not congruent, or no whole block inside.
        assert_eq!(split(A + 1, 0, 8 * A), (0, 0));
        assert_eq!(split(A + 100, 100, A - 100), (0, 0));
        assert_eq!(split(0, 0, A - 1), (0, 0));
    }

    #[test]
    fn a_batch_buffer_places_bytes_at_their_offsets_modulo_the_alignment() {
        let mut b = BatchBuf::default();
        for (at, len) in [
            (0u64, 10usize),
            (4095, 1 << 20),
            (12_345_679, 77),
            (1 << 33, 5),
        ] {
            let s = b.get(at, len);
            assert_eq!(s.len(), len);
            assert_eq!((s.as_ptr() as u64).wrapping_sub(at) % ALIGN as u64, 0);
        }
    }

    /// A file on a disk: the crate's target directory (temporary directories may be
    /// tmpfs, where no direct descriptor is opened).
    #[cfg(target_os = "linux")]
    fn on_disk() -> tempfile::TempDir {
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        tempfile::tempdir_in(target).unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn batches_written_directly_and_through_the_cache_give_the_same_bytes() {
        use crate::rng::SplitMix64;
        let dir = on_disk();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let direct = Direct::open(&file, MIN_LEN).expect("a disk file takes direct writes");
        assert!(
            Direct::open(&file, MIN_LEN - 1).is_none(),
            "small outputs stay cached"
        );
        let mut rng = SplitMix64(7);
        let total = (5 << 20) + 12_345;
        let mut want = vec![0u8; total];
        want.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
        // Contiguous batches of random lengths, written in a shuffled order by two
        // threads: placed buffers (direct middles), and some at an odd address (all
        // through the cache).
        let mut cuts = vec![0usize];
        while *cuts.last().unwrap() < total {
            let n = 1 + (rng.next_u64() % (600 << 10)) as usize;
            cuts.push((cuts.last().unwrap() + n).min(total));
        }
        let mut jobs: Vec<(usize, usize, bool)> = cuts
            .windows(2)
            .map(|w| (w[0], w[1], rng.next_u64().is_multiple_of(4)))
            .collect();
        for i in (1..jobs.len()).rev() {
            jobs.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let direct_bytes = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for half in jobs.chunks(jobs.len().div_ceil(2)) {
                let (want, file, direct, direct_bytes) = (&want, &file, &direct, &direct_bytes);
                s.spawn(move || {
                    let mut buf = BatchBuf::default();
                    let mut odd = vec![0u8; (1 << 20) + ALIGN];
                    for &(a, b, misplaced) in half {
                        let bytes = if misplaced {
                            let addr = odd.as_ptr() as u64;
                            let shift = 1 + ((a as u64).wrapping_sub(addr) % ALIGN as u64) as usize;
                            let s = &mut odd[shift..shift + (b - a)];
                            s.copy_from_slice(&want[a..b]);
                            &*s
                        } else {
                            let s = buf.get(a as u64, b - a);
                            s.copy_from_slice(&want[a..b]);
                            &*s
                        };
                        let n = direct.write_at(file, a as u64, bytes).unwrap();
                        direct_bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
        let n = direct_bytes.into_inner();
        assert!(n > (2 << 20), "only {n} bytes went direct");
        assert_eq!(n % ALIGN as u64, 0);
    }
}
