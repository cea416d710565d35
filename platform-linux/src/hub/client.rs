//! [`MicReader`] (a consumer of the hub's mic ring that keeps its own counters and CRC
//! windows in the directory) and [`Speaker`] (an agent's output ring).

use std::time::Duration;

use voxring_core::{FrameFlags, FrameRef, Policy, ReadError, RingConfig};

use super::directory::{AgentStats, StatsReg, pack_name};
use super::{Hub, HubError, OUT_FRAMES, out_name};
use crate::clock::{monotonic_ns, process_cpu_ns};
use crate::ring::{FramesWait, Segment, ShmConsumer, ShmProducer};
use crate::segment::CreateOptions;
use crate::shared::Placed;

/// Frames per CRC window an agent publishes for the hub to check.
pub const WINDOW_FRAMES: u64 = 256;
/// How often (in frames) a reader refreshes its row.
const PUBLISH_EVERY: u64 = 32;

/// What a reader does when the hub evicts it for falling a whole ring behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Rejoin at once at the newest frame and count the frames skipped (exactly) as lost.
    #[default]
    Lossy,
    /// Return [`HubError::Evicted`]: the reader must not miss a frame silently.
    Lossless,
}

/// What [`MicReader::read`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read<R> {
    /// A frame, and what the callback returned for it.
    Frame(R),
    /// No frame within the timeout.
    TimedOut,
    /// The hub stopped (it sent the end of stream, or its process is gone) and every frame
    /// was read.
    EndOfStream,
}

/// A log2 histogram of hand-off times: p50 and max without allocating.
#[derive(Debug, Clone)]
struct Log2Hist {
    buckets: [u64; 48],
    n: u64,
    max: u64,
}

impl Default for Log2Hist {
    fn default() -> Self {
        Log2Hist {
            buckets: [0; 48],
            n: 0,
            max: 0,
        }
    }
}

impl Log2Hist {
    fn record(&mut self, ns: u64) {
        let b = (64 - ns.leading_zeros()) as usize;
        self.buckets[b.min(47)] += 1;
        self.n += 1;
        self.max = self.max.max(ns);
    }
    /// The upper edge of the bucket holding the median.
    fn p50(&self) -> u64 {
        let mut seen = 0;
        for (b, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen * 2 >= self.n && self.n > 0 {
                return 1u64 << b;
            }
        }
        0
    }
}

/// One step of [`MicReader::read`].
enum Step<R> {
    Got(R),
    EndOfStream,
    Again,
    Lost(u64),
    Evicted,
}

/// A consumer of the hub's mic ring. See [`super`] for the policy.
#[derive(Debug)]
pub struct MicReader {
    hub: Hub,
    rx: ShmConsumer,
    index: u16,
    delivery: Delivery,
    name: [u64; 4],
    period_ns: u64,
    row: Option<Placed<StatsReg>>,
    stats: AgentStats,
    window_start: u64,
    window_n: u64,
    window_crc: crc32fast::Hasher,
    hist: Log2Hist,
    joined_ns: u64,
    cpu0: u64,
    published: u64,
}

impl MicReader {
    pub(super) fn join(hub: Hub, agent: &str, delivery: Delivery) -> Result<Self, HubError> {
        let rx = hub
            .mic_segment()
            .consumer()
            .map_err(HubError::Participant)?;
        let cfg = hub.config();
        let period_ns =
            u64::from(cfg.samples_per_frame) * 1_000_000_000 / u64::from(cfg.sample_rate.max(1));
        let mut r = MicReader {
            row: None,
            rx,
            index: 0,
            delivery,
            name: pack_name(agent),
            period_ns,
            stats: AgentStats::default(),
            window_start: 0,
            window_n: 0,
            window_crc: crc32fast::Hasher::new(),
            hist: Log2Hist::default(),
            joined_ns: monotonic_ns(),
            cpu0: process_cpu_ns(),
            published: 0,
            hub,
        };
        r.claim_row();
        Ok(r)
    }

    /// Takes the directory row of this reader's mic slot and marks it with its token.
    fn claim_row(&mut self) {
        self.index = self.rx.consumer().index();
        self.row = self.hub.stats_slot(usize::from(self.index));
        self.stats.token = self.rx.owner_token();
        self.stats.name = self.name;
        self.window_n = 0;
        self.window_crc = crc32fast::Hasher::new();
        self.publish();
    }

    /// This reader's slot in the mic ring (its rows in the directory). It changes only when
    /// a lossy reader rejoins after an eviction.
    pub fn slot(&self) -> u16 {
        self.index
    }

    /// The ring's configuration (the hub's stream format).
    pub fn config(&self) -> RingConfig {
        self.hub.config()
    }

    /// What this reader counted so far (also in its directory row).
    pub fn stats(&self) -> AgentStats {
        self.stats
    }

    /// The underlying consumer (for zero-copy reads with core's grants).
    pub fn consumer(&mut self) -> &mut ShmConsumer {
        &mut self.rx
    }

    /// Publishes this reader's counters in its row now.
    pub fn publish(&mut self) {
        let now = monotonic_ns();
        self.stats.cpu_ns = process_cpu_ns().saturating_sub(self.cpu0);
        self.stats.wall_ns = now.saturating_sub(self.joined_ns);
        self.stats.wake_p50_ns = self.hist.p50();
        self.stats.wake_max_ns = self.hist.max;
        if let Some(row) = &self.row {
            // A failed write (another writer in this row: a reader that was evicted and has
            // not noticed yet) leaves the old value; the next publish tries again.
            let _ = row.write(self.stats);
        }
        self.published = self.stats.frames;
    }

    /// Closes the current CRC window (however short) and publishes this reader's row: call
    /// it before leaving when the hub should check everything read.
    pub fn flush(&mut self) {
        self.close_window();
        self.publish();
    }

    fn close_window(&mut self) {
        if self.window_n == 0 {
            return;
        }
        let crc = std::mem::replace(&mut self.window_crc, crc32fast::Hasher::new());
        self.stats.window_seq = self.window_start;
        self.stats.window_frames = self.window_n;
        self.stats.window_crc = u64::from(crc.finalize());
        self.stats.windows += 1;
        self.window_n = 0;
        self.publish();
    }

    /// Waits at most `timeout` (`None`: no limit) for the next frame and calls `f` on it.
    /// Counts hand-off time, lateness and losses, and feeds the CRC window the hub checks.
    pub fn read<R>(
        &mut self,
        timeout: Option<Duration>,
        f: impl FnOnce(&FrameRef<'_>) -> R,
    ) -> Result<Read<R>, HubError> {
        let mut f = Some(f);
        loop {
            match self.rx.wait_for_frames(timeout).map_err(HubError::Wait)? {
                FramesWait::Ready => {}
                FramesWait::TimedOut => return Ok(Read::TimedOut),
                FramesWait::EndOfStream => {
                    self.close_window();
                    return Ok(Read::EndOfStream);
                }
            }
            match self.take(&mut f)? {
                Step::Got(out) => {
                    self.stats.frames += 1;
                    if self.window_n >= WINDOW_FRAMES {
                        self.close_window();
                    } else if self.stats.frames - self.published >= PUBLISH_EVERY {
                        self.publish();
                    }
                    return Ok(Read::Frame(out));
                }
                Step::EndOfStream => {
                    self.close_window();
                    return Ok(Read::EndOfStream);
                }
                Step::Again => {}
                Step::Lost(frames) => {
                    self.stats.lost += frames;
                    self.close_window();
                }
                Step::Evicted => self.evicted()?,
            }
        }
    }

    /// One read grant of one frame: `f` on it, the hand-off and CRC window updated.
    fn take<R>(
        &mut self,
        f: &mut Option<impl FnOnce(&FrameRef<'_>) -> R>,
    ) -> Result<Step<R>, HubError> {
        let (consumer, waiter) = self.rx.parts();
        let grant = match consumer.read_grant(1) {
            Ok(g) => g,
            Err(ReadError::Empty) => return Ok(Step::Again),
            Err(ReadError::Lost { frames }) => return Ok(Step::Lost(frames)),
            Err(ReadError::Evicted) => return Ok(Step::Evicted),
            Err(e) => return Err(HubError::Ring(format!("mic ring: {e}"))),
        };
        let Some(frame) = grant.frame(0) else {
            return Ok(Step::Again);
        };
        let meta = frame.meta();
        let step = if meta.flags.contains(FrameFlags::END_OF_STREAM) {
            Step::EndOfStream
        } else {
            let hand = monotonic_ns().saturating_sub(meta.timestamp_ns);
            self.hist.record(hand);
            if hand > self.period_ns {
                self.stats.late += 1;
            }
            let payload = frame.payload();
            let n = (meta.len as usize).min(payload.len());
            if self.window_n == 0 {
                self.window_start = frame.seq();
            }
            self.window_crc.update(&payload[..n]);
            self.window_n += 1;
            match f.take() {
                Some(f) => Step::Got(f(&frame)),
                None => Step::Again,
            }
        };
        match grant.release(1) {
            Ok(w) => w.wake(waiter),
            Err(e) => return Err(HubError::Ring(format!("mic ring release: {e}"))),
        }
        Ok(step)
    }

    /// The hub evicted this reader: say why (lossless) or rejoin and count (lossy).
    fn evicted(&mut self) -> Result<(), HubError> {
        self.close_window();
        let ring = self.hub.mic_segment().ring();
        let bound = u64::from(ring.config().frames);
        let mine = self.rx.consumer().read_pos();
        let lag = ring.write_pos().saturating_sub(mine);
        if self.delivery == Delivery::Lossless {
            return Err(HubError::Evicted { lag, bound });
        }
        let rx = self
            .hub
            .mic_segment()
            .consumer()
            .map_err(HubError::Participant)?;
        self.rx = rx;
        let now = self.rx.consumer().read_pos();
        self.stats.lost += now.saturating_sub(mine);
        self.claim_row();
        Ok(())
    }
}

impl Drop for MicReader {
    fn drop(&mut self) {
        self.close_window();
        self.publish();
    }
}

/// An agent's output ring: what it writes is mixed into the hub's playback.
///
/// The hub never wakes an output's producer (so its real-time thread makes at most one wake
/// call per cycle whatever the number of agents): [`Speaker::write`] never waits; when the
/// ring is full (the hub is not reading it yet, or this agent writes faster than real time)
/// the frame is dropped and counted.
#[derive(Debug)]
pub struct Speaker {
    tx: ShmProducer,
    cfg: RingConfig,
    written: u64,
    dropped: u64,
    pos: u64,
}

impl Speaker {
    pub(super) fn create(hub: &Hub, agent: &str) -> Result<Self, HubError> {
        let mic = hub.config();
        let cfg = RingConfig {
            frames: OUT_FRAMES,
            max_consumers: 1,
            policy: Policy::Lossless,
            ..mic
        };
        let opts = CreateOptions {
            access: hub.inner.opts.access(),
            ..CreateOptions::default()
        };
        let seg =
            Segment::create(&out_name(hub.name(), agent), &cfg, &opts).map_err(HubError::Create)?;
        let tx = seg.producer().map_err(HubError::Participant)?;
        Ok(Speaker {
            tx,
            cfg,
            written: 0,
            dropped: 0,
            pos: 0,
        })
    }

    /// The ring's configuration (the hub's format; one frame = `samples_per_frame` frames).
    pub fn config(&self) -> RingConfig {
        self.cfg
    }

    /// Writes one frame of interleaved samples (at most a frame's worth; fewer are padded
    /// with silence by the hub). `Ok(false)`: the ring was full and the frame was dropped.
    pub fn write<T: voxring_core::Sample>(&mut self, samples: &[T]) -> Result<bool, HubError> {
        let (producer, waiter) = self.tx.parts();
        let mut grant = match producer.write_grant(1) {
            Ok(g) => g,
            Err(voxring_core::GrantError::Full) => {
                self.dropped += 1;
                return Ok(false);
            }
            Err(e) => return Err(HubError::Ring(format!("output ring: {e}"))),
        };
        let Some(mut frame) = grant.frame_mut(0) else {
            return Ok(false);
        };
        let dst = frame.samples_mut::<T>().map_err(|e| {
            HubError::BadName(format!(
                "the hub streams {:?} samples: {e}",
                self.cfg.format
            ))
        })?;
        let n = samples.len().min(dst.len());
        dst[..n].copy_from_slice(&samples[..n]);
        let bytes = (n * std::mem::size_of::<T>()) as u32;
        frame
            .set_len(bytes)
            .map_err(|e| HubError::Ring(format!("output frame: {e}")))?;
        frame.set_sample_pos(self.pos);
        frame.set_timestamp_ns(monotonic_ns());
        grant.commit_all().wake(waiter);
        self.pos += u64::from(self.cfg.samples_per_frame);
        self.written += 1;
        Ok(true)
    }

    /// Frames written and frames dropped (ring full).
    pub fn counts(&self) -> (u64, u64) {
        (self.written, self.dropped)
    }

    /// The underlying producer (for zero-copy writes with core's grants).
    pub fn producer(&mut self) -> &mut ShmProducer {
        &mut self.tx
    }
}
