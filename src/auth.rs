//! Scheme v2 (`aes128-ctr-sbox-gmac`): authenticated locking. The locking transform is
//! v1's, unchanged ([`crate::scheme`]); v2 adds tags, and this module computes them.
//! docs/SPEC.md ("v2: authenticated locking") is the written definition and says why
//! each choice was made; `tests/spec_v2.rs` checks this code against its vectors.
//!
//! The keys and the tags, in short:
//! - `K_auth = AES_K("deeplock-v2-auth")`, `K_file = AES_{K_auth}(S)` ([`FileAuthKey`]):
//!   one GMAC key per file (salt `S`), never an AES input that v1 uses under `K`.
//! - `KCV2 = AES_{K_file}("deeplock-v2-kcv\0")[..8]` ([`FileAuthKey::kcv`]): per file.
//! - A chunk tag per [`CHUNK_LEN`] bytes of a tensor, its locked bytes as they are in
//!   the file (encrypt-then-MAC), then a tensor tag over the tensor's descriptor and its
//!   chunk tags ([`FileAuthKey::tensor_tag`] on all cores, [`TensorTagger`] for chunks
//!   that come one by one, out of order or from other threads).
//! - A header tag over everything in the header ([`FileAuthKey::header_tag`]).
//! - A checkpoint tag over the shards' header tags and the index files' digests
//!   ([`CheckpointKey`]), so that shards locked apart are joined by reading headers only.
//!
//! Every tag is GMAC: AES-128-GCM with an empty plaintext and the message as additional
//! data, computed by AWS-LC (through `aws-lc-rs`), which WebCrypto computes as well.

use std::collections::BTreeMap;
use std::ops::Range;

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::TensorEntry;
use crate::key::MasterKey;
use crate::scheme::Salt;

/// Value of `deeplock.version` in a v2 file.
pub const VERSION: &str = "2";
/// Value of `deeplock.scheme` in a v2 file.
pub const SCHEME: &str = "aes128-ctr-sbox-gmac";
/// Bytes per chunk tag. Fixed by the scheme (a different size would be a different
/// scheme): large enough that the per-chunk cost (one AES block, one tag in the tensor
/// tag's message) vanishes, small enough that a chunk stays in a core's L2 cache
/// between locking and tagging, and that a 16 MiB read spans many chunks for all cores.
pub const CHUNK_LEN: usize = 1 << 20;
/// Length of every tag, in bytes (GMAC's full 128 bits, never truncated).
pub const TAG_LEN: usize = 16;
/// The AES input under the master key whose output is `K_auth`, the root of every
/// file's MAC key. Its byte 8 is `-` (0x2d); byte 8 of every v1 keystream block is
/// below 0x10, so this block is never a keystream block (docs/SPEC.md).
pub const AUTH_KEY_BLOCK: [u8; 16] = *b"deeplock-v2-auth";
/// The AES input under the master key whose output is `K_ckpt`, the root of every
/// checkpoint record's MAC key (byte 8 is `-`, like [`AUTH_KEY_BLOCK`]).
pub const CHECKPOINT_KEY_BLOCK: [u8; 16] = *b"deeplock-v2-ckpt";
/// The AES input under `K_file` whose output's first 8 bytes are the v2 key check value.
pub const KCV_BLOCK: [u8; 16] = *b"deeplock-v2-kcv\0";
/// Largest tensor index: the index `2^32 - 1` is reserved for the header tag's nonce.
pub const MAX_TENSOR_INDEX: u32 = u32::MAX - 1;
/// Largest tensor v2 can tag, in bytes (2^50, 1 PiB): at most 2^30 chunks, so a tensor
/// tag's message stays far under GCM's 2^36-byte limit on additional data.
pub const MAX_TENSOR_LEN: u64 = 1 << 50;

/// Domain labels, the first field of each kind of MAC'd message.
const TENSOR_LABEL: &str = "deeplock-v2-tensor";
const HEADER_LABEL: &str = "deeplock-v2-header";
const CHECKPOINT_LABEL: &str = "deeplock-v2-checkpoint";

/// A 128-bit tag. `==` compares in constant time (through `subtle`), so checking a tag
/// read from a file against a computed one leaks nothing about where they differ.
#[derive(Clone, Copy, Debug, Eq)]
pub struct Tag(pub [u8; TAG_LEN]);

impl PartialEq for Tag {
    fn eq(&self, other: &Tag) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Tag {
    /// 32 lowercase hex characters, as stored in `deeplock.tags` and `deeplock.mac`.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }

    /// Parses 32 hex characters.
    pub fn from_hex(text: &str) -> Option<Self> {
        crate::hex::decode::<TAG_LEN>(text).map(Tag)
    }
}

/// GMAC under one key: AES-128-GCM's tag with an empty plaintext and the message as
/// additional data, computed by AWS-LC through `aws-lc-rs` (its GHASH runs on
/// VPCLMULQDQ with 512-bit registers where the CPU has them: about 4x `aes-gcm` 0.11 on
/// the machine of BENCHMARKS.md, "MAC choice"; tests/gmac_backends.rs checks that the
/// tags are the same).
///
/// Zeroizing: AWS-LC keeps the whole key state (AES round keys and the GHASH key H with
/// its powers) in one `EVP_AEAD_CTX` from `OPENSSL_malloc`, and `aws-lc-rs` frees it with
/// `EVP_AEAD_CTX_free`, whose `OPENSSL_free` overwrites the allocation
/// (`OPENSSL_cleanse`) before freeing it: the key state is cleared on drop. Not cleared:
/// the copy of the GHASH key that each call makes in a GCM context on its own stack
/// frame (AWS-LC's `aead_aes_gcm_seal_scatter_impl`), and `aws-lc-rs` has no `zeroize`
/// feature of its own. `key` itself is the caller's to clear.
struct Gmac(LessSafeKey);

impl Gmac {
    fn new(key: &[u8; 16]) -> Self {
        let key = UnboundKey::new(&AES_128_GCM, key).expect("AES-128-GCM takes a 16-byte key");
        Gmac(LessSafeKey::new(key))
    }

    /// The tag of `message` under this key with the 96-bit `nonce`. Callers keep
    /// `message` under GCM's 2^36-byte limit (the scheme's size limits do).
    fn tag(&self, nonce: [u8; 12], message: &[u8]) -> Tag {
        let t = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(message),
                &mut [],
            )
            .expect("GMAC messages stay under GCM's 2^36-byte limit");
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(t.as_ref());
        Tag(tag)
    }
}

/// One AES-128 block under `key`.
fn aes_block(key: &[u8; 16], block: &[u8; 16]) -> Zeroizing<[u8; 16]> {
    let aes = Aes128::new(key.into());
    let mut b = (*block).into();
    aes.encrypt_block(&mut b);
    Zeroizing::new(b.into())
}

/// `AES_{AES_K(root)}(salt)`: a key derived for one salt under one root, the two AES
/// calls that both [`FileAuthKey`] and [`CheckpointKey`] are made of.
fn derive(key: &MasterKey, root: &[u8; 16], salt: &Salt) -> Zeroizing<[u8; 16]> {
    let root_key = aes_block(key.as_bytes(), root);
    aes_block(&root_key, &salt.0)
}

/// The 96-bit GCM nonce of chunk `chunk` of tensor `index`: `BE32(index) || BE64(chunk)`.
fn chunk_nonce(index: u32, chunk: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&index.to_be_bytes());
    n[4..].copy_from_slice(&chunk.to_be_bytes());
    n
}

/// The nonce of tensor `index`'s tensor tag: `BE32(index) || FFFFFFFFFFFFFFFF` (no
/// chunk index reaches 2^64 - 1).
fn tensor_nonce(index: u32) -> [u8; 12] {
    chunk_nonce(index, u64::MAX)
}

/// The nonce of the header tag, and of the checkpoint tag under its own key: twelve
/// `FF` bytes (no tensor index reaches 2^32 - 1).
const LAST_NONCE: [u8; 12] = [0xff; 12];

/// A file's MAC key `K_file = AES_{K_auth}(S)` with `K_auth = AES_K("deeplock-v2-auth")`,
/// and the file's key check value. Every tag of a v2 file is a GMAC under this key.
/// Secret: `Debug` is redacted and the key state is zeroized on drop.
pub struct FileAuthKey {
    gmac: Gmac,
    kcv: [u8; 8],
}

impl FileAuthKey {
    /// The MAC key of the file locked under `key` with salt `salt`.
    pub fn derive(key: &MasterKey, salt: &Salt) -> Self {
        let k_file = derive(key, &AUTH_KEY_BLOCK, salt);
        let check = aes_block(&k_file, &KCV_BLOCK);
        let mut kcv = [0u8; 8];
        kcv.copy_from_slice(&check[..8]);
        FileAuthKey {
            gmac: Gmac::new(&k_file),
            kcv,
        }
    }

    /// The v2 key check value, `AES_{K_file}("deeplock-v2-kcv\0")[..8]`: differs from
    /// file to file (it depends on the salt), and still tells a wrong key (or an edited
    /// salt) apart from a tampered file before any tag is checked.
    pub fn kcv(&self) -> [u8; 8] {
        self.kcv
    }

    /// The tag of chunk `chunk` (its bytes `bytes`, [`CHUNK_LEN`] of them except for a
    /// tensor's last chunk) of the tensor at index `index`. Panics if `index` exceeds
    /// [`MAX_TENSOR_INDEX`] or `bytes` is longer than a chunk (caller bugs: the file's
    /// limits keep both in range).
    pub fn chunk_tag(&self, index: u32, chunk: u64, bytes: &[u8]) -> Tag {
        assert!(
            index <= MAX_TENSOR_INDEX,
            "tensor index {index} out of range"
        );
        assert!(
            bytes.len() <= CHUNK_LEN,
            "a chunk is at most CHUNK_LEN bytes"
        );
        self.gmac.tag(chunk_nonce(index, chunk), bytes)
    }

    /// The tag of a whole tensor from all its bytes, its chunks tagged in parallel on
    /// the current rayon pool (a multi-GiB tensor verifies on all cores).
    pub fn tensor_tag(&self, desc: &TensorDescriptor, bytes: &[u8]) -> Result<Tag> {
        desc.check()?;
        if bytes.len() as u64 != desc.len {
            return Err(Error::Invalid(format!(
                "tensor {:?} has {} bytes, its descriptor says {}",
                desc.name,
                bytes.len(),
                desc.len
            )));
        }
        let tags: Vec<Tag> = bytes
            .par_chunks(CHUNK_LEN)
            .enumerate()
            .map(|(c, b)| self.chunk_tag(desc.index, c as u64, b))
            .collect();
        Ok(self
            .gmac
            .tag(tensor_nonce(desc.index), &tensor_encoding(desc, &tags)))
    }

    /// The header tag of `header` (`deeplock.mac`).
    pub fn header_tag(&self, header: &HeaderFields<'_>) -> Result<Tag> {
        Ok(self.gmac.tag(LAST_NONCE, &header_encoding(header)?))
    }
}

impl std::fmt::Debug for FileAuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileAuthKey([REDACTED])")
    }
}

/// What a tensor tag binds besides the bytes: the tensor's index (its position in the
/// header ordered by [`index_order`]), name, dtype, shape, byte length, and whether it
/// is locked (clear tensors are tagged too, their bytes as they are).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDescriptor {
    /// Position in the header ordered by (start, end, name); at most [`MAX_TENSOR_INDEX`].
    pub index: u32,
    /// The name, as in the header.
    pub name: String,
    /// The dtype (`F32`, `BF16`, ...); its safetensors name is what is tagged.
    pub dtype: Dtype,
    /// The shape.
    pub shape: Vec<u64>,
    /// The tensor's size in bytes; at most [`MAX_TENSOR_LEN`].
    pub len: u64,
    /// Whether its bytes are locked (listed in `deeplock.locked`).
    pub locked: bool,
}

impl TensorDescriptor {
    /// The descriptor of header entry `entry` at index `index`.
    pub fn of(index: u32, entry: &TensorEntry, locked: bool) -> Self {
        TensorDescriptor {
            index,
            name: entry.name.clone(),
            dtype: entry.dtype,
            shape: entry.shape.iter().map(|&d| d as u64).collect(),
            len: entry.len(),
            locked,
        }
    }

    /// Number of chunks: `ceil(len / CHUNK_LEN)` (none for an empty tensor).
    pub fn chunk_count(&self) -> u64 {
        self.len.div_ceil(CHUNK_LEN as u64)
    }

    /// The byte range, within the tensor, of chunk `chunk`.
    pub fn chunk_range(&self, chunk: u64) -> Range<u64> {
        let start = chunk * CHUNK_LEN as u64;
        start..self.len.min(start + CHUNK_LEN as u64)
    }

    fn check(&self) -> Result<()> {
        if self.index > MAX_TENSOR_INDEX || self.len > MAX_TENSOR_LEN {
            return Err(Error::Invalid(format!(
                "tensor {:?} (index {}, {} bytes) is beyond v2's limits ({} tensors, {} bytes each)",
                self.name,
                self.index,
                self.len,
                MAX_TENSOR_INDEX as u64 + 1,
                MAX_TENSOR_LEN
            )));
        }
        Ok(())
    }
}

/// Collects a tensor's chunk tags in any order, and from bytes streamed in order,
/// then gives the tensor tag. For a streamer that reads a tensor piece by piece
/// ([`TensorTagger::update`]), or work split across threads or machines that tag chunks
/// with [`FileAuthKey::chunk_tag`] and hand the tags in ([`TensorTagger::insert`]).
#[derive(Debug)]
pub struct TensorTagger {
    desc: TensorDescriptor,
    tags: Vec<Option<Tag>>,
    missing: u64,
    /// Bytes fed by `update` since the last whole chunk.
    pending: Vec<u8>,
    /// Tensor bytes fed by `update` so far.
    fed: u64,
}

impl TensorTagger {
    /// A tagger for the tensor `desc`, with no chunk tags yet.
    pub fn new(desc: TensorDescriptor) -> Result<Self> {
        desc.check()?;
        let n = desc.chunk_count();
        Ok(TensorTagger {
            tags: vec![None; n as usize],
            missing: n,
            desc,
            pending: Vec::new(),
            fed: 0,
        })
    }

    /// The tensor's descriptor.
    pub fn descriptor(&self) -> &TensorDescriptor {
        &self.desc
    }

    /// Adds the tag of chunk `chunk`, computed elsewhere with [`FileAuthKey::chunk_tag`]
    /// over exactly the bytes of [`TensorDescriptor::chunk_range`]. Refuses a chunk
    /// outside the tensor or one given twice.
    pub fn insert(&mut self, chunk: u64, tag: Tag) -> Result<()> {
        let name = &self.desc.name;
        let slot = self
            .tags
            .get_mut(chunk as usize)
            .ok_or_else(|| Error::Invalid(format!("tensor {name:?} has no chunk {chunk}")))?;
        if slot.is_some() {
            return Err(Error::Invalid(format!(
                "chunk {chunk} of tensor {name:?} given twice"
            )));
        }
        *slot = Some(tag);
        self.missing -= 1;
        Ok(())
    }

    /// Feeds the tensor's next bytes, in order from its first byte, in pieces of any
    /// size: whole chunks are tagged at once (in parallel when a piece spans several),
    /// at most one partial chunk is kept until the rest of it comes. Refuses bytes past
    /// the tensor's end. Chunks fed here must not also be given to `insert`.
    pub fn update(&mut self, key: &FileAuthKey, mut bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 > self.desc.len - self.fed {
            return Err(Error::Invalid(format!(
                "tensor {:?} has {} bytes, {} were fed",
                self.desc.name,
                self.desc.len,
                self.fed + bytes.len() as u64
            )));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        if !self.pending.is_empty() || bytes.len() < self.next_chunk_len() {
            let take = (self.next_chunk_len() - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            self.fed += take as u64;
            if self.pending.len() == self.next_chunk_len() {
                let chunk = self.chunk_of_pending();
                let tag = key.chunk_tag(self.desc.index, chunk, &self.pending);
                self.insert(chunk, tag)?;
                self.pending.clear();
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        // Chunk-aligned from here: every piece but a short last one is a whole chunk.
        let first = self.fed / CHUNK_LEN as u64;
        let whole = if (self.fed + bytes.len() as u64) == self.desc.len {
            bytes.len()
        } else {
            bytes.len() / CHUNK_LEN * CHUNK_LEN
        };
        let index = self.desc.index;
        let tags: Vec<Tag> = bytes[..whole]
            .par_chunks(CHUNK_LEN)
            .enumerate()
            .map(|(i, b)| key.chunk_tag(index, first + i as u64, b))
            .collect();
        for (i, tag) in tags.into_iter().enumerate() {
            self.insert(first + i as u64, tag)?;
        }
        self.pending.extend_from_slice(&bytes[whole..]);
        self.fed += bytes.len() as u64;
        Ok(())
    }

    /// Length of the chunk that `update`'s next byte belongs to.
    fn next_chunk_len(&self) -> usize {
        let r = self.desc.chunk_range(self.chunk_of_pending());
        (r.end - r.start) as usize
    }

    /// Index of the chunk that the pending bytes (or `update`'s next byte) belong to.
    fn chunk_of_pending(&self) -> u64 {
        (self.fed - self.pending.len() as u64) / CHUNK_LEN as u64
    }

    /// The tensor tag, once every chunk's tag is in.
    pub fn finish(self, key: &FileAuthKey) -> Result<Tag> {
        if self.missing > 0 {
            return Err(Error::Invalid(format!(
                "tensor {:?}: {} of its {} chunk tags are missing",
                self.desc.name,
                self.missing,
                self.tags.len()
            )));
        }
        let tags: Vec<Tag> = self.tags.iter().flatten().copied().collect();
        Ok(key.gmac.tag(
            tensor_nonce(self.desc.index),
            &tensor_encoding(&self.desc, &tags),
        ))
    }
}

/// Appends `BE64(len) || bytes`.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends `BE64(rank) || BE64(d_0) || ... || BE64(d_{rank-1})`.
fn put_shape(out: &mut Vec<u8>, shape: impl ExactSizeIterator<Item = u64>) {
    out.extend_from_slice(&(shape.len() as u64).to_be_bytes());
    for d in shape {
        out.extend_from_slice(&d.to_be_bytes());
    }
}

/// The message of a tensor tag (docs/SPEC.md): the label, the descriptor, the chunk
/// count and the chunk tags in chunk order, every variable-length field prefixed by its
/// length so that no two descriptors encode alike.
pub fn tensor_encoding(desc: &TensorDescriptor, chunk_tags: &[Tag]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + desc.name.len() + 16 * chunk_tags.len());
    put_bytes(&mut out, TENSOR_LABEL.as_bytes());
    out.extend_from_slice(&desc.index.to_be_bytes());
    put_bytes(&mut out, desc.name.as_bytes());
    put_bytes(&mut out, desc.dtype.name().as_bytes());
    put_shape(&mut out, desc.shape.iter().copied());
    out.extend_from_slice(&desc.len.to_be_bytes());
    out.push(desc.locked as u8);
    out.extend_from_slice(&(chunk_tags.len() as u64).to_be_bytes());
    for t in chunk_tags {
        out.extend_from_slice(&t.0);
    }
    out
}

/// The order that defines tensor indices: header entries sorted by (start offset, end
/// offset, name). Offsets alone do not do: empty tensors can share an offset with each
/// other and with the next tensor. Returns positions into `entries`; the tensor at
/// `entries[order[t]]` has index `t`.
pub fn index_order(entries: &[TensorEntry]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| order_key(&entries[a]).cmp(&order_key(&entries[b])));
    order
}

/// What [`index_order`] sorts by.
fn order_key(e: &TensorEntry) -> (u64, u64, &[u8]) {
    (e.start, e.end, e.name.as_bytes())
}

/// Everything the header tag covers, as read from (or about to be written to) the
/// header: all of it except `deeplock.mac` itself.
#[derive(Clone, Copy, Debug)]
pub struct HeaderFields<'a> {
    /// `deeplock.version`.
    pub version: &'a str,
    /// `deeplock.scheme`.
    pub scheme: &'a str,
    /// `deeplock.salt`.
    pub salt: &'a Salt,
    /// `deeplock.kcv` (the v2 KCV).
    pub kcv: &'a [u8; 8],
    /// `deeplock.locked`, in its stored order.
    pub locked: &'a [String],
    /// Every tensor entry, locked or not, in index order ([`index_order`]), each with
    /// its tensor tag (the entries of `deeplock.tags`).
    pub tensors: &'a [(&'a TensorEntry, Tag)],
    /// Every other `__metadata__` entry (user metadata; any `deeplock.*` key but the
    /// seven above is user metadata too), sorted by key as a `BTreeMap` keeps them.
    pub metadata: &'a BTreeMap<String, String>,
}

/// The message of the header tag (docs/SPEC.md). Refuses tensors that are not in index
/// order or beyond v2's limits, so that one header has exactly one encoding.
pub fn header_encoding(h: &HeaderFields<'_>) -> Result<Vec<u8>> {
    if h.tensors.len() as u64 > MAX_TENSOR_INDEX as u64 + 1 {
        return Err(Error::Invalid(format!(
            "{} tensors: v2 tags at most {}",
            h.tensors.len(),
            MAX_TENSOR_INDEX as u64 + 1
        )));
    }
    if h.tensors
        .windows(2)
        .any(|w| order_key(w[0].0) >= order_key(w[1].0))
    {
        return Err(Error::Invalid(
            "header tensors must be given in index order (start, end, name)".into(),
        ));
    }
    let mut out = Vec::new();
    put_bytes(&mut out, HEADER_LABEL.as_bytes());
    put_bytes(&mut out, h.version.as_bytes());
    put_bytes(&mut out, h.scheme.as_bytes());
    out.extend_from_slice(&h.salt.0);
    out.extend_from_slice(h.kcv);
    out.extend_from_slice(&(h.locked.len() as u64).to_be_bytes());
    for name in h.locked {
        put_bytes(&mut out, name.as_bytes());
    }
    out.extend_from_slice(&(h.tensors.len() as u64).to_be_bytes());
    for (e, tag) in h.tensors {
        put_bytes(&mut out, e.name.as_bytes());
        put_bytes(&mut out, e.dtype.name().as_bytes());
        put_shape(&mut out, e.shape.iter().map(|&d| d as u64));
        out.extend_from_slice(&e.start.to_be_bytes());
        out.extend_from_slice(&e.end.to_be_bytes());
        out.extend_from_slice(&tag.0);
    }
    out.extend_from_slice(&(h.metadata.len() as u64).to_be_bytes());
    for (k, v) in h.metadata {
        put_bytes(&mut out, k.as_bytes());
        put_bytes(&mut out, v.as_bytes());
    }
    Ok(out)
}

/// SHA-256 of an index file's bytes (`model.safetensors.index.json`), as the
/// checkpoint record binds it.
pub fn index_digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The message of the checkpoint tag (docs/SPEC.md): every shard's path relative to
/// the checkpoint directory (`/`-separated) with its header tag, then every index
/// file's path with the SHA-256 of its bytes, each list sorted by path bytes.
pub fn checkpoint_encoding(
    shards: &BTreeMap<String, Tag>,
    indexes: &BTreeMap<String, [u8; 32]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    put_bytes(&mut out, CHECKPOINT_LABEL.as_bytes());
    out.extend_from_slice(&(shards.len() as u64).to_be_bytes());
    for (name, tag) in shards {
        put_bytes(&mut out, name.as_bytes());
        out.extend_from_slice(&tag.0);
    }
    out.extend_from_slice(&(indexes.len() as u64).to_be_bytes());
    for (name, digest) in indexes {
        put_bytes(&mut out, name.as_bytes());
        out.extend_from_slice(digest);
    }
    out
}

/// A checkpoint record's MAC key `K_c = AES_{K_ckpt}(S_c)`, with
/// `K_ckpt = AES_K("deeplock-v2-ckpt")` and `S_c` the record's own fresh salt: one tag
/// per key, so its fixed nonce never repeats, and no file's key is ever a record's.
/// Secret: `Debug` is redacted and the key state is zeroized on drop.
pub struct CheckpointKey(Gmac);

impl CheckpointKey {
    /// The key of the checkpoint record with salt `salt` under `key`.
    pub fn derive(key: &MasterKey, salt: &Salt) -> Self {
        CheckpointKey(Gmac::new(&derive(key, &CHECKPOINT_KEY_BLOCK, salt)))
    }

    /// The checkpoint tag over the shards' header tags and the index files' digests.
    pub fn tag(&self, shards: &BTreeMap<String, Tag>, indexes: &BTreeMap<String, [u8; 32]>) -> Tag {
        self.0
            .tag(LAST_NONCE, &checkpoint_encoding(shards, indexes))
    }
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointKey([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> MasterKey {
        MasterKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap()
    }

    fn file_key() -> FileAuthKey {
        FileAuthKey::derive(&key(), &Salt([1; 16]))
    }

    /// Byte j is j mod 251, as in the SPEC's v2 vectors.
    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|j| (j % 251) as u8).collect()
    }

    fn desc(len: u64) -> TensorDescriptor {
        TensorDescriptor {
            index: 3,
            name: "layers.0.w".into(),
            dtype: Dtype::U8,
            shape: vec![len],
            len,
            locked: true,
        }
    }

    const SIZES: [usize; 7] = [
        0,
        1,
        CHUNK_LEN - 1,
        CHUNK_LEN,
        CHUNK_LEN + 1,
        2 * CHUNK_LEN,
        3 * CHUNK_LEN + 17,
    ];

    #[test]
    fn derived_key_matches_the_spec_vector() {
        // docs/SPEC.md, first v2 key row; the private key bytes are only reachable here.
        let k_file = derive(&key(), &AUTH_KEY_BLOCK, &Salt([1; 16]));
        assert_eq!(
            crate::hex::encode(&*k_file),
            "decb2d2a0f736202e4cfef1ea4578d08"
        );
        assert_eq!(crate::hex::encode(&file_key().kcv()), "f7f1fc1e51334f8b");
    }

    #[test]
    fn derivation_blocks_are_never_keystream_blocks_nor_gcm_inputs() {
        // Byte 8 of a v1 counter block is the top byte of a block counter below 2^60.
        let max_counter = crate::scheme::Nonce([0xff; 8]).counter_block((1 << 60) - 1);
        for block in [AUTH_KEY_BLOCK, CHECKPOINT_KEY_BLOCK, crate::key::KCV_BLOCK] {
            assert!(block[8] > max_counter[8], "{block:?}");
        }
        assert_ne!(AUTH_KEY_BLOCK, CHECKPOINT_KEY_BLOCK);
        // Under K_file, GCM encrypts 0^128 (for H) and J0 = nonce || 00000001 only.
        assert_ne!(KCV_BLOCK, [0; 16]);
        assert_ne!(KCV_BLOCK[12..], [0, 0, 0, 1]);
        // The nonces of the three kinds of tag never meet.
        assert_ne!(
            chunk_nonce(MAX_TENSOR_INDEX, (1 << 30) - 1),
            tensor_nonce(0)
        );
        assert_ne!(tensor_nonce(MAX_TENSOR_INDEX), LAST_NONCE);
        assert_ne!(chunk_nonce(MAX_TENSOR_INDEX, u64::MAX - 1), LAST_NONCE);
    }

    #[test]
    fn kcv_depends_on_key_and_salt() {
        let k = file_key().kcv();
        assert_ne!(k, key().kcv()[..]);
        assert_ne!(k, FileAuthKey::derive(&key(), &Salt([2; 16])).kcv());
        let other = MasterKey::from_hex("000102030405060708090a0b0c0d0e0e").unwrap();
        assert_ne!(k, FileAuthKey::derive(&other, &Salt([1; 16])).kcv());
        assert_eq!(k, file_key().kcv());
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", file_key()), "FileAuthKey([REDACTED])");
        let ck = CheckpointKey::derive(&key(), &Salt([1; 16]));
        assert_eq!(format!("{ck:?}"), "CheckpointKey([REDACTED])");
    }

    #[test]
    fn tags_compare_by_value_and_round_trip_hex() {
        let t = Tag([7; 16]);
        let mut u = t;
        assert_eq!(t, u);
        u.0[15] ^= 1;
        assert_ne!(t, u);
        assert_eq!(Tag::from_hex(&t.to_hex()), Some(t));
        assert_eq!(Tag::from_hex("00"), None);
    }

    #[test]
    fn tensor_tag_is_gmac_of_descriptor_and_chunk_tags() {
        let (k, d) = (file_key(), desc(CHUNK_LEN as u64 + 5));
        let bytes = pattern(d.len as usize);
        let tags = [
            k.chunk_tag(3, 0, &bytes[..CHUNK_LEN]),
            k.chunk_tag(3, 1, &bytes[CHUNK_LEN..]),
        ];
        let expect = k.gmac.tag(tensor_nonce(3), &tensor_encoding(&d, &tags));
        assert_eq!(k.tensor_tag(&d, &bytes).unwrap(), expect);
    }

    #[test]
    fn taggers_agree_with_the_one_shot_tag_at_chunk_boundaries() {
        let k = file_key();
        for n in SIZES {
            let d = desc(n as u64);
            let bytes = pattern(n);
            let one_shot = k.tensor_tag(&d, &bytes).unwrap();
            let mut streamed = TensorTagger::new(d.clone()).unwrap();
            streamed.update(&k, &bytes).unwrap();
            assert_eq!(
                streamed.finish(&k).unwrap(),
                one_shot,
                "{n} bytes, one piece"
            );
            let mut inserted = TensorTagger::new(d.clone()).unwrap();
            for c in (0..d.chunk_count()).rev() {
                let r = d.chunk_range(c);
                let tag = k.chunk_tag(d.index, c, &bytes[r.start as usize..r.end as usize]);
                inserted.insert(c, tag).unwrap();
            }
            assert_eq!(
                inserted.finish(&k).unwrap(),
                one_shot,
                "{n} bytes, reversed"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Streamed in random pieces, or chunk tags inserted in a random order (some
        /// streamed, the rest inserted), a tensor's tag is the one-shot tag.
        #[test]
        fn any_split_or_order_gives_the_one_shot_tag(
            size in prop::sample::select(SIZES.to_vec()),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            order in any::<u64>(),
            streamed_chunks in 0u64..5,
        ) {
            let k = file_key();
            let d = desc(size as u64);
            let bytes = pattern(size);
            let one_shot = k.tensor_tag(&d, &bytes).unwrap();

            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(size + 1)).collect();
            points.extend([0, size]);
            points.sort_unstable();
            let mut t = TensorTagger::new(d.clone()).unwrap();
            for w in points.windows(2) {
                t.update(&k, &bytes[w[0]..w[1]]).unwrap();
            }
            prop_assert_eq!(t.finish(&k).unwrap(), one_shot);

            // The first chunks streamed, the others inserted in a shuffled order.
            let n = d.chunk_count();
            let streamed = streamed_chunks.min(n);
            let mut t = TensorTagger::new(d.clone()).unwrap();
            t.update(&k, &bytes[..d.chunk_range(streamed).start.min(d.len) as usize]).unwrap();
            let mut rest: Vec<u64> = (streamed..n).collect();
            let mut state = order | 1;
            for i in (1..rest.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                rest.swap(i, (state % (i as u64 + 1)) as usize);
            }
            for c in rest {
                let r = d.chunk_range(c);
                t.insert(c, k.chunk_tag(d.index, c, &bytes[r.start as usize..r.end as usize])).unwrap();
            }
            prop_assert_eq!(t.finish(&k).unwrap(), one_shot);
        }

        /// Flipping any bit of a tensor's bytes changes its tag.
        #[test]
        fn any_bit_flip_changes_the_tensor_tag(
            size in prop::sample::select(vec![1usize, CHUNK_LEN + 1, 2 * CHUNK_LEN + 3]),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let k = file_key();
            let d = desc(size as u64);
            let mut bytes = pattern(size);
            let before = k.tensor_tag(&d, &bytes).unwrap();
            bytes[at.index(size)] ^= 1 << bit;
            prop_assert_ne!(k.tensor_tag(&d, &bytes).unwrap(), before);
        }
    }

    #[test]
    fn every_descriptor_field_changes_the_tensor_tag() {
        let k = file_key();
        let d = desc(CHUNK_LEN as u64 + 1);
        let bytes = pattern(d.len as usize);
        let base = k.tensor_tag(&d, &bytes).unwrap();
        let edits: [fn(&mut TensorDescriptor); 7] = [
            |d| d.index += 1,
            |d| d.name.push('x'),
            |d| d.dtype = Dtype::I8,
            |d| d.shape = vec![1, d.len],
            |d| d.shape = vec![],
            |d| d.locked = false,
            |d| d.len -= 1,
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut e = d.clone();
            edit(&mut e);
            let tag = k.tensor_tag(&e, &bytes[..e.len as usize]).unwrap();
            assert_ne!(tag, base, "edit {i}");
        }
        // A different file (salt) or key.
        let other = FileAuthKey::derive(&key(), &Salt([2; 16]));
        assert_ne!(other.tensor_tag(&d, &bytes).unwrap(), base);
        // Equal chunks at two positions tag apart: the nonce binds the chunk index, so
        // chunks cannot be reordered.
        let same = vec![9u8; CHUNK_LEN];
        assert_ne!(k.chunk_tag(3, 0, &same), k.chunk_tag(3, 1, &same));
        assert_ne!(k.chunk_tag(3, 0, &same), k.chunk_tag(4, 0, &same));
    }

    #[test]
    fn taggers_refuse_misuse() {
        let k = file_key();
        let d = desc(2 * CHUNK_LEN as u64 + 1);
        let mut t = TensorTagger::new(d.clone()).unwrap();
        assert!(t.insert(3, Tag([0; 16])).is_err(), "no such chunk");
        t.insert(1, Tag([0; 16])).unwrap();
        assert!(t.insert(1, Tag([0; 16])).is_err(), "twice");
        t.update(&k, &pattern(CHUNK_LEN)).unwrap();
        assert!(
            t.update(&k, &pattern(CHUNK_LEN)).is_err(),
            "chunk 1 was inserted already"
        );
        let mut t = TensorTagger::new(d.clone()).unwrap();
        assert!(t.update(&k, &pattern(d.len as usize + 1)).is_err());
        t.update(&k, &pattern(10)).unwrap();
        let err = t.finish(&k).unwrap_err().to_string();
        assert!(err.contains("3 chunk tags"), "{err}");
        assert!(k.tensor_tag(&d, &pattern(5)).is_err(), "length mismatch");
        let huge = TensorDescriptor {
            len: MAX_TENSOR_LEN + 1,
            ..d.clone()
        };
        assert!(TensorTagger::new(huge).is_err());
        let last = TensorDescriptor {
            index: u32::MAX,
            ..d
        };
        assert!(TensorTagger::new(last).is_err());
    }

    fn entry(name: &str, dtype: &str, shape: &[usize], start: u64, end: u64) -> TensorEntry {
        TensorEntry {
            name: name.into(),
            dtype: Dtype::parse(dtype).expect("a safetensors dtype"),
            shape: shape.to_vec(),
            start,
            end,
        }
    }

    #[test]
    fn index_order_breaks_offset_ties_by_end_then_name() {
        let entries = [
            entry("b", "F32", &[1], 0, 4),
            entry("z", "F32", &[0], 0, 0),
            entry("a", "F32", &[0], 0, 0),
            entry("c", "F32", &[1], 4, 8),
        ];
        assert_eq!(index_order(&entries), [2, 1, 0, 3]);
    }

    #[test]
    fn every_header_field_changes_the_header_tag() {
        let k = file_key();
        let salt = Salt([1; 16]);
        let kcv = k.kcv();
        let (e0, e1) = (
            entry("a", "F32", &[2], 0, 8),
            entry("b", "BOOL", &[3], 8, 11),
        );
        let locked = vec!["a".to_owned()];
        let tensors = [(&e0, Tag([1; 16])), (&e1, Tag([2; 16]))];
        let metadata: BTreeMap<String, String> = [("format".into(), "pt".into())].into();
        let h = HeaderFields {
            version: VERSION,
            scheme: SCHEME,
            salt: &salt,
            kcv: &kcv,
            locked: &locked,
            tensors: &tensors,
            metadata: &metadata,
        };
        let base = k.header_tag(&h).unwrap();
        let mut changed = Vec::new();
        changed.push(k.header_tag(&HeaderFields { version: "1", ..h }).unwrap());
        changed.push(k.header_tag(&HeaderFields { scheme: "x", ..h }).unwrap());
        let salt2 = Salt([2; 16]);
        changed.push(k.header_tag(&HeaderFields { salt: &salt2, ..h }).unwrap());
        let kcv2 = [0; 8];
        changed.push(k.header_tag(&HeaderFields { kcv: &kcv2, ..h }).unwrap());
        let none: Vec<String> = vec![];
        changed.push(k.header_tag(&HeaderFields { locked: &none, ..h }).unwrap());
        let both = vec!["a".to_owned(), "b".to_owned()];
        changed.push(k.header_tag(&HeaderFields { locked: &both, ..h }).unwrap());
        let variants = [
            entry("a2", "F32", &[2], 0, 8),
            entry("a", "F16", &[2], 0, 8),
            entry("a", "F32", &[2, 1], 0, 8),
            entry("a", "F32", &[2], 0, 7),
        ];
        for v in &variants {
            let ts = [(v, Tag([1; 16])), (&e1, Tag([2; 16]))];
            changed.push(k.header_tag(&HeaderFields { tensors: &ts, ..h }).unwrap());
        }
        let ts = [(&e0, Tag([1; 16])), (&e1, Tag([3; 16]))];
        changed.push(k.header_tag(&HeaderFields { tensors: &ts, ..h }).unwrap());
        let ts = [(&e0, Tag([1; 16]))];
        changed.push(k.header_tag(&HeaderFields { tensors: &ts, ..h }).unwrap());
        for m in [
            BTreeMap::new(),
            [("format".into(), "np".into())].into(),
            [("format".into(), "pt".into()), ("x".into(), String::new())].into(),
            [("formatpt".into(), String::new())].into(),
        ] {
            changed.push(k.header_tag(&HeaderFields { metadata: &m, ..h }).unwrap());
        }
        for (i, t) in changed.iter().enumerate() {
            assert_ne!(*t, base, "edit {i}");
        }
        let other = FileAuthKey::derive(&key(), &salt2);
        assert_ne!(other.header_tag(&h).unwrap(), base);
        // Out of index order: refused, not encoded some other way.
        let ts = [(&e1, Tag([2; 16])), (&e0, Tag([1; 16]))];
        assert!(k.header_tag(&HeaderFields { tensors: &ts, ..h }).is_err());
    }

    #[test]
    fn checkpoint_tag_notices_missing_extra_renamed_and_swapped_shards() {
        let ck = CheckpointKey::derive(&key(), &Salt([15; 16]));
        let shards: BTreeMap<String, Tag> = [
            ("model-00001-of-00002.safetensors".to_owned(), Tag([1; 16])),
            ("model-00002-of-00002.safetensors".to_owned(), Tag([2; 16])),
        ]
        .into();
        let indexes: BTreeMap<String, [u8; 32]> = [(
            "model.safetensors.index.json".to_owned(),
            index_digest(b"{}"),
        )]
        .into();
        let base = ck.tag(&shards, &indexes);
        let mut variants: Vec<BTreeMap<String, Tag>> = Vec::new();
        let mut missing = shards.clone();
        missing.remove("model-00002-of-00002.safetensors");
        variants.push(missing);
        let mut extra = shards.clone();
        extra.insert("model-00003-of-00002.safetensors".into(), Tag([3; 16]));
        variants.push(extra);
        let mut renamed = shards.clone();
        let t = renamed.remove("model-00002-of-00002.safetensors").unwrap();
        renamed.insert("model-2.safetensors".into(), t);
        variants.push(renamed);
        let swapped: BTreeMap<String, Tag> = [
            ("model-00001-of-00002.safetensors".to_owned(), Tag([2; 16])),
            ("model-00002-of-00002.safetensors".to_owned(), Tag([1; 16])),
        ]
        .into();
        variants.push(swapped);
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(ck.tag(v, &indexes), base, "variant {i}");
        }
        let edited: BTreeMap<String, [u8; 32]> = [(
            "model.safetensors.index.json".to_owned(),
            index_digest(b"{ }"),
        )]
        .into();
        assert_ne!(ck.tag(&shards, &edited), base);
        assert_ne!(ck.tag(&shards, &BTreeMap::new()), base);
        let other = CheckpointKey::derive(&key(), &Salt([14; 16]));
        assert_ne!(other.tag(&shards, &indexes), base);
    }
}
