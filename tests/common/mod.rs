//! Helpers shared by the integration tests: random safetensors files and the CLI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rand::{Rng, RngCore};

/// Dtypes and their element sizes in bytes, as safetensors names them.
pub const DTYPES: [(&str, usize); 9] = [
    ("F32", 4),
    ("F16", 2),
    ("BF16", 2),
    ("F64", 8),
    ("I8", 1),
    ("U8", 1),
    ("I64", 8),
    ("F8_E4M3", 1),
    ("I32", 4),
];

/// Writes a safetensors file with the given (name, dtype, shape) tensors filled with
/// random bytes, and `metadata`; returns the file's bytes.
pub fn write_random_model(
    path: &Path,
    tensors: &[(String, &str, Vec<usize>)],
    metadata: &[(&str, &str)],
    rng: &mut impl RngCore,
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        header.insert("__metadata__".into(), m.into());
    }
    let mut data = Vec::new();
    for (name, dtype, shape) in tensors {
        let size = DTYPES.iter().find(|d| d.0 == *dtype).unwrap().1;
        let n: usize = shape.iter().product::<usize>() * size;
        let start = data.len();
        data.resize(start + n, 0);
        rng.fill_bytes(&mut data[start..]);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, start + n]}),
        );
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes.extend_from_slice(&data);
    std::fs::write(path, &bytes).unwrap();
    bytes
}

/// A random model of `count` tensors of random dtypes and odd shapes.
pub fn random_tensors(
    rng: &mut impl Rng,
    count: usize,
    max_elems: usize,
) -> Vec<(String, &'static str, Vec<usize>)> {
    (0..count)
        .map(|i| {
            let (dtype, _) = DTYPES[rng.random_range(0..DTYPES.len())];
            let n = rng.random_range(0..=max_elems);
            let shape = if n % 3 == 0 { vec![n] } else { vec![1, n] };
            (format!("layer.{i}.weight"), dtype, shape)
        })
        .collect()
}

/// The `deeplock` binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_deeplock"))
}

/// Starts `deeplock args...` in `dir`: no inherited key env, standard input empty,
/// standard output and error piped.
pub fn spawn(dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_remove("DEEPLOCK_KEY_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `deeplock args...` in `dir` with `stdin` fed in, no inherited key env.
pub fn deeplock(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("DEEPLOCK_KEY_FILE")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// The spec's known-answer key.
pub const KAT_KEY: &str = "000102030405060708090a0b0c0d0e0f";

/// Writes [`KAT_KEY`] to a key file only its owner reads (no permission warning).
pub fn write_key_file(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, KAT_KEY).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A GPU context, or `None` after a skip line where there is no adapter and none is
/// required. With `DEEPLOCK_REQUIRE_GPU=1` (set by scripts/test.sh, so in CI) a missing
/// adapter panics: GPU tests must never pass without having run.
pub fn gpu_context() -> Option<deeplock::gpu::GpuContext> {
    match deeplock::gpu::GpuContext::new() {
        Ok(ctx) => Some(ctx),
        Err(e) if std::env::var("DEEPLOCK_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("DEEPLOCK_REQUIRE_GPU=1 but there is no usable GPU adapter: {e}")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED: no GPU adapter ({e}); set DEEPLOCK_REQUIRE_GPU=1 to make this fail"
            );
            None
        }
    }
}

/// A generator from a fresh random seed, printed, or from `DEEPLOCK_TEST_SEED` to
/// replay a failure.
pub fn seeded_rng(test: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed = std::env::var("DEEPLOCK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (replay with DEEPLOCK_TEST_SEED={seed})");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// The real Fashion-MNIST test set, or `None` (with a note) where it is not installed.
/// scripts/test.sh installs it and sets DEEPLOCK_REQUIRE_DATA=1, so CI never skips.
pub fn fashion_test_set(test: &str) -> Option<deeplock::mnist::Dataset> {
    use deeplock::mnist::{Dataset, Split, FASHION_MNIST_HINT};
    if !Dataset::fashion_mnist_installed() {
        assert!(
            std::env::var_os("DEEPLOCK_REQUIRE_DATA").is_none_or(|v| v != "1"),
            "DEEPLOCK_REQUIRE_DATA=1 but Fashion-MNIST is missing: {FASHION_MNIST_HINT}"
        );
        eprintln!("{test}: skipped, Fashion-MNIST is not installed; {FASHION_MNIST_HINT}");
        return None;
    }
    Some(Dataset::fashion_mnist(Split::Test).unwrap())
}

/// The bytes a hex string (from a known-answer block) spells.
pub fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A CLI run's standard error, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs unlock and verify on `bytes` written as `t.EXT` in `dir` (which holds `key`):
/// both must fail with a one-line message containing `want`, and write nothing, not
/// even a temporary.
pub fn refused_by_unlock_and_verify(dir: &Path, ext: &str, bytes: &[u8], want: &str, what: &str) {
    let (input, output) = (format!("t.{ext}"), format!("out.{ext}"));
    std::fs::write(dir.join(&input), bytes).unwrap();
    let before = std::fs::read_dir(dir).unwrap().count();
    for args in [
        &["unlock", &input, "-o", &output, "--key-file", "key"][..],
        &["verify", &input, "--key-file", "key"][..],
    ] {
        let o = deeplock(dir, args, None);
        let e = stderr(&o);
        assert!(!o.status.success(), "{what}: {args:?} succeeded");
        assert!(e.contains(want), "{what}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{what}: {e}");
        assert!(!dir.join(&output).exists(), "{what}");
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            before,
            "{what}: a temporary was left"
        );
    }
}

/// A byte-level mutation the parsers' fuzz tests share, picked by `kind` (0 to 3): one
/// to three bit flips, a truncation, one to eight random bytes inserted, or a random
/// value of `word` bytes written over (a length, an offset, a count).
pub fn mutate(b: &mut Vec<u8>, rng: &mut impl Rng, kind: u32, word: usize) {
    match kind {
        0 => {
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => b.truncate(rng.random_range(0..b.len())),
        2 => {
            let i = rng.random_range(0..b.len());
            for _ in 0..rng.random_range(1..9) {
                b.insert(i, rng.random());
            }
        }
        _ => {
            let j = rng.random_range(0..=b.len() - word);
            let value = rng.random::<u64>().to_le_bytes();
            b[j..j + word].copy_from_slice(&value[..word]);
        }
    }
}

/// What the fuzz tests check of a mutated file that parsed: its tensors' byte ranges in
/// order, none overlapping another, each within `within`; its lock record and layout
/// computed without a panic.
pub fn check_parsed(m: &dyn deeplock::format::Container, within: std::ops::Range<u64>, case: u32) {
    let mut prev = within.start;
    for i in 0..m.tensors().len() {
        let r = m.byte_range(i);
        assert!(
            r.start >= prev && r.start <= r.end && r.end <= within.end,
            "case {case}: tensor {i} at {r:?}, outside {prev}..{}",
            within.end
        );
        prev = r.end;
    }
    let _ = m.lock_record();
    let _ = m.layout(None);
}
