//! The guest harness: build the project, pack it with the tools tests need into an initramfs,
//! boot the chosen kernel, run one command, and return its exit code.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::initramfs::{Tree, add_modules, init_script};
use crate::kernel::{GuestKernel, KernelSpec};
use crate::qemu::{Accel, BootOpts, Outcome};
use crate::util::{cache_dir, which, workspace_root};

/// Project binaries copied to /bin in the guest.
pub const PROJECT_BINS: &[&str] = &["ublk-server", "ublk-trace"];
/// In a guest without kublk: why it could not be built (read by the kublk guest tests).
pub const KUBLK_MISSING: &str = "/etc/kublk.unavailable";
/// Host tools copied to /bin in the guest (with their libraries) when present.
const GUEST_TOOLS: &[&str] = &["fio", "mkfs.ext4", "e2fsck", "tmux", "stty", "timeout"];

#[derive(Debug, Clone)]
pub struct GuestOpts {
    pub kernel: KernelSpec,
    pub smp: u32,
    pub mem_mib: u32,
    pub timeout: Duration,
    pub release: bool,
    pub include: Vec<PathBuf>,
    /// Extra modules to load at boot besides ublk_drv.
    pub modules: Vec<String>,
    /// Modules copied to /mod (decompressed) but not loaded: scripts insmod them with their
    /// own parameters (null_blk for benchmarks).
    pub copy_modules: Vec<String>,
    pub accel: Option<Accel>,
}

impl GuestOpts {
    pub fn new(kernel: KernelSpec) -> Self {
        Self {
            kernel,
            smp: 2,
            mem_mib: 3072,
            timeout: Duration::from_secs(600),
            release: false,
            include: Vec::new(),
            modules: Vec::new(),
            copy_modules: Vec::new(),
            accel: None,
        }
    }
}

/// Build the project's binaries for the guest; returns the directory holding them.
pub fn build_project(release: bool) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args(["build", "--bins"]);
    for b in PROJECT_BINS {
        cmd.args(["--bin", b]);
    }
    if release {
        cmd.arg("--release");
    }
    crate::util::run(&mut cmd).context("building the project failed")?;
    Ok(crate::util::target_dir().join(if release { "release" } else { "debug" }))
}

/// Assemble the initramfs: busybox, modules, project binaries, tools, `--include`s, extra files,
/// and `/cmd.sh`. Returns its path.
pub fn make_initramfs(
    kernel: &GuestKernel,
    opts: &GuestOpts,
    bin_dir: &Path,
    cmd_sh: &str,
    extra: &[(PathBuf, String, bool)],
) -> Result<PathBuf> {
    // ext4 and loop are modules in Debian kernels: filesystem tests and `loop` targets on a
    // block device need them.
    let mut mods: Vec<&str> = vec!["ublk_drv", "ext4", "loop"];
    mods.extend(opts.modules.iter().map(String::as_str));
    let (mut t, order) = base_tree(kernel, opts, &mods)?;
    for b in PROJECT_BINS {
        let p = bin_dir.join(b);
        if !p.is_file() {
            bail!("{} not built", p.display());
        }
        t.copy_binary(&p, &format!("/bin/{b}"), false)?;
    }
    for tool in GUEST_TOOLS {
        if let Some(p) = which(tool) {
            t.copy_binary(&p, &format!("/bin/{tool}"), false)?;
        }
    }
    // kublk, the kernel's own server, as a user's `--include` would bring it (a user's own
    // `--include .../kublk` comes after and replaces it). When it could not be built, the
    // reason goes into the guest for the tests' SKIP lines.
    match crate::kublk::for_guest() {
        Ok(k) => t.copy_binary(&k.bin, "/bin/kublk", false)?,
        Err(why) => t.file(KUBLK_MISSING, format!("{why}\n").into_bytes(), 0o644),
    }
    for inc in &opts.include {
        let p = which(&inc.display().to_string())
            .or_else(|| inc.is_file().then(|| inc.clone()))
            .with_context(|| format!("--include {}: no such file", inc.display()))?;
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        t.copy_binary(&p, &format!("/bin/{name}"), false)?;
    }
    for (host, guest, strip) in extra {
        t.copy_binary(host, guest, *strip)?;
    }
    write_initramfs(t, kernel, &order, cmd_sh)
}

/// What every guest has, and nothing of the project: the mount points, a static busybox,
/// the modules `mods` (loaded at boot, in `order`) and `opts.copy_modules` (copied only),
/// and a minimal passwd. Returns the tree and the load order for [`write_initramfs`].
pub fn base_tree(
    kernel: &GuestKernel,
    opts: &GuestOpts,
    mods: &[&str],
) -> Result<(Tree, Vec<String>)> {
    let mut t = Tree::default();
    for d in [
        "/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/etc", "/mnt", "/var/tmp",
    ] {
        t.dir(d);
    }
    t.copy_host(Path::new("/bin/busybox"), "/bin/busybox")
        .context("busybox-static missing: run `cargo xtask setup`")?;
    let order = add_modules(&mut t, kernel, mods)?;
    let copy: Vec<&str> = opts.copy_modules.iter().map(String::as_str).collect();
    for m in copy {
        // /mod/<name>.order lists the module and its dependencies in load order, so a script
        // can `insmod` them all and pass its own parameters to the last one.
        let order = add_modules(&mut t, kernel, &[m])?;
        t.file(
            &format!("/mod/{m}.order"),
            order.join("\n").into_bytes(),
            0o644,
        );
    }
    // Name resolution for tools that look up users (tmux) and a minimal passwd.
    t.file(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        0o644,
    );
    t.file("/etc/group", b"root:x:0:\n".to_vec(), 0o644);
    Ok((t, order))
}

/// Add `/init` (loading `order`) and `/cmd.sh`, and write the cpio under the cache dir.
pub fn write_initramfs(
    mut t: Tree,
    kernel: &GuestKernel,
    order: &[String],
    cmd_sh: &str,
) -> Result<PathBuf> {
    t.file("/init", init_script(order).into_bytes(), 0o755);
    t.file("/cmd.sh", cmd_sh.as_bytes().to_vec(), 0o755);
    let dir = cache_dir().join("initramfs");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("{}-{}.cpio", kernel.kver, std::process::id()));
    t.write_cpio(&out)?;
    Ok(out)
}

/// Choose TCG or KVM. KVM only when asked (`UBLK_GUEST_ACCEL=kvm`) or when a cached probe
/// showed it boots this kernel: some hosts expose a /dev/kvm that cannot run stock kernels.
pub fn choose_accel(opts: &GuestOpts, kernel: &GuestKernel) -> Accel {
    if let Some(a) = opts.accel {
        return a;
    }
    match std::env::var("UBLK_GUEST_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    if !Path::new("/dev/kvm").exists() {
        return Accel::Tcg;
    }
    let verdict = cache_dir().join(format!("kvm-probe-{}", kernel.kver));
    if let Ok(v) = std::fs::read_to_string(&verdict) {
        return if v.trim() == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
    }
    let ok = probe_kvm(kernel).unwrap_or(false);
    let _ = std::fs::write(&verdict, if ok { "kvm\n" } else { "tcg\n" });
    eprintln!(
        "[guest] /dev/kvm {} this kernel; using {}",
        if ok { "boots" } else { "cannot boot" },
        if ok { "KVM" } else { "TCG" }
    );
    if ok { Accel::Kvm } else { Accel::Tcg }
}

/// Boot the kernel under KVM with a trivial /cmd.sh; true if it reached the exit marker.
fn probe_kvm(kernel: &GuestKernel) -> Result<bool> {
    let mut t = Tree::default();
    for d in ["/proc", "/sys", "/dev", "/tmp", "/run"] {
        t.dir(d);
    }
    t.copy_host(Path::new("/bin/busybox"), "/bin/busybox")?;
    t.file("/init", init_script(&[]).into_bytes(), 0o755);
    t.file("/cmd.sh", b"exit 0\n".to_vec(), 0o755);
    let out = cache_dir().join("initramfs/kvm-probe.cpio");
    std::fs::create_dir_all(cache_dir().join("initramfs"))?;
    t.write_cpio(&out)?;
    let o = BootOpts {
        vmlinuz: kernel.vmlinuz(),
        initrd: out.clone(),
        smp: 1,
        mem_mib: 512,
        timeout: Duration::from_secs(15),
        append: String::new(),
        accel: Accel::Kvm,
        single_thread_tcg: false,
        data_out: None,
    };
    let log = cache_dir().join("kvm-probe.log");
    let (outcome, _) = crate::qemu::boot_captured(&o, &log, |_| {})?;
    let _ = std::fs::remove_file(&out);
    Ok(matches!(outcome, Outcome::Exited(0)))
}

pub fn boot_opts(opts: &GuestOpts, kernel: &GuestKernel, initrd: &Path) -> BootOpts {
    BootOpts {
        vmlinuz: kernel.vmlinuz(),
        initrd: initrd.to_path_buf(),
        smp: opts.smp,
        mem_mib: opts.mem_mib,
        timeout: opts.timeout,
        append: String::new(),
        accel: choose_accel(opts, kernel),
        single_thread_tcg: false,
        data_out: None,
    }
}

/// `cargo xtask guest run -- CMD...`: run a shell command in the guest, stream the console.
pub fn run_command(opts: &GuestOpts, command: &[String]) -> Result<i32> {
    crate::setup::setup(&[])?;
    let kernel = crate::kernel::fetch(&opts.kernel)?;
    let bins = build_project(opts.release)?;
    let cmd_sh = if command.is_empty() {
        "true".to_string()
    } else {
        shell_join(command)
    };
    let initrd = make_initramfs(&kernel, opts, &bins, &format!("{cmd_sh}\n"), &[])?;
    let log = cache_dir().join("last-console.log");
    eprintln!(
        "[guest] booting {} ({} vCPU, timeout {} s)",
        kernel.kver,
        opts.smp,
        opts.timeout.as_secs()
    );
    let (outcome, lines) =
        crate::qemu::boot_captured(&boot_opts(opts, &kernel, &initrd), &log, |l| {
            println!("{l}")
        })?;
    let _ = std::fs::remove_file(&initrd);
    report_outcome(&outcome, &lines, &log);
    Ok(outcome.code())
}

/// `cargo xtask guest shell`: an interactive shell on the guest console.
pub fn shell(opts: &GuestOpts) -> Result<i32> {
    crate::setup::setup(&[])?;
    let kernel = crate::kernel::fetch(&opts.kernel)?;
    let bins = build_project(opts.release)?;
    let initrd = make_initramfs(&kernel, opts, &bins, &interactive_sh("sh -l"), &[])?;
    let (cols, rows) = terminal_size();
    eprintln!(
        "[guest] shell on {} — `poweroff -f` or `exit` leaves",
        kernel.kver
    );
    let rc = crate::qemu::boot_interactive(&boot_opts(opts, &kernel, &initrd), cols, rows)?;
    let _ = std::fs::remove_file(&initrd);
    Ok(rc)
}

/// A /cmd.sh that sizes the console from the host terminal and runs `cmd` with the console as
/// its controlling tty (crossterm needs one; see docs/guest.md).
pub fn interactive_sh(cmd: &str) -> String {
    format!(
        r#"arg() {{ sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" /proc/cmdline; }}
con=$(cat /sys/class/tty/console/active); con=${{con##* }}
s=$(arg tui_size); [ -n "$s" ] && stty -F /dev/$con cols ${{s%x*}} rows ${{s#*x}}
export TERM=xterm-256color
setsid cttyhack {cmd}
"#
    )
}

pub fn terminal_size() -> (u16, u16) {
    let out = Command::new("stty")
        .arg("size")
        .stdin(std::process::Stdio::inherit())
        .output();
    if let Ok(o) = out
        && let Some((r, c)) = String::from_utf8_lossy(&o.stdout).trim().split_once(' ')
        && let (Ok(r), Ok(c)) = (r.parse(), c.parse())
    {
        return (c, r);
    }
    (80, 24)
}

pub fn report_outcome(outcome: &Outcome, lines: &[String], log: &Path) {
    match outcome {
        Outcome::Exited(c) => eprintln!("[guest] command exited with {c}"),
        Outcome::TimedOut => {
            eprintln!("[guest] TIMEOUT: the guest did not finish; last console lines:");
            for l in lines.iter().rev().take(30).rev() {
                eprintln!("  | {l}");
            }
        }
        Outcome::Died { qemu_status } => {
            eprintln!(
                "[guest] the guest died without an exit code (panic?), qemu {qemu_status}; last console lines:"
            );
            for l in lines.iter().rev().take(40).rev() {
                eprintln!("  | {l}");
            }
        }
    }
    eprintln!("[guest] console log: {}", log.display());
}

/// Quote arguments for /bin/sh.
pub fn shell_join(args: &[String]) -> String {
    if args.len() == 1 {
        // One argument is taken as a shell command line as is (`-- 'dd ... && echo ok'`).
        return args[0].clone();
    }
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One word for /bin/sh: as is when it is plain, else single-quoted.
pub fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_join_quotes_what_needs_it() {
        assert_eq!(shell_join(&["echo hi && true".into()]), "echo hi && true");
        assert_eq!(
            shell_join(&["echo".into(), "a b".into(), "it's".into()]),
            r"echo 'a b' 'it'\''s'"
        );
        assert_eq!(shell_join(&["ls".into(), "/dev".into()]), "ls /dev");
    }
}
