//! The in-kernel per-tag state map: the "state path" of DESIGN "Two eBPF paths".
//!
//! With `SWITCHES[SWITCH_STATE]` = 1 the programs keep, per (dev_id, q_id, tag), the last
//! time of each transition in the `TAGS` hash map, so a reader (watch, diagnose) learns
//! every tag's state by reading the map once per tick: its cost no longer grows with IOPS,
//! unlike streaming every event through the ring buffer.
//!
//! Key: [`tag_key`]. A key with `tag == u16::MAX` holds queue-level facts (≤ 6.14's batched
//! delivery task work only knows the queue).

/// Name of the `HashMap<u64, KernelTag>` map.
pub const TAGS_MAP: &str = "TAGS";
/// Capacity: devices × queues × depth tracked at once.
pub const TAGS_MAX_ENTRIES: u32 = 65536;

pub const fn tag_key(dev_id: u32, q_id: u16, tag: u16) -> u64 {
    ((dev_id as u64) << 32) | ((q_id as u64) << 16) | tag as u64
}

/// (dev_id, q_id, tag) of a key.
pub const fn split_tag_key(key: u64) -> (u32, u16, u16) {
    ((key >> 32) as u32, (key >> 16) as u16, key as u16)
}

/// One tag as the kernel probes saw it. Times are bpf_ktime_get_ns() (CLOCK_MONOTONIC),
/// 0 = never seen since the tracer attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelTag {
    /// Entry time of the last accepted FETCH_REQ or COMMIT_AND_FETCH_REQ (waiting since).
    pub fetch_ns: u64,
    /// Last `ublk_queue_rq(s)` for this tag (request started).
    pub queue_rq_ns: u64,
    /// Last delivery to the server thread (`ublk_dispatch_req`, or the queue's batch).
    pub delivered_ns: u64,
    /// Entry time of the last accepted COMMIT_AND_FETCH_REQ.
    pub commit_ns: u64,
    /// Last block_rq_complete.
    pub complete_ns: u64,
    /// Last block_rq_requeue.
    pub requeue_ns: u64,
    /// The current/last request.
    pub sector: u64,
    pub fetches: u64,
    pub commits: u64,
    /// Commands the handler did not accept (return other than -EIOCBQUEUED, no cancel).
    pub rejected: u64,
    pub requeues: u64,
    pub bytes: u32,
    /// `request.cmd_flags` (op in the low 8 bits).
    pub cmd_flags: u32,
    /// `ublksrv_io_cmd.result` of the last accepted commit (bytes or -errno).
    pub commit_result: i32,
    /// Return value of the last rejected command.
    pub reject_ret: i32,
    /// `cmd_op` of the last rejected command.
    pub reject_cmd_op: u32,
    /// Thread (tid) of the last accepted command: the tag's owner.
    pub owner_tid: u32,
}

pub const KERNEL_TAG_BYTES: usize = 112;
const _: () = assert!(core::mem::size_of::<KernelTag>() == KERNEL_TAG_BYTES);

#[cfg(feature = "user")]
// SAFETY: KernelTag is #[repr(C)], Copy, only integers, no padding (size asserted).
unsafe impl aya::Pod for KernelTag {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip_keeps_fields_apart() {
        let k = tag_key(0xdead_beef, 3, u16::MAX);
        assert_eq!(split_tag_key(k), (0xdead_beef, 3, u16::MAX));
        // q_id and tag must not overlap: (q 1, tag 0) != (q 0, tag 65535 + 1).
        assert_ne!(tag_key(0, 1, 0), tag_key(0, 0, u16::MAX));
    }
}
