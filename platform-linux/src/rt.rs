//! Real-time threads: SCHED_FIFO, CPU pinning, memory locking, prefaulting, and holding
//! `/dev/cpu_dma_latency` at 0.
//!
//! Every step is a separate call returning `Result`: a refusal says what was refused, why,
//! and how to get it, and the caller decides whether to go on without it. Nothing here
//! panics. [`promote`] runs the steps a request asks for and reports each one.

use std::fmt;
use std::fs::File;
use std::io::Write;

use rustix::io::Errno;
use rustix::process::{Resource, getrlimit};
use thread_priority::{
    RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
};

/// The script that grants real-time limits on this project's machines.
pub const TUNING_SCRIPT: &str = "kernel-tuning/apply --limits";

/// A real-time step that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtError {
    /// SCHED_FIFO at `priority` was refused.
    FifoRefused {
        /// The priority asked for.
        priority: u8,
        /// The errno (EPERM: no rtprio limit and no CAP_SYS_NICE).
        errno: i32,
        /// The soft RLIMIT_RTPRIO at the time (None = unlimited).
        rtprio_limit: Option<u64>,
    },
    /// The priority is outside 1..=99.
    BadPriority {
        /// The priority asked for.
        priority: u8,
    },
    /// The CPU asked for is not one this thread may run on.
    CpuNotAvailable {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs this thread may use.
        available: Vec<usize>,
    },
    /// Pinning was refused.
    PinRefused {
        /// The CPU asked for.
        cpu: usize,
    },
    /// `mlockall` was refused.
    MlockallRefused {
        /// The errno.
        errno: i32,
        /// The soft RLIMIT_MEMLOCK (None = unlimited).
        memlock_limit: Option<u64>,
    },
    /// `/dev/cpu_dma_latency` could not be opened or written.
    DmaLatency {
        /// The errno, if the OS gave one.
        errno: Option<i32>,
        /// What was being done.
        what: &'static str,
    },
}

fn errno_name(e: i32) -> String {
    Errno::from_raw_os_error(e).to_string()
}

impl fmt::Display for RtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RtError::FifoRefused {
                priority,
                errno,
                rtprio_limit,
            } => {
                let limit = rtprio_limit.map_or("unlimited".into(), |l| l.to_string());
                if *errno == libc::EPERM {
                    write!(
                        f,
                        "SCHED_FIFO {priority} refused (EPERM): this user's rtprio limit is {limit} \
                         and the process lacks CAP_SYS_NICE; run {TUNING_SCRIPT} (or add an \
                         rtprio line in /etc/security/limits.d and log in again), or grant \
                         CAP_SYS_NICE; continuing without real-time priority is possible but \
                         latency will suffer"
                    )
                } else {
                    write!(
                        f,
                        "SCHED_FIFO {priority} refused ({}): rtprio limit {limit}; under a \
                         cgroup v2 cpu controller real-time threads may need cpu.rt_runtime_us, \
                         or the kernel may lack RT scheduling",
                        errno_name(*errno)
                    )
                }
            }
            RtError::BadPriority { priority } => write!(
                f,
                "SCHED_FIFO priority {priority} is out of range: use 1 to 99 (audio usually 70-90)"
            ),
            RtError::CpuNotAvailable { cpu, available } => write!(
                f,
                "CPU {cpu} is not available to this thread (allowed: {available:?}); pick one of \
                 those, or widen the cpuset (taskset, the container's --cpuset-cpus)"
            ),
            RtError::PinRefused { cpu } => write!(
                f,
                "pinning to CPU {cpu} was refused by sched_setaffinity; a cgroup cpuset may \
                 exclude it: check /sys/fs/cgroup/cpuset.cpus.effective"
            ),
            RtError::MlockallRefused {
                errno,
                memlock_limit,
            } => write!(
                f,
                "mlockall refused ({}): the locked-memory limit is {}; run {TUNING_SCRIPT} \
                 (memlock unlimited) or grant CAP_IPC_LOCK; without it, pages may be swapped \
                 out and fault in on the audio thread",
                errno_name(*errno),
                memlock_limit.map_or("unlimited".into(), |l| format!("{l} bytes"))
            ),
            RtError::DmaLatency { errno, what } => match errno {
                Some(e) if *e == libc::EACCES || *e == libc::EPERM => write!(
                    f,
                    "{what} /dev/cpu_dma_latency refused ({}): it needs root; run as root or \
                     set a deep-C-state limit on the kernel command line (see kernel-tuning); \
                     without it, CPU wake-up from idle can add tens of microseconds",
                    errno_name(*e)
                ),
                Some(e) if *e == libc::ENOENT => write!(
                    f,
                    "/dev/cpu_dma_latency does not exist (a VM or a kernel without PM QoS): \
                     nothing to hold; carry on"
                ),
                Some(e) => write!(f, "{what} /dev/cpu_dma_latency failed ({})", errno_name(*e)),
                None => write!(f, "{what} /dev/cpu_dma_latency failed"),
            },
        }
    }
}

impl std::error::Error for RtError {}

/// Puts the calling thread under SCHED_FIFO at `priority` (1..=99).
pub fn set_fifo(priority: u8) -> Result<(), RtError> {
    if !(1..=99).contains(&priority) {
        return Err(RtError::BadPriority { priority });
    }
    let value =
        ThreadPriorityValue::try_from(priority).map_err(|_| RtError::BadPriority { priority })?;
    let r = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    );
    match r {
        Ok(()) => Ok(()),
        Err(thread_priority::Error::OS(errno)) => Err(RtError::FifoRefused {
            priority,
            errno,
            rtprio_limit: getrlimit(Resource::Rtprio).current,
        }),
        Err(_) => Err(RtError::BadPriority { priority }),
    }
}

/// Whether the calling thread runs under SCHED_FIFO.
pub fn is_fifo() -> bool {
    matches!(
        thread_priority::thread_schedule_policy(),
        Ok(ThreadSchedulePolicy::Realtime(
            RealtimeThreadSchedulePolicy::Fifo
        ))
    )
}

/// Every CPU the calling thread may run on (its `sched_getaffinity(2)` mask, which a
/// container's cpuset may start above 0), in ascending order; empty if the kernel would not say.
///
/// ```
/// let cpus = voxring_linux::rt::allowed_cpus();
/// assert!(!cpus.is_empty() && cpus.windows(2).all(|w| w[0] < w[1]));
/// ```
pub fn allowed_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// Pins the calling thread to `cpu` (`sched_setaffinity(2)`).
///
/// The kernel decides: a thread already pinned elsewhere (or spawned by a pinned thread, whose
/// mask it inherits) may still move to any CPU its cpuset allows. When the kernel refuses, the
/// error says whether the CPU is outside the thread's current mask or was refused anyway.
///
/// ```
/// let first = voxring_linux::rt::allowed_cpus()[0];
/// std::thread::spawn(move || voxring_linux::rt::pin_to_cpu(first)).join().unwrap()?;
/// # Ok::<(), voxring_linux::rt::RtError>(())
/// ```
pub fn pin_to_cpu(cpu: usize) -> Result<(), RtError> {
    let available = allowed_cpus;
    // A cpu_set_t holds CPU_SETSIZE CPUs; core_affinity would index past it (and abort).
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(RtError::CpuNotAvailable {
            cpu,
            available: available(),
        });
    }
    if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        return Ok(());
    }
    let available = available();
    if available.contains(&cpu) {
        Err(RtError::PinRefused { cpu })
    } else {
        Err(RtError::CpuNotAvailable { cpu, available })
    }
}

/// `mlockall(MCL_CURRENT | MCL_FUTURE)`: no page of this process is ever swapped out.
pub fn lock_all_memory() -> Result<(), RtError> {
    rustix::mm::mlockall(rustix::mm::MlockAllFlags::CURRENT | rustix::mm::MlockAllFlags::FUTURE)
        .map_err(|e| RtError::MlockallRefused {
            errno: e.raw_os_error(),
            memlock_limit: getrlimit(Resource::Memlock).current,
        })
}

/// Most stack [`prefault_stack`] touches: half of Rust's default 2 MiB for spawned threads.
pub const MAX_PREFAULT_STACK: usize = 1 << 20;

/// Touches `bytes` (at most [`MAX_PREFAULT_STACK`]) of the calling thread's stack so those
/// pages are resident before the real-time loop starts (with `mlockall(MCL_FUTURE)` they then
/// stay). The thread's stack must be larger than `bytes` plus what the caller already uses.
#[inline(never)]
pub fn prefault_stack(bytes: usize) {
    const CHUNK: usize = 4096;
    fn touch(left: usize) {
        let mut page = [0u8; CHUNK];
        // Volatile so the compiler keeps the write.
        // SAFETY: `page` is a live local array; writing one byte of it is in bounds.
        unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 1) };
        std::hint::black_box(&page);
        if left > CHUNK {
            touch(left - CHUNK);
        }
    }
    touch(bytes.min(MAX_PREFAULT_STACK));
}

/// Touches every page of `buf` (reads one byte per page) so it is resident.
pub fn prefault(buf: &[u8]) {
    for i in (0..buf.len()).step_by(4096) {
        std::hint::black_box(buf[i]);
    }
}

/// Keeps `/dev/cpu_dma_latency` at a chosen value (0 = no deep C-states) while it lives;
/// the kernel restores the default when the descriptor closes (on drop or on exit).
#[derive(Debug)]
pub struct DmaLatencyGuard {
    _file: File,
    value_us: i32,
}

impl DmaLatencyGuard {
    /// Opens `/dev/cpu_dma_latency` and writes `value_us` (microseconds, binary i32).
    pub fn hold(value_us: i32) -> Result<Self, RtError> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .map_err(|e| RtError::DmaLatency {
                errno: e.raw_os_error(),
                what: "opening",
            })?;
        file.write_all(&value_us.to_ne_bytes())
            .map_err(|e| RtError::DmaLatency {
                errno: e.raw_os_error(),
                what: "writing",
            })?;
        Ok(DmaLatencyGuard {
            _file: file,
            value_us,
        })
    }

    /// The value held.
    pub fn value_us(&self) -> i32 {
        self.value_us
    }
}

/// What [`promote`] should do for the calling thread.
#[derive(Debug, Clone, Default)]
pub struct RtRequest {
    /// SCHED_FIFO priority, if any.
    pub fifo_priority: Option<u8>,
    /// CPU to pin to, if any.
    pub cpu: Option<usize>,
    /// `mlockall` the process.
    pub lock_memory: bool,
    /// Bytes of stack to prefault (0 = none).
    pub prefault_stack_bytes: usize,
    /// Hold `/dev/cpu_dma_latency` at 0.
    pub hold_dma_latency: bool,
}

/// What [`promote`] achieved: one result per step asked for (None = not asked).
#[derive(Debug)]
pub struct RtOutcome {
    /// SCHED_FIFO.
    pub fifo: Option<Result<(), RtError>>,
    /// Pinning.
    pub pin: Option<Result<(), RtError>>,
    /// mlockall.
    pub lock_memory: Option<Result<(), RtError>>,
    /// The DMA-latency guard; keep it alive as long as the real-time work runs.
    pub dma_latency: Option<Result<DmaLatencyGuard, RtError>>,
}

impl RtOutcome {
    /// The refusals, for reporting.
    pub fn errors(&self) -> Vec<&RtError> {
        let mut v = Vec::new();
        for r in [&self.fifo, &self.pin, &self.lock_memory]
            .into_iter()
            .flatten()
        {
            if let Err(e) = r {
                v.push(e);
            }
        }
        if let Some(Err(e)) = &self.dma_latency {
            v.push(e);
        }
        v
    }
}

/// Runs the steps of `req` on the calling thread, in the order lock memory, prefault, pin,
/// hold DMA latency, SCHED_FIFO, and reports each. Never panics; the caller decides what a
/// refusal means.
pub fn promote(req: &RtRequest) -> RtOutcome {
    let lock_memory = req.lock_memory.then(lock_all_memory);
    if req.prefault_stack_bytes > 0 {
        prefault_stack(req.prefault_stack_bytes);
    }
    let pin = req.cpu.map(pin_to_cpu);
    let dma_latency = req.hold_dma_latency.then(|| DmaLatencyGuard::hold(0));
    let fifo = req.fifo_priority.map(set_fifo);
    RtOutcome {
        fifo,
        pin,
        lock_memory,
        dma_latency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_priority_is_an_error_not_a_panic() {
        assert_eq!(set_fifo(0), Err(RtError::BadPriority { priority: 0 }));
        assert_eq!(set_fifo(100), Err(RtError::BadPriority { priority: 100 }));
    }

    #[test]
    fn fifo_either_works_or_names_the_fix() {
        let r = std::thread::spawn(|| set_fifo(10).map(|()| is_fifo()))
            .join()
            .unwrap();
        match r {
            Ok(fifo) => assert!(fifo),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("SCHED_FIFO 10 refused"), "{msg}");
                if matches!(e, RtError::FifoRefused { errno, .. } if errno == libc::EPERM) {
                    assert!(
                        msg.contains(TUNING_SCRIPT) && msg.contains("CAP_SYS_NICE"),
                        "{msg}"
                    );
                }
            }
        }
    }

    #[test]
    fn pinning_to_a_missing_cpu_lists_the_allowed_ones() {
        let r = std::thread::spawn(|| pin_to_cpu(100_000)).join().unwrap();
        match r {
            Err(RtError::CpuNotAvailable { cpu, available }) => {
                assert_eq!(cpu, 100_000);
                assert!(!available.is_empty());
            }
            other => panic!("expected CpuNotAvailable, got {other:?}"),
        }
        let first = core_affinity::get_core_ids().unwrap()[0].id;
        assert_eq!(
            std::thread::spawn(move || pin_to_cpu(first))
                .join()
                .unwrap(),
            Ok(())
        );
    }

    /// A thread spawned by a pinned thread inherits its one-CPU mask; it may still pin itself
    /// to another CPU (the IPC benchmark's producer and consumer do exactly this).
    #[test]
    fn a_thread_pinned_elsewhere_can_still_move() {
        let ids: Vec<usize> = core_affinity::get_core_ids()
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let [a, b, ..] = ids[..] else {
            return; // one CPU: nothing to move between
        };
        let r = std::thread::spawn(move || {
            pin_to_cpu(a)?;
            std::thread::spawn(move || pin_to_cpu(b)).join().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn dma_latency_guard_holds_or_explains() {
        match DmaLatencyGuard::hold(0) {
            Ok(g) => assert_eq!(g.value_us(), 0),
            Err(e) => assert!(e.to_string().contains("cpu_dma_latency"), "{e}"),
        }
    }

    #[test]
    fn promote_reports_every_step_asked_for() {
        let out = std::thread::spawn(|| {
            let o = promote(&RtRequest {
                fifo_priority: Some(5),
                cpu: Some(core_affinity::get_core_ids().unwrap()[0].id),
                lock_memory: false,
                prefault_stack_bytes: 64 * 1024,
                hold_dma_latency: true,
            });
            (
                o.fifo.is_some(),
                o.pin.is_some(),
                o.lock_memory.is_none(),
                o.dma_latency.is_some(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(out, (true, true, true, true));
    }
}
