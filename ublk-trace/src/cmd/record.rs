//! `ublk-trace record`: stream events to JSON lines (replayable) or a Perfetto trace.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::event::TraceEvent;
use crate::probe::{Tracer, TracerConfig, monotonic_ns};
use crate::record::{JsonlWriter, RecordHeader, perfetto};

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
}

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
    Jsonl(JsonlWriter<std::io::BufWriter<std::fs::File>>),
    Perfetto(Vec<TraceEvent>),
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
        // A recording is for offline analysis: keep block_rq_issue (issue -> complete
        // latency in `report`) although it duplicates queue_rq.
        block_issue: Some(true),
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
                .with_context(|| format!("create {}", args.output.display()))?,
        ),
        Format::Perfetto => Sink::Perfetto(Vec::new()),
    };
    // Tests and scripts wait for this line before starting I/O.
    eprintln!(
        "ublk-trace: recording ({attached} probes attached) to {}; Ctrl-C to stop",
        args.output.display()
    );
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut batch = Vec::new();
    let mut total = 0u64;
    loop {
        let done = STOP.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d);
        // After the stop, one last non-blocking drain picks up what is already in the ring.
        let timeout = if done {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        batch.clear();
        tracer.poll(timeout, &mut batch).context("read events")?;
        total += batch.len() as u64;
        match &mut sink {
            Sink::Jsonl(w) => {
                for e in &batch {
                    w.write(e)
                        .with_context(|| format!("write {}", args.output.display()))?;
                }
            }
            Sink::Perfetto(v) => v.extend(batch.iter().cloned()),
        }
        if done && batch.is_empty() {
            break;
        }
    }
    match sink {
        Sink::Jsonl(w) => {
            w.finish()
                .with_context(|| format!("flush {}", args.output.display()))?;
        }
        Sink::Perfetto(v) => {
            let doc = perfetto::export(&v);
            std::fs::write(&args.output, doc.to_string())
                .with_context(|| format!("write {}", args.output.display()))?;
        }
    }
    let c = tracer.counters().context("read the eBPF counters")?;
    eprintln!(
        "ublk-trace: recorded {total} events, {} dropped (ring buffer full), {} unpaired returns, {} decode errors -> {}",
        c.dropped,
        c.unpaired,
        tracer.decode_errors(),
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
