//! Who is alive in a segment: open-file-description locks the kernel drops when a process dies.
//!
//! # Why locks, not PIDs
//!
//! A PID written into shared memory is only meaningful in one PID namespace (two containers
//! sharing `/dev/shm` see different PIDs for the same process), and it can be reused after
//! the process dies; a pid + start-time token fixes reuse but not namespaces. A pidfd needs the
//! PID to open it, with the same two problems. A lock held by the kernel on the segment file
//! itself has neither: it is attached to an open file description, the kernel releases it the
//! moment the last descriptor of that description closes (so on exit, crash or `kill -9`),
//! and any process that can open the file can ask whether it is held, whatever its namespace.
//!
//! We use `fcntl(2)` OFD byte-range locks (`F_OFD_SETLK`/`F_OFD_GETLK`) on the segment file.
//! They are advisory: they lock nothing in the memory, they only record presence. Byte
//! ranges, far from anything else, one per role:
//!
//! | byte | lock | held by |
//! |---|---|---|
//! | [`PRESENCE`] | shared (read) | every process that has the segment open as creator or participant |
//! | [`PRODUCER`] | exclusive (write) | the producer |
//! | [`CONSUMER_BASE`] + i | exclusive (write) | the consumer in slot i |
//!
//! Clean-up removes a segment only when no lock at all is held on it ([`any_held`]).
//!
//! Caveats, stated plainly: locks taken on one open file description are not reported to a
//! query through that same description, so a handle remembers its own slots; a child made
//! with `fork()` and no `exec` shares the description and keeps the locks alive while it
//! lives (descriptors are `O_CLOEXEC`, so `exec` drops them); a descriptor received over
//! `SCM_RIGHTS` shares the sender's description, which is why [`crate::memfd`] re-opens it.
//!
//! `rustix` only wraps whole-file OFD locks (`fcntl_lock`), so byte ranges go through `libc`.

use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::io::Errno;

/// Byte holding the shared presence lock.
pub const PRESENCE: u64 = 1 << 40;
/// Byte holding the producer's lock.
pub const PRODUCER: u64 = PRESENCE + 1;
/// First consumer byte; consumer slot `i` is `CONSUMER_BASE + i`.
pub const CONSUMER_BASE: u64 = PRESENCE + 2;
/// Consumer slots the lock layout allows for (voxring-core allows up to 64).
pub const MAX_CONSUMER_SLOTS: u64 = 64;

/// The role a lock byte stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The producer.
    Producer,
    /// Consumer slot `i`.
    Consumer(u16),
}

impl Slot {
    fn offset(self) -> u64 {
        match self {
            Slot::Producer => PRODUCER,
            Slot::Consumer(i) => CONSUMER_BASE + u64::from(i),
        }
    }
}

fn flock(kind: libc::c_short, start: u64, len: u64) -> libc::flock {
    // SAFETY: an all-zero flock is a valid value; the fields that matter are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    // OFD locks require l_pid = 0.
    fl.l_pid = 0;
    fl
}

fn fcntl_lock(fd: BorrowedFd<'_>, cmd: libc::c_int, fl: &mut libc::flock) -> Result<(), Errno> {
    // SAFETY: `fd` is a valid open descriptor for the duration of the call and `fl` points to
    // an initialised flock the kernel may read and (for GETLK) write.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, fl as *mut libc::flock) };
    if r == -1 {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    } else {
        Ok(())
    }
}

/// Takes the shared presence lock through `fd` (non-blocking; it only fails on a system
/// error, as shared locks never conflict with each other).
pub fn hold_presence(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut fl = flock(libc::F_RDLCK as libc::c_short, PRESENCE, 1);
    fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl)
}

/// Takes the exclusive lock for `slot` through `fd`. `Err(Errno::AGAIN)` means a live
/// process holds it.
pub fn lock_slot(fd: BorrowedFd<'_>, slot: Slot) -> Result<(), Errno> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, slot.offset(), 1);
    match fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl) {
        Err(Errno::ACCESS) => Err(Errno::AGAIN),
        r => r,
    }
}

/// Releases the lock for `slot` taken through `fd`.
pub fn unlock_slot(fd: BorrowedFd<'_>, slot: Slot) -> Result<(), Errno> {
    let mut fl = flock(libc::F_UNLCK as libc::c_short, slot.offset(), 1);
    fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl)
}

/// Whether a lock on `[start, start+len)` is held through another open file description.
fn held_range(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<bool, Errno> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, start, len);
    fcntl_lock(fd, libc::F_OFD_GETLK, &mut fl)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Whether `slot` is held by a live process (through another open file description than
/// `fd`'s).
pub fn is_held(fd: BorrowedFd<'_>, slot: Slot) -> Result<bool, Errno> {
    held_range(fd, slot.offset(), 1)
}

/// Whether anyone (through another open file description) holds any voxring lock on the
/// file: presence, producer or a consumer. False means nobody uses the segment.
pub fn any_held(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    held_range(fd, PRESENCE, 2 + MAX_CONSUMER_SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{MemfdFlags, OFlags};
    use std::os::fd::AsFd;

    fn reopen(fd: BorrowedFd<'_>) -> std::os::fd::OwnedFd {
        rustix::fs::open(
            format!("/proc/self/fd/{}", fd.as_raw_fd()),
            OFlags::RDWR | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn locks_are_seen_through_another_description_and_dropped_on_close() {
        let a = rustix::fs::memfd_create("voxring-lock-test", MemfdFlags::CLOEXEC).unwrap();
        let b = reopen(a.as_fd());
        assert!(!any_held(b.as_fd()).unwrap());
        hold_presence(a.as_fd()).unwrap();
        assert!(any_held(b.as_fd()).unwrap());
        assert!(!is_held(b.as_fd(), Slot::Producer).unwrap());
        lock_slot(a.as_fd(), Slot::Consumer(3)).unwrap();
        assert!(is_held(b.as_fd(), Slot::Consumer(3)).unwrap());
        assert!(!is_held(b.as_fd(), Slot::Consumer(2)).unwrap());
        assert_eq!(lock_slot(b.as_fd(), Slot::Consumer(3)), Err(Errno::AGAIN));
        unlock_slot(a.as_fd(), Slot::Consumer(3)).unwrap();
        assert!(!is_held(b.as_fd(), Slot::Consumer(3)).unwrap());
        lock_slot(a.as_fd(), Slot::Producer).unwrap();
        assert!(is_held(b.as_fd(), Slot::Producer).unwrap());
        drop(a);
        assert!(!any_held(b.as_fd()).unwrap());
        lock_slot(b.as_fd(), Slot::Producer).unwrap();
    }
}
