//! The C example (`c/voxring_peer.c`) compiled with `cc` against the committed header and
//! the cdylib, reading frames a Rust producer (another process) writes and writing frames a
//! Rust consumer reads, in both policies, with checksums.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Kills and reaps a child by PID when dropped (a failing test leaves no process behind).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    // Relaxed: only uniqueness matters.
    format!(
        "cpeer-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn peer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_voxring-ffi-peer"))
}

/// The directory holding `libvoxring_ffi.so`: next to the peer binary (target/<profile>, after
/// `cargo build`) or in its `deps/` (where `cargo test` leaves the cdylib without copying it up).
fn lib_dir() -> PathBuf {
    let dir = peer_bin()
        .parent()
        .expect("the peer binary has a directory")
        .to_path_buf();
    let found = [dir.clone(), dir.join("deps")]
        .into_iter()
        .find(|d| d.join("libvoxring_ffi.so").exists());
    found.unwrap_or_else(|| {
        panic!(
            "libvoxring_ffi.so is in neither {0} nor {0}/deps: cargo builds the cdylib with the \
             crate's tests; run `cargo build -p voxring-ffi`",
            dir.display()
        )
    })
}

/// Compiles the C peer into `dir` and returns its path.
fn build_c_peer(dir: &Path) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    let out = dir.join("voxring_peer");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O1",
        ])
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("c/voxring_peer.c"))
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lvoxring_ffi")
        .arg("-o")
        .arg(&out)
        .status()
        .expect("cc runs (install a C compiler: apt-get install gcc)");
    assert!(status.success(), "compiling c/voxring_peer.c failed");
    out
}

fn spawn(cmd: &mut Command) -> (Reaped, BufReader<ChildStdout>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a peer");
    let out = BufReader::new(child.stdout.take().expect("piped stdout"));
    (Reaped(child), out)
}

fn expect_line(out: &mut BufReader<ChildStdout>, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).expect("read a peer's stdout");
        assert!(n > 0, "the peer ended before printing `{prefix}`");
        if line.starts_with(prefix) {
            return line.trim().to_owned();
        }
    }
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in `{line}`"))
        .to_owned()
}

fn rust_producer_c_reader(policy: &str, count: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let c_peer = build_c_peer(dir.path());
    let name = unique(policy);
    let (mut prod, mut pout) = spawn(Command::new(peer_bin()).args([
        "produce",
        &name,
        "--policy",
        policy,
        "--count",
        &count.to_string(),
        "--xrun-every",
        "10",
    ]));
    expect_line(&mut pout, "ready");
    let (mut reader, mut rout) = spawn(Command::new(&c_peer).args(["read", &name]));
    let produced = expect_line(&mut pout, "done");
    let read = expect_line(&mut rout, "done");
    assert!(reader.0.wait().expect("wait").success());
    assert!(prod.0.wait().expect("wait").success());
    assert_eq!(field(&read, "bad"), "0", "{read}");
    assert_eq!(field(&read, "transport"), "shm");
    let frames: u64 = field(&read, "frames").parse().expect("count");
    let lost: u64 = field(&read, "lost").parse().expect("lost");
    if policy == "lossless" {
        assert_eq!(frames, count, "{read}");
        assert_eq!(lost, 0);
        assert_eq!(field(&read, "crc"), field(&produced, "crc"));
        assert_eq!(field(&read, "xruns"), field(&produced, "xruns"));
    } else {
        // Lossy: every frame is either read intact or counted as lost (the last frame, with
        // END_OF_STREAM, may itself be lost: the reader then ends on the producer's exit).
        assert!(frames + lost <= count && frames > 0, "{read}");
    }
    assert!(!Path::new(&format!("/dev/shm/voxring.{name}")).exists());
}

#[test]
fn c_reads_a_rust_producer_lossless() {
    rust_producer_c_reader("lossless", 2000);
}

#[test]
fn c_reads_a_rust_producer_lossy() {
    rust_producer_c_reader("lossy", 2000);
}

fn c_writer_rust_reader(policy: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let c_peer = build_c_peer(dir.path());
    let name = unique("cw");
    let (mut writer, mut wout) =
        spawn(Command::new(&c_peer).args(["write", &name, policy, "1500"]));
    expect_line(&mut wout, "ready");
    let (mut reader, mut rout) = spawn(Command::new(peer_bin()).args(["consume", &name]));
    let written = expect_line(&mut wout, "done");
    let read = expect_line(&mut rout, "done");
    assert!(reader.0.wait().expect("wait").success());
    assert!(writer.0.wait().expect("wait").success());
    assert_eq!(field(&read, "bad"), "0", "{read}");
    if policy == "lossless" {
        assert_eq!(field(&read, "frames"), "1500", "{read}");
        assert_eq!(field(&read, "crc"), field(&written, "crc"));
    } else {
        let frames: u64 = field(&read, "frames").parse().expect("count");
        let lost: u64 = field(&read, "lost").parse().expect("lost");
        assert!(frames + lost <= 1500 && frames > 0, "{read}");
    }
    assert!(!Path::new(&format!("/dev/shm/voxring.{name}")).exists());
}

#[test]
fn rust_reads_a_c_writer_lossless() {
    c_writer_rust_reader("lossless");
}

#[test]
fn rust_reads_a_c_writer_lossy() {
    c_writer_rust_reader("lossy");
}

#[test]
fn c_reader_falls_back_to_the_socket_when_the_segment_is_missing() {
    // A private (0700) directory of ours: it passes the reader's VOXRING_FALLBACK_DIR check.
    let dir = tempfile::tempdir().expect("temp dir");
    let c_peer = build_c_peer(dir.path());
    let name = unique("fb");
    // The reader looks for the segment under another name, as a peer whose /dev/shm is not
    // the producer's would: the attach fails (not found) and the socket serves it. The
    // producer serves its socket under that other name.
    let missing = format!("{name}-elsewhere");
    let sock = dir.path().join(format!("voxring.{missing}.sock"));
    let (mut prod, mut pout) = spawn(Command::new(peer_bin()).args([
        "produce",
        &name,
        "--count",
        "800",
        "--fallback",
        sock.to_str().expect("utf-8 path"),
    ]));
    expect_line(&mut pout, "ready");
    let (mut reader, mut rout) = spawn(
        Command::new(&c_peer)
            .args(["read", &missing])
            .env("VOXRING_FALLBACK_DIR", dir.path()),
    );
    let produced = expect_line(&mut pout, "done");
    let read = expect_line(&mut rout, "done");
    assert!(reader.0.wait().expect("wait").success());
    assert!(prod.0.wait().expect("wait").success());
    assert_eq!(field(&read, "transport"), "socket-fallback", "{read}");
    assert_eq!(field(&read, "frames"), "800", "{read}");
    assert_eq!(field(&read, "bad"), "0");
    assert_eq!(field(&read, "crc"), field(&produced, "crc"));
    assert!(!sock.exists(), "the server removes its socket");
}
