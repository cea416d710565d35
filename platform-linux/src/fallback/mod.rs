//! The socket fallback: the frames and metadata of a shared ring, streamed over a Unix socket
//! to readers that cannot map the segment (another container without a shared `/dev/shm`, a
//! user without permission on the segment file).
//!
//! The producer process runs a [`FallbackServer`] next to its [`Segment`]. Every client that
//! connects gets its own consumer slot in the ring, so the ring's policy holds end to end:
//! in the lossless policy a slow socket reader holds the producer back exactly as a slow
//! shared-memory consumer would; in the lossy policy it is lapped and told how many frames it
//! lost. The client side, [`FallbackReader`], offers the same read cycle as a shared-memory
//! consumer (grant, read in place, release, wait), over a private buffer of `frames` slots:
//! one copy per frame (kernel to buffer) instead of none, and a syscall per batch.
//!
//! Nothing here is silent: a reader built by the FFI layer reports `socket-fallback` and the
//! reason the shared-memory attach failed.
//!
//! ## Who can be on the other end
//!
//! - Where sockets live by default ([`default_socket_dir`]): a directory only this user can
//!   create names in (`$XDG_RUNTIME_DIR/voxring`, or `voxring-<uid>` in the temporary
//!   directory, mode 0700, verified without following links); another user's squatted
//!   directory is refused. `$VOXRING_FALLBACK_DIR` overrides it for a directory shared on
//!   purpose, and must be owned by this user or root and not writable by others unless sticky.
//! - The server binds inside a fresh 0700 directory, sets the socket's mode there and renames
//!   it into place without replacing anything ([`FallbackServer::serve`]): the socket is
//!   never reachable with the umask's mode, and nothing found at the path is followed.
//! - The reader checks the server's uid with `SO_PEERCRED` before reading a byte: the same
//!   owner rule as a shared-memory attach (this user, or the `expected_owner` given). A
//!   symbolic link at the socket path is refused.
//! - The greeting is bounded before anything is allocated ([`MAX_READER_BUFFER_BYTES`]),
//!   and the allocation is fallible.
//!
//! The server does not check who connects: the socket's mode and directory decide that (0600
//! in a private directory by default: this user only).
//!
//! ## Wire format (little-endian)
//!
//! Server to client, once: `"VXFB"`, `u32` version (1), then the ring configuration as eight
//! `u32`: policy, frames, samples_per_frame, channels, format, sample_rate, max_consumers,
//! payload_bytes. Then messages, each starting with a `u32` tag:
//! - `1` frame: `u64` seq, `u64` sample_pos, `u64` timestamp_ns, `u32` flags, `u32` len,
//!   then `len` payload bytes (`len <= payload_bytes`);
//! - `2` lost: `u64` frames the server's consumer lost (lossy policy);
//! - `3` end of stream: the producer is gone and every frame was sent;
//! - `4` error: `u32` length (at most 4096), then a UTF-8 message; the server stops.
//!
//! The client sends nothing. Everything read from the socket is checked: an unknown tag, a
//! length above the ring's payload size or an invalid configuration ends the stream with an
//! error instead of being trusted.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use voxring_core::{
    FrameFlags, FrameMeta, Policy, ReadError, ReleaseError, RingConfig, SampleFormat,
};

use crate::cleanup::ArtifactGuard;
use crate::ring::{FramesWait, Segment};
use crate::segment::NameError;

const MAGIC: &[u8; 4] = b"VXFB";
const VERSION: u32 = 1;
const TAG_FRAME: u32 = 1;
const TAG_LOST: u32 = 2;
const TAG_END: u32 = 3;
const TAG_ERROR: u32 = 4;
const MAX_ERROR_LEN: u32 = 4096;
/// Frames the server moves per read grant.
const SERVER_BATCH: usize = 16;

/// The largest receive buffer a [`FallbackReader`] allocates for the ring a server announces
/// (frames × (slot stride + metadata)): 256 MiB. A greeting asking for more is refused with
/// [`FallbackError::GreetingTooLarge`] before anything is allocated. Core's own limits
/// (`MAX_FRAMES` × `MAX_PAYLOAD_BYTES`) allow 16 TiB, which a shared-memory attach never
/// allocates (it maps the file) but a socket reader would have to.
pub const MAX_READER_BUFFER_BYTES: usize = 256 << 20;

/// The directory fallback sockets live in by default; see [`socket_dir_in`] for the rules.
/// Reads `$VOXRING_FALLBACK_DIR`, `$XDG_RUNTIME_DIR` and the system temporary directory.
pub fn default_socket_dir() -> Result<PathBuf, FallbackError> {
    let fallback_dir = std::env::var_os("VOXRING_FALLBACK_DIR").filter(|v| !v.is_empty());
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty());
    socket_dir_in(
        fallback_dir.as_deref().map(Path::new),
        runtime_dir.as_deref().map(Path::new),
        &std::env::temp_dir(),
    )
}

/// The socket path a producer serves segment `name` on, and a reader looks for, by default:
/// `voxring.<name>.sock` in [`default_socket_dir`]. Creates the per-user directory if needed.
pub fn default_socket_path(name: &str) -> Result<PathBuf, FallbackError> {
    let file = crate::segment::file_name(name).map_err(FallbackError::Name)?;
    Ok(default_socket_dir()?.join(format!("{file}.sock")))
}

/// Chooses (and, for the per-user directory, creates) the fallback socket directory, so that
/// only this user (or root) can create a socket in it:
/// 1. `fallback_dir` (`$VOXRING_FALLBACK_DIR`) if given: it must exist and be a directory
///    owned by this user or by root, and not writable by group or others unless it is sticky
///    (like `/tmp`: others may then create names there, but not remove or replace ours, and a
///    reader still refuses a server of another uid). Use it for a directory shared on purpose
///    (a bind mount into a container).
/// 2. else `<runtime_dir>/voxring` (`$XDG_RUNTIME_DIR`) when `runtime_dir` is a directory
///    owned by this user with mode 0700;
/// 3. else `<temp_dir>/voxring-<uid>`.
///
/// The directories of 2 and 3 are made with mode 0700 and then verified without following
/// symbolic links: a directory, owned by this user, mode exactly 0700. One that another user
/// made first (to watch or squat the sockets) is refused with [`FallbackError::UnsafeDir`].
pub fn socket_dir_in(
    fallback_dir: Option<&Path>,
    runtime_dir: Option<&Path>,
    temp_dir: &Path,
) -> Result<PathBuf, FallbackError> {
    let me = rustix::process::geteuid().as_raw();
    if let Some(dir) = fallback_dir {
        check_chosen_dir(dir, me)?;
        return Ok(dir.to_path_buf());
    }
    if let Some(run) = runtime_dir
        && std::fs::metadata(run).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.is_dir() && m.uid() == me && m.mode() & 0o7777 == 0o700
        })
    {
        let dir = run.join("voxring");
        private_dir(&dir, me)?;
        return Ok(dir);
    }
    let dir = temp_dir.join(format!("voxring-{me}"));
    private_dir(&dir, me)?;
    Ok(dir)
}

fn unsafe_dir(path: &Path, reason: String) -> FallbackError {
    FallbackError::UnsafeDir {
        path: path.to_path_buf(),
        reason,
    }
}

/// `$VOXRING_FALLBACK_DIR`: followed if it is a link (the user named it), then checked.
fn check_chosen_dir(dir: &Path, me: u32) -> Result<(), FallbackError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir).map_err(|e| {
        unsafe_dir(
            dir,
            format!("VOXRING_FALLBACK_DIR cannot be used ({e}); create it, or unset it"),
        )
    })?;
    if !m.is_dir() {
        return Err(unsafe_dir(
            dir,
            "VOXRING_FALLBACK_DIR is not a directory".into(),
        ));
    }
    if m.uid() != me && m.uid() != 0 {
        return Err(unsafe_dir(
            dir,
            format!(
                "VOXRING_FALLBACK_DIR belongs to uid {}, not to this user ({me}) or root: \
                 its owner could replace the sockets in it",
                m.uid()
            ),
        ));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(unsafe_dir(
            dir,
            format!(
                "VOXRING_FALLBACK_DIR has mode {mode:04o}: others may write in it and it is not \
                 sticky, so they could replace the socket; chmod g-w,o-w it (or +t)"
            ),
        ));
    }
    Ok(())
}

/// Makes `dir` with mode 0700 if it is missing, then verifies it (see [`socket_dir_in`]).
fn private_dir(dir: &Path, me: u32) -> Result<(), FallbackError> {
    use rustix::fs::{Mode, OFlags};
    use std::os::unix::fs::DirBuilderExt;
    let created = match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            return Err(unsafe_dir(
                dir,
                format!("could not create the private socket directory ({e})"),
            ));
        }
    };
    let hint = "another user may have made it to watch or take over the fallback socket; \
                remove it (it is not voxring's), or set VOXRING_FALLBACK_DIR to a directory \
                only you can write";
    // O_NOFOLLOW | O_DIRECTORY: a symbolic link or anything but a directory fails here, and
    // the checks below are on what was opened (fstat), not on a name that could change.
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        // With O_DIRECTORY, Linux reports a symbolic link as ENOTDIR (ELOOP elsewhere).
        let link = std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
        let what = match e {
            _ if link => "is a symbolic link".to_string(),
            rustix::io::Errno::NOTDIR => "is not a directory".to_string(),
            e => format!("cannot be opened ({e})"),
        };
        unsafe_dir(dir, format!("it {what}; {hint}"))
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| unsafe_dir(dir, format!("fstat failed ({e})")))?;
    if st.st_uid != me {
        return Err(unsafe_dir(
            dir,
            format!(
                "it belongs to uid {}, not to this user ({me}); {hint}",
                st.st_uid
            ),
        ));
    }
    if created && st.st_mode & 0o7777 != 0o700 {
        // Our own fresh directory, narrowed by an unusual umask: set what we asked for.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
            .map_err(|e| unsafe_dir(dir, format!("chmod 0700 failed ({e})")))?;
        return Ok(());
    }
    let mode = st.st_mode & 0o7777;
    if mode != 0o700 {
        return Err(unsafe_dir(
            dir,
            format!("it has mode {mode:04o}, not 0700; chmod 700 it if it is yours"),
        ));
    }
    Ok(())
}

/// Serves a segment's frames to socket readers; see the [module docs](self). Dropping it stops
/// the server threads (each reader then sees its stream end) and removes the socket file.
#[derive(Debug)]
pub struct FallbackServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    clients: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _artifact: ArtifactGuard,
}

impl FallbackServer {
    /// Binds `path` with mode `mode` (e.g. `0o600` for this user only, `0o660` for a group)
    /// and starts accepting readers of `segment`.
    ///
    /// The socket is bound inside a fresh 0700 directory next to `path`, given its mode there,
    /// and only then renamed to `path` (`renameat2(RENAME_NOREPLACE)`): nobody can connect
    /// while it still has the umask's mode, and nothing at `path` is ever replaced. A stale
    /// socket of this user at `path` (a crashed server's) is removed first; anything else
    /// there (another user's socket, a symbolic link, a file) is refused, never followed.
    pub fn serve(segment: &Segment, path: &Path, mode: u32) -> io::Result<Self> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let me = rustix::process::geteuid().as_raw();
        if path.file_name().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no file name; give a socket path", path.display()),
            ));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() && m.uid() == me => {
                std::fs::remove_file(path)?;
            }
            Ok(m) if m.file_type().is_socket() => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is a socket of uid {}, not of this user ({me}): refused, another \
                         user may be squatting the name to intercept readers; remove it, or \
                         serve in a directory only you can write (the default)",
                        path.display(),
                        m.uid()
                    ),
                ));
            }
            Ok(m) => {
                let what = if m.file_type().is_symlink() {
                    "a symbolic link"
                } else {
                    "not a socket"
                };
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is {what} (uid {}): refused, it is never followed or \
                         replaced; remove it or choose another fallback socket path",
                        path.display(),
                        m.uid()
                    ),
                ));
            }
            Err(_) => {}
        }
        let private = tempfile::Builder::new()
            .prefix(".vxfb-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)?;
        let tmp = private.path().join("s");
        let listener = UnixListener::bind(&tmp).map_err(|e| {
            io::Error::new(e.kind(), format!("binding {} failed: {e}", tmp.display()))
        })?;
        // By path, but inside our 0700 directory: nobody else can reach or swap the name.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777))?;
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            path,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!(
                    "could not move the fallback socket to {} ({e}); something appeared \
                     there meanwhile",
                    path.display()
                ),
            )
        })?;
        let artifact = ArtifactGuard::register(path.to_path_buf());
        drop(private);
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, clients, segment) = (stop.clone(), clients.clone(), segment.clone());
            std::thread::Builder::new()
                .name("voxring-fallback".into())
                .spawn(move || accept_loop(&listener, &segment, &stop, &clients))?
        };
        Ok(FallbackServer {
            path: path.to_path_buf(),
            stop,
            accept: Some(accept),
            clients,
            _artifact: artifact,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FallbackServer {
    fn drop(&mut self) {
        // Relaxed: a plain flag polled by the server threads; no data hangs on it.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let handles = std::mem::take(&mut *self.clients.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}

fn accept_loop(
    listener: &UnixListener,
    segment: &Segment,
    stop: &Arc<AtomicBool>,
    clients: &Mutex<Vec<JoinHandle<()>>>,
) {
    // Relaxed: see `FallbackServer::drop`.
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener, PollFlags::IN)];
        let t = Timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        if rustix::event::poll(&mut fds, Some(&t)).unwrap_or(0) == 0 {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        let _ = stream.set_nonblocking(false);
        let (seg, stop) = (segment.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("voxring-fallback-client".into())
            .spawn(move || serve_client(&stream, &seg, &stop));
        if let Ok(h) = handle {
            let mut list = clients.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|h| !h.is_finished());
            list.push(h);
        }
    }
}

/// Writes all of `buf` (`send(2)` with `MSG_NOSIGNAL`: a reader that went away is an error,
/// not a SIGPIPE that kills the producer).
/// A send timeout (`SO_SNDTIMEO`) makes it look at `stop` while a lossless reader is stalled.
fn send_all(stream: &UnixStream, mut buf: &[u8], stop: &AtomicBool) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::net::send(stream, buf, rustix::net::SendFlags::NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            // Relaxed: see `FallbackServer::drop`.
            Err(rustix::io::Errno::AGAIN) if !stop.load(Ordering::Relaxed) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn error_message(msg: &str) -> Vec<u8> {
    let bytes = &msg.as_bytes()[..msg.len().min(MAX_ERROR_LEN as usize)];
    let mut out = Vec::with_capacity(8 + bytes.len());
    out.extend_from_slice(&TAG_ERROR.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

fn hello(cfg: &RingConfig, payload_bytes: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(MAGIC);
    for v in [
        VERSION,
        cfg.policy as u32,
        cfg.frames,
        cfg.samples_per_frame,
        u32::from(cfg.channels),
        cfg.format as u32,
        cfg.sample_rate,
        u32::from(cfg.max_consumers),
        payload_bytes,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn serve_client(stream: &UnixStream, segment: &Segment, stop: &AtomicBool) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let mut rx = match segment.consumer() {
        Ok(c) => c,
        Err(e) => {
            let _ = send_all(
                stream,
                &error_message(&format!("the fallback server could not join the ring: {e}")),
                stop,
            );
            return;
        }
    };
    let cfg = segment.config();
    let payload_bytes = segment.ring().payload_bytes();
    if send_all(stream, &hello(&cfg, payload_bytes), stop).is_err() {
        return;
    }
    let mut buf = Vec::with_capacity(SERVER_BATCH * (40 + payload_bytes as usize));
    let mut starts = Vec::with_capacity(SERVER_BATCH);
    // Relaxed: see `FallbackServer::drop`.
    while !stop.load(Ordering::Relaxed) {
        buf.clear();
        match rx.wait_for_frames(Some(Duration::from_millis(50))) {
            Ok(FramesWait::Ready) => {}
            Ok(FramesWait::TimedOut) => continue,
            Ok(FramesWait::EndOfStream) => {
                let _ = send_all(stream, &TAG_END.to_le_bytes(), stop);
                return;
            }
            Err(e) => {
                let _ = send_all(stream, &error_message(&e.to_string()), stop);
                return;
            }
        }
        let (consumer, waiter) = rx.parts();
        match consumer.read_grant(SERVER_BATCH) {
            Ok(grant) => {
                starts.clear();
                for f in grant.frames() {
                    starts.push(buf.len());
                    let m = f.meta();
                    buf.extend_from_slice(&TAG_FRAME.to_le_bytes());
                    buf.extend_from_slice(&m.seq.to_le_bytes());
                    buf.extend_from_slice(&m.sample_pos.to_le_bytes());
                    buf.extend_from_slice(&m.timestamp_ns.to_le_bytes());
                    buf.extend_from_slice(&m.flags.0.to_le_bytes());
                    buf.extend_from_slice(&m.len.to_le_bytes());
                    buf.extend_from_slice(f.payload());
                }
                match grant.release_all() {
                    Ok(wake) => wake.wake(waiter),
                    Err(ReleaseError::Overwritten { frames }) => {
                        // The first `frames` frames were overwritten while copied: send a
                        // loss instead of their (possibly torn) bytes.
                        let keep = starts.get(frames as usize).copied().unwrap_or(buf.len());
                        let mut lost = Vec::with_capacity(12 + buf.len() - keep);
                        lost.extend_from_slice(&TAG_LOST.to_le_bytes());
                        lost.extend_from_slice(&frames.to_le_bytes());
                        lost.extend_from_slice(&buf[keep..]);
                        buf = lost;
                    }
                    Err(e) => {
                        let _ = send_all(stream, &error_message(&e.to_string()), stop);
                        return;
                    }
                }
            }
            Err(ReadError::Empty) => continue,
            Err(ReadError::Lost { frames }) => {
                buf.extend_from_slice(&TAG_LOST.to_le_bytes());
                buf.extend_from_slice(&frames.to_le_bytes());
            }
            Err(e) => {
                let _ = send_all(stream, &error_message(&e.to_string()), stop);
                return;
            }
        }
        if send_all(stream, &buf, stop).is_err() {
            return; // the reader went away; leaving the ring frees our slot
        }
    }
}

/// Why a fallback reader could not connect or read on.
#[derive(Debug)]
pub enum FallbackError {
    /// Connecting to the socket failed.
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The segment name cannot make a socket file name.
    Name(NameError),
    /// The socket directory is not one only this user (or root) can create sockets in.
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        reason: String,
    },
    /// The socket path is a symbolic link (refused: it could point at anyone's socket).
    Symlink {
        /// The socket path.
        path: PathBuf,
    },
    /// The process serving the socket runs as another user than expected (`SO_PEERCRED`);
    /// nothing was read from it.
    PeerNotTrusted {
        /// The socket path.
        path: PathBuf,
        /// The server's uid.
        uid: u32,
        /// The uid that was expected (by default, the uid asking).
        expected: u32,
        /// The effective uid of this process.
        asking: u32,
    },
    /// The server announced a ring whose receive buffer is above [`MAX_READER_BUFFER_BYTES`],
    /// or that this machine could not allocate; nothing was allocated.
    GreetingTooLarge {
        /// Bytes the buffer would need (saturated at `u64::MAX`).
        bytes: u64,
        /// The limit, or the amount that could not be allocated.
        limit: u64,
    },
    /// The server sent something that is not this protocol (or an invalid configuration).
    Protocol(String),
    /// The server reported an error and stopped.
    Server(String),
    /// Reading the socket failed.
    Io(io::Error),
}

impl fmt::Display for FallbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackError::Connect { path, error } => write!(
                f,
                "could not connect to the fallback socket {} ({error}); the producer must run a \
                 fallback server there (VOXRING_FALLBACK_DIR must name the same directory on \
                 both sides)",
                path.display()
            ),
            FallbackError::Name(e) => e.fmt(f),
            FallbackError::UnsafeDir { path, reason } => write!(
                f,
                "the fallback socket directory {} is refused: {reason}",
                path.display()
            ),
            FallbackError::Symlink { path } => write!(
                f,
                "the fallback socket {} is a symbolic link: refused, it could lead to anyone's \
                 socket; give the socket's real path",
                path.display()
            ),
            FallbackError::PeerNotTrusted {
                path,
                uid,
                expected,
                asking,
            } => write!(
                f,
                "the fallback socket {} is served by uid {uid}, but uid {expected} was expected \
                 (this process runs as uid {asking}): refused, nothing was read from it; \
                 another user may have taken the socket name. If uid {uid} is the producer you \
                 mean, open the reader with the expected owner set to {uid}",
                path.display()
            ),
            FallbackError::GreetingTooLarge { bytes, limit: 0 } => write!(
                f,
                "the fallback server announced a ring needing a {bytes}-byte receive buffer, \
                 which this machine could not allocate: refused; use a smaller ring (fewer or \
                 shorter frames), or the shared segment"
            ),
            FallbackError::GreetingTooLarge { bytes, limit } => write!(
                f,
                "the fallback server announced a ring needing a {bytes}-byte receive buffer, \
                 above the {limit}-byte limit of a fallback reader (MAX_READER_BUFFER_BYTES): \
                 refused, nothing was allocated; a hostile server, or a ring too large for the \
                 fallback: use fewer or shorter frames, or the shared segment"
            ),
            FallbackError::Protocol(m) => write!(
                f,
                "the fallback server sent invalid data ({m}); is something else listening on \
                 that socket?"
            ),
            FallbackError::Server(m) => write!(f, "the fallback server stopped: {m}"),
            FallbackError::Io(e) => write!(f, "reading the fallback socket failed: {e}"),
        }
    }
}

impl std::error::Error for FallbackError {}

/// A frame held by a [`FallbackReader`] grant.
#[derive(Debug, Clone, Copy)]
pub struct FallbackFrame<'a> {
    /// Its metadata (as the producer wrote it; `len` checked against the ring).
    pub meta: FrameMeta,
    /// The valid payload bytes (`meta.len` of them), in this reader's buffer.
    pub payload: &'a [u8],
}

/// What [`FallbackReader::read_grant`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackRead {
    /// `n >= 1` frames are granted: read them with [`FallbackReader::frame`], then release.
    Frames(usize),
    /// No frame is buffered.
    Empty,
    /// The ring lapped the server's consumer by this many frames (lossy policy); read again.
    Lost(u64),
    /// The producer is gone and every frame was read.
    EndOfStream,
}

#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

/// The reading side of the socket fallback; see the [module docs](self).
#[derive(Debug)]
pub struct FallbackReader {
    stream: BufReader<UnixStream>,
    path: PathBuf,
    config: RingConfig,
    payload_bytes: usize,
    stride: usize,
    slab: Box<[Chunk]>,
    metas: Box<[FrameMeta]>,
    /// Local index of the next frame to read, and of the next frame to receive.
    head: u64,
    tail: u64,
    /// Losses announced by the server, at the local index where they happened.
    losses: VecDeque<(u64, u64)>,
    lost_total: u64,
    granted: usize,
    ended: bool,
    failed: Option<String>,
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

impl FallbackReader {
    /// Connects to a [`FallbackServer`] at `path` that runs as this process's effective uid,
    /// and reads the ring configuration it sends. See [`FallbackReader::connect_expecting`].
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, FallbackError> {
        Self::connect_expecting(path, timeout, None)
    }

    /// Connects to a [`FallbackServer`] at `path` and reads the ring configuration it sends.
    ///
    /// The same owner rule as a shared-memory attach ([`AttachOptions::expected_owner`]):
    /// the server's uid, as the kernel reports it (`SO_PEERCRED`), must be `expected_owner`
    /// (`None`: this process's effective uid), or nothing is read. A symbolic link at `path`
    /// is refused. The greeting is checked (core's ring limits, then
    /// [`MAX_READER_BUFFER_BYTES`]) before the receive buffer is allocated, and the
    /// allocation is fallible: a hostile greeting is an error, never an abort.
    ///
    /// [`AttachOptions::expected_owner`]: crate::segment::AttachOptions::expected_owner
    pub fn connect_expecting(
        path: &Path,
        timeout: Duration,
        expected_owner: Option<u32>,
    ) -> Result<Self, FallbackError> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(FallbackError::Symlink {
                path: path.to_path_buf(),
            });
        }
        let stream = UnixStream::connect(path).map_err(|error| FallbackError::Connect {
            path: path.to_path_buf(),
            error,
        })?;
        let asking = rustix::process::geteuid().as_raw();
        let expected = expected_owner.unwrap_or(asking);
        let cred =
            rustix::net::sockopt::socket_peercred(&stream).map_err(|e| FallbackError::Connect {
                path: path.to_path_buf(),
                error: io::Error::new(
                    io::Error::from(e).kind(),
                    format!("SO_PEERCRED failed ({e}): the server's user cannot be checked"),
                ),
            })?;
        if cred.uid.as_raw() != expected {
            return Err(FallbackError::PeerNotTrusted {
                path: path.to_path_buf(),
                uid: cred.uid.as_raw(),
                expected,
                asking,
            });
        }
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(FallbackError::Io)?;
        let mut stream = BufReader::with_capacity(1 << 16, stream);
        let mut head = [0u8; 40];
        stream
            .read_exact(&mut head[..4])
            .map_err(FallbackError::Io)?;
        if &head[..4] != MAGIC {
            if u32_at(&head, 0) == TAG_ERROR {
                let mut len = [0u8; 4];
                stream.read_exact(&mut len).map_err(FallbackError::Io)?;
                return Err(FallbackError::Server(read_error_text(
                    &mut stream,
                    u32::from_le_bytes(len),
                )?));
            }
            return Err(FallbackError::Protocol("no VXFB greeting".into()));
        }
        stream
            .read_exact(&mut head[4..])
            .map_err(FallbackError::Io)?;
        stream
            .get_ref()
            .set_read_timeout(None)
            .map_err(FallbackError::Io)?;
        let version = u32_at(&head, 4);
        if version != VERSION {
            return Err(FallbackError::Protocol(format!(
                "protocol version {version}, this reader speaks {VERSION}"
            )));
        }
        let w = |i: usize| u32_at(&head, 8 + 4 * i);
        let bad = |what: &str| FallbackError::Protocol(format!("invalid {what} in the greeting"));
        let config = RingConfig {
            policy: Policy::from_code(w(0)).ok_or_else(|| bad("policy"))?,
            frames: w(1),
            samples_per_frame: w(2),
            channels: u16::try_from(w(3)).map_err(|_| bad("channel count"))?,
            format: match w(4) {
                1 => SampleFormat::S16,
                2 => SampleFormat::S32,
                3 => SampleFormat::F32,
                _ => return Err(bad("sample format")),
            },
            sample_rate: w(5),
            max_consumers: u16::try_from(w(6)).map_err(|_| bad("consumer count"))?,
        };
        // The same range checks as a shared-memory attach.
        config
            .region_size()
            .map_err(|e| FallbackError::Protocol(format!("invalid ring configuration: {e}")))?;
        let payload_bytes = config.samples_per_frame as usize
            * usize::from(config.channels)
            * config.format.bytes() as usize;
        if w(7) as usize != payload_bytes {
            return Err(bad("payload size"));
        }
        let stride = payload_bytes.div_ceil(64).max(1);
        let frames = config.frames as usize;
        let (slab, metas) = alloc_buffers(frames, stride)?;
        Ok(FallbackReader {
            stream,
            path: path.to_path_buf(),
            config,
            payload_bytes,
            stride,
            slab,
            metas,
            head: 0,
            tail: 0,
            losses: VecDeque::new(),
            lost_total: 0,
            granted: 0,
            ended: false,
            failed: None,
        })
    }

    /// The ring's configuration, as the server sent it.
    pub fn config(&self) -> RingConfig {
        self.config
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Payload bytes per frame.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// The buffer frames are received into: `(address, length)`. A granted frame's payload
    /// lies inside it, at `slot_stride() * slot` bytes.
    pub fn buffer(&self) -> (*const u8, usize) {
        (self.slab.as_ptr().cast(), self.slab.len() * 64)
    }

    /// Bytes between two slots of the buffer.
    pub fn slot_stride(&self) -> usize {
        self.stride * 64
    }

    /// Frames lost in total (announced by the server).
    pub fn lost_frames(&self) -> u64 {
        self.lost_total
    }

    /// Frames received but not yet released.
    pub fn buffered(&self) -> u64 {
        self.tail - self.head
    }

    fn has_data(&self, timeout: Option<Duration>) -> Result<bool, FallbackError> {
        if !self.stream.buffer().is_empty() {
            return Ok(true);
        }
        let mut fds = [PollFd::new(self.stream.get_ref(), PollFlags::IN)];
        let t = timeout.map(|d| Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        match rustix::event::poll(&mut fds, t.as_ref()) {
            Ok(n) => Ok(n > 0),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(FallbackError::Io(e.into())),
        }
    }

    fn fail(&mut self, e: FallbackError) -> FallbackError {
        self.failed = Some(e.to_string());
        e
    }

    /// Receives every message already available, while there is room in the buffer.
    fn pump(&mut self, timeout: Option<Duration>) -> Result<(), FallbackError> {
        let mut first = true;
        while !self.ended
            && self.failed.is_none()
            && self.buffered() < u64::from(self.config.frames)
        {
            if !self.has_data(if first { timeout } else { Some(Duration::ZERO) })? {
                break;
            }
            first = false;
            if let Err(e) = self.receive_one() {
                return Err(self.fail(e));
            }
        }
        Ok(())
    }

    fn receive_one(&mut self) -> Result<(), FallbackError> {
        let mut tag = [0u8; 4];
        match self.stream.read_exact(&mut tag) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // The server process died without saying goodbye: like a crashed producer.
                self.ended = true;
                return Ok(());
            }
            Err(e) => return Err(FallbackError::Io(e)),
        }
        match u32::from_le_bytes(tag) {
            TAG_FRAME => {
                let mut h = [0u8; 32];
                self.stream.read_exact(&mut h).map_err(FallbackError::Io)?;
                let len = u32_at(&h, 28);
                if len as usize > self.payload_bytes {
                    return Err(FallbackError::Protocol(format!(
                        "frame of {len} bytes in a ring of {}-byte frames",
                        self.payload_bytes
                    )));
                }
                let slot = (self.tail % u64::from(self.config.frames)) as usize;
                self.metas[slot] = FrameMeta {
                    seq: u64_at(&h, 0),
                    sample_pos: u64_at(&h, 8),
                    timestamp_ns: u64_at(&h, 16),
                    flags: FrameFlags(u32_at(&h, 24)),
                    len,
                };
                let start = slot * self.stride;
                let dst = chunks_as_bytes_mut(&mut self.slab[start..start + self.stride]);
                self.stream
                    .read_exact(&mut dst[..len as usize])
                    .map_err(FallbackError::Io)?;
                self.tail += 1;
            }
            TAG_LOST => {
                let mut n = [0u8; 8];
                self.stream.read_exact(&mut n).map_err(FallbackError::Io)?;
                let n = u64::from_le_bytes(n);
                self.losses.push_back((self.tail, n));
            }
            TAG_END => self.ended = true,
            TAG_ERROR => {
                let mut len = [0u8; 4];
                self.stream
                    .read_exact(&mut len)
                    .map_err(FallbackError::Io)?;
                let text = read_error_text(&mut self.stream, u32::from_le_bytes(len))?;
                return Err(FallbackError::Server(text));
            }
            t => return Err(FallbackError::Protocol(format!("unknown message tag {t}"))),
        }
        Ok(())
    }

    /// Grants up to `n` buffered frames (receiving what the socket already holds first).
    /// A previous grant not yet released is replaced (nothing is released).
    pub fn read_grant(&mut self, n: usize) -> Result<FallbackRead, FallbackError> {
        self.granted = 0;
        if let Some(e) = &self.failed {
            return Err(FallbackError::Server(e.clone()));
        }
        if self.buffered() < n as u64 {
            self.pump(Some(Duration::ZERO))?;
        }
        if let Some(&(at, lost)) = self.losses.front()
            && at == self.head
        {
            self.losses.pop_front();
            self.lost_total += lost;
            return Ok(FallbackRead::Lost(lost));
        }
        let limit = self.losses.front().map_or(self.tail, |&(at, _)| at);
        let avail = limit - self.head;
        if avail == 0 {
            return Ok(if self.ended {
                FallbackRead::EndOfStream
            } else {
                FallbackRead::Empty
            });
        }
        self.granted = (n as u64).min(avail) as usize;
        Ok(if self.granted == 0 {
            FallbackRead::Empty
        } else {
            FallbackRead::Frames(self.granted)
        })
    }

    /// Frame `i` of the current grant.
    pub fn frame(&self, i: usize) -> Option<FallbackFrame<'_>> {
        if i >= self.granted {
            return None;
        }
        let slot = ((self.head + i as u64) % u64::from(self.config.frames)) as usize;
        let meta = self.metas[slot];
        let start = slot * self.stride;
        let bytes = chunks_as_bytes(&self.slab[start..start + self.stride]);
        Some(FallbackFrame {
            meta,
            payload: &bytes[..meta.len as usize],
        })
    }

    /// Frames in the current grant.
    pub fn granted(&self) -> usize {
        self.granted
    }

    /// Releases the first `k` frames of the current grant (`k` is clamped to it).
    pub fn release(&mut self, k: usize) -> usize {
        let k = k.min(self.granted);
        self.head += k as u64;
        self.granted = 0;
        k
    }

    /// Waits until a frame (or a loss, or the end) is ready, at most `timeout` (`None`:
    /// forever).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<FramesWait, FallbackError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.buffered() > 0 || !self.losses.is_empty() {
                return Ok(FramesWait::Ready);
            }
            if self.ended {
                return Ok(FramesWait::EndOfStream);
            }
            if let Some(e) = &self.failed {
                return Err(FallbackError::Server(e.clone()));
            }
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(FramesWait::TimedOut);
                    }
                    Some(d - now)
                }
                None => None,
            };
            self.pump(left)?;
        }
    }
}

/// A reader's payload slots and their metadata.
type ReceiveBuffers = (Box<[Chunk]>, Box<[FrameMeta]>);

/// The receive buffer of `frames` slots of `stride` chunks, bounded by
/// [`MAX_READER_BUFFER_BYTES`] and allocated fallibly (`try_reserve_exact`).
fn alloc_buffers(frames: usize, stride: usize) -> Result<ReceiveBuffers, FallbackError> {
    let per_slot = (stride as u64)
        .saturating_mul(64)
        .saturating_add(std::mem::size_of::<FrameMeta>() as u64);
    let bytes = (frames as u64).saturating_mul(per_slot);
    let limit = MAX_READER_BUFFER_BYTES as u64;
    if bytes > limit {
        return Err(FallbackError::GreetingTooLarge { bytes, limit });
    }
    let oom = |_| FallbackError::GreetingTooLarge { bytes, limit: 0 };
    let mut slab = Vec::new();
    slab.try_reserve_exact(stride * frames).map_err(oom)?;
    slab.resize(stride * frames, Chunk([0; 64]));
    let mut metas = Vec::new();
    metas.try_reserve_exact(frames).map_err(oom)?;
    metas.resize(frames, FrameMeta::default());
    Ok((slab.into_boxed_slice(), metas.into_boxed_slice()))
}

fn read_error_text(stream: &mut impl Read, len: u32) -> Result<String, FallbackError> {
    if len > MAX_ERROR_LEN {
        return Err(FallbackError::Protocol(format!(
            "error message of {len} bytes"
        )));
    }
    let mut text = vec![0u8; len as usize];
    stream.read_exact(&mut text).map_err(FallbackError::Io)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn chunks_as_bytes(c: &[Chunk]) -> &[u8] {
    // SAFETY: `Chunk` is `repr(C)` over `[u8; 64]` (size 64, no padding), so `c` is
    // `64 * c.len()` initialised bytes; the borrow is carried over.
    unsafe { std::slice::from_raw_parts(c.as_ptr().cast::<u8>(), c.len() * 64) }
}

fn chunks_as_bytes_mut(c: &mut [Chunk]) -> &mut [u8] {
    // SAFETY: as in `chunks_as_bytes`, with the exclusive borrow carried over.
    unsafe { std::slice::from_raw_parts_mut(c.as_mut_ptr().cast::<u8>(), c.len() * 64) }
}

#[cfg(test)]
mod tests {
    //! The reader against a fake server that sends what it likes: bad input is an error with
    //! a reason, never a panic or an out-of-range access.

    use std::io::Write;

    use super::*;

    fn greeting(payload_bytes: u32) -> Vec<u8> {
        let cfg = RingConfig {
            frames: 4,
            samples_per_frame: 8,
            channels: 1,
            format: SampleFormat::S16,
            sample_rate: 48_000,
            max_consumers: 2,
            policy: Policy::Lossy,
        };
        hello(&cfg, payload_bytes)
    }

    fn frame(seq: u64, len: u32, fill: u8) -> Vec<u8> {
        let mut b = TAG_FRAME.to_le_bytes().to_vec();
        for v in [seq, seq * 8, 1000 + seq] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend(std::iter::repeat_n(fill, len as usize));
        b
    }

    /// Serves `bytes` to one client on a fresh socket, then closes; returns the reader's
    /// connect result and the socket's folder (removed when dropped).
    fn against(bytes: Vec<u8>) -> (Result<FallbackReader, FallbackError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = s.write_all(&bytes);
            }
        });
        let r = FallbackReader::connect(&path, Duration::from_secs(5));
        server.join().expect("fake server");
        (r, dir)
    }

    #[test]
    fn frames_losses_and_the_end_arrive_in_order() {
        let mut b = greeting(16);
        b.extend(frame(0, 16, 7));
        b.extend(TAG_LOST.to_le_bytes());
        b.extend(5u64.to_le_bytes());
        b.extend(frame(6, 10, 9));
        b.extend(TAG_END.to_le_bytes());
        let (r, dir) = against(b);
        let mut r = r.expect("connect");
        assert_eq!(r.config().frames, 4);
        assert_eq!(
            r.wait(Some(Duration::from_secs(5))).ok(),
            Some(FramesWait::Ready)
        );
        assert_eq!(r.read_grant(4).ok(), Some(FallbackRead::Frames(1)));
        let f = r.frame(0).expect("frame 0");
        assert_eq!((f.meta.seq, f.payload), (0, &[7u8; 16][..]));
        assert!(r.frame(1).is_none());
        r.release(1);
        assert_eq!(r.read_grant(4).ok(), Some(FallbackRead::Lost(5)));
        assert_eq!(r.read_grant(4).ok(), Some(FallbackRead::Frames(1)));
        let f = r.frame(0).expect("frame 6");
        assert_eq!((f.meta.seq, f.meta.len, f.payload.len()), (6, 10, 10));
        r.release(1);
        assert_eq!(r.read_grant(4).ok(), Some(FallbackRead::EndOfStream));
        assert_eq!(r.lost_frames(), 5);
        drop(dir);
    }

    #[test]
    fn hostile_input_is_an_error_with_a_reason() {
        // Not the protocol at all.
        let (r, dir) = against(b"HTTP/1.1 200 OK\r\n\r\n".to_vec());
        assert!(matches!(r, Err(FallbackError::Protocol(_))));
        drop(dir);
        // A payload size that does not match the configuration.
        let (r, dir) = against(greeting(17));
        assert!(matches!(r, Err(FallbackError::Protocol(m)) if m.contains("payload")));
        drop(dir);
        // An error instead of a greeting is passed on.
        let (r, dir) = against(error_message("all consumer slots are taken"));
        assert!(matches!(r, Err(FallbackError::Server(m)) if m.contains("slots")));
        drop(dir);
        // A frame longer than a slot, then an unknown tag.
        for tail in [frame(0, 17, 1), 99u32.to_le_bytes().to_vec()] {
            let mut b = greeting(16);
            b.extend(tail);
            let (r, dir) = against(b);
            let mut r = r.expect("the greeting is fine");
            assert!(r.wait(Some(Duration::from_secs(5))).is_err());
            assert!(r.read_grant(1).is_err(), "the stream stays failed");
            drop(dir);
        }
        // An error message longer than the limit is refused, not allocated.
        let mut b = greeting(16);
        b.extend(TAG_ERROR.to_le_bytes());
        b.extend(u32::MAX.to_le_bytes());
        let (r, dir) = against(b);
        let err = r
            .expect("greeting")
            .wait(Some(Duration::from_secs(5)))
            .unwrap_err();
        assert!(matches!(err, FallbackError::Protocol(_)), "{err}");
        drop(dir);
    }
}
