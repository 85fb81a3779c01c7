//! A checkpoint directory as a model: its model files (shards, each a
//! [`Container`](crate::format::Container) with the data files it names), the other
//! files beside them, and the checkpoint record that binds them. Listing, refusing what
//! would ship in the clear, and gathering and checking the record live here, so that
//! the operations in [`crate::files`] treat a directory as they treat a file.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::record::{self, Contents, RECORD_NAME};
use super::walk::{self, Listing};
use super::Kind;
use crate::authenticate::Checker;
use crate::error::{Error, Result};
use crate::format::{self, Container};
use crate::key::MasterKey;

/// The glob set of `patterns` (`None` if there are none), for the option `what`.
pub(crate) fn globs(patterns: &[String], what: &str) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| {
            Error::Invalid(format!(
                "bad {what} pattern {p:?}: {e}; use globs like 'encoder.*.weight'"
            ))
        })?);
    }
    b.build()
        .map(Some)
        .map_err(|e| Error::Invalid(format!("bad {what} patterns: {e}")))
}

/// The model files of a model: the file itself, or every model file under a directory
/// (an error if it holds none).
pub(crate) fn model_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    shards(path, &walk::list(path, &[], None)?)
}

/// The model files of the directory `dir`, listed as `listing` (an error if it
/// holds none).
pub(crate) fn shards(dir: &Path, listing: &Listing) -> Result<Vec<PathBuf>> {
    let files: Vec<PathBuf> = listing
        .files
        .iter()
        .filter(|e| matches!(e.kind, Kind::Model(_)))
        .map(|e| dir.join(&e.rel))
        .collect();
    if files.is_empty() {
        return Err(no_model(dir));
    }
    Ok(files)
}

/// Lists the directory input `dir` as [`walk::list`] does, leaving out its checkpoint
/// record (it is never copied: lock and upgrade write a new one, unlock none, and
/// checking and joining read it on its own) and the data files of its models (a TF.js
/// model's weight files), which are read and written with their model.
pub(crate) fn list(
    dir: &Path,
    protected: &[PathBuf],
    exclude: Option<&GlobSet>,
) -> Result<Listing> {
    let mut listing = walk::list(dir, protected, exclude)?;
    listing.files.retain(|e| e.rel != Path::new(RECORD_NAME));
    // A model's data files (a TF.js model's weight files) go with it, not on their own.
    let mut owned = HashSet::new();
    for e in &listing.files {
        if matches!(
            e.kind,
            Kind::Model(format::Format::Tfjs | format::Format::Onnx)
        ) {
            let dir_rel = e.rel.parent().unwrap_or(Path::new(""));
            for d in open_container(&dir.join(&e.rel))?.data_files() {
                owned.insert(dir_rel.join(&d.name));
            }
        }
    }
    listing.files.retain(|e| !owned.contains(&e.rel));
    Ok(listing)
}

pub(crate) fn no_model(dir: &Path) -> Error {
    Error::Invalid(format!(
        "{} holds no model file deeplock locks (safetensors, ONNX, TensorFlow Lite, GGUF); pass a model file or a checkpoint directory",
        dir.display()
    ))
}

/// Opens the model file at `path` in its format.
pub(crate) fn open_container(path: &Path) -> Result<Box<dyn Container>> {
    Ok(format::open_path(path)?.1)
}

/// The path of `rel` (relative to a checkpoint directory) as the record names it:
/// UTF-8, `/`-separated.
fn record_path(dir: &Path, rel: &Path) -> Result<String> {
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    parts.map(|p| p.join("/")).ok_or_else(|| Error::Checkpoint {
        dir: dir.to_path_buf(),
        reason: format!(
            "the file name {:?} is not UTF-8, which a checkpoint record cannot name; rename it",
            rel
        ),
    })
}

/// The checkpoint contents of the directory `dir`, listed as `files`: every shard
/// locked with v2, its key and header tag checked under `key`, and every index file.
pub(crate) fn gather(dir: &Path, files: &[walk::Entry], key: &MasterKey) -> Result<Contents> {
    let mut contents = Contents::default();
    for e in files {
        let path = dir.join(&e.rel);
        let rel = record_path(dir, &e.rel)?;
        if matches!(e.kind, Kind::Model(_)) {
            let c = open_container(&path)?;
            let Some(info) = c.lock_record()? else {
                continue;
            };
            let Some(tags) = &info.tags else { continue };
            Checker::new(&*c, &info, key, &path)?;
            let names = c.tensors().iter().map(|t| t.name.clone()).collect();
            contents.shards.insert(rel, (tags.header, names));
        } else if record::is_index(&rel) {
            let bytes = fs::read(&path).map_err(|err| Error::io(&path, err))?;
            contents.indexes.insert(rel, bytes);
        }
    }
    Ok(contents)
}

/// Checks the checkpoint directory `dir` (listed as `files`, the record left out) under
/// `key` against its record: required as soon as it holds a shard locked with v2, so
/// that deleting the record does not turn a checkpoint into loose files. Returns
/// whether there was a record to check (none without v2 shards).
pub(crate) fn check(dir: &Path, files: &[walk::Entry], key: &MasterKey) -> Result<bool> {
    let contents = gather(dir, files, key)?;
    if contents.shards.is_empty() {
        return Ok(false);
    }
    let path = dir.join(RECORD_NAME);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Checkpoint {
                dir: dir.to_path_buf(),
                reason: format!(
                    "its shards are locked with scheme v2 but it holds no {} binding them together (deleted?); if you locked the shards one by one, join them with `deeplock join {}`",
                    RECORD_NAME,
                    dir.display()
                ),
            })
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    record::check(dir, &bytes, &contents, key)?;
    Ok(true)
}

/// A directory input listed as lock lists it (`.git`, key files, `protected`, the record
/// and `exclude` left out) and refused as lock refuses it (weights deeplock cannot lock,
/// unless `allow_plaintext` allows them; a directory without a model file).
pub(crate) fn lock_listing(
    input: &Path,
    protected: &[PathBuf],
    exclude: &[String],
    allow_plaintext: &[String],
) -> Result<Listing> {
    if !fs::metadata(input)
        .map_err(|e| Error::io(input, e))?
        .is_dir()
    {
        return Err(Error::Invalid(format!(
            "{} is not a directory; pass a checkpoint directory",
            input.display()
        )));
    }
    let exclude = globs(exclude, "exclude")?;
    let allowed = globs(allow_plaintext, "allow-plaintext")?;
    let listing = list(input, protected, exclude.as_ref())?;
    refuse_plaintext(input, &listing, allowed.as_ref())?;
    shards(input, &listing)?;
    Ok(listing)
}

/// Refuses to lock a directory holding weight files deeplock cannot lock, unless each
/// is allowed: they would ship in the clear beside the locked model.
fn refuse_plaintext(input: &Path, listing: &Listing, allowed: Option<&GlobSet>) -> Result<()> {
    let refused: Vec<(PathBuf, &'static str)> = listing
        .files
        .iter()
        .filter_map(|e| match e.kind {
            Kind::Weights(what) if !allowed.is_some_and(|g| g.is_match(&e.rel)) => {
                Some((e.rel.clone(), what))
            }
            _ => None,
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(Error::Plaintext {
        dir: input.to_path_buf(),
        files: refused,
    })
}
