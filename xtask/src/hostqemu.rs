//! The host's QEMU: which one the harness boots guests with, and getting a new enough one.
//!
//! Debian 12 ships QEMU 7.2. Under multi-threaded TCG it has executed stale translations while
//! the guest kernel patched its own text (ftrace/kprobe attach and detach, static keys flipped
//! by tracepoints: the int3 protocol of text_poke_bp), and guests oopsed ("Oops: int3",
//! "RIP: 0010:0x0"). bookworm-backports has QEMU 10, so `setup` installs that one when the
//! distribution's is older. It resolves with a private apt list state (the host's own list
//! files are never rewritten), the host's sources plus `<codename>-backports`, and
//! `--no-remove`: a package set that would remove any installed package is refused, never
//! carried out (bookworm's qemu-system-x86 7.2 would remove a backports qemu-utils).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{cache_dir, run, which};

/// The first QEMU release the harness trusts with multi-threaded TCG and kernel text patching.
pub const MIN_GOOD: (u32, u32) = (10, 0);

const BINARY: &str = "qemu-system-x86_64";
const PACKAGE: &str = "qemu-system-x86";

/// `qemu-system-x86_64 --version` as (major, minor, patch), if it runs.
pub fn version() -> Option<(u32, u32, u32)> {
    let out = Command::new(BINARY).arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)" -> (10, 0, 2).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.split("version ").nth(1)?;
    let v = rest.split_whitespace().next()?;
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

fn is_good(v: (u32, u32, u32)) -> bool {
    (v.0, v.1) >= MIN_GOOD
}

/// One line for the console: the QEMU in use and, when it is old, what that costs.
pub fn describe() -> String {
    match version() {
        Some(v) if is_good(v) => format!("QEMU {}.{}.{}", v.0, v.1, v.2),
        Some(v) => format!(
            "QEMU {}.{}.{} (older than {}.{}: multi-threaded TCG may oops the guest while probes \
             attach or detach; such a guest is resumed single-threaded, which is slower; \
             `cargo xtask setup` installs QEMU 10 from backports)",
            v.0, v.1, v.2, MIN_GOOD.0, MIN_GOOD.1
        ),
        None => format!("no {BINARY} (run `cargo xtask setup`)"),
    }
}

/// Make sure a QEMU is installed, preferring one >= [`MIN_GOOD`]. Falls back to the
/// distribution's (or keeps the installed one) with a warning that names the cost.
pub fn ensure() -> Result<()> {
    let have = version();
    if let Some(v) = have.filter(|v| is_good(*v)) {
        eprintln!("[setup] QEMU {}.{}.{} present", v.0, v.1, v.2);
        return Ok(());
    }
    let can_install = crate::util::is_root() && which("apt-get").is_some();
    let backports = debian_codename().map(|c| format!("{c}-backports"));
    if let (true, Some(suite)) = (can_install, backports.as_deref()) {
        match install_from(suite) {
            Ok(()) => match version() {
                Some(v) if is_good(v) => {
                    eprintln!(
                        "[setup] QEMU {}.{}.{} installed from {suite}",
                        v.0, v.1, v.2
                    );
                    return Ok(());
                }
                v => eprintln!(
                    "[setup] warning: {suite} gave QEMU {v:?}, not {}.{}+",
                    MIN_GOOD.0, MIN_GOOD.1
                ),
            },
            Err(e) => eprintln!("[setup] warning: QEMU from {suite} not installed: {e:#}"),
        }
    }
    match have {
        // Keep what the user has: it works, only less reliably under kprobes.
        Some(_) => {
            eprintln!("[setup] warning: using {}", describe());
            Ok(())
        }
        // None at all: the distribution's package (host_packages installs it).
        None => Ok(()),
    }
}

/// `VERSION_CODENAME` of a Debian host (`bookworm`), from /etc/os-release.
fn debian_codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    os_release_codename(&text)
}

fn os_release_codename(text: &str) -> Option<String> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    (field("ID=")? == "debian")
        .then(|| field("VERSION_CODENAME="))
        .flatten()
        .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_lowercase()))
}

/// The host's sources plus `suite`, with lists and downloads kept under target/guest.
fn apt_opts(dir: &Path) -> Vec<String> {
    let d = |s: &str| dir.join(s).display().to_string();
    vec![
        format!("-oDir::Etc::SourceList={}", d("sources.list")),
        format!("-oDir::State::Lists={}", d("lists")),
        format!("-oDir::Cache={}", d("cache")),
        format!("-oDir::Cache::Archives={}", d("archives")),
        "-oAcquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
        "-oAcquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false".into(),
        "-q".into(),
    ]
}

fn install_from(suite: &str) -> Result<()> {
    let dir: PathBuf = cache_dir().join("apt-host");
    for sub in ["lists/partial", "archives/partial", "cache"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("create {}", dir.join(sub).display()))?;
    }
    let mirror = crate::kernel::mirror()?;
    // This file stands in for /etc/apt/sources.list (sources.list.d still counts): the host's
    // own lines, then the backports suite.
    let mut text = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} {suite} main\n",
        mirror.trim_end_matches('/')
    ));
    let sources = dir.join("sources.list");
    std::fs::write(&sources, text).with_context(|| format!("write {}", sources.display()))?;
    let opts = apt_opts(&dir);
    let what = format!("installing {PACKAGE} from {suite} (QEMU 10; about 60 MB)");
    crate::util::timed("setup", &what, || {
        run(Command::new("apt-get").args(&opts).arg("update"))
            .with_context(|| format!("apt-get update with {suite}: is the mirror reachable?"))?;
        let status = Command::new("apt-get")
            .args(&opts)
            .args(["install", "-y", "--no-install-recommends", "--no-remove"])
            .args(["-t", suite, PACKAGE])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("start apt-get")?;
        if !status.success() {
            bail!(
                "apt-get install -t {suite} {PACKAGE} failed ({status}); nothing was removed \
                 (--no-remove)"
            );
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright"
            ),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)"),
            Some((7, 2, 19))
        );
        assert_eq!(parse_version("QEMU emulator version 9.1"), Some((9, 1, 0)));
        assert_eq!(parse_version("garbage"), None);
        assert!(is_good((10, 0, 0)) && is_good((11, 1, 0)) && !is_good((9, 2, 4)));
    }

    #[test]
    fn codename_only_for_debian() {
        let deb = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n";
        assert_eq!(os_release_codename(deb).as_deref(), Some("bookworm"));
        let ubuntu = "ID=ubuntu\nVERSION_CODENAME=noble\n";
        assert_eq!(os_release_codename(ubuntu), None);
        assert_eq!(os_release_codename("ID=debian\n"), None);
    }
}
