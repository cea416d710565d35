//! `export`: publish each committed frame of a local ring on a Zenoh key.
//!
//! Two threads. The *reader* joins the ring as a consumer and copies each frame out at once;
//! it never waits on the network, so it never holds back the ring's producer (a lossless ring
//! waits for its slowest consumer). It hands the copy to the *sender* through a bounded queue:
//! when the queue is full (the network is slower than the audio) the frame is dropped and
//! counted (`dropped_queue`). The sender publishes with congestion control `Drop`, `express`
//! and priority `RealTime`: a full Zenoh queue drops the frame rather than waiting. In a lossy
//! ring, frames the reader was lapped on are counted in `ring_lost`. The importer counts every
//! frame that does not arrive from the sequence numbers, whichever side lost it.
//!
//! A liveliness token (`KEY/exporter`) tells importers this exporter is alive; importers'
//! tokens (`KEY/importer/<id>`) are reported as they come and go.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::Serialize;
use voxring_core::{FrameRef, ReadError, RingConfig};
use voxring_linux::hub::{Delivery, Hub, HubOptions, MicReader, Read as HubRead};
use voxring_linux::ring::{FramesWait, Segment, ShmConsumer};
use voxring_linux::segment::AttachOptions;
use zenoh::Wait;
use zenoh::qos::{CongestionControl, Priority};
use zenoh::sample::SampleKind;

use crate::net::{self, Endpoints};
use crate::wire::{FrameHeader, StreamFormat};
use crate::{Event, EventSink};

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The local ring (its name in `/dev/shm/voxring.<name>`); with `hub_agent`, the name of a
    /// hub (`voxring serve --name`) whose mic ring is exported.
    pub ring: String,
    /// Export a hub's mic ring, joined as this agent: the exporter appears in the hub's
    /// directory (`voxring top`) with its lag and losses, and when it falls a whole ring
    /// behind the hub skips it ahead, counting what it skipped in `ring_lost`.
    pub hub_agent: Option<String>,
    /// The Zenoh key.
    pub key: String,
    /// Where to listen / connect.
    pub endpoints: Endpoints,
    /// Frames the reader may hand to the sender before it drops (default 64).
    pub queue_frames: usize,
    /// What the sender does when Zenoh's queue is full.
    pub congestion: Congestion,
}

/// What the sender does when Zenoh's transmit queue is full (its task is late, or the link
/// is slower than the stream).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Congestion {
    /// Drop the frame (after Zenoh's `wait_before_drop`): live audio, where a late frame is
    /// worth nothing. The importer counts the gap in `lost`; the exporter cannot see it.
    #[default]
    Drop,
    /// Wait for room: nothing is dropped on the way, the sender falls behind instead, and
    /// once `queue_frames` are waiting for it the reader drops and counts `dropped_queue`.
    /// For recording, or a test that compares bytes on a loaded machine.
    Block,
}

/// Declares the exporter's counters from one list of names: [`ExportStats`] (the snapshot, a
/// `u64` each), `Counters` (an atomic each, shared by the threads) and `Counters::snapshot`.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// The exporter's counters.
        #[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
        pub struct ExportStats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        /// [`ExportStats`] as the threads count them.
        #[derive(Debug, Default)]
        struct Counters {
            $($name: AtomicU64,)*
        }

        impl Counters {
            /// The counts now (Relaxed: see `bump`).
            fn snapshot(&self) -> ExportStats {
                ExportStats {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Frames read from the ring.
    read,
    /// Frames published.
    sent,
    /// Frames dropped because the network side was behind (the queue to the sender was full).
    dropped_queue,
    /// Lossy ring: frames the producer overwrote before the reader got to them.
    ring_lost,
    /// Frames Zenoh refused to publish (the session is closing).
    send_errors,
    /// Importers currently present.
    importers,
}

// Relaxed everywhere on the counters: they are statistics, read for reports only.
fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

struct Msg {
    header: FrameHeader,
    payload: Vec<u8>,
}

/// A running exporter. Dropping it stops it.
pub struct Exporter {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
    session: zenoh::Session,
    _token: zenoh::liveliness::LivelinessToken,
    _watch: zenoh::pubsub::Subscriber<()>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("stats", &self.stats())
            .finish()
    }
}

/// A random number, fresh for each run (the standard library seeds it from the OS).
pub(crate) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(voxring_linux::clock::monotonic_ns());
    h.finish()
}

impl Exporter {
    /// Attaches to the ring, opens the session and starts publishing.
    ///
    /// # Errors
    /// The ring is missing or full of consumers, the key is invalid, or Zenoh failed to open.
    pub fn start(opts: &ExportOptions, events: EventSink) -> anyhow::Result<Self> {
        net::check_key(&opts.key)?;
        let (source, cfg) = Source::open(opts)?;
        let format = stream_format(&cfg);
        let session = net::open(&opts.endpoints)?;
        let key = opts.key.clone();
        let publisher = session
            .declare_publisher(net::data_key(&key))
            .congestion_control(match opts.congestion {
                Congestion::Drop => CongestionControl::Drop,
                Congestion::Block => CongestionControl::Block,
            })
            .priority(Priority::RealTime)
            .express(true)
            .wait()
            .map_err(|e| anyhow!("declaring the publisher on {key}: {e}"))?;
        let counters = Arc::new(Counters::default());
        let watch = watch_importers(&session, &key, counters.clone(), events.clone())?;
        let token = session
            .liveliness()
            .declare_token(net::exporter_token(&key))
            .wait()
            .map_err(|e| anyhow!("declaring the liveliness token of {key}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rxq) = sync_channel::<Msg>(opts.queue_frames.max(1));
        let epoch = random_u64();
        let reader = {
            let (stop, counters, events) = (stop.clone(), counters.clone(), events.clone());
            let opts = opts.clone();
            std::thread::Builder::new()
                .name("bridge-export-read".into())
                .spawn(move || {
                    let mut out = Out {
                        tx: &tx,
                        epoch,
                        format,
                        counters: &counters,
                        stop: &stop,
                        events: &events,
                    };
                    reader(&opts, source, &mut out);
                })?
        };
        let sender = {
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("bridge-export-send".into())
                .spawn(move || send_loop(&rxq, &publisher, &counters))?
        };
        Ok(Exporter {
            stop,
            counters,
            threads: vec![reader, sender],
            session,
            _token: token,
            _watch: watch,
        })
    }

    /// The counters now.
    pub fn stats(&self) -> ExportStats {
        self.counters.snapshot()
    }

    /// Stops both threads and closes the session; returns the final counters.
    pub fn stop(mut self) -> ExportStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        // Relaxed: the flag carries no data; the threads are joined right after.
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = self.session.close().wait();
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn watch_importers(
    session: &zenoh::Session,
    key: &str,
    counters: Arc<Counters>,
    events: EventSink,
) -> anyhow::Result<zenoh::pubsub::Subscriber<()>> {
    let seen = Mutex::new(std::collections::HashSet::<String>::new());
    session
        .liveliness()
        .declare_subscriber(format!("{key}/importer/*"))
        .history(true)
        .callback(move |s| {
            let who = s.key_expr().to_string();
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            match s.kind() {
                SampleKind::Put if seen.insert(who.clone()) => {
                    bump(&counters.importers, 1);
                    events(Event::ImporterJoined(who));
                }
                SampleKind::Delete if seen.remove(&who) => {
                    counters.importers.fetch_sub(1, Ordering::Relaxed);
                    events(Event::ImporterLeft(who));
                }
                _ => {}
            }
        })
        .wait()
        .map_err(|e| anyhow!("watching the importers of {key}: {e}"))
}

/// Where the exported frames come from.
enum Source {
    /// A ring, joined as a plain consumer.
    Ring(Box<ShmConsumer>),
    /// A hub's mic ring, joined as a named agent.
    Hub(Box<MicReader>),
}

impl Source {
    fn open(opts: &ExportOptions) -> anyhow::Result<(Self, RingConfig)> {
        if let Some(agent) = &opts.hub_agent {
            let hub = Hub::find(&opts.ring, &HubOptions::default())
                .with_context(|| format!("finding hub {:?} to export its mic", opts.ring))?;
            let cfg = hub.config();
            let mic = hub
                .join_mic(agent, Delivery::Lossy)
                .with_context(|| format!("joining hub {:?}'s mic as agent {agent:?}", opts.ring))?;
            return Ok((Source::Hub(Box::new(mic)), cfg));
        }
        let seg = Segment::attach(&opts.ring, &AttachOptions::default()).with_context(|| {
            format!(
                "attaching to ring {:?} to export it (is its producer running as this user?)",
                opts.ring
            )
        })?;
        // A consumer slot held by a killed exporter is freed first.
        seg.evict_dead();
        let rx = seg.consumer().map_err(|e| {
            anyhow!(
                "joining ring {:?} as a consumer: {e:?}; free a consumer slot",
                opts.ring
            )
        })?;
        Ok((Source::Ring(Box::new(rx)), seg.config()))
    }

    /// Whether a producer is alive behind it (a ring left by a killed producer, or a killed
    /// hub's, reports its end at once).
    fn is_live(&mut self) -> bool {
        let rx = match self {
            Source::Ring(rx) => rx,
            Source::Hub(mic) => mic.consumer(),
        };
        !matches!(
            rx.wait_for_frames(Some(Duration::ZERO)),
            Ok(FramesWait::EndOfStream) | Err(_)
        )
    }
}

/// Why a read loop returned.
enum Ended {
    /// Asked to stop, or the sender is gone.
    Stopped,
    /// The producer is gone and every frame was read.
    ProducerGone,
}

/// The reader thread: exports the source until asked to stop; when its producer goes away,
/// waits for a live one under the same name (a restarted producer or hub) and goes on with
/// it under a new epoch, so importers start a fresh sequence instead of counting a restart
/// as loss.
fn reader(opts: &ExportOptions, mut source: Source, out: &mut Out<'_>) {
    loop {
        let ended = match source {
            Source::Ring(rx) => read_loop(*rx, out),
            Source::Hub(mic) => read_hub_loop(*mic, out),
        };
        let Some(Ended::ProducerGone) = ended else {
            return;
        };
        (out.events)(Event::ProducerGone);
        source = loop {
            if out.stopped() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
            if let Ok((mut s, cfg)) = Source::open(opts)
                && s.is_live()
            {
                out.format = stream_format(&cfg);
                out.epoch = random_u64();
                (out.events)(Event::ProducerBack);
                break s;
            }
        };
    }
}

/// The format a ring's frames are stamped with on the wire.
fn stream_format(cfg: &RingConfig) -> StreamFormat {
    StreamFormat {
        samples_per_frame: cfg.samples_per_frame,
        sample_rate: cfg.sample_rate,
        channels: cfg.channels,
        format: cfg.format,
    }
}

/// What the reader thread works with: its side of the queue to the sender, the stamp of the
/// stream it reads, the counters, the stop flag and where events go.
struct Out<'a> {
    tx: &'a SyncSender<Msg>,
    epoch: u64,
    format: StreamFormat,
    counters: &'a Counters,
    stop: &'a AtomicBool,
    events: &'a EventSink,
}

impl Out<'_> {
    /// Whether the reader was asked to stop.
    fn stopped(&self) -> bool {
        // Relaxed: see `shutdown`.
        self.stop.load(Ordering::Relaxed)
    }

    /// Reports that reading failed (`what` went wrong); the read loop returns what this
    /// returns.
    fn failed(&self, what: String) -> Option<Ended> {
        (self.events)(Event::Failed(what));
        None
    }

    /// The copy of one frame, stamped for the wire.
    fn msg(&self, f: &FrameRef<'_>) -> Msg {
        let m = f.meta();
        Msg {
            header: FrameHeader {
                epoch: self.epoch,
                seq: m.seq,
                sample_pos: m.sample_pos,
                timestamp_ns: m.timestamp_ns,
                flags: m.flags,
                format: self.format,
                sent_ns: 0,
            },
            payload: f.payload().to_vec(),
        }
    }

    /// Hands the copies to the sender without waiting: a full queue drops (counted). False
    /// when the sender is gone.
    fn send(&self, batch: impl Iterator<Item = Msg>) -> bool {
        for m in batch {
            bump(&self.counters.read, 1);
            match self.tx.try_send(m) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => bump(&self.counters.dropped_queue, 1),
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        true
    }
}

/// Reads frames as they are committed and hands copies to the sender; never blocks on it.
/// `None`: it failed (reported).
fn read_loop(mut rx: ShmConsumer, out: &Out<'_>) -> Option<Ended> {
    let mut batch: Vec<Msg> = Vec::with_capacity(16);
    while !out.stopped() {
        match rx.wait_for_frames(Some(Duration::from_millis(100))) {
            Ok(FramesWait::Ready) => {}
            Ok(FramesWait::TimedOut) => continue,
            Ok(FramesWait::EndOfStream) => return Some(Ended::ProducerGone),
            Err(e) => return out.failed(format!("waiting on the exported ring: {e}")),
        }
        let (consumer, waiter) = rx.parts();
        let grant = match consumer.read_grant(16) {
            Ok(g) => g,
            Err(ReadError::Empty) => continue,
            Err(ReadError::Lost { frames }) => {
                bump(&out.counters.ring_lost, frames);
                continue;
            }
            Err(e) => return out.failed(format!("reading the exported ring: {e}")),
        };
        batch.extend(grant.frames().map(|f| out.msg(&f)));
        match grant.release_all() {
            Ok(wake) => wake.wake(waiter),
            Err(_) => {
                // Lossy ring: overwritten while copied. The copies are torn: drop them.
                bump(&out.counters.ring_lost, batch.len() as u64);
                batch.clear();
                continue;
            }
        }
        if !out.send(batch.drain(..)) {
            return Some(Ended::Stopped);
        }
    }
    Some(Ended::Stopped)
}

/// [`read_loop`] for a hub's mic: one frame at a time through the hub client, which keeps
/// this agent's row in the directory and rejoins (counting the skipped frames) on eviction.
fn read_hub_loop(mut mic: MicReader, out: &Out<'_>) -> Option<Ended> {
    let mut lost = 0;
    while !out.stopped() {
        let got = match mic.read(Some(Duration::from_millis(100)), |f| out.msg(f)) {
            Ok(HubRead::Frame(m)) => Some(m),
            Ok(HubRead::TimedOut) => None,
            Ok(HubRead::EndOfStream) => return Some(Ended::ProducerGone),
            Err(e) => return out.failed(format!("reading the hub's mic: {e}")),
        };
        let now_lost = mic.stats().lost;
        bump(&out.counters.ring_lost, now_lost - lost);
        lost = now_lost;
        if !out.send(got.into_iter()) {
            return Some(Ended::Stopped);
        }
    }
    Some(Ended::Stopped)
}

fn send_loop(rx: &Receiver<Msg>, publisher: &zenoh::pubsub::Publisher<'_>, counters: &Counters) {
    while let Ok(mut m) = rx.recv() {
        m.header.sent_ns = voxring_linux::clock::monotonic_ns();
        match publisher
            .put(m.payload)
            .attachment(m.header.encode().to_vec())
            .wait()
        {
            Ok(()) => bump(&counters.sent, 1),
            Err(_) => bump(&counters.send_errors, 1),
        }
    }
}
