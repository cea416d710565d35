//! [`Control`]: a control register (a latest-value seqlock) in its own segment or in a running
//! hub's directory, through voxring-linux's `control::SharedControl`.

use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use voxring_linux::control::{
    DEFAULT_PATIENCE, HubRegister, OpenError, SharedControl, WriteBytesError,
};
use voxring_linux::hub::HubError;
use voxring_linux::segment::{AttachOptions, CreateOptions};

use crate::error::{self, Failure};
use crate::memory::lock;
use crate::wait::Deadline;

/// Bytes of a control register's value (one made by `Control(name, create=True)`).
pub const CONTROL_BYTES: usize = 64;

/// A control register: the latest value of up to 64 bytes (32 for a hub's), written by one
/// writer and read by anyone without tearing; readers can block until it changes.
#[pyclass(frozen, subclass, module = "voxring._voxring")]
pub struct Control {
    name: String,
    reg: Mutex<Option<SharedControl>>,
}

fn open_failure(e: OpenError, otherwise: &'static str) -> Failure {
    let msg = e.to_string();
    match e {
        OpenError::Place(p) => error::place(p, otherwise),
        // The hub's message (which says how to start one), with the attach failure's code.
        OpenError::Hub(HubError::NotFound { cause, .. }) => {
            Failure::new(error::attach(cause).name, msg)
        }
        OpenError::Hub(HubError::BadName(_)) => Failure::new("VR_E_INVALID", msg),
        OpenError::Hub(_) => Failure::new(otherwise, msg),
    }
}

impl Control {
    /// A clone of the handle (shares the mapping), or ClosedError.
    fn handle(&self, py: Python<'_>) -> PyResult<SharedControl> {
        match lock(py, &self.reg).as_ref() {
            Some(r) => Ok(r.clone()),
            None => Err(error::closed("Control").into()),
        }
    }

    /// `n` checked against the register's size (None: all of it).
    fn bytes_wanted(reg: &SharedControl, n: Option<usize>) -> PyResult<usize> {
        let size = reg.len();
        match n {
            None => Ok(size),
            Some(n) if n <= size => Ok(n),
            Some(n) => Err(PyValueError::new_err(format!(
                "read of {n} bytes, the register holds {size}: pass n <= {size}"
            ))),
        }
    }
}

#[pymethods]
impl Control {
    /// Attaches to register `name`, or with `create=True` creates it (64 bytes of zeros;
    /// removed when closed). With `hub=HUB`, opens register `name` of the running hub `HUB`
    /// (`voxring serve --name HUB`): "speech" (four u64: active, since_sample, segments,
    /// level_mb) or "value0" .. "value15" (four u64), 32 bytes each.
    #[new]
    #[pyo3(signature = (name, create=false, hub=None))]
    fn new(py: Python<'_>, name: String, create: bool, hub: Option<String>) -> PyResult<Self> {
        let reg = py
            .detach(|| match (&hub, create) {
                (Some(_), true) => Err(Failure::new(
                    "VR_E_INVALID",
                    "a hub's registers are made by the hub: open them without create=True",
                )),
                (Some(h), false) => {
                    let which: HubRegister = name
                        .parse()
                        .map_err(|e: String| Failure::new("VR_E_INVALID", e))?;
                    SharedControl::hub(h, which, &AttachOptions::default())
                        .map_err(|e| open_failure(e, "VR_E_ATTACH"))
                }
                (None, true) => SharedControl::create(&name, &CreateOptions::default())
                    .map_err(|e| open_failure(e, "VR_E_CREATE")),
                (None, false) => SharedControl::attach(&name, &AttachOptions::default())
                    .map_err(|e| open_failure(e, "VR_E_ATTACH")),
            })
            .map_err(|e: Failure| match &hub {
                Some(h) => e.context(&format!("register {name:?} of hub {h:?}")),
                None => e.context(&format!("control register {name:?}")),
            })?;
        Ok(Control {
            name,
            reg: Mutex::new(Some(reg)),
        })
    }

    /// Writes `data` (at most `size` bytes; the rest become zero) as the new value and wakes
    /// readers blocked in `wait` (a system call only while one waits). Never blocks.
    fn write(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        let reg = self.handle(py)?;
        reg.write(data).map_err(|e| {
            let name = match e {
                WriteBytesError::TooLong { .. } => "VR_E_INVALID",
                WriteBytesError::Busy => "VR_E_CONTENDED",
            };
            Failure::new(name, e.to_string()).into()
        })
    }

    /// Returns (bytes, version): the value's first n bytes (all by default) and the number of
    /// writes so far. Never a torn value. A write in progress (its writer descheduled mid-write)
    /// is waited out, without the GIL, for up to `timeout` seconds (yield, then short sleeps);
    /// then VoxringError (VR_E_CONTENDED) says whether one write stayed in progress (its writer
    /// stalled or died) or writes kept overlapping. For a loop that must never sleep, use
    /// try_read.
    #[pyo3(signature = (n=None, timeout=DEFAULT_PATIENCE.as_secs_f64()))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        n: Option<usize>,
        timeout: f64,
    ) -> PyResult<(Bound<'py, PyBytes>, u64)> {
        Deadline::check(Some(timeout))?;
        let reg = self.handle(py)?;
        let n = Self::bytes_wanted(&reg, n)?;
        let patience = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::MAX / 4);
        let mut buf = [0u8; CONTROL_BYTES];
        let v = py
            .detach(|| reg.read(&mut buf[..n], patience))
            .map_err(|e| Failure::new("VR_E_CONTENDED", e.to_string()))?;
        Ok((PyBytes::new(py, &buf[..n]), v))
    }

    /// Like read, but never waits: at most 256 quick attempts, then VoxringError
    /// (VR_E_CONTENDED).
    #[pyo3(signature = (n=None))]
    fn try_read<'py>(
        &self,
        py: Python<'py>,
        n: Option<usize>,
    ) -> PyResult<(Bound<'py, PyBytes>, u64)> {
        let reg = self.handle(py)?;
        let n = Self::bytes_wanted(&reg, n)?;
        let mut buf = [0u8; CONTROL_BYTES];
        let v = reg
            .try_read(&mut buf[..n])
            .map_err(|e| Failure::new("VR_E_CONTENDED", e.to_string()))?;
        Ok((PyBytes::new(py, &buf[..n]), v))
    }

    /// Blocks, without the GIL, until the version is past `seen` (a version from read or a
    /// previous wait; 0: any write) and returns the new version, or returns None when
    /// `timeout` seconds passed first (None: no limit; Ctrl-C still interrupts). Returns at
    /// once when the version already is past `seen`. Woken by the writer's write (any process,
    /// any language: Control.write, vr_control_write, Rust's publish_and_wake).
    #[pyo3(signature = (seen, timeout=None))]
    fn wait(&self, py: Python<'_>, seen: u64, timeout: Option<f64>) -> PyResult<Option<u64>> {
        let deadline = Deadline::after(timeout)?;
        let reg = self.handle(py)?;
        loop {
            let slice = deadline.slice();
            if let Some(v) = py.detach(|| reg.wait_newer_than(seen, Some(slice))) {
                return Ok(Some(v));
            }
            if deadline.passed() {
                return Ok(None);
            }
            // Between slices: Ctrl-C (and other signals) reach Python.
            py.check_signals()?;
        }
    }

    /// Writes completed so far (one load; never blocks).
    #[getter]
    fn version(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.handle(py)?.version())
    }

    /// Bytes the register holds (64, or 32 for a hub's registers).
    #[getter]
    fn size(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.handle(py)?.len())
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
