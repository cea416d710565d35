//! Plain data shared with C: a ring's configuration, a granted frame, where frames live, and a
//! handle's counters.

use voxring_core::{FrameMeta, Policy, RingConfig, SampleFormat};
use voxring_linux::ring::Segment;

use crate::boundary::Fallible;
use crate::status::*;

/// A ring's configuration (codes as in `core/LAYOUT.md`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vr_config {
    /// Capacity in frames: a power of two.
    pub frames: u32,
    /// Samples per frame and channel.
    pub samples_per_frame: u32,
    /// Interleaved channels.
    pub channels: u32,
    /// `VR_FORMAT_*`.
    pub format: u32,
    /// Hz (informative).
    pub sample_rate: u32,
    /// Consumer slots.
    pub max_consumers: u32,
    /// `VR_POLICY_*`.
    pub policy: u32,
}

impl vr_config {
    pub(crate) fn to_ring(self) -> Fallible<RingConfig> {
        let bad = |what: &str| (VR_E_INVALID, format!("vr_config: invalid {what}"));
        let cfg = RingConfig {
            frames: self.frames,
            samples_per_frame: self.samples_per_frame,
            channels: u16::try_from(self.channels).map_err(|_| bad("channels"))?,
            format: match self.format {
                VR_FORMAT_S16 => SampleFormat::S16,
                VR_FORMAT_S32 => SampleFormat::S32,
                VR_FORMAT_F32 => SampleFormat::F32,
                _ => return Err(bad("format (use VR_FORMAT_*)")),
            },
            sample_rate: self.sample_rate,
            max_consumers: u16::try_from(self.max_consumers).map_err(|_| bad("max_consumers"))?,
            policy: Policy::from_code(self.policy)
                .ok_or_else(|| bad("policy (use VR_POLICY_*)"))?,
        };
        cfg.region_size()
            .map_err(|e| (VR_E_INVALID, format!("vr_config: {e}")))?;
        Ok(cfg)
    }

    pub(crate) fn from_ring(c: &RingConfig) -> Self {
        vr_config {
            frames: c.frames,
            samples_per_frame: c.samples_per_frame,
            channels: u32::from(c.channels),
            format: c.format as u32,
            sample_rate: c.sample_rate,
            max_consumers: u32::from(c.max_consumers),
            policy: c.policy as u32,
        }
    }
}

/// One granted frame. From a read grant every field is filled in; from a write grant `seq`,
/// `data` and `capacity` are, and the others are the defaults (`len = capacity`), to be set by
/// the caller and passed back to `vr_write_commit`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vr_frame {
    /// Sequence number (position in the stream).
    pub seq: u64,
    /// Stream position of the first sample (per channel).
    pub sample_pos: u64,
    /// Capture time of the first sample, ns (producer's clock; voxring's tools use
    /// CLOCK_MONOTONIC, see `vr_monotonic_ns`).
    pub timestamp_ns: u64,
    /// `VR_FLAG_*`.
    pub flags: u32,
    /// Valid payload bytes.
    pub len: u32,
    /// The payload, in place (64-byte aligned).
    pub data: *mut u8,
    /// Payload capacity in bytes.
    pub capacity: u32,
    /// Zero.
    pub reserved: u32,
}

impl vr_frame {
    /// A frame granted for reading: its metadata, and `data` holding `capacity` bytes.
    pub(crate) fn for_reading(meta: FrameMeta, data: *const u8, capacity: u32) -> Self {
        vr_frame {
            seq: meta.seq,
            sample_pos: meta.sample_pos,
            timestamp_ns: meta.timestamp_ns,
            flags: meta.flags.0,
            len: meta.len,
            data: data.cast_mut(),
            capacity,
            reserved: 0,
        }
    }

    /// Frame `seq` granted for writing into `payload` (a whole slot: `len` is its capacity
    /// until the writer says otherwise at commit).
    pub(crate) fn for_writing(seq: u64, payload: &mut [u8]) -> Self {
        vr_frame {
            seq,
            sample_pos: 0,
            timestamp_ns: 0,
            flags: 0,
            len: payload.len() as u32,
            data: payload.as_mut_ptr(),
            capacity: payload.len() as u32,
            reserved: 0,
        }
    }
}

/// Where a handle's frames live, for zero-copy checks and views.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vr_info {
    /// The ring's configuration.
    pub config: vr_config,
    /// Payload bytes per frame.
    pub payload_bytes: u32,
    /// `VR_TRANSPORT_*`.
    pub transport: i32,
    /// The memory frames are read from or written into: the shared mapping, or a socket
    /// fallback reader's private buffer.
    pub memory: *const u8,
    /// Its length in bytes.
    pub memory_len: u64,
    /// Offset of slot 0 in `memory`.
    pub slots_offset: u64,
    /// Bytes between slots.
    pub slot_size: u64,
    /// Offset of the payload inside a slot.
    pub payload_offset: u64,
}

/// Counters of a reader or writer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vr_status {
    /// Frames committed to the ring so far (socket fallback: the last sequence number
    /// received plus one).
    pub write_pos: u64,
    /// Reader: sequence number of the next frame to read. Writer: same as `write_pos`.
    pub read_pos: u64,
    /// Reader: frames committed but not yet read (`write_pos - read_pos`).
    pub lag: u64,
    /// Reader: frames lost in total (lossy policy).
    pub lost_frames: u64,
    /// Frames carrying `VR_FLAG_XRUN` that this handle read or wrote.
    pub xruns: u64,
    /// Frames this handle read (released) or wrote (committed).
    pub frames: u64,
    /// Writer: consumers currently joined (socket fallback readers included, as the server
    /// joins for each). Reader: 0.
    pub consumers: u32,
    /// Zero.
    pub reserved: u32,
}

/// Where a shared ring's frames live: the mapping, and the slot geometry core validated at
/// create/attach (kept in the ring handle, so a peer rewriting the header later changes
/// nothing here).
pub(crate) fn shm_info(seg: &Segment) -> vr_info {
    let cfg = seg.config();
    let ring = seg.ring();
    vr_info {
        config: vr_config::from_ring(&cfg),
        payload_bytes: ring.payload_bytes(),
        transport: VR_TRANSPORT_SHM,
        memory: seg.mapping().as_ptr(),
        memory_len: seg.mapping().len() as u64,
        slots_offset: ring.slots_offset() as u64,
        slot_size: ring.slot_size() as u64,
        payload_offset: ring.payload_offset() as u64,
    }
}
