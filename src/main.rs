//! The `deeplock` command: a thin layer over the library. Keys come from a file,
//! standard input or `DEEPLOCK_KEY_FILE`, never from an argument.

mod cli;

fn main() {
    // SAFETY: first thing in main, before any other thread exists.
    let runtime_dir = unsafe { deeplock::gpu::private_runtime_dir() };
    let code = cli::main();
    // `process::exit` runs no destructors: remove the directory first.
    drop(runtime_dir);
    std::process::exit(code);
}
