//! The protocol document is enough: a C consumer written only from `docs/protocol.md` and
//! `core/LAYOUT.md` (`protocol/consumer.c`: C11 atomics, raw futex and fcntl, no voxring code)
//! joins a ring a Rust producer feeds, keeps its liveness lock through the producer's eviction
//! checks, parks and is woken on the futex, reads every frame bit-exact and leaves. And the
//! control: the same reader without the lock (what `LAYOUT.md` alone used to lead to) is
//! evicted at the first check, so the document's liveness section is what keeps it alive;
//! killed with `-9`, the reader loses its lock and the next check evicts it.

mod common;
mod protocol;

use std::process::Command;

use common::{ShmCleanup, unique_name};
use protocol::{
    Feed, Finished, Produced, build_consumer, config, consume_while, feed, field, has_consumer,
};
use voxring_linux::ring::Segment;
use voxring_linux::segment::CreateOptions;

/// A fresh ring named after `tag`, removed (with whatever is left of it) when the guard drops.
fn ring(tag: &str) -> (String, ShmCleanup, Segment) {
    let name = unique_name(tag);
    let clean = ShmCleanup(name.clone());
    let seg =
        Segment::create(&name, &config(), &CreateOptions::default()).expect("create the ring");
    (name, clean, seg)
}

/// A run of the C consumer on a fresh ring: what was fed, how the consumer finished, and the
/// ring (removed when this drops: fields drop in order).
struct Consumed {
    produced: Produced,
    fin: Finished,
    seg: Segment,
    _clean: ShmCleanup,
}

/// Builds the C consumer and runs it with `args` on a fresh ring named after `tag` while
/// [`feed`] runs as `opts` says.
fn run_consumer(tag: &str, args: &[&str], opts: Feed) -> Consumed {
    let (name, _clean, seg) = ring(tag);
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = build_consumer(dir.path(), false);
    let mut cmd = Command::new(&bin);
    cmd.arg(&name).args(args);
    let (produced, fin) = consume_while(cmd, &seg, |stop| feed(&seg, opts, stop));
    Consumed {
        produced,
        fin,
        seg,
        _clean,
    }
}

#[test]
fn a_consumer_written_from_the_document_reads_every_frame_bit_exact_and_stays_alive() {
    // Parks of up to 60 s: a wake the document got wrong would leave the consumer asleep
    // until the test gives up, instead of being covered by a short timeout.
    let feed_opts = Feed {
        min_checks: 8,
        park_every: 10,
        ..Feed::frames(300)
    };
    let Consumed {
        produced,
        fin,
        seg,
        _clean,
    } = run_consumer("proto", &["--park-ms", "60000"], feed_opts);
    fin.assert_read_all(&produced, "eos");
    // Survived every liveness check, 50 ms apart, over more than the 250 ms interval, and
    // every park ended in a wake.
    fin.assert_kept_alive_and_woken(&produced, 8);
    // It parked armed (the producer waited for the bit).
    let d = &fin.done;
    let parks: u32 = field(d, "parks").parse().expect("parks");
    assert!(parks >= produced.forced_parks, "{d} {produced:?}");
    assert!(produced.forced_parks >= 30, "{produced:?}");
    // It left: its slot is free again (its process is gone, but the slot would still be
    // active had it not left).
    assert!(!has_consumer(&seg), "the consumer did not free its slot");
}

#[test]
fn a_reader_without_the_liveness_lock_is_evicted_at_the_first_check() {
    let feed_opts = Feed {
        min_checks: 3,
        ..Feed::frames(40)
    };
    let args = ["--no-ticket", "--park-ms", "20"];
    let Consumed { produced, fin, .. } = &run_consumer("nolock", &args, feed_opts);
    assert_eq!(produced.evicted, 1, "{produced:?}");
    assert_eq!(fin.code, Some(3), "{}; {}", fin.done, fin.stderr);
    assert_eq!(field(&fin.done, "end"), "evicted", "{}", fin.done);
}

#[test]
fn the_document_consumer_ends_when_the_producer_leaves_without_end_of_stream() {
    let feed_opts = Feed {
        end_of_stream: false,
        ..Feed::frames(50)
    };
    // `feed` drops its producer when it returns: the ring's producer side is freed.
    let Consumed { produced, fin, .. } = &run_consumer("noeos", &["--park-ms", "20"], feed_opts);
    fin.assert_read_all(produced, "producer-gone");
}

#[test]
fn a_killed_document_consumer_loses_its_lock_and_the_next_check_evicts_it() {
    let (name, _clean, seg) = ring("kill");
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = build_consumer(dir.path(), false);
    let mut child = common::ChildGuard(Some(
        Command::new(&bin)
            .arg(&name)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the C consumer"),
    ));
    let mut exited = || child.child().try_wait().expect("try_wait").is_some();
    protocol::wait_until("the C consumer joins", || has_consumer(&seg), &mut exited);
    // Alive: its lock is held and its identity matches.
    assert_eq!(seg.evict_dead().consumers, 0);
    assert!(has_consumer(&seg));
    // kill -9 (by PID) and reap: the kernel dropped its lock with its descriptors.
    child.kill9();
    assert!(has_consumer(&seg), "nobody freed the slot yet");
    assert_eq!(
        seg.evict_dead().consumers,
        1,
        "the dead reader was not evicted"
    );
    assert!(!has_consumer(&seg));
}
