//! `docs/schema/ublk-server-info.schema.json` is generated from [`crate::admin::InfoJson`]
//! (schemars, a dev-dependency). The test fails when the type changed and the committed schema
//! was not regenerated: `UPDATE_SCHEMAS=1 cargo test -p ublk-server --lib schema` rewrites it.
//! Bump the document's `version` too when a field changes meaning or goes away. The guest test
//! `control_round_trip` checks a real `info --json` against it.

use std::path::PathBuf;

use serde_json::Value;

fn info_schema() -> Value {
    let schema = schemars::generate::SchemaSettings::default()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<crate::admin::InfoJson>();
    serde_json::to_value(schema).expect("a schema is JSON")
}

#[test]
fn committed_info_schema_matches_the_type() {
    let schema = info_schema();
    let required = schema["required"].as_array().cloned().unwrap_or_default();
    for field in ["kind", "version"] {
        assert!(
            required.iter().any(|r| r == field),
            "info --json has no required {field}: {schema:#}"
        );
    }
    let mut text = serde_json::to_string_pretty(&schema).expect("encode schema");
    text.push('\n');
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schema/ublk-server-info.schema.json");
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &text).expect("write schema");
    }
    assert!(
        std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()),
        "{} is out of date with admin::InfoJson; run 'UPDATE_SCHEMAS=1 cargo test -p \
         ublk-server --lib schema' and commit it (bump the version if a field changed meaning \
         or went away)",
        path.display()
    );
}
