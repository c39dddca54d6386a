//! Types shared by the three sides of the toolkit, `no_std` so the eBPF programs can use them:
//! - [`tagstate`]: the per-tag state file that `ublk-server` publishes and `ublk-trace` reads.
#![no_std]

pub mod tagstate;
