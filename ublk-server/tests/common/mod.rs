//! Helpers for the guest tests: start `ublk-server run`, wait for its ready line, run shell
//! commands, check for tasks left in D state. Every helper has a deadline: a hung device must
//! fail a test, not hang the guest.
#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use ublk_testkit::child::wait_timeout;
pub use ublk_testkit::shell::{have, sh};

pub fn bin() -> PathBuf {
    ublk_testkit::bins::project_bin("ublk-server", env!("CARGO_BIN_EXE_ublk-server"))
}

pub fn server_cmd(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("spawn ublk-server")
}

/// A running `ublk-server run ...`; killed and its devices deleted on drop.
pub struct Server {
    pub child: Child,
    pub dev_id: u32,
    pub stderr_path: PathBuf,
    /// The test sent SIGKILL: the server cannot delete its device, so the drop does.
    sigkilled: std::cell::Cell<bool>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        static N: AtomicU32 = AtomicU32::new(0);
        let stderr_path = std::env::temp_dir().join(format!(
            "ublk-server-{}-{}.err",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let err = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(bin())
            .arg("run")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn ublk-server run");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(120));
        let mut s = Server {
            child,
            dev_id: u32::MAX,
            stderr_path,
            sigkilled: std::cell::Cell::new(false),
        };
        let line = match line {
            Ok(l) => l,
            Err(_) => panic!(
                "no ready line from ublk-server {args:?}; stderr:\n{}",
                s.stderr()
            ),
        };
        // "ublk-server: dev <id> ready: /dev/ublkb<id>"
        let id = line
            .strip_prefix("ublk-server: dev ")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok());
        match id {
            Some(id) => s.dev_id = id,
            None => panic!("unexpected first line {line:?}; stderr:\n{}", s.stderr()),
        }
        assert!(
            std::path::Path::new(&s.bdev()).exists(),
            "ready printed but {} missing",
            s.bdev()
        );
        s
    }

    pub fn bdev(&self) -> String {
        format!("/dev/ublkb{}", self.dev_id)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        if sig == libc::SIGKILL {
            self.sigkilled.set(true);
        }
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGKILL, wait for the exit, then `del` the device: what a user does with a wedged
    /// server. Panics when the server outlives SIGKILL or `del` fails.
    pub fn kill_and_del(mut self) {
        self.signal(libc::SIGKILL);
        if wait_timeout(&mut self.child, Duration::from_secs(30)).is_none() {
            panic!("server still running 30 s after SIGKILL");
        }
        let del = server_cmd(&["del", &self.dev_id.to_string()]);
        assert!(
            del.status.success(),
            "del {} after SIGKILL: {}",
            self.dev_id,
            String::from_utf8_lossy(&del.stderr)
        );
        // Deleted: the drop has nothing left to do.
        self.sigkilled.set(false);
    }

    /// SIGINT and wait for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGINT);
        match wait_timeout(&mut self.child, Duration::from_secs(120)) {
            Some(st) => st,
            None => panic!(
                "server did not exit after SIGINT; stderr:\n{}",
                self.stderr()
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Whether the server is still running or was SIGKILLed by the test (it may already
        // have exited, so `try_wait` alone cannot tell), its device is ours to delete. A
        // server that exited by itself (SIGINT) keeps the right to have deleted its own.
        let running = matches!(self.child.try_wait(), Ok(None));
        if running {
            let _ = self.child.kill();
            let _ = wait_timeout(&mut self.child, Duration::from_secs(30));
        }
        if (running || self.sigkilled.get()) && self.dev_id != u32::MAX {
            let id = self.dev_id.to_string();
            ublk_testkit::child::run_bounded(
                Command::new(bin()).args(["del", &id]).stderr(Stdio::null()),
                &format!("ublk-server del {id}"),
                Duration::from_secs(30),
            );
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// Tasks in D state, kernel threads included (a kworker stuck on the disk counts here).
pub fn d_state_tasks() -> Vec<ublk_testkit::tasks::DTask> {
    ublk_testkit::tasks::d_state_tasks()
}

/// Wait until no task is in D state (a few seconds of grace for I/O being failed).
pub fn assert_no_d_state() {
    let t0 = Instant::now();
    loop {
        let d = d_state_tasks();
        if d.is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "tasks left in D state: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process killed (SIGKILL) on drop, so a failed assertion cannot leave a server
/// holding a device that later tests' `del` would wait on forever.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = wait_timeout(&mut self.0, Duration::from_secs(30));
            let _ = Command::new(bin()).args(["del", "--all"]).output();
        }
    }
}

/// A sparse file of `bytes` in the temp dir, for the loop target.
pub fn loop_file(name: &str, bytes: u64) -> String {
    let p = std::env::temp_dir().join(name);
    let f = std::fs::File::create(&p).expect("create loop file");
    f.set_len(bytes).expect("size loop file");
    p.to_string_lossy().into_owned()
}

/// fio writes random 4k blocks with crc32c headers, then reads every block back and checks it.
pub fn fio_verify(bdev: &str, depth: u16) {
    assert!(have("fio"), "fio missing from the guest");
    let (engine, iodepth) = if depth == 1 {
        ("psync", 1)
    } else {
        ("io_uring", 32)
    };
    let (st, out) = sh(&format!(
        "fio --name=verify --filename={bdev} --direct=1 --ioengine={engine} --iodepth={iodepth} \
         --rw=randwrite --bs=4k --size=8M --verify=crc32c --do_verify=1 --verify_fatal=1"
    ));
    assert!(st.success(), "fio verify failed on {bdev}:\n{out}");
    // The verify pass reads what was written: both directions must have moved data.
    assert!(
        out.contains("WRITE:") && out.contains("READ:"),
        "fio did not write and read back:\n{out}"
    );
    assert!(!out.contains("verify failed"), "{out}");
}
