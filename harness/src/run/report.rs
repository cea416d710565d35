//! The results of one `voxring run`: latency histograms, the JSON document, the Markdown report
//! and the table printed on stdout.

use std::fmt::Write as _;

use anyhow::Context as _;
use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize};

/// The voice budget the verdict is judged against: mouth-to-ear p99.9, in milliseconds.
pub const BUDGET_MS: f64 = 150.0;

pub use crate::hist::{new_hist, record};

/// Encodes a histogram (HdrHistogram V2 format, base64) so an agent can hand it over in JSON.
pub fn hist_to_base64(hist: &Histogram<u64>) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(hist, &mut buf)
        .map_err(|e| anyhow::anyhow!("cannot serialise a histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

/// Decodes what [`hist_to_base64`] produced.
pub fn hist_from_base64(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("an agent's histogram is not valid base64")?;
    let hist: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("an agent's histogram does not decode: {e:?}"))?;
    Ok(hist)
}

/// A count, or `-` when it was not measured.
fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The width of a text column of `names`: the longest, and at least `min`.
fn width<'a>(names: impl Iterator<Item = &'a str>, min: usize) -> usize {
    names.map(str::len).max().unwrap_or(0).max(min)
}

/// How the report's tables are written: aligned text (the first column `first` wide and
/// left-aligned, the others 9 wide and right-aligned) or Markdown.
#[derive(Debug, Clone, Copy)]
enum Table {
    Text { first: usize },
    Markdown,
}

impl Table {
    /// Writes one row.
    fn row(self, s: &mut String, cells: &[&str]) {
        match self {
            Table::Text { first } => {
                let _ = write!(s, "{:<first$}", cells.first().copied().unwrap_or(""));
                for c in cells.iter().skip(1) {
                    let _ = write!(s, " {c:>9}");
                }
            }
            Table::Markdown => {
                for c in cells {
                    let _ = write!(s, "| {c} ");
                }
                s.push('|');
            }
        }
        s.push('\n');
    }

    /// What a cell holds when nothing was measured.
    fn missing(self) -> &'static str {
        match self {
            Table::Text { .. } => "-",
            Table::Markdown => "–",
        }
    }
}

/// p50 / p99 / p99.9 / max of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of `hist`, or `None` when it holds nothing.
    pub fn of(hist: &Histogram<u64>) -> Option<Self> {
        if hist.is_empty() {
            return None;
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Some(Self {
            p50: ms(hist.value_at_quantile(0.50)),
            p99: ms(hist.value_at_quantile(0.99)),
            p999: ms(hist.value_at_quantile(0.999)),
            max: ms(hist.max()),
        })
    }
}

/// One row of the latency budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRow {
    /// `capture`, `handoff:<agent>`, `compute:<agent>`, `return handoff`, `playback`.
    pub name: String,
    /// What the stage measures, from which clock reading to which.
    pub what: String,
    pub samples: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl StageRow {
    /// Its row of the latency budget: name, percentiles, samples, and in Markdown what it
    /// measures.
    fn write_row(&self, table: Table, s: &mut String) {
        let ms = [self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms]
            .map(|v| v.map_or_else(|| table.missing().to_owned(), |v| format!("{v:.3}")));
        let samples = self.samples.to_string();
        let mut cells = vec![self.name.as_str(), &ms[0], &ms[1], &ms[2], &ms[3], &samples];
        if let Table::Markdown = table {
            cells.push(&self.what);
        }
        table.row(s, &cells);
    }

    /// A row from a histogram in nanoseconds.
    pub fn new(name: impl Into<String>, what: impl Into<String>, hist: &Histogram<u64>) -> Self {
        let p = Percentiles::of(hist);
        Self {
            name: name.into(),
            what: what.into(),
            samples: hist.len(),
            p50_ms: p.map(|p| p.p50),
            p99_ms: p.map(|p| p.p99),
            p999_ms: p.map(|p| p.p999),
            max_ms: p.map(|p| p.max),
        }
    }
}

/// What one agent process did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRow {
    pub name: String,
    pub pid: u32,
    /// Frames it read from the capture ring.
    pub frames: u64,
    /// Cycles it finished after the cycle's deadline (cycle fence); `None` for an agent that
    /// does not mark the fence (a Python agent), whose lateness is not measured.
    pub late: Option<u64>,
    /// Frames it never saw (lapped in a lossy ring, or missing from the sequence).
    pub lost: u64,
    /// CRC-32 of every payload byte it read, in order (hex).
    pub checksum: String,
    /// CPU time of the whole process as a share of one core.
    pub cpu_percent: f64,
    /// Its ring operations (grants, commits, releases, wakes) as a share of one core (`None`:
    /// not measured, a Python agent).
    pub ipc_cpu_percent: Option<f64>,
    /// CPU its waits for frames cost (futex park and wake-up), as a share of one core (`None`:
    /// not measured).
    pub wait_cpu_percent: Option<f64>,
    /// How it reads the capture ring: `shm`, or `socket-fallback` (the warnings say why).
    pub transport: String,
    /// Scheduling of its processing thread, or why real-time was refused.
    pub scheduling: String,
    /// How it ended: `end of stream`, or what went wrong.
    pub exit: String,
}

impl AgentRow {
    /// The row of an agent that gave no report: its name, PID and how it ended.
    pub fn missing(name: &str, pid: u32, exit: &str) -> Self {
        AgentRow {
            name: name.to_owned(),
            pid,
            frames: 0,
            late: None,
            lost: 0,
            checksum: String::new(),
            cpu_percent: 0.0,
            ipc_cpu_percent: None,
            wait_cpu_percent: None,
            transport: String::new(),
            scheduling: String::new(),
            exit: exit.to_owned(),
        }
    }
}

/// The producer's own account of what it put into the capture ring.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProducerRow {
    pub frames: u64,
    pub samples: u64,
    /// CRC-32 of every payload byte committed to the capture ring, in order (hex).
    pub checksum: String,
    /// Frames the device delivered that could not be written (the ring was full).
    pub dropped: u64,
}

/// The voice-activity detector's findings, read through its control register.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct VadRow {
    pub speech_segments: u64,
    pub speech_frames: u64,
    pub last_energy_dbfs: Option<f64>,
}

/// Everything `voxring run --json FILE` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub device: String,
    pub playback_device: Option<String>,
    pub rate: u32,
    pub quantum: u32,
    pub channels: u16,
    /// Seconds asked for.
    pub seconds: f64,
    /// Seconds actually run (less when interrupted).
    pub elapsed_s: f64,
    pub interrupted: bool,
    pub load: u32,
    /// CPUs kept from going idle by `--keep-awake`'s spinners (0: not asked, or refused).
    #[serde(default)]
    pub keep_awake_cpus: u32,
    /// A virtual machine whose idle vCPUs halt at once (`voxring doctor`'s vm-idle warning).
    #[serde(default)]
    pub vcpus_halt: bool,
    pub cycles: u64,
    pub cycles_late: u64,
    pub frames_lost: u64,
    pub xruns: u64,
    pub xruns_capture: u64,
    pub xruns_playback: u64,
    /// Of `xruns_playback`, those the device did not report (PipeWire's plugin padded
    /// silence; found by the playback buffer running empty).
    #[serde(default)]
    pub xruns_playback_hidden: u64,
    /// `None` when no `echo` agent returned frames to the playback side.
    pub mouth_to_ear_ms: Option<Percentiles>,
    pub stages: Vec<StageRow>,
    pub agents: Vec<AgentRow>,
    pub producer: ProducerRow,
    pub vad: Option<VadRow>,
    /// CPU spent in ring operations (grants, copies into and out of slots, commits,
    /// releases, futex wakes) by every process, as a share of one core.
    pub ipc_cpu_percent: f64,
    /// CPU the agents spent waiting for frames (futex park, wake-up, liveness checks), as a
    /// share of one core: the price of sleeping between frames instead of spinning.
    pub wait_cpu_percent: f64,
    /// Scheduling of the orchestrator's audio thread.
    pub audio_scheduling: String,
    pub drift_ppm: Option<f64>,
    pub budget_ms: f64,
    /// `failed` (see `failures`); else `within budget`; `over budget` (mouth-to-ear p99.9
    /// above the budget); or `not measured` (no echo agent). Only `within budget` and `not
    /// measured` exit 0.
    pub verdict: String,
    pub verdict_reasons: Vec<String>,
    /// Why the run failed, whatever its latency: an agent died or gave no report, an agent's
    /// CRC-32 differs from the producer's, frames were lost, silence was played, no cycle ran,
    /// the device or a ring failed. Empty for a run that did what it should.
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
    pub wav: Option<String>,
    pub command: String,
    /// The buffer chosen (`--periods`), why, and how it grew (`None` in reports made before
    /// it was recorded).
    #[serde(default)]
    pub buffer: Option<super::buffer::BufferReport>,
    /// Every glitch (xrun, lost frame, period of silence, late cycle) with its cause.
    #[serde(default)]
    pub glitches: Vec<super::glitch::Glitch>,
    /// The hub session the run was (`None` in reports made before run became one).
    #[serde(default)]
    pub hub: Option<HubRow>,
    /// What the hypervisor took during the run (`None`: not sampled, or an older report).
    #[serde(default)]
    pub host_steal: Option<super::glitch::HostSteal>,
}

/// The hub session of a run: its name, its real-time thread's wake calls, and the output
/// queue's corrections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HubRow {
    /// The hub's name (its segments were `voxring.<name>.*`).
    pub name: String,
    /// Wake syscalls the hub's real-time thread made (a parked mic reader was woken; at most
    /// one per committed grant, whatever the number of agents).
    pub wakes: u64,
    /// `wakes` per cycle.
    pub wake_syscalls_per_cycle: f64,
    /// The output queue's target depth (frames) at the end, and its band.
    pub queue_target: u32,
    pub queue_band: u32,
    /// Corrections of the output queue: frames played again on an empty queue (not lost: the
    /// next frame plays one period later), frames dropped above the band (lost), and periods of
    /// silence while it played (lost).
    pub queue_repeated: u64,
    pub queue_dropped: u64,
    pub queue_gaps: u64,
    /// Quiet frames dropped in a pause to bring the queue back to its target after it stood
    /// above it (latency given back; no sound lost).
    #[serde(default)]
    pub queue_trimmed: u64,
    /// Mic readers evicted for falling a whole ring behind, and for dying.
    pub evicted_lag: u64,
    pub evicted_dead: u64,
    /// The real-time thread's ring operations per cycle, ns: the capture side (grant, copy
    /// into the slot, stamps, commit, wake) and the mix (every lane's read, sum, release, its
    /// counters), the measuring probes left out. Part of `ipc_cpu_percent`.
    #[serde(default)]
    pub capture_ns_per_cycle: f64,
    #[serde(default)]
    pub mix_ns_per_cycle: f64,
    /// How often a playing output lane held each depth when a frame was pulled (index =
    /// frames queued before taking; the last entry counts that many or more; trailing zeros
    /// left out): the margin a hold-up of the audio thread finds.
    #[serde(default)]
    pub queue_depths: Vec<u64>,
}

/// The lowest depth, the 1st percentile and the median of a depth histogram (index = depth).
pub fn depth_summary(counts: &[u64]) -> Option<(usize, usize, usize)> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let at = |q: f64| {
        let need = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        counts
            .iter()
            .position(|&c| {
                seen += c;
                seen >= need
            })
            .unwrap_or(0)
    };
    Some((at(0.0), at(0.01), at(0.5)))
}

impl RunReport {
    /// Judges the run: `failed` when `failures` holds anything, else against the 150 ms
    /// budget; sets the verdict and why (the failures first).
    pub fn judge(&mut self) {
        let mut reasons = self.failures.clone();
        let verdict = match self.mouth_to_ear_ms {
            None => {
                reasons.push("mouth-to-ear was not measured: add the `echo` agent".to_owned());
                "not measured"
            }
            Some(m) if m.p999 <= BUDGET_MS => {
                reasons.push(format!(
                    "mouth-to-ear p99.9 {:.2} ms is within the {BUDGET_MS} ms budget",
                    m.p999
                ));
                "within budget"
            }
            Some(m) => {
                reasons.push(format!(
                    "mouth-to-ear p99.9 {:.2} ms exceeds the {BUDGET_MS} ms budget",
                    m.p999
                ));
                "over budget"
            }
        };
        self.verdict = if self.failures.is_empty() {
            verdict.to_owned()
        } else {
            "failed".to_owned()
        };
        self.verdict_reasons = reasons;
    }

    /// The budget table and the summary, as printed on stdout.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "voxring run: {} at {} Hz, quantum {} ({:.2} ms), {} channel(s), {:.1} s{}",
            self.device,
            self.rate,
            self.quantum,
            self.quantum as f64 * 1e3 / self.rate as f64,
            self.channels,
            self.elapsed_s,
            if self.interrupted {
                " (interrupted: partial report)"
            } else {
                ""
            }
        );
        // Columns as wide as the longest name (a Python agent's is `python:<file>`).
        let w = width(self.stages.iter().map(|st| st.name.as_str()), 22);
        let table = Table::Text { first: w };
        table.row(
            &mut s,
            &["stage (ms)", "p50", "p99", "p99.9", "max", "samples"],
        );
        for st in &self.stages {
            st.write_row(table, &mut s);
        }
        match self.mouth_to_ear_ms {
            Some(m) => {
                let ms = [m.p50, m.p99, m.p999, m.max].map(|v| format!("{v:.3}"));
                table.row(&mut s, &["mouth-to-ear", &ms[0], &ms[1], &ms[2], &ms[3]]);
            }
            None => {
                let _ = writeln!(
                    s,
                    "{:<w$} not measured (no echo agent)",
                    "mouth-to-ear",
                    w = w
                );
            }
        }
        let _ = writeln!(
            s,
            "cycles {}  late {}  frames lost {}  xruns {} (capture {}, playback {}, of them {} not reported by the device)",
            self.cycles,
            self.cycles_late,
            self.frames_lost,
            self.xruns,
            self.xruns_capture,
            self.xruns_playback,
            self.xruns_playback_hidden
        );
        if let Some(b) = &self.buffer {
            let _ = writeln!(
                s,
                "buffer: {} periods ({}; reserve {} → {} frames): {}",
                b.periods, b.mode, b.reserve_start, b.reserve_end, b.reason
            );
            if let Some(c) = b.device_wakeups.as_ref().filter(|c| c.usual > 1) {
                let _ = writeln!(s, "device: {}", c.text(self.quantum, self.rate));
            }
        }
        if let Some(h) = &self.host_steal {
            let _ = writeln!(s, "host: {}", h.words());
        }
        if self.keep_awake_cpus > 0 {
            let _ = writeln!(
                s,
                "keep-awake: {} CPU(s) kept from going idle by a SCHED_IDLE spinner each \
                 (--keep-awake): no wake-up waited for a halted CPU; they showed 100 % busy",
                self.keep_awake_cpus
            );
        }
        self.hub_text(&mut s);
        self.glitches_text(&mut s);
        self.agents_text(&mut s);
        let _ = writeln!(
            s,
            "IPC CPU {:.4} % of one core (ring operations; waiting for frames {:.3} %)   audio thread {}   clock drift {}",
            self.ipc_cpu_percent,
            self.wait_cpu_percent,
            self.audio_scheduling,
            self.drift_ppm
                .map_or_else(|| "not measured".to_owned(), |d| format!("{d:+.1} ppm"))
        );
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        let _ = writeln!(
            s,
            "verdict: {} ({})",
            self.verdict,
            self.verdict_reasons.join("; ")
        );
        s
    }

    /// The agents' lines and what the voice-activity detector found, as printed on stdout.
    fn agents_text(&self, s: &mut String) {
        let aw = width(self.agents.iter().map(|a| a.name.as_str()), 9);
        for a in &self.agents {
            let _ = writeln!(
                s,
                "agent {:<aw$} pid {:<7} frames {:<8} late {:<5} lost {:<5} cpu {:.2} %  {}  {}  [{}]",
                a.name,
                a.pid,
                a.frames,
                opt(a.late),
                a.lost,
                a.cpu_percent,
                a.transport,
                a.scheduling,
                a.exit
            );
        }
        if let Some(v) = &self.vad {
            let _ = writeln!(
                s,
                "vad: {} speech segment(s), {} speech frames",
                v.speech_segments, v.speech_frames
            );
        }
    }

    /// The hub session's line (none in reports made before run became one).
    fn hub_text(&self, s: &mut String) {
        if let Some(h) = &self.hub {
            let _ = writeln!(
                s,
                "hub {}: {:.3} wake syscalls per cycle; ring operations {:.2} µs per cycle \
                 (capture {:.2}, mix {:.2}); output queue target {} ± {}: {} repeated, {} \
                 dropped, {} periods of silence, {} quiet frames trimmed; readers evicted {} \
                 (lag) {} (dead)",
                h.name,
                h.wake_syscalls_per_cycle,
                (h.capture_ns_per_cycle + h.mix_ns_per_cycle) / 1e3,
                h.capture_ns_per_cycle / 1e3,
                h.mix_ns_per_cycle / 1e3,
                h.queue_target,
                h.queue_band,
                h.queue_repeated,
                h.queue_dropped,
                h.queue_gaps,
                h.queue_trimmed,
                h.evicted_lag,
                h.evicted_dead
            );
            if let Some((low, p1, p50)) = depth_summary(&h.queue_depths) {
                let _ = writeln!(
                    s,
                    "output queue at each pull: {low} frame(s) at the lowest, {p1} at 1 %, {p50} \
                     at the median (the margin a hold-up of the audio thread finds)"
                );
            }
        }
    }

    /// The Markdown report; `plots` are (title, file name) pairs of SVGs beside it.
    pub fn markdown(&self, plots: &[(&str, &str)]) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# voxring run\n");
        let _ = writeln!(s, "Command: `{}`\n", self.command);
        let _ = writeln!(
            s,
            "Device `{}`{}, {} Hz, quantum {} ({:.2} ms), {} channel(s), {} CPU hog(s), {:.1} s run{}.\n",
            self.device,
            self.playback_device
                .as_ref()
                .map_or_else(String::new, |p| format!(" → playback `{p}`")),
            self.rate,
            self.quantum,
            self.quantum as f64 * 1e3 / self.rate as f64,
            self.channels,
            self.load,
            self.elapsed_s,
            if self.interrupted {
                " (interrupted by Ctrl-C: partial report)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "**Verdict: {}** against the {BUDGET_MS} ms voice budget — {}.\n",
            self.verdict,
            self.verdict_reasons.join("; ")
        );
        if !self.failures.is_empty() {
            let _ = writeln!(s, "## Why the run failed\n");
            for f in &self.failures {
                let _ = writeln!(s, "- {f}");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "## Latency budget\n");
        let _ = writeln!(
            s,
            "| stage | p50 ms | p99 ms | p99.9 ms | max ms | samples | measured from → to |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|");
        for st in &self.stages {
            st.write_row(Table::Markdown, &mut s);
        }
        if let Some(m) = self.mouth_to_ear_ms {
            let _ = writeln!(
                s,
                "| **mouth-to-ear** | {:.3} | {:.3} | {:.3} | {:.3} | | first sample captured → first sample played |",
                m.p50, m.p99, m.p999, m.max
            );
        }
        self.figures_markdown(&mut s);
        self.agents_markdown(&mut s);
        self.glitches_markdown(&mut s);
        if let Some(v) = &self.vad {
            let _ = writeln!(
                s,
                "\nVoice activity: {} speech segment(s), {} speech frames.",
                v.speech_segments, v.speech_frames
            );
        }
        if let Some(w) = &self.wav {
            let _ = writeln!(s, "\nRecording: `{w}`.");
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(s, "\n## Warnings\n");
            for w in &self.warnings {
                let _ = writeln!(s, "- {w}");
            }
        }
        if !plots.is_empty() {
            let _ = writeln!(s, "\n## Plots\n");
            for (title, file) in plots {
                let _ = writeln!(s, "### {title}\n\n![{title}]({file})\n");
            }
        }
        s
    }

    /// The glitches, one line each (at most 20, then how many more), as printed on stdout.
    fn glitches_text(&self, s: &mut String) {
        if self.glitches.is_empty() {
            return;
        }
        let _ = writeln!(s, "glitches: {}", self.glitches.len());
        for g in self.glitches.iter().take(20) {
            let _ = writeln!(
                s,
                "  cycle {} {}: {}: {}",
                g.cycle, g.kind, g.cause, g.detail
            );
        }
        if self.glitches.len() > 20 {
            let _ = writeln!(
                s,
                "  ... {} more (all in --json and --report)",
                self.glitches.len() - 20
            );
        }
        if let Some(hint) = self.keep_awake_hint() {
            let _ = writeln!(s, "{hint}");
        }
    }

    /// What to try when the host held audio up on a virtual machine whose idle vCPUs halt
    /// and the run did not keep them awake; None otherwise.
    fn keep_awake_hint(&self) -> Option<&'static str> {
        let held_up = self.glitches.iter().any(|g| g.cause == "host-stall");
        (held_up && self.vcpus_halt && self.keep_awake_cpus == 0).then_some(
            "hint: some glitches above are host stalls, and this virtual machine's idle vCPUs \
             halt (voxring doctor: vm-idle): every wake-up first waits for the host to run the \
             vCPU again. --keep-awake keeps every CPU busy with a SCHED_IDLE spinner while audio \
             runs, which shortens those wake-ups (not the host's own stalls); it costs every idle \
             cycle (docs/run.md, \"Idle vCPUs halt\")",
        )
    }

    /// The buffer and the glitches of the Markdown report.
    fn glitches_markdown(&self, s: &mut String) {
        if let Some(b) = &self.buffer {
            let _ = writeln!(s, "\n## Buffer\n");
            let _ = writeln!(
                s,
                "{} periods ({}), returned frames in reserve {} at the start, {} at the end: {}.",
                b.periods, b.mode, b.reserve_start, b.reserve_end, b.reason
            );
            if let Some(p) = &b.probe {
                let _ = writeln!(
                    s,
                    "\nWake-up probe: {} timer wake-ups at {}, late by p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms.",
                    p.wakeups, p.scheduling, p.p50_ms, p.p99_ms, p.max_ms
                );
            }
            if let Some(c) = &b.device_wakeups {
                let _ = writeln!(s, "\nCapture: {}.", c.text(self.quantum, self.rate));
            }
        }
        let _ = writeln!(s, "\n## Glitches\n");
        if self.glitches.is_empty() {
            let _ = writeln!(s, "None.");
            return;
        }
        let _ = writeln!(s, "| cycle | kind | cause | detail |\n|---:|---|---|---|");
        for g in &self.glitches {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                g.cycle, g.kind, g.cause, g.detail
            );
        }
    }

    /// The cycles, losses and CPU of the Markdown report.
    fn figures_markdown(&self, s: &mut String) {
        let drift = self
            .drift_ppm
            .map_or_else(|| "not measured".to_owned(), |d| format!("{d:+.2} ppm"));
        let figures = [
            ("cycles", self.cycles.to_string()),
            (
                "late cycles (any agent past the deadline)",
                self.cycles_late.to_string(),
            ),
            ("frames lost", self.frames_lost.to_string()),
            (
                "xruns capture / playback",
                format!("{} / {}", self.xruns_capture, self.xruns_playback),
            ),
            (
                "IPC CPU (ring operations), share of one core",
                format!("{:.4} %", self.ipc_cpu_percent),
            ),
            (
                "CPU of waiting for frames (futex park/wake), share of one core",
                format!("{:.4} %", self.wait_cpu_percent),
            ),
            ("audio thread", self.audio_scheduling.clone()),
            ("clock drift", drift),
            (
                "the host (CPU time the hypervisor stole)",
                self.host_steal
                    .map_or_else(|| "not sampled".to_owned(), |h| h.words()),
            ),
            (
                "frames produced / CRC-32",
                format!("{} / {}", self.producer.frames, self.producer.checksum),
            ),
        ];
        let _ = writeln!(s, "\n## Cycles, losses, CPU\n");
        let _ = writeln!(s, "| figure | value |\n|---|---:|");
        for (figure, value) in &figures {
            Table::Markdown.row(s, &[figure, value]);
        }
    }

    /// The agents' table of the Markdown report.
    fn agents_markdown(&self, s: &mut String) {
        let _ = writeln!(s, "\n## Agents\n");
        let table = Table::Markdown;
        table.row(
            s,
            &[
                "agent",
                "pid",
                "frames",
                "late",
                "lost",
                "CRC-32",
                "CPU %",
                "ring ops %",
                "waiting %",
                "transport",
                "scheduling",
                "end",
            ],
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---|---|"
        );
        let share = |v: Option<f64>, places: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.places$}"))
        };
        for a in &self.agents {
            table.row(
                s,
                &[
                    &a.name,
                    &a.pid.to_string(),
                    &a.frames.to_string(),
                    &opt(a.late),
                    &a.lost.to_string(),
                    &a.checksum,
                    &format!("{:.2}", a.cpu_percent),
                    &share(a.ipc_cpu_percent, 4),
                    &share(a.wait_cpu_percent, 3),
                    &a.transport,
                    &a.scheduling,
                    &a.exit,
                ],
            );
        }
    }
}

#[cfg(test)]
mod tests;
