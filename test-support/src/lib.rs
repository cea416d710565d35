//! What the integration tests of the voxring crates share (a dev-dependency only, never
//! published): a child process read line by line and stopped by its PID ([`Proc`]), running
//! a command that must succeed, a private temporary folder, the strict C compiler the C peers
//! are built with, the C library installed under a prefix (and `pkg-config` over it), and the
//! names a test left in `/dev/shm`.
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

/// The workspace's root folder.
pub fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds test-support")
        .to_path_buf()
}

/// Installs the C library the way C libraries are installed, under `prefix`:
/// `scripts/install-c --prefix <prefix>` (a release build of voxring-ffi into its own target
/// directory, under `$CARGO_TARGET_DIR` when set, then the library, header and `voxring.pc`).
pub fn install_c(prefix: &std::path::Path) {
    let mut cmd = Command::new(workspace().join("scripts/install-c"));
    cmd.arg("--prefix").arg(prefix);
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        cmd.arg("--target-dir")
            .arg(std::path::Path::new(&t).join("install-c"));
    }
    output_ok(&mut cmd, "scripts/install-c");
}

/// `pkg-config <what> voxring` against the library [`install_c`] put under `prefix`.
pub fn pkg_config(prefix: &std::path::Path, what: &str) -> String {
    let out = output_ok(
        Command::new("pkg-config")
            .args([what, "voxring"])
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")),
        &format!("pkg-config {what} voxring (apt-get install pkg-config)"),
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Builds the C program `src` (a path inside the workspace) into `out` the way a C user
/// would: [`strict_cc`] with `pkg-config --cflags --libs voxring` over the library
/// [`install_c`] put under `prefix`, and nothing else (checked: no flag points into
/// `target/`, and they name `prefix`).
pub fn cc_with_pkg_config(prefix: &std::path::Path, src: &str, out: &std::path::Path) {
    let flags = format!(
        "{} {}",
        pkg_config(prefix, "--cflags"),
        pkg_config(prefix, "--libs")
    );
    assert!(
        !flags.contains("target/"),
        "pkg-config points into target/: {flags}"
    );
    assert!(
        flags.contains(prefix.to_str().expect("a UTF-8 prefix")),
        "{flags}"
    );
    output_ok(
        strict_cc()
            .arg("-D_POSIX_C_SOURCE=200809L")
            .arg(workspace().join(src))
            .args(flags.split_whitespace())
            .arg("-o")
            .arg(out),
        &format!("building {src} with pkg-config's flags (cc)"),
    );
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

/// The threads of process `pid` (`"self"` for this one) as (name, scheduling policy, CPUs
/// allowed as `/proc` lists them, e.g. `"0-1"`), read from `/proc/PID/task`. The policy is
/// the kernel's number (0 SCHED_OTHER, 1 SCHED_FIFO, 5 SCHED_IDLE; `u32::MAX` when
/// unreadable). A process that is gone has none.
pub fn threads_of(pid: &str) -> Vec<(String, u32, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in tasks.flatten() {
        let dir = e.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // After the ") " that closes the name: the policy is field 41 of proc_pid_stat(5),
        // the 39th after the name.
        let policy = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(38))
            .and_then(|p| p.parse().ok())
            .unwrap_or(u32::MAX);
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_owned();
        v.push((name.trim().to_owned(), policy, allowed));
    }
    v
}

/// How many CPUs a `/proc` CPU list (`0-1,3`) names.
pub fn cpus_in(list: &str) -> usize {
    list.split(',')
        .filter_map(|r| match r.split_once('-') {
            Some((a, b)) => Some(b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1),
            None => r.parse::<usize>().ok().map(|_| 1),
        })
        .sum()
}

/// `--keep-awake`'s child of `voxring run` or `voxring serve` with PID `parent`, and the
/// scheduling policies of its spinner threads (`keep-awake-N`): `None` while there is none.
pub fn keep_awake_child(parent: u32) -> Option<(u32, Vec<u32>)> {
    let needle = format!("agent\0--role\0awake\0--parent\0{parent}\0");
    let pid = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })?;
    let spinners = threads_of(&pid.to_string())
        .into_iter()
        .filter(|(name, ..)| name.starts_with("keep-awake-"))
        .map(|(_, policy, _)| policy)
        .collect();
    Some((pid, spinners))
}

/// Whether `--keep-awake`'s child of `parent` runs a `SCHED_IDLE` spinner (policy 5,
/// linux/sched.h) on each of this process's CPUs (the child inherits them).
pub fn keeps_every_cpu_awake(parent: u32) -> bool {
    let cpus = cpus_in(&threads_of("self")[0].2);
    keep_awake_child(parent).is_some_and(|(_, s)| s.len() == cpus && s.iter().all(|&p| p == 5))
}
