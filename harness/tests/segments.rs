//! `voxring segments list` and `clean` against a live and a dead segment.

use std::process::Command;

use serde_json::Value;
use voxring_core::{Policy, RingConfig, SampleFormat};
use voxring_linux::ring::Segment;
use voxring_linux::segment::CreateOptions;

mod common;

use common::voxring;

fn cfg() -> RingConfig {
    RingConfig {
        frames: 8,
        samples_per_frame: 64,
        channels: 1,
        format: SampleFormat::S16,
        sample_rate: 48_000,
        max_consumers: 2,
        policy: Policy::Lossless,
    }
}

fn json_of(args: &[&str]) -> Value {
    let out = voxring_test_support::output_ok(voxring().args(args), &format!("voxring {args:?}"));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Removes this test's own segments (`/dev/shm/voxring.<prefix>*`) when dropped, so a failed
/// assertion leaves nothing behind either.
struct RemoveOwn(String);

impl Drop for RemoveOwn {
    fn drop(&mut self) {
        let own = format!("voxring.{}", self.0);
        for e in std::fs::read_dir("/dev/shm")
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(&own) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[test]
fn list_shows_live_and_dead_and_clean_removes_only_the_dead() {
    // Not a prefix of the other tests' names: their segments are not this test's to list,
    // clean or remove (they run in parallel).
    let prefix = format!("segtest-{}-own-", std::process::id());
    let _cleanup = RemoveOwn(prefix.clone());
    let live_name = format!("{prefix}live");
    let dead_name = format!("{prefix}dead");
    // Live: this process holds it (and a consumer on it).
    let live = Segment::create(&live_name, &cfg(), &CreateOptions::default()).unwrap();
    let _producer = live.producer().unwrap();
    let _consumer = live.consumer().unwrap();
    // Dead: a child process creates it, claims both sides, and is killed (SIGKILL), as a
    // crashed pipeline would be.
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hold_a_segment_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_ENV, &dead_name)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    while !line.contains("held") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "the holder died early"
        );
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    let dead_path = format!("/dev/shm/voxring.{dead_name}");
    let live_path = format!("/dev/shm/voxring.{live_name}");
    assert!(std::path::Path::new(&dead_path).exists());

    let list = json_of(&["segments", "list", "--prefix", &prefix, "--json", "-"]);
    let rows = list.as_array().unwrap();
    let row = |n: &str| {
        rows.iter()
            .find(|r| r["name"] == n)
            .unwrap_or_else(|| panic!("{n} not listed: {list}"))
    };
    let l = row(&live_name);
    assert_eq!(l["in_use"], true);
    assert_eq!(l["alive"].as_u64(), Some(2), "{l}");
    assert_eq!(l["dead"].as_u64(), Some(0), "{l}");
    assert!(l["size"].as_u64().unwrap() > 0);
    let d = row(&dead_name);
    assert_eq!(d["in_use"], false);
    assert_eq!(d["alive"].as_u64(), Some(0), "{d}");
    assert_eq!(
        d["dead"].as_u64(),
        Some(2),
        "the dead producer and consumer are listed: {d}"
    );
    let roles: Vec<&str> = l["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    assert!(
        roles.contains(&"producer") && roles.contains(&"consumer"),
        "{l}"
    );

    // Dry run: names the dead one, removes nothing.
    let dry = json_of(&[
        "segments",
        "clean",
        "--dry-run",
        "--prefix",
        &prefix,
        "--json",
        "-",
    ]);
    assert_eq!(
        dry["removed"],
        serde_json::json!([format!("voxring.{dead_name}")]),
        "{dry}"
    );
    assert!(
        std::path::Path::new(&dead_path).exists(),
        "--dry-run removed a segment"
    );

    let done = json_of(&["segments", "clean", "--prefix", &prefix, "--json", "-"]);
    assert_eq!(
        done["removed"],
        serde_json::json!([format!("voxring.{dead_name}")]),
        "{done}"
    );
    assert!(
        !std::path::Path::new(&dead_path).exists(),
        "the dead segment is still there"
    );
    assert!(
        std::path::Path::new(&live_path).exists(),
        "clean removed a live segment"
    );
    drop((_producer, _consumer, live));
    assert!(
        !std::path::Path::new(&live_path).exists(),
        "the live segment was not removed on drop"
    );
}

const HOLD_ENV: &str = "VOXRING_SEGTEST_HOLD";

/// Not a test on its own: the child process of the test above (run with `HOLD_ENV` set), which
/// creates a segment, joins it as producer and consumer, and waits to be killed. Without the
/// variable it returns at once.
#[test]
fn hold_a_segment_until_killed() {
    let Ok(name) = std::env::var(HOLD_ENV) else {
        return;
    };
    let opts = CreateOptions {
        remove_on_drop: false,
        ..CreateOptions::default()
    };
    let seg = Segment::create(&name, &cfg(), &opts).unwrap();
    let _p = seg.producer().unwrap();
    let _c = seg.consumer().unwrap();
    println!("held");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[test]
fn list_of_nothing_is_not_an_error() {
    let list = json_of(&[
        "segments",
        "list",
        "--prefix",
        "no-such-prefix-at-all-",
        "--json",
        "-",
    ]);
    assert_eq!(list, serde_json::json!([]));
}

/// As root: a dead segment owned by `nobody` is left alone by `voxring segments clean` (and
/// said to be another user's), named by `--dry-run --all-users` without being removed, and
/// removed by `--all-users`.
#[test]
fn clean_leaves_another_users_segment_unless_all_users() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to give a segment to another user");
        return;
    }
    const NOBODY: u32 = 65534;
    let prefix = format!("segtest-{}-other-", std::process::id());
    let _cleanup = RemoveOwn(prefix.clone());
    let name = format!("{prefix}theirs");
    let opts = CreateOptions {
        remove_on_drop: false,
        ..CreateOptions::default()
    };
    let seg = Segment::create(&name, &cfg(), &opts).unwrap();
    drop(seg); // dead: nobody holds its liveness lock
    let path = format!("/dev/shm/voxring.{name}");
    std::os::unix::fs::chown(&path, Some(NOBODY), None).unwrap();
    let file = format!("voxring.{name}");

    let kept = json_of(&["segments", "clean", "--prefix", &prefix, "--json", "-"]);
    assert_eq!(kept["removed"], serde_json::json!([]), "{kept}");
    assert_eq!(kept["other_users"], serde_json::json!([[file, NOBODY]]));
    assert!(
        std::path::Path::new(&path).exists(),
        "removed nobody's file"
    );
    let text = voxring()
        .args(["segments", "clean", "--prefix", &prefix])
        .output()
        .unwrap();
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("left {file} alone")) && text.contains("--all-users"),
        "{text}"
    );

    let dry_run = [
        "segments",
        "clean",
        "--dry-run",
        "--all-users",
        "--prefix",
        &prefix,
    ];
    let dry = json_of(&[&dry_run[..], &["--json", "-"]].concat());
    assert_eq!(dry["removed"], serde_json::json!([file]), "{dry}");
    assert!(std::path::Path::new(&path).exists(), "--dry-run removed it");
    let text = voxring().args(dry_run).output().unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains(&format!("would remove {file} (no live participant)")),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    let done = json_of(&[
        "segments",
        "clean",
        "--all-users",
        "--prefix",
        &prefix,
        "--json",
        "-",
    ]);
    assert_eq!(done["removed"], serde_json::json!([file]), "{done}");
    assert!(!std::path::Path::new(&path).exists());
}
