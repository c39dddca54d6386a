//! Offline summary of a recording: replay the events through the model and the rules, then
//! tell per device/queue IOPS, bytes, latency (queue_rq -> commit, block issue -> complete),
//! the control-command timeline, tags never fetched and requests never completed.
//!
//! [`build`] is pure (a model in, a [`Report`] out); [`render_text`] prints it; the JSON form
//! is `serde_json` of [`Report`] (`"schema":"ublk-trace.report"`, versioned).
use serde::{Deserialize, Serialize};

use crate::diagnose::{self, Diagnosis, Thresholds};
use crate::model::tag::errno_name;
use crate::model::{Histogram, Model, TagState};

mod text;

pub use text::render_text;

pub const REPORT_SCHEMA: &str = "ublk-trace.report";
pub const REPORT_VERSION: u32 = 1;

fn report_kind() -> String {
    REPORT_SCHEMA.to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct Report {
    /// Always [`REPORT_SCHEMA`], as in every other JSON document (`schema` is the older name).
    #[serde(default = "report_kind")]
    pub kind: String,
    pub schema: String,
    pub version: u32,
    /// Where the events came from (file name), and the traced kernel when known.
    pub source: String,
    pub kernel: String,
    pub events: u64,
    pub lost_events: u64,
    /// First and last event timestamps (CLOCK_MONOTONIC ns).
    pub first_ns: u64,
    pub last_ns: u64,
    pub devices: Vec<DeviceReport>,
    pub ctrl: Vec<CtrlLine>,
    /// The rules evaluated at the last event.
    pub diagnosis: Diagnosis,
}

/// (q_id, tags) pairs.
pub type PerQueueTags = Vec<(u16, Vec<u16>)>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct DeviceReport {
    pub dev_id: u32,
    pub queues: Vec<QueueReport>,
    /// Tags without an accepted FETCH_REQ, per queue; `None` when the recording started
    /// after the device's setup (nothing can be said).
    pub never_fetched: Option<PerQueueTags>,
    /// How `never_fetched` knew the depth.
    pub depth_basis: String,
    /// Requests still open when the recording ended.
    pub never_completed: Vec<OpenRequest>,
    pub rejected_commands: u64,
    pub io_errors: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct QueueReport {
    pub q_id: u16,
    pub requests: u64,
    pub completed: u64,
    pub bytes: u64,
    /// Completions per second over the device's event span.
    pub iops: f64,
    pub server_latency: LatencySummary,
    pub block_latency: LatencySummary,
    pub requeues: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub max_ns: Option<u64>,
}

impl LatencySummary {
    fn of(h: &Histogram) -> Self {
        Self {
            count: h.count(),
            p50_ns: h.quantile_ns(0.5),
            p99_ns: h.quantile_ns(0.99),
            max_ns: (h.count() > 0).then(|| h.max_ns()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct OpenRequest {
    pub q_id: u16,
    pub tag: u16,
    pub state: TagState,
    pub op: String,
    pub sector: u64,
    pub bytes: u32,
    /// Time in `state` at the end of the recording.
    pub age_ns: u64,
}

/// One control command, times relative to the first event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct CtrlLine {
    pub at_ns: u64,
    pub dev_id: Option<u32>,
    pub op: String,
    pub pid: u32,
    pub comm: String,
    /// `None`: still pending at the end.
    pub duration_ns: Option<u64>,
    pub result: Option<i32>,
    pub result_name: String,
    pub eagain_retries: u32,
    /// A BATCH_IO command's queue and elements (`q0, 8 elements`), and what was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Labels for the report header.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub name: String,
    pub kernel: String,
}

/// Summarise a model that replayed a whole recording; rules are evaluated at its last event.
pub fn build(model: &Model, src: &Source, th: &Thresholds) -> Report {
    let (first_ns, last_ns) = model.event_span_ns();
    let devices = model
        .devices(last_ns)
        .map(|d| device_report(model, &d))
        .collect();
    let ctrl = model
        .ctrl()
        .iter()
        .map(|c| CtrlLine {
            at_ns: c.start_ns.saturating_sub(first_ns),
            dev_id: c.dev_id,
            op: c.op.clone(),
            pid: c.pid,
            comm: c.comm.clone(),
            duration_ns: c.end_ns.map(|e| e.saturating_sub(c.start_ns)),
            result: c.result,
            result_name: c.result.map_or_else(|| "PENDING".into(), result_name),
            eagain_retries: c.eagain,
            detail: None,
        })
        .chain(model.devices(last_ns).flat_map(|d| {
            let dev_id = d.dev_id();
            d.dev
                .batch_log
                .iter()
                .map(move |b| batch_line(dev_id, b, first_ns))
                .collect::<Vec<_>>()
        }))
        .collect::<Vec<_>>();
    let mut ctrl = ctrl;
    ctrl.sort_by_key(|c| c.at_ns);
    Report {
        kind: REPORT_SCHEMA.into(),
        schema: REPORT_SCHEMA.into(),
        version: REPORT_VERSION,
        source: src.name.clone(),
        kernel: src.kernel.clone(),
        events: model.events_applied(),
        lost_events: model.lost_events(),
        first_ns,
        last_ns,
        devices,
        ctrl,
        diagnosis: diagnose::diagnose_recording(model, last_ns, th),
    }
}

/// A BATCH_IO command as a line of the command timeline.
fn batch_line(dev_id: u32, b: &crate::model::device::BatchCmdLine, first_ns: u64) -> CtrlLine {
    let mut detail = format!("q{}, {} element(s)", b.q_id, b.nr_elem);
    if b.op == "FETCH_IO_CMDS" && b.ret == crate::event::EIOCBQUEUED_RET {
        detail.push_str(", armed (multishot)");
    }
    if let Some(r) = b.refused {
        detail.push_str(&format!(
            ", element {} (tag {}, result {}) refused: it and the rest not committed",
            r.index, r.tag, r.result
        ));
    }
    CtrlLine {
        at_ns: b.ts_ns.saturating_sub(first_ns),
        dev_id: Some(dev_id),
        op: b.op.clone(),
        pid: b.pid,
        comm: b.comm.clone(),
        duration_ns: Some(b.duration_ns),
        result: Some(b.ret),
        result_name: result_name(b.ret),
        eagain_retries: 0,
        detail: Some(detail),
    }
}

fn result_name(r: i32) -> String {
    if r >= 0 { r.to_string() } else { errno_name(r) }
}

fn device_report(model: &Model, d: &crate::model::DeviceView<'_>) -> DeviceReport {
    let dev = d.dev;
    let span_s = dev.last_event_ns.saturating_sub(dev.first_seen_ns) as f64 / 1e9;
    let queues: Vec<QueueReport> = d
        .queues()
        .iter()
        .map(|q| QueueReport {
            q_id: q.q_id(),
            requests: q.queue.requests,
            completed: q.queue.completed,
            bytes: q.queue.bytes,
            iops: if span_s > 0.0 {
                q.queue.completed as f64 / span_s
            } else {
                0.0
            },
            server_latency: LatencySummary::of(q.server_latency()),
            block_latency: LatencySummary::of(q.block_latency()),
            requeues: q.queue.requeues,
            rejected: q.queue.rejected,
        })
        .collect();
    let never_completed = d
        .queues()
        .iter()
        .flat_map(|q| q.tags())
        .filter(|t| t.state.busy())
        .map(|t| OpenRequest {
            q_id: t.q_id,
            tag: t.tag,
            state: t.state,
            op: t.op.to_string(),
            sector: t.sector,
            bytes: t.bytes,
            age_ns: t.age_ns,
        })
        .collect();
    let (never_fetched, depth_basis) = never_fetched(model, d);
    DeviceReport {
        dev_id: dev.dev_id,
        queues,
        never_fetched,
        depth_basis,
        never_completed,
        rejected_commands: dev.rejected_total,
        io_errors: dev.io_errors,
    }
}

/// Tags never fetched. A recording has no GET_DEV_INFO, so the depth is the geometry when a
/// snapshot gave one, else the highest tag seen on the device + 1 (a trailing tag that was
/// never fetched nor used cannot be seen). Only meaningful when ADD_DEV was recorded.
fn never_fetched(
    model: &Model,
    d: &crate::model::DeviceView<'_>,
) -> (Option<PerQueueTags>, String) {
    let add_seen = model
        .ctrl()
        .iter()
        .any(|c| c.dev_id == Some(d.dev_id()) && c.op == "ADD_DEV");
    if !add_seen {
        return (
            None,
            "the recording started after ADD_DEV: FETCHes before it were not seen".into(),
        );
    }
    let (depth, basis) = match d.geometry() {
        Some((_, depth)) => (depth, "queue depth from GET_DEV_INFO".to_string()),
        None => {
            let max = d
                .dev
                .queues
                .values()
                .filter_map(|q| q.tags.keys().next_back().copied())
                .max();
            let depth = max.map_or(0, |m| m.saturating_add(1));
            (
                depth,
                format!("depth {depth} inferred from the highest tag seen (no GET_DEV_INFO)"),
            )
        }
    };
    let missing = d
        .queues()
        .iter()
        .map(|q| {
            let tags: Vec<u16> = (0..depth)
                .filter(|t| q.tag(*t).raw.is_none_or(|r| r.fetch_ns == 0))
                .collect();
            (q.q_id(), tags)
        })
        .filter(|(_, t)| !t.is_empty())
        .collect();
    (Some(missing), basis)
}

#[cfg(test)]
mod tests;
