//! Shared by `protocol_doc.rs` and `container.rs`: compiling the document-only C consumer
//! (`protocol/consumer.c`), and a Rust producer that feeds it known frames while running the
//! same liveness checks a lossless producer and `voxring run` make.
#![allow(dead_code)]

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use voxring_core::{FrameFlags, GrantError, Policy, PushFrameError, RingConfig, SampleFormat};
use voxring_linux::ring::{Segment, SpaceWait};

/// Every wait in these tests gives up after this long: a bound, never what is asserted.
pub const GIVE_UP: Duration = Duration::from_secs(60);

/// The ring the tests use: lossless, small (8 frames), stereo S16, 4 consumer slots.
pub fn config() -> RingConfig {
    RingConfig {
        frames: 8,
        samples_per_frame: 64,
        channels: 2,
        format: SampleFormat::S16,
        sample_rate: 48_000,
        max_consumers: 4,
        policy: Policy::Lossless,
    }
}

/// Compiles `protocol/consumer.c` with `cc` into `dir` (C11, every warning an error). `static`
/// links it statically (for a container that has no C library of its own to offer).
pub fn build_consumer(dir: &Path, static_link: bool) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protocol/consumer.c");
    let out = dir.join("consumer");
    let mut cc = voxring_test_support::strict_cc();
    cc.arg("-O1");
    if static_link {
        cc.arg("-static");
    }
    voxring_test_support::output_ok(
        cc.arg(&src).arg("-o").arg(&out),
        &format!("compiling {} (apt-get install gcc)", src.display()),
    );
    out
}

/// What the producer did.
#[derive(Debug, Default)]
pub struct Produced {
    /// Frames committed, the end-of-stream frame included.
    pub frames: u64,
    /// CRC-32 of every payload byte committed, in order.
    pub crc: u32,
    /// Consumers the liveness checks evicted.
    pub evicted: u32,
    /// Liveness checks made, at least [`Feed::min_checks`], each at least 50 ms after the
    /// previous one.
    pub checks: u32,
    /// Frames committed only after a consumer had armed the futex word (parked).
    pub forced_parks: u32,
}

/// How [`feed`] runs.
#[derive(Debug, Clone, Copy)]
pub struct Feed {
    /// Data frames before the end-of-stream frame.
    pub frames: u64,
    /// Liveness checks (`Segment::evict_dead`) to make, 50 ms apart: the run lasts at least
    /// `(min_checks - 1) × 50 ms`, longer than a liveness interval of 250 ms when ≥ 6.
    pub min_checks: u32,
    /// Every this many frames, wait until a consumer armed `data_futex` (it is parked) before
    /// committing, so the park and the wake of the document are both exercised. 0: never.
    pub park_every: u64,
    /// Whether to finish with an end-of-stream frame (otherwise the producer just leaves).
    pub end_of_stream: bool,
}

impl Feed {
    /// `frames` data frames and an end of stream; one liveness check, no forced park (set
    /// the other fields with `..Feed::frames(n)`).
    pub fn frames(frames: u64) -> Feed {
        Feed {
            frames,
            min_checks: 1,
            park_every: 0,
            end_of_stream: true,
        }
    }
}

/// The payload of frame `k`: bytes that differ from frame to frame and from run to run.
fn fill(payload: &mut [u8], k: u64, salt: u64) {
    let mut x = (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    for b in payload.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// The armed bit of `data_futex` (`core/LAYOUT.md`, wait block, offset 256).
fn data_futex_armed(seg: &Segment) -> bool {
    let word = super::common::mapped_u32(seg.mapping(), 256);
    // Relaxed: only the bit is looked at; the commit that follows publishes the frame.
    word.load(std::sync::atomic::Ordering::Relaxed) & 1 != 0
}

/// Whether any consumer slot is joined.
pub fn has_consumer(seg: &Segment) -> bool {
    let ring = seg.ring();
    (0..ring.config().max_consumers).any(|i| ring.consumer_owner(i).is_some())
}

/// Waits (polling, at most [`GIVE_UP`]) until `cond` holds or `stop` says to give up.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool, mut stop: impl FnMut() -> bool) {
    let give_up = Instant::now() + GIVE_UP;
    while !cond() {
        assert!(!stop(), "gave up waiting until {what}: the peer ended");
        assert!(Instant::now() < give_up, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Produces `feed.frames` frames into `seg` (which must have a joined consumer), making the
/// liveness checks of a lossless producer as it goes; `stop` is polled in every wait and
/// ends the test when the consumer died.
pub fn feed(seg: &Segment, feed: Feed, mut stop: impl FnMut() -> bool) -> Produced {
    let mut tx = seg.producer().expect("claim the producer side");
    let payload_len = seg.config().payload_bytes().expect("valid config") as usize;
    let mut payload = vec![0u8; payload_len];
    let salt = voxring_linux::clock::monotonic_ns();
    let mut hasher = crc32fast::Hasher::new();
    let mut out = Produced::default();
    let mut last_check: Option<Instant> = None;
    let mut k = 0u64;
    while k <= feed.frames || out.checks < feed.min_checks {
        if last_check.is_none_or(|t| t.elapsed() >= Duration::from_millis(50)) {
            out.evicted += seg.evict_dead().consumers;
            out.checks += 1;
            last_check = Some(Instant::now());
        }
        if k > feed.frames {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let last = k == feed.frames;
        if last && !feed.end_of_stream {
            k += 1;
            continue;
        }
        if feed.park_every > 0 && k.is_multiple_of(feed.park_every) && has_consumer(seg) {
            wait_until("the consumer parks", || data_futex_armed(seg), &mut stop);
            out.forced_parks += 1;
        }
        let (data, flags) = if last {
            (&payload[..0], FrameFlags::END_OF_STREAM)
        } else {
            fill(&mut payload, k, salt);
            (&payload[..], FrameFlags::NONE)
        };
        let (producer, waiter) = tx.parts();
        let spf = u64::from(seg.config().samples_per_frame);
        match producer.push(data, k * spf, voxring_linux::clock::monotonic_ns(), flags) {
            Ok(wake) => {
                wake.wake(waiter);
                hasher.update(data);
                out.frames += 1;
                k += 1;
            }
            Err(PushFrameError::Grant(GrantError::Full)) => {
                assert!(!stop(), "the consumer ended while the ring was full");
                // Evicts dead consumers every liveness interval while it waits.
                let w = tx.wait_for_space(Some(Duration::from_millis(100)));
                assert!(
                    matches!(w, Ok(SpaceWait::Ready | SpaceWait::TimedOut)),
                    "{w:?}"
                );
            }
            Err(e) => panic!("push failed: {e}"),
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    out.crc = hasher.finalize();
    out
}

/// The `key=value` field of a consumer's output line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in `{line}`"))
}

/// A consumer run: its exit code and its `done` line.
#[derive(Debug)]
pub struct Finished {
    /// Exit code.
    pub code: Option<i32>,
    /// The `joined ...` line.
    pub joined: String,
    /// The `done ...` line.
    pub done: String,
    /// What it wrote to stderr.
    pub stderr: String,
}

impl Finished {
    /// Checks that the consumer exited 0, ending with `end` (`eos`, `producer-gone`), after
    /// reading exactly the frames `produced` committed: their count and their CRC-32.
    pub fn assert_read_all(&self, produced: &Produced, end: &str) {
        let d = &self.done;
        assert_eq!(self.code, Some(0), "{d}; stderr: {}", self.stderr);
        assert_eq!(field(d, "end"), end, "{d}");
        assert_eq!(field(d, "frames"), produced.frames.to_string(), "{d}");
        assert_eq!(field(d, "crc"), format!("{:08x}", produced.crc), "{d}");
    }

    /// Checks that every frame's stamp was CLOCK_MONOTONIC and that no park ended in a timeout
    /// (each was ended by a wake), and that the producer's liveness checks (at least
    /// `min_checks`) left the consumer alive.
    pub fn assert_kept_alive_and_woken(&self, produced: &Produced, min_checks: u32) {
        let d = &self.done;
        assert_eq!(field(d, "stamps_ok"), "1", "CLOCK_MONOTONIC stamps: {d}");
        assert_eq!(field(d, "timeouts"), "0", "a park ended in a timeout: {d}");
        assert!(produced.checks >= min_checks, "{produced:?}");
        assert_eq!(
            produced.evicted, 0,
            "the producer's checks evicted it: {produced:?}"
        );
    }
}

/// Starts `cmd` (the C consumer, directly or through a container), waits until it joined
/// `seg`, runs `producer` (which may poll "has the consumer exited?"), then waits (at most
/// [`GIVE_UP`]) for the consumer to end and collects its `done` line.
pub fn consume_while<T>(
    mut cmd: Command,
    seg: &Segment,
    producer: impl FnOnce(&mut dyn FnMut() -> bool) -> T,
) -> (T, Finished) {
    let mut child = super::common::ChildGuard(Some(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the C consumer"),
    ));
    let mut exited = || child.child().try_wait().expect("try_wait").is_some();
    wait_until("the C consumer joins", || has_consumer(seg), &mut exited);
    let produced = producer(&mut exited);
    let give_up = Instant::now() + GIVE_UP;
    while !exited() {
        assert!(Instant::now() < give_up, "the C consumer did not end");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let mut c = child.0.take().expect("child");
    let status = c.wait().expect("wait");
    let mut stdout = String::new();
    let mut stderr = String::new();
    BufReader::new(c.stdout.take().expect("stdout"))
        .read_to_string(&mut stdout)
        .expect("read stdout");
    c.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let done = stdout
        .lines()
        .find(|l| l.starts_with("done "))
        .unwrap_or_else(|| panic!("no `done` line; stdout: {stdout}; stderr: {stderr}"))
        .to_owned();
    let joined = stdout
        .lines()
        .next()
        .filter(|l| l.starts_with("joined "))
        .unwrap_or_else(|| panic!("no `joined` line first: {stdout}"))
        .to_owned();
    (
        produced,
        Finished {
            code: status.code(),
            joined,
            done,
            stderr,
        },
    )
}
