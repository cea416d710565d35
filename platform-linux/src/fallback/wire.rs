//! The wire format of the socket fallback (see the [module docs](super) for the layout):
//! what the server encodes and the reader decodes, in one place. Everything decoded comes
//! from another process and is checked before use.

use std::io::Read;

use voxring_core::{FrameFlags, FrameMeta, Policy, RingConfig, SampleFormat};

use super::FallbackError;

pub(super) const MAGIC: &[u8; 4] = b"VXFB";
pub(super) const VERSION: u32 = 1;
pub(super) const TAG_FRAME: u32 = 1;
pub(super) const TAG_LOST: u32 = 2;
pub(super) const TAG_END: u32 = 3;
pub(super) const TAG_ERROR: u32 = 4;
pub(super) const MAX_ERROR_LEN: u32 = 4096;
/// Bytes of the greeting: `"VXFB"`, the version and eight `u32` of configuration.
pub(super) const GREETING_LEN: usize = 40;
/// Bytes of a frame message's header after its tag: seq, sample_pos, timestamp_ns, flags, len.
pub(super) const FRAME_HEADER_LEN: usize = 32;

/// An error message (tag 4), cut to [`MAX_ERROR_LEN`] bytes.
pub(super) fn error_message(msg: &str) -> Vec<u8> {
    let bytes = &msg.as_bytes()[..msg.len().min(MAX_ERROR_LEN as usize)];
    let mut out = Vec::with_capacity(8 + bytes.len());
    out.extend_from_slice(&TAG_ERROR.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The greeting for a ring of `cfg` with `payload_bytes`-byte frames.
pub(super) fn hello(cfg: &RingConfig, payload_bytes: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(MAGIC);
    for v in [
        VERSION,
        cfg.policy as u32,
        cfg.frames,
        cfg.samples_per_frame,
        u32::from(cfg.channels),
        cfg.format as u32,
        cfg.sample_rate,
        u32::from(cfg.max_consumers),
        payload_bytes,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Appends a frame message (tag 1): its metadata, then its `meta.len` payload bytes.
pub(super) fn push_frame(buf: &mut Vec<u8>, m: &FrameMeta, payload: &[u8]) {
    buf.extend_from_slice(&TAG_FRAME.to_le_bytes());
    buf.extend_from_slice(&m.seq.to_le_bytes());
    buf.extend_from_slice(&m.sample_pos.to_le_bytes());
    buf.extend_from_slice(&m.timestamp_ns.to_le_bytes());
    buf.extend_from_slice(&m.flags.0.to_le_bytes());
    buf.extend_from_slice(&m.len.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Appends a loss message (tag 2) of `frames` frames.
pub(super) fn push_lost(buf: &mut Vec<u8>, frames: u64) {
    buf.extend_from_slice(&TAG_LOST.to_le_bytes());
    buf.extend_from_slice(&frames.to_le_bytes());
}

/// Decodes the greeting after its magic number: the version, then the ring configuration,
/// checked with core's own range checks (as a shared-memory attach is), and the payload size,
/// which must match it. Returns the configuration and the payload bytes per frame.
pub(super) fn parse_greeting(
    head: &[u8; GREETING_LEN],
) -> Result<(RingConfig, usize), FallbackError> {
    let version = u32_at(head, 4);
    if version != VERSION {
        return Err(FallbackError::Protocol(format!(
            "protocol version {version}, this reader speaks {VERSION}"
        )));
    }
    let w = |i: usize| u32_at(head, 8 + 4 * i);
    let bad = |what: &str| FallbackError::Protocol(format!("invalid {what} in the greeting"));
    let config = RingConfig {
        policy: Policy::from_code(w(0)).ok_or_else(|| bad("policy"))?,
        frames: w(1),
        samples_per_frame: w(2),
        channels: u16::try_from(w(3)).map_err(|_| bad("channel count"))?,
        format: match w(4) {
            1 => SampleFormat::S16,
            2 => SampleFormat::S32,
            3 => SampleFormat::F32,
            _ => return Err(bad("sample format")),
        },
        sample_rate: w(5),
        max_consumers: u16::try_from(w(6)).map_err(|_| bad("consumer count"))?,
    };
    // The same range checks as a shared-memory attach.
    config
        .region_size()
        .map_err(|e| FallbackError::Protocol(format!("invalid ring configuration: {e}")))?;
    let payload_bytes = config.samples_per_frame as usize
        * usize::from(config.channels)
        * config.format.bytes() as usize;
    if w(7) as usize != payload_bytes {
        return Err(bad("payload size"));
    }
    Ok((config, payload_bytes))
}

/// Decodes a frame message's header; `len` is the caller's to check against the ring.
pub(super) fn parse_frame_header(h: &[u8; FRAME_HEADER_LEN]) -> FrameMeta {
    FrameMeta {
        seq: u64_at(h, 0),
        sample_pos: u64_at(h, 8),
        timestamp_ns: u64_at(h, 16),
        flags: FrameFlags(u32_at(h, 24)),
        len: u32_at(h, 28),
    }
}

/// Reads an error message's length, then its text (at most [`MAX_ERROR_LEN`] bytes: a longer
/// one is refused before anything is allocated).
pub(super) fn read_error(stream: &mut impl Read) -> Result<String, FallbackError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(FallbackError::Io)?;
    read_error_text(stream, u32::from_le_bytes(len))
}

fn read_error_text(stream: &mut impl Read, len: u32) -> Result<String, FallbackError> {
    if len > MAX_ERROR_LEN {
        return Err(FallbackError::Protocol(format!(
            "error message of {len} bytes"
        )));
    }
    let mut text = vec![0u8; len as usize];
    stream.read_exact(&mut text).map_err(FallbackError::Io)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

pub(super) fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}
