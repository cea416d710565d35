//! Loopback round-trip measurement, in the manner of `jack_iodelay`, and the test signals it
//! uses.
//!
//! [`ImpulseProbe`] plays a one-frame impulse on every channel every `interval` frames of the
//! playback stream ([`ImpulseSource`]) and finds them in the capture ([`ImpulseDetector`]).
//! The round trip of one impulse is measured on the duplex's common clock, the capture position
//! ([`ChunkInfo::capture_pos`]):
//!
//! `round trip = R - W`, where `W` is the duplex clock of the wake-up that handed the impulse
//! to the playback side and `R` that of the wake-up in which it came back: the capture frames
//! from the moment the application wrote the frame until the moment it could read it back.
//! Through PipeWire with the playback buffer kept full, that is the playback buffer (the frame
//! waits behind the rest of the buffer) plus the graph's own cycle.
//!
//! The source and the detector share the probe's state through `Cell`s: both run on the same
//! (real-time) thread and never allocate; the detector's result buffer is allocated up front.
//!
//! [`PatternSource`] and [`Recorder`] play a reproducible pseudo-random signal and record the
//! capture, to check a loopback is bit-exact.

use core::cell::Cell;

use super::{CaptureSink, ChunkInfo, PlaybackSource, Sample, flags};

/// Impulses in flight tracked at once (an impulse comes back long before the 8th next one is
/// played, since the interval exceeds the round trip).
const IN_FLIGHT: usize = 8;

/// Shared state of one loopback measurement. Make one, then take its [`Self::source`] and
/// [`Self::detector`] and hand them to [`super::Duplex::run`].
#[derive(Debug)]
pub struct ImpulseProbe {
    interval: u64,
    warmup: u64,
    amplitude: f32,
    threshold: f32,
    /// `W` of impulse `k` at index `k % IN_FLIGHT` (u64::MAX: none).
    written_at: [Cell<u64>; IN_FLIGHT],
    round_trips: core::cell::RefCell<Vec<u32>>,
    dropped: Cell<u64>,
    unmatched: Cell<u64>,
    last_hit: Cell<Option<u64>>,
    chunk_gcd: Cell<u64>,
    xrun_chunks: Cell<u64>,
    /// (capture position, CLOCK_MONOTONIC) of the first and the latest chunk after the warm-up.
    rate_first: Cell<Option<(u64, u64)>>,
    rate_last: Cell<(u64, u64)>,
}

impl ImpulseProbe {
    /// Impulses of `amplitude` (full scale 1.0) every `interval` frames, detected at half that
    /// amplitude on channel 0; room for `capacity` measurements (allocated now). No impulse is
    /// played in the first `warmup` frames of playback: the prefilled buffer and the first
    /// cycles, while PipeWire's session manager is still linking the two streams, are not the
    /// steady state.
    pub fn new(interval: u64, warmup: u64, amplitude: f32, capacity: usize) -> Self {
        ImpulseProbe {
            interval: interval.max(2),
            warmup,
            amplitude,
            threshold: amplitude.abs() / 2.0,
            written_at: core::array::from_fn(|_| Cell::new(u64::MAX)),
            round_trips: core::cell::RefCell::new(Vec::with_capacity(capacity)),
            dropped: Cell::new(0),
            unmatched: Cell::new(0),
            last_hit: Cell::new(None),
            chunk_gcd: Cell::new(0),
            xrun_chunks: Cell::new(0),
            rate_first: Cell::new(None),
            rate_last: Cell::new((0, 0)),
        }
    }

    /// The playback half.
    pub fn source(&self) -> ImpulseSource<'_> {
        ImpulseSource { probe: self }
    }

    /// The capture half.
    pub fn detector(&self) -> ImpulseDetector<'_> {
        ImpulseDetector { probe: self }
    }

    /// The round trips measured, in frames, in the order found.
    pub fn round_trips(&self) -> Vec<u32> {
        self.round_trips.borrow().clone()
    }

    /// Measurements that did not fit in the capacity.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Impulses found in the capture that match no impulse played (noise, or a round trip
    /// longer than the interval).
    pub fn unmatched(&self) -> u64 {
        self.unmatched.get()
    }

    /// Greatest common divisor of the sizes of the capture chunks: the quantum the device
    /// (PipeWire's graph) actually delivers in, when the buffer is a multiple of it.
    pub fn chunk_gcd(&self) -> u64 {
        self.chunk_gcd.get()
    }

    /// Capture chunks that arrived flagged [`flags::XRUN`].
    pub fn xrun_chunks(&self) -> u64 {
        self.xrun_chunks.get()
    }

    /// Summary statistics of the round trips.
    pub fn stats(&self) -> Option<RoundTripStats> {
        RoundTripStats::from_frames(&self.round_trips.borrow())
    }

    /// The capture rate measured against CLOCK_MONOTONIC from the chunks after the warm-up
    /// (frames between the first and the latest chunk over the time between their hand-overs);
    /// `None` before two chunks. Wake-up jitter at both ends limits its precision, so measure
    /// over seconds.
    pub fn measured_rate_hz(&self) -> Option<f64> {
        let (p0, t0) = self.rate_first.get()?;
        let (p1, t1) = self.rate_last.get();
        (t1 > t0 && p1 > p0).then(|| (p1 - p0) as f64 * 1e9 / (t1 - t0) as f64)
    }
}

/// The playback half of an [`ImpulseProbe`].
#[derive(Debug)]
pub struct ImpulseSource<'a> {
    probe: &'a ImpulseProbe,
}

impl<T: Sample> PlaybackSource<T> for ImpulseSource<'_> {
    fn pull(&mut self, out: &mut [T], info: &ChunkInfo) -> usize {
        let p = self.probe;
        let ch = info.channels.max(1) as usize;
        let imp = T::from_f32(p.amplitude);
        for (i, frame) in out.chunks_exact_mut(ch).enumerate() {
            let pos = info.sample_pos + i as u64;
            if pos >= p.warmup && pos.is_multiple_of(p.interval) {
                frame.fill(imp);
                let k = pos / p.interval;
                p.written_at[k as usize % IN_FLIGHT].set(info.capture_pos);
            } else {
                frame.fill(T::SILENCE);
            }
        }
        out.len() / ch
    }
}

/// The capture half of an [`ImpulseProbe`].
#[derive(Debug)]
pub struct ImpulseDetector<'a> {
    probe: &'a ImpulseProbe,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl<T: Sample> CaptureSink<T> for ImpulseDetector<'_> {
    fn push(&mut self, samples: &[T], info: &ChunkInfo) -> usize {
        let p = self.probe;
        let ch = info.channels.max(1) as usize;
        let frames = samples.len() / ch;
        if frames > 0 {
            p.chunk_gcd.set(gcd(p.chunk_gcd.get(), frames as u64));
        }
        if info.flags & flags::XRUN != 0 {
            p.xrun_chunks.set(p.xrun_chunks.get() + 1);
        }
        if info.sample_pos >= p.warmup {
            let mark = (info.sample_pos, info.timestamp_ns);
            if p.rate_first.get().is_none() {
                p.rate_first.set(Some(mark));
            }
            p.rate_last.set(mark);
        }
        let end = info.capture_pos; // R: the clock of this wake-up
        for (i, frame) in samples.chunks_exact(ch).enumerate() {
            if frame[0].to_f32().abs() < p.threshold {
                continue;
            }
            let pos = info.sample_pos + i as u64;
            // One impulse is one frame; ignore anything within half an interval of the last
            // hit (a device that rings, or a resampler's smear).
            if p.last_hit.get().is_some_and(|l| pos - l < p.interval / 2) {
                continue;
            }
            p.last_hit.set(Some(pos));
            // The newest impulse written by the time this chunk was read: W is the largest
            // value not above `end` among those in flight.
            let w = p
                .written_at
                .iter()
                .map(Cell::get)
                .filter(|w| *w != u64::MAX && *w <= end)
                .max();
            let Some(w) = w else {
                p.unmatched.set(p.unmatched.get() + 1);
                continue;
            };
            // Each impulse is matched once.
            for c in &p.written_at {
                if c.get() == w {
                    c.set(u64::MAX);
                }
            }
            let rt = (end - w).min(u64::from(u32::MAX)) as u32;
            let mut v = p.round_trips.borrow_mut();
            if v.len() < v.capacity() {
                v.push(rt); // within capacity: no allocation
            } else {
                p.dropped.set(p.dropped.get() + 1);
            }
        }
        frames
    }
}

/// Round-trip statistics in frames (nearest-rank percentiles).
///
/// ```
/// use voxring_linux::audio::loopback::RoundTripStats;
/// let s = RoundTripStats::from_frames(&[300, 288, 290, 1000]).unwrap();
/// assert_eq!((s.count, s.min, s.p50, s.max), (4, 288, 290, 1000));
/// assert_eq!(RoundTripStats::ms(480, 48_000), 10.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundTripStats {
    /// Number of measurements.
    pub count: usize,
    /// Smallest.
    pub min: u32,
    /// Median.
    pub p50: u32,
    /// 99th percentile.
    pub p99: u32,
    /// Largest.
    pub max: u32,
}

impl RoundTripStats {
    /// Statistics of `frames`; `None` when empty.
    pub fn from_frames(frames: &[u32]) -> Option<Self> {
        if frames.is_empty() {
            return None;
        }
        let mut v = frames.to_vec();
        v.sort_unstable();
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(RoundTripStats {
            count: v.len(),
            min: v[0],
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
        })
    }

    /// `frames` at `rate` in milliseconds.
    pub fn ms(frames: u32, rate: u32) -> f64 {
        f64::from(frames) * 1000.0 / f64::from(rate)
    }
}

/// The value of the test pattern at interleaved sample index `i`: pseudo-random (SplitMix64),
/// never silence, and exactly representable through a float graph (see [`Sample::from_bits`]).
pub fn pattern_sample<T: Sample>(i: u64) -> T {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // Bit 24 set: never zero in any format (see from_bits).
    T::from_bits((z as u32) | 0x0100_0000)
}

/// Plays silence for `start` frames, then [`pattern_sample`] for `frames` frames (pattern
/// index 0 at playback position `start`), then silence.
#[derive(Debug, Clone, Copy)]
pub struct PatternSource {
    start: u64,
    frames: u64,
}

impl PatternSource {
    /// A pattern of `frames` frames after `start` frames of silence.
    pub fn new(start: u64, frames: u64) -> Self {
        PatternSource { start, frames }
    }
}

impl<T: Sample> PlaybackSource<T> for PatternSource {
    fn pull(&mut self, out: &mut [T], info: &ChunkInfo) -> usize {
        let ch = info.channels.max(1) as usize;
        for (i, frame) in out.chunks_exact_mut(ch).enumerate() {
            let pos = (info.sample_pos + i as u64).wrapping_sub(self.start);
            for (c, s) in frame.iter_mut().enumerate() {
                *s = if pos < self.frames {
                    pattern_sample(pos * ch as u64 + c as u64)
                } else {
                    T::SILENCE
                };
            }
        }
        out.len() / ch
    }
}

/// Records the capture into a buffer allocated up front (frames beyond its capacity are
/// counted, not kept), with the position of the first chunk flagged as an xrun.
///
/// ```
/// use voxring_linux::audio::loopback::Recorder;
/// use voxring_linux::audio::{CaptureSink, ChunkInfo};
/// let mut rec = Recorder::<f32>::new(2, 1); // room for two mono frames
/// let info = ChunkInfo { sample_pos: 0, timestamp_ns: 0, flags: 0, capture_pos: 3, channels: 1 };
/// rec.push(&[0.0, 0.5, 0.25], &info);
/// assert_eq!(rec.samples(), &[0.0, 0.5]);
/// assert_eq!(rec.overflow_frames(), 1);
/// assert_eq!(rec.first_sound(), Some(1));
/// ```
#[derive(Debug)]
pub struct Recorder<T: Sample> {
    samples: Vec<T>,
    channels: usize,
    overflow_frames: u64,
    first_xrun_frame: Option<u64>,
}

impl<T: Sample> Recorder<T> {
    /// Room for `frames` frames of `channels` channels.
    pub fn new(frames: usize, channels: u32) -> Self {
        Recorder {
            samples: Vec::with_capacity(frames * channels as usize),
            channels: channels.max(1) as usize,
            overflow_frames: 0,
            first_xrun_frame: None,
        }
    }

    /// The recorded interleaved samples.
    pub fn samples(&self) -> &[T] {
        &self.samples
    }

    /// Frames recorded.
    pub fn frames(&self) -> usize {
        self.samples.len() / self.channels
    }

    /// Frames that did not fit.
    pub fn overflow_frames(&self) -> u64 {
        self.overflow_frames
    }

    /// Recorded frame index of the first chunk flagged as following an xrun.
    pub fn first_xrun_frame(&self) -> Option<u64> {
        self.first_xrun_frame
    }

    /// Index of the first frame with any non-silent sample.
    pub fn first_sound(&self) -> Option<usize> {
        self.samples
            .iter()
            .position(|s| *s != T::SILENCE)
            .map(|i| i / self.channels)
    }
}

impl<T: Sample> CaptureSink<T> for Recorder<T> {
    fn push(&mut self, samples: &[T], info: &ChunkInfo) -> usize {
        let frames = samples.len() / self.channels;
        if info.flags & flags::XRUN != 0 && self.first_xrun_frame.is_none() {
            self.first_xrun_frame = Some(self.frames() as u64);
        }
        let room = (self.samples.capacity() - self.samples.len()) / self.channels;
        let keep = frames.min(room);
        // Within capacity: no allocation.
        self.samples
            .extend_from_slice(&samples[..keep * self.channels]);
        self.overflow_frames += (frames - keep) as u64;
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pos: u64, capture_pos: u64, ch: u32) -> ChunkInfo {
        ChunkInfo {
            sample_pos: pos,
            timestamp_ns: 0,
            flags: 0,
            capture_pos,
            channels: ch,
        }
    }

    #[test]
    fn round_trip_is_write_to_read_on_the_capture_clock() {
        // A "device" that plays what it was given 200 frames later, in 64-frame periods: each
        // period the capture is read first, then the playback is written (as Duplex::run
        // does). Playback position p is written in the wake-up whose clock is p (one period of
        // lead after the prefill) and lands at capture index p + 200, which is read in the
        // wake-up whose clock is the end of its period.
        let probe = ImpulseProbe::new(640, 0, 0.5, 16);
        let (mut src, mut det) = (probe.source(), probe.detector());
        let mut line = vec![0i16; 2 * 20_000];
        let q = 64usize;
        let delay = 200usize;
        let mut ppos = 0usize;
        ppos += PlaybackSource::<i16>::pull(
            &mut src,
            &mut line[2 * delay..2 * (delay + q)],
            &info(0, 0, 2),
        );
        for k in 0..200usize {
            let c0 = (k * q) as u64;
            let clock = c0 + q as u64;
            let s = &line[2 * k * q..2 * (k + 1) * q];
            CaptureSink::<i16>::push(&mut det, s, &info(c0, clock, 2));
            let at = 2 * (delay + ppos);
            PlaybackSource::<i16>::pull(
                &mut src,
                &mut line[at..at + 2 * q],
                &info(ppos as u64, clock, 2),
            );
            ppos += q;
        }
        // The impulse at p = 640 is written at clock 640, comes back at index 840, read in
        // the wake-up with clock 896: 256 frames, the delay rounded up to whole periods.
        let rts = probe.round_trips();
        assert!(rts.len() >= 15, "{rts:?}");
        assert!(rts.iter().all(|r| *r == 256), "{rts:?}");
        assert_eq!(probe.chunk_gcd(), 64);
        assert_eq!(probe.unmatched(), 0);
        let st = probe.stats().unwrap();
        assert_eq!((st.p50, st.p99, st.max), (256, 256, 256));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=200).collect();
        let s = RoundTripStats::from_frames(&v).unwrap();
        assert_eq!(
            (s.min, s.p50, s.p99, s.max, s.count),
            (1, 100, 198, 200, 200)
        );
        assert!(RoundTripStats::from_frames(&[]).is_none());
    }

    #[test]
    fn pattern_is_never_silent() {
        for i in 0..10_000 {
            assert_ne!(pattern_sample::<i16>(i), 0);
            assert_ne!(pattern_sample::<i32>(i), 0);
            assert_ne!(pattern_sample::<f32>(i), 0.0);
        }
    }
}
