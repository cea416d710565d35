//! A clocked synthetic device: capture and playback at the exact sample rate, paced against
//! CLOCK_MONOTONIC, for machines without a sound card.
//!
//! Period `k` ends at frame `(k + 1) * period`; its deadline is the instant that frame is due,
//! `origin + ceil((k + 1) * period * 1e9 / rate)` nanoseconds, computed from the frame count
//! every time (never by adding period lengths), and the device sleeps to it with
//! `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`. A late wake-up does not shift the clock:
//! the device hands over every period that is due at once, so after each wake-up the frames
//! handed over lag the clock by less than one period, however long the run.
//!
//! With loopback, what is played comes back in the capture `delay` frames later, bit-exact,
//! through the device's own buffer (the playback source writes into it and the capture sink
//! reads from it: no extra copy). Without it, the capture is silence.
//!
//! Like hardware, the device has a finite buffer: if the thread is so late that more than
//! `buffer_frames` are due beyond what was handed over, the excess is dropped and counted as an
//! xrun on both sides: the capture loses those frames, and the playback played silence for them
//! (which is what comes back in the loopback). The source is not asked for the frames dropped:
//! the periods run after the xrun take its next frames, in order, as an ALSA playback stream
//! refilled from its source after an xrun does (`alsa_pcm`'s module docs), and the first chunk
//! after it on each side is flagged [`flags::XRUN`].

use rustix::thread::{ClockId, clock_nanosleep_absolute};
use rustix::time::Timespec;

use super::{
    AccessMode, CaptureSink, ChunkInfo, Granted, PlaybackSource, Sample, StreamParams, XrunCounts,
    flags, monotonic_ns,
};

/// The synthetic device. See the module documentation.
///
/// ```
/// use voxring_linux::audio::loopback::{PatternSource, Recorder};
/// use voxring_linux::audio::StreamParams;
/// use voxring_linux::audio::synthetic::SyntheticDevice;
/// let p = StreamParams { period_frames: 64, buffer_frames: 128, ..StreamParams::DEFAULT };
/// // Playback comes back in the capture 100 frames later.
/// let mut dev = SyntheticDevice::<i16>::new(&p, Some(100))?;
/// let mut rec = Recorder::<i16>::new(1024, p.channels);
/// let mut src = PatternSource::new(0, 64);
/// while dev.clock_frames() < 512 {
///     dev.run_due(&mut rec, &mut src); // sleeps until the next period is due
/// }
/// assert_eq!(rec.first_sound(), Some(100));
/// # Ok::<(), voxring_linux::audio::AudioError>(())
/// ```
#[derive(Debug)]
pub struct SyntheticDevice<T: Sample> {
    params: StreamParams,
    delay: Option<u32>,
    /// The device buffer: playback is written here and captured back `delay` frames later.
    /// `(delay + period)` frames, interleaved; empty without loopback.
    line: Vec<T>,
    /// One period of silence, for capture without loopback.
    silence: Vec<T>,
    origin_ns: u64,
    /// Frames of the device clock processed so far (including frames dropped in xruns).
    clock_frames: u64,
    capture_pos: u64,
    playback_pos: u64,
    xruns: XrunCounts,
    pending_flags: u32,
    silence_frames: u64,
    started: bool,
}

impl<T: Sample> SyntheticDevice<T> {
    /// A device running at `params` (granted exactly as asked). `loopback_delay`: `Some(d)` to
    /// hear the playback in the capture `d` frames later, `None` for a silent capture.
    pub fn new(
        params: &StreamParams,
        loopback_delay: Option<u32>,
    ) -> Result<Self, super::AudioError> {
        params.validate()?;
        let ch = params.channels as usize;
        let line = match loopback_delay {
            Some(d) => vec![T::SILENCE; (d as usize + params.period_frames as usize) * ch],
            None => Vec::new(),
        };
        Ok(SyntheticDevice {
            params: *params,
            delay: loopback_delay,
            line,
            silence: vec![T::SILENCE; params.period_frames as usize * ch],
            origin_ns: 0,
            clock_frames: 0,
            capture_pos: 0,
            playback_pos: 0,
            xruns: XrunCounts::default(),
            pending_flags: 0,
            silence_frames: 0,
            started: false,
        })
    }

    /// What the device runs at (always exactly what was asked).
    pub fn granted(&self) -> Granted {
        Granted {
            rate: self.params.rate,
            channels: self.params.channels,
            period_frames: self.params.period_frames,
            buffer_frames: self.params.buffer_frames,
            format: T::SAMPLE_FORMAT,
            // Not an ALSA device: nothing was granted by ALSA.
            alsa_access: "none (synthetic)",
            mode: AccessMode::Synthetic,
        }
    }

    /// The loopback delay in frames, if the playback loops back into the capture.
    pub fn loopback_delay(&self) -> Option<u32> {
        self.delay
    }

    /// CLOCK_MONOTONIC nanoseconds at which frame 0 was due (set by [`Self::start`]).
    pub fn origin_ns(&self) -> u64 {
        self.origin_ns
    }

    /// Frames of the device clock elapsed at CLOCK_MONOTONIC `t_ns`:
    /// `floor((t - origin) * rate / 1e9)`.
    pub fn frames_due_at(&self, t_ns: u64) -> u64 {
        let dt = t_ns.saturating_sub(self.origin_ns) as u128;
        (dt * self.params.rate as u128 / 1_000_000_000) as u64
    }

    /// The CLOCK_MONOTONIC instant at which frame `frames` is due:
    /// `origin + ceil(frames * 1e9 / rate)`.
    pub fn deadline_ns(&self, frames: u64) -> u64 {
        let r = self.params.rate as u128;
        self.origin_ns + ((frames as u128 * 1_000_000_000).div_ceil(r)) as u64
    }

    /// Frames of the device clock processed so far, including any dropped in xruns.
    pub fn clock_frames(&self) -> u64 {
        self.clock_frames
    }

    /// Frames handed to the capture sink so far.
    pub fn capture_position(&self) -> u64 {
        self.capture_pos
    }

    /// Frames taken from the playback source so far.
    pub fn playback_position(&self) -> u64 {
        self.playback_pos
    }

    /// xruns so far.
    pub fn xruns(&self) -> XrunCounts {
        self.xruns
    }

    /// Playback frames filled with silence because the source had none.
    pub fn silence_frames(&self) -> u64 {
        self.silence_frames
    }

    /// Starts the clock now (frame 0 is due now).
    pub fn start(&mut self) {
        self.origin_ns = monotonic_ns();
        self.clock_frames = 0;
        self.started = true;
    }

    /// Sleeps until the next period is due, then runs every period that is due: pulls it from
    /// `source` and pushes the capture to `sink`. Returns the number of periods run.
    /// Real-time safe: one `clock_nanosleep` to an absolute deadline, no allocation, lock or
    /// print.
    pub fn run_due<C: CaptureSink<T>, P: PlaybackSource<T>>(
        &mut self,
        sink: &mut C,
        source: &mut P,
    ) -> u32 {
        self.run_due_at_most(sink, source, u32::MAX)
    }

    /// [`Self::run_due`], running at most `max_periods` periods (the rest stay due).
    pub fn run_due_at_most<C: CaptureSink<T>, P: PlaybackSource<T>>(
        &mut self,
        sink: &mut C,
        source: &mut P,
        max_periods: u32,
    ) -> u32 {
        if !self.started {
            self.start();
        }
        let period = u64::from(self.params.period_frames);
        let next = self.deadline_ns(self.clock_frames + period);
        let ts = Timespec {
            tv_sec: (next / 1_000_000_000) as i64,
            tv_nsec: (next % 1_000_000_000) as i64,
        };
        // EINTR: we re-read the clock below and simply run fewer periods this time.
        let _ = clock_nanosleep_absolute(ClockId::Monotonic, &ts);
        self.run_due_at(monotonic_ns(), sink, source, max_periods)
    }

    /// Runs the periods due at CLOCK_MONOTONIC `now` (at most `max_periods`) without waiting:
    /// [`Self::run_due_at_most`] after its sleep. Its tests drive the device with a clock of
    /// their own through it, so that what they check does not depend on how fast this machine
    /// runs them.
    fn run_due_at<C: CaptureSink<T>, P: PlaybackSource<T>>(
        &mut self,
        now: u64,
        sink: &mut C,
        source: &mut P,
        max_periods: u32,
    ) -> u32 {
        let period = u64::from(self.params.period_frames);
        let due = self.frames_due_at(now);
        // Hardware with a buffer of `buffer_frames` would have overrun by now: drop the excess.
        let buffer = u64::from(self.params.buffer_frames);
        if due > self.clock_frames + buffer + period {
            let skip = (due - self.clock_frames - buffer) / period * period;
            // The device played silence for the frames it dropped: that is what the loopback
            // brings back (not what the line held from an earlier turn).
            if self.delay.is_some() {
                let ch = self.params.channels as usize;
                let len = self.line.len() / ch;
                let w = (self.clock_frames % len as u64) as usize;
                for (start, n) in split(w, skip.min(len as u64) as usize, len) {
                    self.line[start * ch..(start + n) * ch].fill(T::SILENCE);
                }
            }
            self.clock_frames += skip;
            self.xruns.capture += 1;
            self.xruns.playback += 1;
            self.pending_flags |= flags::XRUN;
        }
        let mut ran = 0;
        while self.clock_frames + period <= due && ran < max_periods {
            self.run_period(sink, source, now);
            ran += 1;
        }
        ran
    }

    fn run_period<C: CaptureSink<T>, P: PlaybackSource<T>>(
        &mut self,
        sink: &mut C,
        source: &mut P,
        now: u64,
    ) {
        let ch = self.params.channels as usize;
        let p = self.params.period_frames as usize;
        let flags = self.pending_flags;
        self.pending_flags = 0;
        // The duplex clock of this period: the capture position once it is delivered.
        let capture_pos = self.capture_pos + p as u64;
        let info = |pos| ChunkInfo {
            sample_pos: pos,
            timestamp_ns: now,
            flags,
            capture_pos,
            channels: ch as u32,
        };
        match self.delay {
            Some(d) => {
                let len = self.line.len() / ch; // frames in the line: d + p
                // Playback: the source writes this period straight into the line.
                let w = (self.clock_frames % len as u64) as usize;
                let mut got_total = 0;
                let mut short = false;
                for (start, n) in split(w, p, len) {
                    let s = &mut self.line[start * ch..(start + n) * ch];
                    let got = if short {
                        0
                    } else {
                        source
                            .pull(s, &info(self.playback_pos + got_total as u64))
                            .min(n)
                    };
                    s[got * ch..].fill(T::SILENCE);
                    short |= got < n;
                    got_total += got;
                }
                self.playback_pos += got_total as u64;
                self.silence_frames += (p - got_total) as u64;
                // Capture: the sink reads the frames played `d` frames ago, straight from the line.
                let r = ((self.clock_frames + len as u64 - d as u64) % len as u64) as usize;
                let mut took_total = 0;
                for (start, n) in split(r, p, len) {
                    let s = &self.line[start * ch..(start + n) * ch];
                    let took = sink
                        .push(s, &info(self.capture_pos + took_total as u64))
                        .min(n);
                    took_total += took;
                    if took < n {
                        break;
                    }
                }
                self.finish_capture(took_total, p);
            }
            None => {
                let got = source
                    .pull(&mut self.silence, &info(self.playback_pos))
                    .min(p);
                self.playback_pos += got as u64;
                self.silence_frames += (p - got) as u64;
                self.silence.fill(T::SILENCE);
                let took = sink.push(&self.silence, &info(self.capture_pos)).min(p);
                self.finish_capture(took, p);
            }
        }
        self.clock_frames += p as u64;
    }

    fn finish_capture(&mut self, took: usize, p: usize) {
        self.capture_pos += took as u64;
        if took < p {
            // The sink could not keep up: like a full hardware buffer, the rest is lost.
            self.xruns.capture += 1;
            self.pending_flags |= flags::XRUN;
        }
    }
}

/// Splits `n` frames starting at `start` in a circular buffer of `len` frames into at most two
/// contiguous runs `(start, frames)`.
fn split(start: usize, n: usize, len: usize) -> impl Iterator<Item = (usize, usize)> {
    let first = n.min(len - start);
    let second = n - first;
    core::iter::once((start, first)).chain((second > 0).then_some((0, second)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_wraps() {
        assert_eq!(split(0, 4, 10).collect::<Vec<_>>(), vec![(0, 4)]);
        assert_eq!(split(8, 4, 10).collect::<Vec<_>>(), vec![(8, 2), (0, 2)]);
        assert_eq!(split(6, 4, 10).collect::<Vec<_>>(), vec![(6, 4)]);
    }

    #[test]
    fn after_an_xrun_the_source_goes_on_and_the_loopback_brings_back_silence() {
        /// Plays 1, 2, 3, ... (mono).
        struct Count(i32);
        impl PlaybackSource<i32> for Count {
            fn pull(&mut self, out: &mut [i32], _: &ChunkInfo) -> usize {
                for s in out.iter_mut() {
                    self.0 += 1;
                    *s = self.0;
                }
                out.len()
            }
        }
        /// Keeps every captured sample with its chunk's flags.
        struct Keep(Vec<(i32, u32)>);
        impl CaptureSink<i32> for Keep {
            fn push(&mut self, s: &[i32], info: &ChunkInfo) -> usize {
                self.0.extend(s.iter().map(|&v| (v, info.flags)));
                s.len()
            }
        }
        let params = StreamParams {
            rate: 48_000,
            channels: 1,
            period_frames: 64,
            buffer_frames: 128,
        };
        let mut d = SyntheticDevice::<i32>::new(&params, Some(128)).unwrap();
        let (mut src, mut sink) = (Count(0), Keep(Vec::new()));
        d.start();
        // The test's own clock, one period at a time (`late_ns` after it is due): a stall of
        // the machine running the test changes nothing.
        fn next_period(
            d: &mut SyntheticDevice<i32>,
            sink: &mut Keep,
            src: &mut Count,
            late_ns: u64,
        ) {
            let t = d.deadline_ns(d.clock_frames() + 64) + late_ns;
            d.run_due_at(t, sink, src, u32::MAX);
        }
        while d.clock_frames() < 1024 {
            next_period(&mut d, &mut sink, &mut src, 0);
        }
        // A stall of one second: the next period runs a second late.
        let before = sink.0.len();
        next_period(&mut d, &mut sink, &mut src, 1_000_000_000);
        assert!(
            d.clock_frames() > 1024 + 47_000,
            "the stall's frames were dropped"
        );
        let end = d.clock_frames() + 512;
        while d.clock_frames() < end {
            next_period(&mut d, &mut sink, &mut src, 0);
        }
        assert_eq!((d.xruns().capture, d.xruns().playback), (1, 1));
        assert_eq!(
            d.silence_frames(),
            0,
            "the source was asked for every period run"
        );
        assert_eq!(
            d.playback_position(),
            src.0 as u64,
            "the source's frames, in order"
        );
        let after = &sink.0[before..];
        assert!(
            after[0].1 & flags::XRUN != 0,
            "the first chunk after it is flagged"
        );
        // The loopback: what was played before the stall, then silence for what the device
        // dropped, then the source's next frames in order; never a frame heard twice.
        let heard: Vec<i32> = sink.0.iter().map(|x| x.0).filter(|&v| v != 0).collect();
        assert!(after[0].0 == 0, "the device played silence in the stall");
        assert!(
            heard.windows(2).all(|w| w[1] > w[0]),
            "a frame came back twice (the line's stale content)"
        );
    }

    #[test]
    fn deadlines_are_exact_frame_times() {
        let params = StreamParams {
            rate: 44_100,
            channels: 1,
            period_frames: 64,
            buffer_frames: 128,
        };
        let d = SyntheticDevice::<f32>::new(&params, None).unwrap();
        // origin 0: frame 44100 is due at exactly 1 s; deadlines round up to whole ns.
        assert_eq!(d.deadline_ns(44_100), 1_000_000_000);
        assert_eq!(d.deadline_ns(1), 22_676); // 22675.73.. ns rounded up
        for f in [0u64, 1, 63, 64, 44_099, 44_100, 10_000_000] {
            assert_eq!(d.frames_due_at(d.deadline_ns(f)), f, "frame {f}");
            if f > 0 {
                assert_eq!(d.frames_due_at(d.deadline_ns(f) - 1), f - 1, "frame {f}");
            }
        }
    }
}
