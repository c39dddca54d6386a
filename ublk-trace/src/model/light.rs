//! What the light path adds to the model (watch's default where the driver's memory gives
//! every tag's state): the kernel's per-queue completion histograms, and the disk's own
//! completion counter. Neither costs the tracer anything per event it reads.
use serde::{Deserialize, Serialize};
use ublk_trace_common::latmap::{LAT_BUCKETS, LatHist};

use super::Model;
use super::queue::RateWindow;

/// The disk's completions (`/sys/block/ublkbN/stat`), as the snapshots read them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskIos {
    /// (read time, completions then) of the latest read.
    pub last: Option<(u64, u64)>,
    /// Completions per second, spread over the time between two reads.
    pub rate: RateWindow,
}

impl DiskIos {
    /// Whether two reads have been made (a rate exists).
    pub fn known(&self) -> bool {
        !self.rate.is_empty()
    }

    pub(crate) fn read(&mut self, ts_ns: u64, ios: u64) {
        if let Some((t0, n0)) = self.last {
            if ts_ns <= t0 {
                return;
            }
            // A counter that went back: a new disk with the same number.
            let n = if ios >= n0 { ios - n0 } else { ios };
            self.rate.add_spread(t0, ts_ns, n);
            // Seconds without completions count as zeros (the window sees the read).
            self.rate.add(ts_ns, 0);
        }
        self.last = Some((ts_ns, ios));
    }
}

/// The middle of kernel bucket `b` (`[2^b, 2^(b+1))` ns).
fn bucket_mid_ns(b: usize) -> u64 {
    let lo = 1u64 << b.min(62);
    lo + lo / 2
}

impl Model {
    /// Merge one read of the light path's histograms at `ts_ns`: the completions since the
    /// previous read (rates and counts) and their latencies (`block_latency`).
    pub fn apply_kernel_latency(&mut self, entries: &[crate::probe::LatencyEntry], ts_ns: u64) {
        for e in entries {
            let q = self.device_mut(e.dev_id, ts_ns).queue_mut(e.q_id);
            let prev = q.kernel_latency_read.unwrap_or(LatHist::ZERO);
            // Counters only grow while the tracer runs; a smaller one is a new tracer.
            let prev = if e.hist.count < prev.count {
                LatHist::ZERO
            } else {
                prev
            };
            let served = e.hist.count - prev.count;
            if served > 0 && q.kernel_latency_read.is_some() {
                q.completed_after_ns = q.completed_after_ns.max(q.kernel_latency_read_ns);
            }
            q.kernel_completions(ts_ns, served, None);
            for b in 0..LAT_BUCKETS {
                let n = e.hist.buckets[b].saturating_sub(prev.buckets[b]);
                q.block_latency.record_n(bucket_mid_ns(b), n);
            }
            q.kernel_latency_read = Some(e.hist);
            q.kernel_latency_read_ns = ts_ns;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::LatencyEntry;

    fn entry(count: u64, buckets: &[(usize, u64)]) -> LatencyEntry {
        let mut hist = LatHist::ZERO;
        hist.count = count;
        for (b, n) in buckets {
            hist.buckets[*b] = *n;
        }
        LatencyEntry {
            dev_id: 0,
            q_id: 1,
            hist,
        }
    }

    #[test]
    fn each_read_adds_only_what_is_new() {
        let mut m = Model::new();
        // 2^17 ns = 131 us.
        m.apply_kernel_latency(&[entry(10, &[(17, 10)])], 1_500_000_000);
        m.apply_kernel_latency(&[entry(30, &[(17, 25), (20, 5)])], 2_500_000_000);
        let q = &m.raw_device(0).expect("dev").queues[&1];
        assert_eq!(q.completed, 30);
        assert_eq!(q.block_latency.count(), 30);
        assert_eq!(q.completions.last_seconds(3_000_000_000, 2), vec![10, 20]);
        let p99 = q.block_latency.quantile_ns(0.99).expect("p99");
        assert!(
            (1 << 20..1 << 21).contains(&p99),
            "p99 {p99} in the 2^20 bucket"
        );
    }

    #[test]
    fn a_growing_count_dates_the_queues_progress_from_the_read_before() {
        let mut m = Model::new();
        m.apply_kernel_latency(&[entry(10, &[])], 1_000_000_000);
        let q = |m: &Model| m.raw_device(0).expect("dev").queues[&1].completed_after_ns;
        assert_eq!(q(&m), 0, "the first read dates nothing");
        m.apply_kernel_latency(&[entry(10, &[])], 2_000_000_000);
        assert_eq!(q(&m), 0, "no new completion");
        m.apply_kernel_latency(&[entry(12, &[])], 3_000_000_000);
        assert_eq!(q(&m), 2_000_000_000);
    }

    #[test]
    fn a_restarted_counter_starts_over() {
        let mut m = Model::new();
        m.apply_kernel_latency(&[entry(100, &[(10, 100)])], 1_000_000_000);
        m.apply_kernel_latency(&[entry(5, &[(10, 5)])], 2_000_000_000);
        assert_eq!(m.raw_device(0).expect("dev").queues[&1].completed, 105);
    }

    #[test]
    fn disk_reads_become_a_rate() {
        let mut d = DiskIos::default();
        d.read(1_000_000_000, 500);
        assert!(!d.known(), "one read is no rate");
        d.read(3_000_000_000, 2_500);
        assert!(d.known());
        assert_eq!(d.rate.rate(3_500_000_000, 2), 1000.0);
    }
}
