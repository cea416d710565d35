//! Running the two sides as processes, on this machine or in two network namespaces joined
//! by a veth pair: what the tests and `voxring-bridge bench` share.
//!
//! Everything made here is removed by `Drop`: processes are stopped by their PID (SIGKILL if
//! still running), namespaces deleted (their veth ends go with them).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};

/// A child process whose stderr lines are collected.
#[derive(Debug)]
pub struct Side {
    child: Option<std::process::Child>,
    lines: Receiver<String>,
    seen: Vec<String>,
    name: String,
}

impl Side {
    /// Starts `cmd` with stdout piped and stderr collected line by line.
    ///
    /// # Errors
    /// The program could not be started.
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Self> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let err = child.stderr.take().context("stderr")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Side {
            child: Some(child),
            lines,
            seen: Vec::new(),
            name: name.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// Waits for a stderr line containing `needle` (lines already seen count once each:
    /// the search starts after the last match), at most `give_up`.
    ///
    /// # Errors
    /// Not seen in time, or the process ended; with every line it printed.
    pub fn wait_line(&mut self, needle: &str, give_up: Duration) -> anyhow::Result<String> {
        let end = Instant::now() + give_up;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return Ok(l);
                    }
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < end => {}
                Err(_) => bail!(
                    "{} did not print {needle:?} within {give_up:?}; it printed:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// CPU time (user + system) the process used so far, from `/proc/PID/stat`.
    ///
    /// # Errors
    /// The process is gone.
    pub fn cpu_ns(&self) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit_once(')').context("malformed stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        let hz = rustix::param::clock_ticks_per_second();
        Ok(ticks * 1_000_000_000 / hz)
    }

    /// Sends `sig` to the process by its PID.
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = Pid::from_raw(self.pid() as i32) {
            let _ = kill_process(pid, sig);
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = Pid::from_raw(c.id() as i32) {
                let _ = kill_process(pid, Signal::KILL);
            }
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait for it to exit (at most `give_up`, then SIGKILL), return its stdout.
    ///
    /// # Errors
    /// It had to be killed, or exited with a failure.
    pub fn terminate(&mut self, give_up: Duration) -> anyhow::Result<String> {
        let Some(mut c) = self.child.take() else {
            bail!("{} was already stopped", self.name);
        };
        if let Some(pid) = Pid::from_raw(c.id() as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let end = Instant::now() + give_up;
        let status = loop {
            if let Some(s) = c.try_wait()? {
                break s;
            }
            if Instant::now() > end {
                let _ = kill_process(Pid::from_raw(c.id() as i32).context("pid")?, Signal::KILL);
                let _ = c.wait();
                bail!("{} did not exit within {give_up:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        if let Some(mut o) = c.stdout.take() {
            o.read_to_string(&mut out)?;
        }
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        if !status.success() {
            bail!(
                "{} exited with {status}; it printed:\n{}",
                self.name,
                self.seen.join("\n")
            );
        }
        Ok(out)
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Two network namespaces joined by a veth pair: `a` at 10.77.0.1, `b` at 10.77.0.2.
#[derive(Debug)]
pub struct NetnsPair {
    /// The namespaces' names.
    pub names: [String; 2],
}

/// The addresses of the two ends.
pub const NETNS_ADDR: [&str; 2] = ["10.77.0.1", "10.77.0.2"];

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2): install it (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetnsPair {
    /// Creates the pair. Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2.
    ///
    /// # Errors
    /// Not root, `ip` missing, or the kernel refused; with what to do.
    pub fn create() -> anyhow::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        if !rustix::process::geteuid().is_root() {
            bail!(
                "making network namespaces needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN); run the \
                 test as root (CI does)"
            );
        }
        if !Path::new("/usr/sbin/ip").exists() && !Path::new("/sbin/ip").exists() {
            bail!("iproute2's `ip` is missing: apt-get install iproute2");
        }
        // Relaxed: a counter for unique names only.
        let n = N.fetch_add(1, Ordering::Relaxed);
        let base = format!("vxb{}x{n}", std::process::id());
        let pair = NetnsPair {
            names: [format!("{base}a"), format!("{base}b")],
        };
        // Created one by one so that Drop removes whatever was made if a step fails.
        ip(&["netns", "add", &pair.names[0]])?;
        ip(&["netns", "add", &pair.names[1]])?;
        ip(&[
            "link",
            "add",
            "vxba",
            "netns",
            &pair.names[0],
            "type",
            "veth",
            "peer",
            "name",
            "vxbb",
            "netns",
            &pair.names[1],
        ])?;
        for (ns, (dev, addr)) in pair
            .names
            .iter()
            .zip([("vxba", NETNS_ADDR[0]), ("vxbb", NETNS_ADDR[1])])
        {
            let cidr = format!("{addr}/24");
            ip(&["-n", ns, "addr", "add", &cidr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// `program args...` run inside namespace `i` (0 or 1).
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.names[i]]).arg(program);
        c
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

/// A TCP port free on 127.0.0.1 right now (the kernel's pick).
///
/// # Errors
/// No port could be bound.
pub fn free_local_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Adds an exporter's command line to `cmd` (the program already set):
/// `export SRC --key KEY --listen LOCATOR`.
pub fn export_args<'c>(
    cmd: &'c mut Command,
    src: &str,
    key: &str,
    listen: &str,
) -> &'c mut Command {
    cmd.args(["export", src, "--key", key, "--listen", listen])
}

/// Adds an importer's command line to `cmd` (the program already set):
/// `import KEY --ring DST --connect LOCATOR --format FORMAT`.
pub fn import_args<'c>(
    cmd: &'c mut Command,
    key: &str,
    dst: &str,
    connect: &str,
    format: &str,
) -> &'c mut Command {
    cmd.args([
        "import",
        key,
        "--ring",
        dst,
        "--connect",
        connect,
        "--format",
        format,
    ])
}
