//! The frame ring in memory it is given: one producer, up to `max_consumers` consumers, with
//! in-place write and read grants, lossless or lossy.
//!
//! # Memory orderings (every pair)
//!
//! * `create` writes the whole region, then stores `magic` with **Release**; `attach` loads it
//!   with **Acquire**, so it sees every field `create` wrote.
//! * The producer writes payload and metadata, then stores each committed slot's `seq` with
//!   **Release**, then `write_pos` with **Release** ([`WriteGrant::commit`]). A lossless
//!   consumer takes the next frame when its slot's `seq` (loaded with **Acquire**) is the
//!   frame's position: one cache line, the one the read needs anyway (the slot fast path);
//!   it loads `write_pos` with **Acquire** to learn about more frames at once, and its waits
//!   poll `write_pos` (the line the producer writes once per commit, not the slot it is
//!   filling). So a consumer can be ahead of `write_pos` for a moment: a `write_pos` behind
//!   the consumer by at most a ring means "nothing new", never corruption. A new producer
//!   continues after any frame its dead predecessor committed through `seq` alone
//!   (`adopt_committed`). (The `planted-bug` feature, loom builds only, weakens both
//!   lossless commit stores to Relaxed; the loom suite must then fail.)
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
//! [`Waiter`](crate::Waiter) with its timeout.

use core::ptr::NonNull;

use crate::layout::{
    ABI_VERSION, CACHE_LINE, ConsumerBlock, GEN_STEP, HeaderBlock, Layout, MAGIC, Policy,
    ProducerBlock, RingConfig, STATE_ACTIVE, STATE_FREE, STATE_JOINING, STATE_MASK, SampleFormat,
    SlotMeta, WaitBlock,
};
use crate::meta::{FormatMismatch, Sample};
use crate::region::{InRegion, RegionError};
use crate::sync::{Ordering, fence};
use crate::wait::{SLEEPER, Wake};

/// `len`, `is_empty` and `first_seq` of a grant or a token (a type with `start` and `len`
/// fields): `span_accessors!()` inside its `impl`; for a token, `span_accessors!(Token)` at
/// item level also implements [`TokenSpan`] for it.
macro_rules! span_accessors {
    ($token:ident) => {
        impl super::TokenSpan for $token {
            fn span(&self) -> (u64, usize) {
                (self.start, self.len)
            }
        }

        impl $token {
            span_accessors!();
        }
    };
    () => {
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
    };
}

/// Where one frame lives, as both sides' frame handles ([`FrameRef`], [`FrameMut`]) reach it:
/// the slot's metadata, its payload and the ring's geometry for it. The handles add what each
/// side may do (read, or write under a grant) and the borrow that keeps the grant alive.
#[derive(Debug)]
struct SlotView<'g> {
    meta: &'g SlotMeta,
    payload: *mut u8,
    capacity: u32,
    format: SampleFormat,
    seq: u64,
}

impl<'g> SlotView<'g> {
    fn new(ring: &'g Ring, pos: u64) -> Self {
        SlotView {
            meta: ring.slot(pos),
            payload: ring.payload_ptr(pos),
            capacity: ring.layout.payload_bytes,
            format: ring.layout.config.format,
            seq: pos,
        }
    }

    /// How many whole samples of type `S` are in `bytes` of the payload, or why `S` cannot
    /// view it (it is not the ring's sample format).
    fn sample_count<S: Sample>(&self, bytes: usize) -> Result<usize, FormatMismatch> {
        if S::FORMAT != self.format {
            return Err(FormatMismatch {
                ring: self.format,
                asked: S::FORMAT,
            });
        }
        Ok(bytes / size_of::<S>())
    }
}

mod consumer;
mod error;
pub mod periodic;
mod producer;
#[cfg(all(test, not(voxring_loom)))]
mod tests;
mod token;

pub(crate) use token::{OpenToken, TokenRefused, TokenSpan};

pub use consumer::{Consumer, FrameRef, ReadGrant, ReadToken};
pub use error::{
    AttachError, ClaimError, CommitError, CreateError, EvictError, GrantError, JoinError,
    PopFrameError, PushFrameError, ReadError, ReleaseError,
};
pub use producer::{FrameMut, FramesMut, Producer, WriteGrant, WriteToken};

/// The ordering of the producer's commit stores (a lossless slot's `seq`, then `write_pos`):
/// Release, or Relaxed when the planted bug is switched on to prove the loom suite can fail.
#[cfg(not(all(voxring_loom, feature = "planted-bug")))]
pub(crate) const COMMIT_ORDER: Ordering = Ordering::Release;
/// The ordering of the producer's commit store: deliberately wrong (planted bug).
#[cfg(all(voxring_loom, feature = "planted-bug"))]
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
        let write_pos = self.adopt_committed(p.write_pos.load(Ordering::Acquire));
        // Relaxed: only a starting point for this producer's own sequence of futex values;
        // a sleeper armed on it (odd) is woken by the first commit whatever is read here.
        let data_word = self.waits().data_futex.load(Ordering::Relaxed) & !SLEEPER;
        Ok(Producer {
            ring: *self,
            owner,
            write_pos,
            limit: write_pos,
            data_word,
            tokens: OpenToken::new(),
        })
    }

    /// The write position a new producer continues at: `w`, moved past the frames a
    /// predecessor committed through their slots' `seq` but died before storing `write_pos`
    /// past (a consumer may have taken them through the slot fast path already, so they must
    /// not be written again). Bounded by the capacity; stores the moved cursor.
    fn adopt_committed(&self, w: u64) -> u64 {
        let cap = self.layout.frames();
        let mut end = w;
        // Acquire: pairs with the predecessor's Release store of `seq` at commit.
        while end.wrapping_sub(w) < cap && self.slot(end).seq.load(Ordering::Acquire) == end {
            end = end.wrapping_add(1);
        }
        if end != w {
            // COMMIT_ORDER (Release), as a commit: pairs with the consumers' Acquire loads of
            // `write_pos`.
            self.prod().write_pos.store(end, COMMIT_ORDER);
        }
        end
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
                slot_polls: 0,
                lost_total: 0,
                tokens: OpenToken::new(),
            });
        }
        Err(JoinError::Full {
            max_consumers: self.layout.config.max_consumers,
        })
    }

    /// The owner token of consumer slot `index`, or `None` when the slot is free or does not
    /// exist. For the platform's liveness checker.
    pub fn consumer_owner(&self, index: u16) -> Option<u64> {
        // Relaxed: `joined_block`'s Acquire load of `state` published `owner`.
        Some(self.joined_block(index)?.owner.load(Ordering::Relaxed))
    }

    /// Consumer `index`'s read position (the next sequence number it will read), or `None`
    /// when the slot is free or out of range. For monitoring (`write_pos() - read_pos` is its
    /// lag); the value comes from shared memory, so a caller must range-check what it derives.
    pub fn consumer_read_pos(&self, index: u16) -> Option<u64> {
        let c = self.joined_block(index)?;
        // Acquire: pairs with the consumer's Release store of `read_pos` at release.
        Some(c.read_pos.load(Ordering::Acquire))
    }

    /// Consumer slot `index`'s block, or `None` when the slot is free or does not exist.
    fn joined_block(&self, index: u16) -> Option<&ConsumerBlock> {
        if index >= self.layout.config.max_consumers {
            return None;
        }
        let c = self.consumer_block(index);
        // Acquire: pairs with the joiner's SeqCst store of `state`, which published the
        // block's `owner` and `read_pos`.
        (c.state.load(Ordering::Acquire) & STATE_MASK != STATE_FREE).then_some(c)
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

// SAFETY: `Ring::create` and `Ring::attach` check the pointer, the 128-byte alignment and the
// length before touching the region, access only the `region_size` bytes of the validated
// layout (never more than `len`), and read every peer-writable field through atomics, with
// every value range-checked (see "Hostile peers" above).
unsafe impl InRegion for Ring {
    type Init = RingConfig;
    type Handle<'a> = Ring;
    const ALIGN: usize = CACHE_LINE;

    fn size_for(init: &RingConfig) -> Result<usize, RegionError> {
        Ok(init.region_size()?)
    }

    /// [`Ring::create`], with its errors as a [`RegionError`].
    ///
    /// ```
    /// use voxring_core::region::{InRegion, RegionError};
    /// use voxring_core::{Policy, Ring, RingConfig, SampleFormat};
    ///
    /// #[repr(C, align(128))]
    /// struct Region([u8; 4096]);
    /// let mut region = Region([0; 4096]);
    /// let cfg = RingConfig { frames: 4, samples_per_frame: 8, channels: 1,
    ///     format: SampleFormat::S16, sample_rate: 16_000, max_consumers: 1,
    ///     policy: Policy::Lossless };
    /// assert!(Ring::size_for(&cfg)? <= 4096);
    /// let ptr = region.0.as_mut_ptr();
    /// // SAFETY: the buffer is ours, valid for 4096 bytes, outlives both handles, and is used
    /// // only through them.
    /// let ring = unsafe { <Ring as InRegion>::init_in(ptr, 4096, cfg) }?;
    /// // SAFETY: as above.
    /// let again = unsafe { <Ring as InRegion>::attach(ptr, 4096) }?;
    /// assert_eq!(again.config(), ring.config());
    /// // A region too short for the ring the header describes is refused.
    /// // SAFETY: as above (a shorter length of the same buffer).
    /// let short = unsafe { <Ring as InRegion>::attach(ptr, 256) };
    /// assert!(matches!(short, Err(RegionError::TooSmall { .. })));
    /// # Ok::<(), RegionError>(())
    /// ```
    unsafe fn init_in<'a>(
        ptr: *mut u8,
        len: usize,
        init: RingConfig,
    ) -> Result<Self::Handle<'a>, RegionError> {
        // SAFETY: the caller's contract (trait docs) is `Ring::create`'s: valid for `len`
        // bytes while any handle lives, and no other use of the region meanwhile.
        Ok(unsafe { Ring::create(ptr, len, &init) }?)
    }

    unsafe fn attach<'a>(ptr: *mut u8, len: usize) -> Result<Self::Handle<'a>, RegionError> {
        // SAFETY: the caller's contract (trait docs) is `Ring::attach`'s.
        Ok(unsafe { Ring::attach(ptr, len) }?)
    }
}
