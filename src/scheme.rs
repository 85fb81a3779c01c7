//! The deeplock v1 scheme ("aes128-ctr-sbox"): salts, per-tensor nonces, counter blocks,
//! and the per-tensor cipher state that every backend (reference, CPU fast, GPU) shares.
//! docs/SPEC.md is the written definition; this module is its code.

use aes::cipher::KeyInit;
use aes::Aes128;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::key::MasterKey;
use crate::key_schedule::RoundKeys;

/// Value of `deeplock.version` in a locked file.
pub const VERSION: &str = "1";
/// Value of `deeplock.scheme` in a locked file.
pub const SCHEME: &str = "aes128-ctr-sbox";
/// Domain-separation prefix of the nonce derivation: `deeplock-v1` and one zero byte.
pub const NONCE_DOMAIN: &[u8; 12] = b"deeplock-v1\0";

/// Which way the S-box step goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `L = SBOX[P ^ KS]`
    Lock,
    /// `P = INV_SBOX[L] ^ KS`
    Unlock,
}

/// The 16-byte per-file salt, fresh for every lock so that no two locked files
/// (two models, or two versions of one) share a keystream under one key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Salt(pub [u8; 16]);

impl Salt {
    /// 16 fresh random bytes from the operating system.
    pub fn generate() -> Result<Self> {
        let mut s = [0u8; 16];
        getrandom::fill(&mut s).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Salt(s))
    }

    /// 32 lowercase hex characters, as stored in `deeplock.salt`.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }

    /// Parses `deeplock.salt`.
    pub fn from_hex(text: &str) -> Option<Self> {
        crate::hex::decode::<16>(text).map(Salt)
    }
}

/// The 8-byte per-tensor nonce N_t, the high half of every counter block of a tensor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Nonce(pub [u8; 8]);

impl Nonce {
    /// N_t = SHA-256(`deeplock-v1\0` || salt || UTF-8 name)[..8].
    pub fn derive(salt: &Salt, tensor_name: &str) -> Self {
        let mut h = Sha256::new();
        h.update(NONCE_DOMAIN);
        h.update(salt.0);
        h.update(tensor_name.as_bytes());
        let d = h.finalize();
        let mut n = [0u8; 8];
        n.copy_from_slice(&d[..8]);
        Nonce(n)
    }

    /// The AES-CTR input block for keystream block `block`: N_t || big-endian `block`.
    pub fn counter_block(&self, block: u64) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.0);
        b[8..].copy_from_slice(&block.to_be_bytes());
        b
    }
}

/// Everything needed to lock or unlock the bytes of one tensor, at any offset:
/// the AES-128 key (as the `aes` crate's cipher and as expanded round keys for the
/// backends that run the rounds themselves) and the tensor's nonce.
/// Secret: `Debug` is redacted and both key forms are zeroized on drop. The expanded key
/// is shared by the ciphers made from one with [`TensorCipher::with_nonce`]: one per
/// file, not one per tensor (a model can have millions).
#[derive(Clone)]
pub struct TensorCipher {
    keys: std::sync::Arc<ExpandedKey>,
    nonce: Nonce,
}

/// The master key in the two forms the backends use.
struct ExpandedKey {
    aes: Aes128,
    round_keys: RoundKeys,
}

impl TensorCipher {
    /// The cipher for a tensor with nonce `nonce`.
    pub fn new(key: &MasterKey, nonce: Nonce) -> Self {
        TensorCipher {
            keys: std::sync::Arc::new(ExpandedKey {
                aes: Aes128::new(key.as_bytes().into()),
                round_keys: RoundKeys::expand(key),
            }),
            nonce,
        }
    }

    /// The cipher for tensor `name` of a file locked with `salt`.
    pub fn for_tensor(key: &MasterKey, salt: &Salt, name: &str) -> Self {
        Self::new(key, Nonce::derive(salt, name))
    }

    /// The cipher under the same key for the tensor `name` of the file with `salt`,
    /// sharing this one's expanded key.
    pub fn with_nonce(&self, salt: &Salt, name: &str) -> Self {
        TensorCipher {
            keys: self.keys.clone(),
            nonce: Nonce::derive(salt, name),
        }
    }

    /// The tensor's nonce.
    pub fn nonce(&self) -> Nonce {
        self.nonce
    }

    /// The expanded AES-128 round keys.
    pub fn round_keys(&self) -> &RoundKeys {
        &self.keys.round_keys
    }

    /// The `aes` crate's block cipher under the master key.
    pub fn aes(&self) -> &Aes128 {
        &self.keys.aes
    }
}

impl std::fmt::Debug for TensorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorCipher")
            .field("key", &"[REDACTED]")
            .field("nonce", &self.nonce)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_known_answer() {
        let n = Nonce::derive(&Salt([1; 16]), "w");
        assert_eq!(crate::hex::encode(&n.0), "972613e8912c73b0");
    }

    #[test]
    fn counter_block_is_nonce_then_big_endian_counter() {
        let n = Nonce([1, 2, 3, 4, 5, 6, 7, 8]);
        let b = n.counter_block(0x0102);
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn salts_are_fresh_and_round_trip() {
        let a = Salt::generate().unwrap();
        assert_ne!(a, Salt::generate().unwrap());
        assert_eq!(Salt::from_hex(&a.to_hex()), Some(a));
    }
}
