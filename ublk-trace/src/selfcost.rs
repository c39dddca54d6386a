//! The tracer's own CPU time, by part: what `watch` costs the machine it diagnoses, and where
//! that time goes (the "show where the time goes: per program, per read"; the eBPF
//! programs' share is counted by the kernel, see `--bpf-stats`). Each part is charged the
//! thread CPU time (user + system, `CLOCK_THREAD_CPUTIME_ID`) of the work done for it, so a
//! part's figure does not depend on how busy the rest of the machine is.
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::clock_ns;

/// One part of the tracer's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The event loop: applying messages to the model, diagnosing and drawing or printing.
    Main,
    /// Of `Main`: building and writing one headless document (view model, diagnosis, JSON).
    Document,
    /// Of `Main`: applying a read of the driver's memory or a snapshot to the model.
    Apply,
    /// The driver thread: asking its worker for a read, passing the result on, sleeping.
    Driver,
    /// Reading the driver's memory (`crate::driver`), on its worker thread.
    DriverRead,
    /// The snapshot thread itself: sysfs/debugfs reads and assembling the snapshot.
    Snapshot,
    /// GET_DEV_INFO on its helper thread (one io_uring per query).
    DevInfo,
    /// The /proc part of a snapshot: servers, waiters, their threads.
    Proc,
    /// Of `Proc`: the walks of every task in /proc (servers and waiters found anew).
    ProcWalk,
    /// Of `Proc`: the server threads' stat, wchan, stack and status.
    ProcThreads,
    /// Of `Proc`: the server's io_uring fdinfo.
    ProcRings,
    /// blk-mq debugfs.
    BlkMq,
    /// The probe thread: reading the eBPF maps and rings.
    Probes,
}

impl Part {
    pub const ALL: [Part; 13] = [
        Part::Main,
        Part::Document,
        Part::Apply,
        Part::Driver,
        Part::DriverRead,
        Part::Snapshot,
        Part::DevInfo,
        Part::Proc,
        Part::ProcWalk,
        Part::ProcThreads,
        Part::ProcRings,
        Part::BlkMq,
        Part::Probes,
    ];

    /// The name in the summary line (one word: the bench parses `name=ms/runs`).
    pub fn name(self) -> &'static str {
        match self {
            Part::Main => "main",
            Part::Driver => "driver",
            Part::DriverRead => "driver_read",
            Part::Snapshot => "snapshot",
            Part::DevInfo => "dev_info",
            Part::Proc => "proc",
            Part::ProcWalk => "proc_walk",
            Part::ProcThreads => "proc_threads",
            Part::ProcRings => "proc_rings",
            Part::Document => "document",
            Part::Apply => "apply",
            Part::BlkMq => "blk_mq",
            Part::Probes => "probes",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const N: usize = Part::ALL.len();
#[allow(clippy::declare_interior_mutable_const)] // only used to initialise the arrays below
const ZERO: AtomicU64 = AtomicU64::new(0);
static CPU_NS: [AtomicU64; N] = [ZERO; N];
static RUNS: [AtomicU64; N] = [ZERO; N];

/// This thread's CPU time so far, in ns (0 if the clock cannot be read).
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The whole process's CPU time so far (every thread, also those that have exited), in ns.
pub fn process_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Run `f` on this thread and charge its CPU time to `part` as one run.
pub fn charge<T>(part: Part, f: impl FnOnce() -> T) -> T {
    let _charged = Charged::new(part);
    f()
}

/// Charges the CPU time from its creation to its drop to `part` as one run (for a loop body
/// with several exits).
pub struct Charged {
    part: Part,
    t0: u64,
}

impl Charged {
    pub fn new(part: Part) -> Self {
        Self {
            part,
            t0: thread_cpu_ns(),
        }
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        add(self.part, thread_cpu_ns().saturating_sub(self.t0));
    }
}

/// Charge `cpu_ns` to `part` as one run.
pub fn add(part: Part, cpu_ns: u64) {
    CPU_NS[part.index()].fetch_add(cpu_ns, Ordering::Relaxed);
    RUNS[part.index()].fetch_add(1, Ordering::Relaxed);
}

/// What one part has cost so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub part: Part,
    pub cpu_ns: u64,
    pub runs: u64,
}

/// Every part's cost so far, in [`Part::ALL`]'s order.
pub fn totals() -> Vec<Cost> {
    Part::ALL
        .iter()
        .map(|&part| Cost {
            part,
            cpu_ns: CPU_NS[part.index()].load(Ordering::Relaxed),
            runs: RUNS[part.index()].load(Ordering::Relaxed),
        })
        .collect()
}

/// One line for stderr: the process's CPU time over `wall_ns`, and each part's share
/// (`main=348ms/60`: 348 ms of CPU in 60 runs). The parts do not add up to the whole: thread
/// start-up, BTF parsing and the eBPF loader are in the whole only, and a part named "of"
/// another above is also in that one.
pub fn summary(process_cpu_ns: u64, wall_ns: u64, costs: &[Cost]) -> String {
    let pct = if wall_ns == 0 {
        0.0
    } else {
        process_cpu_ns as f64 * 100.0 / wall_ns as f64
    };
    let parts: Vec<String> = costs
        .iter()
        .filter(|c| c.runs > 0)
        .map(|c| format!("{}={}ms/{}", c.part.name(), c.cpu_ns / 1_000_000, c.runs))
        .collect();
    format!(
        "own CPU {} ms in {:.1} s ({pct:.1} % of one CPU); by part: {}",
        process_cpu_ns / 1_000_000,
        wall_ns as f64 / 1e9,
        if parts.is_empty() {
            "none counted".to_string()
        } else {
            parts.join(" ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_charged_to_its_part_and_the_summary_names_it() {
        let before = totals()[Part::Proc.index()];
        let x = charge(Part::Proc, || {
            (0..2_000_000u64).fold(0u64, |a, b| a ^ b.wrapping_mul(31))
        });
        std::hint::black_box(x);
        let after = totals()[Part::Proc.index()];
        assert_eq!(after.runs, before.runs + 1);
        assert!(after.cpu_ns > before.cpu_ns, "a busy loop costs CPU time");
        let line = summary(
            2_500_000_000,
            10_000_000_000,
            &[
                Cost {
                    part: Part::Main,
                    cpu_ns: 348_000_000,
                    runs: 60,
                },
                Cost {
                    part: Part::DevInfo,
                    cpu_ns: 0,
                    runs: 0,
                },
            ],
        );
        assert_eq!(
            line,
            "own CPU 2500 ms in 10.0 s (25.0 % of one CPU); by part: main=348ms/60"
        );
    }
}
