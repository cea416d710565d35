//! Model-based property tests: random operation sequences on a frame ring (one producer, up
//! to three consumers joining, leaving and being evicted), compared step by step with a
//! simple model built on `VecDeque`s, in both policies.
//!
//! The model: each live consumer has a queue of the sequence numbers it has yet to read.
//! A commit appends to every queue. Lossless: a grant is limited by the longest queue.
//! Lossy: a grant of `g` frames at write position `W` destroys every frame below
//! `W + g - capacity` (their slots are being rewritten), which drops them from the front of
//! the queues; a consumer learns the count at its next read (`Lost`), or at the release of a
//! grant that held them (`Overwritten`).

mod common;

use common::{ReadOp, WriteOp, check_frame, config, fill_frame, make};
use proptest::prelude::*;
use std::collections::VecDeque;
use voxring_core::{
    Consumer, GrantError, JoinError, Policy, Producer, ReadError, ReleaseError, Ring,
};

#[derive(Clone, Debug)]
enum Op {
    Write(WriteOp),
    Read(ReadOp),
    /// Take a read grant, let the producer write meanwhile, then release the whole grant.
    ReadDuringWrite {
        c: usize,
        n: usize,
        wn: usize,
        wk: usize,
    },
    Join,
    Leave {
        c: usize,
    },
    Evict {
        c: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..6usize, 0..6usize).prop_map(|(n, k)| Op::Write(WriteOp { n, k })),
        4 => (0..3usize, 1..6usize, 0..6usize).prop_map(|(c, n, k)| Op::Read(ReadOp { c, n, k })),
        1 => (0..3usize, 1..6usize, 0..6usize, 0..6usize)
            .prop_map(|(c, n, wn, wk)| Op::ReadDuringWrite { c, n, wn, wk }),
        1 => Just(Op::Join),
        1 => (0..3usize).prop_map(|c| Op::Leave { c }),
        1 => (0..3usize).prop_map(|c| Op::Evict { c }),
    ]
}

#[derive(Debug, Default)]
struct ModelConsumer {
    queue: VecDeque<u64>,
    pending_lost: u64,
    lost_total: u64,
}

struct Harness {
    ring: Ring,
    policy: Policy,
    cap: u64,
    max_consumers: usize,
    producer: Producer,
    w: u64,
    /// The real consumers and their models, by consumer slot index.
    consumers: Vec<Option<Consumer>>,
    models: Vec<Option<ModelConsumer>>,
    next_owner: u64,
}

impl Harness {
    fn new(policy: Policy, frames: u32, max_consumers: u16) -> (common::Region, Harness) {
        let (region, ring) = make(&config(frames, max_consumers, policy));
        let producer = ring.producer(1).unwrap();
        let n = usize::from(max_consumers);
        let h = Harness {
            ring,
            policy,
            cap: u64::from(frames),
            max_consumers: n,
            producer,
            w: 0,
            consumers: (0..n).map(|_| None).collect(),
            models: (0..n).map(|_| None).collect(),
            next_owner: 100,
        };
        (region, h)
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write(WriteOp { n, k }) => self.write(n, k),
            Op::Read(ReadOp { c, n, k }) => self.read(c % self.max_consumers, n, k, None),
            Op::ReadDuringWrite { c, n, wn, wk } => {
                self.read(c % self.max_consumers, n, usize::MAX, Some((wn, wk)))
            }
            Op::Join => self.join(),
            Op::Leave { c } => {
                let c = c % self.max_consumers;
                if let Some(consumer) = self.consumers[c].take() {
                    let _ = consumer.leave();
                    self.models[c] = None;
                }
            }
            Op::Evict { c } => {
                let c = c % self.max_consumers;
                if let Some(mut consumer) = self.consumers[c].take() {
                    let owner = self.ring.consumer_owner(c as u16).unwrap();
                    assert!(self.ring.evict(c as u16, owner).is_ok());
                    assert_eq!(
                        consumer.read_grant(1).map(|g| g.len()),
                        Err(ReadError::Evicted)
                    );
                    self.models[c] = None;
                }
            }
        }
        assert_eq!(self.producer.write_pos(), self.w);
    }

    fn join(&mut self) {
        self.next_owner += 1;
        let free = self.consumers.iter().position(Option::is_none);
        match (self.ring.consumer(self.next_owner), free) {
            (Ok(c), Some(i)) => {
                assert_eq!(usize::from(c.index()), i);
                assert_eq!(
                    c.read_pos(),
                    self.w,
                    "a late joiner starts at the write position"
                );
                self.consumers[i] = Some(c);
                self.models[i] = Some(ModelConsumer::default());
            }
            (Err(JoinError::Full { .. }), None) => {}
            (r, f) => panic!(
                "join: {:?} but the model's free slot is {f:?}",
                r.map(|c| c.index())
            ),
        }
    }

    /// Grants up to `n`, fills with the pattern, commits `k`, checking against the model.
    fn write(&mut self, n: usize, k: usize) {
        let want = (n as u64).min(self.cap);
        let expected = match self.policy {
            Policy::Lossy => want,
            Policy::Lossless => {
                let longest = self
                    .models
                    .iter()
                    .flatten()
                    .map(|m| m.queue.len() as u64)
                    .max()
                    .unwrap_or(0);
                want.min(self.cap - longest)
            }
        };
        let pb = self.ring.payload_bytes();
        let mut g = match self.producer.write_grant(n) {
            Ok(g) => g,
            Err(GrantError::Full) => {
                assert!(
                    expected == 0 && n > 0,
                    "Full, but the model has {expected} free"
                );
                return;
            }
            Err(e) => panic!("unexpected grant error {e}"),
        };
        assert_eq!(g.len() as u64, expected);
        assert_eq!(g.first_seq(), self.w);
        for mut f in g.frames_mut() {
            fill_frame(&mut f, pb);
        }
        let k = k.min(g.len());
        let granted = g.len() as u64;
        // The model is single-threaded: nobody is parked.
        let _ = g.commit(k).unwrap();
        if self.policy == Policy::Lossy {
            let destroyed_below = (self.w + granted).saturating_sub(self.cap);
            for m in self.models.iter_mut().flatten() {
                while m.queue.front().is_some_and(|&s| s < destroyed_below) {
                    m.queue.pop_front();
                    m.pending_lost += 1;
                }
            }
        }
        for m in self.models.iter_mut().flatten() {
            m.queue.extend(self.w..self.w + k as u64);
        }
        self.w += k as u64;
    }

    /// Reads up to `n` from consumer `c` and releases `k` (all when `during` is set, after
    /// the producer wrote `during = (wn, wk)` meanwhile).
    fn read(&mut self, c: usize, n: usize, k: usize, during: Option<(usize, usize)>) {
        let Some(mut consumer) = self.consumers[c].take() else {
            return;
        };
        let pb = self.ring.payload_bytes();
        let result = consumer.read_grant(n);
        let m = self.models[c].as_mut().unwrap();
        if m.pending_lost > 0 {
            let frames = m.pending_lost;
            assert_eq!(result.map(|g| g.len()), Err(ReadError::Lost { frames }));
            m.lost_total += frames;
            m.pending_lost = 0;
        } else if m.queue.is_empty() {
            assert_eq!(result.map(|g| g.len()), Err(ReadError::Empty));
        } else {
            let g = result.unwrap();
            let len = n.min(m.queue.len()).min(self.cap as usize);
            assert_eq!(g.len(), len);
            let granted: Vec<u64> = m.queue.iter().take(len).copied().collect();
            for (f, &seq) in g.frames().zip(&granted) {
                let meta = f.meta();
                assert_eq!(meta.seq, seq);
                check_frame(&meta, f.payload(), pb);
            }
            let k = k.min(len);
            if let Some((wn, wk)) = during {
                // The grant borrows only `consumer`; the producer writes meanwhile.
                self.write(wn, wk);
            }
            let m = self.models[c].as_mut().unwrap();
            // Frames of the grant the write destroyed were dropped from the model queue as
            // pending losses; the release reports them instead, as Overwritten.
            let destroyed = granted
                .iter()
                .take(k)
                .filter(|&&s| m.queue.front().is_none_or(|&f| s < f))
                .count() as u64;
            let result = g.release(k);
            if destroyed > 0 {
                assert_eq!(
                    result.map(|_| ()),
                    Err(ReleaseError::Overwritten { frames: destroyed })
                );
                m.pending_lost -= destroyed;
                m.lost_total += destroyed;
            } else {
                assert!(result.is_ok());
            }
            for _ in destroyed..k as u64 {
                assert!(m.queue.pop_front().is_some());
            }
        }
        let m = self.models[c].as_ref().unwrap();
        assert_eq!(consumer.lost_frames(), m.lost_total);
        self.consumers[c] = Some(consumer);
    }
}

fn run(policy: Policy, frames: u32, ops: &[Op]) {
    let (_region, mut h) = Harness::new(policy, frames, 3);
    for op in ops {
        h.apply(op);
    }
}

proptest! {
    #[test]
    fn lossless_matches_the_model(
        frames in prop::sample::select(vec![1u32, 2, 4, 8]),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(Policy::Lossless, frames, &ops);
    }

    #[test]
    fn lossy_matches_the_model(
        frames in prop::sample::select(vec![1u32, 2, 4, 8]),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(Policy::Lossy, frames, &ops);
    }
}
