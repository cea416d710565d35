//! The bridge end to end: `voxring-bridge export` and `import` as processes, on loopback and
//! across a veth pair between two network namespaces; faults injected on the import side
//! (`--inject-drop-every`, `--inject-jitter-ms`: this kernel has no netem). No assertion on
//! elapsed time: durations below are only "give up" bounds.

use std::path::Path;
use std::time::{Duration, Instant};

use voxring_bridge::topo::{NETNS_ADDR, NetnsPair, Side, free_local_port};
use voxring_core::{FrameFlags, FrameMeta, Policy, ReadError, RingConfig, SampleFormat};
use voxring_linux::ring::{FramesWait, Segment, ShmConsumer};
use voxring_linux::segment::{AttachOptions, CreateOptions};

const EXE: &str = env!("CARGO_BIN_EXE_voxring-bridge");
const GIVE_UP: Duration = Duration::from_secs(60);
/// 32 samples at 16 kHz: 2 ms frames.
const SPF: u32 = 32;
const FORMAT: &str = "32:1:16000:s16";

fn names(tag: &str) -> (String, String, String) {
    let t = format!("vxbt{}{tag}", std::process::id());
    (
        format!("{t}-src"),
        format!("{t}-dst"),
        format!("voxring/test/{t}"),
    )
}

fn source_ring(name: &str) -> Segment {
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
fn frame(i: u64) -> (Vec<u8>, u64, u64, FrameFlags) {
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

/// Writes frames `range` at 2 ms per frame.
fn produce(seg: &Segment, range: std::ops::Range<u64>) {
    let mut tx = seg.producer().expect("producer");
    let start = Instant::now();
    for (k, i) in range.enumerate() {
        let due = start + Duration::from_millis(2) * k as u32;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let (payload, pos, ts, flags) = frame(i);
        let (p, waiter) = tx.parts();
        p.push(&payload, pos, ts, flags).expect("push").wake(waiter);
    }
}

fn attach_when_there(name: &str) -> Segment {
    let end = Instant::now() + GIVE_UP;
    loop {
        match Segment::attach(name, &AttachOptions::default()) {
            Ok(s) => return s,
            Err(e) if Instant::now() > end => panic!("ring {name} never appeared: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Reads until `n` frames were read (give-up bound: GIVE_UP).
fn read_frames(rx: &mut ShmConsumer, n: usize) -> Vec<(FrameMeta, Vec<u8>)> {
    let mut out = Vec::new();
    let end = Instant::now() + GIVE_UP;
    while out.len() < n {
        assert!(
            Instant::now() < end,
            "only {} of {n} frames arrived",
            out.len()
        );
        if rx
            .wait_for_frames(Some(Duration::from_millis(100)))
            .unwrap()
            != FramesWait::Ready
        {
            continue;
        }
        let (c, waiter) = rx.parts();
        let g = match c.read_grant(64) {
            Ok(g) => g,
            Err(ReadError::Empty) => continue,
            Err(e) => panic!("reading the imported ring: {e}"),
        };
        let got: Vec<_> = g
            .frames()
            .map(|f| (f.meta(), f.payload().to_vec()))
            .collect();
        g.release_all().expect("release").wake(waiter);
        out.extend(got);
    }
    out
}

/// Where each side runs.
enum Net<'a> {
    Loopback(u16),
    Veth(&'a NetnsPair),
}

impl Net<'_> {
    fn locator(&self) -> String {
        match self {
            Net::Loopback(port) => format!("tcp/127.0.0.1:{port}"),
            Net::Veth(_) => format!("tcp/{}:7447", NETNS_ADDR[0]),
        }
    }
    fn command(&self, side: usize) -> std::process::Command {
        match self {
            Net::Loopback(_) => std::process::Command::new(EXE),
            Net::Veth(n) => n.command(side, Path::new(EXE)),
        }
    }
}

fn exporter(net: &Net, src: &str, key: &str) -> Side {
    let mut c = net.command(0);
    c.args(["export", src, "--key", key, "--listen", &net.locator()]);
    let mut s = Side::spawn("exporter", c).unwrap();
    s.wait_line("exporting", GIVE_UP).unwrap();
    s
}

fn importer(net: &Net, key: &str, dst: &str, extra: &[&str]) -> Side {
    let mut c = net.command(1);
    c.args([
        "import",
        key,
        "--ring",
        dst,
        "--connect",
        &net.locator(),
        "--format",
        FORMAT,
    ]);
    c.args(["--ring-frames", "512"]).args(extra);
    let mut s = Side::spawn("importer", c).unwrap();
    s.wait_line("importing", GIVE_UP).unwrap();
    s
}

fn stats(side: &mut Side) -> serde_json::Value {
    serde_json::from_str(&side.terminate(GIVE_UP).unwrap()).unwrap()
}

fn assert_gone(names: &[&str]) {
    for n in names {
        let p = format!("/dev/shm/voxring.{n}");
        assert!(!Path::new(&p).exists(), "{p} was left behind");
    }
}

/// Sends `frames` frames through export → import (with `extra` import flags) and checks
/// what the consumer of the imported ring got against what was sent: every delivered frame
/// bit-exact, a discontinuity flag exactly after each gap, and the gaps exactly the frames
/// `dropped(seq)` says. Returns the importer's final counters.
fn run_case(
    net: &Net,
    tag: &str,
    frames: u64,
    extra: &[&str],
    dropped: impl Fn(u64) -> bool,
) -> serde_json::Value {
    let (src, dst, key) = names(tag);
    let seg = source_ring(&src);
    let mut ex = exporter(net, &src, &key);
    let mut im = importer(net, &key, &dst, extra);
    ex.wait_line("importer present", GIVE_UP).unwrap();
    let out_seg = attach_when_there(&dst);
    let mut rx = out_seg.consumer().unwrap();
    let expected: Vec<u64> = (0..frames).filter(|s| !dropped(*s)).collect();
    produce(&seg, 0..frames);
    let got = read_frames(&mut rx, expected.len());
    let mut prev: Option<u64> = None;
    for ((meta, payload), seq) in got.iter().zip(&expected) {
        let (p, pos, ts, flags) = frame(*seq);
        assert_eq!(payload, &p, "frame {seq}: payload differs");
        assert_eq!(
            (meta.sample_pos, meta.timestamp_ns),
            (pos, ts),
            "frame {seq}"
        );
        let gap = prev.is_some_and(|q| q + 1 != *seq);
        let want = if gap {
            flags | FrameFlags::DISCONTINUITY
        } else {
            flags
        };
        assert_eq!(meta.flags, want, "frame {seq}: flags");
        prev = Some(*seq);
    }
    drop(rx);
    drop(out_seg);
    let s = stats(&mut im);
    let e = stats(&mut ex);
    drop(seg);
    assert_eq!(e["read"], frames, "exporter: {e}");
    assert_gone(&[&src, &dst]);
    s
}

#[test]
fn frames_arrive_bit_exact_over_loopback() {
    let net = Net::Loopback(free_local_port().unwrap());
    let s = run_case(&net, "exact", 300, &[], |_| false);
    assert_eq!(
        (s["played"].as_u64(), s["lost"].as_u64()),
        (Some(300), Some(0)),
        "{s}"
    );
}

#[test]
fn injected_loss_is_counted_exactly_and_flagged() {
    let net = Net::Loopback(free_local_port().unwrap());
    // Frames 4, 9, 14 ... 299 dropped; frame 300 is the last (a loss is known once a later
    // frame is due).
    let s = run_case(
        &net,
        "loss",
        301,
        &["--inject-drop-every", "5", "--target-ms", "100"],
        |q| q % 5 == 4,
    );
    assert_eq!(s["injected_drops"].as_u64(), Some(60), "{s}");
    assert_eq!(s["lost"].as_u64(), Some(60), "{s}");
    assert_eq!(s["played"].as_u64(), Some(241), "{s}");
}

#[test]
fn jitter_under_the_target_plays_out_on_time_with_no_loss() {
    let net = Net::Loopback(free_local_port().unwrap());
    // Up to 40 ms of delay on 2 ms frames: reordered by up to 20 frames. Target 250 ms.
    let s = run_case(
        &net,
        "jitter",
        400,
        &["--inject-jitter-ms", "40", "--target-ms", "250"],
        |_| false,
    );
    assert_eq!(s["lost"].as_u64(), Some(0), "{s}");
    assert_eq!(s["late"].as_u64(), Some(0), "{s}");
    assert_eq!(s["played"].as_u64(), Some(400), "{s}");
}

fn netns_pair() -> NetnsPair {
    NetnsPair::create()
        .unwrap_or_else(|e| panic!("this test needs two network namespaces and a veth pair: {e:#}"))
}

#[test]
fn across_a_veth_pair_frames_are_exact_losses_counted_and_jitter_absorbed() {
    let pair = netns_pair();
    let net = Net::Veth(&pair);
    let s = run_case(&net, "vexact", 200, &[], |_| false);
    assert_eq!(
        (s["played"].as_u64(), s["lost"].as_u64()),
        (Some(200), Some(0)),
        "{s}"
    );
    let s = run_case(
        &net,
        "vloss",
        200,
        &["--inject-drop-every", "7", "--target-ms", "100"],
        |q| q % 7 == 6,
    );
    assert_eq!(s["lost"].as_u64(), Some(28), "{s}");
    let s = run_case(
        &net,
        "vjit",
        200,
        &["--inject-jitter-ms", "30", "--target-ms", "250"],
        |_| false,
    );
    assert_eq!(
        (s["lost"].as_u64(), s["late"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    drop(pair);
}
