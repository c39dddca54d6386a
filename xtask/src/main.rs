//! `cargo xtask`: project automation (setup, the QEMU guest harness, tests, demo).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

mod bench;
mod demo;
mod dist;
mod guest;
mod hostqemu;
mod initramfs;
mod kernel;
mod kernelsrc;
mod kublk;
mod qemu;
mod repro;
mod scenarios;
mod setup;
mod stranger;
mod test;
mod util;

use kernel::KernelSpec;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Setup, guest harness, tests and demo for the ublk toolkit"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (Debian packages, nightly rust-src, bpf-linker, guest kernel).
    Setup {
        /// Skip fetching the guest kernel.
        #[arg(long)]
        no_kernel: bool,
        /// Guest kernels to make ready (repeatable; default 6.12). `6.1` is built from
        /// Debian's linux-source-6.1 (Debian's 6.1 image has no ublk).
        #[arg(long)]
        kernel: Vec<String>,
    },
    /// The QEMU guest (a Debian kernel with ublk_drv and kprobes).
    #[command(subcommand)]
    Guest(GuestCmd),
    /// Host tests, then guest tests (default kernel: all; 6.18 and newest 7.x: smoke subset;
    /// 6.1, built from Debian's source: the smoke subset and the basic I/O, signal and
    /// diagnosis tests),
    /// then the stranger's machine (the dist tarball alone in a guest, default kernel).
    Test(TestArgs),
    /// Boot the guest with `ublk-server run ramdisk` + fio and open `ublk-trace watch dev 0`.
    Demo {
        /// Kernel to boot.
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// Arguments for `ublk-trace watch` in the guest.
        #[arg(long, default_value = "dev 0")]
        watch: String,
        /// Break the server on purpose (an `ublk-server --inject` spec, e.g. `hang:q=1,tag=5`;
        /// see `cargo xtask repro --list`), to see what a hang looks like.
        #[arg(long, value_name = "SPEC")]
        inject: Option<String>,
    },
    /// Reproduce a classic ublk-server bug in the guest and show what ublk-trace says.
    Repro {
        /// Scenario name (see --list).
        #[arg(required_unless_present = "list")]
        scenario: Option<String>,
        /// List the scenarios.
        #[arg(long)]
        list: bool,
        /// Open the TUI on the broken device instead of printing the diagnosis.
        #[arg(long)]
        watch: bool,
        /// Kernel to boot.
        #[arg(long, default_value = "6.12")]
        kernel: String,
    },
    /// Release artifacts in target/dist/: static tarball, .deb, SHA256SUMS (reproducible).
    Dist {
        /// Build twice (second time in target/dist-build-check) and fail unless the
        /// artifacts are byte-for-byte identical.
        #[arg(long)]
        check_reproducible: bool,
    },
    /// Benchmarks in the guest: ours vs null_blk and rublk, the tracer's cost; table + JSON.
    Bench {
        /// Fewer configs and rounds (2), shorter runs.
        #[arg(long, conflicts_with = "long")]
        quick: bool,
        /// Also measure the tracer's memory after a long run.
        #[arg(long)]
        long: bool,
        /// Kernel to boot.
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// Do not build or run rublk.
        #[arg(long)]
        no_rublk: bool,
        /// Only the tracer's cost (untraced, +record, +watch) in the pinned 2-vCPU layout.
        #[arg(long)]
        tracer: bool,
        /// Interleaved rounds (default: 2 with --quick, else 5).
        #[arg(long, value_name = "N")]
        rounds: Option<u32>,
        /// Enable kernel.bpf_stats_enabled: the tracers report runs and ns per program.
        #[arg(long)]
        bpf_stats: bool,
        /// Only this CPU layout: `1vcpu` or `pinned` (two vCPUs, fio off the server's CPU).
        #[arg(long, value_name = "LAYOUT")]
        layout: Option<String>,
    },
}

#[derive(Args, Clone)]
struct GuestArgs {
    /// Kernel: 6.12 (default), 6.18, 7 (newest 7.x), 6.1 (built from Debian's linux-source-6.1),
    /// or SUITE:VERSION.
    #[arg(long, default_value = "6.12")]
    kernel: String,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    smp: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 3072)]
    mem: u32,
    /// Give up (and fail) after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Use debug builds of the project's binaries (default: release, whose probes are live
    /// within about 2 s in the emulated guest; unoptimised BTF parsing takes several times that).
    #[arg(long)]
    debug: bool,
    /// Bring a host binary (with its shared libraries) into the guest's /bin; repeatable.
    #[arg(long = "include", value_name = "PATH")]
    include: Vec<PathBuf>,
    /// Also load this kernel module in the guest (e.g. null_blk); repeatable.
    #[arg(long = "module")]
    modules: Vec<String>,
}

impl GuestArgs {
    fn opts(&self) -> Result<guest::GuestOpts> {
        let mut o = guest::GuestOpts::new(KernelSpec::parse(&self.kernel)?);
        o.smp = self.smp;
        o.mem_mib = self.mem;
        o.timeout = Duration::from_secs(self.timeout);
        o.release = !self.debug;
        o.include = self.include.clone();
        o.modules = self.modules.clone();
        Ok(o)
    }
}

#[derive(Subcommand)]
enum GuestCmd {
    /// Run a shell command in the guest; exits with its exit code (124 timeout, 125 guest died).
    Run {
        #[command(flatten)]
        g: GuestArgs,
        /// The command (one argument is taken as a shell line).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// An interactive shell on the guest console.
    Shell {
        #[command(flatten)]
        g: GuestArgs,
    },
    /// Run the workspace's guest tests (`#[ignore = "needs ublk guest"]`) in one boot.
    Test {
        #[command(flatten)]
        g: GuestArgs,
        /// libtest filter arguments.
        #[arg(last = true)]
        filter: Vec<String>,
    },
    /// The stranger's machine alone: `cargo xtask dist`, then its tarball installed and run in
    /// a guest with busybox, fio and nothing else of the build (part of `cargo xtask test`).
    Stranger {
        #[command(flatten)]
        g: GuestArgs,
    },
}

#[derive(Args)]
struct TestArgs {
    /// Skip the guest (explicit opt-out; the default runs it and fails if it cannot).
    #[arg(long)]
    no_guest: bool,
    /// Skip host tests.
    #[arg(long)]
    no_host: bool,
    /// Skip the smoke runs on 6.18 and the newest 7.x and the 6.1 list (6.1 built from source).
    #[arg(long)]
    no_matrix: bool,
    /// Skip `cargo fmt --check` and `cargo clippy -D warnings`.
    #[arg(long)]
    no_lint: bool,
    /// Skip the stranger's machine (the dist tarball in a guest without the build tree).
    #[arg(long)]
    no_stranger: bool,
    /// Kernel for the full guest suite.
    #[arg(long, default_value = "6.12")]
    kernel: String,
    /// libtest filter arguments (host and guest).
    #[arg(last = true)]
    filter: Vec<String>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Setup { no_kernel, kernel } => {
            let specs = if no_kernel {
                Vec::new()
            } else if kernel.is_empty() {
                vec![KernelSpec::default_spec()]
            } else {
                kernel
                    .iter()
                    .map(|k| KernelSpec::parse(k))
                    .collect::<Result<Vec<_>>>()?
            };
            setup::setup(&specs).map(|_| ExitCode::SUCCESS)
        }
        Cmd::Guest(GuestCmd::Run { g, command }) => {
            Ok(exit(guest::run_command(&g.opts()?, &command)?))
        }
        Cmd::Guest(GuestCmd::Shell { g }) => Ok(exit(guest::shell(&g.opts()?)?)),
        Cmd::Guest(GuestCmd::Test { g, filter }) => {
            let spec = KernelSpec::parse(&g.kernel)?;
            let ok = test::run(&test::TestOpts {
                host: false,
                guest: true,
                kernels: vec![spec],
                subsets: vec![],
                filter,
                lint: false,
                smp: Some(g.smp),
                stranger: false,
            })?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Guest(GuestCmd::Stranger { g }) => {
            if g.debug || !g.include.is_empty() || !g.modules.is_empty() {
                anyhow::bail!(
                    "guest stranger holds only the release tarball, busybox and fio: drop \
                     --debug, --include and --module (they apply to guest run/shell/test)"
                );
            }
            crate::setup::setup(&[KernelSpec::default_spec()])?;
            let verdicts = stranger::run(&g.opts()?)?;
            let (passed, failed) = stranger::report(&verdicts);
            println!("{passed} passed, {failed} failed");
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Repro { list: true, .. } => {
            repro::list();
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Repro {
            scenario,
            watch,
            kernel,
            ..
        } => {
            let name = scenario.unwrap_or_default();
            Ok(exit(repro::run(&name, watch, &kernel)?))
        }
        Cmd::Demo {
            kernel,
            watch,
            inject,
        } => Ok(exit(demo::run(&kernel, &watch, inject.as_deref())?)),
        Cmd::Dist { check_reproducible } => {
            dist::run(check_reproducible).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Bench {
            quick,
            long,
            kernel,
            no_rublk,
            tracer,
            rounds,
            bpf_stats,
            layout,
        } => {
            let mode = match (quick, long) {
                (true, _) => bench::Mode::Quick,
                (_, true) => bench::Mode::Long,
                _ => bench::Mode::Normal,
            };
            bench::run(&bench::BenchOpts {
                mode,
                kernel: KernelSpec::parse(&kernel)?,
                no_rublk,
                tracer_only: tracer,
                rounds,
                bpf_stats,
                layout,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Test(a) => {
            let subsets = if a.no_matrix || a.no_guest {
                vec![]
            } else {
                vec![
                    test::Subset::smoke(KernelSpec::parse("6.18")?),
                    test::Subset::smoke(KernelSpec::parse("7")?),
                    test::Subset::six_one(KernelSpec::parse("6.1")?),
                ]
            };
            let ok = test::run(&test::TestOpts {
                host: !a.no_host,
                guest: !a.no_guest,
                kernels: vec![KernelSpec::parse(&a.kernel)?],
                subsets,
                filter: a.filter,
                lint: !a.no_lint,
                smp: None,
                stranger: !a.no_stranger,
            })?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
