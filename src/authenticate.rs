//! Scheme v2 applied to a model file: the descriptors of a container's tensors, the
//! header tag of its lock record, and the two halves every path runs. [`Sealer`] tags a
//! file's tensors as lock writes them and completes its record; [`Checker`] checks a
//! file's key and header tag before anything else is read, then each tensor's tag, so
//! that unlock, verify and the loaders refuse a tampered file before any of its
//! plaintext leaves the library. [`crate::auth`] holds the primitive; this module only
//! says which bytes and fields of a container it runs over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::auth::{self, FileAuthKey, HeaderFields, Tag, TensorDescriptor, TensorTagger};
use crate::error::{Error, Result};
use crate::format::Container;
use crate::header::TensorEntry;
use crate::key::MasterKey;
use crate::lock_info::{self, LockInfo, Tags};

/// The v2 descriptor of each of `tensors` (a container's, in its order), locked as
/// `record` lists: descriptor `i` is that of `tensors[i]`, its index the tensor's
/// position in index order.
pub fn descriptors(tensors: &[TensorEntry], record: &LockInfo) -> Result<Vec<TensorDescriptor>> {
    if tensors.len() as u64 > auth::MAX_TENSOR_INDEX as u64 + 1 {
        return Err(Error::Invalid(format!(
            "{} tensors in one file: scheme v2 tags at most {}; split the file into shards",
            tensors.len(),
            auth::MAX_TENSOR_INDEX as u64 + 1
        )));
    }
    let mut descs: Vec<Option<TensorDescriptor>> = vec![None; tensors.len()];
    for (t, &i) in auth::index_order(tensors).iter().enumerate() {
        let e = &tensors[i];
        descs[i] = Some(TensorDescriptor::of(t as u32, e, record.is_locked(&e.name)));
    }
    Ok(descs.into_iter().flatten().collect())
}

/// The header tag of a file with these `tensors` (a container's, in its order, each with
/// its tensor tag in `tags`, index order) and `metadata` (all of it: the record's own
/// keys are left out here), under `record`'s fields.
fn header_tag(
    key: &FileAuthKey,
    record: &LockInfo,
    tags: &[Tag],
    tensors: &[TensorEntry],
    metadata: &BTreeMap<String, String>,
) -> Result<Tag> {
    let pairs: Vec<(&TensorEntry, Tag)> = auth::index_order(tensors)
        .iter()
        .zip(tags)
        .map(|(&i, &tag)| (&tensors[i], tag))
        .collect();
    let metadata: BTreeMap<String, String> = metadata
        .iter()
        .filter(|(k, _)| !lock_info::is_record_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    key.header_tag(&HeaderFields {
        version: record.version(),
        scheme: record.scheme(),
        salt: &record.salt,
        kcv: &record.kcv,
        locked: &record.locked,
        tensors: &pairs,
        metadata: &metadata,
    })
}

/// Tags the tensors of a file being locked, as their locked bytes are written, then
/// completes its lock record with the tags and the header tag.
pub struct Sealer {
    key: FileAuthKey,
    taggers: Vec<TensorTagger>,
}

impl Sealer {
    /// The lock record of a file with these `tensors` (a container's) locked under `key`
    /// with `salt`, the tensors `locked`, and its tags still to compute (zero, so the
    /// header it gives has its final length), and the sealer that computes them.
    pub fn new(
        key: &MasterKey,
        salt: crate::scheme::Salt,
        locked: Vec<String>,
        tensors: &[TensorEntry],
    ) -> Result<(LockInfo, Sealer)> {
        let file_key = FileAuthKey::derive(key, &salt);
        let zero = Tag([0; auth::TAG_LEN]);
        let mut record = LockInfo {
            salt,
            kcv: file_key.kcv(),
            locked,
            tags: Some(Tags {
                tensors: vec![zero; tensors.len()],
                header: zero,
            }),
        };
        record.locked.sort_unstable();
        let taggers = descriptors(tensors, &record)?
            .into_iter()
            .map(TensorTagger::new)
            .collect::<Result<_>>()?;
        Ok((
            record,
            Sealer {
                key: file_key,
                taggers,
            },
        ))
    }

    /// Feeds the next locked bytes of tensor `i` (in the container's order), in order.
    pub fn feed(&mut self, i: usize, bytes: &[u8]) -> Result<()> {
        self.taggers[i].update(&self.key, bytes)
    }

    /// The tag of chunk `chunk` of tensor `i` (in the container's order) over `bytes`,
    /// exactly that chunk's locked bytes: for streamers that tag chunks on many threads,
    /// in any order, and hand the tags to [`Sealer::insert`].
    pub fn chunk_tag(&self, i: usize, chunk: u64, bytes: &[u8]) -> Tag {
        let index = self.taggers[i].descriptor().index;
        self.key.chunk_tag(index, chunk, bytes)
    }

    /// Adds the tag of chunk `chunk` of tensor `i`, from [`Sealer::chunk_tag`]; refuses
    /// a chunk given twice or outside the tensor.
    pub fn insert(&mut self, i: usize, chunk: u64, tag: Tag) -> Result<()> {
        self.taggers[i].insert(chunk, tag)
    }

    /// Completes `record` (the one [`Sealer::new`] gave) once every tensor's bytes were
    /// fed: each tensor's tag, then the header tag over the file written with these
    /// `tensors` and `metadata` (the output's, as its layout says).
    pub fn finish(
        self,
        record: &mut LockInfo,
        tensors: &[TensorEntry],
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        let mut tags = vec![Tag([0; auth::TAG_LEN]); self.taggers.len()];
        for tagger in self.taggers {
            let t = tagger.descriptor().index as usize;
            tags[t] = tagger.finish(&self.key)?;
        }
        let header = header_tag(&self.key, record, &tags, tensors, metadata)?;
        record.tags = Some(Tags {
            tensors: tags,
            header,
        });
        Ok(())
    }
}

/// A v2 file whose key and header tag were checked: what is left to check is each
/// tensor's bytes against its tag.
pub struct Checker {
    key: FileAuthKey,
    path: PathBuf,
    names: Vec<String>,
    descs: Vec<TensorDescriptor>,
    /// Each tensor's tag as the header records it, in the container's order.
    expected: Vec<Tag>,
}

impl Checker {
    /// Checks the v2 `record` read from `container` (the file at `path`) under `key`:
    /// its key check value (a wrong key), then its header tag (an edited header). An
    /// error if `record` is v1, which carries no tags.
    pub fn new(
        container: &dyn Container,
        record: &LockInfo,
        key: &MasterKey,
        path: &Path,
    ) -> Result<Self> {
        let file_key = record.check_key(key, path)?.ok_or_else(|| {
            Error::format(
                path,
                "locked with scheme v1, which carries no tags to check",
            )
        })?;
        let tags = record.tags.as_ref().expect("a v2 record has tags");
        let tensors = container.tensors();
        let computed = header_tag(
            &file_key,
            record,
            &tags.tensors,
            tensors,
            &container.metadata(),
        )?;
        if computed != tags.header {
            return Err(Error::Tampered {
                path: path.to_path_buf(),
                what: "the header".into(),
            });
        }
        let descs = descriptors(tensors, record)?;
        let expected = descs
            .iter()
            .map(|d| tags.tensors[d.index as usize])
            .collect();
        Ok(Checker {
            key: file_key,
            path: path.to_path_buf(),
            names: tensors.iter().map(|t| t.name.clone()).collect(),
            descs,
            expected,
        })
    }

    /// A tagger for tensor `i` (in the container's order), to feed its bytes as stored.
    pub fn tagger(&self, i: usize) -> TensorTagger {
        TensorTagger::new(self.descs[i].clone()).expect("descriptors were checked")
    }

    /// The tag of chunk `chunk` of tensor `i` over `bytes`, exactly that chunk's bytes
    /// as stored: for streamers that tag chunks on many threads, in any order, and hand
    /// the tags to a [`Checker::tagger`]'s `insert`.
    pub fn chunk_tag(&self, i: usize, chunk: u64, bytes: &[u8]) -> Tag {
        self.key.chunk_tag(self.descs[i].index, chunk, bytes)
    }

    /// The file's MAC key, to feed taggers with.
    pub fn key(&self) -> &FileAuthKey {
        &self.key
    }

    /// Checks tensor `i`'s tag, computed from its bytes as stored.
    pub fn check(&self, i: usize, tag: Tag) -> Result<()> {
        if tag == self.expected[i] {
            return Ok(());
        }
        Err(Error::Tampered {
            path: self.path.clone(),
            what: format!("tensor {:?}", self.names[i]),
        })
    }

    /// Checks tensor `i` from all its bytes as stored, on all cores.
    pub fn check_bytes(&self, i: usize, bytes: &[u8]) -> Result<()> {
        let tag = self.key.tensor_tag(&self.descs[i], bytes)?;
        self.check(i, tag)
    }

    /// Finishes `tagger` (one of [`Checker::tagger`]'s, fed every byte of tensor `i`)
    /// and checks its tag.
    pub fn finish(&self, i: usize, tagger: TensorTagger) -> Result<()> {
        let tag = tagger.finish(&self.key)?;
        self.check(i, tag)
    }
}
