//! The host side of `shaders/aes_ctr.wgsl`: the lookup tables it loads into workgroup
//! memory, the per-tensor key uniform, and the layout of bind group 0 that the WGSL file
//! owns. Any kernel composed with [`super::AES_CTR_WGSL`] (lock/unlock here, a fused
//! unlock-then-matmul elsewhere) builds its group 0 from these.

use wgpu::util::DeviceExt;
use zeroize::Zeroize;

use crate::sbox::{INV_SBOX, SBOX};
use crate::scheme::TensorCipher;

/// Number of `u32` entries in the table buffer: T0..T3, S-box, inverse S-box, 256 each.
pub const TABLE_WORDS: usize = 1536;

/// Multiplication by x in GF(2^8) (the AES "xtime").
fn xtime(b: u8) -> u8 {
    (b << 1) ^ if b & 0x80 != 0 { 0x1b } else { 0 }
}

/// The table buffer's contents, in the order `aes_ctr.wgsl` indexes them:
/// `Tr[x]` is the MixColumns image of a column holding `S[x]` in row r and zeros
/// elsewhere, packed little-endian: `T0[x] = (2·S[x], S[x], S[x], 3·S[x])` and `Tr` is `T0`
/// rotated by r bytes, so a full round is 16 lookups and XORs. Then the S-box and the inverse S-box,
/// one byte per entry so a lookup needs no shift. Built from [`crate::sbox`] so the GPU
/// and the CPU share one definition of the S-box.
pub fn table_words() -> [u32; TABLE_WORDS] {
    let mut t = [0u32; TABLE_WORDS];
    for x in 0..256 {
        let s = SBOX[x];
        let s2 = xtime(s);
        let t0 = u32::from_le_bytes([s2, s, s, s2 ^ s]);
        for (k, table) in t.chunks_exact_mut(256).take(4).enumerate() {
            table[x] = t0.rotate_left(8 * k as u32);
        }
        t[1024 + x] = u32::from(s);
        t[1280 + x] = u32::from(INV_SBOX[x]);
    }
    t
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

/// Size of [`AesKeyUniform`] as bound (192 bytes).
pub const KEY_UNIFORM_SIZE: u64 = std::mem::size_of::<AesKeyUniform>() as u64;

/// The layout of bind group 0 of `aes_ctr.wgsl`: binding 0 the table buffer (read-only
/// storage), binding 1 an [`AesKeyUniform`] at a dynamic offset, so that one bind group
/// serves every tensor whose key sits in one uniform buffer.
pub fn bind_group_layout(device: &wgpu::Device) -> wgpu::BindGroupLayout {
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("deeplock aes_ctr group 0 (tables, key)"),
        entries: &[
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: true },
                    has_dynamic_offset: false,
                    min_binding_size: wgpu::BufferSize::new(4 * TABLE_WORDS as u64),
                },
                count: None,
            },
            wgpu::BindGroupLayoutEntry {
                binding: 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(KEY_UNIFORM_SIZE),
                },
                count: None,
            },
        ],
    })
}

/// Uploads [`table_words`] once; every bind group 0 shares the buffer.
pub fn create_table_buffer(device: &wgpu::Device) -> wgpu::Buffer {
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("deeplock aes_ctr tables"),
        contents: bytemuck::cast_slice(&table_words()),
        usage: wgpu::BufferUsages::STORAGE,
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
            wgpu::BindGroupEntry {
                binding: 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: keys,
                    offset: 0,
                    size: wgpu::BufferSize::new(KEY_UNIFORM_SIZE),
                }),
            },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS-197 §5.1.3's MixColumns example column db 13 53 45 -> 8e 4d a1 bc, computed
    /// from the T-tables the way aes_ctr.wgsl does (with the S-box undone on input).
    #[test]
    fn t_tables_mix_columns() {
        let t = table_words();
        let col = [0xdbu8, 0x13, 0x53, 0x45];
        let mut out = 0u32;
        for (row, &b) in col.iter().enumerate() {
            out ^= t[256 * row + INV_SBOX[b as usize] as usize];
        }
        assert_eq!(out.to_le_bytes(), [0x8e, 0x4d, 0xa1, 0xbc]);
    }

    #[test]
    fn sbox_tables() {
        let t = table_words();
        assert_eq!(t[1024 + 0x53], 0xed);
        assert_eq!(t[1280 + 0x63], 0x00);
    }

    #[test]
    fn key_uniform_is_wgsl_sized() {
        assert_eq!(KEY_UNIFORM_SIZE, 192);
    }
}
