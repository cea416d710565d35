//! Behaviour of the frame ring through its public API: creation and attach validation,
//! claims and joins, lossless and lossy grants, metadata, eviction, park/wake.

mod common;

use common::{Region, check_frame, config, fill_frame, make, make_pair, write_one_parking};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use voxring_core::{
    ABI_VERSION, AtomicU32, AttachError, ClaimError, CommitError, Consumer, CreateError,
    EvictError, FrameFlags, GrantError, JoinError, LayoutError, Policy, Producer, ReadError,
    ReleaseError, Ring, RingConfig, SampleFormat, SpinWaiter, WaitOutcome, Waiter,
};

/// Writes up to `n` frames with the test pattern and commits `k` of them; returns how many
/// were granted.
fn write(p: &mut Producer, n: usize, k: usize) -> Result<usize, GrantError> {
    let pb = p.ring().payload_bytes();
    let mut g = p.write_grant(n)?;
    let granted = g.len();
    for mut f in g.frames_mut() {
        fill_frame(&mut f, pb);
    }
    // No consumer of these helpers is parked: the Wake is empty.
    let _ = g.commit(k.min(granted)).unwrap();
    Ok(granted)
}

/// Joins `count` consumers (owners 10, 11, ...) and runs `body` on each in a thread of its own.
fn reader_threads<T: Send + 'static>(
    ring: &Ring,
    count: u64,
    body: impl Fn(Consumer) -> T + Copy + Send + 'static,
) -> Vec<std::thread::JoinHandle<T>> {
    (0..count)
        .map(|i| ring.consumer(10 + i).unwrap())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|c| std::thread::spawn(move || body(c)))
        .collect()
}

/// Reads up to `n` frames, checks each against the pattern, releases them; returns the seqs.
fn read(c: &mut voxring_core::Consumer, n: usize) -> Result<Vec<u64>, ReadError> {
    let pb = c.ring().payload_bytes();
    let g = c.read_grant(n)?;
    let mut seqs = Vec::new();
    for f in g.frames() {
        let m = f.meta();
        check_frame(&m, f.payload(), pb);
        seqs.push(m.seq);
    }
    // No producer of these helpers is parked: the Wake is empty.
    let _ = g.release_all().unwrap();
    Ok(seqs)
}

#[test]
fn create_then_attach_sees_the_same_config() {
    let cfg = config(8, 4, Policy::Lossy);
    let (mut region, ring) = make(&cfg);
    let len = region.len();
    // SAFETY: the region holds a ring created above and outlives `attached`.
    let attached = unsafe { Ring::attach(region.ptr(), len) }.unwrap();
    assert_eq!(attached.config(), cfg);
    assert_eq!(attached.region_size(), ring.region_size());
    assert_eq!(&region.bytes()[..8], b"VOXRING\0");
}

#[test]
fn region_size_matches_the_documented_formula() {
    let cfg = RingConfig {
        frames: 16,
        samples_per_frame: 480,
        channels: 1,
        format: SampleFormat::S32,
        sample_rate: 16_000,
        max_consumers: 16,
        policy: Policy::Lossy,
    };
    // 384 + 128 * 16 + 16 * (64 + round_up(1920, 64))
    assert_eq!(cfg.region_size().unwrap(), 384 + 2048 + 16 * (64 + 1920));
}

#[test]
fn create_rejects_bad_configs_and_regions() {
    let good = config(8, 2, Policy::Lossless);
    let mut region = Region::new(good.region_size().unwrap());
    let len = region.len();
    let p = region.ptr();
    let try_cfg = |cfg: RingConfig| {
        // SAFETY: the region is valid and unused.
        unsafe { Ring::create(p, len, &cfg) }.map(|_| ())
    };
    assert_eq!(
        try_cfg(RingConfig { frames: 6, ..good }),
        Err(CreateError::Layout(LayoutError::BadFrames { frames: 6 }))
    );
    assert_eq!(
        try_cfg(RingConfig { frames: 0, ..good }),
        Err(CreateError::Layout(LayoutError::BadFrames { frames: 0 }))
    );
    assert_eq!(
        try_cfg(RingConfig {
            channels: 0,
            ..good
        }),
        Err(CreateError::Layout(LayoutError::ZeroChannels))
    );
    assert_eq!(
        try_cfg(RingConfig {
            samples_per_frame: 0,
            ..good
        }),
        Err(CreateError::Layout(LayoutError::ZeroSamples))
    );
    assert_eq!(
        try_cfg(RingConfig {
            sample_rate: 0,
            ..good
        }),
        Err(CreateError::Layout(LayoutError::ZeroSampleRate))
    );
    assert_eq!(
        try_cfg(RingConfig {
            max_consumers: 65,
            ..good
        }),
        Err(CreateError::Layout(LayoutError::BadConsumerCount {
            max_consumers: 65
        }))
    );
    assert!(matches!(
        try_cfg(RingConfig {
            samples_per_frame: u32::MAX,
            ..good
        }),
        Err(CreateError::Layout(LayoutError::PayloadTooLarge { .. }))
    ));
    // SAFETY: as above; one byte short / misaligned / null.
    unsafe {
        assert!(matches!(
            Ring::create(p, good.region_size().unwrap() - 1, &good),
            Err(CreateError::TooSmall { .. })
        ));
        assert!(matches!(
            Ring::create(p.add(64), len - 64, &good),
            Err(CreateError::Misaligned { .. })
        ));
        assert_eq!(
            Ring::create(std::ptr::null_mut(), len, &good).map(|_| ()),
            Err(CreateError::NullRegion)
        );
    }
    let e = CreateError::TooSmall { needed: 10, got: 5 }.to_string();
    assert!(e.contains("needs 10") && e.contains("region_size"), "{e}");
}

#[test]
fn attach_validates_every_layout_field() {
    let cfg = config(8, 2, Policy::Lossless);
    let (mut region, _ring) = make(&cfg);
    let len = region.len();
    let pristine = region.bytes().to_vec();
    let attach = |r: &mut Region, l: usize| {
        let p = r.ptr();
        // SAFETY: valid region; its bytes are arbitrary, which attach must tolerate.
        unsafe { Ring::attach(p, l) }.map(|_| ())
    };
    let mut with = |off: usize, val: &[u8]| {
        region.bytes().copy_from_slice(&pristine);
        region.bytes()[off..off + val.len()].copy_from_slice(val);
        attach(&mut region, len)
    };
    assert_eq!(with(0, &[0; 8]), Err(AttachError::BadMagic { found: 0 }));
    assert_eq!(
        with(8, &(ABI_VERSION + 1).to_le_bytes()),
        Err(AttachError::AbiMismatch {
            found: ABI_VERSION + 1
        })
    );
    assert_eq!(
        with(12, &9u32.to_le_bytes()),
        Err(AttachError::BadField {
            field: "policy",
            found: 9
        })
    );
    assert_eq!(
        with(28, &0u32.to_le_bytes()),
        Err(AttachError::BadField {
            field: "format",
            found: 0
        })
    );
    assert_eq!(
        with(24, &70_000u32.to_le_bytes()),
        Err(AttachError::BadField {
            field: "channels",
            found: 70_000
        })
    );
    assert!(matches!(
        with(16, &12u32.to_le_bytes()),
        Err(AttachError::Layout(_))
    ));
    assert!(matches!(
        with(36, &0u32.to_le_bytes()),
        Err(AttachError::Layout(_))
    ));
    // Doubling the channels changes every derived field; the first checked is payload_bytes.
    assert!(matches!(
        with(24, &4u32.to_le_bytes()),
        Err(AttachError::Inconsistent {
            field: "payload_bytes",
            ..
        })
    ));
    for (off, field) in [
        (44, "slot_size"),
        (48, "consumers_offset"),
        (56, "slots_offset"),
        (64, "region_size"),
        (72, "cache_line"),
        (76, "payload_offset"),
    ] {
        assert!(
            matches!(with(off, &[0xff]), Err(AttachError::Inconsistent { field: f, .. }) if f == field),
            "{field}"
        );
    }
    region.bytes().copy_from_slice(&pristine);
    assert!(matches!(
        attach(&mut region, len - 128),
        Err(AttachError::TooSmall { .. })
    ));
    assert!(matches!(
        attach(&mut region, 100),
        Err(AttachError::TooSmall { .. })
    ));
    assert_eq!(attach(&mut region, len), Ok(()));
}

#[test]
fn one_producer_at_a_time_and_eviction_frees_it() {
    let (_region, ring) = make(&config(4, 1, Policy::Lossless));
    assert_eq!(ring.producer(0).map(|_| ()), Err(ClaimError::ZeroOwner));
    let p = ring.producer(7).unwrap();
    assert_eq!(
        ring.producer(8).map(|_| ()),
        Err(ClaimError::Taken { owner: 7 })
    );
    assert_eq!(ring.producer_owner(), Some(7));
    drop(p);
    assert_eq!(ring.producer_owner(), None);
    let mut p = ring.producer(8).unwrap();
    assert_eq!(
        ring.evict_producer(7),
        Err(EvictError::OwnerMismatch { found: 8 })
    );
    ring.evict_producer(8).unwrap();
    assert_eq!(p.write_grant(1).map(|_| ()), Err(GrantError::Evicted));
    let _q = ring.producer(9).unwrap();
    assert_eq!(
        ring.evict_producer(8),
        Err(EvictError::OwnerMismatch { found: 9 })
    );
}

#[test]
fn consumers_join_up_to_the_limit_and_leave() {
    let (_region, ring) = make(&config(4, 16, Policy::Lossy));
    assert_eq!(ring.consumer(0).map(|_| ()), Err(JoinError::ZeroOwner));
    let mut cs: Vec<_> = (1..=16).map(|o| ring.consumer(o).unwrap()).collect();
    assert_eq!(
        ring.consumer(99).map(|_| ()),
        Err(JoinError::Full { max_consumers: 16 })
    );
    assert_eq!(ring.consumer_owner(3), Some(4));
    let c = cs.remove(3);
    assert_eq!(c.index(), 3);
    let _ = c.leave();
    assert_eq!(ring.consumer_owner(3), None);
    assert_eq!(ring.consumer(100).unwrap().index(), 3);
}

#[test]
fn spsc_lossless_fills_wraps_and_never_overwrites() {
    let (_region, _, mut p, mut c) = make_pair(&config(4, 1, Policy::Lossless));
    assert_eq!(read(&mut c, 4), Err(ReadError::Empty));
    assert_eq!(write(&mut p, 3, 3), Ok(3));
    assert_eq!(write(&mut p, 5, 5), Ok(1), "only one slot left");
    assert_eq!(write(&mut p, 1, 1), Err(GrantError::Full));
    assert_eq!(read(&mut c, 2).unwrap(), vec![0, 1]);
    assert_eq!(
        write(&mut p, 4, 4),
        Ok(2),
        "two slots freed, the grant wraps"
    );
    assert_eq!(read(&mut c, 10).unwrap(), vec![2, 3, 4, 5]);
    assert_eq!(read(&mut c, 1), Err(ReadError::Empty));
    for round in 0..20u64 {
        assert_eq!(write(&mut p, 3, 2), Ok(3));
        assert_eq!(read(&mut c, 4).unwrap(), vec![6 + 2 * round, 7 + 2 * round]);
    }
}

#[test]
fn partial_commit_release_and_dropped_grants() {
    let (_region, _, mut p, mut c) = make_pair(&config(8, 1, Policy::Lossless));
    {
        let g = p.write_grant(4).unwrap();
        assert_eq!(g.len(), 4);
        assert!(matches!(
            g.commit(5),
            Err(CommitError::TooMany {
                commit: 5,
                granted: 4
            })
        ));
    }
    assert_eq!(p.write_pos(), 0, "a failed commit commits nothing");
    drop(p.write_grant(2).unwrap());
    assert_eq!(p.write_pos(), 0, "a dropped grant commits nothing");
    write(&mut p, 4, 3).unwrap();
    assert_eq!(p.write_pos(), 3);
    {
        let g = c.read_grant(8).unwrap();
        assert_eq!((g.len(), g.first_seq()), (3, 0));
        assert!(matches!(g.release(4), Err(ReleaseError::TooMany { .. })));
    }
    drop(c.read_grant(8).unwrap());
    let g = c.read_grant(8).unwrap();
    assert_eq!(g.len(), 3, "dropped and failed releases release nothing");
    // Nobody is parked in this test.
    let _ = g.release(1).unwrap();
    assert_eq!(read(&mut c, 8).unwrap(), vec![1, 2]);
}

#[test]
fn metadata_lengths_and_sample_types() {
    let cfg = RingConfig {
        format: SampleFormat::F32,
        ..config(4, 1, Policy::Lossless)
    };
    let (_region, ring) = make(&cfg);
    assert_eq!(ring.payload_bytes(), 8 * 2 * 4);
    let mut p = ring.producer(1).unwrap();
    let mut c = ring.consumer(2).unwrap();
    let mut g = p.write_grant(1).unwrap();
    {
        let mut f = g.frame_mut(0).unwrap();
        assert!(f.samples_mut::<i16>().is_err());
        assert_eq!(f.samples_mut::<f32>().unwrap().len(), 16);
        f.samples_mut::<f32>().unwrap().copy_from_slice(&[0.5; 16]);
        assert!(f.set_len(65).is_err());
        f.set_len(16).unwrap();
        f.set_flags(FrameFlags::XRUN | FrameFlags::END_OF_STREAM);
        f.set_sample_pos(480);
        f.set_timestamp_ns(123);
    }
    assert!(g.frame_mut(1).is_none());
    // Nobody is parked in this test.
    let _ = g.commit_all();
    let g = c.read_grant(1).unwrap();
    let f = g.frame(0).unwrap();
    let m = f.meta();
    assert_eq!(
        (m.seq, m.sample_pos, m.timestamp_ns, m.len),
        (0, 480, 123, 16)
    );
    assert!(
        m.flags
            .contains(FrameFlags::XRUN | FrameFlags::END_OF_STREAM)
    );
    assert!(!m.flags.contains(FrameFlags::DISCONTINUITY));
    assert_eq!(f.samples::<f32>().unwrap(), &[0.5; 4]);
    assert_eq!(f.payload().len(), 16);
    assert!(f.samples::<i32>().is_err());
}

#[test]
fn lossless_broadcast_waits_for_the_slowest_until_evicted() {
    let (_region, ring) = make(&config(4, 3, Policy::Lossless));
    let mut p = ring.producer(1).unwrap();
    let mut fast = ring.consumer(10).unwrap();
    let mut slow = ring.consumer(11).unwrap();
    write(&mut p, 4, 4).unwrap();
    assert_eq!(read(&mut fast, 4).unwrap(), vec![0, 1, 2, 3]);
    assert_eq!(
        write(&mut p, 1, 1),
        Err(GrantError::Full),
        "slow has read nothing"
    );
    assert_eq!(read(&mut slow, 1).unwrap(), vec![0]);
    assert_eq!(write(&mut p, 4, 4), Ok(1));
    // A late joiner starts at the write position.
    let mut late = ring.consumer(12).unwrap();
    assert_eq!(read(&mut late, 4), Err(ReadError::Empty));
    // Evict the slow one: the producer stops waiting for it.
    assert!(matches!(
        ring.evict(slow.index(), 99),
        Err(EvictError::OwnerMismatch { found: 11 })
    ));
    assert!(matches!(
        ring.evict(7, 11),
        Err(EvictError::OutOfRange { .. })
    ));
    let wake = ring.evict(slow.index(), 11).unwrap();
    assert!(!wake.needed(), "the producer is not parked");
    assert!(matches!(
        ring.evict(slow.index(), 11),
        Err(EvictError::NotMember)
    ));
    assert_eq!(read(&mut slow, 1), Err(ReadError::Evicted));
    assert_eq!(read(&mut fast, 4).unwrap(), vec![4]);
    assert_eq!(write(&mut p, 4, 4), Ok(4));
    assert_eq!(read(&mut late, 8).unwrap(), vec![5, 6, 7, 8]);
}

#[test]
fn eviction_while_reading_is_reported_at_release() {
    let (_region, ring, mut p, mut c) = make_pair(&config(4, 2, Policy::Lossless));
    write(&mut p, 2, 2).unwrap();
    let g = c.read_grant(2).unwrap();
    // The grant borrows `c`; evict through the ring handle as the platform would.
    // Nobody is parked in this test.
    let _ = ring.evict(0, 2).unwrap();
    assert!(matches!(g.release_all(), Err(ReleaseError::Evicted)));
}

#[test]
fn lossy_lapped_consumer_learns_exactly_how_many_frames_it_lost() {
    let (_region, ring, mut p, mut c) = make_pair(&config(4, 2, Policy::Lossy));
    let mut keen = ring.consumer(3).unwrap();
    write(&mut p, 4, 4).unwrap();
    assert_eq!(read(&mut keen, 4).unwrap(), vec![0, 1, 2, 3]);
    write(&mut p, 4, 4).unwrap();
    write(&mut p, 3, 3).unwrap(); // 11 committed, 7..10 in the ring
    assert_eq!(read(&mut c, 2), Err(ReadError::Lost { frames: 7 }));
    assert_eq!(c.lost_frames(), 7);
    assert_eq!(read(&mut c, 8).unwrap(), vec![7, 8, 9, 10]);
    // A grant that is not fully committed destroys the old frames of every granted slot.
    write(&mut p, 4, 1).unwrap(); // 11 committed; slots of 8, 9, 10 are being rewritten
    assert_eq!(read(&mut keen, 1), Err(ReadError::Lost { frames: 7 }));
    assert_eq!(read(&mut keen, 8).unwrap(), vec![11]);
    assert_eq!(read(&mut c, 8).unwrap(), vec![11]);
}

#[test]
fn lossy_frames_overwritten_while_read_are_reported_at_release() {
    let (_region, _, mut p, mut c) = make_pair(&config(4, 1, Policy::Lossy));
    write(&mut p, 4, 4).unwrap();
    let g = c.read_grant(4).unwrap();
    assert_eq!(g.len(), 4);
    // The producer never waits: it overwrites two of the frames being read.
    write(&mut p, 2, 2).unwrap();
    assert!(matches!(
        g.release_all(),
        Err(ReleaseError::Overwritten { frames: 2 })
    ));
    assert_eq!(c.lost_frames(), 2);
    assert_eq!(read(&mut c, 4).unwrap(), vec![4, 5]);
}

/// A waiter that counts calls and spins (with thread yields) until the word changes.
#[derive(Default)]
struct CountingWaiter {
    waits: AtomicUsize,
    wakes: AtomicUsize,
}

impl Waiter for CountingWaiter {
    fn wait(&self, word: &AtomicU32, expected: u32, _timeout_ns: Option<u64>) -> WaitOutcome {
        self.waits.fetch_add(1, Ordering::SeqCst);
        for _ in 0..10_000_000 {
            if word.load(portable_atomic::Ordering::Acquire) != expected {
                return WaitOutcome::Woken;
            }
            std::thread::yield_now();
        }
        WaitOutcome::TimedOut
    }
    fn wake(&self, _word: &AtomicU32) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn wake_is_requested_only_when_someone_is_parked() {
    let (_region, _, mut p, mut c) = make_pair(&config(4, 1, Policy::Lossless));
    let w = CountingWaiter::default();
    let g = p.write_grant(1).unwrap();
    let wake = g.commit_all();
    assert!(!wake.needed());
    wake.wake(&w);
    assert_eq!(w.wakes.load(Ordering::SeqCst), 0);
    assert_eq!(c.wait_readable(&w, None), Ok(WaitOutcome::Ready));
    assert_eq!(w.waits.load(Ordering::SeqCst), 0, "data was there: no wait");
    // Nobody is parked in this test.
    let _ = c.read_grant(1).unwrap().release_all().unwrap();
    assert_eq!(
        c.wait_readable(&SpinWaiter::new(10), None),
        Ok(WaitOutcome::TimedOut)
    );
    // Producer side: full ring, no wait needed while the cache says there is space.
    assert_eq!(p.wait_writable(&w, None), Ok(WaitOutcome::Ready));
}

#[test]
fn parked_consumer_and_parked_producer_are_woken_across_threads() {
    {
        let policy = Policy::Lossless;
        let (_region, ring) = make(&config(2, 1, policy));
        let waiter = Arc::new(CountingWaiter::default());
        let mut c = ring.consumer(2).unwrap();
        let w2 = waiter.clone();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 200 {
                match read(&mut c, 2) {
                    Ok(s) => got.extend(s),
                    Err(ReadError::Empty) => {
                        c.wait_readable(&*w2, None).unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            got
        });
        let mut p = ring.producer(1).unwrap();
        // Commit nothing until the reader is inside its first wait, so at least one park
        // really happens whatever the scheduler does (a give-up bound, not a timing).
        let mut spins = 0u64;
        while waiter.waits.load(Ordering::SeqCst) == 0 {
            spins += 1;
            assert!(
                spins < 100_000_000 && !reader.is_finished(),
                "the reader never parked on the empty ring"
            );
            std::thread::yield_now();
        }
        for _ in 0..200 {
            write_one_parking(&mut p, &*waiter);
        }
        let got = reader.join().unwrap();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        assert!(
            waiter.waits.load(Ordering::SeqCst) > 0,
            "someone parked at least once"
        );
    }
}

#[test]
fn lossless_threads_deliver_every_frame_to_every_consumer_in_order() {
    const N: u64 = 5_000;
    let (_region, ring) = make(&config(8, 3, Policy::Lossless));
    let readers = reader_threads(&ring, 3, |mut c| {
        let mut next = 0u64;
        while next < N {
            match read(&mut c, 3) {
                Ok(seqs) => {
                    for s in seqs {
                        assert_eq!(s, next);
                        next += 1;
                    }
                }
                Err(ReadError::Empty) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    });
    let mut p = ring.producer(1).unwrap();
    let mut sent = 0;
    while sent < N as usize {
        match write(&mut p, 3.min(N as usize - sent), 3) {
            Ok(n) => sent += n,
            Err(GrantError::Full) => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    for r in readers {
        r.join().unwrap();
    }
}

#[test]
fn lossy_threads_account_for_every_frame() {
    const N: u64 = 20_000;
    let (_region, ring) = make(&config(4, 2, Policy::Lossy));
    let readers = reader_threads(&ring, 2, |mut c| {
        let pb = c.ring().payload_bytes();
        let (mut delivered, mut lost, mut next) = (0u64, 0u64, 0u64);
        loop {
            match c.read_grant(2) {
                Ok(g) => {
                    assert_eq!(g.first_seq(), next);
                    // Copy out, then validate at release (seqlock style).
                    let frames: Vec<_> = g
                        .frames()
                        .map(|f| (f.meta(), f.payload().to_vec()))
                        .collect();
                    let bad = match g.release_all() {
                        Ok(_) => 0,
                        Err(ReleaseError::Overwritten { frames }) => frames as usize,
                        Err(e) => panic!("{e}"),
                    };
                    lost += bad as u64;
                    for (m, data) in &frames[bad..] {
                        check_frame(m, data, pb);
                        delivered += 1;
                    }
                    next += frames.len() as u64;
                }
                Err(ReadError::Lost { frames }) => {
                    lost += frames;
                    next += frames;
                }
                Err(ReadError::Empty) => {
                    if next >= N {
                        break;
                    }
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
            assert_eq!(c.read_pos(), next);
        }
        (delivered, lost, c.lost_frames())
    });
    let mut p = ring.producer(1).unwrap();
    let mut sent = 0;
    while sent < N as usize {
        sent += write(&mut p, 2.min(N as usize - sent), 2).unwrap();
    }
    for r in readers {
        let (delivered, lost, counted) = r.join().unwrap();
        assert_eq!(
            lost, counted,
            "the consumer's own count matches what it was told"
        );
        assert_eq!(
            delivered + lost,
            N,
            "every frame is delivered intact or counted lost"
        );
    }
}

#[test]
fn push_and_pop_copy_small_frames() {
    use voxring_core::{PopFrameError, PushFrameError};
    let (_region, ring) = make(&config(2, 1, Policy::Lossless));
    let cap = ring.payload_bytes() as usize;
    let mut p = ring.producer(1).unwrap();
    let mut c = ring.consumer(2).unwrap();
    let mut buf = vec![0u8; cap];
    assert!(matches!(
        c.pop(&mut buf),
        Err(PopFrameError::Read(ReadError::Empty))
    ));
    assert!(matches!(
        p.push(&vec![1; cap + 1], 0, 0, FrameFlags::NONE),
        Err(PushFrameError::TooLong { .. })
    ));
    // Nobody is parked in this test.
    let _ = p.push(b"abc", 7, 8, FrameFlags::XRUN).unwrap();
    let _ = p.push(&vec![9; cap], 9, 10, FrameFlags::NONE).unwrap();
    assert!(matches!(
        p.push(b"x", 0, 0, FrameFlags::NONE),
        Err(PushFrameError::Grant(GrantError::Full))
    ));
    let (m, _) = c.pop(&mut buf).unwrap();
    assert_eq!((m.seq, m.sample_pos, m.timestamp_ns, m.len), (0, 7, 8, 3));
    assert_eq!(&buf[..3], b"abc");
    assert!(m.flags.contains(FrameFlags::XRUN));
    let mut small = [0u8; 4];
    assert!(matches!(
        c.pop(&mut small),
        Err(PopFrameError::BufferTooSmall { needed, got: 4 }) if needed == cap
    ));
    let (m, _) = c.pop(&mut buf).unwrap();
    assert_eq!(
        (m.seq, m.len as usize),
        (1, cap),
        "a refused pop consumed nothing"
    );
    assert!(buf.iter().all(|&b| b == 9));
}

/// A waiter that polls (through `spins_before_park`) far longer than the test needs.
struct PollingWaiter;

impl Waiter for PollingWaiter {
    fn wait(&self, _word: &AtomicU32, _expected: u32, _timeout_ns: Option<u64>) -> WaitOutcome {
        panic!("the consumer should have seen the frame while polling");
    }
    fn wake(&self, _word: &AtomicU32) {
        panic!("nobody is parked: no wake call may be made");
    }
    fn spins_before_park(&self) -> u32 {
        u32::MAX
    }
}

#[test]
fn a_consumer_that_only_polls_costs_the_producer_no_wake_call() {
    let (_region, ring) = make(&config(2, 1, Policy::Lossless));
    let mut c = ring.consumer(2).unwrap();
    assert_eq!(c.read_grant(1).map(|g| g.len()), Err(ReadError::Empty));
    let poller = std::thread::spawn(move || c.wait_readable(&PollingWaiter, None));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut p = ring.producer(1).unwrap();
    let wake = p.write_grant(1).unwrap().commit_all();
    assert!(!wake.needed());
    wake.wake(&PollingWaiter);
    assert_eq!(poller.join().unwrap(), Ok(WaitOutcome::Ready));
}

#[test]
fn consumer_read_pos_follows_release_and_is_none_for_free_slots() {
    let cfg = config(4, 2, Policy::Lossless);
    let (_region, ring) = make(&cfg);
    let mut p = ring.producer(1).unwrap();
    assert_eq!(ring.consumer_read_pos(0), None);
    let mut c = ring.consumer(2).unwrap();
    let index = c.index();
    assert_eq!(ring.consumer_read_pos(index), Some(0));
    assert_eq!(write(&mut p, 3, 3).unwrap(), 3);
    assert_eq!(read(&mut c, 2).unwrap(), vec![0, 1]);
    assert_eq!(ring.consumer_read_pos(index), Some(2));
    assert_eq!(ring.write_pos() - ring.consumer_read_pos(index).unwrap(), 1);
    assert_eq!(ring.consumer_read_pos(cfg.max_consumers), None);
    // Nobody is parked in this test.
    let _ = c.leave();
    assert_eq!(ring.consumer_read_pos(index), None);
}
