//! Measures control-register waits: what a waking write costs the writer when nobody waits
//! (against a plain write, side by side in one run), and how long a reader blocked in
//! `wait_newer_than` takes to see a write (write stamped with CLOCK_MONOTONIC → waiter back
//! from its wait), against the polling it replaces (a reader checking once per mic frame).
//! Prints one JSON line; the figures go in docs/protocol.md ("Control registers").
//!
//!   cargo run --release -p voxring-linux --example control_wake [ROUNDS]

use std::time::{Duration, Instant};

use voxring_core::control::ControlRegister;
use voxring_linux::clock::monotonic_ns;
use voxring_linux::control::ControlExt;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// ns per write over `n` writes, for plain writes and waking writes, interleaved in blocks.
fn writer_cost(n: u32) -> (f64, f64) {
    let reg = ControlRegister::<[u64; 4], 4>::new([0; 4]);
    let (mut plain, mut waking) = (Duration::ZERO, Duration::ZERO);
    for block in 0..20u64 {
        let t = Instant::now();
        for i in 0..n / 20 {
            reg.write([block, u64::from(i), 0, 0]).unwrap();
        }
        plain += t.elapsed();
        let t = Instant::now();
        for i in 0..n / 20 {
            reg.publish_and_wake([block, u64::from(i), 0, 0]).unwrap();
        }
        waking += t.elapsed();
    }
    let per = |d: Duration| d.as_nanos() as f64 / f64::from(n);
    (per(plain), per(waking))
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS is a number"))
        .unwrap_or(2000);
    let (plain_ns, waking_ns) = writer_cost(2_000_000);
    let reg = ControlRegister::<[u64; 4], 4>::new([0; 4]);
    let mut lat = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let mut seen = 0;
            let mut lat = Vec::with_capacity(rounds);
            while lat.len() < rounds {
                seen = reg
                    .wait_newer_than(seen, Some(Duration::from_secs(60)))
                    .expect("woken within 60 s");
                let now = monotonic_ns();
                let (v, _) = reg.read_patiently(Duration::from_secs(2)).unwrap();
                lat.push(now.saturating_sub(v[0]));
            }
            lat
        });
        for _ in 0..rounds {
            // Let the waiter go back to sleep: each write finds it parked.
            std::thread::sleep(Duration::from_millis(1));
            reg.publish_and_wake([monotonic_ns(), 0, 0, 0]).unwrap();
        }
        waiter.join().unwrap()
    });
    lat.sort_unstable();
    // A reader polling once per 2.67 ms mic frame notices a write uniformly within the frame.
    let poll_mean_ns = 2_666_667 / 2;
    println!(
        "{{\"write_plain_ns\":{plain_ns:.1},\"write_waking_no_waiter_ns\":{waking_ns:.1},\
         \"wake_rounds\":{rounds},\"wake_p50_ns\":{},\"wake_p99_ns\":{},\"wake_p999_ns\":{},\
         \"wake_max_ns\":{},\"poll_per_frame_mean_ns\":{poll_mean_ns}}}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat[lat.len() - 1]
    );
}
