//! Shell one-liners for the guest tests.
use std::process::{Command, ExitStatus};

/// `sh -c line`, with its stdout and stderr together.
pub fn sh(line: &str) -> (ExitStatus, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(line)
        .output()
        .unwrap_or_else(|e| panic!("spawn sh for {line:?}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, s)
}

/// `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    sh(&format!("command -v {tool}")).0.success()
}
