//! No leftovers: the process's own artifacts go away on drop, normal exit, SIGINT, SIGTERM and
//! SIGHUP; and a scan of `/dev/shm/voxring.*` removes segments nobody uses any more.
//!
//! # Own artifacts
//!
//! Every file this process creates and must remove is registered with an [`ArtifactGuard`],
//! removed on drop, at exit and on SIGINT/SIGTERM/SIGHUP ([`install_signal_cleanup`]). That
//! half lives in [`crate::guard`] and is re-exported here; this module is the other half, the
//! scan of `/dev/shm`.
//!
//! `kill -9` cannot be caught: what a killed process leaves behind is removed by
//! [`clean_segments`], which is safe to run at any time because it only removes segments on
//! which no process holds a liveness lock (see [`crate::liveness`]), only the caller's own
//! unless asked ([`CleanOptions::all_users`]), and judges each one again where nobody can
//! swap it before unlinking it (see [`clean_segments_with`]).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

pub use crate::guard::{
    ArtifactGuard, SignalMode, install_signal_cleanup, registered_paths, remove_registered,
    termination_requested,
};
use crate::segment::{self, SHM_DIR};

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
///
/// ```
/// use voxring_linux::cleanup::{CleanOptions, clean_segments_with};
/// // What would go, among this user's segments whose names start with "doc-":
/// let opts = CleanOptions { dry_run: true, ..CleanOptions::default() };
/// let report = clean_segments_with(&opts, |name| name.starts_with("voxring.doc-"))?;
/// assert!(report.skipped.iter().all(|(_, why)| !why.is_empty()));
/// # Ok::<(), std::io::Error>(())
/// ```
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
///
/// ```
/// use voxring_linux::cleanup::clean_segments_matching;
/// use voxring_linux::ring::Segment;
/// use voxring_linux::segment::CreateOptions;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use voxring_core::{Policy, RingConfig, SampleFormat};
/// # let cfg = RingConfig {
/// #     frames: 4, samples_per_frame: 16, channels: 1, format: SampleFormat::S16,
/// #     sample_rate: 48_000, max_consumers: 2, policy: Policy::Lossless,
/// # };
/// let name = format!("doc-clean-{}", std::process::id());
/// let file = format!("voxring.{name}");
/// // Left behind on purpose, as a crashed creator would leave it.
/// let keep = CreateOptions { remove_on_drop: false, ..CreateOptions::default() };
/// let seg = Segment::create(&name, &cfg, &keep)?;
///
/// // In use (this process holds its lock): kept.
/// let report = clean_segments_matching(|f| f == file)?;
/// assert_eq!(report.in_use, [file.clone()]);
///
/// drop(seg); // nobody uses it any more
/// let report = clean_segments_matching(|f| f == file)?;
/// assert_eq!(report.removed, [file]);
/// # Ok(()) }
/// ```
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
///    (`RENAME_NOREPLACE`); if something took the name meanwhile, it is judged once more
///    (unlinked if it is dead by now), else put under a fresh `<name>.displaced-<pid>-<n>`
///    and reported. A displaced file is a segment like any other: a later clean-up removes
///    it once nobody uses it.
///
/// The private directory is named `.voxring-clean-<pid>-<start time>-XXXXXX` and removed
/// before this returns, also when a panic unwinds through it. Only a SIGKILL between steps
/// 2 and 4 leaves it (with the segment inside, under its own name); every clean-up first
/// sweeps such directories of this user whose creator is gone (by the pid and start time
/// in the name), judging each file inside like any segment.
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
    between_check_and_move: impl FnMut(&str),
) -> std::io::Result<CleanReport> {
    clean_segments_with_hooks(opts, filter, between_check_and_move, |_| {})
}

/// [`clean_segments_with_hook`], also calling `after_move` with each file name right after
/// it was moved into the private directory (for the test that kills a clean-up there).
#[doc(hidden)]
pub fn clean_segments_with_hooks(
    opts: &CleanOptions,
    filter: impl Fn(&str) -> bool,
    mut between_check_and_move: impl FnMut(&str),
    mut after_move: impl FnMut(&str),
) -> std::io::Result<CleanReport> {
    let mut report = CleanReport::default();
    let dir = rustix::fs::open(
        SHM_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(crate::mapping::io_err)?;
    let me = rustix::process::geteuid().as_raw();
    sweep_stale_private_dirs(dir.as_fd(), me, opts, &filter, &mut report);
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
            None => match PrivateDir::new(dir.as_fd(), opts.all_users) {
                Ok(p) => private.insert(p),
                Err(reason) => {
                    report.skipped.push((shown, reason));
                    continue;
                }
            },
        };
        // Step 2: the slot in the private directory is the file's own name (unique in
        // /dev/shm, so unique in this call), so that whatever a killed clean-up leaves
        // behind says what it was.
        match rustix::fs::renameat_with(
            dir.as_fd(),
            &name,
            private.fd.as_fd(),
            &name,
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            // Gone already (another clean-up removed it): what was asked for is true.
            Err(Errno::NOENT) => {
                report.removed.push(shown);
                continue;
            }
            Err(e) => {
                report
                    .skipped
                    .push((shown, format!("could not move it away to remove it: {e}")));
                continue;
            }
        }
        after_move(&shown);
        settle(
            dir.as_fd(),
            private,
            &name,
            shown,
            me,
            opts.all_users,
            &mut report,
        );
    }
    Ok(report)
}

/// Steps 3 and 4 of [`clean_segments_with`] for the file moved to `slot` in the private
/// directory: judges it there and unlinks it if dead; otherwise gives it its name back, or,
/// if that name was taken meanwhile, judges it once more (what kept it may have let go) and
/// either unlinks it or moves it to a fresh `<name>.displaced-<pid>-<n>`. The file is left
/// in the private directory only if every rename out of it fails (reported with its path;
/// a later clean-up sweeps it once this process is gone).
fn settle(
    dir: BorrowedFd<'_>,
    private: &mut PrivateDir,
    slot: &OsStr,
    shown: String,
    me: u32,
    all_users: bool,
    report: &mut CleanReport,
) {
    let pfd = private.fd.as_fd();
    let verdict = match try_remove(pfd, slot, me, all_users) {
        Settled::Removed => return report.removed.push(shown),
        Settled::Gone => {
            return report.skipped.push((
                shown,
                "it disappeared from the private directory it was moved to (another process \
                 of this user, or root, removed it)"
                    .into(),
            ));
        }
        Settled::Kept(v) => v,
    };
    match rustix::fs::renameat_with(pfd, slot, dir, &*shown, RenameFlags::NOREPLACE) {
        Ok(()) => {
            return match verdict {
                Verdict::Dead => report
                    .skipped
                    .push((shown, "could not remove it; put back".into())),
                Verdict::InUse => report.in_use.push(shown),
                Verdict::OtherUser(uid) => report.other_users.push((shown, uid)),
                Verdict::Skip(reason) => report.skipped.push((shown, reason)),
            };
        }
        Err(Errno::NOENT) => {
            // Our slot vanished (nobody else can rename in there but this user or root).
            return report
                .skipped
                .push((shown, "it disappeared from the private directory".into()));
        }
        Err(_) => {}
    }
    // The name was taken meanwhile. Whatever made the file look in use may have let go
    // (typically an attacher that found the name gone and retried): judge it again.
    let verdict = match try_remove(pfd, slot, me, all_users) {
        Settled::Removed => return report.removed.push(shown),
        Settled::Gone => {
            return report
                .skipped
                .push((shown, "it disappeared from the private directory".into()));
        }
        Settled::Kept(v) => v,
    };
    let where_now = match move_out_displaced(pfd, slot, dir, &shown) {
        Some(displaced) => Path::new(SHM_DIR).join(displaced),
        None => {
            private.keep = true;
            private.path.join(slot)
        }
    };
    report.skipped.push((
        shown,
        format!(
            "another file took this name while it was being removed; the file that was there \
             is not removable ({}) and is now at {}: rename it back by hand (a later \
             `voxring segments clean` removes it once nobody uses it)",
            verdict.describe(),
            where_now.display()
        ),
    ));
}

/// What [`try_remove`] did with a file in a private directory.
enum Settled {
    Removed,
    Gone,
    Kept(Verdict),
}

/// Judges `slot` in the private directory `pfd` and unlinks it if it is dead.
fn try_remove(pfd: BorrowedFd<'_>, slot: &OsStr, me: u32, all_users: bool) -> Settled {
    if let Err(Errno::NOENT) = rustix::fs::statat(pfd, slot, AtFlags::SYMLINK_NOFOLLOW) {
        return Settled::Gone;
    }
    let verdict = judge(pfd, slot, me, all_users, false);
    if verdict == Verdict::Dead {
        match rustix::fs::unlinkat(pfd, slot, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => return Settled::Removed,
            Err(e) => {
                return Settled::Kept(Verdict::Skip(format!("could not remove it: {e}")));
            }
        }
    }
    Settled::Kept(verdict)
}

/// Moves `slot` out of a private directory to a fresh `<name>.displaced-<pid>-<n>` in
/// `/dev/shm` (never replacing anything). Returns the new name, or `None` if every try failed.
fn move_out_displaced(
    pfd: BorrowedFd<'_>,
    slot: &OsStr,
    dir: BorrowedFd<'_>,
    name: &str,
) -> Option<String> {
    static DISPLACED: AtomicU64 = AtomicU64::new(1);
    let pid = rustix::process::getpid().as_raw_nonzero();
    for _ in 0..16 {
        // Relaxed: the counter only makes names unique; NOREPLACE below decides.
        let n = DISPLACED.fetch_add(1, Ordering::Relaxed);
        let displaced = format!("{name}.displaced-{pid}-{n}");
        match rustix::fs::renameat_with(pfd, slot, dir, displaced.as_str(), RenameFlags::NOREPLACE)
        {
            Ok(()) => return Some(displaced),
            Err(Errno::EXIST) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Prefix of the private directories clean-ups move segments into:
/// `.voxring-clean-<pid>-<start time>-XXXXXX`, naming the process that made it.
pub const PRIVATE_DIR_PREFIX: &str = ".voxring-clean-";

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`, in clock ticks since
/// boot), or `None` if there is no such process. With the pid it names a process uniquely.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that made the private directory called `name` is still running:
/// `Some(true)`/`Some(false)` from the pid and start time in the name, `None` if the name
/// does not carry them (made by an older version).
fn creator_alive(name: &str) -> Option<bool> {
    let rest = name.strip_prefix(PRIVATE_DIR_PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid: u32 = parts.next()?.parse().ok()?;
    let start: u64 = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(process_start(pid) == Some(start))
}

/// Removes what clean-ups killed mid-way (SIGKILL between moving a segment into their
/// private directory and unlinking it) left behind: every `/dev/shm/.voxring-clean-*`
/// directory of this user (any user's with `all_users`) whose creator is no longer running
/// (judged by the pid and start time in its name; a directory without them, made by an
/// older version, once it is older than [`TEMPORARY_GRACE_SECS`]). Each file inside whose
/// name passes `filter` is judged like any segment: unlinked if nobody holds a lock on it,
/// otherwise given its name back (or a `.displaced-` one). The directory is removed once
/// empty. In a dry run, only reports.
fn sweep_stale_private_dirs(
    dir: BorrowedFd<'_>,
    me: u32,
    opts: &CleanOptions,
    filter: &impl Fn(&str) -> bool,
    report: &mut CleanReport,
) {
    let Ok(entries) = std::fs::read_dir(SHM_DIR) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let dname = entry.file_name();
        let Some(dname) = dname.to_str() else {
            continue;
        };
        if !dname.starts_with(PRIVATE_DIR_PREFIX) {
            continue;
        }
        let Ok(pfd) = rustix::fs::openat(
            dir,
            dname,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue; // not a directory, or not ours to open
        };
        let Ok(st) = rustix::fs::fstat(&pfd) else {
            continue;
        };
        if st.st_uid != me && !opts.all_users {
            continue;
        }
        let stale = match creator_alive(dname) {
            Some(alive) => !alive,
            None => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                now - st.st_ctime >= TEMPORARY_GRACE_SECS
            }
        };
        if !stale {
            continue;
        }
        let dpath = Path::new(SHM_DIR).join(dname);
        let Ok(inside) = std::fs::read_dir(&dpath) else {
            continue;
        };
        for slot in inside.filter_map(|e| e.ok()).map(|e| e.file_name()) {
            let shown = slot.to_string_lossy().into_owned();
            if !filter(&shown) {
                continue;
            }
            if opts.dry_run {
                if judge(pfd.as_fd(), &slot, me, opts.all_users, false) == Verdict::Dead {
                    report.removed.push(shown);
                }
                continue;
            }
            match try_remove(pfd.as_fd(), &slot, me, opts.all_users) {
                Settled::Removed | Settled::Gone => {
                    report.removed.push(shown);
                    continue;
                }
                Settled::Kept(_) => {}
            }
            // In use (or not removable): out to /dev/shm, under its own name if free.
            let back = segment::is_segment_file_name(&slot)
                && rustix::fs::renameat_with(
                    pfd.as_fd(),
                    &slot,
                    dir,
                    &slot,
                    RenameFlags::NOREPLACE,
                )
                .is_ok();
            let now_at = if back {
                Some(shown.clone())
            } else {
                move_out_displaced(pfd.as_fd(), &slot, dir, &shown)
            };
            report.skipped.push((
                shown,
                match now_at {
                    Some(n) => format!(
                        "left behind in {} by a clean-up that was killed; in use, so moved \
                         back to {SHM_DIR}/{n}",
                        dpath.display()
                    ),
                    None => format!(
                        "left behind in {} by a clean-up that was killed; in use and could \
                         not be moved out: move it by hand",
                        dpath.display()
                    ),
                },
            ));
        }
        if !opts.dry_run {
            // rmdir: fails, and leaves everything, if anything is still inside.
            let _ = rustix::fs::unlinkat(dir, dname, AtFlags::REMOVEDIR);
        }
    }
}

/// The private directory dead segments are moved into before they are unlinked.
struct PrivateDir {
    fd: OwnedFd,
    path: PathBuf,
    /// Something could not be moved out again: leave the directory for a person to see.
    keep: bool,
    /// [`CleanOptions::all_users`] of the clean-up using it (for the unwinding path).
    all_users: bool,
}

impl PrivateDir {
    /// Makes `/dev/shm/.voxring-clean-<pid>-<start time>-XXXXXX`, mode 0700, and checks
    /// through its descriptor that it is this user's and closed to everyone else.
    fn new(shm: BorrowedFd<'_>, all_users: bool) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let pid = std::process::id();
        let start = process_start(pid)
            .ok_or_else(|| format!("could not read /proc/{pid}/stat (is /proc mounted?)"))?;
        let made = tempfile::Builder::new()
            .prefix(&format!("{PRIVATE_DIR_PREFIX}{pid}-{start}-"))
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
            keep: false,
            all_users,
        })
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Normally empty by now. If a panic unwound through a clean-up between a move and its
        // settling, finish the job: unlink what is dead, move the rest out under a
        // `.displaced-` name.
        let me = rustix::process::geteuid().as_raw();
        if let (Ok(inside), Ok(shm)) = (
            std::fs::read_dir(&self.path),
            rustix::fs::open(
                SHM_DIR,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ),
        ) {
            for slot in inside.filter_map(|e| e.ok()).map(|e| e.file_name()) {
                if let Settled::Kept(_) = try_remove(self.fd.as_fd(), &slot, me, self.all_users) {
                    let name = slot.to_string_lossy().into_owned();
                    let _ = move_out_displaced(self.fd.as_fd(), &slot, shm.as_fd(), &name);
                }
            }
        }
        // rmdir: fails, and leaves everything, if anything is still inside.
        let _ = std::fs::remove_dir(&self.path);
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
