//! [`Control`]: a control register (a latest-value seqlock of 64 bytes in its own segment),
//! placed through voxring-linux's `shared::Placed`.

use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use voxring_core::control::ControlRegister;
use voxring_linux::segment::{AttachOptions, CreateOptions};
use voxring_linux::shared::Placed;

use crate::error::{self, Failure};
use crate::memory::lock;

type Register = ControlRegister<[u64; 8], 8>;

/// Bytes of a control register's value.
pub const CONTROL_BYTES: usize = 64;

/// A control register: the latest value of up to 64 bytes, written by one writer and read by
/// anyone without tearing (a seqlock in its own segment `/dev/shm/voxring.<name>`).
#[pyclass(frozen, module = "voxring._voxring")]
pub struct Control {
    name: String,
    reg: Mutex<Option<Placed<Register>>>,
}

impl Control {
    fn with<T>(&self, py: Python<'_>, f: impl FnOnce(&Register) -> PyResult<T>) -> PyResult<T> {
        match lock(py, &self.reg).as_ref() {
            Some(r) => f(r),
            None => Err(error::closed("Control").into()),
        }
    }
}

#[pymethods]
impl Control {
    /// Attaches to register `name`, or with `create=True` creates it (holding zeros; removed
    /// when closed).
    #[new]
    #[pyo3(signature = (name, create=false))]
    fn new(py: Python<'_>, name: String, create: bool) -> PyResult<Self> {
        let reg = py
            .detach(|| {
                if create {
                    Placed::<Register>::create(&name, &CreateOptions::default(), [0; 8])
                        .map_err(|e| error::place(e, "VR_E_CREATE"))
                } else {
                    Placed::<Register>::attach(&name, &AttachOptions::default())
                        .map_err(|e| error::place(e, "VR_E_ATTACH"))
                }
            })
            .map_err(|e: Failure| e.context(&format!("control register {name:?}")))?;
        Ok(Control {
            name,
            reg: Mutex::new(Some(reg)),
        })
    }

    /// Writes `data` (at most 64 bytes; the rest become zero) as the new value.
    fn write(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        if data.len() > CONTROL_BYTES {
            return Err(Failure::new(
                "VR_E_INVALID",
                format!(
                    "{} bytes do not fit a {CONTROL_BYTES}-byte control register: write at \
                     most {CONTROL_BYTES}",
                    data.len()
                ),
            )
            .into());
        }
        let mut words = [0u64; 8];
        for (i, b) in data.iter().enumerate() {
            words[i / 8] |= u64::from(*b) << (8 * (i % 8));
        }
        self.with(py, |r| {
            r.write(words)
                .map_err(|e| Failure::new("VR_E_CONTENDED", e.to_string()).into())
        })
    }

    /// Returns (bytes, version): the value's first n bytes and the number of writes so far.
    /// Never a torn value.
    #[pyo3(signature = (n=CONTROL_BYTES))]
    fn read<'py>(&self, py: Python<'py>, n: usize) -> PyResult<(Bound<'py, PyBytes>, u64)> {
        if n > CONTROL_BYTES {
            return Err(PyValueError::new_err(format!(
                "read of {n} bytes, the register holds {CONTROL_BYTES}"
            )));
        }
        let (words, v) = self.with(py, |r| {
            r.read_versioned()
                .map_err(|e| Failure::new("VR_E_CONTENDED", e.to_string()).into())
        })?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).take(n).collect();
        Ok((PyBytes::new(py, &bytes), v))
    }

    /// Unmaps the register (and removes it if this handle created it). Closing twice is
    /// allowed.
    fn close(&self, py: Python<'_>) {
        let r = lock(py, &self.reg).take();
        drop(r);
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }
}
