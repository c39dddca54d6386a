//! Reads that can block (a task stuck on the disk, a hung control command) run on a helper
//! thread that is abandoned at the deadline: the tracer must never hang on what it diagnoses.
//! An abandoned thread stays blocked in the kernel until its read returns; the caller records
//! the timeout as evidence.
use std::sync::mpsc;
use std::time::Instant;

/// The work did not finish before the deadline (the thread was left behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {waited_ms} ms (the read is blocked in the kernel)")]
pub struct TimedOut {
    pub waited_ms: u64,
}

/// Work started on a helper thread; [`Pending::wait`] collects it or gives up.
pub struct Pending<T> {
    rx: Option<mpsc::Receiver<T>>,
    start: Instant,
}

/// Start `f` on a helper thread now (several reads can then run side by side, so one
/// blocked source does not eat the others' time).
pub fn spawn<T, F>(f: F) -> Pending<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("snapshot-read".into())
        .spawn(move || {
            // The receiver may be gone after a timeout; nothing to do then.
            let _ = tx.send(f());
        });
    Pending {
        rx: spawned.ok().map(|_| rx),
        start: Instant::now(),
    }
}

impl<T> Pending<T> {
    /// The result, or [`TimedOut`] at `deadline` (the thread is left behind).
    pub fn wait(self, deadline: Instant) -> Result<T, TimedOut> {
        let timed_out = || TimedOut {
            waited_ms: u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let Some(rx) = self.rx.as_ref() else {
            return Err(timed_out());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left).map_err(|_| timed_out())
    }
}

/// Run `f` on a helper thread and wait for it until `deadline`.
pub fn run<T, F>(deadline: Instant, f: F) -> Result<T, TimedOut>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    spawn(f).wait(deadline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fast_work_returns_its_value() {
        let r = run(Instant::now() + Duration::from_secs(5), || 41 + 1);
        assert_eq!(r, Ok(42));
    }

    #[test]
    fn parallel_reads_share_the_deadline() {
        // One blocked read must not starve the others: both start at once.
        let t0 = Instant::now();
        let slow = spawn(|| std::thread::sleep(Duration::from_secs(3)));
        let fast = spawn(|| 7);
        let until = t0 + Duration::from_millis(300);
        assert!(slow.wait(until).is_err());
        assert_eq!(fast.wait(until), Ok(7));
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn blocked_work_is_abandoned_at_the_deadline() {
        let t0 = Instant::now();
        let r = run(t0 + Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(3));
            1
        });
        let took = t0.elapsed();
        assert!(r.is_err());
        assert!(took < Duration::from_secs(2), "waited {took:?}");
    }
}
