//! The one owner of everything observed: the model (fed by snapshots and events), findings,
//! probe status. `watch` (TUI and headless) and `diagnose` feed it [`Msg`]s and ask for views.

use crate::selfcost::{self, Part};
use std::collections::BTreeMap;

use crate::diagnose::{self, Diagnosis, Thresholds};
use crate::model::Model;
use crate::snapshot::DeviceSnapshot;
use crate::tui::build::{BuildInput, build, finding_view};
use crate::tui::snapshot_view;
use crate::tui::view_model::{DeviceRow, FindingView, PerIoView, SourceView, ViewModel};

use super::sources::{Msg, PerIoChoice};

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
    /// The event stream is complete up to this time (0: no word from the probes yet).
    stream_ns: u64,
    thresholds: Thresholds,
    /// The tag whose event history the detail view shows.
    pub detail: Option<(u16, u16)>,
    /// When observing began, and how long after it the probes went live.
    started: std::time::Instant,
    probes_live_after: Option<std::time::Duration>,
    driver: DriverSource,
    /// What runs on every I/O (None: the probe thread has not chosen yet).
    per_io: Option<PerIoChoice>,
    /// The tag whose every event the probes stream (the detail view).
    following: Option<Following>,
}

/// A tag the probes stream for the detail view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Following {
    /// (dev, q_id, tag).
    pub tag: (u32, u16, u16),
    pub since_ns: u64,
    /// Programs that could not be attached for it (their events are missing).
    pub missing: Vec<String>,
}

/// Whether the driver's own state is read: not yet known, read (with what this kernel lacks),
/// or not (why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverSource {
    Starting,
    Live { not_readable: Vec<String> },
    Off(String),
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
            stream_ns: 0,
            thresholds: Thresholds::default(),
            detail: None,
            started: std::time::Instant::now(),
            probes_live_after: None,
            driver: DriverSource::Starting,
            per_io: None,
            following: None,
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
            Msg::Snapshot(s) => selfcost::charge(Part::Apply, || {
                self.model.apply_snapshot(&s, s.taken_ns);
                self.snapshots.insert(s.dev_id, *s);
            }),
            Msg::SnapshotDeferred {
                dev,
                taken_ns,
                disk_ios: Some(n),
            } => self.model.apply_disk_ios(dev, taken_ns, n),
            Msg::SnapshotDeferred { .. } | Msg::Doorbell => {}
            Msg::Events(events) => self.model.apply_all(events.iter()),
            Msg::ProbesLive => {
                self.source = SourceView::Live;
                self.source_known = true;
                self.probes_live_after = Some(self.started.elapsed());
            }
            Msg::ProbesOff(reason) => {
                self.source = SourceView::SnapshotsOnly { reason };
                self.source_known = true;
            }
            Msg::Lost(n) => self.dropped_events = n,
            Msg::CaughtUp(t) => {
                self.stream_ns = self.stream_ns.max(t);
                self.model.set_events_horizon(t);
            }
            Msg::Driver(snap) => selfcost::charge(Part::Apply, || {
                self.model.apply_driver(&snap);
                self.driver = DriverSource::Live {
                    not_readable: snap.not_readable.clone(),
                };
            }),
            Msg::DriverOff(reason) => self.driver = DriverSource::Off(reason),
            Msg::KernelLatency(hists, ts) => self.model.apply_kernel_latency(&hists, ts),
            Msg::PerIo(choice) => self.per_io = Some(choice),
            Msg::Following(tag, since, missing) => {
                self.following = tag.map(|t| Following {
                    tag: t,
                    since_ns: since,
                    missing,
                });
            }
            Msg::KernelTags(tags, ts) => {
                self.model.note_kernel_tags_read(ts);
                for e in &tags {
                    self.model
                        .apply_kernel_tag(e.dev_id, e.q_id, e.tag, &e.state);
                }
            }
        }
    }

    pub fn source(&self) -> &SourceView {
        &self.source
    }

    /// The driver reader has answered at least once (read, or said why not).
    pub fn driver_known(&self) -> bool {
        self.driver != DriverSource::Starting
    }

    /// The driver's memory and the event model compared on device `dev` (both must be there).
    pub fn cross_check(&self, dev: u32) -> Option<crate::model::crosscheck::CrossCheck> {
        self.model.cross_check(dev)
    }

    /// What runs on every I/O, once the probe thread has chosen.
    pub fn per_io(&self) -> Option<&PerIoChoice> {
        self.per_io.as_ref()
    }

    /// Whether the driver's own state is being read.
    pub fn driver_source(&self) -> &DriverSource {
        &self.driver
    }

    /// Milliseconds from the start of observing until the probes were live (None: not live).
    pub fn probes_live_ms(&self) -> Option<u64> {
        self.probes_live_after
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

    /// How far the applied event stream is behind `now_ns` (0 without live probes). The model
    /// caps event-derived ages at the stream's horizon, so a backlog (debug build, emulated
    /// guest) does not make healthy requests look stuck; a real hang still ages from the
    /// snapshots and the in-kernel state map.
    pub fn stream_lag_ns(&self, now_ns: u64) -> u64 {
        if self.source != SourceView::Live || self.stream_ns == 0 {
            return 0;
        }
        let (_, last_event_ns) = self.model.event_span_ns();
        now_ns.saturating_sub(self.stream_ns.max(last_event_ns))
    }

    /// All rules over the model at `now_ns`, with the checks that lacked data.
    pub fn diagnosis(&self, now_ns: u64) -> Diagnosis {
        diagnose::diagnose(&self.model, now_ns, &self.thresholds)
    }

    /// Findings for one device, in rule order (causes before symptoms).
    pub fn findings(&self, dev: u32, now_ns: u64) -> Vec<FindingView> {
        findings_of(&self.diagnosis(now_ns), dev)
    }

    /// The device screen's data at `now_ns` (one diagnosis run).
    pub fn view(&self, dev: u32, now_ns: u64) -> ViewModel {
        let d = self.diagnosis(now_ns);
        let findings = findings_of(&d, dev);
        let input = BuildInput {
            dev_id: dev,
            now_ns,
            source: self.source.clone(),
            findings: &findings,
            detail: self.detail,
            following: self
                .following
                .as_ref()
                .filter(|f| f.tag.0 == dev && Some((f.tag.1, f.tag.2)) == self.detail)
                .map(|f| (f.since_ns, f.missing.as_slice())),
        };
        let mut vm = build(&self.model, &input);
        vm.header.dropped_events = self.dropped_events();
        vm.header.stream_lag_ns = self.stream_lag_ns(now_ns);
        vm.header.driver_off = match &self.driver {
            DriverSource::Live { .. } => None,
            DriverSource::Starting => Some("starting".into()),
            DriverSource::Off(why) => Some(why.clone()),
        };
        vm.header.per_io = self.per_io.as_ref().map(|c| PerIoView {
            mode: c.mode.name(),
            cannot_see: c.mode.cannot_see(),
            note: c.note.clone(),
        });
        vm.undecided = undecided_of(&d, dev);
        vm
    }

    /// One row per device present, with the classes of its findings (one diagnosis run).
    pub fn device_rows(&self, now_ns: u64) -> Vec<DeviceRow> {
        let d = self.diagnosis(now_ns);
        self.devices
            .iter()
            .filter_map(|id| self.snapshots.get(id))
            .map(|s| {
                let mut classes: Vec<String> = Vec::new();
                for f in d.findings.iter().filter(|f| f.dev == s.dev_id) {
                    let c = f.class.name().to_string();
                    if !classes.contains(&c) {
                        classes.push(c);
                    }
                }
                snapshot_view::device_row(s, classes)
            })
            .collect()
    }
}

fn findings_of(d: &Diagnosis, dev: u32) -> Vec<FindingView> {
    d.findings
        .iter()
        .filter(|f| f.dev == dev)
        .map(finding_view)
        .collect()
}

/// Rules that could not decide for `dev`, as "CLASS: what is missing".
fn undecided_of(d: &Diagnosis, dev: u32) -> Vec<String> {
    d.rechecks
        .iter()
        .filter(|r| r.dev == dev)
        .map(|r| format!("{}: {}", r.class.name(), r.reason))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{delivered, queue_rq, setup};
    use crate::tui::view_model::{CellState, Health};

    const S: u64 = 1_000_000_000;

    /// Device 0 (1 queue, depth 4) with q0 t2 delivered at 2 s and never committed.
    fn stuck_session() -> Session {
        let mut s = Session::new();
        s.apply(Msg::ProbesLive);
        s.apply(Msg::Devices(vec![0]));
        s.apply(Msg::Snapshot(Box::new(DeviceSnapshot {
            dev_id: 0,
            taken_ns: S,
            char_dev_present: true,
            block_dev_present: true,
            proc_scanned: true,
            ..Default::default()
        })));
        let mut evs = setup(0, 1, 4, S / 2);
        evs.push(queue_rq(0, 0, 2, 2 * S, "READ", 4096));
        evs.push(delivered(0, 0, 2, 2 * S + 1000, 50));
        s.apply(Msg::Events(evs));
        s
    }

    #[test]
    fn a_stuck_tag_reaches_the_view_and_the_device_list() {
        let s = stuck_session();
        let vm = s.view(0, 10 * S);
        assert_eq!(vm.header.source, SourceView::Live);
        assert!(
            vm.cell(0, 2)
                .is_some_and(|c| c.state == CellState::InServer && c.flagged)
        );
        let f = vm.findings.iter().find(|f| f.class == "STUCK_IN_SERVER");
        assert_eq!(
            f.map(|f| (f.q_id, f.tag)),
            Some((Some(0), Some(2))),
            "{:?}",
            vm.findings
        );
        let rows = s.device_rows(10 * S);
        assert_eq!(rows.len(), 1);
        assert!(
            matches!(&rows[0].health, Health::Findings(c) if c.iter().any(|c| c == "STUCK_IN_SERVER")),
            "{:?}",
            rows[0].health
        );
    }

    #[test]
    fn thresholds_decide_when_a_tag_counts_as_stuck() {
        let mut s = stuck_session();
        // 1.5 s after delivery: stuck with the default 1 s, not with 5 s.
        assert!(
            s.findings(0, 3 * S + S / 2)
                .iter()
                .any(|f| f.class == "STUCK_IN_SERVER")
        );
        s.set_thresholds(Thresholds {
            stuck_ms: 5000,
            ..Thresholds::default()
        });
        assert!(
            !s.findings(0, 3 * S + S / 2)
                .iter()
                .any(|f| f.class == "STUCK_IN_SERVER")
        );
    }

    #[test]
    fn a_backlogged_event_stream_does_not_make_requests_look_stuck() {
        let mut s = Session::new();
        s.apply(Msg::ProbesLive);
        let mut evs = setup(0, 1, 4, S / 2);
        // Deliveries work on this queue (tag 2 at 1.5 s), so an undelivered request is decidable.
        evs.push(queue_rq(0, 0, 2, S + S / 2, "READ", 4096));
        evs.push(delivered(0, 0, 2, S + S / 2 + 1000, 50));
        evs.push(queue_rq(0, 0, 1, 2 * S, "READ", 4096));
        s.apply(Msg::Events(evs));
        // The stream is known complete only up to 2.1 s; wall time is 5 s.
        s.apply(Msg::CaughtUp(2 * S + S / 10));
        assert_eq!(s.stream_lag_ns(5 * S), 2 * S + 9 * S / 10);
        assert_eq!(s.view(0, 5 * S).header.stream_lag_ns, 2 * S + 9 * S / 10);
        let f = s.findings(0, 5 * S);
        assert!(!f.iter().any(|f| f.class == "NOT_DELIVERED"), "{f:?}");
        // Caught up: the same request is 3 s old and really not delivered.
        s.apply(Msg::CaughtUp(5 * S));
        assert_eq!(s.stream_lag_ns(5 * S), 0);
        let f = s.findings(0, 5 * S);
        assert!(
            f.iter()
                .any(|f| f.class == "NOT_DELIVERED" && f.tag == Some(1)),
            "{f:?}"
        );
        // Without probes there is no stream to lag.
        s.apply(Msg::ProbesOff("x".into()));
        assert_eq!(s.stream_lag_ns(9 * S), 0);
    }

    #[test]
    fn a_device_that_disappears_leaves_the_list_and_the_model() {
        let mut s = stuck_session();
        s.apply(Msg::Devices(vec![]));
        assert!(s.device_rows(10 * S).is_empty());
        assert!(
            s.findings(0, 10 * S).is_empty(),
            "findings of a removed device"
        );
        assert!(!s.has_snapshot(0));
    }
}
