//! procfs: the server (the process holding `/dev/ublkcN` open), its threads, and tasks in D
//! state waiting on the disk. Only files that do not take the target's mm lock are read
//! (`stat`, `status`, `wchan`, `stack`, `fd/*` links, `fdinfo/*`); never `cmdline`/`maps` of a
//! task that may be stuck on the disk. The caller runs the whole scan under a deadline.
use std::fs;
use std::path::Path;

use super::fdinfo::{self, RingInfo};
use super::{ServerProcess, TaskInfo, WaitKind};
use crate::selfcost::{self, Part};

/// Parsed `/proc/PID/task/TID/stat` head: comm (may contain spaces and parens) and state.
pub fn parse_stat(text: &str) -> Option<(String, char)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let state = text.get(close + 1..)?.trim_start().chars().next()?;
    Some((comm, state))
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` from `/proc/.../status`.
pub fn parse_ctxt_switches(status: &str) -> Option<u64> {
    let mut total = None::<u64>;
    for line in status.lines() {
        if let Some((k, v)) = line.split_once(':')
            && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches")
        {
            let n: u64 = v.trim().parse().ok()?;
            total = Some(total.unwrap_or(0).saturating_add(n));
        }
    }
    total
}

/// `/proc/.../schedstat`: `run_ns wait_ns timeslices` -> (run_ns, wait_ns).
pub fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

/// Scheduler counters of every thread of the given servers (threads that vanished skipped).
pub fn read_sched(servers: &[ServerProcess]) -> Vec<super::ThreadSched> {
    servers
        .iter()
        .flat_map(|s| s.threads.iter())
        .filter_map(|t| {
            let text =
                fs::read_to_string(format!("/proc/{}/task/{}/schedstat", t.pid, t.tid)).ok()?;
            let (run_ns, wait_ns) = parse_schedstat(&text)?;
            Some(super::ThreadSched {
                tid: t.tid,
                run_ns,
                wait_ns,
            })
        })
        .collect()
}

/// `/proc/.../stack`: `[<0>] submit_bio_wait+0x79/0xc0` -> `submit_bio_wait`.
pub fn parse_stack(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let f = l.trim().rsplit("] ").next()?.trim();
            let name = f.split('+').next()?.trim();
            let name = name.split(" [").next()?.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// Why a D task waits, from its wchan, then its stack (first match wins).
pub fn classify_wait(wchan: &str, stack: &[String]) -> Option<WaitKind> {
    std::iter::once(wchan)
        .chain(stack.iter().map(String::as_str))
        .find_map(wait_kind_of)
}

fn wait_kind_of(f: &str) -> Option<WaitKind> {
    // Function names seen as wchan/stack frames on 6.12..7.x; order matters only within a name.
    Some(match f {
        "submit_bio_wait"
        | "__blkdev_direct_IO_simple"
        | "__blkdev_direct_IO_async"
        | "blkdev_direct_IO"
        | "folio_wait_bit_common"
        | "__folio_lock"
        | "wait_on_page_bit_common"
        | "blk_execute_rq"
        | "blk_rq_poll" => WaitKind::RequestInFlight,
        "blk_mq_get_tag" => WaitKind::TagStarved,
        "bio_queue_enter"
        | "blk_queue_enter"
        | "__bio_queue_enter"
        | "blk_mq_freeze_queue_wait" => WaitKind::QueueFrozen,
        "bdev_open" | "blkdev_get_by_dev" | "blkdev_open" | "disk_scan_partitions" => {
            WaitKind::Open
        }
        "del_gendisk" | "ublk_stop_dev" | "ublk_ctrl_del_dev" | "ublk_wait_disk_released" => {
            WaitKind::Teardown
        }
        _ => return None,
    })
}

/// `/dev/ublkcN` -> N.
pub fn char_dev_id(link: &str) -> Option<u32> {
    link.strip_prefix("/dev/ublkc")?.parse().ok()
}

/// `/dev/ublkbN` or a partition `/dev/ublkbNpM` -> N.
pub fn block_dev_id(link: &str) -> Option<u32> {
    let rest = link.strip_prefix("/dev/ublkb")?;
    let digits = rest.split('p').next()?;
    digits.parse().ok()
}

/// Numeric entries of a /proc directory.
fn pids_in(dir: &Path) -> Vec<u32> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// fd number -> link target of a process (unreadable fds skipped).
fn fd_links(pid: u32) -> Vec<(u32, String)> {
    let dir = format!("/proc/{pid}/fd");
    pids_in(Path::new(&dir))
        .into_iter()
        .filter_map(|fd| {
            let l = fs::read_link(format!("{dir}/{fd}")).ok()?;
            Some((fd, l.to_string_lossy().into_owned()))
        })
        .collect()
}

/// A thread's scheduler state from its `stat` alone (None: it has gone).
fn task_state(pid: u32, tid: u32) -> Option<char> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    parse_stat(&text).map(|(_, state)| state)
}

/// One thread's procfs facts. `pid` is the tgid, `tid` the thread.
pub fn read_task(pid: u32, tid: u32) -> Option<TaskInfo> {
    let base = format!("/proc/{pid}/task/{tid}");
    let (comm, state) = parse_stat(&fs::read_to_string(format!("{base}/stat")).ok()?)?;
    let wchan = fs::read_to_string(format!("{base}/wchan"))
        .map(|w| match w.trim() {
            // A running task reads as "0".
            "0" => String::new(),
            w => w.to_string(),
        })
        .unwrap_or_default();
    let stack = fs::read_to_string(format!("{base}/stack"))
        .map(|s| parse_stack(&s))
        .unwrap_or_default();
    let ctxt_switches = fs::read_to_string(format!("{base}/status"))
        .ok()
        .and_then(|s| parse_ctxt_switches(&s));
    Some(TaskInfo {
        pid,
        tid,
        comm,
        state,
        wchan,
        stack,
        ctxt_switches,
        wait: None,
    })
}

/// All processes holding `/dev/ublkc{dev_id}` open, with threads and io_uring rings.
pub fn find_servers(dev_id: u32) -> Vec<ServerProcess> {
    servers_among(dev_id, &pids_in(Path::new("/proc")))
}

/// The processes among `pids` that hold `/dev/ublkc{dev_id}` open (a walk of /proc passes
/// every pid; a snapshot series, the servers an earlier walk found).
pub fn servers_among(dev_id: u32, pids: &[u32]) -> Vec<ServerProcess> {
    let mut out = Vec::new();
    for &pid in pids {
        let links = fd_links(pid);
        if !links.iter().any(|(_, l)| char_dev_id(l) == Some(dev_id)) {
            continue;
        }
        out.push(read_server(pid, &links));
    }
    out
}

/// Every (tgid, tid) of the machine.
pub fn all_tasks() -> Vec<(u32, u32)> {
    pids_in(Path::new("/proc"))
        .into_iter()
        .flat_map(|pid| {
            pids_in(Path::new(&format!("/proc/{pid}/task")))
                .into_iter()
                .map(move |tid| (pid, tid))
        })
        .collect()
}

fn read_server(pid: u32, links: &[(u32, String)]) -> ServerProcess {
    let threads: Vec<TaskInfo> = selfcost::charge(Part::ProcThreads, || {
        pids_in(Path::new(&format!("/proc/{pid}/task")))
            .into_iter()
            .filter_map(|tid| read_task(pid, tid))
            .collect()
    });
    let comm = threads
        .iter()
        .find(|t| t.tid == pid)
        .map(|t| t.comm.clone())
        .unwrap_or_default();
    let rings: Vec<RingInfo> = selfcost::charge(Part::ProcRings, || {
        links
            .iter()
            .filter(|(_, l)| l.contains("io_uring"))
            .filter_map(|(fd, _)| {
                let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
                fdinfo::parse_fdinfo(*fd, &text)
            })
            .collect()
    });
    ServerProcess {
        pid,
        comm,
        threads,
        rings,
    }
}

/// Tasks in D state that concern disk `ublkb{dev_id}`: those with an fd on it (or a
/// partition), and those whose wait is an open/teardown or has `ublk_` frames (not tied to
/// one disk: reported for every device). A filesystem mounted on the disk holds no fd: its
/// writers are found only through `ublk_`/block frames of their stacks.
pub fn find_waiters(dev_id: u32) -> Vec<TaskInfo> {
    waiters_among(dev_id, &all_tasks())
}

/// [`find_waiters`] among the given (tgid, tid) tasks.
pub fn waiters_among(dev_id: u32, tasks: &[(u32, u32)]) -> Vec<TaskInfo> {
    let mut out = Vec::new();
    // Whether a process has the disk open, looked up once per process.
    let mut has_fd = std::collections::BTreeMap::<u32, bool>::new();
    for &(pid, tid) in tasks {
        // Only a D task's wchan, stack and status matter: read the rest of it only then
        // (a stack read unwinds the task; doing it for every task of the machine on every
        // tick was most of watch's CPU time).
        if task_state(pid, tid) != Some('D') {
            continue;
        }
        let Some(mut t) = read_task(pid, tid) else {
            continue;
        };
        if t.state != 'D' {
            continue;
        }
        let on_disk = *has_fd.entry(pid).or_insert_with(|| {
            fd_links(pid)
                .iter()
                .any(|(_, l)| block_dev_id(l) == Some(dev_id))
        });
        let kind = classify_wait(&t.wchan, &t.stack);
        let ublk_frames = t.stack.iter().any(|f| f.starts_with("ublk_"));
        let relevant =
            on_disk || ublk_frames || matches!(kind, Some(WaitKind::Open | WaitKind::Teardown));
        if relevant {
            t.wait = Some(kind.unwrap_or(WaitKind::Other));
            out.push(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let s = "202 (dd) D 151 0 0 0 -1 4194624 26 0 0 0 0 0 0 0 20 0 1 0 483 2318336 239";
        assert_eq!(parse_stat(s), Some(("dd".into(), 'D')));
        // comm may contain ") " itself: the last ')' ends it.
        let s2 = "9 (a) b (c)) T 1 0";
        assert_eq!(parse_stat(s2), Some(("a) b (c)".into(), 'T')));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn stack_frames_lose_offsets_and_modules() {
        let st = "[<0>] submit_bio_wait+0x79/0xc0\n[<0>] __blkdev_direct_IO_simple+0x10f/0x240\n[<0>] ublk_ctrl_start_dev.isra.0+0x1/0x2 [ublk_drv]\n";
        let f = parse_stack(st);
        assert_eq!(
            f,
            vec![
                "submit_bio_wait",
                "__blkdev_direct_IO_simple",
                "ublk_ctrl_start_dev.isra.0"
            ]
        );
    }

    #[test]
    fn wait_kinds_from_wchan_and_stack() {
        assert_eq!(
            classify_wait("submit_bio_wait", &[]),
            Some(WaitKind::RequestInFlight)
        );
        assert_eq!(
            classify_wait("blk_mq_get_tag", &[]),
            Some(WaitKind::TagStarved)
        );
        assert_eq!(
            classify_wait("bio_queue_enter", &[]),
            Some(WaitKind::QueueFrozen)
        );
        assert_eq!(classify_wait("bdev_open", &[]), Some(WaitKind::Open));
        // wchan unhelpful (a generic sleep), stack says teardown.
        let st = vec!["schedule".to_string(), "del_gendisk".to_string()];
        assert_eq!(
            classify_wait("schedule_timeout", &st),
            Some(WaitKind::Teardown)
        );
        assert_eq!(classify_wait("do_signal_stop", &[]), None);
    }

    #[test]
    fn schedstat_fields() {
        assert_eq!(parse_schedstat("1234 5678 9\n"), Some((1234, 5678)));
        assert_eq!(parse_schedstat("12"), None);
        assert_eq!(parse_schedstat("x y z"), None);
    }

    #[test]
    fn ctxt_switches_sum() {
        let s = "Name:\tdd\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_ctxt_switches(s), Some(15));
        assert_eq!(parse_ctxt_switches("Name:\tdd\n"), None);
    }

    #[test]
    fn device_links() {
        assert_eq!(char_dev_id("/dev/ublkc0"), Some(0));
        assert_eq!(char_dev_id("/dev/ublkc12"), Some(12));
        assert_eq!(char_dev_id("/dev/ublk-control"), None);
        assert_eq!(block_dev_id("/dev/ublkb3p1"), Some(3));
        assert_eq!(block_dev_id("/dev/ublkb3"), Some(3));
        assert_eq!(block_dev_id("/dev/ublkc3"), None);
    }

    #[test]
    fn stopped_states() {
        let t = TaskInfo {
            pid: 1,
            tid: 1,
            comm: "x".into(),
            state: 'S',
            wchan: "do_freezer_trap".into(),
            stack: vec![],
            ctxt_switches: None,
            wait: None,
        };
        assert!(t.is_stopped(), "cgroup-frozen counts as stopped");
        let r = TaskInfo {
            state: 'R',
            wchan: String::new(),
            ..t.clone()
        };
        assert!(!r.is_stopped());
        assert!(TaskInfo { state: 't', ..r }.is_stopped());
    }
}
