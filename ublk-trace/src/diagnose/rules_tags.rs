//! Rules about requests and tags: where a request is stuck, commands the kernel refused,
//! bad commits, slow requests.
use std::collections::BTreeMap;

use super::text::{self, dur};
use super::{Class, Ctx, Finding, Rule, Severity, Verdict};
use crate::model::tag::errno_name;
use crate::model::{QueueView, TagState, TagView};
use crate::snapshot::WaitKind;

/// Per-tag findings per rule and device; the rest is summarised in one more finding.
const MAX_TAG_FINDINGS: usize = 32;

pub(super) const MS: u64 = 1_000_000;

pub(super) fn finding(cx: &Ctx<'_>, class: Class, severity: Severity) -> Finding {
    Finding {
        class,
        severity,
        dev: cx.dev_id(),
        queue: None,
        tag: None,
        pids: Vec::new(),
        age_ms: 0,
        summary: String::new(),
        evidence: Vec::new(),
        hint: String::new(),
        tags: Vec::new(),
    }
}

/// Keep at most [`MAX_TAG_FINDINGS`]; fold the rest into one summary finding.
pub(super) fn cap(mut v: Vec<Finding>) -> Vec<Finding> {
    if v.len() <= MAX_TAG_FINDINGS {
        return v;
    }
    let rest = v.split_off(MAX_TAG_FINDINGS - 1);
    let Some(first) = rest.first() else {
        return v;
    };
    let mut more = first.clone();
    more.queue = None;
    more.tag = None;
    more.age_ms = rest.iter().map(|f| f.age_ms).max().unwrap_or(0);
    more.summary = format!("{} more tags: {}", rest.len(), first.class);
    more.evidence = rest
        .iter()
        .filter_map(|f| Some(format!("q{} tag {}", f.queue?, f.tag?)))
        .collect();
    v.push(more);
    v
}

pub(super) fn verdict(v: Vec<Finding>) -> Verdict {
    if v.is_empty() {
        Verdict::Ok
    } else {
        Verdict::Findings(cap(v))
    }
}

pub(super) fn tag_finding(
    cx: &Ctx<'_>,
    class: Class,
    q: &QueueView<'_>,
    t: &TagView<'_>,
) -> Finding {
    let owner = t.owner_tid.or(q.owner_tid());
    Finding {
        queue: Some(t.q_id),
        tag: Some(t.tag),
        age_ms: t.age_ns / MS,
        pids: text::pids(cx, owner),
        ..finding(cx, class, Severity::Error)
    }
}

/// Events were lost after the tag entered its state and no later snapshot confirms the tag
/// is still busy: the state may be stale (its end was lost), so the rule does not judge.
fn unsure(cx: &Ctx<'_>, t: &TagView<'_>, lim: u64) -> bool {
    let lost_since = cx.model.lost_events() > 0 && cx.model.last_lost_ns() >= t.since_ns;
    let confirmed = t.from_snapshot
        || t.from_driver
        || t.raw
            .is_some_and(|r| r.snap_busy && r.snap_ns >= t.since_ns.saturating_add(lim));
    lost_since && !confirmed
}

/// The server has not read the request yet (its tag file still says waiting) and the owner
/// thread is runnable: on a loaded machine it may just be waiting for a CPU, so it gets twice
/// the time before the request counts as stuck (a busy loop stays R far longer).
fn maybe_starved(cx: &Ctx<'_>, q: &QueueView<'_>, t: &TagView<'_>, lim: u64) -> bool {
    let owner = t.owner_tid.or(q.owner_tid());
    if let Some(d) = owner.and_then(|tid| cx.dev.dev.persist.sched_delta.get(&tid)) {
        return d.starved();
    }
    // No scheduler counters: a runnable owner that has not read the request gets 2x.
    let unread = t.published.is_some_and(|p| p.state == "waiting");
    let runnable = owner
        .and_then(|tid| text::find_thread(cx, tid))
        .is_some_and(|th| th.state == 'R');
    unread && runnable && t.age_ns < lim.saturating_mul(2)
}

/// When the queue last served a request: an accepted command, a tag's last accepted commit
/// (from events or from the kernel's state map, which watch's state path reads instead of
/// commit events), a commit in the server's tag file, a request the driver's reads saw leave
/// the server, or a completion the light path's histogram counted. A tag held since before
/// then is not waiting for the owner to get a CPU: the owner had one and served others.
fn queue_last_progress_ns(q: &QueueView<'_>) -> u64 {
    q.queue
        .tags
        .values()
        .map(|t| {
            t.commit_ns
                .max(t.published.as_ref().map_or(0, |p| p.committed_ns))
                .max(t.driver.as_ref().map_or(0, |d| d.served_after_ns))
        })
        .fold(
            q.queue.last_accepted_ns.max(q.queue.completed_after_ns),
            u64::max,
        )
}

#[cfg(test)]
pub(super) fn queue_last_progress_ns_for_test(q: &QueueView<'_>) -> u64 {
    queue_last_progress_ns(q)
}

/// `q1 tag 3 (owner tid 179 waited for a CPU 620 ms of the last 700 ms)`.
fn starved_note(cx: &Ctx<'_>, q: &QueueView<'_>, t: &TagView<'_>) -> String {
    let owner = t.owner_tid.or(q.owner_tid());
    let d = owner.and_then(|tid| Some((tid, cx.dev.dev.persist.sched_delta.get(&tid)?)));
    match d {
        Some((tid, d)) => format!(
            "q{} tag {} (owner tid {tid} waited for a CPU {} of the last {}: overloaded)",
            t.q_id,
            t.tag,
            dur(d.wait_ns),
            dur(d.elapsed_ns)
        ),
        None => format!(
            "q{} tag {} (owner thread runnable, not yet run)",
            t.q_id, t.tag
        ),
    }
}

/// Delivered to the owner thread, no commit for longer than `stuck_ms`.
pub struct StuckInServer;

impl Rule for StuckInServer {
    fn class(&self) -> Class {
        Class::StuckInServer
    }
    fn summary(&self) -> &'static str {
        "requests delivered to the server and not committed"
    }
    fn check(&self, cx: &Ctx<'_>) -> Verdict {
        let lim = cx.th.stuck_ms * MS;
        let mut out = Vec::new();
        let mut unknown = Vec::new();
        for q in cx.dev.queues() {
            let progress_ns = queue_last_progress_ns(&q);
            for t in q.tags() {
                match t.state {
                    TagState::InServer | TagState::Committed
                        if t.age_ns >= lim && unsure(cx, &t, lim) =>
                    {
                        unknown.push(format!("q{} tag {} (events lost since)", t.q_id, t.tag));
                    }
                    TagState::InServer
                        if t.age_ns >= lim
                            && progress_ns <= t.since_ns
                            && maybe_starved(cx, &q, &t, lim) =>
                    {
                        unknown.push(starved_note(cx, &q, &t));
                    }
                    TagState::InServer if t.age_ns >= lim => out.push(stuck(cx, &q, &t)),
                    TagState::Committed if t.age_ns >= lim => {
                        out.push(committed_not_completed(cx, &q, &t));
                    }
                    TagState::InFlight if t.age_ns >= lim => {
                        unknown.push(format!("q{} tag {}", t.q_id, t.tag));
                    }
                    _ => {}
                }
            }
        }
        if out.is_empty() && !unknown.is_empty() {
            return Verdict::Recheck(format!(
                "{} in flight for at least {} but not judged: whether the server received them \
                 is unknown (no delivery events, no tag-state file), events were lost, or the \
                 machine is too loaded to tell",
                unknown.join(", "),
                dur(lim)
            ));
        }
        verdict(out)
    }
}

/// The commit was accepted but the block request never completed: the request still
/// holds something of the server's (a zero-copy / auto-registered buffer).
fn committed_not_completed(cx: &Ctx<'_>, q: &QueueView<'_>, t: &TagView<'_>) -> Finding {
    let mut f = tag_finding(cx, Class::StuckInServer, q, t);
    f.summary = format!(
        "q{} tag {}: committed {} ago, the block request has not completed",
        t.q_id,
        t.tag,
        dur(t.age_ns)
    );
    f.evidence.push(format!(
        "{}: COMMIT_AND_FETCH_REQ (result {}) accepted {} ago, no block_rq_complete since",
        text::request(t.op, t.sector, t.bytes),
        t.commit_result.unwrap_or(0),
        dur(t.age_ns)
    ));
    f.evidence.extend(text::lost_line(cx));
    f.hint = "With zero copy the request completes only when its buffer is unregistered: \
              send UNREGISTER_IO_BUF (or let auto-registration release it) after the backend \
              I/O is done."
        .into();
    f
}

fn stuck(cx: &Ctx<'_>, q: &QueueView<'_>, t: &TagView<'_>) -> Finding {
    let mut f = tag_finding(cx, Class::StuckInServer, q, t);
    f.summary = format!(
        "q{} tag {}: in the server for {} without a commit",
        t.q_id,
        t.tag,
        dur(t.age_ns)
    );
    let cqe = t.raw.is_some_and(|r| r.cqe_since_ns.is_some());
    let how = if t.from_driver {
        " (the driver holds it as OWNED_BY_SRV: the server received it)"
    } else if t.delivery_inferred {
        " (delivery inferred from the queue's batched task-work run)"
    } else if cqe {
        " (its CQE sits in the server's ring; age counted from the first snapshot that saw it)"
    } else if t.from_snapshot {
        " (from the server's tag-state file)"
    } else {
        ""
    };
    // A BATCH_IO device commits with COMMIT_IO_CMDS, many tags at once.
    let commit = if batch_device(cx) {
        "no COMMIT_IO_CMDS has committed it"
    } else {
        "no COMMIT_AND_FETCH_REQ accepted"
    };
    f.evidence.push(format!(
        "{} delivered to the server {} ago{how}; {commit} since",
        text::request(t.op, t.sector, t.bytes),
        dur(t.age_ns)
    ));
    f.evidence
        .extend(text::owner_line(cx, t.owner_tid.or(q.owner_tid())));
    if t.raw.is_some_and(|r| r.cqe_since_ns.is_some()) {
        f.evidence.push(
            "its completion (CQE) is posted in the server's queue ring and was never reaped \
             (user_data read in the libublk layout)"
                .into(),
        );
    }
    f.evidence.extend(published_line(cx, t));
    f.evidence.extend(rejected_meanwhile(cx, t));
    f.evidence.extend(text::ring_lines(cx));
    f.evidence.extend(text::lost_line(cx));
    f.hint = "Every delivered request must be answered by COMMIT_AND_FETCH_REQ from the owner \
              thread: look at what that thread does with this tag (backend I/O, a lock, a lost \
              completion, a commit never submitted)."
        .into();
    f
}

/// COMMITs of this queue the kernel rejected since the request reached the server: the
/// commit meant for it may have named another tag, or come from a thread that does not own it.
fn rejected_meanwhile(cx: &Ctx<'_>, t: &TagView<'_>) -> Option<String> {
    let since = cx.now_ns.saturating_sub(t.age_ns);
    let rej: Vec<_> = cx
        .dev
        .rejected()
        .filter(|r| r.q_id == t.q_id && r.ts_ns >= since && r.op == "COMMIT_AND_FETCH_REQ")
        .collect();
    let r = rej.first()?;
    let owner = r
        .owner_tid
        .or_else(|| super::rules_commits::tag_owner(cx, r.q_id, r.tag));
    let thread = match owner {
        Some(o) if o != r.tid => format!("tid {} (owner tid {o})", r.tid),
        _ => format!("tid {}", r.tid),
    };
    let wrong_tag = rej.iter().any(|r| r.tag != t.tag);
    Some(format!(
        "meanwhile the kernel rejected {} COMMIT_AND_FETCH_REQ(s) on q{}: tag {} from {thread} \
         ({}, result {}){}: if one was meant for this request, it {} and changed nothing",
        rej.len(),
        t.q_id,
        r.tag,
        errno_name(r.errno),
        r.result,
        if rej.len() > 1 { ", ..." } else { "" },
        if wrong_tag {
            "named the wrong tag"
        } else {
            "came from a thread that does not own the tag, or was malformed"
        }
    ))
}

fn published_line(cx: &Ctx<'_>, t: &TagView<'_>) -> Option<String> {
    let p = t.published?;
    let ago = |ns: u64| dur(cx.now_ns.saturating_sub(ns));
    Some(match p.state.as_str() {
        "committed" => format!(
            "the server's tag file says it committed result {} {} ago, but the kernel never \
             accepted that commit: the SQE was not submitted (missing io_uring_enter or SQ tail store)",
            p.result,
            ago(p.committed_ns)
        ),
        "in_server" => format!(
            "the server's tag file agrees: received {} ago by tid {}",
            ago(p.received_ns),
            p.tid
        ),
        "waiting" => "the server's tag file says it still waits for this tag: it never read the \
                      request's CQE"
            .to_string(),
        other => format!("the server's tag file says {other}"),
    })
}

/// Started and never delivered: the owner thread did not run the delivery task work.
pub struct NotDelivered;

impl Rule for NotDelivered {
    fn class(&self) -> Class {
        Class::NotDelivered
    }
    fn summary(&self) -> &'static str {
        "requests started in the kernel that the server's thread never received"
    }
    fn check(&self, cx: &Ctx<'_>) -> Verdict {
        let lim = cx.th.stuck_ms * MS;
        let mut out = Vec::new();
        let mut blind = Vec::new();
        for q in cx.dev.queues() {
            for t in q.tags() {
                let requeued = t.raw.is_some_and(|r| r.requeue_ns > r.queue_rq_ns);
                if t.state != TagState::Queued || requeued || t.age_ns < lim {
                    continue;
                }
                // No fetch dispatching on a BATCH_IO queue: NO_FETCH names the cause.
                if t.from_driver && batch_fetch_idle(&q) {
                    continue;
                }
                // The owner thread entered io_uring (a command of this queue was accepted)
                // after the request started, so the delivery task work ran then: the
                // delivery event is late or batched, not missing.
                // (The driver's own flags need no such inference: ACTIVE with a request in
                // flight is a request the server has not received.)
                if !t.from_snapshot && !t.from_driver && q.queue.last_accepted_ns > t.since_ns {
                    continue;
                }
                let blind_to_delivery =
                    q.queue.deliveries == 0 && !t.from_snapshot && !t.from_driver;
                if blind_to_delivery || unsure(cx, &t, lim) {
                    blind.push(format!("q{} tag {}", t.q_id, t.tag));
                    continue;
                }
                if maybe_starved(cx, &q, &t, lim) {
                    blind.push(starved_note(cx, &q, &t));
                    continue;
                }
                out.push(not_delivered(cx, &q, &t));
            }
        }
        if out.is_empty() && !blind.is_empty() {
            return Verdict::Recheck(format!(
                "{} started over {} ago but not judged: no delivery event was ever seen on the \
                 queue (task-work probe missing?), events were lost, or the owner thread is \
                 starved of CPU",
                blind.join(", "),
                dur(lim)
            ));
        }
        verdict(out)
    }
}

/// GET_DEV_INFO says UBLK_F_BATCH_IO: per-queue batch commands, none per tag.
fn batch_device(cx: &Ctx<'_>) -> bool {
    cx.dev
        .info()
        .is_some_and(|i| i.flags & ublk_abi::UBLK_F_BATCH_IO != 0)
}

fn not_delivered(cx: &Ctx<'_>, q: &QueueView<'_>, t: &TagView<'_>) -> Finding {
    let mut f = tag_finding(cx, Class::NotDelivered, q, t);
    f.summary = format!(
        "q{} tag {}: started {} ago, never delivered to the server",
        t.q_id,
        t.tag,
        dur(t.age_ns)
    );
    f.evidence.push(format!(
        "{} started (queue_rq) {} ago; the owner thread has not run its delivery task work",
        text::request(t.op, t.sector, t.bytes),
        dur(t.age_ns)
    ));
    if t.from_driver {
        // A batch device parks no command per tag (kublk -b, ublk-server --batch-io): its
        // requests reach the server through the queue's multishot FETCH_IO_CMDS.
        f.evidence.push(if batch_device(cx) {
            "the driver's own state: the io is still ACTIVE while its request is in flight \
             (BATCH_IO: no command is parked per tag; the queue's multishot FETCH_IO_CMDS \
             delivers it)"
                .into()
        } else {
            "the driver's own state: the io is still ACTIVE (the server's FETCH/COMMIT is \
             parked, not answered) while its request is in flight"
                .into()
        });
    }
    if q.queue.last_delivered_ns > 0 {
        f.evidence.push(format!(
            "the queue's last delivery ran {} ago",
            dur(cx.now_ns.saturating_sub(q.queue.last_delivered_ns))
        ));
    }
    let owner = t.owner_tid.or(q.owner_tid());
    if let Some(th) = owner.and_then(|tid| text::find_thread(cx, tid)) {
        f.evidence
            .push(format!("owner thread {}", text::thread(th)));
        f.evidence.push(
            match th.state {
                'T' | 't' => "it is stopped: delivery waits until it runs again",
                'R' => "it runs in user space and does not enter io_uring (busy loop?)",
                _ if th.wchan.starts_with("io_cqring_wait") => {
                    "it waits in io_uring, yet the task work did not run"
                }
                _ => {
                    "it sleeps outside io_uring_enter: on a DEFER_TASKRUN ring only its own \
                     io_uring_enter (waiting for completions) runs the delivery; on other \
                     rings it runs once the sleep ends"
                }
            }
            .to_string(),
        );
    }
    f.evidence.extend(published_line(cx, t));
    f.evidence.extend(text::lost_line(cx));
    f.hint = "The owner thread must keep entering io_uring (submit_and_wait) so the kernel can \
              deliver requests; with DEFER_TASKRUN only that thread's io_uring_enter runs them."
        .into();
    f
}

/// Inserted but not started: quiesced/frozen queue, requeue list, scheduler, tag starvation.
pub struct HeldInBlockLayer;

impl Rule for HeldInBlockLayer {
    fn class(&self) -> Class {
        Class::HeldInBlockLayer
    }
    fn summary(&self) -> &'static str {
        "requests held by blk-mq before ublk sees them"
    }
    fn check(&self, cx: &Ctx<'_>) -> Verdict {
        let mut held = Held {
            ev: Vec::new(),
            since: u64::MAX,
            pids: Vec::new(),
        };
        held.debugfs(cx);
        held.requeued(cx);
        held.starved_waiters(cx);
        if held.ev.is_empty() {
            return Verdict::Ok;
        }
        let mut f = finding(cx, Class::HeldInBlockLayer, Severity::Error);
        f.age_ms = cx.age_ms(held.since);
        f.pids = text::pids(cx, held.pids);
        f.summary = format!(
            "requests held in the block layer for {}",
            dur(f.age_ms * MS)
        );
        f.evidence = held.ev;
        f.hint = "No ublk_queue_rq can run for these requests: look for a quiesced or frozen \
                  queue (recovery, update-size, teardown), all tags busy (requests stuck in the \
                  server), or a requeue loop."
            .into();
        Verdict::Findings(vec![f])
    }
}

/// Evidence of requests blk-mq holds, gathered from three sources.
struct Held {
    ev: Vec<String>,
    since: u64,
    pids: Vec<u32>,
}

impl Held {
    /// debugfs: quiesced queue, dispatch/requeue/per-CPU lists, scheduler, tag waiters.
    fn debugfs(&mut self, cx: &Ctx<'_>) {
        let p = &cx.dev.dev.persist;
        let blk = cx.dev.snapshot().and_then(|s| s.blk.as_ref());
        if let (Some(s), Some(blk)) = (p.held_since, blk)
            && cx.now_ns.saturating_sub(s) >= cx.th.held_ms * MS
        {
            self.ev.extend(blk.held_in_block_layer());
            self.since = self.since.min(s);
        }
    }

    /// Events: requests requeued and not started again.
    fn requeued(&mut self, cx: &Ctx<'_>) {
        for q in cx.dev.queues() {
            for t in q.tags() {
                let Some(r) = t.raw.filter(|r| r.requeue_ns > r.queue_rq_ns) else {
                    continue;
                };
                let age = cx.now_ns.saturating_sub(r.requeue_ns);
                if age >= cx.th.held_ms * MS {
                    self.ev.push(format!(
                        "q{} tag {}: requeued {} ago and not started again",
                        t.q_id,
                        t.tag,
                        dur(age)
                    ));
                    self.since = self.since.min(r.requeue_ns);
                }
            }
        }
    }

    /// procfs: tasks waiting for a tag or to enter a frozen queue.
    fn starved_waiters(&mut self, cx: &Ctx<'_>) {
        let p = &cx.dev.dev.persist;
        for w in cx.dev.snapshot().map_or(&[][..], |s| s.waiters.as_slice()) {
            let starved = matches!(w.wait, Some(WaitKind::TagStarved | WaitKind::QueueFrozen));
            let Some((_, s)) = p.waiter_since.get(&w.tid) else {
                continue;
            };
            let age = cx.now_ns.saturating_sub(*s);
            if starved && age >= cx.th.waiter_ms * MS {
                self.ev.push(format!(
                    "pid {} ({}) in D for at least {}, wchan {}: {}",
                    w.pid,
                    w.comm,
                    dur(age),
                    w.wchan,
                    w.wait.map_or("", WaitKind::explain)
                ));
                self.since = self.since.min(*s);
                self.pids.push(w.pid);
            }
        }
    }
}

/// START_DEV waits until every tag has a FETCH_REQ; these tags never had one. Or, on a
/// BATCH_IO queue, requests wait for a multishot FETCH_IO_CMDS and none is armed.
pub struct NoFetch;

impl Rule for NoFetch {
    fn class(&self) -> Class {
        Class::NoFetch
    }
    fn summary(&self) -> &'static str {
        "tags without FETCH_REQ while START_DEV waits for them, or BATCH_IO queues without an \
         armed FETCH_IO_CMDS while requests wait"
    }
    fn check(&self, cx: &Ctx<'_>) -> Verdict {
        let batch = batch_unfetched(cx);
        match (start_dev_unfetched(cx), batch.is_empty()) {
            (v, true) => v,
            (Verdict::Findings(mut v), false) => {
                v.extend(batch);
                Verdict::Findings(v)
            }
            (_, false) => Verdict::Findings(batch),
        }
    }
}

/// The driver's memory holds this BATCH_IO queue with no fetch command dispatching.
pub(super) fn batch_fetch_idle(q: &QueueView<'_>) -> bool {
    q.queue
        .driver
        .as_ref()
        .and_then(|d| d.batch)
        .is_some_and(|b| !b.fetch_active)
}

/// BATCH_IO queues whose started requests wait in the driver's event FIFO with no
/// FETCH_IO_CMDS dispatching them. The driver starts a dispatch when a request is queued or
/// a fetch is armed; requests already queued when the active fetch ended wait until the
/// server arms one (another armed fetch is not started for them).
fn batch_unfetched(cx: &Ctx<'_>) -> Vec<Finding> {
    let lim = cx.th.stuck_ms * MS;
    let mut out = Vec::new();
    for q in cx.dev.queues() {
        let Some(b) = q.queue.driver.as_ref().and_then(|d| d.batch) else {
            continue;
        };
        if b.fetch_active {
            continue;
        }
        let waiting: Vec<TagView<'_>> = q
            .tags()
            .into_iter()
            .filter(|t| t.state == TagState::Queued && t.from_driver && t.age_ns >= lim)
            .collect();
        let Some(oldest) = waiting.iter().max_by_key(|t| t.age_ns) else {
            continue;
        };
        let mut f = tag_finding(cx, Class::NoFetch, &q, oldest);
        let tags: Vec<u16> = waiting.iter().map(|t| t.tag).collect();
        f.summary = format!(
            "q{}: no FETCH_IO_CMDS dispatching; {} request(s) wait for one, the oldest {}",
            q.q_id,
            tags.len(),
            dur(oldest.age_ns)
        );
        f.evidence.push(if b.fetch_armed == 0 {
            format!(
                "the driver's own state: q{} lists no multishot FETCH_IO_CMDS (fcmd_head \
                 empty, no active one), and {} tag(s) wait in its event FIFO to be reported",
                q.q_id, b.fifo_waiting
            )
        } else {
            format!(
                "the driver's own state: q{} lists {} FETCH_IO_CMDS armed but none \
                 dispatching (no active_fcmd), and {} tag(s) wait in its event FIFO: the \
                 driver starts a dispatch only when a request is queued or a fetch is armed, \
                 so requests queued before the active fetch ended wait for the next FETCH",
                q.q_id, b.fetch_armed, b.fifo_waiting
            )
        });
        f.evidence.push(format!(
            "started and never delivered (the io is still ACTIVE, its request in flight): \
             tags {}",
            list(&tags)
        ));
        f.evidence.push(format!(
            "oldest: tag {}, {} started {} ago",
            oldest.tag,
            text::request(oldest.op, oldest.sector, oldest.bytes),
            dur(oldest.age_ns)
        ));
        if let Some(th) = oldest
            .owner_tid
            .or(q.owner_tid())
            .and_then(|tid| text::find_thread(cx, tid))
        {
            f.evidence
                .push(format!("queue thread {}", text::thread(th)));
        }
        f.hint = "Keep a multishot FETCH_IO_CMDS armed on every queue: when its CQE comes \
                  without IORING_CQE_F_MORE (the command ended, e.g. -ENOBUFS once its \
                  provided buffer is used up, or a CQ overflow), give the buffer back and \
                  submit it again at once: requests queued before it ended wait for that \
                  re-arm (the driver does not start another armed fetch for them). Arm two, \
                  as kublk does, so one is armed while the other is re-armed."
            .into();
        out.push(f);
    }
    out
}

/// START_DEV is pending and some tags never had a FETCH_REQ.
fn start_dev_unfetched(cx: &Ctx<'_>) -> Verdict {
    let dev = cx.dev_id();
    let start = cx
        .model
        .ctrl()
        .pending()
        .filter(|c| c.dev_id == Some(dev) && c.op == "START_DEV")
        .map(|c| c.start_ns)
        .min();
    let frames = &cx.dev.dev.persist.ctrl_frames_since;
    let frame_start = frames
        .values()
        .filter(|(f, _)| f.starts_with("ublk_ctrl_start_dev"))
        .map(|(_, s)| *s)
        .min();
    // Where the compiler inlined START_DEV's body (6.1), its waiter's stack ends at the bare
    // handler: taken as START_DEV only on a device the driver says was never started, and
    // no_fetch still needs the tags the driver's memory lists as never fetched.
    let never_started = cx
        .dev
        .info()
        .is_some_and(|i| i.dev_state() == crate::snapshot::DevState::Dead);
    let inlined_start = frames
        .values()
        .filter(|(f, _)| never_started && f == "ublk_ctrl_uring_cmd")
        .map(|(_, s)| *s)
        .min();
    let (since, inferred) = match (start.or(frame_start), inlined_start) {
        (Some(s), _) => (s, false),
        (None, Some(s)) => (s, true),
        (None, None) => return Verdict::Ok,
    };
    if cx.now_ns.saturating_sub(since) < cx.th.stuck_ms * MS {
        return Verdict::Ok;
    }
    let Some((nr, depth)) = cx.dev.geometry() else {
        return Verdict::Recheck(
            "START_DEV is pending but the queue count and depth are \
                                 unknown (GET_DEV_INFO failed)"
                .into(),
        );
    };
    let add_seen = cx
        .model
        .ctrl()
        .iter()
        .any(|c| c.dev_id == Some(dev) && c.op == "ADD_DEV");
    let mut v = no_fetch(cx, since, (nr, depth), add_seen);
    if inferred && let Verdict::Findings(fs) = &mut v {
        for f in fs {
            f.evidence.insert(
                1,
                "START_DEV inferred: a control thread is blocked in ublk_ctrl_uring_cmd with no \
                 ublk_ctrl_start_dev frame (that body is inlined on this kernel) while the \
                 device has never started (GET_DEV_INFO state DEAD)"
                    .into(),
            );
        }
    }
    v
}

/// Tags without an accepted FETCH per queue, and whether a per-tag source (the server's tag
/// file, the driver's memory) said so.
fn unfetched(
    cx: &Ctx<'_>,
    (nr, depth): (u16, u16),
    add_seen: bool,
) -> (BTreeMap<u16, Vec<u16>>, bool) {
    let mut missing: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
    let mut told_by_file = false;
    for q in 0..nr {
        let qv = cx.dev.queue(q);
        for t in 0..depth {
            let tv = qv.map(|qv| qv.tag(t));
            // The driver's memory says it outright, late attach or not.
            if let Some(d) = tv
                .as_ref()
                .and_then(|t| t.raw)
                .and_then(|r| r.driver.as_ref())
            {
                told_by_file = true;
                if d.view == crate::driver::TagView::NotFetched {
                    missing.entry(q).or_default().push(t);
                }
                continue;
            }
            let fetched = tv
                .as_ref()
                .and_then(|t| t.raw)
                .is_some_and(|r| r.fetch_ns > 0);
            let published = tv.as_ref().and_then(|t| t.published);
            told_by_file |= published.is_some();
            let file_idle = published.is_some_and(|p| p.state == "idle");
            let file_armed = published.is_some_and(|p| p.state != "idle");
            if !fetched && !file_armed && (add_seen || file_idle) {
                missing.entry(q).or_default().push(t);
            }
        }
    }
    (missing, told_by_file)
}

fn no_fetch(cx: &Ctx<'_>, since: u64, (nr, depth): (u16, u16), add_seen: bool) -> Verdict {
    let (missing, told_by_file) = unfetched(cx, (nr, depth), add_seen);
    if missing.is_empty() {
        if !add_seen && !told_by_file {
            return Verdict::Recheck(
                "START_DEV is pending, but the tracer attached after ADD_DEV \
                                     and the FETCH_REQs before it were not seen"
                    .into(),
            );
        }
        return Verdict::Ok;
    }
    let mut f = finding(cx, Class::NoFetch, Severity::Error);
    f.age_ms = cx.age_ms(since);
    f.pids = text::pids(cx, []);
    let total: usize = missing.values().map(Vec::len).sum();
    f.queue = (missing.len() == 1)
        .then(|| missing.keys().next().copied())
        .flatten();
    f.summary = format!(
        "{total} tag(s) never fetched; START_DEV has waited {}",
        dur(f.age_ms * MS)
    );
    f.evidence.push(format!(
        "START_DEV pending for {}: it completes only when every tag of every queue has a FETCH_REQ",
        dur(f.age_ms * MS)
    ));
    for (q, tags) in &missing {
        f.evidence.push(format!(
            "q{q}: {} of {depth} tags never had a FETCH_REQ accepted: {}",
            tags.len(),
            list(tags)
        ));
    }
    for r in cx.dev.rejected().filter(|r| r.op == "FETCH_REQ") {
        f.evidence.push(format!(
            "FETCH_REQ on q{} tag {} was rejected with {}",
            r.q_id,
            r.tag,
            errno_name(r.errno)
        ));
    }
    f.hint = "Submit one FETCH_REQ per tag of every queue (from the thread that will serve it) \
              before waiting for START_DEV."
        .into();
    Verdict::Findings(vec![f])
}

/// `1, 2, 3, 7` (at most 16, then `...`).
fn list(tags: &[u16]) -> String {
    let mut s: Vec<String> = tags.iter().take(16).map(u16::to_string).collect();
    if tags.len() > 16 {
        s.push(format!("... ({} more)", tags.len() - 16));
    }
    s.join(", ")
}
