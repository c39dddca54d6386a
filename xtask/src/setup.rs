//! `cargo xtask setup`: everything a fresh machine lacks, installed idempotently and fast when
//! already done: Debian packages, nightly rust-src, bpf-linker (pinned, linked to nightly's
//! LLVM), the default guest kernel, and kublk (the kernel selftests' ublk server).
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{output, run, succeeds, timed, which};

/// Pinned: 0.13.0 is the release verified with aya 0.14 / aya-ebpf 0.2.1 and LLVM 22.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Host tools the harness needs, as (command to look for, Debian package).
const HOST_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("depmod", "kmod"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("dpkg-deb", "dpkg"),
    ("fio", "fio"),
    ("mkfs.ext4", "e2fsprogs"),
    ("objcopy", "binutils"),
    ("tmux", "tmux"),
];

pub fn setup(kernels: &[crate::kernel::KernelSpec]) -> Result<()> {
    let t = std::time::Instant::now();
    crate::hostqemu::ensure()?;
    host_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    for spec in kernels {
        let k = crate::kernel::fetch(spec)?;
        eprintln!("[setup] guest kernel {} ({}) ready", k.kver, spec.name);
    }
    if !kernels.is_empty() {
        // A server that is not ours for the guest tests; without it they are skipped, loudly.
        match crate::kublk::ensure() {
            Ok(k) => eprintln!("[setup] kublk from {} ready", k.source),
            Err(e) => eprintln!(
                "[setup] NOTE: kublk could not be built: {e:#}; the kublk guest tests will be \
                 SKIPPED; {}",
                crate::kublk::FIX_HINT
            ),
        }
    }
    eprintln!("[setup] done in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// The busybox we put in the guest must be the static one: the guest has no libc of its own
/// unless we copy it, and /init runs before anything is copied.
fn busybox_is_static() -> bool {
    Command::new("file")
        .arg("-L")
        .arg("/bin/busybox")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"))
        .unwrap_or_else(|_| {
            // No `file`: busybox-static installs /bin/busybox; the dynamic one lives there too,
            // so ask dpkg which package owns it.
            succeeds(Command::new("dpkg").args(["-s", "busybox-static"]))
        })
}

fn host_packages() -> Result<()> {
    let mut missing: Vec<&str> = HOST_TOOLS
        .iter()
        .filter(|(cmd, _)| which(cmd).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if which("busybox").is_some() && !busybox_is_static() {
        missing.push("busybox-static");
    }
    missing.dedup();
    if missing.is_empty() {
        eprintln!("[setup] host packages present");
        return Ok(());
    }
    install_packages(&missing, "for the harness")
}

/// Install the Debian packages `missing` (needed `why`) with apt, never removing any;
/// without root or apt, fail naming the command to run.
pub fn install_packages(missing: &[&str], why: &str) -> Result<()> {
    let line = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !crate::util::is_root() {
        bail!(
            "missing host packages {why}: {}; run as root: apt-get update && {line}",
            missing.join(", ")
        );
    }
    if which("apt-get").is_none() {
        bail!(
            "missing host packages {} and no apt-get here: install them with your package manager",
            missing.join(", ")
        );
    }
    timed("setup", "apt-get update", || {
        run(Command::new("apt-get").args(["update", "-q"]))
            .context("apt-get update failed: is a Debian mirror reachable?")
    })?;
    timed(
        "setup",
        &format!("installing {}", missing.join(" ")),
        || {
            run(Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "--no-remove",
                ])
                .args(missing)
                .env("DEBIAN_FRONTEND", "noninteractive"))
            .with_context(|| format!("{line} failed"))
        },
    )
}

fn nightly_sysroot() -> Result<PathBuf> {
    let s = output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("the nightly toolchain is needed for the eBPF crate")?;
    Ok(PathBuf::from(s.trim()))
}

fn nightly_rust_src() -> Result<()> {
    if which("rustup").is_none() {
        bail!("rustup not found: the eBPF build needs rustup with a nightly toolchain");
    }
    if nightly_sysroot().is_err() {
        timed("setup", "installing the nightly toolchain", || {
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]))
        })?;
    }
    if nightly_sysroot()?
        .join("lib/rustlib/src/rust/library")
        .is_dir()
    {
        eprintln!("[setup] nightly rust-src present");
        return Ok(());
    }
    timed("setup", "adding rust-src to nightly", || {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
    })
}

/// bpf-linker must load the same libLLVM as nightly's rustc. Its build.rs takes LLVM from
/// `$LLVM_PREFIX/lib` and bakes that dir in as RUNPATH, so we point it at a shim dir of
/// symlinks into the nightly sysroot (kept outside target/ so `cargo clean` cannot break it).
fn bpf_linker() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let llvm_so = std::fs::read_dir(&lib)
        .with_context(|| format!("read {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: nightly toolchain incomplete",
                lib.display()
            )
        })?;
    // libLLVM.so.22.1-rust-1.97.0-nightly -> 22
    let major = llvm_so
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    if major.is_empty() || !major.chars().all(|c| c.is_ascii_digit()) {
        bail!("cannot read the LLVM major version from {llvm_so}");
    }

    if linker_ok(&llvm_so) {
        eprintln!("[setup] bpf-linker {BPF_LINKER_VERSION} present (LLVM {major})");
        return Ok(());
    }
    let shim = shim_dir()?;
    let shim_lib = shim.join("lib");
    std::fs::create_dir_all(&shim_lib).with_context(|| format!("create {}", shim_lib.display()))?;
    for name in ["libLLVM.so", llvm_so.as_str()] {
        let link = shim_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm_so), &link)
            .with_context(|| format!("symlink {}", link.display()))?;
    }
    let what = format!(
        "building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (about 2 minutes)"
    );
    timed("setup", &what, || {
        run(Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &shim))
        .context("cargo install bpf-linker failed")
    })?;
    if !linker_ok(&llvm_so) {
        bail!(
            "bpf-linker was installed but does not run or is not on PATH (is ~/.cargo/bin on PATH?)"
        );
    }
    Ok(())
}

fn shim_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".local/share")
        }
    };
    Ok(base.join("ublk-toolkit/bpf-llvm-shim"))
}

/// The installed bpf-linker is the pinned version and links nightly's current libLLVM.
fn linker_ok(llvm_so: &str) -> bool {
    let Some(path) = which("bpf-linker") else {
        return false;
    };
    let version_ok = Command::new(&path)
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false);
    let ldd_ok = Command::new("ldd")
        .arg(&path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(llvm_so))
        .unwrap_or(false);
    version_ok && ldd_ok
}
