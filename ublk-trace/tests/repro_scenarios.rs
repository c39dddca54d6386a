//! One guest test per bug-reproduction scenario of `cargo xtask repro` (docs/scenarios.md).
//!
//! The scenarios are not copied here: `xtask/src/scenarios.rs` is compiled into this test too
//! (`#[path]`), so each test starts `ublk-server run <scenario.server>` and runs
//! `<scenario.workload>` / `<scenario.action>` exactly as the repro does, and expects the
//! scenario's finding class. What a test adds is the ground truth the finding is checked
//! against (blk-mq debugfs, the server's own tag-state file, /proc), the queue, tag and pid
//! the finding must name, the time limit, and the guest's recovery after the teardown.
//! The host test at the end fails when a scenario has no guest test here.
mod diagnose_common;
#[allow(dead_code)]
#[path = "../../xtask/src/scenarios.rs"]
mod scenarios;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use diagnose_common::*;
use scenarios::{SCENARIOS, Scenario};
use serde_json::Value;

/// Watch interval and the stuck/waiter threshold of the other watch tests (500 ms: below the
/// 2 s allowed from fault to finding, with room for TCG).
const INTERVAL_MS: u64 = 200;
/// From the fault to the finding, counted as the other watch tests count it: from the moment
/// the test has confirmed the fault (a hang is confirmed 600 ms after it began). Each test
/// prints the time from the fault itself. Counting from the estimated fault instead failed
/// under a loaded host (a watch that printed nothing for 1.4 s).
const FIND_WITHIN: Duration = Duration::from_secs(2);
/// From the teardown to a clean guest.
const RECOVER_WITHIN: Duration = Duration::from_secs(30);

/// Prints how long the test took when it ends (pass or fail).
struct Took(&'static str, Instant);

impl Drop for Took {
    fn drop(&mut self) {
        println!("{} took {:?}", self.0, self.1.elapsed());
    }
}

/// The scenario named `name` of the shared table, and a timer for the test.
fn scenario(name: &str) -> (&'static Scenario, Took) {
    let s = SCENARIOS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name:?} in xtask/src/scenarios.rs"));
    (s, Took(s.name, Instant::now()))
}

/// `key=` of the scenario's `--inject` spec (`hang:q=0,tag=1` -> q = 0).
fn inject_arg(s: &Scenario, key: &str) -> u64 {
    s.server
        .split_whitespace()
        .skip_while(|a| *a != "--inject")
        .nth(1)
        .and_then(|spec| spec.split_once(':'))
        .and_then(|(_, args)| {
            args.split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}: no {key}= in {:?}", s.name, s.server))
}

/// `--depth N` of the scenario's server.
fn depth(s: &Scenario) -> u64 {
    let a: Vec<&str> = s.server.split_whitespace().collect();
    a.windows(2)
        .find(|w| w[0] == "--depth")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or_else(|| panic!("{}: no --depth in {:?}", s.name, s.server))
}

/// The scenario's server, started as `cargo xtask repro` starts it.
fn start_server(s: &Scenario) -> Server {
    let args: Vec<&str> = s.server.split_whitespace().collect();
    Server::start(&args)
}

/// The scenario's workload on this test's device (the table names /dev/ublkb0).
fn start_workload(s: &Scenario, srv: &Server) -> ShellJob {
    ShellJob::start(&s.workload.replace("/dev/ublkb0", &srv.bdev()), &[])
}

/// The scenario's action (`$SRV` is the server's pid), run to its end.
fn run_action(s: &Scenario, srv: &Server) {
    let st = ShellJob::run(
        s.action,
        &[("SRV", srv.pid().to_string())],
        Duration::from_secs(10),
    );
    assert!(st.success(), "{}: action {:?}: {st}", s.name, s.action);
}

/// The findings of `class` in a watch document.
fn of_class(doc: &Value, class: &str) -> Vec<Value> {
    findings(doc)
        .into_iter()
        .filter(|f| f["class"] == class)
        .collect()
}

/// (queue, tag) of queue `q`'s requests that blk-mq debugfs lists in flight twice, 600 ms
/// apart, within a minute; with `no_progress` only while the disk completed nothing in
/// between. Empty when none held.
fn held_for_600ms(dev_id: u32, q: u64, no_progress: bool) -> Vec<(u64, u64)> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        let (done, busy) = (completed_ios(dev_id), busy_tags(dev_id));
        std::thread::sleep(Duration::from_millis(600));
        if no_progress && (done.is_none() || completed_ios(dev_id) != done) {
            continue;
        }
        let again = busy_tags(dev_id);
        let held: Vec<(u64, u64)> = busy
            .into_iter()
            .filter(|b| b.0 == q && again.contains(b))
            .collect();
        if !held.is_empty() {
            return held;
        }
    }
    Vec::new()
}

/// Tear down (watch, workload, server: SIGKILL, then DEL) and check the guest is clean.
fn teardown(dev_id: u32, w: Option<HeadlessWatch>, wl: Option<ShellJob>, srv: Server) {
    drop(w);
    drop(wl);
    drop(srv);
    assert_recovered(dev_id, RECOVER_WITHIN);
}

/// Classes whose presence depends only on how long something lasted, which a late look sees
/// as well as the live one: never a false class when only the late one names them.
const TIME_ONLY: &[&str] = &["WAITERS", "SLOW"];

/// The class names of a watch or diagnose document.
fn class_names(doc: &Value) -> BTreeSet<String> {
    findings(doc)
        .iter()
        .filter_map(|f| f["class"].as_str().map(str::to_string))
        .collect()
}

/// Late attach: a one-shot `diagnose`, started long after the fault while the watch that saw
/// it from the start keeps running. It must name one of the scenario's `late` classes (none
/// when the fault leaves no trace), and never a class the live watch did not report over the
/// same time. Run before the teardown, judged after it.
fn late_attach(
    s: &Scenario,
    dev_id: u32,
    w: &HeadlessWatch,
    found: &Option<(Instant, Value)>,
) -> Result<(), String> {
    if found.is_none() {
        return Ok(()); // the live watch failed; `report` says so
    }
    let (_, doc, took) = diagnose(
        dev_id,
        &["--for", "2", "--stuck-ms", "500", "--waiter-ms", "500"],
    );
    let mut live: BTreeSet<String> = found.iter().flat_map(|(_, d)| class_names(d)).collect();
    while let Ok((_, d)) = w.docs.try_recv() {
        live.extend(class_names(&d));
    }
    let late = class_names(&doc);
    let undecided: Vec<&str> = doc["undecided"]
        .as_array()
        .map(|u| u.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "{}: late diagnose ({took:?}) {late:?}, undecided {undecided:?}; live {live:?}",
        s.name
    );
    let false_classes: Vec<&String> = late
        .iter()
        .filter(|c| {
            !live.contains(*c) && !TIME_ONLY.contains(&c.as_str()) && !s.also.contains(&c.as_str())
        })
        .collect();
    if !false_classes.is_empty() {
        return Err(format!(
            "{}: late attach named {false_classes:?}, which the live watch never did ({live:?})",
            s.name
        ));
    }
    let named = s.late.iter().any(|c| late.contains(*c));
    if !named && !s.late.is_empty() {
        return Err(format!(
            "{}: late attach named none of {:?} (got {late:?}, undecided {undecided:?})",
            s.name, s.late
        ));
    }
    Ok(())
}

/// The live finding (its time from the fault), then the late attach's verdict.
fn report(
    name: &str,
    t0: Instant,
    found: Option<(Instant, Value)>,
    class: &str,
    late: Result<(), String>,
) -> Value {
    let (t, doc) =
        found.unwrap_or_else(|| panic!("{name}: no matching {class} within {FIND_WITHIN:?}"));
    if let Err(e) = late {
        panic!("{e}");
    }
    println!(
        "{name}: {class} {:?} after the fault: {:?}",
        t.duration_since(t0),
        classes(&findings(&doc))
    );
    doc
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_hang_tag_gives_stuck_in_server() {
    let (s, _took) = scenario("hang-tag");
    let (q, tag) = (inject_arg(s, "q"), inject_arg(s, "tag"));
    let srv = start_server(s);
    let w = HeadlessWatch::start(srv.dev_id, INTERVAL_MS);
    w.wait_until_attached();
    let wl = start_workload(s, &srv);
    assert!(
        wait_for_stuck_tag(srv.dev_id, q, tag, Duration::from_secs(60)),
        "q{q} t{tag} never stuck per debugfs: {:?}",
        busy_tags(srv.dev_id)
    );
    // The hang began at least the 600 ms of the check ago.
    let fault = Instant::now() - Duration::from_millis(600);
    let (pid, qtid) = (srv.pid(), srv.thread_tid(&format!("ublk-q{q}")));
    let found = w.wait_for(fault, FIND_WITHIN, |doc| {
        let fs = findings(doc);
        finding_on(&fs, &[s.expect], q, tag).is_some_and(|f| has_pid(f, pid))
    });
    let id = srv.dev_id;
    let late = late_attach(s, id, &w, &found);
    teardown(id, Some(w), Some(wl), srv);
    let doc = report(s.name, fault, found, s.expect, late);
    let fs = findings(&doc);
    let f = finding_on(&fs, &[s.expect], q, tag).expect("matched above");
    if let Some(tid) = qtid {
        assert!(has_pid(f, tid), "queue thread {tid} missing: {f}");
    }
    let others: Vec<_> = of_class(&doc, s.expect)
        .into_iter()
        .filter(|f| f["queue"].as_u64() != Some(q) || f["tag"].as_u64() != Some(tag))
        .collect();
    assert!(others.is_empty(), "other tags called stuck: {others:?}");
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_stopped_server_gives_server_stopped() {
    let (s, _took) = scenario("stopped-server");
    let srv = start_server(s);
    let w = HeadlessWatch::start(srv.dev_id, INTERVAL_MS);
    w.wait_until_attached();
    let wl = start_workload(s, &srv);
    assert!(
        wait_for_ios(srv.dev_id, 20, Duration::from_secs(60)),
        "the workload did no I/O"
    );
    run_action(s, &srv);
    let fault = Instant::now();
    // Ground truth: the blocked reader(s) and the request(s) blk-mq holds in flight.
    let t0 = Instant::now();
    let mut blocked = Vec::new();
    while blocked.is_empty() && t0.elapsed() < FIND_WITHIN {
        blocked = d_state_tasks();
        std::thread::sleep(Duration::from_millis(20));
    }
    let busy = busy_tags(srv.dev_id);
    let pid = srv.pid();
    let found = w.wait_for(fault, FIND_WITHIN, |doc| {
        let fs = findings(doc);
        let stopped = of_class(doc, s.expect).iter().any(|f| has_pid(f, pid));
        let stuck = busy.iter().any(|&(q, t)| {
            finding_on(&fs, &["NOT_DELIVERED", "STUCK_IN_SERVER"], q, t)
                .is_some_and(|f| has_pid(f, pid))
        });
        let waiter = of_class(doc, "WAITERS")
            .iter()
            .any(|f| blocked.iter().any(|b| has_pid(f, b.pid)));
        stopped && stuck && waiter
    });
    // SIGKILL (never DEL a stopped server's device first), then DEL.
    let id = srv.dev_id;
    let late = late_attach(s, id, &w, &found);
    teardown(id, Some(w), Some(wl), srv);
    assert!(!blocked.is_empty(), "no reader blocked in D after the stop");
    assert!(!busy.is_empty(), "debugfs shows no request in flight");
    report(s.name, fault, found, s.expect, late);
    println!("blocked {blocked:?}, busy {busy:?}");
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_crash_gives_server_dead() {
    let (s, _took) = scenario("crash");
    let mut srv = start_server(s);
    let w = HeadlessWatch::start(srv.dev_id, INTERVAL_MS);
    w.wait_until_attached();
    let wl = start_workload(s, &srv);
    let pid = srv.pid();
    let st = wait_timeout(&mut srv.child, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the server did not crash within 120 s"));
    let fault = Instant::now();
    assert!(!st.success(), "the server exited cleanly: {st}");
    let found = w.wait_for(fault, FIND_WITHIN, |doc| {
        of_class(doc, s.expect).iter().any(|f| has_pid(f, pid))
    });
    let id = srv.dev_id;
    // The block disk goes away with the server; the char device stays until DEL.
    let char_dev_stayed = std::path::Path::new(&format!("/dev/ublkc{id}")).exists();
    let late = late_attach(s, id, &w, &found);
    teardown(id, Some(w), Some(wl), srv);
    let doc = report(s.name, fault, found, s.expect, late);
    println!("{}", of_class(&doc, s.expect)[0]);
    assert!(char_dev_stayed, "/dev/ublkc{id} vanished before DEL");
}

/// error-commit and zero-commit: BAD_COMMIT on a tag the server's own tag-state file says it
/// committed `bad` (its published result), with the server's pid and its evidence naming
/// `what` (the result).
fn bad_commit_scenario(name: &str, bad: fn(i32) -> bool, what: &str) {
    let (s, _took) = scenario(name);
    let srv = start_server(s);
    let w = HeadlessWatch::start(srv.dev_id, INTERVAL_MS);
    w.wait_until_attached();
    let wl = start_workload(s, &srv);
    let dir = ublk_trace::snapshot::tagfile::default_dir();
    let bad_tags = || -> BTreeSet<(u64, u64)> {
        let Ok(Some(tf)) = ublk_trace::snapshot::tagfile::find(dir, srv.dev_id) else {
            return BTreeSet::new();
        };
        tf.tags
            .iter()
            .filter(|t| t.committed_ns > 0 && bad(t.result))
            .map(|t| (u64::from(t.q_id), u64::from(t.tag)))
            .collect()
    };
    let t0 = Instant::now();
    let mut truth = BTreeSet::new();
    while truth.is_empty() && t0.elapsed() < Duration::from_secs(60) {
        truth = bad_tags();
        std::thread::sleep(Duration::from_millis(50));
    }
    let fault = Instant::now();
    assert!(
        !truth.is_empty(),
        "{name}: the server never published a bad commit"
    );
    let pid = srv.pid();
    let found = w.wait_for(fault, FIND_WITHIN, |doc| {
        let fs = findings(doc);
        truth.iter().any(|&(q, t)| {
            finding_on(&fs, &[s.expect], q, t)
                .is_some_and(|f| has_pid(f, pid) && f["evidence"].to_string().contains(what))
        })
    });
    let id = srv.dev_id;
    let late = late_attach(s, id, &w, &found);
    teardown(id, Some(w), Some(wl), srv);
    let doc = report(name, fault, found, s.expect, late);
    println!("bad commits per the tag file: {truth:?}");
    for f in of_class(&doc, s.expect) {
        let at = (
            f["queue"].as_u64().unwrap_or(u64::MAX),
            f["tag"].as_u64().unwrap_or(u64::MAX),
        );
        println!("{f}");
        assert!(
            at.1 < depth(s),
            "{name}: {} on q{} t{} outside the queue depth",
            s.expect,
            at.0,
            at.1
        );
    }
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_error_commit_gives_bad_commit() {
    bad_commit_scenario("error-commit", |r| r < 0, "EIO");
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_zero_commit_gives_bad_commit() {
    bad_commit_scenario("zero-commit", |r| r == 0, "result 0");
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_slow_gives_slow() {
    let (s, _took) = scenario("slow");
    let srv = start_server(s);
    let w = HeadlessWatch::start(srv.dev_id, INTERVAL_MS);
    w.wait_until_attached();
    let wl = start_workload(s, &srv);
    // Ground truth: the tags blk-mq has in flight; each request stays 400 ms, far longer
    // than the 50 ms poll and the watch interval.
    let mut seen: BTreeSet<(u64, u64)> = BTreeSet::new();
    let t0 = Instant::now();
    while seen.is_empty() && t0.elapsed() < Duration::from_secs(60) {
        seen.extend(busy_tags(srv.dev_id));
        std::thread::sleep(Duration::from_millis(50));
    }
    let fault = Instant::now();
    assert!(!seen.is_empty(), "no request ever in flight");
    let pid = srv.pid();
    let qtid = srv.thread_tid("ublk-q0");
    let found = w.wait_for(fault, FIND_WITHIN, |doc| {
        seen.extend(busy_tags(srv.dev_id));
        let fs = findings(doc);
        seen.iter().any(|&(q, t)| {
            finding_on(&fs, &[s.expect], q, t)
                .is_some_and(|f| has_pid(f, pid) && qtid.is_none_or(|tid| has_pid(f, tid)))
        })
    });
    let id = srv.dev_id;
    let late = late_attach(s, id, &w, &found);
    teardown(id, Some(w), Some(wl), srv);
    let doc = report(s.name, fault, found, s.expect, late);
    println!("in flight per debugfs: {seen:?}");
    // Slow is all it is: nothing stuck, no bad commit.
    let problems: Vec<_> = findings(&doc)
        .into_iter()
        .filter(|f| f["class"] != s.expect)
        .collect();
    assert!(
        problems.is_empty(),
        "a slow server called more: {problems:?}"
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_stall_queue_gives_not_delivered() {
    let (s, _took) = scenario("stall-queue");
    let q = inject_arg(s, "q");
    let srv = start_server(s);
    let w = HeadlessWatch::start(srv.dev_id, INTERVAL_MS);
    w.wait_until_attached();
    let wl = start_workload(s, &srv);
    // Ground truth: requests of the stalled queue that blk-mq keeps in flight for 600 ms.
    let stuck = held_for_600ms(srv.dev_id, q, false);
    let fault = Instant::now() - Duration::from_millis(600);
    assert!(!stuck.is_empty(), "no request of q{q} stuck per debugfs");
    let pid = srv.pid();
    let qtid = srv.thread_tid(&format!("ublk-q{q}"));
    let found = w.wait_for(fault, FIND_WITHIN, |doc| {
        let fs = findings(doc);
        stuck.iter().any(|&(q, t)| {
            finding_on(&fs, &[s.expect], q, t)
                .is_some_and(|f| has_pid(f, pid) && qtid.is_none_or(|tid| has_pid(f, tid)))
        })
    });
    let id = srv.dev_id;
    let late = late_attach(s, id, &w, &found);
    teardown(id, Some(w), Some(wl), srv);
    let doc = report(s.name, fault, found, s.expect, late);
    println!("stuck per debugfs: {stuck:?}, queue thread {qtid:?}");
    for f in of_class(&doc, s.expect) {
        println!("{f}");
    }
    // The thread answered everything it had received before it stalled: nothing is stuck
    // in the server, the requests wait for a delivery that never runs.
    let in_server = of_class(&doc, "STUCK_IN_SERVER");
    assert!(in_server.is_empty(), "stuck in the server: {in_server:?}");
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_skip_fetch_gives_no_fetch() {
    let (s, _took) = scenario("skip-fetch");
    let (q, n) = (inject_arg(s, "q"), inject_arg(s, "tags"));
    // START_DEV never completes: there is no ready line and no watch before the device.
    let args: Vec<&str> = s.server.split_whitespace().collect();
    let srv = Server::spawn_unready(&args);
    let fault = Instant::now();
    let wl = start_workload(s, &srv);
    // The tracer attaches late (the device did not exist before): `diagnose`, as the repro.
    let (code, doc, took) = diagnose(srv.dev_id, &["--for", "0.5", "--stuck-ms", "500"]);
    let found_after = fault.elapsed();
    let pid = srv.pid();
    let id = srv.dev_id;
    teardown(id, None, Some(wl), srv);
    let fs = of_class(&doc, s.expect);
    println!(
        "{}: {:?} after the server started",
        s.name,
        classes(&findings(&doc))
    );
    assert_eq!(code, Some(1), "findings mean exit 1: {doc}");
    let f = fs
        .iter()
        .find(|f| f["queue"].as_u64() == Some(q))
        .unwrap_or_else(|| panic!("no {} on q{q}: {:?}", s.expect, classes(&findings(&doc))));
    assert!(has_pid(f, pid), "server pid {pid} missing: {f}");
    let want: Vec<String> = (0..n).map(|t| t.to_string()).collect();
    let line = format!(
        "q{q}: {n} of {} tags never had a FETCH_REQ accepted: {}",
        depth(s),
        want.join(", ")
    );
    assert!(
        f["evidence"].to_string().contains(&line),
        "evidence lacks {line:?}: {f}"
    );
    // START_DEV is pending because of the missing FETCH_REQs, not a partition scan.
    for c in of_class(&doc, "CTRL_PENDING") {
        assert!(
            c["hint"].to_string().contains("FETCH_REQ"),
            "misleading hint: {c}"
        );
    }
    assert!(took < Duration::from_secs(10), "diagnose took {took:?}");
    println!("found {found_after:?} after the server started (diagnose {took:?})");
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_batch_no_rearm_gives_no_fetch() {
    let (s, _took) = scenario("batch-no-rearm");
    if !kernel_has("BATCH_IO") {
        skip(
            "repro_batch_no_rearm_gives_no_fetch",
            "this kernel has no UBLK_F_BATCH_IO (7.0+)",
        );
        return;
    }
    let q = inject_arg(s, "q");
    let srv = start_server(s);
    let w = HeadlessWatch::start(srv.dev_id, INTERVAL_MS);
    w.wait_until_attached();
    let wl = start_workload(s, &srv);
    // Ground truth: once the fetch that dispatched has used up its buffer (a few thousand
    // requests) the disk completes nothing more while requests of the queue stay in flight
    // per debugfs (under fio every tag is busy at any moment: busy alone proves nothing).
    let stuck = held_for_600ms(srv.dev_id, q, true);
    let fault = Instant::now() - Duration::from_millis(600);
    assert!(!stuck.is_empty(), "no request of q{q} stuck per debugfs");
    let pid = srv.pid();
    let found = w.wait_for(fault, FIND_WITHIN, |doc| {
        of_class(doc, s.expect).iter().any(|f| {
            f["queue"].as_u64() == Some(q)
                && stuck.iter().any(|&(_, t)| f["tag"].as_u64() == Some(t))
                && has_pid(f, pid)
        })
    });
    let id = srv.dev_id;
    let late = late_attach(s, id, &w, &found);
    teardown(id, Some(w), Some(wl), srv);
    let doc = report(s.name, fault, found, s.expect, late);
    println!("stuck per debugfs: {stuck:?}");
    let fs = of_class(&doc, s.expect);
    let f = fs
        .iter()
        .find(|f| f["queue"].as_u64() == Some(q))
        .unwrap_or_else(|| panic!("no {} on q{q}", s.expect));
    println!("{f}");
    let ev = f["evidence"].to_string();
    assert!(
        ev.contains("FETCH_IO_CMDS") && ev.contains("event FIFO") && ev.contains("no active"),
        "{f}"
    );
    // Every stuck tag is named as waiting for the fetch, and none as undelivered.
    let named: Vec<u64> = f["evidence"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|l| {
            l.split_once("never delivered")?
                .1
                .split_once("tags ")
                .map(|x| x.1)
        })
        .map(|l| l.split(", ").filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    for (_, t) in &stuck {
        assert!(named.contains(t), "tag {t} not among {named:?}: {f}");
    }
    let undelivered = of_class(&doc, "NOT_DELIVERED");
    assert!(
        undelivered.is_empty(),
        "no fetch is the cause: {undelivered:?}"
    );
}

/// Host check: every scenario of the shared table has its guest test here, named
/// `repro_<scenario>_gives_<class>` and marked for the guest, so a new scenario (or a changed
/// expected class) cannot go untested.
#[test]
fn every_scenario_has_a_guest_test() {
    let src = include_str!("repro_scenarios.rs");
    for s in SCENARIOS {
        let name = format!(
            "fn repro_{}_gives_{}()",
            s.name.replace('-', "_"),
            s.expect.to_lowercase()
        );
        let at = src
            .find(&name)
            .unwrap_or_else(|| panic!("scenario {} has no guest test `{name}`", s.name));
        let head = &src[..at];
        let attrs = &head[head.rfind("\n\n").unwrap_or(0)..];
        assert!(
            attrs.contains("#[ignore = \"needs ublk guest\"]"),
            "`{name}` is not a guest test"
        );
        let body = &src[at..];
        let body = &body[..body.find("\n}\n").unwrap_or(body.len())];
        assert!(
            body.contains(&format!("(\"{}\"", s.name)),
            "`{name}` does not run scenario {:?}",
            s.name
        );
    }
}

// ---- Commit and ring fault scenarios (wrong-tag, double-commit, wrong-thread, no-submit,
// no-reap, start-gate, zero-commit-write). Detailed per-kind checks (calling/owner tid,
// fdinfo lines, kernels) are in diagnose_injected_faults.rs; here each scenario of the table
// runs as `cargo xtask repro` runs it and must give its class on q0 with the server's pid.

/// Start the scenario, watch it, and wait (20 s) for its class on queue 0 with the server's
/// pid, plus every class of `also` on the same tag; then tear down and check the guest.
fn fault_scenario(name: &str, also: &[&str]) {
    let (s, _took) = scenario(name);
    let srv = start_server(s);
    let w = HeadlessWatch::start(srv.dev_id, INTERVAL_MS);
    w.wait_until_attached();
    let wl = start_workload(s, &srv);
    let t0 = Instant::now();
    let pid = srv.pid();
    let found = w.wait_for(t0, Duration::from_secs(20), |doc| {
        let fs = findings(doc);
        fs.iter().any(|f| {
            f["class"] == s.expect
                && f["queue"].as_u64() == Some(0)
                && has_pid(f, pid)
                && also.iter().all(|c| {
                    f["tag"]
                        .as_u64()
                        .is_some_and(|t| finding_on(&fs, &[c], 0, t).is_some())
                        || fs.iter().any(|g| g["class"] == *c && has_pid(g, pid))
                })
        })
    });
    let id = srv.dev_id;
    let late = late_attach(s, id, &w, &found);
    teardown(id, Some(w), Some(wl), srv);
    report(s.name, t0, found, s.expect, late);
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_wrong_tag_gives_cmd_rejected() {
    fault_scenario("wrong-tag", &["STUCK_IN_SERVER"]);
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_double_commit_gives_cmd_rejected() {
    fault_scenario("double-commit", &[]);
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_wrong_thread_gives_cmd_rejected() {
    fault_scenario("wrong-thread", &["STUCK_IN_SERVER"]);
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_no_submit_gives_stuck_in_server() {
    fault_scenario("no-submit", &[]);
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_no_reap_gives_stuck_in_server() {
    fault_scenario("no-reap", &[]);
}

#[test]
#[ignore = "needs ublk guest"]
fn repro_zero_commit_write_gives_bad_commit() {
    fault_scenario("zero-commit-write", &[]);
}

/// start-gate deadlocks START_DEV only up to 6.17; from 6.18 the device works. The server is
/// stopped with SIGINT, never SIGKILL: on 6.12 a killed start-gated server and its START_DEV
/// worker stay in D state for good.
#[test]
#[ignore = "needs ublk guest"]
fn repro_start_gate_gives_ctrl_pending() {
    let (s, _took) = scenario("start-gate");
    let osrel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = osrel
        .trim()
        .split(['.', '-', '+'])
        .map(|n| n.parse().unwrap_or(0u32));
    let kv = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    let args: Vec<&str> = s.server.split_whitespace().collect();
    if kv >= (6, 18) {
        let srv = start_server(s);
        let id = srv.dev_id;
        let st = ShellJob::run(
            &format!(
                "dd if={} of=/dev/null bs=4k count=16 iflag=direct",
                srv.bdev()
            ),
            &[],
            Duration::from_secs(60),
        );
        assert!(st.success(), "reads on {kv:?}: {st}");
        teardown(id, None, None, srv);
        println!("{}: harmless on {kv:?}", s.name);
        return;
    }
    let mut srv = Server::spawn_unready(&args);
    let t0 = Instant::now();
    let (code, doc, _) = diagnose(srv.dev_id, &["--for", "3", "--stuck-ms", "500"]);
    let pid = srv.pid();
    srv.signal(libc::SIGINT);
    let st = wait_timeout(&mut srv.child, Duration::from_secs(120));
    let id = srv.dev_id;
    let clean = st.is_some_and(|st| st.success());
    if clean {
        teardown(id, None, None, srv);
    }
    assert!(clean, "the gated server did not stop on SIGINT: {st:?}");
    println!(
        "{}: {:?} after {:?}",
        s.name,
        classes(&findings(&doc)),
        t0.elapsed()
    );
    assert_eq!(code, Some(1), "findings mean exit 1: {doc}");
    let f = of_class(&doc, s.expect);
    assert!(
        f.iter().any(|f| has_pid(f, pid)
            && f["summary"]
                .as_str()
                .is_some_and(|x| x.contains("START_DEV"))),
        "no CTRL_PENDING START_DEV with pid {pid}: {doc}"
    );
}
