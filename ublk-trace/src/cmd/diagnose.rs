//! `ublk-trace diagnose dev N [--for S] [--json]` and `diagnose --all`: observe (snapshots and,
//! when available, events) for a while, run the rules, print the findings.
//! Exit code: 0 no findings, 1 findings, 2 error (mapped in main).
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod output;

use crate::cmd::watch::session::Session;
use crate::cmd::watch::sources::Msg;
use crate::cmd::watch::{DevTarget, start_sources};
use crate::snapshot::read::monotonic_ns;
use crate::tui::view_model::SourceView;

use output::{DiagnoseJson, FindingJson, JSON_VERSION};

#[derive(Debug, clap::Args)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub target: DevTarget,
    /// Every ublk device (instead of `dev N`).
    #[arg(long, conflicts_with = "dev_id")]
    pub all: bool,
    /// Seconds to observe before judging.
    #[arg(long = "for", value_name = "S", default_value_t = 2.0)]
    pub for_secs: f64,
    /// Print one versioned JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Sampling period of the snapshots, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    pub interval: u64,
    /// Do not load eBPF probes: snapshots only.
    #[arg(long)]
    pub no_probes: bool,
    /// A request in the server (or queued) longer than this is stuck, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub stuck_ms: u64,
    /// A completion slower than this is reported as SLOW, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub slow_ms: u64,
}

fn observe_for(args: &DiagnoseArgs) -> anyhow::Result<Duration> {
    if !(args.for_secs.is_finite() && args.for_secs >= 0.0 && args.for_secs <= 3600.0) {
        bail!(
            "--for {}: expected seconds between 0 and 3600",
            args.for_secs
        );
    }
    Ok(Duration::from_secs_f64(args.for_secs))
}

/// Feed the session until `window` has passed and at least one full round arrived.
fn observe(
    session: &mut Session,
    args: &DiagnoseArgs,
    dev: Option<u32>,
    window: Duration,
) -> anyhow::Result<()> {
    let period = Duration::from_millis(args.interval.max(50));
    let sources = start_sources(dev, period, args.no_probes)?;
    let start = Instant::now();
    // A hung device's snapshot is bounded by its deadline; this bounds the whole wait.
    let give_up = start + window + Duration::from_secs(10);
    let mut have_round = false;
    while Instant::now() < give_up && !(have_round && start.elapsed() >= window) {
        match sources.rx.recv_timeout(Duration::from_millis(50)) {
            Ok(msg) => {
                have_round |= match (&msg, dev) {
                    (Msg::Snapshot(s), Some(d)) => s.dev_id == d,
                    (Msg::Devices(d), None) => d.is_empty(),
                    (Msg::Snapshot(s), None) => session.devices().last() == Some(&s.dev_id),
                    _ => false,
                };
                session.apply(msg);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the snapshot source stopped")
            }
        }
    }
    if !have_round {
        bail!(
            "no complete snapshot within {:?}: /proc or sysfs reads are stuck",
            give_up - start
        );
    }
    Ok(())
}

pub fn run(args: DiagnoseArgs) -> anyhow::Result<ExitCode> {
    let dev = args.target.id();
    if dev.is_none() && !args.all {
        bail!("name a device (`diagnose dev N`) or use --all");
    }
    let window = observe_for(&args)?;
    let mut session = Session::new(SourceView::SnapshotsOnly {
        reason: "starting".into(),
    });
    observe(&mut session, &args, dev, window).context("observe")?;
    let now = monotonic_ns();
    let devices: Vec<u32> = match dev {
        Some(d) => vec![d],
        None => session.devices().to_vec(),
    };
    if let Some(d) = dev
        && (!session.has_snapshot(d) || !session.devices().contains(&d))
    {
        bail!(
            "ublk device {d} not found (no /sys/class/ublk-char/ublkc{d} or /sys/block/ublkb{d})"
        );
    }
    let findings: Vec<_> = devices
        .iter()
        .flat_map(|d| session.findings(*d, now))
        .collect();
    let (source, note) = crate::cmd::watch::headless::source_names(session.source());
    let observed_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    if args.json {
        let doc = DiagnoseJson {
            kind: "ublk-trace.diagnose",
            version: JSON_VERSION,
            devices: devices.clone(),
            observed_ms,
            source: source.to_string(),
            source_note: note,
            dropped_events: session.dropped_events(),
            findings: findings.iter().map(FindingJson::from).collect(),
        };
        println!("{}", serde_json::to_string(&doc).context("encode JSON")?);
    } else {
        let note = note
            .map(|n| format!("snapshots only: {n}"))
            .unwrap_or_else(|| source.to_string());
        print!(
            "{}",
            output::human_report(&findings, &devices, observed_ms, &note)
        );
    }
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
