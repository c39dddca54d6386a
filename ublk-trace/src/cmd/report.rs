//! `ublk-trace report FILE [--json]`: replay a recording through the model and the rules and
//! summarise it (see `report/`). A bug bundle (`diagnose --bundle`, told by the gzip magic)
//! prints its findings, then the summary of its recording.
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::diagnose::Thresholds;
use crate::model::Model;
use crate::record::JsonlReader;
use crate::report::{self, Source};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A recording made by `ublk-trace record -o FILE` (JSON lines), or a bug bundle made by
    /// `ublk-trace diagnose dev N --bundle FILE.tar.gz`.
    pub file: PathBuf,
    /// Print JSON (schema "ublk-trace.report", version 1) instead of text.
    #[arg(long)]
    pub json: bool,
    /// A request in the server (or queued) this long at the end of the recording is stuck.
    #[arg(long, default_value_t = Thresholds::default().stuck_ms, value_name = "MS")]
    pub stuck_ms: u64,
    /// A control command pending this long at the end is reported.
    #[arg(long, default_value_t = Thresholds::default().ctrl_ms, value_name = "MS")]
    pub ctrl_ms: u64,
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let th = Thresholds {
        stuck_ms: args.stuck_ms,
        ctrl_ms: args.ctrl_ms,
        ..Thresholds::default()
    };
    let out = report_file(&args.file, args.json, &th)?;
    use std::io::Write;
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("write the report to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// The report of one recording or bundle, as text or JSON.
pub fn report_file(path: &Path, json: bool, th: &Thresholds) -> anyhow::Result<String> {
    let gzip = crate::bundle::is_gzip(path)
        .with_context(|| format!("open recording or bundle {}", path.display()))?;
    if gzip {
        return report_bundle(path, json, th);
    }
    let (model, src) = replay(path)?;
    let r = report::build(&model, &src, th);
    if json {
        let mut s = serde_json::to_string_pretty(&r).context("encode the report as JSON")?;
        s.push('\n');
        Ok(s)
    } else {
        Ok(report::render_text(&r))
    }
}

/// Stream every event of the recording into a fresh model (memory stays bounded by the model,
/// not by the file).
fn replay(path: &Path) -> anyhow::Result<(Model, Source)> {
    let reader =
        JsonlReader::open(path).with_context(|| format!("open recording {}", path.display()))?;
    replay_from(&path.display().to_string(), reader)
}

fn replay_from<R: BufRead>(name: &str, reader: JsonlReader<R>) -> anyhow::Result<(Model, Source)> {
    let src = Source {
        name: name.to_string(),
        kernel: reader.header().kernel.clone(),
    };
    let mut model = Model::new();
    for ev in reader {
        let ev = ev.with_context(|| {
            format!(
                "read {name}; fix or truncate the damaged line (the recording may have been cut short)"
            )
        })?;
        model.apply(&ev);
    }
    Ok((model, src))
}

/// `report BUNDLE.tar.gz --json`: the manifest, the findings document and the recording's
/// report (null when the bundle has none).
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct BundleReportJson {
    /// Always `ublk-trace.bundle-report`.
    kind: &'static str,
    version: u32,
    manifest: crate::bundle::Manifest,
    findings: serde_json::Value,
    recording: Option<report::Report>,
}

/// A bug bundle: what was collected, the findings, then the recording's summary.
fn report_bundle(path: &Path, json: bool, th: &Thresholds) -> anyhow::Result<String> {
    let b = crate::bundle::Bundle::open(path)?;
    let m = b
        .manifest()
        .with_context(|| format!("{}", path.display()))?;
    let rec_name = format!("{}:recording.jsonl", path.display());
    let recording = match b.get("recording.jsonl") {
        Some(bytes) => {
            let reader = JsonlReader::new(rec_name.clone(), bytes)
                .with_context(|| format!("open {rec_name}"))?;
            let (model, src) = replay_from(&rec_name, reader)?;
            Some(report::build(&model, &src, th))
        }
        None => None,
    };
    let findings_json = b.get("findings.json").unwrap_or_default();
    if json {
        let doc = BundleReportJson {
            kind: "ublk-trace.bundle-report",
            version: 1,
            findings: serde_json::from_slice(findings_json).unwrap_or(serde_json::Value::Null),
            manifest: m,
            recording,
        };
        let mut s = serde_json::to_string_pretty(&doc).context("encode the report as JSON")?;
        s.push('\n');
        return Ok(s);
    }
    Ok(bundle_text(path, &m, &b, recording.as_ref()))
}

/// Header, findings, then the recording's summary (or why there is none).
fn bundle_text(
    path: &Path,
    m: &crate::bundle::Manifest,
    b: &crate::bundle::Bundle,
    recording: Option<&report::Report>,
) -> String {
    let mut out = bundle_header(path, m);
    out.push_str("\n== findings ==\n");
    match b.get("findings.txt") {
        Some(t) => out.push_str(&String::from_utf8_lossy(t)),
        None => out.push_str("(no findings.txt in the bundle)\n"),
    }
    out.push_str("\n== recording ==\n");
    match recording {
        Some(r) => {
            // The replay knows only the recorded seconds; a hang older than them is in the
            // findings above (from the snapshots), not in the recording's own findings.
            out.push_str(
                "(events seen while diagnose observed; what began earlier is in the findings above)\n",
            );
            out.push_str(&report::render_text(r));
        }
        None => {
            let why = b
                .get("recording.txt")
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .unwrap_or_else(|| "no recording.jsonl in the bundle\n".into());
            out.push_str(&why);
        }
    }
    out
}

/// Who wrote the bundle, when, on what, and what it lacks.
fn bundle_header(path: &Path, m: &crate::bundle::Manifest) -> String {
    let mut s = format!(
        "bundle {}: ublk-trace {}, kernel {}, {}\n  command: {}\n  {} files; devices {:?}, observed {} ms ({})\n",
        path.display(),
        m.tool_version,
        m.kernel,
        m.created_utc,
        m.command_line.join(" "),
        m.files.len() + 1,
        m.devices,
        m.observed_ms,
        m.source_note
            .as_deref()
            .map_or_else(|| m.source.clone(), |n| format!("{}: {n}", m.source)),
    );
    // The manifest has them all; a report names the first few (a non-root run misses many).
    const SHOWN: usize = 12;
    for x in m.not_collected.iter().take(SHOWN) {
        s.push_str(&format!("  not collected: {}: {}\n", x.what, x.why));
    }
    if m.not_collected.len() > SHOWN {
        s.push_str(&format!(
            "  ... and {} more not collected (see MANIFEST.json)\n",
            m.not_collected.len() - SHOWN
        ));
    }
    s
}
