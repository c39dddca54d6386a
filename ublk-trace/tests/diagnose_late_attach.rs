//! `diagnose` started only after the hang (no events seen before it): the snapshots (server
//! tag-state file, blk-mq debugfs, procfs) still name the class, queue, tag and pid.
mod diagnose_common;

use std::time::Duration;

use diagnose_common::*;

#[test]
#[ignore = "needs ublk guest"]
fn late_diagnose_names_the_injected_hang() {
    const TAG: u64 = 1;
    let s = Server::start(&[
        "null",
        "--queues",
        "1",
        "--depth",
        "4",
        "--inject",
        "hang:q=0,tag=1",
    ]);
    let mut fio = fio_reads(&s.bdev(), 4, 0);
    assert!(
        wait_for_stuck_tag(s.dev_id, 0, TAG, Duration::from_secs(30)),
        "q0 t{TAG} never stuck per debugfs: {:?}",
        busy_tags(s.dev_id)
    );
    let (code, doc, took) = diagnose(s.dev_id, &["--for", "0.5", "--stuck-ms", "500"]);
    let pid = s.pid();
    // fio waits for the hung read; killing the server fails it with EIO and fio exits.
    let _ = fio.kill();
    drop(s);
    let _ = wait_timeout(&mut fio, Duration::from_secs(30));
    let fs = findings(&doc);
    assert_eq!(code, Some(1), "findings mean exit 1: {doc}");
    let stuck = finding_on(&fs, &["STUCK_IN_SERVER"], 0, TAG)
        .unwrap_or_else(|| panic!("no STUCK_IN_SERVER q0 t{TAG}: {:?}", classes(&fs)));
    assert!(has_pid(stuck, pid), "server pid {pid} missing: {stuck}");
    assert!(took < Duration::from_secs(10), "diagnose took {took:?}");
}

#[test]
#[ignore = "needs ublk guest"]
fn late_diagnose_names_a_stopped_server_and_its_waiter() {
    let s = Server::start(&["null", "--queues", "1", "--depth", "8"]);
    s.signal(libc::SIGSTOP);
    let mut reader = dd(&s.bdev(), 3, 1, None);
    assert!(
        wait_for_d_state(reader.id(), Duration::from_secs(5)),
        "reader did not block behind the stopped server"
    );
    let busy = busy_tags(s.dev_id);
    let (code, doc, _) = diagnose(s.dev_id, &["--for", "0.5", "--stuck-ms", "500"]);
    let (pid, dd_pid) = (s.pid(), reader.id());
    // SIGKILL (Server's drop) before any del; the reader then fails with EIO and exits.
    drop(s);
    let _ = wait_timeout(&mut reader, Duration::from_secs(10));
    let fs = findings(&doc);
    assert_eq!(code, Some(1), "{doc}");
    assert!(
        fs.iter()
            .any(|f| f["class"] == "SERVER_STOPPED" && has_pid(f, pid)),
        "{:?}",
        classes(&fs)
    );
    assert!(
        fs.iter()
            .any(|f| f["class"] == "WAITERS" && has_pid(f, dd_pid)),
        "{:?}",
        classes(&fs)
    );
    assert!(
        busy.iter()
            .any(|&(q, t)| finding_on(&fs, &["NOT_DELIVERED", "STUCK_IN_SERVER"], q, t).is_some()),
        "no finding on the busy tag(s) {busy:?}: {:?}",
        classes(&fs)
    );
}
