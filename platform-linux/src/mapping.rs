//! A `MAP_SHARED` mapping of a segment file, and what happens when a peer truncates it.
//!
//! # Truncation (SIGBUS)
//!
//! A named segment in `/dev/shm` is an ordinary tmpfs file: any process that may write it may
//! also `ftruncate(2)` it. Touching a mapped page beyond the new end of the file raises `SIGBUS`,
//! which by default kills the process with no word of why. voxring handles this in three layers:
//!
//! 1. **Prevent it where the peer is not trusted**: use a sealed memfd
//!    ([`crate::memfd`]): `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` make the kernel refuse
//!    any resize, so the fault cannot happen at all.
//! 2. **Survive it on named segments**: every mapping is registered with a process-wide
//!    `SIGBUS` handler (installed on first use, chained to the one that was there before).
//!    When a fault lands inside a registered mapping, the handler maps anonymous zero pages
//!    over the whole mapping (`MAP_FIXED`), marks the mapping as truncated, and returns; the
//!    faulting load or store then completes against the zero page. This is the technique the
//!    Wayland server library uses for client `wl_shm` buffers. The zeroed memory no longer
//!    holds the peer's data, so the ring code above checks [`SharedMapping::is_truncated`]
//!    (one relaxed load) before handing out frames and reports
//!    the segment as truncated instead of delivering anything read after the fault.
//! 3. **Notice it early**: [`SharedMapping::check_size`] re-reads `st_size` with `fstat(2)`;
//!    the segment types call it in their slow paths (attach, liveness checks).
//!
//! A fault outside every registered mapping is passed on to the previous handler (Rust's
//! own stack-overflow handler, a sanitizer's, or the default action), so unrelated bugs still
//! crash loudly.
//!
//! The handler uses raw `sigaction(2)` from `libc` because rustix has no stable wrapper for
//! installing signal handlers; everything it does inside the handler is async-signal-safe
//! (atomic loads and stores, `mmap(2)`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

use rustix::fs::fstat;
use rustix::mm::{MapFlags, ProtFlags};

/// How many mappings the SIGBUS handler can watch at once (per process).
pub const MAX_WATCHED_MAPPINGS: usize = 256;

struct WatchSlot {
    /// Start address of the mapping; 0 = free slot.
    start: AtomicUsize,
    len: AtomicUsize,
    /// Set by the handler when it replaced this mapping with zero pages.
    truncated: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: WatchSlot = WatchSlot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    truncated: AtomicBool::new(false),
};
static WATCHED: [WatchSlot; MAX_WATCHED_MAPPINGS] = [EMPTY_SLOT; MAX_WATCHED_MAPPINGS];
static INSTALL: Once = Once::new();
/// The `sigaction` that was installed before ours, to chain to. Set once, before our
/// handler is installed; reading a set `OnceLock` is one atomic load (signal-safe).
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

fn install_handler() {
    INSTALL.call_once(|| {
        // SAFETY: an all-zero sigaction is a valid value (no handler, empty mask, no flags).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = sigbus_handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        // SAFETY: sa_mask is a valid sigset_t owned by `action`.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: as above, a zeroed sigaction is a valid out-parameter.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: read the current action without changing it (null new action).
        let got = unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) };
        if got == 0 {
            let _ = PREVIOUS.set(old);
        }
        // SAFETY: `action` is fully initialised and the handler is an `extern "C"` function
        // with the SA_SIGINFO signature.
        unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) };
    });
}

extern "C" fn sigbus_handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers; for SIGBUS si_addr
    // is the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in WATCHED.iter() {
        // Acquire pairs with the Release store of `start` in `watch`, so len is the matching one.
        let start = slot.start.load(Ordering::Acquire);
        if start == 0 {
            continue;
        }
        let len = slot.len.load(Ordering::Relaxed);
        if addr >= start && addr < start.saturating_add(len) {
            // SAFETY: [start, start+len) is a mapping this process made and still owns (it is
            // unregistered before munmap); replacing it with private zero pages is what makes
            // the faulting access complete. mmap is a plain syscall, safe to call here.
            let remapped = unsafe {
                rustix::mm::mmap_anonymous(
                    start as *mut libc::c_void,
                    len,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::PRIVATE | MapFlags::FIXED,
                )
            };
            if remapped.is_ok() {
                slot.truncated.store(true, Ordering::Relaxed);
                return;
            }
            break;
        }
    }
    // Not ours: hand over to whoever handled SIGBUS before us.
    match PREVIOUS.get().copied() {
        Some(old) if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN => {
            if old.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this
                // three-argument signature.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(old.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: without SA_SIGINFO the previous handler takes one int.
                let f: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute(old.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // Restore the default action and return: the access faults again and the process
            // dies of SIGBUS as it would have without us.
            // SAFETY: zeroed sigaction with SIG_DFL (= 0) is the default disposition.
            let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
            dfl.sa_sigaction = libc::SIG_DFL;
            // SAFETY: sigaction is async-signal-safe; dfl is initialised.
            unsafe { libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut()) };
        }
    }
}

/// Registers `[start, start+len)` with the SIGBUS handler; returns the slot index.
fn watch(start: usize, len: usize) -> Option<usize> {
    install_handler();
    for (i, slot) in WATCHED.iter().enumerate() {
        if slot
            .len
            .compare_exchange(0, len, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            slot.truncated.store(false, Ordering::Relaxed);
            // Release pairs with the Acquire load of `start` in the handler: it publishes len.
            slot.start.store(start, Ordering::Release);
            return Some(i);
        }
    }
    None
}

fn unwatch(index: usize) {
    let slot = &WATCHED[index];
    slot.start.store(0, Ordering::Release);
    // Relaxed: the slot becomes claimable again; `start` is already 0 so the handler ignores it.
    slot.len.store(0, Ordering::Relaxed);
}

/// A read-write `MAP_SHARED` mapping of a whole segment file, unmapped on drop.
#[derive(Debug)]
pub struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
    watch: Option<usize>,
    locked: bool,
}

// SAFETY: the mapping is plain memory; all concurrent access goes through voxring-core's
// atomics. The handle itself only holds an address and a length.
unsafe impl Send for SharedMapping {}
// SAFETY: as above; `&SharedMapping` only exposes the address and read-only queries.
unsafe impl Sync for SharedMapping {}

/// Options for [`SharedMapping::map`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MapOptions {
    /// Fault every page in now (`MAP_POPULATE`) so the first real-time access does not.
    pub prefault: bool,
    /// `mlock(2)` the mapping so it is never paged out. Needs `RLIMIT_MEMLOCK` or
    /// `CAP_IPC_LOCK`; failure is reported, not fatal.
    pub lock: bool,
}

/// What went wrong mapping a segment.
#[derive(Debug)]
pub enum MapError {
    /// `mmap(2)` failed.
    Map(rustix::io::Errno),
    /// `mlock(2)` was refused (the mapping itself was made and then dropped).
    Lock {
        /// The errno.
        errno: rustix::io::Errno,
        /// Bytes that were to be locked.
        len: usize,
    },
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapError::Map(e) => write!(
                f,
                "mmap of the segment failed ({e}); check free memory and the segment size"
            ),
            MapError::Lock { errno, len } => {
                let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock).current;
                write!(
                    f,
                    "mlock of {len} bytes refused ({errno}): the locked-memory limit is {}; raise \
                     it with kernel-tuning/apply --limits (memlock), grant CAP_IPC_LOCK, or map \
                     without locking",
                    limit.map_or("unlimited".to_string(), |l| format!("{l} bytes"))
                )
            }
        }
    }
}

impl std::error::Error for MapError {}

impl SharedMapping {
    /// Maps the first `len` bytes of `fd` read-write and shared (`mmap(2)`, `MAP_SHARED`).
    pub fn map(fd: BorrowedFd<'_>, len: usize, opts: MapOptions) -> Result<Self, MapError> {
        let mut flags = MapFlags::SHARED;
        if opts.prefault {
            flags |= MapFlags::POPULATE;
        }
        // SAFETY: a fresh mapping at an address the kernel chooses; it aliases nothing in
        // this process. Its contents are shared with other processes and are only accessed
        // through atomics and bounds-checked reads by voxring-core.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                flags,
                fd,
                0,
            )
        }
        .map_err(MapError::Map)?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(MapError::Map(rustix::io::Errno::NOMEM))?;
        let mut mapping = SharedMapping {
            ptr,
            len,
            watch: None,
            locked: false,
        };
        mapping.watch = watch(ptr.as_ptr() as usize, len);
        if opts.lock {
            // SAFETY: the range is exactly the mapping made above.
            unsafe { rustix::mm::mlock(ptr.as_ptr().cast(), len) }
                .map_err(|errno| MapError::Lock { errno, len })?;
            mapping.locked = true;
        }
        Ok(mapping)
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapping as 64-bit atomic words (`len / 8` of them), for callers that share plain
    /// counters through it (the IPC benchmark's cache-line floor). Another process may store
    /// any value in any word at any time; every value is a valid `u64`.
    pub fn as_atomic_u64s(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: the mapping starts on a page boundary (so 8-aligned), spans `len` bytes, and
        // stays mapped while `&self` lives; AtomicU64 has the size and alignment of u64, any bit
        // pattern is valid, and all access to the words goes through atomics.
        unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().cast::<std::sync::atomic::AtomicU64>(),
                self.len / 8,
            )
        }
    }

    /// Whether the mapping is `mlock`ed.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// True once a peer truncated the file and a fault inside this mapping was caught: the
    /// mapping now holds zero pages, not the shared data. One relaxed load; real-time safe.
    #[inline]
    pub fn is_truncated(&self) -> bool {
        match self.watch {
            Some(i) => WATCHED[i].truncated.load(Ordering::Relaxed),
            None => false,
        }
    }

    /// Whether the SIGBUS handler watches this mapping (false only when more than
    /// [`MAX_WATCHED_MAPPINGS`] mappings are open at once).
    pub fn is_watched(&self) -> bool {
        self.watch.is_some()
    }

    /// Re-reads the file size with `fstat(2)`: `Ok(())` while the file still covers the
    /// mapping, `Err(current_size)` once a peer shrank it. Not for the real-time path.
    pub fn check_size(&self, fd: impl AsFd) -> Result<(), u64> {
        if self.is_truncated() {
            return Err(0);
        }
        match fstat(fd) {
            Ok(st) if (st.st_size as u64) < self.len as u64 => Err(st.st_size as u64),
            _ => Ok(()),
        }
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        if let Some(i) = self.watch.take() {
            unwatch(i);
        }
        // SAFETY: exactly the range mapped in `map`; no references into it outlive `self`
        // (rings built on it borrow or are dropped first by their owners).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Converts a rustix errno into an `io::Error` (for callers that want one).
pub(crate) fn io_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}
