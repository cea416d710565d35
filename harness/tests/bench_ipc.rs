//! `voxring bench ipc` end to end: the built binary runs every transport and its JSON holds
//! every field. Small message counts; no assertion on any time.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::voxring;

const FIELDS: [&str; 9] = [
    "transport",
    "payload_bytes",
    "messages",
    "p50_ns",
    "p99_ns",
    "p999_ns",
    "max_ns",
    "cpu_ns_per_msg",
    "producer_syscalls_per_msg",
];

/// One 64-byte payload, 50 messages, the JSON on stdout.
const SMALL_RUN_JSON_TO_STDOUT: [&str; 6] = ["--payloads", "64", "--messages", "50", "--json", "-"];

fn python_with_numpy() -> bool {
    let mut candidates: Vec<String> = std::env::var("VOXRING_PYTHON").into_iter().collect();
    candidates.push("python3".into());
    candidates.push("/usr/bin/python3".into());
    candidates.iter().filter(|c| !c.is_empty()).any(|py| {
        Command::new(py)
            .args(["-c", "import numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn quick_run_covers_every_transport_and_the_json_has_every_field() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let json = dir.path().join("ipc.json");
    let svg = dir.path().join("ipc.svg");
    let out = voxring()
        .args([
            "bench",
            "ipc",
            "--quick",
            "--messages",
            "200",
            "--payloads",
            "64,2K,64K",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .expect("run voxring");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "voxring bench ipc failed: {stderr}");
    let text = std::fs::read_to_string(&json).expect("the JSON file was written");
    let plot = std::fs::read_to_string(&svg).expect("the SVG file was written");

    let doc: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let results = doc["results"].as_array().expect("a results array");
    let mut expected = vec![
        "cacheline",
        "shm-spin",
        "shm-park",
        "uds",
        "tcp",
        "pipe",
        "http",
        "rtrb",
    ];
    if python_with_numpy() {
        expected.push("python-mparray");
    }
    for t in &expected {
        let rows: Vec<&serde_json::Value> =
            results.iter().filter(|r| r["transport"] == *t).collect();
        // `cacheline` too: the floor is measured again in every payload's round.
        assert_eq!(rows.len(), 3, "{t}: rows {rows:?}");
        for r in rows {
            for f in FIELDS {
                assert!(r.get(f).is_some(), "{t}: field {f} missing in {r}");
            }
            assert_eq!(r["messages"], 200, "{t}");
            let p50 = r["p50_ns"].as_u64().expect("p50 is an integer");
            let p99 = r["p99_ns"].as_u64().expect("p99 is an integer");
            let p999 = r["p999_ns"].as_u64().expect("p99.9 is an integer");
            let max = r["max_ns"].as_u64().expect("max is an integer");
            assert!(
                p50 >= 1 && p50 <= p99 && p99 <= p999 && p999 <= max,
                "{t}: {r}"
            );
            assert!(
                r["cpu_ns_per_msg"].as_f64().expect("cpu is a number") > 0.0,
                "{t}"
            );
            // A number, or null only when nothing could count the producer's syscalls.
            match r["producer_syscalls_per_msg"].as_f64() {
                Some(s) => assert!(s >= 0.0, "{t}: {r}"),
                None => assert_eq!(r["syscall_count_method"], "unavailable", "{t}: {r}"),
            }
        }
    }
    // Every row is set against the floor of its own payload's round.
    for r in results {
        let floor = results
            .iter()
            .find(|c| c["transport"] == "cacheline" && c["payload_bytes"] == r["payload_bytes"])
            .and_then(|c| c["p50_ns"].as_f64())
            .expect("a cacheline row at every payload");
        let ratio = r["p50_over_cacheline"]
            .as_f64()
            .expect("a ratio to the floor");
        let want = r["p50_ns"].as_f64().unwrap_or(0.0) / floor;
        assert!((ratio - want).abs() < 1e-9, "{r}");
    }
    // Busy-polled shared memory never enters the kernel on the producer's send path.
    for r in results.iter().filter(|r| r["transport"] == "shm-spin") {
        assert_eq!(r["producer_syscalls_per_msg"].as_f64(), Some(0.0), "{r}");
    }
    // A socket send is at least one write.
    for r in results.iter().filter(|r| r["transport"] == "uds") {
        assert!(
            r["producer_syscalls_per_msg"].as_f64().unwrap_or(0.0) >= 1.0,
            "{r}"
        );
    }
    assert!(
        plot.starts_with("<svg") && plot.contains("shm-spin"),
        "SVG: {plot:.200}"
    );
}

#[test]
fn json_to_stdout_is_only_json() {
    let out = voxring_test_support::output_ok(
        voxring()
            .args(["bench", "ipc", "--transports", "cacheline,uds"])
            .args(SMALL_RUN_JSON_TO_STDOUT),
        "voxring bench ipc",
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["results"].as_array().map(Vec::len), Some(2), "{doc}");
    // The table went to stderr instead.
    assert!(String::from_utf8_lossy(&out.stderr).contains("p50 ns"));
}

#[test]
fn bad_payload_is_refused_with_a_reason() {
    let out = voxring()
        .args(["bench", "ipc", "--payloads", "100"])
        .output()
        .expect("run voxring");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("multiple of 8"), "{stderr}");
}

#[test]
fn a_producer_without_its_descriptor_fails_cleanly() {
    let out = voxring()
        .args([
            "bench",
            "ipc",
            "--peer",
            "shm-spin",
            "--peer-payload",
            "64",
            "--messages",
            "10",
            "--peer-fds",
            "999",
        ])
        .output()
        .expect("run voxring");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not open"), "{stderr}");
}

/// `nobody` on Debian and Ubuntu: the other local user of the attack below.
const NOBODY: u32 = 65534;
/// How many coming PIDs the attacker prepares a folder for.
const PLANTED_PIDS: u32 = 3000;

fn read_u32(path: &str) -> u32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Plants `tmp/voxring-bench-ffi-<pid>` (mode 0777, owned by nobody when this test is root) with
/// `voxring.h` and `bench_consumer.c` symlinks to `victim` for the next PLANTED_PIDS PIDs.
/// Returns the PIDs planted.
fn plant_for_coming_pids(tmp: &Path, victim: &Path) -> Vec<u32> {
    let root = rustix::process::geteuid().is_root();
    let pid_max = read_u32("/proc/sys/kernel/pid_max");
    let last = read_u32("/proc/sys/kernel/ns_last_pid");
    let mut pids = Vec::new();
    for k in 1..=PLANTED_PIDS {
        // PIDs wrap from pid_max back to 300 (RESERVED_PIDS).
        let mut p = last + k;
        if p >= pid_max {
            p = 300 + (p - pid_max);
        }
        let d = tmp.join(format!("voxring-bench-ffi-{p}"));
        std::fs::create_dir(&d).expect("plant a folder");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        for f in ["voxring.h", "bench_consumer.c"] {
            std::os::unix::fs::symlink(victim, d.join(f)).expect("plant a symlink");
            if root {
                std::os::unix::fs::lchown(d.join(f), Some(NOBODY), Some(NOBODY)).expect("lchown");
            }
        }
        if root {
            std::os::unix::fs::chown(&d, Some(NOBODY), Some(NOBODY)).expect("chown");
        }
        pids.push(p);
    }
    pids
}

/// The attack on the old `$TMPDIR/voxring-bench-ffi-<pid>` build folder of c-voxring: another
/// user prepares that folder for the coming PIDs with `voxring.h` a symlink to a file of the
/// victim's. The bench must neither write through it nor use the folder, and still work.
#[test]
fn c_voxring_ignores_build_folders_planted_for_coming_pids() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_voxring"));
    let lib_next_to_exe = exe.with_file_name("libvoxring_ffi.so");
    assert!(
        std::env::var_os("VOXRING_LIB").is_some() || lib_next_to_exe.is_file(),
        "c-voxring needs {}: build the workspace first (`cargo build --workspace`, as \
         scripts/test does) or set VOXRING_LIB",
        lib_next_to_exe.display()
    );
    // A /tmp of our own (world-writable and sticky, like /tmp) passed as TMPDIR, so the attack is
    // real and nothing is left in the shared /tmp.
    let outer = tempfile::tempdir().expect("a temporary folder");
    std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let tmp = outer.path().join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let victim = outer.path().join("victim");
    std::fs::write(&victim, "precious\n").expect("write the victim");

    // The bench's PID must be one the attacker prepared; on a machine that starts thousands of
    // processes between the two steps it may not be, so try again (the bound is a give-up bound).
    let mut armed = false;
    for _attempt in 0..3 {
        let planted = plant_for_coming_pids(&tmp, &victim);
        let child = Command::new(&exe)
            .args(["bench", "ipc", "--quick", "--transports", "c-voxring"])
            .args(SMALL_RUN_JSON_TO_STDOUT)
            .env("TMPDIR", &tmp)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run voxring");
        let pid = child.id();
        let out = child.wait_with_output().expect("wait for voxring");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read the victim"),
            "precious\n",
            "the victim was overwritten through a planted voxring.h"
        );
        assert!(
            out.status.success(),
            "the c-voxring bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        let rows = doc["results"].as_array().expect("results");
        assert!(
            rows.len() == 1 && rows[0]["transport"] == "c-voxring" && rows[0]["messages"] == 50,
            "{doc}"
        );
        // The planted folders are as the attacker left them, and the bench's own folder is gone.
        let mut names: Vec<String> = std::fs::read_dir(&tmp)
            .expect("list tmp")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected: Vec<String> = planted
            .iter()
            .map(|p| format!("voxring-bench-ffi-{p}"))
            .collect();
        expected.sort();
        assert_eq!(names, expected, "the bench left something in TMPDIR");
        for p in &planted {
            let d = tmp.join(format!("voxring-bench-ffi-{p}"));
            let n = std::fs::read_dir(&d).expect("a planted folder").count();
            assert_eq!(n, 2, "something was written into {}", d.display());
            let m = std::fs::symlink_metadata(d.join("voxring.h")).expect("stat");
            assert!(
                m.file_type().is_symlink()
                    && m.uid() == std::fs::symlink_metadata(&d).expect("stat").uid()
            );
        }
        for p in &planted {
            std::fs::remove_dir_all(tmp.join(format!("voxring-bench-ffi-{p}"))).expect("clean up");
        }
        if planted.contains(&pid) {
            armed = true;
            break;
        }
        eprintln!("the bench ran as pid {pid}, outside the planted range; planting again");
    }
    assert!(
        armed,
        "in 3 attempts the bench never ran under a PID the attack had prepared ({PLANTED_PIDS} \
         coming PIDs each time): the attack was not tested"
    );
}
