//! One direction of an ALSA PCM with mmap access.
//!
//! [`AlsaStream::open`] configures the PCM for `MMAP_INTERLEAVED` access with the format,
//! rate, channels, period and buffer asked for and reads back what ALSA granted. The pumps
//! ([`AlsaStream::pump_capture`], [`AlsaStream::pump_playback`]) move every frame that is ready
//! between the device's mmap area and a [`CaptureSink`] / [`PlaybackSource`] with no copy of
//! their own: the sink reads the mmap area, the source writes into it.
//!
//! Two ways to reach the mmap area:
//! - alsa-lib's `snd_pcm_mmap_begin`/`snd_pcm_mmap_commit` (the `alsa` crate's `IO::mmap`):
//!   works on plugin PCMs such as `pipewire` and `default`, and on `hw:` devices.
//! - The kernel's buffer mapped straight into this process (`PCM::direct_mmap_*`): `hw:`
//!   devices only (on a plugin it fails with `SNDRV_PCM_IOCTL_CHANNEL_INFO` ENOTTY). Tried for
//!   `hw:` names; when it fails we fall back to alsa-lib's mmap and say so in
//!   [`Granted::mode`].
//!
//! xruns: a pump that finds the stream in XRUN (`EPIPE`) or suspended (`ESTRPIPE`) counts it,
//! re-prepares the stream, and flags the next chunk with [`flags::XRUN`]. Capture is started
//! again at once. Playback is left prepared with its start pending: the same pump (or, when
//! the xrun was found by [`AlsaStream::wait`], [`AlsaStream::force_xrun_recovery`] or in the
//! middle of a fill, the next one) fills the whole free buffer from the source as usual and
//! then starts the stream. So the frames that follow an xrun are the source's next ones, in
//! order: the device buffer is not padded with silence of our own, and a backlog the source
//! holds (e.g. a hub's output queue, fed by the capture that piled up during the stall) goes
//! into the buffer instead of standing in the queue above its target. Every caller pumps
//! after it waits (the duplex loop in [`super::duplex`], which `voxring serve` and `voxring
//! run` drive), so a prepared playback stream is always started by the next pump; a caller
//! that only waits must pump (or call [`AlsaStream::start`]) to get it playing again.
//! Linked streams (`hw:` capture and playback on one card) are prepared and started as a
//! group by ALSA: a playback xrun's restart starts the capture with it at the end of the
//! pump.
//!
//! Hidden underruns: a device that plays silence in place of a late client without reporting
//! it (no XRUN state, no `EPIPE`). The playback pump fills all free space on every wake-up, so
//! the free space it finds at the next one is what the device consumed since. Finding the
//! whole buffer consumed is not enough: a device takes the buffer a period (PipeWire: a graph
//! quantum) at a time, so a buffer full at the last wake-up is empty after `buffer / period`
//! cycles and silence is played only at the next one; a wake-up between the two refills it in
//! time. So the pump counts a hidden underrun only when the whole buffer was consumed, on a
//! device seen playing at its clock (it consumed part of the buffer between earlier wake-ups;
//! ALSA's unpaced `null` and `file` PCMs empty it at once, play no silence and are never
//! counted), and more than the buffer's duration plus one of the device's cycles has passed
//! since the buffer was full (a cycle: our period, or the most the device was seen taking at
//! once, over wake-ups less than half a period apart: PipeWire's graph quantum, 512 frames
//! at a time under a 128-frame period): by then the device has asked for more than the
//! buffer held, and what it did not get was silence. The device's time is, in a duplex, the
//! capture frames delivered since (the same clock: it stops when the device does, e.g. when the
//! hypervisor holds the whole VM, PipeWire included), and for playback alone CLOCK_MONOTONIC,
//! read before the free space and after the fill. The duplex count errs on the short side: a
//! late wake-up can only make the pump count less. Playback alone can count one that played
//! nothing: a pause of the whole VM longer than the buffer and a cycle stops PipeWire's clock
//! but not CLOCK_MONOTONIC (seen once in a 512 graph, before the underrun tests took their
//! device time from the recording); only a duplex (`run`, `serve`) is free of it.
//! Such an underrun is counted as a playback xrun, flagged like one, and also counted apart
//! ([`AlsaStream::hidden_xruns`]).
//!
//! PipeWire's ALSA plugin (0.3.65, Debian 12; the same in its current source) does report its
//! own: a graph cycle that finds fewer frames than the quantum pads the rest with silence and
//! sets the stream in XRUN (`EPIPE` at the next `avail`), so the pump counts it as reported
//! and this rule is its safety net. Through it, `snd_pcm_delay` is the graph's queued frames
//! plus the buffer's, less the time since the last cycle (never below zero), and
//! `snd_pcm_status` is alsa-lib's generic one (its timestamp is the call's): neither says
//! whether silence was played. A hardware device (stop threshold = buffer) is in XRUN as soon
//! as the buffer runs empty and reports `EPIPE`, so nothing is counted twice.

use alsa::direct::pcm::{MmapCapture, MmapDir, MmapIO, MmapPlayback};
use alsa::pcm::{Access, Frames, HwParams, PCM, State};
use alsa::{Direction, ValueOr};

use super::alsa_messages::AlsaMessages;
use super::{
    AccessMode, AudioError, CaptureSink, ChunkInfo, Granted, PlaybackSource, Sample,
    SampleFormatExt, StreamParams, flags, monotonic_ns,
};

/// Which way to reach the device buffer.
///
/// ```
/// use alsa::Direction;
/// use voxring_linux::audio::alsa_pcm::{AlsaStream, MmapPreference};
/// use voxring_linux::audio::{AccessMode, StreamParams};
/// // ALSA's `null` PCM needs no sound card; it is not `hw:`, so alsa-lib's mmap is used.
/// let s = AlsaStream::<f32>::open("null", Direction::Playback, &StreamParams::DEFAULT, MmapPreference::Auto)?;
/// assert_eq!(s.granted().mode, AccessMode::AlsaMmap);
/// # Ok::<(), voxring_linux::audio::AudioError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MmapPreference {
    /// Direct mmap for `hw:` names (falling back to alsa-lib's mmap), alsa-lib's mmap otherwise.
    #[default]
    Auto,
    /// alsa-lib's `snd_pcm_mmap_begin`/`commit` only.
    AlsaLib,
    /// Direct mmap only: fail if the device does not allow it.
    Direct,
}

/// An error on the real-time path. `Copy`, so reporting it never allocates; turn it into an
/// [`AudioError`] off the real-time thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamError {
    /// The ALSA or system call that failed.
    pub call: &'static str,
    /// Its errno.
    pub errno: i32,
    /// The direction of the stream.
    pub direction: Direction,
}

impl From<StreamError> for AudioError {
    fn from(e: StreamError) -> Self {
        let dir = match e.direction {
            Direction::Capture => "capture",
            Direction::Playback => "playback",
        };
        if e.call == "capture stalled" {
            return AudioError::Unrecoverable(
                "the capture delivered no frame for 3 s: the device is gone or its capture is \
                 not connected to anything (with PipeWire, check that a session manager such as \
                 WirePlumber runs and links the stream: pw-link -l)"
                    .into(),
            );
        }
        AudioError::Unrecoverable(format!(
            "the {dir} stream failed in {} ({}) and could not be recovered; the device may have \
             gone away (check that PipeWire or the sound card is still there) and the stream must \
             be reopened",
            e.call,
            std::io::Error::from_raw_os_error(e.errno)
        ))
    }
}

/// Direct mapping of the kernel buffer.
enum Direct<T> {
    Capture(MmapCapture<T>),
    Playback(MmapPlayback<T>),
}

/// Owns the direct mapping.
struct SendDirect<T>(Direct<T>);

// SAFETY: `MmapIO` is `!Send` only because of a `PhantomData<*const D>` marker; it owns its
// mappings of the PCM's status, control and data pages exclusively (nothing else in this process
// holds them), so moving it to another thread together with the `PCM` it belongs to is sound.
unsafe impl<T: Send> Send for SendDirect<T> {}

/// The non-empty areas of a direct mapping that `data_ptr` describes (one, or two where the
/// buffer wraps), as (first sample, frames): free frames for playback, captured ones for capture.
fn areas<S, D: MmapDir>(m: &MmapIO<S, D>) -> impl Iterator<Item = (*mut S, usize)> {
    let (a, b) = m.data_ptr();
    core::iter::once(a)
        .chain(b)
        .filter(|r| r.frames > 0)
        .map(|r| (r.ptr, r.frames as usize))
}

/// Where a stream is: the frames it has moved and the flags its next chunk carries.
#[derive(Debug, Default)]
struct Cursor {
    pos: u64,
    flags: u32,
}

impl Cursor {
    /// What the next chunk handed to a sink or source is.
    #[inline]
    fn chunk_info(&self, channels: usize, capture_pos: u64) -> ChunkInfo {
        ChunkInfo {
            sample_pos: self.pos,
            timestamp_ns: monotonic_ns(),
            flags: self.flags,
            capture_pos,
            channels: channels as u32,
        }
    }

    /// `frames` were moved: the position moves on, and the pending flags were delivered.
    #[inline]
    fn advance(&mut self, frames: usize) {
        self.flags = 0;
        self.pos += frames as u64;
    }
}

/// One direction (capture or playback) of an ALSA PCM opened for mmap access.
pub struct AlsaStream<T: Sample> {
    pcm: PCM,
    dir: Direction,
    name: String,
    granted: Granted,
    direct: Option<SendDirect<T>>,
    /// Why direct mmap was not used, when it was tried.
    direct_refusal: Option<String>,
    xruns: u64,
    /// Of `xruns`, the playback underruns the device did not report (see the module docs).
    hidden_xruns: u64,
    /// The last playback pump left the buffer full (so the next free space is consumption).
    full_after_pump: bool,
    /// When it did (CLOCK_MONOTONIC ns).
    filled_at_ns: u64,
    /// And the duplex's capture position then (0 for playback alone).
    filled_at_capture: u64,
    /// The device was seen consuming part of the buffer between two wake-ups: it plays at
    /// its clock (ALSA's null and file PCMs consume everything at once, and never latch it).
    paced: bool,
    /// The most the device was seen taking at once (see [`DeviceCycle`]).
    cycle: DeviceCycle,
    /// Playback was re-prepared after an xrun and waits for the next pump to refill it from
    /// the source and start it (see the module docs).
    start_pending: bool,
    at: Cursor,
    channels: usize,
    silence_frames: u64,
}

impl<T: Sample> std::fmt::Debug for AlsaStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlsaStream")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("granted", &self.granted)
            .field("xruns", &self.xruns)
            .field("pos", &self.at.pos)
            .finish_non_exhaustive()
    }
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::MMapInterleaved => "MMAP_INTERLEAVED",
        Access::MMapNonInterleaved => "MMAP_NONINTERLEAVED",
        Access::MMapComplex => "MMAP_COMPLEX",
        Access::RWInterleaved => "RW_INTERLEAVED",
        Access::RWNonInterleaved => "RW_NONINTERLEAVED",
    }
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Capture => "capture",
        Direction::Playback => "playback",
    }
}

impl<T: Sample> AlsaStream<T> {
    /// Opens `name` for `dir` with mmap interleaved access and configures it.
    ///
    /// Asks for exactly `params.channels` and the format of `T`; rate, period and buffer are
    /// set to the nearest the device allows, and what it granted is in [`Self::granted`].
    /// The stream is left prepared, not started.
    pub fn open(
        name: &str,
        dir: Direction,
        params: &StreamParams,
        mmap: MmapPreference,
    ) -> Result<Self, AudioError> {
        params.validate()?;
        let d = dir_name(dir);
        // alsa-lib's own lines about a missing card go into our error, not to stderr.
        let said = AlsaMessages::capture();
        let pcm = PCM::new(name, dir, false).map_err(|e| {
            AudioError::alsa(
                format!("opening ALSA PCM '{name}' for {d}{}", said.first()),
                e,
            )
        })?;
        drop(said);
        {
            let hwp = HwParams::any(&pcm).map_err(|e| {
                AudioError::alsa(format!("reading the {d} parameters of '{name}'"), e)
            })?;
            hwp.set_access(Access::MMapInterleaved).map_err(|e| {
                AudioError::alsa(
                    format!(
                        "'{name}' does not offer MMAP_INTERLEAVED access for {d} (voxring needs \
                         mmap; try the 'plug:' or 'pipewire' PCM in front of it)"
                    ),
                    e,
                )
            })?;
            hwp.set_format(T::SAMPLE_FORMAT.alsa()).map_err(|e| {
                AudioError::alsa(
                    format!(
                        "'{name}' does not take {} samples for {d}; ask for another format or put \
                         'plug:' in front of the device",
                        T::SAMPLE_FORMAT.name()
                    ),
                    e,
                )
            })?;
            hwp.set_channels(params.channels).map_err(|e| {
                let min = hwp.get_channels_min().unwrap_or(0);
                let max = hwp.get_channels_max().unwrap_or(0);
                AudioError::alsa(
                    format!(
                        "'{name}' cannot {d} {} channels (it allows {min}..={max})",
                        params.channels
                    ),
                    e,
                )
            })?;
            hwp.set_rate_near(params.rate, ValueOr::Nearest)
                .map_err(|e| AudioError::alsa(format!("setting the {d} rate of '{name}'"), e))?;
            hwp.set_period_size_near(Frames::from(params.period_frames), ValueOr::Nearest)
                .map_err(|e| AudioError::alsa(format!("setting the {d} period of '{name}'"), e))?;
            hwp.set_buffer_size_near(Frames::from(params.buffer_frames))
                .map_err(|e| AudioError::alsa(format!("setting the {d} buffer of '{name}'"), e))?;
            pcm.hw_params(&hwp).map_err(|e| {
                AudioError::alsa(format!("applying the {d} parameters to '{name}'"), e)
            })?;
        }
        let granted = read_granted::<T>(&pcm, name, d)?;
        if granted.period_frames == 0 || granted.buffer_frames < granted.period_frames {
            return Err(AudioError::NotGranted(format!(
                "'{name}' granted a period of {} frames and a buffer of {} frames for {d}: \
                 unusable (the buffer must hold at least one period)",
                granted.period_frames, granted.buffer_frames
            )));
        }
        {
            let swp = pcm.sw_params_current().map_err(|e| {
                AudioError::alsa(
                    format!("reading the {d} software parameters of '{name}'"),
                    e,
                )
            })?;
            let boundary = swp
                .get_boundary()
                .map_err(|e| AudioError::alsa("reading the ALSA boundary", e))?;
            // We start both directions explicitly (never on a fill level), wake per period, and
            // let ALSA stop on a full (capture) or empty (playback) buffer: that is the xrun we
            // detect and recover from.
            swp.set_start_threshold(boundary)
                .and_then(|_| swp.set_avail_min(Frames::from(granted.period_frames)))
                .and_then(|_| swp.set_stop_threshold(Frames::from(granted.buffer_frames)))
                .and_then(|_| pcm.sw_params(&swp))
                .map_err(|e| {
                    AudioError::alsa(
                        format!("applying the {d} software parameters to '{name}'"),
                        e,
                    )
                })?;
        }
        let mut granted = granted;
        let mut direct = None;
        let mut direct_refusal = None;
        let try_direct = match mmap {
            MmapPreference::AlsaLib => false,
            MmapPreference::Direct => true,
            MmapPreference::Auto => name.starts_with("hw:") || name == "hw",
        };
        if try_direct {
            let r = match dir {
                Direction::Capture => pcm.direct_mmap_capture::<T>().map(Direct::Capture),
                Direction::Playback => pcm.direct_mmap_playback::<T>().map(Direct::Playback),
            };
            match r {
                Ok(m) => {
                    direct = Some(SendDirect(m));
                    granted.mode = AccessMode::DirectMmap;
                }
                Err(e) if mmap == MmapPreference::Direct => {
                    return Err(AudioError::alsa(
                        format!(
                            "mapping the kernel buffer of '{name}' directly for {d} (direct mmap \
                             works on hw: devices only; use the alsa-lib mmap path for plugins)"
                        ),
                        e,
                    ));
                }
                Err(e) => direct_refusal = Some(format!("{e}")),
            }
        }
        let channels = granted.channels as usize;
        Ok(AlsaStream {
            pcm,
            dir,
            name: name.to_owned(),
            granted,
            direct,
            direct_refusal,
            xruns: 0,
            hidden_xruns: 0,
            full_after_pump: false,
            filled_at_ns: 0,
            filled_at_capture: 0,
            paced: false,
            cycle: DeviceCycle::default(),
            start_pending: false,
            at: Cursor::default(),
            channels,
            silence_frames: 0,
        })
    }

    /// What the device granted.
    pub fn granted(&self) -> &Granted {
        &self.granted
    }

    /// The device name this stream was opened with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why direct mmap was not used although it was tried (`None` when it was used or not tried).
    pub fn direct_refusal(&self) -> Option<&str> {
        self.direct_refusal.as_deref()
    }

    /// The underlying PCM (for polling, linking, status).
    pub fn pcm(&self) -> &PCM {
        &self.pcm
    }

    /// xruns detected and recovered so far (the hidden ones included).
    pub fn xruns(&self) -> u64 {
        self.xruns
    }

    /// Of [`Self::xruns`], the playback underruns the device did not report: the last wake-up
    /// filled the buffer, and by this one the device had consumed all of it and asked for more
    /// (more than the buffer's duration plus a period of its time had passed): it played
    /// silence without saying so (see the module docs).
    pub fn hidden_xruns(&self) -> u64 {
        self.hidden_xruns
    }

    /// Frames moved so far (sink/source position).
    pub fn position(&self) -> u64 {
        self.at.pos
    }

    /// Playback frames of silence written because the source had none (an xrun adds none: the
    /// buffer is refilled from the source).
    pub fn silence_frames(&self) -> u64 {
        self.silence_frames
    }

    /// Starts the stream. Real-time safe.
    pub fn start(&mut self) -> Result<(), StreamError> {
        self.start_pending = false;
        self.pcm.start().map_err(|e| self.err(e))
    }

    /// Whether playback was re-prepared after an xrun and waits for the next pump to refill
    /// and start it (see the module docs).
    pub fn start_pending(&self) -> bool {
        self.start_pending
    }

    /// Stops the stream at once, dropping pending frames.
    pub fn stop(&mut self) -> Result<(), StreamError> {
        self.full_after_pump = false;
        self.start_pending = false;
        self.pcm.drop().map_err(|e| self.err(e))
    }

    fn err(&self, e: alsa::Error) -> StreamError {
        StreamError {
            call: e.func(),
            errno: e.errno(),
            direction: self.dir,
        }
    }

    /// Waits until the device has at least a period ready (or `timeout_ms` passes); true when
    /// ready. An xrun found while waiting is recovered and reported as ready, so the next pump
    /// sees it (a playback stream is then prepared, and the next pump refills and starts it).
    /// Real-time safe: this is the wait on the device's clock.
    pub fn wait(&mut self, timeout_ms: u32) -> Result<bool, StreamError> {
        match self.pcm.wait(Some(timeout_ms)) {
            Ok(ready) => Ok(ready),
            Err(e) => {
                self.recover(e)?;
                Ok(true)
            }
        }
    }

    /// Runs the xrun recovery exactly as if the device had reported an xrun: counts it, flags
    /// the next chunk [`flags::XRUN`] and re-prepares the stream; capture is started again at
    /// once, playback by the next pump, after it refilled the buffer from the source (see the
    /// module docs). For devices that cannot be made to xrun on demand (ALSA's unpaced `null`
    /// and `file` PCMs, used by the tests), and to resynchronise a stream deliberately.
    /// Real-time safe.
    pub fn force_xrun_recovery(&mut self) -> Result<(), StreamError> {
        self.recover(alsa::Error::new("force_xrun_recovery", libc::EPIPE))
    }

    /// Counts an xrun (or suspend) and restarts the stream; other errors are returned.
    fn recover(&mut self, e: alsa::Error) -> Result<(), StreamError> {
        let errno = e.errno().abs();
        if errno == libc::ESTRPIPE {
            // Suspended (system sleep): try to resume, else prepare.
            loop {
                match self.pcm.resume() {
                    Ok(()) => break,
                    Err(r) if r.errno().abs() == libc::EAGAIN => {
                        // The device is still waking up; ALSA's documented wait is a short sleep.
                        let _ = rustix::thread::nanosleep(&rustix::time::Timespec {
                            tv_sec: 0,
                            tv_nsec: 1_000_000,
                        });
                    }
                    Err(_) => break,
                }
            }
        } else if errno != libc::EPIPE {
            return Err(self.err(e));
        }
        self.xruns += 1;
        self.at.flags |= flags::XRUN;
        self.restart()
    }

    /// The frames ready to move (`avail_update`); `None` after an xrun it found and recovered.
    fn avail_or_recover(&mut self) -> Result<Option<usize>, StreamError> {
        match self.pcm.avail_update() {
            Ok(n) => Ok(Some(n as usize)),
            Err(e) => self.recover(e).map(|()| None),
        }
    }

    /// With a direct mapping: when the kernel's status says xrun, or the buffer holds more than
    /// it can (the pointers jumped), counts an xrun, flags the next chunk and re-prepares
    /// (capture started again, playback left for its pump to refill and start); true when it
    /// did.
    fn restarted_after_direct_xrun(&mut self) -> Result<bool, StreamError> {
        fn broken<S, D: MmapDir>(m: &MmapIO<S, D>) -> bool {
            m.status().state() == State::XRun || m.avail() > m.buffer_size()
        }
        let xrun = match &self.direct {
            Some(SendDirect(Direct::Capture(m))) => broken(m),
            Some(SendDirect(Direct::Playback(m))) => broken(m),
            None => false,
        };
        if xrun {
            self.xruns += 1;
            self.at.flags |= flags::XRUN;
            self.restart()?;
        }
        Ok(xrun)
    }

    /// Re-prepares after an xrun. Capture starts again at once; playback is left prepared with
    /// its start pending, for the next pump to refill from the source and start.
    fn restart(&mut self) -> Result<(), StreamError> {
        self.full_after_pump = false;
        self.pcm.prepare().map_err(|e| self.err(e))?;
        if self.dir == Direction::Playback {
            self.start_pending = true;
            return Ok(());
        }
        self.pcm.start().map_err(|e| self.err(e))
    }

    /// Starts playback if an xrun's recovery left it prepared (after the pump refilled it).
    fn start_if_pending(&mut self) -> Result<(), StreamError> {
        if self.start_pending {
            self.start()?;
        }
        Ok(())
    }

    /// Moves every captured frame that is ready into `sink`, straight from the mmap area.
    /// Returns the frames moved. An xrun is counted, recovered, and flagged on the next chunk.
    /// Real-time safe: no allocation, lock, print or blocking call.
    pub fn pump_capture<S: CaptureSink<T>>(&mut self, sink: &mut S) -> Result<usize, StreamError> {
        debug_assert_eq!(self.dir, Direction::Capture);
        if self.direct.is_some() {
            return self.pump_capture_direct(sink);
        }
        let Some(avail) = self.avail_or_recover()? else {
            return Ok(0);
        };
        let ch = self.channels;
        let mut moved = 0usize;
        let wake_end = self.at.pos + avail as u64;
        while moved < avail {
            let info = self.at.chunk_info(ch, wake_end);
            // SAFETY: the format of `T` was set and verified in `open`, and no other `IO` of
            // this PCM exists (we create one per call and drop it before the next).
            let io = unsafe { self.pcm.io_unchecked::<T>() };
            let mut took = 0usize;
            let r = io.mmap(avail - moved, |buf| {
                let frames = buf.len() / ch;
                took = sink.push(&buf[..frames * ch], &info).min(frames);
                took
            });
            drop(io);
            match r {
                Ok(_) => {}
                Err(e) => {
                    self.recover(e)?;
                    return Ok(moved);
                }
            }
            if took == 0 {
                break;
            }
            self.at.advance(took);
            moved += took;
        }
        Ok(moved)
    }

    fn pump_capture_direct<S: CaptureSink<T>>(
        &mut self,
        sink: &mut S,
    ) -> Result<usize, StreamError> {
        if self.restarted_after_direct_xrun()? {
            return Ok(0);
        }
        let ch = self.channels;
        let Some(SendDirect(Direct::Capture(m))) = &mut self.direct else {
            return Ok(0);
        };
        let mut moved = 0usize;
        let wake_end = self.at.pos + areas(m).map(|(_, frames)| frames as u64).sum::<u64>();
        for (ptr, frames) in areas(m) {
            let info = self.at.chunk_info(ch, wake_end);
            // SAFETY: `data_ptr` describes captured frames of the mapped kernel buffer
            // (`frames * channels` samples) that the device will not overwrite until we commit.
            let s = unsafe { core::slice::from_raw_parts(ptr, frames * ch) };
            let took = sink.push(s, &info).min(frames);
            m.commit(took as Frames);
            self.at.advance(took);
            moved += took;
            if took < frames {
                break;
            }
        }
        Ok(moved)
    }

    /// Fills all free space of the playback buffer from `source`, straight into the mmap area
    /// (silence where the source has nothing). Returns the frames written. An xrun is counted
    /// and flagged on the next chunk; the stream is re-prepared, its whole buffer filled from
    /// `source` and started again (also when an earlier call left its start pending). Real-time
    /// safe.
    ///
    /// `capture_pos` is the duplex's clock for [`ChunkInfo::capture_pos`]: the frames the
    /// capture side has delivered so far (0 for playback alone).
    pub fn pump_playback<S: PlaybackSource<T>>(
        &mut self,
        source: &mut S,
        capture_pos: u64,
    ) -> Result<usize, StreamError> {
        debug_assert_eq!(self.dir, Direction::Playback);
        if self.direct.is_some() {
            return self.pump_playback_direct(source, capture_pos);
        }
        // Before the free space is read: the time since the buffer was full errs short.
        let now = monotonic_ns();
        let avail = match self.avail_or_recover()? {
            Some(n) => n,
            // Recovered from an xrun: the stream is prepared, its whole buffer free; fill it
            // from the source below and start it.
            None => self.pcm.avail_update().map_err(|e| self.err(e))? as usize,
        };
        let g = &self.granted;
        let (buffer, period) = (g.buffer_frames as usize, g.period_frames as usize);
        let device_frames = frames_since_fill(
            (self.filled_at_capture, capture_pos),
            now.saturating_sub(self.filled_at_ns),
            g.rate,
        );
        if self.full_after_pump && avail > 0 && avail < buffer {
            self.paced = true;
        }
        if self.full_after_pump && avail > 0 {
            self.cycle
                .consumed(avail.min(buffer), device_frames, period);
        }
        let unit = period.max(self.cycle.most);
        if self.full_after_pump && hidden_underrun(self.paced, avail, buffer, unit, device_frames) {
            // Full at the last wake-up, empty now, the device asked for more than it held
            // since, and no xrun reported: it played silence in our place without saying so.
            self.xruns += 1;
            self.hidden_xruns += 1;
            self.at.flags |= flags::XRUN;
        }
        self.full_after_pump = false;
        let ch = self.channels;
        let mut moved = 0usize;
        while moved < avail {
            let info = self.at.chunk_info(ch, capture_pos);
            // SAFETY: the format of `T` was set and verified in `open`, and no other `IO` of
            // this PCM exists (we create one per call and drop it before the next).
            let io = unsafe { self.pcm.io_unchecked::<T>() };
            let mut got = 0usize;
            let mut wrote = 0usize;
            let r = io.mmap(avail - moved, |buf| {
                let frames = buf.len() / ch;
                got = source.pull(&mut buf[..frames * ch], &info).min(frames);
                buf[got * ch..].fill(T::SILENCE);
                wrote = frames;
                frames
            });
            drop(io);
            if let Err(e) = r {
                // Prepared again with its start pending: the next pump refills and starts it.
                self.recover(e)?;
                return Ok(moved);
            }
            if wrote == 0 {
                break;
            }
            self.at.advance(got);
            self.silence_frames += (wrote - got) as u64;
            moved += wrote;
        }
        self.full_after_pump = moved >= avail;
        self.filled_at_ns = monotonic_ns();
        self.filled_at_capture = capture_pos;
        self.start_if_pending()?;
        Ok(moved)
    }

    fn pump_playback_direct<S: PlaybackSource<T>>(
        &mut self,
        source: &mut S,
        capture_pos: u64,
    ) -> Result<usize, StreamError> {
        // After an xrun the stream is prepared (its whole buffer free) and filled below.
        self.restarted_after_direct_xrun()?;
        let ch = self.channels;
        let Some(SendDirect(Direct::Playback(m))) = &mut self.direct else {
            return Ok(0);
        };
        let mut moved = 0usize;
        for (ptr, frames) in areas(m) {
            let info = self.at.chunk_info(ch, capture_pos);
            // SAFETY: `data_ptr` describes free frames of the mapped kernel buffer
            // (`frames * channels` samples) that the device will not read until we commit.
            let s = unsafe { core::slice::from_raw_parts_mut(ptr, frames * ch) };
            let got = source.pull(s, &info).min(frames);
            s[got * ch..].fill(T::SILENCE);
            m.commit(frames as Frames);
            self.at.advance(got);
            self.silence_frames += (frames - got) as u64;
            moved += frames;
        }
        self.start_if_pending()?;
        Ok(moved)
    }

    /// Fills the whole playback buffer from `source` before the stream starts.
    pub fn prefill<S: PlaybackSource<T>>(
        &mut self,
        source: &mut S,
        capture_pos: u64,
    ) -> Result<usize, StreamError> {
        self.pump_playback(source, capture_pos)
    }
}

/// Whether a playback buffer that was full `device_frames` of the device's time ago and has
/// `avail` of `buffer` frames free now ran empty and silence was played unreported: the device
/// plays at its clock (`paced`: seen consuming part of the buffer before), consumed all of it,
/// and more than `buffer + unit` frames of its time have passed. A device takes `unit` frames
/// per cycle (our period, or more: PipeWire's graph quantum), one cycle every `unit` frames,
/// the first within `unit` frames of the fill; so in that time it asked for more than
/// `buffer` frames: the rest was silence. Less (the buffer merely found empty) says nothing:
/// the next cycle may not have come. An unpaced PCM (ALSA's null and file) empties the buffer
/// at once without playing silence: never counted.
fn hidden_underrun(
    paced: bool,
    avail: usize,
    buffer: usize,
    unit: usize,
    device_frames: u64,
) -> bool {
    paced && avail >= buffer && device_frames > (buffer + unit) as u64
}

/// The most a playback device was seen taking in one cycle: what it consumed over wake-ups
/// less than half a period of its time apart counts as one burst. PipeWire's plugin takes a
/// graph quantum per cycle, which can be several of our periods: a 512-frame graph under a
/// 128-frame period takes 512 at once, seen as up to four wake-ups within a fraction of a
/// millisecond. Wake-ups of separate cycles that jitter closer together only make it larger,
/// and [`hidden_underrun`] count less.
#[derive(Debug, Default)]
struct DeviceCycle {
    /// The largest burst so far (0 before the first).
    most: usize,
    /// The current burst so far.
    burst: usize,
}

impl DeviceCycle {
    /// `frames` consumed since the buffer was full, `device_frames` of the device's time ago.
    fn consumed(&mut self, frames: usize, device_frames: u64, period: usize) {
        let same_burst = device_frames < (period / 2) as u64;
        self.burst = if same_burst {
            self.burst + frames
        } else {
            frames
        };
        self.most = self.most.max(self.burst);
    }
}

/// The device's time since the playback buffer was full, in frames. In a duplex
/// (`capture.1 > 0`), the capture frames delivered since (`capture.1 - capture.0`): the
/// device's own clock, which stops when the device does (a hypervisor holding the whole VM,
/// PipeWire included, stops the graph's clock too; our CLOCK_MONOTONIC runs on, and a buffer
/// found empty after such a pause was not played out). Capture lost in an overrun only makes
/// it shorter. Playback alone: `played_ns` of CLOCK_MONOTONIC at `rate`.
fn frames_since_fill(capture: (u64, u64), played_ns: u64, rate: u32) -> u64 {
    if capture.1 > 0 {
        capture.1.saturating_sub(capture.0)
    } else {
        (u128::from(played_ns) * u128::from(rate) / 1_000_000_000) as u64
    }
}

fn read_granted<T: Sample>(pcm: &PCM, name: &str, d: &str) -> Result<Granted, AudioError> {
    let e = |e| AudioError::alsa(format!("reading back the {d} parameters of '{name}'"), e);
    let hwp = pcm.hw_params_current().map_err(e)?;
    let access = hwp.get_access().map_err(e)?;
    let format = hwp.get_format().map_err(e)?;
    if format != T::SAMPLE_FORMAT.alsa() {
        return Err(AudioError::NotGranted(format!(
            "'{name}' granted {format} for {d} although {} was set",
            T::SAMPLE_FORMAT.name()
        )));
    }
    Ok(Granted {
        rate: hwp.get_rate().map_err(e)?,
        channels: hwp.get_channels().map_err(e)?,
        period_frames: hwp.get_period_size().map_err(e)? as u32,
        buffer_frames: hwp.get_buffer_size().map_err(e)? as u32,
        format: T::SAMPLE_FORMAT,
        alsa_access: access_name(access),
        mode: AccessMode::AlsaMmap,
    })
}

#[cfg(test)]
mod tests {
    use super::{DeviceCycle, frames_since_fill, hidden_underrun};

    #[test]
    fn a_cycle_seen_in_pieces_is_one_cycle() {
        // Wake-ups through the headless PipeWire at a 512-frame graph, period 128 (consumed
        // frames and the device's frames since the fill before it): one cycle's 512 frames
        // seen as four wake-ups 0.0-0.1 ms apart, then whole cycles 10.7 ms apart.
        let mut c = DeviceCycle::default();
        for (frames, since) in [
            (512, 500),
            (128, 505),
            (128, 0),
            (128, 0),
            (128, 0),
            (512, 511),
        ] {
            c.consumed(frames, since, 128);
        }
        assert_eq!(c.most, 512);
        // A 128-frame graph, one wake-up per cycle; a late one sees two cycles' worth.
        let mut c = DeviceCycle::default();
        for (frames, since) in [(128, 128), (128, 127), (256, 250), (128, 70), (128, 128)] {
            c.consumed(frames, since, 128);
        }
        assert_eq!(c.most, 256);
    }

    #[test]
    fn a_device_that_takes_the_whole_buffer_per_cycle_gets_a_cycle_more() {
        // PipeWire's graph at 512 frames under a 128-frame period and a 512-frame buffer:
        // every cycle takes the whole buffer, so found empty 9.3 or 20 ms after the fill is in
        // time (the next cycle is due up to 21.3 ms after it); the period-based bound (13.3 ms)
        // counted it, and the headless PipeWire's monitor had no silence there (docs/run.md).
        let ms = |ms: f64| frames_since_fill((0, 0), (ms * 1e6) as u64, 48_000);
        let unit = 512;
        assert!(!hidden_underrun(true, 512, 512, unit, ms(9.3)));
        assert!(!hidden_underrun(true, 512, 512, unit, ms(20.0)));
        assert!(
            hidden_underrun(true, 512, 512, 128, ms(20.0)),
            "the former bound"
        );
        assert!(hidden_underrun(true, 512, 512, unit, ms(21.5)));
    }

    #[test]
    fn an_empty_buffer_is_a_hidden_underrun_only_once_the_device_asked_for_more() {
        // Buffer 256, period 128 at 48 kHz: 5.33 ms, and 8 ms (384 frames) with the period.
        let ms = |ms: f64| frames_since_fill((0, 0), (ms * 1e6) as u64, 48_000);
        assert!(hidden_underrun(true, 256, 256, 128, ms(20.0)));
        assert!(hidden_underrun(true, 300, 256, 128, ms(8.1)));
        // Found empty 4.5 or 6.5 ms after it was full (the headless PipeWire played no silence
        // then, docs/run.md): the third quantum was not due yet. The former rule (3/4 of the
        // buffer's duration) counted both.
        assert!(!hidden_underrun(true, 256, 256, 128, ms(4.5)));
        assert!(!hidden_underrun(true, 256, 256, 128, ms(6.5)));
        // Exactly buffer + period: not more than the buffer was asked for yet.
        assert!(!hidden_underrun(true, 256, 256, 128, ms(8.0)));
        // Not empty, or an unpaced device.
        assert!(!hidden_underrun(true, 255, 256, 128, ms(20.0)));
        assert!(!hidden_underrun(false, 256, 256, 128, ms(20.0)));
    }

    #[test]
    fn in_a_duplex_the_device_clock_is_the_capture() {
        // 50 ms by our clock, but the capture delivered only two quanta since the fill: the
        // device's clock stood still (the whole VM held): not counted.
        let paused = frames_since_fill((1000, 1256), 50_000_000, 48_000);
        assert_eq!(paused, 256);
        assert!(!hidden_underrun(true, 256, 256, 128, paused));
        // Four quanta captured since: the device asked for more than the buffer held.
        let played = frames_since_fill((1000, 1512), 1_000_000, 48_000);
        assert!(hidden_underrun(true, 256, 256, 128, played));
        // Playback alone: the monotonic clock.
        assert_eq!(frames_since_fill((0, 0), 10_000_000, 48_000), 480);
    }
}
