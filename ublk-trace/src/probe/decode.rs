//! Raw ring-buffer records -> typed [`TraceEvent`]s. Pure: host-tested on synthetic bytes.

use ublk_trace_common::event::*;

use crate::event::{BlockStage, EventKind, RefusedElem, TraceEvent};
use crate::kernel::offsets::fallback_req_op_name;

/// What decoding needs to know about the kernel.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    /// `IO_URING_F_CANCEL` from BTF.
    pub cancel_flag: u32,
    /// `REQ_OP_*` names from BTF (`enum req_op`); the stable numbers are the fallback.
    pub req_ops: std::collections::BTreeMap<u32, String>,
    /// A request start taken from block_rq_issue also yields a `Block { stage: Issue }`
    /// event (the same moment: what the block_rq_issue record used to say).
    pub issue_from_queue_rq: bool,
}

/// The kernel hook a request-start record came from (`arg1` says; the kprobes leave it 0).
pub fn queue_rq_source(arg1: u64) -> &'static str {
    match arg1 {
        ublk_trace_common::event::QUEUE_RQ_FROM_ISSUE => "tracepoint:block_rq_issue",
        ublk_trace_common::event::QUEUE_RQ_FROM_STATE => "state-map",
        _ => "kprobe:ublk_queue_rq(s)",
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "ring-buffer record of {0} bytes is shorter than a RawEvent ({RAW_EVENT_BYTES}); ublk-trace and its eBPF object are out of sync, rebuild ublk-trace"
    )]
    Short(usize),
    #[error("unknown raw event kind {0}; rebuild ublk-trace")]
    UnknownKind(u32),
}

impl Decoder {
    fn req_op(&self, cmd_flags: u32) -> String {
        let op = cmd_flags & 0xff;
        self.req_ops
            .get(&op)
            .cloned()
            .unwrap_or_else(|| fallback_req_op_name(op).to_string())
    }

    /// Decode one record's bytes, appending one or two events to `out`.
    pub fn decode_bytes(&self, b: &[u8], out: &mut Vec<TraceEvent>) -> Result<(), DecodeError> {
        let raw = RawEvent::from_le_bytes(b).ok_or(DecodeError::Short(b.len()))?;
        self.decode(&raw, out)
    }

    /// Decode one record. An I/O command becomes two events: `IoCmd` at entry and
    /// `IoCmdDone` at return (one ring record carries both to halve the traffic).
    pub fn decode(&self, r: &RawEvent, out: &mut Vec<TraceEvent>) -> Result<(), DecodeError> {
        let ev = |ts_ns, kind| TraceEvent {
            ts_ns,
            pid: (r.pid_tgid >> 32) as u32,
            tid: r.pid_tgid as u32,
            comm: comm_str(&r.comm),
            kind,
        };
        let (dev_id, q_id, tag, cmd_op) = (r.dev_id, r.q_id, r.tag, r.cmd_op);
        match r.kind {
            KIND_CTRL_START => out.push(ev(
                r.ts_ns,
                EventKind::CtrlStart {
                    dev_id,
                    cmd_op,
                    op: ublk_abi::ctrl_op_name(cmd_op).to_string(),
                    queue_id: q_id,
                    data0: r.arg0,
                },
            )),
            KIND_CTRL_DONE => out.push(ev(
                r.ts_ns,
                EventKind::CtrlDone {
                    dev_id,
                    cmd_op,
                    op: ublk_abi::ctrl_op_name(cmd_op).to_string(),
                    result: r.ret,
                    duration_ns: r.arg1,
                },
            )),
            KIND_IO_CMD if is_batch_cmd(cmd_op) => {
                let (nr_elem, elem_bytes, flags) = batch_fields(r.bytes);
                let total = i64::from(nr_elem) * i64::from(elem_bytes);
                let is_commit = cmd_op & 0xff == ublk_abi::UBLK_IO_COMMIT_IO_CMDS;
                // Refused elements carry their tag; the index comes from the bytes handled.
                let refused =
                    (is_commit && i64::from(r.ret) != total && tag != u16::MAX).then(|| {
                        RefusedElem {
                            index: match (r.ret, elem_bytes) {
                                (ret, eb) if ret > 0 && eb > 0 => (ret / i32::from(eb)) as u16,
                                _ => 0,
                            },
                            tag,
                            result: r.result,
                        }
                    });
                out.push(ev(
                    r.ts_ns.saturating_add(r.arg1),
                    EventKind::BatchCmd {
                        dev_id,
                        q_id,
                        cmd_op,
                        op: ublk_abi::io_cmd_name(cmd_op).to_string(),
                        nr_elem,
                        elem_bytes,
                        flags,
                        ret: r.ret,
                        duration_ns: r.arg1,
                        refused,
                        cancel: self.cancel_flag != 0 && r.flags & self.cancel_flag != 0,
                    },
                ));
            }
            KIND_IO_CMD => {
                let op = ublk_abi::io_cmd_name(cmd_op).to_string();
                out.push(ev(
                    r.ts_ns,
                    EventKind::IoCmd {
                        dev_id,
                        q_id,
                        tag,
                        cmd_op,
                        op: op.clone(),
                        result: r.result,
                        addr: r.arg0,
                        issue_flags: r.flags,
                    },
                ));
                out.push(ev(
                    r.ts_ns.saturating_add(r.arg1),
                    EventKind::IoCmdDone {
                        dev_id,
                        q_id,
                        tag,
                        cmd_op,
                        op,
                        ret: r.ret,
                        cancel: self.cancel_flag != 0 && r.flags & self.cancel_flag != 0,
                    },
                ));
            }
            KIND_QUEUE_RQ => {
                out.push(ev(
                    r.ts_ns,
                    EventKind::QueueRq {
                        dev_id,
                        q_id,
                        tag,
                        op: self.req_op(r.flags),
                        sector: r.arg0,
                        bytes: r.bytes,
                        cmd_flags: r.flags,
                        source: Some(queue_rq_source(r.arg1).to_string()),
                    },
                ));
                if self.issue_from_queue_rq && r.arg1 == QUEUE_RQ_FROM_ISSUE {
                    out.push(ev(
                        r.ts_ns,
                        EventKind::Block {
                            dev_id,
                            q_id,
                            tag,
                            stage: BlockStage::Issue,
                            op: self.req_op(r.flags),
                            sector: r.arg0,
                            bytes: r.bytes,
                            error: 0,
                        },
                    ));
                }
            }
            KIND_DELIVERED => out.push(ev(r.ts_ns, EventKind::Delivered { dev_id, q_id, tag })),
            KIND_BLOCK_INSERT | KIND_BLOCK_ISSUE | KIND_BLOCK_COMPLETE | KIND_BLOCK_REQUEUE => {
                let stage = match r.kind {
                    KIND_BLOCK_INSERT => BlockStage::Insert,
                    KIND_BLOCK_ISSUE => BlockStage::Issue,
                    KIND_BLOCK_COMPLETE => BlockStage::Complete,
                    _ => BlockStage::Requeue,
                };
                out.push(ev(
                    r.ts_ns,
                    EventKind::Block {
                        dev_id,
                        q_id,
                        tag,
                        stage,
                        op: self.req_op(r.flags),
                        sector: r.arg0,
                        bytes: r.bytes,
                        error: blk_status_to_errno(r.result),
                    },
                ))
            }
            k => return Err(DecodeError::UnknownKind(k)),
        }
        Ok(())
    }
}

/// The disk name carried in a block record's `arg1` (first 8 bytes, NUL padded).
pub fn block_disk_name(r: &RawEvent) -> String {
    comm_str(&r.arg1.to_le_bytes())
}

fn comm_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// `blk_status_t` -> -errno, after `blk_errors[]` in block/blk-core.c. blk_status_t is a
/// `#define` list (not in BTF); these low numbers have been stable since 4.13. Unknown
/// statuses become -EIO, which is what the block layer reports for them.
pub fn blk_status_to_errno(status: i32) -> i32 {
    match status {
        0 => 0,
        1 => -libc::EOPNOTSUPP,
        2 => -libc::ETIMEDOUT,
        3 => -libc::ENOSPC,
        4 => -libc::ENOLINK,
        5 => -libc::EREMOTEIO,
        7 => -libc::ENODATA,
        8 => -libc::EILSEQ,
        9 => -libc::ENOMEM,
        12 => -libc::EAGAIN,
        _ => -libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: u32) -> RawEvent {
        RawEvent {
            ts_ns: 1000,
            pid_tgid: (42 << 32) | 43,
            kind,
            dev_id: 0,
            q_id: 1,
            tag: 5,
            comm: *b"ublk-server\0\0\0\0\0",
            ..RawEvent::default()
        }
    }

    fn decoder() -> Decoder {
        Decoder {
            cancel_flag: 1 << 11,
            req_ops: Default::default(),
            issue_from_queue_rq: true,
        }
    }

    #[test]
    fn a_batch_commit_not_taken_whole_names_the_refused_element() {
        let mut r = raw(KIND_IO_CMD);
        r.cmd_op = ublk_abi::UBLK_U_IO_COMMIT_IO_CMDS;
        r.bytes = batch_bytes(4, 16, 2);
        r.ret = 32; // two elements handled
        r.tag = 6;
        r.result = 4096;
        r.arg1 = 1_000;
        let mut out = Vec::new();
        decoder()
            .decode_bytes(&r.to_le_bytes(), &mut out)
            .expect("valid record");
        match &out[..] {
            [e] => match &e.kind {
                EventKind::BatchCmd {
                    op,
                    nr_elem,
                    elem_bytes,
                    flags,
                    refused: Some(x),
                    ..
                } => {
                    assert_eq!(
                        (op.as_str(), *nr_elem, *elem_bytes, *flags),
                        ("COMMIT_IO_CMDS", 4, 16, 2)
                    );
                    assert_eq!((x.index, x.tag, x.result), (2, 6, 4096));
                    assert_eq!(e.ts_ns, r.ts_ns + 1_000, "dated at its return");
                }
                k => panic!("expected a refused BatchCmd, got {k:?}"),
            },
            o => panic!("one event expected: {o:?}"),
        }
        // Taken whole: nothing refused.
        r.ret = 64;
        r.tag = u16::MAX;
        out.clear();
        decoder()
            .decode_bytes(&r.to_le_bytes(), &mut out)
            .expect("valid");
        assert!(matches!(
            &out[0].kind,
            EventKind::BatchCmd { refused: None, .. }
        ));
    }

    #[test]
    fn io_cmd_record_becomes_entry_and_return() {
        let mut r = raw(KIND_IO_CMD);
        r.cmd_op = ublk_abi::UBLK_U_IO_COMMIT_AND_FETCH_REQ;
        r.result = 4096;
        r.ret = -529;
        r.arg1 = 250; // duration
        r.flags = 0x8000_0011;
        let mut out = Vec::new();
        decoder()
            .decode_bytes(&r.to_le_bytes(), &mut out)
            .expect("valid record");
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].pid, out[0].tid, out[0].comm.as_str()),
            (42, 43, "ublk-server")
        );
        match &out[0].kind {
            EventKind::IoCmd { op, result, .. } => {
                assert_eq!((op.as_str(), *result), ("COMMIT_AND_FETCH_REQ", 4096))
            }
            k => panic!("expected IoCmd, got {k:?}"),
        }
        assert_eq!(out[1].ts_ns, 1250);
        match &out[1].kind {
            EventKind::IoCmdDone { ret, cancel, .. } => assert_eq!((*ret, *cancel), (-529, false)),
            k => panic!("expected IoCmdDone, got {k:?}"),
        }
        // IO_URING_F_CANCEL set: teardown, not a command (DESIGN: would look like a FETCH).
        r.flags |= 1 << 11;
        out.clear();
        decoder().decode(&r, &mut out).expect("valid record");
        assert!(matches!(
            out[1].kind,
            EventKind::IoCmdDone { cancel: true, .. }
        ));
    }

    #[test]
    fn ctrl_and_request_records() {
        let mut r = raw(KIND_CTRL_DONE);
        r.cmd_op = ublk_abi::UBLK_U_CMD_START_DEV;
        r.ret = 0;
        r.arg1 = 77;
        let mut out = Vec::new();
        decoder().decode(&r, &mut out).expect("ctrl done");
        assert!(matches!(&out[0].kind,
            EventKind::CtrlDone { op, duration_ns: 77, result: 0, .. } if op == "START_DEV"));
        let mut q = raw(KIND_QUEUE_RQ);
        q.flags = 0x8801; // WRITE|SYNC|IDLE
        q.arg0 = 2048;
        q.bytes = 65536;
        decoder().decode(&q, &mut out).expect("queue_rq");
        assert!(matches!(&out[1].kind,
            EventKind::QueueRq { op, sector: 2048, bytes: 65536, tag: 5, .. } if op == "WRITE"));
        assert_eq!(out.len(), 2, "a kprobe's record is one event");
        // Taken from block_rq_issue: the start and, on request, the issue.
        q.arg1 = QUEUE_RQ_FROM_ISSUE;
        decoder().decode(&q, &mut out).expect("queue_rq from issue");
        assert!(matches!(
            &out[2].kind,
            EventKind::QueueRq { sector: 2048, .. }
        ));
        assert!(matches!(
            &out[3].kind,
            EventKind::Block {
                stage: BlockStage::Issue,
                sector: 2048,
                bytes: 65536,
                error: 0,
                ..
            }
        ));
        assert_eq!(out[3].ts_ns, out[2].ts_ns);
        out.truncate(2);
        let mut c = raw(KIND_BLOCK_COMPLETE);
        c.result = 10; // BLK_STS_IOERR
        decoder().decode(&c, &mut out).expect("block complete");
        assert!(matches!(
            out[2].kind,
            EventKind::Block {
                stage: BlockStage::Complete,
                error: -5,
                ..
            }
        ));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let mut out = Vec::new();
        assert_eq!(
            decoder().decode_bytes(&[0u8; 10], &mut out),
            Err(DecodeError::Short(10))
        );
        assert_eq!(
            decoder().decode(&raw(99), &mut out),
            Err(DecodeError::UnknownKind(99))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn disk_name_from_block_record() {
        let mut r = raw(KIND_BLOCK_ISSUE);
        r.arg1 = u64::from_le_bytes(*b"loop0\0\0\0");
        assert_eq!(block_disk_name(&r), "loop0");
    }
}
