//! A C agent (`tests/c/hub_speech.c`, compiled with `cc` against the committed header and the
//! cdylib) follows a live `voxring serve`'s speech register through `vr_control_attach_hub` and
//! `vr_control_wait`, while this test, as a Rust agent, publishes speech on/off through the
//! public hub API (`Hub::set_speech`, `Hub::set_value`). Every value the C side prints must be
//! exactly what Rust wrote; a lost wake-up makes its wait time out (a 60 s give-up bound) and
//! fails the test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use voxring_linux::hub::directory::Speech;
use voxring_linux::hub::{Hub, HubOptions};

const GIVE_UP: Duration = Duration::from_secs(60);

/// A child process with its stdout as lines; stopped by PID (SIGTERM, then SIGKILL) and
/// reaped when dropped.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn start(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line starting with `prefix` (earlier lines are kept in `seen`).
    fn line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + GIVE_UP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line starting with {prefix:?} from pid {} (got {:?}; exit {:?})",
                    self.child.id(),
                    self.seen,
                    self.child.try_wait()
                ),
            }
        }
    }

    fn signal(&self, sig: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + GIVE_UP;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "pid {} never ended",
                self.child.id()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SIGTERM first: the hub removes its segments on it.
            self.signal(rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

/// `target/<profile>`: where `cargo build --workspace` leaves the `voxring` binary and the
/// cdylib (the peer binary of this crate is there too).
fn profile_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_voxring-ffi-peer"))
        .parent()
        .expect("the peer binary has a directory")
        .to_path_buf()
}

fn voxring_bin() -> PathBuf {
    let bin = profile_dir().join("voxring");
    assert!(
        bin.is_file(),
        "{} is not built: this test runs a live hub; run `cargo build --workspace` first \
         (scripts/test does)",
        bin.display()
    );
    bin
}

fn lib_dir() -> PathBuf {
    let dir = profile_dir();
    [dir.clone(), dir.join("deps")]
        .into_iter()
        .find(|d| d.join("libvoxring_ffi.so").exists())
        .unwrap_or_else(|| {
            panic!(
                "libvoxring_ffi.so is in neither {0} nor {0}/deps: run `cargo build -p \
                 voxring-ffi`",
                dir.display()
            )
        })
}

fn build_c(dir: &Path) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    let out = dir.join("hub_speech");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("tests/c/hub_speech.c"))
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lvoxring_ffi")
        .arg("-o")
        .arg(&out)
        .status()
        .expect("cc runs (install a C compiler: apt-get install gcc)");
    assert!(status.success(), "compiling tests/c/hub_speech.c failed");
    out
}

#[test]
fn a_c_agent_waits_on_a_live_hubs_speech_register_written_by_a_rust_agent() {
    let dir = tempfile::Builder::new()
        .prefix("voxring-ctl-hub-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .expect("a private temp dir");
    let c_agent = build_c(dir.path());
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
    assert_eq!(c.exit_code(), Some(0), "lines: {:?}", c.seen);
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
