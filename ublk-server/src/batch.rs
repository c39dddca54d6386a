//! UBLK_F_BATCH_IO (7.0+): a queue thread speaks to the kernel in per-queue commands instead of
//! one FETCH_REQ / COMMIT_AND_FETCH_REQ per tag.
//!
//! - `PREP_IO_CMDS`, once at start: one element per tag (the tag and its buffer address) makes
//!   the tag ready, as a FETCH_REQ does. START_DEV completes once every tag was prepared.
//! - `FETCH_IO_CMDS`, multishot: each CQE reports the tags of newly queued requests as `u16`s
//!   written into a provided buffer, `res` bytes at the offset the previous CQEs left. Each
//!   fetch command has a buffer group of its own holding one incrementally consumed buffer
//!   (IOU_PBUF_RING_INC); when it is used up the command ends with -ENOBUFS and is armed again
//!   with the buffer given back. Two are kept per queue, as the kernel's selftest server does,
//!   so one is armed while the other is re-armed.
//! - `COMMIT_IO_CMDS`: the results of the requests served in one loop pass, in one command.
//!   An accepted element both completes the request and readies the tag for the next one. The
//!   CQE says how many bytes of elements the kernel handled; the rest were not committed.
//!
//! Elements are `struct ublk_elem_header` (tag, buf_index, result) followed by the buffer
//! address (UBLK_BATCH_F_HAS_BUF_ADDR): 16 bytes. Kernel facts, from drivers/block/ublk_drv.c
//! of the 7.x series (`ublk_check_batch_cmd`, `ublk_batch_prep_io`, `ublk_batch_commit_io`,
//! `ublk_validate_batch_fetch_cmd`): elem_bytes must be 8 plus 8 per address flag; nr_elem at
//! most the queue depth; a device that copies data (no user copy, no zero copy) needs the
//! buffer address in PREP and COMMIT; FETCH needs IORING_URING_CMD_MULTISHOT, elem_bytes 2,
//! flags 0 and takes its buffer group from `sqe->buf_index`; a batch device refuses the per-tag
//! FETCH_REQ / COMMIT_AND_FETCH_REQ / NEED_GET_DATA (EOPNOTSUPP) and clears NEED_GET_DATA.

use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use ublk_abi::*;

use crate::error::{Error, Result};
use crate::queue::Mapping;

/// Bytes per PREP/COMMIT element: `ublk_elem_header` + the buffer address.
pub const ELEM_BYTES: usize = 16;
/// Fetch commands kept armed per queue.
pub const NR_FETCH: usize = 2;
/// `IORING_URING_CMD_MULTISHOT` (include/uapi/linux/io_uring.h, 6.18+): `uring_cmd_flags` bit.
const IORING_URING_CMD_MULTISHOT: u32 = 1 << 1;
/// `IOU_PBUF_RING_INC` (6.12+): a provided buffer is consumed by the bytes used, not whole.
const IOU_PBUF_RING_INC: u16 = 2;

/// One PREP/COMMIT element, as the kernel reads it.
pub fn encode_elem(out: &mut [u8], tag: u16, result: i32, buf_addr: u64) {
    out[0..2].copy_from_slice(&tag.to_le_bytes());
    out[2..4].copy_from_slice(&0u16.to_le_bytes());
    out[4..8].copy_from_slice(&result.to_le_bytes());
    out[8..16].copy_from_slice(&buf_addr.to_le_bytes());
}

/// The tag of element `i` of an element buffer.
fn elem_tag(buf: &[u8], i: usize) -> Option<u16> {
    let b = buf.get(i * ELEM_BYTES..i * ELEM_BYTES + 2)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

/// A PREP or COMMIT SQE for `nr_elem` elements at `addr`.
pub fn elem_cmd_sqe(op: u32, q_id: u16, nr_elem: u16, addr: u64, user_data: u64) -> squeue::Entry {
    let cmd = ublk_batch_io {
        q_id,
        flags: UBLK_BATCH_F_HAS_BUF_ADDR,
        nr_elem,
        elem_bytes: ELEM_BYTES as u8,
        ..Default::default()
    };
    opcode::UringCmd16::new(types::Fixed(0), op)
        .cmd(cmd.to_bytes())
        .addr(Some(addr))
        .build()
        .user_data(user_data)
}

/// A multishot FETCH_IO_CMDS SQE selecting its buffer from group `bgid`.
pub fn fetch_sqe(q_id: u16, depth: u16, bgid: u16, user_data: u64) -> squeue::Entry {
    let cmd = ublk_batch_io {
        q_id,
        flags: 0,
        nr_elem: depth,
        elem_bytes: 2,
        ..Default::default()
    };
    let sqe = opcode::UringCmd16::new(types::Fixed(0), UBLK_U_IO_FETCH_IO_CMDS)
        .cmd(cmd.to_bytes())
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
        .user_data(user_data);
    // io-uring's UringCmd16 builder sets neither uring_cmd_flags' MULTISHOT nor buf_group:
    // patch the two fields of the 64-byte SQE (offsets from struct io_uring_sqe: the
    // uring_cmd_flags union at 28, the buf_index/buf_group union at 40).
    // SAFETY: Entry is a repr(C) wrapper of the 64-byte io_uring_sqe (size asserted below),
    // plain data without Drop; any byte pattern of it is a valid SQE value.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(sqe) };
    let flags =
        u32::from_le_bytes([raw[28], raw[29], raw[30], raw[31]]) | IORING_URING_CMD_MULTISHOT;
    raw[28..32].copy_from_slice(&flags.to_le_bytes());
    raw[40..42].copy_from_slice(&bgid.to_le_bytes());
    // SAFETY: as above, the bytes came from an Entry and only two plain fields changed.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);

/// A buffer of elements for one COMMIT_IO_CMDS, kept until its CQE.
struct CommitBuf {
    bytes: Vec<u8>,
    nr: u16,
    in_flight: bool,
}

/// One fetch command's buffer group: a one-entry buffer ring and the buffer it provides.
struct FetchBuf {
    ring: Mapping,
    data: Mapping,
    bgid: u16,
    /// Bytes of `data` the kernel has written tags into since the buffer was provided.
    off: usize,
    /// The buffer is in the ring (provided, not used up).
    in_ring: bool,
    /// The fetch command is outstanding.
    armed: bool,
}

impl FetchBuf {
    /// Give the whole buffer to the kernel again.
    fn provide(&mut self) {
        let base = self.ring.ptr.as_ptr();
        // struct io_uring_buf is addr u64, len u32, bid u16, resv u16; the ring's tail is the
        // first entry's resv.
        // SAFETY: the ring mapping is one page, page aligned, registered as a one-entry ring:
        // entry 0 is bytes 0..16, its `resv` at 14 is the ring tail the kernel reads. Only
        // this thread writes it; the release store publishes the entry before the tail.
        unsafe {
            let tail = &*base.add(14).cast::<AtomicU16>();
            let t = tail.load(Ordering::Relaxed);
            base.cast::<u64>()
                .write_volatile(self.data.ptr.as_ptr() as u64);
            base.add(8)
                .cast::<u32>()
                .write_volatile(self.data.len as u32);
            base.add(12).cast::<u16>().write_volatile(self.bgid);
            tail.store(t.wrapping_add(1), Ordering::Release);
        }
        self.off = 0;
        self.in_ring = true;
    }
}

/// What a fetch CQE asks of the queue.
#[derive(Debug, PartialEq, Eq)]
pub struct Fetched {
    /// Address and count of the `u16` tags delivered.
    pub tags: (u64, usize),
    /// The command ended: arm it again (after -ENOBUFS or an overflowed CQ) ...
    pub rearm: bool,
    /// ... unless it ended for good (the queue is being torn down).
    pub ended: Option<i32>,
}

/// The batch state of one queue thread.
pub struct Batch {
    q_id: u16,
    depth: u16,
    prep: Vec<u8>,
    commits: Vec<CommitBuf>,
    /// Index of the commit buffer being filled.
    filling: Option<usize>,
    fetch: Vec<FetchBuf>,
}

impl Batch {
    /// Register the fetch buffer groups with `ring` (groups `q_id * NR_FETCH ..`, unique per
    /// ring since one ring serves one queue).
    pub fn new(ring: &IoUring, q_id: u16, depth: u16) -> Result<Self> {
        let page = crate::page_size();
        let data_len = (usize::from(depth) * 2).div_ceil(page) * page;
        let mut fetch = Vec::with_capacity(NR_FETCH);
        for i in 0..NR_FETCH {
            let bgid = i as u16;
            let anon = |len, what: &str| {
                Mapping::new(
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                    what,
                )
            };
            let ring_map = anon(page, "map a fetch buffer ring")?;
            let data = anon(data_len, "map a fetch buffer")?;
            // SAFETY: the ring memory is a page-aligned page owned by the FetchBuf, which
            // lives in the Queue next to the io_uring and is dropped after it.
            unsafe {
                ring.submitter().register_buf_ring_with_flags(
                    ring_map.ptr.as_ptr() as u64,
                    1,
                    bgid,
                    IOU_PBUF_RING_INC,
                )
            }
            .map_err(|e| {
                Error::io(
                    format!(
                        "queue {q_id}: register the FETCH_IO_CMDS buffer ring (needs Linux 6.12+ \
                         incremental provided buffers)"
                    ),
                    e,
                )
            })?;
            fetch.push(FetchBuf {
                ring: ring_map,
                data,
                bgid,
                off: 0,
                in_ring: false,
                armed: false,
            });
        }
        Ok(Self {
            q_id,
            depth,
            prep: Vec::new(),
            commits: Vec::new(),
            filling: None,
            fetch,
        })
    }

    /// The PREP_IO_CMDS SQE for `tags` with their buffer addresses; the element buffer stays
    /// in `self` for the command's lifetime.
    pub fn prep_sqe(&mut self, tags: &[(u16, u64)], user_data: u64) -> squeue::Entry {
        self.prep = vec![0u8; tags.len() * ELEM_BYTES];
        for (i, &(tag, addr)) in tags.iter().enumerate() {
            encode_elem(
                &mut self.prep[i * ELEM_BYTES..(i + 1) * ELEM_BYTES],
                tag,
                0,
                addr,
            );
        }
        elem_cmd_sqe(
            UBLK_U_IO_PREP_IO_CMDS,
            self.q_id,
            tags.len() as u16,
            self.prep.as_ptr() as u64,
            user_data,
        )
    }

    /// Arm fetch command `i` (providing its buffer first if the kernel used it up).
    pub fn arm_fetch_sqe(&mut self, i: usize, user_data: u64) -> Option<squeue::Entry> {
        let (q_id, depth) = (self.q_id, self.depth);
        let f = self.fetch.get_mut(i)?;
        if !f.in_ring {
            f.provide();
        }
        f.armed = true;
        Some(fetch_sqe(q_id, depth, f.bgid, user_data))
    }

    pub fn nr_fetch_armed(&self) -> usize {
        self.fetch.iter().filter(|f| f.armed).count()
    }

    /// A CQE of fetch command `i`: where its tags are and whether to arm it again.
    pub fn on_fetch_cqe(&mut self, i: usize, res: i32, flags: u32) -> Option<Fetched> {
        let f = self.fetch.get_mut(i)?;
        let mut tags = (f.data.ptr.as_ptr() as u64, 0);
        if res > 0 {
            let start = f.off.min(f.data.len);
            let end = (f.off + res as usize).min(f.data.len);
            tags = (tags.0 + start as u64, (end - start) / 2);
            f.off = end;
        }
        // With incremental consumption a CQE that used the buffer up comes without BUF_MORE;
        // -ENOBUFS says the ring held none.
        if (cqueue::buffer_select(flags).is_some() && !cqueue::buffer_more(flags))
            || res == -libc::ENOBUFS
        {
            f.in_ring = false;
        }
        let mut out = Fetched {
            tags,
            rearm: false,
            ended: None,
        };
        if !cqueue::more(flags) {
            f.armed = false;
            if res < 0 && res != -libc::ENOBUFS {
                out.ended = Some(res);
            } else {
                out.rearm = true;
            }
        }
        Some(out)
    }

    /// Add one result to the commit being built. Returns true when that buffer is full (the
    /// caller then takes its SQE at once).
    pub fn add_commit(&mut self, tag: u16, result: i32, buf_addr: u64) -> bool {
        let depth = usize::from(self.depth);
        let idx = match self.filling {
            Some(i) => i,
            None => {
                let i = match self.commits.iter().position(|c| !c.in_flight) {
                    Some(i) => i,
                    None => {
                        // Rare (every buffer still in flight): grow the pool off the hot path.
                        self.commits.push(CommitBuf {
                            bytes: vec![0u8; depth * ELEM_BYTES],
                            nr: 0,
                            in_flight: false,
                        });
                        self.commits.len() - 1
                    }
                };
                self.commits[i].nr = 0;
                self.filling = Some(i);
                i
            }
        };
        let c = &mut self.commits[idx];
        let n = usize::from(c.nr);
        encode_elem(
            &mut c.bytes[n * ELEM_BYTES..(n + 1) * ELEM_BYTES],
            tag,
            result,
            buf_addr,
        );
        c.nr += 1;
        usize::from(c.nr) == depth
    }

    /// The COMMIT_IO_CMDS SQE of the commit being built, if it holds any element.
    pub fn take_commit_sqe(&mut self, user_data: impl Fn(u16) -> u64) -> Option<squeue::Entry> {
        let idx = self.filling.take()?;
        let c = self.commits.get_mut(idx)?;
        if c.nr == 0 {
            return None;
        }
        c.in_flight = true;
        Some(elem_cmd_sqe(
            UBLK_U_IO_COMMIT_IO_CMDS,
            self.q_id,
            c.nr,
            c.bytes.as_ptr() as u64,
            user_data(idx as u16),
        ))
    }

    /// The CQE of commit buffer `idx`: the tags the kernel did not take (empty when it took
    /// them all). `res` is the bytes of elements handled, or -errno when it handled none.
    pub fn on_commit_cqe(&mut self, idx: u16, res: i32) -> Vec<u16> {
        let Some(c) = self.commits.get_mut(usize::from(idx)) else {
            return Vec::new();
        };
        c.in_flight = false;
        let done = if res < 0 {
            0
        } else {
            res as usize / ELEM_BYTES
        };
        (done..usize::from(c.nr))
            .filter_map(|i| elem_tag(&c.bytes, i))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(sqe: squeue::Entry) -> [u8; 64] {
        // SAFETY: Entry is the 64-byte io_uring_sqe (size asserted at compile time).
        unsafe { std::mem::transmute(sqe) }
    }

    /// The element layout the kernel walks: tag at 0, buf_index at 2, result at 4, buffer
    /// address at 8 (`ublk_batch_buf_addr()` reads right after the 8-byte header).
    #[test]
    fn elements_are_header_then_address() {
        let mut b = [0xffu8; ELEM_BYTES];
        encode_elem(&mut b, 0x0102, -5, 0x1122_3344_5566_7788);
        assert_eq!(&b[0..2], &[0x02, 0x01]);
        assert_eq!(&b[2..4], &[0, 0], "buf_index unused without AUTO_BUF_REG");
        assert_eq!(&b[4..8], &(-5i32).to_le_bytes());
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(ELEM_BYTES, std::mem::size_of::<ublk_elem_header>() + 8);
    }

    #[test]
    fn commit_sqe_names_queue_count_size_and_buffer() {
        let sqe = raw(elem_cmd_sqe(
            UBLK_U_IO_COMMIT_IO_CMDS,
            3,
            7,
            0xdead_0000,
            0x26_0001,
        ));
        assert_eq!(raw_op(&sqe), UBLK_U_IO_COMMIT_IO_CMDS);
        assert_eq!(&sqe[16..24], &0xdead_0000u64.to_le_bytes(), "sqe->addr");
        assert_eq!(&sqe[48..50], &3u16.to_le_bytes(), "q_id");
        assert_eq!(&sqe[50..52], &UBLK_BATCH_F_HAS_BUF_ADDR.to_le_bytes());
        assert_eq!(&sqe[52..54], &7u16.to_le_bytes(), "nr_elem");
        assert_eq!(sqe[54], 16, "elem_bytes: header + address");
        assert_eq!(sqe[1] & 1, 1, "IOSQE_FIXED_FILE");
    }

    fn raw_op(sqe: &[u8; 64]) -> u32 {
        u32::from_le_bytes([sqe[8], sqe[9], sqe[10], sqe[11]])
    }

    /// What `ublk_validate_batch_fetch_cmd()` checks, and where io_uring finds the group.
    #[test]
    fn fetch_sqe_is_multishot_with_its_buffer_group() {
        let sqe = raw(fetch_sqe(1, 64, 5, 0x27_0005));
        assert_eq!(sqe[0], 46, "IORING_OP_URING_CMD");
        assert_eq!(raw_op(&sqe), UBLK_U_IO_FETCH_IO_CMDS);
        let flags = u32::from_le_bytes([sqe[28], sqe[29], sqe[30], sqe[31]]);
        assert_eq!(flags, IORING_URING_CMD_MULTISHOT, "uring_cmd_flags");
        assert_eq!(sqe[1] & (1 << 5), 1 << 5, "IOSQE_BUFFER_SELECT");
        assert_eq!(&sqe[40..42], &5u16.to_le_bytes(), "buf_group");
        assert_eq!(&sqe[48..50], &1u16.to_le_bytes(), "q_id");
        assert_eq!(&sqe[50..52], &[0, 0], "flags must be 0");
        assert_eq!(sqe[54], 2, "elem_bytes: one u16 tag");
        assert_eq!(&sqe[32..40], &0x27_0005u64.to_le_bytes(), "user_data");
    }

    /// A fetch on a real ring: the buffer group registers (incremental consumption) and
    /// CQE bookkeeping follows the offsets; -ENOBUFS re-arms, other errors end the command.
    #[test]
    fn fetch_bookkeeping_tracks_offsets_and_endings() {
        let ring = IoUring::new(8).expect("io_uring");
        let mut b = Batch::new(&ring, 0, 8).expect("register buffer rings");
        assert!(b.arm_fetch_sqe(0, 0).is_some());
        assert!(b.arm_fetch_sqe(9, 0).is_none());
        assert_eq!(b.nr_fetch_armed(), 1);
        let base = b.fetch[0].data.ptr.as_ptr() as u64;
        let more = cqueue_flags(true, true);
        let f = b.on_fetch_cqe(0, 6, more).expect("fetch 0");
        assert_eq!(f.tags, (base, 3));
        assert!(!f.rearm && f.ended.is_none());
        let f = b.on_fetch_cqe(0, 4, more).expect("fetch 0");
        assert_eq!(
            f.tags,
            (base + 6, 2),
            "the next tags follow the previous ones"
        );
        let f = b.on_fetch_cqe(0, -libc::ENOBUFS, 0).expect("fetch 0");
        assert!(f.rearm && f.ended.is_none(), "{f:?}");
        assert_eq!(b.nr_fetch_armed(), 0);
        assert!(b.arm_fetch_sqe(0, 0).is_some());
        let f = b.on_fetch_cqe(0, -libc::ENODEV, 0).expect("fetch 0");
        assert_eq!(f.ended, Some(-libc::ENODEV));
        assert!(!f.rearm);
    }

    fn cqueue_flags(buffer: bool, more: bool) -> u32 {
        // IORING_CQE_F_BUFFER 1, IORING_CQE_F_MORE 2, IORING_CQE_F_BUF_MORE 16.
        u32::from(buffer) | if more { 2 | 16 } else { 0 }
    }

    /// A commit the kernel handled in part names the tags it left in the server.
    #[test]
    fn short_commit_names_the_tags_left_over() {
        let ring = IoUring::new(8).expect("io_uring");
        let mut b = Batch::new(&ring, 0, 4).expect("batch");
        assert!(b.take_commit_sqe(u64::from).is_none(), "nothing to commit");
        for tag in [3, 1, 2] {
            assert!(!b.add_commit(tag, 4096, 0x1000));
        }
        assert!(b.take_commit_sqe(u64::from).is_some());
        // A second pass while the first is in flight gets another buffer.
        assert!(!b.add_commit(0, 512, 0x2000));
        assert!(b.take_commit_sqe(u64::from).is_some());
        assert_eq!(b.commits.len(), 2);
        assert_eq!(
            b.on_commit_cqe(0, 16),
            vec![1, 2],
            "one element of three taken"
        );
        assert_eq!(b.on_commit_cqe(1, 16), Vec::<u16>::new());
        assert_eq!(b.on_commit_cqe(0, -libc::EINVAL), vec![3, 1, 2]);
        // Full at depth.
        for tag in 0..3 {
            assert!(!b.add_commit(tag, 0, 0x1000));
        }
        assert!(b.add_commit(3, 0, 0x1000), "the fourth of depth 4 fills it");
    }
}
