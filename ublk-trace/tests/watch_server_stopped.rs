//! A server SIGSTOPped with I/O in flight, watched from before the fault: within 2 s the
//! headless watch names SERVER_STOPPED with the server's pid, the stuck request on the exact
//! (queue, tag) blk-mq debugfs lists, and the reader in D state under WAITERS; after the
//! teardown (SIGKILL, then DEL) the guest is clean (no device left, nothing in D state).
mod diagnose_common;

use std::time::{Duration, Instant};

use diagnose_common::*;

#[test]
#[ignore = "needs ublk guest"]
fn sigstopped_server_mid_io_is_stopped_stuck_and_waited_on() {
    let s = Server::start(&["null", "--queues", "1", "--depth", "8"]);
    let w = HeadlessWatch::start(s.dev_id, 200);
    w.wait_until_attached();
    let mut reader = dd(&s.bdev(), 0, 1_000_000, None);
    std::thread::sleep(Duration::from_millis(300));
    s.signal(libc::SIGSTOP);
    let fault = Instant::now();
    assert!(
        wait_for_d_state(reader.id(), Duration::from_secs(2)),
        "the reader never blocked: state {}",
        proc_state(reader.id())
    );
    // The reader blocks on every read, so D state can come just before the stop reaches the
    // queue thread, which then completes that read and the next one waits: the stuck tag is
    // the one debugfs keeps listing, not the first one seen.
    let busy = stable_busy_tags(s.dev_id);
    assert!(!busy.is_empty(), "debugfs shows no request in flight");
    let server_pid = s.pid();
    let dd_pid = reader.id();
    let found = w.wait_for(fault, Duration::from_secs(2), |doc| {
        let fs = findings(doc);
        let stopped = fs
            .iter()
            .any(|f| f["class"] == "SERVER_STOPPED" && has_pid(f, server_pid));
        let stuck = busy.iter().any(|&(q, t)| {
            finding_on(&fs, &["NOT_DELIVERED", "STUCK_IN_SERVER"], q, t)
                .is_some_and(|f| has_pid(f, server_pid))
        });
        let waiter = fs
            .iter()
            .any(|f| f["class"] == "WAITERS" && has_pid(f, dd_pid));
        stopped && stuck && waiter
    });
    let elapsed = fault.elapsed();
    // Never `del` a stopped server's device: SIGKILL first (Server's drop), then the reader.
    let dev_id = s.dev_id;
    drop(w);
    drop(s);
    let _ = reader.kill();
    let _ = wait_timeout(&mut reader, Duration::from_secs(10));
    assert_recovered(dev_id, Duration::from_secs(30));
    // Documents are stamped when the watch printed them: within 2 s of the fault.
    let found = found.filter(|(t, _)| t.duration_since(fault) <= Duration::from_secs(2));
    let (t, doc) = found.unwrap_or_else(|| {
        panic!("no document named SERVER_STOPPED pid {server_pid}, the stuck tag of {busy:?} and WAITERS pid {dd_pid} within 2 s ({elapsed:?})")
    });
    println!(
        "found {:?} after the fault: {:?}",
        t.duration_since(fault),
        classes(&findings(&doc))
    );
}

/// The requests debugfs lists in flight in two reads 600 ms apart (at most 5 tries).
fn stable_busy_tags(dev_id: u32) -> Vec<(u64, u64)> {
    let mut last = busy_tags(dev_id);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(600));
        let now = busy_tags(dev_id);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}
