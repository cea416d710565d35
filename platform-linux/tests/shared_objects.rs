//! `voxring_linux::shared` (core's objects placed in a named segment) and
//! `voxring_linux::process` (pre-exec hooks, inherited descriptors), each attack performed and
//! shown defeated:
//!
//! - a peer grows or shrinks the segment: a later attach is refused, before mapping;
//! - a peer forges an object's magic, version or word count: attach names the object and
//!   refuses it;
//! - a symlink planted under the name, or a file squatting it, or a segment owned by another
//!   user: refused, the squatter's file untouched;
//! - a slot of another plan pointed at the wrong object: refused, not trusted;
//! - a child spawned by a thread that ends dies with it; a child whose parent is not the one
//!   named refuses to start;
//! - a descriptor this process owns (or took already) cannot be taken as "inherited".
//!
//! Nothing here asserts a time: waits are bounded by generous give-up deadlines only.

mod common;

use std::io::{Read as _, Seek as _};
use std::os::fd::{AsFd as _, AsRawFd as _, IntoRawFd as _};
use std::os::unix::fs::FileExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ShmCleanup, shm_path, unique_name};
use voxring_core::control::ControlRegister;
use voxring_core::fence::CycleFence;
use voxring_core::region::RegionError;
use voxring_linux::process::{
    InheritError, die_with_parent_before_exec, inherit_fd, take_inherited_fd,
};
use voxring_linux::segment::{AttachError, AttachOptions, CreateError, CreateOptions};
use voxring_linux::shared::{PlaceError, Placed, Plan, SharedObjects, Slot};

type Reg = ControlRegister<u64, 4>;

fn plan() -> (Plan, Slot<CycleFence>, Slot<Reg>) {
    let mut plan = Plan::new();
    let fence = plan.place::<CycleFence>(()).unwrap();
    let reg = plan.place::<Reg>(5).unwrap();
    (plan, fence, reg)
}

/// A fresh segment of [`plan`], created with default options (removed when dropped, and by
/// the guard if a test fails first).
struct Fixture {
    name: String,
    seg: SharedObjects,
    fence: Slot<CycleFence>,
    reg: Slot<Reg>,
    _clean: ShmCleanup,
}

fn created(tag: &str) -> Fixture {
    let name = unique_name(tag);
    let _clean = ShmCleanup(name.clone());
    let (p, fence, reg) = plan();
    let seg = SharedObjects::create(&name, &CreateOptions::default(), p).unwrap();
    Fixture {
        name,
        seg,
        fence,
        reg,
        _clean,
    }
}

fn attach(name: &str) -> Result<SharedObjects, PlaceError> {
    SharedObjects::attach(name, &AttachOptions::default(), &plan().0)
}

/// Opens the segment file for a peer's raw writes (the attacker has write access).
fn raw(name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(name))
        .unwrap()
}

#[test]
fn objects_are_placed_apart_and_shared_between_processes_and_threads() {
    let name = unique_name("shared-rt");
    let _clean = ShmCleanup(name.clone());
    let (p, fence, reg) = plan();
    assert_eq!(fence.offset(), 0);
    assert!(reg.offset() >= CycleFence::REGION_SIZE);
    assert_eq!(reg.offset() % 128, 0, "own cache lines");
    let size = p.size();
    let created = SharedObjects::create(&name, &CreateOptions::default(), p).unwrap();
    assert_eq!(
        std::fs::metadata(shm_path(&name)).unwrap().len(),
        size as u64
    );
    let other = attach(&name).unwrap();
    assert_eq!(other.get(reg).unwrap().read(), Ok(5));
    let placed: Placed<Reg> = other.placed(reg).unwrap();
    drop(other);
    // The placed register keeps the mapping; a thread writes, the creator reads.
    std::thread::spawn(move || placed.write(9).unwrap())
        .join()
        .unwrap();
    assert_eq!(created.get(reg).unwrap().read(), Ok(9));
    created.get(fence).unwrap().arm(1, 0b1, u64::MAX).unwrap();
    assert_eq!(attach(&name).unwrap().get(fence).unwrap().armed_cycle(), 1);
    drop(created);
    assert!(!shm_path(&name).exists(), "the creator removes its segment");
}

#[test]
fn an_attached_segment_holds_the_presence_lock_until_the_last_reference_goes() {
    let name = unique_name("shared-presence");
    let _clean = ShmCleanup(name.clone());
    let (p, _, reg) = plan();
    let opts = CreateOptions {
        remove_on_drop: false,
        ..CreateOptions::default()
    };
    drop(SharedObjects::create(&name, &opts, p).unwrap());
    let probe = raw(&name);
    assert!(!voxring_linux::liveness::any_held(probe.as_fd()).unwrap());
    let placed = attach(&name).unwrap().placed(reg).unwrap();
    assert!(voxring_linux::liveness::any_held(probe.as_fd()).unwrap());
    drop(placed);
    assert!(!voxring_linux::liveness::any_held(probe.as_fd()).unwrap());
}

#[test]
fn a_grown_or_shrunk_segment_is_refused_and_earlier_participants_go_on() {
    let Fixture {
        name,
        seg: created,
        reg,
        _clean,
        ..
    } = created("shared-grow");
    let size = plan().0.size() as u64;
    let before = attach(&name).unwrap().placed(reg).unwrap();
    // Attack: a writer grows the file.
    raw(&name).set_len(size + 4096).unwrap();
    match attach(&name) {
        Err(PlaceError::Attach(AttachError::TooLarge {
            size: s, expected, ..
        })) => assert_eq!((s, expected), (size + 4096, size)),
        other => panic!("a grown segment was not refused: {other:?}"),
    }
    before.write(1).unwrap();
    assert_eq!(created.get(reg).unwrap().read(), Ok(1));
    // Attack: shrinks it below the plan (a smaller file never gets mapped).
    raw(&name).set_len(size - 1).unwrap();
    let e = attach(&name).unwrap_err();
    assert!(
        matches!(e, PlaceError::Attach(AttachError::TooSmall { .. })),
        "{e}"
    );
    raw(&name).set_len(size).unwrap();
}

#[test]
fn forged_magic_version_and_word_count_are_refused_naming_the_object() {
    let Fixture {
        name,
        seg: _seg,
        fence,
        reg,
        _clean,
    } = created("shared-forge");
    let file = raw(&name);
    let reg_at = reg.offset() as u64;

    // The register's version (offset 8 in it).
    file.write_all_at(&7u32.to_ne_bytes(), reg_at + 8).unwrap();
    match attach(&name) {
        Err(PlaceError::Region {
            what,
            offset,
            error: RegionError::UnsupportedVersion { found: 7, .. },
            ..
        }) => {
            assert!(what.contains("ControlRegister"), "{what}");
            assert_eq!(offset, reg.offset());
        }
        other => panic!("a forged version was not refused: {other:?}"),
    }
    file.write_all_at(
        &voxring_core::control::CONTROL_VERSION.to_ne_bytes(),
        reg_at + 8,
    )
    .unwrap();
    // Its word count (offset 12): a register of another type.
    file.write_all_at(&9u32.to_ne_bytes(), reg_at + 12).unwrap();
    let e = attach(&name).unwrap_err();
    assert!(
        matches!(
            e,
            PlaceError::Region {
                error: RegionError::Mismatch { found: 9, .. },
                ..
            }
        ),
        "{e}"
    );
    file.write_all_at(&4u32.to_ne_bytes(), reg_at + 12).unwrap();
    assert!(attach(&name).is_ok(), "restored, accepted again");
    // The fence's magic (offset 0 of the fence).
    let fence_at = fence.offset() as u64;
    file.write_all_at(&0xdead_beef_u64.to_ne_bytes(), fence_at)
        .unwrap();
    let e = attach(&name).unwrap_err();
    assert!(
        matches!(
            e,
            PlaceError::Region {
                offset: 0,
                error: RegionError::BadMagic {
                    found: 0xdead_beef,
                    ..
                },
                ..
            }
        ),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("CycleFence") && text.contains("recreate"),
        "{text}"
    );
}

#[test]
fn a_slot_of_another_plan_is_validated_not_trusted() {
    let name = unique_name("shared-slot");
    let _clean = ShmCleanup(name.clone());
    let mut p = Plan::new();
    p.place::<Reg>(0).unwrap();
    let seg = SharedObjects::create(&name, &CreateOptions::default(), p).unwrap();
    // A fence slot pointing at the register; a register slot beyond the segment.
    let (_, fence, _) = plan();
    let e = seg.get(fence).unwrap_err();
    assert!(matches!(e, PlaceError::Region { .. }), "{e}");
    let (_, _, beyond) = plan();
    let e = seg.get(beyond).unwrap_err();
    assert!(
        matches!(
            e,
            PlaceError::Region {
                error: RegionError::TooSmall { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_planted_symlink_or_a_squatted_name_is_refused_and_left_alone() {
    let target = created("shared-target");

    // Attack: a symlink under the name, to a valid segment.
    let link = unique_name("shared-link");
    let _clean_link = ShmCleanup(link.clone());
    std::os::unix::fs::symlink(shm_path(&target.name), shm_path(&link)).unwrap();
    match attach(&link) {
        Err(PlaceError::Attach(AttachError::Symlink { .. })) => {}
        other => panic!("a symlink was followed: {other:?}"),
    }
    // Creating over it does not follow or replace it either.
    let e = SharedObjects::create(&link, &CreateOptions::default(), plan().0).unwrap_err();
    assert!(
        matches!(e, PlaceError::Create(CreateError::AlreadyExists { .. })),
        "{e}"
    );
    assert!(
        shm_path(&link)
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // Attack: a plain file squatting the name before the creator.
    let squat = unique_name("shared-squat");
    let _clean_squat = ShmCleanup(squat.clone());
    std::fs::write(shm_path(&squat), b"squatter").unwrap();
    let e = SharedObjects::create(&squat, &CreateOptions::default(), plan().0).unwrap_err();
    assert!(
        matches!(e, PlaceError::Create(CreateError::AlreadyExists { .. })),
        "{e}"
    );
    assert_eq!(std::fs::read(shm_path(&squat)).unwrap(), b"squatter");
}

#[test]
fn a_segment_of_another_user_is_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to give a segment to another user");
        return;
    }
    let Fixture {
        name,
        seg: _seg,
        _clean,
        ..
    } = created("shared-owner");
    // Attack: the segment now belongs to `nobody`, who could rewrite it at will.
    std::os::unix::fs::chown(shm_path(&name), Some(65534), None).unwrap();
    match attach(&name) {
        Err(PlaceError::Attach(AttachError::OwnerMismatch { owner: 65534, .. })) => {}
        other => panic!("another user's segment was accepted: {other:?}"),
    }
}

#[test]
fn an_empty_plan_is_refused_with_what_to_do() {
    let e = SharedObjects::create(
        &unique_name("shared-empty"),
        &Default::default(),
        Plan::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("Plan::place"), "{e}");
}

#[test]
fn one_register_in_its_own_segment() {
    // What the C ABI's vr_control_* need: one ControlRegister in a named segment.
    type Control = ControlRegister<[u64; 8], 8>;
    let name = unique_name("shared-one");
    let _clean = ShmCleanup(name.clone());
    let mine = Placed::<Control>::create(&name, &CreateOptions::default(), [0; 8]).unwrap();
    assert_eq!(
        std::fs::metadata(shm_path(&name)).unwrap().len(),
        Control::REGION_SIZE as u64
    );
    let theirs = Placed::<Control>::attach(&name, &AttachOptions::default()).unwrap();
    mine.write([3; 8]).unwrap();
    assert_eq!(theirs.read_versioned(), Ok(([3; 8], 1)));
    // A fence is not a register.
    let e = Placed::<CycleFence>::attach(&name, &AttachOptions::default()).unwrap_err();
    assert!(matches!(e, PlaceError::Attach(_)), "{e}");
}

/// Waits for `child` to end, giving up (and killing it by PID) after a generous bound.
fn wait_bounded(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let give_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < give_up {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_child_dies_with_the_thread_that_spawned_it() {
    let parent = std::process::id();
    let mut child = std::thread::spawn(move || {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000");
        die_with_parent_before_exec(&mut cmd, parent);
        cmd.spawn().unwrap()
    })
    .join()
    .unwrap();
    // The spawning thread has ended: the kernel sends SIGKILL.
    let st = wait_bounded(&mut child).expect("the child outlived its spawning thread");
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}");
}

#[test]
fn a_child_whose_named_parent_is_gone_refuses_to_start() {
    let mut cmd = Command::new("true");
    // Not our pid: as if the orchestrator had died between fork and prctl.
    die_with_parent_before_exec(&mut cmd, std::process::id().wrapping_add(1));
    let e = cmd.spawn().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESRCH), "{e}");
}

#[test]
fn an_inherited_descriptor_reaches_the_child_under_its_number_and_nothing_else_does() {
    let mut file = tempfile::tempfile().unwrap();
    let other = tempfile::tempfile().unwrap();
    let mut cmd = Command::new("sh");
    let n = inherit_fd(&mut cmd, file.as_fd()).unwrap();
    assert_eq!(n, file.as_raw_fd());
    let o = other.as_raw_fd();
    cmd.arg("-c").arg(format!(
        "printf ok >&{n}; if [ -e /proc/self/fd/{o} ]; then printf ' leaked' >&{n}; fi"
    ));
    let st = cmd.status().unwrap();
    assert!(st.success(), "{st}");
    let mut text = String::new();
    file.rewind().unwrap();
    file.read_to_string(&mut text).unwrap();
    assert_eq!(text, "ok");
    // Standard streams are Command's business.
    assert!(inherit_fd(&mut Command::new("true"), std::io::stdout().as_fd()).is_err());
}

#[test]
fn the_descriptor_reaches_the_child_even_if_closed_before_spawn() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let fd = file.as_file().try_clone().unwrap();
    let mut cmd = Command::new("sh");
    let n = inherit_fd(&mut cmd, fd.as_fd()).unwrap();
    drop(fd);
    // The number may even be reused by another file meanwhile: the child still gets ours.
    let reuse = tempfile::tempfile().unwrap();
    cmd.arg("-c").arg(format!("printf late >&{n}"));
    assert!(cmd.status().unwrap().success());
    assert_eq!(std::fs::read(file.path()).unwrap(), b"late");
    drop(reuse);
}

#[test]
fn only_an_inherited_untaken_descriptor_can_be_taken() {
    // What a child sees: a descriptor without close-on-exec (rustix's dup gives one).
    let file = tempfile::tempfile().unwrap();
    let inherited = rustix::io::dup(&file).unwrap().into_raw_fd();
    let taken = take_inherited_fd(inherited).unwrap();
    assert_eq!(taken.as_raw_fd(), inherited);
    // Attack: take it a second time (two owners, a double close).
    assert_eq!(
        take_inherited_fd(inherited).err(),
        Some(InheritError::NotInherited { fd: inherited })
    );
    // Attack: take a descriptor this process opened (owned by `file`).
    let fd = file.as_raw_fd();
    assert_eq!(
        take_inherited_fd(fd).err(),
        Some(InheritError::NotInherited { fd })
    );
    file.metadata().expect("still open, still ours");
    drop(taken);
    // Closed now.
    assert_eq!(
        take_inherited_fd(inherited).err(),
        Some(InheritError::NotOpen { fd: inherited })
    );
    assert_eq!(
        take_inherited_fd(2).err(),
        Some(InheritError::StandardStream { fd: 2 })
    );
}
