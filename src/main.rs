//! The `deeplock` command: a thin layer over the library. Keys come from a file,
//! standard input or `DEEPLOCK_KEY_FILE`, never from an argument.

mod cli;

fn main() {
    quiet_vulkan_loader();
    std::process::exit(cli::main());
}

/// Vulkan's loader and Mesa complain on stderr when `XDG_RUNTIME_DIR` is unset (as under
/// cron, ssh without a session, or containers); give them a private directory so user
/// output stays clean. Runs first, before any thread exists.
fn quiet_vulkan_loader() {
    #[cfg(unix)]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        use std::os::unix::fs::DirBuilderExt;
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let dir = std::env::temp_dir().join(format!("deeplock-runtime-{uid}"));
        let made = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        if made.is_ok() || dir.is_dir() {
            // SAFETY: called at the start of main, before any other thread is spawned.
            unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
        }
    }
}
