//! The AES (Rijndael) S-box and its inverse, computed at compile time from their
//! definition (FIPS-197 §5.1.1: multiplicative inverse in GF(2^8), then the affine map)
//! rather than typed in, so there is no table to mistype.

/// Multiplication in GF(2^8) modulo the AES polynomial x^8 + x^4 + x^3 + x + 1.
const fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let hi = a & 0x80;
        a <<= 1;
        if hi != 0 {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    p
}

/// Multiplicative inverse in GF(2^8) as x^254; 0 maps to 0, as AES defines.
const fn gf_inv(x: u8) -> u8 {
    let mut result = 1u8;
    let mut base = x;
    let mut e = 254u32;
    while e != 0 {
        if e & 1 != 0 {
            result = gf_mul(result, base);
        }
        base = gf_mul(base, base);
        e >>= 1;
    }
    result
}

const fn build_sbox() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = gf_inv(i as u8);
        t[i] = b ^ b.rotate_left(1) ^ b.rotate_left(2) ^ b.rotate_left(3) ^ b.rotate_left(4) ^ 0x63;
        i += 1;
    }
    t
}

const fn invert(t: &[u8; 256]) -> [u8; 256] {
    let mut inv = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        inv[t[i] as usize] = i as u8;
        i += 1;
    }
    inv
}

/// The AES S-box: `SBOX[x]` is SubBytes of `x`.
pub const SBOX: [u8; 256] = build_sbox();
/// The inverse AES S-box: `INV_SBOX[SBOX[x]] == x`.
pub const INV_SBOX: [u8; 256] = invert(&SBOX);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_entries() {
        // FIPS-197 Figure 7.
        assert_eq!(SBOX[0x00], 0x63);
        assert_eq!(SBOX[0x01], 0x7c);
        assert_eq!(SBOX[0x53], 0xed);
        assert_eq!(SBOX[0xff], 0x16);
        assert_eq!(INV_SBOX[0x63], 0x00);
        assert_eq!(INV_SBOX[0x00], 0x52);
    }

    #[test]
    fn is_a_permutation() {
        for x in 0..=255u8 {
            assert_eq!(INV_SBOX[SBOX[x as usize] as usize], x);
            assert_eq!(SBOX[INV_SBOX[x as usize] as usize], x);
        }
    }
}
