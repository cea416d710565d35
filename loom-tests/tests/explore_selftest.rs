//! Checks the suite's own helper: `assert_explored_many` counts interleavings and rejects a
//! model that explored only one.
#![cfg(voxring_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use voxring_loom_tests::{assert_explored_many, check};

#[test]
fn a_racing_model_explores_several_interleavings() {
    let n = assert_explored_many("two racing increments", || {
        let x = Arc::new(AtomicUsize::new(0));
        let x2 = Arc::clone(&x);
        // Relaxed: only the final count matters, and the join orders it before the load.
        let t = loom::thread::spawn(move || x2.fetch_add(1, Ordering::Relaxed));
        x.fetch_add(1, Ordering::Relaxed);
        t.join().unwrap();
        assert_eq!(x.load(Ordering::Relaxed), 2);
    });
    assert!(n > 1);
}

#[test]
fn a_model_without_threads_counts_one() {
    let n = check(|| {
        let x = AtomicUsize::new(1);
        assert_eq!(x.load(Ordering::Relaxed), 1);
    });
    assert_eq!(n, 1);
}

#[test]
#[should_panic(expected = "explored only 1 interleaving")]
fn a_single_interleaving_is_rejected() {
    assert_explored_many("no threads", || {
        let x = AtomicUsize::new(1);
        assert_eq!(x.load(Ordering::Relaxed), 1);
    });
}
