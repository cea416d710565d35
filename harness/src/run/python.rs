//! Python agents of `voxring run` (`--agents python:path/to/agent.py`).
//!
//! The script is started as
//! `<python> PATH --segments <prefix> --parent <pid> --index <i>` with the voxring Python
//! package importable (`PYTHONPATH`) and the C library it loads named (`VOXRING_LIB`). It
//! follows the same protocol as the Rust agents: it joins `<prefix>.capture` as a consumer,
//! prints `ready`, and at the end one JSON line ([`PythonOutput`]; the example is
//! `platform-linux/python/examples/agent.py`). It does not mark the cycle fence, so it is
//! left out of the fence's mask: its lateness is not measured (the report says `-`).
//!
//! The script dies with the orchestrator whether or not it asks to: the harness sets
//! `PR_SET_PDEATHSIG` (SIGKILL) in the child between fork and exec
//! ([`super::procs::die_with_parent_before_exec`]), as for the Rust agents.
//!
//! Where things are found: the interpreter is `$VOXRING_PYTHON`, else the first of `python3` (on
//! `PATH`) and `/usr/bin/python3` that can `import numpy`; the library and the package are found
//! by [`crate::locate`] (`$VOXRING_LIB`, `$VOXRING_PYTHONPATH`, else next to this program and in
//! its source tree).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
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
    /// The interpreter (one that imports numpy).
    pub interpreter: OsString,
    /// `libvoxring_ffi.so`, when found (else the package looks for it itself).
    pub lib: Option<PathBuf>,
    /// The folder holding the `voxring` package, when found.
    pub package_dir: Option<PathBuf>,
}

/// Whether `python` runs and can `import numpy` (what every Python peer of the harness needs).
pub(crate) fn imports_numpy(python: &std::ffi::OsStr) -> bool {
    Command::new(python)
        .args(["-c", "import numpy"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl PythonLauncher {
    /// Finds an interpreter with numpy, the library and the package; checks the scripts exist.
    pub fn find(scripts: &[&Path]) -> anyhow::Result<Self> {
        for s in scripts {
            anyhow::ensure!(
                s.is_file(),
                "the Python agent {} does not exist (or is not a file): give the path of a \
                 script, e.g. --agents python:platform-linux/python/examples/agent.py",
                s.display()
            );
        }
        let interpreter = match std::env::var_os("VOXRING_PYTHON") {
            Some(p) => {
                anyhow::ensure!(
                    imports_numpy(&p),
                    "VOXRING_PYTHON={} cannot `import numpy` (or does not run): install numpy \
                     for it (`{} -m pip install numpy`) or point VOXRING_PYTHON at a Python 3 \
                     that has it",
                    p.to_string_lossy(),
                    p.to_string_lossy()
                );
                p
            }
            None => ["python3", "/usr/bin/python3"]
                .into_iter()
                .map(OsString::from)
                .find(|p| imports_numpy(p))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no Python 3 with numpy found (tried python3 on PATH and \
                         /usr/bin/python3): Python agents need numpy. Install it (`apt-get \
                         install python3-numpy` or `python3 -m pip install numpy`), or set \
                         VOXRING_PYTHON to an interpreter that has it"
                    )
                })?,
        };
        Ok(Self {
            interpreter,
            lib: crate::locate::library().ok(),
            package_dir: crate::locate::python_package_dir(),
        })
    }

    /// The command that starts `script` as agent `index` of the run.
    pub fn command(&self, script: &Path, prefix: &str, parent: u32, index: usize) -> Command {
        let mut cmd = Command::new(&self.interpreter);
        // A user's script need not ask for PR_SET_PDEATHSIG: the harness does, before exec.
        super::procs::die_with_parent_before_exec(&mut cmd, parent);
        // Unbuffered: `ready` and the report line reach the orchestrator at once.
        cmd.arg("-u")
            .arg(script)
            .args(["--segments", prefix, "--parent"])
            .arg(parent.to_string())
            .arg("--index")
            .arg(index.to_string());
        if let Some(lib) = &self.lib {
            cmd.env("VOXRING_LIB", lib);
        }
        if let Some(dir) = &self.package_dir {
            let mut paths = vec![dir.clone()];
            if let Some(old) = std::env::var_os("PYTHONPATH") {
                paths.extend(std::env::split_paths(&old));
            }
            if let Ok(joined) = std::env::join_paths(paths) {
                cmd.env("PYTHONPATH", joined);
            }
        }
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
