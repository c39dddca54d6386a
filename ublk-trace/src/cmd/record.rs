//! `ublk-trace record`: stream events to JSON lines (replayable) or a Perfetto trace.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::event::TraceEvent;
use crate::probe::{Tracer, TracerConfig, monotonic_ns};
use crate::record::{JsonlWriter, RecordHeader, perfetto};

mod fastjson;
use ublk_trace_common::event::RAW_EVENT_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line: a header, then one event per line (replay with `report`).
    Jsonl,
    /// Chrome trace-event JSON for ui.perfetto.dev (written when recording ends).
    Perfetto,
}

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Record per-I/O events of this device only (control commands are always recorded).
    #[arg(long)]
    pub dev: Option<u32>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: Format,
    /// Output file.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Do not trace: convert this JSON-lines recording to `--format perfetto`.
    #[arg(long, value_name = "JSONL")]
    pub from: Option<PathBuf>,
    /// Also attach an opt-in probe (repeatable): `ublk_queue_rq` (kprobes on ublk_queue_rq
    /// and ublk_queue_rqs: each request start then comes from the driver's own entry point,
    /// which also sees a request it fails before starting; the block_rq_issue tracepoint is
    /// recorded beside it). Off by default for cost: one kprobe trap per I/O.
    #[arg(long = "probe", value_name = "NAME", value_parser = OPT_IN_PROBES)]
    pub probes: Vec<String>,
}

/// Probes `record --probe` can add (the kernel's function names; `queue_rq` is accepted too).
pub const OPT_IN_PROBES: [&str; 2] = ["ublk_queue_rq", "queue_rq"];

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM end the recording cleanly (flush, print counts).
fn install_stop_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Offline conversion of a recording to a Perfetto trace.
fn convert(from: &std::path::Path, args: &RecordArgs) -> anyhow::Result<ExitCode> {
    if args.format != Format::Perfetto {
        anyhow::bail!("--from converts a recording; add '--format perfetto'");
    }
    let (_, events) = crate::record::read_jsonl(from)?;
    let doc = perfetto::export(&events);
    std::fs::write(&args.output, doc.to_string())
        .with_context(|| format!("write {}", args.output.display()))?;
    eprintln!(
        "ublk-trace: converted {} events -> {}",
        events.len(),
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

enum Sink {
    /// The file after `JsonlWriter`'s header line, and a line buffer: events are formatted
    /// by [`fastjson`] (the same JSON, without serde's per-field map).
    Jsonl(std::io::BufWriter<std::fs::File>, Vec<u8>),
    Perfetto(Vec<TraceEvent>),
}

impl Sink {
    fn write(&mut self, e: &TraceEvent) -> std::io::Result<()> {
        use std::io::Write;
        match self {
            Sink::Jsonl(w, line) => {
                line.clear();
                fastjson::write_line(line, e);
                w.write_all(line)
            }
            Sink::Perfetto(v) => {
                v.push(e.clone());
                Ok(())
            }
        }
    }

    fn finish(self, output: &std::path::Path) -> anyhow::Result<()> {
        use std::io::Write;
        match self {
            Sink::Jsonl(mut w, _) => {
                w.flush()
                    .with_context(|| format!("flush {}", output.display()))?;
            }
            Sink::Perfetto(v) => {
                let doc = perfetto::export(&v);
                std::fs::write(output, doc.to_string())
                    .with_context(|| format!("write {}", output.display()))?;
            }
        }
        Ok(())
    }
}

/// A spooled record that stands for `arg0` events lost (ring buffer full) before it; never
/// written by eBPF.
const SPOOL_LOST: u32 = u32::MAX;

/// Raw ring records between the reader and the converter: an unlinked file next to the
/// output, appended by the reader, read behind it by the converter.
///
/// Why: decoding and formatting an event costs far more CPU than copying its 80 bytes, and
/// a recorder that formats at the pace of the I/O takes that CPU from the workload it
/// traces (record kept 0.5-0.7 of untraced IOPS in the TCG guest). The reader only copies,
/// so the ring never overflows. The converter keeps up while the traffic is light, waits
/// while it is heavy, runs only on CPU time nothing else wants (SCHED_IDLE) and catches up
/// at the latest when the recording stops (or at nice 19 when the backlog passes
/// [`SPOOL_BACKLOG_MAX`]).
struct Spool {
    file: std::fs::File,
    /// Bytes appended so far (whole records).
    written: AtomicU64,
    /// The reader has appended its last record.
    done: AtomicBool,
    /// The converter's thread id, to raise its priority for the final catch-up.
    converter_tid: std::sync::atomic::AtomicI32,
    /// Ring records per second the reader saw lately.
    rate: AtomicU64,
}

impl Spool {
    fn create(output: &std::path::Path) -> anyhow::Result<Self> {
        let name = format!(
            ".{}.spool-{}",
            output
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        );
        let path = output.with_file_name(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("create the spool file {}", path.display()))?;
        // Unlinked at once: it goes away with the process, however that ends.
        let _ = std::fs::remove_file(&path);
        Ok(Self {
            file,
            written: AtomicU64::new(0),
            done: AtomicBool::new(false),
            converter_tid: std::sync::atomic::AtomicI32::new(0),
            rate: AtomicU64::new(0),
        })
    }

    fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let at = self.written.load(Ordering::Acquire);
        self.file.write_all_at(bytes, at)?;
        self.written
            .store(at + bytes.len() as u64, Ordering::Release);
        Ok(())
    }
}

/// User + system CPU time of this process so far, ms.
fn cpu_time_ms() -> u64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into a valid rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let ms = |t: libc::timeval| (t.tv_sec as u64) * 1000 + (t.tv_usec as u64) / 1000;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

/// How the converter thread competes for the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Priority {
    /// SCHED_IDLE: only CPU time nothing else wants; a waking task preempts it at once.
    Idle,
    /// SCHED_OTHER at nice 19: a bounded share (the spool backlog is too large).
    Low,
    /// SCHED_OTHER at nice 0: the final catch-up after the stop.
    Normal,
}

/// Set the scheduling of thread `tid` (0 = the caller).
fn set_priority(tid: i32, p: Priority) {
    let (policy, nice) = match p {
        Priority::Idle => (libc::SCHED_IDLE, 19),
        Priority::Low => (libc::SCHED_OTHER, 19),
        Priority::Normal => (libc::SCHED_OTHER, 0),
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler and setpriority on one thread id, with a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if rc != 0 {
        log::debug!(
            "sched_setscheduler({tid}, {p:?}): {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: as above; the nice value also applies under SCHED_IDLE (it is kept for later).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc != 0 {
        log::debug!(
            "setpriority({tid}, {nice}): {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Above this backlog the converter stops waiting for idle CPU and takes a nice-19 share,
/// so a recording under endless full load does not fill the disk with spool.
const SPOOL_BACKLOG_MAX: u64 = 256 << 20;

/// How often the reader drains the ring.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// A drain this big (an eighth of the default ring) is followed by another at once.
const BIG_DRAIN: usize = 6000;

/// Below this many ring records a second the converter keeps up as they come; above, it
/// waits for the traffic to drop (or for the stop, or for the backlog bound).
const LIGHT_RECORDS_PER_SEC: u64 = 2000;

/// Decode spooled records into `sink` until the reader is done and every record is read.
/// Returns (events written, records that did not decode).
fn convert_spool(
    spool: &Spool,
    decoder: &crate::probe::decode::Decoder,
    sink: &mut Sink,
) -> anyhow::Result<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    use ublk_trace_common::event::{RAW_EVENT_BYTES, RawEvent};
    const CHUNK: usize = RAW_EVENT_BYTES * 4096;
    let mut buf = vec![0u8; CHUNK];
    let mut events = Vec::new();
    let (mut read, mut total, mut bad) = (0u64, 0u64, 0u64);
    let mut last_ts = 0u64;
    let mut prio = Priority::Idle;
    loop {
        let done = spool.done.load(Ordering::Acquire);
        let written = spool.written.load(Ordering::Acquire);
        if read == written {
            if done {
                return Ok((total, bad));
            }
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        // Under heavy traffic, wait: formatting competes with the traced workload even on
        // idle-class CPU time (wake-up latency, caches). Convert when traffic is light, when
        // the backlog passes the bound, and after the stop.
        let backlog = written - read;
        if !done
            && backlog <= SPOOL_BACKLOG_MAX
            && spool.rate.load(Ordering::Relaxed) > LIGHT_RECORDS_PER_SEC
        {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        // The final catch-up after the stop runs at normal priority (the workload may
        // still run); the reader also raises it, in case this thread is waiting here.
        if done && prio != Priority::Normal {
            set_priority(0, Priority::Normal);
            prio = Priority::Normal;
        } else if !done {
            let want = if backlog > SPOOL_BACKLOG_MAX {
                Priority::Low
            } else {
                Priority::Idle
            };
            if want != prio {
                set_priority(0, want);
                prio = want;
            }
        }
        let n = usize::try_from(written - read).unwrap_or(CHUNK).min(CHUNK);
        spool
            .file
            .read_exact_at(&mut buf[..n], read)
            .context("read the spool file")?;
        read += n as u64;
        events.clear();
        for rec in buf[..n].chunks_exact(RAW_EVENT_BYTES) {
            let Some(r) = RawEvent::from_le_bytes(rec) else {
                bad += 1;
                continue;
            };
            if r.kind == SPOOL_LOST {
                events.push(TraceEvent {
                    ts_ns: last_ts,
                    pid: 0,
                    tid: 0,
                    comm: String::new(),
                    kind: crate::event::EventKind::Lost { count: r.arg0 },
                });
                continue;
            }
            last_ts = r.ts_ns;
            if let Err(e) = decoder.decode(&r, &mut events) {
                bad += 1;
                log::debug!("skipping record: {e}");
            }
        }
        for e in &events {
            sink.write(e).context("write the recording")?;
        }
        total += events.len() as u64;
    }
}

pub fn run(args: RecordArgs) -> anyhow::Result<ExitCode> {
    if let Some(from) = &args.from {
        return convert(from, &args);
    }
    // First thing: a background job's SIGINT is ignored by default, and start-up (BTF,
    // kallsyms) takes seconds in an emulated guest; a Ctrl-C during it must not be lost.
    install_stop_handlers();
    let cfg = TracerConfig {
        dev_filter: args.dev,
        // A recording is for offline analysis: keep the block issue (issue -> complete
        // latency in `report`); it is decoded from the request-start record, no extra cost.
        block_issue: Some(true),
        queue_rq_kprobes: args.probes.iter().any(|p| p.ends_with("queue_rq")),
        ..Default::default()
    };
    let mut tracer = Tracer::start(&cfg).context("start the tracer (see 'ublk-trace doctor')")?;
    let attached = tracer.attached().iter().filter(|p| p.attached).count();
    for p in tracer
        .attached()
        .iter()
        .filter(|p| !p.attached && p.required)
    {
        eprintln!(
            "ublk-trace: warning: {} not attached to {}: {}",
            p.program, p.target, p.error
        );
    }
    if attached == 0 {
        anyhow::bail!("no probe could be attached; run 'ublk-trace doctor' for the reason");
    }
    let mut header = RecordHeader::new(tracer.kernel_release().to_string());
    header.start_ns = monotonic_ns();
    header.start_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    header.dev_filter = args.dev;
    header.probes = tracer.attached().to_vec();
    let mut sink = match args.format {
        Format::Jsonl => Sink::Jsonl(
            JsonlWriter::create(&args.output, &header)
                .and_then(|w| w.finish())
                .with_context(|| format!("create {}", args.output.display()))?,
            Vec::with_capacity(512),
        ),
        Format::Perfetto => Sink::Perfetto(Vec::new()),
    };
    let spool = std::sync::Arc::new(Spool::create(&args.output)?);
    let decoder = tracer.decoder();
    let converter = {
        let spool = spool.clone();
        std::thread::Builder::new()
            .name("convert".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                spool.converter_tid.store(tid, Ordering::SeqCst);
                set_priority(0, Priority::Idle);
                let r = convert_spool(&spool, &decoder, &mut sink);
                (r, sink)
            })
            .context("start the converter thread")?
    };
    // Tests and scripts wait for this line before starting I/O.
    eprintln!(
        "ublk-trace: recording ({attached} probes attached) to {}; Ctrl-C to stop",
        args.output.display()
    );
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut lost_reported = 0u64;
    let mut short = 0u64;
    let mut failed: Option<anyhow::Error> = None;
    let (mut last_poll, mut seen_since) = (Instant::now(), 0u64);
    let (mut last_drain, mut last_n) = (Instant::now(), 0usize);
    loop {
        let done = STOP.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d);
        // After the stop, one last non-blocking drain picks up what is already in the ring.
        let timeout = if done {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        // One drain per period: the ring is never empty under load, and draining it as fast
        // as records trickle in (a few per pass) kept a CPU busy. A big last drain means the
        // ring fills fast: drain again at once.
        if !done && last_n < BIG_DRAIN && last_drain.elapsed() < DRAIN_EVERY {
            std::thread::sleep(DRAIN_EVERY.saturating_sub(last_drain.elapsed()));
        }
        last_drain = Instant::now();
        buf.clear();
        let n = tracer
            .poll_bytes(timeout, |rec| match rec.get(..RAW_EVENT_BYTES) {
                Some(r) => buf.extend_from_slice(r),
                None => short += 1,
            })
            .context("read events")?;
        last_n = n;
        let dropped = tracer.lost_events();
        if dropped > lost_reported {
            let marker = ublk_trace_common::event::RawEvent {
                kind: SPOOL_LOST,
                arg0: dropped - lost_reported,
                ..Default::default()
            };
            buf.extend_from_slice(&marker.to_le_bytes());
            lost_reported = dropped;
        }
        let now = Instant::now();
        let ms = now.duration_since(last_poll).as_millis().max(1) as u64;
        if ms >= 100 || n == 0 {
            spool
                .rate
                .store((seen_since + n as u64) * 1000 / ms, Ordering::Relaxed);
            seen_since = 0;
            last_poll = now;
        } else {
            seen_since += n as u64;
        }
        if let Err(e) = spool.append(&buf) {
            failed = Some(anyhow::Error::new(e).context("append to the spool file"));
            break;
        }
        if done && n == 0 {
            break;
        }
    }
    spool.done.store(true, Ordering::Release);
    // The final catch-up runs at normal priority: the workload may still be running.
    let tid = spool.converter_tid.load(Ordering::SeqCst);
    if tid != 0 {
        set_priority(tid, Priority::Normal);
    }
    let t0 = Instant::now();
    let (converted, sink) = converter
        .join()
        .map_err(|_| anyhow::anyhow!("the converter thread panicked"))?;
    let (total, bad) = converted?;
    if let Some(e) = failed {
        return Err(e);
    }
    sink.finish(&args.output)?;
    log::info!(
        "caught up with the spool in {:?} after the stop",
        t0.elapsed()
    );
    let c = tracer.counters().context("read the eBPF counters")?;
    eprintln!(
        "ublk-trace: recorded {total} events, {} dropped (ring buffer full), {} unpaired returns, {} decode errors -> {}",
        c.dropped,
        c.unpaired,
        bad + short + tracer.decode_errors(),
        args.output.display()
    );
    eprintln!("ublk-trace: recorder CPU time {} ms", cpu_time_ms());
    // Per-program cost, when the kernel counts it (kernel.bpf_stats_enabled=1).
    for p in tracer.program_stats().iter().filter(|p| p.run_cnt > 0) {
        eprintln!(
            "ublk-trace: program {} ran {} times, {} ns per run, {} ms in all",
            p.program,
            p.run_cnt,
            p.run_time_ns / p.run_cnt,
            p.run_time_ns / 1_000_000
        );
    }
    Ok(ExitCode::SUCCESS)
}
