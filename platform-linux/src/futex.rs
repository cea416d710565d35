//! futex wait and wake across processes, and a waiter that spins, then parks.
//!
//! The words live in shared memory mapped by several processes, so the calls never use
//! `FUTEX_PRIVATE_FLAG`: a private futex is keyed by (mm, address) and a wake from another
//! process reaches nobody (measured: the waiter sleeps until its timeout). Shared futexes are
//! keyed by the underlying page, which both mappings have in common.

use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::thread::futex;
use voxring_core::{WaitOutcome, Waiter};

/// How a futex wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FutexWait {
    /// Woken by a `wake` (or spuriously: the caller re-checks its condition).
    Woken,
    /// The word no longer held the expected value when the kernel looked.
    ValueChanged,
    /// The timeout passed.
    TimedOut,
    /// A signal interrupted the wait.
    Interrupted,
}

/// `futex(FUTEX_WAIT)` on a word that may be shared with other processes: sleeps while
/// `*word == expected`, at most `timeout` (relative). Blocking: not for the real-time path.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> FutexWait {
    let ts = timeout.map(|d| futex::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    match futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) {
        Ok(()) => FutexWait::Woken,
        Err(Errno::AGAIN) => FutexWait::ValueChanged,
        Err(Errno::TIMEDOUT) => FutexWait::TimedOut,
        Err(Errno::INTR) => FutexWait::Interrupted,
        // EFAULT/EINVAL cannot happen for a valid, aligned reference; report as a wake so the
        // caller re-checks its condition rather than sleeping forever.
        Err(_) => FutexWait::Woken,
    }
}

/// `futex(FUTEX_WAKE)`: wakes up to `count` waiters on `word` in any process; returns how
/// many were woken. One syscall; callers skip it when nobody is parked.
pub fn wake(word: &AtomicU32, count: u32) -> usize {
    futex::wake(word, futex::Flags::empty(), count).unwrap_or(0)
}

/// Wakes every waiter on `word`.
pub fn wake_all(word: &AtomicU32) -> usize {
    wake(word, i32::MAX as u32)
}

/// Sleeps until `CLOCK_MONOTONIC` reads `deadline_ns` (`clock_nanosleep` with
/// `TIMER_ABSTIME`): the timer of the periodic wait, which sleeps until just before a frame is
/// due instead of being woken by its producer. An absolute deadline does not drift with the
/// time spent before the call; a signal ends the sleep early (the caller re-checks its
/// condition anyway). A deadline in the past returns at once. Blocking: not for the real-time
/// path.
///
/// ```
/// let t = voxring_linux::clock::monotonic_ns() + 100_000;
/// voxring_linux::futex::sleep_until_ns(t);
/// assert!(voxring_linux::clock::monotonic_ns() >= t);
/// ```
pub fn sleep_until_ns(deadline_ns: u64) {
    let ts = rustix::time::Timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as i64,
        tv_nsec: (deadline_ns % 1_000_000_000) as i64,
    };
    // EINTR: woken early by a signal; the caller re-checks. No other error is possible for a
    // valid clock and a normalised timespec.
    let _ = rustix::thread::clock_nanosleep_absolute(rustix::thread::ClockId::Monotonic, &ts);
}

/// Spin for a while, then park on the futex.
///
/// Spinning keeps the hand-off sub-microsecond when the producer is about to publish (a wake
/// from the futex costs ~10-20 µs on the development VMs); parking keeps an idle consumer off
/// the CPU. The spin phase reads the clock (vDSO, no syscall) every 64 iterations.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use voxring_linux::futex::{FutexWaiter, WaitResult, wake_all};
///
/// let word = AtomicU32::new(0);
/// let waiter = FutexWaiter::new(Duration::ZERO); // park at once
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         // Release pairs with the waiter's Acquire load of the word.
///         word.store(1, Ordering::Release);
///         wake_all(&word);
///     });
///     // Returns once the word is no longer 0 (a wake-up that finds it still 0 parks again).
///     let r = waiter.wait_until_changed(&word, 0, Some(Duration::from_secs(10)));
///     assert_ne!(r, WaitResult::TimedOut);
/// });
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FutexWaiter {
    /// How long to spin before parking. Zero parks at once.
    pub spin: Duration,
}

impl Default for FutexWaiter {
    fn default() -> Self {
        FutexWaiter {
            spin: Duration::from_micros(50),
        }
    }
}

/// How [`FutexWaiter::wait_until_changed`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitResult {
    /// The word changed while spinning (no syscall was made).
    ChangedWhileSpinning,
    /// Parked and then woken, or the word changed before parking.
    Woken,
    /// The timeout passed with the word unchanged.
    TimedOut,
}

impl FutexWaiter {
    /// A waiter that spins for `spin` before parking.
    pub fn new(spin: Duration) -> Self {
        FutexWaiter { spin }
    }

    /// Waits until `word != expected` or `timeout` passed (None = no limit). Spurious wakes
    /// are absorbed: after a wake the word is re-checked.
    pub fn wait_until_changed(
        &self,
        word: &AtomicU32,
        expected: u32,
        timeout: Option<Duration>,
    ) -> WaitResult {
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        let spin_until = start + self.spin.min(timeout.unwrap_or(self.spin));
        let mut i: u32 = 0;
        loop {
            // Acquire pairs with the Release store the waking side makes before calling wake.
            if word.load(std::sync::atomic::Ordering::Acquire) != expected {
                return WaitResult::ChangedWhileSpinning;
            }
            i = i.wrapping_add(1);
            if i.is_multiple_of(64) && Instant::now() >= spin_until {
                break;
            }
            if self.spin.is_zero() {
                break;
            }
            std::hint::spin_loop();
        }
        loop {
            let remaining = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return WaitResult::TimedOut;
                    }
                    Some(d - now)
                }
                None => None,
            };
            match wait(word, expected, remaining) {
                FutexWait::TimedOut => {
                    // Acquire: as above.
                    return if word.load(std::sync::atomic::Ordering::Acquire) != expected {
                        WaitResult::Woken
                    } else {
                        WaitResult::TimedOut
                    };
                }
                FutexWait::ValueChanged => return WaitResult::Woken,
                FutexWait::Woken | FutexWait::Interrupted => {
                    // Acquire: as above. Re-check: wakes may be spurious.
                    if word.load(std::sync::atomic::Ordering::Acquire) != expected {
                        return WaitResult::Woken;
                    }
                }
            }
        }
    }
}

/// voxring-core's waits (`wait_readable`, `wait_writable`) and wakes (`Wake::wake`) on a
/// shared futex: spin for [`FutexWaiter::spin`], then park.
impl Waiter for FutexWaiter {
    fn wait(
        &self,
        word: &voxring_core::AtomicU32,
        expected: u32,
        timeout_ns: Option<u64>,
    ) -> WaitOutcome {
        let word = std_atomic(word);
        // Acquire pairs with the waker's Release bump of the word (core's wait protocol).
        if word.load(std::sync::atomic::Ordering::Acquire) != expected {
            return WaitOutcome::Ready;
        }
        match self.wait_until_changed(word, expected, timeout_ns.map(Duration::from_nanos)) {
            WaitResult::ChangedWhileSpinning | WaitResult::Woken => WaitOutcome::Woken,
            WaitResult::TimedOut => WaitOutcome::TimedOut,
        }
    }

    fn wake(&self, word: &voxring_core::AtomicU32) {
        wake_all(std_atomic(word));
    }
}

/// Views core's futex word as the standard atomic rustix's futex calls take.
fn std_atomic(word: &voxring_core::AtomicU32) -> &std::sync::atomic::AtomicU32 {
    // SAFETY: portable-atomic documents `AtomicU32` as having the same size, alignment and
    // in-memory representation as `u32`, as does `std::sync::atomic::AtomicU32`; both only
    // allow atomic access to the value, so viewing one as the other for the same lifetime is
    // sound.
    unsafe { &*(word as *const voxring_core::AtomicU32).cast::<std::sync::atomic::AtomicU32>() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    #[test]
    fn wait_returns_at_once_when_the_value_differs_and_times_out_when_nobody_wakes() {
        let w = AtomicU32::new(5);
        for (expected, timeout, result) in [
            (4, Duration::from_secs(10), FutexWait::ValueChanged),
            (5, Duration::from_millis(1), FutexWait::TimedOut),
        ] {
            assert_eq!(
                wait(&w, expected, Some(timeout)),
                result,
                "expected {expected}"
            );
        }
        let waiter = FutexWaiter::new(Duration::from_micros(10));
        assert_eq!(
            waiter.wait_until_changed(&w, 5, Some(Duration::from_millis(1))),
            WaitResult::TimedOut
        );
    }

    #[test]
    fn a_parked_waiter_is_woken_by_a_change_and_wake() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = Arc::clone(&w);
        let t = std::thread::spawn(move || {
            FutexWaiter::new(Duration::ZERO).wait_until_changed(&w2, 0, None)
        });
        // Whether the thread parked before or after the store, it must end with Woken or
        // ChangedWhileSpinning and see the new value.
        std::thread::sleep(Duration::from_millis(5));
        // Release pairs with the Acquire loads in wait_until_changed.
        w.store(1, Ordering::Release);
        wake_all(&w);
        let r = t.join().unwrap();
        assert!(matches!(
            r,
            WaitResult::Woken | WaitResult::ChangedWhileSpinning
        ));
    }
}
