//! The TUI gives the terminal back: run `ublk-trace watch` (device list, no ublk needed) on a
//! pseudo-terminal, end it with `q` and with SIGTERM, and check that the alternate screen was
//! left, the cursor shown again and raw mode switched off. Host test: no guest needed.
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LEAVE_ALT_SCREEN: &str = "\x1b[?1049l";
const SHOW_CURSOR: &str = "\x1b[?25h";

fn bin() -> std::path::PathBuf {
    match std::env::var_os("UBLK_TEST_BIN_DIR") {
        Some(d) => std::path::PathBuf::from(d).join("ublk-trace"),
        None => std::path::PathBuf::from(env!("CARGO_BIN_EXE_ublk-trace")),
    }
}

/// A pty pair sized 80x24: (master, slave).
fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let ws = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out-pointers to live locals; name and termios may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two fresh fds that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Whether the pty's line discipline is back in canonical mode with echo (raw mode off).
fn cooked(slave: &OwnedFd) -> bool {
    // SAFETY: zeroed termios is a valid out-buffer; the fd is open.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::tcgetattr(slave.as_raw_fd(), &mut t) };
    rc == 0 && t.c_lflag & libc::ICANON != 0 && t.c_lflag & libc::ECHO != 0
}

struct Tui {
    child: Child,
    master: File,
    slave: OwnedFd,
    out: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Tui {
    fn start() -> Tui {
        let (master, slave) = openpty();
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap_or_else(|e| panic!("dup: {e}")));
        let child = Command::new(bin())
            .args(["watch", "--no-probes", "--interval", "200"])
            .stdin(io(&slave))
            .stdout(io(&slave))
            .stderr(io(&slave))
            .env("TERM", "xterm-256color")
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ublk-trace watch: {e}"));
        let master = File::from(master);
        let mut reader = master
            .try_clone()
            .unwrap_or_else(|e| panic!("dup master: {e}"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Tui {
            child,
            master,
            slave,
            out: rx,
            seen: Vec::new(),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Read output until `needle` appears or `limit` passes.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while !self.text().contains(needle) {
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                return false;
            };
            match self.out.recv_timeout(left) {
                Ok(b) => self.seen.extend(b),
                Err(_) => return false,
            }
        }
        true
    }

    fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                // Collect what was written before exit.
                while let Ok(b) = self.out.recv_timeout(Duration::from_millis(200)) {
                    self.seen.extend(b);
                }
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }

    /// The output after the last screen was drawn restores the terminal.
    fn assert_restored(&self) {
        let t = self.text();
        let leave = t.rfind(LEAVE_ALT_SCREEN);
        let enter = t.rfind("\x1b[?1049h");
        assert!(
            leave.is_some() && leave > enter,
            "alternate screen not left: {t:?}"
        );
        assert!(t.contains(SHOW_CURSOR), "cursor not shown again");
        assert!(cooked(&self.slave), "terminal left in raw mode");
    }
}

#[test]
fn q_quits_and_restores_the_terminal() {
    let mut tui = Tui::start();
    assert!(
        tui.wait_for("ublk devices", Duration::from_secs(20)),
        "no screen: {:?}",
        tui.text()
    );
    assert!(!cooked(&tui.slave), "the TUI runs in raw mode");
    std::io::Write::write_all(&mut tui.master, b"q").unwrap_or_else(|e| panic!("type q: {e}"));
    let st = tui.wait_exit().unwrap_or_else(|| panic!("q did not quit"));
    assert!(st.success(), "{st}");
    tui.assert_restored();
}

#[test]
fn sigterm_ends_the_tui_and_restores_the_terminal() {
    let mut tui = Tui::start();
    assert!(
        tui.wait_for("ublk devices", Duration::from_secs(20)),
        "no screen: {:?}",
        tui.text()
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(tui.child.id() as i32, libc::SIGTERM) };
    let st = tui
        .wait_exit()
        .unwrap_or_else(|| panic!("SIGTERM did not end the TUI"));
    assert!(st.success(), "{st}");
    tui.assert_restored();
}

#[test]
fn a_bare_escape_does_not_quit() {
    let mut tui = Tui::start();
    assert!(
        tui.wait_for("ublk devices", Duration::from_secs(20)),
        "no screen: {:?}",
        tui.text()
    );
    std::io::Write::write_all(&mut tui.master, b"\x1b").unwrap_or_else(|e| panic!("type Esc: {e}"));
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        matches!(tui.child.try_wait(), Ok(None)),
        "Esc ended the TUI"
    );
    std::io::Write::write_all(&mut tui.master, b"q").unwrap_or_else(|e| panic!("type q: {e}"));
    assert!(tui.wait_exit().is_some_and(|s| s.success()));
    tui.assert_restored();
}
