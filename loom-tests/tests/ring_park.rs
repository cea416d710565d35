//! loom models of park/wake: a lossless producer and consumers on a one-frame ring, sleeping
//! through a `Waiter` whenever they cannot proceed.
//!
//! The waiter models a futex faithfully enough to catch a skipped wake call: `wait` checks the
//! word and records the word's wake generation under one lock (the kernel's hash-bucket lock),
//! then blocks on a condition variable until a `wake` call on that word bumps the generation.
//! A word that merely changes does not end the sleep. So a waker that moves the word on but
//! wrongly decides no wake call is needed (core's `SLEEPER` bit, see `voxring_core::wait`)
//! leaves the sleeper blocked, and loom fails the model (deadlock), as it does for a lost
//! wake-up.
#![cfg(voxring_loom)]

use std::sync::Arc;

use loom::sync::{Condvar, Mutex};
use voxring_core::{AtomicU32, GrantError, Policy, Producer, ReadError, WaitOutcome, Waiter};
use voxring_loom_tests::assert_explored_many;
use voxring_loom_tests::ring::new_ring;

/// A futex stand-in: wake generations keyed by the word's address, under one lock.
struct FutexModel {
    gens: Mutex<Vec<(usize, u64)>>,
    cv: Condvar,
}

impl FutexModel {
    fn new() -> Arc<Self> {
        Arc::new(FutexModel {
            gens: Mutex::new(Vec::new()),
            cv: Condvar::new(),
        })
    }
}

/// The generation of `word` in `gens` (0 until its first wake).
fn generation<'a>(gens: &'a mut Vec<(usize, u64)>, word: &AtomicU32) -> &'a mut u64 {
    let addr = word as *const AtomicU32 as usize;
    let i = match gens.iter().position(|&(a, _)| a == addr) {
        Some(i) => i,
        None => {
            gens.push((addr, 0));
            gens.len() - 1
        }
    };
    &mut gens[i].1
}

impl Waiter for FutexModel {
    fn wait(&self, word: &AtomicU32, expected: u32, _timeout_ns: Option<u64>) -> WaitOutcome {
        let mut gens = self.gens.lock().unwrap();
        // Acquire: pairs with the waker's Release swap or add of the word. Under the lock,
        // like FUTEX_WAIT's check: a wake that comes after it bumps the generation.
        if word.load(loom::sync::atomic::Ordering::Acquire) != expected {
            return WaitOutcome::Ready;
        }
        let start = *generation(&mut gens, word);
        while *generation(&mut gens, word) == start {
            gens = self.cv.wait(gens).unwrap();
        }
        WaitOutcome::Woken
    }

    fn wake(&self, word: &AtomicU32) {
        *generation(&mut self.gens.lock().unwrap(), word) += 1;
        self.cv.notify_all();
    }
}

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
