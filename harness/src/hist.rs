//! The one latency histogram of the program: hdrhistogram in nanoseconds, 3 significant
//! digits, 1 ns to 60 s. `voxring run`, `voxring bench ipc` and `voxring doctor` all record into
//! it, so their percentiles are computed the same way.

use hdrhistogram::Histogram;

/// Highest latency a histogram records (60 s, in ns); [`record`] clamps larger values to it.
pub const HIST_MAX_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits, 1 ns to 60 s.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("constant bounds are valid")
}

/// Records `ns` (clamped to the histogram's range; a 0 becomes 1 ns).
pub fn record(hist: &mut Histogram<u64>, ns: u64) {
    // Cannot fail: the value is clamped into the histogram's bounds first.
    let _ = hist.record(ns.clamp(1, HIST_MAX_NS));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_out_of_range_are_clamped_not_lost() {
        let mut h = new_hist();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= HIST_MAX_NS);
    }
}
