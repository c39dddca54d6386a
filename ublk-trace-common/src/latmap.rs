//! The in-kernel per-queue completion histograms: the "light path" of watch and diagnose.
//!
//! Where the driver's own memory gives every tag's state, the per-I/O programs keep no
//! per-tag map. What memory cannot show is a latency distribution (the driver keeps no
//! history), so block_rq_complete adds each completion of a ublk disk to its queue's
//! histogram here: one per-CPU hash lookup and two adds per I/O, read by user space once per
//! tick. The completion counts are also the per-queue IOPS.
//!
//! Key: [`crate::tagmap::tag_key`]`(dev_id, q_id, u16::MAX)`.

/// Name of the `PerCpuHashMap<u64, LatHist>` map.
pub const LAT_MAP: &str = "LATENCY";
/// Capacity: (device, queue) pairs tracked at once.
pub const LAT_MAX_ENTRIES: u32 = 4096;
/// Bucket `b` holds latencies in `[2^b, 2^(b+1))` ns (bucket 0 also holds 0 and 1 ns); the
/// last one holds everything from 2^35 ns (34 s) up.
pub const LAT_BUCKETS: usize = 36;

/// One queue's completions on one CPU since the tracer attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatHist {
    /// Every completion, including those without a start time (not in a bucket).
    pub count: u64,
    /// Sum of the bucketed latencies, ns.
    pub sum_ns: u64,
    pub buckets: [u64; LAT_BUCKETS],
}

pub const LAT_HIST_BYTES: usize = 8 * (2 + LAT_BUCKETS);
const _: () = assert!(core::mem::size_of::<LatHist>() == LAT_HIST_BYTES);

impl LatHist {
    pub const ZERO: Self = Self {
        count: 0,
        sum_ns: 0,
        buckets: [0; LAT_BUCKETS],
    };
}

impl Default for LatHist {
    fn default() -> Self {
        Self::ZERO
    }
}

/// The bucket of `ns`: floor(log2(ns)), capped at the last bucket. Written as a binary
/// search, since BPF has no count-leading-zeros instruction.
#[inline(always)]
pub const fn lat_bucket(ns: u64) -> usize {
    let mut b = 0usize;
    let mut v = ns;
    if v >= 1 << 32 {
        v >>= 32;
        b += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        b += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        b += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        b += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        b += 2;
    }
    if v >= 1 << 1 {
        b += 1;
    }
    if b >= LAT_BUCKETS { LAT_BUCKETS - 1 } else { b }
}

#[cfg(feature = "user")]
// SAFETY: LatHist is #[repr(C)], Copy, only u64 fields, no padding (size asserted).
unsafe impl aya::Pod for LatHist {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_floor_log2_capped() {
        assert_eq!(lat_bucket(0), 0);
        assert_eq!(lat_bucket(1), 0);
        assert_eq!(lat_bucket(2), 1);
        assert_eq!(lat_bucket(3), 1);
        assert_eq!(lat_bucket(1023), 9);
        assert_eq!(lat_bucket(1024), 10);
        for b in 0..LAT_BUCKETS as u32 {
            assert_eq!(lat_bucket(1u64 << b), b as usize);
        }
        assert_eq!(lat_bucket(u64::MAX), LAT_BUCKETS - 1);
        assert_eq!(lat_bucket(1 << 40), LAT_BUCKETS - 1);
    }
}
