//! `voxring bench ipc` end to end: the built binary runs every transport and its JSON holds
//! every field. Small message counts; no assertion on any time.

use std::path::PathBuf;
use std::process::Command;

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

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("voxring-test-{}-{name}", std::process::id()))
}

#[test]
fn quick_run_covers_every_transport_and_the_json_has_every_field() {
    let json = temp_path("ipc.json");
    let svg = temp_path("ipc.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_voxring"))
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
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_file(&svg);

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
        let want = if *t == "cacheline" { 1 } else { 3 };
        assert_eq!(rows.len(), want, "{t}: rows {rows:?}");
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
    let out = Command::new(env!("CARGO_BIN_EXE_voxring"))
        .args([
            "bench",
            "ipc",
            "--transports",
            "cacheline,uds",
            "--payloads",
            "64",
            "--messages",
            "50",
            "--json",
            "-",
        ])
        .output()
        .expect("run voxring");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["results"].as_array().map(Vec::len), Some(2), "{doc}");
    // The table went to stderr instead.
    assert!(String::from_utf8_lossy(&out.stderr).contains("p50 ns"));
}

#[test]
fn bad_payload_is_refused_with_a_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_voxring"))
        .args(["bench", "ipc", "--payloads", "100"])
        .output()
        .expect("run voxring");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("multiple of 8"), "{stderr}");
}

#[test]
fn a_producer_without_its_descriptor_fails_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_voxring"))
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
