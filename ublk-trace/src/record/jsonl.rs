//! The JSON-lines recording format: header line, then one `TraceEvent` per line.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::event::{EVENT_SCHEMA_VERSION, TraceEvent};
use crate::probe::ProbeStatus;

/// Value of the header's `schema` field: tells a recording from any other JSON lines.
pub const SCHEMA_NAME: &str = "ublk-trace-record";

/// `kind` of a recording's header line (schema: docs/schema/record-header.schema.json).
pub const RECORDING_KIND: &str = "ublk-trace.recording";

/// First line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct RecordHeader {
    /// Always [`RECORDING_KIND`], as in every ublk-trace document (empty when read from a
    /// recording of an older build, which wrote only `schema`).
    #[serde(default)]
    pub kind: String,
    /// The header's version: bumped when a field changes meaning or goes away (0 when read
    /// from an older build's recording).
    #[serde(default)]
    pub version: u32,
    /// Always [`SCHEMA_NAME`] (what readers check: older recordings have no `kind`).
    pub schema: String,
    /// [`EVENT_SCHEMA_VERSION`] of the events that follow.
    pub schema_version: u32,
    /// `uname -r` of the traced kernel.
    pub kernel: String,
    /// CLOCK_MONOTONIC ns when recording started (events' clock).
    #[serde(default)]
    pub start_ns: u64,
    /// Wall-clock ms since the Unix epoch when recording started (for humans only).
    #[serde(default)]
    pub start_unix_ms: u64,
    /// `--dev` filter, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_filter: Option<u32>,
    /// Every program and whether it attached.
    #[serde(default)]
    pub probes: Vec<ProbeStatus>,
}

impl RecordHeader {
    pub fn new(kernel: String) -> Self {
        Self {
            kind: RECORDING_KIND.to_string(),
            version: 1,
            schema: SCHEMA_NAME.to_string(),
            schema_version: EVENT_SCHEMA_VERSION,
            kernel,
            start_ns: 0,
            start_unix_ms: 0,
            dev_filter: None,
            probes: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: not a ublk-trace recording header ({reason}); record one with 'ublk-trace record -o FILE'"
    )]
    BadHeader {
        path: String,
        line: usize,
        reason: String,
    },
    #[error(
        "{path}: schema version {found} is newer than this ublk-trace understands ({EVENT_SCHEMA_VERSION}); upgrade ublk-trace"
    )]
    Version { path: String, found: u32 },
    #[error("{path}:{line}: bad event: {reason}")]
    BadEvent {
        path: String,
        line: usize,
        reason: String,
    },
}

/// Streaming reader: the header is read on open, events on iteration.
pub struct JsonlReader<R> {
    path: String,
    lines: std::io::Lines<R>,
    line_no: usize,
    header: RecordHeader,
}

impl JsonlReader<BufReader<File>> {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RecordError> {
        let p = path.as_ref().display().to_string();
        let f = File::open(path.as_ref()).map_err(|source| RecordError::Io {
            path: p.clone(),
            source,
        })?;
        Self::new(p, BufReader::new(f))
    }
}

impl<R: BufRead> JsonlReader<R> {
    /// `path` only labels errors.
    pub fn new(path: String, reader: R) -> Result<Self, RecordError> {
        let mut lines = reader.lines();
        let mut line_no = 0;
        let first = loop {
            line_no += 1;
            match lines.next() {
                None => {
                    return Err(RecordError::BadHeader {
                        path,
                        line: line_no,
                        reason: "empty file".into(),
                    });
                }
                Some(Err(source)) => return Err(RecordError::Io { path, source }),
                Some(Ok(l)) if l.trim().is_empty() => continue,
                Some(Ok(l)) => break l,
            }
        };
        let header: RecordHeader =
            serde_json::from_str(&first).map_err(|e| RecordError::BadHeader {
                path: path.clone(),
                line: line_no,
                reason: e.to_string(),
            })?;
        if header.schema != SCHEMA_NAME {
            return Err(RecordError::BadHeader {
                path,
                line: line_no,
                reason: format!("schema is '{}'", header.schema),
            });
        }
        if header.schema_version > EVENT_SCHEMA_VERSION {
            return Err(RecordError::Version {
                path,
                found: header.schema_version,
            });
        }
        Ok(Self {
            path,
            lines,
            line_no,
            header,
        })
    }

    pub fn header(&self) -> &RecordHeader {
        &self.header
    }
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = Result<TraceEvent, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line_no += 1;
            let line = match self.lines.next()? {
                Ok(l) => l,
                Err(source) => {
                    return Some(Err(RecordError::Io {
                        path: self.path.clone(),
                        source,
                    }));
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str(&line).map_err(|e| RecordError::BadEvent {
                    path: self.path.clone(),
                    line: self.line_no,
                    reason: e.to_string(),
                }),
            );
        }
    }
}

/// Read a whole recording: its header and every event (stops at the first bad line).
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<(RecordHeader, Vec<TraceEvent>), RecordError> {
    let reader = JsonlReader::open(path)?;
    let header = reader.header().clone();
    let events = reader.collect::<Result<Vec<_>, _>>()?;
    Ok((header, events))
}

/// Writes the header on creation and one event per line; [`JsonlWriter::finish`] flushes.
pub struct JsonlWriter<W: Write> {
    out: W,
    events: u64,
}

impl JsonlWriter<BufWriter<File>> {
    pub fn create(path: impl AsRef<Path>, header: &RecordHeader) -> std::io::Result<Self> {
        Self::new(BufWriter::new(File::create(path)?), header)
    }
}

impl<W: Write> JsonlWriter<W> {
    pub fn new(mut out: W, header: &RecordHeader) -> std::io::Result<Self> {
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        Ok(Self { out, events: 0 })
    }

    pub fn write(&mut self, ev: &TraceEvent) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, ev)?;
        self.out.write_all(b"\n")?;
        self.events += 1;
        Ok(())
    }

    /// Events written so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn ev(ts_ns: u64, kind: EventKind) -> TraceEvent {
        TraceEvent {
            ts_ns,
            pid: 10,
            tid: 11,
            comm: "ublk-server".into(),
            kind,
        }
    }

    fn sample() -> Vec<TraceEvent> {
        vec![
            ev(
                1,
                EventKind::CtrlStart {
                    dev_id: u32::MAX,
                    cmd_op: 0xc020_7504,
                    op: "ADD_DEV".into(),
                    queue_id: u16::MAX,
                    data0: 0,
                },
            ),
            ev(2, EventKind::Lost { count: 3 }),
            ev(
                3,
                EventKind::IoCmdDone {
                    dev_id: 0,
                    q_id: 1,
                    tag: 2,
                    cmd_op: 0xc010_7520,
                    op: "FETCH_REQ".into(),
                    ret: -529,
                    cancel: false,
                },
            ),
        ]
    }

    #[test]
    fn round_trip_header_and_events() {
        let mut h = RecordHeader::new("6.12.95".into());
        h.dev_filter = Some(0);
        h.probes.push(ProbeStatus {
            program: "ctrl_enter".into(),
            target: "ublk_ctrl_uring_cmd".into(),
            attached: true,
            required: true,
            error: String::new(),
        });
        let mut w = JsonlWriter::new(Vec::new(), &h).expect("write to memory");
        for e in sample() {
            w.write(&e).expect("write to memory");
        }
        assert_eq!(w.events(), 3);
        let bytes = w.finish().expect("flush");
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert_eq!(text.lines().count(), 4);
        assert!(
            text.lines()
                .next()
                .is_some_and(|l| l.contains("\"schema_version\":1"))
        );
        let r = JsonlReader::new("mem".into(), &bytes[..]).expect("header parses");
        assert_eq!(r.header(), &h);
        let back: Vec<TraceEvent> = r.collect::<Result<_, _>>().expect("events parse");
        assert_eq!(back, sample());
    }

    #[test]
    fn rejects_foreign_files_and_names_the_line() {
        let e = JsonlReader::new("x".into(), &b"{\"a\":1}\n"[..]).err();
        assert!(
            matches!(e, Some(RecordError::BadHeader { line: 1, .. })),
            "{e:?}"
        );
        let e = JsonlReader::new("x".into(), &b""[..]).err();
        assert!(matches!(e, Some(RecordError::BadHeader { .. })));
        let mut newer = RecordHeader::new("k".into());
        newer.schema_version = EVENT_SCHEMA_VERSION + 1;
        let line = serde_json::to_string(&newer).expect("serializes");
        let e = JsonlReader::new("x".into(), line.as_bytes()).err();
        assert!(matches!(e, Some(RecordError::Version { .. })));
        let h = serde_json::to_string(&RecordHeader::new("k".into())).expect("serializes");
        let text = format!("{h}\n\n{{\"ts_ns\":1}}\n");
        let mut r = JsonlReader::new("x".into(), text.as_bytes()).expect("header ok");
        assert!(matches!(
            r.next(),
            Some(Err(RecordError::BadEvent { line: 3, .. }))
        ));
    }

    #[test]
    fn read_jsonl_from_a_file() {
        let dir = std::env::temp_dir().join(format!("ublk-trace-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("r.jsonl");
        let mut w = JsonlWriter::create(&path, &RecordHeader::new("k".into())).expect("create");
        for e in sample() {
            w.write(&e).expect("write");
        }
        w.finish().expect("flush");
        let (h, evs) = read_jsonl(&path).expect("reads back");
        assert_eq!(h.kernel, "k");
        assert_eq!(evs.len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
