//! The checkpoint record (`deeplock.checkpoint`): one v2 tag over the shards of a
//! checkpoint directory and its index files, so that a shard removed, added, renamed, or
//! swapped with a shard of another checkpoint locked under the same key is refused, and
//! an index file (`model.safetensors.index.json`) that disagrees with the shards too.
//!
//! Shards are locked one by one, each with its own salt (on as many machines as wanted);
//! the record joins them from their headers alone ([`seal`]). docs/SPEC.md ("Checkpoint
//! record") defines it; [`crate::auth::CheckpointKey`] computes the tag.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::auth::{self, CheckpointKey, Tag};
use crate::error::{Error, Result};
use crate::key::MasterKey;
use crate::scheme::Salt;

/// The record's file name, in the checkpoint directory's root.
pub const RECORD_NAME: &str = "deeplock.checkpoint";

/// Whether the file at `rel` (relative to a checkpoint directory, `/`-separated) is an
/// index file the record binds.
pub fn is_index(rel: &str) -> bool {
    rel.ends_with(".safetensors.index.json")
}

/// What a checkpoint directory holds, as found: each v2 shard's header tag (checked)
/// and tensor names, and each index file's bytes, by path relative to the directory.
#[derive(Debug, Default)]
pub struct Contents {
    /// Each shard: its header tag `T_H` and the names of its tensors.
    pub shards: BTreeMap<String, (Tag, Vec<String>)>,
    /// Each index file's bytes.
    pub indexes: BTreeMap<String, Vec<u8>>,
}

impl Contents {
    fn shard_tags(&self) -> BTreeMap<String, Tag> {
        self.shards
            .iter()
            .map(|(k, (t, _))| (k.clone(), *t))
            .collect()
    }

    fn index_digests(&self) -> BTreeMap<String, [u8; 32]> {
        self.indexes
            .iter()
            .map(|(k, b)| (k.clone(), auth::index_digest(b)))
            .collect()
    }
}

/// The record as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    version: String,
    scheme: String,
    salt: String,
    shards: BTreeMap<String, String>,
    indexes: BTreeMap<String, String>,
    mac: String,
}

/// Checks that every index file agrees with the shards: each names only shards of the
/// directory (relative to the index's own folder), and maps to each shard it names
/// exactly that shard's tensors.
pub fn check_indexes(dir: &Path, contents: &Contents) -> Result<()> {
    for (rel, bytes) in &contents.indexes {
        let bad = |why: String| Error::Checkpoint {
            dir: dir.to_path_buf(),
            reason: format!("the index {rel} {why}"),
        };
        let index: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("is not valid JSON ({e})")))?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("has no weight_map object".into()))?;
        let folder = rel.rsplit_once('/').map_or("", |(f, _)| f);
        let mut named: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| {
                bad(format!(
                    "maps {tensor:?} to something that is not a file name"
                ))
            })?;
            let path = if folder.is_empty() {
                shard.to_owned()
            } else {
                format!("{folder}/{shard}")
            };
            if !contents.shards.contains_key(&path) {
                return Err(bad(format!(
                    "maps {tensor:?} to {shard:?}, which is not a locked shard of the checkpoint"
                )));
            }
            named.entry(path).or_default().insert(tensor.as_str());
        }
        for (path, tensors) in &named {
            let (_, have) = &contents.shards[path];
            let have: BTreeSet<&str> = have.iter().map(String::as_str).collect();
            if let Some(t) = tensors.difference(&have).next() {
                return Err(bad(format!(
                    "maps {t:?} to {path}, which holds no such tensor"
                )));
            }
            if let Some(t) = have.difference(tensors).next() {
                return Err(bad(format!("does not map {t:?}, a tensor of {path}")));
            }
        }
    }
    Ok(())
}

/// The record joining `contents` (the directory `dir`, its shards' headers checked)
/// under `key`, with a fresh salt: its bytes, to be written as [`RECORD_NAME`].
pub fn seal(dir: &Path, contents: &Contents, key: &MasterKey) -> Result<Vec<u8>> {
    if contents.shards.is_empty() {
        return Err(Error::Checkpoint {
            dir: dir.to_path_buf(),
            reason: "holds no shard locked with scheme v2 to join".into(),
        });
    }
    check_indexes(dir, contents)?;
    let salt = Salt::generate()?;
    let (shards, indexes) = (contents.shard_tags(), contents.index_digests());
    let mac = CheckpointKey::derive(key, &salt).tag(&shards, &indexes);
    let record = Record {
        version: auth::VERSION.into(),
        scheme: auth::SCHEME.into(),
        salt: salt.to_hex(),
        shards: shards
            .iter()
            .map(|(k, t)| (k.clone(), t.to_hex()))
            .collect(),
        indexes: indexes
            .iter()
            .map(|(k, d)| (k.clone(), crate::hex::encode(d)))
            .collect(),
        mac: mac.to_hex(),
    };
    let mut bytes = serde_json::to_vec_pretty(&record).expect("a record serializes");
    bytes.push(b'\n');
    Ok(bytes)
}

/// Checks the record `bytes` of the directory `dir` against `contents` as found, under
/// `key`. The tag is recomputed from the directory, not from the record's lists, which
/// only serve to say what is missing, extra or changed when it does not match.
pub fn check(dir: &Path, bytes: &[u8], contents: &Contents, key: &MasterKey) -> Result<()> {
    let bad = |reason: String| Error::Checkpoint {
        dir: dir.to_path_buf(),
        reason,
    };
    let record: Record = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("its {RECORD_NAME} is not a valid record ({e})")))?;
    if record.version != auth::VERSION || record.scheme != auth::SCHEME {
        return Err(bad(format!(
            "its {RECORD_NAME} is of version {:?}, scheme {:?}; this build reads version {} ({}): upgrade deeplock",
            record.version,
            record.scheme,
            auth::VERSION,
            auth::SCHEME
        )));
    }
    let salt = Salt::from_hex(&record.salt).ok_or_else(|| {
        bad(format!(
            "the salt of its {RECORD_NAME} is not 32 hex characters"
        ))
    })?;
    let mac = Tag::from_hex(&record.mac).ok_or_else(|| {
        bad(format!(
            "the mac of its {RECORD_NAME} is not 32 hex characters"
        ))
    })?;
    let (shards, indexes) = (contents.shard_tags(), contents.index_digests());
    if CheckpointKey::derive(key, &salt).tag(&shards, &indexes) == mac {
        return check_indexes(dir, contents);
    }
    Err(bad(format!(
        "{} (authentication failed)",
        explain(&record, &shards, &indexes)
    )))
}

/// What differs between the record's lists and the directory as found, for the message
/// of a record whose tag does not match.
fn explain(
    record: &Record,
    shards: &BTreeMap<String, Tag>,
    indexes: &BTreeMap<String, [u8; 32]>,
) -> String {
    for name in record.shards.keys() {
        if !shards.contains_key(name) {
            return format!("the shard {name} is missing");
        }
    }
    for (name, tag) in shards {
        match record.shards.get(name) {
            None => return format!("{name} is not a shard of this checkpoint (added, or renamed)"),
            Some(t) if *t != tag.to_hex() => {
                return format!("the shard {name} is not the one the checkpoint was locked with (replaced, or swapped with another checkpoint's)")
            }
            _ => {}
        }
    }
    for name in record.indexes.keys() {
        if !indexes.contains_key(name) {
            return format!("the index {name} is missing");
        }
    }
    for (name, digest) in indexes {
        match record.indexes.get(name) {
            None => return format!("the index {name} was added"),
            Some(d) if *d != crate::hex::encode(digest) => {
                return format!("the index {name} was modified")
            }
            _ => {}
        }
    }
    format!("its {RECORD_NAME} was modified, or made with another key")
}
