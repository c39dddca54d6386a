//! Our server with an injected hang of one tag, watched from before the fault: within 2 s the
//! headless watch names STUCK_IN_SERVER on exactly that queue and tag, with the server's pid,
//! and no other tag of the device as stuck.
mod diagnose_common;

use std::time::{Duration, Instant};

use diagnose_common::*;

/// Queue 1 when the guest has 2 CPUs (so a swapped queue/tag would show), else queue 0.
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
    w.wait_for(Instant::now(), Duration::from_secs(60), |_| true)
        .unwrap_or_else(|| panic!("no output from watch"));
    // Sequential reads walk the tags; the one landing on the hung tag never completes.
    let mut reader = dd(&s.bdev(), 0, 256, Some(q));
    assert!(
        wait_for_d_state(reader.id(), Duration::from_secs(20)),
        "reader did not hang on the injected tag: state {}",
        proc_state(reader.id())
    );
    let fault = Instant::now();
    let busy = busy_tags(s.dev_id);
    assert_eq!(busy, vec![(q as u64, TAG)], "debugfs ground truth");
    let pid = s.pid();
    let found = w.wait_for(fault, Duration::from_secs(2), |doc| {
        let fs = findings(doc);
        finding_on(&fs, &["STUCK_IN_SERVER"], q as u64, TAG).is_some_and(|f| has_pid(f, pid))
    });
    let _ = reader.kill();
    drop(w);
    drop(s);
    let _ = wait_timeout(&mut reader, Duration::from_secs(10));
    let (t, doc) =
        found.unwrap_or_else(|| panic!("no STUCK_IN_SERVER q{q} t{TAG} pid {pid} within 2 s"));
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
