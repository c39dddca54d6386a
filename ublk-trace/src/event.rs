//! Typed trace events: the one vocabulary shared by every source (live eBPF ring buffer,
//! replayed JSON lines) and every consumer (model, recorder, report).
//!
//! Adapters (`probe/`, `record/`) produce these; `model/` consumes them and never sees raw
//! kernel bytes. The JSON-lines form of a recording is exactly `serde_json` of [`TraceEvent`]
//! (one per line, after a `RecordHeader` line), see `record/`.

use serde::{Deserialize, Serialize};

/// Schema version of the JSON-lines encoding of [`TraceEvent`]. Bump on incompatible change.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// One thing the kernel (or a snapshot adapter) told us, with when and who.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// CLOCK_MONOTONIC ns (bpf_ktime_get_ns).
    pub ts_ns: u64,
    /// Process (tgid) that was running.
    pub pid: u32,
    /// Thread (kernel tid) that was running.
    pub tid: u32,
    /// Short command name of that thread, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comm: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Control command opcode number (`cmd_op & 0xff`, same for legacy and ioctl-encoded).
pub type CtrlOpNr = u32;
/// I/O command opcode number (`cmd_op & 0xff`).
pub type IoCmdNr = u32;

#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// `ublk_ctrl_uring_cmd` entered. `dev_id` is u32::MAX for ADD_DEV with "pick an id".
    CtrlStart {
        dev_id: u32,
        /// Raw `cmd_op` as the server sent it (legacy or ioctl-encoded).
        cmd_op: u32,
        /// Printable name (`ADD_DEV`, `START_DEV`, ...).
        op: String,
        queue_id: u16,
        data0: u64,
    },
    /// `ublk_ctrl_uring_cmd` returned (kretprobe). `result` -11 (EAGAIN) is io_uring's
    /// non-blocking first try; the retry from io-wq gives the real result.
    CtrlDone {
        dev_id: u32,
        cmd_op: u32,
        op: String,
        result: i32,
        duration_ns: u64,
    },
    /// An I/O command reached `ublk_ch_uring_cmd` (entry; not yet accepted).
    IoCmd {
        dev_id: u32,
        q_id: u16,
        tag: u16,
        cmd_op: u32,
        /// `FETCH_REQ`, `COMMIT_AND_FETCH_REQ`, `NEED_GET_DATA`, ...
        op: String,
        /// `ublksrv_io_cmd.result` (the commit result: bytes or -errno).
        result: i32,
        addr: u64,
        issue_flags: u32,
    },
    /// The I/O command handler returned: `ret == -529` (-EIOCBQUEUED) means accepted and
    /// parked; anything else means the kernel rejected it.
    IoCmdDone {
        dev_id: u32,
        q_id: u16,
        tag: u16,
        cmd_op: u32,
        op: String,
        ret: i32,
        /// The call carried IO_URING_F_CANCEL: ring teardown, not a command.
        cancel: bool,
    },
    /// A BATCH_IO command (7.0+) returned: PREP_IO_CMDS (0 when every tag was readied),
    /// FETCH_IO_CMDS (-EIOCBQUEUED: the multishot fetch is armed) or COMMIT_IO_CMDS (the
    /// bytes of elements the kernel handled; `nr_elem * elem_bytes` when it took them all).
    /// Below 0 the kernel refused the whole command. The record path sees every one; the
    /// light path only PREP, FETCH and commits not taken whole.
    BatchCmd {
        dev_id: u32,
        q_id: u16,
        cmd_op: u32,
        op: String,
        nr_elem: u16,
        elem_bytes: u8,
        /// `UBLK_BATCH_F_*`.
        flags: u16,
        ret: i32,
        duration_ns: u64,
        /// A COMMIT not taken whole: the first element the kernel refused (its index, tag
        /// and result, read back from the server's buffer).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<RefusedElem>,
        /// The call carried IO_URING_F_CANCEL: ring teardown, not a command.
        cancel: bool,
    },
    /// A request was handed to the driver (`ublk_queue_rq(s)` or block_rq_issue on a ublk disk).
    QueueRq {
        dev_id: u32,
        q_id: u16,
        tag: u16,
        /// Block op name (`READ`, `WRITE`, `FLUSH`, `DISCARD`, `WRITE_ZEROES`, ...).
        op: String,
        sector: u64,
        bytes: u32,
        cmd_flags: u32,
        /// Where the kernel said it: `tracepoint:block_rq_issue` (the default request start),
        /// `kprobe:ublk_queue_rq(s)` (`record --probe ublk_queue_rq`), or `state-map` (rebuilt
        /// for a rare event on watch's state path). Absent in older recordings.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    /// The owner thread ran the delivery task work / the tag's CQE was posted.
    Delivered { dev_id: u32, q_id: u16, tag: u16 },
    /// Block layer tracepoints on a ublk disk.
    Block {
        dev_id: u32,
        q_id: u16,
        tag: u16,
        /// `insert`, `issue`, `complete`, `requeue`.
        stage: BlockStage,
        op: String,
        sector: u64,
        bytes: u32,
        /// block_rq_complete's error (0 or -errno).
        error: i32,
    },
    /// The probe side lost `count` events (ring buffer full); the stream has a gap here.
    Lost { count: u64 },
}

#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockStage {
    Insert,
    Issue,
    Complete,
    Requeue,
}

/// The first element of a COMMIT_IO_CMDS that the kernel refused.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedElem {
    pub index: u16,
    pub tag: u16,
    pub result: i32,
}

/// `-EIOCBQUEUED`: the I/O command handler accepted and parked the command.
pub const EIOCBQUEUED_RET: i32 = -529;

impl EventKind {
    /// (dev_id, q_id, tag) when the event is about one tag.
    pub fn tag_key(&self) -> Option<(u32, u16, u16)> {
        match *self {
            Self::IoCmd {
                dev_id, q_id, tag, ..
            }
            | Self::IoCmdDone {
                dev_id, q_id, tag, ..
            }
            | Self::QueueRq {
                dev_id, q_id, tag, ..
            }
            | Self::Delivered { dev_id, q_id, tag }
            | Self::Block {
                dev_id, q_id, tag, ..
            } => Some((dev_id, q_id, tag)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_round_trip_keeps_names() {
        let ev = TraceEvent {
            ts_ns: 5,
            pid: 10,
            tid: 11,
            comm: "fio".into(),
            kind: EventKind::QueueRq {
                dev_id: 0,
                q_id: 1,
                tag: 7,
                op: "READ".into(),
                sector: 8,
                bytes: 4096,
                cmd_flags: 0x800,
                source: None,
            },
        };
        let line = serde_json::to_string(&ev).expect("serializes");
        assert!(line.contains("\"event\":\"queue_rq\""), "{line}");
        assert!(line.contains("\"op\":\"READ\""), "{line}");
        let back: TraceEvent = serde_json::from_str(&line).expect("parses");
        assert_eq!(back, ev);
        assert_eq!(back.kind.tag_key(), Some((0, 1, 7)));
    }
}
