#![doc = include_str!("../README.md")]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod audio;
pub mod awake;
pub mod cleanup;
pub mod clock;
pub mod control;
pub mod espeak;
pub mod fallback;
pub mod futex;
pub mod guard;
pub mod hub;
pub mod liveness;
pub mod mapping;
pub mod memfd;
pub mod perf;
pub mod process;
pub mod ring;
pub mod rt;
pub mod segment;
pub mod shared;
