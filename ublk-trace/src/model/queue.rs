//! One ublk queue (= blk-mq hctx): its tags, latency histograms, counters and rates.
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::hist::Histogram;
use super::tag::Tag;

/// Per-second buckets kept for rates (IOPS sparkline).
pub const RATE_SECONDS: usize = 120;
/// Slow requests kept per queue.
pub const SLOW_LEN: usize = 32;
/// Completions slower than this are remembered individually (SLOW filters further).
pub const SLOW_FLOOR_NS: u64 = 10_000_000;

/// Completions per CLOCK_MONOTONIC second, bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateWindow {
    /// (second, count), oldest first.
    secs: VecDeque<(u64, u64)>,
}

impl RateWindow {
    pub fn add(&mut self, ts_ns: u64, n: u64) {
        let sec = ts_ns / 1_000_000_000;
        match self.secs.iter_mut().rev().find(|(s, _)| *s == sec) {
            Some((_, c)) => *c += n,
            None => {
                let at = self.secs.partition_point(|(s, _)| *s < sec);
                self.secs.insert(at, (sec, n));
                while self.secs.len() > RATE_SECONDS {
                    self.secs.pop_front();
                }
            }
        }
    }
    /// Per-second counts of the `n` whole seconds before the one containing `now_ns`
    /// (oldest first; zeros where nothing happened).
    pub fn last_seconds(&self, now_ns: u64, n: usize) -> Vec<u64> {
        let cur = now_ns / 1_000_000_000;
        (1..=n as u64)
            .rev()
            .map(|back| {
                let s = cur.saturating_sub(back);
                self.secs
                    .iter()
                    .find(|(x, _)| *x == s)
                    .map_or(0, |(_, c)| *c)
            })
            .collect()
    }
    /// `n` events spread evenly over `(from_ns, to_ns]` (a counter read twice: the disk's
    /// stat), so a read that spans two seconds does not put all of it into the second one.
    pub fn add_spread(&mut self, from_ns: u64, to_ns: u64, n: u64) {
        const SEC: u64 = 1_000_000_000;
        if n == 0 {
            return;
        }
        if from_ns >= to_ns || to_ns / SEC == from_ns / SEC {
            self.add(to_ns, n);
            return;
        }
        let span = (to_ns - from_ns) as u128;
        let mut left = n;
        let mut t = from_ns;
        while t < to_ns && left > 0 {
            let end = ((t / SEC + 1) * SEC).min(to_ns);
            let share = if end == to_ns {
                left
            } else {
                ((n as u128 * (end - t) as u128) / span) as u64
            };
            let share = share.min(left);
            if share > 0 {
                self.add(end.saturating_sub(1).max(t), share);
            }
            left -= share;
            t = end;
        }
    }
    pub fn is_empty(&self) -> bool {
        self.secs.is_empty()
    }
    /// Average per second over the `n` whole seconds before `now_ns`.
    pub fn rate(&self, now_ns: u64, n: usize) -> f64 {
        if n == 0 {
            return 0.0;
        }
        let v = self.last_seconds(now_ns, n);
        v.iter().sum::<u64>() as f64 / n as f64
    }
}

/// A completion that took long (queue_rq -> commit; with `block`, the request's start ->
/// its completion, as the light path measures it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowIo {
    pub done_ns: u64,
    pub tag: u16,
    pub latency_ns: u64,
    #[serde(default)]
    pub block: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    pub q_id: u16,
    pub tags: BTreeMap<u16, Tag>,
    /// queue_rq -> accepted commit.
    pub server_latency: Histogram,
    /// block_rq_issue -> block_rq_complete.
    pub block_latency: Histogram,
    /// Accepted commits (= requests served by the server).
    pub completed: u64,
    /// Sum of positive commit results.
    pub bytes: u64,
    pub requests: u64,
    pub requeues: u64,
    pub rejected: u64,
    pub completions: RateWindow,
    pub bytes_rate: RateWindow,
    /// Delivery runs seen on this queue (task work / CQE); 0 = delivery not observable.
    pub deliveries: u64,
    pub last_delivered_ns: u64,
    /// Last batched delivery run (≤ 6.14 task work: the tags are not known), which delivers
    /// every request started before it.
    pub last_batch_delivered_ns: u64,
    /// Tags whose current request started after the last batched delivery run seen: the next
    /// run delivers them and dates their delivery (`Tag::batch_delivered_ns`). Bounded by the
    /// depth, usually a few tags, so a run costs no walk over every tag.
    pub undelivered: BTreeSet<u16>,
    /// Last accepted FETCH/COMMIT on the queue: the owner thread entered io_uring then.
    pub last_accepted_ns: u64,
    /// BATCH_IO: COMMIT_IO_CMDS the kernel took whole, and the elements they committed.
    pub batch_commits: u64,
    pub batch_committed: u64,
    /// Last thread whose FETCH/COMMIT was accepted (the queue's daemon up to 6.15).
    pub owner_tid: Option<u32>,
    pub slow: VecDeque<SlowIo>,
    /// Requeues traced without a driver tag (an I/O scheduler such as mq-deadline releases
    /// it before block_rq_requeue fires): when they happened, the last [`super::tag::REQUEUE_WINDOW`].
    pub untagged_requeue_times: VecDeque<u64>,
    /// The eBPF state map's count of those, as last read.
    pub untagged_requeues_read: u64,
    /// Completions are counted from the state map's commit counters (watch's state path):
    /// commit events that still stream (bad or slow ones) must not count twice.
    pub counts_from_kernel: bool,
    /// The driver's own view of the queue, as last read.
    #[serde(default)]
    pub driver: Option<super::driver::DriverQueue>,
    /// The light path's in-kernel histogram as last read (counts are cumulative there):
    /// `block_latency` and the completions come from it, block events add only slow ones.
    #[serde(default, skip)]
    pub kernel_latency_read: Option<ublk_trace_common::latmap::LatHist>,
    /// When that histogram was read.
    #[serde(default)]
    pub kernel_latency_read_ns: u64,
    /// A request of this queue completed after this time: the read before the one whose
    /// count grew (the light path's evidence that the queue's thread serves).
    #[serde(default)]
    pub completed_after_ns: u64,
}

impl Queue {
    /// `n` requeues without a driver tag, by `ts`.
    pub fn untagged_requeues(&mut self, ts: u64, n: u64) {
        self.requeues += n;
        for _ in 0..n.min(super::tag::REQUEUE_WINDOW as u64) {
            if self.untagged_requeue_times.len() == super::tag::REQUEUE_WINDOW {
                self.untagged_requeue_times.pop_front();
            }
            self.untagged_requeue_times.push_back(ts);
        }
    }
    /// Requeues without a driver tag within `window_ns` before `now_ns`.
    pub fn untagged_requeues_within(&self, now_ns: u64, window_ns: u64) -> usize {
        let from = now_ns.saturating_sub(window_ns);
        self.untagged_requeue_times
            .iter()
            .filter(|t| **t >= from)
            .count()
    }
    pub fn new(q_id: u16) -> Self {
        Self {
            q_id,
            ..Default::default()
        }
    }
    /// Seconds held by the IOPS window (bounded by [`RATE_SECONDS`]).
    pub fn completions_len(&self) -> usize {
        self.completions.secs.len()
    }
    pub fn tag_mut(&mut self, tag: u16) -> &mut Tag {
        self.tags.entry(tag).or_default()
    }
    pub(crate) fn record_completion(
        &mut self,
        ts_ns: u64,
        tag: u16,
        latency_ns: Option<u64>,
        bytes: u64,
    ) {
        self.bytes = self.bytes.saturating_add(bytes);
        self.bytes_rate.add(ts_ns, bytes);
        // With the state map counting (and sampling) completions, an event only adds its
        // slow-request record.
        if !self.counts_from_kernel {
            self.count_served(ts_ns, 1, latency_ns);
        }
        self.remember_slow(ts_ns, tag, latency_ns, false);
    }

    /// A block completion the light path sent (failed, or slow since the request started):
    /// its latency is already in the kernel's histogram.
    pub(crate) fn kernel_slow_completion(&mut self, ts_ns: u64, tag: u16, latency_ns: u64) {
        self.remember_slow(ts_ns, tag, Some(latency_ns), true);
    }

    /// `n` requests served by `ts_ns`, read from the state map's commit counters (watch's
    /// state path), with the latency of the last one when the map still holds its start.
    pub(crate) fn kernel_completions(&mut self, ts_ns: u64, n: u64, latency_ns: Option<u64>) {
        self.counts_from_kernel = true;
        self.count_served(ts_ns, n, latency_ns);
    }

    fn count_served(&mut self, ts_ns: u64, n: u64, latency_ns: Option<u64>) {
        self.completed += n;
        self.completions.add(ts_ns, n);
        if let Some(lat) = latency_ns {
            self.server_latency.record(lat);
        }
    }

    fn remember_slow(&mut self, ts_ns: u64, tag: u16, latency_ns: Option<u64>, block: bool) {
        let Some(lat) = latency_ns.filter(|l| *l >= SLOW_FLOOR_NS) else {
            return;
        };
        if self.slow.len() == SLOW_LEN {
            self.slow.pop_front();
        }
        self.slow.push_back(SlowIo {
            done_ns: ts_ns,
            tag,
            latency_ns: lat,
            block,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_window_counts_whole_seconds() {
        let mut r = RateWindow::default();
        r.add(1_000_000_000, 1);
        r.add(1_500_000_000, 1);
        r.add(2_100_000_000, 5);
        // Out of order: an older second inserted later still counts.
        r.add(500_000_000, 3);
        assert_eq!(r.last_seconds(3_000_000_000, 3), vec![3, 2, 5]);
        assert_eq!(r.rate(3_000_000_000, 2), 3.5);
        // The current (partial) second is not counted.
        assert_eq!(r.last_seconds(2_500_000_000, 1), vec![2]);
    }

    #[test]
    fn rate_window_is_bounded() {
        let mut r = RateWindow::default();
        for s in 0..(RATE_SECONDS as u64 * 3) {
            r.add(s * 1_000_000_000, 1);
        }
        assert_eq!(r.secs.len(), RATE_SECONDS);
    }

    #[test]
    fn a_spread_count_lands_in_the_seconds_it_spans() {
        let mut r = RateWindow::default();
        // 300 over 1.5 s .. 4.5 s: 50 in second 1, 100 in 2 and 3, 50 in 4.
        r.add_spread(1_500_000_000, 4_500_000_000, 300);
        assert_eq!(r.last_seconds(5_000_000_000, 4), vec![50, 100, 100, 50]);
        let mut one = RateWindow::default();
        one.add_spread(2_100_000_000, 2_900_000_000, 7);
        assert_eq!(one.last_seconds(3_000_000_000, 1), vec![7]);
    }

    #[test]
    fn slow_completions_are_kept_bounded() {
        let mut q = Queue::new(0);
        for i in 0..100u64 {
            q.record_completion(i, 1, Some(SLOW_FLOOR_NS + i), 4096);
        }
        q.record_completion(200, 2, Some(1000), 4096);
        assert_eq!(q.slow.len(), SLOW_LEN);
        assert_eq!(q.completed, 101);
        assert_eq!(q.server_latency.count(), 101);
        assert_eq!(q.bytes, 101 * 4096);
    }
}
