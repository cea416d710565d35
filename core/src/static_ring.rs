//! A typed single-producer single-consumer ring over a buffer it owns, for in-process and
//! embedded use: `StaticRing<T, N>` with `N` a power of two checked at compile time, usable
//! as a `static`.
//!
//! Orderings: the pusher writes items, then stores `tail` with **Release**; the popper loads
//! `tail` with **Acquire** before reading items. The popper finishes reading, then stores
//! `head` with **Release**; the pusher loads `head` with **Acquire** before reusing a slot.
//! Each side caches the other's cursor and reloads it only when the cache says full/empty.

use core::cell::UnsafeCell as StdUnsafeCell;
use core::marker::PhantomData;

use crate::sync::{AtomicBool, AtomicU64, Ordering, UnsafeCell};

/// Pads a value to 128 bytes so the two cursors never share a cache line (see
/// [`crate::CACHE_LINE`] for why 128).
#[repr(C, align(128))]
#[derive(Debug)]
struct Padded<T>(T);

/// A fixed-capacity SPSC ring of `N` items of type `T` (`N` a power of two).
///
/// ```
/// use voxring_core::StaticRing;
/// static RING: StaticRing<u32, 4> = StaticRing::new(0);
/// let (mut tx, mut rx) = RING.split().expect("split once");
/// tx.push(1).unwrap();
/// tx.push(2).unwrap();
/// assert_eq!(rx.pop(), Ok(1));
/// assert_eq!(rx.pop(), Ok(2));
/// assert!(rx.pop().is_err());
/// ```
pub struct StaticRing<T: Copy, const N: usize> {
    head: Padded<AtomicU64>,
    tail: Padded<AtomicU64>,
    split: AtomicBool,
    buf: StdUnsafeCell<[T; N]>,
    /// Per-item access trackers through the shim: zero-sized outside loom; under loom they
    /// let the model checker see every item access (the items themselves are read and
    /// written through `buf`, which loom does not see, right after the tracker call).
    track: [UnsafeCell<()>; N],
}

impl<T: Copy, const N: usize> core::fmt::Debug for StaticRing<T, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StaticRing")
            .field("capacity", &N)
            .field("head", &self.head.0.load(Ordering::Relaxed))
            .field("tail", &self.tail.0.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

// SAFETY: the ring hands out at most one `Pusher` and one `Popper` (the `split` flag), which
// access disjoint items under the Release/Acquire cursor protocol; items are moved between
// threads, so `T: Send` is required.
unsafe impl<T: Copy + Send, const N: usize> Sync for StaticRing<T, N> {}

/// `split` was called a second time.
///
/// ```
/// use voxring_core::{SplitError, StaticRing};
/// let ring = StaticRing::<u8, 2>::new(0);
/// let _ends = ring.split().unwrap();
/// assert_eq!(ring.split().err(), Some(SplitError));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitError;

error_message!(SplitError, |self, f| f.write_str(
    "this StaticRing was already split: it has one pusher and one popper for its whole life"
));

/// A push failed: the ring was full. The value is handed back.
///
/// ```
/// use voxring_core::{PushError, StaticRing};
/// let ring = StaticRing::<u8, 1>::new(0);
/// let (mut tx, _rx) = ring.split().unwrap();
/// tx.push(1).unwrap();
/// assert_eq!(tx.push(2), Err(PushError::Full(2))); // the value comes back
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError<T> {
    /// The ring is full; here is the value.
    Full(T),
}

error_message!(PushError<T>, |self, f| {
    f.write_str(
        "the ring is full: the consumer has not popped; the value is handed back, retry later",
    )
});

/// A pop found nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PopError {
    /// The ring is empty.
    Empty,
}

error_message!(PopError, |self, f| f
    .write_str("the ring is empty: nothing was pushed since the last pop"));

/// A chunk could not be granted.
///
/// ```
/// use voxring_core::{ChunkError, StaticRing};
/// let ring = StaticRing::<u8, 2>::new(0);
/// let (_tx, mut rx) = ring.split().unwrap();
/// assert_eq!(rx.read_chunk(1).err(), Some(ChunkError::Unavailable));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// Write chunk: no free slot. Read chunk: no item.
    Unavailable,
}

error_message!(ChunkError, |self, f| f.write_str(
    "no slot available for the chunk (ring full for writing, empty for reading); retry later"
));

/// A chunk was committed or released with more items than granted (nothing was done).
///
/// ```
/// use voxring_core::{StaticRing, TooMany};
/// let ring = StaticRing::<u8, 4>::new(0);
/// let (mut tx, _rx) = ring.split().unwrap();
/// let chunk = tx.write_chunk(2).unwrap();
/// assert_eq!(chunk.commit(3), Err(TooMany { asked: 3, granted: 2 }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooMany {
    /// Items asked.
    pub asked: usize,
    /// Items granted.
    pub granted: usize,
}

impl TooMany {
    /// `Ok` when `asked` of the `granted` items may be committed or released.
    fn check(asked: usize, granted: usize) -> Result<(), TooMany> {
        if asked > granted {
            return Err(TooMany { asked, granted });
        }
        Ok(())
    }
}

error_message!(TooMany, |self, f| {
    write!(
        f,
        "asked to commit/release {} items of a chunk of {}: nothing was done",
        self.asked, self.granted
    )
});

/// Defines [`StaticRing::new`], `const` when given `const`: one body for both builds.
macro_rules! define_new {
    ($($constness:ident)?) => {
        /// A ring with every slot holding `fill` (the slots are always initialised, so chunks
        /// can be handed out as plain `&mut [T]`). `N` must be a power of two: a compile error
        /// otherwise.
        pub $($constness)? fn new(fill: T) -> Self {
            let () = Self::CHECK;
            StaticRing {
                head: Padded(AtomicU64::new(0)),
                tail: Padded(AtomicU64::new(0)),
                split: AtomicBool::new(false),
                buf: StdUnsafeCell::new([fill; N]),
                track: trackers::<N>(),
            }
        }
    };
}

/// One loom access tracker per slot (zero-sized outside loom), made at compile time.
#[cfg(not(voxring_loom))]
const fn trackers<const N: usize>() -> [UnsafeCell<()>; N] {
    [const { UnsafeCell::new(()) }; N]
}

/// One loom access tracker per slot (loom's cells are made at run time).
#[cfg(voxring_loom)]
fn trackers<const N: usize>() -> [UnsafeCell<()>; N] {
    core::array::from_fn(|_| UnsafeCell::new(()))
}

impl<T: Copy, const N: usize> StaticRing<T, N> {
    const CHECK: () = assert!(
        N.is_power_of_two() && N <= (1 << 30),
        "StaticRing capacity must be a power of two"
    );

    // `new`: `const` in the normal build (a ring can be a `static`); not under loom, whose
    // atomics and cells are made at run time.
    #[cfg(not(voxring_loom))]
    define_new!(const);
    #[cfg(voxring_loom)]
    define_new!();

    /// The capacity, `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Hands out the one pusher and the one popper; fails on every later call.
    pub fn split(&self) -> Result<(Pusher<'_, T, N>, Popper<'_, T, N>), SplitError> {
        if self.split.swap(true, Ordering::Relaxed) {
            return Err(SplitError);
        }
        Ok((End::new(self), End::new(self)))
    }

    fn base(&self) -> *mut T {
        self.buf.get().cast::<T>()
    }

    /// Shows loom a write to the `len` slots from cursor `from` (a no-op outside loom).
    #[inline]
    fn track_write(&self, from: u64, len: u64) {
        for k in 0..len {
            self.track[(from.wrapping_add(k) as usize) & (N - 1)].with_mut(|_| ());
        }
    }

    /// Shows loom a read of the `len` slots from cursor `from` (a no-op outside loom).
    #[inline]
    fn track_read(&self, from: u64, len: u64) {
        for k in 0..len {
            self.track[(from.wrapping_add(k) as usize) & (N - 1)].with(|_| ());
        }
    }
}

/// The slots `count(cached)` says are available to one side, where `cached` is its copy of the
/// other side's cursor; when that is fewer than `want`, the copy is reloaded from `other` first.
#[inline]
fn available(cached: &mut u64, other: &AtomicU64, want: u64, count: impl Fn(u64) -> u64) -> u64 {
    let n = count(*cached);
    if n >= want {
        return n;
    }
    // Acquire: pairs with the other side's Release store of its cursor in `publish` (the
    // pusher's `tail`, the popper's `head`): what it did to the slots before happened before.
    *cached = other.load(Ordering::Acquire);
    count(*cached)
}

/// Moves a side's own `cursor` on by `k` and stores it in `shared` with `order` (the caller says
/// what it pairs with). Inline, so that `order` is a constant in the caller: this function is not
/// generic, and without it the push and pop of another crate call it, store and all.
#[inline]
fn publish(cursor: &mut u64, shared: &AtomicU64, k: u64, order: Ordering) {
    *cursor = cursor.wrapping_add(k);
    shared.store(*cursor, order);
}

/// How many slots a chunk of `n` gets: at most `N`, at most `available(want)` (the free or
/// ready slots, checked again when the cached count is below `want`); none is an error
/// unless none was asked.
fn chunk_len<const N: usize>(
    n: usize,
    available: impl FnOnce(u64) -> u64,
) -> Result<u64, ChunkError> {
    let want = n.min(N) as u64;
    let len = want.min(available(want));
    if len == 0 && n > 0 {
        return Err(ChunkError::Unavailable);
    }
    Ok(len)
}

/// Where a chunk of `len` slots from cursor `pos` lies: its first slot's index and how many
/// slots come before the ring wraps (the rest start at index 0).
fn wrap_split<const N: usize>(pos: u64, len: usize) -> (usize, usize) {
    let start = (pos as usize) & (N - 1);
    (start, len.min(N - start))
}

/// Marks an [`End`] as the producing one ([`Pusher`]): it writes items at `tail` and waits
/// for `head`.
#[derive(Debug)]
pub enum Push {}

/// Marks an [`End`] as the consuming one ([`Popper`]): it reads items at `head` and waits
/// for `tail`.
#[derive(Debug)]
pub enum Pop {}

mod side {
    use super::{AtomicU64, Ordering, Pop, Push, StaticRing};

    /// What tells the two ends apart: whose cursor is whose, how many slots an end may use,
    /// how it shows loom its accesses, and the ordering it publishes its cursor with. `pub`
    /// only to be a bound of [`End`](super::End)'s methods: it lives in a private module, so
    /// nobody outside this file can name, implement or call it (the cursors stay its own).
    pub trait Side {
        /// Slots an end at `mine` may use while the other end is at `theirs`.
        fn usable<const N: usize>(mine: u64, theirs: u64) -> u64;
        /// This end's cursor in the ring, then the other end's.
        fn cursors<T: Copy, const N: usize>(ring: &StaticRing<T, N>) -> (&AtomicU64, &AtomicU64);
        /// Shows loom this end's access to the `len` slots from cursor `from`.
        fn track<T: Copy, const N: usize>(ring: &StaticRing<T, N>, from: u64, len: u64);
        /// The ordering of this end's cursor store.
        const PUBLISH: Ordering;
    }

    impl Side for Push {
        fn usable<const N: usize>(tail: u64, head: u64) -> u64 {
            N as u64 - tail.wrapping_sub(head)
        }
        fn cursors<T: Copy, const N: usize>(ring: &StaticRing<T, N>) -> (&AtomicU64, &AtomicU64) {
            (&ring.tail.0, &ring.head.0)
        }
        fn track<T: Copy, const N: usize>(ring: &StaticRing<T, N>, from: u64, len: u64) {
            ring.track_write(from, len);
        }
        // Release (planted-bug switchable): pairs with the popper's Acquire load of `tail`.
        const PUBLISH: Ordering = crate::ring::COMMIT_ORDER;
    }

    impl Side for Pop {
        fn usable<const N: usize>(head: u64, tail: u64) -> u64 {
            tail.wrapping_sub(head)
        }
        fn cursors<T: Copy, const N: usize>(ring: &StaticRing<T, N>) -> (&AtomicU64, &AtomicU64) {
            (&ring.head.0, &ring.tail.0)
        }
        fn track<T: Copy, const N: usize>(ring: &StaticRing<T, N>, from: u64, len: u64) {
            ring.track_read(from, len);
        }
        // Release: pairs with the pusher's Acquire load of `head`.
        const PUBLISH: Ordering = Ordering::Release;
    }
}
use side::Side;

/// One end of a [`StaticRing`]: the [`Pusher`] or the [`Popper`] (`S` says which). It owns
/// its cursor and caches the other end's.
#[derive(Debug)]
pub struct End<'a, T: Copy, const N: usize, S> {
    ring: &'a StaticRing<T, N>,
    /// This end's cursor: the pusher's `tail`, the popper's `head`.
    pos: u64,
    /// Its copy of the other end's cursor, reloaded when it says full (empty).
    cached: u64,
    _side: PhantomData<S>,
}

// SAFETY: an end only touches slots it owns under the cursor protocol; moving it to another
// thread moves items of type `T`, hence `T: Send`.
unsafe impl<T: Copy + Send, const N: usize, S> Send for End<'_, T, N, S> {}

impl<'a, T: Copy, const N: usize, S: Side> End<'a, T, N, S> {
    fn new(ring: &'a StaticRing<T, N>) -> Self {
        End {
            ring,
            pos: 0,
            cached: 0,
            _side: PhantomData,
        }
    }

    /// Slots this end may use now (free ones for the pusher, ready items for the popper).
    fn usable(&mut self, want: u64) -> u64 {
        let pos = self.pos;
        // Reloads the other end's cursor (Acquire, pairs with its Release store in
        // `publish`): what it did to the slots before happened before.
        let (_, theirs) = S::cursors(self.ring);
        available(&mut self.cached, theirs, want, |other| {
            S::usable::<N>(pos, other)
        })
    }

    /// The index of the next slot, its access shown to loom, when it is usable.
    fn next_slot(&mut self) -> Option<usize> {
        if self.usable(1) == 0 {
            return None;
        }
        S::track(self.ring, self.pos, 1);
        Some((self.pos as usize) & (N - 1))
    }

    /// Hands the next `k` slots to the other end.
    fn publish(&mut self, k: u64) {
        let (mine, _) = S::cursors(self.ring);
        // `S::PUBLISH` (Release): pairs with the other end's Acquire load in `usable`.
        publish(&mut self.pos, mine, k, S::PUBLISH);
    }

    /// Grants up to `n` usable slots.
    fn chunk(&mut self, n: usize) -> Result<Chunk<'_, Self>, ChunkError> {
        let len = chunk_len::<N>(n, |want| self.usable(want))?;
        S::track(self.ring, self.pos, len);
        Ok(Chunk {
            len: len as usize,
            side: self,
        })
    }
}

/// The producing end of a [`StaticRing`].
///
/// ```
/// use voxring_core::StaticRing;
/// let ring = StaticRing::<u32, 4>::new(0);
/// let (mut tx, mut rx) = ring.split().unwrap();
/// assert_eq!(tx.slots(), 4);
/// tx.push(1).unwrap();
/// assert_eq!(rx.pop(), Ok(1));
/// ```
pub type Pusher<'a, T, const N: usize> = End<'a, T, N, Push>;

impl<'a, T: Copy, const N: usize> Pusher<'a, T, N> {
    /// Free slots right now (a lower bound: the popper may free more).
    pub fn slots(&mut self) -> usize {
        self.usable(N as u64) as usize
    }

    /// Pushes one item; when the ring is full, hands it back in [`PushError::Full`].
    pub fn push(&mut self, value: T) -> Result<(), PushError<T>> {
        let Some(i) = self.next_slot() else {
            return Err(PushError::Full(value));
        };
        // SAFETY: `i < N`; the slot is free (tail - head < N), so the popper does not read it
        // until we publish `tail`; we are the only pusher.
        unsafe { self.ring.base().add(i).write(value) };
        self.publish(1);
        Ok(())
    }

    /// Grants up to `n` free slots to fill in place (fewer if fewer are free).
    pub fn write_chunk(&mut self, n: usize) -> Result<WriteChunk<'_, 'a, T, N>, ChunkError> {
        self.chunk(n)
    }
}

/// The consuming end of a [`StaticRing`].
///
/// ```
/// use voxring_core::{PopError, StaticRing};
/// let ring = StaticRing::<u8, 2>::new(0);
/// let (mut tx, mut rx) = ring.split().unwrap();
/// assert_eq!(rx.pop(), Err(PopError::Empty));
/// tx.push(9).unwrap();
/// assert_eq!(rx.items(), 1);
/// assert_eq!(rx.pop(), Ok(9));
/// ```
pub type Popper<'a, T, const N: usize> = End<'a, T, N, Pop>;

impl<'a, T: Copy, const N: usize> Popper<'a, T, N> {
    /// Items ready right now (a lower bound).
    pub fn items(&mut self) -> usize {
        self.usable(N as u64) as usize
    }

    /// Pops one item.
    pub fn pop(&mut self) -> Result<T, PopError> {
        let Some(i) = self.next_slot() else {
            return Err(PopError::Empty);
        };
        // SAFETY: `i < N`; the slot holds a published item (head < tail) which the pusher
        // does not overwrite until we publish `head`.
        let value = unsafe { self.ring.base().add(i).read() };
        self.publish(1);
        Ok(value)
    }

    /// Grants up to `n` ready items to read in place.
    pub fn read_chunk(&mut self, n: usize) -> Result<ReadChunk<'_, 'a, T, N>, ChunkError> {
        self.chunk(n)
    }
}

/// Slots granted to one end of a [`StaticRing`], by [`Pusher::write_chunk`] ([`WriteChunk`])
/// or [`Popper::read_chunk`] ([`ReadChunk`]): at most `N`, split where the ring wraps.
#[derive(Debug)]
pub struct Chunk<'p, S> {
    side: &'p mut S,
    len: usize,
}

impl<S> Chunk<'_, S> {
    /// Slots (or items) granted.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when none was granted.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Copy, const N: usize, S: Side> Chunk<'_, End<'_, T, N, S>> {
    /// Where the granted slots are: the buffer, the first slot's index, and how many come
    /// before the ring wraps (the rest start at index 0).
    fn place(&self) -> (*mut T, usize, usize) {
        let (start, first) = wrap_split::<N>(self.side.pos, self.len);
        (self.side.ring.base(), start, first)
    }

    /// Hands the first `k` granted slots to the other end.
    fn finish(self, k: usize) -> Result<(), TooMany> {
        TooMany::check(k, self.len)?;
        let end = self.side;
        S::track(end.ring, end.pos, self.len as u64);
        end.publish(k as u64);
        Ok(())
    }
}

/// Slots granted to a [`Pusher`]; fill them, then [`commit`](WriteChunk::commit).
///
/// ```
/// use voxring_core::StaticRing;
/// let ring = StaticRing::<i16, 8>::new(0);
/// let (mut tx, mut rx) = ring.split().unwrap();
/// let mut chunk = tx.write_chunk(3).unwrap();
/// assert_eq!(chunk.copy_from(&[10, 20, 30, 40]), 3); // only 3 granted
/// chunk.commit(3).unwrap();
/// let chunk = rx.read_chunk(8).unwrap();
/// assert_eq!(chunk.as_slices(), (&[10, 20, 30][..], &[][..]));
/// chunk.release(3).unwrap();
/// ```
pub type WriteChunk<'p, 'a, T, const N: usize> = Chunk<'p, Pusher<'a, T, N>>;

impl<T: Copy, const N: usize> WriteChunk<'_, '_, T, N> {
    /// The granted slots, split where the ring wraps (the second slice may be empty). They
    /// hold stale items until written.
    pub fn as_mut_slices(&mut self) -> (&mut [T], &mut [T]) {
        let (base, start, first) = self.place();
        // SAFETY: `start + first <= N` and `len - first <= start`, so both slices are inside
        // the buffer and disjoint; the slots are free (granted), so the popper does not read
        // them until commit, and `&mut self` keeps these the only references.
        unsafe {
            (
                core::slice::from_raw_parts_mut(base.add(start), first),
                core::slice::from_raw_parts_mut(base, self.len - first),
            )
        }
    }

    /// Copies as many items of `src` as fit into the chunk; returns how many.
    pub fn copy_from(&mut self, src: &[T]) -> usize {
        let (a, b) = self.as_mut_slices();
        let na = a.len().min(src.len());
        a[..na].copy_from_slice(&src[..na]);
        let nb = b.len().min(src.len() - na);
        b[..nb].copy_from_slice(&src[na..na + nb]);
        na + nb
    }

    /// Publishes the first `k` slots.
    pub fn commit(self, k: usize) -> Result<(), TooMany> {
        self.finish(k)
    }
}

/// Items granted to a [`Popper`]; read them, then [`release`](ReadChunk::release).
///
/// ```
/// use voxring_core::StaticRing;
/// let ring = StaticRing::<u8, 4>::new(0);
/// let (mut tx, mut rx) = ring.split().unwrap();
/// for v in 1..=3 {
///     tx.push(v).unwrap();
/// }
/// let chunk = rx.read_chunk(2).unwrap();
/// assert_eq!(chunk.len(), 2);
/// chunk.release(1).unwrap(); // keep the second for later
/// assert_eq!(rx.pop(), Ok(2));
/// ```
pub type ReadChunk<'p, 'a, T, const N: usize> = Chunk<'p, Popper<'a, T, N>>;

impl<T: Copy, const N: usize> ReadChunk<'_, '_, T, N> {
    /// The granted items, split where the ring wraps.
    pub fn as_slices(&self) -> (&[T], &[T]) {
        let (base, start, first) = self.place();
        // SAFETY: both ranges are inside the buffer (see `WriteChunk::as_mut_slices`) and
        // hold published items the pusher does not touch until release.
        unsafe {
            (
                core::slice::from_raw_parts(base.add(start), first),
                core::slice::from_raw_parts(base, self.len - first),
            )
        }
    }

    /// Frees the first `k` items.
    pub fn release(self, k: usize) -> Result<(), TooMany> {
        self.finish(k)
    }
}
