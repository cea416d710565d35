//! The bridge end to end: `voxring-bridge export` and `import` as processes, on loopback and
//! across a veth pair between two network namespaces; faults injected on the import side
//! (`--inject-drop-every`, `--inject-jitter-ms`: this kernel has no netem). No assertion on
//! elapsed time: durations below are only "give up" bounds.

mod common;

use std::path::Path;

use common::{
    EXE, FORMAT, GIVE_UP, assert_counters, assert_gone, attach_when_there, frame, produce,
    read_frames, source_ring, stats,
};
use voxring_bridge::topo::{
    NETNS_ADDR, NetnsPair, Side, export_args, free_local_port, import_args,
};
use voxring_core::FrameFlags;

fn names(tag: &str) -> (String, String, String) {
    let t = format!("vxbt{}{tag}", std::process::id());
    (
        format!("{t}-src"),
        format!("{t}-dst"),
        format!("voxring/test/{t}"),
    )
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
    export_args(&mut c, src, key, &net.locator());
    let mut s = Side::spawn("exporter", c).unwrap();
    s.wait_line("exporting", GIVE_UP).unwrap();
    s
}

fn importer(net: &Net, key: &str, dst: &str, extra: &[&str]) -> Side {
    let mut c = net.command(1);
    import_args(&mut c, key, dst, &net.locator(), FORMAT)
        .args(["--ring-frames", "512"])
        .args(extra);
    let mut s = Side::spawn("importer", c).unwrap();
    s.wait_line("importing", GIVE_UP).unwrap();
    s
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
    produce(&seg, 0..frames, 0);
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
    assert_counters(&s, &[("played", 300), ("lost", 0)], "importer");
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
    assert_counters(
        &s,
        &[("injected_drops", 60), ("lost", 60), ("played", 241)],
        "importer",
    );
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
    assert_counters(&s, &[("lost", 0), ("late", 0), ("played", 400)], "importer");
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
    assert_counters(&s, &[("played", 200), ("lost", 0)], "importer");
    let s = run_case(
        &net,
        "vloss",
        200,
        &["--inject-drop-every", "7", "--target-ms", "100"],
        |q| q % 7 == 6,
    );
    assert_counters(&s, &[("lost", 28)], "importer");
    let s = run_case(
        &net,
        "vjit",
        200,
        &["--inject-jitter-ms", "30", "--target-ms", "250"],
        |_| false,
    );
    assert_counters(&s, &[("lost", 0), ("late", 0)], "importer");
    drop(pair);
}
