//! State of a ublk device read without eBPF, so that attaching *after* a hang still works.
//!
//! A [`DeviceSnapshot`] is plain serde data: what each source (GET_DEV_INFO, blk-mq debugfs,
//! `/sys/block/ublkbN/inflight`, procfs, io_uring fdinfo, the server's tag-state file, the kernel
//! log) said at one moment, plus the sources that failed or timed out ([`SourceError`]; a
//! timed-out read is itself evidence that something is stuck). No source alone is enough (see
//! DESIGN.md "Snapshot sources"), so every source is optional and the model combines them.
//!
//! API (for `watch`/`diagnose`):
//! - [`list_devices`]`()` -> ids of ublk devices (from `/sys/class/ublk-char/ublkcN` and
//!   `/sys/block/ublkbN`);
//! - [`take`]`(dev_id, deadline)` -> [`DeviceSnapshot`]; never opens `/dev/ublkbN` or
//!   `/dev/ublkcN`, and every read that can block runs under the deadline.
//! - `model::Model::apply_snapshot(&snapshot, now_ns)` feeds it to the model.
//!
//! Parsers are pure functions over strings (one module per source, host-tested with the exact
//! text measured in a 6.12 guest); the readers around them are thin.
use serde::{Deserialize, Serialize};

pub mod blkmq;
pub mod deadline;
pub mod devinfo;
pub mod fdinfo;
pub mod kmsg;
pub mod procfs;
pub mod read;
pub mod series;
pub mod tagfile;

pub use read::{list_devices, take};

/// Schema version of the JSON form of [`DeviceSnapshot`]. Bump on incompatible change.
pub const SNAPSHOT_SCHEMA_VERSION: u32 = 1;

/// Everything we could learn about one ublk device at `taken_ns`, without eBPF.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    pub dev_id: u32,
    /// CLOCK_MONOTONIC ns when the snapshot started (same clock as trace events).
    pub taken_ns: u64,
    /// `/sys/class/ublk-char/ublkcN` exists (the char device is still registered).
    pub char_dev_present: bool,
    /// `/sys/block/ublkbN` exists (the disk was added and not yet deleted).
    pub block_dev_present: bool,
    /// GET_DEV_INFO answer (None: not asked, failed or timed out; see `errors`).
    pub dev_info: Option<DevInfo>,
    /// blk-mq debugfs view (None: debugfs not mounted/readable or no disk).
    pub blk: Option<blkmq::BlkMqSnapshot>,
    /// `/sys/block/ublkbN/inflight`: requests owned by the driver.
    pub inflight: Option<Inflight>,
    /// `/sys/block/ublkbN/stat`: requests completed since the disk was added (reads, writes,
    /// discards, flushes), the IOPS that cost nothing per I/O.
    #[serde(default)]
    pub disk_ios: Option<u64>,
    /// The server: processes holding `/dev/ublkcN` open. Empty when none was found (check
    /// `proc_scanned` before concluding that there is no server).
    pub servers: Vec<ServerProcess>,
    /// `/proc` was walked successfully, so an empty `servers`/`waiters` is a fact, not a gap.
    pub proc_scanned: bool,
    /// When /proc was last walked in full for `servers` and `waiters` (CLOCK_MONOTONIC ns).
    /// In a series of snapshots ([`series`]) that may be an earlier tick: between walks, the
    /// tasks the walk found are looked at again, and a new server is found by the next walk
    /// (a new waiter too, unless the device is not calm: then its waiters are walked for on
    /// every snapshot).
    #[serde(default)]
    pub proc_walked_ns: Option<u64>,
    /// Tasks in D state whose wait concerns this disk (or any disk, for `bdev_open`).
    pub waiters: Vec<TaskInfo>,
    /// Scheduler counters of the server's threads (`/proc/PID/task/TID/schedstat`): tell a
    /// thread starved of CPU (runnable, waiting) from one that runs or sleeps.
    #[serde(default)]
    pub sched: Vec<ThreadSched>,
    /// The server's published per-tag state (`ublk-server` only).
    pub tagfile: Option<tagfile::TagFileSnapshot>,
    /// Kernel log lines about this device or hung tasks (tail, newest last).
    pub kmsg: Vec<kmsg::KmsgLine>,
    /// Sources that could not be read, with why (a timeout is evidence, not just a gap).
    pub errors: Vec<SourceError>,
}

impl DeviceSnapshot {
    /// Nothing in this snapshot starts a clock that a later one would have to stop: its
    /// server was found, no task waits on the disk, no server thread is stopped or inside a
    /// control command, blk-mq holds nothing back, and no read timed out. The model ages
    /// what snapshots see from its first sighting; after a quiet snapshot there is no such
    /// age, so the next one may come later without any age running on unseen
    /// ([`series::CALM_EVERY`]).
    pub fn is_quiet(&self) -> bool {
        let threads = || self.servers.iter().flat_map(|s| s.threads.iter());
        self.proc_scanned
            && !self.servers.is_empty()
            && self.waiters.is_empty()
            && !threads().any(|t| t.is_stopped() || t.ctrl_frame().is_some())
            && self
                .blk
                .as_ref()
                .is_none_or(|b| b.held_in_block_layer().is_empty())
            && !self.errors.iter().any(|e| e.timed_out)
    }
}

/// A source that failed; `timed_out` marks reads abandoned at the deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceError {
    /// What was read, e.g. `GET_DEV_INFO`, `/proc/412/stack`.
    pub source: String,
    pub detail: String,
    pub timed_out: bool,
}

/// `ublksrv_ctrl_dev_info` fields the diagnosis uses (from GET_DEV_INFO / GET_DEV_INFO2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevInfo {
    /// `UBLK_S_DEV_*` raw value.
    pub state: u16,
    /// As the kernel reported it: may be -1 (invisible in our pid namespace) or stale.
    pub ublksrv_pid: i32,
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    /// `UBLK_F_*` bits.
    pub flags: u64,
    pub max_io_buf_bytes: u32,
}

/// `UBLK_S_DEV_*` (include/uapi/linux/ublk_cmd.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DevState {
    Dead,
    Live,
    Quiesced,
    FailIo,
    Other(u16),
}

/// `UBLK_F_USER_RECOVERY`.
pub const UBLK_F_USER_RECOVERY: u64 = 1 << 3;
/// `UBLK_F_USER_RECOVERY_REISSUE`.
pub const UBLK_F_USER_RECOVERY_REISSUE: u64 = 1 << 4;
/// `UBLK_F_USER_RECOVERY_FAIL_IO` (6.11+).
pub const UBLK_F_USER_RECOVERY_FAIL_IO: u64 = 1 << 9;

impl DevState {
    pub fn from_raw(v: u16) -> Self {
        match v {
            0 => Self::Dead,
            1 => Self::Live,
            2 => Self::Quiesced,
            3 => Self::FailIo,
            o => Self::Other(o),
        }
    }
    pub fn name(self) -> String {
        match self {
            Self::Dead => "DEAD".into(),
            Self::Live => "LIVE".into(),
            Self::Quiesced => "QUIESCED".into(),
            Self::FailIo => "FAIL_IO".into(),
            Self::Other(v) => format!("state {v}"),
        }
    }
}

impl DevInfo {
    pub fn dev_state(&self) -> DevState {
        DevState::from_raw(self.state)
    }
    /// Any of the user-recovery flags: a dead server leaves the device recoverable.
    pub fn recovery_enabled(&self) -> bool {
        self.flags
            & (UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE | UBLK_F_USER_RECOVERY_FAIL_IO)
            != 0
    }
}

/// `/sys/block/ublkbN/inflight`: "reads writes".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inflight {
    pub reads: u64,
    pub writes: u64,
}

/// A process holding `/dev/ublkcN` open: the ublk server (any implementation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerProcess {
    pub pid: u32,
    pub comm: String,
    pub threads: Vec<TaskInfo>,
    /// io_uring instances of the process whose fdinfo could be read.
    pub rings: Vec<fdinfo::RingInfo>,
}

/// One thread (or a single-threaded task) as procfs shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Thread group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub comm: String,
    /// `/proc/PID/task/TID/stat` field 3: R, S, D, T, t, Z, I, ...
    pub state: char,
    /// `/proc/.../wchan` (empty when the task runs or the file is unreadable).
    pub wchan: String,
    /// Kernel stack frames (function names without offsets), when readable.
    pub stack: Vec<String>,
    /// voluntary + nonvoluntary context switches: unchanged across snapshots while in D means
    /// the same sleep (so its age can be measured without eBPF).
    pub ctxt_switches: Option<u64>,
    /// For waiters: why the wchan means this disk is involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitKind>,
}

/// `/proc/PID/task/TID/schedstat`: cumulative ns on a CPU and ns waiting on a runqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSched {
    pub tid: u32,
    pub run_ns: u64,
    pub wait_ns: u64,
}

/// Why a D-state task matters, from its wchan (DESIGN.md "Snapshot sources").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    /// `submit_bio_wait` & co: its request is in flight on the disk.
    RequestInFlight,
    /// `blk_mq_get_tag`: all tags are in use (tag starvation).
    TagStarved,
    /// `bio_queue_enter`: the queue is frozen or quiesced.
    QueueFrozen,
    /// `bdev_open`/`blkdev_get*`: open() behind a stuck partition scan.
    Open,
    /// A teardown (`del_gendisk`, ublk stop/del) waiting for the disk to drain.
    Teardown,
    /// In D with an fd on the disk, wchan not in the table.
    Other,
}

impl WaitKind {
    /// One human phrase for evidence lines.
    pub fn explain(self) -> &'static str {
        match self {
            Self::RequestInFlight => "waits for its request to complete",
            Self::TagStarved => "waits for a free tag (all tags in use)",
            Self::QueueFrozen => "waits to enter a frozen or quiesced queue",
            Self::Open => "waits in open() (behind a stuck partition scan?)",
            Self::Teardown => "waits for the disk to be torn down",
            Self::Other => "is in uninterruptible sleep with the disk open",
        }
    }
}

impl TaskInfo {
    /// T (stopped), t (ptraced) or cgroup-frozen (`do_freezer_trap`) all count as stopped.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, 'T' | 't') || self.wchan == "do_freezer_trap"
    }
    /// `iou-wrk-*` with a `ublk_ctrl_*` frame: a control command in progress (late-attach view).
    pub fn ctrl_frame(&self) -> Option<&str> {
        self.stack
            .iter()
            .map(String::as_str)
            .find(|f| f.starts_with("ublk_ctrl_") && *f != "ublk_ctrl_uring_cmd")
            .or_else(|| {
                self.stack
                    .iter()
                    .map(String::as_str)
                    .find(|f| f.starts_with("ublk_ctrl_"))
            })
    }
}
