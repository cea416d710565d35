//! `voxring bridge export|import|bench ...`: runs the `voxring-bridge` program (crate
//! `bridge/`, kept apart so Zenoh's build stays out of this one) found next to this program,
//! in its place (`exec`), with the same arguments.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

/// The bridge's program name.
pub const PROGRAM: &str = "voxring-bridge";

/// Carry rings across hosts over Zenoh (`voxring bridge export RING --key KEY`,
/// `voxring bridge import KEY --ring NAME`, `voxring bridge bench`); `voxring bridge --help`
/// shows the bridge's own help.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Arguments for voxring-bridge.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

/// `voxring-bridge` next to `exe` (its `target/<profile>` folder, or the one above a test
/// binary's `deps/`).
fn find(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(PROGRAM))
        .find(|p| p.is_file())
}

/// [`find`], or an error saying how to build it.
fn locate(exe: &Path) -> anyhow::Result<PathBuf> {
    find(exe).with_context(|| {
        format!(
            "{PROGRAM} is not next to {}: build it with the same profile as voxring \
             (`cargo build -p voxring-bridge`, with --release for a release voxring), then run \
             this again",
            exe.display()
        )
    })
}

/// Replaces this process with `voxring-bridge ARGS`.
pub fn main(a: Args) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("finding this program")?;
    let bridge = locate(&exe)?;
    let err = std::process::Command::new(&bridge).args(&a.args).exec();
    bail!("running {}: {err}", bridge.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_bridge_program_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = locate(&dir.path().join("voxring")).unwrap_err().to_string();
        assert!(e.contains("cargo build -p voxring-bridge"), "{e}");
        std::fs::write(dir.path().join(PROGRAM), b"").unwrap();
        assert_eq!(
            find(&dir.path().join("voxring")),
            Some(dir.path().join(PROGRAM))
        );
    }
}
