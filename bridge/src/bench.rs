//! `voxring-bridge bench`: the latency a bridge adds over the local ring, and its CPU time
//! per frame, on this machine (loopback) or across a veth pair between two network
//! namespaces (`--netns`, root).
//!
//! This process creates a source ring and paces a producer at the stream's rate, stamping
//! each frame with `CLOCK_MONOTONIC`. `voxring-bridge export` and `import` run as child
//! processes (inside the namespaces with `--netns`; one kernel, so one clock). Two consumers
//! here read the source ring (the local baseline) and the imported ring, each recording
//! `now − timestamp` per frame. The children's CPU time comes from `/proc/PID/stat`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use voxring_core::{FrameFlags, Policy, ReadError, RingConfig, SampleFormat};
use voxring_linux::clock::monotonic_ns;
use voxring_linux::ring::{FramesWait, Segment};
use voxring_linux::segment::{AttachOptions, CreateOptions};

use crate::topo::{NETNS_ADDR, NetnsPair, Side, export_args, free_local_port, import_args};

/// `voxring-bridge bench` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Frames to send.
    #[arg(long, default_value_t = 3000)]
    pub frames: u64,
    /// Samples per frame (the quantum).
    #[arg(long, default_value_t = 160)]
    pub samples_per_frame: u32,
    /// Sample rate.
    #[arg(long, default_value_t = 16_000)]
    pub rate: u32,
    /// Jitter buffer target of the importer, ms (0: play each frame as it arrives).
    #[arg(long, default_value_t = 0.0)]
    pub target_ms: f64,
    /// Run the two sides in two network namespaces joined by a veth pair (root).
    #[arg(long)]
    pub netns: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    /// Frames measured.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

fn pct(h: &Histogram<u64>) -> Percentiles {
    let us = |v: u64| v as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.5)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

/// What the bench prints.
#[derive(Debug, Serialize)]
pub struct Report {
    /// "loopback" or "veth".
    pub path: &'static str,
    /// Frames sent, quantum, rate, target.
    pub frames: u64,
    /// Samples per frame.
    pub samples_per_frame: u32,
    /// Hz.
    pub rate: u32,
    /// Importer target, ms.
    pub target_ms: f64,
    /// Producer commit → consumer of the source ring.
    pub local: Percentiles,
    /// Producer commit → consumer of the imported ring.
    pub bridged: Percentiles,
    /// `bridged − local` at p50, p99 and p99.9 (µs).
    pub added_p50_us: f64,
    /// See `added_p50_us`.
    pub added_p99_us: f64,
    /// See `added_p50_us`.
    pub added_p999_us: f64,
    /// Frames that did not reach the consumer of the imported ring. Not 0: the run is not
    /// valid (the bench prints the report and fails).
    pub lost_frames: u64,
    /// CPU time of the exporter process per frame sent, µs.
    pub export_cpu_us_per_frame: f64,
    /// CPU time of the importer process per frame played, µs.
    pub import_cpu_us_per_frame: f64,
    /// The importer's final counters (JSON).
    pub import_stats: serde_json::Value,
    /// The exporter's final counters (JSON).
    pub export_stats: serde_json::Value,
}

/// Runs the bench and prints the report.
///
/// # Errors
/// A side failed to start, frames were lost, or `--netns` without root.
pub fn main(a: Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this program")?;
    let r = run(&exe, &a)?;
    print(&r, a.json)?;
    if r.lost_frames > 0 {
        bail!(
            "{} of {} frames did not reach the imported ring: the figures of this run are not \
             valid (importer counters: {})",
            r.lost_frames,
            r.frames,
            r.import_stats
        );
    }
    Ok(())
}

fn print(r: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} frames of {} samples at {} Hz over {} (target {} ms)\n  local ring   p50 {:.0} µs  p99 {:.0} µs  p99.9 {:.0} µs\n  bridged      p50 {:.0} µs  p99 {:.0} µs  p99.9 {:.0} µs\n  added        p50 {:.0} µs  p99 {:.0} µs  p99.9 {:.0} µs\n  CPU per frame: export {:.1} µs, import {:.1} µs",
            r.frames,
            r.samples_per_frame,
            r.rate,
            r.path,
            r.target_ms,
            r.local.p50_us,
            r.local.p99_us,
            r.local.p999_us,
            r.bridged.p50_us,
            r.bridged.p99_us,
            r.bridged.p999_us,
            r.added_p50_us,
            r.added_p99_us,
            r.added_p999_us,
            r.export_cpu_us_per_frame,
            r.import_cpu_us_per_frame
        );
    }
    Ok(())
}

/// Measures latency on the ring `name` until `frames` were read or `stop`.
fn measure(name: String, frames: u64, stop: Arc<AtomicBool>) -> anyhow::Result<Histogram<u64>> {
    let seg = Segment::attach(&name, &AttachOptions::default())?;
    let mut rx = seg.consumer().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut h = Histogram::<u64>::new(3)?;
    // Relaxed: a stop flag only.
    while h.len() < frames && !stop.load(Ordering::Relaxed) {
        if rx.wait_for_frames(Some(Duration::from_millis(100)))? != FramesWait::Ready {
            continue;
        }
        let (c, waiter) = rx.parts();
        let g = match c.read_grant(64) {
            Ok(g) => g,
            Err(ReadError::Empty | ReadError::Lost { .. }) => continue,
            Err(e) => bail!("reading {name}: {e}"),
        };
        let now = monotonic_ns();
        for f in g.frames() {
            h.record(now.saturating_sub(f.meta().timestamp_ns).max(1))?;
        }
        if let Ok(w) = g.release_all() {
            w.wake(waiter);
        }
    }
    Ok(h)
}

fn wait_ring(name: &str, give_up: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + give_up;
    while Segment::attach(name, &AttachOptions::default()).is_err() {
        if Instant::now() > end {
            bail!("ring {name} did not appear within {give_up:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Runs one measurement with `exe` as the bridge program.
///
/// # Errors
/// See [`main`].
pub fn run(exe: &Path, a: &Args) -> anyhow::Result<Report> {
    let give_up = Duration::from_secs(30);
    let tag = format!("vxbbench{}", std::process::id());
    let (src, dst, key) = (
        format!("{tag}-src"),
        format!("{tag}-dst"),
        format!("voxring/{tag}"),
    );
    let cfg = RingConfig {
        frames: 256,
        samples_per_frame: a.samples_per_frame,
        channels: 1,
        format: SampleFormat::S16,
        sample_rate: a.rate,
        max_consumers: 4,
        policy: Policy::Lossless,
    };
    let seg = Segment::create(&src, &cfg, &CreateOptions::default())?;
    let netns = if a.netns {
        Some(NetnsPair::create()?)
    } else {
        None
    };
    let (addr, port) = match &netns {
        Some(_) => (NETNS_ADDR[0].to_owned(), 7447),
        None => ("127.0.0.1".to_owned(), free_local_port()?),
    };
    let locator = format!("tcp/{addr}:{port}");
    let cmd = |i: usize| match &netns {
        Some(n) => n.command(i, exe),
        None => std::process::Command::new(exe),
    };
    let mut ex_cmd = cmd(0);
    export_args(&mut ex_cmd, &src, &key, &locator);
    let mut exporter = Side::spawn("exporter", ex_cmd)?;
    exporter.wait_line("exporting", give_up)?;
    let mut im_cmd = cmd(1);
    let format = format!("{}:1:{}:s16", a.samples_per_frame, a.rate);
    let target = a.target_ms.to_string();
    import_args(&mut im_cmd, &key, &dst, &locator, &format).args([
        "--target-ms",
        &target,
        "--ring-frames",
        "256",
    ]);
    let mut importer = Side::spawn("importer", im_cmd)?;
    exporter.wait_line("importer present", give_up)?;
    wait_ring(&dst, give_up)?;
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |name: String| {
        let stop = stop.clone();
        let n = a.frames;
        std::thread::spawn(move || measure(name, n, stop))
    };
    let (local, bridged) = (spawn(src.clone()), spawn(dst.clone()));
    // Let both consumers join before the first frame.
    std::thread::sleep(Duration::from_millis(300));
    let (cpu_ex0, cpu_im0) = (exporter.cpu_ns()?, importer.cpu_ns()?);
    produce(&seg, a)?;
    let end = Instant::now() + give_up;
    while !(local.is_finished() && bridged.is_finished()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (cpu_ex, cpu_im) = (exporter.cpu_ns()? - cpu_ex0, importer.cpu_ns()? - cpu_im0);
    // Relaxed: a stop flag only.
    stop.store(true, Ordering::Relaxed);
    let local = local
        .join()
        .map_err(|_| anyhow::anyhow!("local consumer panicked"))??;
    let bridged = bridged
        .join()
        .map_err(|_| anyhow::anyhow!("bridged consumer panicked"))??;
    let im: serde_json::Value = serde_json::from_str(&importer.terminate(give_up)?)?;
    let ex: serde_json::Value = serde_json::from_str(&exporter.terminate(give_up)?)?;
    drop(netns);
    if local.len() != a.frames {
        bail!(
            "the local consumer read {} of {} frames",
            local.len(),
            a.frames
        );
    }
    let (l, b) = (pct(&local), pct(&bridged));
    let played = im["played"].as_u64().unwrap_or(a.frames).max(1) as f64;
    let sent = ex["sent"].as_u64().unwrap_or(a.frames).max(1) as f64;
    Ok(Report {
        path: if a.netns { "veth" } else { "loopback" },
        frames: a.frames,
        samples_per_frame: a.samples_per_frame,
        rate: a.rate,
        target_ms: a.target_ms,
        added_p50_us: b.p50_us - l.p50_us,
        added_p99_us: b.p99_us - l.p99_us,
        added_p999_us: b.p999_us - l.p999_us,
        lost_frames: a.frames - bridged.len().min(a.frames),
        local: l,
        bridged: b,
        export_cpu_us_per_frame: cpu_ex as f64 / 1000.0 / sent,
        import_cpu_us_per_frame: cpu_im as f64 / 1000.0 / played,
        import_stats: im,
        export_stats: ex,
    })
}

/// Writes `a.frames` frames at the stream's pace, each stamped with `CLOCK_MONOTONIC`.
fn produce(seg: &Segment, a: &Args) -> anyhow::Result<()> {
    let mut tx = seg.producer().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let period =
        Duration::from_nanos(u64::from(a.samples_per_frame) * 1_000_000_000 / u64::from(a.rate));
    let start = Instant::now();
    let payload: Vec<u8> = (0..a.samples_per_frame * 2).map(|i| i as u8).collect();
    for i in 0..a.frames {
        let due = start + period * i as u32;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let (p, waiter) = tx.parts();
        let pos = i * u64::from(a.samples_per_frame);
        p.push(&payload, pos, monotonic_ns(), FrameFlags::NONE)
            .context("the source ring is full: a consumer stalled")?
            .wake(waiter);
    }
    Ok(())
}

/// The path of the `voxring-bridge` program next to `exe`'s folder (for callers that are
/// not it).
pub fn sibling(exe: &Path) -> Option<PathBuf> {
    let p = exe.parent()?.join("voxring-bridge");
    p.is_file().then_some(p)
}
