//! Giving the audio thread SCHED_FIFO through [`crate::rt::set_fifo`] (the one place voxring asks
//! for it), reporting a refusal instead of panicking.
//!
//! ```
//! use voxring_linux::audio::rt::{DEFAULT_AUDIO_PRIORITY, promote_current_thread};
//!
//! std::thread::spawn(|| match promote_current_thread(DEFAULT_AUDIO_PRIORITY) {
//!     Ok(()) => println!("audio thread at SCHED_FIFO {DEFAULT_AUDIO_PRIORITY}"),
//!     Err(why) => eprintln!("{why}"), // says how to get it, e.g. kernel-tuning/apply --limits
//! })
//! .join()
//! .unwrap();
//! ```

use crate::rt::RtError;

/// The priority voxring's audio thread asks for by default: above ordinary work, below
/// PipeWire's own data thread (`module-rt` uses 88), so our client never preempts the graph
/// that feeds it.
pub const DEFAULT_AUDIO_PRIORITY: u8 = 70;

/// Why the audio thread could not get SCHED_FIFO (the typed reason is [`RtRefused::reason`]).
/// The stream still runs, at normal priority, and will be more prone to xruns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtRefused(pub RtError);

impl RtRefused {
    /// What the system refused, and how to get it.
    pub fn reason(&self) -> &RtError {
        &self.0
    }
}

impl std::fmt::Display for RtRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; the audio thread runs at normal priority and is more likely to xrun",
            self.0
        )
    }
}

impl std::error::Error for RtRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Puts the calling thread under SCHED_FIFO at `priority` (1..=99). Returns why not when the
/// system refuses (the message says how to get it); never panics.
pub fn promote_current_thread(priority: u8) -> Result<(), RtRefused> {
    crate::rt::set_fifo(priority).map_err(RtRefused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_priority_is_refused_with_a_reason() {
        for p in [0u8, 100] {
            let e = promote_current_thread(p).unwrap_err();
            assert_eq!(e.reason(), &RtError::BadPriority { priority: p });
            let text = e.to_string();
            assert!(text.contains("normal priority"), "{text}");
            assert!(text.contains(&p.to_string()), "{text}");
        }
    }
}
