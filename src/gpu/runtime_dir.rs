//! A private `XDG_RUNTIME_DIR` for programs that open a GPU.
//!
//! Vulkan's loader and Mesa complain on stderr when `XDG_RUNTIME_DIR` is unset (as under
//! cron, ssh without a session, or containers). Programs (the CLI, the examples) give
//! them a directory so their output stays clean: a fresh one with a random name, mode
//! 0700, removed when the returned guard drops. Never a predictable path such as
//! `/tmp/deeplock-runtime-<uid>`: anyone can create that first (or a symlink by that
//! name) and so own the directory the GPU stack writes into.

/// Sets `XDG_RUNTIME_DIR` to a fresh private directory if it is unset, and returns the
/// directory's guard (keep it until the program ends; `process::exit` runs no
/// destructors, so drop it first). `None` if the variable was set, or on failure: without
/// one the loader only prints a warning, so there is no reason to fail.
///
/// # Safety
///
/// Sets an environment variable: call it at the start of `main`, before any other
/// thread exists.
pub unsafe fn private_runtime_dir() -> Option<tempfile::TempDir> {
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
    let dir = builder.tempdir().ok()?;
    // SAFETY: the caller promises no other thread exists yet.
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", dir.path()) };
    Some(dir)
}
