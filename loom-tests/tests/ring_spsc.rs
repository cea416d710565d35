//! loom models of the single-producer paths: the frame ring's in-place grants across the
//! wrap (lossless, one consumer), and `StaticRing`'s push/pop and chunks.
//!
//! Payload accesses are seen by loom through each slot's access tracker (the shim's
//! `UnsafeCell`), so a consumer touching a payload the producer has not published (or a
//! producer reusing a slot still being read) is a causality violation. This is the model
//! that catches the planted bug (the `planted-bug` feature: the commit's Release store of
//! `write_pos` weakened to Relaxed).
#![cfg(voxring_loom)]

use voxring_core::{Consumer, GrantError, Producer, StaticRing};
use voxring_loom_tests::assert_explored_many;
use voxring_loom_tests::ring::{finish_stream, read_checked, write_one};

mod common;
use common::lossless_pair;

/// A consumer thread making `tries` attempts of `read_checked` (up to `per_read` frames each,
/// none when nothing is ready); hands back the consumer and the sequence numbers read.
fn spawn_reader(
    mut consumer: Consumer,
    tries: usize,
    per_read: usize,
) -> loom::thread::JoinHandle<(Consumer, Vec<u64>)> {
    loom::thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..tries {
            got.extend(read_checked(&mut consumer, per_read));
        }
        (consumer, got)
    })
}

#[test]
fn spsc_grants_wrap_without_stale_or_lost_frames() {
    assert_explored_many("ring: SPSC lossless grants across the wrap", || {
        let (_mem, _ring, mut producer, consumer) = lossless_pair(2);
        let p = loom::thread::spawn(move || {
            let mut sent = 0;
            for _ in 0..4 {
                if sent == 3 {
                    break;
                }
                if write_one(&mut producer) {
                    sent += 1;
                } else {
                    loom::thread::yield_now();
                }
            }
            (producer, sent)
        });
        let c = spawn_reader(consumer, 2, 2);
        // Both threads are done: finish the stream and check it is exactly 0..sent, in order.
        let why = "no free slot after the consumer drained";
        let (_, _, got) = finish_stream(p.join().unwrap(), c.join().unwrap(), 3, 2, why);
        assert_eq!(got, vec![0, 1, 2]);
    });
}

/// Writes up to `n` frames in one grant with `write_one`'s pattern and commits them together
/// (the slots' `seq` stores, then one `write_pos` store); how many went in.
fn write_batch(p: &mut Producer, n: usize) -> usize {
    match p.write_grant(n) {
        Ok(mut g) => {
            for mut f in g.frames_mut() {
                let seq = f.seq();
                f.set_sample_pos(seq + 100);
                f.payload_mut().fill(seq as u8 + 1);
            }
            let len = g.len();
            // This model polls: nobody parks, the Wake is empty.
            let _ = g.commit_all();
            len
        }
        Err(GrantError::Full) => 0,
        Err(e) => panic!("unexpected grant error: {e}"),
    }
}

/// A consumer reading one frame at a time from a producer that commits two frames at once
/// (two slots' `seq`, then one `write_pos` store) and then one more across the wrap of a
/// two-slot ring: every frame arrives once, in order, intact.
#[test]
fn one_frame_reads_of_a_batched_commit_across_the_wrap() {
    assert_explored_many("ring: one-frame reads of a batched commit", || {
        let (_mem, _ring, mut producer, consumer) = lossless_pair(2);
        let p = loom::thread::spawn(move || {
            let mut sent = write_batch(&mut producer, 2);
            if sent == 2 {
                sent += write_batch(&mut producer, 1);
            }
            (producer, sent)
        });
        let c = spawn_reader(consumer, 3, 1);
        // Both threads are done: drain one frame at a time (the whole backlog is published
        // now), write what the producer could not, and check the stream is exactly 0..3.
        let (mut producer, sent) = p.join().unwrap();
        let (mut consumer, mut got) = c.join().unwrap();
        for _ in 0..2 {
            got.extend(read_checked(&mut consumer, 1));
        }
        for _ in sent..3 {
            assert!(
                write_one(&mut producer),
                "no free slot after the consumer drained"
            );
            got.extend(read_checked(&mut consumer, 1));
        }
        assert_eq!(got, vec![0, 1, 2]);
    });
}

#[test]
fn static_ring_push_pop_and_chunks_across_the_wrap() {
    assert_explored_many("ring: StaticRing push/pop and chunks", || {
        let ring: &'static StaticRing<u32, 2> = Box::leak(Box::new(StaticRing::new(0)));
        let (mut tx, mut rx) = ring.split().unwrap();
        let p = loom::thread::spawn(move || {
            let mut next = 1u32;
            for _ in 0..3 {
                if next > 3 {
                    break;
                }
                if next == 2 {
                    // One item through a chunk grant, the others through push.
                    if let Ok(mut chunk) = tx.write_chunk(1) {
                        assert_eq!(chunk.copy_from(&[next]), 1);
                        chunk.commit(1).unwrap();
                        next += 1;
                    }
                } else if tx.push(next).is_ok() {
                    next += 1;
                }
            }
            (tx, next - 1)
        });
        let c = loom::thread::spawn(move || {
            let mut got = Vec::new();
            for _ in 0..2 {
                if let Ok(chunk) = rx.read_chunk(2) {
                    let (a, b) = chunk.as_slices();
                    got.extend_from_slice(a);
                    got.extend_from_slice(b);
                    let n = chunk.len();
                    chunk.release(n).unwrap();
                } else if let Ok(v) = rx.pop() {
                    got.push(v);
                }
            }
            (rx, got)
        });
        let (mut tx, mut sent) = p.join().unwrap();
        let (mut rx, mut got) = c.join().unwrap();
        while let Ok(v) = rx.pop() {
            got.push(v);
        }
        while sent < 3 {
            sent += 1;
            tx.push(sent).unwrap();
            got.push(rx.pop().unwrap());
        }
        assert_eq!(got, vec![1, 2, 3]);
    });
}
