//! `ublk-trace doctor`: what this machine can trace, and the fix for what it cannot.
//! Exit 0 when every check passes (warnings allowed), 1 when one fails, with or without
//! `--json`, so a script can ask "can this machine be traced?".
use std::process::ExitCode;

use anyhow::Context;

use crate::cmd::color::ColorArgs;
use crate::doctor;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the report as JSON (kind "ublk-trace.doctor"; docs/schema/doctor.schema.json).
    #[arg(long)]
    pub json: bool,
    /// Accepted for older scripts: a failed check always exits 1 now.
    #[arg(long, hide = true)]
    pub strict: bool,
    #[command(flatten)]
    pub color: ColorArgs,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = doctor::run();
    if args.json {
        let s = serde_json::to_string_pretty(&report).context("serialize the doctor report")?;
        println!("{s}");
    } else {
        print!(
            "{}",
            doctor::render_text_with(&report, args.color.enabled())
        );
    }
    Ok(if report.failures() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
