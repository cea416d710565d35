//! The periodic wait's arrival estimator (`voxring_core::ring::periodic`): what it plans for a
//! steady stream, how it follows late wake-ups and misses, and what hostile metadata can make
//! it do (never sleep through a frame, never sleep far ahead). Plus `next_frame_meta`, the
//! look at the next frame it is fed from.

mod common;

use common::{config, make};
use voxring_core::ring::periodic::{
    Arrivals, MAX_MISSES, MAX_SLEEP_PERIODS, PeriodError, Plan, RETRY_EVERY, Sighting,
};
use voxring_core::{FrameFlags, Policy};

const PERIOD: u64 = 2_666_666;
const EARLY: u64 = 50_000;

/// An estimator that saw frame 0 arrive at `t0` while polling (stamped `t0 - 1_000`).
fn locked(t0: u64) -> Arrivals {
    let mut a = Arrivals::new(PERIOD, EARLY).unwrap();
    a.observe(0, t0 - 1_000, t0, Sighting::Polling);
    a
}

#[test]
fn bad_periods_and_margins_are_refused_with_a_reason() {
    assert_eq!(Arrivals::new(0, 0).unwrap_err(), PeriodError::ZeroPeriod);
    let e = Arrivals::new(100_000, 50_000).unwrap_err();
    assert_eq!(
        e,
        PeriodError::MarginTooLong {
            early_ns: 50_000,
            period_ns: 100_000
        }
    );
    assert!(e.to_string().contains("smaller margin"));
    let mut cfg = config(4, 2, Policy::Lossless);
    cfg.samples_per_frame = 128;
    assert_eq!(Arrivals::for_ring(&cfg, EARLY).unwrap().period_ns(), PERIOD);
    cfg.sample_rate = 0;
    assert_eq!(
        Arrivals::for_ring(&cfg, EARLY).unwrap_err(),
        PeriodError::NoRate
    );
}

#[test]
fn a_steady_stream_sleeps_until_just_before_each_frame() {
    let t0 = 1_000_000_000;
    let mut a = locked(t0);
    for n in 1..100u64 {
        let due = t0 + n * PERIOD;
        // Asked right after the previous frame: sleep, then poll around the due time.
        assert_eq!(
            a.plan(n, due - PERIOD + 5_000),
            Plan::Sleep {
                until_ns: due - EARLY,
                poll_until_ns: due + EARLY
            }
        );
        // Asked inside the window: poll.
        assert_eq!(
            a.plan(n, due - 10),
            Plan::Poll {
                poll_until_ns: due + EARLY
            }
        );
        // Past the window: the frame is late, park.
        assert_eq!(a.plan(n, due + EARLY), Plan::Park);
        a.observe(n, due - 1_000, due, Sighting::Polling);
    }
    assert!(!a.is_irregular());
}

#[test]
fn nothing_learned_means_park() {
    let mut a = Arrivals::new(PERIOD, EARLY).unwrap();
    assert_eq!(a.plan(0, 123), Plan::Park);
    assert_eq!(a.plan(7, u64::MAX), Plan::Park);
}

#[test]
fn a_late_timer_widens_the_margin_and_a_punctual_one_narrows_it_again() {
    let t0 = 1_000_000_000;
    let mut a = locked(t0);
    // The timer fired 80 µs late, and frame 1 was already there.
    let planned = t0 + PERIOD - EARLY;
    a.woke(planned, planned + 80_000);
    assert_eq!(a.early_ns(), EARLY + 2 * (80_000 / 8));
    a.observe(
        1,
        t0 + PERIOD - 1_000,
        planned + 80_000,
        Sighting::AfterSleep,
    );
    // Its arrival came from its timestamp and the learned lag (1 µs), not from when we saw it.
    let due2 = t0 + 2 * PERIOD;
    let early = a.early_ns();
    assert_eq!(
        a.plan(2, planned + 90_000),
        Plan::Sleep {
            until_ns: due2 - early,
            poll_until_ns: due2 + early
        }
    );
    // However late the timer, the margin stays under half a period.
    for _ in 0..64 {
        a.woke(0, u64::MAX);
    }
    assert!(a.early_ns() < PERIOD / 2);
    assert!(a.early_ns() > EARLY);
    // Punctual wake-ups bring it back down to the minimum.
    for _ in 0..400 {
        a.woke(t0, t0);
    }
    assert_eq!(a.early_ns(), EARLY);
}

#[test]
fn misses_make_the_stream_irregular_and_it_retries_now_and_then() {
    let t0 = 1_000_000_000;
    let mut a = locked(t0);
    for _ in 0..MAX_MISSES {
        assert!(!a.is_irregular());
        a.missed();
    }
    assert!(a.is_irregular());
    let now = t0 + 10;
    assert_eq!(a.plan(1, now), Plan::Park);
    // Every RETRY_EVERY-th frame tries the timer again (it is ahead of the anchor by RETRY_EVERY
    // periods, so the plan is a sleep, within the bound only when close enough).
    let retry = RETRY_EVERY;
    let near = t0 + (retry - 1) * PERIOD;
    assert!(matches!(a.plan(retry, near), Plan::Sleep { .. }));
    // One prompt sighting makes it regular again.
    a.observe(retry, 0, t0 + retry * PERIOD, Sighting::Polling);
    assert!(!a.is_irregular());
}

#[test]
fn hostile_timestamps_never_make_it_sleep_far_or_through_a_frame() {
    let t0 = 1_000_000_000;
    for ts in [1, u64::MAX, t0 + 1_000_000_000_000, t0 - 1_000_000_000, 42] {
        let mut a = locked(t0);
        let seen = t0 + PERIOD + 100_000;
        a.observe(1, ts, seen, Sighting::Late);
        for now in [seen, seen + 1, seen + PERIOD / 2] {
            match a.plan(2, now) {
                Plan::Sleep {
                    until_ns,
                    poll_until_ns,
                } => {
                    assert!(until_ns > now && until_ns - now <= MAX_SLEEP_PERIODS * PERIOD);
                    assert!(poll_until_ns > until_ns);
                }
                Plan::Poll { poll_until_ns } => assert!(poll_until_ns > now),
                Plan::Park => {}
            }
        }
    }
    // A lag learned from a hostile stamp in the polling path is bounded the same way.
    let mut a = Arrivals::new(PERIOD, EARLY).unwrap();
    a.observe(0, u64::MAX, t0, Sighting::Polling);
    a.observe(1, 3, t0 + PERIOD, Sighting::Late);
    if let Plan::Sleep { until_ns, .. } = a.plan(2, t0 + PERIOD) {
        assert!(until_ns - (t0 + PERIOD) <= MAX_SLEEP_PERIODS * PERIOD);
    }
    // An anchor far in the future (a forged sequence distance) is not slept on.
    let mut a = locked(t0);
    assert_eq!(a.plan(u64::MAX, t0), Plan::Park);
    assert_eq!(a.plan(1 << 40, t0), Plan::Park);
}

#[test]
fn a_late_frame_keeps_the_schedule_so_a_catching_up_producer_is_not_slept_through() {
    let t0 = 1_000_000_000;
    let mut a = locked(t0);
    // Frame 1 came 2.6 ms late (the producer stalled); seen after a park.
    let late = t0 + PERIOD + 2_600_000;
    a.missed();
    a.observe(1, late - 1_000, late + 30_000, Sighting::Late);
    // Frame 2 is due on the schedule about now: poll, do not sleep a period.
    let now = late + 40_000;
    let due2 = t0 + 2 * PERIOD;
    assert_eq!(
        a.plan(2, now),
        Plan::Poll {
            poll_until_ns: due2 + EARLY
        }
    );
    // Lateness that persists moves the schedule.
    for _ in 0..MAX_MISSES {
        a.missed();
    }
    let seen = now + 10 * PERIOD;
    a.observe(2, 0, seen, Sighting::Late);
    // (Irregular now: the timer is tried again on frame RETRY_EVERY, due on the new schedule.)
    let due = seen + (RETRY_EVERY - 2) * PERIOD;
    assert_eq!(
        a.plan(RETRY_EVERY, due - PERIOD),
        Plan::Sleep {
            until_ns: due - EARLY,
            poll_until_ns: due + EARLY
        }
    );
}

#[test]
fn a_late_frame_without_a_timestamp_anchors_at_the_time_it_was_seen() {
    let t0 = 1_000_000_000;
    let mut a = Arrivals::new(PERIOD, EARLY).unwrap();
    a.observe(0, 0, t0, Sighting::Late);
    let due = t0 + PERIOD;
    assert_eq!(
        a.plan(1, t0 + 1),
        Plan::Sleep {
            until_ns: due - EARLY,
            poll_until_ns: due + EARLY
        }
    );
}

#[test]
fn next_frame_meta_shows_the_committed_frame_without_consuming_it() {
    let (_mem, ring) = make(&config(4, 1, Policy::Lossless));
    let mut p = ring.producer(1).unwrap();
    let c = ring.consumer(2).unwrap();
    assert_eq!(c.next_frame_meta(), None);
    let _ = p.push(b"abc", 480, 7_000, FrameFlags::NONE).unwrap();
    let m = c.next_frame_meta().unwrap();
    assert_eq!(
        (m.seq, m.sample_pos, m.timestamp_ns, m.len),
        (0, 480, 7_000, 3)
    );
    // Looking twice consumes nothing.
    assert_eq!(c.next_frame_meta(), Some(m));
    assert_eq!(c.read_pos(), 0);
}

/// A consumer that takes no time, waiting for frames that arrive at `arrival(n)` (stamped
/// then), as voxring-linux's periodic wait does: returns, per frame, whether it had to park.
fn consume(a: &mut Arrivals, frames: u64, arrival: impl Fn(u64) -> u64) -> Vec<bool> {
    let mut now = 0;
    let mut parked = Vec::new();
    for n in 0..frames {
        let t = arrival(n);
        let park = |a: &mut Arrivals, now: &mut u64| {
            *now = t;
            a.observe(n, t, t, Sighting::Late);
            true
        };
        let p = if t <= now {
            a.observe(n, t, now, Sighting::Late);
            false
        } else {
            let window = match a.plan(n, now) {
                Plan::Sleep {
                    until_ns,
                    poll_until_ns,
                } => {
                    now = until_ns;
                    a.woke(until_ns, now);
                    Some(poll_until_ns)
                }
                Plan::Poll { poll_until_ns } => Some(poll_until_ns),
                Plan::Park => None,
            };
            match window {
                Some(_) if t <= now => {
                    a.observe(n, t, now, Sighting::AfterSleep);
                    false
                }
                Some(until) if t <= until => {
                    now = t;
                    a.observe(n, t, now, Sighting::Polling);
                    false
                }
                Some(_) => {
                    a.missed();
                    park(a, &mut now)
                }
                None => park(a, &mut now),
            }
        };
        parked.push(p);
    }
    parked
}

/// An audio thread held up 20 ms (7.5 periods) before frame 600: frames 600..608 come at once
/// when it resumes, and the device, restarted after its xrun, delivers from then on at a new
/// phase. Whatever the phase, the consumer learns the new schedule within a few retries
/// instead of parking for every frame after it (as it did when a window that had passed before
/// the consumer asked was not counted as a miss: the schedule, a period or more early, was
/// never corrected).
#[test]
fn a_stream_that_moved_later_for_good_is_learned_again() {
    let resumed = 1_000_000 + 600 * PERIOD + 20_000_000;
    for eighths in 0..8 {
        let phase = eighths * PERIOD / 8;
        let arrival = |n: u64| match n {
            0..600 => 1_000_000 + n * PERIOD,
            600..608 => resumed,
            _ => resumed + (n - 607) * PERIOD + phase,
        };
        let mut a = Arrivals::new(PERIOD, EARLY).unwrap();
        let parked = consume(&mut a, 4_000, arrival);
        let after = parked[600..].iter().filter(|&&p| p).count() as u64;
        assert!(
            after <= MAX_MISSES as u64 + 2 * RETRY_EVERY,
            "phase {eighths}/8: parked for {after} of the 3400 frames after the move"
        );
        assert!(!a.is_irregular(), "phase {eighths}/8");
        // Back to sleeping on the timer: the last hundred frames came while it polled.
        assert!(!parked[3_900..].contains(&true), "phase {eighths}/8");
    }
}
