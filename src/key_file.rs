//! Key files, for every front end (the CLI, Python): 32 hex characters and an optional
//! newline, owner-only. Reading is bounded and refuses anything but a regular file
//! before opening it; the key text lives only in zeroizing buffers and is never part of
//! a message.

use std::io::{Read, Write};
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::key::MasterKey;

/// What a key file holds, for errors about one (`Error::BadKey` adds how to create one).
pub const KEY_FILE_FORM: &str =
    "a key file holds 32 hex characters (a 128-bit key) and an optional newline";

/// Most bytes read from a key file or standard input. A key file is 33 bytes; reading
/// without a bound, `/dev/zero` as a key file would fill memory.
pub const MAX_KEY_FILE: u64 = 512;

/// A key read from a file.
pub struct KeyFile {
    /// The key.
    pub key: MasterKey,
    /// Whether users other than the owner may access the file (a front end warns).
    pub shared: bool,
}

/// Reads the key file at `path`; `shown` is how messages name it (a front end may
/// escape it, or hide an argument that looks like a key).
pub fn read(path: &Path, shown: &str) -> Result<KeyFile> {
    let f = open(path, shown)?;
    let shared = is_shared(&f);
    let mut bytes = Zeroizing::new(Vec::new());
    read_bounded(f, &mut bytes)
        .map_err(|e| Error::Invalid(format!("cannot read key file {shown}: {e}")))?;
    Ok(KeyFile {
        key: parse(&bytes, shown)?,
        shared,
    })
}

/// Reads a key from `r` (standard input), at most [`MAX_KEY_FILE`] bytes.
pub fn read_from(r: impl Read, source: &str) -> Result<MasterKey> {
    let mut bytes = Zeroizing::new(Vec::new());
    read_bounded(r, &mut bytes).map_err(|e| Error::io(source, e))?;
    parse(&bytes, source)
}

/// The key in `bytes`, the whole of a key file read from `source` (named in messages).
pub fn parse(bytes: &[u8], source: &str) -> Result<MasterKey> {
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(Error::BadKey(format!(
            "{source} holds more than {MAX_KEY_FILE} bytes, too many for a key: {KEY_FILE_FORM}"
        )));
    }
    if bytes.starts_with("\u{feff}".as_bytes()) {
        return Err(Error::BadKey(format!(
            "{source} starts with a UTF-8 byte-order mark; save it without one"
        )));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::BadKey(format!("{source} is not a text key file: {KEY_FILE_FORM}")))?;
    MasterKey::from_hex(text)
}

/// Writes `key` to a new file at `path` with mode 0600, refusing to overwrite anything
/// (a lost key means a lost model); `shown` names it in messages. Nothing is left
/// behind on failure.
pub fn save(key: &MasterKey, path: &Path, shown: &str) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Invalid(format!(
                "{shown} already exists; a key is never overwritten (a lost key means a lost model): choose another path"
            ))
        } else {
            Error::io(path, e)
        }
    })?;
    let mut text = key.to_hex();
    text.push('\n');
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Reads at most one byte more than [`MAX_KEY_FILE`], so that too much is seen as such.
fn read_bounded(r: impl Read, into: &mut Vec<u8>) -> std::io::Result<()> {
    r.take(MAX_KEY_FILE + 1).read_to_end(into).map(|_| ())
}

/// Opens the key file at `path`, refusing anything but a regular file before opening it:
/// opening a FIFO blocks until a writer comes, and reading a device can have effects or
/// never end.
fn open(path: &Path, shown: &str) -> Result<std::fs::File> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Invalid(format!(
            "cannot read key file {shown}: it does not exist; create one with `deeplock keygen -o {shown}`"
        )),
        _ => cannot_read(shown, &e),
    })?;
    not_a_regular_file(&meta, shown)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        // Should the path be swapped for a FIFO after the check, opening it still
        // returns at once; the second check below then refuses it.
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let f = opts.open(path).map_err(|e| cannot_read(shown, &e))?;
    let meta = f.metadata().map_err(|e| cannot_read(shown, &e))?;
    not_a_regular_file(&meta, shown)?;
    Ok(f)
}

fn not_a_regular_file(meta: &std::fs::Metadata, shown: &str) -> Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    let what = if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file (a pipe, socket or device)"
    };
    Err(Error::Invalid(format!(
        "key file {shown} is {what}: {KEY_FILE_FORM}; pass one (create it with `deeplock keygen -o KEYFILE`), or `-` to read the key from standard input"
    )))
}

fn cannot_read(shown: &str, e: &std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        Error::Invalid(format!(
            "cannot read key file {shown}: permission denied; run as the file's owner or fix its permissions"
        ))
    } else {
        Error::Invalid(format!("cannot read key file {shown}: {e}"))
    }
}

#[cfg(unix)]
fn is_shared(f: &std::fs::File) -> bool {
    use std::os::unix::fs::PermissionsExt;
    f.metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

#[cfg(not(unix))]
fn is_shared(_: &std::fs::File) -> bool {
    false
}
