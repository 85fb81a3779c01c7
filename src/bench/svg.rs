//! `deeplock bench --plot FILE.svg`: throughput against size, one line per device and
//! path, as a dependency-free SVG.

use std::fmt::Write;

use super::Record;

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// The series of `records`: (name, points of (bytes, GB/s)). Each adapter is its own
/// series (wgpu can offer the same GPU through Vulkan and GL), named by adapter and
/// backend.
fn series(records: &[Record]) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in records {
        let gpu = r.device == "gpu";
        let paths: [(&str, Option<f64>); 6] = [
            ("lock", Some(r.lock_gbps)),
            ("unlock", Some(r.unlock_gbps)),
            ("lock+io", gpu.then_some(r.lock_wall_gbps)),
            ("unlock+io", gpu.then_some(r.unlock_wall_gbps)),
            ("copy", Some(r.copy_gbps)),
            ("aes-ctr 1 core", r.aes_ctr_gbps),
        ];
        let device = if gpu {
            let name: String = r.adapter.chars().take(22).collect();
            format!("gpu {name} ({})", r.backend)
        } else {
            "cpu".to_string()
        };
        for (path, v) in paths {
            // A log axis has no place for zero (a run too short to time).
            let Some(v) = v.filter(|v| *v > 0.0) else {
                continue;
            };
            let name = format!("{device} {path}");
            let point = (r.size_bytes as f64, v);
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, pts)) => pts.push(point),
                None => out.push((name, vec![point])),
            }
        }
    }
    out
}

/// Draws `records` as an SVG line chart, both axes on log scales: a software adapter
/// runs a thousand times slower than the CPU, and on a linear axis it would sit on zero.
/// A series of one size is a labelled dot.
pub fn plot(records: &[Record], title: &str) -> String {
    let series = series(records);
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0.log2()))
        .collect();
    let (x0, x1) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let (x0, x1) = if x1 - x0 < 1.0 {
        (x0 - 1.0, x1 + 1.0)
    } else {
        (x0, x1)
    };
    let (lo, hi) = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let (y0, y1) = if lo > hi {
        (0.0, 1.0)
    } else {
        (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        )
    };
    let px = |x: f64| LEFT + (x.log2() - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - (y.log10() - y0) / (y1 - y0) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="18" font-size="14">{}</text>"#,
        escape(title)
    );
    let _ = write!(
        s,
        r#"<line x1="{LEFT}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}" stroke="black"/>"#,
        b = H - BOTTOM,
        r = W - RIGHT
    );
    for k in y0 as i32..=y1 as i32 {
        let y = 10f64.powi(k);
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            py(y) + 4.0,
            if k < 0 {
                format!("{y:.*}", (-k) as usize)
            } else {
                format!("{y:.0}")
            }
        );
    }
    let _ = write!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {0})">GB/s (log scale)</text>"#,
        (TOP + H - BOTTOM) / 2.0
    );
    let mut sizes: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    for b in sizes {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            px(b),
            H - BOTTOM + 18.0,
            super::human_bytes(b as usize)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">size (log scale)</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 10.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let mut pts = pts.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for p in &path {
            let (x, y) = p.split_once(',').expect("x,y");
            let _ = write!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{c}"/>"#);
        }
        if let [(x, y)] = pts[..] {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" fill="{c}">{y:.3}</text>"#,
                px(x) + 6.0,
                py(y) + 4.0
            );
        }
        let ly = TOP + 10.0 + 18.0 * i as f64;
        let _ = write!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT + 15.0,
            W - RIGHT + 35.0,
            W - RIGHT + 40.0,
            ly + 4.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::super::{Record, Seconds};
    use super::*;

    fn record(device: &str, adapter: &str, backend: &str, size: usize, gbps: f64) -> Record {
        let secs = size as f64 / gbps / 1e9;
        Record {
            device: device.into(),
            adapter: adapter.into(),
            vendor: 0,
            backend: backend.into(),
            device_type: "Cpu".into(),
            driver: String::new(),
            size_label: "w".into(),
            size_bytes: size,
            lock_gbps: gbps,
            unlock_gbps: gbps,
            lock_wall_gbps: gbps / 2.0,
            unlock_wall_gbps: gbps / 3.0,
            copy_gbps: gbps * 2.0,
            lock_over_copy: 2.0,
            aes_ctr_gbps: None,
            lock_1t_gbps: None,
            unlock_1t_gbps: None,
            v2_lock_gbps: None,
            v2_unlock_gbps: None,
            v2_lock_1t_gbps: None,
            v2_unlock_1t_gbps: None,
            table_copies: None,
            seconds: Seconds {
                lock: secs,
                unlock: secs,
                lock_wall: secs,
                unlock_wall: secs,
                copy: secs,
                aes_ctr: None,
                lock_1t: None,
                unlock_1t: None,
                v2_lock: None,
                v2_unlock: None,
                v2_lock_1t: None,
                v2_unlock_1t: None,
            },
            runs: 1,
        }
    }

    #[test]
    fn adapters_are_series_of_their_own_with_gpu_transfers_and_a_log_axis() {
        let records = [
            record("cpu", "EPYC", "vaes-avx2", 1 << 20, 15.0),
            record("gpu", "llvmpipe", "Vulkan", 1 << 20, 0.01),
            record("gpu", "llvmpipe", "Gl", 1 << 20, 0.02),
        ];
        let names: Vec<String> = series(&records).into_iter().map(|(n, _)| n).collect();
        for want in [
            "cpu lock",
            "gpu llvmpipe (Vulkan) lock",
            "gpu llvmpipe (Gl) lock",
            "gpu llvmpipe (Vulkan) unlock+io",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n == "cpu lock+io"), "{names:?}");
        let svg = plot(&records, "t");
        // A software adapter's 0.01 GB/s is well above the axis, not on it: ticks at
        // every power of ten from 0.001 to 100.
        assert!(svg.contains(">0.001<") && svg.contains(">100<"), "{svg}");
        assert!(
            svg.contains(">0.010<"),
            "one size: each dot labelled with its value"
        );
        for dot in svg.split("<circle").skip(1) {
            let cy = dot
                .split("cy=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let cy: f64 = cy.parse().unwrap();
            assert!(cy < H - BOTTOM - 20.0, "a dot sits on the axis: {dot}");
        }
    }

    #[test]
    fn the_cpu_table_has_no_transfer_columns() {
        let t = super::super::table(&[record("cpu", "EPYC", "vaes-avx2", 4096, 15.0)]);
        let row = t.lines().find(|l| l.contains("4096")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cols[3..6], ["15.00", "-", "-"], "{row}");
    }
}
