//! The hub engine both `voxring serve` and `voxring run` are made of: the device, the mic ring
//! `<hub>.mic`, the directory `<hub>.hub`, the control thread's state ([`Control`]) and the
//! queues that hand output lanes to the real-time thread; [`run_audio`] runs the device on
//! its own thread while the caller's thread ticks; [`Engine::stop`] sends the end of stream
//! and removes what the hub made.
//!
//! `serve` runs it as a long-lived hub; `run` runs it as a session of a fixed length with
//! its own agents joining through the public client, and measures it through the probes of
//! [`super::rt`].

use std::time::{Duration, Instant};

use anyhow::Context as _;
use voxring_core::{FrameFlags, GrantError, Policy, RingConfig, SampleFormat};
use voxring_linux::audio::mixer::{Mix, QueueParams};
use voxring_linux::audio::{CaptureSink, Duplex, PlaybackSource, XrunCounts, monotonic_ns};
use voxring_linux::cleanup::clean_segments_matching;
use voxring_linux::hub::directory::{
    self, DIRECTORY_VERSION, HubInfo, STATE_RUNNING, STATE_STOPPED,
};
use voxring_linux::hub::{directory_name, mic_name};
use voxring_linux::ring::{Segment, ShmProducer};
use voxring_linux::segment::{Access, CreateOptions};
use voxring_linux::shared::SharedObjects;

use super::control::{Control, ControlSetup};
use super::rt::{Cmd, Returned, RtShared};
use crate::run::device::{self, DeviceRequest, OpenDevice};

/// How often the control thread ticks.
pub const TICK: Duration = Duration::from_millis(20);

/// What a hub is made of (the options of `serve`, or what `run` chose).
#[derive(Debug, Clone)]
pub struct EngineSpec<'s> {
    /// The hub's name (its segments are `voxring.<name>.*`).
    pub name: &'s str,
    /// The device and its stream (`periods` already resolved).
    pub device: DeviceRequest<'s>,
    /// The stream's sample format.
    pub format: SampleFormat,
    /// Mic readers at most.
    pub max_agents: u16,
    /// Frames in the mic ring (a power of two).
    pub mic_frames: u32,
    /// Output queues' target depth and band.
    pub params: QueueParams,
    /// `--group`: share the segments with this group.
    pub group: Option<&'s str>,
}

/// A hub, ready to run: the device, its segments and the control thread's state.
pub struct Engine<T: Mix> {
    /// The open device.
    pub dev: OpenDevice<T>,
    /// The mic ring.
    pub mic: Segment,
    /// The control thread's state.
    pub control: Control<T>,
    /// The hub's row, as last published.
    pub info: HubInfo,
    /// What the real-time thread gets: the mic's producer, the lane queues' ends.
    rt: Option<RtEnds<T>>,
}

/// The real-time thread's ends: the mic's producer, the commands in and the lanes back.
pub type RtEnds<T> = (
    ShmProducer,
    (rtrb::Consumer<Cmd<T>>, rtrb::Producer<Returned<T>>),
);

impl<T: Mix> Engine<T> {
    /// Opens the device and makes the hub's segments (a hub of that name killed with -9 left
    /// its segments: they are removed first if nobody uses them).
    pub fn open(spec: &EngineSpec<'_>, warnings: &mut Vec<String>) -> anyhow::Result<Self> {
        let dev = device::open::<T>(&spec.device, warnings)?;
        let buffer = dev.duplex.capture_granted().buffer_frames;
        anyhow::ensure!(
            buffer.is_multiple_of(dev.quantum)
                && dev
                    .duplex
                    .playback_granted()
                    .buffer_frames
                    .is_multiple_of(dev.quantum),
            "the device granted a buffer of {buffer} frames, not a multiple of its {}-frame \
             period; ask for another --quantum or --periods",
            dev.quantum
        );
        let cfg = RingConfig {
            frames: spec.mic_frames,
            samples_per_frame: dev.quantum,
            channels: dev.channels,
            format: spec.format,
            sample_rate: dev.rate,
            max_consumers: spec.max_agents,
            policy: Policy::Lossless,
        };
        let (mic, tx, (dir, layout), gid) = make_segments(spec, &cfg)?;
        let (cmd_tx, cmd_rx) = rtrb::RingBuffer::new(2 * directory::MAX_SLOTS);
        let (back_tx, back_rx) = rtrb::RingBuffer::new(2 * directory::MAX_SLOTS);
        let control = Control::<T>::new(ControlSetup {
            hub: spec.name.to_owned(),
            mic: mic.clone(),
            dir: (dir.clone(), layout),
            queues: (cmd_tx, back_rx),
            params: spec.params,
            group: gid,
        });
        let info = HubInfo {
            version: DIRECTORY_VERSION,
            pid: u64::from(std::process::id()),
            state: STATE_RUNNING,
            rate: u64::from(dev.rate),
            quantum: u64::from(dev.quantum),
            channels: u64::from(dev.channels),
            format: spec.format as u64,
            mic_frames: u64::from(spec.mic_frames),
            max_agents: u64::from(spec.max_agents),
            target_depth: u64::from(spec.params.target),
            band: u64::from(spec.params.band),
            started_ns: monotonic_ns(),
            ..HubInfo::default()
        };
        Ok(Engine {
            dev,
            mic,
            control,
            info,
            rt: Some((tx, (cmd_rx, back_tx))),
        })
    }

    /// The real-time thread's ends (once).
    pub fn take_rt(&mut self) -> Option<RtEnds<T>> {
        self.rt.take()
    }

    /// One round of the control thread (see [`tick`]).
    pub fn tick(&mut self, shared: &RtShared) {
        tick(&mut self.control, &mut self.info, shared, None);
    }

    /// Ends the hub after its device stopped and the end of stream was sent
    /// ([`end_of_stream`]): the final counters in the directory, and the output rings of
    /// agents that died removed. Returns the hub's final row.
    pub fn stop(mut self, shared: &RtShared) -> HubInfo {
        let xruns = self.dev.duplex.xruns();
        fill_counters(&mut self.info, shared, Some(xruns));
        self.info.state = STATE_STOPPED;
        self.info = self.control.tick(shared, self.info);
        let leftover = self.control.lanes_files();
        let info = self.info;
        drop(self);
        // Output rings whose agents died are removed; live agents keep theirs.
        let _ = clean_segments_matching(|f| leftover.iter().any(|l| l == f));
        info
    }
}

/// One round of the control thread: lanes found and retired, dead readers evicted, CRC
/// windows checked, the directory published with the real-time thread's counters (`xruns`:
/// the device's counts when known; the real-time thread owns the device while it runs).
pub fn tick<T: Mix>(
    control: &mut Control<T>,
    info: &mut HubInfo,
    shared: &RtShared,
    xruns: Option<XrunCounts>,
) {
    fill_counters(info, shared, xruns);
    *info = control.tick(shared, *info);
}

/// The mic ring (and its producer), the directory (and its layout) and `--group`'s gid.
type Made = (
    Segment,
    ShmProducer,
    (SharedObjects, directory::Layout),
    Option<u32>,
);

fn make_segments(spec: &EngineSpec<'_>, cfg: &RingConfig) -> anyhow::Result<Made> {
    let prefix = format!("{}{}.", voxring_linux::segment::PREFIX, spec.name);
    let _ = clean_segments_matching(|f| f.starts_with(&prefix));
    let (access, gid) = match spec.group {
        Some(g) => {
            let group = super::group_spec(g);
            let gid = group
                .resolve()
                .map_err(|e| anyhow::anyhow!("--group: {e}"))?;
            (Access::Group(group), Some(gid))
        }
        None => (Access::OwnerOnly, None),
    };
    let copts = CreateOptions {
        access,
        ..CreateOptions::default()
    };
    let mic = Segment::create(&mic_name(spec.name), cfg, &copts).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the mic ring of hub '{}': {e}. If a hub of that name runs, stop it \
             or pick another --name",
            spec.name
        )
    })?;
    let tx = mic
        .producer()
        .map_err(|e| anyhow::anyhow!("cannot claim the mic ring: {e}"))?;
    let (plan, layout) = directory::plan().map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = SharedObjects::create(&directory_name(spec.name), &copts, plan)
        .map_err(|e| anyhow::anyhow!("cannot create the hub's directory: {e}"))?;
    Ok((mic, tx, (dir, layout), gid))
}

/// Sends the end of stream to the mic's readers (waiting for room is fine here, up to 2 s);
/// false when the ring stayed full or refused it.
pub fn end_of_stream(tx: &mut ShmProducer) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (producer, waiter) = tx.parts();
        let full = match producer.write_grant(1) {
            Ok(mut g) => {
                if let Some(mut f) = g.frame_mut(0) {
                    let _ = f.set_len(0);
                    f.set_flags(FrameFlags::END_OF_STREAM);
                    f.set_timestamp_ns(monotonic_ns());
                }
                g.commit_all().wake(waiter);
                return true;
            }
            Err(e) => e == GrantError::Full,
        };
        if !full || Instant::now() >= deadline {
            return false;
        }
        let _ = tx.wait_for_space(Some(Duration::from_millis(20)));
    }
}

/// Copies the real-time thread's counters into the hub's row.
fn fill_counters(info: &mut HubInfo, shared: &RtShared, xruns: Option<XrunCounts>) {
    use std::sync::atomic::Ordering::Relaxed;
    // Relaxed: counters.
    info.cycles = shared.cycles.load(Relaxed);
    info.play_cycles = shared.play_cycles.load(Relaxed);
    info.wakes = shared.wakes.load(Relaxed);
    info.evicted_lag = shared.evicted_lag.load(Relaxed);
    info.mic_dropped = shared.mic_dropped.load(Relaxed);
    if let Some(x) = xruns {
        (info.xruns_capture, info.xruns_playback) = (x.capture, x.playback);
    }
    info.cpu_ns = voxring_linux::clock::process_cpu_ns();
}

/// How the audio thread ended.
#[derive(Debug)]
pub struct AudioEnd<S, M> {
    /// The device's error, if it failed.
    pub error: Option<String>,
    /// Its scheduling, and why SCHED_FIFO was refused.
    pub scheduling: (String, Option<String>),
    /// The device's xrun counts.
    pub xruns: XrunCounts,
    /// The two sides, back (their probes hold what was measured).
    pub sink: S,
    pub source: M,
}

/// Runs `duplex` with `sink` and `source` on a real-time thread (`rt_priority`, 0: none)
/// until `shared.stop` or `frames` frames, calling `tick` on this thread every [`TICK`]
/// meanwhile (it may request the stop).
pub fn run_audio<T, S, M>(
    duplex: &mut Duplex<T>,
    (sink, source): (S, M),
    shared: &RtShared,
    (rt_priority, frames): (u8, Option<u64>),
    mut tick: impl FnMut(),
) -> anyhow::Result<AudioEnd<S, M>>
where
    T: Mix,
    S: CaptureSink<T> + Send,
    M: PlaybackSource<T> + Send,
{
    std::thread::scope(|s| -> anyhow::Result<_> {
        let audio = std::thread::Builder::new()
            .name("voxring-audio".into())
            .spawn_scoped(s, move || {
                let (mut sink, mut source) = (sink, source);
                let scheduling = device::promote(rt_priority);
                let r = duplex.run(&mut sink, &mut source, &shared.stop, frames);
                AudioEnd {
                    error: r
                        .err()
                        .map(|e| voxring_linux::audio::AudioError::from(e).to_string()),
                    scheduling,
                    xruns: duplex.xruns(),
                    sink,
                    source,
                }
            })
            .context("cannot start the audio thread")?;
        while !audio.is_finished() {
            tick();
            std::thread::sleep(TICK);
        }
        audio
            .join()
            .map_err(|_| anyhow::anyhow!("the audio thread panicked"))
    })
}
