//! The rules on the driver's own state alone (a late attach with no events and no tag file):
//! what was undecided from events and snapshots is decided.
use super::*;
use crate::driver::TagView as DriverView;
use crate::model::testutil::*;

fn th() -> Thresholds {
    Thresholds::default()
}

const S: u64 = 1_000_000_000;

fn late(tags: Vec<crate::driver::TagState>, read_at: u64) -> Model {
    let mut m = Model::new();
    m.apply_driver(&driver_snap(read_at, tags));
    m
}

#[test]
fn a_request_the_driver_holds_in_the_server_is_stuck_in_server() {
    let m = late(
        vec![
            driver_tag(0, DriverView::Waiting, None),
            driver_tag(1, DriverView::InServer, Some(driver_rq(S))),
        ],
        5 * S,
    );
    let d = diagnose(&m, 5 * S, &th());
    let f = d
        .findings
        .iter()
        .find(|f| f.class == Class::StuckInServer)
        .expect("STUCK_IN_SERVER from the driver's state");
    assert_eq!((f.queue, f.tag), (Some(0), Some(1)));
    assert_eq!(f.age_ms, 4000, "aged from the request's start");
    let text = f.evidence.join(" | ");
    assert!(text.contains("OWNED_BY_SRV"), "{text}");
    assert!(
        text.contains("READ 4096 bytes at sector 2048") || text.contains("2048"),
        "{text}"
    );
    assert!(
        d.rechecks.is_empty(),
        "nothing is left undecided: {:?}",
        d.rechecks
    );
    // The tag as data, not only inside a sentence.
    assert_eq!(
        f.tags,
        vec![FindingTag {
            q_id: 0,
            tag: 1,
            state: "IN_SERVER".into(),
            age_ms: Some(4000),
            op: Some("READ".into()),
            sector: Some(2048),
            bytes: Some(4096),
            owner_tid: Some(Q_TID),
        }]
    );
}

#[test]
fn a_request_still_active_in_the_driver_is_not_delivered() {
    let m = late(
        vec![driver_tag(2, DriverView::Queued, Some(driver_rq(S)))],
        5 * S,
    );
    let d = diagnose(&m, 5 * S, &th());
    let f = d
        .findings
        .iter()
        .find(|f| f.class == Class::NotDelivered)
        .expect("NOT_DELIVERED without any delivery event");
    assert_eq!(f.tag, Some(2));
    assert!(f.evidence.join(" ").contains("still ACTIVE"));
    assert!(d.rechecks.is_empty(), "{:?}", d.rechecks);
}

/// A BATCH_IO queue (the snapshot's device flags are not needed: the queue's batch state is
/// only read on batch devices) with two requests waiting in the event FIFO.
fn batch_late(fetch_armed: u32, fetch_active: bool) -> Model {
    let mut snap = driver_snap(
        5 * S,
        vec![
            driver_tag(0, DriverView::Waiting, None),
            driver_tag(1, DriverView::Queued, Some(driver_rq(S))),
            driver_tag(2, DriverView::Queued, Some(driver_rq(2 * S))),
        ],
    );
    snap.devices[0].flags |= ublk_abi::UBLK_F_BATCH_IO;
    snap.devices[0].queues[0].batch = Some(crate::driver::BatchQueue {
        fetch_armed,
        fetch_active,
        fifo_waiting: 2,
    });
    let mut m = Model::new();
    m.apply_driver(&snap);
    m
}

#[test]
fn a_batch_queue_without_an_armed_fetch_is_no_fetch_not_undelivered() {
    let d = diagnose(&batch_late(0, false), 5 * S, &th());
    let classes: Vec<Class> = d.findings.iter().map(|f| f.class).collect();
    assert_eq!(classes, [Class::NoFetch], "{:#?}", d.findings);
    let f = &d.findings[0];
    assert_eq!(
        (f.queue, f.tag, f.age_ms),
        (Some(0), Some(1), 4000),
        "the oldest"
    );
    let text = f.evidence.join(" | ");
    assert!(text.contains("no multishot FETCH_IO_CMDS"), "{text}");
    assert!(text.contains("tags 1, 2"), "{text}");
    assert!(f.hint.contains("-ENOBUFS"), "{}", f.hint);
    // Armed but not dispatching (the active fetch ended, nothing restarted one): the same.
    let d = diagnose(&batch_late(1, false), 5 * S, &th());
    let f = &d.findings[0];
    assert_eq!(f.class, Class::NoFetch, "{:#?}", d.findings);
    assert!(
        f.evidence
            .join(" ")
            .contains("1 FETCH_IO_CMDS armed but none dispatching")
    );
    // A fetch dispatching: the requests are undelivered, the owner did not run.
    let d = diagnose(&batch_late(1, true), 5 * S, &th());
    let classes: Vec<Class> = d.findings.iter().map(|f| f.class).collect();
    assert_eq!(
        classes,
        [Class::NotDelivered, Class::NotDelivered],
        "{:#?}",
        d.findings
    );
}

#[test]
fn a_batch_devices_undelivered_request_claims_no_parked_per_tag_command() {
    // kublk -b on 7.3, SIGSTOPped: the evidence said "the server's FETCH/COMMIT is parked",
    // but a BATCH_IO device parks no command per tag (FETCH_IO_CMDS is per queue), and the
    // text had a run of blanks from a broken line.
    let evidence = |flags: u64| {
        let mut m = late(
            vec![driver_tag(2, DriverView::Queued, Some(driver_rq(S)))],
            5 * S,
        );
        let info = crate::snapshot::DevInfo {
            state: 1,
            ublksrv_pid: 0,
            nr_hw_queues: 1,
            queue_depth: 4,
            flags,
            max_io_buf_bytes: 0,
        };
        let snap = crate::snapshot::DeviceSnapshot {
            dev_id: 0,
            taken_ns: 5 * S,
            char_dev_present: true,
            block_dev_present: true,
            dev_info: Some(info),
            ..Default::default()
        };
        m.apply_snapshot(&snap, 0);
        let d = diagnose(&m, 5 * S, &th());
        let f = d
            .findings
            .iter()
            .find(|f| f.class == Class::NotDelivered)
            .expect("NOT_DELIVERED from the driver's state");
        f.evidence.join(" | ")
    };
    let batch = evidence(ublk_abi::UBLK_F_BATCH_IO);
    assert!(batch.contains("still ACTIVE"), "{batch}");
    assert!(batch.contains("FETCH_IO_CMDS"), "{batch}");
    assert!(!batch.contains("FETCH/COMMIT"), "{batch}");
    let per_tag = evidence(0);
    assert!(per_tag.contains("FETCH/COMMIT is parked"), "{per_tag}");
    for text in [&batch, &per_tag] {
        assert!(!text.contains("  "), "a run of blanks: {text:?}");
    }
}

#[test]
fn an_idle_device_read_late_gives_nothing_and_no_unknown_tag() {
    let tags = (0..4)
        .map(|n| driver_tag(n, DriverView::Waiting, None))
        .collect();
    let m = late(tags, 5 * S);
    let d = diagnose(&m, 5 * S, &th());
    assert!(d.findings.is_empty(), "{:?}", d.findings);
    let dev = m.device(0, 5 * S).expect("device");
    let q = dev.queue(0).expect("queue");
    assert!(
        q.tags()
            .iter()
            .all(|t| t.state == crate::model::tag::TagState::Waiting)
    );
}

#[test]
fn a_negative_result_kept_by_the_driver_is_a_bad_commit() {
    let mut t = driver_tag(3, DriverView::Waiting, None);
    t.res = -5;
    let m = late(vec![t], 5 * S);
    let d = diagnose(&m, 5 * S, &th());
    let f = d
        .findings
        .iter()
        .find(|f| f.class == Class::BadCommit)
        .expect("BAD_COMMIT from io->res");
    assert_eq!(f.tag, Some(3));
    let text = format!("{} | {}", f.summary, f.evidence.join(" | "));
    assert!(text.contains("-EIO"), "{text}");
    assert!(text.contains("driver's memory"), "{text}");
}

#[test]
fn a_zero_result_is_not_evidence() {
    // io->res is 0 both for a tag never used and for a 0-byte commit: no finding.
    let m = late(vec![driver_tag(3, DriverView::Waiting, None)], 5 * S);
    let d = diagnose(&m, 5 * S, &th());
    assert!(d.findings.iter().all(|f| f.class != Class::BadCommit));
}

#[test]
fn commits_on_other_tags_after_the_request_rule_out_a_starved_owner() {
    // Late attach: the driver holds tag 1 in the server since 1 s; the state map then saw
    // tag 2 committed at 4 s. The owner thread waited for a CPU a lot, but it served tag 2
    // after tag 1 arrived: tag 1 is stuck, not starved.
    let mut m = late(
        vec![
            driver_tag(1, DriverView::InServer, Some(driver_rq(S))),
            driver_tag(2, DriverView::Waiting, None),
        ],
        5 * S,
    );
    let t2 = m.tag_mut_for_test(0, 0, 2);
    t2.commit_ns = 4 * S;
    t2.commit_result = Some(4096);
    let q = m.device(0, 5 * S).expect("device").queue(0).expect("queue");
    assert_eq!(
        super::rules_tags::queue_last_progress_ns_for_test(&q),
        4 * S
    );
}
