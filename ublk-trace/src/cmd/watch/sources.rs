//! The data sources of `watch` and `diagnose`, each on its own thread, sending [`Msg`]s to the
//! one loop that owns the model (tokio-console's shape with std threads and an mpsc channel).
//!
//! The snapshot thread keeps its period from drifting (bpftop: sleep `period - elapsed`).
//! Threads stop when the [`Stop`] flag is set or the receiver is gone.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::event::TraceEvent;
use crate::probe::{IoPrograms, LatencyEntry, TagStateEntry, Tracer, TracerConfig};
use crate::selfcost::{self, Part};
use crate::snapshot::{self, DeviceSnapshot};

/// What a source tells the loop.
#[derive(Debug)]
pub enum Msg {
    /// Ids of the ublk devices present now.
    Devices(Vec<u32>),
    Snapshot(Box<DeviceSnapshot>),
    /// This round has no snapshot of the device: it is calm and its last snapshot was quiet,
    /// so it is snapshotted only every `snapshot::series::CALM_EVERY` (its last snapshot
    /// stands; the round is complete). The disk's completion counter is still read, so IOPS
    /// keep the tick's resolution.
    SnapshotDeferred {
        dev: u32,
        taken_ns: u64,
        disk_ios: Option<u64>,
    },
    Events(Vec<TraceEvent>),
    /// The probes are attached and streaming.
    ProbesLive,
    /// The probes could not be used: why (the loop falls back to snapshots and says so).
    ProbesOff(String),
    /// Total events lost by the probes so far.
    Lost(u64),
    /// Every event the kernel emitted before this CLOCK_MONOTONIC time has been sent (it
    /// follows them on the event channel): the model is complete up to here.
    CaughtUp(u64),
    /// The in-kernel per-tag state map, read once per tick (the state path: its cost does
    /// not grow with IOPS, and it is never behind like a backlogged event stream).
    KernelTags(Vec<TagStateEntry>, u64),
    /// One read of the driver's own memory (every tag's truth, nothing on the I/O path).
    Driver(Box<crate::driver::DriverSnapshot>),
    /// The driver's memory could not be read (this time, or here at all): why.
    DriverOff(String),
    /// The light path's per-queue completion histograms, read at this CLOCK_MONOTONIC time.
    KernelLatency(Vec<LatencyEntry>, u64),
    /// What runs on every I/O, chosen by the probe thread before it attaches.
    PerIo(PerIoChoice),
    /// The probes now stream every event of this tag (None: of none), since this
    /// CLOCK_MONOTONIC time; with the programs that could not be attached for it.
    Following(Option<(u32, u16, u16)>, u64, Vec<String>),
    /// Something was put on the event channel ([`EventSender`]); never returned by
    /// [`Sources::recv`].
    Doorbell,
}

/// The probes' end of the event channel. Each send also rings a doorbell on the main channel,
/// so the loop sleeps on that one alone and wakes only when something came (polling the
/// event channel every few ms cost more CPU under TCG than all of `--per-io none`'s work).
#[derive(Debug, Clone)]
pub struct EventSender {
    events: Sender<Msg>,
    bell: Sender<Msg>,
}

impl EventSender {
    pub fn send(&self, m: Msg) -> Result<(), std::sync::mpsc::SendError<Msg>> {
        self.events.send(m)?;
        // After the message: whoever hears the bell finds it queued.
        self.bell
            .send(Msg::Doorbell)
            .map_err(|e| std::sync::mpsc::SendError(e.0))
    }
}

/// What `watch` and `diagnose` run on every I/O (`--per-io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PerIo {
    /// Only what the driver's memory cannot show: rejected commands, negative commits, the
    /// latency histograms, failed, slow and requeued requests. Every tag's state comes from
    /// the driver. Falls back to `state` where the driver's memory cannot be read.
    Light,
    /// Also the in-kernel per-tag state map, updated on every FETCH, COMMIT, request start,
    /// delivery and completion: the event model, for kernels whose memory cannot be read.
    State,
    /// No program per I/O at all: the driver's memory and the disk's own counters only.
    None,
}

impl PerIo {
    pub fn name(self) -> &'static str {
        match self {
            Self::Light => "light",
            Self::State => "state",
            Self::None => "none",
        }
    }

    /// What this mode cannot see (shown in the header and the JSON).
    pub fn cannot_see(self) -> &'static [&'static str] {
        match self {
            Self::Light => &["tag history", "delivery times"],
            Self::State => &[],
            Self::None => &[
                "rejections",
                "latency",
                "slow/failed completions",
                "tag history",
            ],
        }
    }

    fn io_programs(self) -> IoPrograms {
        match self {
            Self::Light => IoPrograms::Light,
            Self::State => IoPrograms::All,
            Self::None => IoPrograms::None,
        }
    }
}

/// The mode in force and, when it is not the one asked for, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerIoChoice {
    pub mode: PerIo,
    pub note: Option<String>,
}

impl PerIoChoice {
    /// `asked`, unless it needs the driver's memory and `driver` says why that cannot be
    /// read: then the state path, which keeps every tag's state from events.
    pub fn decide(asked: PerIo, driver: Result<(), String>) -> Self {
        match (asked, driver) {
            (PerIo::State, _) | (_, Ok(())) => Self {
                mode: asked,
                note: None,
            },
            (PerIo::Light, Err(why)) => Self {
                mode: PerIo::State,
                note: Some(format!(
                    "--per-io light needs the driver's memory ({why}): the per-I/O state path runs instead"
                )),
            },
            (PerIo::None, Err(why)) => Self {
                mode: PerIo::None,
                note: Some(format!(
                    "no per-I/O programs and no driver state ({why}): tags are known from snapshots only"
                )),
            },
        }
    }
}

/// Shared stop flag for all source threads. Setting it wakes every [`Stop::sleep_until`] at
/// once, so a sleeping thread wakes once per period, not every few ms to look at the flag
/// (under TCG each wake-up costs tens of µs of CPU).
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<(Mutex<bool>, Condvar)>);

impl Stop {
    pub fn set(&self) {
        let (flag, cv) = &*self.0;
        *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cv.notify_all();
    }

    pub fn is_set(&self) -> bool {
        *self.0.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleep until `until`, or until the flag is set.
    pub fn sleep_until(&self, until: Instant) {
        let (flag, cv) = &*self.0;
        let mut set = flag.lock().unwrap_or_else(PoisonError::into_inner);
        while !*set {
            let now = Instant::now();
            if now >= until {
                return;
            }
            set = match cv.wait_timeout(set, until - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// Which devices the snapshot thread reads: one, or all (device list).
#[derive(Debug, Clone)]
pub struct Focus(Arc<AtomicU32>);

const ALL: u32 = u32::MAX;

impl Focus {
    pub fn new(dev: Option<u32>) -> Self {
        Self(Arc::new(AtomicU32::new(dev.unwrap_or(ALL))))
    }
    pub fn set(&self, dev: Option<u32>) {
        self.0.store(dev.unwrap_or(ALL), Ordering::SeqCst);
    }
    pub fn get(&self) -> Option<u32> {
        match self.0.load(Ordering::SeqCst) {
            ALL => None,
            d => Some(d),
        }
    }
}

/// The tag whose every event the probes stream (the TUI's detail view), or none.
#[derive(Debug, Clone)]
pub struct Follow(Arc<AtomicU64>);

const NOBODY: u64 = u64::MAX;

impl Default for Follow {
    fn default() -> Self {
        Self(Arc::new(AtomicU64::new(NOBODY)))
    }
}

impl Follow {
    pub fn set(&self, tag: Option<(u32, u16, u16)>) {
        let v = tag.map_or(NOBODY, |(d, q, t)| {
            (u64::from(d) << 32) | (u64::from(q) << 16) | u64::from(t)
        });
        self.0.store(v, Ordering::SeqCst);
    }
    pub fn get(&self) -> Option<(u32, u16, u16)> {
        match self.0.load(Ordering::SeqCst) {
            NOBODY => None,
            v => Some(((v >> 32) as u32, (v >> 16) as u16, v as u16)),
        }
    }
}

/// What the driver-state thread found when it opened the reader: not yet known, readable,
/// or not (why). The probe thread moves off the light path when it cannot be read.
#[derive(Debug, Clone, Default)]
pub struct DriverStatus(Arc<std::sync::Mutex<Option<Result<(), String>>>>);

impl DriverStatus {
    pub fn set(&self, r: Result<(), String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
    }
    pub fn get(&self) -> Option<Result<(), String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Sleep until `until` in short steps so a stop request is noticed quickly.
/// The devices the driver's latest read found calm ([`crate::driver::DeviceState::is_calm`]),
/// and until when that read counts (CLOCK_MONOTONIC ns): the snapshot thread walks /proc for
/// their waiters less often ([`snapshot::series`]).
#[derive(Debug, Clone, Default)]
pub struct CalmDevices(Arc<Mutex<(u64, Vec<u32>)>>);

impl CalmDevices {
    pub fn set(&self, until_ns: u64, devs: Vec<u32>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = (until_ns, devs);
    }

    pub fn is_calm(&self, dev: u32, now_ns: u64) -> bool {
        let g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        now_ns < g.0 && g.1.contains(&dev)
    }
}

/// A request in flight this long makes its device not calm: a quarter of the default stuck
/// threshold, so the first walk that can name a waiter comes well before a finding needs it.
const CALM_AGE_NS: u64 = 250_000_000;

/// One round: the device list, then a snapshot of each focused device.
/// Returns false when the loop has gone away.
fn snapshot_round(
    tx: &Sender<Msg>,
    focus: &Focus,
    per_device: Duration,
    series: &mut snapshot::series::Series,
    calm: &CalmDevices,
) -> bool {
    let devices = snapshot::list_devices();
    series.retain(&devices);
    let targets: Vec<u32> = match focus.get() {
        Some(d) => vec![d],
        None => devices.clone(),
    };
    if tx.send(Msg::Devices(devices)).is_err() {
        return false;
    }
    targets.into_iter().all(|dev| {
        let is_calm = calm.is_calm(dev, snapshot::read::monotonic_ns());
        if !series.due(dev, is_calm, Instant::now()) {
            log::debug!("dev {dev}: snapshot deferred (calm, last one quiet)");
            let taken_ns = snapshot::read::monotonic_ns();
            let disk_ios = snapshot::read::read_disk_ios(dev).ok().flatten();
            return tx
                .send(Msg::SnapshotDeferred {
                    dev,
                    taken_ns,
                    disk_ios,
                })
                .is_ok();
        }
        let snap = series.take(dev, Instant::now() + per_device, is_calm);
        log::debug!(
            "dev {dev}: snapshot taken (calm {is_calm}, quiet {})",
            snap.is_quiet()
        );
        tx.send(Msg::Snapshot(Box::new(snap))).is_ok()
    })
}

/// Snapshot the focused device(s) every `period`, starting now.
pub fn spawn_snapshotter(
    tx: Sender<Msg>,
    focus: Focus,
    period: Duration,
    calm: CalmDevices,
    stop: Stop,
) -> std::io::Result<JoinHandle<()>> {
    // A read of a hung device's files may block; the deadline bounds each snapshot. Walking
    // /proc takes most of a second in a TCG guest, so the bound cannot follow a short period.
    let per_device = period.clamp(Duration::from_secs(1), Duration::from_secs(3));
    std::thread::Builder::new()
        .name("snapshots".into())
        .spawn(move || {
            let mut series = snapshot::series::Series::new();
            let mut next = Instant::now();
            while !stop.is_set() {
                // Charged with its sleep: a wake-up costs CPU too.
                let _round = selfcost::Charged::new(Part::Snapshot);
                if !snapshot_round(&tx, &focus, per_device, &mut series, &calm) {
                    return;
                }
                next += period;
                // After a slow round, start the next one now rather than bursting to catch up.
                next = next.max(Instant::now());
                stop.sleep_until(next);
            }
        })
}

/// How long one read of the driver's memory may take (it never blocks on the device; the
/// deadline bounds a machine too loaded to finish it).
const DRIVER_DEADLINE: Duration = Duration::from_secs(1);

/// Read the driver's own state (`crate::driver`) of the focused device(s) every `period`,
/// starting now. If it cannot be read here (no /proc/kcore, lockdown, not root, a layout the
/// reader does not know), say why once and end: the loop goes on with events and snapshots.
/// A read that fails once (timed out, device gone) is said and tried again next period.
pub fn spawn_driver_reader(
    tx: Sender<Msg>,
    focus: Focus,
    period: Duration,
    status: DriverStatus,
    calm: CalmDevices,
    stop: Stop,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("driver".into())
        .spawn(move || {
            let mut reader = match crate::driver::Reader::open() {
                Ok(r) => r,
                Err(e) => {
                    status.set(Err(e.to_string()));
                    let _ = tx.send(Msg::DriverOff(e.to_string()));
                    return;
                }
            };
            status.set(Ok(()));
            let mut next = Instant::now();
            while !stop.is_set() {
                let _round = selfcost::Charged::new(Part::Driver);
                let target = focus
                    .get()
                    .map_or(crate::driver::Target::All, crate::driver::Target::Dev);
                let msg = match reader.read(target, Instant::now() + DRIVER_DEADLINE) {
                    Ok(s) => {
                        // Good until the read after next would have come.
                        let until = s.taken_ns.saturating_add(2 * period.as_nanos() as u64);
                        calm.set(until, s.calm_devices(s.taken_ns, CALM_AGE_NS));
                        Msg::Driver(Box::new(s))
                    }
                    Err(e) => {
                        calm.set(0, Vec::new());
                        Msg::DriverOff(e.to_string())
                    }
                };
                if tx.send(msg).is_err() {
                    return;
                }
                next += period;
                next = next.max(Instant::now());
                stop.sleep_until(next);
            }
        })
}

/// Why the probes cannot serve, or None when every required program attached.
fn missing_required(t: &Tracer) -> Option<String> {
    let mut targets: Vec<&str> = Vec::new();
    let mut first_error = "";
    for p in t.attached().iter().filter(|p| p.required && !p.attached) {
        if !targets.contains(&p.target.as_str()) {
            targets.push(&p.target);
        }
        if first_error.is_empty() {
            first_error = &p.error;
        }
    }
    (!targets.is_empty())
        .then(|| format!("probes {} not attached: {first_error}", targets.join(", ")))
}

/// How often the probe thread reads the in-kernel tag state map.
pub const STATE_EVERY: Duration = Duration::from_millis(200);
/// Shortest pass of the probe thread's loop.
const MIN_PASS: Duration = Duration::from_millis(50);
/// The longest pass when no map is read: the ring wakes the poll for every control command,
/// and the horizon a pass sends is its end ([`Tracer::drained_through_ns`]), so a document is
/// at most this far ahead of it.
const QUIET_PASS: Duration = Duration::from_millis(500);

/// Commits this long after their request started still come through the ring one by one
/// (with the state path's other rare events: rejections, bad commits, requeues, failed
/// completions), so SLOW can name them: half the default `--slow-ms`.
const RARE_SLOW_MS: u32 = 100;

/// Read the probes for `dev_filter` (all devices when None) until stopped, with `per_io`'s
/// programs: the in-kernel maps every [`STATE_EVERY`], control commands and rare per-I/O
/// records as they come. If the probes cannot load or attach (no kprobes, not root, no
/// ublk_drv), say why once and end: the loop goes on with snapshots only.
pub fn spawn_probes(
    tx: Sender<Msg>,
    ev_tx: EventSender,
    dev_filter: Option<u32>,
    per_io: PerIo,
    follow: Follow,
    driver: DriverStatus,
    stop: Stop,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("probes".into())
        .spawn(move || {
            // The asked mode at once (the driver thread opens its reader meanwhile); moved to
            // the state path below if the driver's memory turns out unreadable.
            let choice = PerIoChoice::decide(per_io, Ok(()));
            if tx.send(Msg::PerIo(choice)).is_err() {
                return;
            }
            let cfg = tracer_config(dev_filter, per_io, false);
            let Some(mut tracer) = start_tracer(&cfg, &tx) else {
                return;
            };
            if tx.send(Msg::ProbesLive).is_err() {
                return;
            }
            let mut followed = None;
            let mut decided = per_io == PerIo::State;
            probe_loop(&mut tracer, &tx, &ev_tx, &stop, Drain::Paced, |t| {
                if !decided && let Some(status) = driver.get() {
                    decided = true;
                    if !on_driver_status(t, &tx, per_io, status) {
                        return false;
                    }
                }
                let want = follow.get();
                if want == followed {
                    return true;
                }
                followed = want;
                let missing = match t.follow_tag(want) {
                    Ok(failed) => failed
                        .iter()
                        .map(|p| format!("{} ({})", p.target, p.error))
                        .collect(),
                    Err(e) => vec![e.to_string()],
                };
                let msg = Msg::Following(want, crate::probe::monotonic_ns(), missing);
                tx.send(msg).is_ok()
            });
        })
}

/// The driver thread's verdict: where it cannot read the driver's memory, the light path
/// becomes the state path (said in the header); false when the loop has gone away.
fn on_driver_status(
    t: &mut Tracer,
    tx: &Sender<Msg>,
    asked: PerIo,
    status: Result<(), String>,
) -> bool {
    if status.is_ok() {
        return true;
    }
    let mut choice = PerIoChoice::decide(asked, status);
    if choice.mode == PerIo::State {
        match t.switch_to_state_path() {
            Ok(failed) if failed.is_empty() => {}
            Ok(failed) => {
                let names: Vec<&str> = failed.iter().map(|p| p.target.as_str()).collect();
                if let Some(n) = choice.note.as_mut() {
                    n.push_str(&format!("; not attached: {}", names.join(", ")));
                }
            }
            Err(e) => {
                let _ = tx.send(Msg::ProbesOff(format!("probes stopped: {e}")));
                return false;
            }
        }
    }
    tx.send(Msg::PerIo(choice)).is_ok()
}

/// The tracer of `mode`. The state path (DESIGN "Two eBPF paths") keeps every tag's state
/// in a kernel map read once per tick; the light path keeps per-queue histograms only. On
/// both only control commands and rare per-I/O records reach the ring (streaming every I/O
/// cost as much CPU as the server itself) unless `stream`.
pub fn tracer_config(dev_filter: Option<u32>, mode: PerIo, stream: bool) -> TracerConfig {
    TracerConfig {
        dev_filter,
        state: mode == PerIo::State,
        stream,
        rare_slow_ms: RARE_SLOW_MS,
        io_programs: if stream {
            IoPrograms::All
        } else {
            mode.io_programs()
        },
        ..Default::default()
    }
}

/// Start the probes of `cfg`; when they cannot load or a required program did not attach,
/// say why once on `tx` and give None (the loop goes on with snapshots only).
pub fn start_tracer(cfg: &TracerConfig, tx: &Sender<Msg>) -> Option<Tracer> {
    let tracer = match Tracer::start(cfg) {
        Ok(t) => t,
        Err(e) => {
            let _ = tx.send(Msg::ProbesOff(e.to_string()));
            return None;
        }
    };
    if let Some(why) = missing_required(&tracer) {
        let _ = tx.send(Msg::ProbesOff(why));
        return None;
    }
    Some(tracer)
}

/// How [`probe_loop`] drains the ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// State path: only control commands and rare events come through the ring, so wait for
    /// the next state read and pace the passes (a requeue storm is a steady trickle).
    Paced,
    /// Every event streams (a recording): drain as it comes.
    Streaming,
}

/// The probe thread's loop: the tracer path's map every [`STATE_EVERY`], ring events as `drain`
/// says, `each_pass` (false: stop), until stopped, the loop has gone away, or the probes
/// fail (said once).
pub fn probe_loop(
    tracer: &mut Tracer,
    tx: &Sender<Msg>,
    ev_tx: &EventSender,
    stop: &Stop,
    drain: Drain,
    mut each_pass: impl FnMut(&mut Tracer) -> bool,
) {
    let mut last_state_read = Instant::now();
    let mut last_pass = Instant::now();
    while !stop.is_set() {
        let _pass = selfcost::Charged::new(Part::Probes);
        if !each_pass(tracer) {
            return;
        }
        if last_state_read.elapsed() >= STATE_EVERY {
            last_state_read = Instant::now();
            if !read_maps(tracer, tx) {
                return;
            }
        }
        let mut events = Vec::new();
        let wait = match drain {
            Drain::Streaming => Duration::from_millis(100),
            Drain::Paced => {
                // Control commands wake the poll at once; otherwise sleep until the next
                // state read (or a quiet pass's end when no map is read), at most 20 passes
                // a second.
                let since = last_pass.elapsed();
                if since < MIN_PASS {
                    std::thread::sleep(MIN_PASS - since);
                }
                last_pass = Instant::now();
                let every = if reads_a_map(tracer) {
                    STATE_EVERY
                } else {
                    QUIET_PASS
                };
                every
                    .saturating_sub(last_state_read.elapsed())
                    .max(Duration::from_millis(10))
            }
        };
        if let Err(e) = tracer.poll(wait, &mut events) {
            let _ = tx.send(Msg::ProbesOff(format!("probes stopped: {e}")));
            return;
        }
        // poll drained the ring buffer: all that happened before `t` is in `events`.
        let t = tracer.drained_through_ns();
        if !events.is_empty() && ev_tx.send(Msg::Events(events)).is_err() {
            return;
        }
        if ev_tx.send(Msg::CaughtUp(t)).is_err() {
            return;
        }
    }
}

/// Whether the tracer's path keeps an in-kernel map to read every [`STATE_EVERY`] (the state
/// path's tag states, the light path's histograms; `--per-io none` has none).
fn reads_a_map(tracer: &Tracer) -> bool {
    tracer.keeps_state() || tracer.io_programs() == IoPrograms::Light
}

/// Send the in-kernel map of the tracer's path; false when the loop has gone away.
fn read_maps(tracer: &Tracer, tx: &Sender<Msg>) -> bool {
    // Taken before the walk: what the map holds includes every transition up to it.
    let t = crate::probe::monotonic_ns();
    let msg = if tracer.keeps_state() {
        tracer.tag_states().map(|tags| Msg::KernelTags(tags, t))
    } else if tracer.io_programs() == IoPrograms::Light {
        tracer.latency_hists().map(|h| Msg::KernelLatency(h, t))
    } else {
        return true;
    };
    match msg {
        Ok(m) => tx.send(m).is_ok(),
        Err(e) => {
            log::debug!("read the probes' map: {e}");
            true
        }
    }
}

/// Tells when one snapshot round is complete: the device list arrived and then a snapshot of
/// every focused device (immediately for an empty list).
#[derive(Debug, Default)]
pub struct RoundTracker {
    pending: std::collections::BTreeSet<u32>,
    round: Vec<u32>,
}

impl RoundTracker {
    /// Look at a message before it is applied; true when it completes a round.
    pub fn observe(&mut self, msg: &Msg, focus: Option<u32>) -> bool {
        match msg {
            Msg::Devices(d) => {
                self.round = focus.map(|x| vec![x]).unwrap_or_else(|| d.clone());
                self.pending = self.round.iter().copied().collect();
                self.round.is_empty()
            }
            Msg::Snapshot(s) => self.pending.remove(&s.dev_id) && self.pending.is_empty(),
            Msg::SnapshotDeferred { dev, .. } => {
                self.pending.remove(dev) && self.pending.is_empty()
            }
            _ => false,
        }
    }

    /// The devices of the current round.
    pub fn round(&self) -> &[u32] {
        &self.round
    }
}

/// Two channels and the handles of the threads feeding them: snapshots and status on one,
/// probe events on the other, so a flood of events (tens of thousands a second under fio)
/// never delays a snapshot: the model merges late events by their timestamps.
pub struct Sources {
    rx: Receiver<Msg>,
    pub tx: Sender<Msg>,
    ev_rx: Receiver<Msg>,
    pub ev_tx: EventSender,
    pub stop: Stop,
    pub focus: Focus,
    pub follow: Follow,
    pub driver_status: DriverStatus,
    /// Threads joined on drop (they notice `stop` within a step or a deadline).
    handles: Vec<JoinHandle<()>>,
}

impl Sources {
    pub fn new(focus: Option<u32>) -> Self {
        let (tx, rx) = channel();
        let (events, ev_rx) = channel();
        let ev_tx = EventSender {
            events,
            bell: tx.clone(),
        };
        Self {
            rx,
            tx,
            ev_rx,
            ev_tx,
            stop: Stop::default(),
            focus: Focus::new(focus),
            follow: Follow::default(),
            driver_status: DriverStatus::default(),
            handles: Vec::new(),
        }
    }

    /// Sources with the snapshot and driver-state threads running every `period` (the
    /// probes are the caller's: their configuration differs per command).
    pub fn with_readers(focus: Option<u32>, period: Duration) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut s = Self::new(focus);
        let calm = CalmDevices::default();
        let h = spawn_snapshotter(
            s.tx.clone(),
            s.focus.clone(),
            period,
            calm.clone(),
            s.stop.clone(),
        )
        .context("start the snapshot thread")?;
        s.add(h);
        let h = spawn_driver_reader(
            s.tx.clone(),
            s.focus.clone(),
            period,
            s.driver_status.clone(),
            calm,
            s.stop.clone(),
        )
        .context("start the driver-state thread")?;
        // Building the reader parses BTF: the command does not wait for that to end.
        s.add_detached(h);
        Ok(s)
    }

    /// The next message, snapshots and status first, waiting up to `timeout`.
    pub fn recv(&self, timeout: Duration) -> Result<Msg, RecvTimeoutError> {
        let end = Instant::now() + timeout;
        loop {
            // The main channel first, past the doorbells: a snapshot overtakes any backlog.
            loop {
                match self.rx.try_recv() {
                    Ok(Msg::Doorbell) => continue,
                    Ok(m) => return Ok(m),
                    Err(TryRecvError::Disconnected) => {
                        return Err(RecvTimeoutError::Disconnected);
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            if let Ok(m) = self.ev_rx.try_recv() {
                return Ok(m);
            }
            // Both empty: sleep on the main channel. An event sent from now on rings its
            // doorbell there after it is queued, so it ends the sleep.
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            match self.rx.recv_timeout(left) {
                Ok(Msg::Doorbell) => {}
                Ok(m) => return Ok(m),
                Err(e) => return Err(e),
            }
        }
    }

    /// A message if one is waiting (snapshots and status first).
    pub fn try_recv(&self) -> Option<Msg> {
        self.recv(Duration::ZERO).ok()
    }

    /// A thread to join on drop.
    pub fn add(&mut self, h: JoinHandle<()>) {
        self.handles.push(h);
    }

    /// A thread left to end on its own: loading eBPF (BTF parsing) can take seconds and
    /// cannot be interrupted, and quitting must not wait for it.
    pub fn add_detached(&mut self, h: JoinHandle<()>) {
        drop(h);
    }
}

impl Drop for Sources {
    fn drop(&mut self) {
        self.stop.set();
        // Threads notice the flag within one step; a snapshot stuck on a hung device's file
        // is bounded by its deadline. Joining keeps probes from outliving the command.
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn focus_round_trips_one_device_or_all() {
        let f = Focus::new(None);
        assert_eq!(f.get(), None);
        f.set(Some(3));
        assert_eq!(f.get(), Some(3));
    }

    #[test]
    fn a_round_ends_with_the_last_devices_snapshot() {
        let snap = |dev_id| {
            Msg::Snapshot(Box::new(DeviceSnapshot {
                dev_id,
                ..Default::default()
            }))
        };
        let mut r = RoundTracker::default();
        assert!(!r.observe(&Msg::Devices(vec![0, 2]), None));
        assert!(!r.observe(&snap(2), None));
        assert!(!r.observe(&Msg::ProbesLive, None));
        assert!(r.observe(&snap(0), None));
        // A calm device's deferred snapshot completes a round too.
        assert!(!r.observe(&Msg::Devices(vec![0, 2]), None));
        let deferred = Msg::SnapshotDeferred {
            dev: 2,
            taken_ns: 1,
            disk_ios: None,
        };
        assert!(!r.observe(&deferred, None));
        assert!(r.observe(&snap(0), None));
        assert!(
            !r.observe(&snap(0), None),
            "a repeat does not end another round"
        );
        assert!(
            r.observe(&Msg::Devices(vec![]), None),
            "empty list: done at once"
        );
        // A focused device counts even when the list does not show it (yet).
        assert!(!r.observe(&Msg::Devices(vec![]), Some(5)));
        assert!(r.observe(&snap(5), Some(5)));
        assert_eq!(r.round(), &[5]);
    }

    #[test]
    fn snapshots_overtake_a_backlog_of_events() {
        let s = Sources::new(None);
        for _ in 0..3 {
            let _ = s.ev_tx.send(Msg::Events(Vec::new()));
        }
        let _ = s.tx.send(Msg::ProbesLive);
        assert!(matches!(s.try_recv(), Some(Msg::ProbesLive)));
        assert!(matches!(s.try_recv(), Some(Msg::Events(_))));
        let t = Instant::now();
        let _ = s.recv(Duration::from_millis(30));
        let _ = s.recv(Duration::from_millis(30));
        assert!(matches!(
            s.recv(Duration::from_millis(30)),
            Err(RecvTimeoutError::Timeout)
        ));
        assert!(t.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn an_event_wakes_a_sleeping_recv_and_doorbells_are_never_returned() {
        let s = Sources::new(None);
        let ev = s.ev_tx.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let _ = ev.send(Msg::CaughtUp(7));
        });
        let t = Instant::now();
        let got = s.recv(Duration::from_secs(20));
        assert!(matches!(got, Ok(Msg::CaughtUp(7))), "{got:?}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "woke by the doorbell"
        );
        let _ = sender.join();
        // Its doorbell is still queued: skipped, and then nothing is left.
        assert!(matches!(
            s.recv(Duration::from_millis(20)),
            Err(RecvTimeoutError::Timeout)
        ));
    }

    #[test]
    fn a_followed_tag_round_trips_and_none_is_nobody() {
        let f = Follow::default();
        assert_eq!(f.get(), None);
        f.set(Some((7, 3, 1023)));
        assert_eq!(f.get(), Some((7, 3, 1023)));
        f.set(None);
        assert_eq!(f.get(), None);
    }

    #[test]
    fn light_falls_back_to_state_only_where_the_driver_cannot_be_read() {
        let ok = PerIoChoice::decide(PerIo::Light, Ok(()));
        assert_eq!((ok.mode, ok.note), (PerIo::Light, None));
        let off = PerIoChoice::decide(PerIo::Light, Err("lockdown".into()));
        assert_eq!(off.mode, PerIo::State);
        assert!(off.note.is_some_and(|n| n.contains("lockdown")));
        // `none` stays none (the user asked for no per-I/O cost), and says what is lost.
        let none = PerIoChoice::decide(PerIo::None, Err("no /proc/kcore".into()));
        assert_eq!(none.mode, PerIo::None);
        assert!(none.note.is_some_and(|n| n.contains("snapshots only")));
        assert_eq!(
            PerIoChoice::decide(PerIo::State, Err("x".into())).note,
            None
        );
    }

    #[test]
    fn sleep_until_returns_early_when_stopped() {
        let stop = Stop::default();
        stop.set();
        let t = Instant::now();
        stop.sleep_until(t + Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_stop_set_elsewhere_wakes_a_sleeper_at_once() {
        let stop = Stop::default();
        let sleeper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                stop.sleep_until(t + Duration::from_secs(20));
                t.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!sleeper.is_finished(), "it sleeps while the flag is clear");
        stop.set();
        let slept = sleeper.join().unwrap_or(Duration::MAX);
        assert!(slept < Duration::from_secs(10), "slept {slept:?}");
    }
}
