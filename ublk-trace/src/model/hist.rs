//! Fixed-size latency histogram (log-linear: 4 buckets per power of two, ≤ 19 % error), so a
//! queue's memory does not grow with the number of I/Os.
use serde::{Deserialize, Serialize};

const SUB: u32 = 4;
const BUCKETS: usize = 252;

/// Latencies in ns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum_ns: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < u64::from(SUB) {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let sub = (v >> (msb - 2)) & 3;
    (SUB * (msb - 1)) as usize + sub as usize
}

/// Largest value that falls into bucket `b`.
fn bucket_upper(b: usize) -> u64 {
    if b < SUB as usize {
        return b as u64;
    }
    let msb = (b / SUB as usize + 1) as u32;
    let sub = (b % SUB as usize) as u64;
    let lower = (4 + sub) << (msb - 2);
    lower.saturating_add((1u64 << (msb - 2)) - 1)
}

impl Histogram {
    pub fn record(&mut self, v_ns: u64) {
        if let Some(c) = self.counts.get_mut(bucket_of(v_ns)) {
            *c += 1;
        }
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(v_ns);
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
    /// Value at quantile `q` in [0, 1] (upper bound of its bucket, never above the max);
    /// `None` when empty.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let want = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(bucket_upper(b).min(self.max_ns));
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
        assert!((500_000..=600_000).contains(&p50), "p50 {p50}");
        assert!((990_000..=1_000_000).contains(&p99), "p99 {p99}");
        assert_eq!(h.quantile_ns(1.0), Some(1_000_000));
        assert_eq!(h.max_ns(), 1_000_000);
        assert_eq!(h.count(), 1000);
        assert_eq!(Histogram::default().quantile_ns(0.5), None);
        let above = h.count_at_least(900_000);
        assert!((50..=100).contains(&above), "{above}");
        assert_eq!(h.count_at_least(0), 1000);
    }
}
