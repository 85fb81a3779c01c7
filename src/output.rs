//! Safe outputs. An output is never the input, never inside it or above it, never the
//! key file, never anything but a regular file (or a directory, for directory outputs),
//! and never an existing path without `force`. It is written to a temporary sibling,
//! created owner-only, that is renamed into place only when complete, so a failure at
//! any point leaves no half-written file behind and the old output, if any, whole.
//!
//! Temporaries are named `.NAME.deeplock-tmp-PID-XXXXXX` and registered while they
//! exist: [`remove_temporaries_on_signals`] deletes them on SIGINT, SIGTERM and SIGHUP,
//! and [`sweep_stale`] finds those a killed process left (and removes them once their
//! process is gone).

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The absolute form of `p`, resolving `..` and links of its existing part.
fn resolve(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
    let base = parent
        .map(|d| d.canonicalize().unwrap_or_else(|_| d.to_path_buf()))
        .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
    match p.file_name() {
        Some(name) => base.join(name),
        // `.`, `..` or `/`: canonicalize failed only if it does not exist.
        None => base,
    }
}

/// Whether `a` and `b` are the same file (device and inode), links and spellings aside.
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (fs::metadata(a), fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
    }
}

/// What kind of thing `meta` describes, for messages.
pub fn kind(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// The error for a path that is neither a regular file nor a directory.
pub fn not_regular(path: &Path, meta: &fs::Metadata, inside: Option<&Path>) -> Error {
    let what = kind(meta);
    match inside {
        Some(dir) => Error::Invalid(format!(
            "{} is {what}, not a regular file; deeplock reads only regular files: move it out of {}",
            path.display(),
            dir.display()
        )),
        None => Error::Invalid(format!(
            "{} is {what}, not a regular file; pass a .safetensors file or a checkpoint directory",
            path.display()
        )),
    }
}

/// Checks that `output` may be written for `input` (a file, or a directory when
/// `input` is one): not the input or inside it or above it, not one of `protected`
/// (the key file) nor a directory holding one, not an existing path without `force`,
/// and, if it exists, of the input's kind (a regular file, or a directory).
pub fn check(input: &Path, output: &Path, force: bool, protected: &[PathBuf]) -> Result<()> {
    let (i, o) = (resolve(input), resolve(output));
    if i == o || same_file(input, output) {
        return Err(Error::OutputIsInput {
            path: output.to_path_buf(),
        });
    }
    let dir_input = input.is_dir();
    if dir_input && o.starts_with(&i) {
        return Err(Error::Invalid(format!(
            "the output {} is inside the input directory {}; write it elsewhere (inputs are never modified)",
            output.display(),
            input.display()
        )));
    }
    if i.starts_with(&o) {
        return Err(Error::Invalid(format!(
            "the output {} contains the input {}: replacing it would delete the input; write the output elsewhere",
            output.display(),
            input.display()
        )));
    }
    for key in protected {
        if same_file(key, output) {
            return Err(Error::Invalid(format!(
                "the output {} is the key file: replacing it would lose the key; write the output elsewhere",
                output.display()
            )));
        }
        if resolve(key).starts_with(&o) {
            return Err(Error::Invalid(format!(
                "the output {} contains the key file {}: replacing it would lose the key; write the output elsewhere",
                output.display(),
                key.display()
            )));
        }
    }
    let Ok(meta) = fs::symlink_metadata(output) else {
        return Ok(());
    };
    if !force {
        return Err(Error::OutputExists {
            path: output.to_path_buf(),
        });
    }
    let (fits, want) = if dir_input {
        (meta.is_dir(), "a directory")
    } else {
        (meta.is_file(), "a regular file")
    };
    if !fits {
        return Err(Error::Invalid(format!(
            "{} exists and is {}, not {want}; --force replaces only {want}: choose another output",
            output.display(),
            kind(&meta)
        )));
    }
    Ok(())
}

/// Checks that the file system holding `output` has room for `need` more bytes.
pub fn check_space(output: &Path, need: u64) -> Result<()> {
    let dir = parent_dir(output);
    if let Some(free) = free_space(dir) {
        if free < need {
            return Err(Error::Invalid(format!(
                "not enough space for {}: it needs {need} bytes and {} has {free} free; free some space or write the output elsewhere",
                output.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

#[cfg(unix)]
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `s` is a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `s`.
    let s = unsafe { s.assume_init() };
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Some(u64::from(s.f_bavail).saturating_mul(u64::from(s.f_frsize)))
}

#[cfg(not(unix))]
fn free_space(_: &Path) -> Option<u64> {
    None
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The marker in every temporary's name, after its target's name.
const TMP_MARK: &str = ".deeplock-tmp-";

fn temp_prefix(path: &Path) -> String {
    format!(
        ".{}{TMP_MARK}{}-",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    )
}

/// Temporaries this process is writing, removed on a signal: each as the directory it
/// is in and its name's prefix (which holds this process's id). Registered before the
/// temporary is created, so that a signal between creating it and registering it cannot
/// leave it behind; the random end of its name is not known until then.
static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A temporary's entry in [`TEMPORARIES`] (its directory joined with its prefix),
/// taken out when dropped.
struct Registered(PathBuf);

impl Registered {
    fn new(dir: &Path, prefix: &str) -> Self {
        let entry = dir.join(prefix);
        lock_temporaries().push(entry.clone());
        Registered(entry)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut list = lock_temporaries();
        if let Some(i) = list.iter().position(|p| p == &self.0) {
            list.swap_remove(i);
        }
    }
}

fn lock_temporaries() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic elsewhere while holding it leaves a list that is still right.
    TEMPORARIES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a temporary file or directory, whatever is being written into it.
fn remove_temporary(path: &Path) {
    for _ in 0..8 {
        let gone = match fs::symlink_metadata(path) {
            Err(_) => return,
            Ok(m) if m.is_dir() => fs::remove_dir_all(path),
            Ok(_) => fs::remove_file(path),
        };
        if gone.is_ok() {
            return;
        }
    }
}

/// Installs handlers for SIGINT, SIGTERM and SIGHUP that remove every temporary this
/// process is writing, then end the process as the signal would have. For programs
/// (the CLI); a library user who handles signals itself can call
/// [`remove_temporaries`] from its own handler thread instead.
#[cfg(unix)]
pub fn remove_temporaries_on_signals() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| Error::Invalid(format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("deeplock-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                remove_temporaries();
                // Ends the process with the signal's default action, so the exit
                // status says what happened.
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        })
        .map_err(|e| Error::Invalid(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

/// Removes every temporary this process is writing now (see
/// [`remove_temporaries_on_signals`]).
pub fn remove_temporaries() {
    for entry in lock_temporaries().iter() {
        remove_registered(entry);
    }
}

/// Removes what the entry `dir/prefix` of [`TEMPORARIES`] names: every file or
/// directory in `dir` whose name starts with `prefix`.
fn remove_registered(entry: &Path) {
    let (Some(dir), Some(prefix)) = (entry.parent(), entry.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(names) = fs::read_dir(dir) else {
        return;
    };
    for name in names.flatten() {
        if name
            .file_name()
            .as_encoded_bytes()
            .starts_with(prefix.as_encoded_bytes())
        {
            remove_temporary(&name.path());
        }
    }
}

/// A temporary of an earlier deeplock run found beside an output.
#[derive(Clone, Debug)]
pub struct Stale {
    /// The temporary file or directory.
    pub path: PathBuf,
    /// The process that made it, if its name says.
    pub pid: Option<u32>,
    /// Whether it was removed (its process is gone); otherwise it is left alone.
    pub removed: bool,
}

/// Finds the temporaries that earlier deeplock runs left in the directory of `output`
/// (killed before they could clean up) and removes those whose process is gone.
/// Temporaries of running processes, and of other users, are reported but kept.
pub fn sweep_stale(output: &Path) -> Vec<Stale> {
    let dir = parent_dir(output);
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(at) = name.find(TMP_MARK).filter(|_| name.starts_with('.')) else {
            continue;
        };
        let pid = name[at + TMP_MARK.len()..]
            .split_once('-')
            .and_then(|(p, _)| p.parse::<u32>().ok());
        if pid == Some(std::process::id()) {
            continue;
        }
        // Named as the user named the output's directory (`x`, not `./x`).
        let path = match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => entry.path(),
            _ => PathBuf::from(entry.file_name()),
        };
        let removable = pid.is_some_and(|p| !process_alive(p)) && owned_by_me(&path);
        if removable {
            remove_temporary(&path);
        }
        let removed = removable && fs::symlink_metadata(&path).is_err();
        found.push(Stale { path, pid, removed });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only asks whether the process exists.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    // EPERM: it exists, as another user's.
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn process_alive(_: u32) -> bool {
    true
}

#[cfg(unix)]
fn owned_by_me(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    fs::symlink_metadata(path).is_ok_and(|m| m.uid() == me)
}

#[cfg(not(unix))]
fn owned_by_me(_: &Path) -> bool {
    false
}

/// Who may read an output.
#[derive(Clone, Debug)]
pub enum Access {
    /// Owner only (0600 files, 0700 directories): for plaintext an unlock produces.
    Private,
    /// Readable by everyone, writable by the owner (0644): reports, plots.
    Readable,
    /// The permissions of this existing path (a locked model is meant to be shipped,
    /// so it may be as readable as its input was).
    Like(PathBuf),
}

impl Access {
    /// Applies to `path` (a finished temporary file or directory, or an entry of one).
    pub fn apply(&self, path: &Path) -> Result<()> {
        match self {
            // Temporaries and everything in them are created owner-only already.
            Access::Private => Ok(()),
            Access::Readable => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let perms = fs::Permissions::from_mode(0o644);
                    fs::set_permissions(path, perms).map_err(|e| Error::io(path, e))?;
                }
                Ok(())
            }
            Access::Like(model) => {
                let meta = fs::metadata(model).map_err(|e| Error::io(model, e))?;
                #[allow(unused_mut)]
                let mut perms = meta.permissions();
                // A file made beside a directory's contents (a checkpoint's record)
                // takes the directory's read and write bits, not its search bits.
                #[cfg(unix)]
                if meta.is_dir() && !path.is_dir() {
                    use std::os::unix::fs::PermissionsExt;
                    perms.set_mode(perms.mode() & 0o666);
                }
                fs::set_permissions(path, perms).map_err(|e| Error::io(path, e))
            }
        }
    }
}

/// Creates a new file (never an existing one) readable and writable by its owner only.
pub fn create_private_file(path: &Path) -> Result<File> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).read(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|e| Error::io(path, e))
}

/// Creates `path` and its missing parents as owner-only directories.
pub fn create_private_dirs(path: &Path) -> Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path).map_err(|e| Error::io(path, e))
}

fn exists_error(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == ErrorKind::AlreadyExists || e.raw_os_error() == Some(ENOTEMPTY) {
        Error::OutputExists {
            path: path.to_path_buf(),
        }
    } else {
        Error::io(path, e)
    }
}

#[cfg(unix)]
const ENOTEMPTY: i32 = libc::ENOTEMPTY;
#[cfg(not(unix))]
const ENOTEMPTY: i32 = -1;

/// Writes the file `path` through `write`, into a temporary file beside it (created
/// owner-only) that is synced, given `access`, and renamed over `path` only if `write`
/// succeeds. Without `force` an existing `path` is never replaced, even if it appears
/// while writing.
pub fn write_file<T>(
    path: &Path,
    force: bool,
    access: &Access,
    write: impl FnOnce(&mut File) -> Result<T>,
) -> Result<T> {
    write_files(&[path.to_path_buf()], force, access, |files| {
        write(&mut files[0])
    })
}

/// Makes the missing directories that `paths` (below `base`, joined with plain relative
/// names) need, with the default permissions (the files written into them get their
/// own), and returns them, deepest last, for [`remove_made`]. Nothing above `base` is
/// made: an output's own directory must exist, as for any output.
pub fn make_parents(base: &Path, paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    for p in paths {
        let mut missing = Vec::new();
        let mut at = p.parent();
        while let Some(d) = at {
            if d.as_os_str().is_empty() || d == base || d.exists() {
                break;
            }
            missing.push(d.to_path_buf());
            at = d.parent();
        }
        for d in missing.into_iter().rev() {
            match fs::create_dir(&d) {
                Ok(()) => made.push(d),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => {
                    remove_made(&made);
                    return Err(Error::io(&d, e));
                }
            }
        }
    }
    Ok(made)
}

/// Removes the directories [`make_parents`] made, deepest first, where they are still
/// empty.
pub fn remove_made(made: &[PathBuf]) {
    for d in made.iter().rev() {
        let _ = fs::remove_dir(d);
    }
}

/// Writes the files `paths` through `write` as [`write_file`] writes one (a model of
/// several files: a TF.js `model.json` and its weight files): each into a temporary
/// beside it, and all renamed into place only once `write` succeeded and every one was
/// synced. Without `force` no existing path is replaced; if a rename fails, the files
/// already renamed are removed again, so that no part of the set is left behind.
pub fn write_files<T>(
    paths: &[PathBuf],
    force: bool,
    access: &Access,
    write: impl FnOnce(&mut [File]) -> Result<T>,
) -> Result<T> {
    let mut registered = Vec::with_capacity(paths.len());
    let (mut files, mut temps) = (Vec::new(), Vec::new());
    for path in paths {
        let dir = parent_dir(path);
        let prefix = temp_prefix(path);
        registered.push(Registered::new(dir, &prefix));
        let (file, temp) = tempfile::Builder::new()
            .prefix(&prefix)
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, e))?
            .into_parts();
        files.push(file);
        temps.push(temp);
    }
    let value = write(&mut files)?;
    for ((file, temp), path) in files.iter().zip(&temps).zip(paths) {
        file.sync_all().map_err(|e| Error::io(path, e))?;
        access.apply(temp)?;
    }
    drop(files);
    let mut done: Vec<&Path> = Vec::new();
    for (temp, path) in temps.into_iter().zip(paths) {
        let persisted = if force {
            temp.persist(path).map(drop)
        } else {
            temp.persist_noclobber(path).map(drop)
        };
        if let Err(e) = persisted {
            for p in done {
                let _ = fs::remove_file(p);
            }
            return Err(exists_error(path, e.error));
        }
        done.push(path);
    }
    Ok(value)
}

/// Builds the directory `path` through `fill`, in a temporary directory beside it
/// (owner-only; create entries in it with [`create_private_file`] and
/// [`create_private_dirs`]) that is given `access` and moved to `path` only if `fill`
/// succeeds. With `force` an existing directory is replaced atomically: the new one is
/// exchanged with it in one rename where the system can (Linux), else the old one is
/// moved aside first and back on failure; only then is the old one deleted.
pub fn write_dir<T>(
    path: &Path,
    force: bool,
    access: &Access,
    fill: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let dir = parent_dir(path);
    let prefix = temp_prefix(path);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o700));
    }
    let _registered = Registered::new(dir, &prefix);
    let tmp = builder.tempdir_in(dir).map_err(|e| Error::io(dir, e))?;
    let value = fill(tmp.path())?;
    access.apply(tmp.path())?;
    let exists = fs::symlink_metadata(path).is_ok();
    if exists && !force {
        return Err(Error::OutputExists {
            path: path.to_path_buf(),
        });
    }
    if exists {
        replace_dir(tmp.path(), path)?;
        // `tmp` now holds the old output: dropping it deletes it.
    } else {
        rename_noreplace(tmp.path(), path).map_err(|e| exists_error(path, e))?;
        // Moved: nothing left to delete.
        let _ = tmp.keep();
    }
    Ok(value)
}

/// Puts the directory `new` at `old`'s place, and `old`'s contents at `new`.
fn replace_dir(new: &Path, old: &Path) -> Result<()> {
    if !fs::symlink_metadata(old).is_ok_and(|m| m.is_dir()) {
        return Err(Error::Invalid(format!(
            "{} is not a directory; --force replaces only a directory with a directory: choose another output",
            old.display()
        )));
    }
    match exchange(new, old) {
        Ok(()) => return Ok(()),
        Err(e) if !exchange_unsupported(&e) => return Err(Error::io(old, e)),
        Err(_) => {}
    }
    // No atomic exchange here: move the old one aside, the new one in, and the old one
    // back if that fails; the old one then sits where `new` was, to be deleted.
    let aside = PathBuf::from(format!("{}.old", new.display()));
    fs::rename(old, &aside).map_err(|e| Error::io(old, e))?;
    if let Err(e) = fs::rename(new, old) {
        let _ = fs::rename(&aside, old);
        return Err(Error::io(old, e));
    }
    fs::rename(&aside, new).map_err(|e| Error::io(&aside, e))
}

#[cfg(target_os = "linux")]
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated; AT_FDCWD resolves them like rename(2).
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    renameat2(a, b, libc::RENAME_EXCHANGE)
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(ErrorKind::Unsupported.into())
}

fn exchange_unsupported(e: &std::io::Error) -> bool {
    #[cfg(target_os = "linux")]
    if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
        return true;
    }
    e.kind() == ErrorKind::Unsupported
}

/// Renames `from` to `to`, failing if `to` exists (even as an empty directory, which a
/// plain rename would replace).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    match renameat2(from, to, libc::RENAME_NOREPLACE) {
        Err(e) if exchange_unsupported(&e) => {}
        r => return r,
    }
    if fs::symlink_metadata(to).is_ok() {
        return Err(ErrorKind::AlreadyExists.into());
    }
    fs::rename(from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_replaced_whole_and_the_old_one_removed() {
        let top = tempfile::tempdir().unwrap();
        let out = top.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("old"), "old").unwrap();
        write_dir(&out, true, &Access::Private, |tmp| {
            fs::write(tmp.join("new"), "new").map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        assert_eq!(fs::read_to_string(out.join("new")).unwrap(), "new");
        assert!(!out.join("old").exists());
        let left: Vec<_> = fs::read_dir(top.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary left beside the output");
    }

    #[test]
    fn a_failed_fill_leaves_the_old_directory_and_no_temporary() {
        let top = tempfile::tempdir().unwrap();
        let out = top.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("old"), "old").unwrap();
        let r: Result<()> = write_dir(&out, true, &Access::Private, |_| {
            Err(Error::Invalid("boom".into()))
        });
        assert!(r.is_err());
        assert_eq!(fs::read_to_string(out.join("old")).unwrap(), "old");
        assert_eq!(fs::read_dir(top.path()).unwrap().count(), 1);
    }

    #[test]
    fn without_force_an_empty_directory_that_appeared_is_not_replaced() {
        let top = tempfile::tempdir().unwrap();
        let out = top.path().join("out");
        let r = write_dir(&out, false, &Access::Private, |_| {
            fs::create_dir(&out).unwrap();
            Ok(())
        });
        assert!(matches!(r, Err(Error::OutputExists { .. })), "{r:?}");
        assert_eq!(fs::read_dir(top.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_run_that_cannot_fit_is_refused_naming_the_output() {
        let top = tempfile::tempdir().unwrap();
        let out = top.path().join("big.safetensors");
        let e = check_space(&out, u64::MAX / 2).unwrap_err().to_string();
        assert!(
            e.contains("not enough space for") && e.contains("big.safetensors"),
            "{e}"
        );
        check_space(&out, 1).unwrap();
    }

    #[test]
    fn temporaries_are_registered_while_they_exist() {
        let top = tempfile::tempdir().unwrap();
        let out = top.path().join("f");
        write_file(&out, false, &Access::Private, |_| {
            let mine: Vec<PathBuf> = lock_temporaries()
                .iter()
                .filter(|p| p.parent() == Some(top.path()))
                .cloned()
                .collect();
            assert_eq!(mine.len(), 1);
            // What a signal does now (for this test's entry alone: other tests write
            // temporaries in this process too): the temporary goes, the write fails.
            remove_registered(&mine[0]);
            assert_eq!(fs::read_dir(top.path()).unwrap().count(), 0);
            Ok(())
        })
        .unwrap_err();
        assert!(!lock_temporaries()
            .iter()
            .any(|p| p.parent() == Some(top.path())));
    }

    #[cfg(unix)]
    #[test]
    fn stale_temporaries_of_dead_processes_are_removed_others_kept() {
        let top = tempfile::tempdir().unwrap();
        // PIDs above the kernel's maximum (4194304) never run.
        let dead = top
            .path()
            .join(".m.safetensors.deeplock-tmp-99999999-abc123");
        let alive = top.path().join(format!(
            ".m.safetensors.deeplock-tmp-{}-abc123",
            std::os::unix::process::parent_id()
        ));
        let old_style = top.path().join(".m.safetensors.deeplock-tmp-Ab3xYz");
        for p in [&dead, &alive, &old_style] {
            fs::write(p, "x").unwrap();
        }
        let found = sweep_stale(&top.path().join("out"));
        let by = |p: &Path| found.iter().find(|s| s.path == p).unwrap().clone();
        assert!(by(&dead).removed && !dead.exists());
        assert!(!by(&alive).removed && alive.exists());
        assert!(!by(&old_style).removed && old_style.exists());
        assert_eq!(by(&old_style).pid, None);
    }
}
