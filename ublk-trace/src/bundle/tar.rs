//! A minimal POSIX ustar writer and reader: regular files only, one 512-byte header per file,
//! two zero blocks at the end (what `tar xf` on any system reads). The `tar` crate would do
//! more than a bundle needs; this is the whole format we use.
//!
//! Header fields (POSIX.1-1988 ustar, offsets in bytes): name 0..100, mode 100..108,
//! uid 108..116, gid 116..124, size 124..136, mtime 136..148, chksum 148..156, typeflag 156,
//! linkname 157..257, magic 257..263 (`ustar\0`), version 263..265 (`00`), uname 265..297,
//! gname 297..329, devmajor 329..337, devminor 337..345, prefix 345..500. Numbers are octal
//! text; the checksum is the byte sum of the header with the chksum field read as spaces.
use std::io::Write;

/// Size of a header and of the blocks file data is padded to.
pub const BLOCK: usize = 512;
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
/// The largest size an 11-digit octal field holds (8 GiB - 1).
const MAX_SIZE: u64 = 0o77777777777;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("path {0:?} cannot be stored in a ustar header (too long, not ASCII or empty)")]
    BadPath(String),
    #[error("{path}: {size} bytes is more than a ustar header can describe")]
    TooBig { path: String, size: u64 },
    #[error("write the archive: {0}")]
    Io(#[from] std::io::Error),
    #[error("archive damaged at byte {offset}: {reason}")]
    Damaged { offset: usize, reason: String },
}

/// One file in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// `/`-separated relative path.
    pub path: String,
    pub data: Vec<u8>,
}

/// Writes ustar entries to `out`; [`TarWriter::finish`] writes the end-of-archive blocks.
pub struct TarWriter<W: Write> {
    out: W,
    /// Seconds since the Unix epoch stamped on every entry.
    mtime: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W, mtime: u64) -> Self {
        Self { out, mtime }
    }

    /// Append a regular file (mode 0644).
    pub fn append(&mut self, path: &str, data: &[u8]) -> Result<(), TarError> {
        let header = header(path, data.len() as u64, self.mtime)?;
        self.out.write_all(&header)?;
        self.out.write_all(data)?;
        let pad = padding(data.len());
        self.out.write_all(&[0u8; BLOCK][..pad])?;
        Ok(())
    }

    /// End the archive (two zero blocks) and hand back the writer.
    pub fn finish(mut self) -> Result<W, TarError> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Bytes of zero padding after `len` bytes of data.
fn padding(len: usize) -> usize {
    (BLOCK - len % BLOCK) % BLOCK
}

/// Split `path` into (prefix, name) so that name fits 100 bytes and prefix 155.
fn split_path(path: &str) -> Option<(&str, &str)> {
    if path.len() <= NAME_LEN {
        return Some(("", path));
    }
    // The split must be at a '/', which is dropped (the reader joins with '/').
    path.char_indices()
        .filter(|&(_, c)| c == '/')
        .map(|(i, _)| i)
        .find(|&i| i <= PREFIX_LEN && path.len() - i - 1 <= NAME_LEN && i > 0)
        .map(|i| (&path[..i], &path[i + 1..]))
}

/// `n` as zero-padded octal filling `field.len() - 1` digits, then NUL.
fn put_octal(field: &mut [u8], n: u64) {
    let digits = field.len() - 1;
    let text = format!("{n:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

fn header(path: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK], TarError> {
    let bad = || TarError::BadPath(path.to_string());
    if path.is_empty() || !path.is_ascii() || path.starts_with('/') || path.contains('\0') {
        return Err(bad());
    }
    if size > MAX_SIZE {
        return Err(TarError::TooBig {
            path: path.to_string(),
            size,
        });
    }
    let (prefix, name) = split_path(path).ok_or_else(bad)?;
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut h[100..108], 0o644);
    put_octal(&mut h[108..116], 0);
    put_octal(&mut h[116..124], 0);
    put_octal(&mut h[124..136], size);
    put_octal(&mut h[136..148], mtime.min(MAX_SIZE));
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    // Six octal digits, NUL, space: the customary form.
    put_octal(&mut h[148..155], u64::from(sum));
    h[155] = b' ';
    Ok(h)
}

/// An octal field: digits, optionally surrounded by spaces and ended by NUL.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let t = text.trim_matches(|c| c == '\0' || c == ' ');
    if t.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(t, 8).ok()
}

/// A NUL-terminated text field.
fn parse_text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Every regular file of a ustar archive held in memory, in archive order. Directories,
/// links and pax/GNU extension records are skipped; a bad checksum or a truncated file is
/// an error naming its offset.
pub fn read_entries(archive: &[u8]) -> Result<Vec<TarEntry>, TarError> {
    let mut out = Vec::new();
    let mut off = 0usize;
    loop {
        let damaged = |reason: &str| TarError::Damaged {
            offset: off,
            reason: reason.to_string(),
        };
        let Some(h) = archive.get(off..off + BLOCK) else {
            // No end-of-archive blocks: accept what was complete (GNU tar warns likewise).
            if off == archive.len() && !out.is_empty() {
                return Ok(out);
            }
            return Err(damaged("archive ends inside a header (truncated file?)"));
        };
        if h.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        let stored = parse_octal(&h[148..156]).ok_or_else(|| damaged("checksum is not octal"))?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| u64::from(if (148..156).contains(&i) { b' ' } else { b }))
            .sum();
        if stored != sum {
            return Err(damaged(&format!(
                "header checksum {stored} != computed {sum} (not a tar archive, or damaged)"
            )));
        }
        let size = parse_octal(&h[124..136]).ok_or_else(|| damaged("size is not octal"))?;
        let size = usize::try_from(size).map_err(|_| damaged("size too large"))?;
        let data_start = off + BLOCK;
        let data = archive
            .get(data_start..data_start.saturating_add(size))
            .ok_or_else(|| damaged("file data is truncated"))?;
        let name = parse_text(&h[..NAME_LEN]);
        let prefix = if &h[257..262] == b"ustar" {
            parse_text(&h[345..345 + PREFIX_LEN])
        } else {
            String::new()
        };
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if matches!(h[156], b'0' | 0) && !path.ends_with('/') {
            out.push(TarEntry {
                path,
                data: data.to_vec(),
            });
        }
        off = data_start + size + padding(size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new(), 1_700_000_000);
        for (p, d) in entries {
            w.append(p, d).expect("append");
        }
        w.finish().expect("finish")
    }

    #[test]
    fn round_trip_keeps_paths_and_bytes() {
        let long = format!("root/{}/file.txt", "d".repeat(120));
        let big: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8).collect();
        let files: Vec<(&str, &[u8])> = vec![
            ("root/MANIFEST.json", b"{}"),
            ("root/empty", b""),
            ("root/exact", &[7u8; 512]),
            ("root/dev0/big.bin", &big),
            (&long, b"long path"),
        ];
        let a = archive(&files);
        assert_eq!(a.len() % BLOCK, 0);
        let back = read_entries(&a).expect("read");
        let got: Vec<(&str, &[u8])> = back
            .iter()
            .map(|e| (e.path.as_str(), e.data.as_slice()))
            .collect();
        assert_eq!(got, files);
    }

    #[test]
    fn header_is_valid_ustar() {
        let h = header("a/b.txt", 5, 0o1234).expect("header");
        assert_eq!(&h[257..263], b"ustar\0");
        assert_eq!(&h[124..136], b"00000000005\0");
        assert_eq!(&h[136..148], b"00000001234\0");
        assert_eq!(h[156], b'0');
        // The stored checksum equals the sum with the field as spaces.
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| u64::from(if (148..156).contains(&i) { b' ' } else { b }))
            .sum();
        assert_eq!(parse_octal(&h[148..156]), Some(sum));
    }

    #[test]
    fn unstorable_paths_are_refused() {
        let mut w = TarWriter::new(Vec::new(), 0);
        assert!(matches!(w.append("", b""), Err(TarError::BadPath(_))));
        assert!(matches!(w.append("/abs", b""), Err(TarError::BadPath(_))));
        assert!(matches!(w.append("é", b""), Err(TarError::BadPath(_))));
        let no_slash = "x".repeat(101);
        assert!(matches!(
            w.append(&no_slash, b""),
            Err(TarError::BadPath(_))
        ));
    }

    #[test]
    fn damage_is_reported_with_its_offset() {
        let mut a = archive(&[("r/a", b"hello"), ("r/b", b"world")]);
        // Corrupt the second header's name: its checksum no longer matches.
        a[BLOCK * 2] ^= 0x20;
        match read_entries(&a) {
            Err(TarError::Damaged { offset, .. }) => assert_eq!(offset, 2 * BLOCK),
            other => panic!("expected damage at the second header, got {other:?}"),
        }
        let short = archive(&[("r/a", &[1u8; 600])]);
        assert!(matches!(
            read_entries(&short[..BLOCK + 100]),
            Err(TarError::Damaged { .. })
        ));
        assert!(read_entries(b"not a tar archive at all").is_err());
    }

    #[test]
    fn directories_and_extension_records_are_skipped() {
        let mut a = archive(&[("r/a", b"x")]);
        // Prepend a directory entry as GNU tar writes one.
        let mut dir = header("r/", 0, 0).expect("header");
        dir[156] = b'5';
        dir[148..156].copy_from_slice(b"        ");
        let sum: u32 = dir.iter().map(|&b| u32::from(b)).sum();
        put_octal(&mut dir[148..155], u64::from(sum));
        let mut with_dir = dir.to_vec();
        with_dir.append(&mut a);
        let e = read_entries(&with_dir).expect("read");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].path, "r/a");
    }
}
