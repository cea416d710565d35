//! The voice round trip's real parts (issue 16), each usable and tested alone, against plain
//! voxring rings (the hub wires them together once it lands):
//!
//! - [`synth`]: espeak-ng speech and rubato rate conversion;
//! - [`talker`]: utterances at known sample positions, played by the device side;
//! - [`vad`]: the earshot voice-activity engine and the record it publishes;
//! - [`agents`]: the parts as processes (`voxring voice talk|vad|reply`);
//! - [`measure`]: per-utterance latency records, word error rate, the table and the
//!   stacked-bar SVG of the report.
//!
//! The speech recogniser is a Python agent: `harness/python/voice/recogniser.py`.

use std::process::ExitCode;

use clap::{Args, Subcommand};

pub mod agents;
pub mod assistant;
pub mod espeak_lib;
pub mod hub_agents;
pub mod listen;
pub mod measure;
pub mod run_guard;
pub mod sched;
pub mod synth;
pub mod talker;
pub mod vad;

/// The scenario's utterances (the recogniser's grammar, commands.jsgf, holds them).
pub const SCENARIO: [&str; 3] = [
    "turn on the kitchen light",
    "what time is it",
    "turn off the bedroom light",
];

/// `voxring voice ...`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Speak utterances (espeak-ng) through the synthetic device into a new mic ring.
    Talk(TalkArgs),
    /// The earshot voice-activity agent: read a mic ring, publish speech start/end.
    Vad(VadArgs),
    /// Speak each line of stdin (espeak-ng) into a new reply ring.
    Reply(ReplyArgs),
    /// Draw per-utterance records (JSON lines) as a table and a stacked-bar SVG.
    Report(ReportArgs),
    /// The voice round trip through a hub, one command: talker, VAD, recogniser, reply.
    Assistant(assistant::AssistantArgs),
    /// The talker as a speaking agent of a hub (started by `voice assistant`).
    #[command(hide = true)]
    HubTalk(hub_agents::HubTalkArgs),
    /// The reply agent as a speaking agent of a hub (started by `voice assistant`).
    #[command(hide = true)]
    HubReply(hub_agents::HubReplyArgs),
}

/// `voxring voice report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Per-utterance records, one JSON object a line (measure::UtteranceRecord).
    #[arg(long)]
    pub records: std::path::PathBuf,
    /// An existing directory for voice-latency.md and voice-latency.svg.
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Also draw each utterance with every hand-off costing this many ns (what `voxring
    /// bench ipc` measured for Unix sockets or HTTP at the same frame size).
    #[arg(long)]
    pub compare_handoff_ns: Option<u64>,
    /// The name of that transport in the plot.
    #[arg(long, default_value = "sockets")]
    pub compare_name: String,
}

/// `voxring voice talk`.
#[derive(Debug, Args)]
pub struct TalkArgs {
    /// The mic ring (its rate and frame are the device's rate and period).
    #[command(flatten)]
    pub out: RingArgs,
    /// An utterance (repeat for several); default: the scenario's three.
    #[arg(long = "say")]
    pub say: Vec<String>,
    /// The synthetic device's buffer, ms: how long the talker may stall before the device
    /// overruns (a run that overran is refused, not reported).
    #[arg(long, default_value_t = 200)]
    pub buffer_ms: u32,
    /// Silence before the first utterance, s.
    #[arg(long, default_value_t = 0.5)]
    pub lead_s: f64,
    /// Silence between utterances, s.
    #[arg(long, default_value_t = 2.0)]
    pub gap_s: f64,
    /// Silence after the last, s.
    #[arg(long, default_value_t = 1.0)]
    pub tail_s: f64,
}

impl TalkArgs {
    fn texts(&self) -> Vec<String> {
        if self.say.is_empty() {
            SCENARIO.iter().map(|s| (*s).to_owned()).collect()
        } else {
            self.say.clone()
        }
    }
}

/// `voxring voice vad`.
#[derive(Debug, Args)]
pub struct VadArgs {
    /// The mic ring to read (mono S16).
    #[arg(long, required_unless_present = "hub")]
    pub ring: Option<String>,
    /// Join this hub's mic (`voxring serve --name NAME`) through its client instead.
    #[arg(long, conflicts_with = "ring")]
    pub hub: Option<String>,
    /// The control register to create and publish into.
    #[arg(long)]
    pub register: String,
    /// Score at or above which a 16 ms frame is speech.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// Speech frames in a row that start speech.
    #[arg(long, default_value_t = 2)]
    pub min_speech_frames: u32,
    /// Quiet 16 ms frames in a row that end speech (the hangover).
    #[arg(long, default_value_t = 12)]
    pub hangover_frames: u32,
    /// SCHED_FIFO priority of the agent (0: none; a refusal is a warning). Its decision
    /// starts the reply's clock: at normal priority, CPU hogs delayed it by up to 15 ms.
    #[arg(long, default_value_t = 0)]
    pub rt_priority: u8,
}

impl VadArgs {
    fn settings(&self) -> vad::VadSettings {
        vad::VadSettings {
            threshold: self.threshold,
            min_speech_frames: self.min_speech_frames,
            hangover_frames: self.hangover_frames,
        }
    }
}

/// `voxring voice reply`.
#[derive(Debug, Args)]
pub struct ReplyArgs {
    /// The reply ring.
    #[command(flatten)]
    pub out: RingArgs,
}

/// The mono S16 ring a speaking part creates and writes.
#[derive(Debug, Args)]
pub struct RingArgs {
    /// The ring to create (mono S16).
    #[arg(long)]
    pub ring: String,
    /// Start once this many readers have joined the ring.
    #[arg(long, default_value_t = 1)]
    pub readers: u16,
    /// Rate, Hz.
    #[arg(long, default_value_t = 48_000)]
    pub rate: u32,
    /// Samples per ring frame (the talker's device period).
    #[arg(long, default_value_t = 480)]
    pub period: u32,
}

/// Entry point of `voxring voice`.
pub fn main(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Talk(a) => agents::talk(&a),
        Command::Vad(a) => agents::vad(&a),
        Command::Reply(a) => agents::reply(&a),
        Command::Report(a) => measure::report(&a),
        Command::Assistant(a) => assistant::assistant(&a),
        Command::HubTalk(a) => hub_agents::hub_talk(&a),
        Command::HubReply(a) => hub_agents::hub_reply(&a),
    }
}
