//! Load the eBPF programs, attach them, and turn ring-buffer records into typed events.
//!
//! API (used by `record`, `watch`, `diagnose`):
//! ```no_run
//! use std::time::Duration;
//! use ublk_trace::probe::{Tracer, TracerConfig};
//! let mut tracer = Tracer::start(&TracerConfig { dev_filter: Some(0), ..Default::default() })?;
//! for p in tracer.attached().iter().filter(|p| !p.attached) {
//!     eprintln!("not attached: {} on {}: {}", p.program, p.target, p.error);
//! }
//! let mut events = Vec::new();
//! tracer.poll(Duration::from_millis(100), &mut events)?; // appends TraceEvents
//! let dropped = tracer.lost_events();                      // ring buffer full, counted in eBPF
//! tracer.set_streaming(false)?;                            // control commands only
//! # Ok::<(), ublk_trace::probe::ProbeError>(())
//! ```
//! - `start` gathers kernel facts (kallsyms names, BTF offsets), loads the object with the
//!   offsets as a global and attaches what exists; missing optional probes are listed in
//!   `attached()` with the reason, never an error. It fails only when BPF cannot load
//!   (not root) or vmlinux BTF is missing.
//! - `poll` blocks at most `timeout` (no async runtime), drains the ring buffer, and appends
//!   a `Lost { count }` event where drops happened. Per-I/O records do not wake the reader
//!   (a wake-up per record is the dominant cost), so they arrive in batches per `timeout`
//!   (or when the ring is a quarter full): poll with 50-200 ms. Control commands wake it.
//! - State path (DESIGN "Two eBPF paths"): with `TracerConfig { state: true, stream: false }`
//!   the programs keep every tag's last FETCH / queue_rq / delivery / commit / completion
//!   time in a kernel map and send nothing per I/O; `tracer.tag_states()` reads it once per
//!   tick ([`KernelTag`] per (dev, queue, tag)). Control commands still stream.
//! - `BlockStage::Issue` events are off by default when the `queue_rq` kprobes are attached
//!   (duplicates of `QueueRq`); `TracerConfig::block_issue` forces them on.
//! - Events are system-wide (filtered by `dev_filter` for per-I/O events); control commands
//!   are always reported, also with streaming off.
pub mod decode;
pub mod status;
pub mod tracer;

pub use status::ProbeStatus;
pub use tracer::{
    Counters, IoPrograms, LatencyEntry, ProbeError, ProgramStat, TagStateEntry, Tracer,
    TracerConfig, monotonic_ns,
};
pub use ublk_trace_common::tagmap::KernelTag;
