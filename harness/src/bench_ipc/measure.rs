//! Clocks, CPU time, pinning and the producer's syscall counter.
//!
//! Syscalls are counted by the kernel, not estimated: a perf counter on the
//! `raw_syscalls:sys_enter` tracepoint attached to the producer thread (`perf_event_open(2)`),
//! read just before and just after each send. Its tracepoint id lives in tracefs; when tracefs is
//! not mounted, [`tracepoint_id`] mounts it in a private mount namespace of this process (root
//! only; invisible to the rest of the system, gone when the process exits). When the counter is
//! unavailable the transports fall back to counting the syscalls their own code issues, and the
//! result says which method was used.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Context, bail};
use rustix::time::{ClockId, clock_gettime};

/// CLOCK_MONOTONIC in nanoseconds (vDSO, no syscall). Both processes of a run share this clock.
pub fn now_ns() -> u64 {
    ts_ns(clock_gettime(ClockId::Monotonic))
}

/// CPU time of the whole calling process (all its threads), `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`.
pub fn process_cpu_ns() -> u64 {
    ts_ns(clock_gettime(ClockId::ProcessCPUTime))
}

/// CPU time of the calling thread, `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`.
pub fn thread_cpu_ns() -> u64 {
    ts_ns(clock_gettime(ClockId::ThreadCPUTime))
}

fn ts_ns(ts: rustix::time::Timespec) -> u64 {
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Pins the calling thread to one CPU. Returns an error naming the CPU when the kernel refuses.
pub fn pin_to(cpu: usize) -> anyhow::Result<()> {
    if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        Ok(())
    } else {
        bail!(
            "could not pin this thread to CPU {cpu} (sched_setaffinity refused): \
             check that CPU {cpu} exists and is allowed (`nproc`, `taskset -p $$`), or pass --cpus"
        )
    }
}

/// The two CPUs a run uses: producer first, consumer second: the first two CPUs this process
/// may run on (a container's cpuset may not start at 0), or the same one when there is one.
pub fn default_cpus() -> (usize, usize) {
    let ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    match ids.as_slice() {
        [a, b, ..] => (*a, *b),
        [a] => (*a, *a),
        [] => (0, 0),
    }
}

const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const SYS_ENTER_ID: &str = "events/raw_syscalls/sys_enter/id";

/// The id of the `raw_syscalls:sys_enter` tracepoint, or why it is not available.
///
/// Must be called while the process is still single-threaded (it may `unshare(CLONE_NEWNS)`).
pub fn tracepoint_id() -> Result<u64, String> {
    for dir in TRACEFS_DIRS {
        if let Ok(text) = std::fs::read_to_string(format!("{dir}/{SYS_ENTER_ID}")) {
            return text
                .trim()
                .parse()
                .map_err(|e| format!("{dir}/{SYS_ENTER_ID} holds {text:?}: {e}"));
        }
    }
    // tracefs is not mounted: mount it where only this process (and its children) can see it.
    // SAFETY: called from `bench_ipc::main` before any thread is spawned, so no other thread
    // shares the fs context that CLONE_NEWNS unshares.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(|e| format!("tracefs is not mounted and unshare(CLONE_NEWNS) failed ({e}); mount it with `mount -t tracefs nodev /sys/kernel/tracing` to count syscalls exactly"))?;
    use rustix::mount::{MountFlags, MountPropagationFlags, mount, mount_change};
    mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| format!("making the private mount namespace private failed: {e}"))?;
    mount(
        "nodev",
        TRACEFS_DIRS[0],
        "tracefs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| format!("mounting tracefs in a private namespace failed: {e}"))?;
    let path = format!("{}/{SYS_ENTER_ID}", TRACEFS_DIRS[0]);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{path}: {e} (kernel without CONFIG_FTRACE_SYSCALLS?)"))?;
    text.trim()
        .parse()
        .map_err(|e| format!("{path} holds {text:?}: {e}"))
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
    /// Opens a counter of `raw_syscalls:sys_enter` events for the calling thread.
    pub fn open(tracepoint_id: u64) -> anyhow::Result<Self> {
        let attr = PerfEventAttrV0 {
            type_: PERF_TYPE_TRACEPOINT,
            size: std::mem::size_of::<PerfEventAttrV0>() as u32,
            config: tracepoint_id,
            ..Default::default()
        };
        // rustix has no perf_event_open; this is the one raw syscall of the harness.
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
            let err = std::io::Error::last_os_error();
            bail!(
                "perf_event_open(raw_syscalls:sys_enter) failed: {err} (needs root or \
                 kernel.perf_event_paranoid <= -1)"
            );
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
    pub fn read(&mut self) -> anyhow::Result<u64> {
        let mut buf = [0u8; 8];
        self.file
            .read_exact(&mut buf)
            .context("reading the syscall counter")?;
        Ok(u64::from_ne_bytes(buf))
    }

    /// Syscalls entered between two reads `before` and `after`, without the counter's own read.
    pub fn between(&self, before: u64, after: u64) -> u64 {
        after.saturating_sub(before).saturating_sub(self.overhead)
    }
}
