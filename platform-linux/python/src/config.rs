//! A ring's configuration as Python sees it, and its parsing from keyword arguments.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use voxring_core::{Policy, RingConfig, SampleFormat};

/// A ring's configuration (read from the ring).
#[pyclass(frozen, name = "RingConfig", module = "voxring._voxring")]
#[derive(Debug, Clone, Copy)]
pub struct PyRingConfig(pub RingConfig);

pub fn format_name(f: SampleFormat) -> &'static str {
    match f {
        SampleFormat::S16 => "s16",
        SampleFormat::S32 => "s32",
        SampleFormat::F32 => "f32",
    }
}

pub fn parse_format(s: &str) -> PyResult<SampleFormat> {
    match s {
        "s16" => Ok(SampleFormat::S16),
        "s32" => Ok(SampleFormat::S32),
        "f32" => Ok(SampleFormat::F32),
        _ => Err(PyValueError::new_err(format!(
            "format {s:?} is not a sample format: use \"s16\", \"s32\" or \"f32\""
        ))),
    }
}

pub fn parse_policy(s: &str) -> PyResult<Policy> {
    match s {
        "lossless" => Ok(Policy::Lossless),
        "lossy" => Ok(Policy::Lossy),
        _ => Err(PyValueError::new_err(format!(
            "policy {s:?} is not a ring policy: use \"lossless\" (the producer waits for the \
             slowest reader) or \"lossy\" (it never waits; lapped readers are told)"
        ))),
    }
}

#[pymethods]
impl PyRingConfig {
    /// Capacity in frames.
    #[getter]
    fn frames(&self) -> u32 {
        self.0.frames
    }
    /// Samples per frame and channel.
    #[getter]
    fn samples_per_frame(&self) -> u32 {
        self.0.samples_per_frame
    }
    /// Interleaved channels.
    #[getter]
    fn channels(&self) -> u16 {
        self.0.channels
    }
    /// "s16", "s32" or "f32".
    #[getter]
    fn format(&self) -> &'static str {
        format_name(self.0.format)
    }
    /// The numpy dtype of `samples`.
    #[getter]
    fn dtype<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let name = match self.0.format {
            SampleFormat::S16 => "int16",
            SampleFormat::S32 => "int32",
            SampleFormat::F32 => "float32",
        };
        py.import("numpy")?.getattr("dtype")?.call1((name,))
    }
    /// Hz (informative).
    #[getter]
    fn sample_rate(&self) -> u32 {
        self.0.sample_rate
    }
    /// Consumer slots.
    #[getter]
    fn max_consumers(&self) -> u16 {
        self.0.max_consumers
    }
    /// "lossless" or "lossy".
    #[getter]
    fn policy(&self) -> &'static str {
        match self.0.policy {
            Policy::Lossless => "lossless",
            Policy::Lossy => "lossy",
        }
    }
    fn __repr__(&self) -> String {
        let c = &self.0;
        format!(
            "RingConfig(frames={}, samples_per_frame={}, channels={}, format={:?}, \
             sample_rate={}, max_consumers={}, policy={:?})",
            c.frames,
            c.samples_per_frame,
            c.channels,
            format_name(c.format),
            c.sample_rate,
            c.max_consumers,
            self.policy()
        )
    }
}
