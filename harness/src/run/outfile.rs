//! Files `voxring run` writes (`--json`, `--report`, `--wav`, and the recording when none was
//! asked for), made so that nobody else can redirect, read or be left with them.
//!
//! Every file starts *unnamed*: `O_TMPFILE` in the folder it will end up in (through
//! [`tempfile::tempfile_in`]), mode 0600. Nothing can be planted at a name that does not exist
//! (no symlink to follow, no file to truncate), and a process killed with SIGKILL leaves
//! nothing behind: the kernel frees an unnamed file with its last descriptor.
//!
//! At the end [`Pending::publish`] gives the finished file its name in one step: `linkat` of
//! `/proc/self/fd/N` to a fresh random name in the same folder (created with `O_EXCL`
//! semantics: `linkat` never overwrites), then `rename` over the target. A planted symlink at
//! the target is replaced, never followed. Only a SIGKILL between those two calls leaves a
//! `.voxring-*.tmp` file, in the user's own folder. On a file system without `O_TMPFILE` the
//! file is a named-then-unlinked one and `linkat` cannot name it: its content is then copied
//! into a [`tempfile::NamedTempFile`] (0600, `O_EXCL`) in the same folder, which is renamed.
//!
//! The folders are checked when the run starts ([`Pending::new`]), so an unwritable output is
//! refused before a single cycle runs, and a full disk never leaves a partial file at the
//! target.

use std::fs::{File, Permissions};
use std::io::{Seek as _, SeekFrom, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// An unnamed 0600 file in the folder of `target`, to be published at `target`.
#[derive(Debug)]
pub struct Pending {
    file: File,
    dir: PathBuf,
    target: PathBuf,
}

/// The folder a path's file lives in (`.` for a bare file name).
fn folder_of(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// An unnamed, private (0600) file in `dir` (`O_TMPFILE`, else created with `O_EXCL` and
/// unlinked at once).
fn unnamed_in(dir: &Path) -> std::io::Result<File> {
    let file = tempfile::tempfile_in(dir)?;
    // O_TMPFILE takes the process umask's mode (0644 usually); the file has no name yet, so
    // nobody can open it before this fchmod.
    file.set_permissions(Permissions::from_mode(0o600))?;
    Ok(file)
}

/// The recording's scratch file when no `--wav` or `--report` was given: unnamed in the temp
/// folder, private, and gone with the last process holding it (even after SIGKILL).
pub fn scratch(what: &str) -> anyhow::Result<File> {
    let dir = std::env::temp_dir();
    unnamed_in(&dir).with_context(|| {
        format!(
            "cannot create {what} in {}: check that the folder (TMPDIR) exists and is writable",
            dir.display()
        )
    })
}

impl Pending {
    /// Checks that `target` can be written (its folder exists and is writable, it is not a
    /// folder) by creating its unnamed file now. `what` names it in messages (`--json`).
    pub fn new(target: &Path, what: &str) -> anyhow::Result<Self> {
        let dir = folder_of(target);
        if let Ok(m) = std::fs::symlink_metadata(target) {
            anyhow::ensure!(
                !m.is_dir(),
                "{what} {} is a folder: give a file name",
                target.display()
            );
        }
        let file = unnamed_in(&dir).with_context(|| {
            format!(
                "{what} {}: cannot create a file in {} (nothing was run): check that the \
                 folder exists and is writable, or choose another path",
                target.display(),
                dir.display()
            )
        })?;
        Ok(Self {
            file,
            dir,
            target: target.to_path_buf(),
        })
    }

    /// The file, to be written (or handed to a child process).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where it will be published.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Writes `bytes` and publishes the file. On error (a full disk) nothing is left at the
    /// target or in its folder.
    pub fn write_and_publish(mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.file
            .write_all(bytes)
            .with_context(|| format!("cannot write {} (disk full?)", self.target.display()))?;
        self.publish()
    }

    /// Gives the finished file its name: a fresh random name in the same folder, renamed over
    /// the target (a symlink there is replaced, not followed).
    pub fn publish(mut self) -> anyhow::Result<()> {
        let ctx = || format!("cannot write {} (disk full?)", self.target.display());
        self.file.sync_all().with_context(ctx)?;
        let fd_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let linked = tempfile::Builder::new()
            .prefix(".voxring-")
            .suffix(".tmp")
            .make_in(&self.dir, |name| {
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    fd_path.as_str(),
                    rustix::fs::CWD,
                    name,
                    rustix::fs::AtFlags::SYMLINK_FOLLOW,
                )
                .map_err(std::io::Error::from)
            });
        let named = match linked {
            Ok(named) => named.into_temp_path(),
            Err(_) => {
                // No O_TMPFILE here (the file was unlinked after creation): copy it.
                let mut copy = tempfile::Builder::new()
                    .prefix(".voxring-")
                    .suffix(".tmp")
                    .tempfile_in(&self.dir)
                    .with_context(ctx)?;
                self.file.seek(SeekFrom::Start(0)).with_context(ctx)?;
                std::io::copy(&mut self.file, copy.as_file_mut()).with_context(ctx)?;
                copy.as_file().sync_all().with_context(ctx)?;
                copy.into_temp_path()
            }
        };
        named
            .persist(&self.target)
            .map_err(|e| anyhow::Error::new(e.error))
            .with_context(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn a_planted_symlink_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let target = dir.path().join("out.json");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        let p = Pending::new(&target, "--json").unwrap();
        // Nothing is named until the end.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        p.write_and_publish(b"{}\n").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let m = std::fs::symlink_metadata(&target).unwrap();
        assert!(m.is_file(), "the target is a regular file now");
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&target).unwrap(), b"{}\n");
        // No temporary name was left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_missing_folder_is_refused_at_once_with_the_path() {
        let err = Pending::new(Path::new("/nonexistent-voxring/x.json"), "--json").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("/nonexistent-voxring/x.json") && msg.contains("nothing was run"),
            "{msg}"
        );
    }

    #[test]
    fn a_folder_as_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Pending::new(dir.path(), "--json").unwrap_err();
        assert!(format!("{err:#}").contains("is a folder"), "{err:#}");
    }
}
