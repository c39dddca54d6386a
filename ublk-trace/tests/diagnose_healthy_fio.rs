//! Healthy traffic and idle tags are not findings: a minute of fio on our server, watched from
//! before the device existed or attached in the middle of the traffic, and a minute of an idle
//! depth-128 device, report nothing — live (`watch --headless`) and in a `diagnose` at the end.
//! Each run must have seen what it judges (requests in flight, every tag of the device), so an
//! empty result cannot come from looking at nothing.
mod diagnose_common;

use std::process::Child;
use std::time::{Duration, Instant};

use diagnose_common::*;
use serde_json::Value;

const SECS: u64 = 60;

/// The emulated guest stalls under load: null_blk alone showed completions of 2.27 s in an
/// otherwise idle guest, and whole-guest stalls of 5-10 s (every tag of a queue at once), and a
/// START_DEV of 4 s, when the host ran other guests besides. The fault tests' 500 ms would read
/// healthy I/O as stuck; 5 s is above the stalls of a guest that has the host to itself, and a
/// model error (an age spanning several requests) still grows far past it within the minute.
const STUCK_MS: &str = "5000";

/// `watch --headless` with the stuck, waiter and control-command thresholds at [`STUCK_MS`].
fn watch(dev_id: u32) -> HeadlessWatch {
    HeadlessWatch::start_args(
        dev_id,
        500,
        &[
            "--stuck-ms",
            STUCK_MS,
            "--waiter-ms",
            STUCK_MS,
            "--ctrl-ms",
            STUCK_MS,
        ],
    )
}

/// fio until [`stop_fio`]: time-based for far longer than any test, so a slow attach never
/// shortens what is judged.
fn fio_for_long(bdev: &str) -> Child {
    fio_randrw(bdev, 3600)
}

/// SIGINT fio (it ends its jobs, prints its JSON report and exits 128) and demand that every job
/// did I/O without an error.
fn stop_fio(mut fio: Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(fio.id() as i32, libc::SIGINT) };
    let mut out = String::new();
    if let Some(mut o) = fio.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut out);
    }
    wait_timeout(&mut fio, Duration::from_secs(120)).expect("fio ignored SIGINT");
    assert_fio_report_ok(&out, "after SIGINT");
}

/// One line per document with findings: when, events lost so far, the classes (for a failure
/// report: a stall of the whole guest shows as every tag at once, a model error as a few).
fn print_timeline(docs: &[Value]) {
    let t0 = docs.first().and_then(|d| d["ts_ns"].as_u64()).unwrap_or(0);
    for d in docs {
        let fs = findings(d);
        if fs.is_empty() {
            continue;
        }
        let mut by_class = std::collections::BTreeMap::<String, u32>::new();
        for f in &fs {
            *by_class.entry(f["class"].to_string()).or_default() += 1;
        }
        let t = d["ts_ns"].as_u64().unwrap_or(0).saturating_sub(t0) as f64 / 1e9;
        println!(
            "  t={t:6.2}s dropped={} source={} findings={by_class:?}",
            d["dropped_events"], d["source"]
        );
    }
}

/// Findings of the documents, except SLOW (informational: emulation stalls are slow I/O).
fn assert_no_findings(docs: &[Value], what: &str) {
    print_timeline(docs);
    let bad = problem_findings(docs);
    let shown = &bad[..bad.len().min(12)];
    assert!(
        bad.is_empty(),
        "{} findings during {what}, the first: {shown:#?}",
        bad.len()
    );
}

/// The device's per-queue state counts summed over the documents.
fn count_sum(docs: &[Value], dev_id: u32, keys: &[&str]) -> u64 {
    docs.iter()
        .flat_map(|d| d["devices"].as_array().cloned().unwrap_or_default())
        .filter(|d| d["dev"].as_u64() == Some(u64::from(dev_id)))
        .flat_map(|d| d["queues"].as_array().cloned().unwrap_or_default())
        .map(|q| {
            keys.iter()
                .map(|k| q["counts"][k].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum()
}

fn assert_saw_traffic(docs: &[Value], dev_id: u32) {
    let busy = count_sum(
        docs,
        dev_id,
        &["queued", "in_server", "committed", "in_flight"],
    );
    assert!(
        busy > 0,
        "watch never saw a request in flight on dev {dev_id}"
    );
}

/// Watch `SECS` of the fio already running (the documents received before are dropped: they
/// cover the attach), stop fio, and judge: no findings, traffic seen, diagnose clean.
fn judge_fio_run(w: &HeadlessWatch, dev_id: u32, fio: Child, what: &str) {
    let _ = drain(w);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(SECS));
    let docs = drain(w);
    stop_fio(fio);
    println!(
        "{what}: {} watch documents over {:?}",
        docs.len(),
        t0.elapsed()
    );
    assert!(docs.len() >= 20, "only {} documents during fio", docs.len());
    assert_no_findings(&docs, what);
    assert_saw_traffic(&docs, dev_id);
    let (code, doc, _) = diagnose(dev_id, &["--for", "1", "--stuck-ms", STUCK_MS]);
    assert_eq!(code, Some(0), "diagnose after {what}: {doc}");
}

#[test]
#[ignore = "needs ublk guest"]
fn a_minute_of_fio_watched_from_before_the_device_existed_gives_no_findings() {
    // A fixed id no other test uses, so the watch can name the device before it exists.
    let id = 7;
    let w = watch(id);
    w.wait_until_attached();
    // The device's whole life is in view, START_DEV included.
    let _ = drain(&w);
    let s = Server::start(&["null", "--queues", "2", "--depth", "64", "--id", "7"]);
    assert_eq!(s.dev_id, id);
    let setup_docs = drain(&w);
    assert_no_findings(&setup_docs, "the device's set-up");
    let fio = fio_for_long(&s.bdev());
    judge_fio_run(&w, id, fio, "fio watched from before the device existed");
}

#[test]
#[ignore = "needs ublk guest"]
fn a_minute_of_fio_watched_from_mid_traffic_gives_no_findings() {
    let s = Server::start(&["null", "--queues", "2", "--depth", "64"]);
    let fio = fio_for_long(&s.bdev());
    // Attach while requests are in flight: the setup FETCHes were never seen.
    std::thread::sleep(Duration::from_secs(5));
    let w = watch(s.dev_id);
    w.wait_until_attached();
    judge_fio_run(&w, s.dev_id, fio, "fio watched from mid-traffic");
}

#[test]
#[ignore = "needs ublk guest"]
fn an_idle_depth_128_device_for_a_minute_gives_no_findings() {
    let s = Server::start(&["null", "--queues", "2", "--depth", "128"]);
    let w = watch(s.dev_id);
    w.wait_until_attached();
    // Use some tags first, so idle tags have a history (committed, then waiting again).
    let mut reader = dd(&s.bdev(), 0, 64, None);
    let st = wait_timeout(&mut reader, Duration::from_secs(60)).expect("dd did not end");
    assert!(st.success(), "dd failed: {st}");
    let _ = drain(&w);
    std::thread::sleep(Duration::from_secs(SECS));
    let docs = drain(&w);
    assert!(docs.len() >= 20, "only {} documents while idle", docs.len());
    let bad: Vec<String> = docs
        .iter()
        .flat_map(findings)
        .map(|f| format!("{} {}: {}", f["class"], f["summary"], f["evidence"]))
        .collect();
    assert!(bad.is_empty(), "findings on an idle device: {bad:#?}");
    // The watch saw the device's 256 tags waiting (all FETCHed, nothing in flight).
    let last = docs.last().cloned().unwrap_or_default();
    let waiting = count_sum(std::slice::from_ref(&last), s.dev_id, &["waiting"]);
    assert_eq!(
        waiting, 256,
        "tags seen waiting in the last document: {last}"
    );
    let (code, doc, _) = diagnose(s.dev_id, &["--for", "1"]);
    assert_eq!(code, Some(0), "diagnose of an idle device: {doc}");
}
