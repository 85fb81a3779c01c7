//! The matmul's dispatch policy, pure arithmetic and so testable without a GPU: which
//! kernel variant runs a product (GEMV, or GEMM tiles of 64, 128 or 256 rows, as the
//! device's workgroup memory allows), its grid, how far split-K cuts K, the reduce
//! dispatch and the scratch it needs. [`plan`] takes a shape, the kernel asked for and a
//! device's limits; [`super::FusedMatmul`] records what it returns.

use super::aes;
use super::types::{Kernel, MatmulShape};
use crate::error::{Error, Result};

/// Output columns of one GEMM workgroup (`TILE_N` in `matmul_gemm.wgsl`).
pub(crate) const GEMM_TILE_N: u32 = 64;
/// Outputs per GEMV workgroup (`matmul_gemv.wgsl`).
pub(crate) const GEMV_ROWS: u32 = 4;
/// Batch rows per workgroup of the small-batch GEMV, each W block decoded once for all
/// of them (`GEMV_BATCH` in `matmul_gemv.wgsl`; batch 1 has a GEMV of its own, with the
/// loops over rows compiled away); `Kernel::Auto` takes the GEMV up to this batch.
pub(crate) const GEMV_BATCH: u32 = 8;
/// Invocations per workgroup, both kernels.
pub(crate) const THREADS: u32 = 256;
/// Split-K aims at this many GEMM workgroups: several per compute unit on the largest
/// GPUs (an H100 has 132), so that a skinny product (batch 64 against a 4096 x 4096
/// weight: 64 output tiles) still fills the device.
pub(crate) const TARGET_WORKGROUPS: u32 = 512;
/// Fewest TILE_K slices of K per split: below this the extra partial sums and the
/// per-workgroup setup (tables, bias) cost more than the parallelism brings.
pub(crate) const MIN_SLICES_PER_SPLIT: u32 = 4;
/// Headroom kept below 2^32 for the kernels' u32 byte arithmetic, which runs a few
/// blocks past an operand's last byte before its loop bounds stop it.
pub(super) const U32_HEADROOM: u64 = 1 << 16;

/// A compiled kernel: the GEMV with `rows` batch rows per workgroup (1 or
/// [`GEMV_BATCH`]), or the GEMM with `tm` batch rows per invocation (`TM`: tiles of
/// 16 * tm rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    /// The GEMV, `rows` batch rows per workgroup.
    Gemv { rows: u32 },
    /// The GEMM, `tm` batch rows per invocation.
    Gemm { tm: u32 },
}

impl Variant {
    pub(crate) const ALL: [Variant; 5] = [
        Variant::Gemv { rows: 1 },
        Variant::Gemv { rows: GEMV_BATCH },
        Variant::Gemm { tm: 4 },
        Variant::Gemm { tm: 8 },
        Variant::Gemm { tm: 16 },
    ];

    /// Elements of K per slice (`TILE_K` in `matmul_gemm.wgsl`): 32, or 16 for the
    /// 256-row tiles so that their slices fit 32 KiB. 0 for the GEMV, which has none.
    pub(crate) fn tile_k(self) -> u32 {
        match self {
            Variant::Gemv { .. } => 0,
            Variant::Gemm { tm } if tm > 8 => 16,
            Variant::Gemm { .. } => 32,
        }
    }

    /// Workgroup memory the kernel's own tiles take, in bytes (the AES tables come on top).
    pub(crate) fn tile_bytes(self) -> u32 {
        let words = match self {
            Variant::Gemv { .. } => THREADS,
            // x_tile and w_tile (rows padded by a word), bias_tile.
            Variant::Gemm { tm } => self.tile_k() * (16 * tm + 1 + GEMM_TILE_N + 1) + GEMM_TILE_N,
        };
        4 * words
    }

    /// Copies of the AES tables the kernel keeps on a device with `limit` bytes of
    /// workgroup memory: as many as fit beside its tiles when it decodes W, one when it
    /// does not (the plain kernel then loses no occupancy to tables it never reads, and
    /// one copy is enough for a locked bias, decoded once per column).
    pub(crate) fn table_copies(self, locked: bool, limit: u32) -> u32 {
        if locked {
            aes::table_copies(limit.saturating_sub(self.tile_bytes()))
        } else {
            1
        }
    }

    /// Workgroups of a dispatch over `shape` before any split of K: (columns, rows).
    pub(crate) fn grid(self, shape: MatmulShape) -> (u32, u32) {
        match self {
            Variant::Gemv { rows } => (shape.n.div_ceil(GEMV_ROWS), shape.m.div_ceil(rows)),
            Variant::Gemm { .. } => (
                shape.n.div_ceil(GEMM_TILE_N),
                shape.m.div_ceil(self.tile_rows()),
            ),
        }
    }

    /// Batch rows one workgroup covers.
    pub(crate) fn tile_rows(self) -> u32 {
        match self {
            Variant::Gemv { rows } => rows,
            Variant::Gemm { tm } => 16 * tm,
        }
    }

    pub(crate) fn kernel(self) -> Kernel {
        match self {
            Variant::Gemv { .. } => Kernel::Gemv,
            Variant::Gemm { .. } => Kernel::Gemm,
        }
    }
}

/// What the planner needs to know of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeviceLimits {
    /// Workgroup memory, bytes.
    pub workgroup_storage: u32,
    /// Workgroups per dispatch dimension.
    pub max_workgroups: u32,
    /// Largest storage binding, bytes.
    pub max_binding: u64,
    /// Largest buffer, bytes.
    pub max_buffer: u64,
}

impl DeviceLimits {
    /// The limits of a device.
    pub(crate) fn of(limits: &wgpu::Limits) -> Self {
        DeviceLimits {
            workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_workgroups: limits.max_compute_workgroups_per_dimension,
            max_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
        }
    }
}

/// How one product runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dispatch {
    /// The kernel variant.
    pub variant: Variant,
    /// Workgroups of the product: columns, rows, K ranges.
    pub workgroups: [u32; 3],
    /// TILE_K slices per K range (0 for the GEMV).
    pub slices_per_split: u32,
    /// Workgroups of the split-K reduce dispatch, when K is split.
    pub reduce: Option<[u32; 2]>,
    /// Bytes of split-K scratch the dispatch binds (4 when K is not split: something
    /// must be bound).
    pub scratch_bytes: u64,
}

impl Dispatch {
    /// Ranges K is split into (1: not split).
    pub(crate) fn splits(&self) -> u32 {
        self.workgroups[2]
    }
}

/// The variant for `kernel` at batch `m` that fits `limit` bytes of workgroup memory:
/// the GEMM takes 256-row tiles above batch 128 and 128-row ones above batch 64 where
/// they (20.4 and 24.5 KiB) and one copy of the AES tables fit, else 64-row ones
/// (16.5 KiB); more table copies take whatever memory is left.
pub(crate) fn variant(kernel: Kernel, m: u32, limit: u32) -> Result<Variant> {
    let least = |v: Variant| v.tile_bytes() + aes::workgroup_table_bytes(1);
    let fits = |v: Variant| least(v) <= limit;
    let variant = match kernel.resolve(m) {
        Kernel::Gemv if m == 1 => Variant::Gemv { rows: 1 },
        Kernel::Gemv => Variant::Gemv { rows: GEMV_BATCH },
        _ if m > 128 && fits(Variant::Gemm { tm: 16 }) => Variant::Gemm { tm: 16 },
        _ if m > 64 && fits(Variant::Gemm { tm: 8 }) => Variant::Gemm { tm: 8 },
        _ => Variant::Gemm { tm: 4 },
    };
    if !fits(variant) {
        return Err(Error::Gpu(format!(
            "the {} kernel needs {} bytes of workgroup memory; this device was opened with {limit} (open it with the adapter's limits, as GpuContext::new does)",
            variant.kernel().name(),
            least(variant)
        )));
    }
    Ok(variant)
}

/// How many ranges `variant` splits K into for `shape` (`forced`, or by
/// [`TARGET_WORKGROUPS`]), and the TILE_K slices per range, so that no range is empty
/// and the partial sums fit one storage binding. The GEMV never splits.
pub(crate) fn k_split(
    variant: Variant,
    shape: MatmulShape,
    limits: &DeviceLimits,
    forced: Option<u32>,
) -> (u32, u32) {
    if variant.kernel() == Kernel::Gemv {
        return (1, 0);
    }
    let (columns, rows) = variant.grid(shape);
    let tiles = columns.saturating_mul(rows);
    let slices = shape.k.div_ceil(variant.tile_k());
    let wanted = forced.unwrap_or_else(|| {
        TARGET_WORKGROUPS
            .div_ceil(tiles)
            .min(slices / MIN_SLICES_PER_SPLIT)
    });
    let outputs = 4 * u64::from(shape.m) * u64::from(shape.n);
    let fit =
        (limits.max_binding.min(limits.max_buffer) / outputs).min(u64::from(limits.max_workgroups));
    let splits = u64::from(wanted.clamp(1, slices)).min(fit).max(1) as u32;
    let per = slices.div_ceil(splits);
    (slices.div_ceil(per), per)
}

/// Plans the product `shape` with `kernel` (a convolution if `conv`: the GEMM only) on a
/// device of `limits`, K split into `forced_splits` ranges if given. Errors for empty
/// shapes, the GEMV asked for a convolution, grids the device cannot dispatch and
/// tiles that do not fit its workgroup memory.
pub(crate) fn plan(
    shape: MatmulShape,
    kernel: Kernel,
    conv: bool,
    limits: &DeviceLimits,
    forced_splits: Option<u32>,
) -> Result<Dispatch> {
    let MatmulShape { m, n, k } = shape;
    if m == 0 || n == 0 || k == 0 {
        return Err(Error::Invalid(format!(
            "matmul dimensions must be at least 1, not m={m} n={n} k={k}"
        )));
    }
    let kernel = match (conv, kernel) {
        (false, kernel) => kernel,
        (true, Kernel::Gemv) => {
            return Err(Error::Invalid(
                "convolutions run on the GEMM; use Kernel::Gemm or Kernel::Auto".into(),
            ))
        }
        (true, _) => Kernel::Gemm,
    };
    let variant = variant(kernel, m, limits.workgroup_storage)?;
    let (columns, rows) = variant.grid(shape);
    let max_wg = limits.max_workgroups;
    if columns > max_wg || rows > max_wg {
        return Err(Error::Invalid(format!(
            "a {} of m={m} n={n} needs {columns}x{rows} workgroups; this device allows {max_wg} per dimension",
            variant.kernel().name(),
        )));
    }
    let (splits, slices_per_split) = k_split(variant, shape, limits, forced_splits);
    let outputs = u64::from(m) * u64::from(n);
    let reduce = (splits > 1).then(|| {
        let groups = outputs.div_ceil(u64::from(THREADS));
        let x = groups.min(u64::from(max_wg));
        [x as u32, groups.div_ceil(x) as u32]
    });
    Ok(Dispatch {
        variant,
        workgroups: [columns, rows, splits],
        slices_per_split,
        reduce,
        scratch_bytes: if splits > 1 {
            4 * outputs * u64::from(splits)
        } else {
            4
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_gemv_up_to_one_gemv_workgroup_row() {
        assert_eq!(Kernel::Auto.resolve(1), Kernel::Gemv);
        assert_eq!(Kernel::Auto.resolve(GEMV_BATCH), Kernel::Gemv);
        assert_eq!(Kernel::Auto.resolve(GEMV_BATCH + 1), Kernel::Gemm);
        assert_eq!(Kernel::Gemv.resolve(9), Kernel::Gemv);
        assert_eq!(Kernel::Gemm.resolve(1), Kernel::Gemm);
    }

    /// The sizes `matmul_gemm.wgsl` and `aes_ctr.wgsl` declare: the tiles (16.5, 24.5 and
    /// 20.4 KiB for the GEMM, 1 KiB for the GEMV), plus 1.25 KiB per copy of the tables,
    /// as many copies as fit in 32 KiB (lavapipe, Apple) or 48 KiB (NVIDIA, AMD) when W is
    /// locked.
    #[test]
    fn workgroup_memory() {
        let gemm4 = Variant::Gemm { tm: 4 };
        let gemm8 = Variant::Gemm { tm: 8 };
        let gemm16 = Variant::Gemm { tm: 16 };
        assert_eq!(Variant::Gemv { rows: 1 }.tile_bytes(), 1024);
        assert_eq!(gemm16.tile_bytes(), 20864);
        assert_eq!(gemm4.tile_bytes(), 16896);
        assert_eq!(gemm8.tile_bytes(), 25088);
        let small = 32 << 10;
        assert_eq!(Variant::Gemv { rows: 1 }.table_copies(true, small), 16);
        assert_eq!(gemm4.table_copies(true, small), 8);
        assert_eq!(gemm8.table_copies(true, small), 4);
        assert_eq!(gemm16.table_copies(true, small), 8);
        assert_eq!(gemm8.table_copies(false, small), 1);
        assert_eq!(gemm8.table_copies(true, 48 << 10), 16);
        for v in Variant::ALL {
            for limit in [small, 48 << 10] {
                for locked in [false, true] {
                    let tables = aes::workgroup_table_bytes(v.table_copies(locked, limit));
                    assert!(v.tile_bytes() + tables <= limit, "{v:?} {limit}");
                }
            }
        }
    }

    /// lavapipe's limits (32 KiB of workgroup memory, 128 MiB bindings).
    const LAVAPIPE: DeviceLimits = DeviceLimits {
        workgroup_storage: 32 << 10,
        max_workgroups: 65_535,
        max_binding: 128 << 20,
        max_buffer: 1 << 30,
    };

    fn shape(m: u32, n: u32, k: u32) -> MatmulShape {
        MatmulShape { m, n, k }
    }

    #[test]
    fn plans_the_paper_and_benchmark_products() {
        // Batch 1: the GEMV of its own, no split, no scratch.
        let d = plan(shape(1, 512, 2304), Kernel::Auto, false, &LAVAPIPE, None).unwrap();
        assert_eq!(d.variant, Variant::Gemv { rows: 1 });
        assert_eq!(d.workgroups, [128, 1, 1]);
        assert_eq!((d.reduce, d.scratch_bytes), (None, 4));
        // Batch 4: the small-batch GEMV.
        let d = plan(shape(4, 1024, 1024), Kernel::Auto, false, &LAVAPIPE, None).unwrap();
        assert_eq!(d.variant, Variant::Gemv { rows: GEMV_BATCH });
        assert_eq!(d.workgroups, [256, 1, 1]);
        // Batch 64 against 2304 -> 512 (CIFAR-10 fc1): 8 tiles, split K 18 ways
        // (72 slices of 32, at least 4 per range) toward 512 workgroups.
        let d = plan(shape(64, 512, 2304), Kernel::Auto, false, &LAVAPIPE, None).unwrap();
        assert_eq!(d.variant, Variant::Gemm { tm: 4 });
        assert_eq!(d.workgroups, [8, 1, 18]);
        assert_eq!(d.slices_per_split, 4);
        assert_eq!(d.reduce, Some([128, 1]));
        assert_eq!(d.scratch_bytes, 4 * 64 * 512 * 18);
        // Batch 64 against 4096 x 4096: 64 tiles, split toward 512 workgroups (8 ranges
        // of 16 slices), well short of the 4-slice floor.
        let d = plan(shape(64, 4096, 4096), Kernel::Auto, false, &LAVAPIPE, None).unwrap();
        assert_eq!(d.workgroups, [64, 1, 8]);
        assert_eq!(d.slices_per_split, 16);
        // 512 x 512 x 512: 256-row tiles of 16-element slices, split 8 ways.
        let d = plan(shape(512, 512, 512), Kernel::Auto, false, &LAVAPIPE, None).unwrap();
        assert_eq!(d.variant, Variant::Gemm { tm: 16 });
        assert_eq!(d.workgroups, [8, 2, 8]);
        assert_eq!(d.slices_per_split, 4);
        // Batch 100: 128-row tiles.
        let d = plan(shape(100, 64, 64), Kernel::Gemm, false, &LAVAPIPE, None).unwrap();
        assert_eq!(d.variant, Variant::Gemm { tm: 8 });
        assert_eq!(d.workgroups, [1, 1, 1]);
        // A convolution (Fashion-MNIST conv2 at batch 2) runs on the GEMM even at Auto.
        let d = plan(shape(128, 32, 400), Kernel::Auto, true, &LAVAPIPE, None).unwrap();
        assert_eq!(d.variant, Variant::Gemm { tm: 8 });
        assert_eq!(d.workgroups, [1, 1, 3]);
    }

    #[test]
    fn forced_splits_are_clamped_to_whole_ranges() {
        let s = shape(9, 64, 100); // 4 slices of 32
        let split = |forced| {
            let d = plan(s, Kernel::Gemm, false, &LAVAPIPE, Some(forced)).unwrap();
            (d.splits(), d.slices_per_split)
        };
        assert_eq!(split(1), (1, 4));
        assert_eq!(split(2), (2, 2));
        assert_eq!(
            split(3),
            (2, 2),
            "3 ranges of 4 slices leave none empty only as 2"
        );
        assert_eq!(split(100), (4, 1));
        // The GEMV never splits.
        let d = plan(s, Kernel::Gemv, false, &LAVAPIPE, Some(4)).unwrap();
        assert_eq!((d.splits(), d.slices_per_split), (1, 0));
    }

    #[test]
    fn refuses_what_the_device_cannot_run() {
        let e = |s, kernel, conv, limits: &DeviceLimits| {
            plan(s, kernel, conv, limits, None).unwrap_err().to_string()
        };
        assert!(e(shape(0, 1, 1), Kernel::Auto, false, &LAVAPIPE).contains("at least 1"));
        assert!(e(shape(4, 8, 9), Kernel::Gemv, true, &LAVAPIPE).contains("GEMM"));
        let few = DeviceLimits {
            max_workgroups: 4,
            ..LAVAPIPE
        };
        assert!(e(shape(1, 64, 8), Kernel::Gemv, false, &few).contains("16x1 workgroups"));
        let small = DeviceLimits {
            workgroup_storage: 16 << 10,
            ..LAVAPIPE
        };
        assert!(e(shape(64, 64, 64), Kernel::Gemm, false, &small).contains("workgroup memory"));
        // Where 256-row tiles do not fit, 64-row ones do.
        let mid = DeviceLimits {
            workgroup_storage: 20 << 10,
            ..LAVAPIPE
        };
        let d = plan(shape(512, 64, 64), Kernel::Gemm, false, &mid, None).unwrap();
        assert_eq!(d.variant, Variant::Gemm { tm: 4 });
    }
}
