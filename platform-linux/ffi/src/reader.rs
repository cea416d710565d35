//! The consumer side: [`vr_reader`] over the shared segment or the producer's socket
//! fallback, its waits, grants and releases.

use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Duration;

use voxring_core::{FrameFlags, FrameMeta, ReadToken, ReleaseError};
use voxring_linux::fallback::{FallbackRead, FallbackReader, default_socket_path};
use voxring_linux::ring::{FramesWait, Segment, ShmConsumer};
use voxring_linux::segment::AttachOptions;

use crate::boundary::*;
use crate::status::*;
use crate::types::*;

#[derive(Debug)]
struct ShmReader {
    /// The open read grant, held by value: core checks it on release (a stale one is an
    /// error), and dropping the consumer abandons it (releases nothing).
    grant: Option<ReadToken>,
    // Field order: the consumer leaves the ring before the segment is unmapped.
    consumer: ShmConsumer,
    segment: Segment,
}

impl ShmReader {
    /// The consumer, when no grant is open.
    fn consumer(&mut self) -> Fallible<&mut ShmConsumer> {
        unless_grant_open(
            &self.grant,
            &mut self.consumer,
            "a read grant is open: release it (vr_read_release) first",
        )
    }
}

#[derive(Debug)]
enum Transport {
    Shm(ShmReader),
    Socket(FallbackReader),
}

/// A reader handle (opaque).
#[derive(Debug)]
pub struct vr_reader {
    transport: Transport,
    /// Why the socket fallback is used (empty for shared memory).
    reason: String,
    xruns: u64,
    frames: u64,
}

fn open_shm(name: &str, expected_owner: Option<u32>) -> Fallible<ShmReader> {
    let opts = AttachOptions {
        expected_owner,
        ..AttachOptions::default()
    };
    let seg = Segment::attach(name, &opts).map_err(|e| (attach_code(&e), e.to_string()))?;
    let consumer = seg.consumer().map_err(participant_err)?;
    Ok(ShmReader {
        grant: None,
        consumer,
        segment: seg,
    })
}

/// Opens a reader of the ring `name`: attaches to its segment and joins as a consumer
/// (reading starts at the current write position). If that fails for a reason the socket
/// fallback can get around (the segment is missing here, or permission is refused) and
/// `flags` lacks `VR_OPEN_NO_FALLBACK`, connects to the producer's fallback socket
/// (`socket_path`, or null for the default path; see `vr_writer_serve_fallback`) instead.
/// `vr_reader_transport` then says `VR_TRANSPORT_SOCKET_FALLBACK` and
/// `vr_reader_transport_reason` why. If both fail, the error names both reasons.
///
/// The segment and the fallback server must belong to this process's effective uid (the
/// server's uid is checked with `SO_PEERCRED` before anything is read); to read another
/// user's ring, use `vr_reader_open_ex` with its uid. A server whose greeting asks for a
/// receive buffer above 256 MiB is refused before anything is allocated.
///
/// # Safety
/// `name` NUL-terminated; `socket_path` null or NUL-terminated; `out` valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_reader_open(
    name: *const c_char,
    socket_path: *const c_char,
    flags: u32,
    out: *mut *mut vr_reader,
) -> i32 {
    // SAFETY: the caller's promises, passed on.
    unsafe { vr_reader_open_ex(name, socket_path, flags, -1, out) }
}

/// As `vr_reader_open`, trusting the user `expected_owner` instead of this process's: the
/// segment file must be owned by that uid and the fallback server must run as it (checked
/// with `SO_PEERCRED`). A negative `expected_owner` means this process's effective uid.
///
/// # Safety
/// As `vr_reader_open`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_reader_open_ex(
    name: *const c_char,
    socket_path: *const c_char,
    flags: u32,
    expected_owner: i64,
    out: *mut *mut vr_reader,
) -> i32 {
    let open = |name: String| -> Fallible<vr_reader> {
        let owner = if expected_owner < 0 {
            None
        } else {
            Some(u32::try_from(expected_owner).map_err(|_| {
                (
                    VR_E_INVALID,
                    format!("expected_owner {expected_owner} is not a uid (0 ..= 4294967295)"),
                )
            })?)
        };
        let explicit = if socket_path.is_null() {
            None
        } else {
            // SAFETY: the caller's promise.
            Some(PathBuf::from(unsafe {
                name_arg(socket_path, "socket_path")
            }?))
        };
        // The default path is only worked out (and its directory made) when it is used.
        let fallback = |why: &str| -> Fallible<FallbackReader> {
            let path = match &explicit {
                Some(p) => p.clone(),
                None => default_socket_path(&name).map_err(|e| {
                    (
                        fallback_code(&e),
                        format!("{why}; the socket fallback failed too: {e}"),
                    )
                })?,
            };
            connect_fallback(&path, why, owner)
        };
        let (transport, reason) = if flags & VR_OPEN_FORCE_FALLBACK != 0 {
            let r = fallback("VR_OPEN_FORCE_FALLBACK was given")?;
            (
                Transport::Socket(r),
                "VR_OPEN_FORCE_FALLBACK was given".to_owned(),
            )
        } else {
            match open_shm(&name, owner) {
                Ok(r) => (Transport::Shm(r), String::new()),
                Err((code, msg))
                    if flags & VR_OPEN_NO_FALLBACK == 0
                        && matches!(code, VR_E_NOT_FOUND | VR_E_PERMISSION | VR_E_ATTACH) =>
                {
                    let reason = format!("attaching the shared segment failed: {msg}");
                    let r = fallback(&reason)?;
                    (Transport::Socket(r), reason)
                }
                Err(e) => return Err(e),
            }
        };
        Ok(vr_reader {
            transport,
            reason,
            xruns: 0,
            frames: 0,
        })
    };
    // SAFETY: the caller's promises on `name` and `out`, passed on.
    unsafe { open_named(name, out, open) }
}

fn connect_fallback(
    path: &std::path::Path,
    why: &str,
    expected_owner: Option<u32>,
) -> Fallible<FallbackReader> {
    FallbackReader::connect_expecting(path, Duration::from_secs(5), expected_owner).map_err(|e| {
        (
            fallback_code(&e),
            format!("{why}; the socket fallback failed too: {e}"),
        )
    })
}

/// Destroys a reader: drops an open grant (releasing nothing), leaves the ring and unmaps it
/// (or closes the fallback socket). Null is ignored.
///
/// # Safety
/// `r` null or a live reader, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_reader_destroy(r: *mut vr_reader) {
    // SAFETY: the caller's promise; handles are made by `give_out`.
    unsafe { destroy(r) }
}

/// `VR_TRANSPORT_SHM` or `VR_TRANSPORT_SOCKET_FALLBACK` (or `VR_E_NULL`).
///
/// # Safety
/// `r` null or a live reader.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_reader_transport(r: *mut vr_reader) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let r = unsafe { handle(r) }?;
        Ok(match r.transport {
            Transport::Shm(_) => VR_TRANSPORT_SHM,
            Transport::Socket(_) => VR_TRANSPORT_SOCKET_FALLBACK,
        })
    })
}

/// Why the reader uses the socket fallback (empty for shared memory), copied like
/// `vr_last_error`; returns the full length.
///
/// # Safety
/// `r` null or a live reader; `buf` null or valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_reader_transport_reason(
    r: *mut vr_reader,
    buf: *mut c_char,
    len: usize,
) -> usize {
    catch_unwind(AssertUnwindSafe(|| {
        if r.is_null() {
            return 0;
        }
        // SAFETY: non-null and live (caller).
        let r = unsafe { &*r };
        // SAFETY: the caller's promise on `buf`.
        unsafe { copy_out(&r.reason, buf, len) }
    }))
    .unwrap_or(0)
}

/// Waits until a frame may be ready, at most `timeout_ns` (negative: forever). Returns
/// `VR_OK` (call `vr_read_grant`), `VR_E_TIMEOUT`, or `VR_E_END_OF_STREAM` (the producer is
/// gone and everything was read). Blocking: spins briefly, then sleeps on a futex (or
/// `poll(2)` on the fallback socket).
///
/// # Safety
/// `r` a live reader.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_reader_wait(r: *mut vr_reader, timeout_ns: i64) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let r = unsafe { handle(r) }?;
        let t = timeout_arg(timeout_ns);
        let outcome = match &mut r.transport {
            Transport::Shm(s) => s.consumer()?.wait_for_frames(t).map_err(|e| match e {
                voxring_linux::ring::WaitError::Read(e) => read_err(e),
                e => (VR_E_TRUNCATED, e.to_string()),
            })?,
            Transport::Socket(f) => f.wait(t).map_err(|e| (VR_E_IO, e.to_string()))?,
        };
        Ok(match outcome {
            FramesWait::Ready => VR_OK,
            FramesWait::TimedOut => VR_E_TIMEOUT,
            FramesWait::EndOfStream => VR_E_END_OF_STREAM,
        })
    })
}

/// Grants up to `n` committed frames to read in place; `frames` (room for `n`) receives them
/// and `*granted` their number. `VR_E_EMPTY` when none is ready; `VR_E_LOST` when the reader
/// was lapped (lossy; the count is in `vr_reader_status`; read again).
///
/// # Safety
/// `r` a live reader; `frames` valid for `n` writes; `granted` valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_read_grant(
    r: *mut vr_reader,
    n: usize,
    frames: *mut vr_frame,
    granted: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let r = unsafe { handle(r) }?;
        // SAFETY: the caller's promise.
        let outs = unsafe { GrantOuts::new(frames, n, granted) }?;
        // None until a grant is made (the count is written again below).
        outs.set_granted(0);
        let put = |i, meta, data, cap| outs.put(i, vr_frame::for_reading(meta, data, cap));
        let len = match &mut r.transport {
            Transport::Shm(s) => {
                let cap = s.segment.ring().payload_bytes();
                let c = s.consumer()?.consumer();
                let token = c.read_token(n).map_err(read_err)?;
                for i in 0..token.len() {
                    if let Some(f) = c.token_frame(token, i) {
                        put(i, f.meta(), f.payload().as_ptr(), cap);
                    }
                }
                s.grant = Some(token);
                token.len()
            }
            Transport::Socket(f) => match f.read_grant(n).map_err(|e| (VR_E_IO, e.to_string()))? {
                FallbackRead::Frames(len) => {
                    let cap = f.payload_bytes() as u32;
                    for i in 0..len {
                        if let Some(fr) = f.frame(i) {
                            put(i, fr.meta, fr.payload.as_ptr(), cap);
                        }
                    }
                    len
                }
                FallbackRead::Empty | FallbackRead::EndOfStream => {
                    return err(VR_E_EMPTY, "no frame is ready");
                }
                FallbackRead::Lost(k) => {
                    return err(VR_E_LOST, format!("the reader lost {k} frames"));
                }
            },
        };
        outs.set_granted(len);
        Ok(VR_OK)
    })
}

/// Releases the first `k` frames of the open read grant (the rest will be granted again).
/// Lossy ring: `VR_E_OVERWRITTEN` when some were overwritten while read (discard their data;
/// the position advanced and `lost_frames` counts them).
///
/// # Safety
/// `r` a live reader.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_read_release(r: *mut vr_reader, k: usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let r = unsafe { handle(r) }?;
        let xruns;
        match &mut r.transport {
            Transport::Shm(s) => {
                let token = check_release(s.grant, ReadToken::len, k)?;
                let (c, waiter) = s.consumer.parts();
                xruns = xruns_in((0..k).filter_map(|i| c.token_frame(token, i).map(|f| f.meta())));
                // Whatever the outcome, this grant is over: a stale token stays an error.
                s.grant = None;
                match c.release_token(token, k) {
                    Ok(wake) => wake.wake(waiter),
                    Err(e @ ReleaseError::Overwritten { .. }) => {
                        r.frames += k as u64;
                        return err(VR_E_OVERWRITTEN, e.to_string());
                    }
                    Err(e @ ReleaseError::Evicted) => return err(VR_E_EVICTED, e.to_string()),
                    Err(e) => return err(VR_E_INVALID, e.to_string()),
                }
            }
            Transport::Socket(f) => {
                check_release((f.granted() > 0).then(|| f.granted()), |n| *n, k)?;
                xruns = xruns_in((0..k).filter_map(|i| f.frame(i).map(|fr| fr.meta)));
                f.release(k);
            }
        }
        r.xruns += xruns;
        r.frames += k as u64;
        Ok(VR_OK)
    })
}

/// The open grant, if `k` frames of it may be released: refused when none is open or it
/// holds fewer than `k`.
fn check_release<G>(grant: Option<G>, len: impl Fn(&G) -> usize, k: usize) -> Fallible<G> {
    match grant {
        None => err(
            VR_E_NO_GRANT,
            "no read grant is open: call vr_read_grant first",
        ),
        Some(g) if k > len(&g) => err(
            VR_E_NO_GRANT,
            format!("release of {k} frames, {} granted", len(&g)),
        ),
        Some(g) => Ok(g),
    }
}

/// How many of `frames` carry `VR_FLAG_XRUN`.
fn xruns_in(frames: impl Iterator<Item = FrameMeta>) -> u64 {
    frames
        .filter(|m| m.flags.contains(FrameFlags::XRUN))
        .count() as u64
}

/// Where the reader's frames live: the shared mapping, or the fallback reader's buffer.
///
/// # Safety
/// `r` a live reader; `out` valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_reader_info(r: *mut vr_reader, out: *mut vr_info) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let r = unsafe { handle(r) }?;
        let info = match &r.transport {
            Transport::Shm(s) => shm_info(&s.segment),
            Transport::Socket(f) => {
                let (mem, len) = f.buffer();
                vr_info {
                    config: vr_config::from_ring(&f.config()),
                    payload_bytes: f.payload_bytes() as u32,
                    transport: VR_TRANSPORT_SOCKET_FALLBACK,
                    memory: mem,
                    memory_len: len as u64,
                    slots_offset: 0,
                    slot_size: f.slot_stride() as u64,
                    payload_offset: 0,
                }
            }
        };
        // SAFETY: the caller's promise.
        unsafe { write_out(out, info) }?;
        Ok(VR_OK)
    })
}

/// The reader's counters (lag, lost frames, xruns).
///
/// # Safety
/// `r` a live reader; `out` valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_reader_status(r: *mut vr_reader, out: *mut vr_status) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let r = unsafe { handle(r) }?;
        let (write_pos, read_pos, lost) = match &mut r.transport {
            Transport::Shm(s) => {
                let c = s.consumer.consumer();
                (s.segment.ring().write_pos(), c.read_pos(), c.lost_frames())
            }
            Transport::Socket(f) => (r.frames + f.buffered(), r.frames, f.lost_frames()),
        };
        let s = vr_status {
            write_pos,
            read_pos,
            lag: write_pos.saturating_sub(read_pos),
            lost_frames: lost,
            xruns: r.xruns,
            frames: r.frames,
            consumers: 0,
            reserved: 0,
        };
        // SAFETY: the caller's promise.
        unsafe { write_out(out, s) }?;
        Ok(VR_OK)
    })
}
