// Over 800 lines on purpose: the hub issue rebuilds this orchestrator, so issue 12 leaves it whole.
//! The orchestrator of `voxring run`: device, segments, agent processes, the real-time thread,
//! the progress bar, Ctrl-C, and the report.
//!
//! # The stages and how each is measured (all CLOCK_MONOTONIC)
//!
//! | stage | from | to |
//! |---|---|---|
//! | `capture` | the frame's first sample at the device (the frame clock's estimate, or the chunk's hand-over time minus the samples after it, whichever is earlier) | commit into the capture ring |
//! | `handoff:<agent>` | commit (the producer stamps `timestamp_ns` at commit) | the agent has the frame in hand |
//! | `compute:<agent>` | agent starts its work on the frame | agent done |
//! | `return handoff` | the echo agent's commit into the return ring | the playback side takes it (at the device's next period) |
//! | `playback` | taken into the device's playback buffer | heard: the buffer ahead of it (granted buffer frames) |
//! | mouth-to-ear | the first sample captured | the same sample heard |
//!
//! "Heard" uses the device's granted playback buffer as the queue ahead of a pulled frame: the
//! synthetic device and PipeWire's ALSA plugin both keep the buffer full, and the round trip
//! the loopback benchmark measures on them is exactly one buffer plus one period.
//!
//! The capture ring is lossless (the recorder must get every frame): if an agent falls a whole
//! ring behind, the real-time thread does not wait but drops the frame and counts it lost.

use std::io::IsTerminal as _;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use voxring_core::clock::FrameClock;
use voxring_core::{FrameFlags, GrantError, Policy, ReadError, RingConfig};
use voxring_linux::audio::{
    CaptureSink, ChunkInfo, PlaybackSource, Sample, StopFlag, XrunCounts, flags, monotonic_ns,
};
use voxring_linux::cleanup::{SignalMode, install_signal_cleanup, termination_requested};
use voxring_linux::ring::{Segment, ShmConsumer, ShmProducer};
use voxring_linux::segment::CreateOptions;

use super::agents::{AgentOutput, capture_name, return_name};
use super::buffer::{BufferReport, Periods};
use super::dsp::Talker;
use super::glitch::{Fact, FactKind, FactLog, Glitch, LateMark, StealSampler};
use super::outfile::{self, Pending};
use super::procs::{self, Proc};
use super::python::{self, PythonLauncher};
use super::report::{
    AgentRow, Percentiles, ProducerRow, RunReport, StageRow, VadRow, hist_from_base64, new_hist,
    record,
};
use super::sync::SyncHandle;
use super::{AgentKind, AgentSpec, Args, EXIT_INTERRUPTED, EXIT_OVER_BUDGET, Format, plots};

/// How long agents get to join the ring and say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long agents get to drain the ring and report after the end of stream.
const FINISH_GRACE: Duration = Duration::from_secs(10);
/// The playback side plays returned frames in order while at most this many wait when it
/// needs the next one, plus its reserve (`--periods` - 2, see [`super::buffer`]); beyond, it
/// drops the oldest. In steady state exactly one (plus the reserve) is waiting; more means the
/// path fell behind (a stall, a period of silence) and, without dropping, the latency would
/// stay that much higher for the rest of the run.
const CATCH_UP_FRAMES: usize = 1;
/// Facts each real-time half keeps for the glitch report (beyond, counted).
const MAX_FACTS: usize = 4096;
/// Test hook: `CYCLE:MS` makes the audio thread sleep MS milliseconds once, before it commits
/// frame CYCLE (a host stall on demand; the glitch report must name it).
pub const STALL_AUDIO_ENV: &str = "VOXRING_TEST_STALL_AUDIO";
/// Per-cycle records kept for the timeline (beyond, cycles are still counted and measured).
const MAX_TIMELINE_CYCLES: usize = 1 << 20;

/// State the real-time thread shares with the main thread (progress) and between its own
/// capture and playback halves.
#[derive(Debug)]
struct Shared {
    /// Frames committed to the capture ring (progress bar).
    committed: AtomicU64,
    /// Capture time of each frame's first sample, by frame number modulo the table size, with
    /// the frame's sample position beside it to check the match.
    first_ns: Box<[AtomicU64]>,
    first_pos: Box<[AtomicU64]>,
    stop: StopFlag,
}

impl Shared {
    fn slot(&self, pos: u64, quantum: u64) -> usize {
        ((pos / quantum) % self.first_ns.len() as u64) as usize
    }
}

/// The capture half of the real-time thread: device → capture ring.
struct CaptureSide<'a, T: Sample> {
    tx: ShmProducer,
    sync: &'a SyncHandle,
    shared: &'a Shared,
    ch: usize,
    quantum: usize,
    rate: f64,
    period_ns: u64,
    agents_mask: u64,
    staging: Vec<T>,
    filled: usize,
    first_ns: u64,
    pos: u64,
    pending_flags: u32,
    talker: Option<Talker>,
    crc: crc32fast::Hasher,
    frames: u64,
    samples: u64,
    dropped: u64,
    hist: Histogram<u64>,
    /// Predicts when each sample arrived (1 Hz loop: follows the device closely).
    clock: FrameClock,
    /// Estimates the device's drift (0.1 Hz loop: smooth over hand-over jitter).
    drift_clock: FrameClock,
    /// Per committed frame: (seconds since start, capture latency in µs).
    timeline: Vec<(f32, f32)>,
    start_ns: u64,
    ipc_ns: u64,
    error: Option<GrantError>,
    /// Glitches and late wake-ups seen here (see [`super::glitch`]).
    log: FactLog,
    /// When the last `LateWake` was logged (one per wake-up).
    last_late_t: u64,
    /// Test hook ([`STALL_AUDIO_ENV`]): sleep this long before committing this frame.
    stall: Option<(u64, Duration)>,
}

impl<T: Sample> CaptureSide<'_, T> {
    fn commit_frame(&mut self) {
        if let Some((cycle, d)) = self.stall
            && self.frames == cycle
        {
            self.stall = None;
            // Test hook only: a stall of the audio thread on demand (sleeping allocates nothing).
            std::thread::sleep(d);
        }
        if let Some(talker) = self.talker.as_mut() {
            for frame in self.staging.chunks_exact_mut(self.ch) {
                let v = talker.next_sample();
                for s in frame {
                    *s = T::from_f32((s.to_f32() + v).clamp(-1.0, 1.0));
                }
            }
        }
        let shared = self.shared;
        let t0 = monotonic_ns();
        let (producer, waiter) = self.tx.parts();
        let mut crc_ns = 0;
        match producer.write_grant(1) {
            Ok(mut grant) => {
                let Some(mut f) = grant.frame_mut(0) else {
                    // A grant of one frame always has frame 0; nothing to commit otherwise.
                    return;
                };
                let seq = f.seq();
                if let Ok(dst) = f.samples_mut::<T>() {
                    let n = dst.len().min(self.staging.len());
                    dst[..n].copy_from_slice(&self.staging[..n]);
                }
                let bytes = (self.staging.len() * std::mem::size_of::<T>()) as u32;
                let _ = f.set_len(bytes);
                let c0 = monotonic_ns();
                let payload = f.payload_mut();
                let n = (bytes as usize).min(payload.len());
                self.crc.update(&payload[..n]);
                crc_ns = monotonic_ns() - c0;
                f.set_sample_pos(self.pos);
                f.set_flags(FrameFlags(self.pending_flags));
                let slot = shared.slot(self.pos, self.quantum as u64);
                // Relaxed: read back on this same thread (the playback half).
                shared.first_ns[slot].store(self.first_ns, Ordering::Relaxed);
                shared.first_pos[slot].store(self.pos, Ordering::Relaxed);
                let t_commit = monotonic_ns();
                self.sync
                    .arm(seq, self.agents_mask, t_commit + self.period_ns);
                f.set_timestamp_ns(t_commit);
                grant.commit_all().wake(waiter);
                self.pending_flags = 0;
                self.frames += 1;
                self.samples += self.staging.len() as u64;
                record(&mut self.hist, t_commit.saturating_sub(self.first_ns));
                if self.timeline.len() < self.timeline.capacity() {
                    self.timeline.push((
                        (t_commit.saturating_sub(self.start_ns)) as f32 / 1e9,
                        (t_commit.saturating_sub(self.first_ns)) as f32 / 1e3,
                    ));
                }
                // Relaxed: a progress counter, no data is published through it.
                shared.committed.store(self.frames, Ordering::Relaxed);
            }
            Err(GrantError::Full) => {
                // Lossless ring and an agent a whole ring behind: never wait on the audio
                // thread; the frame is lost and counted.
                self.dropped += 1;
                self.log.push(Fact {
                    kind: FactKind::Dropped,
                    cycle: self.frames,
                    t_ns: t0,
                    value: 1,
                });
                self.pending_flags |= FrameFlags::DISCONTINUITY.bits();
            }
            Err(e) => {
                self.error = Some(e);
                shared.stop.request();
            }
        }
        self.ipc_ns += (monotonic_ns() - t0).saturating_sub(crc_ns);
    }
}

impl<T: Sample> CaptureSink<T> for CaptureSide<'_, T> {
    fn push(&mut self, samples: &[T], info: &ChunkInfo) -> usize {
        let ch = self.ch;
        let n = samples.len() / ch;
        // How late this wake-up is against the device clock (once it tracks the device).
        let end = info.sample_pos + n as u64;
        if self.clock.is_tracking()
            && let Some(due) = self.clock.predict_ns(end)
        {
            let late = info.timestamp_ns.saturating_sub(due);
            if late > self.period_ns / 2 && info.timestamp_ns != self.last_late_t {
                self.last_late_t = info.timestamp_ns;
                self.log.push(Fact {
                    kind: FactKind::LateWake,
                    cycle: self.frames,
                    t_ns: info.timestamp_ns,
                    value: late,
                });
            }
        }
        if info.flags & flags::XRUN != 0 {
            self.log.push(Fact {
                kind: FactKind::Xrun,
                cycle: self.frames,
                t_ns: info.timestamp_ns,
                value: 0,
            });
            self.pending_flags |= FrameFlags::XRUN.bits();
            // The positions skip the frames the device dropped: restart both clocks' phase
            // from this chunk (keeping their rate), or every later chunk would look late.
            self.clock.resync();
            self.drift_clock.resync();
        }
        let mut off = 0;
        while off < n {
            if self.filled == 0 {
                self.pos = info.sample_pos + off as u64;
                // When the first sample arrived: the frame clock's estimate once it tracks the
                // device (so a late hand-over shows up as capture latency), else the hand-over
                // time minus the samples after it.
                let after = (n - off) as f64 * 1e9 / self.rate;
                let handed = info.timestamp_ns.saturating_sub(after as u64);
                self.first_ns = match self.clock.predict_ns(self.pos) {
                    Some(t) if self.clock.is_tracking() => t.min(handed),
                    _ => handed,
                };
            }
            let take = (self.quantum - self.filled).min(n - off);
            self.staging[self.filled * ch..(self.filled + take) * ch]
                .copy_from_slice(&samples[off * ch..(off + take) * ch]);
            self.filled += take;
            off += take;
            if self.filled == self.quantum {
                self.commit_frame();
                self.filled = 0;
            }
        }
        self.clock.update(end, info.timestamp_ns);
        self.drift_clock.update(end, info.timestamp_ns);
        n
    }
}

/// The playback half of the real-time thread: return ring → device.
struct PlaybackSide<'a, T: Sample> {
    rx: Option<ShmConsumer>,
    shared: &'a Shared,
    ch: usize,
    quantum: u64,
    rate: f64,
    buffer_ns: u64,
    cur: Vec<T>,
    cur_len: usize,
    cur_off: usize,
    cur_pos: u64,
    hist_return: Histogram<u64>,
    hist_playback: Histogram<u64>,
    hist_m2e: Histogram<u64>,
    /// Per returned frame: (seconds since start, mouth-to-ear in µs).
    timeline: Vec<(f32, f32)>,
    start_ns: u64,
    frames: u64,
    lost: u64,
    /// Returned frames dropped to catch up after a stall.
    skipped: u64,
    gaps: u64,
    started: bool,
    ipc_ns: u64,
    error: Option<ReadError>,
    /// Returned frames kept waiting in reserve (see [`super::buffer`]).
    reserve: usize,
    /// How far the reserve may grow after silence (= `reserve`: it never grows).
    max_reserve: usize,
    /// Glitches seen here, and the reserve's growths.
    log: FactLog,
}

impl<T: Sample> PlaybackSide<'_, T> {
    /// Takes the next returned frame into `cur`; false when none is ready.
    fn fetch(&mut self) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            return false;
        };
        let t0 = monotonic_ns();
        let (consumer, waiter) = rx.parts();
        let got = loop {
            // Everything returned so far: after a stall upstream, play only the newest frame
            // and drop the older ones, so the latency does not stay behind (each dropped
            // frame is counted lost).
            match consumer.read_grant(usize::MAX) {
                Ok(grant) => {
                    let keep = CATCH_UP_FRAMES + self.reserve;
                    if !self.started && grant.len() < keep {
                        // Fill the reserve before the first frame plays (the grant's drop
                        // releases nothing).
                        break false;
                    }
                    let skip = grant.len().saturating_sub(keep);
                    if skip > 0 {
                        self.log.push(Fact {
                            kind: FactKind::Skipped,
                            cycle: self.shared.committed.load(Ordering::Relaxed),
                            t_ns: t0,
                            value: skip as u64,
                        });
                    }
                    let mut ok = false;
                    if let Some(f) = grant.frame(skip) {
                        let meta = f.meta();
                        record(&mut self.hist_return, t0.saturating_sub(meta.timestamp_ns));
                        if let Ok(src) = f.samples::<T>() {
                            let want = (meta.len as usize / std::mem::size_of::<T>())
                                .min(src.len())
                                .min(self.cur.len());
                            let want = want / self.ch * self.ch;
                            self.cur[..want].copy_from_slice(&src[..want]);
                            self.cur_len = want / self.ch;
                            self.cur_off = 0;
                            self.cur_pos = meta.sample_pos;
                            ok = self.cur_len > 0;
                        }
                    }
                    self.skipped += skip as u64;
                    match grant.release(skip + 1) {
                        Ok(w) => w.wake(waiter),
                        Err(_) => ok = false,
                    }
                    break ok;
                }
                Err(ReadError::Empty) => break false,
                Err(ReadError::Lost { frames }) => self.lost += frames,
                Err(e) => {
                    self.error = Some(e);
                    break false;
                }
            }
        };
        self.ipc_ns += monotonic_ns() - t0;
        if got {
            self.frames += 1;
            self.started = true;
        }
        got
    }
}

impl<T: Sample> PlaybackSource<T> for PlaybackSide<'_, T> {
    fn pull(&mut self, out: &mut [T], info: &ChunkInfo) -> usize {
        let ch = self.ch;
        let n = out.len() / ch;
        let mut w = 0;
        while w < n {
            if self.cur_off >= self.cur_len && !self.fetch() {
                break;
            }
            if self.cur_off == 0 {
                // The frame's first sample is queued now, behind the device buffer.
                let ahead = self.buffer_ns + (w as f64 * 1e9 / self.rate) as u64;
                let heard = info.timestamp_ns + ahead;
                record(&mut self.hist_playback, ahead);
                let slot = self.shared.slot(self.cur_pos, self.quantum);
                // Relaxed: written by the capture half on this same thread.
                if self.shared.first_pos[slot].load(Ordering::Relaxed) == self.cur_pos {
                    let first = self.shared.first_ns[slot].load(Ordering::Relaxed);
                    let m2e = heard.saturating_sub(first);
                    record(&mut self.hist_m2e, m2e);
                    if self.timeline.len() < self.timeline.capacity() {
                        self.timeline.push((
                            heard.saturating_sub(self.start_ns) as f32 / 1e9,
                            m2e as f32 / 1e3,
                        ));
                    }
                }
            }
            let k = (self.cur_len - self.cur_off).min(n - w);
            out[w * ch..(w + k) * ch]
                .copy_from_slice(&self.cur[self.cur_off * ch..(self.cur_off + k) * ch]);
            self.cur_off += k;
            w += k;
        }
        if w < n && self.started && !self.shared.stop.is_set() {
            self.gaps += 1;
            // Relaxed: a cycle number for the report, written on this same thread.
            let cycle = self.shared.committed.load(Ordering::Relaxed);
            let t_ns = info.timestamp_ns;
            self.log.push(Fact {
                kind: FactKind::Silence,
                cycle,
                t_ns,
                value: (n - w) as u64,
            });
            if self.reserve < self.max_reserve {
                // `--periods auto`: keep one more returned frame in reserve from now on.
                self.reserve += 1;
                self.log.push(Fact {
                    kind: FactKind::Grown,
                    cycle,
                    t_ns,
                    value: self.reserve as u64,
                });
            }
        }
        w
    }
}

/// What the real-time halves need to know about the stream.
#[derive(Debug, Clone, Copy)]
struct RtParams {
    channels: usize,
    quantum: u32,
    rate: u32,
    period_ns: u64,
    buffer_ns: u64,
    agents_mask: u64,
    timeline_cap: usize,
    start_ns: u64,
    /// Mix the test talker into the capture (the synthetic device captures no voice).
    talker: bool,
    /// Returned frames kept in reserve at the start, and the most it may grow to.
    reserve: u32,
    max_reserve: u32,
    /// Test hook: stall the audio thread once ([`STALL_AUDIO_ENV`]).
    stall: Option<(u64, Duration)>,
}

impl Shared {
    /// Room for `table` frames' capture times.
    fn new(table: usize) -> Self {
        Shared {
            committed: AtomicU64::new(0),
            first_ns: (0..table).map(|_| AtomicU64::new(u64::MAX)).collect(),
            first_pos: (0..table).map(|_| AtomicU64::new(u64::MAX)).collect(),
            stop: StopFlag::new(),
        }
    }
}

impl<'a, T: Sample> CaptureSide<'a, T> {
    /// Everything allocated here, before the real-time thread starts.
    fn new(
        tx: ShmProducer,
        sync: &'a SyncHandle,
        shared: &'a Shared,
        p: &RtParams,
    ) -> anyhow::Result<Self> {
        Ok(CaptureSide {
            tx,
            sync,
            shared,
            ch: p.channels,
            quantum: p.quantum as usize,
            rate: f64::from(p.rate),
            period_ns: p.period_ns,
            agents_mask: p.agents_mask,
            staging: vec![T::SILENCE; p.quantum as usize * p.channels],
            filled: 0,
            first_ns: 0,
            pos: 0,
            pending_flags: 0,
            talker: p.talker.then(|| Talker::new(p.rate)),
            crc: crc32fast::Hasher::new(),
            frames: 0,
            samples: 0,
            dropped: 0,
            hist: new_hist(),
            clock: FrameClock::new(f64::from(p.rate), 1.0)
                .map_err(|e| anyhow::anyhow!("frame clock: {e:?}"))?,
            drift_clock: FrameClock::new(f64::from(p.rate), 0.1)
                .map_err(|e| anyhow::anyhow!("frame clock: {e:?}"))?,
            timeline: Vec::with_capacity(p.timeline_cap),
            start_ns: p.start_ns,
            ipc_ns: 0,
            error: None,
            log: FactLog::with_capacity(MAX_FACTS),
            last_late_t: 0,
            stall: p.stall,
        })
    }
}

impl<'a, T: Sample> PlaybackSide<'a, T> {
    /// Everything allocated here, before the real-time thread starts.
    fn new(rx: Option<ShmConsumer>, shared: &'a Shared, p: &RtParams) -> Self {
        PlaybackSide {
            rx,
            shared,
            ch: p.channels,
            quantum: u64::from(p.quantum),
            rate: f64::from(p.rate),
            buffer_ns: p.buffer_ns,
            cur: vec![T::SILENCE; p.quantum as usize * p.channels],
            cur_len: 0,
            cur_off: 0,
            cur_pos: 0,
            hist_return: new_hist(),
            hist_playback: new_hist(),
            hist_m2e: new_hist(),
            timeline: Vec::with_capacity(p.timeline_cap),
            start_ns: p.start_ns,
            frames: 0,
            lost: 0,
            skipped: 0,
            gaps: 0,
            started: false,
            ipc_ns: 0,
            error: None,
            reserve: p.reserve as usize,
            max_reserve: p.max_reserve.max(p.reserve) as usize,
            log: FactLog::with_capacity(MAX_FACTS),
        }
    }
}

/// Everything the real-time thread hands back.
struct RtResult<'a, T: Sample> {
    capture: CaptureSide<'a, T>,
    playback: PlaybackSide<'a, T>,
    xruns: XrunCounts,
    error: Option<String>,
    scheduling: String,
    rt_warning: Option<String>,
}

fn check_args(args: &Args) -> anyhow::Result<Vec<AgentSpec>> {
    anyhow::ensure!(
        args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 86_400.0,
        "--seconds must be between 0 and 86400 (got {})",
        args.seconds
    );
    // At least one cycle: a run of no cycle proves nothing (and would report no failure).
    let cycles = args.seconds * f64::from(args.rate) / f64::from(args.quantum.max(1));
    anyhow::ensure!(
        cycles >= 1.0,
        "--seconds {} is shorter than one cycle ({} frames at {} Hz = {:.3} ms): nothing would \
         run. Give at least --seconds {:.4}",
        args.seconds,
        args.quantum,
        args.rate,
        f64::from(args.quantum) * 1e3 / f64::from(args.rate.max(1)),
        f64::from(args.quantum) / f64::from(args.rate.max(1))
    );
    anyhow::ensure!(
        args.load <= 64,
        "--load {} is more CPU hogs than makes sense (at most 64)",
        args.load
    );
    anyhow::ensure!(
        args.rt_priority <= 99,
        "--rt-priority must be 0 (none) or 1..=99"
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
    let outputs = prepare_outputs(&args, &agents)?;
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
    let launcher = launcher.as_ref();
    let mut warnings = Vec::new();
    if let Err(e) = install_signal_cleanup(SignalMode::Notify) {
        warnings.push(format!("Ctrl-C will not give a partial report: {e}"));
    }
    match args.format {
        Format::S16 => run_with::<i16>(&args, &agents, launcher, outputs, warnings),
        Format::S32 => run_with::<i32>(&args, &agents, launcher, outputs, warnings),
        Format::F32 => run_with::<f32>(&args, &agents, launcher, outputs, warnings),
    }
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// The recording's file.
#[derive(Debug)]
enum Recording {
    /// Published at `--wav` or in the `--report` folder at the end.
    Kept(Pending),
    /// No `--wav` and no `--report`: an unnamed file in the temp folder, never named, gone
    /// with the last process holding it.
    Scratch(std::fs::File),
}

impl Recording {
    fn file(&self) -> &std::fs::File {
        match self {
            Self::Kept(p) => p.file(),
            Self::Scratch(f) => f,
        }
    }
}

/// The files of a run, all created unnamed before anything runs (see [`outfile`]).
#[derive(Debug)]
struct Outputs {
    json: Option<Pending>,
    /// `report.md`, `latency-histogram.svg`, `timeline.svg` in the `--report` folder.
    report: Option<[Pending; 3]>,
    /// Only with a `recorder` agent.
    wav: Option<Recording>,
}

/// Checks every output can be written by creating it now, unnamed: a missing or unwritable
/// folder is refused before a device is opened or a process started.
fn prepare_outputs(args: &Args, agents: &[AgentSpec]) -> anyhow::Result<Outputs> {
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

// Over 150 lines: left as is, the hub issue rebuilds run_with (see issue 12, "The files").
fn run_with<T: Sample>(
    args: &Args,
    agents: &[AgentSpec],
    launcher: Option<&PythonLauncher>,
    outputs: Outputs,
    mut warnings: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let (periods, mut buffer_report) = choose_buffer(args, &mut warnings);
    let dev = super::device::open::<T>(
        &super::device::DeviceRequest {
            device: &args.device,
            rate: args.rate,
            quantum: args.quantum,
            periods,
            channels: args.channels,
        },
        &mut warnings,
    )?;
    let super::device::OpenDevice {
        mut duplex,
        label: device_label,
        synthetic,
        rate,
        quantum,
        channels,
        period_ns,
        buffer_ns,
    } = dev;

    // Segments: the capture ring (room for ~0.5 s, at least 64 frames), the return ring, and
    // the sync region (cycle fence + VAD control register).
    let pid = std::process::id();
    let prefix = format!("run-{pid}-{:x}", monotonic_ns() & 0xff_ffff);
    let ring_frames = ((f64::from(rate) / f64::from(quantum) * 0.5).ceil() as u32)
        .next_power_of_two()
        .max(64);
    let cfg = RingConfig {
        frames: ring_frames,
        samples_per_frame: quantum,
        channels,
        format: args.format,
        sample_rate: rate,
        max_consumers: agents.len() as u16,
        policy: Policy::Lossless,
    };
    let copts = CreateOptions::default();
    let capture_seg = Segment::create(&capture_name(&prefix), &cfg, &copts)
        .map_err(|e| anyhow::anyhow!("cannot create the capture ring: {e}"))?;
    let tx = capture_seg
        .producer()
        .map_err(|e| anyhow::anyhow!("cannot claim the capture ring: {e}"))?;
    let has_echo = agents.contains(&AgentSpec::Builtin(AgentKind::Echo));
    let (return_seg, rx) = if has_echo {
        let rcfg = RingConfig {
            max_consumers: 1,
            ..cfg
        };
        let seg = Segment::create(&return_name(&prefix), &rcfg, &copts)
            .map_err(|e| anyhow::anyhow!("cannot create the return ring: {e}"))?;
        let mut rx = seg
            .consumer()
            .map_err(|e| anyhow::anyhow!("cannot join the return ring: {e}"))?;
        rx.set_spin(Duration::ZERO);
        (Some(seg), Some(rx))
    } else {
        (None, None)
    };
    let sync = SyncHandle::create(&prefix, agents.len() as u32)?;

    // The agents, each its own process; wait until each has joined.
    let mut procs: Vec<(AgentSpec, Proc)> = Vec::new();
    let spawn_all = |procs: &mut Vec<(AgentSpec, Proc)>| -> anyhow::Result<()> {
        for (i, spec) in agents.iter().enumerate() {
            let kind = match spec {
                AgentSpec::Builtin(k) => k,
                AgentSpec::Python(script) => {
                    let Some(launcher) = launcher else {
                        anyhow::bail!("internal: a Python agent without a Python launcher");
                    };
                    let cmd = launcher.command(script, &prefix, pid, i);
                    let mut p = procs::spawn(&spec.name(), cmd)?;
                    match p.wait_line(READY_TIMEOUT) {
                        Some(l) if l == "ready" => {
                            procs.push((spec.clone(), p));
                            continue;
                        }
                        _ => {
                            let f = p.kill();
                            anyhow::bail!(
                                "the Python agent {} did not start: {} ({}). It must join the \
                                 ring `<prefix>.capture` and print `ready`; run it by hand to \
                                 see why: {} {} --segments NAME",
                                script.display(),
                                f.stderr.join(" / "),
                                f.status,
                                launcher.interpreter.to_string_lossy(),
                                script.display()
                            );
                        }
                    }
                }
            };
            let mut a = vec![
                "agent".to_owned(),
                "--role".to_owned(),
                kind.name().to_owned(),
                "--parent".to_owned(),
                pid.to_string(),
                "--segments".to_owned(),
                prefix.clone(),
                "--index".to_owned(),
                i.to_string(),
                "--rt-priority".to_owned(),
                args.rt_priority.to_string(),
            ];
            let mut p = match (kind, &outputs.wav) {
                (AgentKind::Recorder, Some(rec)) => {
                    // The recorder inherits the recording's descriptor (no name to plant at).
                    a.push("--wav-fd".to_owned());
                    a.push(rec.file().as_raw_fd().to_string());
                    procs::spawn_self_with_fd(kind.name(), &a, rec.file())?
                }
                _ => procs::spawn_self(kind.name(), &a)?,
            };
            match p.wait_line(READY_TIMEOUT) {
                Some(l) if l == "ready" => procs.push((spec.clone(), p)),
                _ => {
                    let f = p.kill();
                    anyhow::bail!(
                        "the {} agent did not start: {} ({})",
                        kind.name(),
                        f.stderr.join(" / "),
                        f.status
                    );
                }
            }
        }
        Ok(())
    };
    if let Err(e) = spawn_all(&mut procs) {
        for (_, p) in procs {
            let _ = p.kill();
        }
        return Err(e);
    }
    let mut hogs = Vec::new();
    for i in 0..args.load {
        let a = vec![
            "agent".into(),
            "--role".into(),
            "hog".into(),
            "--parent".into(),
            pid.to_string(),
        ];
        match procs::spawn_self(&format!("hog {}", i + 1), &a) {
            Ok(p) => hogs.push(p),
            Err(e) => warnings.push(format!("CPU hog {} did not start: {e:#}", i + 1)),
        }
    }

    // Run.
    let total_frames = (args.seconds * f64::from(rate)).round() as u64;
    let table = (ring_frames as usize * 4).next_power_of_two();
    let shared = Shared::new(table);
    let cycles_total = total_frames / u64::from(quantum);
    let timeline_cap = (cycles_total as usize + 16).min(MAX_TIMELINE_CYCLES);
    // The built-in agents mark the cycle fence; Python agents do not, so they are left out.
    let agents_mask = agents
        .iter()
        .enumerate()
        .filter(|(_, a)| a.builtin().is_some())
        .fold(0u64, |m, (i, _)| m | (1u64 << i));
    let start = Instant::now();
    let start_ns = monotonic_ns();
    let params = RtParams {
        channels: usize::from(channels),
        quantum,
        rate,
        period_ns,
        buffer_ns,
        agents_mask,
        timeline_cap,
        start_ns,
        talker: synthetic,
        reserve: buffer_report.reserve_start,
        max_reserve: if args.periods == Periods::Auto {
            super::buffer::MAX_AUTO_PERIODS - 2
        } else {
            buffer_report.reserve_start
        },
        stall: stall_hook(),
    };
    let capture = CaptureSide::<T>::new(tx, &sync, &shared, &params)?;
    let playback = PlaybackSide::<T>::new(rx, &shared, &params);
    let progress = (!args.no_progress && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(cycles_total);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} cycles {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    });
    let rt_priority = args.rt_priority;
    let mut steal = StealSampler::new();
    steal.sample(monotonic_ns());
    let mut interrupted = false;
    let mut agent_died: Option<String> = None;
    let result = std::thread::scope(|s| {
        let shared = &shared;
        let duplex = &mut duplex;
        let handle = std::thread::Builder::new()
            .name("voxring-audio".into())
            .spawn_scoped(s, move || {
                let mut capture = capture;
                let mut playback = playback;
                let (scheduling, rt_warning) = super::device::promote(rt_priority);
                let r = duplex.run(
                    &mut capture,
                    &mut playback,
                    &shared.stop,
                    Some(total_frames),
                );
                let xruns = duplex.xruns();
                RtResult {
                    capture,
                    playback,
                    xruns,
                    error: r
                        .err()
                        .map(|e| voxring_linux::audio::AudioError::from(e).to_string()),
                    scheduling,
                    rt_warning,
                }
            });
        let handle = match handle {
            Ok(h) => h,
            Err(e) => return Err(anyhow::anyhow!("cannot start the audio thread: {e}")),
        };
        let mut last_evict = Instant::now();
        while !handle.is_finished() {
            if termination_requested() && !interrupted {
                interrupted = true;
                shared.stop.request();
            }
            for (kind, p) in procs.iter_mut() {
                if agent_died.is_none()
                    && let Some(st) = p.exited()
                {
                    agent_died = Some(format!("the {} agent ended early ({st})", kind.name()));
                    // The run has failed: stop now rather than run on without it.
                    shared.stop.request();
                }
            }
            if last_evict.elapsed() > Duration::from_millis(250) {
                // A dead agent would hold the lossless ring back: drop its slot (not on the
                // audio thread: one fcntl per slot).
                let _ = capture_seg.evict_dead();
                last_evict = Instant::now();
            }
            if let Some(pb) = &progress {
                // Relaxed: progress only.
                pb.set_position(shared.committed.load(Ordering::Relaxed));
            }
            steal.sample(monotonic_ns());
            std::thread::sleep(Duration::from_millis(50));
        }
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("the audio thread panicked"))
    });
    if let Some(pb) = &progress {
        pb.finish_and_clear();
    }
    let rt = match result {
        Ok(rt) => rt,
        Err(e) => {
            for (_, p) in procs {
                let _ = p.kill();
            }
            for h in hogs {
                let _ = h.kill();
            }
            return Err(e);
        }
    };
    let elapsed_s = start.elapsed().as_secs_f64();
    steal.sample(monotonic_ns());
    interrupted |= termination_requested();
    let RtResult {
        mut capture,
        playback,
        xruns,
        error,
        scheduling,
        rt_warning,
    } = rt;
    if let Some(w) = rt_warning {
        warnings.push(w);
    }
    // Anything here fails the run, whatever its latency (see `RunReport::failures`).
    let mut failures = Vec::new();
    if let Some(e) = error {
        failures.push(format!("the audio device failed: {e}"));
    }
    if let Some(e) = capture.error {
        failures.push(format!("the capture ring refused a frame: {e}"));
    }
    if let Some(e) = playback.error {
        failures.push(format!("the return ring failed: {e}"));
    }
    if let Some(d) = agent_died {
        failures.push(d);
    }

    // End of stream: one empty frame flagged END_OF_STREAM (waiting for space is fine here).
    let eos_deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (producer, waiter) = capture.tx.parts();
        match producer.write_grant(1) {
            Ok(mut g) => {
                if let Some(mut f) = g.frame_mut(0) {
                    let _ = f.set_len(0);
                    f.set_flags(FrameFlags::END_OF_STREAM);
                    f.set_sample_pos(capture.pos);
                    f.set_timestamp_ns(monotonic_ns());
                }
                g.commit_all().wake(waiter);
                break;
            }
            Err(GrantError::Full) if Instant::now() < eos_deadline => {}
            Err(e) => {
                warnings.push(format!(
                    "could not send the end of stream to the agents ({e}); they were stopped"
                ));
                break;
            }
        }
        let _ = capture.tx.wait_for_space(Some(Duration::from_millis(50)));
    }
    let vad_state = sync.read_vad();
    let finished: Vec<(AgentSpec, procs::Finished)> = procs
        .into_iter()
        .map(|(k, p)| (k, p.finish(FINISH_GRACE)))
        .collect();
    for h in hogs {
        let _ = h.kill();
    }
    let late_by_agent = sync.late_counts();

    // Collect.
    let mut stages = vec![StageRow::new(
        "capture",
        "first sample at the device → committed to the capture ring",
        &capture.hist,
    )];
    let mut agent_rows = Vec::new();
    let mut compute_rows = Vec::new();
    let mut ipc_ns = capture.ipc_ns + playback.ipc_ns;
    let mut wait_cpu_ns = 0u64;
    let mut lost_total = capture.dropped + playback.lost + playback.skipped;
    let mut late_cycles: Vec<u64> = Vec::new();
    let mut late_marks: Vec<(String, Vec<LateMark>)> = Vec::new();
    let mut recorder_out: Option<AgentOutput> = None;
    for (i, (spec, f)) in finished.iter().enumerate() {
        let name = spec.name();
        if !f.clean_exit {
            failures.push(format!(
                "the {name} agent did not end cleanly ({}){}",
                f.status,
                stderr_tail(&f.stderr)
            ));
        }
        let kind = match spec {
            AgentSpec::Builtin(k) => *k,
            AgentSpec::Python(_) => {
                for line in &f.stderr {
                    warnings.push(format!("{name} agent: {line}"));
                }
                let (row, stage, lost) = python_row(&name, f, &mut warnings, &mut failures);
                lost_total += lost;
                stages.extend(stage);
                agent_rows.push(row);
                continue;
            }
        };
        let out: Option<AgentOutput> = f
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str(l).ok());
        for line in &f.stderr {
            warnings.push(format!("{} agent: {line}", kind.name()));
        }
        match out {
            Some(o) => {
                let handoff = hist_from_base64(&o.handoff_hist)?;
                let compute = hist_from_base64(&o.compute_hist)?;
                stages.push(StageRow::new(
                    format!("handoff:{}", kind.name()),
                    "committed → in the agent's hands (another process)",
                    &handoff,
                ));
                compute_rows.push(StageRow::new(
                    format!("compute:{}", kind.name()),
                    "the agent's own work on one frame",
                    &compute,
                ));
                ipc_ns += o.ipc_ns;
                wait_cpu_ns += o.wait_cpu_ns;
                let share = |ns: u64| {
                    if o.wall_ns > 0 {
                        ns as f64 * 100.0 / o.wall_ns as f64
                    } else {
                        0.0
                    }
                };
                lost_total += o.lost + o.return_dropped.unwrap_or(0);
                late_cycles.extend(&o.late_cycles);
                late_marks.push((kind.name().to_owned(), o.late_marks.clone()));
                for w in &o.warnings {
                    // The same refusal as the audio thread's (SCHED_FIFO) is said once.
                    if !warnings.contains(w) {
                        warnings.push(format!("{} agent: {w}", kind.name()));
                    }
                }
                let late = late_by_agent.get(i).copied().unwrap_or(o.late);
                agent_rows.push(AgentRow {
                    name: kind.name().to_owned(),
                    pid: f.pid,
                    frames: o.frames,
                    late: Some(late),
                    lost: o.lost,
                    checksum: o.checksum.clone(),
                    cpu_percent: share(o.cpu_ns),
                    ipc_cpu_percent: Some(share(o.ipc_ns)),
                    wait_cpu_percent: Some(share(o.wait_cpu_ns)),
                    transport: "shm".to_owned(),
                    scheduling: o.scheduling.clone(),
                    exit: o.exit.clone(),
                });
                if kind == AgentKind::Recorder {
                    recorder_out = Some(o);
                }
            }
            None => {
                failures.push(format!(
                    "the {} agent gave no report ({})",
                    kind.name(),
                    f.status,
                ));
                agent_rows.push(AgentRow {
                    name: kind.name().to_owned(),
                    pid: f.pid,
                    frames: 0,
                    late: Some(late_by_agent.get(i).copied().unwrap_or(0)),
                    lost: 0,
                    checksum: String::new(),
                    cpu_percent: 0.0,
                    ipc_cpu_percent: None,
                    wait_cpu_percent: None,
                    transport: "shm".to_owned(),
                    scheduling: String::new(),
                    exit: f.status.clone(),
                });
            }
        }
    }
    stages.extend(compute_rows);
    if has_echo {
        stages.push(StageRow::new(
            "return handoff",
            "echo committed → taken by the playback side (waits for the device's next period)",
            &playback.hist_return,
        ));
        stages.push(StageRow::new(
            "playback",
            "taken into the device buffer → heard (the granted buffer ahead of it)",
            &playback.hist_playback,
        ));
    }
    late_cycles.sort_unstable();
    late_cycles.dedup();
    let cycles_late = late_cycles.len() as u64;
    let producer = ProducerRow {
        frames: capture.frames,
        samples: capture.samples,
        checksum: format!("{:08x}", capture.crc.clone().finalize()),
        dropped: capture.dropped,
    };
    if let Some(r) = &recorder_out
        && r.samples != producer.samples
    {
        failures.push(format!(
            "the recorder got {} samples, the producer committed {}: the recording is not what \
             was captured",
            r.samples, producer.samples
        ));
    }
    // Every agent that reported read every committed byte, in order: its CRC-32 must be the
    // producer's.
    for a in &agent_rows {
        if !a.checksum.is_empty() && a.checksum != producer.checksum {
            failures.push(format!(
                "the {} agent's CRC-32 {} differs from the producer's {}: it did not get exactly \
                 the frames produced",
                a.name, a.checksum, producer.checksum
            ));
        }
    }
    if capture.frames == 0 {
        failures.push("no cycle ran: not a single frame was captured".to_owned());
    }
    if lost_total > 0 {
        failures.push(format!(
            "{lost_total} frames were lost (audible gaps){}",
            if playback.skipped > 0 {
                format!(
                    ", {} of them returned frames dropped to catch up after stalls",
                    playback.skipped
                )
            } else {
                String::new()
            }
        ));
    }
    if playback.gaps > 0 {
        failures.push(format!(
            "{} playback periods ran short of returned frames (silence was played)",
            playback.gaps
        ));
    }
    if synthetic {
        warnings.push(
            "synthetic device: its capture carries no voice, so a test talker (1.2 s speech-like bursts, 0.8 s quiet) is mixed into the captured frames before the ring".to_owned(),
        );
    }
    let glitches = explain_glitches(
        &capture.log,
        &playback.log,
        &late_marks,
        &steal,
        period_ns,
        start_ns,
    );
    buffer_report.reserve_end = playback.reserve as u32;
    buffer_report.grown_at_cycles = playback
        .log
        .facts
        .iter()
        .filter(|f| f.kind == FactKind::Grown)
        .map(|f| f.cycle)
        .collect();
    if !buffer_report.grown_at_cycles.is_empty() {
        warnings.push(format!(
            "the playback reserve grew from {} to {} frame(s) after silence at cycle(s) {:?} \
             (each growth adds one period of mouth-to-ear; the device buffer stays {} periods: \
             it cannot change while the stream runs); next time try --periods {}",
            buffer_report.reserve_start,
            buffer_report.reserve_end,
            buffer_report.grown_at_cycles,
            buffer_report.periods,
            buffer_report.reserve_end + 2
        ));
    }
    let wall_ns = (elapsed_s * 1e9).max(1.0);
    let mut report = RunReport {
        device: device_label,
        playback_device: None,
        rate,
        quantum,
        channels,
        seconds: args.seconds,
        elapsed_s,
        interrupted,
        load: args.load,
        cycles: capture.frames,
        cycles_late,
        frames_lost: lost_total,
        xruns: xruns.capture + xruns.playback,
        xruns_capture: xruns.capture,
        xruns_playback: xruns.playback,
        xruns_playback_hidden: xruns.playback_hidden,
        mouth_to_ear_ms: Percentiles::of(&playback.hist_m2e),
        stages,
        agents: agent_rows,
        producer,
        vad: agents
            .contains(&AgentSpec::Builtin(AgentKind::Vad))
            .then(|| VadRow {
                speech_segments: vad_state.segments,
                speech_frames: vad_state.speech_frames,
                last_energy_dbfs: Some(f64::from(vad_state.energy_millibel) / 100.0),
            }),
        ipc_cpu_percent: ipc_ns as f64 * 100.0 / wall_ns,
        wait_cpu_percent: wait_cpu_ns as f64 * 100.0 / wall_ns,
        audio_scheduling: scheduling,
        drift_ppm: capture.drift_clock.drift_ppm(),
        budget_ms: super::report::BUDGET_MS,
        verdict: String::new(),
        verdict_reasons: Vec::new(),
        failures,
        warnings: Vec::new(),
        wav: None,
        command: command_line(),
        buffer: Some(buffer_report),
        glitches,
    };
    // The recording is kept only when the recorder finished it (a dead recorder's WAV has no
    // valid header); else its unnamed file just goes away.
    let recorder_finished = recorder_out.is_some()
        && finished
            .iter()
            .any(|(s, f)| *s == AgentSpec::Builtin(AgentKind::Recorder) && f.clean_exit);
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
            warnings.push(format!(
                "the recording was not written to {}: the recorder did not finish it",
                p.target().display()
            ));
            None
        }
        Some(Recording::Scratch(_)) | None => None,
    };
    report.warnings = warnings;
    report.judge();

    // The results on stdout first: a failed write below loses none of them.
    print!("{}", report.text());
    // Write the outputs, each atomically (a full disk leaves no partial file).
    let mut write_errors = Vec::new();
    if let Some(p) = json {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        write_errors.extend(p.write_and_publish(text.as_bytes()).err());
    }
    if let Some(files) = report_files {
        write_errors.extend(write_report_dir(files, &report, &capture, &playback, period_ns).err());
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
    drop(capture);
    drop(playback);
    drop(sync);
    drop(return_seg);
    drop(capture_seg);
    Ok(if interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if report.verdict == "failed" || report.verdict == "over budget" {
        ExitCode::from(EXIT_OVER_BUDGET)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--periods`: the number forced, or the probe's choice; and what the report says of it.
fn choose_buffer(args: &Args, warnings: &mut Vec<String>) -> (u32, BufferReport) {
    let (periods, reason, probe) =
        super::buffer::resolve(args.periods, args.quantum, args.rate, args.rt_priority);
    let mode = if args.periods == Periods::Auto {
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
        grown_at_cycles: Vec::new(),
        reason,
        probe,
    };
    (periods, report)
}

/// The test hook [`STALL_AUDIO_ENV`]: `CYCLE:MS`.
fn stall_hook() -> Option<(u64, Duration)> {
    let v = std::env::var(STALL_AUDIO_ENV).ok()?;
    let (c, ms) = v.split_once(':')?;
    Some((c.parse().ok()?, Duration::from_millis(ms.parse().ok()?)))
}

/// Every glitch the real-time halves saw and every late cycle the agents reported, explained.
fn explain_glitches(
    capture: &FactLog,
    playback: &FactLog,
    late_marks: &[(String, Vec<LateMark>)],
    steal: &StealSampler,
    period_ns: u64,
    start_ns: u64,
) -> Vec<Glitch> {
    let mut facts: Vec<Fact> = capture
        .facts
        .iter()
        .chain(&playback.facts)
        .copied()
        .collect();
    facts.sort_by_key(|f| f.t_ns);
    let cx = super::glitch::Context {
        period_ns,
        start_ns,
        agents: late_marks
            .iter()
            .map(|(n, m)| (n.clone(), m.as_slice()))
            .collect(),
        steal,
        rt_throttling: super::glitch::rt_throttling(),
    };
    let mut g = super::glitch::attribute(&facts, &cx);
    let unlisted = capture.overflow + playback.overflow;
    if unlisted > 0 {
        g.push(Glitch {
            cycle: u64::MAX,
            kind: "unlisted".to_owned(),
            cause: "unknown".to_owned(),
            detail: format!(
                "{unlisted} more glitch facts than the report keeps ({MAX_FACTS} per side)"
            ),
        });
    }
    g
}

/// The report's row for a Python agent, its hand-off stage (when it reported), and the
/// frames it lost. It does not mark the cycle fence: its lateness is not measured (`None`).
fn python_row(
    name: &str,
    f: &procs::Finished,
    warnings: &mut Vec<String>,
    failures: &mut Vec<String>,
) -> (AgentRow, Option<StageRow>, u64) {
    let Some(o) = python::parse_output(&f.stdout) else {
        failures.push(format!("the {name} agent gave no report ({})", f.status));
        let row = AgentRow {
            name: name.to_owned(),
            pid: f.pid,
            frames: 0,
            late: None,
            lost: 0,
            checksum: String::new(),
            cpu_percent: 0.0,
            ipc_cpu_percent: None,
            wait_cpu_percent: None,
            transport: String::new(),
            scheduling: String::new(),
            exit: f.status.clone(),
        };
        return (row, None, 0);
    };
    if o.transport != "shm" {
        warnings.push(format!(
            "the {name} agent read over {} (slower than shared memory): {}",
            o.transport, o.transport_reason
        ));
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    // The agent reports p50/p90/p99/max, not a histogram: p99.9 is not known.
    let stage = (o.frames > 0).then(|| StageRow {
        name: format!("handoff:{name}"),
        what: "committed → in the Python agent's hands (another process; p99.9 not reported)"
            .to_owned(),
        samples: o.frames,
        p50_ms: Some(ms(o.handoff_ns.p50)),
        p99_ms: Some(ms(o.handoff_ns.p99)),
        p999_ms: None,
        max_ms: Some(ms(o.handoff_ns.max)),
    });
    let cpu_percent = if o.wall_ns > 0 {
        o.cpu_ns as f64 * 100.0 / o.wall_ns as f64
    } else {
        0.0
    };
    let row = AgentRow {
        name: name.to_owned(),
        pid: f.pid,
        frames: o.frames,
        late: None,
        lost: o.lost,
        checksum: o.checksum.clone(),
        cpu_percent,
        ipc_cpu_percent: None,
        wait_cpu_percent: None,
        transport: o.transport.clone(),
        // It does not ask for real-time scheduling; it inherits the orchestrator's main thread's.
        scheduling: "SCHED_OTHER".to_owned(),
        exit: o.exit.clone(),
    };
    (row, stage, o.lost)
}

/// `: <its last stderr line>`, or nothing.
fn stderr_tail(stderr: &[String]) -> String {
    stderr
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or_else(String::new, |l| format!(": {}", l.trim()))
}

fn write_report_dir<T: Sample>(
    files: [Pending; 3],
    report: &RunReport,
    capture: &CaptureSide<'_, T>,
    playback: &PlaybackSide<'_, T>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use voxring_core::SampleFormat;

    // Aborts the test process if anything allocates inside `assert_no_alloc`; everywhere else
    // it is the system allocator.
    #[global_allocator]
    static ALLOC: assert_no_alloc::AllocDisabler = assert_no_alloc::AllocDisabler;

    /// The real-time halves (device → capture ring, return ring → device) neither allocate
    /// nor fail to move frames, with a stand-in echo in between.
    #[test]
    fn the_audio_path_does_not_allocate() {
        let prefix = format!("rtalloc-{}", std::process::id());
        let cfg = RingConfig {
            frames: 16,
            samples_per_frame: 64,
            channels: 1,
            format: SampleFormat::S16,
            sample_rate: 48_000,
            max_consumers: 1,
            policy: Policy::Lossless,
        };
        let opts = CreateOptions::default();
        let cap = Segment::create(&capture_name(&prefix), &cfg, &opts).unwrap();
        let ret = Segment::create(&return_name(&prefix), &cfg, &opts).unwrap();
        let mut agent = cap.consumer().unwrap();
        let mut echo = ret.producer().unwrap();
        let sync = SyncHandle::create(&prefix, 1).unwrap();
        let shared = Shared::new(64);
        let p = RtParams {
            channels: 1,
            quantum: 64,
            rate: 48_000,
            period_ns: 1_333_333,
            buffer_ns: 2_666_666,
            agents_mask: 1,
            timeline_cap: 64,
            start_ns: monotonic_ns(),
            talker: true,
            reserve: 0,
            max_reserve: 2,
            stall: None,
        };
        let mut capture =
            CaptureSide::<i16>::new(cap.producer().unwrap(), &sync, &shared, &p).unwrap();
        let mut playback = PlaybackSide::<i16>::new(Some(ret.consumer().unwrap()), &shared, &p);
        let input: Vec<i16> = (0..64).map(|i| i * 100).collect();
        let mut out = vec![0i16; 64];
        // Hand-over times on the device clock (so the frame clock tracks it).
        let base = monotonic_ns();
        for k in 0..32u64 {
            let info = ChunkInfo {
                sample_pos: k * 64,
                timestamp_ns: base + (k + 1) * p.period_ns,
                flags: 0,
                capture_pos: k * 64,
                channels: 1,
            };
            assert_no_alloc::assert_no_alloc(|| {
                assert_eq!(capture.push(&input, &info), 64);
            });
            // The echo agent's part (another process in a real run).
            let (c, _) = agent.parts();
            let g = c.read_grant(1).unwrap();
            let f = g.frame(0).unwrap();
            let (meta, payload) = (f.meta(), f.payload().to_vec());
            // Single-threaded test: nobody is parked on the agent's ring.
            let _ = g.release_all().unwrap();
            let (prod, _) = echo.parts();
            let mut w = prod.write_grant(1).unwrap();
            {
                let mut o = w.frame_mut(0).unwrap();
                o.payload_mut()[..payload.len()].copy_from_slice(&payload);
                o.set_len(payload.len() as u32).unwrap();
                o.set_sample_pos(meta.sample_pos);
                o.set_timestamp_ns(monotonic_ns());
            }
            let _ = w.commit_all();
            assert_no_alloc::assert_no_alloc(|| {
                assert_eq!(playback.pull(&mut out, &info), 64);
            });
        }
        // Nothing returned for the next period: silence is played, recorded, and the
        // reserve grows (max_reserve 2) — still without allocating.
        let info = ChunkInfo {
            sample_pos: 32 * 64,
            timestamp_ns: monotonic_ns(),
            flags: 0,
            capture_pos: 32 * 64,
            channels: 1,
        };
        assert_no_alloc::assert_no_alloc(|| {
            assert_eq!(playback.pull(&mut out, &info), 0);
        });
        assert_eq!(playback.gaps, 1);
        assert_eq!(playback.reserve, 1);
        let kinds: Vec<FactKind> = playback.log.facts.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [FactKind::Silence, FactKind::Grown]);
        // A capture chunk handed over 50 periods late, flagged XRUN: both recorded, no
        // allocation.
        let late = ChunkInfo {
            sample_pos: 32 * 64,
            timestamp_ns: base + (33 + 50) * p.period_ns,
            flags: voxring_linux::audio::flags::XRUN,
            capture_pos: 33 * 64,
            channels: 1,
        };
        assert_no_alloc::assert_no_alloc(|| {
            assert_eq!(capture.push(&input, &late), 64);
        });
        let kinds: Vec<FactKind> = capture.log.facts.iter().map(|f| f.kind).collect();
        assert!(kinds.contains(&FactKind::Xrun), "{kinds:?}");
        assert!(kinds.contains(&FactKind::LateWake), "{kinds:?}");
        assert_eq!(capture.frames, 33);
        assert_eq!(capture.dropped, 0);
        assert_eq!(playback.frames, 32);
        assert_eq!(playback.hist_m2e.len(), 32);
        assert!(capture.error.is_none() && playback.error.is_none());
    }
}
