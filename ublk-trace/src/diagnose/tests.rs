//! Each rule: a positive, a negative and a not-enough-data case, on synthetic streams.
use super::*;
use crate::event::BlockStage;
use crate::model::testutil::*;
use crate::snapshot::blkmq::{BlkMqSnapshot, HctxSnapshot, parse_rq_list};
use crate::snapshot::fdinfo::RingInfo;
use crate::snapshot::{DevInfo, DeviceSnapshot, Inflight, ServerProcess, TaskInfo, WaitKind};

fn th() -> Thresholds {
    Thresholds::default()
}

fn classes(m: &Model, now: u64) -> Vec<(Class, Option<u16>, Option<u16>)> {
    run(m, now, &th())
        .into_iter()
        .map(|f| (f.class, f.queue, f.tag))
        .collect()
}

fn rechecks(m: &Model, now: u64) -> Vec<Class> {
    diagnose(m, now, &th())
        .rechecks
        .into_iter()
        .map(|r| r.class)
        .collect()
}

fn info(state: u16, flags: u64) -> DevInfo {
    DevInfo {
        state,
        ublksrv_pid: SRV_PID as i32,
        nr_hw_queues: 1,
        queue_depth: 4,
        flags,
        max_io_buf_bytes: 0,
    }
}

fn task(tid: u32, state: char, wchan: &str) -> TaskInfo {
    TaskInfo {
        pid: SRV_PID,
        tid,
        comm: "srv".into(),
        state,
        wchan: wchan.into(),
        stack: vec![],
        ctxt_switches: Some(5),
        wait: None,
    }
}

fn snap(ts: u64, threads: Vec<TaskInfo>) -> DeviceSnapshot {
    DeviceSnapshot {
        dev_id: 0,
        taken_ns: ts,
        char_dev_present: true,
        block_dev_present: true,
        dev_info: Some(info(1, 0)),
        proc_scanned: true,
        servers: vec![ServerProcess {
            pid: SRV_PID,
            comm: "srv".into(),
            threads,
            rings: vec![],
        }],
        inflight: Some(Inflight {
            reads: 0,
            writes: 0,
        }),
        ..Default::default()
    }
}

/// A snapshot with the owner thread runnable, and its scheduler counters so far: `run` ns on a
/// CPU, `wait` ns runnable but waiting for one.
fn runnable_owner(ts: u64, run: u64, wait: u64) -> DeviceSnapshot {
    let mut s = snap(ts, vec![task(Q_TID, 'R', "")]);
    s.sched = vec![crate::snapshot::ThreadSched {
        tid: Q_TID,
        run_ns: run,
        wait_ns: wait,
    }];
    s
}

fn busy_blk(tags: &[u16]) -> BlkMqSnapshot {
    let text: String = tags
        .iter()
        .map(|t| format!("0 {{.op=READ, .cmd_flags=SYNC, .rq_flags=IO_STAT, .state=in_flight, .tag={t}, .internal_tag=-1}}\n"))
        .collect();
    BlkMqSnapshot {
        hctxs: vec![HctxSnapshot {
            index: 0,
            busy: parse_rq_list(&text),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A device in view with healthy traffic on every tag, ending at 1 s.
fn healthy() -> Model {
    let mut m = Model::new();
    m.apply_all(&setup(0, 2, 4, MS));
    for i in 0..400u64 {
        let q = (i % 2) as u16;
        let tag = ((i / 2) % 4) as u16;
        m.apply_all(&healthy_io(
            0,
            q,
            tag,
            100 * MS + i * 2 * MS,
            Q_TID + u32::from(q),
        ));
    }
    m
}

#[test]
fn healthy_traffic_and_long_idle_give_nothing() {
    let m = healthy();
    assert!(run(&m, 901 * MS, &th()).is_empty());
    // Hours of idle: WAITING tags are healthy.
    let mut idle = m.clone();
    idle.apply_snapshot(
        &snap(3_600_000 * MS, vec![task(Q_TID, 'S', "io_cqring_wait")]),
        0,
    );
    let d = diagnose(&idle, 3_600_001 * MS, &th());
    assert!(d.findings.is_empty(), "{:?}", d.findings);
    assert!(d.rechecks.is_empty(), "{:?}", d.rechecks);
}

#[test]
fn idle_depth_128_device_attached_late_gives_nothing() {
    let mut m = Model::new();
    let mut s = snap(10 * MS, vec![task(Q_TID, 'S', "io_cqring_wait")]);
    s.dev_info = Some(DevInfo {
        queue_depth: 128,
        ..info(1, 0)
    });
    s.blk = Some(busy_blk(&[]));
    m.apply_snapshot(&s, 0);
    let d = diagnose(&m, 7_200_000 * MS, &th());
    assert!(d.findings.is_empty() && d.rechecks.is_empty(), "{d:?}");
}

#[test]
fn stuck_in_server_names_the_tag() {
    let mut m = healthy();
    m.apply(&queue_rq(0, 1, 2, 1000 * MS, "READ", 4096));
    m.apply(&delivered(0, 1, 2, 1000 * MS + 50_000, Q_TID + 1));
    // Positive: 1.5 s later.
    let c = classes(&m, 2500 * MS);
    assert_eq!(c, vec![(Class::StuckInServer, Some(1), Some(2))]);
    let f = &run(&m, 2500 * MS, &th())[0];
    assert_eq!(f.age_ms, 1499);
    assert!(f.evidence[0].contains("READ sector 16"), "{:?}", f.evidence);
    // Negative: below the threshold.
    assert!(classes(&m, 1500 * MS).is_empty());
    // Not enough data: only blk-mq says tag 3 is in flight (late attach, no tag file).
    let mut late = Model::new();
    let mut s = snap(10 * MS, vec![]);
    s.blk = Some(busy_blk(&[3]));
    late.apply_snapshot(&s, 0);
    // Still listed 2.9 s later (a state only snapshots support ages up to the last one).
    let mut again = s.clone();
    again.taken_ns = 2900 * MS;
    late.apply_snapshot(&again, 0);
    assert!(classes(&late, 3000 * MS).is_empty());
    assert!(rechecks(&late, 3000 * MS).contains(&Class::StuckInServer));
}

#[test]
fn stuck_in_server_says_commit_not_submitted() {
    let mut m = healthy();
    m.apply(&queue_rq(0, 0, 1, 1000 * MS, "WRITE", 8192));
    m.apply(&delivered(0, 0, 1, 1000 * MS + 10, Q_TID));
    let mut s = snap(2900 * MS, vec![task(Q_TID, 'S', "io_cqring_wait")]);
    s.servers[0].rings.push(RingInfo {
        fd: 7,
        sq_head: 10,
        sq_tail: 11,
        ..Default::default()
    });
    m.apply_snapshot(&s, 0);
    let f = run(&m, 3000 * MS, &th());
    assert_eq!(f.len(), 1);
    assert!(
        f[0].evidence
            .iter()
            .any(|e| e.contains("written and not submitted")),
        "{:?}",
        f[0].evidence
    );
    assert!(f[0].pids.contains(&Q_TID));
}

#[test]
fn not_delivered_needs_observable_delivery() {
    let mut m = healthy();
    m.apply(&queue_rq(0, 0, 3, 1000 * MS, "READ", 4096));
    m.apply_snapshot(
        &snap(2000 * MS, vec![task(Q_TID, 'T', "do_signal_stop")]),
        0,
    );
    let f = run(&m, 2500 * MS, &th());
    let nd: Vec<_> = f
        .iter()
        .filter(|f| f.class == Class::NotDelivered)
        .collect();
    assert_eq!(nd.len(), 1, "{f:?}");
    assert_eq!((nd[0].queue, nd[0].tag), (Some(0), Some(3)));
    assert!(
        nd[0].evidence.iter().any(|e| e.contains("stopped")),
        "{:?}",
        nd[0].evidence
    );
    // An owner asleep outside io_uring (the stall-queue scenario): the evidence names the
    // DEFER_TASKRUN ring, where only the owner's own io_uring_enter delivers.
    let mut asleep = healthy();
    asleep.apply(&queue_rq(0, 0, 3, 1000 * MS, "READ", 4096));
    asleep.apply_snapshot(
        &snap(2000 * MS, vec![task(Q_TID, 'S', "hrtimer_nanosleep")]),
        0,
    );
    let f = run(&asleep, 2500 * MS, &th());
    let nd = f
        .iter()
        .find(|f| f.class == Class::NotDelivered)
        .expect("not delivered");
    assert!(
        nd.evidence.iter().any(|e| e.contains("DEFER_TASKRUN")),
        "{:?}",
        nd.evidence
    );
    // Negative: delivered in time.
    let mut ok = healthy();
    ok.apply(&queue_rq(0, 0, 3, 1000 * MS, "READ", 4096));
    assert!(classes(&ok, 1500 * MS).is_empty());
    // Not enough data: no delivery event ever seen on the device.
    let mut blind = Model::new();
    blind.apply_all(&setup(0, 1, 4, MS));
    blind.apply(&queue_rq(0, 0, 0, 10 * MS, "READ", 4096));
    assert!(classes(&blind, 3000 * MS).is_empty());
    assert!(rechecks(&blind, 3000 * MS).contains(&Class::NotDelivered));
}

#[test]
fn batched_delivery_is_not_not_delivered() {
    // 6.12 drains several tags per task-work run: the probe reports the queue (tag
    // u16::MAX), which delivers every request started before it.
    let mut m = healthy();
    m.apply(&queue_rq(0, 0, 0, 1000 * MS, "READ", 4096));
    m.apply(&queue_rq(0, 0, 1, 1000 * MS + 10, "READ", 4096));
    m.apply(&delivered(0, 0, u16::MAX, 1000 * MS + 100, Q_TID));
    let c = classes(&m, 3000 * MS);
    assert_eq!(
        c,
        vec![
            (Class::StuckInServer, Some(0), Some(0)),
            (Class::StuckInServer, Some(0), Some(1))
        ]
    );
}

#[test]
fn server_stopped_and_waiters_from_snapshots() {
    let mut m = healthy();
    let mut s = snap(
        2000 * MS,
        vec![
            task(Q_TID, 'T', "do_signal_stop"),
            task(SRV_PID, 'T', "do_signal_stop"),
        ],
    );
    s.inflight = Some(Inflight {
        reads: 2,
        writes: 0,
    });
    s.blk = Some(busy_blk(&[1, 3]));
    s.waiters = vec![TaskInfo {
        pid: 202,
        tid: 202,
        comm: "dd".into(),
        state: 'D',
        wchan: "submit_bio_wait".into(),
        stack: vec![],
        ctxt_switches: Some(9),
        wait: Some(WaitKind::RequestInFlight),
    }];
    m.apply_snapshot(&s, 0);
    let mut s2 = s.clone();
    s2.taken_ns = 3500 * MS;
    m.apply_snapshot(&s2, 0);
    let f = run(&m, 3600 * MS, &th());
    let stopped = f
        .iter()
        .find(|f| f.class == Class::ServerStopped)
        .expect("stopped");
    assert!(stopped.pids.contains(&Q_TID));
    assert_eq!(stopped.age_ms, 1600);
    assert!(stopped.evidence.iter().any(|e| e.contains("2 read(s)")));
    let w = f
        .iter()
        .find(|f| f.class == Class::Waiters)
        .expect("waiters");
    assert_eq!(w.pids, vec![202]);
    // Negative: a running server; the D task that keeps switching is not the same sleep.
    let mut ok = healthy();
    let mut r = snap(2000 * MS, vec![task(Q_TID, 'S', "io_cqring_wait")]);
    r.waiters = s.waiters.clone();
    ok.apply_snapshot(&r, 0);
    r.taken_ns = 3500 * MS;
    r.waiters[0].ctxt_switches = Some(10);
    ok.apply_snapshot(&r, 0);
    assert!(classes(&ok, 3600 * MS).is_empty());
    // Not enough data: no snapshot at all -> nothing, never a guess.
    assert!(classes(&healthy(), 3600 * MS).is_empty());
}

#[test]
fn server_dead_and_recovery_pending() {
    let mut m = healthy();
    m.apply(&cancel(0, 0, 0, 1000 * MS, Q_TID));
    let mut s = snap(1100 * MS, vec![]);
    s.servers.clear();
    s.block_dev_present = false;
    s.dev_info = Some(DevInfo {
        ublksrv_pid: -1,
        ..info(0, 0)
    });
    m.apply_snapshot(&s, 0);
    let f = run(&m, 1200 * MS, &th());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].class, Class::ServerDead);
    assert!(f[0].evidence.iter().any(|e| e.contains("state DEAD")));
    // Never seen alive and no tag file: the dead server's pid is unknown, none is made up.
    assert!(f[0].pids.is_empty(), "{:?}", f[0].pids);
    // With recovery the device is QUIESCED: RECOVERY_PENDING, not dead.
    let mut r = healthy();
    let mut q = s.clone();
    q.block_dev_present = true;
    q.dev_info = Some(info(2, 1 << 3));
    r.apply_snapshot(&q, 0);
    assert_eq!(
        classes(&r, 1200 * MS),
        vec![(Class::RecoveryPending, None, None)]
    );
    // Negative: between ADD and START the device is DEAD but its server holds the char dev.
    let mut n = Model::new();
    let mut a = snap(10 * MS, vec![task(Q_TID, 'S', "io_cqring_wait")]);
    a.dev_info = Some(info(0, 0));
    n.apply_snapshot(&a, 0);
    assert!(classes(&n, 20 * MS).is_empty());
    // Not enough data: no server, disk present, GET_DEV_INFO unavailable.
    let mut u = Model::new();
    let mut b = s.clone();
    b.block_dev_present = true;
    b.dev_info = None;
    u.apply_snapshot(&b, 0);
    assert!(classes(&u, 1200 * MS).is_empty());
    assert!(rechecks(&u, 1200 * MS).contains(&Class::ServerDead));
}

#[test]
fn server_dead_names_the_pid_that_held_the_char_dev() {
    // Watched alive, then gone: SERVER_DEAD names the pid last seen holding /dev/ublkc0.
    let mut m = healthy();
    m.apply_snapshot(&snap(900 * MS, vec![task(Q_TID, 'S', "io_cqring_wait")]), 0);
    let mut s = snap(1100 * MS, vec![]);
    s.servers.clear();
    s.block_dev_present = false;
    s.dev_info = Some(DevInfo {
        ublksrv_pid: -1,
        ..info(0, 0)
    });
    m.apply_snapshot(&s, 0);
    let f = run(&m, 1200 * MS, &th());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].class, f[0].pids.clone()),
        (Class::ServerDead, vec![SRV_PID])
    );
    assert!(
        f[0].evidence
            .iter()
            .any(|e| e.contains(&format!("the server was pid {SRV_PID} (last seen"))),
        "{:?}",
        f[0].evidence
    );
    // Attached after the exit: the tag-state file the server left names it.
    let mut late = Model::new();
    let mut t = with_tagfile(s.clone(), vec![published(1, "waiting", 500 * MS)]);
    if let Some(tf) = t.tagfile.as_mut() {
        tf.pid = 4242;
    }
    late.apply_snapshot(&t, 0);
    let f = run(&late, 1200 * MS, &th());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].class, f[0].pids.clone()),
        (Class::ServerDead, vec![4242])
    );
}

#[test]
fn ctrl_pending_start_dev_and_teardown() {
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 4, MS)[..]);
    m.apply(&ctrl_start(0, 100 * MS, SRV_PID, "STOP_DEV"));
    m.apply(&ctrl_done(0, 100 * MS + 5, SRV_PID, "STOP_DEV", -11));
    let c = classes(&m, 3000 * MS);
    assert_eq!(c, vec![(Class::TeardownBlocked, None, None)]);
    // START_DEV that never returns while the partition-scan read sits in the server.
    let mut s = Model::new();
    let mut evs = setup(0, 1, 4, MS);
    evs.truncate(evs.len() - 1); // START_DEV never returns
    s.apply_all(&evs);
    s.apply(&queue_rq(0, 0, 0, 60 * MS, "READ", 4096));
    s.apply(&delivered(0, 0, 0, 61 * MS, Q_TID));
    let f = run(&s, 3000 * MS, &th());
    let cp = f
        .iter()
        .find(|f| f.class == Class::CtrlPending)
        .expect("ctrl pending");
    assert!(cp.summary.contains("START_DEV"));
    assert!(
        cp.evidence.iter().any(|e| e.contains("partition scan")),
        "{:?}",
        cp.evidence
    );
    assert!(cp.hint.contains("partition-scan"), "{}", cp.hint);
    // Negative: commands that return are fine, EAGAIN + retry included.
    let mut ok = Model::new();
    ok.apply(&ctrl_start(0, 10, SRV_PID, "START_DEV"));
    ok.apply(&ctrl_done(0, 20, SRV_PID, "START_DEV", -11));
    ok.apply(&ctrl_start(0, 30, SRV_PID + 5, "START_DEV"));
    ok.apply(&ctrl_done(0, 40, SRV_PID + 5, "START_DEV", 0));
    assert!(classes(&ok, 9000 * MS).is_empty());
}

#[test]
fn no_fetch_only_when_setup_observed() {
    let mut m = Model::new();
    m.apply(&ctrl_start(0, MS, SRV_PID, "ADD_DEV"));
    m.apply(&ctrl_done(0, MS + 10, SRV_PID, "ADD_DEV", 0));
    m.apply_all(&fetch(0, 0, 0, 2 * MS, Q_TID));
    m.apply_all(&fetch(0, 0, 1, 2 * MS, Q_TID));
    m.apply(&ctrl_start(0, 5 * MS, SRV_PID, "START_DEV"));
    m.apply_snapshot(&snap(6 * MS, vec![task(Q_TID, 'S', "io_cqring_wait")]), 0);
    let f = run(&m, 3000 * MS, &th());
    let nf = f
        .iter()
        .find(|f| f.class == Class::NoFetch)
        .expect("no fetch");
    assert!(
        nf.evidence
            .iter()
            .any(|e| e.contains("2 of 4 tags") && e.contains("2, 3")),
        "{:?}",
        nf.evidence
    );
    // START_DEV is pending too: its hint points at the missing FETCH_REQs, not at the
    // partition scan (the skip-fetch scenario).
    let cp = f
        .iter()
        .find(|f| f.class == Class::CtrlPending)
        .expect("START_DEV pending");
    assert!(cp.hint.contains("FETCH_REQ"), "{}", cp.hint);
    assert!(!cp.hint.contains("partition"), "{}", cp.hint);
    // Not enough data: attached after ADD_DEV (FETCHes may have been before us).
    let mut late = Model::new();
    late.apply(&ctrl_start(0, 5 * MS, SRV_PID, "START_DEV"));
    late.apply_snapshot(&snap(6 * MS, vec![]), 0);
    assert!(
        !classes(&late, 3000 * MS)
            .iter()
            .any(|c| c.0 == Class::NoFetch)
    );
    assert!(rechecks(&late, 3000 * MS).contains(&Class::NoFetch));
    // Negative: all fetched, START completed.
    assert!(
        !classes(&healthy(), 3000 * MS)
            .iter()
            .any(|c| c.0 == Class::NoFetch)
    );
}

#[test]
fn cmd_rejected_names_thread_and_owner() {
    let mut m = healthy();
    m.apply(&queue_rq(0, 0, 2, 1000 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, 2, 1000 * MS + 10, Q_TID));
    m.apply_all(&commit_rejected(0, 0, 2, 1000 * MS + 20, 777, -22));
    m.apply_all(&commit(0, 0, 2, 1000 * MS + 30, Q_TID, 4096));
    m.apply(&block(0, 0, 2, 1000 * MS + 31, BlockStage::Complete, 0));
    let f = run(&m, 1100 * MS, &th());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].class, f[0].tag), (Class::CmdRejected, Some(2)));
    assert!(
        f[0].evidence.iter().any(|e| e.contains("owned by tid 501")),
        "{:?}",
        f[0].evidence
    );
    // Ages out of the recent window.
    assert!(classes(&m, 100_000 * MS).is_empty());
}

#[test]
fn bad_commit_read_fails_and_write_storm() {
    let mut m = healthy();
    m.apply(&queue_rq(0, 0, 1, 1000 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, 1, 1000 * MS + 10, Q_TID));
    m.apply_all(&commit(0, 0, 1, 1000 * MS + 20, Q_TID, 0));
    let f = run(&m, 1100 * MS, &th());
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].class, Class::BadCommit);
    assert!(f[0].evidence[0].contains("fails it with EIO"));
    let mut w = healthy();
    for i in 0..20u64 {
        let t = 1000 * MS + i * 10 * MS;
        w.apply(&queue_rq(0, 1, 0, t, "WRITE", 4096));
        w.apply(&delivered(0, 1, 0, t + 10, Q_TID + 1));
        w.apply_all(&commit(0, 1, 0, t + 100, Q_TID + 1, 0));
        w.apply(&block(0, 1, 0, t + 200, BlockStage::Requeue, 0));
    }
    let f = run(&w, 1200 * MS, &th());
    let b = f
        .iter()
        .find(|f| f.class == Class::BadCommit)
        .expect("bad commit");
    assert!(
        b.evidence.iter().any(|e| e.contains("requeue storm")),
        "{:?}",
        b.evidence
    );
    // Negative: healthy commits of the right size.
    assert!(classes(&healthy(), 1100 * MS).is_empty());
}

#[test]
fn held_in_block_layer_from_debugfs() {
    let mut m = healthy();
    let mut s = snap(2000 * MS, vec![task(Q_TID, 'S', "io_cqring_wait")]);
    let mut b = busy_blk(&[]);
    b.queue_state = vec!["QUIESCED".into()];
    s.blk = Some(b);
    m.apply_snapshot(&s, 0);
    // One sighting is not yet "held".
    assert!(classes(&m, 2000 * MS).is_empty());
    let mut s2 = s.clone();
    s2.taken_ns = 3500 * MS;
    m.apply_snapshot(&s2, 0);
    let f = run(&m, 3500 * MS, &th());
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].class, Class::HeldInBlockLayer);
    assert!(f[0].evidence[0].contains("QUIESCED"));
    // Negative: the condition clears.
    let mut s3 = s2.clone();
    s3.taken_ns = 4000 * MS;
    s3.blk = Some(busy_blk(&[]));
    m.apply_snapshot(&s3, 0);
    assert!(classes(&m, 6000 * MS).is_empty());
}

#[test]
fn slow_is_informational() {
    let mut m = healthy();
    m.apply(&queue_rq(0, 0, 0, 1000 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, 0, 1000 * MS + 10, Q_TID));
    m.apply_all(&commit(0, 0, 0, 2500 * MS, Q_TID, 4096));
    m.apply(&block(0, 0, 0, 2500 * MS + 1, BlockStage::Complete, 0));
    let f = run(&m, 2600 * MS, &th());
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].class, Class::Slow);
    assert!(!f[0].is_problem());
    // It names the queue's thread (the server process only when a snapshot found it).
    assert_eq!(f[0].pids, vec![Q_TID], "{f:?}");
    m.apply_snapshot(
        &snap(2550 * MS, vec![task(Q_TID, 'S', "io_cqring_wait")]),
        0,
    );
    let f = run(&m, 2600 * MS, &th());
    assert_eq!(f[0].pids, vec![SRV_PID, Q_TID], "{f:?}");
    // Healthy 100 µs requests are never SLOW; and the window forgets old outliers.
    assert!(classes(&m, 200_000 * MS).is_empty());
}

#[test]
fn lost_events_are_named_in_evidence_and_json_is_versioned() {
    let mut m = healthy();
    // Lost before the request started: its own events are complete.
    m.apply(&lost(999 * MS, 7));
    m.apply(&queue_rq(0, 0, 2, 1000 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, 2, 1000 * MS + 10, Q_TID));
    let d = diagnose(&m, 3000 * MS, &th());
    assert!(
        d.findings[0]
            .evidence
            .iter()
            .any(|e| e.contains("7 trace events were lost"))
    );
    let json = serde_json::to_string(&d).expect("json");
    assert!(
        json.contains("\"schema\":\"ublk-trace.findings\""),
        "{json}"
    );
    assert!(json.contains("\"class\":\"STUCK_IN_SERVER\""), "{json}");
    let back: Diagnosis = serde_json::from_str(&json).expect("round trip");
    assert_eq!(back, d);
}

#[test]
fn lost_events_turn_a_stale_stuck_into_a_recheck() {
    // The commit of q0 tag 2 may be among the lost events: no STUCK without confirmation.
    let mut m = healthy();
    m.apply(&queue_rq(0, 0, 2, 1000 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, 2, 1000 * MS + 10, Q_TID));
    m.apply(&lost(1001 * MS, 40));
    assert!(classes(&m, 3000 * MS).is_empty());
    assert!(rechecks(&m, 3000 * MS).contains(&Class::StuckInServer));
    // A snapshot 1.5 s later still lists the tag in flight: confirmed.
    let mut s = snap(2500 * MS, vec![task(Q_TID, 'S', "io_cqring_wait")]);
    s.blk = Some(busy_blk(&[2]));
    m.apply_snapshot(&s, 0);
    assert_eq!(
        classes(&m, 3000 * MS),
        vec![(Class::StuckInServer, Some(0), Some(2))]
    );
}

#[test]
fn waiters_behind_a_stuck_request_are_named_at_first_sight() {
    let mut m = healthy();
    m.apply(&queue_rq(0, 0, 2, 1000 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, 2, 1000 * MS + 10, Q_TID));
    let mut s = snap(2900 * MS, vec![task(Q_TID, 'S', "io_cqring_wait")]);
    s.waiters = vec![TaskInfo {
        pid: 202,
        tid: 202,
        comm: "dd".into(),
        state: 'D',
        wchan: "submit_bio_wait".into(),
        stack: vec![],
        ctxt_switches: Some(9),
        wait: Some(WaitKind::RequestInFlight),
    }];
    m.apply_snapshot(&s, 0);
    let f = run(&m, 3000 * MS, &th());
    let w = f
        .iter()
        .find(|f| f.class == Class::Waiters)
        .expect("waiters");
    assert_eq!(w.pids, vec![202]);
    // Same D task on a device with nothing stuck, seen for 0.1 s: not yet a waiter.
    let mut ok = healthy();
    ok.apply_snapshot(&s, 0);
    assert!(classes(&ok, 3000 * MS).is_empty());
}

fn published(tag: u16, state: &str, received_ns: u64) -> crate::snapshot::tagfile::PublishedTag {
    crate::snapshot::tagfile::PublishedTag {
        q_id: 0,
        tag,
        state: state.into(),
        op: 0,
        start_sector: u64::from(tag) * 8,
        nr_sectors: 8,
        result: 4096,
        waiting_since_ns: received_ns,
        received_ns,
        committed_ns: received_ns,
        tid: Q_TID,
        fault: 0,
        seq: 5,
    }
}

#[test]
fn stopped_server_with_an_unreaped_cqe_as_seen_in_the_guest() {
    // Measured in the 6.12 guest (repro stopped-server): tag 0's last request was committed
    // before the stop; tag 1 was delivered (CQE posted) and never reaped; the tag file still
    // says "committed" for 0 and "waiting" for 1; blk-mq lists only tag 1.
    let mk = |ts: u64| {
        let mut s = snap(
            ts,
            vec![
                task(SRV_PID, 'T', "do_signal_stop"),
                task(Q_TID, 'T', "do_signal_stop"),
            ],
        );
        s.blk = Some(busy_blk(&[1]));
        s.servers[0].rings.push(RingInfo {
            fd: 7,
            sq_head: 620,
            sq_tail: 620,
            cq_head: 611,
            cq_tail: 612,
            cqes: vec![crate::snapshot::fdinfo::CqeLine {
                slot: 3,
                user_data: 0x21_0001,
                res: 0,
                flags: 0,
            }],
            user_files: vec!["ublkc0".into()],
            ..Default::default()
        });
        s.tagfile = Some(crate::snapshot::tagfile::TagFileSnapshot {
            path: "f".into(),
            pid: SRV_PID,
            nr_queues: 1,
            queue_depth: 4,
            start_ns: 1,
            heartbeat_ns: 0,
            fault_mask: 0,
            tags: vec![
                published(0, "committed", 100 * MS),
                published(1, "waiting", 100 * MS),
            ],
        });
        s
    };
    let mut m = Model::new();
    m.apply_snapshot(&mk(1000 * MS), 0);
    m.apply_snapshot(&mk(2500 * MS), 0);
    let c = classes(&m, 2600 * MS);
    assert!(c.contains(&(Class::ServerStopped, None, None)), "{c:?}");
    assert!(
        c.contains(&(Class::StuckInServer, Some(0), Some(1))),
        "{c:?}"
    );
    assert!(
        !c.iter().any(|x| x.2 == Some(0)),
        "tag 0 is not in flight: {c:?}"
    );
    assert!(!c.iter().any(|x| x.0 == Class::NotDelivered), "{c:?}");
    let f = run(&m, 2600 * MS, &th());
    let stuck = f
        .iter()
        .find(|f| f.class == Class::StuckInServer)
        .expect("stuck");
    assert!(
        stuck.evidence.iter().any(|e| e.contains("never reaped")),
        "{:?}",
        stuck.evidence
    );
}

fn with_tagfile(
    mut s: DeviceSnapshot,
    tags: Vec<crate::snapshot::tagfile::PublishedTag>,
) -> DeviceSnapshot {
    s.tagfile = Some(crate::snapshot::tagfile::TagFileSnapshot {
        path: "f".into(),
        pid: SRV_PID,
        nr_queues: 1,
        queue_depth: 8,
        start_ns: 1,
        heartbeat_ns: 0,
        fault_mask: 0,
        tags,
    });
    s
}

#[test]
fn crashed_server_leaves_a_stale_tag_file_that_is_ignored() {
    // Guest repro "crash": the dead server's tag file still says tag 5 is in the server.
    let mut s = with_tagfile(
        snap(1000 * MS, vec![]),
        vec![published(5, "in_server", 100 * MS)],
    );
    s.servers.clear();
    s.block_dev_present = false;
    s.blk = None;
    s.dev_info = Some(DevInfo {
        ublksrv_pid: -1,
        ..info(0, 0x42)
    });
    let mut m = Model::new();
    m.apply_snapshot(&s, 0);
    assert_eq!(
        classes(&m, 2000 * MS),
        vec![(Class::ServerDead, None, None)]
    );
}

#[test]
fn bad_commit_before_tracing_is_read_from_the_tag_file() {
    // Guest repro "zero-commit": the 0-byte READ commit happened before diagnose started.
    let mut zero = published(2, "waiting", 900 * MS);
    zero.result = 0;
    let mut m = Model::new();
    m.apply_snapshot(
        &with_tagfile(
            snap(1000 * MS, vec![]),
            vec![zero.clone(), published(3, "waiting", 900 * MS)],
        ),
        0,
    );
    let f = run(&m, 1100 * MS, &th());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].class, f[0].tag), (Class::BadCommit, Some(2)));
    assert!(
        f[0].evidence
            .iter()
            .any(|e| e.contains("fails it with EIO")),
        "{:?}",
        f[0].evidence
    );
    // Old enough to be out of the recent window: nothing.
    assert!(classes(&m, 1000 * MS + th().recent_ms * MS + MS).is_empty());
}

#[test]
fn slow_from_the_tag_file_without_events() {
    let mut slow = published(4, "waiting", 500 * MS);
    slow.committed_ns = 900 * MS;
    let mut fast = published(5, "waiting", 800 * MS);
    fast.committed_ns = 800 * MS + 50_000;
    let mut m = Model::new();
    m.apply_snapshot(
        &with_tagfile(snap(1000 * MS, vec![]), vec![slow, fast.clone()]),
        0,
    );
    let f = run(&m, 1100 * MS, &th());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].class, f[0].tag), (Class::Slow, Some(4)));
    assert!(f[0].evidence[0].contains("400.0 ms"), "{:?}", f[0].evidence);
    // Only fast requests: nothing.
    let mut ok = Model::new();
    ok.apply_snapshot(&with_tagfile(snap(1000 * MS, vec![]), vec![fast]), 0);
    assert!(classes(&ok, 1100 * MS).is_empty());
}

#[test]
fn a_timed_out_source_is_a_recheck_not_a_finding() {
    let mut m = healthy();
    let mut s = snap(2000 * MS, vec![task(Q_TID, 'S', "io_cqring_wait")]);
    s.dev_info = None;
    s.errors.push(crate::snapshot::SourceError {
        source: "GET_DEV_INFO".into(),
        detail: "timed out after 2000 ms".into(),
        timed_out: true,
    });
    m.apply_snapshot(&s, 0);
    let d = diagnose(&m, 2100 * MS, &th());
    assert!(d.findings.is_empty(), "{:?}", d.findings);
    assert_eq!(d.rechecks.len(), 1, "{:?}", d.rechecks);
    assert_eq!(d.rechecks[0].class, Class::CtrlPending);
    assert!(d.rechecks[0].reason.contains("control path did not answer"));
}

#[test]
fn committed_but_never_completed_is_stuck() {
    let mut m = healthy();
    m.apply(&queue_rq(0, 0, 3, 1000 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, 3, 1000 * MS + 10, Q_TID));
    m.apply_all(&commit(0, 0, 3, 1000 * MS + 50_000, Q_TID, 4096));
    // No block_rq_complete: a zero-copy buffer still registered.
    let f = run(&m, 2500 * MS, &th());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].class, f[0].tag), (Class::StuckInServer, Some(3)));
    assert!(
        f[0].summary.contains("has not completed"),
        "{}",
        f[0].summary
    );
    // Completed: nothing.
    m.apply(&block(0, 0, 3, 1000 * MS + 60_000, BlockStage::Complete, 0));
    assert!(classes(&m, 2500 * MS).is_empty());
}

#[test]
fn owner_progress_after_the_start_means_delivery_is_only_late() {
    // Guest healthy fio under a busy debug-build watch: the queue kept committing other tags
    // after the request started; its batch delivery event was just not read yet.
    let mut m = healthy();
    m.apply(&queue_rq(0, 0, 3, 1000 * MS, "READ", 4096));
    m.apply(&queue_rq(0, 0, 0, 1000 * MS + 5, "READ", 4096));
    m.apply(&delivered(0, 0, 0, 1000 * MS + 10, Q_TID));
    m.apply_all(&commit(0, 0, 0, 1100 * MS, Q_TID, 4096));
    m.apply(&block(0, 0, 0, 1100 * MS + 1, BlockStage::Complete, 0));
    assert!(
        !classes(&m, 2500 * MS)
            .iter()
            .any(|c| c.0 == Class::NotDelivered)
    );
}

#[test]
fn a_runnable_owner_that_has_not_read_the_request_gets_twice_the_time() {
    let mut m = healthy();
    m.apply(&queue_rq(0, 0, 3, 1000 * MS, "READ", 4096));
    m.apply(&delivered(0, 0, u16::MAX, 1000 * MS + 10, Q_TID));
    let s = with_tagfile(
        snap(1500 * MS, vec![task(Q_TID, 'R', "")]),
        vec![published(3, "waiting", 900 * MS)],
    );
    m.apply_snapshot(&s, 0);
    // 1.5 s: starved, maybe; 2.5 s: stuck.
    assert!(classes(&m, 2500 * MS - 10 * MS).is_empty());
    assert_eq!(
        classes(&m, 3100 * MS),
        vec![(Class::StuckInServer, Some(0), Some(3))]
    );
}

#[test]
fn an_owner_starved_of_cpu_is_not_judged() {
    // Guest healthy fio on a loaded host: the owner was runnable but waited for a CPU
    // most of the last snapshot interval (schedstat), so the delay is load, not a hang.
    let mut m = healthy();
    m.apply(&queue_rq(0, 0, 3, 1000 * MS, "READ", 4096));
    m.apply_snapshot(&runnable_owner(1500 * MS, 10 * MS, 10 * MS), 0);
    m.apply_snapshot(&runnable_owner(2500 * MS, 20 * MS, 900 * MS), 0);
    assert!(classes(&m, 2600 * MS).is_empty());
    assert!(rechecks(&m, 2600 * MS).contains(&Class::NotDelivered));
    // The next interval it ran and still did not take the request: now it is judged.
    m.apply_snapshot(&runnable_owner(3500 * MS, 900 * MS, 950 * MS), 0);
    assert_eq!(
        classes(&m, 3600 * MS),
        vec![(Class::NotDelivered, Some(0), Some(3))]
    );
}

#[test]
fn a_request_held_while_the_driver_sees_others_leave_the_server_is_stuck_not_starved() {
    // Guest 6.12 CI, late `diagnose` of `--inject hang:q=0,tag=1` under fio (1 queue, depth
    // 4, no tag file, no per-I/O probes): the owner waited for a CPU 132 of the last 247 ms
    // (the tracer starting up), so tag 1 was left undecided as "overloaded". But the driver's
    // reads saw tag 2's request leave the server after tag 1's arrived: the owner had a CPU
    // and served others, so tag 1 is stuck. Without that move both stay undecided.
    use crate::driver::TagView as DriverView;
    const S: u64 = 1000 * MS;
    let held = || driver_tag(1, DriverView::InServer, Some(driver_rq(S)));
    let t2_in_server = || driver_tag(2, DriverView::InServer, Some(driver_rq(2 * S + S / 2)));
    let mut out = Vec::new();
    for t2_moves in [false, true] {
        let mut m = Model::new();
        m.apply_snapshot(&runnable_owner(3 * S, 10 * MS, 10 * MS), 0);
        m.apply_driver(&driver_snap(3 * S, vec![held(), t2_in_server()]));
        let t2 = match t2_moves {
            true => driver_tag(2, DriverView::Waiting, None),
            false => t2_in_server(),
        };
        m.apply_driver(&driver_snap(4 * S, vec![held(), t2]));
        m.apply_snapshot(&runnable_owner(4 * S, 110 * MS, 700 * MS), 0);
        out.push((classes(&m, 4 * S), rechecks(&m, 4 * S)));
    }
    assert_eq!(out[0].0, vec![], "starved, maybe: not judged");
    assert!(out[0].1.contains(&Class::StuckInServer), "{:?}", out[0]);
    assert_eq!(
        out[1].0,
        vec![(Class::StuckInServer, Some(0), Some(1))],
        "{:?}",
        out[1]
    );
}

#[test]
fn a_hung_tag_among_busy_batched_tags_is_stuck_in_server() {
    // Guest 6.12, `--inject hang:q=1,tag=2`, fio iodepth 4, live watch: q1 tag 2 was delivered
    // by a batched task-work run and never committed while tags 0, 1, 3 of q1 keep cycling
    // (each cycle has its own batched run); the reader drains the ring every 100 ms
    // (horizon), snapshots and the in-kernel state map come every 200 ms.
    use crate::snapshot::tagfile::PublishedTag;
    use ublk_trace_common::tagmap::KernelTag;
    const Q: u16 = 1;
    const HUNG: u16 = 2;
    let tid = Q_TID + 1;
    let mut m = Model::new();
    m.apply_all(&setup(0, 2, 4, MS));
    let hung_start = 1000 * MS;
    m.apply(&queue_rq(0, Q, HUNG, hung_start, "READ", 4096));
    m.apply(&delivered(0, Q, u16::MAX, hung_start + 20_000, tid));
    let mut last_batch = hung_start + 20_000;
    let mut waiting_since = [0u64; 4];
    let mut seq = [0u64; 4];
    let mut t = hung_start + MS;
    let end = hung_start + 2600 * MS;
    let mut next_drain = hung_start + 100 * MS;
    let mut next_snap = hung_start + 200 * MS;
    while t < end {
        for tag in [0u16, 1, 3] {
            let t0 = t + u64::from(tag) * 30_000;
            m.apply(&queue_rq(0, Q, tag, t0, "READ", 4096));
            m.apply(&delivered(0, Q, u16::MAX, t0 + 20_000, tid));
            last_batch = t0 + 20_000;
            m.apply_all(&commit(0, Q, tag, t0 + 100_000, tid, 4096));
            m.apply(&block(0, Q, tag, t0 + 100_500, BlockStage::Complete, 0));
            waiting_since[usize::from(tag)] = t0 + 100_000;
            seq[usize::from(tag)] += 1;
        }
        t += 2 * MS;
        if t >= next_drain {
            m.set_events_horizon(t);
            next_drain += 100 * MS;
        }
        if t >= next_snap {
            next_snap += 200 * MS;
            let kq = KernelTag {
                delivered_ns: last_batch,
                ..Default::default()
            };
            m.apply_kernel_tag(0, Q, u16::MAX, &kq);
            let kh = KernelTag {
                fetch_ns: MS,
                queue_rq_ns: hung_start,
                owner_tid: tid,
                fetches: 1,
                ..Default::default()
            };
            m.apply_kernel_tag(0, Q, HUNG, &kh);
            let mut s = snap(
                t,
                vec![task(Q_TID, 'S', "io_cqring_wait"), task(tid, 'R', "")],
            );
            s.dev_info = Some(DevInfo {
                nr_hw_queues: 2,
                ..info(1, 0)
            });
            let text = format!(
                "0 {{.op=READ, .cmd_flags=SYNC, .rq_flags=IO_STAT, .state=in_flight, .tag={HUNG}, .internal_tag=-1}}\n"
            );
            s.blk = Some(BlkMqSnapshot {
                hctxs: vec![
                    HctxSnapshot {
                        index: 0,
                        ..Default::default()
                    },
                    HctxSnapshot {
                        index: Q,
                        busy: parse_rq_list(&text),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            });
            let tags = (0..4u16)
                .map(|tag| {
                    let i = usize::from(tag);
                    let hung = tag == HUNG;
                    PublishedTag {
                        q_id: Q,
                        tid,
                        seq: seq[i],
                        fault: u32::from(hung),
                        waiting_since_ns: if hung { MS } else { waiting_since[i] },
                        ..published(
                            tag,
                            if hung { "in_server" } else { "waiting" },
                            if hung {
                                hung_start + 30_000
                            } else {
                                waiting_since[i] - 90_000
                            },
                        )
                    }
                })
                .collect();
            let mut s = with_tagfile(s, tags);
            if let Some(tf) = s.tagfile.as_mut() {
                tf.nr_queues = 2;
                tf.queue_depth = 4;
            }
            m.apply_snapshot(&s, 0);
        }
    }
    let now = end + 10 * MS;
    let v = m.device(0, now).expect("device");
    let hung = v.queue(Q).expect("q1").tag(HUNG);
    assert_eq!(hung.state, crate::model::TagState::InServer);
    assert!(hung.age_ns > 2000 * MS, "age {} ms", hung.age_ns / MS);
    assert_eq!(
        classes(&m, now),
        vec![(Class::StuckInServer, Some(Q), Some(HUNG))]
    );
}

/// One unreaped delivery CQE for `tag` on a ring of device 0, at CQ position `pos`.
fn ring_with_cqe(tag: u16, pos: u32) -> RingInfo {
    RingInfo {
        fd: 7,
        sq_head: pos,
        sq_tail: pos,
        cq_mask: 255,
        cq_head: pos,
        cq_tail: pos + 1,
        cqes: vec![crate::snapshot::fdinfo::CqeLine {
            slot: pos & 255,
            user_data: 0x21_0000 | u64::from(tag),
            res: 0,
            flags: 0,
        }],
        user_files: vec!["ublkc0".into()],
        ..Default::default()
    }
}

/// Healthy fio under a live watch (guest 6.12): the snapshots, sparse against the traffic, catch
/// tag 1 busy every time with a fresh delivery CQE not reaped yet, while the events (read
/// before the snapshot) show each request committed. A tag busy in every snapshot served many
/// requests: neither the busy age nor the CQE's age may span them.
#[test]
fn a_tag_busy_in_every_snapshot_under_load_is_not_stuck() {
    let mut m = Model::new();
    m.apply_all(&setup(0, 1, 4, MS));
    let mut ts = 1000 * MS;
    for k in 0..20u32 {
        m.apply_all(&healthy_io(0, 0, 1, ts - 300 * MS, Q_TID));
        let mut s = snap(ts, vec![task(Q_TID, 'R', "")]);
        s.blk = Some(busy_blk(&[1]));
        s.servers[0].rings.push(ring_with_cqe(1, 1000 + 40 * k));
        m.apply_snapshot(&s, 0);
        ts += 500 * MS;
    }
    let c = classes(&m, ts - 499 * MS);
    assert!(c.is_empty(), "healthy load read as {c:?}");
}

/// The same for a server without a tag file, watched without probes: each snapshot shows
/// another CQE (the CQ head moved on), so each is a new delivery.
#[test]
fn a_new_cqe_for_the_same_tag_restarts_its_age_without_events() {
    let mut m = Model::new();
    let mut ts = 1000 * MS;
    for k in 0..20u32 {
        let mut s = snap(ts, vec![task(Q_TID, 'R', "")]);
        s.blk = Some(busy_blk(&[1]));
        s.servers[0].rings.push(ring_with_cqe(1, 1000 + 40 * k));
        m.apply_snapshot(&s, 0);
        ts += 500 * MS;
    }
    let c = classes(&m, ts - 499 * MS);
    assert!(
        !c.iter().any(|x| x.0 == Class::StuckInServer),
        "a new CQE each time read as stuck: {c:?}"
    );
    // The same CQE left where it was for 3 s is stuck.
    for _ in 0..6 {
        let mut s = snap(ts, vec![task(Q_TID, 'R', "")]);
        s.blk = Some(busy_blk(&[1]));
        s.servers[0].rings.push(ring_with_cqe(1, 5000));
        m.apply_snapshot(&s, 0);
        ts += 500 * MS;
    }
    let c = classes(&m, ts - 499 * MS);
    assert!(
        c.contains(&(Class::StuckInServer, Some(0), Some(1))),
        "an unreaped CQE for 3 s: {c:?}"
    );
}

/// Guest 6.12, late attach to `--inject hang:q=0,tag=1` under fio sharing the queue's CPU: the
/// owner thread waits for the CPU half the time (schedstat), yet the tag file shows it received
/// tag 1 long ago and committed other tags since. CPU contention does not excuse that tag.
#[test]
fn a_tag_held_while_the_starved_owner_serves_others_is_stuck() {
    let sched = |ts: u64, run: u64, wait: u64| {
        let mut s = runnable_owner(ts, run, wait);
        s.blk = Some(busy_blk(&[0, 1, 2]));
        let mut hung = published(1, "in_server", 100 * MS);
        hung.seq = 1;
        let mut tags = vec![hung];
        for tag in [0u16, 2] {
            let mut p = published(tag, "in_server", ts - 5 * MS);
            p.committed_ns = ts - 10 * MS;
            p.seq = ts;
            tags.push(p);
        }
        with_tagfile(s, tags)
    };
    let mut m = Model::new();
    m.apply_snapshot(&sched(1000 * MS, 100 * MS, 100 * MS), 0);
    m.apply_snapshot(&sched(1500 * MS, 250 * MS, 400 * MS), 0);
    let c = classes(&m, 1600 * MS);
    assert!(
        c.contains(&(Class::StuckInServer, Some(0), Some(1))),
        "held since 100 ms while others were served: {c:?}"
    );
    assert!(
        !c.iter().any(|x| x.2 == Some(0) || x.2 == Some(2)),
        "tags 0 and 2 were just received: {c:?}"
    );
}

#[test]
fn snapshot_only_server_time_counts_up_to_the_last_snapshot() {
    // Guest repro "slow" (400 ms per request) under a late `diagnose`: the last snapshot
    // (1300 ms) saw tag 0 received at 1000 ms; judged at 1600 ms, the request was in the
    // server for at least 300 ms, not 600 ms: it may have been committed right after the look.
    let mk = |ts: u64| {
        let mut s = with_tagfile(
            snap(ts, vec![task(Q_TID, 'S', "io_cqring_wait")]),
            vec![published(0, "in_server", 1000 * MS)],
        );
        s.blk = Some(busy_blk(&[0]));
        s
    };
    let th = Thresholds {
        stuck_ms: 500,
        ..th()
    };
    let at = |m: &Model, now: u64| -> Vec<_> {
        run(m, now, &th)
            .into_iter()
            .map(|f| (f.class, f.queue, f.tag))
            .collect()
    };
    let mut m = Model::new();
    m.apply_snapshot(&mk(1300 * MS), 0);
    assert!(at(&m, 1600 * MS).is_empty(), "{:?}", at(&m, 1600 * MS));
    // Still there at the next look (1700 ms): now it is stuck.
    m.apply_snapshot(&mk(1700 * MS), 0);
    assert_eq!(
        at(&m, 1800 * MS),
        vec![(Class::StuckInServer, Some(0), Some(0))]
    );
}

/// 6.1 inlines START_DEV's body: its waiter's stack ends at `ublk_ctrl_uring_cmd`. On a device
/// never started (DEAD) with tags the driver lists as never fetched, that is NO_FETCH, and the
/// evidence says it was inferred; on a started device the same frame is not START_DEV.
#[test]
fn a_start_dev_inlined_into_the_handler_is_inferred_on_a_device_never_started() {
    use crate::driver::TagView as DriverView;
    let late = |state: u16| {
        let mut m = Model::new();
        let mut waiter = task(Q_TID + 5, 'S', "ublk_ctrl_uring_cmd");
        waiter.stack = vec!["ublk_ctrl_uring_cmd".into(), "io_uring_cmd".into()];
        for ts in [0, 2000 * MS] {
            let mut s = snap(ts, vec![waiter.clone()]);
            s.dev_info = Some(info(state, 0));
            m.apply_snapshot(&s, 0);
        }
        let mut d = driver_snap(
            2000 * MS,
            vec![
                driver_tag(0, DriverView::NotFetched, None),
                driver_tag(1, DriverView::NotFetched, None),
                driver_tag(2, DriverView::Waiting, None),
                driver_tag(3, DriverView::Waiting, None),
            ],
        );
        d.devices[0].state = state;
        m.apply_driver(&d);
        m
    };
    let d = diagnose(&late(0), 2000 * MS, &th());
    let f = d
        .findings
        .iter()
        .find(|f| f.class == Class::NoFetch)
        .unwrap_or_else(|| panic!("NO_FETCH: {d:?}"));
    let text = f.evidence.join(" | ");
    assert!(text.contains("START_DEV inferred"), "{text}");
    assert!(text.contains("0, 1"), "{text}");
    let d = diagnose(&late(1), 2000 * MS, &th());
    assert!(
        !d.findings.iter().any(|f| f.class == Class::NoFetch),
        "a LIVE device: {d:?}"
    );
}
