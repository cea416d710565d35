//! `shm-spin` and `shm-park`: voxring itself. A voxring-core ring in a voxring-linux memfd
//! segment (sealed, handed to the producer process over a Unix socket with `SCM_RIGHTS`, so
//! nothing is created in `/dev/shm`), one frame of `payload` bytes (F32 mono samples), lossless.
//!
//! The producer writes the frame in place (zero copy), stamps `timestamp_ns` in the frame's
//! metadata and commits; the consumer's read grant is the acquire. With one frame in the ring
//! the producer's next grant needs the consumer's release: that release is the acknowledgement.
//! Three ways to wait, all through voxring's API:
//! - `shm-spin`: busy-poll core's non-blocking grants (`read_grant` until a frame is there,
//!   `write_grant` until the frame was released). Nobody ever announces it is parked, so the
//!   commit's and the release's `Wake` never make a syscall.
//! - `shm-wait`: voxring-linux's blocking waits (`wait_for_frames`, `wait_for_space`) with the
//!   default `FutexWaiter` (spin 50 µs, then park).
//! - `shm-park`: the same waits with spin 0: every hand-off is a futex wake-up of a parked peer.
//! - `shm-periodic` (with `--pace-us`): the consumer in the wake-free periodic wait
//!   (`WaitMode::Periodic` with the pace as its period): it sleeps on its own timer until just
//!   before the next frame is due and polls, so the producer's commit wakes nobody; the
//!   producer waits for the acknowledgement as in `shm-wait`.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use voxring_core::{Policy, RingConfig, SampleFormat};
use voxring_linux::mapping::MapOptions;
use voxring_linux::ring::{
    FramesWait, Periodic, Segment, ShmConsumer, ShmProducer, SpaceWait, WaitMode,
};

use super::measure::now_ns;
use super::{PEER_TIMEOUT_NS, Received, Rx, Tx};

/// How a side waits for its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Busy-poll the non-blocking grants.
    Spin,
    /// voxring-linux's waits with the default waiter (spin, then park).
    Wait,
    /// voxring-linux's waits, parking at once.
    Park,
    /// The consumer in the periodic wait for frames every `period_ns`; the producer as `Wait`.
    Periodic {
        /// The producer's pace.
        period_ns: u64,
    },
}

impl Mode {
    /// The waiter's spin phase for the blocking modes.
    fn spin(self) -> Option<Duration> {
        match self {
            Mode::Spin => None,
            Mode::Wait | Mode::Periodic { .. } => {
                Some(voxring_linux::futex::FutexWaiter::default().spin)
            }
            Mode::Park => Some(Duration::ZERO),
        }
    }
}

/// Calls `poll` until it gives a value; gives up after [`PEER_TIMEOUT_NS`].
fn spin_until<T>(
    mut poll: impl FnMut() -> anyhow::Result<Option<T>>,
    what: &str,
) -> anyhow::Result<T> {
    let deadline = now_ns() + PEER_TIMEOUT_NS;
    let mut i: u32 = 0;
    loop {
        if let Some(v) = poll()? {
            return Ok(v);
        }
        std::hint::spin_loop();
        i = i.wrapping_add(1);
        if i.is_multiple_of(4096) && now_ns() > deadline {
            bail!("{what}: nothing for 10 s, the peer process stopped");
        }
    }
}

/// The ring of one benchmark message: one lossless F32 slot of `payload` bytes, one consumer.
/// Also the ring of the binding consumers (`bindings`).
pub(super) fn config(payload: usize) -> anyhow::Result<RingConfig> {
    if !payload.is_multiple_of(4) {
        bail!("voxring rings carry whole f32 samples: {payload} bytes is not a multiple of 4");
    }
    Ok(RingConfig {
        frames: 1,
        samples_per_frame: (payload / 4) as u32,
        channels: 1,
        format: SampleFormat::F32,
        sample_rate: 48_000,
        max_consumers: 1,
        policy: Policy::Lossless,
    })
}

/// The consumer side (this process): creates the segment and joins it.
#[derive(Debug)]
pub struct VoxRx {
    segment: Segment,
    rx: ShmConsumer,
    payload: usize,
    mode: Mode,
    next: u64,
}

impl VoxRx {
    /// Creates the memfd segment and joins it as the consumer (before the producer can commit).
    pub fn create(payload: usize, mode: Mode) -> anyhow::Result<Self> {
        let segment = Segment::create_memfd(
            "voxring-bench-ipc",
            &config(payload)?,
            MapOptions::default(),
        )
        .map_err(|e| anyhow!("creating the benchmark's voxring segment: {e}"))?;
        if (segment.ring().payload_bytes() as usize) < payload {
            bail!(
                "the ring's frames hold {} bytes, {payload} needed",
                segment.ring().payload_bytes()
            );
        }
        let mut rx = segment
            .consumer()
            .map_err(|e| anyhow!("joining the benchmark ring as its consumer: {e}"))?;
        if let Some(spin) = mode.spin() {
            rx.set_spin(spin);
        }
        if let Mode::Periodic { period_ns } = mode {
            rx.set_wait_mode(WaitMode::Periodic(Periodic {
                period: Some(Duration::from_nanos(period_ns)),
                ..Periodic::default()
            }))
            .map_err(|e| anyhow!("the periodic wait: {e}"))?;
        }
        Ok(Self {
            segment,
            rx,
            payload,
            mode,
            next: 0,
        })
    }

    /// Hands the segment to the producer process over `socket`.
    pub fn send_to(&self, socket: &UnixStream) -> anyhow::Result<()> {
        self.segment
            .send(socket)
            .context("sending the segment to the producer (SCM_RIGHTS)")
    }
}

impl Rx for VoxRx {
    fn recv(&mut self) -> anyhow::Result<Received> {
        let deadline = now_ns() + PEER_TIMEOUT_NS;
        let mut polls: u32 = 0;
        loop {
            if self.mode != Mode::Spin {
                match self
                    .rx
                    .wait_for_frames(Some(Duration::from_nanos(PEER_TIMEOUT_NS)))
                    .map_err(|e| anyhow!("waiting for a frame: {e}"))?
                {
                    FramesWait::Ready => {}
                    FramesWait::EndOfStream => {
                        bail!("the producer process is gone (end of stream)")
                    }
                    FramesWait::TimedOut => {
                        bail!("no frame for 10 s: the producer process stopped")
                    }
                }
            }
            let grant = match self.rx.consumer().read_grant(1) {
                Ok(g) => g,
                // Spin: poll again. Wait/park: a spurious wake, wait again.
                Err(voxring_core::ReadError::Empty) => {
                    std::hint::spin_loop();
                    polls = polls.wrapping_add(1);
                    if polls.is_multiple_of(4096) && now_ns() > deadline {
                        bail!("no frame for 10 s: the producer process stopped");
                    }
                    continue;
                }
                Err(e) => bail!("read grant: {e}"),
            };
            let recv_ns = now_ns();
            // Dropped unreleased at the end of this call: `finish` takes the frame again.
            let frame = grant
                .frame(0)
                .context("a one-frame grant without a frame")?;
            let meta = frame.meta();
            if meta.seq != self.next {
                bail!("frame {} arrived, expected {}", meta.seq, self.next);
            }
            return Ok(Received {
                seq: meta.seq,
                stamp_ns: meta.timestamp_ns,
                recv_ns,
            });
        }
    }

    fn finish(&mut self, msg: &Received) -> anyhow::Result<()> {
        let payload = self.payload;
        let (consumer, waiter) = self.rx.parts();
        let grant = consumer
            .read_grant(1)
            .map_err(|e| anyhow!("read grant: {e}"))?;
        let frame = grant
            .frame(0)
            .context("a one-frame grant without a frame")?;
        let bytes = frame.payload();
        if bytes.len() != payload {
            bail!(
                "frame {} holds {} bytes, expected {payload}",
                msg.seq,
                bytes.len()
            );
        }
        let mut last = [0u8; 8];
        last.copy_from_slice(&bytes[payload - 8..]);
        if u64::from_le_bytes(last) != msg.seq {
            bail!(
                "frame {} does not end with its seq: torn or misplaced",
                msg.seq
            );
        }
        // Releasing the frame is the acknowledgement; it wakes the producer only if it parked.
        grant
            .release_all()
            .map_err(|e| anyhow!("releasing frame {}: {e}", msg.seq))?
            .wake(waiter);
        self.next += 1;
        Ok(())
    }
}

/// The producer side (the child process).
#[derive(Debug)]
pub struct VoxTx {
    _segment: Segment,
    tx: ShmProducer,
    payload: usize,
    mode: Mode,
}

impl VoxTx {
    /// Receives the segment over `socket` and claims the producer side.
    pub fn receive(socket: &UnixStream, payload: usize, mode: Mode) -> anyhow::Result<Self> {
        let segment = Segment::receive(socket, MapOptions::default())
            .map_err(|e| anyhow!("receiving the benchmark segment: {e}"))?;
        let mut tx = segment
            .producer()
            .map_err(|e| anyhow!("claiming the benchmark ring's producer side: {e}"))?;
        if let Some(spin) = mode.spin() {
            tx.set_spin(spin);
        }
        if (segment.ring().payload_bytes() as usize) < payload {
            bail!("the received ring's frames are smaller than {payload} bytes");
        }
        Ok(Self {
            _segment: segment,
            tx,
            payload,
            mode,
        })
    }
}

impl Tx for VoxTx {
    fn prepare(&mut self, _seq: u64) -> anyhow::Result<()> {
        // The frame is written in place inside `send`'s grant, before the stamp.
        Ok(())
    }

    fn send(&mut self, seq: u64) -> anyhow::Result<()> {
        let payload = self.payload;
        let (producer, waiter) = self.tx.parts();
        let mut grant = producer
            .write_grant(1)
            .map_err(|e| anyhow!("write grant for frame {seq}: {e}"))?;
        let mut frame = grant
            .frame_mut(0)
            .context("a one-frame grant without a frame")?;
        if frame.seq() != seq {
            bail!(
                "the ring is at frame {}, the benchmark at {seq}",
                frame.seq()
            );
        }
        frame.payload_mut()[payload - 8..payload].copy_from_slice(&seq.to_le_bytes());
        frame
            .set_len(payload as u32)
            .map_err(|e| anyhow!("frame length: {e}"))?;
        frame.set_timestamp_ns(now_ns());
        // The commit publishes the frame; the wake makes a futex syscall only when the consumer
        // announced it waits (always in shm-park, never in shm-spin).
        grant.commit_all().wake(waiter);
        Ok(())
    }

    fn wait_ack(&mut self, seq: u64) -> anyhow::Result<()> {
        // One frame in the ring: it is writable again once the consumer released frame `seq`.
        if self.mode == Mode::Spin {
            let producer = self.tx.producer();
            return spin_until(
                || match producer.write_grant(1) {
                    Ok(_unused) => Ok(Some(())), // dropped without commit: nothing published
                    Err(voxring_core::GrantError::Full) => Ok(None),
                    Err(e) => Err(anyhow!("after frame {seq}: {e}")),
                },
                "waiting for the consumer to release a frame",
            );
        }
        loop {
            match self
                .tx
                .wait_for_space(Some(Duration::from_nanos(PEER_TIMEOUT_NS)))
                .map_err(|e| anyhow!("waiting for the consumer to release frame {seq}: {e}"))?
            {
                SpaceWait::Ready => {}
                SpaceWait::TimedOut => bail!("the consumer did not release frame {seq} for 10 s"),
            }
            // A wake may be spurious: writable means the release happened.
            match self.tx.producer().write_grant(1) {
                Ok(_unused) => return Ok(()), // dropped without commit: nothing is published
                Err(voxring_core::GrantError::Full) => continue,
                Err(e) => bail!("after frame {seq}: {e}"),
            }
        }
    }

    fn own_syscalls(&self) -> Option<u64> {
        // The futex wake happens inside voxring-linux: only the kernel counter sees it.
        None
    }
}
