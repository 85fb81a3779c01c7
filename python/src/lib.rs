//! The Python binding of deeplock: thin over the library, no scheme logic of its own.
//! Every operation that reads or transforms tensor data runs with the GIL released;
//! tensors are read into Python buffers allocated without initialisation and filled in
//! place, so a load holds one copy of the model.

use std::path::PathBuf;

use deeplock::engine::CpuEngine;
use deeplock::files::{self, Options};
use deeplock::format::TensorView;
use deeplock::memory::{self, Reader};
use deeplock::{checkpoint, key_file, output, CpuLocker, Dtype, Error, MasterKey};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

create_exception!(
    deeplock,
    DeeplockError,
    PyException,
    "Base of every deeplock error."
);
create_exception!(
    deeplock,
    WrongKeyError,
    DeeplockError,
    "The file was locked with another key."
);
create_exception!(
    deeplock,
    AuthenticationError,
    DeeplockError,
    "The file was changed after locking, or carries no authentication."
);
create_exception!(
    deeplock,
    NotLockedError,
    DeeplockError,
    "The file is not locked."
);
create_exception!(
    deeplock,
    AlreadyLockedError,
    DeeplockError,
    "The file is already locked."
);
create_exception!(
    deeplock,
    FormatError,
    DeeplockError,
    "The file is malformed or cannot be represented."
);
create_exception!(
    deeplock,
    OutputExistsError,
    DeeplockError,
    "The output exists and force was not given."
);

/// The library's error as the Python exception of its kind, with its one-line message
/// (never key material); where the message names a CLI flag, the argument instead.
fn py_err(e: Error) -> PyErr {
    let text = e.to_string();
    match e {
        Error::WrongKey { .. } => WrongKeyError::new_err(text),
        Error::Tampered { .. } | Error::Unauthenticated { .. } | Error::Checkpoint { .. } => {
            AuthenticationError::new_err(text)
        }
        Error::NotLocked { .. } => NotLockedError::new_err(text),
        Error::AlreadyLocked { .. } => AlreadyLockedError::new_err(text),
        Error::Format { .. } => FormatError::new_err(text),
        Error::OutputExists { .. } => {
            OutputExistsError::new_err(text.replace("pass --force", "pass force=True"))
        }
        Error::Plaintext { .. } => DeeplockError::new_err(text.replace(
            "(deeplock lock --exclude GLOB, --allow-plaintext GLOB)",
            "(exclude=[GLOB], allow_plaintext=[GLOB])",
        )),
        _ => DeeplockError::new_err(text),
    }
}

/// A secret 128-bit master key. Its `repr` shows only its key check value; it cannot be
/// pickled; its memory is zeroized when it is dropped.
#[pyclass(module = "deeplock", frozen)]
struct Key {
    key: MasterKey,
}

#[pymethods]
impl Key {
    /// A new random key from the operating system's generator.
    #[staticmethod]
    fn generate() -> PyResult<Key> {
        Ok(Key {
            key: MasterKey::generate().map_err(py_err)?,
        })
    }

    /// The key in the key file at `path` (32 hex characters and an optional newline).
    #[staticmethod]
    fn from_file(path: PathBuf) -> PyResult<Key> {
        let shown = path.display().to_string();
        let file = key_file::read(&path, &shown).map_err(py_err)?;
        Ok(Key { key: file.key })
    }

    /// The key in the key file named by the environment variable `var`.
    #[staticmethod]
    #[pyo3(signature = (var = "DEEPLOCK_KEY_FILE"))]
    fn from_env(var: &str) -> PyResult<Key> {
        let path = std::env::var_os(var).ok_or_else(|| {
            DeeplockError::new_err(format!(
                "the environment variable {var} is not set; set it to the path of a key file"
            ))
        })?;
        Key::from_file(PathBuf::from(path))
    }

    /// The key of 16 raw bytes `b` (from a licence server or an OS keychain).
    #[staticmethod]
    fn from_bytes(b: &[u8]) -> PyResult<Key> {
        let bytes: [u8; 16] = b.try_into().map_err(|_| {
            DeeplockError::new_err(format!("bad key: {} bytes given, a key is 16", b.len()))
        })?;
        Ok(Key {
            key: MasterKey::from_bytes(bytes),
        })
    }

    /// The key written as 32 hex characters.
    #[staticmethod]
    fn from_hex(s: &str) -> PyResult<Key> {
        Ok(Key {
            key: MasterKey::from_hex(s).map_err(py_err)?,
        })
    }

    /// Writes the key to a new key file at `path` (mode 0600); never overwrites.
    fn save(&self, path: PathBuf) -> PyResult<()> {
        key_file::save(&self.key, &path, &path.display().to_string()).map_err(py_err)
    }

    /// The key check value, 16 hex characters: names the key without revealing it.
    #[getter]
    fn kcv(&self) -> String {
        deeplock::hex::encode(&self.key.kcv())
    }

    fn __repr__(&self) -> String {
        format!("deeplock.Key(kcv={})", self.kcv())
    }

    fn __str__(&self) -> String {
        self.__repr__()
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(pyo3::exceptions::PyTypeError::new_err(
            "a deeplock.Key cannot be pickled: keep keys in key files",
        ))
    }

    fn __eq__(&self, other: &Key) -> bool {
        self.key.as_bytes() == other.key.as_bytes()
    }
}

/// A raw pointer into a Python buffer that this call alone holds, so that it can be
/// filled with the GIL released.
struct Fill(*mut u8, usize);
// SAFETY: the buffer is a new object no other thread has seen; it stays alive (owned by
// the caller's `Bound`) until the fill returns.
unsafe impl Send for Fill {}

impl Fill {
    /// The buffer as a slice, for as long as its caller keeps the buffer alive.
    ///
    /// SAFETY: see the type.
    unsafe fn into_slice<'a>(self) -> &'a mut [u8] {
        if self.1 == 0 {
            return &mut [];
        }
        std::slice::from_raw_parts_mut(self.0, self.1)
    }
}

/// Asks the kernel to back the 2 MiB-aligned inside of the `n` bytes at `ptr` with huge
/// pages before they are first written: a 1 GiB model is then 512 page faults rather
/// than 262,144 (each one zeroing a page), much of a load's time. Advice only: where
/// the system declines, nothing changes.
fn advise_huge_pages(ptr: *mut u8, n: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + n) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside the buffer just allocated; MADV_HUGEPAGE
            // changes no contents and no mapping.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, n);
}

/// The two buffer types handed to Python: a new object of `n` bytes, not initialised,
/// and the address of its bytes.
#[derive(Clone, Copy)]
enum Buffer {
    /// `bytearray`, what NumPy and torch view without a copy.
    ByteArray,
    /// `bytes`, what the runtimes that load a model from memory take.
    Bytes,
}

/// A new `bytearray` (or `bytes`) of `n` bytes, not initialised, filled by `fill` with
/// the GIL released.
fn new_buffer<'py>(
    py: Python<'py>,
    kind: Buffer,
    n: usize,
    fill: impl FnOnce(&mut [u8]) -> deeplock::Result<()> + Send,
) -> PyResult<Bound<'py, PyAny>> {
    let len = isize::try_from(n).map_err(|_| DeeplockError::new_err("tensor too large"))?;
    // SAFETY: a NULL source asks for an uninitialised buffer of `len` bytes; the new
    // reference is owned by the `Bound`. Filling a new `bytes` before any other code
    // sees it is what CPython's own constructors do.
    let (obj, ptr) = unsafe {
        let obj = Bound::from_owned_ptr_or_err(
            py,
            match kind {
                Buffer::ByteArray => {
                    pyo3::ffi::PyByteArray_FromStringAndSize(std::ptr::null(), len)
                }
                Buffer::Bytes => pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), len),
            },
        )?;
        let ptr = match kind {
            Buffer::ByteArray => pyo3::ffi::PyByteArray_AsString(obj.as_ptr()),
            Buffer::Bytes => pyo3::ffi::PyBytes_AsString(obj.as_ptr()),
        } as *mut u8;
        (obj, ptr)
    };
    if ptr.is_null() {
        return Err(PyErr::fetch(py));
    }
    advise_huge_pages(ptr, n);
    let target = Fill(ptr, n);
    py.detach(move || {
        // SAFETY: see `Fill`.
        let buf = unsafe { target.into_slice() };
        fill(buf)
    })
    .map_err(py_err)?;
    Ok(obj)
}

/// A locked model file opened under its key: key and header tag checked on opening,
/// each tensor's tag when it is read.
#[pyclass(module = "deeplock", frozen)]
struct NativeReader {
    reader: Reader,
}

#[pymethods]
impl NativeReader {
    #[new]
    fn new(py: Python<'_>, path: PathBuf, key: &Key) -> PyResult<Self> {
        let key = key.key.clone();
        let reader = py
            .detach(move || Reader::open(&path, &key))
            .map_err(py_err)?;
        Ok(NativeReader { reader })
    }

    /// `(name, dtype, shape)` of every tensor, in file order.
    fn tensors(&self) -> Vec<(String, &'static str, Vec<usize>)> {
        self.reader
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.dtype.name(), t.shape.clone()))
            .collect()
    }

    /// The user's metadata (deeplock's own left out).
    fn metadata(&self) -> Vec<(String, String)> {
        self.reader.user_metadata()
    }

    /// Tensor `name`'s bytes, checked against its tag, then unlocked, as a bytearray.
    fn read<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let i = self.reader.position(name).ok_or_else(|| {
            pyo3::exceptions::PyKeyError::new_err(format!("no tensor named {name:?} in this file"))
        })?;
        let n = self.reader.tensors()[i].len() as usize;
        let reader = &self.reader;
        new_buffer(py, Buffer::ByteArray, n, move |buf| {
            reader.read_into(i, buf)
        })
    }
}

/// The whole locked model file at `path`, checked and unlocked in memory.
#[pyfunction]
fn unlock_to_bytes<'py>(py: Python<'py>, path: PathBuf, key: &Key) -> PyResult<Bound<'py, PyAny>> {
    let k = key.key.clone();
    let (layout, reader) = py
        .detach(move || {
            let reader = Reader::open(&path, &k)?;
            Ok((reader.unlocked_layout(), reader))
        })
        .map_err(py_err)?;
    let (layout, len) = layout.map_err(|e| match reader.data_files().is_empty() {
        true => py_err(e),
        false => FormatError::new_err(format!(
            "{e}; deeplock.unlock_with_data unlocks such a model with its data files"
        )),
    })?;
    new_buffer(py, Buffer::Bytes, len, |buf| {
        reader.unlocked_into(&layout, buf)
    })
}

/// The locked model at `path` with the files its weights lie in besides it (ONNX
/// external data), checked and unlocked in memory: the model file's bytes, and each
/// data file's bytes by the name the model gives it.
#[pyfunction]
fn unlock_with_data<'py>(
    py: Python<'py>,
    path: PathBuf,
    key: &Key,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyDict>)> {
    let k = key.key.clone();
    let (model, data) = py
        .detach(move || Reader::open(&path, &k)?.unlocked_files())
        .map_err(py_err)?;
    let files = PyDict::new(py);
    for (name, bytes) in &data {
        files.set_item(name, PyBytes::new(py, bytes))?;
    }
    Ok((PyBytes::new(py, &model), files))
}

/// Writes `tensors` (`(name, dtype, shape, data)` each) as a locked safetensors file.
#[pyfunction]
#[pyo3(signature = (tensors, path, key, metadata = None, force = false))]
fn save_file(
    py: Python<'_>,
    tensors: Vec<(String, String, Vec<usize>, Vec<u8>)>,
    path: PathBuf,
    key: &Key,
    metadata: Option<Vec<(String, String)>>,
    force: bool,
) -> PyResult<usize> {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let dtype = Dtype::parse(dtype).ok_or_else(|| {
                FormatError::new_err(format!("tensor {name:?}: unknown dtype {dtype:?}"))
            })?;
            Ok(TensorView {
                name,
                dtype,
                shape,
                data,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let metadata = metadata.unwrap_or_default();
    let pairs: Vec<(&str, &str)> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let k = key.key.clone();
    py.detach(move || memory::save_locked(&views, &pairs, &path, &k, force))
        .map_err(py_err)
}

fn report<'py>(py: Python<'py>, r: &files::Report) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("files", r.files)?;
    d.set_item("copied", r.copied)?;
    d.set_item("tensors", r.tensors)?;
    d.set_item("transformed", r.transformed)?;
    d.set_item("data_bytes", r.data_bytes)?;
    d.set_item("transformed_bytes", r.transformed_bytes)?;
    d.set_item("clear_bool", r.clear_bool)?;
    d.set_item("unauthenticated", r.unauthenticated.clone())?;
    d.set_item("seconds", r.seconds)?;
    Ok(d)
}

/// Locks the model at `src` (a file or checkpoint directory) into `dst`.
#[pyfunction]
#[pyo3(signature = (src, dst, key, only = None, force = false, exclude = None, allow_plaintext = None))]
#[allow(clippy::too_many_arguments)]
fn lock_file<'py>(
    py: Python<'py>,
    src: PathBuf,
    dst: PathBuf,
    key: &Key,
    only: Option<Vec<String>>,
    force: bool,
    exclude: Option<Vec<String>>,
    allow_plaintext: Option<Vec<String>>,
) -> PyResult<Bound<'py, PyDict>> {
    let k = key.key.clone();
    let opts = Options {
        only: only.unwrap_or_default(),
        force,
        exclude: exclude.unwrap_or_default(),
        allow_plaintext: allow_plaintext.unwrap_or_default(),
        ..Options::default()
    };
    let r = py
        .detach(move || {
            let mut engine = CpuEngine::new(CpuLocker::new());
            files::lock(&src, &dst, &k, &mut engine, &opts)
        })
        .map_err(py_err)?;
    report(py, &r)
}

/// Unlocks the locked model at `src` into `dst`, every tag checked first.
#[pyfunction]
#[pyo3(signature = (src, dst, key, force = false))]
fn unlock_file<'py>(
    py: Python<'py>,
    src: PathBuf,
    dst: PathBuf,
    key: &Key,
    force: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let k = key.key.clone();
    let opts = Options {
        force,
        ..Options::default()
    };
    let r = py
        .detach(move || {
            let mut engine = CpuEngine::new(CpuLocker::new());
            files::unlock(&src, &dst, &k, &mut engine, &opts)
        })
        .map_err(py_err)?;
    report(py, &r)
}

/// Checks every locked file at `path` under `key`, writing nothing.
#[pyfunction]
fn verify<'py>(py: Python<'py>, path: PathBuf, key: &Key) -> PyResult<Bound<'py, PyDict>> {
    let k = key.key.clone();
    let v = py
        .detach(move || files::verify(&path, &k))
        .map_err(py_err)?;
    let d = PyDict::new(py);
    d.set_item("files", v.files)?;
    d.set_item("tensors", v.tensors)?;
    d.set_item("bytes", v.bytes)?;
    d.set_item("checkpoint", v.checkpoint)?;
    d.set_item("unauthenticated", v.unauthenticated)?;
    Ok(d)
}

/// What each model file at `path` holds: locked or not, scheme, tensors.
#[pyfunction]
fn inspect<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyList>> {
    let found = py.detach(move || files::inspect(&path)).map_err(py_err)?;
    let out = PyList::empty(py);
    for f in found {
        let d = PyDict::new(py);
        d.set_item("path", &f.path)?;
        d.set_item("locked", f.lock.is_some())?;
        d.set_item(
            "authenticated",
            f.lock.as_ref().is_some_and(|l| l.is_authenticated()),
        )?;
        d.set_item("scheme", f.lock.as_ref().map(|l| l.scheme()))?;
        d.set_item(
            "metadata",
            PyDict::from_sequence(&PyList::new(py, &f.user_metadata)?.into_any())?,
        )?;
        let tensors = PyList::empty(py);
        for (t, stored) in f.tensors.iter().zip(&f.stored) {
            let e = PyDict::new(py);
            e.set_item("name", &t.name)?;
            e.set_item("dtype", t.dtype.name())?;
            e.set_item("shape", t.shape.clone())?;
            // A GGUF block type: dtype U8 and shape the byte length describe its bytes.
            e.set_item("stored_type", stored.as_ref().map(|s| s.name))?;
            e.set_item("stored_shape", stored.as_ref().map(|s| s.shape.clone()))?;
            e.set_item("locked", f.is_locked(&t.name))?;
            tensors.append(e)?;
        }
        d.set_item("tensors", tensors)?;
        out.append(d)?;
    }
    Ok(out)
}

/// The model files of the locked checkpoint directory `dir`, its record checked.
#[pyfunction]
fn checked_shards(py: Python<'_>, dir: PathBuf, key: &Key) -> PyResult<Vec<PathBuf>> {
    let k = key.key.clone();
    let (shards, _) = py
        .detach(move || files::checked_shards(&dir, &k))
        .map_err(py_err)?;
    Ok(shards)
}

/// Joins the shards of the checkpoint directory `dir`, each locked apart under `key`, by
/// writing its checkpoint record from their headers (each shard's key and header tag
/// checked, every index file checked against the shards). Returns the number of shards.
#[pyfunction]
#[pyo3(signature = (dir, key, force = false, exclude = None))]
fn join(
    py: Python<'_>,
    dir: PathBuf,
    key: &Key,
    force: bool,
    exclude: Option<Vec<String>>,
) -> PyResult<usize> {
    let k = key.key.clone();
    let opts = Options {
        force,
        exclude: exclude.unwrap_or_default(),
        ..Options::default()
    };
    py.detach(move || files::join(&dir, &k, &opts))
        .map_err(py_err)
}

/// The files of the checkpoint directory `src` that `lock_file` writes into its output,
/// listed and refused as `lock_file` lists and refuses them: `files` as `(path, kind)`
/// (paths relative to `src`; kind `"shard"` to lock, `"copy"` to copy as it is), `dirs`
/// (parents first), `skipped` as `(path, why)`, `plaintext` (weights copied in the clear,
/// as allowed).
#[pyfunction]
#[pyo3(signature = (src, exclude = None, allow_plaintext = None, key_file = None))]
fn lock_listing<'py>(
    py: Python<'py>,
    src: PathBuf,
    exclude: Option<Vec<String>>,
    allow_plaintext: Option<Vec<String>>,
    key_file: Option<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = Options {
        exclude: exclude.unwrap_or_default(),
        allow_plaintext: allow_plaintext.unwrap_or_default(),
        key_file,
        ..Options::default()
    };
    let listing = py
        .detach(move || files::lock_listing(&src, &opts))
        .map_err(py_err)?;
    let d = PyDict::new(py);
    let entries: Vec<(PathBuf, &str)> = listing
        .files
        .iter()
        .map(|e| {
            let kind = match e.kind {
                files::Kind::Model(_) => "shard",
                _ => "copy",
            };
            (e.rel.clone(), kind)
        })
        .collect();
    let plaintext: Vec<PathBuf> = listing
        .files
        .iter()
        .filter(|e| matches!(e.kind, files::Kind::Weights(_)))
        .map(|e| e.rel.clone())
        .collect();
    let skipped: Vec<(PathBuf, &str)> = listing
        .skipped
        .iter()
        .map(|(p, why)| (p.clone(), why.describe()))
        .collect();
    d.set_item("files", entries)?;
    d.set_item("dirs", listing.dirs)?;
    d.set_item("skipped", skipped)?;
    d.set_item("plaintext", plaintext)?;
    Ok(d)
}

/// Builds the output directory `dst` of the input directory `src` as `lock_file` does:
/// refused where it would be (an existing `dst` without `force`, `dst` inside `src` or
/// holding it, `dst` the key file or holding it); `fill(tmp)` writes the output into a
/// new owner-only directory beside `dst`, which is given `src`'s permissions and moved
/// to `dst` (exchanged with it, with `force`) only if `fill` returns, and deleted with
/// everything in it if `fill` raises (its exception is raised again). Returns what
/// `fill` returned.
#[pyfunction]
#[pyo3(signature = (src, dst, fill, force = false, key_file = None))]
fn write_dir(
    src: PathBuf,
    dst: PathBuf,
    fill: &Bound<'_, PyAny>,
    force: bool,
    key_file: Option<PathBuf>,
) -> PyResult<Py<PyAny>> {
    if !src.is_dir() {
        return Err(DeeplockError::new_err(format!(
            "{} is not a directory; pass a checkpoint directory",
            src.display()
        )));
    }
    let protected: Vec<PathBuf> = key_file.into_iter().collect();
    output::check(&src, &dst, force, &protected).map_err(py_err)?;
    let mut raised = None;
    let built = output::write_dir(&dst, force, &output::Access::Like(src.clone()), |tmp| {
        fill.call1((tmp,)).map(Bound::unbind).map_err(|e| {
            raised = Some(e);
            Error::Invalid("the output's fill raised".into())
        })
    });
    built.map_err(|e| raised.take().unwrap_or_else(|| py_err(e)))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Key>()?;
    m.add_class::<NativeReader>()?;
    m.add_function(wrap_pyfunction!(unlock_to_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(unlock_with_data, m)?)?;
    m.add_function(wrap_pyfunction!(save_file, m)?)?;
    m.add_function(wrap_pyfunction!(lock_file, m)?)?;
    m.add_function(wrap_pyfunction!(unlock_file, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(checked_shards, m)?)?;
    m.add_function(wrap_pyfunction!(join, m)?)?;
    m.add_function(wrap_pyfunction!(lock_listing, m)?)?;
    m.add_function(wrap_pyfunction!(write_dir, m)?)?;
    m.add("CHECKPOINT_RECORD", checkpoint::RECORD_NAME)?;
    m.add("DeeplockError", py.get_type::<DeeplockError>())?;
    m.add("WrongKeyError", py.get_type::<WrongKeyError>())?;
    m.add("AuthenticationError", py.get_type::<AuthenticationError>())?;
    m.add("NotLockedError", py.get_type::<NotLockedError>())?;
    m.add("AlreadyLockedError", py.get_type::<AlreadyLockedError>())?;
    m.add("FormatError", py.get_type::<FormatError>())?;
    m.add("OutputExistsError", py.get_type::<OutputExistsError>())?;
    Ok(())
}
