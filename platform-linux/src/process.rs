//! Child processes: what a parent arranges between `fork` and `exec`, and what a child takes
//! over from its parent. The unsafe parts (`pre_exec` hooks, descriptor ownership) live here
//! so the layers above stay safe.

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::Mutex;

/// Makes `cmd`'s process ask the kernel for SIGKILL when the thread of this process that
/// spawns it dies (`PR_SET_PDEATHSIG`, set in the child between fork and exec, so it holds for
/// any program, e.g. a user's Python script that does not ask for it), and refuse to start
/// (`ESRCH` from `spawn`) if `parent` is no longer its parent by then. Spawn from the main
/// thread: the signal follows the thread that forked.
///
/// ```
/// use std::process::Command;
/// let mut cmd = Command::new("true");
/// voxring_linux::process::die_with_parent_before_exec(&mut cmd, std::process::id());
/// assert!(cmd.status()?.success());
/// // A parent that is not ours: the child refuses to start.
/// let mut cmd = Command::new("true");
/// voxring_linux::process::die_with_parent_before_exec(&mut cmd, u32::MAX);
/// assert_eq!(cmd.status().unwrap_err().raw_os_error(), Some(libc::ESRCH));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn die_with_parent_before_exec(cmd: &mut Command, parent: u32) {
    // SAFETY: the closure runs in the forked child before exec. It makes two system calls
    // (prctl, getppid), both async-signal-safe, allocates nothing (the error is a raw errno)
    // and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The parent may have died between fork and the prctl: then nobody would signal.
            let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
            if ppid as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Makes `cmd`'s process inherit `fd` under the same descriptor number (returned, to pass on
/// its command line); every other descriptor of this process stays close-on-exec. `cmd` keeps
/// its own duplicate of `fd` until it is dropped, so the child gets this file even if the
/// caller closes `fd` before spawning.
///
/// # Errors
/// `EINVAL` for a standard stream (0, 1, 2: the child's are set up by `Command`), or the
/// error of duplicating `fd` (`EMFILE`...).
///
/// ```
/// use std::io::{Read as _, Seek as _};
/// use std::os::fd::AsFd as _;
/// use std::process::Command;
///
/// let mut file = tempfile::tempfile()?;
/// let mut cmd = Command::new("sh");
/// let n = voxring_linux::process::inherit_fd(&mut cmd, file.as_fd())?;
/// assert!(cmd.arg("-c").arg(format!("printf hello >&{n}")).status()?.success());
/// let mut text = String::new();
/// file.rewind()?;
/// file.read_to_string(&mut text)?;
/// assert_eq!(text, "hello");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn inherit_fd(cmd: &mut Command, fd: BorrowedFd<'_>) -> io::Result<RawFd> {
    let target = fd.as_raw_fd();
    if target <= 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "descriptor {target} is a standard stream: set the child's with Command::stdin/stdout/stderr"
            ),
        ));
    }
    // Close-on-exec, above the standard streams: it never reaches the child's program itself.
    let keep = rustix::io::fcntl_dupfd_cloexec(fd, 3)?;
    let hook = move || {
        // SAFETY: both arguments are plain integers to the kernel; `keep` is open in the child
        // (its descriptor table is a copy of this process's, and `cmd` owns `keep` until
        // dropped). It replaces whatever the child has under `target` (nothing in the child
        // uses that number between here and exec) with this file, without close-on-exec (dup2
        // clears it). libc rather than rustix: rustix's dup2 wants an `OwnedFd` for `target`,
        // which the child does not own.
        if unsafe { libc::dup2(keep.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec. It makes one dup2 system call
    // (async-signal-safe), allocates nothing and takes no lock.
    unsafe { cmd.pre_exec(hook) };
    Ok(target)
}

/// Why [`take_inherited_fd`] refused a descriptor number.
///
/// ```
/// use voxring_linux::process::{InheritError, take_inherited_fd};
/// let e = take_inherited_fd(-1).unwrap_err();
/// assert_eq!(e, InheritError::NotOpen { fd: -1 });
/// assert!(e.to_string().contains("not open"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InheritError {
    /// A standard stream (0, 1, 2): owned by the standard library.
    StandardStream {
        /// The number given.
        fd: RawFd,
    },
    /// Not an open descriptor in this process.
    NotOpen {
        /// The number given.
        fd: RawFd,
    },
    /// Close-on-exec: opened by this process (everything Rust opens is), or taken already, so
    /// not inherited from the parent, and owned by something else here.
    NotInherited {
        /// The number given.
        fd: RawFd,
    },
    /// Making it close-on-exec failed.
    Io {
        /// The number given.
        fd: RawFd,
        /// The errno.
        errno: rustix::io::Errno,
    },
}

impl std::fmt::Display for InheritError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::StandardStream { fd } => write!(
                f,
                "descriptor {fd} is a standard stream, not one a parent passed: give the number \
                 the parent printed or put on the command line"
            ),
            Self::NotOpen { fd } => write!(
                f,
                "descriptor {fd} is not open in this process: it must be inherited from the \
                 parent that passed its number (start this program through that parent)"
            ),
            Self::NotInherited { fd } => write!(
                f,
                "descriptor {fd} was opened by this process (or taken already), not inherited: \
                 refused, something here owns it; pass the number the parent gave"
            ),
            Self::Io { fd, errno } => {
                write!(f, "cannot make descriptor {fd} close-on-exec: {errno}")
            }
        }
    }
}

impl std::error::Error for InheritError {}

/// Takes ownership of descriptor `fd`, which this process inherited from its parent (e.g.
/// through [`inherit_fd`]), and makes it close-on-exec so it goes no further.
///
/// Only a descriptor that survived `exec` (not close-on-exec) and has not been taken yet is
/// accepted, so this cannot take a descriptor something in this process already owns: Rust,
/// rustix and this crate open everything close-on-exec, and taking one sets the flag.
///
/// # Errors
/// [`InheritError`]: a standard stream, not open, close-on-exec, or `fcntl` failed.
///
/// ```
/// use std::os::fd::AsRawFd as _;
/// use voxring_linux::process::{InheritError, take_inherited_fd};
/// let file = tempfile::tempfile()?;
/// // Opened here (close-on-exec), so owned by `file`: refused.
/// let fd = file.as_raw_fd();
/// assert_eq!(take_inherited_fd(fd).err(), Some(InheritError::NotInherited { fd }));
/// assert_eq!(take_inherited_fd(1).err(), Some(InheritError::StandardStream { fd: 1 }));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn take_inherited_fd(fd: RawFd) -> Result<OwnedFd, InheritError> {
    // Two threads taking the same number: one wins, the other sees the flag set.
    static TAKING: Mutex<()> = Mutex::new(());
    if (0..=2).contains(&fd) {
        return Err(InheritError::StandardStream { fd });
    }
    let _one_at_a_time = TAKING.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: F_GETFD only reads the descriptor's flags; any integer is a valid argument (a
    // closed or negative one gives EBADF). libc because rustix's fcntl wants a borrowed
    // descriptor, which a number not known to be open is not.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(InheritError::NotOpen { fd });
    }
    if flags & libc::FD_CLOEXEC != 0 {
        return Err(InheritError::NotInherited { fd });
    }
    // SAFETY: `fd` is open (F_GETFD succeeded) and not close-on-exec: it came through exec
    // from the parent and nothing in this process has taken it (taking sets close-on-exec,
    // under `TAKING`, below), so this is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Err(errno) = rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC) {
        // Give the number back untouched rather than close a descriptor we could not claim.
        std::mem::forget(owned);
        return Err(InheritError::Io { fd, errno });
    }
    Ok(owned)
}
