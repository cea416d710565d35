//! kill -9 the producer or a consumer at random points, many times: the survivors carry on
//! (a lossless ring never stalls on a dead consumer) or end cleanly (end of stream when the
//! producer dies), no corrupt frame is ever delivered, and clean-up leaves nothing behind.
//!
//! `VOXRING_CRASH_ITERATIONS` sets the number of rounds (default 8); `VOXRING_TEST_SEED`
//! replays a run (the seed is printed).

mod common;

use common::{ChildGuard, Rng, consume, env, expect_line, field, produce, test_config};
use voxring_core::Policy;
use voxring_linux::cleanup::clean_segments_matching;
use voxring_linux::ring::{PeerState, Segment, list_segments};
use voxring_linux::segment::AttachOptions;

/// Child role: create the segment, claim the producer side, produce until killed.
#[test]
fn child_entry_crash_producer() {
    common::child_role!("crash-producer");
    let seg = common::create_segment(&env("VOXRING_TEST_SEGMENT"), &test_config(Policy::Lossless));
    let mut tx = seg.producer().expect("producer claims");
    tx.set_liveness_interval(std::time::Duration::from_millis(5));
    println!("ready");
    let batch: usize = env("VOXRING_TEST_BATCH").parse().unwrap();
    produce(&mut tx, None, batch);
}

/// Child role: attach, join, consume until the end of stream, report.
#[test]
fn child_entry_crash_consumer() {
    common::child_role!("crash-consumer");
    let seg = common::attach_from_env();
    let mut rx = seg.consumer().expect("consumer joins");
    rx.set_liveness_interval(std::time::Duration::from_millis(5));
    println!("joined");
    let seen = consume(&mut rx, None);
    println!(
        "result delivered={} gone={}",
        seen.delivered, seen.producer_gone as u8
    );
}

fn iterations() -> u32 {
    std::env::var("VOXRING_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

fn sleep_ms(rng: &mut Rng, max: u64) {
    std::thread::sleep(std::time::Duration::from_millis(rng.below(max + 1)));
}

#[test]
fn survivors_carry_on_or_end_cleanly_and_nothing_is_left_behind() {
    common::parent_only!();
    let seed = common::seed();
    eprintln!("crash test seed {seed} (VOXRING_TEST_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    for round in 0..iterations() {
        let (name, _c) = common::scratch("crash");
        let file_name = format!("voxring.{name}");
        let envs = vec![
            ("VOXRING_TEST_SEGMENT", name.clone()),
            ("VOXRING_TEST_BATCH", (1 + rng.below(8)).to_string()),
        ];
        let mut producer =
            common::start_role("child_entry_crash_producer", "crash-producer", &envs);
        expect_line(producer.child(), "ready");
        let mut consumers: Vec<ChildGuard> = (0..2)
            .map(|_| {
                let mut g =
                    common::start_role("child_entry_crash_consumer", "crash-consumer", &envs);
                expect_line(g.child(), "joined");
                g
            })
            .collect();
        // The test process is a consumer too, so it can check progress itself.
        let seg = Segment::attach(&name, &AttachOptions::default()).expect("parent attaches");
        let mut rx = seg.consumer().expect("parent joins");
        rx.set_liveness_interval(std::time::Duration::from_millis(5));
        let first = consume(&mut rx, Some(1 + rng.below(40)));
        assert!(
            !first.producer_gone,
            "round {round}: producer gone before any kill"
        );

        // While everyone is alive, clean-up must not touch the segment.
        let report = clean_segments_matching(|n| n == file_name).unwrap();
        assert!(
            report.removed.is_empty(),
            "round {round}: removed a live segment"
        );
        assert_eq!(report.in_use, vec![file_name.clone()]);

        let kill_consumer_first = rng.below(2) == 0;
        let mut survivor_lines = Vec::new();
        if kill_consumer_first {
            let victim = rng.below(2) as usize;
            sleep_ms(&mut rng, 20);
            consumers[victim].kill9();
            // The lossless producer must get past the dead consumer: read several rings' worth.
            let more = consume(&mut rx, Some(first.delivered + 3 * 16 + rng.below(64)));
            assert!(
                !more.producer_gone,
                "round {round}: the producer stalled or died after a consumer was killed"
            );
            consumers.remove(victim);
        }
        sleep_ms(&mut rng, 20);
        producer.kill9();
        // The test's own consumer reads what is left and sees the end of stream, no hang.
        let rest = consume(&mut rx, None);
        assert!(
            rest.producer_gone,
            "round {round}: no end of stream after the producer died"
        );
        assert_eq!(seg.producer_state(), PeerState::Dead);
        for mut c in consumers {
            let line = expect_line(c.child(), "result");
            let st = c.wait();
            assert!(st.success(), "round {round}: consumer failed: {line}");
            assert_eq!(field(&line, "gone"), 1, "round {round}: {line}");
            survivor_lines.push(line);
        }
        // Listed as dead producer, our consumer alive.
        let listed = list_segments().unwrap();
        let me = listed
            .iter()
            .find(|s| s.name == name)
            .expect("segment listed");
        assert!(me.in_use);
        let ring = me.ring.as_ref().expect("ring readable");
        assert!(ring.producer.as_ref().is_some_and(|p| !p.alive));
        assert_eq!(ring.consumers.iter().filter(|c| c.alive).count(), 1);
        // Ours read everything there was: its lag, read from the consumer block, is zero.
        assert!(
            ring.consumers.iter().any(|c| c.alive && c.lag == Some(0)),
            "round {round}: {:?}",
            ring.consumers
        );

        // Still attached: clean-up keeps it. Gone: clean-up removes it, and only it.
        let report = clean_segments_matching(|n| n == file_name).unwrap();
        assert!(
            report.removed.is_empty(),
            "round {round}: removed a segment in use"
        );
        drop(rx);
        drop(seg);
        let report = clean_segments_matching(|n| n == file_name).unwrap();
        assert_eq!(report.removed, vec![file_name.clone()], "round {round}");
        assert!(!common::shm_path(&name).exists());
    }
}
