//! The frame ring in memory it is given: one producer, up to `max_consumers` consumers, with
//! in-place write and read grants, lossless or lossy.
//!
//! # Memory orderings (every pair)
//!
//! * `create` writes the whole region, then stores `magic` with **Release**; `attach` loads it
//!   with **Acquire**, so it sees every field `create` wrote.
//! * The producer writes payload and metadata, then stores `write_pos` with **Release**
//!   ([`WriteGrant::commit`]); consumers load `write_pos` with **Acquire** before touching a
//!   frame. (`--cfg voxring_planted_bug` weakens exactly this store to Relaxed; the loom
//!   suite must then fail.)
//! * A consumer finishes reading, then stores its `read_pos` with **Release**
//!   ([`ReadGrant::release`]); the lossless producer loads every live `read_pos` with
//!   **Acquire** before reusing a slot.
//! * Lossy policy (seqlock per slot): the producer stores `seq = SEQ_WRITING` (Relaxed) on each
//!   slot it grants, then `fence(Release)`, writes, and at commit stores `seq = position` with
//!   **Release**. A consumer loads `seq` with **Acquire** when it takes a read grant, reads,
//!   issues `fence(Acquire)` and re-loads `seq` at release: a changed `seq` means the frame was
//!   overwritten while it was read, and [`ReleaseError::Overwritten`] says so.
//! * Joining late is a Dekker handshake with the producer's recomputation of the slowest
//!   consumer: the joiner stores `state = ACTIVE` (SeqCst), `fence(SeqCst)`, re-loads
//!   `write_pos` and starts there; the producer issues `fence(SeqCst)` before it loads the
//!   consumer states. Either the producer sees the joiner, or the joiner starts at or after
//!   every frame the producer may overwrite on the strength of the old minimum.
//! * Park/wake: see [`crate::wait`].
//!
//! # Racing reads in the lossy policy
//!
//! A lossy consumer reads the payload in place while a producer that lapped it may be writing
//! the same bytes. That is the nature of the lossy policy (the producer never waits), and it is
//! handled the seqlock way: the payload may be torn, and [`ReadGrant::release`] tells the
//! reader so, after the fact; the data of a frame reported as overwritten must be discarded.
//! Metadata is read through atomics and is never torn per field. Under loom, the payload's
//! access tracker is only touched in the lossless policy (where any overlap is a bug); the
//! lossy models check tearing through the atomic metadata words instead.
//!
//! # Hostile peers
//!
//! The layout is validated once at attach and kept in the handle, so a peer rewriting the
//! header later changes nothing. Every cursor and sequence number read from the region is
//! checked (distance to our own cursor within the capacity); slot indices are `position &
//! mask`; lengths are clamped to the slot. A corrupt value yields an error (or a resync in
//! the lossy policy), never an access outside the region, a panic, or an unbounded loop: all
//! loops are bounded by the capacity or the consumer count, and waiting happens only in a
//! [`Waiter`] with its timeout.

use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::layout::{
    ABI_VERSION, CACHE_LINE, ConsumerBlock, GEN_STEP, HeaderBlock, Layout, LayoutError, MAGIC,
    Policy, ProducerBlock, RingConfig, SEQ_WRITING, STATE_ACTIVE, STATE_FREE, STATE_JOINING,
    STATE_MASK, SampleFormat, SlotMeta, WaitBlock,
};
use crate::meta::{FormatMismatch, FrameFlags, FrameMeta, LenError, Sample};
use crate::sync::{Ordering, fence};
use crate::wait::{SLEEPER, WaitOutcome, Waiter, Wake, arm};

/// The ordering of the producer's commit store of `write_pos`: Release, or Relaxed when the
/// planted bug is switched on to prove the loom suite can fail.
#[cfg(not(voxring_planted_bug))]
pub(crate) const COMMIT_ORDER: Ordering = Ordering::Release;
/// The ordering of the producer's commit store: deliberately wrong (planted bug).
#[cfg(voxring_planted_bug)]
pub(crate) const COMMIT_ORDER: Ordering = Ordering::Relaxed;

/// A handle on a ring in a memory region: the region's address plus its validated layout.
///
/// Cheap to copy; every producer and consumer handle holds one.
///
/// ```
/// use voxring_core::{Policy, Ring, RingConfig, SampleFormat, SpinWaiter, FrameFlags};
///
/// // Any 128-byte aligned memory will do: a static buffer, a mapped /dev/shm segment.
/// #[repr(C, align(128))]
/// struct Region([u8; 4096]);
/// let mut region = Region([0; 4096]);
///
/// let cfg = RingConfig {
///     frames: 4, samples_per_frame: 64, channels: 2, format: SampleFormat::F32,
///     sample_rate: 48_000, max_consumers: 2, policy: Policy::Lossless,
/// };
/// assert!(cfg.region_size()? <= 4096);
/// // SAFETY: the region is valid, aligned, outlives every handle, and nothing else uses it.
/// let ring = unsafe { Ring::create(region.0.as_mut_ptr(), 4096, &cfg) }?;
/// let mut producer = ring.producer(1)?;
/// let mut consumer = ring.consumer(2)?;
///
/// // Fill two frames in place, commit them.
/// let mut grant = producer.write_grant(2)?;
/// for (i, mut frame) in grant.frames_mut().enumerate() {
///     frame.samples_mut::<f32>()?.fill(i as f32);
///     frame.set_sample_pos(i as u64 * 64);
///     frame.set_timestamp_ns(1_000 + i as u64);
/// }
/// let wake = grant.commit(2)?;
/// wake.wake(&SpinWaiter::default()); // nobody parked: no call is made
///
/// // Read them in place, release them.
/// let grant = consumer.read_grant(8)?;
/// assert_eq!(grant.len(), 2);
/// let second = grant.frame(1).unwrap();
/// assert_eq!(second.meta().sample_pos, 64);
/// assert_eq!(second.meta().flags, FrameFlags::NONE);
/// assert!(second.samples::<f32>()?.iter().all(|&s| s == 1.0));
/// grant.release_all()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Ring {
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a `Ring` is an address plus plain data; everything it reaches in the region is
// accessed through atomics or under the grant protocol, which is safe from any thread.
unsafe impl Send for Ring {}
// SAFETY: as above; `&Ring` only reads the validated layout and performs atomic operations.
unsafe impl Sync for Ring {}

/// Why [`Ring::create`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateError {
    /// The configuration is not a usable layout.
    Layout(LayoutError),
    /// The region pointer is null.
    NullRegion,
    /// The region does not start on a 128-byte boundary.
    Misaligned {
        /// The region's address.
        addr: usize,
    },
    /// The region is smaller than the configuration needs.
    TooSmall {
        /// Bytes needed (`RingConfig::region_size`).
        needed: usize,
        /// Bytes given.
        got: usize,
    },
}

impl core::fmt::Display for CreateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CreateError::Layout(e) => write!(f, "cannot create the ring: {e}"),
            CreateError::NullRegion => {
                f.write_str("cannot create the ring: the region pointer is null")
            }
            CreateError::Misaligned { addr } => write!(
                f,
                "cannot create the ring: the region at {addr:#x} is not 128-byte aligned; map it page-aligned (mmap does) or align the static buffer"
            ),
            CreateError::TooSmall { needed, got } => write!(
                f,
                "cannot create the ring: the region has {got} bytes but the configuration needs {needed}; size it with RingConfig::region_size"
            ),
        }
    }
}

impl core::error::Error for CreateError {}

/// Why [`Ring::attach`] refused: the region does not hold a ring this build can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachError {
    /// The region pointer is null.
    NullRegion,
    /// The region does not start on a 128-byte boundary.
    Misaligned {
        /// The region's address.
        addr: usize,
    },
    /// The region is smaller than the header, or than the size the header describes.
    TooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The first eight bytes are not `VOXRING\0`: not a ring, or not created yet.
    BadMagic {
        /// What was found.
        found: u64,
    },
    /// The ring was created by a build with another layout version.
    AbiMismatch {
        /// The version in the header.
        found: u32,
    },
    /// A layout field holds a value no ring can have.
    BadField {
        /// Which field (as named in `core/LAYOUT.md`).
        field: &'static str,
        /// The value found.
        found: u64,
    },
    /// The layout fields describe an impossible configuration.
    Layout(LayoutError),
    /// A derived field (offset or size) disagrees with the configuration.
    Inconsistent {
        /// Which field.
        field: &'static str,
        /// The value in the header.
        found: u64,
        /// The value the configuration implies.
        expected: u64,
    },
}

impl core::fmt::Display for AttachError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AttachError::NullRegion => f.write_str("cannot attach: the region pointer is null"),
            AttachError::Misaligned { addr } => write!(
                f,
                "cannot attach: the region at {addr:#x} is not 128-byte aligned; map the segment page-aligned"
            ),
            AttachError::TooSmall { needed, got } => write!(
                f,
                "cannot attach: the region has {got} bytes but the ring needs {needed}; the segment was truncated or is not a ring"
            ),
            AttachError::BadMagic { found } => write!(
                f,
                "cannot attach: the region starts with {found:#018x}, not the voxring magic; it is not a ring or its creator has not finished; retry or recreate it"
            ),
            AttachError::AbiMismatch { found } => write!(
                f,
                "cannot attach: the ring has layout version {found} but this build speaks {ABI_VERSION}; rebuild both sides from the same voxring"
            ),
            AttachError::BadField { field, found } => write!(
                f,
                "cannot attach: header field {field} holds {found}, which no ring can have; the segment is corrupt, recreate it"
            ),
            AttachError::Layout(e) => {
                write!(f, "cannot attach: the header describes a bad layout: {e}")
            }
            AttachError::Inconsistent {
                field,
                found,
                expected,
            } => write!(
                f,
                "cannot attach: header field {field} is {found} but the layout implies {expected}; the segment is corrupt or from another build, recreate it"
            ),
        }
    }
}

impl core::error::Error for AttachError {}

/// Why [`Ring::producer`] could not claim the producer side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// Owner tokens must be non-zero (zero marks a free side).
    ZeroOwner,
    /// Another producer holds the ring.
    Taken {
        /// Its owner token.
        owner: u64,
    },
}

impl core::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ClaimError::ZeroOwner => f.write_str("owner token 0 is reserved for 'free': pass a non-zero token (e.g. pid << 32 | generation)"),
            ClaimError::Taken { owner } => write!(
                f,
                "the ring already has a producer (owner {owner:#x}); if that process is dead, evict it with Ring::evict_producer"
            ),
        }
    }
}

impl core::error::Error for ClaimError {}

/// Why [`Ring::consumer`] could not join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinError {
    /// Owner tokens must be non-zero.
    ZeroOwner,
    /// Every consumer slot is taken.
    Full {
        /// The ring's consumer slots.
        max_consumers: u16,
    },
}

impl core::fmt::Display for JoinError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            JoinError::ZeroOwner => {
                f.write_str("owner token 0 is reserved for 'free': pass a non-zero token")
            }
            JoinError::Full { max_consumers } => write!(
                f,
                "all {max_consumers} consumer slots are taken; evict dead consumers or create the ring with a larger max_consumers"
            ),
        }
    }
}

impl core::error::Error for JoinError {}

/// Why [`Producer::write_grant`] or [`Producer::wait_writable`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// Lossless policy: the slowest consumer has not released enough; nothing is free.
    Full,
    /// This producer was evicted (another owner holds the ring now).
    Evicted,
    /// A consumer's cursor is impossible (ahead of the producer or more than a ring behind).
    CorruptConsumer {
        /// The consumer slot.
        index: u16,
        /// The cursor read from it.
        read_pos: u64,
    },
}

impl core::fmt::Display for GrantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GrantError::Full => f.write_str("the ring is full: the slowest consumer has not released any frame; wait (wait_writable) or evict it"),
            GrantError::Evicted => f.write_str("this producer was evicted and no longer owns the ring; claim it again"),
            GrantError::CorruptConsumer { index, read_pos } => write!(
                f,
                "consumer {index} reports read position {read_pos}, which is impossible; the peer is corrupt: evict it"
            ),
        }
    }
}

impl core::error::Error for GrantError {}

/// Why [`WriteGrant::commit`] failed (nothing was committed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitError {
    /// More frames were committed than granted.
    TooMany {
        /// Frames asked to commit.
        commit: usize,
        /// Frames granted.
        granted: usize,
    },
    /// [`Producer::commit_token`]: the token is not the producer's open grant (it was
    /// committed already, replaced by a later grant, or belongs to another producer).
    StaleToken,
}

impl core::fmt::Display for CommitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CommitError::TooMany { commit, granted } => write!(
                f,
                "cannot commit {commit} frames from a grant of {granted}: nothing was committed"
            ),
            CommitError::StaleToken => f.write_str(
                "this write token is not the open grant (already committed, or replaced by a later grant): nothing was committed; take a new grant",
            ),
        }
    }
}

impl core::error::Error for CommitError {}

/// Why [`Consumer::read_grant`] or [`Consumer::wait_readable`] returned no frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Nothing committed past this consumer's position.
    Empty,
    /// Lossy policy: the producer lapped this consumer. Exactly `frames` frames were skipped;
    /// the consumer has been resynced to the oldest frame still in the ring. Read again.
    Lost {
        /// Frames skipped by this resync.
        frames: u64,
    },
    /// This consumer was evicted; join again.
    Evicted,
    /// The producer's cursor or a slot's sequence number is impossible.
    Corrupt {
        /// The position being read.
        pos: u64,
        /// The value found (a cursor or a slot sequence number).
        found: u64,
    },
}

impl core::fmt::Display for ReadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ReadError::Empty => {
                f.write_str("no frame ready yet; wait (wait_readable) and read again")
            }
            ReadError::Lost { frames } => write!(
                f,
                "this consumer fell a whole ring behind and lost {frames} frames; it was resynced, read again"
            ),
            ReadError::Evicted => {
                f.write_str("this consumer was evicted (judged dead); join again")
            }
            ReadError::Corrupt { pos, found } => write!(
                f,
                "reading frame {pos}: the ring holds {found} where that is impossible; the producer is corrupt, recreate the ring"
            ),
        }
    }
}

impl core::error::Error for ReadError {}

/// Why [`ReadGrant::release`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseError {
    /// More frames were released than granted (nothing was released).
    TooMany {
        /// Frames asked to release.
        release: usize,
        /// Frames granted.
        granted: usize,
    },
    /// Lossy policy: the first `frames` of the released frames were (or may have been)
    /// overwritten while they were read: their data and metadata must be discarded, and they
    /// count as lost. The released frames after them were intact. The position advances.
    Overwritten {
        /// Leading released frames to discard.
        frames: u64,
    },
    /// The consumer was evicted while it held the grant: the data may have been overwritten
    /// and must be discarded; join again.
    Evicted,
    /// [`Consumer::release_token`]: the token is not the consumer's open grant (it was
    /// released already, replaced by a later grant, or belongs to another consumer).
    StaleToken,
}

impl core::fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ReleaseError::TooMany { release, granted } => write!(
                f,
                "cannot release {release} frames from a grant of {granted}: nothing was released"
            ),
            ReleaseError::Overwritten { frames } => write!(
                f,
                "{frames} frames were overwritten by the producer while being read: discard their data (the consumer is too slow for the lossy ring)"
            ),
            ReleaseError::Evicted => f.write_str(
                "this consumer was evicted while reading: discard the data and join again",
            ),
            ReleaseError::StaleToken => f.write_str(
                "this read token is not the open grant (already released, or replaced by a later grant): nothing was released; take a new grant",
            ),
        }
    }
}

impl core::error::Error for ReleaseError {}

/// Why [`Ring::evict`] or [`Ring::evict_producer`] did nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictError {
    /// No consumer slot with that index.
    OutOfRange {
        /// The index given.
        index: u16,
        /// The ring's consumer slots.
        max_consumers: u16,
    },
    /// The slot (or producer side) is free already.
    NotMember,
    /// The slot is held by another owner than the one judged dead.
    OwnerMismatch {
        /// The owner found.
        found: u64,
    },
    /// The slot changed state while being evicted; look again.
    Raced,
}

impl core::fmt::Display for EvictError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EvictError::OutOfRange {
                index,
                max_consumers,
            } => write!(f, "no consumer slot {index}: the ring has {max_consumers}"),
            EvictError::NotMember => f.write_str("nothing to evict: the slot is free already"),
            EvictError::OwnerMismatch { found } => write!(
                f,
                "not evicted: the slot now belongs to owner {found:#x}, not the one judged dead"
            ),
            EvictError::Raced => {
                f.write_str("not evicted: the slot changed state meanwhile; check its owner again")
            }
        }
    }
}

impl core::error::Error for EvictError {}

/// Why [`Producer::push`] wrote nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushFrameError {
    /// The payload is longer than a slot.
    TooLong {
        /// Bytes given.
        len: usize,
        /// Bytes a slot holds.
        capacity: u32,
    },
    /// No frame could be granted (full, evicted, corrupt consumer).
    Grant(GrantError),
}

impl From<GrantError> for PushFrameError {
    fn from(e: GrantError) -> Self {
        PushFrameError::Grant(e)
    }
}

impl core::fmt::Display for PushFrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PushFrameError::TooLong { len, capacity } => write!(
                f,
                "cannot push {len} bytes: a frame holds {capacity}; split the data or create the ring with larger frames"
            ),
            PushFrameError::Grant(e) => write!(f, "cannot push: {e}"),
        }
    }
}

impl core::error::Error for PushFrameError {}

/// Why [`Consumer::pop`] returned no frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PopFrameError {
    /// No frame could be granted (empty, lost frames, evicted, corrupt producer).
    Read(ReadError),
    /// The frame was copied but turned out overwritten or the consumer evicted; the copy
    /// must be discarded (the frame is consumed).
    Release(ReleaseError),
    /// `out` is too short for the frame's payload; nothing was consumed.
    BufferTooSmall {
        /// Bytes the frame holds.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
}

impl From<ReadError> for PopFrameError {
    fn from(e: ReadError) -> Self {
        PopFrameError::Read(e)
    }
}

impl core::fmt::Display for PopFrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PopFrameError::Read(e) => write!(f, "cannot pop: {e}"),
            PopFrameError::Release(e) => write!(f, "popped frame is invalid: {e}"),
            PopFrameError::BufferTooSmall { needed, got } => write!(
                f,
                "cannot pop: the frame holds {needed} bytes but the buffer has {got}; pass a buffer of Ring::payload_bytes()"
            ),
        }
    }
}

impl core::error::Error for PopFrameError {}

impl Ring {
    /// Creates a ring in `len` bytes at `ptr`, overwriting whatever was there, and returns a
    /// handle on it. The region must be 128-byte aligned and at least
    /// [`RingConfig::region_size`] bytes.
    ///
    /// # Safety
    ///
    /// `ptr .. ptr + len` must be valid for reads and writes, and stay mapped and unmoved for
    /// as long as this handle or any handle derived from it (producer, consumers, grants,
    /// [`Wake`]s) is alive. No other handle may be using the region while it is created.
    pub unsafe fn create(ptr: *mut u8, len: usize, cfg: &RingConfig) -> Result<Ring, CreateError> {
        let layout = cfg.layout().map_err(CreateError::Layout)?;
        let base = NonNull::new(ptr).ok_or(CreateError::NullRegion)?;
        if !(ptr as usize).is_multiple_of(CACHE_LINE) {
            return Err(CreateError::Misaligned { addr: ptr as usize });
        }
        if len < layout.region_size {
            return Err(CreateError::TooSmall {
                needed: layout.region_size,
                got: len,
            });
        }
        let ring = Ring { base, layout };
        // SAFETY: the region is valid for writes of `region_size` bytes (checked above and by
        // the caller's contract), 128-byte aligned, and every block written lies inside it at
        // an offset that is a multiple of its alignment (offsets are sums of block sizes,
        // which are multiples of 128 or 64). Nobody else uses the region (contract).
        unsafe {
            ptr.cast::<HeaderBlock>().write(HeaderBlock::new(&layout));
            ptr.add(size_of::<HeaderBlock>())
                .cast::<ProducerBlock>()
                .write(ProducerBlock::new());
            ptr.add(size_of::<HeaderBlock>() + size_of::<ProducerBlock>())
                .cast::<WaitBlock>()
                .write(WaitBlock::new());
            for i in 0..usize::from(cfg.max_consumers) {
                ptr.add(layout.consumers_offset + i * size_of::<ConsumerBlock>())
                    .cast::<ConsumerBlock>()
                    .write(ConsumerBlock::new());
            }
            for i in 0..layout.frames() as usize {
                let slot = ptr.add(layout.slots_offset + i * layout.slot_size);
                slot.cast::<SlotMeta>().write(SlotMeta::new());
                slot.add(layout.payload_offset)
                    .write_bytes(0, layout.slot_size - layout.payload_offset);
            }
        }
        // Release: pairs with the Acquire load of `magic` in `attach`; publishes every field
        // written above.
        ring.header().magic.store(MAGIC, Ordering::Release);
        Ok(ring)
    }

    /// Attaches to a ring another party created in `len` bytes at `ptr`, validating the
    /// magic, the ABI version, every layout field and the region size.
    ///
    /// # Safety
    ///
    /// `ptr .. ptr + len` must be valid for reads and writes (its contents may be anything,
    /// including hostile), and stay mapped and unmoved for as long as this handle or any
    /// handle derived from it is alive. Outside loom, any bytes are acceptable: every value
    /// is checked. (Under `--cfg voxring_loom` the region must have been made by `create` in
    /// the same model, since loom atomics are objects, not bytes.)
    pub unsafe fn attach(ptr: *mut u8, len: usize) -> Result<Ring, AttachError> {
        let base = NonNull::new(ptr).ok_or(AttachError::NullRegion)?;
        if !(ptr as usize).is_multiple_of(CACHE_LINE) {
            return Err(AttachError::Misaligned { addr: ptr as usize });
        }
        let fixed = size_of::<HeaderBlock>() + size_of::<ProducerBlock>() + size_of::<WaitBlock>();
        if len < fixed {
            return Err(AttachError::TooSmall {
                needed: fixed,
                got: len,
            });
        }
        // SAFETY: the first `size_of::<HeaderBlock>()` bytes are inside the region (checked),
        // aligned (checked), and every field is an atomic, valid for any bit pattern.
        let h = unsafe { &*ptr.cast::<HeaderBlock>() };
        // Acquire: pairs with the Release store of `magic` at the end of `create`.
        let magic = h.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(AttachError::BadMagic { found: magic });
        }
        let abi = h.abi_version.load(Ordering::Relaxed);
        if abi != ABI_VERSION {
            return Err(AttachError::AbiMismatch { found: abi });
        }
        let field = |name: &'static str, v: u32| AttachError::BadField {
            field: name,
            found: u64::from(v),
        };
        let policy_code = h.policy.load(Ordering::Relaxed);
        let policy = Policy::from_code(policy_code).ok_or(field("policy", policy_code))?;
        let format_code = h.format.load(Ordering::Relaxed);
        let format = SampleFormat::from_code(format_code).ok_or(field("format", format_code))?;
        let channels = h.channels.load(Ordering::Relaxed);
        let channels = u16::try_from(channels).map_err(|_| field("channels", channels))?;
        let maxc = h.max_consumers.load(Ordering::Relaxed);
        let max_consumers = u16::try_from(maxc).map_err(|_| field("max_consumers", maxc))?;
        let cfg = RingConfig {
            frames: h.frames.load(Ordering::Relaxed),
            samples_per_frame: h.samples_per_frame.load(Ordering::Relaxed),
            channels,
            format,
            sample_rate: h.sample_rate.load(Ordering::Relaxed),
            max_consumers,
            policy,
        };
        let layout = cfg.layout().map_err(AttachError::Layout)?;
        let derived: [(&'static str, u64, u64); 7] = [
            (
                "payload_bytes",
                u64::from(h.payload_bytes.load(Ordering::Relaxed)),
                u64::from(layout.payload_bytes),
            ),
            (
                "slot_size",
                u64::from(h.slot_size.load(Ordering::Relaxed)),
                layout.slot_size as u64,
            ),
            (
                "consumers_offset",
                h.consumers_offset.load(Ordering::Relaxed),
                layout.consumers_offset as u64,
            ),
            (
                "slots_offset",
                h.slots_offset.load(Ordering::Relaxed),
                layout.slots_offset as u64,
            ),
            (
                "region_size",
                h.region_size.load(Ordering::Relaxed),
                layout.region_size as u64,
            ),
            (
                "cache_line",
                u64::from(h.cache_line.load(Ordering::Relaxed)),
                CACHE_LINE as u64,
            ),
            (
                "payload_offset",
                u64::from(h.payload_offset.load(Ordering::Relaxed)),
                layout.payload_offset as u64,
            ),
        ];
        for (name, found, expected) in derived {
            if found != expected {
                return Err(AttachError::Inconsistent {
                    field: name,
                    found,
                    expected,
                });
            }
        }
        if len < layout.region_size {
            return Err(AttachError::TooSmall {
                needed: layout.region_size,
                got: len,
            });
        }
        Ok(Ring { base, layout })
    }

    /// The validated configuration.
    pub fn config(&self) -> RingConfig {
        self.layout.config
    }

    /// Bytes the ring occupies from the start of its region.
    pub fn region_size(&self) -> usize {
        self.layout.region_size
    }

    /// Payload bytes per frame.
    pub fn payload_bytes(&self) -> u32 {
        self.layout.payload_bytes
    }

    /// Byte offset of the first frame slot from the start of the region (validated at
    /// create/attach and kept in the handle: a peer rewriting the header later changes
    /// nothing). Slot `i` starts at `slots_offset() + i * slot_size()`.
    ///
    /// These geometry accessors are for bindings that hand the mapping to another language
    /// (C, Python) and must say where frames live; Rust code uses the grants instead.
    ///
    /// ```
    /// # use voxring_core::{Policy, Ring, RingConfig, SampleFormat};
    /// # #[repr(C, align(128))] struct Region([u8; 4096]);
    /// # let mut region = Region([0; 4096]);
    /// let cfg = RingConfig { frames: 4, samples_per_frame: 8, channels: 1,
    ///     format: SampleFormat::S16, sample_rate: 16_000, max_consumers: 1,
    ///     policy: Policy::Lossless };
    /// // SAFETY: valid, aligned, unused region that outlives the handles.
    /// let ring = unsafe { Ring::create(region.0.as_mut_ptr(), 4096, &cfg) }?;
    /// let (slots, stride, payload) = (ring.slots_offset(), ring.slot_size(), ring.payload_offset());
    /// assert!(payload < stride && payload + ring.payload_bytes() as usize <= stride);
    /// assert!(slots + 4 * stride <= ring.region_size());
    /// // Frame 5 lives in slot 5 & (frames - 1) = 1.
    /// assert_eq!(ring.frame_payload_offset(5), slots + stride + payload);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn slots_offset(&self) -> usize {
        self.layout.slots_offset
    }

    /// Bytes from one frame slot to the next (the slot stride: metadata, then payload, padded
    /// to the cache line). See [`Ring::slots_offset`].
    pub fn slot_size(&self) -> usize {
        self.layout.slot_size
    }

    /// Byte offset of the payload within a slot (the slot's metadata comes first). See
    /// [`Ring::slots_offset`].
    pub fn payload_offset(&self) -> usize {
        self.layout.payload_offset
    }

    /// Byte offset, from the start of the region, of the payload of the frame with sequence
    /// number `seq` (its slot is `seq & (frames - 1)`); always inside the region, with
    /// [`Ring::payload_bytes`] bytes after it in the slot. See [`Ring::slots_offset`].
    pub fn frame_payload_offset(&self, seq: u64) -> usize {
        let index = (seq & self.layout.mask) as usize;
        self.layout.slots_offset + index * self.layout.slot_size + self.layout.payload_offset
    }

    /// Frames committed so far, as the shared header says (informative; may be anything if
    /// the producer is hostile).
    pub fn write_pos(&self) -> u64 {
        // Acquire: pairs with the producer's commit store, for callers that then look at frames.
        self.prod().write_pos.load(Ordering::Acquire)
    }

    /// Claims the producer side with a non-zero `owner` token (e.g. `pid << 32 | generation`,
    /// for the platform's liveness checks). The claim ends when the [`Producer`] is dropped or
    /// evicted.
    pub fn producer(&self, owner: u64) -> Result<Producer, ClaimError> {
        if owner == 0 {
            return Err(ClaimError::ZeroOwner);
        }
        let p = self.prod();
        // Acquire on success: pairs with the Release that freed the side (a dropped
        // producer, `evict_producer`), so this producer continues after its predecessor.
        if let Err(found) = p
            .owner
            .compare_exchange(0, owner, Ordering::Acquire, Ordering::Relaxed)
        {
            return Err(ClaimError::Taken { owner: found });
        }
        // Acquire: pairs with the predecessor's commit store.
        let write_pos = p.write_pos.load(Ordering::Acquire);
        // Relaxed: only a starting point for this producer's own sequence of futex values;
        // a sleeper armed on it (odd) is woken by the first commit whatever is read here.
        let data_word = self.waits().data_futex.load(Ordering::Relaxed) & !SLEEPER;
        Ok(Producer {
            ring: *self,
            owner,
            write_pos,
            limit: write_pos,
            data_word,
            open: None,
            token_seq: 0,
        })
    }

    /// Joins as a consumer with a non-zero `owner` token, in the first free slot, starting at
    /// the current write position (frames committed before the join are not delivered).
    pub fn consumer(&self, owner: u64) -> Result<Consumer, JoinError> {
        if owner == 0 {
            return Err(JoinError::ZeroOwner);
        }
        let p = self.prod();
        for index in 0..self.layout.config.max_consumers {
            let c = self.consumer_block(index);
            let st = c.state.load(Ordering::Relaxed);
            if st & STATE_MASK != STATE_FREE {
                continue;
            }
            let gen_bits = st & !STATE_MASK;
            // Acquire: pairs with the Release that freed the slot (leave / evict), so our
            // writes below come after the previous occupant's.
            if c.state
                .compare_exchange(
                    st,
                    gen_bits | STATE_JOINING,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            let word = gen_bits.wrapping_add(GEN_STEP) | STATE_ACTIVE;
            c.owner.store(owner, Ordering::Relaxed);
            c.lost.store(0, Ordering::Relaxed);
            // Acquire: pairs with the producer's commit store.
            let w0 = p.write_pos.load(Ordering::Acquire);
            c.read_pos.store(w0, Ordering::Relaxed);
            // SeqCst (Release part): pairs with the producer's Acquire load of `state` in
            // `refresh_limit`, publishing `read_pos` and `owner` with it. SeqCst part: the
            // Dekker handshake with `refresh_limit` (see the module docs).
            c.state.store(word, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            // Acquire: pairs with the producer's commit store; after the fence, this is at or
            // after every position the producer may overwrite without having seen us.
            let w1 = p.write_pos.load(Ordering::Acquire);
            // Release: pairs with the producer's Acquire load of `read_pos`.
            c.read_pos.store(w1, Ordering::Release);
            return Ok(Consumer {
                ring: *self,
                index,
                word,
                read_pos: w1,
                cached_write: w1,
                lost_total: 0,
                open: None,
                token_seq: 0,
            });
        }
        Err(JoinError::Full {
            max_consumers: self.layout.config.max_consumers,
        })
    }

    /// The owner token of consumer slot `index`, or `None` when the slot is free or does not
    /// exist. For the platform's liveness checker.
    pub fn consumer_owner(&self, index: u16) -> Option<u64> {
        if index >= self.layout.config.max_consumers {
            return None;
        }
        let c = self.consumer_block(index);
        // Acquire: pairs with the joiner's SeqCst store of `state`, which published `owner`.
        if c.state.load(Ordering::Acquire) & STATE_MASK == STATE_FREE {
            return None;
        }
        Some(c.owner.load(Ordering::Relaxed))
    }

    /// Consumer `index`'s read position (the next sequence number it will read), or `None`
    /// when the slot is free or out of range. For monitoring (`write_pos() - read_pos` is its
    /// lag); the value comes from shared memory, so a caller must range-check what it derives.
    pub fn consumer_read_pos(&self, index: u16) -> Option<u64> {
        if index >= self.layout.config.max_consumers {
            return None;
        }
        let c = self.consumer_block(index);
        // Acquire: pairs with the joiner's SeqCst store of `state`, which published `read_pos`.
        if c.state.load(Ordering::Acquire) & STATE_MASK == STATE_FREE {
            return None;
        }
        // Acquire: pairs with the consumer's Release store of `read_pos` at release.
        Some(c.read_pos.load(Ordering::Acquire))
    }

    /// The producer's owner token, or `None` when no producer holds the ring.
    pub fn producer_owner(&self) -> Option<u64> {
        match self.prod().owner.load(Ordering::Relaxed) {
            0 => None,
            o => Some(o),
        }
    }

    /// Evicts consumer slot `index` if it still belongs to `owner` (which the platform has
    /// judged dead). A lossless producer stops waiting for it; the evicted consumer, if it
    /// was alive after all, gets [`ReadError::Evicted`]. Wakes a parked producer if needed.
    pub fn evict(&self, index: u16, owner: u64) -> Result<Wake, EvictError> {
        let max_consumers = self.layout.config.max_consumers;
        if index >= max_consumers {
            return Err(EvictError::OutOfRange {
                index,
                max_consumers,
            });
        }
        let c = self.consumer_block(index);
        // Acquire: pairs with the joiner's SeqCst store, so `owner` below is the joiner's.
        let st = c.state.load(Ordering::Acquire);
        if st & STATE_MASK == STATE_FREE {
            return Err(EvictError::NotMember);
        }
        let found = c.owner.load(Ordering::Relaxed);
        if found != owner {
            return Err(EvictError::OwnerMismatch { found });
        }
        // AcqRel: Release pairs with the next joiner's Acquire CAS; Acquire keeps our later
        // loads after the state change.
        c.state
            .compare_exchange(
                st,
                (st & !STATE_MASK) | STATE_FREE,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .map_err(|_| EvictError::Raced)?;
        Ok(self.wake_producer_if_parked())
    }

    /// Frees the producer side if it still belongs to `owner` (judged dead by the platform),
    /// so a new producer can claim it. Frames the dead producer had not committed are gone.
    pub fn evict_producer(&self, owner: u64) -> Result<(), EvictError> {
        // Release: pairs with the next claimer's Acquire CAS.
        match self
            .prod()
            .owner
            .compare_exchange(owner, 0, Ordering::Release, Ordering::Relaxed)
        {
            Ok(_) => Ok(()),
            Err(0) => Err(EvictError::NotMember),
            Err(found) => Err(EvictError::OwnerMismatch { found }),
        }
    }

    fn header(&self) -> &HeaderBlock {
        // SAFETY: the header is at offset 0 of a region of at least `region_size` bytes,
        // aligned, initialised by `create` (validated by `attach`); all fields are atomics.
        unsafe { &*self.base.as_ptr().cast::<HeaderBlock>() }
    }

    fn prod(&self) -> &ProducerBlock {
        // SAFETY: the producer block follows the header inside the region (see `header`).
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(size_of::<HeaderBlock>())
                .cast::<ProducerBlock>()
        }
    }

    fn waits(&self) -> &WaitBlock {
        // SAFETY: the wait block follows the producer block inside the region (see `header`).
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(size_of::<HeaderBlock>() + size_of::<ProducerBlock>())
                .cast::<WaitBlock>()
        }
    }

    fn consumer_block(&self, index: u16) -> &ConsumerBlock {
        let index = usize::from(index).min(usize::from(self.layout.config.max_consumers) - 1);
        // SAFETY: `index < max_consumers` (clamped above), so the block lies inside the
        // consumer table, which lies inside the region (validated layout).
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(self.layout.consumers_offset + index * size_of::<ConsumerBlock>())
                .cast::<ConsumerBlock>()
        }
    }

    fn slot_ptr(&self, pos: u64) -> *mut u8 {
        let index = (pos & self.layout.mask) as usize;
        // SAFETY: `index < frames` (masked), so the slot lies inside the region.
        unsafe {
            self.base
                .as_ptr()
                .add(self.layout.slots_offset + index * self.layout.slot_size)
        }
    }

    fn slot(&self, pos: u64) -> &SlotMeta {
        // SAFETY: `slot_ptr` is inside the region and 64-byte aligned; the metadata is atomics.
        unsafe { &*self.slot_ptr(pos).cast::<SlotMeta>() }
    }

    fn payload_ptr(&self, pos: u64) -> *mut u8 {
        // SAFETY: the payload follows the metadata inside the same slot.
        unsafe { self.slot_ptr(pos).add(self.layout.payload_offset) }
    }

    fn lossy(&self) -> bool {
        self.layout.config.policy == Policy::Lossy
    }

    fn wake_producer_if_parked(&self) -> Wake {
        let p = self.waits();
        // SeqCst fence: the Dekker handshake with `Producer::wait_writable` (our cursor or
        // state store before it, its `producer_parked` store before its own fence).
        fence(Ordering::SeqCst);
        if p.producer_parked.load(Ordering::Relaxed) == 0 {
            return Wake::none();
        }
        // Move the word on by 2 (keeping `SLEEPER` as it is: only the producer sets and
        // clears it), so a producer that has not gone to sleep yet will not; make the wake
        // syscall only if the producer armed the word. A forged `producer_parked` alone costs
        // this add and no syscall.
        // Release: pairs with the Acquire load of `space_futex` in `wait_writable`. The add and
        // the producer's arming CAS are read-modify-writes of the same word: whichever comes
        // second sees the first.
        let old = p.space_futex.fetch_add(2, Ordering::Release);
        if old & SLEEPER != 0 {
            Wake::on(&p.space_futex)
        } else {
            Wake::none()
        }
    }
}

impl HeaderBlock {
    fn new(l: &Layout) -> Self {
        use crate::sync::{AtomicU32, AtomicU64};
        HeaderBlock {
            magic: AtomicU64::new(0),
            abi_version: AtomicU32::new(ABI_VERSION),
            policy: AtomicU32::new(l.config.policy as u32),
            frames: AtomicU32::new(l.config.frames),
            samples_per_frame: AtomicU32::new(l.config.samples_per_frame),
            channels: AtomicU32::new(u32::from(l.config.channels)),
            format: AtomicU32::new(l.config.format as u32),
            sample_rate: AtomicU32::new(l.config.sample_rate),
            max_consumers: AtomicU32::new(u32::from(l.config.max_consumers)),
            payload_bytes: AtomicU32::new(l.payload_bytes),
            slot_size: AtomicU32::new(l.slot_size as u32),
            consumers_offset: AtomicU64::new(l.consumers_offset as u64),
            slots_offset: AtomicU64::new(l.slots_offset as u64),
            region_size: AtomicU64::new(l.region_size as u64),
            cache_line: AtomicU32::new(CACHE_LINE as u32),
            payload_offset: AtomicU32::new(l.payload_offset as u32),
        }
    }
}

impl ProducerBlock {
    fn new() -> Self {
        use crate::sync::AtomicU64;
        ProducerBlock {
            write_pos: AtomicU64::new(0),
            owner: AtomicU64::new(0),
        }
    }
}

impl WaitBlock {
    fn new() -> Self {
        use crate::sync::AtomicU32;
        WaitBlock {
            data_futex: AtomicU32::new(0),
            consumers_parked: AtomicU32::new(0),
            space_futex: AtomicU32::new(0),
            producer_parked: AtomicU32::new(0),
        }
    }
}

impl ConsumerBlock {
    fn new() -> Self {
        use crate::sync::{AtomicU32, AtomicU64};
        ConsumerBlock {
            read_pos: AtomicU64::new(0),
            owner: AtomicU64::new(0),
            state: AtomicU32::new(STATE_FREE),
            _reserved: AtomicU32::new(0),
            lost: AtomicU64::new(0),
        }
    }
}

/// The producer side of a ring. At most one exists per ring at a time.
#[derive(Debug)]
pub struct Producer {
    ring: Ring,
    owner: u64,
    write_pos: u64,
    /// Positions below `limit` may be written without looking at the consumers again (the
    /// cached slowest consumer plus the capacity; rtrb's trick).
    limit: u64,
    /// The value this producer last stored in `data_futex` (always even: `SLEEPER` clear).
    /// Producer-local, never re-read from the region: the next bump stores `data_word + 2`
    /// whatever a peer wrote there, so a forged word costs at most one wake per commit.
    data_word: u32,
    /// The grant handed out as a token ([`Producer::grant_token`]) and not yet committed.
    open: Option<WriteToken>,
    /// Tokens handed out so far: each token carries its number, so a stale copy never
    /// matches a later grant at the same position.
    token_seq: u64,
}

/// A write grant held by value: for bindings that keep a grant between calls (the C ABI,
/// Python), where the borrowing [`WriteGrant`] cannot be stored.
///
/// Opaque and `Copy`: it names the producer's open grant (first position, length, and a
/// grant number). [`Producer::commit_token`] checks it, so a token that was committed
/// already, replaced by a later grant, or made by another producer is an error
/// ([`CommitError::StaleToken`]), never a commit of the wrong frames. A producer has at most
/// one open grant: taking any new grant (token or borrowing) abandons an open token, as
/// dropping a [`WriteGrant`] does.
///
/// ```
/// # use voxring_core::{Policy, Ring, RingConfig, SampleFormat, CommitError};
/// # #[repr(C, align(128))] struct Region([u8; 4096]);
/// # let mut region = Region([0; 4096]);
/// # let cfg = RingConfig { frames: 4, samples_per_frame: 8, channels: 1,
/// #     format: SampleFormat::S16, sample_rate: 16_000, max_consumers: 1,
/// #     policy: Policy::Lossless };
/// # // SAFETY: valid, aligned, unused region that outlives the handles.
/// # let ring = unsafe { Ring::create(region.0.as_mut_ptr(), 4096, &cfg) }?;
/// let mut producer = ring.producer(1)?;
/// let mut consumer = ring.consumer(2)?;
///
/// let token = producer.grant_token(2)?; // no borrow of `producer` is kept
/// assert_eq!((token.first_seq(), token.len()), (0, 2));
/// for i in 0..token.len() {
///     let mut frame = producer.token_frame_mut(token, i).unwrap();
///     frame.samples_mut::<i16>()?.fill(i as i16);
/// }
/// let _wake = producer.commit_token(token, 2)?; // nobody is parked here
/// // The same token again is stale: an error, nothing happens.
/// assert_eq!(producer.commit_token(token, 2).unwrap_err(), CommitError::StaleToken);
///
/// let read = consumer.read_token(4)?;
/// assert_eq!(read.len(), 2);
/// assert_eq!(consumer.token_frame(read, 1).unwrap().samples::<i16>()?[0], 1);
/// let _wake = consumer.release_token(read, 2)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteToken {
    start: u64,
    len: usize,
    /// The grant's number in its producer's sequence.
    id: u64,
    /// Which producer: the ring's address and the claim's owner token.
    ring: usize,
    owner: u64,
}

impl WriteToken {
    /// Frames granted.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no frame was granted.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sequence number of the first granted frame.
    pub fn first_seq(&self) -> u64 {
        self.start
    }
}

/// A read grant held by value: the consumer's counterpart of [`WriteToken`] (see there for an
/// example). [`Consumer::release_token`] checks it: a token released already, replaced by a
/// later grant, or made by another consumer is [`ReleaseError::StaleToken`]. Taking any new
/// read grant abandons an open token (releasing nothing), as dropping a [`ReadGrant`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadToken {
    start: u64,
    len: usize,
    /// The grant's number in its consumer's sequence.
    id: u64,
    /// Which consumer: the ring's address, the slot, and the join's state word (which
    /// carries the slot's generation).
    ring: usize,
    index: u16,
    word: u32,
}

impl ReadToken {
    /// Frames granted.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no frame was granted.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sequence number of the first granted frame.
    pub fn first_seq(&self) -> u64 {
        self.start
    }
}

impl Producer {
    /// The ring this producer writes.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Sequence number the next committed frame will get.
    pub fn write_pos(&self) -> u64 {
        self.write_pos
    }

    /// Asks for up to `n` frames to fill in place (fewer if fewer are free; at most the
    /// capacity). In the lossless policy this fails with [`GrantError::Full`] when no frame
    /// is free; in the lossy policy it always grants and overwrites the oldest frames.
    ///
    /// A grant of zero frames (`n == 0`) is valid and commits nothing.
    pub fn write_grant(&mut self, n: usize) -> Result<WriteGrant<'_>, GrantError> {
        self.abandon_open_token();
        let (start, len) = self.grant_inner(n)?;
        Ok(WriteGrant {
            start,
            len,
            producer: self,
            done: false,
        })
    }

    /// [`Producer::write_grant`] held by value, for bindings that keep the grant between
    /// calls: the frames are reached with [`Producer::token_frame_mut`] and published with
    /// [`Producer::commit_token`]. An open token is abandoned first. See [`WriteToken`].
    pub fn grant_token(&mut self, n: usize) -> Result<WriteToken, GrantError> {
        self.abandon_open_token();
        let (start, len) = self.grant_inner(n)?;
        self.token_seq = self.token_seq.wrapping_add(1);
        let token = WriteToken {
            start,
            len,
            id: self.token_seq,
            ring: self.ring.base.as_ptr() as usize,
            owner: self.owner,
        };
        self.open = Some(token);
        Ok(token)
    }

    /// Frame `i` of the open grant `token`; `None` when `i >= token.len()` or the token is
    /// not the open grant (stale).
    pub fn token_frame_mut(&mut self, token: WriteToken, i: usize) -> Option<FrameMut<'_>> {
        if self.open != Some(token) || i >= token.len {
            return None;
        }
        // SAFETY: `token` is the open grant (checked), `i < len <= capacity`, so the slot is
        // one this grant owns exclusively; the returned borrow of `self` keeps any other
        // `FrameMut` (and any new grant) from existing meanwhile.
        Some(unsafe { FrameMut::new(&self.ring, token.start.wrapping_add(i as u64)) })
    }

    /// Every frame of the open grant `token`, in order; `None` when the token is stale.
    pub fn token_frames_mut(&mut self, token: WriteToken) -> Option<FramesMut<'_>> {
        (self.open == Some(token)).then(|| FramesMut {
            ring: &self.ring,
            next: token.start,
            end: token.start.wrapping_add(token.len as u64),
            _grant: PhantomData,
        })
    }

    /// Publishes the first `k` frames of the open grant `token` (the rest are abandoned), as
    /// [`WriteGrant::commit`] does. A stale token is [`CommitError::StaleToken`]; `k` over
    /// the grant is [`CommitError::TooMany`] and leaves the token open.
    pub fn commit_token(&mut self, token: WriteToken, k: usize) -> Result<Wake, CommitError> {
        if self.open != Some(token) {
            return Err(CommitError::StaleToken);
        }
        if k > token.len {
            return Err(CommitError::TooMany {
                commit: k,
                granted: token.len,
            });
        }
        self.open = None;
        Ok(self.commit_inner(token.start, token.len, k))
    }

    /// Abandons the open token grant, if any (commits nothing).
    fn abandon_open_token(&mut self) {
        if let Some(t) = self.open.take() {
            // Committing zero frames wakes nobody: the Wake is always empty.
            let _ = self.commit_inner(t.start, t.len, 0);
        }
    }

    /// Takes a grant of up to `n` frames: its first position and length.
    fn grant_inner(&mut self, n: usize) -> Result<(u64, usize), GrantError> {
        let ring = self.ring;
        if ring.prod().owner.load(Ordering::Relaxed) != self.owner {
            return Err(GrantError::Evicted);
        }
        let cap = ring.layout.frames();
        let mut len = (n as u64).min(cap);
        if ring.lossy() {
            for i in 0..len {
                ring.slot(self.write_pos.wrapping_add(i))
                    .seq
                    .store(SEQ_WRITING, Ordering::Relaxed);
            }
            // Release fence: pairs with the consumers' Acquire fence in `release` (seqlock):
            // a reader that sees any of our writes below also sees the SEQ_WRITING marks.
            fence(Ordering::Release);
        } else {
            let mut free = self.limit.wrapping_sub(self.write_pos);
            if free < len {
                self.refresh_limit()?;
                free = self.limit.wrapping_sub(self.write_pos);
            }
            if free == 0 && len > 0 {
                return Err(GrantError::Full);
            }
            len = len.min(free);
        }
        for i in 0..len {
            let pos = self.write_pos.wrapping_add(i);
            let s = ring.slot(pos);
            s.sample_pos.store(0, Ordering::Relaxed);
            s.timestamp_ns.store(0, Ordering::Relaxed);
            s.flags.store(0, Ordering::Relaxed);
            s.len.store(ring.layout.payload_bytes, Ordering::Relaxed);
            if !ring.lossy() {
                // Loom access tracking: the producer starts writing this slot's payload.
                s.payload_cell.with_mut(|_| ());
            }
        }
        Ok((self.write_pos, len as usize))
    }

    /// Copies `payload` into one new frame with the given metadata and commits it: the
    /// plain, copying form of [`Producer::write_grant`] for small payloads.
    ///
    /// ```
    /// # use voxring_core::{Policy, Ring, RingConfig, SampleFormat, FrameFlags};
    /// # #[repr(C, align(128))] struct Region([u8; 2048]);
    /// # let mut region = Region([0; 2048]);
    /// # let cfg = RingConfig { frames: 2, samples_per_frame: 4, channels: 1,
    /// #     format: SampleFormat::S16, sample_rate: 16_000, max_consumers: 1,
    /// #     policy: Policy::Lossless };
    /// # // SAFETY: valid, aligned, unused region that outlives the handles.
    /// # let ring = unsafe { Ring::create(region.0.as_mut_ptr(), 2048, &cfg) }?;
    /// let mut producer = ring.producer(1)?;
    /// let mut consumer = ring.consumer(2)?;
    /// producer.push(b"hello", 0, 42, FrameFlags::END_OF_STREAM)?;
    /// let mut buf = [0u8; 8];
    /// let (meta, _wake) = consumer.pop(&mut buf)?;
    /// assert_eq!((&buf[..meta.len as usize], meta.timestamp_ns), (&b"hello"[..], 42));
    /// assert!(meta.flags.contains(FrameFlags::END_OF_STREAM));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push(
        &mut self,
        payload: &[u8],
        sample_pos: u64,
        timestamp_ns: u64,
        flags: FrameFlags,
    ) -> Result<Wake, PushFrameError> {
        let capacity = self.ring.layout.payload_bytes;
        if payload.len() > capacity as usize {
            return Err(PushFrameError::TooLong {
                len: payload.len(),
                capacity,
            });
        }
        let mut g = self.write_grant(1)?;
        let Some(mut f) = g.frame_mut(0) else {
            return Err(PushFrameError::Grant(GrantError::Full));
        };
        f.payload_mut()[..payload.len()].copy_from_slice(payload);
        // `payload.len() <= capacity`, a u32, checked above.
        f.meta.len.store(payload.len() as u32, Ordering::Relaxed);
        f.set_sample_pos(sample_pos);
        f.set_timestamp_ns(timestamp_ns);
        f.set_flags(flags);
        Ok(g.commit_all())
    }

    /// Lossless policy: sleeps through `waiter` until a frame may be free, at most
    /// `timeout_ns`. Makes no call at all when space is already known to be free. Re-check
    /// with [`Producer::write_grant`] after it returns. Lossy policy: returns `Ready` at once.
    pub fn wait_writable(
        &mut self,
        waiter: &impl Waiter,
        timeout_ns: Option<u64>,
    ) -> Result<WaitOutcome, GrantError> {
        let ring = self.ring;
        if ring.lossy() || self.limit != self.write_pos {
            return Ok(WaitOutcome::Ready);
        }
        // Poll first (without announcing, so consumers make no wake call meanwhile).
        for _ in 0..waiter.spins_before_park() {
            self.refresh_limit()?;
            if self.limit != self.write_pos {
                return Ok(WaitOutcome::Ready);
            }
            crate::sync::spin_hint();
        }
        let p = ring.waits();
        // SeqCst: announce before re-checking the consumers (Dekker with
        // `wake_producer_if_parked`, see crate::wait).
        p.producer_parked.store(1, Ordering::SeqCst);
        // Acquire: pairs with the consumers' Release bump of `space_futex`.
        let seen = p.space_futex.load(Ordering::Acquire);
        // `refresh_limit` starts with fence(SeqCst), completing the handshake.
        let outcome = match self.refresh_limit() {
            Err(e) => Err(e),
            Ok(()) if self.limit != self.write_pos => Ok(WaitOutcome::Ready),
            Ok(()) => match arm(&p.space_futex, seen) {
                Some(armed) => {
                    let woke = waiter.wait(&p.space_futex, armed, timeout_ns);
                    // Disarm: we are the only sleeper on this word, and awake now. Relaxed: a
                    // releaser that still sees the mark makes one needless wake, no more.
                    p.space_futex.fetch_and(!SLEEPER, Ordering::Relaxed);
                    Ok(woke)
                }
                // A consumer moved the word on since we read it: space may be free.
                None => Ok(WaitOutcome::Ready),
            },
        };
        p.producer_parked.store(0, Ordering::Relaxed);
        outcome
    }

    /// Recomputes the slowest live consumer (the slow path of the cached cursor).
    fn refresh_limit(&mut self) -> Result<(), GrantError> {
        let ring = self.ring;
        let cap = ring.layout.frames();
        // SeqCst fence: the Dekker handshake with a joining consumer (its SeqCst `state`
        // store, then fence) and with a releasing consumer's wake check.
        fence(Ordering::SeqCst);
        let mut oldest_behind = 0u64;
        for index in 0..ring.layout.config.max_consumers {
            let c = ring.consumer_block(index);
            // Acquire: pairs with the joiner's SeqCst store, which published its `read_pos`.
            if c.state.load(Ordering::Acquire) & STATE_MASK != STATE_ACTIVE {
                continue;
            }
            // Acquire: pairs with the consumer's Release store in `release`: its reads of the
            // slots before this position happen before we overwrite them.
            let r = c.read_pos.load(Ordering::Acquire);
            let behind = self.write_pos.wrapping_sub(r);
            if behind > cap {
                return Err(GrantError::CorruptConsumer { index, read_pos: r });
            }
            oldest_behind = oldest_behind.max(behind);
        }
        self.limit = self.write_pos.wrapping_sub(oldest_behind).wrapping_add(cap);
        Ok(())
    }

    fn commit_inner(&mut self, start: u64, len: usize, k: usize) -> Wake {
        let ring = self.ring;
        let lossy = ring.lossy();
        if !lossy {
            for i in 0..len as u64 {
                // Loom access tracking: the producer's writes to this payload end here.
                ring.slot(start.wrapping_add(i))
                    .payload_cell
                    .with_mut(|_| ());
            }
        }
        if k == 0 {
            return Wake::none();
        }
        for i in 0..k as u64 {
            let pos = start.wrapping_add(i);
            // Release (lossy): pairs with the consumer's Acquire load of `seq` in
            // `read_grant` (seqlock). Lossless: the `write_pos` store below publishes it.
            let order = if lossy {
                Ordering::Release
            } else {
                Ordering::Relaxed
            };
            ring.slot(pos).seq.store(pos, order);
        }
        let new = start.wrapping_add(k as u64);
        let p = ring.prod();
        let waits = ring.waits();
        // Release (COMMIT_ORDER): pairs with the consumers' Acquire loads of `write_pos` in
        // `read_grant` and `wait_readable`; publishes the payload and metadata written above.
        p.write_pos.store(new, COMMIT_ORDER);
        self.write_pos = new;
        // SeqCst fence: Dekker with `Consumer::wait_readable` (its `consumers_parked`
        // increment, then fence, then its `write_pos` load).
        fence(Ordering::SeqCst);
        if waits.consumers_parked.load(Ordering::Relaxed) == 0 {
            return Wake::none();
        }
        // Someone announced itself (or a peer forged the count): move the word on, so a
        // consumer that has not gone to sleep yet will not (its arming CAS or its futex wait
        // sees the new value), and make the wake syscall only if a consumer armed the word,
        // i.e. really went to sleep on it. A forged `consumers_parked` alone therefore costs
        // this swap and no syscall; see `crate::wait` for the bound.
        self.data_word = self.data_word.wrapping_add(2) & !SLEEPER;
        // Release: pairs with the Acquire load of `data_futex` in `wait_readable` (a consumer
        // that reads the new value sees this commit). The swap and the consumers' arming CAS
        // are read-modify-writes of the same word: whichever comes second sees the first.
        let old = waits.data_futex.swap(self.data_word, Ordering::Release);
        if old & SLEEPER != 0 {
            Wake::on(&waits.data_futex)
        } else {
            Wake::none()
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.abandon_open_token();
        // Release: pairs with the next claimer's Acquire CAS. Fails harmlessly if evicted.
        let _ = self.ring.prod().owner.compare_exchange(
            self.owner,
            0,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }
}

/// Frames granted to the producer, to fill in place and then [`commit`](WriteGrant::commit).
///
/// Dropping a grant commits nothing.
#[derive(Debug)]
pub struct WriteGrant<'a> {
    producer: &'a mut Producer,
    start: u64,
    len: usize,
    done: bool,
}

impl<'a> WriteGrant<'a> {
    /// Frames granted.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no frame was granted.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sequence number of the first granted frame.
    pub fn first_seq(&self) -> u64 {
        self.start
    }

    /// Frame `i` of the grant (`None` when `i >= len()`).
    pub fn frame_mut(&mut self, i: usize) -> Option<FrameMut<'_>> {
        (i < self.len).then(|| {
            // SAFETY: `i < len <= capacity`, so the slot is one this grant owns exclusively,
            // and the returned borrow of `self` keeps any other `FrameMut` of it from existing.
            unsafe { FrameMut::new(&self.producer.ring, self.start.wrapping_add(i as u64)) }
        })
    }

    /// Every granted frame, in order (the slots may wrap around the ring's end).
    pub fn frames_mut(&mut self) -> FramesMut<'_> {
        FramesMut {
            ring: &self.producer.ring,
            next: self.start,
            end: self.start.wrapping_add(self.len as u64),
            _grant: PhantomData,
        }
    }

    /// Publishes the first `k` frames to the consumers; the rest are abandoned. Returns
    /// whether a parked consumer must be woken (see [`Wake`]).
    pub fn commit(mut self, k: usize) -> Result<Wake, CommitError> {
        if k > self.len {
            return Err(CommitError::TooMany {
                commit: k,
                granted: self.len,
            });
        }
        self.done = true;
        Ok(self.producer.commit_inner(self.start, self.len, k))
    }

    /// Commits every granted frame.
    pub fn commit_all(self) -> Wake {
        let n = self.len;
        self.commit(n).unwrap_or_default()
    }
}

impl Drop for WriteGrant<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.producer.commit_inner(self.start, self.len, 0);
        }
    }
}

/// Iterator over the frames of a [`WriteGrant`].
#[derive(Debug)]
pub struct FramesMut<'g> {
    ring: &'g Ring,
    next: u64,
    end: u64,
    _grant: PhantomData<&'g mut ()>,
}

impl<'g> Iterator for FramesMut<'g> {
    type Item = FrameMut<'g>;
    fn next(&mut self) -> Option<FrameMut<'g>> {
        if self.next == self.end {
            return None;
        }
        let pos = self.next;
        self.next = pos.wrapping_add(1);
        // SAFETY: each position is yielded once and the grant holds at most `capacity`
        // frames, so no two `FrameMut`s alias; the iterator borrows the grant mutably.
        Some(unsafe { FrameMut::new(self.ring, pos) })
    }
}

/// One frame being written: its metadata setters and its payload.
#[derive(Debug)]
pub struct FrameMut<'g> {
    meta: &'g SlotMeta,
    payload: *mut u8,
    capacity: u32,
    format: SampleFormat,
    seq: u64,
    _grant: PhantomData<&'g mut [u8]>,
}

impl<'g> FrameMut<'g> {
    /// # Safety
    ///
    /// `pos` must be a position of a live write grant, and no other `FrameMut` for it may
    /// exist during `'g`.
    unsafe fn new(ring: &'g Ring, pos: u64) -> Self {
        FrameMut {
            meta: ring.slot(pos),
            payload: ring.payload_ptr(pos),
            capacity: ring.layout.payload_bytes,
            format: ring.layout.config.format,
            seq: pos,
            _grant: PhantomData,
        }
    }

    /// The sequence number this frame will have.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Sets the stream position of the frame's first sample.
    pub fn set_sample_pos(&mut self, sample_pos: u64) {
        self.meta.sample_pos.store(sample_pos, Ordering::Relaxed);
    }

    /// Sets the capture time of the first sample (ns, on the producer's clock).
    pub fn set_timestamp_ns(&mut self, timestamp_ns: u64) {
        self.meta
            .timestamp_ns
            .store(timestamp_ns, Ordering::Relaxed);
    }

    /// Sets the frame's flags.
    pub fn set_flags(&mut self, flags: FrameFlags) {
        self.meta.flags.store(flags.0, Ordering::Relaxed);
    }

    /// Sets the valid payload length in bytes (defaults to the whole slot).
    pub fn set_len(&mut self, len: u32) -> Result<(), LenError> {
        if len > self.capacity {
            return Err(LenError {
                len,
                capacity: self.capacity,
            });
        }
        self.meta.len.store(len, Ordering::Relaxed);
        Ok(())
    }

    /// The whole payload of the slot, to fill in place.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        // SAFETY: the payload is `capacity` bytes inside the slot; the write grant gives this
        // producer exclusive use of the slot among our handles (lossless: no consumer reads it
        // until commit; lossy: a lapped reader may read concurrently and is told at release),
        // and `&mut self` keeps this the only Rust reference to it.
        unsafe { core::slice::from_raw_parts_mut(self.payload, self.capacity as usize) }
    }

    /// The payload viewed as samples of type `S`, which must match the ring's format.
    pub fn samples_mut<S: Sample>(&mut self) -> Result<&mut [S], FormatMismatch> {
        if S::FORMAT != self.format {
            return Err(FormatMismatch {
                ring: self.format,
                asked: S::FORMAT,
            });
        }
        let n = self.capacity as usize / size_of::<S>();
        // SAFETY: the payload is 64-byte aligned (slot offsets are multiples of 64 in a
        // 128-aligned region), holds `n * size_of::<S>()` bytes, every bit pattern is a valid
        // `S` (i16, i32, f32), and exclusivity is as in `payload_mut`.
        Ok(unsafe { core::slice::from_raw_parts_mut(self.payload.cast::<S>(), n) })
    }
}

/// A consumer of a ring: one of up to `max_consumers`, with its own cursor.
///
/// Dropping it leaves the ring (frees its slot).
#[derive(Debug)]
pub struct Consumer {
    ring: Ring,
    index: u16,
    /// Our state word (generation | ACTIVE); anything else in the slot means evicted.
    word: u32,
    read_pos: u64,
    /// Last `write_pos` seen (rtrb's cached cursor).
    cached_write: u64,
    lost_total: u64,
    /// The grant handed out as a token ([`Consumer::read_token`]) and not yet released.
    open: Option<ReadToken>,
    /// Tokens handed out so far (see `Producer::token_seq`).
    token_seq: u64,
}

impl Consumer {
    /// The ring this consumer reads.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The consumer slot this consumer occupies.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Sequence number of the next frame to read.
    pub fn read_pos(&self) -> u64 {
        self.read_pos
    }

    /// Frames this consumer lost in total (lapped or overwritten while read; lossy policy).
    pub fn lost_frames(&self) -> u64 {
        self.lost_total
    }

    /// Leaves the ring, freeing the slot. Returns whether a lossless producer parked on this
    /// consumer must be woken (dropping the consumer leaves too, but cannot wake anyone: it
    /// has no waiter at hand, so a parked producer then notices at its timeout).
    pub fn leave(mut self) -> Wake {
        self.leave_inner()
    }

    fn leave_inner(&mut self) -> Wake {
        let c = self.block();
        // Release: pairs with the next joiner's Acquire CAS. Fails harmlessly if evicted.
        let left = c.state.compare_exchange(
            self.word,
            (self.word & !STATE_MASK) | STATE_FREE,
            Ordering::Release,
            Ordering::Relaxed,
        );
        // Mark this handle as gone so `Drop` does nothing more.
        self.word = STATE_FREE;
        if left.is_ok() && !self.ring.lossy() {
            // A lossless producer parked on us may now proceed.
            self.ring.wake_producer_if_parked()
        } else {
            Wake::none()
        }
    }

    fn block(&self) -> &ConsumerBlock {
        self.ring.consumer_block(self.index)
    }

    fn is_member(&self) -> bool {
        // Acquire: pairs with the AcqRel CAS of `Ring::evict`.
        self.block().state.load(Ordering::Acquire) == self.word
    }

    /// Asks for up to `n` committed frames to read in place (fewer if fewer are ready).
    ///
    /// Lossy policy: if the producer lapped this consumer, returns [`ReadError::Lost`] with
    /// the exact number of frames skipped and resyncs; read again.
    pub fn read_grant(&mut self, n: usize) -> Result<ReadGrant<'_>, ReadError> {
        self.abandon_open_token();
        let (start, len) = self.read_inner(n)?;
        Ok(ReadGrant {
            start,
            len,
            consumer: self,
            done: false,
        })
    }

    /// [`Consumer::read_grant`] held by value, for bindings that keep the grant between
    /// calls: the frames are reached with [`Consumer::token_frame`] and released with
    /// [`Consumer::release_token`]. An open token is abandoned first. See [`WriteToken`] for
    /// an example.
    pub fn read_token(&mut self, n: usize) -> Result<ReadToken, ReadError> {
        self.abandon_open_token();
        let (start, len) = self.read_inner(n)?;
        self.token_seq = self.token_seq.wrapping_add(1);
        let token = ReadToken {
            start,
            len,
            id: self.token_seq,
            ring: self.ring.base.as_ptr() as usize,
            index: self.index,
            word: self.word,
        };
        self.open = Some(token);
        Ok(token)
    }

    /// Frame `i` of the open grant `token`; `None` when `i >= token.len()` or the token is
    /// not the open grant (stale).
    pub fn token_frame(&self, token: ReadToken, i: usize) -> Option<FrameRef<'_>> {
        (self.open == Some(token) && i < token.len)
            .then(|| FrameRef::new(&self.ring, token.start.wrapping_add(i as u64)))
    }

    /// Every frame of the open grant `token`, in order; `None` when the token is stale.
    pub fn token_frames(&self, token: ReadToken) -> Option<impl Iterator<Item = FrameRef<'_>>> {
        let ring = &self.ring;
        (self.open == Some(token)).then(move || {
            (0..token.len as u64).map(move |i| FrameRef::new(ring, token.start.wrapping_add(i)))
        })
    }

    /// Releases the first `k` frames of the open grant `token`, as [`ReadGrant::release`]
    /// does. A stale token is [`ReleaseError::StaleToken`]; `k` over the grant is
    /// [`ReleaseError::TooMany`] and leaves the token open.
    pub fn release_token(&mut self, token: ReadToken, k: usize) -> Result<Wake, ReleaseError> {
        if self.open != Some(token) {
            return Err(ReleaseError::StaleToken);
        }
        if k > token.len {
            return Err(ReleaseError::TooMany {
                release: k,
                granted: token.len,
            });
        }
        self.open = None;
        self.release_inner(token.start, token.len, k)
    }

    /// Abandons the open token grant, if any (releases nothing).
    fn abandon_open_token(&mut self) {
        if let Some(t) = self.open.take() {
            // Releasing zero frames only ends loom's access tracking: it cannot fail.
            let _ = self.release_inner(t.start, t.len, 0);
        }
    }

    /// Takes a read grant of up to `n` frames: its first position and length.
    fn read_inner(&mut self, n: usize) -> Result<(u64, usize), ReadError> {
        if !self.is_member() {
            return Err(ReadError::Evicted);
        }
        let ring = self.ring;
        let cap = ring.layout.frames();
        let want = (n as u64).min(cap);
        let mut avail = self.cached_write.wrapping_sub(self.read_pos);
        if avail < want.max(1) {
            // Acquire: pairs with the producer's commit store (COMMIT_ORDER).
            let w = ring.prod().write_pos.load(Ordering::Acquire);
            let d = w.wrapping_sub(self.read_pos);
            if d > cap {
                if ring.lossy() && d <= u64::MAX / 2 {
                    return Err(self.resync(self.read_pos));
                }
                return Err(ReadError::Corrupt {
                    pos: self.read_pos,
                    found: w,
                });
            }
            self.cached_write = w;
            avail = d;
        }
        if avail == 0 {
            return Err(ReadError::Empty);
        }
        let mut len = want.min(avail);
        for i in 0..len {
            let pos = self.read_pos.wrapping_add(i);
            // Acquire: pairs with the producer's Release store of `seq` at commit (lossy
            // seqlock; lossless, the `write_pos` Acquire above already synchronised).
            let s = ring.slot(pos).seq.load(Ordering::Acquire);
            if s == pos {
                continue;
            }
            if !ring.lossy() {
                if !self.is_member() {
                    return Err(ReadError::Evicted);
                }
                return Err(ReadError::Corrupt { pos, found: s });
            }
            if i == 0 {
                return Err(self.resync(pos));
            }
            len = i;
            break;
        }
        if !ring.lossy() {
            for i in 0..len {
                // Loom access tracking: this consumer starts reading the payload.
                ring.slot(self.read_pos.wrapping_add(i))
                    .payload_cell
                    .with(|_| ());
            }
        }
        Ok((self.read_pos, len as usize))
    }

    /// Lossy resync after finding position `from` overwritten: skip to the oldest frame
    /// still intact, count what was skipped.
    fn resync(&mut self, from: u64) -> ReadError {
        let ring = self.ring;
        let cap = ring.layout.frames();
        // Acquire: pairs with the producer's commit store.
        let w = ring.prod().write_pos.load(Ordering::Acquire);
        let d = w.wrapping_sub(from);
        if d > u64::MAX / 2 {
            return ReadError::Corrupt {
                pos: from,
                found: w,
            };
        }
        let mut q = if d > cap { w.wrapping_sub(cap) } else { from };
        // Bounded: at most `cap` steps, since `w - q <= cap`.
        while q != w {
            // Acquire: pairs with the producer's Release store of `seq` at commit.
            if ring.slot(q).seq.load(Ordering::Acquire) == q {
                break;
            }
            q = q.wrapping_add(1);
        }
        let lost = q.wrapping_sub(from);
        if lost == 0 {
            // The slot that looked overwritten is intact: only a corrupt producer does that.
            return ReadError::Corrupt {
                pos: from,
                found: ring.slot(from).seq.load(Ordering::Relaxed),
            };
        }
        self.read_pos = q;
        self.cached_write = w;
        self.lost_total = self.lost_total.wrapping_add(lost);
        let b = self.block();
        b.lost.store(self.lost_total, Ordering::Relaxed);
        // Release: pairs with the producer's Acquire load in `refresh_limit` (unused by a
        // lossy producer, kept for observers).
        b.read_pos.store(q, Ordering::Release);
        ReadError::Lost { frames: lost }
    }

    /// Copies the next frame's payload into `out` and consumes it: the plain, copying form
    /// of [`Consumer::read_grant`]. Returns the frame's metadata (`len` bytes of `out` were
    /// written) and whether a parked producer must be woken. In the lossy policy a frame
    /// overwritten during the copy is reported as [`PopFrameError::Release`] and must be
    /// discarded. See [`Producer::push`] for an example.
    pub fn pop(&mut self, out: &mut [u8]) -> Result<(FrameMeta, Wake), PopFrameError> {
        let g = self.read_grant(1)?;
        let Some(f) = g.frame(0) else {
            return Err(PopFrameError::Read(ReadError::Empty));
        };
        let mut meta = f.meta();
        let data = f.payload();
        if data.len() > out.len() {
            return Err(PopFrameError::BufferTooSmall {
                needed: data.len(),
                got: out.len(),
            });
        }
        out[..data.len()].copy_from_slice(data);
        meta.len = data.len() as u32;
        let wake = g.release_all().map_err(PopFrameError::Release)?;
        Ok((meta, wake))
    }

    /// Sleeps through `waiter` until a frame may be ready, at most `timeout_ns`. Makes no
    /// call at all when a frame is already known to be ready. Re-check with
    /// [`Consumer::read_grant`] after it returns.
    pub fn wait_readable(
        &mut self,
        waiter: &impl Waiter,
        timeout_ns: Option<u64>,
    ) -> Result<WaitOutcome, ReadError> {
        if !self.is_member() {
            return Err(ReadError::Evicted);
        }
        if self.cached_write != self.read_pos {
            return Ok(WaitOutcome::Ready);
        }
        let p = self.ring.prod();
        // Poll first (without announcing, so the producer makes no wake call meanwhile).
        for _ in 0..waiter.spins_before_park() {
            // Acquire: pairs with the producer's commit store.
            if p.write_pos.load(Ordering::Acquire) != self.read_pos {
                return Ok(WaitOutcome::Ready);
            }
            crate::sync::spin_hint();
        }
        let waits = self.ring.waits();
        // SeqCst: announce before re-checking `write_pos` (Dekker with the commit's fence).
        waits.consumers_parked.fetch_add(1, Ordering::SeqCst);
        // Acquire: pairs with the producer's Release bump of `data_futex` at commit.
        let seen = waits.data_futex.load(Ordering::Acquire);
        fence(Ordering::SeqCst);
        // Acquire: pairs with the producer's commit store.
        let w = p.write_pos.load(Ordering::Acquire);
        let outcome = if w != self.read_pos {
            WaitOutcome::Ready
        } else {
            match arm(&waits.data_futex, seen) {
                Some(armed) => waiter.wait(&waits.data_futex, armed, timeout_ns),
                // The producer moved the word on since we read it: a frame may be ready.
                None => WaitOutcome::Ready,
            }
        };
        waits.consumers_parked.fetch_sub(1, Ordering::Relaxed);
        Ok(outcome)
    }

    fn release_inner(&mut self, start: u64, len: usize, k: usize) -> Result<Wake, ReleaseError> {
        let ring = self.ring;
        let lossy = ring.lossy();
        let mut overwritten = 0u64;
        if lossy {
            // Acquire fence: pairs with the producer's Release fence after it marks slots
            // SEQ_WRITING: if anything we read was written by a lapping producer, the loads
            // below see the mark (or a later sequence number).
            fence(Ordering::Acquire);
            for i in 0..k as u64 {
                let pos = start.wrapping_add(i);
                if ring.slot(pos).seq.load(Ordering::Relaxed) != pos {
                    // A lapping producer overwrites in sequence order, so report the prefix
                    // up to the last overwritten frame: every frame after it is intact.
                    overwritten = i + 1;
                }
            }
        } else {
            for i in 0..len as u64 {
                // Loom access tracking: this consumer's reads of the payload end here.
                ring.slot(start.wrapping_add(i)).payload_cell.with(|_| ());
            }
        }
        if k == 0 {
            return Ok(Wake::none());
        }
        let new = start.wrapping_add(k as u64);
        self.read_pos = new;
        if !self.is_member() {
            return Err(ReleaseError::Evicted);
        }
        // Release: pairs with the producer's Acquire load of `read_pos` in `refresh_limit`:
        // our reads of these slots happen before it overwrites them.
        self.block().read_pos.store(new, Ordering::Release);
        if overwritten > 0 {
            self.lost_total = self.lost_total.wrapping_add(overwritten);
            self.block().lost.store(self.lost_total, Ordering::Relaxed);
            return Err(ReleaseError::Overwritten {
                frames: overwritten,
            });
        }
        if lossy {
            return Ok(Wake::none());
        }
        Ok(ring.wake_producer_if_parked())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.abandon_open_token();
        if self.word != STATE_FREE {
            let _ = self.leave_inner();
        }
    }
}

/// Committed frames granted to a consumer, to read in place and then
/// [`release`](ReadGrant::release).
///
/// Dropping a grant releases nothing (the frames will be granted again).
#[derive(Debug)]
pub struct ReadGrant<'a> {
    consumer: &'a mut Consumer,
    start: u64,
    len: usize,
    done: bool,
}

impl<'a> ReadGrant<'a> {
    /// Frames granted.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no frame was granted.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sequence number of the first granted frame.
    pub fn first_seq(&self) -> u64 {
        self.start
    }

    /// Frame `i` of the grant (`None` when `i >= len()`).
    pub fn frame(&self, i: usize) -> Option<FrameRef<'_>> {
        (i < self.len)
            .then(|| FrameRef::new(&self.consumer.ring, self.start.wrapping_add(i as u64)))
    }

    /// Every granted frame, in order.
    pub fn frames(&self) -> impl Iterator<Item = FrameRef<'_>> {
        let ring = &self.consumer.ring;
        (0..self.len as u64).map(move |i| FrameRef::new(ring, self.start.wrapping_add(i)))
    }

    /// Releases the first `k` frames: the producer may reuse their slots. Lossy policy:
    /// fails with [`ReleaseError::Overwritten`] if any of them was overwritten while read
    /// (discard those frames' data; the position still advances).
    pub fn release(mut self, k: usize) -> Result<Wake, ReleaseError> {
        if k > self.len {
            return Err(ReleaseError::TooMany {
                release: k,
                granted: self.len,
            });
        }
        self.done = true;
        self.consumer.release_inner(self.start, self.len, k)
    }

    /// Releases every granted frame.
    pub fn release_all(self) -> Result<Wake, ReleaseError> {
        let n = self.len;
        self.release(n)
    }
}

impl Drop for ReadGrant<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.consumer.release_inner(self.start, self.len, 0);
        }
    }
}

/// One committed frame being read: its metadata and its payload.
#[derive(Debug)]
pub struct FrameRef<'g> {
    meta: &'g SlotMeta,
    payload: *const u8,
    capacity: u32,
    format: SampleFormat,
    seq: u64,
    _grant: PhantomData<&'g [u8]>,
}

impl<'g> FrameRef<'g> {
    fn new(ring: &'g Ring, pos: u64) -> Self {
        FrameRef {
            meta: ring.slot(pos),
            payload: ring.payload_ptr(pos),
            capacity: ring.layout.payload_bytes,
            format: ring.layout.config.format,
            seq: pos,
            _grant: PhantomData,
        }
    }

    /// The frame's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The frame's metadata (length clamped to the slot).
    pub fn meta(&self) -> FrameMeta {
        FrameMeta {
            seq: self.seq,
            sample_pos: self.meta.sample_pos.load(Ordering::Relaxed),
            timestamp_ns: self.meta.timestamp_ns.load(Ordering::Relaxed),
            flags: FrameFlags(self.meta.flags.load(Ordering::Relaxed)),
            len: self.len(),
        }
    }

    fn len(&self) -> u32 {
        self.meta.len.load(Ordering::Relaxed).min(self.capacity)
    }

    /// The valid payload bytes (`meta().len` of them).
    pub fn payload(&self) -> &[u8] {
        let len = self.len() as usize;
        // SAFETY: `len <= capacity` bytes inside the slot; the read grant keeps the producer
        // from writing the slot (lossless) or reports at release if it did (lossy).
        unsafe { core::slice::from_raw_parts(self.payload, len) }
    }

    /// The valid payload as samples of type `S`, which must match the ring's format.
    pub fn samples<S: Sample>(&self) -> Result<&[S], FormatMismatch> {
        if S::FORMAT != self.format {
            return Err(FormatMismatch {
                ring: self.format,
                asked: S::FORMAT,
            });
        }
        let n = self.len() as usize / size_of::<S>();
        // SAFETY: 64-byte aligned, `n * size_of::<S>() <= len <= capacity` bytes inside the
        // slot, any bit pattern is a valid `S`; access as in `payload`.
        Ok(unsafe { core::slice::from_raw_parts(self.payload.cast::<S>(), n) })
    }
}
