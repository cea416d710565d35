//! loom models of every concurrent protocol in `voxring-core`.
//!
//! The models live in `tests/` and compile only under `--cfg voxring_loom`; run them with
//! `loom-tests/run`, which sets the cfg, its own target dir, `--release` and
//! `LOOM_MAX_PREEMPTIONS`. A plain `cargo test` builds this crate with no models in it.
//!
//! May depend on: `voxring-core` and loom.

#[cfg(voxring_loom)]
pub use explore::{assert_explored_many, check};

/// Running a loom model while counting the interleavings it explored.
///
/// loom can pass silently after a single interleaving (when a spawned thread begins with an
/// atomic load, for one), so every model in this suite goes through [`assert_explored_many`],
/// which fails the test when the model ran only once.
#[cfg(voxring_loom)]
mod explore {
    use std::sync::Arc;
    // A plain std atomic on purpose: the counter lives outside the model (loom's own atomics
    // may only be touched inside `loom::model`), and each call has its own counter, so
    // models running in parallel test threads do not see each other's counts.
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Runs `f` under `loom::model::Builder::new()` (which reads `LOOM_MAX_PREEMPTIONS`,
    /// `LOOM_MAX_BRANCHES`, ... from the environment) and returns how many interleavings
    /// (executions of `f`) loom explored. Panics, like `loom::model`, when a model fails.
    pub fn check<F>(f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        let count = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&count);
        loom::model::Builder::new().check(move || {
            // Relaxed: a plain event counter; loom runs executions one after another and
            // `check` returning (a join of its worker) orders every increment before the load.
            counter.fetch_add(1, Ordering::Relaxed);
            f();
        });
        count.load(Ordering::Relaxed)
    }

    /// Runs the model like [`check`], then panics when loom explored only one interleaving
    /// (the model then proved nothing about concurrency: make both sides spawned threads, or
    /// give the first thread something to race with). Returns the count, and prints it so
    /// `cargo test -- --nocapture` shows how much each model explored.
    pub fn assert_explored_many<F>(name: &str, f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        let n = check(f);
        assert!(
            n > 1,
            "loom model `{name}` explored only {n} interleaving(s): it cannot have tested any \
             race. Spawn both sides as loom threads and make sure they touch shared atomics."
        );
        println!("loom model `{name}`: {n} interleavings explored");
        n
    }
}
