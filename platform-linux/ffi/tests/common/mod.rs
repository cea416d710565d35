//! What the C ABI's test files share: the library's last error and the assertions built on
//! it, unique segment names, and, for the tests that compile C against the committed header,
//! where the cdylib is, the compiler call, and a child process read line by line and stopped
//! by PID. Each test file includes this module; not all use all of it.
#![allow(dead_code)]

use std::ffi::{CStr, CString, c_char};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use voxring_ffi::{VR_OK, vr_last_error};

/// Give-up bound for a child's line or exit: never reached unless something is broken.
pub const GIVE_UP: Duration = Duration::from_secs(60);

/// The message of the library's last error on this thread.
pub fn last_error() -> String {
    let mut buf = [0 as c_char; 512];
    // SAFETY: `buf` is valid for its length.
    unsafe { vr_last_error(buf.as_mut_ptr(), buf.len()) };
    // SAFETY: vr_last_error NUL-terminates within the buffer.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts that a call returned `VR_OK`, with the library's last error as the message if not.
#[track_caller]
pub fn ok(code: i32) {
    assert_eq!(code, VR_OK, "{}", last_error());
}

/// Asserts that a call was refused with `code` and that the library's last error says `why`.
#[track_caller]
pub fn refused(got: i32, code: i32, why: &str) {
    let e = last_error();
    assert_eq!(got, code, "{e}");
    assert!(e.contains(why), "the last error does not say {why:?}: {e}");
}

/// A segment name no other test (of this process or another) uses: `<prefix>-<tag>-<pid>-<n>`.
pub fn unique_name(prefix: &str, tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    // Relaxed: only uniqueness matters.
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{tag}-{}-{n}", std::process::id())
}

/// [`unique_name`] as a C string.
pub fn unique_c(prefix: &str, tag: &str) -> CString {
    CString::new(unique_name(prefix, tag)).expect("no NUL")
}

/// `target/<profile>`: where the peer binary of this crate is, and where `cargo build
/// --workspace` leaves the `voxring` binary and the cdylib.
pub fn profile_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_voxring-ffi-peer"))
        .parent()
        .expect("the peer binary has a directory")
        .to_path_buf()
}

/// The directory holding `libvoxring_ffi.so`: the profile directory (after `cargo build`) or
/// its `deps/` (where `cargo test` leaves the cdylib without copying it up).
pub fn lib_dir() -> PathBuf {
    let dir = profile_dir();
    [dir.clone(), dir.join("deps")]
        .into_iter()
        .find(|d| d.join("libvoxring_ffi.so").exists())
        .unwrap_or_else(|| {
            panic!(
                "libvoxring_ffi.so is in neither {0} nor {0}/deps: cargo builds the cdylib with \
                 the crate's tests; run `cargo build -p voxring-ffi`",
                dir.display()
            )
        })
}

/// Compiles `source` (relative to the crate) with `cc` (or `$CC`), strict warnings, against
/// the committed header and the cdylib, into `dir/<out>`; returns the program's path.
pub fn build_c(dir: &Path, source: &str, out: &str, defines: &[&str]) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    let out = dir.join(out);
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1"])
        .args(defines)
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join(source))
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lvoxring_ffi")
        .arg("-o")
        .arg(&out)
        .status()
        .expect("cc runs (install a C compiler: apt-get install gcc)");
    assert!(status.success(), "compiling {source} failed");
    out
}

/// A child process with its stdout as lines; stopped by PID (SIGTERM, then SIGKILL) and
/// reaped when dropped, so a failing test leaves no process behind.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    pub fn start(cmd: &mut Command) -> Proc {
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
    pub fn line(&mut self, prefix: &str) -> String {
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

    /// Waits (up to [`GIVE_UP`]) for the child to end; its exit code.
    pub fn exit_code(&mut self) -> Option<i32> {
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
            // SIGTERM first: a hub removes its segments on it.
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
