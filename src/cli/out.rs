//! Standard output that fails with an error instead of a panic.
//!
//! `println!` panics when a write fails: `deeplock inspect FILE | head -1` (the reader
//! closes the pipe; Rust ignores SIGPIPE, so the write returns EPIPE) and
//! `deeplock lock ... > /dev/full` exited 101 with a backtrace. Every line the CLI
//! prints goes through here instead. A closed pipe ends the command quietly with exit 0,
//! as ripgrep and many other tools do: the reader asked for no more. Any other failed
//! write is a one-line error and exit 1.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;

/// Why a command failed.
pub enum CliError {
    /// An error of the library, or of the CLI's own checks.
    Lib(deeplock::Error),
    /// Standard output could not be written; `done` says what the command had already
    /// done, so that a user does not redo it (or lose a key over it).
    Stdout {
        /// The write error.
        source: io::Error,
        /// What was done before output failed, e.g. "the key was written to K".
        done: Option<String>,
    },
}

impl From<deeplock::Error> for CliError {
    fn from(e: deeplock::Error) -> Self {
        CliError::Lib(e)
    }
}

impl CliError {
    /// A failed write to standard output.
    pub fn stdout(source: io::Error) -> Self {
        CliError::Stdout { source, done: None }
    }

    /// Says, if output fails, that `what` was done all the same.
    pub fn done(self, what: impl FnOnce() -> String) -> Self {
        match self {
            CliError::Stdout { source, .. } => CliError::Stdout {
                source,
                done: Some(what()),
            },
            other => other,
        }
    }

    /// Whether the reader of standard output closed it: not an error of the command.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Stdout { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Lib(e) => e.fmt(f),
            CliError::Stdout { source, done } => {
                // "No space left on device (os error 28)": the number says nothing more.
                let text = source.to_string();
                let text = text.split(" (os error").next().unwrap_or(&text);
                write!(f, "cannot write to standard output: {text}")?;
                if let Some(d) = done {
                    write!(f, "; {d} all the same")?;
                }
                Ok(())
            }
        }
    }
}

/// Result of a CLI step.
pub type CliResult<T> = Result<T, CliError>;

/// Writes one line to standard output.
pub fn line(args: fmt::Arguments) -> CliResult<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(CliError::stdout)
}

/// Writes whatever `print` writes to standard output through one buffer (a listing of a
/// million tensors is one write per 8 KiB, not per line).
pub fn buffered(print: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> CliResult<()> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    print(&mut out)
        .and_then(|()| out.flush())
        .map_err(CliError::stdout)
}

/// Writes a line to standard error, ignoring failure: there is nowhere left to report
/// it, and a diagnostic must never turn into a panic.
pub fn warn(args: fmt::Arguments) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// `path` as shown in a message when it names an output that was already written.
pub fn written(path: &Path) -> String {
    format!(
        "{} was written",
        super::report::shown(&path.display().to_string())
    )
}

/// `println!` through [`line`], returning the error from the enclosing function.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))?
    };
}
pub(crate) use outln;
