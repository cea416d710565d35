//! Starting the agents of `voxring run`: each its own process (this binary's hidden `agent`
//! subcommand, or a Python script), joining the run's hub by name through the public
//! client; the CPU hogs of `--load`; and the spinners of `--keep-awake`.

use std::os::fd::AsRawFd as _;
use std::time::Duration;

use super::outputs::Recording;
use super::procs::{self, Proc};
use super::python::PythonLauncher;
use super::{AgentKind, AgentSpec};

/// How long agents get to join the hub and say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// What every agent is told.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// The run's hub.
    pub hub: &'a str,
    /// The orchestrator's PID (agents die with it).
    pub parent: u32,
    /// SCHED_FIFO priority of the agents' processing threads (0: none).
    pub rt_priority: u8,
    /// How the built-in agents wait for frames.
    pub wait: super::AgentWait,
    /// The recording (the recorder inherits its descriptor).
    pub wav: Option<&'a Recording>,
    /// Python agents' interpreter.
    pub launcher: Option<&'a PythonLauncher>,
}

/// Starts every agent, one after the other, each once it said `ready` (it joined the hub);
/// on a failure, the ones started are stopped and the error says which did not start.
pub fn agents(specs: &[AgentSpec], l: &Launch<'_>) -> anyhow::Result<Vec<(AgentSpec, Proc)>> {
    let mut procs: Vec<(AgentSpec, Proc)> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let started = match spec {
            AgentSpec::Builtin(kind) => builtin(*kind, i, l),
            AgentSpec::Python(script) => python(script, i, l),
        };
        match started {
            Ok(p) => procs.push((spec.clone(), p)),
            Err(e) => {
                for (_, p) in procs {
                    let _ = p.kill();
                }
                return Err(e);
            }
        }
    }
    Ok(procs)
}

/// A built-in agent (`voxring agent --role ...`), once it said `ready`.
fn builtin(kind: AgentKind, index: usize, l: &Launch<'_>) -> anyhow::Result<Proc> {
    let mut a = vec![
        "agent".to_owned(),
        "--role".to_owned(),
        kind.name().to_owned(),
        "--parent".to_owned(),
        l.parent.to_string(),
        "--hub".to_owned(),
        l.hub.to_owned(),
        "--index".to_owned(),
        index.to_string(),
        "--rt-priority".to_owned(),
        l.rt_priority.to_string(),
        "--wait".to_owned(),
        match l.wait {
            super::AgentWait::Periodic => "periodic",
            super::AgentWait::Park => "park",
        }
        .to_owned(),
    ];
    let mut p = match (kind, l.wav) {
        (AgentKind::Recorder, Some(rec)) => {
            // The recorder inherits the recording's descriptor (no name to plant at).
            a.push("--wav-fd".to_owned());
            a.push(rec.file().as_raw_fd().to_string());
            procs::spawn_self_with_fd(kind.name(), &a, rec.file())?
        }
        _ => procs::spawn_self(kind.name(), &a)?,
    };
    match p.wait_line(READY_TIMEOUT) {
        Some(line) if line == "ready" => Ok(p),
        _ => {
            let f = p.kill();
            anyhow::bail!(
                "the {} agent did not start: {} ({})",
                kind.name(),
                f.stderr.join(" / "),
                f.status
            )
        }
    }
}

/// A Python agent script, once it said `ready`.
fn python(script: &std::path::Path, index: usize, l: &Launch<'_>) -> anyhow::Result<Proc> {
    let Some(launcher) = l.launcher else {
        anyhow::bail!("internal: a Python agent without a Python launcher");
    };
    let name = AgentSpec::Python(script.to_owned()).name();
    let mut p = procs::spawn(&name, launcher.command(script, l.hub, l.parent, index))?;
    match p.wait_line(READY_TIMEOUT) {
        Some(line) if line == "ready" => Ok(p),
        _ => {
            let f = p.kill();
            anyhow::bail!(
                "the Python agent {} did not start: {} ({}). It must join the hub's mic ring \
                 `<hub>.mic` and print `ready`; run it by hand to see why: {} {} --segments \
                 HUB --ring HUB.mic",
                script.display(),
                f.stderr.join(" / "),
                f.status,
                launcher.interpreter.to_string_lossy(),
                script.display()
            )
        }
    }
}

/// `load` CPU hogs (ordinary priority); one that does not start is a warning.
pub fn hogs(load: u32, parent: u32, warnings: &mut Vec<String>) -> Vec<Proc> {
    let mut hogs = Vec::new();
    for i in 0..load {
        let a = vec![
            "agent".into(),
            "--role".into(),
            "hog".into(),
            "--parent".into(),
            parent.to_string(),
        ];
        match procs::spawn_self(&format!("hog {}", i + 1), &a) {
            Ok(p) => hogs.push(p),
            Err(e) => warnings.push(format!("CPU hog {} did not start: {e:#}", i + 1)),
        }
    }
    hogs
}

/// The `--keep-awake` child while it runs: a `SCHED_IDLE` spinner on every CPU
/// ([`voxring_linux::awake`]). Dropping it kills the child (by PID) on every path.
#[derive(Debug)]
pub struct Awake {
    proc: Option<Proc>,
    /// CPUs kept awake.
    pub cpus: u32,
}

impl Drop for Awake {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            let _ = p.kill();
        }
    }
}

/// Starts the `--keep-awake` child and waits until every spinner runs; `None` and a warning
/// when it cannot (the run goes on without it, and says so).
pub fn keep_awake(parent: u32, warnings: &mut Vec<String>) -> Option<Awake> {
    let a = vec![
        "agent".into(),
        "--role".into(),
        "awake".into(),
        "--parent".into(),
        parent.to_string(),
    ];
    let mut p = match procs::spawn_self("keep-awake", &a) {
        Ok(p) => p,
        Err(e) => {
            warnings.push(format!("--keep-awake: the spinners did not start: {e:#}"));
            return None;
        }
    };
    let line = p.wait_line(READY_TIMEOUT);
    match line.as_deref().and_then(|l| l.strip_prefix("ready ")) {
        Some(n) => Some(Awake {
            proc: Some(p),
            cpus: n.trim().parse().unwrap_or(0),
        }),
        None => {
            let f = p.kill();
            warnings.push(format!(
                "--keep-awake: the spinners did not start ({}: {}); the CPUs were left to go \
                 idle",
                f.status,
                f.stderr.join(" / ")
            ));
            None
        }
    }
}
