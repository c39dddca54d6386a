//! Reports of synthetic recordings written by the tests.
use std::path::PathBuf;

use crate::cmd::report::report_file;
use crate::diagnose::Thresholds;
use crate::event::TraceEvent;
use crate::model::testutil::*;
use crate::record::{JsonlWriter, RecordHeader};

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_recording(name: &str, evs: &[TraceEvent]) -> TempFile {
    let path = std::env::temp_dir().join(format!(
        "ublk-trace-report-{}-{name}.jsonl",
        std::process::id()
    ));
    let mut w = JsonlWriter::create(&path, &RecordHeader::new("6.12.95-test".into()))
        .expect("create recording");
    for e in evs {
        w.write(e).expect("write event");
    }
    w.finish().expect("flush");
    TempFile(path)
}

/// 2 queues x 4 tags set up in view; 100 reads of 100 µs per queue over ~1 s; tag 3 of q1
/// never fetched; one read on q0 tag 2 delivered and never committed; STOP_DEV pending.
fn recording() -> Vec<TraceEvent> {
    let mut evs = setup(0, 2, 4, MS);
    evs.retain(|e| {
        !matches!(
            &e.kind,
            crate::event::EventKind::IoCmd {
                q_id: 1,
                tag: 3,
                ..
            } | crate::event::EventKind::IoCmdDone {
                q_id: 1,
                tag: 3,
                ..
            }
        )
    });
    for i in 0..200u64 {
        let q = (i % 2) as u16;
        let tag = ((i / 2) % 3) as u16;
        evs.extend(healthy_io(
            0,
            q,
            tag,
            100 * MS + i * 5 * MS,
            Q_TID + u32::from(q),
        ));
    }
    evs.push(queue_rq(0, 0, 2, 1200 * MS, "READ", 4096));
    evs.push(delivered(0, 0, 2, 1200 * MS + 10_000, Q_TID));
    evs.push(ctrl_start(0, 1300 * MS, SRV_PID, "STOP_DEV"));
    evs.push(lost(4000 * MS, 0));
    evs
}

#[test]
fn text_report_has_rates_latency_timeline_and_findings() {
    let f = write_recording("text", &recording());
    let out = report_file(&f.0, false, &Thresholds::default()).expect("report");
    // 100 completions per queue; q0 has one more request that never completed.
    assert!(out.contains("q0: 101 requests, 100 completed"), "{out}");
    assert!(out.contains("q1: 100 requests, 100 completed"), "{out}");
    assert!(out.contains("queue_rq -> commit: p50 100.0us"), "{out}");
    assert!(out.contains("tags never fetched on q1: 3"), "{out}");
    assert!(
        out.contains("never completed: q0 tag 2 READ sector 16 4096 bytes, IN_SERVER for 2.80s"),
        "{out}"
    );
    assert!(
        out.contains("STOP_DEV") && out.contains("PENDING at the end"),
        "{out}"
    );
    assert!(out.contains("START_DEV") && out.contains("-> 0"), "{out}");
    assert!(out.contains("STUCK_IN_SERVER dev 0 q0 tag 2"), "{out}");
    assert!(out.contains("TEARDOWN_BLOCKED dev 0"), "{out}");
}

#[test]
fn json_report_is_versioned_and_complete() {
    let f = write_recording("json", &recording());
    let out = report_file(&f.0, true, &Thresholds::default()).expect("report");
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(v["schema"], "ublk-trace.report");
    assert_eq!(v["version"], 1);
    assert_eq!(v["kernel"], "6.12.95-test");
    let q0 = &v["devices"][0]["queues"][0];
    assert_eq!(q0["completed"], 100);
    assert_eq!(q0["bytes"], 100 * 4096);
    assert_eq!(v["devices"][0]["never_completed"][0]["tag"], 2);
    let classes: Vec<&str> = v["diagnosis"]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["class"].as_str())
        .collect();
    assert!(classes.contains(&"STUCK_IN_SERVER"), "{classes:?}");
}

#[test]
fn healthy_recording_has_no_findings_and_late_start_says_so() {
    // Started after setup: no ADD_DEV, so "never fetched" is unknown, not "all of them".
    let mut evs = Vec::new();
    for i in 0..50u64 {
        evs.extend(healthy_io(3, 0, (i % 4) as u16, MS + i * MS, Q_TID));
    }
    let f = write_recording("healthy", &evs);
    let out = report_file(&f.0, false, &Thresholds::default()).expect("report");
    assert!(out.contains("tags never fetched: unknown"), "{out}");
    assert!(out.contains("requests never completed: none"), "{out}");
    assert!(
        out.contains("findings at the end of the recording:\n  none"),
        "{out}"
    );
}

#[test]
fn damaged_recording_names_the_line() {
    let f = write_recording("bad", &recording()[..3]);
    let mut text = std::fs::read_to_string(&f.0).expect("read back");
    text.push_str("{\"ts_ns\": \"oops\"}\n");
    std::fs::write(&f.0, text).expect("rewrite");
    let err = report_file(&f.0, false, &Thresholds::default()).expect_err("must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains(":5:") && msg.contains("bad event"), "{msg}");
}

#[test]
fn deleted_device_still_reports_its_slow_requests() {
    // Measured shape: a server with 300 ms delays, recorded from ADD to DEL.
    let mut evs = setup(0, 1, 2, MS);
    for i in 0..5u64 {
        let t0 = 100 * MS + i * 400 * MS;
        evs.push(queue_rq(0, 0, 0, t0, "READ", 4096));
        evs.push(delivered(0, 0, 0, t0 + 10_000, Q_TID));
        evs.extend(commit(0, 0, 0, t0 + 300 * MS, Q_TID, 4096));
    }
    evs.push(ctrl_start(0, 3000 * MS, SRV_PID, "DEL_DEV"));
    evs.push(ctrl_done(0, 3001 * MS, SRV_PID, "DEL_DEV", 0));
    let f = write_recording("deleted", &evs);
    let out = report_file(&f.0, false, &Thresholds::default()).expect("report");
    assert!(out.contains("SLOW dev 0 q0"), "{out}");
    assert!(out.contains("queue_rq -> commit: p50 300.00ms"), "{out}");
    assert!(!out.contains("STUCK"), "{out}");
}
