//! Same-thread hand-over costs measured so that a noisy, shared machine disturbs them least:
//! the variants run in short interleaved batches, round after round, and the report gives
//! each variant's *fastest* and median batch. A preemption or a neighbour's cache storm
//! inflates some batches of every variant alike; the minimum is what the code itself costs.
//! (Criterion, in `rings.rs`, reports means and runs variants minutes apart.)
//!
//! Run: `cargo bench -p voxring-core --bench handoff_min` (about ten seconds). Results and
//! the machine: docs/core-benchmarks.md.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use voxring_core::{Policy, Ring, RingConfig, SampleFormat, StaticRing};

const FRAME_VALUES: usize = 1024; // 512 samples x 2 channels
const ROUNDS: usize = 2_000;
const FRAME_BATCH: u64 = 1_000;
const ITEM_BATCH: u64 = 20_000;

// The same aligned heap region and `Ring::create` the integration tests use.
#[path = "../tests/common/mod.rs"]
mod common;

// The generate / consume / push / pop work, shared with `rings`.
mod work;
use work::{consume, generate, keep, pop_all, push_all};

/// The frame ring both hand-over benchmarks use: 8 slots of one 512-sample stereo f32 frame,
/// lossless, one consumer. The region is returned with the ring and must outlive its handles.
fn frame_ring() -> (common::Region, Ring) {
    common::make(&RingConfig {
        frames: 8,
        samples_per_frame: 512,
        channels: 2,
        format: SampleFormat::F32,
        sample_rate: 48_000,
        max_consumers: 1,
        policy: Policy::Lossless,
    })
}

/// One variant: a name and a closure running `n` hand-overs.
struct Variant<'a> {
    name: &'static str,
    batch: u64,
    run: Box<dyn FnMut(u64) + 'a>,
    per_op_ns: Vec<f64>,
}

impl<'a> Variant<'a> {
    /// `run` does `batch` hand-overs a call; no batch timed yet.
    fn new(name: &'static str, batch: u64, run: impl FnMut(u64) + 'a) -> Self {
        Self {
            name,
            batch,
            run: Box::new(run),
            per_op_ns: Vec::new(),
        }
    }
}

fn report(title: &str, variants: &mut [Variant<'_>], baseline: Option<&str>, rtrb: &str) {
    println!("\n{title}");
    println!(
        "{:<44} {:>10} {:>10} {:>14}",
        "variant", "min ns", "median ns", "rtrb min / min"
    );
    let mins: Vec<(&str, f64)> = variants
        .iter_mut()
        .map(|v| {
            v.per_op_ns.sort_by(f64::total_cmp);
            (v.name, v.per_op_ns[0])
        })
        .collect();
    let rtrb_min = mins.iter().find(|(n, _)| *n == rtrb).map(|m| m.1);
    for v in variants.iter() {
        let min = v.per_op_ns[0];
        let median = v.per_op_ns[v.per_op_ns.len() / 2];
        let ratio = rtrb_min.map_or(String::new(), |r| format!("{:.2}", r / min));
        println!(
            "{:<44} {:>10.1} {:>10.1} {:>14}",
            v.name, min, median, ratio
        );
    }
    if let Some(base) = baseline {
        let floor = mins.iter().find(|(n, _)| *n == base).map(|m| m.1).unwrap();
        let rtrb_over = rtrb_min.unwrap() - floor;
        println!("hand-over cost above the `{base}` floor (min - floor):");
        for (name, min) in &mins {
            if *name != base {
                let over = min - floor;
                println!(
                    "  {:<42} {:>8.1} ns   rtrb / this: {:.2}",
                    name,
                    over,
                    rtrb_over / over
                );
            }
        }
    }
}

fn run_rounds(variants: &mut [Variant<'_>]) {
    let k = variants.len();
    for round in 0..ROUNDS {
        for j in 0..k {
            // Rotate the order so no variant always follows the same one.
            let v = &mut variants[(round + j) % k];
            let t0 = Instant::now();
            (v.run)(v.batch);
            let ns = t0.elapsed().as_nanos() as f64 / v.batch as f64;
            v.per_op_ns.push(ns);
        }
    }
}

fn frames() {
    // `_region` outlives the ring and every handle, all dropped before it (declared first).
    let (_region, ring) = frame_ring();
    let mut tx = ring.producer(1).unwrap();
    let mut rx = ring.consumer(2).unwrap();

    let sring = Box::new(StaticRing::<f32, { 8 * FRAME_VALUES }>::new(0.0));
    let (mut stx, mut srx) = sring.split().unwrap();
    let (mut rtx, mut rrx) = rtrb::RingBuffer::<f32>::new(8 * FRAME_VALUES);
    let mut src = vec![0f32; FRAME_VALUES];
    let mut dst = vec![0f32; FRAME_VALUES];
    let mut work = vec![0f32; FRAME_VALUES];

    let mut variants = vec![
        Variant::new("work_only_no_ring", FRAME_BATCH, |n| {
            for i in 0..n {
                generate(&mut work, i);
                black_box(consume(black_box(&work)));
            }
        }),
        Variant::new("voxring_ring_in_place", FRAME_BATCH, |n| {
            for i in 0..n {
                let mut w = tx.write_grant(1).unwrap();
                generate(w.frame_mut(0).unwrap().samples_mut::<f32>().unwrap(), i);
                let _ = w.commit_all();
                let r = rx.read_grant(1).unwrap();
                black_box(consume(r.frame(0).unwrap().samples::<f32>().unwrap()));
                let _ = r.release_all().unwrap();
            }
        }),
        Variant::new("voxring_static_ring_in_place", FRAME_BATCH, |n| {
            for i in 0..n {
                let mut w = stx.write_chunk(FRAME_VALUES).unwrap();
                generate(w.as_mut_slices().0, i);
                w.commit(FRAME_VALUES).unwrap();
                let r = srx.read_chunk(FRAME_VALUES).unwrap();
                black_box(consume(r.as_slices().0));
                r.release(FRAME_VALUES).unwrap();
            }
        }),
        Variant::new("rtrb_copy_in_out", FRAME_BATCH, |n| {
            for i in 0..n {
                generate(&mut src, i);
                rtx.push_entire_slice(&src).unwrap();
                rrx.pop_entire_slice(&mut dst).unwrap();
                black_box(consume(&dst));
            }
        }),
    ];
    run_rounds(&mut variants);
    report(
        "512x2 f32 frame, generate + hand over + consume, one thread (ns per frame)",
        &mut variants,
        Some("work_only_no_ring"),
        "rtrb_copy_in_out",
    );
}

fn items() {
    let sring = Box::new(StaticRing::<u64, 1024>::new(0));
    let (mut stx, mut srx) = sring.split().unwrap();
    let (mut rtx, mut rrx) = rtrb::RingBuffer::<u64>::new(1024);
    let mut variants = vec![
        Variant::new("voxring_static_ring_push_pop", ITEM_BATCH, |n| {
            for i in 0..n {
                stx.push(black_box(i)).unwrap();
                black_box(srx.pop().unwrap());
            }
        }),
        Variant::new("rtrb_push_pop", ITEM_BATCH, |n| {
            for i in 0..n {
                rtx.push(black_box(i)).unwrap();
                black_box(rrx.pop().unwrap());
            }
        }),
    ];
    run_rounds(&mut variants);
    report(
        "u64 item, push + pop, one thread (ns per item)",
        &mut variants,
        None,
        "rtrb_push_pop",
    );
}

/// A consumer thread driven batch by batch: parked between batches, so several can exist on
/// two cores without stealing time from the pair being measured.
struct Remote<'s> {
    thread: std::thread::ScopedJoinHandle<'s, ()>,
    ctl: &'s RemoteCtl,
}

#[derive(Default)]
struct RemoteCtl {
    /// Items to consume in the next batch; 0: none; `u64::MAX`: exit.
    request: AtomicU64,
    started: AtomicBool,
    done: AtomicBool,
}

impl<'s> Remote<'s> {
    fn spawn(
        s: &'s std::thread::Scope<'s, '_>,
        ctl: &'s RemoteCtl,
        mut consume_n: impl FnMut(u64) + Send + 's,
    ) -> Self {
        let thread = s.spawn(move || {
            loop {
                // Acquire: pairs with the Release store of `request` in `batch`.
                let n = ctl.request.load(Ordering::Acquire);
                if n == 0 {
                    std::thread::park();
                    continue;
                }
                if n == u64::MAX {
                    break;
                }
                // Release: pairs with the Acquire spin in `batch` (the consumer is running).
                ctl.started.store(true, Ordering::Release);
                consume_n(n);
                ctl.request.store(0, Ordering::Relaxed);
                // Release: pairs with the Acquire spin in `batch`; publishes `request = 0`.
                ctl.done.store(true, Ordering::Release);
            }
        });
        Remote { thread, ctl }
    }

    /// Runs one batch: wakes the consumer, waits until it runs, times `produce_n(n)` until
    /// the consumer has taken all `n`.
    fn batch(&self, n: u64, produce_n: &mut dyn FnMut(u64)) -> f64 {
        // Release: pairs with the consumer's Acquire load of `request`.
        self.ctl.request.store(n, Ordering::Release);
        self.thread.thread().unpark();
        // Acquire: pairs with the consumer's Release store of `started`.
        while !self.ctl.started.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        self.ctl.started.store(false, Ordering::Relaxed);
        let t0 = Instant::now();
        produce_n(n);
        // Acquire: pairs with the consumer's Release store of `done`.
        while !self.ctl.done.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let ns = t0.elapsed().as_nanos() as f64 / n as f64;
        self.ctl.done.store(false, Ordering::Relaxed);
        ns
    }

    fn stop(self) {
        // Release: as in `batch`.
        self.ctl.request.store(u64::MAX, Ordering::Release);
        self.thread.thread().unpark();
        self.thread.join().unwrap();
    }
}

fn summarise(name: &str, v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    println!("{:<44} {:>10.1} {:>10.1}", name, v[0], v[v.len() / 2]);
    v[0]
}

fn two_threads() {
    const ROUNDS_X: usize = 300;
    let sring = Box::new(StaticRing::<u64, 1024>::new(0));
    let (mut stx, srx) = sring.split().unwrap();
    let (mut rtx, rrx) = rtrb::RingBuffer::<u64>::new(1024);

    // `_region` outlives the ring and every handle, all dropped before it (declared first).
    let (_region, ring) = frame_ring();
    let mut ftx = ring.producer(1).unwrap();
    let frx = ring.consumer(2).unwrap();
    let (mut ftx2, frx2) = rtrb::RingBuffer::<f32>::new(8 * FRAME_VALUES);

    let ctls: [RemoteCtl; 4] = Default::default();
    let (mut vs, mut vr, mut fv, mut fr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    std::thread::scope(|s| {
        let mut srx = srx;
        let vox = Remote::spawn(s, &ctls[0], move |n| pop_all(n, || srx.pop().ok(), keep));
        let mut rrx = rrx;
        let rt = Remote::spawn(s, &ctls[1], move |n| pop_all(n, || rrx.pop().ok(), keep));
        let mut frx = frx;
        let fvox = Remote::spawn(s, &ctls[2], move |n| {
            let mut got = 0u64;
            while got < n {
                match frx.read_grant(8) {
                    Ok(r) => {
                        for f in r.frames() {
                            black_box(consume(f.samples::<f32>().unwrap()));
                        }
                        got += r.len() as u64;
                        let _ = r.release_all().unwrap();
                    }
                    Err(_) => std::hint::spin_loop(),
                }
            }
        });
        let mut frx2 = frx2;
        let frt = Remote::spawn(s, &ctls[3], move |n| {
            let mut dst = vec![0f32; FRAME_VALUES];
            let mut got = 0;
            while got < n {
                if frx2.pop_entire_slice(&mut dst).is_ok() {
                    black_box(consume(&dst));
                    got += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        let mut src = vec![0f32; FRAME_VALUES];
        for _ in 0..ROUNDS_X {
            vs.push(vox.batch(ITEM_BATCH, &mut |n| {
                push_all(n, |v| match stx.push(v) {
                    Err(voxring_core::PushError::Full(b)) => Err(b),
                    _ => Ok(()),
                })
            }));
            vr.push(rt.batch(ITEM_BATCH, &mut |n| {
                push_all(n, |v| match rtx.push(v) {
                    Err(rtrb::PushError::Full(b)) => Err(b),
                    _ => Ok(()),
                })
            }));
            fv.push(fvox.batch(FRAME_BATCH, &mut |n| {
                let mut i = 0;
                while i < n {
                    if let Ok(mut w) = ftx.write_grant(1) {
                        generate(w.frame_mut(0).unwrap().samples_mut::<f32>().unwrap(), i);
                        let _ = w.commit_all();
                        i += 1;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }));
            fr.push(frt.batch(FRAME_BATCH, &mut |n| {
                for i in 0..n {
                    generate(&mut src, i);
                    while ftx2.push_entire_slice(&src).is_err() {
                        std::hint::spin_loop();
                    }
                }
            }));
        }
        for r in [vox, rt, fvox, frt] {
            r.stop();
        }
    });
    println!("\nproducer and consumer on two threads, interleaved batches ({ROUNDS_X} rounds)");
    println!("{:<44} {:>10} {:>10}", "variant", "min ns", "median ns");
    let a = summarise("item: voxring_static_ring", &mut vs);
    let b = summarise("item: rtrb", &mut vr);
    println!("  rtrb min / voxring min: {:.2}", b / a);
    let c = summarise("frame: voxring_ring_in_place", &mut fv);
    let d = summarise("frame: rtrb_copy_in_out", &mut fr);
    println!("  rtrb min / voxring min: {:.2}", d / c);
}

fn main() {
    // `cargo bench` passes `--bench` (and any filter); this program has nothing to filter.
    println!(
        "interleaved batches: {ROUNDS} rounds, {FRAME_BATCH} frames / {ITEM_BATCH} items per batch"
    );
    frames();
    items();
    two_threads();
}
