//! A minimal JSON Schema checker for the documents under `docs/schema/` (written by
//! schemars): `type`, `required`, `properties`, `items`, `enum`, `const`, `$ref` into `$defs`,
//! `anyOf`/`oneOf`. Enough to catch a missing or retyped field in a real output without a
//! validator crate. Shared by the lib's schema test and the host CLI tests (`#[path]`).
#![allow(dead_code)]

use serde_json::Value;

/// Every violation of `schema` by `doc`, as "path: what" lines (empty: valid).
pub fn violations(schema: &Value, doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, schema, doc, "$", &mut out);
    out
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        _ => true,
    }
}

fn resolve<'a>(root: &'a Value, r: &str) -> Option<&'a Value> {
    let name = r.strip_prefix("#/$defs/")?;
    root.get("$defs")?.get(name)
}

fn check(root: &Value, s: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = s.as_object() else {
        return; // `true` or `{}`: anything
    };
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        match resolve(root, r) {
            Some(target) => check(root, target, v, path, out),
            None => out.push(format!("{path}: unresolved $ref {r}")),
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = obj.get(key).and_then(Value::as_array) {
            let fits = alts.iter().any(|a| {
                let mut sub = Vec::new();
                check(root, a, v, path, &mut sub);
                sub.is_empty()
            });
            if !fits {
                out.push(format!("{path}: matches none of {key}"));
            }
        }
    }
    if let Some(t) = obj.get("type") {
        let ok = match t {
            Value::String(t) => type_ok(t, v),
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(|t| type_ok(t, v)),
            _ => true,
        };
        if !ok {
            out.push(format!("{path}: expected type {t}, found {v}"));
            return;
        }
    }
    if let Some(c) = obj.get("const")
        && c != v
    {
        out.push(format!("{path}: expected {c}, found {v}"));
    }
    if let Some(e) = obj.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        out.push(format!("{path}: {v} is not one of {e:?}"));
    }
    if let Some(map) = v.as_object() {
        for req in obj
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !map.contains_key(req) {
                out.push(format!("{path}: required field '{req}' missing"));
            }
        }
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                if let Some(x) = map.get(k) {
                    check(root, sub, x, &format!("{path}.{k}"), out);
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (obj.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            check(root, items, x, &format!("{path}[{i}]"), out);
        }
    }
}
