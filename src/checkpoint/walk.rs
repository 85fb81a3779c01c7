//! Listing a checkpoint directory: its files, what each holds, and what is left out.
//!
//! Links are followed (a Hugging Face cache snapshot is a directory of links to blobs),
//! once per directory so a loop of links ends; `.git` is never entered; anything that is
//! neither a regular file nor a directory is refused before it is opened, since reading
//! a FIFO or a device would hang or never end.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use globset::GlobSet;

use super::sniff::{self, Kind};
use crate::error::{Error, Result};
use crate::output;

/// A regular file of a directory input.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its path relative to the directory.
    pub rel: PathBuf,
    /// What it holds.
    pub kind: Kind,
}

/// Why a file or directory of an input is left out of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Git's own directory (history, and LFS copies of every weight file).
    Git,
    /// A key file: the one in use, or any file holding a key.
    Key,
    /// Matched an exclude pattern.
    Excluded,
}

impl Skip {
    /// What it was, for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Skip::Git => "git's directory",
            Skip::Key => "a key file",
            Skip::Excluded => "excluded",
        }
    }
}

/// A directory input, listed.
#[derive(Debug, Default)]
pub struct Listing {
    /// Its regular files, sorted by path.
    pub files: Vec<Entry>,
    /// Its subdirectories, parents first.
    pub dirs: Vec<PathBuf>,
    /// What is left out, and why.
    pub skipped: Vec<(PathBuf, Skip)>,
}

/// Lists `dir`, leaving out `.git`, the `protected` files (the key file), any file
/// that holds a key, and what `exclude` matches (paths relative to `dir`).
pub fn list(dir: &Path, protected: &[PathBuf], exclude: Option<&GlobSet>) -> Result<Listing> {
    let mut out = Listing::default();
    let mut seen = HashSet::new();
    seen.insert(dir.canonicalize().map_err(|e| Error::io(dir, e))?);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let here = dir.join(&rel_dir);
        let mut entries = Vec::new();
        for entry in fs::read_dir(&here).map_err(|e| Error::io(&here, e))? {
            entries.push(entry.map_err(|e| Error::io(&here, e))?.file_name());
        }
        entries.sort();
        for name in entries.into_iter().rev() {
            let rel = rel_dir.join(&name);
            let path = dir.join(&rel);
            if name == ".git" {
                out.skipped.push((rel, Skip::Git));
                continue;
            }
            if exclude.is_some_and(|g| g.is_match(&rel)) {
                out.skipped.push((rel, Skip::Excluded));
                continue;
            }
            let meta = fs::metadata(&path).map_err(|e| {
                if fs::symlink_metadata(&path).is_ok() {
                    Error::Invalid(format!(
                        "{} is a broken symbolic link ({e}); fix it or remove it",
                        path.display()
                    ))
                } else {
                    Error::io(&path, e)
                }
            })?;
            if meta.is_dir() {
                let real = path.canonicalize().map_err(|e| Error::io(&path, e))?;
                if seen.insert(real) {
                    out.dirs.push(rel.clone());
                    stack.push(rel);
                }
                continue;
            }
            if !meta.is_file() {
                return Err(output::not_regular(&path, &meta, Some(dir)));
            }
            if protected.iter().any(|k| output::same_file(k, &path)) {
                out.skipped.push((rel, Skip::Key));
                continue;
            }
            match sniff::classify(&path, meta.len())? {
                Kind::Key => out.skipped.push((rel, Skip::Key)),
                kind => out.files.push(Entry { rel, kind }),
            }
        }
    }
    out.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    out.dirs.sort();
    out.skipped.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
