//! AES-128 key expansion (FIPS-197 §5.2), for the paths that run the rounds themselves:
//! the AES-NI/VAES CPU backends and the GPU kernels. The CPU reference does not use it;
//! it calls the `aes` crate, which is how these round keys are checked.

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::key::MasterKey;
use crate::sbox::SBOX;

/// The 11 round keys of AES-128, in byte order (round key r is `bytes[r]`).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RoundKeys {
    bytes: [[u8; 16]; 11],
}

impl RoundKeys {
    /// Expands a master key into the 11 encryption round keys.
    pub fn expand(key: &MasterKey) -> Self {
        let mut w = [[0u8; 4]; 44];
        for (i, word) in w.iter_mut().take(4).enumerate() {
            word.copy_from_slice(&key.as_bytes()[4 * i..4 * i + 4]);
        }
        let mut rcon = 1u8;
        for i in 4..44 {
            let mut t = w[i - 1];
            if i % 4 == 0 {
                t = [
                    SBOX[t[1] as usize] ^ rcon,
                    SBOX[t[2] as usize],
                    SBOX[t[3] as usize],
                    SBOX[t[0] as usize],
                ];
                rcon = (rcon << 1) ^ if rcon & 0x80 != 0 { 0x1b } else { 0 };
            }
            for b in 0..4 {
                w[i][b] = w[i - 4][b] ^ t[b];
            }
        }
        let mut bytes = [[0u8; 16]; 11];
        for (r, rk) in bytes.iter_mut().enumerate() {
            for c in 0..4 {
                rk[4 * c..4 * c + 4].copy_from_slice(&w[4 * r + c]);
            }
        }
        w.zeroize();
        RoundKeys { bytes }
    }

    /// Round key `r` (0..=10) as 16 bytes.
    pub fn round(&self, r: usize) -> &[u8; 16] {
        &self.bytes[r]
    }

    /// All 44 round-key words, each packed little-endian (byte 0 of a column in the
    /// low bits), the layout the GPU kernels load into their uniform buffer.
    pub fn words_le(&self) -> [u32; 44] {
        let mut out = [0u32; 44];
        for (i, w) in out.iter_mut().enumerate() {
            let rk = &self.bytes[i / 4];
            let c = (i % 4) * 4;
            *w = u32::from_le_bytes([rk[c], rk[c + 1], rk[c + 2], rk[c + 3]]);
        }
        out
    }
}

impl std::fmt::Debug for RoundKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoundKeys([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fips197_appendix_a1() {
        let key = MasterKey::from_hex("2b7e151628aed2a6abf7158809cf4f3c").unwrap();
        let rk = RoundKeys::expand(&key);
        assert_eq!(rk.round(0), key.as_bytes());
        // w[40..44] = d014f9a8 c9ee2589 e13f0cc8 b6630ca6
        assert_eq!(
            rk.round(10),
            &[
                0xd0, 0x14, 0xf9, 0xa8, 0xc9, 0xee, 0x25, 0x89, 0xe1, 0x3f, 0x0c, 0xc8, 0xb6, 0x63,
                0x0c, 0xa6
            ]
        );
        assert_eq!(rk.words_le()[43], 0xa60c63b6);
    }

    #[test]
    fn debug_is_redacted() {
        let key = MasterKey::from_hex("2b7e151628aed2a6abf7158809cf4f3c").unwrap();
        let s = format!("{:?}", RoundKeys::expand(&key));
        assert!(!s.contains("2b") && s.contains("REDACTED"));
    }
}
