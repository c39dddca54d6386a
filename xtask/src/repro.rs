//! `cargo xtask repro <scenario>`: boot the guest, turn `ublk-server` into a known-broken server
//! (`--inject`, or a signal), run the workload that triggers the bug, and show what
//! `ublk-trace diagnose` says about it (`--watch`: the TUI instead). The catalogue lives in
//! scenarios.rs (shared with the guest tests in ublk-trace/tests/repro_scenarios.rs) and is
//! documented, scenario by scenario, in docs/scenarios.md.
use std::time::Duration;

use anyhow::{Result, bail};

use crate::guest::{
    GuestOpts, boot_opts, build_project, interactive_sh, make_initramfs, terminal_size,
};
use crate::kernel::KernelSpec;
pub use crate::scenarios::{SCENARIOS, Scenario};
use crate::util::cache_dir;

pub fn list() {
    println!(
        "{:<18} {:<16} {:<32} symptom",
        "scenario", "finding", "found by a late diagnose"
    );
    for s in SCENARIOS {
        println!(
            "{:<18} {:<16} {:<32} {}",
            s.name,
            s.expect,
            s.late.join(" or "),
            s.symptom
        );
    }
    for s in SCENARIOS.iter().filter(|s| !s.also.is_empty()) {
        println!(
            "{}: either look may also name {} (a true side view)",
            s.name,
            s.also.join(", ")
        );
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

/// The guest script: start the broken server, trigger, observe, then always clean up
/// ([`TEARDOWN`]).
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
{TEARDOWN}
exit $rc"#,
        server = s.server,
        name = s.name,
        expect = s.expect,
        workload = s.workload,
        action = s.action,
    )
}

/// Shell lines that end the server `$SRV` and the workload `$WL` so that no device or
/// D-state task is left (a stopped server is resumed/killed before `del`: DEL on a
/// stopped server blocks in del_gendisk holding the global ublk mutex). SIGINT comes first
/// (a start-gated server on 6.12 must open its gate: SIGKILL would leave START_DEV and the
/// dying server in D state for good), a second SIGINT 2.5 s later, SIGKILL 5 s after that.
/// The first SIGINT sends STOP_DEV, which waits for the I/O that injected faults hold; the
/// second makes the server fail or serve that I/O so STOP_DEV can finish. A SIGKILL while
/// STOP_DEV waits can deadlock the exit on 6.12: with a stall-queue DEFER_TASKRUN ring, the
/// undelivered requests complete only when the ring is torn down, which waits for the exit,
/// which waits for the io-wq worker stuck in STOP_DEV (seen: the server's main thread and its
/// iou-wrk in D for good).
pub const TEARDOWN: &str = r#"kill -CONT $SRV 2>/dev/null; kill -INT $SRV 2>/dev/null
i=0; while kill -0 $SRV 2>/dev/null && [ $i -lt 25 ]; do sleep 0.1; i=$((i+1)); done
kill -INT $SRV 2>/dev/null
i=0; while kill -0 $SRV 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL $SRV 2>/dev/null; wait $SRV 2>/dev/null
kill -KILL $WL 2>/dev/null; wait $WL 2>/dev/null
ublk-server del --all >/dev/null 2>&1
ls /dev/ublkb* /dev/ublkc* 2>/dev/null && echo "=== WARNING: devices left behind"
grep -l '^State:.*D' /proc/[0-9]*/status 2>/dev/null | sed 's/^/=== D-state task: /'"#;

pub fn run(name: &str, watch: bool, kernel: &str) -> Result<i32> {
    let s = find(name)?;
    let spec = KernelSpec::parse(kernel)?;
    if let Some(min) = s.min_kernel()
        && !spec.at_least(min)
    {
        bail!(
            "scenario {name} needs Linux {min} or newer (its server runs `{}`); run it with \
             --kernel 7",
            s.server
        );
    }
    crate::setup::setup(&[])?;
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
    fn modes_name_their_first_kernel() {
        let min = |n: &str| find(n).map(|s| s.min_kernel()).expect("scenario");
        assert_eq!(min("batch-no-rearm"), Some("7.0"));
        assert_eq!(min("hang-tag"), None);
    }

    #[test]
    fn scripts_always_clean_up() {
        for s in SCENARIOS {
            let sh = script(s, "true");
            let cont = sh.find("kill -CONT").expect("resumes the server");
            let second_int = sh.rfind("kill -INT").expect("interrupts the server");
            let kill = sh.find("kill -KILL $SRV").expect("kills the server");
            assert!(
                sh.find("kill -INT") < Some(second_int) && second_int < kill,
                "{}: a second SIGINT must release held I/O before SIGKILL",
                s.name
            );
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
