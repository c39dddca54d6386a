//! Guest test: lost events are counted, never silent. With a one-page ring buffer and no
//! reader while dd runs, records must be dropped, and for each kind the records seen plus
//! the drops counted in eBPF equal what dd caused (seen + dropped == emitted), and the
//! `Lost` events in the stream add up to the drop counter.

mod guest_util;

use std::process::{Command, Stdio};
use std::time::Duration;

use guest_util::{bin, line_channel, signal, wait_line, wait_timeout};
use ublk_trace::event::{BlockStage, EventKind, TraceEvent};
use ublk_trace::probe::{Tracer, TracerConfig};
use ublk_trace_common::event::{KIND_BLOCK_COMPLETE, KIND_IO_CMD, KIND_QUEUE_RQ};

const N: u64 = 200;

#[test]
#[ignore = "needs ublk guest"]
fn drops_are_counted_per_kind_and_conserved() {
    let mut srv = Command::new(bin("ublk-server"))
        .args(["run", "null", "--queues", "1", "--depth", "64"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ublk-server");
    let out = line_channel(srv.stdout.take().expect("piped"));
    let Ok(ready) = wait_line(&out, "ready", Duration::from_secs(60)) else {
        let _ = srv.kill();
        panic!("server not ready");
    };
    let bdev = ready.rsplit(' ').next().expect("block device").to_string();
    let dev_id: u32 = bdev
        .trim_start_matches("/dev/ublkb")
        .parse()
        .expect("ublkbN");
    std::thread::sleep(Duration::from_secs(1)); // partition scan done before we attach
    let mut tracer = Tracer::start(&TracerConfig {
        dev_filter: Some(dev_id),
        ring_bytes: Some(4096),
        ..Default::default()
    })
    .expect("tracer starts");
    // Nobody reads while dd runs: ~4 records per I/O into a ring of ~46.
    let st = Command::new("dd")
        .args([
            &format!("if={bdev}"),
            "of=/dev/null",
            "bs=4k",
            &format!("count={N}"),
            "iflag=direct",
        ])
        .stderr(Stdio::null())
        .status()
        .expect("run dd");
    assert!(st.success());
    let mut evs: Vec<TraceEvent> = Vec::new();
    while tracer
        .poll(Duration::from_millis(200), &mut evs)
        .expect("poll")
        > 0
    {}
    signal(&srv, libc::SIGINT);
    let _ = wait_timeout(&mut srv, Duration::from_secs(60));

    let c = tracer.counters().expect("counters");
    assert!(c.dropped > 0, "a one-page ring must overflow: {c:?}");
    let lost: u64 = evs
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Lost { count } => Some(count),
            _ => None,
        })
        .sum();
    assert_eq!(lost, c.dropped, "Lost events add up to the drop counter");
    let seen = |f: &dyn Fn(&EventKind) -> bool| evs.iter().filter(|e| f(&e.kind)).count() as u64;
    let kind = |k: u32| c.dropped_by_kind[k as usize];
    let queue_rq = seen(&|k| matches!(k, EventKind::QueueRq { .. }));
    assert_eq!(
        queue_rq + kind(KIND_QUEUE_RQ),
        N,
        "queue_rq seen {queue_rq}"
    );
    let commits =
        seen(&|k| matches!(k, EventKind::IoCmd { op, .. } if op == "COMMIT_AND_FETCH_REQ"));
    assert_eq!(commits + kind(KIND_IO_CMD), N, "commits seen {commits}");
    let completes = seen(&|k| {
        matches!(
            k,
            EventKind::Block {
                stage: BlockStage::Complete,
                ..
            }
        )
    });
    assert_eq!(
        completes + kind(KIND_BLOCK_COMPLETE),
        N,
        "completions seen {completes}"
    );
}
