//! Who is alive in a segment: open-file-description locks the kernel drops when a process dies,
//! checked against the identity the participant recorded when it joined.
//!
//! # Why locks first, and why identity too
//!
//! A PID written into shared memory is only meaningful in one PID namespace (two containers
//! sharing `/dev/shm` see different PIDs for the same process), and it can be reused after
//! the process dies. A lock held by the kernel on the segment file itself has neither problem:
//! it is attached to an open file description, the kernel releases it the moment the last
//! descriptor of that description closes (so on exit, crash or `kill -9`), and any process that
//! can open the file can ask whether it is held, whatever its namespace.
//!
//! But anyone who can open the file can also *take* a lock on it. So a lock alone cannot prove
//! that the participant who took it is the one holding it now (issue 11: a squatter that took
//! the lock of a consumer killed with `-9` kept it "alive" for ever, and the lossless ring
//! stalled on it). Two rules close that:
//!
//! 1. **Write lock only.** A participant holds an exclusive (`F_WRLCK`) lock on its ticket
//!    byte. The check requires `F_OFD_GETLK` to report a *write* lock there; a read lock (all a
//!    process that opened the segment read-only can take: `F_WRLCK` needs a descriptor open for
//!    writing) means the participant is dead. While the participant lives nobody else can hold
//!    any lock on its byte (an OFD write lock conflicts with every lock of another description),
//!    so this never misjudges a live participant.
//! 2. **Identity.** The owner token records who took the slot (see [`owner_token`]): PID, a tag
//!    of its PID namespace, a tag of its start time. A checker in the same PID namespace (and
//!    whose `/proc` shows that namespace) also requires that `/proc/<pid>` exists, is not a
//!    zombie, and has the same start-time tag; otherwise the slot is dead *even if its lock is
//!    held*, so a squatter with write access cannot keep a dead participant alive either.
//!    A checker in another PID namespace (a container) cannot look the PID up: it can only
//!    trust the write lock, and says so in the docs (`docs/segments.md`).
//!
//! # The locks
//!
//! We use `fcntl(2)` OFD byte-range locks (`F_OFD_SETLK`/`F_OFD_GETLK`) on the segment file.
//! They are advisory: they lock nothing in the memory, they only record presence.
//!
//! * Byte [`PRESENCE`]: a shared (read) lock held by every process that has the segment open
//!   as creator or participant. Clean-up removes a segment only when no lock at all is held
//!   on it ([`any_held`]).
//! * Byte [`TICKET_BASE`]` + t`: an exclusive (write) lock per participant, `t` being its
//!   *ticket*, a random non-zero number below 2^[`TICKET_BITS`]. A participant takes its ticket
//!   lock **before** it claims the producer side or joins a consumer slot in the ring, and puts
//!   the ticket in its owner token. A ring slot whose owner's ticket is not write-locked
//!   belongs to a dead process: there is no window in which a live participant is in a slot
//!   without holding its lock. A new participant never picks a ticket still written in a slot
//!   of the ring (see [`take_ticket`]), so a dead owner's ticket cannot come back to life.
//!
//! Each participant takes its ticket lock through its own open file description (the
//! segment re-opened through `/proc/self/fd`), because locks taken through one description
//! are not reported to queries through that same description; this way a liveness query
//! through the segment's main descriptor sees every participant, including those of its
//! own process.
//!
//! # The owner token (64 bits, opaque to voxring-core, which only compares tokens)
//!
//! | bits | field | why that many |
//! |---|---|---|
//! | 42..64 | PID (`getpid`), 0 = identity unknown | Linux PIDs are below `PID_MAX_LIMIT` = 2^22 |
//! | 26..42 | low 16 bits of the inode of `/proc/self/ns/pid` | see below |
//! | 14..26 | low 12 bits of the start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot) | 2^12 ticks = 41 s at `USER_HZ` 100 |
//! | 0..14 | ticket, never 0 | at most 65 participants (64 consumers + the producer) need distinct tickets |
//!
//! The namespace tag is the inode number truncated, not hashed: the kernel numbers namespace
//! inodes from a counter (`0xF0000000` + a small integer; the initial PID namespace is
//! `0xEFFFFFFC`), so two namespaces alive together get different low bits unless about 65,000
//! namespaces were created in between. The start-time tag makes PID reuse harmless unless the
//! new process starts a multiple of 41 s later (a 1-in-4096 chance for an attacker who cycles
//! PIDs; without a squatted write lock, PID reuse does not matter at all).
//!
//! Caveats, stated plainly: a child made with `fork()` and no `exec` shares the descriptions
//! and keeps the locks alive while it lives (descriptors are `O_CLOEXEC`, so `exec` drops
//! them); locks need a filesystem that supports them (tmpfs and memfd do). With `hidepid=`
//! on `/proc`, another user's process cannot be looked up: the check then trusts the lock.
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

/// Bits of the owner token holding the ticket (the lowest ones).
pub const TICKET_BITS: u32 = 14;
const START_SHIFT: u32 = TICKET_BITS;
const START_BITS: u32 = 12;
const NS_SHIFT: u32 = START_SHIFT + START_BITS;
const NS_BITS: u32 = 16;
const PID_SHIFT: u32 = NS_SHIFT + NS_BITS;
const PID_BITS: u32 = 64 - PID_SHIFT;
const _: () = assert!(
    PID_BITS == 22,
    "Linux PIDs need 22 bits (PID_MAX_LIMIT = 2^22)"
);

fn bits(token: u64, shift: u32, n: u32) -> u64 {
    (token >> shift) & ((1u64 << n) - 1)
}

/// Who a participant is, as recorded in its owner token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// PID in the participant's own PID namespace; 0 when it could not read its `/proc`.
    pub pid: u32,
    /// Low 16 bits of the inode of its `/proc/self/ns/pid`.
    pub ns_tag: u16,
    /// Low 12 bits of its start time in clock ticks since boot.
    pub start_tag: u16,
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    /// Field 3: `R`, `S`, `Z`...
    state: u8,
    /// Field 20.
    num_threads: i64,
    /// Field 22, clock ticks since boot.
    start_time: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    // `f` starts at field 3.
    let state = *f.next()?.as_bytes().first()?;
    let mut f = f.skip(16); // fields 4..=19
    let num_threads = f.next()?.parse().ok()?; // field 20
    let start_time = f.nth(1)?.parse().ok()?; // field 22
    Some(ProcStat {
        state,
        num_threads,
        start_time,
    })
}

fn read_stat(pid: &str) -> std::io::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat has an unexpected format"),
        )
    })
}

/// The tag of this process's PID namespace, if `/proc` shows that namespace (`/proc/self`
/// names our own PID). A `/proc` mounted for another namespace cannot be used to look PIDs up.
fn local_ns_tag() -> Option<u16> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let link = std::fs::read_link("/proc/self").ok()?;
    if link.to_str()?.parse::<i32>().ok()? != me {
        return None;
    }
    let st = rustix::fs::stat("/proc/self/ns/pid").ok()?;
    Some(st.st_ino as u16)
}

/// This process's identity (PID 0 when `/proc` cannot tell it).
pub fn own_identity() -> Identity {
    let unknown = Identity {
        pid: 0,
        ns_tag: 0,
        start_tag: 0,
    };
    let Some(ns_tag) = local_ns_tag() else {
        return unknown;
    };
    let Ok(stat) = read_stat("self") else {
        return unknown;
    };
    Identity {
        pid: rustix::process::getpid().as_raw_nonzero().get() as u32,
        ns_tag,
        start_tag: bits(stat.start_time, 0, START_BITS) as u16,
    }
}

/// The owner token for voxring-core: this process's identity and `ticket` (see the module
/// docs for the layout). Reads `/proc`: call it once per participant, not on the real-time
/// path.
pub fn owner_token(ticket: u32) -> u64 {
    token_for(own_identity(), ticket)
}

/// The token for `id` and `ticket` (`ticket` is masked to [`TICKET_BITS`]).
pub fn token_for(id: Identity, ticket: u32) -> u64 {
    (bits(u64::from(id.pid), 0, PID_BITS) << PID_SHIFT)
        | (u64::from(id.ns_tag) << NS_SHIFT)
        | (bits(u64::from(id.start_tag), 0, START_BITS) << START_SHIFT)
        | bits(u64::from(ticket), 0, TICKET_BITS)
}

/// The ticket in an owner token (0 = not a voxring-linux token).
pub fn ticket_of(token: u64) -> u32 {
    bits(token, 0, TICKET_BITS) as u32
}

/// The identity recorded in an owner token.
pub fn identity_of(token: u64) -> Identity {
    Identity {
        pid: bits(token, PID_SHIFT, PID_BITS) as u32,
        ns_tag: bits(token, NS_SHIFT, NS_BITS) as u16,
        start_tag: bits(token, START_SHIFT, START_BITS) as u16,
    }
}

/// The PID recorded in an owner token, in the participant's own PID namespace (0 = unknown).
pub fn pid_of(token: u64) -> u32 {
    identity_of(token).pid
}

/// What the identity check can say about a token's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityCheck {
    /// `/proc/<pid>` is the process that took the slot.
    Same,
    /// No such process (or a zombie, or another process now under that PID).
    Gone,
    /// Cannot tell: another PID namespace, an unknown identity, or a `/proc` that hides the
    /// process (`hidepid=`). Only the lock can be trusted.
    Unknown,
}

/// Checks the identity recorded in `token` against `/proc`.
pub fn check_identity(token: u64) -> IdentityCheck {
    let id = identity_of(token);
    if id.pid == 0 || local_ns_tag() != Some(id.ns_tag) {
        return IdentityCheck::Unknown;
    }
    match read_stat(&id.pid.to_string()) {
        Ok(st) => {
            // A zombie leader with live threads left is still a live process (its main thread
            // called pthread_exit); a zombie alone is dead, its descriptors are closed.
            let zombie = matches!(st.state, b'Z' | b'X') && st.num_threads <= 1;
            if zombie || bits(st.start_time, 0, START_BITS) != u64::from(id.start_tag) {
                IdentityCheck::Gone
            } else {
                IdentityCheck::Same
            }
        }
        Err(_) => {
            // Absent from /proc: gone, unless /proc hides it (hidepid=) and kill(pid, 0)
            // still finds it (EPERM means it exists, owned by someone else).
            let exists = rustix::process::Pid::from_raw(id.pid as i32)
                .map(|p| rustix::process::test_kill_process(p) != Err(Errno::SRCH));
            if exists == Some(true) {
                IdentityCheck::Unknown
            } else {
                IdentityCheck::Gone
            }
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

/// Picks a random non-zero ticket below 2^[`TICKET_BITS`] whose lock is free and for which `in_use` is false (the
/// caller passes "is this ticket written in a slot of the ring"), and locks it through `fd`.
/// Gives up after 64 tries with the last errno.
pub fn take_ticket(fd: BorrowedFd<'_>, in_use: impl Fn(u32) -> bool) -> Result<u32, Errno> {
    let mut last = Errno::AGAIN;
    for _ in 0..64 {
        let t = next_candidate() & ((1 << TICKET_BITS) - 1);
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

/// The lock another open file description than `fd`'s holds on `[start, start+len)`:
/// `F_UNLCK`, `F_RDLCK` or `F_WRLCK` (the first conflicting lock the kernel finds).
fn lock_on(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<libc::c_short, Errno> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, start, len);
    fcntl_lock(fd, libc::F_OFD_GETLK, &mut fl)?;
    Ok(fl.l_type)
}

/// Whether ticket `t` is write-locked (through another open file description than `fd`'s), as
/// a live participant holds it. A read lock there is a squatter's, not a participant's: it
/// answers false. Ticket 0 is never held.
pub fn ticket_held(fd: BorrowedFd<'_>, t: u32) -> Result<bool, Errno> {
    if t == 0 {
        return Ok(false);
    }
    Ok(lock_on(fd, TICKET_BASE + u64::from(t), 1)? == libc::F_WRLCK as libc::c_short)
}

/// Whether the participant behind `token` is alive: its ticket is write-locked, and, when
/// this process can look its PID up (same PID namespace), `/proc/<pid>` is still the process
/// that took the slot. Not for the real-time path (an `fcntl`, and a `/proc` read).
pub fn token_alive(fd: BorrowedFd<'_>, token: u64) -> Result<bool, Errno> {
    if !ticket_held(fd, ticket_of(token))? {
        return Ok(false);
    }
    Ok(check_identity(token) != IdentityCheck::Gone)
}

/// Whether anyone (through another open file description) holds any voxring lock on the
/// file: presence or a ticket. False means nobody uses the segment.
pub fn any_held(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    Ok(lock_on(fd, PRESENCE, LOCK_END - PRESENCE)? != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{MemfdFlags, OFlags};
    use std::os::fd::AsFd;

    /// A new open file description of `fd`'s file, with access `mode`.
    fn reopen_as(fd: BorrowedFd<'_>, mode: OFlags) -> std::os::fd::OwnedFd {
        rustix::fs::open(
            format!("/proc/self/fd/{}", fd.as_raw_fd()),
            mode | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap()
    }

    fn reopen(fd: BorrowedFd<'_>) -> std::os::fd::OwnedFd {
        reopen_as(fd, OFlags::RDWR)
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
        // A child another test thread forks holds a copy of every descriptor until it execs
        // (CLOEXEC closes them only then), and with it the open file description and its
        // locks: so the lock goes once no process holds the description any more.
        released(
            || !ticket_held(b.as_fd(), t2).unwrap(),
            "closing drops the lock",
        );
        drop(a);
        released(
            || !any_held(b.as_fd()).unwrap(),
            "closing drops the presence lock",
        );
    }

    /// Waits (a give-up bound of 10 s, not a timing) until `gone` holds.
    fn released(gone: impl Fn() -> bool, what: &str) {
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !gone() {
            assert!(std::time::Instant::now() < give_up, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn reopen_read_only(fd: BorrowedFd<'_>) -> std::os::fd::OwnedFd {
        reopen_as(fd, OFlags::RDONLY)
    }

    fn set_lock(fd: BorrowedFd<'_>, kind: libc::c_int, t: u32) -> Result<(), Errno> {
        let mut fl = flock(kind as libc::c_short, TICKET_BASE + u64::from(t), 1);
        fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl)
    }

    #[test]
    fn a_read_lock_on_a_ticket_is_a_squatter_not_a_participant() {
        let a = rustix::fs::memfd_create("voxring-squat-test", MemfdFlags::CLOEXEC).unwrap();
        let reader = reopen_read_only(a.as_fd());
        let t = 77;
        // The attack: a read-only opener takes a read lock on a ticket byte...
        set_lock(reader.as_fd(), libc::F_RDLCK, t).unwrap();
        // ...and cannot take the write lock a participant holds (needs a writable description).
        assert_eq!(
            set_lock(reader.as_fd(), libc::F_WRLCK, t + 1),
            Err(Errno::BADF)
        );
        let token = token_for(own_identity(), t);
        assert!(
            !ticket_held(a.as_fd(), t).unwrap(),
            "a read lock is no participant"
        );
        assert!(!token_alive(a.as_fd(), token).unwrap());
        // Clean-up still sees someone holding a lock on the file.
        assert!(any_held(a.as_fd()).unwrap());
    }

    #[test]
    fn a_held_write_lock_does_not_save_a_forged_or_dead_identity() {
        let a = rustix::fs::memfd_create("voxring-identity-test", MemfdFlags::CLOEXEC).unwrap();
        let locker = reopen(a.as_fd());
        let t = take_ticket(locker.as_fd(), |_| false).unwrap();
        let me = own_identity();
        assert_ne!(me.pid, 0, "the tests need /proc");
        assert!(
            token_alive(a.as_fd(), token_for(me, t)).unwrap(),
            "no false positive"
        );
        assert_eq!(check_identity(token_for(me, t)), IdentityCheck::Same);
        // Same PID, another start time: a process that reused the PID is not the owner.
        let reused = Identity {
            start_tag: (me.start_tag + 1) & ((1 << START_BITS) - 1),
            ..me
        };
        assert!(!token_alive(a.as_fd(), token_for(reused, t)).unwrap());
        // A PID whose process is gone (reaped).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = Identity {
            pid: dead_pid,
            ..me
        };
        assert_eq!(check_identity(token_for(dead, t)), IdentityCheck::Gone);
        assert!(!token_alive(a.as_fd(), token_for(dead, t)).unwrap());
        // Another PID namespace (a container): the PID cannot be looked up, the lock decides.
        let foreign = Identity {
            ns_tag: me.ns_tag ^ 1,
            ..dead
        };
        assert_eq!(
            check_identity(token_for(foreign, t)),
            IdentityCheck::Unknown
        );
        assert!(token_alive(a.as_fd(), token_for(foreign, t)).unwrap());
        drop(locker);
        assert!(!token_alive(a.as_fd(), token_for(foreign, t)).unwrap());
    }

    #[test]
    fn tokens_round_trip_and_stat_parses_odd_command_names() {
        let id = Identity {
            pid: (1 << 22) - 1,
            ns_tag: 0xFFFC,
            start_tag: 0xABC,
        };
        let token = token_for(id, (1 << TICKET_BITS) - 1);
        assert_eq!(identity_of(token), id);
        assert_eq!(ticket_of(token), (1 << TICKET_BITS) - 1);
        assert_eq!(pid_of(token), id.pid);
        let mut line = String::from("42 (a) b (c) Z 1");
        for f in 5..=19 {
            line.push_str(&format!(" {f}"));
        }
        line.push_str(" 3 0 123456 rest");
        assert_eq!(
            parse_stat(&line),
            Some(ProcStat {
                state: b'Z',
                num_threads: 3,
                start_time: 123456
            })
        );
        assert_eq!(parse_stat("42 (x"), None);
    }
}
