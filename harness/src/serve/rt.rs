//! The hub's real-time thread: device capture → the mic ring ([`MicSink`], one copy: the
//! device's samples go straight into the ring slot), and every agent's output queue → one
//! mixed period → the device ([`MixSource`], one copy: each lane's frame is summed from its
//! ring slot straight into the device's buffer whenever the device asks for a whole period;
//! only a period the device's buffer splits goes through a staging period). Both sides take
//! a probe ([`MicProbe`], [`MixProbe`]; `()` for `voxring serve`) through which `voxring run`
//! measures the same engine.
//!
//! Nothing here allocates, locks, prints or blocks (proved by the `assert_no_alloc` test
//! below). The only syscall is the mic ring's wake of parked readers, at most one per
//! committed grant whatever the number of agents: output lanes are never woken (see
//! `voxring_linux::audio::mixer`), and evicting a laggard wakes nobody. Lanes come and go
//! through two wait-free `rtrb` queues: the control thread makes a lane (it allocates,
//! attaches, locks) and sends it here; a lane that leaves is sent back to be dropped there.

use std::sync::atomic::{AtomicU64, Ordering};

use voxring_core::{FrameFlags, GrantError, Ring};
use voxring_linux::audio::mixer::{LaneCounters, LaneState, Mix, OutputQueue};
use voxring_linux::audio::{CaptureSink, ChunkInfo, PlaybackSource, StopFlag, flags, monotonic_ns};
use voxring_linux::hub::directory::MAX_SLOTS;
use voxring_linux::ring::ShmProducer;

/// Frames whose CRC-32 the hub keeps, by sequence number (about three minutes at 48 kHz /
/// 128): agents' CRC windows older than that are reported as not checkable.
pub const FRAME_LOG: usize = 1 << 16;

/// Counters of one output lane, written by the real-time thread. One cache line each: a lane's
/// stores never share a line with another lane's.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct LaneAtomics {
    /// 0 free, 1 priming, 2 playing (directory codes).
    pub state: AtomicU64,
    /// See `voxring_linux::audio::mixer::LaneCounters`.
    pub depth: AtomicU64,
    /// Frames mixed.
    pub mixed: AtomicU64,
    /// Frames dropped above the band.
    pub dropped: AtomicU64,
    /// Frames repeated below it.
    pub repeated: AtomicU64,
    /// Cycles of silence while playing.
    pub gaps: AtomicU64,
    /// Quiet frames trimmed back to the target.
    pub trimmed: AtomicU64,
    /// Primings.
    pub primes: AtomicU64,
}

impl LaneAtomics {
    /// Every counter, in the order of [`publish`]'s words.
    fn fields(&self) -> [&AtomicU64; 8] {
        [
            &self.state,
            &self.depth,
            &self.mixed,
            &self.dropped,
            &self.repeated,
            &self.gaps,
            &self.trimmed,
            &self.primes,
        ]
    }
}

/// What the real-time thread shares with the control thread. Every counter is written by the
/// real-time thread only; Relaxed everywhere (monitoring values, nothing is published
/// through them) except the frame log (see [`FrameLog`]).
#[derive(Debug)]
pub struct RtShared {
    /// Set by the control thread (Ctrl-C, SIGTERM, `--seconds`) to end the device's run.
    pub stop: StopFlag,
    /// Mic frames committed.
    pub cycles: AtomicU64,
    /// Playback periods mixed.
    pub play_cycles: AtomicU64,
    /// Wake syscalls made (a parked mic reader was woken).
    pub wakes: AtomicU64,
    /// Readers evicted for lagging a whole ring behind.
    pub evicted_lag: AtomicU64,
    /// Per mic slot: evictions for lag.
    pub slot_evicted: Box<[AtomicU64]>,
    /// Mic frames dropped because the ring refused them even after evicting laggards.
    pub mic_dropped: AtomicU64,
    /// Per output lane.
    pub lanes: Box<[LaneAtomics]>,
    /// CRC-32 of every committed mic frame, by sequence number.
    pub log: FrameLog,
}

impl RtShared {
    /// Everything allocated now, before the real-time thread starts.
    pub fn new() -> Self {
        RtShared {
            stop: StopFlag::new(),
            cycles: AtomicU64::new(0),
            play_cycles: AtomicU64::new(0),
            wakes: AtomicU64::new(0),
            evicted_lag: AtomicU64::new(0),
            slot_evicted: (0..MAX_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            mic_dropped: AtomicU64::new(0),
            lanes: (0..MAX_SLOTS).map(|_| LaneAtomics::default()).collect(),
            log: FrameLog::new(),
        }
    }
}

/// The CRC-32 of the last [`FRAME_LOG`] mic frames: one word per frame, the sequence number's
/// low 32 bits above the CRC, so a reader knows which frame an entry is for.
#[derive(Debug)]
pub struct FrameLog {
    entries: Box<[AtomicU64]>,
}

impl FrameLog {
    fn new() -> Self {
        FrameLog {
            entries: (0..FRAME_LOG).map(|_| AtomicU64::new(u64::MAX)).collect(),
        }
    }

    fn record(&self, seq: u64, crc: u32) {
        // Relaxed: one word holds both the tag and the value, so a reader never pairs a tag
        // with another frame's CRC; nothing else is published through it.
        self.entries[seq as usize % FRAME_LOG]
            .store((seq << 32) | u64::from(crc), Ordering::Relaxed);
    }

    /// The CRC-32 of frame `seq`, if it is still in the log.
    pub fn get(&self, seq: u64) -> Option<u32> {
        // Relaxed: see `record`.
        let e = self.entries[seq as usize % FRAME_LOG].load(Ordering::Relaxed);
        (e >> 32 == seq & 0xffff_ffff && e != u64::MAX).then_some(e as u32)
    }
}

/// What a session measures on the hub's real-time capture side (`voxring run`'s latency
/// budget); `()` measures nothing (`voxring serve`). Called on the real-time thread: no
/// allocation, lock, print or blocking call.
pub trait MicProbe<T> {
    /// A capture chunk holding `frames` whole ring frames arrived (before any is committed).
    fn chunk(&mut self, _info: &ChunkInfo, _frames: usize) {}
    /// Ring frame `i` of the chunk, already in its ring slot, before its CRC-32 and commit
    /// (the samples may be changed: the synthetic device's test talker).
    fn fill(&mut self, _i: usize, _samples: &mut [T]) {}
    /// Frame `seq` (first sample at `pos`, stamped `t_ns`, holding `payload`) is about to be
    /// committed.
    fn frame(&mut self, _seq: u64, _pos: u64, _t_ns: u64, _payload: &[u8]) {}
    /// `frames` ring frames of the chunk were refused by the ring and lost.
    fn dropped(&mut self, _frames: usize, _info: &ChunkInfo) {}
}

impl<T> MicProbe<T> for () {}

/// What a session measures on the hub's real-time playback side; `()` nothing.
pub trait MixProbe<T> {
    /// The device asked for the playback chunk `info` (its flags say whether an xrun came
    /// before it), before anything is mixed into it.
    fn chunk(&mut self, _info: &ChunkInfo) {}
    /// Lane `i` was just mixed into the period starting `offset` frames into the device's
    /// chunk `info`; `before` is its counters before this cycle (the queue may be changed,
    /// e.g. its target grown).
    fn lane(
        &mut self,
        _i: usize,
        _q: &mut OutputQueue<T>,
        _before: &LaneCounters,
        _info: &ChunkInfo,
        _offset: usize,
    ) {
    }
}

impl<T> MixProbe<T> for () {}

/// Device capture → the mic ring, one copy, whole ring frames only (a device buffer that is a
/// multiple of the quantum is checked when the hub starts).
pub struct MicSink<'a, P = ()> {
    tx: ShmProducer,
    shared: &'a RtShared,
    /// Interleaved samples per ring frame.
    slot: usize,
    spf: u64,
    pending: FrameFlags,
    probe: P,
    /// Time spent in the ring (grant, copy, commit, wake), ns.
    ipc_ns: u64,
}

impl<'a> MicSink<'a> {
    /// A sink committing into `tx`'s ring (frames of `spf` frames × `channels`).
    pub fn new(tx: ShmProducer, shared: &'a RtShared, spf: u32, channels: u16) -> Self {
        Self::with_probe(tx, shared, spf, channels, ())
    }
}

impl<'a, P> MicSink<'a, P> {
    /// The same, measured by `probe`.
    pub fn with_probe(
        tx: ShmProducer,
        shared: &'a RtShared,
        spf: u32,
        channels: u16,
        probe: P,
    ) -> Self {
        MicSink {
            tx,
            shared,
            slot: spf as usize * usize::from(channels),
            spf: u64::from(spf),
            pending: FrameFlags::NONE,
            probe,
            ipc_ns: 0,
        }
    }

    /// The producer, back for the end of stream.
    pub fn into_producer(self) -> ShmProducer {
        self.tx
    }

    /// The producer and the probe.
    pub fn into_parts(self) -> (ShmProducer, P) {
        (self.tx, self.probe)
    }

    /// The probe.
    #[cfg(test)]
    pub fn probe(&self) -> &P {
        &self.probe
    }

    /// Time spent in the ring so far (grant, copy, commit, wake; not the CRC-32), ns.
    pub fn ipc_ns(&self) -> u64 {
        self.ipc_ns
    }
}

// One bit of `MixSource::live` per lane slot.
const _: () = assert!(MAX_SLOTS <= u128::BITS as usize);

/// The indices of the bits set in `mask`, lowest first (no allocation).
fn set_bits(mut mask: u128) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            i
        })
    })
}

/// Adds `n` to a counter only the real-time thread writes: a load and a store, no locked
/// read-modify-write (nobody else writes it, so no increment can be lost).
fn bump(counter: &AtomicU64, n: u64) {
    // Relaxed: counters (see `RtShared`); the only writer reads its own last store.
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Evicts every reader of `ring` a whole ring behind (the ones holding the producer back).
/// Atomics only; the eviction's wake is for a parked producer, which is the caller: dropped.
fn evict_laggards(ring: &Ring, shared: &RtShared) {
    let cfg = ring.config();
    let wpos = ring.write_pos();
    for i in 0..cfg.max_consumers {
        let (Some(rpos), Some(owner)) = (ring.consumer_read_pos(i), ring.consumer_owner(i)) else {
            continue;
        };
        if wpos.wrapping_sub(rpos) >= u64::from(cfg.frames) && ring.evict(i, owner).is_ok() {
            // Relaxed: counters (see `RtShared`).
            shared.evicted_lag.fetch_add(1, Ordering::Relaxed);
            shared.slot_evicted[usize::from(i) % MAX_SLOTS].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<T: Mix, P: MicProbe<T>> CaptureSink<T> for MicSink<'_, P> {
    fn push(&mut self, samples: &[T], info: &ChunkInfo) -> usize {
        let whole = samples.len() / self.slot;
        if whole == 0 {
            return 0;
        }
        if info.flags & flags::XRUN != 0 {
            self.pending |= FrameFlags::XRUN;
        }
        self.probe.chunk(info, whole);
        let shared = self.shared;
        let mut evicted = false;
        loop {
            let t0 = monotonic_ns();
            let (producer, waiter) = self.tx.parts();
            let refused = match producer.write_grant(whole) {
                Ok(grant) => {
                    let frame = FrameSpec {
                        slot: self.slot,
                        spf: self.spf,
                        pos: info.sample_pos,
                    };
                    let mut c = Commit {
                        pending: &mut self.pending,
                        shared,
                        probe: &mut self.probe,
                        probe_ns: 0,
                    };
                    let n = fill_and_commit(grant, waiter, samples, frame, &mut c);
                    let probe_ns = c.probe_ns;
                    self.ipc_ns += monotonic_ns().saturating_sub(t0).saturating_sub(probe_ns);
                    return n * self.spf as usize;
                }
                Err(e) => e,
            };
            if refused == GrantError::Full && !evicted {
                evicted = true;
                evict_laggards(self.tx.segment().ring(), shared);
                continue;
            }
            // Still full (a reader joined behind?) or refused: these frames are lost for
            // everyone; the next frame says so.
            // Relaxed: counter.
            shared
                .mic_dropped
                .fetch_add(whole as u64, Ordering::Relaxed);
            self.pending |= FrameFlags::DISCONTINUITY;
            self.probe.dropped(whole, info);
            return whole * self.spf as usize;
        }
    }
}

/// The geometry of a capture chunk's frames.
#[derive(Clone, Copy)]
struct FrameSpec {
    /// Interleaved samples per ring frame.
    slot: usize,
    /// Frames (sample frames) per ring frame.
    spf: u64,
    /// The chunk's first sample position.
    pos: u64,
}

/// What a commit updates beside the ring: the flags for the next frame, the counters, the
/// probe (and the time spent in it, left out of the ring's time).
struct Commit<'c, P> {
    pending: &'c mut FrameFlags,
    shared: &'c RtShared,
    probe: &'c mut P,
    probe_ns: u64,
}

/// Copies `samples` (whole ring frames) into `grant`'s slots, stamps each frame and logs its
/// CRC-32, commits, and wakes parked readers (one call at most). Returns the frames committed.
fn fill_and_commit<T: Mix, P: MicProbe<T>>(
    mut grant: voxring_core::WriteGrant<'_>,
    waiter: &voxring_linux::futex::FutexWaiter,
    samples: &[T],
    fs: FrameSpec,
    c: &mut Commit<'_, P>,
) -> usize {
    let n = grant.len();
    let now = monotonic_ns();
    for (i, mut frame) in grant.frames_mut().enumerate() {
        let src = &samples[i * fs.slot..(i + 1) * fs.slot];
        let bytes = std::mem::size_of_val(src);
        let _ = frame.set_len(bytes as u32);
        let (seq, pos) = (frame.seq(), fs.pos + i as u64 * fs.spf);
        // The probe and the CRC-32 run in one stretch, timed once (two clock reads a frame)
        // and left out of the ring's time. The ring's format is T's (checked at start): the
        // view cannot fail.
        let p0 = match frame.samples_mut::<T>() {
            Ok(dst) => {
                dst[..fs.slot].copy_from_slice(src);
                let p0 = monotonic_ns();
                c.probe.fill(i, &mut dst[..fs.slot]);
                p0
            }
            Err(_) => monotonic_ns(),
        };
        let payload = &frame.payload_mut()[..bytes];
        let crc = crc32fast::hash(payload);
        c.probe.frame(seq, pos, now, payload);
        c.probe_ns += monotonic_ns().saturating_sub(p0);
        c.shared.log.record(seq, crc);
        frame.set_sample_pos(pos);
        frame.set_timestamp_ns(now);
        frame.set_flags(std::mem::replace(c.pending, FrameFlags::NONE));
    }
    let wake = grant.commit_all();
    if wake.needed() {
        bump(&c.shared.wakes, 1);
    }
    wake.wake(waiter);
    bump(&c.shared.cycles, n as u64);
    n
}

/// Stores a lane's counters for the control thread (`voxring top`, the directory): only the
/// ones that differ from `before` (every one when `None`), so a cycle that only mixed a frame
/// stores one word, not eight.
fn publish(a: &LaneAtomics, c: &LaneCounters, before: Option<&LaneCounters>) {
    let words = |c: &LaneCounters| {
        let state = match c.state {
            LaneState::Priming => 1,
            LaneState::Playing => 2,
            LaneState::Failed => 3,
        };
        [
            state, c.depth, c.mixed, c.dropped, c.repeated, c.gaps, c.trimmed, c.primes,
        ]
    };
    let now = words(c);
    let old = before.map(words);
    for (k, atomic) in a.fields().into_iter().enumerate() {
        if old.is_none_or(|o| o[k] != now[k]) {
            // Relaxed: counters (see `RtShared`).
            atomic.store(now[k], Ordering::Relaxed);
        }
    }
}

/// A lane coming back from the real-time thread: its index, and the queue (boxed: moving
/// and storing it never copies more than a pointer, and it is freed by the control thread).
pub type Returned<T> = (usize, Box<OutputQueue<T>>);

/// A command from the control thread.
pub enum Cmd<T> {
    /// Play this lane at this index.
    Add(usize, Box<OutputQueue<T>>),
    /// Send the lane at this index back.
    Remove(usize),
}

/// Every agent's output queue → one mixed period at a time → the device.
pub struct MixSource<'a, T, P = ()> {
    lanes: Vec<Option<Box<OutputQueue<T>>>>,
    /// Bit `i` set: `lanes[i]` holds a lane. A cycle visits only these, not every one of the
    /// `MAX_SLOTS` slots.
    live: u128,
    /// Each lane's counters before the cycle being mixed (for the probe, called after the
    /// timed mix).
    before: Box<[Option<LaneCounters>]>,
    cmds: rtrb::Consumer<Cmd<T>>,
    back: rtrb::Producer<Returned<T>>,
    shared: &'a RtShared,
    cur: Box<[T]>,
    /// Frames of `cur` already handed to the device.
    cur_off: usize,
    spf: usize,
    ch: usize,
    probe: P,
    /// Time spent reading and mixing the lanes, ns.
    ipc_ns: u64,
}

impl<'a, T: Mix> MixSource<'a, T> {
    /// A source mixing up to `MAX_SLOTS` lanes into periods of `spf` frames × `channels`.
    pub fn new(
        cmds: rtrb::Consumer<Cmd<T>>,
        back: rtrb::Producer<Returned<T>>,
        shared: &'a RtShared,
        spf: u32,
        channels: u16,
    ) -> Self {
        Self::with_probe((cmds, back), shared, spf, channels, ())
    }
}

impl<'a, T: Mix, P: MixProbe<T>> MixSource<'a, T, P> {
    /// The same, measured by `probe`.
    pub fn with_probe(
        (cmds, back): (rtrb::Consumer<Cmd<T>>, rtrb::Producer<Returned<T>>),
        shared: &'a RtShared,
        spf: u32,
        channels: u16,
        probe: P,
    ) -> Self {
        let spf = spf as usize;
        let ch = usize::from(channels);
        MixSource {
            lanes: (0..MAX_SLOTS).map(|_| None).collect(),
            live: 0,
            before: vec![None; MAX_SLOTS].into_boxed_slice(),
            cmds,
            back,
            shared,
            cur: vec![T::SILENCE; spf * ch].into_boxed_slice(),
            cur_off: spf,
            spf,
            ch,
            probe,
            ipc_ns: 0,
        }
    }

    /// The probe.
    #[cfg(test)]
    pub fn probe(&self) -> &P {
        &self.probe
    }

    /// Time spent reading and mixing the lanes so far (not the probe's), ns.
    pub fn ipc_ns(&self) -> u64 {
        self.ipc_ns
    }

    /// The probe; the lanes still playing are dropped here (their output rings released).
    pub fn into_probe(self) -> P {
        self.probe
    }

    /// Every lane still playing, with its counters (for the final report).
    pub fn lane_counters(&self) -> Vec<(usize, LaneCounters)> {
        self.lanes
            .iter()
            .enumerate()
            .filter_map(|(i, q)| Some((i, q.as_ref()?.counters())))
            .collect()
    }

    /// Hands lane `i` back to the control thread (it drops it there: munmap, close).
    fn send_back(&mut self, i: usize) {
        self.live &= !(1u128 << i);
        if let Some(q) = self.lanes[i].take() {
            // The queue holds 2 × MAX_SLOTS and at most MAX_SLOTS lanes exist: never full. Were
            // it full, the lane would be dropped here (a syscall), never leaked or blocked on.
            let _ = self.back.push((i, q));
        }
        // Relaxed: counter.
        self.shared.lanes[i].state.store(0, Ordering::Relaxed);
    }

    fn apply_commands(&mut self) {
        while let Ok(cmd) = self.cmds.pop() {
            match cmd {
                Cmd::Add(i, q) if i < self.lanes.len() => {
                    self.send_back(i);
                    publish(&self.shared.lanes[i], &q.counters(), None);
                    self.lanes[i] = Some(q);
                    self.live |= 1u128 << i;
                }
                Cmd::Add(_, q) => {
                    let _ = self.back.push((usize::MAX, q));
                }
                Cmd::Remove(i) if i < self.lanes.len() => self.send_back(i),
                Cmd::Remove(_) => {}
            }
        }
    }

    /// Mixes the next period into `dst` (one period of interleaved samples; it starts
    /// `offset` frames into the device's chunk `info`): each lane's frame is read once, from
    /// its ring slot, and summed into `dst`.
    fn mix_cycle(&mut self, dst: &mut [T], info: &ChunkInfo, offset: usize) {
        let t0 = monotonic_ns();
        self.apply_commands();
        dst.fill(T::SILENCE);
        for i in set_bits(self.live) {
            let Some(q) = self.lanes[i].as_mut() else {
                continue;
            };
            let before = q.counters();
            q.mix_into(dst);
            publish(&self.shared.lanes[i], &q.counters(), Some(&before));
            self.before[i] = Some(before);
        }
        bump(&self.shared.play_cycles, 1);
        // The probe's own time (a measurement, not moving audio) is left out of `ipc_ns`, as
        // on the capture side: it runs after the mix, so two clock reads time the whole mix.
        self.ipc_ns += monotonic_ns().saturating_sub(t0);
        for i in set_bits(self.live) {
            let (Some(q), Some(before)) = (self.lanes[i].as_mut(), self.before[i].take()) else {
                continue;
            };
            self.probe.lane(i, q, &before, info, offset);
            if q.counters().state == LaneState::Failed {
                self.send_back(i);
            }
        }
    }
}

impl<T: Mix, P: MixProbe<T>> PlaybackSource<T> for MixSource<'_, T, P> {
    fn pull(&mut self, out: &mut [T], info: &ChunkInfo) -> usize {
        self.probe.chunk(info);
        let ch = self.ch;
        let n = out.len() / ch;
        let mut w = 0;
        while w < n {
            if self.cur_off >= self.spf {
                if n - w >= self.spf {
                    // A whole period fits: mixed straight into the device's buffer (one copy
                    // from each lane's slot to the device).
                    let dst = &mut out[w * ch..(w + self.spf) * ch];
                    self.mix_cycle(dst, info, w);
                    w += self.spf;
                    continue;
                }
                // The device asked for part of a period (its buffer wraps here): the period
                // is mixed into `cur` and handed over in pieces. `take` leaves an empty box
                // (no allocation) while `cur` is borrowed as the target.
                let mut cur = std::mem::take(&mut self.cur);
                self.mix_cycle(&mut cur, info, w);
                self.cur = cur;
                self.cur_off = 0;
            }
            let k = (self.spf - self.cur_off).min(n - w);
            out[w * ch..(w + k) * ch]
                .copy_from_slice(&self.cur[self.cur_off * ch..(self.cur_off + k) * ch]);
            self.cur_off += k;
            w += k;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    // The test binary's allocator is `assert_no_alloc`'s (installed in run::pipeline's tests).
    use super::*;
    use voxring_core::{Policy, RingConfig, SampleFormat};
    use voxring_linux::audio::mixer::QueueParams;
    use voxring_linux::ring::{FramesWait, Segment};
    use voxring_linux::segment::CreateOptions;

    const SPF: u32 = 64;

    fn cfg(frames: u32, consumers: u16) -> RingConfig {
        RingConfig {
            frames,
            samples_per_frame: SPF,
            channels: 1,
            format: SampleFormat::S16,
            sample_rate: 48_000,
            max_consumers: consumers,
            policy: Policy::Lossless,
        }
    }

    fn info(k: u64) -> ChunkInfo {
        ChunkInfo {
            sample_pos: k * u64::from(SPF),
            timestamp_ns: monotonic_ns(),
            flags: 0,
            capture_pos: k * u64::from(SPF),
            channels: 1,
        }
    }

    /// The hub's real-time halves neither allocate nor lock with eight parked readers and
    /// three speaking lanes, make at most one wake call per cycle, and every reader gets
    /// every frame bit-exact.
    #[test]
    fn the_hub_audio_path_does_not_allocate_and_wakes_once_per_cycle() {
        let tag = std::process::id();
        let opts = CreateOptions::default();
        let mic = Segment::create(&format!("rthub-{tag}.mic"), &cfg(64, 8), &opts).unwrap();
        let shared = RtShared::new();
        let mut sink = MicSink::new(mic.producer().unwrap(), &shared, SPF, 1);
        let (mut cmd_tx, cmd_rx) = rtrb::RingBuffer::new(16);
        let (back_tx, mut back_rx) = rtrb::RingBuffer::new(16);
        let mut source = MixSource::<i16>::new(cmd_rx, back_tx, &shared, SPF, 1);
        let mut lanes = Vec::new();
        // Slots far apart, the last one included: the cycle visits only the lanes it holds.
        const SLOTS: [usize; 3] = [0, 70, MAX_SLOTS - 1];
        for (l, slot) in SLOTS.into_iter().enumerate() {
            let seg = Segment::create(&format!("rthub-{tag}.out.{l}"), &cfg(16, 1), &opts).unwrap();
            let tx = seg.producer().unwrap();
            let q = OutputQueue::new(
                seg.consumer().unwrap(),
                QueueParams { target: 2, band: 1 },
                SPF as usize,
            );
            assert!(cmd_tx.push(Cmd::Add(slot, Box::new(q))).is_ok());
            lanes.push((seg, tx));
        }
        const CYCLES: u64 = 40;
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let mut rx = mic.consumer().unwrap();
                std::thread::spawn(move || {
                    let mut crc = crc32fast::Hasher::new();
                    let mut n = 0;
                    while n < CYCLES {
                        match rx
                            .wait_for_frames(Some(std::time::Duration::from_secs(30)))
                            .unwrap()
                        {
                            FramesWait::Ready => {}
                            other => panic!("reader: {other:?}"),
                        }
                        let (c, w) = rx.parts();
                        let g = c.read_grant(usize::MAX).unwrap();
                        for f in g.frames() {
                            crc.update(f.payload());
                            n += 1;
                        }
                        g.release_all().unwrap().wake(w);
                    }
                    crc.finalize()
                })
            })
            .collect();
        let mut expect = crc32fast::Hasher::new();
        let mut out = vec![0i16; SPF as usize];
        for k in 0..CYCLES {
            for (l, (_, tx)) in lanes.iter_mut().enumerate() {
                let (p, _) = tx.parts();
                let mut g = p.write_grant(1).unwrap();
                let mut f = g.frame_mut(0).unwrap();
                f.samples_mut::<i16>().unwrap().fill(100 * (l as i16 + 1));
                f.set_len(SPF * 2).unwrap();
                let _ = g.commit_all();
            }
            let input: Vec<i16> = (0..SPF as i16).map(|i| i * 7 + k as i16).collect();
            expect.update(
                &input
                    .iter()
                    .flat_map(|s| s.to_ne_bytes())
                    .collect::<Vec<u8>>(),
            );
            assert_no_alloc::assert_no_alloc(|| {
                assert_eq!(sink.push(&input, &info(k)), SPF as usize);
                assert_eq!(source.pull(&mut out, &info(k)), SPF as usize);
            });
            if k >= 2 {
                // Priming took the first cycle (two frames queued from the second on).
                assert!(out.iter().all(|&s| s == 600), "cycle {k}: {:?}", &out[..4]);
            }
            // Give parked readers a chance to park again (not required for correctness).
            std::thread::yield_now();
        }
        let expect = expect.finalize();
        for r in readers {
            assert_eq!(r.join().unwrap(), expect);
        }
        let cycles = shared.cycles.load(Ordering::Relaxed);
        assert_eq!(cycles, CYCLES);
        assert!(shared.wakes.load(Ordering::Relaxed) <= cycles);
        // What the control thread reads is what each queue counted (only changes are stored).
        let published = |slot: usize| {
            shared.lanes[slot]
                .fields()
                .map(|x| x.load(Ordering::Relaxed))
        };
        let counted = source.lane_counters();
        assert_eq!(counted.len(), 3);
        for (slot, c) in counted {
            assert!(SLOTS.contains(&slot));
            let (d, m, r) = (c.depth, c.mixed, c.repeated);
            let want = [2, d, m, c.dropped, r, c.gaps, c.trimmed, c.primes];
            assert_eq!(published(slot), want, "{slot}");
            assert_eq!((c.mixed, c.gaps, c.primes), (CYCLES - 1, 0, 1), "{slot}");
        }
        assert!(cmd_tx.push(Cmd::Remove(SLOTS[1])).is_ok());
        assert_eq!(source.pull(&mut out, &info(CYCLES)), SPF as usize);
        assert_eq!(back_rx.pop().map(|(i, _)| i).ok(), Some(SLOTS[1]));
        assert_eq!(published(SLOTS[1])[0], 0, "a lane sent back reads as free");
        assert_eq!(source.lane_counters().len(), 2);
    }

    /// Periods go straight into the device's buffer when a whole one fits, and through
    /// `cur` in pieces when the device asks for part of one: either way the played stream is
    /// every frame in order, and nothing allocates.
    #[test]
    fn whole_and_split_periods_play_the_same_stream() {
        let tag = std::process::id();
        let opts = CreateOptions::default();
        let shared = RtShared::new();
        let (mut cmd_tx, cmd_rx) = rtrb::RingBuffer::new(4);
        let (back_tx, _back_rx) = rtrb::RingBuffer::new(4);
        let mut source = MixSource::<i16>::new(cmd_rx, back_tx, &shared, SPF, 1);
        let seg = Segment::create(&format!("rtsplit-{tag}.out.a"), &cfg(32, 1), &opts).unwrap();
        let mut tx = seg.producer().unwrap();
        let q = OutputQueue::new(
            seg.consumer().unwrap(),
            QueueParams { target: 2, band: 1 },
            SPF as usize,
        );
        assert!(cmd_tx.push(Cmd::Add(0, Box::new(q))).is_ok());
        let mut put = |v: i16| {
            let (p, _) = tx.parts();
            let mut g = p.write_grant(1).unwrap();
            let mut f = g.frame_mut(0).unwrap();
            let s = f.samples_mut::<i16>().unwrap();
            for (i, x) in s.iter_mut().enumerate() {
                *x = v * 100 + i as i16;
            }
            f.set_len(SPF * 2).unwrap();
            let _ = g.commit_all();
        };
        for v in 0..12 {
            put(v);
        }
        let mut played = Vec::new();
        // 32 + 96 + 64 + 48 + 80 + 64 + 128 = 512 frames = 8 periods.
        for n in [32usize, 96, 64, 48, 80, 64, 128] {
            let mut out = vec![0i16; n];
            assert_no_alloc::assert_no_alloc(|| {
                assert_eq!(source.pull(&mut out, &info(0)), n);
            });
            played.extend(out);
        }
        let expect: Vec<i16> = (0..8i16)
            .flat_map(|v| (0..SPF as i16).map(move |i| v * 100 + i))
            .collect();
        assert_eq!(played, expect);
        assert_eq!(shared.lanes[0].repeated.load(Ordering::Relaxed), 0);
    }
}
