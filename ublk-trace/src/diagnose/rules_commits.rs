//! Rules about what the server committed or sent: bad commits, rejected commands, and slow
//! requests.
use std::collections::BTreeMap;

use super::rules_tags::{MS, finding, tag_finding, verdict};
use super::text::{self, dur};
use super::{Class, Ctx, Finding, Rule, Severity, Verdict};
use crate::model::tag::errno_name;
use crate::model::{QueueView, TagView};

/// A rejected batch command that names no element (the whole command was refused).
const NO_TAG: u16 = u16::MAX;

/// Negative commit, 0 bytes for a non-empty read/write, or a requeue storm.
pub struct BadCommit;

impl Rule for BadCommit {
    fn historical(&self) -> bool {
        true
    }
    fn class(&self) -> Class {
        Class::BadCommit
    }
    fn summary(&self) -> &'static str {
        "commits that fail the request or make the kernel requeue it"
    }
    fn check(&self, cx: &Ctx<'_>) -> Verdict {
        let recent = cx.now_ns.saturating_sub(cx.th.recent_ms * MS);
        let mut out = Vec::new();
        let window = cx.th.storm_window_ms * MS;
        for q in cx.dev.queues() {
            // With an I/O scheduler (mq-deadline, the default for one hardware queue) the
            // driver tag is released at each requeue: the same request comes back on any tag,
            // so a storm is counted per queue too.
            let q_storm: usize = q
                .tags()
                .iter()
                .filter_map(|t| t.raw)
                .map(|r| r.requeues_within(cx.now_ns, window))
                .sum::<usize>()
                + q.queue.untagged_requeues_within(cx.now_ns, window);
            for t in q.tags() {
                let Some(r) = t.raw else { continue };
                let own = r.requeues_within(cx.now_ns, window);
                let from_file = published_bad(t.published, recent);
                let from_driver = driver_bad(r, recent);
                let bad = r
                    .last_bad
                    .clone()
                    .filter(|b| b.ts_ns >= recent)
                    .or(from_file.clone())
                    .or(from_driver.clone());
                let short_write = bad
                    .as_ref()
                    .is_some_and(|b| b.result >= 0 && b.op != "READ");
                let storm =
                    if own < cx.th.storm_requeues && short_write && q_storm >= cx.th.storm_requeues
                    {
                        Storm::Queue(q_storm)
                    } else {
                        Storm::Tag(own)
                    };
                if bad.is_none() && own < cx.th.storm_requeues {
                    continue;
                }
                let mut f = bad_commit(cx, &q, &t, bad.as_ref(), storm);
                if r.last_bad.is_none() && from_file.is_some() {
                    f.evidence.insert(1, "(from the server's tag-state file: the commit happened before tracing started)".into());
                } else if r.last_bad.is_none() && from_driver.is_some() {
                    f.evidence.insert(1, "(from the driver's memory: io->res keeps the tag's last committed result; the commit happened before tracing started)".into());
                }
                out.push(f);
            }
        }
        verdict(out)
    }
}

/// The last commit the server published for the tag, when it was bad (late attach).
fn published_bad(
    p: Option<&crate::snapshot::tagfile::PublishedTag>,
    recent: u64,
) -> Option<crate::model::tag::BadCommit> {
    let p = p?;
    let rw = match p.op {
        0 => "READ",
        1 => "WRITE",
        _ => "",
    };
    let bytes = p.nr_sectors.saturating_mul(512);
    let bad = p.result < 0 || (p.result == 0 && !rw.is_empty() && bytes > 0);
    (bad && p.committed_ns >= recent && p.committed_ns > 0).then(|| crate::model::tag::BadCommit {
        ts_ns: p.committed_ns,
        result: p.result,
        op: if rw.is_empty() {
            format!("op {}", p.op)
        } else {
            rw.to_string()
        },
        bytes,
    })
}

/// The driver keeps the last committed result of a re-armed tag in `io->res`: negative means
/// the server failed the tag's last request (0 cannot be told from a tag never used).
fn driver_bad(r: &crate::model::tag::Tag, recent: u64) -> Option<crate::model::tag::BadCommit> {
    let d = r.driver.as_ref()?;
    let rearmed = d.view == crate::driver::TagView::Waiting;
    (rearmed && d.res < 0 && d.view_since_ns >= recent).then(|| crate::model::tag::BadCommit {
        ts_ns: d.view_since_ns,
        result: d.res,
        op: String::new(),
        bytes: 0,
    })
}

/// Requeues within the storm window: of this tag, or of its whole queue.
#[derive(Clone, Copy)]
enum Storm {
    Tag(usize),
    Queue(usize),
}

fn bad_commit(
    cx: &Ctx<'_>,
    q: &QueueView<'_>,
    t: &TagView<'_>,
    bad: Option<&crate::model::tag::BadCommit>,
    storm: Storm,
) -> Finding {
    let mut f = tag_finding(cx, Class::BadCommit, q, t);
    let count = t.bad_commits;
    if let Some(b) = bad {
        f.age_ms = cx.age_ms(b.ts_ns);
        f.evidence.push(if b.result < 0 && b.op.is_empty() {
            format!(
                "COMMIT_AND_FETCH_REQ result {} for the tag's last request: it failed",
                errno_name(b.result)
            )
        } else if b.result < 0 {
            format!(
                "COMMIT_AND_FETCH_REQ result {} for a {}-byte {}: the request fails",
                errno_name(b.result),
                b.bytes,
                b.op
            )
        } else if b.op == "READ" {
            format!(
                "COMMIT_AND_FETCH_REQ result 0 for a {}-byte READ: the kernel fails it with EIO",
                b.bytes
            )
        } else {
            format!(
                "COMMIT_AND_FETCH_REQ result 0 for a {}-byte {}: the kernel requeues the remainder",
                b.bytes, b.op
            )
        });
        if count > 0 {
            f.evidence
                .push(format!("{count} bad commit(s) on this tag while traced"));
        }
        if b.result < 0 {
            f.severity = Severity::Warning;
        }
    }
    let (storm, whose) = match storm {
        Storm::Tag(n) => (n, "of this tag".to_string()),
        Storm::Queue(n) => (
            n,
            format!(
                "on q{} (a requeued request comes back on any tag when an I/O scheduler \
                 releases its driver tag)",
                t.q_id
            ),
        ),
    };
    // The model keeps the last REQUEUE_WINDOW requeue times per tag (and per queue): a
    // count at that cap is a lower bound.
    let at_least = if storm >= crate::model::tag::REQUEUE_WINDOW {
        "at least "
    } else {
        ""
    };
    if storm >= cx.th.storm_requeues {
        f.severity = Severity::Error;
        f.evidence.push(format!(
            "{at_least}{storm} requeues {whose} within {}: a requeue storm (livelock), not a stall",
            dur(cx.th.storm_window_ms * MS)
        ));
    }
    let storm_part = (storm >= cx.th.storm_requeues).then(|| {
        format!(
            "requeue storm ({at_least}{storm} requeues in {})",
            dur(cx.th.storm_window_ms * MS)
        )
    });
    f.summary = match (bad, storm_part) {
        (Some(b), Some(st)) => format!(
            "q{} tag {}: {st}: {} commit result {} for {} bytes",
            t.q_id, t.tag, b.op, b.result, b.bytes
        ),
        (Some(b), None) if b.op.is_empty() => {
            format!("q{} tag {}: last commit result {}", t.q_id, t.tag, b.result)
        }
        (Some(b), None) => format!(
            "q{} tag {}: {} commit result {} for {} bytes",
            t.q_id, t.tag, b.op, b.result, b.bytes
        ),
        (None, Some(st)) => format!("q{} tag {}: {st}", t.q_id, t.tag),
        (None, None) => format!("q{} tag {}: bad commit", t.q_id, t.tag),
    };
    f.evidence.extend(text::lost_line(cx));
    f.hint = "Commit the number of bytes transferred (> 0) for reads and writes, or a negative \
              errno to fail the request on purpose; a short write is requeued."
        .into();
    f
}

/// Commands the kernel rejected (wrong thread, tag not owned, double commit, bad address).
pub struct CmdRejected;

impl Rule for CmdRejected {
    fn historical(&self) -> bool {
        true
    }
    fn class(&self) -> Class {
        Class::CmdRejected
    }
    fn summary(&self) -> &'static str {
        "I/O commands the kernel refused"
    }
    fn check(&self, cx: &Ctx<'_>) -> Verdict {
        let recent = cx.now_ns.saturating_sub(cx.th.recent_ms * MS);
        type Key = (u16, u16, String, i32, u32);
        type Group = (u64, u64, Option<u32>, Option<(u16, u16)>, i32);
        let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
        for r in cx.dev.rejected().filter(|r| r.ts_ns >= recent) {
            let k = (r.q_id, r.tag, r.op.clone(), r.errno, r.tid);
            let e = groups
                .entry(k)
                .or_insert((0, r.ts_ns, r.owner_tid, r.batch_elem, r.result));
            e.0 += 1;
            e.1 = e.1.min(r.ts_ns);
            e.2 = r.owner_tid.or(e.2);
        }
        let out = groups
            .into_iter()
            .map(|((q, tag, op, errno, tid), (n, first, owner, elem, result))| {
                let tagged = tag != NO_TAG;
                // Attached after the FETCHes: the owner comes from the server's tag file.
                let owner = owner.or_else(|| tag_owner(cx, q, tag).filter(|_| tagged));
                let mut f = finding(cx, Class::CmdRejected, Severity::Error);
                f.queue = Some(q);
                f.tag = tagged.then_some(tag);
                f.age_ms = cx.age_ms(first);
                f.pids = text::pids(cx, [tid]);
                let what = if errno < 0 {
                    format!("rejected with {}", errno_name(errno))
                } else {
                    "not taken whole".to_string()
                };
                f.summary = match tagged {
                    true => format!("q{q} tag {tag}: {op} {what} ({n}x)"),
                    false => format!("q{q}: {op} {what} ({n}x)"),
                };
                f.evidence.push(format!(
                    "{op} from tid {tid} {} {n} time(s), first {} ago",
                    if errno < 0 {
                        format!("returned {}", errno_name(errno))
                    } else {
                        "was refused an element".to_string()
                    },
                    dur(cx.now_ns.saturating_sub(first))
                ));
                f.evidence.push(match elem {
                    Some(e) => batch_refusal(e, tag, result, cx.dev.geometry()),
                    None => rejection_cause(&op, errno, tid, owner),
                });
                f.hint = "A rejected command changes nothing in the kernel: the tag stays where \
                          it was. Send each COMMIT once, from the owner thread, for a delivered request."
                    .into();
                f
            })
            .collect();
        verdict(out)
    }
}

/// The tag's owner thread as the model or the server's tag-state file knows it.
pub(super) fn tag_owner(cx: &Ctx<'_>, q: u16, tag: u16) -> Option<u32> {
    let qv = cx.dev.queue(q)?;
    qv.tag(tag).owner_tid.or(qv.owner_tid())
}

/// Why the kernel refused element `index` of `nr` of a COMMIT_IO_CMDS (ublk_drv.c:
/// `__ublk_walk_cmd_buf`, `ublk_batch_commit_io_check`). It handles the elements in order
/// and stops at the first it refuses: that one and every later one were not committed.
fn batch_refusal(
    (index, nr): (u16, u16),
    tag: u16,
    result: i32,
    geometry: Option<(u16, u16)>,
) -> String {
    let why = match geometry {
        Some((_, depth)) if tag >= depth => {
            format!("tag {tag} is not below the queue depth {depth} (-EINVAL)")
        }
        _ => "the tag was not the server's to commit: its io was not OWNED_BY_SRV (-EBUSY: \
              never delivered, or committed already: a second commit, or a commit meant for \
              another tag); or, on a device that copies data, the element had no buffer \
              address (-EINVAL)"
            .to_string(),
    };
    format!(
        "element {index} of {nr} (tag {tag}, result {result}) refused: {why}; elements \
         {index}..{nr} of that command were not committed"
    )
}

/// Why the kernel refused a command, from its errno and who sent it.
fn rejection_cause(op: &str, errno: i32, tid: u32, owner: Option<u32>) -> String {
    match owner {
        Some(o) if o != tid => format!(
            "the tag is owned by tid {o}, the command came from tid {tid}: commands from another \
             thread are rejected (the owner is per queue up to 6.15, per tag from 6.16)"
        ),
        Some(o) if errno == -libc::EBUSY && op == "COMMIT_AND_FETCH_REQ" => format!(
            "sent by the owner thread (tid {o}) for a tag that held no request (it was waiting \
             for one): a second commit of a request, or a commit meant for another tag"
        ),
        Some(o) if errno == -libc::EBUSY => format!(
            "sent by the owner thread (tid {o}) while the tag already had a command in the kernel"
        ),
        Some(o) => format!(
            "sent by the owner thread (tid {o}): a commit for a tag that holds no request, a \
             NEED_GET_DATA mismatch, or a bad buffer address"
        ),
        None => {
            format!("sent by tid {tid}; the owner thread is unknown (its FETCH_REQ was not seen)")
        }
    }
}

/// Latency outliers (informational).
pub struct Slow;

impl Rule for Slow {
    fn historical(&self) -> bool {
        true
    }
    fn class(&self) -> Class {
        Class::Slow
    }
    fn summary(&self) -> &'static str {
        "requests much slower than the threshold (informational)"
    }
    fn check(&self, cx: &Ctx<'_>) -> Verdict {
        let recent = cx.now_ns.saturating_sub(cx.th.recent_ms * MS);
        let lim = cx.th.slow_ms * MS;
        let mut out = Vec::new();
        for q in cx.dev.queues() {
            let mut slow: Vec<(crate::model::queue::SlowIo, &str)> = q
                .queue
                .slow
                .iter()
                .filter(|s| s.done_ns >= recent && s.latency_ns >= lim)
                .map(|s| {
                    let how = if s.block {
                        "request start -> completion"
                    } else {
                        "queue_rq -> commit"
                    };
                    (*s, how)
                })
                .collect();
            // Without events, the tag file's last request per tag: received -> committed.
            if slow.is_empty() {
                slow.extend(q.tags().iter().filter_map(|t| {
                    let p = t.published?;
                    let took = p.committed_ns.checked_sub(p.received_ns)?;
                    let fresh = p.received_ns > 0 && p.committed_ns >= recent;
                    (fresh && took >= lim).then_some((
                        crate::model::queue::SlowIo {
                            done_ns: p.committed_ns,
                            tag: t.tag,
                            latency_ns: took,
                            block: false,
                        },
                        "received -> committed, from the server's tag file",
                    ))
                }));
            }
            let Some((worst, how)) = slow.iter().max_by_key(|s| s.0.latency_ns).copied() else {
                continue;
            };
            // The light path measures start -> completion only.
            let h = if q.server_latency().count() > 0 {
                q.server_latency()
            } else {
                q.block_latency()
            };
            let mut f = finding(cx, Class::Slow, Severity::Info);
            f.queue = Some(q.q_id());
            f.tag = Some(worst.tag);
            // The slow server and the queue's thread: where to look.
            f.pids = text::pids(cx, q.owner_tid());
            f.age_ms = cx.age_ms(worst.done_ns);
            f.summary = format!(
                "q{}: {} request(s) slower than {} (max {})",
                q.q_id(),
                slow.len(),
                dur(lim),
                dur(worst.latency_ns)
            );
            f.evidence.push(format!(
                "slowest: tag {} took {} ({how}), {} ago",
                worst.tag,
                dur(worst.latency_ns),
                dur(cx.now_ns.saturating_sub(worst.done_ns))
            ));
            if let (Some(p50), Some(p99)) = (h.quantile_ns(0.5), h.quantile_ns(0.99)) {
                f.evidence.push(format!(
                    "queue distribution over {} requests: p50 {}, p99 {}",
                    h.count(),
                    dur(p50),
                    dur(p99)
                ));
            }
            f.hint = "Informational: look at the server's backend for these requests.".into();
            out.push(f);
        }
        verdict(out)
    }
}
