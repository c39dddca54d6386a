//! The commit faults of `ublk-server --inject` (wrong-tag, wrong-thread, double-commit, zero
//! commits of writes) as synthetic event streams: what the rules must say about each.
use super::*;
use crate::event::BlockStage;
use crate::model::testutil::*;

fn th() -> Thresholds {
    Thresholds::default()
}

/// A device set up in view with one 4 KiB READ on q0 `tag`, delivered at 1 s.
fn with_request(tag: u16) -> Model {
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 4, MS));
    m.apply(&queue_rq(0, 0, tag, 1000 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, tag, 1000 * MS + 10, Q_TID));
    m
}

fn find(fs: &[Finding], class: Class, tag: u16) -> Option<&Finding> {
    fs.iter()
        .find(|f| f.class == class && f.queue == Some(0) && f.tag == Some(tag))
}

fn text(f: &Finding) -> String {
    format!("{} | {}", f.summary, f.evidence.join(" | "))
}

#[test]
fn wrong_tag_commit_is_rejected_and_the_request_named_stuck() {
    let mut m = with_request(1);
    // The commit for tag 1 names tag 2, which waits for a request: EBUSY.
    m.apply_all(&commit_rejected(0, 0, 2, 1000 * MS + 20, Q_TID, -16));
    let fs = run(&m, 3000 * MS, &th());
    let rej = find(&fs, Class::CmdRejected, 2).expect("CMD_REJECTED on tag 2");
    let r = text(rej);
    assert!(
        r.contains("COMMIT_AND_FETCH_REQ rejected with -EBUSY"),
        "{r}"
    );
    assert!(r.contains(&format!("from tid {Q_TID}")), "{r}");
    assert!(r.contains("held no request"), "{r}");
    assert!(r.contains("meant for another tag"), "{r}");
    let stuck = find(&fs, Class::StuckInServer, 1).expect("STUCK_IN_SERVER on tag 1");
    let s = text(stuck);
    assert!(
        s.contains("rejected 1 COMMIT_AND_FETCH_REQ(s) on q0: tag 2"),
        "{s}"
    );
    assert!(s.contains("named the wrong tag"), "{s}");
    assert!(find(&fs, Class::StuckInServer, 2).is_none());
}

#[test]
fn wrong_thread_commit_names_calling_and_owner_tid() {
    const STRAY: u32 = 777;
    let mut m = with_request(1);
    m.apply_all(&commit_rejected(0, 0, 1, 1000 * MS + 20, STRAY, -22));
    let fs = run(&m, 3000 * MS, &th());
    let rej = find(&fs, Class::CmdRejected, 1).expect("CMD_REJECTED on tag 1");
    let r = text(rej);
    assert!(r.contains("rejected with -EINVAL"), "{r}");
    assert!(
        r.contains(&format!(
            "owned by tid {Q_TID}, the command came from tid {STRAY}"
        )),
        "{r}"
    );
    assert!(
        rej.pids.contains(&STRAY),
        "calling tid named: {:?}",
        rej.pids
    );
    let stuck = find(&fs, Class::StuckInServer, 1).expect("STUCK_IN_SERVER on tag 1");
    let s = text(stuck);
    assert!(
        s.contains(&format!(
            "tag 1 from tid {STRAY} (owner tid {Q_TID}) (-EINVAL"
        )),
        "{s}"
    );
    assert!(s.contains("does not own the tag"), "{s}");
}

#[test]
fn double_commit_is_rejected_without_a_stall() {
    let mut m = with_request(3);
    m.apply_all(&commit(0, 0, 3, 1000 * MS + 20, Q_TID, 4096));
    m.apply(&block(0, 0, 3, 1000 * MS + 30, BlockStage::Complete, 0));
    m.apply_all(&commit_rejected(0, 0, 3, 1000 * MS + 40, Q_TID, -16));
    let fs = run(&m, 3000 * MS, &th());
    let classes: Vec<Class> = fs.iter().map(|f| f.class).collect();
    assert_eq!(classes, vec![Class::CmdRejected], "{fs:#?}");
    let r = text(&fs[0]);
    assert!(r.contains("a second commit of a request"), "{r}");
}

#[test]
fn zero_commit_write_is_a_requeue_storm_not_a_stall() {
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 4, MS));
    // The kernel requeues the unwritten rest after each 0-byte commit; it comes back at once.
    for i in 0..40u64 {
        let t = 1000 * MS + i * 20 * MS;
        m.apply(&queue_rq(0, 0, 2, t, "WRITE", 4096));
        m.apply(&delivered(0, 0, 2, t + 10, Q_TID));
        m.apply_all(&commit(0, 0, 2, t + 100, Q_TID, 0));
        m.apply(&block(0, 0, 2, t + 200, BlockStage::Requeue, 0));
    }
    let now = 1000 * MS + 40 * 20 * MS;
    let fs = run(&m, now, &th());
    let bad = find(&fs, Class::BadCommit, 2).expect("BAD_COMMIT on tag 2");
    assert!(
        bad.summary.contains("requeue storm") && bad.summary.contains("WRITE commit result 0"),
        "{}",
        bad.summary
    );
    assert_eq!(bad.severity, Severity::Error);
    let stalls: Vec<_> = fs
        .iter()
        .filter(|f| {
            matches!(
                f.class,
                Class::StuckInServer | Class::NotDelivered | Class::HeldInBlockLayer
            )
        })
        .collect();
    assert!(stalls.is_empty(), "a livelock is not a stall: {stalls:#?}");
    // A single zero-byte write commit is a bad commit, not (yet) a storm.
    let mut one = Model::new();
    one.apply_all(&setup(0, 1, 4, MS));
    one.apply(&queue_rq(0, 0, 2, 1000 * MS, "WRITE", 4096));
    one.apply(&delivered(0, 0, 2, 1000 * MS + 10, Q_TID));
    one.apply_all(&commit(0, 0, 2, 1000 * MS + 100, Q_TID, 0));
    let fs = run(&one, 1001 * MS, &th());
    let bad = find(&fs, Class::BadCommit, 2).expect("BAD_COMMIT");
    assert!(!bad.summary.contains("storm"), "{}", bad.summary);
}

#[test]
fn zero_commit_write_storm_hopping_tags_is_counted_per_queue() {
    // mq-deadline releases the driver tag at each requeue: the request comes back on the
    // next tag every time, so no single tag reaches the storm threshold.
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 4, MS));
    for i in 0..40u64 {
        let t = 1000 * MS + i * 20 * MS;
        let tag = (i % 4) as u16;
        m.apply(&queue_rq(0, 0, tag, t, "WRITE", 4096));
        m.apply(&delivered(0, 0, tag, t + 10, Q_TID));
        m.apply_all(&commit(0, 0, tag, t + 100, Q_TID, 0));
        m.apply(&block(0, 0, tag, t + 200, BlockStage::Requeue, 0));
    }
    let now = 1000 * MS + 40 * 20 * MS;
    let fs = run(&m, now, &th());
    let bad: Vec<&Finding> = fs.iter().filter(|f| f.class == Class::BadCommit).collect();
    assert_eq!(bad.len(), 4, "{fs:#?}");
    for b in bad {
        assert!(b.summary.contains("requeue storm"), "{}", b.summary);
        assert!(
            b.evidence.iter().any(|e| e.contains("requeues on q0")),
            "{:?}",
            b.evidence
        );
    }
    // Reads that fail with EIO on every tag are no storm, however many.
    let mut r = Model::new();
    r.apply_all(&setup(0, 1, 4, MS));
    for i in 0..40u64 {
        let t = 1000 * MS + i * 20 * MS;
        let tag = (i % 4) as u16;
        r.apply(&queue_rq(0, 0, tag, t, "READ", 4096));
        r.apply(&delivered(0, 0, tag, t + 10, Q_TID));
        r.apply_all(&commit(0, 0, tag, t + 100, Q_TID, 0));
    }
    assert!(
        run(&r, now, &th())
            .iter()
            .all(|f| !f.summary.contains("storm"))
    );
}

#[test]
fn requeue_storm_read_from_the_state_map_counts_every_requeue() {
    // watch's cheap path: the eBPF map keeps the latest requeue and a count, read every
    // 200 ms; the 0-byte commit arrives as a rare event. ~150 requeues per read is a storm
    // even though each read yields one timestamp.
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 4, MS));
    m.apply(&queue_rq(0, 0, 2, 1000 * MS, "WRITE", 4096));
    m.apply(&delivered(0, 0, 2, 1000 * MS + 10, Q_TID));
    m.apply_all(&commit(0, 0, 2, 1000 * MS + 100, Q_TID, 0));
    for i in 1..=5u64 {
        let now = 1000 * MS + i * 200 * MS;
        m.apply_tag_facts(
            0,
            0,
            2,
            &crate::model::TagFacts {
                queue_rq_ns: now - MS,
                requeue_ns: now - MS / 2,
                requeues: i * 150,
                op: "WRITE".into(),
                bytes: 4096,
                ..Default::default()
            },
        );
    }
    let fs = run(&m, 2000 * MS, &th());
    let bad = find(&fs, Class::BadCommit, 2).expect("BAD_COMMIT");
    assert!(bad.summary.contains("requeue storm"), "{}", bad.summary);
    // One requeue per read is no storm.
    let mut calm = Model::new();
    calm.apply_all(&setup(0, 1, 4, MS));
    for i in 1..=5u64 {
        let now = 1000 * MS + i * 200 * MS;
        calm.apply_tag_facts(
            0,
            0,
            2,
            &crate::model::TagFacts {
                requeue_ns: now,
                requeues: i,
                ..Default::default()
            },
        );
    }
    assert!(
        run(&calm, 2000 * MS, &th())
            .iter()
            .all(|f| !f.summary.contains("storm"))
    );
}

#[test]
fn wrong_thread_seen_after_a_late_attach_takes_the_owner_from_the_tag_file() {
    // The tracer attached after the FETCHes: the owner comes from the server's tag file.
    const STRAY: u32 = 777;
    let tag = crate::snapshot::tagfile::PublishedTag {
        q_id: 0,
        tag: 1,
        state: "in_server".into(),
        op: 0,
        start_sector: 0,
        nr_sectors: 8,
        result: 0,
        waiting_since_ns: 900 * MS,
        received_ns: 1000 * MS,
        committed_ns: 0,
        tid: Q_TID,
        fault: 12,
        seq: 3,
    };
    let snap = crate::snapshot::DeviceSnapshot {
        dev_id: 0,
        taken_ns: 1000 * MS,
        char_dev_present: true,
        block_dev_present: true,
        tagfile: Some(crate::snapshot::tagfile::TagFileSnapshot {
            path: "f".into(),
            pid: SRV_PID,
            nr_queues: 1,
            queue_depth: 4,
            start_ns: 1,
            heartbeat_ns: 0,
            fault_mask: 1 << 12,
            tags: vec![tag],
        }),
        ..Default::default()
    };
    let mut m = Model::new();
    m.apply_snapshot(&snap, 0);
    m.apply_all(&commit_rejected(0, 0, 1, 1000 * MS + 20, STRAY, -22));
    let fs = run(&m, 1500 * MS, &th());
    let rej = find(&fs, Class::CmdRejected, 1).expect("CMD_REJECTED");
    let r = text(rej);
    assert!(
        r.contains(&format!(
            "owned by tid {Q_TID}, the command came from tid {STRAY}"
        )),
        "{r}"
    );
}

#[test]
fn requeues_without_a_driver_tag_count_for_the_queue() {
    // mq-deadline releases the driver tag before block_rq_requeue fires: the requeue event
    // carries no tag (u16::MAX), as measured in the 6.12 guest. The 0-byte commits name it.
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 4, MS));
    for i in 0..40u64 {
        let t = 1000 * MS + i * 20 * MS;
        m.apply(&queue_rq(0, 0, 1, t, "WRITE", 4096));
        m.apply(&delivered(0, 0, 1, t + 10, Q_TID));
        m.apply_all(&commit(0, 0, 1, t + 100, Q_TID, 0));
        m.apply(&block(0, 0, u16::MAX, t + 200, BlockStage::Requeue, 0));
    }
    let now = 1000 * MS + 40 * 20 * MS;
    let fs = run(&m, now, &th());
    let bad = find(&fs, Class::BadCommit, 1).expect("BAD_COMMIT");
    assert!(bad.summary.contains("requeue storm"), "{}", bad.summary);
    assert!(
        bad.evidence.iter().any(|e| e.contains("requeues on q0")),
        "{:?}",
        bad.evidence
    );
    // The same from the state map: the queue-level entry's count.
    let mut s = Model::new();
    s.apply_all(&setup(0, 1, 4, MS));
    s.apply(&queue_rq(0, 0, 1, 1000 * MS, "WRITE", 4096));
    s.apply(&delivered(0, 0, 1, 1000 * MS + 10, Q_TID));
    s.apply_all(&commit(0, 0, 1, 1000 * MS + 100, Q_TID, 0));
    for i in 1..=4u64 {
        let k = ublk_trace_common::tagmap::KernelTag {
            requeue_ns: 1000 * MS + i * 200 * MS,
            requeues: i * 100,
            ..Default::default()
        };
        s.apply_kernel_tag(0, 0, u16::MAX, &k);
    }
    let fs = run(&s, 1900 * MS, &th());
    let bad = find(&fs, Class::BadCommit, 1).expect("BAD_COMMIT");
    assert!(bad.summary.contains("requeue storm"), "{}", bad.summary);
}

#[test]
fn ctrl_pending_seen_only_on_a_stack_is_named_by_its_frame() {
    assert_eq!(
        super::rules_server::frame_op("ublk_ctrl_start_dev.isra.0"),
        Some("START_DEV")
    );
    assert_eq!(
        super::rules_server::frame_op("ublk_ctrl_del_dev"),
        Some("DEL_DEV")
    );
    assert_eq!(super::rules_server::frame_op("ublk_ctrl_uring_cmd"), None);
    assert_eq!(super::rules_server::frame_op("io_uring_cmd"), None);
}

/// BATCH_IO: a COMMIT_IO_CMDS of 4 elements whose third names a tag the server does not own
/// (the kernel handled 2 x 16 bytes, then refused it); whole commits and the setup are not
/// findings, and the refused element is named with its tag, index and cause.
#[test]
fn a_batch_commit_naming_a_tag_the_server_does_not_own_is_rejected() {
    use crate::event::RefusedElem;
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 8, MS));
    m.apply(&batch(0, 0, 900 * MS, "PREP_IO_CMDS", 8, 0, None));
    m.apply(&batch(0, 0, 910 * MS, "FETCH_IO_CMDS", 8, -529, None));
    m.apply(&batch(0, 0, 1000 * MS, "COMMIT_IO_CMDS", 4, 64, None));
    let refused = RefusedElem {
        index: 2,
        tag: 6,
        result: 4096,
    };
    m.apply(&batch(
        0,
        0,
        1100 * MS,
        "COMMIT_IO_CMDS",
        4,
        32,
        Some(refused),
    ));
    let fs = run(&m, 2000 * MS, &th());
    assert_eq!(fs.len(), 1, "{fs:#?}");
    let f = find(&fs, Class::CmdRejected, 6).expect("CMD_REJECTED on tag 6");
    let t = text(f);
    assert!(t.contains("COMMIT_IO_CMDS not taken whole"), "{t}");
    assert!(
        t.contains("element 2 of 4 (tag 6, result 4096) refused"),
        "{t}"
    );
    assert!(t.contains("OWNED_BY_SRV"), "{t}");
    let q = &m.device(0, 2000 * MS).expect("device").dev.queues[&0];
    assert_eq!((q.batch_commits, q.batch_committed), (1, 4));
    // A whole command refused names the queue, not a tag.
    m.apply(&batch(0, 0, 1200 * MS, "FETCH_IO_CMDS", 8, -22, None));
    let fs = run(&m, 2000 * MS, &th());
    let whole = fs
        .iter()
        .find(|f| f.class == Class::CmdRejected && f.tag.is_none())
        .expect("the refused FETCH");
    assert!(
        text(whole).contains("q0: FETCH_IO_CMDS rejected with -EINVAL"),
        "{}",
        text(whole)
    );
}
