//! The producer process of `voxring bench ipc`: how the parent starts it (`--peer`, hidden), hands
//! it descriptors by inheritance, collects its report and stops it; and its `main`.

use std::io::Read;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::measure::{SyscallCounter, pin_to};
use super::{
    Args, PEER_TIMEOUT_NS, Plan, ProducerReport, Transport, Tx, http, produce, shm, stream, voxring,
};

pub(super) fn spawn_peer(
    t: Transport,
    payload: usize,
    plan: &Plan,
    cpus: (usize, usize),
    tracepoint_id: Option<u64>,
    fds: &[BorrowedFd<'_>],
    port: Option<u16>,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("finding this program to start the producer")?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "ipc", "--peer", t.name()])
        .arg("--peer-payload")
        .arg(payload.to_string())
        .arg("--peer-cpu")
        .arg(cpus.0.to_string())
        .arg("--messages")
        .arg(plan.messages.to_string())
        .arg("--warmup")
        .arg(plan.warmup.to_string())
        .arg("--count-messages")
        .arg(plan.count_messages.to_string());
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
    if let Some(id) = tracepoint_id {
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

/// The result line a consumer process printed (the first JSON object among `lines`), parsed,
/// once it has exited with `status` (a failure says so: its own message is on stderr).
pub(super) fn result_line<T: serde::de::DeserializeOwned>(
    status: std::process::ExitStatus,
    mut lines: impl Iterator<Item = String>,
    who: &str,
) -> anyhow::Result<T> {
    if !status.success() {
        bail!("{who} exited with {status} (its message is above)");
    }
    let line = lines
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{who} printed no result line"))?;
    serde_json::from_str(&line).with_context(|| format!("parsing {who}'s result"))
}

/// Records a consumer's latencies (ns; a clock that did not advance counts as 1 ns).
pub(super) fn record_latencies(
    hist: &mut hdrhistogram::Histogram<u64>,
    latencies_ns: &[i64],
) -> anyhow::Result<()> {
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

pub(super) fn vox_mode(t: Transport) -> voxring::Mode {
    match t {
        Transport::ShmWait => voxring::Mode::Wait,
        Transport::ShmPark => voxring::Mode::Park,
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
    };
    if let Some(cpu) = args.peer.peer_cpu {
        pin_to(cpu)?;
    }
    let mut tx: Box<dyn Tx> = match t {
        Transport::Cacheline => {
            let fd = inherited_fd(&args.peer.peer_fds, 0)?;
            let shared = shm::Shared::attach(fd, shm::mapping_len())?;
            Box::new(shm::CachelineTx { shared })
        }
        Transport::ShmSpin | Transport::ShmWait | Transport::ShmPark => {
            let socket =
                std::os::unix::net::UnixStream::from(inherited_fd(&args.peer.peer_fds, 0)?);
            Box::new(voxring::VoxTx::receive(&socket, payload, vox_mode(t))?)
        }
        Transport::Uds => {
            let s = std::os::unix::net::UnixStream::from(inherited_fd(&args.peer.peer_fds, 0)?);
            s.set_read_timeout(Some(Duration::from_nanos(PEER_TIMEOUT_NS)))?;
            let s2 = s.try_clone()?;
            Box::new(stream::StreamTx::new(s, s2, payload))
        }
        Transport::Pipe => {
            let w = std::fs::File::from(inherited_fd(&args.peer.peer_fds, 0)?);
            let r = std::fs::File::from(inherited_fd(&args.peer.peer_fds, 1)?);
            Box::new(stream::StreamTx::new(w, r, payload))
        }
        Transport::Tcp => {
            let port = args
                .peer
                .peer_port
                .context("--peer tcp needs --peer-port")?;
            let s = std::net::TcpStream::connect(("127.0.0.1", port))
                .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_nanos(PEER_TIMEOUT_NS)))?;
            let s2 = s.try_clone()?;
            Box::new(stream::StreamTx::new(s, s2, payload))
        }
        Transport::Http => {
            let port = args
                .peer
                .peer_port
                .context("--peer http needs --peer-port")?;
            Box::new(http::HttpTx::new(port, payload))
        }
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
