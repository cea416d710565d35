//! Segment names: what a valid name is, and how it maps to a file in `/dev/shm`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::NameError;

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
///
/// ```
/// use voxring_linux::segment::{file_name, path_of};
///
/// assert_eq!(file_name("mic").unwrap(), "voxring.mic");
/// assert_eq!(path_of("tts-out.1").unwrap().to_str(), Some("/dev/shm/voxring.tts-out.1"));
/// let err = file_name("../etc/passwd").unwrap_err();
/// assert!(err.to_string().contains("not valid"));
/// ```
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
