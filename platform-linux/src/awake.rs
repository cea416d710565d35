//! Keeping idle CPUs from halting while real-time audio runs ([`KeepAwake`]).
//!
//! A CPU with nothing to run halts until the next interrupt. On bare metal, coming back costs
//! the idle state's exit latency, which `/dev/cpu_dma_latency` bounds
//! ([`crate::rt::DmaLatencyGuard`]). On a virtual machine whose vCPUs halt at once (no
//! `haltpoll` cpuidle driver, no `idle=poll`: `voxring doctor`'s `vm-idle` check), a halt
//! gives the vCPU back to the host, and every wake-up after it (the audio thread's timer, the
//! sound server's, the futex wake of an agent) first waits for the host to run that vCPU
//! again: measured here at 85–95 µs typically and milliseconds in the tail (docs/run.md,
//! "Idle vCPUs halt"); the kernel-side cure needs a reboot with `cpuidle_haltpoll.force=1`.
//!
//! [`KeepAwake`] is the cure without a reboot: one thread per CPU, pinned there, under
//! `SCHED_IDLE`, spinning. `SCHED_IDLE` runs only when nothing else on that CPU wants to:
//! any other thread (every nice level, every real-time one) preempts it at once, so it takes
//! no time anyone else would use. What it costs is every idle cycle: the CPUs show 100 %
//! busy, the host sees busy vCPUs, a laptop's battery drains. Opt in (`--keep-awake`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};

use crate::rt::{RtError, pin_to_cpu};

/// One `SCHED_IDLE` spinner per CPU while it lives; dropping it stops and joins them.
#[derive(Debug)]
pub struct KeepAwake {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    cpus: Vec<usize>,
}

/// Why the spinners did not start.
#[derive(Debug)]
pub enum AwakeError {
    /// The thread for `cpu` could not be spawned.
    Spawn {
        /// The CPU.
        cpu: usize,
        /// What the OS said.
        error: std::io::Error,
    },
    /// It could not be pinned to its CPU.
    Pin(RtError),
    /// A spinner thread ended before it said whether it started (it panicked).
    Died,
    /// `SCHED_IDLE` was refused for the thread on `cpu` (without it the spinner would compete
    /// with the audio path's ordinary threads, so it is not left running).
    Idle {
        /// The CPU.
        cpu: usize,
        /// The OS error.
        errno: i32,
    },
}

impl std::fmt::Display for AwakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AwakeError::Spawn { cpu, error } => {
                write!(f, "cannot start the spinner for CPU {cpu}: {error}")
            }
            AwakeError::Pin(e) => write!(f, "cannot pin a spinner: {e}"),
            AwakeError::Died => write!(f, "a spinner thread ended before it started spinning"),
            AwakeError::Idle { cpu, errno } => write!(
                f,
                "SCHED_IDLE refused for the spinner on CPU {cpu} (errno {errno}): not left \
                 spinning at an ordinary priority, where it would compete with other threads"
            ),
        }
    }
}

impl std::error::Error for AwakeError {}

impl KeepAwake {
    /// Starts a spinner on each CPU of `cpus` (pinned, `SCHED_IDLE`) and returns once every
    /// one is spinning. On any refusal, the ones started are stopped and the error returned.
    pub fn start(cpus: &[usize]) -> Result<Self, AwakeError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut me = KeepAwake {
            stop: Arc::clone(&stop),
            threads: Vec::with_capacity(cpus.len()),
            cpus: cpus.to_vec(),
        };
        let (tx, rx) = mpsc::channel();
        for &cpu in cpus {
            let (stop, tx) = (Arc::clone(&stop), tx.clone());
            let t = std::thread::Builder::new()
                .name(format!("keep-awake-{cpu}"))
                .spawn(move || {
                    let ready = become_idle_spinner(cpu);
                    let ok = ready.is_ok();
                    let _ = tx.send(ready);
                    // Relaxed: a flag; the stop is made visible by `join` for everything else.
                    while ok && !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
                .map_err(|error| AwakeError::Spawn { cpu, error })?;
            me.threads.push(t);
        }
        drop(tx);
        for _ in cpus {
            match rx.recv() {
                Ok(Ok(())) => {}
                // Dropping `me` stops and joins the others.
                Ok(Err(e)) => return Err(e),
                // A thread died before it reported (a panic): treated as a refusal.
                Err(_) => return Err(AwakeError::Died),
            }
        }
        Ok(me)
    }

    /// The CPUs kept awake.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// How many spinners run.
    pub fn spinners(&self) -> usize {
        self.threads.len()
    }
}

/// Pins the calling thread to `cpu` and puts it under `SCHED_IDLE`.
fn become_idle_spinner(cpu: usize) -> Result<(), AwakeError> {
    pin_to_cpu(cpu).map_err(AwakeError::Pin)?;
    thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    )
    .map_err(|e| AwakeError::Idle {
        cpu,
        errno: match e {
            thread_priority::Error::OS(errno) => errno,
            _ => libc::EINVAL,
        },
    })
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        // Relaxed: the spinners only need to see it eventually; `join` orders the rest.
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The two tests count this process's spinner threads: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// (policy, allowed CPUs) of this process's threads named `name`.
    fn threads_named(name: &str) -> Vec<(u32, String)> {
        voxring_test_support::threads_of("self")
            .into_iter()
            .filter(|(n, ..)| n == name)
            .map(|(_, policy, allowed)| (policy, allowed))
            .collect()
    }

    #[test]
    fn one_idle_spinner_per_cpu_pinned_there_and_gone_when_dropped() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let cpus = crate::rt::allowed_cpus();
        assert!(!cpus.is_empty());
        let k = KeepAwake::start(&cpus).expect("SCHED_IDLE needs no privilege");
        assert_eq!((k.cpus(), k.spinners()), (&cpus[..], cpus.len()));
        for &cpu in &cpus {
            let found = threads_named(&format!("keep-awake-{cpu}"));
            // SCHED_IDLE is policy 5 (linux/sched.h), and the thread may run on `cpu` only.
            assert_eq!(found, vec![(5, cpu.to_string())], "CPU {cpu}");
        }
        drop(k);
        for &cpu in &cpus {
            assert!(
                gone(&format!("keep-awake-{cpu}")),
                "CPU {cpu}: spinner still there"
            );
        }
    }

    /// Whether no thread is named `name` once the kernel has reaped the joined ones: a join
    /// returns when the thread cleared its tid, a little before its `/proc/self/task` entry
    /// goes, so look again for up to 10 s (a loaded machine) before saying it stayed.
    fn gone(name: &str) -> bool {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if threads_named(name).is_empty() {
                return true;
            }
            if std::time::Instant::now() > until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn a_cpu_that_is_not_there_is_refused_and_nothing_keeps_spinning() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let cpus = crate::rt::allowed_cpus();
        let missing = cpus.iter().max().unwrap() + 1000;
        let mut asked = cpus.clone();
        asked.push(missing);
        let err = KeepAwake::start(&asked).unwrap_err();
        assert!(
            matches!(err, AwakeError::Pin(RtError::CpuNotAvailable { cpu, .. }) if cpu == missing),
            "{err}"
        );
        assert!(err.to_string().contains("not available"), "{err}");
        for &cpu in &cpus {
            assert!(
                gone(&format!("keep-awake-{cpu}")),
                "CPU {cpu}: a spinner kept spinning"
            );
        }
    }
}
