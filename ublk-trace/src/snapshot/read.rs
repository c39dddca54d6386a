//! The thin readers: walk sysfs/debugfs/procfs for one device and fill a [`DeviceSnapshot`].
//! Every source is optional; a failure is recorded in `errors` and the rest goes on.
use std::fs;
use std::path::Path;
use std::time::Instant;

use crate::selfcost::{self, Part};

use super::blkmq::{self, BlkMqSnapshot, CtxRq, HctxSnapshot, SchedInfo};
use super::{
    DeviceSnapshot, Inflight, ServerProcess, SourceError, TaskInfo, deadline, devinfo, kmsg,
    procfs, tagfile,
};

const DEBUGFS_BLOCK: &str = "/sys/kernel/debug/block";

/// CLOCK_MONOTONIC now, in ns: the clock of trace events and of the server's tag-state file.
pub use crate::clock::monotonic_ns;

/// Ids of ublk devices: char devices `/sys/class/ublk-char/ublkcN` and disks
/// `/sys/block/ublkbN` (a device whose server died may have only the char device left).
pub fn list_devices() -> Vec<u32> {
    let mut ids: Vec<u32> = names_in("/sys/class/ublk-char", "ublkc")
        .into_iter()
        .chain(names_in("/sys/block", "ublkb"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn names_in(dir: &str, prefix: &str) -> Vec<u32> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(prefix)?.parse().ok())
        .collect()
}

/// Snapshot device `dev_id`. Never opens `/dev/ublkbN` or `/dev/ublkcN`; reads that can block
/// run side by side on helper threads and are abandoned at `deadline` (recorded as timed out).
pub fn take(dev_id: u32, deadline: Instant) -> DeviceSnapshot {
    let walked_ns = monotonic_ns();
    let (mut s, _) = take_with(
        dev_id,
        deadline,
        move || ProcFound::walk(dev_id),
        kmsg::read_tail(dev_id),
    );
    if s.proc_scanned {
        s.proc_walked_ns = Some(walked_ns);
    }
    s
}

/// What the /proc part of a snapshot found: the device's servers and its waiters.
pub(super) struct ProcFound {
    pub servers: Vec<ServerProcess>,
    pub waiters: Vec<TaskInfo>,
    /// Found by a walk of all of /proc (not by looking at known tasks again).
    pub walked: bool,
}

impl ProcFound {
    /// Walk all of /proc for the servers and waiters of `dev_id`.
    pub fn walk(dev_id: u32) -> Self {
        selfcost::charge(Part::ProcWalk, || Self {
            servers: procfs::find_servers(dev_id),
            waiters: procfs::find_waiters(dev_id),
            walked: true,
        })
    }
}

/// A snapshot whose /proc part is `scan` (a walk of /proc, or a look at known tasks) and
/// whose kernel log tail is `kmsg`; with whether /proc was walked in full.
pub(super) fn take_with(
    dev_id: u32,
    deadline: Instant,
    scan: impl FnOnce() -> ProcFound + Send + 'static,
    kmsg: std::io::Result<Vec<kmsg::KmsgLine>>,
) -> (DeviceSnapshot, bool) {
    let mut s = DeviceSnapshot {
        dev_id,
        taken_ns: monotonic_ns(),
        char_dev_present: Path::new(&format!("/sys/class/ublk-char/ublkc{dev_id}")).exists(),
        block_dev_present: Path::new(&format!("/sys/block/ublkb{dev_id}")).exists(),
        ..Default::default()
    };
    let info = devinfo::start(dev_id, deadline);
    let procs = deadline::spawn(move || {
        selfcost::charge(Part::Proc, || {
            let found = scan();
            let sched = procfs::read_sched(&found.servers);
            (found, sched)
        })
    });
    if s.block_dev_present {
        read_block_side(&mut s, deadline);
    }
    match devinfo::finish(info, deadline) {
        Ok(i) => s.dev_info = Some(i),
        Err(e) => s.errors.push(e),
    }
    let mut walked = false;
    match procs.wait(deadline) {
        Ok((found, sched)) => {
            walked = found.walked;
            s.servers = found.servers;
            s.waiters = found.waiters;
            s.sched = sched;
            s.proc_scanned = true;
        }
        Err(e) => s.errors.push(err("/proc scan", &e, true)),
    }
    match tagfile::find(tagfile::default_dir(), dev_id) {
        // A file left by an earlier server of the same device number (killed before it
        // could remove it) says nothing about this one.
        Ok(Some(t)) if is_stale(&t, &s) => s.errors.push(err(
            "tag-state file",
            &format!(
                "written by pid {}, which is not the server holding /dev/ublkc{dev_id}: a \
                 stale file of an earlier server, ignored",
                t.pid
            ),
            false,
        )),
        Ok(t) => s.tagfile = t,
        Err(e) => s.errors.push(err("tag-state file", &e, false)),
    }
    match kmsg {
        Ok(k) => s.kmsg = k,
        Err(e) => s.errors.push(err("/dev/kmsg", &e, false)),
    }
    (s, walked)
}

/// The tag file was written by a process that is not among the device's servers (which
/// were found). With no server at all the file is the dead server's last word: kept.
fn is_stale(t: &tagfile::TagFileSnapshot, s: &DeviceSnapshot) -> bool {
    s.proc_scanned && !s.servers.is_empty() && !s.servers.iter().any(|p| p.pid == t.pid)
}

fn err(source: &str, e: &dyn std::fmt::Display, timed_out: bool) -> SourceError {
    SourceError {
        source: source.to_string(),
        detail: e.to_string(),
        timed_out,
    }
}

fn read_block_side(s: &mut DeviceSnapshot, deadline: Instant) {
    let dev_id = s.dev_id;
    let inflight = format!("/sys/block/ublkb{dev_id}/inflight");
    match fs::read_to_string(&inflight) {
        Ok(t) => s.inflight = parse_inflight(&t),
        Err(e) => s.errors.push(err(&inflight, &e, false)),
    }
    match read_disk_ios(dev_id) {
        Ok(n) => s.disk_ios = n,
        Err(e) => s.errors.push(e),
    }
    let dir = format!("{DEBUGFS_BLOCK}/ublkb{dev_id}");
    if !Path::new(&dir).is_dir() {
        s.errors.push(err(
            &dir,
            &"not readable: mount debugfs (mount -t debugfs none /sys/kernel/debug) and run as root",
            false,
        ));
        return;
    }
    match deadline::run(deadline, move || {
        selfcost::charge(Part::BlkMq, || read_blkmq(Path::new(&dir)))
    }) {
        Ok(b) => s.blk = Some(b),
        Err(e) => s.errors.push(err("blk-mq debugfs", &e, true)),
    }
}

/// The disk's completed requests (`/sys/block/ublkbN/stat`, see [`parse_disk_ios`]): one
/// sysfs read, cheap enough for every tick even when the rest of a snapshot is deferred.
pub fn read_disk_ios(dev_id: u32) -> Result<Option<u64>, SourceError> {
    let stat = format!("/sys/block/ublkb{dev_id}/stat");
    fs::read_to_string(&stat)
        .map(|t| parse_disk_ios(&t))
        .map_err(|e| err(&stat, &e, false))
}

/// `/sys/block/ublkbN/inflight`: `       2        0`.
pub fn parse_inflight(text: &str) -> Option<Inflight> {
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    Some(Inflight {
        reads: it.next()??,
        writes: it.next()??,
    })
}

/// `/sys/block/ublkbN/stat` (Documentation/block/stat.rst): the completed reads (field 1),
/// writes (5), discards (12, 4.18+) and flushes (16, 5.5+) added up.
pub fn parse_disk_ios(text: &str) -> Option<u64> {
    let f: Vec<u64> = text
        .split_whitespace()
        .map(|w| w.parse::<u64>())
        .collect::<Result<_, _>>()
        .ok()?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    (f.len() >= 11).then(|| at(0) + at(4) + at(11) + at(15))
}

fn read_text(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

fn read_blkmq(dir: &Path) -> BlkMqSnapshot {
    let mut b = BlkMqSnapshot {
        queue_state: blkmq::split_flags(&read_text(&dir.join("state"))),
        requeue_list: blkmq::parse_rq_list(&read_text(&dir.join("requeue_list"))),
        ..Default::default()
    };
    let mut hctx_idx: Vec<u16> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("hctx")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    hctx_idx.sort_unstable();
    b.hctxs = hctx_idx
        .into_iter()
        .map(|i| read_hctx(&dir.join(format!("hctx{i}")), i))
        .collect();
    let sched = dir.join("sched");
    if sched.is_dir() {
        b.sched = Some(read_sched(&sched));
    }
    b
}

fn read_hctx(h: &Path, index: u16) -> HctxSnapshot {
    let mut ctx_rqs = Vec::new();
    if let Ok(rd) = fs::read_dir(h) {
        let mut cpus: Vec<_> = rd
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("cpu"))
            .collect();
        cpus.sort_by_key(|e| e.file_name());
        for cpu in cpus {
            let cpu_name = cpu.file_name().to_string_lossy().into_owned();
            for list in ["default_rq_list", "read_rq_list", "poll_rq_list"] {
                for rq in blkmq::parse_rq_list(&read_text(&cpu.path().join(list))) {
                    ctx_rqs.push(CtxRq {
                        list: format!("{cpu_name}/{list}"),
                        rq,
                    });
                }
            }
        }
    }
    HctxSnapshot {
        index,
        busy: blkmq::parse_rq_list(&read_text(&h.join("busy"))),
        dispatch: blkmq::parse_rq_list(&read_text(&h.join("dispatch"))),
        tags: blkmq::parse_tags(&read_text(&h.join("tags"))),
        tags_in_use: blkmq::parse_bitmap(&read_text(&h.join("tags_bitmap"))),
        state: blkmq::split_flags(&read_text(&h.join("state"))),
        ctx_rqs,
    }
}

fn read_sched(dir: &Path) -> SchedInfo {
    let mut s = SchedInfo {
        queued: blkmq::parse_counts(&read_text(&dir.join("queued"))).unwrap_or_default(),
        owned_by_driver: blkmq::parse_counts(&read_text(&dir.join("owned_by_driver")))
            .unwrap_or_default(),
        nonempty_lists: Vec::new(),
    };
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_list = name.ends_with("_fifo_list") || name == "dispatch";
            if is_list && !read_text(&e.path()).trim().is_empty() {
                s.nonempty_lists.push(name);
            }
        }
    }
    s.nonempty_lists.sort();
    s
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_tag_file_of_another_process_is_stale_only_while_a_server_is_found() {
        let t = tagfile::TagFileSnapshot {
            pid: 241,
            ..Default::default()
        };
        let server = |pid| crate::snapshot::ServerProcess {
            pid,
            comm: "srv".into(),
            threads: Vec::new(),
            rings: Vec::new(),
        };
        let mut s = DeviceSnapshot {
            proc_scanned: true,
            servers: vec![server(593)],
            ..Default::default()
        };
        assert!(is_stale(&t, &s), "an earlier server's file");
        s.servers = vec![server(241)];
        assert!(!is_stale(&t, &s), "its own server's file");
        s.servers.clear();
        assert!(!is_stale(&t, &s), "no server: the dead server's last word");
        s.proc_scanned = false;
        s.servers = vec![server(593)];
        assert!(
            !is_stale(&t, &s),
            "an unfinished /proc scan decides nothing"
        );
    }
    use super::*;

    #[test]
    fn inflight_counts() {
        assert_eq!(
            parse_inflight("       2        0\n"),
            Some(Inflight {
                reads: 2,
                writes: 0
            })
        );
        assert_eq!(parse_inflight("2"), None);
        assert_eq!(parse_inflight("a b"), None);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn blkmq_reader_on_a_fake_tree() {
        // The reader walks a directory; build one with the 6.12 guest's text.
        let dir = std::env::temp_dir().join(format!("ublk-trace-blkmq-{}", std::process::id()));
        let h0 = dir.join("hctx0");
        let cpu1 = h0.join("cpu1");
        fs::create_dir_all(&cpu1).expect("tree");
        fs::create_dir_all(dir.join("sched")).expect("tree");
        fs::write(dir.join("state"), "SAME_COMP|INIT_DONE|QUIESCED\n").expect("w");
        fs::write(h0.join("busy"), "0000 {.op=READ, .cmd_flags=SYNC, .rq_flags=IO_STAT, .state=in_flight, .tag=4, .internal_tag=-1}\n").expect("w");
        fs::write(h0.join("tags_bitmap"), "00000000: 10\n").expect("w");
        fs::write(
            cpu1.join("default_rq_list"),
            "0001 {.op=WRITE, .cmd_flags=, .rq_flags=, .state=idle, .tag=-1, .internal_tag=-1}\n",
        )
        .expect("w");
        fs::write(dir.join("sched/queued"), "0 3 0\n").expect("w");
        fs::write(dir.join("sched/owned_by_driver"), "0 1 0\n").expect("w");
        let b = read_blkmq(&dir);
        fs::remove_dir_all(&dir).ok();
        assert_eq!(b.hctxs.len(), 1);
        assert_eq!(b.hctxs[0].busy[0].tag, 4);
        assert_eq!(b.hctxs[0].tags_in_use, vec![4]);
        assert_eq!(b.hctxs[0].ctx_rqs[0].list, "cpu1/default_rq_list");
        assert_eq!(b.sched.as_ref().map(SchedInfo::held), Some(2));
        let held = b.held_in_block_layer();
        assert_eq!(held.len(), 3, "{held:?}");
    }
}
