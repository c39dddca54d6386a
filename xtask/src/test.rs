//! `cargo xtask test`: setup, host tests, then the guest suite on the default kernel and a
//! smoke subset on newer kernels, then the stranger's machine (`stranger.rs`) on the default
//! kernel; ends with one `N passed, N failed` line that counts the stranger's checks too.
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::guest::{GuestOpts, build_project, make_initramfs};
use crate::kernel::KernelSpec;
use crate::util::{cache_dir, workspace_root};

/// Tests run on the newer kernels of the matrix (libtest filters, OR-ed): the smoke tests, and
/// the ones whose kernel facts differ per version (function names, offsets, queue_rqs).
const MATRIX_FILTERS: &[&str] = &[
    "smoke",
    "doctor_finds_every_required_function",
    "recording_counts_fetches_requests_commits",
    "recording_with_probe_ublk_queue_rq",
    "ctrl_kprobe_counts_exactly",
    "state_map_tracks_tags",
    "fio_null_completes",
    "control_round_trip",
    "a_minute_of_fio",
    "start_gate",
    // The modes of the newest kernels: their repro scenarios skip on older ones.
    "repro_batch_",
];

/// The tests of the 6.1 boot (a kernel built from Debian's linux-source-6.1: legacy command
/// numbers, no GET_FEATURES, other task work and struct layouts): the smoke subset, the
/// server's fio crc32c verify on ramdisk and loop, SIGINT and SIGKILL under load, a healthy
/// minute watched, a SIGSTOPped server and a hung tag diagnosed.
pub const SIX_ONE_FILTERS: &[&str] = &[
    "smoke",
    "fio_verify_ramdisk",
    "fio_verify_loop",
    "sigint_during_fio_exits_clean",
    "sigkill_during_fio_then_del_leaves_nothing",
    "a_minute_of_fio_watched_from_before_the_device_existed",
    "sigstopped_server_mid_io_is_stopped_stuck_and_waited_on",
    "injected_hang_is_stuck_in_server_on_exactly_that_tag",
];

/// A kernel booted for a subset of the guest tests (all of them when a filter is given).
pub struct Subset {
    pub spec: KernelSpec,
    pub filters: &'static [&'static str],
    /// In the summary line: `guest 6.18 (smoke): ...`.
    pub label: &'static str,
}

impl Subset {
    /// The smoke subset (newer kernels: their modes and the basics).
    pub fn smoke(spec: KernelSpec) -> Self {
        Self {
            spec,
            filters: MATRIX_FILTERS,
            label: "smoke",
        }
    }

    /// The 6.1 list ([`SIX_ONE_FILTERS`]).
    pub fn six_one(spec: KernelSpec) -> Self {
        Self {
            spec,
            filters: SIX_ONE_FILTERS,
            label: "6.1 list",
        }
    }
}

/// Tests named `known_failure_*` reproduce bugs we know about and have not fixed yet. They are
/// skipped (and the skip is announced) so a red suite means a new failure;
/// `UBLK_RUN_KNOWN_FAILURES=1` runs them.
const KNOWN_FAILURE_PREFIX: &str = "known_failure_";

/// Counts from libtest summaries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// Test binaries that ended without a summary line (crash, timeout).
    pub broken: u64,
    /// Guest tests that printed a [`SKIP_PREFIX`] line (libtest counted them as passed; they
    /// are taken out of `passed`).
    pub skipped: u64,
}

impl Tally {
    pub fn add(&mut self, o: Tally) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.ignored += o.ignored;
        self.broken += o.broken;
        self.skipped += o.skipped;
    }
}

/// A guest test that could not run says so on a line of its own starting with this, written
/// to stderr unbuffered (libtest captures only `print!`) after a newline (libtest has printed
/// `test NAME ... ` on the line already), with the test's name and the reason.
pub const SKIP_PREFIX: &str = "SKIP: ";

/// The [`SKIP_PREFIX`] lines of a guest console (the console may prefix nothing but spaces).
pub fn skip_lines(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l.trim_start())
        .filter(|l| l.starts_with(SKIP_PREFIX))
        .collect()
}

/// Parse `test result: ok. 3 passed; 1 failed; 2 ignored; ...` lines.
pub fn parse_libtest(text: &str) -> Tally {
    let mut t = Tally::default();
    for line in text.lines() {
        let Some(i) = line.find("test result: ") else {
            continue;
        };
        for part in line[i..].split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.trim_end_matches('.').parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => t.passed += n,
                "failed" => t.failed += n,
                "ignored" => t.ignored += n,
                _ => {}
            }
        }
    }
    t
}

pub struct TestOpts {
    pub host: bool,
    pub guest: bool,
    pub kernels: Vec<KernelSpec>,
    pub subsets: Vec<Subset>,
    pub filter: Vec<String>,
    pub lint: bool,
    /// Guest vCPUs (`None`: the harness default). The kernel clamps a device's queues to it.
    pub smp: Option<u32>,
    /// Also the stranger's machine (the dist tarball in a guest of its own) on the first kernel.
    pub stranger: bool,
}

pub fn run(opts: &TestOpts) -> Result<bool> {
    let started = Instant::now();
    let default_kernel = [crate::kernel::KernelSpec::default_spec()];
    crate::setup::setup(if opts.guest { &default_kernel } else { &[] })?;
    let mut total = Tally::default();
    let mut problems: Vec<String> = Vec::new();
    if opts.lint
        && let Err(e) = lint()
    {
        problems.push(format!("lint: {e:#}"));
    }
    // A filter that names stranger checks (`-- stranger`) may match nothing else: then empty
    // host and guest suites are expected, and only an empty total is a problem.
    let for_stranger = !opts.filter.is_empty()
        && opts.guest
        && opts.stranger
        && crate::stranger::selected(&opts.filter);
    if opts.host {
        let t = host_tests(&opts.filter)?;
        println!("[test] host: {} passed, {} failed", t.passed, t.failed);
        if t.passed + t.failed == 0 && !for_stranger {
            problems.push("host tests: none ran".into());
        }
        total.add(t);
    }
    if opts.guest {
        let binaries = build_test_binaries()?;
        for (spec, subset) in opts
            .kernels
            .iter()
            .map(|k| (k, None))
            .chain(opts.subsets.iter().map(|s| (&s.spec, Some(s))))
        {
            let mut filter = opts.filter.clone();
            if let Some(s) = subset
                && filter.is_empty()
            {
                filter.extend(s.filters.iter().map(|f| f.to_string()));
            }
            match guest_suite(spec, &binaries, &filter, opts.smp) {
                Ok(t) => {
                    println!(
                        "[test] guest {}{}: {} passed, {} failed{}{}",
                        spec.name,
                        subset.map_or(String::new(), |s| format!(" ({})", s.label)),
                        t.passed,
                        t.failed,
                        if t.skipped > 0 {
                            format!(", {} skipped", t.skipped)
                        } else {
                            String::new()
                        },
                        if t.broken > 0 {
                            format!(", {} test binaries broke", t.broken)
                        } else {
                            String::new()
                        }
                    );
                    if t.passed + t.failed == 0 && !for_stranger {
                        problems.push(format!("guest {}: no test ran", spec.name));
                    }
                    total.add(t);
                }
                Err(e) => {
                    problems.push(format!("guest {}: {e:#}", spec.name));
                    total.failed += 1;
                }
            }
        }
    }
    if opts.guest && opts.stranger && crate::stranger::selected(&opts.filter) {
        stranger_stage(opts, &mut total, &mut problems);
    }
    if for_stranger && total.passed + total.failed == 0 {
        problems.push(format!("no test matched {:?}", opts.filter));
    }
    if std::env::var_os("UBLK_RUN_KNOWN_FAILURES").is_none() {
        println!(
            "[test] skipped guest tests named {KNOWN_FAILURE_PREFIX}* (known bugs, listed in README \"Known problems\"); UBLK_RUN_KNOWN_FAILURES=1 runs them"
        );
    }
    for p in &problems {
        println!("[test] FAILED: {p}");
    }
    println!("[test] wall time {:.0} s", started.elapsed().as_secs_f64());
    let failed = total.failed + total.broken;
    if total.skipped > 0 {
        // Not in `passed`: a skipped test proved nothing. The SKIP lines above say why.
        println!(
            "{} passed, {} failed, {} skipped",
            total.passed, failed, total.skipped
        );
    } else {
        println!("{} passed, {} failed", total.passed, failed);
    }
    Ok(failed == 0 && problems.is_empty())
}

/// The stranger's machine on the first kernel; its checks count as tests.
fn stranger_stage(opts: &TestOpts, total: &mut Tally, problems: &mut Vec<String>) {
    let Some(spec) = opts.kernels.first() else {
        return;
    };
    let t0 = Instant::now();
    let mut g = GuestOpts::new(spec.clone());
    if let Some(n) = opts.smp {
        g.smp = n;
    }
    match crate::stranger::run(&g) {
        Ok(verdicts) => {
            let (passed, failed) = crate::stranger::report(&verdicts);
            println!(
                "[test] stranger's machine {}: {passed} passed, {failed} failed ({:.0} s)",
                spec.name,
                t0.elapsed().as_secs_f64()
            );
            total.passed += passed;
            total.failed += failed;
        }
        Err(e) => {
            problems.push(format!("stranger's machine {}: {e:#}", spec.name));
            total.failed += 1;
        }
    }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn lint() -> Result<()> {
    crate::util::run(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("cargo fmt --check")?;
    crate::util::run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))
        .context("cargo clippy")?;
    Ok(())
}

fn host_tests(filter: &[String]) -> Result<Tally> {
    println!("[test] host tests");
    let out = cargo()
        .arg("test")
        .arg("--")
        .args(filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("run cargo test")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let t = parse_libtest(&text);
    if !out.status.success() && t.failed == 0 {
        bail!("cargo test failed before running tests (build error?)");
    }
    Ok(t)
}

#[derive(Deserialize)]
struct Artifact {
    reason: String,
    #[serde(default)]
    executable: Option<PathBuf>,
    #[serde(default)]
    profile: Option<Profile>,
    #[serde(default)]
    target: Option<Target>,
}
#[derive(Deserialize)]
struct Profile {
    test: bool,
}
#[derive(Deserialize)]
struct Target {
    name: String,
}

/// Compile the workspace's test binaries on the host (the guest has no toolchain).
pub fn build_test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let out = cargo()
        .args(["test", "--no-run", "--message-format=json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building test binaries failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(a) = serde_json::from_str::<Artifact>(line) else {
            continue;
        };
        if a.reason != "compiler-artifact" || !a.profile.as_ref().is_some_and(|p| p.test) {
            continue;
        }
        if let (Some(exe), Some(t)) = (a.executable, a.target) {
            bins.push((t.name, exe));
        }
    }
    if bins.is_empty() {
        bail!("cargo produced no test binaries");
    }
    Ok(bins)
}

/// Run every test binary's ignored (guest-only) tests in one boot of `spec`.
fn guest_suite(
    spec: &KernelSpec,
    binaries: &[(String, PathBuf)],
    filter: &[String],
    smp: Option<u32>,
) -> Result<Tally> {
    let kernel = crate::kernel::fetch(spec)?;
    // Release builds, as users run them: unoptimised BTF parsing and loading take the probes
    // several seconds longer to go live in the emulated guest.
    let bin_dir = build_project(true)?;
    let mut opts = GuestOpts::new(spec.clone());
    if let Some(n) = smp {
        opts.smp = n;
    }
    opts.timeout = Duration::from_secs(
        std::env::var("UBLK_GUEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1800),
    );
    let all: Vec<usize> = (0..binaries.len()).collect();
    let (script, extra) = suite_script(binaries, &all, filter);
    let initrd = make_initramfs(&kernel, &opts, &bin_dir, &script, &extra)?;
    // Per process: concurrent runs must not overwrite each other's console logs.
    let log = cache_dir().join(format!(
        "guest-test-{}-{}.log",
        spec.name.replace([':', '/'], "_"),
        std::process::id()
    ));
    println!(
        "[test] guest tests on {} ({} test binaries)",
        kernel.kver,
        binaries.len()
    );
    let boot = crate::guest::boot_opts(&opts, &kernel, &initrd);
    let (mut outcome, mut lines) = crate::qemu::boot_captured(&boot, &log, |l| println!("{l}"))?;
    // Multi-threaded TCG races on cross-modifying code: while kprobes are armed or the kernel
    // patches its text, a guest has oopsed on an int3 trap or a call to address 0 (from
    // io_uring_cmd, or io_uring's local task work) with no test at fault. A guest that died
    // is resumed once, loudly, with one TCG thread (slower, immune to that race): the binaries
    // that had finished keep their results, the rest (the one that died included) run again.
    // A second death counts as a failure.
    if matches!(outcome, crate::qemu::Outcome::Died { .. }) && boot.accel == crate::qemu::Accel::Tcg
    {
        let (kept, done) = finished_sections(&lines);
        let rest: Vec<usize> = (0..binaries.len())
            .filter(|i| !done.contains(&binaries[*i].0))
            .collect();
        println!(
            "[test] WARNING: guest {} died ({}); resuming the {} unfinished test binaries with \
             single-threaded TCG",
            spec.name,
            oops_line(&lines).unwrap_or("no oops line"),
            rest.len()
        );
        let (script, extra) = suite_script(binaries, &rest, filter);
        let _ = std::fs::remove_file(&initrd);
        let initrd2 = make_initramfs(&kernel, &opts, &bin_dir, &script, &extra)?;
        let mut single = crate::guest::boot_opts(&opts, &kernel, &initrd2);
        single.single_thread_tcg = true;
        let (o, more) = crate::qemu::boot_captured(&single, &log, |l| println!("{l}"))?;
        let _ = std::fs::remove_file(&initrd2);
        outcome = o;
        lines = kept;
        lines.extend(more);
    }
    let _ = std::fs::remove_file(&initrd);
    crate::guest::report_outcome(&outcome, &lines, &log);
    let text = lines.join("\n");
    let mut t = parse_libtest(&text);
    let skips = skip_lines(&lines);
    for l in &skips {
        println!("[test] {l}");
    }
    t.skipped = skips.len() as u64;
    t.passed = t.passed.saturating_sub(t.skipped);
    // A binary that started but never printed its summary crashed or hung.
    let started = lines
        .iter()
        .filter(|l| l.starts_with("=== GUEST-TEST "))
        .count() as u64;
    let ended_with_summary = count_summaries(&lines);
    t.broken = started.saturating_sub(ended_with_summary);
    if !matches!(outcome, crate::qemu::Outcome::Exited(_)) {
        t.broken = t.broken.max(1);
    }
    Ok(t)
}

/// The guest script running `which` of `binaries` (their index is kept in the guest path),
/// and the files it needs.
fn suite_script(
    binaries: &[(String, PathBuf)],
    which: &[usize],
    filter: &[String],
) -> (String, Vec<(PathBuf, String, bool)>) {
    let mut extra = Vec::new();
    let mut script = String::from("rc=0\n");
    // Knobs for guest tests (`UBLK_TEST_ATTACH_CYCLES=25`, ...) reach the guest as they are.
    for (k, v) in std::env::vars() {
        if k.starts_with("UBLK_TEST_") && k != "UBLK_TEST_BIN_DIR" {
            script.push_str(&format!("export {k}={}\n", crate::guest::shell_quote(&v)));
        }
    }
    for &i in which {
        let (name, exe) = &binaries[i];
        let guest_path = format!("/tests/{i:02}-{name}");
        extra.push((exe.clone(), guest_path.clone(), true));
        let mut args: Vec<String> = filter
            .iter()
            .map(|f| crate::guest::shell_join(std::slice::from_ref(f)))
            .collect();
        if std::env::var_os("UBLK_RUN_KNOWN_FAILURES").is_none() {
            args.push(format!("--skip {KNOWN_FAILURE_PREFIX}"));
        }
        script.push_str(&format!(
            "echo '=== GUEST-TEST {name}'\n{guest_path} --ignored --test-threads=1 {} 2>&1; r=$?\n\
             echo \"=== GUEST-TEST-END {name} rc=$r\"\n[ $r -eq 0 ] || rc=1\n",
            args.join(" ")
        ));
    }
    script.push_str("exit $rc\n");
    (script, extra)
}

/// The lines of the binaries that ran to their GUEST-TEST-END marker, and their names.
fn finished_sections(lines: &[String]) -> (Vec<String>, std::collections::BTreeSet<String>) {
    let mut kept = Vec::new();
    let mut done = std::collections::BTreeSet::new();
    let mut section: Vec<String> = Vec::new();
    for l in lines {
        if l.starts_with("=== GUEST-TEST ") {
            section = vec![l.clone()];
        } else if let Some(rest) = l.strip_prefix("=== GUEST-TEST-END ") {
            section.push(l.clone());
            if let Some(name) = rest.split(' ').next() {
                done.insert(name.to_string());
            }
            kept.append(&mut section);
        } else if !section.is_empty() {
            section.push(l.clone());
        }
    }
    (kept, done)
}

/// The first oops/BUG line of a dead guest, for the warning.
fn oops_line(lines: &[String]) -> Option<&str> {
    lines
        .iter()
        .find(|l| l.contains("BUG:") || l.contains("Oops:") || l.contains("int3:"))
        .map(String::as_str)
}

/// Binaries whose section (between GUEST-TEST and GUEST-TEST-END) holds a libtest summary.
fn count_summaries(lines: &[String]) -> u64 {
    let mut n = 0;
    let mut in_section = false;
    let mut seen = false;
    for l in lines {
        if l.starts_with("=== GUEST-TEST ") {
            in_section = true;
            seen = false;
        } else if l.starts_with("=== GUEST-TEST-END ") {
            if in_section && seen {
                n += 1;
            }
            in_section = false;
        } else if in_section && l.contains("test result: ") {
            seen = true;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every filter of the 6.1 list still names a guest test (a renamed test would silently
    /// drop out of the 6.1 boot otherwise).
    #[test]
    fn every_six_one_filter_matches_a_guest_test() {
        let root = crate::util::workspace_root();
        let mut names = Vec::new();
        for dir in ["ublk-server/tests", "ublk-trace/tests"] {
            let rd = std::fs::read_dir(root.join(dir)).expect("tests dir");
            for e in rd.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let mut ignored = false;
                for line in text.lines().map(str::trim) {
                    if line.starts_with("#[ignore = \"needs ublk guest\"]") {
                        ignored = true;
                    } else if let Some(rest) = line.strip_prefix("fn ")
                        && ignored
                    {
                        names.push(rest.split('(').next().unwrap_or("").to_string());
                        ignored = false;
                    }
                }
            }
        }
        assert!(names.len() > 20, "guest tests found: {names:?}");
        for f in SIX_ONE_FILTERS {
            assert!(
                names.iter().any(|n| n.contains(f)),
                "no guest test matches {f:?}"
            );
        }
        assert_eq!(
            Subset::six_one(KernelSpec::default_spec()).label,
            "6.1 list"
        );
    }

    #[test]
    fn libtest_summaries_are_summed() {
        let text = "running 2 tests\ntest a ... ok\ntest result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
                    test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.2s\n";
        assert_eq!(
            parse_libtest(text),
            Tally {
                passed: 5,
                failed: 2,
                ignored: 1,
                broken: 0,
                skipped: 0,
            }
        );
    }

    #[test]
    fn a_resumed_suite_keeps_only_finished_binaries() {
        let lines: Vec<String> = [
            "boot noise",
            "=== GUEST-TEST a",
            "test result: ok. 2 passed; 0 failed; 0 ignored",
            "=== GUEST-TEST-END a rc=0",
            "=== GUEST-TEST b",
            "test x ... BUG: kernel NULL pointer dereference",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (kept, done) = finished_sections(&lines);
        assert_eq!(done.into_iter().collect::<Vec<_>>(), vec!["a".to_string()]);
        assert_eq!(kept.len(), 3);
        assert_eq!(parse_libtest(&kept.join("\n")).passed, 2);
        let bins = vec![
            ("a".to_string(), PathBuf::from("a")),
            ("b".to_string(), PathBuf::from("b")),
        ];
        let (script, extra) = suite_script(&bins, &[1], &[]);
        assert!(script.contains("/tests/01-b ") && !script.contains("/tests/00-a"));
        assert_eq!(extra.len(), 1);
    }

    #[test]
    fn skip_lines_are_found_wherever_the_console_indents_them() {
        let lines: Vec<String> = [
            "SKIP: kublk_null: no kublk in this guest (gcc failed)",
            "  SKIP: smoke_kublk_batch: kernel 6.12 has no UBLK_F_BATCH_IO",
            "test a ... ok",
            "no SKIP: here",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = skip_lines(&lines);
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s[1].starts_with("SKIP: smoke_kublk_batch"));
    }

    #[test]
    fn a_binary_without_summary_is_broken() {
        let lines: Vec<String> = [
            "=== GUEST-TEST a",
            "test result: ok. 1 passed; 0 failed; 0 ignored",
            "=== GUEST-TEST-END a rc=0",
            "=== GUEST-TEST b",
            "Segmentation fault",
            "=== GUEST-TEST-END b rc=139",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(count_summaries(&lines), 1);
    }
}
