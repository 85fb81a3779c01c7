//! A model's files read or written as one run of bytes: the model file, then the data
//! files its container names ([`super::Container::data_files`]: a TF.js model's weight
//! files), one after another. A container's byte ranges are offsets in that run, so the
//! streamer, the verifier and the in-memory readers handle a model of several files as
//! they handle one file, and a tensor split across two files as one tensor.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::Container;
use crate::error::{Error, Result};

/// One file of a run: the file, its path for messages, and how many bytes of the run it
/// holds (`u64::MAX` for the last file of a run of unknown length).
#[derive(Clone, Copy)]
pub struct Part<'a> {
    /// The file, open for positional reads or writes.
    pub file: &'a File,
    /// Its path, for messages.
    pub path: &'a Path,
    /// Bytes of the run it holds.
    pub len: u64,
}

/// Files read or written as one run of bytes, in order.
#[derive(Clone)]
pub struct Joined<'a> {
    parts: Vec<Part<'a>>,
}

impl<'a> Joined<'a> {
    /// A run of one file, of any length.
    pub fn one(file: &'a File, path: &'a Path) -> Self {
        Joined {
            parts: vec![Part {
                file,
                path,
                len: u64::MAX,
            }],
        }
    }

    /// A run of `parts`, in order.
    pub fn new(parts: Vec<Part<'a>>) -> Self {
        Joined { parts }
    }

    /// Its files, in order.
    pub fn parts(&self) -> &[Part<'a>] {
        &self.parts
    }

    /// Calls `f` for each file that bytes `at..at + len` of the run lie in, with the
    /// file, the offset in it and the range of the `len` bytes it holds.
    pub fn each(
        &self,
        at: u64,
        len: usize,
        mut f: impl FnMut(&Part<'a>, u64, std::ops::Range<usize>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let (mut start, mut done) = (0u64, 0usize);
        for part in &self.parts {
            if done == len {
                break;
            }
            let end = start.saturating_add(part.len);
            let here = at + done as u64;
            if here < end {
                let n = ((end - here).min((len - done) as u64)) as usize;
                f(part, here - start, done..done + n)?;
                done += n;
            }
            start = end;
        }
        if done < len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// The path of the file byte `at` of the run lies in, for messages.
    pub fn path_at(&self, at: u64) -> &'a Path {
        let mut start = 0u64;
        for part in &self.parts {
            start = start.saturating_add(part.len);
            if at < start {
                return part.path;
            }
        }
        self.parts.last().map_or(Path::new(""), |p| p.path)
    }
}

/// The files of a model opened for reading: the model file, then its data files, each
/// checked to hold exactly the bytes its container says.
pub struct ModelFiles {
    files: Vec<(PathBuf, File, u64)>,
}

impl ModelFiles {
    /// The model file `file` at `path`, which `container` describes, and the data files
    /// it names, opened (regular files only) and checked against their expected lengths.
    pub fn open(path: &Path, file: File, container: &dyn Container) -> Result<Self> {
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut files = vec![(path.to_path_buf(), file, len)];
        let (mut total, mut group_start, mut group) = (0u64, 0u64, 0usize);
        for d in container.data_files() {
            let (f, got) = super::open_data_file(path, &d.name)?;
            total = total.saturating_add(got);
            files.push((d.path.clone(), f, got));
            if let Some(end) = d.group_end {
                if total != end {
                    return Err(Error::format(
                        path,
                        format!(
                            "the weight files of its manifest group {} (the last {:?}) hold {} bytes where its weights take {}; a file was cut short, replaced or is missing its neighbours",
                            group + 1,
                            d.name,
                            total - group_start,
                            end.saturating_sub(group_start)
                        ),
                    ));
                }
                group_start = total;
                group += 1;
            }
        }
        Ok(ModelFiles { files })
    }

    /// The model file.
    pub fn main(&self) -> &File {
        &self.files[0].1
    }

    /// Each file's length, the model file's first.
    pub fn lens(&self) -> Vec<u64> {
        self.files.iter().map(|f| f.2).collect()
    }

    /// The files as one run of bytes.
    pub fn joined(&self) -> Joined<'_> {
        Joined::new(
            self.files
                .iter()
                .map(|(path, file, len)| Part {
                    file,
                    path,
                    len: *len,
                })
                .collect(),
        )
    }

    /// Reads exactly `buf.len()` bytes of the run from `at`, without a shared position
    /// (readers of different tensors may run at once).
    pub fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<()> {
        let joined = self.joined();
        joined
            .each(at, buf.len(), |p, off, r| {
                read_exact_at(p.file, off, &mut buf[r])
            })
            .map_err(|e| {
                let path = joined.path_at(at);
                match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => {
                        Error::format(path, "truncated: the file ended inside a tensor")
                    }
                    _ => Error::io(path, e),
                }
            })
    }
}

/// Reads exactly `buf.len()` bytes of `file` from `at`, without a shared position.
pub fn read_exact_at(file: &File, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, at)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = file;
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(buf)
    }
}

/// Writes all of `buf` into `file` at `at`, without a shared position.
pub fn write_all_at(file: &File, at: u64, buf: &[u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.write_all_at(buf, at)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = file;
        f.seek(SeekFrom::Start(at))?;
        f.write_all(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_split_over_the_files_it_lies_in() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            (File::open(&p).unwrap(), p)
        };
        let (a, pa) = mk("a", b"0123");
        let (b, pb) = mk("b", b"");
        let (c, pc) = mk("c", b"456789");
        let j = Joined::new(vec![
            Part {
                file: &a,
                path: &pa,
                len: 4,
            },
            Part {
                file: &b,
                path: &pb,
                len: 0,
            },
            Part {
                file: &c,
                path: &pc,
                len: 6,
            },
        ]);
        for at in 0..10u64 {
            for len in 0..=(10 - at as usize) {
                let mut buf = vec![0u8; len];
                j.each(at, len, |p, off, r| read_exact_at(p.file, off, &mut buf[r]))
                    .unwrap();
                assert_eq!(buf, &b"0123456789"[at as usize..at as usize + len]);
            }
        }
        let mut buf = [0u8; 2];
        let e = j.each(9, 2, |p, off, r| read_exact_at(p.file, off, &mut buf[r]));
        assert_eq!(e.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(j.path_at(3), pa);
        assert_eq!(j.path_at(4), pc);
    }
}
