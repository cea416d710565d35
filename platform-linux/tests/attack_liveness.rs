//! Attacks on liveness (issue 11, finding 4): a process that can open a segment takes the lock
//! that marks a participant alive, the participant is killed with `-9`, and the squatted lock
//! must not keep it alive: `evict_dead` evicts it, `list_segments` calls it dead, a waiting
//! consumer sees the end of the stream. And the converse: live participants, in this process
//! or another, are never judged dead, squatters or not.
//!
//! Every participant and attacker is a real process (this test binary re-executed in a role,
//! see `common::start_role`). Nothing asserts a time: loops run "until evicted" with a generous
//! give-up bound.

mod common;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use common::{
    attach_from_env, consume, create_segment, env, expect_line, field, idle_until_killed, produce,
    scratch, shm_path, start_role, test_config,
};
use voxring_core::Policy;
use voxring_linux::liveness::{TICKET_BASE, pid_of, ticket_of};
use voxring_linux::ring::{FramesWait, PeerState, Segment, list_segments};
use voxring_linux::segment::AttachOptions;

/// How long a loop may try before the test gives up (a bound, never the thing asserted).
const GIVE_UP: Duration = Duration::from_secs(120);

/// `fcntl(F_OFD_*)` on the one-byte lock of ticket `t`; returns the errno on failure, and for
/// `F_OFD_GETLK` the type of the lock found (`F_UNLCK` when none).
fn ticket_lock(
    fd: BorrowedFd<'_>,
    cmd: libc::c_int,
    kind: libc::c_int,
    t: u32,
) -> Result<i32, i32> {
    // SAFETY: an all-zero flock is a valid value; the fields that matter are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = (TICKET_BASE + u64::from(t)) as libc::off_t;
    fl.l_len = 1;
    // SAFETY: `fd` is open for the duration of the call and `fl` is an initialised flock the
    // kernel may read and (for GETLK) write.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl as *mut libc::flock) };
    if r == -1 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(i32::from(fl.l_type))
    }
}

/// The lock another description holds on ticket `t` of the segment at `name`.
fn lock_seen(name: &str, t: u32) -> i32 {
    let f = std::fs::File::open(shm_path(name)).expect("open the segment to query a lock");
    ticket_lock(f.as_fd(), libc::F_OFD_GETLK, libc::F_WRLCK, t).expect("F_OFD_GETLK")
}

/// A victim's last words: `<word> token=<its owner token>`; then it idles until killed.
fn say_token_and_idle(word: &str, token: u64) -> ! {
    println!("{word} token={token}");
    idle_until_killed();
}

/// Child role: attach, join as a consumer, print the owner token, then idle until killed.
#[test]
fn child_entry_liveness_victim_consumer() {
    common::child_role!("victim-consumer");
    let seg = attach_from_env();
    let rx = seg.consumer().expect("victim joins");
    say_token_and_idle("joined", rx.owner_token());
}

/// Child role: create the segment, claim the producer side, print the token, idle until killed.
#[test]
fn child_entry_liveness_victim_producer() {
    common::child_role!("victim-producer");
    let seg = create_segment(&env("VOXRING_TEST_SEGMENT"), &test_config(Policy::Lossless));
    let tx = seg.producer().expect("victim claims the producer side");
    say_token_and_idle("ready", tx.owner_token());
}

/// Child role: a consumer in another process that reads every frame until the end of stream.
#[test]
fn child_entry_liveness_reader() {
    common::child_role!("reader");
    let seg = attach_from_env();
    let mut rx = seg.consumer().expect("reader joins");
    rx.set_liveness_interval(Duration::from_millis(5));
    println!("joined token={}", rx.owner_token());
    let seen = consume(&mut rx, None);
    println!(
        "result delivered={} end={}",
        seen.delivered, seen.end_flag as u8
    );
}

/// Child role, the attacker: opens the segment read-only (`VOXRING_TEST_MODE=read`) or
/// read-write (`write`), and takes a lock of that kind on the victim's ticket byte as soon as
/// the victim's own lock goes (`F_OFD_SETLKW` blocks until then). Holds it until killed.
#[test]
fn child_entry_liveness_squatter() {
    common::child_role!("squatter");
    let path = shm_path(&env("VOXRING_TEST_SEGMENT"));
    let token: u64 = env("VOXRING_TEST_TOKEN").parse().unwrap();
    let t = ticket_of(token);
    let write = env("VOXRING_TEST_MODE") == "write";
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(&path)
        .expect("squatter opens the segment");
    let kind = if write { libc::F_WRLCK } else { libc::F_RDLCK };
    if !write {
        // A read-only opener cannot take the write lock a participant holds.
        assert_eq!(
            ticket_lock(file.as_fd(), libc::F_OFD_SETLK, libc::F_WRLCK, t),
            Err(libc::EBADF)
        );
    }
    // While the victim lives its write lock conflicts with ours: try without blocking first.
    assert_eq!(
        ticket_lock(file.as_fd(), libc::F_OFD_SETLK, kind, t),
        Err(libc::EAGAIN),
        "the victim's lock must be held while it lives"
    );
    println!("waiting");
    ticket_lock(file.as_fd(), libc::F_OFD_SETLKW, kind, t).expect("squat the ticket");
    println!("squatting");
    idle_until_killed();
}

/// Kills a consumer, squats its ticket (read-only or with write access), and checks that the
/// slot is listed dead and evicted, and that the lossless producer is no longer held back.
/// `reap`: reap the victim at once (else it stays a zombie until the end: its PID still
/// exists, and only its state tells it is dead).
fn squatted_consumer_is_evicted(mode: &str, reap: bool) {
    let (name, _c) = scratch(&format!("squat-{mode}"));
    let seg = create_segment(&name, &test_config(Policy::Lossless));
    let mut tx = seg.producer().expect("producer");
    let envs = vec![("VOXRING_TEST_SEGMENT", name.clone())];
    let mut victim = start_role(
        "child_entry_liveness_victim_consumer",
        "victim-consumer",
        &envs,
    );
    let line = expect_line(victim.child(), "joined");
    let token = field(&line, "token");
    let victim_pid = victim.pid();
    assert_eq!(
        pid_of(token),
        victim_pid,
        "the token records the victim's PID"
    );
    let mut squat_env = envs.clone();
    squat_env.push(("VOXRING_TEST_TOKEN", token.to_string()));
    squat_env.push(("VOXRING_TEST_MODE", mode.to_owned()));
    let mut squatter = start_role("child_entry_liveness_squatter", "squatter", &squat_env);
    expect_line(squatter.child(), "waiting");
    // Fill the lossless ring: the victim never reads, so the producer is held back by it.
    produce(&mut tx, Some(16), 16);
    assert!(matches!(
        tx.producer().write_grant(1),
        Err(voxring_core::GrantError::Full)
    ));

    if reap {
        victim.kill9();
    } else {
        victim.child().kill().expect("kill -9 the victim");
    }
    expect_line(squatter.child(), "squatting");
    // The squat is in place: someone holds a lock on the dead consumer's ticket byte.
    let want = if mode == "write" {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    };
    assert_eq!(lock_seen(&name, ticket_of(token)), want);

    // Listed as dead, and evicted; loop until then (a zombie becomes one a moment after its
    // locks are gone).
    let start = Instant::now();
    loop {
        let listed = list_segments().expect("list");
        let ring = listed
            .iter()
            .find(|s| s.name == name)
            .expect("listed")
            .ring
            .clone()
            .expect("ring readable");
        let slot = ring
            .consumers
            .iter()
            .find(|c| c.pid == victim_pid)
            .expect("the victim's slot is listed");
        if !slot.alive && seg.evict_dead().consumers == 1 {
            break;
        }
        assert!(
            start.elapsed() < GIVE_UP,
            "gave up: the squatted consumer is still judged alive ({mode} lock, reap={reap})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ring = seg.ring();
    assert!((0..ring.config().max_consumers).all(|i| ring.consumer_owner(i).is_none()));
    // The lossless producer is free again: it writes three more rings' worth.
    produce(&mut tx, Some(3 * 16), 4);
    assert_eq!(seg.producer_state(), PeerState::Alive);
    squatter.kill9();
    victim.kill9();
}

/// One test per squatter (`mode`) and victim (`reap`: killed and reaped, or a zombie).
macro_rules! squatter_tests {
    ($($name:ident: $mode:literal, reap $reap:literal;)*) => {$(
        #[test]
        fn $name() {
            common::parent_only!();
            squatted_consumer_is_evicted($mode, $reap);
        }
    )*};
}

squatter_tests! {
    a_read_only_squatter_cannot_keep_a_killed_consumer_alive: "read", reap true;
    a_write_capable_squatter_cannot_keep_a_killed_consumer_alive: "write", reap true;
    a_write_capable_squatter_cannot_keep_a_zombie_consumer_alive: "write", reap false;
}

#[test]
fn a_squatted_dead_producer_still_ends_the_stream_and_can_be_replaced() {
    common::parent_only!();
    let (name, _c) = scratch("squat-prod");
    let envs = vec![("VOXRING_TEST_SEGMENT", name.clone())];
    let mut victim = start_role(
        "child_entry_liveness_victim_producer",
        "victim-producer",
        &envs,
    );
    let token = field(&expect_line(victim.child(), "ready"), "token");
    let seg = Segment::attach(&name, &AttachOptions::default()).expect("attach");
    let mut rx = seg.consumer().expect("join");
    rx.set_liveness_interval(Duration::from_millis(5));
    assert_eq!(seg.producer_state(), PeerState::Alive);
    let mut squat_env = envs.clone();
    squat_env.push(("VOXRING_TEST_TOKEN", token.to_string()));
    squat_env.push(("VOXRING_TEST_MODE", "write".to_owned()));
    let mut squatter = start_role("child_entry_liveness_squatter", "squatter", &squat_env);
    expect_line(squatter.child(), "waiting");
    victim.kill9();
    expect_line(squatter.child(), "squatting");
    assert_eq!(lock_seen(&name, ticket_of(token)), libc::F_WRLCK);
    // The waiting consumer sees the end of the stream, not a producer kept alive.
    assert_eq!(
        rx.wait_for_frames(Some(GIVE_UP)).expect("wait"),
        FramesWait::EndOfStream
    );
    assert_eq!(seg.producer_state(), PeerState::Dead);
    // And a new producer can take the side over.
    let tx = seg
        .producer()
        .expect("a new producer replaces the dead one");
    assert_eq!(seg.producer_state(), PeerState::Alive);
    drop(tx);
    squatter.kill9();
}

#[test]
fn live_participants_are_never_judged_dead_even_beside_squatters() {
    common::parent_only!();
    let (name, _c) = scratch("nofp");
    let seg = create_segment(&name, &test_config(Policy::Lossless));
    let mut tx = seg.producer().expect("producer");
    let envs = vec![("VOXRING_TEST_SEGMENT", name.clone())];
    let mut reader = start_role("child_entry_liveness_reader", "reader", &envs);
    let token = field(&expect_line(reader.child(), "joined"), "token");
    assert_eq!(pid_of(token), reader.pid());

    // Squatters cannot take the lock of a live participant, read-only or read-write, in this
    // process (the producer) or another (the reader).
    let ro = std::fs::File::open(shm_path(&name)).unwrap();
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(&name))
        .unwrap();
    for t in [ticket_of(token), ticket_of(tx.owner_token())] {
        let read = ticket_lock(ro.as_fd(), libc::F_OFD_SETLK, libc::F_RDLCK, t);
        let write = ticket_lock(rw.as_fd(), libc::F_OFD_SETLK, libc::F_WRLCK, t);
        assert_eq!((read, write), (Err(libc::EAGAIN), Err(libc::EAGAIN)));
    }

    // Checked again and again, nobody is evicted or listed dead.
    for _ in 0..50 {
        assert_eq!(seg.evict_dead(), Default::default());
        assert_eq!(seg.producer_state(), PeerState::Alive);
    }
    let listed = list_segments().expect("list");
    let me = listed.iter().find(|s| s.name == name).expect("listed");
    assert_eq!(me.participants(), (2, 0));

    // And the reader in the other process still gets every frame.
    produce(&mut tx, Some(40), 4);
    let line = expect_line(reader.child(), "result");
    assert!(reader.wait().success(), "reader failed: {line}");
    assert_eq!(field(&line, "delivered"), 40);
    assert_eq!(field(&line, "end"), 1);
    drop(tx);
    drop(seg);
    assert!(!shm_path(&name).exists());
}
