//! `loop`: a file or block device as the disk. Its I/O goes through the queue's own io_uring
//! (the file is registered there as fixed file [`BACKEND_FIXED_FD`]), so a request costs one
//! extra SQE/CQE and no syscall of its own.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use io_uring::{opcode, types};
use ublk_abi::*;

use super::{BACKEND_FIXED_FD, IoReq, Outcome, Target, TargetParams};
use crate::error::{Error, Result};

pub struct LoopFile {
    file: File,
    dev_bytes: u64,
    direct: bool,
    is_blockdev: bool,
    /// The backing file can punch holes (ramfs, some FUSE filesystems cannot).
    punch_hole: bool,
}

impl LoopFile {
    pub fn open(path: &Path, direct: bool) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| {
            Error::Usage(format!(
                "loop file {}: {e}; create it first, e.g. 'truncate -s 64M {}'",
                path.display(),
                path.display()
            ))
        })?;
        let is_blockdev = meta.file_type().is_block_device();
        if !is_blockdev && !meta.is_file() {
            return Err(Error::Usage(format!(
                "loop file {} is neither a regular file nor a block device",
                path.display()
            )));
        }
        let mut oo = OpenOptions::new();
        oo.read(true).write(true);
        if direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(path).map_err(|e| {
            let hint = if direct && e.raw_os_error() == Some(libc::EINVAL) {
                " (the filesystem does not support O_DIRECT; drop --direct)"
            } else {
                ""
            };
            Error::Usage(format!("open loop file {}: {e}{hint}", path.display()))
        })?;
        let dev_bytes = if is_blockdev {
            blockdev_bytes(&file)
                .map_err(|e| Error::io(format!("size of {}", path.display()), e))?
        } else {
            meta.len()
        };
        if dev_bytes < 4096 {
            return Err(Error::Usage(format!(
                "loop file {} has {dev_bytes} bytes; it must hold at least 4096 (e.g. 'truncate -s 64M {}')",
                path.display(),
                path.display()
            )));
        }
        let punch_hole = is_blockdev || probe_punch_hole(&file, dev_bytes);
        if !punch_hole {
            log::info!(
                "{}: no hole punching; DISCARD/WRITE_ZEROES not offered",
                path.display()
            );
        }
        Ok(Self {
            punch_hole,
            file,
            // Whole 4 KiB blocks: a partial last block could not be read with O_DIRECT.
            dev_bytes: dev_bytes & !4095,
            direct,
            is_blockdev,
        })
    }
}

/// Whether FALLOC_FL_PUNCH_HOLE works, tried past the end of the file so that no data is
/// touched (KEEP_SIZE keeps the size).
fn probe_punch_hole(f: &File, size: u64) -> bool {
    let Ok(off) = libc::off_t::try_from(size) else {
        return false;
    };
    // SAFETY: fallocate on our own open fd; the range lies beyond EOF and KEEP_SIZE is set.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            4096,
        )
    };
    r == 0
}

fn blockdev_bytes(f: &File) -> std::io::Result<u64> {
    let mut n: u64 = 0;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    // SAFETY: BLKGETSIZE64 writes one u64 into the valid local `n`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut n) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n)
}

impl Target for LoopFile {
    fn name(&self) -> &'static str {
        "loop"
    }
    fn params(&self) -> TargetParams {
        TargetParams {
            dev_bytes: self.dev_bytes,
            // O_DIRECT needs block-aligned I/O: 4 KiB covers every common backing filesystem.
            logical_bs_shift: if self.direct { 12 } else { 9 },
            physical_bs_shift: 12,
            discard: self.punch_hole,
            write_zeroes: self.punch_hole,
            // Without O_DIRECT writes land in the page cache: FLUSH must reach the file.
            volatile_cache: !self.direct || self.is_blockdev,
        }
    }
    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
    fn handle(&self, req: &mut IoReq<'_>) -> Outcome {
        let fd = types::Fixed(BACKEND_FIXED_FD);
        let off = req.offset_bytes();
        let len = req.len_bytes();
        if req.op != UBLK_IO_OP_FLUSH && off.saturating_add(len) > self.dev_bytes {
            return Outcome::Done(-libc::EINVAL);
        }
        let n = u32::try_from(len).unwrap_or(u32::MAX);
        let sqe = match req.op {
            UBLK_IO_OP_READ => {
                let Some(buf) = req.buf.get_mut(..n as usize) else {
                    return Outcome::Done(-libc::EINVAL);
                };
                opcode::Read::new(fd, buf.as_mut_ptr(), n)
                    .offset(off)
                    .build()
            }
            UBLK_IO_OP_WRITE => {
                let Some(buf) = req.buf.get(..n as usize) else {
                    return Outcome::Done(-libc::EINVAL);
                };
                let rw_flags = if req.flags & UBLK_IO_F_FUA != 0 {
                    libc::RWF_DSYNC
                } else {
                    0
                };
                opcode::Write::new(fd, buf.as_ptr(), n)
                    .offset(off)
                    .rw_flags(rw_flags)
                    .build()
            }
            UBLK_IO_OP_FLUSH => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            UBLK_IO_OP_DISCARD => opcode::Fallocate::new(fd, len)
                .offset(off)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            // A punched hole reads back as zeros. (ZERO_RANGE would honour NOUNMAP but
            // tmpfs lacks it; NOUNMAP is a hint.)
            UBLK_IO_OP_WRITE_ZEROES => opcode::Fallocate::new(fd, len)
                .offset(off)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            _ => return Outcome::Done(-libc::EOPNOTSUPP),
        };
        Outcome::Backend(sqe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_the_fix() {
        let e = LoopFile::open(Path::new("/nonexistent/ublk-loop.img"), false)
            .err()
            .expect("missing file is rejected");
        assert!(e.is_usage());
        assert!(e.to_string().contains("truncate -s"), "{e}");
    }

    #[test]
    fn requests_become_backend_sqes() {
        let dir = std::env::temp_dir().join(format!("ublk-loop-test-{}", std::process::id()));
        std::fs::write(&dir, vec![0u8; 1 << 16]).expect("temp file");
        let t = LoopFile::open(&dir, false).expect("open temp file");
        assert_eq!(t.params().dev_bytes, 1 << 16);
        let mut buf = vec![0u8; 4096];
        let mut r = IoReq {
            tag: 1,
            op: UBLK_IO_OP_READ,
            flags: 0,
            start_sector: 8,
            nr_sectors: 8,
            buf: &mut buf,
        };
        assert!(matches!(t.handle(&mut r), Outcome::Backend(_)));
        r.start_sector = 127; // 127*512 + 4096 > 64 KiB
        assert!(matches!(t.handle(&mut r), Outcome::Done(e) if e == -libc::EINVAL));
        r.op = 42;
        r.start_sector = 0;
        assert!(matches!(t.handle(&mut r), Outcome::Done(e) if e == -libc::EOPNOTSUPP));
        let _ = std::fs::remove_file(&dir);
    }
}
