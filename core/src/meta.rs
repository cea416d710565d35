//! Per-frame metadata.

use crate::layout::SampleFormat;

/// Flags carried with each frame.
///
/// ```
/// use voxring_core::FrameFlags;
/// let f = FrameFlags::XRUN | FrameFlags::DISCONTINUITY;
/// assert!(f.contains(FrameFlags::XRUN));
/// assert!(!f.contains(FrameFlags::END_OF_STREAM));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrameFlags(pub u32);

impl FrameFlags {
    /// No flag.
    pub const NONE: FrameFlags = FrameFlags(0);
    /// The device over- or under-ran before this frame: samples are missing before it.
    pub const XRUN: FrameFlags = FrameFlags(1);
    /// The stream is not continuous with the previous frame (seek, restart, lost frames).
    pub const DISCONTINUITY: FrameFlags = FrameFlags(1 << 1);
    /// The last frame of the stream.
    pub const END_OF_STREAM: FrameFlags = FrameFlags(1 << 2);

    /// True when every flag of `other` is set in `self`.
    pub const fn contains(self, other: FrameFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl core::ops::BitOr for FrameFlags {
    type Output = FrameFlags;
    fn bitor(self, rhs: FrameFlags) -> FrameFlags {
        FrameFlags(self.0 | rhs.0)
    }
}

impl core::ops::BitOrAssign for FrameFlags {
    fn bitor_assign(&mut self, rhs: FrameFlags) {
        self.0 |= rhs.0;
    }
}

/// The metadata of one frame, as a consumer sees it.
///
/// ```
/// # use voxring_core::{Policy, Ring, RingConfig, SampleFormat};
/// # #[repr(C, align(128))] struct Region([u8; 4096]);
/// # let mut region = Region([0; 4096]);
/// # let cfg = RingConfig { frames: 4, samples_per_frame: 8, channels: 1,
/// #     format: SampleFormat::S16, sample_rate: 16_000, max_consumers: 1,
/// #     policy: Policy::Lossless };
/// # // SAFETY: valid, aligned, unused region that outlives the handles.
/// # let ring = unsafe { Ring::create(region.0.as_mut_ptr(), 4096, &cfg) }?;
/// use voxring_core::{FrameFlags, FrameMeta};
/// let (mut producer, mut consumer) = (ring.producer(1)?, ring.consumer(2)?);
/// let _wake = producer.push(&[1, 2, 3, 4], 480, 1_000_000, FrameFlags::DISCONTINUITY)?;
/// let grant = consumer.read_grant(1)?;
/// let meta: FrameMeta = grant.frame(0).unwrap().meta();
/// assert_eq!(meta, FrameMeta {
///     seq: 0, sample_pos: 480, timestamp_ns: 1_000_000,
///     flags: FrameFlags::DISCONTINUITY, len: 4,
/// });
/// let _wake = grant.release_all()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrameMeta {
    /// Sequence number: the frame's position in the stream, assigned by the ring.
    pub seq: u64,
    /// Stream position of the frame's first sample (per channel), set by the producer.
    pub sample_pos: u64,
    /// Capture time of the first sample in nanoseconds, on a clock the producer chose.
    pub timestamp_ns: u64,
    /// Xrun, discontinuity, end of stream.
    pub flags: FrameFlags,
    /// Valid payload bytes (never more than the slot's payload size: a larger value written
    /// by a peer is clamped when read).
    pub len: u32,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for i16 {}
    impl Sealed for i32 {}
    impl Sealed for f32 {}
}

/// A sample type a payload can be viewed as: `i16` (S16), `i32` (S32), `f32` (F32).
///
/// ```
/// use voxring_core::{Sample, SampleFormat};
/// fn format_of<S: Sample>() -> SampleFormat { S::FORMAT }
/// assert_eq!(format_of::<f32>(), SampleFormat::F32);
/// assert_eq!(format_of::<i16>(), SampleFormat::S16);
/// ```
pub trait Sample: sealed::Sealed + Copy + 'static {
    /// The ring format this type matches.
    const FORMAT: SampleFormat;
}

impl Sample for i16 {
    const FORMAT: SampleFormat = SampleFormat::S16;
}
impl Sample for i32 {
    const FORMAT: SampleFormat = SampleFormat::S32;
}
impl Sample for f32 {
    const FORMAT: SampleFormat = SampleFormat::F32;
}

/// A payload was viewed as a sample type that is not the ring's format.
///
/// ```
/// use voxring_core::{FormatMismatch, SampleFormat};
/// let e = FormatMismatch { ring: SampleFormat::S16, asked: SampleFormat::F32 };
/// assert!(e.to_string().contains("use the matching type"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatMismatch {
    /// The ring's format.
    pub ring: SampleFormat,
    /// The format of the type asked for.
    pub asked: SampleFormat,
}

error_message!(FormatMismatch, |self, f| {
    write!(
        f,
        "the ring holds {:?} samples but the payload was viewed as {:?}: use the matching type (i16, i32 or f32)",
        self.ring, self.asked
    )
});

/// `set_len` was given more bytes than a slot holds.
///
/// ```
/// use voxring_core::LenError;
/// let e = LenError { len: 4096, capacity: 1024 };
/// assert!(e.to_string().contains("exceeds the slot's 1024 bytes"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LenError {
    /// The length asked for.
    pub len: u32,
    /// The slot's payload capacity.
    pub capacity: u32,
}

error_message!(LenError, |self, f| {
    write!(
        f,
        "payload length {} exceeds the slot's {} bytes: the ring was created for smaller frames",
        self.len, self.capacity
    )
});
