//! `cargo xtask dist`: the release for a machine without Rust. Writes `target/dist/`:
//! `ublk-toolkit-<version>-x86_64-linux.tar.gz` (static `ublk-trace` and `ublk-server`, man
//! pages, bash/zsh/fish completions, licences), `ublk-toolkit_<version>_amd64.deb` (the same
//! under /usr) and `SHA256SUMS`.
//!
//! Reproducible: paths are remapped, SOURCE_DATE_EPOCH is the commit time, archives are
//! sorted with one mtime and root:root, gzip carries no timestamp. `--check-reproducible`
//! builds everything a second time in another target dir and compares the bytes.
//! Everything is written under a temp dir and renamed into place, so a dist that fails
//! halfway leaves no partial archive.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

pub mod archive;
pub mod deb;
pub mod third_party;

use crate::util;
use archive::Entry;

/// The static glibc build: `-C target-feature=+crt-static` needs an explicit `--target`, so
/// build scripts and proc macros stay dynamic (they run on this host).
const TARGET: &str = "x86_64-unknown-linux-gnu";
const BINS: [&str; 2] = ["ublk-trace", "ublk-server"];

#[path = "../../../build/build_info.rs"]
mod build_info;

/// What one build produced, in memory: the binaries and the generated man pages and
/// completions (paths relative to `share/`).
pub struct Release {
    pub version: String,
    pub commit: String,
    pub epoch: u64,
    pub homepage: String,
    pub ublk_trace: Vec<u8>,
    pub ublk_server: Vec<u8>,
    pub generated: Vec<(String, Vec<u8>)>,
    pub license_mit: String,
    pub license_apache: String,
    /// The eBPF object inside ublk-trace is GPL-2.0-only (the kernel's GPL-only helpers).
    pub license_gpl2: String,
    pub readme: Vec<u8>,
    /// THIRD-PARTY.txt: the crates and the C library inside the executables.
    pub third_party: String,
}

/// A finished artifact: its file name and bytes, and the files it holds (to name the one
/// that differs when two builds disagree).
pub struct Artifact {
    pub name: String,
    pub data: Vec<u8>,
    pub parts: Vec<Entry>,
}

pub fn run(check_reproducible: bool) -> Result<()> {
    let started = Instant::now();
    preflight()?;
    let root = util::workspace_root();
    let epoch = source_date_epoch(&root)?;
    let out_dir = util::target_dir().join("dist");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let tmp = TempDir::new(&out_dir)?;
    let first = build_artifacts(&root, &util::target_dir().join("dist-build"), epoch, &tmp.0)?;
    if check_reproducible {
        eprintln!("[dist] --check-reproducible: second build in target/dist-build-check");
        let second_tmp = TempDir::new(&out_dir)?;
        // From scratch, so nothing is shared with the first build but the sources.
        let check_dir = util::target_dir().join("dist-build-check");
        if check_dir.exists() {
            std::fs::remove_dir_all(&check_dir)
                .with_context(|| format!("remove {}", check_dir.display()))?;
        }
        let second = build_artifacts(&root, &check_dir, epoch, &second_tmp.0)?;
        compare(&first, &second)?;
        eprintln!("[dist] reproducible: both builds gave the same bytes");
    }
    publish(&out_dir, &tmp.0, &first)?;
    eprintln!(
        "[dist] done in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        out_dir.display()
    );
    Ok(())
}

/// Fail early, with the fix, on what the build would otherwise fail on much later.
fn preflight() -> Result<()> {
    let libc_a = [
        "/usr/lib/x86_64-linux-gnu/libc.a",
        "/usr/lib64/libc.a",
        "/usr/lib/libc.a",
    ];
    if !libc_a.iter().any(|p| Path::new(p).exists()) {
        bail!("static glibc (libc.a) is missing: run 'apt-get install libc6-dev'");
    }
    if util::which("dpkg-deb").is_none() {
        bail!("dpkg-deb is missing (it builds the .deb): run 'apt-get install dpkg'");
    }
    Ok(())
}

/// SOURCE_DATE_EPOCH when set, else the commit time of HEAD.
fn source_date_epoch(root: &Path) -> Result<u64> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let s = v.to_string_lossy();
        return s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s} is not a number of seconds"));
    }
    let out = util::output(Command::new("git").arg("-C").arg(root).args([
        "log",
        "-1",
        "--format=%ct",
    ]))
    .context(
        "read the commit time for SOURCE_DATE_EPOCH (not a git checkout? set SOURCE_DATE_EPOCH)",
    )?;
    out.trim()
        .parse()
        .with_context(|| format!("git log printed {out:?}, not a time"))
}

/// The rustflags of the release build. Paths in panics and debug info are remapped so the
/// build directory does not end up in the binaries.
fn rustflags(root: &Path, target_dir: &Path) -> Result<String> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let mut flags = vec![
        "-C target-feature=+crt-static".to_string(),
        // A plain static executable (`file`: "statically linked"), not static-pie.
        "-C relocation-model=static".to_string(),
        "-C strip=symbols".to_string(),
        "-C debuginfo=0".to_string(),
    ];
    // rustc applies the last matching remap: the target dir (inside the root) comes last.
    for (from, to) in [
        (root, "ublk-toolkit"),
        (cargo_home.as_path(), "cargo-home"),
        (target_dir, "target"),
    ] {
        let from = from.to_str().context("a build path is not UTF-8")?;
        if from.contains(char::is_whitespace) {
            bail!("build path {from:?} contains whitespace; build from a path without spaces");
        }
        flags.push(format!("--remap-path-prefix={from}={to}"));
    }
    Ok(flags.join(" "))
}

fn build_binaries(root: &Path, target_dir: &Path, epoch: u64) -> Result<PathBuf> {
    eprintln!(
        "[dist] cargo build --release --target {TARGET} (static) in {}",
        target_dir.display()
    );
    let t = Instant::now();
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .args(["-p", "ublk-trace", "-p", "ublk-server"])
        .args(["--features", "ublk-trace/gen,ublk-server/gen"])
        .arg("--target-dir")
        .arg(target_dir)
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            rustflags(root, target_dir)?,
        )
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        // Flags meant for the host build must not leak into the release.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    util::run(&mut cmd).context(
        "the release build failed; if it names a missing toolchain, run 'cargo xtask setup'",
    )?;
    eprintln!("[dist] built in {:.0} s", t.elapsed().as_secs_f64());
    Ok(target_dir.join(TARGET).join("release"))
}

/// Every file under `dir`, as (relative `/` path, bytes), sorted.
fn read_tree(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
            let p = e.context("read dir entry")?.path();
            if p.is_dir() {
                walk(base, &p, out)?;
            } else {
                let rel = p
                    .strip_prefix(base)
                    .context("path outside the tree")?
                    .to_str()
                    .context("non-UTF-8 file name")?
                    .to_string();
                out.push((
                    rel,
                    std::fs::read(&p).with_context(|| format!("read {}", p.display()))?,
                ));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn read_text(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))
}

/// Build, check, generate and package: the tarball and the .deb, in memory.
fn build_artifacts(
    root: &Path,
    target_dir: &Path,
    epoch: u64,
    tmp: &Path,
) -> Result<Vec<Artifact>> {
    let bin_dir = build_binaries(root, target_dir, epoch)?;
    let mut bins = Vec::new();
    for name in BINS {
        let p = bin_dir.join(name);
        let data = std::fs::read(&p).with_context(|| format!("read {}", p.display()))?;
        if let Some(why) = archive::not_static(&data) {
            bail!("{} is not a static executable: {why}", p.display());
        }
        bins.push(data);
    }
    let gen_dir = tmp.join("generated");
    for name in BINS {
        util::run(
            Command::new(bin_dir.join(name))
                .arg("__generate")
                .arg(&gen_dir),
        )
        .with_context(|| format!("generate the man pages and completions of {name}"))?;
    }
    let release = Release {
        version: env!("CARGO_PKG_VERSION").to_string(),
        commit: head_commit(root),
        epoch,
        homepage: "https://example.invalid/ublk-toolkit".to_string(),
        ublk_server: bins.pop().context("two binaries")?,
        ublk_trace: bins.pop().context("two binaries")?,
        generated: read_tree(&gen_dir)?,
        license_mit: read_text(&root.join("LICENSE-MIT"))?,
        license_apache: read_text(&root.join("LICENSE-APACHE"))?,
        license_gpl2: read_text(&root.join("LICENSE-GPL-2.0"))?,
        readme: std::fs::read(root.join("README.md")).context("read README.md")?,
        third_party: third_party::list(root, TARGET)?,
    };
    let parts = tarball_entries(&release);
    let tarball = Artifact {
        name: tarball_name(&release.version),
        data: archive::gzip(&archive::tar(&top_dir(&release.version), &parts, epoch)?)?,
        parts,
    };
    let deb_name = deb::file_name(&release.version);
    let deb_path = tmp.join(&deb_name);
    deb::build(&release, &tmp.join("deb-root"), &deb_path)?;
    match deb::lintian(&deb_path)? {
        Some(t) if t.trim().is_empty() => eprintln!("[dist] lintian: no tags"),
        Some(t) => eprintln!("[dist] lintian (no errors):\n{}", t.trim_end()),
        None => {}
    }
    let deb = Artifact {
        name: deb_name,
        data: std::fs::read(&deb_path).context("read the .deb")?,
        parts: deb::entries(&release)?,
    };
    Ok(vec![tarball, deb])
}

/// `git rev-parse HEAD` of `root` (`unknown` outside git): the commit the release names.
pub fn head_commit(root: &Path) -> String {
    util::output(
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["rev-parse", "HEAD"]),
    )
    .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string())
}

pub fn tarball_name(version: &str) -> String {
    format!("ublk-toolkit-{version}-x86_64-linux.tar.gz")
}

fn top_dir(version: &str) -> String {
    format!("ublk-toolkit-{version}-x86_64-linux")
}

/// The tarball's tree: `bin/`, `share/man/man1/`, `share/{bash-completion,zsh,fish}/`,
/// `share/doc/ublk-toolkit/` (licences, README).
pub fn tarball_entries(r: &Release) -> Vec<Entry> {
    let doc = "share/doc/ublk-toolkit";
    let mut out = vec![
        Entry::exec("bin/ublk-trace", r.ublk_trace.clone()),
        Entry::exec("bin/ublk-server", r.ublk_server.clone()),
        Entry::file(
            format!("{doc}/LICENSE-MIT"),
            r.license_mit.clone().into_bytes(),
        ),
        Entry::file(
            format!("{doc}/LICENSE-APACHE"),
            r.license_apache.clone().into_bytes(),
        ),
        Entry::file(
            format!("{doc}/LICENSE-GPL-2.0"),
            r.license_gpl2.clone().into_bytes(),
        ),
        Entry::file(format!("{doc}/README.md"), r.readme.clone()),
        Entry::file(
            format!("{doc}/THIRD-PARTY.txt"),
            r.third_party.clone().into_bytes(),
        ),
    ];
    out.extend(
        r.generated
            .iter()
            .map(|(p, d)| Entry::file(format!("share/{p}"), d.clone())),
    );
    out
}

fn compare(a: &[Artifact], b: &[Artifact]) -> Result<()> {
    for (x, y) in a.iter().zip(b) {
        if x.data != y.data {
            let differing: Vec<&str> = x
                .parts
                .iter()
                .filter(|p| !y.parts.iter().any(|q| q == *p))
                .map(|p| p.path.as_str())
                .collect();
            bail!(
                "not reproducible: {} differs between the two builds ({} and {} bytes); files that differ: {}",
                x.name,
                x.data.len(),
                y.data.len(),
                if differing.is_empty() {
                    "none (the packaging itself)".to_string()
                } else {
                    differing.join(", ")
                }
            );
        }
    }
    Ok(())
}

/// Write each artifact next to its final name and rename it; SHA256SUMS last, so its
/// presence means the rest is complete.
fn publish(out_dir: &Path, tmp: &Path, artifacts: &[Artifact]) -> Result<()> {
    let mut sums = String::new();
    for a in artifacts {
        let staged = tmp.join(format!("{}.final", a.name));
        std::fs::write(&staged, &a.data).with_context(|| format!("write {}", staged.display()))?;
        let dest = out_dir.join(&a.name);
        std::fs::rename(&staged, &dest).with_context(|| format!("rename to {}", dest.display()))?;
        sums.push_str(&format!(
            "{}  {}\n",
            build_info::sha256_hex(&a.data),
            a.name
        ));
        eprintln!("[dist] {} ({} bytes)", dest.display(), a.data.len());
    }
    util::write_atomic(&out_dir.join("SHA256SUMS"), sums.as_bytes())?;
    Ok(())
}

/// A temp dir under `target/dist/` removed on drop, success or not.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> Result<Self> {
        let p = parent.join(format!(".partial-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(Self(p))
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
