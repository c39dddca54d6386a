//! Types shared by the three sides of the toolkit, `no_std` so the eBPF programs can use them:
//! - [`tagstate`]: the per-tag state file that `ublk-server` publishes and `ublk-trace` reads.
//! - [`event`]: the raw ring-buffer record the eBPF programs write, map names and counters.
//! - [`offsets`]: kernel structure offsets passed to the eBPF programs as a global.
//! - [`tagmap`]: the in-kernel per-tag state map (watch's state path).
//! - [`latmap`]: the in-kernel per-queue latency histograms (watch's light path).
//! - [`civil`]: calendar dates from Unix time.
#![no_std]

pub mod civil;
pub mod event;
pub mod latmap;
pub mod offsets;
pub mod tagmap;
pub mod tagstate;

#[cfg(any(feature = "logging", feature = "gen"))]
extern crate std;
#[cfg(feature = "gen")]
pub mod docgen;
#[cfg(feature = "logging")]
pub mod logging;
