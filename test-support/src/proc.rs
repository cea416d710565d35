//! A child process a test starts: its stdout arrives as lines, it is stopped by its PID
//! (SIGTERM, then SIGKILL) and reaped when dropped, so a failing test leaves no process.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::Signal;

/// Give-up bound for a child's line or exit: never reached unless something is broken.
pub const GIVE_UP: Duration = Duration::from_secs(60);

/// How long a dropped child has to end on SIGTERM (a hub removes its segments on it) before
/// it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);

/// A child process with its stdout as lines (stderr goes to the test's); stopped by PID and
/// reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    /// Starts `cmd` with its stdout piped to [`Proc::line`] and its stderr inherited.
    #[track_caller]
    pub fn start(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line read so far, in order (for a failure's message).
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// The next line starting with `prefix`; the lines before it are kept in
    /// [`Proc::seen`]. Panics, with what the child printed, if none came within [`GIVE_UP`]
    /// (or the child closed its stdout first).
    #[track_caller]
    pub fn line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + GIVE_UP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line starting with {prefix:?} from pid {} (got {:?}; exit {:?})",
                    self.pid(),
                    self.seen,
                    self.child.try_wait()
                ),
            }
        }
    }

    /// Closes the child's standard input (started with `Stdio::piped()`): a child reading it
    /// sees its end. Nothing if it was not piped or is closed already.
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Whether the child has not ended yet.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Waits (up to [`GIVE_UP`]) for the child to end; its exit status.
    #[track_caller]
    pub fn wait_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + GIVE_UP;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "pid {} never ended", self.pid());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to [`GIVE_UP`]) for the child to end; its exit code (None: a signal).
    #[track_caller]
    pub fn exit_code(&mut self) -> Option<i32> {
        self.wait_status().code()
    }

    /// Sends `sig` to the child by its PID (nothing if it was reaped already).
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid() as i32) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.signal(Signal::TERM);
            let deadline = Instant::now() + TERM_GRACE;
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.is_running() {
            self.signal(Signal::KILL);
        }
        let _ = self.child.wait();
    }
}
