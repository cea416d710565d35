//! Attacks on the blocking waits (issue 11, finding 9): a segment abandoned or destroyed under
//! a waiting participant must end the wait with an error, not park it for ever. The producer
//! stays alive and keeps its descriptor open, so its liveness lock stays held and the liveness
//! check alone would never end the wait.
//!
//! Waits are given a generous timeout only as a give-up bound: the assertion is on what they
//! return (an error), never on how long they took.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    ChildGuard, ShmCleanup, env, expect_line, produce, role, shm_path, spawn_role, test_config,
    unique_name,
};
use voxring_core::{GrantError, Policy};
use voxring_linux::ring::{PeerState, Segment, WaitError, list_segments};
use voxring_linux::segment::{AttachOptions, CreateOptions};

/// A bound after which a wait counts as hung (never the thing asserted).
const GIVE_UP: Duration = Duration::from_secs(120);

/// The tests' ring with 64 frames: about 13 KiB, so that shrinking the file to its first page
/// (which holds every control block) really removes memory the ring uses.
fn several_pages(policy: Policy) -> voxring_core::RingConfig {
    let cfg = voxring_core::RingConfig {
        frames: 64,
        ..test_config(policy)
    };
    assert!(cfg.region_size().unwrap() > 3 * 4096);
    cfg
}

/// Child role: create the segment and claim the producer side; once a consumer has joined,
/// unlink the segment's name and zero its header, keep everything open, and idle until killed.
#[test]
fn child_entry_waits_abandoner() {
    if role().as_deref() != Some("abandoner") {
        return; // Not a test by itself: the entry point of the abandoning producer.
    }
    let name = env("VOXRING_TEST_SEGMENT");
    let seg = Segment::create(
        &name,
        &test_config(Policy::Lossless),
        &CreateOptions::default(),
    )
    .expect("abandoner creates");
    let _tx = seg.producer().expect("abandoner claims the producer side");
    println!("ready");
    let ring = seg.ring();
    let start = Instant::now();
    while (0..ring.config().max_consumers).all(|i| ring.consumer_owner(i).is_none()) {
        assert!(start.elapsed() < GIVE_UP, "no consumer ever joined");
        std::thread::sleep(Duration::from_millis(1));
    }
    voxring_linux::segment::unlink(&name).expect("unlink the name");
    let base = seg.mapping().as_ptr();
    for off in (0..128).step_by(8) {
        // SAFETY: the header block (128 bytes) is inside the mapping, 8-aligned, and every
        // word of the region is accessed atomically.
        let word = unsafe { &*base.add(off).cast::<AtomicU64>() };
        // Relaxed: the waiter's check does not order anything on this store.
        word.store(0, Ordering::Relaxed);
    }
    println!("abandoned");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_consumer_waiting_on_an_unlinked_zeroed_segment_gets_an_error() {
    if role().is_some() {
        return;
    }
    let name = unique_name("abandon");
    let _c = ShmCleanup(name.clone());
    let mut producer = ChildGuard(Some(
        spawn_role(
            "child_entry_waits_abandoner",
            "abandoner",
            &[("VOXRING_TEST_SEGMENT", name.clone())],
        )
        .spawn()
        .expect("spawn the producer"),
    ));
    expect_line(producer.child(), "ready");
    let seg = Segment::attach(&name, &AttachOptions::default()).expect("attach");
    let mut rx = seg.consumer().expect("join");
    rx.set_liveness_interval(Duration::from_millis(5));
    // Whether the header is zeroed before or during this wait, it must end in an error.
    let got = rx.wait_for_frames(Some(GIVE_UP));
    assert_eq!(got, Err(WaitError::Abandoned { unlinked: true }));
    let msg = got.unwrap_err().to_string();
    assert!(msg.contains("removed from /dev/shm"), "{msg}");
    expect_line(producer.child(), "abandoned");
    // The producer was alive all along: the liveness check alone would have waited for ever.
    assert_eq!(seg.producer_state(), PeerState::Alive);
    assert!(!shm_path(&name).exists());
    assert!(list_segments().unwrap().iter().all(|s| s.name != name));
    producer.kill9();
}

#[test]
fn a_consumer_waiting_on_a_header_a_peer_zeroed_gets_an_error() {
    if role().is_some() {
        return;
    }
    let name = unique_name("zeroed");
    let _c = ShmCleanup(name.clone());
    let seg = Segment::create(
        &name,
        &test_config(Policy::Lossy),
        &CreateOptions::default(),
    )
    .expect("create");
    let _tx = seg.producer().expect("producer");
    let mut rx = seg.consumer().expect("join");
    rx.set_liveness_interval(Duration::from_millis(5));
    // The attacker: another descriptor on the file, with write access, zeroes the magic.
    let peer = Segment::attach(&name, &AttachOptions::default()).expect("peer attaches");
    // SAFETY: the magic (offset 0, u64) is inside the mapping, aligned, accessed atomically.
    let magic = unsafe { &*peer.mapping().as_ptr().cast::<AtomicU64>() };
    // Relaxed: see the abandoner.
    magic.store(0, Ordering::Relaxed);
    assert_eq!(
        rx.wait_for_frames(Some(GIVE_UP)),
        Err(WaitError::Abandoned { unlinked: false })
    );
}

#[test]
fn a_consumer_waiting_on_a_segment_a_peer_shrinks_gets_an_error() {
    if role().is_some() {
        return;
    }
    let name = unique_name("shrunk");
    let _c = ShmCleanup(name.clone());
    let seg = Segment::create(
        &name,
        &several_pages(Policy::Lossy),
        &CreateOptions::default(),
    )
    .expect("create");
    let _tx = seg.producer().expect("producer");
    let mut rx = seg.consumer().expect("join");
    rx.set_liveness_interval(Duration::from_millis(5));
    // The attacker shrinks the file to its first page: the control blocks the wait touches
    // are still there (no SIGBUS), so only the size check can notice.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(shm_path(&name))
        .unwrap();
    f.set_len(4096).unwrap();
    assert_eq!(rx.wait_for_frames(Some(GIVE_UP)), Err(WaitError::Truncated));
    assert!(
        !rx.is_truncated(),
        "no fault happened: the size check saw it"
    );
}

#[test]
fn a_producer_waiting_for_space_on_a_segment_a_peer_shrinks_gets_an_error() {
    if role().is_some() {
        return;
    }
    let name = unique_name("shrunk-tx");
    let _c = ShmCleanup(name.clone());
    let seg = Segment::create(
        &name,
        &several_pages(Policy::Lossless),
        &CreateOptions::default(),
    )
    .expect("create");
    let mut tx = seg.producer().expect("producer");
    tx.set_liveness_interval(Duration::from_millis(5));
    // A live consumer that never reads holds the lossless ring full.
    let _rx = seg.consumer().expect("join");
    produce(&mut tx, Some(64), 64);
    assert!(matches!(
        tx.producer().write_grant(1),
        Err(GrantError::Full)
    ));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(shm_path(&name))
        .unwrap();
    f.set_len(4096).unwrap();
    assert_eq!(tx.wait_for_space(Some(GIVE_UP)), Err(GrantError::Evicted));
    assert_eq!(seg.check_size(), Err(4096));
}
