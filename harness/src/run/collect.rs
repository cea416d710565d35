//! Collecting what the agents of `voxring run` reported (their JSON lines) into the report's
//! rows, stages and failures, and explaining the glitches.

use super::agents::AgentOutput;
use super::glitch::{Fact, FactLog, Glitch, LateMark, StealSampler};
use super::measure::MAX_FACTS;
use super::procs;
use super::python;
use super::report::{AgentRow, StageRow, hist_from_base64};
use super::{AgentKind, AgentSpec};

/// What the agents reported, gathered.
#[derive(Default)]
pub struct AgentResults {
    /// `handoff:<agent>` stages.
    pub stages: Vec<StageRow>,
    /// `compute:<agent>` stages.
    pub compute: Vec<StageRow>,
    pub rows: Vec<AgentRow>,
    /// Time the agents spent in ring operations, ns.
    pub ipc_ns: u64,
    /// CPU time the agents spent waiting for frames, ns.
    pub wait_cpu_ns: u64,
    /// Frames the agents lost (sequence gaps, echo frames that found the output ring full).
    pub lost: u64,
    /// Late cycles (frame sequence numbers), sorted, once each.
    pub late_cycles: Vec<u64>,
    pub late_marks: Vec<(String, Vec<LateMark>)>,
    /// The recorder's report.
    pub recorder: Option<AgentOutput>,
}

/// Gathers every agent's report; `late_by_agent` is the cycle fence's count per agent index.
pub fn agents(
    finished: &[(AgentSpec, procs::Finished)],
    late_by_agent: &[u64],
    warnings: &mut Vec<String>,
    failures: &mut Vec<String>,
) -> anyhow::Result<AgentResults> {
    let mut r = AgentResults::default();
    for (i, (spec, f)) in finished.iter().enumerate() {
        let name = spec.name();
        if !f.clean_exit {
            failures.push(format!(
                "the {name} agent did not end cleanly ({}){}",
                f.status,
                stderr_tail(&f.stderr)
            ));
        }
        for line in &f.stderr {
            warnings.push(format!("{name} agent: {line}"));
        }
        match spec {
            AgentSpec::Builtin(kind) => {
                let late = late_by_agent.get(i).copied();
                builtin(*kind, f, late, &mut r, (warnings, failures))?;
            }
            AgentSpec::Python(_) => {
                let (row, stage, lost) = python_row(&name, f, warnings, failures);
                r.lost += lost;
                r.stages.extend(stage);
                r.rows.push(row);
            }
        }
    }
    r.late_cycles.sort_unstable();
    r.late_cycles.dedup();
    Ok(r)
}

/// A built-in agent's report (its last JSON line) into `r`.
fn builtin(
    kind: AgentKind,
    f: &procs::Finished,
    late: Option<u64>,
    r: &mut AgentResults,
    (warnings, failures): (&mut Vec<String>, &mut Vec<String>),
) -> anyhow::Result<()> {
    let name = kind.name();
    let out: Option<AgentOutput> = f
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok());
    let Some(o) = out else {
        failures.push(format!("the {name} agent gave no report ({})", f.status));
        r.rows.push(AgentRow {
            late: Some(late.unwrap_or(0)),
            transport: "shm".to_owned(),
            ..AgentRow::missing(name, f.pid, &f.status)
        });
        return Ok(());
    };
    r.stages.push(StageRow::new(
        format!("handoff:{name}"),
        "committed → in the agent's hands (another process)",
        &hist_from_base64(&o.handoff_hist)?,
    ));
    r.compute.push(StageRow::new(
        format!("compute:{name}"),
        "the agent's own work on one frame",
        &hist_from_base64(&o.compute_hist)?,
    ));
    r.ipc_ns += o.ipc_ns;
    r.wait_cpu_ns += o.wait_cpu_ns;
    let share = |ns: u64| {
        if o.wall_ns > 0 {
            ns as f64 * 100.0 / o.wall_ns as f64
        } else {
            0.0
        }
    };
    r.lost += o.lost + o.return_dropped.unwrap_or(0);
    r.late_cycles.extend(&o.late_cycles);
    r.late_marks.push((name.to_owned(), o.late_marks.clone()));
    for w in &o.warnings {
        // The same refusal as the audio thread's (SCHED_FIFO) is said once.
        if !warnings.contains(w) {
            warnings.push(format!("{name} agent: {w}"));
        }
    }
    r.rows.push(AgentRow {
        name: name.to_owned(),
        pid: f.pid,
        frames: o.frames,
        late: Some(late.unwrap_or(o.late)),
        lost: o.lost,
        checksum: o.checksum.clone(),
        cpu_percent: share(o.cpu_ns),
        ipc_cpu_percent: Some(share(o.ipc_ns)),
        wait_cpu_percent: Some(share(o.wait_cpu_ns)),
        transport: "shm".to_owned(),
        scheduling: o.scheduling.clone(),
        exit: o.exit.clone(),
    });
    if kind == AgentKind::Recorder {
        r.recorder = Some(o);
    }
    Ok(())
}

/// Every glitch the real-time halves saw and every late cycle the agents reported, explained.
pub fn explain_glitches(
    capture: &FactLog,
    playback: &FactLog,
    late_marks: &[(String, Vec<LateMark>)],
    steal: &StealSampler,
    (period_ns, buffer_ns): (u64, u64),
    start_ns: u64,
) -> Vec<Glitch> {
    let mut facts: Vec<Fact> = capture
        .facts
        .iter()
        .chain(&playback.facts)
        .copied()
        .collect();
    facts.sort_by_key(|f| f.t_ns);
    let cx = super::glitch::Context {
        period_ns,
        buffer_ns,
        start_ns,
        agents: late_marks
            .iter()
            .map(|(n, m)| (n.clone(), m.as_slice()))
            .collect(),
        steal,
        rt_throttling: super::glitch::rt_throttling(),
    };
    let mut g = super::glitch::attribute(&facts, &cx);
    let unlisted = capture.overflow + playback.overflow;
    if unlisted > 0 {
        g.push(Glitch {
            cycle: u64::MAX,
            kind: "unlisted".to_owned(),
            cause: "unknown".to_owned(),
            detail: format!(
                "{unlisted} more glitch facts than the report keeps ({MAX_FACTS} per side)"
            ),
        });
    }
    g
}

/// The report's row for a Python agent, its hand-off stage (when it reported), and the
/// frames it lost. It does not mark the cycle fence: its lateness is not measured (`None`).
fn python_row(
    name: &str,
    f: &procs::Finished,
    warnings: &mut Vec<String>,
    failures: &mut Vec<String>,
) -> (AgentRow, Option<StageRow>, u64) {
    let Some(o) = python::parse_output(&f.stdout) else {
        failures.push(format!("the {name} agent gave no report ({})", f.status));
        return (AgentRow::missing(name, f.pid, &f.status), None, 0);
    };
    if o.transport != "shm" {
        warnings.push(format!(
            "the {name} agent read over {} (slower than shared memory): {}",
            o.transport, o.transport_reason
        ));
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    // The agent reports p50/p90/p99/max, not a histogram: p99.9 is not known.
    let stage = (o.frames > 0).then(|| StageRow {
        name: format!("handoff:{name}"),
        what: "committed → in the Python agent's hands (another process; p99.9 not reported)"
            .to_owned(),
        samples: o.frames,
        p50_ms: Some(ms(o.handoff_ns.p50)),
        p99_ms: Some(ms(o.handoff_ns.p99)),
        p999_ms: None,
        max_ms: Some(ms(o.handoff_ns.max)),
    });
    let cpu_percent = if o.wall_ns > 0 {
        o.cpu_ns as f64 * 100.0 / o.wall_ns as f64
    } else {
        0.0
    };
    let row = AgentRow {
        name: name.to_owned(),
        pid: f.pid,
        frames: o.frames,
        late: None,
        lost: o.lost,
        checksum: o.checksum.clone(),
        cpu_percent,
        ipc_cpu_percent: None,
        wait_cpu_percent: None,
        transport: o.transport.clone(),
        // It does not ask for real-time scheduling; it inherits the orchestrator's main thread's.
        scheduling: "SCHED_OTHER".to_owned(),
        exit: o.exit.clone(),
    };
    (row, stage, o.lost)
}

/// `: <its last stderr line>`, or nothing.
pub fn stderr_tail(stderr: &[String]) -> String {
    stderr
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or_else(String::new, |l| format!(": {}", l.trim()))
}
