//! io_uring fdinfo (`/proc/PID/fdinfo/FD` of an `anon_inode:[io_uring]` fd): whether the server
//! left SQEs unsubmitted (SqHead != SqTail: a COMMIT written but io_uring_enter not called) or
//! CQEs unreaped (CqTail - CqHead > 0: a request delivered but never read).
use serde::{Deserialize, Serialize};

/// One io_uring instance of the server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RingInfo {
    /// fd number in the server process.
    pub fd: u32,
    pub sq_mask: u32,
    pub sq_head: u32,
    pub sq_tail: u32,
    pub cq_mask: u32,
    pub cq_head: u32,
    pub cq_tail: u32,
    /// Posted, not yet reaped completions (`CQEs:` list).
    pub cqes: Vec<CqeLine>,
    /// Registered files, e.g. `ublkc0` (identifies a ublk queue ring).
    pub user_files: Vec<String>,
}

/// One entry of the `CQEs:` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CqeLine {
    /// Ring slot (`CqHead & CqMask` onwards).
    pub slot: u32,
    /// Server-defined; libublk encodes `tag | cmd_op << 16`, other servers differ.
    pub user_data: u64,
    pub res: i32,
    pub flags: u32,
}

impl RingInfo {
    /// SQEs written by the server but not consumed by the kernel (counters wrap at 2^32).
    pub fn sq_pending(&self) -> u32 {
        self.sq_tail.wrapping_sub(self.sq_head)
    }
    /// CQEs posted by the kernel but not reaped by the server.
    pub fn cq_unreaped(&self) -> u32 {
        self.cq_tail.wrapping_sub(self.cq_head)
    }
    /// Position of a listed CQE in the completion queue, counted like CqHead (since the ring
    /// was created): fdinfo lists CQEs from CqHead on and prints each one's slot
    /// (`position & CqMask`). `index` is its place in the list, used when the mask is unknown.
    pub fn cqe_position(&self, c: &CqeLine, index: usize) -> u32 {
        if self.cq_mask == 0 {
            return self.cq_head.wrapping_add(index as u32);
        }
        let first_slot = self.cq_head & self.cq_mask;
        self.cq_head
            .wrapping_add(c.slot.wrapping_sub(first_slot) & self.cq_mask)
    }
    /// The ring has `/dev/ublkcN` registered: a queue ring of device N.
    pub fn serves_char_dev(&self, dev_id: u32) -> bool {
        let want = format!("ublkc{dev_id}");
        self.user_files.contains(&want)
    }
}

impl CqeLine {
    /// The tag of a ublk I/O command's completion, when `user_data` follows the libublk layout
    /// (bits 0-15 tag, 16-23 command number 0x20..=0x22, nothing above; `ublk-server` uses
    /// it too) and the result is a delivery (UBLK_IO_RES_OK or NEED_GET_DATA). A server with
    /// another layout yields `None` or, rarely, a wrong guess: use it as evidence only.
    pub fn ublk_tag(&self) -> Option<u16> {
        let nr = (self.user_data >> 16) & 0xff;
        let plain = self.user_data >> 24 == 0;
        (plain && (0x20..=0x22).contains(&nr) && self.res >= 0).then_some(self.user_data as u16)
    }
}

/// Parse an io_uring fdinfo text; `None` when it is not an io_uring fdinfo.
pub fn parse_fdinfo(fd: u32, text: &str) -> Option<RingInfo> {
    let mut r = RingInfo {
        fd,
        ..Default::default()
    };
    let mut seen_head = false;
    let mut section = "";
    for line in text.lines() {
        let indented = line.starts_with(' ') || line.starts_with('\t');
        let t = line.trim();
        if indented {
            match section {
                "CQEs" => r.cqes.extend(parse_cqe(t)),
                "UserFiles" => r.user_files.extend(parse_user_file(t)),
                _ => {}
            }
            continue;
        }
        let Some((k, v)) = t.split_once(':') else {
            continue;
        };
        section = k;
        let v = v.trim();
        let num = || parse_num(v);
        match k {
            "SqMask" => r.sq_mask = num()?,
            "SqHead" => {
                r.sq_head = num()?;
                seen_head = true;
            }
            "SqTail" => r.sq_tail = num()?,
            "CqMask" => r.cq_mask = num()?,
            "CqHead" => r.cq_head = num()?,
            "CqTail" => r.cq_tail = num()?,
            _ => {}
        }
    }
    seen_head.then_some(r)
}

fn parse_num(v: &str) -> Option<u32> {
    match v.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// `5: user_data:2162692, res:0, flag:0` (newer kernels append `extra1:`/`extra2:`).
fn parse_cqe(t: &str) -> Option<CqeLine> {
    let (slot, rest) = t.split_once(':')?;
    let mut c = CqeLine {
        slot: slot.trim().parse().ok()?,
        user_data: 0,
        res: 0,
        flags: 0,
    };
    let mut got = false;
    for f in rest.split(',') {
        let Some((k, v)) = f.trim().split_once(':') else {
            continue;
        };
        match k {
            "user_data" => {
                c.user_data = v.trim().parse().ok()?;
                got = true;
            }
            "res" => c.res = v.trim().parse().ok()?,
            "flag" | "flags" => c.flags = v.trim().parse().ok()?,
            _ => {}
        }
    }
    got.then_some(c)
}

/// `0: ublkc0`.
fn parse_user_file(t: &str) -> Option<String> {
    let (_, name) = t.split_once(':')?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Queue ring of a SIGSTOPped rublk server, 6.12 guest: one CQE posted, not reaped.
    const STUCK_CQE: &str = "pos:\t0
flags:\t02000002
mnt_id:\t16
ino:\t1057
SqMask:\t0x7
SqHead:\t4757
SqTail:\t4757
CachedSqHead:\t4757
CqMask:\t0x7
CqHead:\t4749
CqTail:\t4750
CachedCqTail:\t4750
SQEs:\t0
CQEs:\t1
    5: user_data:2162692, res:0, flag:0
SqThread:\t-1
SqThreadCpu:\t-1
SqTotalTime:\t0
SqWorkTime:\t0
UserFiles:\t1
    0: ublkc0
UserBufs:\t0
PollList:
CqOverflowList:
NAPI:\tdisabled
";

    #[test]
    fn unreaped_cqe_is_seen() {
        let r = parse_fdinfo(7, STUCK_CQE).expect("io_uring fdinfo");
        assert_eq!(r.fd, 7);
        assert_eq!(r.sq_mask, 7);
        assert_eq!(r.sq_pending(), 0);
        assert_eq!(r.cq_unreaped(), 1);
        assert_eq!(r.cqes.len(), 1);
        assert_eq!(r.cqes[0].slot, 5);
        // libublk: tag | op << 16 -> tag 4 of COMMIT_AND_FETCH (0x21).
        assert_eq!(r.cqes[0].user_data, 0x210004);
        assert!(r.serves_char_dev(0));
        assert_eq!(r.cqes[0].ublk_tag(), Some(4));
        // A target I/O completion (libublk sets bit 63) or an abort is no delivery.
        let target = CqeLine {
            user_data: (1 << 63) | 0x210004,
            ..r.cqes[0]
        };
        assert_eq!(target.ublk_tag(), None);
        let abort = CqeLine {
            res: -19,
            ..r.cqes[0]
        };
        assert_eq!(abort.ublk_tag(), None);
        assert!(!r.serves_char_dev(1));
    }

    #[test]
    fn unsubmitted_sqe_and_wrap() {
        let t = STUCK_CQE
            .replace("SqTail:\t4757", "SqTail:\t4758")
            .replace("CqHead:\t4749", "CqHead:\t4294967295")
            .replace("CqTail:\t4750", "CqTail:\t0");
        let r = parse_fdinfo(3, &t).expect("parses");
        assert_eq!(r.sq_pending(), 1);
        // Counters are u32 and wrap: tail 0 after head u32::MAX is one CQE, not 4 billion.
        assert_eq!(r.cq_unreaped(), 1);
    }

    #[test]
    fn other_fdinfo_is_not_a_ring() {
        assert_eq!(parse_fdinfo(1, "pos:\t0\nflags:\t02\nmnt_id:\t1\n"), None);
        assert_eq!(parse_fdinfo(1, "SqHead:\tnope\n"), None);
    }
}
