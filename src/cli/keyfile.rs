//! Reading and creating key files. The key text is held in zeroizing buffers and is
//! never printed.

use std::io::{Read, Write};
use std::path::Path;

use deeplock::{Error, MasterKey, Result};
use zeroize::Zeroizing;

/// Loads the key from `path`, or from standard input when `path` is `-`.
pub fn load(path: &Path) -> Result<MasterKey> {
    let mut text = Zeroizing::new(String::new());
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Error::io("<stdin>", e))?;
    } else {
        let mut f = std::fs::File::open(path).map_err(|e| {
            Error::Invalid(format!(
                "cannot read key file {}: {e}; create one with `deeplock keygen -o {}`",
                path.display(),
                path.display()
            ))
        })?;
        warn_if_readable_by_others(&f, path);
        f.read_to_string(&mut text)
            .map_err(|_| Error::BadKey(format!("{} is not a text key file", path.display())))?;
    }
    MasterKey::from_hex(&text)
}

#[cfg(unix)]
fn warn_if_readable_by_others(f: &std::fs::File, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = f.metadata() {
        if m.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "deeplock: warning: key file {} is accessible by other users; run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &std::fs::File, _: &Path) {}

/// Writes a fresh key to `path` with mode 0600, refusing to overwrite anything.
pub fn keygen(path: &Path) -> Result<()> {
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
                path.display()
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
    println!(
        "wrote a new key to {} (key check value {})",
        path.display(),
        deeplock::hex::encode(&key.kcv())
    );
    Ok(())
}
