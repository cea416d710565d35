//! Helpers shared by the integration tests: unique segment names, child processes that are
//! this same test binary re-executed in a role, and clean-up that leaves nothing behind.
#![allow(dead_code, unused_macros)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Environment variable selecting the role a re-executed test binary plays.
pub const ROLE_VAR: &str = "VOXRING_TEST_ROLE";

/// A segment name unique to this process and call: `t<pid>-<tag>-<n>`.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    // Relaxed: uniqueness only.
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("t{}-{tag}-{n}", std::process::id())
}

/// `/dev/shm/voxring.<name>`.
pub fn shm_path(name: &str) -> PathBuf {
    voxring_linux::segment::path_of(name).expect("valid test name")
}

/// Removes `/dev/shm/voxring.<name>` (and temporaries of it) when dropped.
pub struct ShmCleanup(pub String);

impl Drop for ShmCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(shm_path(&self.0));
        if let Ok(names) = voxring_linux::cleanup::segment_file_names() {
            let prefix = format!("voxring.{}.tmp-", self.0);
            for n in names {
                if n.to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(PathBuf::from("/dev/shm").join(n));
                }
            }
        }
    }
}

/// A child process killed (by PID) and reaped when dropped.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present")
    }
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("child present").id()
    }
    /// Waits for the child and returns its status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let mut c = self.0.take().expect("child present");
        c.wait().expect("wait for child")
    }
    /// Waits and returns (status, stdout).
    pub fn wait_output(&mut self) -> (std::process::ExitStatus, String) {
        let c = self.0.take().expect("child present");
        let out = c.wait_with_output().expect("wait for child");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
    /// Sends SIGKILL by PID and reaps.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Re-executes this test binary to run `entry` (a `#[test]` function name) in `role`, with
/// extra environment. stdout is piped; stderr is inherited.
pub fn spawn_role(entry: &str, role: &str, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.arg("--exact")
        .arg(entry)
        .arg("--nocapture")
        .arg("--test-threads=1")
        .env(ROLE_VAR, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts [`spawn_role`] as a child process, killed (by PID) and reaped when the guard drops.
pub fn start_role(entry: &str, role: &str, env: &[(&str, String)]) -> ChildGuard {
    ChildGuard(Some(
        spawn_role(entry, role, env)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the {role} child: {e}")),
    ))
}

/// Starts [`spawn_role`] as `uid`/`gid` (root only), killed and reaped when the guard drops.
///
/// The checkout may sit in a folder the other user cannot enter (a 0700 home or temporary
/// folder), so the child runs a copy of this test binary in a fresh 0755 folder made by
/// `tempfile`; the copy is removed as soon as the child has started (`spawn` returns after
/// the `exec`, and the running program needs no path).
pub fn start_role_as(
    entry: &str,
    role: &str,
    env: &[(&str, String)],
    uid: u32,
    gid: u32,
) -> ChildGuard {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::Builder::new()
        .prefix("voxring-test-exe-")
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .expect("a folder for the test binary's copy");
    let exe = dir.path().join("test-binary");
    std::fs::copy(std::env::current_exe().expect("current exe"), &exe)
        .expect("copy the test binary");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod the copy");
    let cmd = spawn_role(entry, role, env);
    let args: Vec<_> = cmd.get_args().map(std::ffi::OsStr::to_owned).collect();
    let mut other = Command::new(&exe);
    other.args(args).current_dir(dir.path()).uid(uid).gid(gid);
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            other.env(k, v);
        }
    }
    other
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // ETXTBSY: another test thread may fork while the copy's write descriptor is open, and
    // its child holds that descriptor until its own exec; retry until that child has
    // exec'd (a give-up bound, not a timing).
    let mut tries = 0;
    let child = loop {
        match other.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 500 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => break r.unwrap_or_else(|e| panic!("spawn the {role} child as uid {uid}: {e}")),
        }
    };
    drop(cmd);
    drop(dir);
    ChildGuard(Some(child))
}

/// The role this process was started in, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// Reads an env var set by the parent.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child needs {name}"))
}

/// Ends the `#[test]` it stands in at once when this process is a child (the body is the
/// parent's; a child runs only its own `child_entry_*` role).
macro_rules! parent_only {
    () => {
        if $crate::common::role().is_some() {
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use parent_only;

/// Ends the `#[test]` it stands in at once unless this process is a child started in `$role`:
/// the entry point of a child role, not a test by itself.
macro_rules! child_role {
    ($role:expr) => {
        if $crate::common::role().as_deref() != Some($role) {
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use child_role;

/// Ends the `#[test]` it stands in, saying it was skipped and why, unless running as root.
macro_rules! root_only {
    ($why:expr) => {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to {}", $why);
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use root_only;

/// A fresh segment name and the guard that removes its files at the end of the test:
/// `let (name, _c) = scratch("tag");`.
pub fn scratch(tag: &str) -> (String, ShmCleanup) {
    let name = unique_name(tag);
    let cleanup = ShmCleanup(name.clone());
    (name, cleanup)
}

/// Creates the ring segment `name` with `config` and the default options.
pub fn create_segment(name: &str, config: &RingConfig) -> voxring_linux::ring::Segment {
    voxring_linux::ring::Segment::create(
        name,
        config,
        &voxring_linux::segment::CreateOptions::default(),
    )
    .unwrap_or_else(|e| panic!("create the segment {name:?}: {e}"))
}

/// Child side: attaches to the segment the parent named in `VOXRING_TEST_SEGMENT`.
pub fn attach_from_env() -> voxring_linux::ring::Segment {
    let name = env("VOXRING_TEST_SEGMENT");
    voxring_linux::ring::Segment::attach(&name, &voxring_linux::segment::AttachOptions::default())
        .unwrap_or_else(|e| panic!("child attaches to {name:?}: {e}"))
}

/// The attacker, a process with write access to the segment's file: sets its length
/// (shrinks or grows it) under the participants' mappings.
pub fn set_file_len(name: &str, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(shm_path(name))
        .expect("open the segment's file for writing")
        .set_len(len)
        .expect("set the length of the segment's file");
}

/// Child side: maps the ring the parent named in `VOXRING_TEST_SEGMENT` as a plain file, as a
/// hostile peer does (no participant, no checks beyond the file's).
pub fn attach_file_from_env() -> voxring_linux::segment::SegmentFile {
    let name = env("VOXRING_TEST_SEGMENT");
    voxring_linux::segment::SegmentFile::attach_ring(
        &name,
        &voxring_linux::segment::AttachOptions::default(),
    )
    .unwrap_or_else(|e| panic!("child maps the ring {name:?}: {e}"))
}

/// Child side: idles until the parent kills this process (by PID).
pub fn idle_until_killed() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// The `u32` word at byte `offset` of a mapping, as a hostile peer sees it: every word of a
/// ring region is accessed atomically (core/LAYOUT.md gives the offsets).
pub fn mapped_u32(m: &voxring_linux::mapping::SharedMapping, offset: usize) -> &AtomicU32 {
    assert!(offset + 4 <= m.len(), "offset {offset} is past the mapping");
    assert_eq!(offset % 4, 0, "offset {offset} is not 4-aligned");
    // SAFETY: in bounds and aligned (asserted; the mapping is page-aligned); the region's
    // words are only ever accessed atomically; borrowed from the mapping, so it cannot
    // outlive it.
    unsafe { &*m.as_ptr().add(offset).cast::<AtomicU32>() }
}

/// The `u64` word at byte `offset` of a mapping (see [`mapped_u32`]).
pub fn mapped_u64(m: &voxring_linux::mapping::SharedMapping, offset: usize) -> &AtomicU64 {
    assert!(offset + 8 <= m.len(), "offset {offset} is past the mapping");
    assert_eq!(offset % 8, 0, "offset {offset} is not 8-aligned");
    // SAFETY: as in `mapped_u32`, for an 8-byte word.
    unsafe { &*m.as_ptr().add(offset).cast::<AtomicU64>() }
}

/// A small deterministic PRNG (xorshift64*), so children and parents agree on payloads.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A seed from the clock and pid (printed by tests that use it, for reproduction).
pub fn seed() -> u64 {
    if let Some(v) = std::env::var("VOXRING_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return v;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (t ^ u64::from(std::process::id()).rotate_left(32)) | 1
}

// ---- frames with a checksum, shared by the multi-process tests ----

use voxring_core::{FrameFlags, Policy, RingConfig, SampleFormat};

/// A small ring: 16 frames of 64 mono S16 samples (128 payload bytes), 4 consumer slots.
pub fn test_config(policy: Policy) -> RingConfig {
    RingConfig {
        frames: 16,
        samples_per_frame: 64,
        channels: 1,
        format: SampleFormat::S16,
        sample_rate: 48_000,
        max_consumers: 4,
        policy,
    }
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Fills a payload for frame `n`: `n` (LE u64), a checksum, then bytes derived from `n`.
pub fn fill_payload(n: u64, buf: &mut [u8]) {
    let mut rng = Rng(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    for chunk in buf[16..].chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    buf[..8].copy_from_slice(&n.to_le_bytes());
    let sum = fnv1a(&[&buf[..8], &buf[16..]]);
    buf[8..16].copy_from_slice(&sum.to_le_bytes());
}

/// Checks a payload made by [`fill_payload`]; returns the frame number it carries.
pub fn verify_payload(buf: &[u8]) -> Result<u64, String> {
    if buf.len() < 16 {
        return Err(format!("payload of {} bytes is too short", buf.len()));
    }
    let n = u64::from_le_bytes(buf[..8].try_into().unwrap());
    let sum = u64::from_le_bytes(buf[8..16].try_into().unwrap());
    if fnv1a(&[&buf[..8], &buf[16..]]) != sum {
        return Err(format!("frame {n}: checksum mismatch"));
    }
    let mut expect = vec![0u8; buf.len()];
    fill_payload(n, &mut expect);
    if expect != buf {
        return Err(format!(
            "frame {n}: payload differs from the expected bytes"
        ));
    }
    Ok(n)
}

/// Writes frames `0..count` (or forever when `count` is None), the last one flagged
/// END_OF_STREAM. Lossless: waits for space (evicting dead consumers). Prints nothing.
pub fn produce(tx: &mut voxring_linux::ring::ShmProducer, count: Option<u64>, batch: usize) {
    let lossless = tx.segment().config().policy == Policy::Lossless;
    let mut n: u64 = 0;
    while count.is_none_or(|c| n < c) {
        let want = match count {
            Some(c) => ((c - n) as usize).min(batch),
            None => batch,
        };
        let full = {
            let (p, waiter) = tx.parts();
            let waiter = *waiter;
            match p.write_grant(want) {
                Ok(mut grant) if !grant.is_empty() => {
                    let k = grant.len();
                    for i in 0..k {
                        let mut f = grant.frame_mut(i).expect("frame in grant");
                        let frame_no = n + i as u64;
                        fill_payload(frame_no, f.payload_mut());
                        f.set_sample_pos(frame_no * 64);
                        if count == Some(frame_no + 1) {
                            f.set_flags(FrameFlags::END_OF_STREAM);
                        }
                    }
                    grant.commit(k).expect("commit").wake(&waiter);
                    n += k as u64;
                    false
                }
                Ok(_) | Err(voxring_core::GrantError::Full) => true,
                Err(e) => panic!("producer: {e}"),
            }
        };
        if full {
            assert!(lossless, "a lossy producer is never full");
            let _ = tx.wait_for_space(Some(std::time::Duration::from_millis(100)));
        }
    }
}

/// What a consumer saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Frames delivered intact.
    pub delivered: u64,
    /// Frames reported lost (lossy).
    pub lost: u64,
    /// The next frame number expected.
    pub next: u64,
    /// Whether an END_OF_STREAM frame arrived.
    pub end_flag: bool,
    /// Whether the producer vanished (EndOfStream from the liveness check).
    pub producer_gone: bool,
}

/// Reads until an END_OF_STREAM frame or the producer's disappearance, verifying every frame
/// (checksum, and frame number == sequence number == the expected one, so order is checked
/// and loss counts are exact). Panics on the first bad frame. `stop_after` bounds the run.
pub fn consume(rx: &mut voxring_linux::ring::ShmConsumer, stop_after: Option<u64>) -> Seen {
    use voxring_core::{ReadError, ReleaseError};
    use voxring_linux::ring::FramesWait;
    let lossy = rx.segment().config().policy == Policy::Lossy;
    let mut seen = Seen {
        next: rx.consumer().read_pos(),
        ..Default::default()
    };
    let mut copy = Vec::new();
    enum Step {
        Continue,
        End,
        Lost(u64),
        Empty,
    }
    loop {
        if stop_after.is_some_and(|s| seen.delivered >= s) {
            return seen;
        }
        let step = {
            let (c, waiter) = rx.parts();
            let waiter = *waiter;
            // Lossy: one frame per grant, so an overwrite at release is pinned to one frame.
            match c.read_grant(if lossy { 1 } else { 8 }) {
                Ok(grant) => {
                    let k = grant.len();
                    let mut end = false;
                    let mut numbers = Vec::with_capacity(k);
                    for f in grant.frames() {
                        assert_eq!(
                            f.seq(),
                            seen.next + numbers.len() as u64,
                            "sequence out of order"
                        );
                        end |= f.meta().flags.contains(FrameFlags::END_OF_STREAM);
                        if lossy {
                            copy.clear();
                            copy.extend_from_slice(f.payload());
                        } else {
                            let n = verify_payload(f.payload()).unwrap_or_else(|e| panic!("{e}"));
                            numbers.push(n);
                        }
                    }
                    match grant.release(k) {
                        Ok(wake) => {
                            wake.wake(&waiter);
                            if lossy {
                                let n = verify_payload(&copy).unwrap_or_else(|e| panic!("{e}"));
                                numbers.push(n);
                            }
                            for (i, n) in numbers.iter().enumerate() {
                                assert_eq!(*n, seen.next + i as u64, "frame number != sequence");
                            }
                            seen.delivered += k as u64;
                            seen.next += k as u64;
                            if end { Step::End } else { Step::Continue }
                        }
                        Err(ReleaseError::Overwritten { frames }) => {
                            assert!(lossy, "overwritten in a lossless ring");
                            assert_eq!(frames, k as u64, "one-frame grant");
                            seen.lost += frames;
                            seen.next += k as u64;
                            Step::Continue
                        }
                        Err(e) => panic!("release: {e}"),
                    }
                }
                Err(ReadError::Lost { frames }) => Step::Lost(frames),
                Err(ReadError::Empty) => Step::Empty,
                Err(e) => panic!("read_grant: {e}"),
            }
        };
        match step {
            Step::Continue => {}
            Step::End => {
                seen.end_flag = true;
                return seen;
            }
            Step::Lost(frames) => {
                assert!(lossy, "lost frames in a lossless ring");
                seen.lost += frames;
                seen.next += frames;
                assert_eq!(
                    rx.consumer().read_pos(),
                    seen.next,
                    "resync position != reported loss"
                );
            }
            Step::Empty => match rx.wait_for_frames(Some(std::time::Duration::from_secs(10))) {
                Ok(FramesWait::Ready) => {}
                Ok(FramesWait::EndOfStream) => {
                    seen.producer_gone = true;
                    return seen;
                }
                Ok(FramesWait::TimedOut) => panic!(
                    "no frame and no end of stream for 10 s: hung (read_pos {}, write_pos {}, \
                     producer {:?}, seen {seen:?})",
                    rx.consumer().read_pos(),
                    rx.segment().ring().write_pos(),
                    rx.segment().producer_state()
                ),
                Err(e) => panic!("wait: {e}"),
            },
        }
    }
}

/// Reads one line from a child's stdout (blocking).
pub fn read_line(child: &mut Child) -> String {
    let out = child.stdout.as_mut().expect("piped stdout");
    let mut line = String::new();
    let mut byte = [0u8; 1];
    // Byte-wise so nothing is buffered away from later reads.
    loop {
        match std::io::Read::read(out, &mut byte) {
            Ok(0) => break,
            Ok(_) => {
                if byte[0] == b'\n' {
                    break;
                }
                line.push(byte[0] as char);
            }
            Err(_) => break,
        }
    }
    line
}

/// Reads lines until one contains `prefix`; returns the line from there (libtest prints its
/// own lines too).
pub fn expect_line(child: &mut Child, prefix: &str) -> String {
    for _ in 0..1000 {
        let l = read_line(child);
        // libtest prints "test name ... " without a newline before the test's own output.
        if let Some(at) = l.find(prefix) {
            return l[at..].to_string();
        }
        if l.is_empty() {
            // EOF or an empty line; keep going a bounded number of times.
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
        }
    }
    panic!("child never printed a line starting with {prefix:?}");
}

/// Parses `key=value` fields of a result line.
pub fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}
