//! Control registers: [`vr_control`], a latest-value seqlock in its own segment or one of a
//! running hub's registers, with a wait that blocks until the value changes.

use std::ffi::{c_char, c_void};
use std::time::Duration;

use voxring_linux::control::{
    DEFAULT_PATIENCE, HubRegister, OpenError, SharedControl, WriteBytesError,
};
use voxring_linux::hub::HubError;
use voxring_linux::segment::{AttachOptions, CreateOptions};

use crate::boundary::*;
use crate::status::*;

/// A control register handle (opaque): a latest-value seqlock of `vr_control_size` bytes (at
/// most `VR_CONTROL_BYTES`), in its own segment `/dev/shm/voxring.<name>` or in a hub's
/// directory.
pub struct vr_control {
    /// The register, placed and validated by voxring-linux, with the segment it lives in.
    reg: SharedControl,
}

impl std::fmt::Debug for vr_control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("vr_control").finish_non_exhaustive()
    }
}

/// Checks the buffer of a register read or write: non-null unless empty, and at most the
/// register's size.
fn check_buffer(c: &vr_control, is_null: bool, len: usize, what: &str) -> Fallible<()> {
    if is_null && len > 0 {
        return err(VR_E_NULL, format!("{what} is null"));
    }
    let size = c.reg.len();
    if len > size {
        return err(
            VR_E_INVALID,
            format!(
                "{what} is {len} bytes but this control register holds {size}: pass at most \
                 {size} (vr_control_size)"
            ),
        );
    }
    Ok(())
}

/// The status code of a failed open.
fn open_err(e: OpenError, otherwise: i32) -> (i32, String) {
    let code = match &e {
        OpenError::Place(p) => place_code(p, otherwise),
        OpenError::Hub(HubError::NotFound { cause, .. }) => attach_code(cause),
        OpenError::Hub(HubError::BadName(_)) => VR_E_INVALID,
        OpenError::Hub(HubError::Directory(p)) => place_code(p, otherwise),
        OpenError::Hub(_) => otherwise,
    };
    (code, e.to_string())
}

/// Creates a control register segment `/dev/shm/voxring.<name>` (removed when destroyed),
/// holding `VR_CONTROL_BYTES` zero bytes.
///
/// # Safety
/// `name` NUL-terminated; `out` valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_control_create(name: *const c_char, out: *mut *mut vr_control) -> i32 {
    let open = |name: String| -> Fallible<vr_control> {
        let reg = SharedControl::create(&name, &CreateOptions::default())
            .map_err(|e| open_err(e, VR_E_CREATE))?;
        Ok(vr_control { reg })
    };
    // SAFETY: the caller's promises on `name` and `out`, passed on.
    unsafe { open_named(name, out, open) }
}

/// Attaches to a control register segment made by `vr_control_create`.
///
/// # Safety
/// `name` NUL-terminated; `out` valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_control_attach(name: *const c_char, out: *mut *mut vr_control) -> i32 {
    let open = |name: String| -> Fallible<vr_control> {
        let reg = SharedControl::attach(&name, &AttachOptions::default()).map_err(|e| {
            let (code, msg) = open_err(e, VR_E_ATTACH);
            (
                code,
                format!("{name} is not a control register this process may use: {msg}"),
            )
        })?;
        Ok(vr_control { reg })
    };
    // SAFETY: the caller's promises on `name` and `out`, passed on.
    unsafe { open_named(name, out, open) }
}

/// Opens register `reg` of the running hub `hub` (`voxring serve --name <hub>`; its owner
/// must be this user): `"speech"` (speech on/off, written by a VAD agent: four u64 `active`,
/// `since_sample`, `segments`, `level_mb`) or `"value0"` .. `"value15"` (four u64 an agent
/// publishes). Both hold 32 bytes. `VR_E_NOT_FOUND` when no such hub runs, `VR_E_INVALID` for
/// a bad register name.
///
/// # Safety
/// `hub` and `reg` NUL-terminated; `out` valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_control_attach_hub(
    hub: *const c_char,
    reg: *const c_char,
    out: *mut *mut vr_control,
) -> i32 {
    // SAFETY: the caller's promise on `reg`.
    let which = match unsafe { name_arg(reg, "reg") } {
        Ok(r) => r,
        Err(e) => return guard(|| Err(e)),
    };
    let open = |hub: String| -> Fallible<vr_control> {
        let which: HubRegister = which.parse().map_err(|e| (VR_E_INVALID, e))?;
        let reg = SharedControl::hub(&hub, which, &AttachOptions::default())
            .map_err(|e| open_err(e, VR_E_ATTACH))?;
        Ok(vr_control { reg })
    };
    // SAFETY: the caller's promises on `hub` and `out`, passed on.
    unsafe { open_named(hub, out, open) }
}

/// Destroys a control register handle (removing the segment if it created it). Null is
/// ignored.
///
/// # Safety
/// `c` null or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_control_destroy(c: *mut vr_control) {
    // SAFETY: the caller's promise; handles are made by `give_out`.
    unsafe { destroy(c) }
}

/// Writes into `*size` how many bytes the register holds (`VR_CONTROL_BYTES` for one made by
/// `vr_control_create`, 32 for a hub's).
///
/// # Safety
/// `c` a live handle; `size` valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_control_size(c: *mut vr_control, size: *mut usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let c = unsafe { handle(c) }?;
        // SAFETY: the caller's promise.
        unsafe { write_out(size, c.reg.len()) }?;
        Ok(VR_OK)
    })
}

/// Writes `len` bytes (at most the register's size; the rest become zero) as the register's
/// new value and wakes readers blocked in `vr_control_wait` (a `FUTEX_WAKE` only when one
/// waits, otherwise no system call). Never blocks: usable on a real-time thread.
/// `VR_E_CONTENDED` if another write is in progress.
///
/// # Safety
/// `c` a live handle; `data` valid for `len` reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_control_write(
    c: *mut vr_control,
    data: *const c_void,
    len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let c = unsafe { handle(c) }?;
        check_buffer(c, data.is_null(), len, "data")?;
        let bytes: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: `data` non-null (checked) and valid for `len` reads (caller).
            unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }
        };
        c.reg.write(bytes).map_err(|e| {
            let code = match e {
                WriteBytesError::TooLong { .. } => VR_E_INVALID,
                WriteBytesError::Busy => VR_E_CONTENDED,
            };
            (code, e.to_string())
        })?;
        Ok(VR_OK)
    })
}

/// The common part of the reads: checks, reads with `read` (its error is `VR_E_CONTENDED`
/// with the error's message), copies the value and the version out.
///
/// # Safety
/// `c` a live handle; `out` valid for `len` writes; `version` null or valid.
unsafe fn read_with<E: std::fmt::Display>(
    c: *mut vr_control,
    out: *mut c_void,
    len: usize,
    version: *mut u64,
    read: impl FnOnce(&SharedControl, &mut [u8]) -> Result<u64, E>,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let c = unsafe { handle(c) }?;
        check_buffer(c, out.is_null(), len, "out")?;
        let mut buf = [0u8; VR_CONTROL_BYTES];
        let v = read(&c.reg, &mut buf[..len]).map_err(|e| (VR_E_CONTENDED, e.to_string()))?;
        // SAFETY: `out` valid for `len <= VR_CONTROL_BYTES` writes (caller, checked above).
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), out.cast::<u8>(), len) };
        if !version.is_null() {
            // SAFETY: non-null, valid (caller).
            unsafe { version.write(v) };
        }
        Ok(VR_OK)
    })
}

/// Reads the register's value into `out` (`len` bytes, at most its size) and its version
/// (writes completed so far) into `*version` (may be null). Never returns a torn value. A
/// write in progress (a writer descheduled mid-write) is waited out: the read retries,
/// yielding and then sleeping (50 µs doubling to 2 ms), for up to 2 s, then returns
/// `VR_E_CONTENDED` with a message saying whether one write stayed in progress (its writer
/// stalled or died) or writes kept overlapping. May block: on a real-time thread use
/// `vr_control_try_read`.
///
/// # Safety
/// `c` a live handle; `out` valid for `len` writes; `version` null or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_control_read(
    c: *mut vr_control,
    out: *mut c_void,
    len: usize,
    version: *mut u64,
) -> i32 {
    // SAFETY: the caller's promises, passed on (a negative patience is the default 2 s).
    unsafe { vr_control_read_within(c, out, len, version, -1) }
}

/// `vr_control_read` with its own bound: waits out a write in progress for up to
/// `patience_ns` (negative: 2 s, as `vr_control_read`) before `VR_E_CONTENDED`. May block.
///
/// # Safety
/// `c` a live handle; `out` valid for `len` writes; `version` null or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_control_read_within(
    c: *mut vr_control,
    out: *mut c_void,
    len: usize,
    version: *mut u64,
    patience_ns: i64,
) -> i32 {
    let patience = timeout_arg(patience_ns).unwrap_or(DEFAULT_PATIENCE);
    // SAFETY: the caller's promises, passed on.
    unsafe { read_with(c, out, len, version, |reg, buf| reg.read(buf, patience)) }
}

/// `vr_control_read` without waiting: at most 256 quick attempts, then `VR_E_CONTENDED`.
/// Never blocks, makes no system call: for real-time threads.
///
/// # Safety
/// `c` a live handle; `out` valid for `len` writes; `version` null or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_control_try_read(
    c: *mut vr_control,
    out: *mut c_void,
    len: usize,
    version: *mut u64,
) -> i32 {
    // SAFETY: the caller's promises, passed on.
    unsafe { read_with(c, out, len, version, |reg, buf| reg.try_read(buf)) }
}

/// Blocks until the register's version is past `seen` (a version from `vr_control_read` or
/// a previous wait; 0 for "any write"), at most `timeout_ns` (negative: no limit), and writes
/// the new version into `*version` (may be null): `VR_OK`. `VR_E_TIMEOUT` when the time
/// passed first. Returns at once when the version is already past `seen`. The writer's
/// `vr_control_write` (or Rust's `publish_and_wake`) wakes it through a futex on the
/// register; the writer pays a system call only while someone waits. Read the value after it
/// returns (it may have moved further). May block: not for real-time threads.
///
/// # Safety
/// `c` a live handle; `version` null or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_control_wait(
    c: *mut vr_control,
    seen: u64,
    timeout_ns: i64,
    version: *mut u64,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let c = unsafe { handle(c) }?;
        let timeout: Option<Duration> = timeout_arg(timeout_ns);
        match c.reg.wait_newer_than(seen, timeout) {
            Some(v) => {
                if !version.is_null() {
                    // SAFETY: non-null, valid (caller).
                    unsafe { version.write(v) };
                }
                Ok(VR_OK)
            }
            None => err(
                VR_E_TIMEOUT,
                format!(
                    "the control register stayed at version {} (not past {seen}) for the \
                     whole timeout: nobody wrote it (a writer must use vr_control_write or \
                     publish_and_wake to wake waiters)",
                    c.reg.version()
                ),
            ),
        }
    })
}
