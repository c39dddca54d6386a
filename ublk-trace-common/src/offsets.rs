//! Kernel structure offsets and addresses the eBPF programs need, resolved by user space at
//! start-up (BTF, kallsyms) and passed as the `.rodata` global [`OFFSETS_GLOBAL`]
//! (aya's `override_global`). aya-ebpf has no CO-RE, so nothing here is compiled in: the
//! same object runs on 6.12 (`io_uring_cmd.cmd_op` at 24) and 7.3 (at 16).
//!
//! All offsets are byte offsets. [`NO_OFFSET`] marks a field this kernel does not have; the
//! programs then skip the read (and the field stays 0).
//!
//! [`OFFSETS_GLOBAL`]: crate::event::OFFSETS_GLOBAL

/// "This kernel has no such field": the program skips it.
pub const NO_OFFSET: u32 = u32::MAX;

/// Filled by `ublk-trace`'s `kernel::offsets` resolver; read-only in eBPF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    // struct io_uring_cmd (vmlinux)
    pub uc_file: u32,
    pub uc_sqe: u32,
    pub uc_cmd_op: u32,
    /// `io_uring_cmd.pdu`: the driver's private area (`struct ublk_uring_cmd_pdu`).
    pub uc_pdu: u32,
    // struct io_uring_sqe (vmlinux): start of the 80-byte command area of an SQE128.
    pub sqe_cmd: u32,
    // struct file (vmlinux)
    pub file_private_data: u32,
    // struct ublksrv_ctrl_cmd (UAPI, module BTF; fixed fallback 0/4/16)
    pub ctrl_dev_id: u32,
    pub ctrl_queue_id: u32,
    pub ctrl_data: u32,
    // struct ublksrv_io_cmd (UAPI, module BTF; fixed fallback 0/2/4/8)
    pub io_q_id: u32,
    pub io_tag: u32,
    pub io_result: u32,
    pub io_addr: u32,
    /// `ublk_device.dev_info` + `ublksrv_ctrl_dev_info.dev_id` (module BTF).
    pub ub_dev_id: u32,
    // struct ublk_queue (module BTF): q_id, and the device pointer (`dev`) where it exists.
    pub ubq_q_id: u32,
    pub ubq_dev: u32,
    // struct ublk_uring_cmd_pdu (module BTF): the queue pointer (≤ 6.14 task-work callback).
    pub pdu_ubq: u32,
    // struct blk_mq_hw_ctx / blk_mq_queue_data (vmlinux)
    pub hctx_queue_num: u32,
    pub bd_rq: u32,
    // struct request (vmlinux)
    pub rq_q: u32,
    pub rq_mq_hctx: u32,
    pub rq_cmd_flags: u32,
    pub rq_tag: u32,
    pub rq_data_len: u32,
    pub rq_sector: u32,
    pub rq_next: u32,
    /// `request.start_time_ns`: set when the request is allocated (0 when the queue keeps
    /// no I/O statistics); the light path's latency counts from it.
    pub rq_start_time_ns: u32,
    // struct request_queue / blk_mq_tag_set / gendisk (vmlinux). ublk sets
    // `tag_set.driver_data = ub` (queuedata is NULL: blk_mq_alloc_disk(.., NULL)).
    pub q_tag_set: u32,
    pub set_driver_data: u32,
    pub q_disk: u32,
    pub disk_name: u32,
    // struct rq_list (vmlinux, 6.13+; NO_OFFSET before)
    pub rq_list_head: u32,
    /// `IO_URING_F_CANCEL` from BTF `enum io_uring_cmd_flags`.
    pub issue_flag_cancel: u32,
    /// Index of the `struct request *` parameter of the per-request delivery function
    /// (`ublk_dispatch_req`, 6.15+), from its BTF prototype.
    pub dispatch_req_arg: u32,
    /// `io_uring_sqe.addr` (vmlinux): a BATCH_IO command's element buffer (user memory).
    pub sqe_addr: u32,
    // struct ublk_batch_io (UAPI, module BTF of 7.0+; NO_OFFSET before): the command area
    // of PREP/COMMIT/FETCH_IO_CMDS (its q_id is ublksrv_io_cmd's, at 0).
    pub batch_flags: u32,
    pub batch_nr_elem: u32,
    pub batch_elem_bytes: u32,
    // struct ublk_elem_header (UAPI, module BTF of 7.0+): one element of PREP/COMMIT.
    pub elem_tag: u32,
    pub elem_result: u32,
}

const _: () = assert!(core::mem::size_of::<Offsets>() == 40 * 4);

impl Offsets {
    /// Every field unknown: a program reading with these reports nothing useful, which is
    /// the safe default for the `.rodata` initialiser before user space overrides it.
    pub const UNSET: Self = Self {
        uc_file: NO_OFFSET,
        uc_sqe: NO_OFFSET,
        uc_cmd_op: NO_OFFSET,
        uc_pdu: NO_OFFSET,
        sqe_cmd: NO_OFFSET,
        file_private_data: NO_OFFSET,
        ctrl_dev_id: NO_OFFSET,
        ctrl_queue_id: NO_OFFSET,
        ctrl_data: NO_OFFSET,
        io_q_id: NO_OFFSET,
        io_tag: NO_OFFSET,
        io_result: NO_OFFSET,
        io_addr: NO_OFFSET,
        ub_dev_id: NO_OFFSET,
        ubq_q_id: NO_OFFSET,
        ubq_dev: NO_OFFSET,
        pdu_ubq: NO_OFFSET,
        hctx_queue_num: NO_OFFSET,
        bd_rq: NO_OFFSET,
        rq_q: NO_OFFSET,
        rq_mq_hctx: NO_OFFSET,
        rq_cmd_flags: NO_OFFSET,
        rq_tag: NO_OFFSET,
        rq_data_len: NO_OFFSET,
        rq_sector: NO_OFFSET,
        rq_next: NO_OFFSET,
        rq_start_time_ns: NO_OFFSET,
        q_tag_set: NO_OFFSET,
        set_driver_data: NO_OFFSET,
        q_disk: NO_OFFSET,
        disk_name: NO_OFFSET,
        rq_list_head: NO_OFFSET,
        issue_flag_cancel: 0,
        dispatch_req_arg: NO_OFFSET,
        sqe_addr: NO_OFFSET,
        batch_flags: NO_OFFSET,
        batch_nr_elem: NO_OFFSET,
        batch_elem_bytes: NO_OFFSET,
        elem_tag: NO_OFFSET,
        elem_result: NO_OFFSET,
    };
}

#[cfg(feature = "user")]
// SAFETY: Offsets is #[repr(C)], Copy, only u32 fields, no padding (size asserted).
unsafe impl aya::Pod for Offsets {}
