//! voxring-core rings against rtrb, side by side in one run.
//!
//! - `item`: one `u64` pushed and popped (same thread, and a producer/consumer pair on two
//!   threads), `StaticRing` vs `rtrb::RingBuffer`.
//! - `frame_512x2_f32`: one 512-sample stereo `f32` frame (4 KiB) handed over: the shared-memory
//!   `Ring` (and `StaticRing<f32>` slice grants) filled and read in place, vs rtrb with the frame
//!   generated into a local buffer, copied in, copied out, and consumed from the copy. Both
//!   sides do the same generate / consume work.
//! - `broadcast_lossy`: producer cost per frame of a lossy `Ring` with 1, 2, 4 and 8 consumers,
//!   joined but idle, and active on their own threads (`iter_custom`, `Barrier`).
//!
//! Run: `cargo bench -p voxring-core --bench rings -- --warm-up-time 1 --measurement-time 3`
//! (figures and the machine in docs/core-benchmarks.md).

use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use voxring_core::{
    GrantError, Policy, PushError, ReadError, RingConfig, SampleFormat, StaticRing,
};

const FRAME_SAMPLES: u32 = 512;
const CHANNELS: u16 = 2;
const FRAME_VALUES: usize = FRAME_SAMPLES as usize * CHANNELS as usize;

// The same aligned heap region and `Ring::create` the integration tests use.
#[path = "../tests/common/mod.rs"]
mod common;
use common::make as ring;

// The generate / consume / push / pop work, shared with `handoff_min`.
mod work;
use work::{consume, generate, pop_all, push_all};

fn frame_config(frames: u32, policy: Policy, consumers: u16) -> RingConfig {
    RingConfig {
        frames,
        samples_per_frame: FRAME_SAMPLES,
        channels: CHANNELS,
        format: SampleFormat::F32,
        sample_rate: 48_000,
        max_consumers: consumers,
        policy,
    }
}

/// Times `producer` on this thread while `consumer` runs on another; a barrier starts both,
/// and the clock stops once the consumer is done.
#[inline(always)]
fn timed_pair<T: Send>(consumer: impl FnOnce() -> T + Send, producer: impl FnOnce()) -> Duration {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        // `move`: the consumer's handle (its cached cursor) lives on its own thread's
        // stack, not beside the producer's handle on this one (false sharing).
        let start = &start;
        let consumer = s.spawn(move || {
            start.wait();
            black_box(consumer())
        });
        start.wait();
        let t0 = Instant::now();
        producer();
        consumer.join().unwrap();
        t0.elapsed()
    })
}

/// One item pushed then popped per iteration, on one thread: the same code for every ring
/// compared (a macro: the rings share no trait).
macro_rules! same_thread_items {
    ($b:expr, $tx:ident, $rx:ident) => {
        let mut i = 0u64;
        $b.iter(|| {
            $tx.push(black_box(i)).unwrap();
            i += 1;
            black_box($rx.pop().unwrap())
        });
    };
}

/// `iters` items from a pushing thread to a popping one (see `timed_pair`): the same code for
/// every ring compared; `$full` is the ring's "full, here is your item back" error variant.
macro_rules! two_thread_items {
    ($iters:expr, $tx:ident, $rx:ident, $full:path) => {
        timed_pair(
            move || {
                let mut sum = 0u64;
                pop_all($iters, || $rx.pop().ok(), |v| sum = sum.wrapping_add(v));
                sum
            },
            || {
                push_all($iters, |v| match $tx.push(v) {
                    Err($full(back)) => Err(back),
                    _ => Ok(()),
                })
            },
        )
    };
}

fn item(c: &mut Criterion) {
    let mut g = c.benchmark_group("item");
    g.throughput(Throughput::Elements(1));

    g.bench_function("voxring_static_ring/same_thread", |b| {
        let ring = StaticRing::<u64, 1024>::new(0);
        let (mut tx, mut rx) = ring.split().unwrap();
        same_thread_items!(b, tx, rx);
    });
    g.bench_function("rtrb/same_thread", |b| {
        let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(1024);
        same_thread_items!(b, tx, rx);
    });

    g.bench_function("voxring_static_ring/two_threads", |b| {
        b.iter_custom(|iters| {
            // On the heap like rtrb's buffer (on this stack it would sit beside the producer's locals).
            let ring = Box::new(StaticRing::<u64, 1024>::new(0));
            let (mut tx, mut rx) = ring.split().unwrap();
            two_thread_items!(iters, tx, rx, PushError::Full)
        });
    });
    g.bench_function("rtrb/two_threads", |b| {
        b.iter_custom(|iters| {
            let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(1024);
            two_thread_items!(iters, tx, rx, rtrb::PushError::Full)
        });
    });
    g.finish();
}

fn frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_512x2_f32");
    g.throughput(Throughput::Bytes((FRAME_VALUES * 4) as u64));

    // The work both sides do anyway (generate into a buffer, consume it), with no ring: the
    // hand-over cost of each variant below is its time minus this one.
    g.bench_function("work_only_no_ring/same_thread", |b| {
        let mut buf = vec![0f32; FRAME_VALUES];
        let mut n = 0u64;
        b.iter(|| {
            generate(&mut buf, n);
            n += 1;
            black_box(consume(black_box(&buf)))
        });
    });
    g.bench_function("voxring_ring_in_place/same_thread", |b| {
        let (_region, ring) = ring(&frame_config(8, Policy::Lossless, 1));
        let mut tx = ring.producer(1).unwrap();
        let mut rx = ring.consumer(2).unwrap();
        let mut n = 0u64;
        b.iter(|| {
            let mut w = tx.write_grant(1).unwrap();
            generate(w.frame_mut(0).unwrap().samples_mut::<f32>().unwrap(), n);
            let _ = w.commit_all();
            n += 1;
            let r = rx.read_grant(1).unwrap();
            let x = consume(r.frame(0).unwrap().samples::<f32>().unwrap());
            let _ = r.release_all().unwrap();
            black_box(x)
        });
    });
    g.bench_function("voxring_static_ring_in_place/same_thread", |b| {
        let ring = StaticRing::<f32, { 8 * FRAME_VALUES }>::new(0.0);
        let (mut tx, mut rx) = ring.split().unwrap();
        let mut n = 0u64;
        b.iter(|| {
            let mut w = tx.write_chunk(FRAME_VALUES).unwrap();
            let (a, b2) = w.as_mut_slices();
            debug_assert!(b2.is_empty()); // 8 whole frames: a frame never wraps
            generate(a, n);
            w.commit(FRAME_VALUES).unwrap();
            n += 1;
            let r = rx.read_chunk(FRAME_VALUES).unwrap();
            let x = consume(r.as_slices().0);
            r.release(FRAME_VALUES).unwrap();
            black_box(x)
        });
    });
    g.bench_function("rtrb_copy_in_out/same_thread", |b| {
        let (mut tx, mut rx) = rtrb::RingBuffer::<f32>::new(8 * FRAME_VALUES);
        let mut src = vec![0f32; FRAME_VALUES];
        let mut dst = vec![0f32; FRAME_VALUES];
        let mut n = 0u64;
        b.iter(|| {
            generate(&mut src, n);
            tx.push_entire_slice(&src).unwrap();
            n += 1;
            rx.pop_entire_slice(&mut dst).unwrap();
            black_box(consume(&dst))
        });
    });

    g.bench_function("voxring_ring_in_place/two_threads", |b| {
        b.iter_custom(|iters| {
            let (_region, ring) = ring(&frame_config(8, Policy::Lossless, 1));
            let mut tx = ring.producer(1).unwrap();
            let mut rx = ring.consumer(2).unwrap();
            timed_pair(
                move || {
                    let (mut got, mut acc) = (0u64, 0u32);
                    while got < iters {
                        match rx.read_grant(8) {
                            Ok(r) => {
                                for f in r.frames() {
                                    acc = acc.wrapping_add(consume(f.samples::<f32>().unwrap()));
                                }
                                got += r.len() as u64;
                                let _ = r.release_all().unwrap();
                            }
                            Err(ReadError::Empty) => std::hint::spin_loop(),
                            Err(e) => panic!("read: {e}"),
                        }
                    }
                    acc
                },
                || {
                    let mut n = 0u64;
                    while n < iters {
                        match tx.write_grant(1) {
                            Ok(mut w) => {
                                generate(w.frame_mut(0).unwrap().samples_mut::<f32>().unwrap(), n);
                                let _ = w.commit_all();
                                n += 1;
                            }
                            Err(GrantError::Full) => std::hint::spin_loop(),
                            Err(e) => panic!("write: {e}"),
                        }
                    }
                },
            )
        });
    });
    g.bench_function("rtrb_copy_in_out/two_threads", |b| {
        b.iter_custom(|iters| {
            let (mut tx, mut rx) = rtrb::RingBuffer::<f32>::new(8 * FRAME_VALUES);
            // Both buffers made before the clock starts.
            let mut dst = vec![0f32; FRAME_VALUES];
            let mut src = vec![0f32; FRAME_VALUES];
            timed_pair(
                move || {
                    let (mut got, mut acc) = (0u64, 0u32);
                    while got < iters {
                        if rx.pop_entire_slice(&mut dst).is_ok() {
                            acc = acc.wrapping_add(consume(&dst));
                            got += 1;
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                    acc
                },
                || {
                    for n in 0..iters {
                        generate(&mut src, n);
                        while tx.push_entire_slice(&src).is_err() {
                            std::hint::spin_loop();
                        }
                    }
                },
            )
        });
    });
    g.finish();
}

/// Producer cost per frame in the lossy policy. Small frames (64 mono samples) so the
/// protocol, not the payload write, dominates.
fn broadcast(c: &mut Criterion) {
    let mut g = c.benchmark_group("broadcast_lossy");
    g.throughput(Throughput::Elements(1));
    let cfg = RingConfig {
        frames: 64,
        samples_per_frame: 64,
        channels: 1,
        format: SampleFormat::F32,
        sample_rate: 48_000,
        max_consumers: 8,
        policy: Policy::Lossy,
    };

    for consumers in [1u16, 2, 4, 8] {
        g.bench_with_input(
            BenchmarkId::new("producer_idle_consumers", consumers),
            &consumers,
            |b, &k| {
                let (_region, ring) = ring(&cfg);
                let mut tx = ring.producer(1).unwrap();
                let _rx: Vec<_> = (0..k)
                    .map(|i| ring.consumer(10 + u64::from(i)).unwrap())
                    .collect();
                let mut n = 0u64;
                b.iter(|| {
                    let mut w = tx.write_grant(1).unwrap();
                    generate(w.frame_mut(0).unwrap().samples_mut::<f32>().unwrap(), n);
                    n += 1;
                    black_box(w.commit_all())
                });
            },
        );
    }

    for consumers in [1u16, 2, 4, 8] {
        g.bench_with_input(
            BenchmarkId::new("producer_active_consumers", consumers),
            &consumers,
            |b, &k| {
                b.iter_custom(|iters| {
                    let (_region, ring) = ring(&cfg);
                    let mut tx = ring.producer(1).unwrap();
                    let stop = AtomicBool::new(false);
                    let start = Barrier::new(usize::from(k) + 1);
                    std::thread::scope(|s| {
                        for i in 0..k {
                            let mut rx = ring.consumer(10 + u64::from(i)).unwrap();
                            let (stop, start) = (&stop, &start);
                            s.spawn(move || {
                                start.wait();
                                let mut acc = 0u32;
                                // Relaxed: a stop flag; nothing else hangs on it.
                                while !stop.load(Ordering::Relaxed) {
                                    match rx.read_grant(64) {
                                        Ok(r) => {
                                            for f in r.frames() {
                                                acc = acc.wrapping_add(consume(
                                                    f.samples::<f32>().unwrap(),
                                                ));
                                            }
                                            // Overwritten while read: lossy, data discarded.
                                            let _ = r.release_all();
                                        }
                                        Err(ReadError::Lost { .. }) => {}
                                        // Two cores, up to nine threads: let the producer run.
                                        Err(ReadError::Empty) => std::thread::yield_now(),
                                        Err(e) => panic!("read: {e}"),
                                    }
                                }
                                black_box(acc);
                            });
                        }
                        start.wait();
                        let t0 = Instant::now();
                        for n in 0..iters {
                            let mut w = tx.write_grant(1).unwrap();
                            generate(w.frame_mut(0).unwrap().samples_mut::<f32>().unwrap(), n);
                            // The consumers here spin, never park: the Wake is empty.
                            let _ = black_box(w.commit_all());
                        }
                        let elapsed = t0.elapsed();
                        // Relaxed: see the consumers' loop.
                        stop.store(true, Ordering::Relaxed);
                        elapsed
                    })
                });
            },
        );
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = item, frame, broadcast
}
criterion_main!(benches);
