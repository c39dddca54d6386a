//! View facts that come straight from a [`DeviceSnapshot`]: the header's device state, server
//! process and features, and a device-list row. Tag states come from the model, not from here.

use crate::snapshot::{DeviceSnapshot, ServerProcess};

use super::view_model::{DeviceRow, Health, ServerView};

/// Words for a process state letter (and a wchan that changes its meaning).
pub fn state_words(state: char, wchan: &str) -> &'static str {
    match (state, wchan) {
        (_, "do_freezer_trap") => "cgroup-frozen",
        ('T', _) => "STOPPED",
        ('t', _) => "TRACED",
        ('Z', _) | ('X', _) => "DEAD",
        ('D', _) => "disk sleep",
        ('R', _) => "running",
        ('S', _) | ('I', _) => "sleeping",
        _ => "unknown",
    }
}

/// How bad a thread state is for a server, to pick the one thread the header shows.
fn badness(state: char, wchan: &str) -> u8 {
    match (state, wchan) {
        (_, "do_freezer_trap") | ('T' | 't' | 'Z' | 'X', _) => 3,
        ('D', _) => 2,
        ('R', _) => 1,
        _ => 0,
    }
}

/// The server as one line: its worst thread decides (one stopped queue thread hangs its queue).
pub fn server_view(p: &ServerProcess) -> ServerView {
    let worst = p.threads.iter().max_by_key(|t| badness(t.state, &t.wchan));
    let (state, wchan) = worst
        .map(|t| (t.state, t.wchan.as_str()))
        .unwrap_or(('?', ""));
    ServerView {
        pid: p.pid,
        state,
        state_text: state_words(state, wchan).to_string(),
    }
}

/// Kernel device state name; "GONE" once neither the disk nor the char device exists.
pub fn dev_state_name(s: &DeviceSnapshot) -> Option<String> {
    match &s.dev_info {
        Some(i) => Some(i.dev_state().name()),
        None if !s.char_dev_present && !s.block_dev_present => Some("GONE".into()),
        None => None,
    }
}

pub fn feature_names(s: &DeviceSnapshot) -> Vec<String> {
    s.dev_info
        .map(|i| {
            ublk_abi::feature_names(i.flags)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Requests the driver owns now, from `/sys/block/ublkbN/inflight` or else debugfs `busy`.
pub fn in_flight(s: &DeviceSnapshot) -> Option<u32> {
    if let Some(i) = s.inflight {
        return u32::try_from(i.reads + i.writes).ok();
    }
    let blk = s.blk.as_ref()?;
    let n = blk
        .hctxs
        .iter()
        .flat_map(|h| h.busy.iter())
        .filter(|r| r.in_flight())
        .count();
    u32::try_from(n).ok()
}

/// One device-list row; `classes` are the finding classes diagnose gave this device.
pub fn device_row(s: &DeviceSnapshot, classes: Vec<String>) -> DeviceRow {
    let (nr_queues, queue_depth) = match (&s.dev_info, &s.tagfile) {
        (Some(i), _) => (i.nr_hw_queues, i.queue_depth),
        (None, Some(t)) => (t.nr_queues, t.queue_depth),
        (None, None) => (0, 0),
    };
    let health = if !classes.is_empty() {
        Health::Findings(classes)
    } else if s.dev_info.is_none() && s.blk.is_none() && !s.proc_scanned {
        let why = s
            .errors
            .first()
            .map(|e| e.source.clone())
            .unwrap_or_else(|| "no source readable".into());
        Health::Unknown(why)
    } else {
        Health::Ok
    };
    DeviceRow {
        dev_id: s.dev_id,
        dev_state: dev_state_name(s),
        server_pid: s.servers.first().map(|p| p.pid),
        nr_queues,
        queue_depth,
        in_flight: in_flight(s),
        health,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{DevInfo, Inflight, TaskInfo};

    fn task(tid: u32, state: char, wchan: &str) -> TaskInfo {
        TaskInfo {
            pid: 100,
            tid,
            comm: "ublk-server".into(),
            state,
            wchan: wchan.into(),
            stack: Vec::new(),
            ctxt_switches: None,
            wait: None,
        }
    }

    #[test]
    fn one_stopped_thread_makes_the_server_stopped() {
        let p = ServerProcess {
            pid: 100,
            comm: "ublk-server".into(),
            threads: vec![task(100, 'S', "futex"), task(101, 'T', "do_signal_stop")],
            rings: Vec::new(),
        };
        let v = server_view(&p);
        assert_eq!(
            (v.pid, v.state, v.state_text.as_str()),
            (100, 'T', "STOPPED")
        );
    }

    #[test]
    fn frozen_cgroup_is_named_by_wchan() {
        assert_eq!(state_words('D', "do_freezer_trap"), "cgroup-frozen");
        assert_eq!(state_words('S', "io_cqring_wait"), "sleeping");
    }

    #[test]
    fn device_row_prefers_dev_info_and_inflight() {
        let s = DeviceSnapshot {
            dev_id: 2,
            char_dev_present: true,
            block_dev_present: true,
            dev_info: Some(DevInfo {
                state: 1,
                ublksrv_pid: 5,
                nr_hw_queues: 2,
                queue_depth: 64,
                flags: 0,
                max_io_buf_bytes: 0,
            }),
            inflight: Some(Inflight {
                reads: 2,
                writes: 1,
            }),
            proc_scanned: true,
            ..Default::default()
        };
        let r = device_row(&s, vec!["SERVER_STOPPED".into()]);
        assert_eq!(r.dev_state.as_deref(), Some("LIVE"));
        assert_eq!((r.nr_queues, r.queue_depth, r.in_flight), (2, 64, Some(3)));
        assert_eq!(r.health, Health::Findings(vec!["SERVER_STOPPED".into()]));
        assert_eq!(device_row(&s, Vec::new()).health, Health::Ok);
    }

    #[test]
    fn unreadable_device_is_unknown_not_ok() {
        let s = DeviceSnapshot {
            dev_id: 1,
            char_dev_present: true,
            ..Default::default()
        };
        assert!(matches!(
            device_row(&s, Vec::new()).health,
            Health::Unknown(_)
        ));
        assert_eq!(dev_state_name(&s), None);
    }
}
