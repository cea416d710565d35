//! What the Reader and the Writer share ([`Endpoint`]: a ring's name, configuration and mapped
//! address, closed by leaving a `with` block) and what their grants share ([`Frames`]: a list
//! of frames that is indexed, iterated and released or committed by leaving a `with` block).

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use voxring_core::RingConfig;

use crate::config::PyRingConfig;

/// The base of Reader and Writer: the ring's name and configuration, the address of its memory,
/// and the context manager (leaving the `with` block calls `close()`).
#[pyclass(frozen, subclass, name = "_Endpoint", module = "voxring._voxring")]
pub struct Endpoint {
    name: String,
    config: RingConfig,
    address: usize,
}

impl Endpoint {
    pub fn new(name: String, config: RingConfig, address: usize) -> Self {
        Endpoint {
            name,
            config,
            address,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

#[pymethods]
impl Endpoint {
    /// The ring's name.
    #[getter(name)]
    fn py_name(&self) -> &str {
        &self.name
    }

    /// The ring's configuration.
    #[getter]
    fn config(&self) -> PyRingConfig {
        PyRingConfig::from(self.config)
    }

    /// Address of the memory frames live in (the shared mapping over shared memory).
    #[getter]
    fn memory_address(&self) -> usize {
        self.address
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes (the subclass's `close()`); never swallows the exception leaving the block.
    #[pyo3(signature = (*_exc))]
    fn __exit__(slf: &Bound<'_, Self>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        slf.call_method0("close")?;
        Ok(false)
    }
}

/// The base of ReadGrant and WriteGrant: the granted frames, as a sequence (`len`, iteration,
/// indexing, truth) and as `frames`.
#[pyclass(frozen, subclass, name = "_Frames", module = "voxring._voxring")]
pub struct Frames {
    frames: Py<PyList>,
}

impl Frames {
    pub fn new(frames: Py<PyList>) -> Self {
        Frames { frames }
    }
}

#[pymethods]
impl Frames {
    /// The granted frames.
    #[getter]
    fn frames(&self, py: Python<'_>) -> Py<PyList> {
        self.frames.clone_ref(py)
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.frames.bind(py).len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.frames.bind(py).try_iter().map(Bound::into_any)
    }

    fn __getitem__<'py>(&self, py: Python<'py>, i: isize) -> PyResult<Bound<'py, PyAny>> {
        self.frames.bind(py).as_any().get_item(i)
    }

    fn __bool__(&self, py: Python<'_>) -> bool {
        !self.frames.bind(py).is_empty()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
}
