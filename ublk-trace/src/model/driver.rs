//! The driver's own state ([`DriverSnapshot`], read from kernel memory by `crate::driver`)
//! merged into the model: per device the state the driver holds, per queue its owner and
//! abort flags, per tag its `ublk_io` and blk-mq request.
//!
//! A tag the driver shows is never UNKNOWN, and a read newer than every event of a tag decides
//! its state: events may be lost, batched (≤ 6.14 task work names no tag) or not traced at all
//! (late attach, no kprobes). Events newer than the read win: the tag moved on since.
use serde::{Deserialize, Serialize};

use super::Model;
use super::tag::{Derived, Tag, TagState};
use crate::driver::{self, DriverSnapshot, IoFlags, RequestState, TagView as DriverView};

/// One tag as the driver held it at `read_ns`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverTag {
    pub read_ns: u64,
    pub view: DriverView,
    /// The first read that showed this view (and this request), continuously since.
    pub view_since_ns: u64,
    pub flags: IoFlags,
    /// `io->res`: the last result committed for the tag.
    pub res: i32,
    pub cmd_parked: bool,
    /// `io->task` (6.16+): the thread that owns this tag.
    pub task_tid: Option<u32>,
    pub request: Option<RequestState>,
    /// A read after `served_after_ns` no longer held the request an earlier read showed in
    /// the server: the server committed it after then (0 = never seen). Memory keeps no
    /// commit time, so this is the bound two reads give.
    #[serde(default)]
    pub served_after_ns: u64,
}

impl DriverTag {
    /// When the tag's request started, when the driver's request records it.
    pub fn request_start_ns(&self) -> Option<u64> {
        self.request
            .as_ref()
            .and_then(|r| r.start_time_ns)
            .filter(|t| *t > 0)
    }
}

/// One queue as the driver held it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriverQueue {
    pub read_ns: u64,
    /// `ubq->ubq_daemon` (up to 6.15).
    pub owner_tid: Option<u32>,
    pub owner_comm: Option<String>,
    pub canceling: Option<bool>,
    pub force_abort: Option<bool>,
    pub fail_io: Option<bool>,
    pub nr_io_ready: Option<u32>,
    /// BATCH_IO: fetch commands armed and tags waiting for one.
    pub batch: Option<driver::BatchQueue>,
    /// Tags whose two reads disagreed in the latest read (they keep their older view).
    pub changing: Vec<u16>,
}

/// One device as the driver held it: the reader's own record, its queues left out (they are
/// merged into the model's queues and tags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverDevice {
    pub read_ns: u64,
    pub state: driver::DeviceState,
    /// Fields this kernel lacks, named as the reader names them.
    pub not_readable: Vec<String>,
}

fn tid(t: &Option<driver::TaskRef>) -> Option<u32> {
    t.as_ref()
        .and_then(|t| u32::try_from(t.tid).ok())
        .filter(|t| *t > 0)
}

impl Model {
    /// Merge one read of the driver's memory (every device it holds, or the one asked for).
    pub fn apply_driver(&mut self, snap: &DriverSnapshot) {
        let ts = snap.taken_ns;
        for d in &snap.devices {
            let dev = self.device_mut(d.dev_id, ts);
            dev.driver = Some(DriverDevice {
                read_ns: ts,
                // Every field but these two is Copy: no per-tick clone of the queues.
                state: driver::DeviceState {
                    queues: Vec::new(),
                    state_name: d.state_name.clone(),
                    ..*d
                },
                not_readable: snap.not_readable.clone(),
            });
            for q in &d.queues {
                let queue = dev.queue_mut(q.q_id);
                queue.driver = Some(DriverQueue {
                    read_ns: ts,
                    owner_tid: tid(&q.owner),
                    owner_comm: q.owner.as_ref().map(|t| t.comm.clone()),
                    canceling: q.canceling,
                    force_abort: q.force_abort,
                    fail_io: q.fail_io,
                    nr_io_ready: q.nr_io_ready,
                    batch: q.batch,
                    changing: q.changing.clone(),
                });
                for t in &q.tags {
                    queue.tags.entry(t.tag).or_default().apply_driver(t, ts);
                }
            }
        }
    }
}

impl Tag {
    fn apply_driver(&mut self, t: &driver::TagState, read_ns: u64) {
        // Which request a read shows: a tag's next request differs in sector or start time.
        let rq = |r: Option<&RequestState>| r.map(|r| (r.sector, r.start_time_ns, r.op.clone()));
        let same = self
            .driver
            .as_ref()
            .is_some_and(|p| p.view == t.view && rq(p.request.as_ref()) == rq(t.request.as_ref()));
        let view_since_ns = match &self.driver {
            Some(p) if same => p.view_since_ns,
            _ => read_ns,
        };
        // In the server at the last read, now waiting or on another request: committed since.
        // (The same request queued again is a requeue, not a commit.)
        let served = |p: &DriverTag| {
            let was_in_server = matches!(p.view, DriverView::InServer | DriverView::NeedGetData)
                && p.request.is_some();
            let moved_on = match t.view {
                DriverView::Waiting => true,
                DriverView::Queued | DriverView::InServer => {
                    rq(p.request.as_ref()) != rq(t.request.as_ref())
                }
                _ => false,
            };
            was_in_server && moved_on
        };
        let served_after_ns = match &self.driver {
            Some(p) if served(p) => p.read_ns,
            Some(p) => p.served_after_ns,
            None => 0,
        };
        self.driver = Some(DriverTag {
            read_ns,
            view: t.view,
            view_since_ns,
            flags: t.flags.clone(),
            res: t.res,
            cmd_parked: t.cmd_parked,
            task_tid: tid(&t.task),
            request: t.request.clone(),
            served_after_ns,
        });
    }

    /// The tag's state from the driver's read, when that read is newer than `latest_event_ns`.
    pub(crate) fn derive_from_driver(&self, latest_event_ns: u64) -> Option<Derived> {
        let d = self.driver.as_ref()?;
        if d.read_ns < latest_event_ns {
            return None;
        }
        let mk = |state, since_ns| Derived {
            state,
            since_ns,
            delivery_inferred: false,
            from_snapshot: false,
            from_driver: true,
        };
        let rq_start = d.request_start_ns();
        Some(match d.view {
            // Since the last FETCH/COMMIT seen (0: armed before the tracer attached).
            DriverView::Waiting => mk(TagState::Waiting, self.fetch_ns.max(self.commit_ns)),
            DriverView::Queued => mk(TagState::Queued, rq_start.unwrap_or(d.view_since_ns)),
            DriverView::InServer | DriverView::NeedGetData => {
                // Memory does not keep the delivery time: an event that saw this request's
                // delivery dates it, else the request's start bounds it from below.
                let seen = rq_start.is_none_or(|s| self.delivered_ns >= s);
                let since = if self.delivered_ns > 0 && seen {
                    self.delivered_ns
                } else {
                    rq_start.unwrap_or(d.view_since_ns)
                };
                mk(TagState::InServer, since)
            }
            DriverView::Aborted => mk(TagState::Aborted, d.view_since_ns),
            DriverView::NotFetched => mk(TagState::NotFetched, d.view_since_ns),
            DriverView::Other => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{driver_rq, driver_snap, driver_tag};

    #[test]
    fn a_request_gone_from_the_server_between_two_reads_was_served_after_the_first() {
        const S: u64 = 1_000_000_000;
        let served_after = |later: crate::driver::TagState| {
            let mut m = Model::new();
            let held = driver_tag(1, DriverView::InServer, Some(driver_rq(S)));
            m.apply_driver(&driver_snap(2 * S, vec![held]));
            m.apply_driver(&driver_snap(3 * S, vec![later]));
            m.tag_mut_for_test(0, 0, 1)
                .driver
                .as_ref()
                .map_or(u64::MAX, |d| d.served_after_ns)
        };
        let committed = driver_tag(1, DriverView::Waiting, None);
        assert_eq!(served_after(committed), 2 * S, "committed: waits again");
        let next = driver_tag(1, DriverView::InServer, Some(driver_rq(2 * S + 1)));
        assert_eq!(
            served_after(next),
            2 * S,
            "committed: holds the next request"
        );
        let still = driver_tag(1, DriverView::InServer, Some(driver_rq(S)));
        assert_eq!(served_after(still), 0, "still held");
        let requeued = driver_tag(1, DriverView::Queued, Some(driver_rq(S)));
        assert_eq!(served_after(requeued), 0, "the same request queued again");
        let aborted = driver_tag(1, DriverView::Aborted, None);
        assert_eq!(served_after(aborted), 0, "aborted, not served");
    }

    #[test]
    fn a_late_attach_knows_every_tag_from_the_driver() {
        let mut m = Model::new();
        m.apply_driver(&driver_snap(
            5_000_000_000,
            vec![
                driver_tag(0, DriverView::Waiting, None),
                driver_tag(1, DriverView::InServer, Some(driver_rq(1_000_000_000))),
                driver_tag(2, DriverView::Queued, Some(driver_rq(4_000_000_000))),
                driver_tag(3, DriverView::NotFetched, None),
            ],
        ));
        let dev = m.device(0, 6_000_000_000).expect("device from the driver");
        let q = dev.queue(0).expect("queue 0");
        let states: Vec<TagState> = q.tags().iter().map(|t| t.state).collect();
        assert_eq!(
            states,
            vec![
                TagState::Waiting,
                TagState::InServer,
                TagState::Queued,
                TagState::NotFetched
            ]
        );
        let t1 = q.tag(1);
        // Aged from the request's start up to the read (the fact held then).
        assert_eq!((t1.since_ns, t1.age_ns), (1_000_000_000, 4_000_000_000));
        assert!(t1.from_driver && !t1.from_snapshot);
        assert_eq!((t1.op, t1.sector, t1.bytes), ("READ", 2048, 4096));
        assert_eq!(
            t1.owner_tid,
            Some(crate::model::testutil::Q_TID),
            "the queue's daemon owns its tags"
        );
    }

    #[test]
    fn events_newer_than_the_read_win() {
        let mut m = Model::new();
        m.apply_driver(&driver_snap(
            5_000_000_000,
            vec![driver_tag(
                1,
                DriverView::InServer,
                Some(driver_rq(1_000_000_000)),
            )],
        ));
        // A commit accepted after the read: the tag waits again.
        let t = m.tag_mut_for_test(0, 0, 1);
        t.commit_ns = 5_500_000_000;
        t.commit_result = Some(4096);
        t.queue_rq_ns = 1_000_000_000;
        t.commits = 1;
        let dev = m.device(0, 6_000_000_000).expect("device");
        let v = dev.queue(0).expect("queue").tag(1);
        assert_eq!(v.state, TagState::Waiting);
        assert!(!v.from_driver);
    }

    #[test]
    fn a_completion_after_the_read_ends_the_request_the_read_held() {
        let mut m = Model::new();
        m.apply_driver(&driver_snap(
            5_000_000_000,
            vec![
                driver_tag(1, DriverView::InServer, Some(driver_rq(4_000_000_000))),
                driver_tag(2, DriverView::Waiting, None),
            ],
        ));
        // The light path's slow completion of tag 1's request, and a requeue-free
        // completion on tag 2 that tells no state of its own.
        for (tag, done) in [(1u16, 5_400_000_000u64), (2, 5_300_000_000)] {
            let t = m.tag_mut_for_test(0, 0, tag);
            t.queue_rq_ns = 4_000_000_000;
            t.block_issue_ns = 4_000_000_000;
            t.complete_ns = done;
        }
        let dev = m.device(0, 6_000_000_000).expect("device");
        let q = dev.queue(0).expect("queue");
        let t1 = q.tag(1);
        assert_eq!((t1.state, t1.since_ns), (TagState::Waiting, 5_400_000_000));
        assert_eq!(q.tag(2).state, TagState::Waiting, "never UNKNOWN");
    }

    #[test]
    fn a_view_keeps_its_first_read_time_until_it_changes() {
        let mut m = Model::new();
        let idle = || vec![driver_tag(0, DriverView::NotFetched, None)];
        m.apply_driver(&driver_snap(1_000, idle()));
        m.apply_driver(&driver_snap(2_000, idle()));
        let t = &m.raw_device(0).expect("dev").queues[&0].tags[&0];
        let d = t.driver.as_ref().expect("driver view");
        assert_eq!((d.view_since_ns, d.read_ns), (1_000, 2_000));
        m.apply_driver(&driver_snap(
            3_000,
            vec![driver_tag(0, DriverView::Waiting, None)],
        ));
        let t = &m.raw_device(0).expect("dev").queues[&0].tags[&0];
        assert_eq!(t.driver.as_ref().map(|d| d.view_since_ns), Some(3_000));
    }
}
