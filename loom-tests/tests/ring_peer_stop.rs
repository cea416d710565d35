//! loom models of a peer that stops for good (its process died) after any step of its
//! operation, with no destructor run: the survivor never sees a torn frame, never loses a
//! committed frame and never gets one twice; the platform's eviction lets the ring go on.
//!
//! "Any step" is every point between the calls a peer makes on the ring (claim or join,
//! grant, metadata, payload, commit or release). A process dying in the middle of one of
//! those calls leaves the region as one of these states plus some of the call's own atomic
//! stores, none of which a reader trusts before the cursor store that ends the call.
#![cfg(voxring_loom)]

use voxring_core::{Policy, Producer};
use voxring_loom_tests::assert_explored_many;
use voxring_loom_tests::ring::{
    finish_stream, new_ring, read_checked, read_once, write_one, write_up_to,
};

/// The producer's steps for two frames (grant, metadata, payload, commit; twice); it dies
/// (stops, no destructors) once `steps` of them are done.
fn produce_then_die(mut p: Producer, steps: usize) {
    let mut done = 0;
    for _ in 0..2 {
        if done == steps {
            break;
        }
        let mut g = p.write_grant(1).expect("two frames fit");
        done += 1;
        let seq = g.first_seq();
        if done < steps {
            g.frame_mut(0).unwrap().set_sample_pos(seq + 100);
            done += 1;
        }
        if done < steps {
            g.frame_mut(0).unwrap().payload_mut().fill(seq as u8 + 1);
            done += 1;
        }
        if done < steps {
            // This model polls: nobody parks, the Wake is empty.
            let _ = g.commit_all();
            done += 1;
        } else {
            std::mem::forget(g);
            break;
        }
    }
    std::mem::forget(p);
}

#[test]
fn producer_dying_after_any_step_loses_no_committed_frame() {
    for steps in 0..=8 {
        assert_explored_many("ring: producer dies mid-stream", move || {
            let (_mem, ring) = new_ring(2, 1, Policy::Lossless);
            let producer = ring.producer(1).unwrap();
            let consumer = ring.consumer(2).unwrap();
            let p = loom::thread::spawn(move || produce_then_die(producer, steps));
            let c = loom::thread::spawn(move || read_once(consumer, 2));
            p.join().unwrap();
            let (mut consumer, mut got) = c.join().unwrap();
            let committed = ring.write_pos();
            assert_eq!(committed, steps as u64 / 4, "commits before the death");
            // The platform judges the producer dead and frees the side; a new one continues.
            ring.evict_producer(1).unwrap();
            let mut next = ring.producer(9).unwrap();
            assert_eq!(next.write_pos(), committed);
            got.extend(read_checked(&mut consumer, 2));
            assert!(write_one(&mut next));
            got.extend(read_checked(&mut consumer, 2));
            let expected: Vec<u64> = (0..=committed).collect();
            assert_eq!(
                got, expected,
                "a committed frame was lost or delivered twice"
            );
        });
    }
}

#[test]
fn consumer_dying_after_any_step_is_evicted_without_harm() {
    // Steps of the dying consumer: joined, took a read grant, released it.
    for die_after in 0..3 {
        assert_explored_many("ring: consumer dies mid-read", move || {
            let (_mem, ring) = new_ring(1, 2, Policy::Lossless);
            let producer = ring.producer(1).unwrap();
            let survivor = ring.consumer(2).unwrap();
            let mut dying = ring.consumer(3).unwrap();
            let dying_index = dying.index();
            let d = loom::thread::spawn(move || {
                if die_after >= 1 {
                    if let Ok(g) = dying.read_grant(1) {
                        if die_after >= 2 {
                            // This model polls: nobody parks.
                            let _ = g.release_all().unwrap();
                        } else {
                            std::mem::forget(g);
                        }
                    }
                }
                std::mem::forget(dying);
            });
            let p = loom::thread::spawn(move || write_up_to(producer, 2));
            let s = loom::thread::spawn(move || read_once(survivor, 1));
            // The platform notices the death, then evicts while the others run on.
            d.join().unwrap();
            // This model polls: nobody parks.
            let _ = ring.evict(dying_index, 3).unwrap();
            let why = "the evicted consumer still blocks";
            let (_, _, got) = finish_stream(p.join().unwrap(), s.join().unwrap(), 2, 1, why);
            assert_eq!(got, vec![0, 1], "the survivor lost or repeated a frame");
        });
    }
}
