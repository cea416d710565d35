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
//! They are advisory: they lock nothing in the memory, they only record presence.
//!
//! * Byte [`PRESENCE`]: a shared (read) lock held by every process that has the segment open
//!   as creator or participant. Clean-up removes a segment only when no lock at all is held
//!   on it ([`any_held`]).
//! * Byte [`TICKET_BASE`]` + t`: an exclusive (write) lock per participant, `t` being its
//!   *ticket*, a random non-zero `u32`. A participant takes its ticket lock **before** it
//!   claims the producer side or joins a consumer slot in the ring, and puts the ticket in the
//!   low 32 bits of the owner token it gives voxring-core (the high 32 bits hold its PID, for
//!   people reading `voxring segments list`; they are never used to judge liveness). A ring
//!   slot whose owner's ticket lock is not held belongs to a dead process: there is no window
//!   in which a live participant is in a slot without holding its lock. A new participant
//!   never picks a ticket still written in a slot of the ring (see [`take_ticket`]), so a
//!   dead owner's ticket cannot come back to life.
//!
//! Each participant takes its ticket lock through its own open file description (the
//! segment re-opened through `/proc/self/fd`), because locks taken through one description
//! are not reported to queries through that same description; this way a liveness query
//! through the segment's main descriptor sees every participant, including those of its
//! own process.
//!
//! Caveats, stated plainly: a child made with `fork()` and no `exec` shares the descriptions
//! and keeps the locks alive while it lives (descriptors are `O_CLOEXEC`, so `exec` drops
//! them); locks need a filesystem that supports them (tmpfs and memfd do).
//!
//! `rustix` only wraps whole-file OFD locks (`fcntl_lock`), so byte ranges go through `libc`.

use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::io::Errno;

/// Byte holding the shared presence lock.
pub const PRESENCE: u64 = 1 << 40;
/// Ticket `t` is locked at byte `TICKET_BASE + t`.
pub const TICKET_BASE: u64 = PRESENCE + 16;
/// One past the last byte a voxring lock can be on.
pub const LOCK_END: u64 = TICKET_BASE + (1 << 32);

/// The owner token for voxring-core: PID in the high half (informative), ticket in the low.
pub fn owner_token(ticket: u32) -> u64 {
    (u64::from(rustix::process::getpid().as_raw_nonzero().get() as u32) << 32) | u64::from(ticket)
}

/// The ticket in an owner token (0 = not a voxring-linux token).
pub fn ticket_of(token: u64) -> u32 {
    token as u32
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

fn next_candidate() -> u32 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        x = t ^ (u64::from(std::process::id()) << 17) ^ 0x2545_F491_4F6C_DD1D;
    }
    // xorshift64*: tickets only need to be spread out, not unpredictable.
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    // Relaxed: a racing thread at worst draws the same candidate, and the lock arbitrates.
    STATE.store(x, Ordering::Relaxed);
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
}

/// Picks a random non-zero ticket whose lock is free and for which `in_use` is false (the
/// caller passes "is this ticket written in a slot of the ring"), and locks it through `fd`.
/// Gives up after 64 tries with the last errno.
pub fn take_ticket(fd: BorrowedFd<'_>, in_use: impl Fn(u32) -> bool) -> Result<u32, Errno> {
    let mut last = Errno::AGAIN;
    for _ in 0..64 {
        let t = next_candidate();
        if t == 0 || in_use(t) {
            continue;
        }
        let mut fl = flock(
            libc::F_WRLCK as libc::c_short,
            TICKET_BASE + u64::from(t),
            1,
        );
        match fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl) {
            Ok(()) => return Ok(t),
            Err(Errno::AGAIN) | Err(Errno::ACCESS) => last = Errno::AGAIN,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Releases ticket `t` taken through `fd`.
pub fn release_ticket(fd: BorrowedFd<'_>, t: u32) -> Result<(), Errno> {
    let mut fl = flock(
        libc::F_UNLCK as libc::c_short,
        TICKET_BASE + u64::from(t),
        1,
    );
    fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl)
}

/// Whether a lock on `[start, start+len)` is held through another open file description.
fn held_range(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<bool, Errno> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, start, len);
    fcntl_lock(fd, libc::F_OFD_GETLK, &mut fl)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Whether ticket `t` is held by a live process (through another open file description than
/// `fd`'s). Ticket 0 is never held.
pub fn ticket_held(fd: BorrowedFd<'_>, t: u32) -> Result<bool, Errno> {
    if t == 0 {
        return Ok(false);
    }
    held_range(fd, TICKET_BASE + u64::from(t), 1)
}

/// Whether anyone (through another open file description) holds any voxring lock on the
/// file: presence or a ticket. False means nobody uses the segment.
pub fn any_held(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    held_range(fd, PRESENCE, LOCK_END - PRESENCE)
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
        let c = reopen(a.as_fd());
        assert!(!any_held(b.as_fd()).unwrap());
        hold_presence(a.as_fd()).unwrap();
        assert!(any_held(b.as_fd()).unwrap());
        let t = take_ticket(c.as_fd(), |_| false).unwrap();
        assert_ne!(t, 0);
        assert!(ticket_held(b.as_fd(), t).unwrap());
        assert!(ticket_held(a.as_fd(), t).unwrap());
        assert!(!ticket_held(b.as_fd(), t.wrapping_add(1)).unwrap());
        assert!(!ticket_held(b.as_fd(), 0).unwrap());
        release_ticket(c.as_fd(), t).unwrap();
        assert!(!ticket_held(b.as_fd(), t).unwrap());
        let t2 = take_ticket(c.as_fd(), |x| x == t).unwrap();
        assert_ne!(t2, t);
        assert_eq!(ticket_of(owner_token(t2)), t2);
        drop(c);
        assert!(
            !ticket_held(b.as_fd(), t2).unwrap(),
            "closing drops the lock"
        );
        drop(a);
        assert!(!any_held(b.as_fd()).unwrap());
    }
}
