//! Each commit/ring fault of `ublk-server --inject` (wrong-tag, double-commit, wrong-thread,
//! no-submit, no-reap, start-gate) and zero-commit on writes, watched from before the fault:
//! `ublk-trace watch --headless` must name the class a server author needs, on the right
//! queue and tag, with the server's pid; afterwards the guest must recover (server killed,
//! device deleted, no task left in D state).
//!
//! What the kernel does with each fault (asserted server-side in ublk-server/tests/faults.rs):
//! a COMMIT for a tag that waits for a request (wrong tag, second commit) is rejected with
//! EBUSY; a COMMIT from a thread that did not FETCH the tag with EINVAL; a rejected command
//! changes nothing, so the request it should have completed stays in the server.
mod diagnose_common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diagnose_common::*;
use serde_json::Value;

const DEPTH: u16 = 4;

/// Tags of queue 0 whose published fault is `kind` (the server's tag-state file).
fn tags_with_fault(dev_id: u32, kind: u32) -> Vec<u16> {
    let Ok(b) = std::fs::read(format!("/run/ublk-server/ublkb{dev_id}.tags")) else {
        return Vec::new();
    };
    (0..DEPTH)
        .filter(|&t| {
            let off = ublk_trace_common::tagstate::slot_offset(DEPTH, 0, t);
            b.get(off..)
                .and_then(ublk_trace_common::tagstate::TagSlot::decode)
                .is_some_and(|s| s.fault == kind)
        })
        .collect()
}

fn wait_fault_tags(dev_id: u32, kind: u32) -> Vec<u16> {
    let t0 = Instant::now();
    loop {
        let v = tags_with_fault(dev_id, kind);
        if !v.is_empty() || t0.elapsed() > Duration::from_secs(30) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The one tag blk-mq debugfs shows in flight continuously for 600 ms (a stuck request).
fn stuck_tag(dev_id: u32) -> Option<(u64, u64)> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if let [one] = busy_tags(dev_id)[..]
            && wait_for_stuck_tag(dev_id, one.0, one.1, Duration::from_secs(2))
        {
            return Some(one);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// One direct 4 KiB read (or write) of block 0, in the background.
fn dd_one(bdev: &str, write: bool) -> Child {
    let args: Vec<String> = if write {
        vec![
            "if=/dev/zero".into(),
            format!("of={bdev}"),
            "oflag=direct".into(),
        ]
    } else {
        vec![
            format!("if={bdev}"),
            "of=/dev/null".into(),
            "iflag=direct".into(),
        ]
    };
    Command::new("dd")
        .args(args)
        .args(["bs=4k", "count=1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn dd: {e}"))
}

/// Thread ids of `pid` named `comm`.
fn threads_named(pid: u32, comm: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm))
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// pids of tasks in D state (none may be left after a test).
fn d_state_tasks() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            (proc_state(pid) == 'D').then(|| {
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                format!("{pid} ({})", comm.trim())
            })
        })
        .collect()
}

fn kernel_version() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = r
        .trim()
        .split(['.', '-', '+'])
        .map(|n| n.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn evidence(f: &Value) -> String {
    f["evidence"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .unwrap_or_default()
}

/// Wait (up to 20 s) for a watch document in which `pred` holds; print what was found.
fn expect(w: &HeadlessWatch, what: &str, pred: impl FnMut(&Value) -> bool) -> Value {
    let (_, doc) = w
        .wait_for(Instant::now(), Duration::from_secs(20), pred)
        .unwrap_or_else(|| panic!("watch never showed {what}"));
    let fs = findings(&doc);
    println!("{what}: found {:?}", classes(&fs));
    for f in &fs {
        println!("  {}: {}\n    {}", f["class"], f["summary"], evidence(f));
    }
    doc
}

/// Recovery: stop watching, kill the server and delete the device, reap the I/O task; the
/// device must be gone and no task left in D state.
fn recover(w: HeadlessWatch, s: Server, mut io: Option<Child>) {
    let id = s.dev_id;
    drop(w);
    drop(s);
    if let Some(c) = io.as_mut() {
        assert!(
            wait_timeout(c, Duration::from_secs(30)).is_some(),
            "I/O task still blocked after the server was killed"
        );
    }
    assert!(
        !std::path::Path::new(&format!("/dev/ublkc{id}")).exists(),
        "device {id} left after del"
    );
    let d = d_state_tasks();
    assert!(d.is_empty(), "tasks left in D state: {d:?}");
}

fn start(spec: &str) -> (Server, HeadlessWatch) {
    let depth = DEPTH.to_string();
    let s = Server::start(&["null", "--queues", "1", "--depth", &depth, "--inject", spec]);
    let w = HeadlessWatch::start(s.dev_id, 200);
    w.wait_until_attached();
    (s, w)
}

fn rejected_on<'a>(fs: &'a [Value], q: u64, tag: u64, errno: &str) -> Option<&'a Value> {
    finding_on(fs, &["CMD_REJECTED"], q, tag).filter(|f| {
        f["summary"]
            .as_str()
            .is_some_and(|s| s.contains("COMMIT_AND_FETCH_REQ") && s.contains(errno))
    })
}

#[test]
#[ignore = "needs ublk guest"]
fn diagnosed_wrong_tag_rejected_commit_and_stuck_request() {
    let (s, w) = start("wrong-tag");
    let pid = s.pid();
    let dd = dd_one(&s.bdev(), false);
    let (q, t) = stuck_tag(s.dev_id).expect("no request stuck");
    let other = (t + 1) % u64::from(DEPTH);
    assert_eq!(wait_fault_tags(s.dev_id, 10), {
        let mut v = vec![t as u16, other as u16];
        v.sort_unstable();
        v
    });
    let doc = expect(&w, "wrong-tag", |d| {
        let fs = findings(d);
        finding_on(&fs, &["STUCK_IN_SERVER"], q, t).is_some_and(|f| has_pid(f, pid))
            && rejected_on(&fs, q, other, "EBUSY").is_some_and(|f| has_pid(f, pid))
    });
    let fs = findings(&doc);
    let rej = rejected_on(&fs, q, other, "EBUSY").expect("CMD_REJECTED");
    let owner = threads_named(pid, "ublk-q0");
    assert!(
        evidence(rej).contains(&format!("from tid {}", owner[0])),
        "sent by the queue thread: {}",
        evidence(rej)
    );
    recover(w, s, Some(dd));
}

#[test]
#[ignore = "needs ublk guest"]
fn diagnosed_double_commit_rejected_without_a_stall() {
    let (s, w) = start("double-commit");
    let pid = s.pid();
    let mut dd = Command::new("dd")
        .args([
            format!("if={}", s.bdev()),
            "of=/dev/null".into(),
            "bs=4k".into(),
            "count=32".into(),
            "iflag=direct".into(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dd");
    let st = wait_timeout(&mut dd, Duration::from_secs(60)).expect("reads stalled");
    assert!(st.success(), "reads failed: {st:?}");
    let tags = wait_fault_tags(s.dev_id, 11);
    assert_eq!(tags.len(), 1, "{tags:?}");
    let t = u64::from(tags[0]);
    let doc = expect(&w, "double-commit", |d| {
        rejected_on(&findings(d), 0, t, "EBUSY").is_some_and(|f| has_pid(f, pid))
    });
    let fs = findings(&doc);
    let stuck: Vec<_> = fs
        .iter()
        .filter(|f| f["class"] == "STUCK_IN_SERVER" || f["class"] == "NOT_DELIVERED")
        .collect();
    assert!(
        stuck.is_empty(),
        "a double commit stalls nothing: {stuck:?}"
    );
    recover(w, s, None);
}

#[test]
#[ignore = "needs ublk guest"]
fn diagnosed_wrong_thread_rejected_with_calling_and_owner_tid() {
    let (s, w) = start("wrong-thread");
    let pid = s.pid();
    let dd = dd_one(&s.bdev(), false);
    let (q, t) = stuck_tag(s.dev_id).expect("no request stuck");
    assert_eq!(wait_fault_tags(s.dev_id, 12), vec![t as u16]);
    let doc = expect(&w, "wrong-thread", |d| {
        let fs = findings(d);
        finding_on(&fs, &["STUCK_IN_SERVER"], q, t).is_some_and(|f| has_pid(f, pid))
            && rejected_on(&fs, q, t, "EINVAL").is_some_and(|f| has_pid(f, pid))
    });
    let fs = findings(&doc);
    let rej = rejected_on(&fs, q, t, "EINVAL").expect("CMD_REJECTED");
    let stray = threads_named(pid, "ublk-q0-stray");
    let owner = threads_named(pid, "ublk-q0");
    assert_eq!((stray.len(), owner.len()), (1, 1));
    let ev = evidence(rej);
    assert!(ev.contains(&format!("from tid {}", stray[0])), "{ev}");
    assert!(ev.contains(&format!("owned by tid {}", owner[0])), "{ev}");
    assert!(
        has_pid(rej, stray[0]),
        "the calling tid is named: {}",
        rej["pids"]
    );
    recover(w, s, Some(dd));
}

#[test]
#[ignore = "needs ublk guest"]
fn diagnosed_no_submit_stuck_with_unsubmitted_sqe() {
    let (s, w) = start("no-submit");
    let pid = s.pid();
    let dd = dd_one(&s.bdev(), false);
    let (q, t) = stuck_tag(s.dev_id).expect("no request stuck");
    assert_eq!(wait_fault_tags(s.dev_id, 13), vec![t as u16]);
    // Both the tag file ("committed ... never accepted") and the fdinfo SQ backlog must show;
    // a snapshot whose /proc scan missed the server under load lacks the latter, so wait for
    // a document that has both.
    let doc = expect(&w, "no-submit", |d| {
        finding_on(&findings(d), &["STUCK_IN_SERVER"], q, t).is_some_and(|f| {
            has_pid(f, pid)
                && evidence(f).contains("the SQE was not submitted")
                && evidence(f).contains("SQE(s) written and not submitted (SqHead")
        })
    });
    let fs = findings(&doc);
    assert!(finding_on(&fs, &["STUCK_IN_SERVER"], q, t).is_some());
    recover(w, s, Some(dd));
}

#[test]
#[ignore = "needs ublk guest"]
fn diagnosed_no_reap_stuck_with_unreaped_cqe() {
    let (s, w) = start("no-reap");
    let pid = s.pid();
    let dd = dd_one(&s.bdev(), false);
    let (q, t) = stuck_tag(s.dev_id).expect("no request stuck");
    let doc = expect(&w, "no-reap", |d| {
        finding_on(&findings(d), &["STUCK_IN_SERVER"], q, t)
            .is_some_and(|f| has_pid(f, pid) && evidence(f).contains("not reaped"))
    });
    let fs = findings(&doc);
    let wrong: Vec<_> = fs
        .iter()
        .filter(|f| f["class"] == "STUCK_IN_SERVER")
        .filter(|f| f["queue"].as_u64() != Some(q) || f["tag"].as_u64() != Some(t))
        .collect();
    assert!(wrong.is_empty(), "other tags called stuck: {wrong:?}");
    recover(w, s, Some(dd));
}

/// start-gate: up to 6.17 START_DEV waits for the partition-scan reads the gated server does
/// not serve: CTRL_PENDING (START_DEV) plus the scan read stuck in the server. From 6.18 the
/// device works and nothing is found.
#[test]
#[ignore = "needs ublk guest"]
fn diagnosed_start_gate_per_kernel() {
    let kv = kernel_version();
    if kv >= (6, 18) {
        let (s, w) = start("start-gate");
        let st = Command::new("dd")
            .args([
                format!("if={}", s.bdev()),
                "of=/dev/null".into(),
                "bs=4k".into(),
                "count=16".into(),
                "iflag=direct".into(),
            ])
            .output()
            .expect("dd");
        assert!(st.status.success(), "reads failed on {kv:?}");
        // Two seconds of documents without a problem finding.
        let bad = w.wait_for(Instant::now(), Duration::from_secs(2), |d| {
            findings(d)
                .iter()
                .any(|f| f["class"] == "CTRL_PENDING" || f["class"] == "STUCK_IN_SERVER")
        });
        assert!(bad.is_none(), "start-gate is harmless on {kv:?}: {bad:?}");
        recover(w, s, None);
        return;
    }
    const ID: u32 = 6;
    let child = Command::new(bin("ublk-server"))
        .args(["run", "null", "--queues", "1", "--depth", "4", "--id", "6"])
        .args(["--start-timeout-ms", "60000", "--inject", "start-gate"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn server");
    // Never SIGKILL this server (see GatedServer): a failed assertion must not wedge the guest.
    let mut g = GatedServer(Some(Server { child, dev_id: ID }));
    let pid = g.pid();
    let t0 = Instant::now();
    while !std::path::Path::new("/dev/ublkc6").exists() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (q, t) = stuck_tag(ID).expect("no partition-scan read stuck");
    println!("the partition-scan read waits on q{q} tag {t}");
    // The tracer attaches while START_DEV is already in the kernel: it must tell from the
    // iou-wrk thread's stack that START is pending.
    let w = HeadlessWatch::start(ID, 200);
    w.wait_until_attached();
    let doc = expect(&w, "start-gate", |d| {
        let fs = findings(d);
        let start = fs.iter().find(|f| {
            f["class"] == "CTRL_PENDING"
                && f["summary"]
                    .as_str()
                    .is_some_and(|s| s.contains("START_DEV"))
        });
        // The scan read sits in the gated server: its CQE posted and unread (a plain ring
        // runs the delivery task work in the sleeping thread: STUCK_IN_SERVER), or its
        // delivery waiting for the thread to enter io_uring (DEFER_TASKRUN: NOT_DELIVERED).
        start.is_some_and(|f| has_pid(f, pid))
            && finding_on(&fs, &["STUCK_IN_SERVER", "NOT_DELIVERED"], q, t)
                .is_some_and(|f| has_pid(f, pid))
    });
    let fs = findings(&doc);
    let start = fs
        .iter()
        .find(|f| f["class"] == "CTRL_PENDING")
        .expect("CTRL_PENDING");
    assert!(
        evidence(start).contains(&format!("q{q} tag {t}")),
        "START_DEV's finding names the read it waits for: {}",
        evidence(start)
    );
    // SIGINT makes the server open its gate, finish START and stop the device.
    let s = g.stop();
    recover(w, s, None);
}

/// A start-gated server on a kernel where it deadlocks: SIGKILL would leave START_DEV (in
/// add_disk) and the dying server in D state for good, so it is only ever stopped with
/// SIGINT, which opens the gate.
struct GatedServer(Option<Server>);

impl GatedServer {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Server::pid)
    }

    /// SIGINT, and the server must exit 0 within 2 minutes.
    fn stop(&mut self) -> Server {
        let Some(mut s) = self.0.take() else {
            panic!("server already stopped");
        };
        s.signal(libc::SIGINT);
        let st = wait_timeout(&mut s.child, Duration::from_secs(120));
        assert!(
            st.is_some_and(|st| st.success()),
            "server did not stop cleanly on SIGINT: {st:?}"
        );
        s
    }
}

impl Drop for GatedServer {
    fn drop(&mut self) {
        if let Some(mut s) = self.0.take() {
            s.signal(libc::SIGINT);
            let _ = wait_timeout(&mut s.child, Duration::from_secs(120));
        }
    }
}

/// zero-commit on a write: the kernel requeues the unwritten rest forever. The diagnosis must
/// be a requeue storm (BAD_COMMIT counting redeliveries), not a stall.
#[test]
#[ignore = "needs ublk guest"]
fn diagnosed_zero_commit_write_as_requeue_storm() {
    let (s, w) = start("zero-commit");
    let pid = s.pid();
    let dd = dd_one(&s.bdev(), true);
    // The requeued write may come back on any tag (mq-deadline releases the driver tag at
    // each requeue): every tag the server zero-committed is a candidate.
    let tags = wait_fault_tags(s.dev_id, 4);
    assert!(!tags.is_empty(), "no zero commit");
    let storm_on = |fs: &[Value]| -> Option<Value> {
        fs.iter()
            .find(|f| {
                f["class"] == "BAD_COMMIT"
                    && f["queue"].as_u64() == Some(0)
                    && f["tag"]
                        .as_u64()
                        .is_some_and(|t| tags_with_fault(s.dev_id, 4).contains(&(t as u16)))
                    && has_pid(f, pid)
                    && f["summary"]
                        .as_str()
                        .is_some_and(|s| s.contains("requeue storm"))
            })
            .cloned()
    };
    let doc = expect(&w, "zero-commit write", |d| {
        storm_on(&findings(d)).is_some()
    });
    let fs = findings(&doc);
    let f = storm_on(&fs).expect("BAD_COMMIT");
    assert!(
        evidence(&f).contains("a requeue storm (livelock), not a stall"),
        "redeliveries counted: {}",
        evidence(&f)
    );
    let stalls: Vec<_> = fs
        .iter()
        .filter(|f| f["class"] == "STUCK_IN_SERVER" || f["class"] == "NOT_DELIVERED")
        .collect();
    assert!(stalls.is_empty(), "a livelock is not a stall: {stalls:?}");
    recover(w, s, Some(dd));
}
