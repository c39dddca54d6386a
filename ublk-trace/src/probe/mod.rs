//! Load the eBPF programs, attach them, and turn ring-buffer records into typed events.
pub mod status;

pub use status::ProbeStatus;
