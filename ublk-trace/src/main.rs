//! `ublk-trace`: thin binary; the work lives in the library (`ublk_trace::cmd`).
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ublk_trace::cmd;
use ublk_trace::cmd::exit_status;

/// `-V`: one line.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("UBLK_GIT_COMMIT"),
    ")"
);
/// `--version`: what a bug report needs to name the build, down to the eBPF programs.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("UBLK_GIT_COMMIT"),
    "\ntested on kernels: ",
    env!("UBLK_TESTED_KERNELS"),
    "\neBPF object sha256: ",
    env!("UBLK_TRACE_EBPF_SHA256"),
);

#[derive(Parser, Debug)]
#[command(
    name = "ublk-trace",
    version = VERSION,
    long_version = LONG_VERSION,
    about = "Where is every ublk request, and why is it stuck?",
    after_help = exit_status::TOP
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
    #[command(after_help = exit_status::DOCTOR)]
    Doctor(cmd::doctor::DoctorArgs),
    /// Record events to JSON lines or a Perfetto trace.
    #[command(after_help = exit_status::RECORD)]
    Record(cmd::record::RecordArgs),
    /// Summarise a recording (or a bug bundle): IOPS, latency, control timeline, stuck tags.
    #[command(after_help = exit_status::REPORT)]
    Report(cmd::report::ReportArgs),
    /// Live view of every queue and tag of a ublk device (TUI), or `--headless --json`.
    #[command(after_help = exit_status::WATCH)]
    Watch(cmd::watch::WatchArgs),
    /// Observe a device, print findings, exit 0 (none), 1 (findings) or 2 (error).
    #[command(after_help = exit_status::DIAGNOSE)]
    Diagnose(cmd::diagnose::DiagnoseArgs),
    /// Print what the driver itself holds per queue and tag (read from kernel memory).
    #[command(after_help = exit_status::STATE)]
    State(cmd::state::StateArgs),
    /// Write man pages and shell completions under DIR (used by `cargo xtask dist`).
    #[cfg(feature = "gen")]
    #[command(name = "__generate", hide = true)]
    Generate { dir: std::path::PathBuf },
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
        #[cfg(feature = "gen")]
        Cmd::Generate { dir } => generate(&dir),
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

#[cfg(feature = "gen")]
fn generate(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use clap::CommandFactory;
    ublk_trace_common::docgen::generate(Cli::command(), dir)
        .with_context(|| format!("write man pages and completions to {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
