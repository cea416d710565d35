//! Issue 11, finding 8 (wake storms), in-process: a peer with write access to the ring forges
//! `consumers_parked` (and the futex word) while the producer commits. The attacks run in
//! threads that write the wait block through their own pointer into the region, as a process
//! mapping the segment would; every assertion is a count of wake calls or of frames, never a
//! time. See `platform-linux/tests/attack_wake.rs` for the same attack across processes with
//! real futexes.

mod common;

use common::{Region, config, make, make_pair, read_one_parking, write_one_parking};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;
use voxring_core::{
    AtomicU32, Consumer, Policy, Producer, ReadError, RingConfig, WaitOutcome, Waiter,
};

/// Byte offsets of the wait words in a ring region (core/LAYOUT.md, "Wait block").
const DATA_FUTEX: usize = 256;
const CONSUMERS_PARKED: usize = 260;
const PRODUCER_PARKED: usize = 268;

/// The value the forger keeps in `consumers_parked`: "a billion consumers are asleep".
const FORGED: u32 = 1 << 30;

/// How long a sleeper waits for a wake before the test gives up (a bound, never asserted).
const GIVE_UP: Duration = Duration::from_secs(60);

/// A waiter that behaves like a futex: `wait` checks the word and goes to sleep atomically
/// with respect to `wake`, and only a `wake` call (or a word that already changed) ends the
/// sleep. A needed wake call that the producer skips leaves the sleeper asleep, so the test
/// fails at its give-up bound. Counts the wake calls (the futex syscalls a platform makes).
#[derive(Default)]
struct FutexLike {
    generation: Mutex<u64>,
    cv: Condvar,
    /// How many sleeps began (monotonic).
    sleeps: AtomicUsize,
    wakes: AtomicUsize,
}

impl Waiter for FutexLike {
    fn wait(&self, word: &AtomicU32, expected: u32, _timeout_ns: Option<u64>) -> WaitOutcome {
        let g = self.generation.lock().unwrap();
        // Acquire: pairs with the producer's Release swap of the word (core's wait protocol).
        if word.load(portable_atomic::Ordering::Acquire) != expected {
            return WaitOutcome::Ready;
        }
        let start = *g;
        // SeqCst (both counters): test bookkeeping read by the producer thread.
        self.sleeps.fetch_add(1, Ordering::SeqCst);
        let (g, _) = self
            .cv
            .wait_timeout_while(g, GIVE_UP, |g| *g == start)
            .unwrap();
        if *g == start {
            WaitOutcome::TimedOut
        } else {
            WaitOutcome::Woken
        }
    }

    fn wake(&self, _word: &AtomicU32) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        *self.generation.lock().unwrap() += 1;
        self.cv.notify_all();
    }
}

/// The `u32` words at `offsets` of a ring region, as a peer with write access sees them.
fn words<const N: usize>(region: &mut Region, offsets: [usize; N]) -> [&AtomicU32; N] {
    let (base, len) = (region.ptr(), region.len());
    offsets.map(|off| {
        assert!(
            off + 4 <= len && off % 4 == 0,
            "offset {off} is not a u32 of the region"
        );
        // SAFETY: in bounds and 4-aligned (asserted; the region is 128-aligned); `AtomicU32`
        // has the layout of a `u32` and every access to the region's words is atomic; borrowed
        // from `region`, so it cannot outlive it.
        unsafe { &*base.add(off).cast::<AtomicU32>() }
    })
}

/// Waits until `waiter` has seen `sleeps` sleeps begin (`who` fell asleep), failing if
/// `who` finished instead or the give-up bound passed (a bound, not a timing).
fn await_sleeps(waiter: &FutexLike, sleeps: usize, finished: impl Fn() -> bool, who: &str) {
    let give_up = std::time::Instant::now() + GIVE_UP;
    while waiter.sleeps.load(Ordering::SeqCst) < sleeps {
        assert!(
            std::time::Instant::now() < give_up && !finished(),
            "{who} never fell asleep"
        );
        std::thread::yield_now();
    }
}

/// Runs `forge` in a loop in its own thread (the hostile peer) while `body` runs.
fn with_forger<R>(forge: impl Fn() + Sync, body: impl FnOnce() -> R + Send) -> R {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // The forger writes once before the body starts, so every commit below sees it.
        forge();
        s.spawn(|| {
            // Relaxed: a stop flag; the scope's join orders the rest.
            while !stop.load(Ordering::Relaxed) {
                forge();
                std::hint::spin_loop();
            }
        });
        // Stops the forger however `body` ends: an assertion failing inside it unwinds
        // through here, and a forger left spinning would keep the scope (the test) alive
        // forever instead of letting it fail.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        body()
    })
}

/// A fresh ring (`cfg`) with producer 1, consumer 2 and a futex-like waiter, and a hostile
/// peer that keeps writing `value` into the wait word at `offset` while `body` runs. Returns
/// the waiter (its counts) and the forged word as the body left it.
fn under_forged_word(
    cfg: RingConfig,
    offset: usize,
    value: u32,
    body: impl FnOnce(&mut Producer, &mut Consumer, &FutexLike) + Send,
) -> (FutexLike, u32) {
    let (mut region, _ring, mut producer, mut consumer) = make_pair(&cfg);
    let [word] = words(&mut region, [offset]);
    let waiter = FutexLike::default();
    with_forger(
        || word.store(value, portable_atomic::Ordering::Relaxed),
        || body(&mut producer, &mut consumer, &waiter),
    );
    let left = word.load(portable_atomic::Ordering::Relaxed);
    (waiter, left)
}

/// A forged parked count, kept there, with nobody really asleep, while the producer commits
/// 20,000 frames one at a time and the consumer (it only polls, never parks) releases each:
/// neither side makes a wake call at all. Forged `consumers_parked`: before the fix, one wake
/// call per commit; forged `producer_parked` (offset 268): releases call only when the producer
/// really armed `space_futex`.
#[test]
fn forged_parked_counts_cost_no_wake_call() {
    const FRAMES: usize = 20_000;
    let cases = [
        ("consumers_parked", CONSUMERS_PARKED, FORGED, Policy::Lossy),
        ("producer_parked", PRODUCER_PARKED, 1, Policy::Lossless),
    ];
    for (name, offset, value, policy) in cases {
        let mut needed = 0usize;
        let (waiter, left) = under_forged_word(
            config(8, 3, policy),
            offset,
            value,
            |producer, consumer, waiter| {
                for _ in 0..FRAMES {
                    let commit = producer.write_grant(1).unwrap().commit_all();
                    needed += usize::from(commit.needed());
                    commit.wake(waiter);
                    let release = consumer.read_grant(8).unwrap().release_all().unwrap();
                    needed += usize::from(release.needed());
                    release.wake(waiter);
                }
            },
        );
        assert_eq!(left, value, "forged {name}");
        assert_eq!(needed, 0, "a forged {name} alone asked for {needed} wakes");
        assert_eq!(waiter.wakes.load(Ordering::SeqCst), 0, "forged {name}");
    }
}

/// A forger that also re-arms the futex word as fast as it can gets at most one wake call
/// per commit: what one genuinely sleeping consumer costs, never more.
#[test]
fn forged_count_and_armed_word_cost_at_most_one_wake_per_commit() {
    const COMMITS: usize = 20_000;
    let (mut region, ring) = make(&config(8, 3, Policy::Lossy));
    // `data_futex` and `consumers_parked`, forged below.
    let [futex, parked] = words(&mut region, [DATA_FUTEX, CONSUMERS_PARKED]);
    let waiter = FutexLike::default();
    let mut producer = ring.producer(1).unwrap();
    with_forger(
        || {
            parked.store(FORGED, portable_atomic::Ordering::Relaxed);
            futex.fetch_or(1, portable_atomic::Ordering::Relaxed);
        },
        || {
            for _ in 0..COMMITS {
                producer.write_grant(1).unwrap().commit_all().wake(&waiter);
            }
        },
    );
    let wakes = waiter.wakes.load(Ordering::SeqCst);
    assert!(wakes <= COMMITS, "{wakes} wake calls for {COMMITS} commits");
}

/// Under the same forged count, a consumer that really sleeps is still woken for every frame:
/// the producer commits each frame only once the consumer is asleep inside the futex-like
/// waiter, so every commit needs exactly one wake call, and a skipped one would leave the
/// consumer asleep (the test then fails at its give-up bound).
#[test]
fn a_really_parked_consumer_still_gets_every_frame_under_a_forged_count() {
    const FRAMES: u64 = 300;
    let (waiter, _) = under_forged_word(
        config(4, 3, Policy::Lossless),
        CONSUMERS_PARKED,
        FORGED,
        |producer, consumer, waiter| {
            std::thread::scope(|s| {
                let reader = s.spawn(|| {
                    (0..FRAMES)
                        .map(|_| read_one_parking(consumer, waiter))
                        .collect::<Vec<_>>()
                });
                for i in 0..FRAMES as usize {
                    // Let the consumer fall asleep for frame `i` first (its sleep `i + 1`;
                    // only a wake call ends it). A give-up bound, not a timing.
                    await_sleeps(waiter, i + 1, || reader.is_finished(), "the consumer");
                    producer.write_grant(1).unwrap().commit_all().wake(waiter);
                }
                let got = reader.join().unwrap();
                assert_eq!(got, (0..FRAMES).collect::<Vec<_>>());
            });
        },
    );
    assert_eq!(
        waiter.wakes.load(Ordering::SeqCst),
        FRAMES as usize,
        "one wake per frame, each for a consumer that really slept"
    );
}

/// Under a forged `producer_parked`, a producer that really sleeps on a full ring is still
/// woken by the consumer's release, every time.
#[test]
fn a_really_parked_producer_is_still_woken_under_a_forged_count() {
    const FRAMES: u64 = 300;
    let (waiter, _) = under_forged_word(
        config(1, 1, Policy::Lossless),
        PRODUCER_PARKED,
        1,
        |producer, consumer, waiter| {
            std::thread::scope(|s| {
                let writer = s.spawn(|| {
                    for _ in 0..FRAMES {
                        write_one_parking(producer, waiter);
                    }
                });
                for i in 0..FRAMES as usize {
                    // The ring holds one frame: once the producer sleeps after committing
                    // frame `i` (all but the last), release it (a give-up bound, not a timing).
                    if i + 1 < FRAMES as usize {
                        await_sleeps(waiter, i + 1, || writer.is_finished(), "the producer");
                    }
                    // The sleep count can run ahead of the commits (a sleep that began for a
                    // frame whose room came at once): wait for frame `i` itself as well.
                    let give_up = std::time::Instant::now() + GIVE_UP;
                    let g = loop {
                        match consumer.read_grant(1) {
                            Ok(g) => break g,
                            Err(ReadError::Empty) => {
                                assert!(
                                    std::time::Instant::now() < give_up && !writer.is_finished(),
                                    "frame {i} was never committed"
                                );
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    };
                    assert_eq!(g.first_seq(), i as u64);
                    g.release_all().unwrap().wake(waiter);
                }
                writer.join().unwrap();
            });
        },
    );
    // One wake per release of a frame the producer slept on: all but the last.
    assert_eq!(waiter.wakes.load(Ordering::SeqCst), FRAMES as usize - 1);
}
