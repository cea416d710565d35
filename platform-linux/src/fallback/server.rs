//! The producer's side of the socket fallback: [`FallbackServer`] binds the socket safely and
//! serves each reader from its own consumer slot.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use voxring_core::{ReadError, ReleaseError};

use super::wire::{self, TAG_END};
use crate::guard::ArtifactGuard;
use crate::ring::{FramesWait, Segment};

/// Frames the server moves per read grant.
const SERVER_BATCH: usize = 16;

/// Serves a segment's frames to socket readers; see the [module docs](super). Dropping it stops
/// the server threads (each reader then sees its stream end) and removes the socket file.
///
/// ```
/// use std::time::Duration;
/// use voxring_linux::fallback::{FallbackRead, FallbackReader, FallbackServer};
/// use voxring_linux::mapping::MapOptions;
/// use voxring_linux::ring::{FramesWait, Segment};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use voxring_core::{Policy, RingConfig, SampleFormat};
/// # let cfg = RingConfig {
/// #     frames: 4, samples_per_frame: 16, channels: 1, format: SampleFormat::S16,
/// #     sample_rate: 48_000, max_consumers: 2, policy: Policy::Lossless,
/// # };
/// let seg = Segment::create_memfd("example", &cfg, MapOptions::default())?;
/// let mut tx = seg.producer()?;
/// let dir = tempfile::tempdir()?; // in practice: fallback::default_socket_path(name)
/// let server = FallbackServer::serve(&seg, &dir.path().join("mic.sock"), 0o600)?;
///
/// // The reader's side: it checks the server's uid before reading a byte.
/// let mut rx = FallbackReader::connect(server.path(), Duration::from_secs(10))?;
/// assert_eq!(rx.config(), cfg);
///
/// let (producer, waiter) = tx.parts();
/// let mut grant = producer.write_grant(1)?;
/// grant.frame_mut(0).expect("one frame").samples_mut::<i16>()?.fill(7);
/// grant.commit_all().wake(waiter);
///
/// assert_eq!(rx.wait(Some(Duration::from_secs(10)))?, FramesWait::Ready);
/// assert_eq!(rx.read_grant(4)?, FallbackRead::Frames(1));
/// assert_eq!(rx.frame(0).expect("frame 0").payload, &[7, 0].repeat(16)[..]);
/// rx.release(1);
/// drop(server); // stops its threads and removes the socket
/// # Ok(()) }
/// ```
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

    /// The message the bindings (C, Python) give when [`serve`](Self::serve) failed at
    /// `path` with `e`: what happened, and what to check.
    pub fn serve_failure(path: &Path, e: &io::Error) -> String {
        format!(
            "could not serve the fallback socket {}: {e}; check the directory exists and is \
             writable",
            path.display()
        )
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

fn serve_client(stream: &UnixStream, segment: &Segment, stop: &AtomicBool) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let mut rx = match segment.consumer() {
        Ok(c) => c,
        Err(e) => {
            let _ = send_all(
                stream,
                &wire::error_message(&format!("the fallback server could not join the ring: {e}")),
                stop,
            );
            return;
        }
    };
    let cfg = segment.config();
    let payload_bytes = segment.ring().payload_bytes();
    if send_all(stream, &wire::hello(&cfg, payload_bytes), stop).is_err() {
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
                let _ = send_all(stream, &wire::error_message(&e.to_string()), stop);
                return;
            }
        }
        let (consumer, waiter) = rx.parts();
        match consumer.read_grant(SERVER_BATCH) {
            Ok(grant) => {
                starts.clear();
                for f in grant.frames() {
                    starts.push(buf.len());
                    wire::push_frame(&mut buf, &f.meta(), f.payload());
                }
                match grant.release_all() {
                    Ok(wake) => wake.wake(waiter),
                    Err(ReleaseError::Overwritten { frames }) => {
                        // The first `frames` frames were overwritten while copied: send a
                        // loss instead of their (possibly torn) bytes.
                        let keep = starts.get(frames as usize).copied().unwrap_or(buf.len());
                        let mut lost = Vec::with_capacity(12 + buf.len() - keep);
                        wire::push_lost(&mut lost, frames);
                        lost.extend_from_slice(&buf[keep..]);
                        buf = lost;
                    }
                    Err(e) => {
                        let _ = send_all(stream, &wire::error_message(&e.to_string()), stop);
                        return;
                    }
                }
            }
            Err(ReadError::Empty) => continue,
            Err(ReadError::Lost { frames }) => wire::push_lost(&mut buf, frames),
            Err(e) => {
                let _ = send_all(stream, &wire::error_message(&e.to_string()), stop);
                return;
            }
        }
        if send_all(stream, &buf, stop).is_err() {
            return; // the reader went away; leaving the ring frees our slot
        }
    }
}
