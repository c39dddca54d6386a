//! `ublk-server`: parse arguments, set up logging, call the library, map errors to exit codes
//! (2 for input the user can fix, 1 for failures while running).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ublk_server::ctrl::Ctrl;
use ublk_server::inject::Fault;
use ublk_server::queue::{IoMode, Sched};
use ublk_server::server::{self, RunOpts, TargetSpec};
use ublk_server::{Error, admin};
use ublk_trace_common::logging::{self, Prefix};

/// `-V`: one line.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("UBLK_GIT_COMMIT"),
    ")"
);
/// `--version`: what a bug report needs to name the build.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("UBLK_GIT_COMMIT"),
    "\ntested on kernels: ",
    env!("UBLK_TESTED_KERNELS"),
);

/// Exit status, shared by every subcommand's `--help` and man page.
const EXIT_STATUS: &str = "\
Exit status:
  0  done (run, recover: served until SIGINT/SIGTERM, then the device was stopped)
  1  failed while running (the message says what failed)
  2  bad arguments or a fixable setup problem, nothing changed: no /dev/ublk-control
     (modprobe ublk_drv), not root, no such device, device id in use";

#[derive(Parser)]
#[command(
    name = "ublk-server",
    version = VERSION,
    long_version = LONG_VERSION,
    about = "A reference ublk server (null, ramdisk, loop)",
    after_help = EXIT_STATUS
)]
struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace); UBLK_LOG=<level> overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum TargetKind {
    Null,
    Ramdisk,
    Loop,
}

#[derive(Subcommand)]
enum Cmd {
    /// Add a device and serve it in the foreground until SIGINT/SIGTERM.
    #[command(after_help = EXIT_STATUS)]
    Run {
        target: TargetKind,
        /// Device size (null, ramdisk), e.g. 64M, 1G, 4096.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Backing file or block device (loop).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Open the backing file with O_DIRECT (loop).
        #[arg(long)]
        direct: bool,
        #[arg(long, default_value_t = 1)]
        queues: u16,
        #[arg(long, default_value_t = 128)]
        depth: u16,
        /// Device id (default: the kernel picks).
        #[arg(long)]
        id: Option<u32>,
        /// Add with UBLK_F_USER_RECOVERY so 'ublk-server recover <id>' can take over after a crash.
        #[arg(long)]
        recovery: bool,
        /// Use UBLK_F_NEED_GET_DATA (write data is fetched with a second command).
        #[arg(long)]
        need_get_data: bool,
        /// Inject a fault (repeatable); see 'ublk-server run null --inject help'.
        #[arg(long = "inject", value_name = "SPEC")]
        inject: Vec<String>,
        /// How long START_DEV may take before the missing FETCH_REQs are reported (ms).
        #[arg(long, default_value_t = 30_000)]
        start_timeout_ms: u64,
        /// Queue threads' scheduling: batch (a request's wakeup does not preempt its
        /// submitter, so a burst is served in one pass) or normal (serve at once, at the cost
        /// of a context switch per request when the server shares a CPU with the submitter).
        #[arg(long, value_enum, default_value_t = Sched::Batch)]
        sched: Sched,
        /// Publish no tag-state file: ublk-trace then sees only what the kernel shows, as
        /// with a server that is not ours (the tracer's own tests use this).
        #[arg(long)]
        no_tag_state: bool,
        /// Serve each queue with several threads, each with its own io_uring and every N-th
        /// tag of the queue (UBLK_F_PER_IO_DAEMON, Linux 6.16+; refused on older kernels).
        #[arg(long)]
        per_io_daemon: bool,
        /// Per-queue batch commands: one PREP_IO_CMDS, multishot FETCH_IO_CMDS and one
        /// COMMIT_IO_CMDS per pass instead of a command per tag (UBLK_F_BATCH_IO, Linux 7.0+;
        /// refused on older kernels).
        #[arg(long, conflicts_with = "per_io_daemon")]
        batch_io: bool,
        /// Threads per queue with --per-io-daemon (at most --depth: each owns a tag at least).
        #[arg(long, value_name = "N", default_value_t = 2, requires = "per_io_daemon",
              value_parser = clap::value_parser!(u16).range(1..))]
        threads_per_queue: u16,
    },
    /// List devices.
    #[command(after_help = EXIT_STATUS)]
    List,
    /// Show one device.
    #[command(after_help = EXIT_STATUS)]
    Info {
        id: u32,
        #[arg(long)]
        json: bool,
    },
    /// Delete a device (or all).
    #[command(after_help = EXIT_STATUS)]
    Del {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<u32>,
        #[arg(long)]
        all: bool,
    },
    /// Kernel ublk features, decoded.
    #[command(after_help = EXIT_STATUS)]
    Features,
    /// Serve a device again after its server died (added with --recovery).
    #[command(after_help = EXIT_STATUS)]
    Recover {
        id: u32,
        #[arg(long = "inject", value_name = "SPEC")]
        inject: Vec<String>,
        #[arg(long, default_value_t = 30_000)]
        start_timeout_ms: u64,
    },
    /// Write man pages and shell completions under DIR (used by `cargo xtask dist`).
    #[cfg(feature = "gen")]
    #[command(name = "__generate", hide = true)]
    Generate { dir: PathBuf },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix '{c}' (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 64M"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s} is too large"))
}

fn parse_faults(specs: &[String]) -> Result<Vec<Fault>, Error> {
    specs
        .iter()
        .map(|s| {
            if s == "help" {
                return Err(Error::Usage(ublk_server::inject::GRAMMAR.to_string()));
            }
            Fault::parse(s).map_err(|e| Error::Usage(e.to_string()))
        })
        .collect()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run {
            target,
            size,
            file,
            direct,
            queues,
            depth,
            id,
            recovery,
            need_get_data,
            inject,
            start_timeout_ms,
            sched,
            no_tag_state,
            per_io_daemon,
            threads_per_queue,
            batch_io,
        } => {
            let target = match target {
                TargetKind::Null => TargetSpec::Null {
                    size: size.unwrap_or(256 << 30),
                },
                TargetKind::Ramdisk => TargetSpec::Ramdisk {
                    size: size.unwrap_or(64 << 20),
                },
                TargetKind::Loop => TargetSpec::Loop {
                    file: file.ok_or_else(|| Error::Usage("loop needs --file PATH".into()))?,
                    direct,
                },
            };
            let mode = if per_io_daemon {
                IoMode::PerIoDaemon {
                    threads: threads_per_queue,
                }
            } else if batch_io {
                IoMode::Batch
            } else {
                IoMode::PerTag
            };
            let opts = RunOpts {
                target,
                queues,
                depth,
                dev_id: id,
                recovery,
                need_get_data,
                faults: parse_faults(&inject)?,
                start_timeout: Duration::from_millis(start_timeout_ms),
                sched,
                mode,
                tag_state: !no_tag_state,
            };
            server::run(opts)?;
        }
        Cmd::List => print!("{}", admin::list(&mut Ctrl::open()?)?),
        Cmd::Info { id, json } => {
            let out = admin::info(&mut Ctrl::open()?, id, json)?;
            println!("{}", out.trim_end());
        }
        Cmd::Del { id, all } => {
            server::require_root("ublk-server del")?;
            let mut ctrl = Ctrl::open()?;
            let ids = if all {
                Ctrl::list_ids()
            } else {
                id.into_iter().collect()
            };
            admin::del(&mut ctrl, &ids).context("delete")?;
        }
        Cmd::Features => print!("{}", admin::features(&Ctrl::open()?)),
        Cmd::Recover {
            id,
            inject,
            start_timeout_ms,
        } => server::recover(
            id,
            parse_faults(&inject)?,
            Duration::from_millis(start_timeout_ms),
        )?,
        #[cfg(feature = "gen")]
        Cmd::Generate { dir } => {
            use clap::CommandFactory;
            ublk_trace_common::docgen::generate(Cli::command(), &dir)
                .with_context(|| format!("write man pages and completions to {}", dir.display()))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help / --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's first line names the problem; the rest is usage boilerplate.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("ublk-server: {first} (see 'ublk-server --help')");
            return ExitCode::from(2);
        }
    };
    logging::init(cli.verbose, Prefix::Program("ublk-server"));
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ublk-server: {e:#}");
            let usage = e
                .chain()
                .any(|c| c.downcast_ref::<Error>().is_some_and(Error::is_usage));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
