//! `voxring voice assistant`: the voice round trip through a hub (talker → hub playback →
//! loopback → mic → VAD + recogniser → reply agent → hub playback → heard in the mic).
//! Words, frames and agents are asserted; times are only reported.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use voxring_test_support::assert_no_shm;

mod common;
use common::voxring;

/// The Python that runs the recogniser, with the native voxring package (see
/// common::voice_python).
fn recogniser_python() -> Option<PathBuf> {
    common::voice_python(
        "import pocketsphinx, soxr, numpy, voxring; voxring._voxring",
        "install platform-linux/python and harness/python/voice/requirements.txt into the \
         test venv (scripts/test does)",
    )
}

/// One round trip at a time: each starts a hub and five processes with real-time agents on a
/// two-core machine; two at once made the talker late enough for the hub to correct its lane
/// (a failed run, rightly).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `voxring voice assistant` with `args`; returns its exit success, its JSON summary and
/// its stderr. Checks that nothing of its hub is left in /dev/shm.
fn assistant(py: &PathBuf, args: &[&str]) -> (bool, Value, String) {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let child = voxring()
        .args(["voice", "assistant", "--python"])
        .arg(py)
        .arg("--json")
        .arg(&json)
        .arg("--report")
        .arg(dir.path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hub = format!("voxring.assist-{}.", child.id());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{stdout}\n{stderr}");
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("no summary ({e}): {stderr}")),
    )
    .unwrap();
    if out.status.success() {
        for f in ["records.jsonl", "voice-latency.md", "voice-latency.svg"] {
            assert!(dir.path().join(f).is_file(), "the report has no {f}");
        }
    }
    assert_no_shm(|n| n.starts_with(&hub));
    (out.status.success(), summary, stderr)
}

/// Every utterance recognised word for word, its reply heard, no frame lost anywhere.
fn assert_valid_round_trip(ok: bool, s: &Value, stderr: &str) {
    assert!(ok, "the run failed: {}\n{stderr}", s["failures"]);
    assert_eq!(s["failures"].as_array().map(Vec::len), Some(0));
    assert_eq!(s["word_error_rate"].as_f64(), Some(0.0));
    let per = s["per_utterance"].as_array().unwrap();
    assert_eq!(per.len(), 3, "every utterance gets a record");
    for p in per {
        let r = &p["record"];
        assert_eq!(r["said"], r["heard"]);
        assert!(
            r["reply_heard_ns"].as_u64().is_some(),
            "a reply was not heard"
        );
    }
    for k in [
        "mic_dropped",
        "evicted_lag",
        "evicted_dead",
        "xruns_capture",
    ] {
        assert_eq!(s["hub"][k].as_u64(), Some(0), "hub {k}");
    }
    for a in ["vad", "recogniser", "reply", "talker"] {
        let end = &s["agents"][a]["end"];
        assert!(end.is_object(), "the {a} agent did not report its end");
        for k in ["lost", "mic_lost", "dropped"] {
            if let Some(n) = end[k].as_u64() {
                assert_eq!(n, 0, "{a}: {k}");
            }
        }
    }
}

/// Three utterances through the synthetic device's loopback: each recognised, its reply heard,
/// no frame lost. (A 16-quantum device buffer so that a host stall of the hub's thread does
/// not turn into an xrun: this tests the pipeline, not the machine's wake-up times.)
#[test]
fn synthetic_round_trip_recognises_every_utterance_and_loses_nothing() {
    let Some(py) = recogniser_python() else {
        return;
    };
    let (ok, s, stderr) =
        assistant_once_more_if_late(&py, &["--device", "synthetic", "--periods", "16"]);
    assert_valid_round_trip(ok, &s, &stderr);
    // A bit-exact loopback moves nothing: each utterance is where the first one puts it.
    assert_eq!(s["device_shift_samples"], serde_json::json!([0, 0, 0]));
}

/// A command outside the grammar is not recognised as said: the run says so and fails.
#[test]
fn a_misrecognised_utterance_fails_the_run() {
    let Some(py) = recogniser_python() else {
        return;
    };
    let args = [
        "--device",
        "synthetic",
        "--periods",
        "16",
        "--gap-s",
        "3",
        "--say",
        "please play some music in the garden",
    ];
    let (ok, s, stderr) = assistant(&py, &args);
    assert!(!ok, "a misrecognised run passed: {s}");
    assert!(
        s["word_error_rate"].as_f64().is_some_and(|w| w > 0.0)
            || s["failures"].to_string().contains("utterance 1"),
        "{s}\n{stderr}"
    );
}

/// The same scenario through the headless PipeWire (scripts/test starts it and runs the
/// ignored tests with VOXRING_AUDIO_DEVICE=pipewire), its graph at a 512-frame quantum (10.7 ms;
/// the hub keeps its 128-frame cycle). At 128 (2.67 ms) PipeWire itself breaks a stream on a
/// shared VM, with no voxring in its graph (scripts/pipewire-headless/continuity: 7-19 breaks
/// in 20 s; 0-4 at 256; 0 at 512 and 1024; docs/voice-round-trip.md), and through it this
/// test failed 7 of 10 runs on the place of an utterance and, placed by its own sound, 2 of 29
/// on a misrecognised one. A move of the talker's stream by the device path is still printed
/// (`device_shift_samples`), not asserted: what the hub did to the talker's frames is (its
/// lane counters).
#[test]
#[ignore = "needs the headless PipeWire (scripts/test runs it)"]
fn pipewire_round_trip_recognises_every_utterance_and_loses_nothing() {
    let Some(py) = recogniser_python() else {
        return;
    };
    let device = std::env::var("VOXRING_AUDIO_DEVICE").unwrap_or_else(|_| "pipewire".to_owned());
    // Forced as a user tunes their server (pw-metadata), put back as it was when dropped.
    let _graph = (device == "pipewire").then(|| {
        let g = voxring_linux::audio::pipewire::force_clock(512, 48_000)
            .expect("forcing PipeWire's graph to 512");
        assert_eq!(g.after.effective_quantum(), Some(512), "{g:?}");
        g
    });
    let (ok, s, stderr) =
        assistant_once_more_if_late(&py, &["--device", &device, "--periods", "16"]);
    println!("device_shift_samples: {}", s["device_shift_samples"]);
    assert_valid_round_trip(ok, &s, &stderr);
}

/// [`assistant`], and once more (said on stderr) if every failure of the run was the hub
/// correcting the talker's lane. The talker is an agent like the others: a host that holds it
/// up past its lane's band fails the run rightly, and says nothing of the pipeline (a
/// clean-clone run at 512, 2026-12-03: 3 corrections during one utterance; through the
/// synthetic device the same day, two runs failed on an utterance that differed from the
/// script, which a dropped or repeated talker frame does there; the report could not yet say
/// whether one had been). Two runs in a row that show it still fail.
fn assistant_once_more_if_late(py: &PathBuf, args: &[&str]) -> (bool, Value, String) {
    let (ok, s, stderr) = assistant(py, args);
    if ok || !only_talker_corrections(&s) {
        return (ok, s, stderr);
    }
    eprintln!(
        "the hub corrected the talker's lane: {}; once more",
        s["failures"]
    );
    assistant(py, args)
}

/// Whether every failure of a run is the hub correcting the talker's lane.
fn only_talker_corrections(s: &Value) -> bool {
    s["failures"].as_array().is_some_and(|f| {
        !f.is_empty()
            && f.iter().all(|x| {
                x.as_str()
                    .is_some_and(|x| x.contains("the hub corrected the talker's lane"))
            })
    })
}

/// A recogniser that crashes (a pocketsphinx segfault, say) right after it made its control
/// register and the reply agent joined: `os._exit`, nothing closed or removed.
const CRASHING_RECOGNISER: &str = r#"
import os, sys, time, voxring
arg = lambda k: sys.argv[sys.argv.index(k) + 1]
asr = voxring.Control(arg("--asr"), create=True)
print('{"event": "ready"}', flush=True)
give_up = time.monotonic() + 120
while time.monotonic() < give_up:
    try:
        voxring.Control(arg("--said")).close()  # the reply agent has started
        break
    except voxring.VoxringError:
        time.sleep(0.05)
os._exit(3)
"#;

/// A failed run leaves nothing behind: its recogniser crashes leaving its register
/// (`NAME.asr`) in /dev/shm; the run fails, every child it started is gone, and the run's
/// guard removed the register (reported in `left_behind`; `assistant` checks /dev/shm).
#[test]
fn a_run_whose_recogniser_crashes_fails_and_leaves_nothing() {
    let Some(py) = recogniser_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("crash.py");
    std::fs::write(&script, CRASHING_RECOGNISER).unwrap();
    let args = ["--device", "synthetic", "--periods", "16", "--recogniser"];
    let mut args: Vec<&str> = args.to_vec();
    args.push(script.to_str().unwrap());
    let (ok, s, stderr) = assistant(&py, &args);
    assert!(!ok, "a run whose recogniser crashed passed: {s}");
    assert!(
        s["failures"].to_string().contains("recogniser"),
        "{s}\n{stderr}"
    );
    let left: Vec<String> = s["left_behind"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(
        left.iter().any(|n| n.ends_with(".asr")),
        "the crashed recogniser's register was not there to remove: {left:?}"
    );
    for (who, a) in s["agents"].as_object().unwrap() {
        let pid = a["pid"].as_u64().unwrap();
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the {who} agent (pid {pid}) outlived the run"
        );
    }
}

/// A run stopped by SIGTERM (by its PID) once its agents are up ends in order: it fails
/// saying so, writes its summary, and leaves no segment of its hub behind.
#[test]
fn a_run_stopped_by_a_signal_leaves_nothing() {
    let Some(py) = recogniser_python() else {
        return;
    };
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let mut child = common::voxring()
        .args([
            "voice",
            "assistant",
            "--device",
            "synthetic",
            "--periods",
            "16",
        ])
        .arg("--python")
        .arg(&py)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let prefix = format!("voxring.assist-{}.", child.id());
    // The talker's lane appears once the VAD, the recogniser and the reply agent are up and
    // the talker has joined (a give-up bound, not a timing).
    let said = std::path::Path::new("/dev/shm").join(format!("{prefix}out.talker"));
    let t0 = std::time::Instant::now();
    while !said.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(
            t0.elapsed().as_secs() < 300,
            "the agents did not start in 300 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a stopped run passed: {stderr}");
    // Stopped while it still waited for the talker: an error naming the signal; after: the
    // summary's failures name it (and no agent left a segment).
    match std::fs::read_to_string(&json) {
        Ok(text) => {
            let s: Value = serde_json::from_str(&text).unwrap();
            assert!(s["failures"].to_string().contains("signal"), "{s}");
            assert!(
                !s["failures"].to_string().contains("left behind"),
                "an agent left a segment: {s}"
            );
        }
        Err(_) => assert!(stderr.contains("signal"), "{stderr}"),
    }
    assert_no_shm(|n| n.starts_with(&prefix));
}

/// The agents' scheduling, read from outside (/proc/PID/task/*/stat by the assistant): where
/// this machine grants SCHED_FIFO, every thread of the recogniser runs under it at its
/// priority (50, below the talker's and the reply's 60 and the VAD's 55), so that a decode is
/// not shared out with CPU hogs, and so does the VAD agent; where it does not, the run says
/// so in a warning and still works.
#[test]
fn the_vad_and_every_thread_of_the_recogniser_run_under_sched_fifo() {
    let Some(py) = recogniser_python() else {
        return;
    };
    let granted = std::thread::spawn(|| voxring_linux::rt::set_fifo(1).is_ok())
        .join()
        .unwrap();
    let (ok, s, stderr) = assistant_once_more_if_late(
        &py,
        &[
            "--device",
            "synthetic",
            "--periods",
            "16",
            "--say",
            "turn on the kitchen light",
            "--gap-s",
            "2",
        ],
    );
    assert!(ok, "the run failed: {}\n{stderr}", s["failures"]);
    for (who, asked) in [
        ("vad", "SCHED_FIFO 55"),
        ("recogniser", "SCHED_FIFO 50"),
        ("reply", "SCHED_FIFO 60 or SCHED_FIFO 50"),
        ("talker", "SCHED_FIFO 60"),
    ] {
        let v = &s["scheduling"][who];
        assert_eq!(v["asked"], asked, "{who}: {v}");
        let n = v["threads"].as_u64().unwrap_or(0);
        assert!(n >= 1, "{who}: no threads seen: {v}");
        if granted {
            assert_eq!(v["as_asked"].as_u64(), Some(n), "{who}: {v}\n{stderr}");
        } else {
            assert!(
                stderr.contains("warning"),
                "{who} refused, no warning: {stderr}"
            );
        }
    }
    // The recogniser is Python with a watcher thread and numpy's: more than one thread, all
    // promoted (a promotion of the main thread alone leaves the others behind).
    assert!(s["scheduling"]["recogniser"]["threads"].as_u64() > Some(1));
}
