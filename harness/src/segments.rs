//! `voxring segments`: not built yet (see the open issue).

use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List voxring segments in /dev/shm.
    List,
}

pub fn main(_cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this command is not built yet")
}
