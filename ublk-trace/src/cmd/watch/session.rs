//! The one owner of everything observed: the model (fed by snapshots and events), findings,
//! probe status. `watch` (TUI and headless) and `diagnose` feed it [`Msg`]s and ask for views.

use std::collections::BTreeMap;

use crate::diagnose::{self, Diagnosis, Thresholds};
use crate::model::Model;
use crate::snapshot::DeviceSnapshot;
use crate::tui::build::{BuildInput, build, finding_view};
use crate::tui::snapshot_view;
use crate::tui::view_model::{DeviceRow, FindingView, SourceView, ViewModel};

use super::sources::Msg;

/// Everything the loop knows.
#[derive(Debug)]
pub struct Session {
    devices: Vec<u32>,
    /// Latest snapshot per device (the device list reads these).
    snapshots: BTreeMap<u32, DeviceSnapshot>,
    model: Model,
    source: SourceView,
    /// The probe thread has said whether it runs.
    source_known: bool,
    dropped_events: u64,
    thresholds: Thresholds,
    /// The tag whose event history the detail view shows.
    pub detail: Option<(u16, u16)>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// Probes count as off ("starting") until the probe thread says otherwise.
    pub fn new() -> Self {
        let mut model = Model::new();
        // Our own GET_DEV_INFO calls are not the server's control commands.
        model.ignore_pid(std::process::id());
        Self {
            devices: Vec::new(),
            snapshots: BTreeMap::new(),
            model,
            source: SourceView::SnapshotsOnly {
                reason: "eBPF probes starting".into(),
            },
            source_known: false,
            dropped_events: 0,
            thresholds: Thresholds::default(),
            detail: None,
        }
    }

    pub fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Devices(d) => {
                self.snapshots.retain(|id, _| d.contains(id));
                let gone: Vec<u32> = self
                    .model
                    .device_ids()
                    .filter(|id| !d.contains(id))
                    .collect();
                for id in gone {
                    self.model.remove_device(id);
                }
                self.devices = d;
            }
            Msg::Snapshot(s) => {
                self.model.apply_snapshot(&s, s.taken_ns);
                self.snapshots.insert(s.dev_id, *s);
            }
            Msg::Events(events) => self.model.apply_all(events.iter()),
            Msg::ProbesLive => {
                self.source = SourceView::Live;
                self.source_known = true;
            }
            Msg::ProbesOff(reason) => {
                self.source = SourceView::SnapshotsOnly { reason };
                self.source_known = true;
            }
            Msg::Lost(n) => self.dropped_events = n,
        }
    }

    pub fn source(&self) -> &SourceView {
        &self.source
    }

    /// Whether the probes run is settled (headless output waits for it, so the first
    /// document does not claim "snapshots only" while the probes are still loading).
    pub fn source_known(&self) -> bool {
        self.source_known
    }

    /// Lost events: what the probe thread counted or what the event stream reported.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events.max(self.model.lost_events())
    }

    pub fn devices(&self) -> &[u32] {
        &self.devices
    }

    /// A snapshot of this device has arrived (so a view of it means something).
    pub fn has_snapshot(&self, dev: u32) -> bool {
        self.snapshots.contains_key(&dev)
    }

    pub fn set_thresholds(&mut self, th: Thresholds) {
        self.thresholds = th;
    }

    /// All rules over the model at `now_ns`, with the checks that lacked data.
    pub fn diagnosis(&self, now_ns: u64) -> Diagnosis {
        diagnose::diagnose(&self.model, now_ns, &self.thresholds)
    }

    /// Findings for one device, in rule order (causes before symptoms).
    pub fn findings(&self, dev: u32, now_ns: u64) -> Vec<FindingView> {
        diagnose::run(&self.model, now_ns, &self.thresholds)
            .iter()
            .filter(|f| f.dev == dev)
            .map(finding_view)
            .collect()
    }

    /// Rules that could not decide for `dev`, as "CLASS: what is missing".
    pub fn undecided(&self, dev: u32, now_ns: u64) -> Vec<String> {
        self.diagnosis(now_ns)
            .rechecks
            .iter()
            .filter(|r| r.dev == dev)
            .map(|r| format!("{}: {}", r.class.name(), r.reason))
            .collect()
    }

    /// The device screen's data at `now_ns`.
    pub fn view(&self, dev: u32, now_ns: u64) -> ViewModel {
        let findings = self.findings(dev, now_ns);
        let input = BuildInput {
            dev_id: dev,
            now_ns,
            source: self.source.clone(),
            findings: &findings,
            detail: self.detail,
        };
        let mut vm = build(&self.model, &input);
        vm.header.dropped_events = self.dropped_events();
        vm.undecided = self.undecided(dev, now_ns);
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
