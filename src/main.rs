//! The `deeplock` command: a thin layer over the library. Keys come from a file,
//! standard input or `DEEPLOCK_KEY_FILE`, never from an argument.

mod cli;

fn main() {
    let runtime_dir = quiet_vulkan_loader();
    let code = cli::main();
    // `process::exit` runs no destructors: remove the directory first.
    drop(runtime_dir);
    std::process::exit(code);
}

/// Vulkan's loader and Mesa complain on stderr when `XDG_RUNTIME_DIR` is unset (as under
/// cron, ssh without a session, or containers); give them a directory so user output
/// stays clean. Runs first, before any thread exists.
///
/// The directory is a fresh one with a random name, mode 0700, removed at exit. Never a
/// predictable path such as `/tmp/deeplock-runtime-<uid>`: anyone can create that first
/// (or a symlink by that name) and so own the directory the GPU stack writes into.
fn quiet_vulkan_loader() -> Option<tempfile::TempDir> {
    if cfg!(not(unix)) || std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return None;
    }
    let mut builder = tempfile::Builder::new();
    builder.prefix("deeplock-runtime-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o700));
    }
    // Without one the loader only prints a warning: no reason to fail the command.
    let dir = builder.tempdir().ok()?;
    // SAFETY: called at the start of main, before any other thread is spawned.
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", dir.path()) };
    Some(dir)
}
