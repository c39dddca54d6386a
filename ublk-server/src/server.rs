//! `ublk-server run` and `recover`: bring a device up, serve it, take it down.
//!
//! Order matters and each step is awaited: ADD_DEV → SET_PARAMS → queue threads (mmap, FETCH
//! all tags) → START_DEV submitted and awaited with a bound (the kernel completes it only after
//! every tag's FETCH arrived) → ready line → wait for SIGINT/SIGTERM → STOP_DEV (the kernel
//! drains in-flight I/O, which the queues keep serving) → queues leave → /dev/ublkcN closed →
//! DEL_DEV (which waits for that close).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use ublk_abi::*;

use crate::ctrl::{Ctrl, CtrlCmd};
use crate::error::{Error, Result};
use crate::inject::{Fault, QueueFaults, fault_mask};
use crate::queue::{Daemon, IoMode, Queue, QueueConfig, QueueShared, Sched};
use crate::tagstate::TagStateFile;
use crate::target::{Target, loop_file::LoopFile, null::Null, ramdisk::Ramdisk};

/// Per-request buffer size asked for at ADD_DEV (the kernel may lower it).
pub const DEFAULT_IO_BUF_BYTES: u32 = 512 << 10;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetSpec {
    Null { size: u64 },
    Ramdisk { size: u64 },
    Loop { file: PathBuf, direct: bool },
}

impl TargetSpec {
    pub fn build(&self) -> Result<Arc<dyn Target>> {
        Ok(match self {
            Self::Null { size } => Arc::new(Null { dev_bytes: *size }),
            Self::Ramdisk { size } => Arc::new(Ramdisk::new(*size)?),
            Self::Loop { file, direct } => Arc::new(LoopFile::open(file, *direct)?),
        })
    }
}

#[derive(Clone, Debug)]
pub struct RunOpts {
    pub target: TargetSpec,
    pub queues: u16,
    pub depth: u16,
    pub dev_id: Option<u32>,
    pub recovery: bool,
    pub need_get_data: bool,
    pub faults: Vec<Fault>,
    pub start_timeout: Duration,
    /// The queue threads' scheduling policy.
    pub sched: Sched,
    /// Per-tag commands from one thread per queue, or per-io daemons.
    pub mode: IoMode,
    /// Publish the per-tag state file for ublk-trace (off: look like a server that is not
    /// ours, so the tracer is tested on what the kernel alone shows).
    pub tag_state: bool,
}

/// What `recover` needs to serve the device again, saved next to the tag-state file.
#[derive(Debug, Serialize, Deserialize)]
struct SavedRun {
    target: TargetSpec,
    need_get_data: bool,
    /// Absent in files written before the option existed: the default.
    #[serde(default)]
    sched: Sched,
    /// Absent in files written before the option existed: per-tag.
    #[serde(default)]
    mode: IoMode,
}

fn saved_run_path(dev_id: u32) -> PathBuf {
    PathBuf::from(ublk_trace_common::tagstate::DIR).join(format!("ublkb{dev_id}.json"))
}

pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotPermitted {
            what: what.to_string(),
        });
    }
    Ok(())
}

/// Check what can be checked before touching the kernel.
pub fn validate(opts: &RunOpts) -> Result<()> {
    if opts.depth == 0 || u32::from(opts.depth) > UBLK_MAX_QUEUE_DEPTH {
        return Err(Error::Usage(format!(
            "--depth {} is out of range: the kernel accepts 1..={UBLK_MAX_QUEUE_DEPTH} (UBLK_MAX_QUEUE_DEPTH)",
            opts.depth
        )));
    }
    if opts.queues == 0 || u32::from(opts.queues) > UBLK_MAX_NR_QUEUES {
        return Err(Error::Usage(format!(
            "--queues {} is out of range: 1..={UBLK_MAX_NR_QUEUES}",
            opts.queues
        )));
    }
    let threads = opts.mode.threads_per_queue();
    if threads == 0 || threads > opts.depth {
        return Err(Error::Usage(format!(
            "--threads-per-queue {threads} is out of range: 1..={} (each thread needs a tag of its own; \
             raise --depth or lower the thread count)",
            opts.depth
        )));
    }
    for f in &opts.faults {
        if let Fault::StallQueue {
            daemon: Some(d), ..
        } = f
        {
            let why = match opts.mode {
                IoMode::PerIoDaemon { .. } if *d < threads => continue,
                IoMode::PerIoDaemon { .. } => {
                    format!("there are {threads} threads per queue (0..{threads})")
                }
                _ => "daemons exist only with --per-io-daemon".to_string(),
            };
            return Err(Error::Usage(format!("--inject {f}: no daemon {d}: {why}")));
        }
    }
    if opts.mode != IoMode::Batch
        && let Some(f) = opts.faults.iter().find(|f| f.needs_batch_mode())
    {
        return Err(Error::Usage(format!(
            "--inject {f} needs --batch-io: it is about the multishot FETCH_IO_CMDS of a \
             UBLK_F_BATCH_IO device (7.0+)"
        )));
    }
    if opts.mode == IoMode::Batch {
        if opts.need_get_data {
            return Err(Error::Usage(
                "--need-get-data cannot be used with --batch-io: batch devices have no \
                 NEED_GET_DATA (the kernel clears it); drop one of the two"
                    .into(),
            ));
        }
        if let Some(f) = opts.faults.iter().find(|f| !f.works_in_batch_mode()) {
            return Err(Error::Usage(format!(
                "--inject {f} cannot be used with --batch-io: it sends a per-tag \
                 COMMIT_AND_FETCH_REQ, which a batch device refuses; run it without --batch-io"
            )));
        }
    }
    match &opts.target {
        TargetSpec::Null { size } | TargetSpec::Ramdisk { size }
            if *size < 4096 || size % 512 != 0 =>
        {
            Err(Error::Usage(format!(
                "--size {size} is invalid: give at least 4096 bytes, a multiple of 512 (e.g. --size 64M)"
            )))
        }
        _ => Ok(()),
    }
}

/// Block SIGINT/SIGTERM in this thread (and the threads it spawns) so main can wait for
/// them with sigtimedwait instead of an async handler.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// A pending SIGINT/SIGTERM, waiting at most `timeout`.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: set and ts are valid locals; info may be null.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

fn eventfd() -> Result<OwnedFd> {
    // SAFETY: eventfd returns a new fd or -1; ownership is taken only on success.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::io("eventfd", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_char_dev(dev_id: u32) -> Result<OwnedFd> {
    let path = format!("/dev/ublkc{dev_id}");
    // devtmpfs creates the node at once; with udev it may take a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => return Ok(f.into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(Error::Usage(format!(
                    "{path} is held open by another process (a server is still running for it)"
                )));
            }
            Err(e) => return Err(Error::io(format!("open {path}"), e)),
        }
    }
}

/// A device being served: queue threads and what they share. `shared`, `queue_of`, `stop_fds`
/// and `threads` are indexed alike, one entry per thread (several per queue with per-io
/// daemons).
struct Served {
    dev_id: u32,
    depth: u16,
    nr_queues: u16,
    shared: Vec<Arc<QueueShared>>,
    /// The queue each thread serves.
    queue_of: Vec<u16>,
    stop_fds: Vec<Arc<OwnedFd>>,
    threads: Vec<JoinHandle<Result<()>>>,
    char_fd: Arc<OwnedFd>,
    tagstate: Option<Arc<TagStateFile>>,
    faults: Vec<Fault>,
}

impl Served {
    fn start(
        ctrl: &mut Ctrl,
        info: &ublksrv_ctrl_dev_info,
        target: Arc<dyn Target>,
        faults: Vec<Fault>,
        sched: Sched,
        mode: IoMode,
        tag_state: bool,
    ) -> Result<Self> {
        let dev_id = info.dev_id;
        let char_fd = Arc::new(open_char_dev(dev_id)?);
        let created = tag_state.then(|| {
            TagStateFile::create(
                dev_id,
                info.nr_hw_queues,
                info.queue_depth,
                fault_mask(&faults),
            )
        });
        let tagstate = match created {
            Some(Ok(t)) => Some(Arc::new(t)),
            Some(Err(e)) => {
                log::warn!("tag state not published ({e}); ublk-trace will see less");
                None
            }
            None => None,
        };
        let crash_counter = Arc::new(AtomicU64::new(0));
        let mut s = Self {
            dev_id,
            depth: info.queue_depth,
            nr_queues: info.nr_hw_queues,
            shared: Vec::new(),
            queue_of: Vec::new(),
            stop_fds: Vec::new(),
            threads: Vec::new(),
            char_fd,
            tagstate,
            faults,
        };
        let count = mode.threads_per_queue();
        for q_id in 0..info.nr_hw_queues {
            let cpus = ctrl.get_queue_affinity(dev_id, q_id).unwrap_or_default();
            for index in 0..count {
                let daemon = if count == 1 {
                    Daemon::WHOLE_QUEUE
                } else {
                    Daemon { index, count }
                };
                let shared = Arc::new(QueueShared::default());
                let stop_fd = Arc::new(eventfd()?);
                let seed = crate::tagstate::now_ns() ^ (u64::from(q_id) << 16 | u64::from(index));
                let cfg = QueueConfig {
                    dev_id,
                    daemon,
                    sched,
                    q_id,
                    depth: info.queue_depth,
                    buf_bytes: info.max_io_buf_bytes,
                    dev_flags: info.flags,
                    char_fd: s.char_fd.clone(),
                    target: target.clone(),
                    tagstate: s.tagstate.clone(),
                    faults: QueueFaults::for_daemon(
                        &s.faults,
                        q_id,
                        daemon,
                        info.queue_depth,
                        seed,
                    ),
                    shared: shared.clone(),
                    stop_fd: stop_fd.clone(),
                    cpus: cpus.clone(),
                    crash_counter: crash_counter.clone(),
                };
                let queue = Queue::new(cfg)?;
                let h = std::thread::Builder::new()
                    .name(daemon.thread_name(q_id))
                    .spawn(move || queue.run())
                    .map_err(|e| Error::io("spawn queue thread", e))?;
                s.shared.push(shared);
                s.queue_of.push(q_id);
                s.stop_fds.push(stop_fd);
                s.threads.push(h);
            }
        }
        Ok(s)
    }

    /// Which queues/tags have not sent FETCH_REQ: the reason a START_DEV does not complete.
    fn missing_fetch_report(&self) -> String {
        let mut parts = Vec::new();
        for q in 0..self.nr_queues {
            let threads: Vec<&Arc<QueueShared>> = self
                .shared
                .iter()
                .zip(&self.queue_of)
                .filter(|&(_, &qq)| qq == q)
                .map(|(sh, _)| sh)
                .collect();
            let unsubmitted = threads
                .iter()
                .filter(|sh| !sh.fetch_submitted.load(Ordering::Acquire))
                .count();
            if unsubmitted > 0 {
                parts.push(if threads.len() == 1 {
                    format!("queue {q}: FETCH_REQs not submitted yet")
                } else {
                    format!(
                        "queue {q}: {unsubmitted} of {} threads have not submitted their FETCH_REQs yet",
                        threads.len()
                    )
                });
                continue;
            }
            let sent: u32 = threads
                .iter()
                .map(|sh| sh.fetch_sent.load(Ordering::Relaxed))
                .sum();
            if sent < u32::from(self.depth) {
                let missing: Vec<u16> = (0..self.depth)
                    .filter(|&t| {
                        self.tagstate
                            .as_ref()
                            .and_then(|ts| ts.slot(q, t))
                            .is_some_and(|s| s.state.load(Ordering::Relaxed) == 0)
                    })
                    .collect();
                parts.push(format!(
                    "queue {q}: {} of {} tags never sent FETCH_REQ{}",
                    u32::from(self.depth) - sent,
                    self.depth,
                    fmt_ranges(&missing)
                ));
            }
        }
        if parts.is_empty() {
            "every tag sent FETCH_REQ; the kernel is still busy (partition scan or add_disk)".into()
        } else {
            parts.join("; ")
        }
    }

    fn heartbeat(&self) {
        if let Some(t) = &self.tagstate {
            t.heartbeat();
        }
    }

    /// A queue left on its own (every tag aborted): the device was stopped from outside.
    fn any_queue_exited(&self) -> bool {
        self.shared.iter().any(|s| s.exited.load(Ordering::Acquire))
    }

    /// Ask every queue to fail the requests its faults hold (hang, stall) with EIO.
    fn release_held(&self) {
        for (sh, fd) in self.shared.iter().zip(&self.stop_fds) {
            sh.release.store(true, Ordering::Release);
            wake(fd);
        }
    }

    /// Tell every queue to leave and join them.
    fn stop_queues(&mut self) -> Result<u64> {
        for (sh, fd) in self.shared.iter().zip(&self.stop_fds) {
            sh.stop.store(true, Ordering::Release);
            wake(fd);
        }
        let mut first_err = None;
        for (h, q) in self.threads.drain(..).zip(&self.queue_of) {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    log::error!("queue {q}: {e}");
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(Error::io(
                        format!("queue {q}"),
                        std::io::Error::other("thread panicked"),
                    ));
                }
            }
        }
        let served = self
            .shared
            .iter()
            .map(|s| s.served.load(Ordering::Relaxed))
            .sum();
        first_err.map_or(Ok(served), Err)
    }
}

fn wake(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writing 8 bytes from a valid local to our own eventfd.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

/// "tags 0-3,7" style list.
pub fn fmt_ranges(tags: &[u16]) -> String {
    if tags.is_empty() {
        return String::new();
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < tags.len() {
        let start = tags[i];
        let mut end = start;
        while i + 1 < tags.len() && tags[i + 1] == end + 1 {
            i += 1;
            end = tags[i];
        }
        out.push(if start == end {
            format!("{start}")
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    format!(" (tags {})", out.join(","))
}

/// Wait for START_DEV / END_USER_RECOVERY, reporting missing FETCHes after `bound`.
/// Returns false when a signal asked us to quit first.
fn await_start(
    ctrl: &mut Ctrl,
    cmd: &CtrlCmd,
    served: &Served,
    sigs: &libc::sigset_t,
    bound: Duration,
) -> Result<bool> {
    let t0 = Instant::now();
    let mut reported = false;
    loop {
        if let Some(res) = ctrl.wait_async(cmd, Duration::from_millis(200))? {
            log::info!(
                "{} completed ({res}) after {:?}",
                ctrl_op_name(cmd.nr),
                t0.elapsed()
            );
            return Ok(true);
        }
        if wait_signal(sigs, Duration::ZERO).is_some() {
            return Ok(false);
        }
        served.heartbeat();
        if t0.elapsed() >= bound && !reported {
            let err = Error::StartTimeout {
                dev_id: served.dev_id,
                waited_ms: t0.elapsed().as_millis() as u64,
                missing: served.missing_fetch_report(),
            };
            if served.faults.is_empty() {
                return Err(err);
            }
            // With injected faults the hang is the point: keep it up for the tracer.
            log::warn!("{err} (faults injected: still waiting)");
            reported = true;
        }
    }
}

fn print_ready(dev_id: u32) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ublk-server: dev {dev_id} ready: /dev/ublkb{dev_id}");
    let _ = out.flush();
}

/// Serve until a signal or an outside stop, then STOP (if we own the teardown).
fn serve_until_signal(ctrl: &mut Ctrl, served: &mut Served, sigs: &libc::sigset_t) -> Result<bool> {
    let bdev = PathBuf::from(format!("/sys/block/ublkb{}", served.dev_id));
    let had_bdev = bdev.exists();
    loop {
        served.heartbeat();
        if let Some(sig) = wait_signal(sigs, Duration::from_millis(500)) {
            log::info!("signal {sig}: stopping device {}", served.dev_id);
            stop_device(ctrl, served, sigs)?;
            return Ok(true);
        }
        // Never send control commands here: an outside DEL holds locks a command would
        // wait on. A vanished disk or self-ended queues say enough.
        if served.any_queue_exited() || (had_bdev && !bdev.exists()) {
            log::warn!("device {} was stopped from outside; exiting", served.dev_id);
            return Ok(false);
        }
    }
}

/// STOP_DEV, which returns only once in-flight I/O is done. Faults can hold I/O forever
/// (hang, stall-queue): that wait is itself a scenario worth tracing, so the first signal
/// leaves them alone and a second one makes the queues fail what they hold.
fn stop_device(ctrl: &mut Ctrl, served: &Served, sigs: &libc::sigset_t) -> Result<()> {
    let cmd = CtrlCmd::stop_dev(served.dev_id);
    ctrl.submit_async(cmd)?;
    let mut released = false;
    let mut hinted = false;
    let t0 = Instant::now();
    loop {
        if ctrl.wait_async(&cmd, Duration::from_millis(250))?.is_some() {
            return Ok(());
        }
        served.heartbeat();
        if !hinted && !served.faults.is_empty() && t0.elapsed() > Duration::from_secs(2) {
            log::warn!(
                "STOP_DEV waits for I/O that injected faults hold; send SIGINT again to fail it"
            );
            hinted = true;
        }
        if !released && wait_signal(sigs, Duration::ZERO).is_some() {
            log::warn!("second signal: failing requests held by injected faults (EIO)");
            served.release_held();
            released = true;
        }
    }
}

/// Refuse a mode the kernel lacks, before any device exists. `features` is GET_FEATURES' answer
/// (0 when the kernel predates the command, so it lacks every newer feature too).
pub fn require_feature(features: u64, flag: u64, option: &str) -> Result<()> {
    if features & flag != 0 {
        return Ok(());
    }
    let name = feature_names(flag).next().unwrap_or("UNKNOWN");
    let since = feature_first_release(flag)
        .map(|v| format!("Linux {v} or newer"))
        .unwrap_or_else(|| "a newer kernel".into());
    let running = kernel_release().map_or(String::new(), |r| format!(" ({r})"));
    let answer = if features == 0 {
        "it answers no GET_FEATURES"
    } else {
        "its GET_FEATURES does not list it"
    };
    Err(Error::Usage(format!(
        "{option} needs UBLK_F_{name}, which this kernel{running} does not offer ({answer}); \
         boot {since}, or run without {option}"
    )))
}

/// ADD_DEV clears the flags the kernel does not know; without GET_FEATURES (before 6.5) its
/// answer is the only place a refused feature shows. CMD_IOCTL_ENCODE is optional (the
/// legacy command numbers serve instead).
fn check_granted(want: u64, granted: u64) -> Result<()> {
    let refused = want & !granted & !UBLK_F_CMD_IOCTL_ENCODE;
    if refused == 0 {
        return Ok(());
    }
    let running = kernel_release().map_or(String::new(), |r| format!(" ({r})"));
    Err(Error::Usage(format!(
        "this kernel{running} added the device without {:?} (ADD_DEV cleared them); boot a \
         kernel that has them, or run without the options that ask for them",
        feature_names(refused).collect::<Vec<_>>()
    )))
}

/// `uname -r`, for messages.
fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `ublk-server run`.
pub fn run(opts: RunOpts) -> Result<()> {
    validate(&opts)?;
    require_root("ublk-server run")?;
    let target = opts.target.build()?;
    let mut ctrl = Ctrl::open()?;
    let sigs = block_signals();
    let mut want = UBLK_F_CMD_IOCTL_ENCODE;
    if opts.recovery {
        want |= UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
    }
    if opts.need_get_data {
        want |= UBLK_F_NEED_GET_DATA;
    }
    if let Some(flag) = opts.mode.needs() {
        require_feature(ctrl.features, flag, opts.mode.flag())?;
        want |= flag;
    }
    if ctrl.features != 0 {
        let missing = want & !ctrl.features & !UBLK_F_CMD_IOCTL_ENCODE;
        if missing != 0 {
            return Err(Error::Usage(format!(
                "this kernel lacks {:?}",
                feature_names(missing).collect::<Vec<_>>()
            )));
        }
        want &= ctrl.features;
    }
    let dev_id = opts.dev_id.unwrap_or(u32::MAX);
    let info_in = ublksrv_ctrl_dev_info {
        nr_hw_queues: opts.queues,
        queue_depth: opts.depth,
        max_io_buf_bytes: DEFAULT_IO_BUF_BYTES,
        dev_id,
        ublksrv_pid: std::process::id() as i32,
        flags: want,
        ..Default::default()
    };
    let info = ctrl.add_dev(&info_in)?;
    log::info!(
        "added dev {}: {} queues, depth {}, buf {} bytes, flags {:#x} [{}]",
        info.dev_id,
        info.nr_hw_queues,
        info.queue_depth,
        info.max_io_buf_bytes,
        info.flags,
        feature_names(info.flags).collect::<Vec<_>>().join(" ")
    );
    let result = check_granted(want, info.flags)
        .and_then(|()| serve_added(&mut ctrl, &info, &opts, target, &sigs));
    if let Err(e) = &result {
        log::debug!("cleaning up dev {} after: {e}", info.dev_id);
    }
    // Delete whatever happened (the char device is closed by now: DEL waits for that).
    let del = ctrl.del_dev(info.dev_id);
    let _ = std::fs::remove_file(saved_run_path(info.dev_id));
    result?;
    del
}

fn serve_added(
    ctrl: &mut Ctrl,
    info: &ublksrv_ctrl_dev_info,
    opts: &RunOpts,
    target: Arc<dyn Target>,
    sigs: &libc::sigset_t,
) -> Result<()> {
    if info.nr_hw_queues < opts.queues {
        log::warn!(
            "the kernel granted {} queues instead of {} (it caps them at the CPU count)",
            info.nr_hw_queues,
            opts.queues
        );
    }
    for f in &opts.faults {
        f.validate(info.nr_hw_queues, info.queue_depth)
            .map_err(Error::Usage)?;
    }
    ctrl.set_params(info.dev_id, &target.params().to_ublk(info.max_io_buf_bytes))?;
    if opts.recovery {
        let saved = SavedRun {
            target: opts.target.clone(),
            need_get_data: opts.need_get_data,
            sched: opts.sched,
            mode: opts.mode,
        };
        // Without this file `recover` cannot rebuild the target: fail now, not after a crash.
        let path = saved_run_path(info.dev_id);
        let json = serde_json::to_vec(&saved)
            .map_err(|e| Error::io("encode the saved run", std::io::Error::other(e)))?;
        std::fs::create_dir_all(ublk_trace_common::tagstate::DIR)
            .and_then(|()| std::fs::write(&path, json))
            .map_err(|e| {
                Error::io(
                    format!("save the target for recovery in {}", path.display()),
                    e,
                )
            })?;
    }
    let mut served = Served::start(
        ctrl,
        info,
        target,
        opts.faults.clone(),
        opts.sched,
        opts.mode,
        opts.tag_state,
    )?;
    let cmd = CtrlCmd::start_dev(info.dev_id, std::process::id() as i32);
    let outcome = start_and_serve(ctrl, &cmd, &mut served, sigs, opts.start_timeout);
    let joined = served.stop_queues();
    outcome?;
    joined.map(|n| log::info!("served {n} requests"))
}

fn start_and_serve(
    ctrl: &mut Ctrl,
    cmd: &CtrlCmd,
    served: &mut Served,
    sigs: &libc::sigset_t,
    bound: Duration,
) -> Result<()> {
    ctrl.submit_async(*cmd)?;
    if served
        .faults
        .iter()
        .any(|f| matches!(f, Fault::NoStartWait))
    {
        log::warn!("injected no-start-wait: START_DEV submitted, never reaped");
        wait_for_path(&format!("/dev/ublkb{}", served.dev_id), bound);
    } else {
        match await_start(ctrl, cmd, served, sigs, bound) {
            Ok(true) => {
                // START_DEV's completion is reaped: the start-gate fault lets its queues serve.
                for sh in &served.shared {
                    sh.started.store(true, Ordering::Release);
                }
            }
            // A start-gated server deadlocks START_DEV on kernels that make it wait for the
            // partition scan; START cannot be cancelled there (it sits in add_disk), and
            // killing the server leaves it stuck for good. So a signal opens the gate: the
            // queues serve the scan, START completes, and the device is stopped as usual.
            Ok(false) if served.faults.iter().any(|f| matches!(f, Fault::StartGate)) => {
                log::warn!("signal while START_DEV waits behind start-gate: opening the gate");
                served.release_held();
                if !matches!(await_start(ctrl, cmd, served, sigs, bound), Ok(true)) {
                    ctrl.cancel_async(cmd);
                    return Ok(());
                }
                for sh in &served.shared {
                    sh.started.store(true, Ordering::Release);
                }
                return stop_device(ctrl, served, sigs);
            }
            // Interrupted or timed out: the pending START holds a device reference that
            // DEL_DEV would wait for. (A START that completed with an error holds nothing.)
            Ok(false) => {
                ctrl.cancel_async(cmd);
                return Ok(());
            }
            Err(e @ Error::StartTimeout { .. }) => {
                ctrl.cancel_async(cmd);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
    if !served.faults.is_empty() {
        settle_partition_scan(served.dev_id);
        wait_for_scan_reads(served, Duration::from_secs(2));
    }
    for sh in &served.shared {
        sh.armed.store(true, Ordering::Relaxed);
    }
    print_ready(served.dev_id);
    serve_until_signal(ctrl, served, sigs).map(|_| ())
}

/// Wait for the kernel's partition scan before arming faults, so injected faults hit the
/// user's I/O, not the scan. From 6.18 the scan runs in a work item after START_DEV returns;
/// it holds the disk's open_mutex, so an open() returns once it is done (6.12 scans inside
/// START_DEV, and the open returns at once). No I/O is done through this descriptor.
fn settle_partition_scan(dev_id: u32) {
    let path = format!("/dev/ublkb{dev_id}");
    match std::fs::File::open(&path) {
        Ok(_) => log::debug!("{path}: partition scan settled"),
        Err(e) => log::debug!("{path}: open for partition scan sync failed: {e}"),
    }
}

/// The open() above can win the race with 6.18's scan work item (queued when START_DEV
/// returns) and return before the scan starts: then the faults armed next hit the scan's
/// reads, not the user's I/O (seen with no-reap on 6.18). So also wait until the queues have
/// served at least one request (a privileged device's scan reads the partition table) and
/// then nothing for 200 ms, at most `bound`.
fn wait_for_scan_reads(served: &Served, bound: Duration) {
    let total = || {
        served
            .shared
            .iter()
            .map(|s| s.served.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let t0 = Instant::now();
    let (mut last, mut since) = (total(), Instant::now());
    while t0.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(20));
        let now = total();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now > 0 && since.elapsed() >= Duration::from_millis(200) {
            log::debug!("partition scan: {now} request(s) served, then quiet");
            return;
        }
    }
    log::debug!("partition scan: {last} request(s) served within {bound:?}");
}

fn wait_for_path(path: &str, bound: Duration) {
    let t0 = Instant::now();
    while !Path::new(path).exists() && t0.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ublk-server recover <id>`: serve a device whose server died, if it was added with
/// `--recovery`.
pub fn recover(dev_id: u32, faults: Vec<Fault>, start_timeout: Duration) -> Result<()> {
    require_root("ublk-server recover")?;
    let mut ctrl = Ctrl::open()?;
    let sigs = block_signals();
    let info = ctrl.get_dev_info(dev_id)?;
    if info.flags & UBLK_F_USER_RECOVERY == 0 {
        return Err(Error::Usage(format!(
            "device {dev_id} was not added with --recovery; delete it with 'ublk-server del {dev_id}'"
        )));
    }
    let saved: SavedRun = std::fs::read(saved_run_path(dev_id))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            Error::Usage(format!(
                "no saved target for device {dev_id} in {}",
                saved_run_path(dev_id).display()
            ))
        })?;
    let target = saved.target.build()?;
    // START_USER_RECOVERY answers EBUSY until the dead server's /dev/ublkcN is released.
    let t0 = Instant::now();
    loop {
        match ctrl.start_user_recovery(dev_id) {
            Ok(()) => break,
            Err(Error::Ctrl { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY)
                    && t0.elapsed() < Duration::from_secs(30) =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
    let info = ctrl.get_dev_info(dev_id)?;
    if let Some(flag) = saved.mode.needs() {
        require_feature(ctrl.features, flag, saved.mode.flag())?;
    }
    let mut served = Served::start(
        &mut ctrl,
        &info,
        target,
        faults,
        saved.sched,
        saved.mode,
        true,
    )?;
    let cmd = CtrlCmd::end_user_recovery(dev_id, std::process::id() as i32);
    let outcome = start_and_serve(&mut ctrl, &cmd, &mut served, &sigs, start_timeout);
    let joined = served.stop_queues();
    // DEL_DEV waits until /dev/ublkcN is closed: drop our fd (and the mappings) first.
    drop(served);
    let del = ctrl.del_dev(dev_id);
    let _ = std::fs::remove_file(saved_run_path(dev_id));
    outcome?;
    joined?;
    del
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(target: TargetSpec, depth: u16) -> RunOpts {
        RunOpts {
            target,
            queues: 1,
            depth,
            dev_id: None,
            recovery: false,
            need_get_data: false,
            faults: vec![],
            start_timeout: Duration::from_secs(1),
            sched: Sched::default(),
            mode: IoMode::default(),
            tag_state: true,
        }
    }

    /// A device added by an older server (no `sched` in its saved run) still recovers, with
    /// the default policy; a saved `normal` survives the round trip.
    #[test]
    fn saved_run_sched_defaults_when_absent() {
        let saved = SavedRun {
            target: TargetSpec::Null { size: 1 << 20 },
            need_get_data: false,
            sched: Sched::Normal,
            mode: IoMode::PerIoDaemon { threads: 2 },
        };
        let mut v = serde_json::to_value(&saved).expect("encode");
        let back: SavedRun = serde_json::from_value(v.clone()).expect("decode");
        assert_eq!(back.sched, Sched::Normal);
        assert_eq!(back.mode, IoMode::PerIoDaemon { threads: 2 });
        let o = v.as_object_mut().expect("object");
        o.remove("sched");
        o.remove("mode");
        let old: SavedRun = serde_json::from_value(v).expect("decode without sched and mode");
        assert_eq!(old.sched, Sched::Batch);
        assert_eq!(old.mode, IoMode::PerTag);
    }

    #[test]
    fn validate_rejects_bad_geometry() {
        let ok = opts(TargetSpec::Null { size: 1 << 20 }, 64);
        assert!(validate(&ok).is_ok());
        let e = validate(&opts(TargetSpec::Null { size: 1 << 20 }, 0)).expect_err("depth 0");
        assert!(e.is_usage());
        let e = validate(&opts(TargetSpec::Ramdisk { size: 0 }, 64)).expect_err("size 0");
        assert!(e.to_string().contains("--size 0"), "{e}");
        assert!(validate(&opts(TargetSpec::Ramdisk { size: 1000 }, 64)).is_err());
    }

    /// The refusal names the feature, the first release that has it and the way out, whether
    /// the kernel answered GET_FEATURES without the bit or not at all.
    #[test]
    fn a_feature_add_dev_cleared_is_named_and_ioctl_encoding_is_optional() {
        assert!(check_granted(UBLK_F_CMD_IOCTL_ENCODE, 0).is_ok());
        let want = UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_USER_RECOVERY;
        assert!(check_granted(want, UBLK_F_USER_RECOVERY).is_ok());
        let e = check_granted(want, 0).expect_err("recovery refused");
        assert!(
            e.is_usage() && e.to_string().contains("USER_RECOVERY"),
            "{e}"
        );
    }

    #[test]
    fn missing_feature_is_refused_by_name_and_release() {
        assert!(require_feature(UBLK_F_PER_IO_DAEMON, UBLK_F_PER_IO_DAEMON, "x").is_ok());
        for features in [UBLK_F_CMD_IOCTL_ENCODE, 0] {
            let e = require_feature(features, UBLK_F_PER_IO_DAEMON, "--per-io-daemon")
                .expect_err("refused");
            assert!(e.is_usage(), "exit 2");
            let m = e.to_string();
            assert!(m.contains("UBLK_F_PER_IO_DAEMON"), "{m}");
            assert!(m.contains("Linux 6.16 or newer"), "{m}");
            assert!(m.contains("run without --per-io-daemon"), "{m}");
        }
    }

    #[test]
    fn batch_mode_refuses_what_it_cannot_do() {
        let mut o = opts(TargetSpec::Null { size: 1 << 20 }, 4);
        o.mode = IoMode::Batch;
        o.faults = vec![Fault::parse("hang:q=0,tag=1").expect("spec")];
        assert!(validate(&o).is_ok(), "a hang is just a missing commit");
        o.faults = vec![Fault::parse("double-commit").expect("spec")];
        let e = validate(&o).expect_err("per-tag commit fault");
        assert!(e.is_usage() && e.to_string().contains("--batch-io"), "{e}");
        o.faults = vec![Fault::parse("no-rearm").expect("spec")];
        assert!(validate(&o).is_ok(), "no-rearm is a batch fault");
        o.faults.clear();
        o.need_get_data = true;
        assert!(validate(&o).expect_err("no NEED_GET_DATA").is_usage());
        o.need_get_data = false;
        o.mode = IoMode::PerTag;
        o.faults = vec![Fault::parse("no-rearm").expect("spec")];
        let e = validate(&o).expect_err("no-rearm without batch");
        assert!(
            e.is_usage() && e.to_string().contains("needs --batch-io"),
            "{e}"
        );
    }

    #[test]
    fn per_io_daemons_need_a_tag_each() {
        let mut o = opts(TargetSpec::Null { size: 1 << 20 }, 4);
        o.mode = IoMode::PerIoDaemon { threads: 4 };
        assert!(validate(&o).is_ok());
        o.mode = IoMode::PerIoDaemon { threads: 5 };
        let e = validate(&o).expect_err("more threads than tags");
        assert!(e.to_string().contains("--threads-per-queue 5"), "{e}");
        o.mode = IoMode::PerIoDaemon { threads: 0 };
        assert!(validate(&o).is_err());
        o.mode = IoMode::PerIoDaemon { threads: 2 };
        o.faults = vec![Fault::parse("stall-queue:q=0,after=1,daemon=1").expect("spec")];
        assert!(validate(&o).is_ok());
        o.faults = vec![Fault::parse("stall-queue:q=0,after=1,daemon=2").expect("spec")];
        let e = validate(&o).expect_err("daemon 2 of 2");
        assert!(e.to_string().contains("no daemon 2"), "{e}");
        o.mode = IoMode::PerTag;
        o.faults = vec![Fault::parse("stall-queue:q=0,after=1,daemon=0").expect("spec")];
        let e = validate(&o).expect_err("a daemon without --per-io-daemon");
        assert!(e.to_string().contains("--per-io-daemon"), "{e}");
    }

    #[test]
    fn ranges_are_compact() {
        assert_eq!(fmt_ranges(&[0, 1, 2, 5, 7, 8]), " (tags 0-2,5,7-8)");
        assert_eq!(fmt_ranges(&[3]), " (tags 3)");
        assert_eq!(fmt_ranges(&[]), "");
    }
}
