//! One (queue, tag): stored facts (timestamps of the last accepted FETCH, request start,
//! delivery, accepted commit, block completion, requeue) and the state derived from them, in
//! the tokio-console style: no state enum is stored, so reordered events, lost events and
//! late snapshots all converge on the same answer.
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::snapshot::tagfile::PublishedTag;

/// Entries kept per tag for the detail view.
pub const HISTORY_LEN: usize = 16;
/// Requeue timestamps kept per tag (storm detection).
pub const REQUEUE_WINDOW: usize = 32;

/// Where a tag is (DESIGN.md "Per-tag state").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagState {
    /// Never seen (tracer attached late, tag idle): not "missing".
    Unknown,
    /// FETCH/COMMIT_AND_FETCH accepted: the server waits for a request (healthy for hours).
    Waiting,
    /// A request was started for the tag (ublk_queue_rq / block_rq_issue) and not yet
    /// delivered to the server's owner thread; or it was requeued.
    Queued,
    /// Delivered to the server (task work ran / CQE posted), no commit yet.
    InServer,
    /// Commit accepted but the block request has not completed.
    Committed,
    /// Only a snapshot knows: blk-mq lists the request in flight; delivery unknown.
    InFlight,
    /// The driver holds no accepted FETCH for the tag (read from its memory: a fact, unlike
    /// [`Self::Unknown`]).
    NotFetched,
    /// The driver aborted the tag's command (server gone, queue torn down).
    Aborted,
}

impl TagState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "UNKNOWN",
            Self::Waiting => "WAITING",
            Self::Queued => "QUEUED",
            Self::InServer => "IN_SERVER",
            Self::Committed => "COMMITTED",
            Self::InFlight => "IN_FLIGHT",
            Self::NotFetched => "NOT_FETCHED",
            Self::Aborted => "ABORTED",
        }
    }
    /// A request occupies the tag.
    pub fn busy(self) -> bool {
        matches!(
            self,
            Self::Queued | Self::InServer | Self::Committed | Self::InFlight
        )
    }
}

/// One entry of a tag's bounded history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub ts_ns: u64,
    pub tid: u32,
    pub what: HistoryKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HistoryKind {
    Fetch,
    Commit { result: i32 },
    OtherCmd { op: String, ret: i32 },
    Rejected { op: String, errno: i32 },
    Cancel { op: String },
    QueueRq { op: String, sector: u64, bytes: u32 },
    Delivered,
    Issue,
    Complete { error: i32 },
    Requeue,
}

impl std::fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fetch => write!(f, "FETCH_REQ accepted"),
            Self::Commit { result } => write!(f, "COMMIT_AND_FETCH_REQ accepted, result {result}"),
            Self::OtherCmd { op, ret } => write!(f, "{op} returned {ret}"),
            Self::Rejected { op, errno } => write!(f, "{op} REJECTED: {}", errno_name(*errno)),
            Self::Cancel { op } => write!(f, "{op} cancelled (ring teardown)"),
            Self::QueueRq { op, sector, bytes } => {
                write!(f, "queue_rq {op} sector {sector} {bytes} bytes")
            }
            Self::Delivered => write!(f, "delivered to the server"),
            Self::Issue => write!(f, "block issue"),
            Self::Complete { error } if *error != 0 => {
                write!(f, "block complete, error {}", errno_name(*error))
            }
            Self::Complete { .. } => write!(f, "block complete"),
            Self::Requeue => write!(f, "requeued by the block layer"),
        }
    }
}

/// `-22` -> `-EINVAL (-22)`; unknown numbers stay numbers.
pub fn errno_name(e: i32) -> String {
    let name = match -e {
        1 => "EPERM",
        2 => "ENOENT",
        5 => "EIO",
        11 => "EAGAIN",
        12 => "ENOMEM",
        14 => "EFAULT",
        16 => "EBUSY",
        19 => "ENODEV",
        22 => "EINVAL",
        95 => "EOPNOTSUPP",
        110 => "ETIMEDOUT",
        125 => "ECANCELED",
        529 => "EIOCBQUEUED",
        _ => return e.to_string(),
    };
    format!("-{name} ({e})")
}

/// An I/O command seen at entry, waiting for its return to say accepted or rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCmd {
    pub ts_ns: u64,
    pub tid: u32,
    pub op_nr: u32,
    pub op: String,
    pub result: i32,
}

/// A negative commit, or 0 bytes for a non-empty read/write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadCommit {
    pub ts_ns: u64,
    pub result: i32,
    pub op: String,
    pub bytes: u32,
}

/// Everything stored about one tag. Timestamps are CLOCK_MONOTONIC ns, 0 = never.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tag {
    /// Last accepted FETCH_REQ or COMMIT_AND_FETCH_REQ (the tag waits since then).
    pub fetch_ns: u64,
    /// Last request start (ublk_queue_rq or block_rq_issue).
    pub queue_rq_ns: u64,
    pub delivered_ns: u64,
    /// First batched delivery run on the queue (≤ 6.14 task work, tags unknown) after the
    /// current request started: when that request reached the server. The queue's latest
    /// run cannot say it: other tags' requests move it on while this one sits in the server.
    pub batch_delivered_ns: u64,
    /// Last accepted COMMIT_AND_FETCH_REQ (entry time of the command).
    pub commit_ns: u64,
    pub complete_ns: u64,
    pub requeue_ns: u64,
    pub block_issue_ns: u64,
    /// Request under way (or last one): op, sector, bytes.
    pub op: String,
    pub sector: u64,
    pub bytes: u32,
    pub commit_result: Option<i32>,
    /// Thread that owns the tag (last accepted FETCH/COMMIT).
    pub owner_tid: Option<u32>,
    pub pending: Option<PendingCmd>,
    /// A return seen before its entry (reordered stream): (ts, op_nr, ret).
    pub orphan_done: Option<(u64, u32, i32)>,
    pub fetches: u64,
    pub commits: u64,
    /// The eBPF state map's commit counter for this tag, as last read.
    pub kernel_commits_read: Option<u64>,
    pub requeues: u64,
    pub rejected: u64,
    pub bad_commits: u64,
    pub last_bad: Option<BadCommit>,
    pub last_block_error: Option<(u64, i32)>,
    pub requeue_times: VecDeque<u64>,
    /// Snapshot: first time blk-mq listed this tag in flight, continuously since.
    pub busy_since_ns: Option<u64>,
    /// Snapshot: time of the latest blk-mq read and whether the tag was in flight then.
    pub snap_ns: u64,
    pub snap_busy: bool,
    /// Snapshot: a delivery CQE for this tag sits unreaped in the server's ring, since.
    pub cqe_since_ns: Option<u64>,
    /// Which CQE that is: a tag's user_data repeats for every request, so only the CQE's
    /// position in the ring tells a CQE left unreaped from the next one posted for the tag.
    pub cqe_id: Option<CqeId>,
    /// The server's own view, when it publishes one.
    pub published: Option<PublishedTag>,
    /// The driver's own view of the tag (`ublk_io` + blk-mq request), as last read.
    #[serde(default)]
    pub driver: Option<super::driver::DriverTag>,
    pub history: VecDeque<HistoryEntry>,
}

/// One posted CQE: (server pid, ring fd, position in the completion queue counted since the
/// ring was created; it wraps at 2^32 like the kernel's counters).
pub type CqeId = (u32, u32, u32);

/// Derived state with the time it was entered and how it was known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Derived {
    pub state: TagState,
    /// When the tag entered `state` (0 = unknown).
    pub since_ns: u64,
    /// The delivery was inferred from a batched task-work run on the queue, not seen per tag.
    pub delivery_inferred: bool,
    /// Only a snapshot (debugfs/tag file) supports this state.
    pub from_snapshot: bool,
    /// Read from the driver's own memory (exact when read; ages count to that read).
    #[serde(default)]
    pub from_driver: bool,
}

impl Tag {
    pub(crate) fn push_history(&mut self, ts_ns: u64, tid: u32, what: HistoryKind) {
        // The same step from the event stream and from the state map: keep one.
        let at = self.history.partition_point(|h| h.ts_ns <= ts_ns);
        let prev = at.checked_sub(1).and_then(|i| self.history.get(i));
        if prev.is_some_and(|h| h.ts_ns == ts_ns && h.what == what) {
            return;
        }
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        // Keep the history in time order even when events arrive reordered.
        let at = self.history.partition_point(|h| h.ts_ns <= ts_ns);
        self.history.insert(at, HistoryEntry { ts_ns, tid, what });
    }

    /// Latest event-sourced timestamp.
    pub(crate) fn latest_event_ns(&self) -> u64 {
        self.fetch_ns
            .max(self.queue_rq_ns)
            .max(self.delivered_ns)
            .max(self.commit_ns)
            .max(self.complete_ns)
            .max(self.requeue_ns)
    }

    /// Request start including requeues (a requeued request is waiting to start again).
    fn request_ns(&self) -> u64 {
        self.queue_rq_ns.max(self.requeue_ns)
    }

    /// A batched delivery run on the tag's queue at `ts`: true when it delivered the current
    /// request (which started before it); the earliest such run dates the delivery.
    pub(crate) fn note_batch_delivery(&mut self, ts: u64) -> bool {
        let req = self.request_ns();
        if req == 0 || ts <= req {
            return false;
        }
        if self.batch_delivered_ns <= req || ts < self.batch_delivered_ns {
            self.batch_delivered_ns = ts;
        }
        true
    }

    /// State from events alone. `queue_delivered_ns`: the queue's last delivery run (batched
    /// task work delivers several tags per run); the request's own first run after its start
    /// ([`Self::batch_delivered_ns`]) dates the delivery when known, else (its start was read
    /// after the run) the queue's last run does; `completes_seen`: the device emits block
    /// completions (else COMMITTED cannot be told from done).
    pub fn derive_from_events(&self, queue_delivered_ns: u64, completes_seen: bool) -> Derived {
        let d = |state, since_ns| Derived {
            state,
            since_ns,
            delivery_inferred: false,
            from_snapshot: false,
            from_driver: false,
        };
        let req = self.request_ns();
        // Completed without a commit (the kernel failed it: abort at teardown, timeout):
        // the request is over.
        let ended_by_kernel = self.complete_ns >= req && self.requeue_ns <= self.queue_rq_ns;
        if req > 0 && req > self.commit_ns && !ended_by_kernel {
            if self.delivered_ns >= req {
                return d(TagState::InServer, self.delivered_ns);
            }
            // A requeued request sits in the block layer: no delivery run can have taken it.
            if queue_delivered_ns > req && self.requeue_ns <= self.queue_rq_ns {
                let since = if self.batch_delivered_ns > req {
                    self.batch_delivered_ns
                } else {
                    queue_delivered_ns
                };
                return Derived {
                    delivery_inferred: true,
                    ..d(TagState::InServer, since)
                };
            }
            return d(TagState::Queued, req);
        }
        if self.commit_ns > 0
            && completes_seen
            && self.queue_rq_ns > 0
            // No completion at all since the request started (robust to a commit time taken
            // from the command's return, which comes after the completion).
            && self.complete_ns < self.queue_rq_ns
            && self.commit_result.is_some_and(|r| r >= 0)
        {
            return d(TagState::Committed, self.commit_ns);
        }
        if self.fetch_ns > 0 || self.commit_ns > 0 {
            return d(TagState::Waiting, self.fetch_ns.max(self.commit_ns));
        }
        d(TagState::Unknown, 0)
    }

    /// Every source combined. The driver's own state, read after every event of the tag,
    /// is the truth (late attach, lost events, batched delivery); else events and the
    /// newest snapshot.
    pub fn derive(&self, queue_delivered_ns: u64, completes_seen: bool) -> Derived {
        if let Some(d) = self.derive_from_driver(self.latest_event_ns()) {
            return d;
        }
        let ev = self.derive_without_driver(queue_delivered_ns, completes_seen);
        if ev.state != TagState::Unknown {
            return ev;
        }
        // Events newer than the driver's read that tell no state: the light path's slow or
        // failed completion of a request the read held. Completed since: the commit that
        // completed it re-armed the tag; else the read still stands.
        // The completed request is the one the read held: it started no earlier.
        let read_start = self.driver.as_ref().and_then(|d| d.request_start_ns());
        let ended = |d: &Derived| match read_start {
            Some(s) => self.complete_ns > s && self.queue_rq_ns >= s,
            None => self.complete_ns > d.since_ns,
        };
        match self.derive_from_driver(0) {
            Some(d) if d.state.busy() && ended(&d) => Derived {
                state: TagState::Waiting,
                since_ns: self.complete_ns,
                ..d
            },
            Some(d) => d,
            None => ev,
        }
    }

    /// Events and the newest snapshot combined: a snapshot newer than every event of the tag
    /// overrides what the events imply (late attach, lost events).
    pub fn derive_without_driver(&self, queue_delivered_ns: u64, completes_seen: bool) -> Derived {
        let ev = self.derive_from_events(queue_delivered_ns, completes_seen);
        let ev = self.server_rearmed_since(ev);
        if self.snap_ns == 0 || self.snap_ns <= self.latest_event_ns() {
            return self.refine_with_published(ev);
        }
        match (self.snap_busy, ev.state.busy()) {
            (true, true) if ev.state == TagState::Queued && self.cqe_since_ns.is_some() => {
                Derived {
                    state: TagState::InServer,
                    since_ns: ev.since_ns,
                    delivery_inferred: false,
                    from_snapshot: true,
                    from_driver: false,
                }
            }
            (true, true) => self.newer_published_request(ev),
            // blk-mq has no request on the tag: whatever the tag file last said about a
            // request is over (the kernel is the authority on what is in flight).
            (false, false) if ev.state == TagState::Unknown && self.published.is_some() => {
                Derived {
                    state: TagState::Waiting,
                    since_ns: 0,
                    delivery_inferred: false,
                    from_snapshot: true,
                    from_driver: false,
                }
            }
            (false, false) => ev,
            (true, false) => self.snapshot_busy_state(),
            // blk-mq says no request: the events missed its completion.
            (false, true) => Derived {
                state: if self.fetch_ns > 0 || self.published.is_some() {
                    TagState::Waiting
                } else {
                    TagState::Unknown
                },
                since_ns: 0,
                delivery_inferred: false,
                from_snapshot: true,
                from_driver: false,
            },
        }
    }

    /// The server's tag file says it re-armed the tag (FETCH/COMMIT submitted) after the
    /// moment the events put a request on it: that request is over and its end has not been
    /// read yet (a lagging or lossy event stream). Timestamps share CLOCK_MONOTONIC, so this
    /// holds whatever the order in which the sources were read.
    fn server_rearmed_since(&self, ev: Derived) -> Derived {
        let Some(p) = self.published.as_ref() else {
            return ev;
        };
        let rearmed = p.state == "waiting" && p.waiting_since_ns > ev.since_ns;
        if !ev.state.busy() || ev.since_ns == 0 || !rearmed {
            return ev;
        }
        Derived {
            state: TagState::Waiting,
            since_ns: p.waiting_since_ns,
            delivery_inferred: false,
            from_snapshot: true,
            from_driver: false,
        }
    }

    /// In flight per debugfs and nothing in the events: ask the server's tag file.
    fn snapshot_busy_state(&self) -> Derived {
        // Snapshots are sparse: a tag busy in two of them may have served several requests
        // in between. The request seen now started after the last event that saw the tag
        // (the events call it idle) and after the server last re-armed it.
        let rearmed = self
            .published
            .as_ref()
            .filter(|p| p.state == "waiting")
            .map_or(0, |p| p.waiting_since_ns);
        let floor = self.latest_event_ns().max(rearmed);
        let since = self.busy_since_ns.unwrap_or(self.snap_ns).max(floor);
        let mk = |state, since_ns| Derived {
            state,
            since_ns,
            delivery_inferred: false,
            from_snapshot: true,
            from_driver: false,
        };
        if let Some(cqe) = self.cqe_since_ns {
            // Delivered: its CQE waits in the server's ring (posted, never reaped).
            return mk(TagState::InServer, cqe.max(floor));
        }
        match self.published.as_ref().map(|p| (p.state.as_str(), p)) {
            Some(("in_server", p)) if p.received_ns > 0 => mk(TagState::InServer, p.received_ns),
            Some(("committed", p)) if p.received_ns > 0 => mk(TagState::InServer, p.received_ns),
            // The server still waits for this tag while the kernel started a request on it:
            // it was not delivered.
            Some(("waiting", _)) => mk(TagState::Queued, since),
            _ => mk(TagState::InFlight, since),
        }
    }

    /// Events and blk-mq agree the tag is busy; the tag file may know of a newer request
    /// (the events of the newer one were lost): trust the newer receive time.
    fn newer_published_request(&self, ev: Derived) -> Derived {
        match self.published.as_ref() {
            Some(p) if p.state == "in_server" && p.received_ns > ev.since_ns => Derived {
                state: TagState::InServer,
                since_ns: p.received_ns,
                delivery_inferred: false,
                from_snapshot: true,
                from_driver: false,
            },
            _ => ev,
        }
    }

    /// Without events, the server's tag file alone says where an idle-looking tag is.
    fn refine_with_published(&self, ev: Derived) -> Derived {
        if ev.state != TagState::Unknown {
            return ev;
        }
        let Some(p) = self.published.as_ref() else {
            return ev;
        };
        let mk = |state, since_ns| Derived {
            state,
            since_ns,
            delivery_inferred: false,
            from_snapshot: true,
            from_driver: false,
        };
        match p.state.as_str() {
            "waiting" => mk(TagState::Waiting, p.waiting_since_ns),
            "in_server" | "committed" => mk(TagState::InServer, p.received_ns),
            _ => ev,
        }
    }

    /// Requeues of this tag within `window_ns` before `now_ns`.
    pub fn requeues_within(&self, now_ns: u64, window_ns: u64) -> usize {
        let from = now_ns.saturating_sub(window_ns);
        self.requeue_times.iter().filter(|t| **t >= from).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_timestamps_not_arrival_order() {
        let mut t = Tag {
            fetch_ns: 10,
            ..Default::default()
        };
        assert_eq!(t.derive(0, false).state, TagState::Waiting);
        t.queue_rq_ns = 20;
        assert_eq!(t.derive(0, false).state, TagState::Queued);
        t.delivered_ns = 25;
        let d = t.derive(0, false);
        assert_eq!((d.state, d.since_ns), (TagState::InServer, 25));
        t.commit_ns = 30;
        t.fetch_ns = 30;
        t.commit_result = Some(4096);
        assert_eq!(t.derive(0, false).state, TagState::Waiting);
        // With block completions observed, a commit without completion is COMMITTED.
        assert_eq!(t.derive(0, true).state, TagState::Committed);
        t.complete_ns = 31;
        assert_eq!(t.derive(0, true).state, TagState::Waiting);
    }

    #[test]
    fn batched_delivery_is_inferred_from_the_queue() {
        let t = Tag {
            fetch_ns: 10,
            queue_rq_ns: 20,
            ..Default::default()
        };
        let d = t.derive(22, false);
        assert_eq!(d.state, TagState::InServer);
        assert!(d.delivery_inferred);
        // A queue delivery run before the request started delivers nothing for it.
        assert_eq!(t.derive(15, false).state, TagState::Queued);
    }

    #[test]
    fn requeue_goes_back_to_queued() {
        let t = Tag {
            fetch_ns: 30,
            queue_rq_ns: 10,
            delivered_ns: 20,
            commit_ns: 30,
            requeue_ns: 31,
            commit_result: Some(0),
            ..Default::default()
        };
        assert_eq!(t.derive(40, false).state, TagState::Queued);
    }

    #[test]
    fn newer_snapshot_overrides_events() {
        let mut t = Tag {
            snap_ns: 100,
            snap_busy: true,
            busy_since_ns: Some(90),
            ..Default::default()
        };
        let d = t.derive(0, false);
        assert_eq!((d.state, d.since_ns), (TagState::InFlight, 90));
        assert!(d.from_snapshot);
        // An old snapshot does not override newer events.
        t.fetch_ns = 200;
        assert_eq!(t.derive(0, false).state, TagState::Waiting);
        // Events say in server, a newer snapshot says no request: events lost the commit.
        let lost = Tag {
            fetch_ns: 10,
            queue_rq_ns: 20,
            delivered_ns: 21,
            snap_ns: 50,
            snap_busy: false,
            ..Default::default()
        };
        assert_eq!(lost.derive(0, false).state, TagState::Waiting);
    }

    #[test]
    fn history_is_bounded_and_ordered() {
        let mut t = Tag::default();
        for ts in (0..40u64).rev() {
            t.push_history(ts, 1, HistoryKind::Delivered);
        }
        assert_eq!(t.history.len(), HISTORY_LEN);
        assert!(
            t.history
                .iter()
                .zip(t.history.iter().skip(1))
                .all(|(a, b)| a.ts_ns <= b.ts_ns)
        );
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(-22), "-EINVAL (-22)");
        assert_eq!(errno_name(-9999), "-9999");
    }
}
