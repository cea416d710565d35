//! Helpers shared by core's integration tests.
#![allow(dead_code)]

use voxring_core::{
    Consumer, FrameFlags, FrameMeta, FrameMut, GrantError, Policy, Producer, ReadError, Ring,
    RingConfig, SampleFormat, WaitOutcome, Waiter,
};

/// A property-test operation: the producer grants up to `n` frames and commits `k` of them.
#[derive(Clone, Copy, Debug)]
pub struct WriteOp {
    pub n: usize,
    pub k: usize,
}

/// A property-test operation: consumer `c` grants up to `n` frames and releases `k` of them.
#[derive(Clone, Copy, Debug)]
pub struct ReadOp {
    pub c: usize,
    pub n: usize,
    pub k: usize,
}

/// One 128-byte aligned line of a test region.
#[derive(Clone, Copy)]
#[repr(C, align(128))]
pub struct Line(pub [u8; 128]);

/// A heap region aligned to 128 bytes, as a ring needs.
pub struct Region {
    lines: Vec<Line>,
}

impl Region {
    pub fn new(bytes: usize) -> Self {
        Region {
            lines: vec![Line([0; 128]); bytes.div_ceil(128)],
        }
    }

    pub fn len(&self) -> usize {
        self.lines.len() * 128
    }

    pub fn ptr(&mut self) -> *mut u8 {
        self.lines.as_mut_ptr().cast()
    }

    pub fn bytes(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: the Vec holds `len` initialised bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), len) }
    }
}

pub fn config(frames: u32, max_consumers: u16, policy: Policy) -> RingConfig {
    RingConfig {
        frames,
        samples_per_frame: 8,
        channels: 2,
        format: SampleFormat::S16,
        sample_rate: 48_000,
        max_consumers,
        policy,
    }
}

/// Creates a ring for `cfg` in a fresh region. The region must outlive the ring.
pub fn make(cfg: &RingConfig) -> (Region, Ring) {
    let mut region = Region::new(cfg.region_size().unwrap());
    let len = region.len();
    // SAFETY: the region is valid, aligned, unused, and the caller keeps it alive.
    let ring = unsafe { Ring::create(region.ptr(), len, cfg) }.unwrap();
    (region, ring)
}

/// [`make`], then producer 1 and consumer 2 (owner tokens) on the new ring.
pub fn make_pair(cfg: &RingConfig) -> (Region, Ring, Producer, Consumer) {
    let (region, ring) = make(cfg);
    let p = ring.producer(1).unwrap();
    let c = ring.consumer(2).unwrap();
    (region, ring, p, c)
}

/// A freshly created ring's region and its pristine bytes, for forging one header field at a
/// time: every [`forged`](Self::forged) starts again from the good ring.
pub struct Forge {
    pub region: Region,
    pristine: Vec<u8>,
}

impl Forge {
    pub fn new(cfg: &RingConfig) -> Self {
        let (mut region, _ring) = make(cfg);
        let pristine = region.bytes().to_vec();
        Forge { region, pristine }
    }

    /// The pristine region with `val` written at byte `off`.
    pub fn forged(&mut self, off: usize, val: &[u8]) -> &mut Region {
        self.region.bytes().copy_from_slice(&self.pristine);
        self.region.bytes()[off..off + val.len()].copy_from_slice(val);
        &mut self.region
    }
}

/// Deterministic payload byte `i` of frame `seq`.
pub fn byte(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_mul(31).wrapping_add(i as u8)
}

/// The metadata a test producer writes for frame `seq`.
pub fn meta_for(seq: u64, payload_bytes: u32) -> (u64, u64, u32, u32) {
    (
        seq * 10,
        seq * 100 + 1,
        (seq % 8) as u32,
        payload_bytes - (seq % 3) as u32,
    )
}

/// Writes the test pattern into frame `f`: the metadata of [`meta_for`] and the bytes of
/// [`byte`], for a ring of `payload_bytes` per frame.
pub fn fill_frame(f: &mut FrameMut<'_>, payload_bytes: u32) {
    let seq = f.seq();
    let (sp, ts, fl, len) = meta_for(seq, payload_bytes);
    f.set_sample_pos(sp);
    f.set_timestamp_ns(ts);
    f.set_flags(FrameFlags(fl));
    f.set_len(len).unwrap();
    for (i, b) in f.payload_mut().iter_mut().enumerate() {
        *b = byte(seq, i);
    }
}

/// Runs `attempt` on `side` until it gives a value, parking with `park` between tries;
/// waking is the waiter's business, so a park that ends in a timeout fails the test (`who`
/// names the side in the message).
fn until_done<S, T>(
    side: &mut S,
    mut attempt: impl FnMut(&mut S) -> Option<T>,
    mut park: impl FnMut(&mut S) -> WaitOutcome,
    who: &str,
) -> T {
    loop {
        if let Some(v) = attempt(side) {
            return v;
        }
        assert_ne!(
            park(side),
            WaitOutcome::TimedOut,
            "the parked {who} was never woken"
        );
    }
}

/// Commits one frame (filled by [`fill_frame`]), parking on `waiter` while the ring is full
/// (lossless), as [`until_done`] does.
pub fn write_one_parking(p: &mut Producer, waiter: &impl Waiter) {
    let payload_bytes = p.ring().payload_bytes();
    let attempt = |p: &mut Producer| match p.write_grant(1) {
        Ok(mut g) => {
            fill_frame(&mut g.frame_mut(0).unwrap(), payload_bytes);
            g.commit_all().wake(waiter);
            Some(())
        }
        Err(GrantError::Full) => None,
        Err(e) => panic!("{e}"),
    };
    let park = |p: &mut Producer| p.wait_writable(waiter, None).unwrap();
    until_done(p, attempt, park, "producer");
}

/// Reads one frame and releases it (the release's wake passed to `waiter`), parking on
/// `waiter` while none is ready, as [`until_done`] does; the frame's sequence number.
pub fn read_one_parking(c: &mut Consumer, waiter: &impl Waiter) -> u64 {
    let attempt = |c: &mut Consumer| match c.read_grant(1) {
        Ok(g) => {
            let seq = g.first_seq();
            g.release_all().unwrap().wake(waiter);
            Some(seq)
        }
        Err(ReadError::Empty) => None,
        Err(e) => panic!("{e}"),
    };
    let park = |c: &mut Consumer| c.wait_readable(waiter, None).unwrap();
    until_done(c, attempt, park, "consumer")
}

/// Asserts that a frame read back (`m`, `payload`) holds the pattern [`fill_frame`] wrote.
pub fn check_frame(m: &FrameMeta, payload: &[u8], payload_bytes: u32) {
    let (sp, ts, fl, len) = meta_for(m.seq, payload_bytes);
    assert_eq!(
        (m.sample_pos, m.timestamp_ns, m.flags.bits(), m.len),
        (sp, ts, fl, len),
        "frame {} metadata",
        m.seq
    );
    for (i, &b) in payload.iter().enumerate() {
        assert_eq!(b, byte(m.seq, i), "frame {} byte {}", m.seq, i);
    }
}
