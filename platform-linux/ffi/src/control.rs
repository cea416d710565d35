//! Control registers: [`vr_control`], a latest-value seqlock in its own segment.

use std::ffi::{c_char, c_void};

use voxring_core::control::ControlRegister;
use voxring_linux::segment::{AttachOptions, CreateOptions};
use voxring_linux::shared::Placed;

use crate::boundary::*;
use crate::status::*;

type Register = ControlRegister<[u64; 8], 8>;

/// A control register handle (opaque): a latest-value seqlock of `VR_CONTROL_BYTES` bytes
/// in its own segment `/dev/shm/voxring.<name>`.
pub struct vr_control {
    /// The register, placed and validated by voxring-linux, with the segment it lives in.
    reg: Placed<Register>,
}

impl std::fmt::Debug for vr_control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("vr_control").finish_non_exhaustive()
    }
}

impl vr_control {
    fn reg(&self) -> &Register {
        &self.reg
    }
}

/// Checks the buffer of a register read or write: non-null unless empty, and at most
/// `VR_CONTROL_BYTES` long.
fn check_buffer(is_null: bool, len: usize, what: &str) -> Fallible<()> {
    if is_null && len > 0 {
        return err(VR_E_NULL, format!("{what} is null"));
    }
    if len > VR_CONTROL_BYTES {
        return err(
            VR_E_INVALID,
            format!(
                "{what} is {len} bytes but a control register holds {VR_CONTROL_BYTES}: \
                 pass at most {VR_CONTROL_BYTES}"
            ),
        );
    }
    Ok(())
}

/// Creates a control register segment `/dev/shm/voxring.<name>` (removed when destroyed),
/// holding zeros.
///
/// # Safety
/// `name` NUL-terminated; `out` valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_control_create(name: *const c_char, out: *mut *mut vr_control) -> i32 {
    let open = |name: String| -> Fallible<vr_control> {
        let reg = Placed::<Register>::create(&name, &CreateOptions::default(), [0; 8])
            .map_err(|e| (place_code(&e, VR_E_CREATE), e.to_string()))?;
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
        let reg = Placed::<Register>::attach(&name, &AttachOptions::default()).map_err(|e| {
            (
                place_code(&e, VR_E_ATTACH),
                format!("{name} is not a control register this process may use: {e}"),
            )
        })?;
        Ok(vr_control { reg })
    };
    // SAFETY: the caller's promises on `name` and `out`, passed on.
    unsafe { open_named(name, out, open) }
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

/// Writes `len` bytes (at most `VR_CONTROL_BYTES`; the rest become zero) as the register's
/// new value. `VR_E_CONTENDED` if another write is in progress.
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
        check_buffer(data.is_null(), len, "data")?;
        let mut words = [0u64; 8];
        // SAFETY: `data` valid for `len <= 64` reads (caller); `words` is 64 bytes.
        unsafe { std::ptr::copy_nonoverlapping(data.cast::<u8>(), words.as_mut_ptr().cast(), len) };
        c.reg()
            .write(words)
            .map_err(|e| (VR_E_CONTENDED, e.to_string()))?;
        Ok(VR_OK)
    })
}

/// Reads the register's value into `out` (`len` bytes, at most `VR_CONTROL_BYTES`) and its
/// version (writes completed so far) into `*version` (may be null). Never returns a torn
/// value; `VR_E_CONTENDED` if every retry overlapped a write.
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
    guard(|| {
        // SAFETY: the caller's promise.
        let c = unsafe { handle(c) }?;
        check_buffer(out.is_null(), len, "out")?;
        let (words, v) = c
            .reg()
            .read_versioned()
            .map_err(|e| (VR_E_CONTENDED, e.to_string()))?;
        // SAFETY: `out` valid for `len <= 64` writes (caller); `words` is 64 bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(words.as_ptr().cast::<u8>(), out.cast::<u8>(), len)
        };
        if !version.is_null() {
            // SAFETY: non-null, valid (caller).
            unsafe { version.write(v) };
        }
        Ok(VR_OK)
    })
}
