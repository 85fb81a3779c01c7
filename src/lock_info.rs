//! The `deeplock.*` entries a locked file carries in its `__metadata__`: scheme version,
//! salt, key check value and the names of the locked tensors.

use std::path::Path;

use crate::error::{Error, Result};
use crate::header::Header;
use crate::key::MasterKey;
use crate::scheme::{Salt, SCHEME, VERSION};

/// Prefix of every metadata key deeplock owns.
pub const PREFIX: &str = "deeplock.";
const K_VERSION: &str = "deeplock.version";
const K_SCHEME: &str = "deeplock.scheme";
const K_SALT: &str = "deeplock.salt";
const K_KCV: &str = "deeplock.kcv";
const K_LOCKED: &str = "deeplock.locked";

/// What a locked file records about its locking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// The file's salt.
    pub salt: Salt,
    /// The key check value of the key it was locked with.
    pub kcv: [u8; 8],
    /// Names of the locked tensors, sorted.
    pub locked: Vec<String>,
}

impl LockInfo {
    /// The lock record of `header`: `None` if the file carries no `deeplock.*` metadata,
    /// an error if it carries some but not a valid v1 record.
    pub fn from_header(header: &Header, path: &Path) -> Result<Option<Self>> {
        let meta = header.metadata();
        if !meta.keys().any(|k| k.starts_with(PREFIX)) {
            return Ok(None);
        }
        let bad = |what: String| {
            Error::format(
                path,
                format!("corrupt deeplock metadata: {what}; the file was damaged or edited after locking"),
            )
        };
        let get = |k: &str| meta.get(k).ok_or_else(|| bad(format!("{k} is missing")));
        let version = get(K_VERSION)?;
        let scheme = get(K_SCHEME)?;
        if version != VERSION || scheme != SCHEME {
            return Err(Error::format(
                path,
                format!(
                    "locked with deeplock version {version:?}, scheme {scheme:?}; this build reads version {VERSION}, scheme {SCHEME}: upgrade deeplock"
                ),
            ));
        }
        let salt = Salt::from_hex(get(K_SALT)?)
            .ok_or_else(|| bad(format!("{K_SALT} is not 32 hex characters")))?;
        let kcv = crate::hex::decode::<8>(get(K_KCV)?)
            .ok_or_else(|| bad(format!("{K_KCV} is not 16 hex characters")))?;
        let locked: Vec<String> = serde_json::from_str(get(K_LOCKED)?)
            .map_err(|_| bad(format!("{K_LOCKED} is not a JSON array of names")))?;
        for name in &locked {
            if !header.tensors.iter().any(|t| &t.name == name) {
                return Err(bad(format!(
                    "{K_LOCKED} names {name:?}, which is not a tensor of the file"
                )));
            }
        }
        Ok(Some(LockInfo { salt, kcv, locked }))
    }

    /// Records this lock in `header`'s metadata.
    pub fn write_to(&self, header: &mut Header) {
        let mut names = self.locked.clone();
        names.sort();
        header.set_metadata(K_VERSION, VERSION.into());
        header.set_metadata(K_SCHEME, SCHEME.into());
        header.set_metadata(K_SALT, self.salt.to_hex());
        header.set_metadata(K_KCV, crate::hex::encode(&self.kcv));
        header.set_metadata(
            K_LOCKED,
            serde_json::to_string(&names).expect("strings serialize"),
        );
    }

    /// Whether `key` is the key this file was locked with, by its check value.
    pub fn key_matches(&self, key: &MasterKey) -> bool {
        // Not secret: the KCV is stored in the clear; no need for constant time.
        key.kcv() == self.kcv
    }
}
