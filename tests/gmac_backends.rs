//! Every GMAC implementation that benches/auth.rs measures as a candidate for
//! `deeplock::auth` gives the tags `FileAuthKey::chunk_tag` gives, on random keys,
//! salts, indices and lengths: a backend may only replace another if the tags of every
//! v2 file stay the same. The file key is derived here from its definition
//! (docs/SPEC.md: `K_file = AES_{AES_K("deeplock-v2-auth")}(S)`), so each backend is
//! fed the raw key.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, KeyInit as _};
use deeplock::auth::{FileAuthKey, AUTH_KEY_BLOCK, CHUNK_LEN};
use deeplock::{MasterKey, Salt};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

fn aes(key: &[u8; 16], block: &[u8; 16]) -> [u8; 16] {
    let mut b = (*block).into();
    aes::Aes128::new(key.into()).encrypt_block(&mut b);
    b.into()
}

fn nonce(index: u32, chunk: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&index.to_be_bytes());
    n[4..].copy_from_slice(&chunk.to_be_bytes());
    n
}

fn aes_gcm_tag(key: &[u8; 16], nonce: [u8; 12], msg: &[u8]) -> [u8; 16] {
    Aes128Gcm::new(key.into())
        .encrypt_inout_detached(&nonce.into(), msg, (&mut [][..]).into())
        .unwrap()
        .into()
}

fn ring_tag(key: &[u8; 16], nonce: [u8; 12], msg: &[u8]) -> [u8; 16] {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
    let k = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).unwrap());
    let tag = k
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(msg), &mut [])
        .unwrap();
    tag.as_ref().try_into().unwrap()
}

fn aws_lc_tag(key: &[u8; 16], nonce: [u8; 12], msg: &[u8]) -> [u8; 16] {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
    let k = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).unwrap());
    let tag = k
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(msg), &mut [])
        .unwrap();
    tag.as_ref().try_into().unwrap()
}

/// Lengths around GHASH's 16-byte blocks and the wide kernels' 64- to 512-byte strides,
/// a full chunk, and random ones.
fn lengths(rng: &mut StdRng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=80).collect();
    v.extend([
        127, 128, 129, 255, 256, 257, 511, 512, 513, 1023, 1024, 4096, 16384,
    ]);
    v.extend([CHUNK_LEN - 1, CHUNK_LEN]);
    v.extend((0..40).map(|_| rng.random_range(0..=CHUNK_LEN)));
    v
}

#[test]
fn every_backend_gives_the_chunk_tags_of_deeplock_auth() {
    let mut rng = StdRng::seed_from_u64(0x6d61_6321);
    let mut msg = vec![0u8; CHUNK_LEN];
    rng.fill_bytes(&mut msg);
    for len in lengths(&mut rng) {
        let master_bytes: [u8; 16] = rng.random();
        let salt: [u8; 16] = rng.random();
        let index = rng.random_range(0..=deeplock::auth::MAX_TENSOR_INDEX);
        let chunk: u64 = rng.random();
        let master = MasterKey::from_bytes(master_bytes);
        let auth = FileAuthKey::derive(&master, &Salt(salt));
        let k_file = aes(&aes(&master_bytes, &AUTH_KEY_BLOCK), &salt);
        let start = rng.random_range(0..=CHUNK_LEN - len);
        let m = &msg[start..start + len];
        let n = nonce(index, chunk);
        let want = auth.chunk_tag(index, chunk, m).0;
        assert_eq!(aes_gcm_tag(&k_file, n, m), want, "aes-gcm, len {len}");
        assert_eq!(ring_tag(&k_file, n, m), want, "ring, len {len}");
        assert_eq!(aws_lc_tag(&k_file, n, m), want, "aws-lc-rs, len {len}");
    }
}
