//! The audio path into and out of `voxring-core` rings, with one copy: mmap area -> ring slot
//! ([`RingSink`]) and ring slot -> mmap area ([`RingSource`]).
//!
//! A ring frame holds `samples_per_frame` frames of audio (the ring's unit); a device chunk is
//! whatever the device has ready. Both adapters move whole ring frames only, so the device's
//! buffer must be a multiple of `samples_per_frame` (checked when they are made): every chunk
//! then starts on a ring-frame boundary, and nothing is staged. The usual set-up is
//! `samples_per_frame == period`, one ring frame per device period.
//!
//! ```no_run
//! # use voxring_linux::audio::{*, ring_io::*, alsa_pcm::MmapPreference};
//! # fn demo(capture_ring: &mut voxring_core::Producer, playback_ring: &mut voxring_core::Consumer,
//! #         waiter: &voxring_linux::futex::FutexWaiter) -> Result<(), AudioError> {
//! let params = StreamParams::DEFAULT; // 128-frame periods; rings of 128-sample frames
//! let (mut dev, _label) = open_duplex::<f32>(&DeviceSpec::Auto, &params, MmapPreference::Auto)?;
//! let mut sink = RingSink::<f32, _>::new(capture_ring, waiter, &dev.capture_granted())?;
//! let mut source = RingSource::<f32, _>::new(playback_ring, waiter, &dev.playback_granted())?;
//! let stop = StopFlag::new();
//! // On the audio thread (after rt::promote_current_thread):
//! let stats = dev.run(&mut sink, &mut source, &stop, None).map_err(AudioError::from)?;
//! # Ok(()) }
//! ```

use core::marker::PhantomData;

use voxring_core::{Consumer, FrameFlags, Producer, ReadError, ReleaseError, Waiter};

use super::{
    AudioError, CaptureSink, ChunkInfo, Granted, PlaybackSource, Sample, SampleFormatExt, flags,
};

/// What a ring adapter counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingIoStats {
    /// Ring frames written or read.
    pub ring_frames: u64,
    /// Times the ring had no room (capture: the frames stayed in the device) or nothing to
    /// play (playback: the device played silence).
    pub starved: u64,
    /// Lossy rings, playback: frames this consumer lost because the producer lapped it, or
    /// that were overwritten while being copied out (their samples were played anyway).
    pub lost: u64,
    /// Grants refused for another reason (evicted, corrupt peer).
    pub errors: u64,
}

fn check(
    ring: voxring_core::RingConfig,
    granted: &Granted,
    format: super::SampleFormat,
    what: &str,
) -> Result<usize, AudioError> {
    let spf = ring.samples_per_frame as usize;
    if u32::from(ring.channels) != granted.channels {
        return Err(AudioError::NotGranted(format!(
            "the {what} ring has {} channels but the device was granted {}: make the ring with \
             the granted channel count",
            ring.channels, granted.channels
        )));
    }
    if ring.format != format {
        return Err(AudioError::NotGranted(format!(
            "the {what} ring holds {} samples but the stream moves {}",
            ring.format.name(),
            format.name()
        )));
    }
    if spf == 0 || !(granted.buffer_frames as usize).is_multiple_of(spf) {
        return Err(AudioError::NotGranted(format!(
            "the device buffer of {} frames is not a multiple of the ring's {spf} frames per \
             slot, so device chunks would not start on slot boundaries: ask for a period (and \
             buffer) that is a multiple of the ring's samples_per_frame",
            granted.buffer_frames
        )));
    }
    Ok(spf)
}

/// What both adapters keep besides their end of the ring: the waiter, the checked geometry
/// and the counters.
#[derive(Debug)]
struct Io<'a, T, W> {
    waiter: &'a W,
    spf: usize,
    channels: usize,
    stats: RingIoStats,
    _t: PhantomData<T>,
}

impl<'a, T: Sample, W> Io<'a, T, W> {
    /// Checks `ring` against what the device granted (see [`check`]).
    fn new(
        ring: voxring_core::RingConfig,
        waiter: &'a W,
        granted: &Granted,
        what: &str,
    ) -> Result<Self, AudioError> {
        let spf = check(ring, granted, T::SAMPLE_FORMAT, what)?;
        Ok(Io {
            waiter,
            spf,
            channels: granted.channels as usize,
            stats: RingIoStats::default(),
            _t: PhantomData,
        })
    }

    /// Counts a grant the ring refused: `starved` (full for capture, empty for playback) or
    /// another error. Nothing moved: returns 0 device frames.
    fn refused(&mut self, starved: bool) -> usize {
        if starved {
            self.stats.starved += 1;
        } else {
            self.stats.errors += 1;
        }
        0
    }

    /// Counts `n` ring frames moved; returns them in device frames.
    fn moved(&mut self, n: usize) -> usize {
        self.stats.ring_frames += n as u64;
        n * self.spf
    }

    /// The samples of one ring frame, and how many whole ring frames `samples` holds.
    fn whole(&self, samples: usize) -> (usize, usize) {
        let slot = self.spf * self.channels;
        (slot, samples / slot)
    }
}

/// An adapter between a device and one end of a ring: [`RingSink`] (capture, the producer
/// end) or [`RingSource`] (playback, a consumer end).
#[derive(Debug)]
pub struct RingAdapter<'a, E, T, W> {
    end: &'a mut E,
    io: Io<'a, T, W>,
}

/// Captured frames straight into a ring's write grants.
pub type RingSink<'a, T, W> = RingAdapter<'a, Producer, T, W>;

/// Playback straight from a ring's read grants into the device.
pub type RingSource<'a, T, W> = RingAdapter<'a, Consumer, T, W>;

/// The end of a ring a [`RingAdapter`] holds: a [`Producer`] or a [`Consumer`].
pub trait RingEnd: sealed::Sealed {
    /// What the ring is for, as error messages name it.
    const DIRECTION: &'static str;
    /// The configuration of the ring this end belongs to.
    fn ring_config(&self) -> voxring_core::RingConfig;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for voxring_core::Producer {}
    impl Sealed for voxring_core::Consumer {}
}

impl RingEnd for Producer {
    const DIRECTION: &'static str = "capture";
    fn ring_config(&self) -> voxring_core::RingConfig {
        self.ring().config()
    }
}

impl RingEnd for Consumer {
    const DIRECTION: &'static str = "playback";
    fn ring_config(&self) -> voxring_core::RingConfig {
        self.ring().config()
    }
}

impl<'a, E: RingEnd, T: Sample, W: Waiter> RingAdapter<'a, E, T, W> {
    /// An adapter moving audio through `end`'s ring, waking the peers parked on the other end
    /// (consumers for a sink, the producer for a source) through `waiter`. Checks the ring
    /// matches what the device granted (channels, format, and a buffer that is a multiple of
    /// the ring's frames per slot).
    pub fn new(end: &'a mut E, waiter: &'a W, granted: &Granted) -> Result<Self, AudioError> {
        let io = Io::new(end.ring_config(), waiter, granted, E::DIRECTION)?;
        Ok(RingAdapter { end, io })
    }

    /// What it counted.
    pub fn stats(&self) -> RingIoStats {
        self.io.stats
    }
}

fn core_flags(bits: u32) -> FrameFlags {
    let mut f = FrameFlags::NONE;
    if bits & flags::XRUN != 0 {
        f |= FrameFlags::XRUN;
    }
    if bits & flags::DISCONTINUITY != 0 {
        f |= FrameFlags::DISCONTINUITY;
    }
    f
}

impl<T: Sample, W: Waiter> CaptureSink<T> for RingSink<'_, T, W> {
    fn push(&mut self, samples: &[T], info: &ChunkInfo) -> usize {
        let (slot, whole) = self.io.whole(samples.len());
        if whole == 0 {
            return 0;
        }
        let mut grant = match self.end.write_grant(whole) {
            Ok(g) => g,
            Err(e) => return self.io.refused(e == voxring_core::GrantError::Full),
        };
        let n = grant.len();
        for (i, mut frame) in grant.frames_mut().enumerate() {
            let src = &samples[i * slot..(i + 1) * slot];
            // The format was checked in `new`, so the view cannot fail; the slot holds exactly
            // `slot` samples.
            if let Ok(dst) = frame.samples_mut::<T>() {
                dst[..slot].copy_from_slice(src);
            }
            frame.set_sample_pos(info.sample_pos + (i * self.io.spf) as u64);
            frame.set_timestamp_ns(info.timestamp_ns);
            // The xrun flag belongs to the first frame after the gap.
            frame.set_flags(if i == 0 {
                core_flags(info.flags)
            } else {
                FrameFlags::NONE
            });
        }
        grant.commit_all().wake(self.io.waiter);
        self.io.moved(n)
    }
}

impl<T: Sample, W: Waiter> PlaybackSource<T> for RingSource<'_, T, W> {
    fn pull(&mut self, out: &mut [T], _info: &ChunkInfo) -> usize {
        let (slot, whole) = self.io.whole(out.len());
        if whole == 0 {
            return 0;
        }
        // A lapped consumer is resynced by the ring; read again (twice at most).
        let mut tries = 0;
        let grant = loop {
            match self.end.read_grant(whole) {
                Ok(g) => break g,
                Err(ReadError::Lost { frames }) if tries < 2 => {
                    self.io.stats.lost += frames;
                    tries += 1;
                }
                Err(e) => return self.io.refused(e == ReadError::Empty),
            }
        };
        let n = grant.len();
        for (i, frame) in grant.frames().enumerate() {
            let dst = &mut out[i * slot..(i + 1) * slot];
            match frame.samples::<T>() {
                Ok(src) => {
                    // A frame may be shorter than its slot (`len`): pad with silence.
                    let k = src.len().min(slot);
                    dst[..k].copy_from_slice(&src[..k]);
                    dst[k..].fill(T::SILENCE);
                }
                Err(_) => dst.fill(T::SILENCE),
            }
        }
        match grant.release_all() {
            Ok(wake) => wake.wake(self.io.waiter),
            Err(ReleaseError::Overwritten { frames }) => self.io.stats.lost += frames,
            Err(_) => self.io.stats.errors += 1,
        }
        self.io.moved(n)
    }
}
