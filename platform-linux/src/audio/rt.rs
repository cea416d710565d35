//! Giving the audio thread SCHED_FIFO.

use thread_priority::unix::{
    RealtimeThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
    thread_native_id,
};
use thread_priority::{ThreadPriority, ThreadPriorityValue};

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

/// Puts the calling thread under SCHED_FIFO at `priority` (1..=99), with
/// `pthread_setschedparam(3)`. Returns why not when the system refuses; never panics.
pub fn promote_current_thread(priority: u8) -> Result<(), RtRefused> {
    let value = ThreadPriorityValue::try_from(priority.clamp(1, 99))
        .map_err(|e| RtRefused(format!("SCHED_FIFO {priority}: {e}")))?;
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    )
    .map_err(|e| match e {
        thread_priority::Error::OS(errno) if errno == libc::EPERM => RtRefused(format!(
            "SCHED_FIFO {priority} refused (EPERM): this user has no rtprio limit; run \
             kernel-tuning/apply.sh --limits or grant CAP_SYS_NICE. The audio thread runs at \
             normal priority and is more likely to xrun."
        )),
        other => RtRefused(format!(
            "SCHED_FIFO {priority} refused ({other}); the audio thread runs at normal priority"
        )),
    })
}
