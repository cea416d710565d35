//! loom models of waiting on a control register (`ControlRegister::wait_newer` and
//! `ControlRegister::publish`, protocol in `voxring_core::control`'s `wait` module): a reader
//! blocked until the version moves is always woken by a publishing writer (a lost wake-up is a
//! deadlock under `FutexModel`), a reader whose timeout ran out leaves nothing that stops the
//! next wait from being woken, and the value seen after the wait is the one published.
//!
//! the `planted-bug` feature makes `publish` look for sleepers before its publishing store;
//! `waiting_readers_are_always_woken` must then fail (scripts/test checks it does).
#![cfg(voxring_loom)]

use std::sync::Arc;

use loom::sync::atomic::Ordering;
use voxring_core::control::{ControlRegister, ControlWaitOutcome};
use voxring_core::{AtomicU32, WaitOutcome, Waiter};
use voxring_loom_tests::assert_explored_many;
use voxring_loom_tests::futex::FutexModel;

type Reg = ControlRegister<[u64; 2], 2>;

/// Waits (no timeout) until the version is past `seen`; returns it. Loops on `Again`, as the
/// platform's wait does on a spurious wake-up.
fn wait_past(reg: &Reg, seen: u64, futex: &FutexModel) -> u64 {
    loop {
        match reg.wait_newer(seen, futex, None) {
            ControlWaitOutcome::Newer(v) => return v,
            ControlWaitOutcome::Again => {}
            ControlWaitOutcome::TimedOut => panic!("FutexModel has no timeout"),
        }
    }
}

/// Starts a loom thread running `body` on its own handles to the register and the futex.
fn spawn_on<T: Send + 'static>(
    reg: &Arc<Reg>,
    futex: &Arc<FutexModel>,
    body: impl FnOnce(&Reg, &FutexModel) -> T + Send + 'static,
) -> loom::thread::JoinHandle<T> {
    let (reg, futex) = (Arc::clone(reg), Arc::clone(futex));
    loom::thread::spawn(move || body(&reg, &futex))
}

/// Explores a writer that publishes `[1, 1]` once (passing its wake to the futex) racing one
/// reader thread running `reader` on a fresh register.
fn explore_one_publish(name: &str, reader: fn(&Reg, &FutexModel)) {
    assert_explored_many(name, move || {
        let reg = Arc::new(Reg::new([0, 0]));
        let futex = FutexModel::new();
        let writer = spawn_on(&reg, &futex, |reg, futex| {
            reg.publish([1, 1]).unwrap().wake(futex)
        });
        let reader = spawn_on(&reg, &futex, reader);
        writer.join().unwrap();
        reader.join().unwrap();
    });
}

#[test]
fn waiting_readers_are_always_woken() {
    explore_one_publish("control: waiting reader woken by publish", |reg, futex| {
        assert_eq!(wait_past(reg, 0, futex), 1);
        // After the wait, the value is the published one.
        assert_eq!(reg.read_with_retries(1), Ok(([1, 1], 1)));
    });
}

#[test]
fn two_readers_and_two_writes_are_all_woken() {
    assert_explored_many("control: two waiting readers, two publishes", || {
        let reg = Arc::new(Reg::new([0, 0]));
        let futex = FutexModel::new();
        let writer = spawn_on(&reg, &futex, |reg, futex| {
            reg.publish([1, 1]).unwrap().wake(futex);
            reg.publish([2, 2]).unwrap().wake(futex);
        });
        let readers: Vec<_> = (0..2)
            .map(|_| {
                spawn_on(&reg, &futex, |reg, futex| {
                    // Wait for the first write, then for whatever comes after what it saw.
                    let seen = wait_past(reg, 0, futex);
                    if seen < 2 {
                        assert_eq!(wait_past(reg, seen, futex), 2);
                    }
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(reg.read_with_retries(1), Ok(([2, 2], 2)));
    });
}

/// A waiter whose timeout always runs out at once when the word still holds the armed value
/// (a timed-out sleep, in any interleaving); it never blocks.
#[derive(Debug)]
struct ExpiresAtOnce;

impl Waiter for ExpiresAtOnce {
    fn wait(&self, word: &AtomicU32, expected: u32, _timeout_ns: Option<u64>) -> WaitOutcome {
        // Acquire: pairs with the writer's move of the word (as FUTEX_WAIT's check).
        if word.load(Ordering::Acquire) == expected {
            WaitOutcome::TimedOut
        } else {
            WaitOutcome::Ready
        }
    }
    fn wake(&self, _word: &AtomicU32) {}
}

#[test]
fn a_timed_out_reader_is_still_woken_next_time() {
    explore_one_publish("control: timeout, then a woken wait", |reg, futex| {
        match reg.wait_newer(0, &ExpiresAtOnce, Some(1)) {
            ControlWaitOutcome::Newer(v) => assert_eq!(v, 1),
            // Timed out (the word is left armed) or moved on meanwhile: a second
            // wait, now blocking, must still end.
            ControlWaitOutcome::TimedOut | ControlWaitOutcome::Again => {
                assert_eq!(wait_past(reg, 0, futex), 1);
            }
        }
    });
}
