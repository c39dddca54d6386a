//! Guest kernels built from Debian's kernel source, for series whose Debian image lacks what
//! the guest needs (bookworm's 6.1 image has `# CONFIG_BLK_DEV_UBLK is not set`).
//!
//! `linux-source-X.Y` is downloaded with the private apt state of `kernel.rs`, configured
//! with `make allnoconfig` + a small fragment (`xtask/kernels/<series>.config`) and
//! olddefconfig, checked option by option, built with `make -j$(nproc)`, and installed in
//! the layout of the Debian kernels (`vmlinuz`, `config`, `lib/modules/<kver>/`, `.done`)
//! under `target/guest/kernels/<kver>/` (temp, then rename). The lock file records the
//! source package version and the fragment's hash: a changed fragment is a new kernel.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::kernel::{AptState, GuestKernel, KernelSpec, LockEntry, Pkg, apt_dir};
use crate::util::{cache_dir, output, run, timed, which, workspace_root};

/// A series built from source: the suite its `linux-source-<series>` comes from.
pub struct SourceSeries {
    pub series: &'static str,
    pub suite: &'static str,
}

/// Every series built from source.
pub const SERIES: &[SourceSeries] = &[SourceSeries {
    series: "6.1",
    suite: "bookworm",
}];

pub fn series(name: &str) -> Option<&'static SourceSeries> {
    SERIES.iter().find(|s| s.series == name)
}

/// Build tools as (command or header to look for, Debian package).
const BUILD_DEPS: &[(&str, &str)] = &[
    ("gcc", "gcc"),
    ("make", "make"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("pahole", "dwarves"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("readelf", "binutils"),
    ("/usr/include/gelf.h", "libelf-dev"),
    ("/usr/include/openssl/opensslv.h", "libssl-dev"),
];

/// The Debian packages of [`BUILD_DEPS`] that are missing here.
pub fn missing_build_deps() -> Vec<&'static str> {
    let mut v: Vec<&str> = BUILD_DEPS
        .iter()
        .filter(|(what, _)| {
            if what.starts_with('/') {
                !Path::new(what).exists()
            } else {
                which(what).is_none()
            }
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    v.dedup();
    v
}

fn fragment_path(series: &str) -> PathBuf {
    workspace_root().join(format!("xtask/kernels/{series}.config"))
}

/// The config lines a fragment asks for, as (option, value); comments and blanks skipped,
/// `# CONFIG_X is not set` is the value "n".
pub fn fragment_options(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter_map(|l| {
            if let Some(rest) = l.strip_prefix("# ")
                && let Some(name) = rest.strip_suffix(" is not set")
                && name.starts_with("CONFIG_")
            {
                return Some((name.to_string(), "n".to_string()));
            }
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Every option of `fragment` whose value in the final `.config` differs, as
/// "CONFIG_X: wanted y, got m" ("not set" when absent or `is not set`).
pub fn config_mismatches(fragment: &str, config: &str) -> Vec<String> {
    let got = fragment_options(config);
    fragment_options(fragment)
        .into_iter()
        .filter_map(|(k, want)| {
            let have = got
                .iter()
                .find(|(g, _)| *g == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("n");
            (have != want).then(|| {
                let show = |v: &str| {
                    if v == "n" {
                        "not set".into()
                    } else {
                        v.to_string()
                    }
                };
                format!("{k}: wanted {}, got {}", show(&want), show(have))
            })
        })
        .collect()
}

/// FNV-1a 64 of the fragment: names the config in the lock and the `.done` marker (stable
/// across hosts; the final `.config` also records the compiler, so it is not hashed).
pub fn config_hash(fragment: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in fragment.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What `.done` holds for a build: the source package, its version, the fragment's hash.
fn done_text(pkg: &str, version: &str, hash: &str) -> String {
    format!("{pkg} {version} config={hash}\n")
}

fn kernels_dir() -> PathBuf {
    cache_dir().join("kernels")
}

/// The kernel of `spec` (a series of [`SERIES`]), built if needed. Fast (no apt) when the
/// locked build with this fragment is cached.
pub fn fetch(spec: &KernelSpec, s: &SourceSeries) -> Result<GuestKernel> {
    let frag_path = fragment_path(s.series);
    let fragment = std::fs::read_to_string(&frag_path)
        .with_context(|| format!("read the config fragment {}", frag_path.display()))?;
    let hash = config_hash(&fragment);
    let pkg_name = format!("linux-source-{}", s.series);
    let lock = crate::kernel::read_lock();
    if let Some(e) = lock.get(&spec.name)
        && e.config.as_deref() == Some(hash.as_str())
    {
        let dir = kernels_dir().join(&e.kver);
        let done = std::fs::read_to_string(dir.join(".done")).unwrap_or_default();
        if done == done_text(&pkg_name, &e.version, &hash) {
            return Ok(GuestKernel {
                kver: e.kver.clone(),
                dir,
            });
        }
    }
    let apt = AptState::new(&apt_dir())?;
    apt.update_if_stale(&[s.suite.to_string()])?;
    let pkg =
        pick(&apt.packages(s.suite)?, &pkg_name, lock.get(&spec.name)).with_context(|| {
            format!(
                "no {pkg_name} in the Debian suite {}; check that the mirror is reachable (or set \
             UBLK_DEBIAN_MIRROR)",
                s.suite
            )
        })?;
    let kver = build(&apt, &pkg, &fragment, &hash)?;
    crate::kernel::write_lock_entry(
        &spec.name,
        &LockEntry {
            kver: kver.clone(),
            version: pkg.version.clone(),
            config: Some(hash),
        },
    )?;
    Ok(GuestKernel {
        dir: kernels_dir().join(&kver),
        kver,
    })
}

/// The locked version while the suite has it, else the newest (with a warning).
fn pick(all: &[Pkg], name: &str, locked: Option<&LockEntry>) -> Option<Pkg> {
    let cands = all.iter().filter(|p| p.name == name).collect();
    crate::kernel::locked_or_newest(cands, locked.map(|l| (name, l.version.as_str())), "kernel")
}

fn ensure_build_deps() -> Result<()> {
    let missing = missing_build_deps();
    if missing.is_empty() {
        return Ok(());
    }
    crate::setup::install_packages(&missing, "to build a guest kernel")
}

/// Download, extract, configure, build, install; returns the kernel release.
fn build(apt: &AptState, pkg: &Pkg, fragment: &str, hash: &str) -> Result<String> {
    ensure_build_deps()?;
    let t = std::time::Instant::now();
    let work = kernels_dir().join(format!("{}_{}.partial", pkg.name, pkg.version));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let what = format!("downloading {} {}", pkg.name, pkg.version);
    let deb = timed("kernel", &what, || apt.download(&pkg.name, &pkg.version))?;
    let src = timed("kernel", &format!("extracting {}", pkg.name), || {
        extract(&deb, &pkg.name, &work)
    })?;
    let obj = work.join("obj");
    std::fs::create_dir_all(&obj)?;
    let frag = work.join("fragment.config");
    std::fs::write(&frag, fragment)?;
    let make = |args: &[&str]| -> Command {
        let mut c = Command::new("make");
        c.arg("-C")
            .arg(&src)
            .arg(format!("O={}", obj.display()))
            .arg("ARCH=x86_64")
            .args(args);
        c
    };
    timed(
        "kernel",
        "configuring (allnoconfig + fragment, olddefconfig)",
        || {
            let allcfg = format!("KCONFIG_ALLCONFIG={}", frag.display());
            run(make(&["-s", &allcfg, "allnoconfig"]).stdout(std::process::Stdio::null()))?;
            run(make(&["-s", "olddefconfig"]).stdout(std::process::Stdio::null()))?;
            let config = std::fs::read_to_string(obj.join(".config")).context("read .config")?;
            let bad = config_mismatches(fragment, &config);
            if !bad.is_empty() {
                bail!(
                    "the kernel config did not come out as xtask/kernels/*.config asks (a \
                 dependency is missing from the fragment, or the option does not exist in \
                 this source): {}",
                    bad.join("; ")
                );
            }
            Ok(())
        },
    )?;
    let kver = output(&mut make(&["-s", "kernelrelease"]))?
        .trim()
        .to_string();
    if kver.is_empty() {
        bail!("make kernelrelease printed nothing");
    }
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let what = format!("building {kver} (make -j{jobs} bzImage modules; BTF by pahole)");
    timed("kernel", &what, || {
        run(make(&[&format!("-j{jobs}"), "bzImage", "modules"]).stdout(std::process::Stdio::null()))
            .context("the kernel build failed (its errors are above)")
    })?;
    let out = work.join("out");
    timed(
        "kernel",
        "installing the modules (stripped; BTF kept)",
        || {
            let dest = format!("INSTALL_MOD_PATH={}", out.display());
            run(
                make(&["-s", &dest, "INSTALL_MOD_STRIP=1", "modules_install"])
                    .stdout(std::process::Stdio::null()),
            )
        },
    )?;
    let mdir = out.join("lib/modules").join(&kver);
    for link in ["build", "source"] {
        let _ = std::fs::remove_file(mdir.join(link));
    }
    std::fs::copy(obj.join("arch/x86/boot/bzImage"), out.join("vmlinuz"))
        .context("copy bzImage")?;
    std::fs::copy(obj.join(".config"), out.join("config")).context("copy .config")?;
    verify(&out, &kver)?;
    let dir = kernels_dir().join(&kver);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&out, &dir).with_context(|| format!("rename to {}", dir.display()))?;
    std::fs::write(dir.join(".done"), done_text(&pkg.name, &pkg.version, hash))?;
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "[kernel] {kver} built from {} {} in {:.1} s",
        pkg.name,
        pkg.version,
        t.elapsed().as_secs_f64()
    );
    Ok(kver)
}

/// The whole tarball: Kconfig sources every architecture's Kconfig files.
fn extract(deb: &Path, name: &str, into: &Path) -> Result<PathBuf> {
    let q = |p: &Path| crate::guest::shell_quote(&p.display().to_string());
    let script = format!(
        "set -o pipefail; dpkg-deb --fsys-tarfile {deb} | tar -xO ./usr/src/{name}.tar.xz | \
         xz -dc -T0 | tar -x -C {into}",
        deb = q(deb),
        into = q(into),
    );
    run(Command::new("bash").args(["-c", &script]))
        .with_context(|| format!("extract the kernel source from {}", deb.display()))?;
    let tree = into.join(name);
    if !tree.join("Makefile").is_file() {
        bail!("{} has no {name}/Makefile", deb.display());
    }
    Ok(tree)
}

/// What the harness needs of the result: the Debian-kernel checks, a module BTF section,
/// `modules.builtin` (the module list tolerates built-ins through it).
fn verify(out: &Path, kver: &str) -> Result<()> {
    let config = std::fs::read_to_string(out.join("config")).context("read config")?;
    crate::kernel::verify_config(&config, kver)?;
    let mdir = out.join("lib/modules").join(kver);
    if !mdir.join("modules.builtin").is_file() {
        bail!("{kver}: modules_install wrote no modules.builtin");
    }
    let ko = mdir.join("kernel/drivers/block/ublk_drv.ko");
    let sections = output(Command::new("readelf").arg("-S").arg("-W").arg(&ko))
        .with_context(|| format!("{kver}: no ublk_drv.ko to inspect"))?;
    if !sections.contains(" .BTF ") {
        bail!("{kver}: ublk_drv.ko has no .BTF section (CONFIG_DEBUG_INFO_BTF_MODULES, pahole)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_6_1_fragment_parses_and_asks_for_ublk_as_a_module() {
        let text = std::fs::read_to_string(fragment_path("6.1")).expect("fragment in the repo");
        let opts = fragment_options(&text);
        assert!(opts.contains(&("CONFIG_BLK_DEV_UBLK".into(), "m".into())));
        assert!(opts.contains(&("CONFIG_DEBUG_INFO_BTF_MODULES".into(), "y".into())));
        assert!(
            opts.iter().all(|(k, _)| k.starts_with("CONFIG_")),
            "{opts:?}"
        );
    }

    #[test]
    fn mismatches_name_the_option_and_both_values() {
        let frag = "# c\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=\"-x\"\n";
        let cfg = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=y\nCONFIG_D=\"-x\"\n";
        assert_eq!(
            config_mismatches(frag, cfg),
            vec![
                "CONFIG_B: wanted m, got y".to_string(),
                "CONFIG_C: wanted not set, got y".to_string()
            ]
        );
        assert_eq!(
            config_mismatches("CONFIG_E=y\n", "# CONFIG_E is not set\n"),
            vec!["CONFIG_E: wanted y, got not set".to_string()]
        );
        assert!(config_mismatches(frag, "CONFIG_A=y\nCONFIG_B=m\nCONFIG_D=\"-x\"\n").is_empty());
    }

    #[test]
    fn the_hash_names_the_fragment() {
        assert_eq!(config_hash(""), "cbf29ce484222325");
        assert_ne!(config_hash("CONFIG_A=y\n"), config_hash("CONFIG_A=m\n"));
        assert_eq!(config_hash("x").len(), 16);
    }

    #[test]
    fn the_locked_source_version_wins_while_the_suite_has_it() {
        let p = |v: &str| Pkg {
            suite: "bookworm".into(),
            name: "linux-source-6.1".into(),
            version: v.into(),
        };
        let all = [p("6.1.170-3"), p("6.1.176-1")];
        let e = |v: &str| LockEntry {
            kver: "6.1.170-ublk".into(),
            version: v.into(),
            config: None,
        };
        assert_eq!(
            pick(&all, "linux-source-6.1", None)
                .expect("newest")
                .version,
            "6.1.176-1"
        );
        let locked = e("6.1.170-3");
        assert_eq!(
            pick(&all, "linux-source-6.1", Some(&locked))
                .expect("locked")
                .version,
            "6.1.170-3"
        );
        let gone = e("6.1.100-1");
        assert_eq!(
            pick(&all, "linux-source-6.1", Some(&gone))
                .expect("newest")
                .version,
            "6.1.176-1"
        );
        assert!(pick(&all, "linux-source-6.12", None).is_none());
    }
}
