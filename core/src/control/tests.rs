//! Unit tests of the control register (a child module: it sees the private fields).
extern crate std;
use super::*;
use proptest::prelude::*;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

#[test]
fn write_then_read_and_versions() {
    let r = ControlRegister::<[u32; 3], 2>::new([1, 2, 3]);
    assert_eq!(r.read_versioned(), Ok(([1, 2, 3], 0)));
    assert_eq!(r.read_if_newer(0), Ok(None));
    r.write([4, 5, 6]).unwrap();
    assert_eq!(r.version(), 1);
    assert_eq!(r.read(), Ok([4, 5, 6]));
    assert_eq!(r.read_if_newer(0), Ok(Some(([4, 5, 6], 1))));
    assert_eq!(r.read_if_newer(1), Ok(None));
}

#[test]
fn a_write_in_progress_blocks_writers_and_bounds_readers() {
    let r = ControlRegister::<u64, 1>::new(7);
    // A writer that died mid-write: seq left odd.
    r.seq.store(5, Ordering::Relaxed);
    assert_eq!(r.write(9), Err(WriteError::Busy(9)));
    assert_eq!(WriteError::Busy(9).into_inner(), 9);
    assert_eq!(r.read(), Err(ReadError::Contended { retries: 256 }));
    assert_eq!(
        r.read_with_retries(0),
        Err(ReadError::Contended { retries: 1 })
    );
    assert!(r.recover_abandoned_write());
    assert!(!r.recover_abandoned_write());
    assert_eq!(r.read_versioned(), Ok((7, 3)));
    r.write(9).unwrap();
    assert_eq!(r.read(), Ok(9));
    let msg = std::format!("{}", ReadError::Contended { retries: 3 });
    assert!(msg.contains("3 attempts"));
}

#[test]
fn zero_sized_and_large_payloads() {
    let r = ControlRegister::<(), 1>::new(());
    r.write(()).unwrap();
    assert_eq!(r.read(), Ok(()));
    let big = ControlRegister::<[u8; 61], 8>::new([0xab; 61]);
    big.write([0x5a; 61]).unwrap();
    assert_eq!(big.read().unwrap(), [0x5a; 61]);
}

/// A writer storing `[i; 4]` while readers check every value they get is uniform and
/// versions never go back.
#[test]
fn threads_never_see_torn_values() {
    let r = Arc::new(ControlRegister::<[u64; 4], 4>::new([0; 4]));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: std::vec::Vec<_> = (0..2)
        .map(|_| {
            let r = Arc::clone(&r);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut last, mut ok) = (0u64, 0u64);
                // Until stopped and at least one value was checked: a reader the scheduler
                // starts late still checks one (without assuming it runs during the writes).
                // Relaxed: a stop flag; the join below orders everything else.
                while ok == 0 || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok((v, version)) = r.read_versioned() {
                        assert!(v.iter().all(|&x| x == v[0]), "torn: {v:?}");
                        assert!(version >= last);
                        assert_eq!(v[0], version, "value i is written as version i");
                        last = version;
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    for i in 1..=200_000u64 {
        r.write([i; 4]).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in readers {
        assert!(h.join().unwrap() > 0);
    }
    assert_eq!(r.read(), Ok([200_000; 4]));
}

#[test]
fn concurrent_writers_are_refused_not_torn() {
    let r = Arc::new(ControlRegister::<[u64; 2], 2>::new([0; 2]));
    let writers: std::vec::Vec<_> = (1..=2u64)
        .map(|w| {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                let mut busy = 0u32;
                for _ in 0..50_000 {
                    if r.write([w; 2]).is_err() {
                        busy += 1;
                    }
                    let v = r.read().unwrap_or([1; 2]);
                    assert_eq!(v[0], v[1], "torn: {v:?}");
                }
                busy
            })
        })
        .collect();
    for h in writers {
        h.join().unwrap();
    }
    let v = r.read().unwrap();
    assert!(v == [1; 2] || v == [2; 2]);
}

#[repr(C, align(64))]
struct Region([u8; 256]);

#[test]
fn region_init_attach_and_checks() {
    type R = ControlRegister<[f32; 4], 2>;
    let mut region = Region([0; 256]);
    let ptr = region.0.as_mut_ptr();
    // SAFETY: `region` outlives every reference made here and is used only through them.
    unsafe {
        assert_eq!(
            R::attach(ptr, 256).unwrap_err(),
            RegionError::BadMagic {
                found: 0,
                expected: CONTROL_MAGIC
            }
        );
        let owner = R::init_in(ptr, 256, [0.5; 4]).unwrap();
        let peer = R::attach(ptr, 256).unwrap();
        owner.write([1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(peer.read(), Ok([1.0, 2.0, 3.0, 4.0]));
        assert_eq!(
            ControlRegister::<[f32; 3], 2>::attach(ptr, 256).unwrap_err(),
            RegionError::Mismatch {
                field: "control register payload size",
                found: 16,
                expected: 12
            }
        );
        crate::region::assert_bad_placements_refused::<R>(ptr, 64);
        crate::region::assert_stamp_checked::<R>(ptr, 256, CONTROL_MAGIC, CONTROL_VERSION);
    }
}

proptest! {
    /// Round trip of arbitrary payloads, and hostile sequence numbers / payload words:
    /// reads return or fail, never panic; an even seq yields exactly the stored words.
    #[test]
    fn hostile_words_and_round_trips(
        v in any::<[u16; 7]>(),
        seq in any::<u64>(),
        words in any::<[u64; 2]>(),
    ) {
        let r = ControlRegister::<[u16; 7], 2>::new([0; 7]);
        r.write(v).unwrap();
        prop_assert_eq!(r.read(), Ok(v));
        r.seq.store(seq, Ordering::Relaxed);
        r.data[0].store(words[0], Ordering::Relaxed);
        r.data[1].store(words[1], Ordering::Relaxed);
        match r.read_versioned() {
            Ok((got, version)) => {
                prop_assert_eq!(seq & 1, 0);
                prop_assert_eq!(version, seq / 2);
                prop_assert_eq!(got, from_words::<[u16; 7], 2>(&words));
            }
            Err(ReadError::Contended { .. }) => prop_assert_eq!(seq & 1, 1),
        }
        let w = r.write([1; 7]);
        prop_assert_eq!(w.is_ok(), seq & 1 == 0);
    }
}

/// A waiter that counts wake calls and, in `wait`, only reports whether the word changed.
#[derive(Default)]
struct Counting {
    wakes: core::sync::atomic::AtomicU32,
}

impl crate::Waiter for Counting {
    fn wait(
        &self,
        word: &crate::AtomicU32,
        expected: u32,
        _timeout_ns: Option<u64>,
    ) -> crate::WaitOutcome {
        // Acquire: pairs with the publisher's move of the word (the test is single-threaded).
        if word.load(Ordering::Acquire) == expected {
            crate::WaitOutcome::TimedOut
        } else {
            crate::WaitOutcome::Ready
        }
    }
    fn wake(&self, _word: &crate::AtomicU32) {
        // Relaxed: a counter read after the calls, on the same thread.
        self.wakes
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn publish_wakes_only_when_a_reader_armed_the_word() {
    let r = ControlRegister::<u64, 1>::new(0);
    let w = Counting::default();
    let wakes = || w.wakes.load(core::sync::atomic::Ordering::Relaxed);
    // Nobody waits: no wake call, however many writes.
    for i in 1..=3 {
        r.publish(i).unwrap().wake(&w);
    }
    assert_eq!(wakes(), 0);
    assert_eq!(r.wait_newer(2, &w, None), ControlWaitOutcome::Newer(3));
    assert_eq!(
        r.wake.load(Ordering::Relaxed),
        0,
        "no arm when already newer"
    );
    // A reader that found nothing new armed the word and slept (timed out here).
    assert_eq!(r.wait_newer(3, &w, Some(1)), ControlWaitOutcome::TimedOut);
    assert_eq!(r.wake.load(Ordering::Relaxed), 1);
    // The next publish makes exactly one wake call and moves the word on, disarmed.
    let wake = r.publish(4).unwrap();
    assert!(wake.needed());
    wake.wake(&w);
    assert_eq!((wakes(), r.wake.load(Ordering::Relaxed)), (1, 2));
    r.publish(5).unwrap().wake(&w);
    assert_eq!(wakes(), 1, "the word is disarmed again: no call");
    // A plain write never looks at the word.
    r.wake.store(3, Ordering::Relaxed);
    r.write(6).unwrap();
    assert_eq!(r.wake.load(Ordering::Relaxed), 3);
    // A forged armed word only makes a reader sleep on it (until its timeout here).
    assert_eq!(r.wait_newer(6, &w, None), ControlWaitOutcome::TimedOut);
    assert_eq!(r.wait_newer(5, &w, None), ControlWaitOutcome::Newer(6));
}

#[test]
fn a_forged_armed_word_costs_one_wake_call_per_publish_at_most() {
    let r = ControlRegister::<u64, 1>::new(0);
    let w = Counting::default();
    for i in 0..10u64 {
        // A hostile peer re-arms the word before every write.
        r.wake.store(0xffff_ffff, Ordering::Relaxed);
        r.publish(i).unwrap().wake(&w);
    }
    assert_eq!(w.wakes.load(core::sync::atomic::Ordering::Relaxed), 10);
    // The word wrapped to an even value: disarmed.
    assert_eq!(r.wake.load(Ordering::Relaxed), 0);
}

#[test]
fn raw_bytes_round_trip_and_stop_at_the_payload() {
    let r = ControlRegister::<[u8; 12], 2>::new([0; 12]);
    let raw: &dyn RawRegister = &r;
    assert_eq!(raw.payload_len(), 12);
    raw.publish_bytes(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
        .unwrap()
        .wake(&Counting::default());
    assert_eq!(r.read(), Ok([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]));
    // A peer's bytes beyond the payload (in the padding word) are not returned.
    r.data[1].store(u64::MAX, Ordering::Relaxed);
    let mut out = [0u8; 16];
    assert_eq!(raw.read_bytes(&mut out, 1), Ok(1));
    assert_eq!(out[..12], [1, 2, 3, 4, 5, 6, 7, 8, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(out[12..], [0; 4]);
    // A write in progress: bounded failure, and the raw recover ends it.
    r.seq.store(5, Ordering::Relaxed);
    assert!(raw.publish_bytes(&[0]).is_err());
    assert_eq!(
        raw.read_bytes(&mut out, 4),
        Err(ReadError::Contended { retries: 4 })
    );
    assert!(raw.recover_abandoned_write());
    assert_eq!(raw.version(), 3);
}
