//! One queue thread: one io_uring serving the tags it owns — every tag of its queue (the
//! classic one thread per queue), or with UBLK_F_PER_IO_DAEMON (6.16+) every `count`-th tag
//! (see [`Daemon`]), while the queue's other tags belong to sibling threads with rings of their
//! own. The kernel binds each tag to the thread that sent its FETCH_REQ and delivers and
//! accepts that tag's commands only there. With UBLK_F_BATCH_IO (7.0+) the one thread of a
//! queue speaks per-queue commands instead ([`crate::batch`]); serving a request is the same.
//!
//! Protocol (per tag): FETCH_REQ once at start; each CQE with UBLK_IO_RES_OK means the tag's
//! io descriptor (read-only mmap of /dev/ublkcN) holds a request; the server serves it and sends
//! COMMIT_AND_FETCH_REQ with the result, which both completes the request and waits for the
//! next one. UBLK_IO_RES_NEED_GET_DATA (UBLK_F_NEED_GET_DATA, writes only) asks for a
//! NEED_GET_DATA command carrying the buffer first; UBLK_IO_RES_ABORT ends the tag.
//!
//! The hot path allocates nothing and makes no syscall besides `io_uring_enter`: buffers,
//! counters and timeouts are sized once at start.
//!
//! user_data layout (same as libublk, so fdinfo dumps read alike): bits 0-15 tag, bits 16-23
//! the ublk command number (0x20 FETCH, 0x21 COMMIT_AND_FETCH, 0x22 NEED_GET_DATA), bits 32-39
//! the kind of completion ([`Kind`]). Batch commands (0x25 PREP, 0x26 COMMIT, 0x27 FETCH_IO_CMDS)
//! carry the index of their commit buffer or fetch command in bits 0-15 instead of a tag.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};
use ublk_abi::*;
use ublk_trace_common::tagstate::{SlotState, TagSlotAtomic};

use crate::batch::{Batch, NR_FETCH};
use crate::error::{Error, Result};
use crate::inject::{FaultKind, QueueFaults};
use crate::tagstate::{SlotWriter, TagStateFile};
use crate::target::{IoReq, Outcome, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A ublk I/O command (FETCH / COMMIT_AND_FETCH / NEED_GET_DATA).
    Ublk = 0,
    /// The target's backend operation for a tag.
    Target = 1,
    /// An injected commit delay expired.
    Delay = 2,
    /// The stop eventfd became readable.
    Stop = 3,
    /// A command an injected fault sent besides (or instead of) the right one: its completion
    /// says what the kernel made of it and changes nothing in the server's bookkeeping.
    Injected = 4,
}

pub(crate) fn user_data(kind: u8, cmd_nr: u32, tag: u16) -> u64 {
    (u64::from(kind) << 32) | (u64::from(cmd_nr & 0xff) << 16) | u64::from(tag)
}

fn decode_user_data(ud: u64) -> (Option<Kind>, u32, u16) {
    let kind = match (ud >> 32) as u8 {
        0 => Some(Kind::Ublk),
        1 => Some(Kind::Target),
        2 => Some(Kind::Delay),
        3 => Some(Kind::Stop),
        4 => Some(Kind::Injected),
        _ => None,
    };
    (kind, ((ud >> 16) & 0xff) as u32, ud as u16)
}

/// The `ublksrv_io_cmd` SQE for one tag.
pub(crate) fn io_cmd_sqe(nr: u32, ioctl_encode: bool, cmd: &ublksrv_io_cmd) -> squeue::Entry {
    let op = if ioctl_encode {
        match nr {
            UBLK_IO_FETCH_REQ => UBLK_U_IO_FETCH_REQ,
            UBLK_IO_COMMIT_AND_FETCH_REQ => UBLK_U_IO_COMMIT_AND_FETCH_REQ,
            _ => UBLK_U_IO_NEED_GET_DATA,
        }
    } else {
        nr
    };
    opcode::UringCmd16::new(types::Fixed(0), op)
        .cmd(cmd.to_bytes())
        .build()
        .user_data(user_data(Kind::Ublk as u8, nr, cmd.tag))
}

/// What main and a queue thread share.
#[derive(Default)]
pub struct QueueShared {
    /// Set by main after STOP_DEV: leave the loop (closing the ring cancels leftover FETCHes).
    pub stop: AtomicBool,
    /// FETCH_REQs submitted at start (for the START_DEV timeout report).
    pub fetch_sent: AtomicU32,
    /// Set when the initial FETCH batch reached the kernel.
    pub fetch_submitted: AtomicBool,
    /// Requests served (committed) by this queue.
    pub served: AtomicU64,
    /// Set when the thread has left its loop.
    pub exited: AtomicBool,
    /// Set by main on a second signal: fail the requests faults hold, then serve normally.
    pub release: AtomicBool,
    /// Request faults act only once this is set (after START_DEV completed), so the
    /// partition-scan reads that 6.12's START_DEV waits for are served normally.
    pub armed: AtomicBool,
    /// Set by main once START_DEV's completion was reaped (the `start-gate` fault waits for it).
    pub started: AtomicBool,
}

/// Which tags of its queue a thread owns: `index`, `index + count`, `index + 2 * count`, ...
/// Interleaved rather than contiguous: blk-mq hands out tags in order, so below full depth the
/// busy tags are a moving window that contiguous ranges would leave to one thread at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Daemon {
    pub index: u16,
    pub count: u16,
}

impl Daemon {
    /// The one thread of a queue in the classic mode.
    pub const WHOLE_QUEUE: Daemon = Daemon { index: 0, count: 1 };

    pub fn owns(self, tag: u16) -> bool {
        tag % self.count.max(1) == self.index
    }

    /// The tags of a `depth`-deep queue this thread owns, in order.
    pub fn tags(self, depth: u16) -> impl Iterator<Item = u16> {
        (self.index..depth).step_by(usize::from(self.count.max(1)))
    }

    /// How many of a `depth`-deep queue's tags this thread owns.
    pub fn nr_tags(self, depth: u16) -> u16 {
        self.tags(depth).count() as u16
    }

    /// Thread name: `ublk-q0` for a whole queue, `ublk-q0d1` for daemon 1 of queue 0.
    pub fn thread_name(self, q_id: u16) -> String {
        if self == Self::WHOLE_QUEUE {
            format!("ublk-q{q_id}")
        } else {
            format!("ublk-q{q_id}d{}", self.index)
        }
    }
}

/// How the server talks to the kernel about I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoMode {
    /// One thread per queue sends FETCH_REQ / COMMIT_AND_FETCH_REQ for each tag.
    #[default]
    PerTag,
    /// UBLK_F_PER_IO_DAEMON: `threads` threads per queue, each with its own ring and tags.
    PerIoDaemon { threads: u16 },
    /// UBLK_F_BATCH_IO: one thread per queue sends PREP/COMMIT/FETCH_IO_CMDS (see [`crate::batch`]).
    Batch,
}

impl IoMode {
    /// Threads serving each queue.
    pub fn threads_per_queue(self) -> u16 {
        match self {
            Self::PerTag | Self::Batch => 1,
            Self::PerIoDaemon { threads } => threads,
        }
    }

    /// The device feature the mode needs from the kernel.
    pub fn needs(self) -> Option<u64> {
        match self {
            Self::PerTag => None,
            Self::PerIoDaemon { .. } => Some(UBLK_F_PER_IO_DAEMON),
            Self::Batch => Some(UBLK_F_BATCH_IO),
        }
    }

    /// The command-line flag that selects the mode (for messages).
    pub fn flag(self) -> &'static str {
        match self {
            Self::PerTag => "(per-tag)",
            Self::PerIoDaemon { .. } => "--per-io-daemon",
            Self::Batch => "--batch-io",
        }
    }
}

pub struct QueueConfig {
    pub dev_id: u32,
    /// The tags this thread owns.
    pub daemon: Daemon,
    /// The queue thread's scheduling policy.
    pub sched: Sched,
    pub q_id: u16,
    pub depth: u16,
    /// Per-tag buffer size (the kernel's max_io_buf_bytes).
    pub buf_bytes: u32,
    /// Device flags as the kernel granted them.
    pub dev_flags: u64,
    pub char_fd: Arc<OwnedFd>,
    pub target: Arc<dyn Target>,
    pub tagstate: Option<Arc<TagStateFile>>,
    pub faults: QueueFaults,
    pub shared: Arc<QueueShared>,
    /// Wakes the ring when main wants the thread to stop.
    pub stop_fd: Arc<OwnedFd>,
    pub cpus: Vec<usize>,
    pub crash_counter: Arc<AtomicU64>,
}

/// The queue thread's scheduling policy.
///
/// Each request the kernel hands over wakes the queue thread. Under SCHED_NORMAL that wakeup
/// preempts the task that submitted the request when both share a CPU, so the server answers
/// one request per wakeup while the submitter is still queueing the rest of its batch.
/// SCHED_BATCH wakeups never preempt (the tick or the submitter blocking does): the thread
/// then finds the whole batch in one io_uring_enter. In a 1-vCPU 6.12 guest (fio and the
/// server on one CPU, 4k QD64) that took the null target from ~18k to ~44k IOPS and its CPU
/// per I/O from ~27 to ~9 µs. The cost: on a CPU busy with work that never blocks, a request
/// may wait for the tick; `normal` serves first there.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Sched {
    #[default]
    Batch,
    Normal,
}

impl Sched {
    /// Apply the policy to the calling thread. Lowering NORMAL to BATCH needs no privilege.
    pub fn apply_to_current_thread(self) -> std::io::Result<()> {
        let policy = match self {
            Sched::Batch => libc::SCHED_BATCH,
            Sched::Normal => libc::SCHED_OTHER,
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
        if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A read-only or read-write anonymous/device mapping released on drop.
pub(crate) struct Mapping {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) len: usize,
}

impl Mapping {
    pub(crate) fn new(
        len: usize,
        prot: i32,
        flags: i32,
        fd: RawFd,
        off: u64,
        what: &str,
    ) -> Result<Self> {
        let off = libc::off_t::try_from(off)
            .map_err(|_| Error::io(what, std::io::Error::other("offset out of range")))?;
        // SAFETY: a fresh mapping chosen by the kernel; the result is checked for MAP_FAILED.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, off) };
        if p == libc::MAP_FAILED {
            return Err(Error::io(what, std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| Error::io(what, std::io::Error::other("null mapping")))?;
        Ok(Self { ptr, len })
    }
}

// SAFETY: a Mapping is owned by one queue and moved into its thread once; the memory it
// points to is not tied to the creating thread.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped; no reference into it outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub struct Queue {
    cfg: QueueConfig,
    ring: IoUring,
    descs: Mapping,
    bufs: Mapping,
    ioctl_encode: bool,
    need_get_data: bool,
    /// Requests served per tag (for `hang:after=N`).
    served: Vec<u64>,
    /// Result held back by an injected delay, per tag.
    delayed_res: Vec<i32>,
    delay_ts: Vec<types::Timespec>,
    /// Op of the request each tag holds (for zero-commit and the tag state).
    cur_op: Vec<u8>,
    /// Tags whose COMMIT is queued in the SQ but not yet submitted.
    committed: Vec<u16>,
    live_tags: u32,
    /// Requests served since the faults were armed (for `after=N`).
    total_served: u64,
    /// Whether request faults apply to the request being handled.
    faults_armed: bool,
    /// Tags whose request a hang fault holds.
    hung: Vec<bool>,
    /// Faults were released by main: serve normally from now on.
    released: bool,
    /// no-submit: a second ring of this thread whose SQ gets the COMMIT and is never entered.
    side_ring: Option<IoUring>,
    /// The queue thread's tid (for log lines about foreign threads).
    tid: u32,
    /// UBLK_F_BATCH_IO devices: the per-queue command state (dropped after `ring`, which
    /// holds its registered buffer rings).
    batch: Option<Batch>,
}

/// A queue's io_uring: SINGLE_ISSUER + DEFER_TASKRUN, created disabled so the queue thread
/// enables it and becomes its single issuer. The kernel then runs the ring's task work, which
/// delivers ublk requests, only inside that thread's io_uring_enter: no IPI or signal-style
/// interruption per request, and a burst of requests is delivered in one batch (in a 6.12 TCG
/// guest the server's CPU time per I/O fell from ~40 µs to ~15 µs). It also makes the
/// stall-queue fault honest: a thread that stops entering leaves its requests undelivered
/// (NOT_DELIVERED), where a plain ring runs the task work whenever the thread returns to user
/// space. Kernels before 6.1 lack DEFER_TASKRUN: a plain ring then.
fn queue_ring(entries: u32) -> std::io::Result<IoUring> {
    IoUring::builder()
        .setup_cqsize(2 * entries)
        .setup_r_disabled()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
        .or_else(|e| {
            log::warn!("no DEFER_TASKRUN ring ({e}): using a plain io_uring");
            IoUring::builder().setup_cqsize(2 * entries).build(entries)
        })
}

impl Queue {
    pub fn new(cfg: QueueConfig) -> Result<Self> {
        let page = crate::page_size();
        let depth = usize::from(cfg.depth);
        let descs = Mapping::new(
            io_desc_mmap_len(cfg.depth, page),
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            cfg.char_fd.as_raw_fd(),
            io_desc_mmap_offset(cfg.q_id, page),
            &format!(
                "mmap io descriptors of queue {} (/dev/ublkc{})",
                cfg.q_id, cfg.dev_id
            ),
        )?;
        let bufs = Mapping::new(
            depth * cfg.buf_bytes as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
            "map I/O buffers",
        )?;
        // Per tag at most one ublk command plus one backend op or delay timeout, plus the
        // stop poll. (Batch mode needs fewer: one PREP, two FETCHes and the commits of a pass.)
        let own = u32::from(cfg.daemon.nr_tags(cfg.depth));
        let entries = (2 * own + 2).next_power_of_two();
        let ring = queue_ring(entries)
            .map_err(|e| Error::io(format!("create io_uring for queue {}", cfg.q_id), e))?;
        let mut files = vec![cfg.char_fd.as_raw_fd()];
        if let Some(fd) = cfg.target.backend_fd() {
            files.push(fd);
        }
        ring.submitter()
            .register_files(&files)
            .map_err(|e| Error::io("register files with the queue ring", e))?;
        let batch = if cfg.dev_flags & UBLK_F_BATCH_IO != 0 {
            Some(Batch::new(&ring, cfg.q_id, cfg.depth)?)
        } else {
            None
        };
        let side_ring = if cfg.faults.has_once(FaultKind::NoSubmit) {
            let side = IoUring::new(8)
                .map_err(|e| Error::io("create the no-submit fault's second ring", e))?;
            side.submitter()
                .register_files(&files[..1])
                .map_err(|e| Error::io("register /dev/ublkcN with the second ring", e))?;
            Some(side)
        } else {
            None
        };
        Ok(Self {
            ioctl_encode: cfg.dev_flags & UBLK_F_CMD_IOCTL_ENCODE != 0,
            need_get_data: cfg.dev_flags & UBLK_F_NEED_GET_DATA != 0,
            served: vec![0; depth],
            delayed_res: vec![0; depth],
            delay_ts: vec![types::Timespec::new(); depth],
            cur_op: vec![0; depth],
            committed: Vec::with_capacity(depth),
            live_tags: 0,
            total_served: 0,
            faults_armed: false,
            hung: vec![false; depth],
            released: false,
            side_ring,
            tid: 0,
            batch,
            cfg,
            ring,
            descs,
            bufs,
        })
    }

    /// "queue 0" or "queue 0 daemon 1", for log lines.
    fn who(&self) -> String {
        if self.cfg.daemon == Daemon::WHOLE_QUEUE {
            format!("queue {}", self.cfg.q_id)
        } else {
            format!("queue {} daemon {}", self.cfg.q_id, self.cfg.daemon.index)
        }
    }

    fn slot(&self, tag: u16) -> Option<&TagSlotAtomic> {
        self.cfg.tagstate.as_ref()?.slot(self.cfg.q_id, tag)
    }

    fn buf_addr(&self, tag: u16) -> u64 {
        self.bufs.ptr.as_ptr() as u64 + u64::from(tag) * u64::from(self.cfg.buf_bytes)
    }

    /// Queue an SQE, flushing the SQ to the kernel when it is full.
    fn push(&mut self, sqe: &squeue::Entry) -> Result<()> {
        loop {
            // SAFETY: every SQE we build points only at memory owned by self (tag buffers,
            // delay timespecs) that lives until the ring is dropped.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            self.ring
                .submit()
                .map_err(|e| Error::io(format!("queue {} submit", self.cfg.q_id), e))?;
        }
    }

    fn send_io_cmd(&mut self, nr: u32, tag: u16, result: i32) -> Result<()> {
        let cmd = ublksrv_io_cmd {
            q_id: self.cfg.q_id,
            tag,
            result,
            addr: self.buf_addr(tag),
        };
        let sqe = io_cmd_sqe(nr, self.ioctl_encode, &cmd);
        self.push(&sqe)
    }

    /// The io descriptor of `tag`, read from the shared mapping the kernel writes.
    fn read_desc(&self, tag: u16) -> ublksrv_io_desc {
        // bad-desc fault: the classic wrong stride (sizeof(ublksrv_io_cmd) = 16 instead of 24).
        let stride = if self.faults_armed && self.cfg.faults.bad_desc {
            16
        } else {
            std::mem::size_of::<ublksrv_io_desc>()
        };
        let off = usize::from(tag) * stride;
        debug_assert!(off + 24 <= self.descs.len);
        // SAFETY: tag < depth, so off + 24 <= depth * 24 <= the mapped length; the mapping is
        // page aligned and off is a multiple of 8, the struct's alignment. The kernel writes
        // the descriptor before posting the CQE we just reaped, so a volatile read sees it.
        unsafe {
            std::ptr::read_volatile(self.descs.ptr.as_ptr().add(off).cast::<ublksrv_io_desc>())
        }
    }

    fn pin_cpus(&self) {
        if self.cfg.cpus.is_empty() {
            return;
        }
        // SAFETY: cpu_set_t is plain data; CPU_SET and sched_setaffinity only touch the local.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in &self.cfg.cpus {
                libc::CPU_SET(c, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                log::debug!(
                    "queue {}: could not pin to CPUs {:?}",
                    self.cfg.q_id,
                    self.cfg.cpus
                );
            }
        }
    }

    /// Run until main sets `stop` or every tag is aborted by the kernel.
    pub fn run(mut self) -> Result<()> {
        self.pin_cpus();
        if let Err(e) = self.cfg.sched.apply_to_current_thread() {
            log::warn!(
                "queue {}: scheduling policy {:?} not applied ({e})",
                self.cfg.q_id,
                self.cfg.sched
            );
        }
        if self.ring.params().is_setup_single_issuer() {
            // The ring was created disabled: enabling it here makes this thread its single
            // issuer, the one whose io_uring_enter runs its deferred task work.
            self.ring
                .submitter()
                .register_enable_rings()
                .map_err(|e| Error::io("enable the queue's DEFER_TASKRUN ring", e))?;
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        self.tid = tid;
        let stop_poll =
            opcode::PollAdd::new(types::Fd(self.cfg.stop_fd.as_raw_fd()), libc::POLLIN as u32)
                .build()
                .user_data(user_data(Kind::Stop as u8, 0, 0));
        self.push(&stop_poll)?;
        self.fetch_all(tid)?;
        if self.cfg.faults.start_gate {
            self.wait_for_start();
        }
        let result = self.serve();
        for tag in self.cfg.daemon.tags(self.cfg.depth) {
            if let Some(s) = self.slot(tag) {
                s.set_state(SlotState::Stopped);
            }
        }
        self.cfg.shared.exited.store(true, Ordering::Release);
        result
    }

    fn arm_stop_poll(&mut self) -> Result<()> {
        let poll =
            opcode::PollAdd::new(types::Fd(self.cfg.stop_fd.as_raw_fd()), libc::POLLIN as u32)
                .build()
                .user_data(user_data(Kind::Stop as u8, 0, 0));
        self.push(&poll)
    }

    /// The stop eventfd fired: on `release`, fail what faults hold and keep serving.
    fn on_wake(&mut self) -> Result<()> {
        if self.cfg.shared.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut v = [0u8; 8];
        // SAFETY: reading 8 bytes into a valid local from our eventfd resets its counter, so
        // the re-armed poll does not fire again at once. A rare event, not the I/O path.
        unsafe { libc::read(self.cfg.stop_fd.as_raw_fd(), v.as_mut_ptr().cast(), v.len()) };
        if self.cfg.shared.release.load(Ordering::Acquire) && !self.released {
            self.released = true;
            for tag in self.cfg.daemon.tags(self.cfg.depth) {
                if std::mem::take(&mut self.hung[usize::from(tag)]) {
                    log::warn!(
                        "queue {} tag {tag}: failing the held request",
                        self.cfg.q_id
                    );
                    self.commit(tag, -libc::EIO)?;
                }
            }
        }
        self.arm_stop_poll()
    }

    /// start-gate: hold every completion until main reaped START_DEV. Kernels that make
    /// START_DEV wait for the partition-scan reads (up to 6.17) deadlock here: the reads are
    /// delivered to this thread, which does not look.
    fn wait_for_start(&mut self) {
        log::info!(
            "queue {}: injected start-gate, serving only after START_DEV completed",
            self.cfg.q_id
        );
        self.mark_queue_fault(FaultKind::StartGate);
        let shared = self.cfg.shared.clone();
        while !shared.started.load(Ordering::Acquire)
            && !shared.stop.load(Ordering::Acquire)
            && !shared.release.load(Ordering::Acquire)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// no-reap: stop reading the completion queue (completions pile up in the CQ) until main
    /// releases the faults or stops the queue.
    fn stop_reaping(&mut self) {
        log::info!(
            "queue {}: injected no-reap, leaving completions in the CQ",
            self.cfg.q_id
        );
        self.mark_queue_fault(FaultKind::NoReap);
        let shared = self.cfg.shared.clone();
        while !shared.stop.load(Ordering::Acquire) && !shared.release.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.released = shared.release.load(Ordering::Acquire);
    }

    fn mark_queue_fault(&self, kind: FaultKind) {
        for tag in self.cfg.daemon.tags(self.cfg.depth) {
            if let Some(s) = self.slot(tag) {
                s.fault.store(kind as u32, Ordering::Relaxed);
            }
        }
    }

    fn fetch_all(&mut self, tid: u32) -> Result<()> {
        if self.batch.is_some() {
            return self.prep_and_fetch(tid);
        }
        for tag in self.cfg.daemon.tags(self.cfg.depth) {
            if let Some(s) = self.slot(tag) {
                s.tid.store(tid, Ordering::Relaxed);
            }
            if self.cfg.faults.skips_fetch(tag) {
                if let Some(s) = self.slot(tag) {
                    s.fault
                        .store(FaultKind::SkipFetch as u32, Ordering::Relaxed);
                }
                continue;
            }
            self.send_io_cmd(UBLK_IO_FETCH_REQ, tag, 0)?;
            if let Some(s) = self.slot(tag) {
                s.set_waiting();
            }
            self.live_tags += 1;
            self.cfg.shared.fetch_sent.fetch_add(1, Ordering::Relaxed);
        }
        self.ring
            .submit()
            .map_err(|e| Error::io(format!("queue {}: submit FETCH_REQ", self.cfg.q_id), e))?;
        self.cfg
            .shared
            .fetch_submitted
            .store(true, Ordering::Release);
        log::debug!("{}: {} FETCH_REQ submitted", self.who(), self.live_tags);
        Ok(())
    }

    /// UBLK_F_BATCH_IO: one PREP_IO_CMDS readies every tag (but those skip-fetch leaves out),
    /// then the multishot fetches are armed.
    fn prep_and_fetch(&mut self, tid: u32) -> Result<()> {
        let mut tags = Vec::with_capacity(usize::from(self.cfg.depth));
        for tag in self.cfg.daemon.tags(self.cfg.depth) {
            if let Some(s) = self.slot(tag) {
                s.tid.store(tid, Ordering::Relaxed);
            }
            if self.cfg.faults.skips_fetch(tag) {
                if let Some(s) = self.slot(tag) {
                    s.fault
                        .store(FaultKind::SkipFetch as u32, Ordering::Relaxed);
                }
                continue;
            }
            tags.push((tag, self.buf_addr(tag)));
        }
        let Some(batch) = self.batch.as_mut() else {
            return Ok(());
        };
        let prep = batch.prep_sqe(&tags, user_data(Kind::Ublk as u8, UBLK_IO_PREP_IO_CMDS, 0));
        let mut fetches = Vec::with_capacity(NR_FETCH);
        for i in 0..NR_FETCH {
            let ud = user_data(Kind::Ublk as u8, UBLK_IO_FETCH_IO_CMDS, i as u16);
            fetches.extend(batch.arm_fetch_sqe(i, ud));
        }
        self.push(&prep)?;
        for f in &fetches {
            self.push(f)?;
        }
        for &(tag, _) in &tags {
            if let Some(s) = self.slot(tag) {
                s.set_waiting();
            }
        }
        self.live_tags = NR_FETCH as u32;
        self.ring.submit().map_err(|e| {
            Error::io(
                format!("{}: submit PREP_IO_CMDS and FETCH_IO_CMDS", self.who()),
                e,
            )
        })?;
        self.cfg
            .shared
            .fetch_sent
            .fetch_add(tags.len() as u32, Ordering::Relaxed);
        self.cfg
            .shared
            .fetch_submitted
            .store(true, Ordering::Release);
        log::debug!(
            "{}: PREP_IO_CMDS of {} tags and {NR_FETCH} FETCH_IO_CMDS submitted",
            self.who(),
            tags.len()
        );
        Ok(())
    }

    /// UBLK_F_BATCH_IO: the results gathered in this pass go to the kernel in one command.
    fn flush_batch_commit(&mut self) -> Result<()> {
        let sqe = self.batch.as_mut().and_then(|b| {
            b.take_commit_sqe(|idx| user_data(Kind::Ublk as u8, UBLK_IO_COMMIT_IO_CMDS, idx))
        });
        match sqe {
            Some(sqe) => self.push(&sqe),
            None => Ok(()),
        }
    }

    /// A CQE of a batch command (`idx`: the commit buffer or fetch command it belongs to).
    fn on_batch_cqe(&mut self, nr: u32, idx: u16, res: i32, flags: u32) -> Result<()> {
        let Some(batch) = self.batch.as_mut() else {
            return Ok(());
        };
        match nr {
            UBLK_IO_PREP_IO_CMDS if res < 0 => Err(Error::io(
                format!("{}: PREP_IO_CMDS refused by the kernel", self.who()),
                std::io::Error::from_raw_os_error(-res),
            )),
            UBLK_IO_PREP_IO_CMDS => Ok(()),
            UBLK_IO_COMMIT_IO_CMDS => {
                let left = batch.on_commit_cqe(idx, res);
                if !left.is_empty() {
                    let why = if res < 0 {
                        std::io::Error::from_raw_os_error(-res).to_string()
                    } else {
                        format!("the kernel took {} bytes of elements", res)
                    };
                    log::warn!(
                        "{}: COMMIT_IO_CMDS did not commit tags {left:?} ({why})",
                        self.who()
                    );
                }
                Ok(())
            }
            UBLK_IO_FETCH_IO_CMDS => {
                let Some(f) = batch.on_fetch_cqe(usize::from(idx), res, flags) else {
                    return Ok(());
                };
                let (addr, count) = f.tags;
                for i in 0..count {
                    // SAFETY: [addr, addr + 2 * count) lies in this fetch command's buffer
                    // (on_fetch_cqe clamps it), which the kernel wrote before posting this CQE
                    // and does not write again until the buffer is provided anew below.
                    let tag = unsafe { std::ptr::read_unaligned((addr as *const u16).add(i)) };
                    if tag >= self.cfg.depth {
                        log::warn!("{}: FETCH_IO_CMDS delivered tag {tag} >= depth", self.who());
                        continue;
                    }
                    self.on_request(tag)?;
                }
                if let Some(err) = f.ended {
                    self.live_tags = self.live_tags.saturating_sub(1);
                    log::info!(
                        "{}: FETCH_IO_CMDS {idx} ended: {}",
                        self.who(),
                        std::io::Error::from_raw_os_error(-err)
                    );
                } else if f.rearm && self.cfg.faults.no_rearm {
                    // live_tags stays: the thread waits on (idle, as the broken server does)
                    // instead of ending as it does when the kernel aborts every command.
                    self.mark_queue_fault(FaultKind::NoRearm);
                    log::warn!(
                        "{}: injected no-rearm: FETCH_IO_CMDS {idx} ended (res {res}), not armed again",
                        self.who()
                    );
                } else if f.rearm {
                    let ud = user_data(Kind::Ublk as u8, UBLK_IO_FETCH_IO_CMDS, idx);
                    let sqe = self
                        .batch
                        .as_mut()
                        .and_then(|b| b.arm_fetch_sqe(usize::from(idx), ud));
                    if let Some(sqe) = sqe {
                        self.push(&sqe)?;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn serve(&mut self) -> Result<()> {
        loop {
            self.flush_batch_commit()?;
            // The commits queued in the last pass reach the kernel at the start of this
            // io_uring_enter, before it blocks: publish those tags as waiting now, or the
            // state file would claim "committed, not submitted" for as long as the queue idles.
            for i in 0..self.committed.len() {
                let tag = self.committed[i];
                if let Some(s) = self.slot(tag) {
                    s.set_waiting();
                }
            }
            self.committed.clear();
            if self.stall_due() {
                self.stall()?;
                if self.cfg.shared.stop.load(Ordering::Acquire) {
                    return Ok(());
                }
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("queue {} io_uring_enter", self.cfg.q_id),
                        e,
                    ));
                }
            }
            if self.cfg.faults.no_reap
                && !self.released
                && self.cfg.shared.armed.load(Ordering::Relaxed)
                && !self.cfg.shared.stop.load(Ordering::Acquire)
            {
                self.stop_reaping();
            }
            loop {
                let Some(cqe) = self.ring.completion().next() else {
                    break;
                };
                let (kind, nr, tag) = decode_user_data(cqe.user_data());
                match kind {
                    Some(Kind::Ublk) if self.batch.is_some() => {
                        self.on_batch_cqe(nr, tag, cqe.result(), cqe.flags())?
                    }
                    Some(Kind::Ublk) => self.on_ublk_cqe(nr, tag, cqe.result())?,
                    Some(Kind::Target) => self.finish(tag, cqe.result())?,
                    Some(Kind::Delay) => {
                        let res = self
                            .delayed_res
                            .get(usize::from(tag))
                            .copied()
                            .unwrap_or(-libc::EIO);
                        self.commit(tag, res)?;
                    }
                    Some(Kind::Stop) => self.on_wake()?,
                    Some(Kind::Injected) => self.on_injected_cqe(nr, tag, cqe.result())?,
                    None => {}
                }
            }
            if self.cfg.shared.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            if self.live_tags == 0 {
                log::info!(
                    "queue {}: every tag was aborted by the kernel",
                    self.cfg.q_id
                );
                return Ok(());
            }
        }
    }

    fn on_ublk_cqe(&mut self, nr: u32, tag: u16, res: i32) -> Result<()> {
        if tag >= self.cfg.depth || !self.cfg.daemon.owns(tag) {
            log::warn!(
                "{}: completion for tag {tag}, not one of its tags",
                self.who()
            );
            return Ok(());
        }
        match res {
            UBLK_IO_RES_OK => self.on_request(tag),
            UBLK_IO_RES_NEED_GET_DATA if self.need_get_data => {
                self.send_io_cmd(UBLK_IO_NEED_GET_DATA, tag, 0)
            }
            UBLK_IO_RES_ABORT => {
                self.end_tag(tag);
                Ok(())
            }
            err => {
                log::warn!(
                    "queue {} tag {tag}: {} failed: {}",
                    self.cfg.q_id,
                    io_cmd_name(nr),
                    std::io::Error::from_raw_os_error(-err)
                );
                self.end_tag(tag);
                Ok(())
            }
        }
    }

    /// The completion of a command an injected fault sent: a rejection is logged (the kernel
    /// changed nothing, the tag keeps its FETCH); a delivery (a misdirected commit the kernel
    /// accepted re-armed that tag) is served as usual.
    fn on_injected_cqe(&mut self, nr: u32, tag: u16, res: i32) -> Result<()> {
        if res < 0 {
            log::warn!(
                "queue {} tag {tag}: injected {} rejected by the kernel: {} ({res})",
                self.cfg.q_id,
                io_cmd_name(nr),
                std::io::Error::from_raw_os_error(-res)
            );
            return Ok(());
        }
        self.on_ublk_cqe(nr, tag, res)
    }

    fn end_tag(&mut self, tag: u16) {
        self.live_tags = self.live_tags.saturating_sub(1);
        if let Some(s) = self.slot(tag) {
            s.set_state(SlotState::Stopped);
        }
    }

    fn on_request(&mut self, tag: u16) -> Result<()> {
        self.faults_armed = !self.released
            && !self.cfg.faults.is_empty()
            && self.cfg.shared.armed.load(Ordering::Relaxed);
        let iod = self.read_desc(tag);
        let t = usize::from(tag);
        self.cur_op[t] = iod.op();
        if let Some(s) = self.slot(tag) {
            s.set_received(u32::from(iod.op()), iod.start_sector, iod.nr_sectors);
        }
        if self.faults_armed {
            let served = self.served[t];
            self.served[t] += 1;
            self.total_served += 1;
            self.check_process_faults();
            if self.cfg.faults.hangs(tag, served) {
                log::info!(
                    "queue {} tag {tag}: injected hang, never committing",
                    self.cfg.q_id
                );
                if let Some(s) = self.slot(tag) {
                    s.fault.store(FaultKind::Hang as u32, Ordering::Relaxed);
                }
                self.hung[t] = true;
                return Ok(());
            }
        }
        let bytes = u64::from(iod.nr_sectors) << 9;
        let has_data = matches!(iod.op(), UBLK_IO_OP_READ | UBLK_IO_OP_WRITE);
        if has_data && bytes > u64::from(self.cfg.buf_bytes) {
            log::warn!(
                "queue {} tag {tag}: {} of {bytes} bytes exceeds the {}-byte buffer",
                self.cfg.q_id,
                io_op_name(iod.op_flags),
                self.cfg.buf_bytes
            );
            return self.finish(tag, -libc::EINVAL);
        }
        let data_len = if has_data { bytes as usize } else { 0 };
        // SAFETY: the tag's buffer is [buf_addr, buf_addr + buf_bytes) inside `bufs`, and
        // data_len <= buf_bytes; only this thread touches it while the tag is in the server.
        let buf =
            unsafe { std::slice::from_raw_parts_mut(self.buf_addr(tag) as *mut u8, data_len) };
        let mut req = IoReq {
            tag,
            op: iod.op(),
            flags: iod.op_flags & !0xff,
            start_sector: iod.start_sector,
            nr_sectors: iod.nr_sectors,
            buf,
        };
        match self.cfg.target.handle(&mut req) {
            Outcome::Done(res) => self.finish(tag, res),
            Outcome::Backend(sqe) => {
                let sqe = sqe.user_data(user_data(Kind::Target as u8, 0, tag));
                self.push(&sqe)
            }
        }
    }

    /// stall-queue and crash: faults that stop the whole queue or process.
    fn check_process_faults(&mut self) {
        if let Some(after) = self.cfg.faults.crash_after {
            let n = self.cfg.crash_counter.fetch_add(1, Ordering::Relaxed) + 1;
            if n > after {
                log::error!("injected crash after {after} requests");
                std::process::abort();
            }
        }
    }

    /// stall-queue: past `after` requests, and not released by a second signal.
    fn stall_due(&self) -> bool {
        !self.released
            && self
                .cfg
                .faults
                .stall_after
                .is_some_and(|after| self.total_served > after)
    }

    /// stall-queue, at the top of the serve loop (everything reaped has been answered): hand
    /// the kernel the queued commits without waiting for events, then never enter io_uring
    /// again. The committed tags get new requests, and on this queue's DEFER_TASKRUN ring
    /// their delivery task work waits for an io_uring_enter that never comes: NOT_DELIVERED,
    /// whatever the timing. Stalling mid-batch instead left every tag in the server (CQEs
    /// unreaped, commits unsubmitted) whenever the batch held all of them.
    fn stall(&mut self) -> Result<()> {
        log::info!(
            "{}: injected stall, no longer entering io_uring",
            self.who()
        );
        for tag in self.cfg.daemon.tags(self.cfg.depth) {
            if let Some(s) = self.slot(tag) {
                s.fault
                    .store(FaultKind::StallQueue as u32, Ordering::Relaxed);
            }
        }
        self.ring.submit().map_err(|e| {
            Error::io(
                format!("queue {}: submit before the stall", self.cfg.q_id),
                e,
            )
        })?;
        let shared = self.cfg.shared.clone();
        while !shared.stop.load(Ordering::Acquire) && !shared.release.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Released: serve normally (the next io_uring_enter delivers the backlog).
        self.released = shared.release.load(Ordering::Acquire);
        Ok(())
    }

    /// The request's result is known: apply result faults and delays, then commit.
    fn finish(&mut self, tag: u16, res: i32) -> Result<()> {
        let t = usize::from(tag);
        let Some(&op) = self.cur_op.get(t) else {
            return Ok(());
        };
        let mut res = res;
        if !self.faults_armed {
            return self.commit(tag, res);
        }
        if let Some((r, kind)) = self.cfg.faults.rewrite_result(op, res) {
            res = r;
            if let Some(s) = self.slot(tag) {
                s.fault.store(kind as u32, Ordering::Relaxed);
            }
        }
        if let Some(ms) = self.cfg.faults.delay_ms() {
            self.delayed_res[t] = res;
            self.delay_ts[t] = types::Timespec::from(Duration::from_millis(u64::from(ms)));
            if let Some(s) = self.slot(tag) {
                s.fault.store(FaultKind::Delay as u32, Ordering::Relaxed);
            }
            let ts: *const types::Timespec = &self.delay_ts[t];
            let sqe =
                opcode::Timeout::new(ts)
                    .build()
                    .user_data(user_data(Kind::Delay as u8, 0, tag));
            return self.push(&sqe);
        }
        if let Some(kind) = self.cfg.faults.take_once(tag) {
            return self.commit_faulty(kind, tag, res);
        }
        self.commit(tag, res)
    }

    /// The once-only commit faults: the request on `tag` with result `res` is answered wrongly.
    fn commit_faulty(&mut self, kind: FaultKind, tag: u16, res: i32) -> Result<()> {
        if let Some(s) = self.slot(tag) {
            s.fault.store(kind as u32, Ordering::Relaxed);
        }
        let q = self.cfg.q_id;
        match kind {
            FaultKind::WrongTag => {
                // The next tag this thread owns (with per-io daemons a sibling's tag would
                // be refused for the thread, not for the tag's state).
                let d = self.cfg.daemon;
                let other = match tag.checked_add(d.count) {
                    Some(t) if t < self.cfg.depth => t,
                    _ => d.index,
                };
                log::info!("queue {q} tag {tag}: injected wrong-tag, committing tag {other}");
                if let Some(s) = self.slot(other) {
                    s.fault.store(kind as u32, Ordering::Relaxed);
                }
                self.hung[usize::from(tag)] = true;
                if self.batch.is_some() {
                    // BATCH_IO: the wrong tag goes into the queue's next COMMIT_IO_CMDS.
                    let addr = self.buf_addr(other);
                    let full = self
                        .batch
                        .as_mut()
                        .is_some_and(|b| b.add_commit(other, res, addr));
                    return if full {
                        self.flush_batch_commit()
                    } else {
                        Ok(())
                    };
                }
                self.send_injected(other, res)
            }
            FaultKind::DoubleCommit => {
                log::info!("queue {q} tag {tag}: injected double-commit");
                self.commit(tag, res)?;
                self.send_injected(tag, res)
            }
            FaultKind::WrongThread => {
                self.hung[usize::from(tag)] = true;
                self.commit_from_stray_thread(tag, res)
            }
            FaultKind::NoSubmit => {
                let cmd = ublksrv_io_cmd {
                    q_id: q,
                    tag,
                    result: res,
                    addr: self.buf_addr(tag),
                };
                let sqe = io_cmd_sqe(UBLK_IO_COMMIT_AND_FETCH_REQ, self.ioctl_encode, &cmd);
                let Some(side) = self.side_ring.as_mut() else {
                    return self.commit(tag, res);
                };
                // SAFETY: the SQE points at this tag's buffer, which lives as long as self;
                // the SQ tail is stored (visible in fdinfo) and io_uring_enter never called.
                if unsafe { side.submission().push(&sqe) }.is_err() {
                    return self.commit(tag, res);
                }
                log::info!(
                    "queue {q} tag {tag}: injected no-submit, COMMIT left in the SQ of a second ring"
                );
                if let Some(s) = self.slot(tag) {
                    s.set_committed(res);
                }
                self.hung[usize::from(tag)] = true;
                Ok(())
            }
            _ => self.commit(tag, res),
        }
    }

    /// A COMMIT_AND_FETCH_REQ for `tag` whose completion is tagged [`Kind::Injected`].
    fn send_injected(&mut self, tag: u16, res: i32) -> Result<()> {
        let cmd = ublksrv_io_cmd {
            q_id: self.cfg.q_id,
            tag,
            result: res,
            addr: self.buf_addr(tag),
        };
        let sqe = io_cmd_sqe(UBLK_IO_COMMIT_AND_FETCH_REQ, self.ioctl_encode, &cmd).user_data(
            user_data(Kind::Injected as u8, UBLK_IO_COMMIT_AND_FETCH_REQ, tag),
        );
        self.push(&sqe)
    }

    /// wrong-thread: a thread of its own (`ublk-qN-stray`, with its own ring) sends the
    /// COMMIT, waits for the kernel's answer, logs it and stays alive (so its tid can be
    /// looked up) until the server stops or releases the faults.
    fn commit_from_stray_thread(&mut self, tag: u16, res: i32) -> Result<()> {
        let q = self.cfg.q_id;
        let cmd = ublksrv_io_cmd {
            q_id: q,
            tag,
            result: res,
            addr: self.buf_addr(tag),
        };
        let sqe = io_cmd_sqe(UBLK_IO_COMMIT_AND_FETCH_REQ, self.ioctl_encode, &cmd);
        let char_fd = self.cfg.char_fd.clone();
        let shared = self.cfg.shared.clone();
        let owner = self.tid;
        std::thread::Builder::new()
            .name(format!("ublk-q{q}-stray"))
            .spawn(move || stray_commit(q, tag, owner, &char_fd, &sqe, &shared))
            .map_err(|e| Error::io("spawn the wrong-thread fault's thread", e))?;
        Ok(())
    }

    fn commit(&mut self, tag: u16, res: i32) -> Result<()> {
        let addr = self.buf_addr(tag);
        match self.batch.as_mut() {
            Some(b) => {
                if b.add_commit(tag, res, addr) {
                    self.flush_batch_commit()?;
                }
            }
            None => self.send_io_cmd(UBLK_IO_COMMIT_AND_FETCH_REQ, tag, res)?,
        }
        if let Some(s) = self.slot(tag) {
            s.set_committed(res);
        }
        self.committed.push(tag);
        self.cfg.shared.served.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Body of the wrong-thread fault's thread.
fn stray_commit(
    q: u16,
    tag: u16,
    owner: u32,
    char_fd: &OwnedFd,
    sqe: &squeue::Entry,
    shared: &QueueShared,
) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let answer = (|| -> std::io::Result<Option<i32>> {
        let mut ring = IoUring::new(4)?;
        ring.submitter().register_files(&[char_fd.as_raw_fd()])?;
        // SAFETY: the SQE points at the tag's buffer in the queue's mapping, which outlives
        // this thread's use of it (the kernel reads the address only while handling it).
        unsafe { ring.submission().push(sqe) }.map_err(std::io::Error::other)?;
        ring.submit()?;
        for _ in 0..100 {
            if let Some(c) = ring.completion().next() {
                return Ok(Some(c.result()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(None)
    })();
    match answer {
        Ok(Some(res)) if res < 0 => log::warn!(
            "queue {q} tag {tag}: injected wrong-thread COMMIT from tid {tid} (owner tid {owner}) \
             rejected: {} ({res})",
            std::io::Error::from_raw_os_error(-res)
        ),
        Ok(Some(res)) => log::warn!(
            "queue {q} tag {tag}: injected wrong-thread COMMIT from tid {tid} completed with {res}"
        ),
        Ok(None) => log::warn!(
            "queue {q} tag {tag}: injected wrong-thread COMMIT from tid {tid} (owner tid {owner}) \
             accepted by the kernel (no answer within 2 s)"
        ),
        Err(e) => log::warn!("queue {q} tag {tag}: wrong-thread fault could not send: {e}"),
    }
    while !shared.stop.load(Ordering::Acquire) && !shared.release.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_and_matches_libublk_layout() {
        let ud = user_data(Kind::Ublk as u8, UBLK_IO_COMMIT_AND_FETCH_REQ, 5);
        // fdinfo shows 0x210005 for "COMMIT_AND_FETCH of tag 5", as with libublk servers.
        assert_eq!(ud, 0x21_0005);
        assert_eq!(decode_user_data(ud), (Some(Kind::Ublk), 0x21, 5));
        let ud = user_data(Kind::Delay as u8, 0, 4095);
        assert_eq!(decode_user_data(ud), (Some(Kind::Delay), 0, 4095));
        assert_eq!(decode_user_data(9 << 32).0, None);
    }

    /// Every tag of a queue has exactly one owner among its daemons, and a thread's ring and
    /// loops cover exactly the tags it owns.
    #[test]
    fn daemons_partition_a_queue_interleaved() {
        for (depth, count) in [(1u16, 1u16), (4, 2), (5, 2), (128, 3), (4, 4)] {
            let daemons: Vec<Daemon> = (0..count).map(|index| Daemon { index, count }).collect();
            for tag in 0..depth {
                let owners: Vec<u16> = daemons
                    .iter()
                    .filter(|d| d.owns(tag))
                    .map(|d| d.index)
                    .collect();
                assert_eq!(owners, vec![tag % count], "depth {depth} tag {tag}");
            }
            for d in &daemons {
                let tags: Vec<u16> = d.tags(depth).collect();
                assert!(tags.iter().all(|&t| d.owns(t)), "{d:?}: {tags:?}");
                assert_eq!(
                    usize::from(d.nr_tags(depth)),
                    (0..depth).filter(|&t| d.owns(t)).count()
                );
            }
        }
        assert_eq!(
            Daemon { index: 1, count: 2 }.tags(6).collect::<Vec<_>>(),
            [1, 3, 5]
        );
        assert_eq!(Daemon::WHOLE_QUEUE.tags(3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(Daemon::WHOLE_QUEUE.thread_name(2), "ublk-q2");
        assert_eq!(Daemon { index: 1, count: 2 }.thread_name(0), "ublk-q0d1");
    }

    #[test]
    fn io_cmd_sqe_carries_cmd_and_encoding() {
        assert_eq!(std::mem::size_of::<squeue::Entry>(), 64);
        let cmd = ublksrv_io_cmd {
            q_id: 1,
            tag: 2,
            result: 4096,
            addr: 0x1000,
        };
        for (encode, want_op) in [(true, 0xc010_7521u32), (false, 0x21)] {
            let sqe = io_cmd_sqe(UBLK_IO_COMMIT_AND_FETCH_REQ, encode, &cmd);
            // SAFETY: squeue::Entry is a transparent wrapper of the 64-byte io_uring_sqe
            // (size asserted above); reading it as bytes is sound.
            let raw: [u8; 64] = unsafe { std::mem::transmute(sqe) };
            assert_eq!(raw[0], 46, "IORING_OP_URING_CMD");
            assert_eq!(raw[1] & 1, 1, "IOSQE_FIXED_FILE: slot 0 is /dev/ublkcN");
            assert_eq!(&raw[4..8], &0i32.to_le_bytes(), "fixed file index 0");
            assert_eq!(&raw[8..12], &want_op.to_le_bytes(), "cmd_op");
            assert_eq!(&raw[32..40], &0x21_0002u64.to_le_bytes(), "user_data");
            assert_eq!(
                &raw[48..64],
                &cmd.to_bytes(),
                "ublksrv_io_cmd in the cmd area"
            );
        }
    }

    /// The policy lands on the thread that applies it, and only there: the queue thread
    /// calls it for itself, so main and the other queues keep theirs.
    #[test]
    fn sched_applies_to_the_calling_thread_only() {
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let inside = std::thread::spawn(move || {
            Sched::Batch.apply_to_current_thread().expect("SCHED_BATCH");
            let batch = policy();
            Sched::Normal
                .apply_to_current_thread()
                .expect("back to SCHED_OTHER");
            (batch, policy())
        })
        .join()
        .expect("thread");
        assert_eq!(inside, (libc::SCHED_BATCH, libc::SCHED_OTHER));
        assert_eq!(policy(), before);
    }

    /// Batched delivery and the stall-queue fault rely on this: on the queue's DEFER_TASKRUN
    /// ring a completion that needs task work (a poll, like ublk's request delivery) is posted
    /// only when the issuer enters io_uring; on a plain ring it is posted as soon as the
    /// thread returns to user space.
    #[test]
    fn only_the_defer_taskrun_ring_holds_task_work_until_io_uring_enter() {
        for defer in [false, true] {
            let ring = if defer {
                queue_ring(8)
            } else {
                IoUring::new(8)
            }
            .expect("io_uring_setup");
            assert_eq!(ring.params().is_setup_single_issuer(), defer);
            if defer {
                ring.submitter()
                    .register_enable_rings()
                    .expect("enable the ring on this thread");
            }
            let mut ring = ring;
            let mut fds = [0i32; 2];
            // SAFETY: pipe2 writes two fds into the array we own.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            let poll = opcode::PollAdd::new(types::Fd(fds[0]), libc::POLLIN as u32)
                .build()
                .user_data(7);
            // SAFETY: the SQE refers to no memory; the fd outlives the ring's use of it.
            unsafe { ring.submission().push(&poll).expect("SQ has room") };
            ring.submit().expect("submit the poll");
            // SAFETY: one byte from a local buffer into our own pipe.
            assert_eq!(unsafe { libc::write(fds[1], [1u8].as_ptr().cast(), 1) }, 1);
            let posted_at_once = ring.completion().len();
            assert_eq!(posted_at_once, usize::from(!defer), "defer_taskrun={defer}");
            ring.submit_and_wait(1).expect("enter io_uring");
            assert_eq!(ring.completion().len(), 1, "defer_taskrun={defer}");
            // SAFETY: closing the two fds pipe2 gave us.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
        }
    }
}
