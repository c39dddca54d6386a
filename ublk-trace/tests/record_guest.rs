//! Guest test: a recording of `ublk-server run null --queues 2 --depth 64` serving N direct
//! reads by dd holds exactly queues×depth accepted FETCH_REQs, N queue_rq and N accepted
//! commits and N block completions for dd's requests, the control commands in order, and no
//! dropped events. The partition-scan reads at START (DESIGN "Corrections") are excluded by
//! taking only requests queued by dd's pid and commits/completions after dd's first request.

mod diagnose_common;
mod guest_util;
mod schema_check;

use std::process::{Command, Stdio};
use std::time::Duration;

use guest_util::{bin, line_channel, signal, wait_line, wait_timeout};
use ublk_trace::event::{BlockStage, EIOCBQUEUED_RET, EventKind, TraceEvent};

const N: usize = 100;
const QUEUES: usize = 2;
const DEPTH: usize = 64;
const EAGAIN: i32 = -11;

fn accepted<'a>(evs: &'a [TraceEvent], want: &'a str) -> impl Iterator<Item = &'a TraceEvent> + 'a {
    evs.iter().filter(move |e| {
        matches!(&e.kind, EventKind::IoCmdDone { op, ret, cancel: false, .. }
            if op == want && *ret == EIOCBQUEUED_RET)
    })
}

/// What one recording around `n` direct 4 KiB reads by dd held.
struct Recorded {
    header: ublk_trace::record::RecordHeader,
    evs: Vec<TraceEvent>,
    dd_pid: u32,
    bdev: String,
}

/// `ublk-trace record <record_args>` while `ublk-server run null` serves `n` reads by dd; the
/// recorder and the server stop cleanly, with 0 dropped events.
fn record_around_dd(record_args: &[&str], n: usize) -> Recorded {
    record_around_dd_on(record_args, &[], n)
}

/// As [`record_around_dd`], the server run with `server_args` added.
fn record_around_dd_on(record_args: &[&str], server_args: &[&str], n: usize) -> Recorded {
    let out = std::env::temp_dir().join(format!("ublk-trace-rec-{}.jsonl", std::process::id()));
    let mut rec = Command::new(bin("ublk-trace"))
        .args(["record"])
        .args(record_args)
        .arg("-o")
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ublk-trace record");
    let rec_err = line_channel(rec.stderr.take().expect("piped"));
    if let Err(seen) = wait_line(&rec_err, "recording", Duration::from_secs(180)) {
        let _ = rec.kill();
        panic!("recorder never started: {seen:#?}");
    }
    let mut srv = Command::new(bin("ublk-server"))
        .args([
            "run",
            "null",
            "--queues",
            &QUEUES.to_string(),
            "--depth",
            &DEPTH.to_string(),
        ])
        .args(server_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ublk-server");
    let srv_out = line_channel(srv.stdout.take().expect("piped"));
    let ready = match wait_line(&srv_out, "ready", Duration::from_secs(60)) {
        Ok(l) => l,
        Err(seen) => {
            let _ = srv.kill();
            let _ = rec.kill();
            panic!("server not ready: {seen:#?}");
        }
    };
    let bdev = ready
        .rsplit(' ')
        .next()
        .expect("ready line ends with the block device")
        .to_string();
    // Let the partition scan finish before dd starts (it is excluded by pid anyway).
    std::thread::sleep(Duration::from_secs(1));
    let mut dd = Command::new("dd")
        .args([
            &format!("if={bdev}"),
            "of=/dev/null",
            "bs=4k",
            &format!("count={n}"),
            "iflag=direct",
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dd");
    let dd_pid = dd.id();
    let st = wait_timeout(&mut dd, Duration::from_secs(120)).expect("dd finishes");
    assert!(st.success(), "dd {st:?}");
    signal(&srv, libc::SIGINT);
    let st = wait_timeout(&mut srv, Duration::from_secs(60)).expect("server exits on SIGINT");
    assert!(st.success(), "server {st:?}");
    std::thread::sleep(Duration::from_millis(500));
    signal(&rec, libc::SIGINT);
    let st = wait_timeout(&mut rec, Duration::from_secs(60)).expect("recorder exits on SIGINT");
    assert!(st.success(), "recorder {st:?}");
    let summary = wait_line(&rec_err, "recorded", Duration::from_secs(5)).expect("summary line");
    assert!(summary.contains(" 0 dropped"), "{summary}");

    let (header, evs) = ublk_trace::record::read_jsonl(&out).expect("recording parses");
    assert_lines_match_schemas(&std::fs::read_to_string(&out).expect("recording readable"));
    let _ = std::fs::remove_file(&out);
    Recorded {
        header,
        evs,
        dd_pid,
        bdev,
    }
}

/// The recording as written: its header line against docs/schema/record-header.schema.json and
/// every event line against docs/schema/record-event.schema.json (compiled in: the guest has the
/// test binary, not the repository).
fn assert_lines_match_schemas(text: &str) {
    let parse = |s: &str| -> serde_json::Value { serde_json::from_str(s).expect("schema is JSON") };
    let header_schema = parse(include_str!("../../docs/schema/record-header.schema.json"));
    let event_schema = parse(include_str!("../../docs/schema/record-event.schema.json"));
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: serde_json::Value =
        serde_json::from_str(lines.next().unwrap_or_default()).expect("header line is JSON");
    let bad = schema_check::violations(&header_schema, &header);
    assert!(bad.is_empty(), "header: {bad:?}\n{header}");
    let mut n = 0;
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("event line is JSON");
        let bad = schema_check::violations(&event_schema, &v);
        assert!(bad.is_empty(), "event line: {bad:?}\n{l}");
        n += 1;
    }
    assert!(n > 0, "a recording of dd's reads holds events");
}

#[test]
#[ignore = "needs ublk guest"]
fn recording_counts_fetches_requests_commits_and_ctrl_order() {
    let Recorded {
        header,
        evs,
        dd_pid,
        bdev,
    } = record_around_dd(&[], N);
    for p in header.probes.iter().filter(|p| p.required) {
        assert!(p.attached, "{p:?}");
    }
    assert!(!evs.iter().any(|e| matches!(e.kind, EventKind::Lost { .. })));

    assert_eq!(accepted(&evs, "FETCH_REQ").count(), QUEUES * DEPTH);

    let dd_rqs: Vec<&TraceEvent> = evs
        .iter()
        .filter(|e| e.pid == dd_pid && matches!(e.kind, EventKind::QueueRq { .. }))
        .collect();
    assert_eq!(dd_rqs.len(), N, "queue_rq from dd");
    // By default the request start is the block_rq_issue tracepoint, and says so.
    assert!(
        dd_rqs.iter().all(|e| matches!(&e.kind,
            EventKind::QueueRq { source: Some(s), .. } if s == "tracepoint:block_rq_issue")),
        "{:?}",
        dd_rqs.first()
    );
    let dev_id: u32 = bdev
        .trim_start_matches("/dev/ublkb")
        .parse()
        .expect("ready line names /dev/ublkbN");
    // The device id is read through rq->q->tag_set->driver_data (BTF offsets).
    assert!(
        dd_rqs
            .iter()
            .all(|e| e.kind.tag_key().is_some_and(|(d, _, _)| d == dev_id)),
        "dev_id of dd's requests"
    );
    let t0 = dd_rqs.iter().map(|e| e.ts_ns).min().expect("N > 0");
    let commits: Vec<&TraceEvent> = accepted(&evs, "COMMIT_AND_FETCH_REQ")
        .filter(|e| e.ts_ns > t0)
        .collect();
    assert_eq!(commits.len(), N, "commits after dd's first request");
    let completes = evs
        .iter()
        .filter(|e| e.ts_ns > t0)
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Block {
                    stage: BlockStage::Complete,
                    error: 0,
                    ..
                }
            )
        })
        .count();
    assert_eq!(completes, N, "block completions after dd's first request");
    // Every commit carries the request's byte count (null target: the full 4 KiB).
    let full = evs
        .iter()
        .filter(|e| e.ts_ns > t0)
        .filter(|e| {
            matches!(&e.kind, EventKind::IoCmd { op, result: 4096, .. } if op == "COMMIT_AND_FETCH_REQ")
        })
        .count();
    assert_eq!(full, N, "commits with result 4096");

    // Delivery to the server thread: per request where the kernel has ublk_dispatch_req
    // (6.15+), per queue batch (tag u16::MAX) from ublk_rq_task_work_cb (≤ 6.14).
    let attached = |prefix: &str| {
        header
            .probes
            .iter()
            .any(|p| p.program.starts_with(prefix) && p.attached)
    };
    let delivered: Vec<(u16, u16)> = evs
        .iter()
        .filter(|e| e.ts_ns > t0)
        .filter_map(|e| match e.kind {
            EventKind::Delivered {
                dev_id: d,
                q_id,
                tag,
            } if d == dev_id => Some((q_id, tag)),
            _ => None,
        })
        .collect();
    if attached("dispatch_req") {
        assert_eq!(delivered.len(), N, "per-request deliveries");
        assert!(delivered.iter().all(|(_, t)| *t != u16::MAX));
    } else if attached("rq_task_work") {
        assert!(
            !delivered.is_empty() && delivered.len() <= N,
            "{}",
            delivered.len()
        );
        assert!(delivered.iter().all(|(_, t)| *t == u16::MAX));
    } else {
        panic!("no delivery probe attached: {:#?}", header.probes);
    }

    let ctrl: Vec<&str> = evs
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::CtrlDone { op, result, .. } if *result != EAGAIN => Some(op.as_str()),
            _ => None,
        })
        .collect();
    let want = ["ADD_DEV", "SET_PARAMS", "START_DEV", "STOP_DEV", "DEL_DEV"];
    let mut it = ctrl.iter();
    for w in want {
        assert!(
            it.any(|op| *op == w),
            "{w} missing or out of order in {ctrl:?}"
        );
    }
}

/// `record --probe ublk_queue_rq`: the design's kprobe on the driver's own entry point is
/// attached under its kernel name, and every request start of dd comes from it.
#[test]
#[ignore = "needs ublk guest"]
fn recording_with_probe_ublk_queue_rq_names_its_source() {
    const READS: usize = 20;
    let r = record_around_dd(&["--probe", "ublk_queue_rq"], READS);
    let kprobe = r
        .header
        .probes
        .iter()
        .find(|p| p.program == "queue_rq")
        .unwrap_or_else(|| panic!("no queue_rq program in {:#?}", r.header.probes));
    assert!(kprobe.attached, "{kprobe:?}");
    assert_eq!(kprobe.target, "ublk_queue_rq", "{kprobe:?}");
    let dd_rqs: Vec<&TraceEvent> = r
        .evs
        .iter()
        .filter(|e| e.pid == r.dd_pid && matches!(e.kind, EventKind::QueueRq { .. }))
        .collect();
    assert_eq!(dd_rqs.len(), READS, "one request start per read of dd");
    assert!(
        dd_rqs.iter().all(|e| matches!(&e.kind,
            EventKind::QueueRq { source: Some(s), .. } if s == "kprobe:ublk_queue_rq(s)")),
        "{:?}",
        dd_rqs.first()
    );
    assert!(r.bdev.starts_with("/dev/ublkb"));
}

/// BATCH_IO (7.0+): the batch commands are in the recording under the kernel's names, with
/// their element counts: one PREP_IO_CMDS per queue readying every tag, the multishot
/// FETCH_IO_CMDS armed, and COMMIT_IO_CMDS taken whole for every request dd read.
#[test]
#[ignore = "needs ublk guest"]
fn recording_smoke_batch_io_names_prep_fetch_and_commit_io_cmds() {
    if !diagnose_common::kernel_has("BATCH_IO") {
        diagnose_common::skip(
            "recording_smoke_batch_io_names_prep_fetch_and_commit_io_cmds",
            "this kernel has no UBLK_F_BATCH_IO (7.0+)",
        );
        return;
    }
    let r = record_around_dd_on(&[], &["--batch-io"], N);
    let batch: Vec<(&str, u16, u16, i32, bool)> = r
        .evs
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::BatchCmd {
                op,
                q_id,
                nr_elem,
                elem_bytes,
                ret,
                refused,
                cancel: false,
                ..
            } => {
                let whole = i64::from(*ret) == i64::from(*nr_elem) * i64::from(*elem_bytes);
                Some((
                    op.as_str(),
                    *q_id,
                    *nr_elem,
                    *ret,
                    whole && refused.is_none(),
                ))
            }
            _ => None,
        })
        .collect();
    let of = |name: &'static str| batch.iter().filter(move |b| b.0 == name);
    let preps: Vec<_> = of("PREP_IO_CMDS").collect();
    assert_eq!(preps.len(), QUEUES, "{preps:?}");
    assert!(
        preps.iter().all(|p| usize::from(p.2) == DEPTH && p.3 == 0),
        "{preps:?}"
    );
    let armed = of("FETCH_IO_CMDS")
        .filter(|f| f.3 == EIOCBQUEUED_RET)
        .count();
    assert!(armed >= QUEUES, "FETCH_IO_CMDS armed {armed} times");
    let commits: Vec<_> = of("COMMIT_IO_CMDS").collect();
    assert!(
        commits.iter().all(|c| c.4),
        "a commit not taken whole: {commits:?}"
    );
    let elems: usize = commits.iter().map(|c| usize::from(c.2)).sum();
    assert!(elems >= N, "{elems} elements committed for {N} reads");
    println!(
        "batch commands: {} PREP, {armed} FETCH armed, {} COMMIT of {elems} elements",
        preps.len(),
        commits.len()
    );
}
