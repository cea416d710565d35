//! `voxring bench ipc`: one-way latency of IPC transports side by side, in one run, with the
//! same payloads and the same pinning (producer on one CPU, consumer on another).
//!
//! Each measurement is a ping-pong: the producer writes a CLOCK_MONOTONIC stamp when it commits
//! (sends) a message, the consumer reads the clock when it acquires (has received) the whole
//! message and records the difference in an hdrhistogram, then acknowledges through the same
//! transport; the producer waits for the acknowledgement before the next message, so no message
//! ever queues behind another. Process transports re-exec this binary as the producer
//! (`--peer`, hidden) and hand it descriptors by inheritance (memfd, socket pair, pipes) or a
//! 127.0.0.1 port; the parent is the consumer.
//!
//! What each figure means is written in `docs/ipc-benchmarks.md`.

use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

mod bindings;
mod http;
mod inproc;
#[cfg(feature = "iceoryx2")]
mod iox;
mod measure;
mod peer;
mod plot;
mod python;
mod shm;
mod stream;
mod voxring;
mod wire;

use measure::{SyscallCounter, now_ns, pin_to, process_cpu_ns};
use peer::{PeerLink, finish_child, peer_main, spawn_peer, stop_child, vox_mode};

/// How long a side waits for its peer before it decides the peer is gone.
pub(crate) const PEER_TIMEOUT_NS: u64 = 10_000_000_000;

/// The transports, in the order they are run and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Transport {
    /// One cache line ping-pong between two processes: the physical floor.
    Cacheline,
    /// A voxring ring in a segment between two processes, both sides busy-polling.
    ShmSpin,
    /// The same ring through voxring-linux's blocking waits (default waiter: spin 50 µs, park).
    ShmWait,
    /// The same ring, both sides parking on a futex at once (woken only when parked).
    ShmPark,
    /// The same ring, the consumer in the wake-free periodic wait (`WaitMode::Periodic`: its own
    /// timer, a poll window, the futex park only when late); with `--pace-us` (run only when
    /// named in --transports).
    ShmPeriodic,
    /// iceoryx2 publish-subscribe (zero-copy, both sides polling); needs the `iceoryx2` cargo
    /// feature (run by default only in a build with it).
    Iceoryx2,
    /// A Unix stream socket pair.
    Uds,
    /// TCP over 127.0.0.1 with TCP_NODELAY.
    Tcp,
    /// Two anonymous pipes.
    Pipe,
    /// HTTP/1.1 POST on 127.0.0.1 (ureq client, tiny_http server, kept-alive connection).
    Http,
    /// rtrb between two threads of one process.
    Rtrb,
    /// A multiprocessing shared Array read through np.frombuffer (needs python3 with numpy).
    PythonMparray,
    /// voxring's Python package (numpy views in place) reading a ring this process writes
    /// (needs a Python with the package installed, $VOXRING_PYTHON; run only when named).
    PythonVoxring,
    /// A C program on voxring's C ABI reading a ring this process writes (needs cc and
    /// libvoxring_ffi.so; run only when named in --transports).
    CVoxring,
}

impl Transport {
    const ALL: [Transport; 10] = [
        Transport::Cacheline,
        Transport::ShmSpin,
        Transport::ShmWait,
        Transport::ShmPark,
        Transport::Uds,
        Transport::Tcp,
        Transport::Pipe,
        Transport::Http,
        Transport::Rtrb,
        Transport::PythonMparray,
    ];

    fn name(self) -> &'static str {
        match self {
            Transport::Cacheline => "cacheline",
            Transport::ShmSpin => "shm-spin",
            Transport::ShmWait => "shm-wait",
            Transport::ShmPark => "shm-park",
            Transport::ShmPeriodic => "shm-periodic",
            Transport::Iceoryx2 => "iceoryx2",
            Transport::Uds => "uds",
            Transport::Tcp => "tcp",
            Transport::Pipe => "pipe",
            Transport::Http => "http",
            Transport::Rtrb => "rtrb",
            Transport::PythonMparray => "python-mparray",
            Transport::PythonVoxring => "python-voxring",
            Transport::CVoxring => "c-voxring",
        }
    }
}

/// Options of this command.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example: voxring bench ipc --quick --json ipc.json --plot ipc.svg")]
pub struct Args {
    /// Transports to run (comma-separated); default: all (python-mparray only when python3
    /// with numpy is found: $VOXRING_PYTHON, python3, /usr/bin/python3).
    #[arg(long, value_delimiter = ',', value_enum)]
    transports: Vec<Transport>,
    /// Payload sizes in bytes (comma-separated, suffixes K and M for KiB/MiB), each 64 B..64 MiB
    /// and a multiple of 8. Default: 64,512,1K,2K,4K,8K,16K,64K,1M (512 B..16 KiB are audio
    /// frames of 64..2048 stereo f32 samples); with --quick: 64,2K,16K,1M.
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    payloads: Vec<usize>,
    /// Measured messages per transport and payload (payloads of 256 KiB and more use a tenth,
    /// at least 100). Default 20000, with --quick 1000.
    #[arg(long)]
    messages: Option<u64>,
    /// Unrecorded warm-up messages before the measured ones. Default: a tenth of --messages.
    #[arg(long)]
    warmup: Option<u64>,
    /// A run short enough for a test: the whole run finishes within 30 s on 2 cores.
    #[arg(long)]
    quick: bool,
    /// Producer and consumer CPUs, e.g. `0,1` (default: 0,1 when there are two CPUs).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    cpus: Vec<usize>,
    /// Pace the producer: one message every N µs on an absolute CLOCK_MONOTONIC schedule (e.g.
    /// 2667 for 48 kHz / 128), as an audio device's cycle would; the consumer then waits
    /// between messages. Default: none (the next message follows the acknowledgement).
    #[arg(long, value_name = "N")]
    pace_us: Option<u64>,
    /// Write the results as JSON to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the comparison (median and p99 per payload, log scale) as an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,

    /// The producer process this command starts (hidden options, not for people).
    #[command(flatten)]
    peer: Box<PeerArgs>,
}

/// Options of the producer process `voxring bench ipc` starts (hidden).
#[derive(Debug, clap::Args)]
struct PeerArgs {
    #[arg(long, hide = true, value_enum)]
    peer: Option<Transport>,
    #[arg(long, hide = true)]
    peer_payload: Option<usize>,
    #[arg(long, hide = true)]
    peer_cpu: Option<usize>,
    #[arg(long, hide = true, value_delimiter = ',')]
    peer_fds: Vec<i32>,
    #[arg(long, hide = true)]
    peer_port: Option<u16>,
    #[arg(long, hide = true)]
    count_messages: Option<u64>,
    #[arg(long, hide = true)]
    tracepoint_id: Option<u64>,
    /// The iceoryx2 transport's directory (its root path and file prefix).
    #[arg(long, hide = true)]
    peer_dir: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix(['K', 'k']) {
        (n, 1024)
    } else if let Some(n) = s.strip_suffix(['M', 'm']) {
        (n, 1024 * 1024)
    } else {
        (s, 1)
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 64, 2K, 1M)"))?;
    let bytes = n * mult;
    if !(64..=64 * 1024 * 1024).contains(&bytes) || !bytes.is_multiple_of(8) {
        return Err(format!(
            "{s} = {bytes} bytes: payloads must be 64 B..64 MiB and a multiple of 8 \
             (the message carries a 16-byte header and an 8-byte trailer)"
        ));
    }
    Ok(bytes)
}

/// One measurement: a transport's run at one payload, as every transport's `run` takes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measure<'a> {
    pub plan: &'a Plan,
    /// Bytes a message.
    pub payload: usize,
    /// The producer's CPU, then the consumer's.
    pub cpus: (usize, usize),
    /// The `raw_syscalls:sys_enter` tracepoint the producer counts syscalls with, if readable.
    pub tracepoint_id: Option<u64>,
}

/// How many messages a run sends: warm-up, measured, then syscall-counting ones.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub warmup: u64,
    pub messages: u64,
    /// Messages after the measured ones whose send path is wrapped in syscall-counter reads
    /// (kept out of the timed messages so the reads do not disturb them).
    pub count_messages: u64,
    /// The producer sends message `i` at its start plus `(i + 1) · pace_ns` (`--pace-us`).
    pub pace_ns: Option<u64>,
}

impl Plan {
    pub fn total(&self) -> u64 {
        self.warmup + self.messages + self.count_messages
    }
    /// When a consumer process must have finished: a minute, and a millisecond per message.
    pub fn peer_deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(60 + self.total() / 1000)
    }
    pub fn is_measured(&self, i: u64) -> bool {
        i >= self.warmup && i < self.warmup + self.messages
    }
}

/// One message as the consumer acquired it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub seq: u64,
    pub stamp_ns: u64,
    pub recv_ns: u64,
}

/// The producer side of a transport.
pub(crate) trait Tx {
    /// Writes message `seq` (its markers) without timing it.
    fn prepare(&mut self, seq: u64) -> anyhow::Result<()>;
    /// Stamps CLOCK_MONOTONIC at commit/send and hands the message over.
    fn send(&mut self, seq: u64) -> anyhow::Result<()>;
    /// Waits for the consumer's acknowledgement of `seq`.
    fn wait_ack(&mut self, seq: u64) -> anyhow::Result<()>;
    /// Syscalls this code issued itself in `send` so far (`None` when a library makes them).
    fn own_syscalls(&self) -> Option<u64>;
}

/// The consumer side of a transport.
pub(crate) trait Rx {
    /// Waits for the next whole message and reads the clock as soon as it has it.
    fn recv(&mut self) -> anyhow::Result<Received>;
    /// Checks the payload, releases the message and acknowledges it.
    fn finish(&mut self, msg: &Received) -> anyhow::Result<()>;
}

/// What the producer reports back (one JSON line on its stdout).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ProducerReport {
    /// CPU time over the measured messages.
    pub cpu_ns: u64,
    pub syscalls_per_msg: Option<f64>,
    /// `perf:raw_syscalls:sys_enter` (kernel counter), `code-path` (our own calls), `unavailable`.
    pub method: String,
}

/// One row of the results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultRow {
    pub transport: String,
    pub payload_bytes: u64,
    pub messages: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
    /// CPU time of producer and consumer over the measured messages, per message.
    pub cpu_ns_per_msg: f64,
    /// Syscalls the producer makes in its send path per message (`null` when not countable).
    pub producer_syscalls_per_msg: Option<f64>,
    pub syscall_count_method: String,
    /// The consumer's CPU time over the measured messages, per message (part of
    /// `cpu_ns_per_msg`).
    pub consumer_cpu_ns_per_msg: f64,
    /// The producer's pace (`--pace-us`), if any.
    pub pace_us: Option<u64>,
    /// `p50_ns` over the `cacheline` median of the same payload's round (`null` without one).
    #[serde(default)]
    pub p50_over_cacheline: Option<f64>,
}

/// The producer loop (child process, or thread).
fn produce(
    tx: &mut dyn Tx,
    plan: &Plan,
    mut counter: Option<&mut SyscallCounter>,
) -> anyhow::Result<ProducerReport> {
    let mut cpu0 = 0;
    let mut cpu_ns = 0;
    let mut counted = 0u64;
    let mut own_before = None;
    let start = now_ns();
    for i in 0..plan.total() {
        if let Some(pace) = plan.pace_ns {
            voxring_linux::futex::sleep_until_ns(start + (i + 1) * pace);
        }
        if i == plan.warmup {
            cpu0 = process_cpu_ns();
        }
        if i == plan.warmup + plan.messages {
            own_before = tx.own_syscalls();
        }
        tx.prepare(i)?;
        if i >= plan.warmup + plan.messages
            && let Some(c) = counter.as_deref_mut()
        {
            let before = c.read()?;
            tx.send(i)?;
            let after = c.read()?;
            counted += c.between(before, after);
        } else {
            tx.send(i)?;
        }
        tx.wait_ack(i)?;
        if i + 1 == plan.warmup + plan.messages {
            cpu_ns = process_cpu_ns() - cpu0;
        }
    }
    let n = plan.count_messages.max(1) as f64;
    let (syscalls_per_msg, method) = if counter.is_some() {
        (Some(counted as f64 / n), "perf:raw_syscalls:sys_enter")
    } else {
        match (own_before, tx.own_syscalls()) {
            (Some(a), Some(b)) => (Some((b - a) as f64 / n), "code-path"),
            _ => (None, "unavailable"),
        }
    };
    Ok(ProducerReport {
        cpu_ns,
        syscalls_per_msg,
        method: method.into(),
    })
}

/// The consumer loop (this process).
fn consume(
    rx: &mut dyn Rx,
    plan: &Plan,
    hist: &mut hdrhistogram::Histogram<u64>,
) -> anyhow::Result<u64> {
    let mut cpu0 = 0;
    let mut cpu_ns = 0;
    for i in 0..plan.total() {
        if i == plan.warmup {
            cpu0 = process_cpu_ns();
        }
        let msg = rx.recv()?;
        if plan.is_measured(i) {
            hist.record(msg.recv_ns.saturating_sub(msg.stamp_ns).max(1))
                .context("recording a latency")?;
        }
        rx.finish(&msg)?;
        if i + 1 == plan.warmup + plan.messages {
            cpu_ns = process_cpu_ns() - cpu0;
        }
    }
    Ok(cpu_ns)
}

/// The transports run when none are named: [`Transport::ALL`], with `shm-periodic` when the
/// producer is paced and `iceoryx2` in a build with that feature.
fn default_transports(paced: bool) -> Vec<Transport> {
    let mut all = Transport::ALL.to_vec();
    let after_park = all
        .iter()
        .position(|t| *t == Transport::ShmPark)
        .map_or(0, |i| i + 1);
    if cfg!(feature = "iceoryx2") {
        all.insert(after_park, Transport::Iceoryx2);
    }
    if paced {
        all.insert(after_park, Transport::ShmPeriodic);
    }
    all
}

/// Entry point of `voxring bench ipc`.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(t) = args.peer.peer {
        return peer_main(t, &args).map(|()| ExitCode::SUCCESS);
    }
    // Before any thread exists (it may unshare the mount namespace).
    let tracepoint = measure::tracepoint_id();

    let quick = args.quick;
    let messages = args.messages.unwrap_or(if quick { 1000 } else { 20_000 });
    if messages == 0 {
        bail!("--messages must be at least 1");
    }
    let payloads = if args.payloads.is_empty() {
        if quick {
            vec![64, 2048, 16384, 1 << 20]
        } else {
            vec![64, 512, 1024, 2048, 4096, 8192, 16384, 65536, 1 << 20]
        }
    } else {
        args.payloads.clone()
    };
    let cpus = match args.cpus.as_slice() {
        [p, c] => (*p, *c),
        _ => measure::default_cpus(),
    };
    let python = python::find_python();
    let mut transports = if args.transports.is_empty() {
        default_transports(args.pace_us.is_some())
    } else {
        args.transports.clone()
    };
    if transports.contains(&Transport::ShmPeriodic) && args.pace_us.is_none() {
        bail!(
            "shm-periodic measures the wake-free wait of a periodic stream: give the producer's \
             period with --pace-us (e.g. --pace-us 2667 for 48 kHz / 128)"
        );
    }
    if args.pace_us == Some(0) {
        bail!("--pace-us must be at least 1 (µs between messages)");
    }
    if python.is_none() {
        if args.transports.contains(&Transport::PythonMparray) {
            bail!(
                "python-mparray needs python3 with numpy: none of $VOXRING_PYTHON, python3, \
                 /usr/bin/python3 imports numpy (apt-get install python3-numpy)"
            );
        }
        if args.transports.contains(&Transport::PythonVoxring) {
            bail!("python-voxring needs python3 with numpy (apt-get install python3-numpy)");
        }
        transports.retain(|t| *t != Transport::PythonMparray);
        eprintln!("python-mparray skipped: no python3 with numpy (apt-get install python3-numpy)");
    }
    let tracepoint_id = match &tracepoint {
        Ok(id) => Some(*id),
        Err(why) => {
            eprintln!(
                "syscalls are counted from voxring's own code paths (http: not countable): {why}"
            );
            None
        }
    };
    pin_to(cpus.1)?;
    eprintln!(
        "producer on CPU {}, consumer on CPU {}; {} transports x {} payloads",
        cpus.0,
        cpus.1,
        transports.len(),
        payloads.len()
    );

    let started = Instant::now();
    let mut rows = Vec::new();
    for (t, payload) in schedule(&transports, &payloads) {
        let n = if payload >= 256 * 1024 {
            (messages / 10).max(100).min(messages)
        } else {
            messages
        };
        let plan = Plan {
            warmup: args.warmup.unwrap_or((n / 10).max(10)),
            messages: n,
            count_messages: n.min(if quick { 100 } else { 1000 }),
            pace_ns: args.pace_us.map(|us| us * 1000),
        };
        let m = Measure {
            plan: &plan,
            payload,
            cpus,
            tracepoint_id,
        };
        let row = run_one(t, &m, python.as_deref())
            .with_context(|| format!("{} at {payload} bytes", t.name()))?;
        eprintln!(
            "  {:<15} {:>8} B  p50 {:>9} ns  p99 {:>9} ns",
            row.transport, row.payload_bytes, row.p50_ns, row.p99_ns
        );
        rows.push((t, row));
    }
    // Shown (and saved) transport by transport, each over the payloads, in the order asked.
    rows.sort_by_key(|(t, r)| {
        let at = |p: u64| payloads.iter().position(|&x| x as u64 == p);
        (transports.iter().position(|x| x == t), at(r.payload_bytes))
    });
    let mut rows: Vec<ResultRow> = rows.into_iter().map(|(_, r)| r).collect();
    ratios_to_floor(&mut rows);
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());

    // With `--json -` stdout carries only the JSON; the table goes to stderr.
    let table = table(&rows);
    if args.json.as_ref().is_some_and(|p| p.as_os_str() == "-") {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "producer_cpu": cpus.0,
            "consumer_cpu": cpus.1,
            "clock": "CLOCK_MONOTONIC, stamped at commit/send, read at acquire/receive",
            "results": rows,
        });
        let text = serde_json::to_string_pretty(&doc)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, plot::svg(&rows))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The order of the measurements: payload by payload, `cacheline` first in each round (it
/// moves one 64-byte line whatever the payload: the floor as it stands in that round), then
/// every other transport in turn. Transports compared at one payload are measured seconds
/// apart, not a whole transport's sweep apart: a VM's vCPUs can move to other physical cores
/// between two sweeps, and the cache-line cost with them (docs/ipc-benchmarks.md, "The floor
/// moves"), so every ratio to the floor is taken against the floor of its own round.
fn schedule(transports: &[Transport], payloads: &[usize]) -> Vec<(Transport, usize)> {
    let floor = transports.contains(&Transport::Cacheline);
    let mut jobs = Vec::new();
    for &p in payloads {
        if floor {
            jobs.push((Transport::Cacheline, p));
        }
        for &t in transports.iter().filter(|t| **t != Transport::Cacheline) {
            jobs.push((t, p));
        }
    }
    jobs
}

/// Sets every row's `p50_over_cacheline`: its median over the `cacheline` median measured in
/// the same payload's round (`None` where `cacheline` did not run).
fn ratios_to_floor(rows: &mut [ResultRow]) {
    let floor = |p: u64, rows: &[ResultRow]| {
        rows.iter()
            .find(|r| r.transport == Transport::Cacheline.name() && r.payload_bytes == p)
            .map(|r| r.p50_ns.max(1))
    };
    for i in 0..rows.len() {
        let f = floor(rows[i].payload_bytes, rows);
        rows[i].p50_over_cacheline = f.map(|f| rows[i].p50_ns as f64 / f as f64);
    }
}

/// Runs one transport at one payload and summarises it.
fn run_one(t: Transport, m: &Measure<'_>, python: Option<&str>) -> anyhow::Result<ResultRow> {
    let Measure { plan, payload, .. } = *m;
    let mut hist = crate::hist::new_hist();
    let (consumer_cpu, report) = match t {
        Transport::Rtrb => inproc::run(m, &mut hist)?,
        Transport::PythonMparray => {
            let py = python.context("no python3 with numpy")?;
            python::run(py, m, &mut hist)?
        }
        Transport::PythonVoxring => {
            let py = python::voxring_python()?;
            bindings::run(bindings::Consumer::Python(&py), m, &mut hist)?
        }
        Transport::CVoxring => bindings::run(bindings::Consumer::C, m, &mut hist)?,
        _ => run_process_pair(t, m, &mut hist)?,
    };
    if hist.len() != plan.messages {
        bail!(
            "recorded {} latencies for {} messages",
            hist.len(),
            plan.messages
        );
    }
    Ok(ResultRow {
        transport: t.name().into(),
        payload_bytes: payload as u64,
        messages: plan.messages,
        p50_ns: hist.value_at_quantile(0.5),
        p99_ns: hist.value_at_quantile(0.99),
        p999_ns: hist.value_at_quantile(0.999),
        max_ns: hist.max(),
        mean_ns: hist.mean(),
        cpu_ns_per_msg: (consumer_cpu + report.cpu_ns) as f64 / plan.messages as f64,
        consumer_cpu_ns_per_msg: consumer_cpu as f64 / plan.messages as f64,
        pace_us: plan.pace_ns.map(|p| p / 1000),
        producer_syscalls_per_msg: report.syscalls_per_msg,
        syscall_count_method: report.method,
        p50_over_cacheline: None,
    })
}

fn run_process_pair(
    t: Transport,
    m: &Measure<'_>,
    hist: &mut hdrhistogram::Histogram<u64>,
) -> anyhow::Result<(u64, ProducerReport)> {
    let Measure { plan, payload, .. } = *m;
    let spawn = |fds: &[BorrowedFd<'_>], port: Option<u16>| {
        let link = PeerLink {
            fds,
            port,
            dir: None,
        };
        spawn_peer(t, m, link)
    };
    // Each arm builds the consumer, starts the producer with its end, and drops the parent's
    // copy of the child's descriptors right after the spawn.
    let (mut rx, mut child): (Box<dyn Rx>, Child) = match t {
        Transport::Cacheline => {
            let (shared, fd) = shm::Shared::create(shm::mapping_len())?;
            let child = spawn(&[fd.as_fd()], None)?;
            drop(fd);
            (Box::new(shm::CachelineRx { shared, next: 0 }), child)
        }
        Transport::ShmSpin | Transport::ShmWait | Transport::ShmPark | Transport::ShmPeriodic => {
            // The consumer joins before the producer exists, so it sees every frame.
            let rx = voxring::VoxRx::create(payload, vox_mode(t, plan.pace_ns))?;
            let (mine, theirs) =
                std::os::unix::net::UnixStream::pair().context("socketpair for the segment")?;
            let theirs = OwnedFd::from(theirs);
            let mut child = spawn(&[theirs.as_fd()], None)?;
            drop(theirs);
            if let Err(e) = rx.send_to(&mine) {
                stop_child(&mut child);
                return Err(e);
            }
            (Box::new(rx), child)
        }
        Transport::Uds => {
            let (mine, theirs) = rustix::net::socketpair(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::STREAM,
                rustix::net::SocketFlags::CLOEXEC,
                None,
            )
            .context("socketpair(AF_UNIX)")?;
            let child = spawn(&[theirs.as_fd()], None)?;
            drop(theirs);
            let s = std::os::unix::net::UnixStream::from(mine);
            s.set_read_timeout(Some(Duration::from_nanos(PEER_TIMEOUT_NS)))?;
            let s2 = s.try_clone()?;
            (
                Box::new(stream::StreamRx::from(stream::Conn::new(s, s2, payload))),
                child,
            )
        }
        Transport::Pipe => {
            let (data_r, data_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .context("pipe for data")?;
            let (ack_r, ack_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .context("pipe for acknowledgements")?;
            let child = spawn(&[data_w.as_fd(), ack_r.as_fd()], None)?;
            drop(data_w);
            drop(ack_r);
            (
                Box::new(stream::StreamRx::from(stream::Conn::new(
                    std::fs::File::from(data_r),
                    std::fs::File::from(ack_w),
                    payload,
                ))),
                child,
            )
        }
        Transport::Tcp => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")
                .context("binding a TCP listener on 127.0.0.1")?;
            let port = listener.local_addr()?.port();
            let mut child = spawn(&[], Some(port))?;
            listener.set_nonblocking(true)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                            stop_child(&mut child);
                            bail!("the producer never connected to 127.0.0.1:{port}");
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => {
                        stop_child(&mut child);
                        return Err(e).context("accepting the producer's TCP connection");
                    }
                }
            };
            s.set_nonblocking(false)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_nanos(PEER_TIMEOUT_NS)))?;
            let s2 = s.try_clone()?;
            (
                Box::new(stream::StreamRx::from(stream::Conn::new(s, s2, payload))),
                child,
            )
        }
        Transport::Http => {
            let (rx, port) = http::HttpRx::bind(payload)?;
            let child = spawn(&[], Some(port))?;
            (Box::new(rx), child)
        }
        Transport::Iceoryx2 => {
            #[cfg(feature = "iceoryx2")]
            {
                // The consumer subscribes before the producer exists, so it sees every message.
                let rx = iox::IoxRx::create(payload)?;
                let link = PeerLink {
                    dir: Some(rx.dir()),
                    ..PeerLink::default()
                };
                let child = spawn_peer(t, m, link)?;
                (Box::new(rx), child)
            }
            #[cfg(not(feature = "iceoryx2"))]
            bail!("{}", iceoryx2_missing())
        }
        Transport::Rtrb
        | Transport::PythonMparray
        | Transport::PythonVoxring
        | Transport::CVoxring => unreachable!("not a process pair"),
    };
    let consumed = consume(rx.as_mut(), plan, hist);
    // After the producer's exit, so that the iceoryx2 transport can remove every file of its
    // run (the producer's too).
    let result = consumed.and_then(|cpu| Ok((cpu, finish_child(&mut child)?)));
    stop_child(&mut child);
    drop(rx);
    result
}

/// Why the iceoryx2 transport cannot run in this build, and what to do.
#[cfg(not(feature = "iceoryx2"))]
fn iceoryx2_missing() -> &'static str {
    "this voxring was built without the iceoryx2 transport (it takes minutes to build, so it \
     is a cargo feature): build with `cargo build --release -p voxring-harness --features \
     iceoryx2` and run that binary"
}

/// The results as a text table, one row per transport and payload.
fn table(rows: &[ResultRow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>9} {:>8} {:>11} {:>11} {:>11} {:>12} {:>12} {:>12} {:>9} {:>8}",
        "transport",
        "payload",
        "messages",
        "p50 ns",
        "p99 ns",
        "p99.9 ns",
        "max ns",
        "cpu ns/msg",
        "rx cpu ns",
        "sys/msg",
        "p50/line"
    );
    for r in rows {
        let sys = r
            .producer_syscalls_per_msg
            .map_or_else(|| "n/a".to_string(), |s| format!("{s:.2}"));
        let floor = r
            .p50_over_cacheline
            .map_or_else(|| "-".to_string(), |x| format!("{x:.2}"));
        let _ = writeln!(
            out,
            "{:<15} {:>9} {:>8} {:>11} {:>11} {:>11} {:>12} {:>12.0} {:>12.0} {:>9} {:>8}",
            r.transport,
            r.payload_bytes,
            r.messages,
            r.p50_ns,
            r.p99_ns,
            r.p999_ns,
            r.max_ns,
            r.cpu_ns_per_msg,
            r.consumer_cpu_ns_per_msg,
            sys,
            floor
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes_and_reject_bad_ones() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("2K"), Ok(2048));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("8").is_err());
        assert!(parse_size("100").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("65M").is_err());
    }

    #[test]
    fn transports_take_turns_payload_by_payload_and_cacheline_opens_each_round() {
        use Transport::{Cacheline, Iceoryx2, ShmSpin};
        assert_eq!(
            schedule(&[ShmSpin, Iceoryx2, Cacheline], &[64, 2048]),
            [
                (Cacheline, 64),
                (ShmSpin, 64),
                (Iceoryx2, 64),
                (Cacheline, 2048),
                (ShmSpin, 2048),
                (Iceoryx2, 2048)
            ]
        );
        assert_eq!(schedule(&[ShmSpin], &[64]), [(ShmSpin, 64)]);
        assert_eq!(schedule(&[ShmSpin], &[]), []);
    }

    #[test]
    fn every_row_is_compared_with_the_floor_of_its_own_round() {
        let row = |t: Transport, payload: u64, p50: u64| ResultRow {
            transport: t.name().into(),
            payload_bytes: payload,
            messages: 1,
            p50_ns: p50,
            p99_ns: p50,
            p999_ns: p50,
            max_ns: p50,
            mean_ns: p50 as f64,
            cpu_ns_per_msg: 1.0,
            producer_syscalls_per_msg: None,
            syscall_count_method: "code-path".into(),
            consumer_cpu_ns_per_msg: 1.0,
            pace_us: None,
            p50_over_cacheline: None,
        };
        use Transport::{Cacheline, ShmSpin};
        let mut rows = vec![
            row(Cacheline, 64, 100),
            row(Cacheline, 2048, 400),
            row(ShmSpin, 64, 150),
            row(ShmSpin, 2048, 500),
            row(ShmSpin, 4096, 700),
        ];
        ratios_to_floor(&mut rows);
        let got: Vec<_> = rows.iter().map(|r| r.p50_over_cacheline).collect();
        assert_eq!(got, [Some(1.0), Some(1.0), Some(1.5), Some(1.25), None]);
    }

    #[test]
    fn plan_measures_only_the_middle() {
        let p = Plan {
            warmup: 2,
            messages: 3,
            count_messages: 4,
            pace_ns: None,
        };
        assert_eq!(p.total(), 9);
        let measured: Vec<u64> = (0..p.total()).filter(|&i| p.is_measured(i)).collect();
        assert_eq!(measured, vec![2, 3, 4]);
    }
}
