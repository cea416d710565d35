//! This process's own artifacts, and the process-wide hooks that remove them: every file this
//! process creates and must remove (segments it created, Unix sockets, lock files) is
//! registered with an [`ArtifactGuard`]. The guard removes the file when dropped; whatever is
//! still registered is removed by an `atexit(3)` hook when the process exits normally
//! (returning from `main` or `std::process::exit`), and by the signal thread on
//! SIGINT/SIGTERM/SIGHUP once [`install_signal_cleanup`] ran.
//!
//! The signal path is signal-safe by construction: the handler only `write(2)`s the signal
//! number into a pipe (the self-pipe pattern); a normal thread reads it, removes the
//! registered files (it may lock and allocate, being an ordinary thread), and then either
//! re-raises the signal with its default action (so the exit status says "killed by SIGTERM",
//! as shells and supervisors expect) or, in [`SignalMode::Notify`], sets a flag the program
//! polls with [`termination_requested`] to shut down on its own.
//!
//! `kill -9` cannot be caught: what a killed process leaves in `/dev/shm` is removed by
//! [`crate::cleanup::clean_segments`].
//!
//! Installing handlers uses `libc::sigaction`: rustix has no stable wrapper for it.
//!
//! ```
//! use voxring_linux::guard::{ArtifactGuard, registered_paths};
//! # fn main() -> std::io::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("voxring-example.sock");
//! std::fs::write(&path, b"")?;
//! let guard = ArtifactGuard::register(path.clone());
//! assert!(registered_paths().contains(&path));
//! drop(guard); // removes the file (and unregisters it)
//! assert!(!path.exists());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};

use rustix::io::Errno;

fn registry() -> &'static Mutex<BTreeMap<u64, PathBuf>> {
    static REG: OnceLock<Mutex<BTreeMap<u64, PathBuf>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(BTreeMap::new()))
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static ATEXIT: Once = Once::new();

extern "C" fn at_exit() {
    remove_registered();
}

/// Removes every registered artifact now (what exit and the signal thread do). Returns how
/// many files were removed.
pub fn remove_registered() -> usize {
    let paths: Vec<PathBuf> = match registry().lock() {
        Ok(mut reg) => std::mem::take(&mut *reg).into_values().collect(),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner())
            .into_values()
            .collect(),
    };
    paths
        .iter()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count()
}

/// The paths currently registered for removal (for diagnostics and tests).
pub fn registered_paths() -> Vec<PathBuf> {
    match registry().lock() {
        Ok(reg) => reg.values().cloned().collect(),
        Err(p) => p.into_inner().values().cloned().collect(),
    }
}

/// A file this process created and must remove: on drop, at exit, or on a termination signal.
#[derive(Debug)]
pub struct ArtifactGuard {
    id: u64,
    path: PathBuf,
}

impl ArtifactGuard {
    /// Registers `path` for removal.
    pub fn register(path: PathBuf) -> Self {
        ATEXIT.call_once(|| {
            // SAFETY: `at_exit` is an `extern "C" fn()` that never unwinds (it only locks a
            // mutex, tolerating poison, and removes files).
            unsafe { libc::atexit(at_exit) };
        });
        // Relaxed: ids only need to be unique.
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        reg.insert(id, path.clone());
        ArtifactGuard { id, path }
    }

    /// The registered path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unregisters the path without removing the file (it was renamed or handed over).
    pub fn forget(self) {
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        reg.remove(&self.id);
        drop(reg);
        std::mem::forget(self);
    }
}

impl Drop for ArtifactGuard {
    fn drop(&mut self) {
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        // Only remove the file if it was still ours to remove (not taken by the exit path).
        if reg.remove(&self.id).is_some() {
            drop(reg);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What the signal thread does after removing the artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalMode {
    /// Re-raise the signal with its default action: the process ends, killed by that signal.
    Exit,
    /// Set [`termination_requested`] and let the program shut down by itself (a second
    /// signal then ends it at once).
    Notify,
}

static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
static TERMINATION: AtomicBool = AtomicBool::new(false);
static SIGNALS_INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// True once SIGINT, SIGTERM or SIGHUP arrived (in [`SignalMode::Notify`]).
pub fn termination_requested() -> bool {
    // Acquire pairs with the Release store in the signal thread: the files are gone by then.
    TERMINATION.load(Ordering::Acquire)
}

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = [sig as u8];
        // SAFETY: `fd` is the write end of the pipe made in `install_signal_cleanup`, which
        // is never closed. write(2) is async-signal-safe; the result is ignored on purpose
        // (a full pipe means a signal is already pending).
        let _ = rustix::io::write(unsafe { BorrowedFd::borrow_raw(fd) }, &byte);
    }
}

fn set_handler(sig: libc::c_int, handler: libc::sighandler_t) -> std::io::Result<()> {
    // SAFETY: an all-zero sigaction is valid (empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action` is initialised; the handler is an `extern "C" fn(c_int)` (no SA_SIGINFO)
    // or SIG_DFL.
    let r = unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Removes this process's registered artifacts on SIGINT, SIGTERM and SIGHUP, then acts as
/// `mode` says. Idempotent (the first call's mode wins). Starts one thread,
/// `voxring-signals`.
pub fn install_signal_cleanup(mode: SignalMode) -> Result<(), String> {
    SIGNALS_INSTALLED
        .get_or_init(|| {
            let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| format!("could not make the signal pipe: {e}"))?;
            let write_fd = std::os::fd::IntoRawFd::into_raw_fd(write);
            // Relaxed: the handler is installed after this store (sigaction is a full barrier
            // for the thread that takes the signal in practice; the value never changes).
            PIPE_WRITE.store(write_fd, Ordering::Relaxed);
            std::thread::Builder::new()
                .name("voxring-signals".into())
                .spawn(move || signal_thread(read, mode))
                .map_err(|e| format!("could not start the signal thread: {e}"))?;
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                set_handler(sig, on_signal as *const () as libc::sighandler_t)
                    .map_err(|e| format!("could not install the handler for signal {sig}: {e}"))?;
            }
            Ok(())
        })
        .clone()
}

fn signal_thread(read: OwnedFd, mode: SignalMode) {
    let mut buf = [0u8; 1];
    loop {
        match rustix::io::read(&read, &mut buf) {
            Ok(1) => {}
            Ok(_) => return,
            Err(Errno::INTR) => continue,
            Err(_) => return,
        }
        let sig = libc::c_int::from(buf[0]);
        remove_registered();
        match mode {
            SignalMode::Notify if !TERMINATION.load(Ordering::Relaxed) => {
                // Release pairs with the Acquire load in `termination_requested`.
                TERMINATION.store(true, Ordering::Release);
            }
            _ => {
                let _ = set_handler(sig, libc::SIG_DFL);
                if let Some(signal) = rustix::process::Signal::from_named_raw(sig) {
                    let _ = rustix::process::kill_process(rustix::process::getpid(), signal);
                }
                // If the default action did not end us (it will), exit with 128+sig.
                std::thread::sleep(std::time::Duration::from_millis(200));
                std::process::exit(128 + sig);
            }
        }
    }
}
