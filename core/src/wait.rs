//! Park/wake without the syscall: core decides *whether* a wake-up is needed; a [`Waiter`]
//! (futex on Linux, [`SpinWaiter`] on bare metal) does the sleeping and waking.
//!
//! The protocol (both directions are the same Dekker pattern):
//!
//! * the sleeper announces itself (a `parked` count or flag in the header, SeqCst RMW/store),
//!   reads the futex word (Acquire), issues `fence(SeqCst)`, and re-checks its condition
//!   (data to read, space to write); only if it still does not hold does it call
//!   [`Waiter::wait`] with the futex value it read;
//! * the other side publishes its progress (the cursor store), issues `fence(SeqCst)`, and
//!   reads the `parked` word; only if someone is parked does it bump the futex word (Release)
//!   and ask for a wake ([`Wake`]).
//!
//! The two SeqCst fences make it impossible for both sides to miss each other: either the
//! waker sees the announcement, or the sleeper sees the progress. A bump that lands between
//! the sleeper's read of the futex word and its `wait` makes the wait return at once (the
//! word no longer holds the expected value). loom models this in `loom-tests/tests/ring_park.rs`.
//!
//! # What a forged `parked` count costs the waker
//!
//! The `parked` words are written by peers, so they are hints, not facts: a peer can store
//! any value there at any time. On its own a non-zero count only makes the waker move the
//! futex word on (one atomic read-modify-write, no syscall). The wake syscall is made only
//! when a sleeper *armed* the word, just before sleeping:
//!
//! * a sleeper that found nothing to do sets the `SLEEPER` bit (bit 0) of the futex word it
//!   read, with a compare-exchange (`arm`), and waits on the armed value; if the CAS fails
//!   the word moved on (progress was made) and it does not sleep;
//! * the waker moves the word on by 2 (so the bit of a sleeper that has not slept yet, or its
//!   CAS, fails) and asks for a wake only if the value it replaced had the bit set.
//!
//! The producer wakes consumers: it is the only legitimate writer of even values of
//! `data_futex`, keeps the last one in a producer-local field and stores that + 2 (a swap that
//! clears the bit). Consumers wake the (single) producer: they add 2 to `space_futex`, which
//! keeps the bit, and the producer clears it when it wakes up.
//!
//! The bound, whatever peers write to the wait block: each commit, release or eviction makes
//! **at most one** wake call; a forged `consumers_parked`/`producer_parked` with an unarmed
//! word makes **none**; to get one wake per commit a peer must re-arm the futex word between
//! every two commits, which is exactly what one genuinely sleeping consumer costs. The
//! `Waiter` wakes every sleeper on the word, so a peer that parks its own threads on the word
//! pays for their wake-ups in the same syscall (see `platform-linux`'s futex wake).

// The futex word type is the shim's `AtomicU32` (portable-atomic's, the same layout as a `u32`,
// so a platform can futex on its address; loom's under the model checker). It is re-exported
// here so the `Waiter` trait can name it publicly.
#[cfg(not(voxring_loom))]
pub use portable_atomic::AtomicU32;

#[cfg(voxring_loom)]
pub use loom::sync::atomic::AtomicU32;

use crate::sync::Ordering;
use core::ptr::NonNull;

/// Bit 0 of a futex word: a sleeper armed the word and is (about to be) asleep on it, so the
/// side that moves the word on must make the wake call. Wakers move the word in steps of 2.
pub(crate) const SLEEPER: u32 = 1;

/// Arms `word` for a sleep: sets [`SLEEPER`] in `seen` (the value the sleeper read before
/// re-checking its condition) and returns the value to wait on, or `None` when the word no
/// longer holds `seen`, i.e. the other side made progress since: re-check, do not sleep.
///
/// If `seen` is already armed (another consumer sleeps on it), returns it as it is.
pub(crate) fn arm(word: &AtomicU32, seen: u32) -> Option<u32> {
    if seen & SLEEPER != 0 {
        return Some(seen);
    }
    // Relaxed: the wake decision rests on the modification order of this one word alone
    // (the waker's swap or add is a read-modify-write of it too: whichever of the two comes
    // second sees the first); no other memory is published through the bit.
    match word.compare_exchange(seen, seen | SLEEPER, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => Some(seen | SLEEPER),
        // Another consumer armed the same value first: sleep on it too.
        Err(now) if now == seen | SLEEPER => Some(now),
        Err(_) => None,
    }
}

/// How a wait ended.
///
/// ```
/// use voxring_core::{AtomicU32, SpinWaiter, WaitOutcome, Waiter};
/// let word = AtomicU32::new(1);
/// // The word no longer holds what the caller saw: no sleep at all.
/// assert_eq!(SpinWaiter::new(10).wait(&word, 0, None), WaitOutcome::Ready);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The condition already held (or the word had already changed): no sleep happened.
    Ready,
    /// Woken (or a spurious wake-up): re-check the condition.
    Woken,
    /// The timeout (or the spin budget) ran out.
    TimedOut,
}

/// A way to sleep on a 32-bit word and to wake its sleepers.
///
/// Implementations must tolerate spurious wake-ups in both directions: callers always
/// re-check their condition after `wait` returns.
///
/// ```
/// use voxring_core::{AtomicU32, Policy, Ring, RingConfig, SampleFormat, WaitOutcome, Waiter};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// /// A waiter that only counts the wake calls it is asked to make.
/// #[derive(Default)]
/// struct Counting(AtomicUsize);
/// impl Waiter for Counting {
///     fn wait(&self, word: &AtomicU32, expected: u32, _timeout_ns: Option<u64>) -> WaitOutcome {
///         if word.load(portable_atomic::Ordering::Acquire) == expected {
///             WaitOutcome::TimedOut
///         } else {
///             WaitOutcome::Ready
///         }
///     }
///     fn wake(&self, _word: &AtomicU32) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// let waiter = Counting::default();
/// let cfg = RingConfig {
///     frames: 4,
///     samples_per_frame: 16,
///     channels: 1,
///     format: SampleFormat::F32,
///     sample_rate: 48_000,
///     max_consumers: 1,
///     policy: Policy::Lossless,
/// };
/// #[repr(C, align(128))]
/// struct Region([u8; 4096]);
/// let mut region = Region([0; 4096]);
/// let need = cfg.region_size()?;
/// assert!(need <= 4096);
/// // SAFETY: the buffer is ours, aligned, and outlives the ring's handles.
/// let ring = unsafe { Ring::create(region.0.as_mut_ptr(), need, &cfg) }?;
/// let mut tx = ring.producer(1)?;
/// // Nobody is parked: the commit asks for no wake call.
/// tx.write_grant(1)?.commit_all().wake(&waiter);
/// assert_eq!(waiter.0.load(Ordering::Relaxed), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Waiter {
    /// Sleeps while `word` holds `expected`, at most `timeout_ns` nanoseconds (forever when
    /// `None`). Returns [`WaitOutcome::Ready`] if the word did not hold `expected` on entry.
    fn wait(&self, word: &AtomicU32, expected: u32, timeout_ns: Option<u64>) -> WaitOutcome;
    /// Wakes every sleeper on `word`.
    fn wake(&self, word: &AtomicU32);

    /// How many times core polls the condition before it announces the sleeper as parked
    /// and calls [`Waiter::wait`]. While the sleeper only polls, the other side sees nobody
    /// parked and makes no wake call; a waiter that spins before really sleeping should spin
    /// here rather than inside `wait`. Default: 0 (announce at once).
    fn spins_before_park(&self) -> u32 {
        0
    }
}

/// A [`Waiter`] that spins (for bare metal, or when a wake-up must take nanoseconds).
///
/// Core has no clock, so the timeout is a spin budget: `wait` polls the word at most
/// `max_spins` times and then reports [`WaitOutcome::TimedOut`]; `timeout_ns` is ignored.
/// `wake` does nothing: the spinner sees the word change by itself.
///
/// ```
/// use voxring_core::{SpinWaiter, Waiter, WaitOutcome, AtomicU32};
/// let word = AtomicU32::new(7);
/// let waiter = SpinWaiter::new(100);
/// assert_eq!(waiter.wait(&word, 7, None), WaitOutcome::TimedOut);
/// assert_eq!(waiter.wait(&word, 3, None), WaitOutcome::Ready);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct SpinWaiter {
    max_spins: u32,
}

impl SpinWaiter {
    /// A spinner that polls at most `max_spins` times per wait.
    pub const fn new(max_spins: u32) -> Self {
        SpinWaiter { max_spins }
    }
}

impl Default for SpinWaiter {
    fn default() -> Self {
        SpinWaiter::new(1 << 16)
    }
}

impl Waiter for SpinWaiter {
    fn wait(&self, word: &AtomicU32, expected: u32, _timeout_ns: Option<u64>) -> WaitOutcome {
        // Acquire pairs with the waker's Release bump of the word (see the module docs).
        if word.load(Ordering::Acquire) != expected {
            return WaitOutcome::Ready;
        }
        for _ in 0..self.max_spins {
            crate::sync::spin_hint();
            // Acquire: as above.
            if word.load(Ordering::Acquire) != expected {
                return WaitOutcome::Woken;
            }
        }
        WaitOutcome::TimedOut
    }

    fn wake(&self, _word: &AtomicU32) {}
}

/// Whether a commit, release or eviction must wake a sleeper, and on which word.
///
/// Returned by the operations that make progress; when nobody is parked it holds nothing and
/// [`Wake::wake`] makes no call at all, so the common case costs no syscall.
///
/// It is `#[must_use]`: dropping one that is [`needed`](Wake::needed) leaves the parked side
/// asleep until its timeout. Hand it to the same waiter the other side parks with.
///
/// ```
/// # use voxring_core::{Policy, Ring, RingConfig, SampleFormat};
/// # #[repr(C, align(128))] struct Region([u8; 4096]);
/// # let mut region = Region([0; 4096]);
/// # let cfg = RingConfig { frames: 4, samples_per_frame: 8, channels: 1,
/// #     format: SampleFormat::S16, sample_rate: 16_000, max_consumers: 2,
/// #     policy: Policy::Lossless };
/// # // SAFETY: valid, aligned, unused region that outlives the handles.
/// # let ring = unsafe { Ring::create(region.0.as_mut_ptr(), 4096, &cfg) }?;
/// use voxring_core::SpinWaiter;
/// let waiter = SpinWaiter::default();
/// let mut producer = ring.producer(1)?;
/// let wake = producer.write_grant(1)?.commit_all();
/// assert!(!wake.needed()); // no consumer is parked
/// wake.wake(&waiter); // makes no call
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
#[must_use = "a parked peer sleeps until its timeout unless this is woken: call .wake(&waiter)"]
pub struct Wake {
    word: Option<NonNull<AtomicU32>>,
}

// SAFETY: `Wake` only carries the address of an atomic inside a ring region; atomics may be
// used from any thread, and the region outlives every handle (the contract of `Ring::create`
// and `Ring::attach`).
unsafe impl Send for Wake {}
// SAFETY: as above; `&Wake` gives no access beyond an atomic bump.
unsafe impl Sync for Wake {}

impl Wake {
    /// No wake-up needed.
    pub const fn none() -> Self {
        Wake { word: None }
    }

    pub(crate) fn on(word: &AtomicU32) -> Self {
        Wake {
            word: Some(NonNull::from(word)),
        }
    }

    /// True when someone is parked and [`Wake::wake`] will call the waiter.
    pub fn needed(&self) -> bool {
        self.word.is_some()
    }

    /// Wakes the parked side through `waiter` if needed; otherwise does nothing.
    pub fn wake(self, waiter: &impl Waiter) {
        if let Some(word) = self.word {
            // SAFETY: `word` points at a futex word inside a ring region, which stays mapped
            // while any handle derived from it is alive (contract of `Ring::create`/`attach`).
            let word = unsafe { word.as_ref() };
            waiter.wake(word);
        }
    }
}
