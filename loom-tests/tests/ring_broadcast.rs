//! loom models of the broadcast ring: a late joiner racing the lossless producer's view of
//! the slowest consumer, leaving, evicting a dead consumer, and lossy lapping.
//!
//! Lossless models check payloads through the slots' access trackers (any overlap of a
//! producer write with a consumer read is a loom causality violation) and the payload bytes.
//! Lossy models cannot use the trackers: a lapped reader racing the producer is the lossy
//! policy's nature, handled seqlock-style (see `voxring_core::ring`). They check instead that
//! no frame accepted at release is torn, through the metadata words, which are atomics loom
//! models exactly (stale values included): `sample_pos = seq + 100` and
//! `timestamp_ns = 2 * seq + 1` must agree with each other and with the sequence number.
#![cfg(voxring_loom)]

use std::sync::atomic::{AtomicUsize, Ordering};
use voxring_core::{Consumer, Policy, Producer, ReadError, ReleaseError, Ring};
use voxring_loom_tests::assert_explored_many;
use voxring_loom_tests::ring::{
    Line, finish_stream, new_ring, read_checked, read_once, write_one, write_up_to,
};

/// What a lossy consumer has seen: frames accepted intact and frames reported lost.
#[derive(Default, Debug)]
struct Seen {
    intact: Vec<u64>,
    lost: u64,
    /// How often a release reported overwritten frames / a grant reported a lap.
    overwritten_events: usize,
    lap_events: usize,
}

/// One lossy read attempt: frames are copied out (metadata only) and accepted only if the
/// release validates them.
fn read_lossy(c: &mut Consumer, n: usize, seen: &mut Seen) {
    match c.read_grant(n) {
        Ok(g) => {
            let metas: Vec<_> = g.frames().map(|f| f.meta()).collect();
            let bad = match g.release_all() {
                Ok(_) => 0,
                Err(ReleaseError::Overwritten { frames }) => frames as usize,
                Err(e) => panic!("unexpected release error: {e}"),
            };
            seen.lost += bad as u64;
            seen.overwritten_events += usize::from(bad > 0);
            for m in &metas[bad..] {
                assert_eq!(m.sample_pos, m.seq + 100, "torn frame accepted: {m:?}");
                assert_eq!(m.timestamp_ns, 2 * m.seq + 1, "torn frame accepted: {m:?}");
                seen.intact.push(m.seq);
            }
        }
        Err(ReadError::Lost { frames }) => {
            seen.lost += frames;
            seen.lap_events += 1;
        }
        Err(ReadError::Empty) => {}
        Err(e) => panic!("unexpected read error: {e}"),
    }
}

/// Every frame from `start` to the consumer's position was delivered once, in order, or
/// counted lost.
fn assert_accounted(seen: &Seen, start: u64, c: &Consumer) {
    let mut prev = None;
    for &s in &seen.intact {
        assert!(
            s >= start && prev.is_none_or(|p| s > p),
            "out of order or twice: {seen:?}"
        );
        prev = Some(s);
    }
    assert_eq!(
        seen.intact.len() as u64 + seen.lost,
        c.read_pos() - start,
        "frames neither delivered nor counted lost: {seen:?}"
    );
    assert_eq!(c.lost_frames(), seen.lost);
}

/// A lossless ring of `frames` slots for two consumers, streaming `total` frames from a
/// producer (owner 1) to a consumer (owner 2: one frame at most while the threads run, then
/// at most `n` at a time), while a third thread runs `other` on the ring (with what `setup`
/// made of it before any thread started). Once `other` is done, the rest of the stream must
/// get through (else the model fails with `why`). Returns the region (keep it alive while
/// the handles are), both handles and every frame the consumer read.
fn lossless_stream_while<S: Send + 'static>(
    frames: u32,
    total: usize,
    n: usize,
    setup: impl FnOnce(&Ring) -> S,
    other: impl FnOnce(Ring, S) + Send + 'static,
    why: &str,
) -> (Vec<Line>, Producer, Consumer, Vec<u64>) {
    let (mem, ring) = new_ring(frames, 2, Policy::Lossless);
    let producer = ring.producer(1).unwrap();
    let consumer = ring.consumer(2).unwrap();
    let state = setup(&ring);
    let p = loom::thread::spawn(move || write_up_to(producer, total));
    let o = loom::thread::spawn(move || other(ring, state));
    let c = loom::thread::spawn(move || read_once(consumer, 1));
    o.join().unwrap();
    let (producer, consumer, got) =
        finish_stream(p.join().unwrap(), c.join().unwrap(), total, n, why);
    (mem, producer, consumer, got)
}

#[test]
fn lossless_late_join_and_leave_race_the_producer() {
    assert_explored_many("ring: lossless late join, leave", || {
        let late_join = |ring: Ring, ()| {
            let mut c = ring.consumer(3).unwrap();
            let start = c.read_pos();
            let got = read_checked(&mut c, 2);
            for (i, s) in got.iter().enumerate() {
                assert_eq!(
                    *s,
                    start + i as u64,
                    "late joiner skipped or repeated a frame"
                );
            }
            let _ = c.leave();
        };
        // The late joiner left: only the early consumer holds the producer back now.
        let why = "the late joiner's slot still blocks";
        let (_mem, mut producer, _early, got) =
            lossless_stream_while(2, 3, 2, |_| (), late_join, why);
        assert_eq!(
            got,
            vec![0, 1, 2],
            "the early consumer lost or repeated a frame"
        );
        assert!(
            write_one(&mut producer) && write_one(&mut producer),
            "leave freed the slot"
        );
    });
}

#[test]
fn lossless_evicting_a_dead_consumer_unblocks_the_producer() {
    assert_explored_many("ring: lossless eviction", || {
        let die = |ring: &Ring| {
            let dead = ring.consumer(3).unwrap();
            let dead_index = dead.index();
            // A dead process runs no destructor.
            std::mem::forget(dead);
            dead_index
        };
        let platform = |ring: Ring, dead_index| {
            assert_eq!(ring.consumer_owner(dead_index), Some(3));
            // This model polls: nobody parks.
            let _ = ring.evict(dead_index, 3).unwrap();
        };
        let why = "the dead consumer still blocks";
        let (_mem, _, _, got) = lossless_stream_while(1, 2, 1, die, platform, why);
        assert_eq!(got, vec![0, 1]);
    });
}

#[test]
fn lossy_lapped_consumer_never_accepts_a_torn_frame_and_counts_every_loss() {
    // Counted outside the model (std atomics), to show the model reaches both failure modes.
    let events = std::sync::Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let counts = events.clone();
    assert_explored_many("ring: lossy lapping", move || {
        let (_mem, ring) = new_ring(2, 1, Policy::Lossy);
        let mut producer = ring.producer(1).unwrap();
        let mut c = ring.consumer(2).unwrap();
        let p = loom::thread::spawn(move || {
            for _ in 0..3 {
                assert!(write_one(&mut producer), "a lossy producer never waits");
            }
        });
        let r = loom::thread::spawn(move || {
            // One attempt racing three writes reaches both failure modes: a grant overwritten
            // while read (Overwritten at release) and a lap (Lost at grant).
            let mut seen = Seen::default();
            read_lossy(&mut c, 2, &mut seen);
            (c, seen)
        });
        p.join().unwrap();
        let (mut c, mut seen) = r.join().unwrap();
        counts[0].fetch_add(seen.overwritten_events, Ordering::Relaxed);
        counts[1].fetch_add(seen.lap_events, Ordering::Relaxed);
        for _ in 0..3 {
            read_lossy(&mut c, 2, &mut seen);
        }
        assert_eq!(c.read_pos(), 3, "drained to the end");
        assert_accounted(&seen, 0, &c);
        // The last frame is never overwritten (nothing came after it).
        assert_eq!(seen.intact.last(), Some(&2));
    });
    // Relaxed: the model has finished (joined) before these loads.
    assert!(
        events[0].load(Ordering::Relaxed) > 0,
        "no interleaving overwrote a frame being read"
    );
    assert!(
        events[1].load(Ordering::Relaxed) > 0,
        "no interleaving lapped the reader"
    );
}

#[test]
fn lossy_late_joiner_starts_cleanly_while_the_producer_laps() {
    assert_explored_many("ring: lossy late join", || {
        let (_mem, ring) = new_ring(2, 2, Policy::Lossy);
        let mut producer = ring.producer(1).unwrap();
        let p = loom::thread::spawn(move || {
            for _ in 0..3 {
                assert!(write_one(&mut producer));
            }
        });
        let late = loom::thread::spawn(move || {
            let mut c = ring.consumer(3).unwrap();
            let start = c.read_pos();
            let mut seen = Seen::default();
            read_lossy(&mut c, 2, &mut seen);
            (c, start, seen)
        });
        p.join().unwrap();
        let (mut c, start, mut seen) = late.join().unwrap();
        for _ in 0..3 {
            read_lossy(&mut c, 2, &mut seen);
        }
        assert_eq!(c.read_pos(), 3);
        assert_accounted(&seen, start, &c);
    });
}
