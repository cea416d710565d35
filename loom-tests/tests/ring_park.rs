//! loom models of park/wake: a lossless producer and consumers on a one-frame ring, sleeping
//! through a `Waiter` whenever they cannot proceed.
//!
//! The waiter is `voxring_loom_tests::futex::FutexModel`, a futex stand-in that catches a
//! skipped wake call as a deadlock.
#![cfg(voxring_loom)]

use std::sync::Arc;

use voxring_core::{GrantError, Policy, Producer, ReadError};
use voxring_loom_tests::assert_explored_many;
use voxring_loom_tests::futex::FutexModel;
use voxring_loom_tests::ring::new_ring;

#[test]
fn parked_sides_are_always_woken() {
    assert_explored_many("ring: park/wake, no lost wake-up", || {
        let (_mem, ring) = new_ring(1, 1, Policy::Lossless);
        let futex = FutexModel::new();
        let futex2 = Arc::clone(&futex);
        let mut producer: Producer = ring.producer(1).unwrap();
        let mut consumer = ring.consumer(2).unwrap();
        let p = loom::thread::spawn(move || {
            let mut sent = 0;
            while sent < 2 {
                match producer.write_grant(1) {
                    Ok(mut g) => {
                        let mut f = g.frame_mut(0).unwrap();
                        let seq = f.seq();
                        f.set_sample_pos(seq + 100);
                        f.payload_mut().fill(seq as u8 + 1);
                        g.commit_all().wake(&*futex);
                        sent += 1;
                        continue;
                    }
                    Err(GrantError::Full) => {}
                    Err(e) => panic!("{e}"),
                }
                producer.wait_writable(&*futex, None).unwrap();
            }
        });
        let c = loom::thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 2 {
                match consumer.read_grant(1) {
                    Ok(g) => {
                        let f = g.frame(0).unwrap();
                        let m = f.meta();
                        assert_eq!(m.sample_pos, m.seq + 100);
                        assert_eq!(f.payload(), &[m.seq as u8 + 1; 4]);
                        got.push(m.seq);
                        g.release_all().unwrap().wake(&*futex2);
                        continue;
                    }
                    Err(ReadError::Empty) => {}
                    Err(e) => panic!("{e}"),
                }
                consumer.wait_readable(&*futex2, None).unwrap();
            }
            got
        });
        p.join().unwrap();
        assert_eq!(c.join().unwrap(), vec![0, 1]);
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
