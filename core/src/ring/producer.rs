//! The producer side of the frame ring: [`Producer`], its borrowing [`WriteGrant`] and
//! by-value [`WriteToken`], and the frames being written. Orderings: see the parent module.

use core::marker::PhantomData;

use super::{
    COMMIT_ORDER, CommitError, GrantError, OpenToken, PushFrameError, Ring, SlotView, TokenRefused,
};
use crate::layout::{SEQ_WRITING, STATE_ACTIVE, STATE_MASK};
use crate::meta::{FormatMismatch, FrameFlags, LenError, Sample};
use crate::sync::{Ordering, fence};
use crate::wait::{SLEEPER, WaitOutcome, Waiter, Wake, arm};

/// The producer side of a ring. At most one exists per ring at a time.
///
/// Lossless policy: when every slot holds a frame some consumer has not released, a grant
/// fails with [`GrantError::Full`]; [`Producer::wait_writable`] sleeps until one is free.
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
/// use voxring_core::{ClaimError, GrantError, SpinWaiter, WaitOutcome};
/// let mut producer = ring.producer(1)?;
/// // One producer at a time: a second claim says who holds the side.
/// assert_eq!(ring.producer(7).unwrap_err(), ClaimError::Taken { owner: 1 });
/// let mut consumer = ring.consumer(2)?;
///
/// assert_eq!(producer.write_grant(8)?.commit_all().needed(), false); // 4 frames: full
/// assert_eq!(producer.write_grant(1).unwrap_err(), GrantError::Full);
/// let _wake = consumer.read_grant(1)?.release_all()?; // frees one slot
/// assert_eq!(producer.wait_writable(&SpinWaiter::default(), Some(0))?, WaitOutcome::Ready);
/// assert_eq!(producer.write_grant(8)?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Producer {
    pub(super) ring: Ring,
    pub(super) owner: u64,
    pub(super) write_pos: u64,
    /// Positions below `limit` may be written without looking at the consumers again (the
    /// cached slowest consumer plus the capacity; rtrb's trick).
    pub(super) limit: u64,
    /// The value this producer last stored in `data_futex` (always even: `SLEEPER` clear).
    /// Producer-local, never re-read from the region: the next bump stores `data_word + 2`
    /// whatever a peer wrote there, so a forged word costs at most one wake per commit.
    pub(super) data_word: u32,
    /// The grant handed out as a token ([`Producer::grant_token`]) and not yet committed.
    pub(super) tokens: OpenToken<WriteToken>,
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

span_accessors!(WriteToken);

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
        let (ring, owner) = (self.ring.base.as_ptr() as usize, self.owner);
        Ok(self.tokens.issue(|id| WriteToken {
            start,
            len,
            id,
            ring,
            owner,
        }))
    }

    /// Frame `i` of the open grant `token`; `None` when `i >= token.len()` or the token is
    /// not the open grant (stale).
    pub fn token_frame_mut(&mut self, token: WriteToken, i: usize) -> Option<FrameMut<'_>> {
        if !self.tokens.is_open(token) || i >= token.len {
            return None;
        }
        // SAFETY: `token` is the open grant (checked), `i < len <= capacity`, so the slot is
        // one this grant owns exclusively; the returned borrow of `self` keeps any other
        // `FrameMut` (and any new grant) from existing meanwhile.
        Some(unsafe { FrameMut::new(&self.ring, token.start.wrapping_add(i as u64)) })
    }

    /// Every frame of the open grant `token`, in order; `None` when the token is stale.
    pub fn token_frames_mut(&mut self, token: WriteToken) -> Option<FramesMut<'_>> {
        self.tokens.is_open(token).then(|| FramesMut {
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
        let (start, len) = self.tokens.close(token, k).map_err(|e| match e {
            TokenRefused::Stale => CommitError::StaleToken,
            TokenRefused::TooMany { granted } => CommitError::TooMany { commit: k, granted },
        })?;
        Ok(self.commit_inner(start, len, k))
    }

    /// Abandons the open token grant, if any (commits nothing).
    fn abandon_open_token(&mut self) {
        if let Some((start, len)) = self.tokens.abandon() {
            // Committing zero frames wakes nobody: the Wake is always empty.
            let _ = self.commit_inner(start, len, 0);
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
        f.slot
            .meta
            .len
            .store(payload.len() as u32, Ordering::Relaxed);
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
            // `read_grant` (seqlock). Lossless, COMMIT_ORDER (Release): pairs with the
            // consumer's Acquire load of `seq` in the slot fast path (`next_slot`), which may
            // take the frame before the `write_pos` store below.
            let order = if lossy {
                Ordering::Release
            } else {
                COMMIT_ORDER
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
/// use voxring_core::CommitError;
/// let mut producer = ring.producer(1)?;
/// let grant = producer.write_grant(3)?;
/// assert_eq!((grant.len(), grant.first_seq()), (3, 0));
/// drop(grant); // commits nothing: the same frames are granted again
/// let grant = producer.write_grant(3)?;
/// assert_eq!(grant.first_seq(), 0);
/// let _wake = grant.commit(2)?; // publish two, abandon the third
/// assert_eq!(producer.write_pos(), 2);
/// let grant = producer.write_grant(1)?;
/// assert_eq!(grant.commit(2).unwrap_err(), CommitError::TooMany { commit: 2, granted: 1 });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct WriteGrant<'a> {
    producer: &'a mut Producer,
    start: u64,
    len: usize,
    done: bool,
}

impl<'a> WriteGrant<'a> {
    span_accessors!();

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
            // Committing zero frames wakes nobody: the Wake is always empty.
            let _ = self.producer.commit_inner(self.start, self.len, 0);
        }
    }
}

/// Iterator over the frames of a [`WriteGrant`]; see [`Ring`] for an example.
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
/// use voxring_core::{FrameFlags, LenError};
/// let (mut producer, mut consumer) = (ring.producer(1)?, ring.consumer(2)?);
/// let mut grant = producer.write_grant(1)?;
/// let mut frame = grant.frame_mut(0).unwrap();
/// frame.samples_mut::<i16>()?[..3].copy_from_slice(&[1, -1, 7]);
/// frame.set_len(6)?; // three S16 samples are valid
/// frame.set_flags(FrameFlags::END_OF_STREAM);
/// // The slot holds 8 samples of 2 bytes: more is refused.
/// assert_eq!(frame.set_len(17).unwrap_err(), LenError { len: 17, capacity: 16 });
/// // The wrong sample type is refused too.
/// assert!(frame.samples_mut::<f32>().is_err());
/// let _wake = grant.commit_all();
///
/// let read = consumer.read_grant(1)?;
/// assert_eq!(read.frame(0).unwrap().samples::<i16>()?, &[1, -1, 7]);
/// let _wake = read.release_all()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FrameMut<'g> {
    slot: SlotView<'g>,
    _grant: PhantomData<&'g mut [u8]>,
}

impl<'g> FrameMut<'g> {
    /// # Safety
    ///
    /// `pos` must be a position of a live write grant, and no other `FrameMut` for it may
    /// exist during `'g`.
    unsafe fn new(ring: &'g Ring, pos: u64) -> Self {
        FrameMut {
            slot: SlotView::new(ring, pos),
            _grant: PhantomData,
        }
    }

    /// The sequence number this frame will have.
    pub fn seq(&self) -> u64 {
        self.slot.seq
    }

    /// Sets the stream position of the frame's first sample.
    pub fn set_sample_pos(&mut self, sample_pos: u64) {
        self.slot
            .meta
            .sample_pos
            .store(sample_pos, Ordering::Relaxed);
    }

    /// Sets the capture time of the first sample (ns, on the producer's clock).
    pub fn set_timestamp_ns(&mut self, timestamp_ns: u64) {
        self.slot
            .meta
            .timestamp_ns
            .store(timestamp_ns, Ordering::Relaxed);
    }

    /// Sets the frame's flags.
    pub fn set_flags(&mut self, flags: FrameFlags) {
        self.slot.meta.flags.store(flags.0, Ordering::Relaxed);
    }

    /// Sets the valid payload length in bytes (defaults to the whole slot).
    pub fn set_len(&mut self, len: u32) -> Result<(), LenError> {
        if len > self.slot.capacity {
            return Err(LenError {
                len,
                capacity: self.slot.capacity,
            });
        }
        self.slot.meta.len.store(len, Ordering::Relaxed);
        Ok(())
    }

    /// The whole payload of the slot, to fill in place.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        // SAFETY: the payload is `capacity` bytes inside the slot; the write grant gives this
        // producer exclusive use of the slot among our handles (lossless: no consumer reads it
        // until commit; lossy: a lapped reader may read concurrently and is told at release),
        // and `&mut self` keeps this the only Rust reference to it.
        unsafe { core::slice::from_raw_parts_mut(self.slot.payload, self.slot.capacity as usize) }
    }

    /// The payload viewed as samples of type `S`, which must match the ring's format.
    pub fn samples_mut<S: Sample>(&mut self) -> Result<&mut [S], FormatMismatch> {
        let n = self.slot.sample_count::<S>(self.slot.capacity as usize)?;
        // SAFETY: the payload is 64-byte aligned (slot offsets are multiples of 64 in a
        // 128-aligned region), holds `n * size_of::<S>()` bytes, every bit pattern is a valid
        // `S` (i16, i32, f32), and exclusivity is as in `payload_mut`.
        Ok(unsafe { core::slice::from_raw_parts_mut(self.slot.payload.cast::<S>(), n) })
    }
}
