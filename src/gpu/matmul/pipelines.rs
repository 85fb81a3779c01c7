//! The matmul's pipeline cache: the two shader modules (GEMM and GEMV, each after
//! `aes_ctr.wgsl` and `matmul_common.wgsl`) and one pipeline per kernel variant, weight
//! dtype and locked or plain, compiled on first use and kept.

use std::sync::OnceLock;

use super::super::{aes, AES_CTR_WGSL, MATMUL_COMMON_WGSL, MATMUL_GEMM_WGSL, MATMUL_GEMV_WGSL};
#[cfg(doc)]
use super::plan::GEMV_BATCH;
use super::plan::{Variant, GEMM_TILE_N, GEMV_ROWS, THREADS};
use super::types::{dtype_code, MATMUL_DTYPES};
use crate::dtype::Dtype;

/// Pipelines of the matmul kernels: one per variant, W type and locked or plain.
const PIPELINES: usize = Variant::ALL.len() * MATMUL_DTYPES.len() * 2;

/// The pipelines of one device.
pub(super) struct Pipelines {
    device: wgpu::Device,
    layout: wgpu::PipelineLayout,
    gemm_module: wgpu::ShaderModule,
    gemv_module: wgpu::ShaderModule,
    /// Indexed by [`Pipelines::index`]: variant, dtype, locked.
    pipelines: [OnceLock<wgpu::ComputePipeline>; PIPELINES],
    /// Split-K's summing kernel.
    reduce: OnceLock<wgpu::ComputePipeline>,
}

/// The numbers the matmul shaders take from Rust as pipeline constants (WGSL
/// `override`s without defaults), so that each has one source. (The register array
/// bounds `GEMV_BATCH_MAX` and `TM_MAX` must be WGSL `const`s; `gpu::layout_tests`
/// checks them against [`GEMV_BATCH`] and the largest `TM`.)
pub(crate) fn shared_constants() -> [(&'static str, f64); 4] {
    [
        ("THREADS", f64::from(THREADS)),
        ("TILE_N", f64::from(GEMM_TILE_N)),
        ("GEMV_ROWS", f64::from(GEMV_ROWS)),
        ("GEMV_LANES", f64::from(THREADS / GEMV_ROWS)),
    ]
}

impl Pipelines {
    /// Parses the kernels on `device`; `layout` is the matmul's pipeline layout.
    pub(super) fn new(device: &wgpu::Device, layout: wgpu::PipelineLayout) -> Self {
        let module = |label, kernel| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(
                    format!("{AES_CTR_WGSL}\n{MATMUL_COMMON_WGSL}\n{kernel}").into(),
                ),
            })
        };
        Pipelines {
            device: device.clone(),
            layout,
            gemm_module: module(
                "deeplock aes_ctr + matmul_common + matmul_gemm.wgsl",
                MATMUL_GEMM_WGSL,
            ),
            gemv_module: module(
                "deeplock aes_ctr + matmul_common + matmul_gemv.wgsl",
                MATMUL_GEMV_WGSL,
            ),
            pipelines: std::array::from_fn(|_| OnceLock::new()),
            reduce: OnceLock::new(),
        }
    }

    /// The slot of `variant`'s pipeline for W of the type whose `DTYPE_*` code is
    /// `dtype_code`, locked or not.
    pub(super) fn index(variant: Variant, dtype_code: u32, locked: bool) -> usize {
        let v = Variant::ALL
            .iter()
            .position(|&v| v == variant)
            .expect("a variant");
        2 * (MATMUL_DTYPES.len() * v + dtype_code as usize) + usize::from(locked)
    }

    fn compile(
        &self,
        label: &str,
        module: &wgpu::ShaderModule,
        entry_point: &str,
        constants: &[(&str, f64)],
    ) -> wgpu::ComputePipeline {
        self.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&self.layout),
                module,
                entry_point: Some(entry_point),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    // No output depends on workgroup memory not written first (the
                    // GEMM's tile rows past N feed only outputs past N, never
                    // stored): zeroing it would be wasted work.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
    }

    /// Split-K's summing kernel.
    pub(super) fn reduce(&self) -> &wgpu::ComputePipeline {
        self.reduce.get_or_init(|| {
            // The module's pipeline constants; this entry point reads none of the first.
            let mut constants = vec![
                ("LOCKED", 0.0),
                ("DTYPE", 0.0),
                ("TM", 4.0),
                aes::copies_constant(1),
            ];
            constants.extend(Self::module_constants(Variant::Gemm { tm: 4 }));
            self.compile(
                "deeplock matmul split-K reduce",
                &self.gemm_module,
                "gemm_reduce_main",
                &constants,
            )
        })
    }

    /// The shared constants `variant`'s module declares.
    pub(crate) fn module_constants(variant: Variant) -> Vec<(&'static str, f64)> {
        let names: &[&str] = match variant {
            Variant::Gemv { .. } => &["THREADS", "GEMV_ROWS", "GEMV_LANES"],
            Variant::Gemm { .. } => &["THREADS", "TILE_N"],
        };
        shared_constants()
            .into_iter()
            .filter(|(name, _)| names.contains(name))
            .collect()
    }

    /// The pipeline of `variant` for W of `dtype` (one of [`MATMUL_DTYPES`]: operands are
    /// checked when bound, before a pass is recorded), locked or not, on a device with
    /// `limit` bytes of workgroup memory.
    pub(super) fn get(
        &self,
        variant: Variant,
        dtype: Dtype,
        locked: bool,
        limit: u32,
    ) -> &wgpu::ComputePipeline {
        let code = dtype_code(dtype).expect("operand types are checked when bound");
        self.pipelines[Self::index(variant, code, locked)].get_or_init(|| {
            let (module, entry_point) = match variant {
                Variant::Gemv { .. } => (&self.gemv_module, "gemv_main"),
                Variant::Gemm { .. } => (&self.gemm_module, "gemm_main"),
            };
            let label = format!(
                "deeplock matmul {}{} {} {}",
                variant.kernel().name(),
                variant.tile_rows(),
                dtype.name(),
                if locked { "locked" } else { "plain" }
            );
            let mut constants = vec![
                ("LOCKED", if locked { 1.0 } else { 0.0 }),
                ("DTYPE", f64::from(code)),
                aes::copies_constant(variant.table_copies(locked, limit)),
            ];
            match variant {
                Variant::Gemv { rows } => constants.push(("GEMV_BATCH", f64::from(rows))),
                Variant::Gemm { tm } => {
                    constants.push(("TM", f64::from(tm)));
                    constants.push(("TILE_K", f64::from(variant.tile_k())));
                }
            }
            constants.extend(Self::module_constants(variant));
            self.compile(&label, module, entry_point, &constants)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_indices_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for variant in Variant::ALL {
            for dtype in MATMUL_DTYPES {
                let code = dtype_code(dtype).unwrap();
                for locked in [false, true] {
                    assert!(seen.insert(Pipelines::index(variant, code, locked)));
                }
            }
        }
        assert!(seen.iter().all(|&i| i < 30));
        assert_eq!(PIPELINES, 30);
    }
}
