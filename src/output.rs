//! Safe outputs: never the input, never an existing path without `force`, and written
//! to a temporary sibling that is renamed into place only when complete, so a failure
//! at any point leaves no half-written file behind.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The absolute form of `p`, resolving links of its existing part.
fn resolve(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
    let base = parent
        .map(|d| d.canonicalize().unwrap_or_else(|_| d.to_path_buf()))
        .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
    base.join(p.file_name().unwrap_or_default())
}

/// Checks that `output` may be written for `input`: not the same path, not inside an
/// input directory, and not existing unless `force`.
pub fn check(input: &Path, output: &Path, force: bool) -> Result<()> {
    let (i, o) = (resolve(input), resolve(output));
    if i == o {
        return Err(Error::OutputIsInput {
            path: output.to_path_buf(),
        });
    }
    if input.is_dir() && o.starts_with(&i) {
        return Err(Error::Invalid(format!(
            "the output {} is inside the input directory {}; write it elsewhere (inputs are never modified)",
            output.display(),
            input.display()
        )));
    }
    if !force && fs::symlink_metadata(output).is_ok() {
        return Err(Error::OutputExists {
            path: output.to_path_buf(),
        });
    }
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_prefix(path: &Path) -> String {
    format!(
        ".{}.deeplock-tmp-",
        path.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// Who may read an output.
#[derive(Clone, Debug)]
pub enum Access {
    /// Owner only (0600 files, 0700 directories): for plaintext an unlock produces.
    Private,
    /// Readable by everyone, writable by the owner (0644): reports, plots.
    Readable,
    /// The permissions of this existing path (a locked model is meant to be shipped,
    /// so it may be as readable as its input was).
    Like(PathBuf),
}

impl Access {
    /// Applies to `path` (the finished temporary file or directory).
    fn apply(&self, path: &Path) -> Result<()> {
        match self {
            // Temporary files and directories are created owner-only already.
            Access::Private => Ok(()),
            Access::Readable => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let perms = fs::Permissions::from_mode(0o644);
                    fs::set_permissions(path, perms).map_err(|e| Error::io(path, e))?;
                }
                Ok(())
            }
            Access::Like(model) => {
                let perms = fs::metadata(model)
                    .map_err(|e| Error::io(model, e))?
                    .permissions();
                fs::set_permissions(path, perms).map_err(|e| Error::io(path, e))
            }
        }
    }
}

/// Writes the file `path` through `write`, into a temporary file beside it (created
/// owner-only) that is synced, given `access`, and renamed over `path` only if `write`
/// succeeds. Without `force` an existing `path` is never replaced, even if it appears
/// while writing.
pub fn write_file<T>(
    path: &Path,
    force: bool,
    access: &Access,
    write: impl FnOnce(&mut File) -> Result<T>,
) -> Result<T> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let value = write(tmp.as_file_mut())?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    access.apply(tmp.path())?;
    let persisted = if force {
        tmp.persist(path).map(drop)
    } else {
        tmp.persist_noclobber(path).map(drop)
    };
    persisted.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            Error::OutputExists {
                path: path.to_path_buf(),
            }
        } else {
            Error::io(path, e.error)
        }
    })?;
    Ok(value)
}

/// Builds the directory `path` through `fill`, in a temporary directory beside it
/// (created owner-only, then given `access`) that is renamed to `path` only if `fill`
/// succeeds (replacing an existing one with `force`).
pub fn write_dir<T>(
    path: &Path,
    force: bool,
    access: &Access,
    fill: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let dir = parent_dir(path);
    let tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .tempdir_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let value = fill(tmp.path())?;
    access.apply(tmp.path())?;
    if fs::symlink_metadata(path).is_ok() {
        if !force {
            return Err(Error::OutputExists {
                path: path.to_path_buf(),
            });
        }
        let removed = if path.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
        removed.map_err(|e| Error::io(path, e))?;
    }
    let tmp_path = tmp.keep();
    fs::rename(&tmp_path, path).map_err(|e| {
        let _ = fs::remove_dir_all(&tmp_path);
        Error::io(path, e)
    })?;
    Ok(value)
}
