//! loom models of the wake-free periodic wait (`voxring_core::ring::periodic`, used by
//! voxring-linux's `WaitMode::Periodic`): a consumer that sleeps on its own timer and polls
//! without announcing itself, falling back to core's park/wake when the frame is late.
//!
//! The timer is not modelled as time (loom has none): the consumer runs the real estimator
//! ([`Arrivals`]) on a fake clock that advances one tick per poll, and its "sleep" is a
//! `yield_now`. What the models prove is the hand-off itself: polling, then falling back to
//! `wait_readable`, races the producer's commit without a lost wake-up; a consumer that only
//! polls costs the producer no wake call; a consumer that dies in either phase stalls nobody
//! and costs at most one wake call.
#![cfg(voxring_loom)]

use std::sync::Arc;

use voxring_core::ring::periodic::{Arrivals, Plan, Sighting};
use voxring_core::{Consumer, WaitOutcome, Waiter};
use voxring_loom_tests::assert_explored_many;
use voxring_loom_tests::futex::FutexModel;
use voxring_loom_tests::ring::{read_checked, write_one_then};

mod common;
use common::{against_a_parking_producer, lossless_pair, produce_parking, read_releasing};

/// The fake clock's frame period and margin (ticks).
const PERIOD: u64 = 10;
const EARLY: u64 = 2;

/// One periodic wait for the next frame, as voxring-linux does it, on a fake clock: plan, then
/// "sleep" (yield), poll through the window (one tick per poll), and park through `waiter`
/// when the frame is still not there. Returns how it was seen.
fn periodic_wait(c: &mut Consumer, a: &mut Arrivals, now: &mut u64, waiter: &impl Waiter) {
    let ready = |c: &Consumer| c.next_frame_meta().is_some();
    let seen = |c: &Consumer, a: &mut Arrivals, now: u64, how| {
        if let Some(m) = c.next_frame_meta() {
            a.observe(m.seq, m.timestamp_ns, now, how);
        }
    };
    if ready(c) {
        seen(c, a, *now, Sighting::Late);
        return;
    }
    let poll_until = match a.plan(c.read_pos(), *now) {
        Plan::Sleep {
            until_ns,
            poll_until_ns,
        } => {
            loom::thread::yield_now();
            *now = until_ns;
            if ready(c) {
                seen(c, a, *now, Sighting::AfterSleep);
                return;
            }
            Some(poll_until_ns)
        }
        Plan::Poll { poll_until_ns } => Some(poll_until_ns),
        Plan::Park => None,
    };
    if let Some(until) = poll_until {
        while *now < until {
            if ready(c) {
                seen(c, a, *now, Sighting::Polling);
                return;
            }
            *now += 1;
        }
        a.missed();
    }
    let _ = c.wait_readable(waiter, None).unwrap();
    seen(c, a, *now, Sighting::Late);
}

/// A periodic consumer on a one-frame lossless ring, with an estimator already locked on the
/// stream (so it sleeps and polls first), takes two frames from a producer that parks for
/// space: every mix of "seen while polling" and "late, parked, woken" must deliver both frames
/// with their content, and neither side may sleep for ever.
#[test]
fn periodic_consumer_falls_back_to_parking() {
    assert_explored_many("ring: periodic poll, then park, racing the commit", || {
        let got = against_a_parking_producer(|consumer, futex| {
            let mut a = Arrivals::new(PERIOD, EARLY).unwrap();
            // Locked on a frame -1 that arrived at tick 0: frame 0 is due at tick 10.
            a.observe(u64::MAX, 0, 0, Sighting::Polling);
            let mut now = 1;
            let mut got = Vec::new();
            while got.len() < 2 {
                periodic_wait(consumer, &mut a, &mut now, futex);
                got.extend(read_releasing(consumer, futex));
            }
            got
        });
        assert_eq!(got, vec![0, 1]);
    });
}

/// A consumer that only polls (the timer woke it early enough every time) never announces
/// itself: none of the producer's commits needs a wake call. This is "no syscall per cycle".
#[test]
fn a_polling_consumer_costs_the_producer_no_wake() {
    assert_explored_many("ring: periodic consumer, no wake call", || {
        let (_mem, _ring, mut producer, mut consumer) = lossless_pair(2);
        let p = loom::thread::spawn(move || {
            let mut wakes = 0;
            for _ in 0..2 {
                assert!(write_one_then(&mut producer, |w| wakes += usize::from(w.needed())));
            }
            wakes
        });
        let c = loom::thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 2 {
                if consumer.next_frame_meta().is_none() {
                    loom::thread::yield_now();
                    continue;
                }
                got.extend(read_checked(&mut consumer, 2));
            }
            got
        });
        assert_eq!(p.join().unwrap(), 0, "a commit asked for a wake call");
        assert_eq!(c.join().unwrap(), vec![0, 1]);
    });
}

/// A periodic consumer dies while polling (its slot stays taken, as after a crash) while a
/// lossless producer, its ring full, parks for space; the liveness checker evicts the dead
/// consumer: the producer must be woken and write again.
#[test]
fn a_consumer_dying_while_polling_stalls_nobody() {
    assert_explored_many("ring: periodic consumer dies polling", || {
        let (_mem, ring, producer, consumer) = lossless_pair(1);
        let futex = FutexModel::new();
        let futex2 = Arc::clone(&futex);
        let index = consumer.index();
        // The consumer never parks: each commit's wake is empty.
        let p = loom::thread::spawn(move || drop(produce_parking(producer, 2, &*futex)));
        let c = loom::thread::spawn(move || {
            // One poll, then the process dies: nothing is released, the slot stays ACTIVE.
            let _ = consumer.next_frame_meta();
            std::mem::forget(consumer);
        });
        c.join().unwrap();
        // The liveness checker judged owner 2 dead.
        ring.evict(index, 2).unwrap().wake(&*futex2);
        p.join().unwrap();
    });
}

/// A consumer dies while parked (the fall-back): its announcement stays in the wait block and
/// the futex word stays armed. The producer's commits make at most one wake call in all (the
/// first one clears the mark), and the liveness checker can still evict the dead consumer.
#[test]
fn a_consumer_dying_while_parked_costs_at_most_one_wake() {
    assert_explored_many("ring: consumer dies parked", || {
        let (_mem, ring, mut producer, mut consumer) = lossless_pair(2);
        let index = consumer.index();
        let p = loom::thread::spawn(move || {
            let mut wakes = 0;
            for _ in 0..2 {
                let mut g = producer.write_grant(1).unwrap();
                g.frame_mut(0).unwrap().set_sample_pos(0);
                wakes += usize::from(g.commit_all().needed());
            }
            wakes
        });
        let c = loom::thread::spawn(move || {
            // Dies inside the futex wait (if it gets there: a frame may already be ready).
            let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                consumer.wait_readable(&DiesInWait, None)
            }));
            // A crash leaves the slot taken: nothing runs the consumer's drop.
            std::mem::forget(consumer);
            died.is_err()
        });
        let wakes = p.join().unwrap();
        let died_parked = c.join().unwrap();
        assert!(wakes <= 1, "{wakes} wake calls for one dead sleeper");
        if !died_parked {
            assert_eq!(wakes, 0, "a wake call with nobody asleep");
        }
        // Nobody waits for space here (the producer never filled the ring): no wake due.
        assert!(!ring.evict(index, 2).unwrap().needed());
    });
}

/// A waiter whose `wait` is where the consumer process dies (unwinds without the panic hook,
/// so the thousands of interleavings print nothing).
struct DiesInWait;

impl Waiter for DiesInWait {
    fn wait(&self, _word: &voxring_core::AtomicU32, _e: u32, _t: Option<u64>) -> WaitOutcome {
        std::panic::resume_unwind(Box::new("the consumer died while parked"))
    }
    fn wake(&self, _word: &voxring_core::AtomicU32) {}
}
