//! The bridge end to end: `voxring-bridge export` and `import` as processes, on loopback and
//! across a veth pair between two network namespaces; faults injected on the import side
//! (`--inject-drop-every`, `--inject-jitter-ms`: this kernel has no netem). No assertion on
//! elapsed time: durations below are only "give up" bounds.

mod common;

use std::path::Path;

use common::{
    EXE, FORMAT, GIVE_UP, LeaveNoTrace, assert_counters, assert_gone, attach_when_there, frame,
    produce, read_frames, source_ring, stats,
};
use voxring_bridge::topo::{
    NETNS_ADDR, NetnsPair, Side, export_args, free_local_port, import_args,
};
use voxring_core::FrameFlags;

/// The run's prefix (for [`LeaveNoTrace`]), its source and imported rings, and its key.
fn names(tag: &str) -> (String, String, String, String) {
    let t = format!("vxbt{}{tag}", std::process::id());
    (
        t.clone(),
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
    // Block, not drop, when Zenoh's queue is full: these runs count the losses they inject,
    // and Zenoh's own drops on a loaded machine (load average 10-15: a few frames, never
    // arriving) would make the counts the machine's, not the bridge's.
    export_args(&mut c, src, key, &net.locator()).args(["--congestion", "block"]);
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

/// One run through export → import: `frames` frames sent, `extra` import flags, every
/// `drop_every`-th frame (the last of each `drop_every`) dropped by the injected loss, and the
/// importer's counters it must end with.
struct Case {
    tag: &'static str,
    frames: u64,
    extra: &'static [&'static str],
    drop_every: Option<u64>,
    counters: &'static [(&'static str, u64)],
}

impl Case {
    fn dropped(&self, seq: u64) -> bool {
        self.drop_every.is_some_and(|n| seq % n == n - 1)
    }
}

/// Sends the case's frames through export → import and checks what the consumer of the
/// imported ring got against what was sent: every delivered frame bit-exact, a discontinuity
/// flag exactly after each gap, and the gaps exactly the frames [`Case::dropped`] says; then
/// the importer's final counters.
fn run_case(net: &Net, case: &Case) {
    let (t, src, dst, key) = names(case.tag);
    // Declared before the sides: a failed run's importer is killed with -9 and leaves its
    // ring; this removes it once every process is gone.
    let _trace = LeaveNoTrace(t);
    let frames = case.frames;
    let seg = source_ring(&src);
    let mut ex = exporter(net, &src, &key);
    let mut im = importer(net, &key, &dst, case.extra);
    ex.wait_line("importer present", GIVE_UP).unwrap();
    let out_seg = attach_when_there(&dst);
    let mut rx = out_seg.consumer().unwrap();
    let expected: Vec<u64> = (0..frames).filter(|s| !case.dropped(*s)).collect();
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
    assert_counters(&s, case.counters, &format!("importer ({})", case.tag));
}

/// Every frame, bit-exact.
const EXACT: Case = Case {
    tag: "exact",
    frames: 300,
    extra: &[],
    drop_every: None,
    counters: &[("played", 300), ("lost", 0)],
};

/// Frames 4, 9, 14 ... 299 dropped; frame 300 is the last (a loss is known once a later
/// frame is due).
const LOSS: Case = Case {
    tag: "loss",
    frames: 301,
    extra: &["--inject-drop-every", "5", "--target-ms", "100"],
    drop_every: Some(5),
    counters: &[("injected_drops", 60), ("lost", 60), ("played", 241)],
};

/// Up to 40 ms of delay on 2 ms frames: reordered by up to 20 frames. Target 250 ms.
const JITTER: Case = Case {
    tag: "jitter",
    frames: 400,
    extra: &["--inject-jitter-ms", "40", "--target-ms", "250"],
    drop_every: None,
    counters: &[("lost", 0), ("late", 0), ("played", 400)],
};

/// The three kinds of run across the veth pair (smaller).
const VETH: [Case; 3] = [
    Case {
        tag: "vexact",
        frames: 200,
        extra: &[],
        drop_every: None,
        counters: &[("played", 200), ("lost", 0)],
    },
    Case {
        tag: "vloss",
        frames: 200,
        extra: &["--inject-drop-every", "7", "--target-ms", "100"],
        drop_every: Some(7),
        counters: &[("lost", 28)],
    },
    Case {
        tag: "vjit",
        frames: 200,
        extra: &["--inject-jitter-ms", "30", "--target-ms", "250"],
        drop_every: None,
        counters: &[("lost", 0), ("late", 0)],
    },
];

fn over_loopback(case: &Case) {
    run_case(&Net::Loopback(free_local_port().unwrap()), case);
}

#[test]
fn frames_arrive_bit_exact_over_loopback() {
    over_loopback(&EXACT);
}

#[test]
fn injected_loss_is_counted_exactly_and_flagged() {
    over_loopback(&LOSS);
}

#[test]
fn jitter_under_the_target_plays_out_on_time_with_no_loss() {
    over_loopback(&JITTER);
}

fn netns_pair() -> NetnsPair {
    NetnsPair::create()
        .unwrap_or_else(|e| panic!("this test needs two network namespaces and a veth pair: {e:#}"))
}

#[test]
fn across_a_veth_pair_frames_are_exact_losses_counted_and_jitter_absorbed() {
    let pair = netns_pair();
    let net = Net::Veth(&pair);
    for case in &VETH {
        run_case(&net, case);
    }
    drop(pair);
}
