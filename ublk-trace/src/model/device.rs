//! One ublk device: queues, the kernel's device facts, rejected commands, and the facts
//! derived from successive snapshots (how long a thread has been stopped, a task blocked, a
//! request held), which a single snapshot cannot give.
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::queue::Queue;
use super::tag::{BadCommit, CqeId, HistoryKind, PendingCmd, Tag};
use crate::snapshot::{DevInfo, DeviceSnapshot};

/// Two starts of one (queue, tag) closer than this are one request seen by two probes.
const SAME_START_NS: u64 = 50_000_000;

/// Rejected commands kept per device.
pub const REJECTED_LEN: usize = 64;

/// `UBLK_IO_FETCH_REQ` & co (`cmd_op & 0xff`).
pub const IO_FETCH_REQ: u32 = 0x20;
pub const IO_COMMIT_AND_FETCH_REQ: u32 = 0x21;
pub const IO_NEED_GET_DATA: u32 = 0x22;

/// An I/O command the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedCmd {
    pub ts_ns: u64,
    pub q_id: u16,
    pub tag: u16,
    pub op: String,
    /// The handler's return (-errno).
    pub errno: i32,
    /// Thread that sent it.
    pub tid: u32,
    /// Thread that owned the tag (or queue) at the time, when known.
    pub owner_tid: Option<u32>,
    /// The commit result it carried.
    pub result: i32,
    /// A COMMIT_IO_CMDS element the kernel refused: (its index, the command's element count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_elem: Option<(u16, u16)>,
}

/// Batch commands (UBLK_F_BATCH_IO) kept for the command timeline.
pub const BATCH_LOG_LEN: usize = 256;

/// One BATCH_IO command worth a line: every PREP and FETCH, and each COMMIT the kernel did
/// not take whole (whole commits are only counted, per queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCmdLine {
    /// When it entered the handler.
    pub ts_ns: u64,
    pub duration_ns: u64,
    pub q_id: u16,
    pub op: String,
    pub nr_elem: u16,
    pub ret: i32,
    pub refused: Option<crate::event::RefusedElem>,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
}

/// Facts that need more than one snapshot: each holds the first snapshot time the condition
/// was seen, continuously since.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persist {
    pub snapshots: u64,
    /// tid -> stopped (T, t, frozen) since.
    pub stopped_since: BTreeMap<u32, u64>,
    /// tid -> (context switches when first seen, D since): same count = same sleep.
    pub waiter_since: BTreeMap<u32, (Option<u64>, u64)>,
    /// Requests held in the block layer since.
    pub held_since: Option<u64>,
    /// `/proc` was scanned and nobody holds `/dev/ublkcN`, since.
    pub server_absent_since: Option<u64>,
    /// Pids of the processes last seen holding `/dev/ublkcN`: who it was once it is gone.
    #[serde(default)]
    pub last_server_pids: Vec<u32>,
    /// tid -> (`ublk_ctrl_*` frame, seen since): a control command in progress.
    pub ctrl_frames_since: BTreeMap<u32, (String, u64)>,
    /// tid -> scheduler counters at the latest snapshot: (snapshot ts, run ns, wait ns).
    pub sched_prev: BTreeMap<u32, (u64, u64, u64)>,
    /// tid -> what the thread did between the last two snapshots.
    pub sched_delta: BTreeMap<u32, SchedDelta>,
}

/// A server thread between two snapshots: elapsed time, time on a CPU, time runnable but
/// waiting for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedDelta {
    pub elapsed_ns: u64,
    pub run_ns: u64,
    pub wait_ns: u64,
}

impl SchedDelta {
    /// Runnable but kept off the CPU for at least half the interval: an overloaded machine,
    /// not a thread that does not do its job.
    pub fn starved(&self) -> bool {
        self.elapsed_ns > 0 && self.wait_ns.saturating_mul(2) >= self.elapsed_ns
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub dev_id: u32,
    pub queues: BTreeMap<u16, Queue>,
    /// Latest GET_DEV_INFO answer.
    pub info: Option<DevInfo>,
    /// Latest snapshot (servers, waiters, blk-mq, kernel log).
    pub snapshot: Option<DeviceSnapshot>,
    /// When the latest snapshot was taken: a state only snapshots support is known up to here.
    #[serde(default)]
    pub last_snapshot_ns: u64,
    pub first_seen_ns: u64,
    pub last_event_ns: u64,
    /// ADD_DEV/START_DEV or an accepted FETCH_REQ was seen: the setup happened in view, so
    /// a tag without FETCH is a fact, not a late attach.
    pub setup_observed: bool,
    /// The device is gone (DEL_DEV done, or neither char nor block device in a snapshot).
    pub removed: bool,
    /// Block completions are being traced for this device.
    pub completes_seen: bool,
    pub rejected: VecDeque<RejectedCmd>,
    pub rejected_total: u64,
    /// BATCH_IO commands for the timeline (bounded, oldest leave first).
    pub batch_log: VecDeque<BatchCmdLine>,
    pub io_errors: u64,
    /// IO_URING_F_CANCEL calls (ring teardown) and when the last one came.
    pub cancels: u64,
    pub last_cancel_ns: u64,
    pub persist: Persist,
    /// Latest thing the server's tag file says it did (receive, commit, re-arm), CLOCK_MONOTONIC.
    pub server_activity_ns: u64,
    /// The driver's own view of the device, as last read (`crate::driver`).
    #[serde(default)]
    pub driver: Option<super::driver::DriverDevice>,
    /// The disk's completion counter (the IOPS that cost nothing per I/O).
    #[serde(default)]
    pub disk_ios: super::light::DiskIos,
}

/// An I/O command's entry or return, as the device needs it.
pub struct IoCmdArgs<'a> {
    pub ts_ns: u64,
    pub tid: u32,
    pub q_id: u16,
    pub tag: u16,
    pub op_nr: u32,
    pub op: &'a str,
}

impl Device {
    pub fn new(dev_id: u32, ts_ns: u64) -> Self {
        Self {
            dev_id,
            first_seen_ns: ts_ns,
            ..Default::default()
        }
    }
    pub fn queue_mut(&mut self, q_id: u16) -> &mut Queue {
        self.queues.entry(q_id).or_insert_with(|| Queue::new(q_id))
    }
    fn touch(&mut self, ts_ns: u64) {
        self.last_event_ns = self.last_event_ns.max(ts_ns);
        if self.first_seen_ns == 0 || ts_ns < self.first_seen_ns {
            self.first_seen_ns = ts_ns;
        }
    }

    /// `ublk_ch_uring_cmd` entered: remember it until its return says accepted or not.
    pub fn io_cmd_entry(&mut self, a: &IoCmdArgs<'_>, result: i32) {
        self.touch(a.ts_ns);
        let t = self.queue_mut(a.q_id).tag_mut(a.tag);
        let p = PendingCmd {
            ts_ns: a.ts_ns,
            tid: a.tid,
            op_nr: a.op_nr,
            op: a.op.to_string(),
            result,
        };
        // Its return arrived first (reordered) and was applied without the result: add it.
        if let Some((ts, nr, _)) = t.orphan_done
            && nr == a.op_nr
            && ts >= a.ts_ns
        {
            t.orphan_done = None;
            if t.fetch_ns == ts {
                t.fetch_ns = a.ts_ns;
            }
            if a.op_nr == IO_COMMIT_AND_FETCH_REQ && t.commit_ns == ts {
                // The command happened at its entry, not at its (later) return.
                t.commit_ns = a.ts_ns;
                t.commit_result = Some(result);
                if result < 0 {
                    t.bad_commits += 1;
                    t.last_bad = Some(BadCommit {
                        ts_ns: a.ts_ns,
                        result,
                        op: t.op.clone(),
                        bytes: t.bytes,
                    });
                }
            }
            return;
        }
        t.pending = Some(p);
    }

    /// `ublk_ch_uring_cmd` returned `ret`: -EIOCBQUEUED = accepted; else rejected.
    pub fn io_cmd_return(&mut self, a: &IoCmdArgs<'_>, ret: i32, cancel: bool) {
        self.touch(a.ts_ns);
        if cancel {
            self.cancels += 1;
            self.last_cancel_ns = self.last_cancel_ns.max(a.ts_ns);
            let t = self.queue_mut(a.q_id).tag_mut(a.tag);
            t.push_history(a.ts_ns, a.tid, HistoryKind::Cancel { op: a.op.into() });
            return;
        }
        let t = self.queue_mut(a.q_id).tag_mut(a.tag);
        let pending = match t.pending.take() {
            Some(p) if p.op_nr == a.op_nr && p.tid == a.tid => Some(p),
            other => {
                t.pending = other;
                None
            }
        };
        if pending.is_none() {
            t.orphan_done = Some((a.ts_ns, a.op_nr, ret));
        }
        let accepted_ret = match a.op_nr {
            IO_FETCH_REQ | IO_COMMIT_AND_FETCH_REQ | IO_NEED_GET_DATA => {
                ret == crate::event::EIOCBQUEUED_RET
            }
            // Buffer (un)registration and newer commands complete inline with 0.
            _ => ret >= 0 || ret == crate::event::EIOCBQUEUED_RET,
        };
        let (ts, result) = pending
            .as_ref()
            .map_or((a.ts_ns, None), |p| (p.ts_ns, Some(p.result)));
        if accepted_ret {
            self.accepted(a, ts, result);
        } else {
            self.rejected(a, ts, ret, result.unwrap_or(0));
        }
    }

    fn accepted(&mut self, a: &IoCmdArgs<'_>, ts: u64, result: Option<i32>) {
        let q = self.queue_mut(a.q_id);
        q.last_accepted_ns = q.last_accepted_ns.max(ts);
        match a.op_nr {
            IO_FETCH_REQ => {
                self.setup_observed = true;
                let q = self.queue_mut(a.q_id);
                q.owner_tid = Some(a.tid);
                let t = q.tag_mut(a.tag);
                t.fetch_ns = t.fetch_ns.max(ts);
                t.fetches += 1;
                t.owner_tid = Some(a.tid);
                t.push_history(ts, a.tid, HistoryKind::Fetch);
            }
            IO_COMMIT_AND_FETCH_REQ => self.commit(a, ts, result),
            _ => {
                let t = self.queue_mut(a.q_id).tag_mut(a.tag);
                let what = HistoryKind::OtherCmd {
                    op: a.op.into(),
                    ret: result.unwrap_or(0),
                };
                t.push_history(ts, a.tid, what);
            }
        }
    }

    fn commit(&mut self, a: &IoCmdArgs<'_>, ts: u64, result: Option<i32>) {
        let q = self.queue_mut(a.q_id);
        q.owner_tid = Some(a.tid);
        let t = q.tag_mut(a.tag);
        let open_request = t.queue_rq_ns > t.commit_ns && t.queue_rq_ns <= ts;
        let latency = open_request.then(|| ts - t.queue_rq_ns);
        t.commit_ns = t.commit_ns.max(ts);
        t.fetch_ns = t.fetch_ns.max(ts);
        t.commit_result = result;
        t.commits += 1;
        t.owner_tid = Some(a.tid);
        let r = result.unwrap_or(0);
        t.push_history(ts, a.tid, HistoryKind::Commit { result: r });
        let rw = matches!(t.op.as_str(), "READ" | "WRITE");
        let bad = result.is_some_and(|r| r < 0)
            || (result == Some(0) && open_request && rw && t.bytes > 0);
        if bad {
            t.bad_commits += 1;
            t.last_bad = Some(BadCommit {
                ts_ns: ts,
                result: r,
                op: t.op.clone(),
                bytes: t.bytes,
            });
        }
        let bytes = u64::try_from(r.max(0)).unwrap_or(0);
        q.record_completion(ts, a.tag, latency, bytes);
    }

    fn rejected(&mut self, a: &IoCmdArgs<'_>, ts: u64, errno: i32, result: i32) {
        let q = self.queue_mut(a.q_id);
        q.rejected += 1;
        let queue_owner = q.owner_tid;
        let t = q.tag_mut(a.tag);
        t.rejected += 1;
        let owner_tid = t.owner_tid.or(queue_owner);
        t.push_history(
            ts,
            a.tid,
            HistoryKind::Rejected {
                op: a.op.into(),
                errno,
            },
        );
        self.push_rejected(RejectedCmd {
            ts_ns: ts,
            q_id: a.q_id,
            tag: a.tag,
            op: a.op.into(),
            errno,
            tid: a.tid,
            owner_tid,
            result,
            batch_elem: None,
        });
    }

    /// Keep a rejected command (the newest REJECTED_LEN; all are counted).
    fn push_rejected(&mut self, r: RejectedCmd) {
        if self.rejected.len() == REJECTED_LEN {
            self.rejected.pop_front();
        }
        self.rejected_total += 1;
        self.rejected.push_back(r);
    }

    /// A BATCH_IO command returned (`l.ts_ns` is its entry). Any accepted one shows the
    /// queue's thread in io_uring; a refusal is kept as a rejected command of the refused
    /// element's tag (`NO_TAG` when the whole command was refused).
    pub fn batch_cmd(&mut self, l: BatchCmdLine, elem_bytes: u8) {
        let end = l.ts_ns.saturating_add(l.duration_ns);
        self.touch(end);
        let whole = i64::from(l.ret) == i64::from(l.nr_elem) * i64::from(elem_bytes);
        let commit = l.op == "COMMIT_IO_CMDS";
        let accepted = l.ret >= 0 || l.ret == crate::event::EIOCBQUEUED_RET;
        let q = self.queue_mut(l.q_id);
        if accepted {
            q.last_accepted_ns = q.last_accepted_ns.max(l.ts_ns);
            q.owner_tid = Some(l.tid);
        }
        if commit && whole {
            q.batch_commits += 1;
            q.batch_committed += u64::from(l.nr_elem);
            return;
        }
        if commit || !accepted {
            let tag = l.refused.map_or(super::NO_TAG, |r| r.tag);
            let owner_tid = q.owner_tid;
            q.rejected += 1;
            self.push_rejected(RejectedCmd {
                ts_ns: l.ts_ns,
                q_id: l.q_id,
                tag,
                op: l.op.clone(),
                errno: l.ret.min(0),
                tid: l.tid,
                owner_tid,
                result: l.refused.map_or(0, |r| r.result),
                batch_elem: l.refused.map(|r| (r.index, l.nr_elem)),
            });
        }
        if self.batch_log.len() == BATCH_LOG_LEN {
            self.batch_log.pop_front();
        }
        self.batch_log.push_back(l);
    }

    /// A request was started on (queue, tag): ublk_queue_rq(s) or block_rq_issue.
    pub fn request_started(
        &mut self,
        ts: u64,
        tid: u32,
        q_id: u16,
        tag: u16,
        rq: (&str, u64, u32),
    ) {
        self.touch(ts);
        let q = self.queue_mut(q_id);
        let t = q.tag_mut(tag);
        // ublk_queue_rq and block_rq_issue report the same start microseconds apart: keep
        // the earlier one, so latency and age count from the real start.
        // A tag starts a new request only after the previous one was delivered (and then
        // committed or completed), so a second start with no delivery in between is a second
        // probe seeing the same request (a TCG guest can put >1 ms between them).
        let open = t.queue_rq_ns > t.commit_ns
            && t.requeue_ns <= t.queue_rq_ns
            && t.complete_ns < t.queue_rq_ns;
        let undelivered = t.delivered_ns < t.queue_rq_ns.min(ts);
        if open && (ts.abs_diff(t.queue_rq_ns) < SAME_START_NS || undelivered) {
            t.queue_rq_ns = t.queue_rq_ns.min(ts);
            return;
        }
        if ts > t.queue_rq_ns {
            t.queue_rq_ns = ts;
            t.op = rq.0.to_string();
            t.sector = rq.1;
            t.bytes = rq.2;
            let what = HistoryKind::QueueRq {
                op: rq.0.into(),
                sector: rq.1,
                bytes: rq.2,
            };
            t.push_history(ts, tid, what);
            q.requests += 1;
            q.undelivered.insert(tag);
        }
    }

    /// A batched delivery run on the queue (tags unknown).
    pub fn queue_delivered(&mut self, ts: u64, q_id: u16) {
        self.touch(ts);
        let q = self.queue_mut(q_id);
        q.last_batch_delivered_ns = q.last_batch_delivered_ns.max(ts);
        if ts > q.last_delivered_ns {
            q.last_delivered_ns = ts;
            q.deliveries += 1;
        }
        let Queue {
            undelivered, tags, ..
        } = q;
        undelivered.retain(|n| !tags.get_mut(n).is_some_and(|t| t.note_batch_delivery(ts)));
    }

    pub fn delivered(&mut self, ts: u64, tid: u32, q_id: u16, tag: u16) {
        self.touch(ts);
        let q = self.queue_mut(q_id);
        q.deliveries += 1;
        q.last_delivered_ns = q.last_delivered_ns.max(ts);
        let t = q.tag_mut(tag);
        t.delivered_ns = t.delivered_ns.max(ts);
        t.push_history(ts, tid, HistoryKind::Delivered);
    }

    pub fn block_issue(&mut self, ts: u64, tid: u32, q_id: u16, tag: u16, rq: (&str, u64, u32)) {
        self.request_started(ts, tid, q_id, tag, rq);
        let t = self.queue_mut(q_id).tag_mut(tag);
        t.block_issue_ns = t.block_issue_ns.max(ts);
    }

    pub fn block_complete(&mut self, ts: u64, tid: u32, q_id: u16, tag: u16, error: i32) {
        self.touch(ts);
        self.completes_seen = true;
        if error != 0 {
            self.io_errors += 1;
        }
        let q = self.queue_mut(q_id);
        let t = q.tags.entry(tag).or_default();
        let lat = (t.block_issue_ns > t.complete_ns && ts >= t.block_issue_ns)
            .then(|| ts - t.block_issue_ns);
        t.complete_ns = t.complete_ns.max(ts);
        if error != 0 {
            t.last_block_error = Some((ts, error));
        }
        t.push_history(ts, tid, HistoryKind::Complete { error });
        match lat {
            // The light path counted it in the kernel's histogram already.
            Some(l) if q.kernel_latency_read.is_some() => q.kernel_slow_completion(ts, tag, l),
            Some(l) => q.block_latency.record(l),
            None => {}
        }
    }

    pub fn block_requeue(&mut self, ts: u64, tid: u32, q_id: u16, tag: u16) {
        self.touch(ts);
        let q = self.queue_mut(q_id);
        q.requeues += 1;
        let t = q.tag_mut(tag);
        t.requeue_ns = t.requeue_ns.max(ts);
        t.requeues += 1;
        if t.requeue_times.len() == super::tag::REQUEUE_WINDOW {
            t.requeue_times.pop_front();
        }
        t.requeue_times.push_back(ts);
        t.push_history(ts, tid, HistoryKind::Requeue);
    }

    /// Merge a snapshot taken at `ts` (see module doc).
    pub fn apply_snapshot(&mut self, snap: &DeviceSnapshot, ts: u64) {
        self.persist.snapshots += 1;
        self.last_snapshot_ns = self.last_snapshot_ns.max(ts);
        if snap.dev_info.is_some() {
            self.info = snap.dev_info;
        }
        self.removed = !snap.char_dev_present && !snap.block_dev_present;
        // The tag file first: a tag whose request changed since the last snapshot is busy
        // with a *new* request, so its busy age restarts.
        let changed = self.apply_tagfile(snap);
        if !snap.block_dev_present {
            // No disk, no request in flight (the kernel failed them when it removed the disk).
            for t in self.queues.values_mut().flat_map(|q| q.tags.values_mut()) {
                mark_busy(t, false, ts);
                t.cqe_since_ns = None;
                t.cqe_id = None;
            }
        }
        if let Some(b) = &snap.blk {
            self.apply_blkmq(snap, b, &changed, ts);
        }
        if snap.proc_scanned {
            self.persist_procfs(snap, ts);
        }
        if let Some(n) = snap.disk_ios {
            self.disk_ios.read(ts, n);
        }
        self.snapshot = Some(snap.clone());
    }

    /// Store the server's published tag states; returns the tags whose request changed
    /// (seq or receive time moved) since the previous snapshot.
    fn apply_tagfile(&mut self, snap: &DeviceSnapshot) -> BTreeSet<(u16, u16)> {
        let mut changed = BTreeSet::new();
        // A tag file left behind by a server that is gone describes nothing current.
        let stale_file = snap.proc_scanned && snap.servers.is_empty();
        if stale_file {
            for t in self.queues.values_mut().flat_map(|q| q.tags.values_mut()) {
                t.published = None;
            }
        }
        let Some(tf) = snap.tagfile.as_ref().filter(|_| !stale_file) else {
            return changed;
        };
        for p in &tf.tags {
            let last = p.received_ns.max(p.committed_ns).max(p.waiting_since_ns);
            self.server_activity_ns = self.server_activity_ns.max(last);
            let t = self.queue_mut(p.q_id).tag_mut(p.tag);
            let moved = t
                .published
                .as_ref()
                .is_some_and(|old| old.seq != p.seq || old.received_ns != p.received_ns);
            if moved {
                changed.insert((p.q_id, p.tag));
            }
            t.published = Some(p.clone());
        }
        changed
    }

    /// Which tags blk-mq lists in flight (and since when), unreaped CQEs, held requests.
    fn apply_blkmq(
        &mut self,
        snap: &DeviceSnapshot,
        b: &crate::snapshot::blkmq::BlkMqSnapshot,
        changed: &BTreeSet<(u16, u16)>,
        ts: u64,
    ) {
        let cqes = unreaped_cqes(snap, self.info.map(|i| i.nr_hw_queues));
        for h in &b.hctxs {
            let busy = busy_tags(h);
            let q = self.queue_mut(h.index);
            for t in &busy {
                q.tag_mut(*t);
            }
            for (n, t) in q.tags.iter_mut() {
                if changed.contains(&(h.index, *n)) {
                    t.busy_since_ns = None;
                }
                mark_busy(t, busy.contains(n), ts);
                // The same CQE still unreaped keeps its age; another one restarts it.
                let cqe = cqes.get(&(h.index, *n)).copied();
                t.cqe_since_ns = match cqe {
                    Some(id) if t.cqe_id == Some(id) => Some(t.cqe_since_ns.unwrap_or(ts)),
                    Some(_) => Some(ts),
                    None => None,
                };
                t.cqe_id = cqe;
            }
        }
        let held = !b.held_in_block_layer().is_empty();
        self.persist.held_since = held.then(|| self.persist.held_since.unwrap_or(ts));
    }

    fn persist_procfs(&mut self, snap: &DeviceSnapshot, ts: u64) {
        let p = &mut self.persist;
        let threads = || snap.servers.iter().flat_map(|s| s.threads.iter());
        let stopped: BTreeSet<u32> = threads()
            .filter(|t| t.is_stopped())
            .map(|t| t.tid)
            .collect();
        p.stopped_since.retain(|tid, _| stopped.contains(tid));
        for tid in stopped {
            p.stopped_since.entry(tid).or_insert(ts);
        }
        let mut waiters = BTreeMap::new();
        for w in &snap.waiters {
            let since = match p.waiter_since.get(&w.tid) {
                Some((c, since)) if *c == w.ctxt_switches => *since,
                _ => ts,
            };
            waiters.insert(w.tid, (w.ctxt_switches, since));
        }
        p.waiter_since = waiters;
        p.server_absent_since = snap
            .servers
            .is_empty()
            .then(|| p.server_absent_since.unwrap_or(ts));
        if !snap.servers.is_empty() {
            p.last_server_pids = snap.servers.iter().map(|s| s.pid).collect();
        }
        let mut frames = BTreeMap::new();
        for t in threads() {
            if let Some(f) = t.ctrl_frame() {
                let since = match p.ctrl_frames_since.get(&t.tid) {
                    Some((old, since)) if old == f => *since,
                    _ => ts,
                };
                frames.insert(t.tid, (f.to_string(), since));
            }
        }
        p.ctrl_frames_since = frames;
        let mut prev = BTreeMap::new();
        let mut delta = BTreeMap::new();
        for t in &snap.sched {
            if let Some((ts0, run0, wait0)) = p.sched_prev.get(&t.tid)
                && ts > *ts0
            {
                let d = SchedDelta {
                    elapsed_ns: ts - ts0,
                    run_ns: t.run_ns.saturating_sub(*run0),
                    wait_ns: t.wait_ns.saturating_sub(*wait0),
                };
                delta.insert(t.tid, d);
            }
            prev.insert(t.tid, (ts, t.run_ns, t.wait_ns));
        }
        p.sched_prev = prev;
        p.sched_delta = delta;
    }
}

fn busy_tags(h: &crate::snapshot::blkmq::HctxSnapshot) -> BTreeSet<u16> {
    h.busy
        .iter()
        .filter(|r| r.in_flight())
        .filter_map(|r| u16::try_from(r.tag).ok())
        .collect()
}

/// (queue, tag) of delivery CQEs left unreaped in the server's queue rings, with the CQE's
/// identity. fdinfo does not say which queue a ring serves: a tag maps to the one hctx where
/// it is in flight (or to queue 0 of a one-queue device).
fn unreaped_cqes(snap: &DeviceSnapshot, nr_queues: Option<u16>) -> BTreeMap<(u16, u16), CqeId> {
    let hctxs = snap.blk.as_ref().map_or(&[][..], |b| b.hctxs.as_slice());
    let mut out = BTreeMap::new();
    for s in &snap.servers {
        for r in s.rings.iter().filter(|r| r.serves_char_dev(snap.dev_id)) {
            for (i, c) in r.cqes.iter().enumerate() {
                let Some(tag) = c.ublk_tag() else {
                    continue;
                };
                let qs: Vec<u16> = hctxs
                    .iter()
                    .filter(|h| busy_tags(h).contains(&tag))
                    .map(|h| h.index)
                    .collect();
                let q = match (qs.as_slice(), nr_queues) {
                    ([q], _) => *q,
                    ([], Some(1)) => 0,
                    _ => continue,
                };
                out.insert((q, tag), (s.pid, r.fd, r.cqe_position(c, i)));
            }
        }
    }
    out
}

fn mark_busy(t: &mut Tag, busy: bool, ts: u64) {
    t.snap_ns = t.snap_ns.max(ts);
    t.snap_busy = busy;
    t.busy_since_ns = if busy {
        Some(t.busy_since_ns.unwrap_or(ts))
    } else {
        None
    };
}
