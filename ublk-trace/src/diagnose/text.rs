//! Evidence sentences shared by the rules: durations, threads, rings, caveats.
use super::Ctx;
use crate::snapshot::{ServerProcess, TaskInfo};

/// `1234567890` ns -> `1.23 s`; `2500000` -> `2.5 ms`; `800` -> `800 ns`.
pub fn dur(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2} s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{ns} ns")
    }
}

/// `tid 163 (rublk): state T, wchan do_signal_stop`.
pub fn thread(t: &TaskInfo) -> String {
    let state = match t.state {
        'T' => "T (stopped)".to_string(),
        't' => "t (ptraced)".to_string(),
        'R' => "R (running)".to_string(),
        'D' => "D (uninterruptible)".to_string(),
        'S' => "S (sleeping)".to_string(),
        'Z' => "Z (zombie)".to_string(),
        c => c.to_string(),
    };
    let wchan = if t.wchan.is_empty() {
        String::new()
    } else {
        format!(", wchan {}", t.wchan)
    };
    let frozen = if t.wchan == "do_freezer_trap" {
        " (cgroup-frozen)"
    } else {
        ""
    };
    format!("tid {} ({}): state {state}{wchan}{frozen}", t.tid, t.comm)
}

pub fn servers<'a>(cx: &Ctx<'a>) -> &'a [ServerProcess] {
    cx.dev.snapshot().map_or(&[], |s| s.servers.as_slice())
}

pub fn server_threads<'a>(cx: &Ctx<'a>) -> impl Iterator<Item = &'a TaskInfo> {
    servers(cx).iter().flat_map(|s| s.threads.iter())
}

/// The thread with `tid` among the server's threads (latest snapshot).
pub fn find_thread<'a>(cx: &Ctx<'a>, tid: u32) -> Option<&'a TaskInfo> {
    server_threads(cx).find(|t| t.tid == tid)
}

/// Evidence about the owner thread, if the snapshot knows it.
pub fn owner_line(cx: &Ctx<'_>, owner: Option<u32>) -> Option<String> {
    let tid = owner?;
    match find_thread(cx, tid) {
        Some(t) => Some(format!("owner thread {}", thread(t))),
        None if cx.dev.snapshot().is_some_and(|s| s.proc_scanned) => Some(format!(
            "owner thread tid {tid} no longer exists among the server's threads"
        )),
        None => None,
    }
}

/// Ring lines: unreaped CQEs and unsubmitted SQEs of the server's io_urings.
pub fn ring_lines(cx: &Ctx<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for s in servers(cx) {
        for r in &s.rings {
            if r.cq_unreaped() > 0 {
                out.push(format!(
                    "pid {} io_uring fd {}: {} CQE(s) posted and not reaped (CqHead {}, CqTail {}): \
                     the server has not read delivered requests",
                    s.pid,
                    r.fd,
                    r.cq_unreaped(),
                    r.cq_head,
                    r.cq_tail
                ));
            }
            if r.sq_pending() > 0 {
                out.push(format!(
                    "pid {} io_uring fd {}: {} SQE(s) written and not submitted (SqHead {}, SqTail {}): \
                     a COMMIT queued without io_uring_enter",
                    s.pid,
                    r.fd,
                    r.sq_pending(),
                    r.sq_head,
                    r.sq_tail
                ));
            }
        }
    }
    out
}

/// The caveat every event-derived finding carries when the probe lost events.
pub fn lost_line(cx: &Ctx<'_>) -> Option<String> {
    let n = cx.model.lost_events();
    (n > 0).then(|| {
        format!(
            "{n} trace events were lost (ring buffer full, last {} ago): event-derived states may be stale",
            dur(cx.now_ns.saturating_sub(cx.model.last_lost_ns()))
        )
    })
}

/// Server pid(s) plus extra tids, deduplicated.
pub fn pids(cx: &Ctx<'_>, extra: impl IntoIterator<Item = u32>) -> Vec<u32> {
    let mut v: Vec<u32> = servers(cx).iter().map(|s| s.pid).collect();
    // The /proc scan can miss the server (deadline under load, another pid namespace); the
    // server's own tag-state file still names its pid.
    if v.is_empty()
        && let Some(tf) = cx.dev.snapshot().and_then(|s| s.tagfile.as_ref())
        && tf.pid != 0
    {
        v.push(tf.pid);
    }
    v.extend(extra);
    v.sort_unstable();
    v.dedup();
    v
}

/// `READ sector 32, 4096 bytes` (empty when nothing is known).
pub fn request(op: &str, sector: u64, bytes: u32) -> String {
    if op.is_empty() {
        "request".to_string()
    } else {
        format!("{op} sector {sector}, {bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(dur(1_234_567_890), "1.23 s");
        assert_eq!(dur(2_500_000), "2.5 ms");
        assert_eq!(dur(1_500), "1.5 µs");
        assert_eq!(dur(800), "800 ns");
    }
}
