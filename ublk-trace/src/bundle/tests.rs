//! Bundle assembly from synthetic snapshots, and the written archive read back.
use super::*;
use crate::snapshot::fdinfo::RingInfo;
use crate::snapshot::{ServerProcess, SourceError, WaitKind};

fn task(pid: u32, tid: u32, comm: &str, state: char, wchan: &str, stack: &[&str]) -> TaskInfo {
    TaskInfo {
        pid,
        tid,
        comm: comm.into(),
        state,
        wchan: wchan.into(),
        stack: stack.iter().map(|s| s.to_string()).collect(),
        ctxt_switches: Some(3),
        wait: None,
    }
}

/// Device 0: server 170 (two threads), one reader in D, GET_DEV_INFO timed out, no tag file.
fn hung_snapshot() -> DeviceSnapshot {
    let mut waiter = task(
        202,
        202,
        "dd",
        'D',
        "submit_bio_wait",
        &["submit_bio_wait", "__blkdev_direct_IO_simple"],
    );
    waiter.wait = Some(WaitKind::RequestInFlight);
    DeviceSnapshot {
        dev_id: 0,
        taken_ns: 5_000_000_000,
        char_dev_present: true,
        block_dev_present: true,
        proc_scanned: true,
        servers: vec![ServerProcess {
            pid: 170,
            comm: "ublk-server".into(),
            threads: vec![
                task(170, 170, "ublk-server", 'S', "do_wait", &["do_wait"]),
                task(
                    170,
                    173,
                    "ublk-q0",
                    'S',
                    "io_cqring_wait",
                    &["io_cqring_wait", "__do_sys_io_uring_enter"],
                ),
            ],
            rings: vec![RingInfo {
                fd: 5,
                ..Default::default()
            }],
        }],
        waiters: vec![waiter],
        errors: vec![SourceError {
            source: "GET_DEV_INFO".into(),
            detail: "timed out after 1000 ms".into(),
            timed_out: true,
        }],
        ..Default::default()
    }
}

fn raw(source: &str, dest: &str, result: Result<&[u8], &str>) -> RawRead {
    RawRead {
        source: source.into(),
        dest: dest.into(),
        result: result.map(<[u8]>::to_vec).map_err(str::to_string),
    }
}

fn parts() -> Parts {
    Parts {
        meta: Meta {
            kernel: "6.12.48+deb13-amd64".into(),
            created_unix_ms: 1_764_087_300_000,
            command_line: vec![
                "ublk-trace".into(),
                "diagnose".into(),
                "dev".into(),
                "0".into(),
            ],
            devices: vec![0],
            observed_ms: 2000,
            source: "ebpf+snapshots".into(),
            source_note: None,
        },
        findings_text: "STUCK_IN_SERVER  dev 0 queue 0 tag 1\n".into(),
        findings_json: "{\"findings\":[]}".into(),
        doctor: Some(Ok(("kernel ok\n".into(), "{}".into()))),
        snapshots: vec![hung_snapshot()],
        raw: vec![
            raw(
                "/proc/170/task/173/stack",
                "dev0/server-170/task/173/stack",
                Ok(b"[<0>] io_cqring_wait+0x1/0x2\n"),
            ),
            raw(
                "/proc/170/fdinfo/5",
                "dev0/server-170/fdinfo/5",
                Ok(b"SqMask:\t0x3f\n"),
            ),
            raw(
                "/proc/202/task/202/stack",
                "dev0/waiter-202/task/202/stack",
                Err("Permission denied: run ublk-trace as root"),
            ),
        ],
        raw_missing: vec![Missing {
            what: "blk-mq debugfs: /sys/kernel/debug/block/ublkb0/hctx0/busy and the rest".into(),
            why: "timed out after 3000 ms".into(),
        }],
        kmsg: Some(Ok(b"[   19.725290] <3> I/O error, dev ublkb0\n".to_vec())),
        recording: Some(Err("eBPF probes still loading after 60s".into())),
    }
}

fn paths(files: &[TarEntry]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn assembly_lays_out_every_part_and_lists_it() {
    let (m, files) = assemble(parts());
    let p = paths(&files);
    for want in [
        "findings.txt",
        "findings.json",
        "doctor.txt",
        "doctor.json",
        "recording.txt",
        "kmsg.txt",
        "dev0/snapshot.json",
        "dev0/stacks.txt",
        "dev0/server-170/task/173/stack",
        "dev0/server-170/fdinfo/5",
    ] {
        assert!(p.contains(&want), "{want} missing from {p:?}");
    }
    assert!(
        !p.contains(&"dev0/waiter-202/task/202/stack"),
        "an unreadable file is not a file"
    );
    assert_eq!(m.files.len(), files.len());
    assert_eq!(m.kind, MANIFEST_KIND);
    assert_eq!(m.kernel, "6.12.48+deb13-amd64");
    assert_eq!(m.created_utc, "2025-11-25T16:15:00Z");
    assert_eq!(m.recording, None);
    let snap: DeviceSnapshot = serde_json::from_slice(
        files
            .iter()
            .find(|f| f.path == "dev0/snapshot.json")
            .map(|f| f.data.as_slice())
            .unwrap_or_default(),
    )
    .expect("snapshot.json parses back");
    assert_eq!(snap, hung_snapshot());
}

#[test]
fn manifest_says_what_could_not_be_collected_and_why() {
    let (m, _) = assemble(parts());
    let find = |what: &str| m.not_collected.iter().find(|x| x.what.contains(what));
    assert!(
        find("recording.jsonl").is_some_and(|x| x.why.contains("still loading")),
        "{:?}",
        m.not_collected
    );
    assert!(find("GET_DEV_INFO").is_some_and(|x| x.why.contains("timed out")));
    assert!(find("/proc/202/task/202/stack").is_some_and(|x| x.why.contains("root")));
    assert!(find("tagstate.bin").is_some_and(|x| x.why.contains("ublk-server")));
    assert!(find("blk-mq debugfs").is_some());
}

#[test]
fn stacks_prefer_the_raw_file_and_fall_back_to_the_snapshot() {
    let (_, files) = assemble(parts());
    let stacks = files
        .iter()
        .find(|f| f.path == "dev0/stacks.txt")
        .map(|f| String::from_utf8_lossy(&f.data).into_owned())
        .unwrap_or_default();
    assert!(
        stacks.contains("== server pid 170 tid 173 comm ublk-q0 state S wchan io_cqring_wait"),
        "{stacks}"
    );
    assert!(stacks.contains("[<0>] io_cqring_wait+0x1/0x2"), "{stacks}");
    // The waiter's raw stack was unreadable: the snapshot's frames stand in.
    assert!(
        stacks.contains("== waiter pid 202 tid 202 comm dd state D wchan submit_bio_wait (waits for its request to complete)"),
        "{stacks}"
    );
    assert!(stacks.contains("  __blkdev_direct_IO_simple\n"), "{stacks}");
}

#[test]
fn a_written_bundle_opens_with_its_files_and_manifest() {
    let mut p = parts();
    p.recording = Some(Ok(Recording {
        jsonl: b"{\"schema\":\"ublk-trace-record\"}\n".to_vec(),
        summary: RecordingSummary {
            events: 0,
            duration_ms: 2000,
            ..Default::default()
        },
    }));
    let (m, files) = assemble(p);
    let root = root_dir(m.created_unix_ms);
    assert_eq!(root, "ublk-bundle-20251125T161500Z");
    let gz = encode(&root, &m, &files).expect("encode");
    assert_eq!(gz[..2], GZIP_MAGIC);
    let dir = std::env::temp_dir().join(format!("ublk-trace-bundle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dest = dir.join("b.tar.gz");
    Pending::create(&dest)
        .and_then(|w| w.commit(&gz))
        .expect("write");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let opened = Bundle::open(&dest);
    let gzip = is_gzip(&dest);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(leftovers.len(), 1, "temp file left behind: {leftovers:?}");
    assert!(gzip.unwrap_or(false));
    let b = opened.expect("open");
    assert_eq!(b.root, root);
    assert_eq!(b.manifest().expect("manifest"), m);
    assert_eq!(
        b.get("findings.txt"),
        Some(&b"STUCK_IN_SERVER  dev 0 queue 0 tag 1\n"[..])
    );
    assert!(b.get("recording.jsonl").is_some());
    assert_eq!(b.files.len(), files.len() + 1, "manifest + files");
}

#[test]
fn an_unwritable_destination_fails_first_and_names_the_directory() {
    let e = Pending::create(Path::new("/nonexistent-dir/ublk/b.tar.gz"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("/nonexistent-dir/ublk"), "{e}");
    assert!(e.contains("writable directory"), "{e}");
}

#[test]
fn an_abandoned_bundle_leaves_no_partial_file() {
    let dir = std::env::temp_dir().join(format!("ublk-trace-bundle-drop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dest = dir.join("b.tar.gz");
    drop(Pending::create(&dest).expect("create"));
    let n = std::fs::read_dir(&dir).map(|rd| rd.count()).unwrap_or(99);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(n, 0);
}

#[test]
fn utc_text_of_known_instants() {
    assert_eq!(utc_text(0), "1970-01-01T00:00:00Z");
    assert_eq!(utc_text(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(utc_text(1_764_087_300), "2025-11-25T16:15:00Z");
}

#[test]
fn a_gzip_that_is_not_a_bundle_is_refused_with_the_fix() {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"just text, not tar").expect("gzip");
    let bytes = gz.finish().expect("gzip");
    let path = std::env::temp_dir().join(format!("ublk-trace-notbundle-{}.gz", std::process::id()));
    std::fs::write(&path, bytes).expect("write");
    let e = Bundle::open(&path).err().map(|e| format!("{e:#}"));
    std::fs::remove_file(&path).ok();
    let e = e.unwrap_or_default();
    assert!(e.contains("not a ublk-trace bundle"), "{e}");
    assert!(e.contains("--bundle"), "{e}");
}

#[test]
fn report_opens_a_bundle_and_summarises_its_recording() {
    use crate::model::testutil::{delivered, fetch, queue_rq, setup};
    const S: u64 = 1_000_000_000;
    let mut events = setup(0, 1, 4, S / 2);
    events.extend(fetch(0, 0, 1, S, 50));
    events.push(queue_rq(0, 0, 1, 2 * S, "READ", 4096));
    events.push(delivered(0, 0, 1, 2 * S + 1000, 50));
    let mut jsonl =
        serde_json::to_vec(&crate::record::RecordHeader::new("6.12-test".into())).expect("header");
    jsonl.push(b'\n');
    for e in &events {
        serde_json::to_writer(&mut jsonl, e).expect("event");
        jsonl.push(b'\n');
    }
    let mut p = parts();
    p.recording = Some(Ok(Recording {
        jsonl,
        summary: RecordingSummary {
            events: events.len() as u64,
            ..Default::default()
        },
    }));
    let (m, files) = assemble(p);
    let gz = encode(&root_dir(m.created_unix_ms), &m, &files).expect("encode");
    let path =
        std::env::temp_dir().join(format!("ublk-trace-report-{}.tar.gz", std::process::id()));
    std::fs::write(&path, gz).expect("write");
    let th = crate::diagnose::Thresholds::default();
    let text = crate::cmd::report::report_file(&path, false, &th);
    let json = crate::cmd::report::report_file(&path, true, &th);
    std::fs::remove_file(&path).ok();
    let text = text.expect("text report");
    assert!(text.contains("kernel 6.12.48+deb13-amd64"), "{text}");
    assert!(!text.contains("not collected: recording.jsonl"), "{text}");
    assert!(
        text.contains("== findings ==\nSTUCK_IN_SERVER  dev 0 queue 0 tag 1\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("(kernel 6.12-test): {} events", events.len())),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&json.expect("json report")).expect("JSON");
    assert_eq!(v["kind"], "ublk-trace.bundle-report");
    assert_eq!(v["manifest"]["kernel"], "6.12.48+deb13-amd64");
    assert_eq!(v["recording"]["events"], events.len() as u64);
}
