//! One check of everything Rust and WGSL share, on the compiled WGSL (reflected with
//! naga, the compiler wgpu runs): the size and member offsets of every uniform struct
//! the host mirrors, that every number the shaders take from the host is a pipeline
//! constant without a default (so it can only come from the host), and the few numbers
//! that must stay WGSL `const`s (register array bounds, element type codes) against
//! their host twins.
//! (The bench's copy kernel, `shaders/copy.wgsl`, is checked here too.)

use naga::{Expression, Literal, Module, TypeInner};

use super::matmul::plan::{Variant, GEMV_BATCH};
use super::matmul::{dtype_code, MATMUL_DTYPES};
use super::{AES_CTR_WGSL, LOCK_WGSL, MATMUL_COMMON_WGSL, MATMUL_GEMM_WGSL, MATMUL_GEMV_WGSL};

fn parse(what: &str, source: &str) -> Module {
    naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The struct `name` of `module`: its members (name, offset) and its size.
fn wgsl_struct(module: &Module, name: &str) -> Option<(Vec<(String, usize)>, usize)> {
    module.types.iter().find_map(|(_, ty)| match &ty.inner {
        TypeInner::Struct { members, span } if ty.name.as_deref() == Some(name) => Some((
            members
                .iter()
                .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
                .collect(),
            *span as usize,
        )),
        _ => None,
    })
}

/// The names of `module`'s overrides without a default.
fn required_overrides(module: &Module) -> Vec<String> {
    module
        .overrides
        .iter()
        .filter(|(_, o)| o.init.is_none())
        .filter_map(|(_, o)| o.name.clone())
        .collect()
}

/// The value of `module`'s u32 `const` `name`.
fn const_u32(module: &Module, name: &str) -> u32 {
    let (_, c) = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no const {name}"));
    match module.global_expressions[c.init] {
        Expression::Literal(Literal::U32(v)) => v,
        ref e => panic!("const {name} is {e:?}"),
    }
}

#[test]
fn rust_and_wgsl_share_one_layout_and_one_source_for_each_number() {
    let lock = parse("lock", &format!("{AES_CTR_WGSL}\n{LOCK_WGSL}"));
    let gemm = parse(
        "gemm",
        &format!("{AES_CTR_WGSL}\n{MATMUL_COMMON_WGSL}\n{MATMUL_GEMM_WGSL}"),
    );
    let gemv = parse(
        "gemv",
        &format!("{AES_CTR_WGSL}\n{MATMUL_COMMON_WGSL}\n{MATMUL_GEMV_WGSL}"),
    );
    let infer: Vec<Module> = crate::infer::gpu_sources()
        .iter()
        .map(|s| parse("infer", s))
        .collect();

    // Every uniform struct the host mirrors, in the module(s) that declare it.
    let layouts = [
        (super::aes::layouts(), vec![&lock, &gemm, &gemv]),
        (super::plan::layouts(), vec![&lock]),
        (super::matmul::layouts(), vec![&gemm, &gemv]),
        (crate::infer::gpu_layouts(), infer.iter().collect()),
    ];
    let mut checked = 0;
    for (list, modules) in &layouts {
        for layout in list {
            for module in modules {
                let (members, span) = wgsl_struct(module, layout.wgsl)
                    .unwrap_or_else(|| panic!("no struct {} in the WGSL", layout.wgsl));
                let rust: Vec<(String, usize)> = layout
                    .members
                    .iter()
                    .map(|&(n, o)| (n.to_owned(), o))
                    .collect();
                assert_eq!(rust, members, "{}: members and offsets", layout.wgsl);
                if layout.padded {
                    assert!(
                        layout.size >= span,
                        "{}: {} < {span}",
                        layout.wgsl,
                        layout.size
                    );
                } else {
                    assert_eq!(layout.size, span, "{}: size", layout.wgsl);
                }
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        3 + 1 + 6 + 3,
        "every mirrored struct in every module"
    );

    // Numbers the host sets: overrides without a default, and exactly those the host
    // passes (wgpu refuses unknown constants; a default would be a second source).
    let shared: Vec<&str> = super::matmul::shared_constants()
        .iter()
        .map(|&(n, _)| n)
        .collect();
    for (module, variant) in [
        (&gemm, Variant::Gemm { tm: 4 }),
        (&gemv, Variant::Gemv { rows: 1 }),
    ] {
        let required = required_overrides(module);
        for (name, _) in super::matmul::module_constants(variant) {
            assert!(
                shared.contains(&name) && required.contains(&name.to_owned()),
                "{name}"
            );
        }
    }
    for name in ["THREADS", "TILE_N"] {
        assert!(
            required_overrides(&gemm).contains(&name.to_owned()),
            "{name}"
        );
    }
    for name in ["THREADS", "GEMV_ROWS", "GEMV_LANES"] {
        assert!(
            required_overrides(&gemv).contains(&name.to_owned()),
            "{name}"
        );
    }
    assert!(required_overrides(&lock).contains(&"WORKGROUP_SIZE".to_owned()));
    let copy = parse("copy", crate::bench::gpu::COPY_WGSL);
    assert_eq!(required_overrides(&copy), ["WORKGROUP_SIZE"]);
    for module in &infer {
        assert!(required_overrides(module).contains(&"WORKGROUP".to_owned()));
    }
    // What must stay a `const`, against the host.
    assert_eq!(const_u32(&gemv, "GEMV_BATCH_MAX"), GEMV_BATCH);
    // The element type codes the kernels switch on (`DTYPE_F32`, ...).
    for module in [&gemm, &gemv] {
        for d in MATMUL_DTYPES {
            let name = format!("DTYPE_{}", d.name());
            assert_eq!(Some(const_u32(module, &name)), dtype_code(d), "{name}");
        }
    }
    let tm_max = Variant::ALL
        .iter()
        .filter_map(|v| match v {
            Variant::Gemm { tm } => Some(*tm),
            Variant::Gemv { .. } => None,
        })
        .max();
    assert_eq!(Some(const_u32(&gemm, "TM_MAX")), tm_max);
    assert_eq!(
        const_u32(&gemm, "AES_TABLE_WORDS") as usize,
        super::aes::TABLE_WORDS
    );
}
