//! What the integration tests of the voxring crates share (a dev-dependency only, never
//! published): a child process read line by line and stopped by its PID ([`Proc`]), running
//! a command that must succeed, a private temporary folder, the strict C compiler the C peers
//! are built with, and the names a test left in `/dev/shm`.
//!
//! Nothing here measures or asserts a time: every wait has a give-up bound that is reached
//! only when something is broken.

mod proc;

pub use proc::{GIVE_UP, Proc};

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs `cmd` to its end and returns its output; panics, with its stderr, unless it started
/// and exited 0. `what` names it in the message, with a hint of what to install where one
/// helps ("pkg-config (apt-get install pkg-config)").
#[track_caller]
pub fn output_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what} could not be started: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd` to its end, which must fail with exit code `code`; returns its stderr (what
/// it told the user). `what` names it in the message.
#[track_caller]
pub fn stderr_of_failure(cmd: &mut Command, code: i32, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what} could not be started: {e}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: the wrong exit status; stderr:\n{err}"
    );
    err
}

/// A temporary folder only this user may enter (mode 0700, a random name under `$TMPDIR`
/// starting with `prefix`): nothing in it can be predicted, reached or planted by another
/// user. Removed with its contents when dropped.
pub fn private_dir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("a private temporary folder (is $TMPDIR writable?)")
}

/// `$CC` (else `cc`) compiling C11 with every warning an error: how the tests build the C
/// programs written against voxring's documents and C ABI. The caller adds its sources,
/// flags and `-o`.
pub fn strict_cc() -> Command {
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror"]);
    cc
}

/// The names of the files in `/dev/shm` for which `keep` holds (e.g. a test's prefix).
pub fn shm_names(keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .expect("list /dev/shm")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| keep(n))
        .collect()
}

/// Asserts that no file of `/dev/shm` for which `ours` holds (a test's names) is left.
#[track_caller]
pub fn assert_no_shm(ours: impl Fn(&str) -> bool) {
    let left = shm_names(ours);
    assert!(
        left.is_empty(),
        "segments left behind in /dev/shm: {left:?}"
    );
}

/// Waits until `cond` holds, checking every 20 ms and giving up after `give_up` (a bound for
/// a hung test, never a timing expectation); false if it never held.
pub fn wait_until(give_up: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + give_up;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
