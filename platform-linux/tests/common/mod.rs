//! Helpers shared by the integration tests: unique segment names, child processes that are
//! this same test binary re-executed in a role, and clean-up that leaves nothing behind.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Environment variable selecting the role a re-executed test binary plays.
pub const ROLE_VAR: &str = "VOXRING_TEST_ROLE";

/// A segment name unique to this process and call: `t<pid>-<tag>-<n>`.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    // Relaxed: uniqueness only.
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("t{}-{tag}-{n}", std::process::id())
}

/// `/dev/shm/voxring.<name>`.
pub fn shm_path(name: &str) -> PathBuf {
    voxring_linux::segment::path_of(name).expect("valid test name")
}

/// Removes `/dev/shm/voxring.<name>` (and temporaries of it) when dropped.
pub struct ShmCleanup(pub String);

impl Drop for ShmCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(shm_path(&self.0));
        if let Ok(names) = voxring_linux::cleanup::segment_file_names() {
            let prefix = format!("voxring.{}.tmp-", self.0);
            for n in names {
                if n.to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(PathBuf::from("/dev/shm").join(n));
                }
            }
        }
    }
}

/// A child process killed (by PID) and reaped when dropped.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present")
    }
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("child present").id()
    }
    /// Waits for the child and returns its status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let mut c = self.0.take().expect("child present");
        c.wait().expect("wait for child")
    }
    /// Waits and returns (status, stdout).
    pub fn wait_output(&mut self) -> (std::process::ExitStatus, String) {
        let c = self.0.take().expect("child present");
        let out = c.wait_with_output().expect("wait for child");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
    /// Sends SIGKILL by PID and reaps.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Re-executes this test binary to run `entry` (a `#[test]` function name) in `role`, with
/// extra environment. stdout is piped; stderr is inherited.
pub fn spawn_role(entry: &str, role: &str, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.arg("--exact")
        .arg(entry)
        .arg("--nocapture")
        .arg("--test-threads=1")
        .env(ROLE_VAR, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The role this process was started in, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// Reads an env var set by the parent.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child needs {name}"))
}

/// A small deterministic PRNG (xorshift64*), so children and parents agree on payloads.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A seed from the clock and pid (printed by tests that use it, for reproduction).
pub fn seed() -> u64 {
    if let Ok(s) = std::env::var("VOXRING_TEST_SEED") {
        if let Ok(v) = s.parse() {
            return v;
        }
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (t ^ u64::from(std::process::id()).rotate_left(32)) | 1
}
