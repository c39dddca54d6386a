//! Load the eBPF object, set its globals, attach what this kernel has, read the ring buffer.

use std::os::fd::AsRawFd;
use std::time::Duration;

use aya::maps::{Array, HashMap as AyaHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::kprobe::KProbeLinkId;
use aya::programs::raw_trace_point::RawTracePointLinkId;
use aya::programs::{KProbe, RawTracePoint};
use aya::{Ebpf, EbpfLoader};
use ublk_trace_common::event::*;
use ublk_trace_common::latmap::{LAT_BUCKETS, LAT_MAP, LatHist};
use ublk_trace_common::offsets::Offsets;
use ublk_trace_common::tagmap::{KernelTag, TAGS_MAP, split_tag_key};

use super::decode::Decoder;
use super::status::ProbeStatus;
use crate::event::{EventKind, TraceEvent};
use crate::kernel::facts::Facts;
use crate::kernel::kallsyms::Resolved;

/// The eBPF object built by build.rs (aya-build) from `ublk-trace-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ublk-trace"));

/// The embedded eBPF object, whose SHA-256 `--version` prints (`UBLK_TRACE_EBPF_SHA256`).
pub fn ebpf_object() -> &'static [u8] {
    EBPF_OBJECT
}

#[derive(Debug, Clone)]
pub struct TracerConfig {
    /// Per-I/O events for this device only (control commands are always reported).
    pub dev_filter: Option<u32>,
    /// Stream per-I/O events (FETCH/COMMIT, queue_rq, delivery, block). Off = control only.
    pub stream: bool,
    /// Attach the ublk kprobes (needs ublk_drv and kprobes).
    pub kprobes: bool,
    /// Attach the block raw tracepoints.
    pub block: bool,
    /// Block tracepoints report every disk, not only `ublkb*` (tests on hosts without ublk).
    pub all_disks: bool,
    /// Report `Block { stage: Issue }` events. `None` (default): only for disks other than
    /// ublk (`all_disks`). On a ublk disk the issue is the request start, reported as
    /// `QueueRq`; `Some(true)` adds an `Issue` event decoded from the same ring record (the
    /// model's issue -> complete latency), at no extra kernel cost.
    pub block_issue: Option<bool>,
    /// Ring-buffer size in bytes (power of two, multiple of the page size); `None` = the
    /// object's default (4 MiB). Small rings let tests provoke drops.
    pub ring_bytes: Option<u32>,
    /// Keep the in-kernel per-tag state map ([`Tracer::tag_states`]): watch's cheap path,
    /// whose cost does not grow with the events read. Independent of `stream`.
    pub state: bool,
    /// Also attach kprobes on `ublk_queue_rq(s)`. Off by default: ublk starts every request
    /// there, so the block_rq_issue raw tracepoint reports the same request start
    /// (`QueueRq`) without a kprobe trap per I/O. On: the start comes from the kprobes, which
    /// also see a request the driver fails before starting it.
    pub queue_rq_kprobes: bool,
    /// With `state` and `stream` off: still send, one by one, the rare per-I/O events the
    /// diagnosis needs (rejected commands; commits with a result <= 0 or this many ms or more
    /// after the request started, each after its `QueueRq` rebuilt from the map; failed
    /// completions; requeues). 0 = none. On the light path: completions this slow.
    pub rare_slow_ms: u32,
    /// Which per-I/O programs are attached at all (an attached kprobe costs a trap per I/O
    /// even when its program returns at once).
    pub io_programs: IoPrograms,
}

/// The per-I/O programs a tracer attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoPrograms {
    /// Every one this kernel has (record, the state path).
    #[default]
    All,
    /// Only what the driver's memory cannot show: the command handler's entry and return
    /// (rejected commands), block_rq_complete (the latency histograms, failed and slow
    /// completions) and block_rq_requeue. Sets the light path (`SWITCH_LIGHT`).
    Light,
    /// None: control commands only.
    None,
}

impl IoPrograms {
    /// Whether plan `program` is attached on this path.
    fn wants(self, program: &str) -> bool {
        match self {
            Self::All => true,
            Self::Light => matches!(
                program,
                "ctrl_enter"
                    | "ctrl_exit"
                    | "io_enter"
                    | "io_exit"
                    | "blk_complete"
                    | "blk_requeue"
            ),
            Self::None => matches!(program, "ctrl_enter" | "ctrl_exit"),
        }
    }
}

impl Default for TracerConfig {
    fn default() -> Self {
        Self {
            dev_filter: None,
            stream: true,
            kprobes: true,
            block: true,
            all_disks: false,
            block_issue: None,
            state: false,
            ring_bytes: None,
            queue_rq_kprobes: false,
            rare_slow_ms: 0,
            io_programs: IoPrograms::All,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("vmlinux BTF is needed to find kernel structure offsets: {0}")]
    Btf(#[from] crate::kernel::btf::BtfError),
    #[error(
        "kernel structure offsets missing from BTF: {0:?}; this kernel is not supported yet, please report it with 'ublk-trace doctor --json'"
    )]
    Offsets(Vec<String>),
    #[error(
        "load the eBPF programs: {0}; run as root (CAP_BPF + CAP_PERFMON) and check 'ublk-trace doctor'"
    )]
    Load(#[source] aya::EbpfError),
    #[error("eBPF object has no {0}; rebuild ublk-trace")]
    Missing(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("poll the ring buffer: {0}")]
    Poll(#[source] std::io::Error),
}

#[derive(Clone, Copy)]
enum Attach {
    Kprobe,
    Kretprobe,
    RawTp,
}

/// One program and what it attaches to: a kallsyms concept or a tracepoint.
struct Plan {
    program: &'static str,
    how: Attach,
    target: &'static str,
    required: bool,
}

const PLANS: &[Plan] = &[
    Plan {
        program: "ctrl_enter",
        how: Attach::Kprobe,
        target: "ctrl_handler",
        required: true,
    },
    Plan {
        program: "ctrl_exit",
        how: Attach::Kretprobe,
        target: "ctrl_handler",
        required: true,
    },
    Plan {
        program: "io_enter",
        how: Attach::Kprobe,
        target: "io_handler",
        required: true,
    },
    Plan {
        program: "io_exit",
        how: Attach::Kretprobe,
        target: "io_handler",
        required: true,
    },
    // BATCH_IO's handler (7.0+) has the same signature: the same programs tell its
    // PREP/COMMIT/FETCH_IO_CMDS apart by opcode.
    Plan {
        program: "io_enter",
        how: Attach::Kprobe,
        target: "batch_io",
        required: false,
    },
    Plan {
        program: "io_exit",
        how: Attach::Kretprobe,
        target: "batch_io",
        required: false,
    },
    Plan {
        program: "queue_rq",
        how: Attach::Kprobe,
        target: "queue_rq",
        required: true,
    },
    Plan {
        program: "queue_rqs",
        how: Attach::Kprobe,
        target: "queue_rqs",
        required: false,
    },
    Plan {
        program: "dispatch_req",
        how: Attach::Kprobe,
        target: "dispatch_req",
        required: false,
    },
    Plan {
        program: "rq_task_work",
        how: Attach::Kprobe,
        target: "task_work",
        required: false,
    },
    Plan {
        program: "blk_insert",
        how: Attach::RawTp,
        target: "block_rq_insert",
        required: false,
    },
    Plan {
        program: "blk_issue",
        how: Attach::RawTp,
        target: "block_rq_issue",
        required: true,
    },
    Plan {
        program: "blk_complete",
        how: Attach::RawTp,
        target: "block_rq_complete",
        required: true,
    },
    Plan {
        program: "blk_requeue",
        how: Attach::RawTp,
        target: "block_rq_requeue",
        required: false,
    },
];

/// Where the kprobes go: the resolved kallsyms concepts.
struct Targets<'a> {
    concepts: &'a [Resolved],
    ublk_loaded: bool,
}

impl Targets<'_> {
    fn concept(&self, key: &str) -> Option<&Resolved> {
        self.concepts.iter().find(|c| c.key == key)
    }
}

/// One tag of the in-kernel state map. `tag == u16::MAX`: queue-level facts (≤ 6.14's
/// batched delivery only knows the queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagStateEntry {
    pub dev_id: u32,
    pub q_id: u16,
    pub tag: u16,
    pub state: KernelTag,
}

/// One queue's completion histogram of the light path, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyEntry {
    pub dev_id: u32,
    pub q_id: u16,
    pub hist: LatHist,
}

/// Totals of the eBPF-side counters (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub dropped: u64,
    pub unpaired: u64,
    pub rq_list_truncated: u64,
    pub read_failed: u64,
    /// Drops per raw record kind (`KIND_*` index).
    pub dropped_by_kind: [u64; (NR_COUNTERS - COUNTER_DROPPED_KIND) as usize],
}

/// Run count and time of one loaded program (kernel.bpf_stats_enabled=1, else zeros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStat {
    pub program: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// A running tracer. Dropping it detaches every program.
pub struct Tracer {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
    decoder: Decoder,
    attached: Vec<ProbeStatus>,
    /// Dropped count already reported as a `Lost` event.
    lost_reported: u64,
    decode_errors: u64,
    /// CLOCK_MONOTONIC ns just before the last poll's final drain: every record committed
    /// before it was returned by that poll.
    drained_through_ns: u64,
    release: String,
    /// What [`Tracer::follow_tag`] needs to attach the programs this path left out.
    cfg: TracerConfig,
    concepts: Vec<Resolved>,
    ublk_loaded: bool,
    offsets: Offsets,
    /// Programs attached for a followed tag, detached when it is let go.
    follow_links: Vec<Link>,
}

/// One attachment this tracer may undo before it is dropped.
enum Link {
    Kprobe(String, KProbeLinkId),
    RawTp(String, RawTracePointLinkId),
}

impl Tracer {
    /// Gather kernel facts, load, set globals, attach. Missing optional probes are
    /// reported in [`Tracer::attached`], never an error.
    pub fn start(cfg: &TracerConfig) -> Result<Self, ProbeError> {
        let t0 = std::time::Instant::now();
        // aya's loader parses vmlinux BTF on creation; let it do so beside our own reads.
        let (facts, loader) = std::thread::scope(|s| {
            let loader = s.spawn(EbpfLoader::new);
            let facts = Facts::gather();
            (facts, loader.join().unwrap_or_else(|_| EbpfLoader::new()))
        });
        // Start-up takes seconds in an emulated guest; say where the time goes.
        log::info!("kernel facts (kallsyms, BTF) in {:?}", t0.elapsed());
        Self::start_loading(cfg, facts, loader)
    }

    pub fn start_with(cfg: &TracerConfig, facts: Facts) -> Result<Self, ProbeError> {
        Self::start_loading(cfg, facts, EbpfLoader::new())
    }

    fn start_loading(
        cfg: &TracerConfig,
        facts: Facts,
        loader: EbpfLoader<'static>,
    ) -> Result<Self, ProbeError> {
        let Facts {
            release,
            concepts,
            ublk_loaded,
            offsets,
            ..
        } = facts;
        let res = offsets?;
        let missing: Vec<String> = res
            .missing_required()
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Block-only tracing (no ublk) needs just the request fields.
        if cfg.kprobes && ublk_loaded && !missing.is_empty() {
            return Err(ProbeError::Offsets(missing));
        }
        raise_memlock_rlimit();
        let offsets: Offsets = res.offsets;
        // Covariance: the loader may now borrow the local offsets.
        let mut loader: EbpfLoader<'_> = loader;
        loader.override_global(OFFSETS_GLOBAL, &offsets, true);
        if let Some(bytes) = cfg.ring_bytes {
            loader.map_max_entries(EVENTS_MAP, bytes);
        }
        let t0 = std::time::Instant::now();
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(ProbeError::Load)?;
        log::info!("eBPF object loaded in {:?}", t0.elapsed());
        let t0 = std::time::Instant::now();
        let targets = Targets {
            concepts: &concepts,
            ublk_loaded,
        };
        let attached = attach_all(&mut ebpf, cfg, &targets, &offsets, |p| {
            cfg.io_programs.wants(p)
        })
        .into_iter()
        .map(|(st, _)| st)
        .collect();
        log::info!("programs verified and attached in {:?}", t0.elapsed());
        let ring_map = ebpf
            .take_map(EVENTS_MAP)
            .ok_or(ProbeError::Missing("map EVENTS"))?;
        let ring = RingBuf::try_from(ring_map).map_err(|source| ProbeError::Map {
            name: EVENTS_MAP,
            source,
        })?;
        let mut t = Self {
            ebpf,
            ring,
            decoder: Decoder {
                cancel_flag: offsets.issue_flag_cancel,
                req_ops: res.req_ops,
                issue_from_queue_rq: false,
            },
            attached,
            lost_reported: 0,
            drained_through_ns: 0,
            decode_errors: 0,
            release,
            cfg: cfg.clone(),
            concepts,
            ublk_loaded,
            offsets,
            follow_links: Vec::new(),
        };
        t.set_switch(
            SWITCH_DEV_FILTER,
            cfg.dev_filter.map_or(0, |d| d.wrapping_add(1)),
        )?;
        t.set_switch(SWITCH_ALL_DISKS, cfg.all_disks as u32)?;
        let queue_rq_attached = t
            .attached
            .iter()
            .any(|p| p.attached && p.program.starts_with("queue_rq"));
        // Without the queue_rq kprobes, block_rq_issue on a ublk disk is the request start.
        t.set_switch(SWITCH_ISSUE_STARTS, !queue_rq_attached as u32)?;
        let issue = cfg.block_issue.unwrap_or(!queue_rq_attached);
        t.set_switch(SWITCH_BLOCK_ISSUE, issue as u32)?;
        t.decoder.issue_from_queue_rq = !queue_rq_attached && cfg.block_issue == Some(true);
        t.set_switch(SWITCH_STATE, cfg.state as u32)?;
        t.set_switch(SWITCH_RARE_SLOW_MS, cfg.rare_slow_ms)?;
        t.set_switch(SWITCH_LIGHT, (cfg.io_programs == IoPrograms::Light) as u32)?;
        t.set_streaming(cfg.stream)?;
        Ok(t)
    }

    /// What was attached where, and why the rest was not.
    pub fn attached(&self) -> &[ProbeStatus] {
        &self.attached
    }

    /// `uname -r` of the traced kernel.
    pub fn kernel_release(&self) -> &str {
        &self.release
    }

    /// Switch the per-I/O event stream on or off (control commands always flow).
    pub fn set_streaming(&mut self, on: bool) -> Result<(), ProbeError> {
        self.set_switch(SWITCH_STREAM, on as u32)
    }

    fn set_switch(&mut self, idx: u32, value: u32) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(SWITCHES_MAP)
            .ok_or(ProbeError::Missing("map SWITCHES"))?;
        let mut arr: Array<_, u32> = Array::try_from(map).map_err(|source| ProbeError::Map {
            name: SWITCHES_MAP,
            source,
        })?;
        arr.set(idx, value, 0).map_err(|source| ProbeError::Map {
            name: SWITCHES_MAP,
            source,
        })
    }

    /// Stream every event of one tag of device `dev` (the TUI's detail view), or stop
    /// (`None`). On a path that left per-I/O programs out (light, none), they are attached
    /// while the tag is followed and detached after: the whole life of one tag is worth a
    /// moment of their cost. Returns the programs that could not be attached.
    pub fn follow_tag(
        &mut self,
        tag: Option<(u32, u16, u16)>,
    ) -> Result<Vec<ProbeStatus>, ProbeError> {
        let mut failed = Vec::new();
        match tag {
            Some((dev, q, t)) => {
                self.set_switch(SWITCH_TAG_FILTER_DEV, dev.wrapping_add(1))?;
                self.set_switch(SWITCH_TAG_FILTER, ((u32::from(q) << 16) | u32::from(t)) + 1)?;
                if self.follow_links.is_empty() && self.cfg.io_programs != IoPrograms::All {
                    for (st, link) in self.attach_off_path() {
                        match link {
                            Some(l) => self.follow_links.push(l),
                            None if st.required => failed.push(st),
                            None => {}
                        }
                    }
                }
                self.set_streaming(true)?;
            }
            None => {
                self.set_streaming(false)?;
                self.set_switch(SWITCH_TAG_FILTER, 0)?;
                for l in std::mem::take(&mut self.follow_links) {
                    if let Err(e) = detach(&mut self.ebpf, l) {
                        log::info!("detach a followed tag's program: {e}");
                    }
                }
            }
        }
        Ok(failed)
    }

    /// Move from the light or none path to the state path (the driver's memory turned out
    /// unreadable): attach every per-I/O program for good and keep the per-tag state map.
    /// Returns the required programs that could not be attached.
    pub fn switch_to_state_path(&mut self) -> Result<Vec<ProbeStatus>, ProbeError> {
        let mut failed = Vec::new();
        if self.cfg.io_programs != IoPrograms::All {
            if self.follow_links.is_empty() {
                for (st, _) in self.attach_off_path() {
                    if !st.attached && st.required {
                        failed.push(st.clone());
                    }
                    self.attached.push(st);
                }
            } else {
                // A followed tag attached them already: they stay.
                self.follow_links.clear();
            }
        }
        self.cfg.io_programs = IoPrograms::All;
        self.cfg.state = true;
        self.set_switch(SWITCH_LIGHT, 0)?;
        self.set_switch(SWITCH_STATE, 1)?;
        Ok(failed)
    }

    /// Attach the plans this tracer's path left out (its links kept by the caller or left to
    /// live as long as the tracer).
    fn attach_off_path(&mut self) -> Vec<(ProbeStatus, Option<Link>)> {
        let targets = Targets {
            concepts: &self.concepts,
            ublk_loaded: self.ublk_loaded,
        };
        let on_path = self.cfg.io_programs;
        attach_all(&mut self.ebpf, &self.cfg, &targets, &self.offsets, |p| {
            !on_path.wants(p)
        })
    }

    /// Whether the per-tag state map is kept (the state path).
    pub fn keeps_state(&self) -> bool {
        self.cfg.state
    }

    /// Which per-I/O programs this tracer's path runs.
    pub fn io_programs(&self) -> IoPrograms {
        self.cfg.io_programs
    }

    /// Turn the per-tag state map on or off.
    pub fn set_state_tracking(&mut self, on: bool) -> Result<(), ProbeError> {
        self.set_switch(SWITCH_STATE, on as u32)
    }

    /// Every tag in the in-kernel state map (needs `TracerConfig::state`), sorted by key.
    /// One map walk: call it once per UI tick, not per event.
    pub fn tag_states(&self) -> Result<Vec<TagStateEntry>, ProbeError> {
        let map = self
            .ebpf
            .map(TAGS_MAP)
            .ok_or(ProbeError::Missing("map TAGS"))?;
        let tags: AyaHashMap<_, u64, KernelTag> =
            AyaHashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: TAGS_MAP,
                source,
            })?;
        let mut out = Vec::new();
        for item in tags.iter() {
            // A key deleted while iterating is skipped, not an error.
            let Ok((key, state)) = item else { continue };
            let (dev_id, q_id, tag) = split_tag_key(key);
            out.push(TagStateEntry {
                dev_id,
                q_id,
                tag,
                state,
            });
        }
        out.sort_by_key(|e| (e.dev_id, e.q_id, e.tag));
        Ok(out)
    }

    /// Every queue's completion histogram (the light path), summed over CPUs, sorted.
    pub fn latency_hists(&self) -> Result<Vec<LatencyEntry>, ProbeError> {
        let map = self
            .ebpf
            .map(LAT_MAP)
            .ok_or(ProbeError::Missing("map LATENCY"))?;
        let hists: PerCpuHashMap<_, u64, LatHist> =
            PerCpuHashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: LAT_MAP,
                source,
            })?;
        let mut out = Vec::new();
        for item in hists.iter() {
            let Ok((key, per_cpu)) = item else { continue };
            let (dev_id, q_id, _) = split_tag_key(key);
            let mut hist = LatHist::ZERO;
            for h in per_cpu.iter() {
                hist.count = hist.count.wrapping_add(h.count);
                hist.sum_ns = hist.sum_ns.wrapping_add(h.sum_ns);
                for b in 0..LAT_BUCKETS {
                    hist.buckets[b] = hist.buckets[b].wrapping_add(h.buckets[b]);
                }
            }
            out.push(LatencyEntry { dev_id, q_id, hist });
        }
        out.sort_by_key(|e| (e.dev_id, e.q_id));
        Ok(out)
    }

    /// Runs and time per loaded program. The kernel counts them only while
    /// `kernel.bpf_stats_enabled` is 1 (it costs two clock reads per run); else all zeros.
    pub fn program_stats(&self) -> Vec<ProgramStat> {
        let mut out: Vec<ProgramStat> = self
            .ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                Some(ProgramStat {
                    program: name.to_string(),
                    run_cnt: info.run_count(),
                    run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                })
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.run_time_ns));
        out
    }

    /// The eBPF-side counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, ProbeError> {
        let map = self
            .ebpf
            .map(COUNTERS_MAP)
            .ok_or(ProbeError::Missing("map COUNTERS"))?;
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map {
                name: COUNTERS_MAP,
                source,
            })?;
        let sum = |i: u32| -> Result<u64, ProbeError> {
            let v = arr.get(&i, 0).map_err(|source| ProbeError::Map {
                name: COUNTERS_MAP,
                source,
            })?;
            Ok(v.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
        };
        Ok(Counters {
            dropped: sum(COUNTER_DROPPED)?,
            unpaired: sum(COUNTER_UNPAIRED)?,
            rq_list_truncated: sum(COUNTER_RQ_LIST_TRUNCATED)?,
            read_failed: sum(COUNTER_READ_FAILED)?,
            dropped_by_kind: {
                let mut by_kind = [0u64; (NR_COUNTERS - COUNTER_DROPPED_KIND) as usize];
                for (k, slot) in by_kind.iter_mut().enumerate() {
                    *slot = sum(COUNTER_DROPPED_KIND + k as u32)?;
                }
                by_kind
            },
        })
    }

    /// Events dropped because the ring buffer was full (one counter: read after every poll).
    pub fn lost_events(&self) -> u64 {
        let Some(map) = self.ebpf.map(COUNTERS_MAP) else {
            return 0;
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        arr.get(&COUNTER_DROPPED, 0)
            .map(|v| v.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
            .unwrap_or(0)
    }

    /// Records that could not be decoded (version skew); they are skipped.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// Wait up to `timeout` for records, decode all available ones into `out`. A gap
    /// (new drops since the last call) is appended as an [`EventKind::Lost`] event.
    pub fn poll(
        &mut self,
        timeout: Duration,
        out: &mut Vec<TraceEvent>,
    ) -> Result<usize, ProbeError> {
        let before = out.len();
        let mut raw = Vec::new();
        self.poll_raw(timeout, &mut raw)?;
        for r in &raw {
            if let Err(e) = self.decoder.decode(r, out) {
                self.decode_errors += 1;
                log::debug!("skipping record: {e}");
            }
        }
        let dropped = self.lost_events();
        if dropped > self.lost_reported {
            let ts_ns = out.last().map_or_else(monotonic_ns, |e| e.ts_ns);
            out.push(TraceEvent {
                ts_ns,
                pid: 0,
                tid: 0,
                comm: String::new(),
                kind: EventKind::Lost {
                    count: dropped - self.lost_reported,
                },
            });
            self.lost_reported = dropped;
        }
        Ok(out.len() - before)
    }

    /// Like [`Tracer::poll`] without decoding (tests, custom consumers).
    pub fn poll_raw(
        &mut self,
        timeout: Duration,
        out: &mut Vec<RawEvent>,
    ) -> Result<usize, ProbeError> {
        let before = out.len();
        self.drained_through_ns = monotonic_ns();
        self.drain(out);
        if out.len() == before {
            wait_readable(self.ring.as_raw_fd(), timeout).map_err(ProbeError::Poll)?;
            // Taken after the wait: a poll that slept 500 ms on an empty ring is complete up
            // to its end, not to its start.
            self.drained_through_ns = monotonic_ns();
            self.drain(out);
        }
        Ok(out.len() - before)
    }

    /// Every record the kernel committed before this CLOCK_MONOTONIC time has been returned
    /// by the polls so far ([`Tracer::poll`], [`Tracer::poll_raw`]).
    pub fn drained_through_ns(&self) -> u64 {
        self.drained_through_ns
    }

    /// Like [`Tracer::poll_raw`], handing each record's bytes to `f` without decoding
    /// (a recorder that spools records and converts them later). Returns the records seen.
    pub fn poll_bytes(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&[u8]),
    ) -> Result<usize, ProbeError> {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            f(&item);
            n += 1;
        }
        if n == 0 {
            wait_readable(self.ring.as_raw_fd(), timeout).map_err(ProbeError::Poll)?;
            while let Some(item) = self.ring.next() {
                f(&item);
                n += 1;
            }
        }
        Ok(n)
    }

    /// How this tracer's records decode into [`TraceEvent`]s (for records read with
    /// [`Tracer::poll_bytes`] and decoded elsewhere).
    pub fn decoder(&self) -> Decoder {
        self.decoder.clone()
    }

    fn drain(&mut self, out: &mut Vec<RawEvent>) {
        while let Some(item) = self.ring.next() {
            match RawEvent::from_le_bytes(&item) {
                Some(r) => out.push(r),
                None => self.decode_errors += 1,
            }
        }
    }
}

/// Attach the plans `pick` names (with `cfg`'s choices of kprobes and tracepoints); each with
/// its link when it attached.
fn attach_all(
    ebpf: &mut Ebpf,
    cfg: &TracerConfig,
    facts: &Targets,
    o: &Offsets,
    pick: impl Fn(&str) -> bool,
) -> Vec<(ProbeStatus, Option<Link>)> {
    let plans: Vec<&Plan> = PLANS
        .iter()
        .filter(|p| pick(p.program))
        .filter(|p| match p.how {
            Attach::RawTp => cfg.block,
            // Without block tracepoints the kprobes are the only source of request starts.
            _ if p.target.starts_with("queue_rq") => {
                cfg.kprobes && (cfg.queue_rq_kprobes || !cfg.block)
            }
            _ => cfg.kprobes,
        })
        .collect();
    let names: Vec<String> = plans
        .iter()
        .filter_map(|p| program_name(p, facts, o))
        .collect();
    load_parallel(ebpf, &names);
    plans
        .into_iter()
        .map(|p| attach_one(ebpf, p, facts, o))
        .collect()
}

/// The program that `p` attaches, when its target exists on this kernel.
fn program_name(p: &Plan, facts: &Targets, o: &Offsets) -> Option<String> {
    match p.how {
        Attach::RawTp => Some(p.program.to_string()),
        Attach::Kprobe | Attach::Kretprobe => {
            facts.concept(p.target).and_then(|c| c.first())?;
            match p.program {
                "dispatch_req" if o.dispatch_req_arg > 2 => None,
                "dispatch_req" => Some(format!("dispatch_req{}", o.dispatch_req_arg)),
                other => Some(other.to_string()),
            }
        }
    }
}

/// Verify `names` on two threads before attaching them one by one: the kernel's verifier
/// runs in the loading thread, so two CPUs check two programs at once (verification is most
/// of the start-up in an emulated guest). A program that fails here is loaded again by its
/// attach, which reports the verifier's error.
fn load_parallel(ebpf: &mut Ebpf, names: &[String]) {
    let queue: std::sync::Mutex<Vec<&mut aya::programs::Program>> = std::sync::Mutex::new(
        ebpf.programs_mut()
            .filter(|(n, _)| names.iter().any(|w| w == n))
            .map(|(_, p)| p)
            .collect(),
    );
    let work = || {
        loop {
            let next = match queue.lock() {
                Ok(mut q) => q.pop(),
                Err(_) => None,
            };
            let Some(prog) = next else { break };
            let res = match prog {
                aya::programs::Program::KProbe(p) => p.load(),
                aya::programs::Program::RawTracePoint(p) => p.load(),
                _ => Ok(()),
            };
            if let Err(e) = res {
                log::debug!("parallel load: {e}");
            }
        }
    };
    std::thread::scope(|s| {
        s.spawn(work);
        work();
    });
}

fn attach_one(
    ebpf: &mut Ebpf,
    p: &Plan,
    facts: &Targets,
    o: &Offsets,
) -> (ProbeStatus, Option<Link>) {
    let mut st = ProbeStatus {
        program: p.program.to_string(),
        target: p.target.to_string(),
        attached: false,
        required: p.required,
        error: String::new(),
    };
    let result = match p.how {
        Attach::RawTp => attach_raw_tp(ebpf, p.program, p.target),
        Attach::Kprobe | Attach::Kretprobe => {
            let name = facts.concept(p.target).and_then(|c| c.first());
            match name {
                None => Err(format!(
                    "none of [{}] in /proc/kallsyms{}",
                    facts
                        .concept(p.target)
                        .map(|c| c.missing.join(", "))
                        .unwrap_or_default(),
                    if facts.ublk_loaded {
                        " (not in this kernel version)"
                    } else {
                        "; run 'modprobe ublk_drv'"
                    }
                )),
                Some(_) if p.program == "dispatch_req" && o.dispatch_req_arg > 2 => Err(
                    "ublk_dispatch_req has no `req` parameter among its first 3 in BTF".to_string(),
                ),
                Some(name) if p.program == "dispatch_req" => {
                    // One program per argument index (see the eBPF source for why).
                    st.program = format!("dispatch_req{}", o.dispatch_req_arg);
                    st.target = name.to_string();
                    attach_kprobe(ebpf, &st.program, name)
                }
                Some(name) => {
                    st.target = name.to_string();
                    attach_kprobe(ebpf, p.program, name)
                }
            }
        }
    };
    match result {
        Ok(link) => {
            st.attached = true;
            (st, Some(link))
        }
        Err(e) => {
            // Callers decide how loud a missing probe is (record warns for required ones).
            log::info!("{} on {} not attached: {e}", p.program, st.target);
            st.error = e;
            (st, None)
        }
    }
}

fn detach(ebpf: &mut Ebpf, l: Link) -> Result<(), String> {
    match l {
        Link::Kprobe(program, id) => {
            let prog: &mut KProbe = ebpf
                .program_mut(&program)
                .ok_or_else(|| format!("program {program} missing"))?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            prog.detach(id).map_err(|e| format!("{program}: {e}"))
        }
        Link::RawTp(program, id) => {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(&program)
                .ok_or_else(|| format!("program {program} missing"))?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            prog.detach(id).map_err(|e| format!("{program}: {e}"))
        }
    }
}

fn attach_kprobe(ebpf: &mut Ebpf, program: &str, func: &str) -> Result<Link, String> {
    let prog: &mut KProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing; rebuild ublk-trace"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| format!("load: {e}"))?;
    }
    prog.attach(func, 0)
        .map(|id| Link::Kprobe(program.to_string(), id))
        .map_err(|e| {
        let kprobe_dir = "/sys/bus/event_source/devices/kprobe";
        if std::path::Path::new(kprobe_dir).exists() {
            format!("attach: {e}")
        } else {
            format!("attach: {e}; this kernel has no kprobes (CONFIG_KPROBES); run in a guest with 'cargo xtask guest run'")
        }
    })
}

fn attach_raw_tp(ebpf: &mut Ebpf, program: &str, tp: &str) -> Result<Link, String> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing; rebuild ublk-trace"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| format!("load: {e}"))?;
    }
    prog.attach(tp)
        .map(|id| Link::RawTp(program.to_string(), id))
        .map_err(|e| format!("attach: {e}"))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (https://lwn.net/Articles/837122/);
/// newer ones use memcg and ignore it. Raising it is harmless either way.
fn raise_memlock_rlimit() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        log::debug!(
            "setrlimit(RLIMIT_MEMLOCK): {}",
            std::io::Error::last_os_error()
        );
    }
}

fn wait_readable(fd: i32, timeout: Duration) -> std::io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// CLOCK_MONOTONIC now, ns (the clock of bpf_ktime_get_ns).
pub use crate::clock::monotonic_ns;

/// Load (verify) every program of the object without attaching anything: the kernel's
/// verifier checks them here, on any machine with BPF, kprobes or not. Returns the programs
/// that failed with the verifier's message.
pub fn verify_programs() -> Result<Vec<(String, String)>, ProbeError> {
    let facts = Facts::gather();
    let offsets = facts.offsets?.offsets;
    raise_memlock_rlimit();
    let mut ebpf = EbpfLoader::new()
        .override_global(OFFSETS_GLOBAL, &offsets, true)
        .load(EBPF_OBJECT)
        .map_err(ProbeError::Load)?;
    let mut failed = Vec::new();
    for (name, prog) in ebpf.programs_mut() {
        let t0 = std::time::Instant::now();
        let res = match prog {
            aya::programs::Program::KProbe(p) => p.load(),
            aya::programs::Program::RawTracePoint(p) => p.load(),
            other => {
                failed.push((
                    name.to_string(),
                    format!("unexpected program type {:?}", other.prog_type()),
                ));
                continue;
            }
        };
        log::debug!("{name} verified in {:?}", t0.elapsed());
        if let Err(e) = res {
            failed.push((name.to_string(), format!("{e:?}")));
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_passes_the_verifier_on_this_host() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: loading eBPF needs root");
            return;
        }
        let failed = verify_programs().expect("object loads");
        assert!(failed.is_empty(), "verifier rejected: {failed:#?}");
    }
}
