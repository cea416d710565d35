//! `python-voxring` and `c-voxring`: a Python agent (the `voxring` package, numpy views) and a
//! C program (the C ABI of `platform-linux/ffi`) reading a voxring ring written by this
//! process — the way a Rust capture process feeds agents in other languages.
//!
//! This process creates a named ring (lossless, one frame of F32 samples: the payload) and a
//! producer thread pinned to the producer CPU commits message `i` (markers: first and last
//! sample = `i mod 2^24`, stamped with CLOCK_MONOTONIC at commit) and then waits for space, i.e.
//! for the consumer's release (the acknowledgement). The consumer process, pinned to the other
//! CPU, reads the frame in place, takes the hand-off time, checks the markers and releases.
//! Consumers: `python3 -m voxring._bench` (platform-linux/python/voxring/_bench.py) and
//! `platform-linux/ffi/c/bench_consumer.c`, compiled here with `cc` into a temporary folder.
//! Both need `libvoxring_ffi.so` (built with the workspace: `cargo build --release`), found next
//! to this program or through `$VOXRING_LIB`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use voxring_core::{GrantError, Policy, RingConfig, SampleFormat};
use voxring_linux::ring::Segment;
use voxring_linux::segment::CreateOptions;

use super::measure::{SyscallCounter, now_ns, pin_to, thread_cpu_ns};
use super::{Plan, ProducerReport};

const C_SOURCE: &str = include_str!("../../../platform-linux/ffi/c/bench_consumer.c");
const C_HEADER: &str = include_str!("../../../platform-linux/ffi/include/voxring.h");
const PYTHON_PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../platform-linux/python");
const MARK_MOD: u64 = 1 << 24;

/// Which consumer reads the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer<'a> {
    /// `python3 -m voxring._bench` with this interpreter.
    Python(&'a str),
    /// The C bench consumer.
    C,
}

/// `libvoxring_ffi.so`: `$VOXRING_LIB`, else next to this program, in its `deps/` (where
/// `cargo test` leaves the cdylib), or in its parent folder (for test binaries in `deps/`).
pub fn find_library() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("VOXRING_LIB") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("VOXRING_LIB={} does not exist", p.display());
    }
    let exe = std::env::current_exe().context("finding this program")?;
    let dir = exe.parent().context("this program has no folder")?;
    let deps = dir.join("deps");
    for d in [Some(dir), Some(deps.as_path()), dir.parent()]
        .into_iter()
        .flatten()
    {
        let p = d.join("libvoxring_ffi.so");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "libvoxring_ffi.so is not next to {} (build the bindings with the same profile: \
         `cargo build --release -p voxring-ffi`, or set VOXRING_LIB)",
        exe.display()
    )
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills (by PID) and reaps the consumer if it is still running.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn compile_c(dir: &Path, lib: &Path) -> anyhow::Result<PathBuf> {
    let lib_dir = lib.parent().context("the library has no folder")?;
    std::fs::write(dir.join("voxring.h"), C_HEADER).context("writing voxring.h")?;
    std::fs::write(dir.join("bench_consumer.c"), C_SOURCE).context("writing bench_consumer.c")?;
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
    plan: &Plan,
    payload: usize,
    cpus: (usize, usize),
    tracepoint_id: Option<u64>,
    hist: &mut hdrhistogram::Histogram<u64>,
) -> anyhow::Result<(u64, ProducerReport)> {
    if payload > 1 << 24 {
        bail!("a voxring frame holds at most 16 MiB; {payload} bytes do not fit");
    }
    let lib = find_library()?;
    let tmp =
        TempDir(std::env::temp_dir().join(format!("voxring-bench-ffi-{}", std::process::id())));
    std::fs::create_dir_all(&tmp.0).context("creating a temporary folder")?;
    let name = format!("bench-ffi-{}-{payload}", std::process::id());
    let cfg = RingConfig {
        frames: 1,
        samples_per_frame: (payload / 4) as u32,
        channels: 1,
        format: SampleFormat::F32,
        sample_rate: 48_000,
        max_consumers: 1,
        policy: Policy::Lossless,
    };
    let seg = Segment::create(&name, &cfg, &CreateOptions::default())
        .with_context(|| format!("creating the ring {name}"))?;
    let extra = plan.count_messages;
    let mut cmd = match consumer {
        Consumer::Python(py) => {
            let mut c = Command::new(py);
            c.args(["-m", "voxring._bench", "--ring", &name])
                .arg("--payload")
                .arg(payload.to_string())
                .arg("--warmup")
                .arg(plan.warmup.to_string())
                .arg("--messages")
                .arg(plan.messages.to_string())
                .arg("--extra")
                .arg(extra.to_string())
                .arg("--cpu")
                .arg(cpus.1.to_string())
                .env("PYTHONPATH", PYTHON_PACKAGE)
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env("VOXRING_LIB", &lib);
            c
        }
        Consumer::C => {
            let exe = compile_c(&tmp.0, &lib)?;
            let mut c = Command::new("taskset");
            c.arg("-c")
                .arg(cpus.1.to_string())
                .arg(exe)
                .arg(&name)
                .arg(plan.warmup.to_string())
                .arg(plan.messages.to_string())
                .arg(extra.to_string());
            c
        }
    };
    let mut child = Reaped(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the binding consumer")?,
    );
    let stdout = child.0.stdout.take().context("consumer stdout")?;
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(l) = line else { break };
            if lines_tx.send(l).is_err() {
                break;
            }
        }
    });
    match lines_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) if l == "ready" => {}
        other => bail!("the consumer did not join the ring: {other:?} (its message is above)"),
    }

    let plan_p = plan.clone();
    let seg_p = seg.clone();
    let producer = std::thread::Builder::new()
        .name("bench-ffi-producer".into())
        .spawn(move || -> anyhow::Result<ProducerReport> {
            pin_to(cpus.0)?;
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
        })
        .context("starting the producer thread")?;
    let report = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let deadline = Instant::now() + Duration::from_secs(60 + plan.total() / 1000);
    let status = loop {
        if let Some(s) = child.0.try_wait().context("waiting for the consumer")? {
            break s;
        }
        if Instant::now() > deadline {
            bail!(
                "the consumer (pid {}) did not finish; killing it",
                child.0.id()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = reader.join();
    if !status.success() {
        bail!("the binding consumer exited with {status} (its message is above)");
    }
    let line = lines_rx
        .try_iter()
        .find(|l| l.starts_with('{'))
        .context("the consumer printed no result line")?;
    let parsed: Line = serde_json::from_str(&line).context("parsing the consumer's result")?;
    if parsed.latencies_ns.len() as u64 != plan.messages || parsed.transport != "shm" {
        bail!(
            "the consumer reported {} latencies over {} (expected {} over shm)",
            parsed.latencies_ns.len(),
            parsed.transport,
            plan.messages
        );
    }
    for l in parsed.latencies_ns {
        hist.record(l.max(1) as u64)
            .context("recording a latency")?;
    }
    drop(seg);
    Ok((parsed.consumer_cpu_ns, report))
}
