//! Export to the Chrome trace-event JSON format, which ui.perfetto.dev and chrome://tracing
//! open: one process per ublk device, one thread track per (queue, tag), a slice per request
//! from `queue_rq` to its accepted COMMIT_AND_FETCH_REQ, and a "control" process whose
//! tracks (one per thread) hold the control commands as slices.
//!
//! Format reference: "Trace Event Format" (Google doc linked from the Perfetto docs).
//! Timestamps are µs (floats keep the ns), relative to the first event.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::event::{EIOCBQUEUED_RET, EventKind, TraceEvent};

/// Process id used for the control-command tracks (device processes are dev_id + 1).
const CONTROL_PID: u64 = 0;

fn dev_pid(dev_id: u32) -> u64 {
    u64::from(dev_id) + 1
}

/// Track id of (queue, tag) inside a device process.
fn tag_tid(q_id: u16, tag: u16) -> u64 {
    (u64::from(q_id) << 16) | u64::from(tag)
}

struct OpenRq {
    ts_ns: u64,
    op: String,
    sector: u64,
    bytes: u32,
}

struct OpenCtrl {
    ts_ns: u64,
    op: String,
    dev_id: u32,
}

/// Build the trace document from a recorded event stream.
pub fn export(events: &[TraceEvent]) -> Value {
    let t0 = events.iter().map(|e| e.ts_ns).min().unwrap_or(0);
    let us = |ts: u64| ts.saturating_sub(t0) as f64 / 1000.0;
    let mut out = Vec::new();
    let mut tracks: HashMap<(u64, u64), String> = HashMap::new();
    let mut open_rq: HashMap<(u32, u16, u16), OpenRq> = HashMap::new();
    let mut open_ctrl: HashMap<u32, OpenCtrl> = HashMap::new();
    for e in events {
        match &e.kind {
            EventKind::QueueRq {
                dev_id,
                q_id,
                tag,
                op,
                sector,
                bytes,
                ..
            } => {
                open_rq.insert(
                    (*dev_id, *q_id, *tag),
                    OpenRq {
                        ts_ns: e.ts_ns,
                        op: op.clone(),
                        sector: *sector,
                        bytes: *bytes,
                    },
                );
            }
            EventKind::IoCmdDone {
                dev_id,
                q_id,
                tag,
                op,
                ret,
                cancel: false,
                ..
            } if op == "COMMIT_AND_FETCH_REQ" && *ret == EIOCBQUEUED_RET => {
                if let Some(rq) = open_rq.remove(&(*dev_id, *q_id, *tag)) {
                    let (pid, tid) = (dev_pid(*dev_id), tag_tid(*q_id, *tag));
                    tracks
                        .entry((pid, tid))
                        .or_insert_with(|| format!("q{q_id} tag{tag}"));
                    out.push(json!({
                        "name": rq.op, "ph": "X", "pid": pid, "tid": tid,
                        "ts": us(rq.ts_ns), "dur": us(e.ts_ns) - us(rq.ts_ns),
                        "args": {"sector": rq.sector, "bytes": rq.bytes},
                    }));
                }
            }
            EventKind::CtrlStart { dev_id, op, .. } => {
                open_ctrl.insert(
                    e.tid,
                    OpenCtrl {
                        ts_ns: e.ts_ns,
                        op: op.clone(),
                        dev_id: *dev_id,
                    },
                );
            }
            EventKind::CtrlDone { result, .. } => {
                if let Some(c) = open_ctrl.remove(&e.tid) {
                    let tid = u64::from(e.tid);
                    tracks
                        .entry((CONTROL_PID, tid))
                        .or_insert_with(|| format!("{} ({})", e.comm, e.tid));
                    out.push(json!({
                        "name": c.op, "ph": "X", "pid": CONTROL_PID, "tid": tid,
                        "ts": us(c.ts_ns), "dur": us(e.ts_ns) - us(c.ts_ns),
                        "args": {"dev_id": c.dev_id, "result": result},
                    }));
                }
            }
            EventKind::Lost { count } => {
                tracks.insert((CONTROL_PID, 0), "lost events".into());
                out.push(json!({
                    "name": format!("lost {count} events"), "ph": "i", "s": "g",
                    "pid": CONTROL_PID, "tid": 0, "ts": us(e.ts_ns),
                }))
            }
            _ => {}
        }
    }
    // Still open at the end of the recording: the interesting ones when something hangs.
    for ((dev_id, q_id, tag), rq) in &open_rq {
        let (pid, tid) = (dev_pid(*dev_id), tag_tid(*q_id, *tag));
        tracks
            .entry((pid, tid))
            .or_insert_with(|| format!("q{q_id} tag{tag}"));
        out.push(json!({
            "name": format!("{} (not committed)", rq.op), "ph": "i", "s": "t",
            "pid": pid, "tid": tid, "ts": us(rq.ts_ns),
        }));
    }
    for (tid, c) in &open_ctrl {
        let tid = u64::from(*tid);
        tracks
            .entry((CONTROL_PID, tid))
            .or_insert_with(|| format!("thread {tid}"));
        out.push(json!({
            "name": format!("{} (never returned)", c.op), "ph": "i", "s": "t",
            "pid": CONTROL_PID, "tid": tid, "ts": us(c.ts_ns),
        }));
    }
    out.extend(metadata(&tracks));
    json!({ "traceEvents": out, "displayTimeUnit": "ns" })
}

/// process_name / thread_name records so the UI labels each track.
fn metadata(tracks: &HashMap<(u64, u64), String>) -> Vec<Value> {
    let mut pids: Vec<u64> = tracks.keys().map(|(p, _)| *p).collect();
    pids.sort_unstable();
    pids.dedup();
    let mut out: Vec<Value> = pids
        .iter()
        .map(|&pid| {
            let name = if pid == CONTROL_PID {
                "ublk control commands".to_string()
            } else {
                format!("ublk dev {}", pid - 1)
            };
            json!({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}})
        })
        .collect();
    let mut t: Vec<_> = tracks.iter().collect();
    t.sort_by_key(|(k, _)| **k);
    out.extend(t.into_iter().map(|((pid, tid), name)| {
        json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}})
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts_ns: u64, tid: u32, kind: EventKind) -> TraceEvent {
        TraceEvent {
            ts_ns,
            pid: 1,
            tid,
            comm: "srv".into(),
            kind,
        }
    }

    fn io_done(ts: u64, tag: u16, ret: i32) -> TraceEvent {
        ev(
            ts,
            7,
            EventKind::IoCmdDone {
                dev_id: 0,
                q_id: 1,
                tag,
                cmd_op: ublk_abi::UBLK_U_IO_COMMIT_AND_FETCH_REQ,
                op: "COMMIT_AND_FETCH_REQ".into(),
                ret,
                cancel: false,
            },
        )
    }

    fn queue_rq(ts: u64, tag: u16) -> TraceEvent {
        ev(
            ts,
            9,
            EventKind::QueueRq {
                dev_id: 0,
                q_id: 1,
                tag,
                op: "READ".into(),
                sector: 8,
                bytes: 4096,
                cmd_flags: 0,
                source: None,
            },
        )
    }

    fn slices(doc: &Value) -> Vec<&Value> {
        doc["traceEvents"]
            .as_array()
            .expect("traceEvents is an array")
            .iter()
            .filter(|e| e["ph"] == "X")
            .collect()
    }

    #[test]
    fn request_and_control_slices_are_well_formed() {
        let events = vec![
            ev(
                1_000,
                5,
                EventKind::CtrlStart {
                    dev_id: 0,
                    cmd_op: ublk_abi::UBLK_U_CMD_START_DEV,
                    op: "START_DEV".into(),
                    queue_id: u16::MAX,
                    data0: 1,
                },
            ),
            queue_rq(2_000, 3),
            io_done(2_500, 3, -22), // rejected commit: must not close the slice
            io_done(6_000, 3, EIOCBQUEUED_RET),
            ev(
                9_000,
                5,
                EventKind::CtrlDone {
                    dev_id: 0,
                    cmd_op: ublk_abi::UBLK_U_CMD_START_DEV,
                    op: "START_DEV".into(),
                    result: 0,
                    duration_ns: 8_000,
                },
            ),
            queue_rq(10_000, 4), // never committed
        ];
        let doc = export(&events);
        // Round-trip through text: what ui.perfetto.dev gets is this string.
        let doc: Value = serde_json::from_str(&doc.to_string()).expect("valid JSON");
        let s = slices(&doc);
        assert_eq!(s.len(), 2, "{doc:#}");
        for x in &s {
            for key in ["name", "ts", "dur", "pid", "tid"] {
                assert!(!x[key].is_null(), "slice lacks {key}: {x}");
            }
            assert!(x["dur"].as_f64().is_some_and(|d| d >= 0.0));
        }
        let rq = s
            .iter()
            .find(|x| x["name"] == "READ")
            .expect("request slice");
        assert_eq!(
            (rq["ts"].as_f64(), rq["dur"].as_f64()),
            (Some(1.0), Some(4.0))
        );
        assert_eq!(rq["pid"], 1);
        assert_eq!(rq["tid"], (1 << 16) | 3);
        let ctrl = s
            .iter()
            .find(|x| x["name"] == "START_DEV")
            .expect("ctrl slice");
        assert_eq!(ctrl["dur"].as_f64(), Some(8.0));
        let all = doc["traceEvents"].as_array().expect("array");
        assert!(all.iter().any(|e| {
            e["ph"] == "i"
                && e["name"]
                    .as_str()
                    .is_some_and(|n| n.contains("not committed"))
        }));
        // Every track that has events is named.
        for x in &s {
            assert!(all.iter().any(|m| m["ph"] == "M"
                && m["name"] == "thread_name"
                && m["pid"] == x["pid"]
                && m["tid"] == x["tid"]));
        }
    }

    #[test]
    fn empty_recording_exports_an_empty_trace() {
        let doc = export(&[]);
        assert!(slices(&doc).is_empty());
    }
}
