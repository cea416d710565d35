//! The orchestrator of `voxring run`: a hub session. Its phases, in order:
//!
//! 1. **device and segments** ([`open_hub`]): the hub engine of `voxring serve`
//!    (`crate::serve::engine`) on a hub named `run-<pid>-<tag>`, plus the run's sync region
//!    (the cycle fence and the VAD's register).
//! 2. **agents** ([`super::spawn`]): each its own process, joining the hub by name through
//!    the public client, as any outside agent does; the run waits for the echo's output ring
//!    to be mixed before the device starts.
//! 3. **the real-time thread** ([`play`]): the hub's own sides (mic ring, output queues and
//!    mix), watched by the probes of [`super::measure`]; this thread ticks the hub's control
//!    (liveness, lanes, directory), watches the agents, the progress bar and Ctrl-C.
//! 4. **drain** ([`drain`]): the end of stream, the agents' reports, the hub stopped.
//! 5. **report** ([`report`], [`super::collect`], [`super::outputs`]).
//!
//! The mic ring is lossless (the recorder must get every frame): an agent a whole ring behind
//! is evicted by the hub (its run fails); the hub never waits on the real-time thread.

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use voxring_linux::audio::mixer::{Mix, QueueParams};
use voxring_linux::audio::monotonic_ns;
use voxring_linux::cleanup::{SignalMode, install_signal_cleanup, termination_requested};
use voxring_linux::hub::directory::HubInfo;

use super::assemble;
use super::buffer::{BufferReport, Periods};
use super::glitch::StealSampler;
use super::measure::{CaptureProbe, PlaybackProbe, RtParams, Table, stall_hook};
use super::outputs::{self, Outputs, Recording};
use super::procs::{self, Proc};
use super::python::PythonLauncher;
use super::report::RunReport;
use super::spawn;
use super::sync::{SyncHandle, VadState};
use super::{AgentKind, AgentSpec, Args, EXIT_INTERRUPTED, EXIT_OVER_BUDGET, Format};
use crate::serve::engine::{self, Engine, EngineSpec, end_of_stream, run_audio};
use crate::serve::rt::{MicSink, MixSource, RtShared};

/// How long agents get to drain the ring and report after the end of stream.
const FINISH_GRACE: Duration = Duration::from_secs(10);
/// How long the hub waits for the echo's output ring to be found before the device starts.
const LANE_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-cycle records kept for the timeline (beyond, cycles are still counted and measured).
const MAX_TIMELINE_CYCLES: usize = 1 << 20;
/// The output queue's band (no correction within target ± band).
pub(super) const QUEUE_BAND: u32 = 1;
/// The output queue's target depth with no reserve (`--periods 2`): one frame being played,
/// one behind it, so the phase between the device's capture and playback periods is absorbed.
const QUEUE_TARGET: u32 = 2;
/// How far below the audio thread the agents' processing threads run (see [`agent_priority`]).
const AGENT_PRIORITY_BELOW: u8 = 10;

fn check_args(args: &Args) -> anyhow::Result<Vec<AgentSpec>> {
    anyhow::ensure!(
        args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 86_400.0,
        "--seconds must be between 0 and 86400 (got {})",
        args.seconds
    );
    // At least one cycle: a run of no cycle proves nothing (and would report no failure).
    let cycles = args.seconds * f64::from(args.stream.rate) / f64::from(args.stream.quantum.max(1));
    anyhow::ensure!(
        cycles >= 1.0,
        "--seconds {} is shorter than one cycle ({} frames at {} Hz = {:.3} ms): nothing would \
         run. Give at least --seconds {:.4}",
        args.seconds,
        args.stream.quantum,
        args.stream.rate,
        f64::from(args.stream.quantum) * 1e3 / f64::from(args.stream.rate.max(1)),
        f64::from(args.stream.quantum) / f64::from(args.stream.rate.max(1))
    );
    anyhow::ensure!(
        args.load <= 64,
        "--load {} is more CPU hogs than makes sense (at most 64)",
        args.load
    );
    anyhow::ensure!(
        args.rt_priority <= 99 && args.agent_rt_priority.unwrap_or(0) <= 99,
        "--rt-priority and --agent-rt-priority must be 0 (none) or 1..=99"
    );
    let mut agents = Vec::new();
    for a in &args.agents {
        if !agents.contains(a) {
            agents.push(a.clone());
        }
    }
    anyhow::ensure!(
        !agents.is_empty(),
        "--agents needs at least one of vad, recorder, echo, python:PATH"
    );
    anyhow::ensure!(
        agents.len() <= voxring_core::fence::MAX_AGENTS,
        "--agents lists {} agents; at most {} can run",
        agents.len(),
        voxring_core::fence::MAX_AGENTS
    );
    Ok(agents)
}

/// `voxring run`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let agents = check_args(&args)?;
    // Every output is created (unnamed) now: an unwritable one stops the run before it starts.
    let outputs = outputs::prepare_outputs(&args, &agents)?;
    // Python agents: find an interpreter with numpy (and the scripts) before anything is made.
    let scripts: Vec<&Path> = agents
        .iter()
        .filter_map(|a| match a {
            AgentSpec::Python(p) => Some(p.as_path()),
            AgentSpec::Builtin(_) => None,
        })
        .collect();
    let launcher = if scripts.is_empty() {
        None
    } else {
        Some(PythonLauncher::find(&scripts)?)
    };
    let mut warnings = Vec::new();
    if let Err(e) = install_signal_cleanup(SignalMode::Notify) {
        warnings.push(format!("Ctrl-C will not give a partial report: {e}"));
    }
    let plan = Plan {
        args: &args,
        agents: &agents,
        launcher: launcher.as_ref(),
    };
    match args.stream.format {
        Format::S16 => run_with::<i16>(&plan, outputs, warnings),
        Format::S32 => run_with::<i32>(&plan, outputs, warnings),
        Format::F32 => run_with::<f32>(&plan, outputs, warnings),
    }
}

/// What the command line asked for.
pub(super) struct Plan<'p> {
    pub args: &'p Args,
    pub agents: &'p [AgentSpec],
    pub launcher: Option<&'p PythonLauncher>,
}

impl Plan<'_> {
    pub fn has(&self, kind: AgentKind) -> bool {
        self.agents.contains(&AgentSpec::Builtin(kind))
    }
}

pub(super) fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn run_with<T: Mix>(
    plan: &Plan<'_>,
    outputs: Outputs,
    mut warnings: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let args = plan.args;
    let pid = std::process::id();
    // Before the probe, so that it measures the machine the run will have; stopped (by PID)
    // when it is dropped, on every path out of here.
    let awake = args
        .stream
        .keep_awake
        .then(|| spawn::keep_awake(pid, &mut warnings))
        .flatten();
    let (periods, mut buffer) = choose_buffer(args, &mut warnings);
    let hub = format!("run-{pid}-{:x}", monotonic_ns() & 0xff_ffff);
    let mut engine = open_hub::<T>(args, &hub, periods, &buffer, &mut warnings)?;
    let sync = SyncHandle::create(&hub, plan.agents.len() as u32)?;
    let shared = RtShared::new();
    // Published: the agents find the hub by its directory.
    engine.tick(&shared);
    let launch = spawn::Launch {
        hub: &hub,
        parent: pid,
        rt_priority: agent_priority(args),
        wait: args.agent_wait,
        wav: outputs.wav.as_ref(),
        launcher: plan.launcher,
    };
    let procs = spawn::agents(plan.agents, &launch)?;
    let speakers = usize::from(plan.has(AgentKind::Echo));
    if let Err(e) = wait_for_lanes(&mut engine, &shared, speakers) {
        for (_, p) in procs {
            let _ = p.kill();
        }
        return Err(e);
    }
    let hogs = spawn::hogs(args.load, pid, &mut warnings);
    let params = rt_params(plan, &engine, &buffer);
    let table = Table::new((engine.mic.config().frames as usize * 4).next_power_of_two());
    let played = play(plan, &mut engine, &shared, (&sync, &table, &params), procs);
    let played = match played {
        Ok(p) => p,
        Err(e) => {
            for h in hogs {
                let _ = h.kill();
            }
            return Err(e);
        }
    };
    let drained = drain(engine, played, &sync, &shared, hogs);
    if let Some(w) = &drained.end.scheduling.1 {
        warnings.push(w.clone());
    }
    buffer.reserve_end = drained.end.source.target - QUEUE_TARGET;
    let mut report = assemble::report(plan, &drained, buffer, warnings)?;
    report.keep_awake_cpus = awake.as_ref().map_or(0, |a| a.cpus);
    report.vcpus_halt = crate::doctor::idle_vcpus_halt();
    drop(awake);
    finish(report, outputs, &drained)
}

/// The hub of this run: the device, the mic ring (room for ~0.5 s, at least 64 frames, a
/// slot for each agent and more for outside ones), the output queues' target (2 frames, plus
/// the reserve of `--periods`).
fn open_hub<T: Mix>(
    args: &Args,
    hub: &str,
    periods: u32,
    buffer: &BufferReport,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Engine<T>> {
    let mic_frames = ((f64::from(args.stream.rate) / f64::from(args.stream.quantum) * 0.5).ceil()
        as u32)
        .next_power_of_two()
        .max(64);
    let spec = EngineSpec {
        name: hub,
        device: args.stream.request(periods),
        format: args.stream.format,
        max_agents: 64,
        mic_frames,
        params: QueueParams {
            target: QUEUE_TARGET + buffer.reserve_start,
            band: QUEUE_BAND,
        },
        group: None,
    };
    Engine::open(&spec, warnings)
}

/// Ticks the hub's control until `lanes` output rings are mixed (the echo's), so the
/// device does not start before the echo can be heard.
fn wait_for_lanes<T: Mix>(
    engine: &mut Engine<T>,
    shared: &RtShared,
    lanes: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + LANE_TIMEOUT;
    loop {
        engine.tick(shared);
        if engine.control.lanes_live() >= lanes {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the hub did not find the echo agent's output ring within {} s (refused: {})",
                LANE_TIMEOUT.as_secs(),
                engine.control.refusals.join("; ")
            );
        }
        std::thread::sleep(engine::TICK);
    }
}

/// What the real-time sides need to know, from what the device granted.
fn rt_params<T: Mix>(plan: &Plan<'_>, engine: &Engine<T>, buffer: &BufferReport) -> RtParams {
    let dev = &engine.dev;
    let cycles = (plan.args.seconds * f64::from(dev.rate)).round() as u64 / u64::from(dev.quantum);
    RtParams {
        channels: usize::from(dev.channels),
        quantum: dev.quantum,
        rate: dev.rate,
        period_ns: dev.period_ns,
        buffer_ns: dev.buffer_ns,
        // The built-in agents mark the cycle fence; Python agents do not, so they are left out.
        agents_mask: plan
            .agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.builtin().is_some())
            .fold(0u64, |m, (i, _)| m | (1u64 << i)),
        timeline_cap: (cycles as usize + 16).min(MAX_TIMELINE_CYCLES),
        start_ns: monotonic_ns(),
        talker: dev.synthetic,
        max_target: QUEUE_TARGET + buffer.reserve_max,
        stall: stall_hook(),
    }
}

/// The real-time sides, measured.
type Sink<'a> = MicSink<'a, CaptureProbe<'a>>;
pub(super) type Source<'a, T> = MixSource<'a, T, PlaybackProbe<'a>>;

/// What the run's real-time phase left.
struct Played<'a, T: Mix> {
    end: engine::AudioEnd<Sink<'a>, Source<'a, T>>,
    procs: Vec<(AgentSpec, Proc)>,
    interrupted: bool,
    agent_died: Option<String>,
    elapsed_s: f64,
    steal: StealSampler,
    device: (String, bool, u32, u32, u16, u64),
}

/// Runs the device until the run's length, Ctrl-C, a device error or an agent's death,
/// ticking the hub's control meanwhile.
fn play<'a, T: Mix>(
    plan: &Plan<'_>,
    engine: &mut Engine<T>,
    shared: &'a RtShared,
    (sync, table, params): (&'a SyncHandle, &'a Table, &RtParams),
    mut procs: Vec<(AgentSpec, Proc)>,
) -> anyhow::Result<Played<'a, T>> {
    let Some((tx, queues)) = engine.take_rt() else {
        anyhow::bail!("internal: the hub's real-time ends were taken twice");
    };
    let dev = &engine.dev;
    let device = (
        dev.label.clone(),
        dev.synthetic,
        dev.rate,
        dev.quantum,
        dev.channels,
        dev.period_ns,
    );
    let (q, ch) = (dev.quantum, dev.channels);
    let sink = MicSink::with_probe(tx, shared, q, ch, CaptureProbe::new(sync, table, params)?);
    let target = engine.info.target_depth as u32;
    let source = MixSource::with_probe(
        queues,
        shared,
        q,
        ch,
        PlaybackProbe::new(table, params, target),
    );
    let total_frames = (plan.args.seconds * f64::from(dev.rate)).round() as u64;
    let progress = progress_bar(plan.args, total_frames / u64::from(q));
    let mut steal = StealSampler::new();
    steal.sample(monotonic_ns());
    let (mut interrupted, mut agent_died) = (false, None);
    let start = Instant::now();
    let Engine {
        dev, control, info, ..
    } = engine;
    let end = run_audio(
        &mut dev.duplex,
        (sink, source),
        shared,
        (plan.args.rt_priority, Some(total_frames)),
        || {
            if termination_requested() && !interrupted {
                interrupted = true;
                shared.stop.request();
            }
            if agent_died.is_none() {
                agent_died = procs.iter_mut().find_map(|(s, p)| {
                    Some(format!(
                        "the {} agent ended early ({})",
                        s.name(),
                        p.exited()?
                    ))
                });
                if agent_died.is_some() {
                    // The run has failed: stop now rather than run on without it.
                    shared.stop.request();
                }
            }
            engine::tick(control, info, shared, None);
            if let Some(pb) = &progress {
                // Relaxed: progress only.
                pb.set_position(table.committed.load(Ordering::Relaxed));
            }
            steal.sample(monotonic_ns());
        },
    );
    if let Some(pb) = &progress {
        pb.finish_and_clear();
    }
    let end = match end {
        Ok(e) => e,
        Err(e) => {
            for (_, p) in procs {
                let _ = p.kill();
            }
            return Err(e);
        }
    };
    steal.sample(monotonic_ns());
    Ok(Played {
        end,
        procs,
        interrupted: interrupted || termination_requested(),
        agent_died,
        elapsed_s: start.elapsed().as_secs_f64(),
        steal,
        device,
    })
}

fn progress_bar(args: &Args, cycles: u64) -> Option<indicatif::ProgressBar> {
    (!args.no_progress && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(cycles);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} cycles {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    })
}

/// What the run left once drained: the measured sides, the agents' ends, the hub's row.
pub(super) struct Drained<'a> {
    pub end: engine::AudioEnd<CaptureProbe<'a>, PlaybackProbe<'a>>,
    pub playback_ipc_ns: u64,
    pub capture_ipc_ns: u64,
    pub finished: Vec<(AgentSpec, procs::Finished)>,
    pub late_by_agent: Vec<u64>,
    pub vad: VadState,
    pub hub: HubInfo,
    pub interrupted: bool,
    pub agent_died: Option<String>,
    pub elapsed_s: f64,
    pub steal: StealSampler,
    pub device: (String, bool, u32, u32, u16, u64),
    pub eos_sent: bool,
    pub hub_name: String,
}

/// The end of stream to the agents, their reports, the hogs stopped, the hub stopped (its
/// segments removed).
fn drain<'a, T: Mix>(
    engine: Engine<T>,
    played: Played<'a, T>,
    sync: &SyncHandle,
    shared: &RtShared,
    hogs: Vec<Proc>,
) -> Drained<'a> {
    let Played {
        end,
        procs,
        interrupted,
        agent_died,
        elapsed_s,
        steal,
        device,
    } = played;
    let capture_ipc_ns = end.sink.ipc_ns();
    let engine::AudioEnd {
        error,
        scheduling,
        xruns,
        sink,
        source,
    } = end;
    let (mut tx, capture) = sink.into_parts();
    let playback_ipc_ns = source.ipc_ns();
    // The mix's lanes hold the agents' output rings: released before the hub's cleanup.
    let playback = source.into_probe();
    let eos_sent = end_of_stream(&mut tx);
    let vad = sync.read_vad();
    let finished: Vec<(AgentSpec, procs::Finished)> = procs
        .into_iter()
        .map(|(k, p)| (k, p.finish(FINISH_GRACE)))
        .collect();
    for h in hogs {
        let _ = h.kill();
    }
    let late_by_agent = sync.late_counts();
    let hub_name = engine.control.hub().to_owned();
    let hub = engine.stop(shared);
    drop(tx);
    // Every agent has ended: an output ring still there belonged to one that was killed (the
    // hub may have retired its lane before it saw it die). Only unused segments are removed.
    let out_prefix = voxring_linux::hub::out_file_prefix(&hub_name);
    let _ = voxring_linux::cleanup::clean_segments_matching(|f| f.starts_with(&out_prefix));
    Drained {
        end: engine::AudioEnd {
            error,
            scheduling,
            xruns,
            sink: capture,
            source: playback,
        },
        playback_ipc_ns,
        capture_ipc_ns,
        finished,
        late_by_agent,
        vad,
        hub,
        interrupted,
        agent_died,
        elapsed_s,
        steal,
        device,
        eos_sent,
        hub_name,
    }
}

/// Prints the report, writes the outputs (each atomically) and says the exit status.
fn finish(mut report: RunReport, outputs: Outputs, d: &Drained<'_>) -> anyhow::Result<ExitCode> {
    // The recording is kept only when the recorder finished it (a dead recorder's WAV has no
    // valid header); else its unnamed file just goes away.
    let recorder_finished = d.finished.iter().any(|(s, f)| {
        *s == AgentSpec::Builtin(AgentKind::Recorder)
            && f.clean_exit
            && f.stdout.lines().any(|l| l.starts_with('{'))
    });
    let Outputs {
        json,
        report: report_files,
        wav,
    } = outputs;
    let keep_wav = match wav {
        Some(Recording::Kept(p)) if recorder_finished => {
            report.wav = Some(p.target().display().to_string());
            Some(p)
        }
        Some(Recording::Kept(p)) => {
            report.warnings.push(format!(
                "the recording was not written to {}: the recorder did not finish it",
                p.target().display()
            ));
            None
        }
        Some(Recording::Scratch(_)) | None => None,
    };
    report.judge();
    // The results on stdout first: a failed write below loses none of them.
    print!("{}", report.text());
    let mut write_errors = Vec::new();
    if let Some(p) = json {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        write_errors.extend(p.write_and_publish(text.as_bytes()).err());
    }
    if let Some(files) = report_files {
        let (capture, playback) = (&d.end.sink, &d.end.source);
        write_errors
            .extend(outputs::write_report_dir(files, &report, capture, playback, d.device.5).err());
    }
    if let Some(p) = keep_wav {
        write_errors.extend(p.publish().err());
    }
    if !write_errors.is_empty() {
        let msgs: Vec<String> = write_errors.iter().map(|e| format!("{e:#}")).collect();
        anyhow::bail!(
            "{} (the results are printed above; nothing partial was left at those paths)",
            msgs.join("; ")
        );
    }
    Ok(if d.interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if report.verdict == "failed" || report.verdict == "over budget" {
        ExitCode::from(EXIT_OVER_BUDGET)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--periods`: the number forced, or the probe's choice; and what the report says of it.
fn choose_buffer(args: &Args, warnings: &mut Vec<String>) -> (u32, BufferReport) {
    let r = super::buffer::resolve(
        args.stream.periods,
        &args.stream.device,
        args.stream.quantum,
        args.stream.rate,
        args.rt_priority,
    );
    let (periods, reason, probe, reserve_max) = (r.periods, r.why, r.probe, r.reserve_max);
    warnings.extend(r.short_of_graph);
    let mode = if args.stream.periods == Periods::Auto {
        if probe.is_none() {
            warnings.push(format!("the buffer was not measured: {reason}"));
        }
        "auto"
    } else {
        "forced"
    };
    let report = BufferReport {
        mode: mode.to_owned(),
        periods,
        reserve_start: periods - 2,
        reserve_end: periods - 2,
        reserve_max,
        grown_at_cycles: Vec::new(),
        reason,
        probe,
        device_wakeups: None,
    };
    (periods, report)
}

/// The agents' SCHED_FIFO priority: `--agent-rt-priority`, else [`AGENT_PRIORITY_BELOW`] below
/// the audio thread's (0 stays 0: no real-time scheduling asked for).
fn agent_priority(args: &Args) -> u8 {
    match (args.agent_rt_priority, args.rt_priority) {
        (Some(p), _) => p,
        (None, 0) => 0,
        (None, p) => p.saturating_sub(AGENT_PRIORITY_BELOW).max(1),
    }
}
