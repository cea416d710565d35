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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use voxring_core::{Ring, RingConfig};

use crate::futex::FutexWaiter;
use crate::liveness;
use crate::mapping::{MapOptions, SharedMapping};
use crate::memfd::MemfdFile;
use crate::segment::{
    AttachError, AttachOptions, CreateError, CreateOptions, SegmentFile, core_attach_error,
};

mod inventory;
mod participants;

pub use inventory::{ParticipantInfo, RingInfo, SegmentInfo, list_segments};
pub use participants::{
    DEFAULT_LIVENESS_INTERVAL, FramesWait, Periodic, ShmConsumer, ShmProducer, SpaceWait,
    WaitError, WaitMode,
};

/// What `create_with` calls on a fresh mapping: here, creating the ring in it.
type InitRing<'a> = &'a mut dyn FnMut(&OwnedFd, &SharedMapping) -> Result<(), CreateError>;

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
///
/// A memfd segment has no name in `/dev/shm` (nothing to clean up, and its seals stop a peer
/// from resizing it); it is handed to a peer over a Unix socket with [`Segment::send`]:
///
/// ```
/// use voxring_linux::mapping::MapOptions;
/// use voxring_linux::ring::{PeerState, Segment};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use voxring_core::{Policy, RingConfig, SampleFormat};
/// # let cfg = RingConfig {
/// #     frames: 4, samples_per_frame: 16, channels: 1, format: SampleFormat::S16,
/// #     sample_rate: 48_000, max_consumers: 2, policy: Policy::Lossless,
/// # };
/// let seg = Segment::create_memfd("example", &cfg, MapOptions::default())?;
/// assert_eq!(seg.config().frames, 4);
/// assert_eq!(seg.producer_state(), PeerState::Absent);
/// let tx = seg.producer()?;
/// assert_eq!(seg.producer_state(), PeerState::Alive);
/// drop(tx); // frees the producer side (and its liveness lock)
/// assert_eq!(seg.producer_state(), PeerState::Absent);
/// # Ok(()) }
/// ```
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
///
/// ```
/// use voxring_linux::mapping::MapOptions;
/// use voxring_linux::ring::{Evicted, Segment};
/// # use voxring_core::{Policy, RingConfig, SampleFormat};
/// # let cfg = RingConfig {
/// #     frames: 4, samples_per_frame: 16, channels: 1, format: SampleFormat::S16,
/// #     sample_rate: 48_000, max_consumers: 2, policy: Policy::Lossless,
/// # };
/// let seg = Segment::create_memfd("evict-example", &cfg, MapOptions::default())?;
/// let _rx = seg.consumer()?; // alive: never evicted
/// assert_eq!(seg.evict_dead(), Evicted { consumers: 0, producer: false });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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

impl Segment {
    /// Creates `/dev/shm/voxring.<name>` holding a new ring for `cfg` (see
    /// [`SegmentFile::create_with`] for how), and maps it. The segment is removed when the
    /// last handle of this process on it is dropped, on normal exit and on SIGINT/SIGTERM
    /// (with [`crate::cleanup::install_signal_cleanup`]), unless `opts.remove_on_drop` is false.
    pub fn create(name: &str, cfg: &RingConfig, opts: &CreateOptions) -> Result<Self, CreateError> {
        Self::create_in(cfg, |size, init| {
            SegmentFile::create_with(name, size, opts, init).map(Backing::Named)
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
            .map_err(|e| core_attach_error(file.path(), e))?;
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
        Ok(Self::from_parts(ring, Backing::Named(file)))
    }

    /// Creates a ring for `cfg` in a sealed memfd (no name; hand it over with
    /// [`Segment::send`]).
    pub fn create_memfd(
        debug_name: &str,
        cfg: &RingConfig,
        opts: MapOptions,
    ) -> Result<Self, CreateError> {
        Self::create_in(cfg, |size, init| {
            MemfdFile::create_with(debug_name, size, opts, init).map(Backing::Memfd)
        })
    }

    /// Makes the file with `make` (which maps `size` bytes and calls `init` on the fresh
    /// mapping before anyone else can reach it), and creates the ring for `cfg` in it.
    fn create_in(
        cfg: &RingConfig,
        make: impl FnOnce(usize, InitRing<'_>) -> Result<Backing, CreateError>,
    ) -> Result<Self, CreateError> {
        let size = cfg
            .region_size()
            .map_err(|e| CreateError::Layout(voxring_core::CreateError::Layout(e)))?;
        let mut ring = None;
        let backing = make(size, &mut |_, m| {
            // SAFETY: the mapping is `m.len()` bytes, page-aligned, private to this process
            // until the segment is published (or the memfd sent), and outlives the ring: both
            // live in `Inner`.
            ring = Some(unsafe { Ring::create(m.as_ptr(), m.len(), cfg) }?);
            Ok(())
        })?;
        let ring = ring.ok_or(CreateError::Layout(voxring_core::CreateError::NullRegion))?;
        Ok(Self::from_parts(ring, backing))
    }

    fn from_parts(ring: Ring, backing: Backing) -> Self {
        Segment {
            inner: Arc::new(Inner { ring, backing }),
        }
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
        let ring = unsafe { Ring::attach(m.as_ptr(), m.len()) }
            .map_err(|e| core_attach_error(&path, e))?;
        crate::liveness::hold_presence(file.fd()).map_err(|errno| AttachError::Io {
            op: "lock",
            path,
            errno,
        })?;
        Ok(Self::from_parts(ring, Backing::Memfd(file)))
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

    /// The segment's open descriptor (for `fstat(2)` checks such as its group).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inner.fd()
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
}
