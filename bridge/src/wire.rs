//! What travels with each frame: a fixed 64-byte header in the Zenoh sample's attachment
//! (the payload is the frame's samples, untouched).
//!
//! Everything is little-endian. The importer treats the header as untrusted input: every
//! field is range-checked here, and the payload length is checked against the format the
//! header announces before anything is written into a ring.
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0 | `[u8; 4]` | magic `VXB1` |
//! | 4 | u16 | version (1) |
//! | 6 | u16 | header length (64) |
//! | 8 | u64 | epoch: random per exporter run; a new epoch restarts the stream |
//! | 16 | u64 | `seq` of the frame in the exported ring |
//! | 24 | u64 | `sample_pos` |
//! | 32 | u64 | `timestamp_ns` (the producer's clock) |
//! | 40 | u32 | `flags` (the ring's frame flags) |
//! | 44 | u32 | samples per frame (per channel) |
//! | 48 | u32 | sample rate, Hz |
//! | 52 | u16 | channels |
//! | 54 | u8 | sample format code (1 = S16, 2 = S32, 3 = F32, as in `core/LAYOUT.md`) |
//! | 55 | u8 | reserved, 0 |
//! | 56 | u64 | the exporter's `CLOCK_MONOTONIC` when it sent the frame (ns) |
//!
//! ```
//! use voxring_bridge::wire::{FrameHeader, StreamFormat, HEADER_LEN};
//! use voxring_core::{FrameFlags, SampleFormat};
//! let h = FrameHeader {
//!     epoch: 7, seq: 3, sample_pos: 480 * 3, timestamp_ns: 1_000, flags: FrameFlags::XRUN,
//!     format: StreamFormat { samples_per_frame: 480, sample_rate: 48_000, channels: 1,
//!                            format: SampleFormat::S16 },
//!     sent_ns: 2_000,
//! };
//! let bytes = h.encode();
//! assert_eq!(bytes.len(), HEADER_LEN);
//! assert_eq!(FrameHeader::decode(&bytes), Ok(h));
//! assert!(FrameHeader::decode(&bytes[..10]).is_err());
//! ```

use std::fmt;

use voxring_core::{FrameFlags, SampleFormat};

/// The header's length in bytes.
pub const HEADER_LEN: usize = 64;
const MAGIC: [u8; 4] = *b"VXB1";
const VERSION: u16 = 1;
/// The largest frame payload accepted from the network (the ring's own limit, 2^24 bytes).
pub const MAX_PAYLOAD: u32 = 1 << 24;

/// The audio format of an exported stream: what the importer's ring is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamFormat {
    /// Samples per frame, per channel.
    pub samples_per_frame: u32,
    /// Hz.
    pub sample_rate: u32,
    /// Interleaved channels.
    pub channels: u16,
    /// Sample format.
    pub format: SampleFormat,
}

impl StreamFormat {
    /// Bytes of a full frame: `samples_per_frame × channels × bytes per sample`.
    pub fn frame_bytes(&self) -> u64 {
        u64::from(self.samples_per_frame)
            * u64::from(self.channels)
            * u64::from(self.format.bytes())
    }

    /// One frame's duration in nanoseconds.
    pub fn frame_ns(&self) -> u64 {
        u64::from(self.samples_per_frame) * 1_000_000_000 / u64::from(self.sample_rate)
    }
}

/// The metadata of one exported frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Random per exporter run.
    pub epoch: u64,
    /// Sequence number in the exported ring.
    pub seq: u64,
    /// Stream position of the first sample.
    pub sample_pos: u64,
    /// Capture time of the first sample, on the producer's clock.
    pub timestamp_ns: u64,
    /// The ring's frame flags.
    pub flags: FrameFlags,
    /// The stream's format.
    pub format: StreamFormat,
    /// The exporter's monotonic clock when it sent the frame.
    pub sent_ns: u64,
}

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not 64 bytes.
    Length(usize),
    /// Not `VXB1`.
    Magic,
    /// A version or header length this importer does not know.
    Version(u16, u16),
    /// A format field out of range.
    Format(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Length(n) => write!(
                f,
                "frame header is {n} bytes, expected {HEADER_LEN}: the publisher is not a voxring exporter"
            ),
            DecodeError::Magic => f.write_str(
                "frame header lacks the VXB1 magic: the publisher on this key is not a voxring exporter",
            ),
            DecodeError::Version(v, l) => write!(
                f,
                "frame header version {v} (length {l}) is not version {VERSION}: run the same voxring-bridge version on both sides"
            ),
            DecodeError::Format(why) => write!(f, "frame header refused: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(w)
}

impl FrameHeader {
    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.sample_pos.to_le_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ns.to_le_bytes());
        b[40..44].copy_from_slice(&self.flags.bits().to_le_bytes());
        b[44..48].copy_from_slice(&self.format.samples_per_frame.to_le_bytes());
        b[48..52].copy_from_slice(&self.format.sample_rate.to_le_bytes());
        b[52..54].copy_from_slice(&self.format.channels.to_le_bytes());
        b[54] = self.format.format as u8;
        b[56..64].copy_from_slice(&self.sent_ns.to_le_bytes());
        b
    }

    /// Parses and range-checks a header received from the network.
    ///
    /// # Errors
    /// [`DecodeError`] saying which check failed.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() != HEADER_LEN {
            return Err(DecodeError::Length(b.len()));
        }
        if b[0..4] != MAGIC {
            return Err(DecodeError::Magic);
        }
        let (v, l) = (u16_at(b, 4), u16_at(b, 6));
        if v != VERSION || usize::from(l) != HEADER_LEN {
            return Err(DecodeError::Version(v, l));
        }
        let format = SampleFormat::from_code(u32::from(b[54]))
            .ok_or(DecodeError::Format("unknown sample format code"))?;
        let format = StreamFormat {
            samples_per_frame: u32_at(b, 44),
            sample_rate: u32_at(b, 48),
            channels: u16_at(b, 52),
            format,
        };
        if format.samples_per_frame == 0 || format.channels == 0 || format.sample_rate == 0 {
            return Err(DecodeError::Format(
                "samples per frame, channels and sample rate must be at least 1",
            ));
        }
        if format.frame_bytes() > u64::from(MAX_PAYLOAD) {
            return Err(DecodeError::Format("a frame would exceed 16 MiB"));
        }
        Ok(FrameHeader {
            epoch: u64_at(b, 8),
            seq: u64_at(b, 16),
            sample_pos: u64_at(b, 24),
            timestamp_ns: u64_at(b, 32),
            flags: FrameFlags(u32_at(b, 40)),
            format,
            sent_ns: u64_at(b, 56),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> FrameHeader {
        FrameHeader {
            epoch: u64::MAX,
            seq: 1 << 40,
            sample_pos: 5,
            timestamp_ns: 6,
            flags: FrameFlags::DISCONTINUITY,
            format: StreamFormat {
                samples_per_frame: 256,
                sample_rate: 16_000,
                channels: 2,
                format: SampleFormat::F32,
            },
            sent_ns: 9,
        }
    }

    #[test]
    fn every_field_round_trips() {
        let h = header();
        assert_eq!(FrameHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn hostile_headers_are_refused_with_the_reason() {
        let good = header().encode();
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(FrameHeader::decode(&bad), Err(DecodeError::Magic));
        let mut bad = good;
        bad[4] = 9;
        assert!(matches!(
            FrameHeader::decode(&bad),
            Err(DecodeError::Version(9, 64))
        ));
        // Each entry: the bytes written at an offset to make a header with an impossible format.
        let bad_formats: [&[(usize, &[u8])]; 4] = [
            // An unknown sample format code.
            &[(54, &[77])],
            // Zero channels.
            &[(52, &0u16.to_le_bytes())],
            // 2^20 samples × 65535 channels × 4 bytes: far beyond a ring's frame.
            &[
                (44, &(1u32 << 20).to_le_bytes()),
                (52, &u16::MAX.to_le_bytes()),
            ],
            // A zero sample rate.
            &[(48, &0u32.to_le_bytes())],
        ];
        for edits in bad_formats {
            let mut bad = good;
            for &(at, bytes) in edits {
                bad[at..at + bytes.len()].copy_from_slice(bytes);
            }
            assert!(
                matches!(FrameHeader::decode(&bad), Err(DecodeError::Format(_))),
                "{edits:?}"
            );
        }
        assert_eq!(
            FrameHeader::decode(&good[..63]),
            Err(DecodeError::Length(63))
        );
        assert!(
            FrameHeader::decode(&[])
                .unwrap_err()
                .to_string()
                .contains("not a voxring exporter")
        );
    }
}
