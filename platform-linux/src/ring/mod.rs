//! voxring-core rings in shared memory between processes: [`Segment`], [`ShmProducer`],
//! [`ShmConsumer`], liveness, and `voxring segments list`.
//!
//! ```no_run
//! use voxring_core::{Policy, RingConfig, SampleFormat};
//! use voxring_linux::ring::{Segment, FramesWait};
//! use voxring_linux::segment::{AttachOptions, CreateOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = RingConfig {
//!     frames: 64, samples_per_frame: 480, channels: 1, format: SampleFormat::F32,
//!     sample_rate: 48_000, max_consumers: 4, policy: Policy::Lossless,
//! };
//! // Producer process:
//! let seg = Segment::create("mic", &cfg, &CreateOptions::default())?;
//! let mut tx = seg.producer()?;
//! let waiter = *tx.waiter(); // FutexWaiter is Copy
//! if let Ok(mut grant) = tx.producer().write_grant(1) {
//!     if let Some(mut frame) = grant.frame_mut(0) {
//!         frame.samples_mut::<f32>()?.fill(0.0);
//!     }
//!     let wake = grant.commit_all();
//!     wake.wake(&waiter); // a syscall only if a consumer is parked
//! }
//! // Consumer process:
//! let seg = Segment::attach("mic", &AttachOptions::default())?;
//! let mut rx = seg.consumer()?;
//! match rx.wait_for_frames(Some(std::time::Duration::from_secs(1)))? {
//!     FramesWait::Ready => { /* rx.consumer().read_grant(n) ... */ }
//!     FramesWait::EndOfStream => { /* the producer is gone and everything was read */ }
//!     FramesWait::TimedOut => {}
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use voxring_core::{Ring, RingConfig, WaitOutcome, Waiter};

use crate::futex::{FutexWaiter, WaitResult};
use crate::liveness;
use crate::mapping::{MapOptions, SharedMapping};
use crate::memfd::MemfdFile;
use crate::segment::{AttachError, AttachOptions, CreateError, CreateOptions, SegmentFile};

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
        crate::futex::wake_all(std_atomic(word));
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

#[derive(Debug)]
enum Backing {
    Named(SegmentFile),
    Memfd(MemfdFile),
}

#[derive(Debug)]
struct Inner {
    ring: Ring,
    backing: Backing,
}

impl Inner {
    fn fd(&self) -> BorrowedFd<'_> {
        match &self.backing {
            Backing::Named(f) => f.fd(),
            Backing::Memfd(m) => m.fd(),
        }
    }
    fn mapping(&self) -> &SharedMapping {
        match &self.backing {
            Backing::Named(f) => f.mapping(),
            Backing::Memfd(m) => m.mapping(),
        }
    }
    fn path(&self) -> PathBuf {
        match &self.backing {
            Backing::Named(f) => f.path().to_path_buf(),
            Backing::Memfd(_) => PathBuf::from("memfd"),
        }
    }
}

/// A voxring-core ring in a shared segment (named in `/dev/shm`, or a sealed memfd), mapped
/// into this process. Cheap to clone; the mapping lives while any clone, producer or consumer
/// made from it lives.
#[derive(Debug, Clone)]
pub struct Segment {
    inner: Arc<Inner>,
}

/// Why a producer or consumer could not be made.
#[derive(Debug)]
pub enum ParticipantError {
    /// The segment could not be re-opened for a private lock (needs `/proc`).
    Reopen(Errno),
    /// No liveness ticket could be locked.
    Ticket(Errno),
    /// A live producer holds the ring.
    ProducerTaken {
        /// Its owner token (see [`crate::liveness::identity_of`]).
        owner: u64,
    },
    /// Every consumer slot is held by a live consumer.
    ConsumersFull {
        /// The ring's consumer slots.
        max_consumers: u16,
    },
    /// A peer truncated the segment; it can no longer be used.
    Truncated,
    /// Core refused for another reason.
    Core(String),
}

impl fmt::Display for ParticipantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParticipantError::Reopen(e) => write!(
                f,
                "could not re-open the segment through /proc/self/fd for this participant's \
                 liveness lock ({e}); voxring needs /proc mounted"
            ),
            ParticipantError::Ticket(e) => write!(
                f,
                "could not take a liveness lock on the segment ({e}); the filesystem must \
                 support fcntl locks (tmpfs does)"
            ),
            ParticipantError::ProducerTaken { owner } => write!(
                f,
                "the ring already has a live producer (pid {} in its own PID namespace); stop \
                 it first or use another segment",
                liveness::pid_of(*owner)
            ),
            ParticipantError::ConsumersFull { max_consumers } => write!(
                f,
                "all {max_consumers} consumer slots are held by live consumers; create the ring \
                 with a larger max_consumers"
            ),
            ParticipantError::Truncated => f.write_str(
                "the segment was truncated by another process and holds no ring any more; \
                 recreate it (use a sealed memfd with untrusted peers)",
            ),
            ParticipantError::Core(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ParticipantError {}

/// What [`Segment::evict_dead`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Dead consumers evicted.
    pub consumers: u32,
    /// Whether a dead producer was evicted.
    pub producer: bool,
}

/// Whether the producer side is held, and by a live process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Nobody holds the producer side.
    Absent,
    /// A live process holds it.
    Alive,
    /// The holder died (its liveness lock is gone).
    Dead,
}

fn map_attach_error(path: &Path, e: voxring_core::AttachError) -> AttachError {
    match e {
        voxring_core::AttachError::AbiMismatch { found } => AttachError::WrongVersion {
            path: path.to_path_buf(),
            found,
            supported: voxring_core::ABI_VERSION,
        },
        voxring_core::AttachError::TooSmall { needed, got } => AttachError::TooSmall {
            path: path.to_path_buf(),
            size: got as u64,
            needed: needed as u64,
        },
        error => AttachError::Layout {
            path: path.to_path_buf(),
            error,
        },
    }
}

impl Segment {
    /// Creates `/dev/shm/voxring.<name>` holding a new ring for `cfg` (see
    /// [`SegmentFile::create_with`] for how), and maps it. The segment is removed when the
    /// last handle of this process on it is dropped, on normal exit and on SIGINT/SIGTERM
    /// (with [`crate::cleanup::install_signal_cleanup`]), unless `opts.remove_on_drop` is false.
    pub fn create(name: &str, cfg: &RingConfig, opts: &CreateOptions) -> Result<Self, CreateError> {
        let size = cfg
            .region_size()
            .map_err(|e| CreateError::Layout(voxring_core::CreateError::Layout(e)))?;
        let mut ring = None;
        let file = SegmentFile::create_with(name, size, opts, |_, m| {
            // SAFETY: the mapping is `m.len()` bytes, page-aligned, private to this process
            // until the segment is published, and outlives the ring (both live in `Inner`).
            ring = Some(unsafe { Ring::create(m.as_ptr(), m.len(), cfg) }?);
            Ok::<(), CreateError>(())
        })?;
        let ring = ring.ok_or(CreateError::Layout(voxring_core::CreateError::NullRegion))?;
        Ok(Segment {
            inner: Arc::new(Inner {
                ring,
                backing: Backing::Named(file),
            }),
        })
    }

    /// Opens `/dev/shm/voxring.<name>`, runs the file checks (see [`crate::segment`]), maps
    /// it, and then runs voxring-core's layout checks.
    pub fn attach(name: &str, opts: &AttachOptions) -> Result<Self, AttachError> {
        let file = SegmentFile::attach_ring(name, opts)?;
        let m = file.mapping();
        // SAFETY: the mapping covers the whole file (`m.len()` bytes) and lives in `Inner`
        // next to the ring handle, so it outlives every handle derived from it.
        let ring = unsafe { Ring::attach(m.as_ptr(), m.len()) }
            .map_err(|e| map_attach_error(file.path(), e))?;
        if file.mapping().is_truncated() {
            return Err(AttachError::TooSmall {
                path: file.path().to_path_buf(),
                size: 0,
                needed: m.len() as u64,
            });
        }
        crate::liveness::hold_presence(file.fd()).map_err(|errno| AttachError::Io {
            op: "lock",
            path: file.path().to_path_buf(),
            errno,
        })?;
        Ok(Segment {
            inner: Arc::new(Inner {
                ring,
                backing: Backing::Named(file),
            }),
        })
    }

    /// Creates a ring for `cfg` in a sealed memfd (no name; hand it over with
    /// [`Segment::send`]).
    pub fn create_memfd(
        debug_name: &str,
        cfg: &RingConfig,
        opts: MapOptions,
    ) -> Result<Self, CreateError> {
        let size = cfg
            .region_size()
            .map_err(|e| CreateError::Layout(voxring_core::CreateError::Layout(e)))?;
        let mut ring = None;
        let file = MemfdFile::create_with(debug_name, size, opts, |_, m| {
            // SAFETY: as in `create`: a fresh mapping nobody else has yet, kept in `Inner`.
            ring = Some(unsafe { Ring::create(m.as_ptr(), m.len(), cfg) }?);
            Ok::<(), CreateError>(())
        })?;
        let ring = ring.ok_or(CreateError::Layout(voxring_core::CreateError::NullRegion))?;
        Ok(Segment {
            inner: Arc::new(Inner {
                ring,
                backing: Backing::Memfd(file),
            }),
        })
    }

    /// Sends this segment's memfd over a connected Unix stream socket (`SCM_RIGHTS`).
    /// Named segments are refused (peers attach to them by name).
    pub fn send(&self, socket: &UnixStream) -> std::io::Result<()> {
        match &self.inner.backing {
            Backing::Memfd(m) => crate::memfd::send_fd(socket, m.fd(), b"voxring-ring"),
            Backing::Named(_) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "only memfd segments are sent over sockets; peers attach to named ones by name",
            )),
        }
    }

    /// Receives a memfd segment sent with [`Segment::send`], checks its seals and size, and
    /// runs voxring-core's layout checks.
    pub fn receive(socket: &UnixStream, opts: MapOptions) -> Result<Self, AttachError> {
        let path = PathBuf::from("memfd:received");
        let mut tag = [0u8; 16];
        let (fd, _) = crate::memfd::recv_fd(socket, &mut tag).map_err(|e| AttachError::Io {
            op: "receive a segment on",
            path: path.clone(),
            errno: Errno::from_io_error(&e).unwrap_or(Errno::IO),
        })?;
        let file = MemfdFile::from_received_ring(fd, opts)?;
        let m = file.mapping();
        // SAFETY: the mapping covers the whole sealed memfd, which can neither shrink nor
        // grow, and lives in `Inner` next to the ring handle.
        let ring =
            unsafe { Ring::attach(m.as_ptr(), m.len()) }.map_err(|e| map_attach_error(&path, e))?;
        crate::liveness::hold_presence(file.fd()).map_err(|errno| AttachError::Io {
            op: "lock",
            path,
            errno,
        })?;
        Ok(Segment {
            inner: Arc::new(Inner {
                ring,
                backing: Backing::Memfd(file),
            }),
        })
    }

    /// The ring handle (validated layout). Its memory stays mapped while this segment lives.
    pub fn ring(&self) -> &Ring {
        &self.inner.ring
    }

    /// The ring's configuration.
    pub fn config(&self) -> RingConfig {
        self.inner.ring.config()
    }

    /// The file's path (`memfd` for memfd segments).
    pub fn path(&self) -> PathBuf {
        self.inner.path()
    }

    /// The mapping.
    pub fn mapping(&self) -> &SharedMapping {
        self.inner.mapping()
    }

    /// True once a peer truncated the segment under us (see [`crate::mapping`]).
    pub fn is_truncated(&self) -> bool {
        self.inner.mapping().is_truncated()
    }

    /// Re-checks the file size (`fstat(2)`); `Err(size)` when a peer shrank it.
    pub fn check_size(&self) -> Result<(), u64> {
        self.inner.mapping().check_size(self.inner.fd())
    }

    /// The slow-path check the waits run between park slices: the segment was not truncated
    /// (the fault flag, then [`Segment::check_size`]), and its header still holds voxring's
    /// magic number (nothing in voxring changes it after creation: a different value means
    /// the creator or a peer with write access destroyed the ring). `fstat` and one load: not
    /// for the real-time path.
    pub fn check_health(&self) -> Result<(), WaitError> {
        if self.is_truncated() || self.check_size().is_err() {
            return Err(WaitError::Truncated);
        }
        // SAFETY: a mapping holding a validated ring is at least 384 bytes long and
        // page-aligned, so its first 8 bytes are an aligned u64 inside it, and every access
        // to the region's words is atomic.
        let magic = unsafe {
            &*self
                .mapping()
                .as_ptr()
                .cast::<std::sync::atomic::AtomicU64>()
        };
        // Relaxed: only the value is compared; nothing else is read on the strength of it.
        if magic.load(std::sync::atomic::Ordering::Relaxed) != voxring_core::MAGIC {
            let unlinked = match &self.inner.backing {
                Backing::Named(_) => {
                    rustix::fs::fstat(self.inner.fd()).is_ok_and(|st| st.st_nlink == 0)
                }
                Backing::Memfd(_) => false,
            };
            return Err(WaitError::Abandoned { unlinked });
        }
        Ok(())
    }

    fn reopen(&self) -> Result<OwnedFd, ParticipantError> {
        let fd = rustix::fs::open(
            format!("/proc/self/fd/{}", self.inner.fd().as_raw_fd()),
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(ParticipantError::Reopen)?;
        let (a, b) = (
            rustix::fs::fstat(self.inner.fd()).map_err(ParticipantError::Reopen)?,
            rustix::fs::fstat(&fd).map_err(ParticipantError::Reopen)?,
        );
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return Err(ParticipantError::Reopen(Errno::STALE));
        }
        Ok(fd)
    }

    fn ticket_in_ring(&self, t: u32) -> bool {
        let ring = &self.inner.ring;
        ring.producer_owner()
            .is_some_and(|o| liveness::ticket_of(o) == t)
            || (0..ring.config().max_consumers).any(|i| {
                ring.consumer_owner(i)
                    .is_some_and(|o| liveness::ticket_of(o) == t)
            })
    }

    fn take_ticket(&self) -> Result<(OwnedFd, u32), ParticipantError> {
        let fd = self.reopen()?;
        let t = liveness::take_ticket(fd.as_fd(), |t| self.ticket_in_ring(t))
            .map_err(ParticipantError::Ticket)?;
        Ok((fd, t))
    }

    /// Whether the owner behind `token` is alive: its ticket is write-locked and, when this
    /// process can look its PID up, it is still the process that took the slot (see
    /// [`crate::liveness`]). Errors count as alive: a slot is never evicted on a guess.
    fn token_alive(&self, token: u64) -> bool {
        liveness::token_alive(self.inner.fd(), token).unwrap_or(true)
    }

    /// The producer side's state.
    pub fn producer_state(&self) -> PeerState {
        match self.inner.ring.producer_owner() {
            None => PeerState::Absent,
            Some(o) if self.token_alive(o) => PeerState::Alive,
            Some(_) => PeerState::Dead,
        }
    }

    /// Evicts every consumer and the producer whose process is gone (its liveness lock was
    /// dropped by the kernel), waking a producer parked on a dead consumer. Safe to call from
    /// any participant at any time; not for the real-time path (one `fcntl` per slot).
    pub fn evict_dead(&self) -> Evicted {
        let ring = &self.inner.ring;
        let mut out = Evicted::default();
        for i in 0..ring.config().max_consumers {
            if let Some(owner) = ring.consumer_owner(i)
                && !self.token_alive(owner)
                && let Ok(wake) = ring.evict(i, owner)
            {
                wake.wake(&FutexWaiter::new(Duration::ZERO));
                out.consumers += 1;
            }
        }
        if let Some(owner) = ring.producer_owner()
            && !self.token_alive(owner)
            && ring.evict_producer(owner).is_ok()
        {
            out.producer = true;
        }
        out
    }

    /// Claims the producer side: takes a liveness ticket, evicts a dead previous producer if
    /// there is one, and claims the ring.
    pub fn producer(&self) -> Result<ShmProducer, ParticipantError> {
        if self.is_truncated() {
            return Err(ParticipantError::Truncated);
        }
        let (lock_fd, ticket) = self.take_ticket()?;
        let token = liveness::owner_token(ticket);
        let producer = match self.inner.ring.producer(token) {
            Ok(p) => p,
            Err(voxring_core::ClaimError::Taken { owner }) => {
                if self.token_alive(owner) {
                    return Err(ParticipantError::ProducerTaken { owner });
                }
                let _ = self.inner.ring.evict_producer(owner);
                self.inner.ring.producer(token).map_err(|e| match e {
                    voxring_core::ClaimError::Taken { owner } => {
                        ParticipantError::ProducerTaken { owner }
                    }
                    e => ParticipantError::Core(e.to_string()),
                })?
            }
            Err(e) => return Err(ParticipantError::Core(e.to_string())),
        };
        Ok(ShmProducer {
            producer,
            _lock_fd: lock_fd,
            token,
            segment: self.clone(),
            waiter: FutexWaiter::default(),
            liveness_interval: DEFAULT_LIVENESS_INTERVAL,
        })
    }

    /// Joins as a consumer: takes a liveness ticket, then joins a free slot (evicting dead
    /// consumers first if every slot is taken). Reading starts at the current write position.
    pub fn consumer(&self) -> Result<ShmConsumer, ParticipantError> {
        if self.is_truncated() {
            return Err(ParticipantError::Truncated);
        }
        let (lock_fd, ticket) = self.take_ticket()?;
        let token = liveness::owner_token(ticket);
        let consumer = match self.inner.ring.consumer(token) {
            Ok(c) => c,
            Err(voxring_core::JoinError::Full { .. }) => {
                self.evict_dead();
                self.inner.ring.consumer(token).map_err(|e| match e {
                    voxring_core::JoinError::Full { max_consumers } => {
                        ParticipantError::ConsumersFull { max_consumers }
                    }
                    e => ParticipantError::Core(e.to_string()),
                })?
            }
            Err(e) => return Err(ParticipantError::Core(e.to_string())),
        };
        let seen_producer = self.producer_state() == PeerState::Alive;
        let joined_at = consumer.read_pos();
        Ok(ShmConsumer {
            joined_at,
            consumer: std::mem::ManuallyDrop::new(consumer),
            _lock_fd: lock_fd,
            token,
            segment: self.clone(),
            waiter: FutexWaiter::default(),
            liveness_interval: DEFAULT_LIVENESS_INTERVAL,
            seen_producer,
        })
    }
}

/// How often a waiting participant checks its peers' liveness.
pub const DEFAULT_LIVENESS_INTERVAL: Duration = Duration::from_millis(50);

/// The producer side of a shared ring, with its liveness ticket held.
///
/// Write with [`ShmProducer::producer`] (core's API); after a commit, pass the returned
/// `Wake` to [`ShmProducer::waiter`]: it makes a futex syscall only when a consumer is parked.
#[derive(Debug)]
pub struct ShmProducer {
    // Field order matters: the core producer (which frees the side) drops before the lock fd
    // (whose closing releases the ticket), and both before the segment (the mapping).
    producer: voxring_core::Producer,
    _lock_fd: OwnedFd,
    token: u64,
    segment: Segment,
    waiter: FutexWaiter,
    liveness_interval: Duration,
}

/// How a wait for space or frames ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceWait {
    /// There may be space now: try `write_grant` again.
    Ready,
    /// The timeout passed.
    TimedOut,
}

impl ShmProducer {
    /// Core's producer: `write_grant`, `commit`.
    pub fn producer(&mut self) -> &mut voxring_core::Producer {
        &mut self.producer
    }

    /// The futex waiter (spin, then park) to wake consumers with. It is `Copy`: copy it out
    /// before borrowing the producer mutably, or use [`ShmProducer::parts`].
    pub fn waiter(&self) -> &FutexWaiter {
        &self.waiter
    }

    /// Core's producer and the waiter at once (for `grant.commit(k)?.wake(waiter)`).
    pub fn parts(&mut self) -> (&mut voxring_core::Producer, &FutexWaiter) {
        (&mut self.producer, &self.waiter)
    }

    /// Sets how long waits spin before parking.
    pub fn set_spin(&mut self, spin: Duration) {
        self.waiter = FutexWaiter::new(spin);
    }

    /// Sets how often a waiting producer checks for dead consumers.
    pub fn set_liveness_interval(&mut self, d: Duration) {
        self.liveness_interval = d.max(Duration::from_millis(1));
    }

    /// The segment.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The owner token in the ring (identity and ticket, see [`crate::liveness`]).
    pub fn owner_token(&self) -> u64 {
        self.token
    }

    /// Lossless policy: waits until a frame may be free, at most `timeout`, evicting dead
    /// consumers every liveness interval so a crashed consumer never stalls the ring.
    /// It spins (the waiter's `spin`) before it lets core announce it as parked, so consumers
    /// releasing during the spin make no wake syscall; then it parks on the futex.
    /// When a park slice ends with no space, it also checks the file size: a segment a peer
    /// truncated gives `Err(GrantError::Evicted)` (the zeroed memory has no producer;
    /// `segment().is_truncated()` tells this case apart). A live consumer that never releases
    /// stalls it as a slow consumer would: bound the wait with `timeout`.
    /// Blocking (spins, then parks): not for an audio callback.
    pub fn wait_for_space(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<SpaceWait, voxring_core::GrantError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        // Spin first, before core announces this producer as parked: consumers that release
        // during the spin then see nobody parked and make no wake syscall.
        let spin = self.waiter.spin.min(timeout.unwrap_or(self.waiter.spin));
        if self.segment.config().policy == voxring_core::Policy::Lossless {
            let producer = &mut self.producer;
            // A grant of one frame that is dropped commits nothing: a pure space probe.
            let probe = || match producer.write_grant(1) {
                Ok(g) if !g.is_empty() => Some(Ok(SpaceWait::Ready)),
                Ok(_) | Err(voxring_core::GrantError::Full) => None,
                Err(e) => Some(Err(e)),
            };
            if let Some(done) = spin_for(spin, 16, probe) {
                return done;
            }
        }
        let park = FutexWaiter::new(Duration::ZERO);
        loop {
            let Some(slice) = park_slice(deadline, self.liveness_interval) else {
                return Ok(SpaceWait::TimedOut);
            };
            match self
                .producer
                .wait_writable(&park, Some(slice.as_nanos() as u64))?
            {
                WaitOutcome::Ready | WaitOutcome::Woken => return Ok(SpaceWait::Ready),
                WaitOutcome::TimedOut => {
                    // Slow path: a truncated segment holds no ring any more (zero pages:
                    // core's own check then reports this producer as evicted, as it no
                    // longer owns anything); say so now rather than wait on it.
                    if self.segment.is_truncated() || self.segment.check_size().is_err() {
                        return Err(voxring_core::GrantError::Evicted);
                    }
                    if self.segment.evict_dead().consumers > 0 {
                        return Ok(SpaceWait::Ready);
                    }
                }
            }
        }
    }
}

/// Spins for at most `spin`, calling `probe` until it answers; reads the clock only every
/// `check_every` probes. `None` when the spin ran out (or `spin` is zero) without an answer.
fn spin_for<R>(
    spin: Duration,
    check_every: u32,
    mut probe: impl FnMut() -> Option<R>,
) -> Option<R> {
    if spin.is_zero() {
        return None;
    }
    let until = Instant::now() + spin;
    let mut i: u32 = 0;
    loop {
        if let Some(answer) = probe() {
            return Some(answer);
        }
        i = i.wrapping_add(1);
        if i.is_multiple_of(check_every) && Instant::now() >= until {
            return None;
        }
        std::hint::spin_loop();
    }
}

/// How long the next park may last: until `deadline`, and at most one liveness `interval`
/// (so the waiter checks its peers that often). `None` once the deadline has passed.
fn park_slice(deadline: Option<Instant>, interval: Duration) -> Option<Duration> {
    match deadline {
        Some(d) => d
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .map(|left| left.min(interval)),
        None => Some(interval),
    }
}

/// How [`ShmConsumer::wait_for_frames`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramesWait {
    /// Frames may be ready: call `read_grant`.
    Ready,
    /// The producer is gone (exited, crashed or was evicted) and every committed frame was
    /// read: no more frames will come from it.
    EndOfStream,
    /// The timeout passed (the producer is alive, or has not appeared yet).
    TimedOut,
}

/// Why [`ShmConsumer::wait_for_frames`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// Core reported a problem (evicted, corrupt cursor).
    Read(voxring_core::ReadError),
    /// A peer truncated the segment.
    Truncated,
    /// The segment's header no longer holds a voxring ring (its magic number was
    /// overwritten): the producer abandoned it or a peer with write access destroyed it.
    Abandoned {
        /// Whether its name was removed from `/dev/shm` too (link count 0).
        unlinked: bool,
    },
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::Read(e) => e.fmt(f),
            WaitError::Truncated => f.write_str(
                "the segment was truncated by another process: stop reading it and discard \
                 the last grant's data; use a sealed memfd segment with untrusted peers",
            ),
            WaitError::Abandoned { unlinked } => write!(
                f,
                "the segment no longer holds a voxring ring: its header was overwritten{} while \
                 this consumer waited (its producer abandoned it, or a peer with write access \
                 destroyed it); no more frames will come: stop reading it, and attach again by \
                 name if its producer re-created it",
                if *unlinked {
                    " and its name removed from /dev/shm"
                } else {
                    ""
                }
            ),
        }
    }
}

impl std::error::Error for WaitError {}

/// A consumer of a shared ring, with its liveness ticket held.
#[derive(Debug)]
pub struct ShmConsumer {
    // Field order: see ShmProducer. `consumer` leaves the ring in `Drop::drop` (so a parked
    // lossless producer is woken), before the lock fd is closed.
    consumer: std::mem::ManuallyDrop<voxring_core::Consumer>,
    _lock_fd: OwnedFd,
    token: u64,
    segment: Segment,
    waiter: FutexWaiter,
    liveness_interval: Duration,
    /// Whether a producer was ever seen: alive at a check, or frames committed since joining.
    seen_producer: bool,
    joined_at: u64,
}

impl ShmConsumer {
    /// Core's consumer: `read_grant`, `release`.
    pub fn consumer(&mut self) -> &mut voxring_core::Consumer {
        &mut self.consumer
    }

    /// The futex waiter to wake a parked lossless producer with (after `release`).
    pub fn waiter(&self) -> &FutexWaiter {
        &self.waiter
    }

    /// Core's consumer and the waiter at once (for `grant.release(k)?.wake(waiter)`).
    pub fn parts(&mut self) -> (&mut voxring_core::Consumer, &FutexWaiter) {
        (&mut *self.consumer, &self.waiter)
    }

    /// Sets how long waits spin before parking.
    pub fn set_spin(&mut self, spin: Duration) {
        self.waiter = FutexWaiter::new(spin);
    }

    /// Sets how often a waiting consumer checks that the producer is alive.
    pub fn set_liveness_interval(&mut self, d: Duration) {
        self.liveness_interval = d.max(Duration::from_millis(1));
    }

    /// The segment.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The owner token in the ring (identity and ticket, see [`crate::liveness`]).
    pub fn owner_token(&self) -> u64 {
        self.token
    }

    /// True once a peer truncated the segment: data read since is zero pages, not frames.
    /// One relaxed load; check it after reading a grant if peers are not trusted.
    #[inline]
    pub fn is_truncated(&self) -> bool {
        self.segment.is_truncated()
    }

    /// Waits until a frame may be ready, at most `timeout`: first spins (the waiter's `spin`)
    /// without announcing itself, so a producer committing meanwhile makes no wake syscall,
    /// then parks on the futex. Every liveness
    /// interval it checks the producer: once a producer was seen and is now gone with every
    /// committed frame read, it returns [`FramesWait::EndOfStream`] instead of hanging. It also
    /// checks the segment ([`Segment::check_health`]) then: a truncated segment gives
    /// [`WaitError::Truncated`], one whose header was overwritten (its producer unlinked and
    /// zeroed it, say, while keeping it open) gives [`WaitError::Abandoned`].
    pub fn wait_for_frames(&mut self, timeout: Option<Duration>) -> Result<FramesWait, WaitError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        // Spin first, before core announces this consumer as parked: a producer committing
        // during the spin sees nobody parked and makes no wake syscall.
        let spin = self.waiter.spin.min(timeout.unwrap_or(self.waiter.spin));
        let probe = || {
            if self.is_truncated() {
                Some(Err(WaitError::Truncated))
            } else if self.segment.ring().write_pos() != self.consumer.read_pos() {
                Some(Ok(FramesWait::Ready))
            } else {
                None
            }
        };
        if let Some(done) = spin_for(spin, 64, probe) {
            return done;
        }
        let park = FutexWaiter::new(Duration::ZERO);
        loop {
            if self.is_truncated() {
                return Err(WaitError::Truncated);
            }
            let Some(slice) = park_slice(deadline, self.liveness_interval) else {
                return Ok(FramesWait::TimedOut);
            };
            match self
                .consumer
                .wait_readable(&park, Some(slice.as_nanos() as u64))
                .map_err(WaitError::Read)?
            {
                WaitOutcome::Ready | WaitOutcome::Woken => {
                    if self.segment.ring().write_pos() != self.consumer.read_pos() {
                        return Ok(FramesWait::Ready);
                    }
                }
                WaitOutcome::TimedOut => {}
            }
            // Slow path only (a slice ended without frames): a truncated, abandoned or
            // destroyed segment ends the wait with an error instead of parking for ever.
            self.segment.check_health()?;
            if self.segment.ring().write_pos() != self.joined_at {
                self.seen_producer = true;
            }
            match self.segment.producer_state() {
                PeerState::Alive => self.seen_producer = true,
                PeerState::Absent if !self.seen_producer => {}
                PeerState::Absent | PeerState::Dead => {
                    if self.segment.ring().write_pos() != self.consumer.read_pos() {
                        return Ok(FramesWait::Ready);
                    }
                    return Ok(FramesWait::EndOfStream);
                }
            }
        }
    }
}

impl Drop for ShmConsumer {
    fn drop(&mut self) {
        // SAFETY: `consumer` is taken exactly once, here, and never touched again: the
        // remaining fields drop after this and do not use it.
        let consumer = unsafe { std::mem::ManuallyDrop::take(&mut self.consumer) };
        consumer.leave().wake(&self.waiter);
    }
}

/// One participant as `voxring segments list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantInfo {
    /// Consumer slot (None for the producer).
    pub slot: Option<u16>,
    /// The PID the participant wrote in its token (in its own PID namespace; 0 = unknown).
    pub pid: u32,
    /// Whether it is alive: its ticket is write-locked and, in this PID namespace, its
    /// process is still the one that joined.
    pub alive: bool,
    /// Frames committed but not yet released by this consumer (None for the producer, or
    /// when the cursor read is impossible: a corrupt or racing value).
    pub lag: Option<u64>,
}

/// One segment as `voxring segments list` shows it.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// The segment name (without `voxring.`).
    pub name: String,
    /// Its path.
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// Owner uid.
    pub owner_uid: u32,
    /// Permission bits.
    pub mode: u32,
    /// Whether any process holds a liveness lock on it (false = `clean` would remove it).
    pub in_use: bool,
    /// Ring details, or why they could not be read.
    pub ring: Result<RingInfo, String>,
}

/// Ring details of a listed segment.
#[derive(Debug, Clone)]
pub struct RingInfo {
    /// The configuration.
    pub config: RingConfig,
    /// Frames committed so far.
    pub write_pos: u64,
    /// The producer, if the side is held.
    pub producer: Option<ParticipantInfo>,
    /// The consumers in their slots.
    pub consumers: Vec<ParticipantInfo>,
}

impl SegmentInfo {
    /// Participants alive and dead: `(alive, dead)`.
    pub fn participants(&self) -> (usize, usize) {
        match &self.ring {
            Ok(r) => {
                let all = r.producer.iter().chain(r.consumers.iter());
                let alive = all.clone().filter(|p| p.alive).count();
                (alive, all.count() - alive)
            }
            Err(_) => (0, 0),
        }
    }
}

/// Lists `/dev/shm/voxring.*` (segments being created are left out) with size, owner,
/// whether they are in use, and each participant's liveness. Read-only: nothing is locked,
/// evicted or removed. Segments this user may not open are listed with the reason.
pub fn list_segments() -> std::io::Result<Vec<SegmentInfo>> {
    let mut out = Vec::new();
    for fname in crate::cleanup::segment_file_names()? {
        if crate::segment::is_temporary_name(&fname) {
            continue;
        }
        let path = Path::new(crate::segment::SHM_DIR).join(&fname);
        let name = crate::segment::display_name(&fname);
        let Ok(st) = rustix::fs::lstat(&path) else {
            continue;
        };
        let mut info = SegmentInfo {
            name: name.clone(),
            path: path.clone(),
            size: st.st_size.max(0) as u64,
            owner_uid: st.st_uid,
            mode: st.st_mode & 0o7777,
            in_use: false,
            ring: Err(String::new()),
        };
        let opts = AttachOptions {
            expected_owner: Some(st.st_uid),
            allow_group_writable: true,
            allow_world_writable: true,
            prefault: false,
            lock: false,
        };
        match SegmentFile::observe_ring(&name, &opts) {
            Ok(file) => {
                info.in_use = liveness::any_held(file.fd()).unwrap_or(true);
                let m = file.mapping();
                // SAFETY: the mapping covers the whole file and outlives `ring` (both local to
                // this block); only reads through atomics follow.
                info.ring = match unsafe { Ring::attach(m.as_ptr(), m.len()) } {
                    Ok(ring) => Ok(ring_info(&ring, file.fd())),
                    Err(e) => Err(map_attach_error(&path, e).to_string()),
                };
            }
            Err(e) => {
                info.in_use = rustix::fs::open(
                    &path,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .ok()
                .and_then(|fd| liveness::any_held(fd.as_fd()).ok())
                .unwrap_or(true);
                info.ring = Err(e.to_string());
            }
        }
        out.push(info);
    }
    Ok(out)
}

fn ring_info(ring: &Ring, fd: BorrowedFd<'_>) -> RingInfo {
    let alive = |token: u64| liveness::token_alive(fd, token).unwrap_or(true);
    let producer = ring.producer_owner().map(|o| ParticipantInfo {
        slot: None,
        pid: liveness::pid_of(o),
        alive: alive(o),
        lag: None,
    });
    let consumers = (0..ring.config().max_consumers)
        .filter_map(|i| {
            ring.consumer_owner(i).map(|o| ParticipantInfo {
                slot: Some(i),
                pid: liveness::pid_of(o),
                alive: alive(o),
                lag: ring
                    .consumer_read_pos(i)
                    .map(|r| ring.write_pos().wrapping_sub(r))
                    .filter(|lag| *lag <= u64::from(ring.config().frames)),
            })
        })
        .collect();
    RingInfo {
        config: ring.config(),
        write_pos: ring.write_pos(),
        producer,
        consumers,
    }
}
