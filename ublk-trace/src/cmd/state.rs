//! `ublk-trace state dev N | --all [--json] [--tags all]`: print what the driver itself holds
//! for each queue and tag (read from kernel memory, see `driver`), like ublksrv's
//! `dump_ublk.py`: a header per queue and one line per tag that is not plain WAITING.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cmd::watch::DevTarget;
use crate::driver::{DriverSnapshot, QueueState, Reader, TagState, TagView, Target};

/// `kind` of `state --json` (schema: docs/schema/state.schema.json).
pub const STATE_KIND: &str = "ublk-trace.state";

/// `state --json`: the driver snapshot's fields, with the document's kind and version.
#[derive(Debug, serde::Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct StateJson {
    /// Always `ublk-trace.state`.
    pub kind: &'static str,
    /// Bumped when a field changes meaning or goes away.
    pub version: u32,
    #[serde(flatten)]
    pub snapshot: DriverSnapshot,
}

#[derive(Debug, clap::Args)]
pub struct StateArgs {
    #[command(flatten)]
    pub target: DevTarget,
    /// Every ublk device (instead of `dev N`).
    #[arg(long, conflicts_with = "dev_id")]
    pub all: bool,
    /// Print the snapshot as JSON (kind "ublk-trace.state"; docs/schema/state.schema.json).
    #[arg(long)]
    pub json: bool,
    /// Tags to print: `busy` (every tag that is not plain WAITING) or `all`.
    #[arg(long, value_name = "WHICH", default_value = "busy", value_parser = ["busy", "all"])]
    pub tags: String,
    /// Give up on the read after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Read N times and print the CPU time (user + system) and wall time of one read to
    /// stderr (the reader's cost; the last snapshot is printed as usual).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub repeat: u32,
}

/// (user, system) CPU time of this process (every thread), µs.
fn cpu_us() -> (u64, u64) {
    // SAFETY: getrusage fills the zeroed rusage we own; RUSAGE_SELF covers the reader's
    // helper thread.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime), us(ru.ru_stime))
}

pub fn run(args: StateArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.all, args.target.id()) {
        (true, _) => Target::All,
        (false, Some(id)) => Target::Dev(id),
        (false, None) => bail!("say which device: 'ublk-trace state dev N' or '--all'"),
    };
    let mut reader = Reader::open().context("driver-state reader")?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let n = args.repeat.max(1);
    let (c0, t0) = (cpu_us(), Instant::now());
    let mut snap = None;
    for _ in 0..n {
        // After the open: it parses BTF (seconds in an emulated guest); the read can hang.
        let s = reader
            .read(target, Instant::now() + timeout)
            .context("read the driver's state")?;
        snap = Some(s);
    }
    let snap = snap.context("no read")?;
    if n > 1 {
        let tags: usize = snap
            .devices
            .iter()
            .flat_map(|d| &d.queues)
            .map(|q| q.tags.len())
            .sum();
        let (u1, s1) = cpu_us();
        let per = |a: u64, b: u64| (a - b) / u64::from(n);
        eprintln!(
            "ublk-trace state: {n} reads of {tags} tags: {} us CPU ({} user + {} sys), {} us wall per read",
            per(u1 + s1, c0.0 + c0.1),
            per(u1, c0.0),
            per(s1, c0.1),
            t0.elapsed().as_micros() / u128::from(n)
        );
    }
    if args.json {
        let doc = StateJson {
            kind: STATE_KIND,
            version: 1,
            snapshot: snap,
        };
        let s = serde_json::to_string_pretty(&doc).context("serialize the snapshot")?;
        println!("{s}");
    } else {
        print!("{}", render_text(&snap, args.tags == "all"));
    }
    Ok(ExitCode::SUCCESS)
}

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The snapshot as text: device lines, a header per queue, then the tags.
pub fn render_text(s: &DriverSnapshot, all_tags: bool) -> String {
    let mut o = String::new();
    let table = if s.flags_table.in_table {
        String::new()
    } else {
        " (kernel outside the verified table: flag names may be wrong)".to_string()
    };
    let _ = writeln!(
        o,
        "kernel {}, read in {} us, UBLK_IO_FLAG_* of {}{table}",
        s.kernel, s.took_us, s.flags_table.row
    );
    if !s.not_readable.is_empty() {
        let _ = writeln!(
            o,
            "not readable on this kernel: {}",
            s.not_readable.join(", ")
        );
    }
    for d in &s.devices {
        let _ = writeln!(
            o,
            "dev {} {} flags 0x{:x}: {} queues x {} tags, disk {}, server pid {}, \
             mq_freeze_depth {} quiesce_depth {}",
            d.dev_id,
            d.state_name,
            d.flags,
            d.nr_hw_queues,
            d.queue_depth,
            if d.has_disk { "yes" } else { "no" },
            d.ublksrv_pid,
            opt(d.mq_freeze_depth),
            opt(d.quiesce_depth),
        );
        if let Some(n) = d.nr_io_ready {
            let total = usize::from(d.nr_hw_queues) * usize::from(d.queue_depth);
            let _ = writeln!(o, "  ios ready (device-wide) {n}/{total}");
        }
        for q in &d.queues {
            render_queue(&mut o, q, d.queue_depth, s.taken_ns, all_tags);
        }
    }
    for d in &s.dropped {
        let _ = writeln!(o, "dev {} not read: {}", d.dev_id, d.reason);
    }
    if s.devices.is_empty() && s.dropped.is_empty() {
        let _ = writeln!(o, "no ublk devices");
    }
    o
}

fn render_queue(o: &mut String, q: &QueueState, depth: u16, now_ns: u64, all: bool) {
    // Up to 6.15 the queue has one daemon; later each io has its own task: list them.
    let owner = match &q.owner {
        Some(t) => format!("owner {} ({}, pid {})", t.tid, t.comm, t.pid),
        None => {
            let mut tasks: Vec<String> = q
                .tags
                .iter()
                .filter_map(|t| t.task.as_ref())
                .map(|t| format!("{} ({})", t.tid, t.comm))
                .collect();
            tasks.sort();
            tasks.dedup();
            if tasks.is_empty() {
                "owner -".to_string()
            } else {
                format!("io tasks {}", tasks.join(", "))
            }
        }
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in &q.tags {
        *counts.entry(t.view.name().to_string()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let _ = writeln!(
        o,
        "  q{} {owner}, ios ready {}/{depth}, canceling {} force_abort {} fail_io {}: {}{}",
        q.q_id,
        opt(q.nr_io_ready),
        yes_no(q.canceling),
        yes_no(q.force_abort),
        yes_no(q.fail_io),
        counts.join(", "),
        if q.changing.is_empty() {
            String::new()
        } else {
            format!(", changing while read: {:?}", q.changing)
        }
    );
    if let Some(b) = q.batch {
        let _ = writeln!(
            o,
            "    batch: {} FETCH_IO_CMDS armed{}, {} tag(s) in the event FIFO waiting for a dispatch",
            b.fetch_armed,
            if b.fetch_active {
                ", one dispatching"
            } else {
                ", none dispatching"
            },
            b.fifo_waiting
        );
    }
    for t in q.tags.iter().filter(|t| all || t.view != TagView::Waiting) {
        let _ = writeln!(o, "    {}", tag_line(t, now_ns));
    }
}

/// `tag 5 IN_SERVER flags OWNED_BY_SRV res 0 | READ 4096 B @ 8 IN_FLIGHT 31.20 s`.
pub fn tag_line(t: &TagState, now_ns: u64) -> String {
    let mut flags = t.flags.names.join("|");
    if t.flags.unknown != 0 {
        let _ = write!(
            flags,
            "{}0x{:x}",
            if flags.is_empty() { "" } else { "|" },
            t.flags.unknown
        );
    }
    if flags.is_empty() {
        flags.push('0');
    }
    let mut s = format!(
        "tag {:>4} {:<13} flags {flags} res {}{}",
        t.tag,
        t.view.name(),
        t.res,
        if t.cmd_parked { " cmd parked" } else { "" }
    );
    if let Some(task) = &t.task {
        let _ = write!(s, " task {} ({})", task.tid, task.comm);
    }
    if let Some(r) = &t.request {
        let _ = write!(
            s,
            " | {} {} B @ sector {} {:?}",
            r.op, r.bytes, r.sector, r.state
        );
        if let Some(start) = r.start_time_ns.filter(|&n| n > 0 && n <= now_ns) {
            let _ = write!(s, " {:.2} s", (now_ns - start) as f64 / 1e9);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{IoFlags, RequestState, RqState, TaskRef};

    #[test]
    fn tag_line_names_the_state_the_request_and_its_age() {
        let t = TagState {
            tag: 5,
            view: TagView::InServer,
            flags: IoFlags {
                raw: 0x42,
                names: vec!["OWNED_BY_SRV".into()],
                unknown: 0x40,
            },
            res: 0,
            cmd_parked: false,
            task: Some(TaskRef {
                tid: 173,
                pid: 170,
                comm: "ublk-q1".into(),
            }),
            request: Some(RequestState {
                op: "READ".into(),
                cmd_flags: 0,
                sector: 8,
                bytes: 4096,
                start_time_ns: Some(1_000_000_000),
                state: RqState::InFlight,
            }),
        };
        let line = tag_line(&t, 32_200_000_000);
        assert_eq!(
            line,
            "tag    5 IN_SERVER     flags OWNED_BY_SRV|0x40 res 0 task 173 (ublk-q1) \
             | READ 4096 B @ sector 8 InFlight 31.20 s"
        );
    }
}
