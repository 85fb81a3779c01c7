//! `deeplock bench` produces every field, with positive values that agree with each
//! other (GB/s is bytes over seconds). Speeds themselves are not asserted: the bar for
//! speed is measured by the benchmarks, not by tests.

mod common;

use serde_json::Value;

fn bench(args: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let o = common::deeplock(dir.path(), args, None);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["records"].as_array().unwrap().clone()
}

fn check(r: &Value, device: &str, size: u64) {
    assert_eq!(r["device"], device);
    for f in ["adapter", "backend", "device_type", "driver", "size_label"] {
        assert!(r[f].is_string(), "{f} in {r}");
    }
    assert!(!r["adapter"].as_str().unwrap().is_empty());
    assert_eq!(r["size_bytes"].as_u64(), Some(size));
    let pairs = [
        ("lock_gbps", "lock"),
        ("unlock_gbps", "unlock"),
        ("lock_wall_gbps", "lock_wall"),
        ("unlock_wall_gbps", "unlock_wall"),
        ("copy_gbps", "copy"),
    ];
    for (rate, secs) in pairs {
        let g = r[rate].as_f64().unwrap_or_else(|| panic!("{rate} in {r}"));
        let s = r["seconds"][secs].as_f64().unwrap();
        assert!(
            g > 0.0 && g.is_finite() && s > 0.0,
            "{rate}={g}, {secs}={s}"
        );
        // The copy yardstick may move a 16-byte-padded buffer.
        let bytes = if rate == "copy_gbps" {
            size.next_multiple_of(16)
        } else {
            size
        };
        let expect = bytes as f64 / s / 1e9;
        assert!(
            (g - expect).abs() <= 1e-9 * expect.max(1.0),
            "{rate}: {g} vs {expect}"
        );
    }
    let ratio = r["lock_gbps"].as_f64().unwrap() / r["copy_gbps"].as_f64().unwrap();
    assert!((r["lock_over_copy"].as_f64().unwrap() - ratio).abs() <= 1e-9 * ratio);
    assert!(r["runs"].as_u64().unwrap() >= 1);
}

#[test]
fn cpu_bench_json_has_every_field() {
    let records = bench(&[
        "bench", "--device", "cpu", "--size", "1048576", "--json", "--runs", "3",
    ]);
    assert_eq!(records.len(), 1);
    let r = &records[0];
    check(r, "cpu", 1048576);
    for f in ["aes_ctr_gbps", "lock_1t_gbps", "unlock_1t_gbps"] {
        assert!(r[f].as_f64().unwrap() > 0.0, "{f}");
    }
    assert!(r["table_copies"].is_null());
}

#[test]
fn gpu_bench_json_has_every_field_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("plot.svg");
    let args = [
        "bench",
        "--device",
        "gpu",
        "--size",
        "1048576",
        "--size",
        "65552",
        "--json",
        "--runs",
        "2",
        "--plot",
        svg.to_str().unwrap(),
    ];
    let o = common::deeplock(dir.path(), &args, None);
    if !o.status.success() && std::env::var("DEEPLOCK_REQUIRE_GPU").as_deref() != Ok("1") {
        eprintln!(
            "SKIPPED: no GPU adapter: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        return;
    }
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let records = v["records"].as_array().unwrap();
    assert!(
        records.len() >= 2 && records.len().is_multiple_of(2),
        "two sizes per adapter"
    );
    for pair in records.chunks(2) {
        check(&pair[0], "gpu", 1048576);
        check(&pair[1], "gpu", 65552);
        assert!(pair[0]["aes_ctr_gbps"].is_null());
        let copies = pair[0]["table_copies"].as_u64().unwrap();
        assert!(copies.is_power_of_two() && copies <= 32, "{copies}");
    }
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg") && plot.contains("<polyline"),
        "{plot}"
    );
    // A series per adapter and backend, named by them: `gpu ADAPTER (BACKEND) lock`.
    assert!(
        plot.contains(">gpu ") && plot.contains(") lock</text>"),
        "{plot}"
    );
}

#[test]
fn bench_rejects_a_zero_size() {
    let dir = tempfile::tempdir().unwrap();
    let o = common::deeplock(dir.path(), &["bench", "--size", "0"], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least 1 byte"));
}
