//! The portable backend: the `aes` crate encrypts a batch of counter blocks at a time
//! (it picks its own AES-NI or bitsliced code), then the S-box step runs by table.

use aes::cipher::BlockEncrypt;
use aes::Block;

use crate::sbox::{INV_SBOX, SBOX};
use crate::scheme::{Direction, TensorCipher};

/// Counter blocks encrypted per call into the `aes` crate.
const BATCH: usize = 32;

/// Locks or unlocks `data`, the tensor's bytes from byte `offset`.
pub(super) fn apply(cipher: &TensorCipher, dir: Direction, offset: u64, data: &mut [u8]) {
    let nonce = cipher.nonce();
    let mut blocks = [Block::default(); BATCH];
    let mut pos = 0usize;
    while pos < data.len() {
        let j = offset + pos as u64;
        let first_block = j / 16;
        let skip = (j % 16) as usize;
        let want = (data.len() - pos + skip).div_ceil(16).min(BATCH);
        for (i, b) in blocks[..want].iter_mut().enumerate() {
            *b = nonce.counter_block(first_block + i as u64).into();
        }
        cipher.aes().encrypt_blocks(&mut blocks[..want]);
        let take = (want * 16 - skip).min(data.len() - pos);
        let ks = blocks[..want].iter().flat_map(|b| b.iter()).skip(skip);
        let out = &mut data[pos..pos + take];
        match dir {
            Direction::Lock => out
                .iter_mut()
                .zip(ks)
                .for_each(|(p, k)| *p = SBOX[(*p ^ k) as usize]),
            Direction::Unlock => out
                .iter_mut()
                .zip(ks)
                .for_each(|(l, k)| *l = INV_SBOX[*l as usize] ^ k),
        }
        pos += take;
    }
}
