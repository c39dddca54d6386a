//! Snapshots of the same devices taken tick after tick (`watch`, `diagnose`). A calm device whose
//! last snapshot was quiet ([`DeviceSnapshot::is_quiet`]) is snapshotted every [`CALM_EVERY`]
//! instead of every tick. What is costly to find and rarely changes, the server processes (a
//! walk of every process's open files) and the tasks waiting on the disk (a walk of every task
//! in /proc), is found again only every [`WALK_EVERY`]; the waiters on every tick while the
//! device is not calm. In between, the tasks the last walk found are looked at again. The
//! kernel log is followed instead of read whole each time.
//!
//! Calm is the driver's word (the caller's `calm` argument): the device is LIVE with its disk
//! and holds no request older than a fraction of the stuck threshold, so there is nothing for
//! a waiter to explain. Measured in a 2-vCPU TCG guest under fio (67 tasks): the full walk
//! was 35-100 ms of CPU per tick, most of `watch`'s cost at the default 500 ms tick.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::kmsg::KmsgFollower;
use super::read::{ProcFound, monotonic_ns, take_with};
use super::{DeviceSnapshot, procfs};
use crate::selfcost::{self, Part};

/// The longest a calm device goes without a full walk of /proc. In between, its known server
/// is checked to still hold the char device (which only one process opens; a restart is a new
/// pid, and walks at once). What a walk adds on a calm device is a new waiter, and a task
/// cannot wait long on a device with no request older than 250 ms; a device where one does
/// is not calm, and is walked on every snapshot. Measured under fio in the 2-vCPU TCG guest:
/// one walk is 30-35 ms of CPU, every 5 s that was a fifth of `--per-io none`'s cost.
pub const WALK_EVERY: Duration = Duration::from_secs(30);

/// How often a calm device with a quiet last snapshot is snapshotted at all (the driver's
/// memory, read every tick, is then the per-tag source; the snapshot adds the server's
/// threads, rings and the block layer, which matter once something waits). Only after a
/// quiet snapshot: one that saw a waiter, a stopped thread or a held request started an age,
/// and that age must be checked on the next tick, not run on unseen for a calm period (a 2 s-old
/// sighting of `dd` waiting on a 400 ms request once made a false WAITERS). Measured: one such
/// snapshot is about 15 ms of CPU in the TCG guest (server threads and rings, blk-mq debugfs,
/// GET_DEV_INFO). 5 s was tried: it made the tag file's record of a 0-byte READ commit (the
/// driver's memory holds the -EIO the kernel made of it) reach the model after the 2 s a
/// repro test allows.
pub const CALM_EVERY: Duration = Duration::from_secs(2);

/// What the last walk of /proc found for one device.
#[derive(Debug, Clone)]
struct Walk {
    at: Instant,
    at_ns: u64,
    servers: Vec<u32>,
    /// (tgid, tid) of the waiters.
    waiters: Vec<(u32, u32)>,
}

/// The state a series keeps between its snapshots.
#[derive(Default)]
pub struct Series {
    walks: BTreeMap<u32, Walk>,
    /// When each device was last snapshotted, and whether that snapshot was quiet.
    taken: BTreeMap<u32, (Instant, bool)>,
    kmsg: KmsgFollower,
}

impl Series {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `dev_id` is to be snapshotted now: every tick unless it is `calm` and its last
    /// snapshot was quiet, then every [`CALM_EVERY`].
    pub fn due(&self, dev_id: u32, calm: bool, now: Instant) -> bool {
        !calm
            || self
                .taken
                .get(&dev_id)
                .is_none_or(|(t, quiet)| !quiet || now.saturating_duration_since(*t) >= CALM_EVERY)
    }

    /// Snapshot `dev_id` (as [`super::take`] does), walking /proc unless the last walk is
    /// recent and found its server; then, unless the device is `calm`, walking only for the
    /// waiters (a hung device's new waiter matters on this tick, a new server does not: one
    /// that replaces the known one is found when that one is gone).
    pub fn take(&mut self, dev_id: u32, deadline: Instant, calm: bool) -> DeviceSnapshot {
        let now = Instant::now();
        let known = self
            .walks
            .get(&dev_id)
            .filter(|w| !needs_walk(w, now))
            .cloned();
        let kmsg = self.kmsg.tail(dev_id);
        let start = (now, monotonic_ns());
        let (mut s, walked) = match known.clone() {
            Some(w) => take_with(
                dev_id,
                deadline,
                move || look_again(dev_id, &w, !calm),
                kmsg,
            ),
            None => take_with(dev_id, deadline, move || ProcFound::walk(dev_id), kmsg),
        };
        self.taken.insert(dev_id, (now, s.is_quiet()));
        if !s.proc_scanned {
            // The scan timed out: nothing learned; the next tick walks again.
            self.walks.remove(&dev_id);
            return s;
        }
        let (at, at_ns) = match known {
            Some(w) if !walked => (w.at, w.at_ns),
            _ => start,
        };
        s.proc_walked_ns = Some(at_ns);
        self.walks.insert(
            dev_id,
            Walk {
                at,
                at_ns,
                servers: s.servers.iter().map(|p| p.pid).collect(),
                waiters: s.waiters.iter().map(|t| (t.pid, t.tid)).collect(),
            },
        );
        s
    }

    /// Forget the devices not in `present` (removed ones).
    pub fn retain(&mut self, present: &[u32]) {
        self.walks.retain(|d, _| present.contains(d));
        self.taken.retain(|d, _| present.contains(d));
    }
}

/// Whether the next snapshot walks all of /proc although walk `w` was taken: the walk found
/// no server (one may start any moment), or it is [`WALK_EVERY`] old.
fn needs_walk(w: &Walk, now: Instant) -> bool {
    w.servers.is_empty() || now.saturating_duration_since(w.at) >= WALK_EVERY
}

/// The servers of the last walk, looked at again: those still holding the char device; and
/// its waiters, those still waiting, or every waiter found anew (`new_waiters`: a device that
/// is not calm, where a task that starts waiting now is what the user is looking for). If a
/// known server no longer holds it, walk /proc instead (a restarted server has a new pid).
fn look_again(dev_id: u32, w: &Walk, new_waiters: bool) -> ProcFound {
    let servers = procfs::servers_among(dev_id, &w.servers);
    if servers.len() < w.servers.len() {
        return ProcFound::walk(dev_id);
    }
    let waiters = match new_waiters {
        true => selfcost::charge(Part::ProcWalk, || procfs::find_waiters(dev_id)),
        false => procfs::waiters_among(dev_id, &w.waiters),
    };
    ProcFound {
        servers,
        waiters,
        walked: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(at: Instant, servers: Vec<u32>) -> Walk {
        Walk {
            at,
            at_ns: 0,
            servers,
            waiters: Vec::new(),
        }
    }

    #[test]
    fn a_device_with_its_server_known_is_walked_again_only_when_the_walk_is_old() {
        let t0 = Instant::now();
        let w = walk(t0, vec![412]);
        assert!(!needs_walk(&w, t0 + Duration::from_secs(1)));
        assert!(!needs_walk(&w, t0 + WALK_EVERY - Duration::from_millis(1)));
        assert!(needs_walk(&w, t0 + WALK_EVERY));
    }

    #[test]
    fn a_device_with_no_server_known_is_walked_every_time() {
        let t0 = Instant::now();
        assert!(needs_walk(&walk(t0, Vec::new()), t0));
    }

    #[test]
    fn a_calm_device_after_a_quiet_snapshot_is_due_every_calm_period_any_other_every_tick() {
        let mut s = Series::new();
        let t0 = Instant::now();
        assert!(s.due(7, true, t0), "never taken");
        s.taken.insert(7, (t0, true));
        assert!(!s.due(7, true, t0 + Duration::from_millis(500)));
        assert!(s.due(7, true, t0 + CALM_EVERY));
        assert!(s.due(7, false, t0 + Duration::from_millis(500)), "not calm");
        s.taken.insert(7, (t0, false));
        assert!(
            s.due(7, true, t0 + Duration::from_millis(500)),
            "the last snapshot saw something that ages"
        );
        s.retain(&[]);
        assert!(
            s.due(7, true, t0 + Duration::from_millis(500)),
            "removed, forgotten"
        );
    }

    #[test]
    fn a_snapshot_is_quiet_only_when_nothing_in_it_starts_an_age() {
        use crate::snapshot::{ServerProcess, SourceError, TaskInfo, WaitKind};
        let task = |tid, state, stack: &[&str]| TaskInfo {
            pid: 40,
            tid,
            comm: "srv".into(),
            state,
            wchan: String::new(),
            stack: stack.iter().map(|f| f.to_string()).collect(),
            ctxt_switches: Some(3),
            wait: None,
        };
        let quiet = DeviceSnapshot {
            proc_scanned: true,
            servers: vec![ServerProcess {
                pid: 40,
                comm: "srv".into(),
                threads: vec![task(40, 'S', &["io_cqring_wait"])],
                rings: Vec::new(),
            }],
            ..Default::default()
        };
        assert!(quiet.is_quiet());
        let mut s = quiet.clone();
        s.proc_scanned = false;
        assert!(!s.is_quiet(), "an unfinished /proc scan");
        let mut s = quiet.clone();
        s.servers.clear();
        assert!(!s.is_quiet(), "no server found");
        let mut s = quiet.clone();
        let mut dd = task(77, 'D', &["submit_bio_wait"]);
        dd.wait = Some(WaitKind::RequestInFlight);
        s.waiters.push(dd);
        assert!(!s.is_quiet(), "a waiter");
        let mut s = quiet.clone();
        s.servers[0].threads.push(task(41, 'T', &[]));
        assert!(!s.is_quiet(), "a stopped thread");
        let mut s = quiet.clone();
        s.servers[0].threads.push(task(
            42,
            'S',
            &["ublk_ctrl_start_dev", "ublk_ctrl_uring_cmd"],
        ));
        assert!(!s.is_quiet(), "a control command in progress");
        let mut s = quiet.clone();
        s.blk = Some(crate::snapshot::blkmq::BlkMqSnapshot {
            queue_state: vec!["QUIESCED".into()],
            ..Default::default()
        });
        assert!(!s.is_quiet(), "blk-mq holds requests");
        let mut s = quiet.clone();
        s.errors.push(SourceError {
            source: "GET_DEV_INFO".into(),
            detail: "timed out".into(),
            timed_out: true,
        });
        assert!(!s.is_quiet(), "a read timed out");
    }

    #[test]
    fn a_series_of_a_device_that_does_not_exist_walks_and_says_when() {
        // No server holds /dev/ublkc<this>: every snapshot walks /proc (and says so).
        let dev = 4_000_000_123;
        let mut s = Series::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let a = s.take(dev, deadline, true);
        let b = s.take(dev, deadline, true);
        assert!(a.proc_scanned && b.proc_scanned);
        assert!(a.servers.is_empty() && b.servers.is_empty());
        let (wa, wb) = (a.proc_walked_ns.unwrap_or(0), b.proc_walked_ns.unwrap_or(0));
        assert!(
            wa > 0 && wb > wa,
            "each snapshot walked anew: {wa} then {wb}"
        );
    }
}
