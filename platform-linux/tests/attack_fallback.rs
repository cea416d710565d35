//! Attacks on the socket fallback, each performed and shown defeated: another user squats the
//! per-user socket directory or the socket name (or plants a symbolic link there), runs a fake
//! server, sends a greeting asking for a 16 TiB buffer, or races to connect while the socket
//! is being bound. The cases that switch users need root (they are skipped, and say so,
//! otherwise); they run the other user's side as this test binary re-executed as `nobody`.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ChildGuard, env, expect_line, role, spawn_role};
use voxring_core::Policy;
use voxring_linux::fallback::{
    FallbackError, FallbackReader, FallbackServer, MAX_READER_BUFFER_BYTES, socket_dir_in,
};
use voxring_linux::ring::Segment;

/// `nobody`'s uid and gid (65534 where /etc/passwd has no entry).
fn nobody() -> (u32, u32) {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 3 && f[0] == "nobody")
                    .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
            })
        })
        .unwrap_or((65534, 65534))
}

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether this run can switch users; says why not when it cannot.
fn root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("not root: no other user can be switched to; this attack needs root to perform");
    false
}

/// A directory like /tmp: anyone may create names in it, only their owner may remove them
/// (mode 1777). Removed (with what others left in it) when dropped, as root.
fn public_sticky_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    d
}

/// This test binary re-executed as `nobody` in `role`.
fn as_nobody(entry: &str, role: &str, envs: &[(&str, String)]) -> ChildGuard {
    let (uid, gid) = nobody();
    common::start_role_as(entry, role, envs, uid, gid)
}

/// Runs a role as `nobody` to completion; panics unless it succeeded.
fn run_as_nobody(entry: &str, role: &str, envs: &[(&str, String)]) {
    let (status, out) = as_nobody(entry, role, envs).wait_output();
    assert!(status.success(), "the child as nobody failed: {out}");
}

/// A fallback greeting (the wire format in the fallback module's docs).
fn greeting(frames: u32, spf: u32, format: u32, payload_bytes: u32) -> Vec<u8> {
    let mut b = b"VXFB".to_vec();
    for v in [1, 2, frames, spf, 1, format, 48_000, 1, payload_bytes] {
        b.extend_from_slice(&u32::to_le_bytes(v));
    }
    b
}

fn segment(name: &str) -> Segment {
    common::create_segment(name, &common::test_config(Policy::Lossy))
}

// ---- child roles (not tests by themselves) ----

/// Child role (as nobody): puts something at `VOXRING_TEST_PATH`: a world-writable directory,
/// a 0700 directory, a symbolic link to a directory of ours, a socket, or a symbolic link to
/// a file of ours (`VOXRING_TEST_KIND`).
#[test]
fn child_entry_squat() {
    common::child_role!("squat");
    let path = PathBuf::from(env("VOXRING_TEST_PATH"));
    let target = path.with_extension("target");
    match env("VOXRING_TEST_KIND").as_str() {
        "open-dir" => {
            std::fs::create_dir(&path).expect("mkdir");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        }
        "private-dir" => {
            std::fs::create_dir(&path).expect("mkdir");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        }
        "dir-link" => {
            std::fs::create_dir(&target).expect("mkdir target");
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777))
                .expect("chmod");
            std::os::unix::fs::symlink(&target, &path).expect("symlink");
        }
        "socket" => {
            let l = UnixListener::bind(&path).expect("bind");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
            drop(l); // the file stays
        }
        "file-link" => {
            std::fs::write(&target, b"nobody's file").expect("write target");
            std::os::unix::fs::symlink(&target, &path).expect("symlink");
        }
        k => panic!("unknown kind {k}"),
    }
    println!("squatted");
}

/// Child role (as nobody): a fake fallback server at `VOXRING_TEST_PATH` sending a valid
/// greeting to everyone who connects, until killed.
#[test]
fn child_entry_fake_server() {
    common::child_role!("fake-server");
    let path = PathBuf::from(env("VOXRING_TEST_PATH"));
    let l = UnixListener::bind(&path).expect("bind");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    println!("ready");
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let _ = s.write_all(&greeting(16, 64, 1, 128));
    }
}

/// Child role (as root, umask 0 so a bound socket starts world-connectable): serves the same
/// socket path `VOXRING_TEST_ROUNDS` times (mode 0600), then once more; prints `serving` and
/// waits for its stdin to close.
#[test]
fn child_entry_bind_server() {
    common::child_role!("bind-server");
    rustix::process::umask(rustix::fs::Mode::empty());
    let seg = segment(&env("VOXRING_TEST_SEGMENT"));
    let path = PathBuf::from(env("VOXRING_TEST_PATH"));
    let rounds: u32 = env("VOXRING_TEST_ROUNDS").parse().expect("rounds");
    for _ in 0..rounds {
        drop(FallbackServer::serve(&seg, &path, 0o600).expect("serve"));
    }
    let _server = FallbackServer::serve(&seg, &path, 0o600).expect("serve");
    println!("serving");
    let mut buf = String::new();
    let _ = std::io::stdin().read_line(&mut buf);
}

/// Child role (as nobody): tries to connect to every socket that appears in `VOXRING_TEST_DIR`
/// (and in any directory in it), until the file `VOXRING_TEST_STOP` exists; then one last
/// pass. Prints `watching` after its first pass, then `observed sockets=<attempts>
/// connected=<successes>`.
#[test]
fn child_entry_bind_observer() {
    common::child_role!("bind-observer");
    let dir = PathBuf::from(env("VOXRING_TEST_DIR"));
    let stop = PathBuf::from(env("VOXRING_TEST_STOP"));
    let (mut attempts, mut connected) = (0u64, 0u64);
    let pass = |attempts: &mut u64, connected: &mut u64| {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let mut candidates = vec![p.clone()];
            if let Ok(inner) = std::fs::read_dir(&p) {
                // Only readable if the server's private directory were not 0700.
                candidates.extend(inner.flatten().map(|i| i.path()));
            }
            candidates.push(p.join("s"));
            for c in candidates {
                let is_socket = std::fs::symlink_metadata(&c)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
                if is_socket {
                    *attempts += 1;
                }
                if UnixStream::connect(&c).is_ok() {
                    *connected += 1;
                }
            }
        }
    };
    pass(&mut attempts, &mut connected);
    println!("watching");
    while !stop.exists() {
        pass(&mut attempts, &mut connected);
    }
    pass(&mut attempts, &mut connected);
    println!("observed sockets={attempts} connected={connected}");
}

// ---- the attacks ----

/// Attack: another user creates `voxring-<uid>` in the temporary directory before us (open
/// to all, private to itself, or a symbolic link to its own directory), to watch or take over
/// our sockets. Defeated: the directory is refused with a reason, nothing is created through
/// the link; once it is gone, ours is made 0700.
#[test]
fn per_user_dir_made_first_by_another_user_is_refused() {
    if role().is_some() || !root() {
        return;
    }
    let (nobody_uid, _) = nobody();
    for (kind, says) in [
        ("open-dir", format!("uid {nobody_uid}")),
        ("private-dir", format!("uid {nobody_uid}")),
        ("dir-link", "symbolic link".to_string()),
    ] {
        let tmp = public_sticky_dir();
        let squatted = tmp.path().join(format!("voxring-{}", me()));
        run_as_nobody(
            "child_entry_squat",
            "squat",
            &[
                ("VOXRING_TEST_PATH", squatted.display().to_string()),
                ("VOXRING_TEST_KIND", kind.to_string()),
            ],
        );
        let err = socket_dir_in(None, None, tmp.path()).expect_err(kind);
        let msg = err.to_string();
        assert!(
            matches!(err, FallbackError::UnsafeDir { .. }),
            "{kind}: {msg}"
        );
        assert!(
            msg.contains(&says) && msg.contains("VOXRING_FALLBACK_DIR"),
            "{kind}: {msg}"
        );
        if kind == "dir-link" {
            let target = squatted.with_extension("target");
            assert_eq!(
                std::fs::read_dir(&target).expect("target").count(),
                0,
                "nothing was created through the link"
            );
        }
        // With the squatter's entry gone, ours is made and is private.
        if kind == "dir-link" {
            std::fs::remove_file(&squatted).expect("remove the link");
        } else {
            std::fs::remove_dir(&squatted).expect("remove the squatted dir");
        }
        let dir = socket_dir_in(None, None, tmp.path()).expect("our own directory");
        let m = std::fs::symlink_metadata(&dir).expect("made");
        assert!(m.is_dir() && m.uid() == me() && m.mode() & 0o7777 == 0o700);
    }
}

/// Our own directory with a loose mode, a group-writable `$VOXRING_FALLBACK_DIR` and an
/// `$XDG_RUNTIME_DIR` of the wrong mode: refused or skipped, each with a reason (no second
/// user needed).
#[test]
fn loose_socket_directories_are_refused() {
    common::parent_only!();
    let tmp = tempfile::tempdir().expect("temp dir");
    let ours = tmp.path().join(format!("voxring-{}", me()));
    std::fs::create_dir(&ours).expect("mkdir");
    std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let err = socket_dir_in(None, None, tmp.path()).unwrap_err();
    assert!(err.to_string().contains("mode 0755"), "{err}");

    let shared = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o770)).expect("chmod");
    let err = socket_dir_in(Some(shared.path()), None, tmp.path()).unwrap_err();
    assert!(err.to_string().contains("not sticky"), "{err}");
    // Sticky, like /tmp: accepted (the reader's SO_PEERCRED check guards what is inside).
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod");
    assert_eq!(
        socket_dir_in(Some(shared.path()), None, tmp.path()).expect("sticky"),
        shared.path()
    );

    // An $XDG_RUNTIME_DIR that is not 0700 is not used; one that is gets `voxring/` (0700).
    let run = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::remove_dir(&ours).expect("rmdir");
    let dir = socket_dir_in(None, Some(run.path()), tmp.path()).expect("temp fallback");
    assert_eq!(dir, ours);
    std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let dir = socket_dir_in(None, Some(run.path()), tmp.path()).expect("runtime dir");
    assert_eq!(dir, run.path().join("voxring"));
    let m = std::fs::symlink_metadata(&dir).expect("made");
    assert_eq!(m.mode() & 0o7777, 0o700);
}

/// Attack: in a shared sticky directory, another user creates the socket name first (a
/// socket of its own, or a symbolic link to its file) so that the producer (root here, who
/// could remove it) replaces or follows it. Defeated: the server refuses and leaves it alone;
/// a reader refuses the link.
#[test]
fn squatted_socket_name_is_refused_and_left_alone() {
    if role().is_some() || !root() {
        return;
    }
    let (nobody_uid, _) = nobody();
    let (name, _c) = common::scratch("fbsquat");
    let seg = segment(&name);
    for (kind, says) in [
        ("socket", format!("socket of uid {nobody_uid}")),
        ("file-link", "symbolic link".to_string()),
    ] {
        let dir = public_sticky_dir();
        let path = dir.path().join(format!("voxring.{name}.sock"));
        run_as_nobody(
            "child_entry_squat",
            "squat",
            &[
                ("VOXRING_TEST_PATH", path.display().to_string()),
                ("VOXRING_TEST_KIND", kind.to_string()),
            ],
        );
        let err = FallbackServer::serve(&seg, &path, 0o600).expect_err(kind);
        assert!(err.to_string().contains(&says), "{kind}: {err}");
        let m = std::fs::symlink_metadata(&path).expect("still there");
        assert_eq!(
            m.uid(),
            nobody_uid,
            "{kind}: the squatter's entry is untouched"
        );
        if kind == "file-link" {
            let target = path.with_extension("target");
            assert_eq!(std::fs::read(&target).expect("target"), b"nobody's file");
            let err = FallbackReader::connect(&path, Duration::from_secs(5)).unwrap_err();
            assert!(matches!(err, FallbackError::Symlink { .. }), "{err}");
            assert!(err.to_string().contains("symbolic link"), "{err}");
        }
        // Nothing of ours is left in the directory (no private bind directory either).
        let ours: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .filter(|e| e.metadata().is_ok_and(|m| m.uid() == me()))
            .map(|e| e.path())
            .collect();
        assert!(ours.is_empty(), "left behind: {ours:?}");
    }
}

/// Attack: another user serves a fake fallback server at the socket name in a shared sticky
/// `$VOXRING_FALLBACK_DIR` (which the directory rules accept). Defeated: the reader checks the
/// server's uid with SO_PEERCRED and refuses before reading a byte; expecting that uid on
/// purpose lets it in (so the uid check is what refused).
#[test]
fn reader_refuses_a_server_run_by_another_user() {
    if role().is_some() || !root() {
        return;
    }
    let (nobody_uid, _) = nobody();
    let shared = public_sticky_dir();
    let dir = socket_dir_in(Some(shared.path()), None, Path::new("/nonexistent"))
        .expect("a sticky shared directory is accepted");
    let path = dir.join("voxring.mic.sock");
    let mut fake = as_nobody(
        "child_entry_fake_server",
        "fake-server",
        &[("VOXRING_TEST_PATH", path.display().to_string())],
    );
    expect_line(fake.child(), "ready");
    let err = FallbackReader::connect(&path, Duration::from_secs(5)).unwrap_err();
    match &err {
        FallbackError::PeerNotTrusted {
            uid,
            expected,
            asking,
            ..
        } => assert_eq!((*uid, *expected, *asking), (nobody_uid, 0, 0)),
        other => panic!("expected PeerNotTrusted, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("served by uid {nobody_uid}")) && msg.contains("nothing was read"),
        "{msg}"
    );
    let r = FallbackReader::connect_expecting(&path, Duration::from_secs(5), Some(nobody_uid))
        .expect("expecting that uid on purpose");
    assert_eq!(r.config().frames, 16);
    drop(r);
    fake.kill9();
}

/// Attack: a hostile server greets with 2^20 frames of 16 MiB (a 16 TiB buffer; core's own
/// limits allow it). Defeated: a clear error before anything is allocated, no abort. A ring
/// the limit allows still connects.
#[test]
fn hostile_greeting_of_16_tib_is_refused_before_allocating() {
    common::parent_only!();
    let serve_once = |bytes: Vec<u8>| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.sock");
        let l = UnixListener::bind(&path).expect("bind");
        let t = std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.write_all(&bytes);
                // Hold the connection until the reader closes it.
                let _ = s.read(&mut [0u8; 1]);
            }
        });
        let r = FallbackReader::connect(&path, Duration::from_secs(5));
        (r, t, dir)
    };
    // 2^20 frames × 2^22 S32 samples = 2^20 × 16 MiB.
    let (r, t, _dir) = serve_once(greeting(1 << 20, 1 << 22, 2, 1 << 24));
    let err = r.unwrap_err();
    match &err {
        FallbackError::GreetingTooLarge { bytes, limit } => {
            assert!(*bytes >= (1u64 << 44), "{bytes}");
            assert_eq!(*limit, MAX_READER_BUFFER_BYTES as u64);
        }
        other => panic!("expected GreetingTooLarge, got {other}"),
    }
    assert!(err.to_string().contains("nothing was allocated"), "{err}");
    t.join().expect("fake server");
    // 64 frames of 64 KiB (4 MiB): accepted.
    let (r, t, _dir) = serve_once(greeting(64, 1 << 14, 2, 1 << 16));
    let r = r.expect("a ring within the limit");
    assert_eq!(r.payload_bytes(), 1 << 16);
    drop(r);
    t.join().expect("fake server");
}

/// Attack: another user races to connect to the socket while it is being bound, when it still
/// has the umask's mode (umask 0 in the server: world-connectable) before the chmod to 0600.
/// Defeated by construction: the socket is bound and chmod'ed inside a 0700 directory and
/// only then renamed into place. The observer tries every socket it can see, all the time,
/// across many binds, and a final pass while a server is up; it never gets in.
#[test]
fn socket_is_never_reachable_by_others_while_bound() {
    if role().is_some() || !root() {
        return;
    }
    let (name, _c) = common::scratch("fbrace");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let flags = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(flags.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let stop = flags.path().join("stop");
    let path = dir.path().join(format!("voxring.{name}.sock"));
    let mut observer = as_nobody(
        "child_entry_bind_observer",
        "bind-observer",
        &[
            ("VOXRING_TEST_DIR", dir.path().display().to_string()),
            ("VOXRING_TEST_STOP", stop.display().to_string()),
        ],
    );
    // The observer is trying before the first bind.
    expect_line(observer.child(), "watching");
    let mut server = ChildGuard(Some(
        spawn_role(
            "child_entry_bind_server",
            "bind-server",
            &[
                ("VOXRING_TEST_SEGMENT", name.clone()),
                ("VOXRING_TEST_PATH", path.display().to_string()),
                ("VOXRING_TEST_ROUNDS", "200".into()),
            ],
        )
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the server"),
    ));
    expect_line(server.child(), "serving");
    let m = std::fs::symlink_metadata(&path).expect("the socket is in place");
    assert_eq!(
        m.mode() & 0o777,
        0o600,
        "the mode asked for, despite umask 0"
    );
    std::fs::write(&stop, b"").expect("stop file");
    let (status, out) = observer.wait_output();
    assert!(status.success(), "observer: {out}");
    drop(server.child().stdin.take());
    assert!(server.wait().success());
    let line = out
        .lines()
        .find_map(|l| l.find("observed").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no result from the observer: {out}"));
    assert!(
        common::field(line, "sockets") >= 1,
        "the observer saw the live socket at least in its last pass: {line}"
    );
    eprintln!("bind race: {line}");
    assert_eq!(common::field(line, "connected"), 0, "{line}");
    assert!(!path.exists(), "the server removed its socket");
}

/// The default place end to end: the server binds in the per-user directory it made, with
/// the mode asked for, and the reader (same user) connects.
#[test]
fn server_and_reader_meet_in_the_private_directory() {
    common::parent_only!();
    let (name, _c) = common::scratch("fbdir");
    let seg = segment(&name);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = socket_dir_in(None, None, tmp.path()).expect("private dir");
    let path = dir.join(format!("voxring.{name}.sock"));
    let server = FallbackServer::serve(&seg, &path, 0o600).expect("serve");
    let m = std::fs::symlink_metadata(&path).expect("socket");
    assert_eq!(m.mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_dir(&dir).expect("list").count(),
        1,
        "only the socket: the bind directory is gone"
    );
    let r = FallbackReader::connect(&path, Duration::from_secs(5)).expect("connect");
    assert_eq!(r.config().frames, common::test_config(Policy::Lossy).frames);
    drop(r);
    drop(server);
    assert!(!path.exists());
}
