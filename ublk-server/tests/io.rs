//! Data-path guest tests: fio write+verify on every target and geometry, and a filesystem
//! that survives a remount (and, for loop, a server restart).

mod common;

use common::{Server, fio_verify, have, loop_file, sh};

fn matrix(target: &[&str]) {
    for queues in ["1", "2"] {
        for depth in [1u16, 128] {
            let d = depth.to_string();
            let mut args = target.to_vec();
            args.extend(["--queues", queues, "--depth", &d]);
            let s = Server::start(&args);
            fio_verify(&s.bdev(), depth);
            let st = s.stop();
            assert!(st.success(), "server exit {st:?} for {args:?}");
        }
    }
}

#[test]
#[ignore = "needs ublk guest"]
fn fio_verify_ramdisk() {
    matrix(&["ramdisk", "--size", "16M"]);
}

#[test]
#[ignore = "needs ublk guest"]
fn fio_verify_loop() {
    let f = loop_file("ublk-test-loop.img", 16 << 20);
    matrix(&["loop", "--file", &f]);
    let _ = std::fs::remove_file(f);
}

#[test]
#[ignore = "needs ublk guest"]
fn fio_verify_need_get_data() {
    let s = Server::start(&["ramdisk", "--size", "16M", "--need-get-data"]);
    fio_verify(&s.bdev(), 128);
    assert!(s.stop().success());
}

/// null has no data to verify: the I/O must complete, in both directions, without errors.
#[test]
#[ignore = "needs ublk guest"]
fn fio_null_completes() {
    for depth in ["1", "128"] {
        let s = Server::start(&["null", "--size", "1G", "--queues", "2", "--depth", depth]);
        let (st, out) = sh(&format!(
            "fio --name=null --filename={} --direct=1 --ioengine=io_uring --iodepth=16 \
             --rw=randrw --bs=4k --size=64M --io_size=16M",
            s.bdev()
        ));
        assert!(st.success(), "{out}");
        assert!(out.contains("err= 0"), "fio reported errors:\n{out}");
        assert!(s.stop().success());
    }
}

fn mkfs_cycle(bdev: &str, mnt: &str, src: &str) {
    let (st, out) = sh(&format!(
        "mkfs.ext4 -q -F {bdev} && mkdir -p {mnt} && mount {bdev} {mnt} && \
         dd if=/dev/urandom of={src} bs=1M count=4 2>/dev/null && cp {src} {mnt}/f && sync && \
         umount {mnt} && mount {bdev} {mnt} && cmp {src} {mnt}/f && umount {mnt}"
    ));
    assert!(
        st.success(),
        "mkfs/mount/remount/compare failed on {bdev}:\n{out}"
    );
}

#[test]
#[ignore = "needs ublk guest"]
fn ext4_on_ramdisk_survives_remount() {
    assert!(have("mkfs.ext4"), "mkfs.ext4 missing from the guest");
    let s = Server::start(&["ramdisk", "--size", "64M", "--queues", "2"]);
    mkfs_cycle(&s.bdev(), "/tmp/ublk-mnt-rd", "/tmp/ublk-src-rd");
    assert!(s.stop().success());
}

#[test]
#[ignore = "needs ublk guest"]
fn ext4_on_loop_survives_server_restart() {
    assert!(have("mkfs.ext4"), "mkfs.ext4 missing from the guest");
    let f = loop_file("ublk-test-ext4.img", 64 << 20);
    let s = Server::start(&["loop", "--file", &f]);
    mkfs_cycle(&s.bdev(), "/tmp/ublk-mnt-lo", "/tmp/ublk-src-lo");
    assert!(s.stop().success());
    // A new server on the same file: the data is in the file, not in the server.
    let s = Server::start(&["loop", "--file", &f]);
    let (st, out) = sh(&format!(
        "mount {0} /tmp/ublk-mnt-lo && cmp /tmp/ublk-src-lo /tmp/ublk-mnt-lo/f && umount /tmp/ublk-mnt-lo",
        s.bdev()
    ));
    assert!(st.success(), "file lost across server restart:\n{out}");
    assert!(s.stop().success());
    let _ = std::fs::remove_file(f);
}

/// Four queues need four CPUs (the kernel caps queues at the CPU count): boot with `--smp 4`.
#[test]
#[ignore = "needs ublk guest"]
fn fio_verify_ramdisk_four_queues() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 4 {
        eprintln!(
            "SKIP: fio_verify_ramdisk_four_queues needs 4 CPUs, the guest has {cpus} (use --smp 4)"
        );
        return;
    }
    for depth in [1u16, 128] {
        let d = depth.to_string();
        let s = Server::start(&["ramdisk", "--size", "16M", "--queues", "4", "--depth", &d]);
        fio_verify(&s.bdev(), depth);
        assert!(s.stop().success());
    }
}
