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

/// The series of `records`: (name, points of (bytes, GB/s)).
fn series(records: &[Record]) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in records {
        let paths: [(&str, Option<f64>); 5] = [
            ("lock", Some(r.lock_gbps)),
            ("unlock", Some(r.unlock_gbps)),
            ("lock+io", (r.device == "gpu").then_some(r.lock_wall_gbps)),
            ("copy", Some(r.copy_gbps)),
            ("aes-ctr 1 core", r.aes_ctr_gbps),
        ];
        for (path, v) in paths {
            let Some(v) = v else { continue };
            let name = format!("{} {path}", r.device);
            let point = (r.size_bytes as f64, v);
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, pts)) => pts.push(point),
                None => out.push((name, vec![point])),
            }
        }
    }
    out
}

/// Draws `records` as an SVG line chart (log-scale size, linear GB/s).
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
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.1;
    let px = |x: f64| LEFT + (x.log2() - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - y / ymax * (H - TOP - BOTTOM);
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
    for i in 0..=4 {
        let y = ymax * i as f64 / 4.0;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{y:.1}</text>"#,
            LEFT - 6.0,
            py(y) + 4.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {0})">GB/s</text>"#,
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
