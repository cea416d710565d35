//! The producer side: [`vr_writer`], its grants and commits, and its socket fallback server.

use std::ffi::c_char;
use std::path::PathBuf;

use voxring_core::{FrameFlags, WriteToken};
use voxring_linux::fallback::{FallbackServer, default_socket_path};
use voxring_linux::ring::{Segment, ShmProducer, SpaceWait};
use voxring_linux::segment::{AttachOptions, CreateOptions};

use crate::boundary::*;
use crate::status::*;
use crate::types::*;

/// A producer handle (opaque).
#[derive(Debug)]
pub struct vr_writer {
    /// The open write grant, held by value: core checks it on commit (a stale one is an
    /// error), and dropping the producer abandons it (commits nothing).
    grant: Option<WriteToken>,
    // Field order: the producer gives up its side before the fallback server (which joined the
    // ring as a consumer) stops, and both before the segment is unmapped.
    producer: ShmProducer,
    server: Option<FallbackServer>,
    segment: Segment,
    xruns: u64,
    frames: u64,
}

impl vr_writer {
    fn new(segment: Segment) -> Fallible<Self> {
        let producer = segment.producer().map_err(participant_err)?;
        Ok(vr_writer {
            grant: None,
            producer,
            server: None,
            segment,
            xruns: 0,
            frames: 0,
        })
    }

    /// The producer, when no grant is open.
    fn producer(&mut self) -> Fallible<&mut ShmProducer> {
        unless_grant_open(
            &self.grant,
            &mut self.producer,
            "a write grant is open: commit it (vr_write_commit) first",
        )
    }

    fn consumers(&self) -> u32 {
        let ring = self.segment.ring();
        (0..ring.config().max_consumers)
            .filter(|&i| ring.consumer_owner(i).is_some())
            .count() as u32
    }
}

/// Creates `/dev/shm/voxring.<name>` holding a new ring and claims its producer side. The
/// segment is removed when the writer is destroyed.
///
/// # Safety
/// `name` must be a NUL-terminated string, `config` and `out` valid pointers (or null, which
/// is refused).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_writer_create(
    name: *const c_char,
    config: *const vr_config,
    out: *mut *mut vr_writer,
) -> i32 {
    let open = |name: String| -> Fallible<vr_writer> {
        if config.is_null() {
            return err(VR_E_NULL, "config is null");
        }
        // SAFETY: non-null, valid (caller).
        let cfg = unsafe { *config }.to_ring()?;
        let seg = Segment::create(&name, &cfg, &CreateOptions::default())
            .map_err(|e| (create_code(&e), e.to_string()))?;
        vr_writer::new(seg)
    };
    // SAFETY: the caller's promises on `name` and `out`, passed on.
    unsafe { open_named(name, out, open) }
}

/// Attaches to an existing segment and claims its producer side.
///
/// # Safety
/// As [`vr_writer_create`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_writer_attach(name: *const c_char, out: *mut *mut vr_writer) -> i32 {
    let open = |name: String| -> Fallible<vr_writer> {
        let seg = Segment::attach(&name, &AttachOptions::default())
            .map_err(|e| (attach_code(&e), e.to_string()))?;
        vr_writer::new(seg)
    };
    // SAFETY: the caller's promises on `name` and `out`, passed on.
    unsafe { open_named(name, out, open) }
}

/// Destroys a writer: drops an open grant (committing nothing), gives up the producer side,
/// stops its fallback server and unmaps (and removes, if it created it) the segment. Null is
/// ignored.
///
/// # Safety
/// `w` must be null or a live writer, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_writer_destroy(w: *mut vr_writer) {
    // SAFETY: the caller's promise; handles are made by `give_out`.
    unsafe { destroy(w) }
}

/// Starts the socket fallback for this ring: readers that cannot map the segment connect to
/// `socket_path` and get the same frames. Null: `voxring.<name>.sock` in the default socket
/// directory, one only this user can create names in (`$VOXRING_FALLBACK_DIR` if set and
/// safe, else `$XDG_RUNTIME_DIR/voxring`, else a 0700 `voxring-<uid>` in the temporary
/// directory); a directory another user made first is refused (`VR_E_PERMISSION`). `mode` is
/// the socket file's permission bits (e.g. 0600; 0666 lets any user who can reach the
/// directory read the ring through it); the socket never has a wider mode, not even while it
/// is bound. Anything already at the path but this user's own stale socket is refused.
///
/// # Safety
/// `w` a live writer; `socket_path` null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_writer_serve_fallback(
    w: *mut vr_writer,
    socket_path: *const c_char,
    mode: u32,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        let path = if socket_path.is_null() {
            let name = w
                .segment
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("voxring."))
                .unwrap_or("memfd")
                .to_owned();
            default_socket_path(&name).map_err(|e| (fallback_code(&e), e.to_string()))?
        } else {
            // SAFETY: the caller's promise.
            PathBuf::from(unsafe { name_arg(socket_path, "socket_path") }?)
        };
        let server = FallbackServer::serve(&w.segment, &path, mode & 0o777).map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
                VR_E_PERMISSION
            } else {
                VR_E_IO
            };
            (code, FallbackServer::serve_failure(&path, &e))
        })?;
        w.server = Some(server);
        Ok(VR_OK)
    })
}

/// Lossless ring: waits until a frame may be free, at most `timeout_ns` (negative: forever).
/// Returns `VR_OK` (try `vr_write_grant` again) or `VR_E_TIMEOUT`. Lossy: `VR_OK` at once.
///
/// # Safety
/// `w` a live writer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_writer_wait(w: *mut vr_writer, timeout_ns: i64) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        let p = w.producer()?;
        match p.wait_for_space(timeout_arg(timeout_ns)) {
            Ok(SpaceWait::Ready) => Ok(VR_OK),
            Ok(SpaceWait::TimedOut) => Ok(VR_E_TIMEOUT),
            Err(e) => err(grant_code(&e), e.to_string()),
        }
    })
}

/// Grants up to `n` frames to fill in place; `frames` (room for `n`) receives them and
/// `*granted` their number. `VR_E_FULL` when none is free (lossless).
///
/// # Safety
/// `w` a live writer; `frames` valid for `n` writes; `granted` valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_write_grant(
    w: *mut vr_writer,
    n: usize,
    frames: *mut vr_frame,
    granted: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        // SAFETY: the caller's promise.
        let outs = unsafe { GrantOuts::new(frames, n, granted) }?;
        let p = w.producer()?.producer();
        let token = p
            .grant_token(n)
            .map_err(|e| (grant_code(&e), e.to_string()))?;
        for i in 0..token.len() {
            let Some(mut f) = p.token_frame_mut(token, i) else {
                break;
            };
            let seq = f.seq();
            outs.put(i, vr_frame::for_writing(seq, f.payload_mut()));
        }
        w.grant = Some(token);
        outs.set_granted(token.len());
        Ok(VR_OK)
    })
}

/// Commits the first `k` frames of the open write grant (the rest are abandoned) and wakes
/// parked readers. If `meta` is not null, frame `i`'s `sample_pos`, `timestamp_ns`, `flags`
/// and `len` are taken from `meta[i]` first (`len` must not exceed the capacity).
///
/// # Safety
/// `w` a live writer; `meta` null or valid for `k` reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_write_commit(
    w: *mut vr_writer,
    meta: *const vr_frame,
    k: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        let Some(token) = w.grant else {
            return err(
                VR_E_NO_GRANT,
                "no write grant is open: call vr_write_grant first",
            );
        };
        if k > token.len() {
            return err(
                VR_E_NO_GRANT,
                format!("commit of {k} frames, {} granted", token.len()),
            );
        }
        let (p, waiter) = w.producer.parts();
        let mut xruns = 0;
        if !meta.is_null() {
            for i in 0..k {
                // SAFETY: `meta` valid for `k` reads (caller).
                let m = unsafe { meta.add(i).read() };
                if let Some(mut f) = p.token_frame_mut(token, i) {
                    f.set_sample_pos(m.sample_pos);
                    f.set_timestamp_ns(m.timestamp_ns);
                    f.set_flags(FrameFlags(m.flags));
                    if f.set_len(m.len).is_err() {
                        return err(
                            VR_E_INVALID,
                            format!("frame {i}: len {} exceeds the slot capacity", m.len),
                        );
                    }
                }
                if m.flags & VR_FLAG_XRUN != 0 {
                    xruns += 1;
                }
            }
        }
        // Whatever the outcome, this grant is over: a stale token stays an error.
        w.grant = None;
        let wake = p
            .commit_token(token, k)
            .map_err(|e| (VR_E_INVALID, e.to_string()))?;
        wake.wake(waiter);
        w.xruns += xruns;
        w.frames += k as u64;
        Ok(VR_OK)
    })
}

/// Where the writer's frames live (the shared mapping).
///
/// # Safety
/// `w` a live writer; `out` valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_writer_info(w: *mut vr_writer, out: *mut vr_info) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        // SAFETY: the caller's promise.
        unsafe { write_out(out, shm_info(&w.segment)) }?;
        Ok(VR_OK)
    })
}

/// The writer's counters.
///
/// # Safety
/// `w` a live writer; `out` valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vr_writer_status(w: *mut vr_writer, out: *mut vr_status) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        let pos = w.segment.ring().write_pos();
        let s = vr_status {
            write_pos: pos,
            read_pos: pos,
            lag: 0,
            lost_frames: 0,
            xruns: w.xruns,
            frames: w.frames,
            consumers: w.consumers(),
            reserved: 0,
        };
        // SAFETY: the caller's promise.
        unsafe { write_out(out, s) }?;
        Ok(VR_OK)
    })
}
