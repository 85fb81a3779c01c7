//! safetensors as a [`Container`]: an 8-byte header length, the JSON header (validated
//! once by [`Header`]), then the tensors' bytes. The lock record lives in the header's
//! `__metadata__` ([`LockInfo`]); locking rewrites the header and keeps every tensor
//! where it was relative to the data section.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{Container, Layout, Piece, TensorView};
use crate::error::{Error, Result};
use crate::header::{Header, TensorEntry, MAX_HEADER_LEN};
use crate::lock_info::{self, LockInfo};

/// The safetensors file holding `tensors` and the string `metadata` (`__metadata__`, in
/// the order given), byte for byte the same every time: the `safetensors` crate's
/// layout (tensors ordered by alignment, then name) with the metadata in place. `path`
/// is where it will be written, for messages.
pub fn serialize(
    tensors: &[TensorView<'_>],
    metadata: &[(&str, &str)],
    path: &Path,
) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|t| {
            ::safetensors::tensor::TensorView::new(
                t.dtype.to_safetensors(),
                t.shape.to_vec(),
                t.data,
            )
            .map(|v| (t.name.to_owned(), v))
            .map_err(|e| Error::Invalid(format!("tensor {:?}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    let file = ::safetensors::serialize(views, None)
        .map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))?;
    // The crate takes metadata as a HashMap and writes it in random order; set it here,
    // in the order given, so that the same model always makes the same bytes.
    let json_len = u64::from_le_bytes(file[..8].try_into().expect("8 bytes")) as usize;
    let mut header = Header::parse(&file[8..8 + json_len], path)?;
    for &(k, v) in metadata {
        header.set_metadata(k, v.to_owned());
    }
    let mut out = header.to_bytes();
    out.extend_from_slice(&file[8 + json_len..]);
    Ok(out)
}

/// Whether a file of `len` bytes beginning with `head` is safetensors, whatever its
/// name: a plausible header length, then a JSON object.
pub fn looks_like(head: &[u8], len: u64) -> bool {
    let Some(n) = head.get(..8) else { return false };
    let n = u64::from_le_bytes(n.try_into().expect("8 bytes"));
    (2..=MAX_HEADER_LEN).contains(&n) && 8 + n <= len && head.get(8) == Some(&b'{')
}

/// A safetensors file's header, and the file it came from (for messages).
pub struct Safetensors {
    header: Header,
    path: PathBuf,
}

impl Safetensors {
    /// Reads and validates the header of the file at `path`, opened as `file`.
    pub fn read(file: &mut File, path: &Path) -> Result<Self> {
        Ok(Safetensors {
            header: Header::read(file, path)?,
            path: path.to_path_buf(),
        })
    }

    /// Parses a whole safetensors file held in memory (`bytes`), as [`Safetensors::read`]
    /// would read it from disk; `path` names it in messages.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad =
            |reason: &str| Error::format(path, format!("not a valid safetensors file: {reason}"));
        let n = bytes
            .get(..8)
            .ok_or_else(|| bad("shorter than the 8-byte header length"))?;
        let json_len = u64::from_le_bytes(n.try_into().expect("8 bytes"));
        let json = usize::try_from(json_len)
            .ok()
            .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
            .ok_or_else(|| bad("the header runs past the end"))?;
        let header = Header::parse(json, path)?;
        if header.data_start().checked_add(header.data_len()) != Some(bytes.len() as u64) {
            return Err(bad("the tensors do not cover the data exactly"));
        }
        Ok(Safetensors {
            header,
            path: path.to_path_buf(),
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }
}

impl Container for Safetensors {
    fn tensors(&self) -> &[TensorEntry] {
        &self.header.tensors
    }

    fn byte_range(&self, i: usize) -> Range<u64> {
        let t = &self.header.tensors[i];
        let at = self.header.data_start();
        at + t.start..at + t.end
    }

    fn lock_record(&self) -> Result<Option<LockInfo>> {
        LockInfo::from_header(&self.header, &self.path)
    }

    fn user_metadata(&self) -> Vec<(String, String)> {
        self.header
            .metadata()
            .into_iter()
            .filter(|(k, _)| !lock_info::is_owned_key(k))
            .collect()
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.header.metadata()
    }

    fn layout(&self, record: Option<&LockInfo>) -> Result<Layout> {
        let mut header = self.header.clone();
        match record {
            Some(r) => r.write_to(&mut header),
            None => LockInfo::remove_from(&mut header),
        }
        let bytes = header.to_bytes();
        let json_len = bytes.len() as u64 - 8;
        if json_len > MAX_HEADER_LEN {
            return Err(Error::format(
                &self.path,
                format!(
                    "locked, its header would be {json_len} bytes, over the {MAX_HEADER_LEN}-byte limit of safetensors readers (the lock lists every locked tensor's name, and these names are long or many); shorten the names or split the file into shards"
                ),
            ));
        }
        let mut pieces = vec![Piece::Bytes(bytes)];
        pieces.extend((0..self.header.tensors.len()).map(Piece::Tensor));
        Ok(Layout {
            pieces,
            metadata: header.metadata(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Dtype;

    #[test]
    fn serialize_writes_any_dtype_and_reads_back() {
        let (a, b) = ([1u8, 2, 3, 4, 5, 6], [9u8; 3]);
        let views = [
            TensorView {
                name: "w",
                dtype: Dtype::BF16,
                shape: &[3],
                data: &a,
            },
            TensorView {
                name: "m",
                dtype: Dtype::BOOL,
                shape: &[1, 3],
                data: &b,
            },
        ];
        let path = Path::new("t.safetensors");
        let bytes = serialize(&views, &[("format", "pt")], path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let h = Header::parse(&bytes[8..8 + n], path).unwrap();
        assert_eq!(h.metadata_value("format"), Some("pt"));
        for v in views {
            let t = h.tensors.iter().find(|t| t.name == v.name).unwrap();
            assert_eq!((t.dtype, &t.shape[..]), (v.dtype, v.shape));
            let at = 8 + n + t.start as usize;
            assert_eq!(&bytes[at..at + v.data.len()], v.data);
        }
        // A size that does not fit the shape is refused, naming the tensor.
        let bad = [TensorView {
            shape: &[4],
            ..views[0]
        }];
        let e = serialize(&bad, &[], path).unwrap_err().to_string();
        assert!(e.contains("\"w\""), "{e}");
    }
}
