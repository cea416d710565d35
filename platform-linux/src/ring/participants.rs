//! The two sides of a shared ring: [`ShmProducer`] and [`ShmConsumer`], what they share
//! ([`Participant`]: the liveness ticket, the segment, the waiter), and their waits.

use std::fmt;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use voxring_core::WaitOutcome;
use voxring_core::ring::periodic::{Arrivals, PeriodError, Plan, Sighting};

use super::{ParticipantError, PeerState, Segment};
use crate::clock::monotonic_ns;
use crate::futex::FutexWaiter;
use crate::liveness;

impl Segment {
    /// Takes a liveness ticket for a new participant (see [`crate::liveness`]).
    fn participant(&self) -> Result<Participant, ParticipantError> {
        if self.is_truncated() {
            return Err(ParticipantError::Truncated);
        }
        let (lock_fd, ticket) = self.take_ticket()?;
        Ok(Participant {
            _lock_fd: lock_fd,
            token: liveness::owner_token(ticket),
            segment: self.clone(),
            waiter: FutexWaiter::default(),
            liveness_interval: DEFAULT_LIVENESS_INTERVAL,
        })
    }

    /// Claims the producer side: takes a liveness ticket, evicts a dead previous producer if
    /// there is one, and claims the ring.
    pub fn producer(&self) -> Result<ShmProducer, ParticipantError> {
        let part = self.participant()?;
        let token = part.token;
        let producer = match self.inner.ring.producer(token) {
            Ok(p) => p,
            Err(voxring_core::ClaimError::Taken { owner }) => {
                if self.token_alive(owner) {
                    return Err(ParticipantError::ProducerTaken { owner });
                }
                let _ = self.inner.ring.evict_producer(owner);
                self.inner.ring.producer(token).map_err(claim_error)?
            }
            Err(e) => return Err(claim_error(e)),
        };
        Ok(ShmProducer { producer, part })
    }

    /// Joins as a consumer: takes a liveness ticket, then joins a free slot (evicting dead
    /// consumers first if every slot is taken). Reading starts at the current write position.
    pub fn consumer(&self) -> Result<ShmConsumer, ParticipantError> {
        let part = self.participant()?;
        let token = part.token;
        let consumer = match self.inner.ring.consumer(token) {
            Ok(c) => c,
            Err(voxring_core::JoinError::Full { .. }) => {
                self.evict_dead();
                self.inner.ring.consumer(token).map_err(join_error)?
            }
            Err(e) => return Err(join_error(e)),
        };
        let seen_producer = self.producer_state() == PeerState::Alive;
        let joined_at = consumer.read_pos();
        Ok(ShmConsumer {
            joined_at,
            consumer: std::mem::ManuallyDrop::new(consumer),
            part,
            seen_producer,
            arrivals: None,
        })
    }
}

fn claim_error(e: voxring_core::ClaimError) -> ParticipantError {
    match e {
        voxring_core::ClaimError::Taken { owner } => ParticipantError::ProducerTaken { owner },
        e => ParticipantError::Core(e.to_string()),
    }
}

fn join_error(e: voxring_core::JoinError) -> ParticipantError {
    match e {
        voxring_core::JoinError::Full { max_consumers } => {
            ParticipantError::ConsumersFull { max_consumers }
        }
        e => ParticipantError::Core(e.to_string()),
    }
}

/// How often a waiting participant checks its peers' liveness.
pub const DEFAULT_LIVENESS_INTERVAL: Duration = Duration::from_millis(50);

/// What a producer and a consumer both hold: the liveness ticket's lock (released when the
/// fd closes), the owner token written in the ring, the segment (which keeps the mapping the
/// core side points into alive), the waiter and the liveness interval.
#[derive(Debug)]
struct Participant {
    _lock_fd: OwnedFd,
    token: u64,
    segment: Segment,
    waiter: FutexWaiter,
    liveness_interval: Duration,
}

impl Participant {
    /// A wait of `timeout` (`None`: no limit): its deadline, and how long it spins before it
    /// parks (the waiter's spin, at most the timeout).
    fn wait_bounds(&self, timeout: Option<Duration>) -> (Option<Instant>, Duration) {
        let spin = self.waiter.spin;
        (
            timeout.map(|t| Instant::now() + t),
            spin.min(timeout.unwrap_or(spin)),
        )
    }
}

/// The accessors [`ShmProducer`] and [`ShmConsumer`] share, written once over their
/// `part: Participant` field. `$interval` says what the liveness interval is for.
macro_rules! participant_accessors {
    ($interval:literal) => {
        /// The futex waiter (spin, then park) to wake the other side with after a commit or
        /// release. It is `Copy`: copy it out before borrowing the core side mutably, or use
        /// `parts()`.
        pub fn waiter(&self) -> &FutexWaiter {
            &self.part.waiter
        }

        /// Sets how long waits spin before parking.
        pub fn set_spin(&mut self, spin: Duration) {
            self.part.waiter = FutexWaiter::new(spin);
        }

        #[doc = concat!("Sets how often ", $interval, " (at least 1 ms).")]
        pub fn set_liveness_interval(&mut self, d: Duration) {
            self.part.liveness_interval = d.max(Duration::from_millis(1));
        }

        /// The segment.
        pub fn segment(&self) -> &Segment {
            &self.part.segment
        }

        /// The owner token in the ring (identity and ticket, see [`crate::liveness`]).
        pub fn owner_token(&self) -> u64 {
            self.part.token
        }
    };
}

/// The producer side of a shared ring, with its liveness ticket held.
///
/// Write with [`ShmProducer::producer`] (core's API); after a commit, pass the returned
/// `Wake` to [`ShmProducer::waiter`]: it makes a futex syscall only when a consumer is parked.
///
/// In the lossless policy a full ring makes the producer wait for its slowest consumer; the
/// wait is bounded:
///
/// ```
/// use std::time::Duration;
/// use voxring_linux::mapping::MapOptions;
/// use voxring_linux::ring::{Segment, SpaceWait};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use voxring_core::{Policy, RingConfig, SampleFormat};
/// # let cfg = RingConfig {
/// #     frames: 4, samples_per_frame: 16, channels: 1, format: SampleFormat::S16,
/// #     sample_rate: 48_000, max_consumers: 2, policy: Policy::Lossless,
/// # };
/// let seg = Segment::create_memfd("example", &cfg, MapOptions::default())?;
/// let mut tx = seg.producer()?;
/// let _rx = seg.consumer()?; // joins, and never releases anything
/// let (producer, waiter) = tx.parts();
/// producer.write_grant(4)?.commit_all().wake(waiter); // the ring is full now
/// let waited = tx.wait_for_space(Some(Duration::from_millis(10)))?;
/// assert_eq!(waited, SpaceWait::TimedOut);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ShmProducer {
    // Field order matters: the core producer (which frees the side) drops before the
    // participant (whose lock fd releases the ticket, and whose segment holds the mapping).
    producer: voxring_core::Producer,
    part: Participant,
}

/// How a wait for space or frames ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceWait {
    /// There may be space now: try `write_grant` again.
    Ready,
    /// The timeout passed.
    TimedOut,
}

impl ShmProducer {
    /// Core's producer: `write_grant`, `commit`.
    pub fn producer(&mut self) -> &mut voxring_core::Producer {
        &mut self.producer
    }

    /// Core's producer and the waiter at once (for `grant.commit(k)?.wake(waiter)`).
    pub fn parts(&mut self) -> (&mut voxring_core::Producer, &FutexWaiter) {
        (&mut self.producer, &self.part.waiter)
    }

    participant_accessors!("a waiting producer checks for dead consumers");

    /// Lossless policy: waits until a frame may be free, at most `timeout`, evicting dead
    /// consumers every liveness interval so a crashed consumer never stalls the ring.
    /// It spins (the waiter's `spin`) before it lets core announce it as parked, so consumers
    /// releasing during the spin make no wake syscall; then it parks on the futex.
    /// When a park slice ends with no space, it also checks the file size: a segment a peer
    /// truncated gives `Err(GrantError::Evicted)` (the zeroed memory has no producer;
    /// `segment().is_truncated()` tells this case apart). A live consumer that never releases
    /// stalls it as a slow consumer would: bound the wait with `timeout`.
    /// Blocking (spins, then parks): not for an audio callback.
    pub fn wait_for_space(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<SpaceWait, voxring_core::GrantError> {
        // Spin first, before core announces this producer as parked: consumers that release
        // during the spin then see nobody parked and make no wake syscall.
        let (deadline, spin) = self.part.wait_bounds(timeout);
        if self.part.segment.config().policy == voxring_core::Policy::Lossless {
            let producer = &mut self.producer;
            // A grant of one frame that is dropped commits nothing: a pure space probe.
            let probe = || match producer.write_grant(1) {
                Ok(g) if !g.is_empty() => Some(Ok(SpaceWait::Ready)),
                Ok(_) | Err(voxring_core::GrantError::Full) => None,
                Err(e) => Some(Err(e)),
            };
            if let Some(done) = spin_for(spin, 16, probe) {
                return done;
            }
        }
        let park = FutexWaiter::new(Duration::ZERO);
        loop {
            let Some(slice) = park_slice(deadline, self.part.liveness_interval) else {
                return Ok(SpaceWait::TimedOut);
            };
            match self
                .producer
                .wait_writable(&park, Some(slice.as_nanos() as u64))?
            {
                WaitOutcome::Ready | WaitOutcome::Woken => return Ok(SpaceWait::Ready),
                WaitOutcome::TimedOut => {
                    // Slow path: a truncated segment holds no ring any more (zero pages:
                    // core's own check then reports this producer as evicted, as it no
                    // longer owns anything); say so now rather than wait on it.
                    if self.part.segment.is_truncated() || self.part.segment.check_size().is_err() {
                        return Err(voxring_core::GrantError::Evicted);
                    }
                    if self.part.segment.evict_dead().consumers > 0 {
                        return Ok(SpaceWait::Ready);
                    }
                }
            }
        }
    }
}

/// Spins for at most `spin`, calling `probe` until it answers; reads the clock only every
/// `check_every` probes. `None` when the spin ran out (or `spin` is zero) without an answer.
fn spin_for<R>(
    spin: Duration,
    check_every: u32,
    mut probe: impl FnMut() -> Option<R>,
) -> Option<R> {
    if spin.is_zero() {
        return None;
    }
    let until = Instant::now() + spin;
    let mut i: u32 = 0;
    loop {
        if let Some(answer) = probe() {
            return Some(answer);
        }
        i = i.wrapping_add(1);
        if i.is_multiple_of(check_every) && Instant::now() >= until {
            return None;
        }
        std::hint::spin_loop();
    }
}

/// How long the next park may last: until `deadline`, and at most one liveness `interval`
/// (so the waiter checks its peers that often). `None` once the deadline has passed.
fn park_slice(deadline: Option<Instant>, interval: Duration) -> Option<Duration> {
    match deadline {
        Some(d) => d
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .map(|left| left.min(interval)),
        None => Some(interval),
    }
}

/// How [`ShmConsumer::wait_for_frames`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramesWait {
    /// Frames may be ready: call `read_grant`.
    Ready,
    /// The producer is gone (exited, crashed or was evicted) and every committed frame was
    /// read: no more frames will come from it.
    EndOfStream,
    /// The timeout passed (the producer is alive, or has not appeared yet).
    TimedOut,
}

/// Why [`ShmConsumer::wait_for_frames`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// Core reported a problem (evicted, corrupt cursor).
    Read(voxring_core::ReadError),
    /// A peer truncated the segment.
    Truncated,
    /// The segment's header no longer holds a voxring ring (its magic number was
    /// overwritten): the producer abandoned it or a peer with write access destroyed it.
    Abandoned {
        /// Whether its name was removed from `/dev/shm` too (link count 0).
        unlinked: bool,
    },
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::Read(e) => e.fmt(f),
            WaitError::Truncated => f.write_str(
                "the segment was truncated by another process: stop reading it and discard \
                 the last grant's data; use a sealed memfd segment with untrusted peers",
            ),
            WaitError::Abandoned { unlinked } => write!(
                f,
                "the segment no longer holds a voxring ring: its header was overwritten{} while \
                 this consumer waited (its producer abandoned it, or a peer with write access \
                 destroyed it); no more frames will come: stop reading it, and attach again by \
                 name if its producer re-created it",
                if *unlinked {
                    " and its name removed from /dev/shm"
                } else {
                    ""
                }
            ),
        }
    }
}

impl std::error::Error for WaitError {}

/// A consumer of a shared ring, with its liveness ticket held.
///
/// A consumer never hangs on a producer that is gone: once every frame it committed was read,
/// the wait says so.
///
/// ```
/// use std::time::Duration;
/// use voxring_linux::mapping::MapOptions;
/// use voxring_linux::ring::{FramesWait, Segment};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use voxring_core::{Policy, RingConfig, SampleFormat};
/// # let cfg = RingConfig {
/// #     frames: 4, samples_per_frame: 16, channels: 1, format: SampleFormat::S16,
/// #     sample_rate: 48_000, max_consumers: 2, policy: Policy::Lossless,
/// # };
/// let seg = Segment::create_memfd("example", &cfg, MapOptions::default())?;
/// let mut rx = seg.consumer()?;
/// let mut tx = seg.producer()?;
/// let (producer, waiter) = tx.parts();
/// producer.write_grant(1)?.commit_all().wake(waiter);
/// drop(tx); // the producer leaves (or crashes: its liveness lock goes either way)
///
/// let give_up = Some(Duration::from_secs(10));
/// assert_eq!(rx.wait_for_frames(give_up)?, FramesWait::Ready);
/// let (consumer, waiter) = rx.parts();
/// consumer.read_grant(4)?.release_all()?.wake(waiter);
/// assert_eq!(rx.wait_for_frames(give_up)?, FramesWait::EndOfStream);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ShmConsumer {
    // Field order: see ShmProducer. `consumer` leaves the ring in `Drop::drop` (so a parked
    // lossless producer is woken), before the participant's lock fd is closed.
    consumer: std::mem::ManuallyDrop<voxring_core::Consumer>,
    part: Participant,
    /// Whether a producer was ever seen: alive at a check, or frames committed since joining.
    seen_producer: bool,
    joined_at: u64,
    /// The periodic wait's estimator, when that mode is on ([`ShmConsumer::set_wait_mode`]).
    arrivals: Option<Arrivals>,
}

impl ShmConsumer {
    /// Core's consumer: `read_grant`, `release`.
    pub fn consumer(&mut self) -> &mut voxring_core::Consumer {
        &mut self.consumer
    }

    /// Core's consumer and the waiter at once (for `grant.release(k)?.wake(waiter)`).
    pub fn parts(&mut self) -> (&mut voxring_core::Consumer, &FutexWaiter) {
        (&mut *self.consumer, &self.part.waiter)
    }

    participant_accessors!("a waiting consumer checks that the producer is alive");

    /// True once a peer truncated the segment: data read since is zero pages, not frames.
    /// One relaxed load; check it after reading a grant if peers are not trusted.
    #[inline]
    pub fn is_truncated(&self) -> bool {
        self.part.segment.is_truncated()
    }

    /// Sets how [`ShmConsumer::wait_for_frames`] waits: spin then park (the default), or the
    /// wake-free periodic wait (see [`WaitMode`]). Fails when the period cannot be known (no
    /// period given and a ring whose rate or samples per frame is zero) or the margin is not
    /// shorter than half the period.
    ///
    /// The periodic mode also sets the calling thread's timer slack to 1 ns
    /// (`PR_SET_TIMERSLACK`; the kernel may otherwise defer a normal thread's timer by up to
    /// 50 µs, which the margin would have to cover with polling): call it on the thread that
    /// waits. Real-time threads (`SCHED_FIFO`) have no slack anyway.
    pub fn set_wait_mode(&mut self, mode: WaitMode) -> Result<(), PeriodError> {
        if matches!(mode, WaitMode::Periodic(_)) {
            // Best effort: without it the wait still works, with a wider margin.
            let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
        }
        self.arrivals = match mode {
            WaitMode::SpinThenPark => None,
            WaitMode::Periodic(p) => {
                let early = p.early.as_nanos().min(u128::from(u64::MAX)) as u64;
                Some(match p.period {
                    Some(period) => Arrivals::new(period.as_nanos() as u64, early)?,
                    None => Arrivals::for_ring(&self.part.segment.config(), early)?,
                })
            }
        };
        Ok(())
    }

    /// The periodic wait's estimator, when that mode is on (for monitoring: its margin, and
    /// whether it judged the stream irregular).
    pub fn arrivals(&self) -> Option<&Arrivals> {
        self.arrivals.as_ref()
    }

    /// Waits until a frame may be ready, at most `timeout`. In the default mode it first spins
    /// (the waiter's `spin`) without announcing itself, so a producer committing meanwhile
    /// makes no wake syscall, then parks on the futex; in the periodic mode it sleeps on its
    /// own timer until just before the frame is due and polls (see [`WaitMode::Periodic`]),
    /// parking only when the frame is late. Every liveness
    /// interval it checks the producer: once a producer was seen and is now gone with every
    /// committed frame read, it returns [`FramesWait::EndOfStream`] instead of hanging. It also
    /// checks the segment ([`Segment::check_health`]) then: a truncated segment gives
    /// [`WaitError::Truncated`], one whose header was overwritten (its producer unlinked and
    /// zeroed it, say, while keeping it open) gives [`WaitError::Abandoned`].
    pub fn wait_for_frames(&mut self, timeout: Option<Duration>) -> Result<FramesWait, WaitError> {
        if self.arrivals.is_some() {
            return self.wait_periodic(timeout);
        }
        // Spin first, before core announces this consumer as parked: a producer committing
        // during the spin sees nobody parked and makes no wake syscall.
        let (deadline, spin) = self.part.wait_bounds(timeout);
        let probe = || {
            if self.is_truncated() {
                Some(Err(WaitError::Truncated))
            } else if self.frame_ready() {
                Some(Ok(FramesWait::Ready))
            } else {
                None
            }
        };
        if let Some(done) = spin_for(spin, 64, probe) {
            return done;
        }
        self.park_for_frames(deadline)
    }

    /// Whether the write position says a frame is committed past ours (core's
    /// [`voxring_core::Consumer::frame_ready`]: one Acquire load; a position behind ours, left by the slot
    /// fast path, is nothing new).
    fn frame_ready(&self) -> bool {
        self.consumer.frame_ready()
    }

    /// The periodic wait: timer, poll window, and the park as fall-back (see [`WaitMode`]).
    fn wait_periodic(&mut self, timeout: Option<Duration>) -> Result<FramesWait, WaitError> {
        let start_ns = monotonic_ns();
        let deadline = timeout.map(|t| Instant::now() + t);
        let deadline_ns = timeout.map_or(u64::MAX, |t| {
            start_ns.saturating_add(t.as_nanos().min(u128::from(u64::MAX)) as u64)
        });
        if self.is_truncated() {
            return Err(WaitError::Truncated);
        }
        if self.frame_ready() {
            // Already there (a backlog, or a late call): it arrived at some earlier time.
            self.sighted(Sighting::Late);
            return Ok(FramesWait::Ready);
        }
        let read_pos = self.consumer.read_pos();
        let Some(arrivals) = self.arrivals.as_mut() else {
            return self.park_for_frames(deadline);
        };
        let poll_until = match arrivals.plan(read_pos, start_ns) {
            Plan::Sleep {
                until_ns,
                poll_until_ns,
            } => {
                let planned = until_ns.min(deadline_ns);
                crate::futex::sleep_until_ns(planned);
                let woke = monotonic_ns();
                if let Some(a) = self.arrivals.as_mut() {
                    a.woke(planned, woke);
                }
                if self.is_truncated() {
                    return Err(WaitError::Truncated);
                }
                if self.frame_ready() {
                    self.sighted(Sighting::AfterSleep);
                    return Ok(FramesWait::Ready);
                }
                Some(poll_until_ns)
            }
            Plan::Poll { poll_until_ns } => Some(poll_until_ns),
            Plan::Park => None,
        };
        if let Some(until) = poll_until {
            // Poll without announcing: a commit now sees nobody parked and makes no syscall.
            let until = until.min(deadline_ns);
            let mut i: u32 = 0;
            loop {
                if self.frame_ready() {
                    self.sighted(Sighting::Polling);
                    return Ok(FramesWait::Ready);
                }
                i = i.wrapping_add(1);
                if i.is_multiple_of(16) && monotonic_ns() >= until {
                    break;
                }
                std::hint::spin_loop();
            }
            if let Some(a) = self.arrivals.as_mut() {
                a.missed();
            }
        }
        let waited = self.park_for_frames(deadline)?;
        if waited == FramesWait::Ready {
            self.sighted(Sighting::Late);
        }
        Ok(waited)
    }

    /// Feeds the periodic estimator the next frame's timestamp, seen now as `how` says.
    fn sighted(&mut self, how: Sighting) {
        let now = monotonic_ns();
        if let (Some(a), Some(m)) = (self.arrivals.as_mut(), self.consumer.next_frame_meta()) {
            a.observe(m.seq, m.timestamp_ns, now, how);
        }
    }

    /// Parks on the futex in liveness-interval slices until a frame is ready, the producer is
    /// gone, the segment is damaged, or `deadline` passes.
    fn park_for_frames(&mut self, deadline: Option<Instant>) -> Result<FramesWait, WaitError> {
        let park = FutexWaiter::new(Duration::ZERO);
        loop {
            if self.is_truncated() {
                return Err(WaitError::Truncated);
            }
            let Some(slice) = park_slice(deadline, self.part.liveness_interval) else {
                return Ok(FramesWait::TimedOut);
            };
            match self
                .consumer
                .wait_readable(&park, Some(slice.as_nanos() as u64))
                .map_err(WaitError::Read)?
            {
                WaitOutcome::Ready | WaitOutcome::Woken => {
                    if self.frame_ready() {
                        return Ok(FramesWait::Ready);
                    }
                }
                WaitOutcome::TimedOut => {}
            }
            // Slow path only (a slice ended without frames): a truncated, abandoned or
            // destroyed segment ends the wait with an error instead of parking for ever.
            self.part.segment.check_health()?;
            if self.part.segment.ring().write_pos() != self.joined_at {
                self.seen_producer = true;
            }
            match self.part.segment.producer_state() {
                PeerState::Alive => self.seen_producer = true,
                PeerState::Absent if !self.seen_producer => {}
                PeerState::Absent | PeerState::Dead => {
                    if self.frame_ready() {
                        return Ok(FramesWait::Ready);
                    }
                    return Ok(FramesWait::EndOfStream);
                }
            }
        }
    }
}

/// How [`ShmConsumer::wait_for_frames`] waits ([`ShmConsumer::set_wait_mode`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WaitMode {
    /// Spin for the waiter's `spin`, then park on the futex; the producer's commit wakes a
    /// parked consumer (one futex syscall per commit while a consumer is parked).
    #[default]
    SpinThenPark,
    /// The wake-free wait for a periodic stream (an audio device's cycle): sleep on an absolute
    /// `CLOCK_MONOTONIC` timer until just before the next frame is due, poll for a short window
    /// around that time, and park on the futex only when the frame is late (an irregular
    /// stream, a miss). While it sleeps or polls the consumer has not announced itself, so the
    /// producer's commit makes **no syscall**. The due time comes from the frames' timestamps
    /// and the arrivals seen ([`voxring_core::ring::periodic`]). docs/wake-free.md has the
    /// protocol and the measurements.
    Periodic(Periodic),
}

/// The settings of [`WaitMode::Periodic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periodic {
    /// The frame period; `None`: one frame of the ring's `samples_per_frame` at its
    /// `sample_rate`.
    pub period: Option<Duration>,
    /// How long before a frame is due the timer fires, at least (the margin grows by itself
    /// when the timer wakes the consumer late, up to half a period). The poll window is this
    /// long on each side of the due time.
    pub early: Duration,
}

impl Default for Periodic {
    fn default() -> Self {
        Periodic {
            period: None,
            early: Duration::from_micros(20),
        }
    }
}

impl Drop for ShmConsumer {
    fn drop(&mut self) {
        // SAFETY: `consumer` is taken exactly once, here, and never touched again: the
        // remaining fields drop after this and do not use it.
        let consumer = unsafe { std::mem::ManuallyDrop::take(&mut self.consumer) };
        consumer.leave().wake(&self.part.waiter);
    }
}
