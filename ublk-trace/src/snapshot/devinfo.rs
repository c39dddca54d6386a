//! GET_DEV_INFO, the only control command the snapshot sends (never one that takes
//! `ub->mutex`). The control client lives in `kernel::ctrl`; this is the one place that calls it.
use std::time::Instant;

use super::{DevInfo, SourceError};

/// Ask the kernel for device `dev_id`'s info, giving up at `deadline`.
pub fn query(dev_id: u32, deadline: Instant) -> Result<DevInfo, SourceError> {
    let _ = (dev_id, deadline);
    Err(SourceError {
        source: "GET_DEV_INFO".into(),
        detail: "the read-only control client is not built into this ublk-trace yet".into(),
        timed_out: false,
    })
}
