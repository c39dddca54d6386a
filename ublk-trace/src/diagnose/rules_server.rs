//! Rules about the server process, control commands and the tasks waiting on the disk.
use super::text::{self, dur};
use super::{Class, Ctx, Finding, Rule, Severity, Thresholds, Verdict};
use crate::model::{CtrlCmd, Model, TagState};
use crate::snapshot::kmsg::KmsgKind;
use crate::snapshot::{DevState, WaitKind};

const MS: u64 = 1_000_000;

use super::rules_tags::finding;

/// Kernel-log lines about this device's I/O errors (count and the last one).
fn kmsg_errors(cx: &Ctx<'_>) -> Option<String> {
    let lines = &cx.dev.snapshot()?.kmsg;
    let errs: Vec<_> = lines
        .iter()
        .filter(|l| matches!(l.kind, KmsgKind::IoError { .. }))
        .collect();
    let last = errs.last()?;
    Some(format!(
        "kernel log: {} I/O error line(s), last: {}",
        errs.len(),
        last.text
    ))
}

/// The server is gone: `/proc` shows no process holding `/dev/ublkcN`. Returns since when.
fn server_gone_since(cx: &Ctx<'_>) -> Option<u64> {
    let snap = cx.dev.snapshot()?;
    if !snap.proc_scanned || !snap.char_dev_present {
        return None;
    }
    cx.dev.dev.persist.server_absent_since
}

/// The server that is gone: the pids last seen holding `/dev/ublkcN`, else the pid in the
/// tag-state file it left behind (a tracer that attached after the exit).
fn gone_pids(cx: &Ctx<'_>) -> Vec<u32> {
    let seen = &cx.dev.dev.persist.last_server_pids;
    if !seen.is_empty() {
        return seen.clone();
    }
    cx.dev
        .snapshot()
        .and_then(|s| s.tagfile.as_ref())
        .map(|tf| tf.pid)
        .filter(|pid| *pid != 0)
        .into_iter()
        .collect()
}

fn gone_evidence(cx: &Ctx<'_>, since: u64) -> Vec<String> {
    let mut ev = vec![format!(
        "no process holds /dev/ublkc{} (all of /proc checked), for at least {}",
        cx.dev_id(),
        dur(cx.now_ns.saturating_sub(since))
    )];
    let pids = gone_pids(cx);
    if !pids.is_empty() {
        let from = if cx.dev.dev.persist.last_server_pids.is_empty() {
            "named by the tag-state file it left behind"
        } else {
            "last seen holding it"
        };
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        ev.push(format!("the server was pid {} ({from})", list.join(", ")));
    }
    if let Some(i) = cx.dev.info() {
        ev.push(format!(
            "GET_DEV_INFO: state {}, ublksrv_pid {}, flags {:#x}",
            i.dev_state().name(),
            i.ublksrv_pid,
            i.flags
        ));
    }
    let block = cx.dev.snapshot().is_some_and(|s| s.block_dev_present);
    ev.push(if block {
        format!("the disk ublkb{} is still present", cx.dev_id())
    } else {
        format!("the disk ublkb{} is gone", cx.dev_id())
    });
    if cx.dev.dev.cancels > 0 {
        ev.push(format!(
            "ring teardown cancelled {} command(s), last {} ago",
            cx.dev.dev.cancels,
            dur(cx.now_ns.saturating_sub(cx.dev.dev.last_cancel_ns))
        ));
    }
    ev.extend(kmsg_errors(cx));
    ev
}

/// The server exited and the device is DEAD (needs DEL_DEV).
pub struct ServerDead;

impl Rule for ServerDead {
    fn class(&self) -> Class {
        Class::ServerDead
    }
    fn summary(&self) -> &'static str {
        "the server is gone and the device is dead"
    }
    fn check(&self, cx: &Ctx<'_>) -> Verdict {
        let Some(since) = server_gone_since(cx) else {
            return Verdict::Ok;
        };
        let dead = match cx.dev.info().map(|i| i.dev_state()) {
            Some(DevState::Dead) => true,
            Some(_) => false,
            // Without GET_DEV_INFO: a dead server without recovery removes the disk.
            None if !cx.dev.snapshot().is_some_and(|s| s.block_dev_present) => true,
            None => {
                return Verdict::Recheck(format!(
                    "no process holds /dev/ublkc{} but ublkb{} is present and GET_DEV_INFO is \
                     unavailable: cannot tell a dead device from one waiting for recovery",
                    cx.dev_id(),
                    cx.dev_id()
                ));
            }
        };
        if !dead {
            return Verdict::Ok;
        }
        let mut f = finding(cx, Class::ServerDead, Severity::Error);
        f.age_ms = cx.age_ms(since);
        f.pids = gone_pids(cx);
        f.summary = format!(
            "ublk{}: the server is gone, the device is dead",
            cx.dev_id()
        );
        f.evidence = gone_evidence(cx, since);
        f.hint = format!(
            "In-flight I/O failed with EIO. Delete the device (DEL_DEV, e.g. `ublk-server del {}`), \
             or run servers with user recovery so a restart can take over.",
            cx.dev_id()
        );
        Verdict::Findings(vec![f])
    }
}

/// The server is gone and the device waits for a new one (QUIESCED or FAIL_IO).
pub struct RecoveryPending;

impl Rule for RecoveryPending {
    fn class(&self) -> Class {
        Class::RecoveryPending
    }
    fn summary(&self) -> &'static str {
        "the server is gone and the device waits for a recovering server"
    }
    fn check(&self, cx: &Ctx<'_>) -> Verdict {
        let Some(since) = server_gone_since(cx) else {
            return Verdict::Ok;
        };
        let Some(info) = cx.dev.info() else {
            return Verdict::Ok;
        };
        let state = info.dev_state();
        if !matches!(state, DevState::Quiesced | DevState::FailIo) {
            return Verdict::Ok;
        }
        let mut f = finding(cx, Class::RecoveryPending, Severity::Warning);
        f.age_ms = cx.age_ms(since);
        f.pids = gone_pids(cx);
        f.summary = format!(
            "ublk{}: server gone, device {} waiting for recovery",
            cx.dev_id(),
            state.name()
        );
        f.evidence = gone_evidence(cx, since);
        f.evidence.push(if state == DevState::Quiesced {
            "QUIESCED: new I/O waits until a server recovers the device".to_string()
        } else {
            "FAIL_IO: I/O fails with EIO until a server recovers the device".to_string()
        });
        f.hint = "Start a server that sends START_USER_RECOVERY, FETCHes every tag, then \
                  END_USER_RECOVERY (retry while the old char device is still being released)."
            .into();
        Verdict::Findings(vec![f])
    }
}

/// Server threads stopped (T), ptraced (t) or cgroup-frozen.
pub struct ServerStopped;

impl Rule for ServerStopped {
    fn class(&self) -> Class {
        Class::ServerStopped
    }
    fn summary(&self) -> &'static str {
        "server threads are stopped, traced or frozen"
    }
    fn check(&self, cx: &Ctx<'_>) -> Verdict {
        let p = &cx.dev.dev.persist;
        let lim = cx.th.stopped_ms * MS;
        let stopped: Vec<_> = text::server_threads(cx)
            .filter_map(|t| Some((t, *p.stopped_since.get(&t.tid)?)))
            .filter(|(_, s)| cx.now_ns.saturating_sub(*s) >= lim)
            .collect();
        let Some(since) = stopped.iter().map(|(_, s)| *s).min() else {
            return Verdict::Ok;
        };
        let total = text::server_threads(cx).count();
        let mut f = finding(cx, Class::ServerStopped, Severity::Error);
        f.age_ms = cx.age_ms(since);
        f.pids = text::pids(cx, stopped.iter().map(|(t, _)| t.tid));
        f.summary = format!(
            "{} of {total} server thread(s) stopped for at least {}",
            stopped.len(),
            dur(f.age_ms * MS)
        );
        for (t, _) in &stopped {
            f.evidence.push(text::thread(t));
        }
        f.evidence.extend(in_flight_line(cx));
        f.hint = "Resume the server (SIGCONT, detach the debugger, thaw the cgroup). Do not DEL \
                  the device while it is stopped: DEL waits in del_gendisk holding the global \
                  ublk control mutex."
            .into();
        Verdict::Findings(vec![f])
    }
}

/// `2 request(s) in flight (inflight: 2 reads, 0 writes; blk-mq busy tags: 1, 4)`.
fn in_flight_line(cx: &Ctx<'_>) -> Option<String> {
    let snap = cx.dev.snapshot()?;
    let busy: Vec<String> = snap
        .blk
        .iter()
        .flat_map(|b| b.hctxs.iter())
        .flat_map(|h| {
            h.busy
                .iter()
                .filter(|r| r.in_flight())
                .map(move |r| format!("q{} tag {}", h.index, r.tag))
        })
        .collect();
    let inflight = snap.inflight?;
    Some(format!(
        "in flight: {} read(s), {} write(s){}",
        inflight.reads,
        inflight.writes,
        if busy.is_empty() {
            String::new()
        } else {
            format!(" (blk-mq busy: {})", busy.join(", "))
        }
    ))
}

fn pending_for<'a>(cx: &Ctx<'a>, teardown: bool) -> Vec<&'a CtrlCmd> {
    let lim = cx.th.ctrl_ms * MS;
    cx.model
        .ctrl()
        .pending()
        .filter(|c| c.dev_id == Some(cx.dev_id()) && c.is_teardown() == teardown)
        .filter(|c| c.age_ns(cx.now_ns) >= lim)
        .collect()
}

fn cmd_line(c: &CtrlCmd, now_ns: u64) -> String {
    let retry = if c.eagain > 0 {
        format!(
            " ({} inline -EAGAIN attempt(s), {} on tid {})",
            c.eagain,
            if c.awaiting_retry {
                "io-wq retry not started yet"
            } else {
                "retried"
            },
            c.tid
        )
    } else {
        String::new()
    };
    format!(
        "{} from pid {} ({}) entered {} ago and has not returned{retry}",
        c.op,
        c.pid,
        c.comm,
        dur(c.age_ns(now_ns))
    )
}

/// Frames of server threads in a `ublk_ctrl_*` function: (tid, frame, since).
fn frames<'a>(cx: &Ctx<'a>, teardown: bool) -> Vec<(u32, &'a str, u64)> {
    let lim = cx.th.ctrl_ms * MS;
    cx.dev
        .dev
        .persist
        .ctrl_frames_since
        .iter()
        .filter(|(_, (f, _))| is_teardown_frame(f) == teardown)
        .filter(|(_, (_, s))| cx.now_ns.saturating_sub(*s) >= lim)
        .map(|(tid, (f, s))| (*tid, f.as_str(), *s))
        .collect()
}

fn is_teardown_frame(f: &str) -> bool {
    f.contains("del_dev") || f.contains("stop_dev")
}

/// A control command entered the driver and never returned.
pub struct CtrlPending;

impl Rule for CtrlPending {
    fn class(&self) -> Class {
        Class::CtrlPending
    }
    fn summary(&self) -> &'static str {
        "control commands that entered the driver and never returned"
    }
    fn check(&self, cx: &Ctx<'_>) -> Verdict {
        let cmds = pending_for(cx, false);
        let fr = frames(cx, false);
        let since = cmds
            .iter()
            .map(|c| c.start_ns)
            .chain(fr.iter().map(|f| f.2))
            .min();
        let Some(since) = since else {
            return Verdict::Ok;
        };
        let mut f = finding(cx, Class::CtrlPending, Severity::Error);
        f.age_ms = cx.age_ms(since);
        f.pids = text::pids(cx, cmds.iter().map(|c| c.pid).chain(fr.iter().map(|f| f.0)));
        f.evidence = cmds.iter().map(|c| cmd_line(c, cx.now_ns)).collect();
        for (tid, frame, s) in &fr {
            f.evidence.push(format!(
                "tid {tid} has {frame} in its kernel stack for at least {}",
                dur(cx.now_ns.saturating_sub(*s))
            ));
        }
        let start = cmds.iter().any(|c| c.op == "START_DEV")
            || fr.iter().any(|f| f.1.starts_with("ublk_ctrl_start_dev"));
        let mut ops: Vec<&str> = cmds.iter().map(|c| c.op.as_str()).collect();
        // Attached after the command entered the driver: its frame names it.
        if ops.is_empty() {
            ops.extend(fr.iter().filter_map(|f| frame_op(f.1)));
            ops.sort_unstable();
            ops.dedup();
        }
        f.summary = format!(
            "{} pending for {}",
            if ops.is_empty() {
                "a control command".to_string()
            } else {
                ops.join(", ")
            },
            dur(f.age_ms * MS)
        );
        let unfetched = start
            && matches!(super::rules_tags::NoFetch.check(cx), Verdict::Findings(ref v) if !v.is_empty());
        if unfetched {
            // The NO_FETCH finding explains it: the partition-scan advice would mislead.
            f.evidence.push(
                "START_DEV completes only when every tag has a FETCH_REQ, and some never had \
                 one (NO_FETCH)"
                    .into(),
            );
            f.hint = "Submit a FETCH_REQ for every tag of every queue; START_DEV waits for them \
                      (see NO_FETCH for the tags)."
                .into();
        } else if start {
            f.evidence.extend(start_scan_line(cx));
            f.hint = "Up to 6.17 START_DEV waits for the partition-scan reads: serve I/O while \
                      START_DEV is in flight (do not wait for its completion first)."
                .into();
        } else {
            f.hint = "The command waits inside the driver; the stacks of the server's iou-wrk \
                      threads show where."
                .into();
        }
        Verdict::Findings(vec![f])
    }
}

/// The control command a `ublk_ctrl_*` kernel frame is executing (`ublk_ctrl_start_dev.isra.0`
/// -> START_DEV), when the frame says.
pub(super) fn frame_op(frame: &str) -> Option<&'static str> {
    let f = frame.strip_prefix("ublk_ctrl_")?;
    let f = f.split(['.', '+']).next().unwrap_or(f);
    Some(match f {
        "add_dev" => "ADD_DEV",
        "del_dev" => "DEL_DEV",
        "start_dev" => "START_DEV",
        "stop_dev" => "STOP_DEV",
        "set_params" => "SET_PARAMS",
        "get_params" => "GET_PARAMS",
        "start_recovery" => "START_USER_RECOVERY",
        "end_recovery" => "END_USER_RECOVERY",
        "quiesce_dev" => "QUIESCE_DEV",
        "update_size" => "UPDATE_SIZE",
        _ => return None,
    })
}

/// Reads waiting for the server while START_DEV is pending (the partition scan).
fn start_scan_line(cx: &Ctx<'_>) -> Option<String> {
    let busy: Vec<String> = cx
        .dev
        .queues()
        .iter()
        .flat_map(|q| q.tags())
        .filter(|t| {
            matches!(
                t.state,
                TagState::InServer | TagState::Queued | TagState::InFlight
            )
        })
        .map(|t| format!("q{} tag {} {}", t.q_id, t.tag, t.state.name()))
        .collect();
    (!busy.is_empty()).then(|| {
        format!(
            "{} request(s) (the partition scan?) wait for the server meanwhile: {}",
            busy.len(),
            busy.join(", ")
        )
    })
}

/// STOP_DEV / DEL_DEV (or a task deleting the disk) waiting on a stuck server.
pub struct TeardownBlocked;

impl Rule for TeardownBlocked {
    fn class(&self) -> Class {
        Class::TeardownBlocked
    }
    fn summary(&self) -> &'static str {
        "device teardown waiting on a stuck server"
    }
    fn check(&self, cx: &Ctx<'_>) -> Verdict {
        let cmds = pending_for(cx, true);
        let fr = frames(cx, true);
        let p = &cx.dev.dev.persist;
        let waiters: Vec<_> = cx
            .dev
            .snapshot()
            .map_or(&[][..], |s| s.waiters.as_slice())
            .iter()
            .filter(|w| w.wait == Some(WaitKind::Teardown))
            .filter_map(|w| Some((w, p.waiter_since.get(&w.tid)?.1)))
            .filter(|(_, s)| cx.now_ns.saturating_sub(*s) >= cx.th.ctrl_ms * MS)
            .collect();
        let since = cmds
            .iter()
            .map(|c| c.start_ns)
            .chain(fr.iter().map(|f| f.2))
            .chain(waiters.iter().map(|w| w.1))
            .min();
        let Some(since) = since else {
            return Verdict::Ok;
        };
        let mut f = finding(cx, Class::TeardownBlocked, Severity::Error);
        f.age_ms = cx.age_ms(since);
        f.pids = text::pids(
            cx,
            cmds.iter()
                .map(|c| c.pid)
                .chain(fr.iter().map(|f| f.0))
                .chain(waiters.iter().map(|w| w.0.pid)),
        );
        f.summary = format!(
            "teardown of ublk{} blocked for {}",
            cx.dev_id(),
            dur(f.age_ms * MS)
        );
        f.evidence = cmds.iter().map(|c| cmd_line(c, cx.now_ns)).collect();
        for (tid, frame, _) in &fr {
            f.evidence.push(format!("tid {tid} waits in {frame}"));
        }
        for (w, _) in &waiters {
            f.evidence
                .push(format!("pid {} ({}) waits in {}", w.pid, w.comm, w.wchan));
        }
        f.evidence.extend(in_flight_line(cx));
        f.hint = "Teardown waits for in-flight requests to finish: resume (SIGCONT) or kill the \
                  server first; a stuck DEL holds the global ublk control mutex and blocks every \
                  other device's control commands."
            .into();
        Verdict::Findings(vec![f])
    }
}

/// Tasks in D state blocked on the disk.
pub struct Waiters;

impl Rule for Waiters {
    fn class(&self) -> Class {
        Class::Waiters
    }
    fn summary(&self) -> &'static str {
        "tasks blocked in D state on the disk"
    }
    fn check(&self, cx: &Ctx<'_>) -> Verdict {
        let Some(snap) = cx.dev.snapshot() else {
            return Verdict::Ok;
        };
        let p = &cx.dev.dev.persist;
        let lim = cx.th.waiter_ms * MS;
        // While the device is visibly stuck, a task in D on it is a victim even if we have
        // not watched it long enough to time its sleep ourselves.
        let stuck = device_stuck(cx);
        let mut f = finding(cx, Class::Waiters, Severity::Warning);
        let mut oldest = 0u64;
        for w in &snap.waiters {
            let since = p.waiter_since.get(&w.tid).map_or(snap.taken_ns, |x| x.1);
            let mut age = cx.now_ns.saturating_sub(since);
            let hung = hung_task_secs(cx, w.pid);
            if let Some(s) = hung {
                age = age.max(s * 1_000_000_000);
            }
            if age < lim && !stuck {
                continue;
            }
            oldest = oldest.max(age);
            f.pids.push(w.pid);
            f.evidence.push(format!(
                "pid {} tid {} ({}) in D for at least {}, wchan {}: {}{}",
                w.pid,
                w.tid,
                w.comm,
                dur(age),
                if w.wchan.is_empty() { "?" } else { &w.wchan },
                w.wait.map_or("", WaitKind::explain),
                if hung.is_some() {
                    " (hung_task reported it)"
                } else {
                    ""
                }
            ));
        }
        if f.evidence.is_empty() {
            return Verdict::Ok;
        }
        f.pids.sort_unstable();
        f.pids.dedup();
        f.age_ms = oldest / MS;
        f.summary = format!(
            "{} task(s) blocked on ublkb{} for up to {}",
            f.evidence.len(),
            cx.dev_id(),
            dur(oldest)
        );
        f.hint = "These tasks wait for the device; they are the victims, the other findings \
                  say why."
            .into();
        Verdict::Findings(vec![f])
    }
}

/// A request busy longer than `stuck_ms`, or a stopped server: the device is not progressing.
fn device_stuck(cx: &Ctx<'_>) -> bool {
    let lim = cx.th.stuck_ms * MS;
    !cx.dev.dev.persist.stopped_since.is_empty()
        || cx
            .dev
            .queues()
            .iter()
            .any(|q| q.tags().iter().any(|t| t.state.busy() && t.age_ns >= lim))
}

/// `INFO: task dd:202 blocked for more than 120 seconds.` -> 120 for pid 202.
fn hung_task_secs(cx: &Ctx<'_>, pid: u32) -> Option<u64> {
    cx.dev
        .snapshot()?
        .kmsg
        .iter()
        .rev()
        .find_map(|l| match &l.kind {
            KmsgKind::HungTask { pid: p, .. } if *p == pid => l
                .text
                .split("blocked for more than ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok(),
            _ => None,
        })
}

/// ADD_DEV that picked no id yet and never returned: not tied to a device.
pub fn unresolved_add_dev(model: &Model, now_ns: u64, th: &Thresholds) -> Vec<Finding> {
    model
        .ctrl()
        .pending()
        .filter(|c| c.dev_id.is_none() && c.op == "ADD_DEV")
        .filter(|c| c.age_ns(now_ns) >= th.ctrl_ms * MS)
        .map(|c| Finding {
            class: Class::CtrlPending,
            severity: Severity::Error,
            dev: crate::model::ctrl::ANY_DEV,
            queue: None,
            tag: None,
            pids: vec![c.pid],
            age_ms: c.age_ns(now_ns) / MS,
            summary: format!("ADD_DEV pending for {}", dur(c.age_ns(now_ns))),
            evidence: vec![cmd_line(c, now_ns)],
            hint: "ADD_DEV has hung inside the kernel before (6.17 oops in ublk_init_queues): \
                   check the kernel log."
                .into(),
            tags: Vec::new(),
        })
        .collect()
}
