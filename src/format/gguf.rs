//! GGUF (llama.cpp's model file) as a [`Container`]: the magic `GGUF`, a version (2 or
//! 3, little-endian), the tensor and key-value counts, the key-values, the tensor infos
//! (name, dims, ggml type, offset), zero padding to the alignment (`general.alignment`,
//! else 32), then the data section, each tensor at its offset from the data section's
//! start (`docs/SPEC.md`, "GGUF").
//!
//! Every tensor is locked in place, quantized block types included: its
//! `ggml_nbytes` bytes are bytes like any other. The lock record is kept as string
//! key-values (`deeplock.version`, `deeplock.salt`, ...) appended after the model's own,
//! so the header grows, the data section moves to the next aligned offset and every
//! tensor keeps its offset within it; unlock removes the record's key-values and gives
//! back the original file byte for byte. The header tag binds `gguf.structure`, a
//! SHA-256 of every byte of the unlocked file outside the tensors' bytes: key-values,
//! names, dims, types, offsets, padding.
//!
//! The header is parsed once, with checked arithmetic: every count, length and offset is
//! checked against the file's length as it is read, so a damaged file is refused with a
//! clear message, never read out of bounds.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Container, Layout, Piece, StoredType};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::TensorEntry;
use crate::lock_info::{self, LockInfo};

/// The first four bytes of a GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The metadata key under which the header tag binds the model's structure.
pub const STRUCTURE_KEY: &str = "gguf.structure";
/// The alignment of the data section and of each tensor when `general.alignment` is not
/// given.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's limit on a tensor's dimensions.
const MAX_DIMS: u32 = 4;
/// Nesting of arrays deeper than this is refused (GGUF writers nest at most once).
const MAX_DEPTH: u32 = 8;
/// Metadata values longer than this are shown by their length.
const MAX_SHOWN: usize = 200;
/// The largest header read: GGUF headers hold a vocabulary (a few MB), not weights.
const MAX_HEADER_LEN: u64 = 256 << 20;

/// GGUF value types.
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

/// Whether a file beginning with `head` is GGUF.
pub fn looks_like(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

/// The block size (elements) and the bytes of one block of a ggml type, and its name:
/// ggml's `type_traits` (gguf-py's `GGML_QUANT_SIZES`). `None` for a type deeplock does
/// not know, whose size it could not work out.
fn ggml_type(t: u32) -> Option<(u64, u64, &'static str)> {
    Some(match t {
        0 => (1, 4, "F32"),
        1 => (1, 2, "F16"),
        2 => (32, 18, "Q4_0"),
        3 => (32, 20, "Q4_1"),
        6 => (32, 22, "Q5_0"),
        7 => (32, 24, "Q5_1"),
        8 => (32, 34, "Q8_0"),
        9 => (32, 40, "Q8_1"),
        10 => (256, 84, "Q2_K"),
        11 => (256, 110, "Q3_K"),
        12 => (256, 144, "Q4_K"),
        13 => (256, 176, "Q5_K"),
        14 => (256, 210, "Q6_K"),
        15 => (256, 292, "Q8_K"),
        16 => (256, 66, "IQ2_XXS"),
        17 => (256, 74, "IQ2_XS"),
        18 => (256, 98, "IQ3_XXS"),
        19 => (256, 50, "IQ1_S"),
        20 => (32, 18, "IQ4_NL"),
        21 => (256, 110, "IQ3_S"),
        22 => (256, 82, "IQ2_S"),
        23 => (256, 136, "IQ4_XS"),
        24 => (1, 1, "I8"),
        25 => (1, 2, "I16"),
        26 => (1, 4, "I32"),
        27 => (1, 8, "I64"),
        28 => (1, 8, "F64"),
        29 => (256, 56, "IQ1_M"),
        30 => (1, 2, "BF16"),
        34 => (256, 54, "TQ1_0"),
        35 => (256, 66, "TQ2_0"),
        39 => (32, 17, "MXFP4"),
        _ => return None,
    })
}

/// The dtype a tensor of ggml type `t` is described with: its own for the plain element
/// types, bytes (`U8`, shape its length) for block types. The header tag binds the ggml
/// type itself through [`STRUCTURE_KEY`].
fn dtype_of(t: u32) -> Option<Dtype> {
    Some(match t {
        0 => Dtype::F32,
        1 => Dtype::F16,
        24 => Dtype::I8,
        25 => Dtype::I16,
        26 => Dtype::I32,
        27 => Dtype::I64,
        28 => Dtype::F64,
        30 => Dtype::BF16,
        _ => return None,
    })
}

/// A key-value of the header: where its bytes lie, its key, and how it is shown.
#[derive(Clone, Debug)]
struct Kv {
    span: Range<usize>,
    key: String,
    /// The value, if it is a string.
    string: Option<String>,
    /// The value as `inspect` shows it.
    shown: String,
}

/// A reader of the header that keeps every byte it reads.
struct Rd<'a, R: Read> {
    r: R,
    raw: Vec<u8>,
    len: u64,
    path: &'a Path,
}

impl<R: Read> Rd<'_, R> {
    fn bad(&self, what: impl std::fmt::Display) -> Error {
        Error::format(self.path, format!("not a valid GGUF file: {what}"))
    }

    fn pos(&self) -> u64 {
        self.raw.len() as u64
    }

    /// The next `n` bytes, refused past the end of the file.
    fn take(&mut self, n: u64, what: &str) -> Result<&[u8]> {
        let end = self
            .pos()
            .checked_add(n)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| self.bad(format!("{what} runs past the end of the file")))?;
        if end > MAX_HEADER_LEN {
            return Err(self.bad(format!(
                "its header is larger than {} MiB",
                MAX_HEADER_LEN >> 20
            )));
        }
        let at = self.raw.len();
        self.raw.resize(end as usize, 0);
        self.r.read_exact(&mut self.raw[at..]).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.bad(format!("{what} runs past the end of the file"))
            } else {
                Error::io(self.path, e)
            }
        })?;
        Ok(&self.raw[at..])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let bytes = self.take(n, what)?.to_vec();
        String::from_utf8(bytes).map_err(|_| self.bad(format!("{what} is not UTF-8")))
    }

    /// A value of type `t`, returned as shown, and as a string if it is one (and as a
    /// u32 if it is one, for `general.alignment`).
    fn value(
        &mut self,
        t: u32,
        depth: u32,
        key: &str,
    ) -> Result<(String, Option<String>, Option<u32>)> {
        let what = format!("the value of {key:?}");
        let fixed = |t: u32| -> Option<u64> {
            Some(match t {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                10..=12 => 8,
                _ => return None,
            })
        };
        if let Some(n) = fixed(t) {
            let b = self.take(n, &what)?;
            let shown = match t {
                0 => b[0].to_string(),
                1 => (b[0] as i8).to_string(),
                2 => u16::from_le_bytes([b[0], b[1]]).to_string(),
                3 => i16::from_le_bytes([b[0], b[1]]).to_string(),
                4 => u32::from_le_bytes(b.try_into().expect("4")).to_string(),
                5 => i32::from_le_bytes(b.try_into().expect("4")).to_string(),
                6 => f32::from_le_bytes(b.try_into().expect("4")).to_string(),
                7 => (b[0] != 0).to_string(),
                10 => u64::from_le_bytes(b.try_into().expect("8")).to_string(),
                11 => i64::from_le_bytes(b.try_into().expect("8")).to_string(),
                _ => f64::from_le_bytes(b.try_into().expect("8")).to_string(),
            };
            let as_u32 = (t == 4).then(|| u32::from_le_bytes(b.try_into().expect("4")));
            return Ok((shown, None, as_u32));
        }
        match t {
            T_STRING => {
                let s = self.string(&what)?;
                Ok((shown_string(&s), Some(s), None))
            }
            T_ARRAY => {
                if depth >= MAX_DEPTH {
                    return Err(self.bad(format!("{what} nests arrays too deeply")));
                }
                let elem = self.u32(&what)?;
                let n = self.u64(&what)?;
                // Each element takes at least one byte: a count past the file's end is
                // refused before anything is allocated for it.
                if n > self.len.saturating_sub(self.pos()) {
                    return Err(
                        self.bad(format!("{what} has more elements than the file has bytes"))
                    );
                }
                match fixed(elem) {
                    Some(size) => {
                        let bytes = n
                            .checked_mul(size)
                            .ok_or_else(|| self.bad(format!("{what} is too long")))?;
                        self.take(bytes, &what)?;
                    }
                    None => {
                        for _ in 0..n {
                            self.value(elem, depth + 1, key)?;
                        }
                    }
                }
                Ok((format!("[{n} values of type {elem}]"), None, None))
            }
            _ => Err(self.bad(format!("{key:?} has an unknown value type {t}"))),
        }
    }
}

fn shown_string(s: &str) -> String {
    if s.len() <= MAX_SHOWN {
        s.to_owned()
    } else {
        format!("({} bytes of text)", s.len())
    }
}

/// A tensor info: its name, ggml type and bytes relative to the data section.
#[derive(Clone, Debug)]
struct Info {
    name: String,
    ggml: u32,
    /// The ggml type's name (`Q4_K`, ...), found when the type was checked.
    type_name: &'static str,
    dims: Vec<u64>,
    offset: u64,
    len: u64,
}

/// A GGUF file's header, parsed and checked, and the file it came from.
pub struct Gguf {
    path: PathBuf,
    /// The header of the unlocked file, from the magic to the end of the tensor infos
    /// (no padding): for a locked file, rebuilt without the record's key-values.
    original: Vec<u8>,
    /// Offset of the kv count in the header.
    alignment: u64,
    /// The key-values of the unlocked file, in order.
    kvs: Vec<Kv>,
    /// Where the tensor infos begin in `original`.
    infos_at: usize,
    entries: Vec<TensorEntry>,
    /// The block type of each of `entries` that has one.
    stored: Vec<Option<StoredType>>,
    /// Where this file's data section begins.
    data_at: u64,
    /// Whether the bytes between the header and the data section are all zero.
    zero_padding: bool,
    len: u64,
    record: Option<LockInfo>,
    structure: [u8; 32],
}

/// Offset of the key-value count in the header (after magic, version and tensor count).
const KV_COUNT_AT: usize = 16;

impl Gguf {
    /// Reads and validates the GGUF file at `path`, opened as `file`.
    pub fn read(file: &mut File, path: &Path) -> Result<Self> {
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(path, e))?;
        let mut rd = Rd {
            r: BufReader::with_capacity(1 << 16, &*file),
            raw: Vec::new(),
            len,
            path,
        };
        let parsed = parse(&mut rd)?;
        Self::build(parsed, rd.raw, len, path, |range, buf| {
            let mut f = &*file;
            f.seek(SeekFrom::Start(range.start))
                .and_then(|_| f.read_exact(buf))
                .map_err(|e| Error::io(path, e))
        })
    }

    /// Parses a whole GGUF file held in memory, as [`Gguf::read`] reads one.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let mut rd = Rd {
            r: bytes,
            raw: Vec::new(),
            len: bytes.len() as u64,
            path,
        };
        let parsed = parse(&mut rd)?;
        Self::build(parsed, rd.raw, bytes.len() as u64, path, |range, buf| {
            buf.copy_from_slice(&bytes[range.start as usize..range.end as usize]);
            Ok(())
        })
    }

    /// The container of a parsed header (`raw`, its bytes, of a file of `len` bytes):
    /// the record taken out, the layout checked, the structure digest taken with
    /// `read_at`.
    fn build(
        p: Parsed,
        raw: Vec<u8>,
        len: u64,
        path: &Path,
        mut read_at: impl FnMut(Range<u64>, &mut [u8]) -> Result<()>,
    ) -> Result<Self> {
        let corrupt = |what: &str| {
            Error::format(
                path,
                format!(
                    "corrupt deeplock record: {what}; the file was damaged or edited after locking"
                ),
            )
        };
        let bad = |what: String| Error::format(path, format!("not a valid GGUF file: {what}"));
        // The record: the trailing run of deeplock's string key-values.
        let first_record = p
            .kvs
            .iter()
            .rposition(|kv| !(lock_info::is_record_key(&kv.key) && kv.string.is_some()))
            .map_or(0, |i| i + 1);
        if p.kvs[..first_record]
            .iter()
            .any(|kv| lock_info::is_record_key(&kv.key))
        {
            return Err(corrupt("its key-values are not the last of the header"));
        }
        let record_kvs = &p.kvs[first_record..];
        let (original, kvs) = if record_kvs.is_empty() {
            (raw[..p.infos_end].to_vec(), p.kvs.clone())
        } else {
            let cut = record_kvs[0].span.start..record_kvs[record_kvs.len() - 1].span.end;
            let mut o = raw[..cut.start].to_vec();
            o.extend_from_slice(&raw[cut.end..p.infos_end]);
            let count = (p.kvs.len() - record_kvs.len()) as u64;
            o[KV_COUNT_AT..KV_COUNT_AT + 8].copy_from_slice(&count.to_le_bytes());
            (o, p.kvs[..first_record].to_vec())
        };
        let align_up = |x: u64| {
            x.checked_next_multiple_of(p.alignment)
                .ok_or_else(|| bad("its header ends too close to 2^64".into()))
        };
        let data_at = align_up(p.infos_end as u64)?;
        let original_data_at = align_up(original.len() as u64)?;
        let mut entries = Vec::with_capacity(p.infos.len());
        for t in &p.infos {
            if !t.offset.is_multiple_of(p.alignment) {
                return Err(bad(format!(
                    "tensor {:?} is at offset {}, not a multiple of the alignment {}",
                    t.name, t.offset, p.alignment
                )));
            }
            let start = data_at
                .checked_add(t.offset)
                .filter(|s| s.checked_add(t.len).is_some_and(|e| e <= len))
                .ok_or_else(|| {
                    bad(format!(
                        "tensor {:?} ({} bytes at offset {}) runs past the end of the file",
                        t.name, t.len, t.offset
                    ))
                })?;
            let dims: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
            let (dtype, shape, stored) = match dtype_of(t.ggml) {
                Some(d) => (d, dims, None),
                None => {
                    let stored = StoredType {
                        name: t.type_name,
                        shape: dims,
                    };
                    (Dtype::U8, vec![t.len as usize], Some(stored))
                }
            };
            // Relative to the data section, which moves when the header grows.
            let entry = TensorEntry {
                name: t.name.clone(),
                dtype,
                shape,
                start: start - data_at,
                end: start - data_at + t.len,
            };
            entries.push((entry, stored));
        }
        entries.sort_by(|(a, _), (b, _)| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
        let (entries, stored): (Vec<TensorEntry>, Vec<_>) = entries.into_iter().unzip();
        for w in entries.windows(2) {
            if w[1].start < w[0].end {
                return Err(bad(format!(
                    "tensors {:?} and {:?} overlap",
                    w[0].name, w[1].name
                )));
            }
        }
        // The padding this file has after its header.
        let pad_end = data_at.min(len);
        let mut pad = vec![0u8; (pad_end.saturating_sub(p.infos_end as u64)) as usize];
        read_at(p.infos_end as u64..pad_end, &mut pad)?;
        let record = if record_kvs.is_empty() {
            None
        } else {
            if pad.iter().any(|&b| b != 0) {
                return Err(corrupt("the padding after its header is not zero"));
            }
            let map: BTreeMap<&str, &str> = record_kvs
                .iter()
                .map(|kv| (kv.key.as_str(), kv.string.as_deref().expect("strings")))
                .collect();
            let info = LockInfo::from_entries(|k| map.get(k).copied(), &entries, path)?
                .ok_or_else(|| corrupt("it holds no lock"))?;
            // Exactly the key-values lock writes, in its order.
            let written: Vec<(&str, &str)> = record_kvs
                .iter()
                .map(|kv| (kv.key.as_str(), kv.string.as_deref().expect("strings")))
                .collect();
            let expected = info.entries();
            let same = written.len() == expected.len()
                && written
                    .iter()
                    .zip(&expected)
                    .all(|(&(k, v), (ek, ev))| k == *ek && v == ev);
            if !same {
                return Err(corrupt("its key-values are not the ones lock writes"));
            }
            Some(info)
        };
        // The digest: the unlocked header with its padding, then every byte between and
        // after the tensors.
        let mut h = Sha256::new();
        h.update(&original);
        if record.is_some() {
            h.update(vec![
                0u8;
                (original_data_at - original.len() as u64) as usize
            ]);
        } else {
            h.update(&pad);
        }
        let ranges = entries.iter().map(|e| data_at + e.start..data_at + e.end);
        let mut read = |at: u64, buf: &mut [u8]| read_at(at..at + buf.len() as u64, buf);
        super::hash_gaps(&mut h, data_at, len, ranges, false, &mut read)?;
        let structure: [u8; 32] = h.finalize().into();
        Ok(Gguf {
            path: path.to_path_buf(),
            original,
            alignment: p.alignment,
            kvs,
            infos_at: p.infos_at - record_kvs.iter().map(|kv| kv.span.len()).sum::<usize>(),
            entries,
            stored,
            data_at,
            zero_padding: pad.iter().all(|&b| b == 0) && len >= data_at,
            len,
            record,
            structure,
        })
    }
}

/// What [`parse`] reads of a header.
struct Parsed {
    kvs: Vec<Kv>,
    infos: Vec<Info>,
    infos_at: usize,
    infos_end: usize,
    alignment: u64,
}

fn parse<R: Read>(rd: &mut Rd<'_, R>) -> Result<Parsed> {
    let magic = rd.take(4, "the magic")?.to_vec();
    if magic != MAGIC {
        return Err(rd.bad("it does not begin with GGUF"));
    }
    let version = rd.u32("the version")?;
    if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
        return Err(Error::format(
            rd.path,
            "a big-endian GGUF file; deeplock reads little-endian GGUF (what llama.cpp's converters write): convert it on a little-endian machine",
        ));
    }
    if version != 2 && version != 3 {
        return Err(rd.bad(format!(
            "version {version}; deeplock reads GGUF versions 2 and 3"
        )));
    }
    let n_tensors = rd.u64("the tensor count")?;
    let n_kvs = rd.u64("the key-value count")?;
    // A key-value takes at least 13 bytes, a tensor info at least 24.
    let room = rd.len.saturating_sub(rd.pos());
    if n_kvs > room / 13 || n_tensors > room / 24 {
        return Err(rd.bad(format!(
            "it claims {n_tensors} tensors and {n_kvs} key-values, more than {} bytes hold",
            rd.len
        )));
    }
    let mut kvs = Vec::with_capacity(n_kvs as usize);
    let mut alignment = DEFAULT_ALIGNMENT;
    let mut keys = std::collections::HashSet::new();
    for _ in 0..n_kvs {
        let start = rd.raw.len();
        let key = rd.string("a key")?;
        let t = rd.u32("a value type")?;
        let (shown, string, as_u32) = rd.value(t, 0, &key)?;
        if !keys.insert(key.clone()) {
            return Err(rd.bad(format!("the key {key:?} is given twice")));
        }
        if key == "general.alignment" {
            alignment = match as_u32 {
                Some(a) if a > 0 && a.is_power_of_two() => u64::from(a),
                _ => {
                    return Err(rd.bad(format!(
                        "general.alignment is {shown}, not a power of two as a u32"
                    )))
                }
            };
        }
        kvs.push(Kv {
            span: start..rd.raw.len(),
            key,
            string,
            shown,
        });
    }
    let infos_at = rd.raw.len();
    let mut infos = Vec::with_capacity(n_tensors as usize);
    let mut names = std::collections::HashSet::new();
    for _ in 0..n_tensors {
        let name = rd.string("a tensor name")?;
        let n_dims = rd.u32("a tensor's dimension count")?;
        if n_dims > MAX_DIMS {
            return Err(rd.bad(format!(
                "tensor {name:?} has {n_dims} dimensions; ggml allows at most {MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(rd.u64("a tensor's dimension")?);
        }
        let ggml = rd.u32("a tensor's type")?;
        let offset = rd.u64("a tensor's offset")?;
        let (block, size, tname) = ggml_type(ggml).ok_or_else(|| {
            rd.bad(format!(
                "tensor {name:?} has ggml type {ggml}, which deeplock does not know; update deeplock"
            ))
        })?;
        let ne0 = dims.first().copied().unwrap_or(1);
        if ne0 % block != 0 {
            return Err(rd.bad(format!(
                "tensor {name:?}'s first dimension {ne0} is not a multiple of {tname}'s block of {block}"
            )));
        }
        let len = dims
            .iter()
            .skip(1)
            .fold((ne0 / block).checked_mul(size), |acc, &d| {
                acc.and_then(|a| a.checked_mul(d))
            })
            .filter(|&l| l <= rd.len)
            .ok_or_else(|| rd.bad(format!("tensor {name:?} is larger than the file")))?;
        if !names.insert(name.clone()) {
            return Err(rd.bad(format!("the tensor name {name:?} is given twice")));
        }
        infos.push(Info {
            name,
            ggml,
            type_name: tname,
            dims,
            offset,
            len,
        });
    }
    Ok(Parsed {
        kvs,
        infos,
        infos_at,
        infos_end: rd.raw.len(),
        alignment,
    })
}

/// The ggml type of the plain dtype `d`, for [`serialize`].
fn ggml_of(d: Dtype) -> Option<u32> {
    (0..=30).find(|&t| dtype_of(t) == Some(d))
}

/// A GGUF v3 file holding `tensors` (of the plain element types: F32, F16, BF16, F64,
/// I8 to I64) and the string key-values `kvs`, aligned to [`DEFAULT_ALIGNMENT`], as
/// gguf-py's writer lays one out; `path` names it in messages.
pub fn serialize(
    tensors: &[super::TensorView<'_>],
    kvs: &[(&str, &str)],
    path: &Path,
) -> Result<Vec<u8>> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        b.extend_from_slice(&string_kv(k, v));
    }
    let mut offset = 0u64;
    for t in tensors {
        let ggml = ggml_of(t.dtype).ok_or_else(|| {
            Error::format(
                path,
                format!(
                    "tensor {:?} is {:?}, which GGUF has no plain type for",
                    t.name, t.dtype
                ),
            )
        })?;
        b.extend_from_slice(&(t.name.len() as u64).to_le_bytes());
        b.extend_from_slice(t.name.as_bytes());
        b.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            b.extend_from_slice(&(d as u64).to_le_bytes());
        }
        b.extend_from_slice(&ggml.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + t.data.len() as u64).next_multiple_of(DEFAULT_ALIGNMENT);
    }
    let data_at = b.len().next_multiple_of(DEFAULT_ALIGNMENT as usize);
    b.resize(data_at, 0);
    for t in tensors {
        b.resize(b.len().next_multiple_of(DEFAULT_ALIGNMENT as usize), 0);
        b.extend_from_slice(t.data);
    }
    Ok(b)
}

/// The bytes of a key-value `key` = the string `value`.
fn string_kv(key: &str, value: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(key.len() + value.len() + 20);
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&T_STRING.to_le_bytes());
    b.extend_from_slice(&(value.len() as u64).to_le_bytes());
    b.extend_from_slice(value.as_bytes());
    b
}

impl Container for Gguf {
    fn tensors(&self) -> &[TensorEntry] {
        &self.entries
    }

    fn stored_type(&self, i: usize) -> Option<&StoredType> {
        self.stored[i].as_ref()
    }

    fn byte_range(&self, i: usize) -> Range<u64> {
        self.data_at + self.entries[i].start..self.data_at + self.entries[i].end
    }

    fn lock_record(&self) -> Result<Option<LockInfo>> {
        Ok(self.record.clone())
    }

    fn user_metadata(&self) -> Vec<(String, String)> {
        let mut m: Vec<(String, String)> = self
            .kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.shown.clone()))
            .collect();
        m.sort();
        m
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = self
            .record
            .iter()
            .flat_map(|r| r.entries())
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        m.insert(STRUCTURE_KEY.into(), crate::hex::encode(&self.structure));
        m
    }

    fn layout(&self, record: Option<&LockInfo>) -> Result<Layout> {
        let mut metadata = BTreeMap::new();
        let mut header = self.original.clone();
        if let Some(r) = record {
            if self.record.is_none() && !self.zero_padding {
                return Err(Error::format(
                    &self.path,
                    "its header padding is not zero, or the file ends before its data section: unlock could not restore it byte for byte; rewrite it with gguf's tools (gguf-py, llama.cpp) and lock again",
                ));
            }
            let entries = r.entries();
            // The record's key-values go after the model's own, before the tensor infos.
            let mut added = Vec::new();
            for (k, v) in &entries {
                added.extend_from_slice(&string_kv(k, v));
                metadata.insert((*k).to_owned(), v.clone());
            }
            let count = (self.kvs.len() + entries.len()) as u64;
            header[KV_COUNT_AT..KV_COUNT_AT + 8].copy_from_slice(&count.to_le_bytes());
            header.splice(self.infos_at..self.infos_at, added);
        }
        let data_at = (header.len() as u64)
            .checked_next_multiple_of(self.alignment)
            .ok_or_else(|| Error::format(&self.path, "the header is too long"))?;
        header.resize(data_at as usize, 0);
        metadata.insert(STRUCTURE_KEY.into(), crate::hex::encode(&self.structure));
        let mut pieces = vec![Piece::Bytes(header)];
        let mut at = self.data_at;
        for i in 0..self.entries.len() {
            let r = self.byte_range(i);
            if r.start > at {
                pieces.push(Piece::Copy(at..r.start));
            }
            pieces.push(Piece::Tensor(i));
            at = r.end;
        }
        if self.len > at {
            pieces.push(Piece::Copy(at..self.len));
        }
        Ok(Layout { pieces, metadata })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::TensorView;

    #[test]
    fn serialized_files_parse_back_to_their_tensors() {
        let a: Vec<u8> = (0..24).collect();
        let c: Vec<u8> = (0..6).collect();
        let views = [
            TensorView {
                name: "a",
                dtype: Dtype::F32,
                shape: &[2, 3],
                data: &a,
            },
            TensorView {
                name: "c",
                dtype: Dtype::BF16,
                shape: &[3],
                data: &c,
            },
        ];
        let path = Path::new("t.gguf");
        let bytes = serialize(&views, &[("general.name", "t")], path).unwrap();
        let g = Gguf::parse(&bytes, path).unwrap();
        assert_eq!(g.tensors().len(), 2);
        for (i, v) in views.iter().enumerate() {
            let t = &g.tensors()[i];
            assert_eq!(
                (t.name.as_str(), t.dtype, t.shape.as_slice()),
                (v.name, v.dtype, v.shape)
            );
            let r = g.byte_range(i);
            assert_eq!(&bytes[r.start as usize..r.end as usize], v.data);
            assert!(r.start.is_multiple_of(DEFAULT_ALIGNMENT));
        }
        assert_eq!(
            g.user_metadata(),
            [("general.name".to_string(), "t".to_string())]
        );
        let bad = TensorView {
            name: "b",
            dtype: Dtype::BOOL,
            shape: &[1],
            data: &[1],
        };
        assert!(serialize(&[bad], &[], path).is_err());
    }
}
