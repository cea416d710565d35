//! Giving the audio thread SCHED_FIFO (through [`crate::rt::set_fifo`], the thread-priority
//! crate's `pthread_setschedparam(3)`), reporting a refusal instead of panicking.

/// The priority voxring's audio thread asks for by default: above ordinary work, below
/// PipeWire's own data thread (`module-rt` uses 88), so our client never preempts the graph
/// that feeds it.
pub const DEFAULT_AUDIO_PRIORITY: u8 = 70;

/// Why the audio thread could not get SCHED_FIFO. The stream still runs, at normal priority,
/// and will be more prone to xruns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtRefused(pub String);

impl std::fmt::Display for RtRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RtRefused {}

/// Puts the calling thread under SCHED_FIFO at `priority` (1..=99). Returns why not when the
/// system refuses (the message says how to get it); never panics.
pub fn promote_current_thread(priority: u8) -> Result<(), RtRefused> {
    crate::rt::set_fifo(priority).map_err(|e| {
        RtRefused(format!(
            "{e}; the audio thread runs at normal priority and is more likely to xrun"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_priority_is_refused_with_a_reason() {
        for p in [0u8, 100] {
            let e = promote_current_thread(p).unwrap_err();
            assert!(e.0.contains("normal priority"), "{e}");
            assert!(e.0.contains(&p.to_string()), "{e}");
        }
    }
}
