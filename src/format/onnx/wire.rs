//! The protobuf wire format, read with checked arithmetic from a [`Source`] (a file read
//! through a window, or bytes in memory), every field's byte offsets kept: what the
//! ONNX container needs to lock tensor bytes where they lie.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Random-access bytes: a file or a buffer.
pub trait Source {
    /// Bytes in all.
    fn len(&self) -> u64;
    /// Whether it holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `n` bytes at `at`, fewer only where the source ends first.
    fn read(&mut self, at: u64, n: usize) -> Result<&[u8]>;
}

/// Bytes in memory.
pub struct Slice<'a>(pub &'a [u8]);

impl Source for Slice<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&mut self, at: u64, n: usize) -> Result<&[u8]> {
        let start = usize::try_from(at).unwrap_or(usize::MAX).min(self.0.len());
        let end = start.saturating_add(n).min(self.0.len());
        Ok(&self.0[start..end])
    }
}

/// Bytes a file window reads at once.
const WINDOW: usize = 1 << 20;

/// A file, read through a window of 1 MiB.
pub struct FileWindow<'a> {
    file: &'a File,
    path: PathBuf,
    len: u64,
    buf: Vec<u8>,
    at: u64,
}

impl<'a> FileWindow<'a> {
    /// The file `file` (at `path`, for messages).
    pub fn new(file: &'a File, path: &Path) -> Result<Self> {
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Ok(FileWindow {
            file,
            path: path.to_path_buf(),
            len,
            buf: Vec::new(),
            at: 0,
        })
    }
}

impl Source for FileWindow<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&mut self, at: u64, n: usize) -> Result<&[u8]> {
        let at = at.min(self.len);
        let n = (n as u64).min(self.len - at) as usize;
        let inside = at >= self.at && at - self.at + n as u64 <= self.buf.len() as u64;
        if !inside {
            let want = (n.max(WINDOW) as u64).min(self.len - at) as usize;
            self.buf.resize(want, 0);
            let mut f = self.file;
            f.seek(SeekFrom::Start(at))
                .and_then(|_| f.read_exact(&mut self.buf))
                .map_err(|e| Error::io(&self.path, e))?;
            self.at = at;
        }
        let from = (at - self.at) as usize;
        Ok(&self.buf[from..from + n])
    }
}

/// A field's value, as its wire type holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1: eight bytes.
    Fixed64,
    /// Wire type 2: the payload's bytes, `start..end`.
    Len(u64, u64),
    /// Wire type 5: four bytes.
    Fixed32,
}

/// One field of a message.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    /// The field number.
    pub number: u32,
    /// Where its tag starts.
    pub start: u64,
    /// Its value.
    pub value: Value,
    /// Where it ends (the next field's start).
    pub end: u64,
}

/// Reads protobuf fields from a source, every length checked against the message that
/// holds it.
pub struct Reader<'s> {
    src: &'s mut dyn Source,
    path: PathBuf,
}

impl<'s> Reader<'s> {
    /// A reader of `src` (the file at `path`, for messages).
    pub fn new(src: &'s mut dyn Source, path: &Path) -> Self {
        Reader {
            src,
            path: path.to_path_buf(),
        }
    }

    /// The file read, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the source.
    pub fn len(&self) -> u64 {
        self.src.len()
    }

    /// Whether the source holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.src.is_empty()
    }

    /// A clear error about the file.
    pub fn bad(&self, reason: impl std::fmt::Display) -> Error {
        Error::format(
            &self.path,
            format!("not a valid ONNX file: {reason} (truncated or damaged?)"),
        )
    }

    /// The varint at `at`, which must end by `end`: its value and where it ends.
    pub fn varint(&mut self, at: u64, end: u64) -> Result<(u64, u64)> {
        let bytes = self.src.read(at, 10)?;
        let mut value = 0u64;
        for (i, &b) in bytes.iter().enumerate() {
            if i == 9 && b > 1 {
                break;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                let next = at + i as u64 + 1;
                if next > end {
                    break;
                }
                return Ok((value, next));
            }
        }
        Err(self.bad(format!("a bad or cut varint at byte {at}")))
    }

    /// The field at `at`, inside a message that ends at `end`.
    pub fn field(&mut self, at: u64, end: u64) -> Result<Field> {
        let (tag, pos) = self.varint(at, end)?;
        let number = u32::try_from(tag >> 3).unwrap_or(0);
        if number == 0 || number > (1 << 29) - 1 {
            return Err(self.bad(format!("field number {} at byte {at}", tag >> 3)));
        }
        let fixed = |n: u64, r: &Self| {
            pos.checked_add(n)
                .filter(|&e| e <= end)
                .ok_or_else(|| r.bad(format!("field {number} at byte {at} runs past its message")))
        };
        let (value, next) = match tag & 7 {
            0 => {
                let (v, next) = self.varint(pos, end)?;
                (Value::Varint(v), next)
            }
            1 => (Value::Fixed64, fixed(8, self)?),
            2 => {
                let (n, start) = self.varint(pos, end)?;
                let stop = start.checked_add(n).filter(|&e| e <= end).ok_or_else(|| {
                    self.bad(format!(
                        "field {number} at byte {at} declares {n} bytes, past the end of its message"
                    ))
                })?;
                (Value::Len(start, stop), stop)
            }
            5 => (Value::Fixed32, fixed(4, self)?),
            w => {
                return Err(self.bad(format!(
                    "field {number} at byte {at} has wire type {w}, which ONNX never uses"
                )))
            }
        };
        Ok(Field {
            number,
            start: at,
            value,
            end: next,
        })
    }

    /// Every field of the message `start..end`, in order.
    pub fn fields(&mut self, start: u64, end: u64) -> Result<Vec<Field>> {
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            let f = self.field(at, end)?;
            at = f.end;
            out.push(f);
        }
        Ok(out)
    }

    /// The bytes `start..end`, at most `limit` of them.
    pub fn bytes(&mut self, start: u64, end: u64, limit: usize) -> Result<Vec<u8>> {
        let n = end - start;
        if n > limit as u64 {
            return Err(self.bad(format!(
                "a {n}-byte string at byte {start}, over the {limit}-byte limit for names and metadata"
            )));
        }
        let b = self.src.read(start, n as usize)?;
        if b.len() as u64 != n {
            return Err(self.bad(format!("the file ends inside the string at byte {start}")));
        }
        Ok(b.to_vec())
    }

    /// The UTF-8 string `start..end`.
    pub fn string(&mut self, start: u64, end: u64) -> Result<String> {
        let b = self.bytes(start, end, MAX_STRING)?;
        String::from_utf8(b)
            .map_err(|_| self.bad(format!("the string at byte {start} is not UTF-8")))
    }

    /// Feeds the bytes `start..end` to `f`, a window at a time.
    pub fn each_window(&mut self, start: u64, end: u64, mut f: impl FnMut(&[u8])) -> Result<()> {
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(WINDOW);
            let b = self.src.read(at, n)?;
            if b.is_empty() {
                return Err(self.bad(format!("the file ends at byte {at}")));
            }
            f(b);
            at += b.len() as u64;
        }
        Ok(())
    }
}

/// Longest string (name, metadata key or value) read: 16 MiB.
pub const MAX_STRING: usize = 16 << 20;

/// Appends `v` as a varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends field `number` holding the bytes `payload` (wire type 2).
pub fn put_bytes(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_varint(out, (u64::from(number) << 3) | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_bad_ones_are_refused() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut s = Slice(&b);
            let mut r = Reader::new(&mut s, Path::new("x"));
            assert_eq!(r.varint(0, b.len() as u64).unwrap(), (v, b.len() as u64));
            // Cut by one byte: refused.
            assert!(r.varint(0, b.len() as u64 - 1).is_err());
        }
        let eleven = [0xffu8; 11];
        let mut s = Slice(&eleven);
        assert!(Reader::new(&mut s, Path::new("x")).varint(0, 11).is_err());
    }

    #[test]
    fn a_length_past_its_message_is_refused() {
        // Field 1, wire type 2, 5 bytes declared, 2 present.
        let b = [0x0a, 5, 1, 2];
        let mut s = Slice(&b);
        let e = Reader::new(&mut s, Path::new("x"))
            .fields(0, 4)
            .unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
    }
}
