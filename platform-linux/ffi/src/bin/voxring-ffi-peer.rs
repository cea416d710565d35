//! A Rust peer for the C and Python binding tests (and `voxring bench ipc`'s binding
//! transports): a producer that writes a known pattern into a ring, or a consumer that reads
//! and checks it, in a process of its own.
//!
//! ```text
//! voxring-ffi-peer produce NAME [--policy lossless|lossy] [--count N] [--frames F] [--spf S]
//!                  [--consumers K] [--fallback SOCKET] [--socket-mode 0666] [--xrun-every M]
//!                  [--interval-us U]
//! voxring-ffi-peer consume NAME
//! ```
//!
//! Frames are 1-channel S16; sample `i` of frame `seq` is `pattern(seq, i)` (see
//! [`pattern`]), the last frame carries END_OF_STREAM. The producer prints `ready` once the
//! ring (and fallback socket) exist, waits for `K` consumers, writes, prints
//! `done crc=<hex> frames=<n> xruns=<n>` (CRC-32 of every payload byte in order), then waits
//! for the consumers to leave (at most 30 s) and exits, removing the segment. The consumer
//! prints `ready` once joined and `done crc=<hex> frames=<n> lost=<n> bad=<n> xruns=<n>`.
//! Timing: with `--interval-us`, the producer stamps each frame with CLOCK_MONOTONIC at commit
//! and paces itself (for hand-off measurements).

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use voxring_core::{FrameFlags, Policy, ReadError, ReleaseError, RingConfig, SampleFormat};
use voxring_linux::cleanup::{SignalMode, install_signal_cleanup};
use voxring_linux::clock::monotonic_ns;
use voxring_linux::fallback::FallbackServer;
use voxring_linux::ring::{FramesWait, Segment};
use voxring_linux::segment::{AttachOptions, CreateOptions};

/// Sample `i` of frame `seq`.
fn pattern(seq: u64, i: usize) -> i16 {
    (seq.wrapping_mul(7919).wrapping_add(i as u64 * 31) & 0xffff) as u16 as i16
}

struct Args {
    policy: Policy,
    count: u64,
    frames: u32,
    spf: u32,
    consumers: u32,
    fallback: Option<String>,
    socket_mode: u32,
    xrun_every: u64,
    interval: Option<Duration>,
}

fn parse(rest: &[String]) -> Result<Args, String> {
    let mut a = Args {
        policy: Policy::Lossless,
        count: 1000,
        frames: 16,
        spf: 512,
        consumers: 1,
        fallback: None,
        socket_mode: 0o600,
        xrun_every: 0,
        interval: None,
    };
    let mut it = rest.iter();
    while let Some(k) = it.next() {
        let mut v = || it.next().cloned().ok_or(format!("{k} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{k}: {e}"));
        match k.as_str() {
            "--policy" => {
                a.policy = match v()?.as_str() {
                    "lossless" => Policy::Lossless,
                    "lossy" => Policy::Lossy,
                    p => return Err(format!("unknown policy {p}")),
                }
            }
            "--count" => a.count = num(v()?)?.max(1),
            "--frames" => a.frames = num(v()?)? as u32,
            "--spf" => a.spf = num(v()?)? as u32,
            "--consumers" => a.consumers = num(v()?)? as u32,
            "--fallback" => a.fallback = Some(v()?),
            "--socket-mode" => {
                a.socket_mode = u32::from_str_radix(v()?.trim_start_matches("0o"), 8)
                    .map_err(|e| e.to_string())?
            }
            "--xrun-every" => a.xrun_every = num(v()?)?,
            "--interval-us" => a.interval = Some(Duration::from_micros(num(v()?)?)),
            _ => return Err(format!("unknown option {k}")),
        }
    }
    Ok(a)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn produce(name: &str, a: &Args) -> Result<(), String> {
    let cfg = RingConfig {
        frames: a.frames,
        samples_per_frame: a.spf,
        channels: 1,
        format: SampleFormat::S16,
        sample_rate: 48_000,
        max_consumers: 4,
        policy: a.policy,
    };
    let seg = Segment::create(name, &cfg, &CreateOptions::default()).map_err(|e| e.to_string())?;
    let server = match &a.fallback {
        Some(p) => Some(
            FallbackServer::serve(&seg, std::path::Path::new(p), a.socket_mode)
                .map_err(|e| format!("fallback socket {p}: {e}"))?,
        ),
        None => None,
    };
    let joined = |seg: &Segment| {
        (0..cfg.max_consumers)
            .filter(|&i| seg.ring().consumer_owner(i).is_some())
            .count() as u32
    };
    let mut tx = seg.producer().map_err(|e| e.to_string())?;
    say("ready");
    let t0 = Instant::now();
    while joined(&seg) < a.consumers {
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "{} consumer(s) did not join within 30 s",
                a.consumers
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut crc = crc32fast::Hasher::new();
    let mut xruns = 0u64;
    let mut seq = 0u64;
    let mut next = Instant::now();
    while seq < a.count {
        if let Some(iv) = a.interval {
            next += iv;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        let waiter = *tx.waiter();
        let full = match tx.producer().write_grant(1) {
            Ok(mut g) => {
                if let Some(mut f) = g.frame_mut(0) {
                    let s = f.seq();
                    let samples = f.samples_mut::<i16>().map_err(|e| e.to_string())?;
                    for (i, x) in samples.iter_mut().enumerate() {
                        *x = pattern(s, i);
                    }
                    crc.update(f.payload_mut());
                    let mut flags = FrameFlags::NONE;
                    if a.xrun_every > 0 && s % a.xrun_every == 0 {
                        flags |= FrameFlags::XRUN;
                        xruns += 1;
                    }
                    if s + 1 == a.count {
                        flags |= FrameFlags::END_OF_STREAM;
                    }
                    f.set_flags(flags);
                    f.set_sample_pos(s * u64::from(a.spf));
                    f.set_timestamp_ns(monotonic_ns());
                }
                g.commit_all().wake(&waiter);
                seq += 1;
                false
            }
            Err(voxring_core::GrantError::Full) => true,
            Err(e) => return Err(e.to_string()),
        };
        if full {
            tx.wait_for_space(Some(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?;
        }
    }
    say(&format!(
        "done crc={:08x} frames={} xruns={xruns}",
        crc.finalize(),
        a.count
    ));
    drop(tx);
    let t0 = Instant::now();
    while joined(&seg) > 0 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(server);
    Ok(())
}

fn consume(name: &str) -> Result<(), String> {
    let seg = Segment::attach(name, &AttachOptions::default()).map_err(|e| e.to_string())?;
    let mut rx = seg.consumer().map_err(|e| e.to_string())?;
    say("ready");
    let (mut frames, mut lost, mut bad, mut xruns) = (0u64, 0u64, 0u64, 0u64);
    let mut crc = crc32fast::Hasher::new();
    'outer: loop {
        match rx.wait_for_frames(Some(Duration::from_secs(30))) {
            Ok(FramesWait::Ready) => {}
            Ok(FramesWait::EndOfStream) => break,
            Ok(FramesWait::TimedOut) => return Err("no frame for 30 s".into()),
            Err(e) => return Err(e.to_string()),
        }
        let (c, waiter) = rx.parts();
        let g = match c.read_grant(8) {
            Ok(g) => g,
            Err(ReadError::Empty) => continue,
            Err(ReadError::Lost { frames }) => {
                lost += frames;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        // Per frame: (intact, xrun, end); counted only once the release says the frame was
        // not overwritten while read (lossy policy).
        let mut batch = [(false, false, false); 8];
        let n = g.len();
        for (slot, f) in batch.iter_mut().zip(g.frames()) {
            let m = f.meta();
            let ok = f
                .samples::<i16>()
                .map(|s| s.iter().enumerate().all(|(i, &x)| x == pattern(m.seq, i)))
                .unwrap_or(false);
            crc.update(f.payload());
            *slot = (
                ok,
                m.flags.contains(FrameFlags::XRUN),
                m.flags.contains(FrameFlags::END_OF_STREAM),
            );
        }
        let skip = match g.release_all() {
            Ok(w) => {
                w.wake(waiter);
                0
            }
            Err(ReleaseError::Overwritten { frames: k }) => {
                lost += k;
                k as usize
            }
            Err(e) => return Err(e.to_string()),
        };
        let mut end = false;
        for &(ok, xrun, eos) in batch.iter().take(n).skip(skip) {
            frames += 1;
            bad += u64::from(!ok);
            xruns += u64::from(xrun);
            end |= eos;
        }
        if end {
            break 'outer;
        }
    }
    say(&format!(
        "done crc={:08x} frames={frames} lost={lost} bad={bad} xruns={xruns}",
        crc.finalize()
    ));
    Ok(())
}

fn main() -> ExitCode {
    let _ = install_signal_cleanup(SignalMode::Exit);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [cmd, name, rest @ ..] if cmd == "produce" => parse(rest).and_then(|a| produce(name, &a)),
        [cmd, name] if cmd == "consume" => consume(name),
        _ => Err("usage: voxring-ffi-peer produce NAME [options] | consume NAME".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxring-ffi-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
