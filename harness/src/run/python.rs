//! Python agents of `voxring run` (`--agents python:path/to/agent.py`).
//!
//! The script is started as
//! `<python> PATH --segments <hub> --ring <hub>.mic --parent <pid> --index <i>` by an
//! interpreter that can `import voxring` (the native package: `pip install
//! platform-linux/python`). It joins the run's hub as any outside Python agent does (a reader
//! of the mic ring `<hub>.mic`, docs/hub.md), prints `ready`,
//! and at the end one JSON line ([`PythonOutput`]; the example is
//! `platform-linux/python/examples/agent.py`). It does not mark the cycle fence, so it is
//! left out of the fence's mask: its lateness is not measured (the report says `-`).
//!
//! The script dies with the orchestrator whether or not it asks to: the harness sets
//! `PR_SET_PDEATHSIG` (SIGKILL) in the child between fork and exec
//! ([`super::procs::die_with_parent_before_exec`]), as for the Rust agents.
//!
//! Where the interpreter is found: `$VOXRING_PYTHON` (it must import voxring and numpy), else
//! the first of `python3` (on `PATH`) and `/usr/bin/python3` that does. The package is
//! installed into that interpreter (or its virtual environment); nothing is put on
//! `PYTHONPATH` and no library path is passed.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Deserialize;

/// Percentiles of the hand-off (commit → frame in the agent's hands), in nanoseconds (`p90`
/// is also reported, and ignored).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct HandoffNs {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// What `voxring run` reads of the JSON line a Python agent prints at the end (other fields,
/// such as `role`, `samples`, `xruns` and `level_dbfs_mean`, are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct PythonOutput {
    pub frames: u64,
    /// Frames the ring reported lost to this reader.
    pub lost: u64,
    /// CRC-32 of every payload byte read, in order (hex).
    pub checksum: String,
    pub handoff_ns: HandoffNs,
    pub cpu_ns: u64,
    pub wall_ns: u64,
    /// `shm`, or `socket-fallback`.
    pub transport: String,
    /// Why the fallback was chosen (empty over shared memory).
    #[serde(default)]
    pub transport_reason: String,
    pub exit: String,
}

/// How to start Python agents on this machine.
#[derive(Debug, Clone)]
pub struct PythonLauncher {
    /// The interpreter (one that imports voxring and numpy).
    pub interpreter: OsString,
}

/// What to tell a user whose Python lacks the voxring package.
pub(crate) const INSTALL_VOXRING: &str = "install the package into a virtual environment \
     (`python3 -m venv ~/voxring-venv && ~/voxring-venv/bin/pip install platform-linux/python`, \
     from voxring's source tree; it needs a Rust toolchain) and set \
     VOXRING_PYTHON=~/voxring-venv/bin/python";

/// Whether `python` runs and can `import numpy` (what every Python peer of the harness needs).
pub(crate) fn imports_numpy(python: &std::ffi::OsStr) -> bool {
    imports(python, "numpy")
}

/// Whether `python` runs and can import the voxring package (and numpy, which it needs).
pub(crate) fn imports_voxring(python: &std::ffi::OsStr) -> bool {
    imports(python, "numpy, voxring")
}

/// The first interpreter that imports voxring: `$VOXRING_PYTHON` if set (else an error saying
/// what it lacks), else `python3`, else `/usr/bin/python3`.
pub(crate) fn find_voxring_python() -> anyhow::Result<OsString> {
    if let Some(p) = std::env::var_os("VOXRING_PYTHON").filter(|p| !p.is_empty()) {
        anyhow::ensure!(
            imports_voxring(&p),
            "VOXRING_PYTHON={} cannot `import voxring` (or numpy, or does not run): {INSTALL_VOXRING}",
            p.to_string_lossy()
        );
        return Ok(p);
    }
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .map(OsString::from)
        .find(|p| imports_voxring(p))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no Python 3 with the voxring package found (tried python3 on PATH and \
                 /usr/bin/python3): {INSTALL_VOXRING}"
            )
        })
}

/// Whether `python` runs and `import {modules}` succeeds.
fn imports(python: &std::ffi::OsStr, modules: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl PythonLauncher {
    /// Finds an interpreter with the voxring package; checks the scripts exist.
    pub fn find(scripts: &[&Path]) -> anyhow::Result<Self> {
        for s in scripts {
            anyhow::ensure!(
                s.is_file(),
                "the Python agent {} does not exist (or is not a file): give the path of a \
                 script, e.g. --agents python:platform-linux/python/examples/agent.py",
                s.display()
            );
        }
        Ok(Self {
            interpreter: find_voxring_python()?,
        })
    }

    /// The command that starts `script` as agent `index` of the run.
    pub fn command(&self, script: &Path, hub: &str, parent: u32, index: usize) -> Command {
        let mut cmd = Command::new(&self.interpreter);
        // A user's script need not ask for PR_SET_PDEATHSIG: the harness does, before exec.
        super::procs::die_with_parent_before_exec(&mut cmd, parent);
        // Unbuffered: `ready` and the report line reach the orchestrator at once.
        cmd.arg("-u")
            .arg(script)
            .args(["--segments", hub, "--ring"])
            .arg(voxring_linux::hub::mic_name(hub))
            .arg("--parent")
            .arg(parent.to_string())
            .arg("--index")
            .arg(index.to_string());
        cmd
    }
}

/// The Python agent's report: the last JSON line of its stdout.
pub fn parse_output(stdout: &str) -> Option<PythonOutput> {
    stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_example_agents_report_line() {
        let line = r#"{"role": "python", "index": 3, "frames": 10, "samples": 1280, "lost": 0, "xruns": 0, "checksum": "0a1b2c3d", "handoff_ns": {"p50": 1, "p90": 2, "p99": 3, "max": 4}, "level_dbfs_mean": -20.5, "cpu_ns": 5, "wall_ns": 6, "transport": "shm", "transport_reason": "", "exit": "end of stream"}"#;
        let out = parse_output(&format!("ready\n{line}\n")).unwrap();
        assert_eq!(out.frames, 10);
        assert_eq!(out.checksum, "0a1b2c3d");
        assert_eq!(out.handoff_ns.p99, 3);
        assert_eq!(out.transport, "shm");
        assert!(parse_output("ready\n{not json\n").is_none());
    }

    #[test]
    fn a_missing_script_is_a_clear_error() {
        let err = PythonLauncher::find(&[Path::new("/nonexistent/agent.py")]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/agent.py") && msg.contains("does not exist"),
            "{msg}"
        );
    }
}
