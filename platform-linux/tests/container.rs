//! `docs/containers.md` run as written: the C consumer of `docs/protocol.md`, started in a
//! rootless container (user, mount, IPC and PID namespaces, made with `unshare` as a rootless
//! runtime makes them), joins a ring a Rust producer outside created, and reads it bit-exact.
//! The owner checks hold across the uid mapping: a container of another user is refused, and
//! so is a ring another user planted world-writable, which the kernel would let it open.

mod common;
mod protocol;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{ChildGuard, ShmCleanup, shm_path, unique_name};
use protocol::{Feed, GIVE_UP, build_consumer, config, consume_while, feed, field, has_consumer};
use voxring_linux::ring::Segment;
use voxring_linux::segment::CreateOptions;

/// The host uid that owns the rings (an ordinary user: no root power inside or outside).
const OWNER: u32 = 43_210;
/// Another host uid.
const OTHER: u32 = 43_211;

/// The shell block of `docs/containers.md` marked as the recipe the test runs.
fn recipe() -> String {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/containers.md");
    let text = std::fs::read_to_string(&doc).expect("read docs/containers.md");
    let after = text
        .split_once("<!-- recipe: run by platform-linux/tests/container.rs -->")
        .expect("docs/containers.md marks its recipe")
        .1;
    let body = after
        .split_once("```sh\n")
        .expect("a sh block after the marker")
        .1;
    body.split_once("\n```")
        .expect("the block ends")
        .0
        .to_owned()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A directory any user may read (the consumer binary must be reachable by `OWNER` and
/// `OTHER`), holding the compiled consumer.
fn consumer_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .expect("temp dir");
    let bin = build_consumer(dir.path(), false);
    (dir, bin)
}

/// The recipe running `consumer <args>` as host uid `uid` (through `setpriv` when this test
/// runs as root; as ourselves otherwise), with `SHARE_SHM` set to `share`.
fn in_container(uid: Option<u32>, share: bool, consumer: &Path, args: &[&str]) -> Command {
    let mut cmd = match uid {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={u}"))
                .arg(format!("--regid={u}"))
                .arg("--clear-groups")
                .arg("sh");
            c
        }
        None => Command::new("sh"),
    };
    cmd.arg("-c")
        .arg(recipe())
        .arg("container.sh")
        .arg(consumer)
        .args(args)
        .env("SHARE_SHM", if share { "1" } else { "0" });
    cmd
}

/// Runs a container that must be refused at attach: exit code 2, stderr returned. A consumer
/// that is wrongly let in waits for frames that never come: given up after [`GIVE_UP`].
fn refused(cmd: &mut Command, seg: &Segment) -> String {
    let mut child = ChildGuard(Some(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the container"),
    ));
    let give_up = Instant::now() + GIVE_UP;
    while child.child().try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < give_up, "the consumer was not refused");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut stderr = String::new();
    let mut c = child.0.take().expect("child");
    c.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = c.wait().expect("wait");
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert!(!has_consumer(seg), "a refused consumer joined");
    stderr
}

fn create(name: &str, owner: Option<u32>, mode: u32) -> Segment {
    let seg = Segment::create(name, &config(), &CreateOptions::default()).expect("create");
    let path = shm_path(name);
    if let Some(u) = owner {
        std::os::unix::fs::chown(&path, Some(u), Some(u)).expect("chown the ring");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    seg
}

#[test]
fn a_container_of_the_owner_joins_a_ring_made_outside_and_reads_bit_exact() {
    let (_dir, bin) = consumer_dir();
    let owner = is_root().then_some(OWNER);
    let name = unique_name("ctr");
    let _clean = ShmCleanup(name.clone());
    let seg = create(&name, owner, 0o600);

    // As a runtime makes it by default, the container's own /dev/shm has no ring.
    let stderr = refused(&mut in_container(owner, false, &bin, &[&name]), &seg);
    assert!(stderr.contains("no such ring"), "{stderr}");

    // With the host's /dev/shm: the mapped owner joins, outlives the producer's liveness
    // checks from another PID namespace, parks and is woken, reads every frame.
    let opts = Feed {
        min_checks: 8,
        park_every: 10,
        ..Feed::frames(200)
    };
    let cmd = in_container(owner, true, &bin, &[&name, "--park-ms", "60000"]);
    let (produced, fin) = consume_while(cmd, &seg, |stop| feed(&seg, opts, stop));
    fin.assert_read_all(&produced, "eos");
    fin.assert_kept_alive_and_woken(&produced, 8);
    assert!(!has_consumer(&seg), "the consumer did not leave");
    // It ran in a PID namespace of its own (PID 1 there): the producer judged it by its lock.
    let token = u64::from_str_radix(field(&fin.joined, "token").trim_start_matches("0x"), 16)
        .expect("token");
    assert_eq!(voxring_linux::liveness::pid_of(token), 1, "{}", fin.joined);
}

#[test]
fn a_container_of_another_uid_is_refused_even_where_the_kernel_would_allow_it() {
    if !is_root() {
        eprintln!("skipped: playing two other users needs root (setpriv); the owner's case ran");
        return;
    }
    let (_dir, bin) = consumer_dir();

    // Another user's container: the ring (0600, OWNER's) shows as the unmapped uid 65534.
    let name = unique_name("ctr-other");
    let _clean = ShmCleanup(name.clone());
    let seg = create(&name, Some(OWNER), 0o600);
    let stderr = refused(&mut in_container(Some(OTHER), true, &bin, &[&name]), &seg);
    assert!(stderr.contains("owned by uid 65534"), "{stderr}");
    assert!(stderr.contains("expected owner uid 0"), "{stderr}");

    // The attack: OTHER planted a world-writable ring where OWNER's container looks. The
    // kernel lets OWNER open and write it; the reader's owner check refuses it (the mode
    // checks are waived here, so that the owner check alone stands between them).
    let planted = unique_name("ctr-planted");
    let _clean2 = ShmCleanup(planted.clone());
    let seg2 = create(&planted, Some(OTHER), 0o666);
    let stderr = refused(
        &mut in_container(
            Some(OWNER),
            true,
            &bin,
            &[&planted, "--allow-world", "--allow-group"],
        ),
        &seg2,
    );
    assert!(stderr.contains("owner mismatch"), "{stderr}");
    assert!(stderr.contains("owned by uid 65534"), "{stderr}");
}
