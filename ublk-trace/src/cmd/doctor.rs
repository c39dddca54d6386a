//! `ublk-trace doctor`: what this machine can trace, and the fix for what it cannot.
use std::process::ExitCode;

use anyhow::Context;

use crate::doctor;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when any check fails (default: report only, exit 0).
    #[arg(long)]
    pub strict: bool,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = doctor::run();
    if args.json {
        let s = serde_json::to_string_pretty(&report).context("serialize the doctor report")?;
        println!("{s}");
    } else {
        print!("{}", doctor::render_text(&report));
    }
    Ok(if args.strict && report.failures() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
