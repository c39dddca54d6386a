//! User recovery, seen by `diagnose`: a `--recovery` server SIGKILLed leaves its device
//! QUIESCED with I/O held → RECOVERY_PENDING naming the gone server's pid and the way out;
//! `ublk-server recover` (which retries until the old char device is released) serves the device
//! again, the held read completes, and the finding clears.
mod diagnose_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use diagnose_common::*;

#[test]
#[ignore = "needs ublk guest"]
fn a_killed_recoverable_server_is_recovery_pending_until_recover() {
    let mut s = Server::start(&["null", "--recovery"]);
    let id = s.dev_id;
    let old_pid = s.pid();
    s.signal(libc::SIGKILL);
    let st = wait_timeout(&mut s.child, Duration::from_secs(30)).expect("server did not die");
    assert!(!st.success(), "SIGKILLed server exited cleanly: {st}");
    // A read while no server runs is held for the next one (it must not fail).
    let mut reader = dd(&s.bdev(), 0, 1, None);

    let (code, doc, _) = diagnose(id, &["--for", "1"]);
    let fs = findings(&doc);
    assert_eq!(
        code,
        Some(1),
        "diagnose of a dead recoverable server: {doc}"
    );
    let f = fs
        .iter()
        .find(|f| f["class"] == "RECOVERY_PENDING")
        .unwrap_or_else(|| panic!("no RECOVERY_PENDING: {:?}", classes(&fs)));
    assert!(
        has_pid(f, old_pid),
        "the gone server {old_pid} not named: {f}"
    );
    assert!(
        !fs.iter()
            .any(|f| f["class"] == "SERVER_DEAD" || f["class"] == "STUCK_IN_SERVER"),
        "a recoverable device is not dead, and no server holds its requests: {:?}",
        classes(&fs)
    );
    let text = f.to_string();
    assert!(
        text.contains("recover"),
        "the finding names no way out: {f}"
    );

    let mut rec = Command::new(bin("ublk-server"))
        .args(["recover", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn ublk-server recover: {e}"));
    let rst = wait_timeout(&mut reader, Duration::from_secs(60))
        .expect("the held read never completed after recover");
    assert!(rst.success(), "the held read failed across recovery: {rst}");

    let (code, doc, _) = diagnose(id, &["--for", "1"]);
    assert_eq!(code, Some(0), "diagnose after recover: {doc}");

    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    let st = wait_timeout(&mut rec, Duration::from_secs(60)).expect("recover did not exit");
    assert!(st.success(), "recover exit {st}");
    drop(s);
    assert_recovered(id, Duration::from_secs(30));
}
