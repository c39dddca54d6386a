//! Guest test: the kprobe/kretprobe pair on ublk_ctrl_uring_cmd sees exactly the control
//! commands this test sends (N GET_FEATURES through our read-only control client).

use std::time::{Duration, Instant};

use ublk_trace::event::EventKind;
use ublk_trace::kernel::ctrl::CtrlClient;
use ublk_trace::probe::{Tracer, TracerConfig};

const N: usize = 7;
const EAGAIN: i32 = -11;

#[test]
#[ignore = "needs ublk guest"]
fn ctrl_kprobe_counts_exactly_the_commands_sent() {
    let mut tracer = Tracer::start(&TracerConfig {
        stream: false, // control commands only
        block: false,
        ..Default::default()
    })
    .expect("tracer starts");
    for p in tracer
        .attached()
        .iter()
        .filter(|p| p.program.starts_with("ctrl_"))
    {
        assert!(p.attached, "{p:?}");
    }
    let client = CtrlClient::open().expect("open /dev/ublk-control");
    let mut features = Vec::new();
    for _ in 0..N {
        features.push(
            client
                .get_features(Duration::from_secs(5))
                .expect("GET_FEATURES"),
        );
    }
    assert!(features.iter().all(|f| *f == features[0] && *f != 0));
    let me = std::process::id();
    let mut events = Vec::new();
    let done = |evs: &[ublk_trace::event::TraceEvent]| {
        evs.iter()
            .filter(|e| e.pid == me)
            .filter(|e| matches!(&e.kind, EventKind::CtrlDone { result, .. } if *result != EAGAIN))
            .count()
    };
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until && done(&events) < N {
        tracer
            .poll(Duration::from_millis(100), &mut events)
            .expect("poll");
    }
    tracer
        .poll(Duration::from_millis(300), &mut events)
        .expect("poll");
    let mine: Vec<_> = events.iter().filter(|e| e.pid == me).collect();
    let starts = mine
        .iter()
        .filter(|e| matches!(e.kind, EventKind::CtrlStart { .. }))
        .count();
    let dones: Vec<_> = mine
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::CtrlDone { op, result, .. } => Some((op.as_str(), *result)),
            _ => None,
        })
        .collect();
    // Each command may show up twice (EAGAIN inline try + io-wq retry), never more.
    let real: Vec<_> = dones.iter().filter(|(_, r)| *r != EAGAIN).collect();
    assert_eq!(real.len(), N, "{dones:?}");
    assert!(
        real.iter().all(|(op, r)| *op == "GET_FEATURES" && *r == 0),
        "{real:?}"
    );
    assert_eq!(starts, dones.len(), "every entry paired with a return");
    assert!(starts <= 2 * N);
    assert_eq!(tracer.lost_events(), 0);
}
