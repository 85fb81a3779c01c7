//! MNIST-format data sets (MNIST, Fashion-MNIST) read from IDX files, gzipped as Debian
//! ships them (`.gz`) or plain, validated once at parse time.
//!
//! An IDX file is a big-endian header (magic `0x0000_08DD`, where `08` says unsigned
//! bytes and `DD` is the number of dimensions, then one `u32` per dimension) followed by
//! the values. Images are `0x0000_0803` (count, rows, cols), labels `0x0000_0801`
//! (count). Every size is computed with checked arithmetic and the payload must be
//! exactly as long as the header says, so a truncated, oversized or mislabelled file is
//! refused here, with one line saying what is wrong, and never reaches a model.
//!
//! Gzip is recognised by its magic bytes (`1f 8b`), not by the file name: an IDX file
//! starts with two zero bytes, so the two cannot be confused.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::error::{Error, Result};
use crate::infer::{accuracy, Model, Shape};

/// Where Debian's `dataset-fashion-mnist` package installs Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// What to do when Fashion-MNIST is missing, appended to the error.
pub const FASHION_MNIST_HINT: &str =
    "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)";

/// Magic number of an IDX file of unsigned bytes in 3 dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes in 1 dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Number of classes of an MNIST-format data set; every label is below it.
pub const CLASSES: usize = 10;

/// Largest payload accepted, in bytes (the Fashion-MNIST training images are 47 MB):
/// a corrupt header cannot make the loader allocate without bound.
pub const MAX_PAYLOAD: usize = 1 << 30;

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; CLASSES] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Which half of an MNIST-format data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training set (`train-*`, 60,000 images).
    Train,
    /// The test set (`t10k-*`, 10,000 images).
    Test,
}

impl Split {
    /// The file-name prefix of the split.
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Images and their labels, checked to match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Rows of every image.
    pub rows: usize,
    /// Columns of every image.
    pub cols: usize,
    /// The pixels, image after image, row-major, 0 (background) to 255.
    pub pixels: Vec<u8>,
    /// One label per image, each below [`CLASSES`].
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Reads and checks an images file and a labels file (each gzipped or plain).
    pub fn read(images: &Path, labels: &Path) -> Result<Self> {
        let (rows, cols, pixels) = read_images(images)?;
        let labels_v = read_labels(labels)?;
        let count = pixels.len() / (rows * cols);
        if count != labels_v.len() {
            return Err(Error::format(
                labels,
                format!(
                    "{} labels for {count} images in {}; the two files belong to different data sets",
                    labels_v.len(),
                    images.display()
                ),
            ));
        }
        Ok(Dataset {
            rows,
            cols,
            pixels,
            labels: labels_v,
        })
    }

    /// One split of an MNIST-format data set kept as Debian keeps it:
    /// `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` in `dir`. A missing file is
    /// reported with `hint` (what to install).
    pub fn read_dir(dir: &Path, split: Split, hint: &str) -> Result<Self> {
        let file = |kind: &str| -> Result<PathBuf> {
            let p = dir.join(format!("{}-{kind}-ubyte.gz", split.prefix()));
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::Missing {
                    path: p,
                    hint: hint.to_owned(),
                })
            }
        };
        Self::read(&file("images-idx3")?, &file("labels-idx1")?)
    }

    /// Fashion-MNIST from [`FASHION_MNIST_DIR`].
    pub fn fashion_mnist(split: Split) -> Result<Self> {
        Self::read_dir(Path::new(FASHION_MNIST_DIR), split, FASHION_MNIST_HINT)
    }

    /// Whether Fashion-MNIST's files are installed in [`FASHION_MNIST_DIR`].
    pub fn fashion_mnist_installed() -> bool {
        [Split::Train, Split::Test].iter().all(|s| {
            ["images-idx3", "labels-idx1"].iter().all(|k| {
                Path::new(FASHION_MNIST_DIR)
                    .join(format!("{}-{k}-ubyte.gz", s.prefix()))
                    .exists()
            })
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of one image.
    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.pixels[index * n..(index + 1) * n]
    }

    /// Images `range` as a batch of f32 scaled to [0, 1], NCHW with one channel:
    /// `[range.len(), 1, rows, cols]` row-major, the input layout of [`crate::infer`].
    pub fn batch_f32(&self, range: std::ops::Range<usize>) -> Vec<f32> {
        let n = self.rows * self.cols;
        self.pixels[range.start * n..range.end * n]
            .iter()
            .map(|&p| f32::from(p) / 255.0)
            .collect()
    }

    /// The accuracy of `model` (the CPU reference) on images `range` (scaled to [0, 1]),
    /// which must be of the model's input shape `[1, rows, cols]`.
    pub fn evaluate(&self, model: &Model, range: std::ops::Range<usize>) -> Result<f64> {
        let want = Shape::Image([1, self.rows, self.cols]);
        if model.input_shape() != want {
            return Err(Error::Invalid(format!(
                "the model takes inputs of shape {:?}, the data set's images are {want:?}",
                model.input_shape()
            )));
        }
        if range.start > range.end || range.end > self.len() {
            return Err(Error::Invalid(format!(
                "images {range:?} asked of a data set of {}",
                self.len()
            )));
        }
        let predictions = model.predict(&self.batch_f32(range.clone()), range.len())?;
        Ok(accuracy(&predictions, &self.labels[range]))
    }
}

/// Opens `path` for reading, decompressing it if it is gzipped.
fn open(path: &Path) -> Result<Box<dyn Read>> {
    let mut file = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
    let mut magic = [0u8; 2];
    let n = read_full(&mut file, &mut magic).map_err(|e| Error::io(path, e))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(GzDecoder::new(head.chain(file))))
    } else {
        Ok(Box::new(head.chain(file)))
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Parses an IDX file of unsigned bytes with `magic` from `r`: returns its dimensions
/// and its payload, exactly as long as they say.
fn parse_idx(
    r: &mut dyn Read,
    magic: u32,
    what: &str,
) -> std::result::Result<(Vec<usize>, Vec<u8>), String> {
    let io =
        |e: std::io::Error| format!("unreadable {what} file: {e} (corrupt or truncated gzip?)");
    let mut m = [0u8; 4];
    let got = read_full(r, &mut m).map_err(io)?;
    if got < 4 {
        return Err(format!(
            "truncated: {got} bytes, shorter than the 4-byte IDX magic number"
        ));
    }
    let found = u32::from_be_bytes(m);
    if found != magic {
        return Err(format!(
            "not an IDX {what} file: magic number {found:#010x}, expected {magic:#010x} (is this the {what} file of an MNIST-format data set?)"
        ));
    }
    let ndim = (magic & 0xff) as usize;
    let mut dims = Vec::with_capacity(ndim);
    for i in 0..ndim {
        let mut d = [0u8; 4];
        if read_full(r, &mut d).map_err(io)? < 4 {
            return Err(format!(
                "truncated: the header ends before dimension {} of {ndim}",
                i + 1
            ));
        }
        dims.push(u32::from_be_bytes(d) as usize);
    }
    let len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_PAYLOAD)
        .ok_or_else(|| {
            format!("dimensions {dims:?} need more than {MAX_PAYLOAD} bytes (corrupt header)")
        })?;
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload).map_err(io)?;
    if got < len {
        return Err(format!(
            "truncated: dimensions {dims:?} need {len} bytes of data, the file holds {got}"
        ));
    }
    if read_full(r, &mut [0u8; 1]).map_err(io)? != 0 {
        return Err(format!(
            "more data follows the {len} bytes that dimensions {dims:?} describe (corrupt file, or wrong dimensions)"
        ));
    }
    Ok((dims, payload))
}

/// Parses an IDX images file from `r` (decompressed already: [`read_images`] opens
/// gzipped files); `path` names it in errors.
/// Returns rows, columns and the pixels of every image.
pub fn parse_images(r: &mut dyn Read, path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let (dims, pixels) =
        parse_idx(r, IMAGES_MAGIC, "images").map_err(|e| Error::format(path, e))?;
    let (rows, cols) = (dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(Error::format(
            path,
            format!(
                "images of {rows}x{cols} pixels: every image needs at least one (corrupt header)"
            ),
        ));
    }
    Ok((rows, cols, pixels))
}

/// Parses an IDX labels file from `r` (decompressed already: [`read_labels`] opens
/// gzipped files); `path` names it in errors. Every label must be
/// below [`CLASSES`].
pub fn parse_labels(r: &mut dyn Read, path: &Path) -> Result<Vec<u8>> {
    let (_, labels) = parse_idx(r, LABELS_MAGIC, "labels").map_err(|e| Error::format(path, e))?;
    if let Some(i) = labels.iter().position(|&l| usize::from(l) >= CLASSES) {
        return Err(Error::format(
            path,
            format!(
                "label {} of image {i} is not a class (0 to {}): not an MNIST-format labels file",
                labels[i],
                CLASSES - 1
            ),
        ));
    }
    Ok(labels)
}

/// Reads an IDX images file, gzipped or plain.
pub fn read_images(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    parse_images(&mut open(path)?, path)
}

/// Reads an IDX labels file, gzipped or plain.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    parse_labels(&mut open(path)?, path)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// An IDX file: `magic`, `dims`, then `payload`.
    fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut b = magic.to_be_bytes().to_vec();
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend(payload);
        b
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Writes `bytes` to `name` in `dir`.
    fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn images_err(bytes: &[u8]) -> String {
        parse_images(&mut &bytes[..], Path::new("i"))
            .unwrap_err()
            .to_string()
    }

    fn labels_err(bytes: &[u8]) -> String {
        parse_labels(&mut &bytes[..], Path::new("l"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn reads_gzipped_and_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..3 * 2 * 4).map(|i| i * 10).collect();
        let images = idx(IMAGES_MAGIC, &[3, 2, 4], &pixels);
        let labels = idx(LABELS_MAGIC, &[3], &[9, 0, 4]);
        let expect = Dataset {
            rows: 2,
            cols: 4,
            pixels: pixels.clone(),
            labels: vec![9, 0, 4],
        };
        let (i, l) = (
            file(dir.path(), "i", &images),
            file(dir.path(), "l", &labels),
        );
        assert_eq!(Dataset::read(&i, &l).unwrap(), expect);
        let (i, l) = (
            file(dir.path(), "i.gz", &gzip(&images)),
            file(dir.path(), "l.gz", &gzip(&labels)),
        );
        let d = Dataset::read(&i, &l).unwrap();
        assert_eq!(d, expect);
        assert_eq!(d.image(1), &pixels[8..16]);
        assert_eq!(d.batch_f32(2..3)[1], 170.0 / 255.0);
        assert_eq!(d.batch_f32(0..3).len(), 24);
    }

    #[test]
    fn rejects_truncated_and_oversized_files() {
        let good = idx(IMAGES_MAGIC, &[2, 2, 2], &[7; 8]);
        assert!(images_err(&good[..3]).contains("truncated: 3 bytes"));
        assert!(images_err(&good[..9]).contains("before dimension 2 of 3"));
        assert!(
            images_err(&good[..good.len() - 1]).contains("need 8 bytes of data, the file holds 7")
        );
        let mut long = good.clone();
        long.push(0);
        assert!(images_err(&long).contains("more data follows the 8 bytes"));
        let e = images_err(&idx(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[]));
        assert!(e.contains("corrupt header"), "{e}");
        assert!(images_err(&idx(IMAGES_MAGIC, &[1, 0, 5], &[])).contains("0x5 pixels"));

        // A gzip stream cut short is an error, not a short file read as complete.
        let dir = tempfile::tempdir().unwrap();
        let gz = gzip(&idx(IMAGES_MAGIC, &[100, 28, 28], &vec![3; 78400]));
        let p = file(dir.path(), "cut.gz", &gz[..gz.len() - 20]);
        let e = read_images(&p).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: ", p.display())), "{e}");
        assert!(e.contains("truncated") || e.contains("unreadable"), "{e}");
    }

    #[test]
    fn rejects_wrong_magic_bad_labels_and_count_mismatch() {
        let labels = idx(LABELS_MAGIC, &[2], &[1, 2]);
        let e = images_err(&labels);
        assert!(
            e.contains("magic number 0x00000801, expected 0x00000803"),
            "{e}"
        );
        assert!(labels_err(&idx(IMAGES_MAGIC, &[1, 1, 1], &[0])).contains("not an IDX labels file"));
        assert!(images_err(b"\x1f\x8b\x08\x00").contains("magic"));
        let e = labels_err(&idx(LABELS_MAGIC, &[3], &[1, 10, 2]));
        assert!(
            e.contains("label 10 of image 1 is not a class (0 to 9)"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let i = file(dir.path(), "i", &idx(IMAGES_MAGIC, &[3, 1, 1], &[0; 3]));
        let l = file(dir.path(), "l", &labels);
        let e = Dataset::read(&i, &l).unwrap_err().to_string();
        assert!(e.contains("2 labels for 3 images"), "{e}");
        let e = Dataset::read_dir(dir.path(), Split::Test, FASHION_MNIST_HINT)
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with(&format!(
                "t10k-images-idx3-ubyte.gz does not exist; {FASHION_MNIST_HINT}"
            )),
            "{e}"
        );
    }

    #[test]
    fn reads_the_real_fashion_mnist_test_set() {
        if !Dataset::fashion_mnist_installed() {
            // scripts/test.sh installs it and sets DEEPLOCK_REQUIRE_DATA=1, so CI never skips.
            assert!(
                std::env::var_os("DEEPLOCK_REQUIRE_DATA").is_none_or(|v| v != "1"),
                "DEEPLOCK_REQUIRE_DATA=1 but Fashion-MNIST is missing: {FASHION_MNIST_HINT}"
            );
            eprintln!("skipped: Fashion-MNIST is not installed; {FASHION_MNIST_HINT}");
            return;
        }
        let d = Dataset::fashion_mnist(Split::Test).unwrap();
        assert_eq!((d.len(), d.rows, d.cols), (10_000, 28, 28));
        let mut per_class = [0usize; CLASSES];
        for &l in &d.labels {
            per_class[usize::from(l)] += 1;
        }
        assert_eq!(per_class, [1000; CLASSES]);
        assert!(d.pixels.contains(&255) && d.pixels.contains(&0));
    }
}
