//! The raw record every eBPF program writes into the `EVENTS` ring buffer, and the maps'
//! names. User space (`ublk-trace` `probe/`) decodes it into typed `TraceEvent`s; it never
//! reinterprets the bytes as this struct (it decodes field by field with the offsets below),
//! so a short or foreign record is an error, not undefined behaviour.
//!
//! One layout for all kinds keeps the eBPF side trivial (reserve, fill, submit). Which fields
//! mean what depends on [`RawEvent::kind`], see each `KIND_*` constant.

/// Name of the `RingBuf` map that carries [`RawEvent`]s.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the `PerCpuArray<u64>` map of counters, indexed by `COUNTER_*`.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the `Array<u32>` map of runtime switches, indexed by `SWITCH_*`.
pub const SWITCHES_MAP: &str = "SWITCHES";
/// Name of the `.rodata` global holding [`crate::offsets::Offsets`].
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Counter: events not written because the ring buffer was full (reserve failed).
pub const COUNTER_DROPPED: u32 = 0;
/// Counter: kretprobes that found no stashed entry (map full or the tracer attached mid-call).
pub const COUNTER_UNPAIRED: u32 = 1;
/// Counter: `ublk_queue_rqs` lists longer than the bounded walk (requests not reported).
pub const COUNTER_RQ_LIST_TRUNCATED: u32 = 2;
/// Counter: failed kernel reads (`bpf_probe_read_kernel`); non-zero means an offset is wrong.
pub const COUNTER_READ_FAILED: u32 = 3;
/// Counters `COUNTER_DROPPED_KIND + kind`: drops per `KIND_*`, so a consumer can check
/// conservation per kind (seen + dropped == emitted).
pub const COUNTER_DROPPED_KIND: u32 = 16;
pub const NR_COUNTERS: u32 = 32;

/// Switch: 1 = stream events to the ring buffer (record, detail view); 0 = stay quiet.
/// Streaming every I/O costs user-space CPU per event (DESIGN "Two eBPF paths"), so it is
/// only on while someone reads it.
pub const SWITCH_STREAM: u32 = 0;
/// Switch: per-I/O events only for device `value - 1`; 0 (the map's initial value) = every
/// device. Control commands are always reported (ADD_DEV has no device id yet).
pub const SWITCH_DEV_FILTER: u32 = 1;
/// Switch: 1 = block tracepoints report every disk, not only `ublkb*` (tests on hosts
/// without ublk, e.g. a loop device). Then `dev_id` is meaningless and `arg1` carries the
/// first 8 bytes of the disk name.
pub const SWITCH_ALL_DISKS: u32 = 2;
/// Switch: 1 = report block_rq_issue. Redundant with `ublk_queue_rq(s)` (ublk starts each
/// request there), so user space enables it only when those kprobes are not attached.
pub const SWITCH_BLOCK_ISSUE: u32 = 3;
/// Switch: 1 = keep the per-tag state map (`tagmap`) up to date, independent of streaming.
pub const SWITCH_STATE: u32 = 4;
/// Switch: 1 = block_rq_issue on a ublk disk is the request start: it is reported as
/// [`KIND_QUEUE_RQ`] (with `arg1` = [`QUEUE_RQ_FROM_ISSUE`]) and updates the state map.
/// ublk starts every request inside `->queue_rq(s)` (`blk_mq_start_request`), so the raw
/// tracepoint sees the same request as a kprobe on `ublk_queue_rq(s)` at a fraction of the
/// cost (no trap, no list walk). User space sets it when those kprobes are not attached.
pub const SWITCH_ISSUE_STARTS: u32 = 5;
/// Switch: non-zero = with streaming off, the state path still sends the rare per-I/O
/// records the diagnosis needs one by one: rejected commands, commits with a result <= 0 or
/// that came this many milliseconds or more after the request started (each preceded by a
/// [`KIND_QUEUE_RQ`] record rebuilt from the state map, `arg1` = [`QUEUE_RQ_FROM_STATE`]),
/// failed completions and requeues. 0 = none.
pub const SWITCH_RARE_SLOW_MS: u32 = 6;
/// Switch: 1 = the light path (watch's default where the driver's memory is read, see
/// [`crate::latmap`]): per-I/O programs keep no per-tag state; they send only what memory
/// cannot show, one record at a time: rejected commands, commits with a result < 0, failed
/// completions, requeues and completions `SWITCH_RARE_SLOW_MS` or more after the request
/// started (each after a [`KIND_BLOCK_ISSUE`] record dated at the request's start); and
/// block_rq_complete adds every completion to its queue's latency histogram.
pub const SWITCH_LIGHT: u32 = 7;
/// Switch: streamed per-I/O records only for `(q_id << 16 | tag) + 1` of device
/// `SWITCH_TAG_FILTER_DEV - 1` (the TUI's detail view follows one tag); 0 = every tag. The
/// state map and the light path's records are not filtered.
pub const SWITCH_TAG_FILTER: u32 = 8;
pub const SWITCH_TAG_FILTER_DEV: u32 = 9;
pub const NR_SWITCHES: u32 = 10;

/// `arg1` of a [`KIND_QUEUE_RQ`] record taken from block_rq_issue (the kprobes leave it 0).
pub const QUEUE_RQ_FROM_ISSUE: u64 = 1;
/// `arg1` of a [`KIND_QUEUE_RQ`] record rebuilt from the state map for a rare commit: the
/// request's start as the map kept it (`pid_tgid` 0, no comm: the submitter is not known).
pub const QUEUE_RQ_FROM_STATE: u64 = 2;

/// `ublk_ctrl_uring_cmd` entered. dev_id/q_id/data0(arg0) from `struct ublksrv_ctrl_cmd`.
pub const KIND_CTRL_START: u32 = 1;
/// `ublk_ctrl_uring_cmd` returned: `ret`, `arg1` = duration ns, the rest as at entry.
pub const KIND_CTRL_DONE: u32 = 2;
/// The I/O command handler returned. One record for entry and return (halves ring traffic):
/// `ts_ns` = entry, `arg1` = duration ns, `arg0` = `ublksrv_io_cmd.addr`, `result` =
/// `ublksrv_io_cmd.result`, `flags` = issue_flags, `ret` = the handler's return value.
pub const KIND_IO_CMD: u32 = 3;
/// A KIND_IO_CMD record of a BATCH_IO command (PREP/COMMIT/FETCH_IO_CMDS, 7.0+) has its own
/// layout: `q_id`; `bytes` = [`batch_bytes`] of its `struct ublk_batch_io`; `arg0` = the
/// element buffer (`sqe->addr`); and for a COMMIT the kernel did not take whole, `tag` and
/// `result` of the first element it refused (`tag` u16::MAX otherwise).
pub const fn batch_bytes(nr_elem: u16, elem_bytes: u8, flags: u16) -> u32 {
    nr_elem as u32 | (elem_bytes as u32) << 16 | ((flags & 0xff) as u32) << 24
}

/// `cmd_op` is one of UBLK_F_BATCH_IO's PREP_IO_CMDS (0x25), COMMIT_IO_CMDS (0x26) or
/// FETCH_IO_CMDS (0x27) (`cmd_op & 0xff`, as the per-tag opcodes are matched).
pub const fn is_batch_cmd(cmd_op: u32) -> bool {
    matches!(cmd_op & 0xff, 0x25..=0x27)
}

/// `(nr_elem, elem_bytes, flags)` of [`batch_bytes`].
pub const fn batch_fields(bytes: u32) -> (u16, u8, u16) {
    (bytes as u16, (bytes >> 16) as u8, (bytes >> 24) as u16)
}
/// A request reached `ublk_queue_rq(s)` (kprobe), or was started on a ublk disk
/// (block_rq_issue, `arg1` = [`QUEUE_RQ_FROM_ISSUE`]): `arg0` = sector, `bytes`, `flags` =
/// cmd_flags.
pub const KIND_QUEUE_RQ: u32 = 4;
/// The delivery task work ran for (q_id, tag); tag == u16::MAX means "a batch of the queue"
/// (≤ 6.14's `ublk_rq_task_work_cb` drains every pending request of the queue).
pub const KIND_DELIVERED: u32 = 5;
/// Raw block tracepoints on a ublk disk: `arg0` = sector, `arg1` = first 8 bytes of the disk
/// name, `bytes`, `flags` = cmd_flags, `result` = blk_status_t (complete only).
pub const KIND_BLOCK_INSERT: u32 = 6;
pub const KIND_BLOCK_ISSUE: u32 = 7;
pub const KIND_BLOCK_COMPLETE: u32 = 8;
pub const KIND_BLOCK_REQUEUE: u32 = 9;

/// One ring-buffer record. `#[repr(C)]`, no implicit padding (size asserted).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawEvent {
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// bpf_get_current_pid_tgid(): tgid << 32 | tid.
    pub pid_tgid: u64,
    pub arg0: u64,
    pub arg1: u64,
    /// `KIND_*`.
    pub kind: u32,
    pub dev_id: u32,
    /// Raw `cmd_op` of a control or I/O command.
    pub cmd_op: u32,
    /// issue_flags (commands) or `request.cmd_flags` (requests).
    pub flags: u32,
    pub result: i32,
    pub ret: i32,
    pub q_id: u16,
    pub tag: u16,
    pub bytes: u32,
    /// bpf_get_current_comm(), NUL padded.
    pub comm: [u8; 16],
}

pub const RAW_EVENT_BYTES: usize = 80;
const _: () = assert!(core::mem::size_of::<RawEvent>() == RAW_EVENT_BYTES);

// Field offsets for decoding from bytes (kept next to the struct so they cannot drift).
pub const OFF_TS_NS: usize = core::mem::offset_of!(RawEvent, ts_ns);
pub const OFF_PID_TGID: usize = core::mem::offset_of!(RawEvent, pid_tgid);
pub const OFF_ARG0: usize = core::mem::offset_of!(RawEvent, arg0);
pub const OFF_ARG1: usize = core::mem::offset_of!(RawEvent, arg1);
pub const OFF_KIND: usize = core::mem::offset_of!(RawEvent, kind);
pub const OFF_DEV_ID: usize = core::mem::offset_of!(RawEvent, dev_id);
pub const OFF_CMD_OP: usize = core::mem::offset_of!(RawEvent, cmd_op);
pub const OFF_FLAGS: usize = core::mem::offset_of!(RawEvent, flags);
pub const OFF_RESULT: usize = core::mem::offset_of!(RawEvent, result);
pub const OFF_RET: usize = core::mem::offset_of!(RawEvent, ret);
pub const OFF_Q_ID: usize = core::mem::offset_of!(RawEvent, q_id);
pub const OFF_TAG: usize = core::mem::offset_of!(RawEvent, tag);
pub const OFF_BYTES: usize = core::mem::offset_of!(RawEvent, bytes);
pub const OFF_COMM: usize = core::mem::offset_of!(RawEvent, comm);

impl RawEvent {
    /// Encode as the eBPF side lays it out in memory (little-endian); used by tests and
    /// synthetic sources.
    pub fn to_le_bytes(&self) -> [u8; RAW_EVENT_BYTES] {
        let mut b = [0u8; RAW_EVENT_BYTES];
        b[OFF_TS_NS..OFF_TS_NS + 8].copy_from_slice(&self.ts_ns.to_le_bytes());
        b[OFF_PID_TGID..OFF_PID_TGID + 8].copy_from_slice(&self.pid_tgid.to_le_bytes());
        b[OFF_ARG0..OFF_ARG0 + 8].copy_from_slice(&self.arg0.to_le_bytes());
        b[OFF_ARG1..OFF_ARG1 + 8].copy_from_slice(&self.arg1.to_le_bytes());
        b[OFF_KIND..OFF_KIND + 4].copy_from_slice(&self.kind.to_le_bytes());
        b[OFF_DEV_ID..OFF_DEV_ID + 4].copy_from_slice(&self.dev_id.to_le_bytes());
        b[OFF_CMD_OP..OFF_CMD_OP + 4].copy_from_slice(&self.cmd_op.to_le_bytes());
        b[OFF_FLAGS..OFF_FLAGS + 4].copy_from_slice(&self.flags.to_le_bytes());
        b[OFF_RESULT..OFF_RESULT + 4].copy_from_slice(&self.result.to_le_bytes());
        b[OFF_RET..OFF_RET + 4].copy_from_slice(&self.ret.to_le_bytes());
        b[OFF_Q_ID..OFF_Q_ID + 2].copy_from_slice(&self.q_id.to_le_bytes());
        b[OFF_TAG..OFF_TAG + 2].copy_from_slice(&self.tag.to_le_bytes());
        b[OFF_BYTES..OFF_BYTES + 4].copy_from_slice(&self.bytes.to_le_bytes());
        b[OFF_COMM..OFF_COMM + 16].copy_from_slice(&self.comm);
        b
    }

    /// Decode from a ring-buffer record; `None` when it is shorter than a `RawEvent`.
    pub fn from_le_bytes(b: &[u8]) -> Option<Self> {
        fn u64_at(b: &[u8], o: usize) -> Option<u64> {
            Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
        }
        fn u32_at(b: &[u8], o: usize) -> Option<u32> {
            Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
        }
        fn u16_at(b: &[u8], o: usize) -> Option<u16> {
            Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
        }
        Some(Self {
            ts_ns: u64_at(b, OFF_TS_NS)?,
            pid_tgid: u64_at(b, OFF_PID_TGID)?,
            arg0: u64_at(b, OFF_ARG0)?,
            arg1: u64_at(b, OFF_ARG1)?,
            kind: u32_at(b, OFF_KIND)?,
            dev_id: u32_at(b, OFF_DEV_ID)?,
            cmd_op: u32_at(b, OFF_CMD_OP)?,
            flags: u32_at(b, OFF_FLAGS)?,
            result: u32_at(b, OFF_RESULT)? as i32,
            ret: u32_at(b, OFF_RET)? as i32,
            q_id: u16_at(b, OFF_Q_ID)?,
            tag: u16_at(b, OFF_TAG)?,
            bytes: u32_at(b, OFF_BYTES)?,
            comm: b.get(OFF_COMM..OFF_COMM + 16)?.try_into().ok()?,
        })
    }
}

#[cfg(feature = "user")]
// SAFETY: RawEvent is #[repr(C)], Copy, made only of integers and has no padding (size asserted).
unsafe impl aya::Pod for RawEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_short_record_rejected() {
        let ev = RawEvent {
            ts_ns: 1,
            pid_tgid: (7 << 32) | 9,
            arg0: 0xdead_beef_0000,
            arg1: 3,
            kind: KIND_IO_CMD,
            dev_id: 2,
            cmd_op: 0xc010_7521,
            flags: 0x8000_0011,
            result: -5,
            ret: -529,
            q_id: 1,
            tag: 63,
            bytes: 4096,
            comm: *b"ublk-server\0\0\0\0\0",
        };
        let b = ev.to_le_bytes();
        assert_eq!(RawEvent::from_le_bytes(&b), Some(ev));
        assert_eq!(RawEvent::from_le_bytes(&b[..RAW_EVENT_BYTES - 1]), None);
        // The encoding must match the in-memory layout the eBPF side writes.
        // SAFETY: RawEvent is repr(C) plain integers without padding; reading it as bytes is sound.
        let mem: [u8; RAW_EVENT_BYTES] = unsafe { core::mem::transmute(ev) };
        assert_eq!(mem, b);
    }
}
