//! The errors of creating and attaching a segment, each saying what happened, why, and what
//! to do.

use std::fmt;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;
use rustix::io::Errno;

use super::naming::{CONTAINER_DOCS, SHM_DIR};
use crate::mapping::MapError;

/// A segment name that cannot be used.
///
/// ```
/// use voxring_linux::ring::Segment;
/// use voxring_linux::segment::{AttachError, AttachOptions};
/// let e = Segment::attach("../etc/passwd", &AttachOptions::default()).unwrap_err();
/// assert!(matches!(e, AttachError::Name(ref n) if n.name == "../etc/passwd"), "{e}");
/// ```
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

/// The broad class of a create or attach failure: what a binding reports as its code (the C
/// ABI's `VR_E_*`, the Python exception's `name`), decided once here so that every binding
/// classifies the same failure the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Nothing of that name (`VR_E_NOT_FOUND`).
    NotFound,
    /// Refused by ownership or permissions (`VR_E_PERMISSION`).
    Permission,
    /// The name or an argument is not acceptable (`VR_E_INVALID`).
    Invalid,
    /// A segment of that name already exists (`VR_E_EXISTS`).
    Exists,
    /// Anything else: the binding's code for the operation (`VR_E_ATTACH`, `VR_E_CREATE`).
    Other,
}

/// Why creating a segment failed.
///
/// ```
/// use voxring_linux::ring::Segment;
/// use voxring_linux::segment::{CreateError, CreateOptions};
/// # use voxring_core::{Policy, RingConfig, SampleFormat};
/// # let cfg = RingConfig {
/// #     frames: 4, samples_per_frame: 16, channels: 1, format: SampleFormat::S16,
/// #     sample_rate: 48_000, max_consumers: 2, policy: Policy::Lossless,
/// # };
/// let name = format!("doc-create-error-{}", std::process::id());
/// let _first = Segment::create(&name, &cfg, &CreateOptions::default())?;
/// let again = Segment::create(&name, &cfg, &CreateOptions::default());
/// assert!(matches!(again, Err(CreateError::AlreadyExists { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub enum CreateError {
    /// The name is not acceptable.
    Name(NameError),
    /// A segment of that name exists already.
    AlreadyExists {
        /// Its path.
        path: PathBuf,
    },
    /// The group asked for in [`Access::Group`](super::Access::Group) is not in `/etc/group`.
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
///
/// ```
/// use voxring_linux::ring::Segment;
/// use voxring_linux::segment::{AttachError, AttachOptions};
/// let e = Segment::attach("doc-no-such-segment", &AttachOptions::default()).unwrap_err();
/// assert!(matches!(e, AttachError::NotFound { .. }));
/// assert!(e.to_string().contains("doc-no-such-segment"), "{e}");
/// ```
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

/// How an error names a file type.
pub(crate) fn file_kind(kind: FileType) -> &'static str {
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

impl CreateError {
    /// The class a binding reports this failure as.
    pub fn class(&self) -> FailureClass {
        match self {
            CreateError::AlreadyExists { .. } => FailureClass::Exists,
            CreateError::Name(_) => FailureClass::Invalid,
            _ => FailureClass::Other,
        }
    }
}

impl AttachError {
    /// The class a binding reports this failure as: every refusal by ownership or mode bits
    /// (another owner, group- or world-writable, EACCES) is a permission failure.
    pub fn class(&self) -> FailureClass {
        match self {
            AttachError::NotFound { .. } => FailureClass::NotFound,
            AttachError::PermissionDenied { .. }
            | AttachError::OwnerMismatch { .. }
            | AttachError::GroupWritable { .. }
            | AttachError::WorldWritable { .. } => FailureClass::Permission,
            AttachError::Name(_) => FailureClass::Invalid,
            _ => FailureClass::Other,
        }
    }
}
