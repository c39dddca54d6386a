//! `ublk-trace report FILE [--json]`: replay a recording through the model and the rules and
//! summarise it (see `report/`).
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::diagnose::Thresholds;
use crate::model::Model;
use crate::record::JsonlReader;
use crate::report::{self, Source};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A recording made by `ublk-trace record -o FILE` (JSON lines).
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

/// The report of one recording, as text or JSON.
pub fn report_file(path: &Path, json: bool, th: &Thresholds) -> anyhow::Result<String> {
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
    let src = Source {
        name: path.display().to_string(),
        kernel: reader.header().kernel.clone(),
    };
    let mut model = Model::new();
    for ev in reader {
        let ev = ev.with_context(|| {
            format!(
                "read {}; fix or truncate the damaged line (the recording may have been cut short)",
                path.display()
            )
        })?;
        model.apply(&ev);
    }
    Ok((model, src))
}
