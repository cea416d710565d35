//! `voxring bench loopback`: the audio round trip, measured like `jack_iodelay`.
//!
//! Opens a device for capture and playback, plays a one-frame impulse every `--interval-ms`
//! (rounded to whole quanta), finds each one in the capture, and reports the round trip: the
//! capture frames between the wake-up that wrote the impulse into the playback buffer and the
//! wake-up that read it back (see `voxring_linux::audio::loopback`). Runs on its own thread
//! under SCHED_FIFO when the system allows it. For an ALSA device served by PipeWire, it first
//! forces PipeWire's quantum and rate to the ones asked for, reads back what PipeWire runs at,
//! and restores the settings at the end.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use voxring_linux::audio::alsa_pcm::MmapPreference;
use voxring_linux::audio::loopback::{ImpulseProbe, RoundTripStats};
use voxring_linux::audio::pipewire::{self, PwClock};
use voxring_linux::audio::{
    AudioError, DeviceSpec, Duplex, Granted, RunStats, Sample, SampleFormat, SampleFormatExt,
    StopFlag, StreamParams, monotonic_ns, open_duplex, parse_sample_format, rt,
};

/// Options of this command.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `auto` (ALSA `default` if it opens, else the synthetic device), `synthetic` (loopback
    /// delayed by buffer + one quantum), `synthetic:N` (delayed N frames), or an ALSA PCM
    /// name such as `pipewire`, `default`, `hw:0,0`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Sample rate in Hz.
    #[arg(long, default_value_t = 48_000)]
    rate: u32,
    /// Quantum (ALSA period) in frames.
    #[arg(long, default_value_t = 128)]
    quantum: u32,
    /// Device buffer in frames [default: two quanta].
    #[arg(long)]
    buffer: Option<u32>,
    /// Seconds to measure (after a warm-up of half a second).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Channels.
    #[arg(long, default_value_t = 2)]
    channels: u32,
    /// Sample format: S16, S32 or F32.
    #[arg(long, default_value = "F32", value_parser = parse_sample_format)]
    format: SampleFormat,
    /// Milliseconds between impulses (rounded up to whole quanta); must exceed the round trip.
    #[arg(long, default_value_t = 100)]
    interval_ms: u32,
    /// SCHED_FIFO priority of the audio thread; 0 leaves it at normal priority.
    #[arg(long, default_value_t = rt::DEFAULT_AUDIO_PRIORITY)]
    rt_priority: u8,
    /// Do not force PipeWire's quantum and rate (`clock.force-quantum`, `clock.force-rate`).
    #[arg(long)]
    no_pipewire_settings: bool,
    /// How to reach the device buffer: auto (direct mmap for hw:, alsa-lib mmap otherwise),
    /// alsa-lib, or direct.
    #[arg(long, default_value = "auto", value_parser = parse_mmap)]
    mmap: MmapPreference,
}

fn parse_mmap(s: &str) -> Result<MmapPreference, String> {
    match s {
        "auto" => Ok(MmapPreference::Auto),
        "alsa-lib" => Ok(MmapPreference::AlsaLib),
        "direct" => Ok(MmapPreference::Direct),
        _ => Err(format!("'{s}': use auto, alsa-lib or direct")),
    }
}

/// What the audio thread brings back.
struct Outcome {
    label: String,
    capture: Granted,
    playback: Granted,
    stats: RunStats,
    round_trips: Vec<u32>,
    unmatched: u64,
    dropped: u64,
    chunk_gcd: u64,
    measured_rate: Option<f64>,
    elapsed_ns: u64,
    rt: Result<u8, String>,
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let params = StreamParams {
        rate: args.rate,
        channels: args.channels,
        period_frames: args.quantum,
        buffer_frames: args.buffer.unwrap_or(2 * args.quantum),
    };
    params.validate()?;
    if !(args.seconds > 0.0 && args.seconds <= 86_400.0) {
        bail!(
            "--seconds must be between 0 and 86400 (got {})",
            args.seconds
        );
    }
    let spec = DeviceSpec::parse(&args.device, &params)?;
    let interval = {
        let frames = u64::from(args.interval_ms.max(1)) * u64::from(args.rate) / 1000;
        frames.div_ceil(u64::from(args.quantum)).max(2) * u64::from(args.quantum)
    };
    let warmup = u64::from(args.rate) / 2;
    let measure = (args.seconds * f64::from(args.rate)) as u64;

    // PipeWire: force the quantum and rate when the device may be served by it.
    let may_be_pipewire = !matches!(spec, DeviceSpec::Synthetic { .. });
    let pw = if may_be_pipewire && !args.no_pipewire_settings && pipewire::available() {
        Some(
            pipewire::force_clock(args.quantum, args.rate)
                .context("forcing PipeWire's quantum and rate")?,
        )
    } else {
        None
    };

    let stop = std::sync::Arc::new(StopFlag::new());
    let go = Plan {
        spec,
        params,
        interval,
        warmup,
        frames: warmup + measure,
    };
    let thread = spawn_audio(&args, go, stop.clone())?;

    // While the streams run, read back what PipeWire's nodes asked for.
    let mut latencies = Vec::new();
    if pw.is_some() {
        std::thread::sleep(Duration::from_millis(700));
        if !thread.is_finished() {
            latencies = pipewire::stream_latencies().unwrap_or_default();
        }
    }
    let outcome = thread
        .join()
        .map_err(|_| anyhow::anyhow!("the audio thread panicked"))??;
    let pw_after = pw.as_ref().map(|o| o.after);
    let pw_before = pw.as_ref().map(|o| o.before());
    if let Some(o) = pw {
        o.restore().context("restoring PipeWire's settings")?;
    }

    let o = outcome;
    let st = RoundTripStats::from_frames(&o.round_trips);
    let pw = pw_after.map(|after| (pw_before, after));
    let report = report_json(&args, &params, &o, st, interval, pw, &latencies);

    print_summary(&args, &o, st, pw_after, &latencies);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if st.is_none() {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// What the audio thread runs: the device, its parameters, and the impulses' schedule.
struct Plan {
    spec: DeviceSpec,
    params: StreamParams,
    interval: u64,
    warmup: u64,
    /// Warm-up and measurement, in frames.
    frames: u64,
}

/// Starts the audio thread: SCHED_FIFO when asked for and allowed, then the probe.
fn spawn_audio(
    args: &Args,
    plan: Plan,
    stop: std::sync::Arc<StopFlag>,
) -> anyhow::Result<std::thread::JoinHandle<Result<Outcome, AudioError>>> {
    let mmap = args.mmap;
    let format = args.format;
    let rt_priority = args.rt_priority;
    std::thread::Builder::new()
        .name("voxring-audio".into())
        .spawn(move || -> Result<Outcome, AudioError> {
            let rt = if rt_priority == 0 {
                Err("not asked for (--rt-priority 0)".to_owned())
            } else {
                rt::promote_current_thread(rt_priority)
                    .map(|()| rt_priority)
                    .map_err(|e| e.to_string())
            };
            let go = RunSpec {
                spec: &plan.spec,
                params: &plan.params,
                mmap,
                interval: plan.interval,
                warmup: plan.warmup,
                frames: plan.frames,
                stop: &stop,
            };
            let mut out = match format {
                SampleFormat::S16 => run_typed::<i16>(&go),
                SampleFormat::S32 => run_typed::<i32>(&go),
                SampleFormat::F32 => run_typed::<f32>(&go),
            }?;
            out.rt = rt;
            Ok(out)
        })
        .context("starting the audio thread")
}

/// The JSON report of a run; `pw` is PipeWire's clock before and after forcing it.
fn report_json(
    args: &Args,
    params: &StreamParams,
    o: &Outcome,
    st: Option<RoundTripStats>,
    interval: u64,
    pw: Option<(Option<PwClock>, PwClock)>,
    latencies: &[(String, String)],
) -> serde_json::Value {
    let rate = o.capture.rate;
    let ms = |f: u32| RoundTripStats::ms(f, rate);
    let clock_json = |c: &PwClock| {
        json!({
            "rate": c.rate, "quantum": c.quantum,
            "force_rate": c.force_rate, "force_quantum": c.force_quantum,
            "min_quantum": c.min_quantum, "max_quantum": c.max_quantum,
            "effective_rate": c.effective_rate(), "effective_quantum": c.effective_quantum(),
        })
    };
    json!({
        "device": args.device,
        "device_opened": o.label,
        "rate": rate,
        "period_frames": o.capture.period_frames,
        "buffer_frames": o.playback.buffer_frames,
        "capture_buffer_frames": o.capture.buffer_frames,
        "channels": o.capture.channels,
        "format": o.capture.format.name(),
        "access": o.capture.alsa_access,
        "access_mode": format!("{:?}", o.capture.mode),
        "requested": { "rate": args.rate, "quantum": args.quantum, "buffer": params.buffer_frames },
        "round_trip_frames": st.map(|s| s.p50),
        "round_trip_ms": st.map(|s| json!({
            "p50": ms(s.p50), "p99": ms(s.p99), "max": ms(s.max), "min": ms(s.min)
        })),
        "round_trip_frames_stats": st.map(|s| json!({
            "min": s.min, "p50": s.p50, "p99": s.p99, "max": s.max
        })),
        "measurements": st.map_or(0, |s| s.count),
        "unmatched_detections": o.unmatched,
        "dropped_measurements": o.dropped,
        "xruns": { "playback": o.stats.xruns.playback, "capture": o.stats.xruns.capture },
        "silence_frames": o.stats.silence_frames,
        "seconds": o.elapsed_ns as f64 / 1e9,
        "measured_rate_hz": o.measured_rate,
        "capture_chunk_gcd_frames": o.chunk_gcd,
        "wakeups": o.stats.wakeups,
        "timeouts": o.stats.timeouts,
        "impulse_interval_frames": interval,
        "sched_fifo": match &o.rt {
            Ok(p) => json!({ "granted": true, "priority": p }),
            Err(e) => json!({ "granted": false, "why": e }),
        },
        "pipewire": pw.map(|(before, after)| json!({
            "before": before.as_ref().map(clock_json),
            "after_forcing": clock_json(&after),
            "stream_node_latency": latencies
                .iter()
                .map(|(n, l)| json!({ "node": n, "latency": l }))
                .collect::<Vec<_>>(),
            "restored": true,
        })),
    })
}

/// The human-readable summary of a run, on stdout.
fn print_summary(
    args: &Args,
    o: &Outcome,
    st: Option<RoundTripStats>,
    pw_after: Option<PwClock>,
    latencies: &[(String, String)],
) {
    let rate = o.capture.rate;
    let ms = |f: u32| RoundTripStats::ms(f, rate);
    println!("device:      {} ({})", args.device, o.label);
    println!(
        "granted:     {} Hz, {} ch, {}, period {} frames, buffer {} (playback) / {} (capture) frames, {} ({:?})",
        rate,
        o.capture.channels,
        o.capture.format.name(),
        o.capture.period_frames,
        o.playback.buffer_frames,
        o.capture.buffer_frames,
        o.capture.alsa_access,
        o.capture.mode
    );
    if let Some(a) = pw_after {
        println!(
            "pipewire:    asked quantum {} at {} Hz; settings now force-quantum {:?}, force-rate {:?}; \
             capture arrives in chunks of {} frames; node latencies {:?} (restored afterwards)",
            args.quantum, args.rate, a.force_quantum, a.force_rate, o.chunk_gcd, latencies
        );
    }
    match &o.rt {
        Ok(p) => println!("audio thread: SCHED_FIFO {p}"),
        Err(e) => println!("audio thread: normal priority: {e}"),
    }
    match st {
        Some(s) => println!(
            "round trip:  median {} frames = {:.3} ms, p99 {} = {:.3} ms, max {} = {:.3} ms, min {} ({} measurements)",
            s.p50,
            ms(s.p50),
            s.p99,
            ms(s.p99),
            s.max,
            ms(s.max),
            s.min,
            s.count
        ),
        None => println!(
            "round trip:  no impulse came back (is the capture connected to the playback?)"
        ),
    }
    println!(
        "xruns:       playback {}, capture {}; {:.1} s; capture rate against CLOCK_MONOTONIC {}",
        o.stats.xruns.playback,
        o.stats.xruns.capture,
        o.elapsed_ns as f64 / 1e9,
        o.measured_rate
            .map_or_else(|| "not measured".to_owned(), |r| format!("{r:.1} Hz"))
    );
}

struct RunSpec<'a> {
    spec: &'a DeviceSpec,
    params: &'a StreamParams,
    mmap: MmapPreference,
    interval: u64,
    warmup: u64,
    frames: u64,
    stop: &'a StopFlag,
}

/// Opens the device and runs the probe, on the audio thread.
fn run_typed<T: Sample>(go: &RunSpec<'_>) -> Result<Outcome, AudioError> {
    let (mut dev, label): (Duplex<T>, String) = open_duplex(go.spec, go.params, go.mmap)?;
    let capacity = (go.frames / go.interval + 16) as usize;
    let probe = ImpulseProbe::new(go.interval, go.warmup, 0.5, capacity);
    let (mut src, mut det) = (probe.source(), probe.detector());
    let t0 = monotonic_ns();
    let stats = dev.run(&mut det, &mut src, go.stop, Some(go.frames))?;
    let elapsed_ns = monotonic_ns() - t0;
    Ok(Outcome {
        label,
        capture: dev.capture_granted(),
        playback: dev.playback_granted(),
        stats,
        round_trips: probe.round_trips(),
        unmatched: probe.unmatched(),
        dropped: probe.dropped(),
        chunk_gcd: probe.chunk_gcd(),
        measured_rate: probe.measured_rate_hz(),
        elapsed_ns,
        rt: Err(String::new()),
    })
}
