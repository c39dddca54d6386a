//! One recorded event as a JSON line, written by hand: the same document `serde_json` makes of a
//! [`TraceEvent`] (the recording format is `serde_json` of it, see `record/`), several times
//! cheaper than serde's `flatten` path, which buffers every field in a map first. The record
//! command formats tens of thousands of events a second; the test below holds the two equal.
use std::io::Write;

use crate::event::{BlockStage, EventKind, TraceEvent};

/// Append `e` as one JSON line (with its newline) to `out`.
pub fn write_line(out: &mut Vec<u8>, e: &TraceEvent) {
    let start = out.len();
    if write_fields(out, e).is_none() {
        // A kind this writer does not know: serde's form (never silently dropped).
        out.truncate(start);
        if serde_json::to_writer(&mut *out, e).is_err() {
            out.truncate(start);
            return;
        }
    }
    out.push(b'\n');
}

fn write_fields(out: &mut Vec<u8>, e: &TraceEvent) -> Option<()> {
    // Writes into a Vec cannot fail.
    let _ = write!(
        out,
        "{{\"ts_ns\":{},\"pid\":{},\"tid\":{}",
        e.ts_ns, e.pid, e.tid
    );
    if !e.comm.is_empty() {
        out.extend_from_slice(b",\"comm\":");
        string(out, &e.comm);
    }
    match &e.kind {
        EventKind::CtrlStart {
            dev_id,
            cmd_op,
            op,
            queue_id,
            data0,
        } => {
            let _ = write!(
                out,
                ",\"event\":\"ctrl_start\",\"dev_id\":{dev_id},\"cmd_op\":{cmd_op},\"op\":"
            );
            string(out, op);
            let _ = write!(out, ",\"queue_id\":{queue_id},\"data0\":{data0}}}");
        }
        EventKind::CtrlDone {
            dev_id,
            cmd_op,
            op,
            result,
            duration_ns,
        } => {
            let _ = write!(
                out,
                ",\"event\":\"ctrl_done\",\"dev_id\":{dev_id},\"cmd_op\":{cmd_op},\"op\":"
            );
            string(out, op);
            let _ = write!(out, ",\"result\":{result},\"duration_ns\":{duration_ns}}}");
        }
        EventKind::IoCmd {
            dev_id,
            q_id,
            tag,
            cmd_op,
            op,
            result,
            addr,
            issue_flags,
        } => {
            let _ = write!(
                out,
                ",\"event\":\"io_cmd\",\"dev_id\":{dev_id},\"q_id\":{q_id},\"tag\":{tag},\"cmd_op\":{cmd_op},\"op\":"
            );
            string(out, op);
            let _ = write!(
                out,
                ",\"result\":{result},\"addr\":{addr},\"issue_flags\":{issue_flags}}}"
            );
        }
        EventKind::IoCmdDone {
            dev_id,
            q_id,
            tag,
            cmd_op,
            op,
            ret,
            cancel,
        } => {
            let _ = write!(
                out,
                ",\"event\":\"io_cmd_done\",\"dev_id\":{dev_id},\"q_id\":{q_id},\"tag\":{tag},\"cmd_op\":{cmd_op},\"op\":"
            );
            string(out, op);
            let _ = write!(out, ",\"ret\":{ret},\"cancel\":{cancel}}}");
        }
        EventKind::QueueRq {
            dev_id,
            q_id,
            tag,
            op,
            sector,
            bytes,
            cmd_flags,
            source,
        } => {
            let _ = write!(
                out,
                ",\"event\":\"queue_rq\",\"dev_id\":{dev_id},\"q_id\":{q_id},\"tag\":{tag},\"op\":"
            );
            string(out, op);
            let _ = write!(
                out,
                ",\"sector\":{sector},\"bytes\":{bytes},\"cmd_flags\":{cmd_flags}"
            );
            if let Some(src) = source {
                out.extend_from_slice(b",\"source\":");
                string(out, src);
            }
            out.push(b'}');
        }
        EventKind::Delivered { dev_id, q_id, tag } => {
            let _ = write!(
                out,
                ",\"event\":\"delivered\",\"dev_id\":{dev_id},\"q_id\":{q_id},\"tag\":{tag}}}"
            );
        }
        EventKind::Block {
            dev_id,
            q_id,
            tag,
            stage,
            op,
            sector,
            bytes,
            error,
        } => {
            let stage = match stage {
                BlockStage::Insert => "insert",
                BlockStage::Issue => "issue",
                BlockStage::Complete => "complete",
                BlockStage::Requeue => "requeue",
            };
            let _ = write!(
                out,
                ",\"event\":\"block\",\"dev_id\":{dev_id},\"q_id\":{q_id},\"tag\":{tag},\"stage\":\"{stage}\",\"op\":"
            );
            string(out, op);
            let _ = write!(
                out,
                ",\"sector\":{sector},\"bytes\":{bytes},\"error\":{error}}}"
            );
        }
        EventKind::Lost { count } => {
            let _ = write!(out, ",\"event\":\"lost\",\"count\":{count}}}");
        }
        #[allow(unreachable_patterns)]
        _ => return None,
    }
    Some(())
}

/// A JSON string: quotes, backslashes and control characters escaped (the rest is UTF-8).
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                let _ = write!(out, "\\u{:04x}", b);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(comm: &str, kind: EventKind) -> TraceEvent {
        TraceEvent {
            ts_ns: u64::MAX - 3,
            pid: 42,
            tid: 43,
            comm: comm.into(),
            kind,
        }
    }

    #[test]
    fn every_kind_reads_back_as_serde_writes_it() {
        let op = || "COMMIT_AND_FETCH_REQ".to_string();
        let all = [
            ev(
                "ublk-server",
                EventKind::CtrlStart {
                    dev_id: u32::MAX,
                    cmd_op: 0xc020_7504,
                    op: "ADD_DEV".into(),
                    queue_id: u16::MAX,
                    data0: 7,
                },
            ),
            ev(
                "",
                EventKind::CtrlDone {
                    dev_id: 0,
                    cmd_op: 5,
                    op: "DEL_DEV".into(),
                    result: -19,
                    duration_ns: 12,
                },
            ),
            ev(
                "a\"b\\c\u{1}é",
                EventKind::IoCmd {
                    dev_id: 1,
                    q_id: 2,
                    tag: 63,
                    cmd_op: 0xc010_7521,
                    op: op(),
                    result: -5,
                    addr: u64::MAX,
                    issue_flags: 0x8000_0011,
                },
            ),
            ev(
                "x",
                EventKind::IoCmdDone {
                    dev_id: 1,
                    q_id: 2,
                    tag: 63,
                    cmd_op: 0x21,
                    op: op(),
                    ret: -529,
                    cancel: true,
                },
            ),
            ev(
                "fio",
                EventKind::QueueRq {
                    dev_id: 0,
                    q_id: 0,
                    tag: 5,
                    op: "READ".into(),
                    sector: 1 << 40,
                    bytes: 4096,
                    cmd_flags: 0x800,
                    source: None,
                },
            ),
            ev(
                "ublk-q0",
                EventKind::Delivered {
                    dev_id: 0,
                    q_id: 1,
                    tag: u16::MAX,
                },
            ),
            ev(
                "fio",
                EventKind::Block {
                    dev_id: 0,
                    q_id: 0,
                    tag: 5,
                    stage: BlockStage::Complete,
                    op: "WRITE".into(),
                    sector: 8,
                    bytes: 512,
                    error: -5,
                },
            ),
            ev("", EventKind::Lost { count: 9 }),
        ];
        let mut buf = Vec::new();
        for e in &all {
            buf.clear();
            write_line(&mut buf, e);
            assert_eq!(buf.last(), Some(&b'\n'));
            let ours: serde_json::Value =
                serde_json::from_slice(&buf).unwrap_or_else(|err| panic!("{err}: {buf:?}"));
            let theirs = serde_json::to_value(e).expect("serde serializes");
            assert_eq!(ours, theirs);
            let back: TraceEvent = serde_json::from_slice(&buf).expect("parses as an event");
            assert_eq!(&back, e);
        }
        for stage in [BlockStage::Insert, BlockStage::Issue, BlockStage::Requeue] {
            let e = ev(
                "",
                EventKind::Block {
                    dev_id: 0,
                    q_id: 0,
                    tag: 0,
                    stage,
                    op: "FLUSH".into(),
                    sector: 0,
                    bytes: 0,
                    error: 0,
                },
            );
            buf.clear();
            write_line(&mut buf, &e);
            let back: TraceEvent = serde_json::from_slice(&buf).expect("parses");
            assert_eq!(back, e);
        }
    }
}
