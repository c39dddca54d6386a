//! Guest-only checks that the harness delivered what every other guest test relies on: the
//! driver loaded, its control node, module BTF, kprobes and tracefs. They run under
//! `cargo xtask guest test` (with `--ignored`); on the host they are skipped, never passed.
use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_guest_has_ublk_drv_and_control_node() {
    let modules = read("/proc/modules");
    assert!(
        modules.lines().any(|l| l.starts_with("ublk_drv ")),
        "ublk_drv not loaded:\n{modules}"
    );
    let meta = std::fs::metadata("/dev/ublk-control").expect("/dev/ublk-control exists");
    use std::os::unix::fs::FileTypeExt;
    assert!(
        meta.file_type().is_char_device(),
        "/dev/ublk-control is not a char device"
    );
    assert!(
        Path::new("/sys/kernel/btf/ublk_drv").is_file(),
        "no module BTF for ublk_drv"
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_guest_has_kprobes_and_block_tracepoints() {
    let kp_type = read("/sys/bus/event_source/devices/kprobe/type");
    assert!(
        kp_type.trim().parse::<u32>().is_ok(),
        "kprobe PMU type is not a number: {kp_type:?}"
    );
    let kallsyms = read("/proc/kallsyms");
    for f in ["ublk_ctrl_uring_cmd", "ublk_ch_uring_cmd", "ublk_queue_rq"] {
        assert!(
            kallsyms
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some(f)),
            "{f} missing from /proc/kallsyms"
        );
    }
    let fmt = read("/sys/kernel/tracing/events/block/block_rq_issue/format");
    assert!(
        fmt.contains("field:dev_t dev;"),
        "unexpected block_rq_issue format:\n{fmt}"
    );
}
