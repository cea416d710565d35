//! The shared-memory layout of a frame ring: configuration, the `#[repr(C)]` blocks, and the
//! validated layout a handle carries.
//!
//! `core/LAYOUT.md` documents the same layout byte by byte for programs in other languages. In
//! the normal build the offsets below are checked against that document at compile time
//! (`const` assertions at the bottom of this file). Under `--cfg voxring_loom` the atomics are
//! loom's (bigger, heap-tracked objects), so every offset is computed from `size_of` of the
//! blocks rather than written as a literal; the region is then only meaningful inside the
//! model-checked process, which is all loom needs.

use crate::sync::{AtomicU32, AtomicU64, UnsafeCell};

/// `b"VOXRING\0"` read as a little-endian `u64`: the first eight bytes of every ring region.
pub const MAGIC: u64 = u64::from_le_bytes(*b"VOXRING\0");
/// Version of the binary layout in `core/LAYOUT.md`; attach refuses any other.
pub const ABI_VERSION: u32 = 2;
/// Cache-line size the layout pads to. 128, not 64: x86 CPUs prefetch cache lines in adjacent
/// pairs (the "spatial prefetcher"), and several aarch64 cores (Apple M-series, Neoverse
/// with 128-byte lines in some caches) use 128-byte lines, so 64-byte padding still lets the
/// producer's and a consumer's cursors false-share. crossbeam's `CachePadded` pads to 128 on
/// those targets for the same reason.
pub const CACHE_LINE: usize = 128;
/// Alignment of every slot and of every payload inside a slot.
pub const SLOT_ALIGN: usize = 64;
/// The largest frame capacity a ring may have (2^20 frames).
pub const MAX_FRAMES: u32 = 1 << 20;
/// The largest number of consumers a ring may be created for.
pub const MAX_CONSUMERS: u16 = 64;
/// The largest payload of one frame, in bytes (16 MiB).
pub const MAX_PAYLOAD_BYTES: u32 = 1 << 24;

/// Slot sequence value while the producer is writing the slot (lossy policy only).
pub(crate) const SEQ_WRITING: u64 = u64::MAX;
/// Slot sequence value of a slot that never held a frame.
pub(crate) const SEQ_EMPTY: u64 = u64::MAX - 1;

/// Consumer-slot states (low two bits of the consumer's `state` word).
pub(crate) const STATE_FREE: u32 = 0;
pub(crate) const STATE_JOINING: u32 = 1;
pub(crate) const STATE_ACTIVE: u32 = 2;
pub(crate) const STATE_MASK: u32 = 3;
/// The generation counter lives above the two state bits.
pub(crate) const GEN_STEP: u32 = 4;

/// Sample encoding of a frame's payload (interleaved by channel).
///
/// ```
/// use voxring_core::SampleFormat;
/// assert_eq!(SampleFormat::S16.bytes(), 2);
/// // The code stored in a ring's header, and back.
/// assert_eq!(SampleFormat::from_code(SampleFormat::F32 as u32), Some(SampleFormat::F32));
/// assert_eq!(SampleFormat::from_code(9), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SampleFormat {
    /// Signed 16-bit integer, native endianness (2 bytes).
    S16 = 1,
    /// Signed 32-bit integer, native endianness (4 bytes).
    S32 = 2,
    /// 32-bit IEEE float, native endianness (4 bytes).
    F32 = 3,
}

impl SampleFormat {
    /// Bytes per sample: 2 for `S16`, 4 for `S32` and `F32`.
    pub const fn bytes(self) -> u32 {
        match self {
            SampleFormat::S16 => 2,
            SampleFormat::S32 | SampleFormat::F32 => 4,
        }
    }

    /// The format stored as `code` in the header, if it is one.
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(SampleFormat::S16),
            2 => Some(SampleFormat::S32),
            3 => Some(SampleFormat::F32),
            _ => None,
        }
    }
}

/// What the producer does when a consumer falls a whole ring behind.
///
/// ```
/// use voxring_core::Policy;
/// // A capture ring that must never drop audio waits for its slowest reader...
/// let archive = Policy::Lossless;
/// // ...a monitoring tap never holds the producer back.
/// let meter = Policy::Lossy;
/// assert_ne!(archive, meter);
/// assert_eq!(Policy::from_code(meter as u32), Some(meter));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Policy {
    /// The producer waits for the slowest live consumer: no frame is ever lost, and a stuck
    /// consumer stalls the producer until it is evicted.
    Lossless = 1,
    /// The producer never waits; a consumer that was lapped learns how many frames it lost
    /// and resyncs to the oldest frame still in the ring.
    Lossy = 2,
}

impl Policy {
    /// The policy stored as `code` in the header, if it is one.
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Policy::Lossless),
            2 => Some(Policy::Lossy),
            _ => None,
        }
    }
}

/// The run-time layout of a ring, chosen by whoever creates it.
///
/// ```
/// use voxring_core::{LayoutError, Policy, RingConfig, SampleFormat};
/// let cfg = RingConfig {
///     frames: 8, samples_per_frame: 480, channels: 2, format: SampleFormat::F32,
///     sample_rate: 48_000, max_consumers: 4, policy: Policy::Lossy,
/// };
/// // Map at least this many bytes for the ring (8 slots of 480 * 2 * 4 payload bytes).
/// assert!(cfg.region_size()? > 8 * 480 * 2 * 4);
/// // A capacity that is not a power of two is refused, with the reason.
/// let bad = RingConfig { frames: 6, ..cfg };
/// assert_eq!(bad.region_size(), Err(LayoutError::BadFrames { frames: 6 }));
/// # Ok::<(), LayoutError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingConfig {
    /// Capacity in frames; a power of two, at most [`MAX_FRAMES`].
    pub frames: u32,
    /// Samples per frame and per channel (e.g. 512).
    pub samples_per_frame: u32,
    /// Interleaved channels per frame (e.g. 2).
    pub channels: u16,
    /// Sample encoding.
    pub format: SampleFormat,
    /// Sample rate in Hz; carried for the peers, not used by the ring itself.
    pub sample_rate: u32,
    /// Consumer slots, fixed at creation: 1 ..= [`MAX_CONSUMERS`].
    pub max_consumers: u16,
    /// Lossless or lossy.
    pub policy: Policy,
}

/// Why a [`RingConfig`] (or a header read from memory) is not a usable layout.
///
/// ```
/// use voxring_core::{LayoutError, Policy, RingConfig, SampleFormat};
/// let cfg = RingConfig {
///     frames: 3, // not a power of two
///     samples_per_frame: 64,
///     channels: 2,
///     format: SampleFormat::F32,
///     sample_rate: 48_000,
///     max_consumers: 1,
///     policy: Policy::Lossless,
/// };
/// assert!(matches!(cfg.region_size(), Err(LayoutError::BadFrames { frames: 3 })));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// `frames` is zero, not a power of two, or above [`MAX_FRAMES`].
    BadFrames {
        /// The rejected capacity.
        frames: u32,
    },
    /// `samples_per_frame` is zero.
    ZeroSamples,
    /// `channels` is zero.
    ZeroChannels,
    /// `sample_rate` is zero.
    ZeroSampleRate,
    /// `max_consumers` is zero or above [`MAX_CONSUMERS`].
    BadConsumerCount {
        /// The rejected count.
        max_consumers: u32,
    },
    /// One frame's payload would exceed [`MAX_PAYLOAD_BYTES`].
    PayloadTooLarge {
        /// The payload size asked for, saturated at `u64::MAX`.
        bytes: u64,
    },
    /// The whole region would not fit in this machine's address space.
    RegionTooLarge,
}

error_message!(LayoutError, |self, f| {
    match self {
        LayoutError::BadFrames { frames } => write!(
            f,
            "ring capacity {frames} frames is not a power of two between 1 and {MAX_FRAMES}: pick e.g. 8, 16 or 64"
        ),
        LayoutError::ZeroSamples => {
            f.write_str("samples_per_frame is 0: a frame must hold at least one sample")
        }
        LayoutError::ZeroChannels => f.write_str("channels is 0: use 1 for mono, 2 for stereo"),
        LayoutError::ZeroSampleRate => {
            f.write_str("sample_rate is 0: give the stream's rate in Hz, e.g. 48000")
        }
        LayoutError::BadConsumerCount { max_consumers } => write!(
            f,
            "max_consumers {max_consumers} is out of range: use 1 ..= {MAX_CONSUMERS}"
        ),
        LayoutError::PayloadTooLarge { bytes } => write!(
            f,
            "a frame of {bytes} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit: use fewer samples per frame"
        ),
        LayoutError::RegionTooLarge => f.write_str(
            "the region for this configuration does not fit in the address space: use fewer or smaller frames",
        ),
    }
});

const fn round_up(x: usize, align: usize) -> usize {
    (x + align - 1) & !(align - 1)
}

impl RingConfig {
    /// Bytes of payload in one frame: `samples_per_frame * channels * format.bytes()`.
    pub fn payload_bytes(&self) -> Result<u32, LayoutError> {
        let bytes = u64::from(self.samples_per_frame)
            * u64::from(self.channels)
            * u64::from(self.format.bytes());
        if bytes > u64::from(MAX_PAYLOAD_BYTES) {
            return Err(LayoutError::PayloadTooLarge { bytes });
        }
        Ok(bytes as u32)
    }

    /// Checks every field and computes the layout.
    pub(crate) fn layout(&self) -> Result<Layout, LayoutError> {
        if self.frames == 0 || !self.frames.is_power_of_two() || self.frames > MAX_FRAMES {
            return Err(LayoutError::BadFrames {
                frames: self.frames,
            });
        }
        if self.samples_per_frame == 0 {
            return Err(LayoutError::ZeroSamples);
        }
        if self.channels == 0 {
            return Err(LayoutError::ZeroChannels);
        }
        if self.sample_rate == 0 {
            return Err(LayoutError::ZeroSampleRate);
        }
        if self.max_consumers == 0 || self.max_consumers > MAX_CONSUMERS {
            return Err(LayoutError::BadConsumerCount {
                max_consumers: u32::from(self.max_consumers),
            });
        }
        let payload_bytes = self.payload_bytes()?;
        let payload_offset = size_of::<SlotMeta>();
        let slot_size = payload_offset + round_up(payload_bytes as usize, SLOT_ALIGN);
        let consumers_offset =
            size_of::<HeaderBlock>() + size_of::<ProducerBlock>() + size_of::<WaitBlock>();
        let slots_offset = usize::from(self.max_consumers)
            .checked_mul(size_of::<ConsumerBlock>())
            .and_then(|c| c.checked_add(consumers_offset))
            .ok_or(LayoutError::RegionTooLarge)?;
        let region_size = slot_size
            .checked_mul(self.frames as usize)
            .and_then(|s| s.checked_add(slots_offset))
            .filter(|&s| s <= isize::MAX as usize)
            .ok_or(LayoutError::RegionTooLarge)?;
        Ok(Layout {
            config: *self,
            payload_bytes,
            payload_offset,
            slot_size,
            consumers_offset,
            slots_offset,
            region_size,
            mask: u64::from(self.frames - 1),
        })
    }

    /// Bytes a region must have to hold a ring of this configuration.
    ///
    /// ```
    /// use voxring_core::{Policy, RingConfig, SampleFormat};
    /// let cfg = RingConfig {
    ///     frames: 8, samples_per_frame: 512, channels: 2, format: SampleFormat::F32,
    ///     sample_rate: 48_000, max_consumers: 4, policy: Policy::Lossless,
    /// };
    /// // 384 (header, producer, wait words) + 4 * 128 (consumers) + 8 * (64 + 4096) (slots)
    /// assert_eq!(cfg.region_size()?, 384 + 512 + 8 * 4160);
    /// # Ok::<(), voxring_core::LayoutError>(())
    /// ```
    pub fn region_size(&self) -> Result<usize, LayoutError> {
        Ok(self.layout()?.region_size)
    }
}

/// A validated layout: the configuration plus every derived size and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) config: RingConfig,
    pub(crate) payload_bytes: u32,
    pub(crate) payload_offset: usize,
    pub(crate) slot_size: usize,
    pub(crate) consumers_offset: usize,
    pub(crate) slots_offset: usize,
    pub(crate) region_size: usize,
    pub(crate) mask: u64,
}

impl Layout {
    pub(crate) fn frames(&self) -> u64 {
        u64::from(self.config.frames)
    }
}

/// Bytes 0..128: what the ring is. Written once by `create` (magic last, with Release);
/// read-only afterwards. Attach reads it once and keeps its own validated copy.
#[derive(Debug)]
#[repr(C, align(128))]
pub(crate) struct HeaderBlock {
    pub(crate) magic: AtomicU64,
    pub(crate) abi_version: AtomicU32,
    pub(crate) policy: AtomicU32,
    pub(crate) frames: AtomicU32,
    pub(crate) samples_per_frame: AtomicU32,
    pub(crate) channels: AtomicU32,
    pub(crate) format: AtomicU32,
    pub(crate) sample_rate: AtomicU32,
    pub(crate) max_consumers: AtomicU32,
    pub(crate) payload_bytes: AtomicU32,
    pub(crate) slot_size: AtomicU32,
    pub(crate) consumers_offset: AtomicU64,
    pub(crate) slots_offset: AtomicU64,
    pub(crate) region_size: AtomicU64,
    pub(crate) cache_line: AtomicU32,
    pub(crate) payload_offset: AtomicU32,
}

/// Bytes 128..256: the producer's cursor and owner.
#[derive(Debug)]
#[repr(C, align(128))]
pub(crate) struct ProducerBlock {
    /// Frames committed so far; the next frame's sequence number. Producer: Release store.
    pub(crate) write_pos: AtomicU64,
    /// Owner token of the producer, 0 when none. Claimed with a compare-exchange.
    pub(crate) owner: AtomicU64,
}

/// Bytes 256..384: the wait words. On a line of their own because each side reads them after
/// every commit or release (the parked check) but they are written only when someone parks or
/// wakes: kept apart from the cursors, the line stays shared in every cache and the check is a
/// cache hit.
#[derive(Debug)]
#[repr(C, align(128))]
pub(crate) struct WaitBlock {
    /// Futex word consumers sleep on; the producer bumps it when it wakes them.
    pub(crate) data_futex: AtomicU32,
    /// How many consumers are parked (or about to park) on `data_futex`.
    pub(crate) consumers_parked: AtomicU32,
    /// Futex word the producer sleeps on; a consumer bumps it when it wakes the producer.
    pub(crate) space_futex: AtomicU32,
    /// 1 while the producer is parked (or about to park) on `space_futex`.
    pub(crate) producer_parked: AtomicU32,
}

/// One per consumer slot, 128 bytes each, from `consumers_offset`.
#[derive(Debug)]
#[repr(C, align(128))]
pub(crate) struct ConsumerBlock {
    /// Next sequence number this consumer will read. Consumer: Release store.
    pub(crate) read_pos: AtomicU64,
    /// Owner token of the consumer, 0 when free.
    pub(crate) owner: AtomicU64,
    /// State in the low two bits (free, joining, active), generation above.
    pub(crate) state: AtomicU32,
    pub(crate) _reserved: AtomicU32,
    /// Frames this consumer lost to being lapped, in total (lossy policy; informative).
    pub(crate) lost: AtomicU64,
}

/// The metadata at the start of every slot; the payload follows at `payload_offset`.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct SlotMeta {
    /// Sequence number of the frame in the slot, [`SEQ_WRITING`] while the producer writes it
    /// (lossy), [`SEQ_EMPTY`] before the first frame.
    pub(crate) seq: AtomicU64,
    pub(crate) sample_pos: AtomicU64,
    pub(crate) timestamp_ns: AtomicU64,
    pub(crate) flags: AtomicU32,
    pub(crate) len: AtomicU32,
    /// Access tracker for the payload: zero-sized outside loom; under loom it lets the model
    /// checker see every payload access (lossless policy) and catch unsynchronised ones.
    pub(crate) payload_cell: UnsafeCell<()>,
}

impl SlotMeta {
    pub(crate) fn new() -> Self {
        SlotMeta {
            seq: AtomicU64::new(SEQ_EMPTY),
            sample_pos: AtomicU64::new(0),
            timestamp_ns: AtomicU64::new(0),
            flags: AtomicU32::new(0),
            len: AtomicU32::new(0),
            payload_cell: UnsafeCell::new(()),
        }
    }
}

// The byte offsets `core/LAYOUT.md` documents, checked against the structs. Loom's atomics
// have other sizes, so these hold only in the normal build.
#[cfg(not(voxring_loom))]
const _: () = {
    assert_layout!(HeaderBlock, size 128, {
        magic: 0, abi_version: 8, policy: 12, frames: 16, samples_per_frame: 20, channels: 24,
        format: 28, sample_rate: 32, max_consumers: 36, payload_bytes: 40, slot_size: 44,
        consumers_offset: 48, slots_offset: 56, region_size: 64, cache_line: 72,
        payload_offset: 76,
    });
    assert_layout!(ProducerBlock, size 128, { write_pos: 0, owner: 8 });
    assert_layout!(WaitBlock, size 128, {
        data_futex: 0, consumers_parked: 4, space_futex: 8, producer_parked: 12,
    });
    assert_layout!(ConsumerBlock, size 128, { read_pos: 0, owner: 8, state: 16, lost: 24 });
    assert_layout!(SlotMeta, size 64, {
        seq: 0, sample_pos: 8, timestamp_ns: 16, flags: 24, len: 28,
    });
    assert!(CACHE_LINE == 128);
};

impl HeaderBlock {
    pub(crate) fn new(l: &Layout) -> Self {
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
    pub(crate) fn new() -> Self {
        use crate::sync::AtomicU64;
        ProducerBlock {
            write_pos: AtomicU64::new(0),
            owner: AtomicU64::new(0),
        }
    }
}

impl WaitBlock {
    pub(crate) fn new() -> Self {
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
    pub(crate) fn new() -> Self {
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
