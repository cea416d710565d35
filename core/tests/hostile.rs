//! Hostile memory: a peer may write anything anywhere in the region at any time. These
//! properties scribble random values over the header, the cursors, the consumer table and the
//! slot metadata between random operations, and require that every operation returns (an
//! error or a resync is fine) without panicking (debug build: no arithmetic overflow
//! either), and that every slice handed out stays inside the region.

mod common;

use common::{ReadOp, Region, WriteOp, config};
use proptest::prelude::*;
use voxring_core::{Policy, Ring, SpinWaiter};

#[derive(Clone, Debug)]
enum Op {
    /// Write `value` (as 1, 4 or 8 little-endian bytes) at byte `offset % region_size`.
    Scribble {
        offset: usize,
        width: u8,
        value: u64,
    },
    Write(WriteOp),
    Read(ReadOp),
    Join,
    Leave {
        c: usize,
    },
    Evict {
        index: u16,
        owner: u64,
    },
    EvictProducer {
        owner: u64,
    },
    Reclaim,
    Park {
        c: usize,
    },
    ParkProducer,
    Attach,
}

/// Values that hit the edges of every check: positions near the cursors, wrap-around,
/// magic markers, huge lengths.
fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0..16u64,
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(u64::MAX / 2),
        Just(u64::MAX / 2 + 1),
        Just(u64::from(u32::MAX)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..4096usize, prop::sample::select(vec![1u8, 4, 8]), value())
            .prop_map(|(offset, width, value)| Op::Scribble { offset, width, value }),
        3 => (0..6usize, 0..6usize).prop_map(|(n, k)| Op::Write(WriteOp { n, k })),
        3 => (0..2usize, 0..6usize, 0..6usize).prop_map(|(c, n, k)| Op::Read(ReadOp { c, n, k })),
        1 => Just(Op::Join),
        1 => (0..2usize).prop_map(|c| Op::Leave { c }),
        1 => (0..20u16, value()).prop_map(|(index, owner)| Op::Evict { index, owner }),
        1 => value().prop_map(|owner| Op::EvictProducer { owner }),
        1 => Just(Op::Reclaim),
        1 => (0..2usize).prop_map(|c| Op::Park { c }),
        1 => Just(Op::ParkProducer),
        1 => Just(Op::Attach),
    ]
}

fn scribble(region: &mut Region, limit: usize, offset: usize, width: u8, value: u64) {
    let off = offset % limit;
    let width = usize::from(width).min(limit - off);
    let bytes = value.to_le_bytes();
    let p = region.ptr();
    for (i, &b) in bytes.iter().take(width).enumerate() {
        // SAFETY: `off + i < limit <= region.len()`; nothing else runs concurrently (the
        // ring's handles are used only by this thread, between operations).
        unsafe { p.add(off + i).write_volatile(b) };
    }
}

fn run(policy: Policy, frames: u32, ops: &[Op]) {
    let cfg = config(frames, 3, policy);
    let size = cfg.region_size().unwrap();
    let mut region = Region::new(size);
    let len = region.len();
    let base = region.ptr() as usize;
    // SAFETY: valid, aligned, unused region that outlives every handle below.
    let ring = unsafe { Ring::create(region.ptr(), len, &cfg) }.unwrap();
    let in_region = |ptr: *const u8, n: usize| {
        let a = ptr as usize;
        assert!(
            a >= base && a + n <= base + size,
            "slice outside the region"
        );
    };
    let mut producer = ring.producer(1).ok();
    let mut consumers: Vec<Option<voxring_core::Consumer>> = vec![ring.consumer(2).ok(), None];
    let waiter = SpinWaiter::new(3);
    let mut owner = 10;
    for op in ops {
        match *op {
            Op::Scribble {
                offset,
                width,
                value,
            } => scribble(&mut region, size, offset, width, value),
            Op::Write(WriteOp { n, k }) => {
                if let Some(p) = producer.as_mut()
                    && let Ok(mut g) = p.write_grant(n)
                {
                    assert!(g.len() <= frames as usize);
                    for mut f in g.frames_mut() {
                        f.set_sample_pos(f.seq());
                        let data = f.payload_mut();
                        in_region(data.as_ptr(), data.len());
                        data.fill(0xa5);
                        let _ = f.samples_mut::<i16>().map(|s| s.fill(-1));
                    }
                    let k = k.min(g.len());
                    let _ = g.commit(k).map(|w| w.wake(&waiter));
                }
            }
            Op::Read(ReadOp { c, n, k }) => {
                if let Some(c) = consumers[c].as_mut()
                    && let Ok(g) = c.read_grant(n)
                {
                    assert!(g.len() <= frames as usize);
                    for f in g.frames() {
                        let m = f.meta();
                        let data = f.payload();
                        assert!(data.len() <= ring.payload_bytes() as usize);
                        assert_eq!(m.len as usize, data.len());
                        in_region(data.as_ptr(), data.len());
                        let _ = f.samples::<i16>();
                    }
                    let k = k.min(g.len());
                    let _ = g.release(k).map(|w| w.wake(&waiter));
                }
            }
            Op::Join => {
                owner += 1;
                if let Some(slot) = consumers.iter_mut().find(|c| c.is_none()) {
                    *slot = ring.consumer(owner).ok();
                }
            }
            Op::Leave { c } => {
                if let Some(c) = consumers[c].take() {
                    c.leave().wake(&waiter);
                }
            }
            Op::Evict { index, owner } => {
                let _ = ring.evict(index, owner).map(|w| w.wake(&waiter));
                let _ = ring.consumer_owner(index);
            }
            Op::EvictProducer { owner } => {
                let _ = ring.evict_producer(owner);
                let _ = ring.producer_owner();
            }
            Op::Reclaim => {
                if producer.is_none() {
                    owner += 1;
                    producer = ring.producer(owner).ok();
                }
            }
            Op::Park { c } => {
                if let Some(c) = consumers[c].as_mut() {
                    let _ = c.wait_readable(&waiter, Some(1));
                }
            }
            Op::ParkProducer => {
                if let Some(p) = producer.as_mut() {
                    let _ = p.wait_writable(&waiter, Some(1));
                }
            }
            Op::Attach => {
                // SAFETY: valid region (with arbitrary contents).
                if let Ok(r) = unsafe { Ring::attach(region.ptr(), len) } {
                    assert!(r.region_size() <= len);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lossless_survives_a_hostile_peer(
        frames in prop::sample::select(vec![1u32, 2, 4]),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(Policy::Lossless, frames, &ops);
    }

    #[test]
    fn lossy_survives_a_hostile_peer(
        frames in prop::sample::select(vec![1u32, 2, 4]),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(Policy::Lossy, frames, &ops);
    }

    /// Random header contents with a valid magic and version: attach either refuses with an
    /// error or accepts a layout that fits the region.
    #[test]
    fn attach_never_accepts_a_layout_larger_than_the_region(
        fields in prop::collection::vec(value(), 10),
        len_lines in 2usize..64,
    ) {
        let mut region = Region::new(len_lines * 128);
        let len = region.len();
        let bytes = region.bytes();
        bytes[..8].copy_from_slice(b"VOXRING\0");
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        for (i, v) in fields.iter().enumerate() {
            // Fields 12..80: a mix of 4-byte and 8-byte values, possibly valid ones.
            let off = 12 + i * 6;
            let w = if i % 2 == 0 { 4 } else { 8 };
            let v = if i % 3 == 0 { v % 16 } else { *v };
            bytes[off..off + w].copy_from_slice(&v.to_le_bytes()[..w]);
        }
        // SAFETY: valid region with arbitrary contents.
        if let Ok(r) = unsafe { Ring::attach(region.ptr(), len) } {
            prop_assert!(r.region_size() <= len);
        }
    }
}
