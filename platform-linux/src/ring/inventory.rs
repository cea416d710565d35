//! What `voxring segments list` shows: every `/dev/shm/voxring.*` segment, its ring and its
//! participants, read without locking, evicting or removing anything.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use voxring_core::{Ring, RingConfig};

use crate::liveness;
use crate::segment::{AttachOptions, SegmentFile, core_attach_error};

/// One participant as `voxring segments list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantInfo {
    /// Consumer slot (None for the producer).
    pub slot: Option<u16>,
    /// The PID the participant wrote in its token (in its own PID namespace; 0 = unknown).
    pub pid: u32,
    /// Whether it is alive: its ticket is write-locked and, in this PID namespace, its
    /// process is still the one that joined.
    pub alive: bool,
    /// Frames committed but not yet released by this consumer (None for the producer, or
    /// when the cursor read is impossible: a corrupt or racing value).
    pub lag: Option<u64>,
}

/// One segment as `voxring segments list` shows it.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// The segment name (without `voxring.`).
    pub name: String,
    /// Its path.
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// Owner uid.
    pub owner_uid: u32,
    /// Permission bits.
    pub mode: u32,
    /// Whether any process holds a liveness lock on it (false = `clean` would remove it).
    pub in_use: bool,
    /// Ring details, or why they could not be read.
    pub ring: Result<RingInfo, String>,
}

/// Ring details of a listed segment.
#[derive(Debug, Clone)]
pub struct RingInfo {
    /// The configuration.
    pub config: RingConfig,
    /// Frames committed so far.
    pub write_pos: u64,
    /// The producer, if the side is held.
    pub producer: Option<ParticipantInfo>,
    /// The consumers in their slots.
    pub consumers: Vec<ParticipantInfo>,
}

impl SegmentInfo {
    /// Participants alive and dead: `(alive, dead)`.
    pub fn participants(&self) -> (usize, usize) {
        match &self.ring {
            Ok(r) => {
                let all = r.producer.iter().chain(r.consumers.iter());
                let alive = all.clone().filter(|p| p.alive).count();
                (alive, all.count() - alive)
            }
            Err(_) => (0, 0),
        }
    }
}

/// Lists `/dev/shm/voxring.*` (segments being created are left out) with size, owner,
/// whether they are in use, and each participant's liveness. Read-only: nothing is locked,
/// evicted or removed. Segments this user may not open are listed with the reason.
///
/// ```
/// use voxring_linux::ring::{Segment, list_segments};
/// use voxring_linux::segment::CreateOptions;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use voxring_core::{Policy, RingConfig, SampleFormat};
/// # let cfg = RingConfig {
/// #     frames: 4, samples_per_frame: 16, channels: 1, format: SampleFormat::S16,
/// #     sample_rate: 48_000, max_consumers: 2, policy: Policy::Lossless,
/// # };
/// let name = format!("doc-list-{}", std::process::id());
/// let seg = Segment::create(&name, &cfg, &CreateOptions::default())?;
/// let _tx = seg.producer()?;
/// let all = list_segments()?;
/// let mine = all.iter().find(|s| s.name == name).expect("listed");
/// assert!(mine.in_use);
/// assert_eq!(mine.participants(), (1, 0)); // one alive (the producer), none dead
/// # Ok(()) }
/// ```
pub fn list_segments() -> std::io::Result<Vec<SegmentInfo>> {
    let mut out = Vec::new();
    for fname in crate::cleanup::segment_file_names()? {
        if crate::segment::is_temporary_name(&fname) {
            continue;
        }
        let path = Path::new(crate::segment::SHM_DIR).join(&fname);
        let name = crate::segment::display_name(&fname);
        let Ok(st) = rustix::fs::lstat(&path) else {
            continue;
        };
        let mut info = SegmentInfo {
            name: name.clone(),
            path: path.clone(),
            size: st.st_size.max(0) as u64,
            owner_uid: st.st_uid,
            mode: st.st_mode & 0o7777,
            in_use: false,
            ring: Err(String::new()),
        };
        let opts = AttachOptions {
            expected_owner: Some(st.st_uid),
            allow_group_writable: true,
            allow_world_writable: true,
            prefault: false,
            lock: false,
        };
        match SegmentFile::observe_ring(&name, &opts) {
            Ok(file) => {
                info.in_use = liveness::any_held(file.fd()).unwrap_or(true);
                let m = file.mapping();
                // SAFETY: the mapping covers the whole file and outlives `ring` (both local to
                // this block); only reads through atomics follow.
                info.ring = match unsafe { Ring::attach(m.as_ptr(), m.len()) } {
                    Ok(ring) => Ok(ring_info(&ring, file.fd())),
                    Err(e) => Err(core_attach_error(&path, e).to_string()),
                };
            }
            Err(e) => {
                info.in_use = rustix::fs::open(
                    &path,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .ok()
                .and_then(|fd| liveness::any_held(fd.as_fd()).ok())
                .unwrap_or(true);
                info.ring = Err(e.to_string());
            }
        }
        out.push(info);
    }
    Ok(out)
}

fn ring_info(ring: &Ring, fd: BorrowedFd<'_>) -> RingInfo {
    let alive = |token: u64| liveness::token_alive(fd, token).unwrap_or(true);
    let producer = ring.producer_owner().map(|o| ParticipantInfo {
        slot: None,
        pid: liveness::pid_of(o),
        alive: alive(o),
        lag: None,
    });
    let consumers = (0..ring.config().max_consumers)
        .filter_map(|i| {
            ring.consumer_owner(i).map(|o| ParticipantInfo {
                slot: Some(i),
                pid: liveness::pid_of(o),
                alive: alive(o),
                lag: ring
                    .consumer_read_pos(i)
                    .map(|r| ring.write_pos().wrapping_sub(r))
                    .filter(|lag| *lag <= u64::from(ring.config().frames)),
            })
        })
        .collect();
    RingInfo {
        config: ring.config(),
        write_pos: ring.write_pos(),
        producer,
        consumers,
    }
}
