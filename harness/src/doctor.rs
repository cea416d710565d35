//! `voxring doctor`: is this machine ready for real-time audio?
//!
//! Read-only checks with the same ids, files and rules as `kernel-tuning/check` (the contract is
//! `kernel-tuning/CHECKS.md`; both give the same verdict on the same tree), then live probes that
//! a file cannot tell: SCHED_FIFO actually granted, timer wake-up latency (cyclictest-style) and
//! futex wake latency. Every path is read under an overridable root (`--root` or `VOXRING_ROOT`)
//! so tests run the doctor against a fixture tree.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

mod checks;

pub(crate) use checks::idle_vcpus_halt;
pub(crate) mod probes;
mod sys;

use checks::file_checks;
use sys::Sys;

/// Options of this command.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when no check fails, 1 when any check fails, 2 on a usage \
error.\nEnvironment (as kernel-tuning/check): VOXRING_ROOT, VOXRING_USER, VOXRING_HOME, \
VOXRING_EUID, VOXRING_BIN, VOXRING_AUDIO_CPU (see kernel-tuning/CHECKS.md)."
)]
pub struct Args {
    /// Write the checks as a JSON array [{id,status,found,fix}] to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Read /proc, /sys, /etc, /boot, /dev, /usr under DIR instead of / (wins over VOXRING_ROOT).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Skip the live probes (SCHED_FIFO, timer jitter, futex wake).
    #[arg(long)]
    no_probes: bool,
    /// How long the timer-jitter probe runs, in seconds.
    #[arg(long, default_value_t = 3.0)]
    probe_seconds: f64,
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check: what was found and how to fix it (`none` when ok).
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub status: Status,
    pub found: String,
    pub fix: String,
}

/// What one check found, before it is named: [`good`], [`warn`] or [`fail`].
#[derive(Debug, Clone)]
pub struct Finding {
    status: Status,
    found: String,
    fix: String,
}

impl Finding {
    /// The check `id`'s result.
    fn named(self, id: &'static str) -> Check {
        Check {
            id,
            status: self.status,
            found: self.found,
            fix: self.fix,
        }
    }
}

/// Nothing to fix.
fn good(found: impl Into<String>) -> Finding {
    Finding {
        status: Status::Ok,
        found: found.into(),
        fix: "none".into(),
    }
}

/// Works, but worse than it could: `fix` says how to do better.
fn warn(found: impl Into<String>, fix: &str) -> Finding {
    Finding {
        status: Status::Warn,
        found: found.into(),
        fix: fix.into(),
    }
}

/// Real-time audio will not work as it should until `fix` is done.
fn fail(found: impl Into<String>, fix: &str) -> Finding {
    Finding {
        status: Status::Fail,
        found: found.into(),
        fix: fix.into(),
    }
}

/// Entry point of `voxring doctor`.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    if !(args.probe_seconds.is_finite() && args.probe_seconds > 0.0 && args.probe_seconds <= 600.0)
    {
        anyhow::bail!(
            "--probe-seconds {} is out of range: give a number of seconds above 0, at most 600",
            args.probe_seconds
        );
    }
    let s = Sys::from_env(args.root.as_deref());
    let mut checks = file_checks(&s);
    if !args.no_probes {
        checks.extend(probes::run(args.probe_seconds, s.pw_clock()));
    }
    let to_stdout = args.json.as_ref().is_some_and(|p| p.as_os_str() == "-");
    if !to_stdout {
        for c in &checks {
            println!(
                "{} {}: {} -- fix: {}",
                c.status.word(),
                c.id,
                c.found,
                c.fix
            );
        }
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&checks)?;
        if to_stdout {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
