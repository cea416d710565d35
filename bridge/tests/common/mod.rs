//! What the bridge's integration tests share: the source ring, the frames they send, and how
//! they wait for, read and check rings. Each test file uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use voxring_bridge::topo::Side;
use voxring_core::{FrameFlags, FrameMeta, Policy, ReadError, RingConfig, SampleFormat};
use voxring_linux::ring::{FramesWait, Segment, ShmConsumer};
use voxring_linux::segment::{AttachOptions, CreateOptions};

pub const EXE: &str = env!("CARGO_BIN_EXE_voxring-bridge");
/// Only a give-up bound: how long a test waits for something before it fails.
pub const GIVE_UP: Duration = Duration::from_secs(90);
/// Samples per frame of the source ring (mono s16 at 16 kHz), and its `--format`.
pub const SPF: u32 = 32;
pub const FORMAT: &str = "32:1:16000:s16";

pub fn source_ring(name: &str) -> Segment {
    let cfg = RingConfig {
        frames: 512,
        samples_per_frame: SPF,
        channels: 1,
        format: SampleFormat::S16,
        sample_rate: 16_000,
        max_consumers: 4,
        policy: Policy::Lossless,
    };
    Segment::create(name, &cfg, &CreateOptions::default()).expect("source ring")
}

/// The bytes and metadata of frame `i` (different for every frame).
pub fn frame(i: u64) -> (Vec<u8>, u64, u64, FrameFlags) {
    let payload = (0..SPF as u64 * 2)
        .map(|b| (i.wrapping_mul(2654435761).wrapping_add(b * 31) >> 3) as u8)
        .collect();
    let flags = if i % 11 == 5 {
        FrameFlags::XRUN
    } else {
        FrameFlags::NONE
    };
    (payload, i * u64::from(SPF), 1_000_000 + i * 7_919, flags)
}

/// Writes frames `ids` at 2 ms per frame; the k-th is stamped with the sample position of
/// frame `first_pos + k`.
pub fn produce(seg: &Segment, ids: std::ops::Range<u64>, first_pos: u64) {
    let mut tx = seg.producer().expect("producer");
    let start = Instant::now();
    for (k, i) in ids.enumerate() {
        let due = start + Duration::from_millis(2) * k as u32;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let (payload, _, ts, flags) = frame(i);
        let pos = (first_pos + k as u64) * u64::from(SPF);
        let (p, waiter) = tx.parts();
        p.push(&payload, pos, ts, flags).expect("push").wake(waiter);
    }
}

pub fn attach_when_there(name: &str) -> Segment {
    let end = Instant::now() + GIVE_UP;
    loop {
        match Segment::attach(name, &AttachOptions::default()) {
            Ok(s) => return s,
            Err(e) if Instant::now() > end => panic!("ring {name} never appeared: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Reads until `n` frames were read, or (with `n` = 0) drains what is there now.
pub fn read_frames(rx: &mut ShmConsumer, n: usize) -> Vec<(FrameMeta, Vec<u8>)> {
    let mut out = Vec::new();
    if n == 0 {
        loop {
            let got = take_grant(rx);
            if got.is_empty() {
                return out;
            }
            out.extend(got);
        }
    }
    let end = Instant::now() + GIVE_UP;
    while out.len() < n {
        assert!(
            Instant::now() < end,
            "only {} of {n} frames arrived",
            out.len()
        );
        out.extend(read_ready(rx));
    }
    out
}

/// Waits (up to 100 ms) for frames, then reads what one grant gives; empty when none came.
pub fn read_ready(rx: &mut ShmConsumer) -> Vec<(FrameMeta, Vec<u8>)> {
    let ready = rx.wait_for_frames(Some(Duration::from_millis(100)));
    if ready.unwrap() != FramesWait::Ready {
        return Vec::new();
    }
    take_grant(rx)
}

/// The frames of one read grant (up to 64, copied out), released with the wake passed on;
/// empty when none is ready.
fn take_grant(rx: &mut ShmConsumer) -> Vec<(FrameMeta, Vec<u8>)> {
    let (c, waiter) = rx.parts();
    let g = match c.read_grant(64) {
        Ok(g) => g,
        Err(ReadError::Empty) => return Vec::new(),
        Err(e) => panic!("reading an imported ring: {e}"),
    };
    let got: Vec<_> = g
        .frames()
        .map(|f| (f.meta(), f.payload().to_vec()))
        .collect();
    g.release_all().expect("release").wake(waiter);
    got
}

/// Stops a side and returns the counters it printed.
pub fn stats(side: &mut Side) -> serde_json::Value {
    serde_json::from_str(&side.terminate(GIVE_UP).unwrap()).unwrap()
}

/// Checks a side's final counters (its JSON line): each `(name, value)` of `want`. `context`
/// says what a difference means; the message shows every counter.
pub fn assert_counters(s: &serde_json::Value, want: &[(&str, u64)], context: &str) {
    let got: Vec<(&str, Option<u64>)> = want.iter().map(|&(k, _)| (k, s[k].as_u64())).collect();
    let want: Vec<(&str, Option<u64>)> = want.iter().map(|&(k, v)| (k, Some(v))).collect();
    assert_eq!(got, want, "{context}: {s}");
}

pub fn assert_gone(names: &[&str]) {
    for n in names {
        let p = format!("/dev/shm/voxring.{n}");
        assert!(!Path::new(&p).exists(), "{p} was left behind");
    }
}

/// Removes what a failed run left (dead segments of the test's names) when the test ends: it
/// is declared first, so it drops after every process was stopped or killed.
pub struct LeaveNoTrace(pub String);

impl Drop for LeaveNoTrace {
    fn drop(&mut self) {
        let prefix = format!("voxring.{}", self.0);
        let _ = voxring_linux::cleanup::clean_segments_matching(|f| f.starts_with(&prefix));
    }
}
