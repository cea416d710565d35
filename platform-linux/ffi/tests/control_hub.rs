//! A C agent (`tests/c/hub_speech.c`, compiled with `cc` against the committed header and the
//! cdylib) follows a live `voxring serve`'s speech register through `vr_control_attach_hub` and
//! `vr_control_wait`, while this test, as a Rust agent, publishes speech on/off through the
//! public hub API (`Hub::set_speech`, `Hub::set_value`). Every value the C side prints must be
//! exactly what Rust wrote; a lost wake-up makes its wait time out (a 60 s give-up bound) and
//! fails the test.

use std::process::Command;

use voxring_linux::hub::directory::Speech;
use voxring_linux::hub::{Hub, HubOptions};

mod common;
use common::{Proc, build_c, profile_dir};

fn voxring_bin() -> std::path::PathBuf {
    let bin = profile_dir().join("voxring");
    assert!(
        bin.is_file(),
        "{} is not built: this test runs a live hub; run `cargo build --workspace` first \
         (scripts/test does)",
        bin.display()
    );
    bin
}

#[test]
fn a_c_agent_waits_on_a_live_hubs_speech_register_written_by_a_rust_agent() {
    let dir = tempfile::Builder::new()
        .prefix("voxring-ctl-hub-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .expect("a private temp dir");
    let c_agent = build_c(dir.path(), "tests/c/hub_speech.c", "hub_speech", &[]);
    let name = format!("ctl{}", std::process::id());
    let mut hub = Proc::start(Command::new(voxring_bin()).args([
        "serve",
        "--name",
        &name,
        "--device",
        "synthetic",
        "--rt-priority",
        "0",
    ]));
    hub.line("voxring serve: hub");
    let rust_agent = Hub::find(&name, &HubOptions::default()).expect("the hub runs");
    rust_agent.set_value(5, [11, 22, 33, 44]).unwrap();

    let mut c = Proc::start(Command::new(&c_agent).args([name.as_str(), "3"]));
    let ready = c.line("ready ");
    let mut seen: u64 = ready["ready ".len()..].parse().expect("a version");
    for segment in 1..=3u64 {
        let s = Speech {
            active: segment % 2,
            since_sample: 4800 * segment,
            segments: segment,
            level_mb: (-2000i64) as u64,
        };
        rust_agent.set_speech(s).expect("one writer");
        // The C agent wakes, reads and prints exactly what was written (lockstep: the next
        // write waits for this line, so no version is skipped).
        let line = c.line("speech ");
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|w| w.parse().expect("numbers"))
            .collect();
        assert_eq!(f.len(), 4, "{line}");
        assert!(f[0] > seen, "the version moved past {seen}: {line}");
        seen = f[0];
        assert_eq!(
            (f[1], f[2], f[3]),
            (s.active, s.since_sample, s.segments),
            "{line}"
        );
    }
    assert_eq!(c.line("value5 "), "value5 11 22 33 44");
    assert_eq!(c.exit_code(), Some(0), "lines: {:?}", c.seen());
    assert_eq!(rust_agent.speech().unwrap().segments, 3);
    drop(rust_agent);
    drop(hub);
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .expect("/dev/shm")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&format!("voxring.{name}.")))
        .collect();
    assert!(left.is_empty(), "the hub left {left:?}");
}
