//! Helpers for C programs: the clock frames are stamped with, and the payload checksum.

use std::panic::catch_unwind;

/// CLOCK_MONOTONIC in nanoseconds (the clock voxring's producers stamp frames with).
#[unsafe(no_mangle)]
pub extern "C" fn vr_monotonic_ns() -> u64 {
    catch_unwind(voxring_linux::clock::monotonic_ns).unwrap_or(0)
}

/// The payload checksum voxring's tests and tools use: CRC-32 (IEEE) of `len` bytes,
/// continuing from `crc` (start with 0).
///
/// # Safety
/// `data` valid for `len` reads (or null with `len == 0`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_crc32(crc: u32, data: *const u8, len: usize) -> u32 {
    catch_unwind(|| {
        if data.is_null() || len == 0 {
            return crc;
        }
        // SAFETY: valid for `len` reads (caller).
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        let mut h = crc32fast::Hasher::new_with_initial(crc);
        h.update(bytes);
        h.finalize()
    })
    .unwrap_or(0)
}
