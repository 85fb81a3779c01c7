//! [`Dtype`]: the element type of a tensor, as safetensors names it, parsed once from a
//! header's text and compared as a value from then on.

use std::fmt;

/// The element type of a safetensors tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[allow(non_camel_case_types)]
pub enum Dtype {
    /// Boolean, one byte.
    BOOL,
    /// 4-bit float (E2M1).
    F4,
    /// 6-bit float, E2M3.
    F6_E2M3,
    /// 6-bit float, E3M2.
    F6_E3M2,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float, E5M2.
    F8_E5M2,
    /// 8-bit float, E4M3.
    F8_E4M3,
    /// 8-bit exponent-only scale, E8M0.
    F8_E8M0,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the high half of an f32).
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE binary32.
    F32,
    /// Complex of two f32.
    C64,
    /// IEEE binary64.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    /// Every type, in the order of their sizes.
    pub const ALL: [Dtype; 20] = [
        Dtype::BOOL,
        Dtype::F4,
        Dtype::F6_E2M3,
        Dtype::F6_E3M2,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8_E5M2,
        Dtype::F8_E4M3,
        Dtype::F8_E8M0,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::C64,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// The type a header names `name` (`F32`, `BF16`, ...), if safetensors has it.
    pub fn parse(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The name safetensors writes: `F32`, `BF16`, `F8_E4M3`, ...
    pub fn name(self) -> &'static str {
        match self {
            Dtype::BOOL => "BOOL",
            Dtype::F4 => "F4",
            Dtype::F6_E2M3 => "F6_E2M3",
            Dtype::F6_E3M2 => "F6_E3M2",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8_E5M2 => "F8_E5M2",
            Dtype::F8_E4M3 => "F8_E4M3",
            Dtype::F8_E8M0 => "F8_E8M0",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::C64 => "C64",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Bits per element: 4 and 6 for the sub-byte floats, a multiple of 8 otherwise.
    pub fn bits(self) -> u32 {
        match self {
            Dtype::F4 => 4,
            Dtype::F6_E2M3 | Dtype::F6_E3M2 => 6,
            Dtype::BOOL | Dtype::U8 | Dtype::I8 => 8,
            Dtype::F8_E5M2 | Dtype::F8_E4M3 | Dtype::F8_E8M0 => 8,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 16,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 32,
            Dtype::C64 | Dtype::F64 | Dtype::I64 | Dtype::U64 => 64,
        }
    }

    /// Bytes per element; `None` for the sub-byte types (F4, F6_*), whose elements share
    /// bytes (see [`Dtype::bits`]).
    pub fn size(self) -> Option<u64> {
        let bits = self.bits();
        bits.is_multiple_of(8).then_some(u64::from(bits / 8))
    }

    /// The `safetensors` crate's value for the type (which names every `Dtype`).
    pub fn to_safetensors(self) -> safetensors::Dtype {
        serde_json::from_value(serde_json::Value::String(self.name().into()))
            .expect("the safetensors crate knows every Dtype by its name")
    }

    /// The `safetensors` crate's value for the type.
    pub fn from_safetensors(dtype: safetensors::Dtype) -> Option<Dtype> {
        Dtype::parse(&format!("{dtype:?}"))
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes_match_safetensors() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::parse(d.name()), Some(d));
            assert_eq!(d.to_string(), d.name());
            assert_eq!(Dtype::from_safetensors(d.to_safetensors()), Some(d));
            assert_eq!(u64::from(d.bits()), d.to_safetensors().bitsize() as u64);
        }
        assert_eq!(
            Dtype::parse("f32"),
            None,
            "names are case-sensitive, as in headers"
        );
        assert_eq!(Dtype::parse("F128"), None);
        use safetensors::Dtype as S;
        for s in [
            S::BOOL,
            S::F4,
            S::F6_E2M3,
            S::F6_E3M2,
            S::U8,
            S::I8,
            S::F8_E5M2,
            S::F8_E4M3,
            S::F8_E8M0,
            S::I16,
            S::U16,
            S::F16,
            S::BF16,
            S::I32,
            S::U32,
            S::F32,
            S::C64,
            S::F64,
            S::I64,
            S::U64,
        ] {
            let d = Dtype::from_safetensors(s).unwrap();
            assert_eq!(d.bits() as usize, s.bitsize(), "{d}");
        }
        assert_eq!(Dtype::F32.size(), Some(4));
        assert_eq!(Dtype::BF16.size(), Some(2));
        assert_eq!(Dtype::BOOL.size(), Some(1));
        assert_eq!(Dtype::F4.size(), None);
    }
}
