//! The crate's layers, as src/lib.rs draws them, kept: every module of the library may
//! use only modules below it in [`ORDER`] (and itself). A new module must be placed in
//! the order; an import that points up fails here with the file and the line. Test code
//! sits above everything and may use any module: unit-test files (`tests.rs`,
//! `*_tests.rs`) and, by the crate's convention of putting them last, everything from a
//! file's `#[cfg(test)]` on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The library's top-level modules, lowest first: the scheme, the backends on it, the
/// stream on them, containers and outputs, the operations, then the front ends.
const ORDER: &[&str] = &[
    // The scheme.
    "error",
    "hex",
    "rng",
    "sbox",
    "key",
    "key_schedule",
    "scheme",
    "reference",
    "dtype",
    // Backends.
    "cpu",
    "gpu",
    // The stream.
    "engine",
    // Containers and outputs.
    "header",
    // Scheme v2's tags over a header's tensors (GMAC), for the lock record.
    "auth",
    "lock_info",
    "output",
    "format",
    // Scheme v2 over a container: sealing on lock, checking on every read.
    "authenticate",
    // The record that binds a checkpoint directory's v2 shards.
    "checkpoint",
    // Operations.
    "files",
    // Locked models in memory, for the loaders of every front end.
    "memory",
    // Key files, for every front end.
    "key_file",
    // Front ends over the library.
    "infer",
    "mnist",
    "zoo",
    "bench",
];

fn rank(module: &str) -> usize {
    ORDER
        .iter()
        .position(|m| *m == module)
        .unwrap_or_else(|| panic!("module {module:?} is not in tests/layers.rs ORDER: place it"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The names `crate::` may be followed by and the module each stands for: the modules
/// themselves, and the root's re-exports (`pub use cpu::CpuLocker;` in lib.rs).
fn root_names(src: &Path) -> HashMap<String, String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut names: HashMap<String, String> = ORDER
        .iter()
        .map(|m| (m.to_string(), m.to_string()))
        .collect();
    for line in lib.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let rest = rest.trim_end_matches(';');
        let (module, items) = rest.split_once("::").expect("pub use module::item");
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            names.insert(item.trim().to_string(), module.to_string());
        }
    }
    names
}

/// The root-level names a line refers to through `crate::`.
fn crate_refs(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let names = root_names(&src);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        // The binary and the crate root sit above every module.
        if matches!(module.as_str(), "main" | "cli" | "lib") {
            continue;
        }
        let stem = rel.file_stem().unwrap().to_string_lossy();
        if stem == "tests" || stem.ends_with("_tests") {
            continue;
        }
        let here = rank(&module);
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim() == "#[cfg(test)]" {
                break;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            for name in crate_refs(line) {
                let target = names.get(&name).unwrap_or_else(|| {
                    panic!(
                        "{}:{}: crate::{name} is not a known module",
                        rel.display(),
                        n + 1
                    )
                });
                if rank(target) > here {
                    upward.push(format!(
                        "{}:{}: {module} uses {target}, which is above it",
                        rel.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn every_library_module_is_placed() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(m) = line
            .trim()
            .strip_prefix("pub mod ")
            .or(line.trim().strip_prefix("mod "))
        {
            rank(m.trim_end_matches(';'));
        }
    }
}
