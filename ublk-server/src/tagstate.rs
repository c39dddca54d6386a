//! Publishes the per-tag state file (layout in `ublk_trace_common::tagstate`) so that
//! `ublk-trace` can see what the server believes about each request.
//!
//! The file is a shared mapping; queue threads update their own slots with relaxed atomic
//! stores (no lock, no syscall) and bump `seq` last. It is removed when the writer is dropped
//! (clean exit); after a crash it stays behind, and readers pick the newest `start_ns`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::Relaxed;

use ublk_trace_common::tagstate::{
    self, HEADER_BYTES, MAGIC, SLOT_BYTES, SlotState, TagSlotAtomic, TagStateHeader, VERSION,
};

use crate::error::{Error, Result};

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns()`, so server and tracer times compare.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid local; it is a vDSO call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64
}

pub struct TagStateFile {
    path: PathBuf,
    base: NonNull<u8>,
    len: usize,
    nr_queues: u16,
    queue_depth: u16,
}

// SAFETY: the mapping is shared memory accessed only through atomics (slots) or once at
// creation (header); the pointer stays valid until Drop.
unsafe impl Send for TagStateFile {}
// SAFETY: see Send; concurrent slot access goes through `TagSlotAtomic`.
unsafe impl Sync for TagStateFile {}

impl TagStateFile {
    /// File name for a device: `ublkb<id>.tags` in [`tagstate::DIR`].
    pub fn path_for(dev_id: u32) -> PathBuf {
        PathBuf::from(tagstate::DIR).join(format!("ublkb{dev_id}.tags"))
    }

    pub fn create(dev_id: u32, nr_queues: u16, queue_depth: u16, fault_mask: u64) -> Result<Self> {
        let path = Self::path_for(dev_id);
        std::fs::create_dir_all(tagstate::DIR)
            .map_err(|e| Error::io(format!("create {}", tagstate::DIR), e))?;
        let len = tagstate::file_bytes(nr_queues, queue_depth);
        let _ = std::fs::remove_file(&path);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        let header = TagStateHeader {
            magic: MAGIC,
            version: VERSION,
            header_bytes: HEADER_BYTES as u32,
            slot_bytes: SLOT_BYTES as u32,
            dev_id,
            pid: std::process::id(),
            nr_queues,
            queue_depth,
            start_ns: now_ns(),
            heartbeat_ns: 0,
            fault_mask,
            _reserved: [0; 9],
        };
        let mut hb = [0u8; HEADER_BYTES];
        header.encode(&mut hb);
        file.write_all(&hb)
            .and_then(|_| file.set_len(len as u64))
            .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        // SAFETY: mapping `len` bytes of a file we just sized to `len`; checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_file(&path);
            return Err(Error::io(format!("mmap {}", path.display()), e));
        }
        let base = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| Error::io("mmap tag state", std::io::Error::other("null mapping")))?;
        Ok(Self {
            path,
            base,
            len,
            nr_queues,
            queue_depth,
        })
    }

    /// The slot of (q_id, tag); `None` outside the device's geometry.
    pub fn slot(&self, q_id: u16, tag: u16) -> Option<&TagSlotAtomic> {
        if q_id >= self.nr_queues || tag >= self.queue_depth {
            return None;
        }
        let off = tagstate::slot_offset(self.queue_depth, q_id, tag);
        // SAFETY: off + SLOT_BYTES <= len (geometry checked above); the mapping is page
        // aligned and slots are 64-byte aligned, which satisfies TagSlotAtomic's alignment;
        // all access is atomic.
        Some(unsafe { &*self.base.as_ptr().add(off).cast::<TagSlotAtomic>() })
    }

    /// Main-loop liveness stamp (header `heartbeat_ns`).
    pub fn heartbeat(&self) {
        // SAFETY: offset 40 is the 8-aligned heartbeat_ns field inside the mapped header.
        let hb = unsafe {
            &*self
                .base
                .as_ptr()
                .add(40)
                .cast::<std::sync::atomic::AtomicU64>()
        };
        hb.store(now_ns(), Relaxed);
    }

    /// Add fault bits to the header's `fault_mask`.
    pub fn add_fault_mask(&self, bits: u64) {
        // SAFETY: offset 48 is the 8-aligned fault_mask field inside the mapped header.
        let m = unsafe {
            &*self
                .base
                .as_ptr()
                .add(48)
                .cast::<std::sync::atomic::AtomicU64>()
        };
        m.fetch_or(bits, Relaxed);
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TagStateFile {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in create(); no slot reference outlives
        // self because slot() borrows self.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writer helpers on one slot, named after the protocol step they record.
pub trait SlotWriter {
    fn set_waiting(&self);
    fn set_received(&self, op: u32, start_sector: u64, nr_sectors: u32);
    fn set_committed(&self, result: i32);
    fn set_state(&self, s: SlotState);
}

impl SlotWriter for TagSlotAtomic {
    fn set_waiting(&self) {
        self.waiting_since_ns.store(now_ns(), Relaxed);
        self.state.store(SlotState::Waiting as u32, Relaxed);
    }
    fn set_received(&self, op: u32, start_sector: u64, nr_sectors: u32) {
        self.op.store(op, Relaxed);
        self.start_sector.store(start_sector, Relaxed);
        self.nr_sectors.store(nr_sectors, Relaxed);
        self.received_ns.store(now_ns(), Relaxed);
        self.state.store(SlotState::InServer as u32, Relaxed);
    }
    fn set_committed(&self, result: i32) {
        self.result.store(result, Relaxed);
        self.committed_ns.store(now_ns(), Relaxed);
        self.state.store(SlotState::Committed as u32, Relaxed);
        // Only the owning queue thread writes a slot: a plain load+store avoids a locked RMW.
        self.seq
            .store(self.seq.load(Relaxed).wrapping_add(1), Relaxed);
    }
    fn set_state(&self, s: SlotState) {
        self.state.store(s as u32, Relaxed);
    }
}
