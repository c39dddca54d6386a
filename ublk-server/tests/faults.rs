//! Fault injection guest tests: each fault does what its grammar line says, shows up in the
//! tag-state file, and the guest recovers afterwards (device deleted, no task in D state).
//! (hang and error are covered in lifecycle.rs.)

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{KillOnDrop, Server, assert_no_d_state, bin, server_cmd, sh, wait_timeout};
use ublk_trace_common::tagstate::{HEADER_BYTES, TagStateHeader};

fn header(id: u32) -> TagStateHeader {
    let b = std::fs::read(format!("/run/ublk-server/ublkb{id}.tags")).expect("tag state file");
    TagStateHeader::decode(&b[..HEADER_BYTES]).expect("valid header")
}

fn fault_bit(kind: u32) -> u64 {
    1 << kind
}

fn kill_and_del(s: Server) {
    let id = s.dev_id;
    s.signal(libc::SIGKILL);
    drop(s); // waits for the exit, then `del --all`
    assert!(
        !std::path::Path::new(&format!("/dev/ublkc{id}")).exists(),
        "device left after del"
    );
    assert_no_d_state();
}

#[test]
#[ignore = "needs ublk guest"]
fn delay_slows_every_commit() {
    let s = Server::start(&["ramdisk", "--size", "16M", "--inject", "delay:ms=200"]);
    assert_eq!(header(s.dev_id).fault_mask & fault_bit(2), fault_bit(2));
    let t0 = Instant::now();
    let (st, out) = sh(&format!(
        "dd if={} of=/dev/null bs=4k count=5 iflag=direct",
        s.bdev()
    ));
    let took = t0.elapsed();
    assert!(st.success(), "{out}");
    // Five synchronous reads, each held 200 ms before its commit.
    assert!(
        took >= Duration::from_millis(1000),
        "5 delayed reads took only {took:?}"
    );
    assert!(s.stop().success());
}

#[test]
#[ignore = "needs ublk guest"]
fn zero_commit_fails_reads() {
    let s = Server::start(&["ramdisk", "--size", "16M", "--inject", "zero-commit"]);
    let (st, out) = sh(&format!(
        "dd if={} of=/dev/null bs=4k count=1 iflag=direct",
        s.bdev()
    ));
    // The kernel turns a 0-byte read completion into EIO.
    assert!(
        !st.success(),
        "a 0-byte read commit must fail the read: {out}"
    );
    assert_eq!(header(s.dev_id).fault_mask & fault_bit(4), fault_bit(4));
    assert!(s.stop().success());
}

#[test]
#[ignore = "needs ublk guest"]
fn bad_desc_breaks_requests_on_other_tags() {
    let s = Server::start(&[
        "ramdisk", "--size", "16M", "--depth", "4", "--inject", "bad-desc",
    ]);
    let (st, out) = sh(&format!(
        "fio --name=bad --filename={} --direct=1 --ioengine=io_uring --iodepth=4 --rw=randread \
         --bs=4k --size=4M --io_size=1M",
        s.bdev()
    ));
    assert!(
        !st.success(),
        "reads with garbage descriptors all succeeded:\n{out}"
    );
    assert_eq!(header(s.dev_id).fault_mask & fault_bit(5), fault_bit(5));
    assert!(s.stop().success());
}

/// skip-fetch: START_DEV cannot complete; the server says which tags never fetched, keeps
/// the hang up for the tracer, and still exits cleanly on SIGINT.
#[test]
#[ignore = "needs ublk guest"]
fn skip_fetch_blocks_start_and_is_reported() {
    let err_path = std::env::temp_dir().join("ublk-skip-fetch.err");
    let child = Command::new(bin())
        .args([
            "run",
            "null",
            "--id",
            "9",
            "--depth",
            "4",
            "--start-timeout-ms",
            "1500",
            "--inject",
            "skip-fetch:q=0,tags=2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(&err_path).expect("stderr file"),
        ))
        .spawn()
        .expect("spawn server");
    let mut guard = KillOnDrop(child);
    let child = &mut guard.0;
    let t0 = Instant::now();
    let mut err = String::new();
    while t0.elapsed() < Duration::from_secs(60) {
        err = std::fs::read_to_string(&err_path).unwrap_or_default();
        if err.contains("did not complete") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        err.contains("queue 0: 2 of 4 tags never sent FETCH_REQ (tags 0-1)"),
        "{err}"
    );
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "server gave up although a fault is injected"
    );
    let h = header(9);
    assert_eq!(h.fault_mask & fault_bit(6), fault_bit(6));
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st =
        wait_timeout(child, Duration::from_secs(60)).expect("server hung on SIGINT during START");
    assert!(
        st.success(),
        "exit {st:?}:\n{}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    let mut first = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut first);
    }
    assert_eq!(first, "", "no ready line without START");
    assert_eq!(String::from_utf8_lossy(&server_cmd(&["list"]).stdout), "");
    assert_no_d_state();
}

#[test]
#[ignore = "needs ublk guest"]
fn no_start_wait_still_serves() {
    let s = Server::start(&["ramdisk", "--size", "16M", "--inject", "no-start-wait"]);
    let (st, out) = sh(&format!(
        "dd if={} of=/dev/null bs=4k count=16 iflag=direct",
        s.bdev()
    ));
    assert!(st.success(), "{out}");
    assert_eq!(header(s.dev_id).fault_mask & fault_bit(7), fault_bit(7));
    assert!(s.stop().success());
}

#[test]
#[ignore = "needs ublk guest"]
fn stall_queue_stops_serving() {
    let s = Server::start(&[
        "ramdisk",
        "--size",
        "16M",
        "--inject",
        "stall-queue:q=0,after=3",
    ]);
    let mut dd = Command::new("dd")
        .args([
            &format!("if={}", s.bdev()),
            "of=/dev/null",
            "bs=4k",
            "count=100",
            "iflag=direct",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dd");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        matches!(dd.try_wait(), Ok(None)),
        "dd finished although the queue stalled"
    );
    let (_, inflight) = sh(&format!("cat /sys/block/ublkb{}/inflight", s.dev_id));
    assert_eq!(
        inflight.split_whitespace().next(),
        Some("1"),
        "inflight: {inflight}"
    );
    assert_eq!(header(s.dev_id).fault_mask & fault_bit(8), fault_bit(8));
    kill_and_del(s);
    assert!(
        wait_timeout(&mut dd, Duration::from_secs(30)).is_some(),
        "dd stuck after SIGKILL"
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn crash_aborts_the_server() {
    let mut s = Server::start(&["ramdisk", "--size", "16M", "--inject", "crash:after=10"]);
    let (st, _) = sh(&format!(
        "dd if={} of=/dev/null bs=4k count=100 iflag=direct",
        s.bdev()
    ));
    assert!(!st.success(), "reads past the crash must fail");
    let exit = wait_timeout(&mut s.child, Duration::from_secs(30)).expect("server still running");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(exit.signal(), Some(libc::SIGABRT), "exit {exit:?}");
    let id = s.dev_id;
    assert!(server_cmd(&["del", &id.to_string()]).status.success());
    assert_no_d_state();
}

/// A held request blocks STOP_DEV (the TEARDOWN_BLOCKED scenario): the first SIGINT leaves
/// it blocked and says so; a second SIGINT fails the held request and the server exits 0.
#[test]
#[ignore = "needs ublk guest"]
fn second_sigint_releases_a_hang() {
    let mut s = Server::start(&[
        "ramdisk",
        "--size",
        "16M",
        "--depth",
        "4",
        "--inject",
        "hang:q=0,tag=0",
    ]);
    let mut fio = KillOnDrop(
        Command::new("fio")
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
            .expect("spawn fio"),
    );
    let tags = format!("/run/ublk-server/ublkb{}.tags", s.dev_id);
    let t0 = Instant::now();
    loop {
        let b = std::fs::read(&tags).expect("tag state");
        let off = ublk_trace_common::tagstate::slot_offset(4, 0, 0);
        let slot = ublk_trace_common::tagstate::TagSlot::decode(&b[off..]).expect("slot");
        if slot.fault == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "tag 0 never hung");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        matches!(s.child.try_wait(), Ok(None)),
        "STOP_DEV cannot finish while tag 0 is held"
    );
    assert!(s.stderr().contains("send SIGINT again"), "{}", s.stderr());
    s.signal(libc::SIGINT);
    let st = wait_timeout(&mut s.child, Duration::from_secs(60))
        .expect("server still blocked after 2nd SIGINT");
    assert!(st.success(), "exit {st:?}:\n{}", s.stderr());
    assert!(
        wait_timeout(&mut fio.0, Duration::from_secs(60)).is_some(),
        "fio hung"
    );
    assert_eq!(String::from_utf8_lossy(&server_cmd(&["list"]).stdout), "");
    assert_no_d_state();
}
