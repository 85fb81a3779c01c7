//! TensorFlow Lite models through the CLI and the library, on a tiny flatbuffer built
//! here per schema.fbs (a FULLY_CONNECTED layer, a buffer shared by two tensors, one used
//! by none, a metadata buffer and one stored after the flatbuffer by offset and size):
//! lock, verify, unlock byte for byte, in memory, `--only`, and every tamper refused with
//! nothing written; and the parser never panics on mutated files.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use deeplock::format::tflite::Tflite;
use deeplock::format::Container;
use rand::{Rng, SeedableRng};

/// A field value of a table being built.
#[derive(Clone, Copy)]
enum V {
    U8(u8),
    U32(u32),
    U64(u64),
    Ref(usize),
}

/// A flatbuffer written front to back: every offset points forward, to a label bound
/// later.
#[derive(Default)]
struct Builder {
    buf: Vec<u8>,
    refs: Vec<(usize, usize)>,
    labels: Vec<Option<usize>>,
    marks: HashMap<String, usize>,
}

impl Builder {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.buf.len());
    }
    fn align(&mut self, a: usize, plus: usize) {
        while !(self.buf.len() + plus).is_multiple_of(a) {
            self.buf.push(0);
        }
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn reference(&mut self, l: usize) {
        self.refs.push((self.buf.len(), l));
        self.u32(0);
    }
    /// A table at label `l` with `fields` (slot, value); `mark` names where each field
    /// lies, as `mark.slot`.
    fn table(&mut self, l: usize, fields: &[(usize, V)], mark: &str) {
        let mut at = 4usize;
        let mut offs = Vec::new();
        let mut sorted: Vec<&(usize, V)> = fields.iter().collect();
        sorted.sort_by_key(|(_, v)| match v {
            V::U64(_) => 0,
            V::U32(_) | V::Ref(_) => 1,
            V::U8(_) => 2,
        });
        for (slot, v) in sorted {
            let size = match v {
                V::U64(_) => 8,
                V::U32(_) | V::Ref(_) => 4,
                V::U8(_) => 1,
            };
            at = at.div_ceil(size) * size;
            offs.push((*slot, at, *v));
            at += size;
        }
        let size = at.div_ceil(4) * 4;
        let n = fields.iter().map(|f| f.0 + 1).max().unwrap_or(0);
        let mut vt = vec![0u16; n];
        for (slot, off, _) in &offs {
            vt[*slot] = *off as u16;
        }
        self.align(2, 0);
        let vt_at = self.buf.len();
        self.buf
            .extend_from_slice(&(4 + 2 * n as u16).to_le_bytes());
        self.buf.extend_from_slice(&(size as u16).to_le_bytes());
        for v in vt {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
        self.align(8, 0);
        self.bind(l);
        let t = self.buf.len();
        self.u32((t - vt_at) as u32);
        self.buf.resize(t + size, 0);
        for (slot, off, v) in offs {
            let p = t + off;
            self.marks.insert(format!("{mark}.{slot}"), p);
            match v {
                V::U8(x) => self.buf[p] = x,
                V::U32(x) => self.buf[p..p + 4].copy_from_slice(&x.to_le_bytes()),
                V::U64(x) => self.buf[p..p + 8].copy_from_slice(&x.to_le_bytes()),
                V::Ref(l) => self.refs.push((p, l)),
            }
        }
    }
    fn refs_vector(&mut self, l: usize, items: &[usize]) {
        self.align(4, 0);
        self.bind(l);
        self.u32(items.len() as u32);
        for &i in items {
            self.reference(i);
        }
    }
    fn ints(&mut self, l: usize, items: &[i32]) {
        self.align(4, 0);
        self.bind(l);
        self.u32(items.len() as u32);
        for &i in items {
            self.u32(i as u32);
        }
    }
    /// Bytes, 16-aligned; marks where they start.
    fn bytes(&mut self, l: usize, b: &[u8], mark: &str) {
        self.align(16, 4);
        self.bind(l);
        self.u32(b.len() as u32);
        self.marks.insert(mark.into(), self.buf.len());
        self.buf.extend_from_slice(b);
    }
    fn string(&mut self, l: usize, s: &str, mark: &str) {
        self.align(4, 0);
        self.bind(l);
        self.u32(s.len() as u32);
        self.marks.insert(mark.into(), self.buf.len());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    fn finish(mut self) -> (Vec<u8>, HashMap<String, usize>) {
        for (slot, l) in std::mem::take(&mut self.refs) {
            let target = self.labels[l].expect("bound");
            assert!(target > slot, "forward offsets only");
            self.buf[slot..slot + 4].copy_from_slice(&((target - slot) as u32).to_le_bytes());
        }
        (self.buf, self.marks)
    }
}

/// Tensors of the test model: name, shape, buffer.
const TENSORS: [(&str, &[i32], u32); 6] = [
    ("input", &[1, 3], 0),
    ("dense/kernel", &[4, 3], 1),
    ("dense/bias", &[4], 2),
    ("output", &[1, 4], 0),
    ("shared", &[4], 2),
    ("ext", &[8], 5),
];

/// The test model and where its parts lie; with `external`, buffer 5 is stored after
/// the flatbuffer by offset and size.
fn model() -> (Vec<u8>, HashMap<String, usize>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut f32s = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|_| rng.random_range(-1.0f32..1.0).to_le_bytes())
            .collect()
    };
    let (kernel, bias, unused, ext) = (f32s(12), f32s(4), f32s(5), f32s(8));
    let mut b = Builder::default();
    let model = b.label();
    b.reference(model);
    b.buf.extend_from_slice(b"TFL3");
    let [opcodes, subgraphs, desc, buffers, metadata] = [(); 5].map(|_| b.label());
    b.table(
        model,
        &[
            (0, V::U32(3)),
            (1, V::Ref(opcodes)),
            (2, V::Ref(subgraphs)),
            (3, V::Ref(desc)),
            (4, V::Ref(buffers)),
            (6, V::Ref(metadata)),
        ],
        "model",
    );
    let opcode = b.label();
    b.refs_vector(opcodes, &[opcode]);
    b.table(
        opcode,
        &[(0, V::U8(9)), (2, V::U32(1)), (3, V::U32(9))],
        "opcode",
    );
    let sg = b.label();
    b.refs_vector(subgraphs, &[sg]);
    let [tensors, inputs, outputs, operators, sg_name] = [(); 5].map(|_| b.label());
    b.table(
        sg,
        &[
            (0, V::Ref(tensors)),
            (1, V::Ref(inputs)),
            (2, V::Ref(outputs)),
            (3, V::Ref(operators)),
            (4, V::Ref(sg_name)),
        ],
        "subgraph",
    );
    let ts: Vec<usize> = TENSORS.iter().map(|_| b.label()).collect();
    b.refs_vector(tensors, &ts);
    for (&(name, shape, buffer), &t) in TENSORS.iter().zip(&ts) {
        let (s, n) = (b.label(), b.label());
        b.table(
            t,
            &[
                (0, V::Ref(s)),
                (1, V::U8(0)),
                (2, V::U32(buffer)),
                (3, V::Ref(n)),
            ],
            name,
        );
        b.ints(s, shape);
        *b.marks.entry(format!("{name}.shape")).or_default() = b.buf.len() - 4 * shape.len();
        b.string(n, name, &format!("{name}.name"));
    }
    b.ints(inputs, &[0]);
    b.ints(outputs, &[3]);
    let op = b.label();
    b.refs_vector(operators, &[op]);
    let (op_in, op_out) = (b.label(), b.label());
    b.table(
        op,
        &[(0, V::U32(0)), (1, V::Ref(op_in)), (2, V::Ref(op_out))],
        "op",
    );
    b.ints(op_in, &[0, 1, 2]);
    b.ints(op_out, &[3]);
    b.string(sg_name, "main", "sg.name");
    b.string(desc, "deeplock test", "desc");
    let bufs: Vec<usize> = (0..6).map(|_| b.label()).collect();
    b.refs_vector(buffers, &bufs);
    b.table(bufs[0], &[], "buffer0");
    let datas: Vec<(usize, Vec<u8>)> = [&kernel, &bias, &unused, &b"1.5.0".to_vec()]
        .into_iter()
        .map(|d| (b.label(), d.clone()))
        .collect();
    for (i, (l, _)) in datas.iter().enumerate() {
        b.table(bufs[i + 1], &[(0, V::Ref(*l))], &format!("buffer{}", i + 1));
    }
    b.table(
        bufs[5],
        &[(1, V::U64(0)), (2, V::U64(ext.len() as u64))],
        "buffer5",
    );
    for (i, (l, d)) in datas.iter().enumerate() {
        b.bytes(*l, d, &format!("data{}", i + 1));
    }
    let (m, mname) = (b.label(), b.label());
    b.refs_vector(metadata, &[m]);
    b.table(m, &[(0, V::Ref(mname)), (1, V::U32(4))], "meta");
    b.string(mname, "min_runtime_version", "meta.name");
    let (mut bytes, mut marks) = b.finish();
    bytes.resize(bytes.len().div_ceil(16) * 16, 0);
    let at = bytes.len();
    let p = marks["buffer5.1"];
    bytes[p..p + 8].copy_from_slice(&(at as u64).to_le_bytes());
    bytes.extend_from_slice(&ext);
    marks.insert("data5".into(), at);
    (bytes, marks)
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    deeplock(dir, args, None)
}

/// A directory holding the model as `m.tflite`, a key, and it locked as `l.tflite`.
fn locked_fixture() -> (tempfile::TempDir, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (orig, _) = model();
    std::fs::write(dir.path().join("m.tflite"), &orig).unwrap();
    write_key_file(&dir.path().join("key"));
    let o = run(
        dir.path(),
        &["lock", "m.tflite", "-o", "l.tflite", "--key-file", "key"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let locked = std::fs::read(dir.path().join("l.tflite")).unwrap();
    (dir, orig, locked)
}

#[test]
fn buffers_are_named_typed_and_found_by_content() {
    let (bytes, marks) = model();
    let m = Tflite::parse(&bytes, "m.tflite".as_ref()).unwrap();
    let got: Vec<(&str, &str, Vec<usize>)> = m
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.dtype.name(), t.shape.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("1:dense/kernel", "F32", vec![4, 3]),
            ("2:dense/bias", "F32", vec![4]),
            ("3:", "U8", vec![20]),
            ("5:ext", "F32", vec![8]),
        ]
    );
    assert_eq!(m.byte_range(0).start, marks["data1"] as u64);
    assert_eq!(m.byte_range(3).start, marks["data5"] as u64);
    assert_eq!(
        m.user_metadata(),
        vec![("min_runtime_version".into(), "1.5.0".into())]
    );
    assert!(m.lock_record().unwrap().is_none());
    // Known by its identifier whatever its name.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.bin"), &bytes).unwrap();
    let o = run(dir.path(), &["inspect", "model.bin"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1:dense/kernel"));
}

#[test]
fn lock_verify_unlock_round_trip_byte_for_byte() {
    let (dir, orig, locked) = locked_fixture();
    let (_, marks) = model();
    let shift = locked.len() - orig.len();
    assert!(shift > 0 && shift.is_multiple_of(64), "{shift}");
    assert_eq!(&locked[4..8], b"TFL3");
    // Every buffer's bytes moved by the shift, and were transformed.
    for k in ["data1", "data2", "data3", "data5"] {
        let at = marks[k];
        assert_ne!(
            &orig[at..at + 16],
            &locked[at + shift..at + shift + 16],
            "{k}"
        );
    }
    // The metadata buffer is left in the clear, the structure after the region as it was.
    let at = marks["data4"];
    assert_eq!(&locked[at + shift..at + shift + 5], b"1.5.0");
    let l = Tflite::parse(&locked, "l.tflite".as_ref()).unwrap();
    let o = Tflite::parse(&orig, "m.tflite".as_ref()).unwrap();
    assert_eq!(l.tensors(), o.tensors());
    let rec = l.lock_record().unwrap().unwrap();
    assert_eq!(rec.locked.len(), 4);
    let o = run(dir.path(), &["verify", "l.tflite", "--key-file", "key"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        dir.path(),
        &["unlock", "l.tflite", "-o", "u.tflite", "--key-file", "key"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(dir.path().join("u.tflite")).unwrap() == orig);
    let key = deeplock::MasterKey::from_hex(KAT_KEY).unwrap();
    let mem = deeplock::memory::unlock_to_vec(&dir.path().join("l.tflite"), &key).unwrap();
    assert!(mem == orig);
    // Locking again is refused.
    let o = run(
        dir.path(),
        &["lock", "l.tflite", "-o", "ll.tflite", "--key-file", "key"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already locked"), "{}", stderr(&o));
    assert!(!dir.path().join("ll.tflite").exists());
}

#[test]
fn only_locks_the_buffers_named() {
    let dir = tempfile::tempdir().unwrap();
    let (orig, marks) = model();
    std::fs::write(dir.path().join("m.tflite"), &orig).unwrap();
    write_key_file(&dir.path().join("key"));
    let o = run(
        dir.path(),
        &[
            "lock",
            "m.tflite",
            "-o",
            "l.tflite",
            "--key-file",
            "key",
            "--only",
            "1:*",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let locked = std::fs::read(dir.path().join("l.tflite")).unwrap();
    let shift = locked.len() - orig.len();
    let at = marks["data2"];
    assert_eq!(&orig[at..at + 16], &locked[at + shift..at + shift + 16]);
    let at = marks["data1"];
    assert_ne!(&orig[at..at + 16], &locked[at + shift..at + shift + 16]);
    let rec = Tflite::parse(&locked, "l".as_ref())
        .unwrap()
        .lock_record()
        .unwrap()
        .unwrap();
    assert_eq!(rec.locked, vec!["1:dense/kernel".to_string()]);
    let o = run(
        dir.path(),
        &["unlock", "l.tflite", "-o", "u.tflite", "--key-file", "key"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(dir.path().join("u.tflite")).unwrap() == orig);
}

/// Unlock and verify of `bytes` as `t.tflite` in `dir` both refuse, with `want`.
fn refused(dir: &Path, bytes: &[u8], want: &str, what: &str) {
    refused_by_unlock_and_verify(dir, "tflite", bytes, want, what);
}

#[test]
fn every_tamper_is_refused_with_nothing_written() {
    let (dir, orig, locked) = locked_fixture();
    let (_, marks) = model();
    let shift = locked.len() - orig.len();
    let d = dir.path();
    let edit = |at: usize, f: &dyn Fn(&mut u8)| {
        let mut b = locked.clone();
        f(&mut b[at]);
        b
    };
    refused(
        d,
        &edit(marks["data1"] + shift + 5, &|b| *b ^= 1),
        "tensor \"1:dense/kernel\" in",
        "a flipped bit in a buffer",
    );
    refused(
        d,
        &edit(marks["data5"] + shift, &|b| *b ^= 0x80),
        "tensor \"5:ext\" in",
        "a flipped bit in the external buffer",
    );
    refused(
        d,
        &edit(marks["dense/kernel.name"] + shift, &|b| *b = b'D'),
        "after locking",
        "a tensor renamed",
    );
    refused(
        d,
        &edit(marks["output.name"] + shift, &|b| *b = b'O'),
        "after locking",
        "a tensor without a buffer renamed",
    );
    refused(
        d,
        &edit(marks["dense/kernel.2"] + shift, &|b| *b = 3),
        "after locking",
        "a buffer index changed",
    );
    refused(
        d,
        &edit(marks["output.2"] + shift, &|b| *b = 1),
        "after locking",
        "an activation pointed at a buffer",
    );
    refused(
        d,
        &edit(marks["dense/kernel.shape"] + shift, &|b| *b = 2),
        "after locking",
        "a shape changed",
    );
    refused(
        d,
        &edit(marks["data4"] + shift, &|b| *b = b'9'),
        "after locking",
        "user metadata changed",
    );
    refused(
        d,
        &edit(marks["desc"] + shift, &|b| *b = b'D'),
        "after locking",
        "the description changed",
    );
    // The record itself: its JSON, and the tables lock added.
    let rec_at = locked
        .windows(17)
        .position(|w| w == b"\"deeplock.salt\":\"")
        .unwrap()
        + 17;
    refused(
        d,
        &edit(rec_at, &|b| *b = if *b == b'0' { b'1' } else { b'0' }),
        "wrong key",
        "the salt changed",
    );
    let v_at = locked.windows(2).position(|w| w == b"\"}").unwrap();
    refused(
        d,
        &edit(v_at, &|b| *b = b' '),
        "corrupt deeplock record",
        "the record's JSON edited",
    );
    refused(d, &edit(20, &|b| *b ^= 4), "", "the added tables edited");
    // A field of the new Model table that only LiteRT reads (its version, the first
    // field after the soffset): the verifier reads the original, so the added tables
    // must be exactly the ones lock writes.
    let root = u32::from_le_bytes(locked[..4].try_into().unwrap()) as usize;
    assert_eq!(locked[root + 4], 3);
    refused(
        d,
        &edit(root + 4, &|b| *b = 4),
        "corrupt deeplock record",
        "the new Model's version edited",
    );
    refused(d, &locked[..locked.len() - 3], "", "truncated");
    refused(
        d,
        &locked[..marks["data1"] + shift],
        "",
        "truncated inside the flatbuffer",
    );
    let mut longer = locked.clone();
    longer.extend_from_slice(b"extra");
    refused(d, &longer, "after locking", "bytes appended");
    // A wrong key.
    std::fs::write(d.join("key"), "ffffffffffffffffffffffffffffffff").unwrap();
    refused(d, &locked, "wrong key", "a wrong key");
}

#[test]
fn bad_models_are_refused_at_lock_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    write_key_file(&dir.path().join("key"));
    let (orig, marks) = model();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "external offset out of range",
            {
                let mut b = orig.clone();
                let p = marks["buffer5.1"];
                b[p..p + 8].copy_from_slice(&(orig.len() as u64 - 4).to_le_bytes());
                b
            },
            "outside the file",
        ),
        (
            "external buffer over the tables",
            {
                let mut b = orig.clone();
                let p = marks["buffer5.1"];
                b[p..p + 8].copy_from_slice(&16u64.to_le_bytes());
                b
            },
            "overlap",
        ),
        (
            "tensor names a missing buffer",
            {
                let mut b = orig.clone();
                b[marks["dense/kernel.2"]] = 40;
                b
            },
            "names buffer 40",
        ),
        (
            "truncated",
            orig[..marks["data1"]].to_vec(),
            "not a valid TensorFlow Lite file",
        ),
        (
            "root out of range",
            {
                let mut b = orig.clone();
                b[2] = 0x7f;
                b
            },
            "not a valid TensorFlow Lite file",
        ),
    ];
    for (what, bytes, want) in cases {
        std::fs::write(dir.path().join("m.tflite"), &bytes).unwrap();
        let o = run(
            dir.path(),
            &["lock", "m.tflite", "-o", "l.tflite", "--key-file", "key"],
        );
        let e = stderr(&o);
        assert!(!o.status.success(), "{what}");
        assert!(e.contains(want), "{what}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{what}: {e}");
        assert!(!dir.path().join("l.tflite").exists(), "{what}");
    }
}

#[test]
fn parser_never_panics_on_mutated_files() {
    let (_dir, orig, locked) = locked_fixture();
    let mut rng = seeded_rng("tflite parser fuzz");
    let path: &Path = "fuzz.tflite".as_ref();
    let mut parsed = 0;
    for case in 0..3000u32 {
        let base = if case.is_multiple_of(2) {
            &orig
        } else {
            &locked
        };
        let mut b = base.clone();
        match case % 5 {
            k @ 0..=2 => mutate(&mut b, &mut rng, k, 4),
            3 => {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
                mutate(&mut b, &mut rng, 3, 4);
            }
            _ => {
                let n = rng.random_range(8..300);
                b = (0..n).map(|_| rng.random()).collect();
                b[4..8].copy_from_slice(b"TFL3");
            }
        }
        if let Ok(m) = Tflite::parse(&b, path) {
            parsed += 1;
            // What parses is consistent: every buffer inside the file (after its root
            // offset and identifier), none overlapping.
            check_parsed(&m, 8..b.len() as u64, case);
        }
    }
    eprintln!("{parsed} of 3000 mutated files parsed");
}

#[test]
fn a_directory_with_a_tflite_model_locks_verifies_and_unlocks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (orig, _) = model();
    std::fs::create_dir(d.join("ckpt")).unwrap();
    std::fs::write(d.join("ckpt/model.tflite"), &orig).unwrap();
    std::fs::write(d.join("ckpt/labels.txt"), "a\nb\n").unwrap();
    write_key_file(&d.join("key"));
    let o = run(d, &["lock", "ckpt", "-o", "locked", "--key-file", "key"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let locked = std::fs::read(d.join("locked/model.tflite")).unwrap();
    assert!(Tflite::parse(&locked, "l".as_ref())
        .unwrap()
        .lock_record()
        .unwrap()
        .is_some());
    let o = run(d, &["verify", "locked", "--key-file", "key"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(d, &["unlock", "locked", "-o", "plain", "--key-file", "key"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(d.join("plain/model.tflite")).unwrap() == orig);
    assert_eq!(
        std::fs::read(d.join("plain/labels.txt")).unwrap(),
        b"a\nb\n"
    );
}

#[test]
fn the_gpu_locks_and_unlocks_a_tflite_model_as_the_cpu_does() {
    if gpu_context().is_none() {
        return;
    }
    let (dir, orig, _) = locked_fixture();
    let d = dir.path();
    let o = run(
        d,
        &[
            "lock",
            "m.tflite",
            "-o",
            "g.tflite",
            "--key-file",
            "key",
            "--device",
            "gpu",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        d,
        &[
            "unlock",
            "g.tflite",
            "-o",
            "gu.tflite",
            "--key-file",
            "key",
            "--device",
            "gpu",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(d.join("gu.tflite")).unwrap() == orig);
    // The CPU unlocks what the GPU locked, and the GPU what the CPU locked.
    for (input, out) in [("g.tflite", "cu.tflite"), ("l.tflite", "gl.tflite")] {
        let device = if out == "cu.tflite" { "cpu" } else { "gpu" };
        let o = run(
            d,
            &[
                "unlock",
                input,
                "-o",
                out,
                "--key-file",
                "key",
                "--device",
                device,
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(std::fs::read(d.join(out)).unwrap() == orig);
    }
}
