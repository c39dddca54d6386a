//! Lifecycle guest tests: the control round trip, SIGINT and SIGKILL with I/O in flight,
//! rejected input that needs the kernel (id in use, queue clamping), injected faults.

mod common;
// The minimal JSON Schema checker of ublk-trace's schema tests (std + serde_json only).
#[path = "../../ublk-trace/tests/schema_check/mod.rs"]
mod schema_check;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, assert_no_d_state, server_cmd, sh, wait_timeout};
use ublk_trace_common::tagstate::{
    HEADER_BYTES, SLOT_BYTES, SlotState, TagSlot, TagStateHeader, slot_offset,
};

fn info_json(id: u32) -> serde_json::Value {
    let out = server_cmd(&["info", &id.to_string(), "--json"]);
    assert!(
        out.status.success(),
        "info failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("info --json is JSON")
}

fn list_output() -> String {
    let out = server_cmd(&["list"]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs ublk guest"]
fn control_round_trip() {
    let s = Server::start(&["ramdisk", "--size", "16M", "--queues", "2", "--depth", "64"]);
    let id = s.dev_id;
    let v = info_json(id);
    assert_eq!(v["kind"], "ublk-server.info", "{v}");
    assert_eq!(v["version"], 1, "{v}");
    // Compiled in: the guest has the test binary, not the repository.
    let schema: serde_json::Value = serde_json::from_str(include_str!(
        "../../docs/schema/ublk-server-info.schema.json"
    ))
    .expect("docs/schema/ublk-server-info.schema.json is JSON");
    let bad = schema_check::violations(&schema, &v);
    assert!(
        bad.is_empty(),
        "info --json against its schema: {bad:#?}\n{v:#}"
    );
    assert_eq!(v["state"], "LIVE", "{v}");
    assert_eq!(v["ublksrv_pid"], s.pid(), "{v}");
    assert_eq!(v["nr_hw_queues"], 2, "{v}");
    assert_eq!(v["queue_depth"], 64, "{v}");
    assert_eq!(v["dev_sectors"], 32768, "{v}");
    assert!(list_output().contains(&format!("dev {id}: state LIVE")));
    let tags = format!("/run/ublk-server/ublkb{id}.tags");
    assert!(
        std::path::Path::new(&tags).exists(),
        "tag state not published"
    );
    let st = s.stop();
    assert!(st.success(), "exit {st:?}");
    assert_eq!(list_output(), "", "devices left after a clean stop");
    assert!(!std::path::Path::new(&format!("/dev/ublkc{id}")).exists());
    assert!(
        !std::path::Path::new(&tags).exists(),
        "tag state file left behind"
    );
}

fn start_fio(bdev: &str) -> std::process::Child {
    Command::new("fio")
        .args([
            "--name=load",
            &format!("--filename={bdev}"),
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=16",
            "--rw=randrw",
            "--bs=4k",
            "--time_based",
            "--runtime=60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fio")
}

#[test]
#[ignore = "needs ublk guest"]
fn sigint_during_fio_exits_clean() {
    let s = Server::start(&["ramdisk", "--size", "32M", "--queues", "2"]);
    let id = s.dev_id;
    let mut fio = start_fio(&s.bdev());
    std::thread::sleep(Duration::from_secs(3));
    let st = s.stop();
    assert!(
        st.success(),
        "server exit {st:?} after SIGINT with I/O in flight"
    );
    // fio either finished its I/O or got errors; it must not hang.
    assert!(
        wait_timeout(&mut fio, Duration::from_secs(60)).is_some(),
        "fio hung"
    );
    assert!(!std::path::Path::new(&format!("/dev/ublkb{id}")).exists());
    assert_eq!(list_output(), "");
    assert_no_d_state();
}

#[test]
#[ignore = "needs ublk guest"]
fn sigkill_during_fio_then_del_leaves_nothing() {
    let s = Server::start(&["ramdisk", "--size", "32M"]);
    let id = s.dev_id;
    let mut fio = start_fio(&s.bdev());
    std::thread::sleep(Duration::from_secs(3));
    s.signal(libc::SIGKILL);
    let fio_st =
        wait_timeout(&mut fio, Duration::from_secs(60)).expect("fio hung after server SIGKILL");
    assert!(
        !fio_st.success(),
        "fio should see I/O errors once the server is gone"
    );
    let del = server_cmd(&["del", &id.to_string()]);
    assert!(
        del.status.success(),
        "del: {}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert_eq!(list_output(), "");
    assert!(!std::path::Path::new(&format!("/dev/ublkc{id}")).exists());
    assert_no_d_state();
    drop(s);
}

#[test]
#[ignore = "needs ublk guest"]
fn id_in_use_is_rejected() {
    let s = Server::start(&["null", "--id", "7"]);
    let out = server_cmd(&["run", "null", "--id", "7"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("already in use"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // The first device is untouched.
    assert!(std::path::Path::new("/dev/ublkb7").exists());
    assert!(s.stop().success());
}

#[test]
#[ignore = "needs ublk guest"]
fn queues_beyond_cpus_are_clamped_with_a_warning() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let want = (cpus + 2).to_string();
    let s = Server::start(&["null", "--queues", &want, "-v"]);
    let v = info_json(s.dev_id);
    assert_eq!(v["nr_hw_queues"], cpus as u64, "{v}");
    assert!(
        s.stderr()
            .contains(&format!("granted {cpus} queues instead of {want}")),
        "{}",
        s.stderr()
    );
    assert!(s.stop().success());
}

fn read_slot(id: u32, q: u16, tag: u16) -> (TagStateHeader, TagSlot) {
    let b = std::fs::read(format!("/run/ublk-server/ublkb{id}.tags")).expect("tag state file");
    let h = TagStateHeader::decode(&b[..HEADER_BYTES]).expect("valid header");
    let off = slot_offset(h.queue_depth, q, tag);
    let s = TagSlot::decode(&b[off..off + SLOT_BYTES]).expect("slot");
    (h, s)
}

/// `hang:q=0,tag=0`: the request on tag 0 is never committed while the other tags keep
/// working; the tag state says so; SIGKILL of the server fails the I/O and `del` cleans up.
#[test]
#[ignore = "needs ublk guest"]
fn injected_hang_is_visible_and_recoverable() {
    let s = Server::start(&[
        "ramdisk",
        "--size",
        "16M",
        "--depth",
        "4",
        "--inject",
        "hang:q=0,tag=0",
    ]);
    let id = s.dev_id;
    // Four reads in flight use every tag, so tag 0 gets a request soon.
    let mut fio = Command::new("fio")
        .args([
            "--name=hang",
            &format!("--filename={}", s.bdev()),
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=4",
            "--rw=randread",
            "--bs=4k",
            "--time_based",
            "--runtime=120",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fio");
    let t0 = Instant::now();
    let (h, slot) = loop {
        let (h, slot) = read_slot(id, 0, 0);
        if slot.fault == 1 || t0.elapsed() > Duration::from_secs(30) {
            break (h, slot);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(slot.fault, 1, "tag 0 never took the hang: {slot:?}");
    assert_eq!(slot.slot_state(), Some(SlotState::InServer), "{slot:?}");
    assert_eq!(
        h.fault_mask & (1 << 1),
        1 << 1,
        "fault_mask {:#x}",
        h.fault_mask
    );
    assert_eq!(h.pid, s.pid() as u32);
    std::thread::sleep(Duration::from_secs(1));
    let (_, later) = read_slot(id, 0, 0);
    assert_eq!(
        later.received_ns, slot.received_ns,
        "tag 0 took another request"
    );
    assert_eq!(later.slot_state(), Some(SlotState::InServer));
    let (_, t1) = read_slot(id, 0, 1);
    assert!(t1.seq > 0, "other tags must keep serving: {t1:?}");
    let (_, inflight) = sh(&format!("cat /sys/block/ublkb{id}/inflight"));
    let reads: u32 = inflight
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(reads >= 1, "inflight: {inflight}");
    s.signal(libc::SIGKILL);
    let st =
        wait_timeout(&mut fio, Duration::from_secs(60)).expect("fio still stuck after SIGKILL");
    assert!(
        !st.success(),
        "the hung read must fail once the server is gone"
    );
    assert!(server_cmd(&["del", &id.to_string()]).status.success());
    assert_no_d_state();
    drop(s);
}

/// `error:errno=5`: reads fail with EIO; the server keeps running and stops cleanly.
#[test]
#[ignore = "needs ublk guest"]
fn injected_error_fails_reads() {
    let s = Server::start(&["ramdisk", "--size", "16M", "--inject", "error:errno=5"]);
    let (st, out) = sh(&format!(
        "dd if={} of=/dev/null bs=4k count=1 iflag=direct",
        s.bdev()
    ));
    assert!(
        !st.success(),
        "read succeeded despite error injection: {out}"
    );
    assert!(
        out.contains("Input/output error") || out.contains("I/O error"),
        "{out}"
    );
    let (_, slot) = read_slot(s.dev_id, 0, 0);
    let _ = slot; // which tag served it is up to blk-mq; the header must carry the fault bit
    let (h, _) = read_slot(s.dev_id, 0, 0);
    assert_eq!(h.fault_mask & (1 << 3), 1 << 3);
    assert!(s.stop().success());
}

/// `--recovery`: after SIGKILL the device stays (QUIESCED, I/O held); `recover` serves it
/// again from the same loop file, and a read issued while no server ran completes.
#[test]
#[ignore = "needs ublk guest"]
fn recover_after_sigkill_keeps_device_and_data() {
    let img = std::env::temp_dir().join("ublk-test-recover.img");
    std::fs::write(&img, vec![0u8; 16 << 20]).expect("loop file");
    let img_s = img.to_string_lossy().into_owned();
    let s = Server::start(&["loop", "--file", &img_s, "--recovery"]);
    let id = s.dev_id;
    let bdev = s.bdev();
    let (st, out) = sh(&format!(
        "dd if=/dev/urandom of=/tmp/ublk-rec-src bs=64k count=16 2>/dev/null && \
         dd if=/tmp/ublk-rec-src of={bdev} bs=64k oflag=direct 2>&1"
    ));
    assert!(st.success(), "{out}");
    s.signal(libc::SIGKILL);
    std::thread::sleep(Duration::from_secs(1));
    let v = info_json(id);
    assert_ne!(v["state"], "DEAD", "recoverable device died: {v}");
    // A read while no server runs waits for the new server (UBLK_F_USER_RECOVERY_REISSUE).
    let mut reader = Command::new("dd")
        .args([
            &format!("if={bdev}"),
            "of=/tmp/ublk-rec-dst",
            "bs=64k",
            "count=16",
            "iflag=direct",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dd");
    std::thread::sleep(Duration::from_millis(500));
    let mut rec = Command::new(common::bin())
        .args(["recover", &id.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn recover");
    let rst = wait_timeout(&mut reader, Duration::from_secs(60))
        .expect("read never completed after recover");
    assert!(rst.success(), "read failed across recovery");
    let (st, out) = sh("cmp /tmp/ublk-rec-src /tmp/ublk-rec-dst");
    assert!(st.success(), "data changed across recovery: {out}");
    assert_eq!(info_json(id)["state"], "LIVE");
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    let st =
        wait_timeout(&mut rec, Duration::from_secs(60)).expect("recover did not exit on SIGINT");
    assert!(st.success(), "recover exit {st:?}");
    assert_eq!(list_output(), "");
    drop(s);
    let _ = std::fs::remove_file(img);
}
