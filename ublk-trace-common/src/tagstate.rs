//! The published tag-state file: `ublk-server` writes one slot per (queue, tag) into a shared
//! memory file so that `ublk-trace` can tell what the server believes about each request, even
//! when the tracer attaches after a hang and has seen no events.
//!
//! Layout (all little-endian, native alignment):
//! ```text
//! [TagStateHeader; 1]                       HEADER_BYTES
//! [TagSlot; nr_queues * queue_depth]        slot (q_id, tag) at HEADER_BYTES + (q_id*depth+tag)*SLOT_BYTES
//! ```
//! The writer updates fields with relaxed atomic stores (no lock on the hot path) and bumps
//! `seq` last; a reader copies the bytes and decodes them with [`TagSlot::decode`]. A torn read
//! across fields is possible and harmless for diagnosis: every field is individually consistent.

#[cfg(not(target_arch = "bpf"))]
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

/// `b"UBLKTAGS"`.
pub const MAGIC: [u8; 8] = *b"UBLKTAGS";
/// Bumped on any incompatible layout change; readers refuse other versions.
pub const VERSION: u32 = 1;
/// Directory the server publishes into (a tmpfs on every systemd host).
pub const DIR: &str = "/run/ublk-server";
pub const HEADER_BYTES: usize = 128;
pub const SLOT_BYTES: usize = 64;

/// Where the server thinks a tag is. Stored as `u32` in [`TagSlot::state`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// No FETCH_REQ submitted yet for this tag.
    Idle = 0,
    /// FETCH_REQ or COMMIT_AND_FETCH_REQ submitted: the server waits for a request.
    Waiting = 1,
    /// A request was received (its CQE reaped) and is being served.
    InServer = 2,
    /// The result was queued as COMMIT_AND_FETCH_REQ (submitted with the next io_uring_enter).
    Committed = 3,
    /// The queue is shutting down; the tag takes no more requests.
    Stopped = 4,
}

impl SlotState {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Idle,
            1 => Self::Waiting,
            2 => Self::InServer,
            3 => Self::Committed,
            4 => Self::Stopped,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Waiting => "waiting",
            Self::InServer => "in_server",
            Self::Committed => "committed",
            Self::Stopped => "stopped",
        }
    }
}

/// File header, written once at start-up (only `heartbeat_ns` changes later).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagStateHeader {
    pub magic: [u8; 8],
    pub version: u32,
    /// `HEADER_BYTES`, so a reader can skip a longer header of a newer minor layout.
    pub header_bytes: u32,
    /// `SLOT_BYTES`.
    pub slot_bytes: u32,
    pub dev_id: u32,
    /// Server process id (tgid) in the server's pid namespace.
    pub pid: u32,
    pub nr_queues: u16,
    pub queue_depth: u16,
    /// CLOCK_MONOTONIC ns when the server started.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns of the server's last main-loop pass (0 = not maintained).
    pub heartbeat_ns: u64,
    /// Bit set of injected fault kinds active in this server (see ublk-server `inject`).
    pub fault_mask: u64,
    pub _reserved: [u64; 9],
}

/// One tag, as decoded by a reader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TagSlot {
    /// [`SlotState`] as u32.
    pub state: u32,
    /// `UBLK_IO_OP_*` of the current/last request.
    pub op: u32,
    pub start_sector: u64,
    pub nr_sectors: u32,
    /// Result of the last commit (bytes or -errno).
    pub result: i32,
    /// CLOCK_MONOTONIC ns when the tag last entered `Waiting`.
    pub waiting_since_ns: u64,
    /// CLOCK_MONOTONIC ns when the current request was received.
    pub received_ns: u64,
    /// CLOCK_MONOTONIC ns of the last commit.
    pub committed_ns: u64,
    /// Thread id (kernel tid) that owns the tag (the queue thread).
    pub tid: u32,
    /// Injected fault kind acting on this tag now (0 = none).
    pub fault: u32,
    /// Requests completed on this tag since start.
    pub seq: u64,
}

/// The writer's view of a slot: same layout, atomics for lock-free updates.
/// (BPF has no 32-bit atomics in core; the eBPF side never writes this file.)
#[cfg(not(target_arch = "bpf"))]
#[repr(C)]
pub struct TagSlotAtomic {
    pub state: AtomicU32,
    pub op: AtomicU32,
    pub start_sector: AtomicU64,
    pub nr_sectors: AtomicU32,
    pub result: AtomicI32,
    pub waiting_since_ns: AtomicU64,
    pub received_ns: AtomicU64,
    pub committed_ns: AtomicU64,
    pub tid: AtomicU32,
    pub fault: AtomicU32,
    pub seq: AtomicU64,
}

const _: () = assert!(core::mem::size_of::<TagStateHeader>() == HEADER_BYTES);
const _: () = assert!(core::mem::size_of::<TagSlot>() == SLOT_BYTES);
#[cfg(not(target_arch = "bpf"))]
const _: () = assert!(core::mem::size_of::<TagSlotAtomic>() == SLOT_BYTES);
#[cfg(not(target_arch = "bpf"))]
const _: () =
    assert!(core::mem::offset_of!(TagSlot, seq) == core::mem::offset_of!(TagSlotAtomic, seq));
const _: () = assert!(core::mem::offset_of!(TagSlot, tid) == 48);

/// Byte offset of slot (q_id, tag) in the file.
pub const fn slot_offset(queue_depth: u16, q_id: u16, tag: u16) -> usize {
    HEADER_BYTES + (q_id as usize * queue_depth as usize + tag as usize) * SLOT_BYTES
}

/// Total file size for a device.
pub const fn file_bytes(nr_queues: u16, queue_depth: u16) -> usize {
    HEADER_BYTES + nr_queues as usize * queue_depth as usize * SLOT_BYTES
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

impl TagStateHeader {
    /// Decode and validate a header; `None` when the bytes are short, the magic is wrong or
    /// the version is not [`VERSION`].
    pub fn decode(b: &[u8]) -> Option<Self> {
        let magic: [u8; 8] = b.get(0..8)?.try_into().ok()?;
        if magic != MAGIC {
            return None;
        }
        let version = u32_at(b, 8)?;
        if version != VERSION {
            return None;
        }
        Some(Self {
            magic,
            version,
            header_bytes: u32_at(b, 12)?,
            slot_bytes: u32_at(b, 16)?,
            dev_id: u32_at(b, 20)?,
            pid: u32_at(b, 24)?,
            nr_queues: u16::from_le_bytes(b.get(28..30)?.try_into().ok()?),
            queue_depth: u16::from_le_bytes(b.get(30..32)?.try_into().ok()?),
            start_ns: u64_at(b, 32)?,
            heartbeat_ns: u64_at(b, 40)?,
            fault_mask: u64_at(b, 48)?,
            _reserved: [0; 9],
        })
    }

    /// Encode for the writer (used once at start-up).
    pub fn encode(&self, out: &mut [u8; HEADER_BYTES]) {
        out.fill(0);
        out[0..8].copy_from_slice(&self.magic);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&self.header_bytes.to_le_bytes());
        out[16..20].copy_from_slice(&self.slot_bytes.to_le_bytes());
        out[20..24].copy_from_slice(&self.dev_id.to_le_bytes());
        out[24..28].copy_from_slice(&self.pid.to_le_bytes());
        out[28..30].copy_from_slice(&self.nr_queues.to_le_bytes());
        out[30..32].copy_from_slice(&self.queue_depth.to_le_bytes());
        out[32..40].copy_from_slice(&self.start_ns.to_le_bytes());
        out[40..48].copy_from_slice(&self.heartbeat_ns.to_le_bytes());
        out[48..56].copy_from_slice(&self.fault_mask.to_le_bytes());
    }
}

impl TagSlot {
    /// Decode one slot from exactly-or-more than `SLOT_BYTES` bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        Some(Self {
            state: u32_at(b, 0)?,
            op: u32_at(b, 4)?,
            start_sector: u64_at(b, 8)?,
            nr_sectors: u32_at(b, 16)?,
            result: u32_at(b, 20)? as i32,
            waiting_since_ns: u64_at(b, 24)?,
            received_ns: u64_at(b, 32)?,
            committed_ns: u64_at(b, 40)?,
            tid: u32_at(b, 48)?,
            fault: u32_at(b, 52)?,
            seq: u64_at(b, 56)?,
        })
    }
    pub fn slot_state(&self) -> Option<SlotState> {
        SlotState::from_u32(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = TagStateHeader {
            magic: MAGIC,
            version: VERSION,
            header_bytes: HEADER_BYTES as u32,
            slot_bytes: SLOT_BYTES as u32,
            dev_id: 3,
            pid: 4242,
            nr_queues: 2,
            queue_depth: 64,
            start_ns: 11,
            heartbeat_ns: 12,
            fault_mask: 0b101,
            _reserved: [0; 9],
        };
        let mut buf = [0u8; HEADER_BYTES];
        h.encode(&mut buf);
        assert_eq!(TagStateHeader::decode(&buf), Some(h));
        buf[8] = 9; // other version
        assert_eq!(TagStateHeader::decode(&buf), None);
    }

    #[test]
    fn slot_offsets_do_not_overlap() {
        // q1/tag0 starts right after q0's last tag: a wrong stride would mix queues up.
        assert_eq!(slot_offset(64, 0, 63) + SLOT_BYTES, slot_offset(64, 1, 0));
        assert_eq!(file_bytes(2, 64), slot_offset(64, 1, 63) + SLOT_BYTES);
    }

    #[test]
    fn short_slot_is_rejected() {
        assert_eq!(TagSlot::decode(&[0u8; SLOT_BYTES - 1]), None);
        let mut b = [0u8; SLOT_BYTES];
        b[0] = 2;
        b[20..24].copy_from_slice(&(-5i32).to_le_bytes());
        let s = TagSlot::decode(&b).expect("full slot decodes");
        assert_eq!(s.slot_state(), Some(SlotState::InServer));
        assert_eq!(s.result, -5);
    }
}
