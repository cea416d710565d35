//! `voxring bench loopback`: not built yet (see the open issue).

use std::process::ExitCode;

/// Options of this command.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn main(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this command is not built yet")
}
