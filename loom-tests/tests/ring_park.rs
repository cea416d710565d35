//! loom models of park/wake: a lossless producer and consumers on a one-frame ring, sleeping
//! through a `Waiter` whenever they cannot proceed.
//!
//! The waiter is `voxring_loom_tests::futex::FutexModel`, a futex stand-in that catches a
//! skipped wake call as a deadlock.
#![cfg(voxring_loom)]

use std::sync::Arc;

use voxring_core::{Policy, Producer, ReadError};
use voxring_loom_tests::assert_explored_many;
use voxring_loom_tests::futex::FutexModel;
use voxring_loom_tests::ring::new_ring;

mod common;
use common::{against_a_parking_producer, consume_parking};

#[test]
fn parked_sides_are_always_woken() {
    assert_explored_many("ring: park/wake, no lost wake-up", || {
        let got = against_a_parking_producer(|c, futex| consume_parking(c, 2, futex));
        assert_eq!(got, vec![0, 1]);
    });
}

/// Two consumers park on the same futex word (the second finds it already armed, or its
/// arming CAS races the first's and the producer's swap); the producer commits one frame and
/// makes the wake call only when the swapped-out word was armed. Neither may sleep forever.
#[test]
fn two_parked_consumers_are_both_woken() {
    assert_explored_many("ring: two consumers park on one armed word", || {
        let (_mem, ring) = new_ring(1, 2, Policy::Lossless);
        let futex = FutexModel::new();
        let mut producer: Producer = ring.producer(1).unwrap();
        let consumers = [ring.consumer(2).unwrap(), ring.consumer(3).unwrap()];
        let readers: Vec<_> = consumers
            .into_iter()
            .map(|mut consumer| {
                let futex = Arc::clone(&futex);
                loom::thread::spawn(move || {
                    loop {
                        match consumer.read_grant(1) {
                            Ok(g) => {
                                let m = g.frame(0).unwrap().meta();
                                assert_eq!(m.sample_pos, m.seq + 100);
                                // The producer here never waits for space: no wake due.
                                let _ = g.release_all().unwrap();
                                return m.seq;
                            }
                            Err(ReadError::Empty) => {}
                            Err(e) => panic!("{e}"),
                        }
                        consumer.wait_readable(&*futex, None).unwrap();
                    }
                })
            })
            .collect();
        let p = loom::thread::spawn(move || {
            let mut g = producer.write_grant(1).unwrap();
            let mut f = g.frame_mut(0).unwrap();
            let seq = f.seq();
            f.set_sample_pos(seq + 100);
            g.commit_all().wake(&*futex);
        });
        p.join().unwrap();
        for r in readers {
            assert_eq!(r.join().unwrap(), 0);
        }
    });
}
