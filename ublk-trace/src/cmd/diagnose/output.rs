//! What `diagnose` prints: one block per finding for humans, or one versioned JSON document.
//! The JSON finding shape is shared with `watch --headless --json`.

use serde::Serialize;

use crate::tui::view_model::{FindingView, Severity, fmt_age};

/// Version of the `diagnose --json` and `watch --headless --json` documents. Bump on an
/// incompatible change (removing or renaming a field; adding one is compatible).
pub const JSON_VERSION: u32 = 1;

/// One finding in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct FindingJson {
    /// STUCK_IN_SERVER, SERVER_STOPPED, WAITERS, ...
    pub class: String,
    /// `info`, `warning` or `error`.
    pub severity: &'static str,
    pub dev: u32,
    /// Hardware queue (`q_id`), when the finding is about one.
    pub queue: Option<u16>,
    pub tag: Option<u16>,
    /// Server threads and blocked tasks involved.
    pub pids: Vec<u32>,
    /// How long the condition has lasted, when known.
    pub age_ms: Option<u64>,
    pub summary: String,
    /// Human-readable lines: what was read where.
    pub evidence: Vec<String>,
    /// What to do about it (may be empty).
    pub hint: String,
    /// Every (queue, tag) the finding concerns: state, age, request, owner thread.
    pub tags: Vec<crate::diagnose::FindingTag>,
}

pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}

impl From<&FindingView> for FindingJson {
    fn from(f: &FindingView) -> Self {
        Self {
            class: f.class.clone(),
            severity: severity_name(f.severity),
            dev: f.dev_id,
            queue: f.q_id,
            tag: f.tag,
            pids: f.pids.clone(),
            age_ms: f.age_ns.map(|n| n / 1_000_000),
            summary: f.summary.clone(),
            evidence: f.evidence.clone(),
            hint: f.hint.clone(),
            tags: f.tags.clone(),
        }
    }
}

/// The whole `diagnose --json` document.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct DiagnoseJson {
    /// Always `ublk-trace.diagnose`.
    pub kind: &'static str,
    pub version: u32,
    /// Devices observed.
    pub devices: Vec<u32>,
    /// How long they were observed.
    pub observed_ms: u64,
    /// `ebpf+snapshots` or `snapshots`.
    pub source: String,
    /// Why probes were not used, when `source` is `snapshots`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_note: Option<String>,
    /// Milliseconds from the start until the probes were live (absent: they never were).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes_live_ms: Option<u64>,
    /// Whether the driver's own state (per-tag truth read from kernel memory) was read.
    pub driver: crate::cmd::watch::headless::DriverJson,
    /// What ran on every I/O (absent: no probes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_io: Option<crate::cmd::watch::headless::PerIoJson>,
    /// Events the probes lost: findings may miss what happened in the gap.
    pub dropped_events: u64,
    pub findings: Vec<FindingJson>,
    /// Rules that lacked data to decide ("dev D CLASS: what is missing"): never a false class.
    pub undecided: Vec<String>,
}

/// `q1 t5 IN_SERVER 31.2s READ 4096 B @ sector 47249109, owner tid 173`.
pub fn tag_line(t: &crate::diagnose::FindingTag) -> String {
    let mut s = format!("q{} t{} {}", t.q_id, t.tag, t.state);
    if let Some(a) = t.age_ms {
        s.push_str(&format!(" {}", fmt_age(a.saturating_mul(1_000_000))));
    }
    if let (Some(op), Some(b), Some(sec)) = (&t.op, t.bytes, t.sector) {
        s.push_str(&format!(" {op} {b} B @ sector {sec}"));
    }
    if let Some(tid) = t.owner_tid {
        s.push_str(&format!(", owner tid {tid}"));
    }
    s
}

/// One human block: `CLASS  dev D qQ tT  pids P  for AGE`, the sentence, the evidence lines.
pub fn human_block(f: &FindingView) -> String {
    let mut head = format!("{}  dev {}", f.class, f.dev_id);
    if let Some(q) = f.q_id {
        head.push_str(&format!(" queue {q}"));
    }
    if let Some(t) = f.tag {
        head.push_str(&format!(" tag {t}"));
    }
    if !f.pids.is_empty() {
        let pids: Vec<String> = f.pids.iter().map(u32::to_string).collect();
        head.push_str(&format!("  pids {}", pids.join(",")));
    }
    if let Some(a) = f.age_ns {
        head.push_str(&format!("  for {}", fmt_age(a)));
    }
    let mut out = format!("{head}\n  {}\n", f.summary);
    for e in &f.evidence {
        out.push_str(&format!("    - {e}\n"));
    }
    for t in &f.tags {
        out.push_str(&format!("    tag {}\n", tag_line(t)));
    }
    if !f.hint.is_empty() {
        out.push_str(&format!("  fix: {}\n", f.hint));
    }
    out
}

/// The human report: findings, or a line saying nothing was found and what was observed.
pub fn human_report(
    findings: &[FindingView],
    devices: &[u32],
    observed_ms: u64,
    note: &str,
) -> String {
    let devs: Vec<String> = devices.iter().map(|d| format!("ublkb{d}")).collect();
    let what = if devs.is_empty() {
        "no ublk devices".to_string()
    } else {
        devs.join(", ")
    };
    let mut out = format!("observed {what} for {observed_ms} ms ({note})\n");
    if findings.is_empty() {
        out.push_str("no findings: nothing looks stuck\n");
        return out;
    }
    out.push_str(&format!("{} finding(s):\n\n", findings.len()));
    for f in findings {
        out.push_str(&human_block(f));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuck() -> FindingView {
        FindingView {
            class: "STUCK_IN_SERVER".into(),
            severity: Severity::Error,
            dev_id: 0,
            q_id: Some(1),
            tag: Some(5),
            pids: vec![4242, 4243],
            age_ns: Some(3_250_000_000),
            summary: "no commit for 3.2s".into(),
            evidence: vec!["tag-state file: in_server".into()],
            hint: String::new(),
            tags: Vec::new(),
        }
    }

    #[test]
    fn json_finding_has_the_documented_fields() {
        let v = serde_json::to_value(FindingJson::from(&stuck())).unwrap_or_default();
        assert_eq!(v["class"], "STUCK_IN_SERVER");
        assert_eq!(v["dev"], 0);
        assert_eq!(v["queue"], 1);
        assert_eq!(v["tag"], 5);
        assert_eq!(v["pids"], serde_json::json!([4242, 4243]));
        assert_eq!(v["age_ms"], 3250);
        assert_eq!(v["evidence"][0], "tag-state file: in_server");
        assert_eq!(v["severity"], "error");
    }

    #[test]
    fn device_wide_finding_has_null_queue_and_tag() {
        let mut f = stuck();
        f.q_id = None;
        f.tag = None;
        let v = serde_json::to_value(FindingJson::from(&f)).unwrap_or_default();
        assert!(v["queue"].is_null() && v["tag"].is_null(), "{v}");
    }

    #[test]
    fn human_block_names_class_queue_tag_pids_and_evidence() {
        let s = human_block(&stuck());
        assert!(
            s.starts_with("STUCK_IN_SERVER  dev 0 queue 1 tag 5  pids 4242,4243  for 3.2s\n"),
            "{s}"
        );
        assert!(s.contains("    - tag-state file: in_server\n"), "{s}");
    }

    #[test]
    fn empty_report_says_what_was_observed() {
        let s = human_report(&[], &[0, 2], 2000, "snapshots only");
        assert!(
            s.contains("observed ublkb0, ublkb2 for 2000 ms (snapshots only)"),
            "{s}"
        );
        assert!(s.contains("no findings"), "{s}");
    }
}
