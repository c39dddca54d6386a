//! Guest test: the tracer attaches and detaches again and again under load without harming
//! the guest. Each cycle runs `watch --headless` until its probes are live, stops it with
//! SIGINT, then a short `record`. Every attach and detach patches kernel text (ftrace call
//! sites for the kprobes, static keys for the tracepoints); under QEMU 7.2's multi-threaded
//! TCG that oopsed the guest about once in 20 attach/detach (a call to address 0 from
//! io_uring_cmd). The guest runs with oops=panic, so an oops ends the suite; WARNINGs and
//! BUGs that do not panic are read from the kernel log. I/O must keep completing throughout.
//!
//! Cycles: `UBLK_TEST_ATTACH_CYCLES` (default 10, i.e. 20 attach/detach); the stress run for
//! the closing figures used 25 (50 attach/detach) on 6.12 and 7.3.

mod diagnose_common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diagnose_common::{Server, bin, completed_ios, wait_timeout};
use serde_json::Value;

fn cycles() -> u32 {
    std::env::var("UBLK_TEST_ATTACH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// Kernel log lines that say the kernel hurt itself (read without blocking from /dev/kmsg).
fn kernel_complaints() -> Vec<String> {
    let out = Command::new("dmesg").output().expect("run dmesg");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            ["Oops", "BUG:", "WARNING:", "general protection", "int3"]
                .iter()
                .any(|p| l.contains(p))
                && !l.contains("Command line")
        })
        .map(str::to_string)
        .collect()
}

/// One `watch --headless` run: until a document says its probes are live, then SIGINT.
/// Returns the time from spawn to the first live document.
fn watch_until_live(dev_id: u32) -> Duration {
    let t0 = Instant::now();
    let mut child = Command::new(bin("ublk-trace"))
        .args(["watch", "dev", &dev_id.to_string(), "--headless", "--json"])
        .args(["--interval", "200", "--count", "300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ublk-trace watch");
    let stdout = child.stdout.take().expect("piped");
    let mut live = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let doc: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("watch printed a line that is not JSON ({e}): {line}"));
        if doc["source"].as_str().is_some_and(|s| s.contains("ebpf")) {
            live = Some(t0.elapsed());
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "watch probes not live after 60 s: {line}"
        );
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = wait_timeout(&mut child, Duration::from_secs(60)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("watch did not exit within 60 s of SIGINT (detach hung?)")
    });
    assert!(st.success() || st.code() == Some(130), "watch exited {st}");
    live.expect("watch ended before its probes were live")
}

/// One short `record` of the device; it must exit 0 and have recorded its commands.
fn record_once(dev_id: u32, out: &str) {
    let mut child = Command::new(bin("ublk-trace"))
        .args(["record", "--dev", &dev_id.to_string(), "--duration", "0.5"])
        .args(["-o", out])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ublk-trace record");
    let st = wait_timeout(&mut child, Duration::from_secs(90)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("record did not finish within 90 s")
    });
    assert!(st.success(), "record exited {st}");
    let text = std::fs::read_to_string(out).expect("recording written");
    assert!(
        text.lines()
            .any(|l| l.contains("\"event\":\"io_cmd_done\"")),
        "a recording under fio holds accepted commands; got {} lines",
        text.lines().count()
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_probes_attach_and_detach_repeatedly_under_fio() {
    let before = kernel_complaints();
    let srv = Server::start(&["null", "--queues", "2", "--depth", "64"]);
    // Reads and writes, longer than any number of cycles takes; killed at the end.
    let mut fio = Command::new("fio")
        .args(["--name=cycles", &format!("--filename={}", srv.bdev())])
        .args([
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=16",
            "--rw=randrw",
        ])
        .args(["--bs=4k", "--time_based", "--runtime=3600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fio");
    std::thread::sleep(Duration::from_secs(2));
    let n = cycles();
    let mut live_ms = Vec::new();
    for i in 0..n {
        let ios0 = completed_ios(srv.dev_id).unwrap_or(0);
        let live = watch_until_live(srv.dev_id);
        record_once(srv.dev_id, "/tmp/attach-cycles.jsonl");
        let ios1 = completed_ios(srv.dev_id).unwrap_or(0);
        println!(
            "cycle {i}: watch live after {} ms, {} I/Os completed meanwhile",
            live.as_millis(),
            ios1 - ios0
        );
        assert!(ios1 > ios0, "cycle {i}: no I/O completed while attached");
        live_ms.push(live.as_millis());
        let new: Vec<String> = kernel_complaints()
            .into_iter()
            .filter(|l| !before.contains(l))
            .collect();
        assert!(new.is_empty(), "cycle {i}: the kernel complained: {new:#?}");
    }
    assert!(
        matches!(fio.try_wait(), Ok(None)),
        "fio ended during the cycles"
    );
    let _ = fio.kill();
    let _ = fio.wait();
    live_ms.sort_unstable();
    println!(
        "ATTACH-CYCLES {n} cycles ({} attach/detach), watch live after median {} ms, max {} ms",
        2 * n,
        live_ms[live_ms.len() / 2],
        live_ms[live_ms.len() - 1]
    );
    drop(srv);
}
