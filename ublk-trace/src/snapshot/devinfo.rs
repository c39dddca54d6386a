//! GET_DEV_INFO, the only control command the snapshot sends (never one that takes
//! `ub->mutex`). The control client lives in `kernel::ctrl`; this is the one place that calls it.
use std::time::Instant;

use super::{DevInfo, SourceError, deadline};
use crate::kernel::ctrl::{self, CtrlError};

/// Start GET_DEV_INFO for `dev_id` on a helper thread; [`finish`] collects it.
pub fn start(dev_id: u32, until: Instant) -> deadline::Pending<Result<ctrl::DevInfo, CtrlError>> {
    let left = until.saturating_duration_since(Instant::now());
    // The client has its own deadline; the helper thread also bounds opening the device.
    deadline::spawn(move || {
        crate::selfcost::charge(crate::selfcost::Part::DevInfo, || {
            ctrl::get_dev_info(dev_id, left)
        })
    })
}

/// Ask the kernel for device `dev_id`'s info, giving up at `deadline` (a timeout is recorded
/// as evidence: the control path is blocked).
pub fn query(dev_id: u32, until: Instant) -> Result<DevInfo, SourceError> {
    finish(start(dev_id, until), until)
}

/// Collect a query started with [`start`].
pub fn finish(
    p: deadline::Pending<Result<ctrl::DevInfo, CtrlError>>,
    until: Instant,
) -> Result<DevInfo, SourceError> {
    let res = p.wait(until);
    let err = |detail: String, timed_out: bool| SourceError {
        source: "GET_DEV_INFO".into(),
        detail,
        timed_out,
    };
    match res {
        Ok(Ok(i)) => Ok(DevInfo {
            state: i.state,
            ublksrv_pid: i.ublksrv_pid,
            nr_hw_queues: i.nr_hw_queues,
            queue_depth: i.queue_depth,
            flags: i.flags,
            max_io_buf_bytes: i.max_io_buf_bytes,
        }),
        Ok(Err(e @ CtrlError::Timeout { .. })) => Err(err(e.to_string(), true)),
        Ok(Err(e)) => Err(err(e.to_string(), false)),
        Err(t) => Err(err(t.to_string(), true)),
    }
}
