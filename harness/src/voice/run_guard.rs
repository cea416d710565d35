//! What `voxring voice assistant` starts, and how it is all taken down again, whichever way
//! the run ends: the hub child, the agents and the CPU hogs are held by a [`RunGuard`] from
//! the moment each is started; dropping it (a normal end, an error returned half-way through
//! the start, a panic unwinding) stops each by its PID and then removes the run's segments
//! that nobody uses any more (`voxring.NAME` and `voxring.NAME.*` in /dev/shm: a crashed
//! agent's control register, a hub killed after its grace period).

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::run::procs::{self, Finished, Proc};

/// The hub's settings `voxring serve` is started with.
#[derive(Debug, Clone)]
pub struct HubSettings<'a> {
    pub device: &'a str,
    pub quantum: u32,
    pub periods: u32,
    pub mic_frames: u32,
    /// The hub's output queues: target depth and band (`voxring serve --target/--band`).
    pub queue: (u32, u32),
}

/// A `voxring serve` child, stopped by its PID.
#[derive(Debug)]
pub struct HubProc {
    child: Child,
}

impl HubProc {
    /// Starts the hub `name` and waits (up to 60 s) until it can be joined.
    pub fn start(name: &str, s: &HubSettings<'_>, json: &Path, log: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this program's own path")?;
        let log = std::fs::File::create(log).context("cannot create the hub's log")?;
        let mut cmd = Command::new(exe);
        cmd.args(["serve", "--name", name, "--device", s.device])
            .args(["--channels", "1", "--format", "s16", "--rate", "48000"])
            .args(["--quantum", &s.quantum.to_string()])
            .args(["--periods", &s.periods.to_string()])
            .args(["--mic-frames", &s.mic_frames.to_string()])
            .args([
                "--target",
                &s.queue.0.to_string(),
                "--band",
                &s.queue.1.to_string(),
            ])
            .arg("--json")
            .arg(json)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        procs::die_with_parent_before_exec(&mut cmd, std::process::id());
        let child = cmd.spawn().context("cannot start `voxring serve`")?;
        let mut hub = HubProc { child };
        let t0 = Instant::now();
        loop {
            if voxring_linux::hub::Hub::find(name, &Default::default()).is_ok() {
                return Ok(hub);
            }
            if let Some(st) = hub.child.try_wait()? {
                anyhow::bail!("the hub exited before it was ready ({st}); see its log above");
            }
            if t0.elapsed() > Duration::from_secs(60) {
                hub.stop();
                anyhow::bail!("the hub did not start within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM by PID (readers get an end of stream), SIGKILL after a grace period.
    pub fn stop(&mut self) -> String {
        if let Ok(Some(st)) = self.child.try_wait() {
            return st.to_string();
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.to_string();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        format!("killed after 20 s ({:?})", self.child.wait())
    }
}

/// Everything one run started. See the module's doc.
#[derive(Debug)]
pub struct RunGuard {
    name: String,
    pub hub: Option<HubProc>,
    pub agents: Vec<(&'static str, Proc)>,
    pub hogs: Vec<Proc>,
}

impl RunGuard {
    /// A guard for the run whose hub is `name` (nothing started yet).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            hub: None,
            agents: Vec::new(),
            hogs: Vec::new(),
        }
    }

    /// Stops the hub (its readers see the end of the stream); its status.
    pub fn stop_hub(&mut self) -> String {
        self.hub
            .take()
            .map_or_else(|| "not started".to_owned(), |mut h| h.stop())
    }

    /// Lets each agent end by itself within `grace` (then kills it), kills the hogs.
    pub fn finish_agents(&mut self, grace: Duration) -> Vec<(&'static str, Finished)> {
        for h in self.hogs.drain(..) {
            h.kill();
        }
        self.agents
            .drain(..)
            .map(|(w, p)| (w, p.finish(grace)))
            .collect()
    }

    /// Removes the run's segments that nobody uses any more; their names.
    pub fn sweep(&self) -> Vec<String> {
        let own = format!("voxring.{}", self.name);
        let mine = |f: &str| {
            f.strip_prefix(own.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        match voxring_linux::cleanup::clean_segments_matching(mine) {
            Ok(r) => r.removed,
            Err(e) => {
                eprintln!("voxring voice assistant: cannot scan /dev/shm for {own}.*: {e}");
                Vec::new()
            }
        }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.stop_hub();
        for (_, p) in self.agents.drain(..) {
            p.kill();
        }
        for h in self.hogs.drain(..) {
            h.kill();
        }
        self.sweep();
    }
}
