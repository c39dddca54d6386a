//! The driver's own state, read from kernel memory: what `ublk_drv` and blk-mq hold for each
//! device, queue and tag, as the ublk maintainers read it with drgn (ublksrv
//! `utils/dump_ublk.py`). No eBPF and nothing on the I/O path: user space reads
//! `/proc/kcore` at the address of `ublk_index_idr` (from `/proc/kallsyms`) with every offset
//! from BTF (vmlinux + `ublk_drv`).
//!
//! One walker per kernel structure, drgn style:
//! - [`kcore`]: the memory source ([`kcore::Memory`]; `/proc/kcore` or a synthetic image);
//! - [`layout`]: every offset and size, from BTF, with the fields this kernel lacks named;
//! - [`flags`]: the `UBLK_IO_FLAG_*` values per kernel version (they are `#define`s);
//! - [`xarray`]: `idr_for_each` over `ublk_index_idr`;
//! - `device`: `struct ublk_device` (dev_info, disk, request_queue, queue and tags pointers);
//! - `queue`: `struct ublk_queue` + its `ublk_io` array, and blk-mq's `tags->rqs[tag]`;
//! - [`reader`]: [`Reader`] (built once: layout + kcore fd + module address) and its
//!   `read(target, deadline)` per tick, plus [`probe`] for `doctor`.
//!
//! The output, [`DriverSnapshot`], is plain serde data for the pure model. A torn read of
//! live memory is expected: a tag counts only when two consecutive reads agree; the others
//! are listed as `changing`. A device freed while it is read is dropped with the reason.
use serde::{Deserialize, Serialize};

mod device;
pub mod flags;
pub mod kcore;
pub mod layout;
mod queue;
pub mod reader;
pub mod xarray;

#[cfg(test)]
mod tests;

pub use flags::{FlagsTable, IoFlags};
pub use reader::{DriverError, Probe, Reader, probe};

/// Schema version of the JSON form of [`DriverSnapshot`]. Bump on incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest `nr_hw_queues` / `queue_depth` a live device can have (UBLK_MAX_NR_QUEUES and
/// UBLK_MAX_QUEUE_DEPTH are both 4096): a bigger count is memory that is no longer a device.
pub const MAX_COUNT: u64 = 4096;

/// Which devices to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Dev(u32),
    All,
}

/// What the driver held for the devices read, at `taken_ns`.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverSnapshot {
    pub schema: u32,
    /// `uname -r`.
    pub kernel: String,
    /// CLOCK_MONOTONIC ns when the read started (the clock of `bpf_ktime_get_ns` and of
    /// `request.start_time_ns`).
    pub taken_ns: u64,
    /// How long the read took (both passes), µs of wall time.
    pub took_us: u64,
    /// The `UBLK_IO_FLAG_*` table row used to decode `ublk_io.flags`.
    pub flags_table: FlagsTable,
    /// Fields this kernel does not have ("ublk_io.task"): their values are absent, not 0.
    pub not_readable: Vec<String>,
    pub devices: Vec<DeviceState>,
    /// Devices seen in `ublk_index_idr` that could not be read through (removed while being
    /// read, or memory that no longer holds a device).
    pub dropped: Vec<Dropped>,
}

#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// The IDR index (the device id the driver allocated).
    pub dev_id: u64,
    pub reason: String,
}

/// `struct ublk_device` as the driver holds it.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    pub dev_id: u32,
    /// `ub->dev_info.state` (`UBLK_S_DEV_*`) and its name.
    pub state: u16,
    pub state_name: String,
    /// `ub->dev_info.flags` (`UBLK_F_*`).
    pub flags: u64,
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    /// `ub->dev_info.ublksrv_pid` as the driver stored it (init pid namespace).
    pub ublksrv_pid: i32,
    /// `ub->ub_disk` is set (START_DEV added the disk and it is not yet removed).
    pub has_disk: bool,
    /// `ub->nr_io_ready`, where the device keeps the count instead of each queue (6.17–6.18).
    pub nr_io_ready: Option<u32>,
    /// The disk's request_queue (shared by every hardware queue): `mq_freeze_depth` and
    /// `quiesce_depth`; absent without a disk or on a kernel without the field.
    pub mq_freeze_depth: Option<i32>,
    pub quiesce_depth: Option<i32>,
    pub queues: Vec<QueueState>,
}

/// One `struct ublk_queue`.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueState {
    pub q_id: u16,
    /// `ubq->ubq_daemon` (up to 6.15): the thread that FETCHed; absent on later kernels,
    /// where each tag has its own task.
    pub owner: Option<TaskRef>,
    pub canceling: Option<bool>,
    pub force_abort: Option<bool>,
    pub fail_io: Option<bool>,
    /// `ubq->nr_io_ready`: tags whose FETCH was accepted (where the queue has the count).
    pub nr_io_ready: Option<u32>,
    /// UBLK_F_BATCH_IO devices: the queue's fetch state (None on per-tag devices and on
    /// kernels whose layout lacks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchQueue>,
    /// Every tag whose two reads agreed, in tag order.
    pub tags: Vec<TagState>,
    /// Tags whose two reads disagreed (changing state while read).
    pub changing: Vec<u16>,
}

/// A BATCH_IO queue's fetch state. Requests started on the queue wait in the event FIFO
/// until a multishot FETCH_IO_CMDS dispatches their tags. The driver starts a dispatch only
/// when a request is queued or a fetch is armed: once the active fetch ends (-ENOBUFS when
/// its buffer is used up) the tags already in the FIFO wait, even with another fetch armed,
/// until the server arms one again or a new request comes.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchQueue {
    /// FETCH_IO_CMDS commands armed (`fcmd_head`; the larger count of the two reads).
    pub fetch_armed: u32,
    /// One of them is dispatching (`active_fcmd` set, in either read).
    pub fetch_active: bool,
    /// Tags in the event FIFO, not yet reported to the server (the smaller of the two reads).
    pub fifo_waiting: u32,
}

/// One tag: its `ublk_io` and, when one is in flight, blk-mq's request.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagState {
    pub tag: u16,
    pub view: TagView,
    pub flags: IoFlags,
    /// `io->res`: the last result the server committed (or set at abort).
    pub res: i32,
    /// A FETCH/COMMIT_AND_FETCH is parked in the driver (`io->cmd` set while ACTIVE).
    pub cmd_parked: bool,
    /// `io->task` (6.16+, the io's own daemon with PER_IO_DAEMON).
    pub task: Option<TaskRef>,
    /// `tag_set.tags[q]->rqs[tag]`, when it is this tag's live request.
    pub request: Option<RequestState>,
}

/// Where a tag is, decided from the driver's flags and blk-mq's request alone.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagView {
    /// ACTIVE with a parked command and no request: the server waits for I/O.
    Waiting,
    /// A request is in flight and the io is still ACTIVE: started, not yet delivered to
    /// the server (task work pending).
    Queued,
    /// OWNED_BY_SRV: delivered, not committed.
    InServer,
    /// NEED_GET_DATA: a WRITE waits for the server's buffer address.
    NeedGetData,
    /// ABORTED or CANCELED: the driver gave up on the command (teardown).
    Aborted,
    /// No flag set: no FETCH accepted for this tag (or reset after a commit/cancel).
    NotFetched,
    /// A combination the rules above do not name (see `flags`).
    Other,
}

impl TagView {
    /// The name `state` and the TUI print (as the JSON spells it).
    pub fn name(self) -> &'static str {
        match self {
            Self::Waiting => "WAITING",
            Self::Queued => "QUEUED",
            Self::InServer => "IN_SERVER",
            Self::NeedGetData => "NEED_GET_DATA",
            Self::Aborted => "ABORTED",
            Self::NotFetched => "NOT_FETCHED",
            Self::Other => "OTHER",
        }
    }
}

/// A blk-mq request that belongs to this (queue, tag).
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestState {
    /// `REQ_OP_*` name from BTF `enum req_op` (`READ`, `WRITE`, ...).
    pub op: String,
    pub cmd_flags: u32,
    pub sector: u64,
    pub bytes: u32,
    /// `rq->start_time_ns` (CLOCK_MONOTONIC, set at allocation; 0 when the queue does not
    /// account I/O); absent on a kernel without the field.
    pub start_time_ns: Option<u64>,
    pub state: RqState,
}

#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RqState {
    InFlight,
    Complete,
}

/// A task the driver points at.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRef {
    /// `task->pid`: the thread id.
    pub tid: i32,
    /// `task->tgid`: the process id.
    pub pid: i32,
    pub comm: String,
}

/// Why a walk stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error(transparent)]
    Mem(#[from] kcore::MemError),
    /// What was read cannot be what the layout says (freed or reused memory).
    #[error("inconsistent memory: {0}")]
    Garbage(String),
    #[error("deadline passed during the walk")]
    Deadline,
}

/// The view of a tag from its decoded flags, parked command and request.
pub fn tag_view(flags: &IoFlags, cmd_parked: bool, rq: Option<&RequestState>) -> TagView {
    use flags::*;
    let in_flight = rq.is_some_and(|r| r.state == RqState::InFlight);
    if flags.has(ABORTED) || flags.has(CANCELED) {
        TagView::Aborted
    } else if flags.has(NEED_GET_DATA) {
        TagView::NeedGetData
    } else if flags.has(OWNED_BY_SRV) {
        TagView::InServer
    } else if flags.has(ACTIVE) && in_flight {
        TagView::Queued
    } else if flags.has(ACTIVE) && cmd_parked && rq.is_none() {
        TagView::Waiting
    } else if flags.raw == 0 && rq.is_none() {
        TagView::NotFetched
    } else {
        TagView::Other
    }
}

impl QueueState {
    /// Tags that are not plain WAITING (what `state` prints by default).
    pub fn busy(&self) -> impl Iterator<Item = &TagState> {
        self.tags.iter().filter(|t| t.view != TagView::Waiting)
    }
}

impl DeviceState {
    /// LIVE with its disk, not frozen or quiesced, no queue canceling or aborting, and no
    /// request in flight for `age_ns` or longer (nor one whose start is unknown): nothing
    /// is waiting on it.
    pub fn is_calm(&self, now_ns: u64, age_ns: u64) -> bool {
        let young = |r: &RequestState| {
            r.state != RqState::InFlight
                || r.start_time_ns
                    .is_some_and(|s| s != 0 && now_ns.saturating_sub(s) < age_ns)
        };
        self.state == ublk_abi::UBLK_S_DEV_LIVE
            && self.has_disk
            && self.mq_freeze_depth.unwrap_or(0) == 0
            && self.quiesce_depth.unwrap_or(0) == 0
            && self.queues.iter().all(|q| {
                q.canceling != Some(true)
                    && q.force_abort != Some(true)
                    && q.tags.iter().all(|t| t.request.as_ref().is_none_or(young))
            })
    }
}

impl DriverSnapshot {
    /// The devices of this read that are calm ([`DeviceState::is_calm`]) at `now_ns`.
    pub fn calm_devices(&self, now_ns: u64, age_ns: u64) -> Vec<u32> {
        self.devices
            .iter()
            .filter(|d| d.is_calm(now_ns, age_ns))
            .map(|d| d.dev_id)
            .collect()
    }
}
