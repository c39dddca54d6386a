//! Helpers for ublk-trace's guest tests: locate binaries, spawn with deadlines, wait for a
//! ready line (the shared ones are `ublk-testkit`'s). Every wait is bounded: a hung device
//! must fail a test, not hang the guest.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;

pub use ublk_testkit::child::{line_channel, signal, wait_line, wait_timeout};

/// A project binary: `$UBLK_TEST_BIN_DIR/<name>` in the guest, else the cargo build next to us.
pub fn bin(name: &str) -> PathBuf {
    ublk_testkit::bins::project_bin(name, env!("CARGO_BIN_EXE_ublk-trace"))
}
