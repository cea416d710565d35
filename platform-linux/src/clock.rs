//! The clocks voxring reads: `CLOCK_MONOTONIC` for stamps shared between processes, and the
//! CPU-time clocks of the calling process and thread (`clock_gettime(2)` through rustix).
//!
//! All three are read through the vDSO: no system call, no lock, no allocation, so the real-time
//! path may read them.
//!
//! ```
//! let a = voxring_linux::clock::monotonic_ns();
//! let b = voxring_linux::clock::monotonic_ns();
//! assert!(b >= a, "CLOCK_MONOTONIC never goes back");
//! assert!(voxring_linux::clock::thread_cpu_ns() <= voxring_linux::clock::process_cpu_ns());
//! ```

use rustix::time::{ClockId, Timespec, clock_gettime};

/// `CLOCK_MONOTONIC` now, in nanoseconds. Every process on the machine reads the same clock, so
/// a stamp written by one process can be compared with a reading of another.
pub fn monotonic_ns() -> u64 {
    ns(clock_gettime(ClockId::Monotonic))
}

/// CPU time used so far by the whole calling process (all its threads),
/// `CLOCK_PROCESS_CPUTIME_ID`, in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    ns(clock_gettime(ClockId::ProcessCPUTime))
}

/// CPU time used so far by the calling thread, `CLOCK_THREAD_CPUTIME_ID`, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    ns(clock_gettime(ClockId::ThreadCPUTime))
}

/// A `timespec` as nanoseconds; saturates instead of wrapping (a monotonic clock that has run
/// for 584 years).
fn ns(ts: Timespec) -> u64 {
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timespec_becomes_nanoseconds_and_saturates() {
        let ts = Timespec {
            tv_sec: 2,
            tv_nsec: 5,
        };
        assert_eq!(ns(ts), 2_000_000_005);
        let huge = Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 999_999_999,
        };
        assert_eq!(ns(huge), u64::MAX);
    }

    #[test]
    fn cpu_time_grows_when_the_thread_works() {
        let t0 = thread_cpu_ns();
        // Spin until the clock moves (its resolution is coarse on some kernels); the bound only
        // gives up, it is not what the test asserts.
        let give_up = monotonic_ns() + 60_000_000_000;
        let mut x = 0u64;
        while thread_cpu_ns() == t0 && monotonic_ns() < give_up {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_ns() > t0);
    }
}
