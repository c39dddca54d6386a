//! The raw files of a bug bundle, read from sysfs, debugfs, procfs, the tag-state file and
//! `/dev/kmsg`. Which processes and threads to read comes from the device's last snapshot.
//!
//! Reads run in groups on helper threads ([`crate::snapshot::deadline`]) and each group is
//! abandoned at the deadline: a read blocked on a hung device costs that group's remaining
//! files, never the command. Files read before the deadline are kept; the file being read when
//! the deadline passed is reported as timed out. `/dev/ublkbN` and `/dev/ublkcN` are never
//! opened; of a process only files that do not take its mm lock are read (no `cmdline`, `maps`
//! or `environ` of a task that may be stuck on the disk).
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::snapshot::{DeviceSnapshot, deadline};

use super::{Missing, RawRead};

/// Largest file copied whole; longer files are cut here (and marked so in the manifest).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// Kernel log records kept (newest last).
pub const KMSG_TAIL: usize = 400;
/// Files of one debugfs tree at most (a device with many queues has a few hundred).
const MAX_DEBUGFS_FILES: usize = 4000;

/// What a group has read so far; shared with its helper thread so a timeout keeps it.
#[derive(Default)]
struct Progress {
    done: Vec<RawRead>,
    /// The source being read now (named in the timeout).
    current: Option<String>,
}

/// Handle a group's thread reads through.
#[derive(Clone, Default)]
pub struct Sink(Arc<Mutex<Progress>>);

impl Sink {
    fn with<T>(&self, f: impl FnOnce(&mut Progress) -> T) -> T {
        // A panic in another reader leaves plain data behind: keep using it.
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// Read `src` into the bundle at `dest`.
    pub fn file(&self, src: &str, dest: String) {
        self.with(|p| p.current = Some(src.to_string()));
        let result = read_capped(Path::new(src));
        self.push(src, dest, result);
    }

    /// Add bytes produced by the reader itself (a listing, a formatted log).
    pub fn push(&self, src: &str, dest: String, result: Result<Vec<u8>, String>) {
        self.with(|p| {
            p.current = None;
            p.done.push(RawRead {
                source: src.to_string(),
                dest,
                result,
            });
        });
    }
}

/// At most [`MAX_FILE_BYTES`] of `path`; the error names the fix when it is permissions.
fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    let describe = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!("{e}: run ublk-trace as root"),
        _ => e.to_string(),
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        // Never block on a FIFO or a device node that slipped into a tree we walk.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(describe)?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES)
        .read_to_end(&mut buf)
        .map_err(describe)?;
    Ok(buf)
}

/// Run `f` on a helper thread until `deadline`; what it read (and, on timeout, what it was
/// reading) comes back.
pub fn run_group(
    name: &str,
    deadline: Instant,
    f: impl FnOnce(&Sink) + Send + 'static,
) -> (Vec<RawRead>, Option<Missing>) {
    let sink = Sink::default();
    let theirs = sink.clone();
    let res = deadline::run(deadline, move || f(&theirs));
    sink.with(|p| {
        let done = std::mem::take(&mut p.done);
        let missing = res.err().map(|t| Missing {
            what: match &p.current {
                Some(src) => format!("{name}: {src} and the rest of the group"),
                None => format!("{name}: the rest of the group"),
            },
            why: t.to_string(),
        });
        (done, missing)
    })
}

/// Every raw source of device `s.dev_id`, under `deadline` (groups run side by side).
pub fn device(s: &DeviceSnapshot, deadline: Instant) -> (Vec<RawRead>, Vec<Missing>) {
    let dev = s.dev_id;
    let d = format!("dev{dev}");
    let tagfile = s.tagfile.as_ref().map(|t| t.path.clone());
    let servers: Vec<u32> = s.servers.iter().map(|p| p.pid).collect();
    let waiters: Vec<(u32, u32)> = s.waiters.iter().map(|t| (t.pid, t.tid)).collect();
    let (d1, d2, d3) = (d.clone(), d.clone(), d);
    let groups = [
        std::thread::spawn(move || {
            run_group("sysfs and tag-state file", deadline, move |k| {
                sysfs(k, dev, &d1, tagfile.as_deref())
            })
        }),
        std::thread::spawn(move || {
            run_group("blk-mq debugfs", deadline, move |k| debugfs(k, dev, &d2))
        }),
        std::thread::spawn(move || {
            run_group("procfs", deadline, move |k| {
                procfs(k, &d3, &servers, &waiters)
            })
        }),
    ];
    let mut reads = Vec::new();
    let mut missing = Vec::new();
    for g in groups {
        // run_group returns by the deadline, so joining is bounded.
        match g.join() {
            Ok((r, m)) => {
                reads.extend(r);
                missing.extend(m);
            }
            Err(_) => missing.push(Missing {
                what: format!("dev{dev}: a reader thread"),
                why: "panicked (a bug in ublk-trace: please report it)".into(),
            }),
        }
    }
    (reads, missing)
}

fn sysfs(k: &Sink, dev: u32, d: &str, tagfile: Option<&str>) {
    for f in ["inflight", "stat", "size"] {
        k.file(
            &format!("/sys/block/ublkb{dev}/{f}"),
            format!("{d}/sysfs/{f}"),
        );
    }
    if let Some(p) = tagfile {
        k.file(p, format!("{d}/tagstate.bin"));
    }
}

/// The whole `/sys/kernel/debug/block/ublkbN` tree (files only, symlinks not followed).
fn debugfs(k: &Sink, dev: u32, d: &str) {
    let root = format!("/sys/kernel/debug/block/ublkb{dev}");
    let mut stack = vec![(root.clone(), String::new())];
    let mut files = 0usize;
    while let Some((dir, rel)) = stack.pop() {
        let mut names: Vec<(String, std::fs::FileType)> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.file_type().ok()?)))
                .collect(),
            Err(e) => {
                let why = format!(
                    "{e}: mount debugfs (mount -t debugfs none /sys/kernel/debug) and run as root"
                );
                k.push(&dir, format!("{d}/debugfs/{rel}"), Err(why));
                continue;
            }
        };
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, ty) in names {
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let src = format!("{dir}/{name}");
            if ty.is_dir() {
                stack.push((src, child_rel));
            } else if ty.is_file() && files < MAX_DEBUGFS_FILES {
                files += 1;
                k.file(&src, format!("{d}/debugfs/{child_rel}"));
            }
        }
    }
}

/// Numeric entries of a /proc directory, sorted.
fn numbers_in(dir: &str) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// `fd -> target` lines of a process, and the fds that are io_uring instances.
fn fd_listing(pid: u32) -> Result<(String, Vec<u32>), String> {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir).map_err(|e| format!("{e}: run ublk-trace as root"))?;
    let mut text = String::new();
    let mut rings = Vec::new();
    for fd in numbers_in(&dir) {
        let target = std::fs::read_link(format!("{dir}/{fd}"))
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_else(|e| format!("? ({e})"));
        if target.contains("io_uring") {
            rings.push(fd);
        }
        text.push_str(&format!("{fd} -> {target}\n"));
    }
    Ok((text, rings))
}

/// Per-thread files: state, wait channel, kernel stack, context switches, CPU time.
const TASK_FILES: [&str; 5] = ["stat", "status", "wchan", "stack", "schedstat"];

fn task_files(k: &Sink, pid: u32, tid: u32, dest: &str) {
    for f in TASK_FILES {
        k.file(
            &format!("/proc/{pid}/task/{tid}/{f}"),
            format!("{dest}/task/{tid}/{f}"),
        );
    }
}

fn fds(k: &Sink, pid: u32, dest: &str) -> Vec<u32> {
    let src = format!("/proc/{pid}/fd");
    match fd_listing(pid) {
        Ok((text, rings)) => {
            k.push(&src, format!("{dest}/fd.txt"), Ok(text.into_bytes()));
            rings
        }
        Err(e) => {
            k.push(&src, format!("{dest}/fd.txt"), Err(e));
            Vec::new()
        }
    }
}

fn procfs(k: &Sink, d: &str, servers: &[u32], waiters: &[(u32, u32)]) {
    for &pid in servers {
        let dest = format!("{d}/server-{pid}");
        k.file(&format!("/proc/{pid}/status"), format!("{dest}/status"));
        for fd in fds(k, pid, &dest) {
            k.file(
                &format!("/proc/{pid}/fdinfo/{fd}"),
                format!("{dest}/fdinfo/{fd}"),
            );
        }
        // Threads as they are now (the snapshot's list may be a moment old).
        for tid in numbers_in(&format!("/proc/{pid}/task")) {
            task_files(k, pid, tid, &dest);
        }
    }
    let mut seen = Vec::new();
    for &(pid, tid) in waiters {
        let dest = format!("{d}/waiter-{pid}");
        if !seen.contains(&pid) {
            seen.push(pid);
            k.file(&format!("/proc/{pid}/status"), format!("{dest}/status"));
            fds(k, pid, &dest);
        }
        task_files(k, pid, tid, &dest);
    }
}

/// The last [`KMSG_TAIL`] kernel log records, as `dmesg` prints them (`[seconds] text`, with
/// the syslog level), read without blocking.
pub fn kmsg_tail(deadline: Instant) -> Result<Vec<u8>, String> {
    deadline::run(deadline, read_kmsg)
        .map_err(|t| format!("/dev/kmsg: {t}"))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                format!("/dev/kmsg: {e}: run as root (or set kernel.dmesg_restrict=0)")
            }
            _ => format!("/dev/kmsg: {e}"),
        })
}

fn read_kmsg() -> std::io::Result<Vec<u8>> {
    let tail = crate::snapshot::kmsg::read_records(KMSG_TAIL, format_kmsg)?;
    Ok(tail.concat().into_bytes())
}

/// `prio,seq,ts_us,flags;text` (+ continuation lines) -> `[   12.345678] <3> text\n`.
pub fn format_kmsg(rec: &str) -> Option<String> {
    let first = rec.lines().next()?;
    let (head, text) = first.split_once(';')?;
    let mut f = head.split(',');
    let prio: u32 = f.next()?.trim().parse().ok()?;
    let _seq = f.next()?;
    let ts_us: u64 = f.next()?.trim().parse().ok()?;
    Some(format!(
        "[{:5}.{:06}] <{}> {}\n",
        ts_us / 1_000_000,
        ts_us % 1_000_000,
        prio & 7,
        text
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn kmsg_records_print_like_dmesg() {
        assert_eq!(
            format_kmsg("3,812,19725290,-;I/O error, dev ublkb0, sector 46608\n SUBSYSTEM=block\n")
                .as_deref(),
            Some("[   19.725290] <3> I/O error, dev ublkb0, sector 46608\n")
        );
        assert_eq!(format_kmsg("garbage"), None);
    }

    #[test]
    fn a_blocked_group_keeps_what_it_read_and_names_what_blocked() {
        let dir = std::env::temp_dir().join(format!("ublk-trace-collect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let a = dir.join("a");
        std::fs::write(&a, "alpha").expect("write");
        let a_path = a.to_string_lossy().into_owned();
        let t0 = Instant::now();
        let (reads, missing) = run_group("test", t0 + Duration::from_millis(200), move |k| {
            k.file(&a_path, "x/a".into());
            k.with(|p| p.current = Some("/blocked/source".into()));
            std::thread::sleep(Duration::from_secs(3));
        });
        std::fs::remove_dir_all(&dir).ok();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[0].dest, "x/a");
        assert_eq!(reads[0].result.as_deref(), Ok(&b"alpha"[..]));
        let m = missing.expect("a timeout is reported");
        assert!(m.what.contains("/blocked/source"), "{m:?}");
        assert!(m.why.contains("timed out"), "{m:?}");
    }

    #[test]
    fn unreadable_files_say_why() {
        let r = read_capped(Path::new("/nonexistent/ublk-trace/file"));
        assert!(r.is_err());
    }
}
