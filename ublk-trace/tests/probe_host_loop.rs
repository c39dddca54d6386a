//! Host test (no ublk, no kprobes needed): the `blk_issue`/`blk_complete` raw-tracepoint
//! programs of our eBPF object count exactly the N direct writes dd sends to a loop device.
//! Guards against wrong `struct request` offsets (the disk-name filter and the byte counts
//! are read through them) and against silently lost ring-buffer records.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ublk_trace::probe::decode::block_disk_name;
use ublk_trace::probe::{Tracer, TracerConfig};
use ublk_trace_common::event::{KIND_BLOCK_COMPLETE, KIND_BLOCK_ISSUE, RawEvent};

const N: usize = 40;

struct Loop {
    dev: String,
    file: PathBuf,
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn setup_loop() -> Result<Loop, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (losetup, BPF)".into());
    }
    let file = std::env::temp_dir().join(format!("ublk-trace-loop-{}.img", std::process::id()));
    let f = std::fs::File::create(&file).map_err(|e| format!("create {}: {e}", file.display()))?;
    f.set_len(16 << 20).map_err(|e| format!("truncate: {e}"))?;
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&file)
        .output()
        .map_err(|e| format!("run losetup: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&file);
        return Err(format!(
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(Loop { dev, file })
}

#[test]
fn block_issue_counts_direct_writes_to_a_loop_device() {
    let lo = match setup_loop() {
        Ok(l) => l,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    let name = lo.dev.trim_start_matches("/dev/").to_string();
    let mut tracer = Tracer::start(&TracerConfig {
        kprobes: false,
        all_disks: true,
        ..Default::default()
    })
    .expect("tracer starts with raw tracepoints on this host");
    let attached: Vec<&str> = tracer
        .attached()
        .iter()
        .filter(|p| p.attached)
        .map(|p| p.program.as_str())
        .collect();
    assert!(
        attached.contains(&"blk_issue") && attached.contains(&"blk_complete"),
        "{attached:?}"
    );
    let status = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", lo.dev), "bs=4k"])
        .arg(format!("count={N}"))
        .args(["oflag=direct", "status=none"])
        .status()
        .expect("run dd");
    assert!(status.success());
    let mut raw: Vec<RawEvent> = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    let count = |raw: &[RawEvent], kind| {
        raw.iter()
            .filter(|r| r.kind == kind && block_disk_name(r) == name)
            .count()
    };
    while Instant::now() < until && count(&raw, KIND_BLOCK_COMPLETE) < N {
        tracer
            .poll_raw(Duration::from_millis(100), &mut raw)
            .expect("poll");
    }
    // A little longer: extra events (double counting) must show up too.
    tracer
        .poll_raw(Duration::from_millis(200), &mut raw)
        .expect("poll");
    assert_eq!(count(&raw, KIND_BLOCK_ISSUE), N, "issue events for {name}");
    assert_eq!(
        count(&raw, KIND_BLOCK_COMPLETE),
        N,
        "complete events for {name}"
    );
    let mine: Vec<&RawEvent> = raw
        .iter()
        .filter(|r| r.kind == KIND_BLOCK_ISSUE && block_disk_name(r) == name)
        .collect();
    // Offsets read through BTF: 4 KiB each, WRITE (REQ_OP_WRITE = 1), consecutive sectors.
    assert!(
        mine.iter().all(|r| r.bytes == 4096 && r.flags & 0xff == 1),
        "{mine:?}"
    );
    let mut sectors: Vec<u64> = mine.iter().map(|r| r.arg0).collect();
    sectors.sort_unstable();
    assert_eq!(sectors, (0..N as u64).map(|i| i * 8).collect::<Vec<_>>());
    assert_eq!(tracer.lost_events(), 0);
}
