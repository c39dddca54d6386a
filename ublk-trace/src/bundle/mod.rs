//! Bug bundles: `ublk-trace diagnose dev N --bundle FILE.tar.gz` packs what a maintainer asks
//! for in a bug report into one gzip-compressed ustar archive; `ublk-trace report FILE.tar.gz`
//! opens it.
//!
//! Layout (every path under one directory `ublk-bundle-<UTC time>/`):
//! ```text
//! MANIFEST.json         tool version, kernel, time, command line, every file with its size,
//!                       and what could not be collected and why
//! findings.txt          what `diagnose` printed; findings.json: the `diagnose --json` document
//! doctor.txt            `ublk-trace doctor`; doctor.json: `doctor --json`
//! recording.jsonl       events seen while observing, as `ublk-trace record` writes them
//!                       (recording.txt instead when the probes did not run, saying why)
//! kmsg.txt              the kernel log tail (last 400 records, as dmesg prints them)
//! devN/snapshot.json    the last snapshot of device N as ublk-trace parsed it
//!                       (GET_DEV_INFO, blk-mq, inflight, procfs, fdinfo, tag-state file)
//! devN/stacks.txt       kernel stacks of the server threads and the D-state waiters
//! devN/sysfs/           /sys/block/ublkbN/{inflight,stat,size}
//! devN/debugfs/         /sys/kernel/debug/block/ublkbN, the whole tree
//! devN/server-PID/      status, fd.txt (fd -> target), fdinfo/FD of io_uring fds,
//!                       task/TID/{stat,status,wchan,stack,schedstat}
//! devN/waiter-PID/      the same for tasks in D state on the disk
//! devN/tagstate.bin     the server's tag-state file (ublk-server only)
//! ```
//! [`assemble`] is pure (collected parts in, files and manifest out); [`collect`] reads the
//! machine; [`write_atomically`] never leaves a partial bundle at the destination.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::snapshot::{DeviceSnapshot, TaskInfo};

pub mod collect;
pub mod tar;

use tar::{TarEntry, TarWriter};

/// `MANIFEST.json`'s `kind`.
pub const MANIFEST_KIND: &str = "ublk-trace.bundle";
/// Version of the bundle layout and manifest. Bump on an incompatible change.
pub const MANIFEST_VERSION: u32 = 1;
/// The gzip magic number: how `report` tells a bundle from a JSON-lines recording.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// A bundle larger than this once decompressed is refused (a damaged or hostile file).
const MAX_UNPACKED_BYTES: u64 = 1 << 30;

/// A file read from the machine for the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRead {
    /// Where it was read (`/proc/412/task/413/stack`).
    pub source: String,
    /// Its path in the bundle, relative to the bundle's directory.
    pub dest: String,
    /// The bytes, or why they could not be read.
    pub result: Result<Vec<u8>, String>,
}

/// Something the bundle lacks, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct Missing {
    pub what: String,
    pub why: String,
}

/// One file of the bundle, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct FileSize {
    pub path: String,
    pub bytes: u64,
}

/// What the recording holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct RecordingSummary {
    pub events: u64,
    /// Events the probes lost (ring buffer full).
    pub lost_events: u64,
    /// From the probes going live to the end of the observation.
    pub duration_ms: u64,
    /// Capture stopped at this many events (the rest was seen, not kept).
    pub truncated_at: Option<u64>,
}

/// `MANIFEST.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct Manifest {
    /// Always [`MANIFEST_KIND`].
    pub kind: String,
    pub version: u32,
    /// `ublk-trace` version that wrote the bundle.
    pub tool_version: String,
    /// `uname -r`.
    pub kernel: String,
    /// When the bundle was written: ms since the Unix epoch, and as UTC text.
    pub created_unix_ms: u64,
    pub created_utc: String,
    /// The command line of the `ublk-trace` run that wrote it.
    pub command_line: Vec<String>,
    pub devices: Vec<u32>,
    pub observed_ms: u64,
    /// `ebpf+snapshots` or `snapshots`, and why when snapshots only.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_note: Option<String>,
    /// `None` when there is no recording (see `not_collected`).
    pub recording: Option<RecordingSummary>,
    /// Every other file of the bundle, in archive order.
    pub files: Vec<FileSize>,
    /// What could not be collected, and why.
    pub not_collected: Vec<Missing>,
}

/// The header of a manifest, known before anything is collected.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub kernel: String,
    pub created_unix_ms: u64,
    pub command_line: Vec<String>,
    pub devices: Vec<u32>,
    pub observed_ms: u64,
    pub source: String,
    pub source_note: Option<String>,
}

/// Events captured while observing, as `record` writes them.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// The whole JSON-lines file (header line included).
    pub jsonl: Vec<u8>,
    pub summary: RecordingSummary,
}

/// Everything collected, ready to be laid out.
#[derive(Debug, Clone, Default)]
pub struct Parts {
    pub meta: Meta,
    pub findings_text: String,
    pub findings_json: String,
    /// `doctor` as text and as JSON, or why it did not run.
    pub doctor: Option<Result<(String, String), String>>,
    /// The last snapshot of each device.
    pub snapshots: Vec<DeviceSnapshot>,
    pub raw: Vec<RawRead>,
    /// Groups of raw reads abandoned at their deadline.
    pub raw_missing: Vec<Missing>,
    pub kmsg: Option<Result<Vec<u8>, String>>,
    /// The recording, or why there is none.
    pub recording: Option<Result<Recording, String>>,
}

/// Lay the parts out as bundle files (paths relative to the bundle directory) and write the
/// manifest that lists them. Pure.
pub fn assemble(p: Parts) -> (Manifest, Vec<TarEntry>) {
    let mut l = Layout::default();
    l.add("findings.txt", p.findings_text.into_bytes());
    l.add("findings.json", p.findings_json.into_bytes());
    match p.doctor {
        Some(Ok((text, json))) => {
            l.add("doctor.txt", text.into_bytes());
            l.add("doctor.json", json.into_bytes());
        }
        Some(Err(why)) => l.lack("doctor", why),
        None => {}
    }
    let summary = l.recording(p.recording);
    match p.kmsg {
        Some(Ok(bytes)) => l.add("kmsg.txt", bytes),
        Some(Err(why)) => l.lack("kmsg.txt", why),
        None => {}
    }
    for s in &p.snapshots {
        l.device(s, &p.raw);
    }
    for r in p.raw {
        match r.result {
            Ok(data) => l.add(&r.dest, data),
            Err(why) => l.lack(&r.source, why),
        }
    }
    l.missing.extend(p.raw_missing);
    let manifest = manifest(p.meta, summary, &l);
    (manifest, l.files)
}

/// Files laid out so far, and what is missing.
#[derive(Default)]
struct Layout {
    files: Vec<TarEntry>,
    missing: Vec<Missing>,
}

impl Layout {
    fn add(&mut self, path: &str, data: Vec<u8>) {
        self.files.push(TarEntry {
            path: path.to_string(),
            data,
        });
    }

    fn lack(&mut self, what: &str, why: String) {
        self.missing.push(Missing {
            what: what.to_string(),
            why,
        });
    }

    /// `recording.jsonl`, or `recording.txt` saying why there is none.
    fn recording(&mut self, r: Option<Result<Recording, String>>) -> Option<RecordingSummary> {
        match r? {
            Ok(r) => {
                self.add("recording.jsonl", r.jsonl);
                Some(r.summary)
            }
            Err(why) => {
                let text = format!("no recording of events: {why}\n");
                self.add("recording.txt", text.into_bytes());
                self.lack("recording.jsonl", why);
                None
            }
        }
    }

    /// `devN/snapshot.json` and `devN/stacks.txt`, and the snapshot's own gaps.
    fn device(&mut self, s: &DeviceSnapshot, raw: &[RawRead]) {
        let d = format!("dev{}", s.dev_id);
        match serde_json::to_vec_pretty(s) {
            Ok(j) => self.add(&format!("{d}/snapshot.json"), j),
            Err(e) => self.lack(&format!("{d}/snapshot.json"), format!("encode: {e}")),
        }
        self.add(&format!("{d}/stacks.txt"), stacks_text(s, raw).into_bytes());
        self.missing.extend(snapshot_gaps(s));
    }
}

fn manifest(m: Meta, recording: Option<RecordingSummary>, l: &Layout) -> Manifest {
    Manifest {
        kind: MANIFEST_KIND.into(),
        version: MANIFEST_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        kernel: m.kernel,
        created_unix_ms: m.created_unix_ms,
        created_utc: utc_text(m.created_unix_ms / 1000),
        command_line: m.command_line,
        devices: m.devices,
        observed_ms: m.observed_ms,
        source: m.source,
        source_note: m.source_note,
        recording,
        files: l
            .files
            .iter()
            .map(|f| FileSize {
                path: f.path.clone(),
                bytes: f.data.len() as u64,
            })
            .collect(),
        not_collected: l.missing.clone(),
    }
}

/// Sources the snapshot itself could not read, and the ones it found absent.
fn snapshot_gaps(s: &DeviceSnapshot) -> Vec<Missing> {
    let d = s.dev_id;
    let mut out: Vec<Missing> = s
        .errors
        .iter()
        .map(|e| Missing {
            what: format!("dev{d} snapshot: {}", e.source),
            why: e.detail.clone(),
        })
        .collect();
    if s.tagfile.is_none() {
        out.push(Missing {
            what: format!("dev{d}/tagstate.bin"),
            why: "no tag-state file for this device in /run/ublk-server (only ublk-server \
                  publishes one)"
                .into(),
        });
    }
    if s.proc_scanned && s.servers.is_empty() {
        out.push(Missing {
            what: format!("dev{d}/server-*"),
            why: format!("no process holds /dev/ublkc{d} open (the server is gone)"),
        });
    }
    out
}

/// The kernel stacks a maintainer reads first: one block per server thread and waiter, with
/// the raw `/proc/.../stack` when it was read, else the frames the snapshot parsed.
pub fn stacks_text(s: &DeviceSnapshot, raw: &[RawRead]) -> String {
    let mut out = format!(
        "# dev {}: kernel stacks (/proc/PID/task/TID/stack)\n",
        s.dev_id
    );
    if s.servers.is_empty() {
        out.push_str("\n(no server process found)\n");
    }
    for p in &s.servers {
        for t in &p.threads {
            out.push_str(&task_block("server", t, raw));
        }
    }
    if s.waiters.is_empty() {
        out.push_str("\n(no task in D state on this disk)\n");
    }
    for t in &s.waiters {
        out.push_str(&task_block("waiter", t, raw));
    }
    out
}

/// One thread's heading and stack for `stacks.txt`.
fn task_block(role: &str, t: &TaskInfo, raw: &[RawRead]) -> String {
    let wait = t
        .wait
        .map(|w| format!(" ({})", w.explain()))
        .unwrap_or_default();
    let mut out = format!(
        "\n== {role} pid {} tid {} comm {} state {} wchan {}{wait}\n",
        t.pid,
        t.tid,
        t.comm,
        t.state,
        if t.wchan.is_empty() { "-" } else { &t.wchan }
    );
    let src = format!("/proc/{}/task/{}/stack", t.pid, t.tid);
    match raw.iter().find(|r| r.source == src).map(|r| &r.result) {
        Some(Ok(bytes)) if !bytes.is_empty() => out.push_str(&String::from_utf8_lossy(bytes)),
        Some(Err(why)) if t.stack.is_empty() => {
            out.push_str(&format!("(stack not readable: {why})\n"));
        }
        _ if t.stack.is_empty() => out.push_str("(empty stack: the thread is running)\n"),
        _ => {
            out.push_str("(from the snapshot, offsets dropped)\n");
            for f in &t.stack {
                out.push_str(&format!("  {f}\n"));
            }
        }
    }
    out
}

/// The bundle's directory name: `ublk-bundle-20261125T161500Z`.
pub fn root_dir(created_unix_ms: u64) -> String {
    let t = utc_text(created_unix_ms / 1000);
    format!("ublk-bundle-{}", t.replace(['-', ':'], ""))
}

/// Seconds since the epoch as `2026-11-25T16:15:00Z` (proleptic Gregorian, UTC).
pub fn utc_text(unix_secs: u64) -> String {
    let days = i64::try_from(unix_secs / 86_400).unwrap_or(0);
    let rem = unix_secs % 86_400;
    let (year, month, day) = ublk_trace_common::civil::from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The gzip-compressed ustar archive of `manifest` + `files` under `root/`.
pub fn encode(root: &str, manifest: &Manifest, files: &[TarEntry]) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut w = TarWriter::new(gz, manifest.created_unix_ms / 1000);
    let json = serde_json::to_vec_pretty(manifest).context("encode MANIFEST.json")?;
    w.append(&format!("{root}/MANIFEST.json"), &json)?;
    for f in files {
        w.append(&format!("{root}/{}", f.path), &f.data)?;
    }
    let gz = w.finish()?;
    gz.finish().context("compress the bundle")
}

/// A temp file next to the destination; renamed over it by [`Pending::commit`], removed if
/// dropped uncommitted. Created first, so an unwritable path fails before minutes of work.
pub struct Pending {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<std::fs::File>,
}

impl Pending {
    pub fn create(dest: &Path) -> anyhow::Result<Self> {
        let name = dest
            .file_name()
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--bundle {}: name a file, e.g. --bundle /tmp/ublk-bug.tar.gz",
                    dest.display()
                )
            })?
            .to_string_lossy()
            .into_owned();
        let tmp = dest.with_file_name(format!(".{name}.{}.partial", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| {
                let dir = dest
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                anyhow::anyhow!(
                    "cannot create {}: {e}; choose a writable directory for --bundle \
                     (the bundle is written next to its destination, then renamed; {} must \
                     exist and be writable)",
                    tmp.display(),
                    dir.display()
                )
            })?;
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
            file: Some(file),
        })
    }

    /// Write `bytes`, sync, and rename onto the destination.
    pub fn commit(mut self, bytes: &[u8]) -> anyhow::Result<()> {
        use anyhow::Context;
        let mut f = self.file.take().context("bundle file already committed")?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("write {} (disk full?)", self.tmp.display()))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("rename {} to {}", self.tmp.display(), self.dest.display()))?;
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.file.is_some() || self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `path` starts with the gzip magic (a bundle, not a JSON-lines recording).
pub fn is_gzip(path: &Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 2];
    let mut f = std::fs::File::open(path)?;
    let mut got = 0;
    while got < 2 {
        match f.read(&mut magic[got..])? {
            0 => return Ok(false),
            n => got += n,
        }
    }
    Ok(magic == GZIP_MAGIC)
}

/// An opened bundle: its files by path relative to the bundle directory.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub root: String,
    pub files: Vec<TarEntry>,
}

impl Bundle {
    /// Decompress and unpack a bundle file.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut raw = Vec::new();
        flate2::read::MultiGzDecoder::new(f)
            .take(MAX_UNPACKED_BYTES + 1)
            .read_to_end(&mut raw)
            .with_context(|| {
                format!(
                    "decompress {}: not a complete gzip file (cut short while copying?)",
                    path.display()
                )
            })?;
        if raw.len() as u64 > MAX_UNPACKED_BYTES {
            anyhow::bail!(
                "{}: more than {MAX_UNPACKED_BYTES} bytes once decompressed; not a ublk-trace bundle",
                path.display()
            );
        }
        Self::from_tar(&raw).with_context(|| {
            format!(
                "{}: not a ublk-trace bundle (write one with 'ublk-trace diagnose dev N --bundle FILE.tar.gz')",
                path.display()
            )
        })
    }

    /// Unpack an uncompressed archive; the manifest must be there.
    pub fn from_tar(archive: &[u8]) -> anyhow::Result<Self> {
        let entries = tar::read_entries(archive)?;
        let mut root = None::<String>;
        let mut files = Vec::with_capacity(entries.len());
        for e in entries {
            let Some((r, rel)) = e.path.split_once('/') else {
                continue;
            };
            if root.is_none() {
                root = Some(r.to_string());
            }
            files.push(TarEntry {
                path: rel.to_string(),
                data: e.data,
            });
        }
        let b = Self {
            root: root.unwrap_or_default(),
            files,
        };
        if b.get("MANIFEST.json").is_none() {
            anyhow::bail!("no MANIFEST.json in the archive");
        }
        Ok(b)
    }

    pub fn get(&self, rel: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|f| f.path == rel)
            .map(|f| f.data.as_slice())
    }

    pub fn manifest(&self) -> anyhow::Result<Manifest> {
        use anyhow::Context;
        let bytes = self.get("MANIFEST.json").context("no MANIFEST.json")?;
        let m: Manifest = serde_json::from_slice(bytes).context("read MANIFEST.json")?;
        if m.kind != MANIFEST_KIND {
            anyhow::bail!("MANIFEST.json is of kind '{}', not {MANIFEST_KIND}", m.kind);
        }
        if m.version > MANIFEST_VERSION {
            anyhow::bail!(
                "bundle version {} is newer than this ublk-trace reads ({MANIFEST_VERSION}); upgrade ublk-trace",
                m.version
            );
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests;
