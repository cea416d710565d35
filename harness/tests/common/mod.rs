//! Helpers shared by the harness's end-to-end tests: the built `voxring` binary, private
//! folders for a test's files, and the root check of the tests that need it.
#![allow(dead_code, unused_macros)]

use std::path::Path;
use std::process::Command;

#[allow(unused_imports)]
pub use voxring_test_support::wait_until;

/// The `voxring` binary cargo built for these tests.
pub fn voxring() -> Command {
    Command::new(env!("CARGO_BIN_EXE_voxring"))
}

/// The Python of the voice tests: $VOXRING_VOICE_PYTHON (the test venv), else python3, if
/// it runs `imports`. None (the test skips) when not, except under CI=true; `fix` says what
/// to install.
pub fn voice_python(imports: &str, fix: &str) -> Option<std::path::PathBuf> {
    let py = std::env::var_os("VOXRING_VOICE_PYTHON")
        .map_or_else(|| "python3".into(), std::path::PathBuf::from);
    let ok = Command::new(&py)
        .args(["-c", imports])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    let why = format!(
        "{} cannot run {imports:?}: {fix}, and set VOXRING_VOICE_PYTHON",
        py.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    println!("skipped: {why}");
    None
}

/// Runs `cmd` (a `voxring` command line), which must be refused as a usage error (exit 2);
/// its stderr, what it told the user.
#[track_caller]
pub fn usage_error(cmd: &mut Command) -> String {
    voxring_test_support::stderr_of_failure(cmd, 2, "voxring")
}

/// `voxring run --device <device> --seconds <seconds> --no-progress`: add the rest.
pub fn voxring_run(device: &str, seconds: &str) -> Command {
    let mut cmd = voxring();
    cmd.args([
        "run",
        "--device",
        device,
        "--seconds",
        seconds,
        "--no-progress",
    ]);
    cmd
}

/// A private folder for this test's files (tempfile), removed when dropped.
pub struct TestDir(tempfile::TempDir);

impl TestDir {
    pub fn new(name: &str) -> Self {
        Self(
            tempfile::Builder::new()
                .prefix(&format!("voxring-test-{name}-"))
                .tempdir()
                .unwrap(),
        )
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Ends the `#[test]` it stands in, saying it was skipped and why, unless running as root.
macro_rules! root_only {
    ($why:expr) => {
        if !$crate::common::is_root() {
            println!("skipped: needs root to {}", $why);
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use root_only;
