//! Child processes with deadlines: wait for an exit, for a line of output, send a signal.
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Wait for `child` up to `limit` (None: still running).
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `cmd` with its stdout discarded (stderr as the caller set it) and wait up to `limit`. One still running then is
/// said (as `what`) on stdout and killed, not waited for: a DEL stuck in the kernel may not
/// die even on SIGKILL, and a teardown must not hang the guest. None when it could not be
/// started or did not finish.
pub fn run_bounded(cmd: &mut Command, what: &str, limit: Duration) -> Option<ExitStatus> {
    let mut child = cmd.stdout(Stdio::null()).spawn().ok()?;
    let st = wait_timeout(&mut child, limit);
    if st.is_none() {
        println!("{what} still running after {} s", limit.as_secs());
        let _ = child.kill();
    }
    st
}

/// Forward the lines of a child's pipe to a channel (so waits can have deadlines).
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

/// Wait for a line containing `needle`; Err holds the lines seen (on timeout or EOF).
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

/// Send `sig` to our own child.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, sig) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn a_line_is_waited_for_and_a_missing_one_times_out_with_what_was_seen() {
        let mut c = Command::new("sh")
            .args(["-c", "echo one; echo ready two"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let rx = line_channel(c.stdout.take().expect("piped"));
        assert_eq!(
            wait_line(&rx, "ready", Duration::from_secs(10)),
            Ok("ready two".to_string())
        );
        assert_eq!(
            wait_line(&rx, "never", Duration::from_secs(10)),
            Err(vec![])
        );
        assert!(wait_timeout(&mut c, Duration::from_secs(10)).is_some());
    }

    #[test]
    fn a_bounded_run_returns_the_exit_or_gives_up_at_its_limit() {
        let ok = run_bounded(
            Command::new("true").arg(""),
            "true",
            Duration::from_secs(10),
        );
        assert!(ok.is_some_and(|s| s.success()));
        let t0 = std::time::Instant::now();
        let slow = run_bounded(
            Command::new("sleep").arg("5"),
            "sleep 5",
            Duration::from_millis(100),
        );
        assert!(slow.is_none());
        assert!(t0.elapsed() < Duration::from_secs(4), "waited for the kill");
    }

    #[test]
    fn a_child_that_does_not_exit_is_reported_as_running() {
        let mut c = Command::new("sleep").arg("30").spawn().expect("sleep");
        assert_eq!(wait_timeout(&mut c, Duration::from_millis(100)), None);
        signal(&c, libc::SIGKILL);
        assert!(wait_timeout(&mut c, Duration::from_secs(10)).is_some());
    }
}
