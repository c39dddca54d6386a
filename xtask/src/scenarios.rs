//! The bug-reproduction scenarios: ONE table read by `cargo xtask repro` (xtask/src/repro.rs) and
//! by the guest tests that assert each scenario's diagnosis (ublk-trace/tests/repro_scenarios.rs,
//! which includes this file with `#[path]`), so the two cannot drift. Append new scenarios at the
//! end; every scenario needs a guest test there (a host test in that file checks) and a section
//! in docs/scenarios.md (checked by xtask's tests).
//!
//! This file must stay self-contained (no `crate::` paths, std only): two crates compile it.

pub struct Scenario {
    pub name: &'static str,
    /// What the user sees.
    pub symptom: &'static str,
    /// `ublk-server` arguments after `run`.
    pub server: &'static str,
    /// Shell run in the background to trigger the bug (device is /dev/ublkb0).
    pub workload: &'static str,
    /// Shell run after the workload started (e.g. stop the server); `$SRV` is its pid.
    pub action: &'static str,
    /// The finding class that names the bug.
    pub expect: &'static str,
    /// What `diagnose` started after the fault names (one of these): the classes the snapshots
    /// and the traffic that goes on can tell without having seen the fault happen. Empty: the
    /// fault leaves nothing a later look could see (the device serves on), so a late look
    /// must simply name nothing false.
    pub late: &'static [&'static str],
    /// True side views that either look may name, depending on where its snapshots fall (a
    /// late look is not wrong to name them when the live one happened not to).
    pub also: &'static [&'static str],
}

impl Scenario {
    /// The first kernel whose driver has the mode the scenario's server runs in (the server
    /// refuses older ones): `None` for the per-tag mode every kernel has.
    pub fn min_kernel(&self) -> Option<&'static str> {
        let args: Vec<&str> = self.server.split_whitespace().collect();
        if args.contains(&"--batch-io") {
            Some("7.0")
        } else if args.contains(&"--per-io-daemon") {
            Some("6.16")
        } else {
            None
        }
    }
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "hang-tag",
        symptom: "one request never completes; its reader sits in D state",
        server: "null --queues 1 --depth 4 --inject hang:q=0,tag=1",
        workload: "fio --name=r --filename=/dev/ublkb0 --rw=randread --bs=4k --iodepth=4 --ioengine=io_uring --direct=1 --time_based --runtime=600 >/dev/null 2>&1",
        action: "",
        expect: "STUCK_IN_SERVER",
        late: &["STUCK_IN_SERVER"],
        also: &[],
    },
    Scenario {
        name: "stopped-server",
        symptom: "all I/O hangs; GET_DEV_INFO still says LIVE",
        server: "null --queues 1 --depth 8",
        workload: "dd if=/dev/ublkb0 of=/dev/null bs=4k count=1000000 iflag=direct 2>/dev/null",
        action: "kill -STOP $SRV",
        expect: "SERVER_STOPPED",
        late: &["SERVER_STOPPED"],
        also: &[],
    },
    Scenario {
        name: "crash",
        symptom: "I/O errors, the block device disappears, /dev/ublkc0 stays",
        server: "null --queues 1 --depth 8 --inject crash:after=200",
        workload: "dd if=/dev/ublkb0 of=/dev/null bs=4k count=1000000 iflag=direct 2>/dev/null",
        action: "",
        expect: "SERVER_DEAD",
        late: &["SERVER_DEAD"],
        also: &[],
    },
    Scenario {
        name: "error-commit",
        symptom: "reads fail with EIO although the backend is fine",
        server: "null --queues 1 --depth 8 --inject error:errno=5",
        workload: "dd if=/dev/ublkb0 of=/dev/null bs=4k count=100 iflag=direct 2>/dev/null",
        action: "",
        expect: "BAD_COMMIT",
        late: &["BAD_COMMIT"],
        also: &[],
    },
    Scenario {
        name: "zero-commit",
        symptom: "reads fail, writes spin (partial-completion requeue storm)",
        server: "null --queues 1 --depth 8 --inject zero-commit",
        workload: "dd if=/dev/ublkb0 of=/dev/null bs=4k count=100 iflag=direct 2>/dev/null",
        action: "",
        expect: "BAD_COMMIT",
        late: &["BAD_COMMIT"],
        also: &[],
    },
    Scenario {
        name: "slow",
        symptom: "I/O completes, but each request takes hundreds of ms",
        server: "null --queues 1 --depth 8 --inject delay:ms=400",
        workload: "fio --name=r --filename=/dev/ublkb0 --rw=randread --bs=4k --iodepth=4 --ioengine=io_uring --direct=1 --time_based --runtime=600 >/dev/null 2>&1",
        action: "",
        expect: "SLOW",
        late: &["SLOW"],
        also: &[],
    },
    Scenario {
        name: "stall-queue",
        symptom: "I/O hangs although the server process is running",
        server: "null --queues 1 --depth 8 --inject stall-queue:q=0,after=100",
        // Several requests in flight: the one the thread stalled on is in the server, the
        // others are queued to a thread that never runs their delivery task work.
        workload: "fio --name=r --filename=/dev/ublkb0 --rw=randread --bs=4k --iodepth=8 --ioengine=io_uring --direct=1 --time_based --runtime=600 >/dev/null 2>&1",
        action: "",
        expect: "NOT_DELIVERED",
        late: &["NOT_DELIVERED"],
        also: &[],
    },
    Scenario {
        name: "skip-fetch",
        symptom: "START_DEV never completes; the server waits forever for the device",
        server: "null --queues 1 --depth 8 --inject skip-fetch:q=0,tags=2",
        workload: "true",
        action: "",
        expect: "NO_FETCH",
        late: &["NO_FETCH"],
        also: &[],
    },
    Scenario {
        name: "wrong-tag",
        symptom: "one read never completes although the server says it committed it",
        server: "null --queues 1 --depth 4 --inject wrong-tag:q=0",
        workload: "dd if=/dev/ublkb0 of=/dev/null bs=4k count=1000000 iflag=direct 2>/dev/null",
        action: "",
        expect: "CMD_REJECTED",
        late: &["CMD_REJECTED", "STUCK_IN_SERVER"],
        also: &[],
    },
    Scenario {
        name: "double-commit",
        symptom: "I/O works, but a COMMIT fails with EBUSY in the server's log",
        server: "null --queues 1 --depth 4 --inject double-commit:q=0",
        workload: "dd if=/dev/ublkb0 of=/dev/null bs=4k count=1000000 iflag=direct 2>/dev/null",
        action: "",
        expect: "CMD_REJECTED",
        late: &[],
        also: &[],
    },
    Scenario {
        name: "wrong-thread",
        symptom: "one read never completes; the server's COMMIT failed with EINVAL",
        server: "null --queues 1 --depth 4 --inject wrong-thread:q=0",
        workload: "dd if=/dev/ublkb0 of=/dev/null bs=4k count=1000000 iflag=direct 2>/dev/null",
        action: "",
        expect: "CMD_REJECTED",
        late: &["CMD_REJECTED", "STUCK_IN_SERVER"],
        also: &[],
    },
    Scenario {
        name: "no-submit",
        symptom: "one read never completes; the server believes it committed it",
        server: "null --queues 1 --depth 4 --inject no-submit:q=0",
        workload: "dd if=/dev/ublkb0 of=/dev/null bs=4k count=1000000 iflag=direct 2>/dev/null",
        action: "",
        expect: "STUCK_IN_SERVER",
        late: &["STUCK_IN_SERVER"],
        also: &[],
    },
    Scenario {
        name: "no-reap",
        symptom: "I/O hangs; the server process sleeps and looks healthy",
        server: "null --queues 1 --depth 4 --inject no-reap:q=0",
        workload: "dd if=/dev/ublkb0 of=/dev/null bs=4k count=1000000 iflag=direct 2>/dev/null",
        action: "",
        expect: "STUCK_IN_SERVER",
        late: &["STUCK_IN_SERVER"],
        also: &[],
    },
    Scenario {
        name: "start-gate",
        symptom: "up to 6.17: START_DEV never completes, the server never gets ready (6.18+: works)",
        server: "null --queues 1 --depth 4 --inject start-gate",
        workload: "true",
        action: "",
        expect: "CTRL_PENDING",
        late: &["CTRL_PENDING"],
        also: &[],
    },
    Scenario {
        name: "zero-commit-write",
        symptom: "a write never completes and a CPU spins: the kernel requeues it forever",
        server: "null --queues 1 --depth 4 --inject zero-commit",
        workload: "dd if=/dev/zero of=/dev/ublkb0 bs=4k count=1 oflag=direct 2>/dev/null",
        action: "",
        expect: "BAD_COMMIT",
        late: &["BAD_COMMIT"],
        // Between spins the write sits on blk-mq's requeue_list: a debugfs snapshot series
        // that catches it there every time sees a request held in the block layer (seen from
        // the live watch and from a late diagnose, each in some runs and not in others).
        also: &["HELD_IN_BLOCK_LAYER"],
    },
    Scenario {
        name: "batch-no-rearm",
        symptom: "7.0+, BATCH_IO: I/O runs for a few thousand requests, then every request hangs",
        server: "null --queues 1 --depth 8 --batch-io --inject no-rearm:q=0",
        workload: "fio --name=r --filename=/dev/ublkb0 --rw=randread --bs=4k --iodepth=8 --ioengine=io_uring --direct=1 --time_based --runtime=600 >/dev/null 2>&1",
        action: "",
        expect: "NO_FETCH",
        late: &["NO_FETCH"],
        also: &[],
    },
];
