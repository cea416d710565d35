//! loom models of `voxring_core::fence::CycleFence`: exactly one agent is told it finished
//! last, no completion is lost, the last agent sees every agent's output, and a mark racing
//! a re-arm is either counted in its cycle or refused as stale (and counted as missed), with
//! the deadline of its own cycle.
#![cfg(voxring_loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use voxring_core::fence::{CycleFence, DoneError, NO_DEADLINE};
use voxring_loom_tests::assert_explored_many;

/// Each agent's output for the cycle, written before it marks the fence.
struct Outputs([UnsafeCell<u64>; 2]);
// SAFETY: agent i writes only cell i, and the other cell is read only by the agent that
// `done` reports as last, after both marks; loom checks that this is ordered (a missing
// happens-before edge fails the model as a data race).
unsafe impl Sync for Outputs {}

#[test]
fn exactly_one_last_and_it_sees_all_outputs() {
    assert_explored_many("fence: one last of two agents", || {
        let fence = Arc::new(CycleFence::new());
        let outputs = Arc::new(Outputs([UnsafeCell::new(0), UnsafeCell::new(0)]));
        let lasts = Arc::new(AtomicUsize::new(0));
        fence.arm(1, 0b11, NO_DEADLINE).unwrap();
        let agents: Vec<_> = (0..2usize)
            .map(|agent| {
                let (fence, outputs, lasts) =
                    (Arc::clone(&fence), Arc::clone(&outputs), Arc::clone(&lasts));
                loom::thread::spawn(move || {
                    // SAFETY: cell `agent` is written only by this agent (see `Outputs`).
                    outputs.0[agent].with_mut(|p| unsafe { *p = 10 + agent as u64 });
                    let done = fence.done(agent, 1, 0).unwrap();
                    if done.last {
                        // Relaxed: a count checked after the joins.
                        lasts.fetch_add(1, Ordering::Relaxed);
                        for (i, cell) in outputs.0.iter().enumerate() {
                            // SAFETY: both agents have marked (we cleared the last bit), so
                            // both writes happen-before this read (AcqRel CAS chain).
                            let v = cell.with(|p| unsafe { *p });
                            assert_eq!(v, 10 + i as u64, "last agent missed output {i}");
                        }
                    }
                })
            })
            .collect();
        for a in agents {
            a.join().unwrap();
        }
        assert_eq!(lasts.load(Ordering::Relaxed), 1, "exactly one last");
        assert!(fence.is_complete(1), "no completion lost");
        assert_eq!(fence.pending(), 0);
    });
}

#[test]
fn a_mark_racing_two_rearms_uses_its_own_deadline() {
    assert_explored_many("fence: mark vs re-arm", || {
        let fence = Arc::new(CycleFence::new());
        // Cycle 1: deadline 10. Cycles 2 and 3 follow; cycle 3 reuses cycle 1's deadline slot
        // with a deadline of 100, so reading the wrong slot would call a late mark on time.
        // Limit: loom does not model load buffering, so the one case the Acquire half of
        // `arm`'s swap exists for (the agent's deadline load reading the later store of
        // cycle 3 although its CAS preceded cycle 2's swap) cannot show up here; weakening
        // that swap to Release passes this model. The argument is in `CycleFence::arm`.
        fence.arm(1, 0b11, 10).unwrap();
        let agent = {
            let fence = Arc::clone(&fence);
            loom::thread::spawn(move || fence.done(0, 1, 20))
        };
        let driver = {
            let fence = Arc::clone(&fence);
            loom::thread::spawn(move || {
                let a = fence.arm(2, 0b1, 50).unwrap();
                let b = fence.arm(3, 0b1, 100).unwrap();
                (a.missed, b.missed)
            })
        };
        let mark = agent.join().unwrap();
        let (missed2, missed3) = driver.join().unwrap();
        assert_eq!(missed3, 0b1, "agent 0 never marked cycle 2");
        match mark {
            Ok(done) => {
                assert!(done.late, "deadline of cycle 1 is 10, the mark came at 20");
                assert!(!done.last, "agent 1 was still pending in cycle 1");
                assert_eq!(missed2, 0b10);
                assert_eq!(fence.late_count(0), Some(1));
                assert_eq!(fence.missed_count(0), Some(1));
            }
            Err(DoneError::Stale { cycle: 1 }) => {
                assert_eq!(missed2, 0b11);
                assert_eq!(fence.late_count(0), Some(0));
                assert_eq!(fence.missed_count(0), Some(2));
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    });
}
