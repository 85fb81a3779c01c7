//! Streaming keeps memory bounded whatever the file size: lock and unlock a model much
//! larger than the chunk size through the CLI and check the child's peak resident
//! memory. Default 1 GiB of tensor data; set DEEPLOCK_STREAM_TEST_BYTES for more (the
//! issue's bar, 512 MiB peak for a 4 GiB input, was checked with 4294967296).

mod common;

use std::io::Read;

/// Peak resident set of all waited-for children so far, in bytes.
fn children_max_rss() -> u64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage; RUSAGE_CHILDREN is a valid `who`.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    u.ru_maxrss as u64 * 1024
}

#[test]
fn lock_and_unlock_stream_in_bounded_memory() {
    let size: u64 = std::env::var("DEEPLOCK_STREAM_TEST_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 30);
    let dir = tempfile::tempdir().unwrap();
    // Two tensors: a huge one and a small one after it, so offsets past the big one matter.
    let header = format!(
        r#"{{"big":{{"dtype":"U8","shape":[{size}],"data_offsets":[0,{size}]}},"tail":{{"dtype":"F32","shape":[3],"data_offsets":[{size},{}]}}}}"#,
        size + 12
    );
    let mut json = header.into_bytes();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let path = dir.path().join("big.safetensors");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
        f.write_all(&json).unwrap();
        // A sparse file: the big tensor reads as zeros without using disk.
        f.set_len(8 + json.len() as u64 + size + 12).unwrap();
    }
    std::fs::write(dir.path().join("key"), common::KAT_KEY).unwrap();
    for (cmd, input, output) in [
        ("lock", "big.safetensors", "locked.safetensors"),
        ("unlock", "locked.safetensors", "back.safetensors"),
    ] {
        let o = common::deeplock(
            dir.path(),
            &[
                cmd,
                input,
                "-o",
                output,
                "--key-file",
                "key",
                "--device",
                "cpu",
            ],
            None,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let peak = children_max_rss();
    eprintln!(
        "peak RSS of lock/unlock over {size} bytes: {} MiB",
        peak >> 20
    );
    assert!(
        peak < 256 << 20,
        "peak RSS {} MiB over {size} bytes: streaming is not bounded",
        peak >> 20
    );
    // The round trip restores every byte (all zeros past the header).
    let mut back = std::fs::File::open(dir.path().join("back.safetensors")).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    back.read_exact(&mut buf[..8 + json.len()]).unwrap();
    assert_eq!(&buf[8..8 + json.len()], &json[..]);
    let mut total = 0u64;
    loop {
        let n = back.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(
            buf[..n].iter().all(|&b| b == 0),
            "restored data differs near byte {total}"
        );
        total += n as u64;
    }
    assert_eq!(total, size + 12);
}
