//! Guest tests of the driver-state reader (`ublk_trace::driver`, `ublk-trace state`): what it
//! reads from kernel memory must match what the test made the driver do.
//! - A hung tag (`--inject hang`) under a series of reads at known offsets (commits on that
//!   queue delayed, so each read keeps its tag): the hung tag and every delayed one are
//!   OWNED_BY_SRV with the request the test issued (op, sector, bytes) in flight, every other
//!   tag is ACTIVE with a parked command, the owner is the server's queue thread.
//! - An idle 4-queue x 1024 device (`--smp 4` gives 4 queues; fewer CPUs clamp the count):
//!   no tag but WAITING, the CPU time of one read, and `diagnose` finds nothing.
mod diagnose_common;
mod schema_check;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diagnose_common::*;
use ublk_trace::driver::{DeviceState, DriverSnapshot, Reader, RqState, TagView, Target};

const HUNG_TAG: u16 = 5;
const DEPTH: u16 = 64;
/// First block the reads use (4 KiB blocks): clear of the partition-scan reads at 0.
const FIRST_BLOCK: u64 = 1000;

/// Queue 1 when the guest has 2 CPUs (a swapped queue/tag would show), else queue 0.
fn hang_queue() -> (u16, u16) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 { (2, 1) } else { (1, 0) }
}

/// The CPU whose I/O goes to hardware queue `q` (`/sys/block/ublkbN/mq/Q/cpu_list`): 6.12
/// maps CPU n to queue n, 7.3 maps them the other way round.
fn cpu_of_queue(dev_id: u32, q: u16) -> usize {
    let p = format!("/sys/block/ublkb{dev_id}/mq/{q}/cpu_list");
    let list = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {p}: {e}"));
    list.trim()
        .split([',', '-'])
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no CPU in {p}: {list:?}"))
}

/// Read `dev_id` until a read has no tag changing (an idle queue agrees with itself at
/// once; a request completing mid-read is retried), at most `tries` times.
fn settled(reader: &mut Reader, dev_id: u32, tries: usize) -> (DriverSnapshot, DeviceState) {
    let mut last = None;
    for _ in 0..tries {
        let s = reader
            .read(
                Target::Dev(dev_id),
                Instant::now() + Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("driver-state read of dev {dev_id}: {e}"));
        let d = s
            .devices
            .iter()
            .find(|d| d.dev_id == dev_id)
            .cloned()
            .unwrap_or_else(|| panic!("dev {dev_id} not read: {:?}", s.dropped));
        let calm = d.queues.iter().all(|q| q.changing.is_empty());
        last = Some((s, d));
        if calm {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last.expect("at least one read")
}

/// Every commit on the hung queue is delayed this long, so each read holds its tag while
/// the next is issued.
const DELAY_MS: u64 = 60_000;

/// The reads in flight on queue `q`: tag -> block, and the hung one's block.
struct Reads {
    by_tag: BTreeMap<u16, u64>,
    hung_block: u64,
    children: Vec<Child>,
}

/// Issue one 4 KiB direct read at a time on a CPU of hardware queue `q`, each at its
/// own block, and learn its tag from debugfs (`hctxN/busy`, the ground truth). Commits are
/// delayed, so every read keeps its tag: blk-mq (lib/sbitmap.c, not round robin) hands out
/// the lowest free bit from the word the CPU's random hint names, wrapping, so HUNG_TAG is
/// reached within DEPTH reads.
fn issue_until_hung_tag(dev_id: u32, bdev: &str, q: u16) -> Reads {
    let mut r = Reads {
        by_tag: BTreeMap::new(),
        hung_block: 0,
        children: Vec::new(),
    };
    let busy_on_q = || -> Vec<u16> {
        busy_tags(dev_id)
            .into_iter()
            .filter(|(bq, _)| *bq == u64::from(q))
            .map(|(_, t)| t as u16)
            .collect()
    };
    let cpu = cpu_of_queue(dev_id, q);
    for i in 0..u64::from(DEPTH) {
        let block = FIRST_BLOCK + i;
        let before = busy_on_q();
        r.children.push(dd(bdev, block, 1, Some(cpu)));
        let t0 = Instant::now();
        let tag = loop {
            if let Some(t) = busy_on_q().into_iter().find(|t| !before.contains(t)) {
                break t;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "read of block {block} never showed up in hctx{q}/busy"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        r.by_tag.insert(tag, block);
        if tag == HUNG_TAG {
            r.hung_block = block;
            return r;
        }
    }
    panic!(
        "tag {HUNG_TAG} of q{q} never used after {DEPTH} reads: {:?}",
        r.by_tag
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn driver_state_smoke_hung_tag_is_owned_by_the_server_with_its_request() {
    let (queues, q) = hang_queue();
    let inject = format!("hang:q={q},tag={HUNG_TAG}");
    let delay = format!("delay:ms={DELAY_MS},q={q}");
    let s = Server::start(&[
        "null",
        "--queues",
        &queues.to_string(),
        "--depth",
        &DEPTH.to_string(),
        "--inject",
        &inject,
        "--inject",
        &delay,
    ]);
    let dev_id = s.dev_id;
    let mut reader = Reader::open().unwrap_or_else(|e| panic!("reader opens in the guest: {e}"));
    println!("not readable on this kernel: {:?}", reader.not_readable());
    let reads = issue_until_hung_tag(dev_id, &s.bdev(), q);
    let block = reads.hung_block;
    println!(
        "q{q}: tag -> block {:?}; tag {HUNG_TAG} hangs on block {block}",
        reads.by_tag
    );
    let (snap, d) = settled(&mut reader, dev_id, 10);
    println!(
        "{}",
        ublk_trace::cmd::state::render_text(&snap, false).trim_end()
    );
    let qtids: Vec<u32> = (0..queues)
        .map(|n| {
            s.thread_tid(&format!("ublk-q{n}"))
                .unwrap_or_else(|| panic!("no ublk-q{n} thread"))
        })
        .collect();
    let qtid = |n: u16| qtids[usize::from(n)];
    let srv_pid = s.pid();
    let checks = || {
        assert!(
            snap.flags_table.in_table,
            "kernel outside the flag table: {:?}",
            snap.flags_table
        );
        assert_eq!((d.nr_hw_queues, d.queue_depth), (queues, DEPTH));
        assert_eq!(d.state_name, "LIVE");
        assert!(d.has_disk);
        if let Some(n) = d.nr_io_ready {
            assert_eq!(
                n,
                u32::from(queues) * u32::from(DEPTH),
                "device-wide ios ready"
            );
        }
        assert_eq!(d.ublksrv_pid, srv_pid as i32);
        for qs in &d.queues {
            assert!(
                qs.changing.is_empty(),
                "q{} changing after retries: {:?}",
                qs.q_id,
                qs.changing
            );
            assert_eq!(
                qs.tags.len(),
                usize::from(DEPTH),
                "every tag read on q{}",
                qs.q_id
            );
            if let Some(n) = qs.nr_io_ready {
                assert_eq!(n, u32::from(DEPTH), "q{} ios ready", qs.q_id);
            }
            let tid = qtid(qs.q_id) as i32;
            // The owner: the queue's daemon (<= 6.15) or each io's task (6.16+).
            if let Some(o) = &qs.owner {
                assert_eq!((o.tid, o.pid), (tid, srv_pid as i32), "q{} owner", qs.q_id);
            }
            for t in &qs.tags {
                assert!(
                    qs.owner.is_some() || t.task.as_ref().is_some_and(|k| k.tid == tid),
                    "q{} tag {} has no owner task (expected tid {tid}): {t:?}",
                    qs.q_id,
                    t.tag
                );
                if qs.q_id == q
                    && let Some(&b) = reads.by_tag.get(&t.tag)
                {
                    // A read the test issued, held by the server (delayed or hung).
                    assert_eq!(t.view, TagView::InServer, "{t:?}");
                    assert!(t.flags.has("OWNED_BY_SRV") && !t.cmd_parked, "{t:?}");
                    let r = t
                        .request
                        .as_ref()
                        .unwrap_or_else(|| panic!("no request: {t:?}"));
                    assert_eq!(
                        (r.op.as_str(), r.sector, r.bytes, r.state),
                        ("READ", b * 8, 4096, RqState::InFlight),
                        "q{q} {t:?}"
                    );
                    continue;
                }
                assert_eq!(t.view, TagView::Waiting, "q{} {t:?}", qs.q_id);
                assert_eq!(t.flags.names, ["ACTIVE"], "q{} {t:?}", qs.q_id);
                assert!(t.cmd_parked && t.request.is_none(), "q{} {t:?}", qs.q_id);
            }
        }
        let hq = &d.queues[usize::from(q)];
        let t = &hq.tags[usize::from(HUNG_TAG)];
        assert_eq!(t.view, TagView::InServer, "{t:?}");
        assert!(
            t.flags.has("OWNED_BY_SRV") && !t.flags.has("ACTIVE"),
            "{t:?}"
        );
        assert!(!t.cmd_parked);
        let r = t
            .request
            .as_ref()
            .unwrap_or_else(|| panic!("hung tag has no request: {t:?}"));
        assert_eq!(
            (r.op.as_str(), r.sector, r.bytes, r.state),
            ("READ", block * 8, 4096, RqState::InFlight),
            "{t:?}"
        );
        if let Some(start) = r.start_time_ns.filter(|&n| n > 0) {
            assert!(
                start <= snap.taken_ns,
                "request start {start} after the read {}",
                snap.taken_ns
            );
        }
    };
    // The CLI prints the same.
    let out = Command::new(bin("ublk-trace"))
        .args(["state", "dev", &dev_id.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("run ublk-trace state");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // And `--json`, a versioned document with a committed schema.
    let json_out = Command::new(bin("ublk-trace"))
        .args(["state", "dev", &dev_id.to_string(), "--json"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run ublk-trace state --json");
    // The reads wait for the server; killing it fails them with EIO.
    drop(s);
    for mut c in reads.children {
        let _ = c.kill();
        let _ = wait_timeout(&mut c, Duration::from_secs(30));
    }
    checks();
    assert!(out.status.success(), "ublk-trace state failed: {text}");
    let line = format!("tag {HUNG_TAG:>4} IN_SERVER");
    assert!(text.contains(&line), "no '{line}' in:\n{text}");
    assert!(
        text.contains(&format!("READ 4096 B @ sector {}", block * 8)),
        "{text}"
    );
    assert_state_json_is_valid(&json_out.stdout, q);
    assert_recovered(dev_id, Duration::from_secs(30));
}

/// `state --json` of the hung device: kind, version, docs/schema/state.schema.json, and the
/// hung tag IN_SERVER in it (the schema alone would pass an empty device list).
fn assert_state_json_is_valid(stdout: &[u8], q: u16) {
    let doc: serde_json::Value = serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "state --json is not JSON ({e}): {}",
            String::from_utf8_lossy(stdout)
        )
    });
    assert_eq!(doc["kind"], "ublk-trace.state", "{doc}");
    assert_eq!(doc["version"], 1, "{doc}");
    // Compiled in: the guest has the test binary, not the repository.
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/schema/state.schema.json"))
            .expect("docs/schema/state.schema.json is JSON");
    let v = schema_check::violations(&schema, &doc);
    assert!(v.is_empty(), "state --json: {v:#?}\n{doc:#}");
    let hung = doc["devices"][0]["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|x| x["q_id"] == q))
        .and_then(|x| x["tags"].as_array())
        .and_then(|ts| ts.iter().find(|t| t["tag"] == HUNG_TAG))
        .cloned();
    assert_eq!(
        hung.as_ref().map(|t| t["view"].clone()),
        Some(serde_json::json!("IN_SERVER")),
        "tag {HUNG_TAG} of q{q} in state --json: {hung:?}"
    );
}

/// User + system CPU time of this process, µs.
fn cpu_us() -> u64 {
    // SAFETY: getrusage fills a zeroed rusage we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage; RUSAGE_SELF covers the reader's helper thread too.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

#[test]
#[ignore = "needs ublk guest"]
fn driver_state_smoke_idle_4x1024_device_reads_cheaply() {
    let s = Server::start(&["null", "--queues", "4", "--depth", "1024"]);
    let dev_id = s.dev_id;
    let mut reader = Reader::open().unwrap_or_else(|e| panic!("reader opens in the guest: {e}"));
    // The partition scan's reads are done once the device is idle; settle first.
    std::thread::sleep(Duration::from_secs(1));
    let (_, d) = settled(&mut reader, dev_id, 10);
    const ROUNDS: u64 = 10;
    let (c0, t0) = (cpu_us(), Instant::now());
    let mut wall_us = Vec::new();
    for _ in 0..ROUNDS {
        let snap = reader
            .read(
                Target::Dev(dev_id),
                Instant::now() + Duration::from_secs(10),
            )
            .expect("read");
        wall_us.push(snap.took_us);
    }
    let (cpu, wall) = ((cpu_us() - c0) / ROUNDS, t0.elapsed() / ROUNDS as u32);
    let tick_pct = cpu as f64 / 200_000.0 * 100.0;
    println!(
        "DRIVER-READ {} queues x {} tags: {cpu} us CPU (user+sys) and {wall:?} wall per read \
         ({tick_pct:.1} % of one CPU at a 200 ms tick); walk times {wall_us:?} us",
        d.nr_hw_queues, d.queue_depth
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        usize::from(d.nr_hw_queues),
        cpus.min(4),
        "queues clamped to the CPUs"
    );
    assert_eq!(d.queue_depth, 1024);
    for q in &d.queues {
        assert!(q.changing.is_empty(), "q{} {:?}", q.q_id, q.changing);
        assert_eq!(q.tags.len(), 1024);
        let busy: Vec<_> = q.busy().collect();
        assert!(
            busy.is_empty(),
            "q{} non-idle tags on an idle device: {busy:?}",
            q.q_id
        );
    }
    // The whole tool on it: an idle device, every tag known, nothing to find.
    let (code, doc, _) = diagnose(dev_id, &["--for", "1"]);
    assert_eq!(doc["driver"]["live"], true, "{doc}");
    assert!(
        findings(&doc).is_empty(),
        "findings on an idle device: {doc}"
    );
    assert_eq!(code, Some(0), "{doc}");
    drop(s);
    // Guest tests are debug builds under TCG: ~30x slower than a native release build (the
    // native target is 10 ms, 5 % of a CPU at a 200 ms tick). This bound catches a reader that
    // reads per tag (thousands of preads), not the target; `state --repeat` measures release.
    assert!(cpu < 500_000, "one read cost {cpu} us of CPU");
    assert_recovered(dev_id, Duration::from_secs(30));
}

#[test]
#[ignore = "needs ublk guest"]
fn driver_state_smoke_doctor_says_the_reader_works() {
    let s = Server::start(&["null", "--queues", "1", "--depth", "8"]);
    let out = Command::new(bin("ublk-trace"))
        .args(["doctor", "--json"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run ublk-trace doctor");
    drop(s);
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("doctor --json is JSON");
    let check = doc["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "driver_state"))
        .cloned()
        .unwrap_or_else(|| panic!("no driver_state check: {doc}"));
    println!("{check}");
    assert_eq!(check["status"], "ok", "{check}");
    let detail = check["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("device(s) read"), "{check}");
}

/// Devices added and removed (server SIGKILLed, then `del`) while the reader reads every
/// device in a loop: each read ends cleanly, a device caught mid-removal is dropped or
/// simply absent, and a live one reads whole.
#[test]
#[ignore = "needs ublk guest"]
fn driver_state_smoke_devices_removed_while_read_end_cleanly() {
    let mut reader = Reader::open().unwrap_or_else(|e| panic!("reader opens in the guest: {e}"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 6 {
                let s = Server::start(&["null", "--queues", "2", "--depth", "128"]);
                std::thread::sleep(Duration::from_millis(300));
                drop(s);
                n += 1;
            }
            n
        })
    };
    let (mut reads, mut devices, mut dropped) = (0, 0, Vec::new());
    let t0 = Instant::now();
    while !churn.is_finished() && t0.elapsed() < Duration::from_secs(120) {
        let s = reader
            .read(Target::All, Instant::now() + Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("read {reads} failed: {e}"));
        for d in &s.devices {
            assert_eq!(
                d.queues.len(),
                usize::from(d.nr_hw_queues),
                "dev {}",
                d.dev_id
            );
            for q in &d.queues {
                assert_eq!(q.tags.len() + q.changing.len(), usize::from(d.queue_depth));
            }
        }
        reads += 1;
        devices += s.devices.len();
        dropped.extend(s.dropped);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let cycles = churn.join().expect("churn thread");
    println!(
        "{cycles} add/remove cycles, {reads} reads, {devices} devices read, dropped: {dropped:?}"
    );
    assert!(cycles >= 3 && reads > 0 && devices > 0);
}
