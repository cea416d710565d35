//! Objects cached per ring slot and handed out again once nothing but the cache holds them:
//! a frame's numpy view and its Frame / WriteFrame object cost nothing per grant, and an
//! object the caller kept is never changed under it.

use pyo3::prelude::*;
use pyo3::{PyClass, PyClassInitializer, pyclass::boolean_struct::False};

/// Whether the cache holds the only reference to `obj` (no Python code can reach it, so
/// refilling or re-flagging it is invisible).
pub fn unshared<T>(obj: &Py<T>) -> bool {
    // SAFETY: `obj` is a live object (the caller owns a reference) and the GIL is held (a
    // `Py` is only touched with it in this package).
    unsafe { pyo3::ffi::Py_REFCNT(obj.as_ptr()) == 1 }
}

/// Objects kept per slot. Two, so that a caller holding the object of the slot's last grant
/// (`f = next(it)` and `g = w.grant()` still bind the previous one while the next is granted;
/// a one-slot ring reuses the same slot every time) finds the other one free.
const PER_SLOT: usize = 2;

/// A slot's reusable objects of class `T`.
pub struct Reuse<T: PyClass>([Option<Py<T>>; PER_SLOT]);

impl<T: PyClass> Default for Reuse<T> {
    fn default() -> Self {
        Reuse(Default::default())
    }
}

impl<T: PyClass<Frozen = False> + Into<PyClassInitializer<T>>> Reuse<T> {
    /// A cached object nothing else holds, changed by `refill`, else a new one from `make`
    /// (cached in a free place, or in place of the oldest, which the caller keeps).
    pub fn get(
        &mut self,
        py: Python<'_>,
        refill: impl FnOnce(&mut T),
        make: impl FnOnce() -> T,
    ) -> PyResult<Py<T>> {
        for obj in self.0.iter().flatten().filter(|o| unshared(o)) {
            if let Ok(mut b) = obj.bind(py).try_borrow_mut() {
                refill(&mut b);
                return Ok(obj.clone_ref(py));
            }
        }
        let obj = Py::new(py, make())?;
        let place = match self.0.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.0.rotate_left(1);
                PER_SLOT - 1
            }
        };
        self.0[place] = Some(obj.clone_ref(py));
        Ok(obj)
    }
}
