//! Attacks on named segments and on `segments clean`, each performed and shown defeated.
//!
//! - A peer grows a segment to 4 GiB (sparse): a later attacher refuses it with a clear
//!   error, maps and populates nothing of it (the file's allocated blocks do not grow), and
//!   participants attached before go on working. The same with a huge sealed memfd.
//! - Clean-up as root: another user's dead segment is left alone unless `all_users`.
//! - A file swapped in between clean-up's check and its removal (through the test hook, and
//!   by a thread exchanging names in a loop) is never removed while it is live.
//! - An attach racing a clean-up never ends up holding a segment that has lost its name.
//!
//! Nothing here asserts a time; loops are bounded by counts.

mod common;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{
    ChildGuard, ShmCleanup, consume, produce, role, shm_path, spawn_role, test_config, unique_name,
};
use rustix::fs::{MemfdFlags, Mode, OFlags, RenameFlags, SealFlags};
use voxring_core::{Policy, Ring};
use voxring_linux::cleanup::{
    CleanOptions, PRIVATE_DIR_PREFIX, clean_segments_matching, clean_segments_with,
    clean_segments_with_hook, clean_segments_with_hooks,
};
use voxring_linux::mapping::{MapOptions, SharedMapping};
use voxring_linux::ring::{Segment, list_segments};
use voxring_linux::segment::{
    AttachError, AttachOptions, CreateError, CreateOptions, SHM_DIR, SegmentFile, file_name,
};

const FOUR_GIB: u64 = 4 << 30;
/// `nobody` on Debian and most distributions.
const NOBODY: u32 = 65534;

fn shm() -> OwnedFd {
    rustix::fs::open(
        SHM_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

/// Bytes the filesystem really allocated for the file at `path`.
fn allocated(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Creates a ring segment nobody uses (no lock held: what a crashed pipeline leaves behind),
/// owned by `owner` when given (needs root).
fn dead_segment(name: &str, owner: Option<u32>) {
    try_dead_segment(name, owner).expect("create a dead segment");
}

fn try_dead_segment(name: &str, owner: Option<u32>) -> Result<(), CreateError> {
    let opts = CreateOptions {
        remove_on_drop: false,
        ..CreateOptions::default()
    };
    let cfg = test_config(Policy::Lossless);
    let size = cfg.region_size().unwrap();
    let file = SegmentFile::create_with(name, size, &opts, |fd, m| {
        // SAFETY: a fresh mapping of `m.len()` bytes nobody else has yet.
        unsafe { Ring::create(m.as_ptr(), m.len(), &cfg) }?;
        if let Some(uid) = owner {
            rustix::fs::fchown(fd, Some(rustix::process::Uid::from_raw(uid)), None).map_err(
                |errno| CreateError::Io {
                    op: "chown",
                    path: shm_path(name),
                    errno,
                },
            )?;
        }
        Ok::<(), CreateError>(())
    })?;
    drop(file); // its presence lock goes with its descriptor
    Ok(())
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

fn fd_links(fd: BorrowedFd<'_>) -> u64 {
    rustix::fs::fstat(fd).unwrap().st_nlink
}

/// Whether `n` is the segment file `fname` or one derived from it (`.displaced-`, `.tmp-`).
fn of(fname: &str, n: &str) -> bool {
    n == fname || n.strip_prefix(fname).is_some_and(|r| r.starts_with('.'))
}

/// What this test left behind for the segments `names`: displaced copies in /dev/shm, and
/// anything of theirs inside a clean-up's private directory made by this process (other
/// tests of this process may be using theirs right now, so only our names count).
fn residue(names: &[&str]) -> Vec<String> {
    let fnames: Vec<String> = names.iter().map(|n| file_name(n).unwrap()).collect();
    let mine = format!("{PRIVATE_DIR_PREFIX}{}-", std::process::id());
    let mut found = Vec::new();
    for e in std::fs::read_dir(SHM_DIR).unwrap().filter_map(|e| e.ok()) {
        let n = e.file_name().to_string_lossy().into_owned();
        if fnames
            .iter()
            .any(|f| of(f, &n) && n.contains(".displaced-"))
        {
            found.push(n);
        } else if n.starts_with(&mine) {
            for inner in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                let i = inner.file_name().to_string_lossy().into_owned();
                if fnames.iter().any(|f| of(f, &i)) {
                    found.push(format!("{n}/{i}"));
                }
            }
        }
    }
    found
}

fn assert_no_residue(names: &[&str]) {
    let left = residue(names);
    assert!(left.is_empty(), "left behind in {SHM_DIR}: {left:?}");
}

#[test]
fn a_segment_grown_to_4_gib_is_refused_without_being_mapped() {
    let (name, _c) = common::scratch("grown");
    let cfg = test_config(Policy::Lossless);
    let region = cfg.region_size().unwrap() as u64;
    let seg = common::create_segment(&name, &cfg);
    let mut tx = seg.producer().unwrap();
    // A participant attached before the attack.
    let early = Segment::attach(&name, &AttachOptions::default()).unwrap();
    assert_eq!(
        early.mapping().len() as u64,
        region,
        "maps exactly the layout"
    );
    let mut rx = early.consumer().unwrap();

    // The attack: a peer with write access grows the file to 4 GiB, sparse (costs it nothing).
    let path = shm_path(&name);
    let attacker = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    attacker.set_len(FOUR_GIB).unwrap();
    let before = allocated(&path);
    assert!(
        before < 16 << 20,
        "the grown file is sparse: {before} bytes"
    );

    // Every way of attaching refuses it, with prefault on (the default).
    let err = Segment::attach(&name, &AttachOptions::default()).unwrap_err();
    match &err {
        AttachError::TooLarge { size, expected, .. } => {
            assert_eq!(*size, FOUR_GIB);
            assert_eq!(*expected, region);
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("refused") && msg.contains("grew") && msg.contains("recreate"),
        "the error says what, why and what to do: {msg}"
    );
    let sized = SegmentFile::attach(&name, region, &AttachOptions::default()).unwrap_err();
    assert!(matches!(sized, AttachError::TooLarge { .. }), "{sized}");
    let ring = SegmentFile::attach_ring(&name, &AttachOptions::default()).unwrap_err();
    assert!(matches!(ring, AttachError::TooLarge { .. }), "{ring}");
    // `segments list` reports it instead of mapping it.
    let listed = list_segments().unwrap();
    let row = listed.iter().find(|s| s.name == name).expect("listed");
    assert_eq!(row.size, FOUR_GIB);
    let why = row.ring.as_ref().unwrap_err();
    assert!(why.contains("grew"), "{why}");
    // Nothing of the 4 GiB was populated by any of these attaches.
    assert_eq!(
        allocated(&path),
        before,
        "an attach populated pages of the grown file"
    );

    // Participants attached before are not disturbed: frames still flow.
    produce(&mut tx, Some(5), 5);
    let seen = consume(&mut rx, Some(5));
    assert_eq!(seen.delivered, 5);

    // Put back to its layout size, the segment attaches normally, mapping exactly the layout.
    attacker.set_len(region).unwrap();
    let again = Segment::attach(&name, &AttachOptions::default()).unwrap();
    assert_eq!(again.mapping().len() as u64, region);
    assert!(again.consumer().is_ok());
}

#[test]
fn a_grown_segment_is_refused_even_with_a_header_claiming_the_larger_size() {
    // The attacker also rewrites the header's region_size to match the grown file: the copy
    // of the header no longer validates (region_size is recomputed from the configuration).
    let (name, _c) = common::scratch("grownhdr");
    let seg = common::create_segment(&name, &test_config(Policy::Lossless));
    let path = shm_path(&name);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(FOUR_GIB)
        .unwrap();
    // region_size is the u64 at offset 64 (core/LAYOUT.md).
    common::mapped_u64(seg.mapping(), 64).store(FOUR_GIB, Ordering::Relaxed);
    let before = allocated(&path);
    let err = Segment::attach(&name, &AttachOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            AttachError::Layout {
                error: voxring_core::AttachError::Inconsistent {
                    field: "region_size",
                    ..
                },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(allocated(&path), before);
}

#[test]
fn a_huge_sealed_memfd_is_refused_by_the_receiver() {
    // The sender makes a valid ring, grows the memfd to 4 GiB, then seals it: the seals stop
    // later resizes, not this.
    let cfg = test_config(Policy::Lossless);
    let region = cfg.region_size().unwrap();
    let fd = rustix::fs::memfd_create("attack", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .unwrap();
    rustix::fs::ftruncate(&fd, region as u64).unwrap();
    {
        let m = SharedMapping::map(fd.as_fd(), region, MapOptions::default()).unwrap();
        // SAFETY: a fresh mapping of `region` bytes only this test uses.
        unsafe { Ring::create(m.as_ptr(), m.len(), &cfg) }.unwrap();
    }
    rustix::fs::ftruncate(&fd, FOUR_GIB).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .unwrap();
    let before = rustix::fs::fstat(&fd).unwrap().st_blocks;
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    voxring_linux::memfd::send_fd(&a, fd.as_fd(), b"voxring-ring").unwrap();
    let err = Segment::receive(
        &b,
        MapOptions {
            prefault: true,
            lock: false,
        },
    )
    .unwrap_err();
    match &err {
        AttachError::TooLarge { size, expected, .. } => {
            assert_eq!(*size, FOUR_GIB);
            assert_eq!(*expected, region as u64);
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    assert_eq!(
        rustix::fs::fstat(&fd).unwrap().st_blocks,
        before,
        "the receiver populated the huge memfd"
    );
}

#[test]
fn clean_leaves_another_users_dead_segment_unless_all_users() {
    common::root_only!("give a segment to another user");
    let (name, _c) = common::scratch("nobody");
    dead_segment(&name, Some(NOBODY));
    let fname = file_name(&name).unwrap();
    let path = shm_path(&name);
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), NOBODY);

    // Default: root's clean-up leaves nobody's dead segment alone and says whose it is.
    let report = clean_segments_matching(|n| n == fname).unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.other_users, vec![(fname.clone(), NOBODY)]);
    assert!(path.exists(), "clean removed another user's segment");

    // --all-users --dry-run: would remove it, removes nothing.
    let all_dry = CleanOptions {
        all_users: true,
        dry_run: true,
    };
    let report = clean_segments_with(&all_dry, |n| n == fname).unwrap();
    assert_eq!(report.removed, vec![fname.clone()]);
    assert!(path.exists(), "a dry run removed a segment");

    // --all-users: removes it.
    let all = CleanOptions {
        all_users: true,
        dry_run: false,
    };
    let report = clean_segments_with(&all, |n| n == fname).unwrap();
    assert_eq!(report.removed, vec![fname.clone()], "{report:?}");
    assert!(!path.exists());
    assert_no_residue(&[&name]);
}

#[test]
fn a_live_segment_swapped_in_between_check_and_removal_is_not_removed() {
    let dead = unique_name("swapdead");
    let live = unique_name("swaplive");
    let aside = unique_name("swapaside");
    let _c = (
        ShmCleanup(dead.clone()),
        ShmCleanup(live.clone()),
        ShmCleanup(aside.clone()),
    );
    dead_segment(&dead, None);
    let seg = common::create_segment(&live, &test_config(Policy::Lossless));
    let mut rx = seg.consumer().unwrap();
    let mut tx = seg.producer().unwrap();
    let live_meta = std::fs::metadata(shm_path(&live)).unwrap();
    let dead_meta = std::fs::metadata(shm_path(&dead)).unwrap();
    let dead_fname = file_name(&dead).unwrap();
    let dir = shm();

    // The attack, in the window: once the dead file passed the check, move it aside and put
    // the live segment under its name.
    let mut swapped = 0;
    let report = clean_segments_with_hook(
        &CleanOptions::default(),
        |n| n == dead_fname,
        |n| {
            assert_eq!(n, dead_fname);
            rustix::fs::renameat(&dir, n, &dir, file_name(&aside).unwrap().as_str()).unwrap();
            rustix::fs::renameat(&dir, file_name(&live).unwrap().as_str(), &dir, n).unwrap();
            swapped += 1;
        },
    )
    .unwrap();
    assert_eq!(swapped, 1, "the hook ran in the window");
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.in_use, vec![dead_fname.clone()], "{report:?}");
    // The live segment is still there, under the name it was swapped to, and still works.
    let now = std::fs::metadata(shm_path(&dead)).unwrap();
    assert!(
        same_file(&now, &live_meta),
        "the live segment lost its name"
    );
    assert_eq!(now.nlink(), 1);
    produce(&mut tx, Some(3), 3);
    assert_eq!(consume(&mut rx, Some(3)).delivered, 3);
    // The dead one the attacker moved aside was not touched either.
    assert!(same_file(
        &std::fs::metadata(shm_path(&aside)).unwrap(),
        &dead_meta
    ));
    // Let the live segment's guard find its file again.
    rustix::fs::renameat(
        &dir,
        dead_fname.as_str(),
        &dir,
        file_name(&live).unwrap().as_str(),
    )
    .unwrap();
    assert_no_residue(&[&dead, &live, &aside]);
}

#[test]
fn another_users_segment_swapped_in_is_not_removed_either() {
    common::root_only!("give a segment to another user");
    let dead = unique_name("swap2dead");
    let theirs = unique_name("swap2theirs");
    let _c = (ShmCleanup(dead.clone()), ShmCleanup(theirs.clone()));
    dead_segment(&dead, None);
    dead_segment(&theirs, Some(NOBODY));
    let theirs_meta = std::fs::metadata(shm_path(&theirs)).unwrap();
    let dead_fname = file_name(&dead).unwrap();
    let dir = shm();
    let report = clean_segments_with_hook(
        &CleanOptions::default(),
        |n| n == dead_fname,
        |n| {
            // Replace the checked file (root's) with nobody's dead segment.
            rustix::fs::renameat(&dir, file_name(&theirs).unwrap().as_str(), &dir, n).unwrap();
        },
    )
    .unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.other_users, vec![(dead_fname.clone(), NOBODY)]);
    let now = std::fs::metadata(shm_path(&dead)).unwrap();
    assert!(same_file(&now, &theirs_meta));
    assert_no_residue(&[&dead, &theirs]);
}

#[test]
fn names_exchanged_in_a_loop_never_cost_a_live_segment_its_file() {
    let a = unique_name("xa");
    let b = unique_name("xb");
    let _c = (ShmCleanup(a.clone()), ShmCleanup(b.clone()));
    let (fa, fb) = (file_name(&a).unwrap(), file_name(&b).unwrap());
    dead_segment(&a, None);
    let opts = CreateOptions {
        remove_on_drop: false,
        ..CreateOptions::default()
    };
    let live = Segment::create(&b, &test_config(Policy::Lossless), &opts).unwrap();
    let _rx = live.consumer().unwrap();
    // Our own descriptor of the live file, to count its names.
    let live_fd = rustix::fs::open(
        shm_path(&b),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();

    // The attacker: swaps the two names as fast as it can until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let stop = Arc::clone(&stop);
        let swaps = Arc::clone(&swaps);
        let (fa, fb) = (fa.clone(), fb.clone());
        std::thread::spawn(move || {
            let dir = shm();
            // Relaxed: a plain stop flag; nothing else is published through it.
            while !stop.load(Ordering::Relaxed) {
                if rustix::fs::renameat_with(
                    &dir,
                    fa.as_str(),
                    &dir,
                    fb.as_str(),
                    RenameFlags::EXCHANGE,
                )
                .is_ok()
                {
                    // Relaxed: a statistic read after the join.
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut removed = 0;
    // Until the attacker swapped the names often and clean-up removed dead segments often,
    // giving up (the checks below still hold) after many rounds on a starved machine.
    let mut rounds = 0u64;
    // Relaxed: only a progress count.
    while (swaps.load(Ordering::Relaxed) < 1000 || removed < 100) && rounds < 200_000 {
        rounds += 1;
        let report = clean_segments_matching(|n| n == fa || n == fb).unwrap();
        removed += report.removed.len();
        assert_eq!(
            fd_links(live_fd.as_fd()),
            1,
            "the live segment lost its name: {report:?}"
        );
        for (n, why) in &report.skipped {
            assert!(!why.contains("displaced"), "{n}: {why}");
        }
        // Keep a dead segment to race on: re-create it under whichever name is free.
        if !(shm_path(&a).exists() && shm_path(&b).exists()) {
            let free = if shm_path(&a).exists() { &b } else { &a };
            let opts = CreateOptions {
                remove_on_drop: false,
                ..CreateOptions::default()
            };
            if let Ok(s) = Segment::create(free, &test_config(Policy::Lossless), &opts) {
                drop(s);
            }
        }
    }
    // Relaxed: see the loop above.
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    // Relaxed: the thread has been joined.
    let swaps = swaps.load(Ordering::Relaxed);
    eprintln!("{rounds} clean-ups, {swaps} name exchanges, {removed} dead segments removed");
    assert!(removed > 0, "the dead segments were never removed");
    assert_eq!(fd_links(live_fd.as_fd()), 1);
    let named = [&a, &b].iter().any(|n| {
        std::fs::metadata(shm_path(n))
            .map(|m| m.ino() == rustix::fs::fstat(&live_fd).unwrap().st_ino)
            .unwrap_or(false)
    });
    assert!(named, "the live segment is under neither name");
    assert_no_residue(&[&a, &b]);
}

#[test]
fn an_attach_racing_a_clean_up_never_holds_a_removed_segment() {
    let (name, _c) = common::scratch("attachrace");
    let fname = file_name(&name).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let removed = Arc::new(AtomicU64::new(0));
    let cleaner = {
        let stop = Arc::clone(&stop);
        let fname = fname.clone();
        let removed = Arc::clone(&removed);
        std::thread::spawn(move || {
            // Relaxed: a plain stop flag.
            while !stop.load(Ordering::Relaxed) {
                let n = clean_segments_matching(|n| n == fname)
                    .unwrap()
                    .removed
                    .len();
                // Relaxed: a progress count.
                removed.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let mut attached = 0u64;
    let mut rounds = 0u64;
    // Until both sides won often, giving up after many rounds on a starved machine.
    // Relaxed: a progress count.
    while (attached < 200 || removed.load(Ordering::Relaxed) < 200) && rounds < 200_000 {
        rounds += 1;
        if !shm_path(&name).exists() {
            // AlreadyExists when the clean-up put a file back meanwhile: fine, race on.
            let _ = try_dead_segment(&name, None);
        }
        match SegmentFile::attach_ring(&name, &AttachOptions::default()) {
            Ok(file) => {
                attached += 1;
                // Holding its presence lock: no clean-up may remove it any more (it may still
                // be moved away and back for a moment by the racing clean-up's second look).
                assert_eq!(fd_links(file.fd()), 1, "an attached segment was removed");
                let _ = clean_segments_matching(|n| n == fname).unwrap();
                assert_eq!(fd_links(file.fd()), 1, "an attached segment was removed");
            }
            Err(AttachError::NotFound { .. }) => {}
            Err(e) => panic!("unexpected attach error: {e}"),
        }
    }
    // Relaxed: see above.
    stop.store(true, Ordering::Relaxed);
    cleaner.join().unwrap();
    // Relaxed: the thread has been joined.
    let removed = removed.load(Ordering::Relaxed);
    eprintln!("{rounds} rounds, {attached} attaches, {removed} removals");
    assert!(attached > 0 && removed > 0, "the race was never run");
    // Whatever the race displaced (a file put back while the name had been re-created) is a
    // dead segment by now: a later clean-up removes it like any other.
    let report = clean_segments_matching(|n| of(&fname, n)).unwrap();
    assert!(
        report.in_use.is_empty() && report.skipped.is_empty(),
        "{report:?}"
    );
    assert!(!shm_path(&name).exists());
    assert_no_residue(&[&name]);
}

/// The attacker keeps a file "in use" while clean-up has it in its private directory, and
/// re-creates the name meanwhile, twice with the same name in one process: each time the
/// file goes to a fresh `.displaced-` name (the same name twice once made the second one
/// stay in the private directory, and the directory with it). Once the attacker lets go, a
/// later clean-up removes the displaced files as the dead segments they are.
#[test]
fn a_name_displaced_twice_leaves_no_private_dir_and_a_later_clean_removes_both() {
    let (name, _c) = common::scratch("twice");
    let fname = file_name(&name).unwrap();
    let mut held = Vec::new();
    for round in 0..2 {
        dead_segment(&name, None);
        // The attacker's own descriptor of the dead file, opened before clean-up moves it.
        let fd = rustix::fs::open(
            shm_path(&name),
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let report = clean_segments_with_hooks(
            &CleanOptions::default(),
            |n| n == fname,
            |_| {},
            |_| {
                // In the window after the move: make it look in use, and take its name.
                voxring_linux::liveness::hold_presence(fd.as_fd()).unwrap();
                dead_segment(&name, None);
            },
        )
        .unwrap();
        assert!(report.removed.is_empty(), "round {round}: {report:?}");
        assert_eq!(report.skipped.len(), 1, "round {round}: {report:?}");
        assert!(report.skipped[0].1.contains(".displaced-"), "{report:?}");
        assert_eq!(
            fd_links(fd.as_fd()),
            1,
            "round {round}: the held file lost its name"
        );
        held.push(fd);
        // The re-created file is dead: remove it for the next round.
        std::fs::remove_file(shm_path(&name)).unwrap();
        let displaced: Vec<String> = residue(&[&name]);
        assert_eq!(displaced.len(), round + 1, "{displaced:?}");
        assert!(
            displaced.iter().all(|d| !d.starts_with('.')),
            "{displaced:?}"
        );
    }
    // While held, a clean-up keeps them.
    let report = clean_segments_matching(|n| of(&fname, n)).unwrap();
    assert_eq!(report.in_use.len(), 2, "{report:?}");
    drop(held);
    let report = clean_segments_matching(|n| of(&fname, n)).unwrap();
    assert_eq!(report.removed.len(), 2, "{report:?}");
    assert_no_residue(&[&name]);
}

/// A clean-up killed (SIGKILL) right after moving a dead segment into its private directory
/// leaves that directory behind; the next clean-up sees its creator is gone, removes the
/// dead segment inside and the directory.
#[test]
fn what_a_clean_up_killed_mid_way_leaves_is_removed_by_the_next() {
    const ENTRY: &str = "what_a_clean_up_killed_mid_way_leaves_is_removed_by_the_next";
    if role().as_deref() == Some("killed-cleaner") {
        let fname = common::env("VOXRING_TEST_SEGMENT");
        let _ = clean_segments_with_hooks(
            &CleanOptions::default(),
            |n| n == fname,
            |_| {},
            |_| {
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::KILL,
                );
                loop {
                    std::thread::park();
                }
            },
        );
        unreachable!("the cleaner survived its SIGKILL");
    }
    let (name, _c) = common::scratch("killed");
    let fname = file_name(&name).unwrap();
    dead_segment(&name, None);
    let mut child = ChildGuard(Some(
        spawn_role(
            ENTRY,
            "killed-cleaner",
            &[("VOXRING_TEST_SEGMENT", fname.clone())],
        )
        .spawn()
        .unwrap(),
    ));
    let pid = child.pid();
    let status = child.wait();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc_sigkill()),
        "{status:?}"
    );
    // The residue: the child's private directory, the segment inside under its own name.
    let theirs = format!("{PRIVATE_DIR_PREFIX}{pid}-");
    let dirs: Vec<std::path::PathBuf> = std::fs::read_dir(SHM_DIR)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&theirs))
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(dirs[0].join(&fname).exists(), "{dirs:?}");
    assert!(!shm_path(&name).exists());

    let report = clean_segments_matching(|n| n == fname).unwrap();
    assert_eq!(report.removed, vec![fname.clone()], "{report:?}");
    assert!(
        !dirs[0].exists(),
        "the killed clean-up's directory is still there"
    );
    assert_no_residue(&[&name]);
}

fn libc_sigkill() -> i32 {
    rustix::process::Signal::KILL.as_raw()
}
