//! `ublk-trace record`.
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct RecordArgs {}

pub fn run(_args: RecordArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`ublk-trace record` is not built yet")
}
