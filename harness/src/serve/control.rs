//! The hub's control thread (the main thread of `voxring serve`): everything that may
//! allocate, lock or make syscalls, every 20 ms.
//!
//! - **Discovery** of output rings: a checked scan of `/dev/shm` for `voxring.<hub>.out.*`.
//!   Each candidate is untrusted input: its name must be a valid agent name, the file must
//!   pass the segment checks (a regular file, not a symlink, owned by this user, or with
//!   `--group` by any user but in the hub's group, exactly the size its header says), and its
//!   ring must have the hub's rate, frame size, channels and format. A refused name is
//!   counted and not looked at again while it exists.
//! - **Liveness**: every 50 ms dead mic readers are evicted (their liveness lock is gone);
//!   an output whose producer died or left is taken off the mix, and a dead one's segment is
//!   removed (nobody holds it any more).
//! - **CRC checks**: each agent publishes CRC-32 windows of what it read; they are checked
//!   against the hub's record of what it committed ([`super::rt::FrameLog`]).
//! - **The directory**: the hub's row, every mic slot's row and every lane's row.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

use voxring_core::RingConfig;
use voxring_linux::audio::mixer::{LaneCounters, LaneState, Mix, OutputQueue, QueueParams};
use voxring_linux::cleanup::clean_segments_matching;
use voxring_linux::hub::directory::{
    HubInfo, Layout, MAX_SLOTS, MIC_JOINED, MicRow, OutRow, SLOT_FREE, pack_name,
};
use voxring_linux::hub::{check_agent_name, out_file_prefix};
use voxring_linux::liveness::pid_of;
use voxring_linux::ring::{PeerState, Segment};
use voxring_linux::segment::{AttachOptions, SHM_DIR, is_temporary_name};
use voxring_linux::shared::SharedObjects;

use super::rt::{Cmd, Returned, RtShared};

/// The longest CRC window checked, in frames (the clients' windows are 256).
const MAX_CHECKED_WINDOW: u64 = 4 * voxring_linux::hub::WINDOW_FRAMES;

/// How often dead participants are looked for.
const LIVENESS_EVERY_MS: u128 = 50;

/// The control thread's view of one output lane.
#[derive(Debug)]
struct Lane {
    agent: String,
    file: String,
    seg: Segment,
    seen_alive: bool,
    pid: u64,
    /// Sent `Remove`; waiting for the queue to come back.
    leaving: bool,
    dead: bool,
}

/// Per mic slot: what the control thread remembers.
#[derive(Debug, Clone, Copy, Default)]
struct SlotState {
    token: u64,
    max_lag: u64,
    windows_seen: u64,
    crc_ok: u64,
    crc_bad: u64,
    crc_unknown: u64,
}

/// The control thread's state.
pub struct Control<T> {
    hub: String,
    mic: Segment,
    mic_cfg: RingConfig,
    dir: SharedObjects,
    layout: Layout,
    cmds: rtrb::Producer<Cmd<T>>,
    back: rtrb::Consumer<Returned<T>>,
    params: QueueParams,
    /// `--group`: its gid.
    group: Option<u32>,
    lanes: Vec<Option<Lane>>,
    refused: HashSet<String>,
    slots: Vec<SlotState>,
    /// Token of the last occupant of each slot (its final CRC window may come after it left).
    last_token: HashMap<usize, u64>,
    frame_bytes: usize,
    last_liveness: Instant,
    /// Totals for the hub's row.
    pub evicted_dead: u64,
    /// See [`HubInfo::lanes_refused`].
    pub lanes_refused: u64,
    /// Why lanes were refused (for the log; one line per name).
    pub refusals: Vec<String>,
    /// Lanes that left, with their final counters (for the final report).
    retired: Vec<serde_json::Value>,
}

/// One lane's counters for the final report.
fn lane_json(agent: &str, c: &LaneCounters, how: &str) -> serde_json::Value {
    serde_json::json!({
        "name": agent,
        "end": how,
        "mixed": c.mixed,
        "dropped": c.dropped,
        "repeated": c.repeated,
        "gaps": c.gaps,
        "trimmed": c.trimmed,
        "primes": c.primes,
    })
}

/// How the control thread is set up.
pub struct ControlSetup<T> {
    /// The hub's name.
    pub hub: String,
    /// The mic ring.
    pub mic: Segment,
    /// The directory and where its rows are.
    pub dir: (SharedObjects, Layout),
    /// Commands to the real-time thread, and lanes coming back.
    pub queues: (rtrb::Producer<Cmd<T>>, rtrb::Consumer<Returned<T>>),
    /// Output queues' target and band.
    pub params: QueueParams,
    /// `--group`'s gid.
    pub group: Option<u32>,
}

impl<T: Mix> Control<T> {
    /// The control thread's state, before the real-time thread starts.
    pub fn new(s: ControlSetup<T>) -> Self {
        let mic_cfg = s.mic.config();
        Control {
            hub: s.hub,
            frame_bytes: mic_cfg.samples_per_frame as usize
                * usize::from(mic_cfg.channels)
                * mic_cfg.format.bytes() as usize,
            mic: s.mic,
            mic_cfg,
            dir: s.dir.0,
            layout: s.dir.1,
            cmds: s.queues.0,
            back: s.queues.1,
            params: s.params,
            group: s.group,
            lanes: (0..MAX_SLOTS).map(|_| None).collect(),
            refused: HashSet::new(),
            slots: vec![SlotState::default(); MAX_SLOTS],
            last_token: HashMap::new(),
            last_liveness: Instant::now(),
            evicted_dead: 0,
            lanes_refused: 0,
            refusals: Vec::new(),
            retired: Vec::new(),
        }
    }

    /// One round: lanes back, liveness, discovery, CRC checks, the directory. Returns the
    /// hub's row as published (with the control thread's own counters filled in).
    pub fn tick(&mut self, shared: &RtShared, info: HubInfo) -> HubInfo {
        self.take_back();
        if self.last_liveness.elapsed().as_millis() >= LIVENESS_EVERY_MS {
            self.last_liveness = Instant::now();
            self.evicted_dead += u64::from(self.mic.evict_dead().consumers);
            self.check_lanes();
        }
        self.discover();
        self.publish(shared, info)
    }

    /// Drops lanes the real-time thread handed back; removes a dead producer's segment.
    fn take_back(&mut self) {
        while let Ok((i, q)) = self.back.pop() {
            let counters = q.counters();
            drop(q);
            let Some(lane) = self.lanes.get_mut(i).and_then(Option::take) else {
                continue;
            };
            let Lane {
                agent,
                file,
                seg,
                dead,
                ..
            } = lane;
            let how = if dead {
                "died"
            } else if counters.state == LaneState::Failed {
                "its ring failed"
            } else {
                "left"
            };
            self.retired.push(lane_json(&agent, &counters, how));
            drop(seg);
            if dead {
                // Nobody holds it now (its producer is dead, we let go): remove it. A live
                // holder (it was not dead after all) keeps it: clean-up never removes those.
                let _ = clean_segments_matching(|f| f == file);
            }
        }
    }

    /// Takes outputs whose producer died or left off the mix.
    fn check_lanes(&mut self) {
        for (i, slot) in self.lanes.iter_mut().enumerate() {
            let Some(lane) = slot.as_mut() else { continue };
            if lane.leaving {
                continue;
            }
            let state = lane.seg.producer_state();
            if state == PeerState::Alive {
                lane.seen_alive = true;
                if let Some(o) = lane.seg.ring().producer_owner() {
                    lane.pid = u64::from(pid_of(o));
                }
                continue;
            }
            if state == PeerState::Dead || lane.seen_alive {
                lane.dead = state == PeerState::Dead;
                if lane.dead {
                    self.evicted_dead += 1;
                }
                lane.leaving = self.cmds.push(Cmd::Remove(i)).is_ok();
            }
        }
    }

    /// Scans `/dev/shm` for new output rings of this hub.
    fn discover(&mut self) {
        let prefix = out_file_prefix(&self.hub);
        let Ok(dir) = std::fs::read_dir(SHM_DIR) else {
            return;
        };
        let mut present = HashSet::new();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(file) = name.to_str() else { continue };
            let Some(agent) = file.strip_prefix(&prefix) else {
                continue;
            };
            if is_temporary_name(&name) {
                continue;
            }
            present.insert(file.to_owned());
            if self.refused.contains(file) || self.lanes.iter().flatten().any(|l| l.file == file) {
                continue;
            }
            if let Err(why) = self.admit(agent, file) {
                self.lanes_refused += 1;
                self.refusals
                    .push(format!("output ring {file} refused: {why}"));
                self.refused.insert(file.to_owned());
            }
        }
        // A refused name that went away may come back as a good one.
        self.refused.retain(|f| present.contains(f));
    }

    /// Checks one candidate and sends it to the real-time thread.
    fn admit(&mut self, agent: &str, file: &str) -> Result<(), String> {
        check_agent_name(agent).map_err(|e| e.to_string())?;
        let name = file
            .strip_prefix(voxring_linux::segment::PREFIX)
            .unwrap_or(file);
        let mut opts = AttachOptions::default();
        if let Some(gid) = self.group {
            // Any member of the group may speak: the file must be in the hub's group; its
            // owner is checked on the opened descriptor by `attach`.
            let md = std::fs::symlink_metadata(format!("{SHM_DIR}/{file}"))
                .map_err(|e| e.to_string())?;
            if md.gid() != gid {
                return Err(format!(
                    "its group is {}, not the hub's group {gid}: make it with the hub's --group",
                    md.gid()
                ));
            }
            opts.expected_owner = Some(md.uid());
            opts.allow_group_writable = true;
        }
        let seg = Segment::attach(name, &opts).map_err(|e| e.to_string())?;
        let c = seg.config();
        let m = self.mic_cfg;
        if (c.sample_rate, c.samples_per_frame, c.channels, c.format)
            != (m.sample_rate, m.samples_per_frame, m.channels, m.format)
        {
            return Err(format!(
                "it streams {} Hz, {} frames per slot, {} channels, {:?}; the hub streams {} Hz, \
                 {}, {}, {:?}: make it with the hub's format (Hub::speaker does)",
                c.sample_rate,
                c.samples_per_frame,
                c.channels,
                c.format,
                m.sample_rate,
                m.samples_per_frame,
                m.channels,
                m.format
            ));
        }
        self.params.check(c.frames)?;
        let free = self
            .lanes
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| format!("all {MAX_SLOTS} output lanes are in use"))?;
        let mut rx = seg.consumer().map_err(|e| e.to_string())?;
        rx.set_spin(std::time::Duration::ZERO);
        let samples = m.samples_per_frame as usize * usize::from(m.channels);
        let q = Box::new(OutputQueue::new(rx, self.params, samples));
        if self.cmds.push(Cmd::Add(free, q)).is_err() {
            return Err("the real-time thread's command queue is full".to_owned());
        }
        self.lanes[free] = Some(Lane {
            agent: agent.to_owned(),
            file: file.to_owned(),
            seen_alive: seg.producer_state() == PeerState::Alive,
            pid: seg
                .ring()
                .producer_owner()
                .map_or(0, |o| u64::from(pid_of(o))),
            seg,
            leaving: false,
            dead: false,
        });
        Ok(())
    }

    /// Checks one claimed CRC window against the hub's frame log.
    fn check_window(&self, shared: &RtShared, seq: u64, frames: u64, crc: u64) -> Option<bool> {
        // An agent's claim is input: a window longer than the clients make (256 frames) is
        // not checked, so a hostile row cannot make this thread combine 65536 CRCs a round.
        if frames == 0 || frames > MAX_CHECKED_WINDOW {
            return None;
        }
        let mut acc = crc32fast::Hasher::new();
        for s in seq..seq.checked_add(frames)? {
            let c = shared.log.get(s)?;
            acc.combine(&crc32fast::Hasher::new_with_initial_len(
                c,
                self.frame_bytes as u64,
            ));
        }
        Some(u64::from(acc.finalize()) == crc)
    }

    /// Writes every row of the directory.
    fn publish(&mut self, shared: &RtShared, mut info: HubInfo) -> HubInfo {
        let ring = self.mic.ring();
        let wpos = ring.write_pos();
        for i in 0..usize::from(self.mic_cfg.max_consumers).min(MAX_SLOTS) {
            let token = ring.consumer_owner(i as u16);
            let st = &mut self.slots[i];
            if let Some(t) = token
                && t != st.token
            {
                *st = SlotState {
                    token: t,
                    ..SlotState::default()
                };
                self.last_token.insert(i, t);
            }
            let lag = ring
                .consumer_read_pos(i as u16)
                .map_or(0, |r| wpos.saturating_sub(r));
            st.max_lag = st.max_lag.max(lag);
            // The agent's own row: check a new CRC window it claims (its last one may come
            // after it left, under its last token).
            let stats = self
                .dir
                .get(self.layout.stats[i])
                .ok()
                .and_then(|r| r.read().ok());
            if let Some(a) = stats
                && a.windows != st.windows_seen
                && self.last_token.get(&i) == Some(&a.token)
            {
                let verdict =
                    self.check_window(shared, a.window_seq, a.window_frames, a.window_crc);
                let st = &mut self.slots[i];
                // Windows published between two rounds were overwritten unseen: not checked.
                st.crc_unknown += a.windows.saturating_sub(st.windows_seen).saturating_sub(1);
                st.windows_seen = a.windows;
                match verdict {
                    Some(true) => st.crc_ok += 1,
                    Some(false) => st.crc_bad += 1,
                    None => st.crc_unknown += 1,
                }
            }
            let st = self.slots[i];
            let row = MicRow {
                state: if token.is_some() {
                    MIC_JOINED
                } else {
                    SLOT_FREE
                },
                token: token.unwrap_or(st.token),
                pid: token.map_or(0, |t| u64::from(pid_of(t))),
                lag,
                max_lag: st.max_lag,
                // Relaxed: a counter.
                evicted_lag: shared.slot_evicted[i].load(Ordering::Relaxed),
                crc_ok: st.crc_ok,
                crc_bad: st.crc_bad,
                crc_unknown: st.crc_unknown,
            };
            if let Ok(r) = self.dir.get(self.layout.mic[i]) {
                let _ = r.write(row);
            }
        }
        let mut active = 0;
        for (i, lane) in self.lanes.iter().enumerate() {
            let a = &shared.lanes[i];
            // Relaxed: counters.
            let load = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
            let row = match lane {
                Some(l) => {
                    active += 1;
                    OutRow {
                        state: load(&a.state).min(2),
                        name: pack_name(&l.agent),
                        pid: l.pid,
                        depth: load(&a.depth),
                        mixed: load(&a.mixed),
                        dropped: load(&a.dropped),
                        repeated: load(&a.repeated),
                        gaps: load(&a.gaps),
                        primes: load(&a.primes),
                        trimmed: load(&a.trimmed),
                    }
                }
                None => OutRow::default(),
            };
            if let Ok(r) = self.dir.get(self.layout.out[i]) {
                let _ = r.write(row);
            }
        }
        info.lanes = active;
        info.evicted_dead = self.evicted_dead;
        info.lanes_refused = self.lanes_refused;
        if let Ok(r) = self.dir.get(self.layout.info) {
            let _ = r.write(info);
        }
        info
    }

    /// Every lane of the run with its final counters: those that left, then `playing` (the
    /// real-time side's lanes at the end, by index).
    pub fn lanes_report(&self, playing: &[(usize, LaneCounters)]) -> Vec<serde_json::Value> {
        let mut out = self.retired.clone();
        for (i, c) in playing {
            if let Some(Some(l)) = self.lanes.get(*i) {
                out.push(lane_json(&l.agent, c, "playing at the end"));
            }
        }
        out
    }

    /// The hub's name.
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// Output lanes being mixed (found, not leaving, not dead).
    pub fn lanes_live(&self) -> usize {
        self.lanes
            .iter()
            .flatten()
            .filter(|l| !l.leaving && !l.dead)
            .count()
    }

    /// The output rings' file names still in use at the end (after the real-time thread
    /// ended, its lanes are dropped with the `MixSource`).
    pub fn lanes_files(&self) -> Vec<String> {
        self.lanes
            .iter()
            .flatten()
            .map(|l| l.file.clone())
            .collect()
    }
}
