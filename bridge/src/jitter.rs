//! The import side's jitter buffer and clock-drift estimate: pure logic on frames and
//! nanosecond times, no I/O, no clock (the caller passes `now`), so every case is tested with
//! made-up times.
//!
//! **Playout schedule.** A frame's media time is `sample_pos / sample_rate` (the exporting
//! machine's frame clock). Its *offset* is `arrival − media`; the smallest offset seen so far
//! (`base`) is the fastest trip. A frame is due at `base + media + target`: each frame gets
//! `target` nanoseconds more than the fastest trip to arrive. Frames are played in sequence
//! order, each when due.
//!
//! **Counts.** A frame that arrives after its due time is *late* (it is still played if its
//! turn has not passed; if it has, it is also counted in `late_dropped`). When the frame at
//! the head of the buffer is due and the sequence numbers before it never arrived, those are
//! *lost*: exactly the gap in sequence numbers, whatever arrives later. A new exporter run (a
//! new epoch) restarts the schedule (`restarts`).
//!
//! **Drift.** The lower envelope of the offsets (the smallest per second of media time) is a
//! line whose slope is the rate difference between the exporter's frame clock and this
//! machine's clock; a least-squares fit gives it in parts per million.
//!
//! **Real-time.** Everything is allocated by [`JitterBuffer::new`]: the frames are held in
//! `capacity` slots indexed by sequence number modulo the capacity, the drift windows in a
//! deque of fixed size. [`JitterBuffer::insert_or_return`], [`JitterBuffer::poll`] and
//! [`JitterBuffer::stats`] never allocate or free (the import's play thread calls them;
//! `import`'s `assert_no_alloc` test runs them): a frame the buffer does not keep is handed
//! back to the caller, whose payload buffer goes back to its pool.
//!
//! ```
//! use voxring_bridge::jitter::{JitterBuffer, Frame};
//! use voxring_bridge::wire::{FrameHeader, StreamFormat};
//! use voxring_core::{FrameFlags, SampleFormat};
//! let fmt = StreamFormat { samples_per_frame: 480, sample_rate: 48_000, channels: 1,
//!                          format: SampleFormat::S16 };
//! let frame = |seq: u64, arrival_ns: u64| Frame {
//!     header: FrameHeader { epoch: 1, seq, sample_pos: seq * 480, timestamp_ns: 0,
//!                           flags: FrameFlags::NONE, format: fmt, sent_ns: 0 },
//!     payload: vec![0; 960], arrival_ns,
//! };
//! let ms = 1_000_000;
//! let mut jb = JitterBuffer::new(20 * ms, 64);
//! jb.insert(frame(0, 100 * ms));
//! jb.insert(frame(2, 125 * ms)); // frame 1 never comes
//! assert!(jb.poll(110 * ms).is_none()); // frame 0 is due at 120 ms
//! assert_eq!(jb.poll(120 * ms).unwrap().frame.header.seq, 0);
//! let p = jb.poll(140 * ms).unwrap(); // frame 2 is due at 140 ms: 1 is lost
//! assert_eq!((p.frame.header.seq, p.lost_before), (2, 1));
//! assert_eq!(jb.stats().lost, 1);
//! ```

use std::collections::VecDeque;

use serde::Serialize;

use crate::wire::FrameHeader;

/// A frame as it arrived.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Its header (already validated).
    pub header: FrameHeader,
    /// Its samples (on the import side, a buffer of the import's pool: it is returned there,
    /// never freed, once the frame is played or discarded).
    pub payload: Vec<u8>,
    /// When it arrived, on this machine's monotonic clock (ns).
    pub arrival_ns: u64,
}

/// A frame to write into the local ring now.
#[derive(Debug)]
pub struct Play {
    /// The frame.
    pub frame: Frame,
    /// Frames lost right before it (a gap in sequence numbers).
    pub lost_before: u64,
    /// The frame does not follow the previous one played (loss, or a new exporter run).
    pub discontinuity: bool,
    /// Its due time (ns, this machine's monotonic clock).
    pub due_ns: u64,
}

/// The jitter buffer's counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct JitterStats {
    /// Frames handed to the buffer.
    pub received: u64,
    /// Frames played (returned by `poll`).
    pub played: u64,
    /// Sequence numbers skipped at playout: frames that never arrived in time.
    pub lost: u64,
    /// Frames that arrived after their due time.
    pub late: u64,
    /// Late frames whose turn had passed: discarded (they are counted in `lost` too).
    pub late_dropped: u64,
    /// Frames received twice: the copy was discarded.
    pub duplicates: u64,
    /// Frames discarded because the buffer held its capacity (the frames held would have
    /// spanned `capacity` sequence numbers or more).
    pub overflow: u64,
    /// New exporter runs (epochs) after the first.
    pub restarts: u64,
    /// The estimated rate of this machine's clock relative to the exporter's frame clock,
    /// in parts per million (positive: frames arrive ever later, the exporter's clock is
    /// slower); `None` until three seconds of media time were seen.
    pub drift_ppm: Option<f64>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct JitterBuffer {
    target_ns: u64,
    epoch: Option<u64>,
    next_seq: Option<u64>,
    /// Smallest `arrival − media` seen in this epoch.
    base: Option<i128>,
    /// Frame `seq` is in slot `seq % slots.len()`; the held frames' sequence numbers all lie
    /// in `lo..=hi`, which spans fewer than `slots.len()` numbers, so no two share a slot.
    slots: Box<[Option<Frame>]>,
    /// Frames held.
    held: usize,
    /// Lowest sequence number held (meaningful when `held > 0`).
    lo: u64,
    /// Highest sequence number held (meaningful when `held > 0`).
    hi: u64,
    restarted: bool,
    drift: DriftEstimator,
    stats: JitterStats,
}

fn media_ns(h: &FrameHeader) -> i128 {
    i128::from(h.sample_pos) * 1_000_000_000 / i128::from(h.format.sample_rate)
}

impl JitterBuffer {
    /// A buffer that gives each frame `target_ns` more than the fastest trip, holding at most
    /// `capacity` frames, whose sequence numbers span fewer than `capacity` (a frame that
    /// would widen the span to `capacity` is discarded, counted `overflow`). All its memory
    /// is allocated here.
    pub fn new(target_ns: u64, capacity: usize) -> Self {
        JitterBuffer {
            target_ns,
            epoch: None,
            next_seq: None,
            base: None,
            slots: (0..capacity.max(1)).map(|_| None).collect(),
            held: 0,
            lo: 0,
            hi: 0,
            restarted: false,
            drift: DriftEstimator::new(),
            stats: JitterStats::default(),
        }
    }

    /// Frames it can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, seq: u64) -> usize {
        (seq % self.slots.len() as u64) as usize
    }

    /// The counters, with the current drift estimate.
    pub fn stats(&self) -> JitterStats {
        let mut s = self.stats.clone();
        s.drift_ppm = self.drift.ppm();
        s
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// True when no frame is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Hands every held frame to `give_back`.
    fn clear(&mut self, give_back: &mut impl FnMut(Frame)) {
        if self.held > 0 {
            for seq in self.lo..=self.hi {
                let i = self.slot(seq);
                if let Some(f) = self.slots[i].take() {
                    give_back(f);
                }
            }
        }
        self.held = 0;
    }

    fn due(&self, h: &FrameHeader) -> u64 {
        let base = self.base.unwrap_or(0);
        let d = base + media_ns(h) + i128::from(self.target_ns);
        d.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// Takes in an arrived frame (a frame it does not keep is freed; see
    /// [`JitterBuffer::insert_or_return`]).
    pub fn insert(&mut self, f: Frame) {
        self.insert_or_return(f, &mut drop);
    }

    /// Takes in an arrived frame; every frame it does not keep (a duplicate, a late or
    /// overflowing frame, the frames held when a new epoch begins) goes to `give_back`.
    /// Allocates nothing.
    pub fn insert_or_return(&mut self, f: Frame, give_back: &mut impl FnMut(Frame)) {
        self.stats.received += 1;
        let h = f.header;
        if self.epoch != Some(h.epoch) {
            if self.epoch.is_some() {
                self.stats.restarts += 1;
                self.restarted = true;
            }
            self.epoch = Some(h.epoch);
            self.next_seq = None;
            self.base = None;
            self.clear(give_back);
            self.drift.clear();
        }
        let offset = i128::from(f.arrival_ns) - media_ns(&h);
        self.base = Some(self.base.map_or(offset, |b| b.min(offset)));
        self.drift.add(media_ns(&h), offset);
        let late = f.arrival_ns > self.due(&h);
        if late {
            self.stats.late += 1;
        }
        if self.next_seq.is_some_and(|n| h.seq < n) {
            self.stats.late_dropped += u64::from(late);
            if !late {
                // Its turn passed before its due time: only a replayed or duplicate frame.
                self.stats.duplicates += 1;
            }
            give_back(f);
            return;
        }
        let i = self.slot(h.seq);
        if self.held > 0 {
            if self.slots[i]
                .as_ref()
                .is_some_and(|g| g.header.seq == h.seq)
            {
                self.stats.duplicates += 1;
                give_back(f);
                return;
            }
            let (lo, hi) = (self.lo.min(h.seq), self.hi.max(h.seq));
            if hi - lo >= self.slots.len() as u64 {
                self.stats.overflow += 1;
                give_back(f);
                return;
            }
            (self.lo, self.hi) = (lo, hi);
        } else {
            (self.lo, self.hi) = (h.seq, h.seq);
        }
        // The span is below the capacity and `seq` is not held: its slot is free.
        debug_assert!(self.slots[i].is_none());
        self.slots[i] = Some(f);
        self.held += 1;
    }

    /// When the next frame is due (ns), if one is held.
    pub fn next_due(&self) -> Option<u64> {
        if self.held == 0 {
            return None;
        }
        self.slots[self.slot(self.lo)]
            .as_ref()
            .map(|f| self.due(&f.header))
    }

    /// The next frame to play if it is due at `now_ns`.
    pub fn poll(&mut self, now_ns: u64) -> Option<Play> {
        let due = self.next_due()?;
        if due > now_ns {
            return None;
        }
        let i = self.slot(self.lo);
        let frame = self.slots[i].take()?;
        let seq = self.lo;
        self.held -= 1;
        if self.held > 0 {
            // The next one held; at most `capacity` slots to look at.
            self.lo = (seq + 1..=self.hi)
                .find(|&s| self.slots[self.slot(s)].is_some())
                .unwrap_or(self.hi);
        }
        let next = self.next_seq.unwrap_or(seq);
        let lost_before = seq - next;
        self.stats.lost += lost_before;
        self.stats.played += 1;
        self.next_seq = Some(seq + 1);
        let discontinuity = lost_before > 0 || std::mem::take(&mut self.restarted);
        Some(Play {
            frame,
            lost_before,
            discontinuity,
            due_ns: due,
        })
    }
}

/// Least-squares slope of the lower envelope of `offset(media)`, one point per second.
#[derive(Debug)]
struct DriftEstimator {
    /// (window start media time, smallest offset in it); at most `MAX_WINDOWS`, allocated
    /// once.
    windows: VecDeque<(i128, i128)>,
}

const WINDOW_NS: i128 = 1_000_000_000;
const MAX_WINDOWS: usize = 600;

impl DriftEstimator {
    fn new() -> Self {
        DriftEstimator {
            windows: VecDeque::with_capacity(MAX_WINDOWS),
        }
    }

    fn clear(&mut self) {
        self.windows.clear();
    }

    fn add(&mut self, media: i128, offset: i128) {
        let w = media.div_euclid(WINDOW_NS) * WINDOW_NS;
        match self.windows.back_mut() {
            Some((start, min)) if *start == w => *min = (*min).min(offset),
            Some((start, _)) if *start > w => {}
            _ => {
                if self.windows.len() == MAX_WINDOWS {
                    self.windows.pop_front();
                }
                self.windows.push_back((w, offset));
            }
        }
    }

    /// Slope in ppm over the complete windows (the last one is still filling). Allocates
    /// nothing: two passes over the windows.
    fn ppm(&self) -> Option<f64> {
        let done = self.windows.len().checked_sub(1)?;
        if done < 3 {
            return None;
        }
        let (x0, y0) = self.windows[0];
        let pts = || {
            self.windows
                .iter()
                .take(done)
                .map(move |p| ((p.0 - x0) as f64, (p.1 - y0) as f64))
        };
        let n = done as f64;
        let mx = pts().map(|p| p.0).sum::<f64>() / n;
        let my = pts().map(|p| p.1).sum::<f64>() / n;
        let sxy: f64 = pts().map(|(x, y)| (x - mx) * (y - my)).sum();
        let sxx: f64 = pts().map(|(x, _)| (x - mx) * (x - mx)).sum();
        (sxx > 0.0).then(|| sxy / sxx * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use voxring_core::{FrameFlags, SampleFormat};

    use super::*;
    use crate::wire::StreamFormat;

    const MS: u64 = 1_000_000;

    fn frame(epoch: u64, seq: u64, arrival_ns: u64) -> Frame {
        Frame {
            header: FrameHeader {
                epoch,
                seq,
                sample_pos: seq * 160,
                timestamp_ns: 0,
                flags: FrameFlags::NONE,
                format: StreamFormat {
                    samples_per_frame: 160,
                    sample_rate: 16_000,
                    channels: 1,
                    format: SampleFormat::S16,
                },
                sent_ns: 0,
            },
            payload: vec![seq as u8; 320],
            arrival_ns,
        }
    }

    /// Plays everything due up to `until`, stepping 1 ms; returns (seq, lost_before, disc).
    fn drain(jb: &mut JitterBuffer, until: u64) -> Vec<(u64, u64, bool)> {
        let mut out = vec![];
        let mut t = 0;
        while t <= until {
            while let Some(p) = jb.poll(t) {
                assert!(p.due_ns <= t);
                out.push((p.frame.header.seq, p.lost_before, p.discontinuity));
            }
            t += MS;
        }
        out
    }

    #[test]
    fn reordered_frames_within_the_target_play_in_order_with_nothing_lost() {
        let mut jb = JitterBuffer::new(30 * MS, 64);
        // 10 ms frames; arrivals jittered by up to 25 ms and out of order.
        let jitter = [0, 25, 3, 17, 9, 0, 22, 1, 12, 5];
        for (seq, j) in jitter.iter().enumerate().rev() {
            jb.insert(frame(
                1,
                seq as u64,
                1_000 * MS + seq as u64 * 10 * MS + j * MS,
            ));
        }
        let played = drain(&mut jb, 2_000 * MS);
        assert_eq!(
            played.iter().map(|p| p.0).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        let s = jb.stats();
        assert_eq!((s.lost, s.late, s.played), (0, 0, 10));
    }

    #[test]
    fn missing_frames_are_counted_exactly_and_flag_the_next_frame() {
        let mut jb = JitterBuffer::new(20 * MS, 256);
        for seq in (0..100u64).filter(|s| s % 7 != 3) {
            jb.insert(frame(1, seq, seq * 10 * MS));
        }
        let played = drain(&mut jb, 2_000 * MS);
        assert_eq!(
            jb.stats().lost,
            (0..100).filter(|s| s % 7 == 3).count() as u64
        );
        for (seq, lost, disc) in played {
            assert_eq!(lost, u64::from(seq % 7 == 4));
            assert_eq!(disc, seq % 7 == 4);
        }
    }

    #[test]
    fn a_frame_later_than_its_turn_is_dropped_and_stays_lost() {
        let mut jb = JitterBuffer::new(20 * MS, 64);
        jb.insert(frame(1, 0, 0));
        jb.insert(frame(1, 2, 20 * MS));
        assert_eq!(drain(&mut jb, 60 * MS).len(), 2);
        jb.insert(frame(1, 1, 70 * MS)); // due at 30 ms; 2 was played at 40 ms
        let s = jb.stats();
        assert_eq!((s.lost, s.late, s.late_dropped, s.played), (1, 1, 1, 2));
    }

    #[test]
    fn a_late_frame_whose_turn_has_not_passed_is_still_played() {
        let mut jb = JitterBuffer::new(20 * MS, 64);
        jb.insert(frame(1, 0, 0));
        assert_eq!(drain(&mut jb, 20 * MS).len(), 1);
        jb.insert(frame(1, 1, 45 * MS)); // due at 30 ms, nothing after it yet
        let p = jb.poll(45 * MS).unwrap();
        assert_eq!((p.frame.header.seq, p.lost_before), (1, 0));
        assert_eq!((jb.stats().late, jb.stats().lost), (1, 0));
    }

    #[test]
    fn duplicates_overflow_and_a_new_epoch_are_counted() {
        let mut jb = JitterBuffer::new(20 * MS, 2);
        jb.insert(frame(1, 0, 0));
        jb.insert(frame(1, 0, 1));
        jb.insert(frame(1, 1, 10 * MS));
        jb.insert(frame(1, 2, 20 * MS));
        let s = jb.stats();
        assert_eq!((s.duplicates, s.overflow), (1, 1));
        assert_eq!(drain(&mut jb, 100 * MS).len(), 2);
        // The exporter restarted: its ring position started again at 0.
        jb.insert(frame(2, 0, 200 * MS));
        let p = jb.poll(300 * MS).unwrap();
        assert!(p.discontinuity && p.lost_before == 0);
        assert_eq!(jb.stats().restarts, 1);
    }

    #[test]
    fn the_drift_of_a_fast_remote_clock_is_estimated_through_jitter() {
        // The exporter's frame clock runs 120 ppm fast: a frame with media time m arrives
        // at m × (1 − 120e-6) + 5 ms + jitter (0..8 ms, pseudo-random).
        let mut jb = JitterBuffer::new(20 * MS, 4096);
        let mut lcg: u64 = 12345;
        for seq in 0..3_000u64 {
            lcg = lcg
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let m = seq * 10 * MS;
            let jitter = (lcg >> 33) % (8 * MS);
            let arrival = m - m * 120 / 1_000_000 + 5 * MS + jitter;
            jb.insert(frame(1, seq, arrival));
            while jb.poll(arrival).is_some() {}
        }
        let ppm = jb.stats().drift_ppm.expect("thirty seconds of media");
        assert!(
            (ppm + 120.0).abs() < 10.0,
            "estimated {ppm} ppm, expected -120"
        );
    }

    #[test]
    fn a_small_buffer_reuses_its_slots_and_hands_back_what_it_discards() {
        // Capacity 4: the slots wrap around many times; reordering within the span plays in
        // order; a frame that would span 4 numbers, duplicates and a new epoch's clear come
        // back to the caller.
        let mut jb = JitterBuffer::new(20 * MS, 4);
        let mut back = vec![];
        let mut give_back = |f: Frame| back.push(f.header.seq);
        let mut played = vec![];
        for pair in (0..40u64).step_by(2) {
            for seq in [pair + 1, pair] {
                jb.insert_or_return(frame(1, seq, pair * 10 * MS), &mut give_back);
            }
            while let Some(p) = jb.poll(pair * 10 * MS + 30 * MS) {
                played.push(p.frame.header.seq);
            }
        }
        assert_eq!(played, (0..40).collect::<Vec<_>>());
        jb.insert_or_return(frame(1, 40, 400 * MS), &mut give_back);
        jb.insert_or_return(frame(1, 44, 400 * MS), &mut give_back); // spans 40..=44
        jb.insert_or_return(frame(1, 43, 400 * MS), &mut give_back);
        jb.insert_or_return(frame(1, 43, 400 * MS), &mut give_back); // duplicate
        jb.insert_or_return(frame(2, 0, 500 * MS), &mut give_back); // new epoch: 40, 43 back
        back.sort_unstable();
        assert_eq!(back, [40, 43, 43, 44]);
        let s = jb.stats();
        assert_eq!((s.overflow, s.duplicates, s.restarts), (1, 1, 1));
        assert_eq!(jb.len(), 1);
    }
}
