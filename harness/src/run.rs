//! `voxring run`: the voice pipeline of real processes, and its latency budget.
//!
//! ```text
//!  capture device ──► capture ring (broadcast, segment) ──► vad      (process) ──► control register
//!   (RT thread)                                         ├─► recorder (process) ──► WAV file
//!                                                       └─► echo     (process) ──► return ring
//!  playback device ◄──────────────────────────────────────────────────────────────┘
//! ```
//!
//! The orchestrator (this process) owns the device, the segments and the children; each agent
//! is this same binary re-executed with the hidden `agent` subcommand, or a Python script
//! (`--agents python:PATH`, see [`python`]). See [`pipeline`] for the stages and how each is
//! measured, [`agents`] for the agent processes.
//!
//! Exit status: 0 the run finished within the 150 ms budget (or without an `echo` agent, when
//! mouth-to-ear is not measured) and nothing failed; 1 it failed (an agent died or gave no
//! report, an agent's CRC-32 differs from the producer's, frames were lost, silence was
//! played, no cycle ran, the device or a ring failed: the verdict line, the JSON's `failures`
//! and the report say which) or finished over budget; 2 it could not run, or an output could
//! not be written (the message says why; outputs are checked before the run starts); 130 it
//! was interrupted by Ctrl-C (SIGINT; also SIGTERM and SIGHUP) and wrote a partial report.
//!
//! Files: every output (`--json`, `--report`, `--wav`) and the recording start unnamed and
//! private (0600) and get their name only when complete (see [`outfile`]); without `--wav`
//! and `--report` the recording never gets a name and goes away with the last process that
//! holds it, even after `kill -9`.

use std::path::PathBuf;
use std::process::ExitCode;

pub mod agents;
pub mod assemble;
pub mod buffer;
pub mod collect;
pub mod device;
pub mod dsp;
pub mod glitch;
pub mod measure;
pub mod outfile;
pub mod outputs;
pub mod pipeline;
pub mod plots;
pub mod procs;
pub mod python;
pub mod report;
pub mod spawn;
pub mod sync;
pub mod wav;

/// Exit status after Ctrl-C (128 + SIGINT, the shell convention).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit status when the run failed (see `RunReport::failures`) or finished over budget.
pub const EXIT_OVER_BUDGET: u8 = 1;

/// An agent process of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum AgentKind {
    /// Energy-based voice activity; publishes speech on/off through a control register.
    Vad,
    /// Lossless reader writing a WAV file of everything it got.
    Recorder,
    /// Processes frames and returns them through a second ring to the playback side.
    Echo,
}

impl AgentKind {
    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vad => "vad",
            Self::Recorder => "recorder",
            Self::Echo => "echo",
        }
    }
}

/// An agent of `--agents`: a built-in one, or a Python script (`python:PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSpec {
    /// One of the agents built into this binary.
    Builtin(AgentKind),
    /// A Python script started with the voxring package (see [`python`]).
    Python(PathBuf),
}

impl AgentSpec {
    /// Its name in reports: `vad`, `recorder`, `echo`, `python:<file name>`.
    pub fn name(&self) -> String {
        match self {
            Self::Builtin(k) => k.name().to_owned(),
            Self::Python(p) => format!(
                "python:{}",
                p.file_name()
                    .map_or_else(|| p.display().to_string(), |f| f.to_string_lossy().into())
            ),
        }
    }

    /// The built-in kind, `None` for a Python agent.
    pub fn builtin(&self) -> Option<AgentKind> {
        match self {
            Self::Builtin(k) => Some(*k),
            Self::Python(_) => None,
        }
    }
}

impl std::str::FromStr for AgentSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("python:") {
            if path.is_empty() {
                return Err("python: needs the script's path, e.g. \
                            python:platform-linux/python/examples/agent.py"
                    .to_owned());
            }
            return Ok(Self::Python(PathBuf::from(path)));
        }
        <AgentKind as clap::ValueEnum>::from_str(s, false)
            .map(Self::Builtin)
            .map_err(|_| {
                format!("unknown agent '{s}': expected vad, recorder, echo or python:PATH")
            })
    }
}

/// Sample format of the stream: voxring-core's one [`SampleFormat`].
pub use voxring_core::SampleFormat as Format;

/// `--format`: `s16`, `s32` or `f32` (listed in `--help`, parsed by voxring-linux's parser).
pub fn format_parser() -> impl clap::builder::TypedValueParser<Value = Format> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["s16", "s32", "f32"])
        .map(|s| voxring_linux::audio::parse_sample_format(&s).expect("every listed value parses"))
}

/// Options of `voxring run`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Exit status: 0 finished within the 150 ms budget (or mouth-to-ear not \
measured) and nothing failed; 1 failed (an agent died or gave no report, a CRC-32 mismatch, \
frames lost, silence played, no cycle ran; the verdict says which) or over budget; 2 could not \
run or an output could not be written; 130 interrupted by Ctrl-C (SIGINT; also SIGTERM, \
SIGHUP), and a partial report is still written. Nothing is left behind in either case: \
segments, child processes and temporary files are removed; outputs are written whole (0600) \
or not at all."
)]
pub struct Args {
    /// The device and its stream.
    #[command(flatten)]
    pub stream: device::StreamArgs,
    /// Agent processes to start, comma-separated: `vad`, `recorder`, `echo`, and
    /// `python:PATH` for a Python agent script (see platform-linux/python/examples/agent.py;
    /// needs a Python 3 with numpy: VOXRING_PYTHON, else python3 or /usr/bin/python3).
    #[arg(long, value_delimiter = ',', default_value = "vad,recorder,echo")]
    pub agents: Vec<AgentSpec>,
    /// Ordinary-priority CPU hog processes to run beside the pipeline (stand-ins for concurrent
    /// retrieval queries).
    #[arg(long, default_value_t = 0)]
    pub load: u32,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// SCHED_FIFO priority of the audio thread (0: do not ask for real-time scheduling). A
    /// refusal is a warning in the report, not an error.
    #[arg(long, default_value_t = 70)]
    pub rt_priority: u8,
    /// SCHED_FIFO priority of the agents' processing threads (0: none). Default: 10 below
    /// --rt-priority, as a sound server's clients run below its driver: at the same priority,
    /// agents polling for a frame (`--agent-wait periodic`) can keep the audio thread off
    /// every CPU of a small machine until they give up and park.
    #[arg(long)]
    pub agent_rt_priority: Option<u8>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a Markdown report with SVG plots (latency histogram, per-cycle timeline) into this
    /// folder (created if missing); the recording goes there too unless --wav says otherwise.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Where the recorder writes its WAV file (0600, written whole when the recorder finished
    /// it, replacing what is there). Without --wav or --report the recording goes to an
    /// unnamed temporary file that never outlives the run (the recorder's sample count and
    /// CRC-32 are still compared with the producer's).
    #[arg(long)]
    pub wav: Option<PathBuf>,
    /// Never show the progress bar (it is shown only when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    /// How the built-in agents wait for frames: `park` (the hub's commit wakes them: one
    /// syscall per cycle) or `periodic` (a timer and a poll window; no wake syscall when the
    /// device's hand-over jitters less than the window: see docs/run.md for why `park` is
    /// the default).
    #[arg(long, value_enum, default_value = "park")]
    pub agent_wait: AgentWait,
}

/// How the built-in agents wait for the next mic frame (`--agent-wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AgentWait {
    /// `WaitMode::Periodic` (docs/wake-free.md): sleep on a timer until just before the
    /// frame is due, poll briefly, park only when it is late; the hub's commit then finds no
    /// parked reader and makes no wake syscall.
    Periodic,
    /// Park on the mic ring's futex at once; the hub's commit wakes the parked readers (one
    /// syscall per cycle).
    #[default]
    Park,
}

/// A role of a child process (hidden `voxring agent` subcommand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The voice-activity detector.
    Vad,
    /// The recorder.
    Recorder,
    /// The echo agent.
    Echo,
    /// A CPU hog (ordinary priority, spins until killed).
    Hog,
    /// Keeps every CPU from going idle (`--keep-awake`): a `SCHED_IDLE` spinner on each,
    /// until killed.
    Awake,
}

/// Options of the hidden `voxring agent` subcommand (started by `voxring run`, not by people).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// What this process does.
    #[arg(long, value_enum)]
    pub role: Role,
    /// PID of the orchestrator; the agent stops when it dies.
    #[arg(long)]
    pub parent: u32,
    /// The run's hub (its mic ring `<hub>.mic`, the echo's output ring `<hub>.out.echo`,
    /// the run's sync region `<hub>.sync`; none for a hog).
    #[arg(long, default_value = "")]
    pub hub: String,
    /// This agent's index in the cycle fence.
    #[arg(long, default_value_t = 0)]
    pub index: u32,
    /// The recorder's WAV file: a descriptor inherited from the orchestrator (an unnamed,
    /// private file it publishes at the end, see [`outfile`]).
    #[arg(long)]
    pub wav_fd: Option<i32>,
    /// SCHED_FIFO priority of the processing thread (0: none).
    #[arg(long, default_value_t = 0)]
    pub rt_priority: u8,
    /// How to wait for the next mic frame.
    #[arg(long, value_enum, default_value = "park")]
    pub wait: AgentWait,
}

/// `voxring run`.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    pipeline::run(args)
}

/// The hidden `voxring agent` subcommand.
pub fn agent_main(args: AgentArgs) -> anyhow::Result<ExitCode> {
    agents::main(args)
}
