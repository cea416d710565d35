//! Unit tests of the slot fast path's edges that need the ring's internals: a producer that
//! dies between its `seq` stores and its `write_pos` store.

use super::{COMMIT_ORDER, Ring};
use crate::ReadError;
use crate::layout::{Policy, RingConfig, SampleFormat};
use crate::sync::Ordering;

#[repr(C, align(128))]
struct Region([u8; 4096]);

fn two_slot_ring(region: &mut Region) -> Ring {
    let cfg = RingConfig {
        frames: 2,
        samples_per_frame: 4,
        channels: 1,
        format: SampleFormat::S16,
        sample_rate: 16_000,
        max_consumers: 1,
        policy: Policy::Lossless,
    };
    // SAFETY: the buffer is ours, aligned, large enough (create checks), and outlives the
    // handles, which the test drops (or forgets) before it.
    unsafe { Ring::create(region.0.as_mut_ptr(), region.0.len(), &cfg) }.unwrap()
}

/// The producer fills frame 0 and stores its slot's `seq` (the commit point a consumer
/// trusts), then dies before storing `write_pos`. The consumer takes the frame through the
/// slot; the platform evicts the dead producer; the successor must continue at frame 1, not
/// write frame 0 again (the consumer already has it: a second frame 0 would be lost, or
/// would be written under a reader).
#[test]
fn a_successor_continues_after_a_frame_committed_through_its_slot_alone() {
    let mut region = Region([0; 4096]);
    let ring = two_slot_ring(&mut region);
    let mut consumer = ring.consumer(2).unwrap();
    let mut dead = ring.producer(1).unwrap();
    let mut grant = dead.write_grant(1).unwrap();
    grant.frame_mut(0).unwrap().payload_mut().fill(7);
    ring.slot(0).seq.store(0, COMMIT_ORDER);
    core::mem::forget(grant);
    core::mem::forget(dead); // died: no commit of `write_pos`, no destructor
    assert_eq!(ring.write_pos(), 0);

    let g = consumer.read_grant(1).unwrap();
    assert_eq!((g.first_seq(), g.len()), (0, 1));
    assert_eq!(g.frame(0).unwrap().payload(), &[7; 8]);
    let _ = g.release_all().unwrap();
    // `write_pos` is behind the consumer now: nothing to read, not corruption.
    assert_eq!(consumer.read_grant(1).unwrap_err(), ReadError::Empty);
    assert!(!consumer.frame_ready());

    ring.evict_producer(1).unwrap();
    let mut next = ring.producer(9).unwrap();
    assert_eq!(
        next.write_pos(),
        1,
        "the successor must adopt the committed frame 0"
    );
    assert_eq!(ring.write_pos(), 1, "and publish it in write_pos");
    let mut g = next.write_grant(1).unwrap();
    g.frame_mut(0).unwrap().payload_mut().fill(8);
    let _ = g.commit_all();
    let g = consumer.read_grant(4).unwrap();
    assert_eq!((g.first_seq(), g.len()), (1, 1));
    assert_eq!(g.frame(0).unwrap().payload(), &[8; 8]);
    let _ = g.release_all().unwrap();
    assert_eq!(consumer.read_grant(1).unwrap_err(), ReadError::Empty);
}

/// A `write_pos` behind the consumer by more than a ring is corrupt (a hostile producer),
/// and one behind by at most a ring means "nothing new"; neither moves the consumer. The
/// forged cursor is reported although the slot of the next frame says "empty".
#[test]
fn a_write_pos_behind_the_consumer_is_empty_within_a_ring_and_corrupt_beyond() {
    let mut region = Region([0; 4096]);
    let ring = two_slot_ring(&mut region);
    let mut producer = ring.producer(1).unwrap();
    let mut consumer = ring.consumer(2).unwrap();
    for _ in 0..2 {
        let _ = producer.write_grant(1).unwrap().commit_all();
        let _ = consumer.read_grant(1).unwrap().release_all().unwrap();
    }
    assert_eq!(consumer.read_pos(), 2);
    for (forged, expected) in [
        (0, ReadError::Empty),
        (1, ReadError::Empty),
        (
            u64::MAX,
            ReadError::Corrupt {
                pos: 2,
                found: u64::MAX,
            },
        ),
    ] {
        ring.prod().write_pos.store(forged, Ordering::Release);
        // The slot says empty; `write_pos` is looked at within WRITE_POS_EVERY polls.
        let mut last = ReadError::Empty;
        for _ in 0..super::consumer::WRITE_POS_EVERY {
            last = consumer.read_grant(1).unwrap_err();
            assert!(
                last == ReadError::Empty || last == expected,
                "write_pos {forged}: {last:?}"
            );
        }
        assert_eq!(last, expected, "write_pos {forged}");
        assert_eq!(
            consumer.frame_ready(),
            forged == u64::MAX,
            "write_pos {forged}"
        );
        assert_eq!(consumer.read_pos(), 2);
    }
    ring.prod().write_pos.store(2, Ordering::Release);
    assert_eq!(producer.write_grant(1).map(|g| g.len()), Ok(1));
}
