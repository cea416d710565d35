//! `voxring serve`: a long-running hub any process joins by name.
//!
//! ```text
//!  capture device ──► <hub>.mic (one ring, one slot per reader, up to --max-agents) ──► agents
//!   (RT thread)                                                                         │
//!  playback device ◄── mix (sum with saturation) ◄── queue ◄── <hub>.out.<agent> ◄──────┘
//!                                          <hub>.hub: the directory (rows, registers)
//! ```
//!
//! The hub owns the device, the mic ring and the directory; agents own their output rings.
//! [`rt`] is the real-time thread, [`control`] the thread that finds, checks and retires
//! agents and publishes the directory; `voxring_linux::hub` is the client side every agent
//! uses, and docs/hub.md the recipe for Rust, C and Python agents and the policy.
//!
//! Stops on Ctrl-C, SIGTERM or SIGHUP (or after `--seconds`): readers get an end-of-stream
//! frame, and the hub's segments are removed (also the output rings of agents that died).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use voxring_linux::audio::mixer::{Mix, QueueParams};
use voxring_linux::cleanup::{SignalMode, install_signal_cleanup, termination_requested};
use voxring_linux::hub::check_hub_name;
use voxring_linux::hub::directory::{self, HubInfo};

use crate::run::Format;

pub mod agent;
pub mod control;
pub mod engine;
pub mod rt;

use engine::{Engine, EngineSpec, run_audio};
use rt::{MicSink, MixSource, RtShared};

/// Options of `voxring serve`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Agents join by name: see docs/hub.md (Rust: voxring_linux::hub; C: \
the C ABI on <name>.mic and <name>.out.<agent>; Python: the voxring package). `voxring top \
NAME` shows the hub live. Exit status: 0 stopped by Ctrl-C/SIGTERM/--seconds, 1 the device \
failed, 2 could not start."
)]
pub struct Args {
    /// The hub's name: its segments are /dev/shm/voxring.<name>.mic, .hub and .out.<agent>.
    #[arg(long, default_value = voxring_linux::hub::DEFAULT_HUB)]
    pub name: String,
    /// The device and its stream.
    #[command(flatten)]
    pub stream: crate::run::device::StreamArgs,
    /// Most agents reading the mic at once (consumer slots, claimed by joiners at any time).
    #[arg(long, default_value_t = 64)]
    pub max_agents: u16,
    /// Frames in the mic ring (a power of two): a reader this far behind is evicted.
    #[arg(long, default_value_t = 256)]
    pub mic_frames: u32,
    /// Output queues: frames queued before an agent's output plays, and kept.
    #[arg(long, default_value_t = 2)]
    pub target: u32,
    /// Output queues: no correction while the depth is within target ± band.
    #[arg(long, default_value_t = 1)]
    pub band: u32,
    /// Share the hub with this group (name or gid): segments 0660 in that group, and output
    /// rings of any member of it are accepted (default: this user only, 0600).
    #[arg(long)]
    pub group: Option<String>,
    /// SCHED_FIFO priority of the audio thread (0: none). A refusal is a warning.
    #[arg(long, default_value_t = 70)]
    pub rt_priority: u8,
    /// Stop after this many seconds (default: run until Ctrl-C or SIGTERM).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Write the hub's final counters as JSON to this file when it stops.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// `--group NAME|GID`: a number is a gid, anything else a group name.
pub fn group_spec(g: &str) -> voxring_linux::segment::GroupSpec {
    use voxring_linux::segment::GroupSpec;
    g.parse::<u32>()
        .map_or_else(|_| GroupSpec::Name(g.to_owned()), GroupSpec::Id)
}

fn check_args(a: &Args) -> anyhow::Result<()> {
    check_hub_name(&a.name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    anyhow::ensure!(
        (1..=directory::MAX_SLOTS as u16).contains(&a.max_agents),
        "--max-agents must be 1 to {} (the directory's rows)",
        directory::MAX_SLOTS
    );
    anyhow::ensure!(
        a.mic_frames.is_power_of_two() && (4..=1 << 16).contains(&a.mic_frames),
        "--mic-frames must be a power of two from 4 to 65536 (got {})",
        a.mic_frames
    );
    QueueParams {
        target: a.target,
        band: a.band,
    }
    .check(voxring_linux::hub::OUT_FRAMES)
    .map_err(|e| anyhow::anyhow!("--target/--band: {e}"))?;
    if let Some(s) = a.seconds {
        anyhow::ensure!(
            s.is_finite() && s > 0.0,
            "--seconds must be a positive number (got {s})"
        );
    }
    anyhow::ensure!(a.rt_priority <= 99, "--rt-priority must be 0..=99");
    Ok(())
}

/// `voxring serve`.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    if let Err(e) = install_signal_cleanup(SignalMode::Notify) {
        anyhow::bail!(
            "cannot stop cleanly on Ctrl-C ({e}); not starting a hub that would leave segments behind"
        );
    }
    match args.stream.format {
        Format::S16 => serve_with::<i16>(&args),
        Format::S32 => serve_with::<i32>(&args),
        Format::F32 => serve_with::<f32>(&args),
    }
}

fn serve_with<T: Mix>(a: &Args) -> anyhow::Result<ExitCode> {
    let mut warnings = Vec::new();
    // Before the probe (it measures the machine the hub will have); killed by PID when
    // dropped, on every path out of here.
    let awake = a
        .stream
        .keep_awake
        .then(|| crate::run::spawn::keep_awake(std::process::id(), &mut warnings))
        .flatten();
    if let Some(k) = &awake {
        warnings.push(format!(
            "--keep-awake: {} CPU(s) kept from going idle by a SCHED_IDLE spinner each (they \
             show 100 % busy)",
            k.cpus
        ));
    }
    let r = crate::run::buffer::resolve(
        a.stream.periods,
        &a.stream.device,
        a.stream.quantum,
        a.stream.rate,
        a.rt_priority,
    );
    let periods = r.periods;
    warnings.push(format!("buffer: {periods} periods: {}", r.why));
    warnings.extend(r.short_of_graph);
    let spec = EngineSpec {
        name: &a.name,
        device: a.stream.request(periods),
        format: a.stream.format,
        max_agents: a.max_agents,
        mic_frames: a.mic_frames,
        params: QueueParams {
            target: a.target,
            band: a.band,
        },
        group: a.group.as_deref(),
    };
    let mut engine = Engine::<T>::open(&spec, &mut warnings)?;
    let shared = RtShared::new();
    let Some((tx, queues)) = engine.take_rt() else {
        anyhow::bail!("internal: the hub's real-time ends were taken twice");
    };
    let (rate, quantum, channels) = (engine.dev.rate, engine.dev.quantum, engine.dev.channels);
    let sink = MicSink::new(tx, &shared, quantum, channels);
    let source = MixSource::<T>::new(queues.0, queues.1, &shared, quantum, channels);
    engine.tick(&shared);
    println!(
        "voxring serve: hub '{}' ready: {rate} Hz, {quantum} frames per cycle, {channels} \
         channel(s), {:?}, device {}, up to {} agents (pid {})",
        a.name,
        a.stream.format,
        engine.dev.label,
        a.max_agents,
        std::process::id()
    );
    for w in &warnings {
        eprintln!("voxring serve: warning: {w}");
    }
    let deadline = a
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let Engine {
        dev, control, info, ..
    } = &mut engine;
    let mut said = 0;
    let end = run_audio(
        &mut dev.duplex,
        (sink, source),
        &shared,
        (a.rt_priority, None),
        || {
            if termination_requested() || deadline.is_some_and(|d| Instant::now() >= d) {
                shared.stop.request();
            }
            engine::tick(control, info, &shared, None);
            for r in &control.refusals[said..] {
                eprintln!("voxring serve: {r}");
            }
            said = control.refusals.len();
        },
    )?;
    let playing = end.source.lane_counters();
    drop(end.source);
    let mut tx = end.sink.into_producer();
    let lanes = engine.control.lanes_report(&playing);
    engine::end_of_stream(&mut tx);
    let info = engine.stop(&shared);
    drop(tx);
    let mut summary = summary_json(&a.name, &info, &end.scheduling, end.error.as_deref());
    summary["lanes"] = serde_json::Value::from(lanes);
    summary["keep_awake_cpus"] = awake.as_ref().map_or(0, |k| k.cpus).into();
    drop(awake);
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("cannot write --json {}", path.display()))?;
    }
    println!("voxring serve: hub '{}' stopped: {summary}", a.name);
    Ok(match end.error {
        Some(e) => {
            eprintln!("voxring serve: the audio device failed: {e}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    })
}

fn summary_json(
    hub: &str,
    info: &HubInfo,
    scheduling: &(String, Option<String>),
    error: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({
        "hub": hub,
        "cycles": info.cycles,
        "play_cycles": info.play_cycles,
        "wakes": info.wakes,
        "evicted_lag": info.evicted_lag,
        "evicted_dead": info.evicted_dead,
        "mic_dropped": info.mic_dropped,
        "lanes_refused": info.lanes_refused,
        "xruns_capture": info.xruns_capture,
        "xruns_playback": info.xruns_playback,
        "cpu_ms": info.cpu_ns as f64 / 1e6,
        "scheduling": scheduling.0,
        "scheduling_warning": scheduling.1,
        "device_error": error,
    })
}
