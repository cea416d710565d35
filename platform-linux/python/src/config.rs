//! A ring's configuration as Python sees it, and its parsing from keyword arguments.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use voxring_core::{Policy, RingConfig, SampleFormat};

/// Each sample format and its name in Python.
const FORMATS: [(SampleFormat, &str); 3] = [
    (SampleFormat::S16, "s16"),
    (SampleFormat::S32, "s32"),
    (SampleFormat::F32, "f32"),
];

/// Each policy and its name in Python.
const POLICIES: [(Policy, &str); 2] = [(Policy::Lossless, "lossless"), (Policy::Lossy, "lossy")];

/// The name of `v` in `rows` (every value has one).
fn name_of<T: Copy + PartialEq>(rows: &[(T, &'static str)], v: T) -> &'static str {
    rows.iter().find(|row| row.0 == v).map_or("?", |row| row.1)
}

/// The value named `s` in `rows`, or a ValueError: argument `arg`, `s`, is not `what`; use
/// `choices`.
fn parse<T: Copy>(
    rows: &[(T, &str)],
    arg: &str,
    s: &str,
    what: &str,
    choices: &str,
) -> PyResult<T> {
    rows.iter()
        .find(|row| row.1 == s)
        .map(|row| row.0)
        .ok_or_else(|| PyValueError::new_err(format!("{arg} {s:?} is not {what}: use {choices}")))
}

pub fn parse_format(s: &str) -> PyResult<SampleFormat> {
    parse(
        &FORMATS,
        "format",
        s,
        "a sample format",
        "\"s16\", \"s32\" or \"f32\"",
    )
}

pub fn parse_policy(s: &str) -> PyResult<Policy> {
    parse(
        &POLICIES,
        "policy",
        s,
        "a ring policy",
        "\"lossless\" (the producer waits for the slowest reader) or \"lossy\" (it never \
         waits; lapped readers are told)",
    )
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
        let dtype_name = match c.format {
            SampleFormat::S16 => "int16",
            SampleFormat::S32 => "int32",
            SampleFormat::F32 => "float32",
        };
        PyRingConfig {
            frames: c.frames,
            samples_per_frame: c.samples_per_frame,
            channels: c.channels,
            format: name_of(&FORMATS, c.format),
            sample_rate: c.sample_rate,
            max_consumers: c.max_consumers,
            policy: name_of(&POLICIES, c.policy),
            dtype_name,
        }
    }
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
