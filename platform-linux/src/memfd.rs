//! Sealed memfd segments, handed to a peer over a Unix socket (`SCM_RIGHTS`).
//!
//! For peers that must not be able to shrink the memory under us: the creator makes an
//! anonymous `memfd_create(2)` file, sizes it, and seals it with
//! `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`. From then on the kernel refuses every resize
//! from anyone, so the `SIGBUS` a truncation would cause cannot happen, and nobody can remove
//! the seals. The receiver checks the seals before mapping (a descriptor from a peer is input
//! like any other).
//!
//! A received descriptor shares the sender's open file description, and with it the sender's
//! liveness locks; the receiver re-opens it through `/proc/self/fd` to get its own, so the
//! kernel tells the two apart (see [`crate::liveness`]). That needs `/proc` mounted.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::mapping::{MapOptions, SharedMapping};
use crate::segment::{AttachError, CreateError};

/// The seals every voxring memfd carries.
pub const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// An open, sealed memfd segment and its mapping.
#[derive(Debug)]
pub struct MemfdFile {
    fd: OwnedFd,
    mapping: SharedMapping,
}

fn memfd_path(what: &str) -> PathBuf {
    PathBuf::from(format!("memfd:{what}"))
}

impl MemfdFile {
    /// Creates a sealed memfd of `size` bytes named `debug_name` (shown in
    /// `/proc/<pid>/fd`), runs `init` on the mapped memory, and returns it.
    pub fn create_with<E: Into<CreateError>>(
        debug_name: &str,
        size: usize,
        opts: MapOptions,
        init: impl FnOnce(&OwnedFd, &SharedMapping) -> Result<(), E>,
    ) -> Result<Self, CreateError> {
        let path = memfd_path(debug_name);
        let io = |op, errno| CreateError::Io {
            op,
            path: path.clone(),
            errno,
        };
        let fd = rustix::fs::memfd_create(
            format!("voxring.{debug_name}"),
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| io("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, size as u64).map_err(|e| io("resize", e))?;
        match rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, size as u64) {
            Ok(()) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => {}
            Err(Errno::NOSPC) => return Err(CreateError::NoSpace { path, size }),
            Err(e) => return Err(io("reserve space for", e)),
        }
        rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS).map_err(|e| io("seal", e))?;
        crate::liveness::hold_presence(fd.as_fd()).map_err(|e| io("lock", e))?;
        let mapping = SharedMapping::map(fd.as_fd(), size, opts).map_err(CreateError::Map)?;
        init(&fd, &mapping).map_err(Into::into)?;
        Ok(MemfdFile { fd, mapping })
    }

    /// Validates a memfd received from a peer (sealed, regular, exactly `size` bytes: a
    /// larger one is refused with [`AttachError::TooLarge`] before anything is mapped),
    /// re-opens it for a private open file description, and maps exactly `size` bytes.
    pub fn from_received(
        received: OwnedFd,
        size: u64,
        opts: MapOptions,
    ) -> Result<Self, AttachError> {
        Self::from_received_sized(received, opts, |_, _, _| Ok(size))
    }

    /// Like [`MemfdFile::from_received`] for a memfd holding a voxring-core ring: the size is
    /// the region size its header states, read with `pread(2)` and validated on a private copy
    /// before anything is mapped (see [`crate::segment::SegmentFile::attach_ring`]). Seals stop
    /// a peer from resizing a memfd after sealing, not from sealing a huge one: a sender that
    /// made its memfd gigabytes large (sparse) is refused here, not mapped and prefaulted.
    pub fn from_received_ring(received: OwnedFd, opts: MapOptions) -> Result<Self, AttachError> {
        Self::from_received_sized(received, opts, crate::segment::ring_region_size)
    }

    fn from_received_sized(
        received: OwnedFd,
        opts: MapOptions,
        layout_size: impl Fn(BorrowedFd<'_>, &std::path::Path, u64) -> Result<u64, AttachError>,
    ) -> Result<Self, AttachError> {
        let path = memfd_path("received");
        let seals = rustix::fs::fcntl_get_seals(&received).map_err(|errno| AttachError::Io {
            op: "read the seals of",
            path: path.clone(),
            errno,
        })?;
        if !seals.contains(REQUIRED_SEALS) {
            return Err(AttachError::NotSealed {
                seals: seals.bits(),
            });
        }
        // A memfd belongs to whoever made it, and sealing makes ownership moot here: the
        // descriptor was handed to us on purpose. Check kind and size only.
        let attach_opts = crate::segment::AttachOptions {
            expected_owner: Some(
                rustix::fs::fstat(&received)
                    .map_err(|errno| AttachError::Io {
                        op: "fstat",
                        path: path.clone(),
                        errno,
                    })?
                    .st_uid,
            ),
            allow_group_writable: true,
            allow_world_writable: true,
            ..Default::default()
        };
        let file_size = crate::segment::validate_open_file(received.as_fd(), &path, &attach_opts)?;
        // Sealed against growing and shrinking (checked above): this size is final.
        let size = layout_size(received.as_fd(), &path, file_size)?;
        crate::segment::check_extent(&path, file_size, size)?;
        let fd = rustix::fs::open(
            format!("/proc/self/fd/{}", received.as_raw_fd()),
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| AttachError::Io {
            op: "re-open through /proc/self/fd (is /proc mounted?)",
            path: path.clone(),
            errno,
        })?;
        let (a, b) = (
            rustix::fs::fstat(&received).map_err(|errno| AttachError::Io {
                op: "fstat",
                path: path.clone(),
                errno,
            })?,
            rustix::fs::fstat(&fd).map_err(|errno| AttachError::Io {
                op: "fstat",
                path: path.clone(),
                errno,
            })?,
        );
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return Err(AttachError::Io {
                op: "re-open (it changed identity)",
                path,
                errno: Errno::STALE,
            });
        }
        drop(received);
        let len = usize::try_from(size).map_err(|_| AttachError::TooLarge {
            path: path.clone(),
            size: file_size,
            expected: size,
        })?;
        let mapping = SharedMapping::map(fd.as_fd(), len, opts).map_err(AttachError::Map)?;
        Ok(MemfdFile { fd, mapping })
    }

    /// The descriptor (send it with [`send_fd`]).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The mapping.
    pub fn mapping(&self) -> &SharedMapping {
        &self.mapping
    }
}

/// Sends `fd` and a short tag over a connected Unix stream socket (`sendmsg(2)` with
/// `SCM_RIGHTS`).
pub fn send_fd(socket: &UnixStream, fd: BorrowedFd<'_>, tag: &[u8]) -> std::io::Result<()> {
    let fds = [fd];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("control buffer too small for one fd"));
    }
    let payload: &[u8] = if tag.is_empty() { b"\0" } else { tag };
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(payload)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(crate::mapping::io_err)?;
    if sent != payload.len() {
        return Err(std::io::Error::other("short send of the fd message"));
    }
    Ok(())
}

/// Receives one descriptor and its tag (up to `tag_buf.len()` bytes) sent with [`send_fd`].
/// Extra descriptors in the same message are closed; a message without one is an error.
pub fn recv_fd(socket: &UnixStream, tag_buf: &mut [u8]) -> std::io::Result<(OwnedFd, usize)> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut one = [0u8; 1];
    let buf: &mut [u8] = if tag_buf.is_empty() {
        &mut one
    } else {
        tag_buf
    };
    let msg = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(crate::mapping::io_err)?;
    let mut got: Option<OwnedFd> = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for fd in fds {
                if got.is_none() {
                    got = Some(fd);
                }
            }
        }
    }
    match got {
        Some(fd) => Ok((fd, msg.bytes)),
        None if msg.bytes == 0 => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the peer closed the socket without sending a segment",
        )),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "message without a descriptor: the peer is not a voxring segment sender",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_memfd_crosses_a_socket_and_cannot_be_resized() {
        let made = MemfdFile::create_with("unit", 8192, MapOptions::default(), |_, m| {
            // SAFETY: the mapping is 8192 bytes long and not shared with anyone yet.
            unsafe { m.as_ptr().write(42) };
            Ok::<(), CreateError>(())
        })
        .unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        send_fd(&a, made.fd(), b"ring").unwrap();
        let mut tag = [0u8; 8];
        let (fd, n) = recv_fd(&b, &mut tag).unwrap();
        assert_eq!(&tag[..n], b"ring");
        assert_eq!(rustix::fs::ftruncate(&fd, 100), Err(Errno::PERM));
        assert_eq!(rustix::fs::ftruncate(&fd, 1 << 20), Err(Errno::PERM));
        let got = MemfdFile::from_received(fd, 8192, MapOptions::default()).unwrap();
        // SAFETY: both mappings are 8192 bytes of the same file.
        assert_eq!(unsafe { got.mapping().as_ptr().read() }, 42);
        assert!(matches!(
            MemfdFile::from_received(
                rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap(),
                1,
                MapOptions::default()
            ),
            Err(AttachError::NotSealed { .. })
        ));
    }
}
