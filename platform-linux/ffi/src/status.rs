//! Status codes and the other constants of the ABI (policy, format, flag, transport and open
//! codes), and [`vr_strerror`] which names a status code.

use std::ffi::{CStr, c_char};

/// Success.
pub const VR_OK: i32 = 0;
/// A required pointer argument was null.
pub const VR_E_NULL: i32 = -1;
/// An argument is out of range or not valid UTF-8 (see `vr_last_error`).
pub const VR_E_INVALID: i32 = -2;
/// No segment of that name exists.
pub const VR_E_NOT_FOUND: i32 = -3;
/// The segment exists but this process may not open it (permissions, owner checks).
pub const VR_E_PERMISSION: i32 = -4;
/// Attaching failed for another reason (layout, version, mapping; see `vr_last_error`).
pub const VR_E_ATTACH: i32 = -5;
/// Creating the segment failed (see `vr_last_error`).
pub const VR_E_CREATE: i32 = -6;
/// A segment of that name already exists.
pub const VR_E_EXISTS: i32 = -7;
/// The ring has a live producer already, or every consumer slot is taken.
pub const VR_E_BUSY: i32 = -8;
/// No frame is ready to read.
pub const VR_E_EMPTY: i32 = -9;
/// No frame is free to write (lossless ring, slowest consumer behind by the capacity).
pub const VR_E_FULL: i32 = -10;
/// Lossy ring: this reader was lapped; `vr_reader_status` counts the frames lost. Read again.
pub const VR_E_LOST: i32 = -11;
/// Lossy ring: frames were overwritten while read; their data must be discarded (the read
/// position still advanced and the loss is counted).
pub const VR_E_OVERWRITTEN: i32 = -12;
/// This participant was evicted from the ring (it was taken for dead).
pub const VR_E_EVICTED: i32 = -13;
/// A peer wrote an impossible value into the ring (a corrupt cursor or sequence number).
pub const VR_E_CORRUPT: i32 = -14;
/// The wait timed out.
pub const VR_E_TIMEOUT: i32 = -15;
/// The producer is gone and every frame was read.
pub const VR_E_END_OF_STREAM: i32 = -16;
/// A grant is open: commit or release it first.
pub const VR_E_GRANT_OPEN: i32 = -17;
/// No grant is open, or it holds fewer frames than asked.
pub const VR_E_NO_GRANT: i32 = -18;
/// The segment was truncated by another process.
pub const VR_E_TRUNCATED: i32 = -19;
/// A control register write found another write in progress.
pub const VR_E_CONTENDED: i32 = -20;
/// An I/O error (socket fallback, files); see `vr_last_error`.
pub const VR_E_IO: i32 = -21;
/// A Rust panic was caught at the boundary (a bug in voxring; see `vr_last_error`).
pub const VR_E_PANIC: i32 = -22;
/// The operation is not available on this handle (e.g. a socket fallback reader has no
/// shared mapping).
pub const VR_E_UNSUPPORTED: i32 = -23;

/// Ring policy code: the producer waits for the slowest consumer; nothing is lost.
pub const VR_POLICY_LOSSLESS: u32 = 1;
/// Ring policy code: the producer never waits; lapped readers are told what they lost.
pub const VR_POLICY_LOSSY: u32 = 2;
/// Sample format code: signed 16-bit.
pub const VR_FORMAT_S16: u32 = 1;
/// Sample format code: signed 32-bit.
pub const VR_FORMAT_S32: u32 = 2;
/// Sample format code: 32-bit float.
pub const VR_FORMAT_F32: u32 = 3;
/// Frame flag: the producer had an xrun before this frame.
pub const VR_FLAG_XRUN: u32 = 1;
/// Frame flag: a discontinuity before this frame.
pub const VR_FLAG_DISCONTINUITY: u32 = 2;
/// Frame flag: the last frame of the stream.
pub const VR_FLAG_END_OF_STREAM: u32 = 4;
/// Transport: the shared-memory segment, zero copy.
pub const VR_TRANSPORT_SHM: i32 = 1;
/// Transport: the producer's Unix-socket fallback (one copy per frame, slower).
pub const VR_TRANSPORT_SOCKET_FALLBACK: i32 = 2;
/// `vr_reader_open` flag: never use the socket fallback.
pub const VR_OPEN_NO_FALLBACK: u32 = 1;
/// `vr_reader_open` flag: use the socket fallback without trying the segment.
pub const VR_OPEN_FORCE_FALLBACK: u32 = 2;
/// Bytes of a control register's value.
pub const VR_CONTROL_BYTES: usize = 64;

/// The name of a status code (static string, e.g. "VR_E_EMPTY").
#[unsafe(no_mangle)]
pub extern "C" fn vr_strerror(code: i32) -> *const c_char {
    let s: &'static CStr = match code {
        VR_OK => c"VR_OK: success",
        VR_E_NULL => c"VR_E_NULL: a required pointer argument was null",
        VR_E_INVALID => c"VR_E_INVALID: an argument is out of range",
        VR_E_NOT_FOUND => c"VR_E_NOT_FOUND: no segment of that name",
        VR_E_PERMISSION => c"VR_E_PERMISSION: the segment may not be opened by this process",
        VR_E_ATTACH => c"VR_E_ATTACH: attaching to the segment failed",
        VR_E_CREATE => c"VR_E_CREATE: creating the segment failed",
        VR_E_EXISTS => c"VR_E_EXISTS: a segment of that name already exists",
        VR_E_BUSY => c"VR_E_BUSY: the producer side or every consumer slot is taken",
        VR_E_EMPTY => c"VR_E_EMPTY: no frame is ready",
        VR_E_FULL => c"VR_E_FULL: no frame is free to write",
        VR_E_LOST => c"VR_E_LOST: frames were lost (lossy ring, reader lapped)",
        VR_E_OVERWRITTEN => c"VR_E_OVERWRITTEN: frames were overwritten while read",
        VR_E_EVICTED => c"VR_E_EVICTED: this participant was evicted",
        VR_E_CORRUPT => c"VR_E_CORRUPT: a peer wrote an impossible value",
        VR_E_TIMEOUT => c"VR_E_TIMEOUT: the wait timed out",
        VR_E_END_OF_STREAM => c"VR_E_END_OF_STREAM: the producer is gone, all frames read",
        VR_E_GRANT_OPEN => c"VR_E_GRANT_OPEN: a grant is open; commit or release it first",
        VR_E_NO_GRANT => c"VR_E_NO_GRANT: no grant (or a smaller one) is open",
        VR_E_TRUNCATED => c"VR_E_TRUNCATED: the segment was truncated by another process",
        VR_E_CONTENDED => c"VR_E_CONTENDED: the control register is being written",
        VR_E_IO => c"VR_E_IO: an I/O error",
        VR_E_PANIC => c"VR_E_PANIC: a bug in voxring (a panic was caught)",
        VR_E_UNSUPPORTED => c"VR_E_UNSUPPORTED: not available on this handle",
        _ => c"unknown voxring status code",
    };
    s.as_ptr()
}
