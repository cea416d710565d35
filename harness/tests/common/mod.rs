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

/// A Python 3 that imports the voxring package (and numpy), found as `voxring run` finds one
/// (`VOXRING_PYTHON`, else `python3`, else `/usr/bin/python3`).
pub fn package_python() -> Option<String> {
    let candidates: Vec<String> = match std::env::var("VOXRING_PYTHON") {
        Ok(p) => vec![p],
        Err(_) => vec!["python3".to_owned(), "/usr/bin/python3".to_owned()],
    };
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import numpy, voxring"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// [`package_python`], or None after saying the test is skipped; under CI nothing is
/// skipped: a Python without the package is a failure there.
pub fn package_python_or_skip() -> Option<String> {
    let found = package_python();
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no Python 3 with the voxring package (VOXRING_PYTHON, python3, /usr/bin/python3): \
             pip install platform-linux/python into a venv and set VOXRING_PYTHON to its python"
        );
        println!(
            "skipped: no Python 3 with the voxring package (set VOXRING_PYTHON to run this test)"
        );
    }
    found
}
