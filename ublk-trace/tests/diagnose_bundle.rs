//! `diagnose dev N --bundle FILE.tar.gz` on a real hang (our server, `hang:q=0,tag=1`): the
//! bundle holds the finding on exactly that tag, the server's kernel stacks and io_uring
//! fdinfo, a reader's stack while it waits in D state (queue 1 hangs every tag), a recording
//! with the events seen while observing, the kernel log tail and doctor's output;
//! `report FILE.tar.gz` prints the finding; nothing stays in D state afterwards.
mod diagnose_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diagnose_common::*;
use serde_json::Value;
use ublk_trace::bundle::{Bundle, Manifest};

const TAG: u64 = 1;
const BUNDLE: &str = "/tmp/b.tar.gz";

/// Run a command with a deadline (a hung tracer must fail the test, not the guest).
fn run_bounded(args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let out_path = format!("/tmp/diagnose-bundle-{}.out", std::process::id());
    let out = std::fs::File::create(&out_path).unwrap_or_else(|e| panic!("{out_path}: {e}"));
    let mut child = Command::new(bin("ublk-trace"))
        .args(args)
        .stdout(out)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn ublk-trace {args:?}: {e}"));
    let st = wait_timeout(&mut child, limit);
    if st.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let st = st.unwrap_or_else(|| panic!("ublk-trace {args:?} still running after {limit:?}"));
    (st.code(), text)
}

/// Tasks (not kernel threads) in D state: `pid comm`.
fn user_tasks_in_d() -> Vec<String> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let mut out = Vec::new();
    for pid in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = pid.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After "comm) ": state, ppid, pgrp, session, tty_nr, tpgid, flags.
        let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
        if fields.first() == Some(&"D") && flags & PF_KTHREAD == 0 {
            out.push(format!(
                "{pid} {}",
                head.split_once('(').map_or("", |h| h.1)
            ));
        }
    }
    out
}

fn text<'a>(b: &'a Bundle, rel: &str) -> std::borrow::Cow<'a, str> {
    String::from_utf8_lossy(
        b.get(rel)
            .unwrap_or_else(|| panic!("{rel} missing from the bundle")),
    )
}

/// Event lines of the recording that match `pred`.
fn count_events(jsonl: &str, pred: impl Fn(&Value) -> bool) -> usize {
    jsonl
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| pred(v))
        .count()
}

fn print_layout(m: &Manifest, bundle_bytes: u64) {
    println!(
        "bundle {BUNDLE}: {bundle_bytes} bytes compressed, {} files",
        m.files.len() + 1
    );
    for f in &m.files {
        println!("  {:>9}  {}", f.bytes, f.path);
    }
    for x in &m.not_collected {
        println!("  not collected: {}: {}", x.what, x.why);
    }
}

#[test]
#[ignore = "needs ublk guest"]
fn diagnose_bundle_of_an_injected_hang_holds_findings_stacks_fdinfo_recording_kmsg() {
    let _ = std::fs::remove_file(BUNDLE);
    // Queue 1 exists when the guest has two CPUs (blk-mq maps CPU n to queue n); every one of
    // its tags hangs, so a reader pinned to CPU 1 waits in D state whichever tag it gets.
    let two_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let mut args = vec!["null", "--depth", "4", "--inject", "hang:q=0,tag=1"];
    if two_cpus {
        args.extend(["--queues", "2"]);
        for t in [
            "hang:q=1,tag=0",
            "hang:q=1,tag=1",
            "hang:q=1,tag=2",
            "hang:q=1,tag=3",
        ] {
            args.extend(["--inject", t]);
        }
    } else {
        println!("NOTE: one CPU: no queue 1, so no D-state reader to bundle");
        args.extend(["--queues", "1"]);
    }
    let s = Server::start(&args);
    // Four reads in flight on a depth-4 queue use every tag, so tag 1 gets one (and hangs);
    // fio goes on with the other tags, so the recording sees FETCH/COMMIT and queue_rq.
    let mut fio = fio_reads(&s.bdev(), 4, 0);
    assert!(
        wait_for_stuck_tag(s.dev_id, 0, TAG, Duration::from_secs(60)),
        "q0 t{TAG} never stuck per debugfs: {:?}",
        busy_tags(s.dev_id)
    );
    let mut reader = two_cpus.then(|| dd(&s.bdev(), 8, 1, Some(1)));
    if let Some(r) = &reader {
        assert!(
            wait_for_d_state(r.id(), Duration::from_secs(20)),
            "the reader on queue 1 never slept in D: {:?}",
            busy_tags(s.dev_id)
        );
    }
    let pid = s.pid();
    let dev = s.dev_id.to_string();
    let t0 = Instant::now();
    let (code, out) = run_bounded(
        &[
            "diagnose",
            "dev",
            &dev,
            "--bundle",
            BUNDLE,
            "--stuck-ms",
            "500",
            "--waiter-ms",
            "500",
        ],
        Duration::from_secs(300),
    );
    println!(
        "diagnose --bundle took {:?}, exit {code:?}:\n{out}",
        t0.elapsed()
    );
    let (rcode, report) = run_bounded(&["report", BUNDLE], Duration::from_secs(120));
    println!("report exit {rcode:?}:\n{report}");

    // Clean up before judging: kill the server (the hung read fails with EIO), delete the
    // device, and let fio exit.
    let _ = fio.kill();
    drop(s);
    let fio_gone = wait_timeout(&mut fio, Duration::from_secs(30)).is_some();
    let reader_pid = reader.as_ref().map(|r| r.id());
    let reader_gone = reader
        .as_mut()
        .is_none_or(|r| wait_timeout(r, Duration::from_secs(30)).is_some());
    let mut stuck = user_tasks_in_d();
    let until = Instant::now() + Duration::from_secs(10);
    while !stuck.is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
        stuck = user_tasks_in_d();
    }

    assert_eq!(code, Some(1), "findings mean exit 1");
    let bytes = std::fs::metadata(BUNDLE).map(|m| m.len()).unwrap_or(0);
    let b = Bundle::open(std::path::Path::new(BUNDLE)).unwrap_or_else(|e| panic!("{e:#}"));
    let m = b.manifest().unwrap_or_else(|e| panic!("{e:#}"));
    print_layout(&m, bytes);
    assert_eq!(
        m.files.len() + 1,
        b.files.len(),
        "the manifest lists every file"
    );
    assert!(!m.kernel.is_empty() && m.command_line.iter().any(|a| a == "--bundle"));

    // The findings: STUCK_IN_SERVER on q0 t1 with the server's pid, in both forms.
    let doc: Value = serde_json::from_slice(b.get("findings.json").unwrap_or_default())
        .unwrap_or_else(|e| panic!("findings.json: {e}"));
    let fs = findings(&doc);
    let f = finding_on(&fs, &["STUCK_IN_SERVER"], 0, TAG)
        .unwrap_or_else(|| panic!("no STUCK_IN_SERVER q0 t{TAG}: {:?}", classes(&fs)));
    assert!(has_pid(f, pid), "server pid {pid} missing: {f}");
    assert!(text(&b, "findings.txt").contains("STUCK_IN_SERVER  dev 0 queue 0 tag 1"));

    // The server's threads: kernel stacks (raw /proc files and the summary) and fdinfo.
    let server_dir = format!("dev0/server-{pid}/");
    let stacks: Vec<_> = b
        .files
        .iter()
        .filter(|f| f.path.starts_with(&server_dir) && f.path.ends_with("/stack"))
        .collect();
    assert!(
        stacks
            .iter()
            .any(|f| String::from_utf8_lossy(&f.data).contains("[<")),
        "no readable server stack under {server_dir}"
    );
    assert!(text(&b, "dev0/stacks.txt").contains(&format!("== server pid {pid} ")));
    let fdinfo: Vec<_> = b
        .files
        .iter()
        .filter(|f| f.path.starts_with(&format!("{server_dir}fdinfo/")))
        .collect();
    assert!(
        fdinfo
            .iter()
            .any(|f| String::from_utf8_lossy(&f.data).contains("SqHead")),
        "no io_uring fdinfo under {server_dir}fdinfo/"
    );
    assert!(text(&b, "dev0/debugfs/hctx0/busy").contains(".tag=1,"));

    // The reader in D state: its stack, raw and in the summary.
    if let Some(rp) = reader_pid {
        let raw = text(&b, &format!("dev0/waiter-{rp}/task/{rp}/stack"));
        assert!(raw.contains("[<"), "reader {rp}: empty stack file");
        assert!(
            text(&b, "dev0/stacks.txt")
                .contains(&format!("== waiter pid {rp} tid {rp} comm dd state D")),
            "reader {rp} missing from stacks.txt"
        );
    }
    let snap: Value = serde_json::from_slice(b.get("dev0/snapshot.json").unwrap_or_default())
        .unwrap_or_else(|e| panic!("snapshot.json: {e}"));
    assert!(
        snap["tagfile"].is_object(),
        "ublk-server's tag file in the snapshot"
    );
    assert!(b.get("dev0/tagstate.bin").is_some_and(|t| !t.is_empty()));

    // The recording: events seen while observing (the probes load on 6.12).
    assert_eq!(
        m.source, "ebpf+snapshots",
        "probes did not run: {:?}",
        m.source_note
    );
    let rec = m
        .recording
        .as_ref()
        .unwrap_or_else(|| panic!("no recording: {:?}", m.not_collected));
    assert!(rec.events > 0, "empty recording");
    let jsonl = text(&b, "recording.jsonl");
    let queue_rq = count_events(&jsonl, |v| v["event"] == "queue_rq");
    let fetch = count_events(&jsonl, |v| {
        v["event"] == "io_cmd" && v["op"].as_str().is_some_and(|o| o.contains("FETCH"))
    });
    println!(
        "recording: {} events over {} ms, {queue_rq} queue_rq, {fetch} FETCH/COMMIT_AND_FETCH",
        rec.events, rec.duration_ms
    );
    // The tracer's own GET_DEV_INFO calls (its snapshot thread) are not the server's.
    let own = count_events(&jsonl, |v| v["comm"] == "snapshot-read");
    assert_eq!(
        own, 0,
        "the recording holds ublk-trace's own control commands"
    );
    assert!(
        queue_rq > 0 && fetch > 0,
        "recording lacks queue_rq or FETCH events"
    );

    // The kernel log tail and doctor.
    assert!(
        !text(&b, "kmsg.txt").trim().is_empty(),
        "empty kernel log tail"
    );
    assert!(text(&b, "doctor.txt").contains("kernel"));

    // `report FILE.tar.gz` prints the finding and summarises the recording.
    assert_eq!(rcode, Some(0));
    assert!(
        report.contains("STUCK_IN_SERVER  dev 0 queue 0 tag 1"),
        "report lacks the finding"
    );
    assert!(report.contains("== recording =="));
    assert!(
        report.contains(&format!("{} events", rec.events)),
        "report lacks the recording summary"
    );

    assert!(fio_gone, "fio did not exit after the server was killed");
    assert!(
        reader_gone,
        "the reader did not exit after the server was killed"
    );
    assert!(stuck.is_empty(), "tasks left in D state: {stuck:?}");
    let _ = std::fs::remove_file(BUNDLE);
}
