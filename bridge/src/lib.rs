#![doc = include_str!("../README.md")]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]
#![forbid(unsafe_code)]

pub mod bench;
pub mod export;
pub mod import;
pub mod jitter;
pub mod net;
pub mod topo;
pub mod wire;

use std::sync::Arc;

/// Something a side reports as it happens (peers coming and going, failures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An importer's liveliness token appeared (its key).
    ImporterJoined(String),
    /// An importer's liveliness token went away: it exited, was killed or lost the network.
    ImporterLeft(String),
    /// The exporter's liveliness token appeared.
    ExporterJoined,
    /// The exporter's liveliness token went away.
    ExporterLeft,
    /// The exported ring's producer is gone and every frame was read.
    ProducerGone,
    /// A live producer is back under the exported name (a new ring, or the hub restarted):
    /// exporting its frames under a new epoch.
    ProducerBack,
    /// A frame from the network was refused (the reason; reported once per reason).
    Rejected(String),
    /// The side cannot go on.
    Failed(String),
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::ImporterJoined(k) => write!(f, "importer present: {k}"),
            Event::ImporterLeft(k) => write!(
                f,
                "importer gone: {k} (exited, killed, or the network between us failed)"
            ),
            Event::ExporterJoined => f.write_str("exporter present"),
            Event::ExporterLeft => f.write_str(
                "exporter gone (exited, killed, or the network between us failed); waiting for it to come back",
            ),
            Event::ProducerGone => {
                f.write_str("the exported ring's producer is gone; waiting for it to come back")
            }
            Event::ProducerBack => f.write_str(
                "a producer is back under the exported name; exporting its frames (new epoch)",
            ),
            Event::Rejected(why) => write!(f, "frame refused: {why}"),
            Event::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// Where a side sends its [`Event`]s (called from Zenoh's and the bridge's threads).
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;
