//! The hypervisor's steal time, from `/proc/stat`: CPU time the host took from this machine
//! while it wanted to run. The run's report (`run::glitch`), its buffer probe and the doctor's
//! timer probe read it here. `/proc/stat` counts in USER_HZ ticks, 100 per second on Linux.

/// One `/proc/stat` tick, ns.
pub const TICK_NS: u64 = 10_000_000;

/// The steal of all CPUs so far, ns (`None`: `/proc/stat` unreadable).
pub fn stolen_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    Some(parse_steal(&text)? * TICK_NS)
}

/// The CPUs whose steal `/proc/stat`'s `cpu` line sums (0: unreadable).
pub fn cpus() -> u32 {
    std::fs::read_to_string("/proc/stat").map_or(0, |t| count_cpus(&t))
}

/// Runs `f` and says how much CPU time the hypervisor stole from the machine (all CPUs)
/// meanwhile, ms (`None`: `/proc/stat` unreadable); a short `f` reads 0 or a multiple of a
/// tick (10 ms).
pub fn stolen_during<R>(f: impl FnOnce() -> R) -> (R, Option<f64>) {
    let before = stolen_ns();
    let r = f();
    let ms = before
        .zip(stolen_ns())
        .map(|(a, b)| b.saturating_sub(a) as f64 / 1e6);
    (r, ms)
}

/// The `cpuN` lines of `/proc/stat`: the CPUs its `cpu` line sums.
fn count_cpus(stat: &str) -> u32 {
    let n = stat
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The `steal` column of `/proc/stat`'s `cpu` line (all CPUs), in ticks.
fn parse_steal(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal ...
    line.split_whitespace().nth(8)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_number_of_the_cpu_line() {
        let stat = "cpu  10 0 5 100 1 0 2 37 0 0\ncpu0 5 0 2 50 0 0 1 20 0 0\n\
                    cpu1 5 0 3 50 1 0 1 17 0 0\nintr 1 2\n";
        assert_eq!(parse_steal(stat), Some(37));
        assert_eq!(parse_steal("intr 1 2\n"), None);
        assert_eq!(count_cpus(stat), 2);
    }
}
