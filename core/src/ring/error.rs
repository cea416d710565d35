//! The errors of the frame ring's operations: one enum per operation, each message saying
//! what happened, why, and what to do.

use crate::layout::{ABI_VERSION, CACHE_LINE, LayoutError, MAGIC};
use crate::region::RegionError;

#[allow(unused_imports)] // for intra-doc links
use super::{Consumer, Producer, ReadGrant, Ring, WriteGrant};

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

error_message!(CreateError, |self, f| {
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
});

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

error_message!(AttachError, |self, f| {
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
});

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

error_message!(ClaimError, |self, f| {
    match self {
        ClaimError::ZeroOwner => f.write_str("owner token 0 is reserved for 'free': pass a non-zero token (e.g. pid << 32 | generation)"),
        ClaimError::Taken { owner } => write!(
            f,
            "the ring already has a producer (owner {owner:#x}); if that process is dead, evict it with Ring::evict_producer"
        ),
    }
});

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

error_message!(JoinError, |self, f| {
    match self {
        JoinError::ZeroOwner => {
            f.write_str("owner token 0 is reserved for 'free': pass a non-zero token")
        }
        JoinError::Full { max_consumers } => write!(
            f,
            "all {max_consumers} consumer slots are taken; evict dead consumers or create the ring with a larger max_consumers"
        ),
    }
});

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

error_message!(GrantError, |self, f| {
    match self {
        GrantError::Full => f.write_str("the ring is full: the slowest consumer has not released any frame; wait (wait_writable) or evict it"),
        GrantError::Evicted => f.write_str("this producer was evicted and no longer owns the ring; claim it again"),
        GrantError::CorruptConsumer { index, read_pos } => write!(
            f,
            "consumer {index} reports read position {read_pos}, which is impossible; the peer is corrupt: evict it"
        ),
    }
});

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

error_message!(CommitError, |self, f| {
    match self {
        CommitError::TooMany { commit, granted } => write!(
            f,
            "cannot commit {commit} frames from a grant of {granted}: nothing was committed"
        ),
        CommitError::StaleToken => f.write_str(
            "this write token is not the open grant (already committed, or replaced by a later grant): nothing was committed; take a new grant",
        ),
    }
});

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

error_message!(ReadError, |self, f| {
    match self {
        ReadError::Empty => f.write_str("no frame ready yet; wait (wait_readable) and read again"),
        ReadError::Lost { frames } => write!(
            f,
            "this consumer fell a whole ring behind and lost {frames} frames; it was resynced, read again"
        ),
        ReadError::Evicted => f.write_str("this consumer was evicted (judged dead); join again"),
        ReadError::Corrupt { pos, found } => write!(
            f,
            "reading frame {pos}: the ring holds {found} where that is impossible; the producer is corrupt, recreate the ring"
        ),
    }
});

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

error_message!(ReleaseError, |self, f| {
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
});

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

error_message!(EvictError, |self, f| {
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
});

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

error_message!(PushFrameError, |self, f| {
    match self {
        PushFrameError::TooLong { len, capacity } => write!(
            f,
            "cannot push {len} bytes: a frame holds {capacity}; split the data or create the ring with larger frames"
        ),
        PushFrameError::Grant(e) => write!(f, "cannot push: {e}"),
    }
});

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

error_message!(PopFrameError, |self, f| {
    match self {
        PopFrameError::Read(e) => write!(f, "cannot pop: {e}"),
        PopFrameError::Release(e) => write!(f, "popped frame is invalid: {e}"),
        PopFrameError::BufferTooSmall { needed, got } => write!(
            f,
            "cannot pop: the frame holds {needed} bytes but the buffer has {got}; pass a buffer of Ring::payload_bytes()"
        ),
    }
});

impl From<CreateError> for RegionError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::Layout(e) => RegionError::Layout(e),
            CreateError::NullRegion => RegionError::Null,
            CreateError::Misaligned { addr } => RegionError::Misaligned {
                addr,
                align: CACHE_LINE,
            },
            CreateError::TooSmall { needed, got } => RegionError::TooSmall { need: needed, got },
        }
    }
}

impl From<AttachError> for RegionError {
    fn from(e: AttachError) -> Self {
        match e {
            AttachError::NullRegion => RegionError::Null,
            AttachError::Misaligned { addr } => RegionError::Misaligned {
                addr,
                align: CACHE_LINE,
            },
            AttachError::TooSmall { needed, got } => RegionError::TooSmall { need: needed, got },
            AttachError::BadMagic { found } => RegionError::BadMagic {
                found,
                expected: MAGIC,
            },
            AttachError::AbiMismatch { found } => RegionError::UnsupportedVersion {
                found,
                expected: ABI_VERSION,
            },
            AttachError::BadField { field, found } => RegionError::BadField { field, found },
            AttachError::Layout(e) => RegionError::Layout(e),
            AttachError::Inconsistent {
                field,
                found,
                expected,
            } => RegionError::Mismatch {
                field,
                found,
                expected,
            },
        }
    }
}
