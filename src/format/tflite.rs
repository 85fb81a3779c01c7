//! TensorFlow Lite (LiteRT) as a [`Container`]: a flatbuffer (`schema.fbs`, file
//! identifier `TFL3` at bytes 4..8) whose `Model.buffers` hold the constant tensors,
//! inline (`Buffer.data`) or after the flatbuffer (`Buffer.offset`/`size`, models over
//! 2 GB). Each buffer holding bytes is one entry, named `<index>:<name of the first
//! tensor using it>` (`docs/SPEC.md`, "TensorFlow Lite").
//!
//! Flatbuffer offsets are unsigned and point forward, so a record cannot be added to an
//! existing `Model` table without rewriting what points to it. Lock therefore inserts a
//! region right after the 8-byte head (root offset, identifier) holding a new `Model`
//! table, copies of the old fields, a `buffers` vector with the record's buffer added and
//! a `metadata` vector with the entry `deeplock` added, all pointing forward into the
//! original flatbuffer, which follows unchanged, shifted by the region's length (a
//! multiple of 64, so every alignment is kept). Unlock drops the region and restores the
//! root offset: the original file byte for byte. A locked file is read by rebuilding the
//! region from the original and the record and comparing it with the one stored.
//!
//! The reader is hand-written and checked: every offset, vtable and vector is bounds
//! checked with checked arithmetic as it is read, once, at parse time.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Container, Layout, Piece};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::TensorEntry;
use crate::lock_info::LockInfo;

/// The flatbuffer file identifier of TFLite models, at bytes 4..8.
pub const IDENTIFIER: &[u8; 4] = b"TFL3";
/// The name of the `Model.metadata` entry whose buffer holds the lock record.
pub const RECORD_NAME: &str = "deeplock";
/// The inserted region's length is a multiple of this, so that every byte after it
/// keeps its alignment.
pub const SHIFT_ALIGN: u64 = 64;
/// The metadata key under which the header tag binds the model's structure.
pub const STRUCTURE_KEY: &str = "tflite.structure";
/// The record's keys (beside the lock record's own) for the original root offset and
/// the inserted region's length, fixed-width hex.
const K_ROOT: &str = "deeplock.tflite.root";
const K_SHIFT: &str = "deeplock.tflite.shift";
/// The largest lock record read (its names list grows with the model).
const MAX_RECORD: u64 = 1 << 30;
/// Metadata values longer than this are shown by their length.
const MAX_SHOWN: u64 = 4096;
/// The flatbuffer's own limit: a flatbuffer is under 2 GiB.
const MAX_FLATBUFFER: u64 = (1 << 31) - 1;

// Field slots of schema.fbs tables.
const MODEL_VERSION: usize = 0;
const MODEL_BUFFERS: usize = 4;
const MODEL_METADATA_BUFFER: usize = 5;
const MODEL_METADATA: usize = 6;
const MODEL_SUBGRAPHS: usize = 2;
const MODEL_FIELDS: usize = 8;
const SUBGRAPH_TENSORS: usize = 0;
const SUBGRAPH_OPERATORS: usize = 3;
const TENSOR_SHAPE: usize = 0;
const TENSOR_TYPE: usize = 1;
const TENSOR_BUFFER: usize = 2;
const TENSOR_NAME: usize = 3;
const OPERATOR_LARGE_CUSTOM_OFFSET: usize = 9;
const BUFFER_DATA: usize = 0;
const BUFFER_OFFSET: usize = 1;
const BUFFER_SIZE: usize = 2;
const METADATA_NAME: usize = 0;
const METADATA_BUFFER: usize = 1;

/// Whether a file beginning with `head` is a TFLite flatbuffer, whatever its name.
pub fn looks_like(head: &[u8]) -> bool {
    head.get(4..8) == Some(&IDENTIFIER[..])
}

/// Where bytes are read from: a file, memory, or a locked file seen as its original.
trait Src {
    fn len(&self) -> u64;
    /// Fills `buf` from `at`; the caller checked the range.
    fn read(&self, at: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

struct Mem<'a>(&'a [u8]);

impl Src for Mem<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&self, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let at = at as usize;
        buf.copy_from_slice(&self.0[at..at + buf.len()]);
        Ok(())
    }
}

struct FileSrc<'a> {
    file: &'a File,
    len: u64,
}

impl Src for FileSrc<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&self, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file.read_exact_at(buf, at)
        }
        #[cfg(not(unix))]
        {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = self.file;
            f.seek(SeekFrom::Start(at))?;
            f.read_exact(buf)
        }
    }
}

/// A locked file seen as the original: its root offset `root`, its identifier, then
/// everything after the inserted region of `shift` bytes.
struct Unshifted<'a> {
    inner: &'a dyn Src,
    root: [u8; 4],
    shift: u64,
}

impl Src for Unshifted<'_> {
    fn len(&self) -> u64 {
        self.inner.len() - self.shift
    }
    fn read(&self, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let mut at = at;
        let mut done = 0;
        while done < buf.len() && at < 8 {
            buf[done] = if at < 4 {
                self.root[at as usize]
            } else {
                let mut b = [0u8];
                self.inner.read(at, &mut b)?;
                b[0]
            };
            done += 1;
            at += 1;
        }
        if done < buf.len() {
            self.inner.read(at + self.shift, &mut buf[done..])?;
        }
        Ok(())
    }
}

/// A table: where it starts, its vtable's field offsets and its inline size.
#[derive(Clone, Debug)]
struct Table {
    pos: u64,
    fields: Vec<u16>,
    size: u16,
}

/// The checked flatbuffer reader: every read is bounds checked, and logged, so that no
/// structure read can overlap the bytes of a buffer that lock transforms.
struct Fb<'a> {
    src: &'a dyn Src,
    path: &'a Path,
    log: RefCell<Vec<(u64, u64)>>,
}

impl<'a> Fb<'a> {
    fn bad(&self, what: impl std::fmt::Display) -> Error {
        Error::format(
            self.path,
            format!("not a valid TensorFlow Lite file: {what} (truncated or corrupt?)"),
        )
    }

    fn bytes(&self, at: u64, n: u64) -> Result<Vec<u8>> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= self.src.len())
            .ok_or_else(|| self.bad(format_args!("{n} bytes at {at} run past the end")))?;
        let mut buf = vec![0u8; usize::try_from(n).map_err(|_| self.bad("too large"))?];
        self.src
            .read(at, &mut buf)
            .map_err(|e| Error::io(self.path, e))?;
        if n > 0 {
            self.log.borrow_mut().push((at, end));
        }
        Ok(buf)
    }

    fn aligned(&self, at: u64, align: u64, what: &str) -> Result<()> {
        if !at.is_multiple_of(align) {
            return Err(self.bad(format_args!("{what} at {at} is not {align}-byte aligned")));
        }
        Ok(())
    }

    fn u8(&self, at: u64) -> Result<u8> {
        Ok(self.bytes(at, 1)?[0])
    }
    fn u16(&self, at: u64) -> Result<u16> {
        self.aligned(at, 2, "a 16-bit field")?;
        let b = self.bytes(at, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, at: u64) -> Result<u32> {
        self.aligned(at, 4, "a 32-bit field")?;
        let b = self.bytes(at, 4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&self, at: u64) -> Result<u64> {
        self.aligned(at, 8, "a 64-bit field")?;
        let b = self.bytes(at, 8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// The object a uoffset at `at` points to.
    fn follow(&self, at: u64) -> Result<u64> {
        let off = self.u32(at)?;
        let target = at + u64::from(off);
        if off == 0 || target >= self.src.len() {
            return Err(self.bad(format_args!("the offset at {at} points outside the file")));
        }
        Ok(target)
    }

    fn table(&self, pos: u64) -> Result<Table> {
        if pos < 8 {
            return Err(self.bad(format_args!("a table at {pos}, inside the file's head")));
        }
        self.aligned(pos, 4, "a table")?;
        let soff = self.u32(pos)? as i32;
        let vt = i64::try_from(pos)
            .ok()
            .and_then(|p| p.checked_sub(i64::from(soff)))
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| {
                self.bad(format_args!(
                    "the table at {pos} has its vtable outside the file"
                ))
            })?;
        let vt_len = self.u16(vt)?;
        let size = self.u16(vt + 2)?;
        if vt_len < 4 || !vt_len.is_multiple_of(2) || size < 4 {
            return Err(self.bad(format_args!("the vtable at {vt} is malformed")));
        }
        let raw = self.bytes(vt + 4, u64::from(vt_len) - 4)?;
        let fields: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        self.bytes(pos, u64::from(size))?;
        Ok(Table { pos, fields, size })
    }

    /// Where field `slot` of `t` lies, `size` bytes, if it is present.
    fn field(&self, t: &Table, slot: usize, size: u16) -> Result<Option<u64>> {
        match t.fields.get(slot) {
            None | Some(0) => Ok(None),
            Some(&v) => {
                if u32::from(v) + u32::from(size) > u32::from(t.size) || v < 4 {
                    return Err(self.bad(format_args!(
                        "field {slot} of the table at {} lies outside it",
                        t.pos
                    )));
                }
                Ok(Some(t.pos + u64::from(v)))
            }
        }
    }

    fn field_u8(&self, t: &Table, slot: usize) -> Result<u8> {
        self.field(t, slot, 1)?.map_or(Ok(0), |at| self.u8(at))
    }
    fn field_u32(&self, t: &Table, slot: usize) -> Result<u32> {
        self.field(t, slot, 4)?.map_or(Ok(0), |at| self.u32(at))
    }
    fn field_u64(&self, t: &Table, slot: usize) -> Result<u64> {
        self.field(t, slot, 8)?.map_or(Ok(0), |at| self.u64(at))
    }
    /// The object an offset field points to, if the field is present.
    fn field_ref(&self, t: &Table, slot: usize) -> Result<Option<u64>> {
        self.field(t, slot, 4)?
            .map(|at| self.follow(at))
            .transpose()
    }

    /// A vector at `pos` of elements of `elem` bytes: its count and where they start.
    fn vector(&self, pos: u64, elem: u64) -> Result<(u64, u64)> {
        let n = u64::from(self.u32(pos)?);
        let start = pos + 4;
        n.checked_mul(elem)
            .and_then(|b| start.checked_add(b))
            .filter(|&e| e <= self.src.len())
            .ok_or_else(|| self.bad(format_args!("the vector at {pos} runs past the end")))?;
        Ok((n, start))
    }

    /// The tables of the vector of tables at `pos`.
    fn tables(&self, pos: u64) -> Result<Vec<Table>> {
        let (n, start) = self.vector(pos, 4)?;
        (0..n)
            .map(|i| self.table(self.follow(start + 4 * i)?))
            .collect()
    }

    fn string(&self, pos: u64) -> Result<String> {
        let (n, start) = self.vector(pos, 1)?;
        let b = self.bytes(start, n + 1)?;
        if b[n as usize] != 0 {
            return Err(self.bad(format_args!("the string at {pos} is not NUL-terminated")));
        }
        String::from_utf8(b[..n as usize].to_vec())
            .map_err(|_| self.bad(format_args!("the string at {pos} is not UTF-8")))
    }
}

/// One of `Model.buffers`.
#[derive(Clone, Debug)]
struct Buffer {
    /// Its table.
    pos: u64,
    /// Its bytes, if it holds any: inline, or after the flatbuffer.
    range: Option<Range<u64>>,
    /// Stored by `offset`/`size` outside the flatbuffer: `Some((offset, size))`.
    external: Option<(u64, u64)>,
}

/// What a parse of an unlocked model (or of a locked one seen as its original) found.
struct Model {
    /// The root table's fields: slot, and for each present one its scalar value or
    /// the position of the object it points to.
    fields: Vec<(usize, Field)>,
    buffers: Vec<Buffer>,
    /// `Model.metadata`: each entry's table, name and buffer.
    metadata: Vec<(u64, String, u32)>,
    entries: Vec<TensorEntry>,
    /// The user's metadata, as shown.
    shown: Vec<(String, String)>,
    /// SHA-256 of every byte outside the entries' data, in order.
    structure: [u8; 32],
}

#[derive(Clone, Copy, Debug)]
enum Field {
    Scalar(u32),
    Ref(u64),
}

/// TFLite's tensor types, as the element types deeplock names (those it has).
fn dtype_of(t: u8) -> Option<Dtype> {
    Some(match t {
        0 => Dtype::F32,
        1 => Dtype::F16,
        2 => Dtype::I32,
        3 => Dtype::U8,
        4 => Dtype::I64,
        6 => Dtype::BOOL,
        7 => Dtype::I16,
        8 => Dtype::C64,
        9 => Dtype::I8,
        10 => Dtype::F64,
        12 => Dtype::U64,
        15 => Dtype::U32,
        16 => Dtype::U16,
        18 => Dtype::BF16,
        _ => return None,
    })
}

fn parse_model(fb: &Fb<'_>) -> Result<Model> {
    let len = fb.src.len();
    if len < 8 {
        return Err(fb.bad(format_args!("{len} bytes, shorter than the 8-byte head")));
    }
    if fb.bytes(4, 4)? != IDENTIFIER {
        return Err(fb.bad("no TFL3 file identifier at bytes 4..8"));
    }
    let root = fb.u32(0)?;
    let model = fb.table(u64::from(root))?;
    let mut fields = Vec::new();
    for (slot, &v) in model.fields.iter().enumerate() {
        if v == 0 {
            continue;
        }
        if slot >= MODEL_FIELDS {
            return Err(Error::format(
                fb.path,
                format!("the model has a field (slot {slot}) newer than the TFLite schema deeplock knows, so the lock record cannot be added safely; upgrade deeplock"),
            ));
        }
        let f = if slot == MODEL_VERSION {
            Field::Scalar(fb.field_u32(&model, slot)?)
        } else {
            Field::Ref(fb.field_ref(&model, slot)?.expect("present"))
        };
        fields.push((slot, f));
    }
    let get = |slot: usize| {
        fields
            .iter()
            .find(|(s, _)| *s == slot)
            .and_then(|(_, f)| match f {
                Field::Ref(p) => Some(*p),
                Field::Scalar(_) => None,
            })
    };
    let buffer_tables = match get(MODEL_BUFFERS) {
        Some(p) => fb.tables(p)?,
        None => Vec::new(),
    };
    if buffer_tables.is_empty() {
        return Err(fb.bad("no buffers, not even the empty buffer 0 every model has"));
    }
    let mut buffers = Vec::with_capacity(buffer_tables.len());
    for (i, t) in buffer_tables.iter().enumerate() {
        if t.fields.len() > 3 && t.fields[3..].iter().any(|&v| v != 0) {
            return Err(Error::format(
                fb.path,
                format!("buffer {i} has a field newer than the TFLite schema deeplock knows; upgrade deeplock"),
            ));
        }
        let offset = fb.field_u64(t, BUFFER_OFFSET)?;
        let size = fb.field_u64(t, BUFFER_SIZE)?;
        let data = match fb.field_ref(t, BUFFER_DATA)? {
            Some(v) => {
                let (n, start) = fb.vector(v, 1)?;
                (n > 0).then_some(start..start + n)
            }
            None => None,
        };
        let (range, external) = if offset > 1 {
            if data.is_some() {
                return Err(fb.bad(format_args!(
                    "buffer {i} has both inline data and an offset"
                )));
            }
            let end = offset
                .checked_add(size)
                .filter(|&e| e <= len && offset >= 8)
                .ok_or_else(|| {
                    fb.bad(format_args!(
                        "buffer {i} lies at {offset}..+{size}, outside the file"
                    ))
                })?;
            ((size > 0).then_some(offset..end), Some((offset, size)))
        } else {
            (data, None)
        };
        buffers.push(Buffer {
            pos: t.pos,
            range,
            external,
        });
    }
    let n = buffers.len() as u64;
    let check_index = |b: u64, what: &str| {
        if b >= n {
            return Err(fb.bad(format_args!("{what} names buffer {b} of {n}")));
        }
        Ok(b as usize)
    };
    let mut metadata = Vec::new();
    let mut is_metadata = vec![false; buffers.len()];
    if let Some(p) = get(MODEL_METADATA) {
        for t in fb.tables(p)? {
            let name = match fb.field_ref(&t, METADATA_NAME)? {
                Some(s) => fb.string(s)?,
                None => String::new(),
            };
            let b = fb.field_u32(&t, METADATA_BUFFER)?;
            is_metadata[check_index(u64::from(b), "a metadata entry")?] = true;
            metadata.push((t.pos, name, b));
        }
    }
    if let Some(p) = get(MODEL_METADATA_BUFFER) {
        let (count, start) = fb.vector(p, 4)?;
        for i in 0..count {
            let b = fb.u32(start + 4 * i)?;
            is_metadata[check_index(u64::from(b), "metadata_buffer")?] = true;
        }
    }
    // The first tensor using each buffer, in subgraph then tensor order.
    let mut first: Vec<Option<(String, u8, Vec<i64>)>> = vec![None; buffers.len()];
    if let Some(p) = get(MODEL_SUBGRAPHS) {
        for sg in fb.tables(p)? {
            if let Some(tp) = fb.field_ref(&sg, SUBGRAPH_TENSORS)? {
                for t in fb.tables(tp)? {
                    let b = check_index(u64::from(fb.field_u32(&t, TENSOR_BUFFER)?), "a tensor")?;
                    if first[b].is_some() {
                        continue;
                    }
                    let name = match fb.field_ref(&t, TENSOR_NAME)? {
                        Some(s) => fb.string(s)?,
                        None => String::new(),
                    };
                    let ty = fb.field_u8(&t, TENSOR_TYPE)?;
                    let mut shape = Vec::new();
                    if let Some(sp) = fb.field_ref(&t, TENSOR_SHAPE)? {
                        let (count, start) = fb.vector(sp, 4)?;
                        for i in 0..count {
                            shape.push(i64::from(fb.u32(start + 4 * i)? as i32));
                        }
                    }
                    first[b] = Some((name, ty, shape));
                }
            }
            if let Some(op) = fb.field_ref(&sg, SUBGRAPH_OPERATORS)? {
                for o in fb.tables(op)? {
                    if fb.field_u64(&o, OPERATOR_LARGE_CUSTOM_OFFSET)? > 1 {
                        return Err(Error::format(
                            fb.path,
                            "an operator keeps its custom options outside the flatbuffer (large_custom_options_offset), which deeplock cannot lock yet",
                        ));
                    }
                }
            }
        }
    }
    let mut entries = Vec::new();
    for (i, b) in buffers.iter().enumerate() {
        let Some(range) = b.range.clone() else {
            continue;
        };
        if is_metadata[i] && first[i].is_none() {
            continue;
        }
        let bytes = range.end - range.start;
        let (name, dtype, shape) = match &first[i] {
            Some((name, ty, shape)) => {
                let dims: Option<Vec<usize>> =
                    shape.iter().map(|&d| usize::try_from(d).ok()).collect();
                let fits = |d: Dtype, dims: &[usize]| {
                    dims.iter()
                        .try_fold(u64::from(d.bits()), |a, &x| a.checked_mul(x as u64))
                        == Some(bytes * 8)
                };
                match (dtype_of(*ty), dims) {
                    (Some(d), Some(dims)) if fits(d, &dims) => (format!("{i}:{name}"), d, dims),
                    _ => (format!("{i}:{name}"), Dtype::U8, vec![bytes as usize]),
                }
            }
            None => (format!("{i}:"), Dtype::U8, vec![bytes as usize]),
        };
        entries.push(TensorEntry {
            name,
            dtype,
            shape,
            start: range.start,
            end: range.end,
        });
    }
    entries.sort_by_key(|e| (e.start, e.end));
    if let Some(w) = entries.windows(2).find(|w| w[1].start < w[0].end) {
        return Err(fb.bad(format_args!(
            "buffers {:?} and {:?} overlap",
            w[0].name, w[1].name
        )));
    }
    let mut shown = Vec::new();
    for (_, name, b) in &metadata {
        let value = match &buffers[*b as usize].range {
            None => String::new(),
            Some(r) if r.end - r.start <= MAX_SHOWN => {
                let v = fb.bytes(r.start, r.end - r.start)?;
                String::from_utf8(v).unwrap_or_else(|v| format!("<{} bytes>", v.as_bytes().len()))
            }
            Some(r) => format!("<{} bytes>", r.end - r.start),
        };
        shown.push((name.clone(), value));
    }
    shown.sort();
    // No structure read may overlap a buffer's bytes: lock transforms those, and the
    // structure must read the same locked and unlocked.
    let mut log = std::mem::take(&mut *fb.log.borrow_mut());
    log.sort_unstable();
    let mut k = 0;
    for e in &entries {
        while k < log.len() && log[k].1 <= e.start {
            k += 1;
        }
        let hit = log[k..]
            .iter()
            .take_while(|r| r.0 < e.end)
            .any(|r| r.1 > e.start);
        if hit {
            return Err(fb.bad(format_args!(
                "the bytes of buffer {:?} overlap the model's tables",
                e.name
            )));
        }
    }
    let structure = structure_digest(fb, &entries)?;
    Ok(Model {
        fields,
        buffers,
        metadata,
        entries,
        shown,
        structure,
    })
}

/// SHA-256 of every byte of the file outside the entries' bytes, in file order.
fn structure_digest(fb: &Fb<'_>, entries: &[TensorEntry]) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    let ranges = entries.iter().map(|e| e.start..e.end);
    let mut read =
        |at: u64, buf: &mut [u8]| fb.src.read(at, buf).map_err(|e| Error::io(fb.path, e));
    super::hash_gaps(&mut h, 0, fb.src.len(), ranges, false, &mut read)?;
    Ok(h.finalize().into())
}

/// The record's entries: the lock record's keys, the original root offset and the
/// inserted region's length.
fn record_map(record: &LockInfo, root: u32, shift: u64) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = record
        .entries()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    m.insert(K_ROOT.into(), format!("{root:08x}"));
    m.insert(K_SHIFT.into(), format!("{shift:016x}"));
    m
}

/// The lock record of `map` (a record read from a file whose entries are `entries`),
/// validated as safetensors' records are, by [`LockInfo::from_entries`].
fn record_of(
    map: &BTreeMap<String, String>,
    entries: &[TensorEntry],
    path: &Path,
) -> Result<LockInfo> {
    let own = |k: &str| {
        (k != K_ROOT && k != K_SHIFT)
            .then(|| map.get(k).map(String::as_str))
            .flatten()
    };
    LockInfo::from_entries(own, entries, path)?.ok_or_else(|| {
        Error::format(
            path,
            "corrupt deeplock record: it holds no lock; the file was damaged or edited after locking",
        )
    })
}

/// The bytes of the inserted region (written at byte 8 of the locked file) that adds
/// the record `json` to `model`, and the locked file's root offset.
fn build_region(model: &Model, json: &[u8]) -> (u32, Vec<u8>) {
    let mut r = Region::default();
    // Offsets into the original, patched once the region's length (the shift) is known.
    let mut fixups: Vec<(usize, u64)> = Vec::new();
    let mut slots: Vec<(usize, Field)> = model
        .fields
        .iter()
        .filter(|(s, _)| *s != MODEL_BUFFERS && *s != MODEL_METADATA)
        .copied()
        .collect();
    slots.push((MODEL_BUFFERS, Field::Ref(0)));
    slots.push((MODEL_METADATA, Field::Ref(0)));
    slots.sort_by_key(|(s, _)| *s);
    let nfields = slots.last().map_or(0, |(s, _)| s + 1);
    let mut vt = vec![0u16; nfields];
    for (k, (s, _)) in slots.iter().enumerate() {
        vt[*s] = 4 + 4 * k as u16;
    }
    let model_vt = r.vtable(4 + 4 * slots.len() as u16, &vt);
    let model_t = r.table_start(model_vt, 4);
    let mut refs = BTreeMap::new();
    for (s, f) in &slots {
        let at = r.buf.len();
        match f {
            Field::Scalar(v) => r.u32(*v),
            Field::Ref(p) => {
                r.u32(0);
                if *s == MODEL_BUFFERS || *s == MODEL_METADATA {
                    refs.insert(*s, at);
                } else {
                    fixups.push((at, *p));
                }
            }
        }
    }
    // The buffers: the old ones (external ones as copies with their offset shifted),
    // then the record's.
    r.align(4, 0);
    r.patch_ref(refs[&MODEL_BUFFERS], r.buf.len());
    r.u32(model.buffers.len() as u32 + 1);
    let mut buf_slots = Vec::new();
    for b in &model.buffers {
        let at = r.buf.len();
        r.u32(0);
        match b.external {
            Some(_) => buf_slots.push(at),
            None => fixups.push((at, b.pos)),
        }
    }
    let record_slot = r.buf.len();
    r.u32(0);
    // The metadata: the old entries, then the record's.
    r.patch_ref(refs[&MODEL_METADATA], r.buf.len());
    r.u32(model.metadata.len() as u32 + 1);
    for (pos, _, _) in &model.metadata {
        fixups.push((r.buf.len(), *pos));
        r.u32(0);
    }
    let meta_slot = r.buf.len();
    r.u32(0);
    let meta_vt = r.vtable(12, &[4, 8]);
    let meta_t = r.table_start(meta_vt, 4);
    r.patch_ref(meta_slot, meta_t);
    let name_slot = r.buf.len();
    r.u32(0);
    r.u32(model.buffers.len() as u32);
    r.align(4, 0);
    r.patch_ref(name_slot, r.buf.len());
    r.u32(RECORD_NAME.len() as u32);
    r.buf.extend_from_slice(RECORD_NAME.as_bytes());
    r.buf.push(0);
    // Copies of the external buffers: their offset and size, 8-aligned.
    let mut ext_offsets = Vec::new();
    let ext: Vec<&Buffer> = model
        .buffers
        .iter()
        .filter(|b| b.external.is_some())
        .collect();
    if !ext.is_empty() {
        let ext_vt = r.vtable(20, &[0, 4, 12]);
        for (slot, b) in buf_slots.iter().zip(&ext) {
            let t = r.table_start(ext_vt, 8);
            r.patch_ref(*slot, t);
            let (offset, size) = b.external.expect("external");
            ext_offsets.push((r.buf.len(), offset));
            r.u64(0);
            r.u64(size);
        }
    }
    let rec_vt = r.vtable(8, &[4]);
    let rec_t = r.table_start(rec_vt, 4);
    r.patch_ref(record_slot, rec_t);
    let data_slot = r.buf.len();
    r.u32(0);
    // The record's bytes start 16-aligned (schema.fbs: force_align 16).
    r.align(16, 4);
    r.patch_ref(data_slot, r.buf.len());
    r.u32(json.len() as u32);
    r.buf.extend_from_slice(json);
    // The region itself is a multiple of the alignment (it starts at byte 8).
    r.align(SHIFT_ALIGN as usize, SHIFT_ALIGN as usize - 8);
    let shift = r.buf.len() as u64;
    for (at, target) in fixups {
        let abs = 8 + at as u64;
        let off = target + shift - abs;
        r.buf[at..at + 4].copy_from_slice(&(off as u32).to_le_bytes());
    }
    for (at, offset) in ext_offsets {
        r.buf[at..at + 8].copy_from_slice(&(offset + shift).to_le_bytes());
    }
    ((8 + model_t) as u32, r.buf)
}

/// The inserted region being built; position `p` of `buf` is byte `8 + p` of the file.
#[derive(Default)]
struct Region {
    buf: Vec<u8>,
}

impl Region {
    fn align(&mut self, align: usize, plus: usize) {
        while !(8 + self.buf.len() + plus).is_multiple_of(align) {
            self.buf.push(0);
        }
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A vtable for a table of `size` bytes with these field offsets; its position.
    fn vtable(&mut self, size: u16, fields: &[u16]) -> usize {
        self.align(2, 0);
        let at = self.buf.len();
        self.u16(4 + 2 * fields.len() as u16);
        self.u16(size);
        for &f in fields {
            self.u16(f);
        }
        at
    }
    /// Starts a table using the vtable at `vt`, its first field aligned to
    /// `field_align`; the table's position.
    fn table_start(&mut self, vt: usize, field_align: usize) -> usize {
        self.align(4, 0);
        if field_align == 8 {
            self.align(8, 4);
        }
        let at = self.buf.len();
        self.u32((at - vt) as u32);
        at
    }
    /// Points the offset at `slot` to position `target` of the region.
    fn patch_ref(&mut self, slot: usize, target: usize) {
        let off = (target - slot) as u32;
        self.buf[slot..slot + 4].copy_from_slice(&off.to_le_bytes());
    }
}

/// A TFLite model file: its original's structure, its buffers, and its lock record.
pub struct Tflite {
    path: PathBuf,
    model: Model,
    /// The first 8 bytes of the original (root offset, identifier).
    head: [u8; 8],
    /// Length of the original file.
    len: u64,
    /// Bytes inserted after the head by lock: 0 for an unlocked file.
    shift: u64,
    record: Option<LockInfo>,
}

impl Tflite {
    /// Reads and validates the TFLite model at `path`, opened as `file`.
    pub fn read(file: &mut File, path: &Path) -> Result<Self> {
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Self::from_src(&FileSrc { file, len }, path)
    }

    /// Parses a whole TFLite file held in memory, as [`Tflite::read`] reads one.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        Self::from_src(&Mem(bytes), path)
    }

    fn from_src(src: &dyn Src, path: &Path) -> Result<Self> {
        let fb = Fb {
            src,
            path,
            log: RefCell::new(Vec::new()),
        };
        let Some(json) = find_record(&fb)? else {
            let model = parse_model(&fb)?;
            let mut head = [0u8; 8];
            src.read(0, &mut head).map_err(|e| Error::io(path, e))?;
            return Ok(Tflite {
                path: path.to_path_buf(),
                model,
                head,
                len: src.len(),
                shift: 0,
                record: None,
            });
        };
        let corrupt = |what: &str| {
            Error::format(
                path,
                format!(
                    "corrupt deeplock record: {what}; the file was damaged or edited after locking"
                ),
            )
        };
        let map: BTreeMap<String, String> =
            serde_json::from_slice(&json).map_err(|_| corrupt("not a JSON object of strings"))?;
        let hex = |k: &str, width: usize| {
            map.get(k)
                .filter(|v| v.len() == width)
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .ok_or_else(|| corrupt(&format!("{k} is missing or not {width} hex digits")))
        };
        let root = hex(K_ROOT, 8)? as u32;
        let shift = hex(K_SHIFT, 16)?;
        if !shift.is_multiple_of(SHIFT_ALIGN) || shift.checked_add(8).is_none_or(|e| e > src.len())
        {
            return Err(corrupt("its shift does not fit the file"));
        }
        let original = Unshifted {
            inner: src,
            root: root.to_le_bytes(),
            shift,
        };
        let ofb = Fb {
            src: &original,
            path,
            log: RefCell::new(Vec::new()),
        };
        let model = parse_model(&ofb)?;
        if model.metadata.iter().any(|(_, n, _)| n == RECORD_NAME) {
            return Err(corrupt("the original model carries a second record"));
        }
        let record = record_of(&map, &model.entries, path)?;
        // The region must be exactly the one lock writes for this original and record.
        let canonical = serde_json::to_vec(&map).expect("a map serializes");
        let (new_root, region) = build_region(&model, &canonical);
        let mut stored = vec![0u8; region.len()];
        let mut root_now = [0u8; 4];
        let same = canonical == json
            && region.len() as u64 == shift
            && src.read(8, &mut stored).is_ok()
            && src.read(0, &mut root_now).is_ok()
            && stored == region
            && u32::from_le_bytes(root_now) == new_root;
        if !same {
            return Err(corrupt("the tables lock added do not match the model"));
        }
        let mut head = [0u8; 8];
        original
            .read(0, &mut head)
            .map_err(|e| Error::io(path, e))?;
        Ok(Tflite {
            path: path.to_path_buf(),
            model,
            head,
            len: original.len(),
            shift,
            record: Some(record),
        })
    }

    fn structure_hex(&self) -> String {
        crate::hex::encode(&self.model.structure)
    }
}

/// The lock record's bytes, if the model's metadata names one.
fn find_record(fb: &Fb<'_>) -> Result<Option<Vec<u8>>> {
    if fb.src.len() < 8 || fb.bytes(4, 4)? != IDENTIFIER {
        return Err(fb.bad("no TFL3 file identifier at bytes 4..8"));
    }
    let model = fb.table(u64::from(fb.u32(0)?))?;
    let Some(meta) = fb.field_ref(&model, MODEL_METADATA)? else {
        return Ok(None);
    };
    for t in fb.tables(meta)? {
        let Some(s) = fb.field_ref(&t, METADATA_NAME)? else {
            continue;
        };
        if fb.string(s)? != RECORD_NAME {
            continue;
        }
        let b = u64::from(fb.field_u32(&t, METADATA_BUFFER)?);
        let buffers = fb
            .field_ref(&model, MODEL_BUFFERS)?
            .ok_or_else(|| fb.bad("a record but no buffers"))?;
        let (n, start) = fb.vector(buffers, 4)?;
        if b >= n {
            return Err(fb.bad("the record names a buffer that does not exist"));
        }
        let bt = fb.table(fb.follow(start + 4 * b)?)?;
        let data = fb
            .field_ref(&bt, BUFFER_DATA)?
            .ok_or_else(|| fb.bad("the record's buffer holds no data"))?;
        let (len, at) = fb.vector(data, 1)?;
        if len > MAX_RECORD {
            return Err(fb.bad("the record is implausibly large"));
        }
        return fb.bytes(at, len).map(Some);
    }
    Ok(None)
}

impl Container for Tflite {
    fn tensors(&self) -> &[TensorEntry] {
        &self.model.entries
    }

    fn byte_range(&self, i: usize) -> Range<u64> {
        let e = &self.model.entries[i];
        e.start + self.shift..e.end + self.shift
    }

    fn lock_record(&self) -> Result<Option<LockInfo>> {
        Ok(self.record.clone())
    }

    fn user_metadata(&self) -> Vec<(String, String)> {
        self.model.shown.clone()
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        let mut m = match &self.record {
            Some(r) => record_map(r, 0, 0)
                .into_iter()
                .filter(|(k, _)| k != K_ROOT && k != K_SHIFT)
                .collect(),
            None => BTreeMap::new(),
        };
        m.insert(STRUCTURE_KEY.into(), self.structure_hex());
        m
    }

    fn layout(&self, record: Option<&LockInfo>) -> Result<Layout> {
        let mut metadata = BTreeMap::new();
        let head = match record {
            Some(r) => {
                let root = u32::from_le_bytes(self.head[..4].try_into().expect("4 bytes"));
                // The shift is written fixed-width, so a first build gives its value.
                let (_, first) = build_region(&self.model, &record_json(r, root, 0));
                let json = record_json(r, root, first.len() as u64);
                let (new_root, region) = build_region(&self.model, &json);
                if region.len() as u64 + self.len > MAX_FLATBUFFER
                    && self.model.buffers.iter().all(|b| b.external.is_none())
                {
                    return Err(Error::format(
                        &self.path,
                        "locked, the flatbuffer would pass TFLite's 2 GiB limit; store its buffers outside the flatbuffer (a converter's large-model option) and lock again",
                    ));
                }
                metadata.extend(
                    record_map(r, 0, 0)
                        .into_iter()
                        .filter(|(k, _)| k != K_ROOT && k != K_SHIFT),
                );
                let mut bytes = new_root.to_le_bytes().to_vec();
                bytes.extend_from_slice(&self.head[4..]);
                bytes.extend_from_slice(&region);
                bytes
            }
            None => self.head.to_vec(),
        };
        metadata.insert(STRUCTURE_KEY.into(), self.structure_hex());
        let mut pieces = vec![Piece::Bytes(head)];
        let mut at = 8u64;
        for (i, e) in self.model.entries.iter().enumerate() {
            if e.start > at {
                pieces.push(Piece::Copy(at + self.shift..e.start + self.shift));
            }
            pieces.push(Piece::Tensor(i));
            at = e.end;
        }
        if self.len > at {
            pieces.push(Piece::Copy(at + self.shift..self.len + self.shift));
        }
        Ok(Layout { pieces, metadata })
    }
}

fn record_json(record: &LockInfo, root: u32, shift: u64) -> Vec<u8> {
    serde_json::to_vec(&record_map(record, root, shift)).expect("a map serializes")
}
