//! The JSON Schemas under `docs/schema/` are generated from the Rust types (schemars, a
//! dev-dependency: only this test derives `JsonSchema`). The test fails when a type changed
//! and its committed schema was not regenerated:
//! `UPDATE_SCHEMAS=1 cargo test -p ublk-trace --lib schema` rewrites them. Bump the
//! document's `version` too when a field changes meaning or goes away.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde_json::Value;

#[path = "../tests/schema_check/mod.rs"]
mod schema_check;

/// The schema of `T` as written (serialize mode: a field with a serde default for reading is
/// still always written, so it is required).
fn schema_of<T: JsonSchema>() -> Value {
    let schema = schemars::generate::SchemaSettings::default()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>();
    serde_json::to_value(schema).expect("a schema is JSON")
}

/// (file stem, the document's `kind`, schema).
fn documents() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "doctor",
            crate::doctor::REPORT_KIND,
            schema_of::<crate::doctor::Report>(),
        ),
        (
            "diagnose",
            "ublk-trace.diagnose",
            schema_of::<crate::cmd::diagnose::output::DiagnoseJson>(),
        ),
        (
            "watch",
            "ublk-trace.watch",
            schema_of::<crate::cmd::watch::headless::WatchJson>(),
        ),
        (
            "report",
            crate::report::REPORT_SCHEMA,
            schema_of::<crate::report::Report>(),
        ),
        (
            "bundle-report",
            "ublk-trace.bundle-report",
            schema_of::<crate::cmd::report::BundleReportJson>(),
        ),
        (
            "manifest",
            crate::bundle::MANIFEST_KIND,
            schema_of::<crate::bundle::Manifest>(),
        ),
        (
            "state",
            crate::cmd::state::STATE_KIND,
            schema_of::<crate::cmd::state::StateJson>(),
        ),
        (
            "record-header",
            crate::record::jsonl::RECORDING_KIND,
            schema_of::<crate::record::jsonl::RecordHeader>(),
        ),
    ]
}

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema")
}

/// Schemas of lines that are not documents of their own (no kind/version): a recording's
/// event lines, versioned by the header's `schema_version`.
fn line_schemas() -> Vec<(&'static str, Value)> {
    vec![("record-event", schema_of::<crate::event::TraceEvent>())]
}

/// Compare (or with UPDATE_SCHEMAS write) `docs/schema/<name>.schema.json`; the path when stale.
fn stale_schema(name: &str, schema: &Value, update: bool) -> Option<String> {
    let mut text = serde_json::to_string_pretty(schema).expect("encode schema");
    text.push('\n');
    let path = schema_dir().join(format!("{name}.schema.json"));
    if update {
        std::fs::create_dir_all(schema_dir()).expect("create docs/schema");
        std::fs::write(&path, &text).expect("write schema");
        None
    } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        Some(path.display().to_string())
    } else {
        None
    }
}

#[test]
fn committed_schemas_match_the_types() {
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (name, kind, schema) in documents() {
        // Every document says what it is: kind and version are required fields.
        let required = schema["required"].as_array().cloned().unwrap_or_default();
        for field in ["kind", "version"] {
            assert!(
                required.iter().any(|r| r == field),
                "{name}: no {field}: {schema:#}"
            );
        }
        assert!(kind.starts_with("ublk-trace."), "{name}: {kind}");
        stale.extend(stale_schema(name, &schema, update));
    }
    for (name, schema) in line_schemas() {
        stale.extend(stale_schema(name, &schema, update));
    }
    assert!(
        stale.is_empty(),
        "JSON schemas out of date with the Rust types: {stale:?}; run \
         'UPDATE_SCHEMAS=1 cargo test -p ublk-trace --lib schema' and commit docs/schema/ \
         (bump the document's version if a field changed meaning or went away)"
    );
}

/// Every kind of event line validates against the event schema, and a retyped field fails.
#[test]
fn event_lines_match_their_schema() {
    let schema = schema_of::<crate::event::TraceEvent>();
    let ev = |kind| crate::event::TraceEvent {
        ts_ns: 1,
        pid: 2,
        tid: 3,
        comm: "ublk-q0".into(),
        kind,
    };
    use crate::event::{BlockStage, EventKind};
    let lines = [
        ev(EventKind::Delivered {
            dev_id: 0,
            q_id: 1,
            tag: 2,
        }),
        ev(EventKind::Block {
            dev_id: 0,
            q_id: 0,
            tag: 5,
            stage: BlockStage::Complete,
            op: "READ".into(),
            sector: 8,
            bytes: 4096,
            error: 0,
        }),
        ev(EventKind::Lost { count: 3 }),
    ];
    for e in &lines {
        let v = serde_json::to_value(e).expect("encode event");
        let bad = schema_check::violations(&schema, &v);
        assert!(bad.is_empty(), "{v}: {bad:?}");
    }
    let mut v = serde_json::to_value(&lines[1]).expect("encode event");
    v["stage"] = Value::from(7);
    assert!(!schema_check::violations(&schema, &v).is_empty(), "{v}");
    v["stage"] = Value::from("complete");
    v["event"] = Value::from("no_such_event");
    assert!(!schema_check::violations(&schema, &v).is_empty(), "{v}");
}

/// The checker itself: a missing required field and a retyped one are caught.
#[test]
fn schema_checker_catches_missing_and_retyped_fields() {
    let schema = schema_of::<crate::bundle::Manifest>();
    let m = crate::bundle::Manifest {
        kind: crate::bundle::MANIFEST_KIND.into(),
        version: 1,
        tool_version: "0.1.0".into(),
        kernel: "6.12.95+deb12-amd64".into(),
        created_unix_ms: 1,
        created_utc: "1970-01-01T00:00:00Z".into(),
        command_line: vec!["ublk-trace".into()],
        devices: vec![0],
        observed_ms: 2000,
        source: "snapshots".into(),
        source_note: None,
        recording: None,
        files: vec![crate::bundle::FileSize {
            path: "findings.txt".into(),
            bytes: 3,
        }],
        not_collected: vec![],
    };
    let mut doc = serde_json::to_value(&m).expect("encode manifest");
    assert_eq!(
        schema_check::violations(&schema, &doc),
        Vec::<String>::new()
    );
    doc["version"] = Value::from("one");
    doc.as_object_mut().expect("object").remove("kernel");
    let v = schema_check::violations(&schema, &doc);
    assert!(v.iter().any(|l| l.contains("'kernel' missing")), "{v:?}");
    assert!(v.iter().any(|l| l.contains("$.version")), "{v:?}");
}
