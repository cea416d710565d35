//! The consumer side of the frame ring: [`Consumer`], its borrowing [`ReadGrant`] and
//! by-value [`ReadToken`], and the frames being read. Orderings: see the parent module.

use core::marker::PhantomData;

use super::{OpenToken, PopFrameError, ReadError, ReleaseError, Ring, SlotView, TokenRefused};
use crate::layout::{ConsumerBlock, SEQ_EMPTY, SEQ_WRITING, STATE_FREE, STATE_MASK};
use crate::meta::{FormatMismatch, FrameFlags, FrameMeta, Sample};
use crate::sync::{Ordering, fence};
use crate::wait::{WaitOutcome, Waiter, Wake, arm};

/// A read grant held by value: the consumer's counterpart of [`WriteToken`](super::WriteToken) (see there for an
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

span_accessors!(ReadToken);

/// A consumer of a ring: one of up to `max_consumers`, with its own cursor.
///
/// Dropping it leaves the ring (frees its slot).
///
/// Lossy policy: a consumer the producer lapped learns exactly how many frames it lost.
///
/// ```
/// # use voxring_core::{Policy, Ring, RingConfig, SampleFormat};
/// # #[repr(C, align(128))] struct Region([u8; 4096]);
/// # let mut region = Region([0; 4096]);
/// # let cfg = RingConfig { frames: 4, samples_per_frame: 8, channels: 1,
/// #     format: SampleFormat::S16, sample_rate: 16_000, max_consumers: 2,
/// #     policy: Policy::Lossy };
/// # // SAFETY: valid, aligned, unused region that outlives the handles.
/// # let ring = unsafe { Ring::create(region.0.as_mut_ptr(), 4096, &cfg) }?;
/// use voxring_core::{JoinError, ReadError};
/// let mut producer = ring.producer(1)?;
/// let mut consumer = ring.consumer(2)?;
/// for i in 0..6u8 {
///     let _wake = producer.push(&[i], 0, 0, Default::default())?; // never waits (lossy)
/// }
/// // 6 frames went into 4 slots: the two oldest were overwritten.
/// assert_eq!(consumer.read_grant(8).unwrap_err(), ReadError::Lost { frames: 2 });
/// let grant = consumer.read_grant(8)?;
/// assert_eq!((grant.first_seq(), grant.len()), (2, 4));
/// let _wake = grant.release_all()?;
/// assert_eq!(consumer.lost_frames(), 2);
///
/// // Consumer slots are fixed at creation (here 2).
/// let _other = ring.consumer(3)?;
/// assert_eq!(ring.consumer(4).unwrap_err(), JoinError::Full { max_consumers: 2 });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Consumer {
    pub(super) ring: Ring,
    pub(super) index: u16,
    /// Our state word (generation | ACTIVE); anything else in the slot means evicted.
    pub(super) word: u32,
    pub(super) read_pos: u64,
    /// Last `write_pos` seen (rtrb's cached cursor).
    pub(super) cached_write: u64,
    /// Polls the slot fast path answered "empty" without a look at `write_pos`; every
    /// `WRITE_POS_EVERY`th looks anyway, so a forged `write_pos` is still reported.
    pub(super) slot_polls: u32,
    pub(super) lost_total: u64,
    /// The grant handed out as a token ([`Consumer::read_token`]) and not yet released.
    pub(super) tokens: OpenToken<ReadToken>,
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
    /// Lossless policy: with nothing known ready, it first looks at the next frame's slot
    /// (its `seq`, on the metadata's line), and at `write_pos` only when the slot cannot tell
    /// or to learn about more than one frame: a poll of an empty ring touches one line, not
    /// two. So a frame may be taken before the producer stored `write_pos` past it, and a
    /// forged `write_pos` is reported within 64 polls rather than at once.
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
    /// [`Consumer::release_token`]. An open token is abandoned first. See [`WriteToken`](super::WriteToken) for
    /// an example.
    pub fn read_token(&mut self, n: usize) -> Result<ReadToken, ReadError> {
        self.abandon_open_token();
        let (start, len) = self.read_inner(n)?;
        let (ring, index, word) = (self.ring.base.as_ptr() as usize, self.index, self.word);
        Ok(self.tokens.issue(|id| ReadToken {
            start,
            len,
            id,
            ring,
            index,
            word,
        }))
    }

    /// Frame `i` of the open grant `token`; `None` when `i >= token.len()` or the token is
    /// not the open grant (stale).
    pub fn token_frame(&self, token: ReadToken, i: usize) -> Option<FrameRef<'_>> {
        (self.tokens.is_open(token) && i < token.len)
            .then(|| FrameRef::new(&self.ring, token.start.wrapping_add(i as u64)))
    }

    /// Every frame of the open grant `token`, in order; `None` when the token is stale.
    pub fn token_frames(&self, token: ReadToken) -> Option<impl Iterator<Item = FrameRef<'_>>> {
        let ring = &self.ring;
        self.tokens.is_open(token).then(move || {
            (0..token.len as u64).map(move |i| FrameRef::new(ring, token.start.wrapping_add(i)))
        })
    }

    /// Releases the first `k` frames of the open grant `token`, as [`ReadGrant::release`]
    /// does. A stale token is [`ReleaseError::StaleToken`]; `k` over the grant is
    /// [`ReleaseError::TooMany`] and leaves the token open.
    pub fn release_token(&mut self, token: ReadToken, k: usize) -> Result<Wake, ReleaseError> {
        let (start, len) = self.tokens.close(token, k).map_err(|e| match e {
            TokenRefused::Stale => ReleaseError::StaleToken,
            TokenRefused::TooMany { granted } => ReleaseError::TooMany {
                release: k,
                granted,
            },
        })?;
        self.release_inner(start, len, k)
    }

    /// Abandons the open token grant, if any (releases nothing).
    fn abandon_open_token(&mut self) {
        if let Some((start, len)) = self.tokens.abandon() {
            // Releasing zero frames only ends loom's access tracking: it cannot fail.
            let _ = self.release_inner(start, len, 0);
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
        if avail == 0 && !ring.lossy() {
            // The slot fast path (lossless): the next frame's own `seq` is on the line its
            // metadata is on, which the read needs anyway; `write_pos` (another line) only
            // when the slot cannot tell. (Lossy rings keep the seqlock's rules: `write_pos`
            // first, so a resync never starts from ahead of it.)
            match self.next_slot() {
                NextSlot::Committed => {
                    // Known committed up to here, maybe ahead of the shared `write_pos`,
                    // which the producer stores after the slots' `seq`.
                    self.cached_write = self.read_pos.wrapping_add(1);
                    avail = 1;
                }
                NextSlot::Empty => {
                    // An honest producer stores `seq` before `write_pos`, so a slot that is
                    // still empty means nothing new; a hostile one may have moved `write_pos`
                    // alone, which the look every WRITE_POS_EVERY polls reports.
                    self.slot_polls = self.slot_polls.wrapping_add(1);
                    if !self.slot_polls.is_multiple_of(WRITE_POS_EVERY) {
                        return Err(ReadError::Empty);
                    }
                }
                NextSlot::Unknown => {}
            }
        }
        if avail < want.max(1) {
            // Acquire: pairs with the producer's commit store (COMMIT_ORDER).
            let w = ring.prod().write_pos.load(Ordering::Acquire);
            match Cursor::of(w, self.read_pos, cap) {
                Cursor::Ahead(d) => {
                    self.cached_write = w;
                    avail = d;
                }
                // Behind means nothing new: we took frames through their slots' `seq` before
                // the producer stored `write_pos` past them.
                Cursor::Level | Cursor::Behind => {}
                Cursor::Lapped if ring.lossy() => return Err(self.resync(self.read_pos)),
                Cursor::Lapped | Cursor::Corrupt => {
                    return Err(ReadError::Corrupt {
                        pos: self.read_pos,
                        found: w,
                    });
                }
            }
        }
        if avail == 0 {
            return Err(ReadError::Empty);
        }
        let mut len = want.min(avail);
        for i in 0..len {
            let pos = self.read_pos.wrapping_add(i);
            // Acquire: pairs with the producer's Release store of `seq` at commit (the
            // lossy seqlock; lossless, COMMIT_ORDER, for the slot fast path above).
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
    /// discarded. See [`Producer::push`](super::Producer::push) for an example.
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

    /// The metadata of the next frame to read, if it is committed: a look without a grant
    /// (nothing is released, no loom access is recorded). For the periodic wait's estimator
    /// ([`super::periodic`]), which reads the frame's timestamp. `None` unless the next
    /// frame's slot holds it, committed (its `seq` is our position; lossy: not overwritten
    /// by a lap, not being written). A hint:
    /// the fields come from shared memory and may be anything a hostile producer wrote.
    pub fn next_frame_meta(&self) -> Option<FrameMeta> {
        (self.next_slot() == NextSlot::Committed)
            .then(|| FrameRef::new(&self.ring, self.read_pos).meta())
    }

    /// Whether the shared write cursor says [`Consumer::read_grant`] has something to report:
    /// frames past ours, or a lapped or corrupt cursor. One Acquire load of `write_pos`, the
    /// line the producer writes once per commit (the waits poll this, not the slot's line
    /// the producer is filling). A cursor behind ours by at most a ring is nothing new: we
    /// took frames through their slots' `seq` before the producer stored it past them.
    pub fn frame_ready(&self) -> bool {
        // Acquire: pairs with the producer's commit store (COMMIT_ORDER).
        let w = self.ring.prod().write_pos.load(Ordering::Acquire);
        self.news_at(w)
    }

    /// [`Consumer::frame_ready`] for a `write_pos` already loaded.
    fn news_at(&self, w: u64) -> bool {
        !matches!(
            Cursor::of(w, self.read_pos, self.ring.layout.frames()),
            Cursor::Level | Cursor::Behind
        )
    }

    /// What the next frame's slot says: committed (its `seq` is our position), surely empty
    /// (it still holds the previous lap's frame, never held one, or is being written), or
    /// something only `write_pos` explains (a lapping producer, corruption).
    fn next_slot(&self) -> NextSlot {
        let pos = self.read_pos;
        // Acquire: pairs with the producer's Release store of `seq` at commit (COMMIT_ORDER
        // lossless, Release lossy): the frame's payload and metadata written before it are
        // visible.
        let s = self.ring.slot(pos).seq.load(Ordering::Acquire);
        if s == pos {
            NextSlot::Committed
        } else if s == pos.wrapping_sub(self.ring.layout.frames())
            || s == SEQ_EMPTY
            || s == SEQ_WRITING
        {
            NextSlot::Empty
        } else {
            NextSlot::Unknown
        }
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
            if self.frame_ready() {
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
        let outcome = if self.news_at(w) {
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

/// How often an empty poll of the slot fast path also loads `write_pos` (see
/// [`Consumer::read_grant`]).
pub(super) const WRITE_POS_EVERY: u32 = 64;

/// What the next frame's slot says ([`Consumer::next_slot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NextSlot {
    Committed,
    Empty,
    Unknown,
}

/// Where the shared write cursor `w` is relative to a consumer's `read_pos`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    /// `w == read_pos`: nothing new.
    Level,
    /// `1..=frames` frames committed past `read_pos`.
    Ahead(u64),
    /// Behind by at most a ring: the consumer took frames through their slots' `seq`
    /// before the producer stored `write_pos` past them. Nothing new.
    Behind,
    /// Ahead by more than a ring, by less than half the number space (lossy: the producer
    /// lapped us; lossless: corrupt).
    Lapped,
    /// Anything else: no producer does that.
    Corrupt,
}

impl Cursor {
    fn of(w: u64, read_pos: u64, cap: u64) -> Cursor {
        let ahead = w.wrapping_sub(read_pos);
        if ahead == 0 {
            Cursor::Level
        } else if ahead <= cap {
            Cursor::Ahead(ahead)
        } else if read_pos.wrapping_sub(w) <= cap {
            Cursor::Behind
        } else if ahead <= u64::MAX / 2 {
            Cursor::Lapped
        } else {
            Cursor::Corrupt
        }
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
/// let mut producer = ring.producer(1)?;
/// let mut consumer = ring.consumer(2)?;
/// let _wake = producer.write_grant(3)?.commit_all();
/// drop(consumer.read_grant(8)?); // releases nothing
/// let grant = consumer.read_grant(8)?;
/// assert_eq!((grant.first_seq(), grant.len()), (0, 3));
/// let seqs: Vec<u64> = grant.frames().map(|f| f.seq()).collect();
/// assert_eq!(seqs, [0, 1, 2]);
/// let _wake = grant.release(1)?; // the other two will be granted again
/// assert_eq!(consumer.read_grant(8)?.first_seq(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ReadGrant<'a> {
    consumer: &'a mut Consumer,
    start: u64,
    len: usize,
    done: bool,
}

impl<'a> ReadGrant<'a> {
    span_accessors!();

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

/// One committed frame being read: its metadata and its payload; see [`FrameMut`](super::FrameMut) and
/// [`FrameMeta`] for examples.
#[derive(Debug)]
pub struct FrameRef<'g> {
    slot: SlotView<'g>,
    _grant: PhantomData<&'g [u8]>,
}

impl<'g> FrameRef<'g> {
    fn new(ring: &'g Ring, pos: u64) -> Self {
        FrameRef {
            slot: SlotView::new(ring, pos),
            _grant: PhantomData,
        }
    }

    /// The frame's sequence number.
    pub fn seq(&self) -> u64 {
        self.slot.seq
    }

    /// The frame's metadata (length clamped to the slot).
    pub fn meta(&self) -> FrameMeta {
        FrameMeta {
            seq: self.slot.seq,
            sample_pos: self.slot.meta.sample_pos.load(Ordering::Relaxed),
            timestamp_ns: self.slot.meta.timestamp_ns.load(Ordering::Relaxed),
            flags: FrameFlags(self.slot.meta.flags.load(Ordering::Relaxed)),
            len: self.len(),
        }
    }

    fn len(&self) -> u32 {
        self.slot
            .meta
            .len
            .load(Ordering::Relaxed)
            .min(self.slot.capacity)
    }

    /// The valid payload bytes (`meta().len` of them).
    pub fn payload(&self) -> &[u8] {
        let len = self.len() as usize;
        // SAFETY: `len <= capacity` bytes inside the slot; the read grant keeps the producer
        // from writing the slot (lossless) or reports at release if it did (lossy).
        unsafe { core::slice::from_raw_parts(self.slot.payload, len) }
    }

    /// The valid payload as samples of type `S`, which must match the ring's format.
    pub fn samples<S: Sample>(&self) -> Result<&[S], FormatMismatch> {
        let n = self.slot.sample_count::<S>(self.len() as usize)?;
        // SAFETY: 64-byte aligned, `n * size_of::<S>() <= len <= capacity` bytes inside the
        // slot, any bit pattern is a valid `S`; access as in `payload`.
        Ok(unsafe { core::slice::from_raw_parts(self.slot.payload.cast::<S>(), n) })
    }
}
