//! Where frame views point, and what keeps it there: [`Memory`], the base object of every
//! numpy view this package hands out.
//!
//! A view is a numpy array over a ring slot (or, over the socket fallback, a slot of the
//! reader's own buffer) whose `base` is a [`Memory`]. The `Memory` holds a clone of the
//! [`Segment`] (the mapping is unmapped when the last clone goes) or of the fallback reader (its
//! buffer is freed with it), so no view can outlive the memory it points into, whatever the
//! Reader or Writer does meanwhile (`close()` included).

use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use numpy::ndarray::ArrayView1;
use numpy::npyffi::NPY_ARRAY_WRITEABLE;
use numpy::npyffi::objects::_PyArray_GET_ITEM_DATA;
use numpy::{PyArray1, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use voxring_core::SampleFormat;
use voxring_linux::fallback::FallbackReader;
use voxring_linux::ring::Segment;

/// What keeps a view's memory mapped or allocated.
#[derive(Debug)]
pub enum Keep {
    /// The shared segment: the mapping lives until its last clone is dropped.
    Segment(Segment),
    /// The socket fallback's reader: its receive buffer lives as long as it does.
    Fallback(Arc<Mutex<FallbackReader>>),
}

/// The memory frame views point into (the base object of every view): a Reader's or
/// Writer's shared mapping, or a fallback reader's buffer. Kept alive by its views.
#[pyclass(frozen, module = "voxring._voxring")]
#[derive(Debug)]
pub struct Memory {
    keep: Keep,
    addr: usize,
    len: usize,
}

impl Memory {
    pub fn new(keep: Keep) -> Self {
        let (addr, len) = match &keep {
            Keep::Segment(s) => (s.mapping().as_ptr() as usize, s.mapping().len()),
            Keep::Fallback(f) => {
                let (p, n) = f.lock().unwrap_or_else(|p| p.into_inner()).buffer();
                (p as usize, n)
            }
        };
        Memory { keep, addr, len }
    }

    /// Whether `[ptr, ptr + nbytes)` lies inside this memory.
    fn contains(&self, ptr: usize, nbytes: usize) -> bool {
        ptr >= self.addr && ptr.saturating_add(nbytes) <= self.addr + self.len
    }
}

#[pymethods]
impl Memory {
    /// Address of the first byte (the shared mapping's start for shared memory).
    #[getter]
    pub fn address(&self) -> usize {
        self.addr
    }

    /// Length in bytes.
    fn __len__(&self) -> usize {
        self.len
    }

    fn __repr__(&self) -> String {
        let what = match self.keep {
            Keep::Segment(_) => "shared mapping",
            Keep::Fallback(_) => "fallback buffer",
        };
        format!("<voxring {what} of {} bytes at {:#x}>", self.len, self.addr)
    }
}

/// A numpy view of `nbytes` at `ptr` as samples of `format`, based on `mem`; read-only unless
/// `writable`.
///
/// The caller passes a pointer it got from a grant on the memory `mem` keeps alive; the range
/// is checked against it anyway (a bug here must not become a view of foreign memory).
pub fn view<'py>(
    mem: &Bound<'py, Memory>,
    ptr: *mut u8,
    nbytes: usize,
    format: SampleFormat,
    writable: bool,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    if !mem.get().contains(ptr as usize, nbytes) {
        return Err(pyo3::exceptions::PySystemError::new_err(format!(
            "voxring bug: a frame at {ptr:p} (+{nbytes}) lies outside its memory; please report it"
        )));
    }
    let arr = match format {
        SampleFormat::S16 => typed::<i16>(mem, ptr, nbytes),
        SampleFormat::S32 => typed::<i32>(mem, ptr, nbytes),
        SampleFormat::F32 => typed::<f32>(mem, ptr, nbytes),
    };
    set_writable(&arr, writable);
    Ok(arr)
}

fn typed<'py, T: numpy::Element>(
    mem: &Bound<'py, Memory>,
    ptr: *mut u8,
    nbytes: usize,
) -> Bound<'py, PyUntypedArray> {
    let n = nbytes / std::mem::size_of::<T>();
    // SAFETY: `[ptr, ptr + nbytes)` lies inside `mem` (checked by `view`), which stays mapped
    // (or allocated) as long as `mem` lives; slots and payloads are 64-byte aligned, so `ptr`
    // is aligned for `T`; the array is only read through numpy, never through a Rust `&`.
    let v = unsafe { ArrayView1::<T>::from_shape_ptr(n, ptr.cast_const().cast::<T>()) };
    // SAFETY: `mem` becomes the array's base, and `Memory` never moves or frees what `v`
    // points into while it lives (see `Keep`).
    let arr = unsafe { PyArray1::<T>::borrow_from_array(&v, mem.clone().into_any()) };
    arr.as_untyped().clone()
}

/// Makes one of our views writable or read-only (numpy then refuses writes with "assignment
/// destination is read-only"). Views taken from it before keep their own flag.
pub fn set_writable(arr: &Bound<'_, PyUntypedArray>, writable: bool) {
    // SAFETY: `arr` is a live numpy array (its type says so) and the GIL is held, so its flags
    // word is ours to change as numpy's PyArray_ENABLEFLAGS does; the memory behind it is a
    // writable mapping (or buffer), and no Rust borrow of any view exists (this package never
    // borrows its views in Rust, so rust-numpy's borrow tracking has nothing to lose).
    unsafe {
        let fields = _PyArray_GET_ITEM_DATA(arr.as_array_ptr());
        if writable {
            (*fields).flags |= NPY_ARRAY_WRITEABLE;
        } else {
            (*fields).flags &= !NPY_ARRAY_WRITEABLE;
        }
    }
}

/// Locks `m`; if another thread holds it (a wait running with the GIL released), waits for it
/// without holding the GIL, so that thread and every other Python thread go on.
pub fn lock<'a, T: Send>(py: Python<'_>, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
    loop {
        match m.try_lock() {
            Ok(g) => return g,
            // A panic in another call (reported to Python as PanicException) left it locked;
            // the state is still consistent (every change is one assignment).
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(TryLockError::WouldBlock) => py.detach(|| drop(m.lock())),
        }
    }
}
