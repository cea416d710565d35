//! Tests of the run report: histograms, verdicts, the text and Markdown layout.

use super::*;

#[test]
fn histogram_round_trips_through_base64() {
    let mut h = new_hist();
    for v in [1_000, 2_000, 3_000, 1_000_000] {
        record(&mut h, v);
    }
    let back = hist_from_base64(&hist_to_base64(&h).unwrap()).unwrap();
    assert_eq!(back.len(), 4);
    assert_eq!(back.max(), h.max());
}

#[test]
fn percentiles_are_none_for_an_empty_histogram() {
    assert!(Percentiles::of(&new_hist()).is_none());
}

fn report(m2e_p999: Option<f64>, failures: &[&str]) -> RunReport {
    RunReport {
        device: "synthetic".into(),
        playback_device: None,
        rate: 48_000,
        quantum: 128,
        channels: 1,
        seconds: 1.0,
        elapsed_s: 1.0,
        interrupted: false,
        load: 0,
        keep_awake_cpus: 0,
        vcpus_halt: false,
        cycles: 375,
        cycles_late: 0,
        frames_lost: 0,
        xruns: 0,
        xruns_capture: 0,
        xruns_playback: 0,
        xruns_playback_hidden: 0,
        mouth_to_ear_ms: m2e_p999.map(|p| Percentiles {
            p50: p,
            p99: p,
            p999: p,
            max: p,
        }),
        stages: Vec::new(),
        agents: Vec::new(),
        producer: ProducerRow {
            frames: 375,
            samples: 48_000,
            checksum: "00000000".into(),
            dropped: 0,
        },
        vad: None,
        ipc_cpu_percent: 0.0,
        wait_cpu_percent: 0.0,
        audio_scheduling: String::new(),
        drift_ppm: None,
        budget_ms: BUDGET_MS,
        verdict: String::new(),
        verdict_reasons: Vec::new(),
        failures: failures.iter().map(|f| (*f).to_owned()).collect(),
        warnings: Vec::new(),
        wav: None,
        command: String::new(),
        buffer: None,
        glitches: Vec::new(),
        hub: None,
        host_steal: None,
    }
}

#[test]
fn any_failure_makes_the_verdict_failed_whatever_the_latency() {
    for m2e in [Some(10.0), None] {
        let mut r = report(m2e, &["the echo agent ended early (signal: 9 (SIGKILL))"]);
        r.judge();
        assert_eq!(r.verdict, "failed");
        assert!(r.verdict_reasons[0].contains("SIGKILL"), "{r:?}");
        assert!(r.text().contains("verdict: failed (the echo agent"));
        assert!(r.markdown(&[]).contains("## Why the run failed"));
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["failures"][0], r.failures[0]);
    }
    let mut ok = report(Some(10.0), &[]);
    ok.judge();
    assert_eq!(ok.verdict, "within budget");
    let mut over = report(Some(200.0), &[]);
    over.judge();
    assert_eq!(over.verdict, "over budget");
}

#[test]
fn the_tables_of_text_and_markdown_keep_their_layout() {
    let mut r = report(Some(12.3456), &[]);
    let stage = |name: &str, what: &str, samples, ms: [Option<f64>; 4]| StageRow {
        name: name.into(),
        what: what.into(),
        samples,
        p50_ms: ms[0],
        p99_ms: ms[1],
        p999_ms: ms[2],
        max_ms: ms[3],
    };
    r.stages = vec![
        stage(
            "capture",
            "a → b",
            10,
            [Some(1.0), Some(2.5), None, Some(3.25)],
        ),
        stage(
            "handoff:python:/some/long/agent_name.py",
            "c → d",
            0,
            [None; 4],
        ),
    ];
    let mut agent = AgentRow::missing("python:/a/very/long/agent/name.py", 1234, "end of stream");
    (agent.frames, agent.late, agent.lost) = (99, Some(2), 1);
    agent.checksum = "deadbeef".into();
    (agent.cpu_percent, agent.ipc_cpu_percent) = (3.256, Some(0.01234));
    (agent.transport, agent.scheduling) = ("shm".into(), "SCHED_FIFO 70".into());
    r.agents = vec![agent, AgentRow::missing("echo", 42, "signal 9")];
    r.drift_ppm = Some(1.234);
    r.judge();
    let text = r.text();
    let markdown = r.markdown(&[]);
    for line in [
        "stage (ms)                                    p50       p99     p99.9       max   samples",
        "capture                                     1.000     2.500         -     3.250        10",
        "handoff:python:/some/long/agent_name.py         -         -         -         -         0",
        "mouth-to-ear                               12.346    12.346    12.346    12.346",
        "agent echo                              pid 42      frames 0        late -     lost 0     cpu 0.00 %      [signal 9]",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }
    for line in [
        "| capture | 1.000 | 2.500 | – | 3.250 | 10 | a → b |",
        "| handoff:python:/some/long/agent_name.py | – | – | – | – | 0 | c → d |",
        "| late cycles (any agent past the deadline) | 0 |",
        "| clock drift | +1.23 ppm |",
        "| agent | pid | frames | late | lost | CRC-32 | CPU % | ring ops % | waiting % | transport | scheduling | end |",
        "| python:/a/very/long/agent/name.py | 1234 | 99 | 2 | 1 | deadbeef | 3.26 | 0.0123 | - | shm | SCHED_FIFO 70 | end of stream |",
        "| echo | 42 | 0 | - | 0 |  | 0.00 | - | - |  |  | signal 9 |",
    ] {
        assert!(
            markdown.lines().any(|l| l == line),
            "{line:?} not in\n{markdown}"
        );
    }
}

#[test]
fn bad_base64_is_an_error_not_a_panic() {
    assert!(hist_from_base64("not base64 !!").is_err());
    assert!(hist_from_base64("AAAA").is_err());
}

#[test]
fn the_queue_depth_summary_is_lowest_first_percentile_and_median() {
    assert_eq!(depth_summary(&[]), None);
    assert_eq!(depth_summary(&[0, 0]), None);
    // 2 at depth 0, 1 at 1, 297 at 2, 700 at 5: the lowest is 0, 1 % (the 10th) lands in 2.
    let mut h = vec![2, 1, 297, 0, 0, 700];
    assert_eq!(depth_summary(&h), Some((0, 2, 5)));
    h[0] = 20;
    assert_eq!(depth_summary(&h), Some((0, 0, 5)));
}

#[test]
fn a_host_stall_on_a_halting_vm_suggests_keep_awake_unless_it_was_on() {
    let stall = crate::run::glitch::Glitch {
        cycle: 7,
        kind: "xrun".into(),
        cause: "host-stall".into(),
        detail: "the audio thread woke 9 ms late".into(),
    };
    let late_agent = crate::run::glitch::Glitch {
        cause: "agent-late".into(),
        ..stall.clone()
    };
    let text = |glitch: &crate::run::glitch::Glitch, halts: bool, awake: u32| {
        let mut r = report(Some(10.0), &[]);
        r.glitches = vec![glitch.clone()];
        r.vcpus_halt = halts;
        r.keep_awake_cpus = awake;
        r.text()
    };
    assert!(
        text(&stall, true, 0)
            .contains("--keep-awake keeps every CPU busy with a SCHED_IDLE spinner")
    );
    // Kept awake already, a machine whose vCPUs do not halt, or an agent's own lateness: no hint.
    for t in [
        text(&stall, true, 2),
        text(&stall, false, 0),
        text(&late_agent, true, 0),
    ] {
        assert!(t.contains("glitches: 1") && !t.contains("hint:"), "{t}");
    }
}
