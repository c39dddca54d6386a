//! `null`: completes every request at once without touching data (reads return whatever the
//! tag buffer holds). The cheapest possible server, for overhead measurements.

use ublk_abi::*;

use super::{IoReq, Outcome, Target, TargetParams, bytes_res};

pub struct Null {
    pub dev_bytes: u64,
}

impl Target for Null {
    fn name(&self) -> &'static str {
        "null"
    }
    fn params(&self) -> TargetParams {
        TargetParams {
            dev_bytes: self.dev_bytes,
            logical_bs_shift: 9,
            physical_bs_shift: 12,
            discard: true,
            write_zeroes: true,
            volatile_cache: false,
        }
    }
    fn handle(&self, req: &mut IoReq<'_>) -> Outcome {
        match req.op {
            UBLK_IO_OP_READ | UBLK_IO_OP_WRITE => Outcome::Done(bytes_res(req.len_bytes())),
            UBLK_IO_OP_FLUSH | UBLK_IO_OP_DISCARD | UBLK_IO_OP_WRITE_ZEROES => Outcome::Done(0),
            _ => Outcome::Done(-libc::EOPNOTSUPP),
        }
    }
}
