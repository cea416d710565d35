//! The wake-free periodic wait (`WaitMode::Periodic`) end to end on a memfd segment: a paced
//! producer, a regular and an irregular stream, a producer that stops. What is checked is the
//! result (every frame, in order, with its bytes; the end of stream), never how fast anything
//! woke: the figures (syscalls per frame, hand-off percentiles) are in `voxring bench ipc
//! --pace-us`, docs/wake-free.md.

use std::time::Duration;

use voxring_core::{FrameFlags, Policy, RingConfig, SampleFormat};
use voxring_linux::clock::monotonic_ns;
use voxring_linux::futex::sleep_until_ns;
use voxring_linux::mapping::MapOptions;
use voxring_linux::ring::{FramesWait, Periodic, Segment, WaitMode};

const GIVE_UP: Option<Duration> = Some(Duration::from_secs(30));

fn segment() -> Segment {
    let cfg = RingConfig {
        frames: 8,
        samples_per_frame: 48, // 1 ms at 48 kHz
        channels: 1,
        format: SampleFormat::S16,
        sample_rate: 48_000,
        max_consumers: 2,
        policy: Policy::Lossless,
    };
    Segment::create_memfd("periodic-wait-test", &cfg, MapOptions::default()).unwrap()
}

/// Produces `gaps.len()` frames, frame `i` committed `gaps[i]` µs after the previous one
/// (absolute schedule), each carrying its number and its commit time; returns how many of the
/// commits asked for a wake syscall.
fn produce(seg: &Segment, gaps: Vec<u64>) -> std::thread::JoinHandle<usize> {
    let mut tx = seg.producer().unwrap();
    std::thread::spawn(move || {
        let mut at = monotonic_ns();
        let mut wakes = 0;
        for (i, gap) in gaps.into_iter().enumerate() {
            at += gap * 1_000;
            sleep_until_ns(at);
            while tx.producer().write_grant(1).is_err() {
                assert_eq!(
                    tx.wait_for_space(GIVE_UP).unwrap(),
                    voxring_linux::ring::SpaceWait::Ready
                );
            }
            let (p, waiter) = tx.parts();
            let payload = (i as u64).to_le_bytes();
            let wake = p
                .push(&payload, i as u64 * 48, monotonic_ns(), FrameFlags::NONE)
                .unwrap();
            wakes += usize::from(wake.needed());
            wake.wake(waiter);
        }
        wakes
    })
}

/// Reads frames until the end of stream; checks each is the next in order.
fn consume_all(seg: &Segment, mode: WaitMode) -> u64 {
    let mut rx = seg.consumer().unwrap();
    rx.set_wait_mode(mode).unwrap();
    rx.set_liveness_interval(Duration::from_millis(5));
    let mut next = 0u64;
    loop {
        match rx.wait_for_frames(GIVE_UP).unwrap() {
            FramesWait::Ready => {}
            FramesWait::EndOfStream => return next,
            FramesWait::TimedOut => panic!("no frame for 30 s after frame {next}"),
        }
        let (c, waiter) = rx.parts();
        let mut buf = [0u8; 96];
        let (meta, wake) = match c.pop(&mut buf) {
            Ok(v) => v,
            Err(voxring_core::PopFrameError::Read(voxring_core::ReadError::Empty)) => continue,
            Err(e) => panic!("{e}"),
        };
        wake.wake(waiter);
        assert_eq!(meta.seq, next);
        assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), next);
        next += 1;
    }
}

fn run(gaps: Vec<u64>, mode: WaitMode) {
    let n = gaps.len() as u64;
    let seg = segment();
    // The consumer joins first so it sees every frame; the producer then starts.
    let s2 = seg.clone();
    let consumer = std::thread::spawn(move || consume_all(&s2, mode));
    // Wait until the consumer joined (bounded), then produce.
    for _ in 0..30_000 {
        if seg.ring().consumer_owner(0).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let wakes = produce(&seg, gaps).join().unwrap();
    let got = consumer.join().unwrap();
    assert_eq!(got, n, "every frame, in order, then the end of stream");
    eprintln!("{n} frames, {wakes} commits needed a wake syscall ({mode:?})");
}

#[test]
fn a_periodic_consumer_gets_every_frame_of_a_regular_stream() {
    run(vec![1_000; 300], WaitMode::Periodic(Periodic::default()));
}

#[test]
fn a_periodic_consumer_falls_back_to_parking_on_an_irregular_stream() {
    // Bursts, long pauses and frames far earlier than due: every frame must still arrive.
    let mut gaps = Vec::new();
    for i in 0..200u64 {
        gaps.push(match i % 7 {
            0 => 0,
            1 => 7_000,
            2 => 1_000,
            3 => 100,
            4 => 3_000,
            5 => 1_000,
            _ => 20_000,
        });
    }
    run(gaps, WaitMode::Periodic(Periodic::default()));
}

#[test]
fn an_explicit_period_and_a_bad_margin() {
    let seg = segment();
    let mut rx = seg.consumer().unwrap();
    let e = rx
        .set_wait_mode(WaitMode::Periodic(Periodic {
            period: Some(Duration::from_micros(100)),
            early: Duration::from_micros(60),
        }))
        .unwrap_err();
    assert!(e.to_string().contains("half"), "{e}");
    rx.set_wait_mode(WaitMode::Periodic(Periodic {
        period: Some(Duration::from_millis(2)),
        early: Duration::from_micros(50),
    }))
    .unwrap();
    assert_eq!(rx.arrivals().unwrap().period_ns(), 2_000_000);
    // Nothing committed, no producer ever: the wait times out (it parks, having learned nothing).
    assert_eq!(
        rx.wait_for_frames(Some(Duration::from_millis(20))).unwrap(),
        FramesWait::TimedOut
    );
    rx.set_wait_mode(WaitMode::SpinThenPark).unwrap();
    assert!(rx.arrivals().is_none());
}
