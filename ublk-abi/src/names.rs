//! Printable names for opcodes, request ops, feature flags and device states.
//!
//! Every function accepts what the kernel may hand us (unknown numbers included) and never
//! panics: unknown values print as `"UNKNOWN"` so a newer kernel still produces readable output.

use crate::*;

/// Name of a control command; accepts the legacy number or the ioctl encoding.
pub const fn ctrl_op_name(cmd_op: u32) -> &'static str {
    match cmd_nr(cmd_op) {
        UBLK_CMD_GET_QUEUE_AFFINITY => "GET_QUEUE_AFFINITY",
        UBLK_CMD_GET_DEV_INFO => "GET_DEV_INFO",
        UBLK_CMD_ADD_DEV => "ADD_DEV",
        UBLK_CMD_DEL_DEV => "DEL_DEV",
        UBLK_CMD_START_DEV => "START_DEV",
        UBLK_CMD_STOP_DEV => "STOP_DEV",
        UBLK_CMD_SET_PARAMS => "SET_PARAMS",
        UBLK_CMD_GET_PARAMS => "GET_PARAMS",
        UBLK_CMD_START_USER_RECOVERY => "START_USER_RECOVERY",
        UBLK_CMD_END_USER_RECOVERY => "END_USER_RECOVERY",
        UBLK_CMD_GET_DEV_INFO2 => "GET_DEV_INFO2",
        UBLK_CMD_GET_FEATURES => "GET_FEATURES",
        UBLK_CMD_DEL_DEV_ASYNC => "DEL_DEV_ASYNC",
        UBLK_CMD_UPDATE_SIZE => "UPDATE_SIZE",
        UBLK_CMD_QUIESCE_DEV => "QUIESCE_DEV",
        UBLK_CMD_TRY_STOP_DEV => "TRY_STOP_DEV",
        _ => "UNKNOWN",
    }
}

/// Name of an I/O command; accepts the legacy number or the ioctl encoding.
pub const fn io_cmd_name(cmd_op: u32) -> &'static str {
    match cmd_nr(cmd_op) {
        UBLK_IO_FETCH_REQ => "FETCH_REQ",
        UBLK_IO_COMMIT_AND_FETCH_REQ => "COMMIT_AND_FETCH_REQ",
        UBLK_IO_NEED_GET_DATA => "NEED_GET_DATA",
        UBLK_IO_REGISTER_IO_BUF => "REGISTER_IO_BUF",
        UBLK_IO_UNREGISTER_IO_BUF => "UNREGISTER_IO_BUF",
        UBLK_IO_PREP_IO_CMDS => "PREP_IO_CMDS",
        UBLK_IO_COMMIT_IO_CMDS => "COMMIT_IO_CMDS",
        UBLK_IO_FETCH_IO_CMDS => "FETCH_IO_CMDS",
        _ => "UNKNOWN",
    }
}

/// Name of a request op (`UBLK_IO_OP_*`, the low 8 bits of `op_flags`; higher bits ignored).
pub const fn io_op_name(op: u32) -> &'static str {
    match (op & 0xff) as u8 {
        UBLK_IO_OP_READ => "READ",
        UBLK_IO_OP_WRITE => "WRITE",
        UBLK_IO_OP_FLUSH => "FLUSH",
        UBLK_IO_OP_DISCARD => "DISCARD",
        UBLK_IO_OP_WRITE_SAME => "WRITE_SAME",
        UBLK_IO_OP_WRITE_ZEROES => "WRITE_ZEROES",
        UBLK_IO_OP_ZONE_OPEN => "ZONE_OPEN",
        UBLK_IO_OP_ZONE_CLOSE => "ZONE_CLOSE",
        UBLK_IO_OP_ZONE_FINISH => "ZONE_FINISH",
        UBLK_IO_OP_ZONE_APPEND => "ZONE_APPEND",
        UBLK_IO_OP_ZONE_RESET_ALL => "ZONE_RESET_ALL",
        UBLK_IO_OP_ZONE_RESET => "ZONE_RESET",
        UBLK_IO_OP_REPORT_ZONES => "REPORT_ZONES",
        _ => "UNKNOWN",
    }
}

/// Name of a device state (`UBLK_S_DEV_*`).
pub const fn dev_state_name(state: u16) -> &'static str {
    match state {
        UBLK_S_DEV_DEAD => "DEAD",
        UBLK_S_DEV_LIVE => "LIVE",
        UBLK_S_DEV_QUIESCED => "QUIESCED",
        UBLK_S_DEV_FAIL_IO => "FAIL_IO",
        _ => "UNKNOWN",
    }
}

/// Every known `UBLK_F_*` flag with its name, lowest bit first.
pub const FEATURES: [(u64, &str); 21] = [
    (UBLK_F_SUPPORT_ZERO_COPY, "SUPPORT_ZERO_COPY"),
    (UBLK_F_URING_CMD_COMP_IN_TASK, "URING_CMD_COMP_IN_TASK"),
    (UBLK_F_NEED_GET_DATA, "NEED_GET_DATA"),
    (UBLK_F_USER_RECOVERY, "USER_RECOVERY"),
    (UBLK_F_USER_RECOVERY_REISSUE, "USER_RECOVERY_REISSUE"),
    (UBLK_F_UNPRIVILEGED_DEV, "UNPRIVILEGED_DEV"),
    (UBLK_F_CMD_IOCTL_ENCODE, "CMD_IOCTL_ENCODE"),
    (UBLK_F_USER_COPY, "USER_COPY"),
    (UBLK_F_ZONED, "ZONED"),
    (UBLK_F_USER_RECOVERY_FAIL_IO, "USER_RECOVERY_FAIL_IO"),
    (UBLK_F_UPDATE_SIZE, "UPDATE_SIZE"),
    (UBLK_F_AUTO_BUF_REG, "AUTO_BUF_REG"),
    (UBLK_F_QUIESCE, "QUIESCE"),
    (UBLK_F_PER_IO_DAEMON, "PER_IO_DAEMON"),
    (UBLK_F_BUF_REG_OFF_DAEMON, "BUF_REG_OFF_DAEMON"),
    (UBLK_F_BATCH_IO, "BATCH_IO"),
    (UBLK_F_INTEGRITY, "INTEGRITY"),
    (UBLK_F_SAFE_STOP_DEV, "SAFE_STOP_DEV"),
    (UBLK_F_NO_AUTO_PART_SCAN, "NO_AUTO_PART_SCAN"),
    (UBLK_F_SHMEM_ZC, "SHMEM_ZC"),
    (UBLK_F_IO_DESC_SIZE, "IO_DESC_SIZE"),
];

/// Names of the known flags set in `flags`, lowest bit first. Bits this crate does not know
/// are skipped; get them with [`unknown_features`].
pub fn feature_names(flags: u64) -> impl Iterator<Item = &'static str> {
    FEATURES
        .iter()
        .filter(move |(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
}

/// The first Linux release whose ublk driver offers `flag`, for the features whose absence a
/// server reports by name (`None`: not recorded here). From the kernel's history of
/// include/uapi/linux/ublk_cmd.h: PER_IO_DAEMON came with 6.16 (commit "ublk: have a per-io
/// daemon instead of a per-queue daemon"), BATCH_IO with 7.0.
pub const fn feature_first_release(flag: u64) -> Option<&'static str> {
    match flag {
        UBLK_F_PER_IO_DAEMON => Some("6.16"),
        UBLK_F_BATCH_IO => Some("7.0"),
        _ => None,
    }
}

/// The bits of `flags` that no `UBLK_F_*` constant here names (a newer kernel's features).
pub const fn unknown_features(flags: u64) -> u64 {
    let mut known = 0u64;
    let mut i = 0;
    while i < FEATURES.len() {
        known |= FEATURES[i].0;
        i += 1;
    }
    flags & !known
}
