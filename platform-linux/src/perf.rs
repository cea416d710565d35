//! Counting the system calls a thread makes, by the kernel rather than by estimate: a perf
//! counter (`perf_event_open(2)`) on the `raw_syscalls:sys_enter` tracepoint, attached to the
//! calling thread.
//!
//! The tracepoint's id lives in tracefs. When tracefs is not mounted, [`tracepoint_id`] mounts it
//! in a private mount namespace of this process (root only; invisible to the rest of the system,
//! gone when the process exits), which it may only do while the process has one thread: it
//! checks that and refuses otherwise.
//!
//! ```no_run
//! use voxring_linux::perf::{SyscallCounter, tracepoint_id};
//!
//! let id = tracepoint_id()?; // before any thread is spawned
//! let mut counter = SyscallCounter::open(id)?;
//! let before = counter.read()?;
//! std::fs::metadata("/")?; // one stat(2)
//! let after = counter.read()?;
//! assert!(counter.between(before, after) >= 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const SYS_ENTER_ID: &str = "events/raw_syscalls/sys_enter/id";

/// Why the syscall counter is not available.
#[derive(Debug)]
pub enum PerfError {
    /// The tracepoint id could not be found or tracefs could not be mounted; the text says which
    /// step failed and what to do.
    Tracepoint(String),
    /// `perf_event_open(2)` was refused.
    Open(std::io::Error),
    /// Reading the counter failed.
    Read(std::io::Error),
}

impl fmt::Display for PerfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PerfError::Tracepoint(why) => f.write_str(why),
            PerfError::Open(e) => write!(
                f,
                "perf_event_open(raw_syscalls:sys_enter) failed: {e} (needs root or \
                 kernel.perf_event_paranoid <= -1)"
            ),
            PerfError::Read(e) => write!(f, "reading the syscall counter failed: {e}"),
        }
    }
}

impl std::error::Error for PerfError {}

/// The number of threads of this process, from `/proc/self/task`.
fn thread_count() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Moves this process into a private mount namespace (`unshare(CLONE_NEWNS)`), after checking
/// that it has exactly one thread: with one thread, nothing else can share (or spawn a thread
/// that would share) the fs context the call unshares.
fn unshare_mounts_single_threaded() -> Result<(), String> {
    match thread_count() {
        Ok(1) => {}
        Ok(n) => {
            return Err(format!(
                "tracefs is not mounted and this process already has {n} threads, so it may not \
                 unshare its mount namespace to mount it; call tracepoint_id() before spawning \
                 threads, or mount it with `mount -t tracefs nodev /sys/kernel/tracing`"
            ));
        }
        Err(e) => {
            return Err(format!(
                "tracefs is not mounted and /proc/self/task is unreadable ({e}), so this process \
                 cannot tell that it is single-threaded; mount /proc, or mount tracefs with \
                 `mount -t tracefs nodev /sys/kernel/tracing`"
            ));
        }
    }
    // SAFETY: checked just above that the calling thread is the only thread of the process;
    // no other thread exists to share the fs context that CLONE_NEWNS unshares, and none can be
    // spawned concurrently since only this thread could spawn it.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }.map_err(|e| {
        format!(
            "tracefs is not mounted and unshare(CLONE_NEWNS) failed ({e}); mount it with \
             `mount -t tracefs nodev /sys/kernel/tracing` to count syscalls exactly"
        )
    })
}

/// The id of the `raw_syscalls:sys_enter` tracepoint, or why it is not available.
///
/// Call it while the process is still single-threaded: when tracefs is not mounted it mounts it
/// in a private mount namespace (`unshare(CLONE_NEWNS)`), and refuses to when other threads
/// exist.
pub fn tracepoint_id() -> Result<u64, PerfError> {
    for dir in TRACEFS_DIRS {
        if let Ok(text) = std::fs::read_to_string(format!("{dir}/{SYS_ENTER_ID}")) {
            return text.trim().parse().map_err(|e| {
                PerfError::Tracepoint(format!("{dir}/{SYS_ENTER_ID} holds {text:?}: {e}"))
            });
        }
    }
    // tracefs is not mounted: mount it where only this process (and its children) can see it.
    unshare_mounts_single_threaded().map_err(PerfError::Tracepoint)?;
    use rustix::mount::{MountFlags, MountPropagationFlags, mount, mount_change};
    mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| {
        PerfError::Tracepoint(format!(
            "making the private mount namespace private failed: {e}"
        ))
    })?;
    mount(
        "nodev",
        TRACEFS_DIRS[0],
        "tracefs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| {
        PerfError::Tracepoint(format!(
            "mounting tracefs in a private namespace failed: {e}"
        ))
    })?;
    let path = format!("{}/{SYS_ENTER_ID}", TRACEFS_DIRS[0]);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        PerfError::Tracepoint(format!(
            "{path}: {e} (kernel without CONFIG_FTRACE_SYSCALLS?)"
        ))
    })?;
    text.trim()
        .parse()
        .map_err(|e| PerfError::Tracepoint(format!("{path} holds {text:?}: {e}")))
}

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER0` (64 bytes), which every kernel accepts.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttrV0 {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// A kernel counter of the syscalls the calling thread enters.
#[derive(Debug)]
pub struct SyscallCounter {
    file: File,
    /// What one `read` of the counter adds to the difference of two reads (measured, usually 1).
    overhead: u64,
}

impl SyscallCounter {
    /// Opens a counter of `raw_syscalls:sys_enter` events (id from [`tracepoint_id`]) for the
    /// calling thread, and measures what one read of it adds.
    pub fn open(tracepoint_id: u64) -> Result<Self, PerfError> {
        let attr = PerfEventAttrV0 {
            type_: PERF_TYPE_TRACEPOINT,
            size: std::mem::size_of::<PerfEventAttrV0>() as u32,
            config: tracepoint_id,
            ..Default::default()
        };
        // rustix has no perf_event_open; this is voxring's one raw syscall.
        // SAFETY: `attr` is a valid, initialised perf_event_attr of the size it declares and lives
        // across the call; pid 0 / cpu -1 / group -1 are plain integers.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttrV0,
                0 as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(PerfError::Open(std::io::Error::last_os_error()));
        }
        // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        let mut counter = Self { file, overhead: 0 };
        let mut overhead = u64::MAX;
        for _ in 0..16 {
            let a = counter.read()?;
            let b = counter.read()?;
            overhead = overhead.min(b.saturating_sub(a));
        }
        counter.overhead = overhead;
        Ok(counter)
    }

    /// The count so far.
    pub fn read(&mut self) -> Result<u64, PerfError> {
        let mut buf = [0u8; 8];
        self.file.read_exact(&mut buf).map_err(PerfError::Read)?;
        Ok(u64::from_ne_bytes(buf))
    }

    /// Syscalls entered between two reads `before` and `after`, without the counter's own read.
    pub fn between(&self, before: u64, after: u64) -> u64 {
        after.saturating_sub(before).saturating_sub(self.overhead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack on the single-thread rule: with a second thread alive, the unshare is refused
    /// with a reason instead of being made.
    #[test]
    fn unshare_is_refused_while_another_thread_lives() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let e = unshare_mounts_single_threaded().unwrap_err();
        assert!(e.contains("threads"), "{e}");
        drop(tx);
        other.join().unwrap();
    }
}
