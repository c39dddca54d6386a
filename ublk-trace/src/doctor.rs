//! Environment checks, each with the fix named. `ublk-trace doctor` prints them; `--json`
//! gives the same [`Report`] as JSON (the guest test reads it).
//!
//! Checks never fail hard: every probe of the system is read-only and bounded (the one
//! kernel query, GET_FEATURES, has a deadline), and a missing piece is a finding.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::kernel::facts::Facts;
use crate::kernel::kallsyms::Resolved;
use crate::kernel::offsets::Entry;
use crate::kernel::{ctrl, tracefs};

pub const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";
pub const LOCKDOWN_PATH: &str = "/sys/kernel/security/lockdown";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Works, with a limitation.
    Warn,
    /// Tracing ublk cannot work until this is fixed.
    Fail,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct Check {
    /// Stable key (`kprobes`, `ublk_drv`, ...).
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to run or change; empty when nothing is needed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

/// Value of [`Report::kind`].
pub const REPORT_KIND: &str = "ublk-trace.doctor";
/// Value of [`Report::version`]: bumped when a field changes meaning or goes away.
pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct Report {
    /// Always [`REPORT_KIND`].
    pub kind: &'static str,
    pub version: u32,
    pub kernel: String,
    pub checks: Vec<Check>,
    /// Each probe concept: the real function names on this kernel, and candidates not found.
    pub functions: Vec<Resolved>,
    /// BTF offsets handed to the eBPF programs.
    pub offsets: Vec<Entry>,
    /// GET_FEATURES decoded (`UBLK_F_*` names), when answered.
    pub features: Vec<String>,
}

impl Report {
    pub fn failures(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count()
    }
}

fn check(
    name: &'static str,
    status: Status,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// Run every check.
pub fn run() -> Report {
    let facts = Facts::gather();
    let mut checks = vec![
        check("kernel", Status::Ok, facts.release.clone(), ""),
        check_privileges(),
        check_lockdown(),
        check_ublk_loaded(&facts),
        check_control_node(),
    ];
    let (features_check, features) = check_features();
    checks.push(features_check);
    checks.push(check_kprobes());
    checks.extend(check_btf(&facts));
    checks.extend(check_mounts());
    checks.push(check_functions(&facts));
    let driver = check_driver_state();
    checks.extend(check_devices(driver.status == Status::Ok));
    checks.push(driver);
    let offsets = match &facts.offsets {
        Ok(r) => {
            let missing = r.missing_required();
            checks.push(if missing.is_empty() {
                check("offsets", Status::Ok, format!("{} of {} offsets known (BTF or UAPI header)", r.entries.iter().filter(|e| e.value.is_some()).count(), r.entries.len()), "")
            } else {
                check(
                    "offsets",
                    Status::Fail,
                    format!("not in BTF: {}", missing.join(", ")),
                    "this kernel's layout is not supported yet; report it with 'ublk-trace doctor --json'",
                )
            });
            r.entries.clone()
        }
        Err(e) => {
            checks.push(check(
                "offsets",
                Status::Fail,
                e.to_string(),
                "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
            ));
            Vec::new()
        }
    };
    Report {
        kind: REPORT_KIND,
        version: REPORT_VERSION,
        kernel: facts.release.clone(),
        checks,
        functions: facts.concepts.clone(),
        offsets,
        features,
    }
}

/// Effective capability bits from /proc/self/status.
fn cap_eff() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn check_privileges() -> Check {
    let Some(caps) = cap_eff() else {
        return check(
            "privileges",
            Status::Warn,
            "cannot read CapEff from /proc/self/status",
            "run as root",
        );
    };
    let has = |c: u32| caps & (1u64 << c) != 0;
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .iter()
    .filter(|(c, _)| !has(*c))
    .map(|(_, n)| *n)
    .collect();
    if missing.is_empty() {
        check(
            "privileges",
            Status::Ok,
            "CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (GET_DEV_INFO of privileged devices) held",
            "",
        )
    } else {
        check(
            "privileges",
            Status::Fail,
            format!("missing {}", missing.join(", ")),
            "run as root (sudo ublk-trace ...)",
        )
    }
}

fn check_lockdown() -> Check {
    match std::fs::read_to_string(LOCKDOWN_PATH) {
        // "none [integrity] confidentiality": the bracketed one is active.
        Ok(s) if s.contains("[confidentiality]") => check(
            "lockdown",
            Status::Fail,
            "kernel lockdown=confidentiality: eBPF may not read kernel memory",
            "boot with lockdown=none or integrity (e.g. disable Secure Boot lockdown)",
        ),
        Ok(s) if s.contains("[integrity]") => check(
            "lockdown",
            Status::Warn,
            "kernel lockdown=integrity (kprobes still work)",
            "",
        ),
        Ok(_) => check("lockdown", Status::Ok, "no kernel lockdown", ""),
        Err(_) => check(
            "lockdown",
            Status::Ok,
            format!("{LOCKDOWN_PATH} absent: no lockdown LSM"),
            "",
        ),
    }
}

fn check_ublk_loaded(f: &Facts) -> Check {
    if f.ublk_loaded || Path::new("/sys/module/ublk_drv").exists() {
        check("ublk_drv", Status::Ok, "ublk_drv is loaded", "")
    } else {
        check(
            "ublk_drv",
            Status::Fail,
            "ublk_drv is not loaded (or this kernel lacks CONFIG_BLK_DEV_UBLK)",
            "run 'modprobe ublk_drv'",
        )
    }
}

fn check_control_node() -> Check {
    if Path::new(ctrl::CONTROL_PATH).exists() {
        check(
            "ublk_control",
            Status::Ok,
            format!("{} present", ctrl::CONTROL_PATH),
            "",
        )
    } else {
        check(
            "ublk_control",
            Status::Fail,
            format!("{} missing", ctrl::CONTROL_PATH),
            "run 'modprobe ublk_drv' (and check that devtmpfs is mounted on /dev)",
        )
    }
}

fn check_features() -> (Check, Vec<String>) {
    if !Path::new(ctrl::CONTROL_PATH).exists() {
        return (
            check(
                "features",
                Status::Fail,
                "GET_FEATURES not sent: no ublk-control",
                "run 'modprobe ublk_drv'",
            ),
            Vec::new(),
        );
    }
    match ctrl::get_features(Duration::from_secs(2)) {
        Ok(bits) => {
            let names: Vec<String> = ublk_abi::feature_names(bits).map(str::to_string).collect();
            let unknown = ublk_abi::unknown_features(bits);
            let mut detail = format!("0x{bits:x}: {}", names.join(" "));
            if unknown != 0 {
                detail.push_str(&format!(" (+ unknown bits 0x{unknown:x})"));
            }
            if bits & ublk_abi::UBLK_F_BATCH_IO != 0 {
                // Kernel support alone is fine; a device that uses it is described below.
                detail.push_str(
                    "; a BATCH_IO device's tags are read from the driver's memory, its PREP/COMMIT/FETCH_IO_CMDS traced on ublk_ch_batch_io_uring_cmd",
                );
            }
            let status = Status::Ok;
            (check("features", status, detail, ""), names)
        }
        Err(e) if ctrl::is_no_get_features(&e) => (
            check(
                "features",
                Status::Warn,
                format!(
                    "this kernel answers no GET_FEATURES ({e}): ublk before Linux 6.5, \
                     legacy command numbers; a device's features are the flags GET_DEV_INFO \
                     reports"
                ),
                "",
            ),
            Vec::new(),
        ),
        Err(e) => (
            check("features", Status::Fail, e.to_string(), ""),
            Vec::new(),
        ),
    }
}

/// Device ids of the existing ublk char devices, from /dev names (never opened).
fn ublk_dev_ids() -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("ublkc")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// One line per existing device from GET_DEV_INFO (deadline-bounded: a hung control path
/// shows up as a failed check, not a hung doctor). `driver_readable`: the driver's memory can
/// be read, the only per-tag view of a BATCH_IO device.
fn check_devices(driver_readable: bool) -> Vec<Check> {
    ublk_dev_ids()
        .into_iter()
        .map(|id| match ctrl::get_dev_info(id, Duration::from_secs(2)) {
            Ok(d) => {
                let detail = format!(
                    "dev {id}: {} queues x {} depth, state {}, server pid {}, flags 0x{:x}",
                    d.nr_hw_queues,
                    d.queue_depth,
                    d.state_name(),
                    d.ublksrv_pid,
                    d.flags
                );
                if d.flags & ublk_abi::UBLK_F_BATCH_IO != 0 && driver_readable {
                    check(
                        "device",
                        Status::Ok,
                        format!("{detail}; uses BATCH_IO: its tags come from the driver's memory, its PREP/COMMIT/FETCH_IO_CMDS from the batch handler's probes"),
                        "",
                    )
                } else if d.flags & ublk_abi::UBLK_F_BATCH_IO != 0 {
                    check(
                        "device",
                        Status::Warn,
                        format!("{detail}; uses BATCH_IO: no per-tag view without the driver's memory (see driver_state)"),
                        "",
                    )
                } else {
                    check("device", Status::Ok, detail, "")
                }
            }
            Err(e) => check("device", Status::Warn, format!("dev {id}: {e}"), ""),
        })
        .collect()
}

fn check_kprobes() -> Check {
    if Path::new(KPROBE_PMU).exists() {
        check("kprobes", Status::Ok, format!("{KPROBE_PMU} present"), "")
    } else {
        check(
            "kprobes",
            Status::Fail,
            format!("no kprobes: {KPROBE_PMU} missing (kernel built without CONFIG_KPROBES)"),
            "use a kernel with CONFIG_KPROBES=y, e.g. 'cargo xtask guest run -- ublk-trace doctor'",
        )
    }
}

fn check_btf(f: &Facts) -> Vec<Check> {
    let vmlinux = match &f.offsets {
        Ok(_) => check(
            "btf_vmlinux",
            Status::Ok,
            "/sys/kernel/btf/vmlinux readable",
            "",
        ),
        Err(e) => check(
            "btf_vmlinux",
            Status::Fail,
            e.to_string(),
            "use a kernel with CONFIG_DEBUG_INFO_BTF=y",
        ),
    };
    let module = if f.module_btf {
        check(
            "btf_ublk_drv",
            Status::Ok,
            "/sys/kernel/btf/ublk_drv readable",
            "",
        )
    } else if f.ublk_loaded {
        check(
            "btf_ublk_drv",
            Status::Warn,
            "ublk_drv has no BTF: device ids in events are unknown, UAPI offsets from the header",
            "use a kernel with CONFIG_DEBUG_INFO_BTF_MODULES=y",
        )
    } else {
        check(
            "btf_ublk_drv",
            Status::Fail,
            "no module BTF: ublk_drv not loaded",
            "run 'modprobe ublk_drv'",
        )
    };
    vec![vmlinux, module]
}

/// Filesystem types mounted anywhere, from /proc/mounts.
fn mounted_types() -> Vec<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect()
}

fn check_mounts() -> Vec<Check> {
    let types = mounted_types();
    let tracefs = match tracefs::find_tracefs() {
        Some(p) => {
            let missing: Vec<&str> = tracefs::BLOCK_TRACEPOINTS
                .iter()
                .filter(|tp| tracefs::Format::load(&p, "block", tp).is_err())
                .copied()
                .collect();
            if missing.is_empty() {
                check(
                    "tracefs",
                    Status::Ok,
                    format!("{} mounted; block tracepoints present", p.display()),
                    "",
                )
            } else {
                check(
                    "tracefs",
                    Status::Warn,
                    format!("block tracepoints missing: {}", missing.join(", ")),
                    "",
                )
            }
        }
        None if types.iter().any(|t| t == "tracefs") => check(
            "tracefs",
            Status::Warn,
            "tracefs mounted in an unusual place",
            tracefs::MOUNT_HINT,
        ),
        None => check(
            "tracefs",
            Status::Warn,
            "tracefs not mounted (raw tracepoints still work; format files unavailable)",
            tracefs::MOUNT_HINT,
        ),
    };
    let debugfs = if types.iter().any(|t| t == "debugfs") {
        check(
            "debugfs",
            Status::Ok,
            "debugfs mounted (blk-mq state for attach-late snapshots)",
            "",
        )
    } else {
        check(
            "debugfs",
            Status::Warn,
            "debugfs not mounted: no blk-mq busy/tags snapshots",
            "mount -t debugfs nodev /sys/kernel/debug",
        )
    };
    vec![tracefs, debugfs]
}

fn check_functions(f: &Facts) -> Check {
    let missing: Vec<&str> = f
        .concepts
        .iter()
        .filter(|c| c.required && c.found.is_empty())
        .map(|c| c.key)
        .collect();
    let found = f.concepts.iter().filter(|c| !c.found.is_empty()).count();
    if missing.is_empty() {
        check(
            "functions",
            Status::Ok,
            format!("{found} of {} probe concepts resolved", f.concepts.len()),
            "",
        )
    } else if !f.ublk_loaded {
        check(
            "functions",
            Status::Fail,
            "no ublk functions in /proc/kallsyms",
            "run 'modprobe ublk_drv'",
        )
    } else {
        check(
            "functions",
            Status::Fail,
            format!("required functions not found: {}", missing.join(", ")),
            "this kernel renamed them; report 'ublk-trace doctor --json'",
        )
    }
}

/// Whether the driver's own state can be read here (`ublk-trace state`), and what this
/// kernel's layout lacks. The reader is an extra source (events remain the fallback), so a
/// reader that does not work is a warning.
fn check_driver_state() -> Check {
    let p = crate::driver::probe(Duration::from_secs(5));
    let missing = if p.not_readable.is_empty() {
        String::new()
    } else {
        format!(
            "; not readable on this kernel: {}",
            p.not_readable.join(", ")
        )
    };
    match p.result {
        Ok(s) => {
            let table = if s.flags_table.in_table {
                format!("UBLK_IO_FLAG_* of {}", s.flags_table.row)
            } else {
                format!(
                    "kernel outside the UBLK_IO_FLAG_* table (decoded as {})",
                    s.flags_table.row
                )
            };
            let status = if s.flags_table.in_table {
                Status::Ok
            } else {
                Status::Warn
            };
            check(
                "driver_state",
                status,
                format!(
                    "/proc/kcore readable: {} device(s) read in {} us, {table}{missing}",
                    s.devices.len(),
                    s.took_us
                ),
                "",
            )
        }
        Err(e) => check(
            "driver_state",
            Status::Warn,
            format!(
                "the driver's own state cannot be read (per-tag state from events only){missing}"
            ),
            e.to_string(),
        ),
    }
}

/// Human-readable report.
/// Human-readable report, without colour (files, pipes).
pub fn render_text(r: &Report) -> String {
    render_text_with(r, false)
}

/// The status tag, in green/yellow/red when `color`.
fn status_tag(status: Status, color: bool) -> String {
    let (text, sgr) = match status {
        Status::Ok => (" OK ", "32"),
        Status::Warn => ("WARN", "33"),
        Status::Fail => ("FAIL", "1;31"),
    };
    if color {
        format!("[\x1b[{sgr}m{text}\x1b[0m]")
    } else {
        format!("[{text}]")
    }
}

/// Human-readable report; `color` adds ANSI colour to the status tags (`--color`, NO_COLOR).
pub fn render_text_with(r: &Report, color: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for c in &r.checks {
        let tag = status_tag(c.status, color);
        let _ = writeln!(s, "{tag} {:<13} {}", c.name, c.detail);
        if !c.fix.is_empty() && c.status != Status::Ok {
            let _ = writeln!(s, "       {:<13} fix: {}", "", c.fix);
        }
    }
    let _ = writeln!(
        s,
        "\nprobes: watch and diagnose read the driver's state plus a per-tag kernel map (command \
         handlers, delivery task work, block tracepoints); \
         `record` streams every event; `record --probe ublk_queue_rq` adds the kprobes on \
         ublk_queue_rq(s) (opt-in: one trap per I/O)"
    );
    let _ = writeln!(s, "\nublk functions on this kernel:");
    for f in &r.functions {
        let found = if f.found.is_empty() {
            "-".to_string()
        } else {
            f.found
                .iter()
                .map(|x| {
                    format!(
                        "{} @0x{:x} [{}]",
                        x.name,
                        x.addr,
                        x.module.as_deref().unwrap_or("vmlinux")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let req = if f.required { "required" } else { "optional" };
        let _ = writeln!(s, "  {:<13} {req:<8} {found}", f.key);
        if !f.missing.is_empty() {
            let _ = writeln!(
                s,
                "  {:<13} {:<8} not found: {}",
                "",
                "",
                f.missing.join(", ")
            );
        }
    }
    let _ = writeln!(s, "\n{} failed check(s)", r.failures());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On this project's host (no ublk, no kprobes) doctor must say so with the fix, not panic.
    #[test]
    fn host_without_ublk_or_kprobes_names_the_fixes() {
        let r = run();
        let get = |n: &str| {
            r.checks
                .iter()
                .find(|c| c.name == n)
                .expect("check present")
        };
        if !Path::new(KPROBE_PMU).exists() {
            let k = get("kprobes");
            assert_eq!(k.status, Status::Fail);
            assert!(k.fix.contains("CONFIG_KPROBES"), "{k:?}");
        }
        if !Path::new("/sys/module/ublk_drv").exists() {
            let u = get("ublk_drv");
            assert_eq!(u.status, Status::Fail);
            assert!(u.fix.contains("modprobe ublk_drv"), "{u:?}");
            assert_eq!(get("functions").status, Status::Fail);
        }
        let text = render_text(&r);
        assert!(text.contains("ublk functions on this kernel"), "{text}");
        assert!(text.contains("ctrl_handler"), "{text}");
        let json = serde_json::to_string(&r).expect("report serializes");
        assert!(json.contains("\"checks\""));
        assert!(!text.contains('\x1b'), "plain text has no colour: {text}");
        let colored = render_text_with(&r, true);
        assert!(
            colored.contains("\x1b[1;31mFAIL\x1b[0m") || r.failures() == 0,
            "{colored}"
        );
    }
}
