//! The report of a `voxring run`, assembled from what the hub's real-time sides measured
//! (the probes), what the agents reported, and the hub's own counters; and what fails the run.

use voxring_linux::audio::XrunCounts;

use super::AgentKind;
use super::buffer::{BufferReport, DeviceWakeups};
use super::collect;
use super::glitch::{FactKind, Growth};
use super::measure::PlaybackProbe;
use super::pipeline::{Drained, Plan, QUEUE_BAND, command_line};
use super::report::{HubRow, Percentiles, ProducerRow, RunReport, StageRow, VadRow};

/// Everything that fails the run, whatever its latency (see `RunReport::failures`).
fn failures(d: &Drained<'_>, agents: &collect::AgentResults) -> (Vec<String>, u64) {
    let (capture, playback) = (&d.end.sink, &d.end.source);
    let mut f = Vec::new();
    if let Some(e) = &d.end.error {
        f.push(format!("the audio device failed: {e}"));
    }
    if playback.failed > 0 {
        f.push("the echo agent's output ring failed (the hub stopped reading it)".to_owned());
    }
    if let Some(died) = &d.agent_died {
        f.push(died.clone());
    }
    if !d.eos_sent {
        f.push(
            "the end of stream could not be sent to the agents (the mic ring stayed full)"
                .to_owned(),
        );
    }
    if capture.frames == 0 {
        f.push("no cycle ran: not a single frame was captured".to_owned());
    }
    // Silence played because the echo's frame was missing is a lost frame; so is a frame the
    // mic ring refused, an agent missed, or the output queue dropped.
    let lost = capture.dropped + playback.skipped + playback.gaps + agents.lost;
    if lost > 0 {
        f.push(format!(
            "{lost} frames were lost (audible gaps): {} refused by the mic ring, {} missed by \
             agents, {} dropped by the output queue above its band, {} periods of silence",
            capture.dropped, agents.lost, playback.skipped, playback.gaps
        ));
    }
    // The device's own losses: it does not say how many frames (its positions do not count
    // them), so each xrun is a failure of its own.
    let x = d.end.xruns;
    if x.capture + x.playback > 0 {
        f.push(format!(
            "the device lost audio in {} xrun(s): {} capture (captured frames dropped before \
             the hub got them), {} playback (silence was played that the hub never gave it)",
            x.capture + x.playback,
            x.capture,
            x.playback
        ));
    }
    if playback.gaps > 0 {
        f.push(format!(
            "{} playback periods ran short of returned frames (silence was played)",
            playback.gaps
        ));
    }
    (f, lost)
}

/// Every agent that reported read every committed byte, in order: its CRC-32 must be the
/// producer's; and the recorder every sample.
fn check_agents(
    producer: &ProducerRow,
    agents: &collect::AgentResults,
    failures: &mut Vec<String>,
) {
    if let Some(r) = &agents.recorder
        && r.samples != producer.samples
    {
        failures.push(format!(
            "the recorder got {} samples, the producer committed {}: the recording is not what \
             was captured",
            r.samples, producer.samples
        ));
    }
    for a in &agents.rows {
        if !a.checksum.is_empty() && a.checksum != producer.checksum {
            failures.push(format!(
                "the {} agent's CRC-32 {} differs from the producer's {}: it did not get exactly \
                 the frames produced",
                a.name, a.checksum, producer.checksum
            ));
        }
    }
}

/// The report's stages: capture, each agent's hand-off and compute, and the way back.
fn stages(plan: &Plan<'_>, d: &Drained<'_>, agents: &mut collect::AgentResults) -> Vec<StageRow> {
    let playback = &d.end.source;
    let mut stages = vec![StageRow::new(
        "capture",
        "first sample at the device → committed to the hub's mic ring",
        &d.end.sink.hist,
    )];
    stages.append(&mut agents.stages);
    stages.append(&mut agents.compute);
    if plan.has(AgentKind::Echo) {
        stages.push(StageRow::new(
            "return handoff",
            "echo committed → taken by the hub's mix (behind the output queue's target depth)",
            &playback.hist_return,
        ));
        stages.push(StageRow::new(
            "playback",
            "mixed into the device buffer → heard (the granted buffer ahead of it)",
            &playback.hist_playback,
        ));
    }
    stages
}

/// The run's report, judged.
pub(super) fn report(
    plan: &Plan<'_>,
    d: &Drained<'_>,
    mut buffer: BufferReport,
    mut warnings: Vec<String>,
) -> anyhow::Result<RunReport> {
    let (capture, playback) = (&d.end.sink, &d.end.source);
    let (label, synthetic, rate, quantum, channels, period_ns) = d.device.clone();
    let mut agent_failures = Vec::new();
    let mut agents = collect::agents(
        &d.finished,
        &d.late_by_agent,
        &mut warnings,
        &mut agent_failures,
    )?;
    let (mut failures, lost) = self::failures(d, &agents);
    failures.extend(agent_failures);
    let producer = ProducerRow {
        frames: capture.frames,
        samples: capture.samples,
        checksum: format!("{:08x}", capture.crc.clone().finalize()),
        dropped: capture.dropped,
    };
    check_agents(&producer, &agents, &mut failures);
    if synthetic {
        warnings.push(
            "synthetic device: its capture carries no voice, so a test talker (1.2 s speech-like \
             bursts, 0.8 s quiet) is mixed into the captured frames in the mic ring"
                .to_owned(),
        );
    }
    queue_warnings(playback, &mut buffer, &mut warnings);
    buffer.device_wakeups = DeviceWakeups::from_counts(&capture.wake_counts());
    let buffer_ns = u64::from(buffer.periods) * period_ns;
    let glitches = collect::explain_glitches(
        &capture.log,
        &playback.log,
        &agents.late_marks,
        &d.steal,
        (period_ns, buffer_ns),
        capture.start_ns(),
    );
    let wall_ns = (d.elapsed_s * 1e9).max(1.0);
    let ipc_ns = d.capture_ipc_ns + d.playback_ipc_ns + agents.ipc_ns;
    let xruns: XrunCounts = d.end.xruns;
    let stages = stages(plan, d, &mut agents);
    let report = RunReport {
        device: label,
        playback_device: None,
        rate,
        quantum,
        channels,
        seconds: plan.args.seconds,
        elapsed_s: d.elapsed_s,
        interrupted: d.interrupted,
        load: plan.args.load,
        keep_awake_cpus: 0,
        vcpus_halt: false,
        cycles: capture.frames,
        cycles_late: agents.late_cycles.len() as u64,
        frames_lost: lost,
        xruns: xruns.capture + xruns.playback,
        xruns_capture: xruns.capture,
        xruns_playback: xruns.playback,
        xruns_playback_hidden: xruns.playback_hidden,
        mouth_to_ear_ms: Percentiles::of(&playback.hist_m2e),
        stages,
        agents: agents.rows,
        producer,
        vad: plan.has(AgentKind::Vad).then(|| VadRow {
            speech_segments: d.vad.segments,
            speech_frames: d.vad.speech_frames,
            last_energy_dbfs: Some(f64::from(d.vad.energy_millibel) / 100.0),
        }),
        ipc_cpu_percent: ipc_ns as f64 * 100.0 / wall_ns,
        wait_cpu_percent: agents.wait_cpu_ns as f64 * 100.0 / wall_ns,
        audio_scheduling: d.end.scheduling.0.clone(),
        drift_ppm: capture.drift_clock.drift_ppm(),
        budget_ms: super::report::BUDGET_MS,
        verdict: String::new(),
        verdict_reasons: Vec::new(),
        failures,
        warnings,
        wav: None,
        command: command_line(),
        buffer: Some(buffer),
        glitches,
        hub: Some(hub_row(d, playback)),
        host_steal: d.steal.summary(buffer_ns),
    };
    Ok(report)
}

/// The hub session's row of the report.
fn hub_row(d: &Drained<'_>, playback: &PlaybackProbe<'_>) -> HubRow {
    HubRow {
        name: d.hub_name.clone(),
        wakes: d.hub.wakes,
        wake_syscalls_per_cycle: d.hub.wakes as f64 / d.hub.cycles.max(1) as f64,
        queue_target: playback.target,
        queue_band: QUEUE_BAND,
        queue_repeated: playback.repeated,
        queue_dropped: playback.skipped,
        queue_gaps: playback.gaps,
        queue_trimmed: playback.trimmed,
        evicted_lag: d.hub.evicted_lag,
        evicted_dead: d.hub.evicted_dead,
        capture_ns_per_cycle: d.capture_ipc_ns as f64 / d.hub.cycles.max(1) as f64,
        mix_ns_per_cycle: d.playback_ipc_ns as f64 / d.hub.play_cycles.max(1) as f64,
        queue_depths: {
            let last = playback
                .depths
                .iter()
                .rposition(|&c| c > 0)
                .map_or(0, |i| i + 1);
            playback.depths[..last].to_vec()
        },
    }
}

/// What the report says of the output queue's growth and corrections.
fn queue_warnings(playback: &PlaybackProbe<'_>, b: &mut BufferReport, warnings: &mut Vec<String>) {
    let grown = |why: Growth| -> Vec<u64> {
        playback
            .log
            .facts
            .iter()
            .filter(|f| f.kind == FactKind::Grown(why))
            .map(|f| f.cycle)
            .collect()
    };
    let (after_silence, after_xrun) = (grown(Growth::Silence), grown(Growth::Xrun));
    b.grown_at_cycles = playback
        .log
        .facts
        .iter()
        .filter(|f| matches!(f.kind, FactKind::Grown(_)))
        .map(|f| f.cycle)
        .collect();
    if !b.grown_at_cycles.is_empty() {
        let mut why = Vec::new();
        if !after_silence.is_empty() {
            why.push(format!(
                "by one frame after a period of silence at cycle(s) {after_silence:?}"
            ));
        }
        if !after_xrun.is_empty() {
            why.push(format!(
                "to the depth in hand after a playback xrun at cycle(s) {after_xrun:?} (the \
                 backlog the capture gave during the stall is played, not dropped)"
            ));
        }
        let most = if b.reserve_end >= b.reserve_max {
            format!(", as deep as auto lets it grow ({})", b.reserve_max)
        } else {
            String::new()
        };
        warnings.push(format!(
            "the output queue's reserve grew from {} to {} frame(s){most}: {} (each frame of \
             growth adds one period of mouth-to-ear; the device buffer stays {} periods: it \
             cannot change while the stream runs); next time try --periods {}",
            b.reserve_start,
            b.reserve_end,
            why.join("; "),
            b.periods,
            b.reserve_end + 2
        ));
    }
    if playback.repeated > 0 {
        warnings.push(format!(
            "the output queue played {} frame(s) twice when the echo's next frame was late (a \
             correction: no frame was lost, the following ones played one period later until \
             the queue trimmed a quiet frame in a pause: {} trimmed)",
            playback.repeated, playback.trimmed
        ));
    }
}
