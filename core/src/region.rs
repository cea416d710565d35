//! Objects that live in a region of memory shared by processes: the one seam between core
//! and whatever maps the memory.
//!
//! Core has three such objects: the [`Ring`](crate::Ring), the
//! [`CycleFence`](crate::fence::CycleFence) and the
//! [`ControlRegister`](crate::control::ControlRegister). Each implements [`InRegion`]: how
//! many bytes and what alignment it needs, how to initialise it in place, and how to attach
//! to one another process made after validating it. A platform layer (voxring-linux's
//! segments) places any `InRegion` object, or several at offsets [`place_after`] computes,
//! and owns the mapping; it never does layout arithmetic of its own. Every check reports the
//! same [`RegionError`].
//!
//! ```
//! use voxring_core::fence::CycleFence;
//! use voxring_core::region::{InRegion, RegionError};
//!
//! #[repr(C, align(128))]
//! struct Region([u8; 512]);
//! let mut region = Region([0; 512]);
//! let (ptr, len) = (region.0.as_mut_ptr(), region.0.len());
//! assert!(CycleFence::size_for(&())? <= len);
//! // SAFETY: the buffer is ours, valid for 512 bytes, and used only through the fence.
//! let fence = unsafe { <CycleFence as InRegion>::init_in(ptr, len, ()) }?;
//! assert_eq!(fence.armed_cycle(), 0);
//! // SAFETY: as above; attaching checks magic, version and size.
//! let again = unsafe { <CycleFence as InRegion>::attach(ptr, len) }?;
//! assert_eq!(again.required(), 0);
//! # Ok::<(), RegionError>(())
//! ```

use crate::layout::LayoutError;
#[cfg(not(voxring_loom))]
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Why an object could not be initialised in, or attached to, a region of memory.
///
/// ```
/// use voxring_core::control::ControlRegister;
/// use voxring_core::region::{InRegion, RegionError};
/// #[repr(C, align(64))]
/// struct Region([u8; 64]);
/// let mut region = Region([0; 64]);
/// // SAFETY: valid for 64 bytes; the zeroed bytes are refused before any use.
/// let e = unsafe { <ControlRegister<u64> as InRegion>::attach(region.0.as_mut_ptr(), 64) };
/// assert!(matches!(e, Err(RegionError::BadMagic { found: 0, .. })));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegionError {
    /// The pointer was null.
    Null,
    /// The region does not start on the boundary the object needs.
    Misaligned {
        /// The address given.
        addr: usize,
        /// The alignment needed, in bytes.
        align: usize,
    },
    /// The region is shorter than the object.
    TooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// The object's magic number is not there: not this kind of object, or not initialised.
    BadMagic {
        /// What was there.
        found: u64,
        /// What this kind of object carries.
        expected: u64,
    },
    /// The object was made by an incompatible version of its layout.
    UnsupportedVersion {
        /// What was there.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// A field that must match this build's type differs (a register's word count or
    /// payload size, a fence's agent count).
    Mismatch {
        /// Which field.
        field: &'static str,
        /// What was there.
        found: u64,
        /// What this build expects.
        expected: u64,
    },
    /// The object's own layout is invalid (a ring's header fields, or its configuration).
    Layout(LayoutError),
    /// A header field holds a value no object of this kind can have (a ring's policy or
    /// sample-format code, say).
    BadField {
        /// Which field.
        field: &'static str,
        /// What was there.
        found: u64,
    },
}

impl From<LayoutError> for RegionError {
    fn from(e: LayoutError) -> Self {
        Self::Layout(e)
    }
}

error_message!(RegionError, |self, f| {
    match *self {
        Self::Null => write!(f, "the region pointer is null: map the memory first"),
        Self::Misaligned { addr, align } => write!(
            f,
            "the region at {addr:#x} is not aligned to {align} bytes: place the object \
             at an offset that is a multiple of {align} in a page-aligned mapping"
        ),
        Self::TooSmall { need, got } => write!(
            f,
            "the region is {got} bytes but the object needs {need}: map a larger region"
        ),
        Self::BadMagic { found, expected } => write!(
            f,
            "magic {found:#018x} where {expected:#018x} was expected: this memory does not \
             hold this kind of object, or its creator has not finished initialising it"
        ),
        Self::UnsupportedVersion { found, expected } => write!(
            f,
            "layout version {found}, but this build reads version {expected}: run the same \
             voxring version on both sides"
        ),
        Self::Mismatch {
            field,
            found,
            expected,
        } => write!(
            f,
            "{field} is {found} in the region but {expected} in this build: both sides \
             must use the same type"
        ),
        Self::Layout(e) => write!(f, "{e}"),
        Self::BadField { field, found } => write!(
            f,
            "header field {field} holds {found}, which no such object can have: the \
             memory is corrupt or not this kind of object; recreate it"
        ),
    }
});

/// An object that lives in a region of memory shared by processes.
///
/// # Safety
/// Implementors promise that [`init_in`](Self::init_in) and [`attach`](Self::attach) access
/// only the first [`size_for`](Self::size_for) bytes at `ptr` (for `attach`: the size the
/// validated object claims, never more than `len`), check the region's pointer, alignment and
/// length before touching it, and that every field a peer can write is read in a way that
/// is sound for any bit pattern.
///
/// ```
/// use voxring_core::control::ControlRegister;
/// use voxring_core::region::{InRegion, place_after};
/// type Reg = ControlRegister<u32, 1>;
/// #[repr(C, align(128))]
/// struct Region([u8; 512]);
/// let mut region = Region([0; 512]);
/// let base = region.0.as_mut_ptr();
/// // Two registers in one region, at offsets place_after computes.
/// let size = Reg::size_for(&0)?;
/// let second = place_after(size, Reg::ALIGN).unwrap();
/// // SAFETY: both placements lie inside the 512 bytes, which outlive the handles.
/// let (a, b) = unsafe { (Reg::init_in(base, size, 1)?, Reg::init_in(base.add(second), size, 2)?) };
/// assert_eq!((a.read(), b.read()), (Ok(1), Ok(2)));
/// # Ok::<(), voxring_core::region::RegionError>(())
/// ```
pub unsafe trait InRegion {
    /// What creating one needs: `()` for a fence, the initial value for a register, the
    /// configuration for a ring.
    type Init;
    /// What a caller holds while the region is mapped: `&'a Self` for fixed-size objects, a
    /// handle for a ring.
    type Handle<'a>
    where
        Self: 'a;
    /// The alignment the region's start needs, in bytes (a power of two).
    const ALIGN: usize;

    /// Bytes the object needs when created with `init`.
    ///
    /// # Errors
    /// [`RegionError::Layout`] when `init` is not a valid configuration.
    fn size_for(init: &Self::Init) -> Result<usize, RegionError>;

    /// Initialises a fresh object at `ptr`, overwriting the bytes it needs; a peer's
    /// [`attach`](Self::attach) sees a complete object or none.
    ///
    /// # Errors
    /// The first check that failed.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for all of `'a` and for as long
    /// as the returned handle or anything derived from it is alive (the same thing for a
    /// `&'a Self` handle; a [`Ring`](crate::Ring) handle is `Copy` and not tied to `'a`),
    /// and nothing in this process may access those bytes other than through the returned
    /// handle meanwhile (other processes may: shared objects are made of atomics).
    unsafe fn init_in<'a>(
        ptr: *mut u8,
        len: usize,
        init: Self::Init,
    ) -> Result<Self::Handle<'a>, RegionError>;

    /// Attaches to an object another process (or this one) initialised, after validating it.
    ///
    /// # Errors
    /// The first check that failed.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for all of `'a` and for as long
    /// as the returned handle or anything derived from it is alive (see
    /// [`init_in`](Self::init_in)), and this process must not access those bytes
    /// non-atomically meanwhile.
    unsafe fn attach<'a>(ptr: *mut u8, len: usize) -> Result<Self::Handle<'a>, RegionError>;
}

/// Checks what every object checks first: non-null, aligned to `align`, at least `need`
/// bytes.
///
/// # Errors
/// [`RegionError::Null`], [`RegionError::Misaligned`], [`RegionError::TooSmall`].
pub fn check_region(
    ptr: *const u8,
    len: usize,
    align: usize,
    need: usize,
) -> Result<(), RegionError> {
    if ptr.is_null() {
        return Err(RegionError::Null);
    }
    if !(ptr as usize).is_multiple_of(align) {
        return Err(RegionError::Misaligned {
            addr: ptr as usize,
            align,
        });
    }
    if len < need {
        return Err(RegionError::TooSmall { need, got: len });
    }
    Ok(())
}

/// Checks the stamp every fixed-size object's header starts with: its `magic` word, then its
/// `version` (read after the magic, which the object's `init_in` stores last).
///
/// # Errors
/// [`RegionError::BadMagic`], [`RegionError::UnsupportedVersion`].
#[cfg(not(voxring_loom))] // like the `InRegion` impls that call it
pub(crate) fn check_stamp(
    (magic, expected_magic): (&AtomicU64, u64),
    (version, expected_version): (&AtomicU32, u32),
) -> Result<(), RegionError> {
    // Acquire: pairs with the Release store of the magic in the object's `init_in`.
    let found = magic.load(Ordering::Acquire);
    if found != expected_magic {
        return Err(RegionError::BadMagic {
            found,
            expected: expected_magic,
        });
    }
    // Relaxed: ordered by the Acquire above.
    let found = version.load(Ordering::Relaxed);
    if found != expected_version {
        return Err(RegionError::UnsupportedVersion {
            found,
            expected: expected_version,
        });
    }
    Ok(())
}

/// The offset at which an object of alignment `align` goes after `end` bytes already used:
/// `end` rounded up to `align` (and to a cache line, so two objects never share one).
/// `None` on overflow.
///
/// ```
/// use voxring_core::region::place_after;
/// assert_eq!(place_after(384, 64), Some(384));
/// assert_eq!(place_after(385, 64), Some(512));
/// assert_eq!(place_after(0, 4096), Some(0));
/// ```
pub const fn place_after(end: usize, align: usize) -> Option<usize> {
    let a = if align > crate::layout::CACHE_LINE {
        align
    } else {
        crate::layout::CACHE_LINE
    };
    match end.checked_add(a - 1) {
        Some(v) => Some(v / a * a),
        None => None,
    }
}

/// Test helper for every [`InRegion`] type: attaching to a null, a misaligned or a too-short
/// region fails with that check's error (the checks come before any access).
///
/// # Safety
/// `ptr` must point to at least `need + 1` bytes aligned to `T::ALIGN`.
#[cfg(test)]
pub(crate) unsafe fn assert_bad_placements_refused<T: InRegion>(ptr: *mut u8, need: usize) {
    let refused = |p: *mut u8, len: usize| {
        // SAFETY: the caller's promise; each of these placements fails a check before any
        // access.
        match unsafe { T::attach(p, len) } {
            Ok(_) => panic!("attach accepted a bad placement ({p:?}, {len} bytes)"),
            Err(e) => e,
        }
    };
    assert_eq!(
        refused(ptr, need - 1),
        RegionError::TooSmall {
            need,
            got: need - 1
        }
    );
    // SAFETY: in bounds of the caller's `need + 1` bytes.
    let odd = unsafe { ptr.add(1) };
    assert!(matches!(
        refused(odd, need),
        RegionError::Misaligned { align, .. } if align == T::ALIGN
    ));
    assert_eq!(refused(core::ptr::null_mut(), need), RegionError::Null);
}

/// Test helper for the fixed-size objects, whose header starts with the stamp
/// [`check_stamp`] reads (magic at byte 0, version at byte 8): a forged version, then a
/// forged magic, are refused with their errors; the stamp is restored after each.
///
/// # Safety
/// `ptr` must hold a `T` initialised in `len` bytes, with no reference to it in use.
#[cfg(test)]
pub(crate) unsafe fn assert_stamp_checked<T: InRegion>(
    ptr: *mut u8,
    len: usize,
    magic: u64,
    version: u32,
) {
    let refused = || {
        // SAFETY: the caller's promise; a forged stamp fails before the handle is made.
        match unsafe { T::attach(ptr, len) } {
            Ok(_) => panic!("attach accepted a forged stamp"),
            Err(e) => e,
        }
    };
    let version_at = ptr.wrapping_add(8).cast::<u32>();
    // SAFETY: within the object's header (caller), aligned (the object's alignment is at
    // least 8), no reference in use.
    unsafe { version_at.write(version.wrapping_add(1)) };
    assert_eq!(
        refused(),
        RegionError::UnsupportedVersion {
            found: version.wrapping_add(1),
            expected: version
        }
    );
    // SAFETY: as above.
    unsafe {
        version_at.write(version);
        ptr.cast::<u64>().write(0);
    }
    assert_eq!(
        refused(),
        RegionError::BadMagic {
            found: 0,
            expected: magic
        }
    );
    // SAFETY: as above.
    unsafe { ptr.cast::<u64>().write(magic) };
}
