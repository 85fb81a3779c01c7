//! The 128-bit master key: parsing from its text form, generation, and its key check value.
//!
//! A key is secret material: it has no `Display`, its `Debug` is redacted, and its bytes
//! are zeroized on drop. The library never reads a key from a command-line argument;
//! callers load it from a file, standard input or the environment.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

/// Length of a master key in bytes (AES-128).
pub const KEY_LEN: usize = 16;

/// The plaintext block whose encryption gives the key check value:
/// the 15 ASCII bytes `deeplock-v1-kcv` followed by one zero byte.
pub const KCV_BLOCK: [u8; 16] = *b"deeplock-v1-kcv\0";

/// A deeplock master key: 16 secret bytes, zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    bytes: [u8; KEY_LEN],
}

impl MasterKey {
    /// Wraps 16 raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        MasterKey { bytes }
    }

    /// Parses the text form: exactly 32 hexadecimal characters, surrounding whitespace
    /// ignored. The error never echoes the input.
    pub fn from_hex(text: &str) -> Result<Self> {
        let t = text.trim();
        if t.len() != 2 * KEY_LEN || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::BadKey(format!(
                "a key must be exactly 32 hexadecimal characters, found {} characters{}",
                t.chars().count(),
                if t.bytes().all(|c| c.is_ascii_hexdigit()) {
                    ""
                } else {
                    " with non-hex ones"
                }
            )));
        }
        let bytes = crate::hex::decode::<KEY_LEN>(t).expect("checked: 32 hex digits");
        Ok(MasterKey { bytes })
    }

    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
        Ok(MasterKey { bytes })
    }

    /// The key's text form (32 lowercase hex characters), in a buffer zeroized on drop.
    /// Meant for writing a key file, never for logs.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(crate::hex::encode(&self.bytes))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// The key check value: the first 8 bytes of AES-128_K(`deeplock-v1-kcv\0`).
    /// Stored in a locked file so a wrong key is refused before any data is touched;
    /// it reveals nothing useful about K (one AES output block).
    pub fn kcv(&self) -> [u8; 8] {
        let aes = Aes128::new(&self.bytes.into());
        let mut block = KCV_BLOCK.into();
        aes.encrypt_block(&mut block);
        let mut out = [0u8; 8];
        out.copy_from_slice(&block[..8]);
        out
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_trims() {
        let k = MasterKey::from_hex("  000102030405060708090a0b0c0d0e0f\n").unwrap();
        assert_eq!(k.as_bytes()[15], 0x0f);
        assert_eq!(&*k.to_hex(), "000102030405060708090a0b0c0d0e0f");
        assert!(MasterKey::from_hex("000102030405060708090A0B0C0D0E0F").is_ok());
    }

    #[test]
    fn rejects_bad_text_without_echoing_it() {
        for bad in [
            "",
            "00",
            "000102030405060708090a0b0c0d0e0f00",
            "zz0102030405060708090a0b0c0d0e0f",
        ] {
            let err = MasterKey::from_hex(bad).unwrap_err().to_string();
            assert!(err.contains("32 hexadecimal"), "{err}");
            assert!(bad.len() < 4 || !err.contains(&bad[2..]), "{err}");
        }
    }

    #[test]
    fn kcv_known_answer() {
        let k = MasterKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        assert_eq!(crate::hex::encode(&k.kcv()), "6748fb819487ee8f");
    }

    #[test]
    fn debug_is_redacted() {
        let k = MasterKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        assert_eq!(format!("{k:?}"), "MasterKey([REDACTED])");
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            MasterKey::generate().unwrap().as_bytes(),
            MasterKey::generate().unwrap().as_bytes()
        );
    }
}
