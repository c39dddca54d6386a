//! The server's published tag-state file (`ublk-trace-common::tagstate`, written by our
//! `ublk-server` under `/run/ublk-server/`): what the server believes about each tag, with
//! CLOCK_MONOTONIC timestamps comparable to trace events.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use ublk_trace_common::tagstate::{
    self, HEADER_BYTES, SLOT_BYTES, SlotState, TagSlot, TagStateHeader,
};

/// Decoded file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TagFileSnapshot {
    pub path: String,
    /// Server tgid as the server saw it (its own pid namespace).
    pub pid: u32,
    pub nr_queues: u16,
    pub queue_depth: u16,
    pub start_ns: u64,
    /// Last main-loop pass (0 = not maintained).
    pub heartbeat_ns: u64,
    pub fault_mask: u64,
    /// One entry per (queue, tag), in file order.
    pub tags: Vec<PublishedTag>,
}

/// One slot, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedTag {
    pub q_id: u16,
    pub tag: u16,
    /// `idle`, `waiting`, `in_server`, `committed`, `stopped`, or `unknown(N)`.
    pub state: String,
    pub op: u32,
    pub start_sector: u64,
    pub nr_sectors: u32,
    pub result: i32,
    pub waiting_since_ns: u64,
    pub received_ns: u64,
    pub committed_ns: u64,
    pub tid: u32,
    pub fault: u32,
    pub seq: u64,
}

impl PublishedTag {
    pub fn slot_state(&self) -> Option<SlotState> {
        [
            SlotState::Idle,
            SlotState::Waiting,
            SlotState::InServer,
            SlotState::Committed,
            SlotState::Stopped,
        ]
        .into_iter()
        .find(|s| s.name() == self.state)
    }
}

/// Decode a whole file; `None` if the header is missing, of another version, or inconsistent.
pub fn decode(path: &str, bytes: &[u8]) -> Option<TagFileSnapshot> {
    let h = TagStateHeader::decode(bytes)?;
    let header_bytes = usize::try_from(h.header_bytes).ok()?;
    let slot_bytes = usize::try_from(h.slot_bytes).ok()?;
    if header_bytes < HEADER_BYTES || slot_bytes < SLOT_BYTES {
        return None;
    }
    let mut tags = Vec::new();
    for q_id in 0..h.nr_queues {
        for tag in 0..h.queue_depth {
            let idx = usize::from(q_id) * usize::from(h.queue_depth) + usize::from(tag);
            let off = header_bytes.checked_add(idx.checked_mul(slot_bytes)?)?;
            let s = TagSlot::decode(bytes.get(off..off.checked_add(SLOT_BYTES)?)?)?;
            tags.push(published(q_id, tag, &s));
        }
    }
    Some(TagFileSnapshot {
        path: path.to_string(),
        pid: h.pid,
        nr_queues: h.nr_queues,
        queue_depth: h.queue_depth,
        start_ns: h.start_ns,
        heartbeat_ns: h.heartbeat_ns,
        fault_mask: h.fault_mask,
        tags,
    })
}

fn published(q_id: u16, tag: u16, s: &TagSlot) -> PublishedTag {
    PublishedTag {
        q_id,
        tag,
        state: s.slot_state().map_or_else(
            || format!("unknown({})", s.state),
            |st| st.name().to_string(),
        ),
        op: s.op,
        start_sector: s.start_sector,
        nr_sectors: s.nr_sectors,
        result: s.result,
        waiting_since_ns: s.waiting_since_ns,
        received_ns: s.received_ns,
        committed_ns: s.committed_ns,
        tid: s.tid,
        fault: s.fault,
        seq: s.seq,
    }
}

/// Find and decode the file of `dev_id` in `dir` (normally [`tagstate::DIR`]); the file name is
/// the server's choice, so every regular file is tried and matched by the header's `dev_id`.
/// The newest `start_ns` wins (a restarted server leaves its old file behind).
pub fn find(dir: &Path, dev_id: u32) -> std::io::Result<Option<TagFileSnapshot>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut best: Option<TagFileSnapshot> = None;
    for ent in entries.flatten() {
        let path: PathBuf = ent.path();
        if !ent.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(head) = read_prefix(&path, HEADER_BYTES) else {
            continue;
        };
        match TagStateHeader::decode(&head) {
            Some(h) if h.dev_id == dev_id => {}
            _ => continue,
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Some(snap) = decode(&path.to_string_lossy(), &bytes) else {
            continue;
        };
        if best.as_ref().is_none_or(|b| snap.start_ns > b.start_ns) {
            best = Some(snap);
        }
    }
    Ok(best)
}

fn read_prefix(path: &Path, n: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(n);
    std::fs::File::open(path)?
        .take(u64::try_from(n).unwrap_or(u64::MAX))
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Default directory, re-exported for callers.
pub fn default_dir() -> &'static Path {
    Path::new(tagstate::DIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ublk_trace_common::tagstate::{MAGIC, VERSION, file_bytes, slot_offset};

    fn file(nr_queues: u16, depth: u16) -> Vec<u8> {
        let h = TagStateHeader {
            magic: MAGIC,
            version: VERSION,
            header_bytes: HEADER_BYTES as u32,
            slot_bytes: SLOT_BYTES as u32,
            dev_id: 3,
            pid: 77,
            nr_queues,
            queue_depth: depth,
            start_ns: 10,
            heartbeat_ns: 20,
            fault_mask: 0,
            _reserved: [0; 9],
        };
        let mut out = vec![0u8; file_bytes(nr_queues, depth)];
        let mut hb = [0u8; HEADER_BYTES];
        h.encode(&mut hb);
        out[..HEADER_BYTES].copy_from_slice(&hb);
        out
    }

    #[test]
    fn slots_decode_at_their_queue_and_tag() {
        let mut b = file(2, 4);
        let off = slot_offset(4, 1, 2);
        b[off..off + 4].copy_from_slice(&2u32.to_le_bytes()); // in_server
        b[off + 32..off + 40].copy_from_slice(&555u64.to_le_bytes()); // received_ns
        b[off + 48..off + 52].copy_from_slice(&4242u32.to_le_bytes()); // tid
        let s = decode("f", &b).expect("decodes");
        assert_eq!(s.tags.len(), 8);
        let t = s
            .tags
            .iter()
            .find(|t| t.q_id == 1 && t.tag == 2)
            .expect("slot");
        assert_eq!(t.state, "in_server");
        assert_eq!(t.slot_state(), Some(SlotState::InServer));
        assert_eq!(t.received_ns, 555);
        assert_eq!(t.tid, 4242);
        // The neighbour on queue 0 with the same tag is untouched (no stride mix-up).
        let n = s
            .tags
            .iter()
            .find(|t| t.q_id == 0 && t.tag == 2)
            .expect("slot");
        assert_eq!(n.state, "idle");
    }

    #[test]
    fn truncated_file_is_refused() {
        let b = file(2, 4);
        assert!(decode("f", &b[..b.len() - 1]).is_none());
        assert!(decode("f", &b[..10]).is_none());
    }

    #[test]
    fn find_matches_dev_id_in_a_directory() {
        let dir = std::env::temp_dir().join(format!("ublk-trace-tagfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("whatever.tags"), file(1, 2)).expect("write");
        std::fs::write(dir.join("junk"), b"not a tag file").expect("write");
        let found = find(&dir, 3).expect("reads dir");
        let other = find(&dir, 4).expect("reads dir");
        let missing = find(&dir.join("nope"), 3).expect("missing dir is no file");
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(found.map(|s| s.pid), Some(77));
        assert!(other.is_none());
        assert!(missing.is_none());
    }
}
