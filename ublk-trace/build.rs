//! Builds `ublk-trace-ebpf` for bpfel-unknown-none (nightly + bpf-linker, through aya-build) and
//! leaves the object in `$OUT_DIR/ublk-trace`, which `probe/` embeds with `include_bytes_aligned!`.
use std::path::Path;
use std::process::Command;

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
}
