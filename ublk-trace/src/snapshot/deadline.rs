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

/// Run `f` on a helper thread and wait for it until `deadline`.
pub fn run<T, F>(deadline: Instant, f: F) -> Result<T, TimedOut>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let start = Instant::now();
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("snapshot-read".into())
        .spawn(move || {
            // The receiver may be gone after a timeout; nothing to do then.
            let _ = tx.send(f());
        });
    let timed_out = || TimedOut {
        waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    if spawned.is_err() {
        return Err(timed_out());
    }
    let left = deadline.saturating_duration_since(Instant::now());
    rx.recv_timeout(left).map_err(|_| timed_out())
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
