//! The C ABI of control-register waits and reads: `vr_control_wait` (woken by a write from
//! another thread, timing out with a message, returning at once when newer), the patient
//! `vr_control_read_within` outlasting a writer stalled mid-write (a forged odd sequence word written
//! into the segment file, completed later from another thread) while `vr_control_try_read`
//! refuses at once, and `vr_control_attach_hub`'s refusals.

use std::ffi::{CStr, CString};
use std::os::unix::fs::FileExt;
use std::ptr;

use voxring_ffi::*;

mod common;
use common::{last_error, ok, refused, unique_c};

/// Give-up bound of waits that must be woken: never reached unless the wake is lost.
const GIVE_UP_NS: i64 = 60_000_000_000;

fn unique(tag: &str) -> CString {
    unique_c("ctlwait", tag)
}

/// A handle that may cross threads in a test: the ABI allows one thread at a time per handle,
/// and each test gives each thread its own handle.
struct Handle(*mut vr_control);
// SAFETY: used by one thread at a time (each thread of a test owns its handle).
unsafe impl Send for Handle {}

fn open(name: &CStr, create: bool) -> Handle {
    let mut c = ptr::null_mut();
    // SAFETY: valid name and out-pointer.
    ok(unsafe {
        if create {
            vr_control_create(name.as_ptr(), &mut c)
        } else {
            vr_control_attach(name.as_ptr(), &mut c)
        }
    });
    Handle(c)
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a live handle, not used afterwards.
        unsafe { vr_control_destroy(self.0) };
    }
}

#[test]
fn wait_is_woken_by_a_write_times_out_with_a_message_and_returns_at_once_when_newer() {
    let name = unique("wake");
    let writer = open(&name, true);
    let reader = open(&name, false);
    let mut v = 0u64;
    // SAFETY: live handles; valid pointers.
    unsafe {
        assert_eq!(
            vr_control_wait(reader.0, 0, 1_000_000, &mut v),
            VR_E_TIMEOUT
        );
        let msg = last_error();
        assert!(
            msg.contains("stayed at version 0") && msg.contains("vr_control_write"),
            "{msg}"
        );
    }
    let waiting = std::thread::spawn(move || {
        let mut v = 0u64;
        // SAFETY: this thread's own handle; valid pointer.
        let rc = unsafe { vr_control_wait(reader.0, 0, GIVE_UP_NS, &mut v) };
        (rc, v, reader)
    });
    // SAFETY: live handle; 3 readable bytes.
    ok(unsafe { vr_control_write(writer.0, b"on!".as_ptr().cast(), 3) });
    let (rc, v, reader) = waiting.join().unwrap();
    assert_eq!((rc, v), (VR_OK, 1), "{}", last_error());
    let mut out = [0u8; 3];
    let mut now = 0u64;
    // SAFETY: live handles; valid pointers.
    unsafe {
        ok(vr_control_wait(reader.0, 0, GIVE_UP_NS, ptr::null_mut()));
        ok(vr_control_read(
            reader.0,
            out.as_mut_ptr().cast(),
            3,
            &mut now,
        ));
        assert_eq!((&out, now), (b"on!", 1));
        let mut size = 0usize;
        ok(vr_control_size(reader.0, &mut size));
        assert_eq!(size, VR_CONTROL_BYTES);
        assert_eq!(vr_control_wait(ptr::null_mut(), 0, 0, &mut now), VR_E_NULL);
    }
}

/// Fault/attack: the writer is descheduled mid-write (a forged odd `seq` at offset 24 of the
/// segment, `core/LAYOUT.md`), then completes it from another thread.
#[test]
fn a_read_outlasts_a_writer_stalled_mid_write_and_try_read_does_not_wait() {
    let name = unique("stall");
    let owner = open(&name, true);
    // SAFETY: live handle; 2 readable bytes.
    ok(unsafe { vr_control_write(owner.0, b"hi".as_ptr().cast(), 2) });
    let path = format!("/dev/shm/voxring.{}", name.to_str().unwrap());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("the segment is this user's");
    // Write in progress: seq 3 (odd), after one completed write (seq 2).
    file.write_all_at(&3u64.to_ne_bytes(), 24)
        .expect("forge seq");
    let mut out = [0u8; 2];
    let mut v = 0u64;
    // SAFETY: live handle; valid pointers.
    unsafe {
        assert_eq!(
            vr_control_try_read(owner.0, out.as_mut_ptr().cast(), 2, &mut v),
            VR_E_CONTENDED
        );
        assert!(last_error().contains("256 attempts"), "{}", last_error());
    }
    let reader = open(&name, false);
    let reading = std::thread::spawn(move || {
        let mut out = [0u8; 2];
        let mut v = 0u64;
        // SAFETY: this thread's own handle; valid pointers.
        let rc = unsafe {
            vr_control_read_within(reader.0, out.as_mut_ptr().cast(), 2, &mut v, GIVE_UP_NS)
        };
        (rc, out, v, last_error(), reader)
    });
    // The writer runs again (whenever: the reader backs off for up to GIVE_UP_NS).
    std::thread::sleep(std::time::Duration::from_millis(20));
    file.write_all_at(&4u64.to_ne_bytes(), 24)
        .expect("complete the write");
    let (rc, out, v, msg, _reader) = reading.join().unwrap();
    assert_eq!((rc, &out, v), (VR_OK, b"hi", 2), "{msg}");
}

#[test]
fn a_write_that_never_completes_is_reported_after_the_back_off() {
    let name = unique("dead");
    let owner = open(&name, true);
    let path = format!("/dev/shm/voxring.{}", name.to_str().unwrap());
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&1u64.to_ne_bytes(), 24).unwrap();
    let mut out = [0u8; 8];
    // SAFETY: live handle; valid pointers.
    unsafe {
        assert_eq!(
            vr_control_read(owner.0, out.as_mut_ptr().cast(), 8, ptr::null_mut()),
            VR_E_CONTENDED
        );
    }
    let msg = last_error();
    assert!(
        msg.contains("a write stayed in progress") && msg.contains("stalled or died"),
        "{msg}"
    );
}

#[test]
fn attach_hub_refuses_bad_names_and_missing_hubs_with_messages() {
    let mut c = ptr::null_mut();
    let hub = unique("nohub");
    // SAFETY: valid pointers.
    unsafe {
        refused(
            vr_control_attach_hub(hub.as_ptr(), c"loudness".as_ptr(), &mut c),
            VR_E_INVALID,
            "\"speech\" or \"value0\"",
        );
        refused(
            vr_control_attach_hub(hub.as_ptr(), c"speech".as_ptr(), &mut c),
            VR_E_NOT_FOUND,
            "voxring serve --name",
        );
        assert_eq!(
            vr_control_attach_hub(c"../x".as_ptr(), c"speech".as_ptr(), &mut c),
            VR_E_INVALID
        );
        assert_eq!(
            vr_control_attach_hub(hub.as_ptr(), ptr::null(), &mut c),
            VR_E_NULL
        );
        assert!(c.is_null());
    }
}
