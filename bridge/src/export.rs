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
use voxring_core::ReadError;
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
    /// The local ring (its name in `/dev/shm/voxring.<name>`).
    pub ring: String,
    /// The Zenoh key.
    pub key: String,
    /// Where to listen / connect.
    pub endpoints: Endpoints,
    /// Frames the reader may hand to the sender before it drops (default 64).
    pub queue_frames: usize,
}

/// The exporter's counters.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ExportStats {
    /// Frames read from the ring.
    pub read: u64,
    /// Frames published.
    pub sent: u64,
    /// Frames dropped because the network side was behind (the queue to the sender was full).
    pub dropped_queue: u64,
    /// Lossy ring: frames the producer overwrote before the reader got to them.
    pub ring_lost: u64,
    /// Frames Zenoh refused to publish (the session is closing).
    pub send_errors: u64,
    /// Importers currently present.
    pub importers: u64,
}

#[derive(Debug, Default)]
struct Counters {
    read: AtomicU64,
    sent: AtomicU64,
    dropped_queue: AtomicU64,
    ring_lost: AtomicU64,
    send_errors: AtomicU64,
    importers: AtomicU64,
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
        let cfg = seg.config();
        let format = StreamFormat {
            samples_per_frame: cfg.samples_per_frame,
            sample_rate: cfg.sample_rate,
            channels: cfg.channels,
            format: cfg.format,
        };
        let session = net::open(&opts.endpoints)?;
        let key = opts.key.clone();
        let publisher = session
            .declare_publisher(net::data_key(&key))
            .congestion_control(CongestionControl::Drop)
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
            std::thread::Builder::new()
                .name("bridge-export-read".into())
                .spawn(move || {
                    read_loop(rx, &tx, epoch, format, &stop, &counters, &events);
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
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ExportStats {
            read: l(&c.read),
            sent: l(&c.sent),
            dropped_queue: l(&c.dropped_queue),
            ring_lost: l(&c.ring_lost),
            send_errors: l(&c.send_errors),
            importers: l(&c.importers),
        }
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

/// Reads frames as they are committed and hands copies to the sender; never blocks on it.
fn read_loop(
    mut rx: ShmConsumer,
    tx: &SyncSender<Msg>,
    epoch: u64,
    format: StreamFormat,
    stop: &AtomicBool,
    counters: &Counters,
    events: &EventSink,
) {
    let mut batch: Vec<Msg> = Vec::with_capacity(16);
    let mut producer_gone = false;
    // Relaxed: see `shutdown`.
    while !stop.load(Ordering::Relaxed) {
        match rx.wait_for_frames(Some(Duration::from_millis(100))) {
            Ok(FramesWait::Ready) => producer_gone = false,
            Ok(FramesWait::TimedOut) => continue,
            Ok(FramesWait::EndOfStream) => {
                if !producer_gone {
                    events(Event::ProducerGone);
                    producer_gone = true;
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => {
                events(Event::Failed(format!("waiting on the exported ring: {e}")));
                return;
            }
        }
        let (consumer, waiter) = rx.parts();
        let grant = match consumer.read_grant(16) {
            Ok(g) => g,
            Err(ReadError::Empty) => continue,
            Err(ReadError::Lost { frames }) => {
                bump(&counters.ring_lost, frames);
                continue;
            }
            Err(e) => {
                events(Event::Failed(format!("reading the exported ring: {e}")));
                return;
            }
        };
        for f in grant.frames() {
            let m = f.meta();
            batch.push(Msg {
                header: FrameHeader {
                    epoch,
                    seq: m.seq,
                    sample_pos: m.sample_pos,
                    timestamp_ns: m.timestamp_ns,
                    flags: m.flags,
                    format,
                    sent_ns: 0,
                },
                payload: f.payload().to_vec(),
            });
        }
        match grant.release_all() {
            Ok(wake) => wake.wake(waiter),
            Err(_) => {
                // Lossy ring: overwritten while copied. The copies are torn: drop them.
                bump(&counters.ring_lost, batch.len() as u64);
                batch.clear();
                continue;
            }
        }
        bump(&counters.read, batch.len() as u64);
        for m in batch.drain(..) {
            match tx.try_send(m) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => bump(&counters.dropped_queue, 1),
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
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
