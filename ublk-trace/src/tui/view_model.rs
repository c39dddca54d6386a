//! What the screen shows, as plain data: the TUI draws a [`ViewModel`] and nothing else.
//!
//! Keeping the drawing code behind this seam means every screen can be rendered in a test from a
//! hand-written value, and the model (`crate::model`) never depends on ratatui (tokio-console's
//! "state vs view" split). `build` turns the live model + findings into a `ViewModel`; it is pure
//! (time is a parameter).

/// Where a tag is, as the grid colours it. The order is the life of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CellState {
    /// Nothing seen for this tag yet (tracer attached late): not "missing".
    Unknown,
    /// No FETCH accepted yet (device being set up).
    Idle,
    /// The server waits for a request (FETCH or COMMIT_AND_FETCH accepted). Healthy when idle.
    Waiting,
    /// The block layer handed the request to ublk; not delivered to the server yet.
    Queued,
    /// Delivered to the server's owner thread; no commit yet.
    InServer,
    /// The server committed a result; the block layer has not completed the request yet.
    Committed,
    /// Only a snapshot knows: blk-mq lists the request in flight; where exactly is unknown.
    InFlight,
    /// The driver aborted the tag's command (server gone, queue torn down).
    Aborted,
}

impl CellState {
    /// The name used on screen and in filters (DESIGN's vocabulary).
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "UNKNOWN",
            Self::Idle => "IDLE",
            Self::Waiting => "WAITING",
            Self::Queued => "QUEUED",
            Self::InServer => "IN_SERVER",
            Self::Committed => "COMMITTED",
            Self::InFlight => "IN_FLIGHT",
            Self::Aborted => "ABORTED",
        }
    }

    /// One character for the compact grid cell.
    pub fn glyph(self) -> char {
        match self {
            Self::Unknown => '?',
            Self::Idle => '-',
            Self::Waiting => '.',
            Self::Queued => 'Q',
            Self::InServer => 'S',
            Self::Committed => 'C',
            Self::InFlight => 'F',
            Self::Aborted => 'x',
        }
    }

    /// A request is somewhere between the block layer and its completion.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            Self::Queued | Self::InServer | Self::Committed | Self::InFlight
        )
    }
}

/// One tag of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagCell {
    pub tag: u16,
    pub state: CellState,
    /// Time spent in `state` so far (ns); `None` when unknown.
    pub age_ns: Option<u64>,
    /// A finding names this tag (drawn with a marker whatever the state).
    pub flagged: bool,
}

/// All tags of one hardware queue, in tag order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    pub q_id: u16,
    pub tags: Vec<TagCell>,
}

/// The server process as the snapshots saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    pub pid: u32,
    /// Process state letter from /proc (R, S, D, T, t, Z), `?` when unreadable.
    pub state: char,
    /// Human words for the state ("running", "STOPPED (SIGSTOP)", "cgroup-frozen", ...).
    pub state_text: String,
}

/// Where the data on screen comes from; the header says it so a fallback is never silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceView {
    /// eBPF probes plus snapshots.
    Live,
    /// Snapshots only (debugfs, procfs, sysfs, tag-state file): why probes are off.
    SnapshotsOnly { reason: String },
    /// A recording replayed offline.
    Replay,
}

/// The top lines of the device screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderView {
    pub dev_id: u32,
    /// Kernel device state from GET_DEV_INFO (LIVE, QUIESCED, DEAD, FAIL_IO), `None` if unknown.
    pub dev_state: Option<String>,
    pub server: Option<ServerView>,
    /// `UBLK_F_*` names without the prefix (USER_COPY, ...).
    pub features: Vec<String>,
    /// Completed requests per second, oldest first (one value per sample).
    pub iops_history: Vec<u64>,
    /// Events the probes lost (ring buffer full): shown in red when > 0.
    pub dropped_events: u64,
    /// How far the applied event stream is behind the wall clock (ns); the screen is judged
    /// at the stream's time, so a large lag is shown.
    pub stream_lag_ns: u64,
    pub source: SourceView,
    /// Why the driver's own state is not read (None: it is, and is the per-tag truth).
    pub driver_off: Option<String>,
    /// What runs on every I/O (`light`, `state`, `none`) and what that cannot see; None
    /// before the probe thread chose.
    pub per_io: Option<PerIoView>,
}

/// The per-I/O mode as the header shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerIoView {
    pub mode: &'static str,
    pub cannot_see: &'static [&'static str],
    /// Why this is not the mode asked for.
    pub note: Option<String>,
}

/// One request in flight, for the "oldest in-flight" list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InflightRow {
    pub q_id: u16,
    pub tag: u16,
    pub state: CellState,
    pub age_ns: u64,
    /// Block op name (READ, WRITE, FLUSH, ...), empty if unknown.
    pub op: String,
    pub sector: Option<u64>,
    pub bytes: Option<u32>,
}

/// One latency histogram bucket: requests whose latency was below `upper_ns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyBucket {
    /// Exclusive upper bound (ns); `u64::MAX` for the last, open bucket.
    pub upper_ns: u64,
    pub count: u64,
}

/// How bad a finding is (drives its colour).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// One diagnosis finding, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingView {
    /// STUCK_IN_SERVER, SERVER_STOPPED, WAITERS, ...
    pub class: String,
    pub severity: Severity,
    pub dev_id: u32,
    pub q_id: Option<u16>,
    pub tag: Option<u16>,
    /// Server threads and blocked tasks involved.
    pub pids: Vec<u32>,
    pub age_ns: Option<u64>,
    /// One sentence with the measured values.
    pub summary: String,
    /// Human-readable evidence lines (what was read where).
    pub evidence: Vec<String>,
    /// What a server author or operator should do (may be empty).
    pub hint: String,
    /// Every (queue, tag) the finding concerns, with state, age, request and owner.
    pub tags: Vec<crate::diagnose::FindingTag>,
}

impl FindingView {
    /// The finding is about exactly this tag.
    pub fn names_tag(&self, q_id: u16, tag: u16) -> bool {
        self.q_id == Some(q_id) && self.tag == Some(tag)
    }
}

/// One line of a tag's event history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    /// CLOCK_MONOTONIC ns of the event.
    pub ts_ns: u64,
    /// Thread that was running, 0 if unknown.
    pub tid: u32,
    pub text: String,
}

/// The detail view of one selected tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagDetail {
    pub q_id: u16,
    pub tag: u16,
    pub state: CellState,
    pub age_ns: Option<u64>,
    pub op: String,
    pub sector: Option<u64>,
    pub bytes: Option<u32>,
    /// Thread that owns the tag (queue thread up to 6.15, per tag from 6.16), 0 if unknown.
    pub owner_tid: u32,
    /// Oldest first.
    pub history: Vec<HistoryLine>,
    /// `history` is only what was seen since the event path was switched on for this tag.
    pub history_note: Option<String>,
    /// The request is the tag's last one, not one in flight (the tag is idle).
    pub last_request: bool,
    /// The driver's own view of the tag as last read (`ublk_io` and its request), one line
    /// per fact; empty when the driver's memory is not read.
    pub driver: Vec<String>,
}

/// Health of one device in the device list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Finding classes, worst first.
    Findings(Vec<String>),
    /// Could not tell (e.g. snapshots unreadable); the reason.
    Unknown(String),
}

/// One row of the device list (`ublk-trace watch` with no device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub dev_id: u32,
    pub dev_state: Option<String>,
    pub server_pid: Option<u32>,
    pub nr_queues: u16,
    pub queue_depth: u16,
    pub in_flight: Option<u32>,
    pub health: Health,
}

/// Everything one frame of the device screen shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewModel {
    pub header: HeaderView,
    pub queues: Vec<QueueView>,
    /// Oldest first.
    pub oldest: Vec<InflightRow>,
    pub latency: Vec<LatencyBucket>,
    /// Rule order: causes before symptoms.
    pub findings: Vec<FindingView>,
    /// Rules that lacked the data to decide, with what was missing (never a guessed class).
    pub undecided: Vec<String>,
    /// Filled when a tag is selected for the detail view.
    pub detail: Option<TagDetail>,
}

impl ViewModel {
    /// An empty screen for a device we know nothing about yet.
    pub fn empty(dev_id: u32, source: SourceView) -> Self {
        Self {
            header: HeaderView {
                dev_id,
                dev_state: None,
                server: None,
                features: Vec::new(),
                iops_history: Vec::new(),
                dropped_events: 0,
                stream_lag_ns: 0,
                source,
                driver_off: None,
                per_io: None,
            },
            queues: Vec::new(),
            oldest: Vec::new(),
            latency: Vec::new(),
            findings: Vec::new(),
            undecided: Vec::new(),
            detail: None,
        }
    }

    /// Tag count per queue, for cursor movement (queues may differ in depth only in tests).
    pub fn depths(&self) -> Vec<u16> {
        self.queues
            .iter()
            .map(|q| u16::try_from(q.tags.len()).unwrap_or(u16::MAX))
            .collect()
    }

    pub fn cell(&self, q_idx: usize, tag: u16) -> Option<&TagCell> {
        self.queues.get(q_idx)?.tags.get(usize::from(tag))
    }
}

/// Short human duration: `850us`, `12ms`, `3.2s`, `5m07s`, `2h03m`.
pub fn fmt_age(ns: u64) -> String {
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    match ns {
        n if n < MS => format!("{}us", n / US),
        n if n < S => format!("{}ms", n / MS),
        n if n < 10 * S => format!("{}.{}s", n / S, (n % S) / (S / 10)),
        n if n < 60 * S => format!("{}s", n / S),
        n if n < 3600 * S => format!("{}m{:02}s", n / (60 * S), (n / S) % 60),
        n => format!("{}h{:02}m", n / (3600 * S), (n / (60 * S)) % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_human_would_write_them() {
        assert_eq!(fmt_age(850_000), "850us");
        assert_eq!(fmt_age(12_300_000), "12ms");
        assert_eq!(fmt_age(3_250_000_000), "3.2s");
        assert_eq!(fmt_age(42_000_000_000), "42s");
        assert_eq!(fmt_age(307_000_000_000), "5m07s");
        assert_eq!(fmt_age(7_380_000_000_000), "2h03m");
    }

    #[test]
    fn only_requests_between_queue_and_completion_are_in_flight() {
        // WAITING is an idle tag: counting it as in flight would flag every idle device.
        assert!(!CellState::Waiting.in_flight());
        assert!(!CellState::Unknown.in_flight());
        assert!(CellState::InServer.in_flight());
        assert!(CellState::Queued.in_flight());
    }
}
