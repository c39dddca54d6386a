//! A READ-ONLY client of `/dev/ublk-control`: GET_FEATURES and GET_DEV_INFO(2), nothing else.
//!
//! The tracer must never hang on the device it diagnoses, so it sends only commands that
//! take no `ub->mutex` (START_DEV holds it across add_disk on 6.12, STOP/DEL across
//! del_gendisk), and every query has a deadline: when no completion arrives in time the
//! call returns [`CtrlError::Timeout`], which is itself evidence of a wedged control path.
//! Never opens `/dev/ublkcN` or `/dev/ublkbN`.
//!
//! Each query uses its own small SQE128 ring, so a timed-out command left in the kernel
//! cannot be confused with a later one.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use ublk_abi::{
    UBLK_CMD_GET_DEV_INFO, UBLK_U_CMD_GET_DEV_INFO, UBLK_U_CMD_GET_DEV_INFO2,
    UBLK_U_CMD_GET_FEATURES, ublksrv_ctrl_cmd, ublksrv_ctrl_dev_info,
};

pub const CONTROL_PATH: &str = "/dev/ublk-control";
/// Default deadline for one query: long enough for a TCG guest, short enough for a UI tick.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CtrlError {
    #[error("open {CONTROL_PATH}: {source}; run 'modprobe ublk_drv' and retry as root")]
    Open { source: std::io::Error },
    #[error(
        "set up an io_uring for {CONTROL_PATH}: {source} (needs a kernel with io_uring enabled; check /proc/sys/kernel/io_uring_disabled)"
    )]
    Ring { source: std::io::Error },
    #[error(
        "{op} on device {dev_id} got no answer within {after:?}: the ublk control path is blocked (a control command is likely stuck in the kernel)"
    )]
    Timeout {
        op: &'static str,
        dev_id: u32,
        after: Duration,
    },
    #[error("{op} on device {dev_id} failed: {}{}", std::io::Error::from_raw_os_error(*errno), errno_hint(op, *errno))]
    Kernel {
        op: &'static str,
        dev_id: u32,
        errno: i32,
    },
}

fn errno_hint(op: &str, errno: i32) -> &'static str {
    match errno {
        // GET_FEATURES is for no device: see is_no_get_features.
        libc::ENODEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOTTY if op == "GET_FEATURES" => {
            " (a kernel before 6.5, which has no GET_FEATURES)"
        }
        libc::ENODEV => " (no such ublk device; list them with 'ls /dev/ublkc*')",
        libc::EPERM | libc::EACCES => " (needs CAP_SYS_ADMIN; retry as root)",
        libc::EINVAL | libc::EOPNOTSUPP => " (this kernel does not know the command)",
        _ => "",
    }
}

/// What GET_DEV_INFO reports about a device (filled by the ublk driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevInfo {
    pub dev_id: u32,
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    /// `UBLK_S_DEV_*`; see [`DevInfo::state_name`].
    pub state: u16,
    pub max_io_buf_bytes: u32,
    /// Server pid in the caller's pid namespace (7.x: -1 when invisible). Not a reliable way
    /// to find the server: DESIGN.md says to use the holder of /dev/ublkcN.
    pub ublksrv_pid: i32,
    /// `UBLK_F_*` of the device.
    pub flags: u64,
    pub ublksrv_flags: u64,
    pub owner_uid: u32,
    pub owner_gid: u32,
}

impl DevInfo {
    pub fn state_name(&self) -> &'static str {
        ublk_abi::dev_state_name(self.state)
    }
    fn from_abi(d: &ublksrv_ctrl_dev_info) -> Self {
        Self {
            dev_id: d.dev_id,
            nr_hw_queues: d.nr_hw_queues,
            queue_depth: d.queue_depth,
            state: d.state,
            max_io_buf_bytes: d.max_io_buf_bytes,
            ublksrv_pid: d.ublksrv_pid,
            flags: d.flags,
            ublksrv_flags: d.ublksrv_flags,
            owner_uid: d.owner_uid,
            owner_gid: d.owner_gid,
        }
    }
}

/// GET_FEATURES failed the way a kernel without it (before 6.5) fails an unknown command:
/// EINVAL/EOPNOTSUPP/ENOTTY, or ENODEV from 6.1, which looks the device up before the
/// command (6.5+ answers GET_FEATURES for no device, so it never says ENODEV).
pub fn is_no_get_features(e: &CtrlError) -> bool {
    matches!(e, CtrlError::Kernel { op: "GET_FEATURES", errno, .. }
        if matches!(*errno, libc::EINVAL | libc::EOPNOTSUPP | libc::ENOTTY | libc::ENODEV))
}

/// An open `/dev/ublk-control`.
pub struct CtrlClient {
    fd: OwnedFd,
}

/// GET_DEV_INFO for one device with a deadline (opens and closes the control device).
pub fn get_dev_info(dev_id: u32, deadline: Duration) -> Result<DevInfo, CtrlError> {
    CtrlClient::open()?.get_dev_info(dev_id, deadline)
}

/// GET_FEATURES with a deadline: the `UBLK_F_*` this kernel supports.
pub fn get_features(deadline: Duration) -> Result<u64, CtrlError> {
    CtrlClient::open()?.get_features(deadline)
}

impl CtrlClient {
    pub fn open() -> Result<Self, CtrlError> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL_PATH)
            .map_err(|source| CtrlError::Open { source })?;
        Ok(Self { fd: f.into() })
    }

    /// `UBLK_U_CMD_GET_FEATURES`: the kernel's supported `UBLK_F_*` bits.
    pub fn get_features(&self, deadline: Duration) -> Result<u64, CtrlError> {
        let buf = vec![0u8; 8].into_boxed_slice();
        let cmd = ublksrv_ctrl_cmd {
            dev_id: u32::MAX,
            queue_id: u16::MAX,
            len: 8,
            ..Default::default()
        };
        let buf = self.submit("GET_FEATURES", UBLK_U_CMD_GET_FEATURES, cmd, buf, deadline)?;
        let bytes: [u8; 8] = buf
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .unwrap_or_default();
        Ok(u64::from_le_bytes(bytes))
    }

    /// GET_DEV_INFO, falling back to GET_DEV_INFO2 (which carries the char-device path the
    /// kernel checks for unprivileged devices; the kernel only looks the path up, we never
    /// open it).
    pub fn get_dev_info(&self, dev_id: u32, deadline: Duration) -> Result<DevInfo, CtrlError> {
        let v1 = match self.get_dev_info_v1(dev_id, UBLK_U_CMD_GET_DEV_INFO, deadline) {
            // A kernel without ioctl-encoded commands (6.1, 6.2) found the device but not
            // the command: ask by the legacy number.
            Err(CtrlError::Kernel { errno, .. })
                if errno == libc::EOPNOTSUPP || errno == libc::ENOTTY =>
            {
                self.get_dev_info_v1(dev_id, UBLK_CMD_GET_DEV_INFO, deadline)
            }
            other => other,
        };
        match v1 {
            Err(CtrlError::Kernel { errno, .. })
                if errno == libc::EINVAL || errno == libc::EPERM =>
            {
                self.get_dev_info2(dev_id, deadline)
            }
            other => other,
        }
    }

    fn get_dev_info_v1(
        &self,
        dev_id: u32,
        cmd_op: u32,
        deadline: Duration,
    ) -> Result<DevInfo, CtrlError> {
        let buf = vec![0u8; DEV_INFO_BYTES].into_boxed_slice();
        let cmd = ublksrv_ctrl_cmd {
            dev_id,
            queue_id: u16::MAX,
            len: DEV_INFO_BYTES as u16,
            ..Default::default()
        };
        let buf = self.submit("GET_DEV_INFO", cmd_op, cmd, buf, deadline)?;
        decode_dev_info("GET_DEV_INFO", dev_id, &buf)
    }

    fn get_dev_info2(&self, dev_id: u32, deadline: Duration) -> Result<DevInfo, CtrlError> {
        let (buf, path_len) = dev_info2_buffer(dev_id);
        let cmd = ublksrv_ctrl_cmd {
            dev_id,
            queue_id: u16::MAX,
            len: buf.len() as u16,
            dev_path_len: path_len as u16,
            ..Default::default()
        };
        let buf = self.submit(
            "GET_DEV_INFO2",
            UBLK_U_CMD_GET_DEV_INFO2,
            cmd,
            buf,
            deadline,
        )?;
        decode_dev_info(
            "GET_DEV_INFO2",
            dev_id,
            buf.get(path_len..).unwrap_or_default(),
        )
    }

    /// Submit one command whose reply lands in `buf`, wait at most `deadline`.
    fn submit(
        &self,
        op: &'static str,
        cmd_op: u32,
        mut cmd: ublksrv_ctrl_cmd,
        mut buf: Box<[u8]>,
        deadline: Duration,
    ) -> Result<Box<[u8]>, CtrlError> {
        cmd.addr = buf.as_mut_ptr() as u64;
        let mut area = [0u8; 80];
        area[..32].copy_from_slice(&cmd.to_bytes());
        let sqe = opcode::UringCmd80::new(types::Fd(self.fd.as_raw_fd()), cmd_op)
            .cmd(area)
            .build();
        let (res, buf) = run_one(sqe, buf, deadline, op, cmd.dev_id)?;
        if res < 0 {
            return Err(CtrlError::Kernel {
                op,
                dev_id: cmd.dev_id,
                errno: -res,
            });
        }
        Ok(buf)
    }
}

/// Run one SQE that references `buf` on a fresh ring and wait at most `deadline` for its
/// completion; returns the CQE result and the buffer. On timeout `buf` is leaked on purpose:
/// the kernel may still write the reply into it later.
fn run_one(
    sqe: squeue::Entry128,
    buf: Box<[u8]>,
    deadline: Duration,
    op: &'static str,
    dev_id: u32,
) -> Result<(i32, Box<[u8]>), CtrlError> {
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder()
        .build(2)
        .map_err(|source| CtrlError::Ring { source })?;
    let sqe = sqe.user_data(1);
    // SAFETY: the SQE references `buf`, which stays alive until the CQE is reaped below,
    // or is leaked if it never arrives (so a late kernel write hits live memory).
    unsafe { ring.submission().push(&sqe) }.map_err(|_| CtrlError::Ring {
        source: std::io::Error::other("submission queue full"),
    })?;
    let start = Instant::now();
    loop {
        if let Some(cqe) = ring.completion().next() {
            return Ok((cqe.result(), buf));
        }
        let Some(left) = deadline.checked_sub(start.elapsed()) else {
            Box::leak(buf);
            return Err(CtrlError::Timeout {
                op,
                dev_id,
                after: deadline,
            });
        };
        let ts = types::Timespec::from(left);
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(source) => {
                Box::leak(buf);
                return Err(CtrlError::Ring { source });
            }
        }
    }
}

const DEV_INFO_BYTES: usize = core::mem::size_of::<ublksrv_ctrl_dev_info>();

/// GET_DEV_INFO2's buffer: the NUL-terminated `/dev/ublkcN` path, then room for the reply.
fn dev_info2_buffer(dev_id: u32) -> (Box<[u8]>, usize) {
    let mut v = format!("/dev/ublkc{dev_id}").into_bytes();
    v.push(0);
    let path_len = v.len();
    v.resize(path_len + DEV_INFO_BYTES, 0);
    (v.into_boxed_slice(), path_len)
}

fn decode_dev_info(op: &'static str, dev_id: u32, b: &[u8]) -> Result<DevInfo, CtrlError> {
    ublksrv_ctrl_dev_info::from_bytes(b)
        .map(|d| DevInfo::from_abi(&d))
        .ok_or(CtrlError::Kernel {
            op,
            dev_id,
            errno: libc::EIO,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_without_get_features_is_told_apart_from_a_failure() {
        let k = |op, errno| CtrlError::Kernel {
            op,
            dev_id: u32::MAX,
            errno,
        };
        // 6.1 looks the device up first (ENODEV); 6.2-6.4 fail the unknown command.
        for errno in [libc::ENODEV, libc::EOPNOTSUPP, libc::EINVAL, libc::ENOTTY] {
            assert!(is_no_get_features(&k("GET_FEATURES", errno)), "{errno}");
        }
        assert!(!is_no_get_features(&k("GET_FEATURES", libc::EPERM)));
        assert!(!is_no_get_features(&k("GET_DEV_INFO", libc::ENODEV)));
    }

    #[test]
    fn dev_info2_buffer_puts_path_first() {
        // The kernel skips dev_path_len bytes before writing the reply: a wrong length would
        // shift every field of the decoded dev_info.
        let (b, n) = dev_info2_buffer(12);
        assert_eq!(&b[..n], b"/dev/ublkc12\0");
        assert_eq!(b.len(), n + 64);
    }

    #[test]
    fn decodes_reply_fields() {
        let d = ublksrv_ctrl_dev_info {
            nr_hw_queues: 2,
            queue_depth: 64,
            state: ublk_abi::UBLK_S_DEV_LIVE,
            dev_id: 3,
            ublksrv_pid: 77,
            flags: ublk_abi::UBLK_F_USER_COPY,
            ..Default::default()
        };
        let info = decode_dev_info("GET_DEV_INFO", 3, &d.to_bytes()).expect("64 bytes decode");
        assert_eq!(info.state_name(), "LIVE");
        assert_eq!(
            (info.nr_hw_queues, info.queue_depth, info.ublksrv_pid),
            (2, 64, 77)
        );
        assert!(decode_dev_info("GET_DEV_INFO", 3, &[0u8; 10]).is_err());
    }

    /// The deadline must really end the wait: a read from an empty pipe never completes,
    /// like a control command stuck behind `ub->mutex`.
    #[test]
    fn a_command_that_never_completes_times_out() {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds were just returned by pipe2 and are owned only here.
        let (rd, _wr) = unsafe {
            use std::os::fd::FromRawFd;
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        };
        let mut buf = vec![0u8; 8].into_boxed_slice();
        let sqe = opcode::Read::new(types::Fd(rd.as_raw_fd()), buf.as_mut_ptr(), 8)
            .build()
            .into();
        let t0 = Instant::now();
        let deadline = Duration::from_millis(300);
        match run_one(sqe, buf, deadline, "TEST", 7) {
            Err(CtrlError::Timeout { op, dev_id, after }) => {
                assert_eq!((op, dev_id, after), ("TEST", 7, deadline));
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
        let took = t0.elapsed();
        assert!(
            took >= deadline && took < deadline + Duration::from_secs(2),
            "{took:?}"
        );
        // `rd` closes while the read is still pending: the leaked buffer keeps that safe.
    }

    #[test]
    fn missing_control_device_names_the_fix() {
        if std::path::Path::new(CONTROL_PATH).exists() {
            eprintln!("SKIP: {CONTROL_PATH} exists here; this test checks the error path");
            return;
        }
        let e = get_features(Duration::from_millis(100)).expect_err("no ublk_drv on this host");
        assert!(e.to_string().contains("modprobe ublk_drv"), "{e}");
    }
}
