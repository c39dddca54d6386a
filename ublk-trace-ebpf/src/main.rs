//! eBPF programs of ublk-trace: kprobes on the ublk driver, raw block tracepoints.
//!
//! No logic beyond reading a few fields, filtering and copying: every offset comes from the
//! `OFFSETS` global that user space fills from BTF at load time (aya-ebpf has no CO-RE), and
//! every record is one [`RawEvent`] in the `EVENTS` ring buffer. A failed `reserve` (ring
//! full) is counted in `COUNTERS[COUNTER_DROPPED]`, so a gap in the stream is never silent.
//!
//! Cost (DESIGN "Two eBPF paths"): per-I/O programs return at once unless
//! `SWITCHES[SWITCH_STREAM]` (event path: records to the ring, which do not wake the
//! reader) or `SWITCHES[SWITCH_STATE]` (state path: the `TAGS` per-tag map, read by user
//! space once per tick) is on, or `SWITCHES[SWITCH_LIGHT]` (light path: where user space
//! reads every tag's state from the driver's own memory, only what memory cannot show, see
//! `latmap`). Control commands (rare, and the evidence for a wedged START/STOP/DEL) are
//! always reported.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user,
    },
    macros::{kprobe, kretprobe, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use ublk_trace_common::event::*;
use ublk_trace_common::latmap::{LAT_BUCKETS, LAT_MAX_ENTRIES, LatHist, lat_bucket};
use ublk_trace_common::offsets::{NO_OFFSET, Offsets};
use ublk_trace_common::tagmap::{KernelTag, TAGS_MAX_ENTRIES, tag_key};

#[unsafe(no_mangle)]
static OFFSETS: Global<Offsets> = Global::new(Offsets::UNSET);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NR_COUNTERS, 0);
#[map]
static SWITCHES: Array<u32> = Array::with_max_entries(NR_SWITCHES, 0);
/// Control commands between entry and return, by pid_tgid (entry and return run on the
/// same thread; the EAGAIN first try and the io-wq retry are separate pairs).
#[map]
static CTRL_INFLIGHT: HashMap<u64, RawEvent> = HashMap::with_max_entries(1024, 0);
/// I/O commands between entry and return, by pid_tgid: the rare ones (FETCH_REQ may sleep
/// on a mutex and return on another CPU).
#[map]
static IO_INFLIGHT: HashMap<u64, RawEvent> = HashMap::with_max_entries(4096, 0);
/// The COMMIT_AND_FETCH_REQ between entry and return on this CPU (one per I/O: a hash insert,
/// lookup and delete per commit cost about 1 us each under emulation). The commit path does
/// not sleep, so its return runs on the entry's CPU; the slot names its thread and time, and
/// a return that does not match it (a preempted, migrated thread) counts as unpaired.
#[map]
static IO_COMMIT_SLOT: PerCpuArray<RawEvent> = PerCpuArray::with_max_entries(1, 0);
/// A slot entry older than this is left over from a return that ran elsewhere.
const SLOT_STALE_NS: u64 = 50_000_000;

/// Per-(dev, queue, tag) state for readers that do not stream (see `tagmap`).
#[map]
static TAGS: HashMap<u64, KernelTag> = HashMap::with_max_entries(TAGS_MAX_ENTRIES, 0);

/// Per-(dev, queue) completion histograms of the light path (see `latmap`).
#[map]
static LATENCY: PerCpuHashMap<u64, LatHist> = PerCpuHashMap::with_max_entries(LAT_MAX_ENTRIES, 0);
/// One zeroed histogram to create `LATENCY` entries from (a map value, not 300 bytes of
/// this program's 512-byte stack).
#[map]
static LAT_ZERO: Array<LatHist> = Array::with_max_entries(1, 0);

/// Longest `ublk_queue_rqs` list walked (the plug flushes at 32-64 requests).
const MAX_RQ_LIST: u32 = 64;

#[inline(always)]
fn count(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while running.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn switch(idx: u32) -> u32 {
    SWITCHES.get(idx).copied().unwrap_or(0)
}

#[inline(always)]
fn streaming() -> bool {
    switch(SWITCH_STREAM) == 1
}

#[inline(always)]
fn state_on() -> bool {
    switch(SWITCH_STATE) == 1
}

/// Per-I/O programs have work to do: someone streams, or the state map is kept.
#[inline(always)]
fn active() -> bool {
    streaming() || state_on()
}

#[inline(always)]
fn light() -> bool {
    switch(SWITCH_LIGHT) == 1
}

#[inline(always)]
fn dev_wanted(dev_id: u32) -> bool {
    let f = switch(SWITCH_DEV_FILTER);
    f == 0 || f.wrapping_sub(1) == dev_id
}

/// Read a `T` at `base + off`; `None` for a null base or an offset this kernel lacks.
#[inline(always)]
fn rd<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == NO_OFFSET {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies through the helper and faults safely on a bad
    // address; the pointer is never dereferenced directly.
    match unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(COUNTER_READ_FAILED);
            None
        }
    }
}

#[inline(always)]
fn rd2<T>(base: u64, off1: u32, off2: u32) -> Option<T> {
    if off1 == NO_OFFSET || off2 == NO_OFFSET {
        return None;
    }
    rd(base, off1 + off2)
}

#[inline(always)]
fn new_event(kind: u32) -> RawEvent {
    with_comm(new_event_nocomm(kind))
}

/// A record without the task's name: what the state map needs (the name is copied only
/// into records that go to the ring, see `with_comm`).
#[inline(always)]
fn new_event_nocomm(kind: u32) -> RawEvent {
    RawEvent {
        ts_ns: unsafe_ktime(),
        pid_tgid: bpf_get_current_pid_tgid(),
        kind,
        dev_id: u32::MAX,
        ..RawEvent::default()
    }
}

/// `ev` with the current task's name unless it has one (call in the task the record is
/// about).
#[inline(always)]
fn with_comm(mut ev: RawEvent) -> RawEvent {
    if ev.comm[0] == 0 {
        ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
    ev
}

#[inline(always)]
fn unsafe_ktime() -> u64 {
    // SAFETY: a plain helper call without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Default ring size (user space may override it at load time).
const RING_BYTES: u32 = 4 << 20;
// bpf_ringbuf_submit / bpf_ringbuf_query flags (include/uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

/// Write one record. Control commands wake the reader at once (rare, and a START_DEV that
/// hangs must show up now). Per-I/O records do not: a wake-up per record costs more than
/// the probe itself, so the reader picks them up on its poll timeout, or when the ring is a
/// quarter full.
#[inline(always)]
fn emit(ev: &RawEvent) {
    let flags = if ev.kind == KIND_CTRL_START || ev.kind == KIND_CTRL_DONE {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA) >= EVENTS.query(BPF_RB_RING_SIZE) / 4 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    match EVENTS.reserve::<RawEvent>(0) {
        Some(mut slot) => {
            slot.write(*ev);
            slot.submit(flags);
        }
        None => {
            count(COUNTER_DROPPED);
            if ev.kind < NR_COUNTERS - COUNTER_DROPPED_KIND {
                count(COUNTER_DROPPED_KIND + ev.kind);
            }
        }
    }
}

/// A per-I/O record: to the ring when streaming, into the tag map when keeping state.
#[inline(always)]
fn publish(ev: &RawEvent) {
    publish_to(ev, streaming(), state_on());
}

/// Whether a streamed record of (q_id, tag) passes `SWITCH_TAG_FILTER` (a queue-level
/// record, tag u16::MAX, passes for its queue).
/// `ev` went to the ring already (the tag streamed for the detail view): the light path does
/// not send it twice.
#[inline(always)]
fn streamed(ev: &RawEvent) -> bool {
    streaming() && tag_wanted(ev)
}

#[inline(always)]
fn tag_wanted(ev: &RawEvent) -> bool {
    let f = switch(SWITCH_TAG_FILTER);
    if f == 0 {
        return true;
    }
    let want = f.wrapping_sub(1);
    switch(SWITCH_TAG_FILTER_DEV).wrapping_sub(1) == ev.dev_id
        && (want >> 16) as u16 == ev.q_id
        && (want as u16 == ev.tag || ev.tag == u16::MAX)
}

/// `ev` may lack the task name (`new_event_nocomm`): a streamed copy gets it here.
#[inline(always)]
fn publish_to(ev: &RawEvent, stream: bool, state: bool) {
    if stream && tag_wanted(ev) {
        emit(&with_comm(*ev));
    }
    if state {
        update_tag(ev, !stream);
    }
}

/// What the state path sends to the ring with streaming off (`SWITCH_RARE_SLOW_MS`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rare {
    No,
    /// The record itself.
    Record,
    /// A commit: the request's start rebuilt from the map, then the record.
    WithStart,
}

/// The tag's slot in `TAGS`, created zeroed on first use.
#[inline(always)]
fn tag_slot(dev_id: u32, q_id: u16, tag: u16) -> Option<*mut KernelTag> {
    let key = tag_key(dev_id, q_id, tag);
    if let Some(p) = TAGS.get_ptr_mut(&key) {
        return Some(p);
    }
    // BPF_NOEXIST: another CPU may have created it meanwhile; either way it exists now.
    let _ = TAGS.insert(&key, &KernelTag::default(), 1);
    TAGS.get_ptr_mut(&key)
}

/// Apply one record to its tag's state (the same transitions the user-space model makes).
/// With `rare`, the records the diagnosis needs one by one also go to the ring (see
/// `SWITCH_RARE_SLOW_MS`).
#[inline(always)]
fn update_tag(ev: &RawEvent, rare: bool) {
    if ev.dev_id == u32::MAX {
        return;
    }
    let Some(t) = tag_slot(ev.dev_id, ev.q_id, ev.tag) else {
        return;
    };
    // SAFETY: `t` points into a hash-map value owned by the map; fields are plain integers
    // and a torn update between CPUs only mixes two valid values of one tag.
    let t = unsafe { &mut *t };
    let slow_ms = if rare { switch(SWITCH_RARE_SLOW_MS) } else { 0 };
    let mut send = Rare::No;
    match ev.kind {
        KIND_IO_CMD => {
            let o = OFFSETS.load();
            if o.issue_flag_cancel != 0 && ev.flags & o.issue_flag_cancel != 0 {
                return;
            }
            let nr = ev.cmd_op & 0xff;
            if ev.ret != EIOCBQUEUED {
                t.rejected += 1;
                t.reject_ret = ev.ret;
                t.reject_cmd_op = ev.cmd_op;
                if slow_ms != 0 {
                    emit(&with_comm(*ev));
                }
                return;
            }
            t.owner_tid = ev.pid_tgid as u32;
            t.fetch_ns = ev.ts_ns;
            if nr == IO_COMMIT_AND_FETCH_REQ {
                let started = t.queue_rq_ns;
                let slow =
                    started != 0 && ev.ts_ns.wrapping_sub(started) >= slow_ms as u64 * 1_000_000;
                if slow_ms != 0 && (ev.result <= 0 || slow) {
                    send = Rare::WithStart;
                }
                t.commit_ns = ev.ts_ns;
                t.commits += 1;
                t.commit_result = ev.result;
            } else if nr == IO_FETCH_REQ {
                t.fetches += 1;
            }
        }
        KIND_QUEUE_RQ => {
            t.queue_rq_ns = ev.ts_ns;
            t.sector = ev.arg0;
            t.bytes = ev.bytes;
            t.cmd_flags = ev.flags;
        }
        KIND_DELIVERED => t.delivered_ns = ev.ts_ns,
        KIND_BLOCK_COMPLETE => {
            t.complete_ns = ev.ts_ns;
            if slow_ms != 0 && ev.result != 0 {
                send = Rare::Record;
            }
        }
        KIND_BLOCK_REQUEUE => {
            t.requeue_ns = ev.ts_ns;
            t.requeues += 1;
            if slow_ms != 0 {
                send = Rare::Record;
            }
        }
        _ => {}
    }
    if send == Rare::WithStart && t.queue_rq_ns != 0 {
        let start = RawEvent {
            ts_ns: t.queue_rq_ns,
            kind: KIND_QUEUE_RQ,
            dev_id: ev.dev_id,
            q_id: ev.q_id,
            tag: ev.tag,
            arg0: t.sector,
            arg1: QUEUE_RQ_FROM_STATE,
            bytes: t.bytes,
            flags: t.cmd_flags,
            ..RawEvent::default()
        };
        emit(&start);
    }
    if send != Rare::No {
        emit(&with_comm(*ev));
    }
}

/// -EIOCBQUEUED: the I/O command handler accepted and parked the command.
const EIOCBQUEUED: i32 = -529;
/// UBLK_IO_FETCH_REQ / UBLK_IO_COMMIT_AND_FETCH_REQ (`cmd_op & 0xff`, legacy or ioctl).
const IO_FETCH_REQ: u32 = 0x20;
const IO_COMMIT_AND_FETCH_REQ: u32 = 0x21;
/// UBLK_F_BATCH_IO's COMMIT_IO_CMDS (7.0+; the batch opcodes: `is_batch_cmd`).
const IO_COMMIT_IO_CMDS: u32 = 0x26;

/// `cmd->file->private_data` is the `struct ublk_device` of a /dev/ublkcN command.
#[inline(always)]
fn dev_id_of_cmd(o: &Offsets, cmd: u64) -> u32 {
    let file: u64 = rd(cmd, o.uc_file).unwrap_or(0);
    let ub: u64 = rd(file, o.file_private_data).unwrap_or(0);
    rd(ub, o.ub_dev_id).unwrap_or(u32::MAX)
}

/// `rq->q->tag_set->driver_data` is the `struct ublk_device` (ublk_add_tag_set; the
/// queue's `queuedata` is NULL).
#[inline(always)]
fn dev_id_of_q(o: &Offsets, q: u64) -> u32 {
    let set: u64 = rd(q, o.q_tag_set).unwrap_or(0);
    let ub: u64 = rd(set, o.set_driver_data).unwrap_or(0);
    rd(ub, o.ub_dev_id).unwrap_or(u32::MAX)
}

#[inline(always)]
fn dev_id_of_rq(o: &Offsets, rq: u64) -> u32 {
    dev_id_of_q(o, rd(rq, o.rq_q).unwrap_or(0))
}

/// Fill the request fields of `ev` from a `struct request *`.
#[inline(always)]
fn fill_rq(o: &Offsets, ev: &mut RawEvent, rq: u64, q_id: Option<u16>) {
    ev.q_id = match q_id {
        Some(q) => q,
        None => {
            let hctx: u64 = rd(rq, o.rq_mq_hctx).unwrap_or(0);
            rd::<u32>(hctx, o.hctx_queue_num).unwrap_or(u32::MAX) as u16
        }
    };
    // One read instead of four where the fields sit as they have for years.
    if rq_head_fits(o) {
        if let Some(h) = rd::<RqHead>(rq, o.rq_cmd_flags) {
            ev.tag = h.tag as u16;
            ev.arg0 = h.sector;
            ev.bytes = h.data_len;
            ev.flags = h.cmd_flags;
        } else {
            ev.tag = u16::MAX;
        }
        return;
    }
    ev.tag = rd::<i32>(rq, o.rq_tag).unwrap_or(-1) as u16;
    ev.arg0 = rd(rq, o.rq_sector).unwrap_or(0);
    ev.bytes = rd(rq, o.rq_data_len).unwrap_or(0);
    ev.flags = rd(rq, o.rq_cmd_flags).unwrap_or(0);
}

/// Whether this kernel's `struct request` has the [`RqHead`] layout (the offsets are its own,
/// from BTF: the layout is checked, not assumed).
#[inline(always)]
fn rq_head_fits(o: &Offsets) -> bool {
    o.rq_tag == o.rq_cmd_flags.wrapping_add(8)
        && o.rq_data_len == o.rq_cmd_flags.wrapping_add(20)
        && o.rq_sector == o.rq_cmd_flags.wrapping_add(24)
}

/// `struct request` from `cmd_flags` to `__sector` when they are at +0/+8/+20/+24.
#[repr(C)]
#[derive(Clone, Copy)]
struct RqHead {
    cmd_flags: u32,
    _rq_flags: u32,
    tag: i32,
    _internal_tag: i32,
    _timeout: u32,
    data_len: u32,
    sector: u64,
}

/// `struct ublksrv_io_cmd` (UAPI: q_id, tag, result, addr at 0/2/4/8).
#[repr(C)]
#[derive(Clone, Copy)]
struct IoCmdArgs {
    q_id: u16,
    tag: u16,
    result: i32,
    addr: u64,
}

/// A request event unless the device is filtered out.
#[inline(always)]
fn emit_rq(kind: u32, rq: u64, q_id: Option<u16>) {
    let o = OFFSETS.load();
    let dev_id = dev_id_of_rq(&o, rq);
    if !dev_wanted(dev_id) {
        return;
    }
    let mut ev = new_event_nocomm(kind);
    ev.dev_id = dev_id;
    fill_rq(&o, &mut ev, rq, q_id);
    publish(&ev);
}

// ---------------------------------------------------------------------------------------
// Control commands: ublk_ctrl_uring_cmd(struct io_uring_cmd *cmd, unsigned int issue_flags)
// ---------------------------------------------------------------------------------------

#[kprobe]
pub fn ctrl_enter(ctx: ProbeContext) -> u32 {
    let o = OFFSETS.load();
    let cmd: u64 = ctx.arg(0).unwrap_or(0);
    let mut ev = new_event(KIND_CTRL_START);
    ev.cmd_op = rd(cmd, o.uc_cmd_op).unwrap_or(0);
    ev.flags = ctx.arg::<u64>(1).unwrap_or(0) as u32;
    // The 32-byte struct ublksrv_ctrl_cmd sits in the SQE's command area.
    let sqe: u64 = rd(cmd, o.uc_sqe).unwrap_or(0);
    ev.dev_id = rd2(sqe, o.sqe_cmd, o.ctrl_dev_id).unwrap_or(u32::MAX);
    ev.q_id = rd2(sqe, o.sqe_cmd, o.ctrl_queue_id).unwrap_or(u16::MAX);
    ev.arg0 = rd2(sqe, o.sqe_cmd, o.ctrl_data).unwrap_or(0);
    let _ = CTRL_INFLIGHT.insert(ev.pid_tgid, ev, 0);
    emit(&ev);
    0
}

#[kretprobe]
pub fn ctrl_exit(ctx: RetProbeContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once and the entry removed; no other program
    // writes this key (it is this thread's own id).
    let Some(start) = (unsafe { CTRL_INFLIGHT.get(&key) }).copied() else {
        count(COUNTER_UNPAIRED);
        return 0;
    };
    let _ = CTRL_INFLIGHT.remove(&key);
    let mut ev = start;
    ev.kind = KIND_CTRL_DONE;
    ev.ts_ns = unsafe_ktime();
    ev.arg1 = ev.ts_ns.wrapping_sub(start.ts_ns);
    ev.ret = ctx.ret::<i64>() as i32;
    emit(&ev);
    0
}

// ---------------------------------------------------------------------------------------
// I/O commands: ublk_ch_uring_cmd(struct io_uring_cmd *cmd, unsigned int issue_flags)
// ---------------------------------------------------------------------------------------

#[kprobe]
pub fn io_enter(ctx: ProbeContext) -> u32 {
    if !active() && !light() {
        return 0;
    }
    let o = OFFSETS.load();
    let cmd: u64 = ctx.arg(0).unwrap_or(0);
    let dev_id = dev_id_of_cmd(&o, cmd);
    if !dev_wanted(dev_id) {
        return 0;
    }
    // The task name only for records that go to the ring (io_exit runs in this task).
    let mut ev = if streaming() {
        new_event(KIND_IO_CMD)
    } else {
        new_event_nocomm(KIND_IO_CMD)
    };
    ev.dev_id = dev_id;
    ev.flags = ctx.arg::<u64>(1).unwrap_or(0) as u32;
    ev.cmd_op = rd(cmd, o.uc_cmd_op).unwrap_or(0);
    // struct ublksrv_io_cmd {q_id, tag, result, addr} in the SQE's command area: one read
    // when the module's BTF has the UAPI layout (it always has; checked anyway).
    let sqe: u64 = rd(cmd, o.uc_sqe).unwrap_or(0);
    if o.io_q_id == 0 && o.io_tag == 2 && o.io_result == 4 && o.io_addr == 8 {
        match rd::<IoCmdArgs>(sqe, o.sqe_cmd) {
            Some(a) => {
                ev.q_id = a.q_id;
                ev.tag = a.tag;
                ev.result = a.result;
                ev.arg0 = a.addr;
            }
            None => {
                ev.q_id = u16::MAX;
                ev.tag = u16::MAX;
            }
        }
    } else {
        ev.q_id = rd2(sqe, o.sqe_cmd, o.io_q_id).unwrap_or(u16::MAX);
        ev.tag = rd2(sqe, o.sqe_cmd, o.io_tag).unwrap_or(u16::MAX);
        ev.result = rd2(sqe, o.sqe_cmd, o.io_result).unwrap_or(0);
        ev.arg0 = rd2(sqe, o.sqe_cmd, o.io_addr).unwrap_or(0);
    }
    if is_batch_cmd(ev.cmd_op) {
        // The same command area holds a `struct ublk_batch_io` (its q_id where
        // ublksrv_io_cmd has one): the record carries it as KIND_IO_CMD's batch layout.
        let flags: u16 = rd2(sqe, o.sqe_cmd, o.batch_flags).unwrap_or(0);
        let nr_elem: u16 = rd2(sqe, o.sqe_cmd, o.batch_nr_elem).unwrap_or(0);
        let elem_bytes: u8 = rd2(sqe, o.sqe_cmd, o.batch_elem_bytes).unwrap_or(0);
        ev.bytes = batch_bytes(nr_elem, elem_bytes, flags);
        ev.tag = u16::MAX;
        ev.result = 0;
        ev.arg0 = rd(sqe, o.sqe_addr).unwrap_or(0);
    }
    if ev.cmd_op & 0xff == IO_COMMIT_AND_FETCH_REQ {
        if let Some(slot) = IO_COMMIT_SLOT.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; a program runs to its end on one CPU.
            unsafe { *slot = ev };
            return 0;
        }
    } else if let Some(slot) = IO_COMMIT_SLOT.get_ptr_mut(0) {
        // SAFETY: as above. This thread enters anew: a commit entry of it left here is stale.
        unsafe {
            if (*slot).pid_tgid == ev.pid_tgid {
                (*slot).ts_ns = 0;
            }
        }
    }
    let _ = IO_INFLIGHT.insert(ev.pid_tgid, ev, 0);
    0
}

/// The commit this thread entered on this CPU, taken out of the slot.
#[inline(always)]
fn take_commit_slot(key: u64, now: u64) -> Option<RawEvent> {
    let slot = IO_COMMIT_SLOT.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, read and cleared within this program run.
    unsafe {
        let e = *slot;
        if e.pid_tgid != key || e.ts_ns == 0 {
            return None;
        }
        (*slot).ts_ns = 0;
        (now.wrapping_sub(e.ts_ns) < SLOT_STALE_NS).then_some(e)
    }
}

/// One record per command, written at return: the return value decides whether the kernel
/// accepted it (-EIOCBQUEUED), which is the only transition that counts.
#[kretprobe]
pub fn io_exit(ctx: RetProbeContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    let now = unsafe_ktime();
    let start = match take_commit_slot(key, now) {
        Some(e) => e,
        None => {
            // SAFETY: as in ctrl_exit: copied out, then removed; only this thread uses the key.
            let Some(e) = (unsafe { IO_INFLIGHT.get(&key) }).copied() else {
                if active() {
                    count(COUNTER_UNPAIRED);
                }
                return 0;
            };
            let _ = IO_INFLIGHT.remove(&key);
            e
        }
    };
    let mut ev = start;
    ev.arg1 = now.wrapping_sub(start.ts_ns);
    ev.ret = ctx.ret::<i64>() as i32;
    if is_batch_cmd(ev.cmd_op) {
        batch_exit(&mut ev);
        return 0;
    }
    publish(&ev);
    if light() {
        light_io(&ev);
    }
    0
}

/// A batch command returned. It names no tag and keeps no per-tag state; it goes to the
/// ring when streamed, and otherwise when it says something memory cannot: every PREP and
/// FETCH (a few per queue) and every COMMIT the kernel did not take whole. Such a commit
/// returns the bytes of elements it handled before the first it refused (or the error when
/// that was the first): that element's tag and result are read back from the server's
/// buffer, in this task's memory.
#[inline(always)]
fn batch_exit(ev: &mut RawEvent) {
    let o = OFFSETS.load();
    let (nr_elem, elem_bytes) = (ev.bytes & 0xffff, (ev.bytes >> 16) & 0xff);
    let total = nr_elem * elem_bytes;
    let commit = ev.cmd_op & 0xff == IO_COMMIT_IO_CMDS;
    let whole = commit && ev.ret >= 0 && ev.ret as u32 == total;
    let at = if ev.ret > 0 { ev.ret as u32 } else { 0 };
    if commit && !whole && at < total && ev.arg0 != 0 {
        let base = ev.arg0 + at as u64;
        if o.elem_tag != NO_OFFSET {
            // SAFETY: the helper copies from this task's user memory and fails safely.
            if let Ok(t) = unsafe { bpf_probe_read_user((base + o.elem_tag as u64) as *const u16) }
            {
                ev.tag = t;
            }
        }
        if o.elem_result != NO_OFFSET {
            // SAFETY: as above.
            if let Ok(r) =
                unsafe { bpf_probe_read_user((base + o.elem_result as u64) as *const i32) }
            {
                ev.result = r;
            }
        }
    }
    if streamed(ev) || !whole {
        emit(&with_comm(*ev));
    }
}

/// The light path's share of a command: memory keeps no trace of a rejected command, and
/// the next request overwrites a negative result, so those two go to the ring.
#[inline(always)]
fn light_io(ev: &RawEvent) {
    let o = OFFSETS.load();
    if o.issue_flag_cancel != 0 && ev.flags & o.issue_flag_cancel != 0 {
        return;
    }
    let bad = ev.cmd_op & 0xff == IO_COMMIT_AND_FETCH_REQ && ev.result < 0;
    if (ev.ret != EIOCBQUEUED || bad) && !streamed(ev) {
        emit(&with_comm(*ev));
    }
}

// ---------------------------------------------------------------------------------------
// Requests handed to the driver.
// ---------------------------------------------------------------------------------------

/// `ublk_queue_rq(struct blk_mq_hw_ctx *hctx, const struct blk_mq_queue_data *bd)`.
#[kprobe]
pub fn queue_rq(ctx: ProbeContext) -> u32 {
    if !active() {
        return 0;
    }
    let o = OFFSETS.load();
    let hctx: u64 = ctx.arg(0).unwrap_or(0);
    let bd: u64 = ctx.arg(1).unwrap_or(0);
    let rq: u64 = rd(bd, o.bd_rq).unwrap_or(0);
    let q_id = rd::<u32>(hctx, o.hctx_queue_num).map(|q| q as u16);
    emit_rq(KIND_QUEUE_RQ, rq, q_id);
    0
}

/// State of the `ublk_queue_rqs` list walk: the next request (0 = end of list).
#[repr(C)]
struct RqWalk {
    rq: u64,
}

/// One step of the walk, called by `bpf_loop`; returns 1 to stop.
extern "C" fn walk_one(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `RqWalk` that queue_rqs passed to bpf_loop (its own stack).
    let walk = unsafe { &mut *(ctx as *mut RqWalk) };
    if walk.rq == 0 {
        return 1;
    }
    emit_rq(KIND_QUEUE_RQ, walk.rq, None);
    let o = OFFSETS.load();
    walk.rq = rd(walk.rq, o.rq_next).unwrap_or(0);
    0
}

/// `ublk_queue_rqs(struct rq_list *rqlist)` (6.15+): walk the singly linked list, bounded.
#[kprobe]
pub fn queue_rqs(ctx: ProbeContext) -> u32 {
    if !active() {
        return 0;
    }
    let o = OFFSETS.load();
    let list: u64 = ctx.arg(0).unwrap_or(0);
    // Before 6.13 the argument was a `struct request **`: the head is at offset 0.
    let head_off = if o.rq_list_head == NO_OFFSET {
        0
    } else {
        o.rq_list_head
    };
    let mut walk = RqWalk {
        rq: rd(list, head_off).unwrap_or(0),
    };
    // bpf_loop (5.17+): the verifier checks the callback once instead of unrolling 64
    // copies of the body, which took seconds natively and minutes in an emulated guest.
    // SAFETY: `walk` lives on this stack frame for the whole call; the callback only
    // touches it through the context pointer the helper hands back.
    unsafe {
        bpf_loop(
            MAX_RQ_LIST,
            walk_one as *mut c_void,
            &mut walk as *mut RqWalk as *mut c_void,
            0,
        )
    };
    let rq = walk.rq;
    if rq != 0 {
        count(COUNTER_RQ_LIST_TRUNCATED);
    }
    0
}

/// `ublk_dispatch_req(.., struct request *req, ..)` (6.15+): the request is being handed to
/// the server thread (task work ran). User space attaches the variant whose argument index
/// matches `req` in the function's BTF prototype: a runtime index into pt_regs compiles to a
/// computed ctx offset, which the 6.18 verifier rejects ("dereference of modified ctx ptr").
#[inline(always)]
fn dispatch(rq: Option<u64>) -> u32 {
    if active() {
        emit_rq(KIND_DELIVERED, rq.unwrap_or(0), None);
    }
    0
}

#[kprobe]
pub fn dispatch_req0(ctx: ProbeContext) -> u32 {
    dispatch(ctx.arg(0))
}

#[kprobe]
pub fn dispatch_req1(ctx: ProbeContext) -> u32 {
    dispatch(ctx.arg(1))
}

#[kprobe]
pub fn dispatch_req2(ctx: ProbeContext) -> u32 {
    dispatch(ctx.arg(2))
}

/// `ublk_rq_task_work_cb(struct io_uring_cmd *cmd, unsigned issue_flags)` (≤ 6.14): the
/// queue's pending requests are being delivered as a batch; the tag is not known here.
#[kprobe]
pub fn rq_task_work(ctx: ProbeContext) -> u32 {
    if !active() {
        return 0;
    }
    let o = OFFSETS.load();
    let cmd: u64 = ctx.arg(0).unwrap_or(0);
    let dev_id = dev_id_of_cmd(&o, cmd);
    if !dev_wanted(dev_id) {
        return 0;
    }
    let mut ev = new_event_nocomm(KIND_DELIVERED);
    ev.dev_id = dev_id;
    let ubq: u64 = rd2(cmd, o.uc_pdu, o.pdu_ubq).unwrap_or(0);
    ev.q_id = rd::<i32>(ubq, o.ubq_q_id).unwrap_or(-1) as u16;
    ev.tag = u16::MAX;
    publish(&ev);
    0
}

// ---------------------------------------------------------------------------------------
// Block layer (raw tracepoints: arg 0 is the struct request *).
// ---------------------------------------------------------------------------------------

/// Whether `q` is a ublk disk's queue, and the first 8 bytes of its disk name. Filter by
/// name: ublk's disks are always "ublkb<N>", which needs no symbol address (kallsyms may
/// hide module data symbols) and works for every ublk mq_ops variant (7.x adds a BATCH_IO
/// one).
#[inline(always)]
fn ublk_disk(o: &Offsets, q: u64) -> (bool, [u8; 8]) {
    let disk: u64 = rd(q, o.q_disk).unwrap_or(0);
    let name: [u8; 8] = rd(disk, o.disk_name).unwrap_or([0; 8]);
    // "ublkb" compared byte by byte: no memcmp in BPF.
    let is_ublk =
        name[0] == b'u' && name[1] == b'b' && name[2] == b'l' && name[3] == b'k' && name[4] == b'b';
    (is_ublk, name)
}

/// A block-layer record for `rq`: `kind` on a ublk disk (to the ring if `stream`, into the
/// state map if `state`), `other_kind` on any other disk while streaming with
/// `SWITCH_ALL_DISKS` (0 = none).
#[inline(always)]
fn block_event(
    kind: u32,
    other_kind: u32,
    rq: u64,
    error: u8,
    nr_bytes: Option<u32>,
    stream: bool,
    state: bool,
) {
    let Some((ev, is_ublk)) = block_record(kind, other_kind, rq, error, nr_bytes) else {
        return;
    };
    if is_ublk {
        publish_to(&ev, stream, state);
    } else {
        emit(&with_comm(ev));
    }
}

/// The record of [`block_event`], and whether it is about a ublk disk; None when filtered out.
#[inline(always)]
fn block_record(
    kind: u32,
    other_kind: u32,
    rq: u64,
    error: u8,
    nr_bytes: Option<u32>,
) -> Option<(RawEvent, bool)> {
    let o = OFFSETS.load();
    let q: u64 = rd(rq, o.rq_q).unwrap_or(0);
    let (is_ublk, name) = ublk_disk(&o, q);
    let dev_id = if is_ublk {
        let d = dev_id_of_q(&o, q);
        if !dev_wanted(d) {
            return None;
        }
        d
    } else {
        if other_kind == 0 || !streaming() || switch(SWITCH_ALL_DISKS) != 1 {
            return None;
        }
        u32::MAX
    };
    let mut ev = new_event_nocomm(if is_ublk { kind } else { other_kind });
    ev.dev_id = dev_id;
    fill_rq(&o, &mut ev, rq, None);
    ev.arg1 = if is_ublk && kind == KIND_QUEUE_RQ {
        QUEUE_RQ_FROM_ISSUE
    } else {
        u64::from_le_bytes(name)
    };
    ev.result = error as i32;
    if let Some(n) = nr_bytes {
        ev.bytes = n;
    }
    Some((ev, is_ublk))
}

#[raw_tracepoint(tracepoint = "block_rq_insert")]
pub fn blk_insert(ctx: RawTracePointContext) -> i32 {
    if streaming() {
        block_event(
            KIND_BLOCK_INSERT,
            KIND_BLOCK_INSERT,
            ctx.arg(0),
            0,
            None,
            true,
            false,
        );
    }
    0
}

/// ublk starts every request inside ->queue_rq(s) (`blk_mq_start_request`), so on a ublk
/// disk this is the request start: with `SWITCH_ISSUE_STARTS` it becomes KIND_QUEUE_RQ,
/// without a kprobe trap per I/O. `SWITCH_BLOCK_ISSUE` asks for KIND_BLOCK_ISSUE records:
/// of other disks (with `SWITCH_ALL_DISKS`), and of ublk disks when the queue_rq kprobes
/// report the start.
#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn blk_issue(ctx: RawTracePointContext) -> i32 {
    let issue = switch(SWITCH_BLOCK_ISSUE) == 1;
    let (stream, state) = (streaming(), state_on());
    if switch(SWITCH_ISSUE_STARTS) == 1 {
        if stream || state {
            let other = if issue { KIND_BLOCK_ISSUE } else { 0 };
            block_event(KIND_QUEUE_RQ, other, ctx.arg(0), 0, None, stream, state);
        }
    } else if issue && stream {
        block_event(
            KIND_BLOCK_ISSUE,
            KIND_BLOCK_ISSUE,
            ctx.arg(0),
            0,
            None,
            true,
            false,
        );
    }
    0
}

/// `block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`.
#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn blk_complete(ctx: RawTracePointContext) -> i32 {
    let error: u64 = ctx.arg(1);
    let nr_bytes: u64 = ctx.arg(2);
    if light() {
        light_complete(ctx.arg(0), error as u8, nr_bytes as u32);
    }
    let (stream, state) = (streaming(), state_on());
    if !stream && !state {
        return 0;
    }
    if let Some(ev) = commit_completion(ctx.arg(0), error as u8, nr_bytes as u32) {
        publish_to(&ev, stream, state);
        return 0;
    }
    block_event(
        KIND_BLOCK_COMPLETE,
        KIND_BLOCK_COMPLETE,
        ctx.arg(0),
        error as u8,
        Some(nr_bytes as u32),
        stream,
        state,
    );
    0
}

/// The completion that a COMMIT_AND_FETCH_REQ makes inline, inside `ublk_ch_uring_cmd` on
/// the committing thread and CPU (the common case: one per I/O, on the server's CPU). Its
/// device, queue and tag are the commit's, still in this CPU's slot, so only the request
/// head is read (to check the tag) instead of nine reads through the queue, disk, tag set
/// and hardware context. Anything else (aborts, deferred completions, other disks) takes
/// the full path.
#[inline(always)]
fn commit_completion(rq: u64, error: u8, nr_bytes: u32) -> Option<RawEvent> {
    let slot = IO_COMMIT_SLOT.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, only read here.
    let c = unsafe { *slot };
    if c.ts_ns == 0 || c.pid_tgid != bpf_get_current_pid_tgid() {
        return None;
    }
    let o = OFFSETS.load();
    if !rq_head_fits(&o) {
        return None;
    }
    let h = rd::<RqHead>(rq, o.rq_cmd_flags)?;
    if h.tag as u16 != c.tag {
        return None;
    }
    let mut ev = new_event_nocomm(KIND_BLOCK_COMPLETE);
    ev.dev_id = c.dev_id;
    ev.q_id = c.q_id;
    ev.tag = c.tag;
    ev.arg0 = h.sector;
    ev.flags = h.cmd_flags;
    ev.bytes = nr_bytes;
    ev.result = error as i32;
    // The disk name (block_event's arg1) is read by user space only for other disks.
    Some(ev)
}

/// The light path's completion: into its queue's histogram; to the ring when it failed or
/// took `SWITCH_RARE_SLOW_MS` or more since the request started (after a
/// `KIND_BLOCK_ISSUE` record dated at that start, so the reader has the request).
#[inline(always)]
fn light_complete(rq: u64, error: u8, nr_bytes: u32) {
    let ev = match commit_completion(rq, error, nr_bytes) {
        Some(ev) => ev,
        None => match block_record(KIND_BLOCK_COMPLETE, 0, rq, error, Some(nr_bytes)) {
            Some((ev, true)) => ev,
            _ => return,
        },
    };
    let o = OFFSETS.load();
    let start: u64 = rd(rq, o.rq_start_time_ns).unwrap_or(0);
    let latency = (start != 0 && ev.ts_ns > start).then(|| ev.ts_ns - start);
    add_latency(ev.dev_id, ev.q_id, latency);
    let slow_ms = switch(SWITCH_RARE_SLOW_MS) as u64;
    let slow = slow_ms != 0 && latency.is_some_and(|l| l >= slow_ms * 1_000_000);
    if (error == 0 && !slow) || streamed(&ev) {
        return;
    }
    if start != 0 {
        let mut issue = ev;
        issue.kind = KIND_BLOCK_ISSUE;
        issue.ts_ns = start;
        issue.pid_tgid = 0;
        issue.result = 0;
        emit(&issue);
    }
    emit(&with_comm(ev));
}

/// Count one completion of (dev, queue), with its latency when the request has a start.
#[inline(always)]
fn add_latency(dev_id: u32, q_id: u16, latency: Option<u64>) {
    let key = tag_key(dev_id, q_id, u16::MAX);
    let h = match LATENCY.get_ptr_mut(key) {
        Some(h) => h,
        None => {
            let Some(zero) = LAT_ZERO.get_ptr(0) else {
                return;
            };
            // SAFETY: a map value of LAT_ZERO, never written; the helper copies it.
            // BPF_NOEXIST: another CPU may have created the entry; it exists either way.
            let _ = LATENCY.insert(key, unsafe { &*zero }, 1);
            match LATENCY.get_ptr_mut(key) {
                Some(h) => h,
                None => return,
            }
        }
    };
    // SAFETY: this CPU's copy of the entry (a per-CPU map): no other writer.
    unsafe {
        (*h).count += 1;
        if let Some(l) = latency {
            (*h).sum_ns += l;
            let b = lat_bucket(l);
            if b < LAT_BUCKETS {
                (*h).buckets[b] += 1;
            }
        }
    }
}

#[raw_tracepoint(tracepoint = "block_rq_requeue")]
pub fn blk_requeue(ctx: RawTracePointContext) -> i32 {
    if light() {
        if let Some((ev, true)) = block_record(KIND_BLOCK_REQUEUE, 0, ctx.arg(0), 0, None)
            && !streamed(&ev)
        {
            emit(&with_comm(ev));
        }
    }
    let (stream, state) = (streaming(), state_on());
    if stream || state {
        block_event(
            KIND_BLOCK_REQUEUE,
            KIND_BLOCK_REQUEUE,
            ctx.arg(0),
            0,
            None,
            stream,
            state,
        );
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
