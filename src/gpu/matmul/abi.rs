//! The Rust twins of the matmul shaders' uniform structs (`matmul_common.wgsl`), and the
//! arithmetic that fills them from a convolution's input. Their layout is checked
//! against the compiled WGSL in `gpu::layout_tests`.

use super::types::{ConvInput, MatmulShape};
use crate::error::{Error, Result};

/// `ConvView` of `matmul_common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ConvParams {
    pub(crate) image: u32,
    pub(crate) h: u32,
    pub(crate) w: u32,
    pub(crate) c: u32,
    pub(crate) oh: u32,
    pub(crate) ow: u32,
    pub(crate) kh: u32,
    pub(crate) kw: u32,
    pub(crate) pad_h: u32,
    pub(crate) pad_w: u32,
    pub(crate) pad: [u32; 2],
}

/// `Operand` of `matmul_common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct OperandParams {
    pub(crate) first_block: [u32; 2],
    pub(crate) nonce: [u32; 2],
    pub(crate) word_base: u32,
    pub(crate) word_lo: u32,
    pub(crate) word_hi: u32,
    pub(crate) shift: u32,
    pub(crate) dtype: u32,
    pub(crate) locked: u32,
    pub(crate) pad: [u32; 2],
}

/// `MatmulParams` of `matmul_common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MatmulParams {
    pub(crate) m: u32,
    pub(crate) n: u32,
    pub(crate) k: u32,
    pub(crate) has_bias: u32,
    pub(crate) splits: u32,
    pub(crate) slices_per_split: u32,
    pub(crate) pad: [u32; 2],
    pub(crate) w: OperandParams,
    pub(crate) bias: OperandParams,
    pub(crate) conv: ConvParams,
}

pub(crate) const PARAMS_SIZE: u64 = std::mem::size_of::<MatmulParams>() as u64;

/// The kernel parameters of a convolution of `input` as the product `shape`, and the
/// number of input elements it reads; errors if they do not agree.
pub(crate) fn conv_params(input: &ConvInput, shape: MatmulShape) -> Result<(u64, ConvParams)> {
    let ConvInput {
        height,
        width,
        channels,
        kernel: [kh, kw],
        pad: [pad_h, pad_w],
    } = *input;
    let Some((oh, ow)) = input.output().filter(|_| height > 0 && width > 0) else {
        return Err(Error::Invalid(format!(
            "a {kh}x{kw} convolution with padding {pad_h}x{pad_w} has no output on a {height}x{width} input; check the kernel and padding"
        )));
    };
    let taps = u64::from(channels) * u64::from(kh) * u64::from(kw);
    if taps != u64::from(shape.k) {
        return Err(Error::Invalid(format!(
            "a convolution of {channels} channels with a {kh}x{kw} kernel has k = {taps}, not {}; set k = channels * kh * kw",
            shape.k
        )));
    }
    let positions = u64::from(oh) * u64::from(ow);
    if !u64::from(shape.m).is_multiple_of(positions) {
        return Err(Error::Invalid(format!(
            "a convolution with a {oh}x{ow} output has m = batch * {positions}, not {}",
            shape.m
        )));
    }
    let batch = u64::from(shape.m) / positions;
    let elements = batch * u64::from(height) * u64::from(width) * u64::from(channels);
    let params = ConvParams {
        image: 1,
        h: height,
        w: width,
        c: channels,
        oh,
        ow,
        kh,
        kw,
        pad_h,
        pad_w,
        pad: [0; 2],
    };
    Ok((elements, params))
}

/// The layouts of the uniform structs, for `gpu::layout_tests`.
#[cfg(test)]
pub(crate) fn layouts() -> Vec<crate::gpu::Layout> {
    use std::mem::offset_of;

    use crate::gpu::Layout;
    vec![
        Layout::new::<OperandParams>(
            "Operand",
            &[
                ("first_block", offset_of!(OperandParams, first_block)),
                ("nonce", offset_of!(OperandParams, nonce)),
                ("word_base", offset_of!(OperandParams, word_base)),
                ("word_lo", offset_of!(OperandParams, word_lo)),
                ("word_hi", offset_of!(OperandParams, word_hi)),
                ("shift", offset_of!(OperandParams, shift)),
                ("dtype", offset_of!(OperandParams, dtype)),
                ("locked", offset_of!(OperandParams, locked)),
                ("pad0", offset_of!(OperandParams, pad)),
                ("pad1", offset_of!(OperandParams, pad) + 4),
            ],
        ),
        Layout::new::<ConvParams>(
            "ConvView",
            &[
                ("image", offset_of!(ConvParams, image)),
                ("h", offset_of!(ConvParams, h)),
                ("w", offset_of!(ConvParams, w)),
                ("c", offset_of!(ConvParams, c)),
                ("oh", offset_of!(ConvParams, oh)),
                ("ow", offset_of!(ConvParams, ow)),
                ("kh", offset_of!(ConvParams, kh)),
                ("kw", offset_of!(ConvParams, kw)),
                ("pad_h", offset_of!(ConvParams, pad_h)),
                ("pad_w", offset_of!(ConvParams, pad_w)),
                ("pad0", offset_of!(ConvParams, pad)),
                ("pad1", offset_of!(ConvParams, pad) + 4),
            ],
        ),
        Layout::new::<MatmulParams>(
            "MatmulParams",
            &[
                ("m", offset_of!(MatmulParams, m)),
                ("n", offset_of!(MatmulParams, n)),
                ("k", offset_of!(MatmulParams, k)),
                ("has_bias", offset_of!(MatmulParams, has_bias)),
                ("splits", offset_of!(MatmulParams, splits)),
                (
                    "slices_per_split",
                    offset_of!(MatmulParams, slices_per_split),
                ),
                ("pad0", offset_of!(MatmulParams, pad)),
                ("pad1", offset_of!(MatmulParams, pad) + 4),
                ("w", offset_of!(MatmulParams, w)),
                ("bias", offset_of!(MatmulParams, bias)),
                ("conv", offset_of!(MatmulParams, conv)),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host structs must match the WGSL uniform layout (Operand: 48 bytes, placed
    /// at 32 and 80, after the dimensions and the split-K fields; ConvView, 48 bytes, last).
    #[test]
    fn params_have_the_wgsl_layout() {
        assert_eq!(std::mem::size_of::<OperandParams>(), 48);
        assert_eq!(std::mem::size_of::<ConvParams>(), 48);
        assert_eq!(PARAMS_SIZE, 176);
        assert_eq!(std::mem::offset_of!(MatmulParams, conv), 128);
        assert_eq!(std::mem::offset_of!(MatmulParams, splits), 16);
        assert_eq!(std::mem::offset_of!(MatmulParams, w), 32);
        assert_eq!(std::mem::offset_of!(MatmulParams, bias), 80);
    }
}
