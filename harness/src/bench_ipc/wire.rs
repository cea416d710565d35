//! The layout of a message of the byte transports (rtrb, sockets, pipes, HTTP): the sequence
//! number in the first 8 bytes and again in the last 8 (so a torn or out-of-step message
//! shows), and the CLOCK_MONOTONIC stamp of its sending in bytes 8..16; all little-endian.

use super::measure::now_ns;

/// Writes message `seq`'s markers at both ends of `buf` (at least 16 bytes).
pub fn mark(buf: &mut [u8], seq: u64) {
    let n = buf.len();
    buf[0..8].copy_from_slice(&seq.to_le_bytes());
    buf[n - 8..].copy_from_slice(&seq.to_le_bytes());
}

/// Stamps `buf` with the time now, the moment it is sent.
pub fn stamp(buf: &mut [u8]) {
    buf[8..16].copy_from_slice(&now_ns().to_le_bytes());
}

/// The sequence number at the start of a message.
pub fn seq(buf: &[u8]) -> u64 {
    le_u64(&buf[0..8])
}

/// The sending time a message was stamped with.
pub fn stamp_ns(buf: &[u8]) -> u64 {
    le_u64(&buf[8..16])
}

/// The sequence number at the end of a message.
pub fn last_seq(buf: &[u8]) -> u64 {
    le_u64(&buf[buf.len() - 8..])
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_and_stamped_message_reads_back() {
        let mut buf = vec![0x5a; 32];
        mark(&mut buf, 7);
        stamp(&mut buf);
        assert_eq!(seq(&buf), 7);
        assert_eq!(last_seq(&buf), 7);
        assert_ne!(stamp_ns(&buf), 0x5a5a_5a5a_5a5a_5a5a);
        assert_eq!(buf[16..24], [0x5a; 8]);
    }
}
