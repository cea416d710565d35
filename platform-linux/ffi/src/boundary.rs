//! What every entry point does at the boundary: catch panics ([`guard`]), record the last
//! error of the thread ([`vr_last_error`]), check pointer arguments, and map Rust errors to
//! `VR_E_*` status codes.

use std::cell::RefCell;
use std::ffi::{CStr, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use voxring_core::{GrantError, ReadError};
use voxring_linux::fallback::FallbackError;
use voxring_linux::ring::ParticipantError;
use voxring_linux::segment::{AttachError, CreateError, FailureClass};
use voxring_linux::shared::PlaceError;

use crate::status::*;

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_error(msg: impl Into<String>) {
    let msg = msg.into();
    LAST_ERROR.with(|e| *e.borrow_mut() = msg);
}

/// Copies bytes of `s` (plus a NUL) into `buf` of `len` bytes, truncating; returns the length
/// of `s` without the NUL (so a caller can size a buffer).
///
/// # Safety
/// `buf` must be null or valid for writes of `len` bytes.
pub(crate) unsafe fn copy_out(s: &str, buf: *mut c_char, len: usize) -> usize {
    if !buf.is_null() && len > 0 {
        let n = s.len().min(len - 1);
        // SAFETY: `buf` is valid for `len` bytes (caller) and `n + 1 <= len`; `s` and `buf`
        // cannot overlap (`s` is Rust-owned).
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    s.len()
}

/// Copies the message of the last failure on this thread into `buf` (NUL-terminated,
/// truncated to `len`); returns its full length. `buf` may be null to ask for the length.
///
/// # Safety
/// `buf` must be null or valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_last_error(buf: *mut c_char, len: usize) -> usize {
    catch_unwind(|| {
        LAST_ERROR.with(|e| {
            // SAFETY: the caller's promise on `buf`/`len`.
            unsafe { copy_out(&e.borrow(), buf, len) }
        })
    })
    .unwrap_or(0)
}

/// Runs `f`, turning a panic into [`VR_E_PANIC`] with its message as the last error.
pub(crate) fn guard(f: impl FnOnce() -> Result<i32, (i32, String)>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(code)) => code,
        Ok(Err((code, msg))) => {
            set_error(msg);
            code
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            set_error(format!(
                "voxring panicked ({what}); this is a bug in voxring: please report it with \
                 the steps that led here"
            ));
            VR_E_PANIC
        }
    }
}

pub(crate) type Fallible<T> = Result<T, (i32, String)>;

pub(crate) fn err<T>(code: i32, msg: impl Into<String>) -> Fallible<T> {
    Err((code, msg.into()))
}

/// # Safety
/// `p` must be null or a valid NUL-terminated string.
pub(crate) unsafe fn name_arg(p: *const c_char, what: &str) -> Fallible<String> {
    if p.is_null() {
        return err(VR_E_NULL, format!("{what} is null"));
    }
    // SAFETY: non-null, NUL-terminated by the caller's promise.
    let s = unsafe { CStr::from_ptr(p) };
    match s.to_str() {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => err(VR_E_INVALID, format!("{what} is not valid UTF-8")),
    }
}

pub(crate) fn attach_code(e: &AttachError) -> i32 {
    class_code(e.class(), VR_E_ATTACH)
}

pub(crate) fn create_code(e: &CreateError) -> i32 {
    class_code(e.class(), VR_E_CREATE)
}

/// The C code of a failure's class; `other` for the rest.
fn class_code(c: FailureClass, other: i32) -> i32 {
    match c {
        FailureClass::NotFound => VR_E_NOT_FOUND,
        FailureClass::Permission => VR_E_PERMISSION,
        FailureClass::Invalid => VR_E_INVALID,
        FailureClass::Exists => VR_E_EXISTS,
        FailureClass::Other => other,
    }
}

/// The code of a failure to place an object in a segment: as creating or attaching failed,
/// else `otherwise` (the object in the segment is not valid: not one, another version, damaged).
pub(crate) fn place_code(e: &PlaceError, otherwise: i32) -> i32 {
    match e {
        PlaceError::Create(e) => create_code(e),
        PlaceError::Attach(e) => attach_code(e),
        _ => otherwise,
    }
}

pub(crate) fn participant_err(e: ParticipantError) -> (i32, String) {
    let code = match e {
        ParticipantError::ProducerTaken { .. } | ParticipantError::ConsumersFull { .. } => {
            VR_E_BUSY
        }
        ParticipantError::Truncated => VR_E_TRUNCATED,
        _ => VR_E_ATTACH,
    };
    (code, e.to_string())
}

pub(crate) fn read_err(e: ReadError) -> (i32, String) {
    let code = match e {
        ReadError::Empty => VR_E_EMPTY,
        ReadError::Lost { .. } => VR_E_LOST,
        ReadError::Evicted => VR_E_EVICTED,
        _ => VR_E_CORRUPT,
    };
    (code, e.to_string())
}

pub(crate) fn timeout_arg(timeout_ns: i64) -> Option<Duration> {
    u64::try_from(timeout_ns).ok().map(Duration::from_nanos)
}

/// # Safety
/// `p` must be null or valid for writes of one `T`.
pub(crate) unsafe fn write_out<T>(p: *mut T, v: T) -> Fallible<()> {
    if p.is_null() {
        return err(VR_E_NULL, "an output pointer is null");
    }
    // SAFETY: non-null, valid for one write (caller).
    unsafe { p.write(v) };
    Ok(())
}

/// Hands a new handle to C: boxes it and writes the pointer into `*out` (freed by
/// [`destroy`]).
///
/// # Safety
/// `out` must be null (refused) or valid for one write.
pub(crate) unsafe fn give_out<T>(out: *mut *mut T, handle: T) -> Fallible<i32> {
    // SAFETY: the caller's promise.
    unsafe { write_out(out, Box::into_raw(Box::new(handle))) }?;
    Ok(VR_OK)
}

/// What every `vr_*_create`, `vr_*_attach` and `vr_reader_open*` does around its own part:
/// catches panics ([`guard`]), checks `name` and `out`, opens the handle with `open(name)`
/// and hands it out through `out`.
///
/// # Safety
/// `name` must be null or a NUL-terminated string; `out` null or valid for a write.
pub(crate) unsafe fn open_named<T>(
    name: *const c_char,
    out: *mut *mut T,
    open: impl FnOnce(String) -> Fallible<T>,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let name = unsafe { name_arg(name, "name") }?;
        if out.is_null() {
            return err(VR_E_NULL, "out is null");
        }
        let handle = open(name)?;
        // SAFETY: `out` checked non-null, valid (caller).
        unsafe { give_out(out, handle) }
    })
}

/// A ring side (`ShmProducer`, `ShmConsumer`) for a call that needs it free: refused with
/// `VR_E_GRANT_OPEN` and `how_to_close` while `grant` holds an open grant.
pub(crate) fn unless_grant_open<'a, S, G>(
    grant: &Option<G>,
    side: &'a mut S,
    how_to_close: &str,
) -> Fallible<&'a mut S> {
    if grant.is_some() {
        return err(VR_E_GRANT_OPEN, how_to_close);
    }
    Ok(side)
}

/// The outputs of `vr_write_grant` and `vr_read_grant`: `frames` (room for `n` entries, may
/// be null when `n` is 0) and `granted`, checked once; the granted frames and their count
/// are written through it, never past the room.
pub(crate) struct GrantOuts<F> {
    frames: *mut F,
    n: usize,
    granted: *mut usize,
}

impl<F> GrantOuts<F> {
    /// Refuses a null `granted`, or a null `frames` with room asked for.
    ///
    /// # Safety
    /// Non-null, `frames` must be valid for `n` writes and `granted` for one, as long as the
    /// result lives.
    pub(crate) unsafe fn new(frames: *mut F, n: usize, granted: *mut usize) -> Fallible<Self> {
        if (frames.is_null() && n > 0) || granted.is_null() {
            return err(VR_E_NULL, "frames or granted is null");
        }
        Ok(GrantOuts { frames, n, granted })
    }

    /// Writes entry `i` (ignored past the room: a grant never holds more than was asked).
    pub(crate) fn put(&self, i: usize, frame: F) {
        if i < self.n {
            // SAFETY: `i < n`, `frames` is non-null when `n > 0` (checked in `new`) and valid
            // for `n` writes (the promise of `new`).
            unsafe { self.frames.add(i).write(frame) };
        }
    }

    /// Writes the granted count.
    pub(crate) fn set_granted(&self, len: usize) {
        // SAFETY: checked non-null in `new`, valid for one write (the promise of `new`).
        unsafe { self.granted.write(len) };
    }
}

/// Frees a handle made by [`give_out`]: runs its drop (leave the ring, unmap...) with panics
/// caught. Null is ignored.
///
/// # Safety
/// `p` must be null or a live handle from [`give_out`], not used afterwards.
pub(crate) unsafe fn destroy<T>(p: *mut T) {
    if p.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: from `Box::into_raw` in `give_out`; the caller gives it up.
        drop(unsafe { Box::from_raw(p) });
    }));
}

/// Checks a handle pointer and borrows it mutably.
///
/// # Safety
/// `p` must be null or a live handle from this library, used by one thread at a time.
pub(crate) unsafe fn handle<'a, T>(p: *mut T) -> Fallible<&'a mut T> {
    if p.is_null() {
        return err(VR_E_NULL, "the handle is null");
    }
    // SAFETY: non-null and live (caller), not used concurrently (caller).
    Ok(unsafe { &mut *p })
}

pub(crate) fn fallback_code(e: &FallbackError) -> i32 {
    match e {
        FallbackError::UnsafeDir { .. }
        | FallbackError::Symlink { .. }
        | FallbackError::PeerNotTrusted { .. } => VR_E_PERMISSION,
        FallbackError::Name(_) => VR_E_INVALID,
        _ => VR_E_ATTACH,
    }
}

pub(crate) fn grant_code(e: &GrantError) -> i32 {
    match e {
        GrantError::Full => VR_E_FULL,
        GrantError::Evicted => VR_E_EVICTED,
        _ => VR_E_CORRUPT,
    }
}
