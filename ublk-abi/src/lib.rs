//! The ublk kernel UAPI (`include/uapi/linux/ublk_cmd.h`), hand-written as `no_std` Rust.
//!
//! Spellings follow the header exactly so that a grep against `ublk_cmd.h` finds every item.
//! Structs are `#[repr(C)]` with compile-time size and offset asserts; the wire encodings
//! (ioctl-style opcodes, io-descriptor mmap offsets) have host unit tests against values taken
//! from the header.
//!
//! Printable names drop the `UBLK_CMD_` / `UBLK_IO_` / `UBLK_F_` prefixes (`"ADD_DEV"`,
//! `"FETCH_REQ"`, `"USER_COPY"`), which is how they are shown in logs and the TUI.
#![no_std]
#![allow(non_camel_case_types)]

mod names;
mod structs;

pub use names::*;
pub use structs::*;

// ---------------------------------------------------------------------------------------------
// ioctl-style encoding (asm-generic/ioctl.h; x86, arm64, riscv, s390 use the generic layout).
// ---------------------------------------------------------------------------------------------

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

const fn ioc(dir: u32, ty: u8, nr: u32, size: usize) -> u32 {
    (dir << IOC_DIRSHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}
const fn ior(nr: u32, size: usize) -> u32 {
    ioc(IOC_READ, b'u', nr, size)
}
const fn iowr(nr: u32, size: usize) -> u32 {
    ioc(IOC_READ | IOC_WRITE, b'u', nr, size)
}

/// The command number of a legacy or ioctl-encoded `cmd_op` (its low 8 bits).
pub const fn cmd_nr(cmd_op: u32) -> u32 {
    cmd_op & 0xff
}

/// True when `cmd_op` carries the ioctl encoding (type `'u'` in bits 8..16).
pub const fn is_ioctl_encoded(cmd_op: u32) -> bool {
    (cmd_op >> IOC_TYPESHIFT) & 0xff == b'u' as u32
}

// ---------------------------------------------------------------------------------------------
// Control commands (sent to /dev/ublk-control).
// ---------------------------------------------------------------------------------------------

// Legacy numbers: the kernel still accepts them unless built without CONFIG_BLKDEV_UBLK_LEGACY_OPCODES.
pub const UBLK_CMD_GET_QUEUE_AFFINITY: u32 = 0x01;
pub const UBLK_CMD_GET_DEV_INFO: u32 = 0x02;
pub const UBLK_CMD_ADD_DEV: u32 = 0x04;
pub const UBLK_CMD_DEL_DEV: u32 = 0x05;
pub const UBLK_CMD_START_DEV: u32 = 0x06;
pub const UBLK_CMD_STOP_DEV: u32 = 0x07;
pub const UBLK_CMD_SET_PARAMS: u32 = 0x08;
pub const UBLK_CMD_GET_PARAMS: u32 = 0x09;
pub const UBLK_CMD_START_USER_RECOVERY: u32 = 0x10;
pub const UBLK_CMD_END_USER_RECOVERY: u32 = 0x11;
pub const UBLK_CMD_GET_DEV_INFO2: u32 = 0x12;
// These have no legacy macro in the header; the numbers are those inside the UBLK_U_CMD_ macros.
pub const UBLK_CMD_GET_FEATURES: u32 = 0x13;
pub const UBLK_CMD_DEL_DEV_ASYNC: u32 = 0x14;
pub const UBLK_CMD_UPDATE_SIZE: u32 = 0x15;
pub const UBLK_CMD_QUIESCE_DEV: u32 = 0x16;
pub const UBLK_CMD_TRY_STOP_DEV: u32 = 0x17;

const CTRL_SZ: usize = core::mem::size_of::<ublksrv_ctrl_cmd>();
pub const UBLK_U_CMD_GET_QUEUE_AFFINITY: u32 = ior(UBLK_CMD_GET_QUEUE_AFFINITY, CTRL_SZ);
pub const UBLK_U_CMD_GET_DEV_INFO: u32 = ior(UBLK_CMD_GET_DEV_INFO, CTRL_SZ);
pub const UBLK_U_CMD_ADD_DEV: u32 = iowr(UBLK_CMD_ADD_DEV, CTRL_SZ);
pub const UBLK_U_CMD_DEL_DEV: u32 = iowr(UBLK_CMD_DEL_DEV, CTRL_SZ);
pub const UBLK_U_CMD_START_DEV: u32 = iowr(UBLK_CMD_START_DEV, CTRL_SZ);
pub const UBLK_U_CMD_STOP_DEV: u32 = iowr(UBLK_CMD_STOP_DEV, CTRL_SZ);
pub const UBLK_U_CMD_SET_PARAMS: u32 = iowr(UBLK_CMD_SET_PARAMS, CTRL_SZ);
pub const UBLK_U_CMD_GET_PARAMS: u32 = ior(UBLK_CMD_GET_PARAMS, CTRL_SZ);
pub const UBLK_U_CMD_START_USER_RECOVERY: u32 = iowr(UBLK_CMD_START_USER_RECOVERY, CTRL_SZ);
pub const UBLK_U_CMD_END_USER_RECOVERY: u32 = iowr(UBLK_CMD_END_USER_RECOVERY, CTRL_SZ);
pub const UBLK_U_CMD_GET_DEV_INFO2: u32 = ior(UBLK_CMD_GET_DEV_INFO2, CTRL_SZ);
pub const UBLK_U_CMD_GET_FEATURES: u32 = ior(UBLK_CMD_GET_FEATURES, CTRL_SZ);
// _IOR in the header although it deletes: kept as the kernel spells it.
pub const UBLK_U_CMD_DEL_DEV_ASYNC: u32 = ior(UBLK_CMD_DEL_DEV_ASYNC, CTRL_SZ);
pub const UBLK_U_CMD_UPDATE_SIZE: u32 = iowr(UBLK_CMD_UPDATE_SIZE, CTRL_SZ);
pub const UBLK_U_CMD_QUIESCE_DEV: u32 = iowr(UBLK_CMD_QUIESCE_DEV, CTRL_SZ);
pub const UBLK_U_CMD_TRY_STOP_DEV: u32 = iowr(UBLK_CMD_TRY_STOP_DEV, CTRL_SZ);

/// Bytes of the GET_FEATURES reply (one `u64`).
pub const UBLK_FEATURES_LEN: usize = 8;

// ---------------------------------------------------------------------------------------------
// I/O commands (sent to /dev/ublkcN).
// ---------------------------------------------------------------------------------------------

pub const UBLK_IO_FETCH_REQ: u32 = 0x20;
pub const UBLK_IO_COMMIT_AND_FETCH_REQ: u32 = 0x21;
pub const UBLK_IO_NEED_GET_DATA: u32 = 0x22;
/// Numbers inside the ioctl-only UBLK_U_IO_ macros (no legacy form exists).
pub const UBLK_IO_REGISTER_IO_BUF: u32 = 0x23;
pub const UBLK_IO_UNREGISTER_IO_BUF: u32 = 0x24;
pub const UBLK_IO_PREP_IO_CMDS: u32 = 0x25;
pub const UBLK_IO_COMMIT_IO_CMDS: u32 = 0x26;
pub const UBLK_IO_FETCH_IO_CMDS: u32 = 0x27;

const IO_SZ: usize = core::mem::size_of::<ublksrv_io_cmd>();
const BATCH_SZ: usize = core::mem::size_of::<ublk_batch_io>();
pub const UBLK_U_IO_FETCH_REQ: u32 = iowr(UBLK_IO_FETCH_REQ, IO_SZ);
pub const UBLK_U_IO_COMMIT_AND_FETCH_REQ: u32 = iowr(UBLK_IO_COMMIT_AND_FETCH_REQ, IO_SZ);
pub const UBLK_U_IO_NEED_GET_DATA: u32 = iowr(UBLK_IO_NEED_GET_DATA, IO_SZ);
pub const UBLK_U_IO_REGISTER_IO_BUF: u32 = iowr(UBLK_IO_REGISTER_IO_BUF, IO_SZ);
pub const UBLK_U_IO_UNREGISTER_IO_BUF: u32 = iowr(UBLK_IO_UNREGISTER_IO_BUF, IO_SZ);
/// UBLK_F_BATCH_IO (7.0+): one-time per-queue preparation with buffer info.
pub const UBLK_U_IO_PREP_IO_CMDS: u32 = iowr(UBLK_IO_PREP_IO_CMDS, BATCH_SZ);
/// UBLK_F_BATCH_IO: commit many tags of one queue at once.
pub const UBLK_U_IO_COMMIT_IO_CMDS: u32 = iowr(UBLK_IO_COMMIT_IO_CMDS, BATCH_SZ);
/// UBLK_F_BATCH_IO: multishot fetch, each CQE reports 2-byte tags into a provided buffer.
pub const UBLK_U_IO_FETCH_IO_CMDS: u32 = iowr(UBLK_IO_FETCH_IO_CMDS, BATCH_SZ);

/// `UBLK_BATCH_F_*` flags of [`ublk_batch_io::flags`].
pub const UBLK_BATCH_F_HAS_ZONE_LBA: u16 = 1 << 0;
pub const UBLK_BATCH_F_HAS_BUF_ADDR: u16 = 1 << 1;
pub const UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK: u16 = 1 << 2;

/// Results in a FETCH/COMMIT CQE. Only ABORT means "no re-fetch".
pub const UBLK_IO_RES_OK: i32 = 0;
pub const UBLK_IO_RES_NEED_GET_DATA: i32 = 1;
/// `-ENODEV`: the queue is being torn down; the tag will not be delivered again.
pub const UBLK_IO_RES_ABORT: i32 = -19;

pub const UBLKSRV_CMD_BUF_OFFSET: u64 = 0;
pub const UBLKSRV_IO_BUF_OFFSET: u64 = 0x8000_0000;

/// tag is 16 bits, but the kernel limits each queue to 4096 I/Os.
pub const UBLK_MAX_QUEUE_DEPTH: u32 = 4096;

pub const UBLK_IO_BUF_OFF: u32 = 0;
pub const UBLK_IO_BUF_BITS: u32 = 25;
pub const UBLK_IO_BUF_BITS_MASK: u64 = (1u64 << UBLK_IO_BUF_BITS) - 1;
pub const UBLK_TAG_OFF: u32 = UBLK_IO_BUF_BITS;
pub const UBLK_TAG_BITS: u32 = 16;
pub const UBLK_TAG_BITS_MASK: u64 = (1u64 << UBLK_TAG_BITS) - 1;
pub const UBLK_QID_OFF: u32 = UBLK_TAG_OFF + UBLK_TAG_BITS;
pub const UBLK_QID_BITS: u32 = 12;
pub const UBLK_QID_BITS_MASK: u64 = (1u64 << UBLK_QID_BITS) - 1;
pub const UBLK_MAX_NR_QUEUES: u32 = 1 << UBLK_QID_BITS;
pub const UBLKSRV_IO_BUF_TOTAL_BITS: u32 = UBLK_QID_OFF + UBLK_QID_BITS;
pub const UBLKSRV_IO_BUF_TOTAL_SIZE: u64 = 1u64 << UBLKSRV_IO_BUF_TOTAL_BITS;
pub const UBLK_INTEGRITY_FLAG_OFF: u32 = UBLKSRV_IO_BUF_TOTAL_BITS;
pub const UBLKSRV_IO_INTEGRITY_FLAG: u64 = 1u64 << UBLK_INTEGRITY_FLAG_OFF;

/// File position for pread/pwrite on /dev/ublkcN under UBLK_F_USER_COPY.
pub const fn ublk_user_copy_pos(q_id: u16, tag: u16, offset: u32) -> u64 {
    UBLKSRV_IO_BUF_OFFSET
        + (((q_id as u64) << UBLK_QID_OFF)
            | ((tag as u64) << UBLK_TAG_OFF)
            | (offset as u64 & UBLK_IO_BUF_BITS_MASK))
}

// ---------------------------------------------------------------------------------------------
// Feature flags (ublksrv_ctrl_dev_info.flags, GET_FEATURES).
// ---------------------------------------------------------------------------------------------

pub const UBLK_F_SUPPORT_ZERO_COPY: u64 = 1 << 0;
pub const UBLK_F_URING_CMD_COMP_IN_TASK: u64 = 1 << 1;
pub const UBLK_F_NEED_GET_DATA: u64 = 1 << 2;
pub const UBLK_F_USER_RECOVERY: u64 = 1 << 3;
pub const UBLK_F_USER_RECOVERY_REISSUE: u64 = 1 << 4;
pub const UBLK_F_UNPRIVILEGED_DEV: u64 = 1 << 5;
pub const UBLK_F_CMD_IOCTL_ENCODE: u64 = 1 << 6;
pub const UBLK_F_USER_COPY: u64 = 1 << 7;
pub const UBLK_F_ZONED: u64 = 1 << 8;
pub const UBLK_F_USER_RECOVERY_FAIL_IO: u64 = 1 << 9;
pub const UBLK_F_UPDATE_SIZE: u64 = 1 << 10;
pub const UBLK_F_AUTO_BUF_REG: u64 = 1 << 11;
pub const UBLK_F_QUIESCE: u64 = 1 << 12;
pub const UBLK_F_PER_IO_DAEMON: u64 = 1 << 13;
pub const UBLK_F_BUF_REG_OFF_DAEMON: u64 = 1 << 14;
pub const UBLK_F_BATCH_IO: u64 = 1 << 15;
pub const UBLK_F_INTEGRITY: u64 = 1 << 16;
pub const UBLK_F_SAFE_STOP_DEV: u64 = 1 << 17;
pub const UBLK_F_NO_AUTO_PART_SCAN: u64 = 1 << 18;
/// 7.3: zero copy through a shared memory region registered by the server.
pub const UBLK_F_SHMEM_ZC: u64 = 1 << 19;
/// 7.3: the server picks `io_desc_size` (24..=256, a multiple of 8) at ADD_DEV; descriptors and
/// the per-queue mmap stride scale with it.
pub const UBLK_F_IO_DESC_SIZE: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Device states (ublksrv_ctrl_dev_info.state).
// ---------------------------------------------------------------------------------------------

pub const UBLK_S_DEV_DEAD: u16 = 0;
pub const UBLK_S_DEV_LIVE: u16 = 1;
pub const UBLK_S_DEV_QUIESCED: u16 = 2;
pub const UBLK_S_DEV_FAIL_IO: u16 = 3;

// ---------------------------------------------------------------------------------------------
// Request ops and flags (ublksrv_io_desc.op_flags: op in bits 0-7, flags in 8-31).
// ---------------------------------------------------------------------------------------------

pub const UBLK_IO_OP_READ: u8 = 0;
pub const UBLK_IO_OP_WRITE: u8 = 1;
pub const UBLK_IO_OP_FLUSH: u8 = 2;
pub const UBLK_IO_OP_DISCARD: u8 = 3;
pub const UBLK_IO_OP_WRITE_SAME: u8 = 4;
pub const UBLK_IO_OP_WRITE_ZEROES: u8 = 5;
pub const UBLK_IO_OP_ZONE_OPEN: u8 = 10;
pub const UBLK_IO_OP_ZONE_CLOSE: u8 = 11;
pub const UBLK_IO_OP_ZONE_FINISH: u8 = 12;
pub const UBLK_IO_OP_ZONE_APPEND: u8 = 13;
pub const UBLK_IO_OP_ZONE_RESET_ALL: u8 = 14;
pub const UBLK_IO_OP_ZONE_RESET: u8 = 15;
pub const UBLK_IO_OP_REPORT_ZONES: u8 = 18;

// Flags as they appear in op_flags (already shifted; test with `op_flags & FLAG`).
pub const UBLK_IO_F_FAILFAST_DEV: u32 = 1 << 8;
pub const UBLK_IO_F_FAILFAST_TRANSPORT: u32 = 1 << 9;
pub const UBLK_IO_F_FAILFAST_DRIVER: u32 = 1 << 10;
pub const UBLK_IO_F_META: u32 = 1 << 11;
pub const UBLK_IO_F_FUA: u32 = 1 << 13;
pub const UBLK_IO_F_NOUNMAP: u32 = 1 << 15;
pub const UBLK_IO_F_SWAP: u32 = 1 << 16;
pub const UBLK_IO_F_NEED_REG_BUF: u32 = 1 << 17;
pub const UBLK_IO_F_INTEGRITY: u32 = 1 << 18;
pub const UBLK_IO_F_CHECK_GUARD: u32 = 1 << 19;
pub const UBLK_IO_F_CHECK_REFTAG: u32 = 1 << 20;
pub const UBLK_IO_F_CHECK_APPTAG: u32 = 1 << 21;

pub const UBLK_AUTO_BUF_REG_FALLBACK: u8 = 1 << 0;
pub const UBLK_AUTO_BUF_REG_F_MASK: u8 = UBLK_AUTO_BUF_REG_FALLBACK;

// ---------------------------------------------------------------------------------------------
// Parameters.
// ---------------------------------------------------------------------------------------------

pub const UBLK_ATTR_READ_ONLY: u32 = 1 << 0;
pub const UBLK_ATTR_ROTATIONAL: u32 = 1 << 1;
pub const UBLK_ATTR_VOLATILE_CACHE: u32 = 1 << 2;
pub const UBLK_ATTR_FUA: u32 = 1 << 3;

pub const UBLK_PARAM_TYPE_BASIC: u32 = 1 << 0;
pub const UBLK_PARAM_TYPE_DISCARD: u32 = 1 << 1;
pub const UBLK_PARAM_TYPE_DEVT: u32 = 1 << 2;
pub const UBLK_PARAM_TYPE_ZONED: u32 = 1 << 3;
pub const UBLK_PARAM_TYPE_DMA_ALIGN: u32 = 1 << 4;
pub const UBLK_PARAM_TYPE_SEGMENT: u32 = 1 << 5;
pub const UBLK_PARAM_TYPE_INTEGRITY: u32 = 1 << 6;

pub const UBLK_MIN_SEGMENT_SIZE: u32 = 4096;

// ---------------------------------------------------------------------------------------------
// The io-descriptor area: mmap of /dev/ublkcN.
// ---------------------------------------------------------------------------------------------

/// Bytes of one queue's descriptor array as the kernel sizes it (and the only mmap length
/// `ublk_ch_mmap` accepts): `round_up(queue_depth * sizeof(ublksrv_io_desc), PAGE_SIZE)`.
pub const fn io_desc_mmap_len(queue_depth: u16, page_size: usize) -> usize {
    round_up(
        queue_depth as usize * core::mem::size_of::<ublksrv_io_desc>(),
        page_size,
    )
}

/// mmap offset of queue `q_id`'s descriptor array.
///
/// The per-queue stride is sized for the *maximum* depth, not the device's depth:
/// `ublk_ch_mmap` computes `q_id = (off - UBLKSRV_CMD_BUF_OFFSET) / ublk_max_cmd_buf_size()`
/// with `ublk_max_cmd_buf_size() = round_up(UBLK_MAX_QUEUE_DEPTH * sizeof(iod), PAGE_SIZE)`.
/// Using the device depth as stride maps queue 0's descriptors for every queue > 0 (or fails),
/// and a one-queue test never notices.
pub const fn io_desc_mmap_offset(q_id: u16, page_size: usize) -> u64 {
    UBLKSRV_CMD_BUF_OFFSET
        + q_id as u64
            * round_up(
                UBLK_MAX_QUEUE_DEPTH as usize * core::mem::size_of::<ublksrv_io_desc>(),
                page_size,
            ) as u64
}

/// Byte offset of `tag`'s descriptor inside one queue's mapped array.
pub const fn io_desc_offset_in_queue(tag: u16) -> usize {
    tag as usize * core::mem::size_of::<ublksrv_io_desc>()
}

const fn round_up(v: usize, align: usize) -> usize {
    if align == 0 {
        return v;
    }
    v.div_ceil(align) * align
}

#[cfg(test)]
mod tests;
