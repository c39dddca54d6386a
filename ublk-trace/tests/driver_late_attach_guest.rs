//! Guest tests: `diagnose` and `watch` attached only after the fault, to a server that
//! publishes no tag-state file (`--no-tag-state`, as a server that is not ours): the driver's
//! own memory gives every tag a known state and decides what events could not.
//!
//! For each of hang-tag, stopped-server, skip-fetch, error-commit and crash: the class the
//! live watch names (see xtask's scenario table), the driver state read (`driver.live`), and
//! no tag UNKNOWN in a `watch --headless` document.
mod diagnose_common;

use std::time::{Duration, Instant};

use diagnose_common::*;
use serde_json::Value;

/// `ublk-server run null --queues 1 --depth DEPTH --no-tag-state <extra>`: a server whose
/// state the tracer can learn only from the kernel.
fn args(depth: &'static str, extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec!["null", "--queues", "1", "--depth", depth, "--no-tag-state"];
    v.extend_from_slice(extra);
    v
}

/// A `watch --headless` document in which the driver's state is read; panics if none comes
/// within a minute (the reader parses BTF first: seconds under TCG). A tag whose two passes
/// disagree (it moved while read: under fio, often) has no state from that read, so the
/// document is the first within 5 s of the first read that knows every tag of `dev_id`;
/// failing that, the last one (and `assert_no_unknown` says which tags stayed unknown).
fn driver_doc(dev_id: u32) -> Value {
    let w = HeadlessWatch::start(dev_id, 300);
    let first = w.wait_for(Instant::now(), Duration::from_secs(60), |d| {
        d["driver"]["live"] == true
    });
    let (at, mut doc) = first.expect("a watch document with the driver state read");
    let mut reads = 1;
    while unknown_tags(&doc, dev_id) > 0 && at.elapsed() < Duration::from_secs(5) {
        match w.docs.recv_timeout(Duration::from_secs(1)) {
            Ok((_, d)) if d["driver"]["live"] == true => {
                doc = d;
                reads += 1;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    drop(w); // kills the watch
    println!("every tag known after {reads} driver read(s)");
    doc
}

/// UNKNOWN tags of `dev_id` in a watch document.
fn unknown_tags(doc: &Value, dev_id: u32) -> u64 {
    doc["devices"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["dev"] == dev_id))
        .and_then(|d| d["queues"].as_array())
        .map_or(u64::MAX, |qs| {
            qs.iter()
                .map(|q| q["counts"]["unknown"].as_u64().unwrap_or(u64::MAX))
                .fold(0, u64::saturating_add)
        })
}

/// Every tag of every queue of `dev_id` has a known state in `doc`.
fn assert_no_unknown(doc: &Value, dev_id: u32) {
    let devs = doc["devices"].as_array().expect("devices");
    let dev = devs
        .iter()
        .find(|d| d["dev"] == dev_id)
        .unwrap_or_else(|| panic!("dev {dev_id} not in {doc}"));
    let queues = dev["queues"].as_array().expect("queues");
    assert!(!queues.is_empty(), "no queues: {dev}");
    for q in queues {
        assert_eq!(
            q["counts"]["unknown"], 0,
            "UNKNOWN tags on q{}: {q}",
            q["q_id"]
        );
    }
}

/// `diagnose --for 1` now: the JSON document, after checking that the driver state was read.
fn late_diagnose(dev_id: u32) -> Value {
    let (_, doc, took) = diagnose(dev_id, &["--for", "1", "--stuck-ms", "500"]);
    assert_eq!(doc["driver"]["live"], true, "driver state not read: {doc}");
    println!("late diagnose in {took:?}");
    doc
}

fn finding<'a>(doc: &'a Value, class: &str) -> &'a Value {
    doc["findings"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["class"] == class))
        .unwrap_or_else(|| panic!("no {class} in {doc}"))
}

/// The finding lists (q, tag) as data with this state.
fn has_tag(f: &Value, q: u64, tag: u64, state: &str) -> bool {
    f["tags"].as_array().is_some_and(|ts| {
        ts.iter()
            .any(|t| t["q_id"] == q && t["tag"] == tag && t["state"] == state)
    })
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_driver_late_hang_tag_is_stuck_in_server_with_its_request() {
    let s = Server::start(&args("4", &["--inject", "hang:q=0,tag=1"]));
    let mut fio = fio_reads(&s.bdev(), 4, 0);
    assert!(
        wait_for_stuck_tag(s.dev_id, 0, 1, Duration::from_secs(30)),
        "q0 t1 never stuck per debugfs: {:?}",
        busy_tags(s.dev_id)
    );
    let doc = late_diagnose(s.dev_id);
    let watch = driver_doc(s.dev_id);
    let (pid, dev_id) = (s.pid(), s.dev_id);
    let _ = fio.kill();
    drop(s);
    let _ = wait_timeout(&mut fio, Duration::from_secs(30));
    let f = finding(&doc, "STUCK_IN_SERVER");
    assert!(has_tag(f, 0, 1, "IN_SERVER"), "{f}");
    assert!(has_pid(f, pid), "{f}");
    let t = &f["tags"][0];
    assert_eq!(t["op"], "READ", "{f}");
    assert_eq!(t["bytes"], 4096, "{f}");
    let undecided = doc["undecided"].to_string();
    assert!(
        !undecided.contains("STUCK_IN_SERVER"),
        "nothing about the stuck tag is undecided: {undecided}"
    );
    assert_no_unknown(&watch, dev_id);
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_driver_late_stopped_server_names_the_busy_tag() {
    let s = Server::start(&args("8", &[]));
    s.signal(libc::SIGSTOP);
    let mut reader = dd(&s.bdev(), 3, 1, None);
    assert!(
        wait_for_d_state(reader.id(), Duration::from_secs(5)),
        "reader did not block behind the stopped server"
    );
    let doc = late_diagnose(s.dev_id);
    let watch = driver_doc(s.dev_id);
    let (pid, dev_id) = (s.pid(), s.dev_id);
    drop(s);
    let _ = wait_timeout(&mut reader, Duration::from_secs(10));
    let stopped = finding(&doc, "SERVER_STOPPED");
    assert!(has_pid(stopped, pid), "{stopped}");
    let busy = stopped["tags"].as_array().cloned().unwrap_or_default();
    assert!(
        !busy.is_empty(),
        "SERVER_STOPPED lists the tag its reader waits on: {stopped}"
    );
    // The reader's request: queued to the stopped thread (not delivered) or in the server,
    // decided from the driver's flags, not left undecided.
    let state = busy[0]["state"].as_str().unwrap_or("");
    assert!(state == "QUEUED" || state == "IN_SERVER", "{stopped}");
    let class = if state == "QUEUED" {
        "NOT_DELIVERED"
    } else {
        "STUCK_IN_SERVER"
    };
    finding(&doc, class);
    assert_no_unknown(&watch, dev_id);
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_driver_late_skip_fetch_is_no_fetch_on_the_skipped_tags() {
    let s = Server::spawn_unready(&args(
        "8",
        &[
            "--inject",
            "skip-fetch:q=0,tags=2",
            "--start-timeout-ms",
            "120000",
        ],
    ));
    // START_DEV waits for the missing FETCH; give the stack and the driver time to show it.
    std::thread::sleep(Duration::from_secs(2));
    let doc = late_diagnose(s.dev_id);
    let watch = driver_doc(s.dev_id);
    let dev_id = s.dev_id;
    // SIGINT first: the server gives up on START_DEV and deletes the device (repro's rule).
    s.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_secs(2));
    drop(s);
    // `tags=2`: the first two tags of q0 never get a FETCH_REQ.
    let f = finding(&doc, "NO_FETCH");
    assert!(
        has_tag(f, 0, 0, "NOT_FETCHED") && has_tag(f, 0, 1, "NOT_FETCHED"),
        "{f}"
    );
    let tags = f["tags"].as_array().map_or(0, Vec::len);
    assert_eq!(tags, 2, "only tags 0 and 1 lack a FETCH: {f}");
    // No request on them: nothing from an earlier server's leftovers.
    assert!(f["tags"][0]["op"].is_null(), "{f}");
    assert_no_unknown(&watch, dev_id);
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_driver_late_error_commit_is_a_bad_commit_from_io_res() {
    let s = Server::start(&args("8", &["--inject", "error:errno=5"]));
    // dd stops at its first failed read: one tag keeps io->res = -EIO.
    let mut reader = dd(&s.bdev(), 0, 10, None);
    let _ = wait_timeout(&mut reader, Duration::from_secs(30));
    let doc = late_diagnose(s.dev_id);
    let watch = driver_doc(s.dev_id);
    let dev_id = s.dev_id;
    drop(s);
    let f = finding(&doc, "BAD_COMMIT");
    let text = f.to_string();
    assert!(text.contains("-EIO"), "{f}");
    assert!(text.contains("driver's memory"), "{f}");
    assert_no_unknown(&watch, dev_id);
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_driver_late_crash_is_server_dead_with_known_tags() {
    let s = Server::start(&args("8", &["--inject", "crash:after=200"]));
    let mut reader = dd(&s.bdev(), 0, 100_000, None);
    let mut s = s;
    let gone = wait_timeout(&mut s.child, Duration::from_secs(60));
    assert!(gone.is_some(), "the server did not crash after 200 I/Os");
    let _ = wait_timeout(&mut reader, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let doc = late_diagnose(s.dev_id);
    let watch = driver_doc(s.dev_id);
    let dev_id = s.dev_id;
    drop(s);
    finding(&doc, "SERVER_DEAD");
    assert_no_unknown(&watch, dev_id);
}
