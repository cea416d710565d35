//! Audio I/O: ALSA with mmap access, PipeWire settings, and a clocked synthetic device.
//!
//! The shape, from the outside in:
//!
//! - [`DeviceSpec`] names a device (`auto`, `synthetic`, `synthetic:DELAY`, or an ALSA PCM name
//!   such as `pipewire`, `default`, `hw:0,0`); [`open_duplex`] opens it as a [`Duplex`] stream
//!   (capture and playback on one clock) with the [`StreamParams`] you ask for, and reports in
//!   [`Granted`] what the device actually gave.
//! - The real-time loop ([`Duplex::run`]) moves frames between the device and your code through
//!   two small traits over slices: a [`CaptureSink`] receives captured samples straight from the
//!   device's mmap area (`&[T]`), and a [`PlaybackSource`] writes samples straight into it
//!   (`&mut [T]`). A ring's write grant or read grant is the natural implementation: exactly one
//!   copy between the mmap area and a ring slot.
//! - xruns are detected, counted ([`XrunCounts`]), flagged ([`flags::XRUN`] on the first chunk
//!   after the gap) and recovered from without ending the stream.
//! - Nothing inside [`Duplex::run`] allocates, locks or prints: the tests run it under
//!   `assert_no_alloc`. It waits for the device (ALSA's poll, or `clock_nanosleep` to an absolute
//!   deadline for the synthetic device): that wait is the clock, not a blocking call on
//!   something else.
//!
//! [`loopback`] measures the round trip through a device the way `jack_iodelay` does.
//! [`pipewire`] applies and reads back PipeWire's quantum and rate.

mod alsa_messages;
pub mod alsa_pcm;
pub mod duplex;
pub mod loopback;
pub mod mixer;
pub mod pipewire;
pub mod ring_io;
pub mod rt;
pub mod synthetic;

use core::fmt;

pub use duplex::{DeviceSpec, Duplex, RunStats, StopFlag, open_duplex};

/// Flags carried on a chunk of frames ([`ChunkInfo::flags`]); the same bit values as
/// `voxring-core`'s frame flags, so a sink can copy them into a ring frame's metadata.
pub mod flags {
    /// An xrun just before this chunk. Capture: frames were lost (overrun), so the chunk is
    /// not contiguous with the one before it. Playback: the device played silence of its own
    /// (underrun) before this chunk reached it; the source's frames stay contiguous (the
    /// buffer is refilled from the source, see the ALSA stream's docs), they are heard late.
    pub const XRUN: u32 = 1 << 0;
    /// The stream was restarted before this chunk for a reason other than an xrun.
    pub const DISCONTINUITY: u32 = 1 << 1;
}

/// The sample formats voxring moves (signed 16-bit, signed 32-bit and 32-bit float,
/// native-endian, interleaved): voxring-core's one [`SampleFormat`], re-exported. What a device
/// needs to know of it is in [`SampleFormatExt`]; text is parsed by [`parse_sample_format`].
pub use voxring_core::SampleFormat;

/// What the audio devices need to know of a [`SampleFormat`].
///
/// ```
/// use voxring_linux::audio::{SampleFormat, SampleFormatExt, parse_sample_format};
///
/// let f = parse_sample_format("float_le")?;
/// assert_eq!(f, SampleFormat::F32);
/// assert_eq!(f.name(), "F32");
/// assert_eq!(f.alsa(), alsa::pcm::Format::float());
/// # Ok::<(), String>(())
/// ```
pub trait SampleFormatExt {
    /// The ALSA format of this sample format.
    fn alsa(self) -> alsa::pcm::Format;
    /// `S16`, `S32` or `F32`.
    fn name(self) -> &'static str;
}

impl SampleFormatExt for SampleFormat {
    fn alsa(self) -> alsa::pcm::Format {
        match self {
            SampleFormat::S16 => alsa::pcm::Format::s16(),
            SampleFormat::S32 => alsa::pcm::Format::s32(),
            SampleFormat::F32 => alsa::pcm::Format::float(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            SampleFormat::S16 => "S16",
            SampleFormat::S32 => "S32",
            SampleFormat::F32 => "F32",
        }
    }
}

/// Parses a sample format as people and ALSA write it: `S16`/`S16_LE`/`I16`, `S32`/`S32_LE`/
/// `I32`, `F32`/`FLOAT`/`FLOAT_LE`, in any case.
pub fn parse_sample_format(s: &str) -> Result<SampleFormat, String> {
    match s.to_ascii_uppercase().as_str() {
        "S16" | "S16_LE" | "I16" => Ok(SampleFormat::S16),
        "S32" | "S32_LE" | "I32" => Ok(SampleFormat::S32),
        "F32" | "FLOAT" | "FLOAT_LE" => Ok(SampleFormat::F32),
        _ => Err(format!("unknown sample format '{s}': use S16, S32 or F32")),
    }
}

/// A sample type the audio path can move: `i16`, `i32` or `f32`. It extends voxring-core's
/// [`voxring_core::Sample`] with what devices and tests need, so one bound `T: Sample` serves
/// both the ring and the device.
///
/// ```
/// use voxring_linux::audio::{Sample, SampleFormat};
///
/// fn describe<T: Sample>() -> (SampleFormat, T) {
///     (T::SAMPLE_FORMAT, T::from_f32(0.5))
/// }
/// assert_eq!(describe::<i16>(), (SampleFormat::S16, 16383));
/// ```
pub trait Sample:
    voxring_core::Sample + alsa::pcm::IoFormat + Default + PartialEq + Send + fmt::Debug
{
    /// The ring format of this type: voxring-core's [`voxring_core::Sample::FORMAT`] (named
    /// apart because ALSA's `IoFormat` has a `FORMAT` of its own). Not to be overridden.
    const SAMPLE_FORMAT: SampleFormat = <Self as voxring_core::Sample>::FORMAT;
    /// Silence.
    const SILENCE: Self;
    /// Converts from a float in -1.0..=1.0 (clamped).
    fn from_f32(v: f32) -> Self;
    /// Converts to a float in -1.0..=1.0.
    fn to_f32(self) -> f32;
    /// A test pattern value from 32 random bits that survives a float pipeline bit-exactly:
    /// all 16 bits for S16, a 24-bit-significant value for S32 and F32 (a 32-bit float holds 24
    /// bits of mantissa, so PipeWire's float graph keeps them exactly).
    fn from_bits(bits: u32) -> Self;
}

impl Sample for i16 {
    const SILENCE: Self = 0;
    fn from_f32(v: f32) -> Self {
        (v.clamp(-1.0, 1.0) * 32767.0) as i16
    }
    fn to_f32(self) -> f32 {
        f32::from(self) / 32768.0
    }
    fn from_bits(bits: u32) -> Self {
        (bits >> 16) as u16 as i16
    }
}

impl Sample for i32 {
    const SILENCE: Self = 0;
    fn from_f32(v: f32) -> Self {
        (f64::from(v.clamp(-1.0, 1.0)) * 2_147_483_647.0) as i32
    }
    fn to_f32(self) -> f32 {
        (f64::from(self) / 2_147_483_648.0) as f32
    }
    fn from_bits(bits: u32) -> Self {
        // Keep the top 24 bits: what a float graph carries exactly.
        (bits & 0xffff_ff00) as i32
    }
}

impl Sample for f32 {
    const SILENCE: Self = 0.0;
    fn from_f32(v: f32) -> Self {
        v.clamp(-1.0, 1.0)
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn from_bits(bits: u32) -> Self {
        // A multiple of 2^-23 in [-1, 1): exactly representable, and exactly converted to and
        // from the integer formats a graph may pass through.
        ((bits >> 8) as i32 - (1 << 23)) as f32 / 8_388_608.0
    }
}

/// What you ask a device for.
///
/// ```
/// use voxring_linux::audio::StreamParams;
/// let p = StreamParams { period_frames: 64, buffer_frames: 128, ..StreamParams::DEFAULT };
/// p.validate()?;
/// let bad = StreamParams { buffer_frames: 64, ..p }; // one period only
/// assert!(bad.validate().unwrap_err().to_string().contains("at least two periods"));
/// # Ok::<(), voxring_linux::audio::AudioError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamParams {
    /// Frames per second.
    pub rate: u32,
    /// Interleaved channels.
    pub channels: u32,
    /// Frames per period: the quantum, the unit the real-time loop wakes for.
    pub period_frames: u32,
    /// Frames in the device buffer (ALSA's buffer size); at least two periods.
    pub buffer_frames: u32,
}

impl StreamParams {
    /// 48 kHz, stereo, 128-frame periods, 256-frame buffer.
    pub const DEFAULT: StreamParams = StreamParams {
        rate: 48_000,
        channels: 2,
        period_frames: 128,
        buffer_frames: 256,
    };

    /// Checks the values make sense before any device sees them.
    pub fn validate(&self) -> Result<(), AudioError> {
        let bad = |why: &str| {
            Err(AudioError::InvalidParams(format!(
                "{why} (asked for rate {} Hz, {} channels, period {} frames, buffer {} frames)",
                self.rate, self.channels, self.period_frames, self.buffer_frames
            )))
        };
        if !(8_000..=768_000).contains(&self.rate) {
            return bad("the rate must be between 8000 and 768000 Hz");
        }
        if !(1..=64).contains(&self.channels) {
            return bad("channels must be between 1 and 64");
        }
        if !(8..=16_384).contains(&self.period_frames) {
            return bad("the period must be between 8 and 16384 frames");
        }
        if self.buffer_frames < 2 * self.period_frames || self.buffer_frames > 1 << 20 {
            return bad("the buffer must hold at least two periods (and at most 2^20 frames)");
        }
        Ok(())
    }
}

impl Default for StreamParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How the device's buffer is accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    /// alsa-lib's `snd_pcm_mmap_begin`/`commit` (`IO::mmap`): works on plugin PCMs
    /// (`pipewire`, `default`, `plug:`...) and on `hw:` devices.
    AlsaMmap,
    /// The kernel's buffer mapped directly into this process (`hw:` devices only).
    DirectMmap,
    /// The synthetic device's own buffer.
    Synthetic,
}

/// What one direction of a device actually granted, read back after configuring it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// Frames per second.
    pub rate: u32,
    /// Channels.
    pub channels: u32,
    /// Frames per period.
    pub period_frames: u32,
    /// Frames in the buffer.
    pub buffer_frames: u32,
    /// Sample format.
    pub format: SampleFormat,
    /// The access ALSA granted, as ALSA names it (`MMAP_INTERLEAVED` whenever we stream an
    /// ALSA device; `none (synthetic)` for the synthetic device).
    pub alsa_access: &'static str,
    /// How this process reaches the buffer.
    pub mode: AccessMode,
}

/// Describes one chunk handed to a [`CaptureSink`] or asked of a [`PlaybackSource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Position of the chunk's first frame in the stream, in frames since the stream started
    /// (frames lost in an xrun are not counted).
    pub sample_pos: u64,
    /// CLOCK_MONOTONIC nanoseconds when the chunk was handed over.
    pub timestamp_ns: u64,
    /// [`flags`] bits.
    pub flags: u32,
    /// The duplex's clock for this wake-up: the capture position once this wake-up's capture
    /// has been delivered. A capture chunk carries the position after the last chunk of its
    /// wake-up (when the application can act on it); a playback chunk, the capture position
    /// when it is pulled. A loopback measurement subtracts the value a frame was played with
    /// from the value it came back with: the capture frames between the two wake-ups.
    pub capture_pos: u64,
    /// Interleaved channels (the slice holds `frames * channels` samples).
    pub channels: u32,
}

/// Receives captured frames. Implementations run on the real-time thread: no allocation, no
/// locks, no printing.
pub trait CaptureSink<T: Sample> {
    /// Takes captured interleaved samples (`samples.len()` is a multiple of the channel count)
    /// and returns how many *frames* it took. Frames not taken stay in the device buffer and
    /// are offered again (if they are never taken, the device overruns: an xrun).
    fn push(&mut self, samples: &[T], info: &ChunkInfo) -> usize;
}

/// Provides frames to play. Implementations run on the real-time thread: no allocation, no
/// locks, no printing.
pub trait PlaybackSource<T: Sample> {
    /// Fills the front of `out` (interleaved) and returns how many *frames* it wrote. When it
    /// writes fewer than asked, the stream fills the rest of the period with silence.
    fn pull(&mut self, out: &mut [T], info: &ChunkInfo) -> usize;
}

/// A sink that throws the frames away (takes them all).
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardSink;

impl<T: Sample> CaptureSink<T> for DiscardSink {
    fn push(&mut self, samples: &[T], info: &ChunkInfo) -> usize {
        samples.len() / info.channels.max(1) as usize
    }
}

/// A source of silence (always provides all frames asked for).
///
/// ```
/// use voxring_linux::audio::{ChunkInfo, PlaybackSource, SilenceSource};
/// let info = ChunkInfo { sample_pos: 0, timestamp_ns: 0, flags: 0, capture_pos: 0, channels: 2 };
/// let mut out = [1.0f32; 8];
/// assert_eq!(SilenceSource.pull(&mut out, &info), 4); // 4 stereo frames
/// assert_eq!(out, [0.0; 8]);
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct SilenceSource;

impl<T: Sample> PlaybackSource<T> for SilenceSource {
    fn pull(&mut self, out: &mut [T], info: &ChunkInfo) -> usize {
        out.fill(T::SILENCE);
        out.len() / info.channels.max(1) as usize
    }
}

/// xruns counted on each side of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XrunCounts {
    /// Capture overruns.
    pub capture: u64,
    /// Playback underruns (the hidden ones included).
    pub playback: u64,
    /// Of `playback`, the underruns the device did not report (PipeWire's ALSA plugin pads
    /// silence instead; found by the buffer running empty, see [`alsa_pcm`]).
    pub playback_hidden: u64,
}

/// Errors of the audio path. The messages say what happened, why, and what to do.
///
/// ```
/// use voxring_linux::audio::{AudioError, StreamParams};
/// let e = StreamParams { rate: 1, ..StreamParams::DEFAULT }.validate().unwrap_err();
/// assert!(matches!(e, AudioError::InvalidParams(_)));
/// assert!(e.to_string().contains("between 8000 and 768000 Hz"));
/// ```
#[derive(Debug)]
pub enum AudioError {
    /// The stream parameters are out of range.
    InvalidParams(String),
    /// An ALSA call failed.
    Alsa {
        /// What we were doing.
        what: String,
        /// ALSA's error.
        source: alsa::Error,
    },
    /// The device granted something we cannot work with.
    NotGranted(String),
    /// The device stopped in a state we cannot recover from.
    Unrecoverable(String),
    /// A system call failed.
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl AudioError {
    pub(crate) fn alsa(what: impl Into<String>, source: alsa::Error) -> Self {
        AudioError::Alsa {
            what: what.into(),
            source,
        }
    }
}

impl fmt::Display for AudioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AudioError::InvalidParams(m) => write!(f, "invalid stream parameters: {m}"),
            AudioError::Alsa { what, source } => {
                write!(f, "{what}: {source}")?;
                if source.errno() == libc::ENOENT || source.errno() == libc::ENODEV {
                    write!(
                        f,
                        " (no such device: list devices with `aplay -L`; for PipeWire check that it \
                         runs and XDG_RUNTIME_DIR points at its socket)"
                    )?;
                } else if [libc::EHOSTDOWN, libc::ECONNREFUSED].contains(&source.errno()) {
                    write!(
                        f,
                        " (the sound server does not answer: is PipeWire running, and does \
                         XDG_RUNTIME_DIR point at its socket?)"
                    )?;
                } else if source.errno() == libc::EBUSY {
                    write!(f, " (the device is in use by another program)")?;
                }
                Ok(())
            }
            AudioError::NotGranted(m) => write!(f, "{m}"),
            AudioError::Unrecoverable(m) => write!(f, "{m}"),
            AudioError::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

/// The ALSA or OS error is part of the message (`Display`), so `source()` is `None`: a
/// reporter that prints the chain would show it twice.
impl std::error::Error for AudioError {}

/// CLOCK_MONOTONIC now, in nanoseconds: [`crate::clock::monotonic_ns`], re-exported here for
/// the callers that found it in this module first.
pub use crate::clock::monotonic_ns;
