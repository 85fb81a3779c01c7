//! The `deeplock.*` entries a locked file carries in its `__metadata__`: scheme version,
//! salt, key check value, the names of the locked tensors and, in v2, the tags.

use std::path::Path;

use crate::auth::{self, FileAuthKey, Tag};
use crate::error::{Error, Result};
use crate::header::Header;
use crate::key::MasterKey;
use crate::scheme::{self, Salt, TensorCipher};

const K_VERSION: &str = "deeplock.version";
const K_SCHEME: &str = "deeplock.scheme";
const K_SALT: &str = "deeplock.salt";
const K_KCV: &str = "deeplock.kcv";
const K_LOCKED: &str = "deeplock.locked";
/// v2: every tensor's tag, in index order.
const K_TAGS: &str = "deeplock.tags";
/// v2: the header tag.
const K_MAC: &str = "deeplock.mac";
/// Written only when the input's `__metadata__` was there but empty (`{}` or `null`),
/// so that unlock gives it back as it was.
const K_METADATA: &str = "deeplock.metadata";

/// The metadata keys a lock writes and an unlock removes, and no others: other
/// `deeplock.`-prefixed keys belong to the user and are kept like any other metadata.
pub const OWNED_KEYS: [&str; 8] = [
    K_VERSION, K_SCHEME, K_SALT, K_KCV, K_LOCKED, K_TAGS, K_MAC, K_METADATA,
];

/// The keys of the lock record proper, which v2's header tag binds field by field; every
/// other metadata entry (`deeplock.metadata` included) is bound as a key and a value.
pub const RECORD_KEYS: [&str; 7] = [K_VERSION, K_SCHEME, K_SALT, K_KCV, K_LOCKED, K_TAGS, K_MAC];

/// Whether metadata `key` is one deeplock writes (not the user's).
pub fn is_owned_key(key: &str) -> bool {
    OWNED_KEYS.contains(&key)
}

/// Whether metadata `key` is one of [`RECORD_KEYS`].
pub fn is_record_key(key: &str) -> bool {
    RECORD_KEYS.contains(&key)
}

/// A v2 record's tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tags {
    /// Every tensor's tag `T_t`, in index order ([`auth::index_order`]).
    pub tensors: Vec<Tag>,
    /// The header tag `T_H`.
    pub header: Tag,
}

/// What a locked file records about its locking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// The file's salt.
    pub salt: Salt,
    /// The key check value: v1's (one per key) or v2's (one per key and salt).
    pub kcv: [u8; 8],
    /// Names of the locked tensors, sorted and without duplicates, so that
    /// [`LockInfo::is_locked`] is a binary search: a model can have millions of tensors.
    pub locked: Vec<String>,
    /// v2's tags; `None` for a v1 file, which carries no authentication.
    pub tags: Option<Tags>,
}

impl LockInfo {
    /// The lock record of `header`: `None` if the file carries none of the keys deeplock
    /// writes, an error if it carries some but not a valid v1 or v2 record.
    ///
    /// Any one of the keys deeplock writes marks the file as locked, not just `deeplock.version`:
    /// locking a file that still holds another lock's salt or tensor list would overwrite
    /// them and make the first lock unrecoverable, so such a file is refused as damaged.
    pub fn from_header(header: &Header, path: &Path) -> Result<Option<Self>> {
        Self::from_entries(|k| header.metadata_value(k), &header.tensors, path)
    }

    /// The lock record held in the string entries `lookup` gives (a format's own
    /// metadata: safetensors' `__metadata__`, ONNX's `metadata_props`) of a file with
    /// these `tensors`, as [`LockInfo::from_header`] reads it.
    pub fn from_entries<'a>(
        lookup: impl Fn(&str) -> Option<&'a str>,
        tensors: &[crate::header::TensorEntry],
        path: &Path,
    ) -> Result<Option<Self>> {
        if !OWNED_KEYS.iter().any(|k| lookup(k).is_some()) {
            return Ok(None);
        }
        let bad = |what: String| {
            Error::format(
                path,
                format!("corrupt deeplock metadata: {what}; the file was damaged or edited after locking"),
            )
        };
        let get = |k: &str| lookup(k).ok_or_else(|| bad(format!("{k} is missing")));
        let version = get(K_VERSION)?;
        let scheme = get(K_SCHEME)?;
        let v2 = match (version, scheme) {
            (scheme::VERSION, scheme::SCHEME) => false,
            (auth::VERSION, auth::SCHEME) => true,
            _ => {
                return Err(Error::format(
                    path,
                    format!(
                        "locked with deeplock version {version:?}, scheme {scheme:?}; this build reads version {} ({}) and {} ({}): upgrade deeplock",
                        auth::VERSION, auth::SCHEME, scheme::VERSION, scheme::SCHEME
                    ),
                ))
            }
        };
        let salt = Salt::from_hex(get(K_SALT)?)
            .ok_or_else(|| bad(format!("{K_SALT} is not 32 hex characters")))?;
        let kcv = crate::hex::decode::<8>(get(K_KCV)?)
            .ok_or_else(|| bad(format!("{K_KCV} is not 16 hex characters")))?;
        let mut locked: Vec<String> = serde_json::from_str(get(K_LOCKED)?)
            .map_err(|_| bad(format!("{K_LOCKED} is not a JSON array of names")))?;
        if v2 {
            // The header tag binds the list as stored; v2 writers store it sorted, so
            // anything else is an edit, refused here rather than read two ways.
            if let Some(w) = locked.windows(2).find(|w| w[0] >= w[1]) {
                return Err(bad(format!(
                    "{K_LOCKED} is not sorted or names {:?} twice",
                    w[1]
                )));
            }
        } else {
            locked.sort_unstable();
        }
        if let Some(w) = locked.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(format!("{K_LOCKED} names {:?} twice", w[0])));
        }
        let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        for name in &locked {
            if names.binary_search(&name.as_str()).is_err() {
                return Err(bad(format!(
                    "{K_LOCKED} names {name:?}, which is not a tensor of the file"
                )));
            }
        }
        let tags = if v2 {
            let list: Vec<String> = serde_json::from_str(get(K_TAGS)?)
                .map_err(|_| bad(format!("{K_TAGS} is not a JSON array of tags")))?;
            if list.len() != tensors.len() {
                return Err(bad(format!(
                    "{K_TAGS} holds {} tags for {} tensors",
                    list.len(),
                    tensors.len()
                )));
            }
            let tensors = list
                .iter()
                .map(|t| Tag::from_hex(t))
                .collect::<Option<Vec<Tag>>>()
                .ok_or_else(|| {
                    bad(format!(
                        "{K_TAGS} holds a tag that is not 32 hex characters"
                    ))
                })?;
            let header = Tag::from_hex(get(K_MAC)?)
                .ok_or_else(|| bad(format!("{K_MAC} is not 32 hex characters")))?;
            Some(Tags { tensors, header })
        } else {
            for k in [K_TAGS, K_MAC] {
                if lookup(k).is_some() {
                    return Err(bad(format!("a version 1 record with {k}")));
                }
            }
            None
        };
        Ok(Some(LockInfo {
            salt,
            kcv,
            locked,
            tags,
        }))
    }

    /// Whether the file carries v2's tags.
    pub fn is_authenticated(&self) -> bool {
        self.tags.is_some()
    }

    /// The record's `deeplock.version`.
    pub fn version(&self) -> &'static str {
        if self.is_authenticated() {
            auth::VERSION
        } else {
            scheme::VERSION
        }
    }

    /// The record's `deeplock.scheme`.
    pub fn scheme(&self) -> &'static str {
        if self.is_authenticated() {
            auth::SCHEME
        } else {
            scheme::SCHEME
        }
    }

    /// The cipher of each of the tensors `names` under `key`: `Some` for those this
    /// record lists as locked, `None` for the others; one expanded key for them all.
    pub fn ciphers<'a>(
        &self,
        key: &MasterKey,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Option<TensorCipher>> {
        let first = TensorCipher::for_tensor(key, &self.salt, "");
        names
            .into_iter()
            .map(|name| {
                self.is_locked(name)
                    .then(|| first.with_nonce(&self.salt, name))
            })
            .collect()
    }

    /// Whether tensor `name` is locked (a binary search of the sorted names).
    pub fn is_locked(&self, name: &str) -> bool {
        self.locked
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }

    /// Records this lock in `header`'s metadata.
    pub fn write_to(&self, header: &mut Header) {
        // Sorted as the spec says, whoever built `self`; by reference, not a copy.
        let mut names: Vec<&str> = self.locked.iter().map(String::as_str).collect();
        names.sort_unstable();
        if let Some(form) = header.empty_metadata() {
            header.set_metadata(K_METADATA, form.into());
        }
        header.set_metadata(K_VERSION, self.version().into());
        header.set_metadata(K_SCHEME, self.scheme().into());
        header.set_metadata(K_SALT, self.salt.to_hex());
        header.set_metadata(K_KCV, crate::hex::encode(&self.kcv));
        header.set_metadata(
            K_LOCKED,
            serde_json::to_string(&names).expect("strings serialize"),
        );
        if let Some(tags) = &self.tags {
            let hex: Vec<String> = tags.tensors.iter().map(Tag::to_hex).collect();
            header.set_metadata(
                K_TAGS,
                serde_json::to_string(&hex).expect("strings serialize"),
            );
            header.set_metadata(K_MAC, tags.header.to_hex());
        }
    }

    /// The record's entries, as [`LockInfo::write_to`] writes them (in this order), for
    /// a format that keeps them in its own string entries (ONNX's `metadata_props`).
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let mut names: Vec<&str> = self.locked.iter().map(String::as_str).collect();
        names.sort_unstable();
        let mut out = vec![
            (K_VERSION, self.version().to_owned()),
            (K_SCHEME, self.scheme().to_owned()),
            (K_SALT, self.salt.to_hex()),
            (K_KCV, crate::hex::encode(&self.kcv)),
            (
                K_LOCKED,
                serde_json::to_string(&names).expect("strings serialize"),
            ),
        ];
        if let Some(tags) = &self.tags {
            let hex: Vec<String> = tags.tensors.iter().map(Tag::to_hex).collect();
            out.push((
                K_TAGS,
                serde_json::to_string(&hex).expect("strings serialize"),
            ));
            out.push((K_MAC, tags.header.to_hex()));
        }
        out
    }

    /// Removes what [`LockInfo::write_to`] wrote: exactly the keys deeplock owns, so the
    /// user's own metadata (`deeplock.`-prefixed keys included) survives an unlock;
    /// `__metadata__` goes only if that leaves it empty.
    pub fn remove_from(header: &mut Header) {
        let empty = header.metadata_value(K_METADATA).map(str::to_owned);
        for k in OWNED_KEYS {
            header.remove_metadata(k);
        }
        match empty {
            Some(form) => header.restore_empty_metadata(&form),
            None => header.drop_empty_metadata(),
        }
    }

    /// Checks that `key` is the key the file at `path` was locked with, by its check
    /// value, and gives a v2 file's MAC key (`None` for v1, which has none).
    pub fn check_key(&self, key: &MasterKey, path: &Path) -> Result<Option<FileAuthKey>> {
        // Not secret: the KCV is stored in the clear; no need for constant time.
        let (matches, file_key) = if self.is_authenticated() {
            let fk = FileAuthKey::derive(key, &self.salt);
            (fk.kcv() == self.kcv, Some(fk))
        } else {
            (key.kcv() == self.kcv, None)
        };
        if !matches {
            return Err(Error::WrongKey {
                path: path.to_path_buf(),
            });
        }
        Ok(file_key)
    }
}
