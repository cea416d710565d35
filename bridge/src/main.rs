//! The `voxring-bridge` program: `export`, `import`, `bench`. See the crate README and
//! docs/bridge.md.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use voxring_bridge::export::{Congestion, ExportOptions, Exporter};
use voxring_bridge::import::{Arrival, ArrivalHook, Fill, ImportOptions, Importer, Target};
use voxring_bridge::net::{self, Endpoints};
use voxring_bridge::wire::StreamFormat;
use voxring_bridge::{Event, EventSink, bench};
use voxring_core::{Policy, SampleFormat};
use voxring_linux::cleanup::{SignalMode, install_signal_cleanup, termination_requested};

/// Carry voxring rings across hosts over Zenoh
#[derive(Debug, Parser)]
#[command(name = "voxring-bridge", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct NetArgs {
    /// Zenoh locator to listen on (repeatable), e.g. tcp/192.168.1.5:7447 or tls/host:7447.
    /// Default: the exporter listens on tcp/127.0.0.1:7447 only, the importer nowhere.
    #[arg(long)]
    listen: Vec<String>,
    /// Zenoh locator to connect to (repeatable). Default: the importer connects to
    /// tcp/127.0.0.1:7447, the exporter to nothing.
    #[arg(long)]
    connect: Vec<String>,
    /// A Zenoh JSON5 configuration file (TLS, access control; see docs/bridge.md).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish each committed frame of a local ring on a Zenoh key.
    Export {
        /// The local ring's name.
        #[arg(required_unless_present = "hub")]
        ring: Option<String>,
        /// Export the mic of this hub (`voxring serve --name`) instead of a ring, joined as an
        /// agent (listed in the hub's directory and `voxring top`).
        #[arg(long, conflicts_with = "ring")]
        hub: Option<String>,
        /// With --hub: the agent name the exporter joins under.
        #[arg(long, default_value = "bridge", requires = "hub")]
        agent: String,
        /// The Zenoh key, e.g. voxring/room1/mic.
        #[arg(long)]
        key: String,
        #[command(flatten)]
        net: NetArgs,
        /// Frames queued for the network before frames are dropped.
        #[arg(long, default_value_t = 64)]
        queue_frames: usize,
        /// When Zenoh's queue is full: drop the frame (live audio; the importer counts it
        /// lost), or block the sender (nothing dropped on the way; a sender that falls
        /// --queue-frames behind drops at the reader, counted in `dropped_queue`).
        #[arg(long, value_enum, default_value_t = Congestion::Drop)]
        congestion: Congestion,
    },
    /// Write the frames published on a Zenoh key into a new local ring.
    Import(Box<ImportArgs>),
    /// Measure the added latency and CPU per frame, export to import.
    Bench(bench::Args),
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// The Zenoh key.
    key: String,
    /// The local ring to create (with --hub: the agent name of the import in the hub).
    #[arg(long)]
    ring: String,
    /// Play the frames through this hub (`voxring serve --name`) as a speaking agent named
    /// by --ring, instead of creating a ring; the stream must have the hub's format.
    #[arg(long)]
    hub: Option<String>,
    #[command(flatten)]
    net: NetArgs,
    /// Jitter buffer target in milliseconds (default: 3 frames of the stream).
    #[arg(long)]
    target_ms: Option<f64>,
    /// Local ring capacity in frames (a power of two).
    #[arg(long, default_value_t = 64)]
    ring_frames: u32,
    /// Local ring consumer slots.
    #[arg(long, default_value_t = 8)]
    max_consumers: u16,
    /// Local ring policy.
    #[arg(long, value_enum, default_value_t = PolicyArg::Lossy)]
    policy: PolicyArg,
    /// How lost frames are filled.
    #[arg(long, value_enum, default_value_t = FillArg::Gap)]
    fill: FillArg,
    /// Play frames out from a SCHED_FIFO thread at this priority (1-99; needs CAP_SYS_NICE or
    /// RLIMIT_RTPRIO): for an import feeding a hub (`--hub`) on a loaded machine.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
    rt_priority: Option<u8>,
    /// Create the ring at start with this format, SAMPLES_PER_FRAME:CHANNELS:RATE:s16|s32|f32
    /// (default: from the first frame).
    #[arg(long)]
    format: Option<String>,
    /// TEST ONLY: drop every frame whose sequence number is N-1 modulo N, as a lossy network.
    #[arg(long, hide = true)]
    inject_drop_every: Option<u64>,
    /// TEST ONLY: delay each frame by 0..MS milliseconds (pseudo-random by sequence number).
    #[arg(long, hide = true)]
    inject_jitter_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PolicyArg {
    Lossy,
    Lossless,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FillArg {
    Gap,
    Silence,
}

fn endpoints(n: NetArgs, listen: &[&str], connect: &[&str]) -> Endpoints {
    let or = |v: Vec<String>, d: &[&str]| {
        if v.is_empty() && n.config.is_none() {
            d.iter().map(|s| s.to_string()).collect()
        } else {
            v
        }
    };
    Endpoints {
        listen: or(n.listen, listen),
        connect: or(n.connect, connect),
        config_file: n.config,
    }
}

fn parse_format(s: &str) -> anyhow::Result<StreamFormat> {
    let p: Vec<&str> = s.split(':').collect();
    let bad = || {
        anyhow::anyhow!(
            "--format {s:?} is not SAMPLES_PER_FRAME:CHANNELS:RATE:FORMAT, e.g. 160:1:16000:s16"
        )
    };
    let [spf, ch, rate, f] = p[..] else {
        return Err(bad());
    };
    let format = match f {
        "s16" => SampleFormat::S16,
        "s32" => SampleFormat::S32,
        "f32" => SampleFormat::F32,
        _ => return Err(bad()),
    };
    Ok(StreamFormat {
        samples_per_frame: spf.parse().map_err(|_| bad())?,
        channels: ch.parse().map_err(|_| bad())?,
        sample_rate: rate.parse().map_err(|_| bad())?,
        format,
    })
}

/// The test-only fault injection of `--inject-*`.
fn hook(drop_every: Option<u64>, jitter_ms: Option<u64>) -> Option<ArrivalHook> {
    if drop_every.is_none() && jitter_ms.is_none() {
        return None;
    }
    Some(Box::new(move |h| {
        if let Some(n) = drop_every
            && n > 0
            && h.seq % n == n - 1
        {
            return Arrival::Drop;
        }
        match jitter_ms {
            Some(ms) if ms > 0 => {
                let x = h.seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                Arrival::Delay(Duration::from_micros(x % (ms * 1000)))
            }
            _ => Arrival::Deliver,
        }
    }))
}

fn printer() -> EventSink {
    Arc::new(|e: Event| eprintln!("voxring-bridge: {e}"))
}

fn wait_for_signal() {
    while !termination_requested() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Export {
            ring,
            hub,
            agent,
            key,
            net: n,
            queue_frames,
            congestion,
        } => {
            install_signal_cleanup(SignalMode::Notify).map_err(anyhow::Error::msg)?;
            let opts = ExportOptions {
                ring: hub.clone().or(ring).unwrap_or_default(),
                hub_agent: hub.map(|_| agent),
                key,
                endpoints: endpoints(n, &[net::DEFAULT_EXPORT_LISTEN], &[]),
                queue_frames,
                congestion,
            };
            let ex = Exporter::start(&opts, printer())?;
            eprintln!(
                "voxring-bridge: exporting ring {:?} on {} (listen {:?}, connect {:?})",
                opts.ring, opts.key, opts.endpoints.listen, opts.endpoints.connect
            );
            wait_for_signal();
            println!("{}", serde_json::to_string(&ex.stop())?);
        }
        Command::Import(a) => {
            install_signal_cleanup(SignalMode::Notify).map_err(anyhow::Error::msg)?;
            let a = *a;
            let mut opts = ImportOptions::new(&a.key, &a.ring);
            opts.hub = a.hub;
            opts.endpoints = endpoints(a.net, &[], &[net::DEFAULT_IMPORT_CONNECT]);
            if let Some(ms) = a.target_ms {
                if !(0.0..=60_000.0).contains(&ms) {
                    bail!("--target-ms {ms} is out of range: give 0 to 60000 milliseconds");
                }
                opts.target = Target::Duration(Duration::from_secs_f64(ms / 1000.0));
            }
            opts.ring_frames = a.ring_frames;
            opts.max_consumers = a.max_consumers;
            opts.policy = match a.policy {
                PolicyArg::Lossy => Policy::Lossy,
                PolicyArg::Lossless => Policy::Lossless,
            };
            opts.fill = match a.fill {
                FillArg::Gap => Fill::Gap,
                FillArg::Silence => Fill::Silence,
            };
            opts.format = a.format.as_deref().map(parse_format).transpose()?;
            opts.rt_priority = a.rt_priority;
            let im = Importer::start(
                &opts,
                printer(),
                hook(a.inject_drop_every, a.inject_jitter_ms),
            )?;
            eprintln!(
                "voxring-bridge: importing {} into ring {:?} (listen {:?}, connect {:?})",
                opts.key, opts.ring, opts.endpoints.listen, opts.endpoints.connect
            );
            wait_for_signal();
            println!("{}", serde_json::to_string(&im.stop())?);
        }
        Command::Bench(args) => bench::main(args)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxring-bridge: {e:#}");
            ExitCode::from(2)
        }
    }
}
