//! voxring from Python: the native module `voxring._voxring`, re-exported (with asyncio
//! helpers) by the `voxring` package in `python/voxring/`.
//!
//! A PyO3 extension over voxring-linux's Rust API (not the C ABI): [`reader::Reader`] and
//! [`writer::Writer`] hold a `ShmConsumer`/`ShmProducer` and core's read/write tokens,
//! [`control::Control`] a `Placed<ControlRegister>`. Frames are numpy arrays over the ring's
//! slots whose base object ([`memory::Memory`]) keeps the mapping alive; every blocking call
//! releases the GIL. Built by maturin (`pip install platform-linux/python`), abi3 for Python
//! >= 3.9.
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]
// PyO3's generated glue has no Debug impls to derive for the classes.
#![allow(missing_debug_implementations)]

mod cache;
mod config;
mod control;
mod endpoint;
mod error;
mod grant;
mod memory;
mod reader;
mod wait;
mod writer;

use pyo3::prelude::*;

/// CLOCK_MONOTONIC in nanoseconds: the clock voxring producers stamp frames with.
#[pyfunction]
fn monotonic_ns() -> u64 {
    voxring_linux::clock::monotonic_ns()
}

#[pymodule]
fn _voxring(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<endpoint::Endpoint>()?;
    m.add_class::<endpoint::Frames>()?;
    m.add_class::<reader::Reader>()?;
    m.add_class::<grant::ReadGrant>()?;
    m.add_class::<grant::Frame>()?;
    m.add_class::<writer::Writer>()?;
    m.add_class::<writer::WriteGrant>()?;
    m.add_class::<writer::WriteFrame>()?;
    m.add_class::<control::Control>()?;
    m.add_class::<config::PyRingConfig>()?;
    m.add_class::<memory::Memory>()?;
    m.add("VoxringError", py.get_type::<error::VoxringError>())?;
    m.add("ClosedError", py.get_type::<error::ClosedError>())?;
    m.add("ReleasedError", py.get_type::<error::ReleasedError>())?;
    m.add_function(wrap_pyfunction!(monotonic_ns, m)?)?;
    m.add("CONTROL_BYTES", control::CONTROL_BYTES)?;
    m.add("WAIT_SLICE_S", wait::SLICE.as_secs_f64())?;
    Ok(())
}
