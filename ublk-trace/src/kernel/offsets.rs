//! Fill the eBPF programs' [`Offsets`] global from BTF: vmlinux for core structs, the
//! module's split BTF for ublk's own (`ublk_device`, `ublk_queue`) and its UAPI structs.
//!
//! The UAPI structs (`ublksrv_ctrl_cmd`, `ublksrv_io_cmd`) have fixed layouts, so their
//! offsets fall back to the header's values when the module BTF is absent (module not
//! loaded yet). Everything else is looked up, never assumed: 7.3 moved
//! `io_uring_cmd.cmd_op` from 24 to 16, and `blk_mq_hw_ctx.queue_num` is 340 in the Debian
//! guests but 364 on this project's host.

use std::collections::BTreeMap;

use ublk_trace_common::offsets::{NO_OFFSET, Offsets};

use super::btf::Btf;

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Btf,
    /// The UAPI header's fixed value (module BTF absent).
    Uapi,
    Missing,
}

/// One resolved field, for `doctor` and logs.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct Entry {
    /// `struct.member.path` as looked up.
    pub name: String,
    pub value: Option<u32>,
    pub source: Source,
    /// Needed for the core events (commands, requests); optional ones only enrich them.
    pub required: bool,
}

/// The resolved offsets plus the names of block request ops.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub offsets: Offsets,
    pub entries: Vec<Entry>,
    /// `REQ_OP_*` number -> name without the prefix (`READ`), from BTF `enum req_op`.
    pub req_ops: BTreeMap<u32, String>,
}

impl Resolution {
    /// Required entries that could not be resolved.
    pub fn missing_required(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| e.required && e.value.is_none())
            .map(|e| e.name.as_str())
            .collect()
    }

    /// Name of a block op from `cmd_flags` (low 8 bits, `REQ_OP_MASK`).
    pub fn req_op_name(&self, cmd_flags: u32) -> String {
        let op = cmd_flags & 0xff;
        match self.req_ops.get(&op) {
            Some(n) => n.clone(),
            None => fallback_req_op_name(op).to_string(),
        }
    }
}

/// The `enum req_op` numbers that have been stable since 4.10 (used when BTF lacks the enum).
pub fn fallback_req_op_name(op: u32) -> &'static str {
    match op {
        0 => "READ",
        1 => "WRITE",
        2 => "FLUSH",
        3 => "DISCARD",
        5 => "SECURE_ERASE",
        9 => "WRITE_ZEROES",
        34 => "DRV_IN",
        35 => "DRV_OUT",
        _ => "UNKNOWN",
    }
}

struct Resolver<'a> {
    btf: &'a Btf,
    entries: Vec<Entry>,
}

impl Resolver<'_> {
    /// Look `ty.path` up; `uapi` is the header value used when BTF does not have it.
    fn get(&mut self, ty: &str, path: &str, required: bool, uapi: Option<u32>) -> u32 {
        let (value, source) = match self.btf.member_offset(ty, path) {
            Ok(v) => (Some(v), Source::Btf),
            Err(e) => {
                log::debug!("BTF {ty}.{path}: {e}");
                match uapi {
                    Some(v) => (Some(v), Source::Uapi),
                    None => (None, Source::Missing),
                }
            }
        };
        self.entries.push(Entry {
            name: format!("{ty}.{path}"),
            value,
            source,
            required,
        });
        value.unwrap_or(NO_OFFSET)
    }
}

/// Resolve every offset. `btf` should hold vmlinux plus, when loaded, `ublk_drv`'s split BTF.
pub fn resolve(btf: &Btf) -> Resolution {
    let mut r = Resolver {
        btf,
        entries: Vec::new(),
    };
    let mut o = Offsets::UNSET;
    o.uc_file = r.get("io_uring_cmd", "file", true, None);
    if btf.member_offset("io_uring_cmd", "sqe").is_ok() {
        o.uc_sqe = r.get("io_uring_cmd", "sqe", true, None);
        // The 80-byte command area of an SQE128 is UAPI (include/uapi/linux/io_uring.h).
        o.sqe_cmd = r.get("io_uring_sqe", "cmd", true, Some(48));
    } else {
        // Older kernels (6.1) keep `const void *cmd`, the address of the SQE's command area
        // itself: the programs' "SQE + sqe_cmd" step is then "+ 0".
        o.uc_sqe = r.get("io_uring_cmd", "cmd", true, None);
        o.sqe_cmd = 0;
        r.entries.push(Entry {
            name: "io_uring_cmd.cmd points at the command area (no io_uring_cmd.sqe)".into(),
            value: Some(0),
            source: Source::Btf,
            required: true,
        });
    }
    o.uc_cmd_op = r.get("io_uring_cmd", "cmd_op", true, None);
    o.uc_pdu = r.get("io_uring_cmd", "pdu", false, None);
    o.file_private_data = r.get("file", "private_data", true, None);
    o.ctrl_dev_id = r.get("ublksrv_ctrl_cmd", "dev_id", true, Some(0));
    o.ctrl_queue_id = r.get("ublksrv_ctrl_cmd", "queue_id", true, Some(4));
    o.ctrl_data = r.get("ublksrv_ctrl_cmd", "data", true, Some(16));
    o.io_q_id = r.get("ublksrv_io_cmd", "q_id", true, Some(0));
    o.io_tag = r.get("ublksrv_io_cmd", "tag", true, Some(2));
    o.io_result = r.get("ublksrv_io_cmd", "result", true, Some(4));
    o.io_addr = r.get("ublksrv_io_cmd", "addr", true, Some(8));
    // Driver-internal: only the module's BTF knows it; without it events carry dev_id u32::MAX.
    o.ub_dev_id = r.get("ublk_device", "dev_info.dev_id", false, None);
    o.ubq_q_id = r.get("ublk_queue", "q_id", false, None);
    o.ubq_dev = r.get("ublk_queue", "dev", false, None);
    o.pdu_ubq = r.get("ublk_uring_cmd_pdu", "ubq", false, None);
    o.hctx_queue_num = r.get("blk_mq_hw_ctx", "queue_num", true, None);
    o.bd_rq = r.get("blk_mq_queue_data", "rq", true, None);
    o.rq_q = r.get("request", "q", true, None);
    o.rq_mq_hctx = r.get("request", "mq_hctx", true, None);
    o.rq_cmd_flags = r.get("request", "cmd_flags", true, None);
    o.rq_tag = r.get("request", "tag", true, None);
    o.rq_data_len = r.get("request", "__data_len", true, None);
    o.rq_sector = r.get("request", "__sector", true, None);
    o.rq_next = r.get("request", "rq_next", false, None);
    o.rq_start_time_ns = r.get("request", "start_time_ns", false, None);
    o.q_tag_set = r.get("request_queue", "tag_set", true, None);
    o.set_driver_data = r.get("blk_mq_tag_set", "driver_data", true, None);
    o.q_disk = r.get("request_queue", "disk", true, None);
    o.disk_name = r.get("gendisk", "disk_name", true, None);
    // UBLK_F_BATCH_IO (7.0+): the element buffer's address is the SQE's `addr` (UAPI, 16),
    // the command area is `struct ublk_batch_io`, each element starts with a
    // `struct ublk_elem_header`. Only kernels that have the mode have the structs.
    o.sqe_addr = r.get("io_uring_sqe", "addr", false, Some(16));
    o.batch_flags = r.get("ublk_batch_io", "flags", false, None);
    o.batch_nr_elem = r.get("ublk_batch_io", "nr_elem", false, None);
    o.batch_elem_bytes = r.get("ublk_batch_io", "elem_bytes", false, None);
    o.elem_tag = r.get("ublk_elem_header", "tag", false, None);
    o.elem_result = r.get("ublk_elem_header", "result", false, None);
    // struct rq_list exists from 6.13; before, ->queue_rqs took a `struct request **`.
    o.rq_list_head = r.get("rq_list", "head", false, None);
    let cancel = btf.enum_value("io_uring_cmd_flags", "IO_URING_F_CANCEL");
    // An enum without the value is a kernel without cancel commands (before 6.7): no bit.
    let enum_known = btf.enum_values("io_uring_cmd_flags").is_some();
    // 1 << 11 since the flag was added (6.7); used only if the enum is not in BTF.
    o.issue_flag_cancel = match cancel.and_then(|v| u32::try_from(v).ok()) {
        Some(v) => v,
        None if enum_known => 0,
        None => 1 << 11,
    };
    r.entries.push(Entry {
        name: "enum io_uring_cmd_flags.IO_URING_F_CANCEL".into(),
        value: (o.issue_flag_cancel != 0).then_some(o.issue_flag_cancel),
        source: match (cancel.is_some(), enum_known) {
            (true, _) => Source::Btf,
            (false, true) => Source::Missing,
            (false, false) => Source::Uapi,
        },
        required: false,
    });
    let dispatch = btf.param_index("ublk_dispatch_req", "req").ok();
    o.dispatch_req_arg = dispatch.unwrap_or(NO_OFFSET);
    r.entries.push(Entry {
        name: "ublk_dispatch_req(req) argument index".into(),
        value: dispatch,
        source: if dispatch.is_some() {
            Source::Btf
        } else {
            Source::Missing
        },
        required: false,
    });
    let req_ops = btf
        .enum_values("req_op")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, v)| {
            let short = name.strip_prefix("REQ_OP_")?.to_string();
            Some((u32::try_from(v).ok()?, short))
        })
        .filter(|(_, n)| n != "LAST")
        .collect();
    Resolution {
        offsets: o,
        entries: r.entries,
        req_ops,
    }
}

/// Load vmlinux BTF plus `ublk_drv`'s split BTF when the module is loaded. The second value
/// says whether the module BTF was there.
pub fn load_kernel_btf() -> Result<(std::sync::Arc<Btf>, bool), super::btf::BtfError> {
    // Parsed once per process: the probes and the driver-state reader start side by side and
    // both need it (seconds of parsing each in an emulated guest). Kept only once the module's
    // BTF is in: ublk_drv may be loaded later.
    static SHARED: std::sync::Mutex<Option<std::sync::Arc<Btf>>> = std::sync::Mutex::new(None);
    let mut shared = SHARED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(b) = shared.as_ref() {
        return Ok((b.clone(), true));
    }
    let mut btf = Btf::from_file(super::btf::VMLINUX_PATH)?;
    let module = super::btf::module_path("ublk_drv");
    let has_module = match btf.add_split_file(&module) {
        Ok(()) => true,
        Err(e) => {
            log::info!("no ublk_drv BTF ({e}); UAPI offsets fall back to the header's values");
            false
        }
    };
    let btf = std::sync::Arc::new(btf);
    if has_module {
        *shared = Some(btf.clone());
    }
    Ok((btf, has_module))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_vmlinux_resolves_core_offsets_and_uapi_fallbacks() {
        let Ok(btf) = Btf::from_file(super::super::btf::VMLINUX_PATH) else {
            eprintln!("SKIP: no vmlinux BTF on this host");
            return;
        };
        let r = resolve(&btf);
        let o = r.offsets;
        assert_eq!(
            (o.rq_cmd_flags, o.rq_tag, o.rq_data_len, o.rq_sector),
            (24, 32, 44, 48)
        );
        assert_eq!((o.uc_sqe, o.sqe_cmd), (8, 48));
        // This host has no ublk_drv: the UAPI offsets come from the header, marked as such.
        let tag = r
            .entries
            .iter()
            .find(|e| e.name == "ublksrv_io_cmd.tag")
            .expect("entry listed");
        assert_eq!((tag.value, tag.source), (Some(2), Source::Uapi));
        assert_eq!(o.ub_dev_id, NO_OFFSET);
        assert_eq!(o.issue_flag_cancel, 1 << 11);
        assert_eq!(r.req_op_name(0x8801), "WRITE");
        assert_eq!(r.req_op_name(0x800), "READ");
        assert_eq!(r.req_op_name(9), "WRITE_ZEROES");
        assert!(
            r.missing_required().is_empty(),
            "{:?}",
            r.missing_required()
        );
    }
}
