//! Foundation check in the guest: GET_FEATURES travels through io_uring (URING_CMD on
//! /dev/ublk-control, SQE128) and the answer decodes with `ublk_abi`'s names.
mod diagnose_common;

use std::time::Duration;

use ublk_abi::{
    UBLK_F_CMD_IOCTL_ENCODE, UBLK_F_URING_CMD_COMP_IN_TASK, UBLK_F_USER_RECOVERY, feature_names,
    unknown_features,
};

#[test]
#[ignore = "needs ublk guest"]
fn smoke_get_features_through_io_uring_decodes() {
    let flags = match ublk_trace::kernel::ctrl::get_features(Duration::from_secs(5)) {
        Ok(f) => f,
        // Before 6.5 the command does not exist: a genuine lack, told apart from a failure.
        Err(e) if ublk_trace::kernel::ctrl::is_no_get_features(&e) => {
            diagnose_common::skip(
                "smoke_get_features_through_io_uring_decodes",
                &format!("this kernel has no GET_FEATURES (6.5+): {e}"),
            );
            return;
        }
        Err(e) => panic!("GET_FEATURES failed: {e}"),
    };
    // Every kernel with GET_FEATURES (6.5+) has these; a zero or garbage answer would miss them.
    for (bit, name) in [
        (
            UBLK_F_URING_CMD_COMP_IN_TASK,
            "UBLK_F_URING_CMD_COMP_IN_TASK",
        ),
        (UBLK_F_USER_RECOVERY, "UBLK_F_USER_RECOVERY"),
        (UBLK_F_CMD_IOCTL_ENCODE, "UBLK_F_CMD_IOCTL_ENCODE"),
    ] {
        assert!(
            flags & bit != 0,
            "{name} missing from GET_FEATURES = {flags:#x}"
        );
    }
    let names: Vec<&str> = feature_names(flags).collect();
    let unknown = unknown_features(flags);
    assert_eq!(
        names.len() as u32 + unknown.count_ones(),
        flags.count_ones(),
        "every feature bit is either named or reported unknown: {flags:#x} -> {names:?}"
    );
    // ublk-abi encodes every flag up to the 7.3 header; only newer kernels may add bits we cannot
    // name yet, and those must surface as unknown, not vanish.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if release.starts_with("6.") || release.starts_with("7.3") {
        assert_eq!(
            unknown, 0,
            "kernel {release} reports feature bits ublk-abi cannot name: {unknown:#x}"
        );
    }

    assert!(
        names.iter().any(|n| n.contains("CMD_IOCTL_ENCODE")),
        "{names:?}"
    );
    println!(
        "GET_FEATURES = {flags:#x}: {} (unknown bits {unknown:#x})",
        names.join(" ")
    );
}
