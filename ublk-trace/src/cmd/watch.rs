//! `ublk-trace watch`.
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct WatchArgs {}

pub fn run(_args: WatchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`ublk-trace watch` is not built yet")
}
