//! The command line as a user meets it: every error is one clear line, a non-zero
//! exit, the input untouched and no output (or temporary file) left behind.

mod common;

use std::path::Path;

use common::*;
use rand::SeedableRng;

struct Fixture {
    dir: tempfile::TempDir,
    model: Vec<u8>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let tensors = vec![
            ("embed.weight".to_string(), "BF16", vec![17, 33]),
            ("head.bias".to_string(), "F32", vec![5]),
            ("head.weight".to_string(), "F32", vec![5, 33]),
        ];
        let model = write_random_model(
            &dir.path().join("model.safetensors"),
            &tensors,
            &[("format", "pt")],
            &mut rng,
        );
        write_private(&dir.path().join("key"), &format!("{KAT_KEY}\n"));
        write_private(
            &dir.path().join("other.key"),
            "ffeeddccbbaa99887766554433221100",
        );
        Fixture { dir, model }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        deeplock(self.dir.path(), args, None)
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn lock(&self) {
        let o = self.run(&[
            "lock",
            "model.safetensors",
            "-o",
            "locked.safetensors",
            "--key-file",
            "key",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// `locked.safetensors` unlocked with `key` to `back.safetensors`.
    fn unlock(&self) {
        let o = self.run(&[
            "unlock",
            "locked.safetensors",
            "-o",
            "back.safetensors",
            "--key-file",
            "key",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// Runs `args`, expects failure with one stderr line containing `needle`, and checks
/// that the directory holds exactly what it held before.
fn fails(f: &Fixture, args: &[&str], needle: &str) {
    let before = f.names();
    let snapshot: Vec<Vec<u8>> = before
        .iter()
        .map(|n| std::fs::read(f.path(n)).unwrap_or_default())
        .collect();
    let o = f.run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err:?}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("deeplock: error: "), "{err:?}");
    assert!(!err.contains(KAT_KEY), "a key must never be printed");
    assert_eq!(f.names(), before, "no file created or removed");
    for (n, b) in before.iter().zip(snapshot) {
        assert_eq!(
            std::fs::read(f.path(n)).unwrap_or_default(),
            b,
            "{n} unchanged"
        );
    }
}

#[test]
fn lock_unlock_round_trip_is_byte_identical() {
    let f = Fixture::new();
    f.lock();
    let locked = std::fs::read(f.path("locked.safetensors")).unwrap();
    assert_ne!(locked, f.model);
    f.unlock();
    assert_eq!(std::fs::read(f.path("back.safetensors")).unwrap(), f.model);
    assert_eq!(
        std::fs::read(f.path("model.safetensors")).unwrap(),
        f.model,
        "input untouched"
    );
}

#[test]
fn max_in_flight_takes_a_size_and_refuses_anything_else() {
    let f = Fixture::new();
    let args = |cmd: &'static str, input: &'static str, output: &'static str, size| {
        [
            cmd,
            input,
            "-o",
            output,
            "--key-file",
            "key",
            "--device",
            "cpu",
            "--max-in-flight",
            size,
        ]
    };
    let o = f.run(&args(
        "lock",
        "model.safetensors",
        "locked.safetensors",
        "1M",
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = f.run(&args(
        "unlock",
        "locked.safetensors",
        "back.safetensors",
        "3145728",
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(f.path("back.safetensors")).unwrap(), f.model);
    // Refused before anything is read or written, in one line that names the option.
    for (size, says) in [
        ("0", "\"0\" is zero"),
        ("0G", "\"0G\" is zero"),
        ("abc", "\"abc\" is not a size"),
        ("-5", "\"-5\" is not a size"),
        ("", "\"\" is not a size"),
        ("12X", "\"12X\" has an unknown unit \"X\""),
        ("1.5G", "\"1.5G\" is not whole"),
        ("99999999999G", "\"99999999999G\" is too large"),
        (
            "99999999999999999999999",
            "\"99999999999999999999999\" is too large",
        ),
    ] {
        let args = args("lock", "model.safetensors", "o.safetensors", size);
        fails(
            &f,
            &args,
            &format!("--max-in-flight {says}; give a whole number"),
        );
    }
}

#[test]
fn key_from_stdin_and_environment() {
    let f = Fixture::new();
    let o = deeplock(
        f.dir.path(),
        &[
            "lock",
            "model.safetensors",
            "-o",
            "l.safetensors",
            "--key-file",
            "-",
        ],
        Some(KAT_KEY),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = std::process::Command::new(bin())
        .args(["verify", "l.safetensors"])
        .current_dir(f.dir.path())
        .env("DEEPLOCK_KEY_FILE", f.path("key"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = f.run(&["verify", "l.safetensors", "--key-file", "other.key"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong key"));
}

#[cfg(unix)]
#[test]
fn a_key_file_others_can_read_is_used_with_a_warning() {
    let f = Fixture::new();
    std::fs::write(f.path("open.key"), KAT_KEY).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(f.path("open.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = f.run(&[
        "lock",
        "model.safetensors",
        "-o",
        "l.safetensors",
        "--key-file",
        "open.key",
    ]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("chmod 600"));
}

#[cfg(unix)]
#[test]
fn locked_outputs_are_as_readable_as_their_input_and_unlocked_ones_private() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let mode = |n: &str| std::fs::metadata(f.path(n)).unwrap().permissions().mode() & 0o777;
    std::fs::set_permissions(
        f.path("model.safetensors"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    f.lock();
    assert_eq!(mode("locked.safetensors"), 0o644);
    f.unlock();
    assert_eq!(mode("back.safetensors"), 0o600);
}

#[test]
fn keygen_makes_a_private_key_and_never_overwrites() {
    let f = Fixture::new();
    let o = f.run(&["keygen", "-o", "new.key"]);
    assert!(o.status.success());
    let text = std::fs::read_to_string(f.path("new.key")).unwrap();
    assert_eq!(text.trim().len(), 32);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains(text.trim()),
        "key not printed"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f.path("new.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    fails(&f, &["keygen", "-o", "new.key"], "already exists");
    assert_eq!(std::fs::read_to_string(f.path("new.key")).unwrap(), text);
}

#[test]
fn errors_are_clear_and_leave_nothing_behind() {
    let f = Fixture::new();
    f.lock();
    fails(
        &f,
        &[
            "unlock",
            "locked.safetensors",
            "-o",
            "out.safetensors",
            "--key-file",
            "other.key",
        ],
        "wrong key",
    );
    fails(
        &f,
        &[
            "lock",
            "locked.safetensors",
            "-o",
            "out.safetensors",
            "--key-file",
            "key",
        ],
        "already locked",
    );
    fails(
        &f,
        &[
            "unlock",
            "model.safetensors",
            "-o",
            "out.safetensors",
            "--key-file",
            "key",
        ],
        "not locked",
    );
    fails(
        &f,
        &[
            "lock",
            "model.safetensors",
            "-o",
            "locked.safetensors",
            "--key-file",
            "key",
        ],
        "--force",
    );
    fails(
        &f,
        &[
            "lock",
            "model.safetensors",
            "-o",
            "model.safetensors",
            "--key-file",
            "key",
            "--force",
        ],
        "is the input",
    );
    fails(
        &f,
        &[
            "lock",
            "model.safetensors",
            "-o",
            "./model.safetensors",
            "--key-file",
            "key",
        ],
        "is the input",
    );
    fails(
        &f,
        &[
            "lock",
            "model.safetensors",
            "-o",
            "o.safetensors",
            "--key-file",
            "missing.key",
        ],
        "keygen",
    );
    fails(
        &f,
        &[
            "lock",
            "model.safetensors",
            "-o",
            "o.safetensors",
            "--key-file",
            "-",
            "--only",
            "nomatch*",
        ],
        "bad key",
    );
    fails(
        &f,
        &[
            "lock",
            "model.safetensors",
            "-o",
            "o.safetensors",
            "--key-file",
            "key",
            "--only",
            "nomatch*",
        ],
        "matched no tensor",
    );
    fails(
        &f,
        &[
            "lock",
            "model.safetensors",
            "-o",
            "o.safetensors",
            "--key-file",
            "key",
            "--device",
            "gpu",
            "--only",
            "[bad",
        ],
        "",
    );

    write_private(&f.path("short.key"), "0011");
    fails(
        &f,
        &[
            "lock",
            "model.safetensors",
            "-o",
            "o.safetensors",
            "--key-file",
            "short.key",
        ],
        "32 hexadecimal",
    );
    write_private(&f.path("nothex.key"), "zz0102030405060708090a0b0c0d0e0f");
    fails(
        &f,
        &[
            "lock",
            "model.safetensors",
            "-o",
            "o.safetensors",
            "--key-file",
            "nothex.key",
        ],
        "32 hexadecimal",
    );

    // --force replaces an existing output.
    let o = f.run(&[
        "lock",
        "model.safetensors",
        "-o",
        "locked.safetensors",
        "--key-file",
        "key",
        "--force",
    ]);
    assert!(o.status.success());
}

#[test]
fn damaged_files_are_refused() {
    let f = Fixture::new();
    let m = &f.model;
    let n = u64::from_le_bytes(m[..8].try_into().unwrap()) as usize;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated-data", m[..m.len() - 3].to_vec(), "truncated"),
        ("truncated-header", m[..8 + n / 2].to_vec(), "truncated"),
        ("tiny", m[..5].to_vec(), "shorter than the 8-byte header"),
        (
            "extra-bytes",
            [m.as_slice(), b"xyz"].concat(),
            "do not cover the data",
        ),
        (
            "huge-header",
            [&(1u64 << 40).to_le_bytes()[..], &m[8..]].concat(),
            "header too large",
        ),
        (
            "garbage-json",
            [&m[..8], &vec![b'#'; n][..], &m[8 + n..]].concat(),
            "invalid safetensors header",
        ),
        (
            "not-utf8",
            [&m[..8], &vec![0xff; n][..], &m[8 + n..]].concat(),
            "not UTF-8",
        ),
    ];
    for (name, bytes, needle) in cases {
        let file = format!("{name}.safetensors");
        std::fs::write(f.path(&file), bytes).unwrap();
        fails(
            &f,
            &["lock", &file, "-o", "o.safetensors", "--key-file", "key"],
            needle,
        );
        fails(&f, &["inspect", &file], needle);
    }
    // Offsets that do not match the dtype and shape.
    let bad = String::from_utf8(m[8..8 + n].to_vec())
        .unwrap()
        .replacen("[17,33]", "[17,34]", 1);
    std::fs::write(
        f.path("bad-offsets.safetensors"),
        [&m[..8], bad.as_bytes(), &m[8 + n..]].concat(),
    )
    .unwrap();
    fails(
        &f,
        &[
            "lock",
            "bad-offsets.safetensors",
            "-o",
            "o.safetensors",
            "--key-file",
            "key",
        ],
        "invalid safetensors header",
    );
    // A locked file whose deeplock metadata was tampered with.
    f.lock();
    let locked = std::fs::read(f.path("locked.safetensors")).unwrap();
    let tampered = String::from_utf8_lossy(&locked).replacen(
        "\"deeplock.salt\":\"",
        "\"deeplock.salt\":\"zz",
        1,
    );
    std::fs::write(f.path("tampered.safetensors"), tampered.as_bytes()).unwrap();
    fails(
        &f,
        &[
            "unlock",
            "tampered.safetensors",
            "-o",
            "o.safetensors",
            "--key-file",
            "key",
        ],
        "",
    );
}

#[test]
fn inspect_reports_lock_state_as_text_and_json() {
    let f = Fixture::new();
    let o = f.run(&[
        "lock",
        "model.safetensors",
        "-o",
        "locked.safetensors",
        "--key-file",
        "key",
        "--only",
        "head.*",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = f.run(&["inspect", "locked.safetensors", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let file = &v["files"][0];
    assert_eq!(file["locked"], true);
    assert_eq!(file["authenticated"], true);
    assert_eq!(file["version"], "2");
    assert_eq!(file["scheme"], "aes128-ctr-sbox-gmac");
    assert_eq!(file["salt"].as_str().unwrap().len(), 32);
    // v2's key check value is the file's own (bound to its salt), not the key's.
    let kcv = file["kcv"].as_str().unwrap();
    assert_eq!(kcv.len(), 16);
    assert_ne!(kcv, "6748fb819487ee8f", "the key's v1 check value");
    assert_eq!(file["metadata"]["format"], "pt");
    let tensors = file["tensors"].as_array().unwrap();
    let locked: Vec<&str> = tensors
        .iter()
        .filter(|t| t["locked"] == true)
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(locked, ["head.bias", "head.weight"]);
    assert_eq!(tensors[0]["dtype"], "BF16");
    assert_eq!(tensors[0]["bytes"], 17 * 33 * 2);
    let o = f.run(&["inspect", "model.safetensors"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("locked: no"));
    let o = f.run(&["inspect", "locked.safetensors"]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("2 of 3 tensors locked; authenticated (v2"),
        "{said}"
    );
}

#[test]
fn sharded_directory_is_locked_shard_by_shard() {
    let f = Fixture::new();
    let shards = f.path("ckpt");
    std::fs::create_dir_all(shards.join("sub")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let a = write_random_model(
        &shards.join("model-00001-of-00002.safetensors"),
        &[("a".into(), "F16", vec![9, 7])],
        &[],
        &mut rng,
    );
    let b = write_random_model(
        &shards.join("model-00002-of-00002.safetensors"),
        &[("b".into(), "F32", vec![3])],
        &[],
        &mut rng,
    );
    let index = r#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;
    std::fs::write(shards.join("model.safetensors.index.json"), index).unwrap();
    std::fs::write(shards.join("sub/config.json"), "{}").unwrap();
    let o = f.run(&["lock", "ckpt", "-o", "ckpt-locked", "--key-file", "key"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = f.path("ckpt-locked");
    assert_eq!(
        std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
        index
    );
    assert_eq!(
        std::fs::read_to_string(out.join("sub/config.json")).unwrap(),
        "{}"
    );
    assert_ne!(
        std::fs::read(out.join("model-00001-of-00002.safetensors")).unwrap(),
        a
    );
    fails(
        &f,
        &["lock", "ckpt", "-o", "ckpt-locked", "--key-file", "key"],
        "--force",
    );
    fails(
        &f,
        &["lock", "ckpt", "-o", "ckpt/inside", "--key-file", "key"],
        "inside the input directory",
    );
    fails(
        &f,
        &[
            "unlock",
            "ckpt-locked",
            "-o",
            "back",
            "--key-file",
            "other.key",
        ],
        "wrong key",
    );
    let o = f.run(&["unlock", "ckpt-locked", "-o", "back", "--key-file", "key"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let back = f.path("back");
    assert_eq!(
        std::fs::read(back.join("model-00001-of-00002.safetensors")).unwrap(),
        a
    );
    assert_eq!(
        std::fs::read(back.join("model-00002-of-00002.safetensors")).unwrap(),
        b
    );
    let o = f.run(&["verify", "ckpt-locked", "--key-file", "key"]);
    assert!(o.status.success());
    // It says what it checked.
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("the key matches all 2 locked file(s)")
            && said.contains("2 header(s) and the checkpoint record authenticated"),
        "{said}"
    );
}

#[test]
fn demo_runs_and_checks_its_round_trip() {
    let o = deeplock(Path::new("."), &["demo"], None);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("1250858 parameters"), "{out}");
    assert!(
        out.contains("unlocked file identical to the original"),
        "{out}"
    );
    assert!(
        out.contains("gguf: the same model as GGUF, 12 of 12 tensors locked in place"),
        "{out}"
    );
}
