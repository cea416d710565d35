//! Waiting for a newer value: a reader sleeps until the register's version moves past one it
//! has seen, and a writer wakes it, making the wake call **only when a reader sleeps**.
//!
//! The futex word is `wake` (offset 20 of the register). Its protocol is core's park/wake
//! pattern for rings (`crate::wait`) with the register's `seq` as the progress word:
//!
//! * **wait** (reader, [`ControlRegister::wait_newer`]): if `version() > seen`, return. Else
//!   `fetch_or(SLEEPER)` on `wake` (arm it; a read-modify-write even when another reader armed
//!   it already, so the fence rule below applies to this thread's own access), then
//!   **fence(SeqCst)**, then re-check `version() > seen`; only if it still does not hold, sleep
//!   through the [`Waiter`] while `wake` holds the armed value. A writer that moves the word on
//!   between the arm and the sleep makes the sleep return at once.
//! * **publish** (writer, [`ControlRegister::publish`]): the normal write (its last store is
//!   the even `seq`, Release), then **fence(SeqCst)**, then load `wake` (Relaxed). Only if
//!   bit 0 is set: `compare_exchange(armed, armed + 1)` (the next even value: disarmed and moved
//!   on, so a sleeper that armed this value and has not slept yet does not sleep) and return a
//!   [`Wake`] on the word; the caller's waiter wakes every sleeper on it. A failed exchange
//!   means another writer moved the word on and wakes the sleepers itself.
//!
//! The two SeqCst fences (Dekker): either the writer's load of `wake` sees the reader's arm
//! (it then wakes), or the reader's re-check of `seq`, after its fence, sees the new version
//! (it then does not sleep). A reader that saw the version move never leaves the word
//! disarmed, so the next publish may make one wake call nobody needed: that is the cost of a
//! reader that stops waiting, at most one call per wait.
//!
//! A plain [`ControlRegister::write`] does none of this (no fence, no load): a writer that
//! knows nobody waits pays nothing. A sleeper then sleeps until its timeout, or until a later
//! `publish`.
//!
//! **What a hostile peer can do**: the word is in shared memory. Forging bit 0 makes every
//! publish make one wake call (a `FUTEX_WAKE`, never blocking): at most one per write, the
//! cost of one genuinely waiting reader. Forging the word to another value only ends sleeps
//! early (sleepers re-check the version). Waits are bounded by their timeout whatever a peer
//! does. The word wraps after 2^31 wake-ups: a sleeper that armed a value and was descheduled
//! for that many wake-ups before sleeping could sleep until its timeout.
//!
//! loom models it in `loom-tests/tests/control_wait.rs` (a lost wake-up is a deadlock there).
//! The `planted-bug` feature (loom builds only) moves the writer's look at `wake` before its
//! publishing store; that model must then fail.

use super::{ControlRegister, Plain, ReadError, WriteError, to_words};
use crate::sync::{Ordering, fence};
use crate::wait::{SLEEPER, WaitOutcome, Waiter, Wake};

/// How [`ControlRegister::wait_newer`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlWaitOutcome {
    /// The version is past `seen` now (it may move further before you read).
    Newer(u64),
    /// The waiter woke up (or was woken spuriously) and the version is still `seen` or
    /// older: wait again with the time that is left.
    Again,
    /// The waiter's timeout passed.
    TimedOut,
}

impl<T: Plain, const WORDS: usize> ControlRegister<T, WORDS> {
    /// Writes `value` like [`write`](Self::write) and returns a [`Wake`] that is
    /// [`needed`](Wake::needed) only when a reader waits in [`wait_newer`](Self::wait_newer):
    /// hand it to the waiter readers sleep with. When nobody waits this costs one SeqCst fence
    /// and one load more than `write`, and no call.
    ///
    /// ```
    /// use voxring_core::{SpinWaiter, control::ControlRegister};
    /// let r = ControlRegister::<u32, 1>::new(0);
    /// let wake = r.publish(7).unwrap();
    /// assert!(!wake.needed()); // nobody waits: no wake call
    /// wake.wake(&SpinWaiter::default());
    /// assert_eq!(r.read(), Ok(7));
    /// ```
    ///
    /// # Errors
    /// [`WriteError::Busy`] with the value when another write is in progress.
    pub fn publish(&self, value: T) -> Result<Wake, WriteError<T>> {
        self.publish_words(to_words::<T, WORDS>(&value))
            .map_err(|()| WriteError::Busy(value))
    }

    fn publish_words(&self, words: [u64; WORDS]) -> Result<Wake, ()> {
        #[cfg(all(voxring_loom, feature = "planted-bug"))]
        let early = self.wake.load(Ordering::Relaxed);
        self.write_words(words)?;
        // SeqCst: pairs with the waiting reader's fence between its arm of `wake` and its
        // re-check of `seq` (Dekker, see the module docs): either the load below sees the arm,
        // or the reader sees the `seq` just stored.
        fence(Ordering::SeqCst);
        #[cfg(not(all(voxring_loom, feature = "planted-bug")))]
        // Relaxed: ordered after the `seq` store by the fence above.
        let armed = self.wake.load(Ordering::Relaxed);
        // Planted bug: the look at `wake` was made before the write, so a reader that armed
        // in between is missed (its wake-up is lost).
        #[cfg(all(voxring_loom, feature = "planted-bug"))]
        let armed = early;
        if armed & SLEEPER == 0 {
            return Ok(Wake::none());
        }
        // Relaxed: the wake decision rests on this word's modification order alone; sleepers
        // re-check `seq` (Acquire) after waking.
        match self.wake.compare_exchange(
            armed,
            armed.wrapping_add(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(Wake::on(&self.wake)),
            // Another writer moved it on (sleepers only set bit 0, which is already set): that
            // writer makes the wake call.
            Err(_) => Ok(Wake::none()),
        }
    }

    /// Sleeps through `waiter` until the version is past `seen`, at most `timeout_ns` (one
    /// sleep: a caller with a clock loops on [`ControlWaitOutcome::Again`] with the time left).
    /// Returns [`ControlWaitOutcome::Newer`] without sleeping when the version is already past
    /// `seen`. The writer must use [`publish`](Self::publish) (and wake its [`Wake`]) for the
    /// sleep to end before the timeout.
    ///
    /// ```
    /// use voxring_core::{SpinWaiter, control::{ControlRegister, ControlWaitOutcome}};
    /// let r = ControlRegister::<u32, 1>::new(0);
    /// let spin = SpinWaiter::new(100);
    /// assert_eq!(r.wait_newer(0, &spin, None), ControlWaitOutcome::TimedOut);
    /// r.publish(1).unwrap().wake(&spin);
    /// assert_eq!(r.wait_newer(0, &spin, None), ControlWaitOutcome::Newer(1));
    /// ```
    pub fn wait_newer<W: Waiter + ?Sized>(
        &self,
        seen: u64,
        waiter: &W,
        timeout_ns: Option<u64>,
    ) -> ControlWaitOutcome {
        let v = self.version();
        if v > seen {
            return ControlWaitOutcome::Newer(v);
        }
        // Poll first without arming, so writers make no wake call meanwhile.
        for _ in 0..waiter.spins_before_park() {
            crate::sync::spin_hint();
            let v = self.version();
            if v > seen {
                return ControlWaitOutcome::Newer(v);
            }
        }
        // Relaxed: as in `publish`, the word's modification order alone decides the wake; the
        // SeqCst fence below orders this arm before the re-check of `seq`.
        let armed = self.wake.fetch_or(SLEEPER, Ordering::Relaxed) | SLEEPER;
        // SeqCst: pairs with the fence in `publish` (see the module docs).
        fence(Ordering::SeqCst);
        let v = self.version();
        if v > seen {
            return ControlWaitOutcome::Newer(v);
        }
        let slept = waiter.wait(&self.wake, armed, timeout_ns);
        let v = self.version();
        match slept {
            _ if v > seen => ControlWaitOutcome::Newer(v),
            WaitOutcome::TimedOut => ControlWaitOutcome::TimedOut,
            WaitOutcome::Ready | WaitOutcome::Woken => ControlWaitOutcome::Again,
        }
    }
}

/// A control register seen as bytes, whatever its payload type and size: what the C ABI and
/// the Python package use, so one handle type can open a register of any size (its own
/// segment's, or one inside a hub's directory). Object safe.
///
/// ```
/// use voxring_core::control::{ControlRegister, RawRegister};
/// let r = ControlRegister::<[u16; 3], 1>::new([1, 2, 3]);
/// let raw: &dyn RawRegister = &r;
/// assert_eq!(raw.payload_len(), 6);
/// let mut out = [0u8; 6];
/// assert_eq!(raw.read_bytes(&mut out, 1), Ok(0));
/// assert_eq!(out, [1, 0, 2, 0, 3, 0]);
/// raw.publish_bytes(&[9, 0]).unwrap();
/// assert_eq!(r.read(), Ok([9, 0, 0]));
/// ```
pub trait RawRegister: Sync {
    /// Bytes of the payload (`size_of::<T>()`).
    fn payload_len(&self) -> usize;
    /// Writes completed so far.
    fn version(&self) -> u64;
    /// Reads the first `out.len()` payload bytes (at most [`payload_len`](Self::payload_len))
    /// and returns the version, like [`ControlRegister::read_with_retries`].
    ///
    /// # Errors
    /// [`ReadError::Contended`] when every attempt overlapped a write.
    fn read_bytes(&self, out: &mut [u8], retries: u32) -> Result<u64, ReadError>;
    /// Publishes `data` (at most [`payload_len`](Self::payload_len) bytes; the rest become
    /// zero) like [`ControlRegister::publish`]; `Err(())` when another write is in progress.
    #[allow(clippy::result_unit_err)]
    fn publish_bytes(&self, data: &[u8]) -> Result<Wake, ()>;
    /// [`ControlRegister::wait_newer`].
    fn wait_newer_dyn(
        &self,
        seen: u64,
        waiter: &dyn Waiter,
        timeout_ns: Option<u64>,
    ) -> ControlWaitOutcome;
    /// [`ControlRegister::recover_abandoned_write`].
    fn recover_abandoned_write(&self) -> bool;
}

impl<T: Plain, const WORDS: usize> RawRegister for ControlRegister<T, WORDS> {
    fn payload_len(&self) -> usize {
        size_of::<T>()
    }

    fn version(&self) -> u64 {
        ControlRegister::version(self)
    }

    fn read_bytes(&self, out: &mut [u8], retries: u32) -> Result<u64, ReadError> {
        let (words, v) = self.read_words(retries)?;
        // Only the payload's bytes (`take`): the zero padding after them is not data.
        for (i, b) in out.iter_mut().take(size_of::<T>()).enumerate() {
            *b = words[i / 8].to_ne_bytes()[i % 8];
        }
        Ok(v)
    }

    fn publish_bytes(&self, data: &[u8]) -> Result<Wake, ()> {
        let mut words = [0u64; WORDS];
        for (i, b) in data.iter().take(size_of::<T>()).enumerate() {
            let mut w = words[i / 8].to_ne_bytes();
            w[i % 8] = *b;
            words[i / 8] = u64::from_ne_bytes(w);
        }
        self.publish_words(words)
    }

    fn wait_newer_dyn(
        &self,
        seen: u64,
        waiter: &dyn Waiter,
        timeout_ns: Option<u64>,
    ) -> ControlWaitOutcome {
        self.wait_newer(seen, waiter, timeout_ns)
    }

    fn recover_abandoned_write(&self) -> bool {
        ControlRegister::recover_abandoned_write(self)
    }
}
