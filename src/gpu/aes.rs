//! The host side of `shaders/aes_ctr.wgsl`: the lookup tables it loads into workgroup
//! memory, the per-tensor key uniform, and the layout of bind group 0 that the WGSL file
//! owns. Any kernel composed with [`super::AES_CTR_WGSL`] (lock/unlock here, a fused
//! unlock-then-matmul elsewhere) builds its group 0 from these.

use wgpu::util::DeviceExt;
use zeroize::Zeroize;

use super::{buffer_entry, storage_layout, uniform_layout};
use crate::sbox::{INV_SBOX, SBOX};
use crate::scheme::TensorCipher;

/// Number of `u32` entries in the table buffer: T0 (256 words), then the inverse S-box
/// packed four bytes to a word (64 words).
pub const TABLE_WORDS: usize = 320;

/// Word index of the packed inverse S-box in the table buffer.
const INV_SBOX_AT: usize = 256;

/// Most copies of the tables a workgroup keeps: one per bank of workgroup memory on
/// NVIDIA and AMD GPUs (32 banks of 4 bytes).
pub const MAX_TABLE_COPIES: u32 = 32;

/// Multiplication by x in GF(2^8) (the AES "xtime").
fn xtime(b: u8) -> u8 {
    (b << 1) ^ if b & 0x80 != 0 { 0x1b } else { 0 }
}

/// The table buffer's contents, in the order `aes_ctr.wgsl` indexes them.
///
/// `T0[x]` is the MixColumns image of a column holding `S[x]` in row 0 and zeros
/// elsewhere, packed little-endian: `(2·S[x], S[x], S[x], 3·S[x])`. The kernel gets the
/// other three T-tables by rotating it (`Tr[x] = T0[x]` rotated left by 8r bits) and the
/// S-box from its byte 1, so one 1 KiB table serves every round: small enough to be
/// replicated once per memory bank (see [`table_copies`]). Then the inverse S-box, four
/// entries per word. Built from the crate's S-box module so the GPU and the CPU share one
/// definition of the S-box.
pub fn table_words() -> [u32; TABLE_WORDS] {
    let mut t = [0u32; TABLE_WORDS];
    for (x, &s) in SBOX.iter().enumerate() {
        let s2 = xtime(s);
        t[x] = u32::from_le_bytes([s2, s, s, s2 ^ s]);
    }
    for (word, inv) in t[INV_SBOX_AT..].iter_mut().zip(INV_SBOX.chunks_exact(4)) {
        *word = u32::from_le_bytes([inv[0], inv[1], inv[2], inv[3]]);
    }
    t
}

/// Workgroup memory, in bytes, that `copies` copies of the tables take.
pub fn workgroup_table_bytes(copies: u32) -> u32 {
    copies * 4 * TABLE_WORDS as u32
}

/// How many copies of the tables to keep in a workgroup that has `available` bytes of
/// workgroup memory to spare for them: the most, up to [`MAX_TABLE_COPIES`], as a power of
/// two; at least 1.
///
/// Why copies: table lookups at data-dependent indices are the bulk of AES's work, and
/// when two invocations of a warp read different words of one memory bank they are
/// served one after the other. Entry `e` of copy `c` sits at word `e * copies + c` and
/// invocation `i` reads copy `i % copies`, so with 32 copies every invocation of a warp
/// has a bank to itself and lookups never conflict (Tezcan, "Optimization of Advanced
/// Encryption Standard on Graphics Processing Units", IEEE Access 2021); with fewer,
/// at most `32 / copies` invocations share a bank.
pub fn table_copies(available: u32) -> u32 {
    let mut copies = MAX_TABLE_COPIES;
    while copies > 1 && workgroup_table_bytes(copies) > available {
        copies /= 2;
    }
    copies
}

/// The pipeline constant that sets the number of table copies in `aes_ctr.wgsl`.
pub fn copies_constant(copies: u32) -> (&'static str, f64) {
    ("AES_TABLE_COPIES", f64::from(copies))
}

/// The `AesKey` uniform of `aes_ctr.wgsl`: one tensor's round keys and nonce.
/// Secret, and `Copy` (it is plain GPU data), so it cannot zeroize itself on drop: whoever
/// builds one wipes it with [`AesKeyUniform::wipe`] once it is written out. It has no `Debug`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AesKeyUniform {
    /// Round key r is `round_keys[r]`, four little-endian column words.
    pub round_keys: [[u32; 4]; 11],
    /// The nonce's bytes 0..4 and 4..8, little-endian.
    pub nonce: [u32; 2],
    /// WGSL rounds the struct's size up to its 16-byte alignment.
    pub pad: [u32; 2],
}

impl AesKeyUniform {
    /// The uniform for `cipher`'s tensor.
    pub fn new(cipher: &TensorCipher) -> Self {
        let mut words = cipher.round_keys().words_le();
        let mut round_keys = [[0u32; 4]; 11];
        for (rk, w) in round_keys.iter_mut().zip(words.chunks_exact(4)) {
            rk.copy_from_slice(w);
        }
        words.zeroize();
        let n = cipher.nonce().0;
        AesKeyUniform {
            round_keys,
            nonce: [
                u32::from_le_bytes([n[0], n[1], n[2], n[3]]),
                u32::from_le_bytes([n[4], n[5], n[6], n[7]]),
            ],
            pad: [0; 2],
        }
    }

    /// Overwrites the key material with zeros.
    pub fn wipe(&mut self) {
        bytemuck::bytes_of_mut(self).zeroize();
    }
}

/// The layout of [`AesKeyUniform`], for `gpu::layout_tests`.
#[cfg(test)]
pub(crate) fn layouts() -> Vec<super::Layout> {
    use std::mem::offset_of;
    vec![super::Layout::new::<AesKeyUniform>(
        "AesKey",
        &[
            ("round_keys", offset_of!(AesKeyUniform, round_keys)),
            ("nonce", offset_of!(AesKeyUniform, nonce)),
        ],
    )]
}

/// Size of [`AesKeyUniform`] as bound (192 bytes).
pub const KEY_UNIFORM_SIZE: u64 = std::mem::size_of::<AesKeyUniform>() as u64;

/// The layout of bind group 0 of `aes_ctr.wgsl`: binding 0 the table buffer (read-only
/// storage), binding 1 an [`AesKeyUniform`] at a dynamic offset, so that one bind group
/// serves every tensor whose key sits in one uniform buffer.
pub fn bind_group_layout(device: &wgpu::Device) -> wgpu::BindGroupLayout {
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("deeplock aes_ctr group 0 (tables, key)"),
        entries: &[
            storage_layout(0, true, 4 * TABLE_WORDS as u64),
            uniform_layout(1, true, KEY_UNIFORM_SIZE),
        ],
    })
}

/// Uploads [`table_words`] once; every bind group 0 shares the buffer. Public
/// constants, `COPY_SRC` so that audits can read back every buffer a pass binds.
pub fn create_table_buffer(device: &wgpu::Device) -> wgpu::Buffer {
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("deeplock aes_ctr tables"),
        contents: bytemuck::cast_slice(&table_words()),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}

/// Bind group 0 over `tables` and the key uniforms in `keys` (each
/// [`KEY_UNIFORM_SIZE`] bytes, selected by dynamic offset).
pub fn bind_group(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    tables: &wgpu::Buffer,
    keys: &wgpu::Buffer,
) -> wgpu::BindGroup {
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("deeplock aes_ctr group 0"),
        layout,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: tables.as_entire_binding(),
            },
            buffer_entry(1, keys, 0, KEY_UNIFORM_SIZE),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS-197 §5.1.3's MixColumns example column db 13 53 45 -> 8e 4d a1 bc, computed
    /// from T0 and its rotations the way aes_ctr.wgsl does (with the S-box undone on input).
    #[test]
    fn t_table_rotations_mix_columns() {
        let t = table_words();
        let col = [0xdbu8, 0x13, 0x53, 0x45];
        let mut out = 0u32;
        for (row, &b) in col.iter().enumerate() {
            out ^= t[INV_SBOX[b as usize] as usize].rotate_left(8 * row as u32);
        }
        assert_eq!(out.to_le_bytes(), [0x8e, 0x4d, 0xa1, 0xbc]);
    }

    #[test]
    fn sbox_tables() {
        let t = table_words();
        for x in 0..256 {
            assert_eq!((t[x] >> 8) as u8, SBOX[x], "S-box from byte 1 of T0");
            let packed = t[INV_SBOX_AT + x / 4].to_le_bytes()[x % 4];
            assert_eq!(packed, INV_SBOX[x], "packed inverse S-box");
        }
        assert_eq!(SBOX[0x53], 0xed);
    }

    #[test]
    fn copies_fit_and_are_powers_of_two() {
        assert_eq!(table_copies(0), 1);
        assert_eq!(table_copies(workgroup_table_bytes(3)), 2);
        // lavapipe's 32 KiB, NVIDIA's 48 KiB.
        assert_eq!(table_copies(32 << 10), 16);
        assert_eq!(table_copies(48 << 10), 32);
        assert_eq!(table_copies(u32::MAX), MAX_TABLE_COPIES);
    }

    #[test]
    fn key_uniform_is_wgsl_sized() {
        assert_eq!(KEY_UNIFORM_SIZE, 192);
    }
}
