//! `ramdisk`: a RAM-backed disk. The memory is an anonymous NORESERVE mapping, so pages are
//! allocated only when first written; DISCARD and WRITE_ZEROES give whole pages back
//! (MADV_DONTNEED reads back as zeros) and zero the partial edges.
//!
//! Queue threads share the mapping. Overlapping in-flight requests on different queues race
//! exactly like they would on a real disk; the block layer gives no ordering between them.

use std::ptr::NonNull;

use ublk_abi::*;

use super::{IoReq, Outcome, Target, TargetParams, bytes_res};
use crate::error::{Error, Result};

pub struct Ramdisk {
    base: NonNull<u8>,
    len: usize,
    page: usize,
}

// SAFETY: the mapping lives as long as the Ramdisk; concurrent access is plain memory copies
// on disjoint or (by the user's choice) racing byte ranges, as on a real disk.
unsafe impl Send for Ramdisk {}
// SAFETY: see Send.
unsafe impl Sync for Ramdisk {}

impl Ramdisk {
    pub fn new(size_bytes: u64) -> Result<Self> {
        let len = usize::try_from(size_bytes)
            .map_err(|_| Error::Usage(format!("--size {size_bytes} does not fit in memory")))?;
        // SAFETY: anonymous private mapping of `len` bytes; checked for MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::io(
                format!("map {len} bytes for the ramdisk (try a smaller --size)"),
                std::io::Error::last_os_error(),
            ));
        }
        let base = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| Error::io("ramdisk mmap", std::io::Error::other("null mapping")))?;
        Ok(Self {
            base,
            len,
            page: crate::page_size(),
        })
    }

    /// The byte range of a request, or None when it leaves the disk.
    fn range(&self, req: &IoReq<'_>) -> Option<(usize, usize)> {
        let off = usize::try_from(req.offset_bytes()).ok()?;
        let n = usize::try_from(req.len_bytes()).ok()?;
        (off.checked_add(n)? <= self.len).then_some((off, n))
    }

    fn zero(&self, off: usize, n: usize) {
        let end = off + n;
        let first_page = off.div_ceil(self.page) * self.page;
        let last_page = end / self.page * self.page;
        if first_page < last_page {
            // SAFETY: [first_page, last_page) is inside the mapping (end <= len); DONTNEED on
            // a private anonymous mapping makes the pages read back as zeros.
            unsafe {
                libc::madvise(
                    self.base.as_ptr().add(first_page).cast(),
                    last_page - first_page,
                    libc::MADV_DONTNEED,
                )
            };
            self.write_zeros(off, first_page - off);
            self.write_zeros(last_page, end - last_page);
        } else {
            self.write_zeros(off, n);
        }
    }

    fn write_zeros(&self, off: usize, n: usize) {
        // SAFETY: callers pass ranges inside the mapping.
        unsafe { std::ptr::write_bytes(self.base.as_ptr().add(off), 0, n) };
    }
}

impl Drop for Ramdisk {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped; queue threads are joined before the
        // target is dropped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl Target for Ramdisk {
    fn name(&self) -> &'static str {
        "ramdisk"
    }
    fn params(&self) -> TargetParams {
        TargetParams {
            dev_bytes: self.len as u64,
            logical_bs_shift: 9,
            physical_bs_shift: 12,
            discard: true,
            write_zeroes: true,
            volatile_cache: false,
        }
    }
    fn handle(&self, req: &mut IoReq<'_>) -> Outcome {
        if req.op == UBLK_IO_OP_FLUSH {
            return Outcome::Done(0);
        }
        let Some((off, n)) = self.range(req) else {
            return Outcome::Done(-libc::EINVAL);
        };
        match req.op {
            UBLK_IO_OP_READ => {
                let Some(dst) = req.buf.get_mut(..n) else {
                    return Outcome::Done(-libc::EINVAL);
                };
                // SAFETY: (off, n) is inside the mapping (range()), dst has n bytes and does
                // not overlap the mapping.
                unsafe {
                    std::ptr::copy_nonoverlapping(self.base.as_ptr().add(off), dst.as_mut_ptr(), n)
                };
                Outcome::Done(bytes_res(n as u64))
            }
            UBLK_IO_OP_WRITE => {
                let Some(src) = req.buf.get(..n) else {
                    return Outcome::Done(-libc::EINVAL);
                };
                // SAFETY: as for READ, in the other direction.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(off), n)
                };
                Outcome::Done(bytes_res(n as u64))
            }
            UBLK_IO_OP_DISCARD | UBLK_IO_OP_WRITE_ZEROES => {
                self.zero(off, n);
                Outcome::Done(0)
            }
            _ => Outcome::Done(-libc::EOPNOTSUPP),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(op: u8, sector: u64, nr: u32, buf: &'a mut [u8]) -> IoReq<'a> {
        IoReq {
            tag: 0,
            op,
            flags: 0,
            start_sector: sector,
            nr_sectors: nr,
            buf,
        }
    }

    fn done(o: Outcome) -> i32 {
        match o {
            Outcome::Done(r) => r,
            Outcome::Backend(_) => panic!("ramdisk never uses a backend"),
        }
    }

    #[test]
    fn write_then_read_back_and_zero() {
        let rd = Ramdisk::new(1 << 20).expect("1 MiB mapping");
        let mut w = vec![0xabu8; 16384];
        w[100] = 7;
        assert_eq!(
            done(rd.handle(&mut req(UBLK_IO_OP_WRITE, 0, 32, &mut w))),
            16384
        );
        let mut r = vec![0u8; 16384];
        assert_eq!(
            done(rd.handle(&mut req(UBLK_IO_OP_READ, 0, 32, &mut r))),
            16384
        );
        assert_eq!(r, w);
        // Sectors 9..25 = bytes 4608..12800: one whole page (8192..12288, given back with
        // MADV_DONTNEED) plus partial edges zeroed by hand.
        assert_eq!(
            done(rd.handle(&mut req(UBLK_IO_OP_DISCARD, 9, 16, &mut []))),
            0
        );
        assert_eq!(
            done(rd.handle(&mut req(UBLK_IO_OP_READ, 0, 32, &mut r))),
            16384
        );
        assert_eq!(r[..4608], w[..4608], "sectors 0..9 kept");
        assert!(
            r[4608..12800].iter().all(|&b| b == 0),
            "sectors 9..25 zeroed"
        );
        assert_eq!(r[12800..], w[12800..], "sectors 25.. kept");
    }

    #[test]
    fn out_of_range_is_einval() {
        let rd = Ramdisk::new(4096).expect("mapping");
        let mut b = vec![0u8; 4096];
        assert_eq!(
            done(rd.handle(&mut req(UBLK_IO_OP_READ, 1, 8, &mut b))),
            -libc::EINVAL
        );
    }
}
