//! The crate's one random generator for things that must be reproducible, never secret:
//! the demo's and the benchmarks' weights, test data. Keys and salts come from the
//! operating system ([`crate::MasterKey::generate`], [`crate::Salt::generate`]).

/// A small deterministic generator (SplitMix64): reproducible weights without a
/// dependency, not for anything secret.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn next_signed_unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}
