//! Synthetic event builders for model, diagnose and report tests.
use crate::event::{BlockStage, EIOCBQUEUED_RET, EventKind, TraceEvent};

pub const SRV_PID: u32 = 500;
pub const Q_TID: u32 = 501;
pub const MS: u64 = 1_000_000;

pub fn ev(ts_ns: u64, tid: u32, kind: EventKind) -> TraceEvent {
    TraceEvent {
        ts_ns,
        pid: if (SRV_PID..SRV_PID + 100).contains(&tid) {
            SRV_PID
        } else {
            tid
        },
        tid,
        comm: String::new(),
        kind,
    }
}

#[allow(clippy::too_many_arguments)] // a test builder: one argument per event field
fn io_pair(
    dev: u32,
    q: u16,
    tag: u16,
    ts: u64,
    tid: u32,
    nr: u32,
    op: &str,
    result: i32,
    ret: i32,
) -> [TraceEvent; 2] {
    [
        ev(
            ts,
            tid,
            EventKind::IoCmd {
                dev_id: dev,
                q_id: q,
                tag,
                cmd_op: 0xc010_7500 | nr,
                op: op.into(),
                result,
                addr: 0,
                issue_flags: 0,
            },
        ),
        ev(
            ts + 1000,
            tid,
            EventKind::IoCmdDone {
                dev_id: dev,
                q_id: q,
                tag,
                cmd_op: 0xc010_7500 | nr,
                op: op.into(),
                ret,
                cancel: false,
            },
        ),
    ]
}

pub fn fetch(dev: u32, q: u16, tag: u16, ts: u64, tid: u32) -> [TraceEvent; 2] {
    io_pair(dev, q, tag, ts, tid, 0x20, "FETCH_REQ", 0, EIOCBQUEUED_RET)
}
pub fn commit(dev: u32, q: u16, tag: u16, ts: u64, tid: u32, result: i32) -> [TraceEvent; 2] {
    io_pair(
        dev,
        q,
        tag,
        ts,
        tid,
        0x21,
        "COMMIT_AND_FETCH_REQ",
        result,
        EIOCBQUEUED_RET,
    )
}
pub fn commit_rejected(
    dev: u32,
    q: u16,
    tag: u16,
    ts: u64,
    tid: u32,
    errno: i32,
) -> [TraceEvent; 2] {
    io_pair(
        dev,
        q,
        tag,
        ts,
        tid,
        0x21,
        "COMMIT_AND_FETCH_REQ",
        4096,
        errno,
    )
}
pub fn cancel(dev: u32, q: u16, tag: u16, ts: u64, tid: u32) -> TraceEvent {
    ev(
        ts,
        tid,
        EventKind::IoCmdDone {
            dev_id: dev,
            q_id: q,
            tag,
            cmd_op: 0xc010_7520,
            op: "FETCH_REQ".into(),
            ret: 0,
            cancel: true,
        },
    )
}
/// A BATCH_IO command of queue `q` returned at `ts` after 10 µs: `op` PREP_IO_CMDS,
/// COMMIT_IO_CMDS or FETCH_IO_CMDS with `nr` 16-byte elements (2-byte for a fetch).
pub fn batch(
    dev: u32,
    q: u16,
    ts: u64,
    op: &str,
    nr: u16,
    ret: i32,
    refused: Option<crate::event::RefusedElem>,
) -> TraceEvent {
    let nr_op = match op {
        "PREP_IO_CMDS" => ublk_abi::UBLK_U_IO_PREP_IO_CMDS,
        "COMMIT_IO_CMDS" => ublk_abi::UBLK_U_IO_COMMIT_IO_CMDS,
        _ => ublk_abi::UBLK_U_IO_FETCH_IO_CMDS,
    };
    ev(
        ts,
        Q_TID,
        EventKind::BatchCmd {
            dev_id: dev,
            q_id: q,
            cmd_op: nr_op,
            op: op.into(),
            nr_elem: nr,
            elem_bytes: if op == "FETCH_IO_CMDS" { 2 } else { 16 },
            flags: 0,
            ret,
            duration_ns: 10_000,
            refused,
            cancel: false,
        },
    )
}

pub fn queue_rq(dev: u32, q: u16, tag: u16, ts: u64, op: &str, bytes: u32) -> TraceEvent {
    ev(
        ts,
        900,
        EventKind::QueueRq {
            dev_id: dev,
            q_id: q,
            tag,
            op: op.into(),
            sector: u64::from(tag) * 8,
            bytes,
            cmd_flags: 0,
            source: None,
        },
    )
}
pub fn delivered(dev: u32, q: u16, tag: u16, ts: u64, tid: u32) -> TraceEvent {
    ev(
        ts,
        tid,
        EventKind::Delivered {
            dev_id: dev,
            q_id: q,
            tag,
        },
    )
}
pub fn block(dev: u32, q: u16, tag: u16, ts: u64, stage: BlockStage, error: i32) -> TraceEvent {
    ev(
        ts,
        900,
        EventKind::Block {
            dev_id: dev,
            q_id: q,
            tag,
            stage,
            op: "READ".into(),
            sector: u64::from(tag) * 8,
            bytes: 4096,
            error,
        },
    )
}
pub fn ctrl_nr(op: &str) -> u32 {
    match op {
        "GET_DEV_INFO" => 0x02,
        "ADD_DEV" => 0x04,
        "DEL_DEV" => 0x05,
        "START_DEV" => 0x06,
        "STOP_DEV" => 0x07,
        "SET_PARAMS" => 0x08,
        _ => 0xff,
    }
}
pub fn ctrl_start(dev: u32, ts: u64, tid: u32, op: &str) -> TraceEvent {
    ev(
        ts,
        tid,
        EventKind::CtrlStart {
            dev_id: dev,
            cmd_op: 0xc020_7500 | ctrl_nr(op),
            op: op.into(),
            queue_id: u16::MAX,
            data0: 0,
        },
    )
}
pub fn ctrl_done(dev: u32, ts: u64, tid: u32, op: &str, result: i32) -> TraceEvent {
    ev(
        ts,
        tid,
        EventKind::CtrlDone {
            dev_id: dev,
            cmd_op: 0xc020_7500 | ctrl_nr(op),
            op: op.into(),
            result,
            duration_ns: 0,
        },
    )
}
pub fn lost(ts: u64, count: u64) -> TraceEvent {
    ev(ts, 0, EventKind::Lost { count })
}

/// One healthy 4 KiB read on (q, tag) starting at `t0`, served in 100 µs, with block events.
pub fn healthy_io(dev: u32, q: u16, tag: u16, t0: u64, tid: u32) -> Vec<TraceEvent> {
    let mut v = vec![
        queue_rq(dev, q, tag, t0, "READ", 4096),
        block(dev, q, tag, t0 + 1000, BlockStage::Issue, 0),
        delivered(dev, q, tag, t0 + 20_000, tid),
    ];
    let [c, d] = commit(dev, q, tag, t0 + 100_000, tid, 4096);
    v.push(c);
    v.push(block(dev, q, tag, t0 + 100_500, BlockStage::Complete, 0));
    v.push(d);
    v
}

/// A device set up in view: ADD, FETCH of every tag, START.
pub fn setup(dev: u32, queues: u16, depth: u16, t0: u64) -> Vec<TraceEvent> {
    let mut v = vec![
        ctrl_start(dev, t0, SRV_PID, "ADD_DEV"),
        ctrl_done(dev, t0 + 10, SRV_PID, "ADD_DEV", 0),
    ];
    for q in 0..queues {
        for t in 0..depth {
            v.extend(fetch(
                dev,
                q,
                t,
                t0 + 100 + u64::from(t),
                Q_TID + u32::from(q),
            ));
        }
    }
    v.push(ctrl_start(dev, t0 + 50_000, SRV_PID, "START_DEV"));
    v.push(ctrl_done(dev, t0 + 50_010, SRV_PID, "START_DEV", 0));
    v
}

/// A request of the driver's snapshot: a 4 KiB READ at sector 2048 started at `start`.
pub fn driver_rq(start: u64) -> crate::driver::RequestState {
    crate::driver::RequestState {
        op: "READ".into(),
        cmd_flags: 0,
        sector: 2048,
        bytes: 4096,
        start_time_ns: Some(start),
        state: crate::driver::RqState::InFlight,
    }
}

/// One tag of the driver's snapshot in `view` (a parked command when WAITING).
pub fn driver_tag(
    n: u16,
    view: crate::driver::TagView,
    request: Option<crate::driver::RequestState>,
) -> crate::driver::TagState {
    crate::driver::TagState {
        tag: n,
        view,
        flags: crate::driver::IoFlags {
            raw: 0,
            names: Vec::new(),
            unknown: 0,
        },
        res: 0,
        cmd_parked: view == crate::driver::TagView::Waiting,
        task: None,
        request,
    }
}

/// A read of the driver's memory: device 0, LIVE, one queue (owner [`Q_TID`]) of depth 4
/// holding `tags`.
pub fn driver_snap(
    taken_ns: u64,
    tags: Vec<crate::driver::TagState>,
) -> crate::driver::DriverSnapshot {
    use crate::driver::{DeviceState, DriverSnapshot, QueueState, TaskRef, flags};
    DriverSnapshot {
        schema: crate::driver::SCHEMA_VERSION,
        kernel: "test".into(),
        taken_ns,
        took_us: 10,
        flags_table: flags::describe(&flags::TABLE[0], true),
        not_readable: vec!["ublk_io.task".into()],
        devices: vec![DeviceState {
            dev_id: 0,
            state: 1,
            state_name: "LIVE".into(),
            flags: 0,
            nr_hw_queues: 1,
            queue_depth: 4,
            ublksrv_pid: SRV_PID as i32,
            has_disk: true,
            nr_io_ready: None,
            mq_freeze_depth: Some(0),
            quiesce_depth: Some(0),
            queues: vec![QueueState {
                q_id: 0,
                owner: Some(TaskRef {
                    tid: Q_TID as i32,
                    pid: SRV_PID as i32,
                    comm: "srv-q0".into(),
                }),
                canceling: Some(false),
                force_abort: Some(false),
                fail_io: None,
                nr_io_ready: Some(4),
                batch: None,
                tags,
                changing: vec![],
            }],
        }],
        dropped: vec![],
    }
}
