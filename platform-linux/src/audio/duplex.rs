//! Opening a device by name and running capture and playback together on one thread.

use core::sync::atomic::{AtomicBool, Ordering};

use alsa::Direction;

use super::alsa_pcm::{AlsaStream, MmapPreference, StreamError};
use super::synthetic::SyntheticDevice;
use super::{
    AudioError, CaptureSink, Granted, PlaybackSource, Sample, StreamParams, XrunCounts,
    monotonic_ns,
};

/// Which device to open.
///
/// ```
/// use voxring_linux::audio::StreamParams;
/// use voxring_linux::audio::duplex::DeviceSpec;
/// let p = StreamParams::DEFAULT;
/// assert_eq!(DeviceSpec::parse("auto", &p)?, DeviceSpec::Auto);
/// assert_eq!(
///     DeviceSpec::parse("synthetic:480", &p)?,
///     DeviceSpec::Synthetic { loopback_delay: Some(480) }
/// );
/// assert_eq!(DeviceSpec::parse("hw:0,0", &p)?, DeviceSpec::Alsa("hw:0,0".into()));
/// assert!(DeviceSpec::parse("", &p).is_err());
/// # Ok::<(), voxring_linux::audio::AudioError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// ALSA's `default` PCM (PipeWire on a desktop) if it opens for both directions, else the
    /// synthetic device with loopback.
    Auto,
    /// The synthetic device. `Some(d)`: its playback comes back in its capture `d` frames
    /// later; `None`: silent capture.
    Synthetic {
        /// Loopback delay in frames.
        loopback_delay: Option<u32>,
    },
    /// An ALSA PCM by name (`pipewire`, `default`, `hw:0,0`, `plughw:1`...), used for both
    /// directions.
    Alsa(String),
}

impl DeviceSpec {
    /// Parses a device name: `auto`, `synthetic` (loopback delayed by one buffer plus one
    /// period, like a real device), `synthetic:N` (loopback delayed by N frames),
    /// `synthetic:none` (silent capture), or any ALSA PCM name.
    pub fn parse(s: &str, params: &StreamParams) -> Result<DeviceSpec, AudioError> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "synthetic" => Ok(DeviceSpec::Synthetic {
                loopback_delay: Some(params.buffer_frames + params.period_frames),
            }),
            "synthetic:none" => Ok(DeviceSpec::Synthetic {
                loopback_delay: None,
            }),
            _ => match s.strip_prefix("synthetic:") {
                Some(n) => n
                    .parse::<u32>()
                    .ok()
                    .filter(|d| *d <= 10 * params.rate)
                    .map(|d| DeviceSpec::Synthetic {
                        loopback_delay: Some(d),
                    })
                    .ok_or_else(|| {
                        AudioError::InvalidParams(format!(
                            "'{s}': the synthetic loopback delay must be a number of frames up to \
                             10 s (synthetic:480), or synthetic:none"
                        ))
                    }),
                None if s.is_empty() => Err(AudioError::InvalidParams(
                    "empty device name: use auto, synthetic, or an ALSA PCM name (aplay -L)".into(),
                )),
                None => Ok(DeviceSpec::Alsa(s.to_owned())),
            },
        }
    }
}

/// A flag another thread sets to end [`Duplex::run`].
///
/// ```
/// use voxring_linux::audio::duplex::StopFlag;
/// static STOP: StopFlag = StopFlag::new();
/// assert!(!STOP.is_set());
/// STOP.request(); // from a signal handler or another thread
/// assert!(STOP.is_set());
/// ```
#[derive(Debug, Default)]
pub struct StopFlag(AtomicBool);

impl StopFlag {
    /// A flag that is not set.
    pub const fn new() -> Self {
        StopFlag(AtomicBool::new(false))
    }
    /// Asks the run to end (it ends within about one period).
    pub fn request(&self) {
        // Relaxed: the flag carries no data; the run only needs to see it eventually.
        self.0.store(true, Ordering::Relaxed);
    }
    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        // Relaxed: see `request`.
        self.0.load(Ordering::Relaxed)
    }
}

/// What one [`Duplex::run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Frames handed to the capture sink.
    pub capture_frames: u64,
    /// Frames taken from the playback source.
    pub playback_frames: u64,
    /// Playback frames filled with silence because the source had none.
    pub silence_frames: u64,
    /// xruns on each side during the run.
    pub xruns: XrunCounts,
    /// Times the loop woke up.
    pub wakeups: u64,
    /// Times the device did not answer within its wait timeout.
    pub timeouts: u64,
}

/// A run ends with an error when the capture delivers nothing for this long.
const STALL_NS: u64 = 3_000_000_000;

/// Poll descriptors we can wait on (capture + playback); plugins use one or two each.
const MAX_POLL_FDS: usize = 16;

/// Capture and playback of one ALSA PCM (or two), on one clock.
#[derive(Debug)]
pub struct AlsaDuplex<T: Sample> {
    /// The capture side.
    pub capture: AlsaStream<T>,
    /// The playback side.
    pub playback: AlsaStream<T>,
    linked: bool,
}

impl<T: Sample> AlsaDuplex<T> {
    /// Opens `name` for capture and playback with `params`.
    pub fn open(
        name: &str,
        params: &StreamParams,
        mmap: MmapPreference,
    ) -> Result<Self, AudioError> {
        Self::open_pair(name, name, params, mmap)
    }

    /// Opens `capture_name` for capture and `playback_name` for playback with `params`.
    pub fn open_pair(
        capture_name: &str,
        playback_name: &str,
        params: &StreamParams,
        mmap: MmapPreference,
    ) -> Result<Self, AudioError> {
        let playback = AlsaStream::open(playback_name, Direction::Playback, params, mmap)?;
        let capture = AlsaStream::open(capture_name, Direction::Capture, params, mmap)?;
        let (c, p) = (capture.granted(), playback.granted());
        if c.rate != p.rate || c.channels != p.channels {
            return Err(AudioError::NotGranted(format!(
                "capture and playback were granted different rates or channel counts (capture \
                 {} Hz x {}, playback {} Hz x {}): loopback needs both equal",
                c.rate, c.channels, p.rate, p.channels
            )));
        }
        // Start both on the same trigger where the device allows it (hw: devices on one card).
        let linked = capture.pcm().link(playback.pcm()).is_ok();
        Ok(AlsaDuplex {
            capture,
            playback,
            linked,
        })
    }

    /// Whether both directions are linked (start together in the driver).
    pub fn linked(&self) -> bool {
        self.linked
    }

    /// Fills `fds` with the poll descriptors of both directions; returns how many.
    fn poll_fds(&self, fds: &mut [libc::pollfd; MAX_POLL_FDS]) -> Result<usize, StreamError> {
        use alsa::poll::Descriptors;
        let nc = self.capture.pcm().count();
        let np = self.playback.pcm().count();
        if nc + np > MAX_POLL_FDS {
            return Err(StreamError {
                call: "snd_pcm_poll_descriptors_count",
                errno: libc::E2BIG,
                direction: Direction::Capture,
            });
        }
        let err = |dir| {
            move |e: alsa::Error| StreamError {
                call: e.func(),
                errno: e.errno(),
                direction: dir,
            }
        };
        let a = self
            .capture
            .pcm()
            .fill(&mut fds[..nc])
            .map_err(err(Direction::Capture))?;
        let b = self
            .playback
            .pcm()
            .fill(&mut fds[a..a + np])
            .map_err(err(Direction::Playback))?;
        Ok(a + b)
    }
}

/// A device open for capture and playback on one clock. Open one with [`open_duplex`].
///
/// ```
/// use voxring_linux::audio::alsa_pcm::MmapPreference;
/// use voxring_linux::audio::duplex::{DeviceSpec, Duplex, open_duplex};
/// use voxring_linux::audio::{AccessMode, StreamParams};
/// let spec = DeviceSpec::Synthetic { loopback_delay: Some(256) };
/// let (dev, label) = open_duplex::<f32>(&spec, &StreamParams::DEFAULT, MmapPreference::Auto)?;
/// assert!(matches!(dev, Duplex::Synthetic(_)));
/// assert_eq!(dev.capture_granted().mode, AccessMode::Synthetic);
/// assert!(label.starts_with("synthetic"), "{label}");
/// # Ok::<(), voxring_linux::audio::AudioError>(())
/// ```
#[derive(Debug)]
pub enum Duplex<T: Sample> {
    /// An ALSA PCM (plugin or hw).
    Alsa(Box<AlsaDuplex<T>>),
    /// The clocked synthetic device.
    Synthetic(Box<SyntheticDevice<T>>),
}

/// Opens `spec` for capture and playback of `T` samples with `params`.
///
/// `auto` tries ALSA's `default` PCM for both directions and falls back to the synthetic device
/// (loopback delayed by one buffer plus one period) when it does not open; the returned
/// string says which was chosen and why.
pub fn open_duplex<T: Sample>(
    spec: &DeviceSpec,
    params: &StreamParams,
    mmap: MmapPreference,
) -> Result<(Duplex<T>, String), AudioError> {
    params.validate()?;
    match spec {
        DeviceSpec::Alsa(name) => Ok((
            Duplex::Alsa(Box::new(AlsaDuplex::open(name, params, mmap)?)),
            format!("ALSA PCM '{name}'"),
        )),
        DeviceSpec::Synthetic { loopback_delay } => Ok((
            Duplex::Synthetic(Box::new(SyntheticDevice::new(params, *loopback_delay)?)),
            synthetic_label(*loopback_delay),
        )),
        DeviceSpec::Auto => match AlsaDuplex::open("default", params, mmap) {
            Ok(d) => Ok((
                Duplex::Alsa(Box::new(d)),
                "ALSA PCM 'default' (auto)".into(),
            )),
            Err(e) => {
                let delay = Some(params.buffer_frames + params.period_frames);
                Ok((
                    Duplex::Synthetic(Box::new(SyntheticDevice::new(params, delay)?)),
                    format!(
                        "{} (auto: ALSA 'default' did not open: {e})",
                        synthetic_label(delay)
                    ),
                ))
            }
        },
    }
}

fn synthetic_label(delay: Option<u32>) -> String {
    match delay {
        Some(d) => format!("synthetic (loopback delayed {d} frames)"),
        None => "synthetic (silent capture)".into(),
    }
}

impl<T: Sample> Duplex<T> {
    /// What the capture side granted.
    pub fn capture_granted(&self) -> Granted {
        match self {
            Duplex::Alsa(d) => d.capture.granted().clone(),
            Duplex::Synthetic(s) => s.granted(),
        }
    }

    /// What the playback side granted.
    pub fn playback_granted(&self) -> Granted {
        match self {
            Duplex::Alsa(d) => d.playback.granted().clone(),
            Duplex::Synthetic(s) => s.granted(),
        }
    }

    /// xruns since the device was opened.
    pub fn xruns(&self) -> XrunCounts {
        match self {
            Duplex::Alsa(d) => XrunCounts {
                capture: d.capture.xruns(),
                playback: d.playback.xruns(),
                playback_hidden: d.playback.hidden_xruns(),
            },
            Duplex::Synthetic(s) => s.xruns(),
        }
    }

    /// Runs the device until `stop` is set or `max_capture_frames` frames were captured: every
    /// period, the captured frames go to `sink` and `source` refills the playback buffer.
    ///
    /// The playback buffer is filled from `source` before the start, so the round trip of a
    /// loopback is one playback buffer plus the capture side's latency.
    ///
    /// Real-time safe: no allocation, lock or print; the only blocking calls are the waits on
    /// the device clock. Call it on the audio thread (see [`super::rt`]). An ALSA run ends
    /// with an error if the capture delivers nothing for 3 s (device gone or never linked).
    pub fn run<C: CaptureSink<T>, P: PlaybackSource<T>>(
        &mut self,
        sink: &mut C,
        source: &mut P,
        stop: &StopFlag,
        max_capture_frames: Option<u64>,
    ) -> Result<RunStats, StreamError> {
        let limit = max_capture_frames.unwrap_or(u64::MAX);
        let x0 = self.xruns();
        let mut st = RunStats::default();
        match self {
            Duplex::Alsa(d) => {
                let (c0, p0, s0) = (
                    d.capture.position(),
                    d.playback.position(),
                    d.playback.silence_frames(),
                );
                d.playback.prefill(source, d.capture.position())?;
                d.playback.start()?;
                if !d.linked {
                    d.capture.start()?;
                }
                let g = d.capture.granted();
                // Wait at most ~4 buffers (at least 20 ms) before checking `stop` again.
                let timeout_ms =
                    (4 * 1000 * u64::from(g.buffer_frames) / u64::from(g.rate)).max(20) as i32;
                // Both directions are polled: while PipeWire's session manager has linked only
                // one of them, the other must still be served.
                let mut fds = [libc::pollfd {
                    fd: -1,
                    events: 0,
                    revents: 0,
                }; MAX_POLL_FDS];
                let mut last_pos = d.capture.position();
                let mut last_progress = monotonic_ns();
                let result = loop {
                    if stop.is_set() || d.capture.position() - c0 >= limit {
                        break Ok(());
                    }
                    let now = monotonic_ns();
                    if d.capture.position() != last_pos {
                        last_pos = d.capture.position();
                        last_progress = now;
                    } else if now - last_progress > STALL_NS {
                        // The capture has not delivered a frame for seconds: the device is
                        // gone or was never connected (PipeWire: no link to a source).
                        break Err(StreamError {
                            call: "capture stalled",
                            errno: libc::ETIMEDOUT,
                            direction: Direction::Capture,
                        });
                    }
                    let n = match d.poll_fds(&mut fds) {
                        Ok(n) => n,
                        Err(e) => break Err(e),
                    };
                    match alsa::poll::poll(&mut fds[..n], timeout_ms) {
                        Ok(0) => {
                            st.timeouts += 1;
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) if e.errno() == libc::EINTR => continue,
                        Err(e) => {
                            break Err(StreamError {
                                call: e.func(),
                                errno: e.errno(),
                                direction: Direction::Capture,
                            });
                        }
                    }
                    st.wakeups += 1;
                    // Capture first, then refill the playback: a frame played now comes back
                    // after the frames already queued ahead of it.
                    if let Err(e) = d.capture.pump_capture(sink) {
                        break Err(e);
                    }
                    if let Err(e) = d.playback.pump_playback(source, d.capture.position()) {
                        break Err(e);
                    }
                };
                let _ = d.capture.stop();
                let _ = d.playback.stop();
                // Leave both prepared for another run.
                let _ = d.capture.pcm().prepare();
                let _ = d.playback.pcm().prepare();
                result?;
                st.capture_frames = d.capture.position() - c0;
                st.playback_frames = d.playback.position() - p0;
                st.silence_frames = d.playback.silence_frames() - s0;
            }
            Duplex::Synthetic(s) => {
                let (c0, p0, s0) = (
                    s.capture_position(),
                    s.playback_position(),
                    s.silence_frames(),
                );
                s.start();
                let period = u64::from(s.granted().period_frames);
                while !stop.is_set() && s.capture_position() - c0 < limit {
                    let left = (limit - (s.capture_position() - c0)).div_ceil(period);
                    s.run_due_at_most(sink, source, left.min(u64::from(u32::MAX)) as u32);
                    st.wakeups += 1;
                }
                st.capture_frames = s.capture_position() - c0;
                st.playback_frames = s.playback_position() - p0;
                st.silence_frames = s.silence_frames() - s0;
            }
        }
        let x1 = self.xruns();
        st.xruns = XrunCounts {
            capture: x1.capture - x0.capture,
            playback: x1.playback - x0.playback,
            playback_hidden: x1.playback_hidden - x0.playback_hidden,
        };
        Ok(st)
    }
}
