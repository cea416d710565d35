//! A ring's configuration as Python sees it, and its parsing from keyword arguments.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use voxring_core::{Policy, RingConfig, SampleFormat};

/// Each sample format: its name in Python and its numpy dtype.
const FORMATS: [(SampleFormat, &str, &str); 3] = [
    (SampleFormat::S16, "s16", "int16"),
    (SampleFormat::S32, "s32", "int32"),
    (SampleFormat::F32, "f32", "float32"),
];

/// Each policy and its name in Python.
const POLICIES: [(Policy, &str); 2] = [(Policy::Lossless, "lossless"), (Policy::Lossy, "lossy")];

/// The row of `FORMATS` for `f` (every format has one).
fn format_row(f: SampleFormat) -> (SampleFormat, &'static str, &'static str) {
    FORMATS
        .into_iter()
        .find(|row| row.0 == f)
        .unwrap_or(FORMATS[0])
}

/// The name of policy `p` (every policy has one).
fn policy_name(p: Policy) -> &'static str {
    POLICIES
        .into_iter()
        .find(|row| row.0 == p)
        .unwrap_or(POLICIES[0])
        .1
}

/// A ring's configuration (read from the ring).
#[pyclass(frozen, name = "RingConfig", module = "voxring._voxring")]
#[derive(Debug, Clone, Copy)]
pub struct PyRingConfig {
    /// Capacity in frames.
    #[pyo3(get)]
    frames: u32,
    /// Samples per frame and channel.
    #[pyo3(get)]
    samples_per_frame: u32,
    /// Interleaved channels.
    #[pyo3(get)]
    channels: u16,
    /// "s16", "s32" or "f32".
    #[pyo3(get)]
    format: &'static str,
    /// Hz (informative).
    #[pyo3(get)]
    sample_rate: u32,
    /// Consumer slots.
    #[pyo3(get)]
    max_consumers: u16,
    /// "lossless" or "lossy".
    #[pyo3(get)]
    policy: &'static str,
    /// The numpy dtype's name.
    dtype_name: &'static str,
}

impl From<RingConfig> for PyRingConfig {
    fn from(c: RingConfig) -> Self {
        let (_, format, dtype_name) = format_row(c.format);
        PyRingConfig {
            frames: c.frames,
            samples_per_frame: c.samples_per_frame,
            channels: c.channels,
            format,
            sample_rate: c.sample_rate,
            max_consumers: c.max_consumers,
            policy: policy_name(c.policy),
            dtype_name,
        }
    }
}

pub fn parse_format(s: &str) -> PyResult<SampleFormat> {
    FORMATS
        .into_iter()
        .find(|row| row.1 == s)
        .map(|row| row.0)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "format {s:?} is not a sample format: use \"s16\", \"s32\" or \"f32\""
            ))
        })
}

pub fn parse_policy(s: &str) -> PyResult<Policy> {
    POLICIES
        .into_iter()
        .find(|row| row.1 == s)
        .map(|row| row.0)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "policy {s:?} is not a ring policy: use \"lossless\" (the producer waits for \
                 the slowest reader) or \"lossy\" (it never waits; lapped readers are told)"
            ))
        })
}

#[pymethods]
impl PyRingConfig {
    /// The numpy dtype of `samples`.
    #[getter]
    fn dtype<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("numpy")?
            .getattr("dtype")?
            .call1((self.dtype_name,))
    }

    fn __repr__(&self) -> String {
        format!(
            "RingConfig(frames={}, samples_per_frame={}, channels={}, format={:?}, \
             sample_rate={}, max_consumers={}, policy={:?})",
            self.frames,
            self.samples_per_frame,
            self.channels,
            self.format,
            self.sample_rate,
            self.max_consumers,
            self.policy
        )
    }
}
