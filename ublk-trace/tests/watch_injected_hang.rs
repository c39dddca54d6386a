//! Our server with an injected hang of one tag, watched from before the fault: within 2 s the
//! headless watch names STUCK_IN_SERVER on exactly that queue and tag, with the server's pid
//! and its queue thread, and no other tag of the device as stuck; after the teardown the guest
//! is clean (no device left, nothing in D state).
mod diagnose_common;

use std::time::{Duration, Instant};

use diagnose_common::*;

/// Queue 1 when the guest has 2 CPUs (so a swapped queue/tag would show), else queue 0.
/// blk-mq maps CPU n to hardware queue n when there are as many queues as CPUs.
fn hang_queue() -> (u16, usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 { (2, 1) } else { (1, 0) }
}

#[test]
#[ignore = "needs ublk guest"]
fn injected_hang_is_stuck_in_server_on_exactly_that_tag() {
    let (queues, q) = hang_queue();
    const TAG: u64 = 2;
    let inject = format!("hang:q={q},tag={TAG}");
    let nq = queues.to_string();
    let s = Server::start(&["null", "--queues", &nq, "--depth", "4", "--inject", &inject]);
    let w = HeadlessWatch::start(s.dev_id, 200);
    w.wait_until_attached();
    // Four reads in flight on a depth-4 queue use every tag, so the hung one gets a request.
    let mut fio = fio_reads(&s.bdev(), 4, q);
    let want = (q as u64, TAG);
    assert!(
        wait_for_stuck_tag(s.dev_id, want.0, want.1, Duration::from_secs(30)),
        "q{q} t{TAG} never stuck per debugfs: {:?}",
        busy_tags(s.dev_id)
    );
    // The hang began at least the 600 ms of the check ago: count the 2 s from there.
    let fault = Instant::now() - Duration::from_millis(600);
    let pid = s.pid();
    // The queue thread that holds the tag (named ublk-q<N> by the server).
    let qtid = s.thread_tid(&format!("ublk-q{q}"));
    let found = w.wait_for(fault, Duration::from_secs(2), |doc| {
        let fs = findings(doc);
        finding_on(&fs, &["STUCK_IN_SERVER"], q as u64, TAG)
            .is_some_and(|f| has_pid(f, pid) && qtid.is_none_or(|tid| has_pid(f, tid)))
    });
    // fio waits for the hung read; killing the server fails it with EIO and fio exits.
    let _ = fio.kill();
    let dev_id = s.dev_id;
    drop(w);
    drop(s);
    let _ = wait_timeout(&mut fio, Duration::from_secs(30));
    assert_recovered(dev_id, Duration::from_secs(30));
    let (t, doc) = found.unwrap_or_else(|| {
        panic!("no STUCK_IN_SERVER q{q} t{TAG} pids {pid} + queue thread {qtid:?} within 2 s")
    });
    let fs = findings(&doc);
    println!(
        "found after {:?}: {:?}",
        t.duration_since(fault),
        classes(&fs)
    );
    let others: Vec<_> = fs
        .iter()
        .filter(|f| f["class"] == "STUCK_IN_SERVER")
        .filter(|f| f["queue"].as_u64() != Some(q as u64) || f["tag"].as_u64() != Some(TAG))
        .collect();
    assert!(others.is_empty(), "other tags called stuck: {others:?}");
}
