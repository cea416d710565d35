//! loom models of every concurrent protocol in `voxring-core`.
//!
//! The models live in `tests/` and compile only under `--cfg voxring_loom`; run them with
//! `loom-tests/run`, which sets the cfg, its own target dir, `--release` and
//! `LOOM_MAX_PREEMPTIONS`. A plain `cargo test` builds this crate with no models in it.
//!
//! May depend on: `voxring-core` and loom.
