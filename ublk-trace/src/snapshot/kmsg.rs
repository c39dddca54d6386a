//! Kernel log (`/dev/kmsg`, read non-blocking): hung-task reports, `I/O error, dev ublkbN`
//! and ublk driver messages.
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use serde::{Deserialize, Serialize};

/// Lines kept per snapshot (newest last).
pub const TAIL_LINES: usize = 64;

/// One kernel log record that concerns ublk or hung tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsgLine {
    pub seq: u64,
    /// µs since boot, kernel log clock (local_clock: close to CLOCK_MONOTONIC, not identical).
    pub ts_us: u64,
    /// Syslog level 0 (emerg) .. 7 (debug).
    pub level: u8,
    pub kind: KmsgKind,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KmsgKind {
    /// `INFO: task dd:202 blocked for more than 120 seconds.`
    HungTask { comm: String, pid: u32 },
    /// `I/O error, dev ublkb0, sector 46608 op 0x0:(READ) ...`
    IoError { dev_id: u32 },
    /// Any other line naming ublk.
    Ublk,
}

/// Parse one `/dev/kmsg` record (`prio,seq,ts_us,flags;text`, continuation lines ignored).
/// `None` for malformed records and for records that do not concern ublk or hung tasks.
pub fn parse_record(rec: &str) -> Option<KmsgLine> {
    let first = rec.lines().next()?;
    let (head, text) = first.split_once(';')?;
    let mut f = head.split(',');
    let prio: u32 = f.next()?.trim().parse().ok()?;
    let seq: u64 = f.next()?.trim().parse().ok()?;
    let ts_us: u64 = f.next()?.trim().parse().ok()?;
    let kind = classify(text)?;
    Some(KmsgLine {
        seq,
        ts_us,
        level: u8::try_from(prio & 7).ok()?,
        kind,
        text: text.to_string(),
    })
}

fn classify(text: &str) -> Option<KmsgKind> {
    if let Some(rest) = text.split("I/O error, dev ublkb").nth(1) {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(dev_id) = digits.parse() {
            return Some(KmsgKind::IoError { dev_id });
        }
    }
    if let Some(rest) = text.strip_prefix("INFO: task ")
        && let Some((who, _)) = rest.split_once(" blocked for more than")
    {
        let (comm, pid) = who.rsplit_once(':')?;
        return Some(KmsgKind::HungTask {
            comm: comm.to_string(),
            pid: pid.parse().ok()?,
        });
    }
    text.contains("ublk").then_some(KmsgKind::Ublk)
}

impl KmsgLine {
    /// Relevant to device `dev_id`: its I/O errors, hung tasks (any disk), ublk lines naming it
    /// or naming no device.
    pub fn concerns(&self, dev_id: u32) -> bool {
        match &self.kind {
            KmsgKind::IoError { dev_id: d } => *d == dev_id,
            KmsgKind::HungTask { .. } => true,
            KmsgKind::Ublk => {
                let names_dev = |p: &str| self.text.contains(&format!("{p}{dev_id}"));
                names_dev("ublkb")
                    || names_dev("ublkc")
                    || !(self.text.contains("ublkb") || self.text.contains("ublkc"))
            }
        }
    }
}

/// Read the whole kernel log buffer without blocking and keep the last [`TAIL_LINES`]
/// records that concern `dev_id`.
pub fn read_tail(dev_id: u32) -> std::io::Result<Vec<KmsgLine>> {
    read_records(TAIL_LINES, |rec| {
        parse_record(rec).filter(|l| l.concerns(dev_id))
    })
}

/// Read the whole kernel log buffer (`/dev/kmsg`) without blocking, keeping the last `keep`
/// records that `pick` maps to something.
pub fn read_records<T>(
    keep: usize,
    pick: impl FnMut(&str) -> Option<T>,
) -> std::io::Result<Vec<T>> {
    let mut f = open_kmsg()?;
    let mut out = std::collections::VecDeque::with_capacity(keep);
    drain(&mut f, keep, pick, &mut out)?;
    Ok(out.into())
}

fn open_kmsg() -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
}

/// Read every record `f` has not returned yet, appending what `pick` keeps to `out` (at most
/// `keep` there, oldest dropped first).
fn drain<T>(
    f: &mut std::fs::File,
    keep: usize,
    mut pick: impl FnMut(&str) -> Option<T>,
    out: &mut std::collections::VecDeque<T>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                let rec = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
                if let Some(v) = pick(&rec) {
                    if out.len() == keep {
                        out.pop_front();
                    }
                    out.push_back(v);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            // EPIPE: the record we were about to read was overwritten; the next read goes on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The kernel log followed tick after tick: the first read takes the whole buffer, later ones
/// only the records written since (an open `/dev/kmsg` keeps its reader's position). Reading
/// the whole buffer again on every tick cost milliseconds of CPU each time.
#[derive(Default)]
pub struct KmsgFollower {
    file: Option<std::fs::File>,
    /// The newest records that concern ublk or hung tasks, any device.
    recent: std::collections::VecDeque<KmsgLine>,
}

/// Records a follower keeps, all devices together.
const FOLLOWED_LINES: usize = 16 * TAIL_LINES;

impl KmsgFollower {
    /// Read what is new, then the last [`TAIL_LINES`] records that concern `dev_id`.
    pub fn tail(&mut self, dev_id: u32) -> std::io::Result<Vec<KmsgLine>> {
        let f = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(open_kmsg()?),
        };
        if let Err(e) = drain(f, FOLLOWED_LINES, parse_record, &mut self.recent) {
            // Opened afresh next time (it then reads the whole buffer again).
            self.file = None;
            self.recent.clear();
            return Err(e);
        }
        let mut mine: Vec<KmsgLine> = self
            .recent
            .iter()
            .rev()
            .filter(|l| l.concerns(dev_id))
            .take(TAIL_LINES)
            .cloned()
            .collect();
        mine.reverse();
        Ok(mine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_line_names_the_device() {
        let l = parse_record("3,812,19725290,-;I/O error, dev ublkb0, sector 46608 op 0x0:(READ) flags 0x800 phys_seg 1 prio class 2\n SUBSYSTEM=block\n")
            .expect("relevant");
        assert_eq!(l.kind, KmsgKind::IoError { dev_id: 0 });
        assert_eq!(l.ts_us, 19725290);
        assert_eq!(l.level, 3);
        assert!(l.concerns(0));
        assert!(!l.concerns(1));
        let l12 = parse_record("3,1,2,-;I/O error, dev ublkb12, sector 0").expect("relevant");
        assert_eq!(l12.kind, KmsgKind::IoError { dev_id: 12 });
    }

    #[test]
    fn hung_task_line() {
        let l =
            parse_record("3,900,125000000,-;INFO: task dd:202 blocked for more than 120 seconds.")
                .expect("relevant");
        assert_eq!(
            l.kind,
            KmsgKind::HungTask {
                comm: "dd".into(),
                pid: 202
            }
        );
        assert!(l.concerns(5));
    }

    #[test]
    fn unrelated_and_malformed_records_are_dropped() {
        assert_eq!(parse_record("6,1,2,-;eth0: link up"), None);
        assert_eq!(parse_record("garbage"), None);
        assert_eq!(parse_record("x,1,2,-;ublk"), None);
        let other = parse_record("4,3,4,-;ublk_drv: ublkb3 something").expect("ublk line");
        assert!(other.concerns(3));
        assert!(!other.concerns(0));
    }
}
