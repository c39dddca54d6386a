//! Rebuild the eBPF object when bpf-linker changes (e.g. reinstalled against a new nightly LLVM):
//! cargo cannot see the linker as an input otherwise. This only tracks the binary found on PATH
//! at build time, which is what aya-build will invoke.
use std::process::Command;

fn main() {
    let out = Command::new("sh")
        .args(["-c", "command -v bpf-linker"])
        .output();
    if let Ok(o) = out {
        let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !path.is_empty() {
            println!("cargo::rerun-if-changed={path}");
        }
    }
}
