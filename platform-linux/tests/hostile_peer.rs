//! A hostile peer: another process writes random values into the ring's header, producer
//! block (cursor, owner, wait words), consumer blocks and slot metadata while this process
//! produces and consumes. Every operation must return an error or resync; nothing may crash,
//! read or write out of bounds, or hang. `scripts/test` runs this file under AddressSanitizer.
//!
//! Offsets follow `core/LAYOUT.md`: the header (0..128) gives `consumers_offset`,
//! `slots_offset` and `slot_size`; between the header and the consumer blocks lie the producer
//! and wait blocks; each slot starts with 32 bytes of metadata.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{ChildGuard, Rng, env, expect_line, fill_payload, spawn_role, test_config};
use voxring_core::{GrantError, Policy, ReadError};
use voxring_linux::ring::{Segment, ShmConsumer, list_segments};
use voxring_linux::segment::AttachOptions;

/// Child role: scribble random words over the ring's control areas, then say "done".
#[test]
fn child_entry_scribbler() {
    common::child_role!("scribbler");
    let file = common::attach_file_from_env();
    let m = file.mapping();
    let writes: u64 = env("VOXRING_TEST_WRITES").parse().unwrap();
    let mut rng = Rng(env("VOXRING_TEST_SEED").parse().unwrap());
    let cfg = test_config(Policy::Lossless);
    // Geometry from the header (LAYOUT.md: slot_size u32 at 44, consumers_offset u64 at 48,
    // slots_offset u64 at 56), read before any scribbling.
    // SAFETY: the header's first 64 bytes are inside the mapping (a ring is larger), aligned,
    // and accessed atomically.
    let (slot_size, consumers_offset, slots_offset) = unsafe {
        let base = m.as_ptr();
        (
            (*base.add(44).cast::<std::sync::atomic::AtomicU32>()).load(Ordering::Relaxed) as usize,
            (*base.add(48).cast::<AtomicU64>()).load(Ordering::Relaxed) as usize,
            (*base.add(56).cast::<AtomicU64>()).load(Ordering::Relaxed) as usize,
        )
    };
    let consumers_end = consumers_offset + 128 * usize::from(cfg.max_consumers);
    assert!(
        consumers_end <= slots_offset && slot_size >= 64,
        "unexpected layout"
    );
    let region = slots_offset + slot_size * cfg.frames as usize;
    assert!(region <= m.len(), "segment smaller than the layout says");
    println!("scribbling");
    for i in 0..writes {
        let off = match rng.below(10) {
            0..=2 => rng.below(128) as usize,       // header
            3..=5 => 128 + rng.below(128) as usize, // producer block
            6..=7 => 256 + rng.below((consumers_end - 256) as u64) as usize, // consumer blocks
            _ => {
                let slot = rng.below(u64::from(cfg.frames)) as usize;
                consumers_end + slot * slot_size + rng.below(32) as usize // slot metadata
            }
        } & !7;
        let value = match rng.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => rng.below(64),
            3 => u64::MAX - rng.below(64),
            4 => 1 << rng.below(64),
            _ => rng.next(),
        };
        // SAFETY: off + 8 <= region <= mapping length (asserted), 8-aligned, and the word is
        // accessed atomically, as every field of the layout is.
        let word = unsafe { &*m.as_ptr().add(off).cast::<AtomicU64>() };
        word.store(value, Ordering::Relaxed);
        if i % 64 == 0 {
            std::thread::yield_now();
        }
    }
    println!("done");
}

#[derive(Default, Debug)]
struct Tally {
    delivered: u64,
    errors: u64,
    rejoins: u64,
}

fn rejoin(seg: &Segment, rx: &mut Option<ShmConsumer>, tally: &mut Tally) {
    *rx = None;
    seg.evict_dead();
    if let Ok(c) = seg.consumer() {
        tally.rejoins += 1;
        *rx = Some(c);
    }
}

fn run(policy: Policy, writes: u64) {
    let (name, _c) = common::scratch("hostile");
    let seg = common::create_segment(&name, &test_config(policy));
    let stop = Arc::new(AtomicBool::new(false));

    // Producer thread: writes frames, takes every error in stride, reclaims when evicted.
    let producer = {
        let seg = seg.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut tx = None;
            let mut n = 0u64;
            let mut errors = 0u64;
            // Acquire pairs with the Release store of `stop` below.
            while !stop.load(Ordering::Acquire) {
                if tx.is_none() {
                    seg.evict_dead();
                    tx = seg.producer().ok();
                    if tx.is_none() {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                }
                let p = tx.as_mut().unwrap();
                let mut evicted = false;
                let full = {
                    let (prod, waiter) = p.parts();
                    let waiter = *waiter;
                    match prod.write_grant(4) {
                        Ok(mut g) => {
                            let k = g.len();
                            for i in 0..k {
                                if let Some(mut f) = g.frame_mut(i) {
                                    fill_payload(n, f.payload_mut());
                                    n += 1;
                                }
                            }
                            if let Ok(w) = g.commit(k) {
                                w.wake(&waiter);
                            }
                            false
                        }
                        Err(GrantError::Full) => true,
                        Err(GrantError::Evicted) => {
                            errors += 1;
                            evicted = true;
                            false
                        }
                        Err(_) => {
                            errors += 1;
                            true
                        }
                    }
                };
                if evicted {
                    tx = None;
                } else if full && let Some(p) = tx.as_mut() {
                    let _ = p.wait_for_space(Some(Duration::from_millis(2)));
                }
            }
            errors
        })
    };

    let mut scribbler = ChildGuard(Some(
        spawn_role(
            "child_entry_scribbler",
            "scribbler",
            &[
                ("VOXRING_TEST_SEGMENT", name.clone()),
                ("VOXRING_TEST_WRITES", writes.to_string()),
                ("VOXRING_TEST_SEED", common::seed().to_string()),
            ],
        )
        .spawn()
        .unwrap(),
    ));
    expect_line(scribbler.child(), "scribbling");

    let mut tally = Tally::default();
    let mut rx = seg.consumer().ok();
    let mut copy = Vec::new();
    // Produce and consume for as long as the scribbler writes, however slowly it is scheduled
    // (a cap on rounds could end this loop before a starved scribbler even began, and then no
    // participant would see the garbage). The deadline only gives up on a hang.
    let give_up = Instant::now() + Duration::from_secs(600);
    let mut round = 0u64;
    loop {
        round += 1;
        if round.is_multiple_of(256) {
            if scribbler.child().try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                Instant::now() < give_up,
                "the scribbler has not finished its {writes} writes in 600 s: something hangs \
                 ({tally:?})"
            );
            // Slow-path operations must also survive the garbage.
            let _ = Segment::attach(&name, &AttachOptions::default());
            let _ = list_segments();
            let _ = seg.producer_state();
            let _ = seg.check_size();
        }
        let Some(c) = rx.as_mut() else {
            rejoin(&seg, &mut rx, &mut tally);
            std::thread::yield_now();
            continue;
        };
        let outcome = {
            let (cons, waiter) = c.parts();
            let waiter = *waiter;
            match cons.read_grant(4) {
                Ok(g) => {
                    for f in g.frames() {
                        // Touch everything a reader would: metadata and the whole payload.
                        // (len is re-read by each call; a peer may change it in between.)
                        let meta = f.meta();
                        copy.clear();
                        copy.extend_from_slice(f.payload());
                        assert!(meta.len <= 128 && copy.len() <= 128, "length not clamped");
                    }
                    let k = g.len();
                    match g.release(k) {
                        Ok(w) => {
                            w.wake(&waiter);
                            tally.delivered += k as u64;
                            Ok(())
                        }
                        Err(_) => Err(true),
                    }
                }
                Err(ReadError::Empty) => Err(false),
                Err(ReadError::Lost { .. }) => Ok(()),
                Err(_) => Err(true),
            }
        };
        match outcome {
            Ok(()) => {}
            Err(false) => {
                let _ = c.wait_for_frames(Some(Duration::from_millis(2)));
            }
            Err(true) => {
                tally.errors += 1;
                rejoin(&seg, &mut rx, &mut tally);
            }
        }
    }
    let status = scribbler.wait();
    // Release pairs with the producer thread's Acquire load.
    stop.store(true, Ordering::Release);
    let producer_errors = producer.join().expect("producer thread panicked");
    assert!(status.success(), "the scribbler failed");
    eprintln!("{policy:?}: {tally:?}, producer errors {producer_errors}");
    // The garbage reached the participants (otherwise this test proved nothing).
    assert!(
        tally.errors + tally.rejoins + producer_errors > 0,
        "no participant ever saw the hostile writes"
    );
    drop(rx);
    drop(seg);
    assert!(!common::shm_path(&name).exists());
}

#[test]
fn hostile_writes_never_crash_a_lossless_ring() {
    common::parent_only!();
    run(Policy::Lossless, 20_000);
}

#[test]
fn hostile_writes_never_crash_a_lossy_ring() {
    common::parent_only!();
    run(Policy::Lossy, 20_000);
}
