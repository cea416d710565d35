//! The one switch point for atomics and `UnsafeCell`.
//!
//! Everything in this crate that touches memory shared between threads or processes goes
//! through this module, so that building with `RUSTFLAGS="--cfg voxring_loom"` swaps in loom's
//! types and the model checker sees every access. A crate-prefixed cfg (not a bare `loom`)
//! keeps dependencies that also check `cfg(loom)` out of it.

#[cfg(not(voxring_loom))]
pub(crate) use portable_atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};

#[cfg(voxring_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};

/// `UnsafeCell` with loom's closure API (`with` / `with_mut`) in both builds.
#[cfg(voxring_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `UnsafeCell` with loom's closure API (`with` / `with_mut`) in both builds.
#[cfg(not(voxring_loom))]
#[derive(Debug, Default)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

#[cfg(not(voxring_loom))]
#[allow(dead_code)]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// A hint inside spin loops; under loom, a yield so the model can make progress.
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(voxring_loom)]
    loom::thread::yield_now();
    #[cfg(not(voxring_loom))]
    core::hint::spin_loop();
}
