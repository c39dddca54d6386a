//! PURE per-device → queue → tag model, fed by typed events and snapshots. No I/O, no clock:
//! every time is a parameter (CLOCK_MONOTONIC ns), so it is tested on host from synthetic and
//! recorded streams. See DESIGN.md "Per-tag state".
//!
//! API (for `tui/`, `cmd::watch`, `cmd::diagnose`, `report/`):
//! ```text
//! let mut m = Model::new();
//! m.apply(&trace_event);                      // live eBPF or replayed JSON lines, any order
//! m.apply_snapshot(&device_snapshot, now_ns); // snapshot::take(..): attach-late truth
//! m.apply_kernel_tag(dev, q, tag, &kernel_tag); // the eBPF state map (probe::Tracer::tag_states)
//! m.set_events_horizon(ts);                  // live reader: ring drained at ts (lag-proof ages)
//! for d in m.devices(now_ns) {                // DeviceView
//!     d.dev_id(); d.info(); d.geometry(); d.server_pids(); d.state_counts();
//!     d.blind_spots();                        // what could not be known (show it!)
//!     d.oldest_in_flight(n); d.iops(secs); d.iops_series(secs); d.rejected();
//!     for q in d.queues() {                   // QueueView
//!         q.iops(); q.server_latency(); q.block_latency();
//!         for t in q.tags() { t.state; t.age_ns; t.op; t.sector; t.bytes; t.owner_tid; t.history; }
//!     }
//! }
//! m.ctrl().iter();  m.lost_events();
//! let findings = crate::diagnose::run(&m, now_ns, &Thresholds::default());
//! ```
//! Transitions come only from commands the kernel ACCEPTED (the I/O-command handler returned
//! -EIOCBQUEUED); a rejected command is recorded as such; IO_URING_F_CANCEL calls are ring
//! teardown. States are derived from stored timestamps, so reordering does not matter and a
//! newer snapshot corrects what lost events left stale. Memory is bounded: per tag a fixed
//! set of fields and a [`tag::HISTORY_LEN`]-entry history; per queue fixed histograms and
//! windows; per device bounded lists.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{BlockStage, EventKind, TraceEvent};
use crate::snapshot::DeviceSnapshot;

pub mod crosscheck;
pub mod ctrl;
pub mod device;
pub mod driver;
pub mod hist;
pub mod light;
pub mod queue;
pub mod tag;
pub mod view;

pub use ctrl::{CtrlCmd, CtrlTimeline};
pub use device::{Device, RejectedCmd};
pub use hist::Histogram;
pub use tag::{Derived, HistoryEntry, HistoryKind, TagState};
pub use view::{DeviceView, QueueView, TagView};

/// Server activity this much newer than the last event read means the reader lags.
const LAG_SLACK_NS: u64 = 20_000_000;

/// Tags with no driver tag in block tracepoints (insert before a tag is assigned).
const NO_TAG: u16 = u16::MAX;

/// Per-tag timestamps as the eBPF state path keeps them in maps (0 = never).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagFacts {
    pub fetch_ns: u64,
    pub queue_rq_ns: u64,
    pub delivered_ns: u64,
    pub commit_ns: u64,
    pub complete_ns: u64,
    pub requeue_ns: u64,
    /// Counters since the tracer attached (monotonic in the map).
    pub commits: u64,
    pub requeues: u64,
    pub rejected: u64,
    pub op: String,
    pub sector: u64,
    pub bytes: u32,
    pub result: Option<i32>,
    pub owner_tid: Option<u32>,
}

/// Block op name of `request.cmd_flags & REQ_OP_MASK` (include/linux/blk_types.h).
fn req_op_name(cmd_flags: u32) -> &'static str {
    match cmd_flags & 0xff {
        0 => "READ",
        1 => "WRITE",
        2 => "FLUSH",
        3 => "DISCARD",
        5 => "SECURE_ERASE",
        7 => "ZONE_APPEND",
        9 => "WRITE_ZEROES",
        _ => "OP?",
    }
}

impl From<&ublk_trace_common::tagmap::KernelTag> for TagFacts {
    fn from(k: &ublk_trace_common::tagmap::KernelTag) -> Self {
        Self {
            fetch_ns: k.fetch_ns,
            queue_rq_ns: k.queue_rq_ns,
            delivered_ns: k.delivered_ns,
            commit_ns: k.commit_ns,
            complete_ns: k.complete_ns,
            requeue_ns: k.requeue_ns,
            commits: k.commits,
            requeues: k.requeues,
            rejected: k.rejected,
            op: if k.queue_rq_ns > 0 {
                req_op_name(k.cmd_flags).to_string()
            } else {
                String::new()
            },
            sector: k.sector,
            bytes: k.bytes,
            result: (k.commits > 0).then_some(k.commit_result),
            owner_tid: (k.owner_tid != 0).then_some(k.owner_tid),
        }
    }
}

/// The whole model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Model {
    devices: BTreeMap<u32, Device>,
    ctrl: CtrlTimeline,
    lost_events: u64,
    last_lost_ns: u64,
    events: u64,
    first_event_ns: u64,
    last_event_ns: u64,
    /// Our own pid: its control commands (GET_DEV_INFO) are not the server's.
    ignore_pid: Option<u32>,
    /// Every event emitted before this time has been applied (set by the live reader).
    events_horizon_ns: Option<u64>,
    /// When the in-kernel per-tag state map was last read (the state path's complete view).
    kernel_tags_read_ns: u64,
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    /// The live reader drained the kernel's ring at `ts_ns`: every event emitted before it
    /// has been applied. Ages of event-derived states then count up to this horizon instead
    /// of `now`, so a reader that lags behind (debug build, emulated guest) does not make
    /// healthy requests look stuck. Readers that cannot tell never call it (ages use `now`).
    /// The state map was read at `ts_ns` (its walk began then): every tag's events up to
    /// then are in the model.
    pub fn note_kernel_tags_read(&mut self, ts_ns: u64) {
        self.kernel_tags_read_ns = self.kernel_tags_read_ns.max(ts_ns);
    }

    /// Up to when the event side knows every tag's transitions (0: it does not: no state
    /// map, only rare events).
    pub fn events_read_ns(&self) -> u64 {
        self.kernel_tags_read_ns
    }

    pub fn set_events_horizon(&mut self, ts_ns: u64) {
        self.events_horizon_ns = Some(self.events_horizon_ns.unwrap_or(0).max(ts_ns));
    }

    /// Up to when event-derived ages of device `dev` count: the horizon set by the reader;
    /// else, when the server's tag file shows activity later than the device's last event
    /// (the reader lags: those events are still in the ring), that last event; else `now_ns`.
    pub fn events_now(&self, dev: &Device, now_ns: u64) -> u64 {
        if let Some(h) = self.events_horizon_ns {
            return h.min(now_ns);
        }
        if dev.last_event_ns > 0 && dev.server_activity_ns > dev.last_event_ns + LAG_SLACK_NS {
            return dev.last_event_ns.min(now_ns);
        }
        now_ns
    }

    /// Do not count control commands sent by `pid` (the tracer itself).
    pub fn ignore_pid(&mut self, pid: u32) {
        self.ignore_pid = Some(pid);
    }

    pub fn apply_all<'a>(&mut self, evs: impl IntoIterator<Item = &'a TraceEvent>) {
        for e in evs {
            self.apply(e);
        }
    }

    /// Feed one event (any order).
    pub fn apply(&mut self, ev: &TraceEvent) {
        self.events += 1;
        if self.first_event_ns == 0 || ev.ts_ns < self.first_event_ns {
            self.first_event_ns = ev.ts_ns;
        }
        self.last_event_ns = self.last_event_ns.max(ev.ts_ns);
        match &ev.kind {
            EventKind::CtrlStart { .. } | EventKind::CtrlDone { .. } => self.apply_ctrl(ev),
            EventKind::BatchCmd {
                dev_id,
                q_id,
                op,
                nr_elem,
                elem_bytes,
                ret,
                duration_ns,
                refused,
                cancel: false,
                ..
            } => {
                let line = device::BatchCmdLine {
                    ts_ns: ev.ts_ns.saturating_sub(*duration_ns),
                    duration_ns: *duration_ns,
                    q_id: *q_id,
                    op: op.clone(),
                    nr_elem: *nr_elem,
                    ret: *ret,
                    refused: *refused,
                    pid: ev.pid,
                    tid: ev.tid,
                    comm: ev.comm.clone(),
                };
                self.device_mut(*dev_id, ev.ts_ns)
                    .batch_cmd(line, *elem_bytes);
            }
            EventKind::Lost { count } => {
                self.lost_events = self.lost_events.saturating_add(*count);
                self.last_lost_ns = self.last_lost_ns.max(ev.ts_ns);
            }
            _ => self.apply_tag_event(ev),
        }
    }

    fn apply_tag_event(&mut self, ev: &TraceEvent) {
        let Some((dev_id, q_id, tag)) = ev.kind.tag_key() else {
            return;
        };
        let (ts, tid) = (ev.ts_ns, ev.tid);
        if tag == NO_TAG {
            // ≤ 6.14 delivers a queue's pending requests as one batch (ublk_rq_task_work_cb):
            // the probe knows the queue, not the tags.
            if matches!(ev.kind, EventKind::Delivered { .. }) {
                self.device_mut(dev_id, ts).queue_delivered(ts, q_id);
            }
            // With an I/O scheduler the driver tag is gone by block_rq_requeue: count the
            // requeue on the queue (a 0-byte write commit makes a storm of them).
            if matches!(
                ev.kind,
                EventKind::Block {
                    stage: BlockStage::Requeue,
                    ..
                }
            ) {
                self.device_mut(dev_id, ts)
                    .queue_mut(q_id)
                    .untagged_requeues(ts, 1);
            }
            return;
        }
        let d = self.device_mut(dev_id, ts);
        match &ev.kind {
            EventKind::IoCmd {
                cmd_op, op, result, ..
            } => {
                let a = io_args(ev, q_id, tag, *cmd_op, op);
                d.io_cmd_entry(&a, *result);
            }
            EventKind::IoCmdDone {
                cmd_op,
                op,
                ret,
                cancel,
                ..
            } => {
                let a = io_args(ev, q_id, tag, *cmd_op, op);
                d.io_cmd_return(&a, *ret, *cancel);
            }
            EventKind::QueueRq {
                op, sector, bytes, ..
            } => d.request_started(ts, tid, q_id, tag, (op, *sector, *bytes)),
            EventKind::Delivered { .. } => d.delivered(ts, tid, q_id, tag),
            EventKind::Block {
                stage,
                op,
                sector,
                bytes,
                error,
                ..
            } => match stage {
                BlockStage::Issue => d.block_issue(ts, tid, q_id, tag, (op, *sector, *bytes)),
                BlockStage::Complete => d.block_complete(ts, tid, q_id, tag, *error),
                BlockStage::Requeue => d.block_requeue(ts, tid, q_id, tag),
                BlockStage::Insert => {}
            },
            _ => {}
        }
    }

    fn apply_ctrl(&mut self, ev: &TraceEvent) {
        if self.ignore_pid == Some(ev.pid) {
            return;
        }
        match &ev.kind {
            EventKind::CtrlStart {
                dev_id, cmd_op, op, ..
            } => {
                self.ctrl.start(&ctrl::StartArgs {
                    ts_ns: ev.ts_ns,
                    pid: ev.pid,
                    tid: ev.tid,
                    comm: &ev.comm,
                    dev_id: *dev_id,
                    op_nr: cmd_op & 0xff,
                    op,
                });
                if *dev_id != ctrl::ANY_DEV && matches!(op.as_str(), "ADD_DEV" | "START_DEV") {
                    self.device_mut(*dev_id, ev.ts_ns).setup_observed = true;
                }
            }
            EventKind::CtrlDone {
                dev_id,
                cmd_op,
                op,
                result,
                ..
            } => {
                let out = self
                    .ctrl
                    .done(ev.ts_ns, ev.tid, *dev_id, cmd_op & 0xff, *result);
                let deleted = out == ctrl::CtrlOutcome::Finished { result: 0 }
                    && matches!(op.as_str(), "DEL_DEV" | "DEL_DEV_ASYNC");
                if deleted && let Some(d) = self.devices.get_mut(dev_id) {
                    d.removed = true;
                }
            }
            _ => {}
        }
    }

    /// Merge a snapshot of one device (taken at `snap.taken_ns`, or `now_ns` if unset).
    pub fn apply_snapshot(&mut self, snap: &DeviceSnapshot, now_ns: u64) {
        let ts = if snap.taken_ns > 0 {
            snap.taken_ns
        } else {
            now_ns
        };
        self.device_mut(snap.dev_id, ts).apply_snapshot(snap, ts);
    }

    /// The disk's completion counter read at `ts` between two snapshots (IOPS).
    pub fn apply_disk_ios(&mut self, dev_id: u32, ts: u64, ios: u64) {
        self.device_mut(dev_id, ts).disk_ios.read(ts, ios);
    }

    /// Merge one entry of the in-kernel state map (`probe::Tracer::tag_states`); `tag`
    /// u16::MAX is the queue-level entry (batched delivery on ≤ 6.14).
    pub fn apply_kernel_tag(
        &mut self,
        dev_id: u32,
        q_id: u16,
        tag: u16,
        k: &ublk_trace_common::tagmap::KernelTag,
    ) {
        if tag == NO_TAG {
            if k.delivered_ns > 0 {
                self.device_mut(dev_id, k.delivered_ns)
                    .queue_delivered(k.delivered_ns, q_id);
            }
            if k.requeue_ns > 0 {
                let q = self.device_mut(dev_id, k.requeue_ns).queue_mut(q_id);
                let new = k.requeues.saturating_sub(q.untagged_requeues_read);
                if new > 0 {
                    q.untagged_requeues_read = k.requeues;
                    q.untagged_requeues(k.requeue_ns, new);
                }
            }
            return;
        }
        self.apply_tag_facts(dev_id, q_id, tag, &TagFacts::from(k));
    }

    /// Merge per-tag timestamps read from the eBPF state maps (newest wins per field).
    pub fn apply_tag_facts(&mut self, dev_id: u32, q_id: u16, tag: u16, f: &TagFacts) {
        let first = [f.fetch_ns, f.queue_rq_ns, f.delivered_ns, f.commit_ns]
            .into_iter()
            .filter(|t| *t > 0)
            .min()
            .unwrap_or(0);
        let d = self.device_mut(dev_id, first);
        if f.fetch_ns > 0 {
            d.setup_observed = true;
        }
        let q = d.queue_mut(q_id);
        if f.delivered_ns > q.last_delivered_ns {
            q.last_delivered_ns = f.delivered_ns;
            q.deliveries += 1;
        }
        if let Some(o) = f.owner_tid {
            q.owner_tid = Some(o);
        }
        if f.queue_rq_ns > q.tags.get(&tag).map_or(0, |t| t.queue_rq_ns) {
            q.undelivered.insert(tag);
        }
        // Requests served since the last read: the rates, and one latency sample (the last
        // request's queue_rq -> commit) per tag and read, since no per-I/O event streams.
        let read_before = q.tags.get(&tag).and_then(|t| t.kernel_commits_read);
        let served = f.commits.saturating_sub(read_before.unwrap_or(0));
        if served > 0 {
            let latency = (f.queue_rq_ns > 0 && f.commit_ns >= f.queue_rq_ns)
                .then(|| f.commit_ns - f.queue_rq_ns);
            q.kernel_completions(f.commit_ns, served, latency);
        }
        let t = q.tag_mut(tag);
        // The tag's history from the map: the latest step of each kind per read (what
        // happened in between is not kept in the kernel). Owner tid as the actor.
        let tid = f.owner_tid.unwrap_or(0);
        if f.queue_rq_ns > t.queue_rq_ns {
            t.queue_rq_ns = f.queue_rq_ns;
            t.op.clone_from(&f.op);
            t.sector = f.sector;
            t.bytes = f.bytes;
            let what = HistoryKind::QueueRq {
                op: f.op.clone(),
                sector: f.sector,
                bytes: f.bytes,
            };
            t.push_history(f.queue_rq_ns, 0, what);
        }
        if f.delivered_ns > t.delivered_ns {
            t.push_history(f.delivered_ns, tid, HistoryKind::Delivered);
        }
        if f.commits > 0 {
            t.kernel_commits_read = Some(f.commits);
        }
        if f.commit_ns > t.commit_ns {
            t.commit_ns = f.commit_ns;
            t.commit_result = f.result;
            if let Some(result) = f.result {
                t.push_history(f.commit_ns, tid, HistoryKind::Commit { result });
            }
        }
        if f.requeue_ns > t.requeue_ns {
            t.requeue_ns = f.requeue_ns;
            // The map keeps the latest requeue and a count: every requeue since the last read
            // happened by f.requeue_ns (a storm requeues hundreds of times between two reads).
            let new = f.requeues.saturating_sub(t.requeues).max(1);
            for _ in 0..new.min(tag::REQUEUE_WINDOW as u64) {
                if t.requeue_times.len() == tag::REQUEUE_WINDOW {
                    t.requeue_times.pop_front();
                }
                t.requeue_times.push_back(f.requeue_ns);
            }
        }
        t.requeues = t.requeues.max(f.requeues);
        t.rejected = t.rejected.max(f.rejected);
        t.fetch_ns = t.fetch_ns.max(f.fetch_ns);
        t.delivered_ns = t.delivered_ns.max(f.delivered_ns);
        t.complete_ns = t.complete_ns.max(f.complete_ns);
        if f.owner_tid.is_some() {
            t.owner_tid = f.owner_tid;
        }
        if f.complete_ns > 0 {
            d.completes_seen = true;
        }
    }

    /// Forget a device (the caller saw it disappear and does not want it listed).
    pub fn remove_device(&mut self, dev_id: u32) {
        self.devices.remove(&dev_id);
    }

    #[cfg(test)]
    pub(crate) fn tag_mut_for_test(&mut self, dev_id: u32, q_id: u16, tag: u16) -> &mut tag::Tag {
        self.device_mut(dev_id, 0)
            .queue_mut(q_id)
            .tags
            .entry(tag)
            .or_default()
    }

    fn device_mut(&mut self, dev_id: u32, ts: u64) -> &mut Device {
        self.devices
            .entry(dev_id)
            .or_insert_with(|| Device::new(dev_id, ts))
    }

    /// Views of every device at `now_ns`.
    pub fn devices(&self, now_ns: u64) -> impl Iterator<Item = DeviceView<'_>> {
        self.devices
            .values()
            .map(move |d| DeviceView::new(self, d, now_ns))
    }
    pub fn device(&self, dev_id: u32, now_ns: u64) -> Option<DeviceView<'_>> {
        self.devices
            .get(&dev_id)
            .map(|d| DeviceView::new(self, d, now_ns))
    }
    pub fn device_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.devices.keys().copied()
    }
    pub fn raw_device(&self, dev_id: u32) -> Option<&Device> {
        self.devices.get(&dev_id)
    }
    pub fn ctrl(&self) -> &CtrlTimeline {
        &self.ctrl
    }
    /// Events the probe side reported lost (ring buffer full).
    pub fn lost_events(&self) -> u64 {
        self.lost_events
    }
    pub fn last_lost_ns(&self) -> u64 {
        self.last_lost_ns
    }
    pub fn events_applied(&self) -> u64 {
        self.events
    }
    /// (first, last) event timestamps; (0, 0) before any event.
    pub fn event_span_ns(&self) -> (u64, u64) {
        (self.first_event_ns, self.last_event_ns)
    }
}

fn io_args<'a>(
    ev: &TraceEvent,
    q_id: u16,
    tag: u16,
    cmd_op: u32,
    op: &'a str,
) -> device::IoCmdArgs<'a> {
    device::IoCmdArgs {
        ts_ns: ev.ts_ns,
        tid: ev.tid,
        q_id,
        tag,
        op_nr: cmd_op & 0xff,
        op,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub mod testutil;
