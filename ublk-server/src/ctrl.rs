//! `/dev/ublk-control`: control commands over an io_uring with 128-byte SQEs (URING_CMD).
//!
//! Commands are built as values ([`CtrlCmd`]) and submitted separately, so the encoding is
//! unit-tested on the host. Synchronous commands wait for their own CQE; START_DEV and
//! END_USER_RECOVERY are submitted first and awaited with a bound, because the kernel completes
//! them only after every queue has sent its FETCH_REQs.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use ublk_abi::*;

use crate::error::{Error, Result};

pub const CONTROL_PATH: &str = "/dev/ublk-control";

const SYNC_USER_DATA: u64 = 2;

/// user_data of an asynchronous command (START_DEV, END_USER_RECOVERY, STOP_DEV): one per
/// command number, so a late START completion is never taken for a STOP's.
fn async_user_data(cmd: &CtrlCmd) -> u64 {
    0x100 | u64::from(cmd.nr)
}

/// One control command: its number and header. The buffer (if any) is referenced by
/// `header.addr`/`header.len` and must live until the command completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtrlCmd {
    /// Legacy command number (`UBLK_CMD_*`); the opcode is chosen at submission.
    pub nr: u32,
    pub header: ublksrv_ctrl_cmd,
}

impl CtrlCmd {
    fn new(nr: u32, dev_id: u32) -> Self {
        Self {
            nr,
            header: ublksrv_ctrl_cmd {
                dev_id,
                // "-1 if the cmd isn't for a queue"; ADD_DEV rejects anything else.
                queue_id: u16::MAX,
                ..Default::default()
            },
        }
    }

    fn with_buf(mut self, buf: &mut [u8]) -> Self {
        self.header.addr = buf.as_mut_ptr() as u64;
        // Every buffer we pass is < 64 KiB (dev_info 64, params 152, affinity <= 1 KiB).
        self.header.len = u16::try_from(buf.len()).unwrap_or(u16::MAX);
        self
    }

    pub fn stop_dev(dev_id: u32) -> Self {
        Self::new(UBLK_CMD_STOP_DEV, dev_id)
    }

    pub fn start_dev(dev_id: u32, pid: i32) -> Self {
        let mut c = Self::new(UBLK_CMD_START_DEV, dev_id);
        c.header.data[0] = pid as u64;
        c
    }

    pub fn end_user_recovery(dev_id: u32, pid: i32) -> Self {
        let mut c = Self::new(UBLK_CMD_END_USER_RECOVERY, dev_id);
        c.header.data[0] = pid as u64;
        c
    }

    /// The `cmd_op` to put in the SQE: ioctl-encoded when the kernel advertises
    /// UBLK_F_CMD_IOCTL_ENCODE, the legacy number otherwise.
    pub fn cmd_op(&self, ioctl_encode: bool) -> u32 {
        if ioctl_encode {
            encoded_ctrl_op(self.nr)
        } else {
            self.nr
        }
    }
}

/// The ioctl-encoded opcode for a legacy control command number.
pub fn encoded_ctrl_op(nr: u32) -> u32 {
    match nr {
        UBLK_CMD_GET_QUEUE_AFFINITY => UBLK_U_CMD_GET_QUEUE_AFFINITY,
        UBLK_CMD_GET_DEV_INFO => UBLK_U_CMD_GET_DEV_INFO,
        UBLK_CMD_ADD_DEV => UBLK_U_CMD_ADD_DEV,
        UBLK_CMD_DEL_DEV => UBLK_U_CMD_DEL_DEV,
        UBLK_CMD_START_DEV => UBLK_U_CMD_START_DEV,
        UBLK_CMD_STOP_DEV => UBLK_U_CMD_STOP_DEV,
        UBLK_CMD_SET_PARAMS => UBLK_U_CMD_SET_PARAMS,
        UBLK_CMD_GET_PARAMS => UBLK_U_CMD_GET_PARAMS,
        UBLK_CMD_START_USER_RECOVERY => UBLK_U_CMD_START_USER_RECOVERY,
        UBLK_CMD_END_USER_RECOVERY => UBLK_U_CMD_END_USER_RECOVERY,
        UBLK_CMD_GET_DEV_INFO2 => UBLK_U_CMD_GET_DEV_INFO2,
        UBLK_CMD_GET_FEATURES => UBLK_U_CMD_GET_FEATURES,
        UBLK_CMD_DEL_DEV_ASYNC => UBLK_U_CMD_DEL_DEV_ASYNC,
        UBLK_CMD_UPDATE_SIZE => UBLK_U_CMD_UPDATE_SIZE,
        UBLK_CMD_QUIESCE_DEV => UBLK_U_CMD_QUIESCE_DEV,
        UBLK_CMD_TRY_STOP_DEV => UBLK_U_CMD_TRY_STOP_DEV,
        other => other,
    }
}

/// What a kernel without GET_FEATURES means for the server (logged and printed by
/// `features`).
pub const LEGACY_NOTE: &str = "legacy control and I/O command numbers (no CMD_IOCTL_ENCODE); \
     the modes that need a feature flag (--per-io-daemon: PER_IO_DAEMON, --batch-io: BATCH_IO) are \
     refused; recovery and NEED_GET_DATA are asked for in ADD_DEV and used only if its answer \
     grants them";

/// The control device and its ring.
pub struct Ctrl {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    // Declared after `ring`: the ring (which may reference the fd) is dropped first.
    fd: OwnedFd,
    /// Kernel features from GET_FEATURES (0 on kernels older than 6.5, which lack it).
    pub features: u64,
    /// The kernel answered GET_FEATURES as an unknown command (before 6.5): the control
    /// and I/O commands go by their legacy numbers, and only ADD_DEV's answer tells which
    /// features a device got.
    pub legacy: bool,
    ioctl_encode: bool,
}

impl Ctrl {
    pub fn open() -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::NoControlDevice,
                io::ErrorKind::PermissionDenied => Error::NotPermitted {
                    what: format!("open {CONTROL_PATH}"),
                },
                _ => Error::io(format!("open {CONTROL_PATH}"), e),
            })?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .build(8)
            .map_err(|e| Error::io("create control io_uring (SQE128 needs Linux 5.19+)", e))?;
        let mut ctrl = Self {
            ring,
            fd: file.into(),
            features: 0,
            legacy: false,
            ioctl_encode: true,
        };
        let mut feat = [0u8; UBLK_FEATURES_LEN];
        let cmd = CtrlCmd::new(UBLK_CMD_GET_FEATURES, 0).with_buf(&mut feat);
        match ctrl.run(cmd) {
            Ok(_) => ctrl.features = u64::from_le_bytes(feat),
            // Before 6.5 there is no GET_FEATURES and no ioctl encoding of control commands.
            // 6.1 looks the device up before it looks at the command, so with no device 0
            // the unknown command fails with ENODEV (6.5+ answers GET_FEATURES before any
            // lookup, so ENODEV never comes from a kernel that has it).
            Err(Error::Ctrl { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOTTY | libc::ENODEV)
                ) =>
            {
                log::info!(
                    "the kernel answers no GET_FEATURES ({source}): ublk before Linux 6.5; \
                     {LEGACY_NOTE}"
                );
                ctrl.ioctl_encode = false;
                ctrl.legacy = true;
            }
            Err(e) => return Err(e),
        }
        ctrl.ioctl_encode = ctrl.ioctl_encode && ctrl.features & UBLK_F_CMD_IOCTL_ENCODE != 0;
        Ok(ctrl)
    }

    fn push(&mut self, cmd: &CtrlCmd, user_data: u64) -> Result<()> {
        let mut area = [0u8; 80];
        area[..32].copy_from_slice(&cmd.header.to_bytes());
        let sqe = opcode::UringCmd80::new(
            types::Fd(self.fd.as_raw_fd()),
            cmd.cmd_op(self.ioctl_encode),
        )
        .cmd(area)
        .build()
        .user_data(user_data);
        // SAFETY: the SQE carries only plain data; any buffer it points to (header.addr) is
        // kept alive by the caller until the command's CQE is reaped (run() waits for it).
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| Error::io("control ring", io::Error::other("submission queue full")))
    }

    /// Submit one command and wait for its completion; returns the (non-negative) result.
    pub fn run(&mut self, cmd: CtrlCmd) -> Result<i32> {
        self.push(&cmd, SYNC_USER_DATA)?;
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(self.ctrl_err(&cmd, e)),
            }
            loop {
                let Some(cqe) = self.ring.completion().next() else {
                    break;
                };
                if cqe.user_data() == SYNC_USER_DATA {
                    return self.check(&cmd, cqe.result());
                }
                // A late START/END_RECOVERY completion: nothing waits for it any more.
                log::debug!(
                    "control: stray completion {} res {}",
                    cqe.user_data(),
                    cqe.result()
                );
            }
        }
    }

    fn check(&self, cmd: &CtrlCmd, res: i32) -> Result<i32> {
        if res >= 0 {
            return Ok(res);
        }
        let source = io::Error::from_raw_os_error(-res);
        Err(match -res {
            libc::EEXIST if cmd.nr == UBLK_CMD_ADD_DEV => Error::IdInUse(cmd.header.dev_id),
            // GET_FEATURES is for no device: its ENODEV is 6.1's "unknown command" (Ctrl::open).
            libc::ENODEV if cmd.nr != UBLK_CMD_ADD_DEV && cmd.nr != UBLK_CMD_GET_FEATURES => {
                Error::NoDevice(cmd.header.dev_id)
            }
            libc::EPERM | libc::EACCES => Error::NotPermitted {
                what: format!("{} on device {}", ctrl_op_name(cmd.nr), cmd.header.dev_id),
            },
            _ => self.ctrl_err(cmd, source),
        })
    }

    fn ctrl_err(&self, cmd: &CtrlCmd, source: io::Error) -> Error {
        Error::Ctrl {
            cmd: ctrl_op_name(cmd.nr),
            dev_id: cmd.header.dev_id,
            source,
        }
    }

    /// Submit a command without waiting (see [`Self::wait_async`]).
    pub fn submit_async(&mut self, cmd: CtrlCmd) -> Result<()> {
        self.push(&cmd, async_user_data(&cmd))?;
        self.ring
            .submit()
            .map(|_| ())
            .map_err(|e| self.ctrl_err(&cmd, e))
    }

    /// Wait up to `timeout` for the asynchronous command; `Ok(None)` when it is still pending.
    pub fn wait_async(&mut self, cmd: &CtrlCmd, timeout: Duration) -> Result<Option<i32>> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        let ud = async_user_data(cmd);
        loop {
            let next = self.ring.completion().next();
            if let Some(cqe) = next {
                if cqe.user_data() == ud {
                    return self.check(cmd, cqe.result()).map(Some);
                }
                continue;
            }
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                    let next = self.ring.completion().next();
                    if let Some(cqe) = next
                        && cqe.user_data() == ud
                    {
                        return self.check(cmd, cqe.result()).map(Some);
                    }
                    return Ok(None);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => return Ok(None),
                Err(e) => return Err(self.ctrl_err(cmd, e)),
            }
        }
    }

    /// Cancel the pending START_DEV / END_USER_RECOVERY and reap it (bounded).
    ///
    /// Needed before DEL_DEV when START never completed: the pending command holds a device
    /// reference, and DEL_DEV waits for every reference, so the two would wait on each other.
    /// The cancel interrupts the kernel's wait_for_completion_interruptible().
    pub fn cancel_async(&mut self, cmd: &CtrlCmd) {
        const CANCEL_USER_DATA: u64 = 3;
        let ud = async_user_data(cmd);
        let sqe = squeue::Entry128::from(
            opcode::AsyncCancel::new(ud)
                .build()
                .user_data(CANCEL_USER_DATA),
        );
        // SAFETY: a cancel SQE points at no memory.
        if unsafe { self.ring.submission().push(&sqe) }.is_err() {
            return;
        }
        let ts = types::Timespec::from(Duration::from_millis(500));
        let args = types::SubmitArgs::new().timespec(&ts);
        let mut seen_async = false;
        for _ in 0..10 {
            let _ = self.ring.submitter().submit_with_args(1, &args);
            loop {
                let Some(cqe) = self.ring.completion().next() else {
                    break;
                };
                if cqe.user_data() == ud {
                    log::info!("pending control command ended with {}", cqe.result());
                    seen_async = true;
                }
                // -ENOENT/-EALREADY: nothing left to cancel (it completed on its own).
                if cqe.user_data() == CANCEL_USER_DATA && cqe.result() == -libc::ENOENT {
                    return;
                }
            }
            if seen_async {
                return;
            }
        }
        log::warn!("the pending control command did not end after cancel");
    }

    /// ADD_DEV: `info` in, the kernel's adjusted info out (queues clamped to CPUs, flags
    /// filtered to what it supports, the id it picked when `dev_id` was `u32::MAX`).
    pub fn add_dev(&mut self, info: &ublksrv_ctrl_dev_info) -> Result<ublksrv_ctrl_dev_info> {
        let mut buf = info.to_bytes();
        self.run(CtrlCmd::new(UBLK_CMD_ADD_DEV, info.dev_id).with_buf(&mut buf))?;
        ublksrv_ctrl_dev_info::from_bytes(&buf)
            .ok_or_else(|| Error::io("ADD_DEV reply", io::Error::other("short reply")))
    }

    pub fn del_dev(&mut self, dev_id: u32) -> Result<()> {
        self.run(CtrlCmd::new(UBLK_CMD_DEL_DEV, dev_id)).map(|_| ())
    }

    pub fn stop_dev(&mut self, dev_id: u32) -> Result<()> {
        self.run(CtrlCmd::new(UBLK_CMD_STOP_DEV, dev_id))
            .map(|_| ())
    }

    pub fn get_dev_info(&mut self, dev_id: u32) -> Result<ublksrv_ctrl_dev_info> {
        let mut buf = [0u8; 64];
        self.run(CtrlCmd::new(UBLK_CMD_GET_DEV_INFO, dev_id).with_buf(&mut buf))?;
        ublksrv_ctrl_dev_info::from_bytes(&buf)
            .ok_or_else(|| Error::io("GET_DEV_INFO reply", io::Error::other("short reply")))
    }

    /// GET_DEV_INFO2: the buffer starts with the char device path (the kernel checks the
    /// caller's access to it), the reply follows it.
    pub fn get_dev_info2(&mut self, dev_id: u32) -> Result<ublksrv_ctrl_dev_info> {
        let path = format!("/dev/ublkc{dev_id}\0");
        let plen = path.len();
        let mut buf = vec![0u8; plen + 64];
        buf[..plen].copy_from_slice(path.as_bytes());
        let mut cmd = CtrlCmd::new(UBLK_CMD_GET_DEV_INFO2, dev_id).with_buf(&mut buf);
        cmd.header.dev_path_len = plen as u16;
        self.run(cmd)?;
        ublksrv_ctrl_dev_info::from_bytes(&buf[plen..])
            .ok_or_else(|| Error::io("GET_DEV_INFO2 reply", io::Error::other("short reply")))
    }

    pub fn set_params(&mut self, dev_id: u32, params: &ublk_params) -> Result<()> {
        let mut buf = params_to_bytes(params);
        self.run(CtrlCmd::new(UBLK_CMD_SET_PARAMS, dev_id).with_buf(&mut buf))
            .map(|_| ())
    }

    /// GET_PARAMS (the raw reply; `len` and `types` say what the kernel filled).
    pub fn get_params(&mut self, dev_id: u32) -> Result<[u8; PARAMS_BYTES]> {
        let mut buf = [0u8; PARAMS_BYTES];
        buf[..4].copy_from_slice(&(PARAMS_BYTES as u32).to_le_bytes());
        self.run(CtrlCmd::new(UBLK_CMD_GET_PARAMS, dev_id).with_buf(&mut buf))?;
        Ok(buf)
    }

    /// CPUs a queue's requests come from (a cpumask, one bit per CPU).
    pub fn get_queue_affinity(&mut self, dev_id: u32, q_id: u16) -> Result<Vec<usize>> {
        let mut buf = [0u8; 128]; // 1024 CPUs
        let mut cmd = CtrlCmd::new(UBLK_CMD_GET_QUEUE_AFFINITY, dev_id).with_buf(&mut buf);
        // The kernel takes the queue from data[0], not from queue_id.
        cmd.header.data[0] = u64::from(q_id);
        self.run(cmd)?;
        Ok((0..buf.len() * 8)
            .filter(|cpu| buf[cpu / 8] & (1 << (cpu % 8)) != 0)
            .collect())
    }

    pub fn start_user_recovery(&mut self, dev_id: u32) -> Result<()> {
        self.run(CtrlCmd::new(UBLK_CMD_START_USER_RECOVERY, dev_id))
            .map(|_| ())
    }

    /// Ids of existing devices, from /dev (no control command lists them).
    pub fn list_ids() -> Vec<u32> {
        let mut ids: Vec<u32> = std::fs::read_dir("/dev")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("ublkc"))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        ids.sort_unstable();
        ids
    }
}

pub const PARAMS_BYTES: usize = std::mem::size_of::<ublk_params>();

/// Encode `ublk_params` field by field (no pointer casts; the layout is asserted in ublk-abi).
pub fn params_to_bytes(p: &ublk_params) -> [u8; PARAMS_BYTES] {
    let mut o = [0u8; PARAMS_BYTES];
    let mut put = |off: usize, b: &[u8]| o[off..off + b.len()].copy_from_slice(b);
    put(0, &p.len.to_le_bytes());
    put(4, &p.types.to_le_bytes());
    let b = &p.basic;
    put(8, &b.attrs.to_le_bytes());
    put(
        12,
        &[
            b.logical_bs_shift,
            b.physical_bs_shift,
            b.io_opt_shift,
            b.io_min_shift,
        ],
    );
    put(16, &b.max_sectors.to_le_bytes());
    put(20, &b.chunk_sectors.to_le_bytes());
    put(24, &b.dev_sectors.to_le_bytes());
    put(32, &b.virt_boundary_mask.to_le_bytes());
    let d = &p.discard;
    put(40, &d.discard_alignment.to_le_bytes());
    put(44, &d.discard_granularity.to_le_bytes());
    put(48, &d.max_discard_sectors.to_le_bytes());
    put(52, &d.max_write_zeroes_sectors.to_le_bytes());
    put(56, &d.max_discard_segments.to_le_bytes());
    put(60, &p.devt.char_major.to_le_bytes());
    put(64, &p.devt.char_minor.to_le_bytes());
    put(68, &p.devt.disk_major.to_le_bytes());
    put(72, &p.devt.disk_minor.to_le_bytes());
    put(108, &p.dma.alignment.to_le_bytes());
    put(120, &p.seg.seg_boundary_mask.to_le_bytes());
    put(128, &p.seg.max_segment_size.to_le_bytes());
    put(132, &p.seg.max_segments.to_le_bytes());
    o
}

/// The basic and devt parts of a GET_PARAMS reply.
pub fn params_basic_devt(b: &[u8]) -> Option<(ublk_param_basic, ublk_param_devt)> {
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let basic = ublk_param_basic {
        attrs: u32_at(8)?,
        logical_bs_shift: *b.get(12)?,
        physical_bs_shift: *b.get(13)?,
        io_opt_shift: *b.get(14)?,
        io_min_shift: *b.get(15)?,
        max_sectors: u32_at(16)?,
        chunk_sectors: u32_at(20)?,
        dev_sectors: u64_at(24)?,
        virt_boundary_mask: u64_at(32)?,
    };
    let devt = ublk_param_devt {
        char_major: u32_at(60)?,
        char_minor: u32_at(64)?,
        disk_major: u32_at(68)?,
        disk_minor: u32_at(72)?,
    };
    Some((basic, devt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_follows_kernel_feature() {
        let c = CtrlCmd::start_dev(3, 4242);
        assert_eq!(c.cmd_op(true), 0xc020_7506);
        assert_eq!(c.cmd_op(false), UBLK_CMD_START_DEV);
        assert_eq!(c.header.data[0], 4242);
        assert_eq!(c.header.queue_id, u16::MAX);
    }

    #[test]
    fn every_legacy_number_has_its_ioctl_form() {
        for nr in [
            0x01, 0x02, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x10, 0x11, 0x12, 0x13,
        ] {
            let op = encoded_ctrl_op(nr);
            assert_ne!(op, nr, "nr {nr:#x} not encoded");
            assert_eq!(cmd_nr(op), nr);
        }
    }

    #[test]
    fn params_bytes_put_fields_at_kernel_offsets() {
        let mut p = ublk_params {
            len: PARAMS_BYTES as u32,
            types: UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD,
            ..Default::default()
        };
        p.basic.logical_bs_shift = 9;
        p.basic.physical_bs_shift = 12;
        p.basic.max_sectors = 1024;
        p.basic.dev_sectors = 1 << 21;
        p.discard.discard_granularity = 4096;
        p.discard.max_discard_segments = 1;
        let b = params_to_bytes(&p);
        assert_eq!(&b[0..4], &152u32.to_le_bytes());
        assert_eq!(b[12], 9);
        assert_eq!(b[13], 12);
        assert_eq!(&b[24..32], &(1u64 << 21).to_le_bytes());
        assert_eq!(&b[44..48], &4096u32.to_le_bytes());
        assert_eq!(&b[56..58], &1u16.to_le_bytes());
        let (basic, _) = params_basic_devt(&b).expect("full buffer");
        assert_eq!(basic, p.basic);
    }
}
