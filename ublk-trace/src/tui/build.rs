//! `build`: the live model (+ findings) at `now_ns` turned into a [`ViewModel`]. Pure: no I/O,
//! no clock; the header facts the model does not keep come from its latest snapshot.

use crate::diagnose::{self, Finding};
use crate::model::{DeviceView, Histogram, HistoryEntry, Model, TagState, TagView};

use super::snapshot_view;
use super::view_model::{
    CellState, FindingView, HeaderView, HistoryLine, InflightRow, LatencyBucket, QueueView,
    Severity, SourceView, TagCell, TagDetail, ViewModel,
};

/// Rows in the oldest-in-flight list.
const OLDEST_ROWS: usize = 32;
/// Seconds of IOPS history in the header sparkline.
const IOPS_SECONDS: usize = 60;
/// Decade latency buckets (exclusive upper bounds), the last one open.
const DECADES_NS: [u64; 8] = [
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
    u64::MAX,
];

/// What the caller knows that the model does not.
#[derive(Debug, Clone)]
pub struct BuildInput<'a> {
    pub dev_id: u32,
    pub now_ns: u64,
    pub source: SourceView,
    pub findings: &'a [FindingView],
    /// The tag the detail view shows.
    pub detail: Option<(u16, u16)>,
}

pub fn cell_state(s: TagState) -> CellState {
    match s {
        TagState::Unknown => CellState::Unknown,
        TagState::Waiting => CellState::Waiting,
        TagState::Queued => CellState::Queued,
        TagState::InServer => CellState::InServer,
        TagState::Committed => CellState::Committed,
        TagState::InFlight => CellState::InFlight,
    }
}

/// A diagnosis finding as the screen and the JSON show it.
pub fn finding_view(f: &Finding) -> FindingView {
    FindingView {
        class: f.class.name().to_string(),
        severity: match f.severity {
            diagnose::Severity::Info => Severity::Info,
            diagnose::Severity::Warning => Severity::Warning,
            diagnose::Severity::Error => Severity::Error,
        },
        dev_id: f.dev,
        q_id: f.queue,
        tag: f.tag,
        pids: f.pids.clone(),
        // 0 means "not measured" as often as "just now": show no age rather than 0us.
        age_ns: (f.age_ms > 0).then(|| f.age_ms.saturating_mul(1_000_000)),
        summary: f.summary.clone(),
        evidence: f.evidence.clone(),
        hint: f.hint.clone(),
    }
}

fn age(t: &TagView) -> Option<u64> {
    (t.since_ns > 0).then_some(t.age_ns)
}

fn header(d: Option<&DeviceView>, model: &Model, input: &BuildInput) -> HeaderView {
    let snap = d.and_then(|d| d.snapshot());
    HeaderView {
        dev_id: input.dev_id,
        dev_state: snap.and_then(snapshot_view::dev_state_name),
        server: snap
            .and_then(|s| s.servers.first())
            .map(snapshot_view::server_view),
        features: snap.map(snapshot_view::feature_names).unwrap_or_default(),
        iops_history: d.map(|d| d.iops_series(IOPS_SECONDS)).unwrap_or_default(),
        dropped_events: model.lost_events(),
        source: input.source.clone(),
    }
}

fn queues(d: &DeviceView, findings: &[FindingView]) -> Vec<QueueView> {
    d.queues()
        .iter()
        .map(|q| QueueView {
            q_id: q.q_id(),
            tags: q
                .tags()
                .iter()
                .map(|t| TagCell {
                    tag: t.tag,
                    state: cell_state(t.state),
                    age_ns: age(t),
                    flagged: findings.iter().any(|f| f.names_tag(t.q_id, t.tag)),
                })
                .collect(),
        })
        .collect()
}

fn inflight_row(t: &TagView) -> InflightRow {
    let known = !t.op.is_empty();
    InflightRow {
        q_id: t.q_id,
        tag: t.tag,
        state: cell_state(t.state),
        age_ns: t.age_ns,
        op: t.op.to_string(),
        sector: known.then_some(t.sector),
        bytes: known.then_some(t.bytes),
    }
}

/// Re-bucket the fine histogram into decades (a bucket goes by its upper bound).
pub fn decade_buckets<'h>(hists: impl Iterator<Item = &'h Histogram>) -> Vec<LatencyBucket> {
    let mut out: Vec<LatencyBucket> = DECADES_NS
        .iter()
        .map(|&upper_ns| LatencyBucket { upper_ns, count: 0 })
        .collect();
    for h in hists {
        for (upper, count) in h.buckets() {
            if let Some(b) = out
                .iter_mut()
                .find(|b| upper < b.upper_ns || b.upper_ns == u64::MAX)
            {
                b.count += count;
            }
        }
    }
    out
}

fn latency(d: &DeviceView) -> Vec<LatencyBucket> {
    let qs = d.queues();
    let block: u64 = qs.iter().map(|q| q.block_latency().count()).sum();
    // Block latency is what users feel; without block tracepoints fall back to the server's.
    if block > 0 {
        decade_buckets(qs.iter().map(|q| q.block_latency()))
    } else {
        decade_buckets(qs.iter().map(|q| q.server_latency()))
    }
}

fn history_line(h: &HistoryEntry) -> HistoryLine {
    HistoryLine {
        ts_ns: h.ts_ns,
        tid: h.tid,
        text: h.what.to_string(),
    }
}

fn detail(d: &DeviceView, q_id: u16, tag: u16, source: &SourceView) -> TagDetail {
    let t = d
        .queue(q_id)
        .map(|q| q.tag(tag))
        .filter(|t| t.state != TagState::Unknown || t.raw.is_some());
    let note = match source {
        SourceView::SnapshotsOnly { .. } => {
            Some("snapshots only: no event history (eBPF probes are off)".to_string())
        }
        _ => None,
    };
    let Some(t) = t else {
        return TagDetail {
            q_id,
            tag,
            state: CellState::Unknown,
            age_ns: None,
            op: String::new(),
            sector: None,
            bytes: None,
            owner_tid: 0,
            history: Vec::new(),
            history_note: note,
        };
    };
    let known = !t.op.is_empty();
    TagDetail {
        q_id,
        tag,
        state: cell_state(t.state),
        age_ns: age(&t),
        op: t.op.to_string(),
        sector: known.then_some(t.sector),
        bytes: known.then_some(t.bytes),
        owner_tid: t.owner_tid.unwrap_or(0),
        history: t.history().map(history_line).collect(),
        history_note: note,
    }
}

/// The device screen for `input.dev_id`; an empty screen when the model has not seen it.
pub fn build(model: &Model, input: &BuildInput) -> ViewModel {
    let mut vm = ViewModel::empty(input.dev_id, input.source.clone());
    let d = model.device(input.dev_id, input.now_ns);
    vm.header = header(d.as_ref(), model, input);
    vm.findings = input.findings.to_vec();
    let Some(d) = d else {
        return vm;
    };
    vm.queues = queues(&d, input.findings);
    vm.oldest = d
        .oldest_in_flight(OLDEST_ROWS)
        .iter()
        .map(inflight_row)
        .collect();
    vm.latency = latency(&d);
    vm.detail = input.detail.map(|(q, t)| detail(&d, q, t, &input.source));
    vm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decades_put_each_fine_bucket_below_its_bound() {
        let mut h = Histogram::default();
        for _ in 0..3 {
            h.record(50_000); // 50us -> <100us
        }
        h.record(2_000_000_000); // 2s -> <10s
        let b = decade_buckets([&h].into_iter());
        let count_of = |upper| b.iter().find(|x| x.upper_ns == upper).map(|x| x.count);
        assert_eq!(count_of(100_000), Some(3));
        assert_eq!(count_of(10_000_000_000), Some(1));
        assert_eq!(b.iter().map(|x| x.count).sum::<u64>(), 4);
    }

    #[test]
    fn unseen_device_gives_an_empty_screen_with_its_id() {
        let m = Model::new();
        let input = BuildInput {
            dev_id: 9,
            now_ns: 1,
            source: SourceView::Live,
            findings: &[],
            detail: Some((0, 0)),
        };
        let vm = build(&m, &input);
        assert_eq!(vm.header.dev_id, 9);
        assert!(vm.queues.is_empty() && vm.detail.is_none());
    }
}
