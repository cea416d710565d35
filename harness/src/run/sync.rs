//! The run's sync region: one small named segment (`<prefix>.sync`) holding voxring-core's
//! [`CycleFence`] (which agents finished each cycle, and who was late) and the VAD's control
//! register (speech on/off, published by the `vad` agent, read by anyone).
//!
//! Layout: the fence at offset 0 (its own magic and version, `core/LAYOUT.md`), the control
//! register at the next 128-byte boundary after it.

use anyhow::Context as _;
use voxring_core::control::{ControlRegister, Plain};
use voxring_core::fence::CycleFence;
use voxring_linux::segment::{AttachOptions, CreateError, CreateOptions, SegmentFile};

/// What the `vad` agent publishes after every frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
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

// SAFETY: repr(C) of u32, i32 and three u64: 4 + 4 + 24 bytes, no padding; every bit
// pattern is a valid value.
unsafe impl Plain for VadState {}

/// The VAD's register: 4 words (32 bytes) hold a [`VadState`].
type VadRegister = ControlRegister<VadState, 4>;

fn register_offset() -> usize {
    let align = VadRegister::REGION_ALIGN.max(128);
    CycleFence::REGION_SIZE.div_ceil(align) * align
}

fn region_size() -> usize {
    (register_offset() + VadRegister::REGION_SIZE).div_ceil(4096) * 4096
}

/// The sync region of a run, mapped.
#[derive(Debug)]
pub struct SyncHandle {
    /// The fence and the register, checked once at create/attach; they point into `file`'s
    /// mapping, which lives as long as this handle.
    fence: std::ptr::NonNull<CycleFence>,
    vad: std::ptr::NonNull<VadRegister>,
    /// Keeps the mapping (and this process's presence lock) alive.
    _file: SegmentFile,
}

// SAFETY: the pointers lead to structs made only of atomics inside a shared mapping owned by
// `file` (itself Send and Sync); any thread may use atomics.
unsafe impl Send for SyncHandle {}
// SAFETY: as above: shared access goes through atomics only.
unsafe impl Sync for SyncHandle {}

/// The segment name of a run's sync region.
pub fn sync_name(prefix: &str) -> String {
    format!("{prefix}.sync")
}

impl SyncHandle {
    /// Creates the region (orchestrator), for `agents` agents.
    pub fn create(prefix: &str, agents: u32) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (agents as usize) <= voxring_core::fence::MAX_AGENTS,
            "at most {} agents",
            voxring_core::fence::MAX_AGENTS
        );
        let name = sync_name(prefix);
        let file =
            SegmentFile::create_with(&name, region_size(), &CreateOptions::default(), |_, m| {
                // SAFETY: a fresh shared mapping of `m.len()` bytes, page-aligned, not yet visible
                // to any other process; it lives in the SegmentFile returned with it.
                let fence = unsafe { CycleFence::init_in(m.as_ptr(), m.len()) }.map(|_| ());
                let off = register_offset();
                // SAFETY: as above; `off` is within the mapping (region_size() covers it), aligned
                // (the mapping is page-aligned and `off` a multiple of the register's alignment),
                // and these bytes are disjoint from the fence's.
                let reg = unsafe {
                    VadRegister::init_in(m.as_ptr().add(off), m.len() - off, VadState::default())
                }
                .map(|_| ());
                fence.ok().and(reg.ok()).ok_or_else(|| CreateError::Io {
                    op: "initialise the cycle fence and control register in",
                    path: std::path::PathBuf::from(&name),
                    errno: rustix::io::Errno::INVAL,
                })
            })
            .map_err(|e| anyhow::anyhow!("cannot create the run's sync region: {e}"))?;
        Self::from_file(file)
    }

    /// Attaches to the region (agents).
    pub fn attach(prefix: &str) -> anyhow::Result<Self> {
        let file = SegmentFile::attach(
            &sync_name(prefix),
            region_size() as u64,
            &AttachOptions::default(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        voxring_linux::liveness::hold_presence(file.fd()).map_err(|e| {
            anyhow::anyhow!("cannot mark this process present in the sync region: {e}")
        })?;
        Self::from_file(file).context("attaching to the run's sync region")
    }

    /// Checks the fence and the register in `file` and keeps pointers to them.
    fn from_file(file: SegmentFile) -> anyhow::Result<Self> {
        let m = file.mapping();
        // SAFETY: the mapping covers the whole file and lives in `file`; only atomics follow.
        let fence = unsafe { CycleFence::attach(m.as_ptr(), m.len()) }.map_err(|e| {
            anyhow::anyhow!("the run's sync region holds no valid cycle fence: {e:?}")
        })?;
        let fence = std::ptr::NonNull::from(fence);
        let off = register_offset();
        anyhow::ensure!(m.len() >= off, "the run's sync region is too small");
        // SAFETY: the mapping covers `m.len()` bytes; `off` is within it and aligned (see
        // `create`); only atomics are accessed.
        let vad =
            unsafe { VadRegister::attach(m.as_ptr().add(off), m.len() - off) }.map_err(|e| {
                anyhow::anyhow!("the run's sync region holds no valid control register: {e:?}")
            })?;
        let vad = std::ptr::NonNull::from(vad);
        Ok(Self {
            fence,
            vad,
            _file: file,
        })
    }

    fn fence(&self) -> &CycleFence {
        // SAFETY: checked at create/attach (aligned, large enough, magic and version); it
        // points into the mapping `self._file` keeps alive, and holds only atomics, for which
        // every value a peer may write is valid.
        unsafe { self.fence.as_ref() }
    }

    /// Arms cycle `seq` (orchestrator, real-time thread). A refusal is ignored: it only
    /// means the cycle is not tracked.
    pub fn arm(&self, seq: u64, mask: u64, deadline_ns: u64) {
        let _ = self
            .fence()
            .arm(seq.wrapping_add(1), mask as u32, deadline_ns);
    }

    /// Marks cycle `seq` done for agent `index`; true when the mark was late (past the
    /// deadline) or came after the next cycle was armed (missed).
    pub fn fence_done(&self, index: u32, seq: u64, now_ns: u64) -> bool {
        match self
            .fence()
            .done(index as usize, seq.wrapping_add(1), now_ns)
        {
            Ok(c) => c.late,
            Err(voxring_core::fence::DoneError::Stale { .. }) => true,
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

    fn vad(&self) -> &VadRegister {
        // SAFETY: as for `fence`: checked once, inside the mapping `self._file` keeps alive,
        // atomics only.
        unsafe { self.vad.as_ref() }
    }

    /// Publishes the VAD state (the `vad` agent; never waits). A refused write (another
    /// writer active) is dropped: the next frame publishes again.
    pub fn publish_vad(&self, s: VadState) {
        let _ = self.vad().write(s);
    }

    /// Reads the VAD state (never torn; the default when the writer keeps it busy).
    pub fn read_vad(&self) -> VadState {
        self.vad().read().unwrap_or_default()
    }
}
