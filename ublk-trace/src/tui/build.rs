//! `build`: the live model (+ findings) at `now_ns` turned into a [`ViewModel`]. Pure: no I/O,
//! no clock; the header facts the model does not keep come from its latest snapshot.

use crate::diagnose::{self, Finding};
use crate::model::{DeviceView, Histogram, HistoryEntry, Model, TagState, TagView};

use super::snapshot_view;
use super::view_model::fmt_age;
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
    /// Since when the probes stream the detail tag's every event, and the programs that
    /// could not be attached for it (None: not streamed).
    pub following: Option<(u64, &'a [String])>,
}

pub fn cell_state(s: TagState) -> CellState {
    match s {
        TagState::Unknown => CellState::Unknown,
        TagState::Waiting => CellState::Waiting,
        TagState::Queued => CellState::Queued,
        TagState::InServer => CellState::InServer,
        TagState::Committed => CellState::Committed,
        TagState::InFlight => CellState::InFlight,
        TagState::NotFetched => CellState::Idle,
        TagState::Aborted => CellState::Aborted,
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
        tags: f.tags.clone(),
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
        stream_lag_ns: 0,
        source: input.source.clone(),
        driver_off: None,
        per_io: None,
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

/// The driver's view of a tag as detail lines: its `ublk_io` and blk-mq request.
fn driver_lines(t: &crate::model::tag::Tag, now_ns: u64) -> Vec<String> {
    let Some(d) = t.driver.as_ref() else {
        return Vec::new();
    };
    let flags = if d.flags.names.is_empty() {
        "none".to_string()
    } else {
        d.flags.names.join("|")
    };
    let mut v = vec![format!(
        "driver ({} ago): {}, flags {flags} ({:#x}), res {}, command {}",
        fmt_age(now_ns.saturating_sub(d.read_ns)),
        d.view.name(),
        d.flags.raw,
        d.res,
        if d.cmd_parked { "parked" } else { "not parked" }
    )];
    if let Some(tid) = d.task_tid {
        v.push(format!("  io task tid {tid}"));
    }
    match &d.request {
        Some(r) => v.push(format!(
            "  request {:?} {} {} bytes @ sector {}{}",
            r.state,
            r.op,
            r.bytes,
            r.sector,
            r.start_time_ns
                .filter(|s| *s > 0)
                .map(|s| format!(", started {} ago", fmt_age(now_ns.saturating_sub(s))))
                .unwrap_or_default()
        )),
        None => v.push("  no request on the tag".into()),
    }
    v
}

fn detail(
    d: &DeviceView,
    q_id: u16,
    tag: u16,
    source: &SourceView,
    following: Option<(u64, &[String])>,
) -> TagDetail {
    let t = d
        .queue(q_id)
        .map(|q| q.tag(tag))
        .filter(|t| t.state != TagState::Unknown || t.raw.is_some());
    let note = match (source, following) {
        (SourceView::SnapshotsOnly { .. }, _) => {
            Some("snapshots only: no event history (eBPF probes are off)".to_string())
        }
        (_, Some((since, missing))) => {
            let mut n = format!(
                "streaming this tag's events since {} ago",
                fmt_age(d.now_ns().saturating_sub(since))
            );
            if !missing.is_empty() {
                n.push_str(&format!("; not attached: {}", missing.join(", ")));
            }
            Some(n)
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
            last_request: false,
            driver: Vec::new(),
        };
    };
    let mut d = TagDetail {
        q_id,
        tag,
        state: cell_state(t.state),
        age_ns: age(&t),
        op: t.op.to_string(),
        sector: None,
        bytes: None,
        owner_tid: t.owner_tid.unwrap_or(0),
        history: t.history().map(history_line).collect(),
        history_note: note,
        last_request: !t.state.busy(),
        driver: t
            .raw
            .map(|r| driver_lines(r, d.now_ns()))
            .unwrap_or_default(),
    };
    if !t.op.is_empty() {
        d.sector = Some(t.sector);
        d.bytes = Some(t.bytes);
    } else if let Some(p) = t.published {
        // Attached after the request started: the server's tag file still knows what it is.
        d.op = ublk_abi::io_op_name(p.op).to_string();
        d.sector = Some(p.start_sector);
        d.bytes = Some(p.nr_sectors.saturating_mul(512));
    }
    if d.owner_tid == 0
        && let Some(p) = t.published
    {
        d.owner_tid = p.tid;
    }
    if d.history.is_empty() && d.history_note.is_none() {
        let from = if t.from_driver {
            "the driver's memory"
        } else {
            "snapshots"
        };
        d.history_note = Some(format!(
            "nothing seen since the tracer attached: the state comes from {from}"
        ));
    }
    d
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
    vm.detail = input
        .detail
        .map(|(q, t)| detail(&d, q, t, &input.source, input.following));
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

    use crate::model::testutil::{delivered, fetch, queue_rq, setup};
    use crate::snapshot::tagfile::{PublishedTag, TagFileSnapshot};
    use crate::snapshot::{DevInfo, DeviceSnapshot};

    const S: u64 = 1_000_000_000;

    fn input(findings: &[FindingView], detail: Option<(u16, u16)>) -> BuildInput<'_> {
        BuildInput {
            dev_id: 0,
            now_ns: 10 * S,
            source: SourceView::Live,
            findings,
            detail,
            following: None,
        }
    }

    #[test]
    fn events_give_each_tag_its_state_age_and_history() {
        let mut m = Model::new();
        m.apply_all(setup(0, 2, 4, S).iter());
        m.apply(&queue_rq(0, 1, 3, 2 * S, "READ", 4096));
        m.apply(&delivered(0, 1, 3, 2 * S + 1000, 77));
        let f = FindingView {
            class: "STUCK_IN_SERVER".into(),
            severity: Severity::Error,
            dev_id: 0,
            q_id: Some(1),
            tag: Some(3),
            pids: vec![7],
            age_ns: Some(8 * S),
            summary: String::new(),
            evidence: Vec::new(),
            hint: String::new(),
            tags: Vec::new(),
        };
        let vm = build(&m, &input(std::slice::from_ref(&f), Some((1, 3))));
        let cell = vm.cell(1, 3).cloned();
        assert_eq!(
            cell.as_ref().map(|c| c.state),
            Some(CellState::InServer),
            "{cell:?}"
        );
        assert!(
            cell.as_ref().is_some_and(|c| c.flagged),
            "the finding marks its tag"
        );
        // q0 t3 is idle: a waiting tag is not flagged by someone else's finding.
        assert!(
            vm.cell(0, 3)
                .is_some_and(|c| !c.flagged && c.state == CellState::Waiting)
        );
        assert_eq!(vm.oldest.first().map(|r| (r.q_id, r.tag)), Some((1, 3)));
        let d = vm.detail.unwrap_or_else(|| panic!("detail requested"));
        assert_eq!((d.op.as_str(), d.bytes), ("READ", Some(4096)));
        assert!(d.history.iter().any(|h| h.tid == 77), "{:?}", d.history);
    }

    #[test]
    fn late_attach_detail_falls_back_to_the_servers_tag_file() {
        let tag = PublishedTag {
            q_id: 0,
            tag: 1,
            state: "in_server".into(),
            op: u32::from(ublk_abi::UBLK_IO_OP_WRITE),
            start_sector: 2048,
            nr_sectors: 8,
            result: 0,
            waiting_since_ns: S,
            received_ns: 2 * S,
            committed_ns: 0,
            tid: 4243,
            fault: 1,
            seq: 1,
        };
        let snap = DeviceSnapshot {
            dev_id: 0,
            taken_ns: 9 * S,
            char_dev_present: true,
            block_dev_present: true,
            dev_info: Some(DevInfo {
                state: 1,
                ublksrv_pid: 4242,
                nr_hw_queues: 1,
                queue_depth: 4,
                flags: 0,
                max_io_buf_bytes: 0,
            }),
            blk: Some(crate::snapshot::blkmq::BlkMqSnapshot {
                hctxs: vec![crate::snapshot::blkmq::HctxSnapshot {
                    index: 0,
                    busy: vec![crate::snapshot::blkmq::RqLine {
                        op: "WRITE".into(),
                        cmd_flags: Vec::new(),
                        rq_flags: Vec::new(),
                        state: "in_flight".into(),
                        tag: 1,
                        internal_tag: -1,
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            tagfile: Some(TagFileSnapshot {
                path: "ublkb0.tags".into(),
                pid: 4242,
                nr_queues: 1,
                queue_depth: 4,
                start_ns: S,
                heartbeat_ns: 9 * S,
                fault_mask: 1,
                tags: vec![tag],
            }),
            proc_scanned: true,
            // A tag file counts only while its server is alive.
            servers: vec![crate::snapshot::ServerProcess {
                pid: 4242,
                comm: "ublk-server".into(),
                threads: Vec::new(),
                rings: Vec::new(),
            }],
            ..Default::default()
        };
        let mut m = Model::new();
        m.apply_snapshot(&snap, 9 * S);
        let vm = build(&m, &input(&[], Some((0, 1))));
        assert_eq!(vm.queues.len(), 1);
        assert_eq!(vm.queues[0].tags.len(), 4, "depth from GET_DEV_INFO");
        let d = vm.detail.unwrap_or_else(|| panic!("detail requested"));
        // In flight per debugfs; which busy state the model picks is the model's business.
        assert!(d.state.in_flight(), "{:?}", d.state);
        assert_eq!(
            (d.op.as_str(), d.sector, d.bytes),
            ("WRITE", Some(2048), Some(4096))
        );
        assert_eq!(d.owner_tid, 4243);
        assert!(d.history_note.is_some(), "says why there is no history");
        assert_eq!(vm.header.dev_state.as_deref(), Some("LIVE"));
        // A fetch seen now does not erase the tag file's facts of another tag.
        m.apply_all(fetch(0, 0, 2, 9 * S, 4243).iter());
        assert!(
            build(&m, &input(&[], None))
                .cell(0, 2)
                .is_some_and(|c| c.state == CellState::Waiting)
        );
    }

    #[test]
    fn detail_shows_the_drivers_view_and_a_streamed_tag_says_since_when() {
        use crate::driver::TagView as V;
        use crate::model::testutil::{driver_rq, driver_snap, driver_tag};
        let mut m = Model::new();
        m.apply_driver(&driver_snap(
            9 * S,
            vec![
                driver_tag(0, V::Waiting, None),
                driver_tag(1, V::InServer, Some(driver_rq(8 * S))),
            ],
        ));
        let missing = vec!["ublk_dispatch_req (no kprobes)".to_string()];
        let mut i = input(&[], Some((0, 1)));
        i.following = Some((9 * S, &missing));
        let d = build(&m, &i).detail.expect("detail");
        assert!(!d.last_request);
        assert!(d.driver[0].contains("IN_SERVER"), "{:?}", d.driver);
        assert!(
            d.driver
                .iter()
                .any(|l| l.contains("READ 4096 bytes @ sector 2048")
                    && l.contains("started 2.0s ago")),
            "{:?}",
            d.driver
        );
        let note = d.history_note.unwrap_or_default();
        assert!(
            note.contains("streaming this tag's events since 1.0s ago"),
            "{note}"
        );
        assert!(note.contains("not attached: ublk_dispatch_req"), "{note}");
        // An idle tag: its request line is the last one, and the driver has no request.
        let d = build(&m, &input(&[], Some((0, 0)))).detail.expect("detail");
        assert!(d.last_request);
        assert!(d.driver.iter().any(|l| l.contains("no request on the tag")));
        let note = d.history_note.unwrap_or_default();
        assert!(
            note.contains("the state comes from the driver's memory"),
            "{note}"
        );
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
            following: None,
        };
        let vm = build(&m, &input);
        assert_eq!(vm.header.dev_id, 9);
        assert!(vm.queues.is_empty() && vm.detail.is_none());
    }
}
