//! SIGINT and SIGTERM remove the process's own artifacts; so does a normal exit.

mod common;

use common::{ChildGuard, env, expect_line, shm_path, spawn_role, unique_name};
use std::os::unix::process::ExitStatusExt;
use voxring_core::Policy;
use voxring_linux::cleanup::{ArtifactGuard, SignalMode, install_signal_cleanup};

/// Child role: create a segment and a socket file, install the signal clean-up, then either
/// wait to be signalled or exit normally (through `std::process::exit`, which skips drops).
#[test]
fn child_entry_artifacts() {
    common::child_role!("artifacts");
    install_signal_cleanup(SignalMode::Exit).expect("install signal clean-up");
    let seg = common::create_segment(
        &env("VOXRING_TEST_SEGMENT"),
        &common::test_config(Policy::Lossless),
    );
    let sock_path = std::path::PathBuf::from(env("VOXRING_TEST_SOCKET"));
    let _listener = std::os::unix::net::UnixListener::bind(&sock_path).expect("bind");
    let guard = ArtifactGuard::register(sock_path);
    println!("ready");
    if std::env::var("VOXRING_TEST_EXIT").is_ok() {
        // Wait until the parent has seen the files (it closes our stdin), then exit.
        let mut buf = String::new();
        let _ = std::io::stdin().read_line(&mut buf);
        std::mem::forget(seg);
        std::mem::forget(guard);
        std::process::exit(0);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn run(signal: Option<rustix::process::Signal>) {
    let name = unique_name("sig");
    let _c = common::ShmCleanup(name.clone());
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("artifact.sock");
    let mut envs = vec![
        ("VOXRING_TEST_SEGMENT", name.clone()),
        ("VOXRING_TEST_SOCKET", sock.display().to_string()),
    ];
    if signal.is_none() {
        envs.push(("VOXRING_TEST_EXIT", "1".into()));
    }
    let mut child = ChildGuard(Some(
        spawn_role("child_entry_artifacts", "artifacts", &envs)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    expect_line(child.child(), "ready");
    assert!(shm_path(&name).exists() && sock.exists());
    drop(child.child().stdin.take());
    if let Some(sig) = signal {
        let pid = rustix::process::Pid::from_raw(child.pid() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }
    let status = child.wait();
    match signal {
        Some(sig) => assert_eq!(status.signal(), Some(sig.as_raw()), "{status:?}"),
        None => assert!(status.success(), "{status:?}"),
    }
    let left_shm = shm_path(&name).exists();
    let left_sock = sock.exists();
    drop(dir);
    assert!(!left_shm, "segment left behind");
    assert!(!left_sock, "socket left behind");
}

#[test]
fn sigterm_removes_own_artifacts_and_dies_of_sigterm() {
    common::parent_only!();
    run(Some(rustix::process::Signal::TERM));
}

#[test]
fn sigint_removes_own_artifacts_and_dies_of_sigint() {
    common::parent_only!();
    run(Some(rustix::process::Signal::INT));
}

#[test]
fn normal_exit_removes_own_artifacts() {
    common::parent_only!();
    run(None);
}
