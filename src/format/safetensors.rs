//! safetensors as a [`Container`]: an 8-byte header length, the JSON header (validated
//! once by [`Header`]), then the tensors' bytes. The lock record lives in the header's
//! `__metadata__` ([`LockInfo`]); locking rewrites the header and keeps every tensor
//! where it was relative to the data section.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{Container, Layout, Piece};
use crate::error::{Error, Result};
use crate::header::{Header, TensorEntry, MAX_HEADER_LEN};
use crate::lock_info::{self, LockInfo};

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
