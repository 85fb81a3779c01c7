//! The CLI never loses the user's model nor leaks it: outputs that would destroy the
//! input or the key are refused, even with --force; directories are replaced whole;
//! plaintext is never world-readable; weight files deeplock cannot lock do not ship in
//! the clear by accident; interrupted runs leave no temporaries; FIFOs never hang it.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::SeedableRng;

/// A scratch directory with `key` and a small random model `model.safetensors`.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        small_model(&dir.path().join("model.safetensors"), 1);
        fs::write(dir.path().join("key"), format!("{KAT_KEY}\n")).unwrap();
        fs::set_permissions(dir.path().join("key"), fs::Permissions::from_mode(0o600)).unwrap();
        Scratch { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        deeplock(self.dir.path(), args, None)
    }

    /// `deeplock lock INPUT -o OUTPUT --key-file key`, which must succeed; its stderr.
    fn lock(&self, input: &str, output: &str) -> String {
        ok(&self.run(&["lock", input, "-o", output, "--key-file", "key"]))
    }

    /// `deeplock unlock INPUT -o OUTPUT --key-file key`, which must succeed; its stderr.
    fn unlock(&self, input: &str, output: &str) -> String {
        ok(&self.run(&["unlock", input, "-o", output, "--key-file", "key"]))
    }

    fn run_in(&self, rel: &str, args: &[&str]) -> Output {
        deeplock(&self.path(rel), args, None)
    }
}

fn small_model(path: &Path, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    write_random_model(
        path,
        &[
            ("a.weight".into(), "F32", vec![7, 3]),
            ("b.bias".into(), "BF16", vec![5]),
        ],
        &[("format", "pt")],
        &mut rng,
    )
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "expected success: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn refused(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(!err.contains(KAT_KEY));
}

/// Every path under `dir` with its bytes (directories as empty), sorted.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
                out.push((p, Vec::new()));
            } else if m.is_file() {
                out.push((p.clone(), fs::read(&p).unwrap()));
            } else {
                out.push((p, b"<special>".to_vec()));
            }
        }
    }
    out.sort();
    out
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// Runs deeplock in `dir`, killing it (and failing) if it has not ended in 30 s.
fn run_bounded(dir: &Path, args: &[&str]) -> Output {
    let mut child = spawn(dir, args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("deeplock {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn null_metadata_locks_into_a_file_that_unlocks() {
    let s = Scratch::new();
    let json = br#"{"__metadata__":null,"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}   "#;
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json);
    file.extend_from_slice(&[1, 2, 3, 4]);
    fs::write(s.path("nm.safetensors"), &file).unwrap();
    s.lock("nm.safetensors", "L.safetensors");
    let o = s.run(&["inspect", "L.safetensors", "--json"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"locked\": true"));
    s.unlock("L.safetensors", "U.safetensors");
    let back = fs::read(s.path("U.safetensors")).unwrap();
    let n = u64::from_le_bytes(back[..8].try_into().unwrap()) as usize;
    assert_eq!(&back[8 + n..], &[1, 2, 3, 4]);
}

#[test]
fn empty_and_null_metadata_come_back_as_they_were() {
    let s = Scratch::new();
    let w = r#""w":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}"#;
    for json in [
        format!(r#"{{"__metadata__":{{}},{w}}}"#),
        format!(r#"{{"__metadata__":null,{w}}}"#),
        format!(r#"{{{w},"__metadata__":null}}"#),
        format!(r#"{{{w},"__metadata__":{{}}}}"#),
    ] {
        let mut json = json.into_bytes();
        json.resize(json.len().div_ceil(8) * 8, b' ');
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&json);
        file.extend_from_slice(&[5, 6, 7]);
        fs::write(s.path("m.safetensors"), &file).unwrap();
        let (l, u) = ("l.safetensors", "u.safetensors");
        ok(&s.run(&[
            "lock",
            "m.safetensors",
            "-o",
            l,
            "--key-file",
            "key",
            "--force",
        ]));
        ok(&s.run(&["unlock", l, "-o", u, "--key-file", "key", "--force"]));
        assert_eq!(
            fs::read(s.path(u)).unwrap(),
            file,
            "{}",
            String::from_utf8_lossy(&file)
        );
    }
}

#[test]
fn an_output_that_is_or_holds_the_input_is_refused_even_with_force() {
    let s = Scratch::new();
    fs::create_dir(s.path("proj")).unwrap();
    small_model(&s.path("proj/model.safetensors"), 2);
    fs::write(s.path("proj/README"), "keep me").unwrap();
    fs::create_dir(s.path("proj/ckpt")).unwrap();
    small_model(&s.path("proj/ckpt/model.safetensors"), 3);
    let before = tree(s.dir.path());
    let key = s.path("key");
    let key = key.to_str().unwrap();
    for (cwd, args) in [
        ("proj", vec!["lock", "model.safetensors", "-o", "."]),
        ("proj", vec!["lock", "model.safetensors", "-o", ".."]),
        (
            "proj/ckpt",
            vec!["lock", "model.safetensors", "-o", "../.."],
        ),
        ("proj", vec!["lock", "ckpt/model.safetensors", "-o", "ckpt"]),
        ("proj", vec!["lock", "ckpt", "-o", "."]),
        ("proj", vec!["lock", "ckpt", "-o", "ckpt/../ckpt"]),
        (
            "proj",
            vec!["unlock", "ckpt/model.safetensors", "-o", "ckpt"],
        ),
        ("proj", vec!["unlock", "ckpt", "-o", "."]),
    ] {
        let mut a = args.clone();
        a.extend(["--key-file", key, "--force"]);
        let o = s.run_in(cwd, &a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{cwd}: {a:?} should fail");
        assert!(
            err.contains("contains the input") || err.contains("is the input"),
            "{a:?}: {err}"
        );
        assert_eq!(tree(s.dir.path()), before, "{cwd}: {a:?} changed files");
    }
}

#[test]
fn the_key_file_is_never_an_output_by_any_spelling() {
    let s = Scratch::new();
    fs::create_dir(s.path("keys")).unwrap();
    fs::copy(s.path("key"), s.path("keys/k")).unwrap();
    fs::hard_link(s.path("keys/k"), s.path("keys/k-link")).unwrap();
    let before = tree(s.dir.path());
    for out in ["keys/k", "./keys/../keys/k", "keys/k-link", "keys"] {
        let o = s.run(&[
            "lock",
            "model.safetensors",
            "-o",
            out,
            "--key-file",
            "keys/k",
            "--force",
        ]);
        refused(&o, "key file");
    }
    assert_eq!(tree(s.dir.path()), before);
}

#[test]
fn force_replaces_only_what_the_output_would_be() {
    let s = Scratch::new();
    mkfifo(&s.path("fifo"));
    fs::create_dir(s.path("adir")).unwrap();
    fs::write(s.path("afile"), "x").unwrap();
    fs::create_dir(s.path("ckpt")).unwrap();
    small_model(&s.path("ckpt/m.safetensors"), 4);
    std::os::unix::fs::symlink("afile", s.path("alink")).unwrap();
    let before = tree(s.dir.path());
    for (input, out, what) in [
        ("model.safetensors", "fifo", "named pipe"),
        ("model.safetensors", "adir", "a directory"),
        ("model.safetensors", "alink", "symbolic link"),
        ("ckpt", "afile", "a regular file"),
        ("ckpt", "fifo", "named pipe"),
    ] {
        let o = run_bounded(
            s.dir.path(),
            &["lock", input, "-o", out, "--key-file", "key", "--force"],
        );
        refused(&o, what);
    }
    assert_eq!(tree(s.dir.path()), before);
    // What it may replace, it replaces.
    fs::write(s.path("old.safetensors"), "old").unwrap();
    ok(&s.run(&[
        "lock",
        "model.safetensors",
        "-o",
        "old.safetensors",
        "--key-file",
        "key",
        "--force",
    ]));
    fs::write(s.path("adir/stale"), "stale").unwrap();
    ok(&s.run(&["lock", "ckpt", "-o", "adir", "--key-file", "key", "--force"]));
    assert!(s.path("adir/m.safetensors").is_file());
    assert!(!s.path("adir/stale").exists());
}

#[test]
fn a_header_over_the_limit_is_refused_before_writing() {
    let s = Scratch::new();
    let name = "n".repeat(55_000_000);
    let json = format!(r#"{{"{name}":{{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}}}"#);
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.push(7);
    fs::write(s.path("long.safetensors"), &bytes).unwrap();
    let before = tree(s.dir.path()).len();
    let o = s.run(&[
        "lock",
        "long.safetensors",
        "-o",
        "L.safetensors",
        "--key-file",
        "key",
    ]);
    refused(&o, "over the 100000000-byte limit of safetensors readers");
    assert_eq!(tree(s.dir.path()).len(), before, "nothing written");
}

#[test]
fn unlocked_directories_are_private_whatever_the_umask() {
    let s = Scratch::new();
    fs::create_dir_all(s.path("ckpt/sub")).unwrap();
    small_model(&s.path("ckpt/a.safetensors"), 5);
    small_model(&s.path("ckpt/sub/b.safetensors"), 6);
    fs::write(s.path("ckpt/config.json"), "{}").unwrap();
    for p in ["ckpt", "ckpt/sub"] {
        fs::set_permissions(s.path(p), fs::Permissions::from_mode(0o755)).unwrap();
    }
    for p in [
        "ckpt/a.safetensors",
        "ckpt/sub/b.safetensors",
        "ckpt/config.json",
    ] {
        fs::set_permissions(s.path(p), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let sh = |cmd: &str| {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("umask 000; exec \"$0\" {cmd}"))
            .arg(bin())
            .current_dir(s.dir.path())
            .output()
            .unwrap();
        ok(&o);
    };
    sh("lock ckpt -o locked --key-file key");
    // Locked: as readable as the input, file by file.
    assert_eq!(mode(&s.path("locked")), 0o755);
    assert_eq!(mode(&s.path("locked/sub")), 0o755);
    assert_eq!(mode(&s.path("locked/sub/b.safetensors")), 0o644);
    // The record takes the directory's read and write bits, not its search bits.
    assert_eq!(mode(&s.path("locked/deeplock.checkpoint")), 0o644);
    sh("unlock locked -o back --key-file key");
    for p in ["back", "back/sub"] {
        assert_eq!(mode(&s.path(p)), 0o700, "{p}");
    }
    for p in [
        "back/a.safetensors",
        "back/sub/b.safetensors",
        "back/config.json",
    ] {
        assert_eq!(mode(&s.path(p)), 0o600, "{p}");
    }
}

/// A Hugging Face clone as users have it: safetensors, a PyTorch copy of the same
/// weights, an upper-case extension, git's LFS objects and the key file inside.
fn hf_clone(s: &Scratch) -> PathBuf {
    let d = s.path("clone");
    fs::create_dir_all(d.join(".git/lfs/objects/ab/cd")).unwrap();
    small_model(&d.join("model.safetensors"), 7);
    small_model(&d.join("model.SAFETENSORS"), 8);
    small_model(&d.join(".git/lfs/objects/ab/cd/abcd1234"), 7);
    let mut pickle = vec![0x80, 0x04, 0x95];
    pickle.extend_from_slice(&[9; 64]);
    fs::write(d.join("pytorch_model.bin"), &pickle).unwrap();
    fs::write(d.join("config.json"), "{\"hidden\": 4}").unwrap();
    fs::copy(s.path("key"), d.join("model.key")).unwrap();
    d
}

#[test]
fn a_locked_directory_ships_no_plaintext_and_no_key() {
    let s = Scratch::new();
    let d = hf_clone(&s);
    let before = tree(&d);
    let o = s.run(&[
        "lock",
        "clone",
        "-o",
        "out",
        "--key-file",
        "clone/model.key",
    ]);
    refused(&o, "pytorch_model.bin (a Python pickle");
    assert!(!s.path("out").exists());
    let err = ok(&s.run(&[
        "lock",
        "clone",
        "-o",
        "out",
        "--key-file",
        "clone/model.key",
        "--exclude",
        "*.bin",
    ]));
    assert!(err.contains("left out .git"), "{err}");
    assert!(err.contains("left out model.key (a key file)"), "{err}");
    let mut names: Vec<String> = fs::read_dir(s.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "config.json",
            "deeplock.checkpoint",
            "model.SAFETENSORS",
            "model.safetensors"
        ]
    );
    for m in ["model.SAFETENSORS", "model.safetensors"] {
        let o = s.run(&["inspect", &format!("out/{m}"), "--json"]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("\"locked\": true"), "{m}: {text}");
        assert_ne!(
            fs::read(s.path(&format!("out/{m}"))).unwrap(),
            fs::read(d.join(m)).unwrap()
        );
    }
    // A key file is left out by its content too, whatever its name.
    let o = deeplock(
        s.dir.path(),
        &[
            "lock",
            "clone",
            "-o",
            "out2",
            "--key-file",
            "-",
            "--exclude",
            "*.bin",
        ],
        Some(KAT_KEY),
    );
    ok(&o);
    assert!(!s.path("out2/model.key").exists());
    // Allowed knowingly, the PyTorch file is copied with a warning.
    let err = ok(&s.run(&[
        "lock",
        "clone",
        "-o",
        "out3",
        "--key-file",
        "key",
        "--allow-plaintext",
        "pytorch_model.bin",
    ]));
    assert!(
        err.contains("copied pytorch_model.bin in the clear"),
        "{err}"
    );
    assert_eq!(tree(&d), before, "input untouched");
}

#[test]
fn symlinks_inside_a_directory_are_followed() {
    let s = Scratch::new();
    fs::create_dir_all(s.path("blobs")).unwrap();
    fs::create_dir_all(s.path("snap")).unwrap();
    let model = small_model(&s.path("blobs/123"), 9);
    std::os::unix::fs::symlink("../blobs/123", s.path("snap/model.safetensors")).unwrap();
    s.lock("snap", "locked");
    let out = s.path("locked/model.safetensors");
    assert!(fs::symlink_metadata(&out).unwrap().is_file());
    s.unlock("locked", "back");
    assert_eq!(fs::read(s.path("back/model.safetensors")).unwrap(), model);
}

#[test]
fn fifos_are_refused_without_hanging() {
    let s = Scratch::new();
    mkfifo(&s.path("f.safetensors"));
    fs::create_dir(s.path("ckpt")).unwrap();
    small_model(&s.path("ckpt/m.safetensors"), 10);
    mkfifo(&s.path("ckpt/pipe"));
    for args in [
        vec!["inspect", "f.safetensors"],
        vec![
            "lock",
            "f.safetensors",
            "-o",
            "o.safetensors",
            "--key-file",
            "key",
        ],
        vec!["verify", "f.safetensors", "--key-file", "key"],
        vec!["lock", "ckpt", "-o", "o", "--key-file", "key"],
        vec!["inspect", "ckpt"],
    ] {
        refused(&run_bounded(s.dir.path(), &args), "named pipe");
    }
}

#[test]
fn verify_of_a_directory_without_a_model_fails() {
    let s = Scratch::new();
    fs::create_dir(s.path("empty")).unwrap();
    fs::write(s.path("empty/README"), "no model here").unwrap();
    refused(
        &s.run(&["verify", "empty", "--key-file", "key"]),
        "holds no model file deeplock locks",
    );
}

#[test]
fn bool_tensors_stay_valid_booleans() {
    let s = Scratch::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let bytes = write_random_model(
        &s.path("b.safetensors"),
        &[("w".into(), "F32", vec![4])],
        &[],
        &mut rng,
    );
    // Add a BOOL mask of 0s and 1s after w.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["mask"] = serde_json::json!({"dtype": "BOOL", "shape": [6], "data_offsets": [16, 22]});
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&json);
    file.extend_from_slice(&bytes[8 + n..]);
    file.extend_from_slice(&[0, 1, 1, 0, 0, 1]);
    fs::write(s.path("b.safetensors"), &file).unwrap();
    let err = s.lock("b.safetensors", "L.safetensors");
    assert!(err.contains("1 BOOL tensor(s) left in the clear"), "{err}");
    let locked = fs::read(s.path("L.safetensors")).unwrap();
    assert_eq!(&locked[locked.len() - 6..], &[0, 1, 1, 0, 0, 1]);
    s.unlock("L.safetensors", "U.safetensors");
    assert_eq!(fs::read(s.path("U.safetensors")).unwrap(), file);
}

#[test]
fn a_failed_write_names_the_output() {
    use std::os::unix::process::CommandExt;
    let s = Scratch::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    write_random_model(
        &s.path("in.safetensors"),
        &[("w".into(), "F32", vec![1 << 20])],
        &[],
        &mut rng,
    );
    let mut cmd = Command::new(bin());
    cmd.args([
        "lock",
        "in.safetensors",
        "-o",
        "out.safetensors",
        "--key-file",
        "key",
    ])
    .current_dir(s.dir.path());
    // SAFETY: only async-signal-safe calls between fork and exec. Files may not grow
    // past 4 KiB, as on a full disk; writes past it fail instead of signalling.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 4096,
                rlim_max: 4096,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    refused(&o, "out.safetensors: File too large");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("in.safetensors"));
    assert!(temporaries(s.dir.path()).is_empty());
    assert!(!s.path("out.safetensors").exists());
}

#[test]
fn error_messages_escape_file_names() {
    let s = Scratch::new();
    let name = "x\ndeeplock: key matches\u{1b}]0;owned\u{7}.safetensors";
    fs::write(s.path(name), b"short").unwrap();
    let o = s.run(&["inspect", name]);
    refused(&o, "\\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn without_a_gpu_the_cli_says_how_to_run_on_the_cpu() {
    let s = Scratch::new();
    let o = Command::new(bin())
        .args([
            "lock",
            "model.safetensors",
            "-o",
            "o.safetensors",
            "--key-file",
            "key",
        ])
        .args(["--device", "gpu"])
        // A backend this platform does not have: no adapter at all.
        .env("WGPU_BACKEND", if cfg!(windows) { "metal" } else { "dx12" })
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    refused(&o, "GPU: ");
    assert!(String::from_utf8_lossy(&o.stderr).contains("; pass --device cpu"));
}

#[test]
fn standard_output_is_not_an_output() {
    let s = Scratch::new();
    refused(
        &s.run(&["lock", "model.safetensors", "-o", "-", "--key-file", "key"]),
        "standard output",
    );
    assert!(!s.path("-").exists());
}

#[test]
fn concurrent_forced_directory_runs_both_succeed() {
    let s = Scratch::new();
    fs::create_dir(s.path("ckpt")).unwrap();
    small_model(&s.path("ckpt/m.safetensors"), 12);
    fs::create_dir(s.path("out")).unwrap();
    let spawn = || {
        Command::new(bin())
            .args(["lock", "ckpt", "-o", "out", "--key-file", "key", "--force"])
            .current_dir(s.dir.path())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    for _ in 0..5 {
        let (a, b) = (spawn(), spawn());
        ok(&a.wait_with_output().unwrap());
        ok(&b.wait_with_output().unwrap());
        assert!(s.path("out/m.safetensors").is_file());
    }
    let entries = fs::read_dir(s.dir.path()).unwrap().count();
    assert_eq!(entries, 4, "key, model, ckpt, out: no temporaries left");
}

/// A sparse 1 GiB model: large enough that a run is still writing when signalled.
fn big_model(path: &Path) {
    let size: u64 = 1 << 30;
    let json = format!(r#"{{"w":{{"dtype":"U8","shape":[{size}],"data_offsets":[0,{size}]}}}}"#);
    let mut json = json.into_bytes();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let f = fs::File::create(path).unwrap();
    use std::io::Write;
    let mut w = std::io::BufWriter::new(&f);
    w.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
    w.write_all(&json).unwrap();
    w.flush().unwrap();
    drop(w);
    f.set_len(8 + json.len() as u64 + size).unwrap();
}

fn temporaries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".deeplock-tmp-"))
        .collect()
}

/// Starts `args`, waits until its temporary output exists, sends `signal`.
fn interrupt(dir: &Path, args: &[&str], signal: i32) -> std::process::ExitStatus {
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while temporaries(dir).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} ended before it was signalled"
        );
        assert!(Instant::now() < deadline, "no temporary appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    child.wait().unwrap()
}

#[test]
fn interrupted_runs_leave_no_temporaries() {
    use std::os::unix::process::ExitStatusExt;
    let s = Scratch::new();
    big_model(&s.path("big.safetensors"));
    // Each of the three signals, during a run of `args` writing `output`: the run ends
    // by the signal, with neither the output nor a temporary left.
    let each_signal = |args: &[&str], output: &str| {
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            let status = interrupt(s.dir.path(), args, signal);
            assert_eq!(status.signal(), Some(signal), "{args:?}: {status:?}");
            assert!(
                temporaries(s.dir.path()).is_empty(),
                "{args:?}, signal {signal}: {:?}",
                temporaries(s.dir.path())
            );
            assert!(!s.path(output).exists());
        }
    };
    let cpu = ["--key-file", "key", "--device", "cpu"];
    let lock = [
        &["lock", "big.safetensors", "-o", "L.safetensors"][..],
        &cpu,
    ]
    .concat();
    each_signal(&lock, "L.safetensors");
    ok(&s.run(&lock));
    let unlock = [
        &["unlock", "L.safetensors", "-o", "U.safetensors"][..],
        &cpu,
    ]
    .concat();
    each_signal(&unlock, "U.safetensors");
    // Killed outright, it cannot clean up: the next run beside it does, and says so.
    interrupt(s.dir.path(), &unlock, libc::SIGKILL);
    let left = temporaries(s.dir.path());
    assert_eq!(left.len(), 1);
    let err = s.lock("model.safetensors", "small.safetensors");
    assert!(err.contains(&format!("removed {}", left[0])), "{err}");
    assert!(temporaries(s.dir.path()).is_empty());
}
