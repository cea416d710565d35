//! A producer and several consumers in separate processes pass checksummed frames through a
//! named segment: every frame intact and in order (lossless), or the loss reported exactly
//! (lossy). Children are this test binary re-executed in a role (see `common`).

mod common;

use common::{ShmCleanup, consume, env, expect_line, field, produce, test_config, unique_name};
use voxring_core::Policy;

fn policy_from_env() -> Policy {
    match env("VOXRING_TEST_POLICY").as_str() {
        "lossy" => Policy::Lossy,
        _ => Policy::Lossless,
    }
}

/// Child role "consumer": attach, join, say so, read until the end, print what was seen.
#[test]
fn child_entry_consumer() {
    common::child_role!("consumer");
    let seg = common::attach_from_env();
    assert_eq!(seg.config().policy, policy_from_env());
    let mut rx = seg.consumer().expect("consumer joins");
    println!("joined");
    if std::env::var("VOXRING_TEST_LAG").is_ok() {
        // Fall a whole ring behind on purpose: wait until the producer wrote everything.
        let total: u64 = env("VOXRING_TEST_FRAMES").parse().unwrap();
        while seg.ring().write_pos() < total {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    let seen = consume(&mut rx, None);
    println!(
        "result delivered={} lost={} next={} end={} gone={}",
        seen.delivered, seen.lost, seen.next, seen.end_flag as u8, seen.producer_gone as u8
    );
}

/// Child role "producer": attach, claim, write the frames, exit.
#[test]
fn child_entry_producer() {
    common::child_role!("producer");
    let seg = common::attach_from_env();
    let mut tx = seg.producer().expect("producer claims");
    let total: u64 = env("VOXRING_TEST_FRAMES").parse().unwrap();
    produce(&mut tx, Some(total), 4);
    println!("produced {total}");
}

fn run(policy: Policy, consumers: usize, lagging: usize, total: u64) -> Vec<String> {
    let name = unique_name(match policy {
        Policy::Lossless => "lossless",
        Policy::Lossy => "lossy",
    });
    let _c = ShmCleanup(name.clone());
    let seg = common::create_segment(&name, &test_config(policy));
    let pol = match policy {
        Policy::Lossless => "lossless",
        Policy::Lossy => "lossy",
    };
    let base = vec![
        ("VOXRING_TEST_SEGMENT", name.clone()),
        ("VOXRING_TEST_POLICY", pol.to_string()),
        ("VOXRING_TEST_FRAMES", total.to_string()),
    ];
    let mut kids = Vec::new();
    for i in 0..consumers {
        let mut env = base.clone();
        if i < lagging {
            env.push(("VOXRING_TEST_LAG", "1".into()));
        }
        let mut g = common::start_role("child_entry_consumer", "consumer", &env);
        expect_line(g.child(), "joined");
        kids.push(g);
    }
    let mut producer = common::start_role("child_entry_producer", "producer", &base);
    let (st, out) = producer.wait_output();
    assert!(st.success(), "producer failed: {out}");
    assert!(out.contains(&format!("produced {total}")), "{out}");
    let mut results = Vec::new();
    for mut k in kids {
        let line = expect_line(k.child(), "result");
        let st = k.wait();
        assert!(st.success(), "consumer failed: {line}");
        results.push(line);
    }
    drop(seg);
    assert!(!common::shm_path(&name).exists(), "segment left behind");
    results
}

#[test]
fn lossless_frames_arrive_intact_and_in_order_in_every_consumer() {
    common::parent_only!();
    let total = 3000;
    for line in run(Policy::Lossless, 3, 0, total) {
        assert_eq!(field(&line, "delivered"), total, "{line}");
        assert_eq!(field(&line, "lost"), 0, "{line}");
        assert_eq!(field(&line, "next"), total, "{line}");
        assert_eq!(field(&line, "end"), 1, "{line}");
    }
}

#[test]
fn lossy_loss_is_reported_exactly() {
    common::parent_only!();
    let total = 3000;
    let lines = run(Policy::Lossy, 3, 1, total);
    for line in &lines {
        // Every frame is either delivered intact or counted lost, never both, never neither.
        assert_eq!(
            field(line, "delivered") + field(line, "lost"),
            total,
            "{line}"
        );
        assert_eq!(field(line, "next"), total, "{line}");
        assert_eq!(field(line, "end"), 1, "{line}");
    }
    // The lagging consumer fell a whole ring behind on purpose: it must have lost frames, and
    // can have received at most one ring's worth.
    let lag = &lines[0];
    assert!(field(lag, "lost") >= total - 16, "{lag}");
    assert!(field(lag, "delivered") <= 16, "{lag}");
}
