//! `diagnose --bundle FILE.tar.gz`: keep what the observation saw (the last snapshot of each
//! device, the probe events as a recording), then read the raw files, run `doctor`, and write
//! the bundle (layout: [`crate::bundle`]).
//!
//! `watch` and plain `diagnose` read the probes' in-kernel tag state and stream only control
//! commands (the cheap path); a bundle also streams every I/O event, as `record` does, so that
//! it holds a recording. That costs CPU per I/O for the few seconds of the observation.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::bundle::{self, Meta, Parts, Pending, Recording, RecordingSummary, collect};
use crate::cmd::watch::sources::{self, Msg, Sources, Stop};
use crate::event::EventKind;
use crate::probe::{ProbeStatus, TracerConfig};
use crate::record::RecordHeader;
use crate::snapshot::{DeviceSnapshot, deadline};

/// With `--bundle`, how long to wait for the eBPF probes to load (BTF parsing takes tens of
/// seconds in an emulated guest) before bundling without a recording.
pub const PROBE_WAIT: Duration = Duration::from_secs(60);
/// The shortest recording once the probes run (`--for` when longer).
pub const MIN_RECORD: Duration = Duration::from_secs(2);
/// Events kept at most (~20 MB of JSON lines); the rest is counted, not kept.
pub const MAX_EVENTS: u64 = 100_000;
/// How much longer than the recording's length to wait for a lagging event stream.
const BACKLOG_FACTOR: u32 = 3;
/// Bound on `doctor` (it parses BTF: seconds in an emulated guest).
const DOCTOR_DEADLINE: Duration = Duration::from_secs(60);
/// Bound on the raw reads of one device and on the kernel log.
const RAW_DEADLINE: Duration = Duration::from_secs(5);

/// The attached probes, as the recording's header lists them (kernel release, programs).
type ProbeInfo = Arc<Mutex<Option<(String, Vec<ProbeStatus>)>>>;

/// What the observation saw, kept for the bundle.
#[derive(Debug, Default)]
pub struct Capture {
    /// Filled by the probe thread once attached.
    probes: ProbeInfo,
    /// Event lines as `record` writes them (the header is added at the end).
    body: Vec<u8>,
    events: u64,
    lost: u64,
    truncated: bool,
    /// When the probes went live (wall, CLOCK_MONOTONIC ns, Unix ms): the recording's start.
    live_at: Option<(Instant, u64, u64)>,
    /// Every event before this CLOCK_MONOTONIC time has been captured.
    caught_up_ns: u64,
    /// The last snapshot of each device.
    snapshots: BTreeMap<u32, DeviceSnapshot>,
}

impl Capture {
    /// Look at a message before the session applies it.
    pub fn observe(&mut self, msg: &Msg) {
        match msg {
            Msg::ProbesLive => {
                self.live_at.get_or_insert_with(|| {
                    (Instant::now(), crate::probe::monotonic_ns(), unix_ms())
                });
            }
            Msg::Snapshot(s) => {
                self.snapshots.insert(s.dev_id, (**s).clone());
            }
            Msg::CaughtUp(t) => self.caught_up_ns = self.caught_up_ns.max(*t),
            Msg::Events(evs) => {
                // Our own snapshots' GET_DEV_INFO calls are not the server's commands (the
                // session ignores them too); a replay would report the ones cut at the end.
                let own = std::process::id();
                for e in evs.iter().filter(|e| e.pid != own) {
                    if let EventKind::Lost { count } = e.kind {
                        self.lost = self.lost.saturating_add(count);
                    }
                    if self.events >= MAX_EVENTS {
                        self.truncated = true;
                        continue;
                    }
                    // A TraceEvent always encodes; a failure would only lose this line.
                    if serde_json::to_writer(&mut self.body, e).is_ok() {
                        self.body.push(b'\n');
                        self.events += 1;
                    }
                }
            }
            _ => {}
        }
    }

    /// The recording is complete for `min` after the probes went live, or will not run
    /// (`probes_settled` and never live). Under load the event stream lags (every event is
    /// decoded in user space): the wait for it is capped at [`BACKLOG_FACTOR`] × `min`, and the
    /// manifest's `duration_ms` then says how much was recorded.
    pub fn recorded_enough(&self, min: Duration, probes_settled: bool) -> bool {
        let min_ns = u64::try_from(min.as_nanos()).unwrap_or(u64::MAX);
        match self.live_at {
            Some((t, start_ns, _)) => {
                self.caught_up_ns >= start_ns.saturating_add(min_ns)
                    || t.elapsed() >= min * BACKLOG_FACTOR
            }
            None => probes_settled,
        }
    }

    /// The recording as `record` writes it, or why there is none.
    fn recording(
        &self,
        kernel: &str,
        dev: Option<u32>,
        why_not: Option<String>,
    ) -> Result<Recording, String> {
        let Some((_, start_ns, start_unix_ms)) = self.live_at else {
            return Err(why_not.unwrap_or_else(|| "the eBPF probes did not run".into()));
        };
        let probes = self
            .probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (release, programs) = probes.unwrap_or_else(|| (kernel.to_string(), Vec::new()));
        let mut header = RecordHeader::new(release);
        header.probes = programs;
        header.start_ns = start_ns;
        header.start_unix_ms = start_unix_ms;
        header.dev_filter = dev;
        let mut jsonl =
            serde_json::to_vec(&header).map_err(|e| format!("encode the header: {e}"))?;
        jsonl.push(b'\n');
        jsonl.extend_from_slice(&self.body);
        Ok(Recording {
            jsonl,
            summary: RecordingSummary {
                events: self.events,
                lost_events: self.lost,
                duration_ms: self.caught_up_ns.saturating_sub(start_ns) / 1_000_000,
                truncated_at: self.truncated.then_some(MAX_EVENTS),
            },
        })
    }
}

/// The observation's sources with `--bundle`: snapshots as usual, and probes that stream
/// every event besides keeping the tag state map.
pub fn start_sources(
    dev: Option<u32>,
    period: Duration,
    no_probes: bool,
    capture: &Capture,
) -> anyhow::Result<Sources> {
    let mut s = Sources::with_readers(dev, period)?;
    if no_probes {
        let _ = s.tx.send(Msg::ProbesOff("--no-probes given".into()));
    } else {
        let h = spawn_probes(
            s.tx.clone(),
            s.ev_tx.clone(),
            dev,
            s.stop.clone(),
            capture.probes.clone(),
        )
        .context("start the probe thread")?;
        // Loading eBPF cannot be interrupted: the command does not wait for it to end.
        s.add_detached(h);
    }
    Ok(s)
}

/// Probe thread: the state map every [`sources::STATE_EVERY`] and every event as it comes (the
/// recording), until stopped. If the probes cannot load or attach, say why once and end.
fn spawn_probes(
    tx: std::sync::mpsc::Sender<Msg>,
    ev_tx: sources::EventSender,
    dev_filter: Option<u32>,
    stop: Stop,
    info: ProbeInfo,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("probes".into())
        .spawn(move || {
            let choice = sources::PerIoChoice {
                mode: sources::PerIo::State,
                note: Some("--bundle records every event".into()),
            };
            if tx.send(Msg::PerIo(choice)).is_err() {
                return;
            }
            let cfg = TracerConfig {
                // As `record`: the issue -> complete latency in `report`.
                block_issue: Some(true),
                ..sources::tracer_config(dev_filter, sources::PerIo::State, true)
            };
            let Some(mut tracer) = sources::start_tracer(&cfg, &tx) else {
                return;
            };
            *info.lock().unwrap_or_else(PoisonError::into_inner) = Some((
                tracer.kernel_release().to_string(),
                tracer.attached().to_vec(),
            ));
            if tx.send(Msg::ProbesLive).is_err() {
                return;
            }
            sources::probe_loop(
                &mut tracer,
                &tx,
                &ev_tx,
                &stop,
                sources::Drain::Streaming,
                |_| true,
            );
        })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What `diagnose` decided, for the bundle.
pub struct Outcome<'a> {
    pub devices: &'a [u32],
    /// `dev N` (the recording's device filter), None for `--all`.
    pub dev: Option<u32>,
    pub observed_ms: u64,
    pub source: &'static str,
    pub source_note: Option<String>,
    pub findings_text: String,
    pub findings_json: String,
}

/// Collect the rest and write the bundle to `dest`; prints one line on stderr.
pub fn write(
    dest: Pending,
    path: &std::path::Path,
    capture: &Capture,
    o: Outcome,
) -> anyhow::Result<()> {
    let (manifest, files) = bundle::assemble(collect_parts(capture, o));
    let root = bundle::root_dir(manifest.created_unix_ms);
    let bytes = bundle::encode(&root, &manifest, &files).context("build the bundle")?;
    dest.commit(&bytes)?;
    let events = manifest.recording.as_ref().map_or_else(
        || "no recording".to_string(),
        |r| format!("{} events recorded", r.events),
    );
    eprintln!(
        "ublk-trace: bundle {}: {} files, {} bytes, {events}, {} item(s) not collected (see MANIFEST.json)",
        path.display(),
        manifest.files.len() + 1,
        bytes.len(),
        manifest.not_collected.len()
    );
    Ok(())
}

/// Everything but the observation: raw files per device, the kernel log, `doctor` (run
/// meanwhile), each under its deadline.
fn collect_parts(capture: &Capture, o: Outcome) -> Parts {
    let kernel = crate::kernel::facts::kernel_release();
    let doctor = deadline::spawn(|| {
        let r = crate::doctor::run();
        let json =
            serde_json::to_string_pretty(&r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        (crate::doctor::render_text(&r), json)
    });
    let mut raw = Vec::new();
    let mut raw_missing = Vec::new();
    let snapshots: Vec<DeviceSnapshot> = o
        .devices
        .iter()
        .filter_map(|d| capture.snapshots.get(d).cloned())
        .collect();
    for s in &snapshots {
        let (r, m) = collect::device(s, Instant::now() + RAW_DEADLINE);
        raw.extend(r);
        raw_missing.extend(m);
    }
    let kmsg = collect::kmsg_tail(Instant::now() + RAW_DEADLINE);
    let doctor = doctor
        .wait(Instant::now() + DOCTOR_DEADLINE)
        .map_err(|t| format!("ublk-trace doctor: {t}"));
    let why_not = o.source_note.clone();
    Parts {
        meta: Meta {
            kernel: kernel.clone(),
            created_unix_ms: unix_ms(),
            command_line: std::env::args().collect(),
            devices: o.devices.to_vec(),
            observed_ms: o.observed_ms,
            source: o.source.to_string(),
            source_note: o.source_note,
        },
        findings_text: o.findings_text,
        findings_json: o.findings_json,
        doctor: Some(doctor),
        snapshots,
        raw,
        raw_missing,
        kmsg: Some(kmsg),
        recording: Some(capture.recording(&kernel, o.dev, why_not)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TraceEvent;

    fn ev(ts_ns: u64, kind: EventKind) -> TraceEvent {
        TraceEvent {
            ts_ns,
            pid: 7,
            tid: 8,
            comm: "ublk-q0".into(),
            kind,
        }
    }

    #[test]
    fn captured_events_replay_as_a_recording() {
        let mut c = Capture::default();
        assert!(
            !c.recorded_enough(Duration::ZERO, false),
            "probes not settled yet"
        );
        assert!(
            c.recorded_enough(Duration::ZERO, true),
            "probes off: nothing to wait for"
        );
        assert!(
            c.recording("6.12", Some(0), Some("no kprobes".into()))
                .is_err_and(|e| e == "no kprobes")
        );
        c.observe(&Msg::ProbesLive);
        let mut ours = ev(2, EventKind::Lost { count: 0 });
        ours.pid = std::process::id();
        c.observe(&Msg::Events(vec![
            ours,
            ev(
                1,
                EventKind::Delivered {
                    dev_id: 0,
                    q_id: 0,
                    tag: 1,
                },
            ),
            ev(2, EventKind::Lost { count: 3 }),
        ]));
        c.observe(&Msg::Snapshot(Box::new(DeviceSnapshot {
            dev_id: 4,
            ..Default::default()
        })));
        assert!(c.recorded_enough(Duration::ZERO, true));
        let start_ns = c.live_at.map_or(0, |l| l.1);
        let hour = Duration::from_secs(3600);
        assert!(
            !c.recorded_enough(hour, true),
            "the stream is not an hour ahead"
        );
        c.observe(&Msg::CaughtUp(start_ns + 3600 * 1_000_000_000));
        assert!(
            c.recorded_enough(hour, true),
            "caught up an hour past the start"
        );
        let r = c.recording("6.12", Some(0), None).expect("recording");
        assert_eq!(r.summary.events, 2);
        assert_eq!(r.summary.lost_events, 3);
        assert_eq!(r.summary.truncated_at, None);
        assert_eq!(r.summary.duration_ms, 3_600_000);
        let reader = crate::record::JsonlReader::new("mem".into(), &r.jsonl[..]).expect("header");
        assert_eq!(reader.header().kernel, "6.12");
        assert_eq!(reader.header().dev_filter, Some(0));
        let events: Vec<_> = reader.collect::<Result<_, _>>().expect("events");
        assert_eq!(events.len(), 2);
        assert!(c.snapshots.contains_key(&4));
    }

    #[test]
    fn capture_stops_keeping_events_at_the_cap() {
        let mut c = Capture::default();
        c.observe(&Msg::ProbesLive);
        c.events = MAX_EVENTS;
        c.observe(&Msg::Events(vec![ev(
            1,
            EventKind::Delivered {
                dev_id: 0,
                q_id: 0,
                tag: 1,
            },
        )]));
        let r = c.recording("k", None, None).expect("recording");
        assert_eq!(r.summary.truncated_at, Some(MAX_EVENTS));
    }
}
