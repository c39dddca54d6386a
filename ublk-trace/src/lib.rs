//! ublk-trace: where every ublk request is, and why it is stuck.
//!
//! Data flow (see README "Architecture"):
//! kernel -> `probe` (eBPF) -> [`event::TraceEvent`] --+
//! sysfs/debugfs/procfs/ublk-control -> `snapshot` -----+-> `model` -> `diagnose` -> `tui` | JSON | `report`
//! recorded JSON lines (`record`) ------------------------+
//! `model` and `diagnose` are pure: no I/O, no clock (time is a parameter).
pub mod bundle;
pub mod clock;
pub mod cmd;
pub mod diagnose;
pub mod doctor;
pub mod driver;
pub mod event;
pub mod kernel;
pub mod model;
pub mod probe;
pub mod record;
pub mod report;
#[cfg(test)]
mod schema_tests;
pub mod selfcost;
pub mod snapshot;
pub mod tui;
