//! The client side of a voxring hub (`voxring serve`): find a hub by name, join its mic
//! ring, speak into its playback through an output ring of your own, read and write its
//! control registers. Everything here goes through public voxring APIs (segments, rings,
//! control registers); a C or Python agent does the same with the C ABI or the Python package
//! on the same names (docs/hub.md).
//!
//! # Names (segments in `/dev/shm`, `voxring.` + the name)
//!
//! | name | made by | what |
//! |---|---|---|
//! | `<hub>.mic` | the hub (producer) | the capture, one ring frame per cycle; agents join as consumers |
//! | `<hub>.hub` | the hub | the directory ([`directory`]): the hub's counters, speech, values, rows |
//! | `<hub>.out.<agent>` | the agent (producer) | what the agent says; the hub finds it by name and mixes it |
//!
//! # Policy
//!
//! The mic ring is lossless up to a bound: the hub never waits for a reader, and a reader
//! that falls a whole ring behind (`HubInfo::mic_frames` frames) is evicted by the hub's
//! real-time thread so the others lose nothing. [`Delivery::Lossy`] (the default) rejoins at
//! once after such an eviction and counts exactly the frames it skipped;
//! [`Delivery::Lossless`] returns [`HubError::Evicted`] instead, saying how far behind it
//! was. A reader whose process dies is evicted by the hub within its liveness sweep (every
//! 50 ms).
//!
//! ```no_run
//! use voxring_linux::hub::{Delivery, Hub, HubOptions, Read};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::find("voxring", &HubOptions::default())?;
//! let mut mic = hub.join_mic("vad", Delivery::Lossless)?;
//! let mut out = hub.speaker("vad")?;
//! loop {
//!     let got = mic.read(Some(std::time::Duration::from_secs(1)), |frame| {
//!         frame.samples::<i16>().map(|s| s.to_vec()).unwrap_or_default()
//!     })?;
//!     match got {
//!         Read::Frame(samples) => { out.write(&samples)?; }
//!         Read::TimedOut => continue,
//!         Read::EndOfStream => break,
//!     }
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use voxring_core::RingConfig;

use crate::ring::{ParticipantError, Segment, WaitError};
use crate::segment::{Access, AttachError, AttachOptions, CreateError, GroupSpec};
use crate::shared::{PlaceError, SharedObjects};

mod client;
pub mod directory;

pub use client::{Delivery, MicReader, Read, Speaker, WINDOW_FRAMES};
use directory::{AgentStats, HubInfo, Layout, MicRow, OutRow, Speech};

/// The hub name `voxring serve` uses when none is given.
pub const DEFAULT_HUB: &str = "voxring";
/// Frames in an agent's output ring.
pub const OUT_FRAMES: u32 = 32;
/// Longest agent name (it must fit the directory's 32-byte name field).
pub const MAX_AGENT_NAME: usize = 32;

/// The mic ring's segment name.
pub fn mic_name(hub: &str) -> String {
    format!("{hub}.mic")
}

/// The directory's segment name.
pub fn directory_name(hub: &str) -> String {
    format!("{hub}.hub")
}

/// An agent's output ring's segment name.
pub fn out_name(hub: &str, agent: &str) -> String {
    format!("{hub}.out.{agent}")
}

/// The `/dev/shm` file-name prefix of a hub's output rings (`voxring.<hub>.out.`).
pub fn out_file_prefix(hub: &str) -> String {
    format!("{}{hub}.out.", crate::segment::PREFIX)
}

/// Checks an agent name: 1 to 32 bytes of `[A-Za-z0-9_-]` (no dot, so the output ring's
/// name parses back unambiguously).
pub fn check_agent_name(agent: &str) -> Result<(), HubError> {
    let ok = !agent.is_empty()
        && agent.len() <= MAX_AGENT_NAME
        && agent
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(HubError::BadName(format!(
            "agent name '{agent}' is not valid: use 1 to {MAX_AGENT_NAME} letters, digits, '_' \
             or '-' (it becomes part of the ring name <hub>.out.<agent>)"
        )))
    }
}

/// Checks a hub name: a segment name without the suffixes the hub adds (`.mic`, `.hub`).
pub fn check_hub_name(hub: &str) -> Result<(), HubError> {
    crate::segment::file_name(&directory_name(hub))
        .map(|_| ())
        .map_err(|e| HubError::BadName(format!("hub name '{hub}' is not valid: {e}")))
}

/// Who a hub's segments belong to, and who may join.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// The user that must own the hub's segments; `None`: this process's effective uid.
    pub owner: Option<u32>,
    /// A hub started with `--group`: its segments are 0660 in this group, and an agent's
    /// output ring is made the same way.
    pub group: Option<GroupSpec>,
}

impl HubOptions {
    fn attach(&self) -> AttachOptions {
        AttachOptions {
            expected_owner: self.owner,
            allow_group_writable: self.group.is_some(),
            ..AttachOptions::default()
        }
    }

    fn access(&self) -> Access {
        self.group.clone().map_or(Access::OwnerOnly, Access::Group)
    }
}

/// Why a hub operation failed. Each message says what happened and what to do.
#[derive(Debug)]
pub enum HubError {
    /// No hub of that name runs (or its segments are not this user's).
    NotFound {
        /// The hub name.
        hub: String,
        /// The attach error.
        cause: AttachError,
    },
    /// The directory or a ring is not what a hub makes.
    Directory(PlaceError),
    /// A ring refused a participant (slots full, producer taken...).
    Participant(ParticipantError),
    /// An output ring could not be made.
    Create(CreateError),
    /// A wait failed (the segment was truncated or destroyed).
    Wait(WaitError),
    /// A lossless reader was evicted by the hub for lagging a whole ring behind.
    Evicted {
        /// Frames it was behind when evicted.
        lag: u64,
        /// The ring's size: the bound.
        bound: u64,
    },
    /// A frame or register read failed for another reason.
    Ring(String),
    /// An invalid hub or agent name, or sample type.
    BadName(String),
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubError::NotFound { hub, cause } => write!(
                f,
                "no hub '{hub}' to join ({cause}); start one with `voxring serve --name {hub}` \
                 as this user (or pass the hub's owner/group)"
            ),
            HubError::Directory(e) => write!(
                f,
                "the hub's directory is not valid ({e}); is the hub the same voxring version?"
            ),
            HubError::Participant(e) => write!(f, "{e}"),
            HubError::Create(e) => write!(f, "cannot make the output ring: {e}"),
            HubError::Wait(e) => write!(f, "{e}"),
            HubError::Evicted { lag, bound } => write!(
                f,
                "evicted by the hub: this reader was {lag} frames behind and the mic ring holds \
                 {bound}; read faster (keep the reading thread free of slow work), or join with \
                 Delivery::Lossy to be resynced and counted instead"
            ),
            HubError::Ring(e) => f.write_str(e),
            HubError::BadName(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for HubError {}

#[derive(Debug)]
struct HubInner {
    name: String,
    opts: HubOptions,
    dir: SharedObjects,
    layout: Layout,
    mic: Segment,
}

/// A running hub, found by name. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Hub {
    /// Finds the hub `name`: attaches its directory and its mic ring, with the owner (and
    /// group) checks of [`HubOptions`].
    pub fn find(name: &str, opts: &HubOptions) -> Result<Hub, HubError> {
        check_hub_name(name)?;
        let (plan, layout) = directory::plan().map_err(HubError::Directory)?;
        let dir = SharedObjects::attach(&directory_name(name), &opts.attach(), &plan).map_err(
            |e| match e {
                PlaceError::Attach(cause) => HubError::NotFound {
                    hub: name.to_owned(),
                    cause,
                },
                e => HubError::Directory(e),
            },
        )?;
        let mic = Segment::attach(&mic_name(name), &opts.attach()).map_err(|cause| {
            HubError::NotFound {
                hub: name.to_owned(),
                cause,
            }
        })?;
        if let Some(group) = &opts.group {
            let gid = group.resolve().map_err(HubError::Create)?;
            for (what, fd) in [("directory", dir.file().fd()), ("mic ring", mic.fd())] {
                let st = rustix::fs::fstat(fd).map_err(|e| {
                    HubError::Ring(format!("cannot check the hub's {what}: fstat: {e}"))
                })?;
                if st.st_gid != gid {
                    return Err(HubError::BadName(format!(
                        "the hub's {what} belongs to group {}, not {gid} as expected: it is not \
                         the hub shared with this group; check --group on both sides",
                        st.st_gid
                    )));
                }
            }
        }
        Ok(Hub {
            inner: Arc::new(HubInner {
                name: name.to_owned(),
                opts: opts.clone(),
                dir,
                layout,
                mic,
            }),
        })
    }

    /// The hub's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The mic ring's configuration: rate, frames per cycle, channels, format.
    pub fn config(&self) -> RingConfig {
        self.inner.mic.config()
    }

    /// The mic ring's segment.
    pub fn mic_segment(&self) -> &Segment {
        &self.inner.mic
    }

    fn reg<T: crate::shared::Resident>(
        &self,
        slot: crate::shared::Slot<T>,
    ) -> Result<&T, HubError> {
        self.inner.dir.get(slot).map_err(HubError::Directory)
    }

    /// The hub's own row.
    pub fn info(&self) -> Result<HubInfo, HubError> {
        let r = self.reg(self.inner.layout.info)?;
        r.read()
            .map_err(|e| HubError::Ring(format!("the hub's row: {e}")))
    }

    /// Speech on/off (written by a VAD agent).
    pub fn speech(&self) -> Result<Speech, HubError> {
        let r = self.reg(self.inner.layout.speech)?;
        r.read()
            .map_err(|e| HubError::Ring(format!("the speech register: {e}")))
    }

    /// Publishes speech on/off (the VAD's job; one writer at a time).
    pub fn set_speech(&self, s: Speech) -> Result<(), HubError> {
        let r = self.reg(self.inner.layout.speech)?;
        // publish_and_wake: readers blocked in a wait (C, Python, Rust) are woken.
        crate::control::ControlExt::publish_and_wake(r, s).map_err(|_| {
            HubError::Ring("another writer is writing the speech register right now".into())
        })
    }

    /// Published value `i` (0..16) and its version.
    pub fn value(&self, i: usize) -> Result<([u64; 4], u64), HubError> {
        let slot = *self.inner.layout.values.get(i).ok_or_else(|| {
            HubError::BadName(format!("value index {i}: there are {}", directory::VALUES))
        })?;
        self.reg(slot)?
            .read_versioned()
            .map_err(|e| HubError::Ring(format!("value {i}: {e}")))
    }

    /// Publishes value `i` (one writer per index, by convention).
    pub fn set_value(&self, i: usize, v: [u64; 4]) -> Result<(), HubError> {
        let slot = *self.inner.layout.values.get(i).ok_or_else(|| {
            HubError::BadName(format!("value index {i}: there are {}", directory::VALUES))
        })?;
        // publish_and_wake: as in set_speech.
        crate::control::ControlExt::publish_and_wake(self.reg(slot)?, v)
            .map_err(|_| HubError::Ring(format!("value {i} is being written by another agent")))
    }

    /// Mic consumer slot `i`'s row (hub-written), `None` out of range.
    pub fn mic_row(&self, i: usize) -> Option<MicRow> {
        let slot = *self.inner.layout.mic.get(i)?;
        self.reg(slot).ok()?.read().ok()
    }

    /// The agent's own row of mic slot `i`, `None` out of range or unreadable.
    pub fn agent_stats(&self, i: usize) -> Option<AgentStats> {
        let slot = *self.inner.layout.stats.get(i)?;
        self.reg(slot).ok()?.read().ok()
    }

    /// Output lane `i`'s row, `None` out of range.
    pub fn out_row(&self, i: usize) -> Option<OutRow> {
        let slot = *self.inner.layout.out.get(i)?;
        self.reg(slot).ok()?.read().ok()
    }

    /// Joins the mic ring as agent `agent` (the name is shown in the directory).
    pub fn join_mic(&self, agent: &str, delivery: Delivery) -> Result<MicReader, HubError> {
        check_agent_name(agent)?;
        MicReader::join(self.clone(), agent, delivery)
    }

    /// Makes this agent's output ring `<hub>.out.<agent>` in the hub's format; the hub finds
    /// it within its scan interval and mixes it into playback.
    pub fn speaker(&self, agent: &str) -> Result<Speaker, HubError> {
        check_agent_name(agent)?;
        Speaker::create(self, agent)
    }

    fn stats_slot(&self, i: usize) -> Option<crate::shared::Placed<directory::StatsReg>> {
        let slot = *self.inner.layout.stats.get(i)?;
        self.inner.dir.placed(slot).ok()
    }
}
