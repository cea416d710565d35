//! `StaticRing`: push/pop, chunks split at the wrap, a threaded stress run, and random
//! operation sequences against a `VecDeque` model.

use proptest::prelude::*;
use std::collections::VecDeque;
use voxring_core::{ChunkError, PopError, PushError, SplitError, StaticRing, TooMany};

#[test]
fn push_pop_in_order_and_a_full_push_hands_the_value_back() {
    let ring = StaticRing::<u64, 4>::new(0);
    assert_eq!(ring.capacity(), 4);
    let (mut tx, mut rx) = ring.split().unwrap();
    assert_eq!(ring.split().map(|_| ()), Err(SplitError));
    assert_eq!(rx.pop(), Err(PopError::Empty));
    for v in 1..=4 {
        tx.push(v).unwrap();
    }
    assert_eq!(tx.push(5), Err(PushError::Full(5)));
    assert_eq!(tx.slots(), 0);
    assert_eq!(rx.items(), 4);
    assert_eq!(rx.pop(), Ok(1));
    tx.push(5).unwrap();
    assert_eq!(
        (2..=5).map(|_| rx.pop().unwrap()).collect::<Vec<_>>(),
        vec![2, 3, 4, 5]
    );
}

#[test]
fn chunks_split_at_the_wrap() {
    let ring = StaticRing::<u8, 4>::new(0);
    let (mut tx, mut rx) = ring.split().unwrap();
    tx.push(1).unwrap();
    tx.push(2).unwrap();
    tx.push(3).unwrap();
    assert_eq!(rx.pop(), Ok(1));
    assert_eq!(rx.pop(), Ok(2));
    // Tail at 3: a 3-slot chunk is slot 3, then slots 0 and 1.
    let mut w = tx.write_chunk(8).unwrap();
    assert_eq!(w.len(), 3);
    {
        let (a, b) = w.as_mut_slices();
        assert_eq!((a.len(), b.len()), (1, 2));
    }
    assert_eq!(w.copy_from(&[4, 5, 6, 7]), 3);
    assert!(matches!(
        w.commit(4),
        Err(TooMany {
            asked: 4,
            granted: 3
        })
    ));
    let w = tx.write_chunk(3).unwrap();
    w.commit(3).unwrap();
    let r = rx.read_chunk(8).unwrap();
    assert_eq!(r.as_slices(), (&[3, 4][..], &[5, 6][..]));
    r.release(1).unwrap();
    assert_eq!(tx.write_chunk(2).unwrap().len(), 1);
    let r = rx.read_chunk(8).unwrap();
    assert_eq!(r.len(), 3);
    let n = r.len();
    r.release(n).unwrap();
    assert!(matches!(rx.read_chunk(1), Err(ChunkError::Unavailable)));
    for _ in 0..4 {
        tx.push(9).unwrap();
    }
    assert!(matches!(tx.write_chunk(1), Err(ChunkError::Unavailable)));
    assert!(tx.write_chunk(0).unwrap().is_empty());
}

static STRESS: StaticRing<u64, 64> = StaticRing::new(0);

#[test]
fn threads_move_every_item_once_in_order() {
    const N: u64 = 50_000;
    let (mut tx, mut rx) = STRESS.split().unwrap();
    let reader = std::thread::spawn(move || {
        let mut next = 0;
        while next < N {
            if next % 3 == 0 {
                if let Ok(r) = rx.read_chunk(16) {
                    let (a, b) = r.as_slices();
                    for &v in a.iter().chain(b) {
                        assert_eq!(v, next);
                        next += 1;
                    }
                    let n = r.len();
                    r.release(n).unwrap();
                    continue;
                }
            } else if let Ok(v) = rx.pop() {
                assert_eq!(v, next);
                next += 1;
                continue;
            }
            std::hint::spin_loop();
        }
    });
    let mut next = 0;
    while next < N {
        if next % 2 == 0 {
            if let Ok(mut w) = tx.write_chunk(((N - next) as usize).min(7)) {
                let items: Vec<u64> = (next..next + w.len() as u64).collect();
                let n = w.copy_from(&items);
                w.commit(n).unwrap();
                next += n as u64;
                continue;
            }
        } else {
            match tx.push(next) {
                Ok(()) => {
                    next += 1;
                    continue;
                }
                Err(PushError::Full(v)) => assert_eq!(v, next),
            }
        }
        std::hint::spin_loop();
    }
    reader.join().unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Push(u32),
    Pop,
    Write { n: usize, k: usize },
    Read { n: usize, k: usize },
}

proptest! {
    #[test]
    fn matches_a_vecdeque(ops in prop::collection::vec(prop_oneof![
        any::<u32>().prop_map(Op::Push),
        Just(Op::Pop),
        (0..10usize, 0..10usize).prop_map(|(n, k)| Op::Write { n, k }),
        (0..10usize, 0..10usize).prop_map(|(n, k)| Op::Read { n, k }),
    ], 1..200)) {
        let ring = StaticRing::<u32, 8>::new(0);
        let (mut tx, mut rx) = ring.split().unwrap();
        let mut model = VecDeque::new();
        let mut counter = 0u32;
        for op in ops {
            match op {
                Op::Push(v) => match tx.push(v) {
                    Ok(()) => model.push_back(v),
                    Err(PushError::Full(back)) => {
                        prop_assert_eq!(back, v);
                        prop_assert_eq!(model.len(), 8);
                    }
                },
                Op::Pop => prop_assert_eq!(rx.pop().ok(), model.pop_front()),
                Op::Write { n, k } => {
                    let free = 8 - model.len();
                    match tx.write_chunk(n) {
                        Ok(mut w) => {
                            prop_assert_eq!(w.len(), n.min(free));
                            let items: Vec<u32> =
                                (0..w.len()).map(|_| { counter += 1; counter }).collect();
                            prop_assert_eq!(w.copy_from(&items), items.len());
                            let k = k.min(w.len());
                            w.commit(k).unwrap();
                            model.extend(&items[..k]);
                        }
                        Err(ChunkError::Unavailable) => prop_assert!(free == 0 && n > 0),
                    }
                }
                Op::Read { n, k } => match rx.read_chunk(n) {
                    Ok(r) => {
                        prop_assert_eq!(r.len(), n.min(model.len()));
                        let (a, b) = r.as_slices();
                        let got: Vec<u32> = a.iter().chain(b).copied().collect();
                        let want: Vec<u32> = model.iter().take(r.len()).copied().collect();
                        prop_assert_eq!(got, want);
                        let k = k.min(r.len());
                        r.release(k).unwrap();
                        model.drain(..k);
                    }
                    Err(ChunkError::Unavailable) => prop_assert!(model.is_empty() && n > 0),
                },
            }
        }
    }
}
