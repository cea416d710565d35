//! The `voxring` program. See the crate README.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "voxring",
    version,
    about = "Real-time audio between processes through shared memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the voice pipeline (capture -> agents -> playback) and report its latency budget.
    Run,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => {
            println!(
                "voxring {}: the voice pipeline is not built yet; this build has the workspace only.",
                env!("CARGO_PKG_VERSION")
            );
        }
    }
}
