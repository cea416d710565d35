//! The `voxring` program. See the crate README.
//!
//! `main` only parses the command line and dispatches; each command lives in its own module
//! with its own `Args` and `main`.
//!
//! No `unsafe` here: the system libraries' FFI lives in `voxring-linux` (issue 12).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench_ipc;
mod bench_loopback;
mod bridge;
mod doctor;
mod hist;
mod locate;
mod run;
mod segments;
mod serve;
mod steal;
mod top;
mod voice;

/// Real-time audio between processes through shared memory, and the measurements that prove it
#[derive(Debug, Parser)]
#[command(name = "voxring", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the voice pipeline (capture -> agents -> playback) and report its latency budget.
    Run(run::Args),
    /// Benchmarks: IPC transports side by side, audio loopback round trip.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Is this machine ready for real-time audio? Read-only checks and live probes.
    Doctor(doctor::Args),
    /// List or clean voxring shared-memory segments.
    #[command(subcommand)]
    Segments(segments::Command),
    /// Carry rings across hosts over Zenoh: runs voxring-bridge (export, import, bench).
    Bridge(bridge::Args),
    /// A hub any process joins by name: owns the device, publishes the mic, mixes what
    /// agents say (see docs/hub.md).
    Serve(serve::Args),
    /// A live view of a hub (rings, agents, lag, losses, queues), like pw-top.
    Top(top::Args),
    /// An outside agent of `voxring serve` on the public client (for tests and benchmarks).
    #[command(hide = true)]
    HubAgent(serve::agent::AgentArgs),
    /// The voice round trip's parts, each alone: talker, VAD agent, reply agent.
    #[command(subcommand)]
    Voice(voice::Command),
    /// An agent process of `voxring run` (started by it, not by people).
    #[command(hide = true)]
    Agent(run::AgentArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// One-way latency of IPC transports side by side, same payloads, same pinning.
    Ipc(bench_ipc::Args),
    /// Audio round trip: play impulses, find them in the capture (like jack_iodelay).
    Loopback(bench_loopback::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Bench(BenchCommand::Ipc(args)) => bench_ipc::main(args),
        Command::Bench(BenchCommand::Loopback(args)) => bench_loopback::main(args),
        Command::Doctor(args) => doctor::main(args),
        Command::Segments(cmd) => segments::main(cmd),
        Command::Agent(args) => run::agent_main(args),
        Command::Bridge(args) => bridge::main(args),
        Command::Serve(args) => serve::main(args),
        Command::Top(args) => top::main(args),
        Command::HubAgent(args) => serve::agent::main(args),
        Command::Voice(cmd) => voice::main(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("voxring: {err:#}");
            ExitCode::from(2)
        }
    }
}
