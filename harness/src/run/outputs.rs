//! The files of a run (`--json`, `--report`, `--wav` and the recording), all created unnamed
//! before anything runs and named only when complete (see [`super::outfile`]).

use anyhow::Context as _;

use super::measure::{CaptureProbe, PlaybackProbe};
use super::outfile::{self, Pending};
use super::report::{Percentiles, RunReport};
use super::{AgentKind, AgentSpec, Args, plots};

/// The recording's file.
#[derive(Debug)]
pub enum Recording {
    /// Published at `--wav` or in the `--report` folder at the end.
    Kept(Pending),
    /// No `--wav` and no `--report`: an unnamed file in the temp folder, never named, gone
    /// with the last process holding it.
    Scratch(std::fs::File),
}

impl Recording {
    pub fn file(&self) -> &std::fs::File {
        match self {
            Self::Kept(p) => p.file(),
            Self::Scratch(f) => f,
        }
    }
}

/// The files of a run, all created unnamed before anything runs (see [`outfile`]).
#[derive(Debug)]
pub struct Outputs {
    pub json: Option<Pending>,
    /// `report.md`, `latency-histogram.svg`, `timeline.svg` in the `--report` folder.
    pub report: Option<[Pending; 3]>,
    /// Only with a `recorder` agent.
    pub wav: Option<Recording>,
}

/// Checks every output can be written by creating it now, unnamed: a missing or unwritable
/// folder is refused before a device is opened or a process started.
pub fn prepare_outputs(args: &Args, agents: &[AgentSpec]) -> anyhow::Result<Outputs> {
    let json = args
        .json
        .as_deref()
        .map(|p| Pending::new(p, "--json"))
        .transpose()?;
    let report = match &args.report {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create the --report folder {} (nothing was run)",
                    dir.display()
                )
            })?;
            Some([
                Pending::new(&dir.join(REPORT_MD), "--report")?,
                Pending::new(&dir.join(HISTOGRAM_SVG), "--report")?,
                Pending::new(&dir.join(TIMELINE_SVG), "--report")?,
            ])
        }
        None => None,
    };
    let wav = if agents.contains(&AgentSpec::Builtin(AgentKind::Recorder)) {
        Some(match (&args.wav, &args.report) {
            (Some(p), _) => Recording::Kept(Pending::new(p, "--wav")?),
            (None, Some(dir)) => {
                Recording::Kept(Pending::new(&dir.join(RECORDING_WAV), "--report")?)
            }
            (None, None) => Recording::Scratch(outfile::scratch("the recording's temporary file")?),
        })
    } else {
        None
    };
    Ok(Outputs { json, report, wav })
}

const REPORT_MD: &str = "report.md";
const HISTOGRAM_SVG: &str = "latency-histogram.svg";
const TIMELINE_SVG: &str = "timeline.svg";
const RECORDING_WAV: &str = "recording.wav";

/// Writes `report.md` and its two plots into the `--report` folder, each atomically.
pub fn write_report_dir(
    files: [Pending; 3],
    report: &RunReport,
    capture: &CaptureProbe<'_>,
    playback: &PlaybackProbe<'_>,
    period_ns: u64,
) -> anyhow::Result<()> {
    let (hist, title) = if playback.hist_m2e.is_empty() {
        (
            &capture.hist,
            "Capture latency (no echo agent: mouth-to-ear not measured)",
        )
    } else {
        (&playback.hist_m2e, "Mouth-to-ear latency")
    };
    let markers: Vec<(&str, f64)> = Percentiles::of(hist)
        .map(|p| vec![("p50", p.p50), ("p99", p.p99), ("p99.9", p.p999)])
        .unwrap_or_default();
    let hist_svg = plots::histogram_svg(title, hist, &markers);
    let series = vec![
        plots::Series {
            name: "mouth-to-ear (ms)",
            color: "#2c7bb6",
            points: playback
                .timeline
                .iter()
                .map(|&(t, us)| (f64::from(t), f64::from(us) / 1e3))
                .collect(),
        },
        plots::Series {
            name: "capture (ms)",
            color: "#1a9641",
            points: capture
                .timeline
                .iter()
                .map(|&(t, us)| (f64::from(t), f64::from(us) / 1e3))
                .collect(),
        },
    ];
    // Every glitch at its cycle, coloured by its cause (see `super::glitch`).
    let marks: Vec<(f64, &str, &str)> = report
        .glitches
        .iter()
        .filter(|g| g.cycle != u64::MAX)
        .take(5000)
        .map(|g| {
            let (color, label) = match g.cause.as_str() {
                "host-stall" => ("#7b3294", "host stall"),
                "agent-late" => ("#d7191c", "agent late"),
                _ => ("#fdae61", "device"),
            };
            (g.cycle as f64 * period_ns as f64 / 1e9, color, label)
        })
        .collect();
    let timeline_svg = plots::timeline_svg(
        "Per-cycle latency; glitches by cause (purple: host stall, red: agent late, orange: device)",
        &series,
        &marks,
        Some((super::report::BUDGET_MS, "150 ms budget")),
    );
    let [md, hist_file, timeline_file] = files;
    hist_file.write_and_publish(hist_svg.as_bytes())?;
    timeline_file.write_and_publish(timeline_svg.as_bytes())?;
    md.write_and_publish(
        report
            .markdown(&[
                ("Latency histogram", HISTOGRAM_SVG),
                ("Per-cycle timeline", TIMELINE_SVG),
            ])
            .as_bytes(),
    )?;
    Ok(())
}
