//! SVG plots for the `--report` directory, written by hand (plain SVG 1.1, no dependency):
//! a latency histogram and a per-cycle timeline.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const W: f64 = 800.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// `text` escaped for SVG text content.
pub(crate) fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(s: &mut String, title: &str) {
    svg_open(s, W, H, title);
}

/// Opens a `w` × `h` SVG on a white background with `title` centred at the top (also the
/// voice report's stacked bars).
pub(crate) fn svg_open(s: &mut String, w: f64, h: f64, title: &str) {
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        w / 2.0,
        esc(title)
    );
}

/// A "nice" step (1, 2 or 5 times a power of ten) giving about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / n;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let f = if norm < 1.5 {
        1.0
    } else if norm < 3.5 {
        2.0
    } else if norm < 7.5 {
        5.0
    } else {
        10.0
    };
    f * mag
}

fn axes(s: &mut String, x0: f64, x1: f64, x_label: &str, y_label: &str) {
    let (px0, px1, py0, py1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
    let _ = writeln!(
        s,
        r#"<path d="M{px0} {py1} L{px0} {py0} L{px1} {py0}" stroke="black" fill="none"/>"#
    );
    let step = nice_step(x1 - x0, 8.0);
    let mut t = (x0 / step).ceil() * step;
    while t <= x1 + step * 1e-9 {
        let x = px0 + (t - x0) / (x1 - x0).max(f64::MIN_POSITIVE) * (px1 - px0);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{py0}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            py0 + 5.0,
            py0 + 18.0,
            trim(t)
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (px0 + px1) / 2.0,
        H - 12.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        (py0 + py1) / 2.0,
        (py0 + py1) / 2.0,
        esc(y_label)
    );
}

fn trim(v: f64) -> String {
    let t = format!("{v:.4}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    if t.is_empty() || t == "-" {
        "0".to_owned()
    } else {
        t.to_owned()
    }
}

/// A histogram of `hist` (values in ns, drawn in ms) in 60 linear bins from its minimum to its
/// maximum, counts on a log scale, with vertical `markers` (label, ms).
pub fn histogram_svg(title: &str, hist: &Histogram<u64>, markers: &[(&str, f64)]) -> String {
    let mut s = String::new();
    header(&mut s, title);
    if hist.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">no samples</text></svg>"#,
            W / 2.0,
            H / 2.0
        );
        return s;
    }
    const BINS: usize = 60;
    let lo = hist.min() as f64 / 1e6;
    let mut hi = hist.max() as f64 / 1e6;
    if hi <= lo {
        hi = lo + 0.001;
    }
    let width = (hi - lo) / BINS as f64;
    let mut counts = [0u64; BINS];
    for v in hist.iter_recorded() {
        let ms = v.value_iterated_to() as f64 / 1e6;
        let i = (((ms - lo) / width) as usize).min(BINS - 1);
        counts[i] += v.count_at_value();
    }
    let max_log = counts
        .iter()
        .map(|&c| ((c + 1) as f64).log10())
        .fold(0.0, f64::max)
        .max(1e-9);
    axes(&mut s, lo, hi, "latency (ms)", "count (log scale)");
    let (px0, px1, py0, py1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
    let bw = (px1 - px0) / BINS as f64;
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let h = ((c + 1) as f64).log10() / max_log * (py0 - py1);
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#4a7ebb"><title>{c}</title></rect>"##,
            px0 + i as f64 * bw,
            py0 - h,
            (bw - 1.0).max(0.5),
            h
        );
    }
    for (k, (label, ms)) in markers.iter().enumerate() {
        if !(lo..=hi).contains(ms) {
            continue;
        }
        let x = px0 + (ms - lo) / (hi - lo) * (px1 - px0);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{py1}" x2="{x:.1}" y2="{py0}" stroke="#c0392b" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#c0392b">{} {:.3}</text>"##,
            x + 3.0,
            py1 + 12.0 + 13.0 * k as f64,
            esc(label),
            ms
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One line of a timeline: (seconds, milliseconds) points.
#[derive(Debug)]
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A per-cycle timeline: each series drawn as a line (reduced to the worst value per pixel
/// column when there are more points than columns), `marks` (seconds, colour, label) as ticks
/// along the bottom, and an optional horizontal `limit` line (ms, label).
pub fn timeline_svg(
    title: &str,
    series: &[Series<'_>],
    marks: &[(f64, &str, &str)],
    limit: Option<(f64, &str)>,
) -> String {
    let mut s = String::new();
    header(&mut s, title);
    let all = series.iter().flat_map(|x| x.points.iter());
    let x1 = all
        .clone()
        .map(|p| p.0)
        .fold(0.0, f64::max)
        .max(marks.iter().map(|m| m.0).fold(0.0, f64::max))
        .max(1e-3);
    let mut y1 = all.map(|p| p.1).fold(0.0, f64::max);
    if let Some((l, _)) = limit
        && l <= y1 * 4.0
    {
        y1 = y1.max(l);
    }
    let y1 = (y1 * 1.1).max(1e-3);
    axes(&mut s, 0.0, x1, "time (s)", "latency (ms)");
    let (px0, px1, py0, py1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
    let ystep = nice_step(y1, 6.0);
    let mut t = 0.0;
    while t <= y1 {
        let y = py0 - t / y1 * (py0 - py1);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y:.1}" x2="{px1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            px0,
            px0 - 5.0,
            y + 4.0,
            trim(t)
        );
        t += ystep;
    }
    let cols = (px1 - px0) as usize;
    for (k, ser) in series.iter().enumerate() {
        if ser.points.is_empty() {
            continue;
        }
        let mut worst: Vec<Option<f64>> = vec![None; cols + 1];
        for &(x, y) in &ser.points {
            let c = ((x / x1) * cols as f64).clamp(0.0, cols as f64) as usize;
            worst[c] = Some(worst[c].map_or(y, |w: f64| w.max(y)));
        }
        let mut d = String::new();
        for (c, w) in worst.iter().enumerate() {
            if let Some(y) = w {
                let px = px0 + c as f64;
                let py = py0 - (y / y1).min(1.0) * (py0 - py1);
                let _ = write!(
                    d,
                    "{}{px:.1} {py:.1} ",
                    if d.is_empty() { "M" } else { "L" }
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<path d="{d}" stroke="{}" fill="none" stroke-width="1"/>"#,
            ser.color
        );
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            px0 + 10.0,
            py1 + 6.0 + 15.0 * k as f64,
            ser.color,
            px0 + 26.0,
            py1 + 10.0 + 15.0 * k as f64,
            esc(ser.name)
        );
    }
    if let Some((l, label)) = limit
        && l <= y1
    {
        let y = py0 - l / y1 * (py0 - py1);
        let _ = writeln!(
            s,
            r##"<line x1="{px0}" y1="{y:.1}" x2="{px1}" y2="{y:.1}" stroke="#c0392b" stroke-dasharray="6 3"/><text x="{}" y="{:.1}" text-anchor="end" fill="#c0392b">{}</text>"##,
            px1 - 4.0,
            y - 4.0,
            esc(label)
        );
    }
    for &(x, color, label) in marks {
        let px = px0 + x / x1 * (px1 - px0);
        let _ = writeln!(
            s,
            r#"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{py0}" stroke="{color}" stroke-width="2"><title>{}</title></line>"#,
            py0 - 10.0,
            esc(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_svg_is_well_formed_and_has_bars() {
        let mut h = crate::run::report::new_hist();
        for v in 1..1000u64 {
            crate::run::report::record(&mut h, v * 10_000);
        }
        let svg = histogram_svg("t <1>", &h, &[("p50", 5.0)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<rect x="));
        assert!(svg.contains("t &lt;1&gt;"));
    }

    #[test]
    fn timeline_svg_draws_every_series() {
        let ser = Series {
            name: "m2e",
            color: "blue",
            points: (0..5000).map(|i| (i as f64 * 0.01, 5.0)).collect(),
        };
        let svg = timeline_svg(
            "t",
            &[ser],
            &[(1.0, "red", "late")],
            Some((150.0, "budget")),
        );
        assert!(svg.contains("<path d=\"M"));
        assert!(svg.contains("late"));
    }

    #[test]
    fn empty_inputs_do_not_panic() {
        let svg = histogram_svg("t", &crate::run::report::new_hist(), &[]);
        assert!(svg.contains("no samples"));
        let svg = timeline_svg("t", &[], &[], None);
        assert!(svg.ends_with("</svg>\n"));
    }
}
