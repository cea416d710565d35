//! Test tools that the integration tests of platform-linux, bridge and harness share (bridge's
//! and harness's tests include this file with `#[path]`; it needs only `std` and `tempfile`,
//! which each of those crates has as a dev-dependency): running a command that must succeed, a
//! private temporary folder, and the strict C compiler the C peers are built with.
// Each test crate that includes this uses part of it.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs `cmd` to its end and returns its output; panics, with its stderr, unless it started
/// and exited 0. `what` names it in the message, with a hint of what to install where one
/// helps ("pkg-config (apt-get install pkg-config)").
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
