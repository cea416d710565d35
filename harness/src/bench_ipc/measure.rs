//! Clocks, CPU time, pinning and the producer's syscall counter, all from voxring-linux
//! ([`voxring_linux::clock`], [`voxring_linux::rt::pin_to_cpu`], [`voxring_linux::perf`]), and
//! the spin-wait the polling transports share.
//!
//! Syscalls are counted by the kernel, not estimated: a perf counter on the
//! `raw_syscalls:sys_enter` tracepoint attached to the producer thread, read just before and
//! just after each send. When the counter is unavailable the transports fall back to counting
//! the syscalls their own code issues, and the result says which method was used.

pub use voxring_linux::clock::{monotonic_ns as now_ns, process_cpu_ns, thread_cpu_ns};
pub use voxring_linux::perf::{SyscallCounter, tracepoint_id};

use anyhow::bail;

use super::PEER_TIMEOUT_NS;

/// Calls `poll` until it gives a value; gives up after [`PEER_TIMEOUT_NS`] (a give-up bound:
/// the peer process stopped).
pub fn spin_until<T>(
    mut poll: impl FnMut() -> anyhow::Result<Option<T>>,
    what: &str,
) -> anyhow::Result<T> {
    let deadline = now_ns() + PEER_TIMEOUT_NS;
    let mut i: u32 = 0;
    loop {
        if let Some(v) = poll()? {
            return Ok(v);
        }
        std::hint::spin_loop();
        i = i.wrapping_add(1);
        if i.is_multiple_of(4096) && now_ns() > deadline {
            bail!("{what}: nothing for 10 s, the peer process stopped");
        }
    }
}

/// Pins the calling thread to one CPU. The error names the CPU and what to check.
pub fn pin_to(cpu: usize) -> anyhow::Result<()> {
    voxring_linux::rt::pin_to_cpu(cpu).map_err(|e| anyhow::anyhow!("{e}; or pass --cpus"))
}

/// The two CPUs a run uses: producer first, consumer second: the first two CPUs this process
/// may run on (a container's cpuset may not start at 0), or the same one when there is one.
pub fn default_cpus() -> (usize, usize) {
    let ids = voxring_linux::rt::allowed_cpus();
    match ids.as_slice() {
        [a, b, ..] => (*a, *b),
        [a] => (*a, *a),
        [] => (0, 0),
    }
}
