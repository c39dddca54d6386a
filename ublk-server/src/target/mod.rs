//! Targets: what a request does. A small trait so the queue loop stays target-agnostic.
//!
//! `handle` either finishes a request at once ([`Outcome::Done`]) or hands the queue one
//! backend SQE ([`Outcome::Backend`]) whose completion result is committed as is. That keeps
//! targets free of ring plumbing and lets their decisions be unit-tested on the host.

pub mod loop_file;
pub mod null;
pub mod ramdisk;

use std::os::fd::RawFd;

use ublk_abi::*;

/// Fixed-file slot of the backend file in each queue ring (slot 0 is /dev/ublkcN).
pub const BACKEND_FIXED_FD: u32 = 1;

/// Device properties a target asks for; turned into `ublk_params` by [`TargetParams::to_ublk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetParams {
    pub dev_bytes: u64,
    pub logical_bs_shift: u8,
    pub physical_bs_shift: u8,
    pub discard: bool,
    pub write_zeroes: bool,
    /// The backend has a cache that FLUSH must write back.
    pub volatile_cache: bool,
}

impl TargetParams {
    /// `max_io_buf_bytes` is the per-request buffer size the kernel granted at ADD_DEV.
    pub fn to_ublk(&self, max_io_buf_bytes: u32) -> ublk_params {
        let max_sectors = max_io_buf_bytes >> 9;
        let mut p = ublk_params {
            len: std::mem::size_of::<ublk_params>() as u32,
            types: UBLK_PARAM_TYPE_BASIC,
            ..Default::default()
        };
        p.basic = ublk_param_basic {
            attrs: if self.volatile_cache {
                UBLK_ATTR_VOLATILE_CACHE
            } else {
                0
            },
            logical_bs_shift: self.logical_bs_shift,
            physical_bs_shift: self.physical_bs_shift.max(self.logical_bs_shift),
            io_opt_shift: 12,
            io_min_shift: self.logical_bs_shift,
            max_sectors,
            chunk_sectors: 0,
            dev_sectors: self.dev_bytes >> 9,
            virt_boundary_mask: 0,
        };
        if self.discard || self.write_zeroes {
            p.types |= UBLK_PARAM_TYPE_DISCARD;
            p.discard = ublk_param_discard {
                discard_alignment: 0,
                // The kernel rejects a discard part with granularity 0.
                discard_granularity: 1 << self.physical_bs_shift.max(self.logical_bs_shift),
                max_discard_sectors: if self.discard { u32::MAX >> 9 } else { 0 },
                max_write_zeroes_sectors: if self.write_zeroes { u32::MAX >> 9 } else { 0 },
                // "only support single segment discard"
                max_discard_segments: 1,
                reserved0: 0,
            };
        }
        p
    }
}

/// One request as the target sees it. `buf` is the tag's buffer, exactly the request's length
/// (checked by the queue against the buffer size).
pub struct IoReq<'a> {
    pub tag: u16,
    pub op: u8,
    /// `UBLK_IO_F_*` bits as they appear in `op_flags`.
    pub flags: u32,
    pub start_sector: u64,
    pub nr_sectors: u32,
    pub buf: &'a mut [u8],
}

impl IoReq<'_> {
    pub fn offset_bytes(&self) -> u64 {
        self.start_sector << 9
    }
    pub fn len_bytes(&self) -> u64 {
        u64::from(self.nr_sectors) << 9
    }
}

pub enum Outcome {
    /// Commit this result now (bytes for READ/WRITE, 0 for others, or -errno).
    Done(i32),
    /// Submit this SQE on the queue's ring; commit its CQE result when it completes.
    Backend(io_uring::squeue::Entry),
}

pub trait Target: Send + Sync {
    fn name(&self) -> &'static str;
    fn params(&self) -> TargetParams;
    /// A file the queue rings register at [`BACKEND_FIXED_FD`].
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    fn handle(&self, req: &mut IoReq<'_>) -> Outcome;
}

/// Bytes as a commit result (requests are at most max_io_buf_bytes, far below i32::MAX).
pub(crate) fn bytes_res(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(-libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_from_target() {
        let t = TargetParams {
            dev_bytes: 64 << 20,
            logical_bs_shift: 9,
            physical_bs_shift: 12,
            discard: true,
            write_zeroes: true,
            volatile_cache: false,
        };
        let p = t.to_ublk(512 << 10);
        // dev_sectors is in 512-byte sectors whatever the block size: a byte count here
        // would make the disk 512x too large.
        assert_eq!(p.basic.dev_sectors, 131_072);
        assert_eq!(p.basic.max_sectors, 1024);
        assert_eq!(p.types, UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD);
        assert_eq!(p.discard.discard_granularity, 4096);
        assert_eq!(p.discard.max_discard_segments, 1);
        assert_eq!(p.len, 152);
        let no_discard = TargetParams {
            discard: false,
            write_zeroes: false,
            ..t
        }
        .to_ublk(4096);
        assert_eq!(no_discard.types, UBLK_PARAM_TYPE_BASIC);
        assert_eq!(no_discard.basic.max_sectors, 8);
    }
}
