//! The producer process of `voxring bench ipc`: how the parent starts it (`--peer`, hidden), hands
//! it descriptors by inheritance, collects its report and stops it; and its `main`.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::measure::{SyscallCounter, pin_to};
use super::{
    Args, Measure, PEER_TIMEOUT_NS, Plan, ProducerReport, Transport, Tx, http, produce, shm,
    stream, voxring,
};

/// How the producer process reaches the consumer: descriptors it inherits, a 127.0.0.1 port,
/// a directory (iceoryx2's).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PeerLink<'a> {
    pub fds: &'a [BorrowedFd<'a>],
    pub port: Option<u16>,
    pub dir: Option<&'a std::path::Path>,
}

/// `--name value` pairs of a child's command line, in order.
pub(super) fn options(pairs: &[(&str, u64)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(name, value)| [(*name).to_owned(), value.to_string()])
        .collect()
}

pub(super) fn spawn_peer(
    t: Transport,
    m: &Measure<'_>,
    link: PeerLink<'_>,
) -> anyhow::Result<Child> {
    let PeerLink { fds, port, dir } = link;
    let exe = std::env::current_exe().context("finding this program to start the producer")?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "ipc", "--peer", t.name()])
        .args(options(&[
            ("--peer-payload", m.payload as u64),
            ("--peer-cpu", m.cpus.0 as u64),
            ("--messages", m.plan.messages),
            ("--warmup", m.plan.warmup),
            ("--count-messages", m.plan.count_messages),
        ]));
    if !fds.is_empty() {
        let list = fds
            .iter()
            .map(|&fd| Ok(voxring_linux::process::inherit_fd(&mut cmd, fd)?.to_string()))
            .collect::<anyhow::Result<Vec<String>>>()
            .context("handing a descriptor to the producer process")?;
        cmd.arg("--peer-fds").arg(list.join(","));
    }
    if let Some(p) = port {
        cmd.arg("--peer-port").arg(p.to_string());
    }
    if let Some(pace) = m.plan.pace_ns {
        cmd.arg("--pace-us").arg((pace / 1000).to_string());
    }
    if let Some(d) = dir {
        cmd.arg("--peer-dir").arg(d);
    }
    if let Some(id) = m.tracepoint_id {
        cmd.arg("--tracepoint-id").arg(id.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the producer process")
}

/// Kills (by PID) and reaps a child that is still running.
pub(super) fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Waits for `child` (named `who` in errors) to exit; past `deadline` stops it (by its PID:
/// `Child::kill` sends SIGKILL to it) and fails.
pub(super) fn wait_child(
    child: &mut Child,
    who: &str,
    deadline: Instant,
) -> anyhow::Result<std::process::ExitStatus> {
    loop {
        if let Some(s) = child
            .try_wait()
            .with_context(|| format!("waiting for {who}"))?
        {
            return Ok(s);
        }
        if Instant::now() > deadline {
            stop_child(child);
            bail!(
                "{who} (pid {}) did not finish in time; killed it",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A consumer process started by the parent (a binding's or python's), its stdout read line by
/// line in a thread as it comes (so a big JSON line never blocks it while the parent watches
/// the clock). Killed (by PID) and reaped when dropped, if it is still running.
pub(super) struct ConsumerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    who: &'static str,
}

impl ConsumerProcess {
    /// Starts `cmd` (stdin closed, stderr passed through) as `who`, named so in errors.
    pub(super) fn spawn(cmd: &mut Command, who: &'static str) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {who}"))?;
        let stdout = child.stdout.take().context("the consumer's stdout")?;
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(l) = line else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(ConsumerProcess {
            child,
            lines,
            reader: Some(reader),
            who,
        })
    }

    /// The next line it prints, waiting at most `timeout`.
    pub(super) fn next_line(&self, timeout: Duration) -> Result<String, mpsc::RecvTimeoutError> {
        self.lines.recv_timeout(timeout)
    }

    /// Waits for it to exit (stopping it past `deadline`) and parses its result line (the first
    /// JSON object it printed); a failed exit says so (its own message is on stderr).
    pub(super) fn result<T: serde::de::DeserializeOwned>(
        mut self,
        deadline: Instant,
    ) -> anyhow::Result<T> {
        let who = self.who;
        let status = wait_child(&mut self.child, who, deadline)?;
        if let Some(r) = self.reader.take() {
            r.join()
                .map_err(|_| anyhow::anyhow!("the reader of {who}'s output panicked"))?;
        }
        if !status.success() {
            bail!("{who} exited with {status} (its message is above)");
        }
        let line = self
            .lines
            .try_iter()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("{who} printed no result line"))?;
        serde_json::from_str(&line).with_context(|| format!("parsing {who}'s result"))
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Records the latencies (ns) a consumer reported, `who` in errors; it must have reported one
/// per measured message (a clock that did not advance counts as 1 ns).
pub(super) fn record_latencies(
    hist: &mut hdrhistogram::Histogram<u64>,
    latencies_ns: &[i64],
    plan: &Plan,
    who: &str,
) -> anyhow::Result<()> {
    if latencies_ns.len() as u64 != plan.messages {
        bail!(
            "{who} reported {} latencies, expected {}",
            latencies_ns.len(),
            plan.messages
        );
    }
    for &l in latencies_ns {
        hist.record(l.max(1) as u64)
            .context("recording a latency")?;
    }
    Ok(())
}

/// Waits for the producer's exit and parses its report.
pub(super) fn finish_child(child: &mut Child) -> anyhow::Result<ProducerReport> {
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("producer stdout")?
        .read_to_string(&mut out)
        .context("reading the producer's report")?;
    let status = wait_child(
        child,
        "the producer",
        Instant::now() + Duration::from_secs(10),
    )?;
    if !status.success() {
        bail!("the producer exited with {status} (its message is above)");
    }
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("the producer printed no report")?;
    serde_json::from_str(line).context("parsing the producer's report")
}

/// How the voxring transport `t` waits; `pace_ns` is the producer's period (`--pace-us`).
pub(super) fn vox_mode(t: Transport, pace_ns: Option<u64>) -> voxring::Mode {
    match (t, pace_ns) {
        (Transport::ShmWait, _) => voxring::Mode::Wait,
        (Transport::ShmPark, _) => voxring::Mode::Park,
        (Transport::ShmPeriodic, Some(period_ns)) => voxring::Mode::Periodic { period_ns },
        // Without a pace (refused earlier), the periodic consumer's waits are shm-wait's.
        (Transport::ShmPeriodic, None) => voxring::Mode::Wait,
        _ => voxring::Mode::Spin,
    }
}

/// Takes ownership of descriptor `i` of those the parent passed on the command line.
fn inherited_fd(fds: &[i32], i: usize) -> anyhow::Result<OwnedFd> {
    let fd = *fds
        .get(i)
        .with_context(|| format!("--peer-fds needs at least {} descriptors", i + 1))?;
    voxring_linux::process::take_inherited_fd(fd).context("--peer-fds")
}

/// The producer process: `voxring bench ipc --peer <transport> ...`.
pub(super) fn peer_main(t: Transport, args: &Args) -> anyhow::Result<()> {
    let payload = args
        .peer
        .peer_payload
        .context("--peer needs --peer-payload")?;
    let plan = Plan {
        warmup: args.warmup.unwrap_or(0),
        messages: args.messages.context("--peer needs --messages")?,
        count_messages: args.peer.count_messages.unwrap_or(0),
        pace_ns: args.pace_us.map(|us| us * 1000),
    };
    if let Some(cpu) = args.peer.peer_cpu {
        pin_to(cpu)?;
    }
    let port = |what: &str| {
        args.peer
            .peer_port
            .with_context(|| format!("--peer {what} needs --peer-port"))
    };
    let mut tx: Box<dyn Tx> = match t {
        Transport::Cacheline => {
            let fd = inherited_fd(&args.peer.peer_fds, 0)?;
            let shared = shm::Shared::attach(fd, shm::mapping_len())?;
            Box::new(shm::CachelineTx { shared })
        }
        Transport::ShmSpin | Transport::ShmWait | Transport::ShmPark | Transport::ShmPeriodic => {
            let socket =
                std::os::unix::net::UnixStream::from(inherited_fd(&args.peer.peer_fds, 0)?);
            let mode = vox_mode(t, plan.pace_ns);
            Box::new(voxring::VoxTx::receive(&socket, payload, mode)?)
        }
        #[cfg(feature = "iceoryx2")]
        Transport::Iceoryx2 => {
            let dir = args.peer.peer_dir.as_deref();
            Box::new(super::iox::IoxTx::open(
                dir.context("--peer iceoryx2 needs --peer-dir")?,
                payload,
            )?)
        }
        Transport::Uds => {
            let s = std::os::unix::net::UnixStream::from(inherited_fd(&args.peer.peer_fds, 0)?);
            s.set_read_timeout(Some(Duration::from_nanos(PEER_TIMEOUT_NS)))?;
            let s2 = s.try_clone()?;
            Box::new(stream::StreamTx::from(stream::Conn::new(s2, s, payload)))
        }
        Transport::Pipe => {
            let w = std::fs::File::from(inherited_fd(&args.peer.peer_fds, 0)?);
            let r = std::fs::File::from(inherited_fd(&args.peer.peer_fds, 1)?);
            Box::new(stream::StreamTx::from(stream::Conn::new(r, w, payload)))
        }
        Transport::Tcp => {
            let port = port("tcp")?;
            let s = std::net::TcpStream::connect(("127.0.0.1", port))
                .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_nanos(PEER_TIMEOUT_NS)))?;
            let s2 = s.try_clone()?;
            Box::new(stream::StreamTx::from(stream::Conn::new(s2, s, payload)))
        }
        Transport::Http => {
            let port = port("http")?;
            Box::new(http::HttpTx::new(port, payload))
        }
        #[cfg(not(feature = "iceoryx2"))]
        Transport::Iceoryx2 => bail!("this build has no iceoryx2 transport"),
        Transport::Rtrb
        | Transport::PythonMparray
        | Transport::PythonVoxring
        | Transport::CVoxring => {
            bail!("{} has no producer process", t.name())
        }
    };
    let mut counter = match args.peer.tracepoint_id {
        Some(id) => Some(SyscallCounter::open(id)?),
        None => None,
    };
    let report = produce(tx.as_mut(), &plan, counter.as_mut())?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
