//! `struct ublk_device` (drivers/block/ublk_drv.c): dev_info, the disk and its request_queue,
//! where the queues are, and blk-mq's per-queue tags. A device being removed while it is read
//! shows up as a failed read or as fields that stop adding up; either ends its walk with a
//! reason (the device is dropped), never a panic.
use std::cell::RefCell;
use std::time::Instant;

use super::flags::FlagRow;
use super::kcore::{Memory, check_ptr};
use super::layout::{Layout, QueuesAt};
use super::{DeviceState, MAX_COUNT, TaskRef, WalkError, queue};

/// What every walker of one read shares.
pub(super) struct Ctx<'a> {
    pub mem: &'a dyn Memory,
    pub l: &'a Layout,
    pub row: &'a FlagRow,
    pub deadline: Instant,
    /// Tasks read during this read, by address (every tag of a queue shares one or a few
    /// tasks: a short list, searched from the last hit). Never kept across reads: a freed
    /// task_struct can be reused for another task.
    pub tasks: RefCell<Vec<(u64, Option<TaskRef>)>>,
}

impl Ctx<'_> {
    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, WalkError> {
        if Instant::now() > self.deadline {
            return Err(WalkError::Deadline);
        }
        let mut buf = vec![0u8; len];
        self.mem.read(addr, &mut buf)?;
        Ok(buf)
    }

    pub fn read_u64(&self, addr: u64) -> Result<u64, WalkError> {
        let b = self.read(addr, 8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// `n` pointers at `addr`, in one read.
    pub fn read_ptrs(&self, addr: u64, n: usize) -> Result<Vec<u64>, WalkError> {
        let b = self.read(addr, 8 * n)?;
        Ok(b.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    /// `p` as a pointer to `what`: NULL is named (a structure being set up or torn down),
    /// anything else must look like a kernel pointer.
    pub fn ptr(&self, what: &str, p: u64) -> Result<u64, WalkError> {
        if p == 0 {
            return Err(WalkError::Garbage(format!(
                "{what} is NULL (being set up or torn down)"
            )));
        }
        Ok(check_ptr(p, 8)?)
    }

    /// The task at `addr` (pid, tgid, comm), or None when it cannot be read.
    pub fn task(&self, addr: u64) -> Option<TaskRef> {
        if addr == 0 {
            return None;
        }
        if let Some((_, t)) = self.tasks.borrow().iter().rev().find(|(a, _)| *a == addr) {
            return t.clone();
        }
        let t = self.read_task(addr).ok();
        self.tasks.borrow_mut().push((addr, t.clone()));
        t
    }

    fn read_task(&self, addr: u64) -> Result<TaskRef, WalkError> {
        let l = self.l;
        check_ptr(addr, 8)?;
        // Only the span holding pid, tgid and comm (task_struct is several KiB).
        let start = l.task_pid.off.min(l.task_tgid.off).min(l.task_comm.off);
        let end = l
            .task_pid
            .end()
            .max(l.task_tgid.end())
            .max(l.task_comm.end());
        let b = self.read(addr + u64::from(start), (end - start) as usize)?;
        let at = |f: super::layout::Field| super::layout::Field::new(f.off - start, f.size);
        let tid = at(l.task_pid).get_signed(&b).unwrap_or(-1) as i32;
        let pid = at(l.task_tgid).get_signed(&b).unwrap_or(-1) as i32;
        let c = at(l.task_comm);
        let raw = b.get(c.off as usize..c.end() as usize).unwrap_or_default();
        let comm = raw.split(|&x| x == 0).next().unwrap_or_default();
        if tid <= 0 || pid <= 0 {
            return Err(WalkError::Garbage(format!("task pid {tid} tgid {pid}")));
        }
        Ok(TaskRef {
            tid,
            pid,
            comm: String::from_utf8_lossy(comm).into_owned(),
        })
    }
}

/// The fields of `ublk_device` this reader uses.
struct DevHead {
    dev_id: u64,
    nr_hw_queues: u64,
    queue_depth: u64,
    state: u64,
    flags: u64,
    ublksrv_pid: i64,
    disk: u64,
    tags: u64,
    nr_io_ready: Option<u64>,
}

fn read_head(ctx: &Ctx, ub: u64) -> Result<(DevHead, Vec<u8>), WalkError> {
    let l = ctx.l;
    let b = ctx.read(ub, l.device_len())?;
    let get = |f: super::layout::Field| f.get(&b).unwrap_or(0);
    let h = DevHead {
        dev_id: get(l.dev_id),
        nr_hw_queues: get(l.nr_hw_queues),
        queue_depth: get(l.queue_depth),
        state: get(l.dev_state),
        flags: get(l.dev_flags),
        ublksrv_pid: l.ublksrv_pid.get_signed(&b).unwrap_or(-1),
        disk: get(super::layout::Field::new(l.ub_disk, 8)),
        tags: get(super::layout::Field::new(l.set_tags, 8)),
        nr_io_ready: l.dev_nr_io_ready.and_then(|f| f.get(&b)),
    };
    Ok((h, b))
}

/// Read device `dev_id` at `ub` (an entry of `ublk_index_idr`), both passes of every queue.
pub(super) fn read_device(ctx: &Ctx, dev_id: u64, ub: u64) -> Result<DeviceState, WalkError> {
    check_ptr(ub, 8)?;
    let (h, head) = read_head(ctx, ub)?;
    if h.dev_id != dev_id {
        return Err(WalkError::Garbage(format!(
            "dev_info.dev_id {} at IDR index {dev_id}: freed or reused",
            h.dev_id
        )));
    }
    for (what, n) in [
        ("nr_hw_queues", h.nr_hw_queues),
        ("queue_depth", h.queue_depth),
    ] {
        if n == 0 || n > MAX_COUNT {
            return Err(WalkError::Garbage(format!("{what} {n}")));
        }
    }
    let (nq, depth) = (h.nr_hw_queues as usize, h.queue_depth as u16);
    let rq_queue = disk_queue(ctx, h.disk);
    let (freeze, quiesce) = rq_queue.map_or((None, None), |q| depths(ctx, q));
    let queue_addrs = queue_addrs(ctx, ub, &head, nq, depth)?;
    // The tag set's per-queue blk_mq_tags (allocated at ADD_DEV).
    let tags = if h.tags == 0 {
        vec![0; nq]
    } else {
        ctx.read_ptrs(ctx.ptr("ub->tag_set.tags", h.tags)?, nq)?
    };
    let mut queues = Vec::with_capacity(nq);
    for (q, (&ubq, &t)) in queue_addrs.iter().zip(&tags).enumerate() {
        let at = queue::QueueAt {
            q: q as u16,
            ubq,
            tags: t,
            depth,
            rq_queue,
            batch_io: h.flags & ublk_abi::UBLK_F_BATCH_IO != 0,
        };
        queues.push(queue::read_queue(ctx, &at)?);
    }
    // Still the same device after reading through it: not freed meanwhile.
    let (again, _) = read_head(ctx, ub)?;
    if again.dev_id != dev_id || again.nr_hw_queues != h.nr_hw_queues {
        return Err(WalkError::Garbage(
            "the device changed while read (removed)".into(),
        ));
    }
    Ok(DeviceState {
        dev_id: dev_id as u32,
        state: again.state as u16,
        state_name: ublk_abi::dev_state_name(again.state as u16).to_string(),
        flags: h.flags,
        nr_hw_queues: nq as u16,
        queue_depth: depth,
        ublksrv_pid: again.ublksrv_pid as i32,
        has_disk: again.disk != 0,
        nr_io_ready: again.nr_io_ready.map(|n| n as u32),
        mq_freeze_depth: freeze,
        quiesce_depth: quiesce,
        queues,
    })
}

/// `ub->ub_disk->queue`, when there is a disk and it can be read.
fn disk_queue(ctx: &Ctx, disk: u64) -> Option<u64> {
    if disk == 0 {
        return None;
    }
    let q = ctx
        .read_u64(check_ptr(disk, 8).ok()? + u64::from(ctx.l.disk_queue))
        .ok()?;
    check_ptr(q, 8).ok()
}

fn depths(ctx: &Ctx, q: u64) -> (Option<i32>, Option<i32>) {
    let one = |f: Option<super::layout::Field>| {
        let f = f?;
        let b = ctx.read(q + u64::from(f.off), f.size as usize).ok()?;
        super::layout::Field::new(0, f.size)
            .get_signed(&b)
            .map(|v| v as i32)
    };
    (one(ctx.l.freeze_depth), one(ctx.l.quiesce_depth))
}

/// Address of each `ublk_queue`.
fn queue_addrs(
    ctx: &Ctx,
    ub: u64,
    head: &[u8],
    nq: usize,
    depth: u16,
) -> Result<Vec<u64>, WalkError> {
    let l = ctx.l;
    let set_up = |p: u64| {
        if p == 0 {
            Err(WalkError::Garbage(
                "its queues are not set up (the device is being added or removed)".into(),
            ))
        } else {
            Ok(check_ptr(p, 8)?)
        }
    };
    match l.queues {
        QueuesAt::PtrArray { off } => {
            let ptrs = ctx.read_ptrs(ub + u64::from(off), nq)?;
            ptrs.into_iter().map(set_up).collect()
        }
        QueuesAt::Blob { base, stride } => {
            let at = super::layout::Field::new(base, 8).get(head).unwrap_or(0);
            let stride = stride.get(head).unwrap_or(0);
            let need = u64::from(l.ios) + u64::from(depth) * u64::from(l.io_size);
            if stride < need {
                return Err(WalkError::Garbage(format!(
                    "queue_size {stride} < {need} for depth {depth}"
                )));
            }
            let at = set_up(at)?;
            Ok((0..nq as u64).map(|q| at + q * stride).collect())
        }
    }
}
