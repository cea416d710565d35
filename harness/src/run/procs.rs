//! Child processes of `voxring run`: the agents and the CPU hogs, each a re-exec of this binary
//! (or, for a Python agent, its interpreter).
//!
//! Every child is started in its own process group, so the terminal's Ctrl-C reaches only the
//! orchestrator, which then ends the stream in order and collects a partial report. Every child
//! also asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`), so nothing
//! outlives an orchestrator that crashed or was killed. Children are stopped by PID only.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A running child process whose stdout and stderr are being collected.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    stdout: Receiver<String>,
    stdout_thread: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<Vec<String>>>,
    /// Lines already taken from `stdout` by [`Proc::wait_line`].
    seen: Vec<String>,
}

/// How a child ended.
#[derive(Debug)]
pub struct Finished {
    pub pid: u32,
    /// Everything it wrote on stdout.
    pub stdout: String,
    /// Its stderr, line by line.
    pub stderr: Vec<String>,
    /// `exit status 0`, `killed after the grace period`, ...
    pub status: String,
    /// It exited by itself with status 0 (not killed, not failed).
    pub clean_exit: bool,
}

/// Starts `voxring <args...>` (this same executable) as a child named `name`.
pub fn spawn_self(name: &str, args: &[String]) -> anyhow::Result<Proc> {
    spawn(name, self_command(args)?)
}

/// `voxring <args...>` (this same executable), not started.
fn self_command(args: &[String]) -> anyhow::Result<Command> {
    let exe =
        std::env::current_exe().context("cannot find this program's own path to start an agent")?;
    let mut cmd = Command::new(&exe);
    cmd.args(args);
    // The agent asks again itself ([`die_with_parent`]); this closes the window before it does.
    die_with_parent_before_exec(&mut cmd, std::process::id());
    Ok(cmd)
}

/// Like [`spawn_self`], and the child inherits `file` under the same descriptor number
/// (`file.as_raw_fd()`, to be passed on its command line). Every other descriptor of this
/// process stays close-on-exec.
pub fn spawn_self_with_fd(name: &str, args: &[String], file: &File) -> anyhow::Result<Proc> {
    let mut cmd = self_command(args)?;
    voxring_linux::process::inherit_fd(&mut cmd, file.as_fd())
        .with_context(|| format!("cannot pass the recording's descriptor to the {name} process"))?;
    spawn(name, cmd)
}

/// Makes `cmd`'s process ask the kernel for SIGKILL when this process's spawning thread dies
/// (`PR_SET_PDEATHSIG`, set in the child between fork and exec, so it holds for any program,
/// e.g. a user's Python script that does not ask for it), and refuse to start if `parent`
/// is already gone. Spawn from the main thread: the signal follows the thread that forked.
/// See [`voxring_linux::process::die_with_parent_before_exec`].
pub fn die_with_parent_before_exec(cmd: &mut Command, parent: u32) {
    voxring_linux::process::die_with_parent_before_exec(cmd, parent);
}

/// Starts `cmd` as a child named `name`: stdin closed, stdout and stderr collected, in its own
/// process group. To die with this process, `cmd` must have gone through
/// [`die_with_parent_before_exec`] (as [`spawn_self`]'s and the Python agents' commands do).
pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Proc> {
    let exe = PathBuf::from(cmd.get_program());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: the terminal's SIGINT goes to the orchestrator alone.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start the {name} process ({})", exe.display()))?;
    let out = child
        .stdout
        .take()
        .context("the child's stdout was not piped")?;
    let err = child
        .stderr
        .take()
        .context("the child's stderr was not piped")?;
    let (tx, stdout) = channel();
    let stdout_thread = std::thread::Builder::new()
        .name(format!("{name}-stdout"))
        .spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
        .context("cannot start a thread to read a child's output")?;
    let stderr = std::thread::Builder::new()
        .name(format!("{name}-stderr"))
        .spawn(move || BufReader::new(err).lines().map_while(Result::ok).collect())
        .context("cannot start a thread to read a child's output")?;
    Ok(Proc {
        child,
        stdout,
        stdout_thread: Some(stdout_thread),
        stderr: Some(stderr),
        seen: Vec::new(),
    })
}

impl Proc {
    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the next line on the child's stdout; `None` on timeout or
    /// when the child closed its stdout (exited).
    pub fn wait_line(&mut self, timeout: Duration) -> Option<String> {
        match self.stdout.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// `Some(description)` once the child has exited (without reaping the output threads).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot be waited for: {e}")),
        }
    }

    /// Waits up to `grace` for the child to exit by itself, then kills it (SIGKILL, by PID)
    /// and reaps it.
    pub fn finish(mut self, grace: Duration) -> Finished {
        let deadline = Instant::now() + grace;
        let mut status = None;
        let mut clean_exit = false;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    clean_exit = st.success();
                    status = Some(st.to_string());
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        let status = match status {
            Some(s) => s,
            None => {
                let _ = self.child.kill();
                let st = self.child.wait();
                format!(
                    "killed after {:.1} s grace ({})",
                    grace.as_secs_f64(),
                    st.map_or_else(|e| e.to_string(), |s| s.to_string())
                )
            }
        };
        if let Some(h) = self.stdout_thread.take() {
            let _ = h.join();
        }
        let mut lines = std::mem::take(&mut self.seen);
        lines.extend(self.stdout.try_iter());
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Finished {
            pid: self.child.id(),
            stdout: lines.join("\n"),
            stderr,
            status,
            clean_exit,
        }
    }

    /// Kills the child at once (SIGKILL, by PID) and reaps it.
    pub fn kill(self) -> Finished {
        self.finish(Duration::ZERO)
    }
}

/// Called first thing in every child: die with the parent (`PR_SET_PDEATHSIG`), and exit at
/// once if the parent is already gone (the race between fork and the prctl).
pub fn die_with_parent(parent: u32) -> anyhow::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("cannot ask to be stopped with the orchestrator (prctl PR_SET_PDEATHSIG)")?;
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    anyhow::ensure!(
        ppid == parent,
        "the orchestrator (pid {parent}) is gone; nothing to do"
    );
    Ok(())
}

/// The body of the `--keep-awake` child: a `SCHED_IDLE` spinner on every CPU it may use
/// ([`voxring_linux::awake`]); prints `ready N` once all N spin, then waits to be killed.
pub fn keep_awake() -> ! {
    use std::io::Write as _;
    let cpus = voxring_linux::rt::allowed_cpus();
    match voxring_linux::awake::KeepAwake::start(&cpus) {
        Ok(k) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "ready {}", k.spinners());
            let _ = out.flush();
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}

/// The body of a CPU hog: ordinary priority, spins on arithmetic until killed.
pub fn hog() -> ! {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    loop {
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
    }
}
