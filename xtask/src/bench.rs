//! `cargo xtask bench`: the server against the kernel's null_blk (the ceiling) and rublk, and the
//! tracer's cost, measured in the same guest boot with interleaved rounds. Emulated guests make
//! absolute numbers noisy, so it reports medians with their spread, ratios, and server CPU time
//! per I/O (on-CPU ns of all server threads from /proc/PID/task/*/schedstat ÷ I/Os).
//!
//! Output: a table on stdout and JSON under `target/bench/` (`bench-<unix time>.json`, `latest.json`).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::guest::{GuestOpts, boot_opts, build_project, make_initramfs};
use crate::kernel::KernelSpec;
use crate::util::{cache_dir, target_dir, write_atomic};

mod progress;

/// Pinned: the rublk release the issue's anchors were measured with.
const RUBLK_VERSION: &str = "0.2.15";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Quick,
    Normal,
    Long,
}

pub struct BenchOpts {
    pub mode: Mode,
    pub kernel: KernelSpec,
    /// Skip building rublk.
    pub no_rublk: bool,
    /// Only the tracer's cost: untraced vs `+record` vs `+watch`, pinned 2-vCPU layout only.
    pub tracer_only: bool,
    /// Rounds instead of the mode's default.
    pub rounds: Option<u32>,
    /// Turn on `kernel.bpf_stats_enabled` so the tracers report run count and time per
    /// program (adds two clock reads per program run: compare ratios only with like runs).
    pub bpf_stats: bool,
    /// Only the layout whose name contains this (`1vcpu`, `pinned`).
    pub layout: Option<String>,
}

/// One measured device configuration.
#[derive(Debug, Clone)]
struct Config {
    name: &'static str,
    /// Shell that starts the device and sets $SRV_PID (empty for null_blk) and $DEV.
    start: String,
    /// Shell that tears it down.
    stop: String,
    /// Shell run before fio (attach a tracer) and after (stop it).
    attach: String,
    detach: String,
}

fn ours(name: &'static str, target: &str, queues: u32, depth: u32) -> Config {
    ours_with(name, target, queues, depth, "")
}

/// `ours` with extra `ublk-server run` options.
fn ours_with(name: &'static str, target: &str, queues: u32, depth: u32, extra: &str) -> Config {
    let size = if target == "ramdisk" {
        " --size 256M"
    } else {
        ""
    };
    Config {
        name,
        start: format!(
            // Remove the last config's output first: the background job truncates it only
            // once it runs, and wait_ready must not find that config's "ready" line.
            "rm -f /tmp/srv.out /tmp/srv.err\n\
             ublk-server run {target}{size} --queues {queues} --depth {depth}{extra} > /tmp/srv.out 2>/tmp/srv.err &\n\
             SRV_PID=$!\nwait_ready /tmp/srv.out || {{ echo \"server did not start:\"; cat /tmp/srv.out /tmp/srv.err; kill -KILL $SRV_PID; wait $SRV_PID; SRV_PID=; }}\n\
             DEV=$(grep -o '/dev/ublkb[0-9]*' /tmp/srv.out | head -n 1)\n"
        ),
        // `wait` with an empty pid would wait for every background job: guard it.
        // SIGINT, then SIGKILL after 30 s: a signal that reached the job before the server
        // blocked it is lost (a non-interactive shell starts background jobs with SIGINT
        // ignored), and a lost stop must not hang the whole run.
        stop: "[ -n \"$SRV_PID\" ] && stop_pid $SRV_PID INT 30\n".into(),
        attach: String::new(),
        detach: String::new(),
    }
}

/// `ours_with` for an I/O mode the kernel may lack: the row is skipped (a `BENCH-SKIP` line
/// naming the feature) unless the guest kernel's GET_FEATURES lists `feature`.
fn ours_needing(
    name: &'static str,
    target: &str,
    queues: u32,
    depth: u32,
    extra: &str,
    feature: &str,
) -> Config {
    let mut c = ours_with(name, target, queues, depth, extra);
    c.start = format!(
        "ublk-server features | grep -qw {feature} || {{ echo \"BENCH-SKIP config={name} \
         (this kernel lacks UBLK_F_{feature}: bench with --kernel 7)\"; SRV_PID=; continue; }}\n{}",
        c.start
    );
    c
}

fn configs(mode: Mode, rublk: bool, tracer_only: bool) -> Vec<Config> {
    let mut v = Vec::new();
    if tracer_only {
        v.push(ours("ours-null-q1", "null", 1, 64));
        v.extend(traced());
        v.push(untraced_again());
        return v;
    }
    v.push(Config {
        name: "null_blk",
        start: "modload null_blk queue_mode=2 irqmode=0 nr_devices=1 gb=16 hw_queue_depth=64 submit_queues=1 \
                && SRV_PID= && DEV=/dev/nullb0\n"
            .into(),
        stop: "rmmod null_blk\n".into(),
        attach: String::new(),
        detach: String::new(),
    });
    v.push(ours("ours-null-q1", "null", 1, 64));
    // The newer I/O modes next to the per-tag one (same target and geometry).
    v.push(ours_needing(
        "ours-null-q1-per-io-daemon",
        "null",
        1,
        64,
        " --per-io-daemon --threads-per-queue 2",
        "PER_IO_DAEMON",
    ));
    v.push(ours_needing(
        "ours-null-q1-batch-io",
        "null",
        1,
        64,
        " --batch-io",
        "BATCH_IO",
    ));
    if mode != Mode::Quick {
        // The queue threads' default policy is SCHED_BATCH; this row keeps its effect (and
        // its QD1 cost) measured.
        v.push(ours_with(
            "ours-null-q1-sched-normal",
            "null",
            1,
            64,
            " --sched normal",
        ));
        v.push(ours("ours-null-q2", "null", 2, 64));
        v.push(ours("ours-ramdisk-q1", "ramdisk", 1, 64));
        v.push(ours("ours-ramdisk-q2", "ramdisk", 2, 64));
    }
    if rublk {
        v.push(Config {
            name: "rublk-null-q1",
            start: "rublk add null -q 1 -d 64 >/tmp/rublk.out 2>&1; sleep 1\nSRV_PID=$(holder ublkc0); DEV=/dev/ublkb0\n"
                .into(),
            stop: "rublk del -a >/dev/null 2>&1\n".into(),
            attach: String::new(),
            detach: String::new(),
        });
    }
    v.extend(traced());
    v.push(untraced_again());
    v
}

/// The untraced server once more, last in each round: the traced rows are compared with the
/// mean of the round's two untraced runs (one before, one after them, so a drift of the
/// emulator within the round cancels), and this row's own ratio to the first run (an A/A
/// comparison) is the resolution of the bench on this machine today: a target closer to 1
/// than its spread cannot be judged.
fn untraced_again() -> Config {
    ours(UNTRACED_AGAIN, "null", 1, 64)
}

const UNTRACED_AGAIN: &str = "ours-null-q1+untraced-again";

/// The untraced server with a tracer attached: `record` (every event to a file) and
/// `watch --headless` (the live view) in each `--per-io` mode: `+watch` is the default
/// (light), `+watch-state` and `+watch-none` the others. Each prints one `TRACER-STAT` line at
/// detach: its CPU time, memory, and what it saw (events and drops), parsed into the JSON
/// results.
fn traced() -> Vec<Config> {
    let mut rec = ours("ours-null-q1+record", "null", 1, 64);
    // rm first: wait_line must not find the previous round's line (see `ours`).
    rec.attach = "rm -f /tmp/rec.out\nublk-trace record --dev 0 -o /tmp/rec.jsonl > /tmp/rec.out 2>&1 &\nTRC=$!\nwait_line /tmp/rec.out recording\nT0=$(now_ms); C0=$(proc_cpu_ns $TRC)\n"
        .into();
    // The recorder writes the events it has not converted yet after the stop (stop_ms):
    // cpu_ns is its CPU while attached (start-up excluded), cpu_total_ns what it reports at
    // exit (all of it, start-up included).
    rec.detach = "T1=$(now_ms); C=$(proc_cpu_ns $TRC); M=$(mem_kb $TRC); stop_pid $TRC INT 300; T2=$(now_ms)\n\
        S=$(grep 'recorded' /tmp/rec.out | tail -n 1)\n\
        echo \"TRACER-STAT config=$CFG round=$ROUND ms=$((T1-T0)) stop_ms=$((T2-T1)) cpu_ns=$((C-C0)) $M events=$(echo \"$S\" | sed -n 's/.*recorded \\([0-9]*\\) events.*/\\1/p') dropped=$(echo \"$S\" | sed -n 's/.* \\([0-9]*\\) dropped.*/\\1/p') cpu_total_ns=$(sed -n 's/.*CPU time \\([0-9]*\\) ms.*/\\1000000/p' /tmp/rec.out)\"\n\
        grep -E '^ublk-trace: (recorded|program)' /tmp/rec.out | sed 's/^/TRACER /'\n"
        .into();
    let mut v = vec![rec];
    for (name, mode) in [
        ("ours-null-q1+watch", "light"),
        ("ours-null-q1+watch-state", "state"),
        ("ours-null-q1+watch-none", "none"),
    ] {
        let mut watch = ours(name, "null", 1, 64);
        // The default tick (--interval 500): what a user runs. Measured once the driver's
        // memory is read (its reader parses BTF for about a second of CPU at start).
        watch.attach = format!(
            "rm -f /tmp/watch.out /tmp/watch.err\nublk-trace watch dev 0 --headless --json --per-io {mode} > /tmp/watch.out 2>/tmp/watch.err &\nTRC=$!\nwait_line /tmp/watch.out ebpf\nwait_line /tmp/watch.out '\"live\":true'\nT0=$(now_ms); C0=$(proc_cpu_ns $TRC)\n"
        );
        watch.detach = WATCH_DETACH.into();
        v.push(watch);
    }
    v
}

/// A watch config's detach: one `TRACER-STAT` line, then its programs' run counts and times.
const WATCH_DETACH: &str = "T1=$(now_ms); C=$(proc_cpu_ns $TRC); M=$(mem_kb $TRC); bpf_progs $TRC; stop_pid $TRC INT\n\
        L=$(tail -n 1 /tmp/watch.out)\n\
        echo \"TRACER-STAT config=$CFG round=$ROUND ms=$((T1-T0)) cpu_ns=$((C-C0)) $M docs=$(grep -c kind /tmp/watch.out) dropped=$(echo \"$L\" | sed -n 's/.*\"dropped_events\":\\([0-9]*\\).*/\\1/p') lag_ms=$(echo \"$L\" | sed -n 's/.*\"stream_lag_ms\":\\([0-9]*\\).*/\\1/p') $(sed -n 's/.*own CPU.*by part: //p' /tmp/watch.err)\"\n\
        grep -E 'program|own CPU' /tmp/watch.err | sed 's/^/TRACER /'\n";

const JOBS: &[(&str, &str, u32)] = &[
    ("randread-qd1", "randread", 1),
    ("randread-qd64", "randread", 64),
    ("randwrite-qd1", "randwrite", 1),
    ("randwrite-qd64", "randwrite", 64),
];

/// Shell helpers every bench script starts with.
const PRELUDE: &str = r#"
wait_ready() { i=0; while [ $i -lt 300 ]; do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.1; i=$((i+1)); done; return 1; }
holder() { for p in /proc/[0-9]*; do ls -l $p/fd 2>/dev/null | grep -q "/dev/$1" && { echo ${p#/proc/}; return; }; done; }
cpu_ns() { [ -n "$1" ] || { echo 0; return; }; s=0; for t in /proc/$1/task/*; do read a b c < $t/schedstat 2>/dev/null && s=$((s+a)); done; echo $s; }
# A process's CPU time including its threads that have exited (utime + stime of
# /proc/PID/stat, in USER_HZ = 100 ticks): the tracer's short-lived reader threads are
# missing from the sum over /proc/PID/task, which undercounted watch several times over.
proc_cpu_ns() { [ -n "$1" ] || { echo 0; return; }; set -- $(sed 's/.*) //' /proc/$1/stat 2>/dev/null); echo $(( (${12:-0} + ${13:-0}) * 10000000 )); }
modload() { m=$1; shift; for f in $(cat /mod/$m.order); do if [ "$f" = "$m.ko" ]; then insmod /mod/$f "$@"; else insmod /mod/$f 2>/dev/null; fi; done; }
# Signal a process, give it 5 s to exit, then SIGKILL it (and say so): a tracer that ignores
# the signal must not hang the whole run.
# Optional $3: seconds to wait (default 5).
stop_pid() { kill -$2 $1 2>/dev/null; i=0; n=$(( ${3:-5} * 10 )); while kill -0 $1 2>/dev/null && [ $i -lt $n ]; do sleep 0.1; i=$((i+1)); done; kill -0 $1 2>/dev/null && { echo "TRACER pid $1 did not exit on SIG$2 within ${3:-5} s"; kill -KILL $1; }; wait $1 2>/dev/null; }
# Wait up to 120 s for a line containing $2 in file $1 (a tracer's start-up takes seconds in TCG).
wait_line() { i=0; while [ $i -lt 1200 ]; do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; i=$((i+1)); done; echo "TRACER no '$2' in $1 after 120 s"; return 1; }
# Milliseconds since boot (/proc/uptime has two decimals; "1$f - 100" keeps "08" from being
# read as a bad octal number).
now_ms() { read u _ < /proc/uptime; f=${u#*.}; echo $(( ${u%.*} * 1000 + (1$f - 100) * 10 )); }
mem_kb() { echo "hwm_kb=$(sed -n 's/^VmHWM:[^0-9]*\([0-9]*\).*/\1/p' /proc/$1/status) rss_kb=$(sed -n 's/^VmRSS:[^0-9]*\([0-9]*\).*/\1/p' /proc/$1/status)"; }
# Run count and time of each eBPF program a process holds (non-zero with kernel.bpf_stats_enabled=1).
bpf_progs() { for f in /proc/$1/fdinfo/*; do grep -q '^run_cnt' $f 2>/dev/null && echo "TRACER prog $(grep -E '^(prog_type|prog_id|run_time_ns|run_cnt)' $f | tr -s '\t\n' '  ')"; done; }
pin_server() { [ -n "$1" ] || return 0; for t in /proc/$1/task/*; do taskset -p -c 0 ${t##*/} >/dev/null 2>&1; done; }
"#;

/// Interleaved rounds: as asked, else 2 with --quick and 5 otherwise.
fn round_count(mode: Mode, asked: Option<u32>) -> u32 {
    let default = match mode {
        Mode::Quick => 2,
        Mode::Normal | Mode::Long => 5,
    };
    asked.unwrap_or(default).max(1)
}

fn script(
    mode: Mode,
    rounds: Option<u32>,
    bpf_stats: bool,
    layout: &Layout,
    configs: &[Config],
) -> String {
    let runtime = match mode {
        Mode::Quick => 3,
        Mode::Normal | Mode::Long => 5,
    };
    let rounds = round_count(mode, rounds);
    let mut s = String::from(PRELUDE);
    if bpf_stats {
        s.push_str("echo 1 > /proc/sys/kernel/bpf_stats_enabled\n");
    }
    s.push_str("echo none > /sys/block/ublkb0/queue/scheduler 2>/dev/null\n");
    for round in 1..=rounds {
        // Interleave: every config once per round, so slow drifts of the emulator hit all alike.
        for c in configs {
            s.push_str(&format!(
                "echo '=== {} round {round}'\nCFG={}\nROUND={round}\n",
                c.name, c.name
            ));
            // A one-pass loop so a device that fails to start can `continue` past its jobs.
            s.push_str("for _once in 1; do\n");
            s.push_str(&c.start);
            s.push_str("[ -b \"$DEV\" ] || { echo \"BENCH-SKIP config=");
            s.push_str(c.name);
            s.push_str(" dev=$DEV\"; cat /tmp/srv.out /tmp/srv.err; ls /dev/ublk*; continue; }\n");
            s.push_str("echo none > /sys/block/${DEV#/dev/}/queue/scheduler 2>/dev/null\n");
            if layout.pin {
                s.push_str("pin_server \"$SRV_PID\"\n");
            }
            s.push_str(&c.attach);
            for (job, rw, qd) in JOBS {
                let cpus = if layout.pin { " --cpus_allowed=1" } else { "" };
                s.push_str(&format!(
                    "c0=$(cpu_ns \"$SRV_PID\")\n\
                     fio --name={job} --filename=$DEV --rw={rw} --bs=4k --iodepth={qd} --ioengine=io_uring \
                     --direct=1 --time_based --runtime={runtime} --ramp_time=1 --size=1G{cpus} \
                     --output-format=json --output=/tmp/fio.json >/dev/null 2>&1\n\
                     c1=$(cpu_ns \"$SRV_PID\")\n\
                     echo \"BENCH-BEGIN layout={} config={} job={job} round={round} cpu_ns=$((c1-c0))\"\n\
                     cat /tmp/fio.json\necho BENCH-END\n",
                    layout.name, c.name
                ));
            }
            s.push_str(&c.detach);
            s.push_str("done\n");
            s.push_str(&c.stop);
            s.push_str("sleep 0.5\n");
        }
    }
    if mode == Mode::Long {
        // The tracer's memory after 10 minutes of full load (target: <= 64 MiB RSS).
        let watch = configs.iter().find(|c| c.name == "ours-null-q1+watch");
        if let Some(c) = watch {
            s.push_str("echo '=== long run: watch --headless under 600 s of load'\n");
            s.push_str(&c.start);
            s.push_str(&c.attach);
            s.push_str("fio --name=long --filename=$DEV --rw=randread --bs=4k --iodepth=64 --ioengine=io_uring --direct=1 --time_based --runtime=600 --size=1G --eta=never --output=/dev/null >/dev/null 2>&1\n");
            // The watch config's own detach: one TRACER-STAT line (round 0) for the table
            // and the JSON, then the stop.
            s.push_str("CFG=ours-null-q1+watch-600s\nROUND=0\n");
            s.push_str(&c.detach);
            s.push_str(&c.stop);
        }
    }
    s.push_str(&probe_start_section(layout));
    s.push_str("exit 0\n");
    s
}

/// How long `diagnose --for 2` takes to have live probes, for the release build and the debug
/// build (`/bin/ublk-trace-debug`), against an idle device: one `PROBE-START` line per run.
fn probe_start_section(layout: &Layout) -> String {
    format!(
        "echo '=== probe start-up: diagnose --for 2, release and debug builds'\n\
         rm -f /tmp/srv.out; ublk-server run null --queues 1 --depth 64 > /tmp/srv.out 2>&1 &\n\
         SRV_PID=$!\nwait_ready /tmp/srv.out\n\
         for round in 1 2 3; do for p in release debug; do\n\
         b=ublk-trace; [ $p = debug ] && b=ublk-trace-debug\n\
         T0=$(now_ms); $b diagnose dev 0 --for 2 --json > /tmp/diag.json 2>/dev/null; T1=$(now_ms)\n\
         echo \"PROBE-START layout={} profile=$p round=$round wall_ms=$((T1-T0)) \
         live_ms=$(sed -n 's/.*\"probes_live_ms\":\\([0-9]*\\).*/\\1/p' /tmp/diag.json) \
         source=$(sed -n 's/.*\"source\":\"\\([^\"]*\\)\".*/\\1/p' /tmp/diag.json)\"\n\
         done; done\n\
         stop_pid $SRV_PID INT 30\n",
        layout.name
    )
}

/// The geometry of the driver-read measurement: the issue's 4 queues x 1024 tags (the
/// kernel clamps the queue count to the CPUs, so it gets a 4-vCPU guest of its own).
const READ_QUEUES: u32 = 4;
const READ_DEPTH: u32 = 1024;
/// watch's and diagnose's default tick (`--interval`), at which one read per tick runs.
const DEFAULT_TICK_MS: u64 = 500;

/// The script of the driver-read boot: an idle 4 x 1024 device, three times 20 reads with
/// `ublk-trace state --repeat` (its CPU time user + system, per read): `DRIVER-READ` lines.
fn driver_read_script() -> String {
    format!(
        "{PRELUDE}\necho '=== driver state: one read of an idle {READ_QUEUES} x {READ_DEPTH} device'\n\
         rm -f /tmp/srv.out; ublk-server run null --queues {READ_QUEUES} --depth {READ_DEPTH} > /tmp/srv.out 2>&1 &\n\
         SRV_PID=$!\nwait_ready /tmp/srv.out\nsleep 1\n\
         for round in 1 2 3; do\n\
         ublk-trace state dev 0 --repeat 20 > /dev/null 2> /tmp/state.err\n\
         echo \"DRIVER-READ round=$round $(grep 'reads of' /tmp/state.err)\"\n\
         done\n\
         stop_pid $SRV_PID INT 30\nexit 0\n"
    )
}

/// One `DRIVER-READ` line: the cost of one read of the driver's memory.
#[derive(Debug, Clone, Serialize, PartialEq)]
struct DriverRead {
    round: u32,
    tags: u64,
    cpu_us: u64,
    user_us: u64,
    sys_us: u64,
    wall_us: u64,
    /// `cpu_us` as a share of one CPU when one read runs per default tick.
    pct_of_cpu_at_default_tick: f64,
}

/// `DRIVER-READ round=1 ublk-trace state: 20 reads of 4096 tags: 9000 us CPU (7000 user +
/// 2000 sys), 12000 us wall per read`.
fn parse_driver_reads(lines: &[String]) -> Vec<DriverRead> {
    let num_before = |l: &str, word: &str| -> Option<u64> {
        let i = l.find(word)?;
        l[..i]
            .split_whitespace()
            .last()?
            .trim_start_matches('(')
            .parse()
            .ok()
    };
    lines
        .iter()
        .filter_map(|l| {
            let l = l.strip_prefix("DRIVER-READ round=")?;
            let (round, rest) = l.split_once(' ')?;
            let cpu_us = num_before(rest, " us CPU")?;
            Some(DriverRead {
                round: round.parse().ok()?,
                tags: num_before(rest, " tags")?,
                cpu_us,
                user_us: num_before(rest, " user")?,
                sys_us: num_before(rest, " sys")?,
                wall_us: num_before(rest, " us wall")?,
                pct_of_cpu_at_default_tick: cpu_us as f64 / (DEFAULT_TICK_MS as f64 * 10.0),
            })
        })
        .collect()
}

/// Boot a 4-vCPU guest and measure [`driver_read_script`].
fn measure_driver_reads(
    o: &BenchOpts,
    kernel: &crate::kernel::GuestKernel,
    bins: &std::path::Path,
) -> Result<Vec<DriverRead>> {
    let mut g = GuestOpts::new(o.kernel.clone());
    g.smp = READ_QUEUES;
    g.release = true;
    g.timeout = Duration::from_secs(600);
    let initrd = make_initramfs(kernel, &g, bins, &driver_read_script(), &[])?;
    let log = cache_dir().join("bench-driver-read.log");
    eprintln!(
        "[bench] driver-state read cost ({READ_QUEUES} vCPU) on {}",
        kernel.kver
    );
    let (outcome, lines) =
        crate::qemu::boot_captured(&boot_opts(&g, kernel, &initrd), &log, |l| {
            if l.starts_with("DRIVER-READ") {
                eprintln!("  {l}");
            }
        })?;
    let _ = std::fs::remove_file(&initrd);
    if !matches!(outcome, crate::qemu::Outcome::Exited(0)) {
        crate::guest::report_outcome(&outcome, &lines, &log);
    }
    Ok(parse_driver_reads(&lines))
}

fn print_driver_reads(v: &[DriverRead]) {
    for r in v {
        println!(
            "driver read {READ_QUEUES}x{READ_DEPTH} round {}: {} tags, {} us CPU ({} user + {} sys), {} us wall: {:.1} % of one CPU at the {DEFAULT_TICK_MS} ms tick (target <= 5 %)",
            r.round, r.tags, r.cpu_us, r.user_us, r.sys_us, r.wall_us, r.pct_of_cpu_at_default_tick
        );
    }
}

/// One `PROBE-START` line: the time to live probes of one build profile.
#[derive(Debug, Clone, Serialize)]
struct ProbeStart {
    layout: String,
    profile: String,
    round: u32,
    wall_ms: u64,
    /// None: the probes were not live when diagnose ended.
    live_ms: Option<u64>,
    source: String,
}

fn parse_probe_starts(lines: &[String]) -> Vec<ProbeStart> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("PROBE-START "))
        .filter_map(|rest| {
            let kv: BTreeMap<&str, &str> = rest
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .collect();
            Some(ProbeStart {
                layout: kv.get("layout")?.to_string(),
                profile: kv.get("profile")?.to_string(),
                round: kv.get("round")?.parse().ok()?,
                wall_ms: kv.get("wall_ms")?.parse().ok()?,
                live_ms: kv.get("live_ms").and_then(|v| v.parse().ok()),
                source: kv.get("source").unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// Median and range of the time to live probes, per layout and profile.
fn print_probe_starts(v: &[ProbeStart]) {
    if v.is_empty() {
        return;
    }
    println!("\nTime to live probes (`diagnose --for 2` on an idle device):");
    let mut keys: Vec<(&str, &str)> = v
        .iter()
        .map(|p| (p.layout.as_str(), p.profile.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for (layout, profile) in keys {
        let mut live: Vec<u64> = v
            .iter()
            .filter(|p| p.layout == layout && p.profile == profile)
            .filter_map(|p| p.live_ms)
            .collect();
        let runs = v
            .iter()
            .filter(|p| p.layout == layout && p.profile == profile)
            .count();
        live.sort_unstable();
        match (live.first(), live.last()) {
            (Some(lo), Some(hi)) => println!(
                "  {layout:<14} {profile:<8} median {} ms ({lo}-{hi}), live in {}/{runs} runs",
                live[live.len() / 2],
                live.len()
            ),
            _ => println!("  {layout:<14} {profile:<8} never live in {runs} runs"),
        }
    }
}

struct Layout {
    name: &'static str,
    smp: u32,
    /// Server threads on CPU 0, fio on CPU 1.
    pin: bool,
}

const LAYOUTS: &[Layout] = &[
    Layout {
        name: "1vcpu",
        smp: 1,
        pin: false,
    },
    Layout {
        name: "2vcpu-pinned",
        smp: 2,
        pin: true,
    },
];

/// One fio run as parsed from the console.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    layout: String,
    config: String,
    job: String,
    round: u32,
    iops: f64,
    p99_us: f64,
    ios: u64,
    server_cpu_ns_per_io: Option<f64>,
}

fn parse_samples(lines: &[String]) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut header: Option<BTreeMap<String, String>> = None;
    let mut json = String::new();
    for l in lines {
        if let Some(rest) = l.strip_prefix("BENCH-BEGIN ") {
            header = Some(
                rest.split_whitespace()
                    .filter_map(|kv| {
                        kv.split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    })
                    .collect(),
            );
            json.clear();
        } else if l == "BENCH-END" {
            if let Some(h) = header.take()
                && let Some(s) = sample_from(&h, &json)
            {
                out.push(s);
            }
        } else if header.is_some() {
            json.push_str(l);
            json.push('\n');
        }
    }
    out
}

fn sample_from(h: &BTreeMap<String, String>, fio_json: &str) -> Option<Sample> {
    let v: serde_json::Value = serde_json::from_str(fio_json).ok()?;
    let job = v.get("jobs")?.get(0)?;
    let rw = if h.get("job")?.contains("read") {
        "read"
    } else {
        "write"
    };
    let side = job.get(rw)?;
    let iops = side.get("iops")?.as_f64()?;
    let ios = side.get("total_ios")?.as_u64().unwrap_or(0);
    let p99_ns = side
        .get("clat_ns")
        .and_then(|c| c.get("percentile"))
        .and_then(|p| p.get("99.000000"))
        .and_then(|x| x.as_f64())
        .unwrap_or(0.0);
    let cpu_ns: f64 = h.get("cpu_ns")?.parse().ok()?;
    Some(Sample {
        layout: h.get("layout")?.clone(),
        config: h.get("config")?.clone(),
        job: h.get("job")?.clone(),
        round: h.get("round")?.parse().ok()?,
        iops,
        p99_us: p99_ns / 1000.0,
        ios,
        // fio's ramp time is not counted in total_ios but is in the CPU window: an overestimate
        // by at most ramp/(ramp+runtime), the same for every server.
        server_cpu_ns_per_io: (cpu_ns > 0.0 && ios > 0).then(|| cpu_ns / ios as f64),
    })
}

/// One tracer's life across the jobs of one config and round (a `TRACER-STAT` line).
#[derive(Debug, Clone, Serialize)]
struct TracerStat {
    layout: String,
    config: String,
    round: u32,
    /// Attached (probes live) until stopped, ms.
    ms: u64,
    /// On-CPU time of all the tracer's threads while attached (start-up excluded), ns.
    cpu_ns: u64,
    hwm_kb: Option<u64>,
    rss_kb: Option<u64>,
    /// Events written (record).
    events: Option<u64>,
    /// Events lost (ring buffer full): record's count, or watch's last `dropped_events`.
    dropped: Option<u64>,
    /// Time from the stop signal to exit (record writes what it has not converted yet).
    stop_ms: Option<u64>,
    /// CPU over the whole life, as the tracer reports it at exit (record).
    cpu_total_ns: Option<u64>,
    /// Where a watch's CPU went over its whole life, by part (its `own CPU ... by part:` line
    /// at exit: `main=348ms/60`), start-up included.
    parts: BTreeMap<String, PartCost>,
}

/// One part of a tracer's own CPU: ms in that many runs (loop passes, reads).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct PartCost {
    cpu_ms: u64,
    runs: u64,
}

/// `348ms/60`.
fn parse_part(v: &str) -> Option<PartCost> {
    let (ms, runs) = v.split_once("ms/")?;
    Some(PartCost {
        cpu_ms: ms.parse().ok()?,
        runs: runs.parse().ok()?,
    })
}

fn parse_tracer_stats(layout: &str, lines: &[String]) -> Vec<TracerStat> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("TRACER-STAT "))
        .filter_map(|rest| {
            let kv: BTreeMap<&str, &str> = rest
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .collect();
            let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok());
            Some(TracerStat {
                layout: layout.to_string(),
                config: kv.get("config")?.to_string(),
                round: kv.get("round")?.parse().ok()?,
                ms: num("ms")?,
                cpu_ns: num("cpu_ns").unwrap_or(0),
                hwm_kb: num("hwm_kb"),
                rss_kb: num("rss_kb"),
                events: num("events"),
                dropped: num("dropped"),
                stop_ms: num("stop_ms"),
                cpu_total_ns: num("cpu_total_ns"),
                parts: kv
                    .iter()
                    .filter_map(|(k, v)| Some((k.to_string(), parse_part(v)?)))
                    .collect(),
            })
        })
        .collect()
}

/// Per traced config and round: the tracer's CPU per I/O served while it was attached (and
/// over its whole life, with what it did after the stop), events/s, drops, memory.
fn print_tracer_table(stats: &[TracerStat], samples: &[Sample]) {
    if stats.is_empty() {
        return;
    }
    println!(
        "{:<13} {:<20} {:>5} {:>10} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "layout",
        "config",
        "round",
        "cpu ns/IO",
        "cpu %",
        "total/IO",
        "events/s",
        "dropped",
        "stop ms",
        "HWM MiB"
    );
    for t in stats {
        let ios: u64 = samples
            .iter()
            .filter(|s| s.layout == t.layout && s.config == t.config && s.round == t.round)
            .map(|s| s.ios)
            .sum();
        let opt = |x: Option<String>| x.unwrap_or_else(|| "-".into());
        let per_io = |ns: u64| (ios > 0).then(|| format!("{:.0}", ns as f64 / ios as f64));
        println!(
            "{:<13} {:<20} {:>5} {:>10} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8}",
            t.layout,
            t.config,
            t.round,
            opt(per_io(t.cpu_ns)),
            opt((t.ms > 0).then(|| format!("{:.1}", t.cpu_ns as f64 / (t.ms as f64 * 1e4)))),
            opt(t.cpu_total_ns.and_then(per_io)),
            opt(t
                .events
                .filter(|_| t.ms > 0)
                .map(|e| format!("{:.0}", e as f64 * 1000.0 / t.ms as f64))),
            opt(t.dropped.map(|d| d.to_string())),
            opt(t.stop_ms.map(|d| d.to_string())),
            opt(t.hwm_kb.map(|k| format!("{:.1}", k as f64 / 1024.0))),
        );
    }
}

/// Where each watch's own CPU went (the parts it reports at exit), one row per config and
/// round: ms of CPU per part, with the runs in brackets.
fn print_part_table(stats: &[TracerStat]) {
    let names: std::collections::BTreeSet<&str> = stats
        .iter()
        .flat_map(|t| t.parts.keys().map(String::as_str))
        .collect();
    if names.is_empty() {
        return;
    }
    println!("\nwatch's own CPU by part, ms (runs), whole life incl. start-up:");
    print!("{:<13} {:<26} {:>5}", "layout", "config", "round");
    for n in &names {
        print!(" {n:>16}");
    }
    println!();
    for t in stats.iter().filter(|t| !t.parts.is_empty()) {
        print!("{:<13} {:<26} {:>5}", t.layout, t.config, t.round);
        for n in &names {
            let cell = t
                .parts
                .get(*n)
                .map_or_else(|| "-".to_string(), |p| format!("{} ({})", p.cpu_ms, p.runs));
            print!(" {cell:>16}");
        }
        println!();
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    layout: String,
    config: String,
    job: String,
    rounds: usize,
    median_iops: f64,
    min_iops: f64,
    max_iops: f64,
    median_p99_us: f64,
    median_cpu_ns_per_io: Option<f64>,
    vs_null_blk: Option<f64>,
    vs_rublk: Option<f64>,
    vs_untraced: Option<f64>,
    /// Traced/untraced IOPS of the same round (interleaved, so a drift of the emulator hits
    /// both alike): the spread of the ratio, (min, median, max) over rounds.
    vs_untraced_rounds: Option<(f64, f64, f64)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut groups: BTreeMap<(String, String, String), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        groups
            .entry((s.layout.clone(), s.config.clone(), s.job.clone()))
            .or_default()
            .push(s);
    }
    let med_iops = |k: &(String, String, String)| {
        groups
            .get(k)
            .map(|g| median(g.iter().map(|s| s.iops).collect()))
    };
    let mut out = Vec::new();
    for (k, g) in &groups {
        let iops: Vec<f64> = g.iter().map(|s| s.iops).collect();
        let m = median(iops.clone());
        let cpu: Vec<f64> = g.iter().filter_map(|s| s.server_cpu_ns_per_io).collect();
        let ratio = |other: &str| {
            let base = med_iops(&(k.0.clone(), other.to_string(), k.2.clone()))?;
            (base > 0.0 && k.1 != other).then(|| m / base)
        };
        let untraced = k.1.split_once('+').map(|(base, _)| base.to_string());
        out.push(Summary {
            layout: k.0.clone(),
            config: k.1.clone(),
            job: k.2.clone(),
            rounds: g.len(),
            median_iops: m,
            min_iops: iops.iter().copied().fold(f64::INFINITY, f64::min),
            max_iops: iops.iter().copied().fold(0.0, f64::max),
            median_p99_us: median(g.iter().map(|s| s.p99_us).collect()),
            median_cpu_ns_per_io: (!cpu.is_empty()).then(|| median(cpu)),
            vs_null_blk: if k.1.starts_with("ours") || k.1.starts_with("rublk") {
                ratio("null_blk")
            } else {
                None
            },
            vs_rublk: if k.1.starts_with("ours") && !k.1.contains('+') {
                ratio(&k.1.replace("ours", "rublk").replace("ramdisk", "null"))
            } else {
                None
            },
            vs_untraced: untraced.as_ref().and_then(|u| ratio(u)),
            vs_untraced_rounds: untraced.as_ref().and_then(|u| {
                let base = groups.get(&(k.0.clone(), u.clone(), k.2.clone()))?;
                // The A/A row against the first run alone; every other row against the mean
                // of the round's untraced runs before and after it, where both exist.
                let again = (k.1 != UNTRACED_AGAIN)
                    .then(|| groups.get(&(k.0.clone(), UNTRACED_AGAIN.to_string(), k.2.clone())))
                    .flatten();
                let r: Vec<f64> = g
                    .iter()
                    .filter_map(|s| {
                        let b = base.iter().find(|b| b.round == s.round)?.iops;
                        let after = again
                            .and_then(|a| a.iter().find(|a| a.round == s.round))
                            .map(|a| a.iops);
                        let b = after.map_or(b, |a| (a + b) / 2.0);
                        (b > 0.0).then(|| s.iops / b)
                    })
                    .collect();
                (!r.is_empty()).then(|| {
                    let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = r.iter().copied().fold(0.0, f64::max);
                    (lo, median(r), hi)
                })
            }),
        });
    }
    out
}

fn print_table(rows: &[Summary]) {
    println!(
        "{:<13} {:<26} {:<15} {:>9} {:>17} {:>8} {:>9} {:>7} {:>7} {:>7} {:>17}",
        "layout",
        "config",
        "job",
        "IOPS",
        "spread",
        "p99 us",
        "cpu ns/IO",
        "/nullb",
        "/rublk",
        "/untr",
        "/untr per round"
    );
    let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    for r in rows {
        println!(
            "{:<13} {:<26} {:<15} {:>9.0} {:>17} {:>8.0} {:>9} {:>7} {:>7} {:>7} {:>17}",
            r.layout,
            r.config,
            r.job,
            r.median_iops,
            format!("{:.0}-{:.0}", r.min_iops, r.max_iops),
            r.median_p99_us,
            r.median_cpu_ns_per_io
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "-".into()),
            f(r.vs_null_blk),
            f(r.vs_rublk),
            f(r.vs_untraced),
            r.vs_untraced_rounds
                .map(|(lo, m, hi)| format!("{m:.2} ({lo:.2}-{hi:.2})"))
                .unwrap_or_else(|| "-".into()),
        );
    }
}

/// Build rublk (a third-party ublk server) at the pinned version into target/bench/rublk.
/// Its libublk build needs libclang; a failure is a note, not an error.
fn build_rublk() -> Option<PathBuf> {
    let root = target_dir().join("bench/rublk");
    let bin = root.join("bin/rublk");
    if bin.is_file() {
        return Some(bin);
    }
    if crate::util::which("clang").is_none() && crate::util::is_root() {
        let what = "installing libclang-dev clang (rublk's build needs them)";
        let _ = crate::util::timed("bench", what, || {
            crate::util::run(
                std::process::Command::new("apt-get")
                    .args([
                        "install",
                        "-y",
                        "-q",
                        "--no-install-recommends",
                        "libclang-dev",
                        "clang",
                    ])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        });
    }
    let what = format!("building rublk {RUBLK_VERSION} (a few minutes, once)");
    let ok = crate::util::timed("bench", &what, || {
        crate::util::run(
            std::process::Command::new("cargo")
                .args([
                    "install",
                    &format!("rublk@{RUBLK_VERSION}"),
                    "--locked",
                    "--root",
                ])
                .arg(&root),
        )
    });
    match ok {
        Ok(()) if bin.is_file() => Some(bin),
        _ => {
            eprintln!(
                "[bench] note: rublk {RUBLK_VERSION} could not be built; comparing without it"
            );
            None
        }
    }
}

pub fn run(o: &BenchOpts) -> Result<()> {
    crate::setup::setup(&[])?;
    let kernel = crate::kernel::fetch(&o.kernel)?;
    let bins = build_project(true)?;
    // The debug build too, for its time to live probes (PROBE-START lines).
    let debug_trace = build_project(false)?.join("ublk-trace");
    let rublk = if o.no_rublk || o.tracer_only {
        None
    } else {
        build_rublk()
    };
    let mut all = Vec::new();
    let mut tracer_stats = Vec::new();
    let mut probe_starts = Vec::new();
    // The tracer's target is set in the pinned layout (server and fio on their own vCPUs).
    if let Some(want) = o.layout.as_deref()
        && !LAYOUTS.iter().any(|l| l.name.contains(want))
    {
        let names: Vec<&str> = LAYOUTS.iter().map(|l| l.name).collect();
        bail!("no CPU layout {want:?}: use one of {}", names.join(", "));
    }
    let wanted = |l: &Layout| o.layout.as_deref().is_none_or(|w| l.name.contains(w));
    for layout in LAYOUTS
        .iter()
        .filter(|l| (!o.tracer_only || l.pin) && wanted(l))
    {
        let mut g = GuestOpts::new(o.kernel.clone());
        g.smp = layout.smp;
        g.release = true;
        g.copy_modules = vec!["null_blk".into()];
        g.timeout = Duration::from_secs(match o.mode {
            Mode::Quick => 900,
            _ => 3600,
        });
        if let Some(r) = &rublk {
            g.include.push(r.clone());
        }
        let cfgs = configs(o.mode, rublk.is_some(), o.tracer_only);
        let sh = script(o.mode, o.rounds, o.bpf_stats, layout, &cfgs);
        let extra = [(
            debug_trace.clone(),
            "/bin/ublk-trace-debug".to_string(),
            true,
        )];
        let initrd = make_initramfs(&kernel, &g, &bins, &sh, &extra)?;
        let log = cache_dir().join(format!("bench-{}.log", layout.name));
        eprintln!(
            "[bench] layout {} ({} vCPU) on {}",
            layout.name, layout.smp, kernel.kver
        );
        let booted = std::time::Instant::now();
        let mut clock = progress::RoundClock::new(round_count(o.mode, o.rounds));
        let (outcome, lines) =
            crate::qemu::boot_captured(&boot_opts(&g, &kernel, &initrd), &log, |l| {
                if l.starts_with("===") {
                    eprintln!("{}", clock.line(l, booted.elapsed()));
                } else if l.starts_with("TRACER")
                    || l.starts_with("BENCH-SKIP")
                    || l.starts_with("PROBE-START")
                {
                    eprintln!("  {l}");
                }
            })?;
        let _ = std::fs::remove_file(&initrd);
        if !matches!(outcome, crate::qemu::Outcome::Exited(0)) {
            // Keep what was measured before the failure; the table says which rounds exist.
            crate::guest::report_outcome(&outcome, &lines, &log);
            eprintln!(
                "[bench] warning: the {} guest failed; keeping its partial results",
                layout.name
            );
        }
        for l in lines.iter().filter(|l| l.starts_with("TRACER")) {
            println!("[bench] {} {l}", layout.name);
        }
        all.extend(parse_samples(&lines));
        tracer_stats.extend(parse_tracer_stats(layout.name, &lines));
        probe_starts.extend(parse_probe_starts(&lines));
    }
    if all.is_empty() {
        bail!("no benchmark samples were produced (see target/guest/bench-*.log)");
    }
    let driver_reads = match measure_driver_reads(o, &kernel, &bins) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("[bench] warning: the driver-read boot failed: {e:#}");
            Vec::new()
        }
    };
    let rows = summarize(&all);
    print_table(&rows);
    print_tracer_table(&tracer_stats, &all);
    print_part_table(&tracer_stats);
    print_probe_starts(&probe_starts);
    print_driver_reads(&driver_reads);
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let doc = serde_json::json!({
        "kernel": kernel.kver,
        "mode": format!("{:?}", o.mode),
        "rublk": rublk.is_some().then_some(RUBLK_VERSION),
        "tracer_only": o.tracer_only,
        "bpf_stats": o.bpf_stats,
        "summary": rows,
        "tracer": tracer_stats,
        "probe_start": probe_starts,
        "driver_read": driver_reads,
        "samples": all,
    });
    let text = serde_json::to_string_pretty(&doc).context("serialize bench results")?;
    write_atomic(&dir.join(format!("bench-{stamp}.json")), text.as_bytes())?;
    write_atomic(&dir.join("latest.json"), text.as_bytes())?;
    println!("[bench] results: {}", dir.join("latest.json").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_json_between_markers_becomes_a_sample() {
        let lines: Vec<String> = [
            "noise",
            "BENCH-BEGIN layout=1vcpu config=ours-null-q1 job=randread-qd64 round=2 cpu_ns=2000000000",
            r#"{"jobs":[{"read":{"iops":20000.5,"total_ios":100000,"clat_ns":{"percentile":{"99.000000":5120}}}}]}"#,
            "BENCH-END",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = parse_samples(&lines);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].round, 2);
        assert!((s[0].iops - 20000.5).abs() < 1e-9);
        assert_eq!(s[0].server_cpu_ns_per_io, Some(20000.0));
        assert!((s[0].p99_us - 5.12).abs() < 1e-9);
    }

    /// The newer I/O modes are measured next to the per-tag row in every mode, and a kernel
    /// without their feature skips them by name instead of failing the round.
    #[test]
    fn mode_rows_sit_next_to_per_tag_and_check_the_kernel() {
        for mode in [Mode::Quick, Mode::Normal] {
            let names: Vec<&str> = configs(mode, false, false).iter().map(|c| c.name).collect();
            let at = |n: &str| names.iter().position(|&x| x == n).expect(n);
            assert_eq!(at("ours-null-q1-per-io-daemon"), at("ours-null-q1") + 1);
            assert_eq!(at("ours-null-q1-batch-io"), at("ours-null-q1") + 2);
        }
        let c = configs(Mode::Quick, false, false);
        let batch = c
            .iter()
            .find(|c| c.name == "ours-null-q1-batch-io")
            .expect("batch row");
        assert!(
            batch
                .start
                .starts_with("ublk-server features | grep -qw BATCH_IO ||")
        );
        assert!(batch.start.contains("--batch-io"));
        assert!(
            batch
                .start
                .contains("BENCH-SKIP config=ours-null-q1-batch-io")
        );
    }

    #[test]
    fn ratios_pair_like_with_like() {
        let mk = |config: &str, iops: f64| Sample {
            layout: "2vcpu-pinned".into(),
            config: config.into(),
            job: "randread-qd64".into(),
            round: 1,
            iops,
            p99_us: 1.0,
            ios: 1,
            server_cpu_ns_per_io: None,
        };
        let rows = summarize(&[
            mk("null_blk", 100.0),
            mk("ours-null-q1", 97.0),
            mk("rublk-null-q1", 92.0),
            mk("ours-null-q1+record", 48.5),
        ]);
        let get = |c: &str| rows.iter().find(|r| r.config == c).expect("row");
        assert_eq!(get("ours-null-q1").vs_null_blk, Some(0.97));
        assert!((get("ours-null-q1").vs_rublk.expect("rublk ratio") - 97.0 / 92.0).abs() < 1e-9);
        assert_eq!(get("ours-null-q1+record").vs_untraced, Some(0.5));
        assert_eq!(
            get("ours-null-q1+record").vs_untraced_rounds,
            Some((0.5, 0.5, 0.5))
        );
        assert_eq!(get("ours-null-q1").vs_untraced_rounds, None);
        assert_eq!(get("null_blk").vs_null_blk, None);
    }

    #[test]
    fn traced_rounds_are_judged_against_both_untraced_runs_and_the_second_against_the_first() {
        let mk = |config: &str, round: u32, iops: f64| Sample {
            layout: "2vcpu-pinned".into(),
            config: config.into(),
            job: "randwrite-qd64".into(),
            round,
            iops,
            p99_us: 1.0,
            ios: 1,
            server_cpu_ns_per_io: None,
        };
        let rows = summarize(&[
            // Round 1 drifts down from 100 to 80 while it runs; round 2 has no second run.
            mk("ours-null-q1", 1, 100.0),
            mk("ours-null-q1+watch-none", 1, 90.0),
            mk(UNTRACED_AGAIN, 1, 80.0),
            mk("ours-null-q1", 2, 50.0),
            mk("ours-null-q1+watch-none", 2, 49.0),
        ]);
        let get = |c: &str| rows.iter().find(|r| r.config == c).expect("row");
        let (lo, _, hi) = get("ours-null-q1+watch-none")
            .vs_untraced_rounds
            .expect("per-round ratios");
        assert!((hi - 1.0).abs() < 1e-9, "90 against the mean of 100 and 80");
        assert!((lo - 0.98).abs() < 1e-9, "49 against the first run alone");
        assert_eq!(
            get(UNTRACED_AGAIN).vs_untraced_rounds,
            Some((0.8, 0.8, 0.8))
        );
    }

    #[test]
    fn probe_start_lines_parse_and_the_section_is_valid_shell() {
        let sh = probe_start_section(&LAYOUTS[1]);
        let ok = std::process::Command::new("sh")
            .args(["-n", "-c", &format!("{PRELUDE}{sh}")])
            .status()
            .expect("run sh -n");
        assert!(ok.success(), "not valid shell:\n{sh}");
        let lines: Vec<String> = [
            "PROBE-START layout=2vcpu-pinned profile=release round=1 wall_ms=3900 live_ms=1650 source=ebpf+snapshots",
            "PROBE-START layout=2vcpu-pinned profile=debug round=1 wall_ms=7000 live_ms= source=snapshots",
            "PROBE-START garbage",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let v = parse_probe_starts(&lines);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].live_ms, v[0].wall_ms), (Some(1650), 3900));
        assert_eq!(v[0].source, "ebpf+snapshots");
        assert_eq!((v[1].profile.as_str(), v[1].live_ms), ("debug", None));
    }

    #[test]
    fn a_watch_stat_line_keeps_its_own_cpu_by_part() {
        let l = "TRACER-STAT config=ours-null-q1+watch-none round=3 ms=24000 cpu_ns=900000000 \
                 hwm_kb=9000 rss_kb=8000 docs=48 dropped=0 lag_ms=12 main=348ms/60 \
                 driver_read=78ms/61 proc=bad"
            .to_string();
        let v = parse_tracer_stats("2vcpu-pinned", &[l]);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].round, 3);
        assert_eq!(v[0].cpu_ns, 900_000_000);
        assert_eq!(v[0].parts.len(), 2, "{:?}", v[0].parts);
        assert_eq!(
            v[0].parts.get("main"),
            Some(&PartCost {
                cpu_ms: 348,
                runs: 60
            })
        );
        assert_eq!(v[0].parts.get("driver_read").map(|p| p.runs), Some(61));
    }

    #[test]
    fn driver_read_lines_parse() {
        let l = "DRIVER-READ round=2 ublk-trace state: 20 reads of 4096 tags: 9000 us CPU (7000 user + 2000 sys), 12000 us wall per read".to_string();
        let v = parse_driver_reads(&[l, "DRIVER-READ round=3 ".into()]);
        let ok = std::process::Command::new("sh")
            .args(["-n", "-c", &driver_read_script()])
            .status()
            .expect("run sh -n");
        assert!(ok.success(), "not valid shell:\n{}", driver_read_script());
        assert_eq!(
            v,
            vec![DriverRead {
                round: 2,
                tags: 4096,
                cpu_us: 9000,
                user_us: 7000,
                sys_us: 2000,
                wall_us: 12000,
                pct_of_cpu_at_default_tick: 1.8,
            }]
        );
    }

    #[test]
    fn median_handles_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
