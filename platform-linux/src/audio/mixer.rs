//! Output queues and their mix: how a hub plays what several agents say.
//!
//! Each agent writes its own output ring; the hub reads each through an [`OutputQueue`]: the
//! agent's ring *is* the queue, and the hub keeps it near a target depth.
//!
//! - **Priming**: a lane is not played until `target` frames are queued (at the start, and
//!   again after it ran dry), so the phase difference between capture and playback periods
//!   (PipeWire's ALSA plugin serves them as two streams) is absorbed by the queue instead of
//!   becoming a gap.
//! - **Correction only outside the band**: while the queue holds frames and is not above
//!   `target + band`, one frame is taken per cycle and nothing is corrected. A queue running
//!   low plays what it holds: holding frames back below the band would keep the last words of
//!   an agent that stopped talking from ever playing (they would come out stale before its
//!   next words). When the queue is empty, the last frame is played again (`repeated`), at
//!   most `band` cycles in a row; after that the lane has stopped talking: it plays silence
//!   (`gaps`) and primes again (`primes`). Above the band the queue is corrected only when it
//!   *stays* above: a late agent catching up leaves a burst that drains by itself, and
//!   dropping it would only make the next late wake-up a gap. So the lowest depth over
//!   [`DRIFT_WINDOW`] cycles is watched, and only when even that low-water mark is above the
//!   band are the excess oldest frames dropped down to the target (`dropped`): a standing
//!   excess (clock drift, a burst that never drained). A queue about to fill its ring is cut
//!   back at once. Every correction is counted in [`LaneCounters`].
//! - **Back to the target in silence**: a low-water mark above the target but inside the band
//!   (one repeat, then the late frame arrived too: everything after it is heard a period
//!   later, and nothing would bring it back) is not a loss to correct by dropping audio, but it
//!   is latency to give back. The lane owes that many frames (`owed`), and pays them only
//!   where nobody hears it: a queued frame whose every sample is within [`QUIET`] of zero,
//!   right after a frame that was quiet too (inside a pause, not the tail of a word), is
//!   dropped (`trimmed`, counted apart from `dropped`: no sound was lost). A debt the queue
//!   drains by itself is forgiven.
//! - **Mix**: every playing lane's frame is summed into the cycle's buffer with saturation
//!   ([`Mix::mix`]), so an earcon and a reply overlap instead of queueing.
//!
//! Real-time safe: [`OutputQueue::mix_into`] neither allocates, locks, prints nor makes a
//! syscall. It never wakes the agent (a release's wake is dropped on purpose): agents do not
//! wait for room in their output ring, so the hub's thread makes no wake call per lane.

use voxring_core::{FrameMeta, ReadError};

/// Cycles over which a lane's lowest depth is watched before frames above the band are
/// dropped (about 0.7 s at 48 kHz / 128).
pub const DRIFT_WINDOW: u32 = 256;

/// The level (as a fraction of full scale, -60 dBFS) at or under which every sample of a
/// frame must be for the frame to be trimmed as silence.
pub const QUIET: f32 = 0.001;

use super::Sample;
use crate::ring::ShmConsumer;

/// Summing two samples with saturation.
pub trait Mix: Sample {
    /// `a + b`, clamped to the format's range.
    fn mix(a: Self, b: Self) -> Self;

    /// Whether the sample is within [`QUIET`] of zero (NaN is not).
    fn quiet(self) -> bool {
        self.to_f32().abs() <= QUIET
    }
}

impl Mix for i16 {
    fn mix(a: Self, b: Self) -> Self {
        a.saturating_add(b)
    }
}

impl Mix for i32 {
    fn mix(a: Self, b: Self) -> Self {
        a.saturating_add(b)
    }
}

impl Mix for f32 {
    fn mix(a: Self, b: Self) -> Self {
        (a + b).clamp(-1.0, 1.0)
    }
}

/// Target depth and band of an output queue, in ring frames (cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueParams {
    /// Frames queued before a lane plays, and the depth it is kept at.
    pub target: u32,
    /// No correction while the depth is within `target ± band`.
    pub band: u32,
}

impl QueueParams {
    /// Checks `1 <= target`, `band < target`, and that `target + band` frames fit a ring of
    /// `ring_frames`.
    pub fn check(&self, ring_frames: u32) -> Result<(), String> {
        if self.target == 0 || self.band >= self.target {
            return Err(format!(
                "the output queue's target depth must be at least 1 and its band smaller than \
                 the target (got target {}, band {})",
                self.target, self.band
            ));
        }
        if self.target + self.band >= ring_frames {
            return Err(format!(
                "target {} + band {} frames do not fit an output ring of {ring_frames} frames",
                self.target, self.band
            ));
        }
        Ok(())
    }
}

/// Whether a lane plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneState {
    /// Filling up to the target.
    Priming,
    /// Mixed into playback.
    Playing,
    /// Its ring refused a read (evicted, corrupt): nothing more is read from it.
    Failed,
}

/// What one lane counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneCounters {
    /// Its state.
    pub state: LaneState,
    /// Frames queued at the last cycle.
    pub depth: u64,
    /// Frames mixed.
    pub mixed: u64,
    /// Frames dropped above the band.
    pub dropped: u64,
    /// Frames played again because the queue was empty.
    pub repeated: u64,
    /// Cycles of silence while it had been playing (it ran dry for longer than the band).
    pub gaps: u64,
    /// Quiet frames dropped inside a pause to bring a queue standing above its target (within
    /// the band) back to it: latency given back, no sound lost.
    pub trimmed: u64,
    /// Times it started priming.
    pub primes: u64,
}

/// One agent's output ring read as a queue with a target depth. See the module docs.
#[derive(Debug)]
pub struct OutputQueue<T> {
    rx: ShmConsumer,
    params: QueueParams,
    /// The last frame taken (for repeats); `last_len` samples of it are valid.
    last: Box<[T]>,
    last_len: usize,
    /// Whether every sample of the last frame taken was quiet.
    last_quiet: bool,
    /// Frames above the target the queue stood at over a whole drift window, to be trimmed
    /// in the next pause.
    owed: u64,
    dry: u32,
    /// Lowest depth seen in this drift window, and cycles left in it.
    low_water: u64,
    window_left: u32,
    counters: LaneCounters,
    /// The header of the frame taken in the last cycle (`None`: a repeat, silence, priming).
    taken: Option<FrameMeta>,
}

impl<T: Mix> OutputQueue<T> {
    /// A queue over `rx` (the hub's consumer of an agent's ring) for frames of
    /// `frame_samples` interleaved samples. Allocates; make it before the real-time thread
    /// gets it.
    pub fn new(rx: ShmConsumer, params: QueueParams, frame_samples: usize) -> Self {
        OutputQueue {
            rx,
            params,
            last: vec![T::SILENCE; frame_samples].into_boxed_slice(),
            last_len: 0,
            last_quiet: false,
            owed: 0,
            dry: 0,
            low_water: u64::MAX,
            window_left: DRIFT_WINDOW,
            counters: LaneCounters {
                state: LaneState::Priming,
                depth: 0,
                mixed: 0,
                dropped: 0,
                repeated: 0,
                gaps: 0,
                trimmed: 0,
                primes: 1,
            },
            taken: None,
        }
    }

    /// The header of the frame the last [`mix_into`](Self::mix_into) took and mixed (its
    /// `sample_pos` and commit `timestamp_ns` say which frame is being heard and how long it
    /// waited); `None` when that cycle repeated a frame, played silence or was priming.
    pub fn taken(&self) -> Option<FrameMeta> {
        self.taken
    }

    /// Its target depth and band.
    pub fn params(&self) -> QueueParams {
        self.params
    }

    /// Changes the target depth (e.g. one more frame after a gap): from the next priming on,
    /// the lane waits for this many frames, and the band is kept around it. Refused (and
    /// nothing changed) when `target ± band` does not fit the ring.
    pub fn set_target(&mut self, target: u32) -> Result<(), String> {
        let p = QueueParams {
            target,
            band: self.params.band,
        };
        p.check(self.rx.segment().config().frames)?;
        self.params = p;
        Ok(())
    }

    /// What it counted.
    pub fn counters(&self) -> LaneCounters {
        self.counters
    }

    /// The consumer (its segment, to check the producer's liveness off the real-time path).
    pub fn consumer(&self) -> &ShmConsumer {
        &self.rx
    }

    /// Frames queued now (0 on any error).
    fn depth(&mut self) -> u64 {
        let (c, _) = self.rx.parts();
        let ring = c.ring();
        // A value from shared memory: a producer cursor behind ours or a ring's worth ahead
        // is not trusted as a depth.
        let d = ring.write_pos().wrapping_sub(c.read_pos());
        if d > u64::from(ring.config().frames) {
            0
        } else {
            d
        }
    }

    /// Adds the saved last frame into `acc` (a repeat).
    fn repeat(&mut self, acc: &mut [T]) {
        for (a, s) in acc.iter_mut().zip(&self.last[..self.last_len]) {
            *a = T::mix(*a, *s);
        }
        self.counters.repeated += 1;
        self.dry += 1;
    }

    /// Releases `k` frames without waking the producer (see the module docs).
    fn release(&mut self, k: usize, take: bool, acc: &mut [T]) -> bool {
        let (c, _) = self.rx.parts();
        let grant = match c.read_grant(k) {
            Ok(g) => g,
            Err(ReadError::Empty) => return false,
            Err(_) => {
                self.counters.state = LaneState::Failed;
                return false;
            }
        };
        let n = grant.len();
        if take && let Some(f) = grant.frame(n - 1) {
            let len = f.meta().len as usize / std::mem::size_of::<T>();
            if let Ok(src) = f.samples::<T>() {
                let len = len.min(src.len()).min(self.last.len());
                self.last[..len].copy_from_slice(&src[..len]);
                self.last_len = len;
                self.last_quiet = src[..len].iter().all(|s| s.quiet());
                self.taken = Some(f.meta());
                for (a, s) in acc.iter_mut().zip(&src[..len]) {
                    *a = T::mix(*a, *s);
                }
            }
        }
        match grant.release(n) {
            // Dropped on purpose: agents never wait for room (module docs).
            Ok(wake) => drop(wake),
            Err(_) => self.counters.state = LaneState::Failed,
        }
        true
    }

    /// Drops the oldest queued frame if every sample of it is quiet (a trim, module docs);
    /// false when it is not (nothing is released) or cannot be read.
    fn trim_quiet_head(&mut self) -> bool {
        let (c, _) = self.rx.parts();
        let Ok(grant) = c.read_grant(1) else {
            return false;
        };
        let quiet = grant.frame(0).is_some_and(|f| {
            let len = f.meta().len as usize / std::mem::size_of::<T>();
            f.samples::<T>()
                .is_ok_and(|src| src[..len.min(src.len())].iter().all(|s| s.quiet()))
        });
        if !quiet {
            // Dropping the grant releases nothing.
            return false;
        }
        match grant.release(1) {
            // Dropped on purpose: agents never wait for room (module docs).
            Ok(wake) => drop(wake),
            Err(_) => {
                self.counters.state = LaneState::Failed;
                return false;
            }
        }
        true
    }

    /// Mixes this cycle's frame of the lane into `acc` (one frame of interleaved samples),
    /// with the corrections of the module docs.
    pub fn mix_into(&mut self, acc: &mut [T]) {
        self.taken = None;
        if self.counters.state == LaneState::Failed {
            return;
        }
        let depth = self.depth();
        self.counters.depth = depth;
        let QueueParams { target, band } = self.params;
        let (target, band) = (u64::from(target), u64::from(band));
        if self.counters.state == LaneState::Priming {
            if depth < target {
                return;
            }
            self.counters.state = LaneState::Playing;
            self.dry = 0;
        }
        self.low_water = self.low_water.min(depth);
        self.window_left = self.window_left.saturating_sub(1);
        let ring_frames = u64::from(self.rx.segment().config().frames);
        let standing = if self.window_left == 0 {
            let low = std::mem::replace(&mut self.low_water, u64::MAX);
            self.window_left = DRIFT_WINDOW;
            low
        } else {
            0
        };
        let excess = if depth + 1 >= ring_frames {
            depth - target
        } else if standing > target + band {
            standing - target
        } else {
            if standing > target {
                self.owed = standing - target;
            }
            0
        };
        if depth <= target {
            // Drained by itself.
            self.owed = 0;
        }
        if excess > 0 {
            self.owed = 0;
            // Drop the oldest excess frames, then take one as usual.
            if self.release(excess as usize, false, acc) {
                self.counters.dropped += excess;
            }
        } else if depth == 0 {
            if self.last_len > 0 && u64::from(self.dry) < band.max(1) {
                self.repeat(acc);
            } else {
                self.counters.gaps += 1;
                self.counters.primes += 1;
                self.counters.state = LaneState::Priming;
            }
            return;
        } else if self.owed > 0 && self.last_quiet && self.trim_quiet_head() {
            self.owed -= 1;
            self.counters.trimmed += 1;
        }
        if self.release(1, true, acc) {
            self.counters.mixed += 1;
            self.dry = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Segment, ShmProducer};
    use crate::segment::CreateOptions;
    use voxring_core::{Policy, RingConfig, SampleFormat};

    // Aborts the test process if anything allocates inside `assert_no_alloc`; everywhere else
    // it is the system allocator.
    #[global_allocator]
    static ALLOC: assert_no_alloc::AllocDisabler = assert_no_alloc::AllocDisabler;

    fn lane(tag: &str) -> (Segment, ShmProducer, OutputQueue<i16>) {
        let cfg = RingConfig {
            frames: 16,
            samples_per_frame: 4,
            channels: 1,
            format: SampleFormat::S16,
            sample_rate: 48_000,
            max_consumers: 1,
            policy: Policy::Lossless,
        };
        let name = format!("mixer-{tag}-{}", std::process::id());
        let seg = Segment::create(&name, &cfg, &CreateOptions::default()).unwrap();
        let tx = seg.producer().unwrap();
        let rx = seg.consumer().unwrap();
        let q = OutputQueue::new(rx, QueueParams { target: 2, band: 1 }, 4);
        (seg, tx, q)
    }

    fn put(tx: &mut ShmProducer, v: i16) {
        let (p, _) = tx.parts();
        let mut g = p.write_grant(1).unwrap();
        let mut f = g.frame_mut(0).unwrap();
        f.samples_mut::<i16>().unwrap().fill(v);
        f.set_len(8).unwrap();
        let _ = g.commit_all();
    }

    fn cycle(q: &mut OutputQueue<i16>) -> i16 {
        let mut acc = [0i16; 4];
        q.mix_into(&mut acc);
        assert!(acc.iter().all(|&s| s == acc[0]));
        acc[0]
    }

    #[test]
    fn a_lane_primes_plays_repeats_once_then_gaps_and_drops_above_the_band() {
        let (_seg, mut tx, mut q) = lane("seq");
        put(&mut tx, 1);
        assert_eq!(
            cycle(&mut q),
            0,
            "one frame is below the target: still priming"
        );
        put(&mut tx, 2);
        assert_eq!(cycle(&mut q), 1, "primed: plays in order");
        put(&mut tx, 3);
        assert_eq!(cycle(&mut q), 2);
        assert_eq!(cycle(&mut q), 3);
        assert_eq!(cycle(&mut q), 3, "dry: the last frame once more");
        assert_eq!(
            cycle(&mut q),
            0,
            "dry past the band: silence, priming again"
        );
        let c = q.counters();
        assert_eq!((c.mixed, c.repeated, c.gaps, c.primes), (3, 1, 1, 2));
        for v in 10..16 {
            put(&mut tx, v);
        }
        // Depth 6 > target 2 + band 1, but a burst drains by itself: played in order while
        // the agent keeps pace, until the drift window ends with depth never below 6.
        let mut played = Vec::new();
        // (The current window still holds the dry cycles above: two windows.)
        for next in (16..).take(2 * DRIFT_WINDOW as usize + 2) {
            played.push(cycle(&mut q));
            put(&mut tx, next);
        }
        assert_eq!(&played[..4], &[10, 11, 12, 13]);
        let c = q.counters();
        assert_eq!(
            c.dropped, 4,
            "the standing excess (6 - target 2) went at once"
        );
        assert_eq!(c.repeated, 1);
        // In order throughout; one step skips the four dropped frames.
        let steps: Vec<i16> = played.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(steps.iter().all(|&d| d == 1 || d == 5), "{played:?}");
        assert_eq!(steps.iter().filter(|&&d| d == 5).count(), 1);
    }

    #[test]
    fn a_lane_that_stops_talking_plays_its_last_frames_whatever_the_band() {
        let (seg, mut tx, _) = lane("tail");
        let rx = seg.consumer().unwrap();
        // The lowest edge of the band (target 4 - band 1) is above one frame.
        let mut q = OutputQueue::new(rx, QueueParams { target: 4, band: 1 }, 4);
        for v in 1..=4 {
            put(&mut tx, v);
        }
        let played: Vec<i16> = (0..6).map(|_| cycle(&mut q)).collect();
        assert_eq!(
            played,
            [1, 2, 3, 4, 4, 0],
            "every frame, then one repeat, then silence"
        );
        let c = q.counters();
        assert_eq!((c.mixed, c.repeated, c.gaps), (4, 1, 1), "{c:?}");
    }

    #[test]
    fn a_queue_standing_above_its_target_gives_the_frame_back_in_a_pause_only() {
        let (_seg, mut tx, mut q) = lane("trim");
        // Two frames queued, then one put before each cycle: every cycle sees 3 queued, one
        // above the target 2 and inside its band (1), for good.
        put(&mut tx, 100);
        put(&mut tx, 101);
        let mut played = Vec::new();
        // The real-time part, trims included, never allocates.
        let mut say = |v: i16, q: &mut OutputQueue<i16>| {
            put(&mut tx, v);
            played.push(assert_no_alloc::assert_no_alloc(|| cycle(q)));
        };
        // Loud for two drift windows: the frame is owed, but no sound is ever trimmed.
        for v in 102..102 + 2 * DRIFT_WINDOW as i16 {
            say(v, &mut q);
        }
        let c = q.counters();
        assert_eq!((c.trimmed, c.dropped, c.depth), (0, 0, 3), "{c:?}");
        // A pause (quiet frames 1, 2, ...: under -60 dBFS, yet told apart). The first quiet
        // frame comes after a loud one (the tail of a word): played. The next is trimmed.
        for v in 1..=8 {
            say(v, &mut q);
        }
        let c = q.counters();
        assert_eq!(
            (c.trimmed, c.dropped, c.repeated, c.gaps),
            (1, 0, 0, 0),
            "{c:?}"
        );
        let n = played.len();
        assert_eq!(&played[n - 6..], [1, 3, 4, 5, 6, 7], "{played:?}");
        assert_eq!(c.depth, 2, "back at the target");
        // Every loud frame played, in order.
        let loud: Vec<i16> = played.iter().copied().filter(|&v| v >= 100).collect();
        assert_eq!(
            loud,
            (100..102 + 2 * DRIFT_WINDOW as i16).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_late_burst_is_played_not_dropped() {
        let (_seg, mut tx, mut q) = lane("burst");
        let mut next = 0;
        let mut put_next = |tx: &mut ShmProducer| {
            next += 1;
            put(tx, next);
        };
        put_next(&mut tx);
        put_next(&mut tx);
        let mut played = Vec::new();
        for c in 0..100 {
            // The agent is late every 10th cycle and writes two frames the next.
            if c % 10 != 3 {
                put_next(&mut tx);
            }
            if c % 10 == 4 {
                put_next(&mut tx);
            }
            played.push(cycle(&mut q));
        }
        let c = q.counters();
        assert_eq!((c.dropped, c.repeated, c.gaps), (0, 0, 0), "{c:?}");
        assert!(played.windows(2).all(|w| w[1] == w[0] + 1), "{played:?}");
    }

    #[test]
    fn taken_names_the_frame_mixed_and_the_target_can_grow_within_the_ring() {
        let (_seg, mut tx, mut q) = lane("taken");
        put(&mut tx, 1);
        put(&mut tx, 2);
        assert_eq!(cycle(&mut q), 1);
        let first = q.taken().expect("a frame was taken");
        assert_eq!(first.seq, 0);
        assert_eq!(cycle(&mut q), 2);
        assert_eq!(q.taken().map(|m| m.seq), Some(1));
        assert_eq!(cycle(&mut q), 2, "dry: a repeat");
        assert_eq!(q.taken(), None, "a repeat takes no frame");
        assert!(q.set_target(3).is_ok());
        assert_eq!(q.params(), QueueParams { target: 3, band: 1 });
        // target + band must stay inside the 16-frame ring.
        assert!(q.set_target(15).is_err());
        assert_eq!(q.params().target, 3, "a refused target changes nothing");
    }

    #[test]
    fn lanes_sum_with_saturation() {
        let (_a, mut ta, mut qa) = lane("sa");
        let (_b, mut tb, mut qb) = lane("sb");
        for _ in 0..2 {
            put(&mut ta, 30_000);
            put(&mut tb, 10_000);
        }
        let mut acc = [0i16; 4];
        qa.mix_into(&mut acc);
        qb.mix_into(&mut acc);
        assert_eq!(acc, [i16::MAX; 4]);
        assert_eq!(f32::mix(0.75, 0.5), 1.0);
        assert_eq!(i32::mix(i32::MIN, -1), i32::MIN);
    }
}
