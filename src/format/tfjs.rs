//! TensorFlow.js as a [`Container`]: a `model.json` (layers or graph model) and the
//! weight files its `weightsManifest` names. The tensors are the manifest's weights, at
//! their offsets in the model's data (every group's files, one after another), so the
//! weight files are locked in place and a weight split across two files is one tensor.
//! The lock record is one JSON member, `"deeplock"`, inserted as the last member of
//! `model.json`, which TF.js ignores; unlock cuts it out again, byte for byte.
//! `docs/SPEC.md`, "TensorFlow.js", defines the mapping.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Container, DataFile, Layout, Piece};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::TensorEntry;
use crate::lock_info::LockInfo;

/// The metadata entry v2's header tag binds for a TF.js model (never stored): the
/// SHA-256, in hex, of the unlocked `model.json`.
pub const MODEL_KEY: &str = "deeplock.tfjs.model";

/// The top-level member of `model.json` that holds the lock record.
const RECORD_MEMBER: &str = "deeplock";

/// Largest `model.json` read.
const MAX_JSON: u64 = 256 << 20;

/// The bytes a TF.js `model.json` holds, somewhere, and other JSON files rarely do.
const MANIFEST_KEY: &[u8] = b"\"weightsManifest\"";

/// Whether the file `file` (at `path`, of `len` bytes, beginning with `head`) is a
/// TF.js `model.json`: named `*.json`, a JSON object that holds `"weightsManifest"`.
/// Reads the file only when its name and first byte say it may be one.
pub fn is_model(file: &File, path: &Path, head: &[u8], len: u64) -> Result<bool> {
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let object = head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !json || !object || len > MAX_JSON {
        return Ok(false);
    }
    let bytes = read_all(file, path, len)?;
    Ok(bytes.windows(MANIFEST_KEY.len()).any(|w| w == MANIFEST_KEY))
}

/// The `len` bytes of `file`, read positionally (a caller's position stays where it
/// was).
fn read_all(file: &File, path: &Path, len: u64) -> Result<Vec<u8>> {
    if len > MAX_JSON {
        return Err(Error::format(
            path,
            format!("a model.json of {len} bytes is larger than deeplock reads ({MAX_JSON})"),
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    super::joined::read_exact_at(file, 0, &mut bytes).map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// A TF.js model's parse: its tensors, its weight files, its record.
pub struct Tfjs {
    path: PathBuf,
    /// Bytes of `model.json` as read (with its record, if locked).
    json_len: u64,
    /// The unlocked `model.json`.
    original: Vec<u8>,
    /// Hex SHA-256 of `original`.
    digest: String,
    tensors: Vec<TensorEntry>,
    data: Vec<DataFile>,
    /// The record's entries as stored, in order; `None` if the file is not locked.
    record: Option<Vec<(String, String)>>,
}

impl Tfjs {
    /// Reads and validates the `model.json` in `file` (at `path`); the weight files are
    /// opened by whoever reads the tensors ([`super::ModelFiles`]).
    pub fn read(file: &File, path: &Path) -> Result<Self> {
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Self::parse(&read_all(file, path, len)?, path)
    }

    /// Parses a `model.json` held in memory, as found at `path` (its weight files are
    /// named relative to its directory).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let mut top = parse_object(bytes, path)?;
        // The unlocked model.json is the locked one without the record's text, which
        // `cut_record` finds as the object's last member: its parse is this one without
        // that member.
        let (original, record) = match top.shift_remove(RECORD_MEMBER) {
            None => (bytes.to_vec(), None),
            Some(member) => {
                let entries = record_entries(&member, path)?;
                (cut_record(bytes, &entries, path)?, Some(entries))
            }
        };
        let (tensors, data) = manifest(&top, path)?;
        Ok(Tfjs {
            path: path.to_path_buf(),
            json_len: bytes.len() as u64,
            digest: crate::hex::encode(&Sha256::digest(&original)),
            original,
            tensors,
            data,
            record,
        })
    }

    fn metadata_with(&self, record: &[(String, String)]) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = record.iter().cloned().collect();
        m.insert(MODEL_KEY.into(), self.digest.clone());
        m
    }
}

fn parse_object(bytes: &[u8], path: &Path) -> Result<serde_json::Map<String, Value>> {
    let bad = |why: String| Error::format(path, why);
    let text =
        std::str::from_utf8(bytes).map_err(|_| bad("not a TF.js model.json: not UTF-8".into()))?;
    match crate::header::parse_unique(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("not a TF.js model.json: not a JSON object".into())),
        Err(e) => Err(bad(format!("not a valid TF.js model.json: {e}"))),
    }
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::format(
        path,
        format!("corrupt deeplock metadata: {what}; the file was damaged or edited after locking"),
    )
}

/// The `"deeplock"` member's entries, in the order stored: strings only.
fn record_entries(member: &Value, path: &Path) -> Result<Vec<(String, String)>> {
    let Value::Object(m) = member else {
        return Err(corrupt(path, "the \"deeplock\" member is not an object"));
    };
    m.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(corrupt(path, format!("the record's {k:?} is not a string"))),
        })
        .collect()
}

/// The record's entries as one compact JSON object, keys and values as JSON strings.
fn encode_record(entries: &[(String, String)]) -> Vec<u8> {
    let mut out = b"{".to_vec();
    for (n, (k, v)) in entries.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend(serde_json::to_vec(k).expect("strings serialize"));
        out.push(b':');
        out.extend(serde_json::to_vec(v).expect("strings serialize"));
    }
    out.push(b'}');
    out
}

/// Offset of the `}` that closes a JSON object's text: its last byte other than white
/// space.
fn closing_brace(bytes: &[u8]) -> Option<usize> {
    let p = bytes.iter().rposition(|b| !b.is_ascii_whitespace())?;
    (bytes[p] == b'}').then_some(p)
}

/// `json` with the record `entries` inserted as its object's last member.
fn insert_record(json: &[u8], entries: &[(String, String)], path: &Path) -> Result<Vec<u8>> {
    let p = closing_brace(json).ok_or_else(|| {
        Error::format(
            path,
            "its JSON does not end with the '}' closing its object",
        )
    })?;
    let empty = json[..p].iter().rev().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let mut out = json[..p].to_vec();
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(b"\"deeplock\":");
    out.extend(encode_record(entries));
    out.extend_from_slice(&json[p..]);
    Ok(out)
}

/// The unlocked `model.json` of the locked `bytes`, whose record holds `entries`: the
/// record's text, where lock puts it, cut out.
fn cut_record(bytes: &[u8], entries: &[(String, String)], path: &Path) -> Result<Vec<u8>> {
    let misplaced = || {
        corrupt(
            path,
            "the \"deeplock\" member is not where lock wrote it, as the last member, written compactly (was model.json re-saved?)",
        )
    };
    let q = closing_brace(bytes).ok_or_else(misplaced)?;
    let mut text = b"\"deeplock\":".to_vec();
    text.extend(encode_record(entries));
    if !bytes[..q].ends_with(&text) {
        return Err(misplaced());
    }
    let mut at = q - text.len();
    if bytes[..at].ends_with(b",") {
        at -= 1;
    }
    let mut original = bytes[..at].to_vec();
    original.extend_from_slice(&bytes[q..]);
    Ok(original)
}

/// The stored type of a manifest weight: its quantized type if it has one.
fn stored_dtype(w: &serde_json::Map<String, Value>, name: &str, path: &Path) -> Result<Dtype> {
    let bad = |why: String| Error::format(path, format!("weight {name:?}: {why}"));
    let quantized = match w.get("quantization") {
        None | Some(Value::Null) => None,
        Some(Value::Object(q)) => match q.get("dtype") {
            Some(Value::String(d)) => Some(d.as_str()),
            _ => return Err(bad("its quantization has no dtype".into())),
        },
        Some(_) => return Err(bad("its quantization is not an object".into())),
    };
    if let Some(q) = quantized {
        return match q {
            "uint8" => Ok(Dtype::U8),
            "uint16" => Ok(Dtype::U16),
            "float16" => Ok(Dtype::F16),
            other => Err(bad(format!("unknown quantization dtype {other:?}"))),
        };
    }
    match w.get("dtype") {
        Some(Value::String(d)) => match d.as_str() {
            "float32" => Ok(Dtype::F32),
            "int32" => Ok(Dtype::I32),
            "bool" => Ok(Dtype::BOOL),
            "complex64" => Ok(Dtype::C64),
            "string" => Err(bad(
                "string weights have no fixed length, which deeplock cannot lock in place; keep strings out of the weights (a lookup table's keys)".into(),
            )),
            other => Err(bad(format!("unknown dtype {other:?}"))),
        },
        _ => Err(bad("no dtype".into())),
    }
}

/// Whether `rel` is a weight path deeplock accepts (see SPEC): a plain relative path
/// with nothing a URL would read otherwise.
fn valid_path(rel: &str) -> bool {
    super::plain_relative_path(rel) && !rel.contains(['\\', '?', '#', '%'])
}

/// The tensors and weight files of the (unlocked) `model.json` object `top`.
fn manifest(
    top: &serde_json::Map<String, Value>,
    path: &Path,
) -> Result<(Vec<TensorEntry>, Vec<DataFile>)> {
    let bad = |why: String| Error::format(path, why);
    let Some(Value::Array(groups)) = top.get("weightsManifest") else {
        return Err(bad(
            "not a TF.js model.json: it has no weightsManifest array".into(),
        ));
    };
    let dir = path.parent().unwrap_or(Path::new(""));
    let (mut tensors, mut data) = (Vec::new(), Vec::new());
    let (mut names, mut paths) = (HashSet::new(), HashSet::new());
    let mut at = 0u64;
    for (g, group) in groups.iter().enumerate() {
        let Value::Object(group) = group else {
            return Err(bad(format!("weightsManifest[{g}] is not an object")));
        };
        let (Some(Value::Array(ps)), Some(Value::Array(ws))) =
            (group.get("paths"), group.get("weights"))
        else {
            return Err(bad(format!(
                "weightsManifest[{g}] has no paths and weights arrays"
            )));
        };
        for w in ws {
            let Value::Object(w) = w else {
                return Err(bad(format!("a weight of group {g} is not an object")));
            };
            let Some(Value::String(name)) = w.get("name") else {
                return Err(bad(format!("a weight of group {g} has no name")));
            };
            if !names.insert(name.clone()) {
                return Err(bad(format!(
                    "two weights are named {name:?}; TF.js would load one of them for both"
                )));
            }
            let dtype = stored_dtype(w, name, path)?;
            let shape: Vec<usize> = match w.get("shape") {
                Some(Value::Array(dims)) => dims
                    .iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        bad(format!("weight {name:?}: its shape is not a list of sizes"))
                    })?,
                _ => return Err(bad(format!("weight {name:?} has no shape"))),
            };
            let len = shape
                .iter()
                .try_fold(
                    dtype.size().expect("TF.js types are whole bytes"),
                    |n, &d| n.checked_mul(d as u64),
                )
                .filter(|&n| n <= 1 << 50)
                .ok_or_else(|| bad(format!("weight {name:?}: its shape is too large")))?;
            let end = at
                .checked_add(len)
                .ok_or_else(|| bad("its weights are too large".into()))?;
            tensors.push(TensorEntry {
                name: name.clone(),
                dtype,
                shape,
                start: at,
                end,
            });
            at = end;
        }
        if ps.is_empty() && !ws.is_empty() {
            return Err(bad(format!(
                "weightsManifest[{g}] has weights but no weight files"
            )));
        }
        for (k, p) in ps.iter().enumerate() {
            let Value::String(rel) = p else {
                return Err(bad(format!(
                    "weightsManifest[{g}].paths[{k}] is not a string"
                )));
            };
            if !valid_path(rel) {
                return Err(bad(format!(
                    "the weight file path {rel:?} is not a plain relative path (no '..', '\\', '?', '#', '%' or empty parts); rename the file and its manifest entry"
                )));
            }
            if !paths.insert(rel.clone()) {
                return Err(bad(format!("the weight file {rel:?} is named twice")));
            }
            data.push(DataFile {
                name: rel.clone(),
                path: dir.join(rel),
                group_end: (k + 1 == ps.len()).then_some(at),
            });
        }
    }
    Ok((tensors, data))
}

impl Container for Tfjs {
    fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    fn byte_range(&self, i: usize) -> Range<u64> {
        let t = &self.tensors[i];
        self.json_len + t.start..self.json_len + t.end
    }

    fn lock_record(&self) -> Result<Option<LockInfo>> {
        let Some(stored) = &self.record else {
            return Ok(None);
        };
        let get = |k: &str| {
            stored
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let info = LockInfo::from_entries(get, &self.tensors, &self.path)?
            .ok_or_else(|| corrupt(&self.path, "the \"deeplock\" member holds no lock record"))?;
        let expected: Vec<(String, String)> = info
            .entries()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        if &expected != stored {
            return Err(corrupt(
                &self.path,
                "the \"deeplock\" member holds other entries than its record, or in another order",
            ));
        }
        Ok(Some(info))
    }

    fn user_metadata(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.metadata_with(self.record.as_deref().unwrap_or(&[]))
    }

    fn layout(&self, record: Option<&LockInfo>) -> Result<Layout> {
        let entries: Vec<(String, String)> = record
            .map(|r| {
                r.entries()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect()
            })
            .unwrap_or_default();
        let json = match record {
            Some(_) => insert_record(&self.original, &entries, &self.path)?,
            None => self.original.clone(),
        };
        let mut pieces = vec![Piece::Bytes(json)];
        pieces.extend((0..self.tensors.len()).map(Piece::Tensor));
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

    fn model(weights: &str, paths: &str) -> Vec<u8> {
        format!(
            "{{\"format\": \"layers-model\",\n \"weightsManifest\": [{{\"paths\": {paths}, \"weights\": {weights}}}]}}\n"
        )
        .into_bytes()
    }

    #[test]
    fn weights_lie_back_to_back_across_groups_and_quantized_ones_take_their_stored_type() {
        let json = br#"{"weightsManifest": [
            {"paths": ["a.bin", "sub/b.bin"], "weights": [
                {"name": "k", "shape": [2, 3], "dtype": "float32"},
                {"name": "q", "shape": [5], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.1, "min": 0}}]},
            {"paths": ["c.bin"], "weights": [
                {"name": "h", "shape": [3], "dtype": "float32", "quantization": {"dtype": "float16"}},
                {"name": "b", "shape": [], "dtype": "bool"}]}]}"#;
        let m = Tfjs::parse(json, Path::new("/m/model.json")).unwrap();
        let got: Vec<_> = m
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t.dtype, t.start, t.end))
            .collect();
        assert_eq!(
            got,
            [
                ("k", Dtype::F32, 0, 24),
                ("q", Dtype::U8, 24, 29),
                ("h", Dtype::F16, 29, 35),
                ("b", Dtype::BOOL, 35, 36)
            ]
        );
        let files: Vec<_> = m
            .data_files()
            .iter()
            .map(|d| (d.path.clone(), d.group_end))
            .collect();
        assert_eq!(
            files,
            [
                (PathBuf::from("/m/a.bin"), None),
                (PathBuf::from("/m/sub/b.bin"), Some(29)),
                (PathBuf::from("/m/c.bin"), Some(36))
            ]
        );
        assert_eq!(
            m.byte_range(1),
            json.len() as u64 + 24..json.len() as u64 + 29
        );
    }

    #[test]
    fn the_record_goes_in_and_comes_out_byte_for_byte() {
        let p = Path::new("model.json");
        let entries = vec![
            ("deeplock.version".to_owned(), "2".to_owned()),
            ("deeplock.locked".to_owned(), "[\"a\\\"b\"]".to_owned()),
        ];
        for json in [
            model("[]", "[]"),
            b"{ }".to_vec(),
            b"{\"weightsManifest\":[]}  \n".to_vec(),
        ] {
            let locked = insert_record(&json, &entries, p).unwrap();
            let top = parse_object(&locked, p).unwrap();
            let stored = record_entries(&top["deeplock"], p).unwrap();
            assert_eq!(stored, entries);
            assert_eq!(cut_record(&locked, &stored, p).unwrap(), json);
        }
        // Re-saved (pretty-printed), the record is refused as misplaced.
        let locked = insert_record(&model("[]", "[]"), &entries, p).unwrap();
        let v: Value = serde_json::from_slice(&locked).unwrap();
        let resaved = serde_json::to_vec_pretty(&v).unwrap();
        let top = parse_object(&resaved, p).unwrap();
        let stored = record_entries(&top["deeplock"], p).unwrap();
        let e = cut_record(&resaved, &stored, p).unwrap_err().to_string();
        assert!(e.contains("not where lock wrote it"), "{e}");
    }

    #[test]
    fn bad_manifests_are_refused_with_what_is_wrong() {
        let p = Path::new("model.json");
        let w = r#"[{"name": "w", "shape": [2], "dtype": "float32"}]"#;
        for (json, want) in [
            (model(w, r#"["../x.bin"]"#), "not a plain relative path"),
            (model(w, r#"["a%20b.bin"]"#), "not a plain relative path"),
            (model(w, r#"[]"#), "no weight files"),
            (model(w, r#"["a.bin", "a.bin"]"#), "named twice"),
            (
                model(
                    r#"[{"name": "s", "shape": [1], "dtype": "string"}]"#,
                    r#"["a"]"#,
                ),
                "string weights",
            ),
            (
                model(
                    r#"[{"name": "w", "shape": [-1], "dtype": "float32"}]"#,
                    r#"["a"]"#,
                ),
                "not a list of sizes",
            ),
            (
                model(
                    r#"[{"name": "w", "shape": [4294967296, 4294967296], "dtype": "float32"}]"#,
                    r#"["a"]"#,
                ),
                "too large",
            ),
            (
                model(
                    r#"[{"name": "w", "shape": [1], "dtype": "float32"}, {"name": "w", "shape": [1], "dtype": "int32"}]"#,
                    r#"["a"]"#,
                ),
                "two weights are named",
            ),
            (
                b"{\"weightsManifest\": [], \"a\": 1, \"a\": 2}".to_vec(),
                "twice",
            ),
            (b"{\"modelTopology\": {}}".to_vec(), "no weightsManifest"),
        ] {
            let e = Tfjs::parse(&json, p).err().expect(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
