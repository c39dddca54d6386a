//! `ublk-trace diagnose`.
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct DiagnoseArgs {}

pub fn run(_args: DiagnoseArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`ublk-trace diagnose` is not built yet")
}
