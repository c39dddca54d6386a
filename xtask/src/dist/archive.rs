//! Reproducible archive bytes: a ustar writer with sorted entries, fixed owner (root:root) and
//! one mtime, gzip without a timestamp or file name, and the static-executable check.
use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result, bail};

/// One file of a package tree: its path (relative, `/`-separated), mode and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

impl Entry {
    pub fn file(path: impl Into<String>, data: Vec<u8>) -> Self {
        Self {
            path: path.into(),
            mode: 0o644,
            data,
        }
    }

    pub fn exec(path: impl Into<String>, data: Vec<u8>) -> Self {
        Self {
            path: path.into(),
            mode: 0o755,
            data,
        }
    }
}

/// Every parent directory of `entries`, each once, in path order.
fn directories(entries: &[Entry]) -> Vec<String> {
    let mut dirs = std::collections::BTreeSet::new();
    for e in entries {
        let mut p = e.path.as_str();
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            dirs.insert(p.to_string());
        }
    }
    dirs.into_iter().collect()
}

fn octal(field: &mut [u8], value: u64) -> Result<()> {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        bail!("{value} does not fit a {digits}-digit tar field");
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

/// One 512-byte ustar header.
fn header(path: &str, mode: u32, size: u64, mtime: u64, dir: bool) -> Result<[u8; 512]> {
    let mut h = [0u8; 512];
    let name = if dir {
        format!("{path}/")
    } else {
        path.to_string()
    };
    // ustar splits long names at a '/' into prefix (155) and name (100).
    let (prefix, base) = if name.len() <= 100 {
        ("", name.as_str())
    } else {
        let cut = name[..name.len().min(156)]
            .rfind('/')
            .filter(|&i| name.len() - i - 1 <= 100)
            .with_context(|| format!("tar path too long for ustar: {name}"))?;
        (&name[..cut], &name[cut + 1..])
    };
    h[..base.len()].copy_from_slice(base.as_bytes());
    octal(&mut h[100..108], u64::from(mode))?;
    octal(&mut h[108..116], 0)?; // uid
    octal(&mut h[116..124], 0)?; // gid
    octal(&mut h[124..136], size)?;
    octal(&mut h[136..148], mtime)?;
    h[148..156].fill(b' ');
    h[156] = if dir { b'5' } else { b'0' };
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// A tar of `entries` (and their directories) under `top/`: sorted, root:root, every mtime
/// `mtime`, so the same files always give the same bytes.
pub fn tar(top: &str, entries: &[Entry], mtime: u64) -> Result<Vec<u8>> {
    let mut by_path: BTreeMap<String, &Entry> = BTreeMap::new();
    for e in entries {
        if by_path.insert(format!("{top}/{}", e.path), e).is_some() {
            bail!("{} is in the package twice", e.path);
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(&header(top, 0o755, 0, mtime, true)?);
    let dirs: Vec<String> = directories(entries)
        .into_iter()
        .map(|d| format!("{top}/{d}"))
        .collect();
    // Directories and files in one path order, a directory before what it holds.
    let mut all: Vec<(&str, Option<&Entry>)> = dirs.iter().map(|d| (d.as_str(), None)).collect();
    all.extend(by_path.iter().map(|(p, e)| (p.as_str(), Some(*e))));
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (path, e) in all {
        match e {
            None => out.extend_from_slice(&header(path, 0o755, 0, mtime, true)?),
            Some(e) => {
                let size = u64::try_from(e.data.len()).context("file size")?;
                out.extend_from_slice(&header(path, e.mode, size, mtime, false)?);
                out.extend_from_slice(&e.data);
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
        }
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

/// gzip at level 9 with mtime 0 and no file name (what `gzip -9n` writes).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3) // Unix, fixed whatever builds it
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data).context("gzip")?;
    enc.finish().context("gzip")
}

/// Why `elf` is not a static executable (None: it is). Static means no program interpreter
/// (PT_INTERP) and no dynamic section (PT_DYNAMIC): not even static-pie.
pub fn not_static(elf: &[u8]) -> Option<String> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) {
        return Some("not a 64-bit ELF file".into());
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Some("truncated ELF header".into());
    };
    for i in 0..usize::from(phnum) {
        let off = usize::try_from(phoff).ok()? + i * usize::from(phentsize);
        match u32_at(off) {
            Some(3) => return Some("has a program interpreter (dynamically linked)".into()),
            Some(2) => return Some("has a dynamic section (static-pie or dynamic)".into()),
            Some(_) => {}
            None => return Some("truncated program headers".into()),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards reproducibility: input order must not change the bytes.
    #[test]
    fn tar_is_sorted_and_independent_of_input_order() {
        let a = Entry::exec("bin/b", b"x".to_vec());
        let b = Entry::file("share/doc/a", b"hello".to_vec());
        let t1 = tar("top", &[a.clone(), b.clone()], 1_700_000_000).expect("tar");
        let t2 = tar("top", &[b, a], 1_700_000_000).expect("tar");
        assert_eq!(t1, t2);
        assert_eq!(t1.len() % 512, 0);
        // The first header is the top directory, then bin/, then bin/b.
        assert_eq!(&t1[..4], b"top/");
        assert_eq!(&t1[512..520], b"top/bin/");
        assert_eq!(&t1[1024..1033], b"top/bin/b");
        assert_eq!(&t1[1024 + 265..1024 + 269], b"root");
        assert_eq!(gzip(&t1).expect("gz"), gzip(&t1).expect("gz"));
        assert!(
            tar(
                "top",
                &[Entry::file("x", vec![]), Entry::file("x", vec![])],
                0
            )
            .is_err()
        );
    }

    /// What `tar` itself reads back (names, modes, sizes), when GNU tar is installed.
    #[test]
    fn gnu_tar_lists_what_was_written() {
        let t = tar(
            "top",
            &[
                Entry::exec("bin/tool", b"#!/bin/sh\n".to_vec()),
                Entry::file(format!("share/{}/f", "d".repeat(120)), b"x".to_vec()),
            ],
            0,
        )
        .expect("tar");
        let dir = std::env::temp_dir().join(format!("xtask-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("t.tar");
        std::fs::write(&f, &t).expect("write");
        let Ok(out) = std::process::Command::new("tar")
            .arg("tvf")
            .arg(&f)
            .output()
        else {
            eprintln!("SKIP: no tar");
            return;
        };
        let _ = std::fs::remove_dir_all(&dir);
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(list.contains("-rwxr-xr-x root/root"), "{list}");
        assert!(list.contains("top/bin/tool"), "{list}");
        assert!(
            list.contains(&format!("top/share/{}/f", "d".repeat(120))),
            "{list}"
        );
    }

    #[test]
    fn this_test_binary_is_not_static_and_garbage_is_refused() {
        let me = std::fs::read(std::env::current_exe().expect("exe")).expect("read self");
        assert!(
            not_static(&me).is_some(),
            "test binaries link glibc dynamically"
        );
        assert!(not_static(b"not an elf").is_some());
        assert!(not_static(b"\x7fELF\x02").is_some());
    }
}
