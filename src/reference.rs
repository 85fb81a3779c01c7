//! The CPU reference: scalar, byte by byte, straight from the definition in docs/SPEC.md,
//! with the `aes` crate as the block cipher. Slow on purpose: it is the yardstick every
//! fast path (CPU SIMD, GPU) is checked against, bit for bit.

use aes::cipher::BlockEncrypt;

use crate::sbox::{INV_SBOX, SBOX};
use crate::scheme::{Direction, TensorCipher};

/// Keystream block `block` of the tensor: AES-128_K(N_t || big-endian `block`).
pub fn keystream_block(cipher: &TensorCipher, block: u64) -> [u8; 16] {
    let mut b = cipher.nonce().counter_block(block).into();
    cipher.aes().encrypt_block(&mut b);
    b.into()
}

/// Locks or unlocks `data`, which holds the tensor's bytes starting at byte `offset`.
/// Byte j of the tensor uses keystream byte j: block j / 16, position j % 16.
pub fn apply(cipher: &TensorCipher, dir: Direction, offset: u64, data: &mut [u8]) {
    let mut cached: Option<(u64, [u8; 16])> = None;
    for (i, byte) in data.iter_mut().enumerate() {
        let j = offset + i as u64;
        let block = j / 16;
        let ks = match cached {
            Some((b, ks)) if b == block => ks,
            _ => {
                let ks = keystream_block(cipher, block);
                cached = Some((block, ks));
                ks
            }
        };
        let k = ks[(j % 16) as usize];
        *byte = match dir {
            Direction::Lock => SBOX[(*byte ^ k) as usize],
            Direction::Unlock => INV_SBOX[*byte as usize] ^ k,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::MasterKey;
    use crate::scheme::{Nonce, Salt};

    fn kat_cipher() -> TensorCipher {
        let key = MasterKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        TensorCipher::for_tensor(&key, &Salt([1; 16]), "w")
    }

    #[test]
    fn spec_known_answer() {
        let mut d = [0u8; 16];
        apply(&kat_cipher(), Direction::Lock, 0, &mut d);
        assert_eq!(crate::hex::encode(&d), "aa6082eecd4e7827618b2d31c904e672");
        apply(&kat_cipher(), Direction::Unlock, 0, &mut d);
        assert_eq!(d, [0u8; 16]);
    }

    /// NIST SP 800-38A F.5.1, CTR-AES128.Encrypt: our keystream is plain AES-128-CTR with a
    /// 64-bit big-endian block counter. The vector's initial counter f0..f7 f8..ff has
    /// low half f8f9fafbfcfdfeff, so nonce f0..f7 and block index 0xf8f9fafbfcfdfeff.
    #[test]
    fn nist_sp800_38a_ctr_keystream() {
        let key = MasterKey::from_hex("2b7e151628aed2a6abf7158809cf4f3c").unwrap();
        let c = TensorCipher::new(
            &key,
            Nonce([0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7]),
        );
        let pt = [
            "6bc1bee22e409f96e93d7e117393172a",
            "ae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52ef",
            "f69f2445df4f9b17ad2b417be66c3710",
        ];
        let ct = [
            "874d6191b620e3261bef6864990db6ce",
            "9806f66b7970fdff8617187bb9fffdff",
            "5ae4df3edbd5d35e5b4f09020db03eab",
            "1e031dda2fbe03d1792170a0f3009cee",
        ];
        for i in 0..4 {
            let ks = keystream_block(&c, 0xf8f9fafbfcfdfeff + i as u64);
            let p = crate::hex::decode::<16>(pt[i]).unwrap();
            let x: Vec<u8> = p.iter().zip(ks).map(|(a, b)| a ^ b).collect();
            assert_eq!(crate::hex::encode(&x), ct[i], "block {i}");
        }
    }

    #[test]
    fn offsets_compose() {
        let c = kat_cipher();
        let orig: Vec<u8> = (0..100u8).collect();
        let mut whole = orig.clone();
        apply(&c, Direction::Lock, 7, &mut whole);
        let mut parts = orig.clone();
        let (a, b) = parts.split_at_mut(33);
        apply(&c, Direction::Lock, 7, a);
        apply(&c, Direction::Lock, 40, b);
        assert_eq!(whole, parts);
    }
}
