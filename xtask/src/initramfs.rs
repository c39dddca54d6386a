//! The guest's root filesystem: an uncompressed newc cpio (the kernel unpacks it into a tmpfs)
//! with a static busybox, the ublk_drv module (+ deps, decompressed: busybox insmod cannot read
//! .ko.xz), host binaries with their shared libraries, and an /init that mounts everything,
//! loads the modules, runs one command and reports its exit code on the console.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::kernel::GuestKernel;
use crate::util::output;

/// Line /init prints last; the harness reads the guest command's exit code from it.
pub const EXIT_MARKER: &str = "GUEST-EXIT-CODE=";

/// Files of the guest, by path inside the guest.
#[derive(Default)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
}

impl Tree {
    pub fn dir(&mut self, path: &str) {
        let mut cur = String::new();
        for part in path.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            cur.push('/');
            cur.push_str(part);
            self.entries.entry(cur.clone()).or_insert(Entry::Dir);
        }
    }

    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries
            .insert(path.to_string(), Entry::File { data, mode });
    }

    /// Copy a host file (following links) to `guest_path`, keeping its mode.
    pub fn copy_host(&mut self, host: &Path, guest_path: &str) -> Result<()> {
        let data = std::fs::read(host).with_context(|| format!("read {}", host.display()))?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(host)?.permissions())
            & 0o7777;
        self.file(guest_path, data, mode);
        Ok(())
    }

    /// Copy an executable plus every shared library `ldd` names, at the same paths as on the
    /// host, so host binaries run unchanged in the guest.
    pub fn copy_binary(&mut self, host: &Path, guest_path: &str, strip_debug: bool) -> Result<()> {
        if strip_debug {
            // Test binaries carry hundreds of MB of DWARF; the guest needs none of it.
            let tmp = tempfile_in_target(host)?;
            let ok = Command::new("objcopy")
                .arg("--strip-debug")
                .arg(host)
                .arg(&tmp)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            let src = if ok { tmp.as_path() } else { host };
            self.copy_host(src, guest_path)?;
            let _ = std::fs::remove_file(&tmp);
        } else {
            self.copy_host(host, guest_path)?;
        }
        for lib in shared_libs(host)? {
            let gp = lib.display().to_string();
            if !self.entries.contains_key(&gp) {
                self.copy_host(&lib, &gp)?;
            }
        }
        Ok(())
    }

    /// Serialize as a newc ("070701") cpio archive.
    pub fn write_cpio(&self, out: &Path) -> Result<()> {
        let tmp = out.with_extension("partial");
        let f = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(f);
        let mut ino = 1u32;
        for (path, e) in &self.entries {
            let name = path.trim_start_matches('/');
            let (mode, data): (u32, &[u8]) = match e {
                Entry::Dir => (0o040755, &[]),
                Entry::File { data, mode } => (0o100000 | mode, data),
            };
            write_cpio_entry(&mut w, ino, name, mode, data)?;
            ino += 1;
        }
        write_cpio_entry(&mut w, ino, "TRAILER!!!", 0, &[])?;
        w.flush()?;
        drop(w);
        std::fs::rename(&tmp, out).with_context(|| format!("rename to {}", out.display()))?;
        Ok(())
    }
}

fn tempfile_in_target(host: &Path) -> Result<PathBuf> {
    let dir = crate::util::cache_dir().join("tmp");
    std::fs::create_dir_all(&dir)?;
    let name = host
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(dir.join(format!("{name}.{}.stripped", std::process::id())))
}

fn write_cpio_entry(
    w: &mut impl Write,
    ino: u32,
    name: &str,
    mode: u32,
    data: &[u8],
) -> Result<()> {
    let namesize = name.len() + 1;
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    write!(
        w,
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        size = data.len(),
        maj = 0,
        min = 0,
        rmaj = 0,
        rmin = 0,
        check = 0
    )?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w, 110 + namesize)?;
    w.write_all(data)?;
    pad4(w, data.len())?;
    Ok(())
}

fn pad4(w: &mut impl Write, len: usize) -> Result<()> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad])?;
    Ok(())
}

/// Shared libraries of a dynamic executable (empty for static ones).
pub fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output().context("run ldd")?;
    // ldd exits 1 for static binaries ("not a dynamic executable"): no libraries.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(parse_ldd(&text))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Modules to load for `names`, dependencies first, decompressed (busybox insmod reads plain .ko).
/// A name built into the kernel (in its `modules.builtin`: ext4 and loop in the kernels built
/// from source) needs nothing; modprobe says `builtin NAME` for it.
pub fn add_modules(tree: &mut Tree, kernel: &GuestKernel, names: &[&str]) -> Result<Vec<String>> {
    let mut order = Vec::new();
    let mut builtin = 0;
    for m in names {
        let deps = output(
            Command::new("modprobe")
                .arg("-d")
                .arg(&kernel.dir)
                .arg("-S")
                .arg(&kernel.kver)
                .arg("--show-depends")
                .arg(m),
        )
        .with_context(|| format!("resolve module {m} for {}", kernel.kver))?;
        for line in deps.lines() {
            let mut it = line.split_whitespace();
            match it.next() {
                Some("insmod") => {}
                Some("builtin") => {
                    builtin += 1;
                    continue;
                }
                _ => continue,
            }
            let Some(ko) = it.next() else { continue };
            let ko = PathBuf::from(ko);
            let base = ko
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let plain = base
                .trim_end_matches(".xz")
                .trim_end_matches(".zst")
                .to_string();
            if order.contains(&plain) {
                continue;
            }
            let data = decompress(&ko)?;
            tree.file(&format!("/mod/{plain}"), data, 0o644);
            order.push(plain);
        }
    }
    if order.is_empty() && builtin < names.len() {
        bail!(
            "no module files found for {names:?} in kernel {}",
            kernel.kver
        );
    }
    Ok(order)
}

fn decompress(ko: &Path) -> Result<Vec<u8>> {
    let name = ko.display().to_string();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => std::fs::read(ko).with_context(|| format!("read {name}")),
        Some(t) => {
            let out = Command::new(t)
                .arg("-dc")
                .arg(ko)
                .output()
                .with_context(|| format!("run {t}"))?;
            if !out.status.success() {
                bail!("{t} -dc {name} failed");
            }
            Ok(out.stdout)
        }
    }
}

/// The guest's /init: mount, load modules, run /cmd.sh, report its exit code, power off.
pub fn init_script(modules: &[String]) -> String {
    let mods = modules.join(" ");
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
ip link set lo up 2>/dev/null
for m in {mods}; do insmod /mod/$m || echo "insmod $m failed"; done
ulimit -l unlimited 2>/dev/null
echo "GUEST-START uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r) cpus=$(nproc)"
export UBLK_TEST_BIN_DIR=/bin HOME=/root TERM=${{TERM:-xterm-256color}}
mkdir -p /root
cd /tmp
sh /cmd.sh
rc=$?
echo
echo "{EXIT_MARKER}$rc"
# isa-debug-exit at port 0xf4: QEMU exits with (rc<<1)|1, the interactive console's only way out.
printf "\\$(printf %o $((rc & 127)))" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
poweroff -f
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_parses() {
        let t = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            parse_ldd(t),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn cpio_is_newc_with_aligned_entries() {
        let mut t = Tree::default();
        t.file("/bin/x", b"hello".to_vec(), 0o755);
        t.file("/etc/passwd", b"root".to_vec(), 0o644);
        let dir = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let out = dir.join("t.cpio");
        t.write_cpio(&out).expect("written");
        let bytes = std::fs::read(&out).expect("read back");
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        // Entries: /bin, /bin/x, /etc, /etc/passwd, trailer.
        let s = String::from_utf8_lossy(&bytes);
        assert_eq!(s.matches("070701").count(), 5);
        assert!(s.contains("bin/x\0"));
        assert!(s.contains("hello"));
        assert!(s.contains("TRAILER!!!"));
        // With `cpio -t` available, the archive must list cleanly.
        if let Ok(o) = Command::new("cpio")
            .arg("-t")
            .stdin(std::fs::File::open(&out).expect("open"))
            .output()
        {
            let listing = String::from_utf8_lossy(&o.stdout);
            assert!(listing.contains("bin/x"), "{listing}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
