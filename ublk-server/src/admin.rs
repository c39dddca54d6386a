//! `list`, `info`, `del`, `features`: control-plane queries and cleanup.

use std::fmt::Write as _;

use ublk_abi::*;

use crate::ctrl::{Ctrl, params_basic_devt};
use crate::error::{Error, Result};

/// One line per device.
pub fn list(ctrl: &mut Ctrl) -> Result<String> {
    let mut out = String::new();
    for id in Ctrl::list_ids() {
        match ctrl.get_dev_info(id) {
            Ok(i) => {
                let _ = writeln!(
                    out,
                    "dev {id}: state {} queues {} depth {} pid {} flags {:#x}",
                    dev_state_name(i.state),
                    i.nr_hw_queues,
                    i.queue_depth,
                    i.ublksrv_pid,
                    i.flags
                );
            }
            Err(e) => {
                let _ = writeln!(out, "dev {id}: {e}");
            }
        }
    }
    Ok(out)
}

/// `kind` of `info --json` (schema: docs/schema/ublk-server-info.schema.json).
pub const INFO_KIND: &str = "ublk-server.info";

/// `info --json`: GET_DEV_INFO, and GET_PARAMS when the device is LIVE. kind/version as in
/// every ublk-trace document; bump the version when a field changes meaning or goes away.
#[derive(Debug, serde::Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct InfoJson {
    /// Always `ublk-server.info`.
    pub kind: &'static str,
    pub version: u32,
    pub dev_id: u32,
    /// `UBLK_S_DEV_*` by name: LIVE, DEAD, QUIESCED, FAIL_IO.
    pub state: &'static str,
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    pub max_io_buf_bytes: u32,
    /// As GET_DEV_INFO gives it: in the caller's pid namespace on 7.x, -1 when invisible.
    pub ublksrv_pid: i32,
    /// `UBLK_F_*` of the device, and their names.
    pub flags: u64,
    pub features: Vec<&'static str>,
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// From GET_PARAMS, sent only to a LIVE device (null otherwise): 512-byte sectors.
    pub dev_sectors: Option<u64>,
    pub logical_block_size: Option<u32>,
    /// `major:minor` of /dev/ublkbN.
    pub disk: Option<String>,
    /// CPUs of each queue (GET_QUEUE_AFFINITY; empty when it failed).
    pub queue_affinity: Vec<Vec<usize>>,
}

/// Human or JSON description of one device.
pub fn info(ctrl: &mut Ctrl, dev_id: u32, as_json: bool) -> Result<String> {
    let i = ctrl.get_dev_info(dev_id)?;
    // GET_PARAMS takes the device mutex; a device that is not LIVE may be mid-teardown.
    let params = if i.state == UBLK_S_DEV_LIVE {
        ctrl.get_params(dev_id)
            .ok()
            .and_then(|b| params_basic_devt(&b))
    } else {
        None
    };
    let affinity: Vec<Vec<usize>> = (0..i.nr_hw_queues)
        .map(|q| ctrl.get_queue_affinity(dev_id, q).unwrap_or_default())
        .collect();
    let features: Vec<&str> = feature_names(i.flags).collect();
    if as_json {
        let v = InfoJson {
            kind: INFO_KIND,
            version: 1,
            dev_id: i.dev_id,
            state: dev_state_name(i.state),
            nr_hw_queues: i.nr_hw_queues,
            queue_depth: i.queue_depth,
            max_io_buf_bytes: i.max_io_buf_bytes,
            ublksrv_pid: i.ublksrv_pid,
            flags: i.flags,
            features,
            owner_uid: i.owner_uid,
            owner_gid: i.owner_gid,
            dev_sectors: params.map(|(b, _)| b.dev_sectors),
            logical_block_size: params.map(|(b, _)| 1u32 << b.logical_bs_shift.min(31)),
            disk: params.map(|(_, d)| format!("{}:{}", d.disk_major, d.disk_minor)),
            queue_affinity: affinity,
        };
        return serde_json::to_string_pretty(&v)
            .map_err(|e| Error::io("encode JSON", std::io::Error::other(e)));
    }
    let mut out = String::new();
    let _ = writeln!(out, "dev {}: state {}", i.dev_id, dev_state_name(i.state));
    let _ = writeln!(
        out,
        "  queues {} depth {} max_io_buf_bytes {} pid {}",
        i.nr_hw_queues, i.queue_depth, i.max_io_buf_bytes, i.ublksrv_pid
    );
    let _ = writeln!(out, "  flags {:#x} [{}]", i.flags, features.join(" "));
    if let Some((b, d)) = params {
        let _ = writeln!(
            out,
            "  size {} bytes, logical block {}, disk {}:{}",
            b.dev_sectors << 9,
            1u32 << b.logical_bs_shift.min(31),
            d.disk_major,
            d.disk_minor
        );
    }
    for (q, cpus) in affinity.iter().enumerate() {
        let _ = writeln!(out, "  queue {q} cpus {cpus:?}");
    }
    Ok(out)
}

/// Delete one device or all. A device whose server still runs is stopped first by DEL_DEV.
pub fn del(ctrl: &mut Ctrl, ids: &[u32]) -> Result<()> {
    for &id in ids {
        ctrl.del_dev(id)?;
        log::info!("deleted dev {id}");
    }
    Ok(())
}

/// Kernel features, one per line.
pub fn features(ctrl: &Ctrl) -> String {
    let mut out = format!("features {:#x}\n", ctrl.features);
    if ctrl.legacy {
        // Indented with no flag in the second column: `kernel_has` never matches it.
        let _ = writeln!(
            out,
            "  (this kernel answers no GET_FEATURES: ublk before Linux 6.5; {})",
            crate::ctrl::LEGACY_NOTE
        );
    }
    for (bit, name) in FEATURES {
        if ctrl.features & bit != 0 {
            let _ = writeln!(out, "  {bit:#08x} {name}");
        }
    }
    let unknown = unknown_features(ctrl.features);
    if unknown != 0 {
        let _ = writeln!(out, "  {unknown:#x} (unknown to this build)");
    }
    out
}
