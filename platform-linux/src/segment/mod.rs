//! Named segments in `/dev/shm`: create, attach with checks, and the errors a person reads.
//!
//! A segment named `mic` is the file `/dev/shm/voxring.mic`. The creator makes it as an
//! unnamed file (`O_TMPFILE`; where a filesystem lacks it, `O_CREAT | O_EXCL | O_NOFOLLOW`
//! under a temporary name), takes its liveness lock, sets its mode (0600, or 0660 with a
//! chosen group), sizes and reserves it (`fallocate(2)`, so a full tmpfs is an error now and
//! not a `SIGBUS` later), initialises the ring, and only then gives it its name with
//! `linkat(2)`, which fails if the name exists (the fallback uses
//! `renameat2(RENAME_NOREPLACE)`): nobody can attach to, or clean up, a half-made segment,
//! and a creator that dies half-way leaves nothing behind. The name is checked for existence
//! first only to fail early; the link is what decides (`O_EXCL` semantics).
//!
//! Attaching validates before trusting anything, each check with its own error: the name is
//! not a symlink (`O_NOFOLLOW`), `fstat(2)` on the opened descriptor says a regular file,
//! owned by the expected user, not writable by group or others unless allowed, and exactly
//! as large as its layout says. The size comes first from the caller ([`SegmentFile::attach`])
//! or from the ring header itself ([`SegmentFile::attach_ring`]: the fixed 384 bytes are read
//! with `pread(2)` into a private copy and validated by voxring-core there, before anything is
//! mapped). A file larger than that is refused ([`AttachError::TooLarge`]) and only the
//! validated length is ever mapped and prefaulted: a peer that grows a segment to gigabytes
//! (sparse, so it costs it nothing) cannot make attachers map, populate and pay for them.
//! The layout checks of voxring-core run again on the mapping (see [`crate::ring`]): the copy
//! only decides how much to map.
//!
//! An attacher takes its presence lock ([`crate::liveness`]) right after the checks and then
//! verifies that the name still refers to the inode it opened; a segment that
//! [`crate::cleanup::clean_segments`] removed in between is reported as not found instead of
//! being used unnamed (see [`crate::cleanup`] for the other half of that hand-shake).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FallocateFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use rustix::process::Gid;

use crate::guard::ArtifactGuard;

mod error;
mod naming;

use crate::mapping::{MapOptions, SharedMapping};
pub use error::{AttachError, CreateError, FailureClass, NameError};
pub(crate) use error::{core_attach_error, file_kind};
pub use naming::{
    CONTAINER_DOCS, MAX_NAME_LEN, PREFIX, SHM_DIR, display_name, file_name, is_segment_file_name,
    is_temporary_name, path_of,
};

/// Who may open a segment besides its creator.
///
/// ```
/// use voxring_linux::segment::{Access, CreateOptions, GroupSpec};
/// // Mode 0660, group `audio`: its members may attach.
/// let opts = CreateOptions {
///     access: Access::Group(GroupSpec::Name("audio".into())),
///     ..CreateOptions::default()
/// };
/// assert_ne!(opts.access, Access::OwnerOnly);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Access {
    /// Mode 0600: only the creating user.
    #[default]
    OwnerOnly,
    /// Mode 0660 and the file's group set to this group: members of it may attach
    /// (attach with [`AttachOptions::allow_group_writable`]).
    Group(GroupSpec),
}

/// A group, by number or by name (names are looked up in `/etc/group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupSpec {
    /// A numeric group id.
    Id(u32),
    /// A group name from `/etc/group`.
    Name(String),
}

impl GroupSpec {
    /// Resolves to a numeric gid.
    pub fn resolve(&self) -> Result<u32, CreateError> {
        match self {
            GroupSpec::Id(g) => Ok(*g),
            GroupSpec::Name(n) => {
                lookup_group(n).ok_or_else(|| CreateError::UnknownGroup { group: n.clone() })
            }
        }
    }
}

fn lookup_group(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut it = line.split(':');
        let n = it.next()?;
        let _pw = it.next()?;
        let gid = it.next()?;
        (n == name).then(|| gid.parse().ok()).flatten()
    })
}

/// Options for creating a segment file.
///
/// ```
/// use voxring_linux::segment::{Access, CreateOptions, GroupSpec};
///
/// // Members of group `audio` may attach too (mode 0660); the file stays after this
/// // process exits, for `voxring segments clean` to remove once nobody uses it.
/// let opts = CreateOptions {
///     access: Access::Group(GroupSpec::Name("audio".into())),
///     remove_on_drop: false,
///     ..CreateOptions::default()
/// };
/// assert!(opts.prefault);
/// ```
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Who else may open it (default: nobody).
    pub access: Access,
    /// Fault every page in at creation (default true).
    pub prefault: bool,
    /// `mlock` the mapping (default false; needs a memlock limit or `CAP_IPC_LOCK`).
    pub lock: bool,
    /// Remove the file when the creating handle is dropped, and on SIGINT/SIGTERM/exit of the
    /// creating process (default true). Consumers that are attached keep their mapping.
    pub remove_on_drop: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            access: Access::OwnerOnly,
            prefault: true,
            lock: false,
            remove_on_drop: true,
        }
    }
}

/// Options for attaching to an existing segment.
///
/// ```
/// use voxring_linux::segment::AttachOptions;
/// // Attach to a segment another user (uid 1000) shares with a group.
/// let opts = AttachOptions {
///     expected_owner: Some(1000),
///     allow_group_writable: true,
///     ..AttachOptions::default()
/// };
/// assert!(opts.prefault && !opts.allow_world_writable);
/// ```
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// The user that must own the file; `None` = the effective uid of this process.
    pub expected_owner: Option<u32>,
    /// Accept a group-writable file (segments shared through a group are 0660).
    pub allow_group_writable: bool,
    /// Accept a world-writable file. Anyone on the machine could then scribble on the ring;
    /// only for experiments.
    pub allow_world_writable: bool,
    /// Fault every page in at attach (default true).
    pub prefault: bool,
    /// `mlock` the mapping (default false).
    pub lock: bool,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            expected_owner: None,
            allow_group_writable: false,
            allow_world_writable: false,
            prefault: true,
            lock: false,
        }
    }
}

fn shm_dir() -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        SHM_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Where segment `name` lives: its file name in `/dev/shm`, its path, and `/dev/shm` opened.
/// A bad name becomes `name_error`'s error; failing to open `/dev/shm`, `io_error`'s (called
/// with the operation, "open", the path and the errno).
fn locate<E>(
    name: &str,
    name_error: impl FnOnce(NameError) -> E,
    io_error: impl FnOnce(&'static str, PathBuf, Errno) -> E,
) -> Result<(String, PathBuf, OwnedFd), E> {
    let fname = file_name(name).map_err(name_error)?;
    let path = Path::new(SHM_DIR).join(&fname);
    let dir = shm_dir().map_err(|errno| io_error("open", PathBuf::from(SHM_DIR), errno))?;
    Ok((fname, path, dir))
}

/// A segment file in `/dev/shm`, open and mapped. The ring types build on this.
#[derive(Debug)]
pub struct SegmentFile {
    path: PathBuf,
    fd: OwnedFd,
    mapping: SharedMapping,
    /// Unlinks the file on drop and on SIGINT/SIGTERM/exit when this handle created it.
    _artifact: Option<ArtifactGuard>,
}

impl SegmentFile {
    /// Creates `/dev/shm/voxring.<name>` of `size` bytes, zero-filled, mapped shared.
    ///
    /// `init` runs on the mapped memory (and the open descriptor) before the segment becomes
    /// visible under its name; an error from it aborts the creation and removes the file.
    pub fn create_with<E>(
        name: &str,
        size: usize,
        opts: &CreateOptions,
        init: impl FnOnce(&OwnedFd, &SharedMapping) -> Result<(), E>,
    ) -> Result<Self, CreateError>
    where
        E: Into<CreateError>,
    {
        let (final_name, path, dir) = locate(name, CreateError::Name, |op, path, errno| {
            CreateError::Io { op, path, errno }
        })?;
        if rustix::fs::statat(&dir, final_name.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            return Err(CreateError::AlreadyExists { path });
        }
        let gid = match &opts.access {
            Access::OwnerOnly => None,
            Access::Group(g) => Some(g.resolve()?),
        };
        let io = |op: &'static str, errno| CreateError::Io {
            op,
            path: path.clone(),
            errno,
        };
        // Preferred: an unnamed file (O_TMPFILE) that only gets a name once it is complete;
        // a creator that dies before that leaves nothing behind. Fallback for filesystems
        // without O_TMPFILE: a temporary name, renamed without replacing.
        let (fd, temporary) = match rustix::fs::openat(
            &dir,
            ".",
            OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        ) {
            Ok(fd) => (fd, None),
            Err(Errno::OPNOTSUPP) | Err(Errno::ISDIR) | Err(Errno::INVAL) => {
                let tmp_name = format!(
                    "{final_name}.tmp-{}-{}",
                    rustix::process::getpid().as_raw_nonzero(),
                    unique()
                );
                let fd = rustix::fs::openat(
                    &dir,
                    tmp_name.as_str(),
                    OFlags::RDWR
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::RUSR | Mode::WUSR,
                )
                .map_err(|e| io("create", e))?;
                // The temporary file is removed if anything below fails (guard dropped).
                let guard = ArtifactGuard::register(Path::new(SHM_DIR).join(&tmp_name));
                (fd, Some((tmp_name, guard)))
            }
            Err(e) => return Err(io("create", e)),
        };
        // Hold the "someone is here" lock from the first moment, so a concurrent clean-up
        // never removes a segment being built.
        crate::liveness::hold_presence(fd.as_fd()).map_err(|e| io("lock", e))?;
        let mode = match gid {
            None => Mode::RUSR | Mode::WUSR,
            Some(gid) => {
                let g = Gid::from_raw(gid);
                rustix::fs::fchown(&fd, None, Some(g))
                    .map_err(|errno| CreateError::SetGroup { gid, errno })?;
                Mode::RUSR | Mode::WUSR | Mode::RGRP | Mode::WGRP
            }
        };
        // Explicit fchmod: the mode given to open is filtered by the umask.
        rustix::fs::fchmod(&fd, mode).map_err(|e| io("chmod", e))?;
        rustix::fs::ftruncate(&fd, size as u64).map_err(|e| io("resize", e))?;
        match rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, size as u64) {
            Ok(()) => {}
            Err(Errno::NOSPC) => {
                return Err(CreateError::NoSpace { path, size });
            }
            // Filesystems without fallocate: go on, the prefault below still touches pages.
            Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => {}
            Err(e) => return Err(io("reserve space for", e)),
        }
        let mapping = SharedMapping::map(
            fd.as_fd(),
            size,
            MapOptions {
                prefault: opts.prefault,
                lock: opts.lock,
            },
        )
        .map_err(CreateError::Map)?;
        init(&fd, &mapping).map_err(Into::into)?;
        // Giving the file its final name: a name already there is `AlreadyExists`.
        let published = |errno, op| match errno {
            Errno::EXIST => CreateError::AlreadyExists { path: path.clone() },
            e => io(op, e),
        };
        match temporary {
            None => rustix::fs::linkat(
                rustix::fs::CWD,
                format!("/proc/self/fd/{}", fd.as_raw_fd()),
                &dir,
                final_name.as_str(),
                AtFlags::SYMLINK_FOLLOW,
            )
            .map_err(|errno| published(errno, "publish (link /proc/self/fd, is /proc mounted?)"))?,
            Some((tmp_name, guard)) => {
                rustix::fs::renameat_with(
                    &dir,
                    tmp_name.as_str(),
                    &dir,
                    final_name.as_str(),
                    RenameFlags::NOREPLACE,
                )
                .map_err(|errno| published(errno, "publish (rename)"))?;
                guard.forget();
            }
        }
        let artifact = opts
            .remove_on_drop
            .then(|| ArtifactGuard::register(path.clone()));
        Ok(SegmentFile {
            path,
            fd,
            mapping,
            _artifact: artifact,
        })
    }

    /// Opens and validates `/dev/shm/voxring.<name>`, which must be exactly `size` bytes (the
    /// size of the caller's layout), and maps exactly those bytes. A larger file is refused
    /// with [`AttachError::TooLarge`] before anything is mapped, a smaller one with
    /// [`AttachError::TooSmall`]. For a voxring-core ring use [`SegmentFile::attach_ring`],
    /// which reads the size from the ring's header.
    pub fn attach(name: &str, size: u64, opts: &AttachOptions) -> Result<Self, AttachError> {
        Self::attach_sized(name, opts, Presence::Hold, |_, _, _| Ok(size))
    }

    /// Opens and validates `/dev/shm/voxring.<name>` holding a voxring-core ring: reads the
    /// fixed part of the ring (384 bytes, `core/LAYOUT.md`) with `pread(2)` into a private
    /// copy, lets voxring-core validate the header there, requires the file to be exactly the
    /// region size the header states, and maps exactly that many bytes. Nothing of the file
    /// is mapped before its size is known to be the ring's.
    pub fn attach_ring(name: &str, opts: &AttachOptions) -> Result<Self, AttachError> {
        Self::attach_sized(name, opts, Presence::Hold, ring_region_size)
    }

    /// [`SegmentFile::attach_ring`] for read-only observers (`voxring segments list`): the
    /// same checks and the same exact-size mapping, but no presence lock, so the observer
    /// does not make a dead segment look in use. A clean-up may remove the file while it is
    /// observed; the mapping stays valid.
    pub fn observe_ring(name: &str, opts: &AttachOptions) -> Result<Self, AttachError> {
        Self::attach_sized(name, opts, Presence::None, ring_region_size)
    }

    /// How many times [`SegmentFile::attach_sized`] re-opens a name that a concurrent clean-up
    /// moved away while it was being opened, before it reports the segment as not found.
    const NAME_MOVED_RETRIES: u32 = 3;

    fn attach_sized(
        name: &str,
        opts: &AttachOptions,
        presence: Presence,
        layout_size: impl Fn(BorrowedFd<'_>, &Path, u64) -> Result<u64, AttachError>,
    ) -> Result<Self, AttachError> {
        let (fname, path, dir) = locate(name, AttachError::Name, |op, path, errno| {
            AttachError::Io { op, path, errno }
        })?;
        let mut attempt = 0;
        loop {
            let fd = open_segment(dir.as_fd(), &fname, &path, opts)?;
            let file_size = validate_open_file(fd.as_fd(), &path, opts)?;
            let size = layout_size(fd.as_fd(), &path, file_size)?;
            check_extent(&path, file_size, size)?;
            let len = usize::try_from(size).map_err(|_| AttachError::TooLarge {
                path: path.clone(),
                size: file_size,
                expected: size,
            })?;
            // From here on a clean-up sees this process as a user of the segment. A clean-up
            // that judged it unused before this lock moves the name away before it looks
            // again (see crate::cleanup), so: if the name still refers to this inode now, no
            // clean-up can remove it under us; if it does not, start again.
            if presence == Presence::Hold {
                crate::liveness::hold_presence(fd.as_fd()).map_err(|errno| AttachError::Io {
                    op: "lock",
                    path: path.clone(),
                    errno,
                })?;
            }
            if presence == Presence::Hold && !names_same_file(dir.as_fd(), &fname, fd.as_fd()) {
                attempt += 1;
                if attempt > Self::NAME_MOVED_RETRIES {
                    return Err(AttachError::NotFound { path });
                }
                continue;
            }
            let mapping = SharedMapping::map(
                fd.as_fd(),
                len,
                MapOptions {
                    prefault: opts.prefault,
                    lock: opts.lock,
                },
            )
            .map_err(AttachError::Map)?;
            return Ok(SegmentFile {
                path,
                fd,
                mapping,
                _artifact: None,
            });
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The mapping.
    pub fn mapping(&self) -> &SharedMapping {
        &self.mapping
    }

    /// Re-checks with `fstat(2)` that nobody shrank the file under the mapping; `Err(size)`
    /// with the current size if someone did. Call it from slow paths.
    pub fn check_size(&self) -> Result<(), u64> {
        self.mapping.check_size(&self.fd)
    }
}

/// Whether an attach takes the presence lock ([`crate::liveness::hold_presence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// A participant: hold it, and check the name still refers to the file afterwards.
    Hold,
    /// An observer: take no lock.
    None,
}

/// Opens a segment file for attaching (`O_NOFOLLOW`, never blocking on a FIFO, never a
/// controlling terminal), telling apart the reasons it can fail.
fn open_segment(
    dir: BorrowedFd<'_>,
    fname: &str,
    path: &Path,
    opts: &AttachOptions,
) -> Result<OwnedFd, AttachError> {
    let asking = rustix::process::geteuid().as_raw();
    let path = path.to_path_buf();
    match rustix::fs::openat(
        dir,
        fname,
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(fd),
        Err(Errno::NOENT) => Err(AttachError::NotFound { path }),
        Err(Errno::LOOP) => Err(AttachError::Symlink { path }),
        Err(Errno::ACCESS) | Err(Errno::PERM) => {
            // Tell the owner mismatch apart from a plain permission problem when we can.
            if let Ok(st) = rustix::fs::statat(dir, fname, AtFlags::SYMLINK_NOFOLLOW) {
                let expected = opts.expected_owner.unwrap_or(asking);
                if st.st_uid != expected {
                    return Err(AttachError::OwnerMismatch {
                        path,
                        owner: st.st_uid,
                        expected,
                        asking,
                    });
                }
            }
            Err(AttachError::PermissionDenied { path, asking })
        }
        Err(Errno::NXIO) => Err(AttachError::NotRegularFile {
            path,
            kind: "socket or device",
        }),
        Err(Errno::ISDIR) => Err(AttachError::NotRegularFile {
            path,
            kind: "directory",
        }),
        Err(errno) => Err(AttachError::Io {
            op: "open",
            path,
            errno,
        }),
    }
}

/// Whether `name` in `dir` (not following a symlink) is the file open as `fd` (same device
/// and inode).
pub(crate) fn names_same_file(dir: BorrowedFd<'_>, name: &str, fd: BorrowedFd<'_>) -> bool {
    match (
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
        rustix::fs::fstat(fd),
    ) {
        (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
        _ => false,
    }
}

/// The checks `attach` runs on an opened descriptor before reading anything from it: a
/// regular file, owned by the expected user, not group- or world-writable unless allowed.
/// Returns the file size.
pub(crate) fn validate_open_file(
    fd: BorrowedFd<'_>,
    path: &Path,
    opts: &AttachOptions,
) -> Result<u64, AttachError> {
    let asking = rustix::process::geteuid().as_raw();
    let st = rustix::fs::fstat(fd).map_err(|errno| AttachError::Io {
        op: "fstat",
        path: path.to_path_buf(),
        errno,
    })?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(AttachError::NotRegularFile {
            path: path.to_path_buf(),
            kind: file_kind(kind),
        });
    }
    let expected = opts.expected_owner.unwrap_or(asking);
    if st.st_uid != expected {
        return Err(AttachError::OwnerMismatch {
            path: path.to_path_buf(),
            owner: st.st_uid,
            expected,
            asking,
        });
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o002 != 0 && !opts.allow_world_writable {
        return Err(AttachError::WorldWritable {
            path: path.to_path_buf(),
            mode,
        });
    }
    if mode & 0o020 != 0 && !opts.allow_group_writable {
        return Err(AttachError::GroupWritable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(st.st_size.max(0) as u64)
}

/// Refuses a file whose size is not exactly the `expected` size of its layout.
pub(crate) fn check_extent(path: &Path, size: u64, expected: u64) -> Result<(), AttachError> {
    if size < expected.max(1) {
        return Err(AttachError::TooSmall {
            path: path.to_path_buf(),
            size,
            needed: expected.max(1),
        });
    }
    if size > expected {
        return Err(AttachError::TooLarge {
            path: path.to_path_buf(),
            size,
            expected,
        });
    }
    Ok(())
}

/// Bytes at the start of every ring region that are enough to compute its size: the header,
/// producer and wait blocks (`core/LAYOUT.md`: "region ≥ 384 bytes").
pub const RING_FIXED_BYTES: usize = 384;

/// A private, suitably aligned copy of a ring's fixed part (voxring-core wants 128-byte
/// alignment).
#[repr(C, align(128))]
struct RingHead([u8; RING_FIXED_BYTES]);

/// The region size the ring in `fd` states, validated by voxring-core on a private copy of
/// the header read with `pread(2)`; nothing is mapped. `file_size` is the size `fstat(2)`
/// gave.
pub(crate) fn ring_region_size(
    fd: BorrowedFd<'_>,
    path: &Path,
    file_size: u64,
) -> Result<u64, AttachError> {
    let too_small = |size: u64| AttachError::TooSmall {
        path: path.to_path_buf(),
        size,
        needed: RING_FIXED_BYTES as u64,
    };
    if file_size < RING_FIXED_BYTES as u64 {
        return Err(too_small(file_size));
    }
    let mut head = RingHead([0; RING_FIXED_BYTES]);
    let mut got = 0;
    while got < RING_FIXED_BYTES {
        match rustix::io::pread(fd, &mut head.0[got..], got as u64) {
            Ok(0) => return Err(too_small(got as u64)), // shrunk meanwhile
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(errno) => {
                return Err(AttachError::Io {
                    op: "read the ring header of",
                    path: path.to_path_buf(),
                    errno,
                });
            }
        }
    }
    // The copy is exactly the fixed part, so a valid header makes voxring-core answer
    // `TooSmall` with the region size it validated (every region is larger than its fixed
    // part: it holds at least one consumer block and one slot). The unit test
    // `header_copy_yields_the_region_size` pins this down.
    // SAFETY: `head` is a local, 128-byte-aligned buffer of RING_FIXED_BYTES bytes, valid for
    // reads and writes; the `Ring` handle returned on success is dropped at the end of this
    // match, before `head`.
    match unsafe { voxring_core::Ring::attach(head.0.as_mut_ptr(), RING_FIXED_BYTES) } {
        Ok(ring) => Ok(ring.region_size() as u64),
        Err(voxring_core::AttachError::TooSmall { needed, got })
            if got == RING_FIXED_BYTES && needed > RING_FIXED_BYTES =>
        {
            Ok(needed as u64)
        }
        Err(e) => Err(core_attach_error(path, e)),
    }
}

/// A number unique within this process (for temporary names).
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Relaxed: only uniqueness matters, no other memory is published through it.
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Removes `/dev/shm/voxring.<name>` by name, whatever its state. Prefer
/// [`crate::cleanup::clean_segments`], which removes only unused segments.
pub fn unlink(name: &str) -> Result<(), AttachError> {
    let (fname, path, dir) = locate(name, AttachError::Name, |op, path, errno| AttachError::Io {
        op,
        path,
        errno,
    })?;
    rustix::fs::unlinkat(&dir, fname.as_str(), AtFlags::empty()).map_err(|errno| match errno {
        Errno::NOENT => AttachError::NotFound { path },
        errno => AttachError::Io {
            op: "unlink",
            path,
            errno,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxring_core::{Policy, RingConfig, SampleFormat};

    /// `ring_region_size` relies on voxring-core answering `TooSmall { needed: region_size }`
    /// for a valid header in a copy of exactly the fixed part; this pins that down for the
    /// smallest and a large configuration, and shows a bad header is refused on the copy.
    #[test]
    fn header_copy_yields_the_region_size() {
        let configs = [
            RingConfig {
                frames: 1,
                samples_per_frame: 1,
                channels: 1,
                format: SampleFormat::S16,
                sample_rate: 1,
                max_consumers: 1,
                policy: Policy::Lossy,
            },
            RingConfig {
                frames: 64,
                samples_per_frame: 480,
                channels: 2,
                format: SampleFormat::F32,
                sample_rate: 48_000,
                max_consumers: 8,
                policy: Policy::Lossless,
            },
        ];
        for cfg in configs {
            let size = cfg.region_size().unwrap();
            let fd = rustix::fs::memfd_create("voxring-head-test", rustix::fs::MemfdFlags::CLOEXEC)
                .unwrap();
            rustix::fs::ftruncate(&fd, size as u64).unwrap();
            let m = SharedMapping::map(fd.as_fd(), size, MapOptions::default()).unwrap();
            // SAFETY: a fresh private mapping of `size` bytes, page-aligned; the handle is not
            // kept.
            unsafe { voxring_core::Ring::create(m.as_ptr(), m.len(), &cfg) }.unwrap();
            let path = Path::new("memfd:test");
            assert_eq!(
                ring_region_size(fd.as_fd(), path, size as u64).unwrap(),
                size as u64
            );
            // A bad magic is refused on the copy, before anything would be mapped.
            rustix::io::pwrite(&fd, &[0u8; 8], 0).unwrap();
            assert!(matches!(
                ring_region_size(fd.as_fd(), path, size as u64),
                Err(AttachError::Layout {
                    error: voxring_core::AttachError::BadMagic { .. },
                    ..
                })
            ));
        }
    }
}
