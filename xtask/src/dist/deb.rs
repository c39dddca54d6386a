//! The `.deb`: the same files under `/usr`, man pages gzipped, Debian's copyright and
//! changelog, built by `dpkg-deb` from a staging tree whose every mtime is SOURCE_DATE_EPOCH
//! (dpkg-deb sorts the entries and takes the ar timestamps from that variable).
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::Release;
use super::archive::{Entry, gzip};
use crate::util;

pub const MAINTAINER: &str = "ublk toolkit developers <ublk-toolkit@example.invalid>";

/// `ublk-toolkit_<version>_amd64.deb`.
pub fn file_name(version: &str) -> String {
    format!("ublk-toolkit_{version}_amd64.deb")
}

/// Where each file of the generated tree goes in the package.
fn deb_path(share_path: &str) -> String {
    // Debian's zsh looks in vendor-completions, not site-functions.
    let p = share_path.replacen("zsh/site-functions/", "zsh/vendor-completions/", 1);
    format!("usr/share/{p}")
}

/// The package's files (without DEBIAN/).
pub fn entries(r: &Release) -> Result<Vec<Entry>> {
    let mut out = vec![
        Entry::exec("usr/bin/ublk-trace", r.ublk_trace.clone()),
        Entry::exec("usr/bin/ublk-server", r.ublk_server.clone()),
        Entry::file(
            "usr/share/doc/ublk-toolkit/copyright",
            copyright(&r.license_mit, year(r.epoch)).into_bytes(),
        ),
        Entry::file(
            "usr/share/lintian/overrides/ublk-toolkit",
            LINTIAN_OVERRIDES.as_bytes().to_vec(),
        ),
        Entry::file(
            "usr/share/doc/ublk-toolkit/THIRD-PARTY.txt",
            r.third_party.clone().into_bytes(),
        ),
        Entry::file(
            "usr/share/doc/ublk-toolkit/changelog.gz",
            gzip(changelog(&r.version, &r.commit, r.epoch).as_bytes())?,
        ),
    ];
    for (path, data) in &r.generated {
        if path.starts_with("man/") {
            out.push(Entry::file(format!("{}.gz", deb_path(path)), gzip(data)?));
        } else {
            out.push(Entry::file(deb_path(path), data.clone()));
        }
    }
    Ok(out)
}

/// Static executables are the point of this package: it is for machines with nothing but a
/// kernel (lintian: "Usually this is a bug. Otherwise, please add an override").
const LINTIAN_OVERRIDES: &str = "\
# Static on purpose: ublk-trace and ublk-server are copied onto test machines that have no
# Rust toolchain and no matching libraries; the package ships the same files as the tarball.
ublk-toolkit: statically-linked-binary [usr/bin/ublk-server]
ublk-toolkit: statically-linked-binary [usr/bin/ublk-trace]
";

/// The calendar year of a Unix time (UTC).
fn year(epoch: u64) -> String {
    rfc2822(epoch)
        .split_whitespace()
        .nth(3)
        .unwrap_or("1970")
        .to_string()
}

/// DEP-5 copyright: MIT text inline, Apache-2.0 from common-licenses (lintian asks for that).
fn copyright(mit: &str, year: String) -> String {
    let body: String = mit
        .lines()
        .skip_while(|l| !l.starts_with("Permission"))
        .map(|l| {
            if l.trim().is_empty() {
                " .\n".to_string()
            } else {
                format!(" {l}\n")
            }
        })
        .collect();
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: ublk-toolkit\n\
         Upstream-Contact: {MAINTAINER}\n\n\
         Files: *\n\
         Copyright: {year} the ublk toolkit authors\n\
         License: MIT or Apache-2.0\n\
         Comment: the executables are statically linked; they contain the GNU C Library\n \
         (LGPL-2.1+) and Rust crates under MIT, Apache-2.0 or compatible licences, listed in\n \
         /usr/share/doc/ublk-toolkit/THIRD-PARTY.txt.\n\n\
         Files: ublk-trace-ebpf/*\n\
         Copyright: {year} the ublk toolkit authors\n\
         License: GPL-2.0-only\n\
         Comment: the eBPF programs embedded in /usr/bin/ublk-trace; the kernel lets only GPL\n \
         programs call helpers such as bpf_probe_read_kernel.\n\n\
         License: MIT\n{body}\n\
         License: Apache-2.0\n \
         On Debian systems, the full text of the Apache License, Version 2.0 can be found in\n \
         /usr/share/common-licenses/Apache-2.0.\n\n\
         License: GPL-2.0-only\n \
         On Debian systems, the full text of the GNU General Public License version 2 can be\n \
         found in /usr/share/common-licenses/GPL-2.\n"
    )
}

/// `Wed, 02 Dec 2026 03:00:00 +0000` for a Unix time (RFC 2822, as debian/changelog wants).
pub fn rfc2822(epoch: u64) -> String {
    let days = i64::try_from(epoch / 86_400).unwrap_or(0);
    let secs = epoch % 86_400;
    let (year, month, day) = ublk_trace_common::civil::from_days(days);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let wd = DAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    let mon = MONTHS[usize::try_from(month - 1).unwrap_or(0)];
    format!(
        "{wd}, {day:02} {mon} {year} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn changelog(version: &str, commit: &str, epoch: u64) -> String {
    format!(
        "ublk-toolkit ({version}) unstable; urgency=medium\n\n  \
         * Release {version}, built from commit {commit}.\n\n \
         -- {MAINTAINER}  {}\n",
        rfc2822(epoch)
    )
}

/// `Built-Using` for the statically linked glibc (Debian policy 7.8), when dpkg knows it.
fn built_using() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args([
            "-W",
            "-f=${source:Package} (= ${source:Version})",
            "libc6-dev",
        ])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn control(r: &Release, installed_kib: u64) -> String {
    let built_using = built_using()
        .map(|b| format!("Built-Using: {b}\n"))
        .unwrap_or_default();
    format!(
        "Package: ublk-toolkit\n\
         Version: {}\n\
         Architecture: amd64\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         {built_using}\
         Section: admin\n\
         Priority: optional\n\
         Homepage: {}\n\
         Description: ublk server and eBPF tracer that says why a ublk device hangs\n \
         ublk-trace shows every queue and tag of a ublk block device: where each request\n \
         is (queued in the kernel, inside the server, committed), which ones are stuck,\n \
         who waits on them and the likely root cause; doctor checks what this kernel can\n \
         trace. ublk-server is a reference ublk server (null, ramdisk, loop) that can\n \
         inject the classic server bugs on purpose.\n",
        r.version, r.homepage
    )
}

/// Write the staging tree under `stage`, with fixed modes and mtimes, and build `out`.
pub fn build(r: &Release, stage: &Path, out: &Path) -> Result<()> {
    let files = entries(r)?;
    let installed: u64 = files.iter().map(|e| e.data.len() as u64).sum::<u64>() / 1024 + 1;
    let mut md5_input = Vec::new();
    for e in &files {
        let p = stage.join(&e.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::write(&p, &e.data).with_context(|| format!("write {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode))
            .with_context(|| format!("chmod {}", p.display()))?;
        md5_input.push(e.path.clone());
    }
    md5_input.sort();
    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian).context("create DEBIAN/")?;
    std::fs::write(debian.join("control"), control(r, installed)).context("write control")?;
    let md5 = util::output(Command::new("md5sum").current_dir(stage).args(&md5_input))
        .context("md5sums (md5sum is in coreutils)")?;
    std::fs::write(debian.join("md5sums"), md5).context("write md5sums")?;
    fix_tree(stage, r.epoch)?;
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-z9", "--build"])
        .arg(stage)
        .arg(out)
        .env("SOURCE_DATE_EPOCH", r.epoch.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .context("run dpkg-deb (apt-get install dpkg)")?;
    if !status.success() {
        bail!("dpkg-deb --build failed ({status})");
    }
    Ok(())
}

/// Directories 0755, every mtime `epoch`: the tree's metadata must not depend on the umask
/// or on when it was written.
fn fix_tree(dir: &Path, epoch: u64) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let p = e.context("read dir entry")?.path();
        if p.is_dir() {
            fix_tree(&p, epoch)?;
        }
        set_mtime(&p, epoch)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.display()))?;
    set_mtime(dir, epoch)
}

fn set_mtime(p: &Path, epoch: u64) -> Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    let f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
    f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
        .with_context(|| format!("set the mtime of {}", p.display()))
}

/// Run lintian on the package when it is installed: print its tags, fail on an error (E:).
/// Returns the tags, or None without lintian.
pub fn lintian(deb: &Path) -> Result<Option<String>> {
    if util::which("lintian").is_none() {
        eprintln!("[dist] lintian not installed ('apt-get install lintian'): .deb not checked");
        return Ok(None);
    }
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .context("run lintian")?;
    let tags = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors: Vec<&str> = tags.lines().filter(|l| l.starts_with("E:")).collect();
    if !errors.is_empty() {
        bail!("lintian found errors in the .deb:\n{}", errors.join("\n"));
    }
    Ok(Some(tags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2822_dates() {
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc2822(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc2822(1_764_645_600), "Tue, 02 Dec 2025 03:20:00 +0000");
    }

    #[test]
    fn copyright_is_dep5_with_the_mit_text_as_a_paragraph() {
        let c = copyright(
            "MIT License\n\nCopyright (c) x\n\nPermission is granted.\n\nTHE END\n",
            year(1_764_645_600),
        );
        assert!(
            c.contains("Copyright: 2025 the ublk toolkit authors"),
            "{c}"
        );
        assert!(c.starts_with("Format: https://www.debian.org/doc/packaging-manuals/"));
        assert!(
            c.contains("License: MIT\n Permission is granted.\n .\n THE END\n"),
            "{c}"
        );
        assert!(c.contains("/usr/share/common-licenses/Apache-2.0"));
    }
}
