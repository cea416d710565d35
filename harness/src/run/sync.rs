//! The run's sync region: one small named segment (`<prefix>.sync`) holding voxring-core's
//! [`CycleFence`] (which agents finished each cycle, and who was late) and the VAD's control
//! register (speech on/off, published by the `vad` agent, read by anyone).
//!
//! Both live in one segment placed by [`voxring_linux::shared`]: the fence first, the register
//! after it (offsets computed there, from core's `place_after`); this module only names them.

use voxring_core::control::ControlRegister;
use voxring_core::fence::CycleFence;
use voxring_linux::segment::{AttachOptions, CreateOptions};
use voxring_linux::shared::{PlaceError, Placed, Plan, SharedObjects, Slot};

/// What the `vad` agent publishes after every frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VadState {
    /// 1 while speech is on.
    pub speaking: u32,
    /// Energy of the last frame, in hundredths of a dBFS.
    pub energy_millibel: i32,
    /// Speech segments begun so far.
    pub segments: u64,
    /// Frames judged to be speech so far.
    pub speech_frames: u64,
    /// Sequence number of the last frame judged.
    pub seq: u64,
}

impl VadState {
    /// The register's four words: `speaking` and `energy_millibel` share the first, in memory
    /// order (the bytes of a `repr(C)` struct of these fields).
    fn to_words(self) -> [u64; 4] {
        let mut first = [0; 8];
        first[..4].copy_from_slice(&self.speaking.to_ne_bytes());
        first[4..].copy_from_slice(&self.energy_millibel.to_ne_bytes());
        [
            u64::from_ne_bytes(first),
            self.segments,
            self.speech_frames,
            self.seq,
        ]
    }

    fn from_words(w: [u64; 4]) -> Self {
        let first = w[0].to_ne_bytes();
        let [a, b, c, d, e, f, g, h] = first;
        Self {
            speaking: u32::from_ne_bytes([a, b, c, d]),
            energy_millibel: i32::from_ne_bytes([e, f, g, h]),
            segments: w[1],
            speech_frames: w[2],
            seq: w[3],
        }
    }
}

/// The VAD's register: 4 words (32 bytes) hold a [`VadState`].
type VadRegister = ControlRegister<[u64; 4], 4>;

/// The sync region of a run, mapped: the fence and the register, each keeping the segment
/// (and this process's presence in it) alive.
#[derive(Debug)]
pub struct SyncHandle {
    fence: Placed<CycleFence>,
    vad: Placed<VadRegister>,
}

/// The segment name of a run's sync region.
pub fn sync_name(prefix: &str) -> String {
    format!("{prefix}.sync")
}

/// What the sync region holds, the same on both sides.
fn plan() -> Result<(Plan, Slot<CycleFence>, Slot<VadRegister>), PlaceError> {
    let mut plan = Plan::new();
    let fence = plan.place::<CycleFence>(())?;
    let vad = plan.place::<VadRegister>(VadState::default().to_words())?;
    Ok((plan, fence, vad))
}

impl SyncHandle {
    /// Creates the region (orchestrator), for `agents` agents.
    pub fn create(prefix: &str, agents: u32) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (agents as usize) <= voxring_core::fence::MAX_AGENTS,
            "at most {} agents",
            voxring_core::fence::MAX_AGENTS
        );
        let (plan, fence, vad) = plan()?;
        let seg = SharedObjects::create(&sync_name(prefix), &CreateOptions::default(), plan)
            .map_err(|e| anyhow::anyhow!("cannot create the run's sync region: {e}"))?;
        Self::from_segment(&seg, fence, vad)
    }

    /// Attaches to the region (agents).
    pub fn attach(prefix: &str) -> anyhow::Result<Self> {
        let (plan, fence, vad) = plan()?;
        let seg = SharedObjects::attach(&sync_name(prefix), &AttachOptions::default(), &plan)
            .map_err(|e| anyhow::anyhow!("cannot attach to the run's sync region: {e}"))?;
        Self::from_segment(&seg, fence, vad)
    }

    fn from_segment(
        seg: &SharedObjects,
        fence: Slot<CycleFence>,
        vad: Slot<VadRegister>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            fence: seg.placed(fence)?,
            vad: seg.placed(vad)?,
        })
    }

    fn fence(&self) -> &CycleFence {
        &self.fence
    }

    /// Arms cycle `seq` (orchestrator, real-time thread). A refusal is ignored: it only
    /// means the cycle is not tracked.
    pub fn arm(&self, seq: u64, mask: u64, deadline_ns: u64) {
        let _ = self
            .fence()
            .arm(seq.wrapping_add(1), mask as u32, deadline_ns);
    }

    /// Marks cycle `seq` (due at `deadline_ns`) done for agent `index`; true when the mark
    /// was late: past the deadline the hub armed, or after a later cycle was armed and past
    /// the frame's own deadline (a later cycle armed before it was due is the hub's burst: it
    /// arms only the last frame of a wake-up, see `CaptureProbe::frame`).
    pub fn fence_done(&self, index: u32, seq: u64, now_ns: u64, deadline_ns: u64) -> bool {
        match self
            .fence()
            .done(index as usize, seq.wrapping_add(1), now_ns)
        {
            Ok(c) => c.late,
            Err(voxring_core::fence::DoneError::Stale { .. }) => now_ns > deadline_ns,
            Err(_) => false,
        }
    }

    /// Late plus missed cycles per agent, as the fence counted them.
    pub fn late_counts(&self) -> Vec<u64> {
        let f = self.fence();
        (0..voxring_core::fence::MAX_AGENTS)
            .map(|i| {
                u64::from(f.late_count(i).unwrap_or(0)) + u64::from(f.missed_count(i).unwrap_or(0))
            })
            .collect()
    }

    /// Publishes the VAD state (the `vad` agent; never waits). A refused write (another
    /// writer active) is dropped: the next frame publishes again.
    pub fn publish_vad(&self, s: VadState) {
        let _ = self.vad.write(s.to_words());
    }

    /// Reads the VAD state (never torn; the default when the writer keeps it busy).
    pub fn read_vad(&self) -> VadState {
        self.vad
            .read()
            .map(VadState::from_words)
            .unwrap_or_default()
    }
}
