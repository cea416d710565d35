//! Descriptors a parent hands to a child by inheritance (`fork` + `exec` with close-on-exec
//! cleared), and the child's safe way to take ownership of them by number.
//!
//! Taking ownership of a descriptor by number is what `OwnedFd::from_raw_fd` does, and it is
//! `unsafe` because nothing stops two owners of one number. [`claim_inherited`] closes that gap
//! with the close-on-exec flag as the marker: a descriptor this process opened itself through
//! std or rustix is always close-on-exec, one the parent handed down is not. A claim succeeds
//! only on an open descriptor without the flag, and sets it; so a second claim of the same
//! number, or a claim of a descriptor the process opened, is refused.
//!
//! ```
//! use std::os::fd::AsRawFd;
//! use voxring_linux::inherit::{claim_inherited, make_inheritable};
//!
//! // The parent side: a pipe end the child is to inherit.
//! let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
//! let number = make_inheritable(&r)?;
//! std::mem::forget(r); // stands for exec: the number now belongs to nobody in this image
//! // The child side, given `number` on its command line:
//! let fd = claim_inherited(number)?;
//! assert_eq!(fd.as_raw_fd(), number);
//! assert!(claim_inherited(number).is_err(), "claimed once only");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use rustix::io::FdFlags;

/// Why an inherited descriptor could not be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InheritError {
    /// 0, 1 and 2 are stdin, stdout and stderr, never handed down this way.
    Standard(RawFd),
    /// Negative, or not open in this process.
    NotOpen {
        /// The number given.
        fd: RawFd,
        /// The errno of `fcntl(F_GETFD)`.
        errno: rustix::io::Errno,
    },
    /// Open but close-on-exec: this process opened it itself, or it was claimed already.
    NotInherited(RawFd),
}

impl fmt::Display for InheritError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InheritError::Standard(fd) => write!(
                f,
                "descriptor {fd} is stdin/stdout/stderr, not one a parent handed down: check the \
                 descriptor numbers passed to this process"
            ),
            InheritError::NotOpen { fd, errno } => write!(
                f,
                "descriptor {fd} is not open in this process ({errno}): the parent did not hand \
                 it down (was close-on-exec cleared before the exec?)"
            ),
            InheritError::NotInherited(fd) => write!(
                f,
                "descriptor {fd} is close-on-exec, so this process opened it itself or claimed \
                 it already: it is not an inherited descriptor to take"
            ),
        }
    }
}

impl std::error::Error for InheritError {}

/// Serialises claims, so two threads cannot both see the flag clear on one number.
static CLAIMS: Mutex<()> = Mutex::new(());

/// Takes ownership of descriptor `fd`, handed down by the parent: checks it is open and not
/// close-on-exec, then sets close-on-exec (it goes no further down) and returns it.
pub fn claim_inherited(fd: RawFd) -> Result<OwnedFd, InheritError> {
    if (0..=2).contains(&fd) {
        return Err(InheritError::Standard(fd));
    }
    if fd < 0 {
        return Err(InheritError::NotOpen {
            fd,
            errno: rustix::io::Errno::BADF,
        });
    }
    let _one_at_a_time = CLAIMS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // SAFETY: the borrow lives only for the two fcntl calls below, which check whether the
    // number is open at all (EBADF when not) and read or set its flags; no ownership is taken.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags =
        rustix::io::fcntl_getfd(borrowed).map_err(|errno| InheritError::NotOpen { fd, errno })?;
    if flags.contains(FdFlags::CLOEXEC) {
        return Err(InheritError::NotInherited(fd));
    }
    rustix::io::fcntl_setfd(borrowed, flags | FdFlags::CLOEXEC)
        .map_err(|errno| InheritError::NotOpen { fd, errno })?;
    // SAFETY: the descriptor is open and was not close-on-exec: std and rustix open everything
    // close-on-exec, so no owner in this process made it; the parent handed it down for this
    // claim. Setting close-on-exec above, under the lock, marks it claimed: any later claim of
    // this number is refused, so it has exactly one owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The parent side: clears close-on-exec on `fd` so the child spawned next inherits it, and
/// returns the number to pass to the child. The parent keeps ownership (and closes its copy
/// after the spawn).
pub fn make_inheritable(fd: &impl AsFd) -> Result<RawFd, rustix::io::Errno> {
    rustix::io::fcntl_setfd(fd.as_fd(), FdFlags::empty())?;
    Ok(fd.as_fd().as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack: claim a descriptor this process owns (it is close-on-exec, as everything std
    /// opens): refused, and the owner's descriptor still works.
    #[test]
    fn a_descriptor_this_process_opened_cannot_be_claimed() {
        let file = tempfile::tempfile().unwrap();
        let e = claim_inherited(file.as_raw_fd()).unwrap_err();
        assert_eq!(e, InheritError::NotInherited(file.as_raw_fd()));
        assert!(e.to_string().contains("close-on-exec"), "{e}");
        file.metadata().unwrap();
    }

    #[test]
    fn standard_and_closed_numbers_are_refused_with_a_reason() {
        assert_eq!(claim_inherited(1).unwrap_err(), InheritError::Standard(1));
        assert!(matches!(
            claim_inherited(-4),
            Err(InheritError::NotOpen { fd: -4, .. })
        ));
        let e = claim_inherited(1_000_000).unwrap_err();
        assert!(e.to_string().contains("not open"), "{e}");
    }
}
