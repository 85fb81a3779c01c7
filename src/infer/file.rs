//! A model file opened for inference: its header planned against an architecture, the
//! cipher of each locked tensor, and the tensors' bytes read as they are stored. What
//! both runtimes load from: the CPU unlocks the bytes in memory and decodes them, the
//! GPU uploads them as they are.

use std::path::{Path, PathBuf};

use crate::authenticate::Checker;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::format;
use crate::infer::arch::Arch;
use crate::infer::plan::Plan;
use crate::key::MasterKey;
use crate::lock_info::LockInfo;
use crate::scheme::TensorCipher;

/// The cipher of each of the tensors `names` of the file at `path`, whose lock record
/// is `lock`: `Some` for those it lists as locked, `None` for the others and for every
/// tensor of a file that is not locked (a `key` given for one is not used). Errors if the
/// file is locked and there is no key. The key is not checked here: [`ModelFile::open`]
/// checks a v2 file's; for v1, a wrong one gives ciphers that decode garbage.
pub(crate) fn tensor_ciphers<'a>(
    path: &Path,
    lock: Option<&LockInfo>,
    key: Option<&MasterKey>,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Option<TensorCipher>>> {
    match (lock, key) {
        (None, _) => Ok(names.into_iter().map(|_| None).collect()),
        (Some(info), Some(key)) => Ok(info.ciphers(key, names)),
        (Some(_), None) => Err(Error::format(
            path,
            "the model is locked (it has deeplock metadata); pass the key it was locked with",
        )),
    }
}

/// A safetensors file opened for `arch`.
pub(crate) struct ModelFile {
    path: PathBuf,
    file: crate::format::ModelFiles,
    /// Where each of the plan's tensors lies in the file: (offset, bytes).
    spans: Vec<(u64, u64)>,
    /// Each of the plan's tensors' position in the container.
    entries: Vec<usize>,
    /// For a v2 file, its checked header, to check each tensor against as it is read.
    checker: Option<Checker>,
    /// The plan, from the header alone.
    pub(crate) plan: Plan,
    /// The cipher of each of the plan's tensors, `None` where it is not locked.
    pub(crate) ciphers: Vec<Option<TensorCipher>>,
}

impl ModelFile {
    /// Reads the header of the file at `path` and plans `arch` from it; a mismatch is
    /// the file's (a format error naming it). `check` sees each tensor's name and dtype
    /// first (the CPU refuses what it cannot decode). With `authenticate`, a v2 file's
    /// key and header are checked here and each tensor as it is read.
    pub(crate) fn open(
        path: &Path,
        arch: &Arch,
        key: Option<&MasterKey>,
        authenticate: bool,
        check: impl Fn(&str, Dtype) -> Result<()>,
    ) -> Result<Self> {
        // Any container format: the plan needs only its tensors' entries and places.
        let (file, container) = format::open_path(path)?;
        let lock = container.lock_record()?;
        // A v2 file's key and header are checked before anything is planned from it.
        let checker = match (&lock, key) {
            (Some(l), Some(k)) if authenticate && l.is_authenticated() => {
                Some(Checker::new(&*container, l, k, path)?)
            }
            _ => None,
        };
        let entries = container.tensors();
        for name in arch.tensor_names() {
            let entry = entries.iter().find(|t| t.name == name).ok_or_else(|| {
                Error::format(
                    path,
                    format!("no tensor {name:?}, which the architecture uses; list the file's tensors with `deeplock inspect {}`", path.display()),
                )
            })?;
            check(name, entry.dtype)?;
        }
        let plan =
            Plan::from_entries(arch, entries).map_err(|e| Error::format(path, e.to_string()))?;
        let positions: Vec<usize> = plan
            .tensors()
            .iter()
            .map(|t| {
                entries
                    .iter()
                    .position(|e| e.name == t.name)
                    .expect("planned from the header")
            })
            .collect();
        let spans = positions
            .iter()
            .map(|&i| {
                let r = container.byte_range(i);
                (r.start, r.end - r.start)
            })
            .collect();
        let ciphers = tensor_ciphers(
            path,
            lock.as_ref(),
            key,
            plan.tensors().iter().map(|t| t.name.as_str()),
        )?;
        Ok(ModelFile {
            path: path.to_owned(),
            file,
            spans,
            entries: positions,
            checker,
            plan,
            ciphers,
        })
    }

    /// Reads the bytes of the plan's tensor `i` as stored (locked or not) into `out`,
    /// which is [`crate::header::TensorEntry::bytes`] long; for a v2 file, checks them
    /// against the tensor's tag (on all cores) before they are used.
    pub(crate) fn read(&mut self, i: usize, out: &mut [u8]) -> Result<()> {
        let (offset, len) = self.spans[i];
        debug_assert_eq!(out.len() as u64, len);
        self.file.read_at(offset, out)?;
        match &self.checker {
            Some(c) => c.check_bytes(self.entries[i], out),
            None => Ok(()),
        }
    }

    /// The size of the plan's tensor `i` in memory, or an error naming the file if it
    /// cannot exist on this machine.
    pub(crate) fn len(&self, i: usize) -> Result<usize> {
        usize::try_from(self.spans[i].1).map_err(|_| {
            Error::format(
                &self.path,
                format!(
                    "tensor {:?} is too large for this machine",
                    self.plan.tensors()[i].name
                ),
            )
        })
    }
}
