//! What `voxring run` measures on the hub's real-time thread: [`CaptureProbe`] on the mic
//! side (the hub's `MicSink`) and [`PlaybackProbe`] on the mix side (the hub's `MixSource`).
//! The hub moves the audio; these only watch (and, on the synthetic device, mix the test
//! talker into the captured frame in its ring slot).
//!
//! # The stages and how each is measured (all CLOCK_MONOTONIC)
//!
//! | stage | from | to |
//! |---|---|---|
//! | `capture` | the frame's first sample at the device (the frame clock's estimate, or the chunk's hand-over time minus the samples after it, whichever is earlier) | stamped and committed into the mic ring |
//! | `handoff:<agent>` | commit (the hub stamps `timestamp_ns` at commit) | the agent has the frame in hand |
//! | `compute:<agent>` | agent starts its work on the frame | agent done |
//! | `return handoff` | the echo agent's commit into its output ring | the hub's mix takes it (at the device's next period, behind the queue's target depth) |
//! | `playback` | mixed into the device's playback buffer | heard: the buffer ahead of it (granted buffer frames) |
//! | mouth-to-ear | the first sample captured | the same sample heard |
//!
//! "Heard" uses the device's granted playback buffer as the queue ahead of a mixed frame: the
//! synthetic device and PipeWire's ALSA plugin both keep the buffer full.
//!
//! Nothing here allocates, locks, prints or blocks (the `assert_no_alloc` test below), except
//! the test hook [`STALL_AUDIO_ENV`], which sleeps on purpose.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use voxring_core::clock::FrameClock;
use voxring_linux::audio::mixer::{LaneCounters, LaneState, Mix, OutputQueue};
use voxring_linux::audio::{ChunkInfo, Sample, flags, monotonic_ns};

use super::dsp::Talker;
use super::glitch::{Fact, FactKind, FactLog, Growth};
use super::report::{new_hist, record};
use super::sync::SyncHandle;
use crate::serve::rt::{MicProbe, MixProbe};

/// Facts each real-time side keeps for the glitch report (beyond, counted).
pub const MAX_FACTS: usize = 4096;
/// Cycles after a playback xrun during which an echo queue standing above its target has its
/// target raised to the depth in hand (`--periods auto`): the device buffer is refilled from
/// the queue at once (up to 8 cycles), and the echo returns the capture's backlog from the stall
/// in the cycles after. Shorter than the queue's drift window, which would drop it.
pub const XRUN_WATCH_CYCLES: u32 = 32;
/// Bins of [`PlaybackProbe::depths`]: the output queue's depth at a pull, 0 to 30 frames, and
/// the last bin for 31 or more.
pub const DEPTH_BINS: usize = 32;
/// Capture wake-ups are counted by the ring frames each brought, up to this many (the last count
/// holds that many or more).
pub const WAKE_COUNTS: usize = 33;
/// Test hook: `CYCLE:MS` makes the audio thread sleep MS milliseconds once, before it commits
/// frame CYCLE (a host stall on demand; the glitch report must name it); `CYCLE:MS:EVERY` does
/// it again every EVERY cycles (a host that keeps stalling).
pub const STALL_AUDIO_ENV: &str = "VOXRING_TEST_STALL_AUDIO";

/// Capture times the playback side reads back (same thread: the device's one real-time
/// thread runs both sides), and the progress counter the main thread reads.
#[derive(Debug)]
pub struct Table {
    /// Frames committed to the mic ring (progress bar).
    pub committed: AtomicU64,
    /// Capture time of each frame's first sample, by frame number modulo the table size, with
    /// the frame's sample position beside it to check the match.
    first_ns: Box<[AtomicU64]>,
    first_pos: Box<[AtomicU64]>,
}

impl Table {
    /// Room for `size` frames' capture times.
    pub fn new(size: usize) -> Self {
        Table {
            committed: AtomicU64::new(0),
            first_ns: (0..size).map(|_| AtomicU64::new(u64::MAX)).collect(),
            first_pos: (0..size).map(|_| AtomicU64::new(u64::MAX)).collect(),
        }
    }

    fn slot(&self, pos: u64, quantum: u64) -> usize {
        ((pos / quantum.max(1)) % self.first_ns.len() as u64) as usize
    }

    fn put(&self, pos: u64, quantum: u64, first_ns: u64) {
        let slot = self.slot(pos, quantum);
        // Relaxed: read back on this same thread (the playback side).
        self.first_ns[slot].store(first_ns, Ordering::Relaxed);
        self.first_pos[slot].store(pos, Ordering::Relaxed);
    }

    fn get(&self, pos: u64, quantum: u64) -> Option<u64> {
        let slot = self.slot(pos, quantum);
        // Relaxed: written by the capture side on this same thread.
        (self.first_pos[slot].load(Ordering::Relaxed) == pos)
            .then(|| self.first_ns[slot].load(Ordering::Relaxed))
    }

    fn cycle(&self) -> u64 {
        // Relaxed: a cycle number for the report, written on this same thread.
        self.committed.load(Ordering::Relaxed)
    }
}

/// What the real-time sides need to know about the stream.
#[derive(Debug, Clone, Copy)]
pub struct RtParams {
    pub channels: usize,
    pub quantum: u32,
    pub rate: u32,
    pub period_ns: u64,
    pub buffer_ns: u64,
    /// The built-in agents' bits in the cycle fence.
    pub agents_mask: u64,
    /// Per-cycle records kept for the timeline.
    pub timeline_cap: usize,
    pub start_ns: u64,
    /// Mix the test talker into the capture (the synthetic device captures no voice).
    pub talker: bool,
    /// The output queue's target depth may grow (after silence, or after a playback xrun to
    /// keep the backlog) up to this (= the start: never).
    pub max_target: u32,
    /// Test hook: stall the audio thread ([`STALL_AUDIO_ENV`]).
    pub stall: Option<Stall>,
}

/// A stall of the audio thread on demand (the test hook [`STALL_AUDIO_ENV`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// The first stalled cycle.
    pub cycle: u64,
    pub len: Duration,
    /// Again every this many cycles (0: once).
    pub every: u64,
}

/// The test hook [`STALL_AUDIO_ENV`]: `CYCLE:MS` (once) or `CYCLE:MS:EVERY` (then again every
/// EVERY cycles).
pub fn stall_hook() -> Option<Stall> {
    parse_stall(&std::env::var(STALL_AUDIO_ENV).ok()?)
}

fn parse_stall(v: &str) -> Option<Stall> {
    let mut it = v.split(':');
    let (c, ms) = (it.next()?, it.next()?);
    let every = it.next().map_or(Some(0), |e| e.parse().ok())?;
    Some(Stall {
        cycle: c.parse().ok()?,
        len: Duration::from_millis(ms.parse().ok()?),
        every,
    })
}

/// The capture side's measurements (see the module docs).
pub struct CaptureProbe<'a> {
    sync: &'a SyncHandle,
    table: &'a Table,
    p: RtParams,
    talker: Option<Talker>,
    /// The chunk being committed: its hand-over and first position, and its ring frames.
    chunk: ChunkInfo,
    chunk_frames: usize,
    /// The last chunk's end (position, hand-over time), fed to the clocks at the next one.
    pending_clock: Option<(u64, u64)>,
    pub crc: crc32fast::Hasher,
    pub frames: u64,
    pub samples: u64,
    /// Frames the mic ring refused (lost for every agent).
    pub dropped: u64,
    pub hist: Histogram<u64>,
    /// Predicts when each sample arrived (1 Hz loop: follows the device closely).
    clock: FrameClock,
    /// Estimates the device's drift (0.1 Hz loop: smooth over hand-over jitter).
    pub drift_clock: FrameClock,
    /// Per committed frame: (seconds since start, capture latency in µs).
    pub timeline: Vec<(f32, f32)>,
    /// Glitches and late wake-ups seen here (see [`super::glitch`]).
    pub log: FactLog,
    /// The next frame's sample position (for the end of stream).
    pub next_pos: u64,
    last_late_t: u64,
    stall: Option<Stall>,
    /// Capture wake-ups by the ring frames each brought (index: frames, the last one that many
    /// or more), the current one not yet counted: the device's real period (see
    /// `buffer::DeviceWakeups`). The chunks of one wake-up carry its end (`capture_pos`).
    wake_counts: [u64; WAKE_COUNTS],
    /// The current wake-up: its end position and the frames it brought so far.
    wake: (u64, usize),
}

impl<'a> CaptureProbe<'a> {
    /// Everything allocated here, before the real-time thread starts.
    pub fn new(sync: &'a SyncHandle, table: &'a Table, p: &RtParams) -> anyhow::Result<Self> {
        let clock = |bw| {
            FrameClock::new(f64::from(p.rate), bw)
                .map_err(|e| anyhow::anyhow!("frame clock: {e:?}"))
        };
        Ok(CaptureProbe {
            sync,
            table,
            p: *p,
            talker: p.talker.then(|| Talker::new(p.rate)),
            chunk: ChunkInfo {
                sample_pos: 0,
                timestamp_ns: 0,
                flags: 0,
                capture_pos: 0,
                channels: 0,
            },
            chunk_frames: 0,
            pending_clock: None,
            crc: crc32fast::Hasher::new(),
            frames: 0,
            samples: 0,
            dropped: 0,
            hist: new_hist(),
            clock: clock(1.0)?,
            drift_clock: clock(0.1)?,
            timeline: Vec::with_capacity(p.timeline_cap),
            log: FactLog::with_capacity(MAX_FACTS),
            next_pos: 0,
            last_late_t: 0,
            stall: p.stall,
            wake_counts: [0; WAKE_COUNTS],
            wake: (0, 0),
        })
    }

    /// When frame `pos`'s first sample arrived: the frame clock's estimate once it tracks the
    /// device (so a late hand-over shows up as capture latency), else the hand-over time
    /// minus the samples after it.
    fn first_ns(&self, pos: u64) -> u64 {
        let q = u64::from(self.p.quantum);
        let end = self.chunk.sample_pos + self.chunk_frames as u64 * q;
        let after = end.saturating_sub(pos) as f64 * 1e9 / f64::from(self.p.rate);
        let handed = self.chunk.timestamp_ns.saturating_sub(after as u64);
        match self.clock.predict_ns(pos) {
            Some(t) if self.clock.is_tracking() => t.min(handed),
            _ => handed,
        }
    }

    /// When the run started (CLOCK_MONOTONIC).
    pub fn start_ns(&self) -> u64 {
        self.p.start_ns
    }

    /// Capture wake-ups by the ring frames each brought (index: frames; index 0 unused).
    pub fn wake_counts(&self) -> [u64; WAKE_COUNTS] {
        let mut c = self.wake_counts;
        c[0] = 0;
        if self.wake.1 > 0 {
            c[self.wake.1.min(WAKE_COUNTS - 1)] += 1;
        }
        c
    }

    /// The end of the wake-up a chunk ending at `chunk_end` belongs to: the device's
    /// `capture_pos` ([`ChunkInfo::capture_pos`]), when it can be one (not before the chunk's
    /// end, nor more than a device buffer after it: a device that misreports it never hides a
    /// late cycle); else `None`, and the chunk is taken as a wake-up of its own.
    fn wake_end(&self, capture_pos: u64, chunk_end: u64) -> Option<u64> {
        let q = u64::from(self.p.quantum);
        let buffer = self.p.buffer_ns.div_ceil(self.p.period_ns.max(1)) * q;
        Some(capture_pos).filter(|e| (chunk_end..=chunk_end + buffer).contains(e))
    }

    fn fact(&mut self, kind: FactKind, t_ns: u64, value: u64) {
        self.log.push(Fact {
            kind,
            cycle: self.frames,
            t_ns,
            value,
        });
    }
}

impl<T: Sample> MicProbe<T> for CaptureProbe<'_> {
    fn chunk(&mut self, info: &ChunkInfo, frames: usize) {
        if let Some((end, t)) = self.pending_clock.take() {
            self.clock.update(end, t);
            self.drift_clock.update(end, t);
        }
        let end = info.sample_pos + (frames as u64) * u64::from(self.p.quantum);
        let wake_end = self.wake_end(info.capture_pos, end);
        // A wake-up whose device buffer wrapped comes as two chunks with one time: it is
        // judged, and fed to the clocks, once, at its end. Judged at the first piece's end, it
        // looked late by the second piece's length (a third of all wake-ups in a 512-frame
        // PipeWire graph with a 768-frame buffer), and fed to the clocks, it pulled them off.
        let new_wake = info.capture_pos != self.wake.0 || wake_end.is_none();
        let wake_end = wake_end.unwrap_or(end);
        if info.capture_pos != self.wake.0 {
            self.wake_counts[self.wake.1.min(WAKE_COUNTS - 1)] += 1;
            self.wake = (info.capture_pos, 0);
        }
        self.wake.1 += frames;
        // How late this wake-up is against the device clock (once it tracks the device).
        if new_wake
            && self.clock.is_tracking()
            && let Some(due) = self.clock.predict_ns(wake_end)
        {
            let late = info.timestamp_ns.saturating_sub(due);
            if late > self.p.period_ns / 2 && info.timestamp_ns != self.last_late_t {
                self.last_late_t = info.timestamp_ns;
                self.fact(FactKind::LateWake, info.timestamp_ns, late);
            }
        }
        if info.flags & flags::XRUN != 0 {
            self.fact(FactKind::Xrun, info.timestamp_ns, 0);
            // The positions skip the frames the device dropped: restart both clocks' phase
            // from this chunk (keeping their rate), or every later chunk would look late.
            self.clock.resync();
            self.drift_clock.resync();
        }
        self.chunk = *info;
        self.chunk_frames = frames;
        if new_wake {
            self.pending_clock = Some((wake_end, info.timestamp_ns));
        }
        if let Some(st) = self.stall
            && (self.frames..self.frames + frames as u64).contains(&st.cycle)
        {
            self.stall = (st.every > 0).then(|| Stall {
                cycle: st.cycle + st.every,
                ..st
            });
            // Test hook only: a stall of the audio thread on demand (sleeping allocates nothing).
            std::thread::sleep(st.len);
        }
    }

    fn fill(&mut self, _i: usize, samples: &mut [T]) {
        if let Some(talker) = self.talker.as_mut() {
            for frame in samples.chunks_exact_mut(self.p.channels.max(1)) {
                let v = talker.next_sample();
                for s in frame {
                    *s = T::from_f32((s.to_f32() + v).clamp(-1.0, 1.0));
                }
            }
        }
    }

    fn frame(&mut self, seq: u64, pos: u64, t_ns: u64, payload: &[u8]) {
        let first = self.first_ns(pos);
        self.crc.update(payload);
        self.table.put(pos, u64::from(self.p.quantum), first);
        // Armed before the commit: an agent's `done` for this cycle finds it armed. Only the
        // wake-up's last frame: the frames of a wake-up are committed at once (one chunk, or
        // two where the device's buffer wraps), so arming each would count every earlier one
        // as missed before any agent could see it (a device that hands over several periods at
        // once: PipeWire's graph at 512 frames under a 128-frame hub). A wake-up end that cannot
        // be one (before this chunk's end, or more than a device buffer after it) is taken as
        // the chunk's end: a device that misreports it never hides a late cycle.
        let q = u64::from(self.p.quantum);
        let chunk_end = self.chunk.sample_pos + self.chunk_frames as u64 * q;
        let wake_end = self
            .wake_end(self.chunk.capture_pos, chunk_end)
            .unwrap_or(chunk_end);
        if pos + q >= wake_end {
            self.sync
                .arm(seq, self.p.agents_mask, t_ns + self.p.period_ns);
        }
        self.frames += 1;
        self.samples += (payload.len() / std::mem::size_of::<T>()) as u64;
        self.next_pos = pos + u64::from(self.p.quantum);
        record(&mut self.hist, t_ns.saturating_sub(first));
        if self.timeline.len() < self.timeline.capacity() {
            self.timeline.push((
                t_ns.saturating_sub(self.p.start_ns) as f32 / 1e9,
                t_ns.saturating_sub(first) as f32 / 1e3,
            ));
        }
        // Relaxed: a progress counter, no data is published through it.
        self.table.committed.store(self.frames, Ordering::Relaxed);
    }

    fn dropped(&mut self, frames: usize, info: &ChunkInfo) {
        // An agent a whole ring behind even after the hub evicted the laggards: never wait
        // on the audio thread; the frames are lost and counted.
        self.dropped += frames as u64;
        self.fact(FactKind::Dropped, info.timestamp_ns, frames as u64);
    }
}

/// The playback side's measurements: every frame the mix took from an agent's output queue
/// (the echo agent's: the only built-in agent that speaks), and every correction.
pub struct PlaybackProbe<'a> {
    table: &'a Table,
    p: RtParams,
    pub hist_return: Histogram<u64>,
    pub hist_playback: Histogram<u64>,
    pub hist_m2e: Histogram<u64>,
    /// Per returned frame: (seconds since start, mouth-to-ear in µs).
    pub timeline: Vec<(f32, f32)>,
    /// Frames mixed.
    pub frames: u64,
    /// Cycles of silence while a lane played (its frame was missing).
    pub gaps: u64,
    /// Frames dropped by a queue above its band.
    pub skipped: u64,
    /// Frames played again by a queue below its band.
    pub repeated: u64,
    /// Quiet frames trimmed to bring a queue back to its target.
    pub trimmed: u64,
    /// Lanes whose ring failed.
    pub failed: u64,
    /// The output queue's target depth at the end.
    pub target: u32,
    /// How often a playing lane held each depth when its frame was pulled (before taking it;
    /// index = frames queued, the last bin that many or more): how much margin a hold-up of
    /// the audio thread finds, which under a batched device depends on the phase the streams
    /// started at (docs/run.md).
    pub depths: [u64; DEPTH_BINS],
    /// Glitches seen here, and the target's growths.
    pub log: FactLog,
    /// Lane cycles left in which a queue above its target grows to keep a playback xrun's
    /// backlog ([`XRUN_WATCH_CYCLES`]).
    xrun_watch: u32,
}

impl<'a> PlaybackProbe<'a> {
    /// Everything allocated here, before the real-time thread starts.
    pub fn new(table: &'a Table, p: &RtParams, target: u32) -> Self {
        PlaybackProbe {
            table,
            p: *p,
            hist_return: new_hist(),
            hist_playback: new_hist(),
            hist_m2e: new_hist(),
            timeline: Vec::with_capacity(p.timeline_cap),
            frames: 0,
            gaps: 0,
            skipped: 0,
            repeated: 0,
            trimmed: 0,
            failed: 0,
            target,
            depths: [0; DEPTH_BINS],
            log: FactLog::with_capacity(MAX_FACTS),
            xrun_watch: 0,
        }
    }

    /// Raises `q`'s target to `to` (at most `max_target`) and records why; false when it
    /// would not grow or the ring has no room for it.
    fn grow<T: Mix>(&mut self, q: &mut OutputQueue<T>, to: u64, why: Growth, t: u64) -> bool {
        let to = to.min(u64::from(self.p.max_target)) as u32;
        if to <= q.params().target || q.set_target(to).is_err() {
            return false;
        }
        self.target = to;
        self.fact(FactKind::Grown(why), t, u64::from(to));
        true
    }

    fn fact(&mut self, kind: FactKind, t_ns: u64, value: u64) {
        self.log.push(Fact {
            kind,
            cycle: self.table.cycle(),
            t_ns,
            value,
        });
    }

    /// The frame taken this cycle: its return hand-off, playback and mouth-to-ear.
    fn taken(&mut self, sample_pos: u64, committed_ns: u64, info: &ChunkInfo, offset: usize) {
        self.frames += 1;
        record(
            &mut self.hist_return,
            monotonic_ns().saturating_sub(committed_ns),
        );
        // The frame's first sample is queued now, behind the device buffer.
        let ahead = self.p.buffer_ns + (offset as f64 * 1e9 / f64::from(self.p.rate)) as u64;
        let heard = info.timestamp_ns + ahead;
        record(&mut self.hist_playback, ahead);
        if let Some(first) = self.table.get(sample_pos, u64::from(self.p.quantum)) {
            let m2e = heard.saturating_sub(first);
            record(&mut self.hist_m2e, m2e);
            if self.timeline.len() < self.timeline.capacity() {
                self.timeline.push((
                    heard.saturating_sub(self.p.start_ns) as f32 / 1e9,
                    m2e as f32 / 1e3,
                ));
            }
        }
    }
}

impl<T: Mix> MixProbe<T> for PlaybackProbe<'_> {
    fn chunk(&mut self, info: &ChunkInfo) {
        if info.flags & flags::XRUN != 0 {
            self.fact(FactKind::PlaybackXrun, info.timestamp_ns, 0);
            // This chunk refills the device buffer from the queue; the echo brings the
            // capture's backlog back in the next cycles: watch for it.
            self.xrun_watch = XRUN_WATCH_CYCLES;
        }
    }

    fn lane(
        &mut self,
        _i: usize,
        q: &mut OutputQueue<T>,
        before: &LaneCounters,
        info: &ChunkInfo,
        offset: usize,
    ) {
        if let Some(meta) = q.taken() {
            self.taken(meta.sample_pos, meta.timestamp_ns, info, offset);
        }
        let c = q.counters();
        let t = info.timestamp_ns;
        if c.dropped > before.dropped {
            self.skipped += c.dropped - before.dropped;
            self.fact(FactKind::Skipped, t, c.dropped - before.dropped);
        }
        if c.repeated > before.repeated {
            self.repeated += c.repeated - before.repeated;
            self.fact(FactKind::Repeated, t, c.repeated - before.repeated);
        }
        self.trimmed += c.trimmed.saturating_sub(before.trimmed);
        if before.state == LaneState::Playing {
            self.depths[(c.depth as usize).min(DEPTH_BINS - 1)] += 1;
        }
        if c.state == LaneState::Failed && before.state != LaneState::Failed {
            self.failed += 1;
        }
        if c.gaps > before.gaps {
            self.gaps += c.gaps - before.gaps;
            self.fact(FactKind::Silence, t, u64::from(self.p.quantum));
            // `--periods auto`: keep one more frame queued from now on.
            let grown = u64::from(q.params().target) + 1;
            self.grow(q, grown, Growth::Silence, t);
        }
        if self.xrun_watch > 0 {
            self.xrun_watch -= 1;
            // After a playback xrun the queue stands above its target by the frames the
            // capture gave during the stall that the device did not take: the capture and the
            // playback run at one rate from now on, so this excess never drains, and the
            // queue would drop it after its drift window. `--periods auto` keeps it instead:
            // the target rises to the depth in hand (seen before this cycle's frame was
            // taken), and the backlog is played, one period later each.
            if c.state == LaneState::Playing && c.depth > u64::from(q.params().target) {
                self.grow(q, c.depth, Growth::Xrun, t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::rt::{Cmd, MicSink, MixSource, RtShared};
    use voxring_core::{Policy, RingConfig, SampleFormat};
    use voxring_linux::audio::mixer::QueueParams;
    use voxring_linux::audio::{CaptureSink as _, PlaybackSource as _};
    use voxring_linux::ring::Segment;
    use voxring_linux::segment::CreateOptions;

    // Aborts the test process if anything allocates inside `assert_no_alloc`; everywhere else
    // it is the system allocator.
    #[global_allocator]
    static ALLOC: assert_no_alloc::AllocDisabler = assert_no_alloc::AllocDisabler;

    fn cfg(frames: u32) -> RingConfig {
        RingConfig {
            frames,
            samples_per_frame: 64,
            channels: 1,
            format: SampleFormat::S16,
            sample_rate: 48_000,
            max_consumers: 1,
            policy: Policy::Lossless,
        }
    }

    #[test]
    fn the_stall_hook_stalls_once_or_every_n_cycles() {
        let ms = Duration::from_millis;
        assert_eq!(
            parse_stall("600:40"),
            Some(Stall {
                cycle: 600,
                len: ms(40),
                every: 0
            })
        );
        assert_eq!(
            parse_stall("2000:8:1500"),
            Some(Stall {
                cycle: 2000,
                len: ms(8),
                every: 1500
            })
        );
        for bad in ["", "600", "x:40", "600:y", "600:40:z"] {
            assert_eq!(parse_stall(bad), None, "{bad:?}");
        }
    }

    /// One agent, 64-frame mono frames at 48 kHz, a 2-period buffer.
    fn params(talker: bool, max_target: u32) -> RtParams {
        RtParams {
            channels: 1,
            quantum: 64,
            rate: 48_000,
            period_ns: 1_333_333,
            buffer_ns: 2_666_666,
            agents_mask: 1,
            timeline_cap: 64,
            start_ns: monotonic_ns(),
            talker,
            max_target,
            stall: None,
        }
    }

    /// A device that hands over two periods per wake-up, on time, its buffer wrapping inside
    /// every third one (two chunks of one frame, one time, each carrying the wake-up's end):
    /// no late wake-up is seen, and one really late is.
    #[test]
    fn a_wake_up_split_by_the_buffer_wrap_is_judged_at_its_end() {
        let tag = format!("split-{}", std::process::id());
        let sync = SyncHandle::create(&tag, 1).unwrap();
        let table = Table::new(64);
        let p = params(false, 2);
        let mut probe = CaptureProbe::new(&sync, &table, &p).unwrap();
        let base = 1_000_000_000u64;
        let wake = |probe: &mut CaptureProbe<'_>, k: u64, late_ns: u64| {
            let end = (k + 1) * 128;
            let info = |sample_pos| ChunkInfo {
                sample_pos,
                timestamp_ns: base + (k + 1) * 2 * p.period_ns + late_ns,
                flags: 0,
                capture_pos: end,
                channels: 1,
            };
            let pieces: &[u64] = if k % 3 == 2 { &[1, 1] } else { &[2] };
            let mut pos = k * 128;
            for &frames in pieces {
                MicProbe::<i16>::chunk(probe, &info(pos), frames as usize);
                pos += frames * 64;
            }
        };
        // Four seconds on time: the clock tracks the device, and no wake-up is late.
        for k in 0..1502 {
            wake(&mut probe, k, 0);
        }
        assert!(probe.clock.is_tracking());
        let late = |probe: &CaptureProbe<'_>| {
            probe
                .log
                .facts
                .iter()
                .filter(|f| f.kind == FactKind::LateWake)
                .count()
        };
        assert_eq!(
            late(&probe),
            0,
            "{:?}",
            &probe.log.facts[..3.min(probe.log.facts.len())]
        );
        // A split wake-up three periods late: one late wake-up.
        wake(&mut probe, 1502, 3 * p.period_ns);
        assert_eq!(late(&probe), 1);
    }

    /// A device that hands over two periods at once (PipeWire's graph at twice the hub's
    /// quantum): an agent that finishes both frames before the first one's deadline is not
    /// late, and one that finishes after it is, once.
    #[test]
    fn a_wake_up_of_two_frames_is_not_a_missed_cycle() {
        let tag = format!("burst-{}", std::process::id());
        let mic =
            Segment::create(&format!("{tag}.mic"), &cfg(16), &CreateOptions::default()).unwrap();
        let mut agent = mic.consumer().unwrap();
        let sync = SyncHandle::create(&tag, 1).unwrap();
        let table = Table::new(64);
        let p = params(false, 2);
        let shared = RtShared::new();
        let probe = CaptureProbe::new(&sync, &table, &p).unwrap();
        let mut sink = MicSink::with_probe(mic.producer().unwrap(), &shared, 64, 1, probe);
        let input = vec![7i16; 128];
        for (k, extra_ns) in [(0u64, 0u64), (2, p.period_ns + 1)] {
            // Two frames in two pieces of one wake-up (the device's buffer wrapped): each piece
            // carries the wake-up's end.
            for piece in 0..2 {
                let info = ChunkInfo {
                    sample_pos: (k + piece) * 64,
                    timestamp_ns: monotonic_ns(),
                    flags: 0,
                    capture_pos: (k + 2) * 64,
                    channels: 1,
                };
                assert_eq!(sink.push(&input[..64], &info), 64);
            }
            let (c, _) = agent.parts();
            let g = c.read_grant(2).unwrap();
            let late: Vec<bool> = g
                .frames()
                .map(|f| {
                    let m = f.meta();
                    let deadline = m.timestamp_ns + p.period_ns;
                    let now = m.timestamp_ns + extra_ns;
                    sync.fence_done(0, m.seq, now, deadline)
                })
                .collect();
            let _ = g.release_all().unwrap();
            let want = extra_ns > 0;
            assert_eq!(late, [want, want], "chunk at frame {k}");
        }
        // The fence counted the late mark of the armed (last) frame, and no missed cycle.
        assert_eq!(sync.late_counts()[0], 1);
        // Two wake-ups of two frames each: the device's period is two hub cycles.
        let counts = sink.probe().wake_counts();
        assert_eq!(
            (counts[1], counts[2], counts.iter().sum::<u64>()),
            (0, 2, 2)
        );
    }

    /// The hub's real-time sides with run's probes (device → mic ring, an echo's output
    /// queue → device) neither allocate nor fail to move frames, with a stand-in echo in
    /// between; a missing frame is a repeat then silence (recorded, the target grown).
    #[test]
    fn the_measured_audio_path_does_not_allocate() {
        let tag = format!("rtalloc-{}", std::process::id());
        let opts = CreateOptions::default();
        let mic = Segment::create(&format!("{tag}.mic"), &cfg(16), &opts).unwrap();
        let out = Segment::create(&format!("{tag}.out.echo"), &cfg(32), &opts).unwrap();
        let mut agent = mic.consumer().unwrap();
        let mut echo = out.producer().unwrap();
        let sync = SyncHandle::create(&tag, 1).unwrap();
        let table = Table::new(64);
        let p = params(true, 6);
        let shared = RtShared::new();
        let probe = CaptureProbe::new(&sync, &table, &p).unwrap();
        let mut sink = MicSink::with_probe(mic.producer().unwrap(), &shared, 64, 1, probe);
        let (mut cmd_tx, cmd_rx) = rtrb::RingBuffer::new(4);
        let (back_tx, _back_rx) = rtrb::RingBuffer::new(4);
        let pprobe = PlaybackProbe::new(&table, &p, 2);
        let mut source = MixSource::<i16, _>::with_probe((cmd_rx, back_tx), &shared, 64, 1, pprobe);
        let q = OutputQueue::new(
            out.consumer().unwrap(),
            QueueParams { target: 2, band: 1 },
            64,
        );
        assert!(cmd_tx.push(Cmd::Add(0, Box::new(q))).is_ok());
        let input: Vec<i16> = (0..64).map(|i| i * 100).collect();
        let mut buf = vec![0i16; 64];
        let base = monotonic_ns();
        let info = |k: u64, flags: u32, late: u64| ChunkInfo {
            sample_pos: k * 64,
            timestamp_ns: base + (k + 1 + late) * p.period_ns,
            flags,
            capture_pos: k * 64,
            channels: 1,
        };
        for k in 0..32u64 {
            assert_no_alloc::assert_no_alloc(|| {
                assert_eq!(sink.push(&input, &info(k, 0, 0)), 64);
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
                assert_eq!(source.pull(&mut buf, &info(k, 0, 0)), 64);
            });
        }
        // Nothing returned for three periods: the queue (depth 1, then 0) plays its last
        // frame once, then silence, and grows its target — still without allocating.
        for k in 32..35 {
            assert_no_alloc::assert_no_alloc(|| {
                assert_eq!(source.pull(&mut buf, &info(k, 0, 0)), 64);
            });
        }
        let pp = source.probe();
        let kinds: Vec<FactKind> = pp.log.facts.iter().map(|f| f.kind).collect();
        assert!(kinds.contains(&FactKind::Silence), "{kinds:?}");
        assert!(
            kinds.contains(&FactKind::Grown(Growth::Silence)),
            "{kinds:?}"
        );
        assert_eq!(pp.target, 3);
        assert!(pp.gaps >= 1 && pp.repeated >= 1, "{kinds:?}");
        // Primed at depth 2 on the second cycle, one behind from then on: frames 0..=30
        // while the echo wrote, then frame 31 (depth 1, within the band), then a repeat and
        // silence.
        assert_eq!(pp.frames, 32);
        assert_eq!(pp.hist_m2e.len(), 32);
        assert_eq!((pp.repeated, pp.gaps), (1, 1));
        // Depths at the pulls while playing (the priming pull not counted): 2 thirty times,
        // then 1 (frame 31), then 0 twice (the repeat, the silence).
        assert_eq!(pp.depths[..3], [2, 1, 30]);
        assert!(pp.depths[3..].iter().all(|&c| c == 0), "{:?}", pp.depths);
        // A playback chunk flagged XRUN (the device played silence it was not given):
        // recorded, no allocation.
        assert_no_alloc::assert_no_alloc(|| {
            assert_eq!(source.pull(&mut buf, &info(35, flags::XRUN, 0)), 64);
        });
        let kinds: Vec<FactKind> = source.probe().log.facts.iter().map(|f| f.kind).collect();
        assert!(kinds.contains(&FactKind::PlaybackXrun), "{kinds:?}");
        // The capture's backlog from the stall comes back after the xrun: five frames at once,
        // above the target of 3. The target rises to the depth in hand (not above the
        // maximum), recorded with the xrun as its reason, so nothing is dropped: no allocation.
        for k in 36..41u64 {
            let (prod, _) = echo.parts();
            let mut w = prod.write_grant(1).unwrap();
            {
                let mut o = w.frame_mut(0).unwrap();
                o.payload_mut()[..128].fill(0);
                o.set_len(128).unwrap();
                o.set_sample_pos(k * 64);
                o.set_timestamp_ns(monotonic_ns());
            }
            let _ = w.commit_all();
        }
        assert_no_alloc::assert_no_alloc(|| {
            assert_eq!(source.pull(&mut buf, &info(36, 0, 0)), 64);
        });
        let pp = source.probe();
        assert_eq!(pp.target, 5);
        let grown: Vec<(FactKind, u64)> = pp
            .log
            .facts
            .iter()
            .filter(|f| matches!(f.kind, FactKind::Grown(_)))
            .map(|f| (f.kind, f.value))
            .collect();
        assert_eq!(
            grown,
            [
                (FactKind::Grown(Growth::Silence), 3),
                (FactKind::Grown(Growth::Xrun), 5)
            ]
        );
        // A capture chunk handed over 50 periods late, flagged XRUN: both recorded, no
        // allocation.
        assert_no_alloc::assert_no_alloc(|| {
            assert_eq!(sink.push(&input, &info(32, flags::XRUN, 50)), 64);
        });
        let cp = sink.probe();
        let kinds: Vec<FactKind> = cp.log.facts.iter().map(|f| f.kind).collect();
        assert!(kinds.contains(&FactKind::Xrun), "{kinds:?}");
        assert!(kinds.contains(&FactKind::LateWake), "{kinds:?}");
        assert_eq!(cp.frames, 33);
        assert_eq!(cp.dropped, 0);
    }
}
