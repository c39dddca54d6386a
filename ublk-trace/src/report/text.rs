//! Human-readable form of a [`Report`].
use std::fmt::Write;

use super::{LatencySummary, Report};
use crate::diagnose::Finding;

fn dur(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.1}us", ns as f64 / 1e3)
    }
}

fn opt(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".into(), dur)
}

fn lat(l: &LatencySummary) -> String {
    if l.count == 0 {
        return "-".into();
    }
    format!(
        "p50 {} p99 {} max {} (n={})",
        opt(l.p50_ns),
        opt(l.p99_ns),
        opt(l.max_ns),
        l.count
    )
}

fn bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b as f64 >= MIB {
        format!("{:.1} MiB", b as f64 / MIB)
    } else {
        format!("{b} B")
    }
}

/// The whole report as text (what `ublk-trace report FILE` prints).
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let span = r.last_ns.saturating_sub(r.first_ns);
    let _ = writeln!(
        s,
        "recording {} (kernel {}): {} events over {}, {} lost",
        r.source,
        if r.kernel.is_empty() { "?" } else { &r.kernel },
        r.events,
        dur(span),
        r.lost_events
    );
    if r.lost_events > 0 {
        let _ = writeln!(
            s,
            "  WARNING: {} events were lost; counts are lower bounds and states may be stale",
            r.lost_events
        );
    }
    for d in &r.devices {
        render_device(&mut s, d);
    }
    render_ctrl(&mut s, r);
    render_findings(&mut s, &r.diagnosis.findings);
    s
}

fn render_device(s: &mut String, d: &super::DeviceReport) {
    let _ = writeln!(s, "\ndevice {}:", d.dev_id);
    for q in &d.queues {
        let _ = writeln!(
            s,
            "  q{}: {} requests, {} completed, {:.0} IOPS, {}; requeues {}, rejected {}",
            q.q_id,
            q.requests,
            q.completed,
            q.iops,
            bytes(q.bytes),
            q.requeues,
            q.rejected
        );
        let _ = writeln!(s, "      queue_rq -> commit: {}", lat(&q.server_latency));
        let _ = writeln!(s, "      issue -> complete:  {}", lat(&q.block_latency));
    }
    match &d.never_fetched {
        None => {
            let _ = writeln!(s, "  tags never fetched: unknown ({})", d.depth_basis);
        }
        Some(m) if m.is_empty() => {
            let _ = writeln!(s, "  tags never fetched: none ({})", d.depth_basis);
        }
        Some(m) => {
            for (q, tags) in m {
                let list: Vec<String> = tags.iter().map(u16::to_string).collect();
                let _ = writeln!(
                    s,
                    "  tags never fetched on q{q}: {} ({})",
                    list.join(", "),
                    d.depth_basis
                );
            }
        }
    }
    if d.never_completed.is_empty() {
        let _ = writeln!(s, "  requests never completed: none");
    }
    for o in &d.never_completed {
        let _ = writeln!(
            s,
            "  never completed: q{} tag {} {} sector {} {} bytes, {} for {}",
            o.q_id,
            o.tag,
            o.op,
            o.sector,
            o.bytes,
            o.state.name(),
            dur(o.age_ns)
        );
    }
    if d.rejected_commands > 0 || d.io_errors > 0 {
        let _ = writeln!(
            s,
            "  rejected I/O commands: {}, block I/O errors: {}",
            d.rejected_commands, d.io_errors
        );
    }
}

fn render_ctrl(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\ncontrol commands:");
    if r.ctrl.is_empty() {
        let _ = writeln!(s, "  none recorded");
    }
    for c in &r.ctrl {
        let dev = c
            .dev_id
            .map_or_else(|| "new".to_string(), |d| d.to_string());
        let took = c.duration_ns.map_or_else(
            || "PENDING at the end".to_string(),
            |d| format!("took {}", dur(d)),
        );
        let retry = if c.eagain_retries > 0 {
            format!(", {} -EAGAIN retry", c.eagain_retries)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "  +{:>10} dev {dev:>3} {:<14} pid {} {}: {} -> {}{retry}{}",
            dur(c.at_ns),
            c.op,
            c.pid,
            c.comm,
            took,
            c.result_name,
            c.detail
                .as_ref()
                .map_or_else(String::new, |d| format!(" ({d})"))
        );
    }
}

fn render_findings(s: &mut String, f: &[Finding]) {
    let _ = writeln!(s, "\nfindings at the end of the recording:");
    if f.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for x in f {
        let at = match (x.queue, x.tag) {
            (Some(q), Some(t)) => format!(" q{q} tag {t}"),
            (Some(q), None) => format!(" q{q}"),
            _ => String::new(),
        };
        let _ = writeln!(s, "  {} dev {}{at}: {}", x.class, x.dev, x.summary);
        for e in &x.evidence {
            let _ = writeln!(s, "      - {e}");
        }
        if !x.hint.is_empty() {
            let _ = writeln!(s, "      fix: {}", x.hint);
        }
    }
}
