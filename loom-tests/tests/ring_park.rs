//! loom model of park/wake: a lossless producer and consumer on a one-frame ring, both
//! sleeping through a `Waiter` whenever they cannot proceed. The waiter spins (with loom
//! yields) until its futex word changes, so a lost wake-up (a sleeper that nobody wakes)
//! makes the model spin until loom's branch limit fails it.
#![cfg(voxring_loom)]

use voxring_core::{AtomicU32, GrantError, Policy, Producer, ReadError, WaitOutcome, Waiter};
use voxring_loom_tests::assert_explored_many;
use voxring_loom_tests::ring::{cfg, create, region};

/// Sleeps by spinning until the word no longer holds `expected`; wakes nobody (the spinner
/// sees the change itself). Stands in for a futex.
struct LoomSpin;

impl Waiter for LoomSpin {
    fn wait(&self, word: &AtomicU32, expected: u32, _timeout_ns: Option<u64>) -> WaitOutcome {
        // Acquire: pairs with the waker's Release bump of the word.
        if word.load(loom::sync::atomic::Ordering::Acquire) != expected {
            return WaitOutcome::Ready;
        }
        loop {
            loom::thread::yield_now();
            // Acquire: as above.
            if word.load(loom::sync::atomic::Ordering::Acquire) != expected {
                return WaitOutcome::Woken;
            }
        }
    }

    fn wake(&self, _word: &AtomicU32) {}
}

#[test]
fn parked_sides_are_always_woken() {
    assert_explored_many("ring: park/wake, no lost wake-up", || {
        let cfg = cfg(1, 1, Policy::Lossless);
        let mut mem = region(&cfg);
        let ring = create(&mut mem, &cfg);
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
                        g.commit_all().wake(&LoomSpin);
                        sent += 1;
                        continue;
                    }
                    Err(GrantError::Full) => {}
                    Err(e) => panic!("{e}"),
                }
                producer.wait_writable(&LoomSpin, None).unwrap();
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
                        g.release_all().unwrap().wake(&LoomSpin);
                        continue;
                    }
                    Err(ReadError::Empty) => {}
                    Err(e) => panic!("{e}"),
                }
                consumer.wait_readable(&LoomSpin, None).unwrap();
            }
            got
        });
        p.join().unwrap();
        assert_eq!(c.join().unwrap(), vec![0, 1]);
    });
}
