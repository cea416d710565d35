//! `python-voxring` and `c-voxring`: a Python agent (the `voxring` package, numpy views) and a
//! C program (the C ABI of `platform-linux/ffi`) reading a voxring ring written by this
//! process — the way a Rust capture process feeds agents in other languages.
//!
//! This process creates a named ring (lossless, one frame of F32 samples: the payload) and a
//! producer thread pinned to the producer CPU commits message `i` (markers: first and last
//! sample = `i mod 2^24`, stamped with CLOCK_MONOTONIC at commit) and then waits for space, i.e.
//! for the consumer's release (the acknowledgement). The consumer process, pinned to the other
//! CPU, reads the frame in place, takes the hand-off time, checks the markers and releases.
//! Consumers: `python -m voxring._bench` (platform-linux/python/python/voxring/_bench.py, run
//! by a Python with the native package installed: `$VOXRING_PYTHON`) and
//! `platform-linux/ffi/c/bench_consumer.c`, compiled here with `cc` into a temporary folder,
//! which needs `libvoxring_ffi.so` (built with the workspace: `cargo build --release`), found
//! next to this program or through `$VOXRING_LIB`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use voxring_core::GrantError;
use voxring_linux::ring::Segment;
use voxring_linux::segment::CreateOptions;

use super::measure::{SyscallCounter, now_ns, pin_to, thread_cpu_ns};
use super::peer::{ConsumerProcess, options, record_latencies};
use super::{Measure, Plan, ProducerReport};

/// The C consumer's source and the header it includes, under `platform-linux/ffi`.
const C_SOURCE: &str = "c/bench_consumer.c";
const C_HEADER: &str = "include/voxring.h";
const MARK_MOD: u64 = 1 << 24;

/// Which consumer reads the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer<'a> {
    /// `python3 -m voxring._bench` with this interpreter.
    Python(&'a str),
    /// The C bench consumer.
    C,
}

/// A private folder for the C consumer's build, in `parent` (`$TMPDIR` in the bench), removed
/// on drop.
///
/// Its name is random and it is created with `mkdir(2)`, which fails rather than reuse an
/// existing entry, with mode 0700 (tempfile's default for folders is 0777 minus the umask), so no
/// other user can have prepared it, plant a symlink in it, or swap the compiled program between
/// `cc` and its start. (The folder was once `$TMPDIR/voxring-bench-ffi-<pid>`, reused whoever
/// owned it, with `voxring.h` written through any symlink there.)
fn private_build_dir(parent: &Path) -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix("voxring-bench-ffi-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .with_context(|| {
            format!(
                "creating a private folder in {} to compile the c-voxring consumer \
                 (set TMPDIR to a writable folder)",
                parent.display()
            )
        })
}

/// Writes a new file `name` in `dir` (created, never opened if it exists: no symlink is
/// followed), mode 0600.
fn write_new(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

fn compile_c(dir: &Path, lib: &Path) -> anyhow::Result<PathBuf> {
    let lib_dir = lib.parent().context("the library has no folder")?;
    write_new(dir, "voxring.h", &crate::locate::ffi_source(C_HEADER)?)?;
    write_new(
        dir,
        "bench_consumer.c",
        &crate::locate::ffi_source(C_SOURCE)?,
    )?;
    let out = dir.join("bench_consumer");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-O2",
            "-Wall",
            "-Werror",
        ])
        .arg("-I")
        .arg(dir)
        .arg(dir.join("bench_consumer.c"))
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-lvoxring_ffi")
        .arg("-o")
        .arg(&out)
        .status()
        .context("running cc for c-voxring (apt-get install gcc)")?;
    if !status.success() {
        bail!("compiling the c-voxring consumer failed (cc's message is above)");
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct Line {
    latencies_ns: Vec<i64>,
    consumer_cpu_ns: u64,
    transport: String,
}

/// Runs one measurement; fills `hist`, returns the consumer's CPU time and the producer's
/// report.
pub fn run(
    consumer: Consumer<'_>,
    m: &Measure<'_>,
    hist: &mut hdrhistogram::Histogram<u64>,
) -> anyhow::Result<(u64, ProducerReport)> {
    let (plan, payload) = (m.plan, m.payload);
    if payload > 1 << 24 {
        bail!("a voxring frame holds at most 16 MiB; {payload} bytes do not fit");
    }
    // Only the C consumer needs a folder; it lives until this function returns.
    let tmp = match consumer {
        Consumer::C => Some(private_build_dir(&std::env::temp_dir())?),
        Consumer::Python(_) => None,
    };
    let name = format!("bench-ffi-{}-{payload}", std::process::id());
    let cfg = super::voxring::config(payload)?;
    let seg = Segment::create(&name, &cfg, &CreateOptions::default())
        .with_context(|| format!("creating the ring {name}"))?;
    let extra = plan.count_messages;
    let mut cmd = match consumer {
        // The interpreter has the native package installed (see bench_ipc::python).
        Consumer::Python(py) => {
            let mut c = Command::new(py);
            c.args(["-m", "voxring._bench", "--ring", &name])
                .args(options(&[
                    ("--payload", payload as u64),
                    ("--warmup", plan.warmup),
                    ("--messages", plan.messages),
                    ("--extra", extra),
                    ("--cpu", m.cpus.1 as u64),
                ]))
                .env("PYTHONDONTWRITEBYTECODE", "1");
            c
        }
        Consumer::C => {
            let dir = tmp.as_ref().context("the C consumer's build folder")?;
            let exe = compile_c(dir.path(), &crate::locate::library()?)?;
            let mut c = Command::new("taskset");
            c.arg("-c")
                .arg(m.cpus.1.to_string())
                .arg(exe)
                .arg(&name)
                .arg(plan.warmup.to_string())
                .arg(plan.messages.to_string())
                .arg(extra.to_string());
            c
        }
    };
    let child = ConsumerProcess::spawn(&mut cmd, "the binding consumer")?;
    match child.next_line(Duration::from_secs(30)) {
        Ok(l) if l == "ready" => {}
        other => bail!("the consumer did not join the ring: {other:?} (its message is above)"),
    }

    let plan_p = plan.clone();
    let (cpu, tracepoint_id) = (m.cpus.0, m.tracepoint_id);
    let seg_p = seg.clone();
    let producer = std::thread::Builder::new()
        .name("bench-ffi-producer".into())
        .spawn(move || produce(&seg_p, &plan_p, cpu, tracepoint_id))
        .context("starting the producer thread")?;
    let report = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let parsed: Line = child.result(plan.peer_deadline())?;
    if parsed.transport != "shm" {
        bail!(
            "the binding consumer read over {} (expected shm)",
            parsed.transport
        );
    }
    record_latencies(hist, &parsed.latencies_ns, plan, "the binding consumer")?;
    drop(seg);
    Ok((parsed.consumer_cpu_ns, report))
}

/// The producer thread: commits message `i` (markers and a CLOCK_MONOTONIC stamp) and waits for
/// the consumer's release before the next, counting syscalls over the extra messages.
fn produce(
    seg_p: &Segment,
    plan_p: &Plan,
    cpu: usize,
    tracepoint_id: Option<u64>,
) -> anyhow::Result<ProducerReport> {
    pin_to(cpu)?;
    let mut counter = tracepoint_id.and_then(|id| SyscallCounter::open(id).ok());
    let mut tx = seg_p.producer().context("claiming the producer side")?;
    let waiter = *tx.waiter();
    let (mut cpu0, mut cpu_ns, mut counted) = (0, 0, 0u64);
    let mut i = 0u64;
    let deadline_after = Duration::from_secs(10);
    let mut since = Instant::now();
    while i < plan_p.total() {
        if i == plan_p.warmup {
            cpu0 = thread_cpu_ns();
        }
        let full = match tx.producer().write_grant(1) {
            Ok(mut g) => {
                let mut f = g.frame_mut(0).context("a granted frame")?;
                let s = f.samples_mut::<f32>().context("F32 ring")?;
                let mark = (i % MARK_MOD) as f32;
                s[0] = mark;
                if let Some(last) = s.last_mut() {
                    *last = mark;
                }
                f.set_timestamp_ns(now_ns());
                let counting = i >= plan_p.warmup + plan_p.messages;
                let before = match (&mut counter, counting) {
                    (Some(c), true) => Some(c.read()?),
                    _ => None,
                };
                g.commit_all().wake(&waiter);
                if let (Some(c), Some(b)) = (&mut counter, before) {
                    let after = c.read()?;
                    counted += c.between(b, after);
                }
                if i + 1 == plan_p.warmup + plan_p.messages {
                    cpu_ns = thread_cpu_ns() - cpu0;
                }
                i += 1;
                since = Instant::now();
                false
            }
            Err(GrantError::Full) => true,
            Err(e) => bail!("write grant: {e}"),
        };
        if full {
            if since.elapsed() > deadline_after {
                bail!("the consumer stopped releasing frames (no progress for 10 s)");
            }
            tx.wait_for_space(Some(Duration::from_millis(100)))
                .context("waiting for the consumer's release")?;
        }
    }
    let n = plan_p.count_messages.max(1) as f64;
    Ok(ProducerReport {
        cpu_ns,
        syscalls_per_msg: counter.as_ref().map(|_| counted as f64 / n),
        method: if counter.is_some() {
            "perf:raw_syscalls:sys_enter".into()
        } else {
            "unavailable".into()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;

    /// `nobody` on Debian and Ubuntu: the other local user of the attacks below.
    const NOBODY: u32 = 65534;

    /// A `/tmp`-like parent (world-writable, sticky) in a private temporary folder.
    fn shared_tmp() -> (tempfile::TempDir, PathBuf) {
        let outer = tempfile::tempdir().expect("a temporary folder");
        let tmp = outer.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir tmp");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        (outer, tmp)
    }

    /// Runs `sh -c script` as `nobody` (or as this user when not root) with `$1`.. = `args`;
    /// returns whether it succeeded.
    fn as_other_user(script: &str, args: &[&Path]) -> bool {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script).arg("attacker").args(args);
        if rustix::process::geteuid().is_root() {
            c.uid(NOBODY).gid(NOBODY);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run sh")
            .success()
    }

    #[test]
    fn a_planted_build_folder_with_a_symlink_is_never_used() {
        let (outer, tmp) = shared_tmp();
        let victim = outer.path().join("victim");
        std::fs::write(&victim, "precious\n").expect("write the victim");
        // The attacker prepares the folder the bench used to take ($TMPDIR/voxring-bench-ffi-
        // <pid>) for this process and its neighbours, each with `voxring.h` and
        // `bench_consumer.c` pointing at the victim.
        let pid = std::process::id();
        let planted = as_other_user(
            "tmp=$1; victim=$2; shift 2; for p in \"$@\"; do \
               d=$tmp/voxring-bench-ffi-$p; mkdir -m 777 \"$d\" && \
               ln -s \"$victim\" \"$d/voxring.h\" && ln -s \"$victim\" \"$d/bench_consumer.c\" \
               || exit 1; done",
            &[
                &tmp,
                &victim,
                Path::new(&pid.to_string()),
                Path::new(&(pid + 1).to_string()),
            ],
        );
        assert!(planted, "the attacker could not plant its folders");

        let dir = private_build_dir(&tmp).expect("a private build folder");
        let header = crate::locate::ffi_source(C_HEADER).expect("the header");
        let source = crate::locate::ffi_source(C_SOURCE).expect("the C source");
        write_new(dir.path(), "voxring.h", &header).expect("write voxring.h");
        write_new(dir.path(), "bench_consumer.c", &source).expect("write the C source");

        assert_eq!(
            std::fs::read_to_string(&victim).expect("read the victim"),
            "precious\n",
            "the victim was overwritten through a planted symlink"
        );
        let name = dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        assert!(
            name.starts_with("voxring-bench-ffi-") && name != format!("voxring-bench-ffi-{pid}"),
            "{name}"
        );
        let meta = std::fs::symlink_metadata(dir.path()).expect("stat the build folder");
        assert!(meta.is_dir(), "the build folder is not a folder");
        assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
        assert_eq!(
            meta.mode() & 0o777,
            0o700,
            "the build folder is not private"
        );
        for f in ["voxring.h", "bench_consumer.c"] {
            let m = std::fs::symlink_metadata(dir.path().join(f)).expect("stat");
            assert!(m.is_file(), "{f} is not a plain file");
            assert_eq!(m.mode() & 0o777, 0o600, "{f}");
        }
        // The planted folders are left as they were: nothing was written into them.
        let planted_dir = tmp.join(format!("voxring-bench-ffi-{pid}"));
        let mut left: Vec<String> = std::fs::read_dir(&planted_dir)
            .expect("the planted folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["bench_consumer.c", "voxring.h"]);
    }

    #[test]
    fn an_existing_file_or_symlink_is_not_written_through() {
        let (outer, tmp) = shared_tmp();
        let victim = outer.path().join("victim");
        std::fs::write(&victim, "precious\n").expect("write the victim");
        std::os::unix::fs::symlink(&victim, tmp.join("voxring.h")).expect("plant a symlink");
        let err = write_new(&tmp, "voxring.h", "int x;\n").expect_err("a symlink was followed");
        assert!(format!("{err:#}").contains("voxring.h"), "{err:#}");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "precious\n"
        );
    }

    #[test]
    fn another_user_cannot_swap_the_compiled_consumer() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to act as another user (nobody)");
            return;
        }
        let (_outer, tmp) = shared_tmp();
        let dir = private_build_dir(&tmp).expect("a private build folder");
        let exe = dir.path().join("bench_consumer");
        write_new(dir.path(), "bench_consumer", "#!/bin/sh\necho genuine\n").expect("write");
        // Between `cc` and the consumer's start, the attacker tries to replace the program,
        // add a file beside it, or rename it away.
        for attack in [
            "printf '#!/bin/sh\\necho evil\\n' > \"$1/bench_consumer\"",
            "rm -f \"$1/bench_consumer\" && printf evil > \"$1/bench_consumer\"",
            "printf evil > \"$1/evil\" && mv -f \"$1/evil\" \"$1/bench_consumer\"",
            "mv \"$1/bench_consumer\" \"$1/../gone\"",
            "ls \"$1\"",
        ] {
            assert!(
                !as_other_user(attack, &[dir.path()]),
                "nobody succeeded in: {attack}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(&exe).expect("the consumer is still there"),
            "#!/bin/sh\necho genuine\n"
        );
    }
}
