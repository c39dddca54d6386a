//! `/proc/kallsyms`: which functions this kernel really has, under which names.
//!
//! The ublk driver's functions are renamed between versions and the compiler adds suffixes
//! (`ublk_ctrl_start_dev.isra.0`, `.constprop.0`, `.cold`). A kprobe must be given the exact
//! name (the plain name fails with ENOENT when only the suffixed one exists), so every probe
//! target is a *concept* with a candidate list, resolved here against the running kernel.
//!
//! Addresses read as 0 without CAP_SYSLOG (kptr_restrict); names are still listed.

use std::collections::HashMap;

pub const KALLSYMS_PATH: &str = "/proc/kallsyms";

/// One symbol line: `ffffffffc0a01230 t ublk_queue_rq\t[ublk_drv]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub addr: u64,
    /// nm-style type letter (`t`/`T` text, `d`/`r` data...).
    pub kind: char,
    /// Full name as the kernel lists it, suffix included.
    pub name: String,
    /// Module name for module symbols (`ublk_drv`), `None` for vmlinux.
    pub module: Option<String>,
}

impl Symbol {
    pub fn is_text(&self) -> bool {
        matches!(self.kind, 't' | 'T' | 'w' | 'W')
    }
    /// The name without compiler suffixes: `ublk_ctrl_start_dev.isra.0` -> `ublk_ctrl_start_dev`.
    pub fn base_name(&self) -> &str {
        base_name(&self.name)
    }
    /// `.cold` parts are split-off cold paths, not entry points; never probe them.
    pub fn is_cold_part(&self) -> bool {
        self.name.ends_with(".cold") || self.name.contains(".cold.")
    }
}

/// Strip `.isra.N`, `.constprop.N`, `.part.N`, `.cold`, `.llvm.N` and friends.
pub fn base_name(name: &str) -> &str {
    name.split_once('.').map_or(name, |(b, _)| b)
}

/// Parse one line; `None` for lines that are not `ADDR TYPE NAME [\[MODULE\]]`.
pub fn parse_line(line: &str) -> Option<Symbol> {
    let mut it = line.split_whitespace();
    let addr = u64::from_str_radix(it.next()?, 16).ok()?;
    let kind = it.next()?.chars().next()?;
    let name = it.next()?.to_string();
    let module = it
        .next()
        .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_string);
    Some(Symbol {
        addr,
        kind,
        name,
        module,
    })
}

/// The text symbols of interest, grouped by base name.
#[derive(Debug, Default)]
pub struct Kallsyms {
    by_base: HashMap<String, Vec<Symbol>>,
}

impl Kallsyms {
    /// Read `/proc/kallsyms`, keeping only symbols whose name starts with one of `prefixes`
    /// (the full file has ~200k lines; we need a few dozen).
    /// The ublk symbols ([`PREFIXES`]), read once per process: the probes and the driver-state
    /// reader start side by side, and the kernel formats ~200k lines per read. Kept only once
    /// ublk_drv's symbols are in (the module may be loaded later).
    pub fn load_shared() -> std::io::Result<std::sync::Arc<Self>> {
        static SHARED: std::sync::Mutex<Option<std::sync::Arc<Kallsyms>>> =
            std::sync::Mutex::new(None);
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(k) = shared.as_ref() {
            return Ok(k.clone());
        }
        let k = std::sync::Arc::new(Self::load(PREFIXES)?);
        if k.has_module("ublk_drv") {
            *shared = Some(k.clone());
        }
        Ok(k)
    }

    pub fn load(prefixes: &[&str]) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(KALLSYMS_PATH)?;
        Ok(Self::parse(&text, prefixes))
    }

    pub fn parse(text: &str, prefixes: &[&str]) -> Self {
        let mut by_base: HashMap<String, Vec<Symbol>> = HashMap::new();
        // /proc/kallsyms has ~200k lines: look at the name (third field) before parsing and
        // allocating, which keeps this fast even in a TCG guest.
        let maybe = |line: &str| prefixes.iter().any(|p| line.contains(p));
        let wanted = |s: &Symbol| prefixes.iter().any(|p| s.name.starts_with(p));
        for sym in text
            .lines()
            .filter(|l| maybe(l))
            .filter_map(parse_line)
            .filter(wanted)
        {
            by_base
                .entry(sym.base_name().to_string())
                .or_default()
                .push(sym);
        }
        Self { by_base }
    }

    /// The probe-able symbol for a base name: the plain name if present, else the first
    /// suffixed variant that is not a `.cold` part.
    pub fn lookup(&self, base: &str) -> Option<&Symbol> {
        let syms = self.by_base.get(base)?;
        syms.iter()
            .filter(|s| s.is_text())
            .find(|s| s.name == base)
            .or_else(|| syms.iter().find(|s| s.is_text() && !s.is_cold_part()))
    }

    /// Any symbol (text or data) with exactly this name.
    pub fn exact(&self, name: &str) -> Option<&Symbol> {
        self.by_base
            .get(base_name(name))?
            .iter()
            .find(|s| s.name == name)
    }

    /// True when any symbol of `module` was seen (i.e. the module is loaded).
    pub fn has_module(&self, module: &str) -> bool {
        self.by_base
            .values()
            .flatten()
            .any(|s| s.module.as_deref() == Some(module))
    }
}

/// A probe target described by what it does, with the names it has had over kernel versions.
#[derive(Debug, Clone, Copy)]
pub struct Concept {
    /// Stable key used in doctor output and by `probe/` ("ctrl_handler", ...).
    pub key: &'static str,
    pub what: &'static str,
    /// Base names in order of preference.
    pub candidates: &'static [&'static str],
    /// Without it the tracer cannot work (address-taken callbacks are always symbols).
    pub required: bool,
}

/// Every ublk function the tracer may probe.
pub const CONCEPTS: &[Concept] = &[
    Concept {
        key: "ctrl_handler",
        what: "control command handler (/dev/ublk-control uring_cmd)",
        candidates: &["ublk_ctrl_uring_cmd"],
        required: true,
    },
    Concept {
        key: "io_handler",
        what: "I/O command handler (/dev/ublkcN uring_cmd: FETCH/COMMIT)",
        // The file operation itself is always a symbol; 6.18 splits the body into _local.
        candidates: &[
            "ublk_ch_uring_cmd",
            "ublk_ch_uring_cmd_local",
            "__ublk_ch_uring_cmd",
        ],
        required: true,
    },
    Concept {
        key: "queue_rq",
        what: "blk-mq ->queue_rq (one request handed to the driver)",
        candidates: &["ublk_queue_rq"],
        required: true,
    },
    Concept {
        key: "queue_rqs",
        what: "blk-mq ->queue_rqs (a batch of requests; 6.15+, 6.18 sends even QD1 dd here)",
        candidates: &["ublk_queue_rqs"],
        required: false,
    },
    Concept {
        key: "dispatch_req",
        what: "per-request delivery to the server thread (6.15+)",
        candidates: &["ublk_dispatch_req"],
        required: false,
    },
    Concept {
        key: "task_work",
        what: "delivery task work, whole queue batch (≤ 6.14)",
        candidates: &["ublk_rq_task_work_cb"],
        required: false,
    },
    Concept {
        key: "cmd_tw_cb",
        what: "delivery task-work callbacks (6.15+; on 7.x arg0 is not an io_uring_cmd)",
        candidates: &["ublk_cmd_tw_cb", "ublk_cmd_list_tw_cb"],
        required: false,
    },
    Concept {
        key: "start_dev",
        what: "START_DEV body (waits for FETCHes; on 6.12 also for the partition scan)",
        candidates: &["ublk_ctrl_start_dev"],
        required: false,
    },
    Concept {
        key: "stop_dev",
        what: "STOP_DEV body",
        candidates: &["ublk_stop_dev", "ublk_stop_dev_unlocked"],
        required: false,
    },
    Concept {
        key: "del_dev",
        what: "DEL_DEV body",
        candidates: &["ublk_ctrl_del_dev"],
        required: false,
    },
    Concept {
        key: "timeout",
        what: "blk-mq request timeout handler",
        candidates: &["ublk_timeout"],
        required: false,
    },
    Concept {
        key: "batch_io",
        what: "UBLK_F_BATCH_IO command handler (7.x: PREP/COMMIT/FETCH_IO_CMDS)",
        candidates: &["ublk_ch_batch_io_uring_cmd"],
        required: false,
    },
];

/// How one concept resolved on this kernel.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct Resolved {
    pub key: &'static str,
    pub what: &'static str,
    pub required: bool,
    /// Every candidate that exists, exact kallsyms name (probe this).
    pub found: Vec<FoundSym>,
    /// Candidates this kernel does not have.
    pub missing: Vec<&'static str>,
}

#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct FoundSym {
    pub name: String,
    pub addr: u64,
    pub module: Option<String>,
}

impl Resolved {
    /// The preferred name to probe, if any.
    pub fn first(&self) -> Option<&str> {
        self.found.first().map(|f| f.name.as_str())
    }
}

pub fn resolve(ks: &Kallsyms, c: &Concept) -> Resolved {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for cand in c.candidates {
        match ks.lookup(cand) {
            Some(s) => found.push(FoundSym {
                name: s.name.clone(),
                addr: s.addr,
                module: s.module.clone(),
            }),
            None => missing.push(*cand),
        }
    }
    Resolved {
        key: c.key,
        what: c.what,
        required: c.required,
        found,
        missing,
    }
}

/// Resolve every concept of [`CONCEPTS`].
pub fn resolve_all(ks: &Kallsyms) -> Vec<Resolved> {
    CONCEPTS.iter().map(|c| resolve(ks, c)).collect()
}

/// The symbol-name prefixes the tracer cares about (for [`Kallsyms::load`]).
pub const PREFIXES: &[&str] = &["ublk_", "__ublk_"];

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffffc0a01000 t ublk_ctrl_uring_cmd\t[ublk_drv]
ffffffffc0a0f000 t ublk_ctrl_uring_cmd.cold\t[ublk_drv]
ffffffffc0a02000 t ublk_ctrl_start_dev.isra.0\t[ublk_drv]
ffffffffc0a03000 t ublk_ch_uring_cmd\t[ublk_drv]
ffffffffc0a04000 t ublk_queue_rq\t[ublk_drv]
ffffffffc0a05000 t ublk_batch_dispatch_fail.constprop.0\t[ublk_drv]
ffffffffc0a06000 r ublk_mq_ops\t[ublk_drv]
ffffffff81000000 T _stext
garbage line
ffffffff81234000 T blk_mq_start_request
";

    #[test]
    fn parses_module_column_and_suffixes() {
        let s = parse_line("ffffffffc0a02000 t ublk_ctrl_start_dev.isra.0\t[ublk_drv]")
            .expect("valid line");
        assert_eq!(s.addr, 0xffff_ffff_c0a0_2000);
        assert_eq!(s.kind, 't');
        assert_eq!(s.base_name(), "ublk_ctrl_start_dev");
        assert_eq!(s.module.as_deref(), Some("ublk_drv"));
        let v = parse_line("ffffffff81000000 T _stext").expect("vmlinux line");
        assert_eq!(v.module, None);
        assert!(parse_line("not a symbol").is_none());
    }

    #[test]
    fn resolves_suffixed_names_and_skips_cold_parts() {
        let ks = Kallsyms::parse(SAMPLE, PREFIXES);
        // Only the suffixed name exists: that is what must be probed (plain name -> ENOENT).
        assert_eq!(
            ks.lookup("ublk_ctrl_start_dev").map(|s| s.name.as_str()),
            Some("ublk_ctrl_start_dev.isra.0")
        );
        // The plain name wins over its .cold part.
        assert_eq!(
            ks.lookup("ublk_ctrl_uring_cmd").map(|s| s.name.as_str()),
            Some("ublk_ctrl_uring_cmd")
        );
        assert_eq!(
            ks.lookup("ublk_batch_dispatch_fail")
                .map(|s| s.name.as_str()),
            Some("ublk_batch_dispatch_fail.constprop.0")
        );
        // Data symbols are not probe targets but can be looked up exactly.
        assert!(ks.lookup("ublk_mq_ops").is_none());
        assert_eq!(ks.exact("ublk_mq_ops").map(|s| s.kind), Some('r'));
        // Filtered out by prefix.
        assert!(ks.lookup("blk_mq_start_request").is_none());
        assert!(ks.has_module("ublk_drv"));
    }

    #[test]
    fn concept_reports_found_and_missing() {
        let ks = Kallsyms::parse(SAMPLE, PREFIXES);
        let all = resolve_all(&ks);
        let get = |k: &str| all.iter().find(|r| r.key == k).expect("concept exists");
        let io = get("io_handler");
        assert_eq!(io.first(), Some("ublk_ch_uring_cmd"));
        assert_eq!(
            io.missing,
            ["ublk_ch_uring_cmd_local", "__ublk_ch_uring_cmd"]
        );
        assert_eq!(io.found[0].module.as_deref(), Some("ublk_drv"));
        let rqs = get("queue_rqs");
        assert!(rqs.found.is_empty() && !rqs.required);
        assert_eq!(get("start_dev").first(), Some("ublk_ctrl_start_dev.isra.0"));
    }

    #[test]
    fn empty_kallsyms_resolves_nothing_without_panicking() {
        let ks = Kallsyms::parse("", PREFIXES);
        assert!(resolve_all(&ks).iter().all(|r| r.found.is_empty()));
        assert!(!ks.has_module("ublk_drv"));
    }
}
