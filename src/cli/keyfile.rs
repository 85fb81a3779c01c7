//! Reading and creating key files. The key text is held in zeroizing buffers and is
//! never printed, nor is an argument that looks like a key.

use std::path::Path;

use deeplock::{key_file, Error, MasterKey, Result};

use super::out::{self, CliError, CliResult};
use super::report::shown_path;

/// Loads the key from `path`, or from standard input when `path` is `-`.
pub fn load(path: &Path) -> Result<MasterKey> {
    if path.as_os_str() == "-" {
        return key_file::read_from(std::io::stdin().lock(), "standard input");
    }
    if looks_like_key(path) && std::fs::symlink_metadata(path).is_err() {
        return Err(Error::Invalid(
            "--key-file takes the path of a key file, and this looks like a key: keys are read from files, never from the command line; put the key in a file and pass its path (create one with `deeplock keygen -o KEYFILE`)".into(),
        ));
    }
    let shown = shown_key_path(path);
    let file = key_file::read(path, &shown)?;
    if file.shared {
        out::warn(format_args!(
            "deeplock: warning: key file {shown} is accessible by other users; run `chmod 600 {shown}`"
        ));
    }
    Ok(file.key)
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

/// Writes a fresh key to `path` with mode 0600, refusing to overwrite anything.
pub fn keygen(path: &Path) -> CliResult<()> {
    let key = MasterKey::generate()?;
    key_file::save(&key, path, &shown_path(path))?;
    // The key is on disk: if this line cannot be printed, the error says it was
    // written, so that nobody generates (and locks with) another one by mistake.
    out::line(format_args!(
        "wrote a new key to {} (key check value {})",
        shown_path(path),
        deeplock::hex::encode(&key.kcv())
    ))
    .map_err(|e: CliError| e.done(|| format!("the key was written to {}", shown_path(path))))
}
