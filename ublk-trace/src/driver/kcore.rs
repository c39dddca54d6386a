//! The memory source: kernel virtual memory read through `/proc/kcore` (an ELF core file whose
//! PT_LOAD headers map kernel virtual addresses to file offsets, as drgn reads it), behind the
//! small [`Memory`] trait so the walkers also run over a synthetic image in host tests.
//!
//! Live memory is read without locks: a read can see a structure mid-update, or memory freed
//! and reused under it. Callers validate what they read and read twice (see `queue.rs`).
use std::fs::File;
use std::os::unix::fs::FileExt;

pub const KCORE_PATH: &str = "/proc/kcore";

/// Why a read of kernel memory failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    #[error("0x{addr:x} is not a kernel address")]
    NotKernel { addr: u64 },
    #[error("0x{addr:x} is not aligned to {align} bytes")]
    Misaligned { addr: u64, align: u64 },
    #[error("0x{addr:x} (+{len} bytes) is outside every /proc/kcore segment")]
    Unmapped { addr: u64, len: usize },
    #[error("read 0x{addr:x} (+{len} bytes): {msg}")]
    Io { addr: u64, len: usize, msg: String },
}

/// Kernel virtual memory, readable by address.
pub trait Memory {
    /// Fill `buf` from kernel virtual address `addr` (all of it, or an error).
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError>;
}

/// Lowest kernel virtual address: the upper canonical half with 5-level paging (x86-64 LA57,
/// which QEMU's `-cpu max` guests boot with: the direct map sits at 0xff11...), which also
/// covers 4-level paging's 0xffff_8000_0000_0000. User space ends at 0x00ff_ffff_ffff_ffff.
pub const KERNEL_MIN: u64 = 0xff00_0000_0000_0000;

/// `addr` can be a pointer to a kernel object aligned to `align`: in the kernel half, not in
/// the last page (ERR_PTR values), aligned.
pub fn check_ptr(addr: u64, align: u64) -> Result<u64, MemError> {
    if !(KERNEL_MIN..=u64::MAX - 4096).contains(&addr) {
        return Err(MemError::NotKernel { addr });
    }
    if align > 1 && !addr.is_multiple_of(align) {
        return Err(MemError::Misaligned { addr, align });
    }
    Ok(addr)
}

/// One PT_LOAD program header of /proc/kcore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub size: u64,
}

const ELF_HDR_LEN: usize = 64;
const PT_LOAD: u32 = 1;
const ET_CORE: u16 = 4;
/// `e_phnum` escape to a section header count; kcore never writes it.
const PN_XNUM: u16 = 0xffff;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Where the program headers are: (e_phoff, e_phentsize, e_phnum), from the ELF header.
pub fn parse_elf_header(h: &[u8]) -> Result<(u64, u16, u16), String> {
    if h.get(0..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    // EI_CLASS 2 = 64-bit, EI_DATA 1 = little-endian: the kernels this tool reads.
    if h.get(4) != Some(&2) || h.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF".into());
    }
    if u16_at(h, 16) != Some(ET_CORE) {
        return Err("not an ELF core file".into());
    }
    let phoff = u64_at(h, 32).ok_or("short ELF header")?;
    let phentsize = u16_at(h, 54).ok_or("short ELF header")?;
    let phnum = u16_at(h, 56).ok_or("short ELF header")?;
    if phnum == PN_XNUM || phentsize < 56 {
        return Err(format!(
            "unsupported program headers (phnum {phnum}, size {phentsize})"
        ));
    }
    Ok((phoff, phentsize, phnum))
}

/// The PT_LOAD segments of a program header table, sorted by address.
pub fn parse_segments(phdrs: &[u8], phentsize: u16, phnum: u16) -> Vec<Segment> {
    let mut segs: Vec<Segment> = (0..usize::from(phnum))
        .filter_map(|i| {
            let p = phdrs.get(i * usize::from(phentsize)..)?;
            (u32_at(p, 0)? == PT_LOAD).then_some(())?;
            Some(Segment {
                offset: u64_at(p, 8)?,
                vaddr: u64_at(p, 16)?,
                size: u64_at(p, 32)?,
            })
        })
        .filter(|s| s.size > 0)
        .collect();
    segs.sort_by_key(|s| s.vaddr);
    segs
}

/// The file offset of `[addr, addr + len)` when one segment holds all of it.
pub fn file_offset(segs: &[Segment], addr: u64, len: usize) -> Option<u64> {
    let i = segs.partition_point(|s| s.vaddr <= addr).checked_sub(1)?;
    let s = segs.get(i)?;
    let rel = addr - s.vaddr;
    (rel.checked_add(len as u64)? <= s.size).then(|| s.offset + rel)
}

/// `/proc/kcore`, opened once (the open is the expensive, privileged part) and read with
/// `pread` at the offsets its program headers give.
pub struct Kcore {
    file: File,
    segments: Vec<Segment>,
}

impl Kcore {
    pub fn open() -> std::io::Result<Self> {
        Self::open_path(KCORE_PATH)
    }

    pub fn open_path(path: &str) -> std::io::Result<Self> {
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let file = File::open(path)?;
        let mut hdr = [0u8; ELF_HDR_LEN];
        file.read_exact_at(&mut hdr, 0)?;
        let (phoff, phentsize, phnum) = parse_elf_header(&hdr).map_err(bad)?;
        let mut phdrs = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
        file.read_exact_at(&mut phdrs, phoff)?;
        let segments = parse_segments(&phdrs, phentsize, phnum);
        if segments.is_empty() {
            return Err(bad(format!("{path} has no PT_LOAD segment")));
        }
        Ok(Self { file, segments })
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }
}

impl Memory for Kcore {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        check_ptr(addr, 1)?;
        let len = buf.len();
        let off = file_offset(&self.segments, addr, len).ok_or(MemError::Unmapped { addr, len })?;
        self.file.read_exact_at(buf, off).map_err(|e| MemError::Io {
            addr,
            len,
            msg: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 core header with two PT_LOAD segments and one PT_NOTE.
    fn synthetic_core() -> Vec<u8> {
        let mut b = vec![0u8; 64 + 3 * 56];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&ET_CORE.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&3u16.to_le_bytes());
        let ph = |b: &mut Vec<u8>, i: usize, ty: u32, off: u64, vaddr: u64, size: u64| {
            let p = 64 + i * 56;
            b[p..p + 4].copy_from_slice(&ty.to_le_bytes());
            b[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            b[p + 16..p + 24].copy_from_slice(&vaddr.to_le_bytes());
            b[p + 32..p + 40].copy_from_slice(&size.to_le_bytes());
        };
        ph(&mut b, 0, 4, 0x100, 0, 0x40); // PT_NOTE: ignored
        ph(
            &mut b,
            1,
            PT_LOAD,
            0x7fff_0000_2000,
            0xffff_ffff_c000_0000,
            0x1000,
        );
        ph(&mut b, 2, PT_LOAD, 0x1000, 0xffff_8880_0000_0000, 0x10_0000);
        b
    }

    #[test]
    fn kcore_header_maps_vaddr_to_file_offset() {
        let b = synthetic_core();
        let (phoff, size, n) = parse_elf_header(&b).expect("valid header");
        assert_eq!((phoff, size, n), (64, 56, 3));
        let segs = parse_segments(&b[64..], size, n);
        assert_eq!(segs.len(), 2, "PT_NOTE left out: {segs:?}");
        assert_eq!(segs[0].vaddr, 0xffff_8880_0000_0000, "sorted by address");
        assert_eq!(
            file_offset(&segs, 0xffff_8880_0000_0010, 8),
            Some(0x1010),
            "direct map"
        );
        assert_eq!(
            file_offset(&segs, 0xffff_ffff_c000_0ff8, 8),
            Some(0x7fff_0000_2ff8),
            "module area"
        );
        // Straddling the end of a segment, or between segments: not readable.
        assert_eq!(file_offset(&segs, 0xffff_ffff_c000_0ffc, 8), None);
        assert_eq!(file_offset(&segs, 0xffff_9000_0000_0000, 8), None);
        assert_eq!(file_offset(&segs, 0x1000, 8), None);
    }

    #[test]
    fn bad_headers_are_errors_not_panics() {
        assert!(parse_elf_header(b"").is_err());
        assert!(parse_elf_header(&[0u8; 64]).is_err());
        let mut b = synthetic_core();
        b[4] = 1; // 32-bit
        assert!(parse_elf_header(&b).is_err());
        let mut b = synthetic_core();
        b[16] = 2; // ET_EXEC
        assert!(parse_elf_header(&b).is_err());
        // A table shorter than phnum says yields what is there.
        assert_eq!(
            parse_segments(&synthetic_core()[64..64 + 56 * 2], 56, 3).len(),
            1
        );
    }

    #[test]
    fn pointers_are_checked_for_range_and_alignment() {
        assert!(check_ptr(0xffff_8880_0000_0008, 8).is_ok());
        assert!(matches!(
            check_ptr(0x7fff_0000_0000, 8),
            Err(MemError::NotKernel { .. })
        ));
        assert!(matches!(check_ptr(0, 8), Err(MemError::NotKernel { .. })));
        // ERR_PTR(-ENOENT)
        assert!(check_ptr((-2i64) as u64, 1).is_err());
        assert!(matches!(
            check_ptr(0xffff_8880_0000_0004, 8),
            Err(MemError::Misaligned { .. })
        ));
    }

    #[test]
    fn reads_a_synthetic_core_file() {
        let dir = std::env::temp_dir().join(format!("kcore-test-{}", std::process::id()));
        let mut b = synthetic_core();
        b.resize(0x1000 + 0x100, 0);
        b[0x1000 + 0x20..0x1000 + 0x28].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        // Only the direct-map segment lies inside this file.
        std::fs::write(&dir, &b).expect("write temp file");
        let k = Kcore::open_path(dir.to_str().expect("utf-8 temp path")).expect("opens");
        let mut v = [0u8; 8];
        k.read(0xffff_8880_0000_0020, &mut v).expect("reads");
        assert_eq!(u64::from_le_bytes(v), 0x1122_3344_5566_7788);
        assert!(matches!(
            k.read(0xffff_8880_0000_0f00, &mut [0u8; 8]),
            Err(MemError::Io { .. })
        ));
        assert!(matches!(
            k.read(0xffff_9000_0000_0000, &mut v),
            Err(MemError::Unmapped { .. })
        ));
        let _ = std::fs::remove_file(&dir);
    }
}
