//! The socket fallback: the frames and metadata of a shared ring, streamed over a Unix socket
//! to readers that cannot map the segment (another container without a shared `/dev/shm`, a
//! user without permission on the segment file).
//!
//! The producer process runs a [`FallbackServer`] next to its [`Segment`](crate::ring::Segment). Every client that
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

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::segment::NameError;

mod reader;
mod server;
mod wire;

pub use reader::{FallbackFrame, FallbackRead, FallbackReader};
pub use server::FallbackServer;

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
