//! Issue 11, finding 8 (wake storms), across processes with real futexes: a forger process
//! keeps `consumers_parked` (core/LAYOUT.md, offset 260) at a huge value while this process
//! produces, as the harness's audio thread does, and three consumer processes park between
//! frames, as the harness's agents do (spin 0).
//!
//! What is counted, never timed: the producer's wake calls (each one `FUTEX_WAKE` syscall of
//! voxring-linux's `FutexWaiter`, counted by a wrapper), and the frames every consumer got.
//! Before the fix, every commit under the forged count made a `FUTEX_WAKE`.

mod common;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    ChildGuard, attach_from_env, create_segment, env, expect_line, field, fill_payload, mapped_u32,
    scratch, start_role, test_config, verify_payload,
};
use voxring_core::{AtomicU32 as CoreAtomicU32, Policy, WaitOutcome, Waiter};
use voxring_linux::futex::FutexWaiter;
use voxring_linux::mapping::SharedMapping;
use voxring_linux::ring::FramesWait;

/// Byte offset of `consumers_parked` in a ring region (core/LAYOUT.md, "Wait block").
const CONSUMERS_PARKED: usize = 260;
/// What the forger stores there.
const FORGED: u32 = 1 << 30;
/// Frames the producer commits while nobody really sleeps.
const QUIET_COMMITS: u64 = 2_000;
/// Frames the producer commits to three really sleeping consumers.
const FRAMES: u64 = 300;
/// A consumer gives up after this long without a frame: a bound, never the assertion.
const GIVE_UP: Duration = Duration::from_secs(60);

/// voxring-linux's futex waiter, counting its wake calls (one `FUTEX_WAKE` syscall each).
#[derive(Default)]
struct CountingFutex {
    inner: FutexWaiter,
    wakes: AtomicUsize,
}

impl Waiter for CountingFutex {
    fn wait(&self, word: &CoreAtomicU32, expected: u32, timeout_ns: Option<u64>) -> WaitOutcome {
        self.inner.wait(word, expected, timeout_ns)
    }

    fn wake(&self, word: &CoreAtomicU32) {
        // Relaxed: a counter read by this thread only.
        self.wakes.fetch_add(1, Ordering::Relaxed);
        self.inner.wake(word);
    }
}

/// The `consumers_parked` word of a mapped ring.
fn parked_word(m: &SharedMapping) -> &AtomicU32 {
    mapped_u32(m, CONSUMERS_PARKED)
}

/// Child role: keep `consumers_parked` at a huge value until killed.
#[test]
fn child_entry_forger() {
    common::child_role!("forger");
    let file = common::attach_file_from_env();
    let m = file.mapping();
    let parked = parked_word(m);
    // Relaxed: a hostile peer needs no ordering; the victims must not rely on any.
    parked.store(FORGED, Ordering::Relaxed);
    println!("forging");
    loop {
        parked.store(FORGED, Ordering::Relaxed);
        std::hint::spin_loop();
        std::thread::yield_now();
    }
}

/// Child role: a consumer that parks at once between frames (as the harness's agents do) and
/// reads `VOXRING_TEST_FRAMES` frames, checking each; prints what it got.
#[test]
fn child_entry_parking_consumer() {
    common::child_role!("parker");
    let frames: u64 = env("VOXRING_TEST_FRAMES").parse().unwrap();
    let seg = attach_from_env();
    let mut rx = seg.consumer().expect("consumer joins");
    rx.set_spin(Duration::ZERO);
    // One park slice as long as the give-up bound: only a wake call (or a frame already
    // there) ends a park before it, so a skipped wake shows as a give-up, not as a delay.
    rx.set_liveness_interval(GIVE_UP);
    println!("joined");
    let (mut got, mut first, mut bad) = (0u64, None, 0u64);
    while got < frames {
        match rx.wait_for_frames(Some(GIVE_UP)).expect("wait") {
            FramesWait::Ready => {}
            FramesWait::EndOfStream | FramesWait::TimedOut => {
                println!("result got={got} bad={bad} stuck=1");
                return;
            }
        }
        let Ok(grant) = rx.consumer().read_grant(16) else {
            continue;
        };
        for f in grant.frames() {
            match verify_payload(f.payload()) {
                Ok(n) if n == first.unwrap_or(n) + got => {
                    first.get_or_insert(n);
                    got += 1;
                }
                _ => bad += 1,
            }
        }
        grant.release_all().expect("release").wake(rx.waiter());
    }
    println!("result got={got} bad={bad} stuck=0");
}

/// Commits one frame (numbered `n`) and wakes through `waiter`.
fn commit_one(tx: &mut voxring_linux::ring::ShmProducer, n: u64, waiter: &CountingFutex) {
    loop {
        let wake = match tx.producer().write_grant(1) {
            Ok(mut g) if !g.is_empty() => {
                let mut f = g.frame_mut(0).unwrap();
                fill_payload(n, f.payload_mut());
                f.set_sample_pos(n * 64);
                Some(g.commit_all())
            }
            Ok(_) | Err(voxring_core::GrantError::Full) => None,
            Err(e) => panic!("producer: {e}"),
        };
        match wake {
            Some(w) => return w.wake(waiter),
            None => {
                let _ = tx.wait_for_space(Some(GIVE_UP));
            }
        }
    }
}

#[test]
fn forged_parked_count_costs_no_futex_wake_and_parked_consumers_get_every_frame() {
    common::parent_only!();
    let (name, _cleanup) = scratch("wake");
    let seg = create_segment(&name, &test_config(Policy::Lossless));
    let mut tx = seg.producer().unwrap();
    let parked = parked_word(seg.mapping());

    let mut forger = start_role(
        "child_entry_forger",
        "forger",
        &[("VOXRING_TEST_SEGMENT", name.clone())],
    );
    expect_line(forger.child(), "forging");

    // 1. The forged count, nobody asleep: the audio thread's commits make no futex syscall.
    let quiet = CountingFutex::default();
    for n in 0..QUIET_COMMITS {
        commit_one(&mut tx, n, &quiet);
    }
    // Relaxed: only checks the forger is still at work.
    assert_eq!(
        parked.load(Ordering::Relaxed),
        FORGED,
        "the forger is at work"
    );
    assert_eq!(
        quiet.wakes.load(Ordering::Relaxed),
        0,
        "a forged consumers_parked made the producer call FUTEX_WAKE"
    );

    // 2. Three consumer processes that really park between frames, under the same forgery:
    //    every frame reaches every one of them, with at most one wake call per commit.
    let mut parkers: Vec<ChildGuard> = (0..3)
        .map(|_| {
            start_role(
                "child_entry_parking_consumer",
                "parker",
                &[
                    ("VOXRING_TEST_SEGMENT", name.clone()),
                    ("VOXRING_TEST_FRAMES", FRAMES.to_string()),
                ],
            )
        })
        .collect();
    for p in &mut parkers {
        expect_line(p.child(), "joined");
    }
    let busy = CountingFutex::default();
    for n in QUIET_COMMITS..QUIET_COMMITS + FRAMES {
        commit_one(&mut tx, n, &busy);
        // One audio period (128 frames at 48 kHz), so the consumers fall asleep in between;
        // how long they really sleep does not matter to any assertion.
        std::thread::sleep(Duration::from_micros(2_667));
    }
    for p in &mut parkers {
        let line = expect_line(p.child(), "result");
        assert_eq!(
            (
                field(&line, "got"),
                field(&line, "bad"),
                field(&line, "stuck")
            ),
            (FRAMES, 0, 0),
            "a parked consumer missed frames under the forged count: {line}"
        );
        assert!(p.wait().success());
    }
    let wakes = busy.wakes.load(Ordering::Relaxed) as u64;
    assert!(
        wakes <= FRAMES,
        "{wakes} wake calls for {FRAMES} commits: more than one per commit"
    );
    forger.kill9();
    drop(tx);
}
