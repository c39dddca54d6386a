//! `ublk-trace diagnose dev N [--for S] [--json] [--bundle FILE.tar.gz]` and `diagnose --all`:
//! observe (snapshots and, when available, events) for a while, run the rules, print the
//! findings; with `--bundle`, also pack everything for a bug report (see `bundle`).
//! Exit code: 0 no findings, 1 findings, 2 error (mapped in main).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod bundle;
pub mod output;

use crate::cmd::watch::headless::PROBE_WAIT;
use crate::cmd::watch::session::Session;
use crate::cmd::watch::sources::{Msg, RoundTracker};
use crate::cmd::watch::{DevTarget, start_sources};
use crate::diagnose::{Diagnosis, Thresholds};
use crate::snapshot::read::monotonic_ns;
use crate::tui::build::finding_view;

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
    #[command(flatten)]
    pub per_io: crate::cmd::watch::PerIoArg,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    /// Also write a bug bundle (gzip-compressed tar) with everything a maintainer asks for.
    #[arg(long, value_name = "FILE.tar.gz", long_help = BUNDLE_HELP)]
    pub bundle: Option<PathBuf>,
}

const BUNDLE_HELP: &str = "\
Also write a bug bundle: a gzip-compressed tar with everything a maintainer asks for. \
Open it with 'ublk-trace report FILE.tar.gz' (or tar xzf). The findings are printed as usual.
With --bundle the probes get up to 60 s to load and events are recorded for --for seconds \
(at least 2) once they run; a stream lagging under load is waited for up to 3x that \
(MANIFEST.json's recording.duration_ms says how much was recorded). Written to a temp file next to FILE, then renamed: never partial.
Layout, under ublk-bundle-<UTC time>/:
  MANIFEST.json        version, kernel, time, command line, files, what was not collected and why
  findings.txt/.json   the findings (text, and the --json document)
  doctor.txt/.json     'ublk-trace doctor'
  recording.jsonl      events seen while observing, as 'record' writes them (recording.txt: why none)
  kmsg.txt             kernel log tail
  devN/snapshot.json   parsed snapshot: GET_DEV_INFO, blk-mq, inflight, procfs, fdinfo, tag-state file
  devN/stacks.txt      kernel stacks of the server threads and the D-state waiters
  devN/sysfs/ devN/debugfs/   /sys/block/ublkbN files; the blk-mq debugfs tree
  devN/server-PID/ devN/waiter-PID/   status, fd.txt, fdinfo/FD (io_uring), task/TID/{stat,wchan,stack,...}
  devN/tagstate.bin    the server's tag-state file (ublk-server only)";

/// Rule thresholds as flags (defaults from `diagnose::Thresholds`), shared with `watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct ThresholdArgs {
    /// A request in the server, or queued and not delivered, this long is stuck (ms).
    #[arg(long, value_name = "MS", default_value_t = Thresholds::default().stuck_ms)]
    pub stuck_ms: u64,
    /// Requests held in the block layer this long are reported (ms).
    #[arg(long, value_name = "MS", default_value_t = Thresholds::default().held_ms)]
    pub held_ms: u64,
    /// A control command pending this long is reported (ms).
    #[arg(long, value_name = "MS", default_value_t = Thresholds::default().ctrl_ms)]
    pub ctrl_ms: u64,
    /// A task in D state on the disk this long is a waiter (ms).
    #[arg(long, value_name = "MS", default_value_t = Thresholds::default().waiter_ms)]
    pub waiter_ms: u64,
    /// Completions slower than this are SLOW (informational, ms).
    #[arg(long, value_name = "MS", default_value_t = Thresholds::default().slow_ms)]
    pub slow_ms: u64,
}

impl ThresholdArgs {
    pub fn to_thresholds(&self) -> Thresholds {
        Thresholds {
            stuck_ms: self.stuck_ms,
            held_ms: self.held_ms,
            ctrl_ms: self.ctrl_ms,
            waiter_ms: self.waiter_ms,
            slow_ms: self.slow_ms,
            ..Thresholds::default()
        }
    }
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

/// Feed the session until `window` has passed and at least one full round arrived. With a
/// `capture` (a bundle), wait longer for the probes and record at least `MIN_RECORD`.
fn observe(
    session: &mut Session,
    args: &DiagnoseArgs,
    dev: Option<u32>,
    window: Duration,
    mut capture: Option<&mut bundle::Capture>,
) -> anyhow::Result<()> {
    let period = Duration::from_millis(args.interval.max(50));
    let sources = match capture.as_deref() {
        Some(c) => bundle::start_sources(dev, period, args.no_probes, c)?,
        None => start_sources(dev, period, args.no_probes, args.per_io.mode)?,
    };
    let start = Instant::now();
    // Loading eBPF parses BTF (seconds in a TCG guest): wait for it a bounded time, then go
    // on with snapshots, which are what a late attach relies on anyway.
    let (probe_wait, record_for) = match capture {
        Some(_) => (
            window.max(bundle::PROBE_WAIT),
            window.max(bundle::MIN_RECORD),
        ),
        None => (window.max(PROBE_WAIT), Duration::ZERO),
    };
    // A hung device's snapshot is bounded by its deadline; this bounds the whole wait.
    let give_up = start
        + window
        + Duration::from_secs(15)
        + capture
            .as_ref()
            .map_or(Duration::ZERO, |_| probe_wait + record_for);
    let mut have_round = false;
    let mut tracker = RoundTracker::default();
    // The driver's memory is the per-tag truth a late attach needs: worth twice the probes'
    // wait on a machine too loaded to open the reader sooner (the whole wait stays bounded).
    let driver_wait = probe_wait * 2;
    let done = |have_round: bool, s: &Session, c: Option<&bundle::Capture>| {
        let waited = start.elapsed();
        let probes = s.source_known() || waited >= probe_wait;
        let driver = s.driver_known() || waited >= driver_wait;
        let settled = probes && driver;
        let recorded = c.is_none_or(|c| c.recorded_enough(record_for, settled));
        have_round && waited >= window && settled && recorded
    };
    while Instant::now() < give_up && !done(have_round, session, capture.as_deref()) {
        match sources.recv(Duration::from_millis(50)) {
            Ok(msg) => {
                have_round |= tracker.observe(&msg, dev);
                if let Some(c) = capture.as_deref_mut() {
                    c.observe(&msg);
                }
                session.apply(msg);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the snapshot source stopped")
            }
        }
    }
    if !session.source_known() {
        session.apply(Msg::ProbesOff(format!(
            "eBPF probes still loading after {probe_wait:?}"
        )));
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
    // Before minutes of observing: an unwritable destination fails now.
    let pending = args
        .bundle
        .as_deref()
        .map(crate::bundle::Pending::create)
        .transpose()?;
    let mut capture = pending.as_ref().map(|_| bundle::Capture::default());
    let mut session = Session::new();
    session.set_thresholds(args.thresholds.to_thresholds());
    observe(&mut session, &args, dev, window, capture.as_mut()).context("observe")?;
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
    let diagnosis = session.diagnosis(now);
    let (source, note) = crate::cmd::watch::headless::source_names(session.source());
    let observed_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    let report = Report {
        devices: &devices,
        observed_ms,
        source,
        note,
        probes_live_ms: session.probes_live_ms(),
        driver: crate::cmd::watch::headless::driver_json(session.driver_source()),
        per_io: crate::cmd::watch::headless::per_io_json(session.per_io()),
        dropped_events: session.dropped_events(),
    };
    let out = render_report(&report, &diagnosis)?;
    print!("{}", if args.json { &out.json } else { &out.text });
    if let (Some(dest), Some(path), Some(c)) = (pending, args.bundle.as_deref(), capture.as_ref()) {
        let outcome = bundle::Outcome {
            devices: &devices,
            dev,
            observed_ms,
            source: report.source,
            source_note: report.note.clone(),
            findings_text: out.text,
            findings_json: out.json,
        };
        bundle::write(dest, path, c, outcome).context("write the bug bundle")?;
    }
    Ok(if out.problems {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// What was observed, for the report's header.
struct Report<'a> {
    devices: &'a [u32],
    observed_ms: u64,
    source: &'static str,
    note: Option<String>,
    probes_live_ms: Option<u64>,
    driver: crate::cmd::watch::headless::DriverJson,
    per_io: Option<crate::cmd::watch::headless::PerIoJson>,
    dropped_events: u64,
}

/// The report in both forms, and whether any finding is a problem (not just SLOW).
struct Rendered {
    text: String,
    /// One line, newline-terminated.
    json: String,
    problems: bool,
}

/// Findings of the observed devices, as text and as the JSON document.
fn render_report(r: &Report, d: &Diagnosis) -> anyhow::Result<Rendered> {
    let mine = |dev: u32| r.devices.contains(&dev);
    let findings: Vec<_> = d.findings.iter().filter(|f| mine(f.dev)).collect();
    let problems = findings.iter().any(|f| f.is_problem());
    let views: Vec<_> = findings.iter().map(|f| finding_view(f)).collect();
    let rechecks: Vec<String> = d
        .rechecks
        .iter()
        .filter(|c| mine(c.dev))
        .map(|c| format!("dev {} {}: {}", c.dev, c.class.name(), c.reason))
        .collect();
    let doc = DiagnoseJson {
        kind: "ublk-trace.diagnose",
        version: JSON_VERSION,
        devices: r.devices.to_vec(),
        observed_ms: r.observed_ms,
        source: r.source.to_string(),
        source_note: r.note.clone(),
        probes_live_ms: r.probes_live_ms,
        driver: r.driver.clone(),
        per_io: r.per_io.clone(),
        dropped_events: r.dropped_events,
        findings: views.iter().map(FindingJson::from).collect(),
        undecided: rechecks.clone(),
    };
    let mut json = serde_json::to_string(&doc).context("encode JSON")?;
    json.push('\n');
    let mut note = match &r.note {
        Some(n) => format!("snapshots only: {n}"),
        None => r.source.to_string(),
    };
    if let Some(p) = &r.per_io {
        note.push_str(&format!(", per-I/O {}", p.mode));
        if let Some(n) = &p.note {
            note.push_str(&format!(" ({n})"));
        }
    }
    let mut text = output::human_report(&views, r.devices, r.observed_ms, &note);
    for c in &rechecks {
        text.push_str(&format!("could not decide: {c}\n"));
    }
    Ok(Rendered {
        text,
        json,
        problems,
    })
}
