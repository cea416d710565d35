//! The park/wake bodies the ring models share (`ring_park`, `ring_periodic`, `ring_spsc`):
//! a lossless producer and consumer that pass every wake on, and the one-producer,
//! one-consumer ring they start from. Each model file includes this module; not all use all.
#![allow(dead_code)]

use std::sync::Arc;

use voxring_core::{Consumer, Policy, Producer, ReadError, Ring, Waiter};
use voxring_loom_tests::futex::FutexModel;
use voxring_loom_tests::ring::{Line, new_ring, write_one_then};

/// A lossless ring of `frames` slots with its producer (owner 1) and one consumer (owner 2);
/// keep the region (first) alive until every thread holding a handle is joined.
pub fn lossless_pair(frames: u32) -> (Vec<Line>, Ring, Producer, Consumer) {
    let (mem, ring) = new_ring(frames, 1, Policy::Lossless);
    let producer = ring.producer(1).unwrap();
    let consumer = ring.consumer(2).unwrap();
    (mem, ring, producer, consumer)
}

/// A [`lossless_pair`] of one slot: a producer thread writes two frames ([`produce_parking`])
/// while `consume` runs on a consumer thread, both passing their wakes through one
/// [`FutexModel`]. Returns what `consume` returned, once both threads are joined.
pub fn against_a_parking_producer<R: Send + 'static>(
    consume: impl FnOnce(&mut Consumer, &FutexModel) -> R + Send + 'static,
) -> R {
    let (_mem, _ring, producer, mut consumer) = lossless_pair(1);
    let futex = FutexModel::new();
    let futex2 = Arc::clone(&futex);
    let p = loom::thread::spawn(move || drop(produce_parking(producer, 2, &*futex)));
    let c = loom::thread::spawn(move || consume(&mut consumer, &futex2));
    p.join().unwrap();
    c.join().unwrap()
}

/// `write_one`'s frame, committed with its wake passed to `waiter`; false when full.
pub fn write_one_waking(p: &mut Producer, waiter: &impl Waiter) -> bool {
    write_one_then(p, |wake| wake.wake(waiter))
}

/// A producer thread's body: `n` frames of `write_one`'s pattern, each commit's wake passed
/// to `waiter`, parking in `wait_writable` whenever the ring is full.
pub fn produce_parking(mut p: Producer, n: usize, waiter: &impl Waiter) -> Producer {
    let mut sent = 0;
    while sent < n {
        if write_one_waking(&mut p, waiter) {
            sent += 1;
        } else {
            p.wait_writable(waiter, None).unwrap();
        }
    }
    p
}

/// `read_checked` of one frame, with the release's wake passed to `waiter` (the producer
/// may be parked for space).
pub fn read_releasing(c: &mut Consumer, waiter: &impl Waiter) -> Vec<u64> {
    match c.read_grant(1) {
        Ok(g) => {
            let f = g.frame(0).unwrap();
            let m = f.meta();
            assert_eq!(m.sample_pos, m.seq + 100, "stale metadata, frame {}", m.seq);
            assert_eq!(f.payload(), &[m.seq as u8 + 1; 4], "torn frame {}", m.seq);
            g.release_all().unwrap().wake(waiter);
            vec![m.seq]
        }
        Err(ReadError::Empty) => Vec::new(),
        Err(e) => panic!("unexpected read error: {e}"),
    }
}

/// A consumer thread's body: `n` frames through [`read_releasing`], parking in
/// `wait_readable` whenever none is ready; the sequence numbers read.
pub fn consume_parking(c: &mut Consumer, n: usize, waiter: &impl Waiter) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = read_releasing(c, waiter);
        if frame.is_empty() {
            c.wait_readable(waiter, None).unwrap();
        }
        got.extend(frame);
    }
    got
}
