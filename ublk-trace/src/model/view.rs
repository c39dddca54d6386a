//! Read-only views of the model at a given time, for the TUI, the JSON output, the report and
//! the rules. Nothing here mutates or reads the clock.
use serde::Serialize;

use super::Model;
use super::device::{Device, RejectedCmd};
use super::hist::Histogram;
use super::queue::Queue;
use super::tag::{HistoryEntry, Tag, TagState};
use crate::snapshot::tagfile::PublishedTag;
use crate::snapshot::{DevInfo, DeviceSnapshot};

/// One device at `now_ns`.
#[derive(Clone, Copy)]
pub struct DeviceView<'a> {
    pub model: &'a Model,
    pub dev: &'a Device,
    pub now_ns: u64,
}

/// One queue at `now_ns`.
#[derive(Clone, Copy)]
pub struct QueueView<'a> {
    pub q_id: u16,
    /// The queue's data (an empty queue for queues of the geometry never seen).
    pub queue: &'a Queue,
    /// Queue depth when known (GET_DEV_INFO or the tag file): tags never seen are listed
    /// as UNKNOWN up to it.
    pub depth: Option<u16>,
    pub completes_seen: bool,
    pub now_ns: u64,
    /// Ages of event-derived states count up to here: `now_ns`, or the events horizon when
    /// the reader lags behind the kernel (see `Model::set_events_horizon`).
    pub events_now_ns: u64,
    /// Ages of states only snapshots support count up to the latest snapshot: the fact was
    /// true when it was read, and nothing is known of it since (a request seen in the server
    /// by a snapshot 300 ms ago may have been committed 290 ms ago).
    pub snapshot_now_ns: u64,
}

/// One tag at `now_ns`.
#[derive(Debug, Clone, Serialize)]
pub struct TagView<'a> {
    pub q_id: u16,
    pub tag: u16,
    pub state: TagState,
    /// When the tag entered `state` (0 = unknown).
    pub since_ns: u64,
    /// `now_ns - since_ns` (0 when unknown).
    pub age_ns: u64,
    /// Current or last request.
    pub op: &'a str,
    pub sector: u64,
    pub bytes: u32,
    pub owner_tid: Option<u32>,
    pub commit_result: Option<i32>,
    pub requeues: u64,
    pub rejected: u64,
    pub bad_commits: u64,
    /// Delivery inferred from a batched task-work run on the queue.
    pub delivery_inferred: bool,
    /// Only a snapshot supports the state.
    pub from_snapshot: bool,
    /// Read from the driver's own memory.
    pub from_driver: bool,
    #[serde(skip)]
    pub history: Option<&'a std::collections::VecDeque<HistoryEntry>>,
    #[serde(skip)]
    pub published: Option<&'a PublishedTag>,
    #[serde(skip)]
    pub raw: Option<&'a Tag>,
}

impl<'a> DeviceView<'a> {
    pub(crate) fn new(model: &'a Model, dev: &'a Device, now_ns: u64) -> Self {
        Self { model, dev, now_ns }
    }
    pub fn dev_id(&self) -> u32 {
        self.dev.dev_id
    }
    /// The time this view is judged at.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }
    pub fn info(&self) -> Option<&'a DevInfo> {
        self.dev.info.as_ref()
    }
    pub fn snapshot(&self) -> Option<&'a DeviceSnapshot> {
        self.dev.snapshot.as_ref()
    }
    /// (nr_queues, queue_depth) from GET_DEV_INFO, else the driver's memory, else the server's
    /// tag file.
    pub fn geometry(&self) -> Option<(u16, u16)> {
        if let Some(i) = self.dev.info {
            return Some((i.nr_hw_queues, i.queue_depth));
        }
        if let Some(d) = self
            .dev
            .driver
            .as_ref()
            .filter(|d| d.state.nr_hw_queues > 0)
        {
            return Some((d.state.nr_hw_queues, d.state.queue_depth));
        }
        let tf = self.dev.snapshot.as_ref()?.tagfile.as_ref()?;
        Some((tf.nr_queues, tf.queue_depth))
    }
    /// Queues: every queue of the geometry (never-seen ones empty) plus any seen in events.
    pub fn queues(&self) -> Vec<QueueView<'a>> {
        let (nr, depth) = match self.geometry() {
            Some((n, d)) => (n, Some(d)),
            None => (0, None),
        };
        let mut ids: std::collections::BTreeSet<u16> = (0..nr).collect();
        ids.extend(self.dev.queues.keys().copied());
        ids.into_iter()
            .map(|q_id| QueueView {
                q_id,
                queue: self.dev.queues.get(&q_id).unwrap_or_else(|| empty_queue()),
                depth,
                completes_seen: self.dev.completes_seen,
                now_ns: self.now_ns,
                events_now_ns: self.model.events_now(self.dev, self.now_ns),
                snapshot_now_ns: match self.dev.last_snapshot_ns {
                    0 => self.now_ns,
                    t => t.min(self.now_ns),
                },
            })
            .collect()
    }
    pub fn queue(&self, q_id: u16) -> Option<QueueView<'a>> {
        self.queues().into_iter().find(|q| q.q_id == q_id)
    }
    /// Pids of the processes holding `/dev/ublkcN` (latest snapshot).
    pub fn server_pids(&self) -> Vec<u32> {
        self.dev
            .snapshot
            .as_ref()
            .map(|s| s.servers.iter().map(|p| p.pid).collect())
            .unwrap_or_default()
    }
    /// Number of tags in each state (tags never seen counted as UNKNOWN up to the geometry).
    pub fn state_counts(&self) -> Vec<(TagState, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for q in self.queues() {
            for t in q.tags() {
                *counts.entry(t.state).or_insert(0usize) += 1;
            }
        }
        counts.into_iter().collect()
    }
    /// Busy tags of all queues, oldest first.
    pub fn oldest_in_flight(&self, n: usize) -> Vec<TagView<'a>> {
        let mut v: Vec<TagView<'a>> = self
            .queues()
            .into_iter()
            .flat_map(|q| q.tags().into_iter().filter(|t| t.state.busy()))
            .collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.age_ns));
        v.truncate(n);
        v
    }
    /// What the model could not know for this device, one sentence each (late attach, failed
    /// sources, missing probes, lost events): shown next to the findings so an empty list of
    /// findings is not read as "all is well" when the data was not there.
    pub fn blind_spots(&self) -> Vec<String> {
        let mut out = Vec::new();
        let dev = self.dev;
        match dev.snapshot.as_ref() {
            None => {
                out.push("no snapshot of the device yet (debugfs, procfs, GET_DEV_INFO)".into())
            }
            Some(s) => {
                out.extend(s.errors.iter().map(|e| {
                    let t = if e.timed_out { " (timed out)" } else { "" };
                    format!("{}: {}{t}", e.source, e.detail)
                }));
                if s.tagfile.is_none() {
                    out.push(
                        "no server tag-state file (not ublk-server): what the server does with a \
                         request is known from events only"
                            .into(),
                    );
                }
            }
        }
        if !dev.setup_observed {
            out.push(
                "attached after the device was set up: tags not seen since are UNKNOWN and \
                 missing FETCHes cannot be judged"
                    .into(),
            );
        }
        for q in dev.queues.values() {
            if q.requests > 0 && q.deliveries == 0 {
                out.push(format!(
                    "q{}: no delivery event seen: requests not yet delivered cannot be told \
                     from requests in the server",
                    q.q_id
                ));
            }
        }
        if self.model.lost_events() > 0 {
            out.push(format!(
                "{} trace events were lost (ring buffer full)",
                self.model.lost_events()
            ));
        }
        out
    }

    pub fn rejected(&self) -> impl Iterator<Item = &'a RejectedCmd> {
        self.dev.rejected.iter()
    }
    /// Completions per second over the last `secs` whole seconds, summed over queues.
    /// Completions per second: the disk's own counter where the snapshots read it (it costs
    /// nothing per I/O and misses nothing), else the queues' counts from the probes.
    pub fn iops(&self, secs: usize) -> f64 {
        if self.dev.disk_ios.known() {
            return self.dev.disk_ios.rate.rate(self.now_ns, secs);
        }
        self.dev
            .queues
            .values()
            .map(|q| q.completions.rate(self.now_ns, secs))
            .sum()
    }
    /// Per-second completions (oldest first) for a sparkline, from the same source as
    /// [`Self::iops`].
    pub fn iops_series(&self, secs: usize) -> Vec<u64> {
        if self.dev.disk_ios.known() {
            return self.dev.disk_ios.rate.last_seconds(self.now_ns, secs);
        }
        let mut out = vec![0u64; secs];
        for q in self.dev.queues.values() {
            for (o, v) in out
                .iter_mut()
                .zip(q.completions.last_seconds(self.now_ns, secs))
            {
                *o += v;
            }
        }
        out
    }
}

impl<'a> QueueView<'a> {
    pub fn q_id(&self) -> u16 {
        self.q_id
    }
    /// Tags 0..depth (UNKNOWN where never seen) when the depth is known, else the seen ones;
    /// tags seen beyond the depth are listed too.
    pub fn tags(&self) -> Vec<TagView<'a>> {
        let seen = self.queue.tags.iter().map(|(n, t)| self.view(*n, Some(t)));
        let Some(depth) = self.depth else {
            return seen.collect();
        };
        let mut out: Vec<TagView<'a>> = (0..depth)
            .map(|n| self.view(n, self.queue.tags.get(&n)))
            .collect();
        out.extend(
            self.queue
                .tags
                .iter()
                .filter(|(n, _)| **n >= depth)
                .map(|(n, t)| self.view(*n, Some(t))),
        );
        out
    }
    pub fn tag(&self, tag: u16) -> TagView<'a> {
        self.view(tag, self.queue.tags.get(&tag))
    }
    fn view(&self, tag: u16, t: Option<&'a Tag>) -> TagView<'a> {
        let Some(t) = t else {
            return TagView::unknown(self.q_id, tag);
        };
        let d = t.derive(self.queue.last_batch_delivered_ns, self.completes_seen);
        let age_ns = if d.since_ns == 0 {
            0
        } else {
            let now = match &t.driver {
                // The driver's read is exact up to when it was taken.
                Some(drv) if d.from_driver => drv.read_ns.min(self.now_ns),
                _ if d.from_snapshot => self.snapshot_now_ns,
                _ => self.events_now_ns,
            };
            now.saturating_sub(d.since_ns)
        };
        // Without events the driver (or the server's tag file) knows the request.
        let drv_rq = t.driver.as_ref().and_then(|d| d.request.as_ref());
        let (op, sector, bytes) = match (drv_rq, t.published.as_ref()) {
            (Some(r), _) if d.from_driver || t.op.is_empty() => (r.op.as_str(), r.sector, r.bytes),
            (_, Some(p)) if t.op.is_empty() && p.nr_sectors > 0 => (
                ublk_io_op_name(p.op),
                p.start_sector,
                p.nr_sectors.saturating_mul(512),
            ),
            _ => (t.op.as_str(), t.sector, t.bytes),
        };
        TagView {
            q_id: self.q_id,
            tag,
            state: d.state,
            since_ns: d.since_ns,
            age_ns,
            op,
            sector,
            bytes,
            owner_tid: t
                .driver
                .as_ref()
                .and_then(|d| d.task_tid)
                .or(t.owner_tid)
                .or(self.queue.driver.as_ref().and_then(|q| q.owner_tid))
                .or(t.published.as_ref().map(|p| p.tid).filter(|tid| *tid != 0)),
            commit_result: t.commit_result,
            requeues: t.requeues,
            rejected: t.rejected,
            bad_commits: t.bad_commits,
            delivery_inferred: d.delivery_inferred,
            from_snapshot: d.from_snapshot,
            from_driver: d.from_driver,
            history: Some(&t.history),
            published: t.published.as_ref(),
            raw: Some(t),
        }
    }
    pub fn server_latency(&self) -> &'a Histogram {
        &self.queue.server_latency
    }
    pub fn block_latency(&self) -> &'a Histogram {
        &self.queue.block_latency
    }
    pub fn iops(&self, secs: usize) -> f64 {
        self.queue.completions.rate(self.now_ns, secs)
    }
    /// The queue's owner thread: the last accepted command's, else the driver's
    /// `ubq_daemon`, else (6.16+: per-io tasks) the task of a tag the driver read.
    pub fn owner_tid(&self) -> Option<u32> {
        self.queue
            .owner_tid
            .or(self.queue.driver.as_ref().and_then(|q| q.owner_tid))
            .or_else(|| {
                self.queue
                    .tags
                    .values()
                    .find_map(|t| t.driver.as_ref().and_then(|d| d.task_tid))
            })
    }
}

/// `UBLK_IO_OP_*` (include/uapi/linux/ublk_cmd.h) as block op names.
fn ublk_io_op_name(op: u32) -> &'static str {
    match op {
        0 => "READ",
        1 => "WRITE",
        2 => "FLUSH",
        3 => "DISCARD",
        4 => "WRITE_SAME",
        5 => "WRITE_ZEROES",
        _ => "OP?",
    }
}

fn empty_queue() -> &'static Queue {
    static EMPTY: std::sync::OnceLock<Queue> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Queue::default)
}

impl TagView<'_> {
    fn unknown(q_id: u16, tag: u16) -> Self {
        TagView {
            q_id,
            tag,
            state: TagState::Unknown,
            since_ns: 0,
            age_ns: 0,
            op: "",
            sector: 0,
            bytes: 0,
            owner_tid: None,
            commit_result: None,
            requeues: 0,
            rejected: 0,
            bad_commits: 0,
            delivery_inferred: false,
            from_snapshot: false,
            from_driver: false,
            history: None,
            published: None,
            raw: None,
        }
    }
    /// History entries oldest first (empty for a never-seen tag).
    pub fn history(&self) -> impl Iterator<Item = &HistoryEntry> {
        self.history.into_iter().flatten()
    }
}
