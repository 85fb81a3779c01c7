//! Dispatch planning, pure arithmetic and so testable without a GPU: cuts byte regions of
//! a buffer into pieces that each lie in one bindable window, and computes each piece's
//! `LockParams` (see shaders/lock.wgsl) and workgroup count.

use std::collections::HashMap;
use std::ops::Range;

/// Invocations per workgroup: `WORKGROUP_SIZE` of shaders/lock.wgsl, a pipeline
/// constant set from this one.
pub(crate) const WORKGROUP_SIZE: u32 = 256;

/// The `LockParams` uniform of shaders/lock.wgsl (24 bytes in WGSL, padded here).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct LockParams {
    /// Keystream block (low, high words) of the first byte of the group holding `byte_lo`.
    pub first_block: [u32; 2],
    /// Position of that byte within its keystream block, 0..16.
    pub shift: u32,
    /// Window-relative start of the bytes to transform.
    pub byte_lo: u32,
    /// Window-relative end of the bytes to transform.
    pub byte_hi: u32,
    pub pad: [u32; 3],
}

/// The layout of [`LockParams`], for `gpu::layout_tests`: 32 bytes here, bound whole,
/// 24 in WGSL.
#[cfg(test)]
pub(crate) fn layouts() -> Vec<super::Layout> {
    use std::mem::offset_of;
    let mut layout = super::Layout::new::<LockParams>(
        "LockParams",
        &[
            ("first_block", offset_of!(LockParams, first_block)),
            ("shift", offset_of!(LockParams, shift)),
            ("byte_lo", offset_of!(LockParams, byte_lo)),
            ("byte_hi", offset_of!(LockParams, byte_hi)),
        ],
    );
    layout.padded = true;
    vec![layout]
}

/// Size of [`LockParams`] as bound.
pub(crate) const PARAMS_SIZE: u64 = std::mem::size_of::<LockParams>() as u64;

/// One dispatch: part of one region, inside one window.
#[derive(Debug)]
pub(crate) struct Piece {
    /// Index of the region (its key uniform).
    pub region: usize,
    /// Index into [`Plan::windows`].
    pub window: usize,
    pub params: LockParams,
    pub workgroups: u32,
}

/// The windows to bind and the dispatches to run, in region order.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Byte ranges of the buffer to bind as storage, each at most one window long.
    pub windows: Vec<Range<u64>>,
    pub pieces: Vec<Piece>,
}

/// Plans the regions `(byte range in the buffer, tensor offset of its first byte)` of a
/// buffer of `buffer_size` bytes (a multiple of 4). Windows sit on a grid of
/// `window_bytes` (a multiple of 16 and of the storage offset alignment, at most 2^31 so
/// window-relative byte offsets fit the kernel's u32s), so regions in one grid cell share
/// one window. At most `max_workgroups` workgroups per dispatch: the kernel's grid-stride
/// loop covers the rest. Empty regions get no dispatch.
pub(crate) fn plan(
    buffer_size: u64,
    window_bytes: u64,
    max_workgroups: u32,
    regions: impl IntoIterator<Item = (Range<u64>, u64)>,
) -> Plan {
    debug_assert!(
        buffer_size.is_multiple_of(4) && window_bytes.is_multiple_of(16) && window_bytes <= 1 << 31
    );
    let mut plan = Plan::default();
    let mut window_index: HashMap<u64, usize> = HashMap::new();
    for (region, (range, tensor_offset)) in regions.into_iter().enumerate() {
        let mut pos = range.start;
        while pos < range.end {
            let cell = pos / window_bytes;
            let base = cell * window_bytes;
            let window = *window_index.entry(cell).or_insert_with(|| {
                plan.windows
                    .push(base..buffer_size.min(base + window_bytes));
                plan.windows.len() - 1
            });
            let end = range.end.min(plan.windows[window].end);
            let (byte_lo, byte_hi) = (pos - base, end - base);
            // Tensor position of the first byte of the 16-byte group holding `pos`: it
            // precedes the tensor when the tensor starts mid-group, hence i128 and the
            // wrapping block index (the kernel masks those bytes out).
            let group_start = i128::from(tensor_offset) + i128::from(pos - range.start)
                - i128::from(byte_lo % 16);
            let block = group_start.div_euclid(16) as u64;
            let groups = byte_hi.div_ceil(16) - byte_lo / 16;
            plan.pieces.push(Piece {
                region,
                window,
                params: LockParams {
                    first_block: [block as u32, (block >> 32) as u32],
                    shift: group_start.rem_euclid(16) as u32,
                    byte_lo: byte_lo as u32,
                    byte_hi: byte_hi as u32,
                    pad: [0; 3],
                },
                workgroups: groups
                    .div_ceil(u64::from(WORKGROUP_SIZE))
                    .min(u64::from(max_workgroups)) as u32,
            });
            pos = end;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the kernel's index arithmetic on the CPU: every byte of every region must be
    /// covered exactly once, inside its window, with the keystream byte of its tensor
    /// position, and every dispatch must reach all its groups.
    fn check(buffer_size: u64, window: u64, max_wg: u32, regions: &[(Range<u64>, u64)]) {
        let plan = plan(buffer_size, window, max_wg, regions.iter().cloned());
        let mut covered = vec![0u8; buffer_size as usize];
        for p in &plan.pieces {
            let w = &plan.windows[p.window];
            assert_eq!(w.start % window, 0);
            assert!(w.end - w.start <= window && w.end <= buffer_size);
            let lp = p.params;
            assert!(u64::from(lp.byte_hi) <= w.end - w.start);
            let group0 = lp.byte_lo / 16;
            let groups = lp.byte_hi.div_ceil(16) - group0;
            assert!(p.workgroups >= 1 && p.workgroups <= max_wg);
            assert!(u64::from(p.workgroups) * u64::from(WORKGROUP_SIZE) < u64::from(groups) + 256);
            let first = u64::from(lp.first_block[0]) | (u64::from(lp.first_block[1]) << 32);
            let (range, t0) = &regions[p.region];
            for x in lp.byte_lo..lp.byte_hi {
                let abs = w.start + u64::from(x);
                assert!(range.contains(&abs));
                covered[abs as usize] += 1;
                let g = u64::from(x / 16 - group0);
                let k = u64::from(lp.shift + x % 16);
                let block = first.wrapping_add(g).wrapping_add(k / 16);
                let tensor_pos = t0 + (abs - range.start);
                assert_eq!(
                    (block, k % 16),
                    (tensor_pos / 16, tensor_pos % 16),
                    "byte {abs}"
                );
            }
        }
        for (range, _) in regions {
            for b in range.clone() {
                assert_eq!(covered[b as usize], 1, "byte {b}");
            }
        }
    }

    #[test]
    fn single_window() {
        check(64, 1 << 16, 4, &[(0..64, 0)]);
        check(
            64,
            1 << 16,
            4,
            &[(3..50, 7), (50..51, 0), (51..64, 1 << 36)],
        );
        check(1 << 12, 1 << 16, 65535, &[(0..4000, 0)]);
    }

    #[test]
    fn tensor_starting_mid_group_uses_wrapped_block() {
        let plan = plan(32, 1 << 16, 1, [(5..20, 0)]);
        assert_eq!(plan.pieces[0].params.first_block, [u32::MAX, u32::MAX]);
        assert_eq!(plan.pieces[0].params.shift, 11);
        check(32, 1 << 16, 1, &[(5..20, 0), (20..32, 3)]);
    }

    #[test]
    fn block_index_crosses_2_pow_32() {
        let t0 = (1u64 << 36) - 40;
        check(256, 64, 2, &[(1..255, t0), (0..1, (1 << 36) + 5)]);
    }

    #[test]
    fn windows_split_regions_and_are_shared() {
        let plan = plan(1000, 256, 8, [(10..20, 0), (30..600, 9), (600..1000, 3)]);
        assert_eq!(plan.windows, vec![0..256, 256..512, 512..768, 768..1000]);
        assert_eq!(plan.pieces.len(), 1 + 3 + 2);
        check(1000, 256, 8, &[(10..20, 0), (30..600, 9), (600..1000, 3)]);
    }

    #[test]
    fn empty_regions_dispatch_nothing() {
        assert!(plan(16, 16, 1, [(4..4, 0)]).pieces.is_empty());
    }

    #[test]
    fn workgroups_are_capped() {
        let plan = plan(1 << 24, 1 << 31, 100, [(0..1 << 24, 0)]);
        assert_eq!(plan.pieces[0].workgroups, 100);
    }
}
