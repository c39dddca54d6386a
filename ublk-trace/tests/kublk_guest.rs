//! Guest tests on a server that is not ours: `kublk`, the kernel selftests' ublk server
//! (tools/testing/selftests/ublk/, C on liburing; xtask builds it and puts it in /bin). What
//! kublk does, from its source (7.3):
//! - `kublk add` forks, the child `setsid()`s and forks the daemon, which runs
//!   `__cmd_dev_add`; the foreground parent prints `dev id N: ...` and `daemon pid P` (the pid
//!   START_DEV got) and exits. The daemon's threads handle the queues (`--nthreads`, default one
//!   per queue; `--per_io_tasks` spreads each queue's tags over all of them).
//! - Without `-r 1` there is no user recovery: when the daemon dies, the driver fails its I/O
//!   and the device goes DEAD (`SERVER_DEAD`, the disk removed, /dev/ublkcN left until DEL).
//! - `-t fault_inject --delay_us N` is a null target that completes each I/O after N µs.
//!
//! Every test tears down with [`Kublk`]'s drop: SIGKILL the daemon (never DEL a stopped
//! server's device: DEL waits in del_gendisk), then `kublk del -n N`, and checks that no device
//! and no task in D state is left.
mod diagnose_common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diagnose_common::*;
use serde_json::Value;

/// Where xtask's harness writes why kublk is not in the guest (see xtask/src/guest.rs).
const KUBLK_MISSING: &str = "/etc/kublk.unavailable";

/// Thresholds for healthy traffic: the emulated guest stalls for seconds under load (see
/// diagnose_healthy_fio.rs), so 5 s, as there.
const HEALTHY_STUCK_MS: &str = "5000";

/// The kublk binary, or why there is none (the harness's note, or the path looked at).
fn kublk_bin() -> Result<std::path::PathBuf, String> {
    let p = bin("kublk");
    if p.is_file() {
        return Ok(p);
    }
    Err(match std::fs::read_to_string(KUBLK_MISSING) {
        Ok(why) => format!("kublk could not be built: {}", why.trim()),
        Err(_) => format!("no kublk at {}; `cargo xtask setup` builds it", p.display()),
    })
}

fn uname_r() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// kublk ready to be used, or a printed SKIP for `test` (no kublk, or the kernel lacks
/// `feature`, named as GET_FEATURES spells it; `since` is the first kernel that has it).
fn ready(test: &str, feature: Option<(&str, &str)>) -> Option<std::path::PathBuf> {
    let k = match kublk_bin() {
        Ok(k) => k,
        Err(why) => {
            skip(test, &why);
            return None;
        }
    };
    if let Some((f, since)) = feature
        && !kernel_has(f)
    {
        skip(
            test,
            &format!("kernel {} has no UBLK_F_{f} ({since}+)", uname_r()),
        );
        return None;
    }
    Some(k)
}

/// A device served by a kublk daemon. On drop: SIGKILL the daemon, wait for it to go, then
/// `kublk del` (bounded).
struct Kublk {
    bin: std::path::PathBuf,
    dev_id: u32,
    daemon: u32,
}

impl Kublk {
    /// `kublk add <args>`: waits for the foreground part to print the device and exit.
    fn add(bin: &std::path::Path, args: &[&str]) -> Kublk {
        let mut child = Command::new(bin)
            .arg("add")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn kublk add {args:?}: {e}"));
        let st = wait_timeout(&mut child, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("kublk add {args:?} did not return within 60 s"));
        let (out, err) = read_both(&mut child);
        println!("kublk add {args:?}: {st}\n{out}{err}");
        assert!(st.success(), "kublk add {args:?} failed ({st}): {out}{err}");
        let (dev_id, daemon) = parse_add(&out)
            .unwrap_or_else(|| panic!("no `dev id N` / `daemon pid P` in kublk's output: {out}"));
        assert!(
            std::path::Path::new(&format!("/proc/{daemon}")).exists(),
            "kublk's daemon pid {daemon} is not running"
        );
        Kublk {
            bin: bin.to_path_buf(),
            dev_id,
            daemon,
        }
    }

    fn bdev(&self) -> String {
        format!("/dev/ublkb{}", self.dev_id)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the daemon's pid, which this test started; no memory involved.
        unsafe { libc::kill(self.daemon as i32, sig) };
    }

    /// The daemon's threads.
    fn tids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = std::fs::read_dir(format!("/proc/{}/task", self.daemon))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The daemon's I/O threads, in the order kublk created them (`tinfo[0..nthreads]`): its
    /// threads named `kublk` but the main one, by tid (the shmem listener comes after them).
    fn io_threads(&self, nthreads: usize) -> Vec<u32> {
        self.tids()
            .into_iter()
            .filter(|&t| t != self.daemon)
            .filter(|t| {
                std::fs::read_to_string(format!("/proc/{}/task/{t}/comm", self.daemon))
                    .is_ok_and(|c| c.trim_end() == "kublk")
            })
            .take(nthreads)
            .collect()
    }

    /// The daemon is gone (or a zombie nobody reaped: its files are closed).
    fn daemon_gone(&self) -> bool {
        let st = proc_state(self.daemon);
        st == '?' || st == 'Z' || st == 'X'
    }
}

impl Drop for Kublk {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        let t0 = Instant::now();
        while !self.daemon_gone() && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let id = self.dev_id.to_string();
        ublk_testkit::child::run_bounded(
            Command::new(&self.bin)
                .args(["del", "-n", &id])
                .stderr(Stdio::null()),
            &format!("kublk del -n {id}"),
            Duration::from_secs(30),
        );
    }
}

fn read_both(child: &mut Child) -> (String, String) {
    use std::io::Read;
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (out, err)
}

/// (dev_id, daemon pid) from `kublk add`'s listing:
/// `dev id 0: nr_hw_queues 1 ...` and `\tmax rq size 1048576 daemon pid 123 flags ...`.
fn parse_add(out: &str) -> Option<(u32, u32)> {
    let after = |key: &str| -> Option<u32> {
        let i = out.find(key)? + key.len();
        out[i..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((after("dev id ")?, after("daemon pid ")?))
}

/// The number after `flag` in `args`.
fn arg_after(args: &[&str], flag: &str) -> Option<usize> {
    let i = args.iter().position(|a| *a == flag)?;
    args.get(i + 1)?.parse().ok()
}

/// Teardown done right: no ublkb/ublkc node of `dev_id` and no task in D state left.
fn teardown(k: Kublk, workload: Option<Child>) {
    let dev_id = k.dev_id;
    drop(k);
    if let Some(mut w) = workload {
        let _ = w.kill();
        let _ = wait_timeout(&mut w, Duration::from_secs(30));
    }
    assert_recovered(dev_id, Duration::from_secs(30));
}

/// fio's JSON report after it ran to its end: every job did I/O without an error.
fn assert_fio_ok(mut fio: Child) {
    let st = wait_timeout(&mut fio, Duration::from_secs(120)).expect("fio did not end");
    let (out, _) = read_both(&mut fio);
    assert_fio_report_ok(&out, &st.to_string());
}

/// Requests the watch saw in flight on `dev_id` (summed state counts over the documents).
fn busy_seen(docs: &[Value], dev_id: u32) -> u64 {
    docs.iter()
        .flat_map(|d| d["devices"].as_array().cloned().unwrap_or_default())
        .filter(|d| d["dev"].as_u64() == Some(u64::from(dev_id)))
        .flat_map(|d| d["queues"].as_array().cloned().unwrap_or_default())
        .map(|q| {
            ["queued", "in_server", "committed", "in_flight"]
                .iter()
                .map(|k| q["counts"][k].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum()
}

/// `kublk add <args>` under `secs` of fio randrw, watched headless from before fio starts;
/// then a diagnose. No finding but SLOW (emulation stalls are slow I/O), requests seen in
/// flight, diagnose exit 0, fio without errors.
fn healthy(test: &str, feature: Option<(&str, &str)>, args: &[&str], secs: u64) {
    let Some(bin) = ready(test, feature) else {
        return;
    };
    let k = Kublk::add(&bin, args);
    let w = HeadlessWatch::start_args(
        k.dev_id,
        500,
        &[
            "--stuck-ms",
            HEALTHY_STUCK_MS,
            "--waiter-ms",
            HEALTHY_STUCK_MS,
            "--ctrl-ms",
            HEALTHY_STUCK_MS,
        ],
    );
    w.wait_until_attached();
    let _ = drain(&w);
    let fio = fio_randrw(&k.bdev(), secs);
    let t0 = Instant::now();
    assert_fio_ok(fio);
    let docs = drain(&w);
    let (code, doc, _) = diagnose(k.dev_id, &["--for", "1", "--stuck-ms", HEALTHY_STUCK_MS]);
    let dev_id = k.dev_id;
    drop(w);
    teardown(k, None);
    println!("{} watch documents over {:?}", docs.len(), t0.elapsed());
    assert!(
        docs.len() as u64 >= secs,
        "only {} documents in {secs} s",
        docs.len()
    );
    let bad = problem_findings(&docs);
    assert!(
        bad.is_empty(),
        "{} findings on healthy kublk {args:?}, the first: {:#?}",
        bad.len(),
        &bad[..bad.len().min(8)]
    );
    assert!(
        busy_seen(&docs, dev_id) > 0,
        "the watch never saw a request in flight on kublk's device"
    );
    assert_eq!(code, Some(0), "diagnose after healthy fio: {doc}");
}

/// `kublk add <args>`, SIGSTOP on its daemon, a reader blocked behind it: one diagnose names
/// SERVER_STOPPED with the daemon's pid, the stuck request on the tag debugfs lists (with the
/// daemon), and the blocked reader under WAITERS.
fn stopped(test: &str, feature: Option<(&str, &str)>, args: &[&str]) {
    let Some(bin) = ready(test, feature) else {
        return;
    };
    let k = Kublk::add(&bin, args);
    let nthreads = arg_after(args, "--nthreads").unwrap_or(1);
    let io_threads = k.io_threads(nthreads);
    println!(
        "daemon {} threads {:?}, I/O threads {io_threads:?}",
        k.daemon,
        k.tids()
    );
    assert_eq!(
        io_threads.len(),
        nthreads,
        "kublk's I/O threads: {:?}",
        k.tids()
    );
    k.signal(libc::SIGSTOP);
    let reader = dd(&k.bdev(), 3, 1, None);
    assert!(
        wait_for_d_state(reader.id(), Duration::from_secs(10)),
        "the reader did not block behind the stopped daemon: state {}",
        proc_state(reader.id())
    );
    let busy = busy_tags(k.dev_id);
    let (code, doc, _) = diagnose(k.dev_id, &["--for", "1", "--stuck-ms", "500"]);
    let (daemon, reader_pid) = (k.daemon, reader.id());
    teardown(k, Some(reader));
    assert_eq!(
        busy.len(),
        1,
        "debugfs lists the reader's one request: {busy:?}"
    );
    let (q, tag) = busy[0];
    assert_ne!(
        code,
        Some(0),
        "diagnose of a stopped server exits non-zero: {doc}"
    );
    let fs = findings(&doc);
    let stop = fs
        .iter()
        .find(|f| f["class"] == "SERVER_STOPPED")
        .unwrap_or_else(|| panic!("no SERVER_STOPPED: {:?}\n{doc}", classes(&fs)));
    assert!(
        has_pid(stop, daemon),
        "SERVER_STOPPED names daemon {daemon}: {stop}"
    );
    assert!(
        stop["evidence"]
            .to_string()
            .contains(&format!("q{q} tag {tag}")),
        "SERVER_STOPPED lists the busy q{q} tag {tag}: {stop}"
    );
    let stuck = finding_on(&fs, &["NOT_DELIVERED", "STUCK_IN_SERVER"], q, tag)
        .unwrap_or_else(|| panic!("no finding on the busy q{q} t{tag}: {:?}", classes(&fs)));
    assert!(
        has_pid(stuck, daemon),
        "the stuck tag names the daemon: {stuck}"
    );
    let text = stuck["evidence"].to_string();
    if args.contains(&"-b") {
        // No per-tag command exists on a batch device (kublk's batch.c).
        assert!(!text.contains("FETCH/COMMIT"), "{stuck}");
        println!(
            "NOTE: batch mode: owner thread named {}",
            stuck["tags"][0]["owner_tid"]
        );
    } else {
        // kublk's ublk_submit_fetch_commands: with --per_io_tasks thread i serves tags i,
        // i + nthreads, ... of the queue; otherwise a queue's one thread serves all its tags.
        let owner = io_threads[tag as usize % nthreads];
        assert_eq!(
            stuck["tags"][0]["owner_tid"].as_u64(),
            Some(u64::from(owner)),
            "q{q} t{tag} is served by kublk thread {owner} (of {io_threads:?}): {stuck}"
        );
        assert!(has_pid(stuck, owner), "{stuck}");
    }
    let waiters = fs
        .iter()
        .find(|f| f["class"] == "WAITERS")
        .unwrap_or_else(|| panic!("no WAITERS: {:?}", classes(&fs)));
    assert!(
        has_pid(waiters, reader_pid),
        "WAITERS names the blocked reader {reader_pid}: {waiters}"
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn kublk_null_under_fio_for_a_minute_gives_no_findings() {
    healthy(
        "kublk_null_under_fio_for_a_minute_gives_no_findings",
        None,
        &["-t", "null", "-q", "2", "-d", "64"],
        60,
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn kublk_sigstopped_daemon_is_server_stopped_with_the_busy_tag_and_the_waiter() {
    stopped(
        "kublk_sigstopped_daemon_is_server_stopped_with_the_busy_tag_and_the_waiter",
        None,
        &["-t", "null", "-q", "1", "-d", "8"],
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn kublk_sigkilled_daemon_is_server_dead() {
    let test = "kublk_sigkilled_daemon_is_server_dead";
    let Some(bin) = ready(test, None) else {
        return;
    };
    let k = Kublk::add(&bin, &["-t", "null", "-q", "1", "-d", "8"]);
    // Watched while it lives, so the watch has seen which process held /dev/ublkcN.
    let w = HeadlessWatch::start(k.dev_id, 300);
    w.wait_until_attached();
    let mut reader = dd(&k.bdev(), 0, 1_000_000, None);
    assert!(
        wait_for_ios(k.dev_id, 100, Duration::from_secs(30)),
        "no I/O completed on kublk's device"
    );
    let daemon = k.daemon;
    let fault = Instant::now();
    k.signal(libc::SIGKILL);
    let watched = w.wait_for(fault, Duration::from_secs(10), |d| {
        findings(d)
            .iter()
            .any(|f| f["class"] == "SERVER_DEAD" && has_pid(f, daemon))
    });
    drop(w);
    // No recovery (-r 0): the driver fails the daemon's I/O, so the reader ends with EIO.
    let st = wait_timeout(&mut reader, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the reader did not end after the daemon died"));
    assert!(!st.success(), "dd read on through a dead server: {st}");
    let t0 = Instant::now();
    while !k.daemon_gone() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (code, doc, _) = diagnose(k.dev_id, &["--for", "1", "--stuck-ms", "500"]);
    let dev_id = k.dev_id;
    let disk_left = std::path::Path::new(&format!("/sys/block/ublkb{dev_id}")).exists();
    teardown(k, None);
    assert!(!disk_left, "the disk outlived the daemon without recovery");
    assert_ne!(code, Some(0), "{doc}");
    let fs = findings(&doc);
    let dead = fs
        .iter()
        .find(|f| f["class"] == "SERVER_DEAD")
        .unwrap_or_else(|| panic!("no SERVER_DEAD: {:?}\n{doc}", classes(&fs)));
    assert!(
        dead["evidence"].to_string().contains("state DEAD"),
        "the driver's own state says DEAD: {dead}"
    );
    // The live watch names the daemon it saw holding the char device. (The late diagnose
    // cannot: the driver resets ublksrv_pid to -1 and kublk publishes no tag-state file.)
    let (t, _) = watched
        .unwrap_or_else(|| panic!("the watch named no SERVER_DEAD with pid {daemon} in 10 s"));
    println!(
        "watch: SERVER_DEAD pid {daemon} {:?} after SIGKILL",
        t - fault
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn kublk_fault_inject_delay_is_slow() {
    let test = "kublk_fault_inject_delay_is_slow";
    let Some(bin) = ready(test, None) else {
        return;
    };
    // 400 ms per I/O, twice the 200 ms SLOW threshold.
    let k = Kublk::add(
        &bin,
        &[
            "-t",
            "fault_inject",
            "-q",
            "1",
            "-d",
            "4",
            "--delay_us",
            "400000",
        ],
    );
    let reader = dd(&k.bdev(), 0, 1_000_000, None);
    let w = HeadlessWatch::start(k.dev_id, 300);
    w.wait_until_attached();
    let daemon = k.daemon;
    let found = w.wait_for(Instant::now(), Duration::from_secs(30), |d| {
        findings(d)
            .iter()
            .any(|f| f["class"] == "SLOW" && has_pid(f, daemon))
    });
    drop(w);
    teardown(k, Some(reader));
    let (_, doc) = found.unwrap_or_else(|| panic!("no SLOW naming daemon {daemon} within 30 s"));
    let fs = findings(&doc);
    let others: Vec<String> = fs
        .iter()
        .filter(|f| f["class"] != "SLOW")
        .map(|f| f["class"].to_string())
        .collect();
    assert!(others.is_empty(), "a slow server called more: {others:?}");
    let slow = fs
        .iter()
        .find(|f| f["class"] == "SLOW")
        .expect("found above");
    println!("SLOW: {slow}");
}

/// `(GET_FEATURES name, first kernel)` of kublk's batch mode `-b`.
const BATCH: (&str, &str) = ("BATCH_IO", "7.0");
/// `(GET_FEATURES name, first kernel)` of `--per_io_tasks`.
const PER_IO: (&str, &str) = ("PER_IO_DAEMON", "6.16");

/// Healthy runs of the 7.x modes: 15 s (not a minute) to keep the smoke boot short; the
/// plain null run above covers the minute.
const SMOKE_SECS: u64 = 15;

#[test]
#[ignore = "needs ublk guest"]
fn smoke_kublk_batch_under_fio_gives_no_findings() {
    healthy(
        "smoke_kublk_batch_under_fio_gives_no_findings",
        Some(BATCH),
        &["-t", "null", "-q", "2", "-d", "64", "-b"],
        SMOKE_SECS,
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_kublk_batch_sigstopped_is_server_stopped() {
    stopped(
        "smoke_kublk_batch_sigstopped_is_server_stopped",
        Some(BATCH),
        &["-t", "null", "-q", "1", "-d", "8", "-b"],
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_kublk_per_io_tasks_under_fio_gives_no_findings() {
    healthy(
        "smoke_kublk_per_io_tasks_under_fio_gives_no_findings",
        Some(PER_IO),
        &[
            "-t",
            "null",
            "-q",
            "2",
            "-d",
            "64",
            "--nthreads",
            "2",
            "--per_io_tasks",
        ],
        SMOKE_SECS,
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn smoke_kublk_per_io_tasks_sigstopped_is_server_stopped() {
    stopped(
        "smoke_kublk_per_io_tasks_sigstopped_is_server_stopped",
        Some(PER_IO),
        &[
            "-t",
            "null",
            "-q",
            "1",
            "-d",
            "8",
            "--nthreads",
            "2",
            "--per_io_tasks",
        ],
    );
}

/// `(GET_FEATURES name, first kernel)` of `--auto_zc` (auto buffer registration).
const AUTO_ZC: (&str, &str) = ("AUTO_BUF_REG", "6.16");

#[test]
#[ignore = "needs ublk guest"]
fn smoke_kublk_auto_zc_under_fio_gives_no_findings() {
    healthy(
        "smoke_kublk_auto_zc_under_fio_gives_no_findings",
        Some(AUTO_ZC),
        &["-t", "null", "-q", "2", "-d", "64", "--auto_zc"],
        SMOKE_SECS,
    );
}

#[test]
fn kublk_add_output_parses() {
    let out = "dev id 3: nr_hw_queues 1 queue_depth 8 block size 512 dev_capacity 524288000\n\
               \tmax rq size 1048576 daemon pid 412 flags 0x42 state LIVE\n\
               \tqueue 0: affinity(0 1 )\n";
    assert_eq!(parse_add(out), Some((3, 412)));
    assert_eq!(parse_add("dev id 3: nr_hw_queues 1\n"), None);
}
