//! Helpers for ublk-trace's guest tests: locate binaries, spawn with deadlines, wait for a
//! ready line. Every wait is bounded: a hung device must fail a test, not hang the guest.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A project binary: `$UBLK_TEST_BIN_DIR/<name>` in the guest, else the cargo build next to us.
pub fn bin(name: &str) -> PathBuf {
    if let Some(d) = std::env::var_os("UBLK_TEST_BIN_DIR") {
        return PathBuf::from(d).join(name);
    }
    if name == "ublk-trace" {
        return PathBuf::from(env!("CARGO_BIN_EXE_ublk-trace"));
    }
    // Other crates' binaries: the same target directory as ours.
    PathBuf::from(env!("CARGO_BIN_EXE_ublk-trace")).with_file_name(name)
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Forward the lines of a child's pipe to a channel (so waits can have deadlines), and keep
/// all of them for error messages.
pub fn line_channel(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Wait for a line containing `needle`; returns the lines seen (Err on timeout or EOF).
pub fn wait_line(
    rx: &mpsc::Receiver<String>,
    needle: &str,
    limit: Duration,
) -> Result<String, Vec<String>> {
    let until = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return Ok(l),
            Ok(l) => seen.push(l),
            Err(_) => return Err(seen),
        }
    }
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, sig) };
}
