//! Reading and writing safetensors headers, validated once at parse time.
//!
//! A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then
//! the data section. Parsing reads only the first 8 + N bytes, so a file far larger than
//! memory costs nothing here; the `safetensors` crate's own `Metadata` checks each entry's
//! dtype and its size against its shape (checked arithmetic), and this module checks that
//! the offsets are contiguous and cover the data section exactly.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use safetensors::tensor::{Metadata, TensorInfo};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// Largest header accepted, in bytes (the `safetensors` crate's own limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// The key of the free-form string metadata in a header.
pub const METADATA_KEY: &str = "__metadata__";

/// One tensor of a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// The tensor's name.
    pub name: String,
    /// The dtype (`F32`, `BF16`, ...), parsed once here.
    pub dtype: Dtype,
    /// The shape.
    pub shape: Vec<usize>,
    /// Start of its bytes, relative to the data section.
    pub start: u64,
    /// End (exclusive) of its bytes, relative to the data section.
    pub end: u64,
}

impl TensorEntry {
    /// Its size in bytes, as its offsets span.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Number of elements of its shape.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size in bytes its shape and dtype take, sub-byte elements packed: what a valid
    /// header's offsets span ([`TensorEntry::len`]), worked out from the shape alone, as
    /// an inference plan sizes its buffers.
    pub fn bytes(&self) -> u64 {
        let elements = self.elements() as u64;
        match self.dtype.size() {
            Some(size) => elements * size,
            None => (elements * u64::from(self.dtype.bits())).div_ceil(8),
        }
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// A parsed, validated safetensors header.
#[derive(Clone, Debug)]
pub struct Header {
    /// The header object as written, key order kept, so that rewriting it changes
    /// nothing but the metadata that deeplock adds or removes.
    object: Map<String, Value>,
    /// The tensors, ordered by data offset.
    pub tensors: Vec<TensorEntry>,
    /// The JSON length N as stored in the file.
    pub json_len: u64,
}

impl Header {
    /// Reads and validates the header of the file at `path`, opened as `file`,
    /// leaving the file position at the start of the data section.
    pub fn read(file: &mut File, path: &Path) -> Result<Self> {
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let bad = |reason: String| Error::format(path, reason);
        if file_len < 8 {
            return Err(bad(format!(
                "not a safetensors file: {file_len} bytes, shorter than the 8-byte header length (truncated?)"
            )));
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(path, e))?;
        let mut n = [0u8; 8];
        file.read_exact(&mut n).map_err(|e| Error::io(path, e))?;
        let json_len = u64::from_le_bytes(n);
        if json_len > MAX_HEADER_LEN {
            return Err(bad(format!(
                "header too large: {json_len} bytes declared, the limit is {MAX_HEADER_LEN} (corrupt file, or not safetensors)"
            )));
        }
        let data_start = 8 + json_len;
        if data_start > file_len {
            return Err(bad(format!(
                "truncated: the header declares {json_len} bytes but the file has only {} after the length field",
                file_len - 8
            )));
        }
        let mut json = vec![0u8; json_len as usize];
        file.read_exact(&mut json).map_err(|e| Error::io(path, e))?;
        let header = Self::parse(&json, path)?;
        let data_len = file_len - data_start;
        let need = header.data_len();
        if need > data_len {
            return Err(bad(format!(
                "truncated: tensors need {need} bytes of data but the file holds {data_len}"
            )));
        }
        if need < data_len {
            return Err(bad(format!(
                "tensor offsets do not cover the data: {} bytes after the last tensor belong to none (corrupt file)",
                data_len - need
            )));
        }
        Ok(Header { json_len, ..header })
    }

    /// Parses and validates header JSON (without the length field). `json_len` is set
    /// to the length of `json`.
    pub fn parse(json: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::format(path, reason);
        let text = std::str::from_utf8(json)
            .map_err(|_| bad("corrupt header: not UTF-8 (is this a safetensors file?)".into()))?;
        let object = match serde_json::from_str::<Unique>(text) {
            Ok(Unique(Value::Object(m))) => m,
            Ok(_) => return Err(bad("invalid safetensors header: not a JSON object".into())),
            Err(e) => return Err(bad(format!("invalid safetensors header: {e}"))),
        };
        // One parse, read through references: a header of a million tensors is about a
        // gigabyte as JSON values, so no second parse and no copy of an entry. The
        // safetensors crate's own checks run on each entry as read (dtype, shape and
        // size with checked arithmetic; the string map of `__metadata__`); contiguity,
        // which it checks across a whole header, is checked below after sorting.
        let invalid = |e: &dyn std::fmt::Display| bad(format!("invalid safetensors header: {e}"));
        let mut tensors = Vec::with_capacity(object.len());
        for (name, v) in &object {
            if name == METADATA_KEY {
                Option::<HashMap<String, String>>::deserialize(v)
                    .map_err(|e| invalid(&format_args!("{METADATA_KEY}: {e}")))?;
                continue;
            }
            let entry = RawEntry::deserialize(v)
                .map_err(|e| invalid(&format_args!("tensor {name:?}: {e}")))?;
            let [start, end] = entry.data_offsets;
            let info = TensorInfo::deserialize(v)
                .map_err(|e| invalid(&format_args!("tensor {name:?}: {e}")))?;
            let size = end.checked_sub(start).ok_or_else(|| {
                invalid(&format_args!(
                    "tensor {name:?} ends at {end}, before its start {start}"
                ))
            })?;
            let size = usize::try_from(size).map_err(|_| {
                invalid(&format_args!(
                    "tensor {name:?} is larger than this machine's memory"
                ))
            })?;
            let alone = TensorInfo {
                data_offsets: (0, size),
                ..info
            };
            Metadata::new(None, vec![(String::new(), alone)])
                .map_err(|e| invalid(&format_args!("tensor {name:?}: {e}")))?;
            // The safetensors crate accepted it above, so it is one Dtype knows.
            let dtype = Dtype::parse(&entry.dtype).ok_or_else(|| {
                invalid(&format_args!(
                    "tensor {name:?} has an unknown dtype {:?}",
                    entry.dtype
                ))
            })?;
            tensors.push(TensorEntry {
                name: name.clone(),
                dtype,
                shape: entry.shape,
                start,
                end,
            });
        }
        tensors.sort_by_key(|t| (t.start, t.end));
        let mut at = 0;
        for t in &tensors {
            if t.start != at {
                return Err(invalid(&format_args!(
                    "tensor {:?} starts at byte {} of the data, not at {at} where the one before it ends (overlapping or gapped offsets)",
                    t.name, t.start
                )));
            }
            at = t.end;
        }
        Ok(Header {
            object,
            tensors,
            json_len: json.len() as u64,
        })
    }

    /// Size of the data section the tensors cover.
    pub fn data_len(&self) -> u64 {
        self.tensors.last().map_or(0, |t| t.end)
    }

    /// Offset of the data section from the start of the file.
    pub fn data_start(&self) -> u64 {
        8 + self.json_len
    }

    /// The string metadata (`__metadata__`), empty if there is none.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        match self.object.get(METADATA_KEY) {
            Some(Value::Object(m)) => m
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    /// A metadata value.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.object.get(METADATA_KEY)?.get(key)?.as_str()
    }

    /// Sets metadata `key` to `value`, creating `__metadata__` (as the first entry,
    /// where safetensors writers put it) if the header has none. A `null` one (which
    /// safetensors readers take as none) becomes an object in its place.
    pub fn set_metadata(&mut self, key: &str, value: String) {
        if let Some(m) = self.object.get_mut(METADATA_KEY) {
            if !m.is_object() {
                *m = Value::Object(Map::new());
            }
        } else {
            let mut object = Map::new();
            object.insert(METADATA_KEY.into(), Value::Object(Map::new()));
            object.extend(std::mem::take(&mut self.object));
            self.object = object;
        }
        if let Some(Value::Object(m)) = self.object.get_mut(METADATA_KEY) {
            m.insert(key.into(), Value::String(value));
        }
    }

    /// Whether `__metadata__` is there but holds nothing: `Some("{}")` for an empty
    /// object, `Some("null")` for `null`; `None` if it is absent or holds entries.
    pub fn empty_metadata(&self) -> Option<&'static str> {
        match self.object.get(METADATA_KEY)? {
            Value::Null => Some("null"),
            Value::Object(m) if m.is_empty() => Some("{}"),
            _ => None,
        }
    }

    /// Sets `__metadata__`, which holds no entries now, to `"{}"` or `"null"` (as
    /// [`Header::empty_metadata`] named it): in its place if it is there, else as the
    /// first entry.
    pub fn restore_empty_metadata(&mut self, form: &str) {
        let value = if form == "null" {
            Value::Null
        } else {
            Value::Object(Map::new())
        };
        if let Some(m) = self.object.get_mut(METADATA_KEY) {
            *m = value;
            return;
        }
        let mut object = Map::new();
        object.insert(METADATA_KEY.into(), value);
        object.extend(std::mem::take(&mut self.object));
        self.object = object;
    }

    /// Drops `__metadata__` if it is an empty object.
    pub fn drop_empty_metadata(&mut self) {
        if matches!(self.object.get(METADATA_KEY), Some(Value::Object(m)) if m.is_empty()) {
            self.object.shift_remove(METADATA_KEY);
        }
    }

    /// The bytes that start a file with this header: the 8-byte length, then compact
    /// JSON padded with spaces to a multiple of 8 (so the data section stays 8-aligned,
    /// as safetensors writers do).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec(&self.object).expect("a JSON map serializes");
        json.resize(json.len().div_ceil(8) * 8, b' ');
        let mut out = Vec::with_capacity(8 + json.len());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out
    }

    /// Removes metadata `key`, leaving `__metadata__` in place even if empty.
    pub fn remove_metadata(&mut self, key: &str) {
        if let Some(Value::Object(m)) = self.object.get_mut(METADATA_KEY) {
            m.shift_remove(key);
        }
    }
}

/// A JSON value read as `serde_json::Value` is, except that an object holding a key
/// twice is refused: readers disagree on which of the two counts (serde_json keeps the
/// last, others the first), so a duplicated key could show one tensor or metadata value
/// to deeplock's checks and another to the framework that loads the file.
struct Unique(Value);

/// Parses `text` as JSON, refusing an object that holds a key twice (see [`Unique`]):
/// for every JSON file deeplock binds (a TF.js `model.json`, the checkpoint record).
pub(crate) fn parse_unique(text: &str) -> serde_json::Result<Value> {
    serde_json::from_str::<Unique>(text).map(|Unique(v)| v)
}

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Unique(v) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "the key {key:?} appears twice in one object (ambiguous: readers disagree on which counts)"
                )));
            }
            object.insert(key, v);
        }
        Ok(Value::Object(object))
    }
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Header> {
        Header::parse(s.as_bytes(), Path::new("t.safetensors"))
    }

    #[test]
    fn keeps_order_and_round_trips_metadata() {
        let s = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
        let mut h = parse(s).unwrap();
        assert_eq!(h.tensors[0].name, "a");
        assert_eq!(h.data_len(), 12);
        h.set_metadata("deeplock.version", "1".into());
        assert_eq!(h.metadata_value("deeplock.version"), Some("1"));
        h.remove_metadata("deeplock.version");
        h.drop_empty_metadata();
        let bytes = h.to_bytes();
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(std::str::from_utf8(&bytes[8..]).unwrap().trim_end(), s);
    }

    #[test]
    fn metadata_is_added_first_and_removed_when_empty() {
        let s = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
        let mut h = parse(s).unwrap();
        h.set_metadata("deeplock.version", "1".into());
        let text = String::from_utf8(h.to_bytes()[8..].to_vec()).unwrap();
        assert!(
            text.starts_with(r#"{"__metadata__":{"deeplock.version":"1"},"a""#),
            "{text}"
        );
        h.remove_metadata("deeplock.version");
        h.drop_empty_metadata();
        assert_eq!(
            String::from_utf8(h.to_bytes()[8..].to_vec())
                .unwrap()
                .trim_end(),
            s
        );
    }

    #[test]
    fn null_metadata_takes_the_lock_record() {
        let s = r#"{"__metadata__":null,"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
        let mut h = parse(s).unwrap();
        assert!(h.metadata().is_empty());
        h.set_metadata("deeplock.version", "1".into());
        let back = Header::parse(&h.to_bytes()[8..], Path::new("t")).unwrap();
        assert_eq!(back.metadata_value("deeplock.version"), Some("1"));
    }

    #[test]
    fn sizes_from_shapes_are_what_the_offsets_span() {
        let s = r#"{"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"f":{"dtype":"F4","shape":[6],"data_offsets":[12,15]},"s":{"dtype":"F64","shape":[],"data_offsets":[15,23]}}"#;
        let h = parse(s).unwrap();
        let got: Vec<(&str, usize, u64)> = h
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.elements(), t.bytes()))
            .collect();
        assert_eq!(got, [("w", 6, 12), ("f", 6, 3), ("s", 1, 8)]);
        assert!(h.tensors.iter().all(|t| t.bytes() == t.len()));
    }

    #[test]
    fn rejects_bad_offsets_and_dtypes() {
        for s in [
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
            r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}}"#,
            r#"{"a":{"dtype":"U8","shape":[18446744073709551615,2],"data_offsets":[0,1]}}"#,
            r#"["not an object"]"#,
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
            r#"{"__metadata__":{"k":"1","k":"2"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
            r#"{"a":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}}"#,
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
    }
}
