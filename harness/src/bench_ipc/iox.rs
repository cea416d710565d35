//! `iceoryx2`: iceoryx2's publish-subscribe between two processes (the `iceoryx2` cargo
//! feature), measured exactly as the others: the producer stamps CLOCK_MONOTONIC into the
//! message the moment it sends it, the consumer reads the clock as soon as `receive` hands it
//! the sample, checks it, and acknowledges it through a second service; both sides poll
//! (iceoryx2's fastest way to wait, as `shm-spin` is voxring's).
//!
//! A message is a `[u8]` slice of `payload` bytes in iceoryx2's shared memory (zero copy):
//! `[seq][stamp] ... [seq]` ([`super::wire`]). iceoryx2's safe API hands out uninitialised
//! memory, so the producer fills the loaned slice in the untimed `prepare` step (at 1 MiB its
//! memset shows in the CPU column, not in the latency) and writes only the stamp in `send`.
//!
//! Leave no trace: the run gets a private directory (0700, removed at the end) as iceoryx2's
//! root path and a file prefix of its own, and every `/dev/shm` file with that prefix is
//! removed when the consumer is dropped, after the producer process has exited.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::sample_mut::SampleMut;
use iceoryx2::service::builder::publish_subscribe;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;
use iceoryx2::service::port_factory::publisher::PortFactoryPublisher;

use super::measure::{now_ns, spin_until};
use super::{Received, Rx, Tx, wire};

type Ipc = ipc::Service;
/// The data service: `[u8]` slices.
type DataService = PortFactory<Ipc, [u8], ()>;
/// The acknowledgement service: one `u64`.
type AckService = PortFactory<Ipc, u64, ()>;

/// The node of one side, with the run's root path and prefix.
fn node(dir: &Path) -> anyhow::Result<Node<Ipc>> {
    set_log_level(LogLevel::Error);
    let mut cfg = Config::default();
    let mut root = dir.as_os_str().as_encoded_bytes().to_vec();
    root.push(b'/');
    cfg.global
        .set_root_path(&iceoryx2::prelude::Path::new(&root).map_err(|e| anyhow!("{e:?}"))?);
    cfg.global.prefix = FileName::new(prefix(dir)?.as_bytes()).map_err(|e| anyhow!("{e:?}"))?;
    NodeBuilder::new()
        .config(&cfg)
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<Ipc>()
        .map_err(|e| anyhow!("creating an iceoryx2 node: {e:?}"))
}

/// The run's file prefix, from its private directory's (random) name.
fn prefix(dir: &Path) -> anyhow::Result<String> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("the iceoryx2 directory has no name")?;
    let tag: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    Ok(format!("iox2_vbench_{tag}_"))
}

/// A publish-subscribe service between one publisher and one subscriber that keeps only the
/// newest message (no history, a buffer of one, overflow safe): each message is acknowledged
/// before the next is sent.
fn one_to_one<P: IceoryxSend + Debug + ?Sized>(
    b: publish_subscribe::Builder<P, (), Ipc>,
) -> publish_subscribe::Builder<P, (), Ipc> {
    b.history_size(0)
        .subscriber_max_buffer_size(1)
        .max_publishers(1)
        .max_subscribers(1)
        .enable_safe_overflow(true)
}

/// This side's node (in the run's directory `dir`) and the run's two services, opened or
/// created: data (`[u8]` slices) and acknowledgements.
fn open(dir: &Path) -> anyhow::Result<(Node<Ipc>, DataService, AckService)> {
    let node = node(dir)?;
    let name = |s: &str| ServiceName::new(s).map_err(|e| anyhow!("{e:?}"));
    let data = one_to_one(
        node.service_builder(&name("voxring/bench-ipc/data")?)
            .publish_subscribe::<[u8]>(),
    )
    .open_or_create()
    .map_err(|e| anyhow!("the iceoryx2 data service: {e:?}"))?;
    let ack = one_to_one(
        node.service_builder(&name("voxring/bench-ipc/ack")?)
            .publish_subscribe::<u64>(),
    )
    .open_or_create()
    .map_err(|e| anyhow!("the iceoryx2 acknowledgement service: {e:?}"))?;
    Ok((node, data, ack))
}

/// A subscriber of `service`.
fn subscriber<P: IceoryxSend + Debug + ?Sized>(
    service: &PortFactory<Ipc, P, ()>,
) -> anyhow::Result<Subscriber<Ipc, P, ()>> {
    service
        .subscriber_builder()
        .create()
        .map_err(|e| anyhow!("an iceoryx2 subscriber: {e:?}"))
}

/// The publisher `builder` describes.
fn publisher<P: IceoryxSend + Debug + ?Sized>(
    builder: PortFactoryPublisher<'_, Ipc, P, ()>,
) -> anyhow::Result<Publisher<Ipc, P, ()>> {
    builder
        .create()
        .map_err(|e| anyhow!("an iceoryx2 publisher: {e:?}"))
}

/// The consumer side (this process): the run's directory, subscriber and ack publisher.
pub struct IoxRx {
    // Field order: the ports and the node drop before the directory and the file sweep.
    data: Subscriber<Ipc, [u8], ()>,
    ack: Publisher<Ipc, u64, ()>,
    _node: Node<Ipc>,
    files: RunFiles,
    payload: usize,
    next: u64,
    last: Option<iceoryx2::sample::Sample<Ipc, [u8], ()>>,
}

impl std::fmt::Debug for IoxRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoxRx")
            .field("dir", &self.files.dir.path())
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl IoxRx {
    /// Creates the run's private directory and subscribes, before the producer exists.
    pub fn create(payload: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("voxring-iox2-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .context("creating a private directory for iceoryx2")?;
        let files = RunFiles {
            prefix: prefix(dir.path())?,
            dir,
        };
        let (node, data, ack) = open(files.dir.path())?;
        let data = subscriber(&data)?;
        let ack = publisher(ack.publisher_builder())?;
        Ok(Self {
            data,
            ack,
            _node: node,
            files,
            payload,
            next: 0,
            last: None,
        })
    }

    /// The directory the producer process must use (`--peer-dir`).
    pub fn dir(&self) -> &Path {
        self.files.dir.path()
    }
}

impl Rx for IoxRx {
    fn recv(&mut self) -> anyhow::Result<Received> {
        let data = &self.data;
        let sample = spin_until(
            || {
                data.receive()
                    .map_err(|e| anyhow!("iceoryx2 receive: {e:?}"))
            },
            "waiting for an iceoryx2 sample",
        )?;
        let recv_ns = now_ns();
        let bytes = sample.payload();
        if bytes.len() != self.payload {
            bail!(
                "a sample of {} bytes, expected {}",
                bytes.len(),
                self.payload
            );
        }
        let seq = wire::seq(bytes);
        if seq != self.next {
            bail!("received message {seq}, expected {}", self.next);
        }
        let msg = Received {
            seq,
            stamp_ns: wire::stamp_ns(bytes),
            recv_ns,
        };
        self.last = Some(sample);
        Ok(msg)
    }

    fn finish(&mut self, msg: &Received) -> anyhow::Result<()> {
        let sample = self.last.take().context("no sample to finish")?;
        let last = wire::last_seq(sample.payload());
        if last != msg.seq {
            bail!("message {} ends with {last}: torn or misplaced", msg.seq);
        }
        drop(sample); // returns the chunk to the producer
        self.ack
            .send_copy(msg.seq)
            .map_err(|e| anyhow!("acknowledging message {}: {e:?}", msg.seq))?;
        self.next += 1;
        Ok(())
    }
}

/// The producer side (the child process).
pub struct IoxTx {
    data: Publisher<Ipc, [u8], ()>,
    ack: Subscriber<Ipc, u64, ()>,
    _node: Node<Ipc>,
    payload: usize,
    loaned: Option<SampleMut<Ipc, [u8], ()>>,
}

impl std::fmt::Debug for IoxTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoxTx")
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

impl IoxTx {
    /// Opens the consumer's services in its directory.
    pub fn open(dir: &Path, payload: usize) -> anyhow::Result<Self> {
        let (node, data, ack) = open(dir)?;
        let data = publisher(data.publisher_builder().initial_max_slice_len(payload))?;
        let ack = subscriber(&ack)?;
        Ok(Self {
            data,
            ack,
            _node: node,
            payload,
            loaned: None,
        })
    }
}

impl Tx for IoxTx {
    fn prepare(&mut self, seq: u64) -> anyhow::Result<()> {
        let sample = self
            .data
            .loan_slice_uninit(self.payload)
            .map_err(|e| anyhow!("loaning an iceoryx2 sample: {e:?}"))?;
        let mut sample = sample.write_from_fn(|_| 0x5a);
        wire::mark(sample.payload_mut(), seq);
        self.loaned = Some(sample);
        Ok(())
    }

    fn send(&mut self, _seq: u64) -> anyhow::Result<()> {
        let mut sample = self.loaned.take().context("send without prepare")?;
        wire::stamp(sample.payload_mut());
        sample.send().map_err(|e| anyhow!("iceoryx2 send: {e:?}"))?;
        Ok(())
    }

    fn wait_ack(&mut self, seq: u64) -> anyhow::Result<()> {
        let ack = &self.ack;
        let got = spin_until(
            || {
                ack.receive()
                    .map(|s| s.map(|s| *s.payload()))
                    .map_err(|e| anyhow!("iceoryx2 receive: {e:?}"))
            },
            "waiting for the consumer's acknowledgement",
        )?;
        if got != seq {
            bail!("the consumer acknowledged {got}, expected {seq}");
        }
        Ok(())
    }

    fn own_syscalls(&self) -> Option<u64> {
        // iceoryx2 makes its calls itself: only the kernel counter sees them.
        None
    }
}

/// The run's directory and file prefix; dropping it removes every `/dev/shm` file with the
/// prefix (iceoryx2 leaves some behind) and then the directory.
struct RunFiles {
    prefix: String,
    dir: tempfile::TempDir,
}

impl Drop for RunFiles {
    fn drop(&mut self) {
        for f in run_shm_files(&self.prefix) {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The `/dev/shm` files whose names start with `prefix`.
fn run_shm_files(prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run in one process (producer and consumer on two threads) leaves no file behind.
    #[test]
    fn a_run_moves_messages_and_leaves_no_trace() {
        let mut rx = IoxRx::create(64).unwrap();
        let dir = rx.dir().to_path_buf();
        let prefix = rx.files.prefix.clone();
        let d2 = dir.clone();
        let producer = std::thread::spawn(move || {
            let mut tx = IoxTx::open(&d2, 64).unwrap();
            for seq in 0..20 {
                tx.prepare(seq).unwrap();
                tx.send(seq).unwrap();
                tx.wait_ack(seq).unwrap();
            }
        });
        for seq in 0..20 {
            let m = rx.recv().unwrap();
            assert_eq!(m.seq, seq);
            assert!(m.recv_ns >= m.stamp_ns);
            rx.finish(&m).unwrap();
        }
        producer.join().unwrap();
        assert!(
            !run_shm_files(&prefix).is_empty(),
            "iceoryx2 used no file with our prefix"
        );
        drop(rx);
        assert_eq!(run_shm_files(&prefix), Vec::<PathBuf>::new());
        assert!(!dir.exists());
    }
}
