//! Live probes: what the files cannot tell. Each runs in its own thread, so the caller's
//! scheduling is never changed.
//!
//! - `sched-fifo`: ask for SCHED_FIFO 80 for a thread (`pthread_setschedparam`, through the
//!   thread-priority crate), as voxring's audio threads do.
//! - `timer-jitter`: cyclictest-style: sleep to absolute 1 ms deadlines
//!   (`clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`) and record how late each wake-up is, at
//!   SCHED_FIFO 80 when the system grants it.
//! - `futex-wake`: one thread parks in `futex_wait`, another stamps CLOCK_MONOTONIC and wakes it;
//!   the latency is from the stamp to the sleeper running again (on another CPU when there are two).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rustix::thread::futex;
use rustix::time::{ClockId, Timespec};
use voxring_linux::clock::monotonic_ns as now_ns;

use super::{Check, Finding, fail, good, warn};

/// One audio quantum of 128 frames at 48 kHz, in nanoseconds: a wake-up later than this is an
/// xrun in the making.
const QUANTUM_NS: u64 = 2_666_667;

fn us(ns: u64) -> String {
    format!("{:.1} µs", ns as f64 / 1000.0)
}

/// Tries SCHED_FIFO 80 for the calling thread, as voxring's audio threads ask for it
/// ([`voxring_linux::rt::set_fifo`]).
fn try_fifo80() -> Result<(), String> {
    voxring_linux::rt::set_fifo(80).map_err(|e| e.to_string())
}

/// Runs every probe; `seconds` is the timer-jitter duration, `pw_clock` the PipeWire config's
/// `[rate, quantum, min, max, effective]` (`None`: PipeWire not installed).
pub fn run(seconds: f64, pw_clock: Option<[i64; 5]>) -> Vec<Check> {
    let (handle, stolen_ms) = crate::steal::stolen_during(|| {
        std::thread::Builder::new()
            .name("doctor-rt-probe".into())
            .spawn(move || {
                let fifo = try_fifo80();
                let jitter = timer_jitter(seconds);
                (fifo, jitter)
            })
            .map(|h| h.join())
    });
    let (fifo, jitter) = match handle {
        Ok(Ok(r)) => r,
        _ => (
            Err("the probe thread could not be started".into()),
            Err("the probe thread could not be started".into()),
        ),
    };
    let mut out = Vec::new();
    let fifo_ok = fifo.is_ok();
    out.push(match &fifo {
        Ok(()) => good("a thread got SCHED_FIFO 80 (pthread_setschedparam)").named("sched-fifo"),
        Err(why) => fail(
            format!("SCHED_FIFO 80 refused for a thread: {why}"),
            "kernel-tuning/apply --limits, then log in again (or grant CAP_SYS_NICE)",
        )
        .named("sched-fifo"),
    });
    let policy = if fifo_ok {
        "SCHED_FIFO 80"
    } else {
        "SCHED_OTHER (FIFO refused)"
    };
    if let (Some(clock), Ok(h)) = (pw_clock, &jitter) {
        out.push(pipewire_graph(clock, h.max()).named("pipewire-graph"));
    }
    out.push(match jitter {
        Ok(h) => jitter_check(&h, policy, stolen_ms),
        Err(why) => unmeasured("timer-jitter", &why),
    });
    out.push(futex_check(&FUTEX_BUSY));
    out.push(futex_check(&FUTEX_IDLE));
    out
}

/// Judges the timer wake-ups of the probe (`policy` it ran at), saying how much CPU time the
/// hypervisor stole from the machine meanwhile (`None`: not known): on a VM a late wake-up
/// may be the host's, which no setting of this system changes.
fn jitter_check(h: &hdrhistogram::Histogram<u64>, policy: &str, stolen_ms: Option<f64>) -> Check {
    let (p50, p99, max) = (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max());
    let mut found = format!(
        "{} wake-ups at 1 ms at {policy}: late by p50 {}, p99 {}, max {}",
        h.len(),
        us(p50),
        us(p99),
        us(max)
    );
    let stolen = stolen_ms.filter(|ms| *ms > 0.0);
    if let Some(ms) = stolen {
        found += &format!("; the hypervisor stole {ms:.0} ms of CPU time (all CPUs) meanwhile");
    }
    let mut fix = "kernel-tuning/apply --irq --governor, and --cmdline for preempt=full \
                   threadirqs (see the preempt, threadirqs and isolation checks); on a VM, a \
                   host with dedicated cores"
        .to_owned();
    if stolen.is_some() {
        fix = format!(
            "the host took CPU time from this VM while the probe ran, so the late wake-ups may \
             be the host's: run voxring doctor again when the host is quiet, or ask for \
             dedicated vCPUs; then {fix}"
        );
    }
    let c = if max > QUANTUM_NS {
        found += ": a wake-up came later than one 128-frame quantum at 48 kHz (2.7 ms)";
        fail(found, &fix)
    } else if p99 > 100_000 || max > 1_000_000 {
        warn(found, &fix)
    } else {
        good(found)
    };
    c.named("timer-jitter")
}

/// A futex-wake probe: how long the sleeper parks before each wake, and what p99 is too slow.
struct FutexProbe {
    id: &'static str,
    rounds: u32,
    gap: Duration,
    what: &'static str,
    warn_p99_ns: u64,
    fix: &'static str,
}

/// Wakes 300 µs apart: a CPU that was busy a moment ago.
const FUTEX_BUSY: FutexProbe = FutexProbe {
    id: "futex-wake",
    rounds: 200,
    gap: Duration::from_micros(300),
    what: "300 µs apart",
    warn_p99_ns: 50_000,
    fix: "kernel-tuning/apply --governor (deep C-states slow wake-ups); voxring's shm-spin mode \
          avoids the wake-up",
};

/// Wakes 10 ms apart: a CPU that had time to go idle, as between the wake-ups of a hub in a
/// 512-frame PipeWire graph (on a VM, an idle virtual CPU is halted and the host must run it
/// again).
const FUTEX_IDLE: FutexProbe = FutexProbe {
    id: "futex-wake-idle",
    rounds: 100,
    gap: Duration::from_millis(10),
    what: "10 ms apart (the CPU idle in between)",
    warn_p99_ns: 1_000_000,
    fix: "keep CPUs out of deep idle states while audio runs: hold /dev/cpu_dma_latency open \
          with 0 written to it (kernel-tuning/apply --limits lets the audio group write it; it \
          acts through a cpuidle driver); on a VM the host also decides (KVM's halt_poll_ns)",
};

/// Runs one futex probe on its own thread and judges it.
fn futex_check(p: &FutexProbe) -> Check {
    let (rounds, gap) = (p.rounds, p.gap);
    let futex = std::thread::Builder::new()
        .name("doctor-futex-probe".into())
        .spawn(move || futex_wake(rounds, gap))
        .map_err(|e| format!("spawning the futex probe: {e}"))
        .and_then(|h| {
            h.join()
                .map_err(|_| "the futex probe panicked".to_string())?
        });
    match futex {
        Ok((h, cross)) => {
            let p99 = h.value_at_quantile(0.99);
            let found = format!(
                "{} futex wakes {}{}: p50 {}, p99 {}, max {}",
                h.len(),
                p.what,
                if cross { " across CPUs" } else { " on one CPU" },
                us(h.value_at_quantile(0.5)),
                us(p99),
                us(h.max())
            );
            if p99 > p.warn_p99_ns {
                warn(found, p.fix).named(p.id)
            } else {
                good(found).named(p.id)
            }
        }
        Err(why) => unmeasured(p.id, &why),
    }
}

/// The frames per cycle a voxring hub asks of PipeWire by default (its `--quantum`).
const HUB_QUANTUM: i64 = 128;

/// The `pipewire-graph` check: is PipeWire's graph cycle, as a hub at its default quantum sets
/// it (node latency 128 frames, clamped to the config's min and max quantum), longer than twice
/// the longest real-time wake-up delay measured (twice: a probe of a few seconds sees only part
/// of a machine's stalls)? A client that misses a graph cycle breaks its stream, and PipeWire's
/// own clients break there too (docs/voice-round-trip.md measured it). `clock` is the config's
/// `[rate, quantum, min, max, effective]`.
pub(crate) fn pipewire_graph(clock: [i64; 5], max_late_ns: u64) -> Finding {
    let [rate, _, min_q, max_q, _] = clock;
    let rate = rate.max(1) as u64;
    let cycle_ns = |frames: i64| frames as u64 * 1_000_000_000 / rate;
    let ms = |ns: u64| format!("{:.1} ms", ns as f64 / 1e6);
    let bound = |q: i64| u32::try_from(q).ok().filter(|q| *q > 0);
    let graph = i64::from(voxring_linux::audio::pipewire::graph_for_latency(
        HUB_QUANTUM as u32,
        bound(min_q),
        bound(max_q),
    ));
    // The smallest graph (a power of two times the hub's quantum) the stalls allow.
    let mut needs = HUB_QUANTUM;
    while cycle_ns(needs) < 2 * max_late_ns && needs < 8192 {
        needs *= 2;
    }
    let found = format!(
        "a {HUB_QUANTUM}-frame hub puts PipeWire's graph at {graph} frames ({} at {rate} Hz); \
         the longest real-time wake-up delay measured was {}, which needs a graph of at least \
         {needs} frames",
        ms(cycle_ns(graph)),
        ms(max_late_ns)
    );
    if graph >= needs {
        return good(found);
    }
    warn(
        format!(
            "{found}: a stall that long makes PipeWire's clients miss its cycle and break their \
             streams"
        ),
        &format!(
            "give PipeWire's graph {needs} frames ({}), the hub keeping its own cycle: \
             PIPEWIRE_PROPS='{{ node.latency = {needs}/{rate} }}' voxring serve --device pipewire \
             (or pw-metadata -n settings 0 clock.force-quantum {needs}); on a VM, a host with \
             dedicated cores",
            ms(cycle_ns(needs))
        ),
    )
}

/// Sleeps to absolute 1 ms deadlines for `seconds`; returns how late each wake-up was.
pub(crate) fn timer_jitter(seconds: f64) -> Result<hdrhistogram::Histogram<u64>, String> {
    let mut h = crate::hist::new_hist();
    let period = 1_000_000u64;
    let n = ((seconds * 1000.0) as u64).max(1);
    let mut next = now_ns() + period;
    for _ in 0..n {
        let ts = Timespec {
            tv_sec: (next / 1_000_000_000) as i64,
            tv_nsec: (next % 1_000_000_000) as i64,
        };
        // EINTR: re-sleep to the same deadline.
        while let Err(e) = rustix::thread::clock_nanosleep_absolute(ClockId::Monotonic, &ts) {
            if e != rustix::io::Errno::INTR {
                return Err(format!("clock_nanosleep: {e}"));
            }
        }
        let late = now_ns().saturating_sub(next);
        h.record(late.max(1)).map_err(|e| e.to_string())?;
        next += period;
        // After a long stall, restart from now rather than firing a burst of late wake-ups.
        let now = now_ns();
        if next < now {
            next = now + period;
        }
    }
    Ok(h)
}

/// `rounds` futex wakes of a parked thread, each `gap` after it parked; returns the latencies
/// and whether the two threads ran on different CPUs.
fn futex_wake(rounds: u32, gap: Duration) -> Result<(hdrhistogram::Histogram<u64>, bool), String> {
    let cpus = voxring_linux::rt::allowed_cpus();
    let cross = cpus.len() >= 2;
    let word = Arc::new(AtomicU32::new(0));
    let parked = Arc::new(AtomicU32::new(0));
    let stamp = Arc::new(AtomicU64::new(0));
    let (w2, p2, s2) = (word.clone(), parked.clone(), stamp.clone());
    let sleeper_cpu = cpus.last().copied();
    let sleeper = std::thread::Builder::new()
        .name("doctor-futex-sleeper".into())
        .spawn(move || -> Result<hdrhistogram::Histogram<u64>, String> {
            if let Some(c) = sleeper_cpu {
                // Best effort: unpinned, the probe still measures a wake-up.
                let _ = voxring_linux::rt::pin_to_cpu(c);
            }
            let mut h = crate::hist::new_hist();
            for round in 1..=rounds {
                let deadline = now_ns() + 5_000_000_000;
                // Wait until the word becomes `round`, parking on it.
                loop {
                    // SeqCst: pairs with the waker's SeqCst load of `parked` (Dekker): either it
                    // sees us parked and wakes us, or we see its store below and skip the wait.
                    p2.store(round, Ordering::SeqCst);
                    if w2.load(Ordering::SeqCst) >= round {
                        break;
                    }
                    let timeout = Timespec {
                        tv_sec: 0,
                        tv_nsec: 100_000_000,
                    };
                    let _ = futex::wait(&w2, futex::Flags::PRIVATE, round - 1, Some(&timeout));
                    if now_ns() > deadline {
                        return Err("the waker never woke the sleeper (5 s)".into());
                    }
                }
                let woke = now_ns();
                // Acquire: pairs with the waker's Release store of the stamp.
                let t0 = s2.load(Ordering::Acquire);
                h.record(woke.saturating_sub(t0).max(1))
                    .map_err(|e| e.to_string())?;
            }
            Ok(h)
        })
        .map_err(|e| format!("spawning the sleeper: {e}"))?;
    if let Some(c) = cpus.first().copied()
        && cross
    {
        let _ = voxring_linux::rt::pin_to_cpu(c);
    }
    let mut result = Ok(());
    for round in 1..=rounds {
        // Wait for the sleeper to announce it is about to park, then give it time to get into
        // the kernel, so each wake really wakes a sleeping thread.
        let deadline = now_ns() + 5_000_000_000;
        // SeqCst: pairs with the sleeper's SeqCst store of `parked`.
        while parked.load(Ordering::SeqCst) != round {
            if now_ns() > deadline {
                result = Err("the sleeper never parked (5 s)".to_string());
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        if result.is_err() {
            // Let the sleeper finish its rounds without waiting. SeqCst: pairs with the
            // sleeper's SeqCst load of the word after it sets `parked`.
            word.store(rounds, Ordering::SeqCst);
            let _ = futex::wake(&word, futex::Flags::PRIVATE, 1);
            break;
        }
        std::thread::sleep(gap);
        // Release: pairs with the sleeper's Acquire load of the stamp.
        stamp.store(now_ns(), Ordering::Release);
        // SeqCst: pairs with the sleeper's SeqCst re-check after it sets `parked`.
        word.store(round, Ordering::SeqCst);
        if let Err(e) = futex::wake(&word, futex::Flags::PRIVATE, 1) {
            result = Err(format!("futex wake: {e}"));
            break;
        }
    }
    let h = sleeper
        .join()
        .map_err(|_| "the sleeper thread panicked".to_string())?;
    result?;
    Ok((h?, cross))
}

/// The warning of a probe that could not measure.
fn unmeasured(id: &'static str, why: &str) -> Check {
    warn(
        format!("could not measure: {why}"),
        "run voxring doctor again; report a bug if it persists",
    )
    .named(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    const STOCK_48K: [i64; 5] = [48_000, 1024, 32, 2048, 1024];

    /// A histogram of wake-ups late by `lates_us`.
    fn lates(lates_us: &[u64]) -> hdrhistogram::Histogram<u64> {
        let mut h = crate::hist::new_hist();
        for l in lates_us {
            h.record(l * 1000).unwrap();
        }
        h
    }

    #[test]
    fn late_wake_ups_with_steal_point_at_the_host() {
        let h = lates(&[20, 20, 20, 4_000]);
        let c = jitter_check(&h, "SCHED_FIFO 80", Some(120.0));
        assert_eq!(c.status, Status::Fail, "{}", c.found);
        assert!(
            c.found.contains("the hypervisor stole 120 ms"),
            "{}",
            c.found
        );
        assert!(c.fix.starts_with("the host took CPU time"), "{}", c.fix);
        // The same wake-ups without steal: this system's settings are the suspects.
        let c = jitter_check(&h, "SCHED_FIFO 80", Some(0.0));
        assert!(!c.found.contains("hypervisor"), "{}", c.found);
        assert!(c.fix.starts_with("kernel-tuning/apply"), "{}", c.fix);
        // Quick wake-ups are ok whatever was stolen.
        let c = jitter_check(&lates(&[20, 30, 40]), "SCHED_FIFO 80", Some(10.0));
        assert_eq!(c.status, Status::Ok, "{}", c.found);
    }

    #[test]
    fn a_graph_longer_than_twice_the_stalls_holds() {
        // 2.67 ms cycles, the longest delay 1.2 ms.
        let f = pipewire_graph(STOCK_48K, 1_200_000);
        assert_eq!(f.status, Status::Ok, "{}", f.found);
        assert!(
            f.found.contains("graph at 128 frames (2.7 ms at 48000 Hz)"),
            "{}",
            f.found
        );
    }

    #[test]
    fn stalls_past_half_the_graph_cycle_ask_for_a_longer_one() {
        // This VM's doctor measured 3.4 ms: twice that needs 512 frames (10.7 ms).
        let f = pipewire_graph(STOCK_48K, 3_400_000);
        assert_eq!(f.status, Status::Warn, "{}", f.found);
        assert!(f.fix.contains("node.latency = 512/48000"), "{}", f.fix);
        assert!(f.fix.contains("clock.force-quantum 512"), "{}", f.fix);
        assert!(f.found.contains("3.4 ms"), "{}", f.found);
    }

    #[test]
    fn the_configured_min_quantum_sets_the_graph() {
        // VM overrides of a stock config (min-quantum 1024): the graph is 21 ms whatever the hub
        // asks, and holds a 3.4 ms stall.
        let f = pipewire_graph([48_000, 1024, 1024, 2048, 1024], 3_400_000);
        assert_eq!(f.status, Status::Ok, "{}", f.found);
        assert!(f.found.contains("graph at 1024 frames"), "{}", f.found);
        // ... and says what a smaller graph would need (kernel-tuning/apply --pipewire sets 128).
        assert!(f.found.contains("at least 512 frames"), "{}", f.found);
        // At 44.1 kHz the same 128 frames are 2.9 ms: a 1.6 ms stall needs 256.
        let f = pipewire_graph([44_100, 1024, 32, 2048, 1024], 1_600_000);
        assert!(f.fix.contains("node.latency = 256/44100"), "{}", f.fix);
    }
}
