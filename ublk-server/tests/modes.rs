//! The newer I/O modes in the guest: `--per-io-daemon` (UBLK_F_PER_IO_DAEMON, 6.16+) and
//! `--batch-io` (UBLK_F_BATCH_IO, 7.0+) each serve fio's crc32c verify on ramdisk and loop
//! with 1 and 2 queues, null I/O completes, every tag's slot in the tag-state file names the
//! thread that owns it, and a hang fault holds one tag while the others serve. On a kernel
//! without the feature each test checks the refusal instead: exit 2, the feature and the first
//! release named, no device left.
//!
//! Named `smoke_*` so that `cargo xtask test` runs them on its 6.18 and 7.x boots too.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    KillOnDrop, Server, assert_no_d_state, fio_verify, loop_file, server_cmd, sh, wait_timeout,
};
use ublk_trace_common::tagstate::{
    HEADER_BYTES, SLOT_BYTES, SlotState, TagSlot, TagStateHeader, slot_offset,
};

/// The kernel's GET_FEATURES, as `ublk-server features` decodes it, lists `name`.
fn kernel_has(name: &str) -> bool {
    let out = server_cmd(&["features"]);
    assert!(out.status.success(), "ublk-server features failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(name))
}

/// `run ARGS` on a kernel without the mode's feature: exit 2 before any device exists, with a
/// message naming the feature, the first release that has it and the flag to drop.
fn assert_refused(args: &[&str], feature: &str, release: &str, flag: &str) {
    let before = server_cmd(&["list"]);
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    let out = server_cmd(&full);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    for want in [feature, &format!("Linux {release} or newer"), flag] {
        assert!(err.contains(want), "refusal does not name {want:?}: {err}");
    }
    assert_eq!(
        server_cmd(&["list"]).stdout,
        before.stdout,
        "a device was left behind"
    );
}

/// Thread name → tid of a process's threads.
fn threads_of(pid: i32) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in rd.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
            out.insert(comm.trim().to_string(), tid);
        }
    }
    out
}

fn read_tags(id: u32) -> (TagStateHeader, Vec<u8>) {
    let b = std::fs::read(format!("/run/ublk-server/ublkb{id}.tags")).expect("tag state file");
    let h = TagStateHeader::decode(&b[..HEADER_BYTES]).expect("valid header");
    (h, b)
}

fn slot(h: &TagStateHeader, b: &[u8], q: u16, tag: u16) -> TagSlot {
    let off = slot_offset(h.queue_depth, q, tag);
    TagSlot::decode(&b[off..off + SLOT_BYTES]).expect("slot")
}

/// The thread that owns (q, tag) with `n` per-io daemons per queue (`n == 0`: one thread per
/// queue).
fn owner_name(q: u16, tag: u16, n: u16) -> String {
    if n == 0 {
        format!("ublk-q{q}")
    } else {
        format!("ublk-q{q}d{}", tag % n)
    }
}

/// Every tag's slot names its owner (see [`owner_name`]), a live thread of the server, and
/// each daemon of a queue that saw I/O served some of it. Returns the requests served.
fn assert_tags_name_their_daemon(s: &Server, n: u16) -> u64 {
    let threads = threads_of(s.pid());
    let (h, b) = read_tags(s.dev_id);
    let mut total = 0;
    for q in 0..h.nr_queues {
        let mut served = vec![0u64; usize::from(n.max(1))];
        for tag in 0..h.queue_depth {
            let d = tag % n.max(1);
            let name = owner_name(q, tag, n);
            let tid = *threads
                .get(&name)
                .unwrap_or_else(|| panic!("no thread {name} in {threads:?}"));
            let sl = slot(&h, &b, q, tag);
            assert_eq!(sl.tid, tid, "queue {q} tag {tag} must name {name}: {sl:?}");
            served[usize::from(d)] += sl.seq;
        }
        let sum: u64 = served.iter().sum();
        if sum > 0 {
            assert!(
                served.iter().all(|&x| x > 0),
                "queue {q}: every daemon must serve its tags, served per daemon {served:?}"
            );
        }
        total += sum;
    }
    total
}

/// fio crc32c verify on ramdisk and loop with 1 and 2 queues, the tag owners checked after
/// each, then a null run that completes. `daemons`: per-io daemons per queue (0: one thread).
fn verify_mode(mode: &[&str], daemons: u16) {
    let f = loop_file("ublk-test-modes.img", 16 << 20);
    for target in [&["ramdisk", "--size", "16M"][..], &["loop", "--file", &f]] {
        for queues in ["1", "2"] {
            let mut args = target.to_vec();
            args.extend(["--queues", queues, "--depth", "64"]);
            args.extend(mode);
            let s = Server::start(&args);
            fio_verify(&s.bdev(), 64);
            let served = assert_tags_name_their_daemon(&s, daemons);
            assert!(served > 0, "{args:?}: no request in the tag state");
            let st = s.stop();
            assert!(st.success(), "server exit {st:?} for {args:?}");
        }
    }
    let _ = std::fs::remove_file(f);
    let mut args = vec!["null", "--size", "1G", "--queues", "2"];
    args.extend(mode);
    let s = Server::start(&args);
    let (st, out) = sh(&format!(
        "fio --name=null --filename={} --direct=1 --ioengine=io_uring --iodepth=16 \
         --rw=randrw --bs=4k --size=64M --io_size=8M",
        s.bdev()
    ));
    assert!(st.success(), "{out}");
    assert!(out.contains("err= 0"), "fio reported errors:\n{out}");
    assert!(s.stop().success());
}

/// fio crc32c verify with 2 daemons per queue, on ramdisk and loop, 1 and 2 queues; then null.
#[test]
#[ignore = "needs ublk guest"]
fn smoke_per_io_daemon_fio_verify() {
    let mode = ["--per-io-daemon", "--threads-per-queue", "2"];
    if !kernel_has("PER_IO_DAEMON") {
        let mut args = vec!["null"];
        args.extend(mode);
        assert_refused(&args, "UBLK_F_PER_IO_DAEMON", "6.16", "--per-io-daemon");
        return;
    }
    verify_mode(&mode, 2);
}

/// fio crc32c verify with PREP/FETCH/COMMIT_IO_CMDS (a batch device refuses the per-tag
/// commands, so data read back intact is the batch path at work), ramdisk and loop, 1 and 2
/// queues; then null.
#[test]
#[ignore = "needs ublk guest"]
fn smoke_batch_io_fio_verify() {
    if !kernel_has("BATCH_IO") {
        assert_refused(
            &["null", "--batch-io"],
            "UBLK_F_BATCH_IO",
            "7.0",
            "--batch-io",
        );
        return;
    }
    verify_mode(&["--batch-io"], 0);
}

/// `hang:q=0,tag=1` under `mode`: the tag's slot names its owner thread `owner` and stays in
/// the server while tags 0 and 2 keep serving; SIGKILL fails the held read and `del` cleans
/// up.
fn hang_holds_one_tag(mode: &[&str], owner: &str) {
    let mut args = vec!["ramdisk", "--size", "16M", "--depth", "4"];
    args.extend(mode);
    args.extend(["--inject", "hang:q=0,tag=1"]);
    let s = Server::start(&args);
    let id = s.dev_id;
    let fio = Command::new("fio")
        .args([
            "--name=hang",
            &format!("--filename={}", s.bdev()),
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=4",
            "--rw=randread",
            "--bs=4k",
            "--time_based",
            "--runtime=60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fio");
    let mut fio = KillOnDrop(fio);
    let t0 = Instant::now();
    let held = loop {
        let (h, b) = read_tags(id);
        let sl = slot(&h, &b, 0, 1);
        if sl.fault == 1 || t0.elapsed() > Duration::from_secs(30) {
            break sl;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(held.fault, 1, "tag 1 never took the hang: {held:?}");
    assert_eq!(held.slot_state(), Some(SlotState::InServer), "{held:?}");
    let threads = threads_of(s.pid());
    assert_eq!(Some(&held.tid), threads.get(owner), "{threads:?}");
    // Tags 0 and 2 keep serving while tag 1 is held.
    let (h, b) = read_tags(id);
    let before = slot(&h, &b, 0, 0).seq + slot(&h, &b, 0, 2).seq;
    std::thread::sleep(Duration::from_secs(1));
    let (h, b) = read_tags(id);
    let after = slot(&h, &b, 0, 0).seq + slot(&h, &b, 0, 2).seq;
    assert!(
        after > before,
        "the other tags stopped serving: {before} -> {after}"
    );
    assert_eq!(
        slot(&h, &b, 0, 1).received_ns,
        held.received_ns,
        "tag 1 took another request"
    );
    s.signal(libc::SIGKILL);
    let st =
        wait_timeout(&mut fio.0, Duration::from_secs(60)).expect("fio still stuck after SIGKILL");
    assert!(
        !st.success(),
        "the held read must fail once the server is gone"
    );
    assert!(server_cmd(&["del", &id.to_string()]).status.success());
    assert_no_d_state();
    drop(s);
}

/// With two daemons tag 1 belongs to daemon 1; daemon 0 (tags 0 and 2) keeps serving.
#[test]
#[ignore = "needs ublk guest"]
fn smoke_per_io_daemon_hang_holds_one_daemons_tag() {
    let mode = ["--per-io-daemon", "--threads-per-queue", "2"];
    if !kernel_has("PER_IO_DAEMON") {
        let mut args = vec!["ramdisk"];
        args.extend(mode);
        assert_refused(&args, "UBLK_F_PER_IO_DAEMON", "6.16", "--per-io-daemon");
        return;
    }
    hang_holds_one_tag(&mode, "ublk-q0d1");
}

/// In batch mode a held tag is one left out of every COMMIT_IO_CMDS.
#[test]
#[ignore = "needs ublk guest"]
fn smoke_batch_io_hang_holds_one_tag() {
    if !kernel_has("BATCH_IO") {
        assert_refused(
            &["ramdisk", "--batch-io"],
            "UBLK_F_BATCH_IO",
            "7.0",
            "--batch-io",
        );
        return;
    }
    hang_holds_one_tag(&["--batch-io"], "ublk-q0");
}

/// `stall-queue:q=0,after=2,daemon=1`: daemon 1 stops entering io_uring, so requests on its tags
/// (1 and 3) are never delivered, while daemon 0 (tags 0 and 2) keeps serving. Stopping one
/// daemon stops only its own tags.
#[test]
#[ignore = "needs ublk guest"]
fn smoke_per_io_daemon_stall_stops_only_its_tags() {
    let args = [
        "ramdisk",
        "--size",
        "16M",
        "--depth",
        "4",
        "--per-io-daemon",
        "--threads-per-queue",
        "2",
        "--inject",
        "stall-queue:q=0,after=2,daemon=1",
    ];
    if !kernel_has("PER_IO_DAEMON") {
        assert_refused(&args, "UBLK_F_PER_IO_DAEMON", "6.16", "--per-io-daemon");
        return;
    }
    let s = Server::start(&args);
    let id = s.dev_id;
    let fio = Command::new("fio")
        .args([
            "--name=stall",
            &format!("--filename={}", s.bdev()),
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=4",
            "--rw=randread",
            "--bs=4k",
            "--time_based",
            "--runtime=60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fio");
    let mut fio = KillOnDrop(fio);
    const STALL: u32 = 8;
    let t0 = Instant::now();
    loop {
        let (h, b) = read_tags(id);
        if slot(&h, &b, 0, 1).fault == STALL || t0.elapsed() > Duration::from_secs(30) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the requests already handed to daemon 1 settle, then compare one second.
    std::thread::sleep(Duration::from_millis(500));
    let seqs = || {
        let (h, b) = read_tags(id);
        (0..4).map(|t| slot(&h, &b, 0, t)).collect::<Vec<_>>()
    };
    let before = seqs();
    std::thread::sleep(Duration::from_secs(1));
    let after = seqs();
    for t in [1, 3] {
        assert_eq!(after[t].fault, STALL, "tag {t} of daemon 1: {:?}", after[t]);
        assert_eq!(
            after[t].seq, before[t].seq,
            "daemon 1 served tag {t} while stalled"
        );
    }
    for t in [0, 2] {
        assert_eq!(
            after[t].fault, 0,
            "tag {t} of daemon 0 took the stall: {:?}",
            after[t]
        );
    }
    assert!(
        after[0].seq + after[2].seq > before[0].seq + before[2].seq,
        "daemon 0 stopped serving: {before:?} -> {after:?}"
    );
    s.signal(libc::SIGKILL);
    let st =
        wait_timeout(&mut fio.0, Duration::from_secs(60)).expect("fio still stuck after SIGKILL");
    assert!(
        !st.success(),
        "the undelivered reads must fail once the server is gone"
    );
    assert!(server_cmd(&["del", &id.to_string()]).status.success());
    assert_no_d_state();
    drop(s);
}
