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

use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FallocateFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use rustix::process::Gid;

use crate::guard::ArtifactGuard;
use crate::mapping::{MapError, MapOptions, SharedMapping};

/// The directory named segments live in.
pub const SHM_DIR: &str = "/dev/shm";
/// Every voxring segment file name starts with this.
pub const PREFIX: &str = "voxring.";
/// Where the rootless-container guide lives (named in owner-mismatch errors).
pub const CONTAINER_DOCS: &str = "platform-linux/docs/containers.md";
/// Longest segment name accepted (without the prefix).
pub const MAX_NAME_LEN: usize = 200;

/// Checks a segment name: 1 to 200 bytes of `[A-Za-z0-9._-]`, not starting with a dot.
/// Returns the file name in `/dev/shm` (`voxring.<name>`).
pub fn file_name(name: &str) -> Result<String, NameError> {
    let name = name.strip_prefix(PREFIX).unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(NameError {
            name: name.to_string(),
            reason: "it must be 1 to 200 bytes long",
        });
    }
    if name.starts_with('.') {
        return Err(NameError {
            name: name.to_string(),
            reason: "it must not start with a dot",
        });
    }
    if name.contains(".tmp-") {
        return Err(NameError {
            name: name.to_string(),
            reason: "`.tmp-` is reserved for segments being created",
        });
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(NameError {
            name: name.to_string(),
            reason: "only letters, digits, '.', '_' and '-' are allowed",
        });
    }
    Ok(format!("{PREFIX}{name}"))
}

/// Full path of the segment called `name` (`/dev/shm/voxring.<name>`).
pub fn path_of(name: &str) -> Result<PathBuf, NameError> {
    Ok(Path::new(SHM_DIR).join(file_name(name)?))
}

/// A segment name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    /// The name as given.
    pub name: String,
    /// Why it was refused.
    pub reason: &'static str,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "segment name {:?} is not valid: {}; pick a name such as \"mic\" or \"tts-out.1\"",
            self.name, self.reason
        )
    }
}

impl std::error::Error for NameError {}

/// Who may open a segment besides its creator.
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

/// Why creating a segment failed.
#[derive(Debug)]
pub enum CreateError {
    /// The name is not acceptable.
    Name(NameError),
    /// A segment of that name exists already.
    AlreadyExists {
        /// Its path.
        path: PathBuf,
    },
    /// The group asked for in [`Access::Group`] is not in `/etc/group`.
    UnknownGroup {
        /// The name given.
        group: String,
    },
    /// Setting the file's group failed (this user is not a member of it).
    SetGroup {
        /// The gid asked for.
        gid: u32,
        /// The errno.
        errno: Errno,
    },
    /// `/dev/shm` has no room for the segment.
    NoSpace {
        /// Its path.
        path: PathBuf,
        /// Bytes asked for.
        size: usize,
    },
    /// Mapping or locking failed.
    Map(MapError),
    /// voxring-core refused the ring configuration or the memory.
    Layout(voxring_core::CreateError),
    /// Another system call failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The errno.
        errno: Errno,
    },
}

impl From<voxring_core::CreateError> for CreateError {
    fn from(e: voxring_core::CreateError) -> Self {
        CreateError::Layout(e)
    }
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateError::Name(e) => e.fmt(f),
            CreateError::AlreadyExists { path } => write!(
                f,
                "segment {} exists already: another pipeline uses this name, or a crashed one \
                 left it behind; pick another name, or run `voxring segments clean` to remove \
                 segments nobody uses",
                path.display()
            ),
            CreateError::UnknownGroup { group } => write!(
                f,
                "group {group:?} is not in /etc/group; create it (groupadd {group}) or give a \
                 numeric gid"
            ),
            CreateError::SetGroup { gid, errno } => write!(
                f,
                "could not give the segment to group {gid} ({errno}): this user must be a member \
                 of that group (usermod -aG)"
            ),
            CreateError::NoSpace { path, size } => write!(
                f,
                "no room for {size} bytes in {} for {}: /dev/shm is full or too small; free \
                 space (`voxring segments clean`), or enlarge it (mount -o remount,size=... \
                 /dev/shm, or --shm-size for containers)",
                SHM_DIR,
                path.display()
            ),
            CreateError::Map(e) => e.fmt(f),
            CreateError::Layout(e) => e.fmt(f),
            CreateError::Io { op, path, errno } => {
                write!(f, "{op} {} failed: {errno}", path.display())
            }
        }
    }
}

impl std::error::Error for CreateError {}

/// Why attaching to a segment was refused.
#[derive(Debug)]
pub enum AttachError {
    /// The name is not acceptable.
    Name(NameError),
    /// No segment of that name exists.
    NotFound {
        /// Its path.
        path: PathBuf,
    },
    /// The name is a symbolic link (refused: it could point anywhere).
    Symlink {
        /// Its path.
        path: PathBuf,
    },
    /// The name is not a regular file (a directory, FIFO, device...).
    NotRegularFile {
        /// Its path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The file belongs to another user.
    OwnerMismatch {
        /// Its path.
        path: PathBuf,
        /// The uid that created (owns) it.
        owner: u32,
        /// The uid that was expected (by default, the uid asking).
        expected: u32,
        /// The effective uid of the process asking.
        asking: u32,
    },
    /// The file is writable by its group, and that was not allowed.
    GroupWritable {
        /// Its path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is writable by everyone, and that was not allowed.
    WorldWritable {
        /// Its path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is smaller than the ring it must hold.
    TooSmall {
        /// Its path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The size needed.
        needed: u64,
    },
    /// The file is larger than its layout: a peer grew it. Refused without mapping it.
    TooLarge {
        /// Its path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The size its layout states.
        expected: u64,
    },
    /// Opening it was refused by the file's permissions.
    PermissionDenied {
        /// Its path.
        path: PathBuf,
        /// The uid asking.
        asking: u32,
    },
    /// Mapping or locking failed.
    Map(MapError),
    /// The segment holds a ring of another layout version.
    WrongVersion {
        /// Its path.
        path: PathBuf,
        /// The version in the segment's header.
        found: u32,
        /// The version this build speaks.
        supported: u32,
    },
    /// voxring-core's layout checks refused the contents (bad magic, bad field...).
    Layout {
        /// Its path.
        path: PathBuf,
        /// What core found.
        error: voxring_core::AttachError,
    },
    /// A memfd passed over a socket was not sealed against resizing.
    NotSealed {
        /// The seals it had.
        seals: u32,
    },
    /// Another system call failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The errno.
        errno: Errno,
    },
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::Name(e) => e.fmt(f),
            AttachError::NotFound { path } => write!(
                f,
                "no segment at {}: start the producer first, or check the name (`voxring \
                 segments list`); in a container, /dev/shm must be shared with the producer \
                 (see {CONTAINER_DOCS})",
                path.display()
            ),
            AttachError::Symlink { path } => write!(
                f,
                "{} is a symbolic link: refused, a segment must be a plain file; remove the link",
                path.display()
            ),
            AttachError::NotRegularFile { path, kind } => write!(
                f,
                "{} is a {kind}, not a regular file: refused; remove it and let the producer \
                 create the segment",
                path.display()
            ),
            AttachError::OwnerMismatch {
                path,
                owner,
                expected,
                asking,
            } => write!(
                f,
                "segment {} was created by uid {owner}, but uid {expected} was expected (this \
                 process runs as uid {asking}): refused, another user's segment is not trusted. \
                 Run both sides as the same user, or share it through a group and attach with \
                 expected_owner set to {owner}; with rootless containers the uids are mapped \
                 differently in each one: see {CONTAINER_DOCS}",
                path.display()
            ),
            AttachError::GroupWritable { path, mode } => write!(
                f,
                "segment {} is group-writable (mode {mode:04o}) and that was not allowed: \
                 attach with allow_group_writable if it is shared through a group on purpose, \
                 or chmod g-w it",
                path.display()
            ),
            AttachError::WorldWritable { path, mode } => write!(
                f,
                "segment {} is writable by every user (mode {mode:04o}): refused, anyone could \
                 corrupt the ring; recreate it with a group instead (chmod o-w to keep it)",
                path.display()
            ),
            AttachError::TooSmall { path, size, needed } => write!(
                f,
                "segment {} is {size} bytes but at least {needed} are needed: it was made for \
                 another configuration or was truncated; recreate it",
                path.display()
            ),
            AttachError::TooLarge {
                path,
                size,
                expected,
            } => write!(
                f,
                "segment {} is {size} bytes but its layout needs exactly {expected}: refused \
                 without mapping it, someone grew the file (mapping all of it could cost {size} \
                 bytes of memory); let the producer recreate the segment, and with peers you \
                 do not trust use a sealed memfd segment",
                path.display()
            ),
            AttachError::PermissionDenied { path, asking } => write!(
                f,
                "permission denied opening {} as uid {asking}: its mode does not let this user \
                 in; share it through a group or run as its owner (see {CONTAINER_DOCS})",
                path.display()
            ),
            AttachError::Map(e) => e.fmt(f),
            AttachError::WrongVersion {
                path,
                found,
                supported,
            } => write!(
                f,
                "segment {} holds a ring of layout version {found}, but this program speaks \
                 version {supported}: refused; build producer and consumers from the same \
                 voxring, or let the producer recreate the segment",
                path.display()
            ),
            AttachError::Layout { path, error } => write!(f, "segment {}: {error}", path.display()),
            AttachError::NotSealed { seals } => write!(
                f,
                "the memfd received is not sealed against resizing (seals {seals:#x}): refused, \
                 the peer could shrink it under us; the sender must use voxring's sealed memfd"
            ),
            AttachError::Io { op, path, errno } => {
                write!(f, "{op} {} failed: {errno}", path.display())
            }
        }
    }
}

impl std::error::Error for AttachError {}

fn shm_dir() -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        SHM_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
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
        let final_name = file_name(name).map_err(CreateError::Name)?;
        let path = Path::new(SHM_DIR).join(&final_name);
        let dir = shm_dir().map_err(|errno| CreateError::Io {
            op: "open",
            path: PathBuf::from(SHM_DIR),
            errno,
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
        match temporary {
            None => rustix::fs::linkat(
                rustix::fs::CWD,
                format!("/proc/self/fd/{}", fd.as_raw_fd()),
                &dir,
                final_name.as_str(),
                AtFlags::SYMLINK_FOLLOW,
            )
            .map_err(|errno| match errno {
                Errno::EXIST => CreateError::AlreadyExists { path: path.clone() },
                e => io("publish (link /proc/self/fd, is /proc mounted?)", e),
            })?,
            Some((tmp_name, guard)) => {
                rustix::fs::renameat_with(
                    &dir,
                    tmp_name.as_str(),
                    &dir,
                    final_name.as_str(),
                    RenameFlags::NOREPLACE,
                )
                .map_err(|errno| match errno {
                    Errno::EXIST => CreateError::AlreadyExists { path: path.clone() },
                    e => io("publish (rename)", e),
                })?;
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
        let fname = file_name(name).map_err(AttachError::Name)?;
        let path = Path::new(SHM_DIR).join(&fname);
        let dir = shm_dir().map_err(|errno| AttachError::Io {
            op: "open",
            path: PathBuf::from(SHM_DIR),
            errno,
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

/// voxring-core's attach error as this crate's, with the path.
pub(crate) fn core_attach_error(path: &Path, e: voxring_core::AttachError) -> AttachError {
    match e {
        voxring_core::AttachError::AbiMismatch { found } => AttachError::WrongVersion {
            path: path.to_path_buf(),
            found,
            supported: voxring_core::ABI_VERSION,
        },
        voxring_core::AttachError::TooSmall { needed, got } => AttachError::TooSmall {
            path: path.to_path_buf(),
            size: got as u64,
            needed: needed as u64,
        },
        error => AttachError::Layout {
            path: path.to_path_buf(),
            error,
        },
    }
}

fn file_kind(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// A number unique within this process (for temporary names).
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Relaxed: only uniqueness matters, no other memory is published through it.
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Whether a `/dev/shm` file name is a voxring segment (published or being created).
pub fn is_segment_file_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(PREFIX.as_bytes())
}

/// Whether a voxring file name is a temporary one (a segment being created).
pub fn is_temporary_name(name: &OsStr) -> bool {
    name.as_bytes().windows(5).any(|w| w == b".tmp-")
}

/// The user-facing name (`mic`) of a segment file name (`voxring.mic`).
pub fn display_name(file_name: &OsStr) -> String {
    let s = file_name.to_string_lossy();
    s.strip_prefix(PREFIX).unwrap_or(&s).to_string()
}

/// Removes `/dev/shm/voxring.<name>` by name, whatever its state. Prefer
/// [`crate::cleanup::clean_segments`], which removes only unused segments.
pub fn unlink(name: &str) -> Result<(), AttachError> {
    let fname = file_name(name).map_err(AttachError::Name)?;
    let dir = shm_dir().map_err(|errno| AttachError::Io {
        op: "open",
        path: PathBuf::from(SHM_DIR),
        errno,
    })?;
    rustix::fs::unlinkat(&dir, fname.as_str(), AtFlags::empty()).map_err(|errno| match errno {
        Errno::NOENT => AttachError::NotFound {
            path: Path::new(SHM_DIR).join(&fname),
        },
        errno => AttachError::Io {
            op: "unlink",
            path: Path::new(SHM_DIR).join(&fname),
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
