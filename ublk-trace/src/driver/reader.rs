//! [`Reader`]: built once (BTF layout, the kcore fd, the address of `ublk_index_idr`), then
//! `read(target, deadline)` on every tick. Reads run on the reader's own thread, abandoned at
//! a deadline (a read of /proc/kcore should not block, but the tracer must never hang on what
//! it diagnoses); a thread left behind is replaced on the next read.
use std::cell::RefCell;
use std::sync::mpsc;
use std::time::Instant;

use super::device::{Ctx, read_device};
use super::flags::{self, FlagRow};
use super::kcore::{KCORE_PATH, Kcore, Memory};
use super::layout::{Layout, LayoutError};
use super::{DeviceState, DriverSnapshot, Dropped, SCHEMA_VERSION, Target, WalkError, xarray};
use crate::kernel::btf;
use crate::kernel::facts::kernel_release;
use crate::kernel::kallsyms::Kallsyms;
use crate::selfcost::{self, Part};
use crate::snapshot::read::monotonic_ns;

pub const IDR_SYMBOL: &str = "ublk_index_idr";
pub const LOCKDOWN_PATH: &str = "/sys/kernel/security/lockdown";

/// Why the driver's state cannot be read here; each message names the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error(
        "{KCORE_PATH} does not exist: the kernel lacks CONFIG_PROC_KCORE=y (use a kernel with it; events remain the fallback)"
    )]
    NoKcore,
    #[error(
        "kernel lockdown=confidentiality forbids reading {KCORE_PATH} (see {LOCKDOWN_PATH}): boot with lockdown=integrity or none"
    )]
    Lockdown,
    #[error("open {KCORE_PATH}: {0}; run as root (CAP_SYS_RAWIO)")]
    NotRoot(String),
    #[error("{KCORE_PATH}: {0}")]
    BadKcore(String),
    #[error("ublk_drv is not loaded: run 'modprobe ublk_drv'")]
    NotLoaded,
    #[error(
        "{IDR_SYMBOL} is not in /proc/kallsyms although ublk_drv is loaded (a kernel built without KALLSYMS_ALL?); report 'ublk-trace doctor --json'"
    )]
    NoSymbol,
    #[error(
        "/proc/kallsyms shows {IDR_SYMBOL} at address 0: run as root (kptr_restrict hides addresses)"
    )]
    AddressesHidden,
    #[error("read /proc/kallsyms: {0}")]
    Kallsyms(String),
    #[error("{0}; use a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoVmlinuxBtf(String),
    #[error(
        "no module BTF for ublk_drv ({0}): use a kernel built with CONFIG_DEBUG_INFO_BTF_MODULES=y"
    )]
    NoModuleBtf(String),
    #[error("this kernel's ublk layout is not known: {0}; report 'ublk-trace doctor --json'")]
    Layout(LayoutError),
    #[error("{IDR_SYMBOL} could not be read: {0}")]
    Idr(String),
    #[error("dev {0} is not in {IDR_SYMBOL} (no such ublk device)")]
    NoSuchDevice(u32),
    #[error(
        "the driver-state read did not finish by its deadline ({waited_ms} ms); it was left behind"
    )]
    TimedOut { waited_ms: u64 },
}

/// The parts built once.
struct Inner {
    mem: Kcore,
    layout: Layout,
    idr_addr: u64,
    row: &'static FlagRow,
    in_table: bool,
    release: String,
}

/// The driver-state reader: one per process, `read()` once per tick.
pub struct Reader {
    worker: Option<Worker>,
    /// Kept when a read was abandoned, to describe the layout while it is rebuilt.
    not_readable: Vec<String>,
}

fn lockdown_confidential() -> bool {
    std::fs::read_to_string(LOCKDOWN_PATH).is_ok_and(|s| s.contains("[confidentiality]"))
}

/// The address of `ublk_index_idr`.
fn idr_address() -> Result<u64, DriverError> {
    let ks = Kallsyms::load_shared().map_err(|e| DriverError::Kallsyms(e.to_string()))?;
    match ks.exact(IDR_SYMBOL) {
        Some(s) if s.addr == 0 => Err(DriverError::AddressesHidden),
        Some(s) => Ok(s.addr),
        None if std::path::Path::new("/sys/module/ublk_drv").exists() => Err(DriverError::NoSymbol),
        None => Err(DriverError::NotLoaded),
    }
}

/// vmlinux + ublk_drv BTF, resolved into a layout.
fn load_layout() -> Result<Layout, DriverError> {
    // The same parse as the probes' (shared per process).
    let (b, has_module) = crate::kernel::offsets::load_kernel_btf()
        .map_err(|e| DriverError::NoVmlinuxBtf(e.to_string()))?;
    if !has_module {
        return Err(DriverError::NoModuleBtf(format!(
            "cannot read {}",
            btf::module_path("ublk_drv")
        )));
    }
    Layout::from_btf(&b).map_err(DriverError::Layout)
}

fn open_kcore() -> Result<Kcore, DriverError> {
    Kcore::open().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DriverError::NoKcore,
        std::io::ErrorKind::PermissionDenied if lockdown_confidential() => DriverError::Lockdown,
        std::io::ErrorKind::PermissionDenied => DriverError::NotRoot(e.to_string()),
        _ => DriverError::BadKcore(e.to_string()),
    })
}

impl Inner {
    /// The layout comes first so that a failure later still reports what it lacks.
    fn open(layout_out: &mut Vec<String>) -> Result<Self, DriverError> {
        if lockdown_confidential() {
            return Err(DriverError::Lockdown);
        }
        let idr_addr = idr_address()?;
        let layout = load_layout()?;
        layout_out.clone_from(&layout.not_readable);
        let mem = open_kcore()?;
        let release = kernel_release();
        let (row, in_table) = flags::row_for(&release);
        Ok(Self {
            mem,
            layout,
            idr_addr,
            row,
            in_table,
            release,
        })
    }

    fn read(&self, target: Target, deadline: Instant) -> Result<DriverSnapshot, DriverError> {
        let taken_ns = monotonic_ns();
        let t0 = Instant::now();
        let ms = |t: Instant| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (devices, dropped) = walk(
            &self.mem,
            &self.layout,
            self.row,
            self.idr_addr,
            target,
            deadline,
        )
        .map_err(|e| match e {
            DriverError::TimedOut { .. } => DriverError::TimedOut { waited_ms: ms(t0) },
            e => e,
        })?;
        Ok(DriverSnapshot {
            schema: SCHEMA_VERSION,
            kernel: self.release.clone(),
            taken_ns,
            took_us: u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX),
            flags_table: flags::describe(self.row, self.in_table),
            not_readable: self.layout.not_readable.clone(),
            devices,
            dropped,
        })
    }
}

/// A reply from the worker: the job's number and its result.
type Reply = (u64, Result<DriverSnapshot, DriverError>);

/// The thread that owns [`Inner`] and does the reads. One thread for every read, not one per
/// read: under TCG a thread's creation and teardown cost more than the read itself.
struct Worker {
    jobs: mpsc::Sender<(u64, Target, Instant)>,
    replies: mpsc::Receiver<Reply>,
    seq: u64,
}

impl Worker {
    fn spawn(inner: Inner) -> Result<Self, DriverError> {
        let (jobs, job_rx) = mpsc::channel::<(u64, Target, Instant)>();
        let (reply_tx, replies) = mpsc::channel::<Reply>();
        std::thread::Builder::new()
            .name("driver-read".into())
            .spawn(move || {
                // Ends when the Reader drops its sender (or gave up on this worker).
                for (seq, target, deadline) in job_rx {
                    let r = selfcost::charge(Part::DriverRead, || inner.read(target, deadline));
                    if reply_tx.send((seq, r)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| DriverError::BadKcore(format!("start the reader thread: {e}")))?;
        Ok(Self {
            jobs,
            replies,
            seq: 0,
        })
    }
}

impl Reader {
    /// Check everything and build the reader (parses BTF: call once, not per tick).
    pub fn open() -> Result<Self, DriverError> {
        let mut not_readable = Vec::new();
        let inner = Inner::open(&mut not_readable)?;
        Ok(Self {
            worker: Some(Worker::spawn(inner)?),
            not_readable,
        })
    }

    /// Fields this kernel lacks ("ublk_io.task").
    pub fn not_readable(&self) -> &[String] {
        &self.not_readable
    }

    /// Read `target` once (two passes per queue) by `deadline`. A read that does not finish
    /// by then is reported as timed out and its worker abandoned; the next read starts a new
    /// one.
    pub fn read(
        &mut self,
        target: Target,
        deadline: Instant,
    ) -> Result<DriverSnapshot, DriverError> {
        let mut w = match self.worker.take() {
            Some(w) => w,
            None => Worker::spawn(Inner::open(&mut self.not_readable)?)?,
        };
        let t0 = Instant::now();
        w.seq += 1;
        if w.jobs.send((w.seq, target, deadline)).is_err() {
            return Err(DriverError::BadKcore("the reader thread is gone".into()));
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match w.replies.recv_timeout(left) {
                Ok((seq, r)) if seq == w.seq => {
                    self.worker = Some(w);
                    return r;
                }
                Ok(_) => continue, // a late answer to an earlier job
                Err(_) => {
                    let waited_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                    return Err(DriverError::TimedOut { waited_ms });
                }
            }
        }
    }
}

/// Walk `ublk_index_idr` and every device of `target`. A device that cannot be read through
/// is dropped with the reason; only an unreadable IDR fails the whole read.
pub fn walk(
    mem: &dyn Memory,
    l: &Layout,
    row: &FlagRow,
    idr_addr: u64,
    target: Target,
    deadline: Instant,
) -> Result<(Vec<DeviceState>, Vec<Dropped>), DriverError> {
    let entries =
        xarray::idr_for_each(mem, l, idr_addr).map_err(|e| DriverError::Idr(e.to_string()))?;
    let ctx = Ctx {
        mem,
        l,
        row,
        deadline,
        tasks: RefCell::new(Vec::new()),
    };
    let wanted: Vec<(u64, u64)> = match target {
        Target::All => entries,
        Target::Dev(id) => {
            let e: Vec<_> = entries
                .into_iter()
                .filter(|(i, _)| *i == u64::from(id))
                .collect();
            if e.is_empty() {
                return Err(DriverError::NoSuchDevice(id));
            }
            e
        }
    };
    let t0 = Instant::now();
    let mut devices = Vec::new();
    let mut dropped = Vec::new();
    for (dev_id, ub) in wanted {
        match read_device(&ctx, dev_id, ub) {
            Ok(d) => devices.push(d),
            Err(WalkError::Deadline) => {
                let waited_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                return Err(DriverError::TimedOut { waited_ms });
            }
            Err(e) => dropped.push(Dropped {
                dev_id,
                reason: e.to_string(),
            }),
        }
    }
    Ok((devices, dropped))
}

/// What `doctor` reports: whether a read works here, and what this kernel lacks.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Devices read, or why the reader does not work.
    pub result: Result<DriverSnapshot, DriverError>,
    pub not_readable: Vec<String>,
}

/// Open a reader and read every device once, the read bounded by `timeout` (the open parses
/// BTF and is not bounded: it reads only files).
pub fn probe(timeout: std::time::Duration) -> Probe {
    let mut not_readable = Vec::new();
    let result = Inner::open(&mut not_readable).and_then(|inner| {
        let deadline = Instant::now() + timeout;
        let mut r = Reader {
            worker: Some(Worker::spawn(inner)?),
            not_readable: not_readable.clone(),
        };
        r.read(Target::All, deadline)
    });
    Probe {
        result,
        not_readable,
    }
}
