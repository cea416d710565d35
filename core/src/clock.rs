//! Frame clock: a delay-locked loop (DLL) that turns noisy `(sample position, timestamp)`
//! pairs into a smooth estimate of a device's real sample rate and of when any sample position
//! is (or was) played or captured.
//!
//! This is the second-order loop that JACK and PipeWire use (after F. Adriaensen, "Using a DLL
//! to filter time", 2005), written in samples rather than in fixed periods so the gap between
//! two updates may vary. With `n` samples since the last update, `p` the predicted time of the
//! new position and `t` the measured one:
//!
//! ```text
//! e      = t - p                           (phase error, ns)
//! ω      = 2π · bandwidth · n / nominal_rate   (clamped to MAX_OMEGA)
//! base  ← p + √2·ω · e                     (smoothed time of this position)
//! ns/sample ← ns/sample + ω² · e / n       (smoothed period of one sample)
//! ```
//!
//! The loop is critically damped (ζ ≈ 0.707) for small ω and stable for ω < 1.03; ω is clamped
//! to [`MAX_OMEGA`] so a long gap between updates cannot make it ring or diverge.
//!
//! Timestamps are kept as an integer nanosecond base plus an `f64` fraction, and every
//! computation works on *differences*, so the `f64` precision (53 bits) is spent on the
//! distance between updates, not on the clock's absolute value (a `CLOCK_MONOTONIC` reading
//! after months of uptime still predicts to well under a nanosecond of rounding).
//!
//! Pure arithmetic: `+ - * /` on `f64`, no `std`, no libm, no allocation, no shared state.
//!
//! ```
//! use voxring_core::clock::{FrameClock, Update};
//!
//! // A 48 kHz device whose crystal runs 50 ppm fast, reporting every 480 samples.
//! let mut clock = FrameClock::new(48_000.0, 1.0).unwrap();
//! let true_ns_per_sample = 1e9 / (48_000.0 * (1.0 + 50e-6));
//! for i in 0..2_000u64 {
//!     let pos = i * 480;
//!     let t = 1_000_000_000 + (pos as f64 * true_ns_per_sample) as u64;
//!     clock.update(pos, t);
//! }
//! assert!((clock.drift_ppm().unwrap() - 50.0).abs() < 0.5);
//! // When will sample 1_000_000 be captured?
//! let t = clock.predict_ns(1_000_000).unwrap();
//! let exact = 1_000_000_000.0 + 1_000_000.0 * true_ns_per_sample;
//! assert!((t as f64 - exact).abs() < 1_000.0);
//! ```

/// The largest loop gain ω used for one update. The loop is stable for ω < 1.03 (see the
/// module docs); 0.5 keeps it well damped when updates are rare.
pub const MAX_OMEGA: f64 = 0.5;

/// Default largest phase error (ns) treated as jitter; a larger one restarts the loop.
pub const DEFAULT_MAX_ERROR_NS: u64 = 20_000_000;

/// Default largest deviation (ppm) of the estimated rate from the nominal one; beyond it the
/// rate estimate is thrown away and the loop restarts at the nominal rate.
pub const DEFAULT_MAX_DRIFT_PPM: f64 = 2_000.0;

const TWO_PI: f64 = core::f64::consts::TAU;
const SQRT_2: f64 = core::f64::consts::SQRT_2;

/// Why [`FrameClock::new`] or a setter refused a parameter.
///
/// ```
/// use voxring_core::clock::{ClockConfigError, FrameClock};
/// assert_eq!(FrameClock::new(0.0, 1.0).unwrap_err(), ClockConfigError::InvalidRate(0.0));
/// assert!(FrameClock::new(48_000.0, 1.0e6).is_err()); // bandwidth above rate / 4
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClockConfigError {
    /// The nominal sample rate must be a finite number of samples per second in
    /// `(0, 1e9]`, e.g. `48_000.0`.
    InvalidRate(f64),
    /// The loop bandwidth must be finite and in `(0, nominal_rate / 4]` Hz; JACK and PipeWire
    /// use 0.05 to a few Hz.
    InvalidBandwidth(f64),
    /// The drift limit must be finite and in `(0, 1e5]` ppm.
    InvalidDriftLimit(f64),
}

error_message!(ClockConfigError, |self, f| {
    match self {
        Self::InvalidRate(r) => write!(
            f,
            "nominal sample rate {r} Hz is not usable: it must be finite and in (0, 1e9]; \
             pass the device's configured rate, e.g. 48000"
        ),
        Self::InvalidBandwidth(b) => write!(
            f,
            "DLL bandwidth {b} Hz is not usable: it must be finite, above 0 and at most a \
             quarter of the sample rate; 0.1 to 2 Hz is typical"
        ),
        Self::InvalidDriftLimit(d) => write!(
            f,
            "drift limit {d} ppm is not usable: it must be finite and in (0, 100000]; \
             real crystals drift well under 1000 ppm"
        ),
    }
});

/// Why the loop threw away its phase (and maybe its rate) and started again at an update.
///
/// ```
/// use voxring_core::clock::{Discontinuity, FrameClock, Update};
/// let mut clock = FrameClock::new(48_000.0, 1.0).unwrap();
/// clock.update(4_800, 100_000_000);
/// // The position went back: the device restarted; the loop starts again from here.
/// assert_eq!(
///     clock.update(0, 200_000_000),
///     Update::Restarted(Discontinuity::PositionBackwards)
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discontinuity {
    /// The sample position went backwards (a stream restart or a new device).
    PositionBackwards,
    /// The timestamp went backwards while the position advanced (a bad clock source).
    TimeBackwards,
    /// The measured time differed from the prediction by more than the error limit (an xrun,
    /// a suspend, a position counter that skipped). The rate estimate is kept.
    ErrorTooLarge {
        /// Measured minus predicted time, ns (saturated to the `i64` range).
        error_ns: i64,
    },
    /// The rate estimate left `nominal ± max_drift_ppm`; it restarts at the nominal rate.
    RateOutOfRange,
}

/// What one [`FrameClock::update`] did.
///
/// ```
/// use voxring_core::clock::{FrameClock, Update};
/// let mut clock = FrameClock::new(48_000.0, 1.0).unwrap();
/// assert_eq!(clock.update(0, 1_000_000), Update::Started);
/// assert_eq!(clock.update(0, 1_000_500), Update::Ignored); // same position
/// // 480 samples 10 ms later: on time.
/// assert!(matches!(clock.update(480, 11_000_000), Update::Tracking { .. }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Update {
    /// The first pair since creation or [`FrameClock::reset`]: the loop starts here.
    Started,
    /// The pair was folded into the estimate.
    Tracking {
        /// Measured minus predicted time for this position, ns (before the correction).
        error_ns: f64,
    },
    /// The same position as the last update: nothing changed.
    Ignored,
    /// The pair did not fit the running estimate; the loop restarted from it.
    Restarted(Discontinuity),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Lock {
    /// Sample position of the last update.
    base_pos: u64,
    /// Smoothed time of `base_pos`: `base_ns + base_frac` nanoseconds, `base_frac` in [0, 1).
    base_ns: u64,
    base_frac: f64,
    /// Smoothed length of one sample, ns.
    ns_per_sample: f64,
    /// Updates folded in since the loop (re)started.
    updates: u64,
    last_error_ns: f64,
}

/// A delay-locked loop over a sample clock. See the [module docs](self).
///
/// Plain data (`Copy`, no atomics): keep one per stream, on the thread that sees the
/// timestamps, and publish results through a [`ControlRegister`](crate::control) if other
/// threads need them.
///
/// ```
/// use voxring_core::clock::FrameClock;
/// // A 48 kHz device whose crystal runs 100 ppm fast, read every 10 ms.
/// let mut clock = FrameClock::new(48_000.0, 1.0).unwrap();
/// let true_rate = 48_000.0 * (1.0 + 100e-6);
/// for i in 0..6_000u64 {
///     let t = i * 10_000_000;
///     let pos = (t as f64 * true_rate / 1e9) as u64;
///     clock.update(pos, t);
/// }
/// let drift = clock.drift_ppm().unwrap();
/// assert!((drift - 100.0).abs() < 20.0, "{drift}");
/// // Where sample 960_000 will be played:
/// assert!(clock.predict_ns(960_000).is_some());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameClock {
    nominal_rate: f64,
    nominal_ns_per_sample: f64,
    bandwidth_hz: f64,
    max_error_ns: f64,
    max_drift_ppm: f64,
    lock: Option<Lock>,
    resync_pending: bool,
}

fn valid_rate(rate: f64) -> bool {
    rate > 0.0 && rate <= 1e9
}

/// `|x| <= limit`, false for NaN.
fn within(x: f64, limit: f64) -> bool {
    x.abs() <= limit
}

/// `x` rounded down to an integer, as `i64` (saturating), without libm.
fn floor_i64(x: f64) -> i64 {
    let i = x as i64;
    if (i as f64) > x {
        i.saturating_sub(1)
    } else {
        i
    }
}

/// `a - b` as a float, negative when `b > a` (exact where the unsigned difference is).
fn signed_diff(a: u64, b: u64) -> f64 {
    if a >= b {
        (a - b) as f64
    } else {
        -((b - a) as f64)
    }
}

/// `x` rounded to the nearest integer, as `i64` (saturating, NaN → 0), without libm.
fn round_i64(x: f64) -> i64 {
    floor_i64(x + 0.5)
}

impl FrameClock {
    /// A clock for a stream whose nominal rate is `nominal_rate_hz` samples per second, with a
    /// loop bandwidth of `bandwidth_hz` (lower: smoother but slower to follow; JACK uses about
    /// 1 Hz, PipeWire moves from 0.128 Hz up to 0.256 Hz).
    ///
    /// # Errors
    /// [`ClockConfigError`] for a rate outside `(0, 1e9]` or a bandwidth outside
    /// `(0, rate / 4]` (NaN and infinities included).
    pub fn new(nominal_rate_hz: f64, bandwidth_hz: f64) -> Result<Self, ClockConfigError> {
        if !valid_rate(nominal_rate_hz) {
            return Err(ClockConfigError::InvalidRate(nominal_rate_hz));
        }
        let mut clock = Self {
            nominal_rate: nominal_rate_hz,
            nominal_ns_per_sample: 1e9 / nominal_rate_hz,
            bandwidth_hz: 1.0,
            max_error_ns: DEFAULT_MAX_ERROR_NS as f64,
            max_drift_ppm: DEFAULT_MAX_DRIFT_PPM,
            lock: None,
            resync_pending: false,
        };
        clock.set_bandwidth(bandwidth_hz)?;
        Ok(clock)
    }

    /// Changes the loop bandwidth from the next update on (the estimate is kept). A common
    /// pattern is a wide bandwidth while locking and a narrow one once locked.
    ///
    /// # Errors
    /// [`ClockConfigError::InvalidBandwidth`] outside `(0, nominal_rate / 4]`.
    pub fn set_bandwidth(&mut self, bandwidth_hz: f64) -> Result<(), ClockConfigError> {
        if !(bandwidth_hz > 0.0 && bandwidth_hz <= self.nominal_rate / 4.0) {
            return Err(ClockConfigError::InvalidBandwidth(bandwidth_hz));
        }
        self.bandwidth_hz = bandwidth_hz;
        Ok(())
    }

    /// Sets the largest phase error treated as jitter (default [`DEFAULT_MAX_ERROR_NS`]);
    /// a larger error restarts the loop's phase. Builder style.
    #[must_use]
    pub fn with_max_error_ns(mut self, max_error_ns: u64) -> Self {
        self.max_error_ns = max_error_ns as f64;
        self
    }

    /// Sets the largest believable drift (default [`DEFAULT_MAX_DRIFT_PPM`]).
    ///
    /// # Errors
    /// [`ClockConfigError::InvalidDriftLimit`] outside `(0, 1e5]`.
    pub fn with_max_drift_ppm(mut self, max_drift_ppm: f64) -> Result<Self, ClockConfigError> {
        if !(max_drift_ppm > 0.0 && max_drift_ppm <= 1e5) {
            return Err(ClockConfigError::InvalidDriftLimit(max_drift_ppm));
        }
        self.max_drift_ppm = max_drift_ppm;
        Ok(self)
    }

    /// The nominal rate given at creation, samples per second.
    pub fn nominal_rate_hz(&self) -> f64 {
        self.nominal_rate
    }

    /// The loop bandwidth, Hz.
    pub fn bandwidth_hz(&self) -> f64 {
        self.bandwidth_hz
    }

    /// Forgets everything: the next update starts the loop again at the nominal rate
    /// (use it when a frame carries the `DISCONTINUITY` flag and the device was reopened).
    pub fn reset(&mut self) {
        self.lock = None;
        self.resync_pending = false;
    }

    /// Forgets the phase but keeps the rate estimate: the next update restarts the loop from
    /// its pair (use it after an xrun on the same device, whose crystal did not change).
    pub fn resync(&mut self) {
        self.resync_pending = self.lock.is_some();
    }

    fn start(&mut self, pos: u64, time_ns: u64, ns_per_sample: f64) {
        self.lock = Some(Lock {
            base_pos: pos,
            base_ns: time_ns,
            base_frac: 0.0,
            ns_per_sample,
            updates: 0,
            last_error_ns: 0.0,
        });
    }

    /// Feeds one measurement: sample `pos` was captured (or played) at `time_ns` on the
    /// caller's clock (e.g. `CLOCK_MONOTONIC`). Call it once per period with the position of
    /// the period's first sample and the best timestamp you have for it.
    ///
    /// Never panics and never fails: a pair that does not fit restarts the loop, and the
    /// returned [`Update`] says so and why.
    pub fn update(&mut self, pos: u64, time_ns: u64) -> Update {
        let Some(lock) = self.lock else {
            self.start(pos, time_ns, self.nominal_ns_per_sample);
            return Update::Started;
        };
        if self.resync_pending {
            self.resync_pending = false;
            self.start(pos, time_ns, lock.ns_per_sample);
            return Update::Started;
        }
        if pos == lock.base_pos {
            return Update::Ignored;
        }
        if pos < lock.base_pos {
            self.start(pos, time_ns, lock.ns_per_sample);
            return Update::Restarted(Discontinuity::PositionBackwards);
        }
        if time_ns < lock.base_ns {
            self.start(pos, time_ns, lock.ns_per_sample);
            return Update::Restarted(Discontinuity::TimeBackwards);
        }
        let n = (pos - lock.base_pos) as f64;
        // Offset of the measured time from the integer base: exact in f64 up to 2^53 ns
        // (104 days) between two updates, far beyond any real gap.
        let measured = (time_ns - lock.base_ns) as f64;
        let predicted = lock.base_frac + n * lock.ns_per_sample;
        let error = measured - predicted;
        if !within(error, self.max_error_ns) {
            let error_ns = round_i64(error);
            self.start(pos, time_ns, lock.ns_per_sample);
            return Update::Restarted(Discontinuity::ErrorTooLarge { error_ns });
        }

        let mut omega = TWO_PI * self.bandwidth_hz * n / self.nominal_rate;
        if omega > MAX_OMEGA {
            omega = MAX_OMEGA;
        }
        let b = SQRT_2 * omega;
        let c = omega * omega;
        let ns_per_sample = lock.ns_per_sample + c * error / n;
        let drift = (self.nominal_ns_per_sample / ns_per_sample - 1.0) * 1e6;
        if !within(drift, self.max_drift_ppm) {
            self.start(pos, time_ns, self.nominal_ns_per_sample);
            return Update::Restarted(Discontinuity::RateOutOfRange);
        }
        let new_base = predicted + b * error; // ns after `base_ns`, >= 0 (see below)
        // new_base = (1-b)·predicted + b·measured with 0 < b < 1 and both terms >= 0 (up to
        // base_frac < 1), so floor_i64 cannot go far negative; saturate anyway.
        let whole = floor_i64(new_base);
        let base_ns = if whole >= 0 {
            lock.base_ns.saturating_add(whole as u64)
        } else {
            lock.base_ns.saturating_sub(whole.unsigned_abs())
        };
        self.lock = Some(Lock {
            base_pos: pos,
            base_ns,
            base_frac: new_base - whole as f64,
            ns_per_sample,
            updates: lock.updates + 1,
            last_error_ns: error,
        });
        Update::Tracking { error_ns: error }
    }

    /// `true` once at least one update after the first has been folded in since the last
    /// (re)start, i.e. rate, drift and predictions reflect measurements.
    pub fn is_tracking(&self) -> bool {
        self.lock.is_some_and(|l| l.updates > 0)
    }

    /// Updates folded in since the loop last (re)started.
    pub fn updates_since_start(&self) -> u64 {
        self.lock.map_or(0, |l| l.updates)
    }

    /// The phase error of the last folded-in update, ns (measured minus predicted).
    pub fn last_error_ns(&self) -> Option<f64> {
        self.lock.filter(|l| l.updates > 0).map(|l| l.last_error_ns)
    }

    /// The smoothed rate, samples per second of the caller's clock; `None` before the first
    /// update.
    pub fn rate_hz(&self) -> Option<f64> {
        self.lock.map(|l| 1e9 / l.ns_per_sample)
    }

    /// The smoothed length of one sample, ns; `None` before the first update.
    pub fn ns_per_sample(&self) -> Option<f64> {
        self.lock.map(|l| l.ns_per_sample)
    }

    /// How far the device's rate is from nominal, parts per million (positive: the device
    /// produces or consumes samples faster than nominal); `None` before the first update.
    pub fn drift_ppm(&self) -> Option<f64> {
        self.rate_hz().map(|r| (r / self.nominal_rate - 1.0) * 1e6)
    }

    /// The predicted time (ns on the caller's clock) of sample position `pos`, past or future.
    /// `None` before the first update or when the result would not fit in a `u64`.
    pub fn predict_ns(&self, pos: u64) -> Option<u64> {
        let l = self.lock?;
        let offset = l.base_frac + signed_diff(pos, l.base_pos) * l.ns_per_sample;
        let whole = round_i64(offset);
        if whole >= 0 {
            l.base_ns.checked_add(whole as u64)
        } else {
            l.base_ns.checked_sub(whole.unsigned_abs())
        }
    }

    /// The sample position (rounded down) the stream is predicted to be at at `time_ns`; the
    /// inverse of [`predict_ns`](Self::predict_ns). `None` before the first update or when
    /// the result would not fit in a `u64`.
    pub fn predict_pos(&self, time_ns: u64) -> Option<u64> {
        let l = self.lock?;
        let dt = signed_diff(time_ns, l.base_ns) - l.base_frac;
        let samples = floor_i64(dt / l.ns_per_sample);
        if samples >= 0 {
            l.base_pos.checked_add(samples as u64)
        } else {
            l.base_pos.checked_sub(samples.unsigned_abs())
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;

    /// A small deterministic generator (xorshift64*) for jitter.
    struct Rng(u64);
    impl Rng {
        fn next_f64(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }
        /// Uniform in [-a, a].
        fn jitter(&mut self, a: f64) -> f64 {
            (self.next_f64() * 2.0 - 1.0) * a
        }
    }

    /// Feeds `updates` periods of `period` samples from a device running at
    /// `nominal·(1 + drift_ppm·1e-6)`, with uniform timestamp jitter of ±`jitter_ns`.
    fn run(
        clock: &mut FrameClock,
        drift_ppm: f64,
        period: u64,
        jitter_ns: f64,
        updates: u64,
        seed: u64,
    ) -> f64 {
        let ns = 1e9 / (clock.nominal_rate_hz() * (1.0 + drift_ppm * 1e-6));
        let t0 = 5_000_000_000_000u64; // ~83 minutes of uptime
        let mut rng = Rng(seed | 1);
        for i in 0..updates {
            let pos = i * period;
            let t = t0 as f64 + pos as f64 * ns + rng.jitter(jitter_ns);
            clock.update(pos, t as u64);
        }
        ns
    }

    #[test]
    fn converges_to_plus_50_ppm_under_jitter() {
        // A narrow loop, as PipeWire uses: 50 ppm is 1 µs per 21 ms period, far below the
        // jitter, so only heavy smoothing recovers it.
        let mut clock = FrameClock::new(48_000.0, 0.05).unwrap();
        // 1024-sample periods (21 ms), ±200 µs jitter, 60 s of audio.
        let ns = run(&mut clock, 50.0, 1024, 200_000.0, 2_800, 7);
        let drift = clock.drift_ppm().unwrap();
        assert!((drift - 50.0).abs() < 5.0, "drift {drift} ppm, expected 50");
        let rate = clock.rate_hz().unwrap();
        assert!((rate - 48_002.4).abs() < 0.25, "rate {rate}");
        // The prediction of a position 1 s ahead is far better than the raw jitter.
        let pos = 2_800 * 1024 + 48_000;
        let exact = 5_000_000_000_000.0 + pos as f64 * ns;
        let err = clock.predict_ns(pos).unwrap() as f64 - exact;
        assert!(err.abs() < 100_000.0, "prediction off by {err} ns");
    }

    #[test]
    fn converges_to_minus_drift_without_jitter_exactly() {
        let mut clock = FrameClock::new(44_100.0, 2.0).unwrap();
        run(&mut clock, -120.0, 256, 0.0, 5_000, 1);
        let drift = clock.drift_ppm().unwrap();
        assert!((drift + 120.0).abs() < 0.01, "drift {drift}");
        assert!(clock.last_error_ns().unwrap().abs() < 2.0);
    }

    #[test]
    fn narrower_bandwidth_smooths_more() {
        // The spread of the drift estimate over the last updates shrinks with the bandwidth.
        let spread = |bw: f64| {
            let mut clock = FrameClock::new(48_000.0, bw).unwrap();
            run(&mut clock, 30.0, 480, 0.0, 100, 3);
            let ns = 1e9 / (48_000.0 * (1.0 + 30e-6));
            let mut rng = Rng(99);
            let (mut lo, mut hi) = (f64::MAX, f64::MIN);
            for i in 100..4_000u64 {
                let pos = i * 480;
                let t = 5_000_000_000_000.0 + pos as f64 * ns + rng.jitter(100_000.0);
                clock.update(pos, t as u64);
                if i > 2_000 {
                    let d = clock.drift_ppm().unwrap();
                    lo = lo.min(d);
                    hi = hi.max(d);
                }
            }
            hi - lo
        };
        let wide = spread(4.0);
        let narrow = spread(0.25);
        assert!(
            narrow < wide / 4.0,
            "narrow {narrow} ppm vs wide {wide} ppm"
        );
    }

    #[test]
    fn irregular_update_gaps_still_converge() {
        let mut clock = FrameClock::new(48_000.0, 0.1).unwrap();
        let ns = 1e9 / (48_000.0 * (1.0 + 75e-6));
        let mut rng = Rng(42);
        let mut pos = 0u64;
        for _ in 0..3_000 {
            pos += 64 + (rng.next_f64() * 2_000.0) as u64;
            let t = 1e12 + pos as f64 * ns + rng.jitter(50_000.0);
            clock.update(pos, t as u64);
        }
        let drift = clock.drift_ppm().unwrap();
        assert!((drift - 75.0).abs() < 5.0, "drift {drift}");
    }

    #[test]
    fn a_single_huge_gap_does_not_destabilise() {
        let mut clock = FrameClock::new(48_000.0, 1.0).unwrap();
        let ns = run(&mut clock, 20.0, 512, 0.0, 1_000, 5);
        // Ten minutes without an update, then normal again: ω is clamped.
        let mut pos = 1_000 * 512 + 48_000 * 600;
        for _ in 0..500 {
            let t = 5_000_000_000_000.0 + pos as f64 * ns;
            assert!(matches!(
                clock.update(pos, t as u64),
                Update::Tracking { .. }
            ));
            pos += 512;
        }
        assert!((clock.drift_ppm().unwrap() - 20.0).abs() < 0.1);
    }

    #[test]
    fn first_update_starts_at_nominal() {
        let mut clock = FrameClock::new(48_000.0, 1.0).unwrap();
        assert_eq!(clock.rate_hz(), None);
        assert_eq!(clock.predict_ns(0), None);
        assert_eq!(clock.update(100, 1_000), Update::Started);
        assert_eq!(clock.rate_hz(), Some(48_000.0));
        assert_eq!(clock.drift_ppm(), Some(0.0));
        assert!(!clock.is_tracking());
        assert_eq!(clock.predict_ns(100), Some(1_000));
        assert_eq!(clock.predict_ns(100 + 48), Some(1_001_000));
        assert_eq!(clock.predict_ns(100 - 48), None); // would be before time 0
        assert_eq!(clock.predict_pos(1_001_000), Some(148));
        assert_eq!(clock.update(100, 2_000), Update::Ignored);
    }

    #[test]
    fn discontinuities_restart_the_loop() {
        let mut clock = FrameClock::new(48_000.0, 1.0).unwrap();
        run(&mut clock, 40.0, 480, 0.0, 2_000, 1);
        let rate = clock.rate_hz().unwrap();
        let last_pos = 1_999 * 480;
        let t_last = clock.predict_ns(last_pos).unwrap();

        // An xrun: time jumps 100 ms while the position advances one period.
        let r = clock.update(last_pos + 480, t_last + 100_000_000);
        assert!(matches!(
            r,
            Update::Restarted(Discontinuity::ErrorTooLarge { error_ns }) if error_ns > 80_000_000
        ));
        assert!(!clock.is_tracking());
        assert_eq!(
            clock.rate_hz(),
            Some(rate),
            "an xrun keeps the rate estimate"
        );
        assert_eq!(clock.predict_ns(last_pos + 480), Some(t_last + 100_000_000));

        // The position goes backwards: a new stream.
        assert_eq!(
            clock.update(10, t_last + 200_000_000),
            Update::Restarted(Discontinuity::PositionBackwards)
        );
        // Time goes backwards.
        assert_eq!(
            clock.update(1_000, 5),
            Update::Restarted(Discontinuity::TimeBackwards)
        );
        // Explicit reset forgets the rate.
        clock.reset();
        assert_eq!(clock.update(0, 0), Update::Started);
        assert_eq!(clock.rate_hz(), Some(48_000.0));
    }

    #[test]
    fn resync_keeps_rate_but_rebases() {
        let mut clock = FrameClock::new(48_000.0, 1.0).unwrap();
        run(&mut clock, 40.0, 480, 0.0, 2_000, 1);
        let rate = clock.rate_hz().unwrap();
        clock.resync();
        assert_eq!(clock.rate_hz(), Some(rate));
        // A pair that would have been an xrun is taken as the new base instead.
        assert_eq!(clock.update(2_000 * 480, 1), Update::Started);
        assert!(!clock.is_tracking());
        assert_eq!(clock.rate_hz(), Some(rate));
        assert_eq!(clock.predict_ns(2_000 * 480), Some(1));
    }

    #[test]
    fn a_rate_far_from_nominal_is_refused() {
        // Timestamps that say 44.1 kHz on a clock configured for 48 kHz: far beyond 2000 ppm.
        let mut clock = FrameClock::new(48_000.0, 4.0)
            .unwrap()
            .with_max_error_ns(u64::MAX);
        let ns = 1e9 / 44_100.0;
        let mut restarted = false;
        for i in 0..200u64 {
            if let Update::Restarted(Discontinuity::RateOutOfRange) =
                clock.update(i * 480, (i as f64 * 480.0 * ns) as u64)
            {
                restarted = true;
            }
            assert!(clock.drift_ppm().unwrap().abs() <= DEFAULT_MAX_DRIFT_PPM);
        }
        assert!(restarted);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(matches!(
            FrameClock::new(0.0, 1.0),
            Err(ClockConfigError::InvalidRate(_))
        ));
        assert!(FrameClock::new(f64::NAN, 1.0).is_err());
        assert!(FrameClock::new(f64::INFINITY, 1.0).is_err());
        assert!(matches!(
            FrameClock::new(48_000.0, 0.0),
            Err(ClockConfigError::InvalidBandwidth(_))
        ));
        assert!(FrameClock::new(48_000.0, f64::NAN).is_err());
        assert!(FrameClock::new(48_000.0, 20_000.0).is_err());
        let c = FrameClock::new(48_000.0, 1.0).unwrap();
        assert!(c.with_max_drift_ppm(-1.0).is_err());
        assert!(c.with_max_drift_ppm(f64::NAN).is_err());
        let msg = std::format!("{}", ClockConfigError::InvalidRate(0.0));
        assert!(msg.contains("48000"));
    }

    #[test]
    fn rounding_helpers() {
        assert_eq!(floor_i64(-0.5), -1);
        assert_eq!(floor_i64(2.0), 2);
        assert_eq!(floor_i64(2.9), 2);
        assert_eq!(round_i64(2.5), 3);
        assert_eq!(round_i64(-2.4), -2);
        assert_eq!(round_i64(f64::NAN), 0);
        assert_eq!(floor_i64(1e300), i64::MAX);
    }

    proptest! {
        #[test]
        fn converges_for_any_small_drift(
            drift in -500.0f64..500.0,
            period in 32u64..4096,
            jitter in 0.0f64..100_000.0,
            seed in any::<u64>(),
        ) {
            let mut clock = FrameClock::new(48_000.0, 1.0).unwrap();
            // 30 s of audio whatever the period.
            let updates = 30 * 48_000 / period;
            run(&mut clock, drift, period, jitter, updates, seed);
            let est = clock.drift_ppm().unwrap();
            // Tolerance: the jitter spread over one period, scaled by the loop's smoothing,
            // plus a floor for the settling of large drifts.
            let period_ns = period as f64 * 1e9 / 48_000.0;
            let tol = 0.5 + 8.0 * jitter / period_ns * 1e6 * (2.0 * core::f64::consts::PI * period as f64 / 48_000.0);
            prop_assert!((est - drift).abs() < tol, "est {} drift {} tol {}", est, drift, tol);
            prop_assert!(clock.is_tracking());
        }

        #[test]
        fn arbitrary_input_never_panics_and_stays_finite(
            pairs in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..200),
            bw in 0.01f64..100.0,
        ) {
            let mut clock = FrameClock::new(48_000.0, bw).unwrap();
            for (pos, t) in pairs {
                clock.update(pos, t);
                let r = clock.rate_hz().unwrap();
                prop_assert!(r.is_finite() && r > 0.0);
                prop_assert!(clock.drift_ppm().unwrap().abs() <= DEFAULT_MAX_DRIFT_PPM);
                let _ = clock.predict_ns(pos.wrapping_add(12_345));
                let _ = clock.predict_pos(t);
            }
        }

        #[test]
        fn predictions_are_monotonic_and_invert(
            drift in -300.0f64..300.0,
            a in 0u64..10_000_000,
            d in 0u64..10_000_000,
        ) {
            let mut clock = FrameClock::new(48_000.0, 1.0).unwrap();
            run(&mut clock, drift, 480, 20_000.0, 500, 11);
            let ta = clock.predict_ns(a).unwrap();
            let tb = clock.predict_ns(a + d).unwrap();
            prop_assert!(tb >= ta);
            // predict_pos inverts predict_ns to within one sample.
            let back = clock.predict_pos(tb).unwrap();
            prop_assert!(back.abs_diff(a + d) <= 1, "{} vs {}", back, a + d);
        }
    }
}
