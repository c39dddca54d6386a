//! Helpers for the watch/diagnose guest tests: start `ublk-server run` (optionally with an
//! injected fault), start readers that will hang, run `ublk-trace diagnose`/`watch --headless`
//! and read their JSON. Every wait has a deadline: a hung device must fail a test, not the guest.
#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use ublk_testkit::child::wait_timeout;
pub use ublk_testkit::skip;
/// User-space tasks in D state (kernel threads left out: kworkers sleep in D briefly all the
/// time).
pub use ublk_testkit::tasks::user_d_state_tasks as d_state_tasks;

/// A project binary: `$UBLK_TEST_BIN_DIR/<name>` in the guest, else next to this test's
/// `ublk-trace` build.
pub fn bin(name: &str) -> PathBuf {
    ublk_testkit::bins::project_bin(name, env!("CARGO_BIN_EXE_ublk-trace"))
}

/// A running `ublk-server run ...`. On drop: SIGKILL first (never `del` a stopped server's
/// device: DEL blocks in del_gendisk and wedges every later test), then `del`.
pub struct Server {
    pub child: Child,
    pub dev_id: u32,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(bin("ublk-server"))
            .arg("run")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ublk-server {args:?}: {e}"));
        let Some(stdout) = child.stdout.take() else {
            panic!("ublk-server stdout not piped");
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no ready line from ublk-server {args:?}"));
        // "ublk-server: dev <id> ready: /dev/ublkb<id>"
        let dev_id = line
            .strip_prefix("ublk-server: dev ")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from ublk-server: {line:?}"));
        Server { child, dev_id }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn bdev(&self) -> String {
        format!("/dev/ublkb{}", self.dev_id)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = wait_timeout(&mut self.child, Duration::from_secs(30));
        }
        // Bounded: a `del` that blocks must fail the test (assert_recovered), not hang it.
        let id = self.dev_id.to_string();
        ublk_testkit::child::run_bounded(
            Command::new(bin("ublk-server")).args(["del", &id]),
            &format!("ublk-server del {id}"),
            Duration::from_secs(30),
        );
    }
}

/// A reader of one 4 KiB block with O_DIRECT, optionally pinned to `cpu` (which picks the
/// blk-mq hardware queue: ublk maps CPU n to queue n when there are as many queues).
pub fn dd(bdev: &str, skip: u64, count: u64, cpu: Option<usize>) -> Child {
    let mut cmd = Command::new("dd");
    cmd.args([
        format!("if={bdev}"),
        "of=/dev/null".into(),
        "bs=4k".into(),
        format!("count={count}"),
        format!("skip={skip}"),
        "iflag=direct".into(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(cpu) = cpu {
        // SAFETY: runs in the forked child before exec; sched_setaffinity on itself with a
        // zeroed, then filled, cpu_set_t is async-signal-safe and touches no shared state.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn().unwrap_or_else(|e| panic!("spawn dd: {e}"))
}

/// /proc state letter of `pid` ('?' when gone).
pub fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .unwrap_or('?')
}

/// Wait until `pid` sleeps in D (its I/O is stuck); false after `limit`.
pub fn wait_for_d_state(pid: u32, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if proc_state(pid) == 'D' {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// (queue, tag) of every request blk-mq debugfs lists in flight (`hctxN/busy`): the ground
/// truth the findings are checked against.
pub fn busy_tags(dev_id: u32) -> Vec<(u64, u64)> {
    let dir = format!("/sys/kernel/debug/block/ublkb{dev_id}");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(q) = name
            .strip_prefix("hctx")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let busy = std::fs::read_to_string(e.path().join("busy")).unwrap_or_default();
        for line in busy.lines().filter(|l| l.contains(".state=in_flight")) {
            let tag = line
                .split(".tag=")
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .and_then(|t| t.parse().ok());
            if let Some(tag) = tag {
                out.push((q, tag));
            }
        }
    }
    out
}

/// Wait until debugfs shows `(q, tag)` in flight in every poll over 600 ms (a normal request
/// completes in milliseconds, so only a hung one stays); false after `limit`.
pub fn wait_for_stuck_tag(dev_id: u32, q: u64, tag: u64, limit: Duration) -> bool {
    let t0 = Instant::now();
    let mut since: Option<Instant> = None;
    while t0.elapsed() < limit {
        if busy_tags(dev_id).contains(&(q, tag)) {
            let first = *since.get_or_insert_with(Instant::now);
            if first.elapsed() >= Duration::from_millis(600) {
                return true;
            }
        } else {
            since = None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `fio` keeping `depth` random reads in flight on `bdev` (every tag of a queue that deep
/// gets requests), pinned to `cpu` (which picks the hardware queue).
pub fn fio_reads(bdev: &str, depth: u32, cpu: usize) -> Child {
    Command::new("fio")
        .args([
            "--name=drive",
            &format!("--filename={bdev}"),
            "--direct=1",
            "--ioengine=libaio",
            &format!("--iodepth={depth}"),
            "--rw=randread",
            "--bs=4k",
            "--time_based",
            "--runtime=120",
            &format!("--cpus_allowed={cpu}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn fio: {e}"))
}

/// `ublk-trace diagnose dev N <extra>`: (exit code, JSON document, wall time).
pub fn diagnose(dev_id: u32, extra: &[&str]) -> (Option<i32>, Value, Duration) {
    let t0 = Instant::now();
    let out = Command::new(bin("ublk-trace"))
        .args(["diagnose", "dev", &dev_id.to_string(), "--json"])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("spawn ublk-trace diagnose: {e}"));
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("diagnose printed no JSON ({e}): {text}"));
    println!("diagnose took {took:?}: {doc}");
    (out.status.code(), doc, took)
}

/// Findings of a diagnose or watch document (watch: all devices' findings).
pub fn findings(doc: &Value) -> Vec<Value> {
    if let Some(f) = doc["findings"].as_array() {
        return f.clone();
    }
    doc["devices"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .flat_map(|d| d["findings"].as_array().cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

pub fn has_pid(f: &Value, pid: u32) -> bool {
    f["pids"]
        .as_array()
        .is_some_and(|p| p.iter().any(|x| x.as_u64() == Some(u64::from(pid))))
}

/// The first finding of `class` (any of them) on (queue, tag).
pub fn finding_on<'a>(fs: &'a [Value], classes: &[&str], q: u64, tag: u64) -> Option<&'a Value> {
    fs.iter().find(|f| {
        classes.iter().any(|c| f["class"] == *c)
            && f["queue"].as_u64() == Some(q)
            && f["tag"].as_u64() == Some(tag)
    })
}

pub fn classes(fs: &[Value]) -> Vec<String> {
    fs.iter()
        .map(|f| {
            format!(
                "{} q{} t{} pids {}",
                f["class"], f["queue"], f["tag"], f["pids"]
            )
        })
        .collect()
}

/// `ublk-trace watch dev N --headless --json`, lines read on a thread.
pub struct HeadlessWatch {
    pub child: Child,
    pub docs: mpsc::Receiver<(Instant, Value)>,
}

impl HeadlessWatch {
    pub fn start(dev_id: u32, interval_ms: u64) -> HeadlessWatch {
        // Below the 2 s the tests allow from fault to finding, with room for TCG.
        Self::start_with(dev_id, interval_ms, 500)
    }

    /// With the stuck/waiter threshold `stuck_ms`.
    pub fn start_with(dev_id: u32, interval_ms: u64, stuck_ms: u64) -> HeadlessWatch {
        let stuck = stuck_ms.to_string();
        Self::start_args(
            dev_id,
            interval_ms,
            &["--stuck-ms", &stuck, "--waiter-ms", &stuck],
        )
    }

    /// With any further `watch` options (thresholds).
    pub fn start_args(dev_id: u32, interval_ms: u64, extra: &[&str]) -> HeadlessWatch {
        let mut child = Command::new(bin("ublk-trace"))
            .args(["watch", "dev", &dev_id.to_string(), "--headless", "--json"])
            .args(["--interval", &interval_ms.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ublk-trace watch: {e}"));
        let Some(stdout) = child.stdout.take() else {
            panic!("watch stdout not piped");
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if tx.send((Instant::now(), v)).is_err() {
                    break;
                }
            }
        });
        HeadlessWatch { child, docs: rx }
    }

    /// The first document (received after `after`) for which `pred` holds, within `limit`.
    pub fn wait_for(
        &self,
        after: Instant,
        limit: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Option<(Instant, Value)> {
        let end = Instant::now() + limit;
        let mut last = None;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.docs.recv_timeout(left) {
                Ok((t, v)) if t >= after && pred(&v) => return Some((t, v)),
                Ok((_, v)) => last = Some(v),
                Err(_) => break,
            }
        }
        println!("no matching watch document; last one: {last:?}");
        None
    }
}

impl HeadlessWatch {
    /// Wait (up to a minute: loading eBPF parses BTF, slow under TCG) for a document that
    /// says the probes are live; say so when they never come and the snapshots carry on.
    pub fn wait_until_attached(&self) {
        let live = self.wait_for(Instant::now(), Duration::from_secs(60), |d| {
            d["source"] == "ebpf+snapshots"
                || d["source_note"]
                    .as_str()
                    .is_some_and(|n| n != "eBPF probes starting")
        });
        match live {
            Some((_, d)) if d["source"] == "ebpf+snapshots" => {}
            Some((_, d)) => println!(
                "NOTE: probes off ({}); judging the snapshot path",
                d["source_note"]
            ),
            None => println!("NOTE: probes not live after 60 s; judging the snapshot path"),
        }
    }
}

impl Drop for HeadlessWatch {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if wait_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Server {
    /// Start `ublk-server run <args>` without waiting for its ready line (a server whose
    /// START_DEV never completes prints none): the device id is read from the
    /// `/dev/ublkcN` the process holds open.
    pub fn spawn_unready(args: &[&str]) -> Server {
        let mut child = Command::new(bin("ublk-server"))
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ublk-server {args:?}: {e}"));
        let t0 = Instant::now();
        loop {
            if let Some(dev_id) = held_char_dev(child.id()) {
                return Server { child, dev_id };
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("ublk-server {args:?} exited ({st}) before opening /dev/ublkcN");
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ublk-server {args:?} held no /dev/ublkcN after 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Tid of the thread whose name is `comm` (e.g. `ublk-q0`, the server's queue threads).
    pub fn thread_tid(&self, comm: &str) -> Option<u32> {
        let dir = std::fs::read_dir(format!("/proc/{}/task", self.pid())).ok()?;
        dir.flatten().find_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let c = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (c.trim_end() == comm).then_some(tid)
        })
    }
}

/// N of the `/dev/ublkcN` that `pid` holds open.
pub fn held_char_dev(pid: u32) -> Option<u32> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    dir.flatten().find_map(|e| {
        let target = std::fs::read_link(e.path()).ok()?;
        target.to_str()?.strip_prefix("/dev/ublkc")?.parse().ok()
    })
}

/// A shell command line (`sh -c`) in its own process group; on drop the whole group is
/// SIGKILLed (fio forks its jobs) and reaped.
pub struct ShellJob {
    pub child: Child,
}

impl ShellJob {
    pub fn start(script: &str, env: &[(&str, String)]) -> ShellJob {
        let child = Command::new("sh")
            .args(["-c", script])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn sh -c {script:?}: {e}"));
        ShellJob { child }
    }

    /// Run `script` to its end (bounded by `limit`); its exit status.
    pub fn run(script: &str, env: &[(&str, String)], limit: Duration) -> ExitStatus {
        let mut job = Self::start(script, env);
        wait_timeout(&mut job.child, limit)
            .unwrap_or_else(|| panic!("sh -c {script:?} still running after {limit:?}"))
    }

    /// Whether the job's shell has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for ShellJob {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group our own child leads; no memory involved.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = wait_timeout(&mut self.child, Duration::from_secs(30));
    }
}

/// Completed reads + writes of `/sys/block/ublkb<id>/stat` (None when the disk is gone).
pub fn completed_ios(dev_id: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/sys/block/ublkb{dev_id}/stat")).ok()?;
    let f: Vec<u64> = stat
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Some(f.first()? + f.get(4)?)
}

/// Wait until the disk has completed `n` more requests than when called; false after `limit`.
pub fn wait_for_ios(dev_id: u32, n: u64, limit: Duration) -> bool {
    let base = completed_ios(dev_id).unwrap_or(0);
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if completed_ios(dev_id).is_some_and(|c| c >= base + n) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// After a scenario's teardown (server SIGKILLed, device deleted, workload killed): within
/// `limit` the device nodes and the disk are gone and no user task is left in D state, so
/// the guest can run the next test. Panics with what is left otherwise.
pub fn assert_recovered(dev_id: u32, limit: Duration) {
    let paths = [
        format!("/dev/ublkb{dev_id}"),
        format!("/dev/ublkc{dev_id}"),
        format!("/sys/block/ublkb{dev_id}"),
    ];
    let t0 = Instant::now();
    loop {
        let left: Vec<&String> = paths
            .iter()
            .filter(|p| std::path::Path::new(p).exists())
            .collect();
        let d = d_state_tasks();
        if left.is_empty() && d.is_empty() {
            println!("recovered {:?} after the teardown", t0.elapsed());
            return;
        }
        if t0.elapsed() > limit {
            panic!("not recovered after {limit:?}: still present {left:?}, tasks in D {d:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The kernel lists `name` in GET_FEATURES (`ublk-server features`).
pub fn kernel_has(name: &str) -> bool {
    let out = std::process::Command::new(bin("ublk-server"))
        .arg("features")
        .output()
        .unwrap_or_else(|e| panic!("ublk-server features: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(name))
}

/// fio random 4 KiB reads and writes on `bdev` for `secs` (2 jobs x QD16, libaio), its JSON
/// report on stdout: healthy traffic for the no-findings tests.
pub fn fio_randrw(bdev: &str, secs: u64) -> Child {
    Command::new("fio")
        .args([
            "--name=healthy",
            &format!("--filename={bdev}"),
            "--rw=randrw",
            "--bs=4k",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=16",
            "--numjobs=2",
            "--time_based",
            &format!("--runtime={secs}"),
            "--group_reporting",
            "--output-format=json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn fio: {e}"))
}

/// fio's `--output-format=json` report in `out` (a line such as "fio: terminating on signal
/// 2" may precede it): every job did I/O without an error. `how` says how fio ended.
pub fn assert_fio_report_ok(out: &str, how: &str) {
    let report: Value = out
        .find('{')
        .and_then(|i| serde_json::from_str(&out[i..]).ok())
        .unwrap_or_else(|| panic!("no JSON report from fio ({how}): {out}"));
    let jobs = report["jobs"].as_array().cloned().unwrap_or_default();
    assert!(!jobs.is_empty(), "fio report without jobs: {report}");
    for j in &jobs {
        let ios = j["read"]["total_ios"].as_u64().unwrap_or(0)
            + j["write"]["total_ios"].as_u64().unwrap_or(0);
        assert_eq!(j["error"], 0, "fio job failed: {j}");
        assert!(ios > 0, "fio job did no I/O: {j}");
    }
}

/// Every watch document `w` received so far.
pub fn drain(w: &HeadlessWatch) -> Vec<Value> {
    let mut docs = Vec::new();
    while let Ok((_, d)) = w.docs.try_recv() {
        docs.push(d);
    }
    docs
}

/// Every finding of `docs` but SLOW (informational: emulation stalls are slow I/O), as
/// `CLASS summary: evidence` lines.
pub fn problem_findings(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .flat_map(findings)
        .filter(|f| f["class"] != "SLOW")
        .map(|f| format!("{} {}: {}", f["class"], f["summary"], f["evidence"]))
        .collect()
}
