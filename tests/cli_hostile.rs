//! The command line against hostile or unlucky input: key files that are devices, FIFOs,
//! huge, or a key pasted where the path goes; tensor names that are terminal escapes;
//! output to a closed pipe or a full disk; a shared /tmp; user metadata that happens to
//! start with `deeplock.`.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::SeedableRng;

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// A directory with `model.safetensors` (its tensors and metadata as given), the
/// known-answer key in `key`, and the model's bytes.
fn setup(
    tensors: &[(String, &str, Vec<usize>)],
    metadata: &[(&str, &str)],
) -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let model = write_random_model(
        &dir.path().join("model.safetensors"),
        tensors,
        metadata,
        &mut rng,
    );
    write_private(&dir.path().join("key"), &format!("{KAT_KEY}\n"));
    (dir, model)
}

fn plain() -> (tempfile::TempDir, Vec<u8>) {
    setup(
        &[
            ("a.weight".to_string(), "F32", vec![3, 5]),
            ("b.bias".to_string(), "U8", vec![7]),
        ],
        &[("format", "pt")],
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `args` in `dir`; expects exit 1 and one stderr line containing every needle.
fn fails_with(dir: &Path, args: &[&str], needles: &[&str]) -> String {
    let o = deeplock(dir, args, None);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("deeplock: error: "), "{err:?}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected {n:?} in {err:?}");
    }
    err
}

fn verify_with(dir: &Path, key_file: &str) -> std::process::Output {
    deeplock(
        dir,
        &["verify", "locked.safetensors", "--key-file", key_file],
        None,
    )
}

fn lock_plain(dir: &Path) {
    let o = deeplock(
        dir,
        &[
            "lock",
            "model.safetensors",
            "-o",
            "locked.safetensors",
            "--key-file",
            "key",
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn a_key_on_the_command_line_is_never_echoed() {
    let (dir, _) = plain();
    lock_plain(dir.path());
    for arg in [
        KAT_KEY,
        "0f84fb0102030405060708090a0b0c0d",
        "0x00112233445566778899",
    ] {
        let err = fails_with(
            dir.path(),
            &["verify", "locked.safetensors", "--key-file", arg],
            &["never from the command line", "put the key in a file"],
        );
        assert!(!err.contains(arg.trim_start_matches("0x")), "{err}");
        // The environment variable gets the same treatment.
        let o = Command::new(bin())
            .args(["verify", "locked.safetensors"])
            .current_dir(dir.path())
            .env("DEEPLOCK_KEY_FILE", arg)
            .output()
            .unwrap();
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1));
        assert!(!err.contains(arg.trim_start_matches("0x")), "{err}");
    }
    // A missing file that does not look like a key still gets the keygen hint.
    fails_with(
        dir.path(),
        &["verify", "locked.safetensors", "--key-file", "missing.key"],
        &["missing.key", "does not exist", "keygen -o missing.key"],
    );
}

#[cfg(unix)]
#[test]
fn key_files_that_are_not_regular_files_are_refused_without_reading() {
    let (dir, _) = plain();
    lock_plain(dir.path());
    // A FIFO with no writer: opening it for reading would block forever.
    let fifo = dir.path().join("fifo.key");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    std::fs::create_dir(dir.path().join("dir.key")).unwrap();
    for (arg, needle) in [
        ("/dev/zero", "not a regular file"),
        ("fifo.key", "not a regular file"),
        ("dir.key", "a directory"),
    ] {
        let start = Instant::now();
        fails_with(
            dir.path(),
            &["verify", "locked.safetensors", "--key-file", arg],
            &[needle, "32 hex characters"],
        );
        assert!(start.elapsed() < Duration::from_secs(30), "{arg}: it hung");
    }
}

#[test]
fn key_files_are_read_with_a_size_limit() {
    let (dir, _) = plain();
    lock_plain(dir.path());
    write_private(
        &dir.path().join("big.key"),
        &format!("{KAT_KEY}\n").repeat(100),
    );
    fails_with(
        dir.path(),
        &["verify", "locked.safetensors", "--key-file", "big.key"],
        &["more than 512 bytes", "32 hex characters (a 128-bit key)"],
    );
    // Standard input: a stream that never ends is cut off, not read to the end.
    let mut child = Command::new(bin())
        .args(["verify", "locked.safetensors", "--key-file", "-"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let zeros = vec![b'0'; 1 << 16];
        // Stops when deeplock exits and the pipe closes.
        for _ in 0..(1 << 14) {
            if stdin.write_all(&zeros).is_err() {
                return;
            }
        }
    });
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1));
    feeder.join().unwrap();
    assert!(err.contains("more than 512 bytes"), "{err}");
    // The right key still works from both.
    assert!(verify_with(dir.path(), "key").status.success());
    let o = deeplock(
        dir.path(),
        &["verify", "locked.safetensors", "--key-file", "-"],
        Some(&format!("{KAT_KEY}\n")),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn a_byte_order_mark_is_named() {
    let (dir, _) = plain();
    lock_plain(dir.path());
    write_private(&dir.path().join("bom.key"), &format!("\u{feff}{KAT_KEY}\n"));
    fails_with(
        dir.path(),
        &["verify", "locked.safetensors", "--key-file", "bom.key"],
        &["byte-order mark", "save it without one"],
    );
}

#[cfg(unix)]
#[test]
fn an_unreadable_key_file_says_permission_denied_not_keygen() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, _) = plain();
    lock_plain(dir.path());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let k = dir.path().join("key");
    // Root reads any file: as root, run deeplock as nobody on root's 0600 key file.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        if !Path::new("/usr/bin/setpriv").exists() {
            eprintln!("skipped: running as root without setpriv to drop privileges");
            return;
        }
        let mut c = Command::new("/usr/bin/setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin());
        c
    } else {
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o000)).unwrap();
        Command::new(bin())
    };
    let o = cmd
        .args(["verify", "locked.safetensors", "--key-file"])
        .arg(&k)
        .current_dir(dir.path())
        .env_remove("DEEPLOCK_KEY_FILE")
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("fix its permissions"), "{err}");
    assert!(!err.contains("keygen"), "{err}");
}

#[test]
fn inspect_escapes_terminal_controls_in_names_metadata_and_paths() {
    let evil_name = "x\u{1b}]0;pwned\u{7}\n  locked: yes\u{202e}";
    let (dir, _) = setup(
        &[
            (evil_name.to_string(), "U8", vec![2]),
            ("\u{9b}2J".to_string(), "U8", vec![1]),
        ],
        &[("note\u{1b}[2K", "v\r\u{7f}")],
    );
    let file = "m\u{1b}[31m.safetensors";
    std::fs::rename(dir.path().join("model.safetensors"), dir.path().join(file)).unwrap();
    let o = deeplock(dir.path(), &["inspect", file], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for c in out.chars() {
        assert!(
            c == '\n' || !(c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
            "raw {c:?} in {out:?}"
        );
    }
    assert_eq!(
        out.lines().filter(|l| l.starts_with("  locked: ")).count(),
        1,
        "no forged line: {out}"
    );
    assert!(
        out.contains(r"x\u{1b}]0;pwned\u{7}\n  locked: yes\u{202e}"),
        "{out}"
    );
    assert!(out.contains(r"\u{9b}2J"), "{out}");
    assert!(out.contains(r"metadata note\u{1b}[2K = v\r\u{7f}"), "{out}");
    assert!(out.contains(r"m\u{1b}[31m.safetensors"), "{out}");
    // JSON keeps the names exactly.
    let o = deeplock(dir.path(), &["inspect", file, "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v["files"][0]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&evil_name), "{names:?}");
}

/// Spawns `deeplock args` with its standard output a pipe whose reader is closed after
/// `keep` bytes.
#[cfg(unix)]
fn with_closed_stdout(dir: &Path, args: &[&str], keep: usize) -> std::process::Output {
    let mut child = spawn(dir, args);
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; keep];
    stdout.read_exact(&mut buf).unwrap();
    drop(stdout);
    child.wait_with_output().unwrap()
}

#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_quietly_and_a_full_disk_is_one_line() {
    // Enough tensors that inspect writes well past a pipe's 64 KiB buffer.
    let tensors: Vec<(String, &str, Vec<usize>)> = (0..4000)
        .map(|i| (format!("layer.{i}.weight"), "U8", vec![1]))
        .collect();
    let (dir, _) = setup(&tensors, &[]);
    let o = with_closed_stdout(dir.path(), &["inspect", "model.safetensors"], 10);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "", "quiet");
    let o = with_closed_stdout(dir.path(), &["inspect", "model.safetensors", "--json"], 10);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    if !Path::new("/dev/full").exists() {
        return;
    }
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let run_full = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .current_dir(dir.path())
            .env_remove("DEEPLOCK_KEY_FILE")
            .stdin(Stdio::null())
            .stdout(full())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    let one_line = |o: &std::process::Output, needles: &[&str]| {
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
        assert!(
            err.starts_with(
                "deeplock: error: cannot write to standard output: No space left on device"
            ),
            "{err}"
        );
        for n in needles {
            assert!(err.contains(n), "{n:?} in {err}");
        }
    };
    let o = run_full(&["keygen", "-o", "new.key"]);
    one_line(&o, &["the key was written to new.key"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("new.key"))
            .unwrap()
            .trim()
            .len(),
        32,
        "the key is kept"
    );
    let o = run_full(&[
        "lock",
        "model.safetensors",
        "-o",
        "l.safetensors",
        "--key-file",
        "key",
    ]);
    one_line(&o, &["l.safetensors was written"]);
    one_line(&run_full(&["inspect", "model.safetensors"]), &[]);
    one_line(
        &run_full(&["verify", "l.safetensors", "--key-file", "key"]),
        &[],
    );
}

/// The predictable runtime directory `$TMPDIR/deeplock-runtime-<uid>`, made first by
/// someone else (world-writable here; owned by nobody when the test runs as root), is
/// not used: deeplock makes a fresh private one for the run and removes it at exit.
#[cfg(unix)]
#[test]
fn a_runtime_directory_made_by_someone_else_is_not_used() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (dir, _) = plain();
    lock_plain(dir.path());
    let tmp = tempfile::tempdir().unwrap();
    let uid = unsafe { libc::getuid() };
    let planted = tmp.path().join(format!("deeplock-runtime-{uid}"));
    std::fs::create_dir(&planted).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
    if uid == 0 {
        let c = std::ffi::CString::new(planted.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
    }
    // deeplock waits on its key from standard input: look at the directory meanwhile.
    let mut child = Command::new(bin())
        .args(["verify", "locked.safetensors", "--key-file", "-"])
        .current_dir(dir.path())
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("DEEPLOCK_KEY_FILE")
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let fresh = |tmp: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(tmp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| *p != planted)
            .collect()
    };
    let start = Instant::now();
    let made = loop {
        let f = fresh(tmp.path());
        if !f.is_empty() || start.elapsed() > Duration::from_secs(30) {
            break f;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        made.len(),
        1,
        "one fresh directory of its own, not {planted:?}: {made:?}"
    );
    let meta = std::fs::symlink_metadata(&made[0]).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.uid(), uid);
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert!(made[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("deeplock-runtime-"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{KAT_KEY}\n").as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(fresh(tmp.path()).is_empty(), "removed at exit");
    assert_eq!(
        std::fs::read_dir(&planted).unwrap().count(),
        0,
        "nothing written into the planted directory"
    );
}

#[test]
fn user_metadata_named_deeplock_is_kept_through_lock_and_unlock() {
    let (dir, model) = setup(
        &[("w".to_string(), "F32", vec![4, 4])],
        &[("deeplock.note", "mine"), ("format", "pt")],
    );
    let o = deeplock(
        dir.path(),
        &["inspect", "model.safetensors", "--json"],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"][0]["locked"], false);
    assert_eq!(v["files"][0]["metadata"]["deeplock.note"], "mine");
    lock_plain(dir.path());
    let o = deeplock(dir.path(), &["inspect", "locked.safetensors"], None);
    let out = text(&o.stdout);
    assert!(out.contains("locked: yes"), "{out}");
    assert!(out.contains("metadata deeplock.note = mine"), "{out}");
    assert!(!out.contains("metadata deeplock.salt"), "{out}");
    let o = deeplock(
        dir.path(),
        &[
            "unlock",
            "locked.safetensors",
            "-o",
            "back.safetensors",
            "--key-file",
            "key",
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read(dir.path().join("back.safetensors")).unwrap(),
        model
    );
}
