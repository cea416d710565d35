#![no_std]
#![doc = include_str!("../README.md")]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

// The planted ordering bugs exist for the loom suite's self-check only.
#[cfg(all(feature = "planted-bug", not(voxring_loom)))]
compile_error!(
    "voxring-core's `planted-bug` feature weakens its orderings on purpose: it is for the loom \
     suite only (VOXRING_PLANTED_BUG=1 loom-tests/run); turn it off"
);

#[macro_use]
mod macros;
pub(crate) mod sync;

pub mod layout;
pub mod meta;
pub mod region;
pub mod ring;
pub mod static_ring;
pub mod wait;

pub use layout::{
    ABI_VERSION, CACHE_LINE, LayoutError, MAGIC, MAX_CONSUMERS, MAX_FRAMES, MAX_PAYLOAD_BYTES,
    Policy, RingConfig, SampleFormat,
};
pub use meta::{FormatMismatch, FrameFlags, FrameMeta, LenError, Sample};
pub use ring::{
    AttachError, ClaimError, CommitError, Consumer, CreateError, EvictError, FrameMut, FrameRef,
    FramesMut, GrantError, JoinError, PopFrameError, Producer, PushFrameError, ReadError,
    ReadGrant, ReadToken, ReleaseError, Ring, WriteGrant, WriteToken,
};
pub use static_ring::{
    Chunk, ChunkError, PopError, Popper, PushError, Pusher, ReadChunk, SplitError, StaticRing,
    TooMany, WriteChunk,
};
pub use wait::{AtomicU32, SpinWaiter, WaitOutcome, Waiter, Wake};

pub mod clock;
pub mod control;
pub mod fence;
