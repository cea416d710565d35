//! `voxring run`'s buffer choice and glitch report: a stall of the audio thread and a late
//! agent are provoked on demand (test hooks), and the report must name each as the cause.
//! No time assertions: the provoked stall (40 ms) is fifteen periods, far beyond the forced
//! two-period buffer, so it glitches on any machine; other glitches a loaded machine adds are
//! allowed, the provoked one must be there with its cause.

use std::process::Output;

use serde_json::Value;

mod common;

use common::{TestDir, usage_error, voxring_run};

/// Runs `cmd` with `--json` into a fresh test directory named after `tag`; the process's
/// output, its JSON report and its stdout as text.
fn run_json(tag: &str, cmd: &mut std::process::Command) -> (Output, Value, String) {
    let dir = TestDir::new(tag);
    let json = dir.path().join("run.json");
    let out = cmd
        .arg("--json")
        .arg(&json)
        .output()
        .expect("start voxring");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e})\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let stdout = stdout.into_owned();
    (out, serde_json::from_str(&text).unwrap(), stdout)
}

/// A 3 s synthetic run of the vad and echo agents on a forced `periods` buffer, with the test
/// hook `hook` (variable, value) provoking a glitch.
fn provoked_run(tag: &str, periods: &str, hook: (&str, &str)) -> (Output, Value, String) {
    run_json(
        tag,
        voxring_run("synthetic", "3")
            .args(["--agents", "vad,echo", "--periods", periods])
            .env(hook.0, hook.1),
    )
}

fn glitches(report: &Value) -> &Vec<Value> {
    report["glitches"].as_array().expect("glitches")
}

#[test]
fn a_stalled_audio_thread_is_named_as_the_cause() {
    let (out, report, stdout) = provoked_run("stall", "2", ("VOXRING_TEST_STALL_AUDIO", "600:40"));
    // Frames were lost to the stall: the run fails, and says why.
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let provoked: Vec<&Value> = glitches(&report)
        .iter()
        .filter(|g| {
            let c = g["cycle"].as_u64().unwrap();
            (600..=620).contains(&c) && g["kind"] == "xrun"
        })
        .collect();
    assert!(!provoked.is_empty(), "no xrun at cycle 600: {report:#}");
    // The synthetic device loses both directions in the stall: the playback xrun is listed
    // too, with its cause.
    assert!(
        provoked
            .iter()
            .any(|g| g["detail"].as_str().unwrap().starts_with("playback")),
        "no playback xrun at cycle 600: {report:#}"
    );
    for g in &provoked {
        assert_eq!(g["cause"], "host-stall", "{g}");
        let d = g["detail"].as_str().unwrap();
        assert!(d.contains("the audio thread ran"), "{d}");
        assert!(d.contains("RT throttling"), "{d}");
    }
    assert!(stdout.contains("host-stall"), "{stdout}");
    assert_eq!(report["buffer"]["mode"], "forced");
    assert_eq!(report["buffer"]["periods"], 2);
    // Forced: the reserve never grows.
    assert_eq!(report["buffer"]["reserve_end"], 0);
}

/// A 4 s run of the vad and echo agents on `device` under `--periods auto` with the audio
/// thread stalled 40 ms at cycle 600 (fifteen periods: more than the deepest buffer auto
/// picks, so the playback runs dry on any machine). The stall is a playback xrun put on the
/// host, and the output queue drops no returned frame: after the xrun the device buffer is
/// refilled from the queue (not with silence), and a backlog left standing above the queue's
/// target raises the target instead of being dropped. Before that, through PipeWire, the
/// capture's backlog stood in the queue above its band and was dropped a drift window later.
/// Other glitches a loaded machine adds are allowed (they are not asserted on).
///
/// The stall is seen as the audio thread's lateness against the device clock the run tracks;
/// through PipeWire on a VM that stalls by itself the tracking can be restarting right then
/// (a cycle off by more than the clock allows), and the xrun is put on the device: such a run
/// is repeated once (seen once in a clean-clone run: 0 late wake-ups noted in the whole run).
fn a_stall_under_auto_drops_no_returned_frame(tag: &str, device: &str) {
    let attempts = 2;
    let (report, stdout) = (1..=attempts)
        .map(|_| {
            let (_, report, stdout) = run_json(
                tag,
                voxring_run(device, "4")
                    .args(["--agents", "vad,echo", "--periods", "auto"])
                    .env("VOXRING_TEST_STALL_AUDIO", "600:40"),
            );
            (report, stdout)
        })
        .find(|(report, _)| on_the_host(report))
        .unwrap_or_else(|| {
            panic!("no playback xrun at cycle 600 put on the host in {attempts} runs")
        });
    assert_eq!(report["buffer"]["mode"], "auto", "{report:#}");
    assert!(
        report["xruns_playback"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
    assert_eq!(
        report["hub"]["queue_dropped"], 0,
        "the output queue dropped returned frames (the stall's backlog?): {report:#}\n{stdout}"
    );
    assert!(
        !glitches(&report).iter().any(|g| g["kind"] == "skipped"),
        "{report:#}"
    );
    // A growth is said, with its reason.
    let b = &report["buffer"];
    if b["reserve_end"].as_u64() > b["reserve_start"].as_u64() {
        assert!(
            stdout.contains("after a playback xrun")
                || stdout.contains("after a period of silence"),
            "{stdout}"
        );
    }
}

/// Whether a playback xrun in the stall's window (cycles 600-620) was put on the host. Through
/// PipeWire the server breaks streams by itself now and then on a VM
/// (docs/voice-round-trip.md): an xrun of its own may come first in the window, and is not
/// the one provoked here.
fn on_the_host(report: &Value) -> bool {
    let provoked: Vec<&Value> = glitches(report)
        .iter()
        .filter(|g| {
            let c = g["cycle"].as_u64().unwrap();
            (600..=620).contains(&c)
                && g["kind"] == "xrun"
                && g["detail"].as_str().unwrap().starts_with("playback")
        })
        .collect();
    let put = provoked.iter().any(|g| g["cause"] == "host-stall");
    if !put {
        eprintln!("no playback xrun at cycle 600 put on the host: {provoked:?}\n{report:#}");
    }
    put
}

#[test]
fn a_stall_under_auto_drops_no_returned_frame_synthetic() {
    a_stall_under_auto_drops_no_returned_frame("stall-auto", "synthetic");
}

#[test]
#[ignore = "needs the headless PipeWire (scripts/test phase 8)"]
fn a_stall_under_auto_drops_no_returned_frame_pipewire() {
    let device = std::env::var("VOXRING_AUDIO_DEVICE").unwrap_or_else(|_| "pipewire".to_owned());
    // In a 512-frame graph (the hub's cycle stays 128, and `auto` gives the buffer the graph
    // cycle and two periods more): at 128 the headless PipeWire breaks the stream by itself on
    // a VM whose wake-ups come milliseconds late, and the queue drops what its breaks leave
    // standing (62 frames in one 4 s run, 2026-12-03), which says nothing of the stall here.
    let graph = voxring_linux::audio::pipewire::force_clock(512, 48_000)
        .expect("forcing PipeWire's graph to 512");
    assert_eq!(graph.after.effective_quantum(), Some(512), "{graph:?}");
    a_stall_under_auto_drops_no_returned_frame("stall-auto-pw", &device);
}

#[test]
fn a_late_agent_is_named_with_its_compute() {
    let hook = ("VOXRING_TEST_LATE_AGENT", "vad:600:50");
    let (_, report, stdout) = provoked_run("late-agent", "3", hook);
    let late = glitches(&report)
        .iter()
        .find(|g| g["cycle"] == 600 && g["kind"] == "late-cycle")
        .unwrap_or_else(|| panic!("no late cycle 600: {report:#}\n{stdout}"));
    assert_eq!(late["cause"], "agent-late", "{late}");
    let d = late["detail"].as_str().unwrap();
    assert!(d.contains("the vad agent"), "{d}");
    assert!(d.contains("its compute took the time"), "{d}");
}

#[test]
fn auto_measures_the_machine_and_says_what_it_chose() {
    let (_, report, stdout) = run_json(
        "auto",
        voxring_run("synthetic", "1").args(["--agents", "vad"]),
    );
    let b = &report["buffer"];
    assert_eq!(b["mode"], "auto", "{report:#}");
    let n = b["periods"].as_u64().unwrap();
    assert!((2..=8).contains(&n), "{b}");
    assert!(b["probe"]["wakeups"].as_u64().unwrap() > 0, "{b}");
    assert!(
        b["reason"]
            .as_str()
            .unwrap()
            .contains("latest timer wake-up"),
        "{b}"
    );
    assert!(
        stdout.contains(&format!("buffer: {n} periods (auto")),
        "{stdout}"
    );
}

#[test]
fn a_bad_periods_value_is_a_clear_error() {
    let err = usage_error(voxring_run("synthetic", "1").args(["--periods", "1"]));
    assert!(err.contains("give `auto`"), "{err}");
}
