//! Control-command timeline: every `ublk_ctrl_uring_cmd` entry/return, paired by thread.
//! io_uring first runs each command inline with IO_URING_F_NONBLOCK, which returns -EAGAIN,
//! then retries it from an io-wq worker (another tid of the same process): both calls are one
//! command here, pending from the first entry until the real result.
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Commands kept (oldest completed ones leave first).
pub const TIMELINE_LEN: usize = 512;
const EAGAIN: i32 = -11;
/// `ADD_DEV` with "pick an id".
pub const ANY_DEV: u32 = u32::MAX;

/// One control command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtrlCmd {
    /// `None` for an ADD_DEV that asked the kernel to pick the id and was not resolved yet.
    pub dev_id: Option<u32>,
    pub op: String,
    /// `cmd_op & 0xff`.
    pub op_nr: u32,
    pub pid: u32,
    /// Thread of the latest attempt (the io-wq worker after an -EAGAIN).
    pub tid: u32,
    pub comm: String,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub result: Option<i32>,
    /// Inline attempts that returned -EAGAIN (normal: one per command on most kernels).
    pub eagain: u32,
    /// Between an -EAGAIN return and the io-wq retry's entry.
    pub awaiting_retry: bool,
    /// The thread currently inside the handler (entered, not returned).
    #[serde(skip)]
    inside_tid: Option<u32>,
}

impl CtrlCmd {
    /// Entered and not finished (an -EAGAIN retry still counts as pending).
    pub fn pending(&self) -> bool {
        self.end_ns.is_none()
    }
    pub fn age_ns(&self, now_ns: u64) -> u64 {
        self.end_ns.unwrap_or(now_ns).saturating_sub(self.start_ns)
    }
    pub fn is_teardown(&self) -> bool {
        matches!(self.op.as_str(), "STOP_DEV" | "DEL_DEV" | "DEL_DEV_ASYNC")
    }
}

/// What the control events looked like for the model's per-device facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlOutcome {
    Started,
    Finished { result: i32 },
    Retrying,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtrlTimeline {
    cmds: VecDeque<CtrlCmd>,
    /// Commands dropped from the front to keep the timeline bounded.
    pub dropped: u64,
}

pub struct StartArgs<'a> {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: &'a str,
    pub dev_id: u32,
    pub op_nr: u32,
    pub op: &'a str,
}

impl CtrlTimeline {
    pub fn iter(&self) -> impl Iterator<Item = &CtrlCmd> {
        self.cmds.iter()
    }
    pub fn pending(&self) -> impl Iterator<Item = &CtrlCmd> {
        self.cmds.iter().filter(|c| c.pending())
    }

    /// `ublk_ctrl_uring_cmd` entered.
    pub fn start(&mut self, a: &StartArgs<'_>) -> CtrlOutcome {
        let dev = (a.dev_id != ANY_DEV).then_some(a.dev_id);
        // The io-wq retry of a command whose inline attempt returned -EAGAIN.
        if let Some(c) =
            self.cmds.iter_mut().rev().find(|c| {
                c.awaiting_retry && c.pid == a.pid && c.op_nr == a.op_nr && c.dev_id == dev
            })
        {
            c.awaiting_retry = false;
            c.tid = a.tid;
            c.inside_tid = Some(a.tid);
            return CtrlOutcome::Started;
        }
        if let Some(d) = dev {
            self.resolve_add(a.pid, d);
        }
        self.push(CtrlCmd {
            dev_id: dev,
            op: a.op.to_string(),
            op_nr: a.op_nr,
            pid: a.pid,
            tid: a.tid,
            comm: a.comm.to_string(),
            start_ns: a.ts_ns,
            end_ns: None,
            result: None,
            eagain: 0,
            awaiting_retry: false,
            inside_tid: Some(a.tid),
        });
        CtrlOutcome::Started
    }

    /// An unresolved ADD_DEV of this process gets the id of its next command.
    fn resolve_add(&mut self, pid: u32, dev_id: u32) {
        if let Some(c) = self
            .cmds
            .iter_mut()
            .rev()
            .find(|c| c.pid == pid && c.dev_id.is_none() && c.op == "ADD_DEV")
        {
            c.dev_id = Some(dev_id);
        }
    }

    fn push(&mut self, c: CtrlCmd) {
        if self.cmds.len() >= TIMELINE_LEN {
            // Drop the oldest finished command; if all are pending, the oldest one.
            let idx = self.cmds.iter().position(|c| !c.pending()).unwrap_or(0);
            self.cmds.remove(idx);
            self.dropped += 1;
        }
        // Keep start order even when events arrive reordered.
        let at = self.cmds.partition_point(|x| x.start_ns <= c.start_ns);
        self.cmds.insert(at, c);
    }

    /// `ublk_ctrl_uring_cmd` returned on thread `tid` (entry and return share the thread).
    pub fn done(
        &mut self,
        ts_ns: u64,
        tid: u32,
        dev_id: u32,
        op_nr: u32,
        result: i32,
    ) -> CtrlOutcome {
        let find = |cmds: &VecDeque<CtrlCmd>| {
            cmds.iter()
                .rposition(|c| c.inside_tid == Some(tid) && c.op_nr == op_nr)
        };
        if find(&self.cmds).is_none() {
            // Entry lost or reordered after the return: record what we know.
            self.push(CtrlCmd {
                dev_id: (dev_id != ANY_DEV).then_some(dev_id),
                op: format!("op {op_nr:#x}"),
                op_nr,
                pid: 0,
                tid,
                comm: String::new(),
                start_ns: ts_ns,
                end_ns: None,
                result: None,
                eagain: 0,
                awaiting_retry: false,
                inside_tid: Some(tid),
            });
        }
        let Some(c) = find(&self.cmds).and_then(|i| self.cmds.get_mut(i)) else {
            return CtrlOutcome::Started;
        };
        c.inside_tid = None;
        if result == EAGAIN {
            c.eagain += 1;
            c.awaiting_retry = true;
            return CtrlOutcome::Retrying;
        }
        c.end_ns = Some(ts_ns.max(c.start_ns));
        c.result = Some(result);
        CtrlOutcome::Finished { result }
    }

    pub fn len(&self) -> usize {
        self.cmds.len()
    }
    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(t: &mut CtrlTimeline, ts: u64, tid: u32, dev: u32, op: &str, nr: u32) {
        t.start(&StartArgs {
            ts_ns: ts,
            pid: 100,
            tid,
            comm: "srv",
            dev_id: dev,
            op_nr: nr,
            op,
        });
    }

    #[test]
    fn eagain_then_io_wq_retry_is_one_command() {
        let mut t = CtrlTimeline::default();
        start(&mut t, 10, 100, 0, "START_DEV", 0x06);
        assert_eq!(t.done(11, 100, 0, 0x06, -11), CtrlOutcome::Retrying);
        assert_eq!(t.pending().count(), 1, "still pending while io-wq retries");
        start(&mut t, 12, 105, 0, "START_DEV", 0x06);
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.done(50, 105, 0, 0x06, 0),
            CtrlOutcome::Finished { result: 0 }
        );
        let c = t.iter().next().expect("one command");
        assert_eq!(
            (c.start_ns, c.end_ns, c.eagain, c.tid),
            (10, Some(50), 1, 105)
        );
        assert_eq!(t.pending().count(), 0);
    }

    #[test]
    fn start_without_return_stays_pending() {
        let mut t = CtrlTimeline::default();
        start(&mut t, 10, 100, 1, "DEL_DEV", 0x05);
        let c = t.pending().next().expect("pending");
        assert!(c.is_teardown());
        assert_eq!(c.age_ns(5010), 5000);
    }

    #[test]
    fn add_dev_gets_its_id_from_the_next_command() {
        let mut t = CtrlTimeline::default();
        start(&mut t, 10, 100, ANY_DEV, "ADD_DEV", 0x04);
        t.done(11, 100, ANY_DEV, 0x04, 0);
        start(&mut t, 12, 100, 7, "SET_PARAMS", 0x08);
        assert_eq!(t.iter().next().and_then(|c| c.dev_id), Some(7));
    }

    #[test]
    fn lone_return_is_recorded_and_timeline_is_bounded() {
        let mut t = CtrlTimeline::default();
        assert_eq!(
            t.done(5, 9, 0, 0x02, 0),
            CtrlOutcome::Finished { result: 0 }
        );
        assert_eq!(t.len(), 1);
        for i in 0..(TIMELINE_LEN as u64 + 10) {
            start(&mut t, 100 + i, 1, 0, "GET_DEV_INFO", 0x02);
            t.done(100 + i, 1, 0, 0x02, 0);
        }
        assert_eq!(t.len(), TIMELINE_LEN);
        assert_eq!(t.dropped, 11);
    }
}
