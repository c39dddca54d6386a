//! The `#[repr(C)]` structs of `ublk_cmd.h`, with size/offset asserts and byte codecs.
//!
//! The codecs (`to_bytes` / `from_bytes`) let callers fill an SQE command area or decode a
//! kernel reply without pointer casts. They are little-endian, like every host ublk runs on.

use core::mem::{offset_of, size_of};

/// Shipped in the SQE128 command area of a control command (`/dev/ublk-control`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublksrv_ctrl_cmd {
    /// Target device; must be valid (ADD_DEV: `u32::MAX` lets the kernel pick).
    pub dev_id: u32,
    /// Target queue; `u16::MAX` (-1) when the command is not for a queue.
    pub queue_id: u16,
    /// Length of the buffer at `addr` (IN or OUT depending on the command).
    pub len: u16,
    pub addr: u64,
    /// Inline data (START_DEV: server pid; STOP... : unused; UPDATE_SIZE: sectors).
    pub data: [u64; 1],
    /// UNPRIVILEGED_DEV and GET_DEV_INFO2 only: length of the char-device path at the
    /// start of the buffer, including the NUL.
    pub dev_path_len: u16,
    pub pad: u16,
    pub reserved: u32,
}

/// Device info: ADD_DEV's in/out buffer, GET_DEV_INFO(2)'s reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublksrv_ctrl_dev_info {
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    /// `UBLK_S_DEV_*`, filled by the driver.
    pub state: u16,
    pub pad0: u16,
    pub max_io_buf_bytes: u32,
    pub dev_id: u32,
    /// Server pid as seen by the caller (7.x maps it into the caller's pid namespace, -1 if
    /// invisible).
    pub ublksrv_pid: i32,
    pub pad1: u32,
    /// `UBLK_F_*`.
    pub flags: u64,
    /// For the server's own use; the driver stores and returns it untouched.
    pub ublksrv_flags: u64,
    /// Stored by the kernel at ADD_DEV.
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub reserved1: u64,
    pub reserved2: u64,
}

/// One request as the driver describes it, in the read-only mmap of `/dev/ublkcN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublksrv_io_desc {
    /// op in bits 0-7 (`UBLK_IO_OP_*`), flags in bits 8-31 (`UBLK_IO_F_*`).
    pub op_flags: u32,
    /// Sectors of the request (union with `nr_zones` for REPORT_ZONES).
    pub nr_sectors: u32,
    pub start_sector: u64,
    /// Server buffer address (union with the integrity info under UBLK_F_INTEGRITY).
    pub addr: u64,
}

impl ublksrv_io_desc {
    /// `ublksrv_get_op()`.
    pub const fn op(&self) -> u8 {
        (self.op_flags & 0xff) as u8
    }
    /// `ublksrv_get_flags()`: the flag bits shifted down by 8, as the header's helper does.
    pub const fn flags(&self) -> u32 {
        self.op_flags >> 8
    }
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        Some(Self {
            op_flags: u32_at(b, 0)?,
            nr_sectors: u32_at(b, 4)?,
            start_sector: u64_at(b, 8)?,
            addr: u64_at(b, 16)?,
        })
    }
}

/// Integrity info in `ublksrv_io_desc.addr`'s place under UBLK_F_INTEGRITY.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublksrv_io_integrity {
    pub ref_tag_lo: u32,
    pub ref_tag_hi: u16,
    pub app_tag: u16,
}

/// Shipped in the SQE command area of an I/O command (`/dev/ublkcN`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublksrv_io_cmd {
    pub q_id: u16,
    pub tag: u16,
    /// COMMIT only: bytes done or -errno.
    pub result: i32,
    /// FETCH / NEED_GET_DATA: buffer address (union with `zone_append_lba` for zoned commits).
    pub addr: u64,
}

/// UBLK_F_AUTO_BUF_REG data, carried in `sqe->addr` (see [`Self::to_sqe_addr`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_auto_buf_reg {
    pub index: u16,
    pub flags: u8,
    pub reserved0: u8,
    pub reserved1: u32,
}

impl ublk_auto_buf_reg {
    /// `ublk_auto_buf_reg_to_sqe_addr()`.
    pub const fn to_sqe_addr(&self) -> u64 {
        self.index as u64
            | (self.flags as u64) << 16
            | (self.reserved0 as u64) << 24
            | (self.reserved1 as u64) << 32
    }
    /// `ublk_sqe_addr_to_auto_buf_reg()`.
    pub const fn from_sqe_addr(a: u64) -> Self {
        Self {
            index: a as u16,
            flags: (a >> 16) as u8,
            reserved0: (a >> 24) as u8,
            reserved1: (a >> 32) as u32,
        }
    }
}

/// Element header of the UBLK_F_BATCH_IO command buffers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_elem_header {
    pub tag: u16,
    /// Only with UBLK_F_AUTO_BUF_REG.
    pub buf_index: u16,
    /// COMMIT_IO_CMDS only.
    pub result: i32,
}

/// SQE command area of PREP/COMMIT/FETCH_IO_CMDS (UBLK_F_BATCH_IO, 7.0+).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_batch_io {
    pub q_id: u16,
    /// `UBLK_BATCH_F_*`.
    pub flags: u16,
    pub nr_elem: u16,
    pub elem_bytes: u8,
    pub reserved: u8,
    pub reserved2: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_param_basic {
    /// `UBLK_ATTR_*`.
    pub attrs: u32,
    pub logical_bs_shift: u8,
    pub physical_bs_shift: u8,
    pub io_opt_shift: u8,
    pub io_min_shift: u8,
    pub max_sectors: u32,
    pub chunk_sectors: u32,
    pub dev_sectors: u64,
    pub virt_boundary_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_param_discard {
    pub discard_alignment: u32,
    pub discard_granularity: u32,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_discard_segments: u16,
    pub reserved0: u16,
}

/// Read-only (GET_PARAMS); disk numbers are valid once the device is started.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_param_devt {
    pub char_major: u32,
    pub char_minor: u32,
    pub disk_major: u32,
    pub disk_minor: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_param_zoned {
    pub max_open_zones: u32,
    pub max_active_zones: u32,
    pub max_zone_append_sectors: u32,
    pub reserved: [u8; 20],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_param_dma_align {
    pub alignment: u32,
    pub pad: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_param_segment {
    /// `seg_boundary_mask + 1` must be a power of two and >= UBLK_MIN_SEGMENT_SIZE.
    pub seg_boundary_mask: u64,
    pub max_segment_size: u32,
    pub max_segments: u16,
    pub pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_param_integrity {
    pub flags: u32,
    pub interval_exp: u8,
    pub metadata_size: u8,
    pub pi_offset: u8,
    pub csum_type: u8,
    pub tag_size: u8,
    pub pad: [u8; 7],
}

/// SET_PARAMS / GET_PARAMS buffer. `len` must be set for both; older kernels know a
/// shorter struct and copy only what they know (the driver clamps `len`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_params {
    pub len: u32,
    /// `UBLK_PARAM_TYPE_*` of the parts that are filled.
    pub types: u32,
    pub basic: ublk_param_basic,
    pub discard: ublk_param_discard,
    pub devt: ublk_param_devt,
    pub zoned: ublk_param_zoned,
    pub dma: ublk_param_dma_align,
    pub seg: ublk_param_segment,
    pub integrity: ublk_param_integrity,
}

const _: () = assert!(size_of::<ublksrv_ctrl_cmd>() == 32);
const _: () = assert!(offset_of!(ublksrv_ctrl_cmd, addr) == 8);
const _: () = assert!(offset_of!(ublksrv_ctrl_cmd, data) == 16);
const _: () = assert!(offset_of!(ublksrv_ctrl_cmd, dev_path_len) == 24);
const _: () = assert!(size_of::<ublksrv_ctrl_dev_info>() == 64);
const _: () = assert!(offset_of!(ublksrv_ctrl_dev_info, ublksrv_pid) == 16);
const _: () = assert!(offset_of!(ublksrv_ctrl_dev_info, flags) == 24);
const _: () = assert!(offset_of!(ublksrv_ctrl_dev_info, owner_uid) == 40);
const _: () = assert!(size_of::<ublksrv_io_desc>() == 24);
const _: () = assert!(offset_of!(ublksrv_io_desc, start_sector) == 8);
const _: () = assert!(offset_of!(ublksrv_io_desc, addr) == 16);
const _: () = assert!(size_of::<ublksrv_io_integrity>() == 8);
const _: () = assert!(size_of::<ublksrv_io_cmd>() == 16);
const _: () = assert!(offset_of!(ublksrv_io_cmd, result) == 4);
const _: () = assert!(offset_of!(ublksrv_io_cmd, addr) == 8);
const _: () = assert!(size_of::<ublk_auto_buf_reg>() == 8);
const _: () = assert!(size_of::<ublk_elem_header>() == 8);
const _: () = assert!(size_of::<ublk_batch_io>() == 16);
const _: () = assert!(size_of::<ublk_param_basic>() == 32);
const _: () = assert!(size_of::<ublk_param_discard>() == 20);
const _: () = assert!(size_of::<ublk_param_devt>() == 16);
const _: () = assert!(size_of::<ublk_param_zoned>() == 32);
const _: () = assert!(size_of::<ublk_param_dma_align>() == 8);
const _: () = assert!(size_of::<ublk_param_segment>() == 16);
const _: () = assert!(size_of::<ublk_param_integrity>() == 16);
const _: () = assert!(offset_of!(ublk_params, basic) == 8);
const _: () = assert!(offset_of!(ublk_params, discard) == 40);
const _: () = assert!(offset_of!(ublk_params, devt) == 60);
const _: () = assert!(offset_of!(ublk_params, zoned) == 76);
const _: () = assert!(offset_of!(ublk_params, dma) == 108);
const _: () = assert!(offset_of!(ublk_params, seg) == 120);
const _: () = assert!(offset_of!(ublk_params, integrity) == 136);
const _: () = assert!(size_of::<ublk_params>() == 152);

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

impl ublksrv_ctrl_cmd {
    /// The 32 bytes that go at the start of the SQE128 command area.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut o = [0u8; 32];
        o[0..4].copy_from_slice(&self.dev_id.to_le_bytes());
        o[4..6].copy_from_slice(&self.queue_id.to_le_bytes());
        o[6..8].copy_from_slice(&self.len.to_le_bytes());
        o[8..16].copy_from_slice(&self.addr.to_le_bytes());
        o[16..24].copy_from_slice(&self.data[0].to_le_bytes());
        o[24..26].copy_from_slice(&self.dev_path_len.to_le_bytes());
        o[26..28].copy_from_slice(&self.pad.to_le_bytes());
        o[28..32].copy_from_slice(&self.reserved.to_le_bytes());
        o
    }
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        Some(Self {
            dev_id: u32_at(b, 0)?,
            queue_id: u16_at(b, 4)?,
            len: u16_at(b, 6)?,
            addr: u64_at(b, 8)?,
            data: [u64_at(b, 16)?],
            dev_path_len: u16_at(b, 24)?,
            pad: u16_at(b, 26)?,
            reserved: u32_at(b, 28)?,
        })
    }
}

impl ublksrv_io_cmd {
    /// The 16 bytes that go at the start of the SQE command area.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut o = [0u8; 16];
        o[0..2].copy_from_slice(&self.q_id.to_le_bytes());
        o[2..4].copy_from_slice(&self.tag.to_le_bytes());
        o[4..8].copy_from_slice(&self.result.to_le_bytes());
        o[8..16].copy_from_slice(&self.addr.to_le_bytes());
        o
    }
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        Some(Self {
            q_id: u16_at(b, 0)?,
            tag: u16_at(b, 2)?,
            result: u32_at(b, 4)? as i32,
            addr: u64_at(b, 8)?,
        })
    }
}

impl ublksrv_ctrl_dev_info {
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut o = [0u8; 64];
        o[0..2].copy_from_slice(&self.nr_hw_queues.to_le_bytes());
        o[2..4].copy_from_slice(&self.queue_depth.to_le_bytes());
        o[4..6].copy_from_slice(&self.state.to_le_bytes());
        o[6..8].copy_from_slice(&self.pad0.to_le_bytes());
        o[8..12].copy_from_slice(&self.max_io_buf_bytes.to_le_bytes());
        o[12..16].copy_from_slice(&self.dev_id.to_le_bytes());
        o[16..20].copy_from_slice(&self.ublksrv_pid.to_le_bytes());
        o[20..24].copy_from_slice(&self.pad1.to_le_bytes());
        o[24..32].copy_from_slice(&self.flags.to_le_bytes());
        o[32..40].copy_from_slice(&self.ublksrv_flags.to_le_bytes());
        o[40..44].copy_from_slice(&self.owner_uid.to_le_bytes());
        o[44..48].copy_from_slice(&self.owner_gid.to_le_bytes());
        o[48..56].copy_from_slice(&self.reserved1.to_le_bytes());
        o[56..64].copy_from_slice(&self.reserved2.to_le_bytes());
        o
    }
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        Some(Self {
            nr_hw_queues: u16_at(b, 0)?,
            queue_depth: u16_at(b, 2)?,
            state: u16_at(b, 4)?,
            pad0: u16_at(b, 6)?,
            max_io_buf_bytes: u32_at(b, 8)?,
            dev_id: u32_at(b, 12)?,
            ublksrv_pid: u32_at(b, 16)? as i32,
            pad1: u32_at(b, 20)?,
            flags: u64_at(b, 24)?,
            ublksrv_flags: u64_at(b, 32)?,
            owner_uid: u32_at(b, 40)?,
            owner_gid: u32_at(b, 44)?,
            reserved1: u64_at(b, 48)?,
            reserved2: u64_at(b, 56)?,
        })
    }
}

impl ublk_batch_io {
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut o = [0u8; 16];
        o[0..2].copy_from_slice(&self.q_id.to_le_bytes());
        o[2..4].copy_from_slice(&self.flags.to_le_bytes());
        o[4..6].copy_from_slice(&self.nr_elem.to_le_bytes());
        o[6] = self.elem_bytes;
        o[7] = self.reserved;
        o[8..16].copy_from_slice(&self.reserved2.to_le_bytes());
        o
    }
}
