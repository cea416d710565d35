//! `python-mparray`: the seed's pattern (a `multiprocessing` shared `Array` read through
//! `np.frombuffer`), run by `harness/python/mparray_peer.py` (embedded in the binary and passed
//! with `python3 -c`, so nothing is written to disk).

use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::peer::{ConsumerProcess, options, record_latencies};
use super::{Measure, ProducerReport};

const SCRIPT: &str = include_str!("../../python/mparray_peer.py");

/// The first python with numpy among `$VOXRING_PYTHON`, `python3`, `/usr/bin/python3`.
pub fn find_python() -> Option<String> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("VOXRING_PYTHON")
        && !p.is_empty()
    {
        candidates.push(p);
    }
    candidates.push("python3".into());
    candidates.push("/usr/bin/python3".into());
    candidates
        .into_iter()
        .find(|py| crate::run::python::imports_numpy(py.as_ref()))
}

/// The interpreter for `python-voxring`: one with the native voxring package installed
/// (`$VOXRING_PYTHON`, else `python3`, else `/usr/bin/python3`), or an error saying how to
/// install it.
pub fn voxring_python() -> anyhow::Result<String> {
    let py = crate::run::python::find_voxring_python()
        .context("python-voxring reads through the voxring Python package")?;
    Ok(py.to_string_lossy().into_owned())
}

#[derive(Debug, Deserialize)]
struct Line {
    payload_bytes: usize,
    latencies_ns: Vec<i64>,
    consumer_cpu_ns: u64,
    producer_cpu_ns: u64,
    producer_syscalls_per_msg: f64,
    method: String,
}

/// Runs the python pair for one payload; fills `hist`, returns the consumer's CPU time and the
/// producer's report.
pub fn run(
    python: &str,
    m: &Measure<'_>,
    hist: &mut hdrhistogram::Histogram<u64>,
) -> anyhow::Result<(u64, ProducerReport)> {
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(SCRIPT).args(options(&[
        ("--payloads", m.payload as u64),
        ("--messages", m.plan.messages),
        ("--warmup", m.plan.warmup),
        ("--count-messages", m.plan.count_messages),
        ("--producer-cpu", m.cpus.0 as u64),
        ("--consumer-cpu", m.cpus.1 as u64),
    ]));
    if let Some(id) = m.tracepoint_id {
        cmd.arg("--tracepoint-id").arg(id.to_string());
    }
    let child = ConsumerProcess::spawn(&mut cmd, "python-mparray")?;
    let parsed: Line = child.result(m.plan.peer_deadline())?;
    if parsed.payload_bytes != m.payload {
        bail!(
            "python-mparray reported {} bytes a message, expected {}",
            parsed.payload_bytes,
            m.payload
        );
    }
    record_latencies(hist, &parsed.latencies_ns, m.plan, "python-mparray")?;
    Ok((
        parsed.consumer_cpu_ns,
        ProducerReport {
            cpu_ns: parsed.producer_cpu_ns,
            syscalls_per_msg: Some(parsed.producer_syscalls_per_msg),
            method: parsed.method,
        },
    ))
}
