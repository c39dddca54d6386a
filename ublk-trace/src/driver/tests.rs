//! The walkers over a synthetic kernel image: a made-up layout (as BTF would give it) and
//! memory holding an IDR, devices, queues, ios, blk-mq tags and requests, including the
//! stale pointers, removed devices and torn reads that live memory has.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::flags::{self, FlagRow};
use super::kcore::{MemError, Memory};
use super::layout::{BatchLayout, BitmapLayout, Field, Layout, QueuesAt};
use super::reader::{DriverError, walk};
use super::{DeviceState, Dropped, RqState, TagView, Target};

const ACTIVE: u32 = 0x01;
const OWNED: u32 = 0x02;
const NEED_GET_DATA: u32 = 0x08;
const DEPTH: u16 = 8;
const IO_SIZE: u32 = 32;
const IOS: u32 = 64;

fn layout(queues: QueuesAt) -> Layout {
    let f = Field::new;
    Layout {
        idr_head: 8,
        idr_base: Some(f(16, 4)),
        node_shift: f(0, 1),
        node_slots: 40,
        node_chunk: 64,
        ub_disk: 0,
        nr_hw_queues: f(16, 2),
        queue_depth: f(18, 2),
        dev_state: f(20, 2),
        dev_id: f(24, 4),
        ublksrv_pid: f(28, 4),
        dev_flags: f(32, 8),
        dev_nr_io_ready: None,
        set_tags: 64,
        queues,
        q_id: Some(f(0, 2)),
        q_depth: f(2, 2),
        ubq_daemon: Some(8),
        force_abort: Some(f(16, 1)),
        canceling: Some(f(17, 1)),
        fail_io: Some(f(18, 1)),
        nr_io_ready: Some(f(20, 2)),
        ios: IOS,
        batch: Some(BatchLayout {
            fifo_in: f(24, 4),
            fifo_out: f(28, 4),
            fcmd_head: 32,
            list_next: 0,
            active_fcmd: f(48, 8),
        }),
        io_size: IO_SIZE,
        io_flags: f(8, 4),
        io_res: f(12, 4),
        io_cmd: 16,
        io_task: Some(24),
        task_pid: f(0, 4),
        task_tgid: f(4, 4),
        task_comm: f(8, 16),
        disk_queue: 0,
        freeze_depth: Some(f(0, 4)),
        quiesce_depth: Some(f(4, 4)),
        tags_rqs: 8,
        tags_nr_tags: f(0, 4),
        bitmap: Some(BitmapLayout {
            shift: f(16, 4),
            map_nr: f(20, 4),
            map: 24,
            word_size: 16,
            word: 0,
            cleared: 8,
        }),
        rq_q: 0,
        rq_tag: f(8, 4),
        rq_state: f(12, 4),
        rq_cmd_flags: f(16, 4),
        rq_sector: f(24, 8),
        rq_data_len: f(32, 4),
        rq_start_time_ns: Some(f(40, 8)),
        mq_rq_in_flight: 1,
        mq_rq_complete: 2,
        req_ops: [(0, "READ".to_string()), (1, "WRITE".to_string())].into(),
        not_readable: vec!["ublk_queue.example".into()],
    }
}

fn row() -> &'static FlagRow {
    flags::row_for("6.12.0").0
}

/// A write applied once `after` reads have touched `trigger` (a tag changing between the
/// two passes).
struct Mutation {
    trigger: u64,
    after: usize,
    seen: usize,
    at: u64,
    bytes: Vec<u8>,
}

/// Kernel memory as a set of regions, with a log of every read.
#[derive(Default)]
struct FakeMem {
    regions: RefCell<BTreeMap<u64, Vec<u8>>>,
    mutations: RefCell<Vec<Mutation>>,
    reads: RefCell<Vec<(u64, usize)>>,
    next: RefCell<u64>,
}

impl FakeMem {
    fn alloc(&self, len: usize) -> u64 {
        let mut n = self.next.borrow_mut();
        if *n == 0 {
            *n = 0xffff_8880_0010_0000;
        }
        let a = *n;
        *n += (len as u64).div_ceil(64) * 64 + 64;
        self.regions.borrow_mut().insert(a, vec![0; len]);
        a
    }

    fn write(&self, addr: u64, bytes: &[u8]) {
        let mut r = self.regions.borrow_mut();
        let (start, buf) = r
            .range_mut(..=addr)
            .next_back()
            .expect("write inside a region");
        let o = (addr - start) as usize;
        buf[o..o + bytes.len()].copy_from_slice(bytes);
    }

    fn put(&self, addr: u64, f: Field, v: u64) {
        self.write(addr + u64::from(f.off), &v.to_le_bytes()[..f.size as usize]);
    }

    fn put_ptr(&self, addr: u64, off: u32, v: u64) {
        self.put(addr, Field::new(off, 8), v);
    }

    fn reads_within(&self, start: u64, len: u64) -> usize {
        self.reads
            .borrow()
            .iter()
            .filter(|(a, _)| (start..start + len).contains(a))
            .count()
    }
}

impl Memory for FakeMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.reads.borrow_mut().push((addr, buf.len()));
        {
            let r = self.regions.borrow();
            let (start, data) = r.range(..=addr).next_back().ok_or(MemError::Unmapped {
                addr,
                len: buf.len(),
            })?;
            let o = (addr - start) as usize;
            let src = data.get(o..o + buf.len()).ok_or(MemError::Unmapped {
                addr,
                len: buf.len(),
            })?;
            buf.copy_from_slice(src);
        }
        let mut due = Vec::new();
        for m in self.mutations.borrow_mut().iter_mut() {
            if (addr..addr + buf.len() as u64).contains(&m.trigger) {
                m.seen += 1;
                if m.seen == m.after {
                    due.push((m.at, m.bytes.clone()));
                }
            }
        }
        for (at, b) in due {
            self.write(at, &b);
        }
        Ok(())
    }
}

/// Addresses of what the image builder made, for assertions and mutations.
struct Image {
    mem: FakeMem,
    l: Layout,
    idr: u64,
    /// `ublk_device` of ids 0, 1, 2.
    devs: Vec<u64>,
    queues: Vec<Vec<u64>>,
    rq_queue: u64,
    task: u64,
    requests: (u64, u64),
}

/// One request at `rq`.
#[allow(clippy::too_many_arguments)]
fn put_request(
    m: &FakeMem,
    l: &Layout,
    rq: u64,
    q: u64,
    tag: i64,
    state: u64,
    op: u64,
    sector: u64,
) {
    m.put_ptr(rq, l.rq_q, q);
    m.put(rq, l.rq_tag, tag as u64);
    m.put(rq, l.rq_state, state);
    m.put(rq, l.rq_cmd_flags, op);
    m.put(rq, l.rq_sector, sector);
    m.put(rq, l.rq_data_len, 4096);
    m.put(rq, l.rq_start_time_ns.expect("field"), 1_000 + sector);
}

/// One device `dev_id` with `nq` queues of DEPTH tags, all WAITING; returns (ublk_device,
/// queue addresses, per-queue (tags, rqs array, bitmap words)).
fn device(
    m: &FakeMem,
    l: &Layout,
    dev_id: u64,
    nq: usize,
    rq_queue: u64,
    task: u64,
) -> (u64, Vec<u64>, Vec<(u64, u64, u64)>) {
    let ub = m.alloc(256);
    let disk = m.alloc(64);
    m.put_ptr(disk, l.disk_queue, rq_queue);
    m.put_ptr(ub, l.ub_disk, disk);
    m.put(ub, l.nr_hw_queues, nq as u64);
    m.put(ub, l.queue_depth, u64::from(DEPTH));
    m.put(ub, l.dev_state, 1);
    m.put(ub, l.dev_id, dev_id);
    m.put(ub, l.ublksrv_pid, 100);
    m.put(ub, l.dev_flags, 0x42);
    let tag_ptrs = m.alloc(8 * nq);
    m.put_ptr(ub, l.set_tags, tag_ptrs);
    let qlen = (IOS + u32::from(DEPTH) * IO_SIZE) as usize;
    let mut qs = Vec::new();
    let mut blk = Vec::new();
    let blob = match l.queues {
        QueuesAt::Blob { base, stride } => {
            let b = m.alloc(qlen * nq);
            m.put_ptr(ub, base, b);
            m.put(ub, stride, qlen as u64);
            Some(b)
        }
        QueuesAt::PtrArray { .. } => None,
    };
    for q in 0..nq {
        let ubq = match (blob, l.queues) {
            (Some(b), _) => b + (q * qlen) as u64,
            (None, QueuesAt::PtrArray { off }) => {
                let a = m.alloc(qlen);
                m.put_ptr(ub, off + 8 * q as u32, a);
                a
            }
            _ => unreachable!("blob handled above"),
        };
        m.put(ubq, l.q_id.expect("field"), q as u64);
        m.put(ubq, l.q_depth, u64::from(DEPTH));
        m.put_ptr(ubq, 8, task);
        m.put(ubq, l.nr_io_ready.expect("field"), u64::from(DEPTH));
        // An empty list of fetch commands points at itself.
        let b = l.batch.expect("batch layout");
        m.put_ptr(ubq, b.fcmd_head, ubq + u64::from(b.fcmd_head));
        for t in 0..u64::from(DEPTH) {
            let io = ubq + u64::from(IOS + t as u32 * IO_SIZE);
            m.put(io, l.io_flags, u64::from(ACTIVE));
            m.put_ptr(io, l.io_cmd, 0xffff_8880_7000_0000 + t * 64);
        }
        let tags = m.alloc(64);
        let rqs = m.alloc(8 * usize::from(DEPTH));
        let words = m.alloc(16 * 2);
        m.put(tags, l.tags_nr_tags, u64::from(DEPTH));
        m.put_ptr(tags, l.tags_rqs, rqs);
        let bm = l.bitmap.expect("bitmap");
        m.put(tags, bm.shift, 2); // 4 tags per word, as blk-mq picks for small depths
        m.put(tags, bm.map_nr, 2);
        m.put_ptr(tags, bm.map, words);
        m.put_ptr(tag_ptrs, 8 * q as u32, tags);
        qs.push(ubq);
        blk.push((tags, rqs, words));
    }
    (ub, qs, blk)
}

fn io_addr(ubq: u64, tag: u64) -> u64 {
    ubq + u64::from(IOS) + tag * u64::from(IO_SIZE)
}

/// Device 0 (2 queues) with a tag in each state on q0; devices 1 (freed) and 2 (bad queue
/// pointer) in the same IDR.
fn image(queues: QueuesAt) -> Image {
    let m = FakeMem::default();
    let l = layout(queues);
    let task = m.alloc(32);
    m.put(task, l.task_pid, 101);
    m.put(task, l.task_tgid, 100);
    m.write(task + 8, b"ublk-q0\0");
    let rq_queue = m.alloc(16);
    m.put(rq_queue, l.freeze_depth.expect("field"), 0);
    m.put(rq_queue, l.quiesce_depth.expect("field"), 1);
    let (ub0, qs, blk) = device(&m, &l, 0, 2, rq_queue, task);
    let (_, rqs0, words0) = blk[0];
    let reqs = m.alloc(64 * usize::from(DEPTH));
    let rq = |t: u64| reqs + 64 * t;
    let set_rq = |t: u64| m.put_ptr(rqs0, 8 * t as u32, rq(t));
    // tag 1: delivered to the server, a READ in flight.
    m.put(io_addr(qs[0], 1), l.io_flags, u64::from(OWNED));
    put_request(&m, &l, rq(1), rq_queue, 1, 1, 0, 40);
    set_rq(1);
    // tag 2: a WRITE started (busy in blk-mq), io still ACTIVE: not delivered yet.
    put_request(&m, &l, rq(2), rq_queue, 2, 1, 1, 80);
    set_rq(2);
    // tag 3: never fetched.
    m.put(io_addr(qs[0], 3), l.io_flags, 0);
    m.put_ptr(io_addr(qs[0], 3), l.io_cmd, 0);
    // tag 4: idle, with a stale rqs pointer to a freed request (tag -1, IDLE).
    put_request(&m, &l, rq(4), rq_queue, -1, 0, 0, 0);
    set_rq(4);
    // tag 5: owned by the server, rqs[5] stale (now another tag's request).
    m.put(io_addr(qs[0], 5), l.io_flags, u64::from(OWNED));
    m.put(io_addr(qs[0], 5), l.io_res, (-5i64) as u64);
    put_request(&m, &l, rq(5), rq_queue, 3, 1, 0, 8);
    set_rq(5);
    // tag 6: a WRITE waiting for the buffer address.
    m.put(
        io_addr(qs[0], 6),
        l.io_flags,
        u64::from(OWNED | NEED_GET_DATA),
    );
    // tag 7: ACTIVE plus a bit this table does not know.
    m.put(io_addr(qs[0], 7), l.io_flags, u64::from(ACTIVE | 0x40));
    // Busy bitmap of q0: tags 1, 2 (word 0 bits 1, 2); tag 5's bit is set but cleared.
    m.put(words0, Field::new(0, 8), 0b0110);
    m.put(words0 + 16, Field::new(0, 8), 0b0010);
    m.put(words0 + 16, Field::new(8, 8), 0b0010);
    // q1's ios name their own task (io->task, 6.16+).
    for t in 0..u64::from(DEPTH) {
        m.put_ptr(io_addr(qs[1], t), l.io_task.expect("field"), task);
    }
    // Device 1: freed, its memory now says dev_id 9.
    let (ub1, _, _) = device(&m, &l, 1, 1, rq_queue, task);
    m.put(ub1, l.dev_id, 9);
    // Device 2: a queue pointer that is not a kernel address (or, as a blob, a bad base).
    let (ub2, _, _) = device(&m, &l, 2, 1, rq_queue, task);
    match l.queues {
        QueuesAt::PtrArray { off } => m.put_ptr(ub2, off, 0x7fff_1234_0000),
        QueuesAt::Blob { base, .. } => m.put_ptr(ub2, base, 0x7fff_1234_0000),
    }
    // The IDR: one leaf node holding ids 0..=2, plus a sibling and a value entry.
    let node = m.alloc(40 + 8 * 64);
    for (i, ub) in [ub0, ub1, ub2].into_iter().enumerate() {
        m.put_ptr(node, 40 + 8 * i as u32, ub);
    }
    m.put_ptr(node, 40 + 8 * 3, (3 << 2) | 2);
    m.put_ptr(node, 40 + 8 * 4, (7 << 1) | 1);
    let idr = m.alloc(24);
    m.put_ptr(idr, l.idr_head, node | 2);
    Image {
        mem: m,
        l,
        idr,
        devs: vec![ub0, ub1, ub2],
        queues: vec![qs],
        rq_queue,
        task,
        requests: (reqs, 64 * u64::from(DEPTH)),
    }
}

fn read(img: &Image, target: Target) -> (Vec<DeviceState>, Vec<Dropped>) {
    walk(&img.mem, &img.l, row(), img.idr, target, far()).expect("walk")
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[test]
fn every_tag_state_of_a_fake_device_is_decoded() {
    let img = image(QueuesAt::PtrArray { off: 128 });
    let (devs, _) = read(&img, Target::All);
    let d = devs.iter().find(|d| d.dev_id == 0).expect("dev 0 read");
    assert_eq!(
        (d.nr_hw_queues, d.queue_depth, d.state_name.as_str()),
        (2, DEPTH, "LIVE")
    );
    assert_eq!((d.flags, d.ublksrv_pid, d.has_disk), (0x42, 100, true));
    assert_eq!((d.mq_freeze_depth, d.quiesce_depth), (Some(0), Some(1)));
    let q0 = &d.queues[0];
    let owner = q0.owner.as_ref().expect("ubq_daemon read");
    assert_eq!(
        (owner.tid, owner.pid, owner.comm.as_str()),
        (101, 100, "ublk-q0")
    );
    assert_eq!(
        (q0.nr_io_ready, q0.canceling),
        (Some(u32::from(DEPTH)), Some(false))
    );
    assert!(q0.changing.is_empty());
    let views: Vec<TagView> = q0.tags.iter().map(|t| t.view).collect();
    use TagView::*;
    assert_eq!(
        views,
        [
            Waiting,
            InServer,
            Queued,
            NotFetched,
            Waiting,
            InServer,
            NeedGetData,
            Waiting
        ]
    );
    let t = |n: usize| &q0.tags[n];
    let r1 = t(1).request.as_ref().expect("tag 1 request in flight");
    assert_eq!(
        (r1.op.as_str(), r1.sector, r1.bytes, r1.state),
        ("READ", 40, 4096, RqState::InFlight)
    );
    assert_eq!(r1.start_time_ns, Some(1_040));
    assert!(!t(1).cmd_parked && t(0).cmd_parked && !t(3).cmd_parked);
    assert_eq!(t(2).request.as_ref().map(|r| r.op.as_str()), Some("WRITE"));
    // Stale rqs pointers (a freed request, another tag's request) are no request.
    assert!(t(4).request.is_none() && t(5).request.is_none());
    assert_eq!(t(5).res, -5);
    assert_eq!(t(7).flags.unknown, 0x40);
    assert_eq!(t(7).flags.names, ["ACTIVE"]);
    // Each io names its task where the kernel has io->task (unset here).
    assert!(t(0).task.is_none());
    assert_eq!(q0.busy().count(), 5);
    assert!(d.queues[1].tags.iter().all(|t| t.view == Waiting));
    assert!(d.queues[1].tags.iter().all(|t| {
        t.task
            .as_ref()
            .is_some_and(|k| k.tid == 101 && k.comm == "ublk-q0")
    }));
    // One read of the task for all of q1's tags (and one for q0's daemon), per pass pair.
    assert_eq!(img.mem.reads_within(img.task, 1), 1);
}

/// A BATCH_IO device: q0 has two requests in its event FIFO and no fetch armed (the hang
/// of a server that stopped re-arming), q1 two armed fetch commands; a FIFO that holds more
/// than the depth is garbage.
#[test]
fn batch_queues_report_armed_fetches_and_waiting_tags() {
    let img = image(QueuesAt::PtrArray { off: 128 });
    let (m, l) = (&img.mem, &img.l);
    let b = l.batch.expect("batch layout");
    // Without BATCH_IO in the device's flags nothing of it is read.
    let (devs, _) = read(&img, Target::Dev(0));
    assert!(devs[0].queues.iter().all(|q| q.batch.is_none()));
    m.put(img.devs[0], l.dev_flags, 0x42 | ublk_abi::UBLK_F_BATCH_IO);
    let (q0, q1) = (img.queues[0][0], img.queues[0][1]);
    m.put(q0, b.fifo_in, 7);
    m.put(q0, b.fifo_out, 5);
    let (f1, f2) = (m.alloc(32), m.alloc(32));
    m.put_ptr(q1, b.fcmd_head, f1);
    m.put_ptr(f1, b.list_next, f2);
    m.put_ptr(f2, b.list_next, q1 + u64::from(b.fcmd_head));
    let (devs, _) = read(&img, Target::Dev(0));
    // No command is parked per tag, and the views stay what the flags say.
    let read_q0 = &devs[0].queues[0];
    assert!(read_q0.tags.iter().all(|t| !t.cmd_parked), "{read_q0:?}");
    let v = |t: usize| read_q0.tags[t].view;
    assert_eq!(
        (v(0), v(1), v(2)),
        (TagView::Waiting, TagView::InServer, TagView::Queued)
    );
    let batch: Vec<_> = devs[0].queues.iter().map(|q| q.batch).collect();
    use super::BatchQueue as B;
    assert_eq!(
        batch,
        [
            Some(B {
                fetch_armed: 0,
                fetch_active: false,
                fifo_waiting: 2
            }),
            Some(B {
                fetch_armed: 2,
                fetch_active: false,
                fifo_waiting: 0
            })
        ]
    );
    // A dispatching fetch is active.
    m.put_ptr(q1, b.active_fcmd.off, f1);
    let (devs, _) = read(&img, Target::Dev(0));
    assert_eq!(devs[0].queues[1].batch.map(|b| b.fetch_active), Some(true));
    // The free-running counters wrap.
    m.put(q0, b.fifo_in, 1);
    m.put(q0, b.fifo_out, u64::from(u32::MAX));
    let (devs, _) = read(&img, Target::Dev(0));
    assert_eq!(devs[0].queues[0].batch.map(|b| b.fifo_waiting), Some(2));
    m.put(q0, b.fifo_in, 100);
    m.put(q0, b.fifo_out, 0);
    let (devs, dropped) = read(&img, Target::Dev(0));
    assert!(devs.is_empty(), "{devs:?}");
    assert!(dropped[0].reason.contains("evts_fifo"), "{dropped:?}");
}

#[test]
fn removed_device_and_bad_pointer_are_dropped_not_fatal() {
    for layout in [
        QueuesAt::PtrArray { off: 128 },
        QueuesAt::Blob {
            base: 48,
            stride: Field::new(56, 4),
        },
    ] {
        let img = image(layout);
        let (devs, dropped) = read(&img, Target::All);
        assert_eq!(
            devs.iter().map(|d| d.dev_id).collect::<Vec<_>>(),
            [0],
            "{layout:?}"
        );
        assert_eq!(dropped.iter().map(|d| d.dev_id).collect::<Vec<_>>(), [1, 2]);
        assert!(dropped[0].reason.contains("freed or reused"), "{dropped:?}");
        assert!(
            dropped[1].reason.contains("not a kernel address"),
            "{dropped:?}"
        );
    }
}

#[test]
fn counts_beyond_the_driver_limits_drop_the_device() {
    let img = image(QueuesAt::PtrArray { off: 128 });
    let (devs, _) = read(&img, Target::Dev(0));
    assert_eq!(devs.len(), 1);
    // dev 0's memory is reused: nr_hw_queues now reads 5000.
    let ub0 = {
        let mut h = [0u8; 8];
        img.mem
            .read(img.idr + u64::from(img.l.idr_head), &mut h)
            .expect("head");
        let node = u64::from_le_bytes(h) - 2;
        img.mem.read(node + 40, &mut h).expect("slot 0");
        u64::from_le_bytes(h)
    };
    img.mem.put(ub0, img.l.nr_hw_queues, 5000);
    let (devs, dropped) = read(&img, Target::Dev(0));
    assert!(devs.is_empty());
    assert!(
        dropped[0].reason.contains("nr_hw_queues 5000"),
        "{dropped:?}"
    );
}

#[test]
fn a_torn_read_marks_the_tag_changing() {
    let img = image(QueuesAt::PtrArray { off: 128 });
    let q1 = img.queues[0][1];
    // After the first read of q1, tag 3 gets delivered (ACTIVE -> OWNED_BY_SRV).
    img.mem.mutations.borrow_mut().push(Mutation {
        trigger: q1,
        after: 1,
        seen: 0,
        at: io_addr(q1, 3) + u64::from(img.l.io_flags.off),
        bytes: OWNED.to_le_bytes().to_vec(),
    });
    let (devs, _) = read(&img, Target::Dev(0));
    let q = &devs[0].queues[1];
    assert_eq!(q.changing, [3]);
    assert_eq!(q.tags.len(), usize::from(DEPTH) - 1);
    assert!(q.tags.iter().all(|t| t.tag != 3));
    // The next read agrees with itself again.
    let (devs, _) = read(&img, Target::Dev(0));
    let q = &devs[0].queues[1];
    assert!(q.changing.is_empty());
    assert_eq!(q.tags[3].view, TagView::InServer);
}

#[test]
fn an_idle_queue_reads_no_request_head() {
    let img = image(QueuesAt::PtrArray { off: 128 });
    let (start, len) = img.requests;
    let _ = read(&img, Target::Dev(0));
    // Only q0's non-idle tags (1, 2, 5, 6, 7 with a pointer: 1, 2, 5), twice; q1 none.
    assert_eq!(img.mem.reads_within(start, len), 6);
    // Queue blob, tags, rqs and bitmap: one read each per pass (no per-tag io read).
    assert_eq!(img.mem.reads_within(img.queues[0][1], 1), 2);
    let _ = img.rq_queue;
    let _ = img.task;
}

#[test]
fn unknown_device_and_passed_deadline_are_errors() {
    let img = image(QueuesAt::PtrArray { off: 128 });
    let e = walk(&img.mem, &img.l, row(), img.idr, Target::Dev(7), far()).expect_err("no dev 7");
    assert_eq!(e, DriverError::NoSuchDevice(7));
    let past = Instant::now() - Duration::from_millis(1);
    let e = walk(&img.mem, &img.l, row(), img.idr, Target::All, past).expect_err("deadline");
    assert!(matches!(e, DriverError::TimedOut { .. }), "{e:?}");
    let e = walk(
        &img.mem,
        &img.l,
        row(),
        0xffff_9999_0000_0000,
        Target::All,
        far(),
    )
    .expect_err("unreadable idr");
    assert!(matches!(e, DriverError::Idr(_)), "{e:?}");
}

#[test]
fn idr_walk_follows_two_levels() {
    let m = FakeMem::default();
    let l = layout(QueuesAt::PtrArray { off: 128 });
    let leaf = m.alloc(40 + 8 * 64);
    m.put(leaf, l.node_shift, 0);
    m.put_ptr(leaf, 40 + 8, 0xffff_8880_0000_1000);
    let root = m.alloc(40 + 8 * 64);
    m.put(root, l.node_shift, 6);
    m.put_ptr(root, 40 + 8, leaf | 2);
    m.put_ptr(root, 40, 0xffff_8880_0000_2000);
    let idr = m.alloc(24);
    m.put_ptr(idr, l.idr_head, root | 2);
    m.put(idr, l.idr_base.expect("field"), 0);
    let e = super::xarray::idr_for_each(&m, &l, idr).expect("walk");
    // Slot 0 of the root is index 0; slot 1's child covers 64..128, its slot 1 is 65.
    assert_eq!(e, [(0, 0xffff_8880_0000_2000), (65, 0xffff_8880_0000_1000)]);
    // A node pointer in a leaf node is garbage, not a deeper walk.
    m.put_ptr(leaf, 40 + 16, root | 2);
    assert!(super::xarray::idr_for_each(&m, &l, idr).is_err());
    // A single entry in the head is index 0.
    m.put_ptr(idr, l.idr_head, 0xffff_8880_0000_3000);
    let e = super::xarray::idr_for_each(&m, &l, idr).expect("walk");
    assert_eq!(e, [(0, 0xffff_8880_0000_3000)]);
}

#[test]
fn snapshot_round_trips_through_json() {
    let img = image(QueuesAt::PtrArray { off: 128 });
    let (devices, dropped) = read(&img, Target::All);
    let s = super::DriverSnapshot {
        schema: super::SCHEMA_VERSION,
        kernel: "6.12.0".into(),
        taken_ns: 1,
        took_us: 2,
        flags_table: flags::describe(row(), true),
        not_readable: img.l.not_readable.clone(),
        devices,
        dropped,
    };
    let j = serde_json::to_string(&s).expect("serializes");
    assert!(j.contains("\"view\":\"IN_SERVER\""), "{j}");
    let back: super::DriverSnapshot = serde_json::from_str(&j).expect("parses");
    assert_eq!(back, s);
}

#[test]
fn a_device_is_calm_until_a_request_is_old_or_its_start_unknown() {
    use crate::model::testutil::{driver_rq, driver_snap, driver_tag};
    const AGE: u64 = 250_000_000;
    let now = 10_000_000_000;
    let snap = |rq: Option<super::RequestState>| {
        driver_snap(
            now,
            vec![
                driver_tag(0, TagView::Waiting, None),
                driver_tag(1, TagView::InServer, rq),
            ],
        )
    };
    assert_eq!(snap(None).calm_devices(now, AGE), vec![0], "idle");
    assert_eq!(
        snap(Some(driver_rq(now - AGE + 1))).calm_devices(now, AGE),
        vec![0],
        "a young request"
    );
    assert!(
        snap(Some(driver_rq(now - AGE)))
            .calm_devices(now, AGE)
            .is_empty()
    );
    let mut unknown = driver_rq(now);
    unknown.start_time_ns = None;
    assert!(
        snap(Some(unknown.clone()))
            .calm_devices(now, AGE)
            .is_empty()
    );
    unknown.start_time_ns = Some(0);
    assert!(
        snap(Some(unknown)).calm_devices(now, AGE).is_empty(),
        "not accounted"
    );
    let mut done = driver_rq(1);
    done.state = RqState::Complete;
    assert_eq!(
        snap(Some(done)).calm_devices(now, AGE),
        vec![0],
        "completed"
    );
    let mut quiesced = snap(None);
    quiesced.devices[0].state = ublk_abi::UBLK_S_DEV_QUIESCED;
    assert!(quiesced.calm_devices(now, AGE).is_empty());
    let mut frozen = snap(None);
    frozen.devices[0].mq_freeze_depth = Some(1);
    assert!(frozen.calm_devices(now, AGE).is_empty());
    let mut canceling = snap(None);
    canceling.devices[0].queues[0].canceling = Some(true);
    assert!(canceling.calm_devices(now, AGE).is_empty());
}
