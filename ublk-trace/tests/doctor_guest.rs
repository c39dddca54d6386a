//! Guest test: `ublk-trace doctor --json` on a kernel with ublk_drv and kprobes finds
//! every required function and offset, and exits 0.

mod guest_util;

use std::process::Command;

#[test]
#[ignore = "needs ublk guest"]
fn doctor_finds_every_required_function_and_offset() {
    let out = Command::new(guest_util::bin("ublk-trace"))
        .args(["doctor", "--json"])
        .output()
        .expect("run ublk-trace doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&text).expect("doctor --json is JSON");
    let failed: Vec<&serde_json::Value> = report["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .filter(|c| c["status"] == "fail")
        .collect();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
    assert!(out.status.success(), "doctor exit {:?}", out.status);
    for f in report["functions"].as_array().expect("functions array") {
        if f["required"] == true {
            let found = f["found"].as_array().expect("found array");
            assert!(!found.is_empty(), "required function not found: {f}");
            assert!(
                found[0]["addr"].as_u64().is_some_and(|a| a != 0),
                "no address: {f}"
            );
            assert_eq!(found[0]["module"], "ublk_drv", "{f}");
        }
    }
    let offsets = report["offsets"].as_array().expect("offsets array");
    for o in offsets.iter().filter(|o| o["required"] == true) {
        assert_eq!(o["source"], "btf", "required offset not from BTF: {o}");
    }
    // The driver-internal path to the device id must come from the module's BTF.
    let dev = offsets
        .iter()
        .find(|o| o["name"] == "ublk_device.dev_info.dev_id")
        .expect("listed");
    assert!(dev["value"].as_u64().is_some(), "{dev}");
    // GET_FEATURES was answered and decoded.
    let features = report["features"].as_array().expect("features array");
    assert!(
        features.iter().any(|f| f == "CMD_IOCTL_ENCODE"),
        "{features:?}"
    );
}
