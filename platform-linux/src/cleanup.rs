//! No leftovers: the process's own artifacts go away on drop, normal exit, SIGINT, SIGTERM and
//! SIGHUP; and a scan of `/dev/shm/voxring.*` removes segments nobody uses any more.
//!
//! # Own artifacts
//!
//! Every file this process creates and must remove (segments it created, Unix sockets, lock
//! files) is registered with an [`ArtifactGuard`]. The guard removes the file when dropped;
//! whatever is still registered is removed by an `atexit(3)` hook when the process exits
//! normally (returning from `main` or `std::process::exit`), and by the signal thread on
//! SIGINT/SIGTERM/SIGHUP once [`install_signal_cleanup`] ran.
//!
//! The signal path is signal-safe by construction: the handler only `write(2)`s the signal
//! number into a pipe (the self-pipe pattern); a normal thread reads it, removes the
//! registered files (it may lock and allocate, being an ordinary thread), and then either
//! re-raises the signal with its default action (so the exit status says "killed by SIGTERM",
//! as shells and supervisors expect) or, in [`SignalMode::Notify`], sets a flag the program
//! polls with [`termination_requested`] to shut down on its own.
//!
//! `kill -9` cannot be caught: what a killed process leaves behind is removed by
//! [`clean_segments`], which is safe to run at any time because it only removes segments on
//! which no process holds a liveness lock (see [`crate::liveness`]), only the caller's own
//! unless asked ([`CleanOptions::all_users`]), and judges each one again where nobody can
//! swap it before unlinking it (see [`clean_segments_with`]).
//!
//! Installing handlers uses `libc::sigaction`: rustix has no stable wrapper for it.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::segment::{self, SHM_DIR};

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

/// What [`clean_segments`] did (or, in a dry run, would do).
#[derive(Debug, Default, Clone)]
pub struct CleanReport {
    /// Segment file names removed (nobody held a lock on them); in a dry run, those that
    /// would be.
    pub removed: Vec<String>,
    /// Segment file names kept because a live process uses them.
    pub in_use: Vec<String>,
    /// Segment file names left alone because another user owns them, with that user's uid
    /// ([`CleanOptions::all_users`] includes them).
    pub other_users: Vec<(String, u32)>,
    /// Segment file names that could not be checked or removed, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Which segments [`clean_segments_with`] considers, and whether it removes anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanOptions {
    /// Also remove dead segments of other users (root may; others are refused by the sticky
    /// `/dev/shm`). Default: only segments owned by this process's effective uid.
    pub all_users: bool,
    /// Only report: open and check, move and remove nothing.
    pub dry_run: bool,
}

/// Temporary files (segments being created) younger than this are never removed.
pub const TEMPORARY_GRACE_SECS: i64 = 60;

/// Scans `/dev/shm/voxring.*` and removes exactly this user's segments on which no process
/// holds a liveness lock (every participant is gone). A segment in use is never removed,
/// and neither is another user's (see [`clean_segments_with`] and
/// [`CleanOptions::all_users`]).
pub fn clean_segments() -> std::io::Result<CleanReport> {
    clean_segments_with(&CleanOptions::default(), |_| true)
}

/// Like [`clean_segments`], limited to file names for which `filter` returns true.
pub fn clean_segments_matching(filter: impl Fn(&str) -> bool) -> std::io::Result<CleanReport> {
    clean_segments_with(&CleanOptions::default(), filter)
}

/// Scans `/dev/shm/voxring.*` (names for which `filter` returns true) and removes the dead
/// segments `opts` allows.
///
/// # How a segment is removed, and why no live segment can be
///
/// Linux has no "unlink this inode": removal goes by name, and the name can be made to refer
/// to another file between a check and the unlink. So each candidate is judged twice, the
/// second time where nobody else can swap it:
///
/// 1. open the name (`O_NOFOLLOW`) and check the descriptor: a regular file, owned by this
///    user (unless `all_users`), and no liveness lock held on it ([`crate::liveness`]);
/// 2. move whatever the name refers to now into a private directory (mode 0700, made in
///    `/dev/shm` with the `tempfile` crate) with `renameat2(RENAME_NOREPLACE)`; nobody but
///    this user and root can change names in there;
/// 3. open the moved file and run every check of step 1 again, on that descriptor;
/// 4. only if it passes, unlink it there. Otherwise it goes back under its name
///    (`RENAME_NOREPLACE`); if something took the name meanwhile, it is put under
///    `<name>.displaced-<pid>-<n>` and reported, never removed.
///
/// Whatever was swapped in before step 2 is judged by step 3, so it is removed only if it is
/// itself a dead segment this call may remove. An attacher takes its presence lock and then
/// verifies the name still refers to its inode ([`crate::segment::SegmentFile::attach`]): a
/// process that locks after step 3 finds the name gone and retries, so no process ends up
/// using a segment removed under it. What remains: another process of the same user, or
/// root, can change names inside the private directory (they could remove the segment
/// outright anyway); and a live segment swapped in between steps 1 and 2 is without its name
/// for the moment it takes to judge it and move it back.
pub fn clean_segments_with(
    opts: &CleanOptions,
    filter: impl Fn(&str) -> bool,
) -> std::io::Result<CleanReport> {
    clean_segments_with_hook(opts, filter, |_| {})
}

/// [`clean_segments_with`], calling `between_check_and_move` with each file name that
/// passed the first check, right before it is moved away (step 2). For tests that swap the
/// file in exactly that window; not for anything else.
#[doc(hidden)]
pub fn clean_segments_with_hook(
    opts: &CleanOptions,
    filter: impl Fn(&str) -> bool,
    mut between_check_and_move: impl FnMut(&str),
) -> std::io::Result<CleanReport> {
    let mut report = CleanReport::default();
    let dir = rustix::fs::open(
        SHM_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(crate::mapping::io_err)?;
    let me = rustix::process::geteuid().as_raw();
    let mut private: Option<PrivateDir> = None;
    for name in segment_file_names()? {
        let shown = name.to_string_lossy().into_owned();
        if !filter(&shown) {
            continue;
        }
        match judge(dir.as_fd(), &name, me, opts.all_users, true) {
            Verdict::Dead => {}
            Verdict::InUse => {
                report.in_use.push(shown);
                continue;
            }
            Verdict::OtherUser(uid) => {
                report.other_users.push((shown, uid));
                continue;
            }
            Verdict::Skip(reason) => {
                report.skipped.push((shown, reason));
                continue;
            }
        }
        if opts.dry_run {
            report.removed.push(shown);
            continue;
        }
        between_check_and_move(&shown);
        let private = match &mut private {
            Some(p) => p,
            None => match PrivateDir::new(dir.as_fd()) {
                Ok(p) => private.insert(p),
                Err(reason) => {
                    report.skipped.push((shown, reason));
                    continue;
                }
            },
        };
        remove_one(dir.as_fd(), &name, shown, private, me, opts, &mut report);
    }
    Ok(report)
}

/// Steps 2 to 4 of [`clean_segments_with`] for one name that passed step 1.
fn remove_one(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    shown: String,
    private: &mut PrivateDir,
    me: u32,
    opts: &CleanOptions,
    report: &mut CleanReport,
) {
    let slot = private.next_slot();
    match rustix::fs::renameat_with(
        dir,
        name,
        private.fd.as_fd(),
        slot.as_str(),
        RenameFlags::NOREPLACE,
    ) {
        Ok(()) => {}
        // Gone already (another clean-up removed it): what was asked for is true.
        Err(Errno::NOENT) => return report.removed.push(shown),
        Err(e) => {
            return report
                .skipped
                .push((shown, format!("could not move it away to remove it: {e}")));
        }
    }
    let verdict = judge(
        private.fd.as_fd(),
        OsStr::new(&slot),
        me,
        opts.all_users,
        false,
    );
    if verdict == Verdict::Dead {
        match rustix::fs::unlinkat(private.fd.as_fd(), slot.as_str(), AtFlags::empty()) {
            Ok(()) => return report.removed.push(shown),
            Err(e) => {
                // Not removed: put it back below, and say why.
                report
                    .skipped
                    .push((shown.clone(), format!("could not remove it: {e}")));
            }
        }
    }
    // Something else was at the name by the time it was moved (or it came into use): give
    // it its name back.
    let back = rustix::fs::renameat_with(
        private.fd.as_fd(),
        slot.as_str(),
        dir,
        name,
        RenameFlags::NOREPLACE,
    );
    match back {
        Ok(()) => match verdict {
            Verdict::Dead => {}
            Verdict::InUse => report.in_use.push(shown),
            Verdict::OtherUser(uid) => report.other_users.push((shown, uid)),
            Verdict::Skip(reason) => report.skipped.push((shown, reason)),
        },
        Err(_) => {
            let displaced = format!(
                "{shown}.displaced-{}-{}",
                rustix::process::getpid().as_raw_nonzero(),
                private.next
            );
            let moved = rustix::fs::renameat_with(
                private.fd.as_fd(),
                slot.as_str(),
                dir,
                displaced.as_str(),
                RenameFlags::NOREPLACE,
            );
            let where_now = match moved {
                Ok(()) => Path::new(SHM_DIR).join(&displaced),
                Err(_) => {
                    private.keep = true;
                    private.path.join(&slot)
                }
            };
            report.skipped.push((
                shown,
                format!(
                    "another file took this name while it was being removed; the file that \
                     was there is not removable ({}) and is now at {}: rename it back by hand",
                    verdict.describe(),
                    where_now.display()
                ),
            ));
        }
    }
}

/// The private directory dead segments are moved into before they are unlinked.
struct PrivateDir {
    fd: OwnedFd,
    path: PathBuf,
    next: u64,
    /// Something could not be moved out again: leave the directory for a person to see.
    keep: bool,
}

impl PrivateDir {
    /// Makes `/dev/shm/.voxring-clean-XXXXXX`, mode 0700, and checks through its descriptor
    /// that it is this user's and closed to everyone else.
    fn new(shm: BorrowedFd<'_>) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let made = tempfile::Builder::new()
            .prefix(".voxring-clean-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(SHM_DIR)
            .map_err(|e| format!("could not make a private directory in {SHM_DIR}: {e}"))?;
        // Removed by `Drop` below with rmdir(2), which never removes anything inside it.
        let path = made.keep();
        let fail = |what: String| {
            let _ = std::fs::remove_dir(&path);
            what
        };
        let name = path.file_name().unwrap_or_default().to_owned();
        let fd = rustix::fs::openat(
            shm,
            name.as_os_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(format!("could not open {}: {e}", path.display())))?;
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| fail(format!("could not fstat {}: {e}", path.display())))?;
        if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
            return Err(fail(format!(
                "{} is not private (uid {}, mode {:04o}): refusing to use it",
                path.display(),
                st.st_uid,
                st.st_mode & 0o7777
            )));
        }
        Ok(PrivateDir {
            fd,
            path,
            next: 0,
            keep: false,
        })
    }

    fn next_slot(&mut self) -> String {
        self.next += 1;
        format!("s{}", self.next)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if !self.keep {
            // rmdir: fails, and leaves everything, if anything is still inside.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// The `voxring.*` names in `/dev/shm`, sorted.
pub fn segment_file_names() -> std::io::Result<Vec<OsString>> {
    let mut names: Vec<OsString> = std::fs::read_dir(SHM_DIR)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| segment::is_segment_file_name(n))
        .collect();
    names.sort();
    Ok(names)
}

/// What the checks say about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Nobody holds a lock on it, and this call may remove it.
    Dead,
    /// A live process holds a liveness lock on it (or it is being created).
    InUse,
    /// Another user owns it (and `all_users` is off).
    OtherUser(u32),
    /// Not a segment, or it could not be checked; the reason.
    Skip(String),
}

impl Verdict {
    fn describe(&self) -> String {
        match self {
            Verdict::Dead => "dead".into(),
            Verdict::InUse => "in use".into(),
            Verdict::OtherUser(uid) => format!("owned by uid {uid}"),
            Verdict::Skip(reason) => reason.clone(),
        }
    }
}

/// Opens `name` in `dir` (never following a symlink, never blocking) and judges the file by
/// its descriptor. `grace` keeps young temporary files (segments being created).
fn judge(dir: BorrowedFd<'_>, name: &OsStr, me: u32, all_users: bool, grace: bool) -> Verdict {
    let fd = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Verdict::Skip("it disappeared during the scan".into()),
        Err(Errno::LOOP) => {
            return Verdict::Skip("it is a symbolic link, not a segment; left alone".into());
        }
        Err(Errno::ACCESS) | Err(Errno::PERM) => {
            // Only to word the report: nothing is done to a file that cannot be opened.
            return match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if st.st_uid != me && !all_users => Verdict::OtherUser(st.st_uid),
                _ => Verdict::Skip("no permission to open it (another user's segment)".into()),
            };
        }
        Err(e) => return Verdict::Skip(format!("could not open it: {e}")),
    };
    let st = match rustix::fs::fstat(&fd) {
        Ok(st) => st,
        Err(e) => return Verdict::Skip(format!("fstat failed: {e}")),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Verdict::Skip("not a regular file; left alone".into());
    }
    if st.st_uid != me && !all_users {
        return Verdict::OtherUser(st.st_uid);
    }
    if grace && segment::is_temporary_name(name) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if now - st.st_ctime < TEMPORARY_GRACE_SECS {
            return Verdict::InUse;
        }
    }
    match crate::liveness::any_held(fd.as_fd()) {
        Ok(false) => Verdict::Dead,
        Ok(true) => Verdict::InUse,
        Err(e) => Verdict::Skip(format!("lock query failed: {e}")),
    }
}
