//! Attacks on the blocking waits (issue 11, finding 9): a segment abandoned or destroyed under
//! a waiting participant must end the wait with an error, not park it for ever. The producer
//! stays alive and keeps its descriptor open, so its liveness lock stays held and the liveness
//! check alone would never end the wait.
//!
//! Waits are given a generous timeout only as a give-up bound: the assertion is on what they
//! return (an error), never on how long they took.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{
    create_segment, env, expect_line, idle_until_killed, mapped_u64, produce, scratch,
    set_file_len, shm_path, start_role, test_config,
};
use voxring_core::{GrantError, Policy, RingConfig};
use voxring_linux::ring::{PeerState, Segment, ShmConsumer, ShmProducer, WaitError, list_segments};
use voxring_linux::segment::AttachOptions;

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

/// A segment of `config` with its producer and a consumer, both checking liveness every 5 ms
/// when they wait.
fn participants(name: &str, config: &RingConfig) -> (Segment, ShmProducer, ShmConsumer) {
    let seg = create_segment(name, config);
    let mut tx = seg.producer().expect("producer");
    tx.set_liveness_interval(Duration::from_millis(5));
    let mut rx = seg.consumer().expect("join");
    rx.set_liveness_interval(Duration::from_millis(5));
    (seg, tx, rx)
}

/// Child role: create the segment and claim the producer side; once a consumer has joined,
/// unlink the segment's name and zero its header, keep everything open, and idle until killed.
#[test]
fn child_entry_waits_abandoner() {
    common::child_role!("abandoner");
    let name = env("VOXRING_TEST_SEGMENT");
    let seg = create_segment(&name, &test_config(Policy::Lossless));
    let _tx = seg.producer().expect("abandoner claims the producer side");
    println!("ready");
    let ring = seg.ring();
    let start = Instant::now();
    while (0..ring.config().max_consumers).all(|i| ring.consumer_owner(i).is_none()) {
        assert!(start.elapsed() < GIVE_UP, "no consumer ever joined");
        std::thread::sleep(Duration::from_millis(1));
    }
    voxring_linux::segment::unlink(&name).expect("unlink the name");
    for off in (0..128).step_by(8) {
        // Relaxed: the waiter's check does not order anything on this store.
        mapped_u64(seg.mapping(), off).store(0, Ordering::Relaxed);
    }
    println!("abandoned");
    idle_until_killed();
}

#[test]
fn a_consumer_waiting_on_an_unlinked_zeroed_segment_gets_an_error() {
    common::parent_only!();
    let (name, _c) = scratch("abandon");
    let mut producer = start_role(
        "child_entry_waits_abandoner",
        "abandoner",
        &[("VOXRING_TEST_SEGMENT", name.clone())],
    );
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
    common::parent_only!();
    let (name, _c) = scratch("zeroed");
    let (_seg, _tx, mut rx) = participants(&name, &test_config(Policy::Lossy));
    // The attacker: another descriptor on the file, with write access, zeroes the magic.
    let peer = Segment::attach(&name, &AttachOptions::default()).expect("peer attaches");
    // The magic is the u64 at offset 0. Relaxed: see the abandoner.
    mapped_u64(peer.mapping(), 0).store(0, Ordering::Relaxed);
    assert_eq!(
        rx.wait_for_frames(Some(GIVE_UP)),
        Err(WaitError::Abandoned { unlinked: false })
    );
}

#[test]
fn a_consumer_waiting_on_a_segment_a_peer_shrinks_gets_an_error() {
    common::parent_only!();
    let (name, _c) = scratch("shrunk");
    let (_seg, _tx, mut rx) = participants(&name, &several_pages(Policy::Lossy));
    // The attacker shrinks the file to its first page: the control blocks the wait touches
    // are still there (no SIGBUS), so only the size check can notice.
    set_file_len(&name, 4096);
    assert_eq!(rx.wait_for_frames(Some(GIVE_UP)), Err(WaitError::Truncated));
    assert!(
        !rx.is_truncated(),
        "no fault happened: the size check saw it"
    );
}

#[test]
fn a_producer_waiting_for_space_on_a_segment_a_peer_shrinks_gets_an_error() {
    common::parent_only!();
    let (name, _c) = scratch("shrunk-tx");
    // A live consumer that never reads holds the lossless ring full.
    let (seg, mut tx, _rx) = participants(&name, &several_pages(Policy::Lossless));
    produce(&mut tx, Some(64), 64);
    assert!(matches!(
        tx.producer().write_grant(1),
        Err(GrantError::Full)
    ));
    set_file_len(&name, 4096);
    assert_eq!(tx.wait_for_space(Some(GIVE_UP)), Err(GrantError::Evicted));
    assert_eq!(seg.check_size(), Err(4096));
}
