//! Control register: a latest-value seqlock for small plain data (VAD state, a gain, a
//! command), shared between threads or processes.
//!
//! The writer never waits: it bumps a sequence number to odd, stores the payload, and bumps it
//! to even again. A reader copies the payload between two reads of the sequence number and
//! keeps the copy only if the number was even and unchanged, so it never returns a torn value.
//! A reader retries a bounded number of times ([`DEFAULT_READ_RETRIES`]) and then returns
//! [`ReadError::Contended`]: a hostile or crashed writer can make reads fail, never hang them.
//!
//! The payload is stored as an array of `AtomicU64` words, so concurrent reads and writes are
//! not a data race in the Rust memory model (the classic seqlock with a plain payload is).
//! `T` must implement [`Plain`]: `Copy`, no padding, every bit pattern valid.
//!
//! The struct is `#[repr(C)]` and holds only atomics: use it in-process (a `static`, a field)
//! or in a shared region ([`ControlRegister::init_in`], [`ControlRegister::attach`]; layout in
//! `core/LAYOUT.md`, section "Control register").
//!
//! ```
//! use voxring_core::control::ControlRegister;
//!
//! #[derive(Clone, Copy, Debug, PartialEq)]
//! #[repr(C)]
//! struct Vad { speaking: u32, level_db: f32, since_sample: u64 }
//! // SAFETY: repr(C), fields 4 + 4 + 8 bytes with no padding, every bit pattern valid.
//! unsafe impl voxring_core::control::Plain for Vad {}
//!
//! static VAD: ControlRegister<Vad, 2> =
//!     ControlRegister::new(Vad { speaking: 0, level_db: -90.0, since_sample: 0 });
//!
//! VAD.write(Vad { speaking: 1, level_db: -20.5, since_sample: 48_000 }).unwrap();
//! let (now, version) = VAD.read_versioned().unwrap();
//! assert_eq!(now.speaking, 1);
//! assert_eq!(version, 1);
//! assert_eq!(VAD.read_if_newer(version).unwrap(), None); // nothing new since
//! ```

use core::marker::PhantomData;
use core::mem::size_of;

#[cfg(not(voxring_loom))]
use crate::region::check_stamp;
use crate::sync::{AtomicU32, AtomicU64, Ordering, fence};

/// Plain data that can travel through a [`ControlRegister`] as raw bytes.
///
/// # Safety
/// Implement it only for `Copy` types that
/// - have no padding bytes (every byte of a value is initialised), and
/// - are valid for every bit pattern (a reader may see bytes a hostile peer wrote),
///
/// e.g. integers, floats, arrays of them, and `#[repr(C)]` structs of them laid out without
/// gaps. Not `bool`, `char`, enums, references or pointers.
///
/// ```
/// use voxring_core::control::{ControlRegister, Plain};
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// #[repr(C)]
/// struct Mix {
///     gain: f32,
///     pan: f32,
/// }
/// // SAFETY: two f32 with no gap between them: no padding, valid for every bit pattern.
/// unsafe impl Plain for Mix {}
/// let r = ControlRegister::<Mix, 1>::new(Mix { gain: 1.0, pan: 0.0 });
/// assert_eq!(r.read().unwrap().gain, 1.0);
/// ```
pub unsafe trait Plain: Copy + 'static {}

macro_rules! plain {
    ($($t:ty),*) => {$(
        // SAFETY: a primitive integer or float: no padding, every bit pattern valid.
        unsafe impl Plain for $t {}
    )*};
}
plain!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
);
// SAFETY: an array of padding-free, any-bit-pattern elements has neither padding nor invalid
// bit patterns.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}
// SAFETY: zero-sized, no bytes at all.
unsafe impl Plain for () {}

/// How many times [`ControlRegister::read`] retries before giving up.
pub const DEFAULT_READ_RETRIES: u32 = 256;

/// `b"VXCTRL\0\0"` as a little-endian `u64`: the first eight bytes of a register region.
pub const CONTROL_MAGIC: u64 = u64::from_le_bytes(*b"VXCTRL\0\0");

/// Version of the register's binary layout (`core/LAYOUT.md`, "Control register").
///
/// 2: the word at offset 20 (reserved in 1) is the waiting readers' futex word.
pub const CONTROL_VERSION: u32 = 2;

/// A latest-value seqlock over `WORDS` 64-bit words holding one `T`. See the
/// [module docs](self).
///
/// `size_of::<T>() <= 8 * WORDS` is checked at compile time (a `const` assertion in every
/// constructor). One writer at a time: a second concurrent writer gets
/// [`WriteError::Busy`] rather than corrupting the value.
///
/// ```
/// use voxring_core::control::ControlRegister;
/// // A latest-value register of two f32 (8 bytes in 4 words).
/// let gain = ControlRegister::<[f32; 2]>::new([1.0, 1.0]);
/// gain.write([0.5, 0.25]).unwrap();
/// assert_eq!(gain.read(), Ok([0.5, 0.25]));
/// let (value, version) = gain.read_versioned().unwrap();
/// assert_eq!((value, version), ([0.5, 0.25], 1));
/// // Nothing new since version 1:
/// assert_eq!(gain.read_if_newer(version), Ok(None));
/// ```
#[repr(C, align(64))]
pub struct ControlRegister<T, const WORDS: usize = 4> {
    /// [`CONTROL_MAGIC`]; written last by `init_in` (Release), checked by `attach` (Acquire).
    magic: AtomicU64,
    /// [`CONTROL_VERSION`].
    version: AtomicU32,
    /// `WORDS`.
    words: AtomicU32,
    /// `size_of::<T>()`.
    payload_bytes: AtomicU32,
    /// Waiting readers' futex word (see [`wait`]): bit 0 set = a reader is (about to be)
    /// asleep on it; a waking writer moves it on to the next even value.
    wake: AtomicU32,
    /// Even: stable, `seq / 2` writes completed. Odd: a write is in progress.
    seq: AtomicU64,
    /// The payload's bytes, native endianness, zero-padded to `WORDS * 8`.
    data: [AtomicU64; WORDS],
    _marker: PhantomData<fn() -> T>,
}

impl<T, const WORDS: usize> core::fmt::Debug for ControlRegister<T, WORDS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ControlRegister")
            .field("seq", &self.seq.load(Ordering::Relaxed))
            .field("words", &WORDS)
            .finish_non_exhaustive()
    }
}

/// Why [`ControlRegister::write`] did not write. The value is handed back.
///
/// ```
/// use voxring_core::control::WriteError;
/// // A refused write hands the value back.
/// let e: WriteError<u32> = WriteError::Busy(7);
/// assert_eq!(e.into_inner(), 7);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError<T> {
    /// Another write is in progress (a second writer, or a writer that died mid-write: see
    /// [`ControlRegister::recover_abandoned_write`]). Nothing was changed.
    Busy(T),
}

impl<T> WriteError<T> {
    /// The value that was not written.
    pub fn into_inner(self) -> T {
        match self {
            Self::Busy(v) => v,
        }
    }
}

error_message!(WriteError<T>, |self, f| {
    match self {
        Self::Busy(_) => write!(
            f,
            "control register write refused: another write is in progress; a register \
             has one writer at a time (if the writer died mid-write, its owner can call \
             recover_abandoned_write)"
        ),
    }
});

/// Why a read returned no value.
///
/// ```
/// use voxring_core::control::{ControlRegister, ReadError};
/// let r = ControlRegister::<u64>::new(3);
/// // With no writer busy, one attempt is enough.
/// assert_eq!(r.read_with_retries(1), Ok((3, 0)));
/// let e = ReadError::Contended { retries: 8 };
/// assert!(e.to_string().contains("8 attempts"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// Every attempt overlapped a write (or found one in progress). An honest writer that
    /// writes at audio rates practically never causes this; a writer stuck mid-write or
    /// writing in a tight loop does. Try again later, or treat the writer as faulty.
    Contended {
        /// Attempts made.
        retries: u32,
    },
}

error_message!(ReadError, |self, f| {
    match self {
        Self::Contended { retries } => write!(
            f,
            "control register read gave up after {retries} attempts: every one overlapped \
             a write; the writer is writing in a loop or died mid-write"
        ),
    }
});

mod wait;
pub use wait::{ControlWaitOutcome, RawRegister};

/// Why a region could not be initialised or attached: the error every shared object
/// reports (see [`crate::region`]).
pub use crate::region::RegionError;

/// The payload's bytes as words, zero-padded. `const` so that [`ControlRegister::new`] can be.
#[inline(always)]
const fn to_words<T: Plain, const WORDS: usize>(value: &T) -> [u64; WORDS] {
    let mut words = [0u64; WORDS];
    // SAFETY: `size_of::<T>() <= WORDS * 8` (asserted at compile time by every constructor,
    // the only way to get a `ControlRegister<T, WORDS>` to call this on); `T: Plain` has no
    // padding, so all `size_of::<T>()` source bytes are initialised; the buffers are distinct.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (value as *const T).cast::<u8>(),
            words.as_mut_ptr().cast::<u8>(),
            size_of::<T>(),
        );
    }
    words
}

/// A `T` from the first `size_of::<T>()` bytes of `words`.
#[inline(always)]
fn from_words<T: Plain, const WORDS: usize>(words: &[u64; WORDS]) -> T {
    let mut out = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: as in `to_words`, the sizes fit; the bytes are initialised integers; a byte copy
    // has no alignment requirement; and `T: Plain` is valid for every bit pattern, so
    // `assume_init` is sound whatever a peer wrote.
    unsafe {
        core::ptr::copy_nonoverlapping(
            words.as_ptr().cast::<u8>(),
            out.as_mut_ptr().cast::<u8>(),
            size_of::<T>(),
        );
        out.assume_init()
    }
}

/// A fresh register (header stamped, version 0) around the payload words `data`: the one
/// struct literal both builds' `new` share (a macro, since only the non-loom `new` is `const`
/// and loom's atomics have no `const fn new`).
macro_rules! fresh_register {
    ($data:expr) => {
        Self {
            magic: AtomicU64::new(CONTROL_MAGIC),
            version: AtomicU32::new(CONTROL_VERSION),
            words: AtomicU32::new(WORDS as u32),
            payload_bytes: AtomicU32::new(size_of::<T>() as u32),
            wake: AtomicU32::new(0),
            seq: AtomicU64::new(0),
            data: $data,
            _marker: PhantomData,
        }
    };
}

impl<T: Plain, const WORDS: usize> ControlRegister<T, WORDS> {
    const FITS: () = assert!(
        size_of::<T>() <= WORDS * 8 && WORDS <= u32::MAX as usize,
        "ControlRegister<T, WORDS>: T does not fit in WORDS 64-bit words; raise WORDS"
    );

    /// Size in bytes of this register in a shared region.
    pub const REGION_SIZE: usize = size_of::<Self>();
    /// Alignment in bytes a register region must have.
    pub const REGION_ALIGN: usize = core::mem::align_of::<Self>();

    /// A register holding `initial` (version 0).
    #[cfg(not(voxring_loom))]
    pub const fn new(initial: T) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::FITS;
        let words = to_words::<T, WORDS>(&initial);
        let mut data = [const { AtomicU64::new(0) }; WORDS];
        let mut i = 0;
        while i < WORDS {
            data[i] = AtomicU64::new(words[i]);
            i += 1;
        }
        fresh_register!(data)
    }

    /// A register holding `initial` (version 0).
    #[cfg(voxring_loom)]
    pub fn new(initial: T) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::FITS;
        let words = to_words::<T, WORDS>(&initial);
        // loom's atomics have no `const fn new`: the array is built at run time.
        fresh_register!(core::array::from_fn(|i| AtomicU64::new(words[i])))
    }

    /// Publishes `value`. Wait-free: never spins, never blocks.
    ///
    /// # Errors
    /// [`WriteError::Busy`] with the value when another write is in progress.
    ///
    /// It does not wake readers blocked in a wait ([`publish`](Self::publish) does): use it
    /// where nobody waits, or on a path that must not pay even the check.
    pub fn write(&self, value: T) -> Result<(), WriteError<T>> {
        self.write_words(to_words::<T, WORDS>(&value))
            .map_err(|()| WriteError::Busy(value))
    }

    /// [`write`](Self::write) of raw payload words; `Err(())` when busy.
    fn write_words(&self, words: [u64; WORDS]) -> Result<(), ()> {
        // Relaxed: the writer only needs the current number; ordering comes from the fence.
        let s = self.seq.load(Ordering::Relaxed);
        if s & 1 != 0 {
            return Err(());
        }
        // Claim the register (even -> odd). Relaxed: the Release fence below orders this
        // store before the payload stores. A failure means another writer got there first.
        if self
            .seq
            .compare_exchange(s, s.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return Err(());
        }
        // Release fence: pairs with the reader's Acquire fence after its payload loads. A
        // reader that sees any payload word stored below also sees the odd `seq` above in its
        // second `seq` load, and discards its copy.
        fence(Ordering::Release);
        for (cell, w) in self.data.iter().zip(words) {
            // Relaxed: ordered by the fence above and the Release store below.
            cell.store(w, Ordering::Relaxed);
        }
        // Release: pairs with the reader's first (Acquire) `seq` load: a reader that sees this
        // even number sees every payload word above.
        self.seq.store(s.wrapping_add(2), Ordering::Release);
        Ok(())
    }

    /// One attempt: `Some((payload words, seq))` if no write overlapped it.
    #[inline(always)]
    fn try_read_words(&self) -> Option<([u64; WORDS], u64)> {
        // Acquire: pairs with the writer's final Release store of an even `seq`.
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let mut words = [0u64; WORDS];
        for (w, cell) in words.iter_mut().zip(&self.data) {
            // Relaxed: validated by the fence and second `seq` load below.
            *w = cell.load(Ordering::Relaxed);
        }
        // Acquire fence: pairs with the writer's Release fence after it made `seq` odd (see
        // `write`): if a load above saw a newer write's word, the load below sees its `seq`.
        fence(Ordering::Acquire);
        // Relaxed: ordered after the payload loads by the fence above.
        let s2 = self.seq.load(Ordering::Relaxed);
        (s1 == s2).then_some((words, s1))
    }

    /// The latest value, retrying up to [`DEFAULT_READ_RETRIES`] times. Never torn.
    ///
    /// # Errors
    /// [`ReadError::Contended`] when every attempt overlapped a write.
    pub fn read(&self) -> Result<T, ReadError> {
        self.read_with_retries(DEFAULT_READ_RETRIES).map(|(v, _)| v)
    }

    /// The latest value and its version (the number of writes completed before it; 0 for the
    /// initial value).
    ///
    /// # Errors
    /// [`ReadError::Contended`] when every attempt overlapped a write.
    pub fn read_versioned(&self) -> Result<(T, u64), ReadError> {
        self.read_with_retries(DEFAULT_READ_RETRIES)
    }

    /// Like [`read_versioned`](Self::read_versioned), with at most `retries` attempts (at
    /// least one is made).
    ///
    /// # Errors
    /// [`ReadError::Contended`] when every attempt overlapped a write.
    pub fn read_with_retries(&self, retries: u32) -> Result<(T, u64), ReadError> {
        self.read_words(retries)
            .map(|(w, v)| (from_words::<T, WORDS>(&w), v))
    }

    /// [`read_with_retries`](Self::read_with_retries) of the raw payload words.
    fn read_words(&self, retries: u32) -> Result<([u64; WORDS], u64), ReadError> {
        let retries = retries.max(1);
        for _ in 0..retries {
            if let Some((w, s)) = self.try_read_words() {
                return Ok((w, s / 2));
            }
            crate::sync::spin_hint();
        }
        Err(ReadError::Contended { retries })
    }

    /// The latest value if its version is newer than `seen` (`Ok(None)` otherwise): a cheap
    /// poll, one load when nothing changed.
    ///
    /// # Errors
    /// [`ReadError::Contended`] when every attempt overlapped a write.
    pub fn read_if_newer(&self, seen: u64) -> Result<Option<(T, u64)>, ReadError> {
        if self.version() <= seen {
            return Ok(None);
        }
        self.read_versioned()
            .map(|(v, n)| (n > seen).then_some((v, n)))
    }

    /// Writes completed so far (a write in progress is not counted).
    pub fn version(&self) -> u64 {
        // Acquire: pairs with the writer's final Release store (a caller that then reads
        // sees at least this version).
        self.seq.load(Ordering::Acquire) / 2
    }

    /// Ends a write its writer abandoned (it died between its two `seq` stores), so writes
    /// can start again. Returns whether there was one. Call it only when the writer is known
    /// to be gone: racing it with a live writer can let a reader see a torn value (never
    /// undefined behaviour: every access is atomic).
    pub fn recover_abandoned_write(&self) -> bool {
        // Relaxed load, then a CAS from odd to the next even number. Release: pairs with
        // readers' Acquire `seq` loads like a normal write's end.
        let s = self.seq.load(Ordering::Relaxed);
        s & 1 != 0
            && self
                .seq
                .compare_exchange(s, s.wrapping_add(1), Ordering::Release, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(not(voxring_loom))]
impl<T: Plain, const WORDS: usize> ControlRegister<T, WORDS> {
    fn check_region(ptr: *const u8, len: usize) -> Result<(), RegionError> {
        crate::region::check_region(ptr, len, Self::REGION_ALIGN, Self::REGION_SIZE)
    }

    /// Creates a register holding `initial` in the first [`REGION_SIZE`](Self::REGION_SIZE)
    /// bytes at `ptr` (overwriting them). The magic is written last (Release), so a peer's
    /// [`attach`](Self::attach) (Acquire) sees a complete register or none.
    ///
    /// # Errors
    /// [`RegionError::Null`], [`RegionError::Misaligned`], [`RegionError::TooSmall`].
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for all of `'a`, and nothing in
    /// this process may access those bytes other than through the returned reference during
    /// `'a` (other processes may: every field is atomic and every bit pattern is valid).
    pub unsafe fn init_in<'a>(
        ptr: *mut u8,
        len: usize,
        initial: T,
    ) -> Result<&'a Self, RegionError> {
        Self::check_region(ptr, len)?;
        let fresh = Self::new(initial);
        // Relaxed: not yet published; the Release store of the magic below publishes it.
        fresh.magic.store(0, Ordering::Relaxed);
        let reg = ptr.cast::<Self>();
        // SAFETY: checked non-null, aligned and long enough; the caller guarantees the bytes
        // are ours to write for 'a.
        unsafe { reg.write(fresh) };
        // SAFETY: just initialised; validity and exclusivity for 'a are the caller's promise.
        let reg = unsafe { &*reg };
        // Release: pairs with the Acquire load of the magic in `attach`.
        reg.magic.store(CONTROL_MAGIC, Ordering::Release);
        Ok(reg)
    }

    /// Attaches to a register created with [`init_in`](Self::init_in) after checking the
    /// region, magic, version, word count and payload size. The sequence number and payload
    /// are integers whose every value is handled: a hostile peer can make reads fail or
    /// return values it chose, never read or write out of the region or hang a reader.
    ///
    /// # Errors
    /// The [`RegionError`] of the first check that failed.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for all of `'a`, and this
    /// process must not access those bytes non-atomically during `'a`.
    pub unsafe fn attach<'a>(ptr: *mut u8, len: usize) -> Result<&'a Self, RegionError> {
        #[allow(clippy::let_unit_value)]
        let () = Self::FITS;
        Self::check_region(ptr, len)?;
        // SAFETY: checked non-null, aligned, long enough; validity for 'a is the caller's
        // promise. Every field is an atomic integer, valid for any bit pattern.
        let reg = unsafe { &*ptr.cast::<Self>() };
        check_stamp((&reg.magic, CONTROL_MAGIC), (&reg.version, CONTROL_VERSION))?;
        let words = reg.words.load(Ordering::Relaxed);
        let payload_bytes = reg.payload_bytes.load(Ordering::Relaxed);
        if words as usize != WORDS {
            return Err(RegionError::Mismatch {
                field: "control register word count",
                found: u64::from(words),
                expected: WORDS as u64,
            });
        }
        if payload_bytes as usize != size_of::<T>() {
            return Err(RegionError::Mismatch {
                field: "control register payload size",
                found: u64::from(payload_bytes),
                expected: size_of::<T>() as u64,
            });
        }
        Ok(reg)
    }
}

// Not under loom: the inherent `init_in`/`attach` exist only for byte regions (loom's atomics
// are objects, not bytes).
#[cfg(not(voxring_loom))]
// SAFETY: `init_in` and `attach` below are the inherent ones: they check null, alignment
// and `REGION_SIZE` before touching the region, touch only `REGION_SIZE` bytes, and every
// field is an atomic integer (valid for any bit pattern a peer writes).
unsafe impl<T: Plain, const WORDS: usize> crate::region::InRegion for ControlRegister<T, WORDS> {
    type Init = T;
    type Handle<'a>
        = &'a Self
    where
        Self: 'a;
    const ALIGN: usize = Self::REGION_ALIGN;

    fn size_for(_: &T) -> Result<usize, RegionError> {
        Ok(Self::REGION_SIZE)
    }

    unsafe fn init_in<'a>(ptr: *mut u8, len: usize, init: T) -> Result<&'a Self, RegionError> {
        // SAFETY: the caller's promise is the inherent function's.
        unsafe { Self::init_in(ptr, len, init) }
    }

    unsafe fn attach<'a>(ptr: *mut u8, len: usize) -> Result<&'a Self, RegionError> {
        // SAFETY: the caller's promise is the inherent function's.
        unsafe { Self::attach(ptr, len) }
    }
}

// The byte layout documented in core/LAYOUT.md ("Control register").
#[cfg(not(voxring_loom))]
const _: () = {
    type R = ControlRegister<u64, 3>;
    assert_layout!(R, size 64, {
        magic: 0, version: 8, words: 12, payload_bytes: 16, wake: 20, seq: 24, data: 32,
    });
    assert!(size_of::<ControlRegister<u64, 4>>() == 64);
    assert!(size_of::<ControlRegister<u64, 5>>() == 128);
};

#[cfg(all(test, not(voxring_loom)))]
mod tests;
