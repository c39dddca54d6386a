//! Builds `ublk-trace-ebpf` for bpfel-unknown-none (nightly + bpf-linker, through aya-build) and
//! leaves the object in `$OUT_DIR/ublk-trace`, which `probe/` embeds with `include_bytes_aligned!`.
//! It also embeds what `--version` prints: the git commit, the tested guest kernels and the
//! SHA-256 of that eBPF object.
use std::path::Path;
use std::process::Command;

#[path = "../build/build_info.rs"]
mod build_info;

fn fail(msg: &str) -> ! {
    // One line the user can act on; cargo prints it as `error: ...`.
    println!("cargo::error={msg}");
    std::process::exit(1);
}

fn check_toolchain() {
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output();
    let sysroot = match sysroot {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => fail(
            "the nightly Rust toolchain is missing (needed for the eBPF programs): run `cargo xtask setup`",
        ),
    };
    if !Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library")
        .is_dir()
    {
        fail("nightly rust-src is missing (needed to build core for BPF): run `cargo xtask setup`");
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !linker_ok {
        fail("bpf-linker is missing or cannot load its LLVM: run `cargo xtask setup`");
    }
}

fn main() {
    check_toolchain();
    let meta = match cargo_metadata::MetadataCommand::new().no_deps().exec() {
        Ok(m) => m,
        Err(e) => fail(&format!("cargo metadata failed: {e}")),
    };
    let Some(pkg) = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "ublk-trace-ebpf")
    else {
        fail("package ublk-trace-ebpf not found in the workspace");
    };
    let root_dir = pkg
        .manifest_path
        .parent()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let pkg = aya_build::Package {
        name: pkg.name.as_str(),
        root_dir: &root_dir,
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([pkg], aya_build::Toolchain::default()) {
        fail(&format!("building the eBPF programs failed: {e:#}"));
    }
    embed_build_info();
}

fn embed_build_info() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let root = Path::new(&manifest).join("..");
    let commit = build_info::git_commit(&root);
    let kernels = build_info::tested_kernels(&root.join("xtask/guest-kernels.lock"));
    // The object include_bytes_aligned! embeds (absent only under AYA_BUILD_SKIP).
    let object = std::env::var_os("OUT_DIR").map(|d| Path::new(&d).join("ublk-trace"));
    let sha = object
        .and_then(|p| std::fs::read(p).ok())
        .map_or_else(|| "unknown".to_string(), |b| build_info::sha256_hex(&b));
    println!("cargo::rustc-env=UBLK_GIT_COMMIT={commit}");
    println!("cargo::rustc-env=UBLK_TESTED_KERNELS={kernels}");
    println!("cargo::rustc-env=UBLK_TRACE_EBPF_SHA256={sha}");
}
