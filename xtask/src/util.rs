//! Small process and path helpers shared by the xtask commands.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Root of the workspace (the parent of xtask's manifest dir).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Where xtask keeps downloads and build products: `target/guest` (git-ignored), or
/// `$UBLK_GUEST_CACHE` when set (lets several clones share one kernel cache).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("UBLK_GUEST_CACHE") {
        Some(d) => PathBuf::from(d),
        None => target_dir().join("guest"),
    }
}

pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("target"),
    }
}

/// A long step on one line when it starts (`[setup] building bpf-linker ...`) and one when it
/// ends, with its wall time (`[setup] building bpf-linker: done in 95.2 s`, or `failed after`).
/// Plain lines, not a bar: they read the same in CI logs as on a terminal.
pub fn timed<T>(prefix: &str, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("[{prefix}] {what} ...");
    let t = Instant::now();
    let r = f();
    eprintln!(
        "{}",
        step_end(prefix, what, r.is_ok(), t.elapsed().as_secs_f64())
    );
    r
}

/// The line that ends a [`timed`] step.
pub fn step_end(prefix: &str, what: &str, ok: bool, secs: f64) -> String {
    let how = if ok { "done in" } else { "failed after" };
    format!("[{prefix}] {what}: {how} {secs:.1} s")
}

/// Run a command, inheriting stdio; fail with its name and status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let desc = describe(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{desc}`"))?;
    if !status.success() {
        bail!("`{desc}` failed ({status})");
    }
    Ok(())
}

/// Run a command and return its stdout (stderr inherited).
pub fn output(cmd: &mut Command) -> Result<String> {
    let desc = describe(cmd);
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{desc}`"))?;
    if !out.status.success() {
        bail!("`{desc}` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run quietly; true when it ran and exited 0.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Find an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Write `bytes` to `path` atomically: a temp name in the same dir, then rename, so an
/// interrupted run never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp-xtask");
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

/// Natural version order ("6.12.9" < "6.12.10", "7.3.4+deb13" > "7.3.4"), enough for
/// Debian kernel package versions.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let ord = match (x.0, y.0) {
            (true, true) => {
                let (nx, ny) = (x.1.trim_start_matches('0'), y.1.trim_start_matches('0'));
                nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny))
            }
            _ => x.1.cmp(y.1),
        };
        if ord != std::cmp::Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn a_step_ends_with_its_time_and_outcome() {
        assert_eq!(
            step_end("setup", "building bpf-linker", true, 95.24),
            "[setup] building bpf-linker: done in 95.2 s"
        );
        assert_eq!(
            step_end("kernel", "fetching linux-image", false, 3.0),
            "[kernel] fetching linux-image: failed after 3.0 s"
        );
        let r: Result<u8> = timed("t", "failing", || bail!("no"));
        assert!(r.is_err());
        assert_eq!(timed("t", "working", || Ok(7)).ok(), Some(7));
    }

    #[test]
    fn versions_sort_numerically() {
        assert_eq!(version_cmp("6.12.9-1", "6.12.10-1"), Less);
        assert_eq!(version_cmp("6.12.95-1~bpo12+1", "6.12.117-1"), Less);
        assert_eq!(version_cmp("7.3.4-1", "7.3.4-1"), Equal);
        assert_eq!(version_cmp("7.10.1", "7.3.4"), Greater);
    }
}
