//! Host tests of the command line a script relies on: exit codes (listed in every `--help`),
//! `--version`, and doctor's 0/1/2 with and without `--json`. This host has BPF, BTF and
//! tracefs but no ublk_drv and no kprobes, so doctor fails here (exit 1); the guest test
//! `doctor_guest` checks the passing side (exit 0).

use std::process::{Command, Output};

fn trace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ublk-trace"))
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .expect("run ublk-trace")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn every_help_exits_0_and_lists_the_exit_codes() {
    for sub in ["", "doctor", "record", "report", "watch", "diagnose"] {
        let mut args: Vec<&str> = sub.split_whitespace().collect();
        args.push("--help");
        let o = trace(&args);
        let out = text(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o.stderr));
        assert!(out.contains("Exit status:"), "{args:?}: {out}");
        assert!(out.contains("  2  bad arguments"), "{args:?}: {out}");
    }
    let diag = text(&trace(&["diagnose", "--help"]).stdout);
    assert!(diag.contains("  1  at least one finding"), "{diag}");
}

/// Guards the bug report's first line: which build, which commit, which eBPF object.
#[test]
fn version_names_commit_kernels_and_the_embedded_ebpf_hash() {
    let o = trace(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    assert!(
        out.starts_with(concat!("ublk-trace ", env!("CARGO_PKG_VERSION"), "\n")),
        "{out}"
    );
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no '{name}' line: {out}"))
            .to_string()
    };
    let commit = field("commit: ");
    assert!(
        commit == "unknown"
            || (commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{out}"
    );
    assert!(field("tested on kernels: ").contains("6.12"), "{out}");
    // The printed hash is the hash of the object the binary loads (checked with sha256sum).
    let dir = std::env::temp_dir().join(format!("ublk-trace-version-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let obj = dir.join("ebpf.o");
    std::fs::write(&obj, ublk_trace::probe::tracer::ebpf_object()).expect("write object");
    let sum = Command::new("sha256sum")
        .arg(&obj)
        .output()
        .expect("run sha256sum");
    let expected = text(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(field("eBPF object sha256: "), expected, "{out}");
    let short = text(&trace(&["-V"]).stdout);
    assert!(short.contains(&format!("(commit {commit})")), "{short}");
}

#[test]
fn doctor_exit_code_says_whether_this_machine_can_trace() {
    let o = trace(&["doctor", "--json"]);
    let doc: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("doctor --json prints JSON");
    assert_eq!(doc["kind"], "ublk-trace.doctor");
    assert_eq!(doc["version"], 1);
    let failed = doc["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] == "fail")
        .count();
    let want = if failed > 0 { 1 } else { 0 };
    assert_eq!(o.status.code(), Some(want), "{failed} failed checks");
    let no_ublk = !std::path::Path::new("/sys/module/ublk_drv").exists();
    if no_ublk {
        assert_eq!(
            o.status.code(),
            Some(1),
            "no ublk_drv here: doctor must fail"
        );
    }
    // The text form agrees, and piped output carries no colour unless asked for.
    let plain = trace(&["doctor"]);
    assert_eq!(plain.status.code(), Some(want));
    assert!(!plain.stdout.contains(&0x1b), "colour in a pipe");
    if failed > 0 {
        let colored = trace(&["doctor", "--color", "always"]);
        assert!(text(&colored.stdout).contains("\x1b[1;31mFAIL"));
        let never = Command::new(env!("CARGO_BIN_EXE_ublk-trace"))
            .args(["doctor", "--color", "auto"])
            .env("NO_COLOR", "1")
            .output()
            .expect("run");
        assert!(!never.stdout.contains(&0x1b));
    }
    // The old flag is still accepted.
    assert_eq!(
        trace(&["doctor", "--json", "--strict"]).status.code(),
        Some(want)
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["doctor", "--bogus"][..],
        &["doctor", "--json", "--bogus"],
        &["doctor", "--color", "sometimes"],
        &[],
        &["frobnicate"],
        &["watch", "--json"],
        &["watch", "disk", "0"],
        &["diagnose", "dev"],
        &["report"],
        &["record", "--format", "xml"],
    ] {
        let o = trace(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
    }
}

#[test]
fn runtime_errors_exit_2_with_the_reason() {
    let o = trace(&["report", "/nonexistent/rec.jsonl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("/nonexistent/rec.jsonl"),
        "{}",
        text(&o.stderr)
    );
    let o = trace(&["watch", "--dump-screen", "5x5", "--no-probes"]);
    assert_eq!(o.status.code(), Some(2));
}
