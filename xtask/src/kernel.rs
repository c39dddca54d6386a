//! Guest kernels from Debian's archive: resolve the newest build of a series at run time (exact
//! versions vanish from backports), download with a private apt state (the host's apt lists are
//! never touched), extract, depmod, verify ublk_drv + kprobes + module BTF, and cache under
//! `target/guest/kernels/<kver>/`. Resolved versions are recorded in `xtask/guest-kernels.lock`
//! so CI is reproducible while the archive keeps them.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{cache_dir, output, run, version_cmp, workspace_root, write_atomic};

/// Which kernel to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSpec {
    /// Name used in the lock file and messages ("6.12", "6.18", "7", "trixie:6.16").
    pub name: String,
    /// Suites searched in order; the first with a match wins.
    pub suites: Vec<String>,
    /// Version prefix ("6.12", "7."); empty = newest of the suite.
    pub prefix: String,
    /// Built from Debian's `linux-source-<prefix>` (see `kernelsrc.rs`), not a Debian image.
    pub from_source: bool,
}

impl KernelSpec {
    /// The default: the newest 6.12 LTS build.
    pub fn default_spec() -> Self {
        Self::parse("6.12").expect("built-in spec parses")
    }

    /// `6.12`, `6.18`, `7` (newest 7.x), `6.1` (built from source), or `SUITE:VERSION`
    /// (e.g. `trixie-backports:6.16`).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        // Series whose Debian image lacks ublk: built from the source package instead.
        if let Some(src) = crate::kernelsrc::series(s) {
            return Ok(Self {
                name: s.into(),
                suites: vec![src.suite.into()],
                prefix: s.into(),
                from_source: true,
            });
        }
        if let Some((suite, ver)) = s.split_once(':') {
            if suite.is_empty() {
                bail!(
                    "bad kernel spec {s:?}: SUITE:VERSION needs a suite (e.g. trixie-backports:6.16)"
                );
            }
            return Ok(Self {
                name: s.into(),
                suites: vec![suite.into()],
                prefix: ver.into(),
                from_source: false,
            });
        }
        let suites: &[&str] = match s {
            "6.12" => &["bookworm-backports", "trixie"],
            "7" => &["trixie-backports", "sid"],
            v if v.starts_with("6.") => &["trixie-backports", "trixie", "bookworm-backports"],
            v if v.starts_with("7.") => &["trixie-backports", "sid"],
            _ => bail!("bad kernel spec {s:?}: use 6.12, 6.18, 7, 6.1, or SUITE:VERSION"),
        };
        let prefix = if s == "7" {
            "7.".to_string()
        } else {
            s.to_string()
        };
        Ok(Self {
            name: s.into(),
            suites: suites.iter().map(|x| x.to_string()).collect(),
            prefix,
            from_source: false,
        })
    }

    /// Whether every kernel this spec can resolve to is `min` ("7.0") or newer, judged by its
    /// version prefix (an empty prefix, the newest of a suite, is not known to be).
    pub fn at_least(&self, min: &str) -> bool {
        // The oldest kernel a prefix admits: missing components are 0 ("7." is 7.0).
        let oldest = |v: &str| -> Vec<u32> {
            let mut n: Vec<u32> = v.split('.').map_while(|p| p.parse().ok()).collect();
            n.resize(3, 0);
            n
        };
        !self.prefix.is_empty() && oldest(&self.prefix) >= oldest(min)
    }
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub kver: String,
    pub dir: PathBuf,
}

impl GuestKernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
}

/// A binary package found in a suite's Packages list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pkg {
    pub(crate) suite: String,
    pub(crate) name: String,
    pub(crate) version: String,
}

/// The locked package among `cands` while the archive still offers it, else the newest, with
/// a warning (under `who`) when the lock named one that is gone: the lock keeps CI
/// reproducible only while the archive keeps the version.
pub(crate) fn locked_or_newest(
    mut cands: Vec<&Pkg>,
    locked: Option<(&str, &str)>,
    who: &str,
) -> Option<Pkg> {
    cands.sort_by(|a, b| version_cmp(&a.version, &b.version));
    if let Some((name, version)) = locked
        && let Some(p) = cands
            .iter()
            .find(|p| p.name == name && p.version == version)
    {
        return Some((*p).clone());
    }
    let newest = cands.last().map(|p| (*p).clone())?;
    if let Some((name, version)) = locked {
        eprintln!(
            "[{who}] warning: locked {name} {version} is gone from the archive; using {} {} and \
             updating the lock",
            newest.name, newest.version
        );
    }
    Some(newest)
}

fn kernels_dir() -> PathBuf {
    cache_dir().join("kernels")
}
pub(crate) fn apt_dir() -> PathBuf {
    cache_dir().join("apt")
}
fn lock_path() -> PathBuf {
    workspace_root().join("xtask/guest-kernels.lock")
}

/// Resolve, download (if needed) and verify the kernel for `spec`.
pub fn fetch(spec: &KernelSpec) -> Result<GuestKernel> {
    if spec.from_source {
        let s = crate::kernelsrc::series(&spec.prefix)
            .with_context(|| format!("no source build is defined for {:?}", spec.name))?;
        return crate::kernelsrc::fetch(spec, s);
    }
    let lock = read_lock();
    // Fast path: the locked kernel is already extracted and verified.
    if let Some(e) = lock.get(&spec.name) {
        let dir = kernels_dir().join(&e.kver);
        if dir.join(".done").exists() {
            return Ok(GuestKernel {
                kver: e.kver.clone(),
                dir,
            });
        }
    }
    let apt = AptState::new(&apt_dir())?;
    apt.update_if_stale(&spec.suites)?;
    let pkg = resolve(&apt, spec, &lock)?;
    let kver = kver_of(&pkg.name);
    let dir = kernels_dir().join(&kver);
    if !dir.join(".done").exists() {
        let what = format!("fetching {} {} from {}", pkg.name, pkg.version, pkg.suite);
        crate::util::timed("kernel", &what, || extract(&apt, &pkg, &kver, &dir))?;
    }
    let entry = LockEntry {
        kver: kver.clone(),
        version: pkg.version.clone(),
        config: None,
    };
    write_lock_entry(&spec.name, &entry)?;
    Ok(GuestKernel { kver, dir })
}

/// `linux-image-6.12.95+deb12-amd64-unsigned` -> `6.12.95+deb12-amd64`.
fn kver_of(pkg: &str) -> String {
    let k = pkg.trim_start_matches("linux-image-");
    k.strip_suffix("-unsigned").unwrap_or(k).to_string()
}

/// Kernel image package names: `linux-image-<ver>[+debN]-amd64[-unsigned]`.
fn is_image_pkg(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix("linux-image-") else {
        return false;
    };
    let rest = rest.strip_suffix("-unsigned").unwrap_or(rest);
    let Some(ver) = rest.strip_suffix("-amd64") else {
        return false;
    };
    // Flavours (cloud, rt) put a dash before "-amd64": not the generic kernel.
    if ver.contains('-') {
        return false;
    }
    let numeric = ver.split('+').next().unwrap_or("");
    let version_like = !numeric.is_empty()
        && numeric.chars().all(|c| c.is_ascii_digit() || c == '.')
        && numeric.starts_with(|c: char| c.is_ascii_digit());
    // "6.1" must not match "6.12.x": require the prefix to end at a dot boundary.
    let prefix_ok = prefix.is_empty()
        || numeric == prefix.trim_end_matches('.')
        || numeric.starts_with(&format!("{}.", prefix.trim_end_matches('.')));
    version_like && prefix_ok
}

fn resolve(apt: &AptState, spec: &KernelSpec, lock: &BTreeMap<String, LockEntry>) -> Result<Pkg> {
    let mut candidates = Vec::new();
    for suite in &spec.suites {
        let pkgs = apt.packages(suite)?;
        let mut matching: Vec<Pkg> = pkgs
            .into_iter()
            .filter(|p| is_image_pkg(&p.name, &spec.prefix))
            .collect();
        // Prefer -unsigned over signed for the same kernel (same image, the signature is moot
        // under QEMU), then newest version.
        matching.sort_by(|a, b| {
            version_cmp(&a.version, &b.version).then(a.name.len().cmp(&b.name.len()))
        });
        if !matching.is_empty() {
            candidates = matching;
            break;
        }
    }
    if candidates.is_empty() {
        bail!(
            "no linux-image for kernel {:?} in suites {:?} of the Debian archive; check that the mirror in /etc/apt is reachable (or set UBLK_DEBIAN_MIRROR), or pick another --kernel",
            spec.name,
            spec.suites
        );
    }
    if let Some(e) = lock.get(&spec.name)
        && let Some(p) = candidates
            .iter()
            .find(|p| kver_of(&p.name) == e.kver && p.version == e.version)
    {
        return Ok(p.clone());
    }
    let newest = candidates.last().cloned().context("no candidate")?;
    if let Some(e) = lock.get(&spec.name) {
        eprintln!(
            "[kernel] warning: locked kernel {} for {:?} is gone from the archive; using {} and updating the lock",
            e.kver,
            spec.name,
            kver_of(&newest.name)
        );
    }
    Ok(newest)
}

fn extract(apt: &AptState, pkg: &Pkg, kver: &str, dir: &Path) -> Result<()> {
    // Extract into a temp dir and rename at the end: no half-written kernel under the real name.
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let deb = apt.download(&pkg.name, &pkg.version)?;
    dpkg_extract(&deb, &tmp)?;
    // 7.x: linux-image-<kver> is a stub over linux-{base,binary,modules}-<kver>.
    if find_file(&tmp, "vmlinuz").is_none() {
        for part in ["base", "binary", "modules"] {
            let deb = apt.download(&format!("linux-{part}-{kver}"), &pkg.version)?;
            dpkg_extract(&deb, &tmp)?;
        }
    }
    let usr_modules = tmp.join("usr/lib/modules");
    if usr_modules.is_dir() {
        std::fs::create_dir_all(tmp.join("lib"))?;
        std::fs::rename(&usr_modules, tmp.join("lib/modules")).context("move usr/lib/modules")?;
    }
    let mdir = tmp.join("lib/modules").join(kver);
    let vmlinuz = [
        tmp.join(format!("boot/vmlinuz-{kver}")),
        mdir.join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .with_context(|| format!("no vmlinuz in {} {}", pkg.name, pkg.version))?;
    let config = [tmp.join(format!("boot/config-{kver}")), mdir.join("config")]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("no kernel config in {}", pkg.name))?;
    std::fs::copy(&vmlinuz, tmp.join("vmlinuz")).context("copy vmlinuz")?;
    std::fs::copy(&config, tmp.join("config")).context("copy config")?;
    verify_config(&std::fs::read_to_string(tmp.join("config"))?, kver)?;
    if find_file(&mdir, "ublk_drv.ko").is_none() {
        bail!(
            "kernel {kver} has CONFIG_BLK_DEV_UBLK=m but no ublk_drv.ko in its package; pick another --kernel"
        );
    }
    run(Command::new("depmod").arg("-b").arg(&tmp).arg(kver))
        .context("depmod failed (apt-get install kmod)")?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).with_context(|| format!("rename to {}", dir.display()))?;
    std::fs::write(dir.join(".done"), format!("{} {}\n", pkg.name, pkg.version))?;
    Ok(())
}

/// The guest needs ublk as a module, kprobes, BPF events and module BTF.
pub(crate) fn verify_config(config: &str, kver: &str) -> Result<()> {
    let has = |k: &str, vals: &[&str]| {
        config.lines().any(|l| {
            l.split_once('=')
                .is_some_and(|(name, v)| name == k && vals.contains(&v))
        })
    };
    let mut missing = Vec::new();
    for (k, vals) in [
        ("CONFIG_BLK_DEV_UBLK", &["m", "y"][..]),
        ("CONFIG_KPROBES", &["y"][..]),
        ("CONFIG_BPF_EVENTS", &["y"][..]),
        ("CONFIG_DEBUG_INFO_BTF_MODULES", &["y"][..]),
    ] {
        if !has(k, vals) {
            missing.push(k);
        }
    }
    if !missing.is_empty() {
        bail!(
            "kernel {kver} lacks {}; pick another --kernel",
            missing.join(", ")
        );
    }
    Ok(())
}

pub(crate) fn dpkg_extract(deb: &Path, into: &Path) -> Result<()> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(into))
        .with_context(|| format!("extract {}", deb.display()))
}

fn find_file(root: &Path, name_prefix: &str) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            let ft = e.file_type().ok()?;
            if ft.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().starts_with(name_prefix) {
                return Some(p);
            }
        }
    }
    None
}

// ---- lock file: `<spec> <kver> <package version> [config=<hash>]` per line ----

/// One kernel in the lock file. `config` is the hash of the config fragment of a kernel
/// built from source (`kernelsrc.rs`); Debian images have none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LockEntry {
    pub(crate) kver: String,
    pub(crate) version: String,
    pub(crate) config: Option<String>,
}

pub(crate) fn read_lock() -> BTreeMap<String, LockEntry> {
    let text = std::fs::read_to_string(lock_path()).unwrap_or_default();
    parse_lock(&text)
}

/// Lines of three fields (older lock files) or more; unknown extra fields are ignored.
fn parse_lock(text: &str) -> BTreeMap<String, LockEntry> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let spec = it.next()?.to_string();
            let kver = it.next()?.to_string();
            let version = it.next()?.to_string();
            let config = it.find_map(|f| f.strip_prefix("config=").map(str::to_string));
            Some((
                spec,
                LockEntry {
                    kver,
                    version,
                    config,
                },
            ))
        })
        .collect()
}

fn lock_text(lock: &BTreeMap<String, LockEntry>) -> String {
    let mut text = String::from(
        "# Guest kernels resolved by `cargo xtask setup`/`guest`: <spec> <kernel release> <Debian version>\n\
         # [config=<hash of xtask/kernels/<spec>.config>] (kernels built from Debian's linux-source).\n\
         # Used while the archive still has them; replaced (with a warning) when they vanish.\n",
    );
    for (s, e) in lock {
        text.push_str(&format!("{s} {} {}", e.kver, e.version));
        if let Some(c) = &e.config {
            text.push_str(&format!(" config={c}"));
        }
        text.push('\n');
    }
    text
}

pub(crate) fn write_lock_entry(spec: &str, entry: &LockEntry) -> Result<()> {
    let mut lock = read_lock();
    if lock.get(spec) == Some(entry) {
        return Ok(());
    }
    lock.insert(spec.to_string(), entry.clone());
    write_atomic(&lock_path(), lock_text(&lock).as_bytes())
}

// ---- private apt state ----

pub(crate) struct AptState {
    dir: PathBuf,
}

impl AptState {
    pub(crate) fn new(dir: &Path) -> Result<Self> {
        for sub in ["lists/partial", "archives/partial", "cache", "debs"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("create {}", dir.display()))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn opts(&self) -> Vec<String> {
        let d = |s: &str| self.dir.join(s).display().to_string();
        vec![
            format!("-oDir::State::Lists={}", d("lists")),
            format!("-oDir::Etc::SourceList={}", d("sources.list")),
            "-oDir::Etc::SourceParts=-".into(),
            format!("-oDir::Cache={}", d("cache")),
            format!("-oDir::Cache::Archives={}", d("archives")),
            "-oAPT::Sandbox::User=root".into(),
            "-oAcquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "-oAcquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false".into(),
            "-q".into(),
        ]
    }

    /// Refresh the lists for `suites` if they are older than an hour (or absent).
    pub(crate) fn update_if_stale(&self, suites: &[String]) -> Result<()> {
        let all = [
            "bookworm",
            "bookworm-backports",
            "trixie",
            "trixie-backports",
            "sid",
        ];
        let mut wanted: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        for s in suites {
            if !wanted.contains(s) {
                wanted.push(s.clone());
            }
        }
        let mirror = mirror()?;
        let sources: String = wanted
            .iter()
            .map(|s| {
                format!(
                    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} {s} main\n",
                    mirror.trim_end_matches('/')
                )
            })
            .collect();
        let src_path = self.dir.join("sources.list");
        let changed = std::fs::read_to_string(&src_path).ok().as_deref() != Some(sources.as_str());
        if changed {
            write_atomic(&src_path, sources.as_bytes())?;
        }
        let fresh = suites.iter().all(|s| {
            self.list_file(s)
                .and_then(|f| f.metadata().ok()?.modified().ok())
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age.as_secs() < 3600)
        });
        if fresh && !changed {
            return Ok(());
        }
        if !Path::new("/usr/share/keyrings/debian-archive-keyring.gpg").exists() {
            bail!(
                "/usr/share/keyrings/debian-archive-keyring.gpg is missing: apt-get install debian-archive-keyring"
            );
        }
        let what = format!("refreshing the package lists of {}", wanted.join(", "));
        // An unreachable suite is only a warning here; resolve() fails if nothing matches.
        let status = crate::util::timed("kernel", &what, || {
            Ok(Command::new("apt-get")
                .args(self.opts())
                .arg("update")
                .status())
        })?;
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "[kernel] warning: apt-get update reported errors (some suites unreachable?)"
            );
        }
        Ok(())
    }

    fn list_file(&self, suite: &str) -> Option<PathBuf> {
        let needle = format!("_dists_{suite}_main_binary-amd64_Packages");
        std::fs::read_dir(self.dir.join("lists"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(&needle))
            })
    }

    pub(crate) fn packages(&self, suite: &str) -> Result<Vec<Pkg>> {
        let Some(f) = self.list_file(suite) else {
            return Ok(Vec::new());
        };
        // Lists may be stored compressed (.lz4/.gz); apt-helper reads every form.
        let text = output(
            Command::new("/usr/lib/apt/apt-helper")
                .arg("cat-file")
                .arg(&f),
        )?;
        Ok(parse_packages(&text, suite))
    }

    pub(crate) fn download(&self, name: &str, version: &str) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        let find = || {
            std::fs::read_dir(&debs)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    let n = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    n.starts_with(&format!("{name}_")) && n.ends_with(".deb")
                })
        };
        if let Some(p) = find() {
            return Ok(p);
        }
        // apt-get download writes to the cwd under the final name only when complete.
        run(Command::new("apt-get")
            .args(self.opts())
            .arg("download")
            .arg(format!("{name}={version}"))
            .current_dir(&debs))
        .with_context(|| format!("download {name} {version} from the Debian archive"))?;
        find().with_context(|| format!("apt-get download left no {name}_*.deb"))
    }
}

/// The Debian mirror the system already uses (`UBLK_DEBIAN_MIRROR` overrides).
pub fn mirror() -> Result<String> {
    if let Ok(m) = std::env::var("UBLK_DEBIAN_MIRROR") {
        return Ok(m);
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(rd.flatten().map(|e| e.path()));
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        if let Some(m) = find_debian_mirror(&text) {
            return Ok(m);
        }
    }
    bail!(
        "no Debian mirror found in /etc/apt/sources.list*; set UBLK_DEBIAN_MIRROR=http://<mirror>/debian"
    )
}

fn find_debian_mirror(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| {
            (w.starts_with("http://") || w.starts_with("https://"))
                && (w.ends_with("/debian") || w.ends_with("/debian/"))
        })
        .map(|w| w.to_string())
}

fn parse_packages(text: &str, suite: &str) -> Vec<Pkg> {
    let mut out = Vec::new();
    let mut name: Option<&str> = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("Package: ") {
            name = Some(n.trim());
        } else if let Some(v) = line.strip_prefix("Version: ")
            && let Some(n) = name.take()
        {
            out.push(Pkg {
                suite: suite.into(),
                name: n.into(),
                version: v.trim().into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_is_at_least_a_kernel_when_its_oldest_match_is() {
        let p = |s: &str| KernelSpec::parse(s).expect("parses");
        assert!(p("7").at_least("7.0") && p("7.2").at_least("7.0"));
        assert!(p("6.18").at_least("6.16") && !p("6.12").at_least("6.16"));
        assert!(!p("6.12").at_least("7.0") && !p("6.18").at_least("7.0"));
        assert!(
            !p("sid:").at_least("6.1"),
            "the newest of a suite is not known"
        );
    }

    #[test]
    fn specs_parse() {
        let s = KernelSpec::parse("7").expect("7 parses");
        assert_eq!(s.prefix, "7.");
        assert_eq!(
            KernelSpec::parse("trixie-backports:6.16")
                .expect("ok")
                .suites,
            vec!["trixie-backports"]
        );
        assert!(KernelSpec::parse("banana").is_err());
        assert!(KernelSpec::parse(":6.1").is_err());
    }

    #[test]
    fn image_names_match_prefix_at_dot_boundary() {
        assert!(is_image_pkg(
            "linux-image-6.12.95+deb12-amd64-unsigned",
            "6.12"
        ));
        assert!(is_image_pkg("linux-image-6.12.95+deb12-amd64", "6.12"));
        assert!(!is_image_pkg("linux-image-6.12.95+deb12-amd64", "6.1"));
        assert!(is_image_pkg("linux-image-7.3.4+deb13-amd64", "7."));
        assert!(!is_image_pkg("linux-image-amd64", ""));
        assert!(!is_image_pkg(
            "linux-image-6.12.95+deb12-cloud-amd64",
            "6.12"
        ));
        assert!(!is_image_pkg("linux-image-6.12.95+deb12-amd64-dbg", "6.12"));
        assert_eq!(
            kver_of("linux-image-6.12.95+deb12-amd64-unsigned"),
            "6.12.95+deb12-amd64"
        );
    }

    #[test]
    fn packages_and_mirrors_parse() {
        let text = "Package: a\nVersion: 1\n\nPackage: linux-image-7.3.4+deb13-amd64\nSource: linux\nVersion: 7.3.4-1\n";
        let p = parse_packages(text, "sid");
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].version, "7.3.4-1");
        assert_eq!(
            find_debian_mirror(
                "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
            )
            .as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            find_debian_mirror("deb https://x.example/debian-security bookworm main"),
            None
        );
    }

    #[test]
    fn config_check_names_what_is_missing() {
        let ok = "CONFIG_BLK_DEV_UBLK=m\nCONFIG_KPROBES=y\nCONFIG_BPF_EVENTS=y\nCONFIG_DEBUG_INFO_BTF_MODULES=y\n";
        assert!(verify_config(ok, "k").is_ok());
        let err = verify_config("CONFIG_KPROBES=y\n", "k").expect_err("must fail");
        assert!(err.to_string().contains("CONFIG_BLK_DEV_UBLK"), "{err}");
    }

    #[test]
    fn lock_round_trip() {
        let m = parse_lock(
            "# c\n6.12 6.12.95+deb12-amd64 6.12.95-1~bpo12+1\n\n7 7.3.4+deb13-amd64 7.3.4-1\n\
             6.1 6.1.176-ublk 6.1.176-1 config=0123456789abcdef\n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m["7"].kver, "7.3.4+deb13-amd64");
        assert_eq!(m["7"].config, None, "three-field lines are Debian images");
        assert_eq!(m["6.1"].version, "6.1.176-1");
        assert_eq!(m["6.1"].config.as_deref(), Some("0123456789abcdef"));
        assert_eq!(parse_lock(&lock_text(&m)), m);
        // The lock in the repo parses.
        let repo = std::fs::read_to_string(lock_path()).expect("lock file");
        assert!(parse_lock(&repo).contains_key("6.12"));
    }

    #[test]
    fn six_one_is_built_from_source_and_six_twelve_is_not() {
        let s = KernelSpec::parse("6.1").expect("6.1 parses");
        assert!(s.from_source);
        assert_eq!(s.suites, vec!["bookworm"]);
        assert_eq!(s.prefix, "6.1");
        assert!(s.at_least("6.1") && !s.at_least("6.3"));
        for k in ["6.12", "6.18", "7", "6.16", "trixie:6.1"] {
            assert!(!KernelSpec::parse(k).expect("parses").from_source, "{k}");
        }
    }
}
