//! Reading and creating key files. The key text is held in zeroizing buffers and is
//! never printed, nor is an argument that looks like a key.

use std::io::{Read, Write};
use std::path::Path;

use deeplock::{Error, MasterKey, Result};
use zeroize::Zeroizing;

use super::out::{self, CliError, CliResult};
use super::report::shown_path;

/// What a key file holds, for errors about one (`Error::BadKey` adds how to create one).
const KEY_FILE_FORM: &str =
    "a key file holds 32 hex characters (a 128-bit key) and an optional newline";

/// Most bytes read from a key file or standard input. A key file is 33 bytes; reading
/// without a bound, `--key-file /dev/zero` would fill memory.
const MAX_KEY_FILE: u64 = 512;

/// Loads the key from `path`, or from standard input when `path` is `-`.
pub fn load(path: &Path) -> Result<MasterKey> {
    let mut bytes = Zeroizing::new(Vec::new());
    let source = if path.as_os_str() == "-" {
        read_bounded(std::io::stdin().lock(), &mut bytes).map_err(|e| Error::io("<stdin>", e))?;
        "standard input".to_string()
    } else {
        let f = open(path)?;
        warn_if_readable_by_others(&f, path);
        read_bounded(f, &mut bytes).map_err(|e| {
            Error::Invalid(format!(
                "cannot read key file {}: {e}",
                shown_key_path(path)
            ))
        })?;
        shown_key_path(path)
    };
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
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::BadKey(format!("{source} is not a text key file: {KEY_FILE_FORM}")))?;
    MasterKey::from_hex(text)
}

/// Reads at most one byte more than [`MAX_KEY_FILE`], so that too much is seen as such.
fn read_bounded(r: impl Read, into: &mut Vec<u8>) -> std::io::Result<()> {
    r.take(MAX_KEY_FILE + 1).read_to_end(into).map(|_| ())
}

/// Whether a `--key-file` argument looks like a key rather than a path: 16 or more hex
/// digits and nothing else (a `0x` prefix allowed). Such an argument is never printed.
fn looks_like_key(path: &Path) -> bool {
    let text = path.to_string_lossy();
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    t.len() >= 16 && t.bytes().all(|c| c.is_ascii_hexdigit())
}

/// `path` as messages show it: never the argument itself if it looks like a key.
fn shown_key_path(path: &Path) -> String {
    if looks_like_key(path) {
        "the key file".into()
    } else {
        shown_path(path)
    }
}

/// Opens the key file at `path`, refusing anything but a regular file before opening it:
/// opening a FIFO blocks until a writer comes, and reading a device can have effects or
/// never end.
fn open(path: &Path) -> Result<std::fs::File> {
    let shown = shown_key_path(path);
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound if looks_like_key(path) => Error::Invalid(
            "--key-file takes the path of a key file, and this looks like a key: keys are read from files, never from the command line; put the key in a file and pass its path (create one with `deeplock keygen -o KEYFILE`)".into(),
        ),
        std::io::ErrorKind::NotFound => Error::Invalid(format!(
            "cannot read key file {shown}: it does not exist; create one with `deeplock keygen -o {shown}`"
        )),
        _ => cannot_read(&shown, &e),
    })?;
    not_a_regular_file(&meta, &shown)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        // Should the path be swapped for a FIFO after the check, opening it still
        // returns at once; the second check below then refuses it.
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let f = opts.open(path).map_err(|e| cannot_read(&shown, &e))?;
    let meta = f.metadata().map_err(|e| cannot_read(&shown, &e))?;
    not_a_regular_file(&meta, &shown)?;
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
fn warn_if_readable_by_others(f: &std::fs::File, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = f.metadata() {
        if m.permissions().mode() & 0o077 != 0 {
            let shown = shown_key_path(path);
            out::warn(format_args!(
                "deeplock: warning: key file {shown} is accessible by other users; run `chmod 600 {shown}`"
            ));
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &std::fs::File, _: &Path) {}

/// Writes a fresh key to `path` with mode 0600, refusing to overwrite anything.
pub fn keygen(path: &Path) -> CliResult<()> {
    let key = MasterKey::generate()?;
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
                "{} already exists; keygen never overwrites a key (a lost key means a lost model): choose another path",
                shown_path(path)
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
        return Err(Error::io(path, e).into());
    }
    // The key is on disk: if this line cannot be printed, the error says it was
    // written, so that nobody generates (and locks with) another one by mistake.
    out::line(format_args!(
        "wrote a new key to {} (key check value {})",
        shown_path(path),
        deeplock::hex::encode(&key.kcv())
    ))
    .map_err(|e: CliError| e.done(|| format!("the key was written to {}", shown_path(path))))
}
