//! The real terminal, held by an RAII guard: raw mode + alternate screen on, restored on drop,
//! on panic (hook) and when SIGTERM/SIGINT/SIGHUP ask the loop to stop (flag checked per pass).
//!
//! While the guard lives, fd 2 points at a log file: logs and stray `eprintln!`s from any module
//! would otherwise scribble over the screen (bpftop sends them to journald for the same reason).

use std::fs::OpenOptions;
use std::io::{self, Stdout};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crossterm::{cursor, execute, terminal};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

/// Set by the signal handler; the event loop ends when it sees it.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
/// The terminal is in raw/alternate mode (so restoring twice is a no-op).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// A dup of the original stderr while fd 2 points at the log file, else -1.
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);

#[derive(Debug, thiserror::Error)]
pub enum TermError {
    #[error("the TUI needs a terminal on stdout; use --headless --json or --dump-screen WxH")]
    NotATerminal,
    #[error("open log file {path}: {source}")]
    LogFile { path: PathBuf, source: io::Error },
    #[error("set up the terminal: {0}")]
    Setup(#[source] io::Error),
}

extern "C" fn on_stop_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// SIGTERM/SIGINT/SIGHUP end the loop instead of killing the process with the terminal raw.
/// Also used by headless mode: a shell starts background jobs with SIGINT ignored, so the
/// default action cannot be relied on.
pub fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // stores to an atomic, which is async-signal-safe; `sig` is a valid catchable signal.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// A stop was requested by a signal.
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// Point fd 2 at `path` (appending), keeping the old stderr for [`restore`].
fn redirect_stderr(path: &Path) -> Result<(), TermError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| TermError::LogFile {
            path: path.to_path_buf(),
            source,
        })?;
    // SAFETY: dup of fd 2, which is open for the life of the process; the result is checked.
    let saved = unsafe { libc::dup(2) };
    if saved < 0 {
        return Err(TermError::Setup(io::Error::last_os_error()));
    }
    // SAFETY: both fds are open (file is alive, fd 2 always exists); dup2 replaces fd 2 atomically.
    if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: `saved` came from dup above and is owned here; OwnedFd closes it.
        drop(unsafe { OwnedFd::from_raw_fd(saved) });
        return Err(TermError::Setup(e));
    }
    SAVED_STDERR.store(saved, Ordering::SeqCst);
    Ok(())
}

/// Undo everything the guard did. Idempotent; called from `Drop` and from the panic hook.
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
    }
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if saved >= 0 {
        // SAFETY: `saved` is the dup made by redirect_stderr, still open and owned by us; after
        // dup2 puts it back on fd 2, OwnedFd closes the spare copy.
        unsafe {
            libc::dup2(saved, 2);
            drop(OwnedFd::from_raw_fd(saved));
        }
    }
}

/// The live terminal; dropping it gives the user their shell back.
pub struct TerminalGuard {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    /// Enter raw mode and the alternate screen; send stderr to `log_path`.
    pub fn enter(log_path: &Path) -> Result<Self, TermError> {
        use std::io::IsTerminal;
        if !io::stdout().is_terminal() {
            return Err(TermError::NotATerminal);
        }
        install_signal_handlers();
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            prev(info);
        }));
        redirect_stderr(log_path)?;
        ACTIVE.store(true, Ordering::SeqCst);
        // From here on a failure must restore: the guard's Drop does not exist yet.
        let setup = || -> io::Result<Terminal<CrosstermBackend<Stdout>>> {
            terminal::enable_raw_mode()?;
            execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
            Terminal::new(CrosstermBackend::new(io::stdout()))
        };
        match setup() {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore();
                Err(TermError::Setup(e))
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Where the TUI's logs go unless the user names a file.
pub fn default_log_path() -> PathBuf {
    std::env::temp_dir().join(format!("ublk-trace-watch.{}.log", std::process::id()))
}
