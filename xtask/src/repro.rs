//! `cargo xtask repro <scenario>`: boot the guest, turn `ublk-server` into a known-broken server
//! (`--inject`, or a signal), run the workload that triggers the bug, and show what
//! `ublk-trace diagnose` says about it (`--watch`: the TUI instead). The catalogue below is the
//! single source for `--list` and is documented, scenario by scenario, in docs/scenarios.md.
use std::time::Duration;

use anyhow::{Result, bail};

use crate::guest::{
    GuestOpts, boot_opts, build_project, interactive_sh, make_initramfs, terminal_size,
};
use crate::kernel::KernelSpec;
use crate::util::cache_dir;

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
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "hang-tag",
        symptom: "one request never completes; its reader sits in D state",
        server: "null --queues 1 --depth 4 --inject hang:q=0,tag=1",
        workload: "fio --name=r --filename=/dev/ublkb0 --rw=randread --bs=4k --iodepth=4 --ioengine=io_uring --direct=1 --time_based --runtime=600 >/dev/null 2>&1",
        action: "",
        expect: "STUCK_IN_SERVER",
    },
    Scenario {
        name: "stopped-server",
        symptom: "all I/O hangs; GET_DEV_INFO still says LIVE",
        server: "null --queues 1 --depth 8",
        workload: "dd if=/dev/ublkb0 of=/dev/null bs=4k count=1000000 iflag=direct 2>/dev/null",
        action: "kill -STOP $SRV",
        expect: "SERVER_STOPPED",
    },
    Scenario {
        name: "crash",
        symptom: "I/O errors, the block device disappears, /dev/ublkc0 stays",
        server: "null --queues 1 --depth 8 --inject crash:after=200",
        workload: "dd if=/dev/ublkb0 of=/dev/null bs=4k count=1000000 iflag=direct 2>/dev/null",
        action: "",
        expect: "SERVER_DEAD",
    },
    Scenario {
        name: "error-commit",
        symptom: "reads fail with EIO although the backend is fine",
        server: "null --queues 1 --depth 8 --inject error:errno=5",
        workload: "dd if=/dev/ublkb0 of=/dev/null bs=4k count=100 iflag=direct 2>/dev/null",
        action: "",
        expect: "BAD_COMMIT",
    },
    Scenario {
        name: "zero-commit",
        symptom: "reads fail, writes spin (partial-completion requeue storm)",
        server: "null --queues 1 --depth 8 --inject zero-commit",
        workload: "dd if=/dev/ublkb0 of=/dev/null bs=4k count=100 iflag=direct 2>/dev/null",
        action: "",
        expect: "BAD_COMMIT",
    },
    Scenario {
        name: "slow",
        symptom: "I/O completes, but each request takes hundreds of ms",
        server: "null --queues 1 --depth 8 --inject delay:ms=400",
        workload: "fio --name=r --filename=/dev/ublkb0 --rw=randread --bs=4k --iodepth=4 --ioengine=io_uring --direct=1 --time_based --runtime=600 >/dev/null 2>&1",
        action: "",
        expect: "SLOW",
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
    },
    Scenario {
        name: "skip-fetch",
        symptom: "START_DEV never completes; the server waits forever for the device",
        server: "null --queues 1 --depth 8 --inject skip-fetch:q=0,tags=2",
        workload: "true",
        action: "",
        expect: "NO_FETCH",
    },
];

pub fn list() {
    println!("{:<16} {:<18} symptom", "scenario", "finding");
    for s in SCENARIOS {
        println!("{:<16} {:<18} {}", s.name, s.expect, s.symptom);
    }
    println!(
        "\nDetails (cause, what ublk-trace shows, how to fix such a server): docs/scenarios.md"
    );
}

fn find(name: &str) -> Result<&'static Scenario> {
    match SCENARIOS.iter().find(|s| s.name == name) {
        Some(s) => Ok(s),
        None => {
            let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
            bail!("unknown scenario {name:?}; one of: {}", names.join(", "))
        }
    }
}

/// The guest script: start the broken server, trigger, observe, then always clean up so no
/// device or D-state task is left (a stopped server is resumed/killed before `del`: DEL on a
/// stopped server blocks in del_gendisk holding the global ublk mutex).
pub fn script(s: &Scenario, observe: &str) -> String {
    format!(
        r#"ublk-server run {server} > /tmp/srv.out 2>/tmp/srv.err &
SRV=$!
i=0; while ! grep -q ready /tmp/srv.out 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "=== repro {name}: server pid $SRV, expecting {expect}"
( {workload} ) &
WL=$!
sleep 2
{action}
sleep 1
{observe}
rc=$?
echo "=== cleanup"
kill -CONT $SRV 2>/dev/null; kill -KILL $SRV 2>/dev/null; wait $SRV 2>/dev/null
kill -KILL $WL 2>/dev/null; wait $WL 2>/dev/null
ublk-server del --all >/dev/null 2>&1
ls /dev/ublkb* /dev/ublkc* 2>/dev/null && echo "=== WARNING: devices left behind"
grep -l '^State:.*D' /proc/[0-9]*/status 2>/dev/null | sed 's/^/=== D-state task: /'
exit $rc"#,
        server = s.server,
        name = s.name,
        expect = s.expect,
        workload = s.workload,
        action = s.action,
    )
}

pub fn run(name: &str, watch: bool, kernel: &str) -> Result<i32> {
    let s = find(name)?;
    crate::setup::setup(false)?;
    let spec = KernelSpec::parse(kernel)?;
    let k = crate::kernel::fetch(&spec)?;
    let bins = build_project(true)?;
    let mut g = GuestOpts::new(spec);
    g.release = true;
    if watch {
        g.timeout = Duration::from_secs(3 * 3600);
        let sh = script(s, "ublk-trace watch dev 0");
        let sh = format!(
            "cat > /repro.sh <<'REPRO_EOF'\n{sh}\nREPRO_EOF\n{}",
            interactive_sh("sh /repro.sh")
        );
        let initrd = make_initramfs(&k, &g, &bins, &sh, &[])?;
        let (cols, rows) = terminal_size();
        let rc = crate::qemu::boot_interactive(&boot_opts(&g, &k, &initrd), cols, rows)?;
        let _ = std::fs::remove_file(&initrd);
        return Ok(rc);
    }
    g.timeout = Duration::from_secs(300);
    let observe = format!(
        "ublk-trace diagnose dev 0 --for 2 --json > /tmp/diag.json; d=$?\n\
         echo '=== findings'; ublk-trace diagnose dev 0 --for 1; \
         grep -q '\"{}\"' /tmp/diag.json && echo '=== REPRO-OK' || {{ echo '=== REPRO-MISSED'; cat /tmp/diag.json; }}\n[ $d -ne 2 ]",
        s.expect
    );
    let initrd = make_initramfs(&k, &g, &bins, &script(s, &observe), &[])?;
    let log = cache_dir().join(format!("repro-{name}.log"));
    let (outcome, lines) =
        crate::qemu::boot_captured(&boot_opts(&g, &k, &initrd), &log, |l| println!("{l}"))?;
    let _ = std::fs::remove_file(&initrd);
    crate::guest::report_outcome(&outcome, &lines, &log);
    let hit = lines.iter().any(|l| l.contains("=== REPRO-OK"));
    println!(
        "[repro] {name}: {}",
        if hit {
            format!("ublk-trace named it {}", s.expect)
        } else {
            format!("{} NOT found", s.expect)
        }
    );
    Ok(if hit && outcome.code() == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_is_documented() {
        let doc = std::fs::read_to_string(crate::util::workspace_root().join("docs/scenarios.md"))
            .expect("docs/scenarios.md exists");
        for s in SCENARIOS {
            assert!(
                doc.contains(&format!("`{}`", s.name)),
                "docs/scenarios.md lacks `{}`",
                s.name
            );
            assert!(
                doc.contains(s.expect),
                "docs/scenarios.md lacks {} for {}",
                s.expect,
                s.name
            );
        }
    }

    #[test]
    fn scripts_always_clean_up() {
        for s in SCENARIOS {
            let sh = script(s, "true");
            let cont = sh.find("kill -CONT").expect("resumes the server");
            let del = sh.find("ublk-server del --all").expect("deletes devices");
            assert!(
                cont < del,
                "{}: del before resuming a stopped server wedges the guest",
                s.name
            );
        }
        assert!(find("nope").is_err());
    }
}
