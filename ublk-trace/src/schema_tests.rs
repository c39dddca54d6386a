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

#[test]
fn committed_schemas_match_the_types() {
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (name, kind, schema) in documents() {
        let mut text = serde_json::to_string_pretty(&schema).expect("encode schema");
        text.push('\n');
        let path = schema_dir().join(format!("{name}.schema.json"));
        // Every document says what it is: kind and version are required fields.
        let required = schema["required"].as_array().cloned().unwrap_or_default();
        for field in ["kind", "version"] {
            assert!(
                required.iter().any(|r| r == field),
                "{name}: no {field}: {schema:#}"
            );
        }
        assert!(kind.starts_with("ublk-trace."), "{name}: {kind}");
        if update {
            std::fs::create_dir_all(schema_dir()).expect("create docs/schema");
            std::fs::write(&path, &text).expect("write schema");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "JSON schemas out of date with the Rust types: {stale:?}; run \
         'UPDATE_SCHEMAS=1 cargo test -p ublk-trace --lib schema' and commit docs/schema/ \
         (bump the document's version if a field changed meaning or went away)"
    );
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
