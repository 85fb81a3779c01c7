//! The crate's error type. Every message is one line that says what is wrong and what
//! to do about it; none ever contains key material.

use std::path::PathBuf;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong, each with a message fit to show a user as it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key's text form is malformed (the message never echoes the key).
    #[error("bad key: {0}; create one with `deeplock keygen -o KEYFILE`")]
    BadKey(String),
    /// The key's check value does not match the one stored in the locked file.
    #[error("wrong key: {path} was locked with a different key (key check value mismatch); pass the key file it was locked with (if it is the right key, the file's salt or key check value was changed)")]
    WrongKey {
        /// The locked file.
        path: PathBuf,
    },
    /// A v2 tag does not match: the file's bytes or header changed after locking.
    #[error("{what} in {path} was modified after locking (authentication failed); nothing was written: do not use this copy, get the locked model again from where it came from")]
    Tampered {
        /// The file.
        path: PathBuf,
        /// What failed: `tensor "fc1.weight"`, `the header`, ...
        what: String,
    },
    /// A loader was given a file locked with scheme v1, which carries no tags: its
    /// tensors could have been changed without notice.
    #[error("{path} was locked with scheme v1, which carries no authentication, so loaders refuse it; add tags to a copy you trust with `deeplock upgrade`")]
    Unauthenticated {
        /// The file.
        path: PathBuf,
    },
    /// Lock was asked of a file that is already locked.
    #[error("{path} is already locked (it has deeplock metadata); unlock it first, or lock the original file")]
    AlreadyLocked {
        /// The file.
        path: PathBuf,
    },
    /// Unlock or verify was asked of a file that is not locked.
    #[error("{path} is not locked (no deeplock metadata); nothing to unlock")]
    NotLocked {
        /// The file.
        path: PathBuf,
    },
    /// A file is malformed: not a valid safetensors file, malformed deeplock metadata,
    /// a bad IDX data set file, or a model that does not fit its architecture.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// An operating-system I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file the operation needs does not exist; `hint` says how to get it.
    #[error("{path} does not exist; {hint}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// What to install or pass.
        hint: String,
    },
    /// The output exists and overwriting was not asked for.
    #[error("{path} already exists; choose another output or pass --force to overwrite it")]
    OutputExists {
        /// The output path.
        path: PathBuf,
    },
    /// Output and input name the same file or directory.
    #[error(
        "the output {path} is the input; write to a different path (inputs are never modified)"
    )]
    OutputIsInput {
        /// The path.
        path: PathBuf,
    },
    /// A checkpoint directory's shards do not agree with its record, or cannot be
    /// joined by one.
    #[error("checkpoint {dir}: {reason}; nothing was written")]
    Checkpoint {
        /// The directory.
        dir: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A directory to lock holds weight files deeplock cannot lock, which would ship in
    /// the clear beside the locked model.
    #[error("{} holds weight files deeplock cannot lock, which would ship in the clear: {}; leave them out or allow them knowingly (deeplock lock --exclude GLOB, --allow-plaintext GLOB)", dir.display(), list_files(files))]
    Plaintext {
        /// The directory.
        dir: PathBuf,
        /// Each file, relative to it, and what it holds.
        files: Vec<(PathBuf, &'static str)>,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
    /// No usable GPU adapter, or a GPU operation failed.
    #[error("GPU: {0}")]
    Gpu(String),
    /// An argument is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// The first few of `files`, for a one-line message.
fn list_files(files: &[(PathBuf, &'static str)]) -> String {
    const SHOWN: usize = 5;
    let mut s: Vec<String> = files
        .iter()
        .take(SHOWN)
        .map(|(p, what)| format!("{} ({what})", p.display()))
        .collect();
    if files.len() > SHOWN {
        s.push(format!("and {} more", files.len() - SHOWN));
    }
    s.join(", ")
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A format error on `path`.
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
