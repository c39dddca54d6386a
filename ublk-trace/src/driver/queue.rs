//! `struct ublk_queue` with its `ublk_io` array, and blk-mq's view of the same tags
//! (include/linux/blk-mq.h: `blk_mq_tags.rqs[tag]`, the busy-tag sbitmap, `struct request`).
//!
//! Cost: per pass, one read of the queue (header + every `ublk_io`), one of `blk_mq_tags`,
//! one of `rqs[]`, one of the busy bitmap, and one request head per tag that is not idle
//! (idle = plain ACTIVE, not busy in blk-mq). An idle 4 x 1024 device reads no request.
//!
//! Live memory tears: each queue is read twice and a tag is kept only when both reads agree.
use super::device::Ctx;
use super::flags::{self, IoFlags};
use super::kcore::check_ptr;
use super::layout::{Field, Layout};
use super::{BatchQueue, QueueState, RequestState, RqState, TagState, WalkError, tag_view};

/// The queue-wide part of one pass.
#[derive(Debug, Clone, PartialEq)]
struct Header {
    owner: u64,
    canceling: Option<bool>,
    force_abort: Option<bool>,
    fail_io: Option<bool>,
    nr_io_ready: Option<u32>,
    batch: Option<BatchQueue>,
}

/// One tag as one pass read it, undecoded (cheap to compare).
#[derive(Debug, Clone, PartialEq)]
struct RawTag {
    flags: u32,
    res: i32,
    cmd: u64,
    task: u64,
    request: Option<RequestState>,
}

/// Where one queue is and what the device says of it.
pub(super) struct QueueAt {
    pub q: u16,
    /// The `ublk_queue`.
    pub ubq: u64,
    /// Its `blk_mq_tags` (0 before the tag set has them).
    pub tags: u64,
    pub depth: u16,
    /// The disk's request_queue (None without a disk).
    pub rq_queue: Option<u64>,
    /// The device uses UBLK_F_BATCH_IO: read the queue's fetch state.
    pub batch_io: bool,
}

/// Read queue `at.q` twice; tags whose reads disagree are `changing`.
pub(super) fn read_queue(ctx: &Ctx, at: &QueueAt) -> Result<QueueState, WalkError> {
    let (q, depth) = (at.q, at.depth);
    let (h, first) = pass(ctx, at)?;
    let (h2, second) = pass(ctx, at)?;
    // A torn pair errs towards "armed" and "nothing waits": a stuck FIFO needs both reads.
    let batch = h.batch.zip(h2.batch).map(|(a, b)| BatchQueue {
        fetch_armed: a.fetch_armed.max(b.fetch_armed),
        fetch_active: a.fetch_active || b.fetch_active,
        fifo_waiting: a.fifo_waiting.min(b.fifo_waiting),
    });
    let active = flags::bit(ctx.row, flags::ACTIVE).unwrap_or(1);
    // Most tags share a few flag values: decode each value once (a short list beats a hash).
    let mut decoded: Vec<(u32, IoFlags)> = Vec::new();
    let mut agreed = Vec::with_capacity(first.len());
    let mut changing = Vec::new();
    for (tag, (a, b)) in (0..depth).zip(first.into_iter().zip(second)) {
        if a != b {
            changing.push(tag);
            continue;
        }
        let fl = match decoded.iter().find(|(raw, _)| *raw == a.flags) {
            Some((_, f)) => f.clone(),
            None => {
                let f = flags::decode(ctx.row, a.flags);
                decoded.push((a.flags, f.clone()));
                f
            }
        };
        // A batch device parks no command per tag (its fetch is per queue), and from 6.15
        // `io->cmd` shares a union with `io->req`: an ACTIVE io without a request waits.
        let cmd_parked = a.flags & active != 0 && a.cmd != 0 && !at.batch_io;
        agreed.push(TagState {
            tag,
            view: tag_view(&fl, cmd_parked || at.batch_io, a.request.as_ref()),
            flags: fl,
            res: a.res,
            cmd_parked,
            task: if a.task == 0 { None } else { ctx.task(a.task) },
            request: a.request,
        });
    }
    Ok(QueueState {
        q_id: q,
        owner: ctx.task(h.owner),
        canceling: h.canceling,
        force_abort: h.force_abort,
        fail_io: h.fail_io,
        nr_io_ready: h.nr_io_ready,
        batch,
        tags: agreed,
        changing,
    })
}

fn flag(f: Option<Field>, b: &[u8]) -> Option<bool> {
    f.and_then(|f| f.get(b)).map(|v| v != 0)
}

fn pass(ctx: &Ctx, at: &QueueAt) -> Result<(Header, Vec<RawTag>), WalkError> {
    let (q, ubq, tags, depth, rq_queue) = (at.q, at.ubq, at.tags, at.depth, at.rq_queue);
    let l = ctx.l;
    let len = l.ios as usize + usize::from(depth) * l.io_size as usize;
    let b = ctx.read(ubq, len)?;
    if let Some(id) = l.q_id.and_then(|f| f.get(&b))
        && id != u64::from(q)
    {
        return Err(WalkError::Garbage(format!(
            "ublk_queue.q_id {id} at queue {q}"
        )));
    }
    let qd = l.q_depth.get(&b).unwrap_or(0);
    if qd != u64::from(depth) {
        return Err(WalkError::Garbage(format!(
            "q{q} q_depth {qd}, device says {depth}"
        )));
    }
    let header = Header {
        owner: l
            .ubq_daemon
            .and_then(|o| Field::new(o, 8).get(&b))
            .unwrap_or(0),
        canceling: flag(l.canceling, &b),
        force_abort: flag(l.force_abort, &b),
        fail_io: flag(l.fail_io, &b),
        nr_io_ready: l.nr_io_ready.and_then(|f| f.get(&b)).map(|v| v as u32),
        batch: if at.batch_io {
            batch_state(ctx, ubq, &b, depth)?
        } else {
            None
        },
    };
    let blk = BlkTags::read(ctx, tags, depth)?;
    let active = flags::bit(ctx.row, flags::ACTIVE).unwrap_or(1);
    let (cmd, task) = (Field::new(l.io_cmd, 8), l.io_task.map(|o| Field::new(o, 8)));
    let ios = b.get(l.ios as usize..).unwrap_or_default();
    let out = ios
        .chunks_exact(l.io_size as usize)
        .take(usize::from(depth))
        .zip(0..depth)
        .map(|(io, tag)| {
            let flags = l.io_flags.get(io).unwrap_or(0) as u32;
            // Idle (plain ACTIVE, not busy in blk-mq): no request head to read.
            let idle = flags == active && !blk.busy(tag);
            RawTag {
                flags,
                res: l.io_res.get_signed(io).unwrap_or(0) as i32,
                cmd: cmd.get(io).unwrap_or(0),
                task: task.and_then(|f| f.get(io)).unwrap_or(0),
                request: if idle {
                    None
                } else {
                    blk.request(ctx, tag, rq_queue)
                },
            }
        })
        .collect();
    Ok((header, out))
}

/// Fetch commands armed on a BATCH_IO queue and the tags waiting for one. The armed list is
/// walked up to the queue depth (a server arms a few; more is a torn or garbage list).
fn batch_state(ctx: &Ctx, ubq: u64, b: &[u8], depth: u16) -> Result<Option<BatchQueue>, WalkError> {
    let Some(bl) = ctx.l.batch else {
        return Ok(None);
    };
    let (Some(fifo_in), Some(fifo_out)) = (bl.fifo_in.get(b), bl.fifo_out.get(b)) else {
        return Ok(None);
    };
    // kfifo's in and out are free-running unsigned ints.
    let fifo_waiting = (fifo_in as u32).wrapping_sub(fifo_out as u32);
    if fifo_waiting > u32::from(depth) {
        return Err(WalkError::Garbage(format!(
            "evts_fifo holds {fifo_waiting} tags, queue depth {depth}"
        )));
    }
    let head = ubq + u64::from(bl.fcmd_head);
    let next = Field::new(bl.list_next, 8);
    let mut node = Field::new(bl.fcmd_head + bl.list_next, 8)
        .get(b)
        .unwrap_or(head);
    let mut fetch_armed = 0u32;
    while node != head {
        if fetch_armed >= u32::from(depth) {
            return Err(WalkError::Garbage(format!(
                "fcmd_head lists more than {depth} fetch commands"
            )));
        }
        fetch_armed += 1;
        let n = ctx.read(check_ptr(node, 8)?, next.end() as usize)?;
        node = next.get(&n).unwrap_or(head);
    }
    // The active command stays on the list while it dispatches (unlinked when it ends).
    let fetch_active = bl.active_fcmd.get(b).unwrap_or(0) != 0;
    if fetch_armed == 0 && fetch_active {
        fetch_armed = 1;
    }
    Ok(Some(BatchQueue {
        fetch_armed,
        fetch_active,
        fifo_waiting,
    }))
}

/// One queue's `blk_mq_tags`: the request pointer of each tag and which tags are busy.
struct BlkTags {
    rqs: Vec<u64>,
    /// Busy tags from the sbitmap; None when this kernel's layout lacks it (then every tag
    /// with a request pointer counts as possibly busy).
    busy: Option<Vec<bool>>,
}

impl BlkTags {
    fn read(ctx: &Ctx, tags: u64, depth: u16) -> Result<Self, WalkError> {
        let l = ctx.l;
        if tags == 0 {
            return Ok(Self {
                rqs: vec![0; usize::from(depth)],
                busy: Some(vec![false; usize::from(depth)]),
            });
        }
        let t = ctx.read(check_ptr(tags, 8)?, l.tags_len())?;
        let nr = l.tags_nr_tags.get(&t).unwrap_or(0);
        if nr < u64::from(depth) || nr > super::MAX_COUNT {
            return Err(WalkError::Garbage(format!("blk_mq_tags.nr_tags {nr}")));
        }
        let rqs = Field::new(l.tags_rqs, 8).get(&t).unwrap_or(0);
        let rqs = ctx.read_ptrs(ctx.ptr("blk_mq_tags.rqs", rqs)?, usize::from(depth))?;
        let busy = busy_bitmap(ctx, l, &t, depth)?;
        Ok(Self { rqs, busy })
    }

    fn busy(&self, tag: u16) -> bool {
        match &self.busy {
            Some(b) => b.get(usize::from(tag)).copied().unwrap_or(false),
            None => self.rqs.get(usize::from(tag)).is_some_and(|&p| p != 0),
        }
    }

    /// The request of `tag`, when `rqs[tag]` is this tag's live request: `rq->tag == tag`,
    /// state IN_FLIGHT or COMPLETE, and `rq->q` the disk's queue (`rqs[]` keeps stale
    /// pointers after completion).
    fn request(&self, ctx: &Ctx, tag: u16, rq_queue: Option<u64>) -> Option<RequestState> {
        let l = ctx.l;
        let p = *self.rqs.get(usize::from(tag))?;
        if p == 0 {
            return None;
        }
        let b = ctx.read(check_ptr(p, 8).ok()?, l.rq_head_len()).ok()?;
        let rq_tag = l.rq_tag.get_signed(&b)?;
        let state = l.rq_state.get(&b)?;
        let q = Field::new(l.rq_q, 8).get(&b)?;
        let state = if state == l.mq_rq_in_flight {
            RqState::InFlight
        } else if state == l.mq_rq_complete {
            RqState::Complete
        } else {
            return None;
        };
        if rq_tag != i64::from(tag) || rq_queue.is_some_and(|rq| rq != q) {
            return None;
        }
        let cmd_flags = l.rq_cmd_flags.get(&b)?;
        Some(RequestState {
            op: l.op_name(cmd_flags),
            cmd_flags: cmd_flags as u32,
            sector: l.rq_sector.get(&b)?,
            bytes: l.rq_data_len.get(&b)? as u32,
            start_time_ns: l.rq_start_time_ns.and_then(|f| f.get(&b)),
            state,
        })
    }
}

/// Busy tags of `blk_mq_tags.bitmap_tags`: bit set in `word` and not in `cleared`
/// (lib/sbitmap.c defers clearing). One read of every word.
fn busy_bitmap(
    ctx: &Ctx,
    l: &Layout,
    t: &[u8],
    depth: u16,
) -> Result<Option<Vec<bool>>, WalkError> {
    let Some(bm) = l.bitmap else {
        return Ok(None);
    };
    let shift = bm.shift.get(t).unwrap_or(64);
    let map_nr = bm.map_nr.get(t).unwrap_or(0);
    let map = Field::new(bm.map, 8).get(t).unwrap_or(0);
    if shift >= 64 || map_nr == 0 || map_nr > super::MAX_COUNT {
        return Err(WalkError::Garbage(format!(
            "sbitmap shift {shift} map_nr {map_nr}"
        )));
    }
    let w = ctx.read(
        ctx.ptr("sbitmap.map", map)?,
        map_nr as usize * bm.word_size as usize,
    )?;
    let per = 1u64 << shift;
    let busy = (0..u64::from(depth))
        .map(|tag| {
            let i = (tag / per) as usize * bm.word_size as usize;
            let word = Field::new(i as u32 + bm.word, 8).get(&w).unwrap_or(0);
            let cleared = Field::new(i as u32 + bm.cleared, 8).get(&w).unwrap_or(0);
            let bit = 1u64 << (tag % per);
            word & bit != 0 && cleared & bit == 0
        })
        .collect();
    Ok(Some(busy))
}
