//! Locked models in memory, for the loaders of every front end (Python's NumPy, torch,
//! transformers and Keras helpers; in-memory runtimes): read a locked file's tensors
//! into the caller's buffers, each checked against its v2 tag before it is unlocked in
//! place, and write a locked file straight from tensors in memory. No plaintext ever
//! reaches a file, and nothing unverified is ever handed out.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::auth::{Tag, CHUNK_LEN};
use crate::authenticate::{Checker, Sealer};
use crate::error::{Error, Result};
use crate::format::{
    self, safetensors::Safetensors, Container, DataFile, Layout, Piece, TensorView,
};
use crate::header::TensorEntry;
use crate::key::MasterKey;
use crate::output::{self, Access};
use crate::scheme::{Direction, Salt, TensorCipher};
use crate::CpuLocker;

/// A file's bytes, by the name its model gives it.
pub type NamedBytes = (String, Vec<u8>);

/// A locked v2 model file opened for reading under its key: the key and the header tag
/// are checked when it is opened, each tensor's tag when it is read.
pub struct Reader {
    file: format::ModelFiles,
    path: PathBuf,
    container: Box<dyn Container>,
    checker: Checker,
    ciphers: Vec<Option<TensorCipher>>,
    locker: CpuLocker,
}

impl Reader {
    /// Opens the locked model file at `path` (any container format) under `key`: an
    /// error if it is not locked, was locked with another key, carries no tags
    /// (scheme v1) or its header was changed after locking.
    pub fn open(path: &Path, key: &MasterKey) -> Result<Self> {
        let (file, container) = format::open_path(path)?;
        let record = container.lock_record()?.ok_or_else(|| Error::NotLocked {
            path: path.to_path_buf(),
        })?;
        if !record.is_authenticated() {
            record.check_key(key, path)?;
            return Err(Error::Unauthenticated {
                path: path.to_path_buf(),
            });
        }
        let checker = Checker::new(&*container, &record, key, path)?;
        let names = container.tensors().iter().map(|t| t.name.as_str());
        let ciphers = record.ciphers(key, names);
        Ok(Reader {
            file,
            path: path.to_path_buf(),
            container,
            checker,
            ciphers,
            locker: CpuLocker::new(),
        })
    }

    /// The file's tensors, in the order their bytes lie in it.
    pub fn tensors(&self) -> &[TensorEntry] {
        self.container.tensors()
    }

    /// The user's metadata (deeplock's own left out), sorted by key.
    pub fn user_metadata(&self) -> Vec<(String, String)> {
        self.container.user_metadata()
    }

    /// The index of tensor `name` in [`Reader::tensors`].
    pub fn position(&self, name: &str) -> Option<usize> {
        self.tensors().iter().position(|t| t.name == name)
    }

    /// Reads tensor `i` into `buf` (exactly its size), checks its tag, then unlocks it
    /// in place on all cores. On any error `buf` is zeroed: no byte of a tensor that
    /// failed its check is left in it.
    pub fn read_into(&self, i: usize, buf: &mut [u8]) -> Result<()> {
        let result = self.fill(i, buf);
        if result.is_err() {
            buf.fill(0);
        }
        result
    }

    fn fill(&self, i: usize, buf: &mut [u8]) -> Result<()> {
        let range = self.container.byte_range(i);
        if buf.len() as u64 != range.end - range.start {
            return Err(Error::Invalid(format!(
                "tensor {:?} holds {} bytes, not the {} of the buffer given",
                self.tensors()[i].name,
                range.end - range.start,
                buf.len()
            )));
        }
        if buf.is_empty() {
            return self.checker.check_bytes(i, buf);
        }
        // One pass per 1 MiB chunk of the tag, on all cores: read it, tag it, unlock it
        // while it is in cache. Unlocked bytes of a tensor whose tag then fails are
        // zeroed by the caller, so none leave the library.
        let mut tagger = self.checker.tagger(i);
        let index = tagger.descriptor().index;
        let cipher = self.ciphers[i].as_ref();
        let tags: Vec<Result<Tag>> = buf
            .par_chunks_mut(CHUNK_LEN)
            .enumerate()
            .map(|(c, chunk)| {
                let at = (c * CHUNK_LEN) as u64;
                self.file.read_at(range.start + at, chunk)?;
                let tag = self.checker.key().chunk_tag(index, c as u64, chunk);
                if let Some(cipher) = cipher {
                    self.locker.apply(cipher, Direction::Unlock, at, chunk);
                }
                Ok(tag)
            })
            .collect();
        for (c, tag) in tags.into_iter().enumerate() {
            tagger.insert(c as u64, tag?)?;
        }
        self.checker.finish(i, tagger)
    }

    /// The files the model's weights lie in besides its own (ONNX external data, TF.js
    /// weight files); none for a model of one file.
    pub fn data_files(&self) -> &[DataFile] {
        self.container.data_files()
    }

    /// The layout of the unlocked file and its length in bytes; refused for a model
    /// whose weights lie in other files too (see [`Reader::unlocked_files`]).
    pub fn unlocked_layout(&self) -> Result<(Layout, usize)> {
        if let Some(d) = self.container.data_files().first() {
            return Err(Error::format(
                &self.path,
                format!(
                    "it keeps weights in {} other file(s) beside it ({:?}, ...); unlock it together with them",
                    self.container.data_files().len(),
                    d.name
                ),
            ));
        }
        self.whole_layout()
    }

    /// The layout of the unlocked model, all its files one after another, and its length.
    fn whole_layout(&self) -> Result<(Layout, usize)> {
        let layout = self.container.layout(None)?;
        let len = layout.len(&*self.container);
        let len = usize::try_from(len).map_err(|_| too_large(&self.path))?;
        Ok((layout, len))
    }

    /// The whole unlocked file, as `deeplock unlock` would write it, in memory: for
    /// runtimes that load a model from bytes (ONNX Runtime, LiteRT, a GGUF reader). A
    /// model whose weights lie in other files too is refused: see
    /// [`Reader::unlocked_files`].
    pub fn unlocked(&self) -> Result<Vec<u8>> {
        let (layout, len) = self.unlocked_layout()?;
        let mut out = vec![0u8; len];
        self.unlocked_into(&layout, &mut out)?;
        Ok(out)
    }

    /// Every file of the unlocked model, in memory, as `deeplock unlock` would write
    /// them: the model file, then each file its weights lie in besides it (ONNX external
    /// data, TF.js weight files) by the name the model gives it; for runtimes that take
    /// a model's files from memory (ONNX Runtime's external initializers from files in
    /// memory).
    pub fn unlocked_files(&self) -> Result<(Vec<u8>, Vec<NamedBytes>)> {
        let (layout, len) = self.whole_layout()?;
        let mut whole = vec![0u8; len];
        self.unlocked_into(&layout, &mut whole)?;
        let lens = self.file.lens();
        let mut data = Vec::with_capacity(lens.len() - 1);
        for (d, n) in self.container.data_files().iter().zip(&lens[1..]).rev() {
            let at = whole.len() - *n as usize;
            data.push((d.name.clone(), whole.split_off(at)));
        }
        data.reverse();
        Ok((whole, data))
    }

    /// Writes the unlocked file of `layout` (from [`Reader::unlocked_layout`]) into
    /// `out`, exactly its length; zeroed on any error.
    pub fn unlocked_into(&self, layout: &Layout, out: &mut [u8]) -> Result<()> {
        let result = self.assemble(layout, out);
        if result.is_err() {
            out.fill(0);
        }
        result
    }

    fn assemble(&self, layout: &Layout, out: &mut [u8]) -> Result<()> {
        if layout.len(&*self.container) != out.len() as u64 {
            return Err(Error::Invalid(
                "the buffer does not have the unlocked file's length".into(),
            ));
        }
        let mut at = 0usize;
        for piece in &layout.pieces {
            let n = piece.len(&*self.container) as usize;
            let dst = &mut out[at..at + n];
            match piece {
                Piece::Bytes(b) => dst.copy_from_slice(b),
                Piece::Tensor(i) => self.read_into(*i, dst)?,
                Piece::Copy(r) => self.file.read_at(r.start, dst)?,
            }
            at += n;
        }
        Ok(())
    }
}

fn too_large(path: &Path) -> Error {
    Error::format(path, "too large to hold in this process's memory")
}

/// Unlocks the locked model file at `path` under `key` into memory, checked first:
/// the bytes `deeplock unlock` would write, never written to a file.
pub fn unlock_to_vec(path: &Path, key: &MasterKey) -> Result<Vec<u8>> {
    Reader::open(path, key)?.unlocked()
}

/// Writes `tensors` with the string `metadata` as a safetensors file at `path`, locked
/// under `key` (scheme v2, every tensor but BOOL ones, as `deeplock lock` would), through
/// a temporary file renamed into place; an existing `path` is replaced only with
/// `force`. Returns the number of tensors locked.
pub fn save_locked(
    tensors: &[TensorView<'_>],
    metadata: &[(&str, &str)],
    path: &Path,
    key: &MasterKey,
    force: bool,
) -> Result<usize> {
    if metadata
        .iter()
        .any(|(k, _)| crate::lock_info::is_owned_key(k))
    {
        return Err(Error::Invalid(
            "metadata keys starting with \"deeplock.\" are deeplock's own; rename them".into(),
        ));
    }
    let mut bytes = format::safetensors::serialize(tensors, metadata, path)?;
    let input = Safetensors::parse(&bytes, path)?;
    let salt = Salt::generate()?;
    let first = TensorCipher::for_tensor(key, &salt, "");
    let ciphers: Vec<Option<TensorCipher>> = input
        .tensors()
        .iter()
        .map(|t| (t.dtype != crate::Dtype::BOOL).then(|| first.with_nonce(&salt, &t.name)))
        .collect();
    let locked = input
        .tensors()
        .iter()
        .zip(&ciphers)
        .filter(|(_, c)| c.is_some())
        .map(|(t, _)| t.name.clone())
        .collect();
    let (mut record, mut sealer) = Sealer::new(key, salt, locked, input.tensors())?;
    let streamed = input.layout(Some(&record))?;
    let locker = CpuLocker::new();
    for (i, cipher) in ciphers.iter().enumerate() {
        let r = input.byte_range(i);
        let data = &mut bytes[r.start as usize..r.end as usize];
        if let Some(c) = cipher {
            locker.apply_parallel(c, Direction::Lock, 0, data);
        }
        sealer.feed(i, data)?;
    }
    sealer.finish(&mut record, input.tensors(), &streamed.metadata)?;
    let layout = input.layout(Some(&record))?;
    output::write_file(path, force, &Access::Readable, |out| {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(out);
        for piece in &layout.pieces {
            let part = match piece {
                Piece::Bytes(b) => &b[..],
                Piece::Tensor(i) => {
                    let r = input.byte_range(*i);
                    &bytes[r.start as usize..r.end as usize]
                }
                Piece::Copy(r) => &bytes[r.start as usize..r.end as usize],
            };
            w.write_all(part).map_err(|e| Error::io(path, e))?;
        }
        w.flush().map_err(|e| Error::io(path, e))
    })?;
    Ok(ciphers.iter().flatten().count())
}
