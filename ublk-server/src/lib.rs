//! A reference ublk server: null, ramdisk and loop targets, a published per-tag state for
//! `ublk-trace`, and fault injection to reproduce broken servers on purpose.
//!
//! Modules: [`ctrl`] (/dev/ublk-control), [`queue`] (one thread + io_uring per queue),
//! [`batch`] (UBLK_F_BATCH_IO's per-queue commands),
//! [`target`] (what a request does), [`tagstate`] (the published state file), [`inject`]
//! (faults), [`server`] (bring-up and teardown order), [`admin`] (list/info/del/features).

pub mod admin;
pub mod batch;
pub mod ctrl;
pub mod error;
pub mod inject;
pub mod queue;
pub mod server;
pub mod tagstate;
pub mod target;

#[cfg(test)]
mod schema_tests;

pub use error::{Error, Result};

/// The system page size (the unit of the io-descriptor mmap).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}
