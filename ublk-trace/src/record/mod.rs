//! Recordings: JSON lines (the replayable format) and a Perfetto/Chrome trace export.
//!
//! JSON-lines layout, one JSON object per line:
//! ```text
//! {"kind":"ublk-trace.recording","version":1,"schema":"ublk-trace-record","schema_version":1,"kernel":...}   header
//! {"ts_ns":123,"pid":1,"tid":1,"event":"ctrl_start",...}                                  TraceEvent
//! ...
//! ```
//! The header is [`RecordHeader`]; every following line is `serde_json` of
//! [`TraceEvent`](crate::event::TraceEvent) (its schema is
//! [`EVENT_SCHEMA_VERSION`](crate::event::EVENT_SCHEMA_VERSION)). Lost events appear in the
//! stream as `{"event":"lost","count":N}` where the gap is. Timestamps are CLOCK_MONOTONIC ns.
//!
//! Readers: [`read_jsonl`] (whole file) or [`JsonlReader`] (streaming).
pub mod jsonl;
pub mod perfetto;

pub use jsonl::{JsonlReader, JsonlWriter, RecordError, RecordHeader, SCHEMA_NAME, read_jsonl};
