//! What a file in a model directory holds, by its first bytes and its extension (case
//! aside): a safetensors model deeplock locks, a key file it never copies, weights in a
//! format it cannot lock yet (which would ship in the clear), or anything else.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::Format;

/// What a file is, for locking a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A model file deeplock locks, in its format: locked or unlocked.
    Model(Format),
    /// A deeplock key file (32 hex characters): never copied into an output.
    Key,
    /// Model weights in a format deeplock does not lock yet: what they are.
    Weights(&'static str),
    /// Anything else (configuration, tokenizer, README): copied as it is.
    Other,
}

/// Extensions of weight formats deeplock cannot lock yet, and what they hold.
const WEIGHT_EXTENSIONS: [(&str, &str); 21] = [
    ("bin", "PyTorch weights"),
    ("pt", "PyTorch weights"),
    ("pth", "PyTorch weights"),
    ("ckpt", "a checkpoint"),
    ("tar", "an archive (possibly weights)"),
    ("h5", "Keras/HDF5 weights"),
    ("hdf5", "Keras/HDF5 weights"),
    ("keras", "a Keras model"),
    ("ort", "an ONNX Runtime model"),
    ("pb", "a TensorFlow graph"),
    ("ggml", "GGML weights"),
    ("npy", "a NumPy array"),
    ("npz", "NumPy arrays"),
    ("pkl", "a Python pickle"),
    ("pickle", "a Python pickle"),
    ("joblib", "a joblib pickle"),
    ("msgpack", "Flax weights"),
    ("ot", "libtorch weights"),
    ("mlmodel", "a Core ML model"),
    ("caffemodel", "Caffe weights"),
    ("pdparams", "PaddlePaddle weights"),
];

/// What the regular file at `path`, of `len` bytes, holds. Reads at most its first
/// 128 bytes, and the whole of a `.json` file that may be a TF.js `model.json`.
pub fn classify(path: &Path, len: u64) -> Result<Kind> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    if let Some(format) = crate::format::detect(&mut file, path)? {
        return Ok(Kind::Model(format));
    }
    let mut head = Vec::with_capacity(Format::HEAD_LEN);
    file.take(Format::HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if len <= 128 && looks_like_key(&head) {
        return Ok(Kind::Key);
    }
    if let Some(what) = weights_by_magic(&head) {
        return Ok(Kind::Weights(what));
    }
    if let Some(&(_, what)) = ext
        .as_deref()
        .and_then(|e| WEIGHT_EXTENSIONS.iter().find(|(x, _)| *x == e))
    {
        return Ok(Kind::Weights(what));
    }
    Ok(Kind::Other)
}

/// 32 hex characters, with white space around them at most (what keygen writes).
fn looks_like_key(head: &[u8]) -> bool {
    std::str::from_utf8(head).is_ok_and(|t| {
        let t = t.trim();
        t.len() == 32 && t.bytes().all(|c| c.is_ascii_hexdigit())
    })
}

fn weights_by_magic(head: &[u8]) -> Option<&'static str> {
    // torch.save's zip archive: its first entry is `<name>/data.pkl`.
    if head.starts_with(b"PK\x03\x04") {
        let name_len = usize::from(u16::from_le_bytes([*head.get(26)?, *head.get(27)?]));
        let name = head.get(30..30 + name_len.min(head.len().saturating_sub(30)))?;
        if name.ends_with(b"data.pkl") || name.ends_with(b"/version") {
            return Some("PyTorch weights");
        }
        return None;
    }
    let magics: [(&[u8], usize, &str); 3] = [
        (b"\x89HDF\r\n\x1a\n", 0, "Keras/HDF5 weights"),
        (b"\x93NUMPY", 0, "a NumPy array"),
        (b"\x80", 0, "a Python pickle, maybe PyTorch weights"),
    ];
    magics.iter().find_map(|&(magic, at, what)| {
        let hit = head.get(at..at + magic.len()) == Some(magic);
        // A pickle starts with PROTO (0x80) and a protocol number 2 to 5.
        let pickle_ok = magic != b"\x80" || head.get(1).is_some_and(|p| (2..=5).contains(p));
        (hit && pickle_ok).then_some(what)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(name: &str, bytes: &[u8]) -> Kind {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        classify(&p, bytes.len() as u64).unwrap()
    }

    #[test]
    fn recognises_models_keys_and_weights_by_content_and_any_case() {
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        let st_kind = Kind::Model(Format::Safetensors);
        assert_eq!(kind_of("model.SAFETENSORS", b"x"), st_kind);
        assert_eq!(kind_of("blob", &st), st_kind);
        assert_eq!(
            kind_of("k", b"000102030405060708090a0b0c0d0e0f\n"),
            Kind::Key
        );
        assert_eq!(
            kind_of("pytorch_model.BIN", b"anything"),
            Kind::Weights("PyTorch weights")
        );
        let mut zip = b"PK\x03\x04".to_vec();
        zip.extend_from_slice(&[0; 22]);
        zip.extend_from_slice(&16u16.to_le_bytes());
        zip.extend_from_slice(&[0; 2]);
        zip.extend_from_slice(b"archive/data.pkl");
        assert_eq!(kind_of("noext", &zip), Kind::Weights("PyTorch weights"));
        assert!(matches!(kind_of("x", b"\x80\x04\x95"), Kind::Weights(_)));
        assert!(matches!(
            kind_of("x", b"\x89HDF\r\n\x1a\n...."),
            Kind::Weights(_)
        ));
        assert_eq!(kind_of("config.json", b"{\"a\": 1}"), Kind::Other);
        assert_eq!(kind_of("README.md", b"\x80 text"), Kind::Other);
        assert_eq!(kind_of("tokenizer.zip", b"PK\x03\x04"), Kind::Other);
    }
}
