//! Rendering tests: a fixed view model drawn into ratatui's TestBackend at 80x24 (serial
//! console) and 200x50, asserting what the screen says.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::App;
use super::dump::render_text;
use super::view_model::*;

const MS: u64 = 1_000_000;

fn tag_cells(depth: u16, special: &[(u16, CellState, u64, bool)]) -> Vec<TagCell> {
    (0..depth)
        .map(|tag| {
            let hit = special.iter().find(|s| s.0 == tag);
            match hit {
                Some(&(_, state, age, flagged)) => TagCell {
                    tag,
                    state,
                    age_ns: Some(age),
                    flagged,
                },
                None => TagCell {
                    tag,
                    state: CellState::Waiting,
                    age_ns: Some(5 * MS),
                    flagged: false,
                },
            }
        })
        .collect()
}

fn stuck_finding() -> FindingView {
    FindingView {
        class: "STUCK_IN_SERVER".into(),
        severity: Severity::Error,
        dev_id: 0,
        q_id: Some(1),
        tag: Some(5),
        pids: vec![4242],
        age_ns: Some(3_200 * MS),
        summary: "request READ 4096B delivered to tid 4243, no commit for 3.2s".into(),
        evidence: vec!["tag-state file: q1 t5 in_server since 3.2s, fault hang".into()],
        hint: "commit every request the server received".into(),
        tags: Vec::new(),
    }
}

/// Device 0: `nq` queues of `depth`, q1 t5 stuck in the server, q0 t2 queued.
fn fixture(nq: u16, depth: u16, dropped: u64) -> ViewModel {
    let mut vm = ViewModel::empty(0, SourceView::Live);
    vm.header.dev_state = Some("LIVE".into());
    vm.header.server = Some(ServerView {
        pid: 4242,
        state: 'S',
        state_text: "sleeping".into(),
    });
    vm.header.features = vec!["USER_COPY".into(), "CMD_IOCTL_ENCODE".into()];
    vm.header.iops_history = vec![100, 200, 1500, 1200];
    vm.header.dropped_events = dropped;
    vm.queues = (0..nq)
        .map(|q_id| {
            let special: Vec<_> = match q_id {
                0 => vec![(2, CellState::Queued, 2 * MS, false)],
                1 => vec![(5, CellState::InServer, 3_200 * MS, true)],
                _ => vec![],
            };
            QueueView {
                q_id,
                tags: tag_cells(depth, &special),
            }
        })
        .collect();
    vm.oldest = vec![InflightRow {
        q_id: 1,
        tag: 5,
        state: CellState::InServer,
        age_ns: 3_200 * MS,
        op: "READ".into(),
        sector: Some(2048),
        bytes: Some(4096),
    }];
    vm.latency = vec![
        LatencyBucket {
            upper_ns: 100_000,
            count: 900,
        },
        LatencyBucket {
            upper_ns: 1_000_000,
            count: 80,
        },
        LatencyBucket {
            upper_ns: u64::MAX,
            count: 0,
        },
    ];
    vm.findings = vec![stuck_finding()];
    vm
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn screen(app: &mut App, vm: &ViewModel, w: u16, h: u16) -> String {
    render_text(app, Some(vm), &[], w, h)
}

#[test]
fn small_console_shows_header_stuck_tag_and_finding() {
    let vm = fixture(2, 8, 0);
    let s = screen(&mut App::for_device(), &vm, 80, 24);
    assert_eq!(s.lines().count(), 24);
    assert!(s.contains("dev 0 LIVE"), "{s}");
    assert!(s.contains("server 4242 sleeping (S)"), "{s}");
    assert!(s.contains("dropped 0"), "{s}");
    assert!(s.contains("STUCK_IN_SERVER dev 0 q1 t5 pid 4242"), "{s}");
    // Small device: wide cells carry the age of the stuck tag in the grid itself.
    let q1_line = s.lines().find(|l| l.contains("q1")).unwrap_or_default();
    assert!(q1_line.contains("S  3.2s"), "{s}");
    assert!(s.contains("q1 t5   IN_SERVER   3.2s"), "oldest list: {s}");
}

#[test]
fn deep_queues_fit_80x24_in_compact_cells_and_scroll_to_the_cursor() {
    let vm = fixture(4, 128, 0);
    let mut app = App::for_device();
    let s = screen(&mut app, &vm, 80, 24);
    // 32 cells per line: the second line of q0 starts at tag 32.
    assert!(s.lines().any(|l| l.contains("q0    0 . . Q .")), "{s}");
    assert!(s.lines().any(|l| l.contains("     32 . .")), "{s}");
    assert!(s.contains("lines 1-"), "scroll indicator: {s}");
    app.on_key(key(KeyCode::End));
    let s = screen(&mut app, &vm, 80, 24);
    assert!(s.contains("of 16 "), "{s}");
    assert!(
        s.lines().any(|l| l.contains("     96 ")),
        "scrolled to q3's last line: {s}"
    );
}

#[test]
fn dropped_events_are_shown() {
    let s = screen(&mut App::for_device(), &fixture(1, 8, 17), 80, 24);
    assert!(s.contains("dropped 17 events"), "{s}");
    assert!(!s.contains("events lag"), "no lag, no word: {s}");
}

#[test]
fn an_event_backlog_is_shown() {
    let mut vm = fixture(1, 8, 0);
    vm.header.stream_lag_ns = 1_500_000_000;
    let s = screen(&mut App::for_device(), &vm, 120, 30);
    assert!(s.contains("events lag 1.5s"), "{s}");
}

#[test]
fn snapshot_fallback_says_so_in_the_header() {
    let mut vm = fixture(1, 8, 0);
    vm.header.source = SourceView::SnapshotsOnly {
        reason: "no kprobes".into(),
    };
    let s = screen(&mut App::for_device(), &vm, 200, 50);
    assert!(s.contains("SNAPSHOTS ONLY: no kprobes"), "{s}");
}

#[test]
fn large_terminal_shows_evidence_histogram_and_all_tags() {
    let vm = fixture(2, 128, 0);
    let s = screen(&mut App::for_device(), &vm, 200, 50);
    assert!(
        s.contains("tag-state file: q1 t5 in_server since 3.2s"),
        "{s}"
    );
    assert!(s.contains("<100us"), "{s}");
    assert!(s.contains("Latency (980 done)"), "{s}");
    assert!(
        !s.contains("lines 1-"),
        "everything fits, no scrolling: {s}"
    );
    assert!(s.lines().any(|l| l.contains("q1 ")), "{s}");
}

#[test]
fn undecided_rules_are_shown_not_hidden() {
    let mut vm = fixture(1, 8, 0);
    vm.findings.clear();
    vm.undecided = vec!["NOT_DELIVERED: no delivery event seen".into()];
    let s = screen(&mut App::for_device(), &vm, 80, 24);
    assert!(s.contains("could not decide: NOT_DELIVERED"), "{s}");
    assert!(!s.contains("nothing looks stuck"), "{s}");
}

#[test]
fn healthy_device_says_no_findings() {
    let mut vm = fixture(1, 8, 0);
    vm.findings.clear();
    let s = screen(&mut App::for_device(), &vm, 80, 24);
    assert!(s.contains("Findings (0)"), "{s}");
    assert!(s.contains("No findings"), "{s}");
}

#[test]
fn detail_view_shows_the_selected_tags_history() {
    let mut vm = fixture(2, 8, 0);
    let mut app = App::for_device();
    screen(&mut app, &vm, 80, 24);
    for _ in 0..13 {
        app.on_key(key(KeyCode::Right));
    }
    let action = app.on_key(key(KeyCode::Enter));
    assert_eq!(action, super::app::Action::SelectTag { q_id: 1, tag: 5 });
    vm.detail = Some(TagDetail {
        q_id: 1,
        tag: 5,
        state: CellState::InServer,
        age_ns: Some(3_200 * MS),
        op: "READ".into(),
        sector: Some(2048),
        bytes: Some(4096),
        owner_tid: 4243,
        history: vec![
            HistoryLine {
                ts_ns: 1_000,
                tid: 900,
                text: "QUEUE_RQ READ 4096B@2048".into(),
            },
            HistoryLine {
                ts_ns: 51_000,
                tid: 4243,
                text: "DELIVERED".into(),
            },
        ],
        history_note: None,
        last_request: false,
        driver: vec!["driver (120ms ago): InServer, flags ACTIVE|OWNED_BY_SRV (0x3)".into()],
    });
    let s = screen(&mut app, &vm, 80, 24);
    assert!(s.contains(" q1 t5 "), "{s}");
    assert!(s.contains("driver (120ms ago): InServer"), "{s}");
    assert!(s.contains("IN_SERVER for 3.2s"), "{s}");
    assert!(s.contains("owner tid 4243"), "{s}");
    assert!(s.contains("+50us"), "relative time of delivery: {s}");
    assert!(s.contains("DELIVERED"), "{s}");
    assert!(
        s.contains("STUCK_IN_SERVER"),
        "the finding on this tag: {s}"
    );
}

#[test]
fn filter_dims_other_queues_and_shows_in_footer() {
    let vm = fixture(2, 8, 0);
    let mut app = App::for_device();
    app.on_key(key(KeyCode::Char('/')));
    for c in "q0".chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
    let typing = screen(&mut app, &vm, 80, 24);
    assert!(typing.contains("/q0_"), "{typing}");
    app.on_key(key(KeyCode::Enter));
    let s = screen(&mut app, &vm, 80, 24);
    assert!(s.contains("filter: q0"), "{s}");
    // q1 t5 is filtered out of the oldest list.
    assert!(s.contains("Oldest in flight (0)"), "{s}");
}

#[test]
fn paused_and_help_are_visible() {
    let vm = fixture(1, 8, 0);
    let mut app = App::for_device();
    app.on_key(key(KeyCode::Char('p')));
    app.on_key(key(KeyCode::Char('?')));
    let s = screen(&mut app, &vm, 80, 24);
    assert!(s.contains("PAUSED"), "{s}");
    assert!(s.contains("in server: delivered to the server"), "{s}");
}

#[test]
fn device_list_shows_health_per_device() {
    let devices = vec![
        DeviceRow {
            dev_id: 0,
            dev_state: Some("LIVE".into()),
            server_pid: Some(4242),
            nr_queues: 2,
            queue_depth: 128,
            in_flight: Some(0),
            health: Health::Ok,
        },
        DeviceRow {
            dev_id: 3,
            dev_state: Some("LIVE".into()),
            server_pid: Some(777),
            nr_queues: 1,
            queue_depth: 64,
            in_flight: Some(2),
            health: Health::Findings(vec!["SERVER_STOPPED".into(), "WAITERS".into()]),
        },
    ];
    let mut app = App::for_device_list();
    app.set_devices(vec![0, 3]);
    let s = render_text(&mut app, None, &devices, 80, 24);
    assert!(s.contains("ublk devices (2)"), "{s}");
    let row3 = s.lines().find(|l| l.contains("ublkb3")).unwrap_or_default();
    assert!(row3.contains("777"), "{s}");
    assert!(row3.contains("SERVER_STOPPED, WAITERS"), "{s}");
    let row0 = s.lines().find(|l| l.contains("ublkb0")).unwrap_or_default();
    assert!(row0.contains(" ok"), "{s}");
}

#[test]
fn empty_device_list_says_how_to_get_one() {
    let mut app = App::for_device_list();
    let s = render_text(&mut app, None, &[], 80, 24);
    assert!(s.contains("No ublk devices"), "{s}");
}

/// A terminal smaller than the layout needs says so in one line instead of silently cutting
/// panes; at 80x24 the normal footer is back.
#[test]
fn small_terminal_shows_a_one_line_size_hint() {
    let vm = fixture(2, 8, 0);
    let s = screen(&mut App::for_device(), &vm, 60, 20);
    let last = s.lines().last().unwrap_or_default();
    assert!(last.contains("terminal 60x20 is smaller than 80x24"), "{s}");
    let s = screen(&mut App::for_device(), &vm, 80, 24);
    assert!(!s.contains("is smaller than"), "{s}");
    let mut list = App::for_device_list();
    let s = render_text(&mut list, None, &[], 70, 24);
    assert!(s.contains("terminal 70x24 is smaller"), "{s}");
}
