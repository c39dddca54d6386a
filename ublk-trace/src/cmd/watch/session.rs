//! The one owner of everything observed: latest snapshots, the model, findings, probe status.
//! `watch` (TUI and headless) and `diagnose` feed it [`Msg`]s and ask it for views.

use std::collections::BTreeMap;

use crate::snapshot::DeviceSnapshot;
use crate::tui::snapshot_view;
use crate::tui::view_model::{
    CellState, DeviceRow, FindingView, HeaderView, QueueView, SourceView, TagCell, ViewModel,
};

use super::sources::Msg;

/// Everything the loop knows.
#[derive(Debug)]
pub struct Session {
    devices: Vec<u32>,
    snapshots: BTreeMap<u32, DeviceSnapshot>,
    source: SourceView,
    dropped_events: u64,
    /// The tag whose event history the detail view shows.
    pub detail: Option<(u16, u16)>,
}

impl Session {
    /// Probes start as off until the probe thread says otherwise.
    pub fn new(initial_source: SourceView) -> Self {
        Self {
            devices: Vec::new(),
            snapshots: BTreeMap::new(),
            source: initial_source,
            dropped_events: 0,
            detail: None,
        }
    }

    pub fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Devices(d) => {
                self.snapshots.retain(|id, _| d.contains(id));
                self.devices = d;
            }
            Msg::Snapshot(s) => {
                self.snapshots.insert(s.dev_id, *s);
            }
            Msg::Events(_events) => {}
            Msg::ProbesLive => self.source = SourceView::Live,
            Msg::ProbesOff(reason) => self.source = SourceView::SnapshotsOnly { reason },
            Msg::Lost(n) => self.dropped_events = n,
        }
    }

    pub fn source(&self) -> &SourceView {
        &self.source
    }

    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    pub fn devices(&self) -> &[u32] {
        &self.devices
    }

    /// A snapshot of this device has arrived (so a view of it means something).
    pub fn has_snapshot(&self, dev: u32) -> bool {
        self.snapshots.contains_key(&dev)
    }

    /// Findings for one device, worst first.
    pub fn findings(&self, _dev: u32, _now_ns: u64) -> Vec<FindingView> {
        Vec::new()
    }

    /// All findings of all devices seen, worst first.
    pub fn all_findings(&self, now_ns: u64) -> Vec<FindingView> {
        let mut out: Vec<FindingView> = self
            .snapshots
            .keys()
            .flat_map(|d| self.findings(*d, now_ns))
            .collect();
        out.sort_by_key(|f| std::cmp::Reverse(f.severity));
        out
    }

    fn header(&self, dev: u32) -> HeaderView {
        let s = self.snapshots.get(&dev);
        HeaderView {
            dev_id: dev,
            dev_state: s.and_then(snapshot_view::dev_state_name),
            server: s
                .and_then(|s| s.servers.first())
                .map(snapshot_view::server_view),
            features: s.map(snapshot_view::feature_names).unwrap_or_default(),
            iops_history: Vec::new(),
            dropped_events: self.dropped_events,
            source: self.source.clone(),
        }
    }

    /// The device screen's data at `now_ns`.
    pub fn view(&self, dev: u32, now_ns: u64) -> ViewModel {
        let mut vm = ViewModel::empty(dev, self.source.clone());
        vm.header = self.header(dev);
        if let Some(s) = self.snapshots.get(&dev) {
            vm.queues = queues_from_tagfile(s, now_ns);
        }
        vm.findings = self.findings(dev, now_ns);
        vm
    }

    pub fn device_rows(&self, now_ns: u64) -> Vec<DeviceRow> {
        self.devices
            .iter()
            .filter_map(|d| self.snapshots.get(d))
            .map(|s| {
                let classes = self
                    .findings(s.dev_id, now_ns)
                    .into_iter()
                    .map(|f| f.class)
                    .collect();
                snapshot_view::device_row(s, classes)
            })
            .collect()
    }
}

/// Tag states as the server publishes them (our server only); Unknown for other servers.
fn queues_from_tagfile(s: &DeviceSnapshot, now_ns: u64) -> Vec<QueueView> {
    let (nq, depth) = match (&s.dev_info, &s.tagfile) {
        (Some(i), _) => (i.nr_hw_queues, i.queue_depth),
        (None, Some(t)) => (t.nr_queues, t.queue_depth),
        _ => return Vec::new(),
    };
    (0..nq)
        .map(|q_id| QueueView {
            q_id,
            tags: (0..depth)
                .map(|tag| {
                    let p = s
                        .tagfile
                        .as_ref()
                        .and_then(|t| t.tags.iter().find(|x| x.q_id == q_id && x.tag == tag));
                    let (state, since) = match p.map(|p| (p.state.as_str(), p)) {
                        Some(("waiting", p)) => (CellState::Waiting, p.waiting_since_ns),
                        Some(("in_server", p)) => (CellState::InServer, p.received_ns),
                        Some(("committed", p)) => (CellState::Committed, p.committed_ns),
                        Some(("idle", _)) => (CellState::Idle, 0),
                        _ => (CellState::Unknown, 0),
                    };
                    TagCell {
                        tag,
                        state,
                        age_ns: (since > 0).then(|| now_ns.saturating_sub(since)),
                        flagged: false,
                    }
                })
                .collect(),
        })
        .collect()
}
