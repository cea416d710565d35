//! What a read hands to Python: [`ReadGrant`] (the granted frames, released as one) and
//! [`Frame`] (one frame's metadata and its view).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;
use voxring_core::{FrameFlags, FrameMeta};

use crate::endpoint::Frames;
use crate::error::Failure;
use crate::reader::Reader;

/// Frames granted to a Reader (iterable, indexable). Release with `release()` or by leaving
/// the `with` block; `lost` counts frames a lossy ring overwrote before this reader got to
/// them (the grant is then empty).
#[pyclass(frozen, extends = Frames, module = "voxring._voxring")]
pub struct ReadGrant {
    pub(crate) reader: Py<Reader>,
    pub(crate) lost: u64,
    /// The grant's generation, and the reader's open one (equal while this grant is open).
    pub(crate) grant_no: u64,
    pub(crate) open: Arc<AtomicU64>,
}

impl ReadGrant {
    pub(crate) fn release_k(&self, py: Python<'_>, k: Option<usize>) -> PyResult<bool> {
        if !self.is_open() {
            return Ok(true);
        }
        self.reader.get().release(py, self.grant_no, k)
    }

    fn is_open(&self) -> bool {
        // Pairs with the Release stores of the reader's grant and release.
        self.open.load(Ordering::Acquire) == self.grant_no
    }
}

#[pymethods]
impl ReadGrant {
    /// Releases the first k frames (all by default; the rest are granted again by the next
    /// read). True, or False when a lossy ring overwrote some of them while they were read
    /// (discard their data). Releasing twice does nothing.
    #[pyo3(signature = (k=None))]
    fn release(&self, py: Python<'_>, k: Option<usize>) -> PyResult<bool> {
        self.release_k(py, k)
    }

    /// Frames lost before this grant (lossy ring, reader lapped).
    #[getter]
    fn lost(&self) -> u64 {
        self.lost
    }

    /// True while the grant holds frames: False once released, and for an empty grant (nothing
    /// to release).
    #[getter]
    fn open(&self) -> bool {
        self.is_open()
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.release_k(py, None)?;
        Ok(false)
    }
}

/// A granted frame: its metadata, and `samples`, a read-only numpy view of its payload in the
/// ring (interleaved channels). `samples` raises ReleasedError once the grant is released; an
/// array taken before stays readable but the producer may overwrite it: copy what you keep.
///
/// The reader reuses a Frame object for a later grant of its slot once nothing else holds it
/// (it is then refilled): a frame kept by Python is never changed, and stays refused.
#[pyclass(module = "voxring._voxring")]
pub struct Frame {
    pub(crate) meta: FrameMeta,
    /// The view of the slot's whole payload (its base keeps the memory mapped).
    pub(crate) full: Py<PyAny>,
    /// Whether the frame fills its slot (else `samples` is the first `len` bytes of `full`).
    pub(crate) whole: bool,
    /// The grant's generation, and the reader's open one (equal while the grant is open).
    pub(crate) grant_no: u64,
    pub(crate) open: Arc<AtomicU64>,
    /// The first `len` bytes of `full`, made on first use when the frame is shorter.
    pub(crate) samples: Option<Py<PyAny>>,
}

impl Frame {
    fn is_valid(&self) -> bool {
        // Pairs with the Release stores of the reader's grant and release.
        self.open.load(Ordering::Acquire) == self.grant_no
    }
}

#[pymethods]
impl Frame {
    /// The frame's payload, in place (read-only).
    #[getter]
    fn samples(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if !self.is_valid() {
            return Err(Failure::new(
                "VR_E_RELEASED",
                format!(
                    "frame {} was released: its slot belongs to the producer again; read \
                     `samples` before releasing the grant, and copy what you keep \
                     (frame.samples.copy())",
                    self.meta.seq
                ),
            )
            .into());
        }
        if self.whole {
            return Ok(self.full.clone_ref(py));
        }
        if let Some(a) = &self.samples {
            return Ok(a.clone_ref(py));
        }
        let full = self.full.bind(py);
        let n = self.meta.len as usize / full.getattr("itemsize")?.extract::<usize>()?;
        let a = full
            .get_item(pyo3::types::PySlice::new(py, 0, n as isize, 1))?
            .unbind();
        Ok(self.samples.insert(a).clone_ref(py))
    }

    #[getter]
    fn seq(&self) -> u64 {
        self.meta.seq
    }

    #[getter]
    fn sample_pos(&self) -> u64 {
        self.meta.sample_pos
    }

    #[getter]
    fn timestamp_ns(&self) -> u64 {
        self.meta.timestamp_ns
    }

    #[getter]
    fn flags(&self) -> u32 {
        self.meta.flags.0
    }

    /// Payload bytes.
    #[getter]
    fn len(&self) -> u32 {
        self.meta.len
    }

    #[getter]
    fn xrun(&self) -> bool {
        self.meta.flags.contains(FrameFlags::XRUN)
    }

    #[getter]
    fn end_of_stream(&self) -> bool {
        self.meta.flags.contains(FrameFlags::END_OF_STREAM)
    }

    /// False once its grant is released.
    #[getter]
    fn valid(&self) -> bool {
        self.is_valid()
    }

    fn __repr__(&self) -> String {
        let m = &self.meta;
        format!(
            "Frame(seq={}, sample_pos={}, timestamp_ns={}, flags={}, len={})",
            m.seq, m.sample_pos, m.timestamp_ns, m.flags.0, m.len
        )
    }
}
