//! Control registers between processes: a wait that blocks until the version moves (woken by
//! the writer through a shared futex, only when someone waits), a patient read for readers
//! that may block, and [`SharedControl`], a byte-level handle on any register (its own
//! segment, or a hub's speech and value registers), which the C ABI and Python use.
//!
//! Real-time threads: [`ControlExt::publish_and_wake`] makes a syscall only when a reader
//! waits (`FUTEX_WAKE`, never blocking); [`SharedControl::try_read`] and core's
//! `read_with_retries` are the bounded non-blocking reads. [`ControlExt::wait_newer_than`] and
//! the patient reads sleep: never on the real-time path.
//!
//! ```
//! use std::time::Duration;
//! use voxring_core::control::ControlRegister;
//! use voxring_linux::control::ControlExt;
//!
//! let reg = ControlRegister::<u64, 1>::new(0);
//! std::thread::scope(|s| {
//!     s.spawn(|| reg.publish_and_wake(42).unwrap());
//!     // Blocks until the write above (or gives up after 10 s).
//!     let v = reg.wait_newer_than(0, Some(Duration::from_secs(10))).expect("woken");
//!     assert!(v >= 1);
//! });
//! assert_eq!(reg.read_patiently(Duration::from_secs(2)).unwrap(), (42, 1));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use voxring_core::control::{
    ControlRegister, ControlWaitOutcome, DEFAULT_READ_RETRIES, Plain, RawRegister, ReadError,
    WriteError,
};

use crate::futex::FutexWaiter;
use crate::hub::{HubError, check_hub_name, directory, directory_name};
use crate::segment::{AttachOptions, CreateOptions};
use crate::shared::{PlaceError, Placed, SharedObjects};

/// How long a patient read keeps trying by default: long enough for a writer descheduled
/// mid-write on a loaded 2-core machine to be run again, short enough to report a dead one.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(2);

/// The waiter of control-register waits: parks at once (no spinning: a register changes at
/// human or frame rates, and spinning would take a core from the audio on a 2-core machine).
const WAITER: FutexWaiter = FutexWaiter {
    spin: Duration::ZERO,
};

/// Why a patient read returned no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatientReadError {
    /// How long it tried.
    pub waited: Duration,
    /// Bounded reads made (each of up to [`DEFAULT_READ_RETRIES`] attempts).
    pub rounds: u32,
    /// The register's version when it gave up.
    pub version: u64,
    /// True when the version never moved while it tried: one write stayed in progress.
    pub stuck: bool,
}

impl fmt::Display for PatientReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let waited = self.waited.as_secs_f64();
        if self.stuck {
            write!(
                f,
                "control register read gave up after {waited:.3} s ({} rounds): a write stayed \
                 in progress the whole time (the version stayed {}); its writer is stalled or \
                 died mid-write. If the writer is gone, its owner can end the write with \
                 recover_abandoned_write; otherwise try again later",
                self.rounds, self.version
            )
        } else {
            write!(
                f,
                "control register read gave up after {waited:.3} s ({} rounds): every \
                 attempt overlapped one of the writer's writes (now at version {}); the \
                 writer is writing in a tight loop: slow it down",
                self.rounds, self.version
            )
        }
    }
}

impl std::error::Error for PatientReadError {}

/// A bounded read, retried with back-off (yield, then sleeps from 50 µs doubling to 2 ms)
/// until it succeeds or `patience` has passed. Blocking: not for the real-time path.
fn patiently<R>(
    reg: &dyn RawRegister,
    patience: Duration,
    mut attempt: impl FnMut() -> Result<R, ReadError>,
) -> Result<R, PatientReadError> {
    let start = Instant::now();
    let first_version = reg.version();
    let mut rounds = 0u32;
    let mut nap = Duration::from_micros(50);
    loop {
        rounds = rounds.saturating_add(1);
        if let Ok(r) = attempt() {
            return Ok(r);
        }
        let waited = start.elapsed();
        if waited >= patience {
            let version = reg.version();
            return Err(PatientReadError {
                waited,
                rounds,
                version,
                stuck: version == first_version,
            });
        }
        if rounds <= 4 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(nap.min(patience - waited));
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }
}

/// The Linux side of core's [`ControlRegister`]: waking writes, blocking waits, patient reads.
pub trait ControlExt<T> {
    /// Writes `value` and wakes readers blocked in [`wait_newer_than`](Self::wait_newer_than)
    /// (a `FUTEX_WAKE` only when one waits; otherwise no syscall). Never blocks.
    ///
    /// # Errors
    /// [`WriteError::Busy`] with the value when another write is in progress.
    fn publish_and_wake(&self, value: T) -> Result<(), WriteError<T>>;

    /// Blocks until the version is past `seen` and returns it, or returns `None` when
    /// `timeout` passed first (`None`: no limit). Returns at once when it already is. Woken by
    /// [`publish_and_wake`](Self::publish_and_wake) in any process; a plain `write` does not
    /// wake it (it then notices at its timeout).
    fn wait_newer_than(&self, seen: u64, timeout: Option<Duration>) -> Option<u64>;

    /// The value and version, retrying with back-off while writes overlap (up to
    /// `patience`): for readers that may block. Real-time readers use core's bounded
    /// `read_with_retries`.
    ///
    /// # Errors
    /// [`PatientReadError`] when every attempt for `patience` overlapped a write.
    fn read_patiently(&self, patience: Duration) -> Result<(T, u64), PatientReadError>;
}

impl<T: Plain, const WORDS: usize> ControlExt<T> for ControlRegister<T, WORDS> {
    fn publish_and_wake(&self, value: T) -> Result<(), WriteError<T>> {
        self.publish(value)?.wake(&WAITER);
        Ok(())
    }

    fn wait_newer_than(&self, seen: u64, timeout: Option<Duration>) -> Option<u64> {
        wait_newer(self, seen, timeout)
    }

    fn read_patiently(&self, patience: Duration) -> Result<(T, u64), PatientReadError> {
        patiently(self, patience, || {
            self.read_with_retries(DEFAULT_READ_RETRIES)
        })
    }
}

/// [`ControlExt::wait_newer_than`] on any register.
fn wait_newer(reg: &dyn RawRegister, seen: u64, timeout: Option<Duration>) -> Option<u64> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            // Out of time (or a zero timeout: a poll): look without arming the word, so the
            // writer makes no wake call for a reader that is not going to sleep.
            let v = reg.version();
            return (v > seen).then_some(v);
        }
        let left_ns = left.map(|l| u64::try_from(l.as_nanos()).unwrap_or(u64::MAX));
        match reg.wait_newer_dyn(seen, &WAITER, left_ns) {
            ControlWaitOutcome::Newer(v) => return Some(v),
            ControlWaitOutcome::TimedOut => return None,
            // Woken without news (spurious, or a forged word): wait again with the time left.
            ControlWaitOutcome::Again => {}
        }
    }
}

/// A register of the hub's directory that agents write and anyone may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubRegister {
    /// Speech on/off (`directory::Speech`: active, since_sample, segments, level_mb; 32 bytes).
    Speech,
    /// Published value `i` (0..16; four u64, 32 bytes).
    Value(usize),
}

impl std::str::FromStr for HubRegister {
    type Err = String;

    /// `"speech"` or `"value0"` … `"value15"`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not a hub register: use \"speech\" or \"value0\" .. \"value{}\"",
                directory::VALUES - 1
            )
        };
        if s == "speech" {
            return Ok(HubRegister::Speech);
        }
        let i: usize = s
            .strip_prefix("value")
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .ok_or_else(bad)?;
        if i >= directory::VALUES {
            return Err(bad());
        }
        Ok(HubRegister::Value(i))
    }
}

/// Why a [`SharedControl`] could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The segment could not be created or attached, or holds no such register.
    Place(PlaceError),
    /// The hub's name or the register's name is not valid.
    Hub(HubError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Place(e) => e.fmt(f),
            OpenError::Hub(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for OpenError {}

/// Why [`SharedControl::write`] did not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteBytesError {
    /// More bytes than the register holds; nothing was written.
    TooLong {
        /// Bytes given.
        len: usize,
        /// Bytes the register holds.
        max: usize,
    },
    /// Another write is in progress; nothing was written.
    Busy,
}

impl fmt::Display for WriteBytesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteBytesError::TooLong { len, max } => write!(
                f,
                "{len} bytes do not fit this {max}-byte control register: write at most {max}"
            ),
            WriteBytesError::Busy => write!(
                f,
                "control register write refused: another write is in progress; a register \
                 has one writer at a time"
            ),
        }
    }
}

impl std::error::Error for WriteBytesError {}

/// A placed register of any payload type, seen as bytes.
trait Opened: Send + Sync {
    fn raw(&self) -> &dyn RawRegister;
}

impl<T: Plain, const W: usize> Opened for Placed<ControlRegister<T, W>> {
    fn raw(&self) -> &dyn RawRegister {
        &**self
    }
}

/// The register type of a control register in its own segment: 64 bytes.
pub type OwnRegister = ControlRegister<[u64; 8], 8>;

/// A control register opened by name, as bytes: one in its own segment
/// `/dev/shm/voxring.<name>` (64 bytes), or one of a running hub's [`HubRegister`]s (32
/// bytes). Cheap to clone (the clones share the mapping). What the C ABI's `vr_control` and
/// Python's `voxring.Control` hold.
#[derive(Clone)]
pub struct SharedControl {
    reg: Arc<dyn Opened>,
}

impl fmt::Debug for SharedControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedControl")
            .field("len", &self.len())
            .field("version", &self.version())
            .finish()
    }
}

impl SharedControl {
    /// Creates `/dev/shm/voxring.<name>` holding a 64-byte register of zeros (removed when the
    /// last clone of this handle is dropped).
    ///
    /// # Errors
    /// [`OpenError::Place`] as [`Placed::create`].
    pub fn create(name: &str, opts: &CreateOptions) -> Result<Self, OpenError> {
        let reg = Placed::<OwnRegister>::create(name, opts, [0; 8]).map_err(OpenError::Place)?;
        Ok(SharedControl { reg: Arc::new(reg) })
    }

    /// Attaches to a register made by [`create`](Self::create) (layout and owner checked).
    ///
    /// # Errors
    /// [`OpenError::Place`] as [`Placed::attach`].
    pub fn attach(name: &str, opts: &AttachOptions) -> Result<Self, OpenError> {
        let reg = Placed::<OwnRegister>::attach(name, opts).map_err(OpenError::Place)?;
        Ok(SharedControl { reg: Arc::new(reg) })
    }

    /// Opens register `which` in the directory of the running hub `hub` (`voxring serve
    /// --name HUB`), with the owner checks of `opts`; every register's layout is checked.
    ///
    /// # Errors
    /// [`OpenError::Hub`] for a bad hub name, a hub that is not running (or not this
    /// user's), or a directory that is not what this build expects.
    pub fn hub(hub: &str, which: HubRegister, opts: &AttachOptions) -> Result<Self, OpenError> {
        check_hub_name(hub).map_err(OpenError::Hub)?;
        let (plan, layout) = directory::plan().map_err(OpenError::Place)?;
        let dir = SharedObjects::attach(&directory_name(hub), opts, &plan).map_err(|e| {
            OpenError::Hub(match e {
                PlaceError::Attach(cause) => HubError::NotFound {
                    hub: hub.to_owned(),
                    cause,
                },
                e => HubError::Directory(e),
            })
        })?;
        let reg: Arc<dyn Opened> = match which {
            HubRegister::Speech => Arc::new(dir.placed(layout.speech).map_err(OpenError::Place)?),
            HubRegister::Value(i) => {
                let slot = *layout.values.get(i).ok_or_else(|| {
                    OpenError::Hub(HubError::BadName(format!(
                        "value index {i}: a hub has {}",
                        directory::VALUES
                    )))
                })?;
                Arc::new(dir.placed(slot).map_err(OpenError::Place)?)
            }
        };
        Ok(SharedControl { reg })
    }

    fn raw(&self) -> &dyn RawRegister {
        self.reg.raw()
    }

    /// Bytes the register holds.
    pub fn len(&self) -> usize {
        self.raw().payload_len()
    }

    /// True for a register of no bytes (never for the ones this type opens).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes completed so far.
    pub fn version(&self) -> u64 {
        self.raw().version()
    }

    /// Writes `data` (at most [`len`](Self::len) bytes; the rest become zero) and wakes
    /// waiting readers (a syscall only when one waits). Never blocks.
    ///
    /// # Errors
    /// [`WriteBytesError`].
    pub fn write(&self, data: &[u8]) -> Result<(), WriteBytesError> {
        if data.len() > self.len() {
            return Err(WriteBytesError::TooLong {
                len: data.len(),
                max: self.len(),
            });
        }
        let wake = self
            .raw()
            .publish_bytes(data)
            .map_err(|()| WriteBytesError::Busy)?;
        wake.wake(&WAITER);
        Ok(())
    }

    /// The real-time read: the first `out.len()` bytes (at most [`len`](Self::len)) and the
    /// version, in at most [`DEFAULT_READ_RETRIES`] attempts. Never blocks.
    ///
    /// # Errors
    /// [`ReadError::Contended`] when every attempt overlapped a write.
    pub fn try_read(&self, out: &mut [u8]) -> Result<u64, ReadError> {
        self.raw().read_bytes(out, DEFAULT_READ_RETRIES)
    }

    /// [`try_read`](Self::try_read) retried with back-off up to `patience` (see
    /// [`ControlExt::read_patiently`]). Blocking.
    ///
    /// # Errors
    /// [`PatientReadError`].
    pub fn read(&self, out: &mut [u8], patience: Duration) -> Result<u64, PatientReadError> {
        let raw = self.raw();
        patiently(raw, patience, || raw.read_bytes(out, DEFAULT_READ_RETRIES))
    }

    /// See [`ControlExt::wait_newer_than`]. Blocking.
    pub fn wait_newer_than(&self, seen: u64, timeout: Option<Duration>) -> Option<u64> {
        wait_newer(self.raw(), seen, timeout)
    }

    /// Ends a write its writer abandoned (see core's `recover_abandoned_write`).
    pub fn recover_abandoned_write(&self) -> bool {
        self.raw().recover_abandoned_write()
    }
}

#[cfg(test)]
mod tests;
