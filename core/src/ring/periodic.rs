//! When the next frame of a periodic stream is due, as a consumer sees it: the estimator behind
//! the wake-free wait ([`Arrivals`]).
//!
//! A consumer of a stream that commits one frame every period (an audio device's cycle) need
//! not be woken by the producer: it can sleep on its own timer until just before the next
//! frame is due, then poll for a short window. While it polls it has not announced itself as
//! parked, so the producer's commit sees nobody parked and makes no wake call (see
//! [`crate::wait`]). If the frame is not there by the end of the window (an irregular stream,
//! a late producer), the consumer falls back to parking as usual. This module decides *when*;
//! the platform does the sleeping, and core's park/wake protocol is unchanged.
//!
//! The estimate is kept on the consumer's own clock (any monotonic nanosecond clock):
//!
//! * an **anchor**: the arrival time of one frame, by sequence number; frame `n` is predicted
//!   at `anchor + (n - anchor_seq) · period` (the schedule). Frames seen arriving while polling
//!   re-anchor it; a frame that came late does not move it (the next frame may be on time, or
//!   come at once as the producer catches up: a schedule moved later would sleep through it),
//!   unless lateness persists ([`MAX_MISSES`]); a frame that came early moves it earlier;
//! * the **lag** between a frame's producer timestamp (`timestamp_ns`, on the producer's clock)
//!   and its arrival on ours, learned from frames seen arriving while polling. It lets a frame
//!   seen late (the consumer woke after it arrived) still give its true arrival time, so the
//!   phase does not drift later with every late wake-up. Clocks that differ by a constant
//!   offset are fine: only the difference is used;
//! * an adaptive **margin** (`early`): how long before the predicted arrival the timer fires:
//!   the minimum asked for plus twice the timer's average lateness (how long after the planned
//!   time the sleep really ended, reported through [`Arrivals::woke`]; each report clipped to
//!   an eighth of a period and averaged over about eight wake-ups), at most just under half a
//!   period. The margin is the price of the wait: the consumer polls from `due - early` until
//!   the frame comes, so a machine whose timers fire late costs more polling, never a frame.
//!
//! Frame metadata comes from shared memory and may be anything: a timestamp that would put
//! the arrival in the future or more than [`MAX_BACKDATE_PERIODS`] periods back is ignored,
//! every sum saturates, and a plan never sleeps further than [`MAX_SLEEP_PERIODS`] periods
//! ahead, so a hostile producer can make a consumer poll or park (today's cost), never sleep
//! through frames or loop.
//!
//! After [`MAX_MISSES`] frames in a row that were not there by the end of their window, the
//! stream is treated as irregular: the plan is to park at once, except every
//! [`RETRY_EVERY`]-th frame, which tries the timer again. A window that had already passed
//! when the consumer asked for its frame is a miss too ([`Arrivals::plan`] counts it): a
//! stream that moved more than a period later for good (an audio device restarted after an
//! xrun, at a new phase) would otherwise never be polled for, never counted, and never
//! re-learned.
//!
//! ```
//! use voxring_core::ring::periodic::{Arrivals, Plan, Sighting};
//!
//! // 48 kHz, 128 frames: a frame every 2_666_666 ns; wake 50 µs early.
//! let mut a = Arrivals::new(2_666_666, 50_000).unwrap();
//! assert_eq!(a.plan(0, 1_000), Plan::Park); // nothing learned yet: park as usual
//! // Frame 0 (stamped at 0 on the producer's clock) was seen arriving at 10_000 while polling.
//! a.observe(0, 0, 10_000, Sighting::Polling);
//! // Frame 1 is due at 10_000 + 2_666_666: sleep until 50 µs before, poll until 50 µs after.
//! let due = 10_000 + 2_666_666;
//! assert_eq!(
//!     a.plan(1, 20_000),
//!     Plan::Sleep { until_ns: due - 50_000, poll_until_ns: due + 50_000 }
//! );
//! ```

use crate::layout::RingConfig;

/// A frame seen late is believed to have arrived at most this many periods before it was seen.
pub const MAX_BACKDATE_PERIODS: u64 = 4;
/// A plan never sleeps further ahead than this many periods.
pub const MAX_SLEEP_PERIODS: u64 = 2;
/// Misses in a row after which the stream counts as irregular (park at once).
pub const MAX_MISSES: u32 = 4;
/// While irregular, every this-many-th frame tries the timer again.
pub const RETRY_EVERY: u64 = 16;
/// An anchor further than this many frames behind the frame asked about is stale.
const MAX_ANCHOR_AGE: u64 = 1 << 20;

/// What to do to wait for the next frame (always after checking that it is not there yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Sleep on an absolute timer until `until_ns`, then poll until `poll_until_ns`.
    Sleep {
        /// When the timer should fire (the consumer's clock).
        until_ns: u64,
        /// When polling should give up and park.
        poll_until_ns: u64,
    },
    /// The frame is due about now: poll until `poll_until_ns`, then park.
    Poll {
        /// When polling should give up and park.
        poll_until_ns: u64,
    },
    /// No useful estimate (nothing learned yet, the window passed, an irregular stream):
    /// park on the futex as usual.
    Park,
}

/// How the consumer saw a frame arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sighting {
    /// It appeared while the consumer was polling: its arrival time is (about) now.
    Polling,
    /// It was already there when the consumer's timer woke it: the consumer overslept.
    AfterSleep,
    /// It was seen after a park, or was already waiting (a backlog): it arrived at some
    /// unknown time before now.
    Late,
}

/// Why [`Arrivals::new`] refused its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeriodError {
    /// The period is zero.
    ZeroPeriod,
    /// The margin is not shorter than half the period.
    MarginTooLong {
        /// The margin asked for (ns).
        early_ns: u64,
        /// The period (ns).
        period_ns: u64,
    },
    /// The ring's configuration gives no period (zero rate or zero samples per frame).
    NoRate,
}

impl core::fmt::Display for PeriodError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PeriodError::ZeroPeriod => f.write_str(
                "a periodic wait needs a frame period above zero: give the stream's period",
            ),
            PeriodError::MarginTooLong {
                early_ns,
                period_ns,
            } => write!(
                f,
                "a wake-up margin of {early_ns} ns is not shorter than half the {period_ns} ns \
                 frame period: use a smaller margin (tens of microseconds are typical)"
            ),
            PeriodError::NoRate => f.write_str(
                "the ring's sample rate or samples per frame is zero, so it has no frame \
                 period: give the period explicitly",
            ),
        }
    }
}

impl core::error::Error for PeriodError {}

/// The arrival estimator of a periodic stream (see the module docs). Plain data: no clock, no
/// shared state; the caller passes the time.
#[derive(Clone, Copy, Debug)]
pub struct Arrivals {
    period_ns: u64,
    min_early_ns: u64,
    early_ns: u64,
    /// Average lateness of the timer's wake-ups (ns).
    late_ns: u64,
    /// `(seq, arrival_ns)` of the last frame whose arrival time is known.
    anchor: Option<(u64, u64)>,
    /// Arrival minus producer timestamp, learned from frames seen while polling.
    lag_ns: Option<i64>,
    misses: u32,
}

impl Arrivals {
    /// An estimator for frames every `period_ns`, waking `early_ns` before each is due (the
    /// minimum margin; it grows when wake-ups come late).
    pub fn new(period_ns: u64, early_ns: u64) -> Result<Self, PeriodError> {
        if period_ns == 0 {
            return Err(PeriodError::ZeroPeriod);
        }
        if early_ns >= period_ns / 2 {
            return Err(PeriodError::MarginTooLong {
                early_ns,
                period_ns,
            });
        }
        Ok(Arrivals {
            period_ns,
            min_early_ns: early_ns,
            early_ns,
            late_ns: 0,
            anchor: None,
            lag_ns: None,
            misses: 0,
        })
    }

    /// An estimator for a ring whose every frame is one period of `samples_per_frame` samples
    /// at `sample_rate`.
    pub fn for_ring(cfg: &RingConfig, early_ns: u64) -> Result<Self, PeriodError> {
        if cfg.sample_rate == 0 || cfg.samples_per_frame == 0 {
            return Err(PeriodError::NoRate);
        }
        let period = u64::from(cfg.samples_per_frame) * 1_000_000_000 / u64::from(cfg.sample_rate);
        Self::new(period, early_ns)
    }

    /// The frame period (ns).
    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    /// The current wake-up margin (ns).
    pub fn early_ns(&self) -> u64 {
        self.early_ns
    }

    /// Whether the stream currently counts as irregular (too many misses in a row).
    pub fn is_irregular(&self) -> bool {
        self.misses >= MAX_MISSES
    }

    /// When frame `seq` is due on the schedule, if there is one and it is not stale.
    fn due(&self, seq: u64) -> Option<u64> {
        let (anchor_seq, anchor_ns) = self.anchor?;
        let ahead = seq.wrapping_sub(anchor_seq);
        (ahead <= MAX_ANCHOR_AGE)
            .then(|| anchor_ns.saturating_add(ahead.saturating_mul(self.period_ns)))
    }

    /// What to do at `now_ns` to wait for frame `seq`, which is not there yet. A window that
    /// has already passed counts as a miss (see the module docs): call it once per wait.
    pub fn plan(&mut self, seq: u64, now_ns: u64) -> Plan {
        if self.anchor.is_none() {
            return Plan::Park;
        }
        if self.is_irregular() && !seq.is_multiple_of(RETRY_EVERY) {
            return Plan::Park;
        }
        let Some(due) = self.due(seq) else {
            return Plan::Park;
        };
        let wake = due.saturating_sub(self.early_ns);
        let poll_until_ns = due.saturating_add(self.early_ns);
        if poll_until_ns <= now_ns {
            // The window has passed: the frame is late, park until it comes. A miss like one
            // the poll saw: if lateness persists, the late sightings re-anchor the schedule.
            self.missed();
            return Plan::Park;
        }
        if wake <= now_ns {
            return Plan::Poll { poll_until_ns };
        }
        if wake - now_ns > MAX_SLEEP_PERIODS * self.period_ns {
            // Further ahead than any honest stream puts it: do not sleep on it.
            return Plan::Park;
        }
        Plan::Sleep {
            until_ns: wake,
            poll_until_ns,
        }
    }

    /// The consumer's timer, set for `planned_ns`, woke it at `now_ns`: learns how late the
    /// timer fires and widens or narrows the margin accordingly.
    pub fn woke(&mut self, planned_ns: u64, now_ns: u64) {
        let late = now_ns.saturating_sub(planned_ns).min(self.period_ns / 8);
        // An average over about eight wake-ups: (7 · old + new) / 8, in integers.
        self.late_ns = (self.late_ns * 7 + late) / 8;
        self.early_ns = self
            .min_early_ns
            .saturating_add(2 * self.late_ns)
            .min(self.period_ns / 2 - 1);
    }

    /// The consumer's poll window for a planned frame ended without it: counts a miss (the
    /// consumer then parks).
    pub fn missed(&mut self) {
        self.misses = self.misses.saturating_add(1);
    }

    /// Frame `seq`, stamped `timestamp_ns` by its producer (0: not stamped), was seen at
    /// `now_ns`, as `how` says.
    pub fn observe(&mut self, seq: u64, timestamp_ns: u64, now_ns: u64, how: Sighting) {
        match how {
            Sighting::Polling => {
                self.anchor = Some((seq, now_ns));
                self.misses = 0;
                if timestamp_ns != 0 {
                    let lag = now_ns.wrapping_sub(timestamp_ns) as i64;
                    // Track the smallest lag (the prompt sightings), creeping up slowly so a
                    // producer whose commit moved later is followed.
                    self.lag_ns = Some(match self.lag_ns {
                        Some(old) if lag >= old => old.saturating_add(lag.saturating_sub(old) / 16),
                        _ => lag,
                    });
                }
            }
            Sighting::AfterSleep | Sighting::Late => {
                let arrival = self.backdate(timestamp_ns, now_ns).unwrap_or(now_ns);
                match self.due(seq) {
                    // A late frame does not move the schedule (the next one may come on time,
                    // or at once, as a producer catches up): unless lateness persists.
                    Some(due) if arrival >= due && !self.is_irregular() => {}
                    _ => self.anchor = Some((seq, arrival)),
                }
            }
        }
    }

    /// The arrival time of a frame seen late, from its timestamp and the learned lag, if that
    /// is plausible: not after `now_ns`, at most [`MAX_BACKDATE_PERIODS`] periods before it.
    fn backdate(&self, timestamp_ns: u64, now_ns: u64) -> Option<u64> {
        let lag = self.lag_ns?;
        if timestamp_ns == 0 {
            return None;
        }
        let arrival = timestamp_ns.wrapping_add_signed(lag);
        let back = now_ns.checked_sub(arrival)?;
        (back <= MAX_BACKDATE_PERIODS * self.period_ns).then_some(arrival)
    }
}
