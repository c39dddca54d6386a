//! `ublk-trace`: thin binary; the work lives in the library (`ublk_trace::cmd`).
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ublk_trace::cmd;

#[derive(Parser, Debug)]
#[command(
    name = "ublk-trace",
    version,
    about = "Where is every ublk request, and why is it stuck?"
)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); logs go to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check this machine: kernel, ublk_drv, kprobes, BTF, the real ublk function names.
    Doctor(cmd::doctor::DoctorArgs),
    /// Record events to JSON lines or a Perfetto trace.
    Record(cmd::record::RecordArgs),
    /// Summarise a recording (or a bug bundle): IOPS, latency, control timeline, stuck tags.
    Report(cmd::report::ReportArgs),
    /// Live view of every queue and tag of a ublk device (TUI), or `--headless --json`.
    Watch(cmd::watch::WatchArgs),
    /// Observe a device, print findings, exit 0 (none), 1 (findings) or 2 (error).
    Diagnose(cmd::diagnose::DiagnoseArgs),
    /// Print what the driver itself holds per queue and tag (read from kernel memory).
    State(cmd::state::StateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ublk_trace_common::logging::init(cli.verbose, ublk_trace_common::logging::Prefix::Target);
    let res = match cli.cmd {
        Cmd::Doctor(a) => cmd::doctor::run(a),
        Cmd::Record(a) => cmd::record::run(a),
        Cmd::Report(a) => cmd::report::run(a),
        Cmd::Watch(a) => cmd::watch::run(a),
        Cmd::Diagnose(a) => cmd::diagnose::run(a),
        Cmd::State(a) => cmd::state::run(a),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("ublk-trace: {e:#}");
            ExitCode::from(2)
        }
    }
}
