//! `THIRD-PARTY.txt`: the crates compiled into the shipped executables (normal dependencies
//! of ublk-trace and ublk-server for the release target, with the `gen` features), each with
//! its licence, from `cargo metadata`; plus the statically linked C library.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::util;

pub fn list(root: &Path, target: &str) -> Result<String> {
    let out = util::output(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(root)
            .args(["metadata", "--format-version", "1", "--locked"])
            .args(["--filter-platform", target])
            .args(["--features", "ublk-trace/gen,ublk-server/gen"]),
    )?;
    let meta: Value = serde_json::from_str(&out).context("parse cargo metadata")?;
    Ok(render(&meta))
}

/// Walk the resolve graph from the two binaries along normal (not build, not dev) edges.
fn render(meta: &Value) -> String {
    let empty = Vec::new();
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let mut todo: Vec<&str> = packages
        .iter()
        .filter(|(_, p)| matches!(p["name"].as_str(), Some("ublk-trace" | "ublk-server")))
        .map(|(id, _)| *id)
        .collect();
    // A proc macro runs in the compiler; neither it nor what it uses is in the executable.
    let proc_macro = |id: &str| {
        packages.get(id).is_some_and(|p| {
            p["targets"].as_array().is_some_and(|ts| {
                ts.iter().any(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "proc-macro"))
                })
            })
        })
    };
    let mut seen = BTreeSet::new();
    while let Some(id) = todo.pop() {
        if proc_macro(id) || !seen.insert(id) {
            continue;
        }
        let deps = nodes.get(id).and_then(|n| n["deps"].as_array());
        for d in deps.into_iter().flatten() {
            let normal = d["dep_kinds"]
                .as_array()
                .is_some_and(|ks| ks.iter().any(|k| k["kind"].is_null()));
            if normal && let Some(pkg) = d["pkg"].as_str() {
                todo.push(pkg);
            }
        }
    }
    let mut lines: BTreeSet<String> = BTreeSet::new();
    for id in seen {
        if let Some(p) = packages.get(id) {
            lines.insert(format!(
                "{} {}: {}",
                p["name"].as_str().unwrap_or("?"),
                p["version"].as_str().unwrap_or("?"),
                p["license"]
                    .as_str()
                    .unwrap_or("see the crate's licence file")
            ));
        }
    }
    let mut s = String::from(
        "Third-party code in the static ublk-trace and ublk-server executables.\n\n\
         The GNU C Library (glibc), linked statically: LGPL-2.1-or-later. Its source is\n\
         the Debian package 'glibc' (see the .deb's Built-Using field).\n\n\
         The eBPF object embedded in ublk-trace (ublk-trace-ebpf, with aya-ebpf, aya-ebpf-bindings\n\
         and aya-ebpf-cty: MIT OR Apache-2.0): GPL-2.0-only, see LICENSE-GPL-2.0.\n\n\
         Rust crates (name version: licence):\n",
    );
    for l in lines {
        s.push_str("  ");
        s.push_str(&l);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_normal_dependencies_of_the_binaries_are_listed() {
        let meta = serde_json::json!({
            "packages": [
                {"id": "t", "name": "ublk-trace", "version": "0.1.0", "license": "MIT OR Apache-2.0"},
                {"id": "a", "name": "anyhow", "version": "1.0.0", "license": "MIT OR Apache-2.0"},
                {"id": "b", "name": "cc", "version": "1.0.0", "license": "MIT"},
                {"id": "x", "name": "xtask", "version": "0.1.0", "license": "MIT"},
                {"id": "d", "name": "serde_derive", "version": "1.0.0", "license": "MIT",
                 "targets": [{"kind": ["proc-macro"]}]},
            ],
            "resolve": {"nodes": [
                {"id": "t", "deps": [
                    {"pkg": "a", "dep_kinds": [{"kind": null}]},
                    {"pkg": "b", "dep_kinds": [{"kind": "build"}]},
                    {"pkg": "d", "dep_kinds": [{"kind": null}]},
                ]},
                {"id": "a", "deps": []},
                {"id": "b", "deps": []},
                {"id": "x", "deps": [{"pkg": "a", "dep_kinds": [{"kind": null}]}]},
            ]}
        });
        let s = render(&meta);
        assert!(s.contains("  anyhow 1.0.0: MIT OR Apache-2.0\n"), "{s}");
        assert!(s.contains("  ublk-trace 0.1.0"), "{s}");
        assert!(!s.contains("cc 1.0.0"), "build dependency listed: {s}");
        assert!(!s.contains("xtask"), "{s}");
        assert!(!s.contains("serde_derive"), "proc macro listed: {s}");
        assert!(s.contains("LGPL-2.1-or-later"));
    }
}
