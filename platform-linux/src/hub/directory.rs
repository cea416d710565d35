//! The hub's directory segment, `<hub>.hub`: what a hub publishes about itself, its mic ring's
//! consumers and its output lanes, and what agents publish about themselves.
//!
//! Every row is a voxring-core [`ControlRegister`] (a seqlock: one writer, any number of
//! readers, never torn, a stuck writer makes reads fail and never hang them). The segment is
//! laid out by one [`Plan`] that both sides build the same way ([`plan`]), so a foreign
//! implementation finds each register at a fixed offset (docs/hub.md lists them).
//!
//! | rows | writer | what |
//! |---|---|---|
//! | [`HubInfo`] × 1 | the hub | its pid, geometry, counters |
//! | [`Speech`] × 1 | a VAD agent | speech on/off |
//! | `values` × [`VALUES`] | any agent (one writer per index, by convention) | published words |
//! | [`MicRow`] × [`MAX_SLOTS`] | the hub | each mic consumer slot: who, lag, evictions, CRC checks |
//! | [`AgentStats`] × [`MAX_SLOTS`] | the agent in that mic slot | its own counters and CRC windows |
//! | [`OutRow`] × [`MAX_SLOTS`] | the hub | each output lane: name, queue depth, corrections |
//!
//! Agents' rows are input, not state: the hub and `voxring top` only display them and check
//! claimed CRC windows against the hub's own record; nothing indexes memory with them.

use voxring_core::control::{ControlRegister, Plain};

use crate::shared::{PlaceError, Plan, Slot};

/// Layout version of the directory (bumped on any change to the rows or their order).
pub const DIRECTORY_VERSION: u64 = 2;
/// Rows per table: the most mic consumers (agents) and output lanes a hub can have.
pub const MAX_SLOTS: usize = 128;
/// Published value registers (`values[i]`, four words each).
pub const VALUES: usize = 16;

/// [`HubInfo::state`]: the hub is running.
pub const STATE_RUNNING: u64 = 1;
/// [`HubInfo::state`]: the hub stopped (Ctrl-C, SIGTERM, device error).
pub const STATE_STOPPED: u64 = 2;

/// [`MicRow::state`] / [`OutRow::state`]: the slot is free.
pub const SLOT_FREE: u64 = 0;
/// [`MicRow::state`]: a consumer holds the slot.
pub const MIC_JOINED: u64 = 1;
/// [`OutRow::state`]: the lane fills its queue up to the target depth before it plays.
pub const OUT_PRIMING: u64 = 1;
/// [`OutRow::state`]: the lane is mixed into playback.
pub const OUT_PLAYING: u64 = 2;

/// Implements [`Plain`] for a `#[repr(C)]` struct of `u64` fields (and arrays of them).
macro_rules! plain_u64_struct {
    ($t:ty) => {
        // SAFETY: `#[repr(C)]` with only `u64` fields and `[u64; N]` arrays: 8-byte aligned
        // fields back to back, no padding, and every bit pattern is a valid value.
        unsafe impl Plain for $t {}
    };
}

/// The hub about itself. Written by the hub's control thread about every 20 ms.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubInfo {
    /// [`DIRECTORY_VERSION`].
    pub version: u64,
    /// The hub's pid (in its own PID namespace).
    pub pid: u64,
    /// [`STATE_RUNNING`] or [`STATE_STOPPED`].
    pub state: u64,
    /// Sample rate, Hz.
    pub rate: u64,
    /// Frames per cycle (one ring frame).
    pub quantum: u64,
    /// Interleaved channels.
    pub channels: u64,
    /// voxring-core `SampleFormat` code (1 s16, 2 s32, 3 f32).
    pub format: u64,
    /// Frames in the mic ring: the lag bound after which a consumer is evicted.
    pub mic_frames: u64,
    /// Mic consumer slots (`--max-agents`).
    pub max_agents: u64,
    /// Output queues' target depth, frames.
    pub target_depth: u64,
    /// Output queues' band: corrections happen only outside `target ± band`.
    pub band: u64,
    /// CLOCK_MONOTONIC ns when the hub started its device.
    pub started_ns: u64,
    /// Cycles (mic frames committed).
    pub cycles: u64,
    /// Playback cycles mixed (periods handed to the device).
    pub play_cycles: u64,
    /// Device xruns, capture side.
    pub xruns_capture: u64,
    /// Device xruns, playback side.
    pub xruns_playback: u64,
    /// Wake syscalls the real-time thread made (at most one per cycle).
    pub wakes: u64,
    /// Consumers evicted because they fell a whole ring behind.
    pub evicted_lag: u64,
    /// Consumers and output producers evicted because their process died.
    pub evicted_dead: u64,
    /// Mic frames the device offered that could not be committed (ring refused).
    pub mic_dropped: u64,
    /// Output lanes being mixed now.
    pub lanes: u64,
    /// Output lanes refused (wrong geometry, owner, group; table full), in total.
    pub lanes_refused: u64,
    /// CPU time of the hub process, ns.
    pub cpu_ns: u64,
}
plain_u64_struct!(HubInfo);

/// Speech on/off, written by a VAD agent.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Speech {
    /// 1 while speech is detected, else 0.
    pub active: u64,
    /// Mic sample position where the current state began.
    pub since_sample: u64,
    /// Speech segments so far.
    pub segments: u64,
    /// Level of the last frame, in millibel below full scale (e.g. -2000 = -20 dBFS), as i64.
    pub level_mb: u64,
}
plain_u64_struct!(Speech);

/// One mic consumer slot, written by the hub.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MicRow {
    /// [`SLOT_FREE`] or [`MIC_JOINED`].
    pub state: u64,
    /// The consumer's owner token (liveness ticket and identity, see `liveness`).
    pub token: u64,
    /// The consumer's pid, from its token.
    pub pid: u64,
    /// Frames committed and not yet read by it.
    pub lag: u64,
    /// Highest lag seen since it joined.
    pub max_lag: u64,
    /// Consumers evicted from this slot for lag, in total.
    pub evicted_lag: u64,
    /// CRC windows the agent in this slot claimed that matched the hub's own record.
    pub crc_ok: u64,
    /// Claimed windows that did not match (frames not what the hub committed).
    pub crc_bad: u64,
    /// Claimed windows too old (or too new) to check.
    pub crc_unknown: u64,
}
plain_u64_struct!(MicRow);

/// What an agent publishes about itself in the row of its mic slot. Untrusted.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// The writer's owner token on the mic ring (so a reader can tell a stale row).
    pub token: u64,
    /// Its name, UTF-8, zero-padded (32 bytes).
    pub name: [u64; 4],
    /// Frames read.
    pub frames: u64,
    /// Frames lost (lapped, or skipped by a rejoin after an eviction).
    pub lost: u64,
    /// Frames it took later than one cycle after their commit.
    pub late: u64,
    /// Its CPU time, ns.
    pub cpu_ns: u64,
    /// Wall time since it joined, ns.
    pub wall_ns: u64,
    /// Hand-off (commit to in hand) p50 and max, ns: its wake-up latency.
    pub wake_p50_ns: u64,
    /// See `wake_p50_ns`.
    pub wake_max_ns: u64,
    /// Last completed CRC window: the first frame's sequence number,
    pub window_seq: u64,
    /// its frame count (0: none yet),
    pub window_frames: u64,
    /// and the CRC-32 of the frames' payloads (bytes `len` of each), in order.
    pub window_crc: u64,
    /// Windows completed so far (the register's version may move for other reasons).
    pub windows: u64,
}
plain_u64_struct!(AgentStats);

/// One output lane, written by the hub.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutRow {
    /// [`SLOT_FREE`], [`OUT_PRIMING`] or [`OUT_PLAYING`].
    pub state: u64,
    /// The agent part of the ring name (`<hub>.out.<agent>`), UTF-8, zero-padded.
    pub name: [u64; 4],
    /// The producer's pid, from its token (0 while none).
    pub pid: u64,
    /// Frames queued when last mixed.
    pub depth: u64,
    /// Frames mixed into playback.
    pub mixed: u64,
    /// Frames dropped because the queue was above `target + band`.
    pub dropped: u64,
    /// Frames repeated because the queue ran dry while playing.
    pub repeated: u64,
    /// Cycles it played silence while playing (queue dry for longer than the band).
    pub gaps: u64,
    /// Times it (re)started priming.
    pub primes: u64,
    /// Quiet frames dropped inside a pause to bring the queue back to its target (no sound
    /// lost; since directory version 2).
    pub trimmed: u64,
}
plain_u64_struct!(OutRow);

/// A register holding a `T` of `size_of::<T>() / 8` words.
pub type Reg<T, const W: usize> = ControlRegister<T, W>;
/// [`HubInfo`]'s register.
pub type InfoReg = Reg<HubInfo, 23>;
/// [`Speech`]'s register.
pub type SpeechReg = Reg<Speech, 4>;
/// A published value: four words.
pub type ValueReg = Reg<[u64; 4], 4>;
/// [`MicRow`]'s register.
pub type MicReg = Reg<MicRow, 9>;
/// [`AgentStats`]'s register.
pub type StatsReg = Reg<AgentStats, 16>;
/// [`OutRow`]'s register.
pub type OutReg = Reg<OutRow, 13>;

/// Where every row sits: the same on the hub's and every agent's side.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The hub's row.
    pub info: Slot<InfoReg>,
    /// Speech on/off.
    pub speech: Slot<SpeechReg>,
    /// Published values.
    pub values: [Slot<ValueReg>; VALUES],
    /// Mic consumer rows, by slot index.
    pub mic: Vec<Slot<MicReg>>,
    /// Agents' own rows, by mic slot index.
    pub stats: Vec<Slot<StatsReg>>,
    /// Output lane rows.
    pub out: Vec<Slot<OutReg>>,
}

/// The directory's plan and where each row is.
pub fn plan() -> Result<(Plan, Layout), PlaceError> {
    let mut p = Plan::new();
    let info = p.place::<InfoReg>(HubInfo::default())?;
    let speech = p.place::<SpeechReg>(Speech::default())?;
    let mut values = [None; VALUES];
    for v in &mut values {
        *v = Some(p.place::<ValueReg>([0; 4])?);
    }
    let values = values.map(|v| v.expect("every value register was placed above"));
    let mut mic = Vec::with_capacity(MAX_SLOTS);
    let mut stats = Vec::with_capacity(MAX_SLOTS);
    let mut out = Vec::with_capacity(MAX_SLOTS);
    for _ in 0..MAX_SLOTS {
        mic.push(p.place::<MicReg>(MicRow::default())?);
    }
    for _ in 0..MAX_SLOTS {
        stats.push(p.place::<StatsReg>(AgentStats::default())?);
    }
    for _ in 0..MAX_SLOTS {
        out.push(p.place::<OutReg>(OutRow::default())?);
    }
    Ok((
        p,
        Layout {
            info,
            speech,
            values,
            mic,
            stats,
            out,
        },
    ))
}

/// Packs a name into 32 zero-padded bytes (longer names are cut at a character boundary).
pub fn pack_name(name: &str) -> [u64; 4] {
    let mut bytes = [0u8; 32];
    let mut end = name.len().min(32);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
    std::array::from_fn(|i| {
        u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    })
}

/// Unpacks a name packed by [`pack_name`]; bytes that are not UTF-8 are replaced.
pub fn unpack_name(words: &[u64; 4]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_long_names_are_cut_on_a_char_boundary() {
        assert_eq!(unpack_name(&pack_name("tts")), "tts");
        let long = "é".repeat(20); // 40 bytes
        let cut = unpack_name(&pack_name(&long));
        assert_eq!(cut, "é".repeat(16));
    }

    #[test]
    fn rows_fit_their_registers() {
        assert_eq!(std::mem::size_of::<HubInfo>(), 23 * 8);
        assert_eq!(std::mem::size_of::<MicRow>(), 9 * 8);
        assert_eq!(std::mem::size_of::<AgentStats>(), 16 * 8);
        assert_eq!(std::mem::size_of::<OutRow>(), 13 * 8);
        let (p, l) = plan().unwrap();
        assert_eq!(l.mic.len(), MAX_SLOTS);
        assert!(p.size() > 0);
    }
}
