//! The comparison as an SVG drawn by hand: one colour per transport, median (solid) and p99
//! (dashed) latency against payload size, both axes logarithmic.

use std::fmt::Write;

use super::ResultRow;

const COLOURS: [&str; 9] = [
    "#444444", "#1f77b4", "#17becf", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#2ca02c",
    "#e377c2",
];

/// Renders the rows as a standalone SVG document.
pub fn svg(rows: &[ResultRow]) -> String {
    let (w, h) = (960.0_f64, 560.0_f64);
    let (left, right, top, bottom) = (80.0, 190.0, 40.0, 60.0);
    let mut transports: Vec<&str> = Vec::new();
    for r in rows {
        if !transports.contains(&r.transport.as_str()) {
            transports.push(&r.transport);
        }
    }
    let mut payloads: Vec<u64> = rows.iter().map(|r| r.payload_bytes).collect();
    payloads.sort_unstable();
    payloads.dedup();
    let lo = rows.iter().map(|r| r.p50_ns.max(1)).min().unwrap_or(1) as f64;
    let hi = rows.iter().map(|r| r.p99_ns.max(1)).max().unwrap_or(10) as f64;
    let (ylo, yhi) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let (xlo, xhi) = match (payloads.first(), payloads.last()) {
        (Some(a), Some(b)) if a != b => ((*a as f64).log2(), (*b as f64).log2()),
        (Some(a), _) => ((*a as f64).log2() - 1.0, (*a as f64).log2() + 1.0),
        _ => (6.0, 20.0),
    };
    let px = |bytes: u64| left + ((bytes as f64).log2() - xlo) / (xhi - xlo) * (w - left - right);
    let py = |ns: u64| {
        let v = (ns.max(1) as f64).log10();
        top + (yhi - v) / (yhi - ylo) * (h - top - bottom)
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">voxring bench ipc: one-way latency (solid: median, dashed: p99)</text>"#,
        w / 2.0
    );
    // y grid: one line per decade.
    let mut d = ylo as i32;
    while d <= yhi as i32 {
        let ns = 10f64.powi(d) as u64;
        let y = py(ns);
        let label = match d {
            0..=2 => format!("{ns} ns"),
            3..=5 => format!("{} µs", ns / 1000),
            6..=8 => format!("{} ms", ns / 1_000_000),
            _ => format!("{} s", ns / 1_000_000_000),
        };
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            w - right,
            left - 6.0,
            y + 4.0
        );
        d += 1;
    }
    for &p in &payloads {
        let x = px(p);
        let label = if p >= 1 << 20 {
            format!("{} MiB", p >> 20)
        } else if p >= 1024 {
            format!("{} KiB", p >> 10)
        } else {
            format!("{p} B")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            h - bottom,
            h - bottom + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">payload (log scale)</text>"#,
        (left + w - right) / 2.0,
        h - 15.0
    );
    for (i, t) in transports.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mine: Vec<&ResultRow> = rows.iter().filter(|r| r.transport == *t).collect();
        for (dash, pick) in [("", 0), (r#" stroke-dasharray="5,4""#, 1)] {
            let pts: Vec<String> = mine
                .iter()
                .map(|r| {
                    let ns = if pick == 0 { r.p50_ns } else { r.p99_ns };
                    format!("{:.1},{:.1}", px(r.payload_bytes), py(ns))
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
                pts.join(" ")
            );
        }
        for r in &mine {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{} {} B: p50 {} ns, p99 {} ns</title></circle>"#,
                px(r.payload_bytes),
                py(r.p50_ns),
                r.transport,
                r.payload_bytes,
                r.p50_ns,
                r.p99_ns
            );
        }
        let ly = top + 20.0 + i as f64 * 20.0;
        let lx = w - right + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{t}</text>"#,
            lx + 25.0,
            lx + 32.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}
