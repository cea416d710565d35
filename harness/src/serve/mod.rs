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
use voxring_core::{FrameFlags, GrantError, Policy, RingConfig};
use voxring_linux::audio::mixer::{Mix, QueueParams};
use voxring_linux::audio::monotonic_ns;
use voxring_linux::cleanup::{
    SignalMode, clean_segments_matching, install_signal_cleanup, termination_requested,
};
use voxring_linux::hub::directory::{
    self, DIRECTORY_VERSION, HubInfo, STATE_RUNNING, STATE_STOPPED,
};
use voxring_linux::hub::{check_hub_name, directory_name, mic_name};
use voxring_linux::ring::{Segment, ShmProducer};
use voxring_linux::segment::{Access, CreateOptions, GroupSpec};
use voxring_linux::shared::SharedObjects;

use crate::run::device::{self, DeviceRequest};
use crate::run::{Format, format_parser};

pub mod agent;
pub mod control;
pub mod rt;

use control::{Control, ControlSetup};
use rt::{MicSink, MixSource, RtShared};

/// How often the control thread runs.
const TICK: Duration = Duration::from_millis(20);

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
    /// Capture/playback device: `auto`, `synthetic` (its playback loops back into its
    /// capture), `synthetic:none`, or an ALSA PCM name (`pipewire`, `default`, `hw:0,0`).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Sample rate, Hz.
    #[arg(long, default_value_t = 48_000)]
    pub rate: u32,
    /// Frames per cycle (the device period and one ring frame).
    #[arg(long, default_value_t = 128)]
    pub quantum: u32,
    /// Device buffer, in quanta: `auto` measures the machine's wake-up jitter first (1.5 s)
    /// and picks the smallest buffer that absorbs it (as `voxring run`); a number (at least
    /// 2) forces that size.
    #[arg(long, default_value = "auto")]
    pub periods: crate::run::buffer::Periods,
    /// Channels.
    #[arg(long, default_value_t = 1)]
    pub channels: u16,
    /// Sample format.
    #[arg(long, value_parser = format_parser(), default_value = "s16")]
    pub format: Format,
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
    match args.format {
        Format::S16 => serve_with::<i16>(&args),
        Format::S32 => serve_with::<i32>(&args),
        Format::F32 => serve_with::<f32>(&args),
    }
}

/// The hub's segments: the mic ring (and its producer) and the directory.
struct Segments {
    mic: Segment,
    tx: ShmProducer,
    dir: SharedObjects,
    layout: directory::Layout,
    gid: Option<u32>,
}

fn make_segments(a: &Args, cfg: &RingConfig) -> anyhow::Result<Segments> {
    // A hub of this name killed with -9 left its segments: remove them if nobody uses them.
    let prefix = format!("{}{}.", voxring_linux::segment::PREFIX, a.name);
    let _ = clean_segments_matching(|f| f.starts_with(&prefix));
    let (access, gid) = match &a.group {
        Some(g) => {
            let spec = g
                .parse::<u32>()
                .map_or_else(|_| GroupSpec::Name(g.clone()), GroupSpec::Id);
            let gid = spec
                .resolve()
                .map_err(|e| anyhow::anyhow!("--group: {e}"))?;
            (Access::Group(spec), Some(gid))
        }
        None => (Access::OwnerOnly, None),
    };
    let copts = CreateOptions {
        access,
        ..CreateOptions::default()
    };
    let mic = Segment::create(&mic_name(&a.name), cfg, &copts).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the mic ring of hub '{}': {e}. If a hub of that name runs, stop it \
             or pick another --name",
            a.name
        )
    })?;
    let tx = mic
        .producer()
        .map_err(|e| anyhow::anyhow!("cannot claim the mic ring: {e}"))?;
    let (plan, layout) = directory::plan().map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = SharedObjects::create(&directory_name(&a.name), &copts, plan)
        .map_err(|e| anyhow::anyhow!("cannot create the hub's directory: {e}"))?;
    Ok(Segments {
        mic,
        tx,
        dir,
        layout,
        gid,
    })
}

/// Sends the end of stream to the mic's readers (waiting for room is fine here).
fn end_of_stream(tx: &mut ShmProducer) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (producer, waiter) = tx.parts();
        let full = match producer.write_grant(1) {
            Ok(mut g) => {
                if let Some(mut f) = g.frame_mut(0) {
                    let _ = f.set_len(0);
                    f.set_flags(FrameFlags::END_OF_STREAM);
                    f.set_timestamp_ns(monotonic_ns());
                }
                g.commit_all().wake(waiter);
                return;
            }
            Err(e) => e == GrantError::Full,
        };
        if !full || Instant::now() >= deadline {
            return;
        }
        let _ = tx.wait_for_space(Some(Duration::from_millis(20)));
    }
}

fn serve_with<T: Mix>(a: &Args) -> anyhow::Result<ExitCode> {
    let mut warnings = Vec::new();
    let (periods, why, _) =
        crate::run::buffer::resolve(a.periods, a.quantum, a.rate, a.rt_priority);
    warnings.push(format!("buffer: {periods} periods: {why}"));
    let dev = device::open::<T>(
        &DeviceRequest {
            device: &a.device,
            rate: a.rate,
            quantum: a.quantum,
            periods,
            channels: a.channels,
        },
        &mut warnings,
    )?;
    let buffer = dev.duplex.capture_granted().buffer_frames;
    anyhow::ensure!(
        buffer.is_multiple_of(dev.quantum)
            && dev
                .duplex
                .playback_granted()
                .buffer_frames
                .is_multiple_of(dev.quantum),
        "the device granted a buffer of {buffer} frames, not a multiple of its {}-frame period; \
         ask for another --quantum or --periods",
        dev.quantum
    );
    let cfg = RingConfig {
        frames: a.mic_frames,
        samples_per_frame: dev.quantum,
        channels: dev.channels,
        format: a.format,
        sample_rate: dev.rate,
        max_consumers: a.max_agents,
        policy: Policy::Lossless,
    };
    let Segments {
        mic,
        tx,
        dir,
        layout,
        gid,
    } = make_segments(a, &cfg)?;
    let shared = RtShared::new();
    let (cmd_tx, cmd_rx) = rtrb::RingBuffer::new(2 * directory::MAX_SLOTS);
    let (back_tx, back_rx) = rtrb::RingBuffer::new(2 * directory::MAX_SLOTS);
    let params = QueueParams {
        target: a.target,
        band: a.band,
    };
    let mut control = Control::<T>::new(ControlSetup {
        hub: a.name.clone(),
        mic: mic.clone(),
        dir: (dir.clone(), layout.clone()),
        queues: (cmd_tx, back_rx),
        params,
        group: gid,
    });
    let mut sink = MicSink::new(tx, &shared, dev.quantum, dev.channels);
    let mut source = MixSource::<T>::new(cmd_rx, back_tx, &shared, dev.quantum, dev.channels);
    let mut info = HubInfo {
        version: DIRECTORY_VERSION,
        pid: u64::from(std::process::id()),
        state: STATE_RUNNING,
        rate: u64::from(dev.rate),
        quantum: u64::from(dev.quantum),
        channels: u64::from(dev.channels),
        format: a.format as u64,
        mic_frames: u64::from(a.mic_frames),
        max_agents: u64::from(a.max_agents),
        target_depth: u64::from(a.target),
        band: u64::from(a.band),
        started_ns: monotonic_ns(),
        ..HubInfo::default()
    };
    info = control.tick(&shared, info);
    let ready = format!(
        "voxring serve: hub '{}' ready: {} Hz, {} frames per cycle, {} channel(s), {:?}, \
         device {}, up to {} agents (pid {})",
        a.name,
        dev.rate,
        dev.quantum,
        dev.channels,
        a.format,
        dev.label,
        a.max_agents,
        std::process::id()
    );
    let mut duplex = dev.duplex;
    let (run_error, scheduling) = run_until_stopped(
        a,
        Running {
            duplex: &mut duplex,
            sink: &mut sink,
            source: &mut source,
            shared: &shared,
            control: &mut control,
            info: &mut info,
        },
        &ready,
        &warnings,
    )?;
    let xruns = duplex.xruns();
    let mut tx = sink.into_producer();
    end_of_stream(&mut tx);
    let playing = source.lane_counters();
    drop(source);
    fill_counters(&mut info, &shared, (xruns.capture, xruns.playback));
    info.state = STATE_STOPPED;
    info = control.tick(&shared, info);
    let mut summary = summary_json(a, &info, &scheduling, run_error.as_deref());
    summary["lanes"] = serde_json::Value::from(control.lanes_report(&playing));
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("cannot write --json {}", path.display()))?;
    }
    println!("voxring serve: hub '{}' stopped: {summary}", a.name);
    let leftover = control.lanes_files();
    drop(control);
    // Output rings whose agents died are removed; live agents keep theirs.
    let _ = clean_segments_matching(|f| leftover.iter().any(|l| l == f));
    drop((tx, dir, mic));
    Ok(match run_error {
        Some(e) => {
            eprintln!("voxring serve: the audio device failed: {e}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    })
}

/// What runs while the hub runs: the device and the two sides of the audio thread, and the
/// control thread's state.
struct Running<'r, 'a, T: Mix> {
    duplex: &'r mut voxring_linux::audio::Duplex<T>,
    sink: &'r mut MicSink<'a>,
    source: &'r mut MixSource<'a, T>,
    shared: &'a RtShared,
    control: &'r mut Control<T>,
    info: &'r mut HubInfo,
}

/// How the audio thread ended: the device's error, and its scheduling (and why SCHED_FIFO
/// was refused).
type Outcome = (Option<String>, (String, Option<String>));

/// Runs the device on the audio thread while this (the control) thread ticks, until Ctrl-C,
/// SIGTERM, `--seconds` or a device error: the device's error, and the audio thread's
/// scheduling (and why SCHED_FIFO was refused).
fn run_until_stopped<T: Mix>(
    a: &Args,
    r: Running<'_, '_, T>,
    ready: &str,
    warnings: &[String],
) -> anyhow::Result<Outcome> {
    let Running {
        duplex,
        sink,
        source,
        shared,
        control,
        info,
    } = r;
    let rt_priority = a.rt_priority;
    let deadline = a
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    std::thread::scope(|s| -> anyhow::Result<_> {
        let audio = std::thread::Builder::new()
            .name("voxring-hub-audio".into())
            .spawn_scoped(s, move || {
                let sched = device::promote(rt_priority);
                let r = duplex.run(sink, source, &shared.stop, None);
                (
                    r.err()
                        .map(|e| voxring_linux::audio::AudioError::from(e).to_string()),
                    sched,
                )
            })
            .context("cannot start the audio thread")?;
        println!("{ready}");
        for w in warnings {
            eprintln!("voxring serve: warning: {w}");
        }
        let mut said = 0;
        while !audio.is_finished() {
            if termination_requested() || deadline.is_some_and(|d| Instant::now() >= d) {
                shared.stop.request();
            }
            fill_counters(info, shared, duplex_xruns_unknown());
            *info = control.tick(shared, *info);
            for r in &control.refusals[said..] {
                eprintln!("voxring serve: {r}");
            }
            said = control.refusals.len();
            std::thread::sleep(TICK);
        }
        audio
            .join()
            .map_err(|_| anyhow::anyhow!("the audio thread panicked"))
    })
}

/// The device's xrun counts are read after its run (the real-time thread owns it meanwhile).
fn duplex_xruns_unknown() -> (u64, u64) {
    (u64::MAX, u64::MAX)
}

/// Copies the real-time thread's counters into the hub's row.
fn fill_counters(info: &mut HubInfo, shared: &RtShared, xruns: (u64, u64)) {
    use std::sync::atomic::Ordering::Relaxed;
    // Relaxed: counters.
    info.cycles = shared.cycles.load(Relaxed);
    info.play_cycles = shared.play_cycles.load(Relaxed);
    info.wakes = shared.wakes.load(Relaxed);
    info.evicted_lag = shared.evicted_lag.load(Relaxed);
    info.mic_dropped = shared.mic_dropped.load(Relaxed);
    if xruns.0 != u64::MAX {
        (info.xruns_capture, info.xruns_playback) = xruns;
    }
    info.cpu_ns = voxring_linux::clock::process_cpu_ns();
}

fn summary_json(
    a: &Args,
    info: &HubInfo,
    scheduling: &(String, Option<String>),
    error: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({
        "hub": a.name,
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
