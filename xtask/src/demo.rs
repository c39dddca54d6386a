//! `cargo xtask demo`: the README's first command. Sets up, boots the guest on the user's
//! terminal, starts `ublk-server run ramdisk` and a background fio workload, and opens
//! `ublk-trace watch dev 0` sized to the host terminal. `q` quits the TUI and powers the guest off.
use std::time::Duration;

use anyhow::Result;

use crate::guest::{
    GuestOpts, boot_opts, build_project, interactive_sh, make_initramfs, terminal_size,
};
use crate::kernel::KernelSpec;

/// The guest side of the demo: device, workload, then the TUI in the foreground. `inject`
/// (an `ublk-server --inject` spec) makes the server break on purpose, so the grid shows a hang.
pub fn demo_script(watch_args: &str, inject: Option<&str>) -> String {
    let inject = inject.map(|s| format!(" --inject {s}")).unwrap_or_default();
    let run = format!(
        r#"ublk-server run ramdisk --size 512M --queues 2 --depth 64{inject} > /tmp/srv.out 2>/tmp/srv.err &
SRV=$!
i=0; while ! grep -q ready /tmp/srv.out 2>/dev/null; do
  sleep 0.1; i=$((i+1))
  [ $i -gt 300 ] && {{ echo "ublk-server did not come up:"; cat /tmp/srv.err; exit 1; }}
done
# A mixed workload with a rate cap, so the emulated guest stays responsive.
fio --name=demo --filename=/dev/ublkb0 --rw=randrw --bs=4k --iodepth=16 --ioengine=io_uring \
    --direct=1 --time_based --runtime=3600 --rate_iops=2000 --size=512M >/dev/null 2>&1 &
WL=$!
ublk-trace watch {watch_args}
rc=$?
# Quiet from here on: the user's terminal gets back a clean screen, not teardown noise.
{{
{teardown}
}} > /tmp/teardown.log 2>&1
[ -s /tmp/teardown.log ] && cat /tmp/teardown.log
exit $rc"#,
        teardown = crate::repro::TEARDOWN,
    );
    // Run the whole thing with the console as controlling tty (crossterm needs one).
    let script_path = "/demo.sh";
    format!(
        "cat > {script_path} <<'DEMO_EOF'\n{run}\nDEMO_EOF\n{}",
        interactive_sh(&format!("sh {script_path}"))
    )
}

pub fn run(kernel: &str, watch_args: &str, inject: Option<&str>) -> Result<i32> {
    crate::setup::setup(&[])?;
    let spec = KernelSpec::parse(kernel)?;
    let kernel = crate::kernel::fetch(&spec)?;
    let bins = build_project(true)?;
    let mut g = GuestOpts::new(spec);
    g.release = true;
    g.timeout = Duration::from_secs(3 * 3600);
    let initrd = make_initramfs(&kernel, &g, &bins, &demo_script(watch_args, inject), &[])?;
    let (cols, rows) = terminal_size();
    eprintln!(
        "[demo] booting {} at {cols}x{rows}; press q in the TUI to leave",
        kernel.kver
    );
    let rc = crate::qemu::boot_interactive(&boot_opts(&g, &kernel, &initrd), cols, rows)?;
    let _ = std::fs::remove_file(&initrd);
    Ok(rc)
}
