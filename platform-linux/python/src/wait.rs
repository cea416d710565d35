//! Waits in slices: a wait without a limit still returns to Python now and then, so Ctrl-C
//! (and other signals) are handled and `asyncio` cancellations take effect.

use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The longest a blocking call stays away from Python. A waiting consumer already wakes this
/// often to check that its producer is alive (voxring-linux's liveness interval is 50 ms), so
/// the slices add no wake-ups of their own.
pub const SLICE: Duration = Duration::from_millis(50);

/// When a wait gives up.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// Refuses a timeout that is not a number of seconds >= 0 (None is "no limit").
    pub fn check(timeout: Option<f64>) -> PyResult<()> {
        match timeout {
            Some(t) if t.is_nan() || t < 0.0 => Err(PyValueError::new_err(format!(
                "timeout {t} is not a number of seconds >= 0: pass seconds, or None to wait \
                 without a limit"
            ))),
            _ => Ok(()),
        }
    }

    /// `timeout` seconds from now (None: never).
    pub fn after(timeout: Option<f64>) -> PyResult<Self> {
        Self::check(timeout)?;
        match timeout {
            None => Ok(Deadline(None)),
            Some(t) => Ok(Deadline(Some(
                Instant::now() + Duration::try_from_secs_f64(t).unwrap_or(Duration::MAX / 4),
            ))),
        }
    }

    pub fn never() -> Self {
        Deadline(None)
    }

    /// The next slice: at most [`SLICE`], at most what is left.
    pub fn slice(&self) -> Duration {
        match self.0 {
            None => SLICE,
            Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
        }
    }

    pub fn passed(&self) -> bool {
        self.0.is_some_and(|d| Instant::now() >= d)
    }
}

/// How a wait ended, as Python sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitResult {
    Ready,
    Timeout,
    End,
}

impl WaitResult {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitResult::Ready => "ready",
            WaitResult::Timeout => "timeout",
            WaitResult::End => "end",
        }
    }
}
