//! The ublk kernel UAPI (`include/uapi/linux/ublk_cmd.h`).
#![no_std]
