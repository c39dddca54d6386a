//! Fixed-size latency histogram (log-linear: 16 buckets per power of two, ≤ 6 % error;
//! 8 KiB), so a queue's memory does not grow with the number of I/Os.
use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 4;
const SUB: u32 = 1 << SUB_BITS;
/// Values below SUB get one bucket each; then SUB buckets per power of two up to 2^63.
const BUCKETS: usize = (SUB * (64 - SUB_BITS + 1)) as usize;

/// Latencies in ns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum_ns: u64,
    max_ns: u64,
    #[serde(default)]
    min_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            count: 0,
            sum_ns: 0,
            max_ns: 0,
            min_ns: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < u64::from(SUB) {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let sub = (v >> (msb - SUB_BITS)) & u64::from(SUB - 1);
    (SUB * (msb - SUB_BITS + 1)) as usize + sub as usize
}

/// Largest value that falls into bucket `b`.
fn bucket_upper(b: usize) -> u64 {
    if b < SUB as usize {
        return b as u64;
    }
    let msb = (b / SUB as usize) as u32 + SUB_BITS - 1;
    let sub = (b % SUB as usize) as u64;
    let lower = (u64::from(SUB) + sub) << (msb - SUB_BITS);
    lower.saturating_add((1u64 << (msb - SUB_BITS)) - 1)
}

impl Histogram {
    pub fn record(&mut self, v_ns: u64) {
        if let Some(c) = self.counts.get_mut(bucket_of(v_ns)) {
            *c += 1;
        }
        self.min_ns = if self.count == 0 {
            v_ns
        } else {
            self.min_ns.min(v_ns)
        };
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(v_ns);
        self.max_ns = self.max_ns.max(v_ns);
    }
    /// `n` values of `v_ns` at once (a bucket of a coarser histogram read from the kernel).
    pub fn record_n(&mut self, v_ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(c) = self.counts.get_mut(bucket_of(v_ns)) {
            *c += n;
        }
        self.min_ns = if self.count == 0 {
            v_ns
        } else {
            self.min_ns.min(v_ns)
        };
        self.count += n;
        self.sum_ns = self.sum_ns.saturating_add(v_ns.saturating_mul(n));
        self.max_ns = self.max_ns.max(v_ns);
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }
    pub fn mean_ns(&self) -> Option<u64> {
        self.sum_ns.checked_div(self.count)
    }
    /// Value at quantile `q` in [0, 1]: the middle of its bucket, clamped to the recorded
    /// min and max; `None` when empty.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        if q >= 1.0 {
            return Some(self.max_ns);
        }
        let want = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                let mid = bucket_lower(b) / 2 + bucket_upper(b) / 2;
                return Some(mid.clamp(self.min_ns, self.max_ns));
            }
        }
        Some(self.max_ns)
    }
    /// (upper bound ns, count) of non-empty buckets, for drawing.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(b, c)| (bucket_upper(b), *c))
    }
    /// Values certainly at least `ns` (whole buckets above it; undercounts by < 1 bucket).
    pub fn count_at_least(&self, ns: u64) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .filter(|(b, _)| bucket_lower(*b) >= ns)
            .map(|(_, c)| c)
            .sum()
    }
}

fn bucket_lower(b: usize) -> u64 {
    match b.checked_sub(1) {
        Some(prev) => bucket_upper(prev).saturating_add(1),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order() {
        // Each value lands in a bucket whose upper bound is >= it and whose previous
        // bucket's upper bound is < it: no gaps, no overlap.
        for v in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            9,
            1000,
            4095,
            4096,
            1 << 40,
            u64::MAX,
        ] {
            let b = bucket_of(v);
            assert!(b < BUCKETS, "{v} -> {b}");
            assert!(bucket_upper(b) >= v, "{v}: upper {}", bucket_upper(b));
            if b > 0 {
                assert!(
                    bucket_upper(b - 1) < v,
                    "{v}: prev upper {}",
                    bucket_upper(b - 1)
                );
            }
        }
    }

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::default();
        for i in 1..=1000u64 {
            h.record(i * 1000); // 1 µs .. 1 ms
        }
        let p50 = h.quantile_ns(0.5).expect("not empty");
        let p99 = h.quantile_ns(0.99).expect("not empty");
        assert!((470_000..=530_000).contains(&p50), "p50 {p50}");
        assert!((960_000..=1_000_000).contains(&p99), "p99 {p99}");
        // All samples alike: the quantiles are that value, not a bucket edge.
        let mut same = Histogram::default();
        for _ in 0..19 {
            same.record(311_491_460);
        }
        assert_eq!(same.quantile_ns(0.5), Some(311_491_460));
        assert_eq!(h.quantile_ns(1.0), Some(1_000_000));
        assert_eq!(h.max_ns(), 1_000_000);
        assert_eq!(h.count(), 1000);
        assert_eq!(Histogram::default().quantile_ns(0.5), None);
        let above = h.count_at_least(900_000);
        assert!((50..=100).contains(&above), "{above}");
        assert_eq!(h.count_at_least(0), 1000);
    }
}
