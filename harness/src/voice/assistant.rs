//! `voxring voice assistant`: the voice round trip through the hub, one command.
//!
//! It starts a hub (a child `voxring serve` with a name of its own, stopped by its PID at the
//! end), then the parts join it through the public clients: the talker and the reply agent
//! as speaking agents (`voice hub-talk`, `voice hub-reply`), the earshot VAD agent on
//! `NAME.mic` publishing into its register `NAME.vad`, the Python recogniser on `NAME.mic`
//! (native package) publishing each text in the register `NAME.asr`, and a listener (a thread
//! of this process) keeping everything the mic heard. The talker's speech goes out through the
//! hub's playback and comes back in its capture (the synthetic device's loopback, or the
//! headless PipeWire's null-sink monitor); so does the reply, where the listener finds its
//! first sample. See [`super::listen`] for how the ground truth is placed.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde_json::{Value, json};

use super::hub_agents::SynthKind;
use super::listen::{Capture, Placed, listen, place_utterances};
use super::measure::{
    Handoff, StageKind, UtteranceRecord, bar_rows, scenario_wer, stacked_bars_svg, table_markdown,
};
use super::run_guard::{HubProc, HubSettings, RunGuard};
use crate::run::procs::{self, Finished, Proc};
use voxring_linux::cleanup::{SignalMode, install_signal_cleanup, termination_requested};

/// `voxring voice assistant`.
#[derive(Debug, Args)]
pub struct AssistantArgs {
    /// The hub's device: synthetic (its playback loops back into its capture, bit-exact),
    /// pipewire (through the headless PipeWire's null sink), or an ALSA PCM.
    #[arg(long, default_value = "synthetic")]
    pub device: String,
    /// CPU hogs running beside the pipeline (as `voxring run --load`).
    #[arg(long, default_value_t = 0)]
    pub load: u32,
    /// Write the run's summary (records, counters, verdict) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// An existing directory for the records, the table, the stacked-bar SVG, and two WAVs:
    /// what the mic heard (`mic.wav`) and what the talker said (`script.wav`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// An utterance (repeat for several); default: the scenario's three.
    #[arg(long = "say")]
    pub say: Vec<String>,
    /// How many utterances to speak: the --say list (or the scenario's three) cycled to this
    /// many (default: each once). 20 gives a p50 and a p99 worth reading.
    #[arg(long)]
    pub utterances: Option<usize>,
    /// Silence between utterances, s (the reply is spoken in it).
    #[arg(long, default_value_t = 5.0)]
    pub gap_s: f64,
    /// How the reply agent synthesises: the resident libespeak-ng, or an espeak-ng process
    /// per reply.
    #[arg(long, value_enum, default_value_t = SynthKind::Library)]
    pub synth: SynthKind,
    /// Frames per hub cycle at 48 kHz.
    #[arg(long, default_value_t = 128)]
    pub quantum: u32,
    /// The hub's device buffer, in quanta (`voxring serve --periods`): a longer buffer
    /// survives longer stalls of the hub's thread and adds its length to the playback.
    #[arg(long, default_value_t = 2)]
    pub periods: u32,
    /// The hub's mic ring, in frames (`voxring serve --mic-frames`): how far behind the VAD
    /// and the recogniser (which reads nothing while it decodes) may fall before the hub
    /// evicts them. 2048 frames of 128 are 5.5 s.
    #[arg(long, default_value_t = 2048)]
    pub mic_frames: u32,
    /// The hub's output queues' target depth in quanta (`voxring serve --target`; default:
    /// the device buffer's `--periods`, at least 4). The talker's lane is paced by mic frames,
    /// so the frames queued in it are all it has in hand: a hub thread stalled by the host
    /// catches up in one burst of up to `--periods` cycles (the device buffer absorbs the
    /// stall), and a burst longer than the queue empties the lane, a repeat that fails the
    /// run (the user's speech would not reach the mic whole). A clean-clone CI run with 16
    /// periods and a queue of 4 failed that way. At least 4 (band 3) also absorbs three late
    /// wake-ups of the talker, against the hub's default of 2 (band 1) with which loaded runs
    /// failed.
    #[arg(long)]
    pub queue_target: Option<u32>,
    /// The band around the target inside which nothing is corrected (`voxring serve --band`;
    /// default: the target minus one).
    #[arg(long)]
    pub queue_band: Option<u32>,
    /// SCHED_FIFO priority of the talker and reply agents (0: none).
    #[arg(long, default_value_t = 60)]
    pub rt_priority: u8,
    /// SCHED_FIFO priority of the VAD agent (0: none): below the talker's and the reply's (it
    /// can fall behind by a few frames without harm), above the recogniser's (its decision
    /// starts the reply's clock and costs well under a millisecond per frame).
    #[arg(long, default_value_t = 55)]
    pub vad_rt_priority: u8,
    /// The recogniser agent.
    #[command(flatten)]
    pub asr: RecogniserArgs,
    /// Also draw each utterance with every hand-off costing this many ns (e.g. what `voxring
    /// bench ipc` measured for Unix sockets or HTTP at the same frame size).
    #[arg(long)]
    pub compare_handoff_ns: Option<u64>,
    /// The name of that transport in the plot.
    #[arg(long, default_value = "sockets")]
    pub compare_name: String,
}

/// How the Python recogniser agent is run.
#[derive(Debug, Args)]
pub struct RecogniserArgs {
    /// The Python with pocketsphinx and the native voxring package (default:
    /// $VOXRING_VOICE_PYTHON, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The recogniser script (default: harness/python/voice/recogniser.py of this source tree).
    #[arg(long)]
    pub recogniser: Option<PathBuf>,
    /// Decode after the VAD's decision (batch), or while the user speaks (streaming: faster,
    /// but it heard "turn off" as "turn on" under load; see docs/voice-round-trip.md).
    #[arg(long, default_value = "batch", value_parser = ["streaming", "batch"])]
    pub decode: String,
    /// SCHED_FIFO priority of every thread of the recogniser, and of the reply agent's
    /// synthesis thread (0: none): below the hub's, the talker's, the reply's frame loop and
    /// the VAD's, above everything at normal priority (CPU hogs, builds), so that a decode or
    /// a synthesis is not shared out with them. A refusal is a warning.
    #[arg(long, default_value_t = 50)]
    pub asr_rt_priority: u8,
}

impl RecogniserArgs {
    /// The recogniser's command, without its ring and register arguments.
    fn command(&self) -> (PathBuf, Command) {
        let py = self.python.clone().unwrap_or_else(|| {
            std::env::var_os("VOXRING_VOICE_PYTHON").map_or_else(|| "python3".into(), PathBuf::from)
        });
        let script = self.recogniser.clone().unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("python/voice/recogniser.py")
        });
        let mut cmd = Command::new(&py);
        cmd.arg(script).args(["--decode", &self.decode]);
        cmd.args(["--rt-priority", &self.asr_rt_priority.to_string()]);
        (py, cmd)
    }
}

/// Waits for a child's `{"event":"ready"}` line (other lines are kept by the child).
fn wait_ready(p: &mut Proc, what: &str) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        anyhow::ensure!(
            !termination_requested(),
            "stopped by a signal while waiting for the {what}"
        );
        if let Some(line) = p.wait_line(Duration::from_millis(200))
            && let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["event"] == "ready"
        {
            return Ok(v);
        }
        if let Some(st) = p.exited() {
            anyhow::bail!("the {what} exited before it was ready ({st})");
        }
    }
    anyhow::bail!("the {what} was not ready within 120 s")
}

/// The JSON lines a finished child wrote.
fn lines(f: &Finished) -> Vec<Value> {
    f.stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn event<'a>(lines: &'a [Value], kind: &str) -> impl Iterator<Item = &'a Value> {
    lines.iter().filter(move |v| v["event"] == kind)
}

/// Starts the agents in order (each ready before the next), the hogs, and the talker last;
/// each goes into `ch` as soon as it is started (so a failure half-way stops those started).
/// Returns how each agent's threads are scheduled, read from /proc once all are ready.
fn start_agents(
    a: &AssistantArgs,
    name: &str,
    dir: &Path,
    says: &[String],
    ch: &mut RunGuard,
) -> anyhow::Result<Value> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let (vad_reg, asr, said) = (
        format!("{name}.vad"),
        format!("{name}.asr"),
        format!("{name}.said"),
    );
    let vad_rt = a.vad_rt_priority.to_string();
    let p = procs::spawn_self(
        "vad",
        &s(&[
            "voice",
            "vad",
            "--hub",
            name,
            "--register",
            &vad_reg,
            "--rt-priority",
            &vad_rt,
        ]),
    )?;
    ready(ch, "vad", p, "VAD agent")?;
    let (py, mut cmd) = a.asr.command();
    cmd.args([
        "--ring",
        &voxring_linux::hub::mic_name(name),
        "--vad",
        &vad_reg,
    ])
    .args(["--asr", &asr, "--said", &said]);
    procs::die_with_parent_before_exec(&mut cmd, std::process::id());
    let p = procs::spawn("recogniser", cmd)
        .with_context(|| format!("cannot start the recogniser with {}", py.display()))?;
    ready(
        ch,
        "recogniser",
        p,
        "recogniser (Python; is pocketsphinx in $VOXRING_VOICE_PYTHON's venv?)",
    )?;
    let rt = a.rt_priority.to_string();
    let synth = serde_json::to_value(a.synth)?;
    let p = procs::spawn_self(
        "reply",
        &s(&[
            "voice",
            "hub-reply",
            "--hub",
            name,
            "--asr",
            &asr,
            "--said",
            &said,
            "--rt-priority",
            &rt,
            "--synth",
            synth.as_str().unwrap_or("library"),
            "--synth-rt-priority",
            &a.asr.asr_rt_priority.to_string(),
        ]),
    )?;
    ready(ch, "reply", p, "reply agent")?;
    for i in 0..a.load {
        let pid = std::process::id().to_string();
        ch.hogs.push(procs::spawn_self(
            &format!("hog {}", i + 1),
            &s(&["agent", "--role", "hog", "--parent", &pid]),
        )?);
    }
    let mut args = s(&["voice", "hub-talk", "--hub", name, "--rt-priority", &rt]);
    args.extend(["--gap-s".into(), a.gap_s.to_string()]);
    args.extend([
        "--script-out".into(),
        dir.join("script.s16").display().to_string(),
    ]);
    for t in says {
        args.extend(["--say".into(), t.clone()]);
    }
    let p = procs::spawn_self("talker", &args)?;
    ready(ch, "talker", p, "talker")?;
    Ok(scheduling(a, ch))
}

/// How each agent's threads are scheduled (`super::sched::check`), against what it was
/// asked; a warning on stderr for each that did not get its real-time priority.
fn scheduling(a: &AssistantArgs, ch: &RunGuard) -> Value {
    let mut out = serde_json::Map::new();
    for (who, p) in &ch.agents {
        let asked = match *who {
            "vad" => vec![a.vad_rt_priority],
            "recogniser" => vec![a.asr.asr_rt_priority],
            "reply" => vec![a.rt_priority, a.asr.asr_rt_priority],
            _ => vec![a.rt_priority],
        };
        let (v, warning) = super::sched::check(who, p.pid(), &asked);
        if let Some(w) = warning {
            eprintln!("voxring voice assistant: warning: {w}");
        }
        out.insert((*who).to_owned(), v);
    }
    out.into()
}

/// Hands `p` to the guard, then waits for it to be ready.
fn ready(ch: &mut RunGuard, who: &'static str, p: Proc, what: &str) -> anyhow::Result<()> {
    ch.agents.push((who, p));
    let (_, p) = ch.agents.last_mut().context("no agent")?;
    wait_ready(p, what).map(|_| ())
}

/// The hub's output queue (target, band): see [`AssistantArgs::queue_target`].
fn queue_params(a: &AssistantArgs) -> (u32, u32) {
    let target = a.queue_target.unwrap_or(a.periods.max(4));
    (target, a.queue_band.unwrap_or(target.saturating_sub(1)))
}

/// Waits until the talker has finished and every utterance got its reply written out (or a
/// give-up bound: 180 s more than the script lasts), then 1.5 s for the last reply to come
/// back through the loopback.
fn wait_scenario(ch: &mut RunGuard, n: usize, script_s: f64) {
    let t0 = Instant::now();
    let give_up = Duration::from_secs(180) + Duration::from_secs_f64(script_s);
    let mut replies = 0;
    let mut talker_done = false;
    while t0.elapsed() < give_up && !(talker_done && replies >= n) {
        if termination_requested() {
            return; // SIGINT/SIGTERM/SIGHUP: end the run in order (the guard cleans up)
        }
        for (who, p) in &mut ch.agents {
            if *who == "talker" && !talker_done {
                talker_done = p.exited().is_some();
            }
            if *who == "reply" {
                while let Some(l) = p.wait_line(Duration::from_millis(50)) {
                    replies += usize::from(l.contains("\"event\":\"reply\""));
                }
            }
        }
        if ch
            .agents
            .iter_mut()
            .any(|(w, p)| *w != "talker" && p.exited().is_some())
        {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
}

/// `voxring voice assistant`.
pub fn assistant(a: &AssistantArgs) -> anyhow::Result<ExitCode> {
    for (what, p) in [
        ("--rt-priority", a.rt_priority),
        ("--vad-rt-priority", a.vad_rt_priority),
        ("--asr-rt-priority", a.asr.asr_rt_priority),
    ] {
        anyhow::ensure!(p <= 99, "{what} {p}: give 0 (none) or 1..=99");
    }
    anyhow::ensure!(
        a.load <= 64,
        "--load {} is more CPU hogs than makes sense (at most 64)",
        a.load
    );
    let says = utterances(a)?;
    if let Some(d) = &a.report {
        anyhow::ensure!(
            d.is_dir(),
            "--report {}: not an existing directory; create it first",
            d.display()
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("voxring-assistant")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .context("cannot make a temporary directory")?;
    let name = format!("assist-{}", std::process::id());
    let hub_json = dir.path().join("hub.json");
    // A signal ends the run in order (children stopped, segments removed), not mid-way.
    install_signal_cleanup(SignalMode::Notify)
        .map_err(|e| anyhow::anyhow!("cannot install the signal handling: {e}"))?;
    let mut guard = RunGuard::new(&name);
    let settings = HubSettings {
        device: &a.device,
        quantum: a.quantum,
        periods: a.periods,
        mic_frames: a.mic_frames,
        queue: queue_params(a),
    };
    guard.hub = Some(HubProc::start(
        &name,
        &settings,
        &hub_json,
        &dir.path().join("hub.log"),
    )?);
    let (tx, rx) = std::sync::mpsc::channel();
    let listener = {
        let name = name.clone();
        std::thread::Builder::new()
            .name("listener".into())
            .spawn(move || {
                listen(&name, || {
                    let _ = tx.send(());
                })
            })
            .context("cannot start the listener")?
    };
    let started = rx.recv_timeout(Duration::from_secs(60)).is_ok();
    let children = if started {
        start_agents(a, &name, dir.path(), &says, &mut guard)
    } else {
        Err(anyhow::anyhow!("the listener could not join the hub"))
    };
    let scheduling = match children {
        Ok(v) => v,
        Err(e) => {
            guard.stop_hub();
            let _ = listener.join();
            return Err(e);
        }
    };
    let script_s = says.len() as f64 * (a.gap_s + 4.0);
    wait_scenario(&mut guard, says.len(), script_s);
    let hub_status = guard.stop_hub();
    let finished = guard.finish_agents(Duration::from_secs(70));
    let capture = listener
        .join()
        .map_err(|_| anyhow::anyhow!("the listener panicked"))?;
    let hub_log = std::fs::read_to_string(dir.path().join("hub.log")).unwrap_or_default();
    let hub_summary: Value = std::fs::read_to_string(&hub_json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let script = std::fs::read(dir.path().join("script.s16")).unwrap_or_default();
    let script: Vec<i16> = script
        .chunks_exact(2)
        .map(|b| i16::from_ne_bytes([b[0], b[1]]))
        .collect();
    let run = RunOutputs {
        says: &says,
        finished: &finished,
        capture,
        script,
        hub_summary,
        hub_status,
        hub_log,
        left_behind: guard.sweep(),
        scheduling,
    };
    conclude(a, &run)
}

/// The utterances to speak: `--say` (or the scenario's), cycled to `--utterances`.
fn utterances(a: &AssistantArgs) -> anyhow::Result<Vec<String>> {
    let base: Vec<String> = if a.say.is_empty() {
        super::SCENARIO.iter().map(|s| (*s).to_owned()).collect()
    } else {
        a.say.clone()
    };
    let n = a.utterances.unwrap_or(base.len());
    anyhow::ensure!(
        (1..=500).contains(&n),
        "--utterances {n}: give 1 to 500 (each takes about --gap-s plus 2 s)"
    );
    Ok(base.iter().cycle().take(n).cloned().collect())
}

/// Everything a run left, for [`conclude`].
struct RunOutputs<'a> {
    says: &'a [String],
    finished: &'a [(&'a str, Finished)],
    capture: anyhow::Result<Capture>,
    script: Vec<i16>,
    hub_summary: Value,
    hub_status: String,
    hub_log: String,
    /// Segments of the run nobody removed (an agent that crashed), removed at the end.
    left_behind: Vec<String>,
    /// How each agent's threads were scheduled once all were ready (from /proc).
    scheduling: Value,
}

impl RunOutputs<'_> {
    fn of(&self, who: &str) -> Option<&Finished> {
        self.finished
            .iter()
            .find(|(w, _)| *w == who)
            .map(|(_, f)| f)
    }
}

/// Builds the records, checks the run, writes the JSON and the report, prints the verdict.
fn conclude(a: &AssistantArgs, run: &RunOutputs<'_>) -> anyhow::Result<ExitCode> {
    let mut failures = Vec::new();
    for (who, f) in run.finished {
        if !f.clean_exit {
            failures.push(format!(
                "the {who} agent did not end cleanly ({}): {}",
                f.status,
                f.stderr.join(" | ")
            ));
        }
    }
    let h = &run.hub_summary;
    for k in [
        "mic_dropped",
        "evicted_lag",
        "evicted_dead",
        "xruns_capture",
    ] {
        if h[k].as_u64() != Some(0) {
            failures.push(format!("the hub's {k} is {} (frames lost)", h[k]));
        }
    }
    if termination_requested() {
        failures.push("stopped by a signal (SIGINT, SIGTERM or SIGHUP) before its end".into());
    }
    if !run.left_behind.is_empty() {
        failures.push(format!(
            "segments of the run were left behind by an agent that did not remove them \
             (removed now): {:?}",
            run.left_behind
        ));
    }
    let (records, mut why, shifts) = match &run.capture {
        Ok(cap) => build_records(a, run, cap),
        Err(e) => (
            Vec::new(),
            vec![format!("the listener failed: {e:#}")],
            Vec::new(),
        ),
    };
    failures.append(&mut why);
    let wer = scenario_wer(&records);
    if records.len() == run.says.len() && wer > 0.0 {
        failures.push(format!("word error rate {wer:.3}: misrecognised"));
    }
    let summary = summarise(a, run, &records, wer, &failures, &shifts);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("cannot write --json {}", p.display()))?;
    }
    if let Some(d) = &a.report {
        write_report(a, d, &records)?;
        if let Ok(cap) = &run.capture {
            write_wav(&d.join("mic.wav"), cap.rate, &cap.samples)?;
            write_wav(&d.join("script.wav"), cap.rate, &run.script)?;
        }
    }
    println!("{}", table_markdown(&records));
    println!("word error rate {wer:.3}; {}", summary["verdict"]);
    let rate = run.capture.as_ref().map_or(48_000, |c| c.rate);
    if let Some(&last) = shifts.last().filter(|&&v| v != 0) {
        println!(
            "note: the device path moved the talker's utterances by {shifts:?} samples from \
             where the first was heard ({:.1} ms by the last): cycles the audio server missed, \
             outside the hub (the hub's own corrections of the lane are checked on their own)",
            last as f64 * 1000.0 / f64::from(rate)
        );
    }
    if failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for f in &failures {
        eprintln!("voxring voice assistant: FAILED: {f}");
    }
    if !run.hub_log.trim().is_empty() {
        eprintln!("hub's log:\n{}", run.hub_log.trim_end());
    }
    Ok(ExitCode::from(1))
}

/// A mono S16 WAV of `samples` (the report's `mic.wav`: what the hub's mic heard, from the
/// listener's first frame on; `script.wav`: what the talker said).
fn write_wav(path: &Path, rate: u32, samples: &[i16]) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)
        .with_context(|| format!("cannot write {}", path.display()))?;
    for &v in samples {
        w.write_sample(v)?;
    }
    w.finalize()
        .with_context(|| format!("cannot write {}", path.display()))
}

fn write_report(a: &AssistantArgs, d: &Path, records: &[UtteranceRecord]) -> anyhow::Result<()> {
    let mut jl = String::new();
    for r in records {
        jl.push_str(&serde_json::to_string(r)?);
        jl.push('\n');
    }
    std::fs::write(d.join("records.jsonl"), jl).context("cannot write the records")?;
    std::fs::write(d.join("voice-latency.md"), table_markdown(records))
        .context("cannot write the table")?;
    let rows = bar_rows(records, a.compare_handoff_ns, &a.compare_name);
    let title = format!("Reply latency by stage ({}, --load {})", a.device, a.load);
    std::fs::write(d.join("voice-latency.svg"), stacked_bars_svg(&title, &rows))
        .context("cannot write the SVG")
}

/// The records of the utterances, what is wrong with the run, and how far the device path
/// moved each utterance (samples, see [`Placed::shift`]).
fn build_records(
    a: &AssistantArgs,
    run: &RunOutputs<'_>,
    cap: &Capture,
) -> (Vec<UtteranceRecord>, Vec<String>, Vec<i64>) {
    let mut why = Vec::new();
    if cap.lost > 0 {
        why.push(format!("the listener lost {} mic frames", cap.lost));
    }
    let talker = run.of("talker").map(lines).unwrap_or_default();
    let Some(ready) = event(&talker, "ready").next() else {
        why.push("the talker said nothing".into());
        return (Vec::new(), why, Vec::new());
    };
    let placements: Vec<(u64, u64)> = ready["placements"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|p| {
                    (
                        p["start"].as_u64().unwrap_or(0),
                        p["end"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let placed = match place_utterances(
        cap,
        &run.script,
        &placements,
        a.device.starts_with("synthetic").then_some("talker"),
    ) {
        Ok(p) => p,
        Err(e) => {
            why.push(format!("{e:#}"));
            return (Vec::new(), why, Vec::new());
        }
    };
    // The hub's lane corrections are counted, not located: one seen near an utterance (a
    // quarter second either side) may have cut into the user's speech, and fails the run.
    let slack = u64::from(cap.rate / 4);
    for (k, p) in placed.iter().enumerate() {
        let n = super::listen::corrections_during(cap, "talker", p, slack);
        if n > 0 {
            why.push(format!(
                "the hub corrected the talker's lane {n} time(s) (dropped, repeated or gap) \
                 while utterance {} was on its way: the user's speech did not reach the mic whole",
                k + 1
            ));
        }
    }
    let rec = run.of("recogniser").map(lines).unwrap_or_default();
    let reply = run.of("reply").map(lines).unwrap_or_default();
    let vad = run.of("vad").map(lines).unwrap_or_default();
    let mut out = Vec::new();
    for (k, p) in placed.iter().enumerate() {
        let next = placed.get(k + 1).map_or(u64::MAX, |q| q.start);
        match record_for(cap, p, next, &run.says[k], &rec, &reply, &vad) {
            Ok(r) => out.push(r),
            Err(e) => why.push(format!("utterance {} ({:?}): {e:#}", k + 1, run.says[k])),
        }
    }
    (out, why, placed.iter().map(|p| p.shift).collect())
}

/// One utterance's record from the agents' lines and the capture.
fn record_for(
    cap: &Capture,
    p: &Placed,
    next_start: u64,
    said: &str,
    rec: &[Value],
    reply: &[Value],
    vad: &[Value],
) -> anyhow::Result<UtteranceRecord> {
    let u = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let r = event(rec, "result")
        .find(|r| u(r, "start_pos") < p.end && u(r, "end_pos") > p.start)
        .context(
            "no recognition result covers it (the VAD did not find it, or its decision was missed)",
        )?;
    let utt = u(r, "utterance");
    let rp = event(reply, "reply")
        .find(|x| u(x, "utterance") == utt)
        .context("the reply agent did not answer it")?;
    let offset = rp["first_loud_offset"]
        .as_u64()
        .context("the reply was silent")?;
    let loud = cap
        .first_loud(p.end, next_start)
        .context("its reply was not heard in the mic before the next utterance")?;
    let heard_pos = loud
        .checked_sub(offset)
        .context("the reply was heard before it began")?;
    let heard_ns = cap
        .time_of(heard_pos)
        .context("the reply's place is outside the capture")?;
    let decided = u(r, "vad_decided_pos");
    let vad_handoff = vad
        .iter()
        .filter(|v| v["event"] == "end")
        .flat_map(|v| v["events"].as_array().cloned().unwrap_or_default())
        .find(|e| e["kind"] == "End" && u(e, "decided_pos") == decided)
        .map_or(0, |e| u(&e, "handoff_ns"));
    let handoffs = vec![
        Handoff {
            name: "mic ring -> VAD".into(),
            within: StageKind::Vad,
            ns: vad_handoff,
        },
        Handoff {
            name: "VAD register -> recogniser".into(),
            within: StageKind::Recognition,
            ns: u(r, "vad_seen_ns").saturating_sub(u(r, "vad_decided_ns")),
        },
        Handoff {
            name: "mic ring -> recogniser".into(),
            within: StageKind::Recognition,
            ns: u(r, "mic_handoff_ns"),
        },
        Handoff {
            name: "recogniser register -> reply".into(),
            within: StageKind::Synthesis,
            ns: u(rp, "asr_seen_ns").saturating_sub(u(rp, "recognised_ns")),
        },
    ];
    Ok(UtteranceRecord {
        said: said.to_owned(),
        heard: r["text"].as_str().unwrap_or_default().to_owned(),
        rate: cap.rate,
        speech_end_pos: p.end,
        vad_decided_pos: decided,
        vad_decided_ns: u(r, "vad_decided_ns"),
        hangover_ms: u(r, "hangover_ms") as u32,
        recognised_ns: u(r, "recognised_ns"),
        reply_first_synth_ns: u(rp, "first_sample_synth_ns"),
        reply_first_commit_ns: u(rp, "first_commit_ns"),
        reply_heard_ns: Some(heard_ns),
        handoffs,
    })
}

/// p50, p90, p99 (nearest rank) and max of `v`, ms.
fn percentiles(v: &[f64]) -> Value {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = (q * v.len() as f64).ceil() as usize;
        v.get(rank.clamp(1, v.len().max(1)) - 1).copied()
    };
    json!({"n": v.len(), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": v.last()})
}

/// [`percentiles`] of each stage over the records.
fn stage_percentiles(records: &[UtteranceRecord]) -> Value {
    StageKind::ALL
        .iter()
        .map(|&k| {
            let v: Vec<f64> = records.iter().map(|r| r.stage_ms(k)).collect();
            (format!("{k:?}").to_lowercase(), percentiles(&v))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The run's JSON summary.
fn summarise(
    a: &AssistantArgs,
    run: &RunOutputs<'_>,
    records: &[UtteranceRecord],
    wer: f64,
    failures: &[String],
    device_shifts: &[i64],
) -> Value {
    let after_decision: Vec<f64> = records
        .iter()
        .map(|r| r.total_ms() - r.stage_ms(StageKind::Hangover) - r.stage_ms(StageKind::Vad))
        .collect();
    let per: Vec<Value> = records
        .iter()
        .zip(&after_decision)
        .map(|(r, d)| {
            let stages: serde_json::Map<String, Value> = StageKind::ALL
                .iter()
                .map(|&k| (format!("{k:?}").to_lowercase(), json!(r.stage_ms(k))))
                .collect();
            json!({"record": r, "stages_ms": stages, "total_ms": r.total_ms(),
                "decision_to_heard_ms": d, "handoffs_ms": r.handoff_ms(),
                "handoff_share": r.handoff_ms() / r.total_ms().max(1e-9)})
        })
        .collect();
    let agents: serde_json::Map<String, Value> = run
        .finished
        .iter()
        .map(|(w, f)| {
            (
                (*w).to_owned(),
                json!({"status": f.status, "pid": f.pid, "end": event(&lines(f), "end").next()}),
            )
        })
        .collect();
    let lanes = run
        .capture
        .as_ref()
        .map(|c| {
            c.lanes
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        json!({"dropped": v.0, "repeated": v.1, "gaps": v.2, "trimmed": v.3}),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
        })
        .unwrap_or_default();
    json!({
        "device": a.device, "load": a.load, "quantum": a.quantum, "periods": a.periods, "rate": 48000,
        "queue": queue_params(a), "utterances": run.says, "word_error_rate": wer, "per_utterance": per,
        "decision_to_heard_max_ms": after_decision.iter().copied().fold(0.0, f64::max),
        "decision_to_heard_ms": percentiles(&after_decision),
        "stage_ms": stage_percentiles(records),
        "synth": a.synth, "decode": a.asr.decode, "left_behind": run.left_behind,
        "hub": run.hub_summary, "hub_status": run.hub_status, "lanes": lanes, "agents": agents,
        "scheduling": run.scheduling,
        "lane_corrections": run.capture.as_ref().map(|c| json!(c.corrections)).unwrap_or_default(),
        "lane_trims": run.capture.as_ref().map(|c| json!(c.trims)).unwrap_or_default(),
        "device_shift_samples": device_shifts,
        "failures": failures,
        "verdict": if failures.is_empty() { "run valid: every utterance recognised, no frame lost" } else { "FAILED" },
    })
}
