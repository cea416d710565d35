//! The C example (`c/voxring_peer.c`) compiled with `cc` against the committed header and
//! the cdylib, reading frames a Rust producer (another process) writes and writing frames a
//! Rust consumer reads, in both policies, with checksums.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{Proc, build_c, unique_name};

fn peer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_voxring-ffi-peer"))
}

/// Compiles the C peer into `dir` and returns its path.
fn build_c_peer(dir: &Path) -> PathBuf {
    build_c(
        dir,
        "c/voxring_peer.c",
        "voxring_peer",
        &["-D_POSIX_C_SOURCE=200809L"],
    )
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
    let name = unique_name("cpeer", policy);
    let mut prod = Proc::start(Command::new(peer_bin()).args([
        "produce",
        &name,
        "--policy",
        policy,
        "--count",
        &count.to_string(),
        "--xrun-every",
        "10",
    ]));
    prod.line("ready");
    let mut reader = Proc::start(Command::new(&c_peer).args(["read", &name]));
    let produced = prod.line("done");
    let read = reader.line("done");
    assert_eq!(reader.exit_code(), Some(0), "{:?}", reader.seen());
    assert_eq!(prod.exit_code(), Some(0), "{:?}", prod.seen());
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
    let name = unique_name("cpeer", "cw");
    let mut writer = Proc::start(Command::new(&c_peer).args(["write", &name, policy, "1500"]));
    writer.line("ready");
    let mut reader = Proc::start(Command::new(peer_bin()).args(["consume", &name]));
    let written = writer.line("done");
    let read = reader.line("done");
    assert_eq!(reader.exit_code(), Some(0), "{:?}", reader.seen());
    assert_eq!(writer.exit_code(), Some(0), "{:?}", writer.seen());
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
    let name = unique_name("cpeer", "fb");
    // The reader looks for the segment under another name, as a peer whose /dev/shm is not
    // the producer's would: the attach fails (not found) and the socket serves it. The
    // producer serves its socket under that other name.
    let missing = format!("{name}-elsewhere");
    let sock = dir.path().join(format!("voxring.{missing}.sock"));
    let mut prod = Proc::start(Command::new(peer_bin()).args([
        "produce",
        &name,
        "--count",
        "800",
        "--fallback",
        sock.to_str().expect("utf-8 path"),
    ]));
    prod.line("ready");
    let mut reader = Proc::start(
        Command::new(&c_peer)
            .args(["read", &missing])
            .env("VOXRING_FALLBACK_DIR", dir.path()),
    );
    let produced = prod.line("done");
    let read = reader.line("done");
    assert_eq!(reader.exit_code(), Some(0), "{:?}", reader.seen());
    assert_eq!(prod.exit_code(), Some(0), "{:?}", prod.seen());
    assert_eq!(field(&read, "transport"), "socket-fallback", "{read}");
    assert_eq!(field(&read, "frames"), "800", "{read}");
    assert_eq!(field(&read, "bad"), "0");
    assert_eq!(field(&read, "crc"), field(&produced, "crc"));
    assert!(!sock.exists(), "the server removes its socket");
}
