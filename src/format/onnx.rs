//! ONNX as a [`Container`]: a protobuf `ModelProto`, read with the small wire reader of
//! [`wire`] (every field's offsets kept, every length checked once at parse time). Each
//! initializer whose bytes lie contiguous in the file (`raw_data`, or `float_data` /
//! `double_data` packed in one run) is a tensor locked in place; the others are left in
//! the clear and reported. The lock record is a run of `metadata_props` entries appended
//! at the end of the `ModelProto` (protobuf concatenates repeated fields, wherever they
//! lie), so every other byte keeps its offset and unlock cuts them off. `docs/SPEC.md`,
//! "ONNX", defines the mapping.

pub mod wire;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use self::wire::{Reader, Source, Value};
use super::{Container, DataFile, Layout, Piece};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::TensorEntry;
use crate::lock_info::{self, LockInfo};

/// The metadata entry v2's header tag binds for an ONNX file (never stored): the
/// SHA-256, in hex, of every byte of the model but the locked tensors' and the record's.
pub const SKELETON_KEY: &str = "deeplock.onnx.skeleton";

/// Deepest nesting of graphs in graphs (If/Loop bodies) accepted.
const MAX_DEPTH: u32 = 32;

/// `ModelProto.metadata_props`.
const MODEL_METADATA: u32 = 14;

/// Whether a file of `len` bytes beginning with `head` is an ONNX model, whatever its
/// name: its first field is `ir_version` (field 1, a varint from 1 to 64, as every
/// writer puts it first), followed by another field of `ModelProto` of the right wire
/// type.
pub fn looks_like(head: &[u8], len: u64) -> bool {
    if head.first() != Some(&0x08) {
        return false;
    }
    let Some(&v) = head.get(1) else { return false };
    if !(1..=64).contains(&v) || len < 4 {
        return false;
    }
    let Some(&tag) = head.get(2) else {
        return false;
    };
    let (number, wire) = (tag >> 3, tag & 7);
    match number {
        5 => wire == 0,
        2 | 3 | 4 | 6 | 7 | 8 | 14 => wire == 2,
        // Field numbers 16 and up take a two-byte tag.
        _ => head.get(3).is_some_and(|&hi| {
            let n = u32::from(tag & 0x7f) >> 3 | u32::from(hi) << 4;
            tag & 0x80 != 0 && matches!(n, 20 | 25 | 26) && wire == 2
        }),
    }
}

/// An initializer left in the clear, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clear {
    /// Its name (qualified as [`Container::tensors`] names them).
    pub name: String,
    /// Why its bytes cannot be locked in place.
    pub why: &'static str,
}

/// An ONNX model's parse: its lockable tensors, what is left clear, its metadata and
/// where its lock record begins.
pub struct Onnx {
    path: PathBuf,
    tensors: Vec<TensorEntry>,
    clear: Vec<Clear>,
    user: Vec<(String, String)>,
    record: BTreeMap<String, String>,
    /// Where the lock record's entries begin: the file's length if it has none.
    record_start: u64,
    skeleton: String,
    /// The model file's length as read (with its record, if locked).
    file_len: u64,
    /// The external data files, in order (see [`Container::data_files`]); each one's
    /// `group_end` is where it ends in the run of them all.
    data: Vec<DataFile>,
}

/// What a walk over a model collects.
struct Walk {
    tensors: Vec<TensorEntry>,
    clear: Vec<Clear>,
    names: HashSet<String>,
    /// Initializers whose data lie in an external file.
    external: Vec<External>,
}

/// An initializer whose bytes lie in an external data file.
struct External {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    /// The file, as `location` names it (relative to the model's directory).
    location: String,
    offset: u64,
    len: u64,
}

impl Onnx {
    /// Reads and validates the ONNX model in `file` (at `path`), the length of each
    /// external data file it names given by `lens` (see [`super::open`]).
    pub fn read(
        file: &File,
        path: &Path,
        lens: &mut dyn FnMut(&str) -> Result<u64>,
    ) -> Result<Self> {
        let mut src = wire::FileWindow::new(file, path)?;
        Self::from_source(&mut src, path, lens)
    }

    /// Parses a whole ONNX model held in memory (one that keeps no data in external
    /// files: those are found beside a model read with [`Onnx::read`]).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let mut lens = |location: &str| -> Result<u64> {
            Err(Error::format(
                path,
                format!("it keeps data in the external file {location:?}; read it from its file"),
            ))
        };
        Self::from_source(&mut wire::Slice(bytes), path, &mut lens)
    }

    fn from_source(
        src: &mut dyn Source,
        path: &Path,
        lens: &mut dyn FnMut(&str) -> Result<u64>,
    ) -> Result<Self> {
        let mut r = Reader::new(src, path);
        let len = r.len();
        let fields = r.fields(0, len)?;
        let mut walk = Walk {
            tensors: Vec::new(),
            clear: Vec::new(),
            names: HashSet::new(),
            external: Vec::new(),
        };
        let mut ir_version = false;
        let mut graph = false;
        // Every metadata entry: key, value, and whether it is deeplock's.
        let mut user = Vec::new();
        let mut record = BTreeMap::new();
        let mut record_start: Option<u64> = None;
        for (k, f) in fields.iter().enumerate() {
            match (f.number, f.value) {
                (1, Value::Varint(_)) => ir_version = true,
                (7, Value::Len(s, e)) => {
                    if graph {
                        return Err(r.bad("the model holds two graphs"));
                    }
                    graph = true;
                    graph_at(&mut r, &mut walk, s, e, "", 0)?;
                }
                (MODEL_METADATA, Value::Len(s, e)) => {
                    let (key, value) = entry(&mut r, s, e)?;
                    if lock_info::is_owned_key(&key) {
                        if record.insert(key.clone(), value).is_some() {
                            return Err(corrupt(path, format!("{key} appears twice")));
                        }
                        record_start.get_or_insert(f.start);
                    } else {
                        if record_start.is_some() {
                            return Err(corrupt(path, "other fields follow the lock record"));
                        }
                        user.push((key, value));
                    }
                }
                (20, Value::Len(s, e)) => {
                    for g in r.fields(s, e)? {
                        if let (1 | 2, Value::Len(gs, ge)) = (g.number, g.value) {
                            let part = if g.number == 1 {
                                "initialization"
                            } else {
                                "algorithm"
                            };
                            graph_at(
                                &mut r,
                                &mut walk,
                                gs,
                                ge,
                                &format!("training_info[{k}]/{part}/"),
                                1,
                            )?;
                        }
                    }
                }
                (25, Value::Len(s, e)) => function(&mut r, &mut walk, s, e)?,
                (1 | 7 | MODEL_METADATA | 20 | 25, v) => {
                    return Err(r.bad(format!(
                        "ModelProto field {} holds {v:?}, not its type",
                        f.number
                    )))
                }
                _ => {}
            }
            if record_start.is_some() && f.number != MODEL_METADATA {
                return Err(corrupt(path, "other fields follow the lock record"));
            }
        }
        if !ir_version {
            return Err(r.bad("the ModelProto has no ir_version"));
        }
        if !graph {
            return Err(r.bad("the ModelProto has no graph"));
        }
        let record_start = record_start.unwrap_or(len);
        let mut tensors = walk.tensors;
        tensors.sort_by_key(|t| (t.start, t.end));
        let mut hash = Sha256::new();
        let mut read = |at: u64, buf: &mut [u8]| {
            let mut k = 0;
            r.each_window(at, at + buf.len() as u64, |w| {
                buf[k..k + w.len()].copy_from_slice(w);
                k += w.len();
            })
        };
        let ranges = tensors.iter().map(|t| t.start..t.end);
        super::hash_gaps(&mut hash, 0, record_start, ranges, true, &mut read)?;
        let data = external_files(walk.external, record_start, lens, &mut tensors, path)?;
        for (d, len) in data.iter().zip(data_lens(&data)) {
            hash.update(len.to_le_bytes());
            hash.update((d.name.len() as u64).to_le_bytes());
            hash.update(d.name.as_bytes());
        }
        user.sort();
        Ok(Onnx {
            path: path.to_path_buf(),
            tensors,
            clear: walk.clear,
            user,
            record,
            record_start,
            skeleton: crate::hex::encode(&hash.finalize()),
            file_len: len,
            data,
        })
    }

    /// Where the byte at `offset` of the unlocked model and its data files (a
    /// [`TensorEntry`]'s offsets) lies in the run of the model file as read (its record
    /// included) and its data files.
    fn run_offset(&self, offset: u64) -> u64 {
        match offset < self.record_start {
            true => offset,
            false => offset - self.record_start + self.file_len,
        }
    }

    /// The initializers left in the clear, and why.
    pub fn clear(&self) -> &[Clear] {
        &self.clear
    }

    fn metadata_with(&self, record: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut m = record.clone();
        m.insert(SKELETON_KEY.into(), self.skeleton.clone());
        m
    }
}

/// The external data files of `external` (sorted by name), each file's length from
/// `lens`, and their tensors added to `tensors` at their offsets over the unlocked model
/// (`model_len` bytes) and the files before theirs, each checked to lie in its file and
/// overlap no other.
fn external_files(
    mut external: Vec<External>,
    model_len: u64,
    lens: &mut dyn FnMut(&str) -> Result<u64>,
    tensors: &mut Vec<TensorEntry>,
    path: &Path,
) -> Result<Vec<DataFile>> {
    let bad = |why: String| Error::format(path, why);
    external.sort_by(|a, b| (&a.location, a.offset, a.len).cmp(&(&b.location, b.offset, b.len)));
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut data = Vec::<DataFile>::new();
    // The current file's start in the run of them all, and its length.
    let (mut base, mut len) = (0u64, 0u64);
    let mut file_end = 0u64;
    for x in external {
        if data.last().is_none_or(|d| d.name != x.location) {
            base = base
                .checked_add(len)
                .ok_or_else(|| bad("its external data files are too large".into()))?;
            len = lens(&x.location)?;
            let end = base
                .checked_add(len)
                .ok_or_else(|| bad("its external data files are too large".into()))?;
            data.push(DataFile {
                name: x.location.clone(),
                path: dir.join(&x.location),
                group_end: Some(end),
            });
            file_end = 0;
        }
        let end = x.offset.checked_add(x.len).filter(|&e| e <= len).ok_or_else(|| {
            bad(format!(
                "initializer {:?} lies at bytes {}..{} of {:?}, which holds {len}; the data file was cut short or is not this model's",
                x.name,
                x.offset,
                x.offset.saturating_add(x.len),
                x.location
            ))
        })?;
        if x.offset < file_end {
            return Err(bad(format!(
                "initializer {:?} overlaps another in {:?}",
                x.name, x.location
            )));
        }
        file_end = end;
        let at = model_len + base;
        tensors.push(TensorEntry {
            name: x.name,
            dtype: x.dtype,
            shape: x.shape,
            start: at + x.offset,
            end: at + end,
        });
    }
    Ok(data)
}

/// The length of each of `data`, [`external_files`]' data files, from where each ends.
fn data_lens(data: &[DataFile]) -> impl Iterator<Item = u64> + '_ {
    let ends = data
        .iter()
        .map(|d| d.group_end.expect("every ONNX data file ends a group"));
    ends.scan(0, |start, end| Some(end - std::mem::replace(start, end)))
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::format(
        path,
        format!("corrupt deeplock metadata: {what}; the file was damaged or edited after locking"),
    )
}

/// A `StringStringEntryProto` at `s..e`: its key and value.
fn entry(r: &mut Reader, s: u64, e: u64) -> Result<(String, String)> {
    let (mut key, mut value) = (None, None);
    for f in r.fields(s, e)? {
        let slot = match f.number {
            1 => &mut key,
            2 => &mut value,
            _ => continue,
        };
        let Value::Len(a, b) = f.value else {
            return Err(r.bad(format!("a metadata entry at byte {s} holds a non-string")));
        };
        if slot.is_some() {
            return Err(r.bad(format!("a metadata entry at byte {s} holds a field twice")));
        }
        *slot = Some(r.string(a, b)?);
    }
    Ok((key.unwrap_or_default(), value.unwrap_or_default()))
}

/// A `FunctionProto`: its nodes' subgraphs.
fn function(r: &mut Reader, walk: &mut Walk, s: u64, e: u64) -> Result<()> {
    let fields = r.fields(s, e)?;
    let (mut name, mut domain) = (String::new(), String::new());
    for f in &fields {
        if let (1 | 10, Value::Len(a, b)) = (f.number, f.value) {
            let text = r.string(a, b)?;
            if f.number == 1 {
                name = text
            } else {
                domain = text
            }
        }
    }
    let prefix = format!("function:{domain}:{name}/");
    for (j, f) in fields.iter().enumerate() {
        if let (7, Value::Len(a, b)) = (f.number, f.value) {
            node(r, walk, a, b, &prefix, j, 1)?;
        }
    }
    Ok(())
}

/// A `GraphProto` at `s..e`, whose initializers are named `prefix` + their name.
fn graph_at(
    r: &mut Reader,
    walk: &mut Walk,
    s: u64,
    e: u64,
    prefix: &str,
    depth: u32,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(r.bad(format!("graphs nested over {MAX_DEPTH} deep")));
    }
    let mut nodes = 0;
    for f in r.fields(s, e)? {
        match (f.number, f.value) {
            (5, Value::Len(a, b)) => tensor(r, walk, a, b, prefix)?,
            (1, Value::Len(a, b)) => {
                node(r, walk, a, b, prefix, nodes, depth)?;
                nodes += 1;
            }
            (15, Value::Len(..)) => {
                walk.clear.push(Clear {
                    name: format!("{prefix}#sparse@{}", f.start),
                    why: "a sparse initializer (values and indices stay in the clear)",
                });
            }
            (1 | 5 | 15, _) => {
                return Err(r.bad(format!("GraphProto field {} of a wrong type", f.number)))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A `NodeProto` (number `index` of its graph): its attributes' subgraphs, named
/// `prefix` + `NODE/ATTRIBUTE/` (`NODE` the node's name, or `#index` if it has none;
/// `ATTRIBUTE[k]` for the `k`-th graph of a list).
fn node(
    r: &mut Reader,
    walk: &mut Walk,
    s: u64,
    e: u64,
    prefix: &str,
    index: usize,
    depth: u32,
) -> Result<()> {
    let fields = r.fields(s, e)?;
    let mut name = None;
    for f in &fields {
        if let (3, Value::Len(a, b)) = (f.number, f.value) {
            if name.is_some() {
                return Err(r.bad(format!("the node at byte {s} has two names")));
            }
            name = Some(r.string(a, b)?);
        }
    }
    let label = match name {
        Some(n) if !n.is_empty() => n,
        _ => format!("#{index}"),
    };
    for f in &fields {
        let (5, Value::Len(a, b)) = (f.number, f.value) else {
            continue;
        };
        let attr = r.fields(a, b)?;
        let mut attr_name = None;
        for g in &attr {
            if let (1, Value::Len(x, y)) = (g.number, g.value) {
                if attr_name.is_some() {
                    return Err(r.bad(format!("the attribute at byte {a} has two names")));
                }
                attr_name = Some(r.string(x, y)?);
            }
        }
        let attr_name = attr_name.unwrap_or_default();
        let mut graphs = 0;
        let mut single = false;
        for g in &attr {
            match (g.number, g.value) {
                (6, Value::Len(x, y)) => {
                    if single {
                        return Err(r.bad(format!("the attribute at byte {a} holds two graphs")));
                    }
                    single = true;
                    graph_at(
                        r,
                        walk,
                        x,
                        y,
                        &format!("{prefix}{label}/{attr_name}/"),
                        depth + 1,
                    )?;
                }
                (11, Value::Len(x, y)) => {
                    graph_at(
                        r,
                        walk,
                        x,
                        y,
                        &format!("{prefix}{label}/{attr_name}[{graphs}]/"),
                        depth + 1,
                    )?;
                    graphs += 1;
                }
                (5 | 10, Value::Len(..)) => walk.clear.push(Clear {
                    name: format!("{prefix}{label}/{attr_name}"),
                    why: "a tensor in a node attribute (a Constant's value)",
                }),
                _ => {}
            }
        }
    }
    Ok(())
}

/// The element type and bits per element of ONNX `data_type` `t`: a [`Dtype`] where
/// one is the same type, `None` for the others (tagged as `U8`).
fn data_type(t: u64) -> Option<(Option<Dtype>, u64)> {
    use Dtype::*;
    Some(match t {
        1 => (Some(F32), 32),
        2 => (Some(U8), 8),
        3 => (Some(I8), 8),
        4 => (Some(U16), 16),
        5 => (Some(I16), 16),
        6 => (Some(I32), 32),
        7 => (Some(I64), 64),
        9 => (Some(BOOL), 8),
        10 => (Some(F16), 16),
        11 => (Some(F64), 64),
        12 => (Some(U32), 32),
        13 => (Some(U64), 64),
        14 => (Some(C64), 64),
        15 => (None, 128),
        16 => (Some(BF16), 16),
        17 => (Some(F8_E4M3), 8),
        18 | 20 => (None, 8),
        19 => (Some(F8_E5M2), 8),
        21 | 22 => (None, 4),
        23 => (Some(F4), 4),
        24 => (Some(F8_E8M0), 8),
        25 | 26 => (None, 2),
        _ => return None,
    })
}

/// Sets a field read once: an error (`twice`) if it was already set.
fn once<T>(slot: &mut Option<T>, value: T, twice: impl FnOnce() -> Error) -> Result<()> {
    match slot.replace(value) {
        Some(_) => Err(twice()),
        None => Ok(()),
    }
}

/// An initializer (`TensorProto`) at `s..e`.
fn tensor(r: &mut Reader, walk: &mut Walk, s: u64, e: u64, prefix: &str) -> Result<()> {
    let mut dims: Vec<u64> = Vec::new();
    let (mut dtype, mut name, mut raw, mut location) = (None, None, None, None);
    let (mut float_runs, mut double_runs) = (Vec::new(), Vec::new());
    let (mut unpacked, mut varints, mut strings) = (false, false, false);
    let mut external_data = Vec::new();
    let twice =
        |r: &Reader, what: &str| r.bad(format!("the tensor at byte {s} holds {what} twice"));
    for f in r.fields(s, e)? {
        match (f.number, f.value) {
            (1, Value::Varint(v)) => dims.push(v),
            (1, Value::Len(a, b)) => {
                let mut at = a;
                while at < b {
                    let (v, next) = r.varint(at, b)?;
                    dims.push(v);
                    at = next;
                }
            }
            (2, Value::Varint(v)) => {
                let new = v;
                once(&mut dtype, new, || twice(r, "data_type"))?
            }
            (3, _) => {
                return Err(r.bad(format!(
                    "the tensor at byte {s} is segmented, which deeplock does not lock"
                )))
            }
            (4, Value::Len(a, b)) => float_runs.push(a..b),
            (10, Value::Len(a, b)) => double_runs.push(a..b),
            (4, Value::Fixed32) | (10, Value::Fixed64) => unpacked = true,
            (5 | 7 | 11, Value::Varint(_) | Value::Len(..)) => varints = true,
            (6, Value::Len(..)) => strings = true,
            (8, Value::Len(a, b)) => {
                let new = r.string(a, b)?;
                once(&mut name, new, || twice(r, "a name"))?
            }
            (9, Value::Len(a, b)) => {
                let new = a..b;
                once(&mut raw, new, || twice(r, "raw_data"))?
            }
            (13, Value::Len(a, b)) => external_data.push(entry(r, a, b)?),
            (14, Value::Varint(v)) => {
                let new = v;
                once(&mut location, new, || twice(r, "data_location"))?
            }
            (1..=11 | 13 | 14, v) => {
                return Err(r.bad(format!(
                    "TensorProto field {} at byte {} holds {v:?}, not its type",
                    f.number, f.start
                )))
            }
            _ => {}
        }
    }
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(r.bad(format!("the initializer at byte {s} has no name")));
    };
    let name = format!("{prefix}{name}");
    if !walk.names.insert(name.clone()) {
        return Err(r.bad(format!("two initializers are named {name:?}")));
    }
    let t = dtype.unwrap_or(0);
    let Some((known, bits)) = data_type(t) else {
        return Err(r.bad(format!(
            "initializer {name:?} has data_type {t}, which holds no fixed-width numbers"
        )));
    };
    let mut count = 1u64;
    for &d in &dims {
        if d > i64::MAX as u64 {
            return Err(r.bad(format!("initializer {name:?} has a negative dimension")));
        }
        count = count
            .checked_mul(d)
            .ok_or_else(|| r.bad(format!("initializer {name:?} has more elements than 2^64")))?;
    }
    let want = count
        .checked_mul(bits)
        .map(|b| b.div_ceil(8))
        .ok_or_else(|| r.bad(format!("initializer {name:?} is too large")))?;
    let typed = !float_runs.is_empty() || !double_runs.is_empty() || unpacked || varints || strings;
    if location == Some(1) {
        if raw.is_some() || typed {
            return Err(r.bad(format!(
                "initializer {name:?} keeps its data in an external file and holds data too"
            )));
        }
        let x = external(r, &name, &external_data, want)?;
        let (dtype, shape) = dtype_shape(r, &name, known, dims, want)?;
        walk.external.push(External {
            name,
            dtype,
            shape,
            location: x.0,
            offset: x.1,
            len: want,
        });
        return Ok(());
    }
    let range = match raw {
        Some(_) if typed => {
            return Err(r.bad(format!(
                "initializer {name:?} holds both raw_data and typed data"
            )));
        }
        Some(range) => Some(range),
        None if unpacked || float_runs.len() + double_runs.len() > 1 => {
            walk.clear.push(Clear {
                name,
                why:
                    "float_data or double_data not packed in one run: its bytes are not contiguous",
            });
            return Ok(());
        }
        None if varints => {
            walk.clear.push(Clear { name, why: "int32_data, int64_data or uint64_data: varints, whose bytes cannot be changed in place" });
            return Ok(());
        }
        None if strings => {
            walk.clear.push(Clear {
                name,
                why: "string_data",
            });
            return Ok(());
        }
        None if float_runs.len() == 1 && matches!(t, 1 | 14) => float_runs.pop(),
        None if double_runs.len() == 1 && matches!(t, 11 | 15) => double_runs.pop(),
        None if !float_runs.is_empty() || !double_runs.is_empty() => {
            return Err(r.bad(format!("initializer {name:?} of data_type {t} holds float_data or double_data, which it cannot")));
        }
        None => None,
    };
    let Some(range) = range else {
        if count != 0 {
            return Err(r.bad(format!(
                "initializer {name:?} holds no data for its {count} elements"
            )));
        }
        return Ok(());
    };
    if range.end - range.start != want {
        return Err(r.bad(format!(
            "initializer {name:?} holds {} bytes, but its shape and type need {want}",
            range.end - range.start
        )));
    }
    let (dtype, shape) = dtype_shape(r, &name, known, dims, want)?;
    walk.tensors.push(TensorEntry {
        name,
        dtype,
        shape,
        start: range.start,
        end: range.end,
    });
    Ok(())
}

/// A tensor's dtype and shape in v2's descriptors: its own where deeplock names its
/// type, else `U8` of its `want` bytes.
fn dtype_shape(
    r: &Reader,
    name: &str,
    known: Option<Dtype>,
    dims: Vec<u64>,
    want: u64,
) -> Result<(Dtype, Vec<usize>)> {
    let (dtype, shape) = match known {
        Some(d) => (d, dims),
        None => (Dtype::U8, vec![want]),
    };
    let shape = shape
        .into_iter()
        .map(usize::try_from)
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| {
            r.bad(format!(
                "initializer {name:?} is too large for this machine"
            ))
        })?;
    Ok((dtype, shape))
}

/// The `location` and `offset` of an external initializer's `external_data` entries,
/// its `length` (if given) checked against the `want` bytes its shape and type need.
fn external(
    r: &Reader,
    name: &str,
    entries: &[(String, String)],
    want: u64,
) -> Result<(String, u64)> {
    let get = |key: &str| -> Result<Option<&str>> {
        let mut found = entries.iter().filter(|(k, _)| k == key);
        let first = found.next().map(|(_, v)| v.as_str());
        if found.next().is_some() {
            return Err(r.bad(format!(
                "initializer {name:?} gives its external {key} twice"
            )));
        }
        Ok(first)
    };
    let number = |key: &str| -> Result<Option<u64>> {
        get(key)?
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    r.bad(format!(
                        "initializer {name:?} has the external {key} {v:?}, not a number"
                    ))
                })
            })
            .transpose()
    };
    let Some(location) = get("location")? else {
        return Err(r.bad(format!(
            "initializer {name:?} keeps its data in an external file but names none (no location)"
        )));
    };
    if !super::plain_relative_path(location) || location.contains('\\') {
        return Err(r.bad(format!(
            "initializer {name:?} names the external file {location:?}, not a plain relative path (no '..', '\\', or empty parts); save the model with its data beside it"
        )));
    }
    if let Some(len) = number("length")? {
        if len != want {
            return Err(r.bad(format!(
                "initializer {name:?} gives an external length of {len} bytes, but its shape and type need {want}"
            )));
        }
    }
    Ok((location.to_owned(), number("offset")?.unwrap_or(0)))
}

/// `metadata_props` entries (field 14 of `ModelProto`) holding `entries`, in order.
fn encode_record(entries: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in entries {
        let mut e = Vec::new();
        wire::put_bytes(&mut e, 1, k.as_bytes());
        wire::put_bytes(&mut e, 2, v.as_bytes());
        wire::put_bytes(&mut out, MODEL_METADATA, &e);
    }
    out
}

impl Container for Onnx {
    fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    fn byte_range(&self, i: usize) -> Range<u64> {
        // By its start: a tensor ending where the record begins stays before it.
        let t = &self.tensors[i];
        let start = self.run_offset(t.start);
        start..start + t.len()
    }

    fn lock_record(&self) -> Result<Option<LockInfo>> {
        LockInfo::from_entries(
            |k| self.record.get(k).map(String::as_str),
            &self.tensors,
            &self.path,
        )
    }

    fn user_metadata(&self) -> Vec<(String, String)> {
        self.user.clone()
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.metadata_with(&self.record)
    }

    fn left_clear(&self) -> Vec<(String, String)> {
        self.clear
            .iter()
            .map(|c| (c.name.clone(), c.why.to_owned()))
            .collect()
    }

    fn layout(&self, record: Option<&LockInfo>) -> Result<Layout> {
        let mut pieces = Vec::new();
        let mut at = 0;
        let mut tensors = self.tensors.iter().enumerate().peekable();
        while let Some((i, t)) = tensors.next_if(|(_, t)| t.start < self.record_start) {
            if t.start > at {
                pieces.push(Piece::Copy(at..t.start));
            }
            pieces.push(Piece::Tensor(i));
            at = t.end;
        }
        if self.record_start > at {
            pieces.push(Piece::Copy(at..self.record_start));
        }
        let mut entries = BTreeMap::new();
        if let Some(r) = record {
            let list = r.entries();
            pieces.push(Piece::Bytes(encode_record(&list)));
            entries = list.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        }
        // Each external data file as it is, its tensors locked or unlocked in place.
        let mut file_start = self.file_len;
        for len in data_lens(&self.data) {
            let (mut at, end) = (file_start, file_start + len);
            while let Some((i, _)) = tensors.next_if(|(i, _)| self.byte_range(*i).start < end) {
                let r = self.byte_range(i);
                if r.start > at {
                    pieces.push(Piece::Copy(at..r.start));
                }
                pieces.push(Piece::Tensor(i));
                at = r.end;
            }
            if end > at {
                pieces.push(Piece::Copy(at..end));
            }
            file_start = end;
        }
        Ok(Layout {
            pieces,
            metadata: self.metadata_with(&entries),
        })
    }

    fn data_files(&self) -> &[DataFile] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_recognised_by_their_first_fields() {
        // ir_version 8, then producer_name, graph, or functions (a two-byte tag).
        assert!(looks_like(&[0x08, 8, 0x12, 1, b'x'], 5));
        assert!(looks_like(&[0x08, 8, 0x3a, 0], 4));
        assert!(looks_like(&[0x08, 8, 0xca, 0x01, 0], 5));
        // ir_version out of range, another first field, a wrong wire type, safetensors.
        assert!(!looks_like(&[0x08, 0, 0x12, 0], 4));
        assert!(!looks_like(&[0x08, 65, 0x12, 0], 4));
        assert!(!looks_like(&[0x10, 8, 0x12, 0], 4));
        assert!(!looks_like(&[0x08, 8, 0x38, 0], 4));
        assert!(!looks_like(b"\x10\0\0\0\0\0\0\0{\"a\":1}", 16));
        assert!(!looks_like(&[0x08, 8], 2));
    }

    #[test]
    fn a_model_without_a_graph_or_with_a_record_not_at_the_end_is_refused() {
        let mut m = vec![0x08, 8];
        let p = Path::new("m.onnx");
        let e = Onnx::parse(&m, p).err().unwrap().to_string();
        assert!(e.contains("no graph"), "{e}");
        wire::put_bytes(&mut m, 7, &[]);
        assert!(Onnx::parse(&m, p).unwrap().lock_record().unwrap().is_none());
        let record = encode_record(&[("deeplock.version", "2".into())]);
        let mut locked = m.clone();
        locked.extend_from_slice(&record);
        // A partial record: read as locked and damaged.
        let e = Onnx::parse(&locked, p).unwrap().lock_record().unwrap_err();
        assert!(e.to_string().contains("corrupt deeplock metadata"), "{e}");
        // A field after the record.
        locked.extend_from_slice(&[0x28, 1]);
        let e = Onnx::parse(&locked, p).err().unwrap().to_string();
        assert!(e.contains("follow the lock record"), "{e}");
    }

    #[test]
    fn a_tensor_field_given_twice_is_refused_as_readers_would_merge_it() {
        let tensor = |extra: &[u8]| {
            let mut t = Vec::new();
            t.extend_from_slice(&[0x08, 2, 0x10, 2]); // dims [2], UINT8
            wire::put_bytes(&mut t, 8, b"w");
            wire::put_bytes(&mut t, 9, &[1, 2]);
            t.extend_from_slice(extra);
            let mut g = Vec::new();
            wire::put_bytes(&mut g, 5, &t);
            let mut m = vec![0x08, 8];
            wire::put_bytes(&mut m, 7, &g);
            m
        };
        let p = Path::new("m.onnx");
        let ok = Onnx::parse(&tensor(&[]), p).unwrap();
        assert_eq!(ok.tensors()[0].name, "w");
        let mut raw = Vec::new();
        wire::put_bytes(&mut raw, 9, &[3, 4]);
        let mut name = Vec::new();
        wire::put_bytes(&mut name, 8, b"v");
        for (extra, what) in [
            (raw, "raw_data twice"),
            (name, "a name twice"),
            (vec![0x10, 3], "data_type twice"),
        ] {
            let e = Onnx::parse(&tensor(&extra), p).err().unwrap().to_string();
            assert!(e.contains(what), "{e}");
        }
    }
}
