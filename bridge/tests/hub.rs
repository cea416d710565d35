//! The bridge and a hub (`voxring serve`): a far ring played through the hub's mix and the
//! hub's mic exported, both joined through the hub's public client so the hub's directory
//! lists them like any other agent. The hub runs on the synthetic device, whose playback comes
//! back bit-exact in its capture, so the whole loop is checked sample for sample:
//!
//! source ring → export → import `--hub H --ring far` → H's mix → device → H's mic →
//! export `--hub H` → import `--ring back` → the test's reader.
//!
//! No assertion on elapsed time: durations are only "give up" bounds.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{EXE, GIVE_UP, LeaveNoTrace, assert_gone, attach_when_there, read_ready, stats};
use voxring_bridge::topo::{Side, free_local_port};
use voxring_core::{FrameFlags, Policy, RingConfig, SampleFormat};
use voxring_linux::hub::directory::{SLOT_FREE, unpack_name};
use voxring_linux::hub::{Hub, HubOptions};
use voxring_linux::ring::Segment;
use voxring_linux::segment::CreateOptions;

/// The hub's quantum: the stream's frame.
const QUANTUM: usize = 128;
/// Frames the source sends.
const FRAMES: usize = 300;

/// The `voxring` program built beside `voxring-bridge`.
fn voxring_exe() -> PathBuf {
    let p = Path::new(EXE).with_file_name("voxring");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p voxring-harness)",
        p.display()
    );
    p
}

/// A `voxring serve` child, stopped by its PID with SIGTERM.
struct HubChild(Child);

impl HubChild {
    fn start(name: &str) -> Self {
        let child = Command::new(voxring_exe())
            .args(["serve", "--name", name, "--device", "synthetic"])
            .args(["--channels", "1", "--format", "s16", "--rate", "48000"])
            .args(["--quantum", &QUANTUM.to_string(), "--periods", "4"])
            // An 11 s mic ring: the exporter reading it is an ordinary thread.
            .args(["--mic-frames", "4096"])
            // A deep output queue with the widest band (corrected only when empty or about to
            // overflow): a late wake-up of the importer on a loaded machine must not become a
            // correction that breaks the bit-exact comparison. (A band that does not reach
            // down to 1 would hold the stream's last frames back: below it the mixer repeats.)
            .args(["--target", "16", "--band", "15"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start voxring serve");
        let hub = HubChild(child);
        let end = Instant::now() + GIVE_UP;
        let mut hub = hub;
        while let Err(e) = Hub::find(name, &HubOptions::default()) {
            let exited = hub.0.try_wait().expect("poll the hub");
            assert!(
                exited.is_none() && Instant::now() < end,
                "hub {name} did not start ({e}; exited: {exited:?}); a stale {} refuses or is \
                 refused by this build: cargo build -p voxring-harness",
                voxring_exe().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        hub
    }

    fn stop(mut self) {
        let pid = rustix::process::Pid::from_raw(self.0.id() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let st = self.0.wait().expect("wait for the hub");
        assert!(st.success(), "the hub exited with {st}");
    }
}

impl Drop for HubChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sample `k` of the source's stream: no run of it repeats within the test.
/// Both exporters block when Zenoh's queue is full and queue up to 5.5 s for their sender:
/// with the live defaults (drop, 64 frames) a loaded machine (load average 10-15) stalled
/// Zenoh's task long enough that frames were dropped on the way (a gap at the mic import,
/// `lost` 3-4, or an altered stream; the exporters saw nothing). This test is about the
/// bytes, not the machine's wake-ups.
const DEEP_SEND_QUEUE: [&str; 4] = ["--congestion", "block", "--queue-frames", "2048"];

/// `--rt-priority 50` for the import that plays into the hub, where this user may run
/// SCHED_FIFO threads (root in CI): an ordinary thread was stalled for longer than the hub's
/// 16-frame queue lasts (43 ms) at load average 10, the lane ran dry and repeated a frame.
fn real_time_play() -> Vec<&'static str> {
    let allowed = std::thread::spawn(|| voxring_linux::rt::set_fifo(50).is_ok())
        .join()
        .unwrap_or(false);
    if allowed {
        vec!["--rt-priority", "50"]
    } else {
        eprintln!("note: the far import plays at normal priority (no SCHED_FIFO for this user)");
        Vec::new()
    }
}

fn sample(k: usize) -> i16 {
    (((k as u64 * 7919 + 11) % 60_001) as i32 - 30_000) as i16
}

fn side(args: &[&str], ready: &str) -> Side {
    let mut c = Command::new(EXE);
    c.args(args);
    let mut s = Side::spawn(args[0], c).unwrap();
    s.wait_line(ready, GIVE_UP).unwrap();
    s
}

/// Writes the source's frames paced at the stream's rate, each stamped on an ideal clock.
fn produce(seg: &Segment) {
    let mut tx = seg.producer().expect("producer");
    let period = Duration::from_nanos(QUANTUM as u64 * 1_000_000_000 / 48_000);
    let start = Instant::now();
    for i in 0..FRAMES {
        if let Some(d) = (start + period * i as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let bytes: Vec<u8> = (i * QUANTUM..(i + 1) * QUANTUM)
            .flat_map(|k| sample(k).to_ne_bytes())
            .collect();
        let (p, waiter) = tx.parts();
        let pos = (i * QUANTUM) as u64;
        p.push(&bytes, pos, pos * 20_833, FrameFlags::NONE)
            .expect("push")
            .wake(waiter);
    }
}

/// Reads the imported copy of the hub's mic until the source's stream has come back whole
/// (or the give-up bound); returns the samples read and the sample index of every frame the
/// import flagged DISCONTINUITY (the first after frames it counted lost).
fn read_back(name: &str) -> (Vec<i16>, Vec<usize>) {
    let seg = attach_when_there(name);
    let mut rx = seg.consumer().expect("consumer");
    let (mut got, mut gaps): (Vec<i16>, Vec<usize>) = (Vec::new(), Vec::new());
    let end = Instant::now() + GIVE_UP;
    let last = sample(FRAMES * QUANTUM - 1);
    while Instant::now() < end {
        for (meta, payload) in read_ready(&mut rx) {
            if meta.flags.contains(FrameFlags::DISCONTINUITY) {
                gaps.push(got.len());
            }
            got.extend(
                payload
                    .chunks_exact(2)
                    .map(|b| i16::from_ne_bytes([b[0], b[1]])),
            );
        }
        if got.contains(&last) && got.len() > FRAMES * QUANTUM {
            break;
        }
    }
    (got, gaps)
}

/// The hub's output lanes as its directory shows them (depth, drops, repeats, gaps, trims).
fn lane_rows(hub: &str) -> Vec<(String, voxring_linux::hub::directory::OutRow)> {
    let h = Hub::find(hub, &HubOptions::default()).expect("find the hub");
    (0..128)
        .filter_map(|i| h.out_row(i))
        .filter(|r| r.state != SLOT_FREE)
        .map(|r| (unpack_name(&r.name), r))
        .collect()
}

/// The agent names the hub's directory lists: (mic readers, output lanes).
fn listed(hub: &str) -> (Vec<String>, Vec<String>) {
    let h = Hub::find(hub, &HubOptions::default()).expect("find the hub");
    let mic = (0..128)
        .filter_map(|i| h.agent_stats(i))
        .filter(|s| s.token != 0)
        .map(|s| unpack_name(&s.name))
        .collect();
    let out = (0..128)
        .filter_map(|i| h.out_row(i))
        .filter(|r| r.state != SLOT_FREE)
        .map(|r| unpack_name(&r.name))
        .collect();
    (mic, out)
}

/// Runs the round trip below until one run is clean, at most three times. A run whose stream
/// came back altered where the hub's lane for the far import counted a correction (a frame
/// repeated or a period of silence: the import's play thread held up past the lane's 43 ms, as
/// on a VM whose host stole 13 % of the CPU, whole-VM stalls of tens of milliseconds) is
/// reported and repeated; an alteration no counter explains, and every other check, fails at
/// once.
#[test]
fn a_far_ring_plays_through_a_hub_and_its_mic_comes_back_bit_exact() {
    const ATTEMPTS: u32 = 3;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match far_ring_round_trip(attempt) {
            Ok(()) => return,
            Err(why) => {
                eprintln!("attempt {attempt}: {why}; trying again");
                last = why;
            }
        }
    }
    panic!("no clean run in {ATTEMPTS}: the machine held the import up every time (last: {last})");
}

/// One round trip (see the module docs); `Err` only for a stream the hub's lane corrected.
fn far_ring_round_trip(attempt: u32) -> Result<(), String> {
    let t = format!("vxbh{}a{attempt}", std::process::id());
    let _trace = LeaveNoTrace(t.clone());
    let (src, back) = (format!("{t}-src"), format!("{t}-back"));
    let (key_out, key_mic) = (
        format!("voxring/test/{t}/out"),
        format!("voxring/test/{t}/mic"),
    );
    let (l_out, l_mic) = (
        format!("tcp/127.0.0.1:{}", free_local_port().unwrap()),
        format!("tcp/127.0.0.1:{}", free_local_port().unwrap()),
    );
    let hub = HubChild::start(&t);
    // The hub's mic, exported as agent "bridge" and imported into the ring `back`.
    let mut ex_mic = side(
        &["export", "--hub", &t, "--key", &key_mic, "--listen", &l_mic]
            .into_iter()
            .chain(DEEP_SEND_QUEUE)
            .collect::<Vec<_>>(),
        "exporting",
    );
    // Both imports keep 1 s of jitter buffer: a frame that misses its turn is counted lost or
    // played late (into the hub: a burst the lane's queue corrects), and a loaded machine
    // (load average 13) stalled Zenoh's threads for more than 250 ms.
    let mut im_back = side(
        &["import", &key_mic, "--ring", &back, "--connect", &l_mic]
            .into_iter()
            .chain(["--ring-frames", "1024", "--target-ms", "1000"])
            .collect::<Vec<_>>(),
        "importing",
    );
    let reader = std::thread::spawn({
        let back = back.clone();
        move || read_back(&back)
    });
    // A far source ring, exported and played through the hub as agent "far".
    let cfg = RingConfig {
        frames: 512,
        samples_per_frame: QUANTUM as u32,
        channels: 1,
        format: SampleFormat::S16,
        sample_rate: 48_000,
        max_consumers: 2,
        policy: Policy::Lossless,
    };
    let seg = Segment::create(&src, &cfg, &CreateOptions::default()).expect("source ring");
    let mut ex_out = side(
        &["export", &src, "--key", &key_out, "--listen", &l_out]
            .into_iter()
            .chain(DEEP_SEND_QUEUE)
            .collect::<Vec<_>>(),
        "exporting",
    );
    let mut im_far = side(
        &[
            "import",
            &key_out,
            "--hub",
            &t,
            "--ring",
            "far",
            "--connect",
            &l_out,
        ]
        .into_iter()
        .chain(["--target-ms", "1000"])
        .chain(real_time_play())
        .collect::<Vec<_>>(),
        "importing",
    );
    ex_out.wait_line("importer present", GIVE_UP).unwrap();
    // The hub lists a new lane when its control thread next scans: wait for it (give-up
    // bound only).
    let end = Instant::now() + GIVE_UP;
    let (mic_agents, lanes) = loop {
        let (m, l) = listed(&t);
        if (m.iter().any(|a| a == "bridge") && l.iter().any(|a| a == "far")) || Instant::now() > end
        {
            break (m, l);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    produce(&seg);
    let (got, gaps) = reader.join().expect("reader");

    assert!(
        mic_agents.contains(&"bridge".to_owned()),
        "mic readers listed: {mic_agents:?}"
    );
    assert!(
        lanes.contains(&"far".to_owned()),
        "output lanes listed: {lanes:?}"
    );
    // Every counter first, so that an altered stream says where it was altered.
    let lanes = lane_rows(&t);
    let (far, e) = (stats(&mut im_far), stats(&mut ex_out));
    let (m, b) = (stats(&mut ex_mic), stats(&mut im_back));
    let counters = format!(
        "far import {far}\nfar export {e}\nmic export {m}\nmic import {b}\nhub lanes {lanes:?}"
    );
    let first = got.iter().position(|&s| s == sample(0));
    let want: Vec<i16> = (0..FRAMES * QUANTUM).map(sample).collect();
    let altered = match first {
        None => Some("the far stream's first sample never reached the hub's mic".to_owned()),
        Some(first) => {
            let came = &got[first..(first + want.len()).min(got.len())];
            (came != want.as_slice()).then(|| {
                format!(
                    "the stream came back altered: {} of {} samples, first difference at {:?}",
                    came.len(),
                    want.len(),
                    came.iter().zip(&want).position(|(a, b)| a != b)
                )
            })
        }
    };
    let corrected = lanes
        .iter()
        .find(|(name, _)| name == "far")
        .is_some_and(|(_, r)| r.repeated + r.gaps + r.dropped + r.trimmed > 0);
    if let Some(why) = &altered {
        assert!(corrected, "{why}, and no counter says why\n{counters}");
    }
    assert_eq!(far["lost"], 0, "far import\n{counters}");
    assert_eq!(e["read"], FRAMES as u64, "far export\n{counters}");
    assert_eq!(
        m["ring_lost"], 0,
        "the hub's mic export lost frames\n{counters}"
    );
    // The mic import joins a stream already flowing: Zenoh dropped 2-5 frames while it routed
    // the new subscription on a loaded machine (seen only there, always among the first
    // frames played). Every loss the reader saw (flagged where it was lost) must lie before
    // the far stream (inside it the comparison above would have failed). The import keeps
    // receiving the hub's mic after the reader stopped at the far stream's last sample, so it
    // may count losses no reader saw: 2 in a clean-clone run on a loaded VM, none flagged.
    let lost = b["lost"].as_u64().expect("mic import: lost");
    let first = first.unwrap_or(0);
    assert!(
        lost == 0 || gaps.iter().all(|&g| g <= first),
        "mic import lost {lost} frames, flagged at samples {gaps:?}, the far stream at \
         {first}\n{counters}"
    );
    drop(seg);
    hub.stop();
    assert_gone(&[
        &src,
        &back,
        &format!("{t}.mic"),
        &format!("{t}.hub"),
        &format!("{t}.out.far"),
    ]);
    match altered {
        Some(why) => Err(format!(
            "{why}, where the hub's lane corrected it\n{counters}"
        )),
        None => Ok(()),
    }
}
