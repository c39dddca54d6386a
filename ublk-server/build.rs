//! Embeds what `ublk-server --version` prints beyond the crate version: the git commit and the
//! guest kernels the release was tested on (`xtask/guest-kernels.lock`).
use std::path::Path;

#[path = "../build/build_info.rs"]
mod build_info;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let root = Path::new(&manifest).join("..");
    let commit = build_info::git_commit(&root);
    let kernels = build_info::tested_kernels(&root.join("xtask/guest-kernels.lock"));
    println!("cargo::rustc-env=UBLK_GIT_COMMIT={commit}");
    println!("cargo::rustc-env=UBLK_TESTED_KERNELS={kernels}");
}
