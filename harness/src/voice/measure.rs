//! Per-utterance measurements of the voice round trip, the word error rate, and the report's
//! table and stacked-bar SVG (where every millisecond goes, voxring's hand-offs drawn as the
//! slivers they are). The scenario fills [`UtteranceRecord`]s; `voxring voice report` draws
//! them from a JSON-lines file.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::run::plots::{esc, svg_open};

/// The stages of the reply latency, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// End of speech → the VAD's decision, beyond the hangover: the model's window, the
    /// resampler's delay, frame granularity, the hand-off to the agent and its compute.
    Vad,
    /// The VAD's hangover (a model setting, reported apart).
    Hangover,
    /// The VAD's decision → the recogniser's text.
    Recognition,
    /// Text → the first reply sample synthesised.
    Synthesis,
    /// First reply sample synthesised → its frame committed to the reply ring.
    ReplyWrite,
    /// Committed → heard (the hub's mix and the playback buffer).
    Playback,
}

impl StageKind {
    /// Every stage, in order.
    pub const ALL: [StageKind; 6] = [
        StageKind::Hangover,
        StageKind::Vad,
        StageKind::Recognition,
        StageKind::Synthesis,
        StageKind::ReplyWrite,
        StageKind::Playback,
    ];

    fn label(self) -> &'static str {
        match self {
            StageKind::Vad => "VAD",
            StageKind::Hangover => "hangover",
            StageKind::Recognition => "recognition",
            StageKind::Synthesis => "synthesis",
            StageKind::ReplyWrite => "reply write",
            StageKind::Playback => "playback",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            StageKind::Hangover => "#c7c7c7",
            StageKind::Vad => "#8da0cb",
            StageKind::Recognition => "#66c2a5",
            StageKind::Synthesis => "#fc8d62",
            StageKind::ReplyWrite => "#e78ac3",
            StageKind::Playback => "#a6d854",
        }
    }
}

/// One IPC hand-off on the way (a ring, a socket, an HTTP call), inside a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    /// What moved, e.g. "mic ring -> VAD".
    pub name: String,
    /// The stage whose time includes it.
    pub within: StageKind,
    pub ns: u64,
}

/// One utterance's way through the round trip. Times are CLOCK_MONOTONIC ns, positions are
/// mic-ring samples at `rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UtteranceRecord {
    pub said: String,
    pub heard: String,
    pub rate: u32,
    /// The known end of speech (the talker placed it).
    pub speech_end_pos: u64,
    /// Where the VAD was in the stream when it decided the speech had ended.
    pub vad_decided_pos: u64,
    pub vad_decided_ns: u64,
    pub hangover_ms: u32,
    pub recognised_ns: u64,
    pub reply_first_synth_ns: u64,
    pub reply_first_commit_ns: u64,
    /// When the first reply sample was played (the hub's playback); None until measured.
    pub reply_heard_ns: Option<u64>,
    pub handoffs: Vec<Handoff>,
}

/// One stage's share of an utterance's latency.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub label: String,
    pub ms: f64,
    pub colour: &'static str,
    /// A hand-off (drawn as a sliver, counted as the transport's share).
    pub handoff: bool,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl UtteranceRecord {
    /// The whole duration of a stage, hand-offs included (0 when not measured).
    pub fn stage_ms(&self, kind: StageKind) -> f64 {
        let gap = |a: u64, b: u64| ms(b.saturating_sub(a));
        match kind {
            StageKind::Hangover => f64::from(self.hangover_ms),
            StageKind::Vad => {
                let audio = self.vad_decided_pos.saturating_sub(self.speech_end_pos) as f64
                    / f64::from(self.rate.max(1))
                    * 1e3;
                (audio - f64::from(self.hangover_ms)).max(0.0)
            }
            StageKind::Recognition => gap(self.vad_decided_ns, self.recognised_ns),
            StageKind::Synthesis => gap(self.recognised_ns, self.reply_first_synth_ns),
            StageKind::ReplyWrite => gap(self.reply_first_synth_ns, self.reply_first_commit_ns),
            StageKind::Playback => self
                .reply_heard_ns
                .map_or(0.0, |h| gap(self.reply_first_commit_ns, h)),
        }
    }

    /// The stages in order, each followed by its hand-offs (taken out of its own width).
    pub fn stages(&self) -> Vec<Stage> {
        let mut out = Vec::new();
        for kind in StageKind::ALL {
            let inside: Vec<_> = self.handoffs.iter().filter(|h| h.within == kind).collect();
            let ipc: f64 = inside.iter().map(|h| ms(h.ns)).sum();
            out.push(Stage {
                label: kind.label().to_owned(),
                ms: (self.stage_ms(kind) - ipc).max(0.0),
                colour: kind.colour(),
                handoff: false,
            });
            out.extend(inside.iter().map(|h| Stage {
                label: h.name.clone(),
                ms: ms(h.ns),
                colour: "#000000",
                handoff: true,
            }));
        }
        out
    }

    /// End of speech → first reply sample heard (or committed, until playback is measured).
    pub fn total_ms(&self) -> f64 {
        StageKind::ALL.iter().map(|&k| self.stage_ms(k)).sum()
    }

    /// The transport's share: the sum of the hand-offs.
    pub fn handoff_ms(&self) -> f64 {
        self.handoffs.iter().map(|h| ms(h.ns)).sum()
    }

    /// The same record with other hand-off times (e.g. what Unix sockets or HTTP cost per hop,
    /// from `voxring bench ipc` at the same frame sizes), for the side-by-side bar: every
    /// stage keeps its own work, the transport's part is replaced.
    pub fn with_handoffs(&self, handoffs: Vec<Handoff>) -> Self {
        let mut r = self.clone();
        let old: u64 = self.handoffs.iter().map(|h| h.ns).sum();
        let new: u64 = handoffs.iter().map(|h| h.ns).sum();
        // Later stages move by the difference; the simplest honest place for it is the
        // recognition stage's end and everything after it.
        let shift = |t: u64| (t + new).saturating_sub(old);
        r.recognised_ns = shift(r.recognised_ns);
        r.reply_first_synth_ns = shift(r.reply_first_synth_ns);
        r.reply_first_commit_ns = shift(r.reply_first_commit_ns);
        r.reply_heard_ns = r.reply_heard_ns.map(shift);
        r.handoffs = handoffs;
        r
    }
}

/// Word error rate of one utterance: word-level edit distance over the words said.
pub fn word_errors(said: &str, heard: &str) -> (usize, usize) {
    let a: Vec<_> = said.split_whitespace().collect();
    let b: Vec<_> = heard.split_whitespace().collect();
    let mut d: Vec<usize> = (0..=b.len()).collect();
    for (i, wa) in a.iter().enumerate() {
        let mut diag = d[0];
        d[0] = i + 1;
        for (j, wb) in b.iter().enumerate() {
            let up = d[j + 1];
            d[j + 1] = (diag + usize::from(wa != wb)).min(d[j] + 1).min(up + 1);
            diag = up;
        }
    }
    (d[b.len()], a.len())
}

/// Word error rate over a scenario: all errors over all words said.
pub fn scenario_wer(records: &[UtteranceRecord]) -> f64 {
    let (e, n) = records
        .iter()
        .map(|r| word_errors(&r.said, &r.heard))
        .fold((0, 0), |(e, n), (a, b)| (e + a, n + b));
    e as f64 / n.max(1) as f64
}

/// The report's table (Markdown): one row per utterance, one column per stage.
pub fn table_markdown(records: &[UtteranceRecord]) -> String {
    let mut s = String::from("| # | said | heard | WER |");
    for k in StageKind::ALL {
        let _ = write!(s, " {} ms |", k.label());
    }
    s.push_str(" total ms | hand-offs ms | hand-offs % |\n|---|---|---|---|");
    s.push_str(&"---|".repeat(StageKind::ALL.len() + 3));
    s.push('\n');
    for (i, r) in records.iter().enumerate() {
        let (e, n) = word_errors(&r.said, &r.heard);
        let _ = write!(
            s,
            "| {} | {} | {} | {:.2} |",
            i + 1,
            r.said,
            r.heard,
            e as f64 / n.max(1) as f64
        );
        for k in StageKind::ALL {
            let _ = write!(s, " {:.1} |", r.stage_ms(k));
        }
        let total = r.total_ms();
        let _ = writeln!(
            s,
            " {total:.1} | {:.4} | {:.4} |",
            r.handoff_ms(),
            100.0 * r.handoff_ms() / total.max(f64::MIN_POSITIVE)
        );
    }
    let _ = writeln!(
        s,
        "\nWord error rate over the scenario: {:.3}",
        scenario_wer(records)
    );
    s
}

/// Horizontal stacked bars, one per row (label, stages): the reply latency by stage. A
/// hand-off is drawn at least 1 px wide, black, so that it stays visible as the sliver it is.
pub fn stacked_bars_svg(title: &str, rows: &[(String, Vec<Stage>)]) -> String {
    let (w, left, right, bar, gap, top) = (900.0, 220.0, 30.0, 22.0, 12.0, 50.0);
    let h = top + rows.len() as f64 * (bar + gap) + 90.0;
    let max = rows
        .iter()
        .map(|(_, st)| st.iter().map(|s| s.ms).sum::<f64>())
        .fold(1.0, f64::max);
    let scale = (w - left - right) / max;
    let mut s = String::new();
    svg_open(&mut s, w, h, title);
    for (i, (label, stages)) in rows.iter().enumerate() {
        let y = top + i as f64 * (bar + gap);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + bar * 0.7,
            esc(label)
        );
        let mut x = left;
        for st in stages {
            let width = if st.handoff {
                (st.ms * scale).max(1.0)
            } else {
                st.ms * scale
            };
            let _ = writeln!(
                s,
                r#"<rect x="{x:.2}" y="{y}" width="{width:.2}" height="{bar}" fill="{}"><title>{}: {:.3} ms</title></rect>"#,
                st.colour,
                esc(&st.label),
                st.ms
            );
            x += width;
        }
        let total: f64 = stages.iter().map(|s| s.ms).sum();
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}">{total:.0} ms</text>"#,
            (x + 4.0).min(w - right),
            y + bar * 0.7
        );
    }
    let ly = h - 60.0;
    for (i, k) in StageKind::ALL.iter().enumerate() {
        let x = left + i as f64 * 105.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{ly}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            k.colour(),
            x + 16.0,
            ly + 10.0,
            k.label()
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{}" width="12" height="12" fill="black"/><text x="{}" y="{}">IPC hand-offs (drawn at least 1 px wide)</text>"#,
        ly + 22.0,
        left + 16.0,
        ly + 32.0
    );
    s.push_str("</svg>\n");
    s
}

/// The stacked bars' rows: each utterance as measured, and, with `compare_ns`, again with
/// every hand-off costing that many ns (labelled `compare_name`).
pub fn bar_rows(
    records: &[UtteranceRecord],
    compare_ns: Option<u64>,
    compare_name: &str,
) -> Vec<(String, Vec<Stage>)> {
    let mut rows = Vec::new();
    for (i, r) in records.iter().enumerate() {
        rows.push((format!("{} voxring", i + 1), r.stages()));
        if let Some(ns) = compare_ns {
            let other = r
                .handoffs
                .iter()
                .map(|h| Handoff { ns, ..h.clone() })
                .collect();
            rows.push((
                format!("{} {compare_name}", i + 1),
                r.with_handoffs(other).stages(),
            ));
        }
    }
    rows
}

/// `voxring voice report`.
pub fn report(args: &super::ReportArgs) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(&args.records)
        .with_context(|| format!("cannot read the records {}", args.records.display()))?;
    let records = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<UtteranceRecord>(l).with_context(|| {
                format!(
                    "{} line {}: not an utterance record (see harness/src/voice/measure.rs)",
                    args.records.display(),
                    i + 1
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        !records.is_empty(),
        "{} holds no records",
        args.records.display()
    );
    let rows = bar_rows(&records, args.compare_handoff_ns, &args.compare_name);
    let md = args.out.join("voice-latency.md");
    let svg = args.out.join("voice-latency.svg");
    std::fs::write(&md, table_markdown(&records))
        .with_context(|| format!("cannot write {} (does the directory exist?)", md.display()))?;
    std::fs::write(
        &svg,
        stacked_bars_svg("Reply latency by stage, per utterance", &rows),
    )
    .with_context(|| format!("cannot write {}", svg.display()))?;
    println!("{}\n{}", md.display(), svg.display());
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> UtteranceRecord {
        UtteranceRecord {
            said: "turn on the kitchen light".into(),
            heard: "turn on the kitchen light".into(),
            rate: 48_000,
            speech_end_pos: 96_000,
            // 240 ms of audio after the end: 192 ms hangover + 48 ms of model and frames.
            vad_decided_pos: 96_000 + 11_520,
            vad_decided_ns: 10_000_000_000,
            hangover_ms: 192,
            recognised_ns: 10_040_000_000,
            reply_first_synth_ns: 10_060_000_000,
            reply_first_commit_ns: 10_061_000_000,
            reply_heard_ns: Some(10_081_000_000),
            handoffs: vec![
                Handoff {
                    name: "mic ring -> VAD".into(),
                    within: StageKind::Vad,
                    ns: 4_000,
                },
                Handoff {
                    name: "reply ring -> hub".into(),
                    within: StageKind::Playback,
                    ns: 3_000,
                },
            ],
        }
    }

    #[test]
    fn stages_split_the_latency_and_hand_offs_come_out_of_their_stage() {
        let r = record();
        assert_eq!(r.stage_ms(StageKind::Hangover), 192.0);
        assert!((r.stage_ms(StageKind::Vad) - 48.0).abs() < 1e-9);
        assert_eq!(r.stage_ms(StageKind::Recognition), 40.0);
        assert_eq!(r.stage_ms(StageKind::Synthesis), 20.0);
        assert_eq!(r.stage_ms(StageKind::ReplyWrite), 1.0);
        assert_eq!(r.stage_ms(StageKind::Playback), 20.0);
        assert!((r.total_ms() - 321.0).abs() < 1e-9);
        let st = r.stages();
        let sum: f64 = st.iter().map(|s| s.ms).sum();
        assert!(
            (sum - r.total_ms()).abs() < 1e-9,
            "the bar adds up to the total"
        );
        let vad = st.iter().find(|s| s.label == "VAD").unwrap();
        assert!((vad.ms - (48.0 - 0.004)).abs() < 1e-9);
        assert_eq!(st.iter().filter(|s| s.handoff).count(), 2);
        assert!((r.handoff_ms() - 0.007).abs() < 1e-12);
    }

    #[test]
    fn the_sockets_variant_moves_everything_after_the_slower_hand_offs() {
        let r = record();
        let slow = r.with_handoffs(vec![
            Handoff {
                name: "socket -> VAD".into(),
                within: StageKind::Vad,
                ns: 1_004_000,
            },
            Handoff {
                name: "socket -> hub".into(),
                within: StageKind::Playback,
                ns: 1_003_000,
            },
        ]);
        assert!(
            (slow.total_ms() - r.total_ms() - 2.0).abs() < 1e-9,
            "{}",
            slow.total_ms()
        );
        assert!((slow.handoff_ms() - 2.007).abs() < 1e-9);
    }

    #[test]
    fn word_error_rate_counts_substitutions_insertions_and_deletions() {
        assert_eq!(
            word_errors("turn on the light", "turn on the light"),
            (0, 4)
        );
        assert_eq!(
            word_errors("turn on the light", "turn off the light"),
            (1, 4)
        );
        assert_eq!(word_errors("turn on the light", "turn on"), (2, 4));
        assert_eq!(word_errors("what time", "what time is it"), (2, 2));
        assert_eq!(word_errors("what time is it", ""), (4, 4));
        let mut r = record();
        let ok = r.clone();
        r.heard = "turn on the light".into();
        assert!((scenario_wer(&[ok, r]) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn the_table_and_the_bars_show_every_stage_and_escape_text() {
        let mut r = record();
        r.heard = "turn <on> & off".into();
        let t = table_markdown(std::slice::from_ref(&r));
        assert!(t.contains("| 1 | turn on the kitchen light |"), "{t}");
        assert!(t.contains(" 192.0 |") && t.contains(" 321.0 |"), "{t}");
        let svg = stacked_bars_svg(
            "reply latency",
            &[
                ("1 voxring".into(), r.stages()),
                ("1 sockets".into(), r.with_handoffs(vec![]).stages()),
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<title>").count(), 6 + 2 + 6);
        assert!(svg.contains("mic ring -&gt; VAD: 0.004 ms"), "{svg}");
        assert!(!svg.contains("<on>"));
    }
}
