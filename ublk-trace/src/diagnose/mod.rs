//! PURE rules over the model at time `now_ns` -> findings (class, device/queue/tag, pids, age,
//! evidence sentences with measured values). No I/O, no clock.
//!
//! API: [`run`]`(&model, now_ns, &Thresholds) -> Vec<Finding>`; [`diagnose`] also returns the
//! rule checks that lacked data ([`Recheck`]) inside a versioned [`Diagnosis`] (the JSON of
//! `diagnose --json` / `watch --headless --json`: `{"schema":"ublk-trace.findings","version":1,..}`).
//! Exit code policy for callers: [`Finding::is_problem`] (SLOW is informational).
//!
//! Each rule is a [`Rule`] in the tokio-console `Warn` style: it checks one device and says
//! Ok, Findings, or Recheck ("not enough data": never a false class). Healthy traffic and idle
//! devices (WAITING tags for hours) produce nothing.
use serde::{Deserialize, Serialize};

use crate::model::{DeviceView, Model};

mod rules_commits;
mod rules_server;
mod rules_tags;
mod text;

/// Schema of the JSON form of [`Diagnosis`]. Bump on incompatible change.
pub const FINDINGS_SCHEMA: &str = "ublk-trace.findings";
pub const FINDINGS_VERSION: u32 = 1;

/// Finding classes (DESIGN.md "Findings").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Class {
    StuckInServer,
    NotDelivered,
    HeldInBlockLayer,
    NoFetch,
    CtrlPending,
    ServerStopped,
    ServerDead,
    RecoveryPending,
    BadCommit,
    CmdRejected,
    TeardownBlocked,
    Slow,
    Waiters,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Self::StuckInServer => "STUCK_IN_SERVER",
            Self::NotDelivered => "NOT_DELIVERED",
            Self::HeldInBlockLayer => "HELD_IN_BLOCK_LAYER",
            Self::NoFetch => "NO_FETCH",
            Self::CtrlPending => "CTRL_PENDING",
            Self::ServerStopped => "SERVER_STOPPED",
            Self::ServerDead => "SERVER_DEAD",
            Self::RecoveryPending => "RECOVERY_PENDING",
            Self::BadCommit => "BAD_COMMIT",
            Self::CmdRejected => "CMD_REJECTED",
            Self::TeardownBlocked => "TEARDOWN_BLOCKED",
            Self::Slow => "SLOW",
            Self::Waiters => "WAITERS",
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// One diagnosis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct Finding {
    pub class: Class,
    pub severity: Severity,
    pub dev: u32,
    pub queue: Option<u16>,
    pub tag: Option<u16>,
    /// Server threads and blocked tasks involved.
    pub pids: Vec<u32>,
    /// How long the condition has lasted (lower bound when only snapshots saw it).
    pub age_ms: u64,
    /// One line: what is wrong.
    pub summary: String,
    /// Measured facts, one sentence each.
    pub evidence: Vec<String>,
    /// What a server author or operator should do.
    pub hint: String,
    /// Every (queue, tag) the finding concerns, as data (filled after the rules ran).
    #[serde(default)]
    pub tags: Vec<FindingTag>,
}

/// One tag a finding concerns: where it is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct FindingTag {
    pub q_id: u16,
    pub tag: u16,
    /// WAITING, QUEUED, IN_SERVER, ... (the model's state name).
    pub state: String,
    /// Time in that state (None when unknown).
    pub age_ms: Option<u64>,
    /// The request's op, sector and bytes (None: no request known).
    pub op: Option<String>,
    pub sector: Option<u64>,
    pub bytes: Option<u32>,
    pub owner_tid: Option<u32>,
}

impl FindingTag {
    fn of(t: &crate::model::view::TagView<'_>) -> Self {
        let has_rq = !t.op.is_empty();
        Self {
            q_id: t.q_id,
            tag: t.tag,
            state: t.state.name().to_string(),
            age_ms: (t.since_ns > 0).then_some(t.age_ns / 1_000_000),
            op: has_rq.then(|| t.op.to_string()),
            sector: has_rq.then_some(t.sector),
            bytes: has_rq.then_some(t.bytes),
            owner_tid: t.owner_tid,
        }
    }
}

/// The tags a finding concerns: its own tag; for a queue's or a device's finding, the tags
/// holding a request (NO_FETCH: the tags without a FETCH).
fn concerned_tags(f: &Finding, dev: &crate::model::view::DeviceView<'_>) -> Vec<FindingTag> {
    const MAX: usize = 256;
    // A tag's own finding: derive that one tag, not every tag of the device (up to 32 such
    // findings per rule, each judged on every tick of watch).
    if let (Some(q), Some(tag)) = (f.queue, f.tag) {
        return dev
            .queue(q)
            .map(|qv| vec![FindingTag::of(&qv.tag(tag))])
            .unwrap_or_default();
    }
    let mut out = Vec::new();
    for q in dev.queues() {
        if f.queue.is_some_and(|fq| fq != q.q_id) {
            continue;
        }
        for t in q.tags() {
            let wanted = match f.tag {
                Some(tag) => t.tag == tag,
                None if f.class == Class::NoFetch => matches!(
                    t.state,
                    crate::model::tag::TagState::NotFetched | crate::model::tag::TagState::Unknown
                ),
                None => t.state.busy(),
            };
            if wanted && out.len() < MAX {
                out.push(FindingTag::of(&t));
            }
        }
    }
    out
}

impl Finding {
    /// Everything but informational classes (SLOW) counts for `diagnose`'s exit code.
    pub fn is_problem(&self) -> bool {
        self.severity != Severity::Info
    }
}

/// A rule that could not decide for lack of data, and what it would need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct Recheck {
    pub class: Class,
    pub dev: u32,
    pub reason: String,
}

/// Versioned output of a diagnosis run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct Diagnosis {
    pub schema: String,
    pub version: u32,
    pub now_ns: u64,
    pub lost_events: u64,
    pub findings: Vec<Finding>,
    pub rechecks: Vec<Recheck>,
}

/// Limits; defaults suit a guest under TCG as well as real hardware. All settable by flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    /// A request in the server, or queued and not delivered, for this long is stuck.
    pub stuck_ms: u64,
    /// Requests held in the block layer (debugfs) for this long.
    pub held_ms: u64,
    /// A control command pending this long (the partition scan of START_DEV takes ~100 ms
    /// in a TCG guest).
    pub ctrl_ms: u64,
    /// A task blocked in D on the disk for this long.
    pub waiter_ms: u64,
    /// Server threads stopped for this long (0: as soon as seen).
    pub stopped_ms: u64,
    /// Completions slower than this are SLOW (informational; healthy requests take well
    /// under 10 ms even in a TCG guest).
    pub slow_ms: u64,
    /// BAD_COMMIT / CMD_REJECTED / SLOW look back this far.
    pub recent_ms: u64,
    /// This many requeues of one tag within `storm_window_ms` is a requeue storm.
    pub storm_requeues: usize,
    pub storm_window_ms: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            stuck_ms: 1000,
            held_ms: 1000,
            ctrl_ms: 2000,
            waiter_ms: 1000,
            stopped_ms: 0,
            slow_ms: 200,
            recent_ms: 60_000,
            storm_requeues: 16,
            storm_window_ms: 1000,
        }
    }
}

/// What a rule sees: one device at one time.
pub struct Ctx<'a> {
    pub model: &'a Model,
    pub dev: DeviceView<'a>,
    pub now_ns: u64,
    pub th: &'a Thresholds,
}

impl Ctx<'_> {
    pub fn dev_id(&self) -> u32 {
        self.dev.dev_id()
    }
    pub fn age_ms(&self, since_ns: u64) -> u64 {
        self.now_ns.saturating_sub(since_ns) / 1_000_000
    }
}

/// The outcome of one rule on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Findings(Vec<Finding>),
    /// Not enough data to decide; the reason says what is missing.
    Recheck(String),
}

/// A lint over one device (tokio-console `Warn` style).
pub trait Rule {
    fn class(&self) -> Class;
    /// What the class means, for help screens and the report.
    fn summary(&self) -> &'static str;
    fn check(&self, cx: &Ctx<'_>) -> Verdict;
    /// The rule judges past events (bad commits, rejections, slow requests), so it still
    /// means something for a device that is gone (a recording's deleted device).
    fn historical(&self) -> bool {
        false
    }
}

/// Every rule, in the order findings are listed (causes before symptoms).
pub fn rules() -> Vec<Box<dyn Rule>> {
    vec![
        Box::new(rules_server::ServerDead),
        Box::new(rules_server::RecoveryPending),
        Box::new(rules_server::ServerStopped),
        Box::new(rules_server::TeardownBlocked),
        Box::new(rules_server::CtrlPending),
        Box::new(rules_tags::NoFetch),
        Box::new(rules_commits::CmdRejected),
        Box::new(rules_tags::StuckInServer),
        Box::new(rules_tags::NotDelivered),
        Box::new(rules_tags::HeldInBlockLayer),
        Box::new(rules_commits::BadCommit),
        Box::new(rules_server::Waiters),
        Box::new(rules_commits::Slow),
    ]
}

/// Findings for every device of the model at `now_ns`.
pub fn run(model: &Model, now_ns: u64, th: &Thresholds) -> Vec<Finding> {
    diagnose(model, now_ns, th).findings
}

/// Findings and rechecks, versioned. Removed devices are skipped.
pub fn diagnose(model: &Model, now_ns: u64, th: &Thresholds) -> Diagnosis {
    diagnose_inner(model, now_ns, th, false)
}

/// Like [`diagnose`], and for removed devices the historical rules too (a recording that
/// ends with DEL_DEV still reports its bad commits and slow requests).
pub fn diagnose_recording(model: &Model, now_ns: u64, th: &Thresholds) -> Diagnosis {
    diagnose_inner(model, now_ns, th, true)
}

fn diagnose_inner(model: &Model, now_ns: u64, th: &Thresholds, history: bool) -> Diagnosis {
    let rules = rules();
    let mut findings = Vec::new();
    let mut rechecks = Vec::new();
    for dev in model.devices(now_ns) {
        let removed = dev.dev.removed;
        if removed && !history {
            continue;
        }
        let cx = Ctx {
            model,
            dev,
            now_ns,
            th,
        };
        if !removed {
            rechecks.extend(timed_out_sources(&cx));
        }
        for r in rules.iter().filter(|r| !removed || r.historical()) {
            match r.check(&cx) {
                Verdict::Ok => {}
                Verdict::Findings(f) => findings.extend(f.into_iter().map(|mut f| {
                    if f.tags.is_empty() {
                        f.tags = concerned_tags(&f, &dev);
                    }
                    f
                })),
                Verdict::Recheck(reason) => rechecks.push(Recheck {
                    class: r.class(),
                    dev: cx.dev_id(),
                    reason,
                }),
            }
        }
    }
    findings.extend(rules_server::unresolved_add_dev(model, now_ns, th));
    Diagnosis {
        schema: FINDINGS_SCHEMA.into(),
        version: FINDINGS_VERSION,
        now_ns,
        lost_events: model.lost_events(),
        findings,
        rechecks,
    }
}

/// A read that hit its deadline is evidence in itself, but of no single class: say which
/// rule it leaves blind.
fn timed_out_sources(cx: &Ctx<'_>) -> Vec<Recheck> {
    let Some(snap) = cx.dev.snapshot() else {
        return Vec::new();
    };
    snap.errors
        .iter()
        .filter(|e| e.timed_out)
        .map(|e| {
            let (class, why) = match e.source.as_str() {
                "GET_DEV_INFO" => (
                    Class::CtrlPending,
                    "the ublk control path did not answer: a control command may be stuck in \
                     the kernel",
                ),
                "blk-mq debugfs" => (
                    Class::HeldInBlockLayer,
                    "reading blk-mq debugfs blocked: what blk-mq holds is unknown",
                ),
                _ => (
                    Class::Waiters,
                    "scanning /proc blocked (a task stuck on the disk?): servers and waiters \
                     are unknown",
                ),
            };
            Recheck {
                class,
                dev: cx.dev_id(),
                reason: format!("{}: {} ({})", e.source, why, e.detail),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_driver;
#[cfg(test)]
mod tests_faults;
