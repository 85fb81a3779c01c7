//! Model containers: the seam where a file format plugs into lock, unlock, verify and
//! inspect.
//!
//! A [`Container`] says which tensors a file holds and where their bytes lie, reads and
//! writes the lock record in the format's own way (safetensors: `__metadata__` keys),
//! and describes the output of a lock or an unlock as a [`Layout`]: the pieces of the
//! new file in order, each new bytes (a rewritten header), a tensor of the input
//! (transformed or passed through), or a range of the input copied as it is. The
//! streamer in [`crate::files`] writes any layout the same way, so a format that keeps
//! its tensors in place (safetensors, ONNX, TFLite, GGUF) only has to say where they
//! are and how its header changes.

pub mod gguf;
mod joined;
pub mod onnx;
pub mod safetensors;
pub mod tfjs;
pub mod tflite;

pub(crate) use joined::{read_exact_at, write_all_at};
pub use joined::{Joined, ModelFiles, Part};

/// A format's own type of a tensor stored in blocks (GGUF's `Q4_K`, ...), which no
/// [`crate::Dtype`] names: its name and its shape in elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredType {
    /// The format's name of the type.
    pub name: &'static str,
    /// The shape, in elements (the tensor's entry gives its length in bytes).
    pub shape: Vec<usize>,
}

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::TensorEntry;
use crate::lock_info::LockInfo;

/// A tensor in memory, borrowed: what a writer serializes (and, for the loaders to come,
/// what one hands out) without copying its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorView<'a> {
    /// The name.
    pub name: &'a str,
    /// The element type.
    pub dtype: Dtype,
    /// The shape.
    pub shape: &'a [usize],
    /// The bytes, little-endian elements, row-major.
    pub data: &'a [u8],
}

/// A model file whose tensors deeplock can lock in place. `Send + Sync`, so that an
/// opened file can be read from several threads (the front ends' loaders).
pub trait Container: Send + Sync {
    /// The tensors, in the order their bytes lie in the file.
    fn tensors(&self) -> &[TensorEntry];

    /// Where the bytes of tensor `i` (of [`Container::tensors`]) lie in the file.
    fn byte_range(&self, i: usize) -> Range<u64>;

    /// The lock record the file carries: `None` if it is not locked, an error if it
    /// carries a damaged one.
    fn lock_record(&self) -> Result<Option<LockInfo>>;

    /// The user's metadata (everything but deeplock's own), sorted by key.
    fn user_metadata(&self) -> Vec<(String, String)>;

    /// Every metadata entry, deeplock's included, as read: what v2's header tag binds.
    fn metadata(&self) -> BTreeMap<String, String>;

    /// The file written with `record` added (`Some`, for lock) or with its lock record
    /// removed (`None`, for unlock); an error if the format cannot hold it.
    fn layout(&self, record: Option<&LockInfo>) -> Result<Layout>;

    /// How the format stores tensor `i`, where its [`TensorEntry`] describes only its
    /// bytes (a GGUF block type: dtype `U8`, shape its length): for `inspect` to show.
    fn stored_type(&self, _i: usize) -> Option<&StoredType> {
        None
    }

    /// Tensors the file holds whose bytes cannot be locked in place (ONNX's varint
    /// `int64_data`, ...), each with why: left in the clear, not in
    /// [`Container::tensors`], reported by `inspect` and `lock`.
    fn left_clear(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The other files the model's bytes lie in, after the model file itself (a TF.js
    /// model's weight files): [`Container::byte_range`] counts offsets over the model
    /// file and these, one after another ([`Joined`]), and a lock or unlock writes each
    /// of them beside its output, the same length. None for a model of one file.
    fn data_files(&self) -> &[DataFile] {
        &[]
    }
}

/// A file a model's bytes lie in besides the model file ([`Container::data_files`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFile {
    /// Its name as the model gives it, relative to the model file's directory
    /// (`/`-separated).
    pub name: String,
    /// Its path: the model file's directory joined with `name`.
    pub path: PathBuf,
    /// For the last file of a group of files that together hold a known number of the
    /// model's bytes (a TF.js manifest group): the offset, over all the data files, at
    /// which the group ends, which the files' lengths must meet exactly.
    pub group_end: Option<u64>,
}

/// The pieces of an output file, in order, and the metadata it will carry.
#[derive(Debug)]
pub struct Layout {
    /// The pieces, in order.
    pub pieces: Vec<Piece>,
    /// Every metadata entry of the output (the lock record's included), which v2's
    /// header tag binds.
    pub metadata: BTreeMap<String, String>,
}

/// One piece of an output file.
#[derive(Debug)]
pub enum Piece {
    /// New bytes (a rewritten header, an added record).
    Bytes(Vec<u8>),
    /// The bytes of the input's tensor `i`, locked, unlocked or passed through.
    Tensor(usize),
    /// A range of the input file, copied as it is.
    Copy(Range<u64>),
}

impl Piece {
    /// Bytes this piece of an output of `container` holds.
    pub fn len(&self, container: &dyn Container) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::Tensor(i) => {
                let r = container.byte_range(*i);
                r.end - r.start
            }
            Piece::Copy(r) => r.end - r.start,
        }
    }
}

impl Layout {
    /// Bytes the output will hold.
    pub fn len(&self, container: &dyn Container) -> u64 {
        self.pieces.iter().map(|p| p.len(container)).sum()
    }

    /// Whether the output is empty (never, for a real format).
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }
}

/// Feeds `h` every byte of `from..to` outside `ranges` (sorted, disjoint), in order,
/// read with `read` at most 1 MiB at a time; with `lengths`, each gap (the last one too,
/// empty or not) preceded by its length as LE64, as ONNX's skeleton binds it. How every
/// format's structure digest (`deeplock.onnx.skeleton`, `tflite.structure`,
/// `gguf.structure`) takes the bytes a lock leaves as they are.
pub(crate) fn hash_gaps(
    h: &mut sha2::Sha256,
    from: u64,
    to: u64,
    ranges: impl IntoIterator<Item = Range<u64>>,
    lengths: bool,
    read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<()> {
    use sha2::Digest;
    let mut buf = Vec::new();
    let mut gap = |a: u64, b: u64, h: &mut sha2::Sha256| -> Result<()> {
        if lengths {
            h.update((b - a).to_le_bytes());
        }
        let mut p = a;
        while p < b {
            let n = (b - p).min(1 << 20);
            buf.resize(n as usize, 0);
            read(p, &mut buf)?;
            h.update(&buf);
            p += n;
        }
        Ok(())
    };
    let mut at = from;
    for r in ranges {
        gap(at.min(r.start), r.start, h)?;
        at = at.max(r.end);
    }
    gap(at.min(to), to, h)
}

/// Whether `rel` is a plain relative path to a file beside a model (a TF.js weight file,
/// an ONNX external data file): `/`-separated, not empty, not starting with `/`, with no
/// empty, `.` or `..` component and no NUL, so that it names a file in the model's
/// directory or below it and nothing else.
pub fn plain_relative_path(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.starts_with('/')
        && !rel.contains('\0')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Opens `path` for reading if it is a regular file (after following links), refusing
/// FIFOs, devices and directories with a clear message without waiting on them.
pub fn open_regular(path: &Path) -> Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    // A FIFO opened without O_NONBLOCK waits for a writer; this returns at once and
    // changes nothing for a regular file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(crate::output::not_regular(path, &meta, None));
    }
    Ok(file)
}

/// Opens the model at `path` in its format: its files (the model file and the data
/// files it names, each checked to be there with the length it needs), and what it
/// holds.
pub fn open_path(path: &Path) -> Result<(ModelFiles, Box<dyn Container>)> {
    let mut file = open_regular(path)?;
    let container = open(&mut file, path)?;
    Ok((ModelFiles::open(path, file, &*container)?, container))
}

/// A file format deeplock locks in place. Each has a module here implementing
/// [`Container`]; adding a format is a variant, its detection in [`Format::detect`] and
/// its arm in [`open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// safetensors: an 8-byte header length, a JSON header, the tensors' bytes.
    Safetensors,
    /// TensorFlow Lite (LiteRT): a flatbuffer with the identifier `TFL3`.
    Tflite,
    /// ONNX: a protobuf `ModelProto`, its initializers locked where they lie.
    Onnx,
    /// GGUF (llama.cpp): the magic `GGUF`, key-values, tensor infos, the data section.
    Gguf,
    /// TensorFlow.js: a `model.json` and the weight files its manifest names.
    Tfjs,
}

impl Format {
    /// Bytes of a file's beginning that [`Format::detect`] looks at (at most).
    pub const HEAD_LEN: usize = 128;

    /// The format of a file of `len` bytes that begins with `head` (its first
    /// [`Format::HEAD_LEN`] bytes, or all of a shorter file) and is named with the
    /// extension `ext` (lower case, without the dot): by content first, so that a model
    /// renamed still opens as what it is, then by extension.
    pub fn detect(head: &[u8], len: u64, ext: Option<&str>) -> Option<Format> {
        if safetensors::looks_like(head, len) {
            return Some(Format::Safetensors);
        }
        if gguf::looks_like(head) {
            return Some(Format::Gguf);
        }
        if tflite::looks_like(head) {
            return Some(Format::Tflite);
        }
        if onnx::looks_like(head, len) {
            return Some(Format::Onnx);
        }
        match ext {
            Some("safetensors") => Some(Format::Safetensors),
            Some("tflite") => Some(Format::Tflite),
            Some("onnx") => Some(Format::Onnx),
            Some("gguf") => Some(Format::Gguf),
            _ => None,
        }
    }

    /// The format's name, as messages and `inspect` give it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::Tflite => "TensorFlow Lite",
            Format::Onnx => "ONNX",
            Format::Gguf => "GGUF",
            Format::Tfjs => "TensorFlow.js",
        }
    }
}

/// The format of the regular file `file` at `path`, as [`Format::detect`] tells it from
/// its first bytes and its name, or a TF.js `model.json` ([`tfjs::is_model`], which
/// reads a `.json` file beginning with `{`); `None` for none deeplock locks. Leaves
/// `file` where it was.
pub fn detect(file: &mut File, path: &Path) -> Result<Option<Format>> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = Vec::with_capacity(Format::HEAD_LEN);
    let at = file.stream_position().map_err(|e| Error::io(path, e))?;
    file.seek(SeekFrom::Start(0))
        .and_then(|_| {
            (&mut *file)
                .take(Format::HEAD_LEN as u64)
                .read_to_end(&mut head)
        })
        .and_then(|_| file.seek(SeekFrom::Start(at)))
        .map_err(|e| Error::io(path, e))?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if let Some(f) = Format::detect(&head, len, ext.as_deref()) {
        return Ok(Some(f));
    }
    Ok(tfjs::is_model(file, path, &head, len)?.then_some(Format::Tfjs))
}

/// Opens the model file `file` at `path` as [`open`] does, but for the lengths of its
/// data files ([`Container::data_files`]), taken from `lens` by name instead of from the
/// files beside it: to read back an output whose data files are still temporaries.
pub fn open_with_data(
    file: &mut File,
    path: &Path,
    lens: &BTreeMap<String, u64>,
) -> Result<Box<dyn Container>> {
    open_with(file, path, &mut |name| {
        lens.get(name).copied().ok_or_else(|| {
            Error::format(
                path,
                format!("names the data file {name:?}, which was not written"),
            )
        })
    })
}

/// Opens the model file at `path`, opened as `file` (a regular file), in its format.
/// A file of no format deeplock knows is read as safetensors, whose parser says what is
/// wrong with it.
pub fn open(file: &mut File, path: &Path) -> Result<Box<dyn Container>> {
    open_with(file, path, &mut |name| Ok(open_data_file(path, name)?.1))
}

/// Opens the model file `file` at `path` in its format, a format whose layout depends on
/// its data files' lengths (ONNX external data) taking them from `lens`, by name.
fn open_with(
    file: &mut File,
    path: &Path,
    lens: &mut dyn FnMut(&str) -> Result<u64>,
) -> Result<Box<dyn Container>> {
    match detect(file, path)?.unwrap_or(Format::Safetensors) {
        Format::Safetensors => Ok(Box::new(safetensors::Safetensors::read(file, path)?)),
        Format::Tflite => Ok(Box::new(tflite::Tflite::read(file, path)?)),
        Format::Onnx => Ok(Box::new(onnx::Onnx::read(file, path, lens)?)),
        Format::Gguf => Ok(Box::new(gguf::Gguf::read(file, path)?)),
        Format::Tfjs => Ok(Box::new(tfjs::Tfjs::read(file, path)?)),
    }
}

/// Opens the data file `name` of the model file at `model` (a path relative to the
/// model's directory), a regular file, with its length; a missing one is refused with
/// what to do.
pub(crate) fn open_data_file(model: &Path, name: &str) -> Result<(File, u64)> {
    let path = model.parent().unwrap_or(Path::new("")).join(name);
    let file = open_regular(&path).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::format(
                model,
                format!(
                    "its data file {name:?} is missing (looked for {}); copy the model together with the files beside it",
                    path.display()
                ),
            )
        }
        e => e,
    })?;
    let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
    Ok((file, len))
}
