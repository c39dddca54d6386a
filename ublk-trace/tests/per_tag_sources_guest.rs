//! Guest tests of the two per-tag sources, the driver's memory and the events:
//! - Two sources, one answer: under fio with an injected hang, `watch --per-io state` keeps
//!   both (the event side is the in-kernel state map) and compares them on every tag that
//!   did not move between two reads (`cross_check` in each document). Any disagreement is a
//!   bug in one of them.
//! - The detail view of one tag on the default (light) path: its events streamed while it
//!   is shown, next to the driver's view of it.
//!
//! The servers publish no tag file, so nothing comes from it.
mod diagnose_common;

use std::time::{Duration, Instant};

use diagnose_common::*;
use serde_json::Value;

/// The device's entry in a watch document.
fn device(doc: &Value, dev_id: u32) -> Option<&Value> {
    doc["devices"]
        .as_array()?
        .iter()
        .find(|d| d["dev"] == dev_id)
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_driver_and_events_agree_on_every_stable_tag_under_fio_with_a_hang() {
    let s = Server::start(&[
        "null",
        "--queues",
        "1",
        "--depth",
        "8",
        "--no-tag-state",
        "--inject",
        "hang:q=0,tag=3",
    ]);
    let w = HeadlessWatch::start_args(s.dev_id, 500, &["--per-io", "state"]);
    w.wait_until_attached();
    // fio after the attach: every tag's FETCH/COMMIT is seen from its first request on.
    let mut fio = fio_reads(&s.bdev(), 8, 0);
    assert!(
        wait_for_stuck_tag(s.dev_id, 0, 3, Duration::from_secs(30)),
        "q0 t3 never stuck per debugfs: {:?}",
        busy_tags(s.dev_id)
    );
    // Ten seconds of documents while fio keeps the other seven tags busy. The hung tag is
    // stable once two driver reads (500 ms apart) have seen it: documents received in the
    // first second after debugfs confirmed the hang, or queued before, are not counted.
    let from = Instant::now();
    let stable_from = from + Duration::from_secs(1);
    let (mut docs, mut compared, mut agree) = (0u32, 0u64, 0u64);
    let mut disagree: Vec<String> = Vec::new();
    let mut in_server_seen = false;
    while from.elapsed() < Duration::from_secs(11) {
        let Ok((t, doc)) = w.docs.recv_timeout(Duration::from_secs(5)) else {
            break;
        };
        if t < stable_from {
            continue;
        }
        let Some(d) = device(&doc, s.dev_id) else {
            continue;
        };
        assert_eq!(doc["per_io"]["mode"], "state", "{doc}");
        let c = &d["cross_check"];
        if c.is_null() {
            continue;
        }
        docs += 1;
        compared += c["compared"].as_u64().unwrap_or(0);
        agree += c["agree"].as_u64().unwrap_or(0);
        for x in c["disagree"].as_array().into_iter().flatten() {
            disagree.push(format!("{x} at {}", doc["ts_ns"]));
        }
        in_server_seen |= d["queues"][0]["counts"]["in_server"].as_u64() >= Some(1);
    }
    let _ = fio.kill();
    drop(w);
    drop(s);
    let _ = wait_timeout(&mut fio, Duration::from_secs(30));
    println!("{docs} documents compared {compared} tag states, {agree} agreed");
    assert!(docs >= 5, "too few documents with both sources: {docs}");
    assert!(in_server_seen, "the hung tag was never shown IN_SERVER");
    // The hung tag is stable in every document after the hang: at least it is compared.
    assert!(
        compared >= u64::from(docs),
        "{compared} comparisons in {docs} documents"
    );
    assert!(
        disagree.is_empty(),
        "the driver and the events disagree: {disagree:#?}"
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_detail_view_streams_one_tags_life_next_to_the_driver_view() {
    let s = Server::start(&["null", "--queues", "1", "--depth", "4", "--no-tag-state"]);
    let mut fio = fio_reads(&s.bdev(), 4, 0);
    let out = std::process::Command::new(bin("ublk-trace"))
        .args(["watch", "dev", &s.dev_id.to_string()])
        .args([
            "--dump-screen",
            "120x40",
            "--detail",
            "0:2",
            "--ticks",
            "16",
        ])
        .output()
        .unwrap_or_else(|e| panic!("run watch --dump-screen: {e}"));
    let _ = fio.kill();
    drop(s);
    let _ = wait_timeout(&mut fio, Duration::from_secs(30));
    let screen = String::from_utf8_lossy(&out.stdout);
    println!("{screen}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        screen.contains("per-I/O light"),
        "the default mode is named"
    );
    assert!(screen.contains("q0 t2"), "the detail of q0 t2 is shown");
    assert!(
        screen.contains("streaming this tag's events since"),
        "the detail says its events stream"
    );
    // The life of the tag's requests, from programs the light path does not run otherwise.
    for step in [
        "queue_rq READ",
        "COMMIT_AND_FETCH_REQ accepted",
        "block complete",
    ] {
        assert!(screen.contains(step), "no {step:?} in the tag's history");
    }
    assert!(
        screen.contains("driver ("),
        "the driver's view of the tag is shown"
    );
}

/// tracefs, where the guest mounts it.
fn tracefs() -> std::path::PathBuf {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.join("kprobe_events").exists())
        .unwrap_or_else(|| panic!("no tracefs with kprobe_events in the guest"))
}

fn write(p: &std::path::Path, what: &str) {
    std::fs::write(p, what).unwrap_or_else(|e| panic!("write {what:?} to {}: {e}", p.display()));
}

/// Every path opened on the machine while `f` runs, with the opener's tgid (a tracefs kprobe
/// event on `do_sys_openat2`, reading the user's file name): the kernel's own account, not a
/// sample of /proc.
fn opens_during(f: impl FnOnce() -> Vec<u32>) -> (Vec<u32>, Vec<(u32, String)>) {
    let t = tracefs();
    write(&t.join("events/enable"), "0");
    write(&t.join("trace"), "");
    write(&t.join("options/record-tgid"), "1");
    write(&t.join("buffer_size_kb"), "8192");
    write(
        &t.join("kprobe_events"),
        "p:ublktest_open do_sys_openat2 name=+0($arg2):ustring\n",
    );
    write(&t.join("events/kprobes/ublktest_open/enable"), "1");
    let pids = f();
    write(&t.join("events/kprobes/ublktest_open/enable"), "0");
    let trace = std::fs::read_to_string(t.join("trace")).unwrap_or_default();
    write(&t.join("kprobe_events"), "");
    write(&t.join("options/record-tgid"), "0");
    // "  ublk-trace-231  (  229) [001] ..... 12.3: ublktest_open: (do_sys_openat2+0x0/0x..) name="/proc/kcore""
    let opens = trace
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let tgid = l
                .split_once('(')?
                .1
                .split_once(')')?
                .0
                .trim()
                .parse()
                .ok()?;
            let name = l.split_once("name=\"")?.1.trim_end_matches('"').to_string();
            Some((tgid, name))
        })
        .collect();
    (pids, opens)
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_tracer_never_opens_the_devices_it_diagnoses() {
    let s = Server::start(&["null", "--queues", "1", "--depth", "8", "--no-tag-state"]);
    let mut fio = fio_reads(&s.bdev(), 8, 0);
    let dev = s.dev_id.to_string();
    let run = |args: &[&str]| -> u32 {
        let mut c = std::process::Command::new(bin("ublk-trace"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ublk-trace {args:?}: {e}"));
        let pid = c.id();
        if wait_timeout(&mut c, Duration::from_secs(60)).is_none() {
            let _ = c.kill();
            panic!("ublk-trace {args:?} did not end within 60 s");
        }
        pid
    };
    let (pids, opens) = opens_during(|| {
        vec![
            run(&["diagnose", "dev", &dev, "--for", "2", "--json"]),
            run(&["watch", "dev", &dev, "--headless", "--json", "--count", "6"]),
            run(&[
                "watch",
                "dev",
                &dev,
                "--dump-screen",
                "120x40",
                "--detail",
                "0:1",
            ]),
            run(&["state", "dev", &dev]),
            run(&["doctor"]),
        ]
    });
    let _ = fio.kill();
    drop(s);
    let _ = wait_timeout(&mut fio, Duration::from_secs(30));
    let mine: Vec<&(u32, String)> = opens.iter().filter(|(t, _)| pids.contains(t)).collect();
    println!(
        "{} opens by the tracer's runs, e.g. {:?}",
        mine.len(),
        mine.iter().take(8).collect::<Vec<_>>()
    );
    assert!(
        mine.iter()
            .any(|(_, n)| n.starts_with("/sys/") || n.starts_with("/proc/")),
        "the kprobe saw none of the tracer's own opens: {} events in all",
        opens.len()
    );
    let devices: Vec<_> = mine
        .iter()
        .filter(|(_, n)| n.starts_with("/dev/ublkb") || n.starts_with("/dev/ublkc"))
        .collect();
    assert!(
        devices.is_empty(),
        "the tracer opened its devices: {devices:?}"
    );
}

/// `ublk-server run <args>` under fio reads as deep as the queue (`depth`), until every tag of
/// `stuck` (queue 0) is held per debugfs; then `diagnose --for 1` and the teardown. Gives the
/// document and `probe(server)`'s answer, taken while the server ran.
fn diagnose_stuck<T>(
    args: &[&str],
    depth: u32,
    stuck: &[u64],
    probe: impl FnOnce(&Server) -> T,
) -> (Value, T) {
    let s = Server::start(args);
    let mut fio = fio_reads(&s.bdev(), depth, 0);
    for &t in stuck {
        assert!(
            wait_for_stuck_tag(s.dev_id, 0, t, Duration::from_secs(30)),
            "q0 t{t} never stuck per debugfs: {:?}",
            busy_tags(s.dev_id)
        );
    }
    let seen = probe(&s);
    let (_, doc, _) = diagnose(s.dev_id, &["--for", "1", "--stuck-ms", "500"]);
    let _ = fio.kill();
    drop(s);
    let _ = wait_timeout(&mut fio, Duration::from_secs(30));
    assert_eq!(doc["driver"]["live"], true, "{doc}");
    (doc, seen)
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_batch_io_hang_is_stuck_in_server_from_the_drivers_memory() {
    if !kernel_has("BATCH_IO") {
        // ublk-server's own guest tests check its refusal on such a kernel.
        skip(
            "smoke_batch_io_hang_is_stuck_in_server_from_the_drivers_memory",
            "this kernel has no UBLK_F_BATCH_IO (7.0+)",
        );
        return;
    }
    let args = [
        "null",
        "--queues",
        "1",
        "--depth",
        "8",
        "--batch-io",
        "--no-tag-state",
        "--inject",
        "hang:q=0,tag=3",
    ];
    let (doc, pid) = diagnose_stuck(&args, 8, &[3], Server::pid);
    let fs = findings(&doc);
    let f = finding_on(&fs, &["STUCK_IN_SERVER"], 0, 3)
        .unwrap_or_else(|| panic!("no STUCK_IN_SERVER on q0 t3: {doc}"));
    assert!(has_pid(f, pid), "{f}");
    assert!(
        f["tags"].as_array().is_some_and(|ts| ts
            .iter()
            .any(|t| t["tag"] == 3 && t["state"] == "IN_SERVER")),
        "{f}"
    );
    assert!(
        f["evidence"].to_string().contains("COMMIT_IO_CMDS"),
        "a batch device's commit is named as such: {f}"
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_per_io_daemon_stall_names_only_that_daemons_tags_and_thread() {
    if !kernel_has("PER_IO_DAEMON") {
        skip(
            "smoke_per_io_daemon_stall_names_only_that_daemons_tags_and_thread",
            "this kernel has no UBLK_F_PER_IO_DAEMON (6.16+)",
        );
        return;
    }
    // Two daemons on queue 0: daemon 0 owns tags 0 and 2, daemon 1 tags 1 and 3; daemon 1
    // stops entering io_uring after two requests.
    let args = [
        "null",
        "--queues",
        "1",
        "--depth",
        "4",
        "--per-io-daemon",
        "--threads-per-queue",
        "2",
        "--no-tag-state",
        "--inject",
        "stall-queue:q=0,after=2,daemon=1",
    ];
    let (doc, (d0, d1)) = diagnose_stuck(&args, 4, &[1, 3], |s| {
        (s.thread_tid("ublk-q0d0"), s.thread_tid("ublk-q0d1"))
    });
    let d1 = d1.unwrap_or_else(|| panic!("no thread ublk-q0d1 in the server"));
    let fs = findings(&doc);
    let mut named: Vec<(u64, u64)> = Vec::new();
    for f in &fs {
        for t in f["tags"].as_array().into_iter().flatten() {
            let (q, tag) = (
                t["q_id"].as_u64().unwrap_or(99),
                t["tag"].as_u64().unwrap_or(99),
            );
            named.push((q, tag));
            assert!(
                tag == 1 || tag == 3,
                "a finding names daemon 0's tag {tag}: {f}"
            );
            assert_eq!(
                t["owner_tid"].as_u64(),
                Some(u64::from(d1)),
                "tag {tag} is owned by daemon 1 (tid {d1}, daemon 0 is {d0:?}): {f}"
            );
        }
    }
    for t in [1u64, 3] {
        assert!(named.contains(&(0, t)), "no finding lists q0 t{t}: {doc}");
    }
}

/// BATCH_IO (7.0+), a server that is not ours in spirit (no tag file): its COMMIT_IO_CMDS
/// names a tag it does not own (`wrong-tag`: the request delivered on tag T is committed as
/// tag T+1). The kernel refuses that element (-EBUSY: not OWNED_BY_SRV); the light path
/// reads the refused element back from the server's buffer, so CMD_REJECTED names its tag,
/// index and cause, and the request left on tag T is STUCK_IN_SERVER.
#[test]
#[ignore = "needs ublk guest"]
fn smoke_batch_commit_naming_a_tag_not_owned_is_rejected_with_that_element() {
    if !kernel_has("BATCH_IO") {
        skip(
            "smoke_batch_commit_naming_a_tag_not_owned_is_rejected_with_that_element",
            "this kernel has no UBLK_F_BATCH_IO (7.0+)",
        );
        return;
    }
    const DEPTH: u64 = 4;
    let s = Server::start(&[
        "null",
        "--queues",
        "1",
        "--depth",
        "4",
        "--batch-io",
        "--no-tag-state",
        "--inject",
        "wrong-tag:q=0",
    ]);
    let w = HeadlessWatch::start(s.dev_id, 300);
    w.wait_until_attached();
    let mut reader = dd(&s.bdev(), 0, 1, None);
    let found = w.wait_for(Instant::now(), Duration::from_secs(30), |doc| {
        let fs = findings(doc);
        fs.iter().any(|f| {
            f["class"] == "CMD_REJECTED"
                && f["tag"].as_u64().is_some_and(|other| {
                    finding_on(&fs, &["STUCK_IN_SERVER"], 0, (other + DEPTH - 1) % DEPTH).is_some()
                })
        })
    });
    let pid = s.pid();
    let _ = reader.kill();
    drop(w);
    drop(s);
    let _ = wait_timeout(&mut reader, Duration::from_secs(30));
    let (_, doc) = found.expect("CMD_REJECTED on the wrong tag and STUCK_IN_SERVER on its own");
    let fs = findings(&doc);
    let f = fs
        .iter()
        .find(|f| f["class"] == "CMD_REJECTED")
        .expect("matched above");
    println!("{f}");
    let other = f["tag"].as_u64().expect("matched above");
    let ev = f["evidence"].to_string();
    assert!(
        f["summary"]
            .as_str()
            .is_some_and(|t| t.contains("COMMIT_IO_CMDS rejected with -EBUSY")),
        "{f}"
    );
    assert!(
        ev.contains(&format!("element 0 of 1 (tag {other}")) && ev.contains("OWNED_BY_SRV"),
        "{f}"
    );
    assert!(has_pid(f, pid), "{f}");
}
