//! Attach refuses what it must not trust, each case with its own error: another user's
//! segment, a symlink, a wrong size, a wrong version, a world- or group-writable file, a
//! non-regular file, a bad name.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{scratch, shm_path, unique_name};
use voxring_linux::segment::{AttachError, AttachOptions, CreateError, CreateOptions, SegmentFile};

const SIZE: usize = 64 * 1024;

/// Creates a plain segment file of SIZE bytes (no ring in it) with `opts`.
fn create_file(name: &str, opts: &CreateOptions) -> Result<SegmentFile, CreateError> {
    SegmentFile::create_with(name, SIZE, opts, |_, _| Ok::<(), CreateError>(()))
}

fn create(name: &str) -> SegmentFile {
    create_file(name, &CreateOptions::default()).expect("create segment")
}

/// Attaches to the segment file `name` of SIZE bytes with `opts`.
fn attach(name: &str, opts: AttachOptions) -> Result<SegmentFile, AttachError> {
    SegmentFile::attach(name, SIZE as u64, &opts)
}

/// The (owner, expected, asking) uids of an `OwnerMismatch`; panics on any other error.
fn owner_mismatch(err: &AttachError) -> (u32, u32, u32) {
    match err {
        AttachError::OwnerMismatch {
            owner,
            expected,
            asking,
            ..
        } => (*owner, *expected, *asking),
        other => panic!("expected OwnerMismatch, got {other}"),
    }
}

/// Options that accept a group-writable segment.
fn group_writable_ok() -> AttachOptions {
    AttachOptions {
        allow_group_writable: true,
        ..Default::default()
    }
}

#[test]
fn created_segment_is_0600_and_attachable_by_its_owner() {
    let (name, _c) = scratch("own");
    let seg = create(&name);
    let meta = std::fs::symlink_metadata(shm_path(&name)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.len(), SIZE as u64);
    let att = attach(&name, AttachOptions::default()).unwrap();
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
    let (name, _c) = scratch("dup");
    let _seg = create(&name);
    let err = create_file(&name, &CreateOptions::default()).unwrap_err();
    assert!(matches!(err, CreateError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("voxring segments clean"));
}

#[test]
fn group_access_gives_0660_and_needs_allow_group_writable() {
    let (name, _c) = scratch("grp");
    let gid = rustix::process::getegid().as_raw();
    let opts = CreateOptions {
        access: voxring_linux::segment::Access::Group(voxring_linux::segment::GroupSpec::Id(gid)),
        ..Default::default()
    };
    let _seg = create_file(&name, &opts).unwrap();
    let meta = std::fs::symlink_metadata(shm_path(&name)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    let err = attach(&name, AttachOptions::default()).unwrap_err();
    assert!(
        matches!(err, AttachError::GroupWritable { mode: 0o660, .. }),
        "{err}"
    );
    // Every binding reports it as a permission failure (the Python package once said
    // VR_E_ATTACH where the C ABI said VR_E_PERMISSION).
    assert_eq!(
        err.class(),
        voxring_linux::segment::FailureClass::Permission
    );
    assert!(attach(&name, group_writable_ok()).is_ok());
}

#[test]
fn unknown_group_name_is_an_error() {
    let opts = CreateOptions {
        access: voxring_linux::segment::Access::Group(voxring_linux::segment::GroupSpec::Name(
            "voxring-no-such-group-xyz".into(),
        )),
        ..Default::default()
    };
    let err = create_file(&unique_name("nogrp"), &opts).unwrap_err();
    assert!(matches!(err, CreateError::UnknownGroup { .. }), "{err}");
}

#[test]
fn world_writable_segment_is_refused() {
    let (name, _c) = scratch("world");
    let _seg = create(&name);
    std::fs::set_permissions(shm_path(&name), std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = attach(&name, group_writable_ok()).unwrap_err();
    assert!(
        matches!(err, AttachError::WorldWritable { mode: 0o666, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("writable by every user"));
}

#[test]
fn symlink_is_refused() {
    let (target, _c1) = scratch("target");
    let (link, _c2) = scratch("link");
    let _seg = create(&target);
    std::os::unix::fs::symlink(shm_path(&target), shm_path(&link)).unwrap();
    let err = attach(&link, AttachOptions::default()).unwrap_err();
    assert!(matches!(err, AttachError::Symlink { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link"));
}

#[test]
fn fifo_is_refused_as_not_a_regular_file() {
    let (name, _c) = scratch("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        shm_path(&name),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    let err = attach(&name, AttachOptions::default()).unwrap_err();
    assert!(
        matches!(err, AttachError::NotRegularFile { kind: "FIFO", .. }),
        "{err}"
    );
}

#[test]
fn too_small_segment_is_refused() {
    let (name, _c) = scratch("small");
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
    let (name, _c) = scratch("owner");
    let _seg = create(&name);
    let me = rustix::process::geteuid().as_raw();
    let err = attach(
        &name,
        AttachOptions {
            expected_owner: Some(me + 4242),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(owner_mismatch(&err), (me, me + 4242, me));
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
    common::child_role!("create-as-other");
    let name = common::env("VOXRING_TEST_SEGMENT");
    let opts = CreateOptions {
        remove_on_drop: false,
        ..Default::default()
    };
    create_file(&name, &opts).expect("child creates the segment");
    println!("created");
}

#[test]
fn another_users_segment_is_refused_with_both_uids() {
    common::parent_only!();
    // Without root no second user can be made or switched to; the owner check itself is
    // covered by owner_mismatch_names_both_uids_and_the_container_docs.
    common::root_only!("create a second user");
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
    let (name, _c) = scratch("other");
    let mut child = common::start_role_as(
        "child_entry_create_segment",
        "create-as-other",
        &[("VOXRING_TEST_SEGMENT", name.clone())],
        uid,
        gid,
    );
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
    let err = attach(&name, AttachOptions::default()).unwrap_err();
    assert_eq!(owner_mismatch(&err), (uid, 0, 0));
    let msg = err.to_string();
    assert!(msg.contains(&format!("created by uid {uid}")), "{msg}");
    assert!(msg.contains("runs as uid 0"), "{msg}");
    // Expecting that owner explicitly lets us in.
    let ok = attach(
        &name,
        AttachOptions {
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
    common::create_segment(name, &common::test_config(Policy::Lossless))
}

#[test]
fn wrong_layout_version_is_refused() {
    let (name, _c) = scratch("version");
    let seg = ring_segment(&name);
    // abi_version is the u32 at offset 8 (core/LAYOUT.md).
    common::mapped_u32(seg.mapping(), 8).store(
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
    let (name, _c) = scratch("garbage");
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
    let (name, _c) = scratch("short");
    let seg = ring_segment(&name);
    let full = seg.config().region_size().unwrap() as u64;
    // Someone truncates the file before we attach.
    common::set_file_len(&name, full / 2);
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
    let (name, _c) = scratch("nosend");
    assert!(ring_segment(&name).send(&a).is_err());
}
