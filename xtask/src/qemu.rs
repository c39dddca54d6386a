//! Boot a kernel + initramfs under QEMU, stream the console, and turn what happened into an
//! outcome: the guest command's exit code, a timeout, or a guest that died (panic) without one.
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::initramfs::EXIT_MARKER;

#[derive(Debug, Clone)]
pub struct BootOpts {
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub smp: u32,
    pub mem_mib: u32,
    pub timeout: Duration,
    /// Extra kernel command line.
    pub append: String,
    pub accel: Accel,
    /// TCG with one host thread for all vCPUs: slower, but immune to multi-threaded TCG's
    /// races on cross-modifying code (kernel text patching while kprobes are armed).
    pub single_thread_tcg: bool,
    /// A second serial port (the guest's /dev/ttyS1) written to this host file: a channel
    /// for data that kernel messages on the console cannot interleave with.
    pub data_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

#[derive(Debug)]
pub enum Outcome {
    /// The guest command finished with this exit code.
    Exited(i32),
    /// Killed at the deadline.
    TimedOut,
    /// QEMU ended without the exit marker: kernel panic, oops=panic, triple fault.
    Died { qemu_status: String },
}

impl Outcome {
    /// A shell-like exit code: the guest's, 124 for a timeout, 125 for a dead guest.
    pub fn code(&self) -> i32 {
        match self {
            Outcome::Exited(c) => *c,
            Outcome::TimedOut => 124,
            Outcome::Died { .. } => 125,
        }
    }
}

fn base_args(o: &BootOpts) -> Vec<String> {
    // Once per run: which emulator, and (when it is old) what that costs.
    static ANNOUNCE: std::sync::Once = std::sync::Once::new();
    ANNOUNCE.call_once(|| eprintln!("[guest] using {}", crate::hostqemu::describe()));
    let accel = match o.accel {
        // thread=multi: one host thread per vCPU; -cpu max: every feature TCG can emulate.
        Accel::Tcg if o.single_thread_tcg => ["-accel", "tcg,thread=single", "-cpu", "max"],
        Accel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "max"],
        Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
    };
    let mut v: Vec<String> = accel.iter().map(|s| s.to_string()).collect();
    v.extend(
        [
            "-smp",
            &o.smp.to_string(),
            "-m",
            &format!("{}M", o.mem_mib),
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel",
            &o.vmlinuz.display().to_string(),
            "-initrd",
            &o.initrd.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    v
}

/// Non-interactive boot: serial console on a pipe, streamed to `sink` line by line and kept in
/// `log`. `panic=-1 oops=panic` turn any oops into a quick QEMU exit instead of a hang.
pub fn boot_captured(
    o: &BootOpts,
    log: &Path,
    mut sink: impl FnMut(&str),
) -> Result<(Outcome, Vec<String>)> {
    let mut args = base_args(o);
    args.extend(["-serial".into(), "stdio".into()]);
    if let Some(p) = &o.data_out {
        args.extend(["-serial".into(), format!("file:{}", p.display())]);
    }
    args.extend([
        "-append".into(),
        format!("console=ttyS0 panic=-1 oops=panic loglevel=4 {}", o.append),
    ]);
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let (tx, rx) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(|l| l.ok()) {
            let s = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if tx2.send(format!("[qemu] {line}")).is_err() {
                break;
            }
        }
    });
    let mut logf =
        std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let deadline = Instant::now() + o.timeout;
    let mut lines = Vec::new();
    let mut exit_code = None;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(line) => {
                let _ = writeln!(logf, "{line}");
                if let Some(c) = line.strip_prefix(EXIT_MARKER).or_else(|| {
                    line.find(EXIT_MARKER)
                        .map(|i| &line[i + EXIT_MARKER.len()..])
                }) && let Ok(c) = c.trim().parse::<i32>()
                {
                    exit_code = Some(c);
                }
                sink(&line);
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(_)) = child.try_wait() {
                    // Drain what is left, then stop.
                    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                        let _ = writeln!(logf, "{line}");
                        if let Some(i) = line.find(EXIT_MARKER)
                            && let Ok(c) = line[i + EXIT_MARKER.len()..].trim().parse::<i32>()
                        {
                            exit_code = Some(c);
                        }
                        sink(&line);
                        lines.push(line);
                    }
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait().context("wait for qemu")?;
    let outcome = match (timed_out, exit_code) {
        (true, _) => Outcome::TimedOut,
        (false, Some(c)) => Outcome::Exited(c),
        (false, None) => Outcome::Died {
            qemu_status: status.to_string(),
        },
    };
    Ok((outcome, lines))
}

/// Interactive boot on the user's terminal: virtio console (hvc0) without signal handling, so
/// Ctrl-C reaches the guest program and arrow-key bursts are not split (see docs/guest.md).
pub fn boot_interactive(o: &BootOpts, cols: u16, rows: u16) -> Result<i32> {
    let mut args = base_args(o);
    args.extend(
        [
            "-chardev",
            "stdio,id=con,signal=off",
            "-device",
            "virtio-serial-pci",
            "-device",
            "virtconsole,chardev=con",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend([
        "-append".into(),
        format!(
            "console=hvc0 panic=-1 loglevel=3 tui_size={cols}x{rows} {}",
            o.append
        ),
    ]);
    // `timeout --foreground`: without it QEMU lands in a background process group, is stopped
    // by job control when it touches the tty, and hangs.
    let status = Command::new("timeout")
        .arg("--foreground")
        .arg("-k")
        .arg("5")
        .arg(o.timeout.as_secs().to_string())
        .arg("qemu-system-x86_64")
        .args(&args)
        .status()
        .context("start qemu-system-x86_64 (run `cargo xtask setup`)")?;
    // If QEMU was killed the terminal may still be in the guest's alternate screen.
    if !status.success() {
        print!("\x1b[0m\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
    }
    // isa-debug-exit: QEMU's status is (guest rc << 1) | 1; 124 from `timeout`.
    Ok(match status.code() {
        Some(c) if c & 1 == 1 && c != 125 => c >> 1,
        Some(c) => c,
        None => 125,
    })
}
