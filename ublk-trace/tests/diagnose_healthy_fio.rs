//! Healthy traffic is not a finding: 30 s of fio on our server, watched the whole time, and a
//! diagnose at the end, report nothing. The watch must have seen the traffic (requests in
//! flight), so an empty result cannot come from looking at nothing.
mod diagnose_common;

use std::process::{Command, Stdio};

use diagnose_common::*;

// KNOWN FAILURE (skipped by `cargo xtask test`, see README "Known problems"): under fio the
// model reports a false STUCK_IN_SERVER from io_uring fdinfo: a tag's user_data repeats for
// every request of that tag, so "the CQE first seen N s ago" spans several deliveries of the
// same tag. The unreaped-CQE age must restart when the tag commits (events or tag-file seq).
#[test]
#[ignore = "needs ublk guest"]
fn known_failure_thirty_seconds_of_fio_give_no_findings() {
    let s = Server::start(&["null", "--queues", "2", "--depth", "64"]);
    // The emulated guest stalls under load: null_blk alone showed completions of 2.27 s in the
    // same guest, and the tests' 500 ms threshold then reads healthy I/O as stuck. 3 s is above
    // every stall measured and still far below a hang.
    let w = HeadlessWatch::start_with(s.dev_id, 500, 3000);
    w.wait_until_attached();
    let fio = Command::new("fio")
        .args([
            "--name=healthy",
            &format!("--filename={}", s.bdev()),
            "--rw=randrw",
            "--bs=4k",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=16",
            "--numjobs=2",
            "--time_based",
            "--runtime=30",
            "--group_reporting",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("spawn fio: {e}"));
    assert!(fio.success(), "fio failed: {fio}");
    let mut docs = Vec::new();
    while let Ok((_, d)) = w.docs.try_recv() {
        docs.push(d);
    }
    assert!(docs.len() >= 20, "only {} documents in 30 s", docs.len());
    let with_findings: Vec<_> = docs
        .iter()
        .filter(|d| findings(d).iter().any(|f| f["class"] != "SLOW"))
        .collect();
    assert!(
        with_findings.is_empty(),
        "findings during healthy fio: {with_findings:?}"
    );
    let saw_traffic = docs.iter().any(|d| {
        d["devices"][0]["queues"].as_array().is_some_and(|qs| {
            qs.iter().any(|q| {
                let c = &q["counts"];
                ["queued", "in_server", "committed", "in_flight"]
                    .iter()
                    .any(|k| c[k].as_u64().unwrap_or(0) > 0)
            })
        })
    });
    assert!(
        saw_traffic,
        "watch never saw a request in flight during fio"
    );
    let (code, doc, _) = diagnose(s.dev_id, &["--for", "1"]);
    assert_eq!(code, Some(0), "diagnose after healthy fio: {doc}");
}
