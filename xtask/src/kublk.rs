//! `kublk`, the kernel selftests' ublk server (tools/testing/selftests/ublk/ in the kernel
//! source, C on liburing): a server that is not ours, for the guest tests to diagnose.
//!
//! Built from the newest Debian `linux-source-X.Y` of the suites the kernels come from and the
//! newest `liburing-dev` (bookworm's 2.3 lacks what kublk uses; liburing's own headers need
//! the 6.15+ `linux/blkdev.h`). Only the selftest dir and the uapi headers it needs newer than
//! the host's are taken from the source tarball. liburing is linked statically (its .a is in
//! liburing-dev), and so is libc: the binary runs in the busybox initramfs with no libraries.
//! Cached under `target/guest/kublk/<source version>+liburing-<version>/` (temp, then rename);
//! the versions are recorded in `xtask/kublk.lock` so CI builds the same kublk while the
//! archive keeps those versions.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::kernel::{AptState, Pkg, apt_dir, dpkg_extract};
use crate::util::{cache_dir, output, timed, which, workspace_root, write_atomic};

/// Suites searched for both packages (the kernels' suites: see `kernel.rs`).
const SUITES: &[&str] = &["bookworm-backports", "trixie", "trixie-backports", "sid"];

/// uapi headers kublk needs newer than a bookworm host's `/usr/include/linux` (paths under
/// the tarball's `include/uapi/linux/`). A newer kublk failing with "linux/X.h: No such
/// file" or an undeclared `UBLK_*`/`LBMD_*` needs its header added here.
const UAPI_HEADERS: &[&str] = &["ublk_cmd.h", "io_uring.h", "io_uring/*", "blkdev.h", "fs.h"];

/// The selftest's sources that make up kublk (its Makefile: every .c but the standalone
/// utility `metadata_size.c`).
const STANDALONE: &[&str] = &["metadata_size.c"];

/// What to do when kublk cannot be built; printed with the cause.
pub const FIX_HINT: &str = "fix the cause and run `cargo xtask setup` again (a reachable \
     Debian mirror, or UBLK_DEBIAN_MIRROR; gcc and libc6-dev: apt-get install gcc libc6-dev)";

/// A built kublk.
#[derive(Debug, Clone)]
pub struct Kublk {
    pub bin: PathBuf,
    /// `linux-source-7.3 7.3.4-1~bpo13+1` (what it was built from).
    pub source: String,
}

fn lock_path() -> PathBuf {
    workspace_root().join("xtask/kublk.lock")
}

fn kublk_dir() -> PathBuf {
    cache_dir().join("kublk")
}

/// The cache dir of one build: `<source version>+liburing-<version>`.
fn build_dir(src: &Pkg, uring: &Pkg) -> PathBuf {
    kublk_dir().join(format!("{}+liburing-{}", src.version, uring.version))
}

/// kublk, built if needed. Fast (no apt) when the locked build is cached.
pub fn ensure() -> Result<Kublk> {
    let lock = parse_lock(&std::fs::read_to_string(lock_path()).unwrap_or_default());
    if let (Some(src), Some(uring)) = (locked(&lock, true), locked(&lock, false)) {
        let dir = build_dir(&src, &uring);
        if dir.join(".done").exists() {
            return Ok(Kublk {
                bin: dir.join("kublk"),
                source: format!("{} {}", src.name, src.version),
            });
        }
    }
    let apt = AptState::new(&apt_dir())?;
    let suites: Vec<String> = SUITES.iter().map(|s| s.to_string()).collect();
    apt.update_if_stale(&suites)?;
    let mut all = Vec::new();
    for s in SUITES {
        all.extend(apt.packages(s)?);
    }
    let src = pick(&all, &lock, true).with_context(|| {
        format!("no linux-source-X.Y package in the suites {SUITES:?} of the Debian archive")
    })?;
    let uring = pick(&all, &lock, false).with_context(|| {
        format!("no liburing-dev package in the suites {SUITES:?} of the Debian archive")
    })?;
    let dir = build_dir(&src, &uring);
    if !dir.join(".done").exists() {
        build(&apt, &src, &uring, &dir)?;
    }
    write_lock(&src, &uring)?;
    Ok(Kublk {
        bin: dir.join("kublk"),
        source: format!("{} {}", src.name, src.version),
    })
}

/// kublk for a guest, or None with a printed note saying why and how to fix it (the guest
/// tests then print SKIP lines; the reason also goes into the guest).
pub fn for_guest() -> std::result::Result<Kublk, String> {
    ensure().map_err(|e| {
        let why = format!("{e:#}");
        eprintln!(
            "[kublk] NOTE: kublk is not in this guest: {why}; the kublk guest tests will be \
             SKIPPED; {FIX_HINT}"
        );
        why
    })
}

fn is_source_pkg(name: &str) -> bool {
    name.strip_prefix("linux-source-")
        .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// The locked package if it is still offered, else the newest (with a warning when the lock
/// named one that is gone).
fn pick(all: &[Pkg], lock: &[(String, String)], source: bool) -> Option<Pkg> {
    let wanted = |p: &&Pkg| {
        if source {
            is_source_pkg(&p.name)
        } else {
            p.name == "liburing-dev"
        }
    };
    let l = locked(lock, source);
    crate::kernel::locked_or_newest(
        all.iter().filter(wanted).collect(),
        l.as_ref().map(|l| (l.name.as_str(), l.version.as_str())),
        "kublk",
    )
}

fn locked(lock: &[(String, String)], source: bool) -> Option<Pkg> {
    lock.iter()
        .find(|(n, _)| {
            if source {
                is_source_pkg(n)
            } else {
                n == "liburing-dev"
            }
        })
        .map(|(n, v)| Pkg {
            suite: String::new(),
            name: n.clone(),
            version: v.clone(),
        })
}

fn build(apt: &AptState, src: &Pkg, uring: &Pkg, dir: &Path) -> Result<()> {
    for tool in ["gcc", "tar", "xz"] {
        if which(tool).is_none() {
            bail!("{tool} not found: apt-get install gcc libc6-dev tar xz-utils");
        }
    }
    let mut tmp = dir.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let what = format!(
        "downloading {} {} and liburing-dev {}",
        src.name, src.version, uring.version
    );
    let (src_deb, uring_deb) = timed("kublk", &what, || {
        Ok((
            apt.download(&src.name, &src.version)?,
            apt.download(&uring.name, &uring.version)?,
        ))
    })?;
    let what = format!(
        "extracting tools/testing/selftests/ublk and {} uapi headers",
        UAPI_HEADERS.len()
    );
    let tree = timed("kublk", &what, || extract_source(&src_deb, &src.name, &tmp))?;
    dpkg_extract(&uring_deb, &tmp.join("liburing"))?;
    let what = format!("building kublk (static, liburing {})", uring.version);
    timed("kublk", &what, || compile(&tree, &tmp))?;
    check_static(&tmp.join("kublk"))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).with_context(|| format!("rename to {}", dir.display()))?;
    std::fs::write(
        dir.join(".done"),
        format!(
            "{} {}\nliburing-dev {}\n",
            src.name, src.version, uring.version
        ),
    )?;
    Ok(())
}

/// Unpack only the selftest dir and [`UAPI_HEADERS`] from the .deb's tarball (one pass
/// through the xz stream); returns the unpacked tree's top dir.
fn extract_source(deb: &Path, name: &str, into: &Path) -> Result<PathBuf> {
    let top = name.to_string(); // the tarball's top dir is named like the package
    let members: Vec<String> = std::iter::once(format!("{top}/tools/testing/selftests/ublk/*"))
        .chain(
            UAPI_HEADERS
                .iter()
                .map(|h| format!("{top}/include/uapi/linux/{h}")),
        )
        .collect();
    let script = format!(
        "set -o pipefail; dpkg-deb --fsys-tarfile {deb} | tar -xO ./usr/src/{top}.tar.xz | \
         xz -dc -T0 | tar -x --wildcards -C {into} {members}",
        deb = crate::guest::shell_quote(&deb.display().to_string()),
        into = crate::guest::shell_quote(&into.display().to_string()),
        members = members
            .iter()
            .map(|m| crate::guest::shell_quote(m))
            .collect::<Vec<_>>()
            .join(" "),
    );
    crate::util::run(Command::new("bash").args(["-c", &script]))
        .with_context(|| format!("extract kublk's sources from {}", deb.display()))?;
    let tree = into.join(&top);
    if !tree.join("tools/testing/selftests/ublk/kublk.c").is_file() {
        bail!(
            "{} has no tools/testing/selftests/ublk/kublk.c",
            deb.display()
        );
    }
    Ok(tree)
}

/// gcc the selftest's sources against the tarball's uapi headers (first on the include path)
/// and the private liburing, statically.
fn compile(tree: &Path, out: &Path) -> Result<()> {
    let sdir = tree.join("tools/testing/selftests/ublk");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&sdir)
        .with_context(|| format!("read {}", sdir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !STANDALONE.contains(&n.to_string_lossy().as_ref()))
        })
        .collect();
    sources.sort();
    let uring = out.join("liburing/usr");
    // -D_GNU_SOURCE as kselftest's lib.mk passes it (off64_t, CPU_SET_S).
    let o = Command::new("gcc")
        .args(["-O2", "-Wall", "-D_GNU_SOURCE", "-static", "-o"])
        .arg(out.join("kublk"))
        .arg("-I")
        .arg(tree.join("include/uapi"))
        .arg("-I")
        .arg(uring.join("include"))
        .args(&sources)
        .arg("-L")
        .arg(uring.join("lib/x86_64-linux-gnu"))
        .args(["-luring", "-lpthread", "-lm"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context("could not start gcc (apt-get install gcc libc6-dev)")?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let first: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("error"))
            .take(5)
            .collect();
        bail!(
            "gcc failed on kublk's sources: {}; a header kublk needs may be missing from \
             UAPI_HEADERS in xtask/src/kublk.rs",
            first.join(" | ")
        );
    }
    Ok(())
}

/// The guest has no libc: the binary must be static (`file`, else `ldd`).
fn check_static(bin: &Path) -> Result<()> {
    let file = output(Command::new("file").arg("-L").arg(bin)).unwrap_or_default();
    let is_static = if file.is_empty() {
        crate::initramfs::shared_libs(bin)?.is_empty()
    } else {
        file.contains("statically linked")
    };
    if !is_static {
        bail!(
            "{} is not statically linked ({}); libc6-dev provides libc.a",
            bin.display(),
            file.trim()
        );
    }
    Ok(())
}

// ---- lock file: `<package> <version>` per line ----

fn parse_lock(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

fn lock_text(src: &Pkg, uring: &Pkg) -> String {
    format!(
        "# kublk (tools/testing/selftests/ublk) as built by `cargo xtask setup`: <Debian package> <version>.\n\
         # Used while the archive still has them; replaced (with a warning) when they vanish.\n\
         {} {}\nliburing-dev {}\n",
        src.name, src.version, uring.version
    )
}

fn write_lock(src: &Pkg, uring: &Pkg) -> Result<()> {
    let text = lock_text(src, uring);
    if std::fs::read_to_string(lock_path()).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    write_atomic(&lock_path(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str) -> Pkg {
        Pkg {
            suite: "sid".into(),
            name: name.into(),
            version: version.into(),
        }
    }

    #[test]
    fn the_newest_versioned_source_package_is_picked() {
        let all = [
            pkg("linux-source", "7.3.4-1~bpo13+1"),
            pkg("linux-source-6.12", "6.12.117-1"),
            pkg("linux-source-7.3", "7.3.4-1~bpo13+1"),
            pkg("linux-source-7.2", "7.2.13-1"),
            pkg("liburing-dev", "2.9-1"),
            pkg("liburing-dev", "2.15-1"),
        ];
        let src = pick(&all, &[], true).expect("a source package");
        assert_eq!(
            (src.name.as_str(), src.version.as_str()),
            ("linux-source-7.3", "7.3.4-1~bpo13+1")
        );
        assert_eq!(pick(&all, &[], false).expect("liburing").version, "2.15-1");
        assert!(!is_source_pkg("linux-source"));
        assert!(!is_source_pkg("linux-source-7.3-rt"));
    }

    #[test]
    fn a_locked_version_wins_while_the_archive_has_it() {
        let all = [
            pkg("linux-source-7.2", "7.2.13-1"),
            pkg("linux-source-7.3", "7.3.4-1~bpo13+1"),
            pkg("liburing-dev", "2.15-1"),
        ];
        let lock = parse_lock(&lock_text(
            &pkg("linux-source-7.2", "7.2.13-1"),
            &pkg("liburing-dev", "2.15-1"),
        ));
        assert_eq!(lock.len(), 2);
        assert_eq!(
            pick(&all, &lock, true).expect("src").name,
            "linux-source-7.2"
        );
        // Gone from the archive: the newest replaces it.
        let lock = parse_lock("linux-source-7.1 7.1.1-1\nliburing-dev 2.15-1\n");
        assert_eq!(
            pick(&all, &lock, true).expect("src").name,
            "linux-source-7.3"
        );
    }
}
