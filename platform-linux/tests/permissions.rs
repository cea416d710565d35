//! Attach refuses what it must not trust, each case with its own error: another user's
//! segment, a symlink, a wrong size, a wrong version, a world- or group-writable file, a
//! non-regular file, a bad name.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use common::{ChildGuard, ShmCleanup, role, shm_path, spawn_role, unique_name};
use voxring_linux::segment::{AttachError, AttachOptions, CreateOptions, SegmentFile};

const SIZE: usize = 64 * 1024;

fn create(name: &str) -> SegmentFile {
    SegmentFile::create_with(name, SIZE, &CreateOptions::default(), |_, _| {
        Ok::<(), voxring_linux::segment::CreateError>(())
    })
    .expect("create segment")
}

#[test]
fn created_segment_is_0600_and_attachable_by_its_owner() {
    let name = unique_name("own");
    let _c = ShmCleanup(name.clone());
    let seg = create(&name);
    let meta = std::fs::symlink_metadata(shm_path(&name)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.len(), SIZE as u64);
    let att = SegmentFile::attach(&name, SIZE as u64, &AttachOptions::default()).unwrap();
    // SAFETY: both mappings are SIZE bytes of the same file; nobody else touches it.
    unsafe {
        seg.mapping().as_ptr().add(100).write(7);
        assert_eq!(att.mapping().as_ptr().add(100).read(), 7);
    }
    drop(att);
    drop(seg);
    assert!(
        !shm_path(&name).exists(),
        "the creator removes its segment on drop"
    );
}

#[test]
fn creating_an_existing_name_is_refused() {
    let name = unique_name("dup");
    let _c = ShmCleanup(name.clone());
    let _seg = create(&name);
    let err = SegmentFile::create_with(&name, SIZE, &CreateOptions::default(), |_, _| {
        Ok::<(), voxring_linux::segment::CreateError>(())
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            voxring_linux::segment::CreateError::AlreadyExists { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("voxring segments clean"));
}

#[test]
fn group_access_gives_0660_and_needs_allow_group_writable() {
    let name = unique_name("grp");
    let _c = ShmCleanup(name.clone());
    let gid = rustix::process::getegid().as_raw();
    let opts = CreateOptions {
        access: voxring_linux::segment::Access::Group(voxring_linux::segment::GroupSpec::Id(gid)),
        ..Default::default()
    };
    let _seg = SegmentFile::create_with(&name, SIZE, &opts, |_, _| {
        Ok::<(), voxring_linux::segment::CreateError>(())
    })
    .unwrap();
    let meta = std::fs::symlink_metadata(shm_path(&name)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    let err = SegmentFile::attach(&name, SIZE as u64, &AttachOptions::default()).unwrap_err();
    assert!(
        matches!(err, AttachError::GroupWritable { mode: 0o660, .. }),
        "{err}"
    );
    let ok = SegmentFile::attach(
        &name,
        SIZE as u64,
        &AttachOptions {
            allow_group_writable: true,
            ..Default::default()
        },
    );
    assert!(ok.is_ok());
}

#[test]
fn unknown_group_name_is_an_error() {
    let opts = CreateOptions {
        access: voxring_linux::segment::Access::Group(voxring_linux::segment::GroupSpec::Name(
            "voxring-no-such-group-xyz".into(),
        )),
        ..Default::default()
    };
    let err = SegmentFile::create_with(&unique_name("nogrp"), SIZE, &opts, |_, _| {
        Ok::<(), voxring_linux::segment::CreateError>(())
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            voxring_linux::segment::CreateError::UnknownGroup { .. }
        ),
        "{err}"
    );
}

#[test]
fn world_writable_segment_is_refused() {
    let name = unique_name("world");
    let _c = ShmCleanup(name.clone());
    let _seg = create(&name);
    std::fs::set_permissions(shm_path(&name), std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = SegmentFile::attach(
        &name,
        SIZE as u64,
        &AttachOptions {
            allow_group_writable: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, AttachError::WorldWritable { mode: 0o666, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("writable by every user"));
}

#[test]
fn symlink_is_refused() {
    let target = unique_name("target");
    let link = unique_name("link");
    let _c1 = ShmCleanup(target.clone());
    let _c2 = ShmCleanup(link.clone());
    let _seg = create(&target);
    std::os::unix::fs::symlink(shm_path(&target), shm_path(&link)).unwrap();
    let err = SegmentFile::attach(&link, SIZE as u64, &AttachOptions::default()).unwrap_err();
    assert!(matches!(err, AttachError::Symlink { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link"));
}

#[test]
fn fifo_is_refused_as_not_a_regular_file() {
    let name = unique_name("fifo");
    let _c = ShmCleanup(name.clone());
    rustix::fs::mknodat(
        rustix::fs::CWD,
        shm_path(&name),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    let err = SegmentFile::attach(&name, SIZE as u64, &AttachOptions::default()).unwrap_err();
    assert!(
        matches!(err, AttachError::NotRegularFile { kind: "FIFO", .. }),
        "{err}"
    );
}

#[test]
fn too_small_segment_is_refused() {
    let name = unique_name("small");
    let _c = ShmCleanup(name.clone());
    let _seg = create(&name);
    let err = SegmentFile::attach(&name, SIZE as u64 + 1, &AttachOptions::default()).unwrap_err();
    match err {
        AttachError::TooSmall { size, needed, .. } => {
            assert_eq!(size, SIZE as u64);
            assert_eq!(needed, SIZE as u64 + 1);
        }
        other => panic!("expected TooSmall, got {other}"),
    }
}

#[test]
fn missing_segment_and_bad_names_have_their_own_errors() {
    let err =
        SegmentFile::attach(&unique_name("absent"), 1, &AttachOptions::default()).unwrap_err();
    assert!(matches!(err, AttachError::NotFound { .. }), "{err}");
    for bad in [
        "",
        "../etc/passwd",
        "a/b",
        ".hidden",
        "x.tmp-1",
        &"n".repeat(201),
    ] {
        let err = SegmentFile::attach(bad, 1, &AttachOptions::default()).unwrap_err();
        assert!(matches!(err, AttachError::Name(_)), "{bad:?}: {err}");
    }
}

#[test]
fn owner_mismatch_names_both_uids_and_the_container_docs() {
    // The same check as another user's segment, reachable without a second user: expect an
    // owner that is not the file's.
    let name = unique_name("owner");
    let _c = ShmCleanup(name.clone());
    let _seg = create(&name);
    let me = rustix::process::geteuid().as_raw();
    let err = SegmentFile::attach(
        &name,
        SIZE as u64,
        &AttachOptions {
            expected_owner: Some(me + 4242),
            ..Default::default()
        },
    )
    .unwrap_err();
    match &err {
        AttachError::OwnerMismatch {
            owner,
            expected,
            asking,
            ..
        } => assert_eq!((*owner, *expected, *asking), (me, me + 4242, me)),
        other => panic!("expected OwnerMismatch, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&format!("created by uid {me}")), "{msg}");
    assert!(msg.contains("containers.md"), "{msg}");
}

const TEST_USER: &str = "voxring-test";

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Child role: creates a segment (kept after exit) as whatever user it runs as.
#[test]
fn child_entry_create_segment() {
    if role().as_deref() != Some("create-as-other") {
        return; // Not a test by itself: the entry point of the child process below.
    }
    let name = common::env("VOXRING_TEST_SEGMENT");
    let opts = CreateOptions {
        remove_on_drop: false,
        ..Default::default()
    };
    SegmentFile::create_with(&name, SIZE, &opts, |_, _| {
        Ok::<(), voxring_linux::segment::CreateError>(())
    })
    .expect("child creates the segment");
    println!("created");
}

#[test]
fn another_users_segment_is_refused_with_both_uids() {
    if role().is_some() {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        // Without root no second user can be made or switched to; the owner check itself is
        // covered by owner_mismatch_names_both_uids_and_the_container_docs.
        eprintln!("not root: no second user can be created; this case needs root");
        return;
    }
    let created_user = if lookup_user(TEST_USER).is_none() {
        let st = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                TEST_USER,
            ])
            .status()
            .expect("run useradd");
        // Another test run may have created it at the same moment: only a missing user fails.
        assert!(
            st.success() || lookup_user(TEST_USER).is_some(),
            "useradd {TEST_USER} failed"
        );
        st.success()
    } else {
        false
    };
    let (uid, gid) = lookup_user(TEST_USER).expect("test user exists");
    let name = unique_name("other");
    let _c = ShmCleanup(name.clone());
    let mut cmd = spawn_role(
        "child_entry_create_segment",
        "create-as-other",
        &[("VOXRING_TEST_SEGMENT", name.clone())],
    );
    cmd.uid(uid).gid(gid);
    let mut child = ChildGuard(Some(cmd.spawn().expect("spawn child as the test user")));
    let (status, out) = child.wait_output();
    if created_user {
        let _ = std::process::Command::new("userdel")
            .arg(TEST_USER)
            .status();
    }
    assert!(
        status.success() && out.contains("created"),
        "child failed: {out}"
    );
    let meta = std::fs::symlink_metadata(shm_path(&name)).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), uid);
    let err = SegmentFile::attach(&name, SIZE as u64, &AttachOptions::default()).unwrap_err();
    match &err {
        AttachError::OwnerMismatch {
            owner,
            expected,
            asking,
            ..
        } => assert_eq!((*owner, *expected, *asking), (uid, 0, 0)),
        other => panic!("expected OwnerMismatch, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&format!("created by uid {uid}")), "{msg}");
    assert!(msg.contains("runs as uid 0"), "{msg}");
    // Expecting that owner explicitly lets us in.
    let ok = SegmentFile::attach(
        &name,
        SIZE as u64,
        &AttachOptions {
            expected_owner: Some(uid),
            ..Default::default()
        },
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
}

// ---- ring-level checks (after the file checks pass) ----

use voxring_core::Policy;
use voxring_linux::ring::Segment;

fn ring_segment(name: &str) -> Segment {
    Segment::create(
        name,
        &common::test_config(Policy::Lossless),
        &CreateOptions::default(),
    )
    .expect("create ring segment")
}

#[test]
fn wrong_layout_version_is_refused() {
    let name = unique_name("version");
    let _c = ShmCleanup(name.clone());
    let seg = ring_segment(&name);
    // abi_version is the u32 at offset 8 (core/LAYOUT.md).
    // SAFETY: offset 8..12 is inside the mapped header; the word is accessed atomically.
    let word = unsafe {
        &*seg
            .mapping()
            .as_ptr()
            .add(8)
            .cast::<std::sync::atomic::AtomicU32>()
    };
    word.store(
        voxring_core::ABI_VERSION + 1,
        std::sync::atomic::Ordering::Relaxed,
    );
    let err = Segment::attach(&name, &AttachOptions::default()).unwrap_err();
    match &err {
        AttachError::WrongVersion {
            found, supported, ..
        } => {
            assert_eq!(*found, voxring_core::ABI_VERSION + 1);
            assert_eq!(*supported, voxring_core::ABI_VERSION);
        }
        other => panic!("expected WrongVersion, got {other}"),
    }
    assert!(err.to_string().contains("layout version"), "{err}");
}

#[test]
fn not_a_ring_is_refused_by_the_layout_checks() {
    let name = unique_name("garbage");
    let _c = ShmCleanup(name.clone());
    let _seg = create(&name); // a zero-filled file: the right kind, but no ring in it
    let err = Segment::attach(&name, &AttachOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            AttachError::Layout {
                error: voxring_core::AttachError::BadMagic { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn ring_segment_cut_short_is_refused_as_too_small() {
    let name = unique_name("short");
    let _c = ShmCleanup(name.clone());
    let seg = ring_segment(&name);
    let full = seg.config().region_size().unwrap() as u64;
    // Someone truncates the file before we attach.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(shm_path(&name))
        .unwrap();
    f.set_len(full / 2).unwrap();
    let err = Segment::attach(&name, &AttachOptions::default()).unwrap_err();
    match err {
        AttachError::TooSmall { size, needed, .. } => {
            assert_eq!(size, full / 2);
            assert_eq!(needed, full);
        }
        other => panic!("expected TooSmall, got {other}"),
    }
}

#[test]
fn memfd_ring_crosses_a_socket_and_carries_frames() {
    let seg = Segment::create_memfd(
        "unit",
        &common::test_config(Policy::Lossless),
        Default::default(),
    )
    .unwrap();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    seg.send(&a).unwrap();
    let got = Segment::receive(&b, Default::default()).unwrap();
    let mut rx = got.consumer().unwrap();
    let mut tx = seg.producer().unwrap();
    // Fewer frames than the capacity (16): producer and consumer share this thread.
    common::produce(&mut tx, Some(12), 3);
    let seen = common::consume(&mut rx, None);
    assert_eq!(seen.delivered, 12);
    assert!(seen.end_flag);
    // The receiver's ticket lock is its own: the sender sees it as a live consumer.
    assert_eq!(seg.evict_dead().consumers, 0);
    drop(tx);
    assert_eq!(got.producer_state(), voxring_linux::ring::PeerState::Absent);
    // A named segment is not sent over sockets.
    let name = unique_name("nosend");
    let _c = ShmCleanup(name.clone());
    assert!(ring_segment(&name).send(&a).is_err());
}
