//! Host test of the `record` command line: it starts without ublk or kprobes (raw block
//! tracepoints only), ends by itself after --duration, and writes a readable JSON-lines
//! header or a structurally valid Perfetto document.

mod schema_check;

use std::process::Command;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn record(format: &str, out: &std::path::Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_ublk-trace"))
        .args(["record", "--duration", "0.3", "--format", format, "-o"])
        .arg(out)
        .output()
        .expect("run ublk-trace record");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    stderr
}

#[test]
fn record_writes_header_and_perfetto_without_ublk() {
    if !is_root() {
        eprintln!("SKIP: loading eBPF needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ublk-trace-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let jsonl = dir.join("r.jsonl");
    let stderr = record("jsonl", &jsonl);
    assert!(stderr.contains("recorded 0 events, 0 dropped"), "{stderr}");
    let (header, events) = ublk_trace::record::read_jsonl(&jsonl).expect("readable recording");
    // The header line as written: kind, version, docs/schema/record-header.schema.json.
    let text = std::fs::read_to_string(&jsonl).expect("recording readable");
    let first: serde_json::Value =
        serde_json::from_str(text.lines().next().unwrap_or_default()).expect("header is JSON");
    assert_eq!(first["kind"], "ublk-trace.recording", "{first}");
    assert_eq!(first["version"], 1, "{first}");
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/schema/record-header.schema.json"))
            .expect("docs/schema/record-header.schema.json is JSON");
    let bad = schema_check::violations(&schema, &first);
    assert!(bad.is_empty(), "record header: {bad:#?}\n{first:#}");
    assert!(events.is_empty(), "no ublk disk here: {events:?}");
    let complete = header
        .probes
        .iter()
        .find(|p| p.program == "blk_complete")
        .expect("listed");
    assert!(complete.attached, "{complete:?}");
    // Missing kprobe targets are listed with the reason, not dropped.
    let ctrl = header
        .probes
        .iter()
        .find(|p| p.program == "ctrl_enter")
        .expect("listed");
    if !ctrl.attached {
        assert!(!ctrl.error.is_empty());
    }

    let pf = dir.join("r.json");
    record("perfetto", &pf);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&pf).expect("written")).expect("valid JSON");
    assert!(doc["traceEvents"].is_array(), "{doc}");

    // Offline conversion of the JSON-lines recording.
    let conv = dir.join("conv.json");
    let o = Command::new(env!("CARGO_BIN_EXE_ublk-trace"))
        .args(["record", "--format", "perfetto", "--from"])
        .arg(&jsonl)
        .arg("-o")
        .arg(&conv)
        .output()
        .expect("run ublk-trace record --from");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&conv).expect("written")).expect("valid JSON");
    assert!(doc["traceEvents"].is_array());
    let _ = std::fs::remove_dir_all(&dir);
}
