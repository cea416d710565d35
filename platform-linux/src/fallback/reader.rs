//! The client's side of the socket fallback: [`FallbackReader`], the read cycle of a
//! shared-memory consumer over a private buffer the socket fills.

use std::collections::VecDeque;
use std::io::{self, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use voxring_core::{FrameMeta, RingConfig};

use super::wire::{self, MAGIC, TAG_END, TAG_ERROR, TAG_FRAME, TAG_LOST};
use super::{FallbackError, MAX_READER_BUFFER_BYTES};
use crate::ring::FramesWait;

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

/// The reading side of the socket fallback; see the [module docs](super), and
/// [`FallbackServer`](super::FallbackServer) for a whole round trip. Nothing is trusted
/// before the server's uid is checked, and every error says what to do:
///
/// ```
/// use std::time::Duration;
/// use voxring_linux::fallback::{FallbackError, FallbackReader};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let err = FallbackReader::connect(&dir.path().join("nobody.sock"), Duration::from_secs(1))
///     .unwrap_err();
/// assert!(matches!(err, FallbackError::Connect { .. }));
/// # Ok(()) }
/// ```
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

impl FallbackReader {
    /// Connects to a [`FallbackServer`](super::FallbackServer) at `path` that runs as this process's effective uid,
    /// and reads the ring configuration it sends. See [`FallbackReader::connect_expecting`].
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, FallbackError> {
        Self::connect_expecting(path, timeout, None)
    }

    /// Connects to a [`FallbackServer`](super::FallbackServer) at `path` and reads the ring configuration it sends.
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
        Self::greeted(stream, path, timeout)
    }

    /// Reads and checks the greeting on a connected `stream` (waiting up to `timeout`), then
    /// allocates the receive buffer it asks for.
    fn greeted(stream: UnixStream, path: &Path, timeout: Duration) -> Result<Self, FallbackError> {
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(FallbackError::Io)?;
        let mut stream = BufReader::with_capacity(1 << 16, stream);
        let mut head = [0u8; wire::GREETING_LEN];
        stream
            .read_exact(&mut head[..4])
            .map_err(FallbackError::Io)?;
        if &head[..4] != MAGIC {
            if wire::u32_at(&head, 0) == TAG_ERROR {
                return Err(FallbackError::Server(wire::read_error(&mut stream)?));
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
        let (config, payload_bytes) = wire::parse_greeting(&head)?;
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
                let mut h = [0u8; wire::FRAME_HEADER_LEN];
                self.stream.read_exact(&mut h).map_err(FallbackError::Io)?;
                let meta = wire::parse_frame_header(&h);
                let len = meta.len;
                if len as usize > self.payload_bytes {
                    return Err(FallbackError::Protocol(format!(
                        "frame of {len} bytes in a ring of {}-byte frames",
                        self.payload_bytes
                    )));
                }
                let slot = (self.tail % u64::from(self.config.frames)) as usize;
                self.metas[slot] = meta;
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
            TAG_ERROR => return Err(FallbackError::Server(wire::read_error(&mut self.stream)?)),
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

    use voxring_core::{Policy, SampleFormat};

    use super::wire::{error_message, hello};
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

    /// A reader greeted by a fake server that sent `bytes`, then closed.
    fn against(bytes: Vec<u8>) -> Result<FallbackReader, FallbackError> {
        let (reader_end, mut server) = UnixStream::pair().expect("socket pair");
        server
            .write_all(&bytes)
            .expect("the bytes fit the socket buffer");
        drop(server);
        FallbackReader::greeted(reader_end, Path::new("fake"), Duration::from_secs(5))
    }

    #[test]
    fn frames_losses_and_the_end_arrive_in_order() {
        let mut b = greeting(16);
        b.extend(frame(0, 16, 7));
        b.extend(TAG_LOST.to_le_bytes());
        b.extend(5u64.to_le_bytes());
        b.extend(frame(6, 10, 9));
        b.extend(TAG_END.to_le_bytes());
        let r = against(b);
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
    }

    #[test]
    fn hostile_input_is_an_error_with_a_reason() {
        // Not the protocol at all.
        let r = against(b"HTTP/1.1 200 OK\r\n\r\n".to_vec());
        assert!(matches!(r, Err(FallbackError::Protocol(_))));
        // A payload size that does not match the configuration.
        let r = against(greeting(17));
        assert!(matches!(r, Err(FallbackError::Protocol(m)) if m.contains("payload")));
        // An error instead of a greeting is passed on.
        let r = against(error_message("all consumer slots are taken"));
        assert!(matches!(r, Err(FallbackError::Server(m)) if m.contains("slots")));
        // A frame longer than a slot, then an unknown tag.
        for tail in [frame(0, 17, 1), 99u32.to_le_bytes().to_vec()] {
            let mut b = greeting(16);
            b.extend(tail);
            let r = against(b);
            let mut r = r.expect("the greeting is fine");
            assert!(r.wait(Some(Duration::from_secs(5))).is_err());
            assert!(r.read_grant(1).is_err(), "the stream stays failed");
        }
        // An error message longer than the limit is refused, not allocated.
        let mut b = greeting(16);
        b.extend(TAG_ERROR.to_le_bytes());
        b.extend(u32::MAX.to_le_bytes());
        let r = against(b);
        let err = r
            .expect("greeting")
            .wait(Some(Duration::from_secs(5)))
            .unwrap_err();
        assert!(matches!(err, FallbackError::Protocol(_)), "{err}");
    }
}
