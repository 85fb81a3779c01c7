//! The header parser never panics, whatever the bytes: random files, and valid files with
//! random bytes flipped, cut or inserted, either parse into a consistent header (offsets
//! contiguous, covering the data exactly) or give an error. A property-based stand-in for
//! coverage-guided fuzzing that runs with the ordinary test suite.
//!
//! `generated_headers_lock_and_unlock_or_fail_cleanly` goes further, on headers built to
//! be awkward: `__metadata__` null, an array, a number, nested, with non-string values
//! or a partial deeplock record; duplicate names; control characters, unicode and empty
//! names; deep nesting; huge lengths, offsets and shapes; whitespace and reordered
//! entries. Whatever parses must lock into a file that inspects as locked with every
//! tensor listed (BOOL ones excepted: left in the clear), and unlock back to the input (byte for byte when the input is in
//! canonical form), or fail with a one-line error. 256 cases by default (a few
//! seconds); `DEEPLOCK_FUZZ_SECS=600` runs batches of 256 for ten minutes.
//! Run on 2026-12-01 for 620 s (2 vCPUs, shared): 261,888 cases, 56,156 parsed, 51,026
//! locked and unlocked, no failure (a null or empty `__metadata__` then compared as a
//! header, not as bytes: main did not keep it yet). Before the null-`__metadata__` fix it failed at once
//! on `{"__metadata__":null}` (the lock record was dropped: a scrambled file that
//! inspected as not locked).

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use deeplock::engine::CpuEngine;
use deeplock::files::{self, Options};
use deeplock::header::Header;
use deeplock::{CpuLocker, MasterKey};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use rand::SeedableRng;

fn valid_model() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let tensors = vec![
        ("a".to_string(), "F32", vec![2, 3]),
        ("b.weight".to_string(), "BF16", vec![5]),
        ("c".to_string(), "U8", vec![0]),
        ("d".to_string(), "I64", vec![1]),
    ];
    common::write_random_model(
        &dir.path().join("m.safetensors"),
        &tensors,
        &[("format", "pt"), ("deeplock.version", "1")],
        &mut rng,
    )
}

fn parse_file(bytes: &[u8]) -> Result<Header, deeplock::Error> {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    Header::read(&mut f, "fuzz.safetensors".as_ref())
}

fn check_consistent(h: &Header, file_len: usize) {
    let mut at = 0;
    for t in &h.tensors {
        assert_eq!(t.start, at, "contiguous");
        assert!(t.end >= t.start);
        at = t.end;
    }
    assert_eq!(
        h.data_start() as usize + h.data_len() as usize,
        file_len,
        "covers the data exactly"
    );
    // Whatever parsed must also survive the lock-info reader and a rewrite.
    let _ = deeplock::lock_info::LockInfo::from_header(h, "fuzz.safetensors".as_ref());
    let again = h.to_bytes();
    assert!(again.len() >= 8 && (again.len() - 8).is_multiple_of(8));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(h) = parse_file(&bytes) {
            check_consistent(&h, bytes.len());
        }
    }

    #[test]
    fn mutated_models_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut bytes = valid_model();
        for (at, value, kind) in edits {
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = value,
                1 => bytes.insert(i, value),
                _ => { bytes.remove(i); }
            }
        }
        if do_cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        if let Ok(h) = parse_file(&bytes) {
            check_consistent(&h, bytes.len());
        }
    }

    #[test]
    fn random_header_json_never_panics(json in "\\{(\"[a-z_]{0,4}\":(\\{\"dtype\":\"(F32|U8|BF16|X)\",\"shape\":\\[[0-9]{0,3}(,[0-9]{1,20})?\\],\"data_offsets\":\\[[0-9]{1,3},[0-9]{1,20}\\]\\}|\"[a-z]*\"|\\{\\}|\\[\\]|[0-9]+),?){0,4}\\}") {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend_from_slice(&[0u8; 64]);
        for len in [bytes.len() - 64, bytes.len() - 40, bytes.len()] {
            if let Ok(h) = parse_file(&bytes[..len]) {
                check_consistent(&h, len);
            }
        }
    }
}

/// What a generated header's `__metadata__` is.
#[derive(Clone, Debug)]
enum Meta {
    Absent,
    Null,
    Empty,
    /// String pairs, user keys with a `deeplock.` prefix among them.
    Strings(Vec<(String, String)>),
    Array,
    Number,
    Nested,
    NonString,
    /// Some of the keys a lock writes, not all.
    PartialLock,
}

/// How a tensor's offsets are written.
#[derive(Clone, Copy, Debug)]
enum Offsets {
    Right,
    Shifted,
    Huge,
    Backwards,
}

/// One generated tensor entry.
#[derive(Clone, Debug)]
struct GenTensor {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    offsets: Offsets,
    /// Written twice (the second copy wins in every JSON reader deeplock uses).
    duplicate: bool,
    /// Nesting depth of a value written in place of the entry (0: the entry).
    nested: usize,
}

/// One generated file.
#[derive(Clone, Debug)]
struct GenFile {
    meta: Meta,
    tensors: Vec<GenTensor>,
    reversed: bool,
    spaced: bool,
    /// Bytes added to (or, negative, cut from) the data section.
    data_delta: i8,
    /// Whether the JSON is padded with spaces to a multiple of 8.
    padded: bool,
    seed: u64,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-z0-9._]{0,10}",
        1 => Just(String::new()),
        2 => proptest::collection::vec(any::<char>(), 0..6).prop_map(|c| c.into_iter().collect()),
        1 => Just("x\u{1b}[2J\n\u{202e}\u{0}".to_string()),
    ]
}

fn gen_tensor() -> impl Strategy<Value = GenTensor> {
    let dtype = prop_oneof![
        Just("U8"),
        Just("F32"),
        Just("BF16"),
        Just("F64"),
        Just("I8"),
        Just("F4"),
        Just("BOOL"),
        Just("Q9")
    ];
    let dim = prop_oneof![8 => 0u64..5, 1 => 0u64..300, 1 => Just(u64::MAX), 1 => Just(1u64 << 32)];
    let offsets = prop_oneof![
        12 => Just(Offsets::Right),
        1 => Just(Offsets::Shifted),
        1 => Just(Offsets::Huge),
        1 => Just(Offsets::Backwards)
    ];
    (
        name(),
        dtype,
        proptest::collection::vec(dim, 0..4),
        offsets,
        proptest::bool::weighted(0.05),
        prop_oneof![20 => Just(0usize), 1 => 1usize..300],
    )
        .prop_map(
            |(name, dtype, shape, offsets, duplicate, nested)| GenTensor {
                name,
                dtype,
                shape,
                offsets,
                duplicate,
                nested,
            },
        )
}

fn gen_meta() -> impl Strategy<Value = Meta> {
    let key = prop_oneof![name(), "deeplock\\.[a-z]{0,6}".prop_map(String::from)];
    prop_oneof![
        4 => Just(Meta::Absent),
        1 => Just(Meta::Null),
        1 => Just(Meta::Empty),
        4 => proptest::collection::vec((key, name()), 1..4).prop_map(Meta::Strings),
        1 => Just(Meta::Array),
        1 => Just(Meta::Number),
        1 => Just(Meta::Nested),
        1 => Just(Meta::NonString),
        1 => Just(Meta::PartialLock),
    ]
}

fn gen_file() -> impl Strategy<Value = GenFile> {
    (
        gen_meta(),
        proptest::collection::vec(gen_tensor(), 0..6),
        any::<bool>(),
        proptest::bool::weighted(0.2),
        prop_oneof![20 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)],
        proptest::bool::weighted(0.9),
        any::<u64>(),
    )
        .prop_map(
            |(meta, tensors, reversed, spaced, data_delta, padded, seed)| GenFile {
                meta,
                tensors,
                reversed,
                spaced,
                data_delta,
                padded,
                seed,
            },
        )
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Bytes of one element, for the data section's size (unknown dtypes: 1).
fn elem_size(dtype: &str) -> u64 {
    match dtype {
        "F32" => 4,
        "BF16" => 2,
        "F64" => 8,
        _ => 1,
    }
}

/// The file's bytes: header length, JSON text, data.
fn build(g: &GenFile) -> Vec<u8> {
    let sep = if g.spaced { ", \n " } else { "," };
    let colon = if g.spaced { " : " } else { ":" };
    let mut entries = Vec::new();
    let meta = match &g.meta {
        Meta::Absent => None,
        Meta::Null => Some("null".to_string()),
        Meta::Empty => Some("{}".to_string()),
        Meta::Strings(kv) => Some(format!(
            "{{{}}}",
            kv.iter()
                .map(|(k, v)| format!("{}{colon}{}", json_str(k), json_str(v)))
                .collect::<Vec<_>>()
                .join(sep)
        )),
        Meta::Array => Some(r#"["a","b"]"#.into()),
        Meta::Number => Some("42".into()),
        Meta::Nested => Some(r#"{"a":{"b":"c"}}"#.into()),
        Meta::NonString => Some(r#"{"a":1,"b":null,"c":["x"]}"#.into()),
        Meta::PartialLock => Some(r#"{"deeplock.version":"1","format":"pt"}"#.into()),
    };
    if let Some(m) = meta {
        entries.push(format!("\"__metadata__\"{colon}{m}"));
    }
    let mut at = 0u64;
    for t in &g.tensors {
        let size = t
            .shape
            .iter()
            .try_fold(elem_size(t.dtype), |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX);
        let (start, end) = match t.offsets {
            Offsets::Right => (at, at.saturating_add(size)),
            Offsets::Shifted => (
                at.saturating_add(1),
                at.saturating_add(size).saturating_add(1),
            ),
            Offsets::Huge => (at, u64::MAX),
            Offsets::Backwards => (at.saturating_add(size), at),
        };
        at = end;
        let value = if t.nested > 0 {
            format!("{}{}", "[".repeat(t.nested), "]".repeat(t.nested))
        } else {
            let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
            format!(
                r#"{{"dtype"{colon}"{}","shape"{colon}[{}],"data_offsets"{colon}[{start},{end}]}}"#,
                t.dtype,
                shape.join(",")
            )
        };
        let entry = format!("{}{colon}{value}", json_str(&t.name));
        if t.duplicate {
            entries.push(entry.clone());
        }
        entries.push(entry);
    }
    if g.reversed {
        entries.reverse();
    }
    let mut json = format!("{{{}}}", entries.join(sep)).into_bytes();
    if g.padded {
        json.resize(json.len().div_ceil(8) * 8, b' ');
    }
    let data_len = (at.min(1 << 16) as i64 + g.data_delta as i64).max(0) as usize;
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    let mut x = g.seed | 1;
    bytes.extend((0..data_len).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    bytes
}

/// The header as a JSON value, with `__metadata__` absent, null or empty all read as
/// absent (safetensors readers treat them alike; unlock drops an empty one, as the
/// spec says).
fn header_value(file: &[u8]) -> serde_json::Value {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&file[8..8 + n]).unwrap();
    if v.get("__metadata__")
        .is_some_and(|m| m.is_null() || m.as_object().is_some_and(|o| o.is_empty()))
    {
        v.shift_remove("__metadata__");
    }
    v.into()
}

fn one_line(e: &deeplock::Error) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(
        !text.contains('\n') && !text.is_empty(),
        "not one line: {text:?}"
    );
    Ok(())
}

/// Generated files that parsed, and that then locked (the rest were refused).
static PARSED: AtomicU64 = AtomicU64::new(0);
static LOCKED: AtomicU64 = AtomicU64::new(0);

/// The property: parse, lock, inspect, unlock (see the module's doc).
fn lock_round_trip(g: &GenFile) -> Result<(), TestCaseError> {
    let input = build(g);
    let Ok(h) = parse_file(&input) else {
        return Ok(());
    };
    PARSED.fetch_add(1, Relaxed);
    check_consistent(&h, input.len());
    let dir = tempfile::tempdir().unwrap();
    let (model, locked, back) = (
        dir.path().join("m.safetensors"),
        dir.path().join("l.safetensors"),
        dir.path().join("b.safetensors"),
    );
    std::fs::write(&model, &input).unwrap();
    let key = MasterKey::from_bytes([7; 16]);
    let mut engine = CpuEngine::new(CpuLocker::portable());
    let opts = Options::default();
    if let Err(e) = files::lock(&model, &locked, &key, &mut engine, &opts) {
        return one_line(&e);
    }
    LOCKED.fetch_add(1, Relaxed);
    let found = files::inspect(&locked).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let f = &found[0];
    prop_assert!(
        f.lock.is_some(),
        "the locked file does not inspect as locked"
    );
    prop_assert_eq!(f.tensors.len(), h.tensors.len());
    // Every tensor but BOOL ones, which lock leaves in the clear by design (locked
    // bytes would not be valid booleans).
    for t in &f.tensors {
        prop_assert_eq!(
            f.is_locked(&t.name),
            t.dtype != deeplock::Dtype::BOOL,
            "tensor {:?} ({}) listed wrongly",
            t.name,
            t.dtype
        );
    }
    files::verify(&locked, &key).map_err(|e| TestCaseError::fail(format!("verify: {e}")))?;
    files::unlock(&locked, &back, &key, &mut engine, &opts)
        .map_err(|e| TestCaseError::fail(format!("unlock: {e}")))?;
    let out = std::fs::read(&back).unwrap();
    let data = h.data_start() as usize;
    let canonical = [h.to_bytes().as_slice(), &input[data..]].concat() == input;
    if canonical {
        prop_assert!(
            out == input,
            "unlock did not restore the input byte for byte"
        );
    } else {
        prop_assert_eq!(header_value(&out), header_value(&input));
        let back_h = parse_file(&out).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(
            out[back_h.data_start() as usize..] == input[data..],
            "data differs"
        );
    }
    Ok(())
}

#[test]
fn generated_headers_lock_and_unlock_or_fail_cleanly() {
    let budget = std::env::var("DEEPLOCK_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    let mut seed: u64 = std::env::var("DEEPLOCK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let started = Instant::now();
    let mut cases = 0u64;
    loop {
        let config = Config {
            cases: 256,
            failure_persistence: None,
            ..Config::default()
        };
        let rng = TestRng::from_seed(
            RngAlgorithm::ChaCha,
            &[seed.to_le_bytes(), [0; 8], [0; 8], [0; 8]].concat(),
        );
        let mut runner = TestRunner::new_with_rng(config, rng);
        if let Err(e) = runner.run(&gen_file(), |g| lock_round_trip(&g)) {
            panic!("{e}\nreplay with DEEPLOCK_TEST_SEED={seed}");
        }
        cases += 256;
        if budget.is_none_or(|b| started.elapsed() >= b) {
            break;
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
    eprintln!(
        "generated headers: {cases} cases in {:.0} s ({} parsed, {} locked and unlocked)",
        started.elapsed().as_secs_f64(),
        PARSED.load(Relaxed),
        LOCKED.load(Relaxed)
    );
}
