//! Model tests on synthetic streams (incl. reordering and loss).
use super::testutil::*;
use super::*;
use crate::snapshot::blkmq::{BlkMqSnapshot, HctxSnapshot, parse_rq_list};
use crate::snapshot::{DevInfo, DeviceSnapshot};

fn state(m: &Model, dev: u32, q: u16, tag: u16, now: u64) -> TagState {
    m.device(dev, now)
        .and_then(|d| d.queue(q))
        .map_or(TagState::Unknown, |q| q.tag(tag).state)
}

#[test]
fn healthy_request_cycle() {
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 4, MS));
    assert_eq!(state(&m, 0, 0, 3, 2 * MS), TagState::Waiting);
    let io = healthy_io(0, 0, 3, 10 * MS, Q_TID);
    m.apply_all(&io[..1]);
    assert_eq!(state(&m, 0, 0, 3, 11 * MS), TagState::Queued);
    m.apply_all(&io[1..3]);
    assert_eq!(state(&m, 0, 0, 3, 11 * MS), TagState::InServer);
    m.apply_all(&io[3..]);
    assert_eq!(state(&m, 0, 0, 3, 11 * MS), TagState::Waiting);
    let d = m.device(0, 11 * MS).expect("device");
    let q = d.queue(0).expect("queue");
    assert_eq!(q.queue.completed, 1);
    assert_eq!(q.server_latency().count(), 1);
    assert_eq!(q.block_latency().count(), 1);
    assert!(m.raw_device(0).is_some_and(|d| d.setup_observed));
}

#[test]
fn reordered_stream_gives_the_same_states() {
    let mut evs = setup(0, 1, 2, MS);
    evs.extend(healthy_io(0, 0, 0, 10 * MS, Q_TID));
    evs.push(queue_rq(0, 0, 1, 20 * MS, "WRITE", 8192));
    evs.push(delivered(0, 0, 1, 20 * MS + 5000, Q_TID));
    let mut a = Model::new();
    a.apply_all(&evs);
    let mut b = Model::new();
    b.apply_all(evs.iter().rev());
    for m in [&a, &b] {
        assert_eq!(state(m, 0, 0, 0, 30 * MS), TagState::Waiting);
        assert_eq!(state(m, 0, 0, 1, 30 * MS), TagState::InServer);
    }
    let age = |m: &Model| {
        m.device(0, 30 * MS)
            .and_then(|d| d.queue(0))
            .map(|q| q.tag(1).age_ns)
    };
    assert_eq!(age(&a), age(&b));
    assert_eq!(age(&a), Some(10 * MS - 5000));
}

#[test]
fn rejected_commit_does_not_transition() {
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 2, MS));
    m.apply(&queue_rq(0, 0, 1, 10 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, 1, 10 * MS + 10, Q_TID));
    // Another thread tries to commit: -EINVAL.
    m.apply_all(&commit_rejected(0, 0, 1, 11 * MS, 777, -22));
    assert_eq!(state(&m, 0, 0, 1, 12 * MS), TagState::InServer);
    let d = m.raw_device(0).expect("device");
    let r = d.rejected.back().expect("rejected recorded");
    assert_eq!(
        (r.tid, r.owner_tid, r.errno, r.tag),
        (777, Some(Q_TID), -22, 1)
    );
}

#[test]
fn cancel_is_teardown_not_a_fetch() {
    let mut m = Model::new();
    m.apply(&cancel(0, 0, 5, 10 * MS, Q_TID));
    assert_eq!(state(&m, 0, 0, 5, 11 * MS), TagState::Unknown);
    assert_eq!(m.raw_device(0).map(|d| d.cancels), Some(1));
    assert!(!m.raw_device(0).is_some_and(|d| d.setup_observed));
}

#[test]
fn late_attach_tags_are_unknown_up_to_geometry() {
    let mut m = Model::new();
    let snap = DeviceSnapshot {
        dev_id: 0,
        taken_ns: 5 * MS,
        char_dev_present: true,
        block_dev_present: true,
        dev_info: Some(DevInfo {
            state: 1,
            ublksrv_pid: 10,
            nr_hw_queues: 2,
            queue_depth: 8,
            flags: 0,
            max_io_buf_bytes: 0,
        }),
        blk: Some(BlkMqSnapshot {
            hctxs: vec![HctxSnapshot {
                index: 0,
                busy: parse_rq_list(
                    "0 {.op=READ, .cmd_flags=SYNC, .rq_flags=IO_STAT, .state=in_flight, .tag=4, .internal_tag=-1}",
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    m.apply_snapshot(&snap, 5 * MS);
    let d = m.device(0, 7 * MS).expect("device");
    assert_eq!(d.queues().len(), 2);
    let tags = d.queue(1).expect("q1").tags();
    assert_eq!(tags.len(), 8);
    assert!(tags.iter().all(|t| t.state == TagState::Unknown));
    let t4 = d.queue(0).expect("q0").tag(4);
    // Known as of the snapshot (5 ms), not as of the look (7 ms): nothing is known since.
    assert_eq!((t4.state, t4.age_ns), (TagState::InFlight, 0));
    // The next snapshot still lists it: its age counts from the first sighting.
    let mut later = snap.clone();
    later.taken_ns = 9 * MS;
    m.apply_snapshot(&later, 9 * MS);
    let age = m
        .device(0, 10 * MS)
        .and_then(|d| d.queue(0))
        .map(|q| q.tag(4).age_ns);
    assert_eq!(age, Some(4 * MS));
    // Gone from busy: no longer in flight.
    let mut gone = later.clone();
    gone.taken_ns = 11 * MS;
    if let Some(b) = gone.blk.as_mut() {
        b.hctxs[0].busy.clear();
    }
    m.apply_snapshot(&gone, 11 * MS);
    assert_eq!(state(&m, 0, 0, 4, 12 * MS), TagState::Unknown);
}

#[test]
fn lost_events_are_counted_and_snapshot_resyncs() {
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 2, MS));
    m.apply(&queue_rq(0, 0, 0, 10 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, 0, 10 * MS + 10, Q_TID));
    // The commit was lost.
    m.apply(&lost(11 * MS, 3));
    assert_eq!(m.lost_events(), 3);
    assert_eq!(state(&m, 0, 0, 0, 12 * MS), TagState::InServer);
    let snap = DeviceSnapshot {
        dev_id: 0,
        taken_ns: 20 * MS,
        char_dev_present: true,
        block_dev_present: true,
        blk: Some(BlkMqSnapshot {
            hctxs: vec![HctxSnapshot::default()],
            ..Default::default()
        }),
        ..Default::default()
    };
    m.apply_snapshot(&snap, 20 * MS);
    assert_eq!(state(&m, 0, 0, 0, 21 * MS), TagState::Waiting);
}

#[test]
fn requeue_storm_is_counted() {
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 1, MS));
    for i in 0..10u64 {
        let t = 10 * MS + i * MS;
        m.apply(&queue_rq(0, 0, 0, t, "WRITE", 4096));
        m.apply(&delivered(0, 0, 0, t + 10, Q_TID));
        m.apply_all(&commit(0, 0, 0, t + 100, Q_TID, 0));
        m.apply(&block(
            0,
            0,
            0,
            t + 200,
            crate::event::BlockStage::Requeue,
            0,
        ));
    }
    let d = m.raw_device(0).expect("dev");
    let t = d.queues.get(&0).and_then(|q| q.tags.get(&0)).expect("tag");
    assert_eq!(t.requeues, 10);
    assert_eq!(t.bad_commits, 10, "0-byte write commits are bad");
    assert_eq!(t.requeues_within(20 * MS, 5 * MS), 5);
    assert_eq!(state(&m, 0, 0, 0, 20 * MS), TagState::Queued);
}

#[test]
fn ctrl_pending_and_device_removal() {
    let mut m = Model::new();
    m.apply_all(&setup(3, 1, 1, MS));
    m.apply(&ctrl_start(3, 10 * MS, SRV_PID, "DEL_DEV"));
    assert_eq!(m.ctrl().pending().count(), 1);
    m.apply(&ctrl_done(3, 11 * MS, SRV_PID, "DEL_DEV", 0));
    assert_eq!(m.ctrl().pending().count(), 0);
    assert!(m.raw_device(3).is_some_and(|d| d.removed));
    // Our own GET_DEV_INFO is not the server's.
    let mut m2 = Model::new();
    m2.ignore_pid(4242);
    m2.apply(&ctrl_start(3, 10, 4242, "GET_DEV_INFO"));
    assert!(m2.ctrl().is_empty());
}

#[test]
fn memory_stays_bounded_under_long_traffic() {
    // 200k requests on 4 tags: histories, windows and timelines must not grow with them.
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 4, MS));
    for i in 0..200_000u64 {
        let tag = (i % 4) as u16;
        m.apply_all(&healthy_io(0, 0, tag, 10 * MS + i * 200_000, Q_TID));
    }
    let d = m.raw_device(0).expect("dev");
    let q = d.queues.get(&0).expect("q");
    assert_eq!(q.completed, 200_000);
    assert!(q.tags.values().all(|t| t.history.len() <= tag::HISTORY_LEN));
    assert!(q.completions_len() <= queue::RATE_SECONDS);
    let json = serde_json::to_string(&m).expect("serializes");
    assert!(json.len() < 200_000, "model JSON is {} bytes", json.len());
}

#[test]
fn tag_file_seq_change_restarts_busy_age() {
    use crate::snapshot::tagfile::{PublishedTag, TagFileSnapshot};
    // Healthy load seen by snapshots only: the tag is busy at every look, but with a new
    // request each time (seq moves), so its age must not accumulate.
    let pt = |seq: u64, received_ns: u64| PublishedTag {
        q_id: 0,
        tag: 1,
        state: "waiting".into(),
        op: 0,
        start_sector: 0,
        nr_sectors: 8,
        result: 4096,
        waiting_since_ns: received_ns,
        received_ns,
        committed_ns: 0,
        tid: Q_TID,
        fault: 0,
        seq,
    };
    let mk = |ts: u64, seq: u64, received_ns: u64| DeviceSnapshot {
        dev_id: 0,
        taken_ns: ts,
        char_dev_present: true,
        block_dev_present: true,
        blk: Some(BlkMqSnapshot {
            hctxs: vec![HctxSnapshot {
                busy: parse_rq_list(
                    "0 {.op=READ, .cmd_flags=SYNC, .rq_flags=IO_STAT, .state=in_flight, .tag=1, .internal_tag=-1}",
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        tagfile: Some(TagFileSnapshot {
            path: "f".into(),
            pid: SRV_PID,
            nr_queues: 1,
            queue_depth: 2,
            start_ns: 1,
            heartbeat_ns: 0,
            fault_mask: 0,
            tags: vec![pt(seq, received_ns)],
        }),
        ..Default::default()
    };
    let mut m = Model::new();
    for (i, ts) in [100 * MS, 600 * MS, 1100 * MS, 1600 * MS]
        .into_iter()
        .enumerate()
    {
        m.apply_snapshot(&mk(ts, i as u64, ts - 10), ts);
    }
    let t = m
        .device(0, 1700 * MS)
        .and_then(|d| d.queue(0))
        .map(|q| q.tag(1));
    assert_eq!(t.as_ref().map(|t| t.state), Some(TagState::Queued));
    // Busy since the last snapshot (1600 ms), which is all that is known at 1700 ms.
    assert_eq!(t.map(|t| t.age_ns), Some(0));
    // The same request (seq unchanged) keeps aging.
    let mut same = Model::new();
    for ts in [100 * MS, 600 * MS, 1100 * MS] {
        same.apply_snapshot(&mk(ts, 7, 50 * MS), ts);
    }
    let age = same
        .device(0, 1200 * MS)
        .and_then(|d| d.queue(0))
        .map(|q| q.tag(1).age_ns);
    assert_eq!(age, Some(1000 * MS));
}

#[test]
fn late_attach_tag_file_gives_request_and_owner() {
    use crate::snapshot::tagfile::{PublishedTag, TagFileSnapshot};
    let p = PublishedTag {
        q_id: 0,
        tag: 1,
        state: "in_server".into(),
        op: 1,
        start_sector: 64,
        nr_sectors: 8,
        result: 0,
        waiting_since_ns: 0,
        received_ns: 2 * MS,
        committed_ns: 0,
        tid: 172,
        fault: 1,
        seq: 3,
    };
    let s = DeviceSnapshot {
        dev_id: 0,
        taken_ns: 10 * MS,
        char_dev_present: true,
        block_dev_present: true,
        blk: Some(BlkMqSnapshot {
            hctxs: vec![HctxSnapshot {
                busy: parse_rq_list(
                    "0 {.op=WRITE, .cmd_flags=SYNC, .rq_flags=IO_STAT, .state=in_flight, .tag=1, .internal_tag=-1}",
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        tagfile: Some(TagFileSnapshot {
            path: "f".into(),
            pid: SRV_PID,
            nr_queues: 1,
            queue_depth: 2,
            start_ns: 1,
            heartbeat_ns: 0,
            fault_mask: 1,
            tags: vec![p],
        }),
        ..Default::default()
    };
    let mut m = Model::new();
    m.apply_snapshot(&s, 0);
    let d = m.device(0, 12 * MS).expect("device");
    let t = d.queue(0).expect("q0").tag(1);
    // Received at 2 ms, last seen in the server by the snapshot at 10 ms.
    assert_eq!((t.state, t.age_ns), (TagState::InServer, 8 * MS));
    assert_eq!(
        (t.op, t.sector, t.bytes, t.owner_tid),
        ("WRITE", 64, 4096, Some(172))
    );
    assert_eq!(d.geometry(), Some((1, 2)));
}

#[test]
fn kernel_state_map_entries_drive_states() {
    use ublk_trace_common::tagmap::KernelTag;
    let mut m = Model::new();
    let k = KernelTag {
        fetch_ns: 10 * MS,
        queue_rq_ns: 20 * MS,
        delivered_ns: 21 * MS,
        cmd_flags: 1,
        sector: 64,
        bytes: 8192,
        owner_tid: Q_TID,
        fetches: 1,
        ..Default::default()
    };
    m.apply_kernel_tag(0, 0, 3, &k);
    let t = m
        .device(0, 30 * MS)
        .and_then(|d| d.queue(0))
        .map(|q| q.tag(3));
    let t = t.expect("tag");
    assert_eq!(
        (t.state, t.age_ns, t.op, t.owner_tid),
        (TagState::InServer, 9 * MS, "WRITE", Some(Q_TID))
    );
    // The next tick: committed.
    let done = KernelTag {
        commit_ns: 25 * MS,
        fetch_ns: 25 * MS,
        commits: 1,
        commit_result: 8192,
        ..k
    };
    m.apply_kernel_tag(0, 0, 3, &done);
    assert_eq!(state(&m, 0, 0, 3, 30 * MS), TagState::Waiting);
    // Queue-level entry (tag u16::MAX): a batched delivery run.
    let batch = KernelTag {
        delivered_ns: 40 * MS,
        ..Default::default()
    };
    m.apply_kernel_tag(0, 0, u16::MAX, &batch);
    assert_eq!(
        m.raw_device(0)
            .and_then(|d| d.queues.get(&0))
            .map(|q| q.last_delivered_ns),
        Some(40 * MS)
    );
}

#[test]
fn batched_delivery_event_without_tag_delivers_earlier_requests() {
    // 6.12's ublk_rq_task_work_cb probe reports tag u16::MAX: the queue's batch.
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 4, MS));
    m.apply(&queue_rq(0, 0, 1, 10 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, u16::MAX, 11 * MS, Q_TID));
    m.apply(&queue_rq(0, 0, 2, 12 * MS, "READ", 4096));
    assert_eq!(state(&m, 0, 0, 1, 20 * MS), TagState::InServer);
    assert_eq!(state(&m, 0, 0, 2, 20 * MS), TagState::Queued);
    assert_eq!(
        m.raw_device(0)
            .and_then(|d| d.queues.get(&0))
            .map(|q| q.deliveries),
        Some(1)
    );
    assert!(
        m.raw_device(0)
            .and_then(|d| d.queues.get(&0))
            .is_some_and(|q| !q.tags.contains_key(&u16::MAX))
    );
}

#[test]
fn second_probe_start_is_not_a_second_request_and_kernel_abort_ends_one() {
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 2, MS));
    m.apply(&queue_rq(0, 0, 0, 10 * MS, "READ", 4096));
    // block_rq_issue 5 ms later (int3 emulation in TCG), before any delivery.
    m.apply(&block(0, 0, 0, 15 * MS, crate::event::BlockStage::Issue, 0));
    let q = |m: &Model| {
        m.raw_device(0)
            .and_then(|d| d.queues.get(&0))
            .map(|q| q.requests)
    };
    assert_eq!(q(&m), Some(1));
    assert_eq!(
        m.device(0, 20 * MS)
            .and_then(|d| d.queue(0))
            .map(|q| q.tag(0).age_ns),
        Some(10 * MS)
    );
    // The kernel fails it at teardown (complete with -EIO, no commit): no longer in flight.
    m.apply(&delivered(0, 0, 0, 16 * MS, Q_TID));
    m.apply(&block(
        0,
        0,
        0,
        30 * MS,
        crate::event::BlockStage::Complete,
        -5,
    ));
    assert_eq!(state(&m, 0, 0, 0, 40 * MS), TagState::Waiting);
    assert_eq!(m.raw_device(0).map(|d| d.io_errors), Some(1));
}

#[test]
fn blind_spots_say_what_was_not_known() {
    let mut m = Model::new();
    m.apply(&queue_rq(0, 0, 0, 10 * MS, "READ", 4096));
    m.apply(&lost(11 * MS, 2));
    let d = m.device(0, 12 * MS).expect("device");
    let b = d.blind_spots().join("\n");
    assert!(b.contains("no snapshot"), "{b}");
    assert!(b.contains("attached after the device was set up"), "{b}");
    assert!(b.contains("q0: no delivery event"), "{b}");
    assert!(b.contains("2 trace events were lost"), "{b}");
    // Set up in view, delivered, snapshot with the tag file: nothing unknown.
    let mut ok = Model::new();
    ok.apply_all(&setup(0, 1, 2, MS));
    ok.apply_all(&healthy_io(0, 0, 0, 10 * MS, Q_TID));
    let mut s = DeviceSnapshot {
        dev_id: 0,
        taken_ns: 20 * MS,
        char_dev_present: true,
        block_dev_present: true,
        ..Default::default()
    };
    s.tagfile = Some(crate::snapshot::tagfile::TagFileSnapshot {
        path: "f".into(),
        pid: SRV_PID,
        nr_queues: 1,
        queue_depth: 2,
        start_ns: 1,
        heartbeat_ns: 0,
        fault_mask: 0,
        tags: vec![],
    });
    ok.apply_snapshot(&s, 0);
    assert_eq!(ok.device(0, 30 * MS).map(|d| d.blind_spots()), Some(vec![]));
}

#[test]
fn tag_file_rearm_overrides_a_lagging_event_stream() {
    // Guest healthy fio, debug build: the reader lagged, the commit events were not read
    // yet, but the tag file already says the server re-armed the tag after the delivery.
    use crate::snapshot::tagfile::{PublishedTag, TagFileSnapshot};
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 2, MS));
    m.apply(&queue_rq(0, 0, 1, 10 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, u16::MAX, 11 * MS, Q_TID));
    let p = PublishedTag {
        q_id: 0,
        tag: 1,
        state: "waiting".into(),
        op: 0,
        start_sector: 8,
        nr_sectors: 8,
        result: 4096,
        waiting_since_ns: 12 * MS,
        received_ns: 11 * MS,
        committed_ns: 12 * MS,
        tid: Q_TID,
        fault: 0,
        seq: 1,
    };
    let s = DeviceSnapshot {
        dev_id: 0,
        taken_ns: 5 * MS, // read before the events: order of reading does not matter
        char_dev_present: true,
        block_dev_present: true,
        tagfile: Some(TagFileSnapshot {
            path: "f".into(),
            pid: SRV_PID,
            nr_queues: 1,
            queue_depth: 2,
            start_ns: 1,
            heartbeat_ns: 0,
            fault_mask: 0,
            tags: vec![p],
        }),
        ..Default::default()
    };
    m.apply_snapshot(&s, 0);
    assert_eq!(state(&m, 0, 0, 1, 600 * MS), TagState::Waiting);
}

#[test]
fn a_lagging_reader_does_not_age_requests() {
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 2, MS));
    m.apply(&queue_rq(0, 0, 0, 10 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, 0, 11 * MS, Q_TID));
    let age = |m: &Model, now| {
        m.device(0, now)
            .and_then(|d| d.queue(0))
            .map(|q| q.tag(0).age_ns)
    };
    assert_eq!(
        age(&m, 2000 * MS),
        Some(1989 * MS),
        "no horizon: ages count to now"
    );
    // The reader has only drained the ring up to 20 ms: the commit may still be in it.
    m.set_events_horizon(20 * MS);
    assert_eq!(age(&m, 2000 * MS), Some(9 * MS));
    // Caught up at 1.9 s and still no commit: the request really is that old.
    m.set_events_horizon(1900 * MS);
    assert_eq!(age(&m, 2000 * MS), Some(1889 * MS));
}

#[test]
fn tag_file_activity_after_the_last_event_reveals_a_lagging_reader() {
    use crate::snapshot::tagfile::{PublishedTag, TagFileSnapshot};
    // Guest healthy fio: queue_rq read at 674 ms before "now", its delivery still in the
    // ring; the tag file shows the server committed other tags much later.
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 4, MS));
    m.apply(&queue_rq(0, 0, 2, 100 * MS, "WRITE", 4096));
    let other = PublishedTag {
        q_id: 0,
        tag: 3,
        state: "waiting".into(),
        op: 0,
        start_sector: 0,
        nr_sectors: 8,
        result: 4096,
        waiting_since_ns: 700 * MS,
        received_ns: 690 * MS,
        committed_ns: 700 * MS,
        tid: Q_TID,
        fault: 0,
        seq: 40,
    };
    let s = DeviceSnapshot {
        dev_id: 0,
        taken_ns: 750 * MS,
        char_dev_present: true,
        block_dev_present: true,
        tagfile: Some(TagFileSnapshot {
            path: "f".into(),
            pid: SRV_PID,
            nr_queues: 1,
            queue_depth: 4,
            start_ns: 1,
            heartbeat_ns: 0,
            fault_mask: 0,
            tags: vec![other],
        }),
        ..Default::default()
    };
    m.apply_snapshot(&s, 0);
    let age = m
        .device(0, 775 * MS)
        .and_then(|d| d.queue(0))
        .map(|q| q.tag(2).age_ns);
    assert_eq!(age, Some(0), "ages stop at the last event read (100 ms)");
    // Events catch up: the age counts to now again.
    m.apply(&delivered(0, 0, 3, 760 * MS, Q_TID));
    let age = m
        .device(0, 775 * MS)
        .and_then(|d| d.queue(0))
        .map(|q| q.tag(2).age_ns);
    assert_eq!(age, Some(675 * MS));
}

#[test]
fn batched_runs_for_other_tags_do_not_restart_a_delivered_requests_age() {
    // 6.12: tag 2 is delivered by the run at 11 ms and never committed; runs for tags 0 and 1
    // keep coming. Its age counts from the run that delivered it, not the queue's latest one.
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 4, MS));
    m.apply(&queue_rq(0, 0, 2, 10 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, u16::MAX, 11 * MS, Q_TID));
    for i in 0..100u64 {
        let t0 = 20 * MS + i * 10 * MS;
        let tag = (i % 2) as u16;
        m.apply(&queue_rq(0, 0, tag, t0, "READ", 4096));
        m.apply(&delivered(0, 0, u16::MAX, t0 + 20_000, Q_TID));
        m.apply_all(&commit(0, 0, tag, t0 + 100_000, Q_TID, 4096));
    }
    m.set_events_horizon(1100 * MS);
    let t = m
        .device(0, 1100 * MS)
        .and_then(|d| d.queue(0))
        .map(|q| q.tag(2));
    let t = t.expect("tag 2");
    assert_eq!((t.state, t.age_ns), (TagState::InServer, 1089 * MS));
    assert!(t.delivery_inferred);
    // A run that came before the start (read late) delivered nothing of it.
    m.apply(&delivered(0, 0, u16::MAX, 9 * MS, Q_TID));
    assert_eq!(
        m.device(0, 1100 * MS)
            .and_then(|d| d.queue(0))
            .map(|q| q.tag(2).age_ns),
        Some(1089 * MS)
    );
    // Its start read after its run (reordered stream): the queue's latest run stands in.
    m.apply(&delivered(0, 0, u16::MAX, 1060 * MS, Q_TID));
    m.apply(&queue_rq(0, 0, 3, 1050 * MS, "READ", 4096));
    assert_eq!(
        m.device(0, 1100 * MS)
            .and_then(|d| d.queue(0))
            .map(|q| (q.tag(2).age_ns, q.tag(3).age_ns)),
        Some((1089 * MS, 40 * MS))
    );
}

/// watch's state path streams no per-I/O commit: the IOPS and the latency histogram come from
/// the state map's per-tag commit counters (the increase since the last read), and a commit
/// event that still streams (a bad or slow one) does not count twice.
#[test]
fn state_map_commit_counters_feed_iops_and_latency() {
    use ublk_trace_common::tagmap::KernelTag;
    const S: u64 = 1_000_000_000;
    let mut m = Model::new();
    let read = |m: &mut Model, tag: u16, commits: u64, start: u64, commit: u64| {
        let k = KernelTag {
            fetch_ns: commit,
            queue_rq_ns: start,
            delivered_ns: start + MS / 10,
            commit_ns: commit,
            commits,
            commit_result: 4096,
            owner_tid: Q_TID,
            ..Default::default()
        };
        m.apply_kernel_tag(0, 0, tag, &k);
    };
    // Second 10: tags 0 and 1 serve 30 and 20 requests; second 11: 40 more on tag 0.
    read(&mut m, 0, 30, 10 * S + 100 * MS, 10 * S + 102 * MS);
    read(&mut m, 1, 20, 10 * S + 200 * MS, 10 * S + 203 * MS);
    read(&mut m, 0, 70, 11 * S + 500 * MS, 11 * S + 504 * MS);
    // A slow commit event of tag 1 (rare events still stream): no second count.
    m.apply_all(&healthy_io(0, 0, 1, 11 * S + 600 * MS, Q_TID));
    let d = m.device(0, 12 * S + MS).expect("device");
    assert_eq!(d.iops_series(2), vec![50, 40]);
    let q = m
        .raw_device(0)
        .and_then(|d| d.queues.get(&0))
        .expect("queue");
    assert_eq!(q.completed, 90);
    // One latency sample per tag and read: 2, 3 and 4 ms.
    assert_eq!(q.server_latency.count(), 3);
    assert_eq!(q.server_latency.count_at_least(MS), 3);
    assert_eq!(q.server_latency.count_at_least(8 * MS), 0);
    // The detail view's history: tag 0's latest request per read, each step once.
    let h: Vec<String> = q.tags[&0]
        .history
        .iter()
        .map(|e| e.what.to_string())
        .collect();
    assert_eq!(h.len(), 6, "{h:?}");
    assert!(
        h[5].starts_with("COMMIT_AND_FETCH_REQ accepted, result 4096"),
        "{h:?}"
    );
}
