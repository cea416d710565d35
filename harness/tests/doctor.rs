//! `voxring doctor` against fixture trees: the same verdicts as `kernel-tuning/check` on every
//! id both report (the contract is kernel-tuning/CHECKS.md), the JSON shape, the exit status.
//!
//! The fixture trees are the kernel-tuning bats fixtures (`make_good_tree`, `make_bad_tree` in
//! kernel-tuning/tests/helpers.bash), plus variations written here on top of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::{usage_error, voxring};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness lives in the workspace")
        .to_path_buf()
}

/// A private temporary directory (tempfile: random name, mode 0700) removed on drop.
struct TempDir(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix(&format!("voxring-doctor-test-{tag}-"))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .expect("create temp dir");
        Self(dir.path().to_path_buf(), dir)
    }
}

/// Builds a kernel-tuning fixture tree (`good` or `bad`) at `root`.
fn make_tree(kind: &str, root: &Path) {
    let tests = repo().join("kernel-tuning/tests");
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -e; BATS_TEST_DIRNAME={tests:?}; . {helpers:?}; make_{kind}_tree {root:?}",
            tests = tests.display().to_string(),
            helpers = tests.join("helpers.bash").display().to_string(),
            root = root.display().to_string(),
        ))
        .status()
        .expect("run bash");
    assert!(status.success(), "building the {kind} fixture failed");
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
    std::fs::write(&p, text).expect("write fixture file");
}

fn with_env(cmd: &mut Command, root: &Path) {
    cmd.env("VOXRING_ROOT", root)
        .env("VOXRING_USER", "alice")
        .env("VOXRING_EUID", "1000")
        .env("VOXRING_BIN", repo().join("kernel-tuning/tests/stubs"))
        .env("VOXRING_STUB_LOG", "/dev/null")
        .env_remove("VOXRING_HOME")
        .env_remove("VOXRING_AUDIO_CPU")
        .env_remove("SUDO_USER");
}

fn verdicts(out: &Output, who: &str) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{who} printed invalid JSON ({e}): {text}"));
    let arr = v
        .as_array()
        .unwrap_or_else(|| panic!("{who}: not an array"));
    arr.iter()
        .map(|c| {
            for f in ["id", "status", "found", "fix"] {
                assert!(c[f].is_string(), "{who}: field {f} missing in {c}");
            }
            (
                c["id"].as_str().unwrap_or_default().to_string(),
                c["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Runs both programs on `root`; asserts equal verdicts on shared ids and equal exit status.
fn compare(root: &Path, label: &str) -> BTreeMap<String, String> {
    let mut check = Command::new(repo().join("kernel-tuning/check"));
    check.arg("--json");
    with_env(&mut check, root);
    let check_out = check.output().expect("run kernel-tuning/check");
    let mut doctor = voxring();
    doctor.args(["doctor", "--json", "-", "--no-probes"]);
    with_env(&mut doctor, root);
    let doctor_out = doctor.output().expect("run voxring doctor");
    let a = verdicts(&check_out, "kernel-tuning/check");
    let b = verdicts(&doctor_out, "voxring doctor");
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{label}: the two programs report different ids"
    );
    for (id, status) in &a {
        assert_eq!(
            Some(status),
            b.get(id),
            "{label}: {id}: kernel-tuning/check says {status}, voxring doctor says {:?}",
            b.get(id)
        );
    }
    assert_eq!(
        check_out.status.code(),
        doctor_out.status.code(),
        "{label}: exit status differs"
    );
    b
}

#[test]
fn good_tree_same_verdicts_and_all_ok() {
    let t = TempDir::new("good");
    make_tree("good", &t.0);
    let v = compare(&t.0, "good");
    let not_ok: Vec<_> = v.iter().filter(|(_, s)| *s != "ok").collect();
    assert!(not_ok.is_empty(), "good tree: {not_ok:?}");
}

#[test]
fn bad_tree_same_verdicts_and_fails() {
    let t = TempDir::new("bad");
    make_tree("bad", &t.0);
    let v = compare(&t.0, "bad");
    for id in ["audio-group", "limits-conf", "rtprio", "rt-probe"] {
        assert_eq!(v[id], "fail", "bad tree: {id}");
    }
    for id in [
        "governor",
        "hires-timers",
        "preempt",
        "threadirqs",
        "swappiness",
        "rt-throttling",
        "thp",
        "shm-size",
        "filesystems",
        "irq-sharing",
        "irq-affinity",
        "irq-threads",
        "vm-idle",
        "pipewire-quantum",
    ] {
        assert_eq!(v[id], "warn", "bad tree: {id}");
    }
}

#[test]
fn variations_keep_the_same_verdicts() {
    // Each variation is applied to a fresh good tree.
    type Edit = fn(&Path);
    let variations: [(&str, Edit); 15] = [
        ("no pipewire, no kernel config", |r| {
            let _ = std::fs::remove_dir_all(r.join("usr/share/pipewire"));
            let _ = std::fs::remove_dir_all(r.join("home/alice/.config/pipewire"));
            let _ = std::fs::remove_file(r.join("proc/config.gz"));
        }),
        ("no /dev/shm", |r| {
            write(r, "proc/mounts", "/dev/sda1 / ext4 rw 0 0\n");
        }),
        ("/dev/shm not tmpfs, later line wins", |r| {
            write(
                r,
                "proc/mounts",
                "tmpfs /dev/shm tmpfs rw,size=1g 0 0\n/dev/sdb /dev/shm ext4 rw 0 0\n",
            );
        }),
        ("shm as a percentage", |r| {
            write(r, "proc/mounts", "tmpfs /dev/shm tmpfs rw,size=50% 0 0\n");
        }),
        ("preempt from debugfs and rt from sysfs", |r| {
            write(
                r,
                "sys/kernel/debug/sched/preempt",
                "none (voluntary) full lazy\n",
            );
            write(r, "proc/cmdline", "ro quiet\n");
        }),
        ("PREEMPT_RT via /sys/kernel/realtime", |r| {
            write(r, "sys/kernel/realtime", "1\n");
            write(r, "proc/cmdline", "ro quiet\n");
        }),
        ("user limits beat group limits", |r| {
            write(
                r,
                "etc/security/limits.d/99-alice.conf",
                "alice hard rtprio 10 # too low\n* - rtprio 99\n",
            );
        }),
        ("memlock too low only", |r| {
            write(
                r,
                "etc/security/limits.d/95-voxring-audio.conf",
                "@audio - rtprio 95\n@audio - memlock 65536\n",
            );
        }),
        ("throttling under 95 %", |r| {
            write(r, "proc/sys/kernel/sched_rt_runtime_us", "900000\n");
        }),
        ("one governor not performance", |r| {
            write(
                r,
                "sys/devices/system/cpu/cpu2/cpufreq/scaling_governor",
                "schedutil\n",
            );
        }),
        ("not a VM: normal pipewire values only", |r| {
            write(r, "proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu vme\n");
            write(
                r,
                "home/alice/.config/pipewire/pipewire.conf.d/20-big.conf",
                "context.properties = { default.clock.quantum = 512 }\n",
            );
        }),
        ("vm-idle: a VM whose idle vCPUs halt at once", |r| {
            write(r, "sys/devices/system/cpu/cpuidle/current_driver", "none\n");
        }),
        ("vm-idle: a VM booted with idle=poll", |r| {
            write(r, "sys/devices/system/cpu/cpuidle/current_driver", "none\n");
            write(r, "proc/cmdline", "ro quiet idle=poll\n");
        }),
        (
            "vm-idle: no cpuidle, cpuidle_haltpoll.force=1 not taken",
            |r| {
                let _ = std::fs::remove_dir_all(r.join("sys/devices/system/cpu/cpuidle"));
                write(r, "proc/cmdline", "ro quiet cpuidle_haltpoll.force=1\n");
            },
        ),
        (
            "irq thread at FIFO 80 and an unreadable governor dir",
            |r| {
                let stat = r.join("proc/200/stat");
                let text = std::fs::read_to_string(&stat).expect("stat fixture");
                let (head, rest) = text.split_once(") ").expect("a stat line");
                let mut f: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
                f[37] = "80".into();
                std::fs::write(&stat, format!("{head}) {}\n", f.join(" "))).expect("write stat");
                std::fs::create_dir_all(r.join("sys/devices/system/cpu/cpufreq")).expect("mkdir");
            },
        ),
    ];
    for (label, edit) in variations {
        let t = TempDir::new("var");
        make_tree("good", &t.0);
        edit(&t.0);
        compare(&t.0, label);
    }
}

/// The ids of the checks in a `--json` array.
fn ids(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect()
}

/// The check `id` of a `--json` array.
fn check<'a>(v: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    v.as_array()
        .expect("array")
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("{id} missing"))
}

#[test]
fn root_option_and_probes_report_their_own_ids() {
    let t = TempDir::new("probes");
    make_tree("good", &t.0);
    let json = t.0.join("out.json");
    let mut doctor = voxring();
    doctor
        .args(["doctor", "--probe-seconds", "0.05", "--root"])
        .arg(&t.0)
        .arg("--json")
        .arg(&json);
    with_env(
        &mut doctor,
        Path::new("/nonexistent-root-overridden-by-option"),
    );
    let out = doctor.output().expect("run voxring doctor");
    let text = std::fs::read_to_string(&json).expect("JSON file written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let ids = ids(&v);
    for id in [
        "shm-size",
        "sched-fifo",
        "timer-jitter",
        "futex-wake",
        "futex-wake-idle",
        "pipewire-graph",
    ] {
        assert!(ids.contains(&id), "{id} missing: {ids:?}");
    }
    // The tree's PipeWire config (quantum 128, min-quantum 64) sets the graph a hub runs in; the
    // verdict is this machine's (its measured stalls), the advice follows from it.
    let graph = check(&v, "pipewire-graph");
    let found = graph["found"].as_str().expect("found");
    assert!(
        found.contains("puts PipeWire's graph at 128 frames (2.7 ms at 48000 Hz)")
            && found.contains("needs a graph of at least"),
        "{graph}"
    );
    if graph["status"] == "warn" {
        assert!(
            graph["fix"].as_str().expect("fix").contains("node.latency"),
            "{graph}"
        );
    }
    // --root wins over VOXRING_ROOT: the good tree's shm mount was read.
    let shm = check(&v, "shm-size");
    assert_eq!(shm["status"], "ok", "{shm}");
    // Exit status: 1 exactly when a check failed (the probes read this machine).
    let any_fail = v
        .as_array()
        .expect("array")
        .iter()
        .any(|c| c["status"] == "fail");
    assert_eq!(out.status.code(), Some(if any_fail { 1 } else { 0 }));
    // The text table went to stdout.
    assert!(String::from_utf8_lossy(&out.stdout).contains("sched-fifo"));
}

#[test]
fn bad_probe_duration_is_a_usage_error() {
    let err = usage_error(voxring().args(["doctor", "--probe-seconds", "0"]));
    assert!(err.contains("--probe-seconds"), "{err}");
}

#[test]
fn without_pipewire_there_is_no_graph_to_check() {
    let t = TempDir::new("nopw");
    make_tree("good", &t.0);
    for d in ["usr/share/pipewire", "home/alice/.config/pipewire"] {
        std::fs::remove_dir_all(t.0.join(d)).expect("remove the PipeWire config");
    }
    let mut doctor = voxring();
    doctor.args(["doctor", "--probe-seconds", "0.05", "--json", "-"]);
    with_env(&mut doctor, &t.0);
    let out = doctor.output().expect("run voxring doctor");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let ids = ids(&v);
    assert!(ids.contains(&"timer-jitter"), "{ids:?}");
    assert!(!ids.contains(&"pipewire-graph"), "{ids:?}");
    let pw = check(&v, "pipewire-quantum");
    assert_eq!(pw["found"], "PipeWire not installed", "{pw}");
}
