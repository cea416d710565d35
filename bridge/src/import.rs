//! `import`: write the frames published on a Zenoh key into a local ring, through a jitter
//! buffer ([`crate::jitter`]).
//!
//! Zenoh's callback validates each frame ([`crate::wire`]: the header, and the payload
//! against the format it announces), stamps its arrival, copies the payload into a buffer of
//! the import's pool and queues it for the play thread (bounded; no free buffer or a full
//! queue drops and counts, `queue_full`). The play thread feeds the jitter buffer and plays
//! each frame into the ring when it is due. The ring is created with the stream's format, from
//! [`ImportOptions::format`] at start or from the first frame; frames of another format are
//! refused and counted. The importer is the ring's producer and never waits for its consumers
//! (a full lossless ring drops the frame, counted `ring_full`).
//!
//! Lost frames are filled as [`Fill`] says: `Gap` writes nothing for them and sets the
//! discontinuity flag on the next frame (its `sample_pos` shows the gap); `Silence` writes
//! zero frames, each flagged as a discontinuity, so the ring's frame clock stays continuous.
//!
//! **The play thread is a real-time loop** (`--rt-priority` runs it at SCHED_FIFO): once the
//! ring and the jitter buffer exist (set-up at start or at the first frame) it does not
//! allocate, free, lock, print or block. Frames come through a wait-free `rtrb` queue; their
//! payload buffers go back to Zenoh's side through a second one (the pool: buffers are made
//! by the callback, which may allocate, up to [`QUEUE_FRAMES`] + the jitter buffer's capacity,
//! and reused from then on). The jitter buffer is preallocated ([`crate::jitter`]). The thread
//! waits on a futex ([`Doorbell`]) with an absolute `CLOCK_MONOTONIC` deadline: the next
//! frame's due time, or [`IDLE_NS`] from now when nothing is due; the callback rings it after
//! queueing a frame, making the wake-up syscall only when the thread said it is waiting. Its
//! counters are atomics that it stores
//! once a pass and [`Importer::stats`] loads (no lock: a reader can never hold up the
//! thread). The one exception is a diagnostic: the first frame of a mismatched format formats
//! a message once. Test `the_play_loop_does_not_allocate` runs the loop's steps under
//! `assert_no_alloc`.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
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

/// Frames queued from Zenoh's callback to the play thread.
pub const QUEUE_FRAMES: usize = 4096;

/// The play thread's longest wait when no frame is due (50 ms). Arrivals and the stop flag
/// wake it at once ([`Doorbell`]); this only bounds a wait that a lost wake-up (none is known)
/// would make endless.
pub const IDLE_NS: u64 = 50_000_000;

/// How Zenoh's callback (and [`Importer::stop`]) wakes the play thread: a futex word bumped
/// after each frame queued, and a flag the thread raises before it waits, so that the callback
/// makes the wake-up syscall only when the thread may be asleep (none while it is busy).
///
/// No lost wake-up. The thread reads the word (`seen`), takes in what the queue holds, raises
/// `parked`, re-checks the queue, then waits while the word still equals `seen`; the callback
/// pushes the frame, bumps the word, then reads `parked`. The bump, the store of `parked`, the
/// load of `parked` and the load of `seen` are SeqCst: the callback's store-then-load (word,
/// then flag) and the thread's (flag, then word, in the kernel) are on different words, which
/// only a single total order makes safe. Either the callback's load of `parked` comes after
/// the thread's store in that order (it sees `true` and wakes; the kernel orders that wake
/// with the wait's check of the word under its futex lock), or it comes before, and then so
/// does the bump, which the kernel's check sees (`EAGAIN`: no sleep). A frame bumped before
/// `seen` was read is in the queue for the re-check: `seen`'s load reads from that bump, which
/// comes after the push, so the push happens before the re-check.
#[derive(Debug, Default)]
struct Doorbell {
    /// The futex word: bumped (wrapping) after each frame queued, and at stop.
    rings: AtomicU32,
    /// Raised by the play thread from just before it re-checks the queue until it woke.
    parked: AtomicBool,
}

impl Doorbell {
    /// The callback's side, after queueing a frame (or setting the stop flag). No syscall
    /// unless the play thread is parked.
    fn ring(&self) {
        // SeqCst: see the type's docs. The RMW is also a Release that pairs with the Acquire
        // of the play thread's `seen` load: the push before it is visible to the re-check.
        self.rings.fetch_add(1, Ordering::SeqCst);
        // SeqCst: pairs with the play thread's SeqCst store of `parked` (see the type's docs).
        if self.parked.load(Ordering::SeqCst) {
            // `futex(FUTEX_WAKE_PRIVATE)`: the word is in this process only. An error (none
            // is possible for a valid reference) would leave the thread to its deadline.
            let _ =
                rustix::thread::futex::wake(&self.rings, rustix::thread::futex::Flags::PRIVATE, 1);
        }
    }

    /// The play thread's side, before taking in the queue: the word to wait on.
    fn seen(&self) -> u32 {
        // SeqCst (an Acquire too): pairs with `ring`'s bump (see the type's docs).
        self.rings.load(Ordering::SeqCst)
    }

    /// Waits until the word moves from `seen`, the `CLOCK_MONOTONIC` time `deadline_ns`
    /// passes, or a signal comes (the caller re-checks everything anyway); not at all if
    /// `pending()` (the queue re-checked after announcing the wait) says there is work.
    /// `futex(FUTEX_WAIT_BITSET_PRIVATE)` with an absolute timeout: it neither drifts with the
    /// time spent before the call nor needs a clock read to compute a relative one.
    fn wait(&self, seen: u32, deadline_ns: u64, pending: impl FnOnce() -> bool) {
        // SeqCst: pairs with `ring`'s SeqCst load of `parked` (see the type's docs).
        self.parked.store(true, Ordering::SeqCst);
        if !pending() {
            let ts = rustix::thread::futex::Timespec {
                tv_sec: (deadline_ns / 1_000_000_000) as i64,
                tv_nsec: (deadline_ns % 1_000_000_000) as i64,
            };
            // EAGAIN (the word moved), ETIMEDOUT (the deadline, also one in the past), EINTR
            // (a signal): the caller's next pass re-checks; no other error is possible for a
            // valid reference and a normalised timespec.
            let _ = rustix::thread::futex::wait_bitset(
                &self.rings,
                rustix::thread::futex::Flags::PRIVATE,
                seen,
                Some(&ts),
                NonZeroU32::MAX, // FUTEX_BITSET_MATCH_ANY: any wake.
            );
        }
        // Relaxed: a stale `true` seen by `ring` costs one needless wake syscall, no more.
        self.parked.store(false, Ordering::Relaxed);
    }
}

/// The counters shared between Zenoh's callbacks, the play thread and [`Importer::stats`].
///
/// The counters' orderings are Relaxed: each is a counter (or flag) read on its own for
/// reports; no other memory is published through them ([`Doorbell`] has its own). The final read after `Importer::stop` sees the
/// last stores because joining the play thread synchronises with its end.
#[derive(Debug, Default)]
struct Shared {
    /// Written by Zenoh's data callback.
    rejected: AtomicU64,
    queue_full: AtomicU64,
    /// Written by the liveliness callback.
    exporter_present: AtomicBool,
    /// Written by the play thread once a pass ([`Worker::publish`]).
    received: AtomicU64,
    played: AtomicU64,
    lost: AtomicU64,
    late: AtomicU64,
    late_dropped: AtomicU64,
    duplicates: AtomicU64,
    overflow: AtomicU64,
    restarts: AtomicU64,
    /// `f64::to_bits` of the estimate; NaN for none.
    drift_ppm: AtomicU64,
    format_mismatch: AtomicU64,
    ring_full: AtomicU64,
    filled: AtomicU64,
    injected_drops: AtomicU64,
    /// The play thread's passes (for the tests: one per wake-up).
    passes: AtomicU64,
    /// Wakes the play thread.
    doorbell: Doorbell,
}

impl Shared {
    fn new() -> Self {
        let s = Shared::default();
        s.drift_ppm.store(f64::NAN.to_bits(), Ordering::Relaxed);
        s
    }

    /// The play thread's counters, stored (no allocation, no lock).
    fn publish(&self, s: &ImportStats, j: &JitterStats) {
        let st = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        st(&self.received, j.received);
        st(&self.played, j.played);
        st(&self.lost, j.lost);
        st(&self.late, j.late);
        st(&self.late_dropped, j.late_dropped);
        st(&self.duplicates, j.duplicates);
        st(&self.overflow, j.overflow);
        st(&self.restarts, j.restarts);
        st(&self.drift_ppm, j.drift_ppm.unwrap_or(f64::NAN).to_bits());
        st(&self.format_mismatch, s.format_mismatch);
        st(&self.ring_full, s.ring_full);
        st(&self.filled, s.filled);
        st(&self.injected_drops, s.injected_drops);
    }

    fn load(&self) -> ImportStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let drift = f64::from_bits(l(&self.drift_ppm));
        ImportStats {
            jitter: JitterStats {
                received: l(&self.received),
                played: l(&self.played),
                lost: l(&self.lost),
                late: l(&self.late),
                late_dropped: l(&self.late_dropped),
                duplicates: l(&self.duplicates),
                overflow: l(&self.overflow),
                restarts: l(&self.restarts),
                drift_ppm: (!drift.is_nan()).then_some(drift),
            },
            rejected: l(&self.rejected),
            queue_full: l(&self.queue_full),
            format_mismatch: l(&self.format_mismatch),
            ring_full: l(&self.ring_full),
            filled: l(&self.filled),
            injected_drops: l(&self.injected_drops),
            exporter_present: self.exporter_present.load(Ordering::Relaxed),
        }
    }
}

/// Zenoh's side of the queues: takes a buffer from the pool (or makes one while fewer than
/// `max` exist), copies a frame's payload into it, queues the frame. Zenoh may run the
/// callback on several threads at once, so it is behind a mutex on that side only; the play
/// thread never touches it.
struct Intake {
    frames: rtrb::Producer<Frame>,
    pool: rtrb::Consumer<Vec<u8>>,
    /// Buffers made so far (in the pool, queued, or held by the play thread).
    made: usize,
    max: usize,
}

impl Intake {
    /// Queues a validated frame; false (the frame dropped) when the queue is full or every
    /// buffer is in use. Never waits.
    fn push<'a>(
        &mut self,
        header: FrameHeader,
        payload: impl IntoIterator<Item = &'a [u8]>,
        arrival_ns: u64,
    ) -> bool {
        if self.frames.is_full() {
            return false;
        }
        let mut buf = match self.pool.pop() {
            Ok(b) => b,
            Err(_) if self.made < self.max => {
                self.made += 1;
                Vec::with_capacity(header.format.frame_bytes() as usize)
            }
            Err(_) => return false,
        };
        buf.clear();
        for s in payload {
            buf.extend_from_slice(s);
        }
        let f = Frame {
            header,
            payload: buf,
            arrival_ns,
        };
        if self.frames.push(f).is_err() {
            // Not reached: the queue had room and this is its only producer (under the lock).
            self.made -= 1;
            return false;
        }
        true
    }
}

/// The play thread's side of the queues.
struct Inbox {
    frames: rtrb::Consumer<Frame>,
    pool: rtrb::Producer<Vec<u8>>,
}

/// Gives a payload buffer back to the pool. The pool holds as many as were ever made, so it
/// is never full; were it, the buffer would be freed (not on any path that can happen).
fn recycle(pool: &mut rtrb::Producer<Vec<u8>>, buf: Vec<u8>) {
    let r = pool.push(buf);
    debug_assert!(r.is_ok(), "the buffer pool cannot be full");
}

/// The queues between Zenoh's callback and the play thread, for a jitter buffer of
/// `jb_capacity` frames.
fn queues(jb_capacity: usize) -> (Intake, Inbox) {
    let max = QUEUE_FRAMES + jb_capacity;
    let (frames_tx, frames_rx) = rtrb::RingBuffer::new(QUEUE_FRAMES);
    let (pool_tx, pool_rx) = rtrb::RingBuffer::new(max);
    (
        Intake {
            frames: frames_tx,
            pool: pool_rx,
            made: 0,
            max,
        },
        Inbox {
            frames: frames_rx,
            pool: pool_tx,
        },
    )
}

/// A running importer. Dropping it stops it (and removes its ring).
pub struct Importer {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
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
        let shared = Arc::new(Shared::new());
        let jb_capacity = (opts.ring_frames as usize).max(256) * 4;
        let (intake, inbox) = queues(jb_capacity);
        let data = {
            let (shared, events) = (shared.clone(), events.clone());
            let reasons = Mutex::new(HashSet::new());
            let intake = Mutex::new(intake);
            session
                .declare_subscriber(net::data_key(&opts.key))
                .callback(move |s| match accept(&s) {
                    Ok((header, arrival_ns)) => {
                        let mut q = intake.lock().unwrap_or_else(|p| p.into_inner());
                        if q.push(header, s.payload().slices(), arrival_ns) {
                            shared.doorbell.ring();
                        } else {
                            // Relaxed: see `Shared`.
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
        let mut worker = Worker::new(opts, ring, jb_capacity, hook, inbox, shared.clone(), events);
        let thread = {
            let stop = stop.clone();
            let (promoted_tx, promoted) = sync_channel(1);
            let rt = opts.rt_priority;
            let thread = std::thread::Builder::new()
                .name("bridge-import".into())
                .spawn(move || {
                    let r = rt.map_or(Ok(()), voxring_linux::rt::set_fifo);
                    let ok = r.is_ok();
                    let _ = promoted_tx.send(r);
                    if ok {
                        worker.run(&stop, IDLE_NS);
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
            thread: Some(thread),
            session,
            _subs: vec![data, watch],
            _token: token,
        })
    }

    /// The counters now (each read on its own: while frames flow, two of them may be from
    /// different passes of the play thread; after [`Importer::stop`] they are final).
    pub fn stats(&self) -> ImportStats {
        self.shared.load()
    }

    /// Stops, plays nothing more, removes the ring; returns the final counters.
    pub fn stop(mut self) -> ImportStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        // Relaxed: the flag carries no data; the doorbell's bump after it (a Release) makes
        // it visible to the play thread's next `seen` (an Acquire), after which it checks it.
        self.stop.store(true, Ordering::Relaxed);
        self.shared.doorbell.ring();
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

/// Validates a sample from the network: its header and arrival time, or the reason it is
/// refused. The payload is copied later, into a pooled buffer ([`Intake::push`]).
fn accept(s: &Sample) -> Result<(FrameHeader, u64), String> {
    let arrival_ns = monotonic_ns();
    let att = s
        .attachment()
        .ok_or("a sample without the frame header attachment")?;
    let header = FrameHeader::decode(&att.to_bytes()).map_err(|e| e.to_string())?;
    let len = s.payload().len();
    if len as u64 > header.format.frame_bytes() {
        return Err(format!(
            "a payload of {len} bytes, more than a frame of its format holds ({})",
            header.format.frame_bytes()
        ));
    }
    Ok((header, arrival_ns))
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

    /// Writes one frame (`None`: a frame of zeros of `h`'s format); false when the ring had no
    /// room. Real-time safe: no allocation, no lock; wakes the ring's waiting consumers (a
    /// futex wake, which does not block).
    fn write(&mut self, h: &FrameHeader, payload: Option<&[u8]>, flags: FrameFlags) -> bool {
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
        let n = match payload {
            Some(p) => {
                let n = p.len().min(dst.len());
                dst[..n].copy_from_slice(&p[..n]);
                n
            }
            None => {
                let n = (h.format.frame_bytes() as usize).min(dst.len());
                dst[..n].fill(0);
                n
            }
        };
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

/// The play thread's state. After set-up (the ring, and the jitter buffer at the first frame)
/// [`Worker::step`] neither allocates nor frees.
struct Worker {
    opts: ImportOptions,
    ring: Option<LocalRing>,
    jb: Option<JitterBuffer>,
    jb_capacity: usize,
    hook: Option<ArrivalHook>,
    /// Frames the hook delayed: (release time, frame). Allocated for every buffer of the pool
    /// when there is a hook: never grows.
    delayed: Vec<(u64, Frame)>,
    inbox: Inbox,
    /// The counters of its own (the jitter buffer keeps the others).
    stats: ImportStats,
    out: Arc<Shared>,
    events: EventSink,
}

impl Worker {
    fn new(
        opts: &ImportOptions,
        ring: Option<LocalRing>,
        jb_capacity: usize,
        hook: Option<ArrivalHook>,
        inbox: Inbox,
        out: Arc<Shared>,
        events: EventSink,
    ) -> Self {
        let delayed = if hook.is_some() {
            Vec::with_capacity(inbox.pool.buffer().capacity())
        } else {
            Vec::new()
        };
        Worker {
            opts: opts.clone(),
            ring,
            jb: None,
            jb_capacity,
            hook,
            delayed,
            inbox,
            stats: ImportStats::default(),
            out,
            events,
        }
    }

    /// The play loop until `stop`: a pass, then a wait on the doorbell until the next due time
    /// (at most `idle_ns` ahead) or the next frame queued.
    fn run(&mut self, stop: &AtomicBool, idle_ns: u64) {
        let out = self.out.clone();
        loop {
            // Read before the stop flag and the queue: a frame or a stop after this moves
            // the word and ends the wait below at once (see `Doorbell`).
            let seen = out.doorbell.seen();
            // Relaxed: see `Importer::shutdown`.
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match self.step(monotonic_ns(), idle_ns) {
                Ok(wake) => {
                    let frames = &self.inbox.frames;
                    out.doorbell.wait(seen, wake, || !frames.is_empty());
                }
                Err(e) => {
                    (self.events)(Event::Failed(format!("{e:#}")));
                    break;
                }
            }
        }
        self.publish();
    }

    /// One pass at `now` (ns, monotonic): takes in the frames that arrived, releases the
    /// delayed ones that are due, plays every frame due, publishes the counters. Returns when
    /// to wake next: the next due time, or `idle_ns` from `now` when it is later. Errs only if
    /// the ring cannot be created at the first frame.
    fn step(&mut self, now: u64, idle_ns: u64) -> anyhow::Result<u64> {
        while let Ok(f) = self.inbox.frames.pop() {
            self.arrive(f);
        }
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
        while let Some(p) = self.jb.as_mut().and_then(|jb| jb.poll(now)) {
            self.play(p)?;
        }
        self.publish();
        // Relaxed: a counter for the tests (see `Shared`).
        self.out.passes.fetch_add(1, Ordering::Relaxed);
        let mut wake = now.saturating_add(idle_ns);
        if let Some(t) = self.jb.as_ref().and_then(JitterBuffer::next_due) {
            wake = wake.min(t);
        }
        for d in &self.delayed {
            wake = wake.min(d.0);
        }
        Ok(wake)
    }

    fn publish(&self) {
        let j = self
            .jb
            .as_ref()
            .map(JitterBuffer::stats)
            .unwrap_or_default();
        self.out.publish(&self.stats, &j);
    }

    fn arrive(&mut self, f: Frame) {
        match self
            .hook
            .as_mut()
            .map_or(Arrival::Deliver, |h| h(&f.header))
        {
            Arrival::Deliver => self.insert(f),
            Arrival::Drop => {
                self.stats.injected_drops += 1;
                recycle(&mut self.inbox.pool, f.payload);
            }
            Arrival::Delay(d) => {
                let at = f.arrival_ns + d.as_nanos() as u64;
                // Within its capacity (one per buffer of the pool): no reallocation.
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
                // A diagnostic once per import (it formats a message): not the steady state.
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
            recycle(&mut self.inbox.pool, f.payload);
            return;
        }
        let jb = match &mut self.jb {
            Some(jb) => jb,
            None => {
                // Set-up, at the first frame: the target depends on its format.
                let fmt = f.header.format;
                let target = match self.opts.target {
                    Target::Frames(n) => u64::from(n) * fmt.frame_ns(),
                    Target::Duration(d) => d.as_nanos() as u64,
                };
                self.jb.insert(JitterBuffer::new(target, self.jb_capacity))
            }
        };
        let pool = &mut self.inbox.pool;
        jb.insert_or_return(f, &mut |g: Frame| recycle(pool, g.payload));
    }

    fn play(&mut self, p: Play) -> anyhow::Result<()> {
        let h = p.frame.header;
        if self.ring.is_none() {
            self.ring = Some(LocalRing::create(&self.opts, h.format)?);
        }
        let Some(ring) = self.ring.as_mut() else {
            recycle(&mut self.inbox.pool, p.frame.payload);
            return Ok(());
        };
        let disc = FrameFlags::DISCONTINUITY;
        if self.opts.fill == Fill::Silence && p.lost_before > 0 {
            let n = p.lost_before.min(u64::from(self.opts.ring_frames));
            for k in (1..=n).rev() {
                let filler = FrameHeader {
                    sample_pos: h
                        .sample_pos
                        .saturating_sub(k * u64::from(h.format.samples_per_frame)),
                    timestamp_ns: h.timestamp_ns.saturating_sub(k * h.format.frame_ns()),
                    ..h
                };
                if ring.write(&filler, None, disc) {
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
        if !ring.write(&h, Some(&p.frame.payload), flags) {
            self.stats.ring_full += 1;
        }
        recycle(&mut self.inbox.pool, p.frame.payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use voxring_core::SampleFormat;

    use super::*;

    // Aborts the test process if anything allocates or frees inside `assert_no_alloc`;
    // everywhere else it is the system allocator.
    #[global_allocator]
    static ALLOC: assert_no_alloc::AllocDisabler = assert_no_alloc::AllocDisabler;

    const MS: u64 = 1_000_000;
    const FMT: StreamFormat = StreamFormat {
        samples_per_frame: 160,
        sample_rate: 16_000,
        channels: 1,
        format: SampleFormat::S16,
    };

    fn header(seq: u64) -> FrameHeader {
        FrameHeader {
            epoch: 7,
            seq,
            sample_pos: seq * 160,
            timestamp_ns: seq * 10 * MS,
            flags: FrameFlags::NONE,
            format: FMT,
            sent_ns: 0,
        }
    }

    /// The play thread's steady state under `assert_no_alloc`: 301 frames of 10 ms arriving
    /// in swapped pairs (2, 1, 4, 3, ...), one dropped by the hook and filled with silence,
    /// one delayed past its turn (late, dropped, filled), the buffers going back to the pool,
    /// the counters published at every step, and the doorbell's wait (a futex syscall that
    /// returns at once: the word was rung after `seen` was read). Zenoh's side
    /// (`Intake::push`, which may make buffers, and `Doorbell::ring`) and the set-up at the
    /// first frame run outside.
    #[test]
    fn the_play_loop_does_not_allocate() {
        let name = format!("bridge-rt-{}", std::process::id());
        let mut opts = ImportOptions::new("test/rt", &name);
        opts.fill = Fill::Silence;
        let ring = LocalRing::create(&opts, FMT).unwrap();
        let (mut intake, inbox) = queues(64);
        let shared = Arc::new(Shared::new());
        let hook: ArrivalHook = Box::new(|h| match h.seq {
            7 => Arrival::Drop,
            12 => Arrival::Delay(Duration::from_millis(100)),
            _ => Arrival::Deliver,
        });
        let events: EventSink = Arc::new(|_| {});
        let mut w = Worker::new(
            &opts,
            Some(ring),
            64,
            Some(hook),
            inbox,
            shared.clone(),
            events,
        );
        let payload = [0x5au8; 320];
        let t0 = 1_000 * MS;
        assert!(intake.push(header(0), [&payload[..]], t0));
        w.step(t0, IDLE_NS).unwrap(); // set-up: the jitter buffer is made at the first frame
        let bell = &shared.doorbell;
        let mut wakes = 0;
        for tick in 1..=350u64 {
            let now = t0 + tick * 10 * MS;
            let seen = bell.seen();
            if tick <= 300 {
                let seq = if tick % 2 == 1 { tick + 1 } else { tick - 1 };
                assert!(intake.push(header(seq), [&payload[..]], now));
            }
            bell.ring();
            let wake = assert_no_alloc::assert_no_alloc(|| {
                let wake = w.step(now, IDLE_NS)?;
                let frames = &w.inbox.frames;
                bell.wait(seen, u64::MAX / 2, || !frames.is_empty());
                anyhow::Ok(wake)
            })
            .unwrap();
            assert!(wake > now && wake <= now + IDLE_NS);
            wakes += 1;
        }
        assert_eq!(wakes, 350);
        assert_eq!(shared.passes.load(Ordering::Relaxed), 351);
        let s = shared.load();
        let j = &s.jitter;
        assert_eq!((j.received, j.played, j.lost), (300, 299, 2));
        assert_eq!(
            (j.late, j.late_dropped, j.duplicates, j.overflow),
            (1, 1, 0, 0)
        );
        assert_eq!((s.injected_drops, s.filled, s.ring_full), (1, 2, 0));
        assert!(j.drift_ppm.is_some(), "three seconds of media: {s:?}");
        // Reused, not made per frame: a handful in flight at once.
        assert!(intake.made <= 8, "{} buffers made", intake.made);
    }

    /// The play thread is woken by the frames queued, not by a timer: with a target of an hour
    /// and an idle wait of an hour, nothing is due, yet each of three frames queued by the
    /// callback's side is taken in by exactly one more pass, and a parked thread makes no pass
    /// while nothing comes; the stop flag's ring ends the loop. A 1 ms poll would make a pass
    /// each millisecond; a lost wake-up would leave a frame unseen for an hour (the waits here
    /// give up after 10 s and fail, leaving the thread behind rather than joining it).
    #[test]
    fn a_queued_frame_wakes_the_play_thread_and_nothing_else_does() {
        const HOUR: Duration = Duration::from_secs(3600);
        let name = format!("bridge-bell-{}", std::process::id());
        let mut opts = ImportOptions::new("test/bell", &name);
        opts.target = Target::Duration(HOUR);
        let ring = LocalRing::create(&opts, FMT).unwrap();
        let (mut intake, inbox) = queues(64);
        let shared = Arc::new(Shared::new());
        let events: EventSink = Arc::new(|_| {});
        // Removes the segment even if the test fails with the thread (the ring's owner) left
        // running; the mapping outlives the name.
        struct Unlink(String);
        impl Drop for Unlink {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(format!("/dev/shm/voxring.{}", self.0));
            }
        }
        let _unlink = Unlink(name.clone());
        let mut w = Worker::new(&opts, Some(ring), 64, None, inbox, shared.clone(), events);
        let stop = Arc::new(AtomicBool::new(false));
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Polls `cond` every millisecond for up to 10 s (generous: it is met in microseconds).
        let until = |what: &str, cond: &dyn Fn() -> bool| {
            for _ in 0..10_000 {
                if cond() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            panic!("after 10 s, still not {what}: {:?}", shared.load());
        };
        let parked = || shared.doorbell.parked.load(Ordering::SeqCst);
        let (done_tx, done) = sync_channel(1);
        {
            let thread_stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                w.run(&thread_stop, HOUR.as_nanos() as u64);
                let _ = done_tx.send(());
            });
            until("parked after the first pass", &|| {
                parked() && ld(&shared.passes) == 1
            });
            let payload = [1u8; 320];
            for k in 1..=3u64 {
                assert!(intake.push(header(k - 1), [&payload[..]], monotonic_ns()));
                shared.doorbell.ring();
                until("received", &|| ld(&shared.received) == k);
                until("parked again", &parked);
                // Parked with nothing due for an hour: no pass comes by itself.
                std::thread::sleep(Duration::from_millis(20));
                assert_eq!(ld(&shared.passes), 1 + k, "one pass per frame queued");
            }
            // Relaxed: as `Importer::shutdown`, whose two steps these are.
            stop.store(true, Ordering::Relaxed);
            shared.doorbell.ring();
            assert!(
                done.recv_timeout(Duration::from_secs(10)).is_ok(),
                "the stop flag's ring did not end the wait"
            );
        }
        let s = shared.load();
        assert_eq!((s.jitter.received, s.jitter.played), (3, 0), "{s:?}");
    }
}
