//! Real outputs of the binary on this host, checked against the committed schemas in
//! `docs/schema/` (regenerated from the types by the lib test `schema_tests`): doctor,
//! diagnose, watch --headless, the bundle's MANIFEST.json and both `report --json` forms.
//! No ublk device here, so arrays are mostly empty; the lib tests cover richer documents.

mod schema_check;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn schema(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schema")
        .join(format!("{name}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("schema is JSON")
}

fn run_json(args: &[&str]) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_ublk-trace"))
        .args(args)
        .output()
        .expect("run ublk-trace");
    let out = String::from_utf8_lossy(&o.stdout);
    let first = out.lines().next().unwrap_or_default();
    // Pretty-printed documents span lines; line-per-document ones take the first.
    serde_json::from_str(&out)
        .or_else(|_| serde_json::from_str(first))
        .unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {out}\n{}",
                String::from_utf8_lossy(&o.stderr)
            )
        })
}

fn assert_valid(name: &str, kind: &str, doc: &Value) {
    assert_eq!(doc["kind"], kind, "{doc}");
    assert!(doc["version"].as_u64().is_some(), "{doc}");
    let v = schema_check::violations(&schema(name), doc);
    assert!(v.is_empty(), "{name}: {v:#?}\n{doc:#}");
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ublk-trace-schema-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn doctor_diagnose_and_watch_match_their_schemas() {
    assert_valid(
        "doctor",
        "ublk-trace.doctor",
        &run_json(&["doctor", "--json"]),
    );
    assert_valid(
        "diagnose",
        "ublk-trace.diagnose",
        &run_json(&["diagnose", "--all", "--json", "--for", "0.3", "--no-probes"]),
    );
    assert_valid(
        "watch",
        "ublk-trace.watch",
        &run_json(&[
            "watch",
            "--headless",
            "--json",
            "--count",
            "1",
            "--interval",
            "100",
            "--no-probes",
        ]),
    );
}

fn bundle(dir: &Path) -> PathBuf {
    let b = dir.join("b.tar.gz");
    let o = Command::new(env!("CARGO_BIN_EXE_ublk-trace"))
        .args([
            "diagnose",
            "--all",
            "--for",
            "0.3",
            "--no-probes",
            "--bundle",
        ])
        .arg(&b)
        .output()
        .expect("run diagnose --bundle");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    b
}

#[test]
fn bundle_manifest_and_reports_match_their_schemas() {
    let dir = temp_dir();
    let b = bundle(&dir);
    let opened = ublk_trace::bundle::Bundle::open(&b).expect("open bundle");
    let manifest: Value =
        serde_json::from_slice(opened.get("MANIFEST.json").expect("has a manifest"))
            .expect("manifest is JSON");
    assert_valid("manifest", "ublk-trace.bundle", &manifest);
    let b_str = b.to_str().expect("utf-8 temp path");
    assert_valid(
        "bundle-report",
        "ublk-trace.bundle-report",
        &run_json(&["report", "--json", b_str]),
    );
    // A recording needs BPF (raw tracepoints only; no ublk or kprobes needed) and root.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let rec = dir.join("r.jsonl");
        let o = Command::new(env!("CARGO_BIN_EXE_ublk-trace"))
            .args(["record", "--duration", "0.3", "-o"])
            .arg(&rec)
            .output()
            .expect("run record");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rec = rec.to_str().expect("utf-8 temp path");
        assert_valid(
            "report",
            "ublk-trace.report",
            &run_json(&["report", "--json", rec]),
        );
    } else {
        eprintln!("SKIP: report --json of a recording: recording needs root");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
