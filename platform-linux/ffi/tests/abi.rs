//! The C ABI called the way a careless C program would: null handles and out-pointers, calls
//! out of order, oversized values. Every call must return an error code with a message, never
//! crash.

use std::ffi::{CStr, CString};
use std::ptr;

use voxring_ffi::*;

mod common;
use common::{last_error, ok, refused, unique_c};

/// The writer's status, which the call must give.
///
/// # Safety
/// `w` a live writer.
unsafe fn writer_status(w: *mut vr_writer) -> vr_status {
    let mut st = vr_status::default();
    // SAFETY: the caller's promise; `st` is valid.
    ok(unsafe { vr_writer_status(w, &mut st) });
    st
}

/// The reader's status, which the call must give.
///
/// # Safety
/// `r` a live reader.
unsafe fn reader_status(r: *mut vr_reader) -> vr_status {
    let mut st = vr_status::default();
    // SAFETY: the caller's promise; `st` is valid.
    ok(unsafe { vr_reader_status(r, &mut st) });
    st
}

fn unique(tag: &str) -> CString {
    unique_c("abi", tag)
}

/// Ends an open grant after one frame with `end` (a commit or a release), then calls `end`
/// again: the second call must be refused with a message naming `grant_call` (what to call
/// first) and change nothing, so `pos_frames` (the handle's position and frame count) still
/// reads one frame through.
#[track_caller]
fn ends_only_once(end: impl Fn() -> i32, grant_call: &str, pos_frames: impl Fn() -> (u64, u64)) {
    ok(end());
    refused(end(), VR_E_NO_GRANT, grant_call);
    assert_eq!(pos_frames(), (1, 1), "the second call did something");
}

/// `N` zeroed frames for grants to fill.
fn empty_frames<const N: usize>() -> [vr_frame; N] {
    [vr_frame {
        seq: 0,
        sample_pos: 0,
        timestamp_ns: 0,
        flags: 0,
        len: 0,
        data: ptr::null_mut(),
        capacity: 0,
        reserved: 0,
    }; N]
}

#[test]
fn null_pointers_are_refused_with_a_code() {
    let mut n = 0usize;
    let mut f = empty_frames::<1>();
    // SAFETY: null handles and pointers are exactly what these calls must refuse.
    unsafe {
        refused(
            vr_writer_create(ptr::null(), ptr::null(), ptr::null_mut()),
            VR_E_NULL,
            "null",
        );
        assert_eq!(
            vr_reader_open(ptr::null(), ptr::null(), 0, ptr::null_mut()),
            VR_E_NULL
        );
        assert_eq!(
            vr_read_grant(ptr::null_mut(), 1, f.as_mut_ptr(), &mut n),
            VR_E_NULL
        );
        assert_eq!(vr_read_release(ptr::null_mut(), 1), VR_E_NULL);
        assert_eq!(vr_reader_wait(ptr::null_mut(), 0), VR_E_NULL);
        assert_eq!(
            vr_write_grant(ptr::null_mut(), 1, f.as_mut_ptr(), &mut n),
            VR_E_NULL
        );
        assert_eq!(vr_write_commit(ptr::null_mut(), ptr::null(), 0), VR_E_NULL);
        assert_eq!(
            vr_writer_status(ptr::null_mut(), ptr::null_mut()),
            VR_E_NULL
        );
        assert_eq!(vr_control_write(ptr::null_mut(), ptr::null(), 0), VR_E_NULL);
        assert_eq!(vr_reader_transport(ptr::null_mut()), VR_E_NULL);
        assert_eq!(
            vr_reader_transport_reason(ptr::null_mut(), ptr::null_mut(), 0),
            0
        );
        vr_reader_destroy(ptr::null_mut());
        vr_writer_destroy(ptr::null_mut());
        vr_control_destroy(ptr::null_mut());
    }
    for code in [VR_OK, VR_E_NULL, VR_E_PANIC, VR_E_UNSUPPORTED, -1000] {
        // SAFETY: vr_strerror returns a static NUL-terminated string for any code.
        let s = unsafe { CStr::from_ptr(vr_strerror(code)) };
        assert!(!s.to_bytes().is_empty());
    }
}

#[test]
fn calls_out_of_order_and_bad_values_are_refused() {
    let name = unique("order");
    let bad = vr_config {
        frames: 3, // not a power of two
        samples_per_frame: 512,
        channels: 1,
        format: VR_FORMAT_S16,
        sample_rate: 48_000,
        max_consumers: 2,
        policy: VR_POLICY_LOSSLESS,
    };
    let mut w: *mut vr_writer = ptr::null_mut();
    // SAFETY: valid pointers throughout; the handles are destroyed at the end.
    unsafe {
        assert_eq!(vr_writer_create(name.as_ptr(), &bad, &mut w), VR_E_INVALID);
        assert!(w.is_null());
        let cfg = vr_config { frames: 4, ..bad };
        let bad_policy = vr_config { policy: 9, ..cfg };
        assert_eq!(
            vr_writer_create(name.as_ptr(), &bad_policy, &mut w),
            VR_E_INVALID
        );
        ok(vr_writer_create(name.as_ptr(), &cfg, &mut w));
        assert_eq!(vr_write_commit(w, ptr::null(), 1), VR_E_NO_GRANT);
        let mut f = empty_frames::<2>();
        let mut n = 0;
        assert_eq!(vr_write_grant(w, 2, f.as_mut_ptr(), &mut n), VR_OK);
        assert_eq!(n, 2);
        assert_eq!(
            vr_write_grant(w, 1, f.as_mut_ptr(), &mut n),
            VR_E_GRANT_OPEN
        );
        assert_eq!(vr_write_commit(w, ptr::null(), 3), VR_E_NO_GRANT);
        f[0].len = f[0].capacity + 1;
        refused(vr_write_commit(w, f.as_ptr(), 1), VR_E_INVALID, "capacity");
        f[0].len = 10;
        assert_eq!(vr_write_commit(w, f.as_ptr(), 1), VR_OK);

        let mut r: *mut vr_reader = ptr::null_mut();
        assert_eq!(
            vr_reader_open(name.as_ptr(), ptr::null(), VR_OPEN_NO_FALLBACK, &mut r),
            VR_OK
        );
        assert_eq!(vr_read_release(r, 1), VR_E_NO_GRANT);
        assert_eq!(vr_read_grant(r, 1, f.as_mut_ptr(), &mut n), VR_E_EMPTY);
        assert_eq!(vr_reader_wait(r, 1_000_000), VR_E_TIMEOUT);
        let st = writer_status(w);
        assert_eq!((st.write_pos, st.consumers), (1, 1));
        vr_reader_destroy(r);
        vr_writer_destroy(w);
    }
    let path = format!("/dev/shm/voxring.{}", name.to_str().expect("utf-8"));
    assert!(
        !std::path::Path::new(&path).exists(),
        "the writer removed its segment"
    );
}

/// The grants a handle holds between calls are checked on every commit and release: a second
/// commit or release of the same grant, one of more frames than granted, and waits while a
/// grant is open are refused with a code and change nothing; a refused oversized commit or
/// release leaves the grant open for a correct one.
#[test]
fn grants_are_checked_on_commit_and_release() {
    let name = unique("grants");
    let cfg = vr_config {
        frames: 4,
        samples_per_frame: 16,
        channels: 1,
        format: VR_FORMAT_S16,
        sample_rate: 48_000,
        max_consumers: 1,
        policy: VR_POLICY_LOSSLESS,
    };
    let mut w: *mut vr_writer = ptr::null_mut();
    let mut r: *mut vr_reader = ptr::null_mut();
    let mut f = empty_frames::<4>();
    let mut n = 0usize;
    // SAFETY: valid pointers throughout; the handles are destroyed at the end.
    unsafe {
        ok(vr_writer_create(name.as_ptr(), &cfg, &mut w));
        ok(vr_reader_open(
            name.as_ptr(),
            ptr::null(),
            VR_OPEN_NO_FALLBACK,
            &mut r,
        ));

        // Writer: commit without a grant, twice the same grant, more than granted.
        assert_eq!(vr_write_commit(w, ptr::null(), 0), VR_E_NO_GRANT);
        assert_eq!(vr_write_grant(w, 2, f.as_mut_ptr(), &mut n), VR_OK);
        assert_eq!((n, f[0].seq, f[1].seq), (2, 0, 1));
        assert_eq!(vr_writer_wait(w, 0), VR_E_GRANT_OPEN);
        refused(
            vr_write_commit(w, ptr::null(), 3),
            VR_E_NO_GRANT,
            "3 frames, 2 granted",
        );
        let st = writer_status(w);
        assert_eq!(st.write_pos, 0, "a refused commit publishes nothing");
        ends_only_once(
            || vr_write_commit(w, ptr::null(), 1),
            "vr_write_grant",
            || {
                let st = writer_status(w);
                (st.write_pos, st.frames)
            },
        );
        // The abandoned frame (seq 1) is granted again.
        assert_eq!(vr_write_grant(w, 1, f.as_mut_ptr(), &mut n), VR_OK);
        assert_eq!((n, f[0].seq), (1, 1));
        assert_eq!(vr_write_commit(w, ptr::null(), 1), VR_OK);

        // Reader: release without a grant, twice the same grant, more than granted.
        assert_eq!(vr_read_release(r, 0), VR_E_NO_GRANT);
        assert_eq!(vr_read_grant(r, 4, f.as_mut_ptr(), &mut n), VR_OK);
        assert_eq!((n, f[0].seq, f[1].seq), (2, 0, 1));
        assert_eq!(vr_reader_wait(r, 0), VR_E_GRANT_OPEN);
        assert_eq!(vr_read_grant(r, 1, f.as_mut_ptr(), &mut n), VR_E_GRANT_OPEN);
        refused(vr_read_release(r, 3), VR_E_NO_GRANT, "3 frames, 2 granted");
        let st = reader_status(r);
        assert_eq!(
            (st.read_pos, st.lag),
            (0, 2),
            "a refused release frees nothing"
        );
        ends_only_once(
            || vr_read_release(r, 1),
            "vr_read_grant",
            || {
                let st = reader_status(r);
                (st.read_pos, st.frames)
            },
        );
        // The unreleased frame (seq 1) is granted again.
        assert_eq!(vr_read_grant(r, 4, f.as_mut_ptr(), &mut n), VR_OK);
        assert_eq!((n, f[0].seq), (1, 1));

        // Destroying handles with open grants commits and releases nothing and frees them.
        assert_eq!(vr_write_grant(w, 2, f.as_mut_ptr(), &mut n), VR_OK);
        vr_reader_destroy(r);
        let st = writer_status(w);
        assert_eq!((st.write_pos, st.consumers), (2, 0));
        vr_writer_destroy(w);
    }
}

#[test]
fn control_register_checks_sizes() {
    let name = unique("ctl");
    let mut c: *mut vr_control = ptr::null_mut();
    // SAFETY: valid pointers; the handle is destroyed at the end.
    unsafe {
        ok(vr_control_create(name.as_ptr(), &mut c));
        let big = [1u8; 65];
        assert_eq!(
            vr_control_write(c, big.as_ptr().cast(), big.len()),
            VR_E_INVALID
        );
        assert_eq!(vr_control_write(c, big.as_ptr().cast(), 64), VR_OK);
        let mut out = [0u8; 64];
        let mut v = 0u64;
        assert_eq!(
            vr_control_read(c, out.as_mut_ptr().cast(), 64, &mut v),
            VR_OK
        );
        assert_eq!((out, v), ([1u8; 64], 1));
        assert_eq!(
            vr_control_read(c, out.as_mut_ptr().cast(), 65, &mut v),
            VR_E_INVALID
        );
        vr_control_destroy(c);
    }
}

/// Attacks on a control register's segment by a peer with write access to it: its magic
/// overwritten, then the file grown. Attaching refuses both with a code and a message (core
/// validates the register; the segment must be exactly the register's size), and never
/// hands out a handle to the damaged segment.
#[test]
fn control_register_attach_refuses_a_forged_or_grown_segment() {
    use std::io::{Seek, SeekFrom, Write};
    let name = unique("ctl-forged");
    let path = format!("/dev/shm/voxring.{}", name.to_str().expect("utf-8"));
    let mut owner: *mut vr_control = ptr::null_mut();
    let mut c: *mut vr_control = ptr::null_mut();
    // SAFETY: valid pointers; the handles are destroyed at the end.
    unsafe {
        ok(vr_control_create(name.as_ptr(), &mut owner));
        ok(vr_control_attach(name.as_ptr(), &mut c));
        vr_control_destroy(c);
        c = ptr::null_mut();
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("the segment is this user's");
    let size = file.metadata().expect("stat").len();
    // The attack: the magic forged.
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.write_all(&[0x5a; 8]).expect("forge the magic");
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(vr_control_attach(name.as_ptr(), &mut c), VR_E_ATTACH);
        assert!(c.is_null(), "no handle to a forged register");
        let msg = last_error();
        assert!(msg.contains("not a control register"), "{msg}");
        assert!(msg.contains("magic"), "{msg}");
    }
    // The attack: the segment grown by a page.
    file.set_len(size + 4096).expect("grow the segment");
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(vr_control_attach(name.as_ptr(), &mut c), VR_E_ATTACH);
        assert!(c.is_null(), "no handle to a grown register segment");
        let msg = last_error();
        assert!(msg.contains(&format!("{}", size + 4096)), "{msg}");
        vr_control_destroy(owner);
    }
    assert!(
        !std::path::Path::new(&path).exists(),
        "the creator removed its segment"
    );
}

/// A greeting the hostile fake server sends: 2^20 frames of 2^22 S32 samples (16 MiB each),
/// a 16 TiB receive buffer (the wire format is in voxring-linux's fallback module).
fn huge_greeting() -> Vec<u8> {
    let mut b = b"VXFB".to_vec();
    for v in [1u32, 2, 1 << 20, 1 << 22, 1, 2, 48_000, 1, 1 << 24] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

/// Attack: a hostile fallback server (same user, so the uid check passes) greets a C reader
/// with a 16 TiB ring. Defeated: an error code and a message, no allocation, no abort.
#[test]
fn hostile_greeting_is_an_error_code_not_an_abort() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("hostile.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(&huge_greeting());
            let _ = s.read(&mut [0u8; 1]);
        }
    });
    let name = unique("hostile");
    let path = std::ffi::CString::new(sock.to_str().expect("utf-8")).expect("no NUL");
    let mut r: *mut vr_reader = ptr::null_mut();
    // SAFETY: valid strings and out-pointer.
    let code =
        unsafe { vr_reader_open(name.as_ptr(), path.as_ptr(), VR_OPEN_FORCE_FALLBACK, &mut r) };
    let msg = last_error();
    assert_eq!(code, VR_E_ATTACH, "{msg}");
    assert!(r.is_null());
    assert!(
        msg.contains("nothing was allocated") && msg.contains("MAX_READER_BUFFER_BYTES"),
        "{msg}"
    );
    server.join().expect("fake server");
}

/// A reader that expects the producer to be another uid refuses this user's server
/// (SO_PEERCRED), with `VR_E_PERMISSION` and both uids; expecting this user reads it.
#[test]
fn reader_refuses_a_fallback_server_of_an_unexpected_uid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("peer.sock");
    let path = std::ffi::CString::new(sock.to_str().expect("utf-8")).expect("no NUL");
    let name = unique("peeruid");
    let me = rustix::process::geteuid().as_raw();
    let other = i64::from(me) + 4242;
    let cfg = vr_config {
        frames: 8,
        samples_per_frame: 64,
        channels: 1,
        format: VR_FORMAT_S16,
        sample_rate: 48_000,
        max_consumers: 2,
        policy: VR_POLICY_LOSSY,
    };
    let mut w: *mut vr_writer = ptr::null_mut();
    let mut r: *mut vr_reader = ptr::null_mut();
    // SAFETY: valid strings, config and out-pointers; handles destroyed at the end.
    unsafe {
        ok(vr_writer_create(name.as_ptr(), &cfg, &mut w));
        ok(vr_writer_serve_fallback(w, path.as_ptr(), 0o600));
        let code = vr_reader_open_ex(
            name.as_ptr(),
            path.as_ptr(),
            VR_OPEN_FORCE_FALLBACK,
            other,
            &mut r,
        );
        let msg = last_error();
        assert_eq!(code, VR_E_PERMISSION, "{msg}");
        assert!(r.is_null());
        assert!(
            msg.contains(&format!("served by uid {me}"))
                && msg.contains(&format!("uid {other} was expected")),
            "{msg}"
        );
        ok(vr_reader_open_ex(
            name.as_ptr(),
            path.as_ptr(),
            VR_OPEN_FORCE_FALLBACK,
            -1,
            &mut r,
        ));
        assert_eq!(vr_reader_transport(r), VR_TRANSPORT_SOCKET_FALLBACK);
        vr_reader_destroy(r);
        vr_writer_destroy(w);
    }
    assert!(!sock.exists(), "the server removed its socket");
}
