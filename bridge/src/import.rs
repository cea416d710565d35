//! `import`: write the frames published on a Zenoh key into a local ring, through a jitter
//! buffer ([`crate::jitter`]).
//!
//! Zenoh's callback validates each frame ([`crate::wire`]: the header, and the payload
//! against the format it announces), stamps its arrival and queues it (bounded; a full queue
//! drops and counts). The import thread feeds the jitter buffer and plays each frame into the
//! ring when it is due. The ring is created with the stream's format, from
//! [`ImportOptions::format`] at start or from the first frame; frames of another format are
//! refused and counted. The importer is the ring's producer and never waits for its consumers
//! (a full lossless ring drops the frame, counted `ring_full`).
//!
//! Lost frames are filled as [`Fill`] says: `Gap` writes nothing for them and sets the
//! discontinuity flag on the next frame (its `sample_pos` shows the gap); `Silence` writes
//! zero frames, each flagged as a discontinuity, so the ring's frame clock stays continuous.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use voxring_core::{FrameFlags, Policy, RingConfig};
use voxring_linux::cleanup::clean_segments_matching;
use voxring_linux::clock::monotonic_ns;
use voxring_linux::hub::{Hub, HubOptions, Speaker};
use voxring_linux::ring::{Segment, ShmProducer};
use voxring_linux::segment::{CreateError, CreateOptions};
use zenoh::Wait;
use zenoh::sample::{Sample, SampleKind};

use crate::jitter::{Frame, JitterBuffer, JitterStats, Play};
use crate::net::{self, Endpoints};
use crate::wire::{FrameHeader, StreamFormat};
use crate::{Event, EventSink};

/// How lost frames are filled in the local ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fill {
    /// Nothing is written for them; the next frame carries the discontinuity flag.
    #[default]
    Gap,
    /// Zero-filled frames flagged as discontinuities take their place.
    Silence,
}

/// What a test hook decides for an arriving frame (the network's faults, injected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Take it now.
    Deliver,
    /// It never arrived.
    Drop,
    /// It arrives this much later.
    Delay(Duration),
}

/// A test hook on the import side: sees each valid frame's header before the jitter buffer.
pub type ArrivalHook = Box<dyn FnMut(&FrameHeader) -> Arrival + Send>;

/// The playout delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// This many frames of the stream (the default: 3).
    Frames(u32),
    /// A fixed delay.
    Duration(Duration),
}

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The Zenoh key.
    pub key: String,
    /// The local ring to create (`/dev/shm/voxring.<name>`); with `hub`, the agent name
    /// under which the frames are played.
    pub ring: String,
    /// Play the frames through this hub (`voxring serve --name`) instead of creating a ring:
    /// the import joins it as a speaking agent named `ring` (its output ring, mixed into
    /// playback and listed in the hub's directory). The stream must have the hub's format.
    pub hub: Option<String>,
    /// Where to listen / connect.
    pub endpoints: Endpoints,
    /// Jitter buffer target.
    pub target: Target,
    /// Capacity of the local ring in frames (a power of two).
    pub ring_frames: u32,
    /// Consumer slots of the local ring.
    pub max_consumers: u16,
    /// The local ring's policy (lossy by default: the importer never waits).
    pub policy: Policy,
    /// Create the ring at start with this format instead of the first frame's.
    pub format: Option<StreamFormat>,
    /// How lost frames are filled.
    pub fill: Fill,
    /// Run the thread that plays frames out at SCHED_FIFO with this priority (1..=99): an
    /// import feeding a hub's output lane is a real-time producer, and on a loaded machine an
    /// ordinary thread is stalled for longer than the hub's queue lasts.
    pub rt_priority: Option<u8>,
}

impl ImportOptions {
    /// Defaults for `key` → `ring`: connect to the local default, 3 frames of target, a lossy
    /// ring of 64 frames with 8 consumer slots.
    pub fn new(key: &str, ring: &str) -> Self {
        ImportOptions {
            key: key.to_owned(),
            ring: ring.to_owned(),
            hub: None,
            endpoints: Endpoints {
                connect: vec![net::DEFAULT_IMPORT_CONNECT.to_owned()],
                ..Endpoints::default()
            },
            target: Target::Frames(3),
            ring_frames: 64,
            max_consumers: 8,
            policy: Policy::Lossy,
            format: None,
            fill: Fill::Gap,
            rt_priority: None,
        }
    }
}

/// The importer's counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ImportStats {
    /// The jitter buffer's counts (received, played, lost, late...) and the drift estimate.
    #[serde(flatten)]
    pub jitter: JitterStats,
    /// Samples refused: not a voxring frame, or a payload longer than its format allows.
    pub rejected: u64,
    /// Frames dropped because the import thread was behind (its queue was full).
    pub queue_full: u64,
    /// Frames of another format than the ring's: dropped.
    pub format_mismatch: u64,
    /// Frames the local ring had no room for (lossless ring with a slow consumer).
    pub ring_full: u64,
    /// Zero frames written in place of lost ones (`Fill::Silence`).
    pub filled: u64,
    /// Frames the test hook dropped.
    pub injected_drops: u64,
    /// Whether the exporter's liveliness token is present.
    pub exporter_present: bool,
}

#[derive(Debug, Default)]
struct Shared {
    rejected: AtomicU64,
    queue_full: AtomicU64,
    exporter_present: AtomicBool,
}

/// A running importer. Dropping it stops it (and removes its ring).
pub struct Importer {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    stats: Arc<Mutex<ImportStats>>,
    thread: Option<JoinHandle<()>>,
    session: zenoh::Session,
    _subs: Vec<zenoh::pubsub::Subscriber<()>>,
    _token: zenoh::liveliness::LivelinessToken,
}

impl std::fmt::Debug for Importer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Importer")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Importer {
    /// Opens the session and starts importing (creating the ring now if `opts.format` is set).
    ///
    /// # Errors
    /// Invalid key or options, the ring name in use, or Zenoh failed to open.
    pub fn start(
        opts: &ImportOptions,
        events: EventSink,
        hook: Option<ArrivalHook>,
    ) -> anyhow::Result<Self> {
        net::check_key(&opts.key)?;
        if !opts.ring_frames.is_power_of_two() {
            bail!("--ring-frames {} must be a power of two", opts.ring_frames);
        }
        let ring = match (&opts.hub, opts.format) {
            (Some(hub), _) => Some(LocalRing::join_hub(hub, &opts.ring)?),
            (None, Some(f)) => Some(LocalRing::create(opts, f)?),
            (None, None) => None,
        };
        let session = net::open(&opts.endpoints)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = sync_channel::<Frame>(4096);
        let data = {
            let (shared, events) = (shared.clone(), events.clone());
            let reasons = Mutex::new(HashSet::new());
            session
                .declare_subscriber(net::data_key(&opts.key))
                .callback(move |s| match accept(&s) {
                    Ok(f) => {
                        if let Err(TrySendError::Full(_)) = tx.try_send(f) {
                            shared.queue_full.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(why) => {
                        shared.rejected.fetch_add(1, Ordering::Relaxed);
                        let mut r = reasons.lock().unwrap_or_else(|p| p.into_inner());
                        if r.insert(why.clone()) {
                            events(Event::Rejected(why));
                        }
                    }
                })
                .wait()
                .map_err(|e| anyhow!("subscribing to {}: {e}", opts.key))?
        };
        let watch = {
            let (shared, events) = (shared.clone(), events.clone());
            session
                .liveliness()
                .declare_subscriber(net::exporter_token(&opts.key))
                .history(true)
                .callback(move |s| {
                    let present = s.kind() == SampleKind::Put;
                    // Relaxed: a flag for reports.
                    if shared.exporter_present.swap(present, Ordering::Relaxed) != present {
                        events(if present {
                            Event::ExporterJoined
                        } else {
                            Event::ExporterLeft
                        });
                    }
                })
                .wait()
                .map_err(|e| anyhow!("watching the exporter of {}: {e}", opts.key))?
        };
        // Declared after the subscriber: an exporter that sees this token finds the
        // subscription already there.
        let token = session
            .liveliness()
            .declare_token(net::importer_token(&opts.key, &session.zid().to_string()))
            .wait()
            .map_err(|e| anyhow!("declaring the importer's liveliness token: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(ImportStats::default()));
        let mut worker = Worker {
            opts: opts.clone(),
            ring,
            jb: None,
            hook,
            delayed: Vec::new(),
            stats: ImportStats::default(),
            events,
        };
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            let (promoted_tx, promoted) = sync_channel(1);
            let rt = opts.rt_priority;
            let thread = std::thread::Builder::new()
                .name("bridge-import".into())
                .spawn(move || {
                    let r = rt.map_or(Ok(()), voxring_linux::rt::set_fifo);
                    let ok = r.is_ok();
                    let _ = promoted_tx.send(r);
                    if ok {
                        worker.run(&rx, &stop, &stats);
                    }
                })?;
            match promoted.recv() {
                Ok(Ok(())) => thread,
                Ok(Err(e)) => bail!(
                    "cannot run the import's play thread at SCHED_FIFO {}: {e} (run it with \
                     CAP_SYS_NICE or a higher RLIMIT_RTPRIO, or leave out --rt-priority)",
                    rt.unwrap_or_default()
                ),
                Err(_) => bail!("the import's play thread ended before it started"),
            }
        };
        Ok(Importer {
            stop,
            shared,
            stats,
            thread: Some(thread),
            session,
            _subs: vec![data, watch],
            _token: token,
        })
    }

    /// The counters now.
    pub fn stats(&self) -> ImportStats {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.rejected = l(&self.shared.rejected);
        s.queue_full = l(&self.shared.queue_full);
        s.exporter_present = self.shared.exporter_present.load(Ordering::Relaxed);
        s
    }

    /// Stops, plays nothing more, removes the ring; returns the final counters.
    pub fn stop(mut self) -> ImportStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        // Relaxed: the flag carries no data; the thread is joined right after.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self.session.close().wait();
    }
}

impl Drop for Importer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Validates a sample from the network; the reason when it is refused.
fn accept(s: &Sample) -> Result<Frame, String> {
    let arrival_ns = monotonic_ns();
    let att = s
        .attachment()
        .ok_or("a sample without the frame header attachment")?;
    let header = FrameHeader::decode(&att.to_bytes()).map_err(|e| e.to_string())?;
    let payload = s.payload().to_bytes().into_owned();
    if payload.len() as u64 > header.format.frame_bytes() {
        return Err(format!(
            "a payload of {} bytes, more than a frame of its format holds ({})",
            payload.len(),
            header.format.frame_bytes()
        ));
    }
    Ok(Frame {
        header,
        payload,
        arrival_ns,
    })
}

/// The local ring and its producer side.
struct LocalRing {
    format: StreamFormat,
    sink: Sink,
}

/// Where the played frames go.
enum Sink {
    /// A ring of the import's own (the segment is removed when dropped).
    Ring { tx: ShmProducer, _seg: Segment },
    /// A hub's output lane.
    Hub(Speaker),
}

impl LocalRing {
    fn create(opts: &ImportOptions, format: StreamFormat) -> anyhow::Result<Self> {
        let cfg = RingConfig {
            frames: opts.ring_frames,
            samples_per_frame: format.samples_per_frame,
            channels: format.channels,
            format: format.format,
            sample_rate: format.sample_rate,
            max_consumers: opts.max_consumers,
            policy: opts.policy,
        };
        let name = &opts.ring;
        let seg = match Segment::create(name, &cfg, &CreateOptions::default()) {
            Err(CreateError::AlreadyExists { .. }) => {
                // Left by a killed importer? Removed only if no process uses it.
                let file = format!("voxring.{name}");
                let _ = clean_segments_matching(|f| f == file);
                Segment::create(name, &cfg, &CreateOptions::default()).map_err(|e| {
                    anyhow!("creating ring {name:?}: {e}; a live process uses that name, pick another --ring")
                })?
            }
            r => r.map_err(|e| anyhow!("creating ring {name:?} for the import: {e}"))?,
        };
        let tx = seg
            .producer()
            .map_err(|e| anyhow!("claiming ring {name:?}: {e:?}"))?;
        Ok(LocalRing {
            format,
            sink: Sink::Ring { tx, _seg: seg },
        })
    }

    /// Joins hub `hub` as the speaking agent `agent`; the stream must have the hub's format.
    fn join_hub(hub: &str, agent: &str) -> anyhow::Result<Self> {
        let h = Hub::find(hub, &HubOptions::default())
            .with_context(|| format!("finding hub {hub:?} to play the import through it"))?;
        let cfg = h.config();
        let speaker = h
            .speaker(agent)
            .with_context(|| format!("joining hub {hub:?} as the speaking agent {agent:?}"))?;
        Ok(LocalRing {
            format: StreamFormat {
                samples_per_frame: cfg.samples_per_frame,
                sample_rate: cfg.sample_rate,
                channels: cfg.channels,
                format: cfg.format,
            },
            sink: Sink::Hub(speaker),
        })
    }

    /// Writes one frame; false when the ring had no room.
    fn write(&mut self, h: &FrameHeader, payload: &[u8], flags: FrameFlags) -> bool {
        let tx = match &mut self.sink {
            Sink::Ring { tx, .. } => tx,
            Sink::Hub(speaker) => speaker.producer(),
        };
        let (p, waiter) = tx.parts();
        let Ok(mut g) = p.write_grant(1) else {
            return false;
        };
        let Some(mut f) = g.frame_mut(0) else {
            return false;
        };
        let dst = f.payload_mut();
        let n = payload.len().min(dst.len());
        dst[..n].copy_from_slice(&payload[..n]);
        if f.set_len(n as u32).is_err() {
            return false;
        }
        f.set_sample_pos(h.sample_pos);
        f.set_timestamp_ns(h.timestamp_ns);
        f.set_flags(flags);
        g.commit_all().wake(waiter);
        true
    }
}

struct Worker {
    opts: ImportOptions,
    ring: Option<LocalRing>,
    jb: Option<JitterBuffer>,
    hook: Option<ArrivalHook>,
    /// Frames the hook delayed: (release time, frame).
    delayed: Vec<(u64, Frame)>,
    stats: ImportStats,
    events: EventSink,
}

impl Worker {
    fn run(&mut self, rx: &Receiver<Frame>, stop: &AtomicBool, out: &Mutex<ImportStats>) {
        // Relaxed: see `Importer::shutdown`.
        while !stop.load(Ordering::Relaxed) {
            let now = monotonic_ns();
            let next = [
                self.jb.as_ref().and_then(JitterBuffer::next_due),
                self.delayed.iter().map(|d| d.0).min(),
            ]
            .into_iter()
            .flatten()
            .min();
            let wait = next.map_or(Duration::from_millis(50), |t| {
                Duration::from_nanos(t.saturating_sub(now)).min(Duration::from_millis(50))
            });
            match rx.recv_timeout(wait) {
                Ok(f) => self.arrive(f),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(f) = rx.try_recv() {
                self.arrive(f);
            }
            if let Err(e) = self.release_delayed_and_play() {
                (self.events)(Event::Failed(format!("{e:#}")));
                break;
            }
            let mut s = out.lock().unwrap_or_else(|p| p.into_inner());
            *s = self.stats.clone();
            if let Some(jb) = &self.jb {
                s.jitter = jb.stats();
            }
        }
    }

    fn arrive(&mut self, f: Frame) {
        match self
            .hook
            .as_mut()
            .map_or(Arrival::Deliver, |h| h(&f.header))
        {
            Arrival::Deliver => self.insert(f),
            Arrival::Drop => self.stats.injected_drops += 1,
            Arrival::Delay(d) => {
                let at = f.arrival_ns + d.as_nanos() as u64;
                self.delayed.push((at, f));
            }
        }
    }

    fn insert(&mut self, f: Frame) {
        if self
            .ring
            .as_ref()
            .is_some_and(|r| r.format != f.header.format)
        {
            self.stats.format_mismatch += 1;
            if self.stats.format_mismatch == 1 {
                (self.events)(Event::Rejected(format!(
                    "the stream's format {:?} differs from the {}'s ({:?}); {}",
                    f.header.format,
                    if self.opts.hub.is_some() {
                        "hub"
                    } else {
                        "ring"
                    },
                    self.ring.as_ref().map(|r| r.format),
                    if self.opts.hub.is_some() {
                        "export a ring of the hub's format (voxring serve --rate/--channels/--format/--quantum)"
                    } else {
                        "restart the import to follow it"
                    }
                )));
            }
            return;
        }
        let fmt = f.header.format;
        let target = match self.opts.target {
            Target::Frames(n) => u64::from(n) * fmt.frame_ns(),
            Target::Duration(d) => d.as_nanos() as u64,
        };
        let cap = (self.opts.ring_frames as usize).max(256) * 4;
        self.jb
            .get_or_insert_with(|| JitterBuffer::new(target, cap))
            .insert(f);
    }

    fn release_delayed_and_play(&mut self) -> anyhow::Result<()> {
        let now = monotonic_ns();
        let mut i = 0;
        while i < self.delayed.len() {
            if self.delayed[i].0 <= now {
                let (at, mut f) = self.delayed.swap_remove(i);
                f.arrival_ns = at;
                self.insert(f);
            } else {
                i += 1;
            }
        }
        let now = monotonic_ns();
        while let Some(p) = self.jb.as_mut().and_then(|jb| jb.poll(now)) {
            self.play(p)?;
        }
        Ok(())
    }

    fn play(&mut self, p: Play) -> anyhow::Result<()> {
        let h = p.frame.header;
        if self.ring.is_none() {
            self.ring = Some(LocalRing::create(&self.opts, h.format)?);
        }
        let Some(ring) = self.ring.as_mut() else {
            return Ok(());
        };
        let disc = FrameFlags::DISCONTINUITY;
        if self.opts.fill == Fill::Silence && p.lost_before > 0 {
            let n = p.lost_before.min(u64::from(self.opts.ring_frames));
            let zeros = vec![0u8; h.format.frame_bytes() as usize];
            for k in (1..=n).rev() {
                let filler = FrameHeader {
                    sample_pos: h
                        .sample_pos
                        .saturating_sub(k * u64::from(h.format.samples_per_frame)),
                    timestamp_ns: h.timestamp_ns.saturating_sub(k * h.format.frame_ns()),
                    ..h
                };
                if ring.write(&filler, &zeros, disc) {
                    self.stats.filled += 1;
                } else {
                    self.stats.ring_full += 1;
                }
            }
        }
        let flags = if p.discontinuity {
            h.flags | disc
        } else {
            h.flags
        };
        if !ring.write(&h, &p.frame.payload, flags) {
            self.stats.ring_full += 1;
        }
        Ok(())
    }
}
