//! The server library's error type. Each message says what failed and how to fix it.

use std::io;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("/dev/ublk-control does not exist; run 'modprobe ublk_drv' (as root) and retry")]
    NoControlDevice,
    #[error("{what}: permission denied; run as root (ublk devices need CAP_SYS_ADMIN)")]
    NotPermitted { what: String },
    #[error(
        "device id {0} is already in use; pick another --id or remove it with 'ublk-server del {0}'"
    )]
    IdInUse(u32),
    #[error("device {0} does not exist (see 'ublk-server list')")]
    NoDevice(u32),
    /// Input the user can fix (bad flag value, missing file).
    #[error("{0}")]
    Usage(String),
    #[error("{cmd} on device {dev_id} failed: {source}")]
    Ctrl {
        cmd: &'static str,
        dev_id: u32,
        source: io::Error,
    },
    #[error("START_DEV on device {dev_id} did not complete within {waited_ms} ms; {missing}")]
    StartTimeout {
        dev_id: u32,
        waited_ms: u64,
        missing: String,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

impl Error {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// Errors caused by the user's input or environment (exit code 2), as opposed to a
    /// failure while running (exit code 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::NoControlDevice
                | Self::NotPermitted { .. }
                | Self::IdInUse(_)
                | Self::NoDevice(_)
                | Self::Usage(_)
        )
    }

    /// The negative errno a COMMIT carries for this error (libublk's `UblkError::errno`).
    pub fn errno(&self) -> i32 {
        let raw = match self {
            Self::Ctrl { source, .. } | Self::Io { source, .. } => source.raw_os_error(),
            Self::NoControlDevice | Self::NoDevice(_) => Some(libc::ENODEV),
            Self::NotPermitted { .. } => Some(libc::EPERM),
            Self::IdInUse(_) => Some(libc::EEXIST),
            Self::StartTimeout { .. } => Some(libc::ETIMEDOUT),
            Self::Usage(_) => Some(libc::EINVAL),
        };
        -raw.unwrap_or(libc::EIO)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_is_negative_and_specific() {
        let e = Error::Ctrl {
            cmd: "ADD_DEV",
            dev_id: 1,
            source: io::Error::from_raw_os_error(libc::EEXIST),
        };
        assert_eq!(e.errno(), -libc::EEXIST);
        assert_eq!(Error::Usage("x".into()).errno(), -libc::EINVAL);
        assert!(
            Error::NoControlDevice
                .to_string()
                .contains("modprobe ublk_drv")
        );
        assert!(Error::IdInUse(3).is_usage());
        assert!(!e.is_usage());
    }
}
