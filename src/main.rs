//! The `deeplock` command: a thin layer over the library. Keys come from a file,
//! standard input or `DEEPLOCK_KEY_FILE`, never from an argument.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
